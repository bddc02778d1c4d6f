/* kernels/cuda/cuda_ops.h: the CUDA implementations of the ops in cpu_ops.h,
 * plus the device context they run in.
 *
 * Plain C: no CUDA type crosses this header (streams are void *, the context
 * is opaque), so C code links these without the CUDA headers.
 *
 * Semantics. Each op computes what its pio_cpu_* twin computes, including the
 * `round_bf16` roundings, on device tensors (storage kind PIO_STORAGE_DEVICE,
 * device PIO_DEVICE_CUDA), with f32 accumulation. The differences are
 * widenings:
 *   - activations may be f32 or bf16 tensors. A bf16 input is read exactly; an
 *     op writing a bf16 output rounds its f32 result to bf16 (round to nearest
 *     even) as it stores, which is the same as rounding an f32 output when the
 *     op's last step is a rounding (bf16 mode), so bf16 mode can keep
 *     activations in bf16 and halve their traffic.
 *   - activations may be row-strided: dims 1.. contiguous, dim 0 any stride
 *     (a view of some columns of a wider buffer, e.g. q inside a fused qkv).
 *   - positions, sequence slots and token ids travel in a pio_cuda_batch,
 *     uploaded once per forward pass and read by every layer's ops (and by a
 *     captured CUDA graph at fixed device addresses).
 *
 * Errors. Arguments are checked on the host before anything is launched; a bad
 * shape, dtype, device or index returns the same status as the CPU op with
 * both shapes in the message. A failing CUDA call returns PIO_ERR_OOM (device
 * memory), PIO_ERR_NOT_FOUND (no driver or device) or PIO_ERR_IO (any other
 * device failure), the CUDA error's name in the message. Nothing aborts.
 *
 * Ordering. Every op is enqueued on the context's one stream and returns
 * without waiting; pio_cuda_sync waits and reports asynchronous failures.
 * Copies to the host wait for their data. Memory returned to the pool is
 * reused by later work on the same stream, which is ordered after the work
 * that used it.
 */
#ifndef PIO_CUDA_OPS_H
#define PIO_CUDA_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu_ops.h" /* pio_binary_op */
#include "pio/error.h"
#include "pio/tensor.h"

/* ---- devices ------------------------------------------------------------- */

typedef struct pio_cuda_device_info {
    int device;
    char name[256];
    int cc_major, cc_minor;  /* compute capability */
    int sm_count;
    size_t total_bytes;      /* device memory */
    size_t free_bytes;       /* free when queried */
    int l2_bytes;
    size_t smem_optin;       /* shared memory per block after opting in */
    int driver_version, runtime_version; /* 13000 = 13.0 */
} pio_cuda_device_info;

/* The number of devices this build can run on (>= 1), or 0 with err set:
 * no driver, a driver older than the runtime, no device, or devices whose
 * compute capability this build has no code for. Never crashes: every CUDA
 * call's status is checked. */
int pio_cuda_available(pio_error *err);

/* Facts about device `device` (0-based). */
pio_status pio_cuda_device_query(int device, pio_cuda_device_info *info, pio_error *err);

/* ---- context: device, stream, cuBLAS handle, memory pool -------------------- */

typedef struct pio_cuda_ctx pio_cuda_ctx;

typedef struct pio_cuda_ctx_opts {
    int device;              /* 0-based */
    double max_memory_ratio; /* pool limit as a share of the device's memory (0: 0.9) */
    size_t max_memory_bytes; /* or an absolute limit (0: use the ratio) */
} pio_cuda_ctx_opts;

/* A context on one device: a non-blocking stream, a cuBLAS handle bound to it
 * (with its own workspace, so cuBLAS calls can be captured in a graph) and a
 * caching memory pool. opts may be NULL (device 0, ratio 0.9). Caller frees. */
pio_cuda_ctx *pio_cuda_ctx_new(const pio_cuda_ctx_opts *opts, pio_error *err);
/* Waits for pending work, frees every pool block (tensors still alive become
 * dangling: free them first) and the handles. NULL is fine. */
void pio_cuda_ctx_free(pio_cuda_ctx *ctx);
const pio_cuda_device_info *pio_cuda_ctx_info(const pio_cuda_ctx *ctx);
/* The context's stream (a cudaStream_t), for code that launches its own work. */
void *pio_cuda_ctx_stream(pio_cuda_ctx *ctx);
/* Waits for everything enqueued so far; reports an asynchronous kernel failure. */
pio_status pio_cuda_sync(pio_cuda_ctx *ctx, pio_error *err);

/* Pool accounting, in bytes. */
typedef struct pio_cuda_mem_stats {
    size_t in_use;    /* handed out and not yet freed (rounded block sizes) */
    size_t cached;    /* freed, kept for reuse */
    size_t peak;      /* highest in_use + cached */
    size_t limit;     /* the pool never holds more than this */
    int64_t n_alloc;  /* pio_cuda_alloc calls */
    int64_t n_device_alloc; /* cudaMalloc calls (cache misses) */
} pio_cuda_mem_stats;

void pio_cuda_mem_stats_get(const pio_cuda_ctx *ctx, pio_cuda_mem_stats *out);

/* Device memory from the pool, 256-byte aligned, uninitialised. Sizes are
 * rounded up (to 512 B under 1 MiB, to 2 MiB above) and freed blocks of the
 * same rounded size are reused. A request beyond the limit, or one the device
 * cannot satisfy even after the cache is released, is NULL + PIO_ERR_OOM
 * with the request, the pool's use, the limit and the device's free memory
 * in the message. */
void *pio_cuda_alloc(pio_cuda_ctx *ctx, size_t bytes, pio_error *err);
/* Returns a block to the pool (NULL is fine). */
void pio_cuda_free(pio_cuda_ctx *ctx, void *ptr);
/* Gives cached blocks back to the device. */
void pio_cuda_empty_cache(pio_cuda_ctx *ctx);

/* ---- device tensors ------------------------------------------------------ */

/* A contiguous zero-filled device tensor. Free it, and every view of it made
 * with pio_tensor_view/narrow/transpose, with pio_cuda_tensor_free: the last
 * one returns the memory to the pool (pio_tensor_free on the last reference
 * would leak the block). */
pio_tensor *pio_cuda_tensor_new(pio_cuda_ctx *ctx, pio_dtype dt, int ndim, const int64_t *shape,
                                pio_error *err);
void pio_cuda_tensor_free(pio_cuda_ctx *ctx, pio_tensor *t);

/* A new device tensor holding host tensor `src` (any strides, f32|f16|bf16)
 * converted to `dt`. Weights are uploaded once, as bf16: pio_cuda_upload(ctx,
 * w, PIO_BF16, err). Waits for the copy. */
pio_tensor *pio_cuda_upload(pio_cuda_ctx *ctx, const pio_tensor *src, pio_dtype dt,
                            pio_error *err);
/* host → device, same shape; dst contiguous on the device; converts dtype on the host. */
pio_status pio_cuda_copy_to_device(pio_cuda_ctx *ctx, pio_tensor *dst, const pio_tensor *src,
                                   pio_error *err);
/* device → host, same shape; src contiguous; converts dtype on the host; waits. */
pio_status pio_cuda_copy_to_host(pio_cuda_ctx *ctx, pio_tensor *dst, const pio_tensor *src,
                                 pio_error *err);
/* device → device, same shape and dtype, both contiguous (a cudaMemcpyAsync). */
pio_status pio_cuda_copy(pio_cuda_ctx *ctx, pio_tensor *dst, const pio_tensor *src,
                         pio_error *err);
/* Copies `height` rows of `width` bytes, row r from src + r·spitch to dst +
 * r·dpitch, between any two of device memory and host memory (a
 * cudaMemcpy2DAsync on the context's stream, direction from the addresses).
 * Returns once enqueued (pageable host memory may make it wait); pio_cuda_sync
 * before reading a host destination or reusing a host source. */
pio_status pio_cuda_copy_2d(pio_cuda_ctx *ctx, void *dst, size_t dpitch, const void *src,
                            size_t spitch, size_t width, size_t height, pio_error *err);
/* Page-locked host memory (fast, asynchronous copies), and its release. */
void *pio_cuda_host_alloc(size_t bytes, pio_error *err);
void pio_cuda_host_free(void *p);
/* Fills a device tensor (f32|bf16) with uniform random values in [-scale, scale)
 * from a counter-based hash of (seed, index): the same seed gives the same
 * values on every device and launch shape. For synthetic weights and benchmarks. */
pio_status pio_cuda_fill_random(pio_cuda_ctx *ctx, pio_tensor *t, uint64_t seed, float scale,
                                pio_error *err);

/* ---- the batch: token ids, sequence slots and positions ---------------------- */

/* One forward pass's tokens, on both sides. The host arrays (pinned) serve
 * argument checks and planning; the device arrays are what kernels read.
 * Fields are read-only outside kernels/cuda. */
typedef struct pio_cuda_batch {
    int32_t n, cap;                 /* tokens now, and room for */
    int32_t *ids, *seq, *pos;       /* host copies [cap] (ids may be unset: has_ids) */
    int32_t *d_ids, *d_seq, *d_pos; /* device copies [cap] */
    bool has_ids;
    int32_t min_id, max_id, max_seq, max_pos; /* over the n tokens (min seq/pos are checked >= 0) */
    /* Attention tile plan for the tensor-core prefill kernel, made on first use
     * for a tile height: runs of consecutive tokens of one sequence, cut every
     * plan_tpt tokens. Each tile is {first token, tokens, seq, kv_len}. */
    int32_t plan_tpt, n_tiles;
    int32_t *tiles, *d_tiles;       /* [4 * cap] host (pinned) and device */
    void *uploaded;                 /* a cudaEvent_t: the host arrays may be rewritten once it fired */
} pio_cuda_batch;

pio_cuda_batch *pio_cuda_batch_new(pio_cuda_ctx *ctx, int32_t cap, pio_error *err);
void pio_cuda_batch_free(pio_cuda_ctx *ctx, pio_cuda_batch *b);
/* Copies n tokens (ids may be NULL) into the batch and enqueues their upload.
 * seq and pos must be >= 0 (PIO_ERR_RANGE otherwise); upper bounds are checked
 * by each op against its tensors. Not allowed while a graph is being captured:
 * set the batch, then launch the graph that reads it. */
pio_status pio_cuda_batch_set(pio_cuda_ctx *ctx, pio_cuda_batch *b, const int32_t *ids,
                              const int32_t *seq, const int32_t *pos, int32_t n, pio_error *err);

/* ---- block tables: the paged KV cache ------------------------------------------
 * A paged cache is a pool of blocks per layer, K and V each [n_blocks, block,
 * kv_heads, head_dim]; slot s keeps position p in row p % block of pool block
 * table[s][p / block]. The table lives at one device address for the life of
 * the object, so a captured graph that reads it stays valid when the contents
 * change between replays; set enqueues the upload of new contents (before the
 * launch that reads them), as pio_cuda_batch_set does for the batch. */
typedef struct pio_cuda_block_table {
    int32_t slots, cols;      /* [slots, cols]: cols = ceil(max_pos / block) */
    int32_t block, n_blocks;  /* positions per block; blocks in each layer's pool */
    int32_t max_pos;          /* positions a slot may hold (splits are planned for it) */
    int32_t *host, *d_table;  /* [slots, cols] pinned host and device copies; -1: absent */
    int32_t *valid;           /* [slots] host: leading entries of the row in [0, n_blocks) */
    void *uploaded;           /* a cudaEvent_t: host may be rewritten once it fired */
} pio_cuda_block_table;

pio_cuda_block_table *pio_cuda_block_table_new(pio_cuda_ctx *ctx, int32_t slots, int32_t max_pos,
                                               int32_t block, int32_t n_blocks, pio_error *err);
void pio_cuda_block_table_free(pio_cuda_ctx *ctx, pio_cuda_block_table *t);
/* Row s of the table ← rows[s][0 .. lens[s]) followed by -1 (lens[s] <= cols),
 * for every slot; enqueues the upload when anything changed since the last
 * one. Refused during graph capture (set, then launch). */
pio_status pio_cuda_block_table_set(pio_cuda_ctx *ctx, pio_cuda_block_table *t,
                                    const int32_t *const *rows, const int32_t *lens,
                                    pio_error *err);

/* ---- ops (cpu_ops.h, one for one) ------------------------------------------ */

/* out[i, :] = table[ids[i], :] for the batch's ids. table [V, d] f32|bf16,
 * out [n, d] f32|bf16. An id outside [0, V) is PIO_ERR_RANGE naming it and V. */
pio_status pio_cuda_embedding(pio_cuda_ctx *ctx, const pio_tensor *table, const pio_cuda_batch *b,
                              pio_tensor *out, pio_error *err);

/* y[n, m] = x[n, k] · w[m, k]ᵀ, f32 accumulation. x f32|bf16, w f32|bf16
 * (contiguous), y f32|bf16. The path (see pio_cuda_mm_path):
 *   n <= the tuned crossover (default 8): the matrix-vector kernel, which reads
 *     each weight row once for all n tokens with 16-byte loads;
 *   x and w bf16: cuBLAS (bf16 in, f32 accumulate, y f32 or bf16);
 *   x and w f32: cuBLAS in f32 (no TF32);
 *   otherwise (f32 x with bf16 w, the f32 reference mode): a tiled f32 kernel.
 * The result never depends on the path beyond f32 summation order. */
pio_status pio_cuda_matmul(pio_cuda_ctx *ctx, const pio_tensor *x, const pio_tensor *w,
                           pio_tensor *y, pio_error *err);

/* y = x / sqrt(mean(x², last dim) + eps) * w  (pio_cpu_rmsnorm). y may be x. */
pio_status pio_cuda_rmsnorm(pio_cuda_ctx *ctx, const pio_tensor *x, const pio_tensor *w, float eps,
                            pio_tensor *y, bool round_bf16, pio_error *err);

/* Residual add fused with the next norm: x ← x + r (rounded to bf16 in bf16
 * mode, as pio_cpu_binary then pio_cpu_round_bf16), then y = rmsnorm(x) · w.
 * r NULL: just the norm. y must not overlap x or r. */
pio_status pio_cuda_add_rmsnorm(pio_cuda_ctx *ctx, pio_tensor *x, const pio_tensor *r,
                                const pio_tensor *w, float eps, pio_tensor *y, bool round_bf16,
                                pio_error *err);

/* Rotate-half RoPE in place on x [n, heads, head_dim] (pio_cpu_rope), with the
 * batch's positions. inv_freq: device f32 [>= rot_dim/2]. cos/sin come from
 * CUDA's cosf/sinf (not the fast intrinsics): within 2 ulp of glibc's, so a
 * bf16-rounded value may rarely sit one bf16 step from the CPU's. */
pio_status pio_cuda_rope(pio_cuda_ctx *ctx, pio_tensor *x, const pio_cuda_batch *b,
                         const pio_tensor *inv_freq, int rot_dim, bool round_bf16,
                         pio_error *err);

/* Softmax in place over the last dimension. */
pio_status pio_cuda_softmax(pio_cuda_ctx *ctx, pio_tensor *x, pio_error *err);

/* out = silu(gate) * up, [n, d] each (out may alias either input). */
pio_status pio_cuda_silu_mul(pio_cuda_ctx *ctx, const pio_tensor *gate, const pio_tensor *up,
                             pio_tensor *out, bool round_bf16, pio_error *err);

/* out = a ∘ b, b the same shape as a or one element (pio_cpu_binary). */
pio_status pio_cuda_binary(pio_cuda_ctx *ctx, pio_binary_op op, const pio_tensor *a,
                           const pio_tensor *b, pio_tensor *out, pio_error *err);

/* Rounds an f32 device tensor to bf16 values in place (a bf16 tensor: nothing to do). */
pio_status pio_cuda_round_bf16(pio_cuda_ctx *ctx, pio_tensor *x, pio_error *err);

/* cache[seq[t], pos[t]] = k[t], v[t] for the batch (pio_cpu_kv_write).
 * k, v [n, kv_heads, head_dim] f32|bf16; caches [slots, ctx, kv_heads, head_dim] f32|bf16. */
pio_status pio_cuda_kv_write(pio_cuda_ctx *ctx, const pio_tensor *k, const pio_tensor *v,
                             pio_tensor *cache_k, pio_tensor *cache_v, const pio_cuda_batch *b,
                             pio_error *err);
/* The same into a paged cache: caches [n_blocks, block, kv_heads, head_dim] (the
 * table's), position p of slot s at row p % block of block table[s][p / block],
 * which must be present (PIO_ERR_RANGE naming the token otherwise). */
pio_status pio_cuda_kv_write_paged(pio_cuda_ctx *ctx, const pio_tensor *k, const pio_tensor *v,
                                   pio_tensor *cache_k, pio_tensor *cache_v,
                                   const pio_cuda_batch *b, const pio_cuda_block_table *table,
                                   pio_error *err);

/* Causal GQA attention over the cache (pio_cpu_attention): q [n, heads, dk],
 * out [n, heads, dv], token t attends cache[seq[t], 0..pos[t]]. Paths
 * (see pio_cuda_attn_path):
 *   split: one (token, kv head, key range) per block, the ranges combined by a
 *     second kernel; any dtype and mode; decode, and the f32 reference mode.
 *   tensor cores: bf16 caches, head_dim 64 or 128, a tile of consecutive tokens
 *     of one sequence times the query heads sharing a kv head per block;
 *     taken for prompts in bf16 mode (q holds bf16 values there, so feeding it
 *     to the tensor cores as bf16 is exact), in two passes so that every
 *     probability is rounded as transformers' eager attention rounds it.
 * round_bf16=false with a bf16 cache runs the split path unless
 * pio_cuda_set_attn_bf16_q allows rounding q to bf16 (then one online-softmax
 * pass, as SDPA/flash kernels do: close to, not equal to, the f32 result). */
pio_status pio_cuda_attention(pio_cuda_ctx *ctx, const pio_tensor *q, const pio_tensor *cache_k,
                              const pio_tensor *cache_v, const pio_cuda_batch *b, float scale,
                              pio_tensor *out, bool round_bf16, pio_error *err);
/* The same over a paged cache (caches [n_blocks, block, kv_heads, head_dim], the
 * table's geometry): key j of token t is row j % block of block table[seq][j / block];
 * blocks 0 .. pos[t] / block must be present. Same paths, same arithmetic: the
 * result equals pio_cuda_attention's on a contiguous cache of max_pos positions
 * holding the same keys, bit for bit. table NULL: pio_cuda_attention. */
pio_status pio_cuda_attention_paged(pio_cuda_ctx *ctx, const pio_tensor *q,
                                    const pio_tensor *cache_k, const pio_tensor *cache_v,
                                    const pio_cuda_batch *b, const pio_cuda_block_table *table,
                                    float scale, pio_tensor *out, bool round_bf16,
                                    pio_error *err);

/* ---- fused ops ----------------------------------------------------------- */

/* The attention block's middle in one launch (bf16 mode reads and writes each
 * activation once): per token and head,
 *   q ← rope(rmsnorm(q) · q_norm)                     in place
 *   cache_k[seq, pos] ← rope(rmsnorm(k) · k_norm)     k itself is left as it was
 *   cache_v[seq, pos] ← v
 * exactly as pio_cpu_rmsnorm, pio_cpu_rope and pio_cpu_kv_write in turn.
 * q_norm/k_norm NULL: no per-head norm. inv_freq NULL: no RoPE. */
typedef struct pio_cuda_qkv_args {
    pio_tensor *q;                    /* [n, heads, head_dim] f32|bf16 */
    const pio_tensor *k, *v;          /* [n, kv_heads, head_dim] f32|bf16 */
    const pio_tensor *q_norm, *k_norm;/* [head_dim] f32|bf16 or NULL */
    float eps;
    const pio_tensor *inv_freq;       /* device f32 [>= rot_dim/2] or NULL */
    int rot_dim;                      /* even, <= head_dim */
    pio_tensor *cache_k, *cache_v;    /* [slots, ctx, kv_heads, head_dim] f32|bf16, or with
                                         table [n_blocks, block, kv_heads, head_dim] */
    const pio_cuda_batch *batch;
    bool round_bf16;
    const pio_cuda_block_table *table; /* NULL: contiguous caches; else paged (kv_write_paged) */
} pio_cuda_qkv_args;

pio_status pio_cuda_qk_norm_rope_kv(pio_cuda_ctx *ctx, const pio_cuda_qkv_args *a,
                                    pio_error *err);

/* ---- mixture of experts (moe.cu; the twins of kernels/cpu/moe.c) ------------------
 * The int32/f32 arrays are device pointers (scratch of the caller's); routing and
 * grouping stay on the device, so a decode step needs no host round trip. */

/* pio_cpu_moe_route on the device: logits [n, E] f32 → ids, weights [n * top_k].
 * Softmax or sigmoid scoring; bias and expert groups are PIO_ERR_UNSUPPORTED. */
pio_status pio_cuda_moe_route(pio_cuda_ctx *ctx, const pio_tensor *logits,
                              const pio_moe_route_params *p, int32_t *ids, float *weights,
                              pio_error *err);
/* pio_cpu_moe_sort on the device (offsets [E + 1], pair_of_row, row_of_pair [n_pairs]),
 * and the experts that got rows: active [E + 1], active[0] = how many, then their ids
 * ascending. n_expert <= 4096. */
pio_status pio_cuda_moe_sort(pio_cuda_ctx *ctx, const int32_t *ids, int64_t n_pairs,
                             int32_t n_expert, int32_t *offsets, int32_t *pair_of_row,
                             int32_t *row_of_pair, int32_t *active, pio_error *err);
/* out[r, :] = x[pair_of_row[r] / top_k, :]; x [n, d], out [rows, d] f32|bf16. */
pio_status pio_cuda_moe_gather(pio_cuda_ctx *ctx, const pio_tensor *x, const int32_t *pair_of_row,
                               int32_t top_k, pio_tensor *out, pio_error *err);
/* y[r, :] = W_e · x[src, :] for the rows r = offsets[e] .. offsets[e+1]-1 of each expert
 * e (the grouped layout of pio_cuda_moe_sort), src = pair_of_row[r] / top_k (x_by_token:
 * x is the layer input [n, k]) or r (x is grouped [rows, k]). d_weights: a device array
 * of n_expert pointers to [m, k] weights (w_dtype f32|bf16); active: the list
 * pio_cuda_moe_sort made (blocks go to chosen experts alone). Each chosen expert's weights
 * are read once per batch (in passes of up to 8 rows), unchosen ones never: the path for
 * decode and small batches; prompts use pio_cuda_matmul per expert. k <= 12288. */
pio_status pio_cuda_moe_expert_matmul(pio_cuda_ctx *ctx, const pio_tensor *x,
                                      const void *const *d_weights, pio_dtype w_dtype, int64_t m,
                                      int64_t k, int32_t n_expert, const int32_t *offsets,
                                      const int32_t *active, const int32_t *pair_of_row,
                                      int32_t top_k, bool x_by_token, pio_tensor *y,
                                      pio_error *err);
/* pio_cpu_moe_combine on the device: out[t, :] = Σ_j w · y[row_of_pair[t·k + j], :] with
 * the CPU's order and roundings; top_k <= 32. */
pio_status pio_cuda_moe_combine(pio_cuda_ctx *ctx, const pio_tensor *y, const int32_t *row_of_pair,
                                const int32_t *ids, const float *weights, int32_t top_k,
                                pio_moe_accum accum, bool round_bf16, pio_tensor *out,
                                pio_error *err);

/* ---- path selection (for tuning and benchmarks) ---------------------------- */

typedef enum pio_cuda_mm_path {
    PIO_CUDA_MM_AUTO = 0, /* the crossover table, else n <= 8: matvec */
    PIO_CUDA_MM_MATVEC,   /* own matrix-vector kernel, any n (in passes of 8 tokens) */
    PIO_CUDA_MM_CUBLAS,   /* cuBLAS where the dtypes allow it, else the tiled kernel */
    PIO_CUDA_MM_TILED,    /* own tiled f32-accumulating kernel */
} pio_cuda_mm_path;

/* Forces a matmul path (PIO_CUDA_MM_AUTO: choose). */
void pio_cuda_set_mm_path(pio_cuda_ctx *ctx, pio_cuda_mm_path path);
/* Warps that share one weight row in the matvec kernel: 1, 2, 4 or 8; 0 = by
 * the number of rows (enough blocks to fill the device). */
void pio_cuda_set_matvec_warps(pio_cuda_ctx *ctx, int warps_per_row);

/* Times the matvec kernel against cuBLAS for a bf16 weight [m, k] at
 * n = 1, 2, 4, 8, 16 tokens (bf16 x, f32 y) and remembers, for this shape, the
 * largest n up to which the matvec kernel is faster (0: cuBLAS from n = 1).
 * AUTO then uses it. The weights used are scratch, not the model's. */
pio_status pio_cuda_matmul_tune(pio_cuda_ctx *ctx, int64_t m, int64_t k, pio_error *err);
/* The crossover AUTO uses for [m, k]: tuned, else the default 8. */
int pio_cuda_matmul_crossover(const pio_cuda_ctx *ctx, int64_t m, int64_t k);

typedef enum pio_cuda_attn_path {
    PIO_CUDA_ATTN_AUTO = 0,
    PIO_CUDA_ATTN_SPLIT, /* per-token split-K kernel, always possible */
    PIO_CUDA_ATTN_MMA,   /* tensor-core tiles where possible, else split */
} pio_cuda_attn_path;

void pio_cuda_set_attn_path(pio_cuda_ctx *ctx, pio_cuda_attn_path path);
/* Allows the tensor-core path with round_bf16=false (q rounded to bf16). */
void pio_cuda_set_attn_bf16_q(pio_cuda_ctx *ctx, bool allow);
/* Key-range splits per (token, kv head) in the split path; 0 = automatic
 * (enough blocks for two waves; a graph capture plans for the whole context). */
void pio_cuda_set_attn_splits(pio_cuda_ctx *ctx, int splits);

/* Programmatic dependent launch (Hopper): each kernel of the decode chain may
 * be scheduled while the one before it finishes, and waits on the device for
 * it before touching memory, so results do not change; launch gaps shrink.
 * On by default on Hopper and later; PIO_CUDA_PDL=0 in the environment turns
 * it off for new contexts. Not changed while capturing a graph. */
void pio_cuda_set_pdl(pio_cuda_ctx *ctx, bool on);
bool pio_cuda_pdl(const pio_cuda_ctx *ctx);

/* ---- CUDA graphs (a decode step captured once, replayed per token) --------- */

typedef struct pio_cuda_graph pio_cuda_graph;

/* Starts capturing the context's stream: ops enqueued until _end are
 * recorded, not run. Run the step once uncaptured first, so that every
 * buffer and workspace already has its size (allocation and pio_cuda_batch_set
 * are refused during capture). */
pio_status pio_cuda_graph_begin(pio_cuda_ctx *ctx, pio_error *err);
/* Ends the capture. *graph NULL: a new executable graph; otherwise the
 * existing one is updated in place when the topology matches (cheaper than
 * instantiating), else replaced. */
pio_status pio_cuda_graph_end(pio_cuda_ctx *ctx, pio_cuda_graph **graph, pio_error *err);
/* Enqueues one replay on the context's stream. */
pio_status pio_cuda_graph_launch(pio_cuda_ctx *ctx, pio_cuda_graph *graph, pio_error *err);
void pio_cuda_graph_free(pio_cuda_graph *graph);
bool pio_cuda_capturing(const pio_cuda_ctx *ctx);

/* ---- timing -------------------------------------------------------------- */

typedef struct pio_cuda_event pio_cuda_event;
pio_cuda_event *pio_cuda_event_new(pio_error *err);
void pio_cuda_event_free(pio_cuda_event *e);
/* Marks the current end of the context's stream. */
pio_status pio_cuda_event_record(pio_cuda_ctx *ctx, pio_cuda_event *e, pio_error *err);
/* Milliseconds from a to b (both recorded); waits for b. -1 with err on failure. */
double pio_cuda_event_ms(pio_cuda_event *a, pio_cuda_event *b, pio_error *err);

#endif
