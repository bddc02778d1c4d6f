/* models/model_cuda.c: a model on an NVIDIA GPU.
 *
 * The architectures and the layer builders are the same as on the CPU; what
 * changes is where tensors live. Weights are uploaded once, as they load (bf16
 * in bf16 mode, f32 in the f32 reference mode; synthetic weights are made on
 * the device); the KV cache and the activations are device tensors in the
 * activation dtype (bf16 in bf16 mode: every value there is a bf16 value on
 * the CPU too, so keeping them in bf16 changes no number and halves the
 * traffic). Each forward pass uploads its batch (token ids, slots, positions)
 * once, runs the builders (layers_cuda.c) on the context's stream, and copies
 * the logits rows back. A one-token step (decode) is captured as a CUDA graph
 * on its second run and replayed after that: the kernels read the positions
 * from the uploaded batch, so one graph serves every position.
 *
 * The paged KV cache (models/kv.c keeps its bookkeeping on the host): each
 * forward pass also uploads the slots' block tables, to one device address
 * that lives as long as the cache's geometry, so a captured step reads the
 * tables of the step it replays; reconfiguring the cache drops the graph and
 * the tables (pio_model_cuda_kv_changed).
 */
#ifdef PIO_CUDA_KERNELS
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_ops.h"
#include "kv_internal.h"
#include "model_internal.h"

struct pio_model_cuda {
    pio_cuda_ctx *ctx;
    pio_cuda_batch *batch;
    pio_tensor *inv_freq;                /* device f32 [head_dim / 2] */
    pio_tensor *scratch[PIO_SLOT_COUNT]; /* device, activation dtype (LOGITS: f32) */
    pio_tensor *logits_host;             /* host f32 [rows, n_vocab], grown */
    pio_tensor logits_view;              /* what pio_model_forward hands out */
    struct { const void *key; void *ptrs; } *ptr_arrays; /* pio_model_cuda_pointers */
    int n_ptr_arrays, cap_ptr_arrays;
    pio_cuda_graph *graph;               /* the one-token step */
    int graph_state;                     /* GRAPH_* */
    bool graph_logits;                   /* whether the captured step writes logits */
    bool graphs_off;                     /* PIO_CUDA_GRAPHS=0 */
    pio_cuda_block_table *table;         /* paged KV: every slot's blocks, made on first use */
    const int32_t **table_rows;          /* [max_seqs] staging for pio_cuda_block_table_set */
    int32_t *table_lens;                 /* [max_seqs] */
    void *staging;                       /* pinned host memory for KV rows (swap, checkpoints) */
    size_t staging_bytes;
};

enum { GRAPH_NONE, GRAPH_WARM, GRAPH_READY, GRAPH_FAILED };

pio_cuda_ctx *pio_model_cuda_ctx(const pio_model *m) { return m->cuda ? m->cuda->ctx : NULL; }
const pio_cuda_block_table *pio_model_cuda_block_table(const pio_model *m) {
    return m->cuda ? m->cuda->table : NULL;
}
const pio_cuda_batch *pio_model_cuda_batch(const pio_model *m) { return m->cuda->batch; }
const pio_tensor *pio_model_cuda_inv_freq(const pio_model *m) { return m->cuda->inv_freq; }

pio_dtype pio_model_act_dtype(const pio_model *m) {
    return m->round_bf16 ? PIO_BF16 : PIO_F32;
}

bool pio_model_cuda_available(const char **why) {
    static char reason[256];
    pio_error err = {0};
    if (pio_cuda_available(&err) > 0) return true;
    snprintf(reason, sizeof reason, "%s", err.msg[0] ? err.msg : "no usable CUDA device");
    if (why) *why = reason;
    return false;
}

pio_status pio_model_cuda_init(pio_model *m, pio_error *err) {
    m->cuda = calloc(1, sizeof *m->cuda);
    if (!m->cuda) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    const char *g = getenv("PIO_CUDA_GRAPHS");
    m->cuda->graphs_off = g && strcmp(g, "0") == 0;
    if (!(m->cuda->ctx = pio_cuda_ctx_new(NULL, err)) ||
        !(m->cuda->batch = pio_cuda_batch_new(m->cuda->ctx, PIO_PROMPT_CHUNK, err)))
        return pio_error_prefix(err, "starting the CUDA backend");
    return PIO_OK;
}

static void free_table(struct pio_model_cuda *c) {
    pio_cuda_block_table_free(c->ctx, c->table);
    free(c->table_rows);
    free(c->table_lens);
    c->table = NULL;
    c->table_rows = NULL;
    c->table_lens = NULL;
}

void pio_model_cuda_free(pio_model *m) {
    struct pio_model_cuda *c = m->cuda;
    if (!c) return;
    if (c->ctx) free_table(c);
    pio_cuda_host_free(c->staging);
    pio_cuda_graph_free(c->graph);
    free(c->ptr_arrays);
    pio_tensor_free(c->logits_host);
    /* Device tensors still alive (weights, cache, scratch) hold no memory of
     * their own once the context goes: the pool releases every block. */
    for (int i = 0; i < PIO_SLOT_COUNT; i++) pio_tensor_free(c->scratch[i]);
    pio_tensor_free(c->inv_freq);
    if (c->ctx) pio_cuda_batch_free(c->ctx, c->batch);
    pio_cuda_ctx_free(c->ctx);
    free(c);
    m->cuda = NULL;
}

/* A captured step reads and writes fixed device addresses (the batch's arrays,
 * the activation buffers): when one of them is replaced by a larger one, the
 * graph would run on freed memory, so it is dropped and captured again on a
 * later step. Waits for the stream first (the graph may still be running). */
static void drop_graph(struct pio_model_cuda *c) {
    if (!c->graph) {
        if (c->graph_state != GRAPH_FAILED) c->graph_state = GRAPH_NONE;
        return;
    }
    pio_error ignored = {0};
    pio_cuda_sync(c->ctx, &ignored);
    pio_cuda_graph_free(c->graph);
    c->graph = NULL;
    if (c->graph_state != GRAPH_FAILED) c->graph_state = GRAPH_NONE;
}

pio_tensor *pio_model_cuda_tensor(pio_model *m, pio_dtype dt, int ndim, const int64_t *shape,
                                  pio_error *err) {
    return pio_cuda_tensor_new(m->cuda->ctx, dt, ndim, shape, err);
}

void pio_model_cuda_kv_changed(pio_model *m) {
    struct pio_model_cuda *c = m->cuda;
    drop_graph(c);
    pio_error ignored = {0};
    pio_cuda_sync(c->ctx, &ignored); /* nothing in flight reads the old table */
    free_table(c);
}

pio_status pio_model_cuda_copy_2d(pio_model *m, void *dst, size_t dpitch, const void *src,
                                  size_t spitch, size_t width, size_t height, pio_error *err) {
    return pio_cuda_copy_2d(m->cuda->ctx, dst, dpitch, src, spitch, width, height, err);
}

void *pio_model_cuda_staging(pio_model *m, size_t bytes, pio_error *err) {
    struct pio_model_cuda *c = m->cuda;
    if (c->staging && bytes <= c->staging_bytes) return c->staging;
    pio_error ignored = {0};
    pio_cuda_sync(c->ctx, &ignored); /* a copy may still read the old buffer */
    pio_cuda_host_free(c->staging);
    c->staging = NULL;
    c->staging_bytes = 0;
    size_t want = bytes + bytes / 4 > 4096 ? bytes + bytes / 4 : 4096;
    if (!(c->staging = pio_cuda_host_alloc(want, err))) return NULL;
    c->staging_bytes = want;
    return c->staging;
}

pio_status pio_model_cuda_sync(pio_model *m, pio_error *err) { return pio_cuda_sync(m->cuda->ctx, err); }

/* Paged cache: every slot's block table to its fixed device address, ahead of
 * the step (or the graph replaying it) that reads them. Made on first use for
 * the cache's geometry: max_seqs rows of ceil(ctx / block) blocks. */
static pio_status upload_tables(pio_model *m, pio_error *err) {
    struct pio_model_cuda *c = m->cuda;
    const pio_kv *kv = m->kv;
    if (kv->cfg.layout != PIO_KV_PAGED) return PIO_OK;
    if (!c->table) {
        c->table_rows = calloc((size_t)m->max_seqs, sizeof *c->table_rows);
        c->table_lens = calloc((size_t)m->max_seqs, sizeof *c->table_lens);
        if (!c->table_rows || !c->table_lens) {
            free_table(c);
            return pio_error_set(err, PIO_ERR_OOM, "out of memory");
        }
        c->table = pio_cuda_block_table_new(c->ctx, m->max_seqs, pio_kv_max_pos(m), kv->block,
                                            kv->n_blocks, err);
        if (!c->table) {
            free_table(c);
            return err->status;
        }
        drop_graph(c); /* a step captured before read no table */
    }
    for (int32_t s = 0; s < m->max_seqs; s++) {
        c->table_rows[s] = kv->seqs[s].table;
        c->table_lens[s] = kv->seqs[s].n_table;
    }
    return pio_cuda_block_table_set(c->ctx, c->table, c->table_rows, c->table_lens, err);
}

pio_tensor *pio_model_cuda_upload(pio_model *m, pio_tensor *host, pio_error *err) {
    pio_tensor *dev = pio_cuda_upload(m->cuda->ctx, host, host->dtype, err);
    pio_tensor_free(host);
    return dev;
}

/* Uniform in [-a, a) has standard deviation a / sqrt(3): a = 0.02 · sqrt(3)
 * gives the CPU's normal(0, 0.02) spread (not its values). */
pio_tensor *pio_model_cuda_random(pio_model *m, pio_dtype dt, int ndim, const int64_t *shape,
                                  uint64_t seed, pio_error *err) {
    pio_tensor *t = pio_cuda_tensor_new(m->cuda->ctx, dt, ndim, shape, err);
    if (t && pio_cuda_fill_random(m->cuda->ctx, t, seed, 0.0346410162f, err) != PIO_OK) {
        pio_cuda_tensor_free(m->cuda->ctx, t);
        return NULL;
    }
    return t;
}

pio_status pio_model_cuda_copy(pio_model *m, pio_tensor *dst, const pio_tensor *src,
                               pio_error *err) {
    return pio_cuda_copy(m->cuda->ctx, dst, src, err);
}

/* Device arrays of the experts' weight pointers, made once per weight list
 * (keyed by the list's address, stable for a loaded model) before any graph
 * capture: the first forward pass runs directly. */
const void *const *pio_model_cuda_pointers(pio_model *m, const pio_tensor *const *ts, int32_t n,
                                           pio_error *err) {
    struct pio_model_cuda *c = m->cuda;
    for (int i = 0; i < c->n_ptr_arrays; i++)
        if (c->ptr_arrays[i].key == ts) return (const void *const *)c->ptr_arrays[i].ptrs;
    if (pio_cuda_capturing(c->ctx)) {
        pio_error_set(err, PIO_ERR_INVALID, "expert pointers made during a graph capture");
        return NULL;
    }
    if (c->n_ptr_arrays == c->cap_ptr_arrays) {
        int cap = c->cap_ptr_arrays ? 2 * c->cap_ptr_arrays : 64;
        void *grown = realloc(c->ptr_arrays, (size_t)cap * sizeof *c->ptr_arrays);
        if (!grown) {
            pio_error_set(err, PIO_ERR_OOM, "out of memory");
            return NULL;
        }
        c->ptr_arrays = grown;
        c->cap_ptr_arrays = cap;
    }
    /* 8-byte pointers in an f32-typed host tensor of 2n values, uploaded as is. */
    int64_t words = 2 * (int64_t)n;
    pio_tensor *host = pio_tensor_new(PIO_F32, 1, &words, err);
    if (!host) return NULL;
    const void **p = pio_tensor_data(host);
    for (int32_t e = 0; e < n; e++) p[e] = pio_tensor_data(ts[e]);
    pio_tensor *dev = pio_cuda_upload(c->ctx, host, PIO_F32, err);
    pio_tensor_free(host);
    if (!dev) return NULL;
    void *ptrs = pio_tensor_data(dev);
    pio_tensor_free(dev); /* the block stays in the pool until the context goes */
    c->ptr_arrays[c->n_ptr_arrays].key = ts;
    c->ptr_arrays[c->n_ptr_arrays].ptrs = ptrs;
    c->n_ptr_arrays++;
    return (const void *const *)ptrs;
}

void pio_model_cuda_release(pio_model *m, pio_storage *s) {
    if (s && s->kind == PIO_STORAGE_DEVICE && __atomic_load_n(&s->refcount, __ATOMIC_ACQUIRE) == 1)
        pio_cuda_free(m->cuda->ctx, s->base);
    pio_storage_release(s);
}

pio_status pio_model_cuda_prepare(pio_model *m, pio_error *err) {
    int64_t half = m->hp.head_dim / 2;
    pio_tensor *host = pio_tensor_new(PIO_F32, 1, &half, err);
    if (!host) return err->status;
    memcpy(pio_tensor_data(host), m->inv_freq, (size_t)half * sizeof(float));
    m->cuda->inv_freq = pio_model_cuda_upload(m, host, err);
    if (!m->cuda->inv_freq) return err->status;
    /* Projections that read the same input are fused on the device (q|k|v and
     * gate|up: the same numbers, one matrix-vector product instead of three or
     * two). At batch 1 each product is short enough that its launch and ramp
     * cost as much as a third of it (measured on an H100: q, k, v apart 33.5 us,
     * fused 18.8 us per layer of Qwen3-4B). */
    if (m->arch->fuse) {
        pio_surgery_report rep = {0};
        pio_status st = m->arch->fuse(m, true, true, &rep, err);
        if (st) return pio_error_prefix(err, "fusing projections on the device");
    }
    return pio_cuda_sync(m->cuda->ctx, err);
}

pio_status pio_model_cuda_scratch(pio_model *m, enum pio_scratch_slot slot, int64_t n,
                                  int64_t width, pio_tensor *view, pio_error *err) {
    struct pio_model_cuda *c = m->cuda;
    pio_tensor *buf = c->scratch[slot];
    if (!buf || pio_tensor_numel(buf) < n * width) {
        if (pio_cuda_capturing(c->ctx))
            return pio_error_set(err, PIO_ERR_INVALID, "activations grew during a graph capture");
        /* Logits and router logits are f32; MOE_IDX holds int32 and f32 arrays. */
        bool f32 = slot == PIO_SLOT_LOGITS || slot == PIO_SLOT_ROUTER || slot == PIO_SLOT_MOE_IDX;
        pio_dtype dt = f32 ? PIO_F32 : pio_model_act_dtype(m);
        int64_t len = n * width;
        drop_graph(c);
        pio_cuda_tensor_free(c->ctx, buf);
        buf = c->scratch[slot] = pio_cuda_tensor_new(c->ctx, dt, 1, &len, err);
        if (!buf) return pio_error_prefix(err, "activations for %lld tokens", (long long)n);
    }
    int64_t shape[2] = {n, width};
    *view = pio_reshape(buf, 2, shape);
    return PIO_OK;
}

size_t pio_model_cuda_scratch_bytes(const pio_model *m) {
    size_t n = 0;
    for (int i = 0; m->cuda && i < PIO_SLOT_COUNT; i++)
        if (m->cuda->scratch[i]) n += pio_tensor_nbytes(m->cuda->scratch[i]);
    return n;
}

/* The one-token step: run it directly the first time (every buffer gets its
 * size), capture it the second time, replay it after that. A capture that
 * fails leaves direct launches for good. */
static pio_status run_step(pio_model *m, const pio_batch *b, int32_t n_out, pio_error *err) {
    struct pio_model_cuda *c = m->cuda;
    bool one = b->n_tokens == 1 && !c->graphs_off;
    if (one && c->graph_state == GRAPH_READY && c->graph_logits == (n_out == 1))
        return pio_cuda_graph_launch(c->ctx, c->graph, err);
    if (!one || c->graph_state == GRAPH_FAILED || c->graph_state == GRAPH_NONE ||
        c->graph_logits != (n_out == 1)) {
        pio_status st = m->arch->forward(m, b, &m->logits, err);
        if (st == PIO_OK && one) {
            c->graph_state = GRAPH_WARM;
            c->graph_logits = n_out == 1;
        }
        return st;
    }
    /* GRAPH_WARM, same shape: capture. */
    pio_error cap = {0};
    pio_status st = pio_cuda_graph_begin(c->ctx, &cap);
    if (st == PIO_OK) {
        pio_status fwd = m->arch->forward(m, b, &m->logits, &cap);
        st = pio_cuda_graph_end(c->ctx, &c->graph, fwd == PIO_OK ? &cap : &(pio_error){0});
        if (fwd != PIO_OK) st = fwd;
    }
    if (st != PIO_OK) {
        if (getenv("PIO_VERBOSE"))
            fprintf(stderr, "pio: CUDA graph capture failed (%s); launching directly\n", cap.msg);
        c->graph_state = GRAPH_FAILED;
        return m->arch->forward(m, b, &m->logits, err);
    }
    c->graph_state = GRAPH_READY;
    return pio_cuda_graph_launch(c->ctx, c->graph, err);
}

pio_status pio_model_cuda_forward(pio_model *m, const pio_batch *b, int32_t n_out,
                                  const pio_tensor **logits, pio_error *err) {
    struct pio_model_cuda *c = m->cuda;
    pio_status st;
    if (b->n_tokens > c->batch->cap) { /* room for the largest batch seen */
        pio_cuda_batch *grown = pio_cuda_batch_new(c->ctx, b->n_tokens, err);
        if (!grown) return err->status;
        drop_graph(c);
        pio_cuda_batch_free(c->ctx, c->batch);
        c->batch = grown;
    }
    int64_t V = m->hp.n_vocab, rows = n_out ? n_out : 1;
    if ((st = pio_cuda_batch_set(c->ctx, c->batch, b->token, b->seq, b->pos, b->n_tokens, err)) ||
        (st = upload_tables(m, err)) ||
        (st = pio_model_cuda_scratch(m, PIO_SLOT_LOGITS, rows, V, &m->logits, err)))
        return st;
    m->logits.shape[0] = n_out;
    if ((st = run_step(m, b, n_out, err))) return st;

    if (!c->logits_host || pio_tensor_numel(c->logits_host) < rows * V) {
        pio_tensor_free(c->logits_host);
        int64_t len = rows * V;
        if (!(c->logits_host = pio_tensor_new(PIO_F32, 1, &len, err))) return err->status;
    }
    int64_t shape[2] = {n_out, V};
    c->logits_view = pio_reshape(c->logits_host, 2, shape);
    if (n_out > 0 && (st = pio_cuda_copy_to_host(c->ctx, &c->logits_view, &m->logits, err)))
        return st;
    if ((st = pio_cuda_sync(c->ctx, err))) return st;
    if (logits) *logits = &c->logits_view;
    return PIO_OK;
}

#else /* no CUDA backend in this build: models never get m->cuda */
#include "model_internal.h"

bool pio_model_cuda_available(const char **why) {
    if (why) *why = "this pio was built without its backend";
    return false;
}
static pio_status absent(pio_error *err) {
    return pio_error_set(err, PIO_ERR_UNSUPPORTED, "this pio was built without its CUDA backend");
}
pio_status pio_model_cuda_init(pio_model *m, pio_error *err) { return absent(err); }
void pio_model_cuda_free(pio_model *m) { (void)m; }
pio_tensor *pio_model_cuda_upload(pio_model *m, pio_tensor *host, pio_error *err) {
    pio_tensor_free(host);
    absent(err);
    return NULL;
}
pio_tensor *pio_model_cuda_random(pio_model *m, pio_dtype dt, int ndim, const int64_t *shape,
                                  uint64_t seed, pio_error *err) {
    absent(err);
    return NULL;
}
pio_tensor *pio_model_cuda_tensor(pio_model *m, pio_dtype dt, int ndim, const int64_t *shape,
                                  pio_error *err) {
    absent(err);
    return NULL;
}
pio_status pio_model_cuda_prepare(pio_model *m, pio_error *err) { return absent(err); }
pio_status pio_model_cuda_copy(pio_model *m, pio_tensor *dst, const pio_tensor *src,
                               pio_error *err) {
    return absent(err);
}
void pio_model_cuda_release(pio_model *m, pio_storage *s) { pio_storage_release(s); }
pio_status pio_model_cuda_scratch(pio_model *m, enum pio_scratch_slot slot, int64_t n,
                                  int64_t width, pio_tensor *view, pio_error *err) {
    return absent(err);
}
size_t pio_model_cuda_scratch_bytes(const pio_model *m) { return 0; }
pio_status pio_model_cuda_forward(pio_model *m, const pio_batch *b, int32_t n_out,
                                  const pio_tensor **logits, pio_error *err) {
    return absent(err);
}
pio_dtype pio_model_act_dtype(const pio_model *m) { return m->round_bf16 ? PIO_BF16 : PIO_F32; }
const void *const *pio_model_cuda_pointers(pio_model *m, const pio_tensor *const *ts, int32_t n,
                                           pio_error *err) {
    absent(err);
    return NULL;
}
const struct pio_cuda_block_table *pio_model_cuda_block_table(const pio_model *m) { return NULL; }
void pio_model_cuda_kv_changed(pio_model *m) { (void)m; }
pio_status pio_model_cuda_copy_2d(pio_model *m, void *dst, size_t dpitch, const void *src,
                                  size_t spitch, size_t width, size_t height, pio_error *err) {
    return absent(err);
}
void *pio_model_cuda_staging(pio_model *m, size_t bytes, pio_error *err) {
    absent(err);
    return NULL;
}
pio_status pio_model_cuda_sync(pio_model *m, pio_error *err) { return absent(err); }
#endif
