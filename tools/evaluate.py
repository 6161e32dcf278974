"""Evaluate a basecaller against a reference: mappy identities, JSON for model cards.

``python -m tools evaluate MODEL DATA --reference REF.fa --json out.json``. MODEL is
a ``models/<name>`` folder or card (basecalled through the device pipeline,
:class:`edgecall.pipeline.Basecaller`, exactly as ``edgecall basecall`` runs it),
a training checkpoint ``.pt`` (whole-read torch forward + greedy decode) or
``teacher:rnn96`` (deepnano-blitz, beam 5). References: a FASTA (``--reference``)
or per-read references rebuilt from an MD-tagged BAM (``--bam``).

Identity of one read = ``1 - NM / blen`` of its primary mappy ``map-ont`` hit
(matches / (matches + mismatches + insertions + deletions)); reads without a hit
are unmapped and count in ``reads - mapped``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def make_aligner(reference: Path):
    """A mappy ``map-ont`` aligner for a FASTA (plain or gzipped)."""
    import mappy

    aligner = mappy.Aligner(str(reference), preset="map-ont")
    if not aligner:
        raise ValueError(f"{reference}: cannot build a mappy index")
    return aligner


def identity(aligner, seq: str) -> float | None:
    """Identity of the primary hit of ``seq``, or None when it does not map."""
    if not seq:
        return None
    for hit in aligner.map(seq):
        if hit.is_primary:
            return 1.0 - hit.NM / max(hit.blen, 1)
    return None


def identities(seqs: dict[str, str], reference, aligner=None) -> dict[str, float | None]:
    """Identity per read id against ``reference`` (a FASTA path) or a ready ``aligner``."""
    al = aligner if aligner is not None else make_aligner(Path(reference))
    return {rid: identity(al, s) for rid, s in seqs.items()}


def summarise(ids: dict[str, float | None], bases: int | None = None) -> dict:
    """Median/mean identity, reads and reads mapped."""
    vals = [v for v in ids.values() if v is not None]
    out = {"reads": len(ids), "mapped": len(vals),
           "median_identity": round(statistics.median(vals), 5) if vals else 0.0,
           "mean_identity": round(statistics.fmean(vals), 5) if vals else 0.0}
    if bases is not None:
        out["bases"] = int(bases)
    return out


def bam_references(bam: Path) -> dict[str, str]:
    """Per-read reference spans in read (signal) orientation from an MD-tagged BAM."""
    import pysam

    from tools.data import revcomp

    refs: dict[str, str] = {}
    with pysam.AlignmentFile(str(bam), "rb", check_sq=False) as fh:
        for a in fh:
            if a.is_unmapped or a.is_secondary or a.is_supplementary:
                continue
            ref = a.get_reference_sequence().upper()
            refs[a.query_name] = revcomp(ref) if a.is_reverse else ref
    if not refs:
        raise ValueError(f"{bam}: no primary mapped records with MD tags")
    return refs


_READ_IDS: set[str] | None = None  # set by evaluate(read_ids=...)


def _iter_reads(paths: list[Path], max_reads: int | None) -> Iterator:
    """Reads (``edgecall.types.Read``) of pod5 files/folders."""
    from edgecall.io.reader import find_pod5, iter_reads

    for item in iter_reads(find_pod5(paths), max_reads=max_reads, read_ids=_READ_IDS):
        if hasattr(item, "signal"):
            yield item
        else:
            log.warning("skipped: %s", getattr(item, "reason", item))


def call_with_pipeline(model: str, paths: list[Path], threads: int,
                       max_reads: int | None, *, engine: str = "onnx",
                       decoder: str = "greedy", beam_width: int = 5,
                       variant: str = "main") -> tuple[dict[str, str], int]:
    """Basecall through the device pipeline; returns (sequences, samples)."""
    from edgecall.pipeline import Basecaller

    bc = Basecaller.load(model, engine=engine, threads=threads, decoder=decoder,
                         beam_width=beam_width, variant=variant)
    seqs: dict[str, str] = {}
    for rec in bc.call(_iter_reads(paths, max_reads)):
        if hasattr(rec, "sequence"):
            seqs[rec.read_id] = rec.sequence
    return seqs, int(bc.stats.samples)


def call_with_checkpoint(ckpt: Path, paths: list[Path],
                         max_reads: int | None) -> tuple[dict[str, str], int]:
    """Basecall with a training checkpoint (torch, whole reads, greedy)."""

    from edgecall.signal import Normalisation, normalise, resample
    from tools.compress import load_student
    from tools.train import call_reads

    model, _ = load_student(ckpt)
    seqs: dict[str, str] = {}
    samples = 0
    for read in _iter_reads(paths, max_reads):
        x = normalise(resample(read.signal_pa(), read.sample_rate, 4000),
                      Normalisation("median_mad"))
        seqs[read.read_id] = call_reads(model, [x])[0]
        samples += int(x.shape[0])
    return seqs, samples


def call_with_teacher(spec: str, paths: list[Path],
                      max_reads: int | None) -> tuple[dict[str, str], int]:
    """Basecall with deepnano-blitz (``teacher:rnn96``), beam 5, exact activations."""
    from edgecall.signal import Normalisation, normalise
    from tools.teacher import DeepnanoTeacher, default_weights

    width = int(spec.split(":", 1)[1].removeprefix("rnn") or 96)
    teacher = DeepnanoTeacher(default_weights(width))
    seqs: dict[str, str] = {}
    samples = 0
    for read in _iter_reads(paths, max_reads):
        x = normalise(read.signal_pa(), Normalisation("median_mad"))
        seqs[read.read_id] = teacher.basecall(x, 5)[0]
        samples += int(x.shape[0])
    return seqs, samples


def evaluate(model: str, paths: list[Path], reference: Path | None = None,
             bam: Path | None = None, threads: int = 2,
             max_reads: int | None = None, read_ids: set[str] | None = None,
             dataset: str = "", *, engine: str = "onnx", decoder: str = "greedy",
             beam_width: int = 5, variant: str = "main") -> dict:
    """Basecall ``paths`` with ``model`` and summarise identity against the reference.

    ``read_ids`` restricts the reads (e.g. a held-out split); ``dataset`` names
    the result for the model card.
    """
    global _READ_IDS
    _READ_IDS = read_ids
    t0 = time.time()
    if model.startswith("teacher:"):
        seqs, samples = call_with_teacher(model, paths, max_reads)
    elif model.endswith(".pt"):
        seqs, samples = call_with_checkpoint(Path(model), paths, max_reads)
    else:
        seqs, samples = call_with_pipeline(model, paths, threads, max_reads, engine=engine,
                                           decoder=decoder, beam_width=beam_width,
                                           variant=variant)
    wall = time.time() - t0
    if bam is not None:
        refs = bam_references(bam)
        with tempfile.NamedTemporaryFile("w", suffix=".fa", delete=False) as fh:
            for rid, ref in refs.items():
                fh.write(f">{rid}\n{ref}\n")
        aligner = make_aligner(Path(fh.name))
        Path(fh.name).unlink()
        ids = identities({k: v for k, v in seqs.items() if k in refs}, None, aligner=aligner)
    elif reference is not None:
        ids = identities(seqs, reference)
    else:
        raise ValueError("give --reference FASTA or --bam")
    out = summarise(ids, sum(len(s) for s in seqs.values()))
    out.update({"model": model, "dataset": dataset, "engine": engine, "decoder": decoder,
                "variant": variant, "data": [str(p) for p in paths],
                "reference": str(bam or reference), "samples": samples,
                "wall_s": round(wall, 2), "samples_per_s": round(samples / max(wall, 1e-9)),
                "per_read": {k: (round(v, 5) if v is not None else None)
                             for k, v in ids.items()}})
    return out


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    p = sub.add_parser("evaluate", help="basecall DATA with MODEL and measure mappy identity")
    p.add_argument("model", help="models/<name> folder or card.toml, a checkpoint .pt, "
                                 "or teacher:rnn96")
    p.add_argument("data", nargs="+", type=Path, help="pod5 files or folders")
    p.add_argument("--reference", type=Path, default=None, help="reference FASTA")
    p.add_argument("--bam", type=Path, default=None, help="MD-tagged BAM: per-read references")
    p.add_argument("--json", type=Path, default=None, help="write the summary here")
    p.add_argument("--max-reads", type=int, default=None)
    p.add_argument("--read-ids", type=Path, default=None,
                   help="file with one read id per line: evaluate only those")
    p.add_argument("--dataset", default="", help="name of this evaluation in the card")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engine", default="onnx", help="device engine (default onnx)")
    p.add_argument("--decoder", choices=["greedy", "beam"], default="greedy")
    p.add_argument("--beam-width", type=int, default=5)
    p.add_argument("--variant", default="main",
                   help="model file: main (the card's own), or a variant (fp32, int8, ...)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the summary (without per-read values) as JSON."""
    try:
        import torch

        torch.set_num_threads(max(1, args.threads))
    except ImportError:  # the device install has no torch; the ONNX path needs none
        pass
    ids = None
    if args.read_ids is not None:
        ids = {line.strip() for line in args.read_ids.read_text().split("\n") if line.strip()}
    res = evaluate(args.model, list(args.data), args.reference, args.bam, args.threads,
                   args.max_reads, ids, args.dataset, engine=args.engine,
                   decoder=args.decoder, beam_width=args.beam_width, variant=args.variant)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "per_read"}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.evaluate ...``."""
    import sys

    parser = argparse.ArgumentParser(prog="python -m tools.evaluate")
    sub = parser.add_subparsers(dest="step")
    register(sub)
    args = parser.parse_args(["evaluate", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
