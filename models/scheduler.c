/* Continuous batching (pio/scheduler.h): one batch per step from every
 * running sequence, admission between steps, preemption by recompute or by
 * swapping the KV to host memory. */
#include "pio/scheduler.h"

#include <stdlib.h>
#include <string.h>

#include "generate_internal.h"
#include "model_internal.h"
#include "pio/kv.h"

typedef struct seq {
    int32_t id;
    pio_generation *g;
    pio_seq_status status;
    int32_t slot;         /* -1 when it holds none */
    int32_t computed;     /* its tokens [0, computed) are in the slot's KV */
    int64_t admitted;     /* admission stamp: the largest is the newest (the victim) */
    bool registered;      /* its prefix went to the prefix cache since admission */
    bool decoding;        /* its KV holds all but its last sampled token */
    pio_kv_swap *swap;    /* preempted by swap: its KV in host memory */
    const char *reason;   /* stop reason once done */
    char *error;          /* message when reason is "error" */
    char *text;           /* everything streamed */
    size_t len, cap;
    int32_t reused, preemptions;
    double submitted, first_token, finished;
} seq;

/* One sequence's share of a batch. */
typedef struct plan {
    seq *q;
    int32_t n;            /* tokens from q->computed on */
    bool wants_logits;    /* the last of them is the sequence's last token */
} plan;

struct pio_scheduler {
    pio_model *m;
    int32_t max_batch, max_tokens;
    pio_preempt_mode preempt;
    seq **seqs;           /* by id; NULL once released */
    size_t n_seqs, cap_seqs, first_live; /* ids below first_live are done or released */
    int32_t *slot_owner;  /* [max_seqs]: id, or -1 when free */
    int64_t clock;
    int32_t *tok, *pos, *bseq; /* the batch, [max_tokens] */
    bool *want;
    plan *plans;          /* [max_batch] */
    int32_t n_plans;
    seq **order;          /* [max_batch]: running sequences by age, while planning */
    pio_sched_event *events;
    size_t *event_off;    /* where each event's text starts in its sequence's text */
    size_t n_events, cap_events;
    pio_sched_stats stats;
};

const char *pio_seq_status_name(pio_seq_status s) {
    static const char *const names[] = {"queued", "running", "preempted", "done"};
    return (unsigned)s < 4 ? names[s] : "?";
}

pio_scheduler *pio_scheduler_new(pio_model *m, const pio_sched_opts *opts, pio_error *err) {
    pio_sched_opts o = opts ? *opts : (pio_sched_opts){0};
    if (o.preempt != PIO_PREEMPT_RECOMPUTE && o.preempt != PIO_PREEMPT_SWAP) {
        pio_error_set(err, PIO_ERR_INVALID, "unknown preemption mode %d (recompute 0, swap 1)",
                      (int)o.preempt);
        return NULL;
    }
    if (o.max_batch < 0 || o.max_tokens < 0) {
        pio_error_set(err, PIO_ERR_INVALID, "max_batch and max_tokens must be >= 1, got %d and %d",
                      o.max_batch, o.max_tokens);
        return NULL;
    }
    if (o.max_batch > m->max_seqs) {
        pio_error_set(err, PIO_ERR_INVALID,
                      "max_batch %d exceeds the model's %d sequence slots (load it with "
                      "max_seqs = %d)", o.max_batch, m->max_seqs, o.max_batch);
        return NULL;
    }
    pio_scheduler *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->m = m;
    s->max_batch = o.max_batch ? o.max_batch : m->max_seqs;
    s->max_tokens = o.max_tokens ? o.max_tokens : PIO_PROMPT_CHUNK;
    s->preempt = o.preempt;
    size_t T = (size_t)s->max_tokens, B = (size_t)s->max_batch;
    s->slot_owner = malloc((size_t)m->max_seqs * sizeof *s->slot_owner);
    s->tok = malloc(T * sizeof *s->tok);
    s->pos = malloc(T * sizeof *s->pos);
    s->bseq = malloc(T * sizeof *s->bseq);
    s->want = malloc(T * sizeof *s->want);
    s->plans = malloc(B * sizeof *s->plans);
    s->order = malloc(B * sizeof *s->order);
    if (!s->slot_owner || !s->tok || !s->pos || !s->bseq || !s->want || !s->plans || !s->order)
        goto oom;
    for (int32_t i = 0; i < m->max_seqs; i++) s->slot_owner[i] = -1;
    return s;
oom:
    pio_scheduler_free(s);
    pio_error_set(err, PIO_ERR_OOM, "out of memory for a scheduler");
    return NULL;
}

/* Lets go of a swapped-out copy (resumed, finished, or given up). */
static void drop_swap(pio_scheduler *s, seq *q) {
    if (!q->swap) return;
    s->stats.swap_held_bytes -= (int64_t)pio_kv_swap_bytes(q->swap);
    pio_kv_swap_free(q->swap);
    q->swap = NULL;
}

static void free_seq(seq *q) {
    if (!q) return;
    pio_kv_swap_free(q->swap);
    pio_generation_free(q->g);
    free(q->error);
    free(q->text);
    free(q);
}

/* Gives the sequence's slot back, with its KV (full blocks stay in the prefix cache). */
static void drop_slot(pio_scheduler *s, seq *q) {
    if (q->slot < 0) return;
    if (s->m) pio_model_seq_free(s->m, q->slot);
    s->slot_owner[q->slot] = -1;
    q->slot = -1;
    q->computed = 0;
}

void pio_scheduler_forget_model(pio_scheduler *s) { s->m = NULL; }

void pio_scheduler_free(pio_scheduler *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n_seqs; i++) {
        if (s->seqs[i]) drop_slot(s, s->seqs[i]);
        free_seq(s->seqs[i]);
    }
    free(s->seqs);
    free(s->slot_owner);
    free(s->tok);
    free(s->pos);
    free(s->bseq);
    free(s->want);
    free(s->plans);
    free(s->order);
    free(s->events);
    free(s->event_off);
    free(s);
}

int32_t pio_scheduler_submit(pio_scheduler *s, pio_generation *g, pio_error *err) {
    if (pio_generation_model(g) != s->m) {
        pio_generation_free(g);
        pio_error_set(err, PIO_ERR_INVALID, "the generation belongs to another model");
        return -1;
    }
    if (s->n_seqs == s->cap_seqs) {
        size_t cap = s->cap_seqs ? 2 * s->cap_seqs : 16;
        seq **grown = realloc(s->seqs, cap * sizeof *grown);
        if (!grown) goto oom;
        s->seqs = grown;
        s->cap_seqs = cap;
    }
    seq *q = calloc(1, sizeof *q);
    if (!q) goto oom;
    *q = (seq){.id = (int32_t)s->n_seqs, .g = g, .status = PIO_SEQ_QUEUED, .slot = -1,
               .submitted = pio_now()};
    s->seqs[s->n_seqs++] = q;
    return q->id;
oom:
    pio_generation_free(g);
    pio_error_set(err, PIO_ERR_OOM, "out of memory queueing a sequence");
    return -1;
}

static seq *find(const pio_scheduler *s, int32_t id) {
    return id >= 0 && (size_t)id < s->n_seqs ? s->seqs[id] : NULL;
}

static bool append_text(seq *q, const char *text, size_t len) {
    if (q->len + len + 1 > q->cap) {
        size_t cap = q->cap ? q->cap : 64;
        while (cap < q->len + len + 1) cap *= 2;
        char *grown = realloc(q->text, cap);
        if (!grown) return false;
        q->text = grown;
        q->cap = cap;
    }
    memcpy(q->text + q->len, text, len);
    q->len += len;
    q->text[q->len] = '\0';
    return true;
}

static void finish_seq(pio_scheduler *s, seq *q, const char *reason) {
    drop_slot(s, q);
    drop_swap(s, q);
    q->status = PIO_SEQ_DONE;
    q->reason = reason;
    q->finished = pio_now();
}

/* This step's event for q (one per sequence per step); NULL when out of memory. */
static pio_sched_event *event_for(pio_scheduler *s, seq *q) {
    for (size_t i = 0; i < s->n_events; i++)
        if (s->events[i].id == q->id) return &s->events[i];
    if (s->n_events == s->cap_events) {
        size_t cap = s->cap_events ? 2 * s->cap_events : 16;
        pio_sched_event *e = realloc(s->events, cap * sizeof *e);
        if (e) s->events = e;
        size_t *off = realloc(s->event_off, cap * sizeof *off);
        if (off) s->event_off = off;
        if (!e || !off) return NULL;
        s->cap_events = cap;
    }
    pio_sched_event *e = &s->events[s->n_events];
    s->event_off[s->n_events++] = q->len;
    *e = (pio_sched_event){.id = q->id, .token = -1};
    return e;
}

/* Adds what the generation released to q's text and this step's event; a
 * finished generation finishes the sequence. */
static pio_status took(pio_scheduler *s, seq *q, pio_status st, const char *text, size_t len,
                       bool done, pio_error *err) {
    pio_sched_event none = {0}, *e = event_for(s, q);
    if (!e) e = &none; /* no memory to report it: the sequence still finishes right */
    if (st == PIO_OK && !append_text(q, text, len))
        st = pio_error_set(err, PIO_ERR_OOM, "out of memory for streamed text");
    if (st != PIO_OK) {
        free(q->error);
        q->error = strdup(err->msg);
        e->done = "error";
        finish_seq(s, q, "error");
        return PIO_OK; /* the sequence failed, not the step */
    }
    if (done) {
        e->done = pio_generation_stats(q->g).stop_reason;
        finish_seq(s, q, e->done);
    }
    return PIO_OK;
}

/* Finishes q before running it when it may take no more tokens (max_new_tokens, context). */
static bool at_limit(pio_scheduler *s, seq *q, pio_error *err) {
    const char *text;
    size_t len;
    bool done;
    pio_status st = pio_generation_limit(q->g, &text, &len, &done, err);
    if (st == PIO_OK && !done) return false;
    took(s, q, st, text, len, done, err);
    return true;
}

static int32_t count_running(const pio_scheduler *s) {
    int32_t n = 0;
    for (size_t i = s->first_live; i < s->n_seqs; i++)
        n += s->seqs[i] && s->seqs[i]->status == PIO_SEQ_RUNNING;
    return n;
}

/* Whether the pool could give an empty slot room for n positions now. */
static bool room_for(const pio_scheduler *s, int32_t slot, int32_t n) {
    pio_kv_stats ks;
    if (pio_model_kv_stats(s->m, &ks) != PIO_OK) return true;
    int32_t need = pio_model_seq_blocks_needed(s->m, slot, n);
    return need <= ks.blocks_free + ks.blocks_cached;
}

/* Admits waiting sequences in submission order while slots and KV room last;
 * one that does not fit stops admission (first come, first served), unless
 * nothing runs (then it gets the whole pool and its prompt runs in chunks). */
static void admit(pio_scheduler *s, pio_error *err) {
    int32_t running = count_running(s);
    for (size_t i = s->first_live; i < s->n_seqs && running < s->max_batch; i++) {
        seq *q = s->seqs[i];
        if (!q || (q->status != PIO_SEQ_QUEUED && q->status != PIO_SEQ_PREEMPTED)) continue;
        if (at_limit(s, q, err)) continue;
        int32_t slot = 0;
        while (slot < s->m->max_seqs && s->slot_owner[slot] >= 0) slot++;
        if (slot == s->m->max_seqs) return;
        pio_model_seq_free(s->m, slot); /* whatever another user left there */
        size_t n, n_prompt;
        const int32_t *tokens = pio_generation_all_tokens(q->g, &n, &n_prompt);
        if (running > 0 && !room_for(s, slot, (int32_t)n + 1)) return;
        if (q->swap) { /* its KV back from host memory, or (no room even alone) recompute */
            double t0 = pio_now();
            pio_status st = pio_model_seq_swap_in(s->m, slot, q->swap, err);
            s->stats.swap_seconds += pio_now() - t0;
            if (st == PIO_ERR_OOM && running > 0) return; /* wait for room, first come first */
            if (st == PIO_OK) {
                q->computed = pio_kv_swap_length(q->swap);
                s->stats.swaps_in++;
                s->stats.swapped_in_bytes += (int64_t)pio_kv_swap_bytes(q->swap);
            } else {
                q->decoding = false; /* recompute it all */
            }
            drop_swap(s, q);
            q->slot = slot;
            s->slot_owner[slot] = q->id;
            q->status = PIO_SEQ_RUNNING;
            q->admitted = ++s->clock;
            if (st != PIO_OK) {
                q->registered = false;
                q->computed = pio_model_seq_reuse_prefix(s->m, slot, tokens, (int32_t)n);
                q->reused += q->computed;
                s->stats.reused_tokens += q->computed;
            }
            running++;
            continue;
        }
        q->slot = slot;
        s->slot_owner[slot] = q->id;
        q->status = PIO_SEQ_RUNNING;
        q->admitted = ++s->clock;
        q->registered = false;
        q->computed = pio_model_seq_reuse_prefix(s->m, slot, tokens, (int32_t)n);
        q->reused += q->computed;
        s->stats.reused_tokens += q->computed;
        running++;
    }
}

/* Preemption: the sequence gives its slot back and keeps its tokens. By
 * swap, its KV goes to host memory first (and it stays decoding); by
 * recompute, or when the copy cannot be made, the KV is dropped. */
static void preempt(pio_scheduler *s, seq *q) {
    if (s->preempt == PIO_PREEMPT_SWAP && q->computed > 0 &&
        pio_model_seq_length(s->m, q->slot) == q->computed) {
        pio_error e;
        double t0 = pio_now();
        q->swap = pio_model_seq_swap_out(s->m, q->slot, &e);
        s->stats.swap_seconds += pio_now() - t0;
        if (q->swap) {
            int64_t bytes = (int64_t)pio_kv_swap_bytes(q->swap);
            s->stats.swaps_out++;
            s->stats.swapped_out_bytes += bytes;
            s->stats.swap_held_bytes += bytes;
        }
    }
    drop_slot(s, q);
    if (!q->swap) q->decoding = false;
    q->status = PIO_SEQ_PREEMPTED;
    q->preemptions++;
    s->stats.preemptions++;
}

static seq *newest_running(const pio_scheduler *s) {
    seq *best = NULL;
    for (size_t i = s->first_live; i < s->n_seqs; i++) {
        seq *q = s->seqs[i];
        if (q && q->status == PIO_SEQ_RUNNING && (!best || q->admitted > best->admitted))
            best = q;
    }
    return best;
}

static bool planned(const pio_scheduler *s, const seq *q) {
    for (int32_t i = 0; i < s->n_plans; i++)
        if (s->plans[i].q == q) return true;
    return false;
}

/* Running sequences, oldest admission first. */
static int32_t running_by_age(const pio_scheduler *s, seq **out) {
    int32_t n = 0;
    for (size_t i = s->first_live; i < s->n_seqs; i++) {
        seq *q = s->seqs[i];
        if (!q || q->status != PIO_SEQ_RUNNING) continue;
        int32_t j = n++;
        for (; j > 0 && out[j - 1]->admitted > q->admitted; j--) out[j] = out[j - 1];
        out[j] = q;
    }
    return n;
}

/* Plans the batch: first one token for every decoding sequence, then prompt
 * chunks in the token budget left, oldest first. A decode token that finds
 * no KV room preempts the newest sequence (perhaps itself); a prompt chunk
 * shrinks to what fits, or waits. If nothing at all fits, the newest
 * sequence is preempted until something does; a sequence alone that still
 * does not fit fails. */
static pio_status plan_batch(pio_scheduler *s, int32_t *n_tokens, pio_error *err) {
    seq **order = s->order;
    for (;;) {
        s->n_plans = 0;
        int32_t budget = s->max_tokens, n_run = running_by_age(s, order);
        for (int pass = 0; pass < 2; pass++) {
            for (int32_t i = 0; i < n_run && budget > 0; i++) {
                seq *q = order[i];
                if (q->status != PIO_SEQ_RUNNING || planned(s, q)) continue;
                size_t n, n_prompt;
                pio_generation_all_tokens(q->g, &n, &n_prompt);
                int32_t left = (int32_t)n - q->computed;
                if ((pass == 0) != (left == 1)) continue;
                int32_t take = left < budget ? left : budget;
                pio_status st;
                while ((st = pio_model_seq_reserve(s->m, q->slot, q->computed + take, err)) ==
                           PIO_ERR_OOM && pass == 1 && take > 1)
                    take /= 2;
                if (st == PIO_ERR_OOM && pass == 0) {
                    seq *victim = newest_running(s);
                    preempt(s, victim);
                    if (victim != q) i--; /* try q again with the victim's room */
                    continue;
                }
                if (st == PIO_ERR_OOM) continue; /* a prompt waits for room */
                if (st != PIO_OK) return st;
                s->plans[s->n_plans++] = (plan){q, take, q->computed + take == (int32_t)n};
                budget -= take;
            }
        }
        *n_tokens = s->max_tokens - budget;
        if (s->n_plans > 0 || n_run == 0) return PIO_OK;
        seq *victim = newest_running(s);
        if (n_run == 1) { /* alone with the whole pool, and still no room */
            pio_error_set(err, PIO_ERR_OOM, "the KV cache has no room for sequence %d's next "
                          "position even alone (a larger pool, or a shorter prompt)", victim->id);
            took(s, victim, PIO_ERR_OOM, NULL, 0, false, err);
            continue;
        }
        preempt(s, victim);
    }
}

/* Runs the planned batch and hands each sequence that asked for logits its row. */
static pio_status run_batch(pio_scheduler *s, int32_t n_tokens, pio_error *err) {
    int32_t t = 0;
    for (int32_t p = 0; p < s->n_plans; p++) {
        const plan *pl = &s->plans[p];
        size_t n, n_prompt;
        const int32_t *tokens = pio_generation_all_tokens(pl->q->g, &n, &n_prompt);
        for (int32_t i = 0; i < pl->n; i++, t++) {
            s->tok[t] = tokens[pl->q->computed + i];
            s->pos[t] = pl->q->computed + i;
            s->bseq[t] = pl->q->slot;
            s->want[t] = pl->wants_logits && i == pl->n - 1;
        }
    }
    pio_batch b = {n_tokens, s->tok, s->pos, s->bseq, s->want};
    const pio_tensor *logits;
    double t0 = pio_now();
    pio_status st = pio_model_forward(s->m, &b, &logits, err);
    s->stats.forward_seconds += pio_now() - t0;
    if (st != PIO_OK) return st;
    s->stats.steps++;
    s->stats.batch_tokens += n_tokens;
    const float *rows = pio_tensor_data(logits);
    int64_t n_vocab = s->m->hp.n_vocab, row = 0;
    for (int32_t p = 0; p < s->n_plans; p++) {
        const plan *pl = &s->plans[p];
        seq *q = pl->q;
        size_t n, n_prompt;
        const int32_t *tokens = pio_generation_all_tokens(q->g, &n, &n_prompt);
        q->computed += pl->n;
        if (!q->decoding) s->stats.prompt_tokens += pl->n;
        if (!pl->wants_logits) continue;
        q->decoding = true;
        if (!q->registered) { /* its prompt (and any recomputed tokens) are in the cache now */
            pio_model_seq_register_prefix(s->m, q->slot, tokens, q->computed);
            q->registered = true;
        }
        const char *text;
        size_t len;
        bool done;
        st = pio_generation_accept(q->g, rows + row++ * n_vocab, &text, &len, &done, err);
        size_t after;
        pio_generation_all_tokens(q->g, &after, &n_prompt);
        pio_sched_event *e = event_for(s, q);
        if (after > n) { /* a token was taken (not eos); the array never moves */
            if (e) e->token = tokens[n];
            s->stats.generated_tokens++;
        }
        if (!q->first_token) q->first_token = pio_now();
        took(s, q, st, text, len, done, err);
        if (q->status == PIO_SEQ_RUNNING) at_limit(s, q, err);
    }
    return PIO_OK;
}

pio_status pio_scheduler_step(pio_scheduler *s, int32_t *n_running, pio_error *err) {
    s->n_events = 0;
    admit(s, err);
    int32_t n_tokens = 0;
    pio_status st = plan_batch(s, &n_tokens, err);
    if (st == PIO_OK && n_tokens > 0) st = run_batch(s, n_tokens, err);
    for (size_t i = 0; i < s->n_events; i++) { /* texts are final now: point into them */
        const seq *q = s->seqs[s->events[i].id];
        s->events[i].text = q->text ? q->text + s->event_off[i] : "";
        s->events[i].len = q->len - s->event_off[i];
    }
    while (s->first_live < s->n_seqs &&
           (!s->seqs[s->first_live] || s->seqs[s->first_live]->status == PIO_SEQ_DONE))
        s->first_live++;
    *n_running = count_running(s);
    return st;
}

const pio_sched_event *pio_scheduler_events(const pio_scheduler *s, size_t *n) {
    *n = s->n_events;
    return s->events;
}

bool pio_scheduler_busy(const pio_scheduler *s) {
    for (size_t i = s->first_live; i < s->n_seqs; i++)
        if (s->seqs[i] && s->seqs[i]->status != PIO_SEQ_DONE) return true;
    return false;
}

bool pio_scheduler_cancel(pio_scheduler *s, int32_t id) {
    seq *q = find(s, id);
    if (!q || q->status == PIO_SEQ_DONE) return false;
    pio_generation_cancel(q->g);
    finish_seq(s, q, "cancelled");
    return true;
}

pio_status pio_scheduler_seq(const pio_scheduler *s, int32_t id, pio_seq_info *out,
                             pio_error *err) {
    const seq *q = find(s, id);
    if (!q) return pio_error_set(err, PIO_ERR_NOT_FOUND, "no sequence %d in this scheduler", id);
    size_t n, n_prompt;
    const int32_t *tokens = pio_generation_all_tokens(q->g, &n, &n_prompt);
    *out = (pio_seq_info){
        .status = q->status, .stop_reason = q->reason, .error = q->error,
        .tokens = tokens + n_prompt, .n_tokens = n - n_prompt, .text = q->text ? q->text : "",
        .len = q->len, .prompt_tokens = (int32_t)n_prompt, .reused_tokens = q->reused,
        .preemptions = q->preemptions, .submitted = q->submitted,
        .first_token = q->first_token, .finished = q->finished};
    return PIO_OK;
}

void pio_scheduler_release(pio_scheduler *s, int32_t id) {
    seq *q = find(s, id);
    if (!q) return;
    drop_slot(s, q);
    drop_swap(s, q);
    free_seq(q);
    s->seqs[id] = NULL;
}

void pio_scheduler_stats(const pio_scheduler *s, pio_sched_stats *out) {
    *out = s->stats;
    out->running = count_running(s);
    out->waiting = 0;
    for (size_t i = s->first_live; i < s->n_seqs; i++)
        out->waiting += s->seqs[i] && (s->seqs[i]->status == PIO_SEQ_QUEUED ||
                                       s->seqs[i]->status == PIO_SEQ_PREEMPTED);
}
