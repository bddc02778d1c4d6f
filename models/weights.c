/* Weights for an architecture: from a memory-mapped checkpoint (zero copy when
 * the dtype already matches) or synthesized from a seed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

/* ---- seeded normal numbers, identical on every machine and thread count ---- */

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t name_hash(const char *s) { /* FNV-1a */
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

enum { SYNTH_CHUNK = 1 << 16 };

typedef struct {
    void *data;
    pio_dtype dtype;
    int64_t n;
    uint64_t seed;
    float std;
} synth_job;

/* Each chunk has its own stream, so the result does not depend on threading. */
static void synth_chunk(void *ctx, int task, int thread) {
    const synth_job *job = ctx;
    uint64_t state = job->seed + (uint64_t)task * 0x632be59bd9b4e019ull;
    int64_t begin = (int64_t)task * SYNTH_CHUNK;
    int64_t end = begin + SYNTH_CHUNK < job->n ? begin + SYNTH_CHUNK : job->n;
    for (int64_t i = begin; i < end; i += 2) {
        /* Box–Muller in f32 (the double version made loading a 4B model take a minute):
         * two normals from two uniforms, u1 in (0, 1]. */
        uint64_t r = splitmix64(&state);
        float u1 = ((float)(r >> 40) + 1.0f) * 0x1.0p-24f;
        float u2 = (float)((r >> 16) & 0xffffff) * 0x1.0p-24f;
        float radius = sqrtf(-2.0f * logf(u1)) * job->std;
        float v[2] = {radius * cosf(6.2831853f * u2), radius * sinf(6.2831853f * u2)};
        for (int j = 0; j < 2 && i + j < end; j++) {
            if (job->dtype == PIO_F32) ((float *)job->data)[i + j] = v[j];
            else ((uint16_t *)job->data)[i + j] = pio_f32_to_bf16(v[j]);
        }
    }
}

static pio_tensor *synthesize(pio_weight_source *ws, const char *name, int ndim,
                              const int64_t *shape, pio_weight_kind kind, pio_error *err) {
    pio_dtype dt = kind == PIO_WEIGHT_NORM ? PIO_F32 : ws->dtype;
    if (ws->model && ws->model->cuda && kind == PIO_WEIGHT_MATRIX) /* made where it is used */
        return pio_model_cuda_random(ws->model, dt, ndim, shape, ws->seed ^ name_hash(name), err);
    pio_tensor *t = pio_tensor_new(dt, ndim, shape, err);
    if (!t) return NULL;
    int64_t n = pio_tensor_numel(t);
    if (kind == PIO_WEIGHT_NORM) {
        for (int64_t i = 0; i < n; i++) ((float *)pio_tensor_data(t))[i] = 1.0f;
        return t;
    }
    uint64_t s = ws->seed ^ name_hash(name);
    synth_job job = {pio_tensor_data(t), dt, n, splitmix64(&s), 0.02f};
    pio_threadpool_run(ws->pool, (int)((n + SYNTH_CHUNK - 1) / SYNTH_CHUNK), synth_chunk, &job);
    return t;
}

/* ---- from the checkpoint --------------------------------------------------- */

static pio_tensor *from_checkpoint(pio_weight_source *ws, const char *name, int ndim,
                                   const int64_t *shape, pio_weight_kind kind, pio_error *err) {
    pio_tensor *t = pio_safetensors_get(ws->st, name, err);
    if (!t) {
        if (err->status == PIO_ERR_NOT_FOUND)
            pio_error_set(err, PIO_ERR_NOT_FOUND, "missing tensor '%s' in the checkpoint at %s",
                          name, ws->dir);
        return NULL;
    }
    bool same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char got[96], want[96] = "[";
        size_t u = 1;
        for (int i = 0; i < ndim; i++)
            u += (size_t)snprintf(want + u, sizeof want - u, "%s%lld", i ? ", " : "",
                                  (long long)shape[i]);
        snprintf(want + u, sizeof want - u, "]");
        pio_error_set(err, PIO_ERR_FORMAT,
                      "tensor '%s' has shape %s in the checkpoint but config.json implies %s",
                      name, pio_shape_str(t, got, sizeof got), want);
        pio_tensor_free(t);
        return NULL;
    }
    pio_dtype want_dt = kind == PIO_WEIGHT_NORM ? PIO_F32 : ws->dtype;
    bool round_norm = kind == PIO_WEIGHT_NORM && ws->dtype == PIO_BF16 && t->dtype == PIO_F32;
    if (t->dtype == want_dt && !round_norm) return t; /* memory-mapped, zero copy */
    pio_tensor *conv = pio_tensor_to(t, want_dt, err);
    pio_tensor_free(t);
    if (conv && round_norm) {
        /* A bf16 model multiplies by bf16 norm weights: an f32 checkpoint loaded in bf16
         * mode gets them rounded as torch's .to(bfloat16) would. */
        float *w = pio_tensor_data(conv);
        for (int64_t i = 0; i < pio_tensor_numel(conv); i++) w[i] = pio_round_bf16(w[i]);
    }
    return conv;
}

/* ---- dry runs (pio_model_estimate) and surgery ---------------------------- */

/* A header with the weight's shape over no bytes: what an estimate counts.
 * Loaders may read its shape; nothing reads its data. */
static pio_tensor *dry_header(pio_weight_source *ws, int ndim, const int64_t *shape,
                              pio_weight_kind kind, pio_error *err) {
    int64_t none = 0;
    pio_tensor *t = pio_tensor_new(kind == PIO_WEIGHT_NORM ? PIO_F32 : ws->dtype, 1, &none, err);
    if (!t) return NULL;
    t->ndim = ndim;
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t->shape[i] = shape[i];
        t->stride[i] = stride;
        stride *= shape[i];
    }
    return t;
}

pio_tensor *pio_weights_fuse(pio_model *m, pio_tensor *const *parts, int n, pio_error *err) {
    int64_t rows = 0, cols = parts[0]->shape[1];
    for (int i = 0; i < n; i++) {
        if (parts[i]->ndim != 2 || parts[i]->shape[1] != cols ||
            parts[i]->dtype != parts[0]->dtype || !pio_tensor_is_contiguous(parts[i])) {
            pio_error_set(err, PIO_ERR_INVALID, "only contiguous 2-D weights of one dtype and "
                          "width can be fused");
            return NULL;
        }
        rows += parts[i]->shape[0];
    }
    int64_t shape[2] = {rows, cols};
    bool device = m && m->cuda; /* a model on the GPU fuses there (model_cuda.c) */
    pio_tensor *fused = device ? pio_model_cuda_tensor(m, parts[0]->dtype, 2, shape, err)
                               : pio_tensor_new(parts[0]->dtype, 2, shape, err);
    if (!fused) return NULL;
    char *dst = pio_tensor_data(fused);
    for (int i = 0, row = 0; i < n; i++) {
        if (device) {
            pio_tensor rows = *fused;
            rows.shape[0] = parts[i]->shape[0];
            rows.offset += (size_t)row * (size_t)cols * pio_dtype_info(fused->dtype)->size;
            if (pio_model_cuda_copy(m, &rows, parts[i], err) != PIO_OK) {
                pio_tensor_free(fused);
                return NULL;
            }
        } else {
            memcpy(dst, pio_tensor_data(parts[i]), pio_tensor_nbytes(parts[i]));
            dst += pio_tensor_nbytes(parts[i]);
        }
        row += (int)parts[i]->shape[0];
    }
    /* Each part becomes a view of its rows of the fused matrix, in place, so
     * that every pointer to it stays valid and its own bytes are released. */
    for (int i = 0, row = 0; i < n; i++) {
        int64_t len = parts[i]->shape[0];
        pio_tensor *view = pio_tensor_narrow(fused, 0, row, len, err);
        if (!view) { /* cannot happen for rows inside the matrix; leave the parts as they are */
            pio_tensor_free(fused);
            return NULL;
        }
        row += (int)len;
        pio_storage *old = parts[i]->storage;
        *parts[i] = *view;
        pio_storage_retain(parts[i]->storage);
        pio_tensor_free(view);
        if (device) pio_model_cuda_release(m, old);
        else pio_storage_release(old);
    }
    return fused;
}

pio_tensor *pio_weights_load(pio_weight_source *ws, const char *name, int ndim,
                             const int64_t *shape, pio_weight_kind kind, pio_error *err) {
    pio_tensor *t = ws->dry_run     ? dry_header(ws, ndim, shape, kind, err)
                    : ws->synthetic ? synthesize(ws, name, ndim, shape, kind, err)
                                    : from_checkpoint(ws, name, ndim, shape, kind, err);
    pio_model *m = ws->model;
    /* A model on the GPU: each weight goes to the device as it loads, so the
     * host never holds more than one of them beyond the memory map. */
    if (t && m && m->cuda && t->storage->device == PIO_DEVICE_CPU && !ws->dry_run)
        t = pio_model_cuda_upload(m, t, err);
    if (!t) return NULL;
    if (m && m->n_weights == m->cap_weights) { /* list it for pio_model_save */
        size_t cap = m->cap_weights ? 2 * m->cap_weights : 64;
        void *grown = realloc(m->weights, cap * sizeof *m->weights);
        if (grown) m->weights = grown, m->cap_weights = cap;
    }
    if (m && m->n_weights < m->cap_weights) {
        char *copy = strdup(name);
        if (copy) m->weights[m->n_weights++] = (struct pio_named_weight){copy, t};
    }
    ws->bytes += pio_tensor_nbytes(t);
    ws->params += pio_tensor_numel(t);
    ws->done++;
    if (ws->progress) ws->progress(ws->progress_ud, "loading weights", ws->done, ws->total);
    return t;
}
