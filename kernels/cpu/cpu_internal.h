/* kernels/cpu/cpu_internal.h: argument checks and work splitting shared by the
 * CPU kernels. Not part of the public interface (that is cpu_ops.h). */
#ifndef PIO_CPU_INTERNAL_H
#define PIO_CPU_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "cpu_ops.h"

/* Room for one "[a, b, c, d]" from pio_shape_str. */
#define PIO_SHAPE_BUF 96

/* True if t is present, in host memory, contiguous and f32. Otherwise fills err
 * (PIO_ERR_INVALID, "op: name ...") and returns false. */
bool pio_cpu_check_f32(const char *op, const char *name, const pio_tensor *t, pio_error *err);

/* The same for weights and caches, which may also be bf16. */
bool pio_cpu_check_f32_bf16(const char *op, const char *name, const pio_tensor *t, pio_error *err);

/* Returns PIO_ERR_INVALID with "op: a_name [..] and b_name [..] <why>". */
pio_status pio_cpu_shape_error(pio_error *err, const char *op, const char *a_name,
                               const pio_tensor *a, const char *b_name, const pio_tensor *b,
                               const char *why);

/* True if the bytes of a and b overlap without being the same tensor data
 * (exact aliasing, where a kernel allows it, is fine; partial overlap never is). */
bool pio_cpu_partial_overlap(const pio_tensor *a, const pio_tensor *b);

/* True if the bytes of a and b overlap at all. */
bool pio_cpu_overlap(const pio_tensor *a, const pio_tensor *b);

/* Rows of a tensor seen as [rows, last dim]. Needs ndim >= 1. */
static inline int64_t pio_cpu_rows(const pio_tensor *t) {
    int64_t rows = 1;
    for (int i = 0; i < t->ndim - 1; i++) rows *= t->shape[i];
    return rows;
}

/* How many tasks to cut `units` of work into: about 4 per thread so the pool's
 * atomic task counter evens out uneven threads, but none smaller than
 * min_units (waking a thread costs microseconds) and 1 without a pool. */
int pio_cpu_n_tasks(const pio_threadpool *pool, int64_t units, int64_t min_units);

/* Task `task` of n_tasks covers [*begin, *end) of total, boundaries on
 * multiples of `granule` (the last range takes the remainder). */
void pio_cpu_task_range(int64_t total, int n_tasks, int task, int64_t granule, int64_t *begin,
                        int64_t *end);

/* rmsnorm_row of norm.c on `rows` rows of d (y may be x), on the calling thread. */
void pio_cpu_rmsnorm_rows(const float *x, float *y, int64_t rows, int64_t d, const void *w,
                          bool w_bf16, float eps, bool round_bf16);

/* n f32 → bf16, nearest even, NaN made quiet: pio_f32_to_bf16 on each. */
void pio_cpu_to_bf16_row(const float *src, uint16_t *dst, int64_t n);

#endif
