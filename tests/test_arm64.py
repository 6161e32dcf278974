"""The emulated Raspberry Pi check (``scripts/arm64-check.sh``) and its helpers.

The end-to-end test is marked ``arm64`` (minutes: Debian arm64 root under
proot + qemu, ``pip install .``, kernels, basecall on real reads) and is
deselected by default; run it with ``python -m pytest -m arm64 tests/test_arm64.py``.
The other tests are fast checks of the pure helpers the script relies on
(edit distance used for the x86 comparison, the disassembly classifier, the
MAC counter of the Pi projection).
"""

from __future__ import annotations

import importlib.util
import os
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
    tail = (res.stdout + res.stderr)[-4000:]
    assert res.returncode == 0, tail
    assert "=== arm64-check timings" in res.stdout
    assert "failed steps: 0" in res.stdout
