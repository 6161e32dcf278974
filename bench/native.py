"""Native engine benchmark: onnxruntime FP32/INT8 vs native FP32/INT8 on real reads.

One run, one model, the same normalised real-read chunks and the same thread
count for every engine. Prints samples/s, the ratio to onnxruntime FP32,
achieved MAC/s and its fraction of a measured sgemm peak (numpy matmul of a
large fp32 matrix, same threads), then the pointwise-GEMM comparison of our
blocked micro-kernel with BLAS sgemm (scipy.linalg.cython_blas) at the model's
shape. Without ``--model`` it exports ``tools.arch.Student`` in its default
configuration with random weights (speed does not depend on weight values) and
quantises it with onnxruntime's QDQ PTQ calibrated on the same reads.

Usage::

    python bench/native.py [--model FOLDER] [--threads 2] [--batch 16] [--chunks 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="model folder (card.toml with an int8 variant)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=3600)
    ap.add_argument("--chunks", type=int, default=64, help="real-read chunks to run")
    ap.add_argument("--repeats", type=int, default=5, help="best of N interleaved passes")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get(
        "EDGECALL_SHARED_DATA", ROOT.parent / "shared" / "data")))
    return ap.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # BLAS threads must be set before numpy loads
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def real_chunks(data: Path, n: int, size: int) -> np.ndarray:
    """``n`` normalised chunks [n, 1, size] from the real R9.4.1 E. coli reads."""
    import pod5

    from edgecall.signal import Normalisation, normalise

    out: list[np.ndarray] = []
    for path in sorted((data / "r9.4.1" / "ecoli").glob("*.pod5")):
        with pod5.Reader(path) as reader:
            for rec in reader.reads():
                x = normalise(rec.signal_pa, Normalisation(clip=5.0))
                out += [x[s:s + size] for s in range(0, x.size - size + 1, size)]
                if len(out) >= n:
                    return np.stack(out[:n])[:, None, :].astype(np.float32)
    if not out:
        sys.exit(f"bench: no reads found under {data}/r9.4.1/ecoli")
    return np.stack(out)[:, None, :].astype(np.float32)


def export_student(folder: Path, calib: np.ndarray) -> tuple[Path, Path]:
    """Default Student (random weights) -> fp32 ONNX + QDQ int8 ONNX."""
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from tools.arch import ArchConfig, Student

    torch.manual_seed(0)
    model = Student(ArchConfig(skips=False)).eval()
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    torch.onnx.export(model, torch.randn(1, 1, 3600), str(fp32), input_names=["signal"],
                      output_names=["logprobs"], opset_version=17, dynamo=False,
                      dynamic_axes={"signal": {0: "N", 2: "T"}, "logprobs": {0: "N", 1: "F"}})

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"signal": calib[i:i + 8]} for i in range(0, len(calib), 8)])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    return fp32, int8


def macs_per_sample(path: Path) -> float:
    """Conv/MatMul multiply-accumulates per input sample of a sequential ONNX graph."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    init = {i.name: numpy_helper.to_array(i).shape for i in g.initializer}
    for n in g.node:  # DequantizeLinear'd weights keep their shape
        if n.op_type == "DequantizeLinear" and n.input[0] in init:
            init[n.output[0]] = init[n.input[0]]
    stride, macs = 1, 0.0
    for n in g.node:
        if n.op_type == "Conv":
            cout, cig, k = init[n.input[1]]
            for a in n.attribute:
                if a.name == "strides":
                    stride *= a.ints[0]
            macs += cout * cig * k / stride
        elif n.op_type == "MatMul" and n.input[1] in init:
            cin, cout = init[n.input[1]]
            macs += cin * cout / stride
    return macs


def sgemm_peak(threads: int) -> float:
    """MAC/s of numpy's fp32 matmul on 2048^3 (best of 3)."""
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(3))
    return 2048 ** 3 / best


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_engines(engines: dict, chunks: np.ndarray, batch: int,  # type: ignore[type-arg]
                 repeats: int) -> dict[str, float]:
    """Best wall time of one pass over ``chunks`` per engine.

    Passes are interleaved (engine A, B, C, D, A, B, ...) so that load from
    other processes on a shared machine hits every engine alike.
    """
    best = {name: float("inf") for name in engines}
    for run in engines.values():
        run(chunks[:batch])  # warm-up: plans, thread pools, caches
    for _ in range(repeats):
        for name, run in engines.items():
            t0 = time.perf_counter()
            for i in range(0, len(chunks), batch):
                run(chunks[i:i + batch])
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def gemm_table(threads: int, m: int, k: int, cout: int) -> list[str]:
    """Our blocked fp32/int8 pointwise kernels vs BLAS sgemm at one shape."""
    from edgecall import kernels_backend as kb
    from edgecall._kernels import conv, qconv

    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, cout), dtype=np.float32)
    b, out = np.zeros(cout, np.float32), np.empty((m, cout), np.float32)
    wp = kb.pack_pointwise(w)
    xq = rng.integers(-128, 128, (m, k)).astype(np.int8)
    wq = kb.pack_qpointwise(rng.integers(-127, 128, (k, cout)), qconv.qpack())
    bq, mult = np.zeros(wq.shape[0] * 16, np.int32), np.full(wq.shape[0] * 16, 1e-3, np.float32)
    oq = np.empty((m, cout), np.int8)
    qname = "int8 sdot (ours)" if qconv.qpack() == 4 else "int8 pmaddwd/vmlal (ours)"
    runs = {"blocked fp32 (ours)": lambda: conv.pointwise_conv(x, wp, b, None, out, 1, 0, 0,
                                                              threads),
            qname: lambda: qconv.qpointwise_conv(xq, wq, bq, mult, oq, 0, -128, 127, threads)}
    try:
        ptr = kb.blas_sgemm_pointer()
        runs["BLAS sgemm (scipy)"] = lambda: conv.pointwise_conv_blas(x, w, b, None, out, 1, 0,
                                                                     0, ptr)
    except ImportError:
        pass
    lines = [f"\npointwise GEMM [{m} x {k}] @ [{k} x {cout}] + bias + ReLU, {threads} threads",
             "| kernel | GMAC/s |", "|---|---:|"]
    for name, fn in runs.items():
        fn()
        best = min(_timed(fn) for _ in range(5))
        lines.append(f"| {name} | {m * k * cout / best / 1e9:.1f} |")
    return lines


def blas_variant(engine):  # type: ignore[no-untyped-def]
    """``engine`` with its fp32 pointwise convs routed through BLAS sgemm (+ epilogue pass).

    The depthwise+pointwise fusion is undone for this variant (BLAS runs whole GEMMs).
    """
    import types

    from edgecall import kernels_backend as kb
    from edgecall import kernels_ref
    from edgecall._kernels import conv
    from edgecall.engines.native_ops import FusedDwPwStep

    ptr = kb.blas_sgemm_pointer()
    prog = engine.program  # undo the depthwise+pointwise fusion: BLAS needs whole GEMMs
    steps = []
    for step in prog.steps:
        steps += [step.dw, step.pw] if isinstance(step, FusedDwPwStep) else [step]
    prog.steps, prog.buffer_of = steps, {}
    prog.assign_buffers()
    for step in engine.program.steps:
        if getattr(step, "mode", "") == "pointwise" and not step.quant:
            cout = engine.program.channels[step.out]
            w = kernels_ref.unpack_pointwise(step.w, step.w.shape[1], cout)
            b = np.ascontiguousarray(step.bias[:cout])

            def run(self, v, kern, threads, w=w, b=b):  # type: ignore[no-untyped-def]
                x, out = v[self.ins[0]], v[self.out]
                m = x.shape[0] * x.shape[1]
                res = v[self.ins[1]].reshape(m, -1) if self.has_res else None
                conv.pointwise_conv_blas(x.reshape(m, -1), w, b, res,
                                         out.reshape(m, out.shape[2]), self.act, self.lo,
                                         self.hi, ptr)

            step.run = types.MethodType(run, step)
    return engine


def main(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from edgecall.engines.native import NativeEngine
    from edgecall.kernels_backend import kernels
    from edgecall.models import load_card

    chunks = real_chunks(args.data, args.chunks, args.chunk)
    tmp = tempfile.TemporaryDirectory()
    if args.model:
        card = load_card(args.model)
        fp32, int8 = card.variant_path("fp32"), card.variant_path("int8")
        what = f"model {card.name}"
    else:
        fp32, int8 = export_student(Path(tmp.name), chunks[:16])
        what = "tools.arch.Student default (C=128, depth 8, k25, stem k15/s3), random weights"
    macs = macs_per_sample(fp32)
    peak = sgemm_peak(args.threads)

    def ort_run(path: Path):  # type: ignore[no-untyped-def]
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {"signal": x})

    engines = {"onnxruntime FP32": ort_run(fp32), "onnxruntime INT8": ort_run(int8),
               "native FP32": NativeEngine(fp32, threads=args.threads).run,
               "native INT8": NativeEngine(int8, threads=args.threads).run}
    try:
        engines["native FP32, BLAS pointwise"] = blas_variant(
            NativeEngine(fp32, threads=args.threads)).run
    except ImportError:
        pass  # scipy not installed
    samples = chunks.size
    print(f"# native engine benchmark\n{what}; {macs / 1e3:.1f} kMAC/sample; "
          f"{len(chunks)} real E. coli chunks x {args.chunk} samples, batch {args.batch}, "
          f"{args.threads} threads; {kernels().describe()}; onnxruntime {ort.__version__}; "
          f"sgemm peak (numpy 2048^3) {peak / 1e9:.1f} GMAC/s; best of {args.repeats} "
          "interleaved passes\n")
    print("| engine | samples/s | x ORT FP32 | x ORT INT8 | GMAC/s | % sgemm peak |")
    print("|---|---:|---:|---:|---:|---:|")
    rates = {name: samples / t for name, t in
             time_engines(engines, chunks, args.batch, args.repeats).items()}
    for name, r in rates.items():
        print(f"| {name} | {r:,.0f} | {r / rates['onnxruntime FP32']:.2f} | "
              f"{r / rates['onnxruntime INT8']:.2f} | {r * macs / 1e9:.1f} | "
              f"{100 * r * macs / peak:.0f}% |")
    c = 128
    print("\n".join(gemm_table(args.threads, args.batch * args.chunk // 3, c, c)))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
