/* The strategy table (pio/strategy.h): one row per strategy, each with what it
 * sets and whether the runtime can honour it. */
#include "pio/strategy.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const family_names[] = {
    [PIO_STRATEGY_ATTENTION] = "attention", [PIO_STRATEGY_KV] = "kv",
    [PIO_STRATEGY_PRECISION] = "precision", [PIO_STRATEGY_SAMPLING] = "sampling",
    [PIO_STRATEGY_OFFLOAD] = "offload",     [PIO_STRATEGY_PARALLEL] = "parallel",
};
static_assert(sizeof family_names / sizeof family_names[0] == PIO_STRATEGY_FAMILY_COUNT,
              "every strategy family needs a name");

const char *pio_strategy_family_name(pio_strategy_family f) { return family_names[f]; }

bool pio_strategy_family_from_name(const char *name, pio_strategy_family *out) {
    for (int f = 0; f < PIO_STRATEGY_FAMILY_COUNT; f++)
        if (strcmp(name, family_names[f]) == 0) {
            *out = (pio_strategy_family)f;
            return true;
        }
    return false;
}

/* ---- supports checks beyond "is the device there" ------------------------------ */

static bool on_cpu(const pio_strategy_context *c) { return c->device && !strcmp(c->device, "cpu"); }

/* precision.*: the dtype is fixed when a model loads. */
static bool precision_supports(const pio_strategy_def *d, const double *p,
                               const pio_strategy_context *c, char *why, size_t len) {
    if (c->dtype && strcmp(c->dtype, d->value) != 0) {
        snprintf(why, len, "the model is loaded in %s; precision is chosen when loading "
                 "(dtype = \"%s\")", c->dtype, d->value);
        return false;
    }
    return true;
}

static bool fp8_supports(const pio_strategy_def *d, const double *p, const pio_strategy_context *c,
                         char *why, size_t len) {
    if (on_cpu(c)) {
        snprintf(why, len, "fp8 (e4m3) KV is a GPU format; the CPU has no fp8 arithmetic");
        return false;
    }
    return true;
}

static const char *host_memory_reason =
    "on the CPU every weight already lives in host memory: offload is for a GPU too small "
    "for the model";

static bool offload_layers_supports(const pio_strategy_def *d, const double *p,
                                    const pio_strategy_context *c, char *why, size_t len) {
    if (on_cpu(c)) {
        snprintf(why, len, "%s", host_memory_reason);
        return false;
    }
    return true;
}

static bool offload_experts_supports(const pio_strategy_def *d, const double *p,
                                     const pio_strategy_context *c, char *why, size_t len) {
    if (c->architecture && c->n_expert == 0) {
        snprintf(why, len, "%s has no experts to keep in host memory", c->architecture);
        return false;
    }
    return offload_layers_supports(d, p, c, why, len);
}

static bool threads_supports(const pio_strategy_def *d, const double *p,
                             const pio_strategy_context *c, char *why, size_t len) {
    if (c->device && !on_cpu(c)) {
        snprintf(why, len, "CPU threads apply to the cpu device, not '%s'", c->device);
        return false;
    }
    if (c->threads > 0 && p[0] > 0 && (int32_t)p[0] != c->threads) {
        snprintf(why, len, "the model was loaded with %d threads; threads are chosen when loading",
                 c->threads);
        return false;
    }
    return true;
}

static bool tensor_parallel_supports(const pio_strategy_def *d, const double *p,
                                     const pio_strategy_context *c, char *why, size_t len) {
    if (on_cpu(c)) {
        snprintf(why, len, "tensor parallelism splits a model across GPUs; on the CPU use "
                 "parallel.threads");
        return false;
    }
    if (c->device_count > 0 && c->device_count < (int32_t)p[0]) {
        snprintf(why, len, "it needs %d GPUs and there are %d", (int)p[0], c->device_count);
        return false;
    }
    return true;
}

/* int8 KV and windowed attention (models/kv.c) run on the CPU; the paged cache
 * and prefix caching run on the CPU and on CUDA. */
static bool cpu_kv_supports(const pio_strategy_def *d, const double *p,
                            const pio_strategy_context *c, char *why, size_t len) {
    if (c->device && !on_cpu(c)) {
        snprintf(why, len, "%s.%s runs on the CPU only for now (the model is on '%s')",
                 family_names[d->family], d->name, c->device);
        return false;
    }
    return true;
}

/* ---- the table ------------------------------------------------------------------ */

#define INT_PARAM(n, d, lo, hi, opt, doc) {n, true, d, lo, hi, opt, doc}
#define NUM_PARAM(n, d, lo, hi, opt, doc) {n, false, d, lo, hi, opt, doc}
#define BIG 1e9

static const pio_strategy_def table[] = {
    /* attention */
    {PIO_STRATEGY_ATTENTION, "full",
     "exact causal attention over the whole context, GQA/MQA natively (chunked online "
     "softmax on the CPU)", .applies = PIO_APPLIES_NOWHERE},
    {PIO_STRATEGY_ATTENTION, "sliding", "attention over the last `window` positions only",
     {INT_PARAM("window", 4096, 1, BIG, NULL, "positions each token attends to")}, 1,
     .supports = cpu_kv_supports},
    {PIO_STRATEGY_ATTENTION, "sink",
     "the first `sink` positions plus the last `window`, for unbounded generation (with the "
     "paged cache, positions run past ctx; RoPE positions keep growing)",
     {INT_PARAM("sink", 4, 0, BIG, NULL, "attention-sink positions kept from the start"),
      INT_PARAM("window", 1024, 1, BIG, NULL, "most recent positions kept")}, 2,
     .supports = cpu_kv_supports},

    /* kv */
    {PIO_STRATEGY_KV, "contiguous",
     "one [slots, ctx, kv_heads, head_dim] cache per layer in the model's dtype (bf16; f32 "
     "in the reference mode)", .applies = PIO_APPLIES_NOWHERE},
    {PIO_STRATEGY_KV, "paged", "fixed-size blocks from one pool, a block table per sequence",
     {INT_PARAM("block", 16, 1, 4096, NULL, "tokens per block")}, .n_params = 1},
    {PIO_STRATEGY_KV, "prefix",
     "reuse the KV blocks of a cached prompt prefix (on the paged cache: implies kv.paged)",
     .n_params = 0},
    {PIO_STRATEGY_KV, "int8", "int8 keys and values with a scale per token and head",
     .supports = cpu_kv_supports},
    {PIO_STRATEGY_KV, "fp8", "fp8 (e4m3) keys and values, on the GPU",
     .not_yet = "fp8 KV-cache compression is not implemented yet", .supports = fp8_supports},

    /* precision: the weights' dtype, fixed when loading */
    {PIO_STRATEGY_PRECISION, "f32", "everything in f32: the reference mode", .n_params = 0,
     .applies = PIO_APPLIES_LOAD, .option = "dtype", .value = "f32",
     .supports = precision_supports},
    {PIO_STRATEGY_PRECISION, "bf16",
     "bf16 weights (memory-mapped when the checkpoint is bf16), f32 accumulation, rounding "
     "where transformers rounds", .applies = PIO_APPLIES_LOAD, .option = "dtype",
     .value = "bf16", .supports = precision_supports},

    /* sampling: generation options, per call */
    {PIO_STRATEGY_SAMPLING, "greedy", "always the most likely token (temperature 0)",
     .applies = PIO_APPLIES_GENERATE, .option = "temperature", .value = "0"},
    {PIO_STRATEGY_SAMPLING, "temperature", "divide the logits by a temperature",
     {NUM_PARAM("value", 1, 0, 100, "temperature", "0 is greedy")}, 1,
     .applies = PIO_APPLIES_GENERATE},
    {PIO_STRATEGY_SAMPLING, "top_k", "keep the k most likely tokens",
     {INT_PARAM("k", 20, 0, BIG, "top_k", "0 is off")}, 1, .applies = PIO_APPLIES_GENERATE},
    {PIO_STRATEGY_SAMPLING, "top_p", "keep the smallest set of tokens with probability >= p",
     {NUM_PARAM("p", 0.8, 1e-6, 1, "top_p", "1 is off")}, 1, .applies = PIO_APPLIES_GENERATE},
    {PIO_STRATEGY_SAMPLING, "min_p", "drop tokens less likely than p times the best",
     {NUM_PARAM("p", 0.05, 0, 1, "min_p", "0 is off")}, 1, .applies = PIO_APPLIES_GENERATE},
    {PIO_STRATEGY_SAMPLING, "repetition_penalty",
     "penalize tokens seen in the last `last_n` (transformers' rule)",
     {NUM_PARAM("penalty", 1.1, 1e-6, 100, "repetition_penalty", "1 is off"),
      INT_PARAM("last_n", -1, -1, BIG, "penalty_last_n", "-1: every token seen")}, 2,
     .applies = PIO_APPLIES_GENERATE},
    {PIO_STRATEGY_SAMPLING, "presence_penalty", "subtract a penalty once per seen token",
     {NUM_PARAM("penalty", 0.5, -100, 100, "presence_penalty", "0 is off")}, 1,
     .applies = PIO_APPLIES_GENERATE},
    {PIO_STRATEGY_SAMPLING, "frequency_penalty", "subtract a penalty per occurrence",
     {NUM_PARAM("penalty", 0.5, -100, 100, "frequency_penalty", "0 is off")}, 1,
     .applies = PIO_APPLIES_GENERATE},
    {PIO_STRATEGY_SAMPLING, "chain", "sampling steps applied together, in the sampler's order",
     .applies = PIO_APPLIES_GENERATE, .composite = true},

    /* offload */
    {PIO_STRATEGY_OFFLOAD, "layers", "keep some decoder layers in host memory, stream them in",
     {INT_PARAM("n", 0, 0, BIG, NULL, "layers kept in host memory; 0: as many as needed")}, 1,
     .not_yet = "offloading layers to host memory is not implemented yet",
     .supports = offload_layers_supports},
    {PIO_STRATEGY_OFFLOAD, "experts", "keep MoE experts in host memory, compute them there",
     .not_yet = "offloading experts to host memory is not implemented yet",
     .supports = offload_experts_supports},

    /* parallel */
    {PIO_STRATEGY_PARALLEL, "threads", "CPU threads splitting each matmul's output columns",
     {INT_PARAM("n", 0, 0, 4096, "threads", "0: every online CPU")}, 1,
     .applies = PIO_APPLIES_LOAD, .supports = threads_supports},
    {PIO_STRATEGY_PARALLEL, "tensor", "attention heads and MLP columns split across GPUs (NCCL)",
     {INT_PARAM("size", 2, 2, 64, NULL, "GPUs")}, 1,
     .not_yet = "tensor parallelism is not implemented yet",
     .supports = tensor_parallel_supports},
};

int pio_strategy_count(void) { return (int)(sizeof table / sizeof table[0]); }

const pio_strategy_def *pio_strategy_at(int i) {
    return i >= 0 && i < pio_strategy_count() ? &table[i] : NULL;
}

const pio_strategy_def *pio_strategy_find(pio_strategy_family f, const char *name) {
    for (int i = 0; i < pio_strategy_count(); i++)
        if (table[i].family == f && strcmp(table[i].name, name) == 0) return &table[i];
    return NULL;
}

int pio_strategy_param_index(const pio_strategy_def *d, const char *name) {
    for (int i = 0; i < d->n_params; i++)
        if (strcmp(d->params[i].name, name) == 0) return i;
    return -1;
}

pio_status pio_strategy_check(const pio_strategy_def *d, const double *values, pio_error *err) {
    for (int i = 0; i < d->n_params; i++) {
        const pio_strategy_param *p = &d->params[i];
        double v = values[i];
        bool ok = v >= p->min && v <= p->max && (!p->integer || v == floor(v));
        if (!ok)
            return pio_error_set(err, PIO_ERR_INVALID, "%s.%s: %s must be %s in [%g, %g], got %g",
                                 family_names[d->family], d->name, p->name,
                                 p->integer ? "an integer" : "a number", p->min, p->max, v);
    }
    return PIO_OK;
}

bool pio_strategy_supports(const pio_strategy_def *d, const double *values,
                           const pio_strategy_context *c, char *why, size_t len) {
    if (c->device && !c->device_available) {
        snprintf(why, len, "device '%s' is not available: %s", c->device,
                 c->device_reason ? c->device_reason : "unknown reason");
        return false;
    }
    if (d->supports && !d->supports(d, values, c, why, len)) return false;
    if (d->not_yet) {
        snprintf(why, len, "%s", d->not_yet);
        return false;
    }
    return true;
}
