/* pio/scheduler.h: continuous batching over one model.
 *
 * Sequences are submitted as generations (pio_generation_new: prompt,
 * sampling, stop rules) and run together: each step builds one pio_batch
 * holding the next token of every decoding sequence and chunks of the
 * prompts of newly admitted ones, up to max_tokens tokens and max_batch
 * running sequences, runs it, and hands each sequence whose last token was
 * in the batch its logits row (sampling and stop rules are the generation's
 * own). New sequences are admitted between steps while others decode.
 *
 * KV room (pio/kv.h): the scheduler owns the model's sequence slots. It
 * reserves room before adding a sequence's tokens; when the pool runs out it
 * preempts the newest-admitted sequence: it goes back to the queue with its
 * generated tokens kept and, by recompute (the default), loses its KV, to be
 * run again from the start (prompt + generated) when room returns; by swap,
 * its KV rows are copied to host memory first and copied back on resumption
 * (pio_model_seq_swap_out / swap_in), so nothing is recomputed. A swapped
 * sequence resumes when the pool has room for all of it (or, with nothing
 * running and still no room, falls back to recompute). The queue is first come,
 * first served by submission, so a preempted sequence resumes before later
 * submissions. Prompts reuse cached prefixes at admission and publish theirs
 * once computed (no-ops unless the KV cache has prefix caching on).
 */
#ifndef PIO_SCHEDULER_H
#define PIO_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pio/error.h"
#include "pio/generate.h"
#include "pio/model.h"

typedef enum pio_preempt_mode {
    PIO_PREEMPT_RECOMPUTE = 0, /* drop the victim's KV; recompute it on resumption */
    PIO_PREEMPT_SWAP,          /* copy the victim's KV to host memory and back */
} pio_preempt_mode;

typedef struct pio_sched_opts {
    int32_t max_batch;  /* running sequences at most; 0: the model's max_seqs (the most) */
    int32_t max_tokens; /* tokens per step (decode tokens + prompt chunks); 0: PIO_PROMPT_CHUNK */
    pio_preempt_mode preempt;
} pio_sched_opts;

typedef enum pio_seq_status {
    PIO_SEQ_QUEUED,    /* waiting for its first admission */
    PIO_SEQ_RUNNING,   /* holds a slot */
    PIO_SEQ_PREEMPTED, /* lost its KV; waiting to run again */
    PIO_SEQ_DONE,
} pio_seq_status;

const char *pio_seq_status_name(pio_seq_status s); /* "queued", "running", ... */

/* What a step did for one sequence. A step gives each sequence at most one
 * event: a token (with the text it completed, possibly empty), or the end
 * (done: the stop reason), or both. */
typedef struct pio_sched_event {
    int32_t id;
    int32_t token;     /* the new token; -1 when none (eos, a finish without a token) */
    const char *text;  /* borrowed until the next step */
    size_t len;
    const char *done;  /* NULL, or "length", "eos", "stop", "context", "error" */
} pio_sched_event;

typedef struct pio_seq_info {
    pio_seq_status status;
    const char *stop_reason;   /* NULL until done; "cancelled" after pio_scheduler_cancel */
    const char *error;         /* the message when stop_reason is "error" */
    const int32_t *tokens;     /* generated ids (borrowed) */
    size_t n_tokens;
    const char *text;          /* all text streamed so far (borrowed) */
    size_t len;
    int32_t prompt_tokens;
    int32_t reused_tokens;     /* prompt positions attached from the prefix cache */
    int32_t preemptions;
    double submitted, first_token, finished; /* pio_now() times; 0 until they happen */
} pio_seq_info;

typedef struct pio_sched_stats {
    int64_t steps;             /* forward passes */
    int64_t batch_tokens;      /* tokens through the model (prompt, recompute, decode) */
    int64_t prompt_tokens;     /* of which prompt and recompute tokens */
    int64_t generated_tokens;  /* tokens sampled */
    int64_t reused_tokens;     /* prompt positions taken from the prefix cache */
    int64_t preemptions;
    int64_t swaps_out, swaps_in;   /* swap preemption: sequences copied to host and back */
    int64_t swapped_out_bytes;     /* host bytes written by swaps out (all of them) */
    int64_t swapped_in_bytes;      /* host bytes copied back into the cache */
    int64_t swap_held_bytes;       /* host bytes held by swapped sequences now */
    double swap_seconds;           /* spent copying */
    int32_t running, waiting;  /* now */
    double forward_seconds;
} pio_sched_stats;

typedef struct pio_scheduler pio_scheduler;

/* Misuse (negative sizes, max_batch above the model's max_seqs) is
 * PIO_ERR_INVALID naming the value. */
pio_scheduler *pio_scheduler_new(pio_model *m, const pio_sched_opts *opts, pio_error *err);
/* Frees every sequence and empties the slots it held (the model must be alive). */
void pio_scheduler_free(pio_scheduler *s);
/* For a model freed first (bindings): pio_scheduler_free then leaves it alone. */
void pio_scheduler_forget_model(pio_scheduler *s);

/* Queues g (taken over, also on failure) and returns its id (>= 0), or -1
 * with err: g belongs to another model. */
int32_t pio_scheduler_submit(pio_scheduler *s, pio_generation *g, pio_error *err);

/* Admits what fits, runs one batch, samples. *n_running gets the sequences
 * holding slots afterwards. Nothing to run is not an error (*n_running 0).
 * A failed forward pass is returned; the sequences keep their state and the
 * next step retries them. */
pio_status pio_scheduler_step(pio_scheduler *s, int32_t *n_running, pio_error *err);

/* The events of the last step, in the order their tokens were batched. */
const pio_sched_event *pio_scheduler_events(const pio_scheduler *s, size_t *n);

/* Whether any sequence is queued, running or preempted. */
bool pio_scheduler_busy(const pio_scheduler *s);

/* Ends a sequence that is not done yet (its slot and KV are freed at once;
 * no event). False when the id is unknown or the sequence already done. */
bool pio_scheduler_cancel(pio_scheduler *s, int32_t id);

/* PIO_ERR_NOT_FOUND for an unknown or released id. */
pio_status pio_scheduler_seq(const pio_scheduler *s, int32_t id, pio_seq_info *out,
                             pio_error *err);

/* Forgets a sequence (cancelling it first if needed): its memory is freed
 * and its id becomes unknown. */
void pio_scheduler_release(pio_scheduler *s, int32_t id);

void pio_scheduler_stats(const pio_scheduler *s, pio_sched_stats *out);

#endif
