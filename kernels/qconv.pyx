# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""INT8 (QDQ) kernels on channels-last activations.

Quantised activations are stored *centered*: ``int16 q - zero_point`` (so an
int8 value with its zero point spans -255..255), which turns zero padding into
plain zeros and lets the x86 path use ``pmaddwd`` (int16 pairs -> int32) without
any zero-point correction. Weights are int8 values (symmetric, per output
channel) widened to int16. Every conv requantises in the same pass::

    out = clamp(round_half_even((acc + bias[c]) * mult[c]), lo, hi)

with ``mult[c] = s_in * s_w[c] / s_out`` and ``[lo, hi]`` the output's centered
int8 range (an explicit ReLU/Clip narrows it), exactly onnxruntime's QDQ
semantics. Signatures match :mod:`edgecall.kernels_ref`.
"""

from cython.parallel cimport parallel, prange
from libc.math cimport nearbyint, nearbyintf
from libc.stdint cimport int16_t, int32_t
from libc.stdlib cimport calloc, free, malloc

cdef extern from "ec_simd.h" nogil:
    int EC_MR
    int EC_NR
    void ec_requant(const int32_t *acc, const int32_t *bias, const float *mult, int16_t *out,
                    int n, int32_t lo, int32_t hi)
    void ec_qgemm_tile(const int16_t *const *a, const int16_t *bp, int K2, int32_t *tile)
    int EC_DWR
    void ec_dw_block_q(const int16_t *const *rows, int K, const int16_t *w, int C,
                       int32_t *acc)


cdef inline int32_t _clampi(int32_t v, int32_t lo, int32_t hi) noexcept nogil:
    return lo if v < lo else (hi if v > hi else v)


def quantize(const float[::1] x, int16_t[::1] out, float scale, int zp, int qmin, int qmax,
             int threads):
    """Centered QuantizeLinear: ``clamp(rne(x / scale) + zp, qmin, qmax) - zp``."""
    cdef Py_ssize_t i, n = x.shape[0]
    with nogil:
        for i in prange(n, schedule="static", num_threads=threads):
            out[i] = <int16_t>(_clampi(<int32_t>nearbyintf(x[i] / scale) + zp, qmin, qmax) - zp)


def dequantize(const int16_t[::1] x, float[::1] out, float scale, int threads):
    """Centered DequantizeLinear: ``x * scale``."""
    cdef Py_ssize_t i, n = x.shape[0]
    with nogil:
        for i in prange(n, schedule="static", num_threads=threads):
            out[i] = x[i] * scale


def requantize(const int16_t[::1] x, int16_t[::1] out, float ratio, int lo, int hi,
               int threads):
    """Re-scale centered values to another scale: ``clamp(rne(x * ratio), lo, hi)``."""
    cdef Py_ssize_t i, n = x.shape[0]
    with nogil:
        for i in prange(n, schedule="static", num_threads=threads):
            out[i] = <int16_t>_clampi(<int32_t>nearbyintf(x[i] * ratio), lo, hi)


def qadd(const int16_t[::1] a, const int16_t[::1] b, int16_t[::1] out, float ra, float rb,
         int lo, int hi, int threads):
    """Quantised Add: ``clamp(rne(a * ra + b * rb), lo, hi)``, ``ra = s_a / s_out``.

    The products are exact in double precision, so the result does not depend
    on FMA contraction.
    """
    cdef Py_ssize_t i, n = a.shape[0]
    with nogil:
        for i in prange(n, schedule="static", num_threads=threads):
            out[i] = <int16_t>_clampi(<int32_t>nearbyint(<double>a[i] * <double>ra
                                                         + <double>b[i] * <double>rb), lo, hi)


def qconv_generic(const int16_t[:, :, ::1] x, const int16_t[:, :, :, ::1] w,
                  const int32_t[::1] bias, const float[::1] mult, int16_t[:, :, ::1] out,
                  int stride, int pad, int lo, int hi, int threads):
    """Grouped int8 conv1d; ``w`` is ``[G, K, Cin/G, Cout/G]``."""
    cdef Py_ssize_t N = x.shape[0], T = x.shape[1], Cin = x.shape[2]
    cdef Py_ssize_t G = w.shape[0], K = w.shape[1], cig = w.shape[2], cog = w.shape[3]
    cdef Py_ssize_t To = out.shape[1], Cout = out.shape[2]
    if cig * G != Cin or cog * G != Cout:
        raise ValueError("qconv_generic: channel/group mismatch")
    cdef Py_ssize_t row, n, t, k, g, ci, co, src
    cdef int32_t *acc
    cdef int32_t xv
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
                if src < 0 or src >= T:
                    continue
                for g in range(G):
                    for ci in range(cig):
                        xv = x[n, src, g * cig + ci]
                        wk = &w[g, k, ci, 0]
                        for co in range(cog):
                            acc[g * cog + co] += xv * wk[co]
            ec_requant(acc, &bias[0], &mult[0], &out[n, t, 0], <int>Cout, lo, hi)
        free(acc)


def qdepthwise_conv(const int16_t[:, :, ::1] x, const int16_t[:, ::1] w,
                    const int32_t[::1] bias, const float[::1] mult, int16_t[:, :, ::1] out,
                    int stride, int pad, int lo, int hi, int threads):
    """Depthwise int8 conv1d (groups == C); ``w`` is ``[K, C]``."""
    cdef Py_ssize_t N = x.shape[0], T = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t K = w.shape[0], To = out.shape[1]
    if w.shape[1] != C or out.shape[2] != C:
        raise ValueError("qdepthwise_conv: channel mismatch")
    cdef Py_ssize_t nt = (To + EC_DWR - 1) // EC_DWR
    cdef Py_ssize_t blk, n, t, r, k, src
    cdef const int16_t **rows
    cdef int32_t *acc
    cdef int16_t *zero
    cdef const int16_t *xb = &x[0, 0, 0]
    with nogil, parallel(num_threads=threads):
        rows = <const int16_t **>malloc(EC_DWR * K * sizeof(int16_t *))
        acc = <int32_t *>malloc(EC_DWR * C * sizeof(int32_t))
        zero = <int16_t *>calloc(C + 32, sizeof(int16_t))
        for blk in prange(N * nt, schedule="static"):
            n = blk // nt
            t = (blk % nt) * EC_DWR
            for r in range(EC_DWR):
                for k in range(K):
                    src = (t + r) * stride + k - pad
                    rows[r * K + k] = (xb + (n * T + src) * C) if (
                        0 <= src < T and t + r < To) else zero
            ec_dw_block_q(rows, <int>K, &w[0, 0], <int>C, acc)
            for r in range(min(EC_DWR, To - t)):
                ec_requant(acc + r * C, &bias[0], &mult[0], &out[n, t + r, 0], <int>C, lo, hi)
        free(rows)
        free(acc)
        free(zero)


def qpointwise_conv(const int16_t[:, ::1] x, const int16_t[:, :, ::1] wp,
                    const int32_t[::1] bias, const float[::1] mult, int16_t[:, ::1] out,
                    int lo, int hi, int threads):
    """Int8 1x1 conv as GEMM; ``wp`` is packed ``[nb, ceil(K/2), 32]`` (int16 pairs)."""
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1], NB = wp.shape[0], Cout = out.shape[1]
    cdef Py_ssize_t K2 = K // 2
    if (wp.shape[1] != (K + 1) // 2 or wp.shape[2] != 2 * EC_NR or NB * EC_NR < Cout
            or out.shape[0] != M or bias.shape[0] < Cout):
        raise ValueError("qpointwise_conv: shape mismatch")
    cdef Py_ssize_t nblk = (M + EC_MR - 1) // EC_MR
    cdef Py_ssize_t blk, i, j, m0, mr, jb, ncol
    cdef const int16_t **a
    cdef int32_t *tile
    cdef const int16_t *xb = &x[0, 0]
    cdef const int16_t *wb = &wp[0, 0, 0]
    cdef const int16_t *wl
    cdef int16_t *ob = &out[0, 0]
    cdef int32_t xl
    if M == 0:
        return
    with nogil, parallel(num_threads=threads):
        a = <const int16_t **>malloc(EC_MR * sizeof(int16_t *))
        tile = <int32_t *>malloc(EC_MR * EC_NR * sizeof(int32_t))
        for blk in prange(nblk, schedule="static"):
            m0 = blk * EC_MR
            mr = min(EC_MR, M - m0)
            for i in range(EC_MR):
                a[i] = xb + (m0 + min(i, mr - 1)) * K
            for jb in range(NB):
                ec_qgemm_tile(a, wb + jb * wp.shape[1] * 2 * EC_NR, <int>K2, tile)
                if K % 2:  # odd K: the last (k, pad) pair in scalar code
                    wl = wb + (jb * wp.shape[1] + K2) * 2 * EC_NR
                    for i in range(EC_MR):
                        xl = a[i][K - 1]
                        for j in range(EC_NR):
                            tile[i * EC_NR + j] += xl * wl[2 * j]
                ncol = min(EC_NR, Cout - jb * EC_NR)
                for i in range(mr):
                    ec_requant(&tile[i * EC_NR], &bias[jb * EC_NR], &mult[jb * EC_NR],
                               ob + (m0 + i) * Cout + jb * EC_NR, <int>ncol, lo, hi)
        free(a)
        free(tile)
