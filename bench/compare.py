"""Side-by-side benchmark: edgecall's engines versus a bare onnxruntime FP32 loop.

All contestants run the same model file on the same chunks (cut from real
reads by edgecall's signal stage), batch by batch, single process:

* ``bare onnxruntime``: an ``InferenceSession`` with default options (only the
  thread count set) in a plain loop - the baseline every ratio refers to;
* each edgecall engine (``onnx``, ``native``, ``tflite``; ``name:variant`` for
  e.g. ``onnx:int8``) through ``edgecall.engines.create``;
* the whole edgecall pipeline (reader-to-decoded-reads, ``Basecaller.call``)
  on the same reads, for the overhead of everything around the network.

Each contestant gets one warm-up pass, then ``--repeat`` timed passes; the
median is reported, with the largest absolute difference of its outputs from
the baseline's. Engines that are not installed/built are listed as such.

Usage::

    python bench/compare.py ../shared/data/r9.4.1/ecoli --model MODEL \\
        --engines onnx,native,tflite --threads 2 --batch-size 32 --chunks 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

try:
    import edgecall  # noqa: F401
except ImportError:  # run from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecall import engines, models, signal  # noqa: E402
from edgecall.errors import EdgecallError  # noqa: E402
from edgecall.profiling import load_reads, parse_engines  # noqa: E402
from edgecall.types import Read  # noqa: E402


def make_batches(reads: list[Read], card: models.ModelCard, n_chunks: int,
                 batch_size: int) -> list[np.ndarray]:
    """Up to ``n_chunks`` chunks of the reads, as ``[B, 1, T]`` float32 batches."""
    chunks: list[np.ndarray] = []
    for read in reads:
        x = signal.prepare(read, card.norm, card.sample_rate)
        chunks += [c.signal for c in signal.chunk_read(read.read_id, x, card.chunk_size,
                                                       card.overlap, card.stride)]
        if len(chunks) >= n_chunks:
            break
    chunks = chunks[:n_chunks]
    return [np.stack(chunks[i:i + batch_size])[:, None, :]
            for i in range(0, len(chunks), batch_size)]


def bare_onnxruntime(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """A plain InferenceSession (default options, thread count only)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), sess_options=opts,
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda batch: sess.run(None, {name: batch})[0]


def time_round_robin(runs: dict[str, Callable[[np.ndarray], np.ndarray]],
                     batches: list[np.ndarray], repeat: int
                     ) -> tuple[dict[str, float], dict[str, list[np.ndarray]]]:
    """Median seconds per pass over ``batches`` for each contestant, and its outputs.

    Passes are interleaved (A B C A B C ...) so that load from other processes
    hits every contestant alike; the first (warm-up) pass is not timed.
    """
    outs = {name: [np.asarray(run(b)) for b in batches] for name, run in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            t0 = time.perf_counter()
            for b in batches:
                run(b)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}, outs


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest absolute difference between two lists of outputs."""
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def pipeline_time(card: models.ModelCard, reads: list[Read], engine: str, threads: int,
                  batch_size: int, repeat: int) -> tuple[float, int]:
    """Median seconds for Basecaller.call over ``reads`` and the raw samples they hold."""
    from edgecall.pipeline import Basecaller

    bc = Basecaller.load(card, engine=engine, threads=threads, batch_size=batch_size,
                         probe_read=reads[0])
    for _ in bc.call(reads[:1]):
        pass
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in bc.call(reads):
            pass
        times.append(time.perf_counter() - t0)
    return statistics.median(times), sum(r.num_samples for r in reads)


def compare(args: argparse.Namespace) -> list[dict]:
    """Run every contestant; return one row per contestant."""
    reads, _, _ = load_reads(args.paths, max_reads=args.max_reads)
    card = (models.resolve(args.model) if args.model else None) or models.select_for(reads[0])
    reads = [r for r in reads if r.sample_rate in card.accepted_sample_rates]
    batches = make_batches(reads, card, args.chunks, args.batch_size)
    samples = sum(b.shape[0] * b.shape[2] for b in batches)
    n_chunks = sum(b.shape[0] for b in batches)
    base = "bare onnxruntime fp32"
    runs = {base: bare_onnxruntime(card.variant_path("fp32"), args.threads)}
    missing = []
    for name, variant in parse_engines(args.engines):
        label = "edgecall " + (name if variant in ("", "main") else f"{name}:{variant}")
        try:
            runs[label] = engines.create(name, card, threads=args.threads, variant=variant).run
        except Exception as exc:  # noqa: BLE001 - report missing engines, keep going
            missing.append({"name": label, "error": str(exc).splitlines()[0]})
    secs, outs = time_round_robin(runs, batches, args.repeat)
    rows = [_row(name, secs[name], samples, n_chunks, secs[base],
                 max_diff(outs[name], outs[base])) for name in runs] + missing
    base_s = secs[base]
    if not args.no_pipeline:
        p_secs, raw = pipeline_time(card, reads[:args.max_reads or len(reads)],
                                    args.pipeline_engine, args.threads, args.batch_size,
                                    args.repeat)
        rows.append({"name": f"edgecall pipeline ({args.pipeline_engine}, reads->bases)",
                     "seconds": p_secs, "samples_per_s": raw / p_secs,
                     "ratio": (raw / p_secs) / (samples / base_s), "max_abs_diff": None,
                     "note": "raw read samples/s (chunk overlap not counted)"})
    return rows


def _row(name: str, secs: float, samples: int, chunks: int, base_s: float,
         diff: float) -> dict:
    """One result row (ratio > 1 means faster than the baseline)."""
    return {"name": name, "seconds": secs, "chunks_per_s": chunks / secs,
            "samples_per_s": samples / secs, "ratio": base_s / secs, "max_abs_diff": diff}


def print_rows(rows: list[dict], header: str) -> None:
    """The comparison as a table on stdout."""
    print(header)
    print(f"{'contestant':45s} {'seconds':>9s} {'samples/s':>13s} {'x bare ort':>10s} "
          f"{'max|diff|':>10s}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:45s} unavailable: {r['error']}")
            continue
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"
        print(f"{r['name']:45s} {r['seconds']:9.3f} {r['samples_per_s']:13,.0f} "
              f"{r['ratio']:10.2f} {diff:>10s}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="pod5 files or folders")
    p.add_argument("--model", help="model name or folder (default: by the reads' chemistry)")
    p.add_argument("--engines", default="onnx,native,tflite")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--chunks", type=int, default=256, help="chunks per timed pass")
    p.add_argument("--repeat", type=int, default=3, help="timed passes (median reported)")
    p.add_argument("--max-reads", type=int, default=16)
    p.add_argument("--pipeline-engine", default="onnx")
    p.add_argument("--no-pipeline", action="store_true", help="skip the full-pipeline row")
    p.add_argument("--json", help="also write the rows as JSON")
    args = p.parse_args(argv)
    try:
        rows = compare(args)
    except EdgecallError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 1
    import onnxruntime as ort

    print_rows(rows, f"bench/compare.py: onnxruntime {ort.__version__}, {args.threads} "
               f"thread(s), batch {args.batch_size}, {args.chunks} chunks, median of "
               f"{args.repeat}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
