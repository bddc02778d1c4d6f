/* Rotary position embedding, rotate-half (NeoX) form, in place.
 *
 * For each token t and pair i < h = rot_dim/2, with angle = pos[t] · inv_freq[i]:
 *   x[i]   ← x[i]·cos − x[i+h]·sin
 *   x[i+h] ← x[i+h]·cos + x[i]·sin
 * in every head; dims from rot_dim on pass through (partial rotary).
 * cos/sin are computed once per (token, pair) and reused across heads.
 */
#include <math.h>

#include "cpu_internal.h"
#include "simd_avx2.h"

/* transformers in bf16: cos/sin tables cast to bf16, then q·cos,
 * rotate_half(q)·sin and their sum are separate bf16 ops, each rounded. */
static void rotate_pair_bf16(float *a, float *b, float c, float s) {
    float x0 = *a, x1 = *b;
    *a = pio_round_bf16(pio_round_bf16(x0 * c) + pio_round_bf16(-x1 * s));
    *b = pio_round_bf16(pio_round_bf16(x1 * c) + pio_round_bf16(x0 * s));
}

pio_status pio_cpu_rope(pio_tensor *x, const int32_t *pos, const float *inv_freq, int rot_dim,
                        bool round_bf16, pio_error *err) {
    const char *op = "rope";
    char s[PIO_SHAPE_BUF];
    if (!pio_cpu_check_f32(op, "x", x, err)) return PIO_ERR_INVALID;
    if (x->ndim != 3)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: x %s must be [n, heads, head_dim]", op,
                             pio_shape_str(x, s, sizeof s));
    const int64_t n = x->shape[0], heads = x->shape[1], head_dim = x->shape[2];
    if (rot_dim <= 0 || rot_dim % 2 != 0 || rot_dim > head_dim)
        return pio_error_set(err, PIO_ERR_INVALID,
                             "%s: rot_dim %d must be even and in (0, head_dim] for x %s", op,
                             rot_dim, pio_shape_str(x, s, sizeof s));
    if (n > 0 && (!pos || !inv_freq))
        return pio_error_set(err, PIO_ERR_INVALID, "%s: positions and inv_freq are required", op);

    const int half = rot_dim / 2;
    float *data = pio_tensor_data(x);
    enum { MAX_HALF = 1024 };
    float cs[MAX_HALF], sn[MAX_HALF];
    for (int64_t t = 0; t < n; t++) {
        float *row = data + t * heads * head_dim; /* [heads, head_dim] */
        if (half > MAX_HALF) { /* huge heads: one pair at a time */
            for (int i = 0; i < half; i++) {
                float angle = (float)pos[t] * inv_freq[i];
                float c = cosf(angle), s1 = sinf(angle);
                if (round_bf16) c = pio_round_bf16(c), s1 = pio_round_bf16(s1);
                for (int64_t h = 0; h < heads; h++) {
                    float *a = row + h * head_dim + i, *b = a + half;
                    if (round_bf16) {
                        rotate_pair_bf16(a, b, c, s1);
                    } else {
                        float x0 = *a, x1 = *b;
                        *a = x0 * c - x1 * s1;
                        *b = x1 * c + x0 * s1;
                    }
                }
            }
            continue;
        }
        /* cos/sin once per (token, pair), shared by every head */
        for (int i = 0; i < half; i++) {
            float angle = (float)pos[t] * inv_freq[i]; /* f32, as transformers computes it */
            cs[i] = cosf(angle);
            sn[i] = sinf(angle);
            if (round_bf16) cs[i] = pio_round_bf16(cs[i]), sn[i] = pio_round_bf16(sn[i]);
        }
        for (int64_t h = 0; h < heads; h++) {
            float *a = row + h * head_dim, *b = a + half;
            int i = 0;
            for (; i + 8 <= half; i += 8) { /* the scalar arithmetic below, 8 pairs at once */
                __m256 x0 = _mm256_loadu_ps(a + i), x1 = _mm256_loadu_ps(b + i);
                __m256 c = _mm256_loadu_ps(cs + i), s1 = _mm256_loadu_ps(sn + i);
                __m256 na, nb;
                if (round_bf16) {
                    __m256 neg = _mm256_sub_ps(_mm256_setzero_ps(), x1);
                    na = pio_round_bf16_256(
                        _mm256_add_ps(pio_round_bf16_256(_mm256_mul_ps(x0, c)),
                                      pio_round_bf16_256(_mm256_mul_ps(neg, s1))));
                    nb = pio_round_bf16_256(
                        _mm256_add_ps(pio_round_bf16_256(_mm256_mul_ps(x1, c)),
                                      pio_round_bf16_256(_mm256_mul_ps(x0, s1))));
                } else {
                    na = _mm256_fmsub_ps(x0, c, _mm256_mul_ps(x1, s1));
                    nb = _mm256_fmadd_ps(x1, c, _mm256_mul_ps(x0, s1));
                }
                _mm256_storeu_ps(a + i, na);
                _mm256_storeu_ps(b + i, nb);
            }
            for (; i < half; i++) {
                if (round_bf16) {
                    rotate_pair_bf16(a + i, b + i, cs[i], sn[i]);
                } else {
                    float x0 = a[i], x1 = b[i];
                    a[i] = x0 * cs[i] - x1 * sn[i];
                    b[i] = x1 * cs[i] + x0 * sn[i];
                }
            }
        }
    }
    return PIO_OK;
}
