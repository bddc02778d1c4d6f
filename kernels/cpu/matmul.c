/* pio_cpu_matmul / pio_cpu_matmul_ex: argument checks, work split and ISA
 * dispatch. The arithmetic lives in
 *   matmul_avx2.c          the x86-64-v3 baseline (f32 / widened bf16 weights)
 *   matmul_avx512.c        the same at 16 lanes; decode reads w as one stream
 *   matmul_dot_avx512.c    bf16 mode, vdpbf16ps: decode and short prompts
 *   matmul_packed_avx512.c prompts: packed panels, 6x64 tiles (f32 FMA or vdpbf16ps)
 *   matmul_amx.c           bf16 mode prompts on AMX tiles
 * Prompt kernels are picked for 16+ tokens; the order is AMX, packed, tiles. */
#include <stdlib.h>
#include <string.h>

#include "cpu_features.h"
#include "cpu_internal.h"
#include "matmul_kernels.h"
#include "simd_avx2.h"

enum { MAX_W = 4 };

typedef struct {
    pio_matmul_job job[MAX_W];
    pio_matmul_kernel kernel[MAX_W];
    int64_t first[MAX_W + 1]; /* granule index where each weight's rows begin */
    int64_t granule;          /* rows of w per granule */
    int n_w, n_tasks;
    /* When set, every weight goes through a packing kernel (AMX, or f32 panels). */
    pio_matmul_amx_kernel packed;
    char *scratch;             /* per thread: panel, then an edge tile at edge_off */
    size_t scratch_bytes, edge_off;
    bool round_y; /* outputs rounded to bf16 by the task that wrote them */
} matmul_ctx;

/* Rows of w per task boundary: a whole register tile (4 rows; 32 for AMX's
 * two B tiles), so only the last task of a weight ever has a partial one. */
enum { ROW_GRANULE = 4, AMX_GRANULE = 32, PACKED_GRANULE = 64 };

pio_matmul_amx_kernel pio_matmul_amx_override;

/* y[r, m0:m1] to bf16 for every row r: right after the task wrote them, so
 * they are still in cache (and the rounding runs on every thread). */
static void round_cols(const pio_matmul_job *J, int64_t m0, int64_t m1) {
    const int64_t w = m1 - m0;
    const __m256i tail = pio_tail_mask256(w % 8);
    for (int64_t r = 0; r < J->n; r++) {
        float *y = J->y + r * J->m + m0;
        int64_t i = 0;
        for (; i + 8 <= w; i += 8) _mm256_storeu_ps(y + i, pio_round_bf16_256(_mm256_loadu_ps(y + i)));
        if (i < w) _mm256_maskstore_ps(y + i, tail, pio_round_bf16_256(_mm256_maskload_ps(y + i, tail)));
    }
}

/* The bf16 dot-product kernels round y as they store it (job.round_y). */
static bool rounds_itself(const matmul_ctx *c, int i) {
    if (c->packed) return c->packed == pio_matmul_bf16_packed_avx512;
    return c->kernel[i] == pio_matmul_bf16dot_avx512;
}

/* A task covers a range of granules of the weights laid end to end: one run
 * of the pool serves several weights that share x (q, k, v; gate, up). */
static void matmul_task(void *arg, int task, int thread) {
    const matmul_ctx *c = arg;
    int64_t g0, g1;
    pio_cpu_task_range(c->first[c->n_w], c->n_tasks, task, 1, &g0, &g1);
    for (int i = 0; i < c->n_w; i++) {
        int64_t lo = g0 > c->first[i] ? g0 : c->first[i];
        int64_t hi = g1 < c->first[i + 1] ? g1 : c->first[i + 1];
        if (lo >= hi) continue;
        int64_t m0 = (lo - c->first[i]) * c->granule, m1 = (hi - c->first[i]) * c->granule;
        if (m1 > c->job[i].m) m1 = c->job[i].m;
        if (c->packed) {
            char *mine = c->scratch + (size_t)thread * c->scratch_bytes;
            c->packed(&c->job[i], m0, m1, mine, (float *)(mine + c->edge_off));
        } else {
            c->kernel[i](&c->job[i], m0, m1);
        }
        if (c->round_y && !rounds_itself(c, i)) round_cols(&c->job[i], m0, m1);
    }
}

static pio_matmul_kernel pick_kernel(pio_dtype w_dtype, bool dot) {
    bool bf16 = w_dtype == PIO_BF16;
    pio_cpu_level level = pio_cpu_level_get();
    if (dot && bf16 && level >= PIO_CPU_AVX512_BF16) return pio_matmul_bf16dot_avx512;
    if (level >= PIO_CPU_AVX512) return bf16 ? pio_matmul_bf16_avx512 : pio_matmul_f32_avx512;
    return bf16 ? pio_matmul_bf16_avx2 : pio_matmul_f32_avx2;
}

/* ---- x in bf16 for the dot-product kernels ------------------------------------ */

/* Grown, never shrunk, one per calling thread: steady-state decode allocates
 * nothing. Reachable through the static pointers, so leak checkers stay quiet. */
static _Thread_local uint16_t *xb_buf;
static _Thread_local size_t xb_cap;
static _Thread_local char *panel_buf;
static _Thread_local size_t panel_cap;

static bool grow(void **buf, size_t *cap, size_t bytes) {
    if (bytes <= *cap) return true;
    free(*buf);
    *cap = 0;
    *buf = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!*buf) return false;
    *cap = bytes;
    return true;
}

typedef struct {
    const float *x;
    uint16_t *xb;
    int64_t n, k;
    int n_tasks;
} convert_ctx;

/* f32 → bf16 (nearest even); the AVX-512 BF16 instruction where the CPU has
 * it (the AMX path can be forced by tests on CPUs without). */
static void to_bf16(const float *src, uint16_t *dst, int64_t n) {
    if (pio_cpu_level_get() >= PIO_CPU_AVX512_BF16) {
        pio_to_bf16_avx512(src, dst, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) dst[i] = pio_f32_to_bf16(src[i]);
}

static void convert_task(void *arg, int task, int thread) {
    (void)thread;
    const convert_ctx *c = arg;
    int64_t r0, r1;
    pio_cpu_task_range(c->n, c->n_tasks, task, 1, &r0, &r1);
    to_bf16(c->x + r0 * c->k, c->xb + r0 * c->k, (r1 - r0) * c->k);
}

/* x as bf16 rows of `ld` elements (ld >= k; zeros after k) and `rows` rows
 * (>= n; zero rows after n), in the calling thread's buffer. */
static const uint16_t *x_to_bf16(pio_threadpool *pool, const float *x, int64_t n, int64_t k,
                                 int64_t ld, int64_t rows, pio_error *err) {
    if (!grow((void **)&xb_buf, &xb_cap, (size_t)(rows * ld) * 2)) {
        pio_error_set(err, PIO_ERR_OOM, "matmul: out of memory for %lld bf16 activations",
                      (long long)(rows * ld));
        return NULL;
    }
    if (ld == k) {
        convert_ctx c = {x, xb_buf, n, k, 1};
        c.n_tasks = pio_cpu_n_tasks(pool, n, (65536 + k - 1) / k);
        pio_threadpool_run(pool, c.n_tasks, convert_task, &c);
    } else {
        for (int64_t r = 0; r < n; r++) {
            to_bf16(x + r * k, xb_buf + r * ld, k);
            memset(xb_buf + r * ld + k, 0, (size_t)(ld - k) * 2);
        }
    }
    if (rows > n) memset(xb_buf + n * ld, 0, (size_t)((rows - n) * ld) * 2);
    return xb_buf;
}

/* ---- entry points ------------------------------------------------------------------ */

static pio_status check_one(const pio_tensor *x, const pio_tensor *w, const pio_tensor *y,
                            pio_error *err) {
    const char *op = "matmul";
    if (!pio_cpu_check_f32(op, "x", x, err) || !pio_cpu_check_f32_bf16(op, "w", w, err) ||
        !pio_cpu_check_f32(op, "y", y, err))
        return PIO_ERR_INVALID;
    if (w->ndim != 2 || x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1])
        return pio_cpu_shape_error(err, op, "x", x, "w", w, "do not fit x[n, k] · w[m, k]ᵀ");
    bool lead_same = y->ndim == x->ndim;
    for (int i = 0; lead_same && i < x->ndim - 1; i++) lead_same = y->shape[i] == x->shape[i];
    if (!lead_same || y->shape[y->ndim - 1] != w->shape[0])
        return pio_cpu_shape_error(err, op, "x", x, "y", y,
                                   "do not fit y[n, m] = x[n, k] · w[m, k]ᵀ (y must be [n, m])");
    if (pio_cpu_overlap(x, y))
        return pio_cpu_shape_error(err, op, "x", x, "y", y, "overlap in memory");
    if (pio_cpu_overlap(w, y))
        return pio_cpu_shape_error(err, op, "w", w, "y", y, "overlap in memory");
    return PIO_OK;
}

static pio_status matmul_run(pio_threadpool *pool, const pio_tensor *x, int n_w,
                             const pio_tensor *const *w, pio_tensor *const *y, bool x_bf16,
                             bool round_y, pio_error *err) {
    if (n_w < 1 || n_w > MAX_W)
        return pio_error_set(err, PIO_ERR_INVALID, "matmul: %d weights (1 to %d share one x)", n_w,
                             MAX_W);
    for (int i = 0; i < n_w; i++) {
        pio_status st = check_one(x, w[i], y[i], err);
        if (st) return st;
        for (int j = 0; j < i; j++)
            if (pio_cpu_overlap(y[i], y[j]))
                return pio_cpu_shape_error(err, "matmul", "y", y[i], "y", y[j],
                                           "overlap in memory");
    }
    matmul_ctx c = {.n_w = n_w, .granule = ROW_GRANULE, .round_y = round_y};
    const int64_t n = pio_cpu_rows(x), k = x->shape[x->ndim - 1];
    if (n == 0) return PIO_OK;
    bool dot = false, all_bf16 = true;
    for (int i = 0; i < n_w; i++) all_bf16 = all_bf16 && w[i]->dtype == PIO_BF16;
    bool all_f32 = true;
    for (int i = 0; i < n_w; i++) all_f32 = all_f32 && w[i]->dtype == PIO_F32;
    /* AMX for prompts (16 tokens fill a tile's rows) of bf16-mode matmuls;
     * packed f32 panels for f32 prompts. */
    bool amx = false;
    if (x_bf16 && all_bf16 && n >= 16) {
        if (pio_matmul_amx_override) c.packed = pio_matmul_amx_override, amx = true;
        else if (pio_cpu_level_get() >= PIO_CPU_AMX) c.packed = pio_matmul_bf16_amx, amx = true;
    }
    bool packed_dot = false;
    if (!c.packed && x_bf16 && all_bf16 && n >= 16 && k % 2 == 0 &&
        pio_cpu_level_get() >= PIO_CPU_AVX512_BF16) {
        c.packed = pio_matmul_bf16_packed_avx512, packed_dot = true;
        c.granule = PACKED_GRANULE;
        c.scratch_bytes = 256 * 64 * 4 + 6 * 64 * 4; /* KP · NR pairs, MR · NR edge */
        c.edge_off = 256 * 64 * 4;
    }
    if (!c.packed && all_f32 && n >= 16 && pio_cpu_level_get() >= PIO_CPU_AVX512) {
        c.packed = pio_matmul_f32_packed_avx512;
        c.granule = PACKED_GRANULE;
        c.scratch_bytes = 256 * 64 * 4 + 6 * 64 * 4; /* KC · NR panel, MR · NR edge */
        c.edge_off = 256 * 64 * 4;
    }
    if (amx) c.granule = AMX_GRANULE;
    for (int i = 0; i < n_w; i++) {
        c.job[i] = (pio_matmul_job){.x = pio_tensor_data(x), .w = pio_tensor_data(w[i]),
                                    .y = pio_tensor_data(y[i]), .n = n, .k = k,
                                    .m = w[i]->shape[0], .xb_ld = k, .round_y = round_y};
        c.kernel[i] = pick_kernel(w[i]->dtype, x_bf16);
        dot = dot || c.kernel[i] == pio_matmul_bf16dot_avx512;
        c.first[i + 1] = c.first[i] + (c.job[i].m + c.granule - 1) / c.granule;
        if (k == 0) /* an empty sum */
            memset(c.job[i].y, 0, (size_t)(n * c.job[i].m) * sizeof(float));
    }
    if (k == 0 || c.first[n_w] == 0) return PIO_OK;
    if (amx) {
        int64_t ld = (k + 31) / 32 * 32, rows = (n + 31) / 32 * 32;
        const uint16_t *xb = x_to_bf16(pool, c.job[0].x, n, k, ld, rows, err);
        if (!xb) return err->status;
        c.scratch_bytes = (size_t)(ld / 32) * 2048 + 1024;
        c.edge_off = c.scratch_bytes - 1024;
        for (int i = 0; i < n_w; i++) c.job[i].xb = xb, c.job[i].xb_ld = ld;
    }
    if (packed_dot) {
        const uint16_t *xb = x_to_bf16(pool, c.job[0].x, n, k, k, n, err);
        if (!xb) return err->status;
        for (int i = 0; i < n_w; i++) c.job[i].xb = xb;
    }
    if (c.packed) {
        size_t threads = (size_t)pio_threadpool_size(pool);
        if (!grow((void **)&panel_buf, &panel_cap, threads * c.scratch_bytes))
            return pio_error_set(err, PIO_ERR_OOM, "matmul: out of memory for packed panels");
        c.scratch = panel_buf;
    } else if (dot) {
        const uint16_t *xb = x_to_bf16(pool, c.job[0].x, n, k, k, n, err);
        if (!xb) return err->status;
        for (int i = 0; i < n_w; i++) c.job[i].xb = xb;
    }
    /* A task should do at least ~64K multiply-adds, or waking threads costs more than it saves. */
    int64_t macs_per_granule = n * k * c.granule;
    c.n_tasks = pio_cpu_n_tasks(pool, c.first[n_w], (65536 + macs_per_granule - 1) / macs_per_granule);
    pio_threadpool_run(pool, c.n_tasks, matmul_task, &c);
    return PIO_OK;
}

pio_status pio_cpu_matmul_ex(pio_threadpool *pool, const pio_tensor *x, int n_w,
                             const pio_tensor *const *w, pio_tensor *const *y, bool x_bf16,
                             pio_error *err) {
    return matmul_run(pool, x, n_w, w, y, x_bf16, false, err);
}

pio_status pio_cpu_linear(pio_threadpool *pool, const pio_tensor *x, int n_w,
                          const pio_tensor *const *w, pio_tensor *const *y, bool bf16_mode,
                          pio_error *err) {
    return matmul_run(pool, x, n_w, w, y, bf16_mode, bf16_mode, err);
}

pio_status pio_cpu_matmul(pio_threadpool *pool, const pio_tensor *x, const pio_tensor *w,
                          pio_tensor *y, pio_error *err) {
    return pio_cpu_matmul_ex(pool, x, 1, &w, &y, false, err);
}
