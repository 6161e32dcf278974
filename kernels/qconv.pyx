# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""INT8 (QDQ) kernels on channels-last int8 activations.

Quantised activations are int8 values ``q`` with a zero point (uint8 tensors are
stored shifted by -128, which is exact). Weights are symmetric int8 per output
channel (widened to int16 for the depthwise and generic kernels). Convolutions
pad with the input's zero point and compute, with int32 accumulation,::

    out = clamp(round_half_even((sum_k q_k w_k + bias[c]) * mult[c]) + zo, lo, hi)

where the caller folds ``-zp_in * sum_k w`` into ``bias`` and sets
``mult[c] = s_in * s_w[c] / s_out`` and ``[lo, hi]`` (narrowed by an explicit
ReLU/Clip): exactly onnxruntime's QDQ semantics. The pointwise GEMM uses int16
pairs with ``pmaddwd`` on x86-64 (``vmlal`` on plain NEON) or int8 quads with
``sdot`` on Armv8.2 dot-product CPUs; ``qpack()`` says which weight packing
this build expects. The stem (1 input channel) is the same GEMM over
overlapping signal windows; depthwise+pointwise can run fused per block of
rows. Signatures match :mod:`edgecall.kernels_ref`.
"""

import numpy as np

from cython.parallel cimport parallel, prange
from libc.math cimport nearbyint, nearbyintf
from libc.stdint cimport int8_t, int16_t, int32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

cdef extern from "ec_simd.h" nogil:
    int EC_MR
    int EC_NR
    int EC_DWR
    int ec_qpack()
    void ec_requant(const int32_t *acc, const int32_t *bias, const float *mult, int8_t *out,
                    int n, int32_t zo, int32_t lo, int32_t hi)
    void ec_qgemm_rows(const int8_t *x, int lda, int K, int mr, const void *bp, int NB,
                       int32_t *tiles, void *scratch)
    void ec_dw_block_q(const int8_t *const *rows, int K, const int16_t *w, int C,
                       int32_t *acc)
    void ec_dw_rows(const char *x, size_t row_bytes, Py_ssize_t n, Py_ssize_t T, Py_ssize_t t,
                    Py_ssize_t To, int stride, int pad, int K, const char *pad_row,
                    const char **rows)


def qpack() -> int:
    """Weight packing of :func:`qpointwise_conv`: 2 (int16 pairs) or 4 (int8 quads, sdot)."""
    return ec_qpack()


cdef inline int32_t _clampi(int32_t v, int32_t lo, int32_t hi) noexcept nogil:
    return lo if v < lo else (hi if v > hi else v)


def quantize(const float[::1] x, int8_t[::1] out, float scale, int zp, int qmin, int qmax,
             int threads):
    """QuantizeLinear: ``clamp(rne(x / scale) + zp, qmin, qmax)``."""
    cdef Py_ssize_t i, n = x.shape[0]
    with nogil:
        for i in prange(n, schedule="static", num_threads=threads):
            out[i] = <int8_t>_clampi(<int32_t>nearbyintf(x[i] / scale) + zp, qmin, qmax)


def dequantize(const int8_t[::1] x, float[::1] out, float scale, int zp, int threads):
    """DequantizeLinear: ``(x - zp) * scale``."""
    cdef Py_ssize_t i, n = x.shape[0]
    with nogil:
        for i in prange(n, schedule="static", num_threads=threads):
            out[i] = (x[i] - zp) * scale


def requantize(const int8_t[::1] x, int8_t[::1] out, float ratio, int zi, int zo, int lo,
               int hi, int threads):
    """Another scale/zero point: ``clamp(rne((x - zi) * ratio) + zo, lo, hi)``."""
    cdef Py_ssize_t i, n = x.shape[0]
    with nogil:
        for i in prange(n, schedule="static", num_threads=threads):
            out[i] = <int8_t>_clampi(<int32_t>nearbyintf((x[i] - zi) * ratio) + zo, lo, hi)


def qadd(const int8_t[::1] a, const int8_t[::1] b, int8_t[::1] out, float ra, float rb,
         int za, int zb, int zo, int lo, int hi, int threads):
    """Quantised Add: ``clamp(rne((a - za) * ra + (b - zb) * rb) + zo, lo, hi)``.

    ``ra = s_a / s_out``; the products are exact in double precision, so the
    result does not depend on FMA contraction.
    """
    cdef Py_ssize_t i, n = a.shape[0]
    with nogil:
        for i in prange(n, schedule="static", num_threads=threads):
            out[i] = <int8_t>_clampi(
                <int32_t>nearbyint(<double>(a[i] - za) * <double>ra
                                   + <double>(b[i] - zb) * <double>rb) + zo, lo, hi)


def qconv_generic(const int8_t[:, :, ::1] x, const int16_t[:, :, :, ::1] w,
                  const int32_t[::1] bias, const float[::1] mult, int8_t[:, :, ::1] out,
                  int stride, int pad, int zp_in, int zo, int lo, int hi, int threads):
    """Grouped int8 conv1d; ``w`` is ``[G, K, Cin/G, Cout/G]``; padding = ``zp_in``."""
    cdef Py_ssize_t N = x.shape[0], T = x.shape[1], Cin = x.shape[2]
    cdef Py_ssize_t G = w.shape[0], K = w.shape[1], cig = w.shape[2], cog = w.shape[3]
    cdef Py_ssize_t To = out.shape[1], Cout = out.shape[2]
    if cig * G != Cin or cog * G != Cout:
        raise ValueError("qconv_generic: channel/group mismatch")
    cdef Py_ssize_t row, n, t, k, g, ci, co, src
    cdef int32_t *acc
    cdef int32_t xv
    cdef bint inside
    cdef const int16_t *wk
    with nogil, parallel(num_threads=threads):
        acc = <int32_t *>malloc(Cout * sizeof(int32_t))
        for row in prange(N * To, schedule="static"):
            n = row // To
            t = row % To
            for co in range(Cout):
                acc[co] = 0
            for k in range(K):
                src = t * stride + k - pad
                inside = 0 <= src < T
                for g in range(G):
                    for ci in range(cig):
                        xv = x[n, src, g * cig + ci] if inside else zp_in
                        wk = &w[g, k, ci, 0]
                        for co in range(cog):
                            acc[g * cog + co] += xv * wk[co]
            ec_requant(acc, &bias[0], &mult[0], &out[n, t, 0], <int>Cout, zo, lo, hi)
        free(acc)


def qdepthwise_conv(const int8_t[:, :, ::1] x, const int16_t[:, ::1] w,
                    const int32_t[::1] bias, const float[::1] mult, int8_t[:, :, ::1] out,
                    int stride, int pad, int zp_in, int zo, int lo, int hi, int threads):
    """Depthwise int8 conv1d (groups == C); ``w`` is ``[K, C]``; padding = ``zp_in``."""
    cdef Py_ssize_t N = x.shape[0], T = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t K = w.shape[0], To = out.shape[1]
    if w.shape[1] != C or out.shape[2] != C:
        raise ValueError("qdepthwise_conv: channel mismatch")
    cdef Py_ssize_t nt = (To + EC_DWR - 1) // EC_DWR
    cdef Py_ssize_t blk, n, t, r
    cdef const int8_t **rows
    cdef int32_t *acc
    cdef int8_t *padrow
    cdef const int8_t *xb = &x[0, 0, 0]
    with nogil, parallel(num_threads=threads):
        rows = <const int8_t **>malloc(EC_DWR * K * sizeof(int8_t *))
        acc = <int32_t *>malloc(EC_DWR * C * sizeof(int32_t))
        padrow = <int8_t *>malloc(C + 32)
        memset(padrow, <int8_t>zp_in, C + 32)
        for blk in prange(N * nt, schedule="static"):
            n = blk // nt
            t = (blk % nt) * EC_DWR
            ec_dw_rows(<const char *>xb, C, n, T, t, To, stride, pad, <int>K,
                       <const char *>padrow, <const char **>rows)
            ec_dw_block_q(rows, <int>K, &w[0, 0], <int>C, acc)
            for r in range(min(EC_DWR, To - t)):
                ec_requant(acc + r * C, &bias[0], &mult[0], &out[n, t + r, 0], <int>C, zo,
                           lo, hi)
        free(rows)
        free(acc)
        free(padrow)


cdef const int8_t[::1] _packed(wp, Py_ssize_t K, Py_ssize_t Cout, Py_ssize_t nbias):
    """Validate a packed int8 weight for this build; its bytes."""
    cdef int P = ec_qpack()
    cdef Py_ssize_t Kp = (K + P - 1) // P * P
    if wp.ndim != 3 or wp.shape[1] * wp.shape[2] != Kp * EC_NR or wp.shape[0] * EC_NR < Cout \
            or wp.dtype != (np.int8 if P == 4 else np.int16) or nbias < wp.shape[0] * EC_NR:
        raise ValueError("packed int8 weight: shape/packing mismatch")
    return np.ascontiguousarray(wp).reshape(-1).view(np.int8)


def qstem_conv(const int8_t[:, ::1] x, wp, int ksize, const int32_t[::1] bias,
               const float[::1] mult, int8_t[:, :, ::1] out, int stride, int pad, int zp_in,
               int zo, int lo, int hi, int threads):
    """1-channel input conv (the stem) as a GEMM over overlapping signal windows.

    ``x`` is ``[N, T]``; ``wp`` the ``[ksize, Cout]`` weight packed like
    :func:`qpointwise_conv`; padding is ``zp_in``.
    """
    cdef Py_ssize_t N = x.shape[0], T = x.shape[1], To = out.shape[1], Cout = out.shape[2]
    cdef const int8_t[::1] wbytes = _packed(wp, ksize, Cout, min(bias.shape[0], mult.shape[0]))
    cdef Py_ssize_t NB = wp.shape[0], nblk = (To + EC_MR - 1) // EC_MR
    cdef Py_ssize_t L = (To + EC_MR) * stride + ksize + pad + T + 8  # padded signal buffer
    cdef Py_ssize_t job, n, t0, mr, jb, i, ncol, j
    cdef Py_ssize_t *cur
    cdef int8_t *xp
    cdef int32_t *tiles
    cdef void *scratch
    cdef const void *wb = &wbytes[0]
    cdef int8_t *ob = &out[0, 0, 0]
    if N == 0 or To == 0:
        return
    with nogil, parallel(num_threads=threads):
        xp = <int8_t *>malloc(L)
        tiles = <int32_t *>malloc(NB * EC_MR * EC_NR * sizeof(int32_t))
        scratch = malloc(EC_MR * (ksize + 4) * 2)
        cur = <Py_ssize_t *>malloc(sizeof(Py_ssize_t))
        cur[0] = -1  # the sequence currently copied into xp (per thread)
        for job in prange(N * nblk, schedule="static"):
            n = job // nblk
            if cur[0] != n:  # copy the sequence, padded with the zero point
                cur[0] = n
                memset(xp, <int8_t>zp_in, L)
                for j in range(T):
                    xp[pad + j] = x[n, j]
            t0 = (job % nblk) * EC_MR
            mr = min(EC_MR, To - t0)
            ec_qgemm_rows(xp + t0 * stride, stride, ksize, <int>mr, wb, <int>NB, tiles, scratch)
            for jb in range(NB):
                ncol = min(EC_NR, Cout - jb * EC_NR)
                for i in range(mr):
                    ec_requant(&tiles[(jb * EC_MR + i) * EC_NR], &bias[jb * EC_NR],
                               &mult[jb * EC_NR], ob + (n * To + t0 + i) * Cout + jb * EC_NR,
                               <int>ncol, zo, lo, hi)
        free(xp)
        free(tiles)
        free(scratch)
        free(cur)


def qpointwise_conv(const int8_t[:, ::1] x, wp, const int32_t[::1] bias,
                    const float[::1] mult, int8_t[:, ::1] out, int zo, int lo, int hi,
                    int threads):
    """Int8 1x1 conv as GEMM; ``wp`` from ``kernels_backend.pack_qpointwise(w, qpack())``."""
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1], Cout = out.shape[1]
    if out.shape[0] != M:
        raise ValueError("qpointwise_conv: shape mismatch")
    cdef const int8_t[::1] wbytes = _packed(wp, K, Cout, min(bias.shape[0], mult.shape[0]))
    cdef Py_ssize_t NB = wp.shape[0]
    cdef Py_ssize_t nblk = (M + EC_MR - 1) // EC_MR
    cdef Py_ssize_t blk, i, m0, mr, jb, ncol
    cdef int32_t *tiles
    cdef void *scratch
    cdef const int8_t *xb = &x[0, 0]
    cdef const void *wb = &wbytes[0]
    cdef int8_t *ob = &out[0, 0]
    if M == 0:
        return
    with nogil, parallel(num_threads=threads):
        tiles = <int32_t *>malloc(NB * EC_MR * EC_NR * sizeof(int32_t))
        scratch = malloc(EC_MR * (K + 4) * 2)
        for blk in prange(nblk, schedule="static"):
            m0 = blk * EC_MR
            mr = min(EC_MR, M - m0)
            ec_qgemm_rows(xb + m0 * K, <int>K, <int>K, <int>mr, wb, <int>NB, tiles, scratch)
            for jb in range(NB):
                ncol = min(EC_NR, Cout - jb * EC_NR)
                for i in range(mr):
                    ec_requant(&tiles[(jb * EC_MR + i) * EC_NR], &bias[jb * EC_NR],
                               &mult[jb * EC_NR], ob + (m0 + i) * Cout + jb * EC_NR,
                               <int>ncol, zo, lo, hi)
        free(tiles)
        free(scratch)


cdef enum:
    RB = 12  # rows per fused block: a multiple of EC_DWR (4) and EC_MR (6)


def qdwpw_conv(const int8_t[:, :, ::1] x, const int16_t[:, ::1] wd, const int32_t[::1] bd,
               const float[::1] md, int zp_in, int zd, int lod, int hid, wp,
               const int32_t[::1] bias, const float[::1] mult, int8_t[:, :, ::1] out,
               int stride, int pad, int zo, int lo, int hi, int threads):
    """Depthwise conv then pointwise conv, fused per block of output rows.

    Same result as :func:`qdepthwise_conv` (params ``wd, bd, md, zd, lod, hid``)
    followed by :func:`qpointwise_conv`, but the depthwise output of each block
    stays in a small per-thread buffer instead of memory.
    """
    cdef Py_ssize_t N = x.shape[0], T = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t K = wd.shape[0], To = out.shape[1], Cout = out.shape[2]
    if wd.shape[1] != C or RB % EC_DWR or RB % EC_MR:
        raise ValueError("qdwpw_conv: shape mismatch")
    cdef const int8_t[::1] wbytes = _packed(wp, C, Cout, min(bias.shape[0], mult.shape[0]))
    cdef Py_ssize_t NB = wp.shape[0], nt = (To + RB - 1) // RB
    cdef Py_ssize_t job, n, t0, rb, bi, sb, r, k, src, m0, mr, jb, i, ncol
    cdef const int8_t **rows
    cdef int32_t *acc
    cdef int8_t *padrow
    cdef int8_t *mid
    cdef int32_t *tiles
    cdef void *scratch
    cdef const int8_t *xb = &x[0, 0, 0]
    cdef const void *wb = &wbytes[0]
    cdef int8_t *ob = &out[0, 0, 0]
    if N == 0 or To == 0:
        return
    with nogil, parallel(num_threads=threads):
        rows = <const int8_t **>malloc(EC_DWR * K * sizeof(int8_t *))
        acc = <int32_t *>malloc(EC_DWR * C * sizeof(int32_t))
        padrow = <int8_t *>malloc(C + 32)
        memset(padrow, <int8_t>zp_in, C + 32)
        mid = <int8_t *>malloc(RB * C + 32)
        tiles = <int32_t *>malloc(NB * EC_MR * EC_NR * sizeof(int32_t))
        scratch = malloc(EC_MR * (C + 4) * 2)
        for job in prange(N * nt, schedule="static"):
            n = job // nt
            t0 = (job % nt) * RB
            rb = min(RB, To - t0)
            for bi in range((rb + EC_DWR - 1) // EC_DWR):
                sb = bi * EC_DWR
                for r in range(EC_DWR):
                    for k in range(K):
                        src = (t0 + sb + r) * stride + k - pad
                        rows[r * K + k] = (xb + (n * T + src) * C) if (
                            0 <= src < T and sb + r < rb) else padrow
                ec_dw_block_q(rows, <int>K, &wd[0, 0], <int>C, acc)
                for r in range(min(EC_DWR, rb - sb)):
                    ec_requant(acc + r * C, &bd[0], &md[0], mid + (sb + r) * C, <int>C, zd,
                               lod, hid)
            for bi in range((rb + EC_MR - 1) // EC_MR):
                m0 = bi * EC_MR
                mr = min(EC_MR, rb - m0)
                ec_qgemm_rows(mid + m0 * C, <int>C, <int>C, <int>mr, wb, <int>NB, tiles,
                              scratch)
                for jb in range(NB):
                    ncol = min(EC_NR, Cout - jb * EC_NR)
                    for i in range(mr):
                        ec_requant(&tiles[(jb * EC_MR + i) * EC_NR], &bias[jb * EC_NR],
                                   &mult[jb * EC_NR],
                                   ob + (n * To + t0 + m0 + i) * Cout + jb * EC_NR,
                                   <int>ncol, zo, lo, hi)
        free(rows)
        free(acc)
        free(padrow)
        free(mid)
        free(tiles)
        free(scratch)
