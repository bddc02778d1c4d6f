/* The CUDA context: device discovery, stream, cuBLAS handle, the caching
 * memory pool, device tensors and copies, graphs and events. */
#include <map>
#include <new>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unordered_map>

#include "cuda_internal.cuh"

/* ---- errors --------------------------------------------------------------- */

pio_status pio_cuda_fail(pio_error *err, cudaError_t e, const char *what) {
    cudaGetLastError(); /* clear a non-sticky error so the next call starts clean */
    pio_status st = PIO_ERR_IO;
    if (e == cudaErrorMemoryAllocation)
        st = PIO_ERR_OOM;
    else if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ||
             e == cudaErrorInvalidDevice || e == cudaErrorSystemDriverMismatch ||
             e == cudaErrorCompatNotSupportedOnDevice)
        st = PIO_ERR_NOT_FOUND;
    return pio_error_set(err, st, "cuda: %s: %s (%s)", what, cudaGetErrorString(e),
                         cudaGetErrorName(e));
}

pio_status pio_cublas_fail(pio_error *err, cublasStatus_t s, const char *what) {
    pio_status st = s == CUBLAS_STATUS_ALLOC_FAILED ? PIO_ERR_OOM : PIO_ERR_IO;
    return pio_error_set(err, st, "cublas: %s: %s (%s)", what, cublasGetStatusString(s),
                         cublasGetStatusName(s));
}

/* ---- devices -------------------------------------------------------------- */

/* A kernel to ask whether this build has code the device can run. */
static __global__ void probe_kernel(int *p) {
    if (p) *p = 1;
}

/* The architectures this build carries, e.g. "sm_90", for messages. */
static void arch_list(char *buf, size_t len) {
    buf[0] = 0;
#ifdef __CUDA_ARCH_LIST__
    static const int archs[] = {__CUDA_ARCH_LIST__};
    size_t used = 0;
    for (size_t i = 0; i < sizeof archs / sizeof archs[0] && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%ssm_%d", i ? ", " : "", archs[i] / 10);
#else
    snprintf(buf, len, "unknown architectures");
#endif
}

pio_status pio_cuda_device_query(int device, pio_cuda_device_info *info, pio_error *err) {
    memset(info, 0, sizeof *info);
    cudaDeviceProp prop;
    CU_TRY(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    info->device = device;
    snprintf(info->name, sizeof info->name, "%s", prop.name);
    info->cc_major = prop.major;
    info->cc_minor = prop.minor;
    info->sm_count = prop.multiProcessorCount;
    info->total_bytes = prop.totalGlobalMem;
    info->l2_bytes = prop.l2CacheSize;
    info->smem_optin = prop.sharedMemPerBlockOptin;
    cudaDriverGetVersion(&info->driver_version);
    cudaRuntimeGetVersion(&info->runtime_version);
    int prev = -1;
    cudaGetDevice(&prev);
    if (cudaSetDevice(device) == cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) info->free_bytes = free_b;
        cudaGetLastError();
    }
    if (prev >= 0) cudaSetDevice(prev);
    return PIO_OK;
}

int pio_cuda_available(pio_error *err) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        int drv = 0, rt = 0;
        cudaDriverGetVersion(&drv);
        cudaRuntimeGetVersion(&rt);
        cudaGetLastError();
        if (drv == 0)
            pio_error_set(err, PIO_ERR_NOT_FOUND,
                          "cuda: no usable GPU: no NVIDIA driver is loaded (%s: %s)",
                          cudaGetErrorName(e), cudaGetErrorString(e));
        else
            pio_error_set(err, PIO_ERR_NOT_FOUND,
                          "cuda: no usable GPU: %s (%s; driver supports CUDA %d.%d, runtime is "
                          "%d.%d)",
                          cudaGetErrorString(e), cudaGetErrorName(e), drv / 1000,
                          drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
        return 0;
    }
    if (count == 0) {
        pio_error_set(err, PIO_ERR_NOT_FOUND, "cuda: no usable GPU: the driver reports no device");
        return 0;
    }
    /* Count the devices this build's code runs on. */
    int prev = -1, usable = 0;
    cudaGetDevice(&prev);
    char first[320] = "";
    for (int d = 0; d < count; d++) {
        cudaFuncAttributes attr;
        cudaError_t se = cudaSetDevice(d);
        cudaError_t fe = se == cudaSuccess ? cudaFuncGetAttributes(&attr, probe_kernel) : se;
        if (fe == cudaSuccess) {
            usable++;
        } else if (!first[0]) {
            cudaDeviceProp prop;
            char archs[128];
            arch_list(archs, sizeof archs);
            if (cudaGetDeviceProperties(&prop, d) == cudaSuccess)
                snprintf(first, sizeof first,
                         "device %d (%s) has compute capability %d.%d and this build has code "
                         "for %s only (%s)",
                         d, prop.name, prop.major, prop.minor, archs, cudaGetErrorName(fe));
            else
                snprintf(first, sizeof first, "device %d: %s (%s)", d, cudaGetErrorString(fe),
                         cudaGetErrorName(fe));
        }
        cudaGetLastError();
    }
    if (prev >= 0) cudaSetDevice(prev);
    if (usable == 0) {
        pio_error_set(err, PIO_ERR_NOT_FOUND, "cuda: no usable GPU: %s", first);
        return 0;
    }
    return usable;
}

/* ---- the pool -------------------------------------------------------------- */

struct pio_cuda_pool {
    std::multimap<size_t, void *> free_blocks;  /* by size */
    std::unordered_map<void *, size_t> used;    /* block → size */
};

static size_t round_block(size_t bytes) {
    const size_t small = 512, large = (size_t)2 << 20;
    if (bytes == 0) bytes = 1;
    return bytes < ((size_t)1 << 20) ? (bytes + small - 1) / small * small
                                     : (bytes + large - 1) / large * large;
}

static void release_cached(pio_cuda_ctx *ctx) { /* mu held */
    for (auto &kv : ctx->pool->free_blocks) cudaFree(kv.second);
    ctx->pool->free_blocks.clear();
    ctx->cached = 0;
}

static void mib(char *buf, size_t len, size_t bytes) {
    snprintf(buf, len, "%.1f MiB", (double)bytes / (1024.0 * 1024.0));
}

static void *oom(pio_cuda_ctx *ctx, size_t want, const char *why, pio_error *err) {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    cudaGetLastError();
    char a[32], b[32], c[32], d[32], e[32], f[32];
    mib(a, sizeof a, want);
    mib(b, sizeof b, ctx->in_use);
    mib(c, sizeof c, ctx->cached);
    mib(d, sizeof d, ctx->limit);
    mib(e, sizeof e, free_b);
    mib(f, sizeof f, total_b);
    pio_error_set(err, PIO_ERR_OOM,
                  "cuda: out of device memory allocating %s on device %d (%s): %s; the pool holds "
                  "%s in use and %s cached of its %s limit; the device has %s free of %s",
                  a, ctx->device, ctx->info.name, why, b, c, d, e, f);
    return NULL;
}

void *pio_cuda_alloc(pio_cuda_ctx *ctx, size_t bytes, pio_error *err) {
    const size_t size = round_block(bytes);
    void *p = NULL;
    pthread_mutex_lock(&ctx->mu);
    ctx->n_alloc++;
    try {
        auto it = ctx->pool->free_blocks.lower_bound(size);
        if (it != ctx->pool->free_blocks.end() && it->first <= size + size / 8) {
            size_t got = it->first;
            p = it->second;
            ctx->pool->free_blocks.erase(it);
            ctx->cached -= got;
            ctx->in_use += got;
            ctx->pool->used[p] = got;
            pthread_mutex_unlock(&ctx->mu);
            return p;
        }
        if (ctx->capturing) {
            pthread_mutex_unlock(&ctx->mu);
            char a[32];
            mib(a, sizeof a, size);
            pio_error_set(err, PIO_ERR_INVALID,
                          "cuda: allocating %s while a graph is being captured: run the step "
                          "once before capturing so that its buffers exist",
                          a);
            return NULL;
        }
        if (ctx->in_use + ctx->cached + size > ctx->limit) release_cached(ctx);
        if (ctx->in_use + size > ctx->limit) {
            oom(ctx, size, "over the pool's limit", err);
            pthread_mutex_unlock(&ctx->mu);
            return NULL;
        }
        cudaError_t e = cudaMalloc(&p, size);
        if (e == cudaErrorMemoryAllocation) { /* give the cache back and try once more */
            cudaGetLastError();
            release_cached(ctx);
            e = cudaMalloc(&p, size);
        }
        if (e != cudaSuccess) {
            cudaGetLastError();
            if (e == cudaErrorMemoryAllocation)
                oom(ctx, size, "cudaMalloc failed", err);
            else
                pio_cuda_fail(err, e, "cudaMalloc");
            pthread_mutex_unlock(&ctx->mu);
            return NULL;
        }
        ctx->n_device_alloc++;
        ctx->in_use += size;
        ctx->pool->used[p] = size;
        if (ctx->in_use + ctx->cached > ctx->peak) ctx->peak = ctx->in_use + ctx->cached;
    } catch (const std::bad_alloc &) {
        if (p) cudaFree(p);
        p = NULL;
        pio_error_set(err, PIO_ERR_OOM, "cuda: out of host memory for the pool's bookkeeping");
    }
    pthread_mutex_unlock(&ctx->mu);
    return p;
}

void pio_cuda_free(pio_cuda_ctx *ctx, void *ptr) {
    if (!ctx || !ptr) return;
    pthread_mutex_lock(&ctx->mu);
    auto it = ctx->pool->used.find(ptr);
    if (it != ctx->pool->used.end()) {
        size_t size = it->second;
        ctx->pool->used.erase(it);
        ctx->in_use -= size;
        try {
            ctx->pool->free_blocks.emplace(size, ptr);
            ctx->cached += size;
        } catch (const std::bad_alloc &) {
            if (!ctx->capturing) cudaFree(ptr); /* cannot cache it: give it back */
        }
    }
    pthread_mutex_unlock(&ctx->mu);
}

void pio_cuda_empty_cache(pio_cuda_ctx *ctx) {
    if (!ctx || ctx->capturing) return;
    cudaStreamSynchronize(ctx->stream);
    pthread_mutex_lock(&ctx->mu);
    release_cached(ctx);
    pthread_mutex_unlock(&ctx->mu);
}

void pio_cuda_mem_stats_get(const pio_cuda_ctx *ctx, pio_cuda_mem_stats *out) {
    pio_cuda_ctx *c = (pio_cuda_ctx *)ctx;
    pthread_mutex_lock(&c->mu);
    out->in_use = c->in_use;
    out->cached = c->cached;
    out->peak = c->peak;
    out->limit = c->limit;
    out->n_alloc = c->n_alloc;
    out->n_device_alloc = c->n_device_alloc;
    pthread_mutex_unlock(&c->mu);
}

void *pio_cuda_workspace(pio_cuda_ctx *ctx, size_t bytes, pio_error *err) {
    if (bytes <= ctx->ws_bytes) return ctx->ws;
    if (ctx->capturing) {
        pio_error_set(err, PIO_ERR_INVALID,
                      "cuda: a kernel needs %zu bytes of scratch while a graph is being "
                      "captured: run the step once before capturing",
                      bytes);
        return NULL;
    }
    size_t want = bytes + bytes / 4;
    void *p = pio_cuda_alloc(ctx, want, err);
    if (!p) return NULL;
    /* The old block is kept (freed with the context), not returned to the
     * pool: a captured graph may hold its address. It grows rarely. */
    ctx->ws = p;
    ctx->ws_bytes = want;
    return p;
}

/* ---- context ---------------------------------------------------------------- */

static thread_local int current_device = -1;

pio_status pio_cuda_enter(pio_cuda_ctx *ctx, pio_error *err) {
    if (current_device == ctx->device) return PIO_OK;
    CU_TRY(cudaSetDevice(ctx->device), "cudaSetDevice");
    current_device = ctx->device;
    return PIO_OK;
}

pio_cuda_ctx *pio_cuda_ctx_new(const pio_cuda_ctx_opts *opts, pio_error *err) {
    pio_cuda_ctx_opts o;
    memset(&o, 0, sizeof o);
    if (opts) o = *opts;
    if (o.max_memory_ratio <= 0) o.max_memory_ratio = 0.9;
    if (o.max_memory_ratio > 1) {
        pio_error_set(err, PIO_ERR_INVALID, "cuda: max_memory_ratio %g is not in (0, 1]",
                      o.max_memory_ratio);
        return NULL;
    }
    if (pio_cuda_available(err) == 0) return NULL;
    int count = 0;
    cudaGetDeviceCount(&count);
    if (o.device < 0 || o.device >= count) {
        pio_error_set(err, PIO_ERR_RANGE, "cuda: device %d is out of range for %d devices",
                      o.device, count);
        return NULL;
    }
    pio_cuda_ctx *ctx = (pio_cuda_ctx *)calloc(1, sizeof *ctx);
    if (!ctx) {
        pio_error_set(err, PIO_ERR_OOM, "out of memory");
        return NULL;
    }
    ctx->device = o.device;
    pthread_mutex_init(&ctx->mu, NULL);
    ctx->pool = new (std::nothrow) pio_cuda_pool();
    if (!ctx->pool) {
        pthread_mutex_destroy(&ctx->mu);
        free(ctx);
        pio_error_set(err, PIO_ERR_OOM, "out of memory");
        return NULL;
    }
    cudaError_t e;
    cublasStatus_t cs;
    current_device = -1;
    if (pio_cuda_enter(ctx, err) != PIO_OK ||
        pio_cuda_device_query(o.device, &ctx->info, err) != PIO_OK)
        goto fail;
    ctx->limit = o.max_memory_bytes ? o.max_memory_bytes
                                    : (size_t)((double)ctx->info.total_bytes * o.max_memory_ratio);
    if ((e = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        pio_cuda_fail(err, e, "cudaStreamCreate");
        goto fail;
    }
    if ((cs = cublasCreate(&ctx->cublas)) != CUBLAS_STATUS_SUCCESS) {
        pio_cublas_fail(err, cs, "cublasCreate");
        goto fail;
    }
    cublasSetStream(ctx->cublas, ctx->stream);
    /* Split-K products writing bf16 would otherwise add their partial sums in
     * bf16 (seen on an H100: up to 2% off at n = 9, k = 1000); every sum stays
     * f32 and the result is rounded once, as the CPU does. */
    cublasSetMathMode(ctx->cublas, (cublasMath_t)(CUBLAS_DEFAULT_MATH |
                                                  CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
    /* Its own workspace (32 MiB, NVIDIA's advice for Hopper) so that cuBLAS
     * allocates nothing inside a graph capture. */
    ctx->cublas_ws_bytes = (size_t)32 << 20;
    if (!(ctx->cublas_ws = pio_cuda_alloc(ctx, ctx->cublas_ws_bytes, err))) goto fail;
    if ((cs = cublasSetWorkspace(ctx->cublas, ctx->cublas_ws, ctx->cublas_ws_bytes)) !=
        CUBLAS_STATUS_SUCCESS) {
        pio_cublas_fail(err, cs, "cublasSetWorkspace");
        goto fail;
    }
    {
        /* On by default (H100: decode 217.96 -> 221.86 tok/s, same outputs);
         * PIO_CUDA_PDL=0 turns it off. */
        const char *pdl = getenv("PIO_CUDA_PDL");
        ctx->pdl = !(pdl && strcmp(pdl, "0") == 0) && ctx->info.cc_major >= 9;
    }
    ctx->mm_path = PIO_CUDA_MM_AUTO;
    ctx->attn_path = PIO_CUDA_ATTN_AUTO;
    return ctx;
fail:
    pio_cuda_ctx_free(ctx);
    return NULL;
}

void pio_cuda_ctx_free(pio_cuda_ctx *ctx) {
    if (!ctx) return;
    cudaSetDevice(ctx->device);
    current_device = -1;
    if (ctx->stream) cudaStreamSynchronize(ctx->stream);
    if (ctx->cublas) cublasDestroy(ctx->cublas);
    if (ctx->pool) {
        for (auto &kv : ctx->pool->used) cudaFree(kv.first);
        for (auto &kv : ctx->pool->free_blocks) cudaFree(kv.second);
        delete ctx->pool;
    }
    if (ctx->stream) cudaStreamDestroy(ctx->stream);
    cudaGetLastError();
    pthread_mutex_destroy(&ctx->mu);
    free(ctx);
}

const pio_cuda_device_info *pio_cuda_ctx_info(const pio_cuda_ctx *ctx) { return &ctx->info; }
void *pio_cuda_ctx_stream(pio_cuda_ctx *ctx) { return (void *)ctx->stream; }

pio_status pio_cuda_sync(pio_cuda_ctx *ctx, pio_error *err) {
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    CU_TRY(cudaStreamSynchronize(ctx->stream), "a kernel failed");
    return PIO_OK;
}

void pio_cuda_set_mm_path(pio_cuda_ctx *ctx, pio_cuda_mm_path path) { ctx->mm_path = path; }
void pio_cuda_set_matvec_warps(pio_cuda_ctx *ctx, int wpr) {
    ctx->matvec_wpr = (wpr == 1 || wpr == 2 || wpr == 4 || wpr == 8) ? wpr : 0;
}
void pio_cuda_set_attn_path(pio_cuda_ctx *ctx, pio_cuda_attn_path path) { ctx->attn_path = path; }
void pio_cuda_set_attn_bf16_q(pio_cuda_ctx *ctx, bool allow) { ctx->attn_bf16_q = allow; }
void pio_cuda_set_attn_splits(pio_cuda_ctx *ctx, int splits) {
    ctx->attn_splits = splits < 0 ? 0 : splits > PIO_CUDA_MAX_SPLITS ? PIO_CUDA_MAX_SPLITS : splits;
}

/* ---- checks ------------------------------------------------------------------ */

bool pio_cuda_check(const char *op, const char *name, const pio_tensor *t, unsigned dtypes,
                    bool rows_ok, pio_error *err) {
    char s[PIO_SHAPE_BUF];
    if (!t) {
        pio_error_set(err, PIO_ERR_INVALID, "%s: %s is missing", op, name);
        return false;
    }
    if (!t->storage || t->storage->device != PIO_DEVICE_CUDA ||
        t->storage->kind != PIO_STORAGE_DEVICE) {
        pio_error_set(err, PIO_ERR_INVALID, "%s: %s %s is not in device memory", op, name,
                      pio_shape_str(t, s, sizeof s));
        return false;
    }
    if (!(dtypes & (1u << t->dtype))) {
        pio_error_set(err, PIO_ERR_INVALID, "%s: %s %s must be %s, got %s", op, name,
                      pio_shape_str(t, s, sizeof s),
                      dtypes == DT_F32    ? "f32"
                      : dtypes == DT_BF16 ? "bf16"
                                          : "f32 or bf16",
                      pio_dtype_info(t->dtype)->name);
        return false;
    }
    if (pio_tensor_is_contiguous(t)) return true;
    bool ok = rows_ok && t->ndim >= 2;
    if (ok) { /* dims 1.. contiguous, dim 0 at least a row apart */
        int64_t expect = 1;
        for (int i = t->ndim - 1; i >= 1 && ok; i--) {
            if (t->shape[i] != 1 && t->stride[i] != expect) ok = false;
            expect *= t->shape[i];
        }
        ok = ok && (t->shape[0] <= 1 || t->stride[0] >= expect);
    }
    if (!ok)
        pio_error_set(err, PIO_ERR_INVALID, "%s: %s %s must be contiguous%s", op, name,
                      pio_shape_str(t, s, sizeof s), rows_ok ? " (or strided in dim 0 only)" : "");
    return ok;
}

pio_status pio_cuda_shape_error(pio_error *err, const char *op, const char *a_name,
                                const pio_tensor *a, const char *b_name, const pio_tensor *b,
                                const char *why) {
    char sa[PIO_SHAPE_BUF], sb[PIO_SHAPE_BUF];
    return pio_error_set(err, PIO_ERR_INVALID, "%s: %s %s and %s %s %s", op, a_name,
                         pio_shape_str(a, sa, sizeof sa), b_name, pio_shape_str(b, sb, sizeof sb),
                         why);
}

static void byte_span(const pio_tensor *t, const char **lo, const char **hi) {
    const size_t es = pio_dtype_info(t->dtype)->size;
    int64_t last = 0;
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] > 0) last += (t->shape[i] - 1) * t->stride[i];
    *lo = (const char *)pio_tensor_data(t);
    *hi = *lo + (pio_tensor_numel(t) ? (size_t)(last + 1) * es : 0);
}

/* A row-strided tensor (dims 1.. contiguous) as `rows` byte ranges of
 * `width` bytes, `stride` bytes apart, from p. False for other layouts. */
struct byte_rows {
    intptr_t p;
    int64_t width, stride, rows;
};
static bool as_byte_rows(const pio_tensor *t, byte_rows *r) {
    if (t->ndim < 2) return false;
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 1; i--) {
        if (t->shape[i] != 1 && t->stride[i] != expect) return false;
        expect *= t->shape[i];
    }
    const int64_t es = (int64_t)pio_dtype_info(t->dtype)->size;
    r->p = (intptr_t)pio_tensor_data(t);
    r->width = expect * es;
    r->stride = t->stride[0] * es;
    r->rows = t->shape[0];
    return r->rows > 1 && r->width <= r->stride;
}

static bool ranges_meet(int64_t a0, int64_t a1, int64_t b0, int64_t b1) { return a0 < b1 && b0 < a1; }

bool pio_cuda_overlap(const pio_tensor *a, const pio_tensor *b) {
    const char *a0, *a1, *b0, *b1;
    byte_span(a, &a0, &a1);
    byte_span(b, &b0, &b1);
    if (!(a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1)) return false;
    /* Interleaved column blocks of one buffer (q and k of a fused qkv, gate
     * and up of a fused gate_up) share a span without sharing a byte. */
    byte_rows ra, rb;
    if (!as_byte_rows(a, &ra) || !as_byte_rows(b, &rb) || ra.stride != rb.stride) return true;
    const int64_t S = ra.stride, d = (int64_t)(rb.p - ra.p);
    const int64_t q = d >= 0 ? d / S : -((-d + S - 1) / S), r = d - q * S; /* 0 <= r < S */
    /* b's row i covers bytes [r, r + wb) of a's row q + i, and spills past the
     * end of that row into row q + i + 1 when r + wb > S. */
    bool hit = r < ra.width && ranges_meet(0, ra.rows, q, q + rb.rows);
    if (r + rb.width > S) hit = hit || ranges_meet(0, ra.rows, q + 1, q + 1 + rb.rows);
    return hit;
}

bool pio_cuda_partial_overlap(const pio_tensor *a, const pio_tensor *b) {
    bool same = pio_tensor_data(a) == pio_tensor_data(b) && a->dtype == b->dtype &&
                pio_tensor_same_shape(a, b) &&
                memcmp(a->stride, b->stride, sizeof(int64_t) * (size_t)a->ndim) == 0;
    return !same && pio_cuda_overlap(a, b);
}

pio_rows pio_cuda_rows(const pio_tensor *t) {
    pio_rows r;
    r.p = (char *)pio_tensor_data(t);
    r.bf16 = t->dtype == PIO_BF16;
    r.group = 1;
    if (t->ndim <= 1) {
        r.rows = 1;
        r.width = t->ndim ? t->shape[0] : 1;
        r.stride = r.width;
        return r;
    }
    r.rows = t->shape[0];
    r.width = 1;
    for (int i = 1; i < t->ndim; i++) r.width *= t->shape[i];
    r.stride = pio_tensor_is_contiguous(t) ? r.width : t->stride[0];
    return r;
}

pio_rows pio_cuda_rows_last(const pio_tensor *t) {
    pio_rows r = pio_cuda_rows(t);
    if (t->ndim <= 2) return r;
    r.width = t->shape[t->ndim - 1];
    r.group = 1;
    for (int i = 1; i < t->ndim - 1; i++) r.group *= t->shape[i];
    r.rows = t->shape[0] * r.group;
    if (pio_tensor_is_contiguous(t)) { /* one uniform stride: the simple form */
        r.stride = r.width;
        r.group = 1;
    }
    return r;
}

/* ---- device tensors -------------------------------------------------------------- */

pio_tensor *pio_cuda_tensor_new(pio_cuda_ctx *ctx, pio_dtype dt, int ndim, const int64_t *shape,
                                pio_error *err) {
    if (pio_cuda_enter(ctx, err)) return NULL;
    if (ndim < 0 || ndim > PIO_MAX_DIMS) {
        pio_error_set(err, PIO_ERR_INVALID, "tensors have 0 to %d dimensions, got %d",
                      PIO_MAX_DIMS, ndim);
        return NULL;
    }
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            pio_error_set(err, PIO_ERR_INVALID, "dimension %d has negative size %lld", i,
                          (long long)shape[i]);
            return NULL;
        }
        if (shape[i] && n > INT64_MAX / 8 / shape[i]) {
            pio_error_set(err, PIO_ERR_OOM, "cuda: tensor is too large");
            return NULL;
        }
        n *= shape[i];
    }
    size_t bytes = (size_t)n * pio_dtype_info(dt)->size;
    void *p = pio_cuda_alloc(ctx, bytes, err);
    if (!p) return NULL;
    pio_storage *s = (pio_storage *)calloc(1, sizeof *s);
    if (!s) {
        pio_cuda_free(ctx, p);
        pio_error_set(err, PIO_ERR_OOM, "out of memory");
        return NULL;
    }
    s->refcount = 1;
    s->kind = PIO_STORAGE_DEVICE;
    s->device = PIO_DEVICE_CUDA;
    s->data = p;
    s->size = bytes;
    s->base = p;
    s->base_len = round_block(bytes);
    pio_tensor *t = pio_tensor_from_storage(s, 0, dt, ndim, shape, err);
    pio_storage_release(s); /* t holds the one reference now (or none: s is freed) */
    if (!t) {
        pio_cuda_free(ctx, p);
        return NULL;
    }
    cudaError_t e = cudaMemsetAsync(p, 0, bytes, ctx->stream);
    if (e != cudaSuccess) {
        pio_cuda_tensor_free(ctx, t);
        pio_cuda_fail(err, e, "cudaMemsetAsync");
        return NULL;
    }
    return t;
}

void pio_cuda_tensor_free(pio_cuda_ctx *ctx, pio_tensor *t) {
    if (!t) return;
    pio_storage *s = t->storage;
    if (s && s->kind == PIO_STORAGE_DEVICE && __atomic_load_n(&s->refcount, __ATOMIC_ACQUIRE) == 1)
        pio_cuda_free(ctx, s->base);
    pio_tensor_free(t);
}

static bool is_host(const pio_tensor *t) {
    return t && t->storage && t->storage->device == PIO_DEVICE_CPU;
}

pio_status pio_cuda_copy_to_device(pio_cuda_ctx *ctx, pio_tensor *dst, const pio_tensor *src,
                                   pio_error *err) {
    const char *op = "copy_to_device";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check(op, "dst", dst, DT_F32 | DT_BF16 | (1u << PIO_F16), false, err))
        return PIO_ERR_INVALID;
    if (!is_host(src)) return pio_error_set(err, PIO_ERR_INVALID, "%s: src is not in host memory", op);
    if (!pio_tensor_same_shape(dst, src))
        return pio_cuda_shape_error(err, op, "src", src, "dst", dst, "must have the same shape");
    const pio_tensor *from = src;
    pio_tensor *tmp = NULL;
    if (src->dtype != dst->dtype || !pio_tensor_is_contiguous(src)) {
        if (!(tmp = pio_tensor_to(src, dst->dtype, err))) return err ? err->status : PIO_ERR_OOM;
        from = tmp;
    }
    cudaError_t e = cudaMemcpyAsync(pio_tensor_data(dst), pio_tensor_data(from),
                                    pio_tensor_nbytes(dst), cudaMemcpyHostToDevice, ctx->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(ctx->stream); /* tmp and src may go now */
    pio_tensor_free(tmp);
    return e == cudaSuccess ? PIO_OK : pio_cuda_fail(err, e, "copy to device");
}

pio_status pio_cuda_copy_to_host(pio_cuda_ctx *ctx, pio_tensor *dst, const pio_tensor *src,
                                 pio_error *err) {
    const char *op = "copy_to_host";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check(op, "src", src, DT_F32 | DT_BF16 | (1u << PIO_F16), false, err))
        return PIO_ERR_INVALID;
    if (!is_host(dst)) return pio_error_set(err, PIO_ERR_INVALID, "%s: dst is not in host memory", op);
    if (!pio_tensor_same_shape(dst, src))
        return pio_cuda_shape_error(err, op, "src", src, "dst", dst, "must have the same shape");
    bool direct = dst->dtype == src->dtype && pio_tensor_is_contiguous(dst);
    pio_tensor *tmp = NULL;
    if (!direct && !(tmp = pio_tensor_new(src->dtype, src->ndim, src->shape, err)))
        return err ? err->status : PIO_ERR_OOM;
    void *to = direct ? pio_tensor_data(dst) : pio_tensor_data(tmp);
    cudaError_t e = cudaMemcpyAsync(to, pio_tensor_data(src), pio_tensor_nbytes(src),
                                    cudaMemcpyDeviceToHost, ctx->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(ctx->stream);
    if (e == cudaSuccess && tmp) st = pio_tensor_copy(dst, tmp, err);
    pio_tensor_free(tmp);
    return e == cudaSuccess ? st : pio_cuda_fail(err, e, "copy to host");
}

pio_tensor *pio_cuda_upload(pio_cuda_ctx *ctx, const pio_tensor *src, pio_dtype dt,
                            pio_error *err) {
    if (!is_host(src)) {
        pio_error_set(err, PIO_ERR_INVALID, "upload: src is not in host memory");
        return NULL;
    }
    pio_tensor *t = pio_cuda_tensor_new(ctx, dt, src->ndim, src->shape, err);
    if (!t) return NULL;
    if (pio_cuda_copy_to_device(ctx, t, src, err) != PIO_OK) {
        pio_cuda_tensor_free(ctx, t);
        return NULL;
    }
    return t;
}

pio_status pio_cuda_copy(pio_cuda_ctx *ctx, pio_tensor *dst, const pio_tensor *src,
                         pio_error *err) {
    const char *op = "copy";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    unsigned all = DT_F32 | DT_BF16 | (1u << PIO_F16);
    if (!pio_cuda_check(op, "dst", dst, all, false, err) ||
        !pio_cuda_check(op, "src", src, all, false, err))
        return PIO_ERR_INVALID;
    if (!pio_tensor_same_shape(dst, src) || dst->dtype != src->dtype)
        return pio_cuda_shape_error(err, op, "src", src, "dst", dst,
                                    "must have the same shape and dtype");
    CU_TRY(cudaMemcpyAsync(pio_tensor_data(dst), pio_tensor_data(src), pio_tensor_nbytes(src),
                           cudaMemcpyDeviceToDevice, ctx->stream),
           "device copy");
    return PIO_OK;
}

pio_status pio_cuda_copy_2d(pio_cuda_ctx *ctx, void *dst, size_t dpitch, const void *src,
                            size_t spitch, size_t width, size_t height, pio_error *err) {
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (width == 0 || height == 0) return PIO_OK;
    if (!dst || !src || dpitch < width || spitch < width)
        return pio_error_set(err, PIO_ERR_INVALID,
                             "copy_2d: rows of %zu bytes need pitches >= that (dst %zu, src %zu) "
                             "and both addresses", width, dpitch, spitch);
    /* cudaMemcpyDefault: unified addressing tells host from device memory. */
    CU_TRY(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, cudaMemcpyDefault,
                             ctx->stream),
           "copy_2d");
    return PIO_OK;
}

void *pio_cuda_host_alloc(size_t bytes, pio_error *err) {
    void *p = NULL;
    cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        pio_cuda_fail(err, e, "cudaHostAlloc");
        return NULL;
    }
    return p;
}

void pio_cuda_host_free(void *p) {
    if (p) cudaFreeHost(p);
    cudaGetLastError();
}

/* ---- random fill ----------------------------------------------------------------- */

static __device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static __global__ void fill_random_kernel(void *p, bool bf16, int64_t n, uint64_t seed,
                                          float scale) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        uint64_t h = splitmix64(seed ^ splitmix64((uint64_t)i));
        float u = (float)((double)(h >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
        store_act(p, i, bf16, u * scale);
    }
}

pio_status pio_cuda_fill_random(pio_cuda_ctx *ctx, pio_tensor *t, uint64_t seed, float scale,
                                pio_error *err) {
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check("fill_random", "t", t, DT_ACT, false, err)) return PIO_ERR_INVALID;
    int64_t n = pio_tensor_numel(t);
    if (n == 0) return PIO_OK;
    unsigned blocks = pio_cuda_blocks(n, 256);
    unsigned cap = (unsigned)ctx->info.sm_count * 8;
    fill_random_kernel<<<blocks < cap ? blocks : cap, 256, 0, ctx->stream>>>(
        pio_tensor_data(t), t->dtype == PIO_BF16, n, seed, scale);
    return pio_cuda_launched(err, "fill_random");
}

/* ---- graphs ------------------------------------------------------------------------ */

struct pio_cuda_graph {
    cudaGraphExec_t exec;
};

bool pio_cuda_capturing(const pio_cuda_ctx *ctx) { return ctx->capturing; }

pio_status pio_cuda_graph_begin(pio_cuda_ctx *ctx, pio_error *err) {
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (ctx->capturing)
        return pio_error_set(err, PIO_ERR_INVALID, "cuda: a graph is already being captured");
    CU_TRY(cudaStreamBeginCapture(ctx->stream, cudaStreamCaptureModeThreadLocal),
           "cudaStreamBeginCapture");
    ctx->capturing = true;
    return PIO_OK;
}

pio_status pio_cuda_graph_end(pio_cuda_ctx *ctx, pio_cuda_graph **graph, pio_error *err) {
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!ctx->capturing)
        return pio_error_set(err, PIO_ERR_INVALID, "cuda: no graph is being captured");
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(ctx->stream, &g);
    ctx->capturing = false;
    if (e != cudaSuccess) return pio_cuda_fail(err, e, "cudaStreamEndCapture");
    if (*graph) { /* same topology: update the parameters in place */
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate((*graph)->exec, g, &info) == cudaSuccess) {
            cudaGraphDestroy(g);
            return PIO_OK;
        }
        cudaGetLastError();
        cudaGraphExecDestroy((*graph)->exec);
        (*graph)->exec = NULL;
    }
    cudaGraphExec_t exec = NULL;
    e = cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) return pio_cuda_fail(err, e, "cudaGraphInstantiate");
    if (!*graph) {
        *graph = (pio_cuda_graph *)calloc(1, sizeof **graph);
        if (!*graph) {
            cudaGraphExecDestroy(exec);
            return pio_error_set(err, PIO_ERR_OOM, "out of memory");
        }
    }
    (*graph)->exec = exec;
    return PIO_OK;
}

pio_status pio_cuda_graph_launch(pio_cuda_ctx *ctx, pio_cuda_graph *graph, pio_error *err) {
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!graph || !graph->exec) return pio_error_set(err, PIO_ERR_INVALID, "cuda: no graph to launch");
    CU_TRY(cudaGraphLaunch(graph->exec, ctx->stream), "cudaGraphLaunch");
    return PIO_OK;
}

void pio_cuda_graph_free(pio_cuda_graph *graph) {
    if (!graph) return;
    if (graph->exec) cudaGraphExecDestroy(graph->exec);
    free(graph);
}

/* ---- events ---------------------------------------------------------------------------- */

struct pio_cuda_event {
    cudaEvent_t ev;
};

pio_cuda_event *pio_cuda_event_new(pio_error *err) {
    pio_cuda_event *e = (pio_cuda_event *)calloc(1, sizeof *e);
    if (!e) {
        pio_error_set(err, PIO_ERR_OOM, "out of memory");
        return NULL;
    }
    cudaError_t ce = cudaEventCreate(&e->ev);
    if (ce != cudaSuccess) {
        free(e);
        pio_cuda_fail(err, ce, "cudaEventCreate");
        return NULL;
    }
    return e;
}

void pio_cuda_event_free(pio_cuda_event *e) {
    if (!e) return;
    cudaEventDestroy(e->ev);
    free(e);
}

pio_status pio_cuda_event_record(pio_cuda_ctx *ctx, pio_cuda_event *e, pio_error *err) {
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    CU_TRY(cudaEventRecord(e->ev, ctx->stream), "cudaEventRecord");
    return PIO_OK;
}

double pio_cuda_event_ms(pio_cuda_event *a, pio_cuda_event *b, pio_error *err) {
    float ms = 0;
    cudaError_t e = cudaEventSynchronize(b->ev);
    if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, a->ev, b->ev);
    if (e != cudaSuccess) {
        pio_cuda_fail(err, e, "event timing");
        return -1;
    }
    return ms;
}

void pio_cuda_set_pdl(pio_cuda_ctx *ctx, bool on) {
    if (!ctx->capturing) ctx->pdl = on && ctx->info.cc_major >= 9;
}

bool pio_cuda_pdl(const pio_cuda_ctx *ctx) { return ctx->pdl; }
