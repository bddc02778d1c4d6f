/* kernels/cuda/cuda_internal.cuh: what the .cu files share. Not part of the
 * interface (that is cuda_ops.h). Host helpers return pio statuses; device
 * helpers read and write f32|bf16 activations. */
#ifndef PIO_CUDA_INTERNAL_CUH
#define PIO_CUDA_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdint.h>

extern "C" {
#include "cuda_ops.h"
}

/* Room for one "[a, b, c, d]" from pio_shape_str. */
#define PIO_SHAPE_BUF 96

enum { PIO_CUDA_MAX_TUNED = 64, PIO_CUDA_CROSSOVER_DEFAULT = 8, PIO_CUDA_MAX_SPLITS = 64 };

struct pio_cuda_pool; /* context.cu */

struct pio_cuda_ctx {
    int device;
    pio_cuda_device_info info;
    cudaStream_t stream;
    cublasHandle_t cublas;
    void *cublas_ws;
    size_t cublas_ws_bytes;

    pthread_mutex_t mu; /* guards the pool */
    pio_cuda_pool *pool;
    size_t in_use, cached, peak, limit;
    int64_t n_alloc, n_device_alloc;

    /* Scratch for kernels that need it (attention partial results), grown
     * outside graph capture only. */
    void *ws;
    size_t ws_bytes;

    bool capturing;
    bool pdl;           /* programmatic dependent launch (pio_cuda_set_pdl) */
    bool attn_smem_set; /* the tensor-core kernels' shared-memory limit raised */

    pio_cuda_mm_path mm_path;
    int matvec_wpr;
    pio_cuda_attn_path attn_path;
    bool attn_bf16_q;
    int attn_splits;
    struct { int64_t m, k; int crossover; } tuned[PIO_CUDA_MAX_TUNED];
    int n_tuned;
};

/* ---- host: errors and checks (context.cu) ------------------------------- */

/* Fills err from a CUDA error: PIO_ERR_OOM, PIO_ERR_NOT_FOUND (no driver or
 * device) or PIO_ERR_IO, "cuda: <what>: <message> (<name>)". Clears the
 * runtime's last error. Returns the status. */
pio_status pio_cuda_fail(pio_error *err, cudaError_t e, const char *what);
pio_status pio_cublas_fail(pio_error *err, cublasStatus_t s, const char *what);

#define CU_TRY(call, what)                                                    \
    do {                                                                      \
        cudaError_t cu_e_ = (call);                                           \
        if (cu_e_ != cudaSuccess) return pio_cuda_fail(err, cu_e_, (what));   \
    } while (0)

/* After a launch: a bad configuration shows up here (a failure inside the
 * kernel shows up at the next synchronisation). */
static inline pio_status pio_cuda_launched(pio_error *err, const char *op) {
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? PIO_OK : pio_cuda_fail(err, e, op);
}

/* Makes ctx's device current for this thread (cheap when it already is). */
pio_status pio_cuda_enter(pio_cuda_ctx *ctx, pio_error *err);

/* Scratch of at least `bytes` (ctx->ws), grown when needed; refused during capture. */
void *pio_cuda_workspace(pio_cuda_ctx *ctx, size_t bytes, pio_error *err);

enum { DT_F32 = 1u << PIO_F32, DT_BF16 = 1u << PIO_BF16, DT_ACT = DT_F32 | DT_BF16 };

/* t present, on this device, dtype in `dtypes`; contiguous, or (rows_ok)
 * row-strided: dims 1.. contiguous, dim 0 any stride >= one row. */
bool pio_cuda_check(const char *op, const char *name, const pio_tensor *t, unsigned dtypes,
                    bool rows_ok, pio_error *err);
pio_status pio_cuda_shape_error(pio_error *err, const char *op, const char *a_name,
                                const pio_tensor *a, const char *b_name, const pio_tensor *b,
                                const char *why);
/* Byte ranges spanned by a and b overlap / overlap without being the same tensor data. */
bool pio_cuda_overlap(const pio_tensor *a, const pio_tensor *b);
bool pio_cuda_partial_overlap(const pio_tensor *a, const pio_tensor *b);

/* A tensor as rows: row r starts at element (r / group) * stride + (r % group) * width.
 * pio_cuda_rows: width = the product of dims 1.. (ndim 1: one row), group 1.
 * pio_cuda_rows_last: width = the last dim, group = the product of dims 1..ndim-2
 * (for ops over the last dimension: x [..., d]). Needs pio_cuda_check's layout. */
struct pio_rows {
    char *p; /* first element */
    int64_t rows, width, group;
    int64_t stride; /* elements between dim-0 slices */
    bool bf16;
    __host__ __device__ int64_t at(int64_t r) const {
        return group == 1 ? r * stride : (r / group) * stride + (r % group) * width;
    }
};
pio_rows pio_cuda_rows(const pio_tensor *t);
pio_rows pio_cuda_rows_last(const pio_tensor *t);

/* The batch's attention tile plan for `tpt` tokens per tile (batch.cu). */
pio_status pio_cuda_batch_plan(pio_cuda_ctx *ctx, const pio_cuda_batch *b, int32_t tpt,
                               pio_error *err);
/* Checks the batch's seq/pos against a cache [slots, ctx, ...]. */
pio_status pio_cuda_batch_check_cache(const char *op, const pio_cuda_batch *b,
                                      const pio_tensor *cache, pio_error *err);
/* Checks the batch's seq/pos against a block table and its pool cache
 * [n_blocks, block, ...]: slots and positions in range, and each token's block
 * present (whole: every block up to the token's, as attention reads them). */
pio_status pio_cuda_batch_check_table(const char *op, const pio_cuda_batch *b,
                                      const pio_cuda_block_table *t, const pio_tensor *cache,
                                      bool whole, pio_error *err);

/* ---- device helpers ----------------------------------------------------- */

static __device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) {
    return __uint_as_float((uint32_t)h << 16);
}
/* Round to nearest even, as pio_f32_to_bf16 (a NaN stays a NaN). */
static __device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}
static __device__ __forceinline__ float round_bf16(float f) {
    return bf16_bits_to_f32(f32_to_bf16_bits(f));
}

static __device__ __forceinline__ float load_act(const void *p, int64_t i, bool bf16) {
    return bf16 ? bf16_bits_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}
static __device__ __forceinline__ void store_act(void *p, int64_t i, bool bf16, float v) {
    if (bf16)
        ((uint16_t *)p)[i] = f32_to_bf16_bits(v);
    else
        ((float *)p)[i] = v;
}

static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets
 * the result. `red` is __shared__ float[32]. Starts and ends with a barrier so
 * it can be called back to back. */
static __device__ __forceinline__ float block_sum(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.0f;
    return warp_sum(t);
}
static __device__ __forceinline__ float block_max(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : -INFINITY;
    return warp_max(t);
}

/* Programmatic dependent launch (Hopper): a kernel launched with it may be
 * scheduled while the one before it is still finishing; it must wait here,
 * before touching memory, for the earlier grids to complete. Every kernel of
 * the decode chain starts with this wait, so reads after writes and writes
 * after reads stay ordered exactly as on a plain stream; what overlaps is the
 * launch and the blocks' start-up. Without the launch attribute (or before
 * sm_90) the wait returns at once. */
static __device__ __forceinline__ void pio_wait_prior() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cudaGridDependencySynchronize();
#endif
}

/* kernel<<<grid, block, smem, ctx's stream>>>(args...), with programmatic
 * dependent launch when ctx->pdl. Errors show up in cudaGetLastError, as for
 * <<<>>> (pio_cuda_launched). */
template <typename... KArgs, typename... Args>
static inline void pio_launch(const pio_cuda_ctx *ctx, void (*kernel)(KArgs...), dim3 grid,
                              dim3 block, size_t smem, Args... args) {
    if (!ctx->pdl) {
        kernel<<<grid, block, smem, ctx->stream>>>(args...);
        return;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = ctx->stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    cudaLaunchKernelEx(&cfg, kernel, args...);
}

static inline unsigned pio_cuda_blocks(int64_t n, int per_block) {
    return (unsigned)((n + per_block - 1) / per_block);
}

#endif
