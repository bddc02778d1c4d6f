/* models/generate_internal.h: pio_generation split at the forward pass, for
 * the scheduler (models/scheduler.c), which runs many generations' tokens in
 * one batch and hands each its logits row. pio_generation_step is
 * limit + (the generation's own forward) + accept. Not part of the public API. */
#ifndef PIO_GENERATE_INTERNAL_H
#define PIO_GENERATE_INTERNAL_H

#include "pio/generate.h"

/* Finishes the generation when it may not take another token: max_new_tokens
 * reached ("length") or the context full ("context"); *text then gets what
 * was held back (borrowed until the next call). Otherwise nothing happens. */
pio_status pio_generation_limit(pio_generation *g, const char **text, size_t *len, bool *done,
                                pio_error *err);

/* Samples the next token from row[n_vocab] (the logits after the last token
 * of pio_generation_all_tokens) and releases its text, as a step would
 * after its forward pass: eos and stop strings end the generation here. */
pio_status pio_generation_accept(pio_generation *g, const float *row, const char **text,
                                 size_t *len, bool *done, pio_error *err);

/* Ends the generation now (stop reason "cancelled" unless it had one). */
void pio_generation_cancel(pio_generation *g);

/* The prompt then the generated ids (borrowed; *n of them, the first *n_prompt the prompt). */
const int32_t *pio_generation_all_tokens(const pio_generation *g, size_t *n, size_t *n_prompt);

pio_model *pio_generation_model(const pio_generation *g);

#endif
