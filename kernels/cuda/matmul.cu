/* y[n, m] = x[n, k] · w[m, k]ᵀ: the decode matrix-vector kernel, cuBLAS for
 * prompts, a tiled f32 kernel for the dtypes cuBLAS has no exact path for,
 * and the selector between them.
 *
 * Decode reads every weight once per token, so its floor is weight bytes ÷
 * memory bandwidth (Qwen3-4B: 8 GB of bf16 per token, about 2.4 ms on an
 * H100's ~3.3 TB/s). The matvec kernel is built for that floor: each lane
 * streams 16-byte chunks of a weight row (8 bf16) with loads that bypass L1,
 * four chunks in flight before the first use; one or more warps per row and
 * 8 warps per block, so enough loads are in flight to cover DRAM latency; the
 * activations (a few KB) are read through the read-only cache. It handles up
 * to 8 tokens per pass, so each weight row is read once for all of them. */
#include <algorithm>
#include <math.h>
#include <stdlib.h>

#include "cuda_internal.cuh"

enum { MV_THREADS = 256, MV_WARPS = MV_THREADS / 32, MV_MAX_NT = 8 };

/* 16 bytes of weights, not kept in L1 (each is used once). */
static __device__ __forceinline__ uint4 ld_stream16(const void *p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

/* The 8 activations of token row xr at [c0, c0 + 8) as f32. */
template <bool XBF16>
static __device__ __forceinline__ void load_x8(const void *xr, int64_t c0, float (&xv)[8]) {
    if (XBF16) {
        uint4 u = __ldg((const uint4 *)((const uint16_t *)xr + c0));
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            xv[2 * i] = __uint_as_float(w[i] << 16);
            xv[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    } else {
        float4 a = __ldg((const float4 *)((const float *)xr + c0));
        float4 b = __ldg((const float4 *)((const float *)xr + c0 + 4));
        xv[0] = a.x, xv[1] = a.y, xv[2] = a.z, xv[3] = a.w;
        xv[4] = b.x, xv[5] = b.y, xv[6] = b.z, xv[7] = b.w;
    }
}

/* acc[t] += Σ_i x[t, c0 + i] · w[i] over one 8-wide chunk, for t < n. */
template <int NT, bool XBF16>
static __device__ __forceinline__ void fma_chunk(float (&acc)[NT], uint4 wq, const void *x,
                                                 int64_t ldx, int n, int64_t c0) {
    float wv[8];
    const uint32_t w[4] = {wq.x, wq.y, wq.z, wq.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        wv[2 * i] = __uint_as_float(w[i] << 16);
        wv[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (t < n) {
            float xv[8];
            load_x8<XBF16>(XBF16 ? (const void *)((const uint16_t *)x + t * ldx)
                                 : (const void *)((const float *)x + t * ldx),
                           c0, xv);
#pragma unroll
            for (int i = 0; i < 8; i++) acc[t] = fmaf(xv[i], wv[i], acc[t]);
        }
    }
}

/* Block: 8 warps; `wpr` warps per weight row (1, 2, 4 or 8), so 8 / wpr rows.
 * Chunk c of a row (8 weights) goes to warp part (c / 32) % wpr, lane c % 32.
 * Needs k % 8 == 0 and 16-byte aligned rows of w and x (checked by the caller). */
template <int NT, bool XBF16>
static __global__ void __launch_bounds__(MV_THREADS)
    matvec_bf16_kernel(const uint16_t *__restrict__ w, int64_t m, int64_t k,
                       const void *__restrict__ x, int64_t ldx, int n, void *__restrict__ y,
                       int64_t ldy, bool y_bf16, int wpr) {
    pio_wait_prior();
    __shared__ float part_sum[MV_WARPS][NT];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rows_per_block = MV_WARPS / wpr, part = warp % wpr;
    const int64_t row = (int64_t)blockIdx.x * rows_per_block + warp / wpr;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;

    if (row < m) {
        const uint16_t *wr = w + row * k;
        const int64_t chunks = k / 8, step = (int64_t)wpr * 32;
        int64_t c = (int64_t)part * 32 + lane;
        for (; c + 3 * step < chunks; c += 4 * step) { /* 4 loads in flight, then the math */
            uint4 wq[4];
#pragma unroll
            for (int u = 0; u < 4; u++) wq[u] = ld_stream16(wr + (c + u * step) * 8);
#pragma unroll
            for (int u = 0; u < 4; u++) fma_chunk<NT, XBF16>(acc, wq[u], x, ldx, n, (c + u * step) * 8);
        }
        for (; c < chunks; c += step) fma_chunk<NT, XBF16>(acc, ld_stream16(wr + c * 8), x, ldx, n, c * 8);
    }
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = warp_sum(acc[t]);
    if (wpr > 1) { /* combine the row's warps */
        if (lane == 0)
#pragma unroll
            for (int t = 0; t < NT; t++) part_sum[warp][t] = acc[t];
        __syncthreads();
        if (part == 0 && lane == 0)
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float s = 0.0f;
                for (int p = 0; p < wpr; p++) s += part_sum[warp + p][t];
                acc[t] = s;
            }
    }
    if (row < m && part == 0 && lane == 0)
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (t < n) store_act(y, t * ldy + row, y_bf16, acc[t]);
}

/* Any dtypes and alignment: one warp per row, scalar loads. */
static __global__ void __launch_bounds__(MV_THREADS)
    matvec_generic_kernel(const void *__restrict__ w, bool w_bf16, int64_t m, int64_t k,
                          const void *__restrict__ x, bool x_bf16, int64_t ldx, int n,
                          void *__restrict__ y, int64_t ldy, bool y_bf16) {
    pio_wait_prior();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * MV_WARPS + warp;
    if (row >= m) return;
    float acc[MV_MAX_NT] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t i = lane; i < k; i += 32) {
        const float wv = load_act(w, row * k + i, w_bf16);
#pragma unroll
        for (int t = 0; t < MV_MAX_NT; t++)
            if (t < n) acc[t] = fmaf(load_act(x, t * ldx + i, x_bf16), wv, acc[t]);
    }
#pragma unroll
    for (int t = 0; t < MV_MAX_NT; t++) {
        float s = warp_sum(acc[t]);
        if (t < n && lane == 0) store_act(y, t * ldy + row, y_bf16, s);
    }
}

/* ---- tiled f32-accumulating kernel -------------------------------------------- */

/* 64 tokens × 64 outputs per block, k in steps of 16 through shared memory,
 * 4 × 4 results per thread. Exact f32 products of the given values, for the
 * f32 reference mode (f32 x with bf16 weights has no exact cuBLAS path). */
enum { TB_M = 64, TB_N = 64, TB_K = 16 };

static __global__ void __launch_bounds__(256)
    gemm_tiled_kernel(const void *__restrict__ x, bool x_bf16, int64_t ldx,
                      const void *__restrict__ w, bool w_bf16, int64_t n, int64_t m, int64_t k,
                      void *__restrict__ y, int64_t ldy, bool y_bf16) {
    __shared__ float xs[TB_K][TB_M + 4], ws[TB_K][TB_N + 4];
    const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
    const int64_t r0 = (int64_t)blockIdx.y * TB_M, c0 = (int64_t)blockIdx.x * TB_N;
    float acc[4][4] = {};
    for (int64_t k0 = 0; k0 < k; k0 += TB_K) {
#pragma unroll
        for (int l = 0; l < 4; l++) {
            const int e = tid + l * 256, rr = e / TB_K, kk = e % TB_K;
            const int64_t gk = k0 + kk;
            xs[kk][rr] = (r0 + rr < n && gk < k) ? load_act(x, (r0 + rr) * ldx + gk, x_bf16) : 0.0f;
            ws[kk][rr] = (c0 + rr < m && gk < k) ? load_act(w, (c0 + rr) * k + gk, w_bf16) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TB_K; kk++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = xs[kk][ty * 4 + i], b[i] = ws[kk][tx * 4 + i];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int64_t r = r0 + ty * 4 + i, c = c0 + tx * 4 + j;
            if (r < n && c < m) store_act(y, r * ldy + c, y_bf16, acc[i][j]);
        }
}

/* ---- launchers ------------------------------------------------------------------- */

struct mm_args {
    const void *x, *w;
    void *y;
    bool x_bf16, w_bf16, y_bf16;
    int64_t n, m, k, ldx, ldy; /* in elements */
};

static int auto_wpr(const pio_cuda_ctx *ctx, int64_t m) {
    if (ctx->matvec_wpr) return ctx->matvec_wpr;
    /* The fewest warps per row that still give ~4 blocks per SM. */
    const int64_t want = 4 * (int64_t)ctx->info.sm_count;
    for (int wpr = 1; wpr < 8; wpr *= 2)
        if ((m * wpr + MV_WARPS - 1) / MV_WARPS >= want) return wpr;
    return 8;
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

template <int NT>
static void launch_mv_fast(const pio_cuda_ctx *ctx, const mm_args &a, int n, const void *x,
                           void *y, int wpr) {
    const unsigned blocks = pio_cuda_blocks(a.m, MV_WARPS / wpr);
    const uint16_t *w = (const uint16_t *)a.w;
    if (a.x_bf16)
        pio_launch(ctx, matvec_bf16_kernel<NT, true>, dim3(blocks), dim3(MV_THREADS), 0, w, a.m,
                   a.k, x, a.ldx, n, y, a.ldy, a.y_bf16, wpr);
    else
        pio_launch(ctx, matvec_bf16_kernel<NT, false>, dim3(blocks), dim3(MV_THREADS), 0, w, a.m,
                   a.k, x, a.ldx, n, y, a.ldy, a.y_bf16, wpr);
}

static pio_status run_matvec(pio_cuda_ctx *ctx, const mm_args &a, pio_error *err) {
    const size_t xes = a.x_bf16 ? 2 : 4, yes = a.y_bf16 ? 2 : 4;
    const bool fast = a.w_bf16 && a.k % 8 == 0 && aligned16(a.w) && aligned16(a.x) &&
                      (a.ldx * (int64_t)xes) % 16 == 0;
    const int wpr = auto_wpr(ctx, a.m);
    for (int64_t t0 = 0; t0 < a.n; t0 += MV_MAX_NT) {
        const int n = (int)std::min<int64_t>(MV_MAX_NT, a.n - t0);
        const void *x = (const char *)a.x + (size_t)(t0 * a.ldx) * xes;
        void *y = (char *)a.y + (size_t)(t0 * a.ldy) * yes;
        if (!fast) {
            pio_launch(ctx, matvec_generic_kernel, dim3(pio_cuda_blocks(a.m, MV_WARPS)),
                       dim3(MV_THREADS), 0, a.w, a.w_bf16, a.m, a.k, x, a.x_bf16, a.ldx, n, y,
                       a.ldy, a.y_bf16);
        } else if (n == 1) {
            launch_mv_fast<1>(ctx, a, n, x, y, wpr);
        } else if (n == 2) {
            launch_mv_fast<2>(ctx, a, n, x, y, wpr);
        } else if (n <= 4) {
            launch_mv_fast<4>(ctx, a, n, x, y, wpr);
        } else {
            launch_mv_fast<8>(ctx, a, n, x, y, wpr);
        }
        pio_status st = pio_cuda_launched(err, "matmul (matvec)");
        if (st) return st;
    }
    return PIO_OK;
}

static pio_status run_tiled(pio_cuda_ctx *ctx, const mm_args &a, pio_error *err) {
    const int64_t gx = (a.m + TB_N - 1) / TB_N, gy = (a.n + TB_M - 1) / TB_M;
    if (gy > 65535)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "matmul: %lld rows is too many for the tiled kernel",
                             (long long)a.n);
    gemm_tiled_kernel<<<dim3((unsigned)gx, (unsigned)gy), 256, 0, ctx->stream>>>(
        a.x, a.x_bf16, a.ldx, a.w, a.w_bf16, a.n, a.m, a.k, a.y, a.ldy, a.y_bf16);
    return pio_cuda_launched(err, "matmul (tiled)");
}

static bool cublas_fits(const mm_args &a) {
    return (a.x_bf16 && a.w_bf16) || (!a.x_bf16 && !a.w_bf16 && !a.y_bf16);
}

/* Row-major y[n, m] = x[n, k] · w[m, k]ᵀ is column-major yᵀ[m, n] = wᵀ... that is
 * C(m×n, ld ldy) = op(A) B with A = w seen column-major as k×m (ld k), op = T,
 * and B = x seen column-major as k×n (ld ldx): the "TN" layout cuBLAS is fastest at. */
static pio_status run_cublas(pio_cuda_ctx *ctx, const mm_args &a, pio_error *err) {
    const float one = 1.0f, zero = 0.0f;
    const cudaDataType_t in = a.x_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cudaDataType_t out = a.y_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    if (a.n > INT32_MAX || a.m > INT32_MAX || a.k > INT32_MAX || a.ldx > INT32_MAX ||
        a.ldy > INT32_MAX)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "matmul: a dimension beyond 2^31 for cuBLAS");
    cublasStatus_t s = cublasGemmEx(ctx->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)a.m, (int)a.n,
                                    (int)a.k, &one, a.w, in, (int)a.k, a.x, in, (int)a.ldx, &zero,
                                    a.y, out, (int)a.ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS) return pio_cublas_fail(err, s, "matmul (cublasGemmEx)");
    return PIO_OK;
}

int pio_cuda_matmul_crossover(const pio_cuda_ctx *ctx, int64_t m, int64_t k) {
    for (int i = 0; i < ctx->n_tuned; i++)
        if (ctx->tuned[i].m == m && ctx->tuned[i].k == k) return ctx->tuned[i].crossover;
    return PIO_CUDA_CROSSOVER_DEFAULT;
}

static pio_status run_mm(pio_cuda_ctx *ctx, const mm_args &a, pio_cuda_mm_path path,
                         pio_error *err) {
    if (path == PIO_CUDA_MM_AUTO) {
        if (a.n <= pio_cuda_matmul_crossover(ctx, a.m, a.k) && a.n <= MV_MAX_NT)
            path = PIO_CUDA_MM_MATVEC;
        else
            path = cublas_fits(a) ? PIO_CUDA_MM_CUBLAS : PIO_CUDA_MM_TILED;
    }
    if (path == PIO_CUDA_MM_CUBLAS && !cublas_fits(a)) path = PIO_CUDA_MM_TILED;
    switch (path) {
    case PIO_CUDA_MM_MATVEC: return run_matvec(ctx, a, err);
    case PIO_CUDA_MM_CUBLAS: return run_cublas(ctx, a, err);
    default: return run_tiled(ctx, a, err);
    }
}

pio_status pio_cuda_matmul(pio_cuda_ctx *ctx, const pio_tensor *x, const pio_tensor *w,
                           pio_tensor *y, pio_error *err) {
    const char *op = "matmul";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check(op, "x", x, DT_ACT, true, err) ||
        !pio_cuda_check(op, "w", w, DT_ACT, false, err) ||
        !pio_cuda_check(op, "y", y, DT_ACT, true, err))
        return PIO_ERR_INVALID;
    if (w->ndim != 2 || x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1])
        return pio_cuda_shape_error(err, op, "x", x, "w", w, "do not fit x[n, k] · w[m, k]ᵀ");
    bool lead_same = y->ndim == x->ndim;
    for (int i = 0; lead_same && i < x->ndim - 1; i++) lead_same = y->shape[i] == x->shape[i];
    if (!lead_same || y->shape[y->ndim - 1] != w->shape[0])
        return pio_cuda_shape_error(err, op, "x", x, "y", y,
                                    "do not fit y[n, m] = x[n, k] · w[m, k]ᵀ (y must be [n, m])");
    if (pio_cuda_overlap(x, y))
        return pio_cuda_shape_error(err, op, "x", x, "y", y, "overlap in memory");
    if (pio_cuda_overlap(w, y))
        return pio_cuda_shape_error(err, op, "w", w, "y", y, "overlap in memory");
    /* x, y as [n, k], [n, m] rows: 2-D row-strided, or contiguous of any rank. */
    if ((x->ndim > 2 && !pio_tensor_is_contiguous(x)) || (y->ndim > 2 && !pio_tensor_is_contiguous(y)))
        return pio_cuda_shape_error(err, op, "x", x, "y", y,
                                    "must be contiguous beyond 2 dimensions");
    pio_rows xr = pio_cuda_rows_last(x), yr = pio_cuda_rows_last(y);
    mm_args a;
    a.x = xr.p;
    a.w = pio_tensor_data(w);
    a.y = yr.p;
    a.x_bf16 = xr.bf16;
    a.w_bf16 = w->dtype == PIO_BF16;
    a.y_bf16 = yr.bf16;
    a.n = xr.rows;
    a.k = w->shape[1];
    a.m = w->shape[0];
    a.ldx = xr.stride;
    a.ldy = yr.stride;
    if (a.n == 0 || a.m == 0) return PIO_OK;
    if (a.k == 0) { /* an empty sum: zeros, row by row (y may be strided) */
        for (int64_t r = 0; r < a.n; r++)
            CU_TRY(cudaMemsetAsync((char *)a.y + (size_t)(r * a.ldy) * (a.y_bf16 ? 2 : 4), 0,
                                   (size_t)a.m * (a.y_bf16 ? 2 : 4), ctx->stream),
                   "matmul (zero fill)");
        return PIO_OK;
    }
    return run_mm(ctx, a, ctx->mm_path, err);
}

/* ---- the selector's measurements ---------------------------------------------------- */

static pio_status time_path(pio_cuda_ctx *ctx, const mm_args &a, pio_cuda_mm_path path,
                            cudaEvent_t e0, cudaEvent_t e1, float *ms, pio_error *err) {
    pio_status st;
    for (int i = 0; i < 3; i++) /* warm up (cuBLAS picks and loads its kernel) */
        if ((st = run_mm(ctx, a, path, err))) return st;
    enum { REPS = 20 };
    CU_TRY(cudaEventRecord(e0, ctx->stream), "tune");
    for (int i = 0; i < REPS; i++)
        if ((st = run_mm(ctx, a, path, err))) return st;
    CU_TRY(cudaEventRecord(e1, ctx->stream), "tune");
    CU_TRY(cudaEventSynchronize(e1), "tune");
    CU_TRY(cudaEventElapsedTime(ms, e0, e1), "tune");
    *ms /= REPS;
    return PIO_OK;
}

pio_status pio_cuda_matmul_tune(pio_cuda_ctx *ctx, int64_t m, int64_t k, pio_error *err) {
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (ctx->capturing)
        return pio_error_set(err, PIO_ERR_INVALID, "matmul_tune: not during graph capture");
    if (m <= 0 || k <= 0)
        return pio_error_set(err, PIO_ERR_INVALID, "matmul_tune: shape [%lld, %lld] is empty",
                             (long long)m, (long long)k);
    enum { NMAX = 16 };
    const int64_t ws[2] = {m, k}, xs[2] = {NMAX, k}, ys[2] = {NMAX, m};
    pio_tensor *w = pio_cuda_tensor_new(ctx, PIO_BF16, 2, ws, err);
    pio_tensor *x = w ? pio_cuda_tensor_new(ctx, PIO_BF16, 2, xs, err) : NULL;
    pio_tensor *y = x ? pio_cuda_tensor_new(ctx, PIO_F32, 2, ys, err) : NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    int crossover = 0;
    if (!y) {
        st = err ? err->status : PIO_ERR_OOM;
        goto done;
    }
    if ((st = pio_cuda_fill_random(ctx, w, 1, 0.02f, err)) ||
        (st = pio_cuda_fill_random(ctx, x, 2, 1.0f, err)))
        goto done;
    if (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        st = pio_cuda_fail(err, cudaGetLastError(), "tune: cudaEventCreate");
        goto done;
    }
    for (int n = 1; n <= NMAX; n *= 2) {
        mm_args a;
        a.x = pio_tensor_data(x);
        a.w = pio_tensor_data(w);
        a.y = pio_tensor_data(y);
        a.x_bf16 = a.w_bf16 = true;
        a.y_bf16 = false;
        a.n = n;
        a.m = m;
        a.k = k;
        a.ldx = k;
        a.ldy = m;
        float t_mv = 0, t_cb = 0;
        if ((st = time_path(ctx, a, PIO_CUDA_MM_MATVEC, e0, e1, &t_mv, err)) ||
            (st = time_path(ctx, a, PIO_CUDA_MM_CUBLAS, e0, e1, &t_cb, err)))
            goto done;
        if (t_mv >= t_cb) break;
        crossover = n;
    }
    {
        int slot = ctx->n_tuned;
        for (int i = 0; i < ctx->n_tuned; i++)
            if (ctx->tuned[i].m == m && ctx->tuned[i].k == k) slot = i;
        if (slot == PIO_CUDA_MAX_TUNED) slot = PIO_CUDA_MAX_TUNED - 1; /* full: replace the last */
        ctx->tuned[slot].m = m;
        ctx->tuned[slot].k = k;
        ctx->tuned[slot].crossover = crossover;
        if (slot == ctx->n_tuned) ctx->n_tuned++;
    }
done:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    pio_cuda_tensor_free(ctx, y);
    pio_cuda_tensor_free(ctx, x);
    pio_cuda_tensor_free(ctx, w);
    return st;
}
