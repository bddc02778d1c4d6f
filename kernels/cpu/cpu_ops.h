/* kernels/cpu/cpu_ops.h: the CPU implementations of every op the models use.
 *
 * Kernels know tensors and the thread pool, nothing else. Every kernel checks
 * dtypes and shapes and returns PIO_ERR_INVALID with both shapes in the message
 * on a mismatch; none aborts. Activations are f32 and contiguous; weights are
 * f32 or bf16, contiguous, row-major [out, in] as in nn.Linear.
 *
 * `round_bf16` asks a kernel to round where PyTorch rounds when it runs the
 * same op on bf16 tensors (see models.md §0), so bf16 mode tracks transformers'
 * bf16 output. In the f32 reference mode it is false and nothing is rounded.
 */
#ifndef PIO_CPU_OPS_H
#define PIO_CPU_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "pio/error.h"
#include "pio/tensor.h"
#include "pio/threadpool.h"

/* out[i, :] = table[ids[i], :]  table [V, d] f32|bf16, out [n, d] f32.
 * An id outside [0, V) is PIO_ERR_RANGE naming the id and V. */
pio_status pio_cpu_embedding(const pio_tensor *table, const int32_t *ids, int64_t n,
                             pio_tensor *out, pio_error *err);

/* y[n, m] = x[n, k] · w[m, k]ᵀ   x f32, w f32|bf16, y f32; f32 accumulation.
 * Threads split the output columns (rows of w), so each weight row is read once
 * per call whatever n is (the decode case n = 1 is a matrix-vector product). */
pio_status pio_cpu_matmul(pio_threadpool *pool, const pio_tensor *x, const pio_tensor *w,
                          pio_tensor *y, pio_error *err);

/* Several weights that share x in one run of the pool: y[i] = x · w[i]ᵀ for
 * i < n_w (1 to 4; q, k, v or gate, up). x_bf16 (bf16 mode) takes x as
 * holding bf16 values, as torch's bf16 Linear does: bf16 weights may then use
 * bf16 dot-product instructions (AVX-512 BF16, AMX), whose products are exact
 * and whose sums are f32, so results keep f32 accuracy. x values that are not
 * bf16 are rounded to bf16 on those paths only. */
pio_status pio_cpu_matmul_ex(pio_threadpool *pool, const pio_tensor *x, int n_w,
                             const pio_tensor *const *w, pio_tensor *const *y, bool x_bf16,
                             pio_error *err);

/* A Linear of the model: pio_cpu_matmul_ex with x_bf16 = bf16_mode, and in
 * bf16 mode y rounded to bf16 (torch's bf16 Linear output) by the threads
 * that computed it, in the same run of the pool. */
pio_status pio_cpu_linear(pio_threadpool *pool, const pio_tensor *x, int n_w,
                          const pio_tensor *const *w, pio_tensor *const *y, bool bf16_mode,
                          pio_error *err);

/* y = x / sqrt(mean(x², last dim) + eps) * w    x,y [..., d] f32 (y may be x), w [d] f32|bf16.
 * round_bf16: x̂ rounded to bf16 before the product, product rounded (transformers). */
pio_status pio_cpu_rmsnorm(pio_threadpool *pool, const pio_tensor *x, const pio_tensor *w,
                           float eps, pio_tensor *y, bool round_bf16, pio_error *err);

/* x += r (rounded to bf16 when round_bf16), then y = rmsnorm(x) · w as
 * pio_cpu_rmsnorm: the residual add and the next norm in one pass over the
 * rows, on the pool. x, r, y [..., d] f32 (y must not overlap x or r). */
pio_status pio_cpu_residual_rmsnorm(pio_threadpool *pool, pio_tensor *x, const pio_tensor *r,
                                    const pio_tensor *w, float eps, pio_tensor *y,
                                    bool round_bf16, pio_error *err);

/* Rotate-half (NeoX) RoPE in place on x [n, heads, head_dim] f32 over its first
 * rot_dim dims: angle_i = pos[t] · inv_freq[i], i < rot_dim/2, computed in f32;
 * out[i] = x[i]cos − x[i+h]sin, out[i+h] = x[i+h]cos + x[i]sin, h = rot_dim/2.
 * round_bf16: cos/sin rounded to bf16 and each product and the sum rounded. */
pio_status pio_cpu_rope(pio_tensor *x, const int32_t *pos, const float *inv_freq, int rot_dim,
                        bool round_bf16, pio_error *err);

/* The start of attention in one pass over the tokens, on the pool: q [n, heads, d]
 * and k [n, kv_heads, d] normed per head (q_norm, k_norm [d], either may be NULL;
 * pio_cpu_rmsnorm), rotated (pio_cpu_rope, rot_dim), and, when cache_k is not
 * NULL, k and v [n, kv_heads, dv] written to the caches (pio_cpu_kv_write).
 * Bit-identical to those ops in that order; arguments they would refuse are
 * refused with their messages. */
pio_status pio_cpu_qk_norm_rope(pio_threadpool *pool, pio_tensor *q, pio_tensor *k,
                                const pio_tensor *q_norm, const pio_tensor *k_norm, float eps,
                                const int32_t *pos, const float *inv_freq, int rot_dim,
                                bool round_bf16, const pio_tensor *v, pio_tensor *cache_k,
                                pio_tensor *cache_v, const int32_t *seq, pio_error *err);

/* Softmax in place over the last dimension of x [..., d] f32. */
pio_status pio_cpu_softmax(pio_tensor *x, pio_error *err);

/* out = silu(gate) * up, all [n, d] f32 (out may alias either input).
 * round_bf16: silu output rounded, then the product rounded. */
pio_status pio_cpu_silu_mul(const pio_tensor *gate, const pio_tensor *up, pio_tensor *out,
                            bool round_bf16, pio_error *err);
/* The same, the elements split over the pool's threads. */
pio_status pio_cpu_silu_mul_pool(pio_threadpool *pool, const pio_tensor *gate,
                                 const pio_tensor *up, pio_tensor *out, bool round_bf16,
                                 pio_error *err);

/* Element-wise out = a ∘ b for ∘ in + − × ÷. a, out same shape, f32; b has
 * a's shape or is a single element (broadcast). out may alias a or b. */
typedef enum pio_binary_op { PIO_ADD, PIO_SUB, PIO_MUL, PIO_DIV } pio_binary_op;
pio_status pio_cpu_binary(pio_binary_op op, const pio_tensor *a, const pio_tensor *b,
                          pio_tensor *out, pio_error *err);

/* Rounds every element of an f32 tensor to the nearest bf16 value, in place. */
void pio_cpu_round_bf16(pio_tensor *x);

/* Writes this batch's keys and values into the cache:
 *   k, v [n, n_kv_heads, head_dim] f32; cache_k, cache_v [n_slots, ctx, n_kv_heads, head_dim]
 *   f32|bf16; token t goes to cache[seq[t], pos[t]]. Out-of-range seq/pos is PIO_ERR_RANGE. */
pio_status pio_cpu_kv_write(const pio_tensor *k, const pio_tensor *v, pio_tensor *cache_k,
                            pio_tensor *cache_v, const int32_t *seq, const int32_t *pos,
                            pio_error *err);

/* Causal attention with GQA over the cache (write this batch's K/V first):
 *   q [n, n_heads, head_dim] f32, out [n, n_heads, head_dim] f32;
 *   token t attends cache[seq[t], 0..pos[t]] (inclusive); query head h reads kv head
 *   h / (n_heads / n_kv_heads). scores = q·k · scale, softmax in f32, then ·v.
 * round_bf16: scores rounded as bf16 matmul then ×scale rounded; probabilities
 *   rounded to bf16 (transformers' eager attention in bf16). */
pio_status pio_cpu_attention(pio_threadpool *pool, const pio_tensor *q, const pio_tensor *cache_k,
                             const pio_tensor *cache_v, const int32_t *seq, const int32_t *pos,
                             float scale, pio_tensor *out, bool round_bf16, pio_error *err);

/* Memory read bandwidth in bytes/s: the pool's threads each stream their
 * share of a fresh `bytes`-byte buffer (much larger than the caches), best of
 * `reps` passes. It sets the decode roofline (weight bytes per token ÷ this).
 * 0 with PIO_ERR_OOM when the buffer cannot be had. */
double pio_cpu_read_bandwidth(pio_threadpool *pool, size_t bytes, int reps, pio_error *err);

/* ---- mixture of experts (moe.c) ----------------------------------------------
 * A MoE block runs as: route (pick top_k experts and their weights per token),
 * sort (group the token-choice pairs by expert), gather (copy each pair's input
 * row into its expert's group), the experts' matmuls on their contiguous groups
 * (so each expert's weights are read once per batch, and unselected experts not
 * at all), then combine (the weighted sum back into token order). */

typedef enum pio_moe_scoring {
    PIO_MOE_SOFTMAX, /* softmax in f32 over all experts (Qwen2/3-MoE) */
    PIO_MOE_SIGMOID, /* sigmoid per expert (DeepSeek-V3, GLM-4.x MoE) */
} pio_moe_scoring;

typedef struct pio_moe_route_params {
    pio_moe_scoring scoring;
    int32_t top_k;
    const float *bias;   /* [n_expert] added to the scores for the choice only
                          * (e_score_correction_bias); weights use the plain scores. NULL: none */
    int32_t n_group;     /* group-limited choice: experts split into n_group equal groups, */
    int32_t topk_group;  /* only the topk_group groups whose two best scores sum highest
                          * compete. n_group <= 1: no groups */
    bool norm;           /* w /= (sum of the top_k w) + norm_eps   (norm_topk_prob) */
    float norm_eps;
    float scale;         /* then w *= scale (routed_scaling_factor); 1 for none */
    bool round_bf16;     /* finally w rounded to bf16 (Qwen casts them to the logits' dtype) */
} pio_moe_route_params;

/* Per token t, the top_k experts by score, best first (exact ties: lower expert id
 * first; torch.topk leaves that order unspecified), and their weights:
 *   logits [n, n_expert] f32 → ids [n * top_k], weights [n * top_k] (caller-owned).
 * Softmax and sigmoid are computed in f32. */
pio_status pio_cpu_moe_route(const pio_tensor *logits, const pio_moe_route_params *p,
                             int32_t *ids, float *weights, pio_error *err);

/* Groups the n_pairs = n * top_k (token, choice) pairs by expert, a stable counting
 * sort: pair i = t * top_k + j has expert ids[i] in [0, n_expert) (else PIO_ERR_RANGE).
 *   offsets [n_expert + 1]: the pairs of expert e are rows offsets[e] .. offsets[e+1]-1
 *   pair_of_row [n_pairs]: which pair a row holds (tokens ascending within an expert)
 *   row_of_pair [n_pairs]: the inverse. All caller-owned. */
pio_status pio_cpu_moe_sort(const int32_t *ids, int64_t n_pairs, int32_t n_expert,
                            int32_t *offsets, int32_t *pair_of_row, int32_t *row_of_pair,
                            pio_error *err);

/* out[r, :] = x[pair_of_row[r] / top_k, :]   x [n, d], out [rows, d] f32, rows <= n * top_k. */
pio_status pio_cpu_moe_gather(const pio_tensor *x, const int32_t *pair_of_row, int32_t top_k,
                              pio_tensor *out, pio_error *err);

/* How the top_k weighted expert outputs of a token are summed; in bf16 mode each
 * weighted output w·y is first rounded to bf16 in both (as torch's bf16 product). */
typedef enum pio_moe_accum {
    PIO_MOE_ACCUM_EXPERT_ORDER, /* transformers' eager experts: added in ascending expert id
                                 * into a zero buffer, rounded to bf16 after every add */
    PIO_MOE_ACCUM_F32,          /* grouped_mm / batched_mm: summed in f32 in router order,
                                 * rounded once */
} pio_moe_accum;

/* out[t, :] = sum over j of weights[t*k + j] · y[row_of_pair[t*k + j], :]   (k = top_k)
 *   y [n * top_k, d] expert outputs in sorted rows, out [n, d] f32; ids [n * top_k] order
 *   the terms for PIO_MOE_ACCUM_EXPERT_ORDER. */
pio_status pio_cpu_moe_combine(pio_threadpool *pool, const pio_tensor *y,
                               const int32_t *row_of_pair, const int32_t *ids,
                               const float *weights, int32_t top_k, pio_moe_accum accum,
                               bool round_bf16, pio_tensor *out, pio_error *err);

/* Several independent matmuls in one pass of the thread pool (the experts of a
 * MoE layer): y[j][n_j, m_j] = x[j][n_j, k_j] · w[j][m_j, k_j]ᵀ for j < n_jobs,
 * with pio_cpu_matmul's dtypes, layouts and arithmetic. Threads split all the
 * jobs' output rows together, so small jobs do not each pay for waking them. */
pio_status pio_cpu_matmul_grouped(pio_threadpool *pool, int n_jobs, const pio_tensor *const *x,
                                  const pio_tensor *const *w, pio_tensor *const *y,
                                  pio_error *err);

#endif
