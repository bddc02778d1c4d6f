/* The KV cache (pio/kv.h) on the Qwen3 fixtures: the paged layout gives the
 * contiguous layout's logits bit for bit; prefix caching reuses blocks and
 * changes nothing in the output; running out of blocks is an error; the
 * bytes reported are the bytes allocated; int8 KV stays within a bound of the
 * model-dtype cache; sliding and sink attention match a masked reference;
 * checkpoints restore exactly and refuse what does not match; bad
 * configurations are refused naming the problem. PIO_VERBOSE=1 prints the
 * measured numbers. */
#include <stdlib.h>
#include <unistd.h>

#include "attention_paged.h"
#include "pio/generate.h"
#include "pio/kv.h"
#include "pio/model.h"
#include "pio_test.h"

static const char *const fixtures[] = {"tests/fixtures/qwen3-gqa1", "tests/fixtures/qwen3-gqa2",
                                       "tests/fixtures/qwen3-gqa4"};
static bool verbose;

static pio_model *load(const char *dir, pio_dtype dt, int max_seqs, const pio_kv_config *kv) {
    pio_load_opts o = pio_load_opts_default();
    o.dtype = dt;
    o.threads = 2;
    o.max_seqs = max_seqs;
    if (kv) o.kv = *kv;
    pio_error err;
    pio_model *m = pio_model_load(dir, &o, &err);
    CHECK_MSG(m != NULL, "%s: %s", dir, err.msg);
    return m;
}

static int32_t n_vocab(const pio_model *m) {
    pio_model_info i;
    pio_model_get_info(m, &i);
    return i.n_vocab;
}

/* Logits of positions [from, n) of ids in slot seq, `chunk` tokens per forward. */
static float *run(pio_model *m, const int32_t *ids, int from, int n, int chunk, int seq) {
    int V = n_vocab(m);
    float *out = calloc((size_t)n * (size_t)V, sizeof(float));
    for (int begin = from; begin < n; begin += chunk) {
        int len = begin + chunk < n ? chunk : n - begin;
        int32_t pos[128], seqs[128];
        for (int i = 0; i < len; i++) pos[i] = begin + i, seqs[i] = seq;
        pio_batch b = {len, ids + begin, pos, seqs, NULL};
        const pio_tensor *logits;
        pio_error err;
        pio_status st = pio_model_forward(m, &b, &logits, &err);
        CHECK_MSG(st == PIO_OK, "%s", err.msg);
        if (st) break;
        memcpy(out + (size_t)begin * V, pio_tensor_data(logits), sizeof(float) * (size_t)len * V);
    }
    return out;
}

/* Logits of [0, n) computed as two batches, [0, split) and [split, n): a
 * matmul's rounding may depend on its number of rows, so references for
 * computations that start at `split` are run in the same shapes. */
static float *run2(pio_model *m, const int32_t *ids, int split, int n, int seq) {
    int V = n_vocab(m);
    pio_model_seq_free(m, seq);
    float *a = run(m, ids, 0, split, split, seq), *b = run(m, ids, split, n, n, seq);
    memcpy(b, a, sizeof(float) * (size_t)split * V);
    free(a);
    return b;
}

static void make_ids(int32_t *ids, int n, uint32_t seed) {
    for (int i = 0; i < n; i++) ids[i] = (int32_t)((seed = seed * 1103515245u + 12345u) >> 16) % 380;
}

static float max_abs(const float *a, size_t n) {
    float d = 0;
    for (size_t i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i]));
    return d;
}

static float max_diff(const float *a, const float *b, size_t n) {
    float d = 0;
    for (size_t i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

static const pio_kv_config paged16 = {.layout = PIO_KV_PAGED, .block_size = 16};

/* Paged logits equal contiguous ones exactly (f32 and bf16), several slots at once. */
static void test_paged_identical(void) {
    enum { N = 45 };
    int32_t ids[N], ids2[N];
    make_ids(ids, N, 1);
    make_ids(ids2, N, 2);
    for (size_t f = 0; f < sizeof fixtures / sizeof *fixtures; f++)
        for (int d = 0; d < 2; d++) {
            pio_dtype dt = d ? PIO_BF16 : PIO_F32;
            pio_model *c = load(fixtures[f], dt, 2, NULL), *p = load(fixtures[f], dt, 2, &paged16);
            if (!c || !p) return;
            size_t V = (size_t)n_vocab(c);
            float *ref = run(c, ids, 0, N, 7, 0), *got = run(p, ids, 0, N, 7, 1);
            CHECK_MSG(!memcmp(ref, got, sizeof(float) * N * V), "%s %s: paged differs by %g",
                      fixtures[f], d ? "bf16" : "f32", max_diff(ref, got, N * V));
            /* two sequences interleaved in each batch */
            int32_t tok[2 * N], pos[2 * N], seq[2 * N];
            for (int i = 0; i < N; i++) {
                tok[2 * i] = ids2[i], pos[2 * i] = i, seq[2 * i] = 0;
                tok[2 * i + 1] = ids[i], pos[2 * i + 1] = i, seq[2 * i + 1] = 1;
            }
            pio_model_seq_free(p, 0);
            pio_model_seq_free(p, 1);
            pio_batch b = {2 * N, tok, pos, seq, NULL};
            const pio_tensor *logits;
            pio_error err;
            CHECK_MSG(pio_model_forward(c, &b, &logits, &err) == PIO_OK, "%s", err.msg);
            float *want = malloc(sizeof(float) * 2 * N * V);
            memcpy(want, pio_tensor_data(logits), sizeof(float) * 2 * N * V);
            CHECK_MSG(pio_model_forward(p, &b, &logits, &err) == PIO_OK, "%s", err.msg);
            CHECK_MSG(!memcmp(pio_tensor_data(logits), want, sizeof(float) * 2 * N * V),
                      "%s: interleaved slots differ", fixtures[f]);
            free(want);
            pio_kv_stats s;
            pio_model_kv_stats(p, &s);
            CHECK(s.blocks_used == 2 * 3 && !strcmp(s.layout, "paged"));
            CHECK(pio_model_seq_length(p, 1) == N);
            free(ref), free(got);
            pio_model_free(c), pio_model_free(p);
        }
}

/* Memory accounting: what stats and info report is what the heap holds. */
static void test_accounting(void) {
    pio_model *m = load(fixtures[1], PIO_F32, 2, NULL);
    if (!m) return;
    pio_model_info info;
    pio_model_get_info(m, &info);
    pio_kv_stats s;
    pio_model_kv_stats(m, &s);
    CHECK(s.bytes_total == info.kv_bytes);
    /* 3 layers · 2 slots · 128 positions · 2 kv heads · 32 dims · (K, V) · 4 bytes */
    CHECK(info.kv_bytes == (size_t)3 * 2 * 128 * 2 * 32 * 2 * 4);
    pio_error err;
    for (int fmt = 0; fmt < 2; fmt++) {
        pio_kv_config c = {.layout = PIO_KV_PAGED, .block_size = 16, .n_blocks = 10,
                           .format = fmt ? PIO_KV_INT8 : PIO_KV_MODEL_DTYPE};
        size_t predicted;
        CHECK(pio_model_kv_bytes(m, &c, &predicted, &err) == PIO_OK);
        int64_t before = pio_debug_heap_bytes();
        size_t old = info.kv_bytes;
        CHECK_MSG(pio_model_kv_configure(m, &c, &err) == PIO_OK, "%s", err.msg);
        pio_model_get_info(m, &info);
        pio_model_kv_stats(m, &s);
        CHECK(s.bytes_total == predicted && info.kv_bytes == predicted);
        CHECK_MSG(pio_debug_heap_bytes() - before == (int64_t)predicted - (int64_t)old,
                  "heap moved by %lld, reported %zu - %zu", (long long)(pio_debug_heap_bytes() - before),
                  predicted, old);
        size_t per_row = fmt ? 32 * 2 + 8 : 32 * 2 * 4;
        CHECK(s.bytes_per_block == (size_t)3 * 16 * 2 * per_row);
        CHECK(s.bytes_total == 10 * s.bytes_per_block && s.blocks_total == 10);
    }
    /* pio_model_estimate agrees with the loader */
    pio_load_opts o = pio_load_opts_default();
    o.dtype = PIO_F32;
    o.kv = (pio_kv_config){.layout = PIO_KV_PAGED, .max_bytes = 100000};
    pio_model_footprint fp;
    CHECK(pio_model_estimate(fixtures[1], &o, &fp, &err) == PIO_OK);
    pio_model *b = pio_model_load(fixtures[1], &o, &err);
    if (b) {
        pio_model_get_info(b, &info);
        CHECK(fp.kv_bytes == info.kv_bytes && info.kv_bytes <= 100000);
        CHECK(info.kv_bytes == (100000 / (3 * 16 * 2 * 32 * 2 * 4)) * (3 * 16 * 2 * 32 * 2 * 4));
        pio_model_free(b);
    }
    pio_model_free(m);
}

/* Running out of blocks is an error with numbers, and the cache stays usable. */
static void test_out_of_blocks(void) {
    pio_kv_config c = {.layout = PIO_KV_PAGED, .block_size = 16, .n_blocks = 3};
    pio_model *m = load(fixtures[1], PIO_F32, 2, &c);
    if (!m) return;
    pio_error err;
    CHECK(pio_model_seq_reserve(m, 0, 100, &err) == PIO_ERR_OOM);
    CHECK_ERR(err, "out of KV blocks: need 7, free 3");
    CHECK(pio_model_seq_blocks_needed(m, 0, 40) == 3);
    CHECK(pio_model_seq_reserve(m, 0, 40, &err) == PIO_OK);
    int32_t ids[20], pos[20], seq[20];
    make_ids(ids, 20, 3);
    for (int i = 0; i < 20; i++) pos[i] = i, seq[i] = 1;
    pio_batch b = {20, ids, pos, seq, NULL};
    CHECK(pio_model_forward(m, &b, NULL, &err) == PIO_ERR_OOM);
    CHECK_ERR(err, "out of KV blocks: need 2, free 0");
    pio_model_seq_free(m, 0);
    CHECK_MSG(pio_model_forward(m, &b, NULL, &err) == PIO_OK, "%s", err.msg);
    pio_model_free(m);
}

/* Prefix caching: hits, misses, reuse, eviction, and the same logits. */
static void test_prefix(void) {
    enum { N = 40 };
    int32_t ids[N], other[N];
    make_ids(ids, N, 4);
    make_ids(other, N, 5);
    pio_model *ref = load(fixtures[2], PIO_F32, 1, NULL);
    pio_kv_config c = {.layout = PIO_KV_PAGED, .block_size = 16, .n_blocks = 7,
                       .prefix_cache = true};
    pio_model *m = load(fixtures[2], PIO_F32, 2, &c);
    if (!ref || !m) return;
    size_t V = (size_t)n_vocab(m);
    float *want = run(ref, ids, 0, N, N, 0);
    CHECK(pio_model_seq_reuse_prefix(m, 0, ids, N) == 0); /* cold: a miss */
    float *first = run(m, ids, 0, N, N, 0);
    pio_model_seq_register_prefix(m, 0, ids, N);
    pio_kv_stats s;
    pio_model_kv_stats(m, &s);
    CHECK(s.prefix_misses == 1 && s.prefix_hits == 0 && s.blocks_used == 3);
    /* the same prompt in slot 1: two full blocks attach (32 of 40 positions) */
    CHECK(pio_model_seq_reuse_prefix(m, 1, ids, N) == 32);
    float *again = run(m, ids, 32, N, N, 1), *want32 = run2(ref, ids, 32, N, 0);
    CHECK(!memcmp(again + 32 * V, want32 + 32 * V, sizeof(float) * (N - 32) * V));
    free(want32);
    CHECK(!memcmp(first, want, sizeof(float) * N * V));
    pio_model_kv_stats(m, &s);
    CHECK(s.prefix_hits == 1 && s.tokens_reused == 32 && s.blocks_used == 4);
    /* a prompt of exactly two blocks reuses one: its last token is computed */
    pio_model_seq_free(m, 1);
    CHECK(pio_model_seq_reuse_prefix(m, 1, ids, 32) == 16);
    pio_model_seq_free(m, 1);
    pio_model_seq_free(m, 0);
    pio_model_kv_stats(m, &s);
    CHECK(s.blocks_cached == 2 && s.blocks_used == 0 && s.blocks_free == 5);
    /* another prompt takes free blocks, then evicts the cached ones (LRU) */
    float *o = run(m, other, 0, N, N, 0);
    pio_model_kv_stats(m, &s);
    CHECK(s.evictions == 0 && s.blocks_cached == 2);
    pio_error err;
    CHECK(pio_model_seq_reserve(m, 1, 48, &err) == PIO_OK); /* 2 free + 1 evicted */
    pio_model_kv_stats(m, &s);
    CHECK_MSG(s.evictions == 1 && s.blocks_cached == 1, "evictions %lld cached %d",
              (long long)s.evictions, s.blocks_cached);
    pio_model_seq_free(m, 1);
    pio_model_seq_free(m, 0);
    /* the last block went first (a sequence releases its blocks back to front),
     * so the first block still serves */
    CHECK(pio_model_seq_reuse_prefix(m, 0, ids, N) == 16);
    CHECK(pio_model_seq_reuse_prefix(m, 1, ids, N) == 16);
    /* slot 0 rewrites positions 10.. of the shared block: it gets a copy, and
     * slot 1 still reads the cached one */
    int32_t edited[N];
    memcpy(edited, ids, sizeof edited);
    edited[12] = 7;
    float *e = run(m, edited, 10, N, N, 0);
    float *s1 = run(m, ids, 16, N, N, 1), *want16 = run2(ref, ids, 16, N, 0);
    CHECK(!memcmp(s1 + 16 * V, want16 + 16 * V, sizeof(float) * (N - 16) * V));
    free(want16);
    free(run(ref, ids, 0, N, N, 0)); /* positions 0..9 as slot 0 computed them */
    float *e_ref = run(ref, edited, 10, N, N, 0);
    CHECK(!memcmp(e + 10 * V, e_ref + 10 * V, sizeof(float) * (N - 10) * V));
    free(want), free(first), free(again), free(o), free(e), free(s1), free(e_ref);
    pio_model_free(ref), pio_model_free(m);
}

/* Generation with the prefix cache on gives the same tokens as with it off. */
static void test_generation_prefix(void) {
    enum { N = 37 };
    int32_t ids[N];
    make_ids(ids, N, 6);
    pio_kv_config c = {.layout = PIO_KV_PAGED, .prefix_cache = true};
    pio_model *off = load(fixtures[1], PIO_F32, 1, NULL), *on = load(fixtures[1], PIO_F32, 1, &c);
    if (!off || !on) return;
    int32_t out[3][24];
    for (int r = 0; r < 3; r++) {
        pio_model *m = r == 0 ? off : on;
        pio_gen_opts o = pio_gen_default_opts();
        o.max_new_tokens = 24;
        o.sampling.temperature = 0;
        o.ignore_eos = true;
        pio_error err;
        pio_generation *g = pio_generation_new(m, ids, N, &o, &err);
        CHECK_MSG(g != NULL, "%s", err.msg);
        if (!g) return;
        const char *text;
        size_t len;
        bool done = false;
        while (!done && pio_generation_step(g, &text, &len, &done, &err) == PIO_OK) {}
        size_t n;
        const int32_t *t = pio_generation_tokens(g, &n);
        CHECK(n == 24);
        memcpy(out[r], t, sizeof out[r]);
        pio_generation_free(g);
    }
    CHECK(!memcmp(out[0], out[1], sizeof out[0]) && !memcmp(out[0], out[2], sizeof out[0]));
    pio_kv_stats s;
    pio_model_kv_stats(on, &s);
    CHECK_MSG(s.prefix_misses == 1 && s.prefix_hits == 1 && s.tokens_reused == 32,
              "misses %lld hits %lld reused %lld", (long long)s.prefix_misses,
              (long long)s.prefix_hits, (long long)s.tokens_reused);
    pio_model_free(off), pio_model_free(on);
}

/* int8 KV: memory saved and logit error against the model-dtype cache. */
static void test_int8(void) {
    enum { N = 60 };
    int32_t ids[N];
    make_ids(ids, N, 7);
    for (size_t f = 0; f < sizeof fixtures / sizeof *fixtures; f++)
        for (int d = 0; d < 2; d++) {
            pio_dtype dt = d ? PIO_BF16 : PIO_F32;
            pio_kv_config c8 = {.layout = PIO_KV_PAGED, .format = PIO_KV_INT8};
            pio_model *a = load(fixtures[f], dt, 1, &paged16), *b = load(fixtures[f], dt, 1, &c8);
            if (!a || !b) return;
            size_t V = (size_t)n_vocab(a);
            float *x = run(a, ids, 0, N, 16, 0), *y = run(b, ids, 0, N, 16, 0);
            float err = max_diff(x, y, N * V), scale = max_abs(x, N * V);
            pio_kv_stats sa, sb;
            pio_model_kv_stats(a, &sa);
            pio_model_kv_stats(b, &sb);
            double saved = 1.0 - (double)sb.bytes_total / (double)sa.bytes_total;
            if (verbose)
                printf("int8 KV %s %s: %zu -> %zu bytes (%.1f%% saved), max |logit error| %.3g "
                       "(max |logit| %.3g, relative %.2e)\n", fixtures[f] + 15, d ? "bf16" : "f32",
                       sa.bytes_total, sb.bytes_total, 100 * saved, err, scale, err / scale);
            CHECK_MSG(err <= 0.03f * scale, "%s: int8 logit error %g of %g", fixtures[f], err, scale);
            CHECK(err > 0); /* it is a different cache */
            CHECK(saved > (d ? 0.35 : 0.68)); /* 1 byte + 4/head_dim for scales, vs 4 or 2 */
            free(x), free(y);
            pio_model_free(a), pio_model_free(b);
        }
}

/* Sliding and sink attention against attention over every position with the
 * others masked out (computed in double). */
static void test_windows_kernel(void) {
    enum { H = 4, HKV = 2, D = 16, BLOCK = 4, NB = 12, N = 40 };
    pio_error err;
    int64_t qs[3] = {N, H, D}, ks[3] = {N, HKV, D};
    pio_tensor *q = pio_tensor_new(PIO_F32, 3, qs, &err), *k = pio_tensor_new(PIO_F32, 3, ks, &err);
    pio_tensor *v = pio_tensor_new(PIO_F32, 3, ks, &err), *o = pio_tensor_new(PIO_F32, 3, qs, &err);
    float *qd = pio_tensor_data(q), *kd = pio_tensor_data(k), *vd = pio_tensor_data(v);
    uint32_t r = 9;
    for (int i = 0; i < N * H * D; i++) qd[i] = (float)((r = r * 1664525u + 1013904223u) >> 8) / (1 << 24) - 0.5f;
    for (int i = 0; i < N * HKV * D; i++) kd[i] = (float)((r = r * 1664525u + 1013904223u) >> 8) / (1 << 24) - 0.5f;
    for (int i = 0; i < N * HKV * D; i++) vd[i] = (float)((r = r * 1664525u + 1013904223u) >> 8) / (1 << 24) - 0.5f;
    float *kpool = calloc((size_t)NB * BLOCK * HKV * D, 4), *vpool = calloc((size_t)NB * BLOCK * HKV * D, 4);
    int32_t table[NB], seq[N], pos[N];
    for (int b = 0; b < NB; b++) table[b] = NB - 1 - b; /* blocks in reverse pool order */
    for (int t = 0; t < N; t++) seq[t] = 0, pos[t] = t;
    pio_kv_table tb = {table, NB};
    struct { int window, sink; } cases[] = {{0, 0}, {7, 0}, {10, 3}, {1, 0}, {5, 5}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        pio_kv_view kv = {.pool = {.k = kpool, .v = vpool, .elem = PIO_KV_ELEM_F32, .n_blocks = NB,
                                   .block = BLOCK, .kv_heads = HKV, .dk = D, .dv = D},
                          .tables = &tb, .slots = 1, .window = cases[c].window,
                          .sink = cases[c].sink};
        CHECK(pio_cpu_kv_write_paged(k, v, &kv, seq, pos, &err) == PIO_OK);
        CHECK_MSG(pio_cpu_attention_paged(NULL, q, &kv, seq, pos, 0.25f, o, false, &err) == PIO_OK,
                  "%s", err.msg);
        double worst = 0;
        for (int t = 0; t < N; t++)
            for (int h = 0; h < H; h++) {
                int g = h / (H / HKV);
                double s[N], mx = -1e300, sum = 0, acc[D] = {0};
                for (int j = 0; j <= t; j++) {
                    bool vis = cases[c].window == 0 || j > t - cases[c].window || j < cases[c].sink;
                    s[j] = -1e300;
                    if (!vis) continue;
                    double d = 0;
                    for (int i = 0; i < D; i++) d += (double)qd[(t * H + h) * D + i] * kd[(j * HKV + g) * D + i];
                    s[j] = d * 0.25;
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = 0; j <= t; j++)
                    if (s[j] > -1e299) {
                        double e = exp(s[j] - mx);
                        sum += e;
                        for (int i = 0; i < D; i++) acc[i] += e * vd[(j * HKV + g) * D + i];
                    }
                for (int i = 0; i < D; i++)
                    worst = fmax(worst, fabs(acc[i] / sum - ((float *)pio_tensor_data(o))[(t * H + h) * D + i]));
            }
        CHECK_MSG(worst < 1e-5, "window %d sink %d: off by %g", cases[c].window, cases[c].sink, worst);
    }
    /* an absent block the window needs is an error, not a read of garbage */
    table[2] = -1;
    pio_kv_view kv = {.pool = {.k = kpool, .v = vpool, .elem = PIO_KV_ELEM_F32, .n_blocks = NB,
                               .block = BLOCK, .kv_heads = HKV, .dk = D, .dv = D},
                      .tables = &tb, .slots = 1, .window = 0};
    CHECK(pio_cpu_attention_paged(NULL, q, &kv, seq, pos, 0.25f, o, false, &err) == PIO_ERR_RANGE);
    CHECK_ERR(err, "has no KV block for position 8");
    free(kpool), free(vpool);
    pio_tensor_free(q), pio_tensor_free(k), pio_tensor_free(v), pio_tensor_free(o);
}

/* Sink attention on the paged layout runs past ctx in a bounded pool, and its
 * logits match the same model computing with sink attention on a contiguous cache. */
static void test_sink_unbounded(void) {
    pio_kv_config sink = {.layout = PIO_KV_PAGED, .block_size = 4, .n_blocks = 8,
                          .attention = PIO_ATTN_SINK, .sink = 4, .window = 12};
    pio_kv_config sink_c = {.attention = PIO_ATTN_SINK, .sink = 4, .window = 12};
    pio_model *p = load(fixtures[1], PIO_F32, 1, &sink), *c = load(fixtures[1], PIO_F32, 1, &sink_c);
    if (!p || !c) return;
    enum { N = 100 };
    int32_t ids[300];
    make_ids(ids, 300, 8);
    size_t V = (size_t)n_vocab(p);
    float *a = run(p, ids, 0, N, 1, 0), *b = run(c, ids, 0, N, 1, 0);
    CHECK_MSG(max_diff(a, b, N * V) < 1e-4f, "paged sink vs contiguous sink: %g",
              max_diff(a, b, N * V));
    free(a);
    pio_kv_stats s;
    pio_model_kv_stats(p, &s);
    CHECK_MSG(s.blocks_used <= 5, "%d blocks in use", s.blocks_used);
    a = run(p, ids, N, 300, 1, 0); /* past ctx = 128 */
    CHECK(pio_model_seq_length(p, 0) == 300);
    pio_error err;
    pio_kv_config full = {.layout = PIO_KV_PAGED};
    CHECK(pio_model_kv_configure(p, &full, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "sequence 0 holds 300 positions");
    free(a), free(b);
    pio_model_free(p), pio_model_free(c);
}

static void test_bad_config(void) {
    pio_model *m = load(fixtures[0], PIO_F32, 1, NULL);
    if (!m) return;
    pio_error err;
    struct { pio_kv_config c; const char *msg; } bad[] = {
        {{.layout = PIO_KV_PAGED, .block_size = -1}, "block size must be >= 1, got -1"},
        {{.layout = PIO_KV_PAGED, .n_blocks = -2}, "number of blocks must be >= 1, got -2"},
        {{.attention = PIO_ATTN_SLIDING, .window = 0}, "sliding attention needs a window >= 1, got 0"},
        {{.attention = PIO_ATTN_SINK, .window = -3, .sink = 1}, "needs a window >= 1, got -3"},
        {{.attention = PIO_ATTN_SINK, .window = 3, .sink = -1}, "sink must be >= 0, got -1"},
        {{.prefix_cache = true}, "prefix caching needs the paged layout"},
        {{.layout = PIO_KV_PAGED, .max_bytes = 100}, "a budget of 100 bytes holds no block"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK(pio_model_kv_configure(m, &bad[i].c, &err) == PIO_ERR_INVALID);
        CHECK_ERR(err, bad[i].msg);
    }
    pio_kv_stats s;
    pio_model_kv_stats(m, &s);
    CHECK(!strcmp(s.layout, "contiguous")); /* unchanged */
    CHECK(pio_model_seq_reserve(m, 0, 129, &err) == PIO_ERR_RANGE);
    CHECK(pio_model_seq_reserve(m, 5, 1, &err) == PIO_ERR_RANGE);
    CHECK_ERR(err, "sequence slot 5 is outside [0, 1)");
    pio_model_free(m);
}

/* A checkpoint restores exactly: greedy continuation equals never having
 * saved; files from another model or KV format are refused naming why. */
static void test_checkpoint(void) {
    enum { N = 30 };
    int32_t ids[N + 8];
    make_ids(ids, N + 8, 10);
    char path[] = "/tmp/pio-kv-test-XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    for (int f = 0; f < 2; f++) {
        pio_kv_config c = f ? paged16 : (pio_kv_config){0};
        pio_model *a = load(fixtures[1], PIO_F32, 2, &c), *b = load(fixtures[1], PIO_F32, 2, &c);
        if (!a || !b) return;
        size_t V = (size_t)n_vocab(a);
        free(run(a, ids, 0, N, N, 1));
        pio_error err;
        CHECK_MSG(pio_model_seq_save(a, 1, path, &err) == PIO_OK, "%s", err.msg);
        CHECK_MSG(pio_model_seq_load(b, 0, path, &err) == PIO_OK, "%s", err.msg);
        CHECK(pio_model_seq_length(b, 0) == N);
        int32_t n;
        const int32_t *t = pio_model_seq_tokens(b, 0, &n);
        CHECK(n == N && t && !memcmp(t, ids, sizeof(int32_t) * N));
        float *x = run(a, ids, N, N + 8, 1, 1), *y = run(b, ids, N, N + 8, 1, 0);
        CHECK(!memcmp(x + N * V, y + N * V, sizeof(float) * 8 * V));
        free(x), free(y);
        pio_model_free(a), pio_model_free(b);
    }
    pio_error err;
    pio_kv_config c8 = {.layout = PIO_KV_PAGED, .format = PIO_KV_INT8};
    pio_model *i8 = load(fixtures[1], PIO_F32, 1, &c8), *other = load(fixtures[2], PIO_F32, 1, NULL);
    pio_model *bf = load(fixtures[1], PIO_BF16, 1, NULL);
    if (i8) {
        CHECK(pio_model_seq_load(i8, 0, path, &err) == PIO_ERR_FORMAT);
        CHECK_ERR(err, "holds f32 KV, this model's cache is int8");
        CHECK(pio_model_seq_length(i8, 0) == 0);
    }
    if (other) {
        CHECK(pio_model_seq_load(other, 0, path, &err) == PIO_ERR_FORMAT);
        CHECK_ERR(err, "with 3 layers, 2 kv heads of 32; this one has 2 layers, 2 kv heads of 16");
    }
    if (bf) {
        CHECK(pio_model_seq_load(bf, 0, path, &err) == PIO_ERR_FORMAT);
        CHECK_ERR(err, "holds f32 KV, this model's cache is bf16");
        CHECK(pio_model_seq_save(bf, 0, path, &err) == PIO_ERR_INVALID);
        CHECK_ERR(err, "sequence 0 is empty");
    }
    CHECK(pio_model_seq_load(bf, 0, "/nonexistent/x", &err) == PIO_ERR_IO);
    pio_model_free(i8), pio_model_free(other), pio_model_free(bf);
    unlink(path);
}

int main(void) {
    verbose = getenv("PIO_VERBOSE") && atoi(getenv("PIO_VERBOSE")) > 0;
    test_paged_identical();
    test_accounting();
    test_out_of_blocks();
    test_prefix();
    test_generation_prefix();
    test_int8();
    test_windows_kernel();
    test_sink_unbounded();
    test_bad_config();
    test_checkpoint();
    TEST_MAIN_END();
}
