"""Labelled training chunks from pod5 + move-table BAMs, and from simulated reads.

For every primary mapped BAM record with ``mv``/``ts`` tags (dorado/guppy
``--emit-moves``, aligned with MD tags):

1. the reference span is rebuilt with ``get_reference_sequence()`` (SEQ + CIGAR
   + MD, no FASTA) and, like the basecall, put in read (signal) orientation
   (reverse-complemented when ``is_reverse``);
2. basecall base ``i`` (read orientation) starts at sample
   ``sp + ts + stride * (index of the i-th 1 in mv[1:])``;
3. the CIGAR gives ``ref_before[i]``, the number of reference bases that come
   before basecall base ``i`` (inserted and soft-clipped bases consume none,
   deletions are counted where they sit);
4. the normalised signal (``edgecall.signal.prepare``: pA, resampled to the
   model's rate, ``median_mad``; the same as the device) of the aligned region is
   cut into fixed-length chunks; a chunk covering samples ``[s, s + T)`` holds
   the bases ``i0 <= i < i1`` that start in it and is labelled
   ``ref[ref_before[i0]:ref_before[i1]]``.

Unmapped records can be labelled with their own basecall (``unaligned="basecall"``),
and squigualiser signal-to-basecall PAFs (``ss:Z``) place a FASTQ basecall on
the signal the same way (:func:`chunks_from_paf`).
Simulated reads (:mod:`tools.simulate`) are labelled exactly by their true
``base_starts``. The output is the dataset format of :mod:`tools.data`
(``signal``, ``labels``, ``label_len``, ``read_id``, ``start``, ``sample_rate``).
No torch here.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecall.signal import Normalisation, prepare
from edgecall.types import Failed, Read

if TYPE_CHECKING:
    import pysam

log = logging.getLogger(__name__)

_LABEL = np.zeros(256, dtype=np.uint8)
for _i, _b in enumerate("ACGT"):
    _LABEL[ord(_b)] = _i + 1
    _LABEL[ord(_b.lower())] = _i + 1
_COMP = str.maketrans("ACGTNacgtn", "TGCANtgcan")
_QUERY_REF = {0: (1, 1), 1: (1, 0), 2: (0, 1), 3: (0, 1), 4: (1, 0), 5: (0, 0), 6: (0, 0),
              7: (1, 1), 8: (1, 1)}  # CIGAR op -> (consumes query, consumes reference)


@dataclass(frozen=True, slots=True)
class Segmentation:
    """One read's bases placed on its signal, with their target sequence.

    All arrays are in read (signal) orientation. ``base_starts[i]`` is the
    sample (in the read's own signal and rate) where base ``i`` starts and
    ``base_starts[L]`` where the last base ends; ``target`` holds labels 1..4
    (0 = not ACGT); ``target_before[i]`` counts the target bases before base
    ``i``. Only bases ``first <= i < last`` are aligned; ``match[i]`` says
    base ``i`` is aligned to an equal target base.
    """

    read_id: str
    base_starts: np.ndarray  # int64 [L + 1]
    target: np.ndarray  # uint8 [R]
    target_before: np.ndarray  # int64 [L + 1]
    first: int
    last: int
    match: np.ndarray  # bool [L]


@dataclass(frozen=True, slots=True)
class ChunkSet:
    """Labelled chunks in the :mod:`tools.data` format (see :func:`save_chunks`)."""

    signal: np.ndarray  # float32 [M, T]
    labels: np.ndarray  # uint8 [M, Lmax]
    label_len: np.ndarray  # int32 [M]
    read_id: np.ndarray  # str [M]
    start: np.ndarray  # int64 [M], in samples at sample_rate
    sample_rate: int


@dataclass(slots=True)
class BuildSummary:
    """What a build used and skipped (reason -> count)."""

    reads: int = 0
    chunks: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    failed: list[Failed] = field(default_factory=list)


# ---------------------------------------------------------------------------- segmentation


def encode_labels(seq: str) -> np.ndarray:
    """uint8 labels 1..4 for A,C,G,T (0 for anything else, kept in place)."""
    return _LABEL[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]


def revcomp(seq: str) -> str:
    """Reverse complement (case kept, N stays N)."""
    return seq.translate(_COMP)[::-1]


def move_starts(mv: Sequence[int], ts: int, sp: int = 0) -> np.ndarray:
    """Sample where each base starts, plus the end of the last base (``[L + 1]``).

    ``mv = [stride, m0, m1, ...]``; base ``i`` starts at
    ``sp + ts + stride * (index of the i-th 1)``; the end is ``sp + ts + stride * len(m)``.
    """
    arr = np.asarray(mv, dtype=np.int64)
    if arr.size < 2 or arr[0] < 1:
        raise ValueError("move table needs a positive stride and at least one move")
    stride, moves = int(arr[0]), arr[1:]
    frames = np.flatnonzero(moves)
    end = sp + ts + stride * moves.size
    return np.concatenate([sp + ts + stride * frames, [end]]).astype(np.int64)


def cigar_ref_before(cigar: Iterable[tuple[int, int]], query_len: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per query base (BAM orientation): reference bases consumed before it, and aligned flag.

    Returns ``before [L]`` and ``aligned [L]`` (True for M/=/X bases).
    """
    before = np.zeros(query_len, dtype=np.int64)
    aligned = np.zeros(query_len, dtype=bool)
    q = r = 0
    for op, n in cigar:
        cq, cr = _QUERY_REF[op]
        if cq:
            before[q:q + n] = r + (np.arange(n) if cr else 0)
            aligned[q:q + n] = bool(cr)
            q += n
        if cr:
            r += n
    if q != query_len:
        raise ValueError(f"CIGAR covers {q} query bases but the record has {query_len}")
    return before, aligned


def segment_record(a: pysam.AlignedSegment, *, unaligned: str = "skip") -> Segmentation:
    """The :class:`Segmentation` of one BAM record with ``mv``/``ts`` tags.

    Parameters
    ----------
    a
        A primary record. Mapped: the target is its reference span (MD needed).
        Unmapped: with ``unaligned="basecall"`` the target is the basecall itself.
    unaligned
        ``"skip"`` (ValueError for unmapped records) or ``"basecall"``.

    Raises
    ------
    ValueError
        With a short reason when the record cannot be used.
    """
    if not a.has_tag("mv"):
        raise ValueError("no mv tag")
    seq = a.query_sequence
    if not seq:
        raise ValueError("no SEQ")
    sp = int(a.get_tag("sp")) if a.has_tag("sp") else 0
    ts = int(a.get_tag("ts")) if a.has_tag("ts") else 0
    starts = move_starts(a.get_tag("mv"), ts, sp)
    length = len(seq)
    if starts.size - 1 != length:
        raise ValueError(f"move table has {starts.size - 1} bases but SEQ has {length}")
    if a.is_unmapped:
        if unaligned != "basecall":
            raise ValueError("unmapped")
        return Segmentation(_rid(a), starts, encode_labels(seq),
                            np.arange(length + 1, dtype=np.int64), 0, length,
                            np.ones(length, dtype=bool))
    if not a.has_tag("MD"):
        raise ValueError("no MD tag")
    ref = a.get_reference_sequence().upper()
    before, aligned = cigar_ref_before(a.cigartuples, length)
    if a.is_reverse:  # read orientation: walk the alignment backwards
        ref, seq = revcomp(ref), revcomp(seq)
        incl = before + aligned
        before = (len(ref) - incl)[::-1]
        aligned = aligned[::-1]
    target, query = encode_labels(ref), encode_labels(seq)
    match = aligned & (target[np.minimum(before, len(ref) - 1)] == query)
    idx = np.flatnonzero(aligned)
    return Segmentation(_rid(a), starts, target,
                        np.concatenate([before, [len(ref)]]).astype(np.int64),
                        int(idx[0]), int(idx[-1]) + 1, match)


def _rid(a: pysam.AlignedSegment) -> str:
    """The pod5 read holding this record's signal (parent ``pi`` for split reads)."""
    return str(a.get_tag("pi")) if a.has_tag("pi") else str(a.query_name)


def simulated_segmentation(read_id: str, sequence: str, base_starts: np.ndarray
                           ) -> Segmentation:
    """Exact segmentation of a simulated read (target = true sequence)."""
    n = len(sequence)
    if base_starts.size != n + 1:
        raise ValueError(f"{base_starts.size} base starts for {n} bases")
    return Segmentation(read_id, np.asarray(base_starts, dtype=np.int64),
                        encode_labels(sequence), np.arange(n + 1, dtype=np.int64), 0, n,
                        np.ones(n, dtype=bool))


# ---------------------------------------------------------------------------- chunks


def cut_chunks(signal: np.ndarray, seg: Segmentation, *, chunk_size: int, overlap: int = 0,
               rate_ratio: float = 1.0, min_label: int = 1, min_accuracy: float = 0.0
               ) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Fixed-length chunks of the aligned region with their target slices.

    Parameters
    ----------
    signal
        The read's normalised signal at the model's rate.
    seg
        The read's segmentation (positions at the read's own rate).
    chunk_size, overlap
        Chunk length and overlap between consecutive chunks (model samples).
    rate_ratio
        Model rate / read rate (positions are scaled by it).
    min_label
        Chunks with fewer target bases (or any non-ACGT target) are dropped.
    min_accuracy
        Chunks whose bases match their target less often than this are dropped
        (matches / max(bases, target length)).

    Returns
    -------
    list of (start, signal [chunk_size] float32, labels uint8)
    """
    if chunk_size <= overlap or chunk_size < 1:
        raise ValueError("chunk size must be positive and larger than the overlap")
    bs = np.rint(seg.base_starts * rate_ratio).astype(np.int64)
    lo, hi = int(bs[seg.first]), min(int(bs[seg.last]), signal.size)
    out = []
    for s in range(lo, hi - chunk_size + 1, chunk_size - overlap):
        i0, i1 = np.searchsorted(bs[:-1], [s, s + chunk_size], side="left")
        i0, i1 = max(int(i0), seg.first), min(int(i1), seg.last)
        if i1 <= i0:
            continue
        lab = seg.target[seg.target_before[i0]:seg.target_before[i1]]
        if lab.size < min_label or not lab.all():
            continue
        if min_accuracy > 0 and seg.match[i0:i1].sum() < min_accuracy * max(i1 - i0, lab.size):
            continue
        out.append((s, np.ascontiguousarray(signal[s:s + chunk_size], dtype=np.float32), lab))
    return out


def _collect(items: list[tuple[str, int, np.ndarray, np.ndarray]], chunk_size: int,
             sample_rate: int) -> ChunkSet:
    """Stack (read_id, start, signal, labels) tuples into a ChunkSet."""
    m = len(items)
    lmax = max((it[3].size for it in items), default=0)
    labels = np.zeros((m, lmax), dtype=np.uint8)
    for j, it in enumerate(items):
        labels[j, :it[3].size] = it[3]
    signal = (np.stack([it[2] for it in items]) if items
              else np.zeros((0, chunk_size), dtype=np.float32))
    return ChunkSet(signal=signal.astype(np.float32, copy=False), labels=labels,
                    label_len=np.array([it[3].size for it in items], dtype=np.int32),
                    read_id=np.array([it[0] for it in items], dtype=str),
                    start=np.array([it[1] for it in items], dtype=np.int64),
                    sample_rate=sample_rate)


def _chunks_for_reads(reads: Iterable[Read | Failed], segs: dict[str, list[Segmentation]], *,
                      chunk_size: int, sample_rate: int, overlap: int,
                      summary: BuildSummary, min_accuracy: float = 0.0) -> ChunkSet:
    """Normalise every read that has segmentations and cut its chunks."""
    items: list[tuple[str, int, np.ndarray, np.ndarray]] = []
    norm = Normalisation("median_mad")
    seen = set()
    for read in reads:
        if isinstance(read, Failed):
            summary.failed.append(read)
            continue
        seen.add(read.read_id)
        signal = prepare(read, norm, sample_rate)
        for seg in segs.get(read.read_id, []):
            if seg.base_starts[-1] > read.num_samples:
                summary.skipped["moves run past the signal end"] += 1
                continue
            got = cut_chunks(signal, seg, chunk_size=chunk_size, overlap=overlap,
                             rate_ratio=sample_rate / read.sample_rate,
                             min_accuracy=min_accuracy)
            summary.reads += bool(got)
            summary.skipped["aligned region shorter than a chunk"] += not got
            items.extend((seg.read_id, s, x, lab) for s, x, lab in got)
    summary.skipped["read not in the pod5 files"] += len(set(segs) - seen)
    summary.skipped += Counter()  # drop zero counts
    summary.chunks = len(items)
    return _collect(items, chunk_size, sample_rate)


def chunks_from_bam(pod5_paths: Sequence[str | os.PathLike[str]],
                    bam: str | os.PathLike[str], *, chunk_size: int, sample_rate: int,
                    overlap: int = 0, unaligned: str = "skip", max_reads: int | None = None,
                    min_accuracy: float = 0.0) -> tuple[ChunkSet, BuildSummary]:
    """Labelled chunks from pod5 reads and a move-table BAM/SAM.

    Parameters
    ----------
    pod5_paths
        pod5 files or folders holding the reads.
    bam
        BAM/SAM with ``mv``/``ts`` (and MD for mapped records). Secondary and
        supplementary records are ignored.
    chunk_size, sample_rate
        Chunk length in samples at the model's ``sample_rate``; reads at other
        rates are resampled (e.g. 5 kHz -> 4 kHz).
    overlap
        Samples shared by consecutive chunks of a read.
    unaligned
        ``"skip"`` or ``"basecall"`` (label unmapped records with their basecall).
    max_reads
        Stop after this many usable records.
    min_accuracy
        Drop chunks whose basecall matches the reference less than this
        (see :func:`cut_chunks`; 0 keeps all).

    Returns
    -------
    (ChunkSet, BuildSummary)
    """
    import pysam

    from edgecall.io.reader import find_pod5, iter_reads

    if unaligned not in ("skip", "basecall"):
        raise ValueError(f"unaligned must be 'skip' or 'basecall', not {unaligned!r}")
    if not Path(bam).is_file():
        raise ValueError(f"{bam}: no such BAM/SAM file")
    summary = BuildSummary()
    segs: dict[str, list[Segmentation]] = {}
    try:
        fh = pysam.AlignmentFile(str(bam), check_sq=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{bam}: cannot open as BAM/SAM ({exc})") from None
    with fh:
        for a in fh:
            if a.is_secondary or a.is_supplementary:
                continue
            try:
                seg = segment_record(a, unaligned=unaligned)
            except ValueError as exc:
                summary.skipped[str(exc) if len(str(exc)) < 40 else "bad record"] += 1
                log.debug("%s: %s: %s", bam, a.query_name, exc)
                continue
            segs.setdefault(seg.read_id, []).append(seg)
            if max_reads is not None and sum(map(len, segs.values())) >= max_reads:
                break
    reads = iter_reads(find_pod5(list(pod5_paths)), read_ids=set(segs))
    chunks = _chunks_for_reads(reads, segs, chunk_size=chunk_size, sample_rate=sample_rate,
                               overlap=overlap, summary=summary, min_accuracy=min_accuracy)
    return chunks, summary


def paf_segmentation(line: str, basecalls: dict[str, str]) -> Segmentation:
    """Segmentation from one squigualiser signal-to-basecall PAF line (``ss:Z`` tag).

    Query = signal samples (columns 3-4: first and end aligned sample), target =
    the basecall in read orientation (``basecalls`` by read id, strand ``+``).
    ``ss`` lists samples per base; ``ND`` marks N bases with no samples, ``NI``
    N samples with no base. The target is the aligned part of the basecall.
    """
    f = line.rstrip("\n").split("\t")
    tags = dict(t.split(":", 2)[0::2] for t in f[12:])
    if len(f) < 12 or "ss" not in tags:
        raise ValueError("not a signal PAF line with ss:Z")
    rid, qstart, qend, strand = f[0], int(f[2]), int(f[3]), f[4]
    tlen, tstart, tend = int(f[6]), int(f[7]), int(f[8])
    if strand != "+":
        raise ValueError("reverse-strand PAF line")
    if rid not in basecalls:
        raise ValueError("no basecall for read")
    if len(basecalls[rid]) != tlen:
        raise ValueError("basecall length differs from the PAF target")
    starts, pos = [], qstart
    for tok in filter(None, tags["ss"].split(",")):
        if tok.endswith("D"):
            starts.extend([pos] * int(tok[:-1]))
        elif tok.endswith("I"):
            pos += int(tok[:-1])
        else:
            starts.append(pos)
            pos += int(tok)
    if pos != qend or len(starts) != tend - tstart:
        raise ValueError("ss does not cover the PAF spans")
    n = tend - tstart
    return Segmentation(rid, np.array(starts + [pos], dtype=np.int64),
                        encode_labels(basecalls[rid][tstart:tend]),
                        np.arange(n + 1, dtype=np.int64), 0, n, np.ones(n, dtype=bool))


def read_fastq(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{read id: sequence}`` from a FASTQ file."""
    out = {}
    with open(path) as fh:
        while header := fh.readline():
            seq = fh.readline().strip()
            fh.readline()
            fh.readline()
            if header.startswith("@"):
                out[header[1:].split()[0]] = seq.upper()
    return out


def chunks_from_paf(pod5_paths: Sequence[str | os.PathLike[str]],
                    paf: str | os.PathLike[str], fastq: str | os.PathLike[str], *,
                    chunk_size: int, sample_rate: int, overlap: int = 0
                    ) -> tuple[ChunkSet, BuildSummary]:
    """Chunks labelled with basecalls placed on the signal by a signal PAF (squigualiser).

    Parameters
    ----------
    pod5_paths
        pod5 files or folders holding the reads.
    paf
        Signal-to-basecall PAF with ``ss:Z`` (e.g. squigualiser ``reform`` output).
    fastq
        The basecalls the PAF targets (read orientation).
    chunk_size, sample_rate, overlap
        As in :func:`chunks_from_bam`.
    """
    from edgecall.io.reader import find_pod5, iter_reads

    for f in (paf, fastq):
        if not Path(f).is_file():
            raise ValueError(f"{f}: no such file")
    summary = BuildSummary()
    basecalls = read_fastq(fastq)
    segs: dict[str, list[Segmentation]] = {}
    with open(paf) as fh:
        for line in fh:
            try:
                seg = paf_segmentation(line, basecalls)
            except (ValueError, IndexError) as exc:
                summary.skipped[str(exc) if isinstance(exc, ValueError) else "bad line"] += 1
                continue
            segs.setdefault(seg.read_id, []).append(seg)
    reads = iter_reads(find_pod5(list(pod5_paths)), read_ids=set(segs))
    chunks = _chunks_for_reads(reads, segs, chunk_size=chunk_size, sample_rate=sample_rate,
                               overlap=overlap, summary=summary)
    return chunks, summary


def chunks_from_simulated(sim_dir: str | os.PathLike[str], *, chunk_size: int,
                          sample_rate: int | None = None, overlap: int = 0
                          ) -> tuple[ChunkSet, BuildSummary]:
    """Chunks with exact labels from a :func:`tools.simulate.simulate_dataset` folder.

    Parameters
    ----------
    sim_dir
        Folder with ``reads.pod5``, ``reads.fasta`` and ``truth.npz``.
    chunk_size, overlap
        As in :func:`chunks_from_bam`.
    sample_rate
        Model rate; default the reads' own.
    """
    from edgecall.io.reader import iter_reads
    from tools.simulate import load_truth, read_fasta

    d = Path(sim_dir)
    for name in ("reads.pod5", "reads.fasta", "truth.npz"):
        if not (d / name).is_file():
            raise ValueError(f"{d / name}: missing (not a simulate_dataset folder)")
    seqs, truth = read_fasta(d / "reads.fasta"), load_truth(d / "truth.npz")
    segs = {rid: [simulated_segmentation(rid, seqs[rid], truth[rid])] for rid in truth}
    reads = list(iter_reads([d / "reads.pod5"]))
    rate = sample_rate or next(r.sample_rate for r in reads if isinstance(r, Read))
    summary = BuildSummary()
    chunks = _chunks_for_reads(reads, segs, chunk_size=chunk_size, sample_rate=rate,
                               overlap=overlap, summary=summary)
    return chunks, summary


def save_chunks(path: str | os.PathLike[str], chunks: ChunkSet) -> Path:
    """Write a ChunkSet as the :mod:`tools.data` ``.npz`` (written to a temp name, renamed)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".partial.npz")
    np.savez(tmp, signal=chunks.signal, labels=chunks.labels, label_len=chunks.label_len,
             read_id=chunks.read_id, start=chunks.start,
             sample_rate=np.int64(chunks.sample_rate))
    os.replace(tmp, p)
    return p


# ---------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data-bam`` subcommand."""
    p = subparsers.add_parser(
        "data-bam", help="labelled chunks from pod5 + move-table BAM, or simulated reads",
        description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bam", help="BAM/SAM with mv/ts (+ MD) tags")
    src.add_argument("--simulated", help="a `tools simulate` output folder")
    src.add_argument("--paf", help="signal-to-basecall PAF with ss:Z (needs --fastq)")
    p.add_argument("--fastq", help="basecalls targeted by --paf")
    p.add_argument("--pod5", nargs="+", default=[], help="pod5 files/folders (with --bam)")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--chunk-size", type=int, required=True, help="samples at --sample-rate")
    p.add_argument("--sample-rate", type=int, help="model rate, Hz (default: the reads')")
    p.add_argument("--overlap", type=int, default=0)
    p.add_argument("--unaligned", choices=("skip", "basecall"), default="skip")
    p.add_argument("--max-reads", type=int)
    p.add_argument("--min-accuracy", type=float, default=0.0,
                   help="drop chunks whose basecall matches the reference less (BAM only)")
    p.set_defaults(func=run)


def _build(args: argparse.Namespace) -> tuple[ChunkSet, BuildSummary]:
    """Dispatch to the builder the arguments name."""
    if args.simulated:
        return chunks_from_simulated(args.simulated, chunk_size=args.chunk_size,
                                     sample_rate=args.sample_rate, overlap=args.overlap)
    flag = "--bam" if args.bam else "--paf"
    if not args.pod5:
        raise ValueError(f"{flag} needs --pod5 with the reads")
    if not args.sample_rate:
        raise ValueError(f"{flag} needs --sample-rate (the model's rate)")
    if args.paf:
        if not args.fastq:
            raise ValueError("--paf needs --fastq with the basecalls")
        return chunks_from_paf(args.pod5, args.paf, args.fastq, chunk_size=args.chunk_size,
                               sample_rate=args.sample_rate, overlap=args.overlap)
    return chunks_from_bam(args.pod5, args.bam, chunk_size=args.chunk_size,
                           sample_rate=args.sample_rate, overlap=args.overlap,
                           unaligned=args.unaligned, max_reads=args.max_reads,
                           min_accuracy=args.min_accuracy)


def run(args: argparse.Namespace) -> int:
    """Run ``data-bam`` from parsed arguments."""
    if args.chunk_size < 1 or args.overlap < 0 or args.chunk_size <= args.overlap:
        raise ValueError("--chunk-size must be positive and larger than --overlap")
    chunks, summary = _build(args)
    if summary.chunks == 0:
        raise ValueError(f"no chunks made (skipped: {dict(summary.skipped) or 'none'})")
    out = save_chunks(args.out, chunks)
    skipped = ", ".join(f"{k}: {v}" for k, v in summary.skipped.items()) or "none"
    print(f"wrote {summary.chunks} chunks from {summary.reads} reads to {out} "
          f"(failed reads: {len(summary.failed)}; skipped: {skipped})")
    return 0
