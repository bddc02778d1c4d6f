/* models/model_internal.h: what architectures, layer builders and the loader
 * share. Not part of the public API. */
#ifndef PIO_MODEL_INTERNAL_H
#define PIO_MODEL_INTERNAL_H

#include <cJSON.h>

#include "pio/model.h"
#include "pio/safetensors.h"
#include "pio/sampler.h"
#include "pio/threadpool.h"

/* Per-layer flags in pio_hparams are fixed arrays of this size. */
#define PIO_MAX_LAYERS 512

/* Hyper-parameters every text decoder has; every value comes from config.json. */
typedef struct pio_hparams {
    char architecture[64];
    int32_t n_vocab;
    int32_t n_embd;      /* hidden_size */
    int32_t n_layer;
    int32_t n_head, n_head_kv, head_dim;
    int32_t n_ff;        /* intermediate_size */
    int32_t n_ctx_train; /* max_position_embeddings */
    double rope_theta;
    double norm_eps;
    bool tied_embeddings;
    int32_t stop_ids[8];
    int n_stop_ids;
    /* Mixture of experts (n_expert 0: dense). */
    int32_t n_expert;        /* num_experts (v5 configs write num_local_experts) */
    int32_t n_expert_used;   /* num_experts_per_tok */
    int32_t n_ff_exp;        /* moe_intermediate_size */
    bool expert_norm;        /* norm_topk_prob */
    bool moe_layer[PIO_MAX_LAYERS]; /* layer l has a MoE block (else a dense MLP of n_ff) */
    /* Sliding-window attention from config.json, as transformers reads it:
     * layer l attends to its last sliding_window positions when sliding_layer[l]. */
    int32_t sliding_window;             /* 0: no layer slides */
    bool sliding_layer[PIO_MAX_LAYERS];
} pio_hparams;

/* Where weights come from: a checkpoint, or seeded random numbers. */
typedef enum pio_weight_kind {
    PIO_WEIGHT_MATRIX, /* stored in the model's dtype; synthetic: normal(0, 0.02) */
    PIO_WEIGHT_NORM,   /* always f32; synthetic: ones */
} pio_weight_kind;

typedef struct pio_weight_source {
    const char *dir;           /* for messages */
    pio_safetensors *st;       /* NULL when synthetic */
    bool synthetic;
    uint64_t seed;
    pio_dtype dtype;           /* the model's weight dtype */
    pio_threadpool *pool;
    size_t bytes;              /* accounted as tensors load */
    int64_t params;
    size_t done, total;        /* progress, in tensors */
    pio_progress_fn progress;
    void *progress_ud;
    struct pio_model *model;   /* where each loaded weight is listed by name (optional) */
    bool dry_run;              /* estimate only: weights are headers with shapes and no bytes */
} pio_weight_source;

/* Fuses projections that read the same input: a new [Σ rows, cols] heap
 * tensor holds the 2-D parts' rows one after another (same dtype and width),
 * and each part is turned, in place, into a view of its rows of it (so
 * pointers to the parts stay valid and their old bytes are released). */
pio_tensor *pio_weights_fuse(pio_model *m, pio_tensor *const *parts, int n, pio_error *err);

/* Loads one weight with the expected shape (checked: a mismatch names the
 * tensor and both shapes). A file tensor in the wanted dtype is used in place
 * (memory-mapped); otherwise it is converted into a heap copy. */
pio_tensor *pio_weights_load(pio_weight_source *ws, const char *name, int ndim,
                             const int64_t *shape, pio_weight_kind kind, pio_error *err);

/* One architecture: one row in models/registry.c. */
typedef struct pio_arch {
    const char *family;               /* "qwen3" */
    const char *const *hf_names;      /* config.json `architectures` it serves, NULL-terminated */
    pio_status (*parse_config)(const cJSON *config, pio_hparams *hp, pio_error *err);
    /* Loads the weights into arch-private state (m->arch_state). */
    pio_status (*load_weights)(pio_model *m, pio_weight_source *ws, pio_error *err);
    /* Runs the batch: writes logits rows for the tokens that want them. */
    pio_status (*forward)(pio_model *m, const pio_batch *batch, pio_tensor *logits,
                          pio_error *err);
    void (*free_weights)(pio_model *m);
    /* Model surgery (pio_model_surgery); optional, NULL: unsupported for the
     * architecture. remove_layers gets sorted, distinct, in-range layers and
     * frees their weights, lowering m->weight_bytes and m->n_params (the loader
     * then drops their KV cache and lowers n_layer). fuse fuses the layers not
     * fused yet, counting them in rep->fused_qkv / rep->fused_gate_up and the
     * fused matrices' bytes in rep->copied_bytes. */
    void (*remove_layers)(pio_model *m, const int32_t *layers, size_t n);
    pio_status (*fuse)(pio_model *m, bool qkv, bool gate_up, pio_surgery_report *rep,
                       pio_error *err);
} pio_arch;

const pio_arch *pio_arch_find(const char *hf_name);
extern const pio_arch *const pio_arch_table[];

/* Activation buffers, one per slot, sized for the largest batch seen so far
 * (grown, never shrunk, so steady-state decode allocates nothing). */
enum pio_scratch_slot {
    PIO_SLOT_X, PIO_SLOT_H, PIO_SLOT_Q, PIO_SLOT_K, PIO_SLOT_V, PIO_SLOT_ATTN,
    PIO_SLOT_OUT, PIO_SLOT_GATE, PIO_SLOT_UP, PIO_SLOT_SEL, PIO_SLOT_LOGITS,
    PIO_SLOT_QKV, PIO_SLOT_GATE_UP, /* outputs of fused projections (model surgery) */
    PIO_SLOT_ROUTER, PIO_SLOT_MOE_X, PIO_SLOT_MOE_Y, PIO_SLOT_MOE_IDX, /* pio_build_moe */
    PIO_SLOT_COUNT
};
typedef struct pio_scratch_bufs {
    pio_tensor *buf[PIO_SLOT_COUNT];
} pio_scratch_bufs;

struct pio_model {
    const pio_arch *arch;
    pio_hparams hp;
    pio_dtype dtype;
    pio_device device;
    pio_threadpool *pool;
    int threads;
    bool round_bf16;            /* bf16 mode: round activations where torch does */
    int32_t n_ctx, max_seqs;
    pio_tensor **cache_k, **cache_v; /* [n_layer] of [max_seqs, n_ctx, n_head_kv, head_dim] */
    size_t weight_bytes, kv_bytes;
    struct pio_kv *kv;          /* the cache's layout, pools and slots (models/kv.c) */
    int64_t n_params;
    float *inv_freq;            /* [head_dim / 2] RoPE inverse frequencies */
    pio_scratch_bufs scratch;
    pio_tensor logits;          /* view handed out by pio_model_forward */
    pio_sampler_params sampling; /* defaults from generation_config.json */
    pio_tokenizer *tokenizer;
    pio_safetensors *st;        /* kept open: weights may map into it */
    void *arch_state;
    /* Every weight by its checkpoint name, in load order (borrowed tensors,
     * owned names), so that pio_model_save can write them back out. */
    struct pio_named_weight { char *name; const pio_tensor *t; } *weights;
    size_t n_weights, cap_weights;
    struct pio_model_cuda *cuda; /* device state when the model runs on CUDA (model_cuda.c) */
};

/* ---- the model on CUDA (models/model_cuda.c) -------------------------------------
 * Without the CUDA backend compiled in, pio_model_cuda_available says so and
 * the rest is never reached (m->cuda stays NULL). */
struct pio_cuda_ctx;
struct pio_cuda_batch;
bool pio_model_cuda_available(const char **why);
/* The context, device, stream and memory pool (m->cuda). */
pio_status pio_model_cuda_init(pio_model *m, pio_error *err);
void pio_model_cuda_free(pio_model *m);
/* A host weight → its device copy in the same dtype (the host tensor is freed). */
pio_tensor *pio_model_cuda_upload(pio_model *m, pio_tensor *host, pio_error *err);
/* Seeded random weights made on the device (synthetic loads). */
pio_tensor *pio_model_cuda_random(pio_model *m, pio_dtype dt, int ndim, const int64_t *shape,
                                  uint64_t seed, pio_error *err);
/* A zero-filled device tensor (the KV cache). */
pio_tensor *pio_model_cuda_tensor(pio_model *m, pio_dtype dt, int ndim, const int64_t *shape,
                                  pio_error *err);
/* dst ← src on the device (same shape and dtype, both contiguous). */
pio_status pio_model_cuda_copy(pio_model *m, pio_tensor *dst, const pio_tensor *src,
                               pio_error *err);
/* Drops one reference to device storage, returning its block to the pool with the last. */
void pio_model_cuda_release(pio_model *m, pio_storage *s);
/* A device array of the tensors' data pointers (expert weights), made on first use. */
const void *const *pio_model_cuda_pointers(pio_model *m, const pio_tensor *const *ts, int32_t n,
                                           pio_error *err);
/* Once weights and cache are there: RoPE frequencies to the device, then a sync. */
pio_status pio_model_cuda_prepare(pio_model *m, pio_error *err);
/* pio_scratch on the device: activation dtype (bf16 in bf16 mode), LOGITS f32. */
pio_status pio_model_cuda_scratch(pio_model *m, enum pio_scratch_slot slot, int64_t n,
                                  int64_t width, pio_tensor *view, pio_error *err);
size_t pio_model_cuda_scratch_bytes(const pio_model *m);
/* pio_model_forward on the device; *logits is a host tensor. */
pio_status pio_model_cuda_forward(pio_model *m, const pio_batch *b, int32_t n_out,
                                  const pio_tensor **logits, pio_error *err);
pio_dtype pio_model_act_dtype(const pio_model *m);
/* The paged KV cache on the device: the batch's block tables as the forward
 * pass uploaded them (NULL when the cache is contiguous). */
struct pio_cuda_block_table;
const struct pio_cuda_block_table *pio_model_cuda_block_table(const pio_model *m);
/* The cache was reallocated (models/kv.c): a captured step and the block
 * tables, which hold its old addresses and geometry, are dropped. */
void pio_model_cuda_kv_changed(pio_model *m);
/* Rows between device and host memory on the stream (pio_kv_copy_rows). */
pio_status pio_model_cuda_copy_2d(pio_model *m, void *dst, size_t dpitch, const void *src,
                                  size_t spitch, size_t width, size_t height, pio_error *err);
/* Page-locked host memory of at least `bytes`, kept and grown (staging for KV
 * copies to and from host memory); valid until the next call. */
void *pio_model_cuda_staging(pio_model *m, size_t bytes, pio_error *err);
pio_status pio_model_cuda_sync(pio_model *m, pio_error *err);
struct pio_cuda_ctx *pio_model_cuda_ctx(const pio_model *m);
const struct pio_cuda_batch *pio_model_cuda_batch(const pio_model *m);
const pio_tensor *pio_model_cuda_inv_freq(const pio_model *m);

/* Takes tensors about to be freed (model surgery) off the model's list of
 * named weights. */
void pio_model_forget_weights(pio_model *m, pio_tensor *const *ts, size_t n);

/* A borrowed [n, width] f32 view of a scratch slot, growing the slot when
 * needed. The view is a plain struct: nothing to free. */
pio_status pio_scratch(pio_model *m, enum pio_scratch_slot slot, int64_t n, int64_t width,
                       pio_tensor *view, pio_error *err);

/* Rows [r0, r0 + n) of a 2-D tensor (any row stride), as a borrowed view. */
static inline pio_tensor pio_rows_of(const pio_tensor *t, int64_t r0, int64_t n) {
    pio_tensor v = *t;
    v.offset += (size_t)(r0 * t->stride[0]) * pio_dtype_info(t->dtype)->size;
    v.shape[0] = n;
    return v;
}

/* A borrowed view with a new shape over the same contiguous bytes. */
static inline pio_tensor pio_reshape(const pio_tensor *t, int ndim, const int64_t *shape) {
    pio_tensor v = *t;
    v.ndim = ndim;
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        v.shape[i] = shape[i];
        v.stride[i] = stride;
        stride *= shape[i];
    }
    return v;
}

#endif
