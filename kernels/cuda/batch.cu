/* pio_cuda_batch: the tokens of one forward pass, in pinned host memory for
 * checks and planning and in device memory for the kernels. */
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.cuh"

pio_cuda_batch *pio_cuda_batch_new(pio_cuda_ctx *ctx, int32_t cap, pio_error *err) {
    if (pio_cuda_enter(ctx, err)) return NULL;
    if (cap <= 0) {
        pio_error_set(err, PIO_ERR_INVALID, "cuda batch: capacity %d must be positive", (int)cap);
        return NULL;
    }
    pio_cuda_batch *b = (pio_cuda_batch *)calloc(1, sizeof *b);
    if (!b) {
        pio_error_set(err, PIO_ERR_OOM, "out of memory");
        return NULL;
    }
    b->cap = cap;
    /* One pinned block and one device block: ids | seq | pos | tiles (4 per token). */
    const size_t ints = (size_t)cap * 7;
    void *host = NULL;
    cudaError_t e = cudaHostAlloc(&host, ints * sizeof(int32_t), cudaHostAllocDefault);
    if (e != cudaSuccess) {
        free(b);
        pio_cuda_fail(err, e, "cudaHostAlloc (batch)");
        return NULL;
    }
    int32_t *dev = (int32_t *)pio_cuda_alloc(ctx, ints * sizeof(int32_t), err);
    if (!dev) {
        cudaFreeHost(host);
        free(b);
        return NULL;
    }
    cudaEvent_t ev;
    e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        pio_cuda_free(ctx, dev);
        cudaFreeHost(host);
        free(b);
        pio_cuda_fail(err, e, "cudaEventCreate (batch)");
        return NULL;
    }
    int32_t *h = (int32_t *)host;
    b->ids = h;
    b->seq = h + cap;
    b->pos = h + 2 * (size_t)cap;
    b->tiles = h + 3 * (size_t)cap;
    b->d_ids = dev;
    b->d_seq = dev + cap;
    b->d_pos = dev + 2 * (size_t)cap;
    b->d_tiles = dev + 3 * (size_t)cap;
    b->uploaded = (void *)ev;
    /* Nothing uploaded yet: record once so that the first set need not wait. */
    cudaEventRecord(ev, ctx->stream);
    return b;
}

void pio_cuda_batch_free(pio_cuda_ctx *ctx, pio_cuda_batch *b) {
    if (!b) return;
    cudaEvent_t ev = (cudaEvent_t)b->uploaded;
    if (ev) {
        cudaEventSynchronize(ev);
        cudaEventDestroy(ev);
    }
    pio_cuda_free(ctx, b->d_ids);
    cudaFreeHost(b->ids);
    cudaGetLastError();
    free(b);
}

/* The host arrays are about to be rewritten: the last upload must have read them. */
static pio_status wait_uploaded(const pio_cuda_batch *b, pio_error *err) {
    CU_TRY(cudaEventSynchronize((cudaEvent_t)b->uploaded), "batch upload");
    return PIO_OK;
}

pio_status pio_cuda_batch_set(pio_cuda_ctx *ctx, pio_cuda_batch *b, const int32_t *ids,
                              const int32_t *seq, const int32_t *pos, int32_t n, pio_error *err) {
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (ctx->capturing)
        return pio_error_set(err, PIO_ERR_INVALID,
                             "cuda batch: cannot be set while a graph is being captured");
    if (n < 0 || n > b->cap)
        return pio_error_set(err, PIO_ERR_INVALID, "cuda batch: %d tokens for a batch of %d",
                             (int)n, (int)b->cap);
    if (n > 0 && (!seq || !pos))
        return pio_error_set(err, PIO_ERR_INVALID, "cuda batch: seq and pos are required");
    for (int32_t t = 0; t < n; t++) {
        if (seq[t] < 0)
            return pio_error_set(err, PIO_ERR_RANGE, "cuda batch: token %d: sequence slot %d is negative",
                                 (int)t, (int)seq[t]);
        if (pos[t] < 0)
            return pio_error_set(err, PIO_ERR_RANGE, "cuda batch: token %d: position %d is negative",
                                 (int)t, (int)pos[t]);
    }
    if ((st = wait_uploaded(b, err))) return st;
    b->n = n;
    b->has_ids = ids != NULL;
    b->plan_tpt = 0;
    b->n_tiles = 0;
    b->min_id = INT32_MAX;
    b->max_id = INT32_MIN;
    b->max_seq = -1;
    b->max_pos = -1;
    for (int32_t t = 0; t < n; t++) {
        b->seq[t] = seq[t];
        b->pos[t] = pos[t];
        if (seq[t] > b->max_seq) b->max_seq = seq[t];
        if (pos[t] > b->max_pos) b->max_pos = pos[t];
        if (ids) {
            b->ids[t] = ids[t];
            if (ids[t] < b->min_id) b->min_id = ids[t];
            if (ids[t] > b->max_id) b->max_id = ids[t];
        }
    }
    if (n == 0) return PIO_OK;
    const size_t bytes = (size_t)n * sizeof(int32_t);
    if (ids) CU_TRY(cudaMemcpyAsync(b->d_ids, b->ids, bytes, cudaMemcpyHostToDevice, ctx->stream), "batch upload");
    CU_TRY(cudaMemcpyAsync(b->d_seq, b->seq, bytes, cudaMemcpyHostToDevice, ctx->stream), "batch upload");
    CU_TRY(cudaMemcpyAsync(b->d_pos, b->pos, bytes, cudaMemcpyHostToDevice, ctx->stream), "batch upload");
    CU_TRY(cudaEventRecord((cudaEvent_t)b->uploaded, ctx->stream), "batch upload");
    return PIO_OK;
}

pio_status pio_cuda_batch_plan(pio_cuda_ctx *ctx, const pio_cuda_batch *cb, int32_t tpt,
                               pio_error *err) {
    pio_cuda_batch *b = (pio_cuda_batch *)cb; /* the plan is a cache inside the batch */
    if (b->plan_tpt == tpt) return PIO_OK;
    if (ctx->capturing)
        return pio_error_set(err, PIO_ERR_INVALID,
                             "cuda attention: the prompt tile plan cannot be made during graph "
                             "capture (prompts are not captured)");
    pio_status st = wait_uploaded(b, err);
    if (st) return st;
    int32_t nt = 0;
    for (int32_t t = 0; t < b->n;) {
        int32_t start = t, kv_len = 0;
        while (t < b->n && t - start < tpt && b->seq[t] == b->seq[start]) {
            if (b->pos[t] + 1 > kv_len) kv_len = b->pos[t] + 1;
            t++;
        }
        int32_t *tile = b->tiles + 4 * (size_t)nt++;
        tile[0] = start;
        tile[1] = t - start;
        tile[2] = b->seq[start];
        tile[3] = kv_len;
    }
    b->n_tiles = nt;
    b->plan_tpt = tpt;
    CU_TRY(cudaMemcpyAsync(b->d_tiles, b->tiles, (size_t)nt * 4 * sizeof(int32_t),
                           cudaMemcpyHostToDevice, ctx->stream),
           "tile plan upload");
    CU_TRY(cudaEventRecord((cudaEvent_t)b->uploaded, ctx->stream), "tile plan upload");
    return PIO_OK;
}

pio_status pio_cuda_batch_check_cache(const char *op, const pio_cuda_batch *b,
                                      const pio_tensor *cache, pio_error *err) {
    if (!b) return pio_error_set(err, PIO_ERR_INVALID, "%s: the batch is missing", op);
    const int64_t slots = cache->shape[0], ctx_len = cache->shape[1];
    if (b->max_seq < slots && b->max_pos < ctx_len) return PIO_OK;
    for (int32_t t = 0; t < b->n; t++) { /* name the first offending token, as the CPU op does */
        if (b->seq[t] >= slots)
            return pio_error_set(err, PIO_ERR_RANGE,
                                 "%s: token %d: sequence slot %d is out of range for %lld slots",
                                 op, (int)t, (int)b->seq[t], (long long)slots);
        if (b->pos[t] >= ctx_len)
            return pio_error_set(err, PIO_ERR_RANGE,
                                 "%s: token %d: position %d is out of range for a context of %lld",
                                 op, (int)t, (int)b->pos[t], (long long)ctx_len);
    }
    return PIO_OK;
}

/* ---- block tables (the paged KV cache) ------------------------------------------ */

pio_cuda_block_table *pio_cuda_block_table_new(pio_cuda_ctx *ctx, int32_t slots, int32_t max_pos,
                                               int32_t block, int32_t n_blocks, pio_error *err) {
    if (pio_cuda_enter(ctx, err)) return NULL;
    if (slots <= 0 || max_pos <= 0 || block <= 0 || n_blocks <= 0) {
        pio_error_set(err, PIO_ERR_INVALID,
                      "cuda block table: %d slots, %d positions, blocks of %d, %d blocks: each "
                      "must be positive", (int)slots, (int)max_pos, (int)block, (int)n_blocks);
        return NULL;
    }
    if (ctx->capturing) {
        pio_error_set(err, PIO_ERR_INVALID,
                      "cuda block table: cannot be made while a graph is being captured");
        return NULL;
    }
    const int32_t cols = (int32_t)(((int64_t)max_pos + block - 1) / block);
    const size_t cells = (size_t)slots * (size_t)cols;
    pio_cuda_block_table *t = (pio_cuda_block_table *)calloc(1, sizeof *t);
    int32_t *valid = (int32_t *)calloc((size_t)slots, sizeof *valid);
    if (!t || !valid) {
        free(t);
        free(valid);
        pio_error_set(err, PIO_ERR_OOM, "out of memory");
        return NULL;
    }
    *t = pio_cuda_block_table{};
    t->slots = slots, t->cols = cols, t->block = block, t->n_blocks = n_blocks;
    t->max_pos = max_pos;
    t->valid = valid;
    void *host = NULL;
    cudaError_t e = cudaHostAlloc(&host, cells * sizeof(int32_t), cudaHostAllocDefault);
    if (e != cudaSuccess) {
        pio_cuda_fail(err, e, "cudaHostAlloc (block table)");
        pio_cuda_block_table_free(ctx, t);
        return NULL;
    }
    t->host = (int32_t *)host;
    for (size_t i = 0; i < cells; i++) t->host[i] = -1;
    if (!(t->d_table = (int32_t *)pio_cuda_alloc(ctx, cells * sizeof(int32_t), err))) {
        pio_cuda_block_table_free(ctx, t);
        return NULL;
    }
    cudaEvent_t ev;
    if ((e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming)) != cudaSuccess) {
        pio_cuda_fail(err, e, "cudaEventCreate (block table)");
        pio_cuda_block_table_free(ctx, t);
        return NULL;
    }
    t->uploaded = (void *)ev;
    /* Every entry absent on the device too, so that nothing reads garbage. */
    e = cudaMemcpyAsync(t->d_table, t->host, cells * sizeof(int32_t), cudaMemcpyHostToDevice,
                        ctx->stream);
    if (e == cudaSuccess) e = cudaEventRecord(ev, ctx->stream);
    if (e != cudaSuccess) {
        pio_cuda_fail(err, e, "block table upload");
        pio_cuda_block_table_free(ctx, t);
        return NULL;
    }
    return t;
}

void pio_cuda_block_table_free(pio_cuda_ctx *ctx, pio_cuda_block_table *t) {
    if (!t) return;
    cudaEvent_t ev = (cudaEvent_t)t->uploaded;
    if (ev) {
        cudaEventSynchronize(ev); /* the pinned rows may still be read by the copy */
        cudaEventDestroy(ev);
    }
    pio_cuda_free(ctx, t->d_table);
    if (t->host) cudaFreeHost(t->host);
    cudaGetLastError();
    free(t->valid);
    free(t);
}

pio_status pio_cuda_block_table_set(pio_cuda_ctx *ctx, pio_cuda_block_table *t,
                                    const int32_t *const *rows, const int32_t *lens,
                                    pio_error *err) {
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (ctx->capturing)
        return pio_error_set(err, PIO_ERR_INVALID,
                             "cuda block table: cannot be set while a graph is being captured");
    for (int32_t s = 0; s < t->slots; s++)
        if (lens[s] < 0 || lens[s] > t->cols || (lens[s] > 0 && !rows[s]))
            return pio_error_set(err, PIO_ERR_RANGE,
                                 "cuda block table: slot %d has %d blocks for a row of %d", (int)s,
                                 (int)lens[s], (int)t->cols);
    /* The pinned copy is what the device holds (or is about to): compare
     * first, so that a decode step whose slots took no new block uploads
     * nothing. Reading it while a copy reads it too is fine. */
    bool same = true;
    for (int32_t s = 0; s < t->slots && same; s++) {
        const int32_t *h = t->host + (size_t)s * t->cols;
        for (int32_t c = 0; c < t->cols && same; c++)
            same = h[c] == (c < lens[s] ? rows[s][c] : -1);
    }
    if (same) return PIO_OK;
    CU_TRY(cudaEventSynchronize((cudaEvent_t)t->uploaded), "block table upload");
    for (int32_t s = 0; s < t->slots; s++) {
        int32_t *h = t->host + (size_t)s * t->cols;
        int32_t valid = -1;
        for (int32_t c = 0; c < t->cols; c++) {
            h[c] = c < lens[s] ? rows[s][c] : -1;
            if (valid < 0 && (h[c] < 0 || h[c] >= t->n_blocks)) valid = c;
        }
        t->valid[s] = valid < 0 ? t->cols : valid;
    }
    const size_t bytes = (size_t)t->slots * (size_t)t->cols * sizeof(int32_t);
    CU_TRY(cudaMemcpyAsync(t->d_table, t->host, bytes, cudaMemcpyHostToDevice, ctx->stream),
           "block table upload");
    CU_TRY(cudaEventRecord((cudaEvent_t)t->uploaded, ctx->stream), "block table upload");
    return PIO_OK;
}

pio_status pio_cuda_batch_check_table(const char *op, const pio_cuda_batch *b,
                                      const pio_cuda_block_table *t, const pio_tensor *cache,
                                      bool whole, pio_error *err) {
    if (!b) return pio_error_set(err, PIO_ERR_INVALID, "%s: the batch is missing", op);
    char s[PIO_SHAPE_BUF];
    if (cache->ndim != 4 || cache->shape[0] != t->n_blocks || cache->shape[1] != t->block)
        return pio_error_set(err, PIO_ERR_INVALID,
                             "%s: cache %s is not a pool of %d blocks of %d positions "
                             "[n_blocks, block, kv_heads, head_dim] as the block table says",
                             op, pio_shape_str(cache, s, sizeof s), (int)t->n_blocks,
                             (int)t->block);
    for (int32_t i = 0; i < b->n; i++) {
        const int32_t seq = b->seq[i], pos = b->pos[i];
        if (seq >= t->slots)
            return pio_error_set(err, PIO_ERR_RANGE,
                                 "%s: token %d: sequence slot %d is out of range for %d slots", op,
                                 (int)i, (int)seq, (int)t->slots);
        if (pos >= t->max_pos)
            return pio_error_set(err, PIO_ERR_RANGE,
                                 "%s: token %d: position %d is out of range for a context of %d",
                                 op, (int)i, (int)pos, (int)t->max_pos);
        /* Written: the position's own block; read (whole): every block up to it. */
        const int32_t lb = pos / t->block, at = t->host[(size_t)seq * t->cols + lb];
        if (whole && lb >= t->valid[seq])
            return pio_error_set(err, PIO_ERR_RANGE,
                                 "%s: token %d: the table of slot %d lacks a block for positions "
                                 "0..%d", op, (int)i, (int)seq, (int)pos);
        if (!whole && (at < 0 || at >= t->n_blocks))
            return pio_error_set(err, PIO_ERR_RANGE,
                                 "%s: token %d: slot %d has no block for position %d in its table",
                                 op, (int)i, (int)seq, (int)pos);
    }
    return PIO_OK;
}
