"""Every compiled kernel against its numpy reference (edgecall.kernels_ref).

Random shapes include odd lengths, channel counts that are not multiples of
the SIMD width, strides and paddings wider than the signal, and every fused
activation/residual combination.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgecall import kernels_backend as kb
from edgecall import kernels_ref as ref

try:
    COMPILED = kb.kernels(pure=False)
except kb.KernelsMissing as exc:  # pragma: no cover - depends on the build
    pytest.skip(f"compiled kernels not built: {exc}", allow_module_level=True)

ACTS = [(0, 0.0, 0.0), (1, 0.0, 0.0), (2, 0.0, 6.0), (2, -0.5, 0.7), (3, 0.0, 0.0)]


def _t_out(t: int, k: int, stride: int, pad: int) -> int:
    return (t + 2 * pad - k) // stride + 1


@pytest.mark.parametrize("seed", range(6))
def test_depthwise_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, t, c = rng.integers(1, 4), int(rng.integers(1, 90)), int(rng.integers(1, 70))
    k = int(rng.choice([1, 2, 3, 5, 9, 25]))
    stride = int(rng.integers(1, 4))
    pad = int(rng.integers(0, k + 3))
    to = _t_out(t, k, stride, pad)
    if to < 1:
        pytest.skip("empty output")
    x = rng.standard_normal((n, t, c), dtype=np.float32)
    w = rng.standard_normal((k, c), dtype=np.float32)
    b = rng.standard_normal(c, dtype=np.float32)
    for act, lo, hi in ACTS:
        res = rng.standard_normal((n, to, c), dtype=np.float32) if act % 2 else None
        outs = []
        for kern in (COMPILED, ref):
            out = np.empty((n, to, c), np.float32)
            kern.depthwise_conv(x, w, b, res, out, stride, pad, act, lo, hi, 2)
            outs.append(out)
        np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", range(6))
def test_generic_conv_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    g = int(rng.choice([1, 2, 4]))
    cig, cog = int(rng.integers(1, 5)), int(rng.integers(1, 7))
    if seed == 0:
        g, cig, cog = 1, 1, 33  # the stem: 1 -> C
    n, t, k = int(rng.integers(1, 3)), int(rng.integers(5, 80)), int(rng.choice([1, 3, 4, 15]))
    stride, pad = int(rng.integers(1, 4)), k // 2
    to = _t_out(t, k, stride, pad)
    x = rng.standard_normal((n, t, g * cig), dtype=np.float32)
    w = rng.standard_normal((g, k, cig, cog), dtype=np.float32)
    b = rng.standard_normal(g * cog, dtype=np.float32)
    for act, lo, hi in ACTS:
        res = rng.standard_normal((n, to, g * cog), dtype=np.float32) if act == 1 else None
        outs = []
        for kern in (COMPILED, ref):
            out = np.empty((n, to, g * cog), np.float32)
            kern.conv_generic(x, w, b, res, out, stride, pad, act, lo, hi, 2)
            outs.append(out)
        np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m,k,cout", [(1, 1, 1), (7, 13, 5), (6, 128, 128), (61, 33, 17),
                                      (200, 64, 48), (13, 127, 5)])
def test_pointwise_matches_reference(m: int, k: int, cout: int) -> None:
    rng = np.random.default_rng(m * 1000 + k)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, cout), dtype=np.float32)
    wp = kb.pack_pointwise(w)
    np.testing.assert_array_equal(ref.unpack_pointwise(wp, k, cout), w)
    b = kb.pad_channels(rng.standard_normal(cout, dtype=np.float32), wp.shape[0] * kb.NR)
    for act, lo, hi in ACTS:
        res = rng.standard_normal((m, cout), dtype=np.float32) if act in (0, 2) else None
        outs = []
        for kern in (COMPILED, ref):
            out = np.empty((m, cout), np.float32)
            kern.pointwise_conv(x, wp, b, res, out, act, lo, hi, 2)
            outs.append(out)
        np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=2e-4)
        if act == 0 and res is None:
            np.testing.assert_allclose(outs[0], x @ w + b[:cout], rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("seed", range(5))
def test_stem_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(500 + seed)
    n, t, cout = int(rng.integers(1, 4)), int(rng.integers(1, 200)), int(rng.integers(1, 40))
    k, stride = int(rng.choice([1, 3, 15, 16])), int(rng.integers(1, 5))
    pad = int(rng.integers(0, k))
    to = _t_out(t, k, stride, pad)
    if to < 1:
        pytest.skip("empty output")
    x = rng.standard_normal((n, t), dtype=np.float32)
    w = rng.standard_normal((k, cout), dtype=np.float32)
    wp = kb.pack_pointwise(w)
    b = kb.pad_channels(rng.standard_normal(cout, dtype=np.float32), wp.shape[0] * kb.NR)
    outs = []
    for kern in (COMPILED, ref):
        out = np.empty((n, to, cout), np.float32)
        kern.stem_conv(x, wp, b, out, stride, pad, 1, 0.0, 0.0, 2)
        outs.append(out)
    generic = np.empty_like(outs[0])
    ref.conv_generic(x[:, :, None], w[None, :, None, :].copy(), b[:cout], None, generic, stride,
                     pad, 1, 0.0, 0.0, 1)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outs[0], generic, rtol=1e-4, atol=1e-4)
    # int8: the same through qstem_conv, each backend with its own packing
    xq = rng.integers(-128, 128, (n, t)).astype(np.int8)
    wq = rng.integers(-127, 128, (k, cout)).astype(np.int8)
    npad = wp.shape[0] * kb.NR
    bq = kb.pad_channels(rng.integers(-3000, 3000, cout).astype(np.int32), npad)
    mult = kb.pad_channels((rng.random(cout) * 1e-2).astype(np.float32), npad)
    zp_in, zo, lo, hi = _qparams(rng)
    qouts = []
    for kern in (COMPILED, ref):
        out = np.empty((n, to, cout), np.int8)
        kern.qstem_conv(xq, kb.pack_qpointwise(wq, kern.qpack()), k, bq, mult, out, stride, pad,
                        zp_in, zo, lo, hi, 2)
        qouts.append(out)
    np.testing.assert_array_equal(qouts[0], qouts[1])


def test_pointwise_blas_variant_agrees() -> None:
    pytest.importorskip("scipy")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 24), dtype=np.float32)
    w = rng.standard_normal((24, 19), dtype=np.float32)
    b = rng.standard_normal(19, dtype=np.float32)
    from edgecall._kernels import conv

    out = np.empty((37, 19), np.float32)
    conv.pointwise_conv_blas(x, w, b, None, out, 1, 0.0, 0.0, kb.blas_sgemm_pointer())
    np.testing.assert_allclose(out, np.maximum(x @ w + b, 0), rtol=1e-4, atol=1e-4)


# ---- int8 -------------------------------------------------------------------


def _qparams(rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(zp_in, zo, lo, hi): random zero points and a possibly narrowed clamp range."""
    zp_in, zo = int(rng.integers(-128, 128)), int(rng.integers(-128, 20))
    lo = int(rng.choice([-128, zo]))  # zo: a fused ReLU
    return zp_in, zo, lo, 127


@pytest.mark.parametrize("seed", range(5))
def test_qdepthwise_and_qgeneric_exact(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    n, t, c = int(rng.integers(1, 3)), int(rng.integers(1, 70)), int(rng.integers(1, 50))
    k = int(rng.choice([1, 2, 3, 7, 25]))
    stride, pad = int(rng.integers(1, 4)), int(rng.integers(0, k + 2))
    to = _t_out(t, k, stride, pad)
    if to < 1:
        pytest.skip("empty output")
    zp_in, zo, lo, hi = _qparams(rng)
    x = rng.integers(-128, 128, (n, t, c)).astype(np.int8)
    w = rng.integers(-127, 128, (k, c)).astype(np.int16)
    b = rng.integers(-5000, 5000, c).astype(np.int32)
    mult = (rng.random(c) * 1e-3).astype(np.float32)
    outs = []
    for kern in (COMPILED, ref):
        out = np.empty((n, to, c), np.int8)
        kern.qdepthwise_conv(x, w, b, mult, out, stride, pad, zp_in, zo, lo, hi, 2)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    # the same depthwise conv through the generic grouped kernel
    wg = np.ascontiguousarray(w.T.reshape(c, k, 1, 1))
    for kern in (COMPILED, ref):
        out = np.empty((n, to, c), np.int8)
        kern.qconv_generic(x, wg, b, mult, out, stride, pad, zp_in, zo, lo, hi, 2)
        outs.append(out)
    for o in outs[1:]:
        np.testing.assert_array_equal(outs[0], o)
    assert outs[0].min() >= lo


@pytest.mark.parametrize("m,k,cout", [(1, 1, 1), (7, 13, 5), (6, 128, 128), (61, 33, 17),
                                      (100, 64, 40), (9, 6, 3)])
def test_qpointwise_exact(m: int, k: int, cout: int) -> None:
    rng = np.random.default_rng(m + k + cout)
    x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    w = rng.integers(-127, 128, (k, cout)).astype(np.int8)
    zp_in, zo, lo, hi = _qparams(rng)
    npad = -(-cout // kb.NR) * kb.NR
    b = kb.pad_channels(rng.integers(-9000, 9000, cout).astype(np.int32), npad)
    mult = kb.pad_channels((rng.random(cout) * 2e-3).astype(np.float32), npad)
    outs = []
    for kern in (COMPILED, ref):  # each with its own weight packing
        wp = kb.pack_qpointwise(w, kern.qpack())
        out = np.empty((m, cout), np.int8)
        kern.qpointwise_conv(x, wp, b, mult, out, zo, lo, hi, 2)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert outs[0].min() >= lo and outs[0].max() <= hi


def test_qpack_layouts_round_trip() -> None:
    w = np.random.default_rng(1).integers(-127, 128, (37, 21)).astype(np.int8)
    for pack in (2, 4):
        wp = kb.pack_qpointwise(w, pack)
        assert wp.shape == (2, -(-37 // pack), 16 * pack)
        np.testing.assert_array_equal(ref.unpack_qpointwise(wp, 37, 21), w)


def test_quantize_family_exact() -> None:
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(1001) * 3).astype(np.float32)
    x[:4] = [0.25, 0.75, -1.25, 1.25]  # x / 0.5 are ties: round half to even
    outs = []
    for kern in (COMPILED, ref):
        q = np.empty(x.shape, np.int8)
        kern.quantize(x, q, 0.5, -3, -128, 127, 2)
        d = np.empty(x.shape, np.float32)
        kern.dequantize(q, d, 0.5, -3, 2)
        r = np.empty(x.shape, np.int8)
        kern.requantize(q, r, 0.37, -3, 5, -100, 90, 2)
        a = np.empty(x.shape, np.int8)
        kern.qadd(q, r, a, 0.8, 1.3, -3, 5, -7, -120, 127, 2)
        outs.append((q, d, r, a))
    for u, v in zip(*outs, strict=True):
        np.testing.assert_array_equal(u, v)
    q = outs[0][0]
    assert list(q[:4] + 3) == [0, 2, -2, 2]
    assert np.abs(outs[0][1] - x).max() <= 0.25 + 1e-6  # within half a step (no clipping)


# ---- CTC --------------------------------------------------------------------


def _posteriors(rng: np.random.Generator, f: int, c: int = 5, sharp: float = 3.0) -> np.ndarray:
    z = rng.standard_normal((f, c)).astype(np.float32) * sharp
    return (z - np.log(np.exp(z).sum(1, keepdims=True))).astype(np.float32)


@pytest.mark.parametrize("seed", range(8))
def test_greedy_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    lp = _posteriors(rng, int(rng.integers(0, 400)))
    a, b = COMPILED.greedy(lp), ref.greedy(lp)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5)
    np.testing.assert_array_equal(a[2], b[2])
    assert a[2].sum() == len(a[0])


@pytest.mark.parametrize("seed,width", [(0, 1), (1, 3), (2, 5), (3, 8), (4, 16)])
def test_beam_matches_reference(seed: int, width: int) -> None:
    rng = np.random.default_rng(400 + seed)
    lp = _posteriors(rng, int(rng.integers(1, 120)), sharp=1.5)
    a, b = COMPILED.beam_search(lp, width), ref.beam_search(lp, width)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5)
    np.testing.assert_array_equal(a[2], b[2])
    assert a[2].sum() == len(a[0])


# ---- the C SIMD helpers, natively and for aarch64 under qemu-user -------------

KERNELS_DIR = Path(__file__).resolve().parents[1] / "kernels"


def _selftest(cc: str, flags: list[str], runner: list[str], tmp_path: Path) -> str:
    exe = tmp_path / f"selftest_{Path(cc).name}"
    cmd = [cc, "-O3", *flags, f"-I{KERNELS_DIR}", str(KERNELS_DIR / "selftest" / "ec_selftest.c"),
           "-o", str(exe), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    res = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip()


@pytest.mark.parametrize("flags,path", [([], "scalar"), (["-mavx2", "-mfma"], "avx2+fma")])
def test_c_helpers_native(flags: list[str], path: str, tmp_path: Path) -> None:
    if shutil.which("cc") is None or platform.machine() != "x86_64":
        pytest.skip("needs an x86-64 C compiler")
    if path != "scalar" and path not in COMPILED.simd:
        pytest.skip(f"this CPU has no {path}")
    assert _selftest("cc", flags, [], tmp_path) == f"ok {path}"


@pytest.mark.parametrize("march,path", [("armv8-a", "neon"),
                                        ("armv8.2-a+dotprod", "neon+dotprod")])
def test_c_helpers_aarch64_qemu(march: str, path: str, tmp_path: Path) -> None:
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64-static")
    if not cc or not qemu:
        pytest.skip("needs gcc-aarch64-linux-gnu and qemu-user-static")
    assert _selftest(cc, [f"-march={march}", "-static"], [qemu], tmp_path) == f"ok {path}"


# pruned students have widths that are multiples of 4, not of the 16/8-channel SIMD bodies
PRUNED = [(0, None), (1, None), (2, None), (3, None), (4, 76), (5, 12), (6, 20), (7, 4)]


@pytest.mark.parametrize("seed,width", PRUNED)
def test_fused_dw_pw_equals_sequence(seed: int, width: int | None) -> None:
    rng = np.random.default_rng(600 + seed)
    n, t, c = int(rng.integers(1, 3)), int(rng.integers(1, 60)), width or int(rng.integers(1, 40))
    cout, k = int(rng.integers(1, 40)), int(rng.choice([1, 3, 9, 25]))
    stride, pad = int(rng.integers(1, 3)), k // 2
    to = _t_out(t, k, stride, pad)
    x = rng.integers(-128, 128, (n, t, c)).astype(np.int8)
    wd = rng.integers(-127, 128, (k, c)).astype(np.int16)
    bd = rng.integers(-3000, 3000, c).astype(np.int32)
    md = (rng.random(c) * 2e-3).astype(np.float32)
    zp_in, zd, lod, hid = _qparams(rng)
    _, zo, lo, hi = _qparams(rng)
    w = rng.integers(-127, 128, (c, cout)).astype(np.int8)
    npad = -(-cout // kb.NR) * kb.NR
    b = kb.pad_channels(rng.integers(-9000, 9000, cout).astype(np.int32), npad)
    mult = kb.pad_channels((rng.random(cout) * 2e-3).astype(np.float32), npad)
    outs = []
    for kern in (COMPILED, ref):
        wp = kb.pack_qpointwise(w, kern.qpack())
        fused = np.empty((n, to, cout), np.int8)
        kern.qdwpw_conv(x, wd, bd, md, zp_in, zd, lod, hid, wp, b, mult, fused, stride, pad,
                        zo, lo, hi, 2)
        mid = np.empty((n, to, c), np.int8)
        kern.qdepthwise_conv(x, wd, bd, md, mid, stride, pad, zp_in, zd, lod, hid, 2)
        seq = np.empty((n * to, cout), np.int8)
        kern.qpointwise_conv(mid.reshape(n * to, c), wp, b, mult, seq, zo, lo, hi, 2)
        np.testing.assert_array_equal(fused, seq.reshape(fused.shape))
        outs.append(fused)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("seed,width", PRUNED)
def test_fused_dw_pw_fp32_matches_sequence(seed: int, width: int | None) -> None:
    rng = np.random.default_rng(700 + seed)
    n, t, c = int(rng.integers(1, 3)), int(rng.integers(1, 60)), width or int(rng.integers(1, 40))
    cout, k = int(rng.integers(1, 40)), int(rng.choice([1, 3, 9, 25]))
    stride, pad = int(rng.integers(1, 3)), k // 2
    to = _t_out(t, k, stride, pad)
    x = rng.standard_normal((n, t, c), dtype=np.float32)
    wd = rng.standard_normal((k, c), dtype=np.float32)
    bd = rng.standard_normal(c, dtype=np.float32)
    wp = kb.pack_pointwise(rng.standard_normal((c, cout), dtype=np.float32))
    b = kb.pad_channels(rng.standard_normal(cout, dtype=np.float32), wp.shape[0] * kb.NR)
    res = rng.standard_normal((n, to, cout), dtype=np.float32) if seed % 2 else None
    outs = []
    for kern in (COMPILED, ref):
        fused = np.empty((n, to, cout), np.float32)
        kern.dwpw_conv(x, wd, bd, 2, -1.0, 1.0, wp, b, res, fused, stride, pad, 3, 0.0, 0.0, 2)
        outs.append(fused)
    mid = np.empty((n, to, c), np.float32)
    COMPILED.depthwise_conv(x, wd, bd, None, mid, stride, pad, 2, -1.0, 1.0, 1)
    seq = np.empty((n * to, cout), np.float32)
    COMPILED.pointwise_conv(mid.reshape(n * to, c), wp, b,
                            None if res is None else res.reshape(n * to, cout), seq, 3, 0.0, 0.0,
                            1)
    np.testing.assert_allclose(outs[0], seq.reshape(outs[0].shape), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)


def test_missing_compiled_kernels_fail_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> kb.Kernels:
        raise ImportError("No module named 'edgecall._kernels.conv'")

    monkeypatch.setattr(kb, "_compiled", broken)
    monkeypatch.setattr(kb, "_CACHE", {})
    monkeypatch.delenv("EDGECALL_PURE_PYTHON", raising=False)
    monkeypatch.setattr(kb, "_have_compiler", lambda: True)
    with pytest.raises(kb.KernelsMissing, match="build_ext --inplace"):
        kb.kernels()
    monkeypatch.setattr(kb, "_have_compiler", lambda: False)  # no compiler: numpy, warned
    assert kb.kernels().name == "numpy"
    monkeypatch.setattr(kb, "_CACHE", {})
    with pytest.raises(kb.KernelsMissing):
        kb.kernels(pure=False)  # explicitly asked for compiled kernels
