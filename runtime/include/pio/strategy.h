/* pio/strategy.h: the strategies the runtime knows, in families.
 *
 * A strategy is a named, parameterised choice inside a family (how attention
 * is computed, how the KV cache is laid out, the compute precision, a sampling
 * step, offload, parallelism). This table is the runtime's own account of what
 * it can honour: each row says, for a model and a device, whether it is
 * supported and, when not, why. A strategy the runtime cannot honour yet is
 * listed with the reason, never faked: adding an implementation turns its row
 * from "not yet" into a `supports` check. Lua (lua/pio/strategy.lua) picks and
 * composes them.
 *
 * A strategy takes effect through options the runtime already has: load
 * options (precision → dtype, parallel.threads → threads) or generation
 * options (sampling.top_k → top_k, ...). The rest (attention.full,
 * kv.contiguous) name what the runtime does anyway.
 */
#ifndef PIO_STRATEGY_H
#define PIO_STRATEGY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pio/error.h"

typedef enum pio_strategy_family {
    PIO_STRATEGY_ATTENTION,
    PIO_STRATEGY_KV,
    PIO_STRATEGY_PRECISION,
    PIO_STRATEGY_SAMPLING,
    PIO_STRATEGY_OFFLOAD,
    PIO_STRATEGY_PARALLEL,
    PIO_STRATEGY_FAMILY_COUNT
} pio_strategy_family;

/* "attention", "kv", ...; false from _from_name when unknown. */
const char *pio_strategy_family_name(pio_strategy_family f);
bool pio_strategy_family_from_name(const char *name, pio_strategy_family *out);

/* Where a strategy's parameters go when it is applied. */
typedef enum pio_strategy_target_kind {
    PIO_APPLIES_NOWHERE,  /* it names what the runtime does (attention.full) */
    PIO_APPLIES_LOAD,     /* load options: fixed when the model is loaded */
    PIO_APPLIES_GENERATE, /* generation options: per call */
} pio_strategy_applies;

#define PIO_STRATEGY_MAX_PARAMS 4

typedef struct pio_strategy_param {
    const char *name;   /* "block" */
    bool integer;       /* else any number */
    double def, min, max;
    const char *option; /* the load/generate option it sets, or NULL */
    const char *doc;
} pio_strategy_param;

/* What `supports` looks at: facts about a model and a device. Strings may be
 * NULL (unknown); numbers 0 when unknown. */
typedef struct pio_strategy_context {
    const char *architecture; /* "Qwen3ForCausalLM" */
    const char *dtype;        /* the loaded model's dtype ("f32", "bf16"); NULL before loading */
    int32_t threads;          /* the loaded model's threads; 0 before loading */
    int32_t n_layer, n_head, n_head_kv, n_expert;
    const char *device;       /* "cpu", "cuda" */
    bool device_available;
    const char *device_reason; /* why it is not available */
    int32_t device_count;     /* GPUs of the kind, 1 for the CPU */
} pio_strategy_context;

typedef struct pio_strategy_def pio_strategy_def;
struct pio_strategy_def {
    pio_strategy_family family;
    const char *name;
    const char *summary;
    pio_strategy_param params[PIO_STRATEGY_MAX_PARAMS];
    int n_params;
    pio_strategy_applies applies;
    const char *option, *value; /* a constant option it sets (precision: dtype = "bf16") */
    bool composite;             /* made of other strategies of its family (sampling.chain) */
    /* Why the runtime cannot honour it on any model or device yet; NULL once implemented. */
    const char *not_yet;
    /* NULL: supported on every available device. Else false with a reason in why. */
    bool (*supports)(const pio_strategy_def *d, const double *params,
                     const pio_strategy_context *c, char *why, size_t len);
};

/* The table: index 0 .. pio_strategy_count() - 1. */
int pio_strategy_count(void);
const pio_strategy_def *pio_strategy_at(int i);
const pio_strategy_def *pio_strategy_find(pio_strategy_family f, const char *name);

/* Index of a parameter by name, -1 if the strategy has none of that name. */
int pio_strategy_param_index(const pio_strategy_def *d, const char *name);

/* Checks values[d->n_params] against the parameters' kinds and ranges; a bad
 * one is PIO_ERR_INVALID naming it ("kv.paged: block must be an integer in
 * [1, 4096], got 0"). */
pio_status pio_strategy_check(const pio_strategy_def *d, const double *values, pio_error *err);

/* Whether the runtime honours d with these parameters for this model and
 * device; false fills why. */
bool pio_strategy_supports(const pio_strategy_def *d, const double *values,
                           const pio_strategy_context *c, char *why, size_t len);

#endif
