/* models/layers.h: the layer builders architectures are written with, so an
 * architecture file reads like its model card. Each builder runs its ops on
 * the model's backend and rounds where transformers rounds in bf16 mode. */
#ifndef PIO_LAYERS_H
#define PIO_LAYERS_H

#include "cpu_ops.h"
#include "model_internal.h"

/* Attention weights of one layer (borrowed). q_norm / k_norm may be NULL.
 * When wqkv is set (model surgery fused them), it is used instead of wq, wk, wv. */
typedef struct pio_attn_weights {
    const pio_tensor *wq;     /* [n_head * head_dim, n_embd] */
    const pio_tensor *wk;     /* [n_head_kv * head_dim, n_embd] */
    const pio_tensor *wv;     /* [n_head_kv * head_dim, n_embd] */
    const pio_tensor *wo;     /* [n_embd, n_head * head_dim] */
    const pio_tensor *q_norm; /* [head_dim] per-head RMSNorm before RoPE */
    const pio_tensor *k_norm; /* [head_dim] */
    const pio_tensor *wqkv;   /* [(n_head + 2 * n_head_kv) * head_dim, n_embd] or NULL */
} pio_attn_weights;

/* SwiGLU MLP weights (borrowed). When gate_up is set (fused by model surgery),
 * it is used instead of gate and up. */
typedef struct pio_ffn_weights {
    const pio_tensor *gate;    /* [n_ff, n_embd] */
    const pio_tensor *up;      /* [n_ff, n_embd] */
    const pio_tensor *down;    /* [n_embd, n_ff] */
    const pio_tensor *gate_up; /* [2 * n_ff, n_embd] or NULL */
} pio_ffn_weights;

/* out [n, n_embd] = table[token] for the batch's tokens. */
pio_status pio_build_embedding(pio_model *m, const pio_tensor *table, const pio_batch *b,
                               pio_tensor *out, pio_error *err);

/* y = x · wᵀ, rounded in bf16 mode. */
pio_status pio_build_linear(pio_model *m, const pio_tensor *x, const pio_tensor *w,
                            pio_tensor *y, pio_error *err);

/* out = RMSNorm(x) · w. */
pio_status pio_build_norm(pio_model *m, const pio_tensor *x, const pio_tensor *w, float eps,
                          pio_tensor *out, pio_error *err);

/* out [n, n_embd] = o_proj(attention(q, k, v)) for the batch; writes layer
 * `layer`'s KV cache. h [n, n_embd] is the normed input. */
pio_status pio_build_attn(pio_model *m, int layer, const pio_attn_weights *w, const pio_batch *b,
                          const pio_tensor *h, pio_tensor *out, pio_error *err);

/* out [n, n_embd] = down(silu(gate(h)) ⊙ up(h)). */
pio_status pio_build_ffn(pio_model *m, const pio_ffn_weights *w, const pio_tensor *h,
                         pio_tensor *out, pio_error *err);

/* A mixture-of-experts block's weights (borrowed). Expert e's matrices may be
 * views into one stacked checkpoint tensor; only the experts a batch selects
 * are read. */
typedef struct pio_moe_weights {
    const pio_tensor *router;         /* [n_expert, n_embd] */
    int32_t n_expert;
    const pio_tensor *const *gate;    /* [n_expert] of [n_ff_exp, n_embd] */
    const pio_tensor *const *up;      /* [n_expert] of [n_ff_exp, n_embd] */
    const pio_tensor *const *down;    /* [n_expert] of [n_embd, n_ff_exp] */
} pio_moe_weights;

/* How a MoE block routes and sums (the architecture's choices, models.md). */
typedef struct pio_moe_params {
    pio_moe_route_params route; /* route.round_bf16 is ignored: see weights_bf16 */
    bool router_f32;     /* router logits stay f32 in bf16 mode (GLM's f32 router);
                          * false: rounded like any bf16 linear (Qwen) */
    bool weights_bf16;   /* in bf16 mode the routing weights are cast to bf16 (Qwen) */
    pio_moe_accum accum; /* how the top_k expert outputs are summed */
} pio_moe_params;

/* out [n, n_embd] = Σ_k w_k · down_e(silu(gate_e(h)) ⊙ up_e(h)) over the top_k
 * experts e the router picks for each token of h [n, n_embd]. Tokens are grouped
 * by expert, so each selected expert's weights are read once per batch. */
pio_status pio_build_moe(pio_model *m, const pio_moe_weights *w, const pio_moe_params *p,
                         const pio_tensor *h, pio_tensor *out, pio_error *err);

/* x += y (rounded in bf16 mode), then out = RMSNorm(x) · w: a residual add and
 * the norm after it, in one kernel on the GPU. out must not overlap x or y. */
pio_status pio_build_residual_norm(pio_model *m, pio_tensor *x, const pio_tensor *y,
                                   const pio_tensor *w, float eps, pio_tensor *out,
                                   pio_error *err);

/* x += y, rounded in bf16 mode (the residual stream is bf16 in transformers). */
pio_status pio_build_residual(pio_model *m, pio_tensor *x, const pio_tensor *y, pio_error *err);

/* logits rows for the tokens that want them: norm, then lm_head. */
pio_status pio_build_logits(pio_model *m, const pio_batch *b, const pio_tensor *x,
                            const pio_tensor *norm, const pio_tensor *lm_head, pio_tensor *logits,
                            pio_error *err);

#endif
