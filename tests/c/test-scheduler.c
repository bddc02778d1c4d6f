/* The scheduler (pio/scheduler.h) on the tiny f32 Qwen3 fixture: eight
 * different prompts batched together (admitted mid-run, prompts split into
 * chunks) give each sequence the greedy tokens it gets alone; a KV pool too
 * small for all of them preempts and still gives the same tokens, by
 * recompute and by swapping to host memory (then nothing is recomputed);
 * cancel frees the slot; bad options are refused. */
#include <stdlib.h>

#include "pio/kv.h"
#include "pio/scheduler.h"
#include "pio_test.h"

#define FIXTURE PIO_SOURCE_DIR "/tests/fixtures/qwen3-gqa2"
enum { N_PROMPTS = 8, NEW_TOKENS = 12, MAX_SEQS = 4 };

/* Eight prompts of different lengths (1 to 37 tokens), ids inside the vocabulary of 416. */
static int32_t prompt_len(int p) { return p == 0 ? 1 : 5 * p + 2; }
static int32_t prompt_id(int p, int i) { return (int32_t)((p * 131 + i * 17 + 3) % 380); }

static pio_model *load(void) {
    pio_load_opts o = pio_load_opts_default();
    o.dtype = PIO_F32;
    o.threads = 2;
    o.max_seqs = MAX_SEQS;
    pio_error err;
    pio_model *m = pio_model_load(FIXTURE, &o, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    return m;
}

static pio_generation *greedy(pio_model *m, int p, pio_error *err) {
    int32_t ids[64];
    for (int i = 0; i < prompt_len(p); i++) ids[i] = prompt_id(p, i);
    pio_gen_opts o = pio_gen_default_opts();
    o.max_new_tokens = NEW_TOKENS;
    o.sampling.temperature = 0;
    o.ignore_eos = true;
    return pio_generation_new(m, ids, (size_t)prompt_len(p), &o, err);
}

/* Each prompt alone through pio_generation_step: the reference. */
static void run_alone(pio_model *m, int32_t want[N_PROMPTS][NEW_TOKENS]) {
    for (int p = 0; p < N_PROMPTS; p++) {
        pio_error err;
        pio_generation *g = greedy(m, p, &err);
        const char *text;
        size_t len, n;
        bool done = false;
        while (!done && pio_generation_step(g, &text, &len, &done, &err) == PIO_OK) {}
        const int32_t *ids = pio_generation_tokens(g, &n);
        CHECK(n == NEW_TOKENS);
        memcpy(want[p], ids, sizeof want[p]);
        pio_generation_free(g);
    }
    for (int32_t slot = 0; slot < MAX_SEQS; slot++) pio_model_seq_free(m, slot);
}

/* All eight through one scheduler; checks every sequence's tokens and that
 * the events streamed them in order. Returns the scheduler's stats. */
static pio_sched_stats run_batched_mode(pio_model *m, int32_t max_tokens, pio_preempt_mode mode,
                                        int32_t want[N_PROMPTS][NEW_TOKENS]) {
    pio_error err;
    pio_sched_opts so = {.max_batch = MAX_SEQS, .max_tokens = max_tokens, .preempt = mode};
    pio_scheduler *s = pio_scheduler_new(m, &so, &err);
    CHECK_MSG(s != NULL, "%s", err.msg);
    int32_t ids[N_PROMPTS], streamed[N_PROMPTS][NEW_TOKENS + 1], n_streamed[N_PROMPTS] = {0};
    bool done[N_PROMPTS] = {false};
    for (int p = 0; p < N_PROMPTS; p++) ids[p] = pio_scheduler_submit(s, greedy(m, p, &err), &err);
    int32_t running, max_running = 0, steps = 0;
    while (pio_scheduler_busy(s) && steps++ < 1000) {
        CHECK_MSG(pio_scheduler_step(s, &running, &err) == PIO_OK, "%s", err.msg);
        if (running > max_running) max_running = running;
        size_t n;
        const pio_sched_event *ev = pio_scheduler_events(s, &n);
        for (size_t i = 0; i < n; i++) {
            int p = ev[i].id;
            CHECK(!done[p]);
            if (ev[i].token >= 0 && n_streamed[p] <= NEW_TOKENS)
                streamed[p][n_streamed[p]++] = ev[i].token;
            if (ev[i].done) done[p] = true;
        }
    }
    CHECK(max_running == MAX_SEQS);
    for (int p = 0; p < N_PROMPTS; p++) {
        pio_seq_info info;
        CHECK(pio_scheduler_seq(s, ids[p], &info, &err) == PIO_OK);
        CHECK(info.status == PIO_SEQ_DONE && done[p]);
        CHECK_MSG(info.stop_reason && strcmp(info.stop_reason, "length") == 0, "%s",
                  info.stop_reason ? info.stop_reason : "(none)");
        CHECK(info.n_tokens == NEW_TOKENS && n_streamed[p] == NEW_TOKENS);
        CHECK_MSG(memcmp(info.tokens, want[p], sizeof want[p]) == 0,
                  "prompt %d: batched tokens differ from its tokens alone", p);
        CHECK(memcmp(streamed[p], want[p], sizeof want[p]) == 0);
        CHECK(info.first_token >= info.submitted && info.finished >= info.first_token);
    }
    pio_sched_stats st;
    pio_scheduler_stats(s, &st);
    CHECK(st.running == 0 && st.waiting == 0);
    CHECK(st.generated_tokens == N_PROMPTS * NEW_TOKENS);
    pio_scheduler_free(s);
    return st;
}

static pio_sched_stats run_batched(pio_model *m, int32_t max_tokens,
                                   int32_t want[N_PROMPTS][NEW_TOKENS]) {
    return run_batched_mode(m, max_tokens, PIO_PREEMPT_RECOMPUTE, want);
}

static void test_batched_matches_alone(pio_model *m, int32_t want[N_PROMPTS][NEW_TOKENS]) {
    /* 8 tokens a step: the longer prompts run in chunks beside others' decode tokens. */
    pio_sched_stats st = run_batched(m, 8, want);
    CHECK(st.preemptions == 0);
    int64_t prompt = 0;
    for (int p = 0; p < N_PROMPTS; p++) prompt += prompt_len(p);
    CHECK(st.prompt_tokens == prompt);
    CHECK(st.batch_tokens == prompt + N_PROMPTS * (NEW_TOKENS - 1));
}

/* A paged pool of 16 blocks of 4 positions (64 positions) cannot hold four
 * sequences of up to 37 + 12 positions: the newest is preempted and
 * recomputed, and every sequence still gets its tokens. */
static void test_preemption(pio_model *m, int32_t want[N_PROMPTS][NEW_TOKENS]) {
    pio_kv_config cfg = {.layout = PIO_KV_PAGED, .block_size = 4, .n_blocks = 16};
    pio_error err;
    CHECK_MSG(pio_model_kv_configure(m, &cfg, &err) == PIO_OK, "%s", err.msg);
    pio_sched_stats st = run_batched(m, 16, want);
    CHECK_MSG(st.preemptions > 0, "%lld preemptions", (long long)st.preemptions);
    pio_kv_stats ks;
    pio_model_kv_stats(m, &ks);
    CHECK(ks.blocks_used == 0); /* every slot was emptied */
    /* With prefix caching on, the same prompts again reuse blocks. */
    cfg.prefix_cache = true;
    CHECK_MSG(pio_model_kv_configure(m, &cfg, &err) == PIO_OK, "%s", err.msg);
    run_batched(m, 16, want);
    st = run_batched(m, 16, want);
    CHECK(st.reused_tokens > 0);
    cfg = (pio_kv_config){0};
    CHECK_MSG(pio_model_kv_configure(m, &cfg, &err) == PIO_OK, "%s", err.msg);
}

/* The same small pool, preempting by swap: the same tokens, every preempted
 * sequence holding KV swapped out and back in, and no token computed twice (the batches
 * hold each prompt once and one token per new token after the first). The
 * bytes: every swap's copy counted out and in, none held at the end. */
static void test_swap_preemption(pio_model *m, int32_t want[N_PROMPTS][NEW_TOKENS]) {
    pio_kv_config cfg = {.layout = PIO_KV_PAGED, .block_size = 4, .n_blocks = 16};
    pio_error err;
    CHECK_MSG(pio_model_kv_configure(m, &cfg, &err) == PIO_OK, "%s", err.msg);
    pio_sched_stats rc = run_batched_mode(m, 16, PIO_PREEMPT_RECOMPUTE, want);
    pio_sched_stats st = run_batched_mode(m, 16, PIO_PREEMPT_SWAP, want);
    /* (a sequence preempted before it computed anything has nothing to swap) */
    CHECK_MSG(st.swaps_out > 0 && st.swaps_out <= st.preemptions && st.swaps_in == st.swaps_out,
              "%lld preemptions, %lld swaps out, %lld in", (long long)st.preemptions,
              (long long)st.swaps_out, (long long)st.swaps_in);
    int64_t prompt = 0;
    for (int p = 0; p < N_PROMPTS; p++) prompt += prompt_len(p);
    CHECK_MSG(st.batch_tokens == prompt + N_PROMPTS * (NEW_TOKENS - 1),
              "swap: %lld batch tokens, recompute: %lld, neither: %lld",
              (long long)st.batch_tokens, (long long)rc.batch_tokens,
              (long long)(prompt + N_PROMPTS * (NEW_TOKENS - 1)));
    CHECK(rc.batch_tokens > st.batch_tokens); /* recompute did compute some twice */
    CHECK(st.swapped_out_bytes > 0 && st.swapped_in_bytes == st.swapped_out_bytes);
    CHECK(st.swap_held_bytes == 0);
    pio_kv_stats ks;
    pio_model_kv_stats(m, &ks);
    CHECK(ks.blocks_used == 0);
    cfg = (pio_kv_config){0};
    CHECK_MSG(pio_model_kv_configure(m, &cfg, &err) == PIO_OK, "%s", err.msg);
}

/* swap_out / swap_in directly: the bytes held are the slot's rows (f32: 2 ·
 * layers · kv_heads · head_dim · 4 per position) plus tokens; a swapped-in
 * slot continues exactly as the one never swapped; another KV format is
 * refused. */
static void test_swap_roundtrip(pio_model *m) {
    pio_error err;
    int32_t ids[11], pos[11], seq[11];
    for (int i = 0; i < 11; i++) ids[i] = prompt_id(3, i), pos[i] = i, seq[i] = 1;
    const pio_tensor *logits;
    /* The reference: 10 tokens in slot 1, then the 11th alone. */
    pio_batch b = {10, ids, pos, seq, NULL};
    CHECK(pio_model_forward(m, &b, &logits, &err) == PIO_OK);
    pio_batch last = {1, ids + 10, pos + 10, seq + 10, NULL};
    CHECK(pio_model_forward(m, &last, &logits, &err) == PIO_OK);
    float want[416];
    memcpy(want, pio_tensor_data(logits), sizeof want);
    pio_model_seq_free(m, 1);
    for (int i = 0; i < 11; i++) seq[i] = 0;
    CHECK(pio_model_forward(m, &b, &logits, &err) == PIO_OK);
    pio_kv_swap *sw = pio_model_seq_swap_out(m, 0, &err);
    CHECK_MSG(sw != NULL, "%s", err.msg);
    if (!sw) return;
    CHECK(pio_model_seq_length(m, 0) == 0 && pio_kv_swap_length(sw) == 10);
    pio_model_info info;
    pio_model_get_info(m, &info);
    size_t rows = (size_t)10 * info.n_layer * 2 * info.n_head_kv * info.head_dim * 4;
    CHECK_MSG(pio_kv_swap_bytes(sw) >= rows && pio_kv_swap_bytes(sw) <= rows + 10 * 5 + 64 + 16,
              "%zu bytes for %zu bytes of rows", pio_kv_swap_bytes(sw), rows);
    CHECK(pio_model_seq_swap_in(m, 2, sw, &err) == PIO_OK);
    CHECK(pio_model_seq_length(m, 2) == 10);
    int32_t n;
    const int32_t *held = pio_model_seq_tokens(m, 2, &n);
    CHECK(n == 10 && memcmp(held, ids, sizeof(int32_t) * 10) == 0);
    int32_t one_pos = 10, one_seq = 2;
    pio_batch next = {1, ids + 10, &one_pos, &one_seq, NULL};
    CHECK(pio_model_forward(m, &next, &logits, &err) == PIO_OK);
    CHECK_MSG(memcmp(pio_tensor_data(logits), want, sizeof want) == 0,
              "the swapped-in slot's next logits differ from the slot never swapped");
    pio_model_seq_free(m, 2);
    CHECK(pio_model_seq_swap_out(m, 2, &err) == NULL);
    CHECK_ERR(err, "sequence 2 is empty: nothing to swap out");
    pio_kv_config i8 = {.format = PIO_KV_INT8};
    CHECK(pio_model_kv_configure(m, &i8, &err) == PIO_OK);
    CHECK(pio_model_seq_swap_in(m, 0, sw, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "the KV cache changed since the sequence was swapped out (f32 KV, 3 layers then; "
                   "int8, 3 now)");
    pio_kv_swap_free(sw);
    i8 = (pio_kv_config){0};
    CHECK(pio_model_kv_configure(m, &i8, &err) == PIO_OK);
}

static void test_cancel(pio_model *m) {
    pio_error err;
    pio_scheduler *s = pio_scheduler_new(m, &(pio_sched_opts){.max_batch = 1}, &err);
    int32_t a = pio_scheduler_submit(s, greedy(m, 3, &err), &err);
    int32_t b = pio_scheduler_submit(s, greedy(m, 4, &err), &err);
    int32_t running;
    CHECK(pio_scheduler_step(s, &running, &err) == PIO_OK && running == 1);
    pio_seq_info info;
    pio_scheduler_seq(s, b, &info, &err);
    CHECK(info.status == PIO_SEQ_QUEUED);
    CHECK(pio_scheduler_cancel(s, a));
    CHECK(!pio_scheduler_cancel(s, a)); /* already done */
    pio_scheduler_seq(s, a, &info, &err);
    CHECK(info.status == PIO_SEQ_DONE && strcmp(info.stop_reason, "cancelled") == 0);
    CHECK(pio_scheduler_step(s, &running, &err) == PIO_OK && running == 1); /* b took the slot */
    pio_scheduler_seq(s, b, &info, &err);
    CHECK(info.status == PIO_SEQ_RUNNING && info.n_tokens == 1);
    pio_scheduler_release(s, a);
    CHECK(pio_scheduler_seq(s, a, &info, &err) == PIO_ERR_NOT_FOUND);
    CHECK_ERR(err, "no sequence 0 in this scheduler");
    pio_scheduler_free(s);
}

static void test_bad_options(pio_model *m) {
    pio_error err;
    CHECK(pio_scheduler_new(m, &(pio_sched_opts){.max_batch = MAX_SEQS + 1}, &err) == NULL);
    CHECK_ERR(err, "max_batch 5 exceeds the model's 4 sequence slots");
    CHECK(pio_scheduler_new(m, &(pio_sched_opts){.preempt = (pio_preempt_mode)7}, &err) == NULL);
    CHECK_ERR(err, "unknown preemption mode 7 (recompute 0, swap 1)");
    CHECK(pio_scheduler_new(m, &(pio_sched_opts){.max_tokens = -1}, &err) == NULL);
    CHECK_ERR(err, "must be >= 1");
}

int main(void) {
    pio_model *m = load();
    if (!m) TEST_MAIN_END();
    int32_t want[N_PROMPTS][NEW_TOKENS];
    run_alone(m, want);
    test_batched_matches_alone(m, want);
    test_preemption(m, want);
    test_swap_preemption(m, want);
    test_swap_roundtrip(m);
    test_cancel(m);
    test_bad_options(m);
    pio_model_free(m);
    TEST_MAIN_END();
}
