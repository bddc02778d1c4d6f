/* A small pthread pool built for many short runs (a decode step is a few
 * hundred of them, each tens of microseconds).
 *
 * A run publishes its job, then one 64-bit atomic word: the run's generation
 * in the high half and the next task to claim in the low half. Threads claim
 * tasks by compare-and-swap on that word, so a thread that is late (still
 * waking, or descheduled on a busy machine) can never claim a task of a run
 * it did not see start; and the caller waits for the tasks to be done, not
 * for every worker to check in, so a worker that never got a core costs
 * nothing. Idle workers spin on the word for PIO_SPIN_US (default 100 µs)
 * after each run, so back-to-back runs pay no futex wake-up, and then sleep
 * on a condition variable, so an idle pool costs nothing.
 */
#define _GNU_SOURCE
#include "pio/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

struct pio_threadpool {
    int n_threads;
    pthread_t *workers;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    _Atomic uint64_t state;  /* generation << 32 | next task to claim */
    atomic_int done;         /* tasks of the current run finished */
    atomic_int sleepers;     /* workers asleep (or about to be) on `wake` */
    atomic_int stopping;
    uint32_t generation;     /* the caller's copy of the current generation */
    long spin_ns;            /* how long an idle worker spins before sleeping */
    /* the current run, written before `state` publishes it */
    pio_task_fn fn;
    void *ctx;
    int n_tasks;
};

typedef struct {
    pio_threadpool *pool;
    int thread;
} worker_arg;

enum { CLOSED = 0xffffffffu }; /* task index of a finished run: nothing left to claim */

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Claims and runs tasks of generation gen until none are left. */
static void drain(pio_threadpool *p, uint32_t gen, int thread) {
    uint64_t s = atomic_load_explicit(&p->state, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(s >> 32) != gen || (uint32_t)s >= (uint32_t)p->n_tasks) return;
        if (!atomic_compare_exchange_weak_explicit(&p->state, &s, s + 1, memory_order_acquire,
                                                   memory_order_acquire))
            continue; /* s reloaded */
        /* The run cannot end (nor fn/ctx change) before this task is counted done. */
        p->fn(p->ctx, (int)(uint32_t)s, thread);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
        s = atomic_load_explicit(&p->state, memory_order_acquire);
    }
}

/* Waits for a generation other than `seen`: spins first, then sleeps. */
static uint32_t wait_for_run(pio_threadpool *p, uint32_t seen) {
    uint32_t g;
    long deadline = 0;
    for (int i = 0;; i++) {
        g = (uint32_t)(atomic_load_explicit(&p->state, memory_order_acquire) >> 32);
        if (g != seen || atomic_load_explicit(&p->stopping, memory_order_relaxed)) return g;
        cpu_relax();
        if ((i & 63) == 63) { /* check the clock now and then */
            long t = now_ns();
            if (!deadline) deadline = t + p->spin_ns;
            else if (t > deadline) break;
        }
    }
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1); /* seq_cst: pairs with the run's state/sleepers */
    while ((g = (uint32_t)(atomic_load(&p->state) >> 32)) == seen && !atomic_load(&p->stopping))
        pthread_cond_wait(&p->wake, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *worker_main(void *arg) {
    worker_arg a = *(worker_arg *)arg;
    free(arg);
    pio_threadpool *p = a.pool;
    uint32_t seen = 0;
    for (;;) {
        seen = wait_for_run(p, seen);
        if (atomic_load(&p->stopping)) break;
        drain(p, seen, a.thread);
    }
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
    const char *spin = getenv("PIO_SPIN_US");
    p->spin_ns = (spin && *spin ? atol(spin) : 100) * 1000L;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
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
    atomic_store(&p->stopping, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->workers[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
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
    /* The previous run is over (all its tasks done), so nobody reads these now. */
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    uint32_t gen = ++p->generation;
    atomic_store(&p->state, (uint64_t)gen << 32); /* seq_cst: publishes the job; pairs with sleepers */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    drain(p, gen, 0);
    for (int i = 0; atomic_load_explicit(&p->done, memory_order_acquire) < n_tasks; i++) {
        if (i < 20000) cpu_relax();
        else sched_yield(); /* a worker lost its core mid-task: let it have ours */
    }
    /* Close the run before the next one rewrites the job: a late thread that
     * read an open state of this run then fails its compare-and-swap. */
    atomic_store(&p->state, (uint64_t)gen << 32 | CLOSED);
}
