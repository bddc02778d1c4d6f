/* Loading a model (architecture from config.json, weights, tokenizer, KV
 * cache) and the architecture-independent half of the forward pass. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cpu_ops.h"
#include "kv_internal.h"
#include "model_internal.h"
#include "pio/json.h"

pio_load_opts pio_load_opts_default(void) {
    return (pio_load_opts){.dtype = PIO_BF16, .device = PIO_DEVICE_CPU, .threads = 0};
}

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Splits the user's path into the model directory and its config.json. */
static pio_status resolve_paths(const char *path, bool synthetic, char *dir, char *config,
                                size_t len, pio_error *err) {
    if (is_dir(path)) {
        snprintf(dir, len, "%s", path);
        snprintf(config, len, "%s/config.json", path);
        if (!is_file(config))
            return pio_error_set(err, PIO_ERR_IO, "model directory '%s' has no config.json", path);
        return PIO_OK;
    }
    if (is_file(path) && synthetic) {
        snprintf(config, len, "%s", path);
        snprintf(dir, len, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        else snprintf(dir, len, ".");
        return PIO_OK;
    }
    if (is_file(path))
        return pio_error_set(err, PIO_ERR_IO,
                             "'%s' is a file; pio.load wants a model directory "
                             "(or a config.json with synthetic=true)", path);
    return pio_error_set(err, PIO_ERR_IO, "model directory '%s' does not exist", path);
}

const char *pio_model_supported_architectures(void) {
    static char list[512];
    if (!list[0]) {
        size_t used = 0;
        for (int i = 0; pio_arch_table[i]; i++)
            for (int j = 0; pio_arch_table[i]->hf_names[j]; j++)
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%s",
                                         used ? ", " : "", pio_arch_table[i]->hf_names[j]);
    }
    return list;
}

static const pio_arch *pick_arch(const cJSON *config, const char *path, pio_error *err) {
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(config, "architectures");
    if (!cJSON_IsArray(archs) || cJSON_GetArraySize(archs) == 0) {
        pio_error_set(err, PIO_ERR_FORMAT, "%s has no 'architectures' list, so pio cannot tell "
                      "which model it describes (supported: %s)", path,
                      pio_model_supported_architectures());
        return NULL;
    }
    const cJSON *name;
    cJSON_ArrayForEach(name, archs) {
        if (cJSON_IsString(name)) {
            const pio_arch *a = pio_arch_find(name->valuestring);
            if (a) return a;
        }
    }
    const cJSON *first = cJSON_GetArrayItem(archs, 0);
    pio_error_set(err, PIO_ERR_UNSUPPORTED, "unsupported architecture '%s' (supported: %s)",
                  cJSON_IsString(first) ? first->valuestring : "?",
                  pio_model_supported_architectures());
    return NULL;
}

/* eos_token_id may be a number or a list, in generation_config.json or config.json. */
static void read_stop_ids(const cJSON *obj, pio_hparams *hp) {
    const cJSON *eos = cJSON_GetObjectItemCaseSensitive(obj, "eos_token_id");
    if (cJSON_IsNumber(eos)) {
        hp->stop_ids[0] = (int32_t)eos->valuedouble;
        hp->n_stop_ids = 1;
    } else if (cJSON_IsArray(eos)) {
        hp->n_stop_ids = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, eos) {
            if (cJSON_IsNumber(e) && hp->n_stop_ids < 8)
                hp->stop_ids[hp->n_stop_ids++] = (int32_t)e->valuedouble;
        }
    }
}

static pio_dtype kv_dtype(const pio_model *m) {
    return m->dtype == PIO_F32 ? PIO_F32 : PIO_BF16; /* as transformers' cache */
}

static size_t kv_cache_bytes(const pio_model *m) {
    return 2 * (size_t)m->hp.n_layer * (size_t)m->max_seqs * (size_t)m->n_ctx *
           (size_t)m->hp.n_head_kv * (size_t)m->hp.head_dim * pio_dtype_info(kv_dtype(m))->size;
}

/* A zero-filled cache tensor on the model's device. */
static pio_tensor *kv_tensor_new(pio_model *m, const int64_t *shape, pio_error *err) {
    if (m->cuda) return pio_model_cuda_tensor(m, kv_dtype(m), 4, shape, err);
    return pio_tensor_new(kv_dtype(m), 4, shape, err);
}

static pio_status alloc_kv_cache(pio_model *m, pio_error *err) {
    const pio_hparams *hp = &m->hp;
    int64_t shape[4] = {m->max_seqs, m->n_ctx, hp->n_head_kv, hp->head_dim};
    m->cache_k = calloc((size_t)hp->n_layer, sizeof *m->cache_k);
    m->cache_v = calloc((size_t)hp->n_layer, sizeof *m->cache_v);
    if (!m->cache_k || !m->cache_v) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    for (int l = 0; l < hp->n_layer; l++) {
        m->cache_k[l] = kv_tensor_new(m, shape, err);
        m->cache_v[l] = m->cache_k[l] ? kv_tensor_new(m, shape, err) : NULL;
        if (!m->cache_v[l]) {
            return pio_error_set(err, PIO_ERR_OOM,
                                 "out of memory for the KV cache: %zu MiB for %d sequence(s) of "
                                 "%d positions (lower ctx)", kv_cache_bytes(m) >> 20, m->max_seqs,
                                 m->n_ctx);
        }
        m->kv_bytes += 2 * pio_tensor_nbytes(m->cache_k[l]);
    }
    return PIO_OK;
}

static pio_status compute_inv_freq(pio_model *m, pio_error *err) {
    int half = m->hp.head_dim / 2;
    m->inv_freq = malloc((size_t)half * sizeof(float));
    if (!m->inv_freq) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    /* As transformers: base ** (arange(0, d, 2) / d) in f32, then 1 / that. */
    for (int i = 0; i < half; i++) {
        float exponent = (float)(2 * i) / (float)m->hp.head_dim;
        m->inv_freq[i] = 1.0f / powf((float)m->hp.rope_theta, exponent);
    }
    return PIO_OK;
}

static pio_status open_tokenizer(pio_model *m, const char *dir, pio_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    bool has = is_file(path);
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    has = has || is_file(path);
    if (!has) return PIO_OK; /* a bare synthetic config: ids only */
    m->tokenizer = pio_tokenizer_load(dir, err);
    if (!m->tokenizer) return pio_error_prefix(err, "loading the tokenizer");
    return PIO_OK;
}

static void read_sampling(const cJSON *gen, pio_sampler_params *p) {
    bool do_sample = false;
    double v;
    int64_t k;
    pio_json_bool(gen, "do_sample", false, false, &do_sample, "", NULL);
    if (!do_sample) return; /* transformers: greedy unless do_sample */
    if (!pio_json_double(gen, "temperature", false, 1.0, &v, "", NULL)) p->temperature = (float)v;
    if (!pio_json_int(gen, "top_k", false, 0, &k, "", NULL)) p->top_k = (int32_t)k;
    if (!pio_json_double(gen, "top_p", false, 1.0, &v, "", NULL)) p->top_p = (float)v;
    if (!pio_json_double(gen, "min_p", false, 0.0, &v, "", NULL)) p->min_p = (float)v;
    if (!pio_json_double(gen, "repetition_penalty", false, 1.0, &v, "", NULL))
        p->repetition_penalty = (float)v;
}

static pio_status load_generation_config(pio_model *m, const char *dir) {
    m->sampling = pio_sampler_default_params();
    m->sampling.temperature = 0.0f;
    char path[4096];
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    if (!is_file(path)) return PIO_OK;
    cJSON *gen = pio_json_read_file(path, NULL);
    if (gen) {
        read_stop_ids(gen, &m->hp);
        read_sampling(gen, &m->sampling);
    }
    cJSON_Delete(gen); /* a broken generation_config is not worth failing a load */
    return PIO_OK;
}

void pio_model_default_sampling(const pio_model *m, pio_sampler_params *out) {
    *out = m->sampling;
}

pio_device pio_model_auto_device(void) {
    return pio_model_cuda_available(NULL) ? PIO_DEVICE_CUDA : PIO_DEVICE_CPU;
}

bool pio_model_device_available(pio_device d, const char **why) {
    if (d == PIO_DEVICE_CPU) return true;
    return pio_model_cuda_available(why);
}

/* The part of loading that reads config.json alone: architecture, hyper-
 * parameters, stop ids, sampling defaults, context and slots. dir gets the
 * model directory. NULL and err on failure. */
static pio_model *prepare(const char *path, const pio_load_opts *opts, char *dir, size_t len,
                          pio_error *err) {
    char config_path[4096];
    if (resolve_paths(path, opts->synthetic, dir, config_path, len, err) != PIO_OK) return NULL;
    if (opts->dtype != PIO_F32 && opts->dtype != PIO_BF16) {
        pio_error_set(err, PIO_ERR_INVALID, "model dtype must be f32 or bf16, got %s",
                      pio_dtype_info(opts->dtype)->name);
        return NULL;
    }
    const char *why;
    if (!pio_model_device_available(opts->device, &why)) {
        pio_error_set(err, PIO_ERR_NOT_FOUND, "device '%s' is not available: %s",
                      pio_device_name(opts->device), why);
        return NULL;
    }

    cJSON *config = pio_json_read_file(config_path, err);
    if (!config) return NULL;
    pio_model *m = calloc(1, sizeof *m);
    if (!m) {
        cJSON_Delete(config);
        pio_error_set(err, PIO_ERR_OOM, "out of memory");
        return NULL;
    }
    m->dtype = opts->dtype;
    m->device = opts->device;
    m->round_bf16 = opts->dtype == PIO_BF16;
    m->arch = pick_arch(config, config_path, err);
    pio_status st = m->arch ? PIO_OK : err->status;
    if (st == PIO_OK) {
        snprintf(m->hp.architecture, sizeof m->hp.architecture, "%s",
                 cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(config, "architectures"), 0)
                     ->valuestring);
        read_stop_ids(config, &m->hp);
        st = m->arch->parse_config(config, &m->hp, err);
        if (st != PIO_OK) pio_error_prefix(err, "%s", config_path);
    }
    cJSON_Delete(config);
    if (st == PIO_OK) st = load_generation_config(m, dir);

    if (st == PIO_OK) {
        m->max_seqs = opts->max_seqs > 0 ? opts->max_seqs : 1;
        int32_t def_ctx = m->hp.n_ctx_train < 4096 ? m->hp.n_ctx_train : 4096;
        m->n_ctx = opts->ctx > 0 ? opts->ctx : def_ctx;
        if (m->n_ctx > m->hp.n_ctx_train)
            st = pio_error_set(err, PIO_ERR_INVALID,
                               "ctx %d exceeds the model's max_position_embeddings %d", m->n_ctx,
                               m->hp.n_ctx_train);
    }
    if (st != PIO_OK) {
        pio_model_free(m);
        return NULL;
    }
    return m;
}

/* ---- footprint: what a prepared model will take -------------------------------- */

/* The scratch of one prompt chunk: per token X, H, OUT [E]; Q, ATTN [H·D];
 * K, V [Hkv·D]; GATE, UP [F]; plus one row of SEL [E] and LOGITS [V]. */
static size_t activation_estimate(const pio_model *m) {
    const pio_hparams *hp = &m->hp;
    int64_t n = m->n_ctx < PIO_PROMPT_CHUNK ? m->n_ctx : PIO_PROMPT_CHUNK;
    int64_t per_token = 3 * (int64_t)hp->n_embd + 2 * (int64_t)hp->n_head * hp->head_dim +
                        2 * (int64_t)hp->n_head_kv * hp->head_dim + 2 * (int64_t)hp->n_ff;
    return sizeof(float) * (size_t)(n * per_token + hp->n_embd + hp->n_vocab);
}

/* Runs the architecture's weight loader dry: headers with shapes, no bytes. */
static pio_status footprint(pio_model *m, const char *dir, const pio_load_opts *opts,
                            pio_model_footprint *fp, pio_error *err) {
    pio_weight_source ws = {.dir = dir, .synthetic = opts->synthetic, .dtype = m->dtype,
                            .dry_run = true};
    pio_status st = m->arch->load_weights(m, &ws, err);
    if (m->arch_state) m->arch->free_weights(m);
    m->arch_state = NULL;
    size_t kv_bytes = 0;
    if (st == PIO_OK) st = pio_kv_bytes_for(m, &opts->kv, &kv_bytes, err);
    if (st) return st;
    const pio_hparams *hp = &m->hp;
    *fp = (pio_model_footprint){
        .family = m->arch->family, .n_params = ws.params, .dtype = m->dtype,
        .weight_bytes = ws.bytes, .kv_bytes = kv_bytes,
        .activation_bytes = activation_estimate(m), .n_vocab = hp->n_vocab, .n_ctx = m->n_ctx,
        .n_ctx_train = hp->n_ctx_train, .n_layer = hp->n_layer, .n_embd = hp->n_embd,
        .n_head = hp->n_head, .n_head_kv = hp->n_head_kv, .head_dim = hp->head_dim,
        .max_seqs = m->max_seqs};
    snprintf(fp->architecture, sizeof fp->architecture, "%s", hp->architecture);
    fp->total_bytes = fp->weight_bytes + fp->kv_bytes + fp->activation_bytes;
    return PIO_OK;
}

pio_status pio_model_estimate(const char *path, const pio_load_opts *opts_in,
                              pio_model_footprint *out, pio_error *err) {
    pio_load_opts opts = opts_in ? *opts_in : pio_load_opts_default();
    char dir[4096];
    pio_model *m = prepare(path, &opts, dir, sizeof dir, err);
    if (!m) return err->status;
    pio_status st = footprint(m, dir, &opts, out, err);
    pio_model_free(m);
    return st;
}

/* "1.50 GiB", "12.3 MiB", "512 KiB", "100 B" */
static const char *human_bytes(size_t n, char *buf, size_t len) {
    if (n >= (size_t)1 << 30) snprintf(buf, len, "%.2f GiB", (double)n / (1 << 30));
    else if (n >= (size_t)1 << 20) snprintf(buf, len, "%.1f MiB", (double)n / (1 << 20));
    else if (n >= 1024) snprintf(buf, len, "%.0f KiB", (double)n / 1024);
    else snprintf(buf, len, "%zu B", n);
    return buf;
}

/* Refuses, before anything is allocated, a model that does not fit max_bytes. */
static pio_status check_budget(pio_model *m, const char *dir, const pio_load_opts *opts,
                               pio_error *err) {
    pio_model_footprint fp;
    pio_status st = footprint(m, dir, opts, &fp, err);
    if (st || fp.total_bytes <= opts->max_bytes) return st;
    char total[32], w[32], kv[32], act[32], budget[32];
    return pio_error_set(err, PIO_ERR_OOM,
                         "%s does not fit: it needs %s (weights %s, KV cache %s, activations %s) "
                         "but the memory budget is %s", fp.architecture,
                         human_bytes(fp.total_bytes, total, sizeof total),
                         human_bytes(fp.weight_bytes, w, sizeof w),
                         human_bytes(fp.kv_bytes, kv, sizeof kv),
                         human_bytes(fp.activation_bytes, act, sizeof act),
                         human_bytes(opts->max_bytes, budget, sizeof budget));
}

pio_model *pio_model_load(const char *path, const pio_load_opts *opts_in, pio_error *err) {
    pio_error local;
    if (!err) err = &local;
    pio_load_opts opts = opts_in ? *opts_in : pio_load_opts_default();
    char dir[4096];
    pio_model *m = prepare(path, &opts, dir, sizeof dir, err);
    if (!m) return NULL;
    pio_status st = opts.max_bytes ? check_budget(m, dir, &opts, err) : PIO_OK;
    if (st == PIO_OK) {
        m->pool = pio_threadpool_new(opts.threads, err);
        m->threads = pio_threadpool_size(m->pool);
        if (!m->pool) st = err->status;
    }
    if (st == PIO_OK && m->device == PIO_DEVICE_CUDA) st = pio_model_cuda_init(m, err);
    if (st == PIO_OK) st = open_tokenizer(m, dir, err);
    if (st == PIO_OK && !opts.synthetic) {
        m->st = pio_safetensors_open(dir, err);
        if (!m->st) st = pio_error_prefix(err, "loading weights");
    }
    if (st == PIO_OK) {
        pio_weight_source ws = {.dir = dir, .st = m->st, .synthetic = opts.synthetic,
                                .seed = opts.seed, .dtype = m->dtype, .pool = m->pool,
                                .progress = opts.progress, .progress_ud = opts.progress_ud,
                                .model = m};
        st = m->arch->load_weights(m, &ws, err);
        m->weight_bytes = ws.bytes;
        m->n_params = ws.params;
    }
    if (st == PIO_OK) st = compute_inv_freq(m, err);
    /* The loader's tensors are the default cache; another layout is kv.c's. */
    if (st == PIO_OK && pio_kv_config_is_default(m, &opts.kv)) st = alloc_kv_cache(m, err);
    if (st == PIO_OK) st = pio_kv_init(m, &opts.kv, err);
    if (st == PIO_OK && m->cuda) st = pio_model_cuda_prepare(m, err);
    if (st != PIO_OK) {
        pio_model_free(m);
        return NULL;
    }
    return m;
}

void pio_model_free(pio_model *m) {
    if (!m) return;
    if (m->arch && m->arch_state) m->arch->free_weights(m);
    for (int l = 0; m->cache_k && l < m->hp.n_layer; l++) pio_tensor_free(m->cache_k[l]);
    for (int l = 0; m->cache_v && l < m->hp.n_layer; l++) pio_tensor_free(m->cache_v[l]);
    free(m->cache_k);
    free(m->cache_v);
    m->cache_k = m->cache_v = NULL;
    pio_kv_free(m);
    for (int i = 0; i < PIO_SLOT_COUNT; i++) pio_tensor_free(m->scratch.buf[i]);
    for (size_t i = 0; i < m->n_weights; i++) free(m->weights[i].name);
    free(m->weights);
    free(m->inv_freq);
    pio_model_cuda_free(m); /* after every device tensor above */
    pio_tokenizer_free(m->tokenizer);
    pio_safetensors_close(m->st);
    pio_threadpool_free(m->pool);
    free(m);
}

pio_status pio_scratch(pio_model *m, enum pio_scratch_slot slot, int64_t n, int64_t width,
                       pio_tensor *view, pio_error *err) {
    if (m->cuda) return pio_model_cuda_scratch(m, slot, n, width, view, err);
    pio_tensor *buf = m->scratch.buf[slot];
    if (!buf || pio_tensor_numel(buf) < n * width) {
        pio_tensor_free(buf);
        int64_t shape[1] = {n * width};
        buf = m->scratch.buf[slot] = pio_tensor_new(PIO_F32, 1, shape, err);
        if (!buf) return pio_error_prefix(err, "activations for %lld tokens", (long long)n);
    }
    int64_t shape[2] = {n, width};
    *view = pio_reshape(buf, 2, shape);
    return PIO_OK;
}

static pio_status check_batch(const pio_model *m, const pio_batch *b, pio_error *err) {
    if (b->n_tokens <= 0) return pio_error_set(err, PIO_ERR_INVALID, "empty batch");
    for (int32_t i = 0; i < b->n_tokens; i++) {
        if (b->token[i] < 0 || b->token[i] >= m->hp.n_vocab)
            return pio_error_set(err, PIO_ERR_RANGE,
                                 "token id %d at batch index %d is outside the vocabulary "
                                 "[0, %d)", b->token[i], i, m->hp.n_vocab);
        if (b->seq[i] < 0 || b->seq[i] >= m->max_seqs)
            return pio_error_set(err, PIO_ERR_RANGE,
                                 "sequence slot %d is outside [0, %d) (raise max_seqs)",
                                 b->seq[i], m->max_seqs);
        if (b->pos[i] < 0 || b->pos[i] >= pio_kv_max_pos(m))
            return pio_error_set(err, PIO_ERR_RANGE,
                                 "position %d is beyond the context of %d tokens", b->pos[i],
                                 m->n_ctx);
    }
    return PIO_OK;
}

pio_status pio_model_forward(pio_model *m, const pio_batch *b, const pio_tensor **logits,
                             pio_error *err) {
    pio_status st = check_batch(m, b, err);
    if (st == PIO_OK) st = pio_kv_prepare(m, b, err); /* room, copy on write, tokens */
    if (st != PIO_OK) return st;
    int32_t n_out = 0;
    for (int32_t i = 0; i < b->n_tokens; i++) n_out += !b->logits || b->logits[i];
    if (m->cuda) return pio_model_cuda_forward(m, b, n_out, logits, err);
    st = pio_scratch(m, PIO_SLOT_LOGITS, n_out ? n_out : 1, m->hp.n_vocab, &m->logits, err);
    if (st != PIO_OK) return st;
    m->logits.shape[0] = n_out;
    st = m->arch->forward(m, b, &m->logits, err);
    if (st == PIO_OK) pio_kv_trim(m, b); /* windowed attention: blocks out of reach go back */
    if (logits) *logits = &m->logits;
    return st;
}

static size_t activation_bytes(const pio_model *m) {
    size_t n = 0;
    for (int i = 0; i < PIO_SLOT_COUNT; i++)
        if (m->scratch.buf[i]) n += pio_tensor_nbytes(m->scratch.buf[i]);
    return n + pio_model_cuda_scratch_bytes(m);
}

void pio_model_get_info(const pio_model *m, pio_model_info *info) {
    *info = (pio_model_info){
        .architecture = m->hp.architecture, .family = m->arch->family,
        .n_params = m->n_params, .dtype = m->dtype, .device = m->device,
        .threads = m->threads, .weight_bytes = m->weight_bytes, .kv_bytes = m->kv_bytes,
        .activation_bytes = activation_bytes(m),
        .n_vocab = m->hp.n_vocab, .n_ctx = m->n_ctx, .n_ctx_train = m->hp.n_ctx_train,
        .n_layer = m->hp.n_layer, .n_embd = m->hp.n_embd, .n_head = m->hp.n_head,
        .n_head_kv = m->hp.n_head_kv, .head_dim = m->hp.head_dim, .max_seqs = m->max_seqs};
}

const pio_tokenizer *pio_model_tokenizer(const pio_model *m) { return m->tokenizer; }

const int32_t *pio_model_stop_ids(const pio_model *m, size_t *n) {
    *n = (size_t)m->hp.n_stop_ids;
    return m->hp.stop_ids;
}

/* ---- surgery --------------------------------------------------------------- */

static int cmp_int32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

void pio_model_forget_weights(pio_model *m, pio_tensor *const *ts, size_t n) {
    size_t kept = 0;
    for (size_t i = 0; i < m->n_weights; i++) {
        bool gone = false;
        for (size_t j = 0; j < n && !gone; j++) gone = m->weights[i].t == ts[j];
        if (gone) free(m->weights[i].name);
        else m->weights[kept++] = m->weights[i];
    }
    m->n_weights = kept;
}

/* After removing layers (sorted), renames the kept layers' weights to their new
 * numbers ("model.layers.3." → "model.layers.2." when one layer below went), so
 * that pio_model_save writes a checkpoint of the smaller model that loads back. */
static void renumber_weights(pio_model *m, const int32_t *layers, size_t n) {
    static const char prefix[] = "model.layers.";
    for (size_t i = 0; i < m->n_weights; i++) {
        char *name = m->weights[i].name, *end;
        if (strncmp(name, prefix, sizeof prefix - 1) != 0) continue;
        long l = strtol(name + sizeof prefix - 1, &end, 10);
        if (*end != '.') continue;
        long below = 0;
        while ((size_t)below < n && layers[below] < l) below++;
        if (below == 0) continue;
        size_t len = strlen(name) + 1;
        char *renamed = malloc(len); /* the new number is never longer */
        if (!renamed) continue;      /* keeps the old name: save writes a stale one, no crash */
        snprintf(renamed, len, "%s%ld%s", prefix, l - below, end);
        free(name);
        m->weights[i].name = renamed;
    }
}

/* Drops the KV cache of the removed layers (sorted) and closes the gaps. */
static void remove_kv_layers(pio_model *m, const int32_t *layers, size_t n) {
    pio_kv_remove_layers(m, layers, n);
}

pio_status pio_model_surgery(pio_model *m, const pio_surgery *s, pio_surgery_report *rep,
                             pio_error *err) {
    *rep = (pio_surgery_report){.n_layer_before = m->hp.n_layer, .params_before = m->n_params,
                                .weight_bytes_before = m->weight_bytes,
                                .kv_bytes_before = m->kv_bytes};
    if (!m->arch->remove_layers || !m->arch->fuse)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "model surgery is not supported for %s yet",
                             m->hp.architecture);
    if (m->cuda) /* fusing copies host bytes; removing would need the device cache renumbered */
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "model surgery runs on CPU models only (load with device='cpu')");
    int32_t *layers = NULL;
    if (s->n_remove) {
        layers = malloc(s->n_remove * sizeof *layers);
        if (!layers) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
        memcpy(layers, s->remove_layers, s->n_remove * sizeof *layers);
        qsort(layers, s->n_remove, sizeof *layers, cmp_int32);
        pio_status st = PIO_OK;
        for (size_t i = 0; i < s->n_remove && st == PIO_OK; i++) {
            if (layers[i] < 0 || layers[i] >= m->hp.n_layer)
                st = pio_error_set(err, PIO_ERR_INVALID,
                                   "layer %d is outside [0, %d) (layers are numbered as in the "
                                   "checkpoint: model.layers.0 is the first)", layers[i],
                                   m->hp.n_layer);
            else if (i > 0 && layers[i] == layers[i - 1])
                st = pio_error_set(err, PIO_ERR_INVALID, "layer %d is named twice", layers[i]);
        }
        if (st == PIO_OK && s->n_remove >= (size_t)m->hp.n_layer)
            st = pio_error_set(err, PIO_ERR_INVALID,
                               "removing all %d layers would leave no model", m->hp.n_layer);
        if (st != PIO_OK) {
            free(layers);
            return st;
        }
        m->arch->remove_layers(m, layers, s->n_remove);
        renumber_weights(m, layers, s->n_remove);
        remove_kv_layers(m, layers, s->n_remove);
        rep->removed_layers = (int32_t)s->n_remove;
        free(layers);
    }
    pio_status st = PIO_OK;
    if (s->fuse_qkv || s->fuse_gate_up) st = m->arch->fuse(m, s->fuse_qkv, s->fuse_gate_up, rep, err);
    rep->n_layer_after = m->hp.n_layer;
    rep->params_after = m->n_params;
    rep->weight_bytes_after = m->weight_bytes;
    rep->kv_bytes_after = m->kv_bytes;
    return st;
}
