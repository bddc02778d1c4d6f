/* Rotary position embedding, rotate-half (NeoX) form, in place.
 *
 * For each token t and pair i < h = rot_dim/2, with angle = pos[t] · inv_freq[i]:
 *   x[i]   ← x[i]·cos − x[i+h]·sin
 *   x[i+h] ← x[i+h]·cos + x[i]·sin
 * in every head; dims from rot_dim on pass through (partial rotary).
 * cos/sin are computed once per (token, pair) and reused across heads.
 */
#include <math.h>
#include <string.h>

#include "cpu_internal.h"
#include "simd_avx2.h"

/* transformers in bf16: cos/sin tables cast to bf16, then q·cos,
 * rotate_half(q)·sin and their sum are separate bf16 ops, each rounded. */
static void rotate_pair_bf16(float *a, float *b, float c, float s) {
    float x0 = *a, x1 = *b;
    *a = pio_round_bf16(pio_round_bf16(x0 * c) + pio_round_bf16(-x1 * s));
    *b = pio_round_bf16(pio_round_bf16(x1 * c) + pio_round_bf16(x0 * s));
}

/* cos/sin of pos · inv_freq[i] for i < half (f32, as transformers), rounded
 * to bf16 in bf16 mode. */
static void rope_tables(int32_t pos, const float *inv_freq, int half, bool round_bf16, float *cs,
                        float *sn) {
    for (int i = 0; i < half; i++) {
        float angle = (float)pos * inv_freq[i]; /* f32, as transformers computes it */
        cs[i] = cosf(angle);
        sn[i] = sinf(angle);
        if (round_bf16) cs[i] = pio_round_bf16(cs[i]), sn[i] = pio_round_bf16(sn[i]);
    }
}

/* One token's heads [heads, head_dim], rotated in place with the tables. */
static void rope_heads(float *row, int64_t heads, int64_t head_dim, int half, const float *cs,
                       const float *sn, bool round_bf16) {
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
        rope_tables(pos[t], inv_freq, half, round_bf16, cs, sn);
        rope_heads(row, heads, head_dim, half, cs, sn, round_bf16);
    }
    return PIO_OK;
}

/* ---- q/k norm + RoPE + KV write, one pass over the tokens --------------------- */

typedef struct {
    float *q, *k;
    const float *v;
    const void *qn, *kn;
    bool qn_bf16, kn_bf16, round_bf16;
    float eps;
    const int32_t *pos, *seq;
    const float *inv_freq;
    int half;
    int64_t heads, kv_heads, d, dv, ctx;
    char *ck, *cv; /* caches, or NULL: no write */
    bool c_bf16;
    int n_tasks;
    int64_t n;
} qk_ctx;

static void write_row(char *cache, bool bf16, int64_t index, const float *src, int64_t len) {
    if (bf16) pio_cpu_to_bf16_row(src, (uint16_t *)cache + index * len, len);
    else memcpy((float *)cache + index * len, src, (size_t)len * sizeof(float));
}

static void qk_task(void *arg, int task, int thread) {
    (void)thread;
    const qk_ctx *c = arg;
    enum { MAX_HALF = 1024 };
    float cs[MAX_HALF], sn[MAX_HALF];
    int64_t t0, t1;
    pio_cpu_task_range(c->n, c->n_tasks, task, 1, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) {
        float *q = c->q + t * c->heads * c->d, *k = c->k + t * c->kv_heads * c->d;
        if (c->qn) pio_cpu_rmsnorm_rows(q, q, c->heads, c->d, c->qn, c->qn_bf16, c->eps, c->round_bf16);
        if (c->kn) pio_cpu_rmsnorm_rows(k, k, c->kv_heads, c->d, c->kn, c->kn_bf16, c->eps, c->round_bf16);
        rope_tables(c->pos[t], c->inv_freq, c->half, c->round_bf16, cs, sn);
        rope_heads(q, c->heads, c->d, c->half, cs, sn, c->round_bf16);
        rope_heads(k, c->kv_heads, c->d, c->half, cs, sn, c->round_bf16);
        if (c->ck) {
            int64_t at = (int64_t)c->seq[t] * c->ctx + c->pos[t];
            write_row(c->ck, c->c_bf16, at, k, c->kv_heads * c->d);
            write_row(c->cv, c->c_bf16, at, c->v + t * c->kv_heads * c->dv, c->kv_heads * c->dv);
        }
    }
}

static bool norm_fits(const pio_tensor *w, int64_t d) {
    return !w || (w->ndim == 1 && w->shape[0] == d && pio_tensor_is_contiguous(w) &&
                  (w->dtype == PIO_F32 || w->dtype == PIO_BF16) && w->storage &&
                  w->storage->device == PIO_DEVICE_CPU);
}

pio_status pio_cpu_qk_norm_rope(pio_threadpool *pool, pio_tensor *q, pio_tensor *k,
                                const pio_tensor *q_norm, const pio_tensor *k_norm, float eps,
                                const int32_t *pos, const float *inv_freq, int rot_dim,
                                bool round_bf16, const pio_tensor *v, pio_tensor *cache_k,
                                pio_tensor *cache_v, const int32_t *seq, pio_error *err) {
    pio_error scratch;
    bool fused = pio_cpu_check_f32("qk", "q", q, &scratch) &&
                 pio_cpu_check_f32("qk", "k", k, &scratch) && q->ndim == 3 && k->ndim == 3 &&
                 q->shape[0] == k->shape[0] && q->shape[2] == k->shape[2] &&
                 norm_fits(q_norm, q->shape[2]) && norm_fits(k_norm, k->shape[2]) &&
                 rot_dim > 0 && rot_dim % 2 == 0 && rot_dim <= q->shape[2] &&
                 rot_dim / 2 <= 1024 && pos && inv_freq && !pio_cpu_overlap(q, k);
    bool write = cache_k != NULL;
    if (fused && write) {
        const int64_t n = q->shape[0];
        fused = v && cache_v && seq && pio_cpu_check_f32("qk", "v", v, &scratch) &&
                pio_cpu_check_f32_bf16("qk", "cache_k", cache_k, &scratch) &&
                pio_cpu_check_f32_bf16("qk", "cache_v", cache_v, &scratch) &&
                cache_k->dtype == cache_v->dtype && v->ndim == 3 && v->shape[0] == n &&
                v->shape[1] == k->shape[1] && cache_k->ndim == 4 && cache_v->ndim == 4 &&
                cache_k->shape[2] == k->shape[1] && cache_k->shape[3] == k->shape[2] &&
                cache_v->shape[2] == v->shape[1] && cache_v->shape[3] == v->shape[2] &&
                cache_k->shape[0] == cache_v->shape[0] && cache_k->shape[1] == cache_v->shape[1];
        for (int64_t t = 0; fused && t < n; t++)
            fused = seq[t] >= 0 && seq[t] < cache_k->shape[0] && pos[t] >= 0 &&
                    pos[t] < cache_k->shape[1];
    }
    if (!fused) { /* one op after another: their checks name what is wrong */
        pio_status st;
        if ((q_norm && (st = pio_cpu_rmsnorm(pool, q, q_norm, eps, q, round_bf16, err))) ||
            (k_norm && (st = pio_cpu_rmsnorm(pool, k, k_norm, eps, k, round_bf16, err))) ||
            (st = pio_cpu_rope(q, pos, inv_freq, rot_dim, round_bf16, err)) ||
            (st = pio_cpu_rope(k, pos, inv_freq, rot_dim, round_bf16, err)))
            return st;
        return write ? pio_cpu_kv_write(k, v, cache_k, cache_v, seq, pos, err) : PIO_OK;
    }
    qk_ctx c = {.q = pio_tensor_data(q), .k = pio_tensor_data(k),
                .qn = q_norm ? pio_tensor_data(q_norm) : NULL,
                .kn = k_norm ? pio_tensor_data(k_norm) : NULL,
                .qn_bf16 = q_norm && q_norm->dtype == PIO_BF16,
                .kn_bf16 = k_norm && k_norm->dtype == PIO_BF16, .round_bf16 = round_bf16,
                .eps = eps, .pos = pos, .seq = seq, .inv_freq = inv_freq, .half = rot_dim / 2,
                .heads = q->shape[1], .kv_heads = k->shape[1], .d = q->shape[2],
                .n = q->shape[0]};
    if (write) {
        c.v = pio_tensor_data(v);
        c.dv = v->shape[2];
        c.ctx = cache_k->shape[1];
        c.ck = pio_tensor_data(cache_k);
        c.cv = pio_tensor_data(cache_v);
        c.c_bf16 = cache_k->dtype == PIO_BF16;
    }
    if (c.n == 0) return PIO_OK;
    c.n_tasks = pio_cpu_n_tasks(pool, c.n, (16384 + (c.heads + c.kv_heads) * c.d - 1) /
                                               ((c.heads + c.kv_heads) * c.d));
    pio_threadpool_run(pool, c.n_tasks, qk_task, &c);
    return PIO_OK;
}
