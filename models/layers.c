/* Layer builders shared by the architectures (see layers.h). */
#include <math.h>
#include <string.h>

#include "cpu_ops.h"
#include "kv_internal.h"
#include "layers.h"
#include "layers_cuda.h"

/* A model on the GPU hands each builder over to its CUDA twin (layers_cuda.c). */
#ifdef PIO_CUDA_KERNELS
#define ON_CUDA(m, call)                \
    do {                                \
        if ((m)->cuda) return (call);   \
    } while (0)
#else
#define ON_CUDA(m, call) ((void)0)
#endif

/* y[i] = x · w[i]ᵀ for weights sharing x, in one run of the pool; in bf16
 * mode x holds bf16 values (so bf16 dot products apply) and y is rounded. */
static pio_status build_linears(pio_model *m, const pio_tensor *x, int n,
                                const pio_tensor *const *w, pio_tensor *const *y, pio_error *err) {
    return pio_cpu_linear(m->pool, x, n, w, y, m->round_bf16, err);
}

pio_status pio_build_embedding(pio_model *m, const pio_tensor *table, const pio_batch *b,
                               pio_tensor *out, pio_error *err) {
    ON_CUDA(m, pio_cuda_build_embedding(m, table, out, err));
    return pio_cpu_embedding(table, b->token, b->n_tokens, out, err);
}

pio_status pio_build_linear(pio_model *m, const pio_tensor *x, const pio_tensor *w,
                            pio_tensor *y, pio_error *err) {
    ON_CUDA(m, pio_cuda_build_linear(m, x, w, y, err));
    return build_linears(m, x, 1, &w, &y, err);
}

pio_status pio_build_norm(pio_model *m, const pio_tensor *x, const pio_tensor *w, float eps,
                          pio_tensor *out, pio_error *err) {
    ON_CUDA(m, pio_cuda_build_norm(m, x, w, eps, out, err));
    return pio_cpu_rmsnorm(m->pool, x, w, eps, out, m->round_bf16, err);
}

pio_status pio_build_residual(pio_model *m, pio_tensor *x, const pio_tensor *y, pio_error *err) {
    ON_CUDA(m, pio_cuda_build_residual(m, x, y, err));
    pio_status st = pio_cpu_binary(PIO_ADD, x, y, x, err);
    if (st == PIO_OK && m->round_bf16) pio_cpu_round_bf16(x);
    return st;
}

pio_status pio_build_residual_norm(pio_model *m, pio_tensor *x, const pio_tensor *y,
                                   const pio_tensor *w, float eps, pio_tensor *out,
                                   pio_error *err) {
    ON_CUDA(m, pio_cuda_build_residual_norm(m, x, y, w, eps, out, err));
    return pio_cpu_residual_rmsnorm(m->pool, x, y, w, eps, out, m->round_bf16, err);
}

/* One matmul by a fused matrix, its output columns then handed to the parts
 * in order: outs[i] [n, width_i] gets columns [Σ earlier widths, + width_i). */
static pio_status build_fused_linear(pio_model *m, const pio_tensor *h, const pio_tensor *w,
                                     enum pio_scratch_slot slot, pio_tensor *const *outs,
                                     int n_out, pio_error *err) {
    int64_t n = h->shape[0], total = w->shape[0];
    pio_tensor y;
    pio_status st;
    if ((st = pio_scratch(m, slot, n, total, &y, err)) ||
        (st = pio_build_linear(m, h, w, &y, err)))
        return st;
    const float *src = pio_tensor_data(&y);
    for (int64_t t = 0; t < n; t++) {
        int64_t col = 0;
        for (int i = 0; i < n_out; i++) {
            int64_t width = outs[i]->shape[1];
            memcpy((float *)pio_tensor_data(outs[i]) + t * width, src + t * total + col,
                   (size_t)width * sizeof(float));
            col += width;
        }
    }
    return PIO_OK;
}

pio_status pio_build_attn(pio_model *m, int layer, const pio_attn_weights *w, const pio_batch *b,
                          const pio_tensor *h, pio_tensor *out, pio_error *err) {
    ON_CUDA(m, pio_cuda_build_attn(m, layer, w, b, h, out, err));
    const pio_hparams *hp = &m->hp;
    int64_t n = b->n_tokens, D = hp->head_dim;
    pio_tensor q, k, v, att;
    pio_status st;
    if ((st = pio_scratch(m, PIO_SLOT_Q, n, hp->n_head * D, &q, err)) ||
        (st = pio_scratch(m, PIO_SLOT_K, n, hp->n_head_kv * D, &k, err)) ||
        (st = pio_scratch(m, PIO_SLOT_V, n, hp->n_head_kv * D, &v, err)) ||
        (st = pio_scratch(m, PIO_SLOT_ATTN, n, hp->n_head * D, &att, err)))
        return st;
    if (w->wqkv) {
        pio_tensor *parts[3] = {&q, &k, &v};
        if ((st = build_fused_linear(m, h, w->wqkv, PIO_SLOT_QKV, parts, 3, err))) return st;
    } else {
        const pio_tensor *ws[3] = {w->wq, w->wk, w->wv};
        pio_tensor *ys[3] = {&q, &k, &v};
        if ((st = build_linears(m, h, 3, ws, ys, err))) return st;
    }

    /* Per-head views: q [n, n_head, D], k/v [n, n_head_kv, D]. */
    int64_t qs[3] = {n, hp->n_head, D}, ks[3] = {n, hp->n_head_kv, D};
    pio_tensor q3 = pio_reshape(&q, 3, qs), k3 = pio_reshape(&k, 3, ks);
    pio_tensor v3 = pio_reshape(&v, 3, ks), a3 = pio_reshape(&att, 3, qs);
    /* q/k norms, RoPE and (contiguous cache) the KV write: one pass over the tokens */
    const bool via_view = pio_kv_via_view(m, layer);
    if ((st = pio_cpu_qk_norm_rope(m->pool, &q3, &k3, w->q_norm, w->k_norm, (float)hp->norm_eps,
                                   b->pos, m->inv_freq, (int)D, m->round_bf16, &v3,
                                   via_view ? NULL : m->cache_k[layer],
                                   via_view ? NULL : m->cache_v[layer], b->seq, err)))
        return st;
    float scale = (float)(1.0 / sqrt((double)D));
    if (via_view) { /* paged, int8 or windowed: through the view (models/kv.c) */
        if ((st = pio_kv_attend(m, layer, b, &q3, &k3, &v3, scale, &a3, err))) return st;
    } else if ((st = pio_cpu_attention(m->pool, &q3, m->cache_k[layer], m->cache_v[layer], b->seq,
                                       b->pos, scale, &a3, m->round_bf16, err))) {
        return st;
    }
    if (m->round_bf16) pio_cpu_round_bf16(&att);
    return pio_build_linear(m, &att, w->wo, out, err);
}

pio_status pio_build_ffn(pio_model *m, const pio_ffn_weights *w, const pio_tensor *h,
                         pio_tensor *out, pio_error *err) {
    ON_CUDA(m, pio_cuda_build_ffn(m, w, h, out, err));
    int64_t n = h->shape[0], F = w->down->shape[1];
    pio_tensor gate, up;
    pio_status st;
    if ((st = pio_scratch(m, PIO_SLOT_GATE, n, F, &gate, err)) ||
        (st = pio_scratch(m, PIO_SLOT_UP, n, F, &up, err)))
        return st;
    if (w->gate_up) {
        pio_tensor *parts[2] = {&gate, &up};
        st = build_fused_linear(m, h, w->gate_up, PIO_SLOT_GATE_UP, parts, 2, err);
    } else {
        const pio_tensor *ws[2] = {w->gate, w->up};
        pio_tensor *ys[2] = {&gate, &up};
        st = build_linears(m, h, 2, ws, ys, err);
    }
    if (st || (st = pio_cpu_silu_mul_pool(m->pool, &gate, &up, &gate, m->round_bf16, err)))
        return st;
    return pio_build_linear(m, &gate, w->down, out, err);
}

pio_status pio_build_logits(pio_model *m, const pio_batch *b, const pio_tensor *x,
                            const pio_tensor *norm, const pio_tensor *lm_head, pio_tensor *logits,
                            pio_error *err) {
    ON_CUDA(m, pio_cuda_build_logits(m, b, x, norm, lm_head, logits, err));
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

pio_status pio_build_moe(pio_model *m, const pio_moe_weights *w, const pio_moe_params *p,
                         const pio_tensor *h, pio_tensor *out, pio_error *err) {
    ON_CUDA(m, pio_cuda_build_moe(m, w, p, h, out, err));
    const int64_t n = h->shape[0], E = h->shape[1];
    const int32_t n_exp = w->n_expert, k = p->route.top_k;
    if (n_exp < 1 || !w->gate || !w->up || !w->down)
        return pio_error_set(err, PIO_ERR_INVALID, "moe: no experts");
    const int64_t pairs = n * k, F = w->gate[0]->shape[0];
    pio_tensor logits, xg, yg, gate, up, idx;
    pio_status st;
    if ((st = pio_scratch(m, PIO_SLOT_ROUTER, n, n_exp, &logits, err)) ||
        (st = pio_scratch(m, PIO_SLOT_MOE_X, pairs, E, &xg, err)) ||
        (st = pio_scratch(m, PIO_SLOT_MOE_Y, pairs, E, &yg, err)) ||
        (st = pio_scratch(m, PIO_SLOT_GATE, pairs, F, &gate, err)) ||
        (st = pio_scratch(m, PIO_SLOT_UP, pairs, F, &up, err)) ||
        /* int32 and f32 are both 4 bytes: one slot holds the routing arrays */
        (st = pio_scratch(m, PIO_SLOT_MOE_IDX, 1, 4 * pairs + n_exp + 1, &idx, err)))
        return st;
    int32_t *ids = pio_tensor_data(&idx);
    float *weights = (float *)(ids + pairs);
    int32_t *pair_of_row = ids + 2 * pairs, *row_of_pair = ids + 3 * pairs;
    int32_t *offsets = ids + 4 * pairs;

    /* Route: router logits (a bf16 linear unless the architecture keeps them f32). */
    if ((st = pio_cpu_matmul(m->pool, h, w->router, &logits, err))) return st;
    if (m->round_bf16 && !p->router_f32) pio_cpu_round_bf16(&logits);
    pio_moe_route_params rp = p->route;
    rp.round_bf16 = m->round_bf16 && p->weights_bf16;
    if ((st = pio_cpu_moe_route(&logits, &rp, ids, weights, err)) ||
        (st = pio_cpu_moe_sort(ids, pairs, n_exp, offsets, pair_of_row, row_of_pair, err)) ||
        (st = pio_cpu_moe_gather(h, pair_of_row, k, &xg, err)))
        return st;

    /* The selected experts on their contiguous rows; the others are never touched.
     * An expert with many rows (a prompt) is a compute-bound matmul of its own:
     * gate and up in one run of the pool, then down, on pio_cpu_matmul_ex's
     * fastest kernels. Experts with few rows (decode) are bandwidth-bound and
     * many: a chunk of them shares each run of the pool (gate and up of all,
     * then down of all), so small matmuls do not each pay for waking threads. */
    enum { CHUNK = 64, OWN_RUN_ROWS = 16 };
    pio_tensor xv[CHUNK], gv[CHUNK], uv[CHUNK], yv[CHUNK];
    const pio_tensor *xs[2 * CHUNK], *ws[2 * CHUNK];
    pio_tensor *ys[2 * CHUNK];
    int32_t ex[CHUNK];
    for (int32_t e = 0; e < n_exp;) {
        int c = 0;
        for (; e < n_exp && c < CHUNK; e++) {
            int64_t r0 = offsets[e], rows = offsets[e + 1] - offsets[e];
            if (rows == 0) continue;
            pio_tensor xe = pio_rows_of(&xg, r0, rows), ge = pio_rows_of(&gate, r0, rows);
            pio_tensor ue = pio_rows_of(&up, r0, rows), ye = pio_rows_of(&yg, r0, rows);
            if (rows >= OWN_RUN_ROWS) {
                const pio_tensor *gu_w[2] = {w->gate[e], w->up[e]};
                pio_tensor *gu_y[2] = {&ge, &ue};
                if ((st = build_linears(m, &xe, 2, gu_w, gu_y, err)) ||
                    (st = pio_cpu_silu_mul_pool(m->pool, &ge, &ue, &ge, m->round_bf16, err)) ||
                    (st = pio_build_linear(m, &ge, w->down[e], &ye, err)))
                    return pio_error_prefix(err, "expert %d", e);
                continue;
            }
            xv[c] = xe, gv[c] = ge, uv[c] = ue, yv[c] = ye;
            xs[2 * c] = xs[2 * c + 1] = &xv[c];
            ws[2 * c] = w->gate[e], ws[2 * c + 1] = w->up[e];
            ys[2 * c] = &gv[c], ys[2 * c + 1] = &uv[c];
            ex[c++] = e;
        }
        if (c == 0) continue;
        if ((st = pio_cpu_matmul_grouped(m->pool, 2 * c, xs, ws, ys, err))) return st;
        for (int i = 0; i < c; i++) {
            if (m->round_bf16) pio_cpu_round_bf16(&gv[i]), pio_cpu_round_bf16(&uv[i]);
            if ((st = pio_cpu_silu_mul(&gv[i], &uv[i], &gv[i], m->round_bf16, err))) return st;
            xs[i] = &gv[i], ws[i] = w->down[ex[i]], ys[i] = &yv[i];
        }
        if ((st = pio_cpu_matmul_grouped(m->pool, c, xs, ws, ys, err))) return st;
        for (int i = 0; m->round_bf16 && i < c; i++) pio_cpu_round_bf16(&yv[i]);
    }
    return pio_cpu_moe_combine(m->pool, &yg, row_of_pair, ids, weights, k, p->accum,
                               m->round_bf16, out, err);
}
