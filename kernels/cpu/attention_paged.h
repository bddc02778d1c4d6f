/* kernels/cpu/attention_paged.h: KV writes and attention through block tables.
 *
 * A layer's cache is a pool of blocks: K [n_blocks, block, kv_heads, dk] and
 * V [n_blocks, block, kv_heads, dv], in f32, bf16 or int8 (then with an f32
 * scale per (position, kv head) beside each). Sequence slot s reads and
 * writes its position p in block tables[s].block[p / block], row p % block.
 * The contiguous cache [slots, ctx, kv_heads, d] is the special case block =
 * ctx with no tables (block s is slot s), so one kernel serves both.
 *
 * Which positions token t (at pos) attends to:
 *   full     0 .. pos
 *   sliding  pos - window + 1 .. pos           (window > 0, sink 0)
 *   sink     0 .. sink - 1  and  pos - window + 1 .. pos
 * clipped at 0 and never twice. Blocks holding none of them may be absent
 * (-1) in the table: windowed sequences give them back to the pool.
 */
#ifndef PIO_ATTENTION_PAGED_H
#define PIO_ATTENTION_PAGED_H

#include <stdbool.h>
#include <stdint.h>

#include "pio/tensor.h"
#include "pio/threadpool.h"

typedef enum pio_kv_elem { PIO_KV_ELEM_F32, PIO_KV_ELEM_BF16, PIO_KV_ELEM_I8 } pio_kv_elem;

/* One layer's blocks (borrowed storage). */
typedef struct pio_kv_pool {
    void *k, *v;              /* [n_blocks, block, kv_heads, dk], [..., dv] */
    float *k_scale, *v_scale; /* int8 only: [n_blocks, block, kv_heads] */
    pio_kv_elem elem;
    int64_t n_blocks, block, kv_heads, dk, dv;
} pio_kv_pool;

/* A slot's logical block b lives in pool block `block[b]` (-1: absent). */
typedef struct pio_kv_table {
    const int32_t *block;
    int32_t n;
} pio_kv_table;

/* What attention reads and kv_write writes. */
typedef struct pio_kv_view {
    pio_kv_pool pool;
    const pio_kv_table *tables; /* [slots]; NULL: contiguous (block s is slot s, block = ctx) */
    int64_t slots;
    int32_t window;             /* 0: full attention */
    int32_t sink;               /* positions always kept from the start (with window > 0) */
} pio_kv_view;

/* Bytes of one element of the pool's K or V. */
static inline size_t pio_kv_elem_size(pio_kv_elem e) {
    return e == PIO_KV_ELEM_F32 ? 4 : e == PIO_KV_ELEM_BF16 ? 2 : 1;
}

/* Stores k [n, kv_heads, dk] and v [n, kv_heads, dv] (f32) at (seq[t], pos[t]),
 * converting (bf16) or quantizing (int8: scale = max|x| / 127 per position
 * and head, x ≈ scale · q). Every written position's block must be present. */
pio_status pio_cpu_kv_write_paged(const pio_tensor *k, const pio_tensor *v, const pio_kv_view *kv,
                                  const int32_t *seq, const int32_t *pos, pio_error *err);

/* out [n, heads, dv] = Σ_j softmax_j(q·k_j · scale) v_j over the positions
 * each token attends to (above), GQA by heads / kv_heads. In f32 mode on the
 * contiguous view (full attention) this is pio_cpu_attention, bit for bit;
 * on a paged view with a block size that is a multiple of 4 the same holds
 * (the per-key arithmetic and the softmax order do not depend on where
 * blocks start). bf16 mode rounds where transformers does. */
pio_status pio_cpu_attention_paged(pio_threadpool *pool, const pio_tensor *q,
                                   const pio_kv_view *kv, const int32_t *seq, const int32_t *pos,
                                   float scale, pio_tensor *out, bool round_bf16, pio_error *err);

/* The core both entry points share (attention.c): arguments already checked.
 * q [n, heads, dk], out [n, heads, dv]. Fails only for want of memory (int8 tiles). */
pio_status pio_cpu_attention_run(pio_threadpool *pool, const float *q, int64_t n, int64_t heads,
                                 const pio_kv_view *kv, const int32_t *seq, const int32_t *pos,
                                 float scale, float *out, bool round_bf16, pio_error *err);

/* The positions a token at pos attends to: [0, *s_keep) and [*first, pos]. */
static inline void pio_kv_visible(const pio_kv_view *kv, int64_t pos, int64_t *s_keep,
                                  int64_t *first) {
    *s_keep = 0;
    *first = 0;
    if (kv->window <= 0 || pos - kv->window + 1 <= 0) return;
    *first = pos - kv->window + 1;
    *s_keep = kv->sink < *first ? kv->sink : *first;
}

/* Rows [j, j + len) of one kv head as f32: q8 int8 rows `step` bytes apart,
 * scales `sstep` floats apart, into out [len, d]. */
void pio_kv_dequant_rows(const int8_t *q8, size_t step, const float *scale, size_t sstep,
                         int64_t len, int64_t d, float *out);

#endif
