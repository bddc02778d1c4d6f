/* pio/kv.h: a loaded model's KV cache, by sequence slot.
 *
 * The cache holds, for every layer, the keys and values of the positions each
 * sequence slot (0 .. max_seqs-1) has run through the model. Two layouts:
 *
 *   contiguous  one [max_seqs, ctx, kv_heads, head_dim] tensor per layer for K
 *               and for V (the default): a slot owns ctx positions whether it
 *               uses them or not.
 *   paged       one pool of fixed-size blocks (16 positions by default) per
 *               layer for K and for V; a slot owns a block table and takes
 *               blocks as it grows, so slots share memory by what they use.
 *               Block b of the table is block b in every layer's pool.
 *
 * On the paged layout, prefix caching publishes every full block under a
 * hash of (its parent block's key, its token ids): a new sequence whose
 * prompt starts with a cached prefix attaches those blocks instead of
 * computing them. Blocks are refcounted; a cached block no slot references
 * stays until the pool needs it (least recently used first).
 *
 * pio_model_forward reserves room on its own (so callers that never call
 * these functions keep working); a scheduler calls pio_model_seq_reserve
 * first to learn, before running anything, whether a sequence still fits.
 *
 * Stable names for the scheduler (models/scheduler.c codes against them):
 * pio_model_seq_reserve, pio_model_seq_free, pio_model_seq_reuse_prefix,
 * pio_model_seq_register_prefix, pio_model_kv_stats, pio_model_kv_configure,
 * pio_model_seq_length, pio_model_seq_blocks_needed. Changes to them are
 * listed here.
 */
#ifndef PIO_KV_H
#define PIO_KV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pio/error.h"

typedef struct pio_model pio_model;

typedef enum pio_kv_layout { PIO_KV_CONTIGUOUS = 0, PIO_KV_PAGED } pio_kv_layout;

typedef enum pio_kv_format {
    PIO_KV_MODEL_DTYPE = 0, /* f32 in the reference mode, bf16 otherwise (as transformers) */
    PIO_KV_INT8,            /* int8 with an f32 scale per (position, kv head) */
    PIO_KV_F32,             /* f32 whatever the model's dtype (the model's own: as MODEL_DTYPE) */
    PIO_KV_BF16,            /* bf16 whatever the model's dtype */
} pio_kv_format;

typedef enum pio_kv_attention {
    PIO_ATTN_FULL = 0, /* every earlier position */
    PIO_ATTN_SLIDING,  /* the last `window` positions (the token's own included) */
    PIO_ATTN_SINK,     /* the first `sink` positions plus the last `window` */
} pio_kv_attention;

/* All zero is the default: contiguous, the model's dtype, full attention. */
typedef struct pio_kv_config {
    pio_kv_layout layout;
    int32_t block_size;  /* paged: positions per block; 0: 16 */
    int32_t n_blocks;    /* paged: blocks in the pool; 0: from max_bytes, else enough for
                            max_seqs full contexts (the contiguous cache's capacity) */
    size_t max_bytes;    /* paged, n_blocks 0: the pool's budget (all layers, K, V, scales) */
    pio_kv_format format;
    bool prefix_cache;   /* paged only */
    pio_kv_attention attention;
    int32_t window;      /* sliding, sink: positions kept from the end (>= 1) */
    int32_t sink;        /* sink: positions kept from the start (>= 0) */
} pio_kv_config;

/* What the cache holds now. On the contiguous layout a "block" is one slot's
 * whole context (block_size = ctx, blocks_total = max_seqs). */
typedef struct pio_kv_stats {
    const char *layout;     /* "contiguous", "paged" */
    const char *format;     /* "f32", "bf16", "int8" */
    const char *attention;  /* "full", "sliding", "sink" */
    int32_t window, sink;
    int32_t block_size;
    int32_t blocks_total;
    int32_t blocks_used;    /* referenced by at least one slot */
    int32_t blocks_cached;  /* referenced by none, kept for the prefix cache (evictable) */
    int32_t blocks_free;    /* neither; free + cached can be handed out */
    size_t bytes_per_block; /* all layers, K and V (and int8 scales) */
    size_t bytes_total;     /* == the model's kv_bytes: what was allocated */
    int64_t prefix_hits;    /* reuse_prefix calls that found at least one block */
    int64_t prefix_misses;  /* reuse_prefix calls (prefix caching on) that found none */
    int64_t tokens_reused;  /* positions attached instead of computed */
    int64_t evictions;      /* cached blocks handed out again */
    bool prefix_cache;      /* prefix caching on */
} pio_kv_stats;

/* The bytes a configuration takes for this model (as pio_model_kv_stats would
 * report after configuring it). cfg NULL: the current configuration. */
pio_status pio_model_kv_bytes(const pio_model *m, const pio_kv_config *cfg, size_t *bytes,
                              pio_error *err);

/* Reallocates the cache for cfg. Bad values are PIO_ERR_INVALID naming them,
 * and so is a call while any slot holds positions (free them first); out of
 * memory (PIO_ERR_OOM) leaves the old cache in place. Every cached prefix is
 * dropped and the counters restart. On CUDA the cache is contiguous or paged
 * (prefix caching included) in the model's dtype with full attention; int8,
 * a dtype other than the model's, and sliding/sink attention run on the CPU
 * only so far: on another device they are PIO_ERR_UNSUPPORTED. */
pio_status pio_model_kv_configure(pio_model *m, const pio_kv_config *cfg, pio_error *err);

/* Whether cfg is the loader's default cache for this model: contiguous, full
 * attention, in the model's dtype (PIO_KV_F32 on an f32 model counts). */
bool pio_kv_config_is_default(const pio_model *m, const pio_kv_config *cfg);

/* The configuration in effect (defaults filled in: block_size, n_blocks). */
void pio_model_kv_config_get(const pio_model *m, pio_kv_config *out);

pio_status pio_model_kv_stats(const pio_model *m, pio_kv_stats *out);

/* Makes sure slot `seq` has room for positions [0, n_pos). Paged: takes the
 * blocks it lacks from the pool (evicting unreferenced cached blocks), all or
 * none: PIO_ERR_OOM "out of KV blocks: need N, free M" when the pool cannot.
 * Contiguous: checks n_pos <= ctx. Windowed attention on the paged layout
 * (sliding, sink) takes no blocks for positions that fell out of the window,
 * and n_pos may then exceed ctx. */
pio_status pio_model_seq_reserve(pio_model *m, int32_t seq, int32_t n_pos, pio_error *err);

/* Blocks reserve(seq, n_pos) would have to take from the pool now (0 on the
 * contiguous layout; -1 for a slot out of range). */
int32_t pio_model_seq_blocks_needed(const pio_model *m, int32_t seq, int32_t n_pos);

/* Positions the slot holds (the highest position written + 1; 0 when empty). */
int32_t pio_model_seq_length(const pio_model *m, int32_t seq);

/* Empties the slot: its blocks return to the pool (full blocks in the prefix
 * cache stay cached, evictable). Out-of-range slots are ignored. */
void pio_model_seq_free(pio_model *m, int32_t seq);

/* With prefix caching on and `seq` empty: attaches the cached blocks of the
 * longest cached prefix of tokens[0, n) to the slot and returns how many
 * positions they hold: a multiple of the block size and at most n - 1, so
 * the last prompt token is still computed (its logits are needed). The
 * caller runs the model from that position on. 0 when off, on a miss, or
 * when the slot is not empty. */
int32_t pio_model_seq_reuse_prefix(pio_model *m, int32_t seq, const int32_t *tokens, int32_t n);

/* After tokens[0, n) were computed into slot `seq`: publishes the slot's full
 * blocks among them into the prefix cache (a block already cached under the
 * same key stays the cached one). No-op when prefix caching is off. */
void pio_model_seq_register_prefix(pio_model *m, int32_t seq, const int32_t *tokens, int32_t n);

/* Sequence checkpoints (models/kv_checkpoint.c): the slot's tokens,
 * positions and KV, with the model's identity and the KV format. Loading
 * into a slot replaces what it held; a file from another model or KV format
 * is refused (PIO_ERR_FORMAT) with a message naming the difference. */
pio_status pio_model_seq_save(const pio_model *m, int32_t seq, const char *path, pio_error *err);
pio_status pio_model_seq_load(pio_model *m, int32_t seq, const char *path, pio_error *err);

/* Swap to host memory (the scheduler's swap preemption): a slot's tokens and
 * the KV rows it holds copied into one host buffer, restored later into an
 * empty slot byte for byte, so nothing is recomputed. */
typedef struct pio_kv_swap pio_kv_swap;

/* Copies slot seq out, then empties the slot. NULL with err when the slot is
 * empty (PIO_ERR_INVALID) or host memory runs out (PIO_ERR_OOM; the slot is
 * left as it was). */
pio_kv_swap *pio_model_seq_swap_out(pio_model *m, int32_t seq, pio_error *err);

/* Restores sw into slot seq (emptied first). PIO_ERR_OOM "out of KV blocks"
 * when the pool has no room (nothing changed; try later); PIO_ERR_INVALID when
 * the cache was reconfigured to another KV format since. sw stays valid. */
pio_status pio_model_seq_swap_in(pio_model *m, int32_t seq, const pio_kv_swap *sw, pio_error *err);

size_t pio_kv_swap_bytes(const pio_kv_swap *sw);  /* host bytes it holds */
int32_t pio_kv_swap_length(const pio_kv_swap *sw); /* positions (the slot's length) */
void pio_kv_swap_free(pio_kv_swap *sw);

/* The token ids the slot holds, positions [0, length) (borrowed, valid until
 * the slot changes; NULL when empty). */
const int32_t *pio_model_seq_tokens(const pio_model *m, int32_t seq, int32_t *n);

/* The attention window layer uses (0: full attention; -1: no such layer):
 * the cache's sliding or sink window when configured (it overrides every
 * layer), else config.json's sliding_window for the layers it marks
 * (use_sliding_window with layer_types or max_window_layers, as transformers
 * reads them). Config windows mask attention; the cache still keeps every
 * position (layers without a window need them). */
int32_t pio_model_layer_window(const pio_model *m, int32_t layer);

/* config.json's sliding_window where use_sliding_window is set (0: none). */
int32_t pio_model_config_window(const pio_model *m);

/* "contiguous" / "paged", "f32" / "bf16" / "int8", "full" / "sliding" / "sink". */
const char *pio_kv_layout_name(pio_kv_layout l);
const char *pio_kv_attention_name(pio_kv_attention a);

#endif
