/* The KV cache by sequence slot (pio/kv.h): layouts, the block pool, the
 * prefix cache, and the forward pass's attention through them.
 *
 * The default cache (contiguous, the model's dtype, full attention) is the
 * loader's [max_seqs, ctx, kv_heads, head_dim] tensors per layer, which the
 * forward pass reads with pio_cpu_attention as it always has (the CUDA path
 * reads the same tensors). Anything else is "custom": one allocation holds
 * every layer's pool, and the forward pass goes through pio_kv_attend.
 *
 * On CUDA the paged layout (in the model's dtype, full attention) is the one
 * custom cache: the allocation is device memory, the bookkeeping here stays
 * on the host (block ids are device-agnostic), the forward pass uploads the
 * batch's block tables (models/model_cuda.c) and the kernels read through
 * them; copies of pool rows (copy on write, swap, checkpoints) go through
 * pio_kv_copy_rows, a memcpy on the CPU and a device copy on CUDA.
 *
 * Paged pool bookkeeping: each block is referenced (ref > 0), cached (ref 0,
 * published in the prefix cache, on the LRU list, oldest first) or free (on
 * the free list). Taking a block takes a free one first, else evicts the
 * least recently used cached one. Prefix keys chain: key(b) = XXH3(tokens of
 * b, seed = key(b - 1)), seed of block 0 a constant; a lookup also compares
 * the parent key and the token ids, so a hash collision cannot attach wrong
 * KV. Positions and keys in a block never change while it is shared: a
 * write into a shared or cached block copies it first (copy on write).
 */
#define _GNU_SOURCE
#include "kv_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "model_internal.h"

enum { DEFAULT_BLOCK = 16 };
static const uint64_t ROOT_KEY = 0x70696f2d6b760001ull; /* "pio-kv" v1: block 0's parent */

const char *pio_kv_layout_name(pio_kv_layout l) { return l == PIO_KV_PAGED ? "paged" : "contiguous"; }

const char *pio_kv_attention_name(pio_kv_attention a) {
    return a == PIO_ATTN_SLIDING ? "sliding" : a == PIO_ATTN_SINK ? "sink" : "full";
}

static pio_kv_elem model_elem(const pio_model *m) {
    return m->dtype == PIO_F32 ? PIO_KV_ELEM_F32 : PIO_KV_ELEM_BF16; /* as transformers' cache */
}

static const char *elem_name(pio_kv_elem e) {
    return e == PIO_KV_ELEM_F32 ? "f32" : e == PIO_KV_ELEM_BF16 ? "bf16" : "int8";
}

const char *pio_kv_format_name(const pio_model *m) { return elem_name(m->kv->elem); }

/* ---- configuration ------------------------------------------------------------ */

static pio_kv_elem format_elem(const pio_model *m, pio_kv_format f) {
    return f == PIO_KV_INT8 ? PIO_KV_ELEM_I8 : f == PIO_KV_F32 ? PIO_KV_ELEM_F32
         : f == PIO_KV_BF16 ? PIO_KV_ELEM_BF16 : model_elem(m);
}

static bool is_default(const pio_kv_config *c) {
    return c->layout == PIO_KV_CONTIGUOUS && c->format == PIO_KV_MODEL_DTYPE &&
           c->attention == PIO_ATTN_FULL;
}

bool pio_kv_config_is_default(const pio_model *m, const pio_kv_config *cfg) {
    pio_kv_config c = cfg ? *cfg : (pio_kv_config){0};
    if ((unsigned)c.format <= PIO_KV_BF16 && format_elem(m, c.format) == model_elem(m))
        c.format = PIO_KV_MODEL_DTYPE;
    return is_default(&c);
}

static size_t block_bytes(const pio_model *m, pio_kv_elem e, int64_t block) {
    const pio_hparams *hp = &m->hp;
    size_t per_row = (size_t)(2 * hp->head_dim) * pio_kv_elem_size(e) +
                     (e == PIO_KV_ELEM_I8 ? 2 * sizeof(float) : 0); /* K, V (and their scales) */
    return (size_t)hp->n_layer * (size_t)block * (size_t)hp->n_head_kv * per_row;
}

/* Checks cfg and fills in its defaults (into *out). */
static pio_status normalize(const pio_model *m, const pio_kv_config *cfg, pio_kv_config *out,
                            pio_error *err) {
    pio_kv_config c = cfg ? *cfg : (pio_kv_config){0};
    if (c.layout != PIO_KV_CONTIGUOUS && c.layout != PIO_KV_PAGED)
        return pio_error_set(err, PIO_ERR_INVALID, "kv: unknown layout %d", (int)c.layout);
    if ((unsigned)c.format > PIO_KV_BF16)
        return pio_error_set(err, PIO_ERR_INVALID, "kv: unknown format %d", (int)c.format);
    if (format_elem(m, c.format) == model_elem(m)) c.format = PIO_KV_MODEL_DTYPE; /* its own */
    if (c.attention > PIO_ATTN_SINK)
        return pio_error_set(err, PIO_ERR_INVALID, "kv: unknown attention %d", (int)c.attention);
    if (c.block_size < 0)
        return pio_error_set(err, PIO_ERR_INVALID, "kv: block size must be >= 1, got %d",
                             c.block_size);
    if (c.n_blocks < 0)
        return pio_error_set(err, PIO_ERR_INVALID, "kv: number of blocks must be >= 1, got %d",
                             c.n_blocks);
    if (c.attention == PIO_ATTN_FULL) {
        c.window = c.sink = 0;
    } else {
        if (c.window < 1)
            return pio_error_set(err, PIO_ERR_INVALID,
                                 "kv: %s attention needs a window >= 1, got %d",
                                 pio_kv_attention_name(c.attention), c.window);
        if (c.sink < 0)
            return pio_error_set(err, PIO_ERR_INVALID, "kv: sink must be >= 0, got %d", c.sink);
        if (c.attention == PIO_ATTN_SLIDING) c.sink = 0;
    }
    if (c.prefix_cache && c.layout != PIO_KV_PAGED)
        return pio_error_set(err, PIO_ERR_INVALID,
                             "kv: prefix caching needs the paged layout (its unit is a block)");
    if (m->device != PIO_DEVICE_CPU) { /* the device runs the paged layout in its own dtype */
        const char *dev = pio_device_name(m->device);
        if (c.format == PIO_KV_INT8)
            return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                                 "kv: int8 KV runs on the CPU only for now (the model is on "
                                 "'%s')", dev);
        if (c.format != PIO_KV_MODEL_DTYPE)
            return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                                 "kv: on '%s' the KV cache is kept in the model's dtype (%s); "
                                 "a %s cache runs on the CPU only for now", dev,
                                 elem_name(model_elem(m)), elem_name(format_elem(m, c.format)));
        if (c.attention != PIO_ATTN_FULL)
            return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                                 "kv: %s attention runs on the CPU only for now (the model is "
                                 "on '%s')", pio_kv_attention_name(c.attention), dev);
    }
    pio_kv_elem e = format_elem(m, c.format);
    if (c.layout == PIO_KV_CONTIGUOUS) {
        c.block_size = m->n_ctx;
        c.n_blocks = m->max_seqs;
        c.max_bytes = 0;
    } else {
        if (c.block_size == 0) c.block_size = DEFAULT_BLOCK;
        if (c.n_blocks == 0 && c.max_bytes) {
            size_t per = block_bytes(m, e, c.block_size);
            if (c.max_bytes / per < 1)
                return pio_error_set(err, PIO_ERR_INVALID,
                                     "kv: a budget of %zu bytes holds no block (one block of %d "
                                     "positions takes %zu bytes)", c.max_bytes, c.block_size, per);
            if (c.max_bytes / per > INT32_MAX)
                return pio_error_set(err, PIO_ERR_INVALID, "kv: a budget of %zu bytes is too many "
                                     "blocks", c.max_bytes);
            c.n_blocks = (int32_t)(c.max_bytes / per);
        } else if (c.n_blocks == 0) {
            int64_t per_seq = ((int64_t)m->n_ctx + c.block_size - 1) / c.block_size;
            c.n_blocks = (int32_t)(per_seq * m->max_seqs);
        }
        c.max_bytes = 0;
    }
    *out = c;
    return PIO_OK;
}

pio_status pio_kv_bytes_for(const pio_model *m, const pio_kv_config *cfg, size_t *bytes,
                            pio_error *err) {
    pio_kv_config c;
    pio_status st = normalize(m, cfg, &c, err);
    if (st) return st;
    *bytes = (size_t)c.n_blocks * block_bytes(m, format_elem(m, c.format), c.block_size);
    return PIO_OK;
}

pio_status pio_model_kv_bytes(const pio_model *m, const pio_kv_config *cfg, size_t *bytes,
                              pio_error *err) {
    return pio_kv_bytes_for(m, cfg ? cfg : &m->kv->cfg, bytes, err);
}

void pio_model_kv_config_get(const pio_model *m, pio_kv_config *out) { *out = m->kv->cfg; }

/* ---- allocation ------------------------------------------------------------- */

/* The default cache's pools are views of the loader's tensors. */
static void adopt_tensors(pio_model *m, pio_kv *kv) {
    const pio_hparams *hp = &m->hp;
    for (int l = 0; l < hp->n_layer; l++)
        kv->pools[l] = (pio_kv_pool){.k = pio_tensor_data(m->cache_k[l]),
                                     .v = pio_tensor_data(m->cache_v[l]), .elem = kv->elem,
                                     .n_blocks = m->max_seqs, .block = m->n_ctx,
                                     .kv_heads = hp->n_head_kv, .dk = hp->head_dim,
                                     .dv = hp->head_dim};
}

/* A zero-filled tensor on the model's device. */
static pio_tensor *tensor_new(pio_model *m, pio_dtype dt, int ndim, const int64_t *shape,
                              pio_error *err) {
    if (m->cuda) return pio_model_cuda_tensor(m, dt, ndim, shape, err);
    return pio_tensor_new(dt, ndim, shape, err);
}

/* Device memory goes back to the context's pool with its last reference
 * (pio_storage_release alone would keep it until the context goes). */
static void storage_release(pio_model *m, pio_storage *s) {
    if (s && s->kind == PIO_STORAGE_DEVICE) pio_model_cuda_release(m, s);
    else pio_storage_release(s);
}

static void tensor_free(pio_model *m, pio_tensor *t) {
    if (!t) return;
    pio_storage *s = t->storage;
    pio_storage_retain(s);
    pio_tensor_free(t);
    storage_release(m, s);
}

/* The default cache when reconfiguring back to it: per layer K and V tensors
 * [max_seqs, ctx, kv_heads, head_dim] on the model's device, as the loader
 * makes them. */
static pio_status alloc_tensors(pio_model *m, pio_kv *kv, pio_error *err) {
    const pio_hparams *hp = &m->hp;
    int64_t shape[4] = {m->max_seqs, m->n_ctx, hp->n_head_kv, hp->head_dim};
    pio_dtype dt = m->dtype == PIO_F32 ? PIO_F32 : PIO_BF16;
    m->cache_k = calloc((size_t)hp->n_layer, sizeof *m->cache_k);
    m->cache_v = calloc((size_t)hp->n_layer, sizeof *m->cache_v);
    if (!m->cache_k || !m->cache_v) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    for (int l = 0; l < hp->n_layer; l++) {
        m->cache_k[l] = tensor_new(m, dt, 4, shape, err);
        m->cache_v[l] = m->cache_k[l] ? tensor_new(m, dt, 4, shape, err) : NULL;
        if (!m->cache_v[l])
            return pio_error_set(err, PIO_ERR_OOM,
                                 "out of memory for the KV cache: %zu MiB for %d sequence(s) of "
                                 "%d positions (lower ctx)", kv->bytes >> 20, m->max_seqs,
                                 m->n_ctx);
    }
    adopt_tensors(m, kv);
    return PIO_OK;
}

static void free_tensors(pio_model *m, int32_t n_layer) {
    for (int l = 0; m->cache_k && l < n_layer; l++) tensor_free(m, m->cache_k[l]);
    for (int l = 0; m->cache_v && l < n_layer; l++) tensor_free(m, m->cache_v[l]);
    free(m->cache_k);
    free(m->cache_v);
    m->cache_k = m->cache_v = NULL;
}

/* Zeroed storage for the custom cache on the model's device (NULL + err). */
static pio_storage *storage_new(pio_model *m, const pio_kv *kv, pio_error *err) {
    if (!m->cuda) return pio_storage_new_heap(kv->bytes, err);
    /* A device tensor's storage (int8, which has no device elements, is refused before). */
    const pio_dtype dt = kv->elem == PIO_KV_ELEM_F32 ? PIO_F32 : PIO_BF16;
    const int64_t numel = (int64_t)(kv->bytes / pio_kv_elem_size(kv->elem));
    pio_tensor *t = pio_model_cuda_tensor(m, dt, 1, &numel, err);
    if (!t) return NULL;
    pio_storage *s = t->storage;
    pio_storage_retain(s);
    pio_tensor_free(t); /* the storage stays, held by the cache */
    return s;
}

/* A custom cache: one zeroed allocation; per layer (int8: K and V scales,
 * then) K and V, so every region keeps its elements' alignment. On CUDA the
 * pools' pointers are device addresses: host code reaches their bytes only
 * through pio_kv_copy_rows. */
static pio_status alloc_storage(pio_model *m, pio_kv *kv, pio_error *err) {
    const pio_hparams *hp = &m->hp;
    pio_storage *s = storage_new(m, kv, err);
    if (!s)
        return pio_error_set(err, PIO_ERR_OOM,
                             "out of memory for the KV cache: %zu MiB (%d blocks of %d "
                             "positions)", kv->bytes >> 20, kv->n_blocks, kv->block);
    kv->storage = s;
    char *p = s->data;
    const size_t rows = (size_t)kv->n_blocks * (size_t)kv->block * (size_t)hp->n_head_kv;
    const size_t es = pio_kv_elem_size(kv->elem);
    for (int l = 0; l < hp->n_layer; l++) {
        pio_kv_pool *pl = &kv->pools[l];
        *pl = (pio_kv_pool){.elem = kv->elem, .n_blocks = kv->n_blocks, .block = kv->block,
                            .kv_heads = hp->n_head_kv, .dk = hp->head_dim, .dv = hp->head_dim};
        if (kv->elem == PIO_KV_ELEM_I8) {
            pl->k_scale = (float *)p, p += rows * sizeof(float);
            pl->v_scale = (float *)p, p += rows * sizeof(float);
        }
        pl->k = p, p += rows * (size_t)hp->head_dim * es;
        pl->v = p, p += rows * (size_t)hp->head_dim * es;
    }
    return PIO_OK;
}

static void free_seqs(pio_kv *kv, int32_t max_seqs) {
    for (int32_t s = 0; kv->seqs && s < max_seqs; s++) {
        free(kv->seqs[s].tokens);
        free(kv->seqs[s].table);
    }
    free(kv->seqs);
    free(kv->tables);
    free(kv->blocks);
    free(kv->buckets);
    free(kv->block_tokens);
    free(kv->pools);
}

/* Free list 0 .. n-1, no cached block, empty hash buckets. */
static pio_status init_blocks(pio_kv *kv, pio_error *err) {
    kv->blocks = calloc((size_t)kv->n_blocks, sizeof *kv->blocks);
    kv->n_buckets = 1;
    while (kv->n_buckets < kv->n_blocks) kv->n_buckets *= 2;
    kv->buckets = malloc((size_t)kv->n_buckets * sizeof *kv->buckets);
    kv->block_tokens =
        kv->cfg.prefix_cache ? malloc((size_t)kv->n_blocks * (size_t)kv->block * sizeof(int32_t))
                             : NULL;
    if (!kv->blocks || !kv->buckets || (kv->cfg.prefix_cache && !kv->block_tokens))
        return pio_error_set(err, PIO_ERR_OOM, "out of memory for the KV block table");
    for (int32_t i = 0; i < kv->n_buckets; i++) kv->buckets[i] = -1;
    for (int32_t i = 0; i < kv->n_blocks; i++)
        kv->blocks[i] = (pio_kv_block){.prev = i - 1, .next = i + 1 < kv->n_blocks ? i + 1 : -1,
                                       .hnext = -1};
    kv->free_head = 0, kv->free_tail = kv->n_blocks - 1, kv->n_free = kv->n_blocks;
    kv->lru_head = kv->lru_tail = -1, kv->n_cached = 0;
    return PIO_OK;
}

/* Builds the state for cfg into *kv (storage included); m->kv untouched. */
static pio_status build(pio_model *m, const pio_kv_config *cfg, pio_kv *kv, pio_error *err) {
    pio_kv_config c;
    pio_status st = normalize(m, cfg, &c, err);
    if (st) return st;
    *kv = (pio_kv){.cfg = c, .custom = !is_default(&c),
                   .elem = format_elem(m, c.format),
                   .block = c.block_size, .n_blocks = c.n_blocks};
    kv->bytes_per_block = block_bytes(m, kv->elem, kv->block);
    kv->bytes = (size_t)kv->n_blocks * kv->bytes_per_block;
    kv->pools = calloc((size_t)m->hp.n_layer, sizeof *kv->pools);
    kv->seqs = calloc((size_t)m->max_seqs, sizeof *kv->seqs);
    kv->tables = calloc((size_t)m->max_seqs, sizeof *kv->tables);
    if (!kv->pools || !kv->seqs || !kv->tables)
        st = pio_error_set(err, PIO_ERR_OOM, "out of memory for the KV cache's tables");
    if (st == PIO_OK && c.layout == PIO_KV_PAGED) st = init_blocks(kv, err);
    if (st == PIO_OK && kv->custom) st = alloc_storage(m, kv, err);
    if (st) {
        storage_release(m, kv->storage);
        free_seqs(kv, m->max_seqs);
    }
    return st;
}

pio_status pio_kv_init(pio_model *m, const pio_kv_config *cfg, pio_error *err) {
    if (m->device != PIO_DEVICE_CPU && m->hp.sliding_window > 0)
        for (int l = 0; l < m->hp.n_layer; l++)
            if (m->hp.sliding_layer[l])
                return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                                     "config.json asks for sliding-window attention (window %d, "
                                     "layer %d): it runs on the CPU only for now (the model is "
                                     "on '%s')", m->hp.sliding_window, l,
                                     pio_device_name(m->device));
    pio_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    pio_status st = build(m, cfg, kv, err);
    if (st) {
        free(kv);
        return st;
    }
    m->kv = kv;
    if (!kv->custom) adopt_tensors(m, kv); /* the loader made them */
    m->kv_bytes = kv->bytes;
    return PIO_OK;
}

/* The state only: the loader frees the default cache's tensors. */
void pio_kv_free(pio_model *m) {
    pio_kv *kv = m->kv;
    if (!kv) return;
    storage_release(m, kv->storage);
    free_seqs(kv, m->max_seqs);
    free(kv);
    m->kv = NULL;
}

pio_status pio_model_kv_configure(pio_model *m, const pio_kv_config *cfg, pio_error *err) {
    if (m->device != PIO_DEVICE_CPU && !m->kv->custom && pio_kv_config_is_default(m, cfg))
        return PIO_OK; /* what it has */
    for (int32_t s = 0; s < m->max_seqs; s++)
        if (m->kv->seqs[s].len > 0 || m->kv->seqs[s].n_table > 0)
            return pio_error_set(err, PIO_ERR_INVALID,
                                 "kv: sequence %d holds %d positions; free every sequence "
                                 "before reconfiguring the cache", s, m->kv->seqs[s].len);
    pio_kv *next = calloc(1, sizeof *next);
    if (!next) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    pio_status st = build(m, cfg, next, err);
    if (st) {
        free(next);
        return st;
    }
    /* The new cache exists (custom) or its tensors are the last thing to get. */
    pio_tensor **old_k = m->cache_k, **old_v = m->cache_v;
    m->cache_k = m->cache_v = NULL;
    if (!next->custom && (st = alloc_tensors(m, next, err))) {
        free_tensors(m, m->hp.n_layer);
        free_seqs(next, m->max_seqs);
        free(next);
        m->cache_k = old_k, m->cache_v = old_v;
        return st;
    }
    pio_tensor **new_k = m->cache_k, **new_v = m->cache_v;
    m->cache_k = old_k, m->cache_v = old_v;
    free_tensors(m, m->hp.n_layer); /* the old cache */
    pio_kv_free(m);
    m->cache_k = new_k, m->cache_v = new_v;
    m->kv = next;
    m->kv_bytes = next->bytes;
    if (m->cuda) pio_model_cuda_kv_changed(m); /* a captured step holds the old addresses */
    return PIO_OK;
}

void pio_kv_remove_layers(pio_model *m, const int32_t *layers, size_t n) {
    pio_kv *kv = m->kv;
    int32_t kept = 0;
    for (int32_t l = 0, r = 0; l < m->hp.n_layer; l++) {
        if ((size_t)r < n && layers[r] == l) {
            if (m->cache_k) pio_tensor_free(m->cache_k[l]), pio_tensor_free(m->cache_v[l]);
            r++;
            continue;
        }
        if (m->cache_k) m->cache_k[kept] = m->cache_k[l], m->cache_v[kept] = m->cache_v[l];
        m->hp.sliding_layer[kept] = m->hp.sliding_layer[l];
        kv->pools[kept++] = kv->pools[l];
    }
    int32_t before = m->hp.n_layer;
    m->hp.n_layer = kept;
    /* A custom cache's storage stays one allocation: the dropped layers'
     * regions are no longer counted (they are released with the rest). */
    size_t per_layer = kv->bytes_per_block / (size_t)before;
    kv->bytes_per_block = per_layer * (size_t)kept;
    kv->bytes = (size_t)kv->n_blocks * kv->bytes_per_block;
    m->kv_bytes = kv->bytes;
}

/* ---- blocks ----------------------------------------------------------------- */

static bool paged(const pio_model *m) { return m->kv->cfg.layout == PIO_KV_PAGED; }

static void list_remove(pio_kv *kv, int32_t b, int32_t *head, int32_t *tail) {
    pio_kv_block *k = &kv->blocks[b];
    if (k->prev >= 0) kv->blocks[k->prev].next = k->next;
    else *head = k->next;
    if (k->next >= 0) kv->blocks[k->next].prev = k->prev;
    else *tail = k->prev;
    k->prev = k->next = -1;
}

static void list_append(pio_kv *kv, int32_t b, int32_t *head, int32_t *tail) {
    kv->blocks[b].prev = *tail;
    kv->blocks[b].next = -1;
    if (*tail >= 0) kv->blocks[*tail].next = b;
    else *head = b;
    *tail = b;
}

static int32_t bucket_of(const pio_kv *kv, uint64_t key) {
    return (int32_t)(key & (uint64_t)(kv->n_buckets - 1));
}

static void unpublish(pio_kv *kv, int32_t b) {
    pio_kv_block *k = &kv->blocks[b];
    int32_t *link = &kv->buckets[bucket_of(kv, k->key)];
    while (*link != b) link = &kv->blocks[*link].hnext;
    *link = k->hnext;
    k->hnext = -1;
    k->cached = false;
}

/* A block for a slot (ref 1): free first, else the least recently used cached one. */
static int32_t take_block(pio_kv *kv) {
    int32_t b = kv->free_head;
    if (b >= 0) {
        list_remove(kv, b, &kv->free_head, &kv->free_tail);
        kv->n_free--;
    } else if ((b = kv->lru_head) >= 0) {
        list_remove(kv, b, &kv->lru_head, &kv->lru_tail);
        kv->n_cached--;
        unpublish(kv, b);
        kv->evictions++;
    } else {
        return -1;
    }
    kv->blocks[b].ref = 1;
    return b;
}

/* A slot lets go of block b. */
static void unref(pio_kv *kv, int32_t b) {
    pio_kv_block *k = &kv->blocks[b];
    if (--k->ref > 0) return;
    if (k->cached) {
        list_append(kv, b, &kv->lru_head, &kv->lru_tail); /* most recently used last */
        kv->n_cached++;
    } else {
        list_append(kv, b, &kv->free_head, &kv->free_tail);
        kv->n_free++;
    }
}

/* A slot takes a reference to a block that may be cached and unreferenced. */
static void ref(pio_kv *kv, int32_t b) {
    pio_kv_block *k = &kv->blocks[b];
    if (k->ref++ == 0) {
        list_remove(kv, b, &kv->lru_head, &kv->lru_tail);
        kv->n_cached--;
    }
}

static bool grow_i32(int32_t **a, int32_t *cap, int32_t need, int32_t fill) {
    if (need <= *cap) return true;
    int32_t c = *cap ? *cap : 16;
    while (c < need) c = c > INT32_MAX / 2 ? need : c * 2;
    int32_t *p = realloc(*a, (size_t)c * sizeof *p);
    if (!p) return false;
    for (int32_t i = *cap; i < c; i++) p[i] = fill;
    *a = p;
    *cap = c;
    return true;
}

/* ---- sequences -------------------------------------------------------------- */

int32_t pio_kv_max_pos(const pio_model *m) {
    const pio_kv_config *c = &m->kv->cfg;
    return c->layout == PIO_KV_PAGED && c->attention != PIO_ATTN_FULL ? INT32_MAX : m->n_ctx;
}

/* Logical blocks [lo, hi] that tokens at positions len .. n_pos-1 need, besides
 * the sink's blocks [0, sink_hi): all of [0, n_pos) under full attention. */
static void needed(const pio_model *m, const pio_kv_seq *s, int32_t n_pos, int32_t *sink_hi,
                   int32_t *lo, int32_t *hi) {
    const pio_kv *kv = m->kv;
    *hi = (n_pos - 1) / kv->block;
    *sink_hi = 0;
    *lo = 0;
    if (kv->cfg.attention == PIO_ATTN_FULL) return;
    int64_t first = (int64_t)s->len - kv->cfg.window + 1; /* the next token's window */
    if (first > 0) *lo = (int32_t)(first / kv->block);
    *sink_hi = (kv->cfg.sink + kv->block - 1) / kv->block;
}

static int32_t blocks_missing(const pio_model *m, const pio_kv_seq *s, int32_t n_pos) {
    int32_t sink_hi, lo, hi, miss = 0;
    needed(m, s, n_pos, &sink_hi, &lo, &hi);
    for (int32_t b = 0; b <= hi; b++)
        if ((b < sink_hi || b >= lo) && (b >= s->n_table || s->table[b] < 0)) miss++;
    return miss;
}

static pio_status check_slot(const pio_model *m, int32_t seq, pio_error *err) {
    if (seq < 0 || seq >= m->max_seqs)
        return pio_error_set(err, PIO_ERR_RANGE, "sequence slot %d is outside [0, %d)", seq,
                             m->max_seqs);
    return PIO_OK;
}

int32_t pio_model_seq_blocks_needed(const pio_model *m, int32_t seq, int32_t n_pos) {
    if (seq < 0 || seq >= m->max_seqs) return -1;
    if (!paged(m) || n_pos <= 0) return 0;
    return blocks_missing(m, &m->kv->seqs[seq], n_pos);
}

int32_t pio_model_seq_length(const pio_model *m, int32_t seq) {
    return seq < 0 || seq >= m->max_seqs ? 0 : m->kv->seqs[seq].len;
}

const int32_t *pio_model_seq_tokens(const pio_model *m, int32_t seq, int32_t *n) {
    *n = pio_model_seq_length(m, seq);
    return *n ? m->kv->seqs[seq].tokens : NULL;
}

pio_status pio_model_seq_reserve(pio_model *m, int32_t seq, int32_t n_pos, pio_error *err) {
    pio_status st = check_slot(m, seq, err);
    if (st) return st;
    if (n_pos < 0)
        return pio_error_set(err, PIO_ERR_INVALID, "kv: cannot reserve %d positions", n_pos);
    if (n_pos > pio_kv_max_pos(m))
        return pio_error_set(err, PIO_ERR_RANGE,
                             "kv: sequence %d cannot hold %d positions: the context is %d "
                             "(windowed attention on the paged layout is unbounded)", seq,
                             n_pos, m->n_ctx);
    if (!paged(m) || n_pos == 0) return PIO_OK;
    pio_kv *kv = m->kv;
    pio_kv_seq *s = &kv->seqs[seq];
    int32_t miss = blocks_missing(m, s, n_pos), have = kv->n_free + kv->n_cached;
    if (miss > have)
        return pio_error_set(err, PIO_ERR_OOM,
                             "out of KV blocks: need %d, free %d (sequence %d, %d positions; "
                             "the pool has %d blocks of %d)", miss, have, seq, n_pos,
                             kv->n_blocks, kv->block);
    int32_t sink_hi, lo, hi;
    needed(m, s, n_pos, &sink_hi, &lo, &hi);
    if (!grow_i32(&s->table, &s->cap_table, hi + 1, -1))
        return pio_error_set(err, PIO_ERR_OOM, "out of memory for a block table");
    for (int32_t b = 0; b <= hi; b++)
        if ((b < sink_hi || b >= lo) && s->table[b] < 0) s->table[b] = take_block(kv);
    if (s->n_table < hi + 1) s->n_table = hi + 1;
    return PIO_OK;
}

/* Releases the slot's logical blocks from `from` on. */
static void release_from(pio_kv *kv, pio_kv_seq *s, int32_t from) {
    /* Back to front: a prefix's last blocks reach the LRU list first and are
     * evicted before the blocks the others chain from. */
    for (int32_t b = s->n_table - 1; b >= from; b--)
        if (s->table[b] >= 0) unref(kv, s->table[b]), s->table[b] = -1;
    if (s->n_table > from) s->n_table = from;
}

void pio_model_seq_free(pio_model *m, int32_t seq) {
    if (seq < 0 || seq >= m->max_seqs) return;
    pio_kv_seq *s = &m->kv->seqs[seq];
    if (paged(m)) release_from(m->kv, s, 0);
    s->len = 0;
}

/* ---- prefix cache ------------------------------------------------------------- */

static uint64_t block_key(uint64_t parent, const int32_t *tokens, int32_t n) {
    return XXH3_64bits_withSeed(tokens, (size_t)n * sizeof *tokens, parent);
}

/* The cached block holding these tokens after `parent`, or -1. */
static int32_t lookup(const pio_kv *kv, uint64_t key, uint64_t parent, const int32_t *tokens) {
    for (int32_t b = kv->buckets[bucket_of(kv, key)]; b >= 0; b = kv->blocks[b].hnext) {
        const pio_kv_block *k = &kv->blocks[b];
        if (k->key == key && k->parent == parent &&
            !memcmp(kv->block_tokens + (size_t)b * kv->block, tokens,
                    (size_t)kv->block * sizeof *tokens))
            return b;
    }
    return -1;
}

static bool set_tokens(pio_kv_seq *s, int32_t from, const int32_t *tokens, int32_t n) {
    if (!grow_i32(&s->tokens, &s->cap_tokens, from + n, 0)) return false;
    memcpy(s->tokens + from, tokens, (size_t)n * sizeof *tokens);
    return true;
}

int32_t pio_model_seq_reuse_prefix(pio_model *m, int32_t seq, const int32_t *tokens, int32_t n) {
    pio_kv *kv = m->kv;
    if (!kv->cfg.prefix_cache || seq < 0 || seq >= m->max_seqs || n < 2 || !tokens) return 0;
    pio_kv_seq *s = &kv->seqs[seq];
    if (s->len > 0 || s->n_table > 0) return 0;
    int32_t max_blocks = (n - 1) / kv->block, found = 0;
    if (!grow_i32(&s->table, &s->cap_table, max_blocks > 0 ? max_blocks : 1, -1)) return 0;
    uint64_t parent = ROOT_KEY;
    for (; found < max_blocks; found++) {
        const int32_t *t = tokens + (size_t)found * kv->block;
        uint64_t key = block_key(parent, t, kv->block);
        int32_t b = lookup(kv, key, parent, t);
        if (b < 0) break;
        ref(kv, b);
        s->table[found] = b;
        parent = key;
    }
    int32_t n_pos = found * kv->block;
    if (found == 0 || !set_tokens(s, 0, tokens, n_pos)) {
        release_from(kv, s, 0);
        kv->misses++;
        return 0;
    }
    s->n_table = found;
    s->len = n_pos;
    kv->hits++;
    kv->reused += n_pos;
    /* Touched blocks are the most recently used: they return to the LRU
     * list's end when released (unref). */
    return n_pos;
}

void pio_model_seq_register_prefix(pio_model *m, int32_t seq, const int32_t *tokens, int32_t n) {
    pio_kv *kv = m->kv;
    if (!kv->cfg.prefix_cache || seq < 0 || seq >= m->max_seqs || !tokens) return;
    pio_kv_seq *s = &kv->seqs[seq];
    if (n > s->len) n = s->len;
    uint64_t parent = ROOT_KEY;
    for (int32_t i = 0; i < n / kv->block && i < s->n_table; i++) {
        const int32_t *t = tokens + (size_t)i * kv->block;
        /* Publish only what the slot really holds. */
        if (s->table[i] < 0 || memcmp(s->tokens + (size_t)i * kv->block, t,
                                      (size_t)kv->block * sizeof *t))
            return;
        uint64_t key = block_key(parent, t, kv->block);
        int32_t b = s->table[i];
        pio_kv_block *k = &kv->blocks[b];
        if (!(k->cached && k->key == key) && lookup(kv, key, parent, t) < 0) {
            if (k->cached) unpublish(kv, b); /* cannot happen: written blocks are private */
            k->cached = true, k->key = key, k->parent = parent;
            memcpy(kv->block_tokens + (size_t)b * kv->block, t, (size_t)kv->block * sizeof *t);
            int32_t *head = &kv->buckets[bucket_of(kv, key)];
            k->hnext = *head;
            *head = b;
        }
        parent = key;
    }
}

/* ---- stats ------------------------------------------------------------------ */

pio_status pio_model_kv_stats(const pio_model *m, pio_kv_stats *out) {
    const pio_kv *kv = m->kv;
    *out = (pio_kv_stats){.layout = pio_kv_layout_name(kv->cfg.layout),
                          .format = elem_name(kv->elem),
                          .attention = pio_kv_attention_name(kv->cfg.attention),
                          .window = kv->cfg.window, .sink = kv->cfg.sink,
                          .block_size = kv->block, .blocks_total = kv->n_blocks,
                          .bytes_per_block = kv->bytes_per_block, .bytes_total = kv->bytes,
                          .prefix_hits = kv->hits, .prefix_misses = kv->misses,
                          .tokens_reused = kv->reused, .evictions = kv->evictions,
                          .prefix_cache = kv->cfg.prefix_cache};
    if (paged(m)) {
        out->blocks_free = kv->n_free;
        out->blocks_cached = kv->n_cached;
        out->blocks_used = kv->n_blocks - kv->n_free - kv->n_cached;
    } else {
        for (int32_t s = 0; s < m->max_seqs; s++) out->blocks_used += kv->seqs[s].len > 0;
        out->blocks_free = kv->n_blocks - out->blocks_used;
    }
    return PIO_OK;
}

/* ---- the forward pass ---------------------------------------------------------- */

pio_status pio_kv_copy_rows(pio_model *m, void *dst, size_t dpitch, const void *src,
                            size_t spitch, size_t width, size_t height, pio_error *err) {
    if (m->cuda) return pio_model_cuda_copy_2d(m, dst, dpitch, src, spitch, width, height, err);
    for (size_t r = 0; r < height; r++)
        memcpy((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    return PIO_OK;
}

/* Copies pool block `from` into `to` in every layer (K, V, scales). On CUDA
 * the copies are enqueued on the stream ahead of the forward pass that
 * writes into the block. */
static pio_status copy_block(pio_model *m, int32_t from, int32_t to, pio_error *err) {
    pio_kv *kv = m->kv;
    const size_t rows = (size_t)kv->block * (size_t)m->hp.n_head_kv;
    const size_t bytes = rows * (size_t)m->hp.head_dim * pio_kv_elem_size(kv->elem);
    const size_t sbytes = rows * sizeof(float);
    pio_status st = PIO_OK;
    for (int l = 0; st == PIO_OK && l < m->hp.n_layer; l++) {
        pio_kv_pool *p = &kv->pools[l];
        if (!(st = pio_kv_copy_rows(m, (char *)p->k + to * bytes, bytes,
                                    (char *)p->k + from * bytes, bytes, bytes, 1, err)))
            st = pio_kv_copy_rows(m, (char *)p->v + to * bytes, bytes,
                                  (char *)p->v + from * bytes, bytes, bytes, 1, err);
        if (st == PIO_OK && p->k_scale &&
            !(st = pio_kv_copy_rows(m, p->k_scale + to * rows, sbytes, p->k_scale + from * rows,
                                    sbytes, sbytes, 1, err)))
            st = pio_kv_copy_rows(m, p->v_scale + to * rows, sbytes, p->v_scale + from * rows,
                                  sbytes, sbytes, 1, err);
    }
    return st;
}

/* Logical block lb of slot s is about to be written: make it the slot's own. */
static pio_status make_private(pio_model *m, int32_t seq, int32_t lb, pio_error *err) {
    pio_kv *kv = m->kv;
    int32_t b = kv->seqs[seq].table[lb];
    pio_kv_block *k = &kv->blocks[b];
    if (k->ref == 1) {
        if (k->cached) unpublish(kv, b); /* its key no longer describes it */
        return PIO_OK;
    }
    int32_t nb = take_block(kv);
    if (nb < 0)
        return pio_error_set(err, PIO_ERR_OOM,
                             "out of KV blocks: need 1, free 0 (copying shared block %d of "
                             "sequence %d before writing into it)", lb, seq);
    pio_status st = copy_block(m, b, nb, err);
    if (st) {
        unref(kv, nb);
        return st;
    }
    unref(kv, b);
    kv->seqs[seq].table[lb] = nb;
    return PIO_OK;
}

/* Whether a token at pos finds the earlier positions of its window in slot s. */
static bool window_present(const pio_model *m, const pio_kv_seq *s, int32_t pos) {
    const pio_kv *kv = m->kv;
    if (!paged(m) || kv->cfg.attention == PIO_ATTN_FULL || pos == 0) return true;
    const int32_t sink_blocks = (kv->cfg.sink + kv->block - 1) / kv->block;
    int32_t first = pos - kv->cfg.window + 1 > 0 ? pos - kv->cfg.window + 1 : 0;
    for (int32_t lb = first / kv->block; lb <= (pos - 1) / kv->block; lb++)
        if (lb >= sink_blocks && (lb >= s->n_table || s->table[lb] < 0)) return false;
    return true;
}

pio_status pio_kv_prepare(pio_model *m, const pio_batch *b, pio_error *err) {
    pio_kv *kv = m->kv;
    /* Per slot: the batch's first and last position (slots in first-seen order). */
    for (int32_t i = 0; i < b->n_tokens; i++) {
        int32_t seq = b->seq[i], lo = b->pos[i], hi = b->pos[i];
        bool first_seen = true;
        for (int32_t j = 0; j < i && first_seen; j++) first_seen = b->seq[j] != seq;
        if (!first_seen) continue;
        for (int32_t j = i + 1; j < b->n_tokens; j++)
            if (b->seq[j] == seq) {
                if (b->pos[j] < lo) lo = b->pos[j];
                if (b->pos[j] > hi) hi = b->pos[j];
            }
        pio_kv_seq *s = &kv->seqs[seq];
        if (lo < s->len) { /* a rewind: what lay at and past lo is replaced */
            if (!window_present(m, s, lo))
                return pio_error_set(err, PIO_ERR_INVALID,
                                     "kv: sequence %d cannot go back to position %d: positions "
                                     "its window needs were already given back", seq, lo);
            if (paged(m)) release_from(kv, s, (lo + kv->block - 1) / kv->block);
            s->len = lo;
        }
        pio_status st = pio_model_seq_reserve(m, seq, hi + 1, err);
        if (st) return st;
        if (paged(m))
            for (int32_t lb = lo / kv->block; lb <= hi / kv->block; lb++)
                if ((st = make_private(m, seq, lb, err))) return st;
        if (!grow_i32(&s->tokens, &s->cap_tokens, hi + 1, 0))
            return pio_error_set(err, PIO_ERR_OOM, "out of memory");
        for (int32_t j = i; j < b->n_tokens; j++)
            if (b->seq[j] == seq) s->tokens[b->pos[j]] = b->token[j];
        if (hi + 1 > s->len) s->len = hi + 1;
    }
    return PIO_OK;
}

void pio_kv_trim(pio_model *m, const pio_batch *b) {
    pio_kv *kv = m->kv;
    if (!paged(m) || kv->cfg.attention == PIO_ATTN_FULL) return;
    const int32_t sink_blocks = (kv->cfg.sink + kv->block - 1) / kv->block;
    for (int32_t i = 0; i < b->n_tokens; i++) {
        pio_kv_seq *s = &kv->seqs[b->seq[i]];
        int64_t first = (int64_t)s->len - kv->cfg.window + 1; /* the next token's window */
        for (int32_t lb = sink_blocks; lb < s->n_table && ((int64_t)lb + 1) * kv->block <= first;
             lb++)
            if (s->table[lb] >= 0) unref(kv, s->table[lb]), s->table[lb] = -1;
    }
}

int32_t pio_model_layer_window(const pio_model *m, int32_t layer) {
    if (layer < 0 || layer >= m->hp.n_layer) return -1;
    if (m->kv->cfg.attention != PIO_ATTN_FULL) return m->kv->cfg.window; /* the strategy's */
    return m->hp.sliding_layer[layer] ? m->hp.sliding_window : 0;
}

int32_t pio_model_config_window(const pio_model *m) { return m->hp.sliding_window; }

/* A borrowed tensor header [n_blocks, block, kv_heads, d] over one layer's K or
 * V region of the custom storage. */
static pio_tensor pool_tensor(const pio_kv *kv, const pio_kv_pool *p, const void *data,
                              int64_t d) {
    pio_storage *s = kv->storage;
    pio_tensor t = {.dtype = kv->elem == PIO_KV_ELEM_F32 ? PIO_F32 : PIO_BF16, .ndim = 4,
                    .shape = {p->n_blocks, p->block, p->kv_heads, d},
                    .offset = (size_t)((const char *)data - (const char *)s->data),
                    .storage = s};
    t.stride[3] = 1, t.stride[2] = d, t.stride[1] = p->kv_heads * d;
    t.stride[0] = p->block * t.stride[1];
    return t;
}

void pio_kv_layer_tensors(const pio_model *m, int layer, pio_tensor *k, pio_tensor *v) {
    const pio_kv *kv = m->kv;
    if (!kv->custom) {
        *k = *m->cache_k[layer];
        *v = *m->cache_v[layer];
        return;
    }
    const pio_kv_pool *p = &kv->pools[layer];
    *k = pool_tensor(kv, p, p->k, p->dk);
    *v = pool_tensor(kv, p, p->v, p->dv);
}

bool pio_kv_via_view(const pio_model *m, int layer) {
    return m->kv->custom || pio_model_layer_window(m, layer) > 0;
}

pio_status pio_kv_attend(pio_model *m, int layer, const pio_batch *b, const pio_tensor *q3,
                         const pio_tensor *k3, const pio_tensor *v3, float scale, pio_tensor *a3,
                         pio_error *err) {
    pio_kv *kv = m->kv;
    for (int32_t s = 0; paged(m) && s < m->max_seqs; s++)
        kv->tables[s] = (pio_kv_table){kv->seqs[s].table, kv->seqs[s].n_table};
    /* The window: the strategy's for every layer, else config.json's for this one. */
    pio_kv_view view = {.pool = kv->pools[layer], .tables = paged(m) ? kv->tables : NULL,
                        .slots = m->max_seqs, .window = pio_model_layer_window(m, layer),
                        .sink = kv->cfg.attention == PIO_ATTN_SINK ? kv->cfg.sink : 0};
    pio_status st = pio_cpu_kv_write_paged(k3, v3, &view, b->seq, b->pos, err);
    if (st) return st;
    return pio_cpu_attention_paged(m->pool, q3, &view, b->seq, b->pos, scale, a3, m->round_bf16,
                                   err);
}
