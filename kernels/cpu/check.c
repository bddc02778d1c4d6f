/* Argument checks and work splitting shared by the CPU kernels. */
#include <stdio.h>

#include "cpu_internal.h"

static bool check_tensor(const char *op, const char *name, const pio_tensor *t, bool allow_bf16,
                         pio_error *err) {
    char s[PIO_SHAPE_BUF];
    if (!t) {
        pio_error_set(err, PIO_ERR_INVALID, "%s: %s is missing", op, name);
        return false;
    }
    if (!t->storage || t->storage->device != PIO_DEVICE_CPU) {
        pio_error_set(err, PIO_ERR_INVALID, "%s: %s %s is not in host memory", op, name,
                      pio_shape_str(t, s, sizeof s));
        return false;
    }
    if (t->dtype != PIO_F32 && !(allow_bf16 && t->dtype == PIO_BF16)) {
        pio_error_set(err, PIO_ERR_INVALID, "%s: %s %s must be %s, got %s", op, name,
                      pio_shape_str(t, s, sizeof s), allow_bf16 ? "f32 or bf16" : "f32",
                      pio_dtype_info(t->dtype)->name);
        return false;
    }
    if (!pio_tensor_is_contiguous(t)) {
        pio_error_set(err, PIO_ERR_INVALID, "%s: %s %s must be contiguous", op, name,
                      pio_shape_str(t, s, sizeof s));
        return false;
    }
    return true;
}

bool pio_cpu_check_f32(const char *op, const char *name, const pio_tensor *t, pio_error *err) {
    return check_tensor(op, name, t, false, err);
}

bool pio_cpu_check_f32_bf16(const char *op, const char *name, const pio_tensor *t, pio_error *err) {
    return check_tensor(op, name, t, true, err);
}

pio_status pio_cpu_shape_error(pio_error *err, const char *op, const char *a_name,
                               const pio_tensor *a, const char *b_name, const pio_tensor *b,
                               const char *why) {
    char sa[PIO_SHAPE_BUF], sb[PIO_SHAPE_BUF];
    return pio_error_set(err, PIO_ERR_INVALID, "%s: %s %s and %s %s %s", op, a_name,
                         pio_shape_str(a, sa, sizeof sa), b_name, pio_shape_str(b, sb, sizeof sb),
                         why);
}

bool pio_cpu_overlap(const pio_tensor *a, const pio_tensor *b) {
    const char *pa = pio_tensor_data(a), *pb = pio_tensor_data(b);
    size_t na = pio_tensor_nbytes(a), nb = pio_tensor_nbytes(b);
    return na && nb && pa < pb + nb && pb < pa + na;
}

bool pio_cpu_partial_overlap(const pio_tensor *a, const pio_tensor *b) {
    bool same =
        pio_tensor_data(a) == pio_tensor_data(b) && pio_tensor_nbytes(a) == pio_tensor_nbytes(b);
    return !same && pio_cpu_overlap(a, b);
}

int pio_cpu_n_tasks(const pio_threadpool *pool, int64_t units, int64_t min_units) {
    int threads = pio_threadpool_size(pool);
    if (threads <= 1 || units <= 0) return 1;
    int64_t most = min_units > 0 ? units / min_units : units;
    int64_t n = 4 * (int64_t)threads;
    if (n > most) n = most;
    return n < 1 ? 1 : (int)n;
}

void pio_cpu_task_range(int64_t total, int n_tasks, int task, int64_t granule, int64_t *begin,
                        int64_t *end) {
    int64_t granules = (total + granule - 1) / granule;
    int64_t g0 = granules * task / n_tasks, g1 = granules * (task + 1) / n_tasks;
    *begin = g0 * granule < total ? g0 * granule : total;
    *end = g1 * granule < total ? g1 * granule : total;
}
