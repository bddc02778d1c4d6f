/* kv_write: stores this batch's keys and values in the cache at
 * cache[seq[t], pos[t]], converting to the cache's dtype (f32 or bf16).
 *
 * K and V are checked separately, so their head dims may differ (MLA caches
 * a wider key than value); slots and context length must agree.
 */
#include "cpu_internal.h"
#include "simd_avx2.h"

void pio_cpu_to_bf16_row(const float *src, uint16_t *dst, int64_t n) {
    const __m256i abs = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i u = _mm256_loadu_si256((const __m256i *)(src + i));
        __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        __m256i r = _mm256_srli_epi32(
            _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
        __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs), inf);
        r = _mm256_blendv_epi8(r, quiet, nan);
        r = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xd8);
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_castsi256_si128(r));
    }
    for (; i < n; i++) dst[i] = pio_f32_to_bf16(src[i]);
}

/* src [n, kv_heads, head_dim] fits cache [slots, ctx, kv_heads, head_dim]. */
static bool check_pair(const char *src_name, const pio_tensor *src, const char *cache_name,
                       const pio_tensor *cache, pio_error *err) {
    if (src->ndim != 3 || cache->ndim != 4 || src->shape[1] != cache->shape[2] ||
        src->shape[2] != cache->shape[3]) {
        pio_cpu_shape_error(
            err, "kv_write", src_name, src, cache_name, cache,
            "do not fit [n, kv_heads, head_dim] and [slots, ctx, kv_heads, head_dim]");
        return false;
    }
    return true;
}

static void write_rows(const pio_tensor *src, pio_tensor *cache, const int32_t *seq,
                       const int32_t *pos) {
    const int64_t n = src->shape[0], ctx = cache->shape[1];
    const int64_t row = src->shape[1] * src->shape[2]; /* one token: kv_heads · head_dim */
    const size_t elem = pio_dtype_info(cache->dtype)->size;
    const float *s = pio_tensor_data(src);
    char *c = pio_tensor_data(cache);
    for (int64_t t = 0; t < n; t++) {
        size_t at = (size_t)((int64_t)seq[t] * ctx + pos[t]) * (size_t)row * elem;
        if (cache->dtype == PIO_BF16) pio_cpu_to_bf16_row(s + t * row, (uint16_t *)(c + at), row);
        else pio_convert(c + at, cache->dtype, s + t * row, PIO_F32, (size_t)row);
    }
}

pio_status pio_cpu_kv_write(const pio_tensor *k, const pio_tensor *v, pio_tensor *cache_k,
                            pio_tensor *cache_v, const int32_t *seq, const int32_t *pos,
                            pio_error *err) {
    const char *op = "kv_write";
    if (!pio_cpu_check_f32(op, "k", k, err) || !pio_cpu_check_f32(op, "v", v, err) ||
        !pio_cpu_check_f32_bf16(op, "cache_k", cache_k, err) ||
        !pio_cpu_check_f32_bf16(op, "cache_v", cache_v, err))
        return PIO_ERR_INVALID;
    if (!check_pair("k", k, "cache_k", cache_k, err) ||
        !check_pair("v", v, "cache_v", cache_v, err))
        return PIO_ERR_INVALID;
    if (k->shape[0] != v->shape[0])
        return pio_cpu_shape_error(err, op, "k", k, "v", v, "hold different numbers of tokens");
    if (cache_k->shape[0] != cache_v->shape[0] || cache_k->shape[1] != cache_v->shape[1])
        return pio_cpu_shape_error(err, op, "cache_k", cache_k, "cache_v", cache_v,
                                   "differ in slots or context length");
    const int64_t n = k->shape[0], slots = cache_k->shape[0], ctx = cache_k->shape[1];
    if (n > 0 && (!seq || !pos))
        return pio_error_set(err, PIO_ERR_INVALID, "%s: seq and pos are required", op);
    for (int64_t t = 0; t < n; t++) {
        if (seq[t] < 0 || seq[t] >= slots)
            return pio_error_set(err, PIO_ERR_RANGE,
                                 "%s: token %lld: sequence slot %d is out of range for %lld slots",
                                 op, (long long)t, (int)seq[t], (long long)slots);
        if (pos[t] < 0 || pos[t] >= ctx)
            return pio_error_set(
                err, PIO_ERR_RANGE,
                "%s: token %lld: position %d is out of range for a context of %lld", op,
                (long long)t, (int)pos[t], (long long)ctx);
    }
    write_rows(k, cache_k, seq, pos);
    write_rows(v, cache_v, seq, pos);
    return PIO_OK;
}
