"""Raspberry Pi throughput projection from x86 measurements (a projection, not a Pi run).

For each model (the bundled models in ``models/`` plus a few student presets
built here as random-weight ONNX graphs of the ``tools.arch`` family — weights do
not change the speed) and each engine available on this machine, the script
measures on x86, single-threaded:

* ``S_x86``  engine samples/s (batch of chunks, median of repeats),
* ``P_x86``  a measured sgemm peak (numpy/OpenBLAS float32 matmul, MAC/s),

and projects to a Pi core with the formula (all assumptions explicit in ``PI``)::

    eff        = S_x86 * M / (P_x86 * R(r_x86, g))    # fraction of a good sgemm peak
    S_pi(t)    = eff * P_pi * f_gemm * R(r_pi, g) * t * p(t) / M
    R(r, g)    = 1 / (g / r + (1 - g))                # int8 speed-up, Amdahl over MACs

where ``M`` is MACs per input sample (counted from the ONNX graph; the same as
``tools.arch.macs_per_sample``), ``P_pi`` the Pi core's theoretical fp32 MAC/s,
``f_gemm`` the fraction of it a tuned sgemm reaches there, ``r`` the int8:fp32
peak ratio of the instruction path the engine uses on that CPU (1 for fp32), and
``g`` the fraction of MACs in GEMM-shaped layers (pointwise 1x1 conv,
MatMul/Gemm: the ones int8 GEMM/dot-product kernels accelerate; depthwise and stem
convolutions are taken to run at the fp32 rate), ``p(t) = p2 ** log2(t)`` the
multi-thread parallel efficiency (``p2`` per doubling of threads, an assumption:
``--p2``, default 0.9). All x86 timings are single-thread and
use *process CPU time*, not wall time, so a machine shared with other jobs still
gives the ratio ``eff`` (both the engine and the sgemm peak are timed the same way).
Output: Markdown on stdout (``--out`` to save).

Usage::

    python bench/pi_projection.py [--models DIR ...] [--engines onnx native]
        [--p2 0.9] [--out bench/arm64/pi_projection.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("pi_projection")

MINION_FULL = 512 * 5000      # 512 channels x 5 kHz
MINION_REALISTIC = 1.5e6      # ~60 % of channels sequencing at any time


@dataclass(frozen=True)
class PiCpu:
    """Published per-core figures of a Raspberry Pi CPU, and our assumptions."""

    name: str
    core: str
    ghz: float
    cores: int
    fp32_mac_per_cycle: float   # NEON fp32 FMA lanes retired per cycle
    f_gemm: float               # fraction of theoretical peak a tuned sgemm reaches
    r_int8: dict[str, float]    # int8:fp32 peak ratio per engine int8 code path
    note: str


PI = {
    "Pi 5": PiCpu(
        "Raspberry Pi 5 (BCM2712)", "Cortex-A76", 2.4, 4, 8.0, 0.85,
        {"onnx": 4.0, "native": 4.0, "tflite": 4.0},
        "A76: two 128-bit ASIMD pipes (V0, V1), FMLA .4s throughput 2/cycle -> 8 fp32 MAC/"
        "cycle = 19.2 GMAC/s (38.4 GFLOP/s) per core at 2.4 GHz. SDOT .4s (16 int8 MAC) "
        "2/cycle -> 32 MAC/cycle = 4x fp32: onnxruntime's MLAS uses it when the CPU "
        "reports asimddp, and edgecall's int8 pointwise tile does when built with "
        "+dotprod (sdot in bench/arm64/neon_report.md). Without it (SMLAL, 4 widening "
        "MAC, V0 only, 1/cycle) int8 would run at 0.5x the fp32 rate."),
    "Pi 4": PiCpu(
        "Raspberry Pi 4 (BCM2711)", "Cortex-A72", 1.8, 4, 4.0, 0.80,
        {"onnx": 1.0, "native": 1.0, "tflite": 1.0},
        "A72 (Armv8.0, no dot product): FP/ASIMD pipes F0, F1 are 64-bit; a 128-bit FMLA "
        ".4s takes both -> 4 fp32 MAC/cycle = 7.2 GMAC/s per core at 1.8 GHz (Pi 4 boards "
        "from 2022 and the Pi 400 default to 1.8 GHz; older ones 1.5 GHz: scale by 0.83). "
        "int8 without SDOT uses SMULL/SMLAL (+SADALP) widening MACs, about the same MAC/"
        "cycle as fp32 FMLA -> ratio 1."),
}
#: int8:fp32 peak ratio of each engine's int8 code path on this x86 host (AVX2, Zen/Skylake
#: class): vpmaddwd (16 int16 MAC) vs vfmadd231ps (8 fp32 MAC), both 2/cycle -> 2;
#: onnxruntime's AVX2 u8s8 QGEMM (vpmaddubsw + vpmaddwd) is also taken as 2.
R_X86 = {"onnx": 2.0, "native": 2.0, "tflite": 2.0}

PRESETS = {  # name: (channels, depth, kernel, stem_kernel, stride) of the tools.arch family
    "student-xs (64x6,k15)": (64, 6, 15, 9, 3),
    "student-s (96x8,k25)": (96, 8, 25, 15, 3),
    "student-m (128x8,k25)": (128, 8, 25, 15, 3),
    "student-l (192x10,k31)": (192, 10, 31, 15, 3),
}


def build_student_onnx(path: Path, channels: int, depth: int, kernel: int, stem_kernel: int,
                       stride: int, seed: int = 0) -> None:
    """Random-weight ONNX of the student family (BN folded, ReLU, no skips)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def w(name: str, shape: tuple[int, ...], fan_in: int) -> str:
        arr = (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def conv(x: str, out: str, cin: int, cout: int, k: int, s: int = 1, g: int = 1) -> str:
        wn = w(f"{out}_w", (cout, cin // g, k), cin // g * k)
        bn = w(f"{out}_b", (cout,), 1)
        nodes.append(helper.make_node("Conv", [x, wn, bn], [out], kernel_shape=[k],
                                      strides=[s], pads=[k // 2, k // 2], group=g))
        return out

    h = conv("signal", "stem", 1, channels, stem_kernel, stride)
    nodes.append(helper.make_node("Relu", [h], ["stem_r"]))
    h = "stem_r"
    for i in range(depth):
        h = conv(h, f"dw{i}", channels, channels, kernel, g=channels)
        h = conv(h, f"pw{i}", channels, channels, 1)
        nodes.append(helper.make_node("Relu", [h], [f"r{i}"]))
        h = f"r{i}"
    h = conv(h, "head", channels, 5, 1)
    nodes.append(helper.make_node("Transpose", [h], ["ntc"], perm=[0, 2, 1]))
    nodes.append(helper.make_node("LogSoftmax", ["ntc"], ["logprobs"], axis=-1))
    graph = helper.make_graph(
        nodes, "student",
        [helper.make_tensor_value_info("signal", TensorProto.FLOAT, ["N", 1, "T"])],
        [helper.make_tensor_value_info("logprobs", TensorProto.FLOAT, ["N", "F", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def count_macs(path: Path) -> tuple[float, int, float]:
    """(MACs per input sample, total stride, GEMM fraction) of a Conv/MatMul graph."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    shapes = {i.name: tuple(numpy_helper.to_array(i).shape) for i in model.graph.initializer}
    factor = {model.graph.input[0].name: 1}
    macs = gemm = 0.0
    for node in model.graph.node:
        f_in = next((factor[i] for i in node.input if i in factor), 1)
        f_out = f_in
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            wname = node.input[3] if node.op_type == "QLinearConv" else node.input[1]
            wshape = shapes.get(wname) or shapes.get(_dq_source(model, wname), ())
            strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1])
            f_out = f_in * strides[0]
            if wshape:
                m = wshape[0] * wshape[1] * wshape[2] / f_out
                macs += m
                groups = next((a.i for a in node.attribute if a.name == "group"), 1)
                if wshape[2] == 1 and groups == 1:
                    gemm += m
        elif node.op_type in ("MatMul", "Gemm"):
            wshape = shapes.get(node.input[1]) or shapes.get(_dq_source(model, node.input[1]))
            if wshape:
                macs += wshape[0] * wshape[1] / f_in
                gemm += wshape[0] * wshape[1] / f_in
        for o in node.output:
            factor[o] = f_out
    stride = max(factor.values())
    return macs, stride, (gemm / macs if macs else 0.0)


def _dq_source(model, name: str) -> str:
    """The initializer feeding a DequantizeLinear that produces ``name`` (QDQ graphs)."""
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and name in node.output:
            return node.input[0]
    return ""


def write_card(folder: Path, name: str, stride: int, int8: bool, chunk_size: int = 3600,
               overlap: int = 600) -> None:
    """Minimal card.toml for a benchmark-only model folder (r9.4.1, 4 kHz)."""
    from edgecall.models import write_card_toml

    model = {"file": "model.onnx", "alphabet": "NACGT", "stride": stride,
             "chunk_size": chunk_size, "overlap": overlap, "output": "log_softmax"}
    if int8:
        model["variants"] = {"int8": "model.int8.onnx"}
    write_card_toml(folder, {
        "name": name,
        "description": "benchmark-only random-weight graph (speed, not accuracy)",
        "chemistry": {"pore": "r9.4.1", "sample_rate": 4000},
        "model": model,
        "normalisation": {"method": "median_mad"}})


def quantize_int8(src: Path, dst: Path, stride: int) -> bool:
    """QDQ int8 copy (per-channel weights, random-signal calibration) for timing."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError:
        return False

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.items = iter([{"signal": rng.standard_normal((4, 1, 600 * stride))
                                .astype(np.float32)} for _ in range(4)])

        def get_next(self):  # noqa: ANN201 - onnxruntime interface
            return next(self.items, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    return True


def sgemm_peak(threads: int = 1, n: int = 1536, repeats: int = 5) -> float:
    """Best float32 matmul MAC/s (per CPU second) of numpy's BLAS, in a subprocess."""
    code = (f"import numpy as np, time\na=np.random.rand({n},{n}).astype(np.float32)\n"
            f"b=np.random.rand({n},{n}).astype(np.float32)\na@b\nbest=1e9\n"
            f"for _ in range({repeats}):\n t=time.process_time(); a@b; "
            f"best=min(best,time.process_time()-t)\nprint({n}**3/best)\n")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    return float(out.strip())


def engine_speed(folder: Path, engine: str, variant: str, stride: int, threads: int = 1,
                 batch: int = 16, chunk: int = 4002, min_s: float = 2.0) -> float | None:
    """Median samples per CPU second of ``engine.run`` on [batch, 1, chunk], None if n/a."""
    from edgecall.engines import create
    from edgecall.models import load_card

    try:
        eng = create(engine, load_card(folder), threads=threads, variant=variant)
    except Exception as exc:  # engine missing, graph unsupported, no variant...
        log.info("%s %s %s: not available (%s)", folder.name, engine, variant, exc)
        return None
    chunk -= chunk % stride
    x = np.random.default_rng(2).standard_normal((batch, 1, chunk)).astype(np.float32)
    eng.run(x)  # warm-up (allocations, thread pools)
    times: list[float] = []
    t_end = time.monotonic() + min_s
    while len(times) < 3 or time.monotonic() < t_end:
        t0 = time.process_time()
        eng.run(x)
        times.append(time.process_time() - t0)
        if len(times) >= 50:
            break
    return batch * chunk / float(np.median(times))


def _cpu_name() -> str:
    """Model name of this machine's CPU (Linux), with the core count."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def speedup(r: float, g: float) -> float:
    """Whole-model int8 speed-up when a fraction ``g`` of the MACs runs ``r`` times faster."""
    return 1.0 / (g / r + (1.0 - g))


def efficiency(s_x86: float, macs: float, gemm: float, p_x86: float, engine: str,
               variant: str) -> float:
    """Fraction of the x86 sgemm peak (int8: of the int8-adjusted peak) the engine reaches."""
    r = speedup(R_X86.get(engine, 2.0), gemm) if variant == "int8" else 1.0
    return s_x86 * macs / (p_x86 * r)


def project(s_x86: float, macs: float, gemm: float, p_x86: float, pi: PiCpu, engine: str,
            variant: str, threads: int, p2: float) -> float:
    """Projected samples/s on ``threads`` cores of ``pi`` (see the module docstring)."""
    eff = efficiency(s_x86, macs, gemm, p_x86, engine, variant)
    p_pi = pi.ghz * 1e9 * pi.fp32_mac_per_cycle * pi.f_gemm
    r_pi = speedup(pi.r_int8.get(engine, 1.0), gemm) if variant == "int8" else 1.0
    par = threads * (p2 ** math.log2(threads) if threads > 1 else 1.0)
    return eff * p_pi * r_pi * par / macs


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", type=Path, default=None,
                    help="model folders (default: models/*/ plus the student presets)")
    ap.add_argument("--no-presets", action="store_true")
    ap.add_argument("--engines", nargs="*", default=["onnx", "native"])
    ap.add_argument("--p2", type=float, default=0.9,
                    help="assumed parallel efficiency per doubling of threads")
    ap.add_argument("--json", type=Path, help="also write the raw numbers as JSON")
    ap.add_argument("--out", type=Path, help="write the Markdown report here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    tmp = Path(tempfile.mkdtemp(prefix="pi_projection_"))
    folders: dict[str, Path] = {}
    for folder in args.models if args.models is not None else sorted(
            p.parent for p in (REPO / "models").glob("*/card.toml")):
        folders[folder.name] = folder
    if not args.no_presets:
        for name, (c, d, k, sk, s) in PRESETS.items():
            f = tmp / name.split()[0]
            f.mkdir()
            build_student_onnx(f / "model.onnx", c, d, k, sk, s)
            has8 = quantize_int8(f / "model.onnx", f / "model.int8.onnx", s)
            write_card(f, name, s, has8)
            folders[name] = f

    peak = sgemm_peak()
    log.info("sgemm peak (1 thread, per CPU second): %.1f GMAC/s", peak / 1e9)
    rows = []
    for name, folder in folders.items():
        macs, stride, gemm = count_macs(folder / "model.onnx")
        for engine in args.engines:
            for variant in ("fp32", "int8"):
                s1 = engine_speed(folder, engine, variant, stride)
                if s1 is None:
                    continue
                rows.append({"model": name, "macs": macs, "gemm": gemm, "engine": engine,
                             "variant": variant, "x86": s1, "p2": args.p2})
                log.info("%s %s %s: %.0f samples/CPU-s", name, engine, variant, s1)

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Raspberry Pi throughput PROJECTION (generated {stamp})", "",
             "**A projection from x86 measurements, not a Pi measurement** — `edgecall "
             "profile` on a real Pi replaces it. Formula: `eff = S_x86 * M / (P_x86 * "
             "R(r_x86, g))`; `S_pi(t) = eff * P_pi * f_gemm * R(r_pi, g) * t * p2^log2(t) / M`;"
             " `R(r, g) = 1 / (g/r + 1 - g)` (int8 only; g = GEMM share of the MACs). "
             "S_x86 and P_x86 are single-thread, per CPU second (see "
             "`bench/pi_projection.py`).", "",
             f"x86 host: {_cpu_name()}; measured sgemm peak P_x86 (numpy/OpenBLAS, 1 "
             f"thread, per CPU second): {peak / 1e9:.1f} GMAC/s; p2 = {args.p2} (assumed).",
             ""]
    for key, pi in PI.items():
        lines.append(f"* **{key}** ({pi.core} @ {pi.ghz} GHz, f_gemm={pi.f_gemm}, "
                     f"int8 ratio r_pi={pi.r_int8}): {pi.note}")
    lines += ["", f"MinION: full = 512 ch x 5 kHz = {MINION_FULL / 1e6:.2f} M samples/s; "
              f"realistic ~{MINION_REALISTIC / 1e6:.1f} M samples/s.", "",
              "| model | MACs/sample (g) | engine | x86 samples/CPU-s | eff | p2 | "
              "Pi 5 1 thr | Pi 5 4 thr | Pi 5 4 thr % MinION (full / realistic) | "
              "Pi 4 1 thr | Pi 4 4 thr | Pi 4 4 thr % MinION (full / realistic) |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s1 = r["x86"]
        eff = efficiency(s1, r["macs"], r["gemm"], peak, r["engine"], r["variant"])
        cells = []
        for key in ("Pi 5", "Pi 4"):
            one = project(s1, r["macs"], r["gemm"], peak, PI[key], r["engine"], r["variant"],
                          1, r["p2"])
            four = project(s1, r["macs"], r["gemm"], peak, PI[key], r["engine"],
                           r["variant"], 4, r["p2"])
            r.setdefault("pi", {})[key] = {"1": one, "4": four}
            cells += [f"{one / 1e3:,.0f} k", f"{four / 1e3:,.0f} k",
                      f"{four / MINION_FULL:.0%} / {four / MINION_REALISTIC:.0%}"]
        lines.append(f"| {r['model']} | {r['macs']:,.0f} ({r['gemm']:.2f}) | "
                     f"{r['engine']} {r['variant']} | "
                     f"{s1:,.0f} | {eff:.2f} | {r['p2']:.2f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"sgemm_peak": peak, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
