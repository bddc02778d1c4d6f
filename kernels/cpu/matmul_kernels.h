/* kernels/cpu/matmul_kernels.h: the per-ISA matmul kernels behind
 * pio_cpu_matmul (matmul.c checks arguments, splits work and dispatches). */
#ifndef PIO_MATMUL_KERNELS_H
#define PIO_MATMUL_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

/* y[n, m] = x[n, k] · w[m, k]ᵀ, all contiguous row-major. */
typedef struct pio_matmul_job {
    const float *x; /* [n, k] */
    const uint16_t *xb; /* [n, k] x rounded to bf16, for the bf16 dot-product kernels */
    int64_t xb_ld;      /* elements per row of xb (k, or k padded to 32 for AMX) */
    const void *w;  /* [m, k] f32 or bf16 (the kernel's name says which) */
    float *y;       /* [n, m] */
    int64_t n, k, m;
    bool round_y;   /* bf16 mode: y rounded to bf16 as it is stored (kernels that
                     * cannot are followed by a rounding pass, see matmul.c) */
} pio_matmul_job;

/* Computes the columns [m0, m1) of y (rows m0..m1-1 of w) for all n rows of x.
 * Different threads run disjoint ranges of the same job. */
typedef void (*pio_matmul_kernel)(const pio_matmul_job *job, int64_t m0, int64_t m1);

void pio_matmul_f32_avx2(const pio_matmul_job *job, int64_t m0, int64_t m1);
void pio_matmul_bf16_avx2(const pio_matmul_job *job, int64_t m0, int64_t m1);
void pio_matmul_f32_avx512(const pio_matmul_job *job, int64_t m0, int64_t m1);
void pio_matmul_bf16_avx512(const pio_matmul_job *job, int64_t m0, int64_t m1);
/* bf16 x (job->xb) · bf16 w with vdpbf16ps (AVX-512 BF16). */
void pio_matmul_bf16dot_avx512(const pio_matmul_job *job, int64_t m0, int64_t m1);
/* AMX: rows [m0, m1) of w for all tokens; xb rows padded to xb_ld (a multiple
 * of 32) and to a multiple of 32 rows, with zeros. panel: per-thread scratch
 * of ceil(k / 32) · 2 KiB; ctile: 1 KiB. See matmul_amx_impl.h. */
typedef void (*pio_matmul_amx_kernel)(const pio_matmul_job *job, int64_t m0, int64_t m1,
                                      void *panel, float *ctile);
void pio_matmul_bf16_amx(const pio_matmul_job *job, int64_t m0, int64_t m1, void *panel,
                         float *ctile);
/* f32 prompts (AVX-512): w packed 64 rows × 256 k at a time into scratch
 * (64 KiB), 6 × 64 register tiles; edge: 1.5 KiB. Same signature as AMX's. */
void pio_matmul_f32_packed_avx512(const pio_matmul_job *job, int64_t m0, int64_t m1,
                                  void *scratch, float *edge);
/* bf16 mode, prompts (AVX-512 BF16): xb (ld = k, k even) · bf16 w packed as
 * pairs 64 rows × 512 k at a time (64 KiB), 6 × 64 tiles of vdpbf16ps. */
void pio_matmul_bf16_packed_avx512(const pio_matmul_job *job, int64_t m0, int64_t m1,
                                   void *scratch, float *edge);
/* Tests only: when set, bf16-mode matmuls of 16 tokens or more take the AMX
 * path with this kernel (an emulation), whatever the CPU. */
extern pio_matmul_amx_kernel pio_matmul_amx_override;

/* n f32 → bf16, round to nearest even (AVX-512 BF16). */
void pio_to_bf16_avx512(const float *src, uint16_t *dst, int64_t n);

/* Rows of x per cache block: a block of about 256 KiB stays in L2 while every
 * group of w rows of a task passes over it; a multiple of `tile`, at least one tile. */
static inline int64_t pio_matmul_x_block(int64_t k, int64_t tile) {
    int64_t rows = (256 * 1024) / (k * 4 + 1);
    rows -= rows % tile;
    return rows < tile ? tile : rows;
}

#endif
