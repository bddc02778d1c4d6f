/* The loader's footprint estimate (what pio.memory refuses models with) and
 * model surgery on loaded weights: an estimate equals what loading takes, a
 * model over its byte budget is refused before anything is allocated, fused
 * projections give the same logits, and removed layers take their KV cache. */
#include <stdlib.h>
#include <unistd.h>

#include "pio/model.h"
#include "pio_test.h"

static char dir[256];

static const char *tiny_config =
    "{\"architectures\": [\"Qwen3ForCausalLM\"], \"vocab_size\": 97, \"hidden_size\": 48,"
    " \"intermediate_size\": 80, \"num_hidden_layers\": 3, \"num_attention_heads\": 4,"
    " \"num_key_value_heads\": 2, \"head_dim\": 16, \"max_position_embeddings\": 64,"
    " \"rms_norm_eps\": 1e-6, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false}";

static pio_load_opts synthetic(pio_dtype dt) {
    pio_load_opts o = pio_load_opts_default();
    o.dtype = dt;
    o.threads = 2;
    o.synthetic = true;
    o.seed = 7;
    return o;
}

static float *logits_of(pio_model *m, const int32_t *ids, int n, size_t *len) {
    int32_t pos[16], seq[16];
    for (int i = 0; i < n; i++) pos[i] = i, seq[i] = 0;
    pio_batch b = {n, ids, pos, seq, NULL};
    const pio_tensor *logits;
    pio_error err;
    CHECK_MSG(pio_model_forward(m, &b, &logits, &err) == PIO_OK, "%s", err.msg);
    *len = (size_t)pio_tensor_numel(logits);
    float *copy = malloc(*len * sizeof *copy);
    memcpy(copy, pio_tensor_data(logits), *len * sizeof *copy);
    return copy;
}

static void test_estimate_matches_load(void) {
    for (int d = 0; d < 2; d++) {
        pio_load_opts o = synthetic(d ? PIO_BF16 : PIO_F32);
        o.max_seqs = 2;
        pio_model_footprint fp;
        pio_error err;
        int64_t tensors = pio_debug_live_tensors(), heap = pio_debug_heap_bytes();
        CHECK_MSG(pio_model_estimate(dir, &o, &fp, &err) == PIO_OK, "%s", err.msg);
        CHECK(pio_debug_live_tensors() == tensors && pio_debug_heap_bytes() == heap);
        pio_model *m = pio_model_load(dir, &o, &err);
        CHECK_MSG(m != NULL, "%s", err.msg);
        if (!m) return;
        pio_model_info info;
        pio_model_get_info(m, &info);
        CHECK(fp.weight_bytes == info.weight_bytes);
        CHECK(fp.kv_bytes == info.kv_bytes);
        CHECK(fp.n_params == info.n_params);
        CHECK(fp.n_layer == 3 && fp.max_seqs == 2 && fp.n_ctx == 64);
        CHECK(strcmp(fp.architecture, "Qwen3ForCausalLM") == 0);
        CHECK(fp.total_bytes == fp.weight_bytes + fp.kv_bytes + fp.activation_bytes);
        /* A prompt of a whole chunk (here the whole context) takes no more than estimated. */
        int32_t ids[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
        size_t len;
        free(logits_of(m, ids, 1, &len));
        pio_model_get_info(m, &info);
        CHECK(info.activation_bytes > 0 && info.activation_bytes <= fp.activation_bytes);
        pio_model_free(m);
    }
}

static void test_budget_refuses_before_allocating(void) {
    pio_load_opts o = synthetic(PIO_F32);
    pio_model_footprint fp;
    pio_error err;
    CHECK(pio_model_estimate(dir, &o, &fp, &err) == PIO_OK);
    int64_t tensors = pio_debug_live_tensors(), heap = pio_debug_heap_bytes();
    o.max_bytes = fp.total_bytes - 1;
    CHECK(pio_model_load(dir, &o, &err) == NULL);
    CHECK(err.status == PIO_ERR_OOM);
    CHECK_ERR(err, "Qwen3ForCausalLM does not fit: it needs ");
    CHECK_ERR(err, "but the memory budget is ");
    CHECK(pio_debug_live_tensors() == tensors && pio_debug_heap_bytes() == heap);
    o.max_bytes = fp.total_bytes;
    pio_model *m = pio_model_load(dir, &o, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    pio_model_free(m);
}

static void test_fuse_keeps_logits(void) {
    const int32_t ids[5] = {3, 14, 15, 92, 65};
    for (int d = 0; d < 2; d++) {
        pio_load_opts o = synthetic(d ? PIO_BF16 : PIO_F32);
        pio_error err;
        pio_model *m = pio_model_load(dir, &o, &err);
        CHECK_MSG(m != NULL, "%s", err.msg);
        if (!m) return;
        size_t n;
        float *before = logits_of(m, ids, 5, &n);
        pio_model_info info;
        pio_model_get_info(m, &info);
        pio_surgery s = {.fuse_qkv = true, .fuse_gate_up = true};
        pio_surgery_report rep;
        CHECK_MSG(pio_model_surgery(m, &s, &rep, &err) == PIO_OK, "%s", err.msg);
        CHECK(rep.fused_qkv == 3 && rep.fused_gate_up == 3 && rep.removed_layers == 0);
        CHECK(rep.weight_bytes_after == info.weight_bytes && rep.copied_bytes > 0);
        float *after = logits_of(m, ids, 5, &n);
        float worst = 0, scale = 0;
        for (size_t i = 0; i < n; i++) {
            worst = fmaxf(worst, fabsf(after[i] - before[i]));
            scale = fmaxf(scale, fabsf(before[i]));
        }
        CHECK_MSG(worst <= 1e-5f * scale, "max |Δlogit| %g of max |logit| %g", worst, scale);
        CHECK(pio_model_surgery(m, &s, &rep, &err) == PIO_OK); /* already fused: nothing to do */
        CHECK(rep.fused_qkv == 0 && rep.fused_gate_up == 0);
        free(before);
        free(after);
        pio_model_free(m);
    }
}

static void test_remove_layers(void) {
    pio_load_opts o = synthetic(PIO_F32);
    pio_error err;
    pio_model *m = pio_model_load(dir, &o, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (!m) return;
    pio_model_info info;
    pio_model_get_info(m, &info);
    int32_t bad[2] = {1, 3};
    pio_surgery s = {.remove_layers = bad, .n_remove = 2};
    pio_surgery_report rep;
    CHECK(pio_model_surgery(m, &s, &rep, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "layer 3 is outside [0, 3) (layers are numbered as in the checkpoint");
    int32_t twice[2] = {1, 1};
    s.remove_layers = twice;
    CHECK(pio_model_surgery(m, &s, &rep, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "layer 1 is named twice");
    int32_t all[3] = {2, 0, 1};
    s.remove_layers = all;
    s.n_remove = 3;
    CHECK(pio_model_surgery(m, &s, &rep, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "removing all 3 layers would leave no model");

    int32_t one[1] = {1};
    s = (pio_surgery){.remove_layers = one, .n_remove = 1, .fuse_qkv = true};
    CHECK_MSG(pio_model_surgery(m, &s, &rep, &err) == PIO_OK, "%s", err.msg);
    CHECK(rep.removed_layers == 1 && rep.n_layer_before == 3 && rep.n_layer_after == 2);
    CHECK(rep.fused_qkv == 2);
    CHECK(rep.kv_bytes_after == info.kv_bytes / 3 * 2);
    CHECK(rep.weight_bytes_after < rep.weight_bytes_before);
    CHECK(rep.params_after < rep.params_before);
    pio_model_info after;
    pio_model_get_info(m, &after);
    CHECK(after.n_layer == 2 && after.kv_bytes == rep.kv_bytes_after);
    const int32_t ids[3] = {1, 2, 3};
    size_t n;
    free(logits_of(m, ids, 3, &n));
    CHECK(n == 3 * 97);
    pio_model_free(m);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/pio-test-surgery-%d", (int)getpid());
    char cmd[512];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    if (system(cmd) != 0) return 1;
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fputs(tiny_config, f);
    fclose(f);

    test_estimate_matches_load();
    test_budget_refuses_before_allocating();
    test_fuse_keeps_logits();
    test_remove_layers();

    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) return 1;
    TEST_MAIN_END();
}
