/* AVX-512 inner loops of attention (attention.c does the rest): q·k for a
 * run of keys and p·v accumulation, 16 lanes wide; in bf16 mode with a bf16
 * cache, q·k uses vdpbf16ps on q rounded to bf16 (torch's q is bf16 there,
 * and products of two bf16 are exact in f32). */
#include <immintrin.h>
#include <stdbool.h>
#include <stdint.h>

#include "attention_kernels.h"
#include "simd_avx2.h"
#include "simd_avx512.h"

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* Lanes 0..rem-1 (rem < 16) of a row of f32 or bf16 as f32; the others 0. */
static ALWAYS_INLINE __m512 ld16(const void *row, int64_t i, __mmask16 m, int bf16) {
    if (bf16) {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + i);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_maskz_loadu_ps(m, (const float *)row + i);
}

static ALWAYS_INLINE __m128 finish4(__m128 d, float scale, bool round_bf16) {
    __m128 sc = _mm_set1_ps(scale);
    return round_bf16 ? pio_round_bf16_128(_mm_mul_ps(pio_round_bf16_128(d), sc)) : _mm_mul_ps(d, sc);
}

static ALWAYS_INLINE float finish1(float d, float scale, bool round_bf16) {
    return _mm_cvtss_f32(finish4(_mm_set1_ps(d), scale, round_bf16));
}

/* Widening q·k over 16 lanes (f32 or bf16 cache). */
static ALWAYS_INLINE void scores_wide(const pio_attn_scores_args *A, int bf16) {
    const int64_t d = A->d;
    const char *k = A->k;
    int64_t j = 0;
    for (; j + 4 <= A->len; j += 4, k += 4 * A->step) {
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                         _mm512_setzero_ps()};
        for (int64_t i = 0; i < d; i += 16) {
            __mmask16 m = d - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (d - i)) - 1);
            __m512 qv = _mm512_maskz_loadu_ps(m, A->q + i);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                acc[r] = _mm512_fmadd_ps(qv, ld16(k + r * A->step, i, m, bf16), acc[r]);
        }
        _mm_storeu_ps(A->out + j, finish4(pio_hsum4_512(acc[0], acc[1], acc[2], acc[3]), A->scale,
                                          A->round_bf16));
    }
    for (; j < A->len; j++, k += A->step) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < d; i += 16) {
            __mmask16 m = d - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (d - i)) - 1);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, A->q + i), ld16(k, i, m, bf16), acc);
        }
        A->out[j] = finish1(_mm512_reduce_add_ps(acc), A->scale, A->round_bf16);
    }
}

/* bf16 q (A->qb) · bf16 k with vdpbf16ps, 32 elements per instruction. */
static void scores_dot(const pio_attn_scores_args *A) {
    const int64_t d = A->d;
    const char *k = A->k;
    int64_t j = 0;
    for (; j + 4 <= A->len; j += 4, k += 4 * A->step) {
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                         _mm512_setzero_ps()};
        for (int64_t i = 0; i < d; i += 32) {
            __mmask32 m = d - i >= 32 ? (__mmask32)~0u : (__mmask32)((1ull << (d - i)) - 1);
            __m512bh qv = (__m512bh)_mm512_maskz_loadu_epi16(m, A->qb + i);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                acc[r] = _mm512_dpbf16_ps(
                    acc[r], qv,
                    (__m512bh)_mm512_maskz_loadu_epi16(m, (const uint16_t *)(k + r * A->step) + i));
        }
        _mm_storeu_ps(A->out + j, finish4(pio_hsum4_512(acc[0], acc[1], acc[2], acc[3]), A->scale,
                                          A->round_bf16));
    }
    for (; j < A->len; j++, k += A->step) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < d; i += 32) {
            __mmask32 m = d - i >= 32 ? (__mmask32)~0u : (__mmask32)((1ull << (d - i)) - 1);
            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(m, A->qb + i),
                                   (__m512bh)_mm512_maskz_loadu_epi16(m, (const uint16_t *)k + i));
        }
        A->out[j] = finish1(_mm512_reduce_add_ps(acc), A->scale, A->round_bf16);
    }
}

void pio_attn_scores_avx512(const pio_attn_scores_args *A) {
    if (A->qb) scores_dot(A);
    else if (A->k_bf16) scores_wide(A, 1);
    else scores_wide(A, 0);
}

/* o[0..d) += Σ_j p[j] · v_j, four values per pass over o. */
static ALWAYS_INLINE void pv_impl(float *o, const float *p, const char *v, size_t step,
                                  int64_t len, int64_t d, int bf16) {
    int64_t j = 0;
    for (; j + 4 <= len; j += 4, v += 4 * step) {
        __m512 p0 = _mm512_set1_ps(p[j]), p1 = _mm512_set1_ps(p[j + 1]);
        __m512 p2 = _mm512_set1_ps(p[j + 2]), p3 = _mm512_set1_ps(p[j + 3]);
        for (int64_t i = 0; i < d; i += 16) {
            __mmask16 m = d - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (d - i)) - 1);
            __m512 acc = _mm512_maskz_loadu_ps(m, o + i);
            acc = _mm512_fmadd_ps(p0, ld16(v, i, m, bf16), acc);
            acc = _mm512_fmadd_ps(p1, ld16(v + step, i, m, bf16), acc);
            acc = _mm512_fmadd_ps(p2, ld16(v + 2 * step, i, m, bf16), acc);
            acc = _mm512_fmadd_ps(p3, ld16(v + 3 * step, i, m, bf16), acc);
            _mm512_mask_storeu_ps(o + i, m, acc);
        }
    }
    for (; j < len; j++, v += step) {
        __m512 pj = _mm512_set1_ps(p[j]);
        for (int64_t i = 0; i < d; i += 16) {
            __mmask16 m = d - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (d - i)) - 1);
            __m512 acc = _mm512_maskz_loadu_ps(m, o + i);
            _mm512_mask_storeu_ps(o + i, m, _mm512_fmadd_ps(pj, ld16(v, i, m, bf16), acc));
        }
    }
}

void pio_attn_pv_avx512(float *o, const float *p, const char *v, size_t step, int64_t len,
                        int64_t d, bool v_bf16) {
    if (v_bf16) pv_impl(o, p, v, step, len, d, 1);
    else pv_impl(o, p, v, step, len, d, 0);
}

void pio_attn_q_to_bf16_avx512(const float *q, uint16_t *qb, int64_t d) {
    int64_t i = 0;
    for (; i + 16 <= d; i += 16)
        _mm256_storeu_si256((__m256i *)(qb + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(q + i)));
    for (; i < d; i++) {
        union { float f; uint32_t u; } v = {.f = q[i]};
        v.u += 0x7fffu + ((v.u >> 16) & 1u);
        qb[i] = (uint16_t)(v.u >> 16);
    }
}
