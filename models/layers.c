/* Layer builders shared by the architectures (see layers.h). */
#include <math.h>
#include <string.h>

#include "cpu_ops.h"
#include "layers.h"

pio_status pio_build_linear(pio_model *m, const pio_tensor *x, const pio_tensor *w,
                            pio_tensor *y, pio_error *err) {
    pio_status st = pio_cpu_matmul(m->pool, x, w, y, err);
    if (st == PIO_OK && m->round_bf16) pio_cpu_round_bf16(y);
    return st;
}

pio_status pio_build_norm(pio_model *m, const pio_tensor *x, const pio_tensor *w, float eps,
                          pio_tensor *out, pio_error *err) {
    return pio_cpu_rmsnorm(m->pool, x, w, eps, out, m->round_bf16, err);
}

pio_status pio_build_residual(pio_model *m, pio_tensor *x, const pio_tensor *y, pio_error *err) {
    pio_status st = pio_cpu_binary(PIO_ADD, x, y, x, err);
    if (st == PIO_OK && m->round_bf16) pio_cpu_round_bf16(x);
    return st;
}

pio_status pio_build_attn(pio_model *m, int layer, const pio_attn_weights *w, const pio_batch *b,
                          const pio_tensor *h, pio_tensor *out, pio_error *err) {
    const pio_hparams *hp = &m->hp;
    int64_t n = b->n_tokens, D = hp->head_dim;
    pio_tensor q, k, v, att;
    pio_status st;
    if ((st = pio_scratch(m, PIO_SLOT_Q, n, hp->n_head * D, &q, err)) ||
        (st = pio_scratch(m, PIO_SLOT_K, n, hp->n_head_kv * D, &k, err)) ||
        (st = pio_scratch(m, PIO_SLOT_V, n, hp->n_head_kv * D, &v, err)) ||
        (st = pio_scratch(m, PIO_SLOT_ATTN, n, hp->n_head * D, &att, err)))
        return st;
    if ((st = pio_build_linear(m, h, w->wq, &q, err)) ||
        (st = pio_build_linear(m, h, w->wk, &k, err)) ||
        (st = pio_build_linear(m, h, w->wv, &v, err)))
        return st;

    /* Per-head views: q [n, n_head, D], k/v [n, n_head_kv, D]. */
    int64_t qs[3] = {n, hp->n_head, D}, ks[3] = {n, hp->n_head_kv, D};
    pio_tensor q3 = pio_reshape(&q, 3, qs), k3 = pio_reshape(&k, 3, ks);
    pio_tensor v3 = pio_reshape(&v, 3, ks), a3 = pio_reshape(&att, 3, qs);
    float eps = (float)hp->norm_eps;
    if (w->q_norm && (st = pio_build_norm(m, &q3, w->q_norm, eps, &q3, err))) return st;
    if (w->k_norm && (st = pio_build_norm(m, &k3, w->k_norm, eps, &k3, err))) return st;
    if ((st = pio_cpu_rope(&q3, b->pos, m->inv_freq, (int)D, m->round_bf16, err)) ||
        (st = pio_cpu_rope(&k3, b->pos, m->inv_freq, (int)D, m->round_bf16, err)))
        return st;
    if ((st = pio_cpu_kv_write(&k3, &v3, m->cache_k[layer], m->cache_v[layer], b->seq, b->pos,
                               err)))
        return st;
    float scale = (float)(1.0 / sqrt((double)D));
    if ((st = pio_cpu_attention(m->pool, &q3, m->cache_k[layer], m->cache_v[layer], b->seq,
                                b->pos, scale, &a3, m->round_bf16, err)))
        return st;
    if (m->round_bf16) pio_cpu_round_bf16(&att);
    return pio_build_linear(m, &att, w->wo, out, err);
}

pio_status pio_build_ffn(pio_model *m, const pio_ffn_weights *w, const pio_tensor *h,
                         pio_tensor *out, pio_error *err) {
    int64_t n = h->shape[0], F = w->gate->shape[0];
    pio_tensor gate, up;
    pio_status st;
    if ((st = pio_scratch(m, PIO_SLOT_GATE, n, F, &gate, err)) ||
        (st = pio_scratch(m, PIO_SLOT_UP, n, F, &up, err)))
        return st;
    if ((st = pio_build_linear(m, h, w->gate, &gate, err)) ||
        (st = pio_build_linear(m, h, w->up, &up, err)) ||
        (st = pio_cpu_silu_mul(&gate, &up, &gate, m->round_bf16, err)))
        return st;
    return pio_build_linear(m, &gate, w->down, out, err);
}

pio_status pio_build_logits(pio_model *m, const pio_batch *b, const pio_tensor *x,
                            const pio_tensor *norm, const pio_tensor *lm_head, pio_tensor *logits,
                            pio_error *err) {
    int64_t n_out = logits->shape[0], E = x->shape[1];
    if (n_out == 0) return PIO_OK;
    /* Gather the rows that want logits, so the lm_head runs on those alone. */
    pio_tensor sel;
    pio_status st = pio_scratch(m, PIO_SLOT_SEL, n_out, E, &sel, err);
    if (st) return st;
    float *dst = pio_tensor_data(&sel);
    const float *src = pio_tensor_data(x);
    for (int32_t i = 0, j = 0; i < b->n_tokens; i++)
        if (!b->logits || b->logits[i])
            memcpy(dst + (size_t)(j++) * E, src + (size_t)i * E, (size_t)E * sizeof(float));
    if ((st = pio_build_norm(m, &sel, norm, (float)m->hp.norm_eps, &sel, err))) return st;
    return pio_build_linear(m, &sel, lm_head, logits, err);
}
