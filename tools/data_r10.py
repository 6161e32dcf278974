"""R10.4.1 training data: real labelled reads split by read, plus simulated pretraining.

``python -m tools.data_r10 OUT --sim SIM.npz`` writes into OUT (e.g. /work/cache/r10):

* ``train.npz`` - squigualiser reads (basecalls placed on the signal by the
  signal-to-basecall PAFs) + the remora_can training reads (reference spans via
  MD + move tables), with 50% chunk overlap, mixed with as many simulated chunks
  (exact labels) as real ones so fine-tuning does not over-fit 35 reads;
* ``val.npz`` / ``val_reads.npz`` - ``n_val`` remora_can reads held out BY READ
  for model selection, with their per-read references in ``val_refs.fa``;
* ``eval_reads.txt`` - the remora_can reads never used for training or
  selection: evaluate on those (and on dorado_tests/chr1_MAT.pod5) only.

Everything is at 4 kHz (the labelled real reads are 4 kHz; 5 kHz input is
resampled by the device pipeline). The dataset format is :mod:`tools.data`'s.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from tools.data import holdout_ids

log = logging.getLogger(__name__)
RATE = 4000


def _subset(d: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``keep`` of every per-chunk array."""
    return {k: (v[keep] if isinstance(v, np.ndarray) and v.ndim >= 1 else v)
            for k, v in d.items()}


def _as_dict(cs) -> dict[str, np.ndarray]:
    """A data_bam ChunkSet as a dict of arrays."""
    return {"signal": cs.signal, "labels": cs.labels, "label_len": cs.label_len,
            "read_id": cs.read_id, "start": cs.start}


def merge(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate chunk sets (labels re-padded to the longest)."""
    parts = [p for p in parts if len(p["label_len"])]
    lmax = max(int(p["labels"].shape[1]) for p in parts)
    labels = np.concatenate([np.pad(p["labels"], ((0, 0), (0, lmax - p["labels"].shape[1])))
                             for p in parts])
    return {"signal": np.concatenate([p["signal"] for p in parts]).astype(np.float32),
            "labels": labels.astype(np.uint8),
            "label_len": np.concatenate([p["label_len"] for p in parts]).astype(np.int32),
            "read_id": np.concatenate([p["read_id"].astype(str) for p in parts]),
            "start": np.concatenate([p["start"] for p in parts]).astype(np.int64)}


def build_r10(out: Path, root: Path, sim: Path, chunk: int = 1800, n_eval: int = 7,
              n_val: int = 2, seed: int = 0) -> dict[str, int]:
    """Build the R10.4.1 fine-tuning datasets; returns chunk counts."""
    from edgecall.io.reader import iter_reads
    from edgecall.signal import Normalisation, prepare
    from tools.data_bam import chunks_from_bam, chunks_from_paf
    from tools.evaluate import bam_references

    out.mkdir(parents=True, exist_ok=True)
    rc = root / "r10.4.1" / "remora_can"
    sq = root / "r10.4.1" / "squigualiser"
    refs = bam_references(rc / "mappings.bam")
    ids = sorted(refs)
    eval_ids = holdout_ids(ids, n_eval)
    rest = [r for r in ids if r not in eval_ids]
    val_ids = holdout_ids(rest, n_val)
    (out / "eval_reads.txt").write_text("\n".join(sorted(eval_ids)) + "\n")
    half = chunk // 2
    remora, _ = chunks_from_bam([rc / "reads.pod5"], rc / "mappings.bam", chunk_size=chunk,
                                sample_rate=RATE, overlap=half)
    rem = _as_dict(remora)
    rid = rem["read_id"].astype(str)
    rem_train = _subset(rem, np.array([r not in eval_ids and r not in val_ids for r in rid]))
    remora_val, _ = chunks_from_bam([rc / "reads.pod5"], rc / "mappings.bam",
                                    chunk_size=chunk, sample_rate=RATE, overlap=0)
    rv = _as_dict(remora_val)
    val = _subset(rv, np.array([r in val_ids for r in rv["read_id"].astype(str)]))
    squig = []
    for paf in ("set27_moves.paf", "set2_moves.paf"):
        cs, summ = chunks_from_paf([sq / "reads.pod5"], sq / paf, sq / "basecalls.fastq",
                                   chunk_size=chunk, sample_rate=RATE, overlap=half)
        log.info("%s: %d reads, %d chunks", paf, summ.reads, summ.chunks)
        squig.append(_as_dict(cs))
    real = merge([rem_train, *squig])
    with np.load(sim) as z:
        simd = {k: z[k] for k in ("signal", "labels", "label_len", "read_id", "start")}
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(simd["label_len"]))[:len(real["label_len"])]
    train = merge([real, _subset(simd, np.sort(pick))])
    np.savez(out / "train.npz", **train, sample_rate=np.int64(RATE))
    np.savez(out / "val.npz", **val, sample_rate=np.int64(RATE))
    with open(out / "val_refs.fa", "w") as fh:
        for r in sorted(val_ids):
            fh.write(f">{r}\n{refs[r]}\n")
    sigs, vids = [], []
    for read in iter_reads([rc / "reads.pod5"], read_ids=set(val_ids)):
        if hasattr(read, "signal"):
            sigs.append(prepare(read, Normalisation("median_mad"), RATE))
            vids.append(read.read_id)
    np.savez(out / "val_reads.npz", read_id=np.array(vids),
             offsets=np.cumsum([0] + [s.shape[0] for s in sigs]).astype(np.int64),
             signal=np.concatenate(sigs).astype(np.float32),
             reference=np.array(str(out / "val_refs.fa")))
    counts = {"train": len(train["label_len"]), "real_train": len(real["label_len"]),
              "val": len(val["label_len"]), "eval_reads": len(eval_ids)}
    log.info("R10.4.1 data: %s", counts)
    return counts


def sim_split(sim: Path, out: Path, n_val_reads: int = 10) -> None:
    """Pretraining folder from simulated chunks: train/val split by read, val FASTA refs."""
    out.mkdir(parents=True, exist_ok=True)
    with np.load(sim) as z:
        d = {k: z[k] for k in ("signal", "labels", "label_len", "read_id", "start")}
    rid = d["read_id"].astype(str)
    val_ids = holdout_ids(sorted(set(rid)), n_val_reads)
    is_val = np.array([r in val_ids for r in rid])
    np.savez(out / "train.npz", **_subset(d, ~is_val), sample_rate=np.int64(RATE))
    val = _subset(d, is_val)
    np.savez(out / "val.npz", **val, sample_rate=np.int64(RATE))
    # val "reads": the val chunks themselves, each its own reference
    with open(out / "val_refs.fa", "w") as fh:
        for i in range(len(val["label_len"])):
            seq = "".join("NACGT"[b] for b in val["labels"][i, :val["label_len"][i]])
            fh.write(f">c{i}\n{seq}\n")
    n = len(val["label_len"])
    np.savez(out / "val_reads.npz", read_id=np.array([f"c{i}" for i in range(n)]),
             offsets=np.arange(n + 1, dtype=np.int64) * val["signal"].shape[1],
             signal=val["signal"].ravel().astype(np.float32),
             reference=np.array(str(out / "val_refs.fa")))


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.data_r10 OUT --sim SIM.npz [--pretrain-out DIR]``."""
    from tools.teacher import shared_data

    p = argparse.ArgumentParser(prog="python -m tools.data_r10", description=__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--sim", type=Path, required=True, help="simulated chunks (data-bam)")
    p.add_argument("--pretrain-out", type=Path, default=None,
                   help="also write a simulated-only train/val folder here")
    p.add_argument("--shared", type=Path, default=None)
    p.add_argument("--chunk", type=int, default=1800)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.pretrain_out:
        sim_split(args.sim, args.pretrain_out)
    build_r10(args.out, args.shared or shared_data(), args.sim, args.chunk)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
