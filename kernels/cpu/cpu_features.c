/* Run-time CPU feature detection for kernel dispatch (see cpu_features.h). */
#define _GNU_SOURCE
#include "cpu_features.h"

#include <cpuid.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* -1 until detected; otherwise a pio_cpu_level. Kernels read it on every call,
 * so it is a relaxed atomic rather than a lock. */
static atomic_int cached_level = -1, cached_max = -1;

static bool has_avx512_bf16(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
    return (a >> 5) & 1; /* CPUID.(7,1):EAX.AVX512_BF16 */
}

/* AMX needs the CPU bits, the OS's XCR0 tile state (bits 17, 18), and Linux's
 * permission for this process to use tile data (arch_prctl, once). */
static bool amx_usable(void) {
#if defined(__linux__) && defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    bool tile = (d >> 24) & 1, bf16 = (d >> 22) & 1;
    if (!tile || !bf16) return false;
    if (!((c >> 27) & 1)) return false; /* OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return false;
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
    return false;
#endif
}

static pio_cpu_level detect_max(void) {
    /* libgcc's checks include the OS's XCR0 bits, so a kernel that does not
     * save zmm state (or valgrind, which does not emulate AVX-512) reads as
     * unsupported here. BW and VL are needed for the masked 16-bit loads. */
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")))
        return PIO_CPU_AVX2;
    if (!has_avx512_bf16()) return PIO_CPU_AVX512;
    if (!amx_usable()) return PIO_CPU_AVX512_BF16;
    return PIO_CPU_AMX;
}

pio_cpu_level pio_cpu_level_max(void) {
    int level = atomic_load_explicit(&cached_max, memory_order_relaxed);
    if (level < 0) {
        level = (int)detect_max();
        atomic_store_explicit(&cached_max, level, memory_order_relaxed);
    }
    return (pio_cpu_level)level;
}

static pio_cpu_level detect(void) {
    pio_cpu_level best = pio_cpu_level_max();
    const char *force = getenv("PIO_CPU");
    pio_cpu_level cap = PIO_CPU_AMX;
    if (force && strcmp(force, "avx2") == 0) cap = PIO_CPU_AVX2;
    else if (force && strcmp(force, "avx512") == 0) cap = PIO_CPU_AVX512;
    else if (force && strcmp(force, "avx512bf16") == 0) cap = PIO_CPU_AVX512_BF16;
    return best < cap ? best : cap;
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
    static const char *const names[] = {"avx2", "avx512", "avx512bf16", "amx"};
    return names[level];
}
