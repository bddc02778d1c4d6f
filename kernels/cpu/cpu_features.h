/* kernels/cpu/cpu_features.h: which SIMD level the CPU kernels dispatch to.
 *
 * Every file except *_avx512.c and *_amx.c is compiled for x86-64-v3 (AVX2 +
 * FMA + F16C), so that level is the floor. Higher levels are chosen at run
 * time when the CPU (and the OS, which must save the zmm and tile registers)
 * supports them. The levels are ordered: each one includes the ones below.
 *
 * PIO_CPU in the environment caps the level: "avx2" forces the baseline
 * (valgrind cannot run AVX-512), "avx512" the widening AVX-512 kernels without
 * BF16 dot products, "avx512bf16" no AMX; unset, "auto" or "amx" pick the
 * best the CPU has. Tests use it to compare the paths.
 */
#ifndef PIO_CPU_FEATURES_H
#define PIO_CPU_FEATURES_H

typedef enum pio_cpu_level {
    PIO_CPU_AVX2 = 0,    /* x86-64-v3: AVX2 + FMA + F16C, the build's baseline */
    PIO_CPU_AVX512,      /* AVX-512 F + BW + VL + DQ */
    PIO_CPU_AVX512_BF16, /* + AVX512_BF16 (vdpbf16ps): bf16 dot products in bf16 mode */
    PIO_CPU_AMX,         /* + AMX-TILE and AMX-BF16, tile data enabled by the OS */
} pio_cpu_level;

/* The level in use, detected on first call and cached. Thread-safe. */
pio_cpu_level pio_cpu_level_get(void);

/* Re-reads PIO_CPU and the CPU's features; returns the new level. For tests
 * (call it while no kernel runs). */
pio_cpu_level pio_cpu_features_reinit(void);

/* The best level this CPU and OS support, whatever PIO_CPU says. */
pio_cpu_level pio_cpu_level_max(void);

/* "avx2", "avx512", "avx512bf16" or "amx". */
const char *pio_cpu_level_name(pio_cpu_level level);

#endif
