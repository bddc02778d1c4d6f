/* models/qwen3_family.h: what Qwen3 and Qwen3-MoE checkpoints name and shape
 * the same way (models.md §1-2): the attention half of every decoder layer
 * (its two norms included), and the embedding, final norm and lm_head around
 * the layers. Each architecture keeps its own MLP or experts. */
#ifndef PIO_QWEN3_FAMILY_H
#define PIO_QWEN3_FAMILY_H

#include "layers.h"
#include "model_internal.h"

typedef struct pio_qwen3_attn {
    pio_tensor *attn_norm;         /* [E] input_layernorm */
    pio_tensor *wq, *wk, *wv, *wo; /* [H*D, E], [Hkv*D, E], [Hkv*D, E], [E, H*D] */
    pio_tensor *q_norm, *k_norm;   /* [D] */
    pio_tensor *ffn_norm;          /* [E] post_attention_layernorm */
} pio_qwen3_attn;

enum { PIO_QWEN3_ATTN_TENSORS = 8 };

typedef struct pio_qwen3_ends {
    pio_tensor *embed;   /* [n_vocab, E] model.embed_tokens */
    pio_tensor *norm;    /* [E] model.norm */
    pio_tensor *lm_head; /* [n_vocab, E]; == embed when tied (then not owned) */
} pio_qwen3_ends;

/* model.layers.{layer}.{input_layernorm, self_attn.{q,k,v,o}_proj, self_attn.{q,k}_norm,
 * post_attention_layernorm}.weight. */
pio_status pio_qwen3_load_attn(pio_weight_source *ws, const pio_hparams *hp, int layer,
                               pio_qwen3_attn *a, pio_error *err);
/* The layer's attention tensors, in the order above (to free or count them). */
void pio_qwen3_attn_tensors(const pio_qwen3_attn *a, pio_tensor *out[PIO_QWEN3_ATTN_TENSORS]);
/* What the attention builder reads; wqkv: the fused q|k|v or NULL. */
pio_attn_weights pio_qwen3_attn_weights(const pio_qwen3_attn *a, const pio_tensor *wqkv);

/* The dense SwiGLU MLP of a layer: model.layers.{layer}.mlp.{gate,up,down}_proj.weight,
 * [F, E], [F, E], [E, F] (F = intermediate_size). */
pio_status pio_qwen3_load_mlp(pio_weight_source *ws, const pio_hparams *hp, int layer,
                              pio_tensor **gate, pio_tensor **up, pio_tensor **down,
                              pio_error *err);

/* The embedding first (before the layers), the final norm and lm_head after
 * them (lm_head is the embedding when the config ties them): the checkpoint's
 * order, which progress and model:save follow. */
pio_status pio_qwen3_load_embed(pio_weight_source *ws, const pio_hparams *hp, pio_qwen3_ends *e,
                                pio_error *err);
pio_status pio_qwen3_load_head(pio_weight_source *ws, const pio_hparams *hp, pio_qwen3_ends *e,
                               pio_error *err);
void pio_qwen3_free_ends(pio_qwen3_ends *e);

#endif
