/* AVX2 + FMA matmul kernels (the x86-64-v3 baseline).
 *
 * y[i, j] = dot(x[i, :], w[j, :]). The register tile is TX rows of x by TW
 * rows of w: TX·TW accumulators, TX x vectors and one w vector fill the 16 ymm
 * registers exactly (3·4 + 3 + 1), so nothing spills in the inner loop.
 * Each w vector, loaded (and widened from bf16) once, feeds TX FMAs; each x
 * vector feeds TW. For decode (n = 1) the tile is 1 × TW: four independent
 * dot products stream four w rows. The loop then waits on memory, not on
 * arithmetic: one core reads about 17 GB/s of bf16 weights (a plain read loop
 * gets 23), two cores reach the machine's bandwidth (measured on a 2-core
 * Zen 4 VM, see test-ops).
 */
#include <immintrin.h>

#include "matmul_kernels.h"
#include "simd_avx2.h"

enum { TX = 3, TW = 4 };

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* acc[a][b] += x[a, kk:kk+8] · w[b, kk:kk+8] lane by lane; a last partial step
 * (len < 8) reads only len elements and leaves zeros in the other lanes. */
static ALWAYS_INLINE void step(__m256 acc[TX][TW], const float *const xr[TX],
                               const void *const wr[TW], int nx, int64_t kk, int64_t len,
                               int bf16) {
    __m256 xv[TX];
#pragma GCC unroll 4
    for (int a = 0; a < nx; a++)
        xv[a] = len == 8 ? _mm256_loadu_ps(xr[a] + kk) : pio_load8_tail(xr[a], kk, len, 0);
#pragma GCC unroll 4
    for (int b = 0; b < TW; b++) {
        __m256 wv = len == 8 ? pio_load8(wr[b], kk, bf16) : pio_load8_tail(wr[b], kk, len, bf16);
#pragma GCC unroll 4
        for (int a = 0; a < nx; a++) acc[a][b] = _mm256_fmadd_ps(xv[a], wv, acc[a][b]);
    }
}

/* One tile: rows i0..i0+nx-1 of x against rows j0..j0+nw-1 of w. nx and bf16
 * are constants at every call site, so the loops below unroll fully and the
 * accumulators live in registers. Missing w rows (nw < TW, at the end of a
 * range) reuse the last valid row and are not stored: one code path, and the
 * extra work happens once per range. */
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

    __m256 acc[TX][TW];
#pragma GCC unroll 4
    for (int a = 0; a < nx; a++)
#pragma GCC unroll 4
        for (int b = 0; b < TW; b++) acc[a][b] = _mm256_setzero_ps();

    int64_t kk = 0;
    for (; kk + 8 <= k; kk += 8) step(acc, xr, wr, nx, kk, 8, bf16);
    if (kk < k) step(acc, xr, wr, nx, kk, k - kk, bf16); /* k not a multiple of 8 */

#pragma GCC unroll 4
    for (int a = 0; a < nx; a++) {
        float *y = J->y + (i0 + a) * J->m + j0;
#pragma GCC unroll 4
        for (int b = 0; b < TW; b++)
            if (b < nw) y[b] = pio_hsum256(acc[a][b]);
    }
}

/* Blocks of x rows stay in L2 while the range's w rows pass over them in
 * groups of TW; each group (TW·k weights, 20 KiB at k = 2560 in bf16) stays in
 * L1/L2 while all the block's x rows go by, so w is read from memory once per
 * x block, which for decode and short prompts means once. */
static ALWAYS_INLINE void run(const pio_matmul_job *J, int64_t m0, int64_t m1, int bf16) {
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
            default: break;
            }
        }
    }
}

void pio_matmul_f32_avx2(const pio_matmul_job *job, int64_t m0, int64_t m1) { run(job, m0, m1, 0); }

void pio_matmul_bf16_avx2(const pio_matmul_job *job, int64_t m0, int64_t m1) {
    run(job, m0, m1, 1);
}
