/* Qwen3-MoE (Qwen3MoeForCausalLM), models.md §2: Qwen3's attention with a
 * mixture of experts in place of the MLP.
 *   x = embed[ids]
 *   per layer: x += o_proj(attn(rope(q_norm(q)), rope(k_norm(k)), v))   on RMSNorm(x)
 *              x += moe(h) or mlp(h)                                     h = RMSNorm(x)
 *     moe(h) = Σ_k w_k · down_e(silu(gate_e(h)) ⊙ up_e(h)), e = top_k of softmax(router(h)),
 *              w renormalised to sum 1 when norm_topk_prob, then cast to bf16 in bf16 mode
 *     a layer is dense (intermediate_size) when it is in mlp_only_layers, or when
 *     (l + 1) % decoder_sparse_step != 0, or when there are no experts
 *   logits = lm_head(RMSNorm(x))   (untied in every published checkpoint)
 *
 * Experts load from either checkpoint layout: per-expert tensors
 * (mlp.experts.{e}.gate_proj.weight ..., as published) or transformers v5's
 * stacks (mlp.experts.gate_up_proj [E, 2I, H], gate rows first, and
 * mlp.experts.down_proj [E, H, I]); either way each expert is a view into the
 * (memory-mapped where the dtype allows) checkpoint. The experts are summed as
 * transformers' eager experts do (ascending expert id, bf16 rounding after each
 * add in bf16 mode), the implementation the parity fixtures are made with. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"
#include "layers.h"
#include "qwen3_family.h"
#include "pio/json.h"

extern const pio_arch pio_arch_qwen3;

typedef struct moe_layer {
    pio_qwen3_attn attn;               /* norms, q/k/v/o, q/k norms (qwen3_family.h) */
    /* dense layers */
    pio_tensor *gate, *up, *down;      /* [F, E], [F, E], [E, F] */
    /* MoE layers */
    pio_tensor *router;                /* [X, E] mlp.gate.weight (X experts) */
    pio_tensor **exp_gate, **exp_up;   /* [X] of [I, E] (views when stacked) */
    pio_tensor **exp_down;             /* [X] of [E, I] */
    pio_tensor *gate_up_stack;         /* [X, 2I, E] when the checkpoint stacks them, else NULL */
    pio_tensor *down_stack;            /* [X, E, I] */
} moe_layer;

typedef struct moe_weights {
    pio_qwen3_ends ends; /* embed, final norm, lm_head */
    moe_layer *layers;   /* [n_layer] */
} moe_weights;

/* ---- config ------------------------------------------------------------------ */

/* mlp_only_layers: a list of layer indices, or null / absent for none. */
static pio_status parse_mlp_only(const cJSON *cfg, pio_hparams *hp, bool *dense, pio_error *err) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(cfg, "mlp_only_layers");
    if (!list || cJSON_IsNull(list)) return PIO_OK;
    if (!cJSON_IsArray(list))
        return pio_error_set(err, PIO_ERR_FORMAT, "config.json: key 'mlp_only_layers' must be a "
                             "list of layer indices");
    const cJSON *v;
    cJSON_ArrayForEach(v, list) {
        double d = cJSON_IsNumber(v) ? v->valuedouble : -1.0;
        if (d < 0 || d != (double)(int64_t)d)
            return pio_error_set(err, PIO_ERR_FORMAT, "config.json: 'mlp_only_layers' holds "
                                 "something other than a layer index");
        /* An index past the last layer names no layer: transformers ignores it too. */
        if (d < hp->n_layer) dense[(int64_t)d] = true;
    }
    return PIO_OK;
}

static pio_status moe_parse_config(const cJSON *cfg, pio_hparams *hp, pio_error *err) {
    /* Everything but the MLP is Qwen3's. */
    pio_status st = pio_arch_qwen3.parse_config(cfg, hp, err);
    if (st) return st;
    const char *w = "config.json";
    int64_t n_expert, top_k, n_ff_exp, step;
    /* transformers v5 writes num_local_experts (num_experts is its alias). */
    const char *experts_key =
        cJSON_GetObjectItemCaseSensitive(cfg, "num_experts") ? "num_experts" : "num_local_experts";
    if ((st = pio_json_int(cfg, experts_key, true, 0, &n_expert, w, err)) ||
        (st = pio_json_int(cfg, "num_experts_per_tok", false, 8, &top_k, w, err)) ||
        (st = pio_json_int(cfg, "moe_intermediate_size", false, 768, &n_ff_exp, w, err)) ||
        (st = pio_json_int(cfg, "decoder_sparse_step", false, 1, &step, w, err)) ||
        (st = pio_json_bool(cfg, "norm_topk_prob", false, false, &hp->expert_norm, w, err)))
        return st;
    if (n_expert < 0 || n_expert > 4096)
        return pio_error_set(err, PIO_ERR_FORMAT, "%s must be in [0, 4096], got %lld",
                             experts_key, (long long)n_expert);
    if (n_expert > 0 && (top_k < 1 || top_k > n_expert))
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "num_experts_per_tok %lld must be in [1, %s = %lld]",
                             (long long)top_k, experts_key, (long long)n_expert);
    if (n_ff_exp <= 0 || n_ff_exp > INT32_MAX)
        return pio_error_set(err, PIO_ERR_FORMAT, "moe_intermediate_size must be positive");
    if (step < 1 || step > INT32_MAX)
        return pio_error_set(err, PIO_ERR_FORMAT, "decoder_sparse_step must be >= 1, got %lld",
                             (long long)step);
    if (hp->n_layer > PIO_MAX_LAYERS)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%d layers: pio supports at most %d",
                             hp->n_layer, PIO_MAX_LAYERS);
    /* transformers' Qwen3-MoE slides in every layer when use_sliding_window (its
     * attention reads config.sliding_window; no layer_types, no max_window_layers). */
    for (int l = 0; l < hp->n_layer; l++) hp->sliding_layer[l] = hp->sliding_window > 0;
    hp->n_expert = (int32_t)n_expert;
    hp->n_expert_used = (int32_t)top_k;
    hp->n_ff_exp = (int32_t)n_ff_exp;

    bool dense[PIO_MAX_LAYERS] = {false};
    if ((st = parse_mlp_only(cfg, hp, dense, err))) return st;
    for (int l = 0; l < hp->n_layer; l++)
        hp->moe_layer[l] = !dense[l] && n_expert > 0 && (l + 1) % step == 0;
    return PIO_OK;
}

/* ---- weights ----------------------------------------------------------------- */

/* Expert e of a stack [X, rows_per, cols] at row offset `row0` of its block, as
 * a [rows, cols] view sharing the stack's storage. */
static pio_tensor *expert_view(const pio_tensor *stack, int64_t e, int64_t row0, int64_t rows,
                               pio_error *err) {
    int64_t cols = stack->shape[2];
    size_t el = pio_dtype_info(stack->dtype)->size;
    size_t off = stack->offset + (size_t)((e * stack->shape[1] + row0) * cols) * el;
    int64_t shape[2] = {rows, cols};
    return pio_tensor_from_storage(stack->storage, off, stack->dtype, 2, shape, err);
}

/* Whether layer l's checkpoint holds transformers v5's expert stacks. */
static bool experts_stacked(const pio_weight_source *ws, int l) {
    char name[256];
    snprintf(name, sizeof name, "model.layers.%d.mlp.experts.gate_up_proj", l);
    /* Synthetic weights on a GPU are made as stacks too: two allocations per
     * layer instead of 3·X (thousands of 3 MiB blocks would waste a quarter of
     * the memory in the pool's 2 MiB rounding). */
    if (ws->synthetic && ws->model && ws->model->cuda) return true;
    return ws->st && pio_safetensors_find(ws->st, name);
}

static pio_status load_experts(pio_weight_source *ws, const pio_hparams *hp, int l, moe_layer *L,
                               pio_error *err) {
    const int64_t X = hp->n_expert, E = hp->n_embd, I = hp->n_ff_exp;
    L->exp_gate = calloc((size_t)X, sizeof *L->exp_gate);
    L->exp_up = calloc((size_t)X, sizeof *L->exp_up);
    L->exp_down = calloc((size_t)X, sizeof *L->exp_down);
    if (!L->exp_gate || !L->exp_up || !L->exp_down)
        return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    char name[256];
    snprintf(name, sizeof name, "model.layers.%d.mlp.experts.gate_up_proj", l);
    if (experts_stacked(ws, l)) {
        /* transformers v5's layout: views into the two stacks. */
        int64_t gu[3] = {X, 2 * I, E}, dn[3] = {X, E, I};
        if (!(L->gate_up_stack = pio_weights_load(ws, name, 3, gu, PIO_WEIGHT_MATRIX, err)))
            return err->status;
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.down_proj", l);
        if (!(L->down_stack = pio_weights_load(ws, name, 3, dn, PIO_WEIGHT_MATRIX, err)))
            return err->status;
        for (int64_t e = 0; e < X; e++) {
            if (!(L->exp_gate[e] = expert_view(L->gate_up_stack, e, 0, I, err)) ||
                !(L->exp_up[e] = expert_view(L->gate_up_stack, e, I, I, err)) ||
                !(L->exp_down[e] = expert_view(L->down_stack, e, 0, E, err)))
                return err->status;
        }
        return PIO_OK;
    }
    /* The published layout: three tensors per expert. */
    int64_t in[2] = {I, E}, out[2] = {E, I};
    for (int64_t e = 0; e < X; e++) {
        const char *p = "model.layers";
        snprintf(name, sizeof name, "%s.%d.mlp.experts.%lld.gate_proj.weight", p, l, (long long)e);
        if (!(L->exp_gate[e] = pio_weights_load(ws, name, 2, in, PIO_WEIGHT_MATRIX, err)))
            return err->status;
        snprintf(name, sizeof name, "%s.%d.mlp.experts.%lld.up_proj.weight", p, l, (long long)e);
        if (!(L->exp_up[e] = pio_weights_load(ws, name, 2, in, PIO_WEIGHT_MATRIX, err)))
            return err->status;
        snprintf(name, sizeof name, "%s.%d.mlp.experts.%lld.down_proj.weight", p, l, (long long)e);
        if (!(L->exp_down[e] = pio_weights_load(ws, name, 2, out, PIO_WEIGHT_MATRIX, err)))
            return err->status;
    }
    return PIO_OK;
}

static pio_status moe_load_weights(pio_model *m, pio_weight_source *ws, pio_error *err) {
    const pio_hparams *hp = &m->hp;
    moe_weights *w = calloc(1, sizeof *w);
    if (!w) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    m->arch_state = w;
    w->layers = calloc((size_t)hp->n_layer, sizeof *w->layers);
    if (!w->layers) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    ws->total = 3;
    for (int l = 0; l < hp->n_layer; l++)
        ws->total += PIO_QWEN3_ATTN_TENSORS + (!hp->moe_layer[l]        ? 3
                          : experts_stacked(ws, l) ? 1 + 2
                                                   : 1 + 3 * (size_t)hp->n_expert);

    pio_status st = pio_qwen3_load_embed(ws, hp, &w->ends, err);
    if (st) return st;
    char name[256];
    for (int l = 0; l < hp->n_layer; l++) {
        moe_layer *L = &w->layers[l];
        if ((st = pio_qwen3_load_attn(ws, hp, l, &L->attn, err))) return st;
        if (!hp->moe_layer[l]) {
            if ((st = pio_qwen3_load_mlp(ws, hp, l, &L->gate, &L->up, &L->down, err))) return st;
            continue;
        }
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.weight", l);
        const int64_t router_shape[2] = {hp->n_expert, hp->n_embd};
        if (!(L->router = pio_weights_load(ws, name, 2, router_shape, PIO_WEIGHT_MATRIX, err)))
            return err->status;
        if ((st = load_experts(ws, hp, l, L, err))) return st;
    }
    return pio_qwen3_load_head(ws, hp, &w->ends, err);
}

/* ---- forward ----------------------------------------------------------------- */

static pio_status moe_forward(pio_model *m, const pio_batch *b, pio_tensor *logits,
                              pio_error *err) {
    const moe_weights *w = m->arch_state;
    const pio_hparams *hp = &m->hp;
    int64_t n = b->n_tokens;
    float eps = (float)hp->norm_eps;
    const pio_moe_params moe = {
        .route = {.scoring = PIO_MOE_SOFTMAX, .top_k = hp->n_expert_used,
                  .norm = hp->expert_norm, .scale = 1.0f},
        .weights_bf16 = true, /* router_top_value.to(router_logits.dtype) */
        .accum = PIO_MOE_ACCUM_EXPERT_ORDER,
    };
    pio_tensor x, h, out;
    pio_status st;
    if ((st = pio_scratch(m, PIO_SLOT_X, n, hp->n_embd, &x, err)) ||
        (st = pio_scratch(m, PIO_SLOT_H, n, hp->n_embd, &h, err)) ||
        (st = pio_scratch(m, PIO_SLOT_OUT, n, hp->n_embd, &out, err)) ||
        (st = pio_build_embedding(m, w->ends.embed, b, &x, err)))
        return st;

    /* As in qwen3.c: each residual add and the norm after it are one builder
     * (one kernel on the GPU), so layer l ends with layer l + 1's input norm. */
    if ((st = pio_build_norm(m, &x, w->layers[0].attn.attn_norm, eps, &h, err))) return st;
    for (int l = 0; l < hp->n_layer; l++) {
        const moe_layer *L = &w->layers[l];
        pio_attn_weights aw = pio_qwen3_attn_weights(&L->attn, NULL);
        if ((st = pio_build_attn(m, l, &aw, b, &h, &out, err)) ||
            (st = pio_build_residual_norm(m, &x, &out, L->attn.ffn_norm, eps, &h, err)))
            return pio_error_prefix(err, "layer %d", l);
        if (hp->moe_layer[l]) {
            pio_moe_weights mw = {.router = L->router, .n_expert = hp->n_expert,
                                  .gate = (const pio_tensor *const *)L->exp_gate,
                                  .up = (const pio_tensor *const *)L->exp_up,
                                  .down = (const pio_tensor *const *)L->exp_down};
            st = pio_build_moe(m, &mw, &moe, &h, &out, err);
        } else {
            pio_ffn_weights fw = {.gate = L->gate, .up = L->up, .down = L->down};
            st = pio_build_ffn(m, &fw, &h, &out, err);
        }
        const pio_tensor *next_norm = l + 1 < hp->n_layer ? w->layers[l + 1].attn.attn_norm : NULL;
        if (st || (st = next_norm ? pio_build_residual_norm(m, &x, &out, next_norm, eps, &h, err)
                                  : pio_build_residual(m, &x, &out, err)))
            return pio_error_prefix(err, "layer %d", l);
    }
    return pio_build_logits(m, b, &x, w->ends.norm, w->ends.lm_head, logits, err);
}

static void free_experts(pio_tensor **t, int32_t n) {
    for (int32_t e = 0; t && e < n; e++) pio_tensor_free(t[e]);
    free(t);
}

static void moe_free_weights(pio_model *m) {
    moe_weights *w = m->arch_state;
    pio_qwen3_free_ends(&w->ends);
    for (int l = 0; w->layers && l < m->hp.n_layer; l++) {
        moe_layer *L = &w->layers[l];
        pio_tensor *attn[PIO_QWEN3_ATTN_TENSORS];
        pio_qwen3_attn_tensors(&L->attn, attn);
        for (int i = 0; i < PIO_QWEN3_ATTN_TENSORS; i++) pio_tensor_free(attn[i]);
        pio_tensor *all[] = {L->gate, L->up, L->down, L->router, L->gate_up_stack, L->down_stack};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) pio_tensor_free(all[i]);
        free_experts(L->exp_gate, m->hp.n_expert);
        free_experts(L->exp_up, m->hp.n_expert);
        free_experts(L->exp_down, m->hp.n_expert);
    }
    free(w->layers);
    free(w);
    m->arch_state = NULL;
}

static const char *const moe_names[] = {"Qwen3MoeForCausalLM", NULL};

const pio_arch pio_arch_qwen3_moe = {
    .family = "qwen3_moe",
    .hf_names = moe_names,
    .parse_config = moe_parse_config,
    .load_weights = moe_load_weights,
    .forward = moe_forward,
    .free_weights = moe_free_weights,
};
