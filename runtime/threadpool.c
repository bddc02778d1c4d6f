/* A small pthread pool built for many short runs (a decode step is a few
 * hundred of them, each tens of microseconds).
 *
 * A run publishes its job and bumps an atomic generation counter; workers
 * spin on that counter for a while after each run (PIO_SPIN_US, default
 * 300 µs) and only then sleep on a condition variable, so back-to-back runs
 * never pay for a futex wake-up, while an idle pool costs nothing. Tasks are
 * claimed with an atomic counter, so uneven tasks balance themselves; the
 * caller waits for the workers by spinning on a count of the ones still busy
 * (yielding the CPU after a while, for machines with more threads than cores).
 */
#define _GNU_SOURCE
#include "pio/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
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
    atomic_uint generation; /* bumped per run; workers wait for a new one */
    atomic_int sleepers;    /* workers asleep (or about to be) on `wake` */
    atomic_int stopping;
    long spin_ns;           /* how long an idle worker spins before sleeping */
    /* the current run */
    pio_task_fn fn;
    void *ctx;
    int n_tasks;
    atomic_int next_task;
    atomic_int busy_workers;
};

typedef struct {
    pio_threadpool *pool;
    int thread;
} worker_arg;

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void drain(pio_threadpool *p, int thread) {
    for (;;) {
        int task = atomic_fetch_add_explicit(&p->next_task, 1, memory_order_relaxed);
        if (task >= p->n_tasks) break;
        p->fn(p->ctx, task, thread);
    }
}

/* Waits for a generation other than `seen`: spins first, then sleeps. */
static unsigned wait_for_run(pio_threadpool *p, unsigned seen) {
    unsigned g;
    long deadline = 0;
    for (int i = 0;; i++) {
        g = atomic_load_explicit(&p->generation, memory_order_acquire);
        if (g != seen || atomic_load_explicit(&p->stopping, memory_order_relaxed)) return g;
        cpu_relax();
        if ((i & 63) == 63) { /* check the clock now and then */
            long t = now_ns();
            if (!deadline) deadline = t + p->spin_ns;
            else if (t > deadline) break;
        }
    }
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->sleepers, 1); /* seq_cst: pairs with the run's generation/sleepers */
    while ((g = atomic_load(&p->generation)) == seen && !atomic_load(&p->stopping))
        pthread_cond_wait(&p->wake, &p->mu);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->mu);
    return g;
}

static void *worker_main(void *arg) {
    worker_arg a = *(worker_arg *)arg;
    free(arg);
    pio_threadpool *p = a.pool;
    unsigned seen = 0;
    for (;;) {
        seen = wait_for_run(p, seen);
        if (atomic_load(&p->stopping)) break;
        drain(p, a.thread);
        atomic_fetch_sub_explicit(&p->busy_workers, 1, memory_order_release);
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
    p->spin_ns = (spin && *spin ? atol(spin) : 300) * 1000L;
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
    /* Workers only read the job after seeing the new generation (acquire),
     * and the previous run ended with every worker done (busy_workers == 0). */
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next_task, 0, memory_order_relaxed);
    atomic_store_explicit(&p->busy_workers, p->n_threads - 1, memory_order_relaxed);
    atomic_fetch_add(&p->generation, 1); /* seq_cst: a sleeper either sees it or is counted */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->mu);
    }
    drain(p, 0);
    for (int i = 0; atomic_load_explicit(&p->busy_workers, memory_order_acquire) > 0; i++) {
        if (i < 20000) cpu_relax();
        else sched_yield(); /* a worker lost its core: let it have ours */
    }
}
