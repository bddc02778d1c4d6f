/* models/kv_internal.h: the KV cache's state (models/kv.c) as the loader, the
 * forward pass, generation and checkpoints see it. Not part of the public API
 * (that is pio/kv.h). */
#ifndef PIO_KV_INTERNAL_H
#define PIO_KV_INTERNAL_H

#include "attention_paged.h"
#include "pio/kv.h"

struct pio_model;
struct pio_batch;

/* One sequence slot. */
typedef struct pio_kv_seq {
    int32_t len;        /* positions held: highest written + 1 */
    int32_t *tokens;    /* [cap_tokens] token id at each position < len */
    int32_t cap_tokens;
    int32_t *table;     /* paged: [cap_table] pool block of each logical block, -1 absent */
    int32_t n_table, cap_table;
} pio_kv_seq;

/* One pool block (paged). A block is in exactly one state: referenced (ref >
 * 0), cached (ref 0, published: on the LRU list), or free (on the free list). */
typedef struct pio_kv_block {
    int32_t ref;
    bool cached;          /* published in the prefix cache under key */
    uint64_t key, parent; /* hash chain: key = H(parent, tokens) */
    int32_t prev, next;   /* free list or LRU list (oldest first) */
    int32_t hnext;        /* next block in the same hash bucket */
} pio_kv_block;

typedef struct pio_kv {
    pio_kv_config cfg;    /* in effect, defaults filled in */
    bool custom;          /* not the default (contiguous, model dtype, full): forward
                             goes through the view (pio_kv_attend) */
    pio_kv_elem elem;
    int32_t block, n_blocks; /* contiguous: block = ctx, n_blocks = max_seqs */
    size_t bytes_per_block, bytes;
    void *storage;        /* custom only: every layer's K, V, scales in one allocation */
    pio_kv_pool *pools;   /* [n_layer] */
    pio_kv_seq *seqs;     /* [max_seqs] */
    pio_kv_table *tables; /* [max_seqs] the kernels' view of seqs[].table */
    /* paged bookkeeping */
    pio_kv_block *blocks; /* [n_blocks] */
    int32_t free_head, free_tail, lru_head, lru_tail, n_free, n_cached;
    int32_t *buckets;     /* [n_buckets] first block of each hash bucket, -1 */
    int32_t n_buckets;
    int32_t *block_tokens; /* [n_blocks, block] the token ids a cached block holds */
    int64_t hits, misses, reused, evictions;
} pio_kv;

/* Loader: the cache for cfg (NULL: the default); kv_bytes is set. */
pio_status pio_kv_init(struct pio_model *m, const pio_kv_config *cfg, pio_error *err);
void pio_kv_free(struct pio_model *m);

/* Bytes cfg would take on this model (the loader's estimate). */
pio_status pio_kv_bytes_for(const struct pio_model *m, const pio_kv_config *cfg, size_t *bytes,
                            pio_error *err);

/* The highest position + 1 a slot may reach (ctx, or unbounded for windowed
 * attention on the paged layout). */
int32_t pio_kv_max_pos(const struct pio_model *m);

/* Before a forward: per slot in the batch, drops positions at and past the
 * batch's first (a rewind), reserves room, makes written blocks private
 * (copy on write of shared or cached blocks) and records the tokens. */
pio_status pio_kv_prepare(struct pio_model *m, const struct pio_batch *b, pio_error *err);

/* After a forward: windowed slots give back the blocks no later token sees. */
void pio_kv_trim(struct pio_model *m, const struct pio_batch *b);

/* The layer's attention through the configured cache: writes k3, v3 and
 * attends q3 into a3 (all [n, heads, D] views, as in pio_build_attn). */
pio_status pio_kv_attend(struct pio_model *m, int layer, const struct pio_batch *b,
                         const pio_tensor *q3, const pio_tensor *k3, const pio_tensor *v3,
                         float scale, pio_tensor *a3, pio_error *err);

/* Whether layer's attention goes through pio_kv_attend: a custom cache, or a
 * window (the strategy's, or config.json's sliding layers). */
bool pio_kv_via_view(const struct pio_model *m, int layer);

/* Layer's K and V caches as tensors: the loader's [max_seqs, ctx, kv_heads,
 * head_dim] for the default cache, else headers over the layer's pools
 * [n_blocks, block, kv_heads, head_dim] (f32 and bf16 only; borrowed: valid
 * until the cache is reconfigured). What the CUDA builders hand the kernels. */
void pio_kv_layer_tensors(const struct pio_model *m, int layer, pio_tensor *k, pio_tensor *v);

/* Copies `height` rows of `width` bytes (pitches apart) where either side may
 * be the cache's storage: memcpy on the CPU; on CUDA a device copy enqueued on
 * the stream (host memory on either side; pio_model_cuda_sync before reading
 * a host destination or reusing a host source). */
pio_status pio_kv_copy_rows(struct pio_model *m, void *dst, size_t dpitch, const void *src,
                            size_t spitch, size_t width, size_t height, pio_error *err);

/* Model surgery dropped these layers (sorted): close the gaps in the pools. */
void pio_kv_remove_layers(struct pio_model *m, const int32_t *layers, size_t n);

/* Checkpoints: the slot's storage of one position in one layer. */
const char *pio_kv_format_name(const struct pio_model *m);

#endif
