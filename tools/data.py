"""Chunk datasets for training: the on-disk format and the R9.4.1 builder.

Dataset format (shared by every producer: this module, ``tools.simulate`` and
``tools.data_bam``): one ``.npz`` file (``np.savez``) with

``signal``     float32 ``[M, T]``  normalised signal chunks (``edgecall.signal.normalise``
                                   with ``Normalisation("median_mad")`` over the whole read,
                                   in pA; at the model's sample rate).
``labels``     uint8   ``[M, Lmax]`` target bases, values 1..4 = A,C,G,T, zero-padded.
``label_len``  int32   ``[M]``     number of real label values per row.
``read_id``    str     ``[M]``     the read each chunk came from (split train/val BY READ).
``teacher``    float16 ``[M, T/3, 5]`` optional teacher log-posteriors (blank,A,C,G,T)
                                   for knowledge distillation, stride 3 (deepnano-blitz).
``start``      int64   ``[M]``     optional: chunk start sample within its read.
``sample_rate`` int scalar        optional: samples per second of ``signal``.
``weight``     float32 ``[M]``     optional: CTC weight of the chunk's label (1 = reference
                                   label, less for a basecall label; default 1).

Labels are in read (signal) orientation. A chunk with ``label_len == 0`` is never written.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecall.signal import Normalisation, normalise

log = logging.getLogger(__name__)

BASES = "NACGT"
_COMP = str.maketrans("ACGTN", "TGCAN")


@dataclass(frozen=True, slots=True)
class RawRead:
    """One read's normalised signal and where it came from."""

    read_id: str
    signal: np.ndarray  # float32 normalised
    source: str  # dataset tag, e.g. "ecoli"


def revcomp(seq: str) -> str:
    """Reverse complement of an ACGTN string."""
    return seq.translate(_COMP)[::-1]


def encode(seq: str) -> np.ndarray:
    """ACGT string -> uint8 labels 1..4 (N and others dropped)."""
    lut = np.zeros(256, np.uint8)
    for i, b in enumerate("ACGT"):
        lut[ord(b)] = i + 1
        lut[ord(b.lower())] = i + 1
    arr = lut[np.frombuffer(seq.encode(), np.uint8)]
    return arr[arr > 0]


def iter_pod5(path: Path, source: str) -> Iterator[RawRead]:
    """Reads of one pod5 file, pA-calibrated and median/MAD normalised."""
    import pod5

    norm = Normalisation("median_mad")
    with pod5.Reader(path) as reader:
        for rec in reader.reads():
            pa = (rec.signal.astype(np.float32) + np.float32(rec.calibration.offset)) \
                * np.float32(rec.calibration.scale)
            yield RawRead(str(rec.read_id), normalise(pa, norm), source)


def holdout_ids(read_ids: list[str], n: int) -> set[str]:
    """``n`` validation reads chosen deterministically by SHA-1 of the read id."""
    ranked = sorted(read_ids, key=lambda r: hashlib.sha1(r.encode()).hexdigest())
    return set(ranked[-n:]) if n > 0 else set()


def greedy_with_frames(logp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy CTC: labels uint8 [L] (1..4) and the frame index of each base [L]."""
    best = logp.argmax(1)
    prev = np.concatenate(([0], best[:-1]))
    start = (best != 0) & (best != prev)
    frames = np.nonzero(start)[0]
    return best[frames].astype(np.uint8), frames.astype(np.int64)


def query_to_ref(hit, qlen: int) -> np.ndarray:
    """Reference position of every query base (original orientation), -1 outside the hit.

    An inserted base maps to the next reference position on its strand.
    """
    out = np.full(qlen, -1, np.int64)
    r = hit.r_st
    if hit.strand == 1:
        q = hit.q_st
        for length, op in hit.cigar:
            if op in (0, 7, 8):
                out[q:q + length] = np.arange(r, r + length)
                q += length
                r += length
            elif op == 1:
                out[q:q + length] = r
                q += length
            elif op == 2:
                r += length
    else:
        qq = qlen - hit.q_en  # position along the reverse complement
        for length, op in hit.cigar:
            if op in (0, 7, 8):
                idx = qlen - 1 - np.arange(qq, qq + length)
                out[idx] = np.arange(r, r + length)
                qq += length
                r += length
            elif op == 1:
                idx = qlen - 1 - np.arange(qq, qq + length)
                out[idx] = r
                qq += length
            elif op == 2:
                r += length
    return out


def teacher_logp(teacher, x: np.ndarray) -> np.ndarray:
    """Teacher log-posteriors aligned so frame f covers samples [3f, 3f+3)."""
    n = int(x.shape[0]) - int(x.shape[0]) % teacher.stride
    return teacher.posteriors(x[:n])


@dataclass(frozen=True, slots=True)
class BuildStats:
    """Counters from :func:`build_r941`."""

    reads: int
    train_chunks: int
    val_chunks: int
    skipped_chunks: int


def chunk_labels(read: RawRead, logp: np.ndarray, chunk: int, step: int, ref_aligner,
                 min_bases: int = 5) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, labels)`` per chunk of one read.

    With ``ref_aligner`` (a mappy.Aligner) the teacher's greedy call is aligned and
    each chunk is labelled with the reference span its bases cover (through the
    per-base frame positions and the CIGAR); chunks outside the primary hit are
    skipped. Without it the chunk's teacher bases are the label.
    """
    labels, frames = greedy_with_frames(logp)
    n = int(logp.shape[0]) * 3
    qmap = None
    if ref_aligner is not None:
        seq = "".join(BASES[b] for b in labels)
        hit = next((h for h in ref_aligner.map(seq) if h.is_primary), None)
        if hit is None or hit.mapq < 10 or (1 - hit.NM / max(hit.blen, 1)) < 0.75:
            return
        qmap = query_to_ref(hit, len(seq))
        strand, ctg = hit.strand, hit.ctg
    if n < chunk:
        return
    for s in range(0, n - chunk + 1, step):
        f0, f1 = s // 3, (s + chunk) // 3
        qa, qb = np.searchsorted(frames, [f0, f1])
        if qb - qa < min_bases:
            continue
        if qmap is None:
            yield s, labels[qa:qb]
            continue
        ra, rb = qmap[qa], qmap[qb - 1]
        if ra < 0 or rb < 0:
            continue
        lo, hi = (ra, rb + 1) if strand == 1 else (rb, ra + 1)
        ref = ref_aligner.seq(ctg, int(lo), int(hi))
        if not ref:
            continue
        if strand == -1:
            ref = revcomp(ref)
        lab = encode(ref)
        if lab.size >= min_bases:
            yield s, lab


def save_dataset(path: Path, rows: list[tuple], sample_rate: int = 4000) -> int:
    """Write chunk rows ``(read_id, start, signal, labels, teacher[, weight])`` in the
    dataset format (``weight`` defaults to 1)."""
    if not rows:
        raise ValueError(f"{path}: no chunks to write")
    lmax = max(r[3].size for r in rows)
    labels = np.zeros((len(rows), lmax), np.uint8)
    for i, r in enumerate(rows):
        labels[i, :r[3].size] = r[3]
    np.savez(path,
             signal=np.stack([r[2] for r in rows]).astype(np.float32),
             labels=labels,
             label_len=np.array([r[3].size for r in rows], np.int32),
             read_id=np.array([r[0] for r in rows]),
             start=np.array([r[1] for r in rows], np.int64),
             teacher=np.stack([r[4] for r in rows]).astype(np.float16),
             weight=np.array([r[5] if len(r) > 5 else 1.0 for r in rows], np.float32),
             sample_rate=np.int64(sample_rate))
    return len(rows)


def cached_teacher_logp(teacher, read: RawRead, cache: Path | None) -> np.ndarray:
    """Teacher log-posteriors of a read, memoised as float16 ``<cache>/<read_id>.npy``."""
    if cache is None:
        return teacher_logp(teacher, read.signal)
    path = cache / f"{read.read_id}.npy"
    if path.exists():
        return np.load(path).astype(np.float32)
    logp = teacher_logp(teacher, read.signal)
    tmp = cache / f".{read.read_id}.tmp.npy"
    np.save(tmp, logp.astype(np.float16))
    tmp.replace(path)
    return logp.astype(np.float16).astype(np.float32)


@dataclass(frozen=True, slots=True)
class Source:
    """One R9.4.1 pod5 file of the training data and how its reads are labelled.

    ``reference``: label chunks from this FASTA (through the teacher's aligned call);
    None: the teacher's own basecall is the label (a weaker label, ``weight`` < 1).
    ``holdout``: this many reads (by SHA-1 of the read id) are never trained on; for
    ``ecoli`` they are the validation reads, for the others an evaluation set.
    """

    path: Path
    tag: str
    reference: Path | None = None
    holdout: int = 0
    weight: float = 1.0
    max_reads: int | None = None  # only the first reads of the file (tests, quick builds)


#: CTC weight of chunks labelled by the teacher's basecall instead of a reference
BASECALL_LABEL_WEIGHT = 0.5


def r941_sources(data_root: Path, n_val: int = 12) -> list[Source]:
    """Every R9.4.1 pod5 file in the shared data, with its labels (see SOURCES.md)."""
    r9 = data_root / "r9.4.1"
    w = BASECALL_LABEL_WEIGHT
    return [Source(r9 / "ecoli" / "reads.pod5", "ecoli", r9 / "ecoli" / "reference.fa.gz",
                   n_val),
            Source(r9 / "klebsiella" / "reads.pod5", "klebsiella", weight=w),
            Source(r9 / "misc" / "pod5ff_multi_fast5_zip.pod5", "misc", weight=w),
            Source(r9 / "misc" / "uncalled_example.pod5", "uncalled",
                   r9 / "misc" / "uncalled_example_ref.fa"),
            Source(r9 / "corona" / "reads.pod5", "corona",
                   r9 / "corona" / "Corona_NC_045512.2.fasta", 50),
            Source(r9 / "marcpaga" / "reads.pod5", "lambda", r9 / "marcpaga" / "Lambda_phage.fna",
                   10),
            Source(r9 / "tailfindr" / "reads.pod5", "tailfindr", weight=w),
            Source(r9 / "targetcall_reads" / "reads.pod5", "human", weight=w)]


def source_reads(data_root: Path, n_val: int = 12,
                 sources: list[Source] | None = None) -> list[tuple[Source, RawRead]]:
    """All reads of ``sources`` (default :func:`r941_sources`) whose file exists."""
    out = []
    for src in sources if sources is not None else r941_sources(data_root, n_val):
        if src.path.exists():
            reads = iter_pod5(src.path, src.tag)
            out += [(src, r) for r in itertools.islice(reads, src.max_reads)]
    return out


def fill_teacher_cache(data_root: Path, weights: Path, cache: Path, shard: int,
                       shards: int) -> int:
    """Compute teacher posteriors for every ``shards``-th read (from ``shard``) into ``cache``."""
    from tools.teacher import DeepnanoTeacher

    cache.mkdir(parents=True, exist_ok=True)
    teacher = DeepnanoTeacher(weights)
    reads = [r for _, r in source_reads(data_root)]
    done = 0
    for i, read in enumerate(reads):
        if i % shards == shard:
            cached_teacher_logp(teacher, read, cache)
            done += 1
            log.info("teacher %d/%d %s", i + 1, len(reads), read.read_id)
    return done


def build_r941(out: Path, data_root: Path, weights: Path, chunk: int = 1800, step: int = 900,
               n_val: int = 12, sources: list[Source] | None = None) -> BuildStats:
    """Build ``train.npz``, ``val.npz``, ``val_reads.npz`` and ``heldout.tsv`` under ``out``.

    Every R9.4.1 read of :func:`r941_sources`: reads with a reference are labelled from it
    (CTC weight 1), the others by the teacher's basecall (weight
    :data:`BASECALL_LABEL_WEIGHT`); every chunk carries the teacher's posteriors for
    distillation. ``n_val`` E. coli reads are held out by read for validation; each
    source's ``holdout`` reads (SARS-CoV-2, lambda) are never trained on and listed in
    ``heldout.tsv`` (read id, source) for evaluation. ``sources`` replaces the default list.
    """
    import mappy

    from tools.teacher import DeepnanoTeacher

    if chunk % 12:
        raise ValueError(f"chunk size {chunk} must be a multiple of 12")
    out.mkdir(parents=True, exist_ok=True)
    teacher = DeepnanoTeacher(weights)
    sources = sources if sources is not None else r941_sources(data_root, n_val)
    aligners: dict[Path, mappy.Aligner] = {}
    for src in sources:
        if src.reference is not None and src.path.exists():
            aligners[src.reference] = mappy.Aligner(str(src.reference), preset="map-ont")
            if not aligners[src.reference]:
                raise ValueError(f"{src.reference}: cannot build a mappy index")
    reads = source_reads(data_root, n_val, sources)
    by_source: dict[str, list[str]] = {}
    for src, r in reads:
        by_source.setdefault(src.tag, []).append(r.read_id)
    held = {src.tag: holdout_ids(by_source.get(src.tag, []), src.holdout)
            for src in sources}
    val_ids = held.get("ecoli", set())
    cache = out / "teacher_cache"
    cache.mkdir(exist_ok=True)
    train_rows: list = []
    val_rows: list = []
    skipped = 0
    for i, (src, read) in enumerate(reads):
        is_val = read.read_id in val_ids
        if read.read_id in held[src.tag] and not is_val:
            continue  # an evaluation read: never trained on
        logp = cached_teacher_logp(teacher, read, cache)
        use_ref = aligners.get(src.reference) if src.reference is not None else None
        st = chunk if is_val else step
        before = len(train_rows) + len(val_rows)
        for s, lab in chunk_labels(read, logp, chunk, st, use_ref):
            row = (read.read_id, s, read.signal[s:s + chunk], lab,
                   logp[s // 3:(s + chunk) // 3], src.weight)
            (val_rows if is_val else train_rows).append(row)
        n_possible = max(0, (read.signal.shape[0] - chunk) // st + 1)
        skipped += n_possible - (len(train_rows) + len(val_rows) - before)
        log.info("read %d/%d %s (%s%s): %d samples, %d chunks", i + 1, len(reads),
                 read.read_id, read.source, ", val" if is_val else "", read.signal.shape[0],
                 len(train_rows) + len(val_rows) - before)
    save_dataset(out / "train.npz", train_rows)
    save_dataset(out / "val.npz", val_rows)
    vreads = [r for _, r in reads if r.read_id in val_ids]
    ref_path = next((s.reference for s in sources if s.tag == "ecoli"), None)
    if vreads and ref_path is not None:
        np.savez(out / "val_reads.npz", read_id=np.array([r.read_id for r in vreads]),
                 offsets=np.cumsum([0] + [r.signal.shape[0] for r in vreads]).astype(np.int64),
                 signal=np.concatenate([r.signal for r in vreads]).astype(np.float32),
                 reference=np.array(str(ref_path)))
    tmp = out / ".heldout.tsv.tmp"
    tmp.write_text("".join(f"{rid}\t{tag}\n" for tag, ids in sorted(held.items())
                           for rid in sorted(ids)))
    tmp.replace(out / "heldout.tsv")
    return BuildStats(len(reads), len(train_rows), len(val_rows), skipped)


def load_dataset(path: Path) -> dict[str, np.ndarray]:
    """Load a dataset ``.npz`` into memory, checking the required arrays."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: dataset not found")
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    for key in ("signal", "labels", "label_len", "read_id"):
        if key not in data:
            raise ValueError(f"{path}: missing array {key!r}")
    return data


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` subcommand."""
    p = sub.add_parser("data", help="build R9.4.1 chunk datasets (teacher + reference labels)")
    p.add_argument("out", type=Path, help="output folder (e.g. /work/cache/r941)")
    p.add_argument("--shared", type=Path, default=None, help="shared data root")
    p.add_argument("--weights", type=Path, default=None, help="teacher rnn*.txt (rnn96)")
    p.add_argument("--chunk", type=int, default=1800)
    p.add_argument("--step", type=int, default=900)
    p.add_argument("--val-reads", type=int, default=12)
    p.add_argument("--shard", default=None,
                   help="i/n: only fill the teacher cache for every n-th read (parallel runs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the datasets and log a summary."""
    import torch

    from tools.teacher import default_weights, shared_data

    torch.set_num_threads(1)
    root = args.shared or shared_data()
    if args.shard:
        i, n = (int(v) for v in args.shard.split("/"))
        fill_teacher_cache(root, args.weights or default_weights(96),
                           args.out / "teacher_cache", i, n)
        return 0
    stats = build_r941(args.out, root, args.weights or default_weights(96), args.chunk,
                       args.step, args.val_reads)
    log.info("%s", stats)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.data ...`` (same options as ``python -m tools data``)."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m tools.data")
    sub = parser.add_subparsers(dest="step")
    register(sub)
    args = parser.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
