/* f32 matmul for prompts, GotoBLAS style, AVX-512: w rows are packed 64 at a
 * time and KC = 256 k at a time into a panel [KC][64] (64 KiB, in L2), and a
 * 6 × 64 register tile (24 accumulators) multiplies broadcast x values by
 * panel rows: 4 loads + 6 broadcasts per 24 FMAs and no horizontal sums,
 * unlike the dot-product tiles of matmul_avx512.c. y accumulates across k
 * blocks. Products and sums are plain f32 FMAs (f32 reference mode). */
#include <immintrin.h>
#include <string.h>

#include "matmul_kernels.h"
#include "simd_avx512.h"

enum { MR = 6, NR = 64, KC = 256 };

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Rows j0..j0+63 of w (zeros past m1), k in [k0, k0 + kc), transposed into
 * panel[kk][n]. */
/* t[c] lane i = r[i] lane c: a 16 × 16 transpose of 32-bit elements. */
static ALWAYS_INLINE void transpose16(__m512 r[16], __m512 t[16]) {
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 2]);
        __m512d c = _mm512_castps_pd(t[i + 1]), d = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    /* r[4g + q] holds, per 128-bit lane L, column 4L + q of rows 4g..4g+3 */
    for (int q = 0; q < 4; q++) {
        __m512 a = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x88); /* lanes 0,2 | 0,2 */
        __m512 b = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xdd); /* lanes 1,3 | 1,3 */
        __m512 c = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x88);
        __m512 d = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xdd);
        t[q] = _mm512_shuffle_f32x4(a, c, 0x88);
        t[8 + q] = _mm512_shuffle_f32x4(a, c, 0xdd);
        t[4 + q] = _mm512_shuffle_f32x4(b, d, 0x88);
        t[12 + q] = _mm512_shuffle_f32x4(b, d, 0xdd);
    }
}

/* Rows j0..j0+63 of a [m, ld] matrix of 32-bit elements (rows past m1 as
 * zeros), columns [c0, c0 + cols), transposed into panel[c][n], 16 rows and
 * 16 columns at a time (one 64-byte load per row, the transpose in
 * registers). f32 weights: elements are values; bf16: pairs (VNNI). */
static void pack32(const uint32_t *w, int64_t ld, int64_t j0, int64_t m1, int64_t c0,
                   int64_t cols, uint32_t *panel) {
    for (int n0 = 0; n0 < NR; n0 += 16) {
        const uint32_t *src[16];
        for (int i = 0; i < 16; i++) {
            int64_t row = j0 + n0 + i;
            src[i] = row < m1 ? w + row * ld + c0 : NULL;
        }
        for (int64_t cc = 0; cc < cols; cc += 16) {
            __mmask16 m = cols - cc >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (cols - cc)) - 1);
            __m512 r[16], t[16];
            for (int i = 0; i < 16; i++)
                r[i] = src[i] ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi32(m, src[i] + cc))
                              : _mm512_setzero_ps();
            transpose16(r, t);
            for (int c = 0; c < 16 && cc + c < cols; c++)
                _mm512_store_ps((float *)panel + (cc + c) * NR + n0, t[c]);
        }
    }
}

static void pack(const float *w, int64_t k, int64_t j0, int64_t m1, int64_t k0, int64_t kc,
                 float *panel) {
    pack32((const uint32_t *)w, k, j0, m1, k0, kc, (uint32_t *)panel);
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

/* ---- bf16 mode: the same scheme with vdpbf16ps on pairs ------------------------
 * x (job->xb, bf16, k even) times w bf16 packed as pairs: panel[kp][n] holds
 * (w[n][2kp], w[n][2kp+1]); a broadcast x pair times a panel row adds both
 * products into f32 (exact products, as in matmul_dot_avx512.c). KP = 256
 * pairs (512 k) per block: a 64 KiB panel. */
enum { KP = 256 };

/* last: the final k block, whose sums are rounded to bf16 when round is set. */
static ALWAYS_INLINE void micro_dot(const uint32_t *x, int64_t ldx, const uint32_t *panel,
                                    int64_t kpc, float *c, int64_t ldc, int mr, int first,
                                    int round) {
    __m512 acc[MR][4];
#pragma GCC unroll 6
    for (int a = 0; a < mr; a++)
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++)
            acc[a][b] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(c + a * ldc + 16 * b);
    for (int64_t kp = 0; kp < kpc; kp++) {
        const uint32_t *p = panel + kp * NR;
        __m512bh w0 = (__m512bh)_mm512_load_si512((const void *)p);
        __m512bh w1 = (__m512bh)_mm512_load_si512((const void *)(p + 16));
        __m512bh w2 = (__m512bh)_mm512_load_si512((const void *)(p + 32));
        __m512bh w3 = (__m512bh)_mm512_load_si512((const void *)(p + 48));
#pragma GCC unroll 6
        for (int a = 0; a < mr; a++) {
            __m512bh xv = (__m512bh)_mm512_set1_epi32((int)x[a * ldx + kp]);
            acc[a][0] = _mm512_dpbf16_ps(acc[a][0], xv, w0);
            acc[a][1] = _mm512_dpbf16_ps(acc[a][1], xv, w1);
            acc[a][2] = _mm512_dpbf16_ps(acc[a][2], xv, w2);
            acc[a][3] = _mm512_dpbf16_ps(acc[a][3], xv, w3);
        }
    }
#pragma GCC unroll 6
    for (int a = 0; a < mr; a++)
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++)
            _mm512_storeu_ps(c + a * ldc + 16 * b, round ? pio_round_bf16_512(acc[a][b]) : acc[a][b]);
}

static void micro_dot_any(const uint32_t *x, int64_t ldx, const uint32_t *panel, int64_t kpc,
                          float *c, int64_t ldc, int mr, int first, int round) {
#define CASE(R)                                                                 \
    case R:                                                                     \
        if (round) micro_dot(x, ldx, panel, kpc, c, ldc, R, first, 1);          \
        else micro_dot(x, ldx, panel, kpc, c, ldc, R, first, 0);                \
        break;
    switch (mr) {
        CASE(6)
        CASE(5)
        CASE(4)
        CASE(3)
        CASE(2)
    default:
        if (round) micro_dot(x, ldx, panel, kpc, c, ldc, 1, first, 1);
        else micro_dot(x, ldx, panel, kpc, c, ldc, 1, first, 0);
        break;
    }
#undef CASE
}

void pio_matmul_bf16_packed_avx512(const pio_matmul_job *J, int64_t m0, int64_t m1,
                                   void *scratch, float *edge) {
    const int64_t n = J->n, kp_all = J->k / 2, m = J->m;
    uint32_t *panel = scratch;
    const uint32_t *w = J->w, *xp = (const uint32_t *)J->xb;
    for (int64_t j = m0; j < m1; j += NR) {
        const int64_t cols = m1 - j < NR ? m1 - j : NR;
        for (int64_t p0 = 0; p0 < kp_all; p0 += KP) {
            const int64_t kpc = kp_all - p0 < KP ? kp_all - p0 : KP;
            const int first = p0 == 0, round = J->round_y && p0 + kpc == kp_all;
            pack32(w, kp_all, j, m1, p0, kpc, panel);
            for (int64_t i = 0; i < n; i += MR) {
                const int mr = n - i < MR ? (int)(n - i) : MR;
                const uint32_t *x = xp + i * kp_all + p0;
                float *y = J->y + i * m + j;
                if (cols == NR) {
                    micro_dot_any(x, kp_all, panel, kpc, y, m, mr, first, round);
                    continue;
                }
                for (int a = 0; a < mr && !first; a++)
                    memcpy(edge + a * NR, y + a * m, (size_t)cols * sizeof(float));
                micro_dot_any(x, kp_all, panel, kpc, edge, NR, mr, first, round);
                for (int a = 0; a < mr; a++)
                    memcpy(y + a * m, edge + a * NR, (size_t)cols * sizeof(float));
            }
        }
    }
}
