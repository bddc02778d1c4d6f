/* models/layers_cuda.c: the layer builders of layers.h on the CUDA backend.
 * Each computes what its CPU twin in layers.c computes, rounding where it
 * rounds: a bf16 activation tensor is rounded as it is stored, which is where
 * the CPU builders call pio_cpu_round_bf16. Fused kernels replace chains of
 * CPU ops where the numbers allow it (q/k norm + RoPE + KV write). */
#ifdef PIO_CUDA_KERNELS
#include <math.h>

#include "cuda_ops.h"
#include "kv_internal.h"
#include "layers.h"
#include "layers_cuda.h"

#define CTX(m) pio_model_cuda_ctx(m)

/* A bf16 tensor rounds as it is stored; an f32 one (the logits) is rounded after. */
static pio_status round_f32_out(pio_model *m, pio_tensor *y, pio_error *err) {
    if (!m->round_bf16 || y->dtype != PIO_F32) return PIO_OK;
    return pio_cuda_round_bf16(CTX(m), y, err);
}

pio_status pio_cuda_build_linear(pio_model *m, const pio_tensor *x, const pio_tensor *w,
                                 pio_tensor *y, pio_error *err) {
    pio_status st = pio_cuda_matmul(CTX(m), x, w, y, err);
    return st ? st : round_f32_out(m, y, err);
}

pio_status pio_cuda_build_norm(pio_model *m, const pio_tensor *x, const pio_tensor *w, float eps,
                               pio_tensor *out, pio_error *err) {
    return pio_cuda_rmsnorm(CTX(m), x, w, eps, out, m->round_bf16, err);
}

pio_status pio_cuda_build_residual(pio_model *m, pio_tensor *x, const pio_tensor *y,
                                   pio_error *err) {
    pio_status st = pio_cuda_binary(CTX(m), PIO_ADD, x, y, x, err);
    return st ? st : round_f32_out(m, x, err);
}

pio_status pio_cuda_build_residual_norm(pio_model *m, pio_tensor *x, const pio_tensor *y,
                                        const pio_tensor *w, float eps, pio_tensor *out,
                                        pio_error *err) {
    pio_status st = pio_cuda_add_rmsnorm(CTX(m), x, y, w, eps, out, m->round_bf16, err);
    return st ? st : round_f32_out(m, x, err);
}

pio_status pio_cuda_build_embedding(pio_model *m, const pio_tensor *table, pio_tensor *out,
                                    pio_error *err) {
    return pio_cuda_embedding(CTX(m), table, pio_model_cuda_batch(m), out, err);
}

/* Columns [col, col + heads·D) of a [n, total] buffer as a [n, heads, D] view
 * (rows keep the buffer's stride: the CUDA ops take row-strided activations). */
static pio_tensor head_view(const pio_tensor *buf, int64_t col, int64_t heads, int64_t D) {
    pio_tensor v = *buf;
    v.ndim = 3;
    v.shape[0] = buf->shape[0], v.shape[1] = heads, v.shape[2] = D;
    v.stride[0] = buf->stride[0], v.stride[1] = D, v.stride[2] = 1;
    v.offset += (size_t)col * pio_dtype_info(buf->dtype)->size;
    return v;
}

/* Columns [col, col + width) of a [n, total] buffer as a [n, width] view. */
static pio_tensor col_view(const pio_tensor *buf, int64_t col, int64_t width) {
    pio_tensor v = *buf;
    v.shape[1] = width;
    v.offset += (size_t)col * pio_dtype_info(buf->dtype)->size;
    return v;
}

pio_status pio_cuda_build_attn(pio_model *m, int layer, const pio_attn_weights *w,
                               const pio_batch *b, const pio_tensor *h, pio_tensor *out,
                               pio_error *err) {
    const pio_hparams *hp = &m->hp;
    const int64_t n = b->n_tokens, D = hp->head_dim, Hq = hp->n_head, Hkv = hp->n_head_kv;
    pio_tensor qkv, att;
    pio_status st;
    /* q | k | v side by side in one buffer [n, (Hq + 2·Hkv)·D]: one matmul when
     * the weights are fused, three writing their columns otherwise. */
    if ((st = pio_model_cuda_scratch(m, PIO_SLOT_QKV, n, (Hq + 2 * Hkv) * D, &qkv, err)) ||
        (st = pio_model_cuda_scratch(m, PIO_SLOT_ATTN, n, Hq * D, &att, err)))
        return st;
    if (w->wqkv) {
        if ((st = pio_cuda_build_linear(m, h, w->wqkv, &qkv, err))) return st;
    } else {
        pio_tensor q2 = col_view(&qkv, 0, Hq * D), k2 = col_view(&qkv, Hq * D, Hkv * D);
        pio_tensor v2 = col_view(&qkv, (Hq + Hkv) * D, Hkv * D);
        if ((st = pio_cuda_build_linear(m, h, w->wq, &q2, err)) ||
            (st = pio_cuda_build_linear(m, h, w->wk, &k2, err)) ||
            (st = pio_cuda_build_linear(m, h, w->wv, &v2, err)))
            return st;
    }
    pio_tensor q3 = head_view(&qkv, 0, Hq, D), k3 = head_view(&qkv, Hq * D, Hkv, D);
    pio_tensor v3 = head_view(&qkv, (Hq + Hkv) * D, Hkv, D);
    int64_t as[3] = {n, Hq, D};
    pio_tensor a3 = pio_reshape(&att, 3, as);
    /* The layer's cache: [max_seqs, ctx, Hkv, D] (contiguous, table NULL) or the
     * paged pools [n_blocks, block, Hkv, D] read through the uploaded block tables. */
    pio_tensor ck, cv;
    pio_kv_layer_tensors(m, layer, &ck, &cv);
    const pio_cuda_block_table *table = pio_model_cuda_block_table(m);
    pio_cuda_qkv_args qa = {
        .q = &q3, .k = &k3, .v = &v3, .q_norm = w->q_norm, .k_norm = w->k_norm,
        .eps = (float)hp->norm_eps, .inv_freq = pio_model_cuda_inv_freq(m), .rot_dim = (int)D,
        .cache_k = &ck, .cache_v = &cv, .batch = pio_model_cuda_batch(m),
        .round_bf16 = m->round_bf16, .table = table};
    float scale = (float)(1.0 / sqrt((double)D));
    if ((st = pio_cuda_qk_norm_rope_kv(CTX(m), &qa, err)) ||
        (st = pio_cuda_attention_paged(CTX(m), &q3, &ck, &cv, pio_model_cuda_batch(m), table,
                                       scale, &a3, m->round_bf16, err)))
        return st;
    return pio_cuda_build_linear(m, &att, w->wo, out, err);
}

pio_status pio_cuda_build_ffn(pio_model *m, const pio_ffn_weights *w, const pio_tensor *h,
                              pio_tensor *out, pio_error *err) {
    const int64_t n = h->shape[0], F = w->down->shape[1];
    pio_tensor gu;
    pio_status st = pio_model_cuda_scratch(m, PIO_SLOT_GATE_UP, n, 2 * F, &gu, err);
    if (st) return st;
    pio_tensor gate = col_view(&gu, 0, F), up = col_view(&gu, F, F);
    if (w->gate_up)
        st = pio_cuda_build_linear(m, h, w->gate_up, &gu, err);
    else if (!(st = pio_cuda_build_linear(m, h, w->gate, &gate, err)))
        st = pio_cuda_build_linear(m, h, w->up, &up, err);
    if (st || (st = pio_cuda_silu_mul(CTX(m), &gate, &up, &gate, m->round_bf16, err))) return st;
    return pio_cuda_build_linear(m, &gate, w->down, out, err);
}

pio_status pio_cuda_build_logits(pio_model *m, const pio_batch *b, const pio_tensor *x,
                                 const pio_tensor *norm, const pio_tensor *lm_head,
                                 pio_tensor *logits, pio_error *err) {
    const int64_t n_out = logits->shape[0], E = x->shape[1];
    if (n_out == 0) return PIO_OK;
    pio_tensor sel;
    pio_status st = pio_model_cuda_scratch(m, PIO_SLOT_SEL, n_out, E, &sel, err);
    if (st) return st;
    if (n_out == b->n_tokens) {
        st = pio_cuda_build_norm(m, x, norm, (float)m->hp.norm_eps, &sel, err);
    } else {
        /* Gather the rows that want logits (a prompt: usually the last one). */
        for (int32_t i = 0, j = 0; st == PIO_OK && i < b->n_tokens; i++) {
            if (b->logits && !b->logits[i]) continue;
            pio_tensor src = *x, dst = sel;
            src.shape[0] = dst.shape[0] = 1;
            src.offset += (size_t)(i * x->stride[0]) * pio_dtype_info(x->dtype)->size;
            dst.offset += (size_t)(j++ * sel.stride[0]) * pio_dtype_info(sel.dtype)->size;
            st = pio_cuda_copy(CTX(m), &dst, &src, err);
        }
        if (st == PIO_OK) st = pio_cuda_build_norm(m, &sel, norm, (float)m->hp.norm_eps, &sel, err);
    }
    return st ? st : pio_cuda_build_linear(m, &sel, lm_head, logits, err);
}

/* Up to this many (token, expert) pairs, the experts' products run in one
 * grouped kernel per projection that reads each chosen expert once, with no
 * host round trip (decode of up to 32 sequences at top-8; graph-capturable);
 * above it, the rows are grouped per expert on the host's count and each
 * expert is one cuBLAS product on the tensor cores (prompts). */
enum { MOE_DEVICE_PAIRS = 256 };

pio_status pio_cuda_build_moe(pio_model *m, const pio_moe_weights *w, const pio_moe_params *p,
                              const pio_tensor *h, pio_tensor *out, pio_error *err) {
    const int64_t n = h->shape[0], E = h->shape[1];
    const int32_t n_exp = w->n_expert, k = p->route.top_k;
    const int64_t pairs = n * k, F = w->gate[0]->shape[0];
    pio_tensor logits, gate, up, yg, idx;
    pio_status st;
    if ((st = pio_model_cuda_scratch(m, PIO_SLOT_ROUTER, n, n_exp, &logits, err)) ||
        (st = pio_model_cuda_scratch(m, PIO_SLOT_GATE, pairs, F, &gate, err)) ||
        (st = pio_model_cuda_scratch(m, PIO_SLOT_UP, pairs, F, &up, err)) ||
        (st = pio_model_cuda_scratch(m, PIO_SLOT_MOE_Y, pairs, E, &yg, err)) ||
        (st = pio_model_cuda_scratch(m, PIO_SLOT_MOE_IDX, 1, 4 * pairs + 2 * (n_exp + 1), &idx,
                                     err)))
        return st;
    int32_t *ids = pio_tensor_data(&idx); /* device arrays, 4 bytes each */
    float *weights = (float *)(ids + pairs);
    int32_t *pair_of_row = ids + 2 * pairs, *row_of_pair = ids + 3 * pairs;
    int32_t *offsets = ids + 4 * pairs, *active = offsets + n_exp + 1;

    /* Route (a bf16 linear unless the architecture keeps the router in f32). */
    if ((st = pio_cuda_matmul(CTX(m), h, w->router, &logits, err))) return st;
    if (m->round_bf16 && !p->router_f32 && (st = pio_cuda_round_bf16(CTX(m), &logits, err)))
        return st;
    pio_moe_route_params rp = p->route;
    rp.round_bf16 = m->round_bf16 && p->weights_bf16;
    if ((st = pio_cuda_moe_route(CTX(m), &logits, &rp, ids, weights, err)) ||
        (st = pio_cuda_moe_sort(CTX(m), ids, pairs, n_exp, offsets, pair_of_row, row_of_pair,
                                active, err)))
        return st;

    const pio_dtype wdt = w->gate[0]->dtype;
    if (pairs <= MOE_DEVICE_PAIRS) {
        const void *const *gp, *const *upp, *const *dp;
        if (!(gp = pio_model_cuda_pointers(m, w->gate, n_exp, err)) ||
            !(upp = pio_model_cuda_pointers(m, w->up, n_exp, err)) ||
            !(dp = pio_model_cuda_pointers(m, w->down, n_exp, err)))
            return err->status;
        if ((st = pio_cuda_moe_expert_matmul(CTX(m), h, gp, wdt, F, E, n_exp, offsets,
                                             active, pair_of_row, k, true, &gate, err)) ||
            (st = pio_cuda_moe_expert_matmul(CTX(m), h, upp, wdt, F, E, n_exp, offsets,
                                             active, pair_of_row, k, true, &up, err)) ||
            (st = pio_cuda_silu_mul(CTX(m), &gate, &up, &gate, m->round_bf16, err)) ||
            (st = pio_cuda_moe_expert_matmul(CTX(m), &gate, dp, wdt, E, F, n_exp, offsets,
                                             active, pair_of_row, k, false, &yg, err)))
            return st;
    } else {
        /* The host needs each expert's row count to size its product. */
        pio_tensor xg, off_dev = pio_reshape(&idx, 1, (int64_t[]){n_exp + 1});
        off_dev.offset += (size_t)(4 * pairs) * sizeof(float);
        int64_t len = n_exp + 1;
        pio_tensor *off = pio_tensor_new(PIO_F32, 1, &len, err);
        if (!off) return err->status;
        if ((st = pio_model_cuda_scratch(m, PIO_SLOT_MOE_X, pairs, E, &xg, err)) ||
            (st = pio_cuda_copy_to_host(CTX(m), off, &off_dev, err)) ||
            (st = pio_cuda_moe_gather(CTX(m), h, pair_of_row, k, &xg, err))) {
            pio_tensor_free(off);
            return st;
        }
        const int32_t *o = pio_tensor_data(off);
        for (int32_t e = 0; st == PIO_OK && e < n_exp; e++) {
            int64_t r0 = o[e], rows = o[e + 1] - o[e];
            if (rows <= 0) continue;
            pio_tensor xe = pio_rows_of(&xg, r0, rows), ge = pio_rows_of(&gate, r0, rows);
            pio_tensor ue = pio_rows_of(&up, r0, rows);
            if (!(st = pio_cuda_build_linear(m, &xe, w->gate[e], &ge, err)))
                st = pio_cuda_build_linear(m, &xe, w->up[e], &ue, err);
        }
        if (st == PIO_OK) st = pio_cuda_silu_mul(CTX(m), &gate, &up, &gate, m->round_bf16, err);
        for (int32_t e = 0; st == PIO_OK && e < n_exp; e++) {
            int64_t r0 = o[e], rows = o[e + 1] - o[e];
            if (rows <= 0) continue;
            pio_tensor ge = pio_rows_of(&gate, r0, rows), ye = pio_rows_of(&yg, r0, rows);
            st = pio_cuda_build_linear(m, &ge, w->down[e], &ye, err);
        }
        pio_tensor_free(off);
        if (st) return st;
    }
    return pio_cuda_moe_combine(CTX(m), &yg, row_of_pair, ids, weights, k, p->accum,
                                m->round_bf16, out, err);
}

#else /* no CUDA backend: layers.c never hands a builder over (m->cuda is NULL) */
typedef int pio_layers_cuda_absent;
#endif
