/* pio/model.h: loading a model and running its forward pass over a batch.
 *
 * A model is loaded from a Hugging Face directory (config.json, safetensors,
 * tokenizer files) or, with `synthetic`, built from config.json alone with
 * seeded random weights. The architecture is picked from config.json's
 * `architectures` through one table (models/registry.c).
 *
 * The forward pass takes a batch of tokens, each with its sequence slot and
 * position (as llama.cpp's llama_batch): one code path for prompt processing,
 * single-token decode and several sequences at once. It writes every token's
 * keys and values into the KV cache at (seq, pos) and attends causally over
 * positions 0..pos of that sequence.
 */
#ifndef PIO_MODEL_H
#define PIO_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pio/error.h"
#include "pio/kv.h"
#include "pio/tensor.h"
#include "pio/tokenizer.h"

typedef struct pio_model pio_model;

typedef void (*pio_progress_fn)(void *ud, const char *stage, size_t done, size_t total);

typedef struct pio_load_opts {
    pio_dtype dtype;         /* weights: PIO_F32 (reference mode) or PIO_BF16 */
    pio_device device;       /* PIO_DEVICE_CPU; CUDA when built with it */
    int threads;             /* <= 0: all online CPUs */
    int32_t ctx;             /* KV-cache positions per sequence; 0: min(max_position_embeddings, 4096) */
    int32_t max_seqs;        /* sequence slots in the KV cache; 0: 1 */
    bool synthetic;          /* random weights from config.json alone */
    uint64_t seed;           /* for synthetic weights */
    pio_progress_fn progress; /* optional: called while weights load */
    void *progress_ud;
    size_t max_bytes;        /* 0: no limit; else a model whose footprint (weights, KV cache,
                                activations) exceeds it is refused before anything is allocated */
    pio_kv_config kv;        /* the KV cache (pio/kv.h); all zero: contiguous, the model's dtype */
} pio_load_opts;

pio_load_opts pio_load_opts_default(void);

/* Where models run: the device "auto" stands for, and whether models load on
 * a device (false: *why, borrowed, says why not). */
pio_device pio_model_auto_device(void);
bool pio_model_device_available(pio_device d, const char **why);

/* path: a model directory, or (synthetic only) a config.json file. */
pio_model *pio_model_load(const char *path, const pio_load_opts *opts, pio_error *err);
void pio_model_free(pio_model *m);

typedef struct pio_batch {
    int32_t n_tokens;
    const int32_t *token; /* [n_tokens] */
    const int32_t *pos;   /* [n_tokens] position within its sequence */
    const int32_t *seq;   /* [n_tokens] sequence slot, 0..max_seqs-1 */
    const bool *logits;   /* [n_tokens] which tokens produce logits; NULL: all */
} pio_batch;

/* Runs the batch. *logits (borrowed, valid until the next forward) gets
 * [n_out, n_vocab] f32 rows for the tokens that asked for logits, in batch
 * order. Bad token ids, positions ≥ ctx, unknown slots: PIO_ERR_RANGE. */
pio_status pio_model_forward(pio_model *m, const pio_batch *batch, const pio_tensor **logits,
                             pio_error *err);

typedef struct pio_model_info {
    const char *architecture; /* the config.json name, e.g. "Qwen3ForCausalLM" */
    const char *family;       /* "qwen3" */
    int64_t n_params;
    pio_dtype dtype;
    pio_device device;
    int threads;
    size_t weight_bytes;
    size_t kv_bytes;
    size_t activation_bytes;  /* scratch buffers as they stand (they grow with the largest batch) */
    int32_t n_vocab, n_ctx, n_ctx_train, n_layer, n_embd, n_head, n_head_kv, head_dim, max_seqs;
} pio_model_info;

void pio_model_get_info(const pio_model *m, pio_model_info *info);

/* The tokenizer loaded from the model directory; NULL when there is none
 * (a synthetic model from a bare config.json). Borrowed. */
const pio_tokenizer *pio_model_tokenizer(const pio_model *m);

/* Token ids that end generation (generation_config.json's eos_token_id, else config.json's). */
const int32_t *pio_model_stop_ids(const pio_model *m, size_t *n);

/* Sampling defaults from generation_config.json as transformers reads them:
 * do_sample false or absent → greedy (temperature 0); else its temperature,
 * top_k, top_p, min_p and repetition_penalty. */
struct pio_sampler_params;
void pio_model_default_sampling(const pio_model *m, struct pio_sampler_params *out);

/* Prompts run through the model this many tokens at a time (pio_generation):
 * it bounds the activation memory of a long prompt. */
enum { PIO_PROMPT_CHUNK = 512 };

/* What a model would take, computed from config.json alone (no weights read,
 * nothing of the model allocated): the loader's own accounting run dry.
 * activation_bytes is the scratch of one prompt chunk (generate runs long
 * prompts PIO_PROMPT_CHUNK tokens at a time). */
typedef struct pio_model_footprint {
    char architecture[64];
    const char *family;
    int64_t n_params;
    pio_dtype dtype;
    size_t weight_bytes, kv_bytes, activation_bytes, total_bytes;
    int32_t n_vocab, n_ctx, n_ctx_train, n_layer, n_embd, n_head, n_head_kv, head_dim, max_seqs;
} pio_model_footprint;

/* path and opts as for pio_model_load (synthetic also accepts a bare config.json;
 * without it the checkpoint is not opened either: shapes come from config.json). */
pio_status pio_model_estimate(const char *path, const pio_load_opts *opts,
                              pio_model_footprint *out, pio_error *err);

/* Model surgery on loaded weights. Fusing concatenates the rows of the
 * projections that read the same input, so one matmul does the work of two
 * or three (same numbers, fewer passes); removing drops whole decoder layers
 * (with their KV cache), numbered as in the checkpoint (model.layers.0 first).
 * Generations started before a surgery must not be continued after it. */
typedef struct pio_surgery {
    bool fuse_qkv;                /* q|k|v → one [(H + 2·Hkv)·D, E] matrix per layer */
    bool fuse_gate_up;            /* gate|up → one [2·F, E] matrix per layer */
    const int32_t *remove_layers; /* borrowed; n_remove entries */
    size_t n_remove;
} pio_surgery;

typedef struct pio_surgery_report {
    int32_t fused_qkv, fused_gate_up;  /* layers whose projections were fused now */
    int32_t removed_layers;
    int32_t n_layer_before, n_layer_after;
    int64_t params_before, params_after;
    size_t weight_bytes_before, weight_bytes_after, kv_bytes_before, kv_bytes_after;
    size_t copied_bytes;               /* heap taken by fused matrices (their parts are released) */
} pio_surgery_report;

/* Misuse (a layer out of range or named twice, removing every layer) is
 * PIO_ERR_INVALID before anything changes; an architecture without surgery
 * support is PIO_ERR_UNSUPPORTED. */
pio_status pio_model_surgery(pio_model *m, const pio_surgery *s, pio_surgery_report *rep,
                             pio_error *err);

/* Architectures pio knows, comma-separated ("Qwen3ForCausalLM, ..."). */
const char *pio_model_supported_architectures(void);

#endif
