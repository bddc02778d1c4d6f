/* kernels/cpu/cpu_features.h: which SIMD level the CPU kernels dispatch to.
 *
 * Every file except *_avx512.c is compiled for x86-64-v3 (AVX2 + FMA + F16C),
 * so that level is the floor. AVX-512 kernels are chosen at run time when the
 * CPU (and the OS, which must save the zmm registers) supports them.
 *
 * PIO_CPU=avx2 in the environment forces the baseline: valgrind cannot run
 * AVX-512, and tests compare the two paths. PIO_CPU=avx512 (or unset, or
 * "auto") picks the best the CPU has.
 */
#ifndef PIO_CPU_FEATURES_H
#define PIO_CPU_FEATURES_H

typedef enum pio_cpu_level {
    PIO_CPU_AVX2 = 0, /* x86-64-v3: AVX2 + FMA + F16C, the build's baseline */
    PIO_CPU_AVX512,   /* AVX-512 F + BW + VL + DQ */
} pio_cpu_level;

/* The level in use, detected on first call and cached. Thread-safe. */
pio_cpu_level pio_cpu_level_get(void);

/* Re-reads PIO_CPU and the CPU's features; returns the new level. For tests
 * (call it while no kernel runs). */
pio_cpu_level pio_cpu_features_reinit(void);

/* "avx2" or "avx512". */
const char *pio_cpu_level_name(pio_cpu_level level);

#endif
