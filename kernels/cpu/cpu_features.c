/* Run-time CPU feature detection for kernel dispatch (see cpu_features.h). */
#include "cpu_features.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* -1 until detected; otherwise a pio_cpu_level. Kernels read it on every call,
 * so it is a relaxed atomic rather than a lock. */
static atomic_int cached_level = -1;

static pio_cpu_level detect(void) {
    const char *force = getenv("PIO_CPU");
    if (force && strcmp(force, "avx2") == 0) return PIO_CPU_AVX2;

    /* libgcc's checks include the OS's XCR0 bits, so a kernel that does not
     * save zmm state (or valgrind, which does not emulate AVX-512) reads as
     * unsupported here. BW and VL are needed for the masked 16-bit loads. */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return PIO_CPU_AVX512;
    return PIO_CPU_AVX2;
}

pio_cpu_level pio_cpu_level_get(void) {
    int level = atomic_load_explicit(&cached_level, memory_order_relaxed);
    if (level < 0) {
        /* Two threads racing here compute the same answer; either store wins. */
        level = (int)detect();
        atomic_store_explicit(&cached_level, level, memory_order_relaxed);
    }
    return (pio_cpu_level)level;
}

pio_cpu_level pio_cpu_features_reinit(void) {
    atomic_store_explicit(&cached_level, -1, memory_order_relaxed);
    return pio_cpu_level_get();
}

const char *pio_cpu_level_name(pio_cpu_level level) {
    return level == PIO_CPU_AVX512 ? "avx512" : "avx2";
}
