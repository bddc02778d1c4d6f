/* pio/generate.h: a generation session: prompt → KV cache → sampled tokens →
 * streamed text. The loop stays in C; Lua drives it a piece at a time. */
#ifndef PIO_GENERATE_H
#define PIO_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pio/error.h"
#include "pio/model.h"
#include "pio/sampler.h"

typedef struct pio_gen_opts {
    int32_t max_new_tokens;      /* default 128 */
    pio_sampler_params sampling; /* pio_sampler_default_params(), temperature 1 */
    const char *const *stop;     /* strings that end generation (not emitted); may be NULL */
    size_t n_stop;
    bool ignore_eos;             /* keep going past the model's stop ids */
    int32_t seq;                 /* KV-cache slot to use (default 0) */
} pio_gen_opts;

pio_gen_opts pio_gen_default_opts(void);

typedef struct pio_gen_stats {
    int32_t prompt_tokens, new_tokens;
    double prompt_seconds, gen_seconds;
    const char *stop_reason; /* "length", "eos", "stop", or NULL while running */
} pio_gen_stats;

typedef struct pio_generation pio_generation;

/* Starts a generation from prompt ids (copied). Runs nothing yet.
 * A prompt that does not fit the context is PIO_ERR_RANGE with both numbers. */
pio_generation *pio_generation_new(pio_model *m, const int32_t *prompt, size_t n_prompt,
                                   const pio_gen_opts *opts, pio_error *err);
void pio_generation_free(pio_generation *g);

/* Advances by one token (the first call processes the prompt). Sets *text to
 * the newly completed text (borrowed, may be empty) and *done when finished.
 * Returns an error status on failure; the generation is then done. */
pio_status pio_generation_step(pio_generation *g, const char **text, size_t *len, bool *done,
                               pio_error *err);

/* Generated ids so far (borrowed) and timing. */
const int32_t *pio_generation_tokens(const pio_generation *g, size_t *n);
pio_gen_stats pio_generation_stats(const pio_generation *g);

/* Monotonic seconds. */
double pio_now(void);

#endif
