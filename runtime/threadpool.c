/* A small pthread pool. Workers sleep on a condition variable between runs and
 * claim tasks with an atomic counter, so uneven tasks balance themselves. */
#define _GNU_SOURCE
#include "pio/threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

struct pio_threadpool {
    int n_threads;
    pthread_t *workers;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    unsigned generation; /* bumped per run; workers wait for a new one */
    int stopping;
    /* the current run */
    pio_task_fn fn;
    void *ctx;
    int n_tasks;
    atomic_int next_task;
    int busy_workers;
};

typedef struct {
    pio_threadpool *pool;
    int thread;
} worker_arg;

static void drain(pio_threadpool *p, int thread) {
    for (;;) {
        int task = atomic_fetch_add(&p->next_task, 1);
        if (task >= p->n_tasks) break;
        p->fn(p->ctx, task, thread);
    }
}

static void *worker_main(void *arg) {
    worker_arg a = *(worker_arg *)arg;
    free(arg);
    pio_threadpool *p = a.pool;
    unsigned seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stopping && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
        if (p->stopping) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        drain(p, a.thread);
        pthread_mutex_lock(&p->mu);
        if (--p->busy_workers == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

pio_threadpool *pio_threadpool_new(int n_threads, pio_error *err) {
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    pio_threadpool *p = calloc(1, sizeof *p);
    if (!p) {
        pio_error_set(err, PIO_ERR_OOM, "out of memory creating a thread pool");
        return NULL;
    }
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);
    if (!p->workers) goto oom;
    for (int i = 1; i < n_threads; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (!a) goto oom;
        *a = (worker_arg){p, i};
        if (pthread_create(&p->workers[i], NULL, worker_main, a) != 0) {
            free(a);
            p->n_threads = i; /* free() joins the ones that started */
            pio_threadpool_free(p);
            pio_error_set(err, PIO_ERR_OOM, "cannot start thread %d of %d", i, n_threads);
            return NULL;
        }
    }
    return p;
oom:
    p->n_threads = 1;
    pio_threadpool_free(p);
    pio_error_set(err, PIO_ERR_OOM, "out of memory creating a thread pool");
    return NULL;
}

void pio_threadpool_free(pio_threadpool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->workers[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->workers);
    free(p);
}

int pio_threadpool_size(const pio_threadpool *p) { return p ? p->n_threads : 1; }

void pio_threadpool_run(pio_threadpool *p, int n_tasks, pio_task_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store(&p->next_task, 0);
    p->busy_workers = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    drain(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->busy_workers > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
