/* RMSNorm: y = x / sqrt(mean(x²) + eps) · w over the last dimension. */
#include <math.h>

#include "cpu_internal.h"
#include "simd_avx2.h"

typedef struct {
    const float *x; /* [rows, d] */
    const void *w;  /* [d] f32 or bf16 */
    float *y;       /* [rows, d], may be x */
    int64_t rows, d;
    float eps;
    bool w_bf16, round_bf16;
    int n_tasks;
    const float *add; /* residual_rmsnorm: y [rows, d] added into x first */
    float *xw;        /* ... and x, written back */
} rmsnorm_ctx;

static void rmsnorm_row(const rmsnorm_ctx *c, const float *x, float *y) {
    const int64_t d = c->d;
    const int bf16 = c->w_bf16;
    /* Sum of squares in f32 as torch does, in 16 lanes of partial sums. */
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        s0 = _mm256_fmadd_ps(a, a, s0);
        s1 = _mm256_fmadd_ps(b, b, s1);
    }
    for (; i < d; i += 8) {
        __m256 a = d - i >= 8 ? _mm256_loadu_ps(x + i) : pio_load8_tail(x, i, d - i, 0);
        s0 = _mm256_fmadd_ps(a, a, s0);
    }
    float inv = 1.0f / sqrtf(pio_hsum256(_mm256_add_ps(s0, s1)) / (float)d + c->eps);

    const __m256 vinv = _mm256_set1_ps(inv);
    i = 0;
    for (; i + 8 <= d; i += 8) {
        __m256 xh = _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv); /* x̂ in f32 */
        __m256 w = pio_load8(c->w, i, bf16);
        if (c->round_bf16) /* transformers: x̂.to(bf16), then w * x̂ in bf16 */
            _mm256_storeu_ps(y + i, pio_round_bf16_256(_mm256_mul_ps(w, pio_round_bf16_256(xh))));
        else
            _mm256_storeu_ps(y + i, _mm256_mul_ps(w, xh));
    }
    if (i < d) { /* the last d mod 8 elements, the same arithmetic lane for lane */
        __m256i mask = pio_tail_mask256(d - i);
        __m256 xh = _mm256_mul_ps(_mm256_maskload_ps(x + i, mask), vinv);
        __m256 w = pio_load8_tail(c->w, i, d - i, bf16);
        __m256 out = c->round_bf16 ? pio_round_bf16_256(_mm256_mul_ps(w, pio_round_bf16_256(xh)))
                                   : _mm256_mul_ps(w, xh);
        _mm256_maskstore_ps(y + i, mask, out);
    }
}

void pio_cpu_rmsnorm_rows(const float *x, float *y, int64_t rows, int64_t d, const void *w,
                          bool w_bf16, float eps, bool round_bf16) {
    rmsnorm_ctx c = {.w = w, .d = d, .eps = eps, .w_bf16 = w_bf16, .round_bf16 = round_bf16};
    for (int64_t r = 0; r < rows; r++) rmsnorm_row(&c, x + r * d, y + r * d);
}

/* x[0..d) += y[0..d), rounded to bf16 in bf16 mode (pio_cpu_binary then
 * pio_cpu_round_bf16, lane for lane). */
static void add_row(float *x, const float *y, int64_t d, bool round_bf16) {
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
        __m256 v = _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i));
        _mm256_storeu_ps(x + i, round_bf16 ? pio_round_bf16_256(v) : v);
    }
    if (i < d) {
        __m256i m = pio_tail_mask256(d - i);
        __m256 v = _mm256_add_ps(_mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m));
        _mm256_maskstore_ps(x + i, m, round_bf16 ? pio_round_bf16_256(v) : v);
    }
}

static void rmsnorm_task(void *arg, int task, int thread) {
    (void)thread;
    const rmsnorm_ctx *c = arg;
    int64_t r0, r1;
    pio_cpu_task_range(c->rows, c->n_tasks, task, 1, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        if (c->add) add_row(c->xw + r * c->d, c->add + r * c->d, c->d, c->round_bf16);
        rmsnorm_row(c, c->x + r * c->d, c->y + r * c->d);
    }
}

static pio_status rmsnorm_prepare(const char *op, const pio_tensor *x, const pio_tensor *w,
                                  float eps, pio_tensor *y, bool round_bf16, rmsnorm_ctx *out,
                                  pio_error *err) {
    if (!pio_cpu_check_f32(op, "x", x, err) || !pio_cpu_check_f32_bf16(op, "w", w, err) ||
        !pio_cpu_check_f32(op, "y", y, err))
        return PIO_ERR_INVALID;
    if (x->ndim < 1 || w->ndim != 1 || w->shape[0] != x->shape[x->ndim - 1])
        return pio_cpu_shape_error(err, op, "x", x, "w", w, "do not fit x[..., d] and w[d]");
    if (!pio_tensor_same_shape(x, y))
        return pio_cpu_shape_error(err, op, "x", x, "y", y, "must have the same shape");
    if (pio_cpu_partial_overlap(x, y))
        return pio_cpu_shape_error(err, op, "x", x, "y", y,
                                   "overlap without being the same tensor");

    rmsnorm_ctx c = {.x = pio_tensor_data(x),
                     .w = pio_tensor_data(w),
                     .y = pio_tensor_data(y),
                     .rows = pio_cpu_rows(x),
                     .d = x->shape[x->ndim - 1],
                     .eps = eps,
                     .w_bf16 = w->dtype == PIO_BF16,
                     .round_bf16 = round_bf16};
    *out = c;
    return PIO_OK;
}

pio_status pio_cpu_rmsnorm(pio_threadpool *pool, const pio_tensor *x, const pio_tensor *w,
                           float eps, pio_tensor *y, bool round_bf16, pio_error *err) {
    rmsnorm_ctx c;
    pio_status st = rmsnorm_prepare("rmsnorm", x, w, eps, y, round_bf16, &c, err);
    if (st || c.rows == 0 || c.d == 0) return st;
    c.n_tasks = pio_cpu_n_tasks(pool, c.rows, (16384 + c.d - 1) / c.d);
    pio_threadpool_run(pool, c.n_tasks, rmsnorm_task, &c);
    return PIO_OK;
}

pio_status pio_cpu_residual_rmsnorm(pio_threadpool *pool, pio_tensor *x, const pio_tensor *r,
                                    const pio_tensor *w, float eps, pio_tensor *y,
                                    bool round_bf16, pio_error *err) {
    const char *op = "residual_rmsnorm";
    if (!pio_cpu_check_f32(op, "r", r, err)) return PIO_ERR_INVALID;
    if (!pio_tensor_same_shape(x, r))
        return pio_cpu_shape_error(err, op, "x", x, "r", r, "must have the same shape");
    if (pio_cpu_overlap(x, r) || pio_cpu_overlap(r, y))
        return pio_cpu_shape_error(err, op, "x", x, "r", r, "or y overlap in memory");
    if (pio_cpu_overlap(x, y))
        return pio_cpu_shape_error(err, op, "x", x, "y", y, "overlap in memory");
    /* the norm's checks (x, w, y) */
    rmsnorm_ctx c;
    pio_status st = rmsnorm_prepare(op, x, w, eps, y, round_bf16, &c, err);
    if (st || c.rows == 0 || c.d == 0) return st;
    c.add = pio_tensor_data(r);
    c.xw = pio_tensor_data(x);
    c.n_tasks = pio_cpu_n_tasks(pool, c.rows, (8192 + c.d - 1) / c.d);
    pio_threadpool_run(pool, c.n_tasks, rmsnorm_task, &c);
    return PIO_OK;
}
