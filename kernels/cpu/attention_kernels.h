/* kernels/cpu/attention_kernels.h: the per-ISA inner loops of attention.c. */
#ifndef PIO_ATTENTION_KERNELS_H
#define PIO_ATTENTION_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* out[j] = finish(q · k_j) for j < len, keys `step` bytes apart from k;
 * finish(d) = d · scale, or in bf16 mode bf16(bf16(d) · scale) (torch's bf16
 * QKᵀ then × scale). qb: q in bf16 for bf16 dot products (bf16 mode with a
 * bf16 cache), else NULL and q is used in f32. */
typedef struct pio_attn_scores_args {
    const float *q;
    const uint16_t *qb;
    const char *k;
    size_t step;
    int64_t len, d;
    float scale;
    bool k_bf16, round_bf16;
    float *out;
} pio_attn_scores_args;

void pio_attn_scores_avx512(const pio_attn_scores_args *args);

/* o[0..d) += Σ_j p[j] · v_j, j < len, values `step` bytes apart. */
void pio_attn_pv_avx512(float *o, const float *p, const char *v, size_t step, int64_t len,
                        int64_t d, bool v_bf16);

/* q [d] f32 → bf16, nearest even. */
void pio_attn_q_to_bf16_avx512(const float *q, uint16_t *qb, int64_t d);

#endif
