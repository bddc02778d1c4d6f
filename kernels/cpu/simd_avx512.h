/* kernels/cpu/simd_avx512.h: AVX-512 building blocks shared by the *_avx512.c
 * kernels (16 f32 lanes per __m512); only files compiled with AVX-512 flags
 * include it. */
#ifndef PIO_SIMD_AVX512_H
#define PIO_SIMD_AVX512_H

#include <immintrin.h>

/* Rounds each lane to the nearest bf16 (ties to even), bit-for-bit what
 * pio_round_bf16 does, NaNs made quiet (simd_avx2.h's on 16 lanes). */
static inline __attribute__((always_inline)) __m512 pio_round_bf16_512(__m512 x) {
    const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
    __m512i u = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_and_si512(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), hi);
    __m512i quiet = _mm512_and_si512(_mm512_or_si512(u, _mm512_set1_epi32(0x00400000)), hi);
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    return _mm512_castsi512_ps(_mm512_mask_blend_epi32(nan, r, quiet));
}

/* [Σa, Σb, Σc, Σd]: the lane sums of four 16-lane accumulators at once (an
 * add of halves, then a hadd tree). */
static inline __attribute__((always_inline)) __m128 pio_hsum4_512(__m512 a, __m512 b, __m512 c,
                                                                  __m512 d) {
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, d8));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

#endif
