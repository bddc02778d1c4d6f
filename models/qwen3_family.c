/* The tensors Qwen3 and Qwen3-MoE share (models/qwen3_family.h). */
#include "qwen3_family.h"

#include <stdio.h>

/* One weight by name with its expected shape. */
static pio_status load(pio_weight_source *ws, const char *name, pio_weight_kind kind, int ndim,
                       const int64_t *shape, pio_tensor **dst, pio_error *err) {
    *dst = pio_weights_load(ws, name, ndim, shape, kind, err);
    return *dst ? PIO_OK : err->status;
}

pio_status pio_qwen3_load_attn(pio_weight_source *ws, const pio_hparams *hp, int layer,
                               pio_qwen3_attn *a, pio_error *err) {
    const int64_t E = hp->n_embd, D = hp->head_dim;
    const int64_t QD = hp->n_head * D, KD = hp->n_head_kv * D;
    const struct {
        const char *name;
        pio_weight_kind kind;
        int64_t rows, cols; /* cols 0: a vector of rows */
        pio_tensor **dst;
    } t[PIO_QWEN3_ATTN_TENSORS] = {
        {"input_layernorm", PIO_WEIGHT_NORM, E, 0, &a->attn_norm},
        {"self_attn.q_proj", PIO_WEIGHT_MATRIX, QD, E, &a->wq},
        {"self_attn.k_proj", PIO_WEIGHT_MATRIX, KD, E, &a->wk},
        {"self_attn.v_proj", PIO_WEIGHT_MATRIX, KD, E, &a->wv},
        {"self_attn.o_proj", PIO_WEIGHT_MATRIX, E, QD, &a->wo},
        {"self_attn.q_norm", PIO_WEIGHT_NORM, D, 0, &a->q_norm},
        {"self_attn.k_norm", PIO_WEIGHT_NORM, D, 0, &a->k_norm},
        {"post_attention_layernorm", PIO_WEIGHT_NORM, E, 0, &a->ffn_norm},
    };
    char name[256];
    for (int i = 0; i < PIO_QWEN3_ATTN_TENSORS; i++) {
        snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, t[i].name);
        const int64_t shape[2] = {t[i].rows, t[i].cols};
        pio_status st = load(ws, name, t[i].kind, t[i].cols ? 2 : 1, shape, t[i].dst, err);
        if (st) return st;
    }
    return PIO_OK;
}

void pio_qwen3_attn_tensors(const pio_qwen3_attn *a, pio_tensor *out[PIO_QWEN3_ATTN_TENSORS]) {
    pio_tensor *all[PIO_QWEN3_ATTN_TENSORS] = {a->attn_norm, a->wq,     a->wk,     a->wv,
                                               a->wo,        a->q_norm, a->k_norm, a->ffn_norm};
    for (int i = 0; i < PIO_QWEN3_ATTN_TENSORS; i++) out[i] = all[i];
}

pio_attn_weights pio_qwen3_attn_weights(const pio_qwen3_attn *a, const pio_tensor *wqkv) {
    return (pio_attn_weights){.wq = a->wq, .wk = a->wk, .wv = a->wv, .wo = a->wo,
                              .q_norm = a->q_norm, .k_norm = a->k_norm, .wqkv = wqkv};
}

pio_status pio_qwen3_load_mlp(pio_weight_source *ws, const pio_hparams *hp, int layer,
                              pio_tensor **gate, pio_tensor **up, pio_tensor **down,
                              pio_error *err) {
    const int64_t E = hp->n_embd, F = hp->n_ff;
    const struct {
        const char *part;
        int64_t rows, cols;
        pio_tensor **dst;
    } t[3] = {{"gate_proj", F, E, gate}, {"up_proj", F, E, up}, {"down_proj", E, F, down}};
    char name[256];
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.%s.weight", layer, t[i].part);
        const int64_t shape[2] = {t[i].rows, t[i].cols};
        pio_status st = load(ws, name, PIO_WEIGHT_MATRIX, 2, shape, t[i].dst, err);
        if (st) return st;
    }
    return PIO_OK;
}

pio_status pio_qwen3_load_embed(pio_weight_source *ws, const pio_hparams *hp, pio_qwen3_ends *e,
                                pio_error *err) {
    const int64_t shape[2] = {hp->n_vocab, hp->n_embd};
    return load(ws, "model.embed_tokens.weight", PIO_WEIGHT_MATRIX, 2, shape, &e->embed, err);
}

pio_status pio_qwen3_load_head(pio_weight_source *ws, const pio_hparams *hp, pio_qwen3_ends *e,
                               pio_error *err) {
    const int64_t norm_shape[1] = {hp->n_embd}, head_shape[2] = {hp->n_vocab, hp->n_embd};
    pio_status st = load(ws, "model.norm.weight", PIO_WEIGHT_NORM, 1, norm_shape, &e->norm, err);
    if (st) return st;
    if (hp->tied_embeddings) { /* Qwen3-4B ships no lm_head.weight */
        e->lm_head = e->embed;
        return PIO_OK;
    }
    return load(ws, "lm_head.weight", PIO_WEIGHT_MATRIX, 2, head_shape, &e->lm_head, err);
}

void pio_qwen3_free_ends(pio_qwen3_ends *e) {
    if (e->lm_head != e->embed) pio_tensor_free(e->lm_head);
    pio_tensor_free(e->embed);
    pio_tensor_free(e->norm);
    e->embed = e->norm = e->lm_head = NULL;
}
