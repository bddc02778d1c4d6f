/* kernels/cpu/attention_kernels.h: the per-ISA inner loops of attention.c. */
#ifndef PIO_ATTENTION_KERNELS_H
#define PIO_ATTENTION_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "attention_paged.h"

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

/* Prompts (attention_prefill_avx512.c): per sequence and kv head, S = Q·Kᵀ, softmax
 * rows, O = P·V as register-tiled GEMMs over packed K and V. Full attention, f32
 * or bf16 cache (dot: bf16 mode, bf16 cache, vdpbf16ps; else f32 mode, f32 cache,
 * FMA); any mix of sequences (at most 64). false (nothing written) when it
 * cannot have its scratch memory: the caller takes the one-row path. */
bool pio_attn_prefill_avx512(pio_threadpool *pool, const float *q, int64_t n, int64_t heads,
                             const pio_kv_view *kv, const int32_t *seq, const int32_t *pos,
                             float scale, float *out, bool dot);

#endif
