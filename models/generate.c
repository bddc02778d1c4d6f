/* A generation session: the prompt runs through the model in chunks, then one
 * token at a time is sampled, fed back, and turned into text that never
 * splits a UTF-8 character and never shows a stop string. */
#define _GNU_SOURCE
#include "pio/generate.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "generate_internal.h"
#include "kv_internal.h"
#include "model_internal.h"

enum { PROMPT_CHUNK = PIO_PROMPT_CHUNK }; /* bounds activation memory for long prompts */

double pio_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

pio_gen_opts pio_gen_default_opts(void) {
    return (pio_gen_opts){.max_new_tokens = 128, .sampling = pio_sampler_default_params()};
}

struct pio_generation {
    pio_model *model;
    pio_gen_opts opts;
    char **stop;             /* owned copies of opts.stop */
    int32_t *tokens;         /* prompt then generated: [n_prompt + max_new_tokens] */
    size_t n_prompt, n_tokens;
    int32_t pos;             /* next KV position */
    pio_sampler *sampler;
    pio_detok *detok;
    char *pending;           /* decoded text held back while it may start a stop string */
    size_t pending_len, pending_cap;
    char *out;               /* what the last step hands out */
    size_t out_cap;
    pio_gen_stats stats;
    bool done;
};

pio_generation *pio_generation_new(pio_model *m, const int32_t *prompt, size_t n_prompt,
                                   const pio_gen_opts *opts_in, pio_error *err) {
    pio_gen_opts opts = opts_in ? *opts_in : pio_gen_default_opts();
    if (n_prompt == 0) {
        pio_error_set(err, PIO_ERR_INVALID, "the prompt is empty");
        return NULL;
    }
    if (opts.max_new_tokens < 0) {
        pio_error_set(err, PIO_ERR_INVALID, "max_new_tokens must be >= 0, got %d",
                      opts.max_new_tokens);
        return NULL;
    }
    if (n_prompt > (size_t)m->n_ctx) {
        pio_error_set(err, PIO_ERR_RANGE,
                      "the prompt has %zu tokens but the context holds %d (load with a larger "
                      "ctx, up to %d)", n_prompt, m->n_ctx, m->hp.n_ctx_train);
        return NULL;
    }
    for (size_t i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= m->hp.n_vocab) {
            pio_error_set(err, PIO_ERR_RANGE,
                          "token id %d at prompt index %zu is outside the vocabulary [0, %d)",
                          prompt[i], i, m->hp.n_vocab);
            return NULL;
        }
    if (opts.seq < 0 || opts.seq >= m->max_seqs) {
        pio_error_set(err, PIO_ERR_RANGE, "sequence slot %d is outside [0, %d)", opts.seq,
                      m->max_seqs);
        return NULL;
    }
    pio_generation *g = calloc(1, sizeof *g);
    if (!g) goto oom;
    g->model = m;
    g->opts = opts;
    g->tokens = malloc((n_prompt + (size_t)opts.max_new_tokens + 1) * sizeof *g->tokens);
    if (!g->tokens) goto oom;
    memcpy(g->tokens, prompt, n_prompt * sizeof *prompt);
    g->n_prompt = g->n_tokens = n_prompt;
    if (opts.n_stop) {
        g->stop = calloc(opts.n_stop, sizeof *g->stop);
        if (!g->stop) goto oom;
        for (size_t i = 0; i < opts.n_stop; i++)
            if (!(g->stop[i] = strdup(opts.stop[i]))) goto oom;
    }
    /* Embedding rows past the tokenizer's vocabulary are padding (Qwen3: 151669..151935):
     * never sample them, since they have no text. */
    int32_t n_sample = m->hp.n_vocab;
    if (m->tokenizer && pio_tokenizer_n_vocab(m->tokenizer) < n_sample)
        n_sample = pio_tokenizer_n_vocab(m->tokenizer);
    g->sampler = pio_sampler_new(&opts.sampling, n_sample, err);
    if (!g->sampler) goto fail;
    for (size_t i = 0; i < n_prompt; i++) pio_sampler_accept(g->sampler, prompt[i]);
    if (m->tokenizer && !(g->detok = pio_detok_new(m->tokenizer, true, err))) goto fail;
    g->stats.prompt_tokens = (int32_t)n_prompt;
    return g;
oom:
    pio_error_set(err, PIO_ERR_OOM, "out of memory starting a generation");
fail:
    pio_generation_free(g);
    return NULL;
}

void pio_generation_free(pio_generation *g) {
    if (!g) return;
    for (size_t i = 0; g->stop && i < g->opts.n_stop; i++) free(g->stop[i]);
    free(g->stop);
    free(g->tokens);
    pio_sampler_free(g->sampler);
    pio_detok_free(g->detok);
    free(g->pending);
    free(g->out);
    free(g);
}

static bool grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    char *p = realloc(*buf, c);
    if (!p) return false;
    *buf = p;
    *cap = c;
    return true;
}

/* Runs the prompt (first step) or the last sampled token; returns its logits row. */
static pio_status advance(pio_generation *g, const float **row, pio_error *err) {
    pio_model *m = g->model;
    size_t begin = g->pos, end = g->n_tokens;
    const bool prompt = begin == 0, prefix = m->kv->cfg.prefix_cache;
    if (prompt && prefix) { /* a fresh sequence: start from the longest cached prefix */
        pio_model_seq_free(m, g->opts.seq);
        begin = (size_t)pio_model_seq_reuse_prefix(m, g->opts.seq, g->tokens, (int32_t)end);
    }
    while (begin < end) {
        int32_t n = (int32_t)(end - begin < PROMPT_CHUNK ? end - begin : PROMPT_CHUNK);
        int32_t pos[PROMPT_CHUNK], seq[PROMPT_CHUNK];
        bool want[PROMPT_CHUNK];
        for (int32_t i = 0; i < n; i++) {
            pos[i] = (int32_t)begin + i;
            seq[i] = g->opts.seq;
            want[i] = begin + (size_t)i == end - 1;
        }
        pio_batch b = {n, g->tokens + begin, pos, seq, want};
        const pio_tensor *logits;
        pio_status st = pio_model_forward(m, &b, &logits, err);
        if (st) return st;
        begin += (size_t)n;
        if (begin == end) *row = pio_tensor_data(logits);
    }
    if (prompt && prefix) pio_model_seq_register_prefix(m, g->opts.seq, g->tokens, (int32_t)end);
    g->pos = (int32_t)end;
    return PIO_OK;
}

/* Moves text from pending to out, keeping back a tail that may begin a stop
 * string; a complete stop string ends the generation there. */
static pio_status release_text(pio_generation *g, bool final, size_t *len, pio_error *err) {
    size_t emit = g->pending_len;
    for (size_t s = 0; s < g->opts.n_stop; s++) {
        const char *hit = memmem(g->pending, g->pending_len, g->stop[s], strlen(g->stop[s]));
        if (hit && (size_t)(hit - g->pending) <= emit) {
            emit = (size_t)(hit - g->pending);
            g->done = true;
            g->stats.stop_reason = "stop";
        }
    }
    if (!g->done && !final) {
        for (size_t s = 0; s < g->opts.n_stop; s++) {
            size_t sl = strlen(g->stop[s]);
            for (size_t k = sl - 1; k > 0; k--) /* longest suffix that is a stop prefix */
                if (k <= g->pending_len &&
                    memcmp(g->pending + g->pending_len - k, g->stop[s], k) == 0) {
                    if (g->pending_len - k < emit) emit = g->pending_len - k;
                    break;
                }
        }
    }
    if (!grow(&g->out, &g->out_cap, emit + 1))
        return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    memcpy(g->out, g->pending, emit);
    g->out[emit] = '\0';
    *len = emit;
    size_t keep = g->done ? 0 : g->pending_len - emit;
    memmove(g->pending, g->pending + emit, keep);
    g->pending_len = keep;
    return PIO_OK;
}

static pio_status append_pending(pio_generation *g, const char *s, size_t n, pio_error *err) {
    if (!grow(&g->pending, &g->pending_cap, g->pending_len + n + 1))
        return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    memcpy(g->pending + g->pending_len, s, n);
    g->pending_len += n;
    return PIO_OK;
}

static bool is_stop_id(const pio_model *m, int32_t id) {
    for (int i = 0; i < m->hp.n_stop_ids; i++)
        if (m->hp.stop_ids[i] == id) return true;
    return false;
}

static pio_status finish(pio_generation *g, const char *reason, size_t *len, pio_error *err) {
    g->done = true;
    if (!g->stats.stop_reason) g->stats.stop_reason = reason;
    if (g->detok) {
        size_t n;
        const char *rest = pio_detok_flush(g->detok, &n);
        pio_status st = append_pending(g, rest, n, err);
        if (st) return st;
    }
    return release_text(g, true, len, err);
}

/* Every entry point's error path: the generation is then done. */
static pio_status failed(pio_generation *g, pio_status st) {
    g->done = true;
    g->stats.stop_reason = "error";
    return st;
}

pio_status pio_generation_limit(pio_generation *g, const char **text, size_t *len, bool *done,
                                pio_error *err) {
    *text = "";
    *len = 0;
    *done = g->done;
    if (g->done) return PIO_OK;
    pio_status st = PIO_OK;
    if (g->n_tokens - g->n_prompt >= (size_t)g->opts.max_new_tokens)
        st = finish(g, "length", len, err);
    else if (g->n_tokens >= (size_t)pio_kv_max_pos(g->model)) /* windowed paged: unbounded */
        st = finish(g, "context", len, err);
    if (st != PIO_OK) return failed(g, st);
    *text = g->out && *len ? g->out : "";
    *done = g->done;
    return PIO_OK;
}

pio_status pio_generation_accept(pio_generation *g, const float *row, const char **text,
                                 size_t *len, bool *done, pio_error *err) {
    *text = "";
    *len = 0;
    *done = g->done;
    if (g->done) return PIO_OK;
    pio_status st = PIO_OK;
    int32_t id = pio_sampler_sample(g->sampler, row);
    if (!g->opts.ignore_eos && is_stop_id(g->model, id)) {
        st = finish(g, "eos", len, err);
    } else {
        pio_sampler_accept(g->sampler, id);
        g->tokens[g->n_tokens++] = id;
        g->stats.new_tokens++;
        if (g->detok) {
            size_t n;
            const char *piece = pio_detok_push(g->detok, id, &n, err);
            st = piece ? append_pending(g, piece, n, err) : err->status;
        }
        if (st == PIO_OK) st = release_text(g, false, len, err);
    }
    if (st != PIO_OK) return failed(g, st);
    *text = g->out ? g->out : "";
    *done = g->done;
    return PIO_OK;
}

void pio_generation_cancel(pio_generation *g) {
    g->done = true;
    if (!g->stats.stop_reason) g->stats.stop_reason = "cancelled";
}

pio_status pio_generation_step(pio_generation *g, const char **text, size_t *len, bool *done,
                               pio_error *err) {
    pio_status st = pio_generation_limit(g, text, len, done, err);
    if (st != PIO_OK || *done) return st;
    bool first = g->n_tokens == g->n_prompt;
    double t0 = pio_now();
    const float *row = NULL;
    st = advance(g, &row, err);
    if (st != PIO_OK) return failed(g, st);
    st = pio_generation_accept(g, row, text, len, done, err);
    double dt = pio_now() - t0;
    if (first) g->stats.prompt_seconds += dt;
    else g->stats.gen_seconds += dt;
    return st;
}

const int32_t *pio_generation_tokens(const pio_generation *g, size_t *n) {
    *n = g->n_tokens - g->n_prompt;
    return g->tokens + g->n_prompt;
}

pio_gen_stats pio_generation_stats(const pio_generation *g) { return g->stats; }

const int32_t *pio_generation_all_tokens(const pio_generation *g, size_t *n, size_t *n_prompt) {
    *n = g->n_tokens;
    *n_prompt = g->n_prompt;
    return g->tokens;
}

pio_model *pio_generation_model(const pio_generation *g) { return g->model; }
