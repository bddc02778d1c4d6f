/* kernels/cpu/simd_avx2.h: small AVX2 building blocks shared by the kernels
 * (8 f32 lanes per __m256). Everything is static inline so that each file gets
 * its own copy compiled with its own target flags. */
#ifndef PIO_SIMD_AVX2_H
#define PIO_SIMD_AVX2_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* Sum of the 8 lanes. */
static inline float pio_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Largest of the 8 lanes. */
static inline float pio_hmax256(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 8 bf16 → 8 f32: a bf16 is the top half of an f32, so widen and shift. */
static inline __m256 pio_load_bf16x8(const uint16_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

/* 8 f32 from a row that is f32 or bf16 (bf16 is a compile-time constant at
 * every call site, so the branch folds away). */
static inline __m256 pio_load8(const void *row, int64_t i, int bf16) {
    return bf16 ? pio_load_bf16x8((const uint16_t *)row + i)
                : _mm256_loadu_ps((const float *)row + i);
}

/* Lanes 0..rem-1 set, for the last partial vector of a row (0 < rem < 8). */
static inline __m256i pio_tail_mask256(int64_t rem) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem), lane);
}

/* The last rem (< 8) elements of a row from i on, zeros in the other lanes;
 * never reads past the row's end. */
static inline __m256 pio_load8_tail(const void *row, int64_t i, int64_t rem, int bf16) {
    if (!bf16) return _mm256_maskload_ps((const float *)row + i, pio_tail_mask256(rem));
    uint16_t tmp[8] = {0};
    memcpy(tmp, (const uint16_t *)row + i, (size_t)rem * sizeof tmp[0]);
    return pio_load_bf16x8(tmp);
}

/* Rounds each lane to the nearest bf16 (ties to even), bit-for-bit what
 * pio_round_bf16 does, NaNs made quiet. */
static inline __m256 pio_round_bf16_256(__m256 x) {
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u);
    __m256i u = _mm256_castps_si256(x);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    r = _mm256_and_si256(r, hi);
    __m256i quiet = _mm256_and_si256(_mm256_or_si256(u, _mm256_set1_epi32(0x00400000)), hi);
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    return _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(quiet), nan);
}

/* pio_round_bf16_256 on 4 lanes. */
static inline __attribute__((always_inline)) __m128 pio_round_bf16_128(__m128 x) {
    const __m128i hi = _mm_set1_epi32((int)0xffff0000u);
    __m128i u = _mm_castps_si128(x);
    __m128i lsb = _mm_and_si128(_mm_srli_epi32(u, 16), _mm_set1_epi32(1));
    __m128i r = _mm_and_si128(_mm_add_epi32(u, _mm_add_epi32(lsb, _mm_set1_epi32(0x7fff))), hi);
    __m128i quiet = _mm_and_si128(_mm_or_si128(u, _mm_set1_epi32(0x00400000)), hi);
    __m128 nan = _mm_cmpunord_ps(x, x);
    return _mm_blendv_ps(_mm_castsi128_ps(r), _mm_castsi128_ps(quiet), nan);
}

/* e^x to about 1 ulp (Cephes' expf polynomial): 0 below -87.3, inf above
 * 88.37, NaN in → NaN out. Softmax, SiLU and attention share it. */
static inline __m256 pio_exp256(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447504f);
    __m256 too_small = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    __m256 too_big = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 c = _mm256_min_ps(_mm256_max_ps(x, lo), hi);

    /* x = n·ln2 + r with |r| <= ln2/2; ln2 split in two so r stays exact. */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(c, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), c);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);

    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));

    /* 2^n built in the exponent field; n is in [-126, 127] after the clamp. */
    __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));

    y = _mm256_andnot_ps(too_small, y);
    y = _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), too_big);
    return _mm256_blendv_ps(y, x, nan);
}

#endif
