/* Qwen3 dense (Qwen3ForCausalLM), models.md §1:
 *   x = embed[ids]
 *   per layer: x += o_proj(attn(rope(q_norm(q)), rope(k_norm(k)), v))   on RMSNorm(x)
 *              x += down(silu(gate) ⊙ up)                                on RMSNorm(x)
 *   logits = lm_head(RMSNorm(x))   (lm_head tied to embed_tokens when configured) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"
#include "layers.h"
#include "pio/json.h"
#include "qwen3_family.h"

typedef struct qwen3_layer {
    pio_qwen3_attn attn;               /* norms, q/k/v/o, q/k norms (qwen3_family.h) */
    pio_tensor *gate, *up, *down;      /* [F, E], [F, E], [E, F] */
    /* Fused by model surgery (NULL until then); wq/wk/wv and gate/up are views into them. */
    pio_tensor *wqkv;                  /* [(H + 2·Hkv)·D, E] */
    pio_tensor *gate_up;               /* [2·F, E] */
} qwen3_layer;

typedef struct qwen3_weights {
    pio_qwen3_ends ends; /* embed, final norm, lm_head */
    qwen3_layer *layers; /* [n_layer] */
} qwen3_weights;

/* transformers ≥ 5 writes rope_parameters {rope_theta, rope_type}; older configs
 * write rope_theta and rope_scaling at the top level. */
static pio_status parse_rope(const cJSON *cfg, pio_hparams *hp, pio_error *err) {
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(cfg, "rope_parameters");
    const cJSON *scaling = cJSON_GetObjectItemCaseSensitive(cfg, "rope_scaling");
    const cJSON *src = cJSON_IsObject(params) ? params : cfg;
    pio_status st = pio_json_double(src, "rope_theta", false, 10000.0, &hp->rope_theta,
                                    "config.json", err);
    if (st) return st;
    const cJSON *kind_src = cJSON_IsObject(params) ? params : scaling;
    if (cJSON_IsObject(kind_src)) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(kind_src, "rope_type");
        if (!cJSON_IsString(type)) type = cJSON_GetObjectItemCaseSensitive(kind_src, "type");
        if (cJSON_IsString(type) && strcmp(type->valuestring, "default") != 0)
            return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                                 "rope type '%s' is not supported yet (only 'default')",
                                 type->valuestring);
    }
    return PIO_OK;
}

/* Which layers slide, as transformers' Qwen3Config does: sliding_window only
 * counts when use_sliding_window; layer_types ("full_attention" /
 * "sliding_attention" per layer) when given, else the layers from
 * max_window_layers on. */
static pio_status parse_sliding(const cJSON *cfg, pio_hparams *hp, pio_error *err) {
    const char *w = "config.json";
    bool use = false;
    int64_t window = 4096, from = 28;
    pio_status st = pio_json_bool(cfg, "use_sliding_window", false, false, &use, w, err);
    if (st) return st;
    const cJSON *sw = cJSON_GetObjectItemCaseSensitive(cfg, "sliding_window");
    if (cJSON_IsNull(sw)) window = 0; /* null: no window even when use_sliding_window */
    else if ((st = pio_json_int(cfg, "sliding_window", false, 4096, &window, w, err))) return st;
    if ((st = pio_json_int(cfg, "max_window_layers", false, 28, &from, w, err))) return st;
    if (!use) window = 0;
    if (window > INT32_MAX || window < (use && !cJSON_IsNull(sw) ? 1 : 0))
        return pio_error_set(err, PIO_ERR_FORMAT, "config.json: sliding_window must be >= 1, got %lld",
                             (long long)window);
    if (hp->n_layer > PIO_MAX_LAYERS)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%d layers: pio supports at most %d",
                             hp->n_layer, PIO_MAX_LAYERS);
    hp->sliding_window = (int32_t)window;
    const cJSON *types = cJSON_GetObjectItemCaseSensitive(cfg, "layer_types");
    if (types && !cJSON_IsNull(types)) {
        if (!cJSON_IsArray(types) || cJSON_GetArraySize(types) != hp->n_layer)
            return pio_error_set(err, PIO_ERR_FORMAT,
                                 "config.json: layer_types must be a list of %d strings (one per "
                                 "layer)", hp->n_layer);
        for (int l = 0; l < hp->n_layer; l++) {
            const cJSON *t = cJSON_GetArrayItem(types, l);
            const char *name = cJSON_IsString(t) ? t->valuestring : NULL;
            if (name && strcmp(name, "full_attention") == 0) {
                hp->sliding_layer[l] = false;
            } else if (name && strcmp(name, "sliding_attention") == 0) {
                if (!window)
                    return pio_error_set(err, PIO_ERR_FORMAT,
                                         "config.json: layer_types[%d] is 'sliding_attention' but "
                                         "there is no window (use_sliding_window is false or "
                                         "sliding_window null)", l);
                hp->sliding_layer[l] = true;
            } else {
                return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                                     "config.json: layer_types[%d] is %s%s%s (known: "
                                     "full_attention, sliding_attention)", l, name ? "'" : "",
                                     name ? name : "not a string", name ? "'" : "");
            }
        }
        return PIO_OK;
    }
    for (int l = 0; l < hp->n_layer; l++) hp->sliding_layer[l] = window > 0 && l >= from;
    return PIO_OK;
}

static pio_status qwen3_parse_config(const cJSON *cfg, pio_hparams *hp, pio_error *err) {
    int64_t v;
    const char *w = "config.json";
    pio_status st;
#define GET_INT(key, field, required, fallback)                                        \
    if ((st = pio_json_int(cfg, key, required, fallback, &v, w, err))) return st;      \
    hp->field = (int32_t)v;
    GET_INT("vocab_size", n_vocab, true, 0);
    GET_INT("hidden_size", n_embd, true, 0);
    GET_INT("num_hidden_layers", n_layer, true, 0);
    GET_INT("num_attention_heads", n_head, true, 0);
    GET_INT("num_key_value_heads", n_head_kv, false, hp->n_head);
    GET_INT("head_dim", head_dim, false, hp->n_embd / (hp->n_head ? hp->n_head : 1));
    GET_INT("intermediate_size", n_ff, true, 0);
    GET_INT("max_position_embeddings", n_ctx_train, false, 32768);
#undef GET_INT
    if ((st = pio_json_double(cfg, "rms_norm_eps", false, 1e-6, &hp->norm_eps, w, err)) ||
        (st = pio_json_bool(cfg, "tie_word_embeddings", false, false, &hp->tied_embeddings, w,
                            err)) ||
        (st = parse_rope(cfg, hp, err)))
        return st;
    if (hp->n_vocab <= 0 || hp->n_embd <= 0 || hp->n_layer <= 0 || hp->n_head <= 0 ||
        hp->n_head_kv <= 0 || hp->head_dim <= 0 || hp->n_ff <= 0 || hp->n_ctx_train <= 0)
        return pio_error_set(err, PIO_ERR_FORMAT, "sizes must be positive");
    if (hp->n_head % hp->n_head_kv != 0)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "num_attention_heads %d is not a multiple of num_key_value_heads %d",
                             hp->n_head, hp->n_head_kv);
    if (hp->head_dim % 2 != 0)
        return pio_error_set(err, PIO_ERR_FORMAT, "head_dim %d must be even for RoPE",
                             hp->head_dim);
    const cJSON *bias = cJSON_GetObjectItemCaseSensitive(cfg, "attention_bias");
    if (cJSON_IsTrue(bias))
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "attention_bias=true is not supported");
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(cfg, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "silu") != 0)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "hidden_act '%s' is not supported (silu)",
                             act->valuestring);
    return parse_sliding(cfg, hp, err);
}

static pio_status qwen3_load_weights(pio_model *m, pio_weight_source *ws, pio_error *err) {
    const pio_hparams *hp = &m->hp;
    qwen3_weights *w = calloc(1, sizeof *w);
    if (!w) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    m->arch_state = w;
    w->layers = calloc((size_t)hp->n_layer, sizeof *w->layers);
    if (!w->layers) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    ws->total = 3 + (size_t)hp->n_layer * 11;

    pio_status st = pio_qwen3_load_embed(ws, hp, &w->ends, err);
    if (st) return st;
    for (int l = 0; l < hp->n_layer; l++) {
        qwen3_layer *L = &w->layers[l];
        if ((st = pio_qwen3_load_attn(ws, hp, l, &L->attn, err)) ||
            (st = pio_qwen3_load_mlp(ws, hp, l, &L->gate, &L->up, &L->down, err)))
            return st;
    }
    return pio_qwen3_load_head(ws, hp, &w->ends, err);
}

static pio_status qwen3_forward(pio_model *m, const pio_batch *b, pio_tensor *logits,
                                pio_error *err) {
    const qwen3_weights *w = m->arch_state;
    const pio_hparams *hp = &m->hp;
    int64_t n = b->n_tokens;
    float eps = (float)hp->norm_eps;
    pio_tensor x, h, out;
    pio_status st;
    if ((st = pio_scratch(m, PIO_SLOT_X, n, hp->n_embd, &x, err)) ||
        (st = pio_scratch(m, PIO_SLOT_H, n, hp->n_embd, &h, err)) ||
        (st = pio_scratch(m, PIO_SLOT_OUT, n, hp->n_embd, &out, err)) ||
        (st = pio_build_embedding(m, w->ends.embed, b, &x, err)))
        return st;

    /* Each residual add is followed by the next norm: one builder does both
     * (one kernel on the GPU), so layer l ends with layer l + 1's input norm. */
    if ((st = pio_build_norm(m, &x, w->layers[0].attn.attn_norm, eps, &h, err))) return st;
    for (int l = 0; l < hp->n_layer; l++) {
        const qwen3_layer *L = &w->layers[l];
        pio_attn_weights aw = pio_qwen3_attn_weights(&L->attn, L->wqkv);
        pio_ffn_weights fw = {L->gate, L->up, L->down, L->gate_up};
        const pio_tensor *next_norm = l + 1 < hp->n_layer ? w->layers[l + 1].attn.attn_norm : NULL;
        if ((st = pio_build_attn(m, l, &aw, b, &h, &out, err)) ||
            (st = pio_build_residual_norm(m, &x, &out, L->attn.ffn_norm, eps, &h, err)) ||
            (st = pio_build_ffn(m, &fw, &h, &out, err)) ||
            (st = next_norm ? pio_build_residual_norm(m, &x, &out, next_norm, eps, &h, err)
                            : pio_build_residual(m, &x, &out, err)))
            return pio_error_prefix(err, "layer %d", l);
    }
    return pio_build_logits(m, b, &x, w->ends.norm, w->ends.lm_head, logits, err);
}

/* A layer's tensors without the fused ones (whose bytes are their parts'). */
enum { LAYER_PARTS = PIO_QWEN3_ATTN_TENSORS + 3 };
static void layer_parts(const qwen3_layer *L, pio_tensor *out[LAYER_PARTS]) {
    pio_qwen3_attn_tensors(&L->attn, out);
    out[PIO_QWEN3_ATTN_TENSORS] = L->gate;
    out[PIO_QWEN3_ATTN_TENSORS + 1] = L->up;
    out[PIO_QWEN3_ATTN_TENSORS + 2] = L->down;
}

static void free_layer(qwen3_layer *L) {
    pio_tensor *parts[LAYER_PARTS];
    layer_parts(L, parts);
    for (int i = 0; i < LAYER_PARTS; i++) pio_tensor_free(parts[i]);
    pio_tensor_free(L->wqkv);
    pio_tensor_free(L->gate_up);
}

static void qwen3_free_weights(pio_model *m) {
    qwen3_weights *w = m->arch_state;
    pio_qwen3_free_ends(&w->ends);
    for (int l = 0; w->layers && l < m->hp.n_layer; l++) free_layer(&w->layers[l]);
    free(w->layers);
    free(w);
    m->arch_state = NULL;
}

/* ---- model surgery --------------------------------------------------------- */

static void qwen3_remove_layers(pio_model *m, const int32_t *layers, size_t n) {
    qwen3_weights *w = m->arch_state;
    int32_t kept = 0;
    for (int32_t l = 0, r = 0; l < m->hp.n_layer; l++) {
        qwen3_layer *L = &w->layers[l];
        if ((size_t)r < n && layers[r] == l) {
            /* Fused matrices hold their parts' bytes: count the parts, not both. */
            pio_tensor *all[LAYER_PARTS];
            layer_parts(L, all);
            for (int i = 0; i < LAYER_PARTS; i++) {
                m->weight_bytes -= pio_tensor_nbytes(all[i]);
                m->n_params -= pio_tensor_numel(all[i]);
            }
            pio_model_forget_weights(m, all, LAYER_PARTS);
            free_layer(L);
            r++;
            continue;
        }
        w->layers[kept++] = *L;
    }
}

static pio_status qwen3_fuse(pio_model *m, bool qkv, bool gate_up, pio_surgery_report *rep,
                             pio_error *err) {
    qwen3_weights *w = m->arch_state;
    for (int l = 0; l < m->hp.n_layer; l++) {
        qwen3_layer *L = &w->layers[l];
        if (qkv && !L->wqkv) {
            pio_tensor *parts[3] = {L->attn.wq, L->attn.wk, L->attn.wv};
            if (!(L->wqkv = pio_weights_fuse(m, parts, 3, err)))
                return pio_error_prefix(err, "fusing q|k|v of layer %d", l);
            rep->fused_qkv++;
            rep->copied_bytes += pio_tensor_nbytes(L->wqkv);
        }
        if (gate_up && !L->gate_up) {
            pio_tensor *parts[2] = {L->gate, L->up};
            if (!(L->gate_up = pio_weights_fuse(m, parts, 2, err)))
                return pio_error_prefix(err, "fusing gate|up of layer %d", l);
            rep->fused_gate_up++;
            rep->copied_bytes += pio_tensor_nbytes(L->gate_up);
        }
    }
    return PIO_OK;
}

static const char *const qwen3_names[] = {"Qwen3ForCausalLM", NULL};

const pio_arch pio_arch_qwen3 = {
    .family = "qwen3",
    .hf_names = qwen3_names,
    .parse_config = qwen3_parse_config,
    .load_weights = qwen3_load_weights,
    .forward = qwen3_forward,
    .free_weights = qwen3_free_weights,
    .remove_layers = qwen3_remove_layers,
    .fuse = qwen3_fuse,
};
