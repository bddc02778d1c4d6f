/* Element-wise ops: silu_mul (the SwiGLU gate), binary + − × ÷, round_bf16.
 * Each walks contiguous f32 arrays 8 lanes at a time; the last n mod 8
 * elements go through the same vector code with masked loads and stores, so
 * every element gets identical arithmetic. */
#include "cpu_internal.h"
#include "simd_avx2.h"

/* ---- silu_mul ------------------------------------------------------------ */

static inline __m256 silu_mul8(__m256 g, __m256 u, bool round_bf16) {
    /* silu(g) = g / (1 + e^−g); e^−g = inf for very negative g gives −0, the limit. */
    __m256 s = _mm256_div_ps(
        g, _mm256_add_ps(_mm256_set1_ps(1.0f), pio_exp256(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    if (!round_bf16) return _mm256_mul_ps(s, u);
    return pio_round_bf16_256(_mm256_mul_ps(pio_round_bf16_256(s), u));
}

typedef struct {
    const float *g, *u;
    float *o;
    int64_t n;
    int n_tasks;
    bool round_bf16;
} silu_ctx;

/* Elements [i0, i1) (i0 a multiple of 8). */
static void silu_range(const silu_ctx *c, int64_t i, int64_t end) {
    const float *g = c->g, *u = c->u;
    float *o = c->o;
    for (; i + 8 <= end; i += 8)
        _mm256_storeu_ps(o + i, silu_mul8(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i),
                                          c->round_bf16));
    if (i < end) {
        __m256i m = pio_tail_mask256(end - i);
        _mm256_maskstore_ps(o + i, m,
                            silu_mul8(_mm256_maskload_ps(g + i, m), _mm256_maskload_ps(u + i, m),
                                      c->round_bf16));
    }
}

static void silu_task(void *arg, int task, int thread) {
    (void)thread;
    const silu_ctx *c = arg;
    int64_t i0, i1;
    pio_cpu_task_range(c->n, c->n_tasks, task, 8, &i0, &i1);
    silu_range(c, i0, i1);
}

static pio_status silu_run(pio_threadpool *pool, const pio_tensor *gate, const pio_tensor *up,
                           pio_tensor *out, bool round_bf16, pio_error *err) {
    const char *op = "silu_mul";
    if (!pio_cpu_check_f32(op, "gate", gate, err) || !pio_cpu_check_f32(op, "up", up, err) ||
        !pio_cpu_check_f32(op, "out", out, err))
        return PIO_ERR_INVALID;
    if (!pio_tensor_same_shape(gate, up))
        return pio_cpu_shape_error(err, op, "gate", gate, "up", up, "must have the same shape");
    if (!pio_tensor_same_shape(gate, out))
        return pio_cpu_shape_error(err, op, "gate", gate, "out", out, "must have the same shape");
    if (pio_cpu_partial_overlap(gate, out) || pio_cpu_partial_overlap(up, out))
        return pio_cpu_shape_error(err, op, "gate", gate, "out", out,
                                   "out overlaps an input without being the same tensor");
    silu_ctx c = {.g = pio_tensor_data(gate), .u = pio_tensor_data(up), .o = pio_tensor_data(out),
                  .n = pio_tensor_numel(out), .round_bf16 = round_bf16};
    c.n_tasks = pio_cpu_n_tasks(pool, c.n, 16384);
    if (c.n_tasks <= 1) silu_range(&c, 0, c.n);
    else pio_threadpool_run(pool, c.n_tasks, silu_task, &c);
    return PIO_OK;
}

pio_status pio_cpu_silu_mul_pool(pio_threadpool *pool, const pio_tensor *gate,
                                 const pio_tensor *up, pio_tensor *out, bool round_bf16,
                                 pio_error *err) {
    return silu_run(pool, gate, up, out, round_bf16, err);
}

pio_status pio_cpu_silu_mul(const pio_tensor *gate, const pio_tensor *up, pio_tensor *out,
                            bool round_bf16, pio_error *err) {
    return silu_run(NULL, gate, up, out, round_bf16, err);
}

/* ---- binary -------------------------------------------------------------- */

static inline __m256 apply8(pio_binary_op op, __m256 a, __m256 b) {
    switch (op) {
    case PIO_ADD: return _mm256_add_ps(a, b);
    case PIO_SUB: return _mm256_sub_ps(a, b);
    case PIO_MUL: return _mm256_mul_ps(a, b);
    default: return _mm256_div_ps(a, b);
    }
}

pio_status pio_cpu_binary(pio_binary_op op, const pio_tensor *a, const pio_tensor *b,
                          pio_tensor *out, pio_error *err) {
    const char *name = "binary";
    if ((unsigned)op > PIO_DIV)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: unknown operation %d", name, (int)op);
    if (!pio_cpu_check_f32(name, "a", a, err) || !pio_cpu_check_f32(name, "b", b, err) ||
        !pio_cpu_check_f32(name, "out", out, err))
        return PIO_ERR_INVALID;
    bool scalar_b = pio_tensor_numel(b) == 1;
    if (!scalar_b && !pio_tensor_same_shape(a, b))
        return pio_cpu_shape_error(err, name, "a", a, "b", b,
                                   "must have the same shape (or b a single element)");
    if (!pio_tensor_same_shape(a, out))
        return pio_cpu_shape_error(err, name, "a", a, "out", out, "must have the same shape");
    if (pio_cpu_partial_overlap(a, out) || (!scalar_b && pio_cpu_partial_overlap(b, out)))
        return pio_cpu_shape_error(err, name, "a", a, "out", out,
                                   "out overlaps an input without being the same tensor");

    const float *pa = pio_tensor_data(a), *pb = pio_tensor_data(b);
    float *po = pio_tensor_data(out);
    const int64_t n = pio_tensor_numel(out);
    /* Read the broadcast element before the loop: out may alias b. */
    const __m256 bcast = _mm256_set1_ps(scalar_b ? pb[0] : 0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 vb = scalar_b ? bcast : _mm256_loadu_ps(pb + i);
        _mm256_storeu_ps(po + i, apply8(op, _mm256_loadu_ps(pa + i), vb));
    }
    if (i < n) {
        __m256i m = pio_tail_mask256(n - i);
        __m256 vb = scalar_b ? bcast : _mm256_maskload_ps(pb + i, m);
        _mm256_maskstore_ps(po + i, m, apply8(op, _mm256_maskload_ps(pa + i, m), vb));
    }
    return PIO_OK;
}

/* ---- round_bf16 ---------------------------------------------------------- */

void pio_cpu_round_bf16(pio_tensor *x) {
    /* No status to return: anything but host f32 is left alone (bf16 is
     * already rounded), and a strided f32 tensor takes the slow element path. */
    if (!x || !x->storage || x->storage->device != PIO_DEVICE_CPU || x->dtype != PIO_F32) return;
    const int64_t n = pio_tensor_numel(x);
    if (!pio_tensor_is_contiguous(x)) {
        for (int64_t i = 0; i < n; i++) pio_tensor_set(x, i, pio_round_bf16(pio_tensor_get(x, i)));
        return;
    }
    float *p = pio_tensor_data(x);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(p + i, pio_round_bf16_256(_mm256_loadu_ps(p + i)));
    if (i < n) {
        __m256i m = pio_tail_mask256(n - i);
        _mm256_maskstore_ps(p + i, m, pio_round_bf16_256(_mm256_maskload_ps(p + i, m)));
    }
}
