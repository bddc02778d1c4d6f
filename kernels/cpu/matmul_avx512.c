/* AVX-512 matmul kernels, chosen at run time on CPUs that have AVX-512 F/BW/VL.
 *
 * The same scheme as matmul_avx2.c with 16 lanes and 32 registers: a tile of
 * TX = 4 x rows by TW = 4 w rows (16 accumulators + 4 x + 1 w). bf16 weights
 * are widened to f32 in registers and multiplied in f32. vdpbf16ps would do
 * twice the work per instruction, but it needs x in bf16 too, and rounding the
 * activations would cost the f32 accuracy this kernel promises; decode is
 * bound by memory bandwidth anyway. The k tail is one masked step.
 */
#include <immintrin.h>

#include "matmul_kernels.h"

enum { TX = 4, TW = 4 };

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* 16 f32 from an f32 or bf16 row at element i; lanes outside `mask` read as 0
 * and are not touched in memory. */
static ALWAYS_INLINE __m512 load16(const void *row, int64_t i, __mmask16 mask, int bf16) {
    if (bf16) {
        __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)row + i);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_maskz_loadu_ps(mask, (const float *)row + i);
}

/* acc[a][b] += x[a, kk:kk+16] · w[b, kk:kk+16] lane by lane. */
static ALWAYS_INLINE void step(__m512 acc[TX][TW], const float *const xr[TX],
                               const void *const wr[TW], int nx, int64_t kk, __mmask16 mask,
                               int bf16) {
    __m512 xv[TX];
#pragma GCC unroll 4
    for (int a = 0; a < nx; a++) xv[a] = load16(xr[a], kk, mask, 0);
#pragma GCC unroll 4
    for (int b = 0; b < TW; b++) {
        __m512 wv = load16(wr[b], kk, mask, bf16);
#pragma GCC unroll 4
        for (int a = 0; a < nx; a++) acc[a][b] = _mm512_fmadd_ps(xv[a], wv, acc[a][b]);
    }
}

/* One tile: rows i0..i0+nx-1 of x against rows j0..j0+nw-1 of w (see
 * matmul_avx2.c for why missing w rows repeat the last one). */
static ALWAYS_INLINE void tile(const pio_matmul_job *J, int64_t i0, int nx, int64_t j0, int nw,
                               int bf16) {
    const int64_t k = J->k;
    const size_t w_row_bytes = (size_t)k * (bf16 ? 2 : 4);
    const float *xr[TX];
    const void *wr[TW];
#pragma GCC unroll 4
    for (int a = 0; a < nx; a++) xr[a] = J->x + (i0 + a) * k;
#pragma GCC unroll 4
    for (int b = 0; b < TW; b++)
        wr[b] = (const char *)J->w + (size_t)(j0 + (b < nw ? b : nw - 1)) * w_row_bytes;

    __m512 acc[TX][TW];
#pragma GCC unroll 4
    for (int a = 0; a < nx; a++)
#pragma GCC unroll 4
        for (int b = 0; b < TW; b++) acc[a][b] = _mm512_setzero_ps();

    int64_t kk = 0;
    for (; kk + 16 <= k; kk += 16) step(acc, xr, wr, nx, kk, (__mmask16)0xffff, bf16);
    if (kk < k) step(acc, xr, wr, nx, kk, (__mmask16)((1u << (k - kk)) - 1), bf16);

#pragma GCC unroll 4
    for (int a = 0; a < nx; a++) {
        float *y = J->y + (i0 + a) * J->m + j0;
        /* The four sums of a row at once (an hadd tree), not four full reductions. */
        __m256 r0 = _mm256_add_ps(_mm512_castps512_ps256(acc[a][0]), _mm512_extractf32x8_ps(acc[a][0], 1));
        __m256 r1 = _mm256_add_ps(_mm512_castps512_ps256(acc[a][1]), _mm512_extractf32x8_ps(acc[a][1], 1));
        __m256 r2 = _mm256_add_ps(_mm512_castps512_ps256(acc[a][2]), _mm512_extractf32x8_ps(acc[a][2], 1));
        __m256 r3 = _mm256_add_ps(_mm512_castps512_ps256(acc[a][3]), _mm512_extractf32x8_ps(acc[a][3], 1));
        __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(r0, r1), _mm256_hadd_ps(r2, r3));
        __m128 sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        if (nw == TW) {
            _mm_storeu_ps(y, sums);
        } else {
            float t[4];
            _mm_storeu_ps(t, sums);
            for (int b = 0; b < nw; b++) y[b] = t[b];
        }
    }
}

/* Decode: w rows m0..m1-1 lie one after another in memory; reading them one
 * row at a time makes a single sequential stream, which the prefetchers
 * follow better than four interleaved short ones (bf16 lm_head at k = 1024:
 * 21 → 30 GB/s on the 2-core Zen 4). */
static ALWAYS_INLINE void matvec(const pio_matmul_job *J, int64_t m0, int64_t m1, int bf16) {
    const int64_t k = J->k;
    const size_t w_row_bytes = (size_t)k * (bf16 ? 2 : 4);
    const int64_t k64 = k & ~(int64_t)63;
    for (int64_t j = m0; j < m1; j++) {
        const void *w = (const char *)J->w + (size_t)j * w_row_bytes;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t kk = 0;
        for (; kk < k64; kk += 64) {
            a0 = _mm512_fmadd_ps(load16(J->x, kk, 0xffff, 0), load16(w, kk, 0xffff, bf16), a0);
            a1 = _mm512_fmadd_ps(load16(J->x, kk + 16, 0xffff, 0), load16(w, kk + 16, 0xffff, bf16), a1);
            a2 = _mm512_fmadd_ps(load16(J->x, kk + 32, 0xffff, 0), load16(w, kk + 32, 0xffff, bf16), a2);
            a3 = _mm512_fmadd_ps(load16(J->x, kk + 48, 0xffff, 0), load16(w, kk + 48, 0xffff, bf16), a3);
        }
        for (; kk < k; kk += 16) {
            __mmask16 m = k - kk >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (k - kk)) - 1);
            a0 = _mm512_fmadd_ps(load16(J->x, kk, m, 0), load16(w, kk, m, bf16), a0);
        }
        J->y[j] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    }
}

/* x blocks in L2, groups of TW w rows in L1 (as in matmul_avx2.c). */
static ALWAYS_INLINE void run(const pio_matmul_job *J, int64_t m0, int64_t m1, int bf16) {
    if (J->n == 1) {
        matvec(J, m0, m1, bf16);
        return;
    }
    const int64_t block = pio_matmul_x_block(J->k, TX);
    for (int64_t ib = 0; ib < J->n; ib += block) {
        int64_t ie = ib + block < J->n ? ib + block : J->n;
        for (int64_t j = m0; j < m1; j += TW) {
            int nw = m1 - j < TW ? (int)(m1 - j) : TW;
            int64_t i = ib;
            for (; i + TX <= ie; i += TX) tile(J, i, TX, j, nw, bf16);
            switch (ie - i) { /* the rows left over, a constant nx per case */
            case 1: tile(J, i, 1, j, nw, bf16); break;
            case 2: tile(J, i, 2, j, nw, bf16); break;
            case 3: tile(J, i, 3, j, nw, bf16); break;
            default: break;
            }
        }
    }
}

void pio_matmul_f32_avx512(const pio_matmul_job *job, int64_t m0, int64_t m1) {
    run(job, m0, m1, 0);
}

void pio_matmul_bf16_avx512(const pio_matmul_job *job, int64_t m0, int64_t m1) {
    run(job, m0, m1, 1);
}
