/* pio/threadpool.h: a fixed pool of worker threads for data-parallel kernels.
 *
 * pio_threadpool_run splits work into n_tasks tasks and returns when all are
 * done; the calling thread takes part, so a pool of N threads has N-1 workers.
 * A NULL pool runs everything on the caller. Not reentrant: one run at a time
 * per pool (kernels never nest runs).
 */
#ifndef PIO_THREADPOOL_H
#define PIO_THREADPOOL_H

#include "pio/error.h"

typedef struct pio_threadpool pio_threadpool;

/* task index in [0, n_tasks); thread index in [0, n_threads) for per-thread scratch. */
typedef void (*pio_task_fn)(void *ctx, int task, int thread);

/* n_threads <= 0 picks the number of online CPUs. */
pio_threadpool *pio_threadpool_new(int n_threads, pio_error *err);
void pio_threadpool_free(pio_threadpool *pool);
int pio_threadpool_size(const pio_threadpool *pool); /* 1 for NULL */
void pio_threadpool_run(pio_threadpool *pool, int n_tasks, pio_task_fn fn, void *ctx);

#endif
