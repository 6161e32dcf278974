"""Pure-numpy reference kernels: slow, obviously correct, same signatures as the compiled ones.

Every function here mirrors one in the Cython modules built from ``kernels/``
(``conv``, ``qconv``, ``ctc``) argument for argument, and writes into ``out``
the same way. :mod:`edgecall.kernels_backend` selects between the two; the
tests run both and compare. Activation codes: 0 none, 1 ReLU, 2 Clip(lo, hi),
3 SiLU. Quantised activations are int8 with a zero point (see kernels/qconv.pyx).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecall.decode import greedy_ref

ACT_NONE, ACT_RELU, ACT_CLIP, ACT_SILU = 0, 1, 2, 3
NR = 16  # packed GEMM panel width (columns)


def simd() -> str:
    """Name of the SIMD path (none: numpy)."""
    return "numpy"


def _epilogue(acc: np.ndarray, bias: np.ndarray, res: np.ndarray | None, act: int,
              lo: float, hi: float) -> np.ndarray:
    """act(acc + bias (+ res)) in float32."""
    v = (acc + bias).astype(np.float32)
    if res is not None:
        v = v + res
    if act == ACT_RELU:
        v = np.maximum(v, 0)
    elif act == ACT_CLIP:
        v = np.clip(v, lo, hi)
    elif act == ACT_SILU:
        v = v / (1 + np.exp(-v))
    return v.astype(np.float32)


def _windows(x: np.ndarray, k_size: int, stride: int, pad: int, t_out: int) -> np.ndarray:
    """[N, T, C] -> [N, t_out, K, C] zero-padded sliding windows."""
    n, t, c = x.shape
    need = (t_out - 1) * stride + k_size
    right = max(0, need - pad - t)
    xp = np.zeros((n, pad + t + right, c), dtype=x.dtype)
    xp[:, pad:pad + t] = x
    idx = np.arange(t_out)[:, None] * stride + np.arange(k_size)[None, :]
    return xp[:, idx, :]


def conv_generic(x: np.ndarray, w: np.ndarray, bias: np.ndarray, res: np.ndarray | None,
                 out: np.ndarray, stride: int, pad: int, act: int, lo: float, hi: float,
                 threads: int) -> None:
    """Grouped conv1d; ``w`` is ``[G, K, Cin/G, Cout/G]``."""
    g, k, cig, cog = w.shape
    win = _windows(np.asarray(x), k, stride, pad, out.shape[1])  # [N, To, K, Cin]
    n, to = win.shape[:2]
    win = win.reshape(n, to, k, g, cig)
    acc = np.einsum("ntkgi,gkio->ntgo", win.astype(np.float64), w.astype(np.float64))
    out[...] = _epilogue(acc.reshape(n, to, g * cog), bias, res, act, lo, hi)


def depthwise_conv(x: np.ndarray, w: np.ndarray, bias: np.ndarray, res: np.ndarray | None,
                   out: np.ndarray, stride: int, pad: int, act: int, lo: float, hi: float,
                   threads: int) -> None:
    """Depthwise conv1d; ``w`` is ``[K, C]``."""
    win = _windows(np.asarray(x), w.shape[0], stride, pad, out.shape[1])
    acc = np.einsum("ntkc,kc->ntc", win.astype(np.float64), w.astype(np.float64))
    out[...] = _epilogue(acc, bias, res, act, lo, hi)


def unpack_pointwise(wp: np.ndarray, k: int, cout: int) -> np.ndarray:
    """Packed ``[nb, K, 16]`` panels -> ``[K, Cout]``."""
    return np.ascontiguousarray(wp.transpose(1, 0, 2).reshape(k, -1)[:, :cout])


def pointwise_conv(x: np.ndarray, wp: np.ndarray, bias: np.ndarray, res: np.ndarray | None,
                   out: np.ndarray, act: int, lo: float, hi: float, threads: int) -> None:
    """1x1 conv as GEMM with a packed ``[nb, K, 16]`` weight."""
    w = unpack_pointwise(np.asarray(wp), x.shape[1], out.shape[1])
    acc = np.asarray(x, dtype=np.float64) @ w.astype(np.float64)
    out[...] = _epilogue(acc, np.asarray(bias)[:out.shape[1]], res, act, lo, hi)


def dwpw_conv(x: np.ndarray, wd: np.ndarray, bd: np.ndarray, actd: int, lod: float, hid: float,
              wp: np.ndarray, bias: np.ndarray, res: np.ndarray | None, out: np.ndarray,
              stride: int, pad: int, act: int, lo: float, hi: float, threads: int) -> None:
    """Depthwise then pointwise fp32 conv (the fused kernel's reference)."""
    n, to, cout = out.shape
    mid = np.empty((n, to, x.shape[2]), np.float32)
    depthwise_conv(x, wd, bd, None, mid, stride, pad, actd, lod, hid, threads)
    o2 = np.empty((n * to, cout), np.float32)
    r2 = None if res is None else np.asarray(res).reshape(n * to, cout)
    pointwise_conv(mid.reshape(n * to, -1), wp, bias, r2, o2, act, lo, hi, threads)
    out[...] = o2.reshape(out.shape)


def stem_conv(x: np.ndarray, wp: np.ndarray, bias: np.ndarray, out: np.ndarray, stride: int,
              pad: int, act: int, lo: float, hi: float, threads: int) -> None:
    """1-channel conv (the stem): ``x`` [N, T], ``wp`` packed ``[K, Cout]``."""
    cout = out.shape[2]
    w = unpack_pointwise(np.asarray(wp), wp.shape[1], cout)  # [K, Cout]
    conv_generic(np.asarray(x)[:, :, None], np.ascontiguousarray(w[None, :, None, :]),
                 np.asarray(bias)[:cout], None, out, stride, pad, act, lo, hi, threads)


# ---- int8 -----------------------------------------------------------------


def qpack() -> int:
    """Weight packing of :func:`qpointwise_conv` (int16 pairs)."""
    return 2


def _requant(acc: np.ndarray, bias: np.ndarray, mult: np.ndarray, zo: int, lo: int,
             hi: int) -> np.ndarray:
    """clamp(rne(float32(acc + bias) * mult) + zo, lo, hi) as int8."""
    v = (acc + bias).astype(np.float32) * mult.astype(np.float32)
    return np.clip(np.rint(v).astype(np.int64) + zo, lo, hi).astype(np.int8)


def quantize(x: np.ndarray, out: np.ndarray, scale: float, zp: int, qmin: int, qmax: int,
             threads: int) -> None:
    """QuantizeLinear: ``clamp(rne(x / scale) + zp, qmin, qmax)``."""
    q = np.rint(np.asarray(x, np.float32) / np.float32(scale)).astype(np.int64) + zp
    out[...] = np.clip(q, qmin, qmax).astype(np.int8)


def dequantize(x: np.ndarray, out: np.ndarray, scale: float, zp: int, threads: int) -> None:
    """DequantizeLinear: ``(x - zp) * scale``."""
    out[...] = (np.asarray(x, np.int32) - zp).astype(np.float32) * np.float32(scale)


def requantize(x: np.ndarray, out: np.ndarray, ratio: float, zi: int, zo: int, lo: int, hi: int,
               threads: int) -> None:
    """``clamp(rne((x - zi) * ratio) + zo, lo, hi)``."""
    v = (np.asarray(x, np.int32) - zi).astype(np.float32) * np.float32(ratio)
    out[...] = np.clip(np.rint(v).astype(np.int64) + zo, lo, hi).astype(np.int8)


def qadd(a: np.ndarray, b: np.ndarray, out: np.ndarray, ra: float, rb: float, za: int, zb: int,
         zo: int, lo: int, hi: int, threads: int) -> None:
    """``clamp(rne((a - za) * ra + (b - zb) * rb) + zo, lo, hi)`` (exact products)."""
    v = ((np.asarray(a, np.float64) - za) * np.float64(np.float32(ra))
         + (np.asarray(b, np.float64) - zb) * np.float64(np.float32(rb)))
    out[...] = np.clip(np.rint(v).astype(np.int64) + zo, lo, hi).astype(np.int8)


def _qwindows(x: np.ndarray, k: int, stride: int, pad: int, t_out: int, zp: int) -> np.ndarray:
    """Sliding windows padded with the zero point, as int64."""
    return _windows(np.asarray(x, np.int64) - zp, k, stride, pad, t_out) + zp


def qconv_generic(x: np.ndarray, w: np.ndarray, bias: np.ndarray, mult: np.ndarray,
                  out: np.ndarray, stride: int, pad: int, zp_in: int, zo: int, lo: int, hi: int,
                  threads: int) -> None:
    """Grouped int8 conv1d; ``w`` is ``[G, K, Cin/G, Cout/G]``; padding = ``zp_in``."""
    g, k, cig, cog = w.shape
    win = _qwindows(x, k, stride, pad, out.shape[1], zp_in)
    n, to = win.shape[:2]
    win = win.reshape(n, to, k, g, cig)
    acc = np.einsum("ntkgi,gkio->ntgo", win, w.astype(np.int64)).reshape(n, to, g * cog)
    out[...] = _requant(acc, bias, mult, zo, lo, hi)


def qdepthwise_conv(x: np.ndarray, w: np.ndarray, bias: np.ndarray, mult: np.ndarray,
                    out: np.ndarray, stride: int, pad: int, zp_in: int, zo: int, lo: int, hi: int,
                    threads: int) -> None:
    """Depthwise int8 conv1d; ``w`` is ``[K, C]``; padding = ``zp_in``."""
    win = _qwindows(x, w.shape[0], stride, pad, out.shape[1], zp_in)
    acc = np.einsum("ntkc,kc->ntc", win, w.astype(np.int64))
    out[...] = _requant(acc, bias, mult, zo, lo, hi)


def unpack_qpointwise(wp: np.ndarray, k: int, cout: int) -> np.ndarray:
    """Packed ``[nb, Kp / P, 16 * P]`` panels (P = 2 or 4 k-values per column) -> ``[K, Cout]``."""
    nb, kq, width = wp.shape
    p = width // NR
    w = wp.reshape(nb, kq, NR, p).transpose(1, 3, 0, 2).reshape(kq * p, nb * NR)
    return np.ascontiguousarray(w[:k, :cout])


def qdwpw_conv(x: np.ndarray, wd: np.ndarray, bd: np.ndarray, md: np.ndarray, zp_in: int, zd: int,
               lod: int, hid: int, wp: np.ndarray, bias: np.ndarray, mult: np.ndarray,
               out: np.ndarray, stride: int, pad: int, zo: int, lo: int, hi: int,
               threads: int) -> None:
    """Depthwise then pointwise int8 conv (the fused kernel's reference)."""
    n, to, cout = out.shape
    mid = np.empty((n, to, x.shape[2]), np.int8)
    qdepthwise_conv(x, wd, bd, md, mid, stride, pad, zp_in, zd, lod, hid, threads)
    o2 = np.empty((n * to, cout), np.int8)
    qpointwise_conv(mid.reshape(n * to, -1), wp, bias, mult, o2, zo, lo, hi, threads)
    out[...] = o2.reshape(out.shape)


def qstem_conv(x: np.ndarray, wp: np.ndarray, ksize: int, bias: np.ndarray, mult: np.ndarray,
               out: np.ndarray, stride: int, pad: int, zp_in: int, zo: int, lo: int, hi: int,
               threads: int) -> None:
    """1-channel int8 conv (the stem): ``x`` [N, T], ``wp`` packed ``[ksize, Cout]``."""
    cout = out.shape[2]
    w = unpack_qpointwise(np.asarray(wp), ksize, cout).astype(np.int16)
    qconv_generic(np.asarray(x)[:, :, None], np.ascontiguousarray(w[None, :, None, :]),
                  np.asarray(bias)[:cout], np.asarray(mult)[:cout], out, stride, pad, zp_in,
                  zo, lo, hi, threads)


def qpointwise_conv(x: np.ndarray, wp: np.ndarray, bias: np.ndarray, mult: np.ndarray,
                    out: np.ndarray, zo: int, lo: int, hi: int, threads: int) -> None:
    """Int8 1x1 conv as GEMM with packed weights (either packing)."""
    cout = out.shape[1]
    w = unpack_qpointwise(np.asarray(wp), x.shape[1], cout)
    acc = np.asarray(x, np.int64) @ w.astype(np.int64)
    out[...] = _requant(acc, np.asarray(bias)[:cout], np.asarray(mult)[:cout], zo, lo, hi)


# ---- CTC ------------------------------------------------------------------

greedy = greedy_ref


def _lse(a: float, b: float) -> float:
    """log(exp(a) + exp(b))."""
    if a == -np.inf:
        return b
    if b == -np.inf:
        return a
    m = max(a, b)
    return m + float(np.log1p(np.exp(-abs(a - b))))


def beam_search(logp: np.ndarray, beam_width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CTC prefix beam search; same algorithm and tie-breaking as the compiled core."""
    if beam_width < 1:
        raise ValueError("beam_width must be >= 1")
    lp = np.asarray(logp, dtype=np.float32)
    f, c_n = lp.shape
    parent, label, frame = [-1], [0], [-1]
    beams = [(0, 0.0, -np.inf)]  # (node, p_blank, p_nonblank)
    for t in range(f):
        row = [float(v) for v in lp[t]]
        index = {node: i for i, (node, _, _) in enumerate(beams)}
        cand: list[list[Any]] = []  # [node, parent, label, p_blank, p_nonblank]
        for node, pb, pnb in beams:
            last = label[node] if node else -1
            cand.append([node, None, None, _lse(pb, pnb) + row[0],
                         pnb + row[last] if last > 0 else -np.inf])
        child = {}
        for node, _, _ in beams:
            if node and parent[node] in index:
                child[(parent[node], label[node])] = index[node]
        for node, pb, pnb in beams:
            last = label[node] if node else -1
            tot = _lse(pb, pnb)
            for c in range(1, c_n):
                ext = (pb if c == last else tot) + row[c]
                j = child.get((node, c))
                if j is not None:
                    cand[j][4] = _lse(cand[j][4], ext)
                else:
                    cand.append([-1, node, c, -np.inf, ext])
        scores = [_lse(cd[3], cd[4]) for cd in cand]
        order = sorted(range(len(cand)), key=lambda i: -scores[i])[:beam_width]
        beams = []
        for i in order:
            node, par, lab, pb, pnb = cand[i]
            if node < 0:
                parent.append(par)
                label.append(lab)
                frame.append(t)
                node = len(parent) - 1
            beams.append((node, pb, pnb))
    node = beams[0][0] if f else 0
    labels, frames = [], []
    while node > 0:
        labels.append(label[node])
        frames.append(frame[node])
        node = parent[node]
    labels_a = np.array(labels[::-1], dtype=np.int32)
    frames_a = np.array(frames[::-1], dtype=np.int64)
    moves = np.zeros(f, dtype=np.uint8)
    moves[frames_a] = 1
    ends = np.append(frames_a[1:], f)[:frames_a.size]
    spans = zip(frames_a, ends, labels_a, strict=True)
    probs = np.array([np.exp(lp[s:e, lab].max()) for s, e, lab in spans], dtype=np.float32)
    return labels_a, probs, moves
