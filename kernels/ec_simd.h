/* edgecall kernels: small static inline C helpers (GEMM micro-kernels, epilogues).
 *
 * Every helper has an x86-64 AVX2/FMA path, an aarch64 NEON path (plus sdot on
 * Armv8.2 dot-product CPUs) and a portable scalar fallback written so that
 * compilers can auto-vectorise it. Layouts:
 *
 *   fp32 GEMM tile:  C[EC_MR][EC_NR] = sum_k A[row i][k] * Bp[k][j]
 *                    A given as EC_MR row pointers (rows may repeat for tails),
 *                    Bp a packed column panel [K][EC_NR] (zero padded).
 *   int8 GEMM:       ec_qgemm_rows() copies an int8 row block (widened to int16
 *                    unless sdot is used) and runs the int16-pair tile
 *                    (pmaddwd / vmlal, panel [K/2][EC_NR][2]) or the int8-quad
 *                    tile (sdot, panel [K/4][EC_NR][4]); int32 accumulation.
 *   depthwise:       EC_DWR output rows per call, channels innermost.
 * kernels/selftest/ec_selftest.c checks every path against scalar loops.
 */
#ifndef EC_SIMD_H
#define EC_SIMD_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define EC_HAVE_AVX2 1
#elif defined(__ARM_NEON) || defined(__ARM_NEON__)
#include <arm_neon.h>
#define EC_HAVE_NEON 1
#endif

#define EC_MR 6
#define EC_NR 16

static inline const char *ec_simd_name(void) {
#if defined(EC_HAVE_AVX2)
    return "avx2+fma";
#elif defined(EC_HAVE_NEON) && defined(__ARM_FEATURE_DOTPROD)
    return "neon+dotprod";
#elif defined(EC_HAVE_NEON)
    return "neon";
#else
    return "scalar";
#endif
}

/* ---- activations ------------------------------------------------------ */
#define EC_ACT_NONE 0
#define EC_ACT_RELU 1
#define EC_ACT_CLIP 2
#define EC_ACT_SILU 3

static inline float ec_act(float v, int act, float lo, float hi) {
    if (act == EC_ACT_RELU) return v > 0.0f ? v : 0.0f;
    if (act == EC_ACT_CLIP) return v < lo ? lo : (v > hi ? hi : v);
    if (act == EC_ACT_SILU) return v / (1.0f + expf(-v));
    return v;
}

/* out[j] = act(acc[j] + bias[j] (+ res[j])) for j < n */
static inline void ec_epilogue_f32(const float *acc, const float *bias, const float *res,
                                   float *out, int n, int act, float lo, float hi) {
    int j;
    if (act == EC_ACT_SILU) {
        for (j = 0; j < n; j++) {
            float v = acc[j] + bias[j] + (res ? res[j] : 0.0f);
            out[j] = v / (1.0f + expf(-v));
        }
        return;
    }
    if (act == EC_ACT_RELU) { lo = 0.0f; hi = INFINITY; }
    else if (act == EC_ACT_NONE) { lo = -INFINITY; hi = INFINITY; }
    if (res) {
        for (j = 0; j < n; j++) {
            float v = acc[j] + bias[j] + res[j];
            v = v < lo ? lo : v;
            out[j] = v > hi ? hi : v;
        }
    } else {
        for (j = 0; j < n; j++) {
            float v = acc[j] + bias[j];
            v = v < lo ? lo : v;
            out[j] = v > hi ? hi : v;
        }
    }
}

/* round half to even (current FP rounding mode), as onnxruntime's QuantizeLinear */
static inline int32_t ec_rne(float v) { return (int32_t)nearbyintf(v); }

/* out[j] = clamp(rne((acc[j] + bias[j]) * mult[j]) + zo, lo, hi) as int8, j < n */
static inline void ec_requant(const int32_t *acc, const int32_t *bias, const float *mult,
                              int8_t *out, int n, int32_t zo, int32_t lo, int32_t hi) {
    int j = 0;
#if defined(EC_HAVE_AVX2)
    const __m256i vlo = _mm256_set1_epi32(lo), vhi = _mm256_set1_epi32(hi);
    const __m256i vzo = _mm256_set1_epi32(zo);
    for (; j + 8 <= n; j += 8) {
        __m256i a = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(acc + j)),
                                     _mm256_loadu_si256((const __m256i *)(bias + j)));
        __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(a), _mm256_loadu_ps(mult + j));
        __m256i r = _mm256_add_epi32(_mm256_cvtps_epi32(f), vzo);  /* MXCSR: nearest-even */
        r = _mm256_min_epi32(_mm256_max_epi32(r, vlo), vhi);
        __m128i p = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
        _mm_storel_epi64((__m128i *)(out + j), _mm_packs_epi16(p, p));
    }
    for (; j + 4 <= n; j += 4) {  /* 4-channel tail (pruned widths) */
        __m128i a = _mm_add_epi32(_mm_loadu_si128((const __m128i *)(acc + j)),
                                  _mm_loadu_si128((const __m128i *)(bias + j)));
        __m128 f = _mm_mul_ps(_mm_cvtepi32_ps(a), _mm_loadu_ps(mult + j));
        __m128i r = _mm_add_epi32(_mm_cvtps_epi32(f), _mm256_castsi256_si128(vzo));
        r = _mm_min_epi32(_mm_max_epi32(r, _mm256_castsi256_si128(vlo)),
                          _mm256_castsi256_si128(vhi));
        __m128i p = _mm_packs_epi32(r, r);
        int32_t q = _mm_cvtsi128_si32(_mm_packs_epi16(p, p));
        memcpy(out + j, &q, 4);
    }
#elif defined(EC_HAVE_NEON)
    const int32x4_t vlo = vdupq_n_s32(lo), vhi = vdupq_n_s32(hi), vzo = vdupq_n_s32(zo);
    for (; j + 8 <= n; j += 8) {
        int16x4_t h[2];
        for (int u = 0; u < 2; u++) {
            int32x4_t a = vaddq_s32(vld1q_s32(acc + j + 4 * u), vld1q_s32(bias + j + 4 * u));
            float32x4_t f = vmulq_f32(vcvtq_f32_s32(a), vld1q_f32(mult + j + 4 * u));
            int32x4_t r = vaddq_s32(vcvtnq_s32_f32(f), vzo);  /* nearest, ties to even */
            h[u] = vmovn_s32(vminq_s32(vmaxq_s32(r, vlo), vhi));
        }
        vst1_s8(out + j, vmovn_s16(vcombine_s16(h[0], h[1])));
    }
    for (; j + 4 <= n; j += 4) {  /* 4-channel tail (pruned widths) */
        int32x4_t a = vaddq_s32(vld1q_s32(acc + j), vld1q_s32(bias + j));
        float32x4_t f = vmulq_f32(vcvtq_f32_s32(a), vld1q_f32(mult + j));
        int32x4_t r = vaddq_s32(vcvtnq_s32_f32(f), vzo);
        int16x4_t h = vmovn_s32(vminq_s32(vmaxq_s32(r, vlo), vhi));
        int8x8_t b = vmovn_s16(vcombine_s16(h, h));
        int32_t q = vget_lane_s32(vreinterpret_s32_s8(b), 0);
        memcpy(out + j, &q, 4);
    }
#endif
    for (; j < n; j++) {
        int32_t r = ec_rne((float)(acc[j] + bias[j]) * mult[j]) + zo;
        r = r < lo ? lo : (r > hi ? hi : r);
        out[j] = (int8_t)r;
    }
}

/* ---- fp32 GEMM micro-kernel: tile[EC_MR][EC_NR] ------------------------- */
static inline void ec_sgemm_tile(const float *const *a, const float *bp, int K, float *tile) {
#if defined(EC_HAVE_AVX2)
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
    for (int k = 0; k < K; k++) {
        __m256 b0 = _mm256_loadu_ps(bp + k * EC_NR), b1 = _mm256_loadu_ps(bp + k * EC_NR + 8);
        __m256 x;
        x = _mm256_broadcast_ss(a0 + k); c00 = _mm256_fmadd_ps(x, b0, c00); c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a1 + k); c10 = _mm256_fmadd_ps(x, b0, c10); c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a2 + k); c20 = _mm256_fmadd_ps(x, b0, c20); c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a3 + k); c30 = _mm256_fmadd_ps(x, b0, c30); c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(a4 + k); c40 = _mm256_fmadd_ps(x, b0, c40); c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(a5 + k); c50 = _mm256_fmadd_ps(x, b0, c50); c51 = _mm256_fmadd_ps(x, b1, c51);
    }
    _mm256_storeu_ps(tile + 0 * EC_NR, c00); _mm256_storeu_ps(tile + 0 * EC_NR + 8, c01);
    _mm256_storeu_ps(tile + 1 * EC_NR, c10); _mm256_storeu_ps(tile + 1 * EC_NR + 8, c11);
    _mm256_storeu_ps(tile + 2 * EC_NR, c20); _mm256_storeu_ps(tile + 2 * EC_NR + 8, c21);
    _mm256_storeu_ps(tile + 3 * EC_NR, c30); _mm256_storeu_ps(tile + 3 * EC_NR + 8, c31);
    _mm256_storeu_ps(tile + 4 * EC_NR, c40); _mm256_storeu_ps(tile + 4 * EC_NR + 8, c41);
    _mm256_storeu_ps(tile + 5 * EC_NR, c50); _mm256_storeu_ps(tile + 5 * EC_NR + 8, c51);
#elif defined(EC_HAVE_NEON)
    float32x4_t c[EC_MR][4];
    for (int i = 0; i < EC_MR; i++)
        for (int v = 0; v < 4; v++) c[i][v] = vdupq_n_f32(0.0f);
    for (int k = 0; k < K; k++) {
        float32x4_t b0 = vld1q_f32(bp + k * EC_NR), b1 = vld1q_f32(bp + k * EC_NR + 4);
        float32x4_t b2 = vld1q_f32(bp + k * EC_NR + 8), b3 = vld1q_f32(bp + k * EC_NR + 12);
        for (int i = 0; i < EC_MR; i++) {
            float x = a[i][k];
            c[i][0] = vfmaq_n_f32(c[i][0], b0, x); c[i][1] = vfmaq_n_f32(c[i][1], b1, x);
            c[i][2] = vfmaq_n_f32(c[i][2], b2, x); c[i][3] = vfmaq_n_f32(c[i][3], b3, x);
        }
    }
    for (int i = 0; i < EC_MR; i++)
        for (int v = 0; v < 4; v++) vst1q_f32(tile + i * EC_NR + 4 * v, c[i][v]);
#else
    float acc[EC_MR][EC_NR];
    memset(acc, 0, sizeof(acc));
    for (int k = 0; k < K; k++) {
        const float *b = bp + k * EC_NR;
        for (int i = 0; i < EC_MR; i++) {
            float x = a[i][k];
            for (int j = 0; j < EC_NR; j++) acc[i][j] += x * b[j];
        }
    }
    memcpy(tile, acc, sizeof(acc));
#endif
}

/* ---- int16 x int16 -> int32 GEMM micro-kernel (K2 = K/2 pairs) ---------- */
static inline void ec_qgemm_tile(const int16_t *const *a, const int16_t *bp, int K2,
                                 int32_t *tile) {
#if defined(EC_HAVE_AVX2)
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const int16_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
    for (int k = 0; k < K2; k++) {
        __m256i b0 = _mm256_loadu_si256((const __m256i *)(bp + k * 2 * EC_NR));
        __m256i b1 = _mm256_loadu_si256((const __m256i *)(bp + k * 2 * EC_NR + 16));
        __m256i x;
        int32_t p;
#define EC_QROW(ai, ci0, ci1) memcpy(&p, ai + 2 * k, 4); x = _mm256_set1_epi32(p); \
        ci0 = _mm256_add_epi32(ci0, _mm256_madd_epi16(x, b0)); \
        ci1 = _mm256_add_epi32(ci1, _mm256_madd_epi16(x, b1));
        EC_QROW(a0, c00, c01) EC_QROW(a1, c10, c11) EC_QROW(a2, c20, c21)
        EC_QROW(a3, c30, c31) EC_QROW(a4, c40, c41) EC_QROW(a5, c50, c51)
#undef EC_QROW
    }
    /* b0 holds columns 0..7, b1 columns 8..15 (pairs interleaved per column) */
    _mm256_storeu_si256((__m256i *)(tile + 0 * EC_NR), c00); _mm256_storeu_si256((__m256i *)(tile + 0 * EC_NR + 8), c01);
    _mm256_storeu_si256((__m256i *)(tile + 1 * EC_NR), c10); _mm256_storeu_si256((__m256i *)(tile + 1 * EC_NR + 8), c11);
    _mm256_storeu_si256((__m256i *)(tile + 2 * EC_NR), c20); _mm256_storeu_si256((__m256i *)(tile + 2 * EC_NR + 8), c21);
    _mm256_storeu_si256((__m256i *)(tile + 3 * EC_NR), c30); _mm256_storeu_si256((__m256i *)(tile + 3 * EC_NR + 8), c31);
    _mm256_storeu_si256((__m256i *)(tile + 4 * EC_NR), c40); _mm256_storeu_si256((__m256i *)(tile + 4 * EC_NR + 8), c41);
    _mm256_storeu_si256((__m256i *)(tile + 5 * EC_NR), c50); _mm256_storeu_si256((__m256i *)(tile + 5 * EC_NR + 8), c51);
#elif defined(EC_HAVE_NEON)
    /* widening multiply-accumulate of int16 pairs: vmlal_s16 on low/high halves */
    int32x4_t c[EC_MR][4];
    for (int i = 0; i < EC_MR; i++)
        for (int v = 0; v < 4; v++) c[i][v] = vdupq_n_s32(0);
    for (int k = 0; k < K2; k++) {
        const int16_t *b = bp + k * 2 * EC_NR;
        /* de-interleave the (k, k+1) pairs of 16 columns into two rows of 16 */
        int16x8x2_t lo = vld2q_s16(b), hi = vld2q_s16(b + 16);
        for (int i = 0; i < EC_MR; i++) {
            int16_t x0 = a[i][2 * k], x1 = a[i][2 * k + 1];
            c[i][0] = vmlal_n_s16(c[i][0], vget_low_s16(lo.val[0]), x0);
            c[i][1] = vmlal_n_s16(c[i][1], vget_high_s16(lo.val[0]), x0);
            c[i][2] = vmlal_n_s16(c[i][2], vget_low_s16(hi.val[0]), x0);
            c[i][3] = vmlal_n_s16(c[i][3], vget_high_s16(hi.val[0]), x0);
            c[i][0] = vmlal_n_s16(c[i][0], vget_low_s16(lo.val[1]), x1);
            c[i][1] = vmlal_n_s16(c[i][1], vget_high_s16(lo.val[1]), x1);
            c[i][2] = vmlal_n_s16(c[i][2], vget_low_s16(hi.val[1]), x1);
            c[i][3] = vmlal_n_s16(c[i][3], vget_high_s16(hi.val[1]), x1);
        }
    }
    for (int i = 0; i < EC_MR; i++)
        for (int v = 0; v < 4; v++) vst1q_s32(tile + i * EC_NR + 4 * v, c[i][v]);
#else
    int32_t acc[EC_MR][EC_NR];
    memset(acc, 0, sizeof(acc));
    for (int k = 0; k < K2; k++) {
        const int16_t *b = bp + k * 2 * EC_NR;
        for (int i = 0; i < EC_MR; i++) {
            int32_t x0 = a[i][2 * k], x1 = a[i][2 * k + 1];
            for (int j = 0; j < EC_NR; j++) acc[i][j] += x0 * b[2 * j] + x1 * b[2 * j + 1];
        }
    }
    memcpy(tile, acc, sizeof(acc));
#endif
}


/* int8 x int8 -> int32 tile with the Armv8.2 dot product (K4 = K/4 quads): the
 * panel is [K/4][EC_NR][4] int8, A rows int8 padded to a multiple of 4. */
#if defined(EC_HAVE_NEON) && defined(__ARM_FEATURE_DOTPROD)
#define EC_QPACK 4
static inline void ec_qgemm_tile_s8(const int8_t *const *a, const int8_t *bp, int K4,
                                    int32_t *tile) {
    int32x4_t c[EC_MR][4];
    for (int i = 0; i < EC_MR; i++)
        for (int v = 0; v < 4; v++) c[i][v] = vdupq_n_s32(0);
    for (int k = 0; k < K4; k++) {
        const int8_t *b = bp + k * 4 * EC_NR;
        int8x16_t b0 = vld1q_s8(b), b1 = vld1q_s8(b + 16), b2 = vld1q_s8(b + 32), b3 = vld1q_s8(b + 48);
        for (int i = 0; i < EC_MR; i++) {
            int32_t q;
            memcpy(&q, a[i] + 4 * k, 4);
            int8x16_t x = vreinterpretq_s8_s32(vdupq_n_s32(q));
            c[i][0] = vdotq_s32(c[i][0], b0, x); c[i][1] = vdotq_s32(c[i][1], b1, x);
            c[i][2] = vdotq_s32(c[i][2], b2, x); c[i][3] = vdotq_s32(c[i][3], b3, x);
        }
    }
    for (int i = 0; i < EC_MR; i++)
        for (int v = 0; v < 4; v++) vst1q_s32(tile + i * EC_NR + 4 * v, c[i][v]);
}
#else
#define EC_QPACK 2  /* int16 pairs for pmaddwd / vmlal */
#endif

/* int8 GEMM for one block of up to EC_MR rows of x (row stride lda, K columns;
 * lda < K gives the overlapping im2col rows of a 1-channel stem conv):
 * copies (and on the int16 path widens) the rows into ``scratch`` padded to a
 * multiple of EC_QPACK, then writes NB tiles [EC_MR][EC_NR] into ``tiles``.
 * ``bp`` holds NB panels of Kp * EC_NR elements (int16 pairs or int8 quads).
 * ``scratch`` needs EC_MR * (K + 4) * 2 bytes. */
static inline void ec_qgemm_rows(const int8_t *x, int lda, int K, int mr, const void *bp,
                                 int NB, int32_t *tiles, void *scratch) {
    const int Kp = (K + EC_QPACK - 1) / EC_QPACK * EC_QPACK;
#if EC_QPACK == 4
    int8_t *buf = (int8_t *)scratch;
    const int8_t *rows[EC_MR];
#else
    int16_t *buf = (int16_t *)scratch;
    const int16_t *rows[EC_MR];
#endif
    for (int i = 0; i < EC_MR; i++) {
        const int8_t *src = x + (size_t)(i < mr ? i : mr - 1) * lda;
        for (int k = 0; k < K; k++) buf[i * Kp + k] = src[k];
        for (int k = K; k < Kp; k++) buf[i * Kp + k] = 0;
        rows[i] = buf + i * Kp;
    }
    for (int jb = 0; jb < NB; jb++) {
#if EC_QPACK == 4
        ec_qgemm_tile_s8(rows, (const int8_t *)bp + (size_t)jb * Kp * EC_NR, Kp / 4,
                         tiles + jb * EC_MR * EC_NR);
#else
        ec_qgemm_tile(rows, (const int16_t *)bp + (size_t)jb * Kp * EC_NR, Kp / 2,
                      tiles + jb * EC_MR * EC_NR);
#endif
    }
}

static inline int ec_qpack(void) { return EC_QPACK; }

/* ---- depthwise blocks: EC_DWR output rows at once --------------------------
 * rows[r * K + k] points at the input row feeding tap k of output row r (a
 * zero row for taps in the padding); acc[r * C + c] receives the sums. Each
 * weight vector is loaded once per tap and reused for the EC_DWR rows. */
#define EC_DWR 4

/* Input row pointers for one depthwise block (fp32 and int8 alike): rows[j*K+k] is
 * the start of input row (t+j)*stride + k - pad of sequence n (rows of row_bytes
 * bytes, T per sequence), or pad_row where that row is outside [0, T) or output
 * row t+j is past To. */
static inline void ec_dw_rows(const char *x, size_t row_bytes, ptrdiff_t n, ptrdiff_t T,
                              ptrdiff_t t, ptrdiff_t To, int stride, int pad, int K,
                              const char *pad_row, const char **rows) {
    for (int j = 0; j < EC_DWR; j++) {
        for (int k = 0; k < K; k++) {
            ptrdiff_t src = (t + j) * stride + k - pad;
            rows[j * K + k] = (src >= 0 && src < T && t + j < To)
                ? x + (size_t)(n * T + src) * row_bytes : pad_row;
        }
    }
}

static inline void ec_dw_block_f32(const float *const *rows, int K, const float *w, int C,
                                   float *acc) {
    int c = 0;
#if defined(EC_HAVE_AVX2)
    for (; c + 16 <= C; c += 16) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int k = 0; k < K; k++) {
            const float *r0 = rows[k] + c, *r1 = rows[K + k] + c;
            const float *r2 = rows[2 * K + k] + c, *r3 = rows[3 * K + k] + c;
            __m256 wv = _mm256_loadu_ps(w + (size_t)k * C + c);
            __m256 wu = _mm256_loadu_ps(w + (size_t)k * C + c + 8);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0), wv, a0);
            b0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + 8), wu, b0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1), wv, a1);
            b1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + 8), wu, b1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r2), wv, a2);
            b2 = _mm256_fmadd_ps(_mm256_loadu_ps(r2 + 8), wu, b2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r3), wv, a3);
            b3 = _mm256_fmadd_ps(_mm256_loadu_ps(r3 + 8), wu, b3);
        }
        _mm256_storeu_ps(acc + c, a0);
        _mm256_storeu_ps(acc + c + 8, b0);
        _mm256_storeu_ps(acc + C + c, a1);
        _mm256_storeu_ps(acc + C + c + 8, b1);
        _mm256_storeu_ps(acc + 2 * C + c, a2);
        _mm256_storeu_ps(acc + 2 * C + c + 8, b2);
        _mm256_storeu_ps(acc + 3 * C + c, a3);
        _mm256_storeu_ps(acc + 3 * C + c + 8, b3);
    }
    for (; c + 8 <= C; c += 8) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int k = 0; k < K; k++) {
            __m256 wv = _mm256_loadu_ps(w + (size_t)k * C + c);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(rows[k] + c), wv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(rows[K + k] + c), wv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(rows[2 * K + k] + c), wv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(rows[3 * K + k] + c), wv, a3);
        }
        _mm256_storeu_ps(acc + c, a0);
        _mm256_storeu_ps(acc + C + c, a1);
        _mm256_storeu_ps(acc + 2 * C + c, a2);
        _mm256_storeu_ps(acc + 3 * C + c, a3);
    }
    for (; c + 4 <= C; c += 4) {  /* pruned widths are multiples of 4 */
        __m128 a0 = _mm_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int k = 0; k < K; k++) {
            __m128 wv = _mm_loadu_ps(w + (size_t)k * C + c);
            a0 = _mm_fmadd_ps(_mm_loadu_ps(rows[k] + c), wv, a0);
            a1 = _mm_fmadd_ps(_mm_loadu_ps(rows[K + k] + c), wv, a1);
            a2 = _mm_fmadd_ps(_mm_loadu_ps(rows[2 * K + k] + c), wv, a2);
            a3 = _mm_fmadd_ps(_mm_loadu_ps(rows[3 * K + k] + c), wv, a3);
        }
        _mm_storeu_ps(acc + c, a0);
        _mm_storeu_ps(acc + C + c, a1);
        _mm_storeu_ps(acc + 2 * C + c, a2);
        _mm_storeu_ps(acc + 3 * C + c, a3);
    }
#elif defined(EC_HAVE_NEON)
    for (; c + 4 <= C; c += 4) {
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
        for (int k = 0; k < K; k++) {
            float32x4_t wv = vld1q_f32(w + (size_t)k * C + c);
            a0 = vfmaq_f32(a0, vld1q_f32(rows[k] + c), wv);
            a1 = vfmaq_f32(a1, vld1q_f32(rows[K + k] + c), wv);
            a2 = vfmaq_f32(a2, vld1q_f32(rows[2 * K + k] + c), wv);
            a3 = vfmaq_f32(a3, vld1q_f32(rows[3 * K + k] + c), wv);
        }
        vst1q_f32(acc + c, a0);
        vst1q_f32(acc + C + c, a1);
        vst1q_f32(acc + 2 * C + c, a2);
        vst1q_f32(acc + 3 * C + c, a3);
    }
#endif
    for (; c < C; c++) {
        for (int r = 0; r < EC_DWR; r++) {
            float a = 0.0f;
            for (int k = 0; k < K; k++) a += rows[r * K + k][c] * w[(size_t)k * C + c];
            acc[r * C + c] = a;
        }
    }
}

static inline void ec_dw_block_q(const int8_t *const *rows, int K, const int16_t *w, int C,
                                 int32_t *acc) {
    int c = 0;
#if defined(EC_HAVE_AVX2)
    /* taps in pairs (k, k+1): interleave the two input rows and the two weight
     * rows into int16 pairs and pmaddwd them (16 MACs per instruction). */
    for (; c + 16 <= C; c += 16) {
        __m256i z = _mm256_setzero_si256();
        __m256i l0 = z, h0 = z, l1 = z, h1 = z, l2 = z, h2 = z, l3 = z, h3 = z;
        for (int k = 0; k < K; k += 2) {
            int k1 = k + 1 < K ? k + 1 : k;  /* odd K: last pair uses a zero weight */
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + (size_t)k * C + c));
            __m256i w1 = k + 1 < K ? _mm256_loadu_si256((const __m256i *)(w + (size_t)k1 * C + c)) : z;
            __m256i wl = _mm256_unpacklo_epi16(w0, w1), wh = _mm256_unpackhi_epi16(w0, w1);
#define EC_QDW(r, lr, hr) { \
            __m256i x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(rows[(r) * K + k] + c))); \
            __m256i x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(rows[(r) * K + k1] + c))); \
            lr = _mm256_add_epi32(lr, _mm256_madd_epi16(_mm256_unpacklo_epi16(x0, x1), wl)); \
            hr = _mm256_add_epi32(hr, _mm256_madd_epi16(_mm256_unpackhi_epi16(x0, x1), wh)); }
            EC_QDW(0, l0, h0) EC_QDW(1, l1, h1) EC_QDW(2, l2, h2) EC_QDW(3, l3, h3)
#undef EC_QDW
        }
        /* lo = channels [0-3 | 8-11], hi = [4-7 | 12-15]: restore the order */
#define EC_QST(r, lr, hr) \
        _mm256_storeu_si256((__m256i *)(acc + (r) * C + c), _mm256_permute2x128_si256(lr, hr, 0x20)); \
        _mm256_storeu_si256((__m256i *)(acc + (r) * C + c + 8), _mm256_permute2x128_si256(lr, hr, 0x31));
        EC_QST(0, l0, h0) EC_QST(1, l1, h1) EC_QST(2, l2, h2) EC_QST(3, l3, h3)
#undef EC_QST
    }
    /* channel tails of pruned widths (multiples of 4): the same tap pairs on 128-bit
     * vectors, 8 then 4 channels, loading exactly the bytes that belong to them */
    for (int nc; (nc = C - c >= 8 ? 8 : (C - c >= 4 ? 4 : 0)) != 0; c += nc) {
        __m128i z = _mm_setzero_si128(), a[EC_DWR][2];
        for (int r = 0; r < EC_DWR; r++) a[r][0] = a[r][1] = z;
        for (int k = 0; k < K; k += 2) {
            int k1 = k + 1 < K ? k + 1 : k;
            const int16_t *wk = w + (size_t)k * C + c, *wk1 = w + (size_t)k1 * C + c;
            __m128i w0 = nc == 8 ? _mm_loadu_si128((const __m128i *)wk)
                                 : _mm_loadl_epi64((const __m128i *)wk);
            __m128i w1 = k + 1 >= K ? z : (nc == 8 ? _mm_loadu_si128((const __m128i *)wk1)
                                                   : _mm_loadl_epi64((const __m128i *)wk1));
            __m128i wl = _mm_unpacklo_epi16(w0, w1), wh = _mm_unpackhi_epi16(w0, w1);
            for (int r = 0; r < EC_DWR; r++) {
                const int8_t *p0 = rows[r * K + k] + c, *p1 = rows[r * K + k1] + c;
                __m128i x0, x1;
                if (nc == 8) {
                    x0 = _mm_loadl_epi64((const __m128i *)p0);
                    x1 = _mm_loadl_epi64((const __m128i *)p1);
                } else {
                    int32_t q0, q1;
                    memcpy(&q0, p0, 4);
                    memcpy(&q1, p1, 4);
                    x0 = _mm_cvtsi32_si128(q0);
                    x1 = _mm_cvtsi32_si128(q1);
                }
                x0 = _mm_cvtepi8_epi16(x0);
                x1 = _mm_cvtepi8_epi16(x1);
                a[r][0] = _mm_add_epi32(a[r][0], _mm_madd_epi16(_mm_unpacklo_epi16(x0, x1), wl));
                a[r][1] = _mm_add_epi32(a[r][1], _mm_madd_epi16(_mm_unpackhi_epi16(x0, x1), wh));
            }
        }
        for (int r = 0; r < EC_DWR; r++) {
            _mm_storeu_si128((__m128i *)(acc + r * C + c), a[r][0]);
            if (nc == 8) _mm_storeu_si128((__m128i *)(acc + r * C + c + 4), a[r][1]);
        }
    }
#elif defined(EC_HAVE_NEON)
    for (; c + 8 <= C; c += 8) {
        int32x4_t a[EC_DWR][2];
        for (int r = 0; r < EC_DWR; r++) a[r][0] = a[r][1] = vdupq_n_s32(0);
        for (int k = 0; k < K; k++) {
            int16x8_t wk = vld1q_s16(w + (size_t)k * C + c);
            for (int r = 0; r < EC_DWR; r++) {
                int16x8_t x = vmovl_s8(vld1_s8(rows[r * K + k] + c));
                a[r][0] = vmlal_s16(a[r][0], vget_low_s16(x), vget_low_s16(wk));
                a[r][1] = vmlal_high_s16(a[r][1], x, wk);
            }
        }
        for (int r = 0; r < EC_DWR; r++) {
            vst1q_s32(acc + r * C + c, a[r][0]);
            vst1q_s32(acc + r * C + c + 4, a[r][1]);
        }
    }
    for (; c + 4 <= C; c += 4) {  /* pruned widths are multiples of 4 */
        int32x4_t a[EC_DWR];
        for (int r = 0; r < EC_DWR; r++) a[r] = vdupq_n_s32(0);
        for (int k = 0; k < K; k++) {
            int16x4_t wk = vld1_s16(w + (size_t)k * C + c);
            for (int r = 0; r < EC_DWR; r++) {
                int32_t q;
                memcpy(&q, rows[r * K + k] + c, 4);
                int16x8_t x = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(q)));
                a[r] = vmlal_s16(a[r], vget_low_s16(x), wk);
            }
        }
        for (int r = 0; r < EC_DWR; r++) vst1q_s32(acc + r * C + c, a[r]);
    }
#endif
    for (; c < C; c++) {
        for (int r = 0; r < EC_DWR; r++) {
            int32_t a = 0;
            for (int k = 0; k < K; k++)
                a += (int32_t)rows[r * K + k][c] * (int32_t)w[(size_t)k * C + c];
            acc[r * C + c] = a;
        }
    }
}

#endif /* EC_SIMD_H */
