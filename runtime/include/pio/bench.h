/* pio/bench.h: what benchmark suites need from the core (see lua/pio/bench.lua).
 *
 * Benchmarks time the forward pass alone, as llama-bench does: token ids are
 * made up (no tokenizer), logits are produced for the last token of each
 * batch and never sampled.
 */
#ifndef PIO_BENCH_H
#define PIO_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "pio/error.h"
#include "pio/model.h"

/* Runs n_tokens made-up tokens of sequence slot 0 at positions n_past ..
 * n_past + n_tokens - 1, n_batch tokens per forward pass (n_batch <= 0: all
 * in one), logits for the last token of each pass. *seconds gets the wall
 * time of the forward passes alone. The KV cache rows at those positions are
 * overwritten; earlier ones (the "depth") are attended to as they are. */
pio_status pio_model_bench_forward(pio_model *m, int32_t n_tokens, int32_t n_past,
                                   int32_t n_batch, double *seconds, pio_error *err);

/* Concurrent decode, as a server runs it: sequence slots 0 .. n_seqs - 1 each
 * get `depth` made-up tokens first (not timed), then n_steps forward passes of
 * n_seqs tokens (one per sequence, all with logits) are timed. *seconds gets
 * their wall time; tok/s = n_seqs · n_steps / seconds. n_seqs <= max_seqs. */
pio_status pio_model_bench_decode(pio_model *m, int32_t n_seqs, int32_t n_steps, int32_t depth,
                                  double *seconds, pio_error *err);

/* Bytes of weights one decode step reads: every matrix and norm of the
 * layers (of a MoE layer's experts, the top_k the token picks), the final norm
 * and the lm_head (the token embedding is a gather of one row and counts only
 * when it is the lm_head too, i.e. tied). */
size_t pio_model_decode_bytes(const pio_model *m);

/* Writes every weight, under its checkpoint name and in the model's dtype
 * (norms in f32), to one safetensors file at path. */
pio_status pio_model_save(const pio_model *m, const char *path, pio_error *err);

/* Memory read bandwidth in bytes per second: `threads` threads (<= 0: all
 * CPUs) each read their share of a `bytes`-byte buffer, best of `reps` passes.
 * 0 and err set when the buffer cannot be allocated. */
double pio_read_bandwidth(int threads, size_t bytes, int reps, pio_error *err);

#endif
