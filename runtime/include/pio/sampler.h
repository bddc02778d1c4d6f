/* pio/sampler.h: turning logits into the next token.
 *
 * A sampler is a chain of stages applied in transformers' order:
 * repetition / presence / frequency penalties over the tokens seen so far,
 * temperature, top-k, top-p, min-p, then a draw from a seeded generator
 * (or argmax when temperature is 0: greedy). The same seed and the same
 * logits give the same tokens on every machine.
 */
#ifndef PIO_SAMPLER_H
#define PIO_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "pio/error.h"

typedef struct pio_sampler_params {
    float temperature;        /* 0 = greedy; default 1 */
    int32_t top_k;            /* 0 = off */
    float top_p;              /* 1 = off */
    float min_p;              /* 0 = off */
    float repetition_penalty; /* 1 = off; transformers' rule: logit>0 ? /p : *p */
    float presence_penalty;   /* 0 = off; subtracted once per seen token */
    float frequency_penalty;  /* 0 = off; subtracted per occurrence */
    int32_t penalty_last_n;   /* how many recent tokens penalties look at; -1 = all */
    uint64_t seed;
} pio_sampler_params;

/* Defaults: temperature 1, everything else off, seed 0. */
pio_sampler_params pio_sampler_default_params(void);

typedef struct pio_sampler pio_sampler;

/* Checks the parameters (temperature ≥ 0, top_k ≥ 0, 0 < top_p ≤ 1,
 * 0 ≤ min_p ≤ 1, repetition_penalty > 0) and names the first bad one. */
pio_sampler *pio_sampler_new(const pio_sampler_params *p, int32_t n_vocab, pio_error *err);
void pio_sampler_free(pio_sampler *s);
/* Records tokens the penalties see (the prompt, then each sampled token). */
void pio_sampler_accept(pio_sampler *s, int32_t token);
/* Forgets the history and reseeds. */
void pio_sampler_reset(pio_sampler *s);
/* Picks a token from logits[n_vocab] (not modified). */
int32_t pio_sampler_sample(pio_sampler *s, const float *logits);

#endif
