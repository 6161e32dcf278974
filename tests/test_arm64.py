"""The emulated Raspberry Pi check (``scripts/arm64-check.sh``) and its helpers.

The end-to-end test is marked ``arm64`` (minutes: Debian arm64 root under
proot + qemu, ``pip install .``, kernels, basecall on real reads) and is
deselected by default; run it with ``python -m pytest -m arm64 tests/test_arm64.py``.
The other tests are fast checks of the pure helpers the script relies on
(edit distance used for the x86 comparison, the run matrix read from the model
cards and the pass rules, the disassembly classifier, the MAC counter of the Pi
projection, the failed-step report). When the check fails, the test names the
failed step(s) and quotes the tail of each step's log.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGECALL_SHARED_DATA",
                             REPO.parent / "shared" / "data"))


def _load(path: Path, name: str):
    """Import a script file as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _levenshtein(a: str, b: str) -> int:
    """Plain-Python reference edit distance."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[:], i
        for j, cb in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
    return row[-1]


def test_edit_distance_matches_reference() -> None:
    mod = _load(REPO / "scripts" / "arm64_basecall.py", "arm64_basecall")
    rng = np.random.default_rng(0)
    for _ in range(100):
        a = "".join(rng.choice(list("ACGT"), rng.integers(0, 25)))
        b = "".join(rng.choice(list("ACGT"), rng.integers(0, 25)))
        assert mod.edit_distance(a, b) == _levenshtein(a, b)
    n, same, frac = mod.compare({"r1": "ACGTACGTAA", "r2": "GG"}, {"r1": "ACGTACGTAC", "r2": "GG"})
    assert (n, same) == (2, 1)
    assert frac == pytest.approx(1 - 1 / 12)


def test_neon_classifier() -> None:
    mod = _load(REPO / "scripts" / "arm64_neon_report.py", "arm64_neon_report")
    assert mod.classify("fmla", "v0.4s, v1.4s, v2.s[1]") == "fp32 vec fmla/fmul"
    assert mod.classify("fmadd", "s0, s1, s2, s3") == "scalar fp fmadd/fmul"
    assert mod.classify("sdot", "v0.4s, v1.16b, v2.16b") == "sdot/udot"
    assert mod.classify("smlal", "v0.4s, v1.4h, v2.h[3]") == "int vec mlal/mull"
    assert mod.classify("mul", "x0, x1, x2") is None
    assert mod.demangle("__pyx_pf_8edgecall_8_kernels_4conv_6depthwise_conv._omp_fn.0") \
        == "conv.depthwise_conv._omp_fn.0"


def test_projection_mac_count_matches_arch_formula(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    mod = _load(REPO / "bench" / "pi_projection.py", "pi_projection")
    c, d, k, sk, s = 96, 3, 25, 15, 3
    mod.build_student_onnx(tmp_path / "m.onnx", c, d, k, sk, s)
    macs, stride, gemm = mod.count_macs(tmp_path / "m.onnx")
    # tools.arch.macs_per_sample for the same ArchConfig (written out: no torch needed)
    expected = (c * sk + d * (c * k + c * c) + c * 5) / s
    assert stride == s
    assert macs == pytest.approx(expected)
    assert gemm == pytest.approx((d * c * c + c * 5) / s / expected)
    # int8 speed-up: all-GEMM gets the full ratio, no GEMM none
    assert mod.speedup(4.0, 1.0) == pytest.approx(4.0)
    assert mod.speedup(4.0, 0.0) == pytest.approx(1.0)


def test_model_specs_cover_every_variant_of_the_bundled_cards() -> None:
    mod = _load(REPO / "scripts" / "arm64_basecall.py", "arm64_basecall")
    engines = list(mod.ENGINES)
    default = {s.label: s.precision for s in
               mod.model_specs(REPO / "models" / "r941_dsc_c128_v1_int8", engines)}
    assert default == {"default:main": "int8", "onnx:main": "int8", "onnx:fp32": "fp32",
                       "native:main": "int8", "native:fp32": "fp32", "tflite:int8": "int8"}
    parent = {s.label: s.precision for s in
              mod.model_specs(REPO / "models" / "r941_dsc_c128_v1", engines)}
    assert parent == {"auto:main": "fp32", "onnx:main": "fp32", "onnx:int8": "int8",
                      "native:main": "fp32", "native:int8": "int8", "tflite:fp32": "fp32",
                      "tflite:int8": "int8"}
    # a default model outside the installed package runs with --model (auto), not bare
    outside = mod.model_specs(REPO / "models" / "r941_dsc_c128_v1_int8", engines, bundled=False)
    assert outside[0].label == "auto:main"
    assert outside[0].flags("/m") == ["--model", "/m", "--engine", "auto", "--variant", "main"]
    assert mod.Spec("m", "default", "main", "int8").flags("/m") == []


def test_judge_pass_rules() -> None:
    mod = _load(REPO / "scripts" / "arm64_basecall.py", "arm64_basecall")
    run = mod.Run
    ref = run("x86", True, 1.0, {"r1": "ACGT" * 100}, "")
    off = run("arm64", True, 1.0, {"r1": "ACGT" * 99 + "ACGA"}, "")
    onnx32, nat8 = mod.Spec("m", "onnx", "main", "fp32"), mod.Spec("m", "native", "int8", "int8")
    assert mod.judge(onnx32, ref, ref, {"fp32": ref})[1] == "pass"
    assert mod.judge(onnx32, ref, off, {"fp32": ref})[1] == "FAIL"  # onnx fp32: exact
    assert mod.judge(mod.Spec("m", "native", "main", "fp32"), ref, off, {"fp32": ref})[1] \
        == "pass"
    other = run("x86", True, 1.0, {"r1": "TTTT" * 100}, "")
    assert mod.judge(nat8, other, ref, {"fp32": ref, "int8": ref})[1] == "pass"  # exact ref
    missing = run("x86", False, 0.1, {}, "the tflite engine needs ai-edge-litert")
    tfl = mod.Spec("m", "tflite", "int8", "int8")
    assert mod.judge(tfl, missing, missing, {})[1].startswith("not available")
    assert mod.judge(onnx32, missing, missing, {})[1].startswith("FAIL")
    assert mod.judge(tfl, ref, missing, {})[1].startswith("FAIL (arm64")


def failed_steps(output: str) -> str:
    """The failed-step blocks the check prints (name + log tail), else the output's tail."""
    blocks = re.findall(r"^--- FAILED STEP: .*?^--- end of .*?$", output, re.M | re.S)
    names = re.findall(r"^--- FAILED STEP: (.*?) \(log:", output, re.M)
    if not blocks:
        return "no failed-step report (the check stopped early); output tail:\n" + output[-4000:]
    return f"failed steps: {', '.join(names)}\n" + "\n".join(b[-3000:] for b in blocks)


def test_failed_steps_names_the_step_and_its_log_tail() -> None:
    out = ("x\n--- FAILED STEP: pip install . (log: /r/03.log), last 25 lines ---\n"
           "error: gcc died\n--- end of pip install . ---\ntotal: 9s, failed steps: 1\n")
    msg = failed_steps(out)
    assert msg.startswith("failed steps: pip install .")
    assert "error: gcc died" in msg
    assert "output tail" in failed_steps("boom")


@pytest.mark.arm64
@pytest.mark.slow
@pytest.mark.realdata
def test_arm64_check_end_to_end() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"real data not found at {SHARED} (set EDGECALL_SHARED_DATA)")
    missing = [t for t in ("debootstrap", "proot", "qemu-aarch64-static",
                           "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-objdump")
               if shutil.which(t) is None]
    if missing:
        pytest.skip(f"host tools missing: {', '.join(missing)}")
    res = subprocess.run([str(REPO / "scripts" / "arm64-check.sh"), "--no-report"],
                         capture_output=True, text=True, timeout=4 * 3600)
    output = res.stdout + res.stderr
    if res.returncode != 0 or "failed steps: 0" not in res.stdout:
        pytest.fail(f"arm64 check failed (exit {res.returncode})\n{failed_steps(output)}",
                    pytrace=False)
    assert "=== arm64-check timings" in res.stdout
