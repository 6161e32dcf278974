"""Students versus their teacher: onnxruntime samples/s side by side, in one run.

The R9.4.1 target of the model-training issue is a student at least 2x the
deepnano-blitz teacher's onnxruntime samples/s on the same machine. This script
exports the teacher (rnn96 by default, exact activations) to a temporary ONNX
file (third-party weights: never written into the project), then times it and
every given model file round-robin - same threads, same batch of real signal
chunks, best of ``--rounds`` passes of ``--seconds`` each - and prints each
model's samples/s and its ratio to the teacher.

Usage (needs torch, i.e. ``pip install .[tools]``, and ../shared/data)::

    python bench/teacher.py models/r941_dsc_c128_v1 models/r941_dsc_c128_v1_int8 \\
        --threads 2 [--json bench/results/teacher_vs_students.json]

A model is a model folder (its main file and every ONNX variant in the card)
or an ``.onnx`` file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def onnx_files(spec: str) -> list[tuple[str, Path]]:
    """(label, path) of every ONNX file a model folder's card names, or the file itself."""
    p = Path(spec)
    if p.suffix == ".onnx":
        return [(p.stem, p)]
    from edgecall.models import load_card

    card = load_card(p)
    out = [(f"{card.name}", card.onnx_path)]
    for key, name in card.variants.items():
        if name.endswith(".onnx"):
            out.append((f"{card.name}:{key}", card.folder / name))
    return out


def real_chunks(n: int, length: int) -> np.ndarray:
    """``[n, 1, length]`` median/MAD-normalised chunks of real R9.4.1 E. coli reads."""
    from tools.compress import load_chunks
    from tools.teacher import shared_data

    pod5 = shared_data() / "r9.4.1" / "ecoli" / "reads.pod5"
    return load_chunks([pod5], chunk_size=length, max_chunks=n)[:, None, :]


def session(path: Path, threads: int):  # noqa: ANN201 - onnxruntime type
    """An onnxruntime CPU session with ``threads`` intra-op threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    """Time the teacher and the students; print a table of samples/s and ratios."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model folders or .onnx files")
    ap.add_argument("--teacher", default="rnn96", help="deepnano-blitz width (rnn48/64/96/256)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=3600, help="samples per chunk (stride 12 ok)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from tools.teacher import default_weights, export_onnx

    weights = default_weights(int(args.teacher.removeprefix("rnn")))
    if not weights.is_file():
        print(f"bench/teacher.py: {weights}: teacher weights not found (../shared/data)",
              file=sys.stderr)
        return 2
    x = real_chunks(args.batch_size, args.chunk)
    with tempfile.TemporaryDirectory() as tmp:
        contestants = [(f"teacher {args.teacher}", export_onnx(weights, Path(tmp) / "t.onnx"))]
        for spec in args.models:
            contestants += onnx_files(spec)
        sessions = [(label, session(path, args.threads), path) for label, path in contestants]
        best = {label: 0.0 for label, _, _ in sessions}
        for _ in range(args.rounds):
            for label, sess, _ in sessions:
                sess.run(None, {"signal": x})  # warm-up
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < args.seconds:
                    sess.run(None, {"signal": x})
                    n += 1
                best[label] = max(best[label], n * x.size / (time.perf_counter() - t0))
        sizes = {label: path.stat().st_size for label, _, path in sessions}
    base = best[sessions[0][0]]
    print(f"onnxruntime CPU, {args.threads} threads, batch {args.batch_size} x {args.chunk} "
          f"samples of real R9.4.1 signal, best of {args.rounds} x {args.seconds:.0f} s, "
          f"{platform.machine()}")
    print(f"{'model':44s} {'samples/s':>12s} {'x teacher':>10s} {'KiB':>8s}")
    rows = []
    for label, _, _ in sessions:
        ratio = best[label] / base
        print(f"{label:44s} {best[label]:12,.0f} {ratio:10.2f} {sizes[label] / 1024:8.0f}")
        rows.append({"model": label, "samples_per_s": round(best[label]),
                     "ratio_to_teacher": round(ratio, 3), "bytes": sizes[label]})
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "batch": args.batch_size,
                                         "chunk": args.chunk, "machine": platform.machine(),
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
