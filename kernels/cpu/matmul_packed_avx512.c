/* f32 matmul for prompts, GotoBLAS style, AVX-512: w rows are packed 64 at a
 * time and KC = 256 k at a time into a panel [KC][64] (64 KiB, in L2), and a
 * 6 × 64 register tile (24 accumulators) multiplies broadcast x values by
 * panel rows: 4 loads + 6 broadcasts per 24 FMAs and no horizontal sums,
 * unlike the dot-product tiles of matmul_avx512.c. y accumulates across k
 * blocks. Products and sums are plain f32 FMAs (f32 reference mode). */
#include <immintrin.h>
#include <string.h>

#include "matmul_kernels.h"

enum { MR = 6, NR = 64, KC = 256 };

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Rows j0..j0+63 of w (zeros past m1), k in [k0, k0 + kc), transposed into
 * panel[kk][n]. */
static void pack(const float *w, int64_t k, int64_t j0, int64_t m1, int64_t k0, int64_t kc,
                 float *panel) {
    /* 16 rows at a time: 16 k of each row (one 64-byte load per row), then
     * a 16 × 16 transpose in registers (unpack/shuffle network), 16 stores. */
    for (int n0 = 0; n0 < NR; n0 += 16) {
        const float *src[16];
        int live = 0;
        for (int i = 0; i < 16; i++) {
            int64_t row = j0 + n0 + i;
            src[i] = row < m1 ? w + row * k + k0 : NULL;
            live += row < m1;
        }
        for (int64_t kk = 0; kk < kc; kk += 16) {
            __mmask16 m = kc - kk >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (kc - kk)) - 1);
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i < live && src[i] ? _mm512_maskz_loadu_ps(m, src[i] + kk) : _mm512_setzero_ps();
            /* transpose: t[c] lane i = r[i] lane c */
            __m512 t[16];
            for (int i = 0; i < 16; i += 2) {
                t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
                t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
            }
            for (int i = 0; i < 16; i += 4) {
                r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
                r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
                r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
                r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
            }
            /* r[4g + q] holds, per 128-bit lane L, column 4L + q of rows 4g..4g+3 */
            for (int q = 0; q < 4; q++) {
                __m512 a = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x88);      /* lanes 0,2 | 0,2 */
                __m512 b = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xdd);      /* lanes 1,3 | 1,3 */
                __m512 c = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x88);
                __m512 d = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xdd);
                t[q] = _mm512_shuffle_f32x4(a, c, 0x88);      /* column q:      lane 0 of each */
                t[8 + q] = _mm512_shuffle_f32x4(a, c, 0xdd);  /* column 8 + q:  lane 2 */
                t[4 + q] = _mm512_shuffle_f32x4(b, d, 0x88);  /* column 4 + q:  lane 1 */
                t[12 + q] = _mm512_shuffle_f32x4(b, d, 0xdd); /* column 12 + q: lane 3 */
            }
            for (int c = 0; c < 16 && kk + c < kc; c++) _mm512_store_ps(panel + (kk + c) * NR + n0, t[c]);
        }
    }
}

/* c[MR][NR] (row stride ldc) = (first ? 0 : c) + x[mr rows, kc] · panel. */
static ALWAYS_INLINE void micro(const float *x, int64_t ldx, const float *panel, int64_t kc,
                                float *c, int64_t ldc, int mr, int first) {
    __m512 acc[MR][4];
#pragma GCC unroll 6
    for (int a = 0; a < mr; a++)
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++)
            acc[a][b] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + a * ldc + 16 * b);
    for (int64_t kk = 0; kk < kc; kk++) {
        const float *p = panel + kk * NR;
        __m512 w0 = _mm512_load_ps(p), w1 = _mm512_load_ps(p + 16);
        __m512 w2 = _mm512_load_ps(p + 32), w3 = _mm512_load_ps(p + 48);
#pragma GCC unroll 6
        for (int a = 0; a < mr; a++) {
            __m512 xv = _mm512_set1_ps(x[a * ldx + kk]);
            acc[a][0] = _mm512_fmadd_ps(xv, w0, acc[a][0]);
            acc[a][1] = _mm512_fmadd_ps(xv, w1, acc[a][1]);
            acc[a][2] = _mm512_fmadd_ps(xv, w2, acc[a][2]);
            acc[a][3] = _mm512_fmadd_ps(xv, w3, acc[a][3]);
        }
    }
#pragma GCC unroll 6
    for (int a = 0; a < mr; a++)
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) _mm512_storeu_ps(c + a * ldc + 16 * b, acc[a][b]);
}

static void micro_any(const float *x, int64_t ldx, const float *panel, int64_t kc, float *c,
                      int64_t ldc, int mr, int first) {
    switch (mr) {
    case 6: micro(x, ldx, panel, kc, c, ldc, 6, first); break;
    case 5: micro(x, ldx, panel, kc, c, ldc, 5, first); break;
    case 4: micro(x, ldx, panel, kc, c, ldc, 4, first); break;
    case 3: micro(x, ldx, panel, kc, c, ldc, 3, first); break;
    case 2: micro(x, ldx, panel, kc, c, ldc, 2, first); break;
    default: micro(x, ldx, panel, kc, c, ldc, 1, first); break;
    }
}

/* Rows m0..m1-1 of w for all n rows of x. scratch: KC · NR floats (the
 * panel, 64-byte aligned) then MR · NR floats for edge tiles. */
void pio_matmul_f32_packed_avx512(const pio_matmul_job *J, int64_t m0, int64_t m1,
                                  void *scratch, float *edge) {
    const int64_t n = J->n, k = J->k, m = J->m;
    float *panel = scratch;
    const float *w = J->w;
    for (int64_t j = m0; j < m1; j += NR) {
        const int64_t cols = m1 - j < NR ? m1 - j : NR;
        for (int64_t k0 = 0; k0 < k; k0 += KC) {
            const int64_t kc = k - k0 < KC ? k - k0 : KC;
            const int first = k0 == 0;
            pack(w, k, j, m1, k0, kc, panel);
            for (int64_t i = 0; i < n; i += MR) {
                const int mr = n - i < MR ? (int)(n - i) : MR;
                const float *x = J->x + i * k + k0;
                float *y = J->y + i * m + j;
                if (cols == NR) {
                    micro_any(x, k, panel, kc, y, m, mr, first);
                    continue;
                }
                /* fewer than 64 columns left: through the edge tile */
                for (int a = 0; a < mr && !first; a++)
                    memcpy(edge + a * NR, y + a * m, (size_t)cols * sizeof(float));
                micro_any(x, k, panel, kc, edge, NR, mr, first);
                for (int a = 0; a < mr; a++)
                    memcpy(y + a * m, edge + a * NR, (size_t)cols * sizeof(float));
            }
        }
    }
}
