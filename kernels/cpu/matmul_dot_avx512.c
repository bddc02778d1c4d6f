/* bf16 × bf16 matmul with AVX-512 BF16 dot products (vdpbf16ps), for bf16
 * mode: x has been rounded to bf16 (torch feeds a bf16 Linear bf16
 * activations, and pio's bf16 mode rounds them where torch does, so the
 * rounding changes nothing there), w is bf16. Each product of two bf16
 * values is exact in f32 and vdpbf16ps adds them into f32 accumulators, so
 * the result has f32 accuracy, like the widening kernels; one instruction
 * does 32 multiply-adds, twice the f32 FMA rate.
 *
 * Register tile: TX rows of x by TW = 4 rows of w, 16 accumulators for
 * TX = 4. The four accumulators of an x row are reduced together at the end
 * of a tile (hadd tree), one 128-bit store of four results. Blocks of x rows
 * stay in L2 while the task's w rows pass over them four at a time.
 * Decode (n = 1) streams four w rows at once, two steps per iteration so
 * that eight loads are in flight.
 */
#include <immintrin.h>

#include "matmul_kernels.h"
#include "simd_avx2.h"
#include "simd_avx512.h"

enum { TW = 4, TXMAX = 4 };

#define ALWAYS_INLINE inline __attribute__((always_inline))

static ALWAYS_INLINE __m512bh ld(const uint16_t *p) {
    return (__m512bh)_mm512_loadu_si512((const void *)p);
}
static ALWAYS_INLINE __m512bh ld_mask(const uint16_t *p, __mmask32 m) {
    return (__m512bh)_mm512_maskz_loadu_epi16(m, p);
}

static ALWAYS_INLINE void store_row(float *y, __m128 v, int nw) {
    if (nw == TW) {
        _mm_storeu_ps(y, v);
    } else {
        float t[4];
        _mm_storeu_ps(t, v);
        for (int b = 0; b < nw; b++) y[b] = t[b];
    }
}

/* Rows i0..i0+nx-1 of x against rows j0..j0+nw-1 of w (missing w rows repeat
 * the last valid one and are not stored). */
static ALWAYS_INLINE void tile(const pio_matmul_job *J, int64_t i0, int nx, int64_t j0, int nw) {
    const int64_t k = J->k;
    const uint16_t *xr[TXMAX], *wr[TW];
#pragma GCC unroll 4
    for (int a = 0; a < nx; a++) xr[a] = J->xb + (i0 + a) * k;
#pragma GCC unroll 4
    for (int b = 0; b < TW; b++)
        wr[b] = (const uint16_t *)J->w + (j0 + (b < nw ? b : nw - 1)) * k;
    __m512 acc[TXMAX][TW];
#pragma GCC unroll 4
    for (int a = 0; a < nx; a++)
#pragma GCC unroll 4
        for (int b = 0; b < TW; b++) acc[a][b] = _mm512_setzero_ps();

    int64_t kk = 0;
    for (; kk + 32 <= k; kk += 32) {
        __m512bh xv[TXMAX];
#pragma GCC unroll 4
        for (int a = 0; a < nx; a++) xv[a] = ld(xr[a] + kk);
#pragma GCC unroll 4
        for (int b = 0; b < TW; b++) {
            __m512bh wv = ld(wr[b] + kk);
#pragma GCC unroll 4
            for (int a = 0; a < nx; a++) acc[a][b] = _mm512_dpbf16_ps(acc[a][b], xv[a], wv);
        }
    }
    if (kk < k) {
        __mmask32 m = (__mmask32)((1ull << (k - kk)) - 1);
        __m512bh xv[TXMAX];
#pragma GCC unroll 4
        for (int a = 0; a < nx; a++) xv[a] = ld_mask(xr[a] + kk, m);
#pragma GCC unroll 4
        for (int b = 0; b < TW; b++) {
            __m512bh wv = ld_mask(wr[b] + kk, m);
#pragma GCC unroll 4
            for (int a = 0; a < nx; a++) acc[a][b] = _mm512_dpbf16_ps(acc[a][b], xv[a], wv);
        }
    }
#pragma GCC unroll 4
    for (int a = 0; a < nx; a++) {
        __m128 v = pio_hsum4_512(acc[a][0], acc[a][1], acc[a][2], acc[a][3]);
        store_row(J->y + (i0 + a) * J->m + j0, J->round_y ? pio_round_bf16_128(v) : v, nw);
    }
}

/* Decode: one x row against w rows m0..m1-1, which lie one after another in
 * memory, so they are read as a single sequential stream (which the
 * prefetchers follow best), one row at a time into four accumulators. */
static void matvec(const pio_matmul_job *J, int64_t m0, int64_t m1) {
    const int64_t k = J->k;
    const uint16_t *x = J->xb;
    const int64_t k128 = k & ~(int64_t)127;
    for (int64_t j = m0; j < m1; j++) {
        const uint16_t *w = (const uint16_t *)J->w + j * k;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int64_t kk = 0;
        for (; kk < k128; kk += 128) {
            a0 = _mm512_dpbf16_ps(a0, ld(x + kk), ld(w + kk));
            a1 = _mm512_dpbf16_ps(a1, ld(x + kk + 32), ld(w + kk + 32));
            a2 = _mm512_dpbf16_ps(a2, ld(x + kk + 64), ld(w + kk + 64));
            a3 = _mm512_dpbf16_ps(a3, ld(x + kk + 96), ld(w + kk + 96));
        }
        for (; kk < k; kk += 32) {
            __mmask32 m = k - kk >= 32 ? (__mmask32)~0u : (__mmask32)((1ull << (k - kk)) - 1);
            a0 = _mm512_dpbf16_ps(a0, ld_mask(x + kk, m), ld_mask(w + kk, m));
        }
        float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        J->y[j] = J->round_y ? _mm_cvtss_f32(pio_round_bf16_128(_mm_set_ss(sum))) : sum;
    }
}

void pio_matmul_bf16dot_avx512(const pio_matmul_job *J, int64_t m0, int64_t m1) {
    if (J->n == 1) {
        matvec(J, m0, m1);
        return;
    }
    /* x rows per block: about 256 KiB of bf16 rows stays in L2. */
    int64_t block = (256 * 1024) / (J->k * 2 + 1);
    block -= block % TXMAX;
    if (block < TXMAX) block = TXMAX;
    for (int64_t ib = 0; ib < J->n; ib += block) {
        int64_t ie = ib + block < J->n ? ib + block : J->n;
        for (int64_t j = m0; j < m1; j += TW) {
            int nw = m1 - j < TW ? (int)(m1 - j) : TW;
            int64_t i = ib;
            for (; i + TXMAX <= ie; i += TXMAX) tile(J, i, TXMAX, j, nw);
            switch (ie - i) {
            case 1: tile(J, i, 1, j, nw); break;
            case 2: tile(J, i, 2, j, nw); break;
            case 3: tile(J, i, 3, j, nw); break;
            default: break;
            }
        }
    }
}

void pio_to_bf16_avx512(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
        _mm512_storeu_si512((void *)(dst + i), (__m512i)v);
    }
    if (i < n) {
        int64_t r = n - i;
        __mmask16 lo = (__mmask16)(r >= 16 ? 0xffff : (1u << r) - 1);
        __mmask16 hi = (__mmask16)(r > 16 ? (1u << (r - 16)) - 1 : 0);
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, src + i + 16),
                                         _mm512_maskz_loadu_ps(lo, src + i));
        _mm512_mask_storeu_epi16(dst + i, (__mmask32)((1ull << r) - 1), (__m512i)v);
    }
}
