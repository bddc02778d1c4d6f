/* Memory read bandwidth, measured the way a decode step reads weights: every
 * thread streams its contiguous share of a buffer far larger than the caches
 * with 32-byte loads, and the slowest thread sets the time. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "cpu_features.h"
#include "cpu_internal.h"
#include "simd_avx2.h"

typedef struct {
    const char *buf;
    size_t bytes;
    int n_tasks;
    bool wide;
    uint64_t sink[64]; /* one per task, so the loads are not optimised away */
} bw_ctx;

/* 64-byte loads where the CPU has them: the widest loads a kernel uses, and
 * on the 2-core Zen 4 a few GB/s more than 32-byte ones (31 vs 27-28). */
__attribute__((target("avx512f"))) static uint64_t read_wide(const char *p, const char *end) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (; p < end; p += 256) {
        a0 = _mm512_xor_si512(a0, _mm512_load_si512((const void *)p));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512((const void *)(p + 64)));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512((const void *)(p + 128)));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512((const void *)(p + 192)));
    }
    __m512i a = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
    return (uint64_t)_mm_cvtsi128_si64(_mm512_castsi512_si128(a));
}

static void read_task(void *arg, int task, int thread) {
    (void)thread;
    bw_ctx *c = arg;
    size_t chunk = (c->bytes / (size_t)c->n_tasks) & ~(size_t)255;
    const char *p = c->buf + (size_t)task * chunk, *end = p + chunk;
    if (c->wide) {
        c->sink[task] = read_wide(p, end);
        return;
    }
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (; p < end; p += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_load_si256((const __m256i *)p));
        a1 = _mm256_xor_si256(a1, _mm256_load_si256((const __m256i *)(p + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_load_si256((const __m256i *)(p + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_load_si256((const __m256i *)(p + 96)));
    }
    __m256i a = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    c->sink[task] = (uint64_t)_mm256_extract_epi64(a, 0);
}

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double pio_cpu_read_bandwidth(pio_threadpool *pool, size_t bytes, int reps, pio_error *err) {
    bytes &= ~(size_t)4095;
    if (bytes < (1u << 20)) bytes = 1u << 20;
    if (reps < 1) reps = 1;
    char *buf = NULL;
    bytes = (bytes + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
    if (posix_memalign((void **)&buf, 2u << 20, bytes) != 0) {
        pio_error_set(err, PIO_ERR_OOM, "out of memory for a %zu MiB bandwidth buffer",
                      bytes >> 20);
        return 0;
    }
#ifdef MADV_HUGEPAGE
    madvise(buf, bytes, MADV_HUGEPAGE); /* as weights get (runtime/tensor.c) */
#endif
    memset(buf, 1, bytes); /* fault every page in before timing */
    int threads = pio_threadpool_size(pool);
    bw_ctx c = {.buf = buf, .bytes = bytes, .n_tasks = threads > 64 ? 64 : threads,
                .wide = pio_cpu_level_get() >= PIO_CPU_AVX512};
    size_t read = (bytes / (size_t)c.n_tasks & ~(size_t)255) * (size_t)c.n_tasks;
    double best = 0;
    for (int r = 0; r <= reps; r++) { /* pass 0 warms up the threads */
        double t0 = seconds_now();
        pio_threadpool_run(pool, c.n_tasks, read_task, &c);
        double bw = (double)read / (seconds_now() - t0);
        if (r > 0 && bw > best) best = bw;
    }
    free(buf);
    return best;
}
