/* The scheduler (pio/scheduler.h) on the tiny f32 Qwen3 fixture: eight
 * different prompts batched together (admitted mid-run, prompts split into
 * chunks) give each sequence the greedy tokens it gets alone; a KV pool too
 * small for all of them preempts and still gives the same tokens; cancel
 * frees the slot; bad options are refused. */
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
static pio_sched_stats run_batched(pio_model *m, int32_t max_tokens,
                                   int32_t want[N_PROMPTS][NEW_TOKENS]) {
    pio_error err;
    pio_sched_opts so = {.max_batch = MAX_SEQS, .max_tokens = max_tokens};
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
    test_cancel(m);
    test_bad_options(m);
    pio_model_free(m);
    TEST_MAIN_END();
}
