# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""FP32 convolution kernels on channels-last activations ``[N, T, C]``.

Kernels: grouped conv (generic), depthwise, pointwise (a blocked 6x16 GEMM
micro-kernel), the 1-channel stem as a GEMM over overlapping signal windows,
and depthwise+pointwise fused per block of output rows. Every kernel fuses the
epilogue ``out = act(conv + bias (+ res))`` into the same pass (``act``: 0 none,
1 ReLU, 2 Clip(lo, hi), 3 SiLU) and parallelises over output rows with OpenMP.
Signatures match :mod:`edgecall.kernels_ref`.
"""

from cython.parallel cimport parallel, prange
from libc.stdlib cimport calloc, free, malloc
from libc.stdint cimport uintptr_t

cdef extern from "ec_simd.h" nogil:
    int EC_MR
    int EC_NR
    const char *ec_simd_name()
    void ec_epilogue_f32(const float *acc, const float *bias, const float *res, float *out,
                         int n, int act, float lo, float hi)
    void ec_sgemm_tile(const float *const *a, const float *bp, int K, float *tile)
    int EC_DWR
    void ec_dw_block_f32(const float *const *rows, int K, const float *w, int C, float *acc)
    void ec_dw_rows(const char *x, size_t row_bytes, Py_ssize_t n, Py_ssize_t T, Py_ssize_t t,
                    Py_ssize_t To, int stride, int pad, int K, const char *pad_row,
                    const char **rows)


def simd() -> str:
    """Name of the SIMD path these kernels were compiled with."""
    return ec_simd_name().decode()


def conv_generic(const float[:, :, ::1] x, const float[:, :, :, ::1] w,
                 const float[::1] bias, res, float[:, :, ::1] out,
                 int stride, int pad, int act, float lo, float hi, int threads):
    """Grouped conv1d; ``w`` is ``[G, K, Cin/G, Cout/G]`` (stem: G=1, Cin=1)."""
    cdef Py_ssize_t N = x.shape[0], T = x.shape[1], Cin = x.shape[2]
    cdef Py_ssize_t G = w.shape[0], K = w.shape[1], cig = w.shape[2], cog = w.shape[3]
    cdef Py_ssize_t To = out.shape[1], Cout = out.shape[2]
    cdef const float[:, :, ::1] r
    cdef const float *rp = NULL
    if cig * G != Cin or cog * G != Cout:
        raise ValueError("conv_generic: channel/group mismatch")
    if res is not None:
        r = res
        rp = &r[0, 0, 0]
    cdef Py_ssize_t row, n, t, k, g, ci, co, src
    cdef float *acc
    cdef float xv
    cdef const float *wk
    with nogil, parallel(num_threads=threads):
        acc = <float *>malloc(Cout * sizeof(float))
        for row in prange(N * To, schedule="static"):
            n = row // To
            t = row % To
            for co in range(Cout):
                acc[co] = 0.0
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
            ec_epilogue_f32(acc, &bias[0], (rp + row * Cout) if rp != NULL else NULL,
                            &out[n, t, 0], <int>Cout, act, lo, hi)
        free(acc)


def depthwise_conv(const float[:, :, ::1] x, const float[:, ::1] w, const float[::1] bias,
                   res, float[:, :, ::1] out, int stride, int pad, int act, float lo,
                   float hi, int threads):
    """Depthwise conv1d (groups == C); ``w`` is ``[K, C]``."""
    cdef Py_ssize_t N = x.shape[0], T = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t K = w.shape[0], To = out.shape[1]
    cdef const float[:, :, ::1] r
    cdef const float *rp = NULL
    if w.shape[1] != C or out.shape[2] != C:
        raise ValueError("depthwise_conv: channel mismatch")
    if res is not None:
        r = res
        rp = &r[0, 0, 0]
    cdef Py_ssize_t nt = (To + EC_DWR - 1) // EC_DWR
    cdef Py_ssize_t blk, n, t, j
    cdef const float **rows
    cdef float *acc
    cdef float *zero
    cdef const float *xb = &x[0, 0, 0]
    with nogil, parallel(num_threads=threads):
        rows = <const float **>malloc(EC_DWR * K * sizeof(float *))
        acc = <float *>malloc(EC_DWR * C * sizeof(float))
        zero = <float *>calloc(C + 16, sizeof(float))
        for blk in prange(N * nt, schedule="static"):
            n = blk // nt
            t = (blk % nt) * EC_DWR
            ec_dw_rows(<const char *>xb, C * sizeof(float), n, T, t, To, stride, pad, <int>K,
                       <const char *>zero, <const char **>rows)
            ec_dw_block_f32(rows, <int>K, &w[0, 0], <int>C, acc)
            for j in range(min(EC_DWR, To - t)):
                ec_epilogue_f32(acc + j * C, &bias[0],
                                (rp + (n * To + t + j) * C) if rp != NULL else NULL,
                                &out[n, t + j, 0], <int>C, act, lo, hi)
        free(rows)
        free(acc)
        free(zero)


def pointwise_conv(const float[:, ::1] x, const float[:, :, ::1] wp, const float[::1] bias,
                   res, float[:, ::1] out, int act, float lo, float hi, int threads):
    """1x1 conv as GEMM: ``out[M, Cout] = x[M, K] @ W``; ``wp`` is packed ``[nb, K, 16]``."""
    cdef Py_ssize_t M = x.shape[0], K = x.shape[1], NB = wp.shape[0], Cout = out.shape[1]
    cdef const float[:, ::1] r
    cdef const float *rp = NULL
    if wp.shape[1] != K or wp.shape[2] != EC_NR or NB * EC_NR < Cout or out.shape[0] != M:
        raise ValueError("pointwise_conv: shape mismatch")
    if res is not None:
        r = res
        rp = &r[0, 0]
    cdef Py_ssize_t nblk = (M + EC_MR - 1) // EC_MR
    cdef Py_ssize_t blk, i, m0, mr, jb, ncol
    cdef const float **a
    cdef float *tile
    cdef const float *xb = &x[0, 0]
    cdef const float *wb = &wp[0, 0, 0]
    cdef float *ob = &out[0, 0]
    if M == 0:
        return
    with nogil, parallel(num_threads=threads):
        a = <const float **>malloc(EC_MR * sizeof(float *))
        tile = <float *>malloc(EC_MR * EC_NR * sizeof(float))
        for blk in prange(nblk, schedule="static"):
            m0 = blk * EC_MR
            mr = min(EC_MR, M - m0)
            for i in range(EC_MR):
                a[i] = xb + (m0 + min(i, mr - 1)) * K
            for jb in range(NB):
                ec_sgemm_tile(a, wb + jb * K * EC_NR, <int>K, tile)
                ncol = min(EC_NR, Cout - jb * EC_NR)
                for i in range(mr):
                    ec_epilogue_f32(&tile[i * EC_NR], &bias[jb * EC_NR],
                                    (rp + (m0 + i) * Cout + jb * EC_NR) if rp != NULL else NULL,
                                    ob + (m0 + i) * Cout + jb * EC_NR, <int>ncol, act, lo, hi)
        free(a)
        free(tile)


def stem_conv(const float[:, ::1] x, const float[:, :, ::1] wp, const float[::1] bias,
              float[:, :, ::1] out, int stride, int pad, int act, float lo, float hi,
              int threads):
    """1-channel input conv (the stem) as a GEMM over overlapping signal windows.

    ``x`` is ``[N, T]``; ``wp`` the ``[K, Cout]`` weight packed like
    :func:`pointwise_conv`; zero padding.
    """
    cdef Py_ssize_t N = x.shape[0], T = x.shape[1], To = out.shape[1], Cout = out.shape[2]
    cdef Py_ssize_t K = wp.shape[1], NB = wp.shape[0], nblk = (To + EC_MR - 1) // EC_MR
    if wp.shape[2] != EC_NR or NB * EC_NR < Cout or bias.shape[0] < NB * EC_NR:
        raise ValueError("stem_conv: shape mismatch")
    cdef Py_ssize_t L = (To + EC_MR) * stride + K + pad + T + 8  # padded signal buffer
    cdef Py_ssize_t job, n, t0, mr, jb, i, ncol, j
    cdef Py_ssize_t *cur
    cdef float *xp
    cdef float *tile
    cdef const float **a
    cdef const float *wb = &wp[0, 0, 0]
    cdef float *ob = &out[0, 0, 0]
    if N == 0 or To == 0:
        return
    with nogil, parallel(num_threads=threads):
        xp = <float *>calloc(L, sizeof(float))
        tile = <float *>malloc(EC_MR * EC_NR * sizeof(float))
        a = <const float **>malloc(EC_MR * sizeof(float *))
        cur = <Py_ssize_t *>malloc(sizeof(Py_ssize_t))
        cur[0] = -1  # the sequence currently copied into xp (per thread)
        for job in prange(N * nblk, schedule="static"):
            n = job // nblk
            if cur[0] != n:
                cur[0] = n
                for j in range(T):
                    xp[pad + j] = x[n, j]
            t0 = (job % nblk) * EC_MR
            mr = min(EC_MR, To - t0)
            for i in range(EC_MR):
                a[i] = xp + (t0 + min(i, mr - 1)) * stride
            for jb in range(NB):
                ec_sgemm_tile(a, wb + jb * K * EC_NR, <int>K, tile)
                ncol = min(EC_NR, Cout - jb * EC_NR)
                for i in range(mr):
                    ec_epilogue_f32(&tile[i * EC_NR], &bias[jb * EC_NR], NULL,
                                    ob + (n * To + t0 + i) * Cout + jb * EC_NR, <int>ncol, act,
                                    lo, hi)
        free(xp)
        free(tile)
        free(a)
        free(cur)


ctypedef void (*sgemm_t)(char *transa, char *transb, int *m, int *n, int *k, float *alpha,
                         float *a, int *lda, float *b, int *ldb, float *beta, float *c,
                         int *ldc) noexcept nogil


def pointwise_conv_blas(const float[:, ::1] x, const float[:, ::1] w, const float[::1] bias,
                        res, float[:, ::1] out, int act, float lo, float hi,
                        uintptr_t sgemm_ptr):
    """Same as :func:`pointwise_conv` through a BLAS sgemm pointer (benchmark only).

    ``w`` is the plain ``[K, Cout]`` weight; ``sgemm_ptr`` the address of
    ``scipy.linalg.cython_blas.sgemm`` (see ``kernels_backend.blas_sgemm_pointer``).
    """
    cdef sgemm_t sgemm = <sgemm_t>sgemm_ptr
    cdef int M = <int>x.shape[0], K = <int>x.shape[1], Cout = <int>w.shape[1]
    cdef float one = 1.0, zero = 0.0
    cdef char tn = b"N"
    cdef const float[:, ::1] r
    cdef const float *rp = NULL
    cdef Py_ssize_t i
    if res is not None:
        r = res
        rp = &r[0, 0]
    if M == 0:
        return
    with nogil:
        # column-major view: out^T[Cout, M] = w^T[Cout, K] @ x^T[K, M]
        sgemm(&tn, &tn, &Cout, &M, &K, &one, <float *>&w[0, 0], &Cout, <float *>&x[0, 0], &K,
              &zero, &out[0, 0], &Cout)
        for i in range(M):
            ec_epilogue_f32(&out[i, 0], &bias[0], (rp + i * Cout) if rp != NULL else NULL,
                            &out[i, 0], Cout, act, lo, hi)


cdef enum:
    RB = 12  # rows per fused block: a multiple of EC_DWR (4) and EC_MR (6)


def dwpw_conv(const float[:, :, ::1] x, const float[:, ::1] wd, const float[::1] bd, int actd,
              float lod, float hid, const float[:, :, ::1] wp, const float[::1] bias, res,
              float[:, :, ::1] out, int stride, int pad, int act, float lo, float hi,
              int threads):
    """Depthwise conv then pointwise conv, fused per block of output rows.

    Same result as :func:`depthwise_conv` (``wd, bd, actd, lod, hid``, no
    residual) followed by :func:`pointwise_conv`, but the depthwise output of
    each block stays in a small per-thread buffer instead of memory.
    """
    cdef Py_ssize_t N = x.shape[0], T = x.shape[1], C = x.shape[2]
    cdef Py_ssize_t K = wd.shape[0], To = out.shape[1], Cout = out.shape[2]
    cdef Py_ssize_t NB = wp.shape[0], nt = (To + RB - 1) // RB
    if (wd.shape[1] != C or wp.shape[1] != C or wp.shape[2] != EC_NR or NB * EC_NR < Cout
            or bias.shape[0] < NB * EC_NR or RB % EC_DWR or RB % EC_MR):
        raise ValueError("dwpw_conv: shape mismatch")
    cdef const float[:, :, ::1] r3
    cdef const float *rp = NULL
    if res is not None:
        r3 = res
        rp = &r3[0, 0, 0]
    cdef Py_ssize_t job, n, t0, rb, bi, sb, r, k, src, m0, mr, jb, i, ncol
    cdef const float **rows
    cdef const float **a
    cdef float *acc
    cdef float *zero
    cdef float *mid
    cdef float *tile
    cdef const float *xb = &x[0, 0, 0]
    cdef const float *wb = &wp[0, 0, 0]
    cdef float *ob = &out[0, 0, 0]
    if N == 0 or To == 0:
        return
    with nogil, parallel(num_threads=threads):
        rows = <const float **>malloc(EC_DWR * K * sizeof(float *))
        a = <const float **>malloc(EC_MR * sizeof(float *))
        acc = <float *>malloc(EC_DWR * C * sizeof(float))
        zero = <float *>calloc(C + 16, sizeof(float))
        mid = <float *>malloc((RB * C + 16) * sizeof(float))
        tile = <float *>malloc(EC_MR * EC_NR * sizeof(float))
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
                            0 <= src < T and sb + r < rb) else zero
                ec_dw_block_f32(rows, <int>K, &wd[0, 0], <int>C, acc)
                for r in range(min(EC_DWR, rb - sb)):
                    ec_epilogue_f32(acc + r * C, &bd[0], NULL, mid + (sb + r) * C, <int>C,
                                    actd, lod, hid)
            for bi in range((rb + EC_MR - 1) // EC_MR):
                m0 = bi * EC_MR
                mr = min(EC_MR, rb - m0)
                for i in range(EC_MR):
                    a[i] = mid + (m0 + min(i, mr - 1)) * C
                for jb in range(NB):
                    ec_sgemm_tile(a, wb + jb * C * EC_NR, <int>C, tile)
                    ncol = min(EC_NR, Cout - jb * EC_NR)
                    for i in range(mr):
                        ec_epilogue_f32(
                            &tile[i * EC_NR], &bias[jb * EC_NR],
                            (rp + (n * To + t0 + m0 + i) * Cout + jb * EC_NR) if rp != NULL
                            else NULL,
                            ob + (n * To + t0 + m0 + i) * Cout + jb * EC_NR, <int>ncol, act, lo,
                            hi)
        free(rows)
        free(a)
        free(acc)
        free(zero)
        free(mid)
        free(tile)
