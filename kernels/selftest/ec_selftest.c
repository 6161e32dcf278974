/* Self-test of the SIMD helpers in ec_simd.h against plain scalar loops.
 *
 * Built natively or with a cross compiler (e.g. aarch64-linux-gnu-gcc -O3
 * -march=armv8.2-a+dotprod -static) and run under qemu-user by
 * tests/test_kernels.py, so the NEON paths are checked on an x86 build machine.
 * Prints "ok <simd path>" and exits 0, or names the first mismatch and exits 1.
 */
#include <stdio.h>
#include <stdlib.h>

#include "ec_simd.h"

static unsigned long long rng_state = 88172645463325252ULL;

static int rnd(int lo, int hi) { /* xorshift64, inclusive range */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return lo + (int)(rng_state % (unsigned long long)(hi - lo + 1));
}

static int fail(const char *what, int i, double got, double want) {
    printf("FAIL %s at %d: got %g want %g\n", what, i, got, want);
    return 1;
}

static int test_sgemm(int K) {
    float a[EC_MR][256], bp[256 * EC_NR], tile[EC_MR * EC_NR];
    const float *rows[EC_MR];
    for (int i = 0; i < EC_MR; i++) {
        for (int k = 0; k < K; k++) a[i][k] = (float)rnd(-8, 8) / 4.0f;
        rows[i] = a[i];
    }
    for (int i = 0; i < K * EC_NR; i++) bp[i] = (float)rnd(-8, 8) / 8.0f;
    ec_sgemm_tile(rows, bp, K, tile);
    for (int i = 0; i < EC_MR; i++)
        for (int j = 0; j < EC_NR; j++) {
            float want = 0.0f;
            for (int k = 0; k < K; k++) want += a[i][k] * bp[k * EC_NR + j];
            if (tile[i * EC_NR + j] != want) return fail("sgemm", i * EC_NR + j, tile[i * EC_NR + j], want);
        }
    return 0;
}

static int test_qgemm(int K2) {
    int16_t a[EC_MR][256], bp[256 * EC_NR];
    int32_t tile[EC_MR * EC_NR];
    const int16_t *rows[EC_MR];
    for (int i = 0; i < EC_MR; i++) {
        for (int k = 0; k < 2 * K2; k++) a[i][k] = (int16_t)rnd(-255, 255);
        rows[i] = a[i];
    }
    for (int i = 0; i < K2 * 2 * EC_NR; i++) bp[i] = (int16_t)rnd(-127, 127);
    ec_qgemm_tile(rows, bp, K2, tile);
    for (int i = 0; i < EC_MR; i++)
        for (int j = 0; j < EC_NR; j++) {
            int32_t want = 0;
            for (int k = 0; k < K2; k++)
                want += a[i][2 * k] * bp[k * 2 * EC_NR + 2 * j] + a[i][2 * k + 1] * bp[k * 2 * EC_NR + 2 * j + 1];
            if (tile[i * EC_NR + j] != want) return fail("qgemm", i * EC_NR + j, tile[i * EC_NR + j], want);
        }
    return 0;
}

static int test_dw(int K, int C) {
    static float xf[64][300], wf[64 * 300], accf[EC_DWR * 300];
    static int8_t xq[64][300];
    static int16_t wq[64 * 300];
    static int32_t accq[EC_DWR * 300];
    const float *rf[EC_DWR * 64];
    const int8_t *rq[EC_DWR * 64];
    for (int t = 0; t < K + EC_DWR; t++)
        for (int c = 0; c < C; c++) {
            xf[t][c] = (float)rnd(-8, 8) / 4.0f;
            xq[t][c] = (int8_t)rnd(-128, 127);
        }
    for (int i = 0; i < K * C; i++) {
        wf[i] = (float)rnd(-8, 8) / 8.0f;
        wq[i] = (int16_t)rnd(-127, 127);
    }
    for (int r = 0; r < EC_DWR; r++)
        for (int k = 0; k < K; k++) {
            rf[r * K + k] = xf[r + k];
            rq[r * K + k] = xq[r + k];
        }
    ec_dw_block_f32(rf, K, wf, C, accf);
    ec_dw_block_q(rq, K, wq, C, accq);
    for (int r = 0; r < EC_DWR; r++)
        for (int c = 0; c < C; c++) {
            float wantf = 0.0f;
            int32_t wantq = 0;
            for (int k = 0; k < K; k++) {
                wantf += xf[r + k][c] * wf[k * C + c];
                wantq += xq[r + k][c] * wq[k * C + c];
            }
            if (accf[r * C + c] != wantf) return fail("dw_f32", r * C + c, accf[r * C + c], wantf);
            if (accq[r * C + c] != wantq) return fail("dw_q", r * C + c, accq[r * C + c], wantq);
        }
    return 0;
}

static int test_requant(int n) {
    int32_t acc[300], bias[300];
    float mult[300];
    int8_t out[300];
    for (int j = 0; j < n; j++) {
        acc[j] = rnd(-100000, 100000);
        bias[j] = rnd(-1000, 1000);
        mult[j] = (float)rnd(1, 1000) * 1e-5f;
    }
    acc[0] = 5; bias[0] = 0; mult[0] = 0.5f;  /* 2.5 -> 2 (ties to even) */
    ec_requant(acc, bias, mult, out, n, 0, -100, 120);
    for (int j = 0; j < n; j++) {
        int32_t want = (int32_t)nearbyintf((float)(acc[j] + bias[j]) * mult[j]);
        want = want < -100 ? -100 : (want > 120 ? 120 : want);
        if (out[j] != want) return fail("requant", j, out[j], want);
    }
    return out[0] == 2 ? 0 : fail("requant tie", 0, out[0], 2);
}

static int test_qgemm_rows(int K, int mr) {
    /* the driver packs A itself; build the panel in this build's layout */
    static int8_t x[EC_MR * 300], w8[300 * EC_NR];
    static int16_t bp16[304 * EC_NR];
    static int8_t bp8[304 * EC_NR];
    static int32_t tiles[EC_MR * EC_NR];
    static int16_t scratch[EC_MR * 304];
    const int P = EC_QPACK, Kp = (K + P - 1) / P * P;
    for (int i = 0; i < mr * K; i++) x[i] = (int8_t)rnd(-128, 127);
    for (int i = 0; i < K * EC_NR; i++) w8[i] = (int8_t)rnd(-127, 127);
    for (int k = 0; k < Kp; k++)
        for (int j = 0; j < EC_NR; j++) {
            int idx = (k / P) * P * EC_NR + j * P + k % P;
            int v = k < K ? w8[k * EC_NR + j] : 0;
            bp16[idx] = (int16_t)v;
            bp8[idx] = (int8_t)v;
        }
    const void *bp = P == 4 ? (const void *)bp8 : (const void *)bp16;
    ec_qgemm_rows(x, K, K, mr, bp, 1, tiles, scratch);
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < EC_NR; j++) {
            int32_t want = 0;
            for (int k = 0; k < K; k++) want += x[i * K + k] * w8[k * EC_NR + j];
            if (tiles[i * EC_NR + j] != want) return fail("qgemm_rows", i * EC_NR + j, tiles[i * EC_NR + j], want);
        }
    return 0;
}

int main(void) {
    int bad = 0;
    for (int K = 1; K <= 130; K += 43) bad |= test_sgemm(K);
    for (int K2 = 1; K2 <= 64; K2 += 21) bad |= test_qgemm(K2);
    /* channel counts with every tail of the 16/8/4-wide bodies (76: a pruned width) */
    int ks[] = {1, 2, 5, 25}, cs[] = {1, 4, 7, 12, 16, 20, 33, 76, 128};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 9; j++) bad |= test_dw(ks[i], cs[j]);
    for (int n = 1; n <= 45; n += 4) bad |= test_requant(n);  /* every 8/4/1 tail */
    for (int K = 1; K <= 130; K += 17) bad |= test_qgemm_rows(K, 1 + K % EC_MR);
    if (!bad) printf("ok %s\n", ec_simd_name());
    return bad;
}
