/* KV writes and attention through block tables (attention_paged.h).
 *
 * The attention arithmetic is attention.c's (flash-style: chunks of keys
 * with an online softmax, GQA by batches of query heads sharing a kv head);
 * it reads rows through the view, a block-contiguous run at a time. What is
 * here: checking a view against the batch, writing (with int8
 * quantization) and dequantizing int8 rows.
 *
 * int8: each (position, kv head) row of d values gets scale = max|x| / 127
 * and q = round(x / scale) in [-127, 127], so x ≈ scale · q with an error
 * of at most scale / 2 per value. A zero row has scale 0.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention_paged.h"
#include "cpu_internal.h"

/* Pool block and row of (slot, pos); false with a message when absent. */
static bool locate(const pio_kv_view *kv, const char *op, int64_t t, int32_t slot, int32_t pos,
                   int64_t *blk, pio_error *err) {
    const pio_kv_pool *p = &kv->pool;
    if (!kv->tables) {
        *blk = slot;
        if (pos < p->block) return true;
        pio_error_set(err, PIO_ERR_RANGE,
                      "%s: token %lld: position %d is out of range for a context of %lld", op,
                      (long long)t, pos, (long long)p->block);
        return false;
    }
    const pio_kv_table *tb = &kv->tables[slot];
    int64_t b = pos / p->block;
    *blk = b < tb->n ? tb->block[b] : -1;
    if (*blk >= 0 && *blk < p->n_blocks) return true;
    pio_error_set(err, PIO_ERR_RANGE,
                  "%s: token %lld: sequence %d has no KV block for position %d (reserve it first)",
                  op, (long long)t, slot, pos);
    return false;
}

static pio_status check_tokens(const pio_kv_view *kv, const char *op, int64_t n,
                               const int32_t *seq, const int32_t *pos, pio_error *err) {
    if (n > 0 && (!seq || !pos))
        return pio_error_set(err, PIO_ERR_INVALID, "%s: seq and pos are required", op);
    for (int64_t t = 0; t < n; t++) {
        if (seq[t] < 0 || seq[t] >= kv->slots)
            return pio_error_set(err, PIO_ERR_RANGE,
                                 "%s: token %lld: sequence slot %d is out of range for %lld slots",
                                 op, (long long)t, (int)seq[t], (long long)kv->slots);
        if (pos[t] < 0)
            return pio_error_set(err, PIO_ERR_RANGE, "%s: token %lld: position %d is negative", op,
                                 (long long)t, (int)pos[t]);
    }
    return PIO_OK;
}

/* ---- writing ------------------------------------------------------------- */

static void quantize_row(const float *x, int64_t d, int8_t *q, float *scale) {
    float amax = 0.0f;
    for (int64_t i = 0; i < d; i++) amax = fmaxf(amax, fabsf(x[i]));
    float s = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int64_t i = 0; i < d; i++) {
        float r = nearbyintf(x[i] * inv);
        q[i] = (int8_t)(r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r);
    }
    *scale = s;
}

/* src [n, kv_heads, d] into dst (K or V of the pool). */
static void write_rows(const pio_kv_pool *p, const float *src, int64_t d, void *dst,
                       float *scales, const int64_t *blk, const int32_t *pos, int64_t n) {
    const size_t es = pio_kv_elem_size(p->elem);
    for (int64_t t = 0; t < n; t++) {
        int64_t row = (blk[t] * p->block + pos[t] % p->block) * p->kv_heads; /* first head */
        const float *s = src + t * p->kv_heads * d;
        char *o = (char *)dst + (size_t)(row * d) * es;
        if (p->elem == PIO_KV_ELEM_I8) {
            for (int64_t h = 0; h < p->kv_heads; h++)
                quantize_row(s + h * d, d, (int8_t *)o + h * d, scales + row + h);
        } else {
            pio_convert(o, p->elem == PIO_KV_ELEM_BF16 ? PIO_BF16 : PIO_F32, s, PIO_F32,
                        (size_t)(p->kv_heads * d));
        }
    }
}

pio_status pio_cpu_kv_write_paged(const pio_tensor *k, const pio_tensor *v, const pio_kv_view *kv,
                                  const int32_t *seq, const int32_t *pos, pio_error *err) {
    const char *op = "kv_write_paged";
    const pio_kv_pool *p = &kv->pool;
    if (!pio_cpu_check_f32(op, "k", k, err) || !pio_cpu_check_f32(op, "v", v, err))
        return PIO_ERR_INVALID;
    if (k->ndim != 3 || v->ndim != 3 || k->shape[0] != v->shape[0] ||
        k->shape[1] != p->kv_heads || v->shape[1] != p->kv_heads || k->shape[2] != p->dk ||
        v->shape[2] != p->dv)
        return pio_cpu_shape_error(err, op, "k", k, "v", v,
                                   "do not fit the pool's [n, kv_heads, dk] and [n, kv_heads, dv]");
    const int64_t n = k->shape[0];
    pio_status st = check_tokens(kv, op, n, seq, pos, err);
    if (st) return st;
    int64_t stack[256], *blk = n <= 256 ? stack : malloc((size_t)n * sizeof *blk);
    if (!blk) return pio_error_set(err, PIO_ERR_OOM, "%s: out of memory", op);
    for (int64_t t = 0; t < n && st == PIO_OK; t++)
        if (!locate(kv, op, t, seq[t], pos[t], &blk[t], err)) st = err->status;
    if (st == PIO_OK) {
        write_rows(p, pio_tensor_data(k), p->dk, p->k, p->k_scale, blk, pos, n);
        write_rows(p, pio_tensor_data(v), p->dv, p->v, p->v_scale, blk, pos, n);
    }
    if (blk != stack) free(blk);
    return st;
}

/* ---- reading ------------------------------------------------------------- */

void pio_kv_dequant_rows(const int8_t *q8, size_t step, const float *scale, size_t sstep,
                         int64_t len, int64_t d, float *out) {
    for (int64_t j = 0; j < len; j++) {
        const int8_t *q = q8 + (size_t)j * step;
        const float s = scale[(size_t)j * sstep];
        float *o = out + j * d;
        for (int64_t i = 0; i < d; i++) o[i] = s * (float)q[i];
    }
}

pio_status pio_cpu_attention_paged(pio_threadpool *pool, const pio_tensor *q,
                                   const pio_kv_view *kv, const int32_t *seq, const int32_t *pos,
                                   float scale, pio_tensor *out, bool round_bf16, pio_error *err) {
    const char *op = "attention_paged";
    const pio_kv_pool *p = &kv->pool;
    if (!pio_cpu_check_f32(op, "q", q, err) || !pio_cpu_check_f32(op, "out", out, err))
        return PIO_ERR_INVALID;
    if (q->ndim != 3 || q->shape[2] != p->dk || p->kv_heads <= 0 || q->shape[1] % p->kv_heads)
        return pio_cpu_shape_error(err, op, "q", q, "out", out,
                                   "q must be [n, heads, dk] with heads a multiple of the "
                                   "pool's kv_heads and dk the pool's");
    if (out->ndim != 3 || out->shape[0] != q->shape[0] || out->shape[1] != q->shape[1] ||
        out->shape[2] != p->dv)
        return pio_cpu_shape_error(err, op, "q", q, "out", out,
                                   "do not fit out[n, heads, dv] for this q and pool");
    if (pio_cpu_overlap(q, out))
        return pio_cpu_shape_error(err, op, "q", q, "out", out, "overlap in memory");
    if (kv->window < 0 || kv->sink < 0)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: window %d and sink %d must be >= 0", op,
                             kv->window, kv->sink);
    const int64_t n = q->shape[0];
    pio_status st = check_tokens(kv, op, n, seq, pos, err);
    if (st) return st;
    /* Every position a token attends to must have its block: one check per
     * block of each visible run. */
    for (int64_t t = 0; t < n; t++) {
        int64_t s_keep, first, blk;
        pio_kv_visible(kv, pos[t], &s_keep, &first);
        int64_t runs[2][2] = {{0, s_keep}, {first, (int64_t)pos[t] + 1}};
        for (int r = 0; r < 2; r++)
            for (int64_t x = runs[r][0]; x < runs[r][1]; x = (x / p->block + 1) * p->block)
                if (!locate(kv, op, t, seq[t], (int32_t)x, &blk, err)) return err->status;
    }
    return pio_cpu_attention_run(pool, pio_tensor_data(q), n, q->shape[1], kv, seq, pos, scale,
                                 pio_tensor_data(out), round_bf16, err);
}
