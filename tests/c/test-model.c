/* The model loader and forward pass on synthetic Qwen3 configurations: the
 * batch interface must give the same logits however tokens are grouped
 * (whole prompt, one at a time, several sequences in one batch), for any
 * thread count, and bad input must fail with a clear message. */
#include <stdlib.h>
#include <unistd.h>

#include "pio/model.h"
#include "pio_test.h"

static char dir[256];

static void write_file(const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static const char *tiny_config =
    "{\"architectures\": [\"Qwen3ForCausalLM\"], \"vocab_size\": 97, \"hidden_size\": 48,"
    " \"intermediate_size\": 80, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
    " \"num_key_value_heads\": 2, \"head_dim\": 16, \"max_position_embeddings\": 64,"
    " \"rms_norm_eps\": 1e-6, \"rope_theta\": 10000.0, \"tie_word_embeddings\": true}";

static pio_model *load(pio_dtype dt, int threads, int max_seqs, uint64_t seed) {
    pio_load_opts o = pio_load_opts_default();
    o.dtype = dt;
    o.threads = threads;
    o.max_seqs = max_seqs;
    o.synthetic = true;
    o.seed = seed;
    pio_error err;
    pio_model *m = pio_model_load(dir, &o, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    return m;
}

static float max_diff(const float *a, const float *b, size_t n) {
    float d = 0;
    for (size_t i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

/* Logits of every position of ids in slot `seq`, computed in chunks of `chunk` tokens. */
static float *run_chunked(pio_model *m, const int32_t *ids, int n, int chunk, int seq) {
    pio_model_info info;
    pio_model_get_info(m, &info);
    float *out = malloc(sizeof(float) * (size_t)n * (size_t)info.n_vocab);
    for (int begin = 0; begin < n; begin += chunk) {
        int len = begin + chunk < n ? chunk : n - begin;
        int32_t pos[64], seqs[64];
        for (int i = 0; i < len; i++) pos[i] = begin + i, seqs[i] = seq;
        pio_batch b = {len, ids + begin, pos, seqs, NULL};
        const pio_tensor *logits;
        pio_error err;
        CHECK_MSG(pio_model_forward(m, &b, &logits, &err) == PIO_OK, "%s", err.msg);
        memcpy(out + (size_t)begin * info.n_vocab, pio_tensor_data(logits),
               sizeof(float) * (size_t)len * info.n_vocab);
    }
    return out;
}

static void test_batch_equivalence(void) {
    pio_model *m = load(PIO_F32, 2, 2, 7);
    if (!m) return;
    int32_t ids[12] = {1, 5, 9, 33, 2, 96, 0, 17, 40, 41, 8, 3};
    float *whole = run_chunked(m, ids, 12, 12, 0);
    float *single = run_chunked(m, ids, 12, 1, 0);
    float *mixed = run_chunked(m, ids, 12, 5, 1);
    CHECK_MSG(max_diff(whole, single, 12 * 97) < 1e-5f, "prefill vs decode %g",
              max_diff(whole, single, 12 * 97));
    CHECK_MSG(max_diff(whole, mixed, 12 * 97) < 1e-5f, "chunks in slot 1 %g",
              max_diff(whole, mixed, 12 * 97));

    /* Two sequences interleaved in one batch give each its own logits. */
    int32_t a[3] = {4, 5, 6}, bb[3] = {70, 71, 72};
    int32_t toks[6] = {a[0], bb[0], a[1], bb[1], a[2], bb[2]};
    int32_t pos[6] = {0, 0, 1, 1, 2, 2}, seq[6] = {0, 1, 0, 1, 0, 1};
    pio_batch b = {6, toks, pos, seq, NULL};
    const pio_tensor *logits;
    pio_error err;
    CHECK(pio_model_forward(m, &b, &logits, &err) == PIO_OK);
    float *both = malloc(sizeof(float) * 6 * 97);
    memcpy(both, pio_tensor_data(logits), sizeof(float) * 6 * 97);
    float *ra = run_chunked(m, a, 3, 3, 0), *rb = run_chunked(m, bb, 3, 3, 1);
    float worst = 0;
    for (int t = 0; t < 3; t++) {
        worst = fmaxf(worst, max_diff(both + (2 * t) * 97, ra + t * 97, 97));
        worst = fmaxf(worst, max_diff(both + (2 * t + 1) * 97, rb + t * 97, 97));
    }
    CHECK_MSG(worst < 1e-5f, "interleaved sequences differ by %g", worst);

    /* Only the tokens that ask for logits get a row. */
    bool want[6] = {false, false, false, false, true, true};
    pio_batch b2 = {6, toks, pos, seq, want};
    CHECK(pio_model_forward(m, &b2, &logits, &err) == PIO_OK);
    CHECK(logits->shape[0] == 2 && logits->shape[1] == 97);
    CHECK(max_diff(pio_tensor_data(logits), both + 4 * 97, 2 * 97) < 1e-5f);

    free(whole), free(single), free(mixed), free(both), free(ra), free(rb);
    pio_model_free(m);
}

static void test_determinism(void) {
    int32_t ids[5] = {3, 1, 4, 1, 5};
    pio_model *m1 = load(PIO_BF16, 1, 1, 11), *m2 = load(PIO_BF16, 2, 1, 11);
    pio_model *m3 = load(PIO_BF16, 2, 1, 12);
    if (!m1 || !m2 || !m3) return;
    float *l1 = run_chunked(m1, ids, 5, 5, 0), *l2 = run_chunked(m2, ids, 5, 5, 0);
    float *l3 = run_chunked(m3, ids, 5, 5, 0);
    CHECK_MSG(max_diff(l1, l2, 5 * 97) == 0.0f, "1 vs 2 threads differ by %g",
              max_diff(l1, l2, 5 * 97));
    CHECK(max_diff(l1, l3, 5 * 97) > 0.0f); /* another seed, other weights */
    pio_model_info info;
    pio_model_get_info(m1, &info);
    CHECK(strcmp(info.architecture, "Qwen3ForCausalLM") == 0);
    CHECK(info.n_layer == 2 && info.n_vocab == 97 && info.head_dim == 16);
    /* tied: embed + per layer (2 norms + q,k,v,o + 2 head norms + 3 mlp) + final norm */
    int64_t per_layer = 48 + 48 + 64 * 48 + 2 * 32 * 48 + 48 * 64 + 16 + 16 + 3 * 80 * 48;
    CHECK_MSG(info.n_params == 97 * 48 + 2 * per_layer + 48, "params %lld",
              (long long)info.n_params);
    free(l1), free(l2), free(l3);
    pio_model_free(m1), pio_model_free(m2), pio_model_free(m3);
}

static void test_bad_batches(void) {
    pio_model *m = load(PIO_F32, 1, 1, 1);
    if (!m) return;
    pio_error err;
    int32_t tok[1] = {97}, pos[1] = {0}, seq[1] = {0};
    pio_batch b = {1, tok, pos, seq, NULL};
    CHECK(pio_model_forward(m, &b, NULL, &err) == PIO_ERR_RANGE);
    CHECK_ERR(err, "token id 97");
    tok[0] = 1;
    pos[0] = 64;
    CHECK(pio_model_forward(m, &b, NULL, &err) == PIO_ERR_RANGE);
    CHECK_ERR(err, "beyond the context");
    pos[0] = 0;
    seq[0] = 1;
    CHECK(pio_model_forward(m, &b, NULL, &err) == PIO_ERR_RANGE);
    CHECK_ERR(err, "sequence slot 1");
    pio_model_free(m);
}

static void test_bad_configs(void) {
    pio_error err;
    pio_load_opts o = pio_load_opts_default();
    o.synthetic = true;
    CHECK(pio_model_load("/nonexistent/model", &o, &err) == NULL);
    CHECK(err.status == PIO_ERR_IO);
    CHECK_ERR(err, "does not exist");

    write_file("config.json", "{\"hidden_size\": 8}");
    CHECK(pio_model_load(dir, &o, &err) == NULL);
    CHECK_ERR(err, "no 'architectures'");

    write_file("config.json", "{\"architectures\": [\"LlamaForCausalLM\"]}");
    CHECK(pio_model_load(dir, &o, &err) == NULL);
    CHECK(err.status == PIO_ERR_UNSUPPORTED);
    CHECK_ERR(err, "unsupported architecture 'LlamaForCausalLM'");
    CHECK_ERR(err, "Qwen3ForCausalLM");

    write_file("config.json", "{\"architectures\": [\"Qwen3ForCausalLM\"], \"vocab_size\": 10}");
    CHECK(pio_model_load(dir, &o, &err) == NULL);
    CHECK_ERR(err, "hidden_size");

    write_file("config.json", "{not json");
    CHECK(pio_model_load(dir, &o, &err) == NULL);
    CHECK(err.status == PIO_ERR_FORMAT);
    write_file("config.json", tiny_config);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/pio-test-model-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    write_file("config.json", tiny_config);
    int64_t live = pio_debug_live_tensors(), heap = pio_debug_heap_bytes();
    test_batch_equivalence();
    test_determinism();
    test_bad_batches();
    test_bad_configs();
    CHECK_MSG(pio_debug_live_tensors() == live, "%lld tensors leaked",
              (long long)(pio_debug_live_tensors() - live));
    CHECK(pio_debug_heap_bytes() == heap);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    TEST_MAIN_END();
}
