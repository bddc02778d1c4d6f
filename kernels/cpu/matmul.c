/* pio_cpu_matmul: argument checks, work split and ISA dispatch. The arithmetic
 * lives in matmul_avx2.c and matmul_avx512.c. */
#include <string.h>

#include "cpu_features.h"
#include "cpu_internal.h"
#include "matmul_kernels.h"

typedef struct {
    pio_matmul_job job;
    pio_matmul_kernel kernel;
    int n_tasks;
} matmul_ctx;

/* Rows of w per task boundary: a whole register tile, so only the last task
 * of a call ever has a partial one. */
enum { ROW_GRANULE = 4 };

static void matmul_task(void *arg, int task, int thread) {
    (void)thread;
    const matmul_ctx *c = arg;
    int64_t m0, m1;
    pio_cpu_task_range(c->job.m, c->n_tasks, task, ROW_GRANULE, &m0, &m1);
    if (m0 < m1) c->kernel(&c->job, m0, m1);
}

static pio_matmul_kernel pick_kernel(pio_dtype w_dtype) {
    bool bf16 = w_dtype == PIO_BF16;
    if (pio_cpu_level_get() == PIO_CPU_AVX512)
        return bf16 ? pio_matmul_bf16_avx512 : pio_matmul_f32_avx512;
    return bf16 ? pio_matmul_bf16_avx2 : pio_matmul_f32_avx2;
}

/* x [..., k] and y [..., m] share their leading dimensions (n is their product),
 * so callers can pass [n, heads, head_dim] activations without a view. */
pio_status pio_cpu_matmul(pio_threadpool *pool, const pio_tensor *x, const pio_tensor *w,
                          pio_tensor *y, pio_error *err) {
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

    matmul_ctx c = {
        .job = {.x = pio_tensor_data(x),
                .w = pio_tensor_data(w),
                .y = pio_tensor_data(y),
                .n = pio_cpu_rows(x),
                .k = w->shape[1],
                .m = w->shape[0]},
        .kernel = pick_kernel(w->dtype),
    };
    if (c.job.n == 0 || c.job.m == 0) return PIO_OK;
    if (c.job.k == 0) { /* an empty sum */
        memset(c.job.y, 0, (size_t)(c.job.n * c.job.m) * sizeof(float));
        return PIO_OK;
    }
    /* A task should do at least ~64K multiply-adds, or waking threads costs more than it saves. */
    int64_t macs_per_row = c.job.n * c.job.k;
    int64_t min_rows = (65536 + macs_per_row - 1) / macs_per_row;
    c.n_tasks = pio_cpu_n_tasks(pool, (c.job.m + ROW_GRANULE - 1) / ROW_GRANULE,
                                (min_rows + ROW_GRANULE - 1) / ROW_GRANULE);
    pio_threadpool_run(pool, c.n_tasks, matmul_task, &c);
    return PIO_OK;
}
