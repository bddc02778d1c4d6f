/* Softmax over the last dimension, in place, numerically stable: exp(x − max)
 * so that no term overflows, then divided by the sum. */
#include "cpu_internal.h"
#include "simd_avx2.h"

static void softmax_row(float *x, int64_t d) {
    __m256 vmax = _mm256_set1_ps(-__builtin_inff());
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
    float max = pio_hmax256(vmax);
    for (; i < d; i++) max = x[i] > max ? x[i] : max;
    /* A row of only −inf (fully masked) becomes NaN from −inf − −inf, as in torch. */

    const __m256 vm = _mm256_set1_ps(max);
    __m256 vsum = _mm256_setzero_ps();
    for (i = 0; i + 8 <= d; i += 8) {
        __m256 e = pio_exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    if (i < d) {
        __m256i mask = pio_tail_mask256(d - i);
        __m256 e = pio_exp256(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), vm));
        e = _mm256_and_ps(e, _mm256_castsi256_ps(mask)); /* unused lanes add nothing */
        _mm256_maskstore_ps(x + i, mask, e);
        vsum = _mm256_add_ps(vsum, e);
    }

    const __m256 vsumb = _mm256_set1_ps(pio_hsum256(vsum));
    for (i = 0; i + 8 <= d; i += 8)
        _mm256_storeu_ps(x + i, _mm256_div_ps(_mm256_loadu_ps(x + i), vsumb));
    if (i < d) {
        __m256i mask = pio_tail_mask256(d - i);
        _mm256_maskstore_ps(x + i, mask, _mm256_div_ps(_mm256_maskload_ps(x + i, mask), vsumb));
    }
}

pio_status pio_cpu_softmax(pio_tensor *x, pio_error *err) {
    if (!pio_cpu_check_f32("softmax", "x", x, err)) return PIO_ERR_INVALID;
    if (x->ndim < 1)
        return pio_error_set(err, PIO_ERR_INVALID, "softmax: x [] has no last dimension");
    const int64_t rows = pio_cpu_rows(x), d = x->shape[x->ndim - 1];
    float *data = pio_tensor_data(x);
    for (int64_t r = 0; r < rows; r++) softmax_row(data + r * d, d);
    return PIO_OK;
}
