/* tests/c/cuda_test_util.h: the helpers the CUDA op tests share (random host
 * tensors, uploads poisoned with NaN, downloads, the attention cases both
 * test), for test-cuda-ops.c and test-cuda-paged.c. The including file defines, before including this:
 *
 *   static pio_cuda_ctx *ctx;   the context every helper uses
 *   static uint64_t rng;        the random state, seeded as that test wants
 *
 * so that each test keeps its own seed and therefore its own inputs. */
#ifndef PIO_CUDA_TEST_UTIL_H
#define PIO_CUDA_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"
#include "cuda_ops.h"

static float frand(void) { /* uniform [-1, 1) (xorshift) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static int irand(int n) { return (int)((frand() * 0.5f + 0.5f) * (float)n) % n; }

static void die(const char *what, const pio_error *err) {
    fprintf(stderr, "%s: %s\n", what, err->msg);
    exit(2);
}

static pio_tensor *host(pio_dtype dt, int ndim, const int64_t *shape) {
    pio_error err = {0};
    pio_tensor *t = pio_tensor_new(dt, ndim, shape, &err);
    if (!t) die("host tensor", &err);
    return t;
}

/* Host f32 tensor of random values × scale, rounded to bf16 values if asked. */
static pio_tensor *hrand(int ndim, const int64_t *shape, float scale, bool bf16_values) {
    pio_tensor *t = host(PIO_F32, ndim, shape);
    float *p = pio_tensor_data(t);
    for (int64_t i = 0; i < pio_tensor_numel(t); i++) {
        p[i] = frand() * scale;
        if (bf16_values) p[i] = pio_round_bf16(p[i]);
    }
    return t;
}

static pio_tensor *dev(const pio_tensor *h, pio_dtype dt) {
    pio_error err = {0};
    pio_tensor *t = pio_cuda_upload(ctx, h, dt, &err);
    if (!t) die("upload", &err);
    return t;
}

/* A device tensor filled with NaN: elements a kernel forgets stay NaN. */
static pio_tensor *dpoison(pio_dtype dt, int ndim, const int64_t *shape) {
    pio_tensor *h = host(PIO_F32, ndim, shape);
    float *p = pio_tensor_data(h);
    for (int64_t i = 0; i < pio_tensor_numel(h); i++) p[i] = NAN;
    pio_tensor *d = dev(h, dt);
    pio_tensor_free(h);
    return d;
}

/* Device tensor → new host f32 tensor (synchronises). */
static pio_tensor *down(const pio_tensor *d) {
    pio_error err = {0};
    pio_tensor *h = host(PIO_F32, d->ndim, d->shape);
    if (pio_cuda_copy_to_host(ctx, h, d, &err) != PIO_OK) die("download", &err);
    return h;
}

static void dfree(pio_tensor *t) { pio_cuda_tensor_free(ctx, t); }

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define NDIM(...) ((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#define H(...) host(PIO_F32, NDIM(__VA_ARGS__), SHAPE(__VA_ARGS__))
#define HR(scale, bf, ...) hrand(NDIM(__VA_ARGS__), SHAPE(__VA_ARGS__), scale, bf)
#define DP(dt, ...) dpoison(dt, NDIM(__VA_ARGS__), SHAPE(__VA_ARGS__))

static float *fp(const pio_tensor *t) { return pio_tensor_data(t); }
static const char *dtn(pio_dtype dt) { return pio_dtype_info(dt)->name; }

/* Attention inputs: n tokens, each a (sequence slot, position). */
typedef struct {
    const char *name;
    int n;
    int32_t seq[300], pos[300];
} attn_case;

/* short: contexts under one tile of 32 keys and at a tile's edges */
static void case_short(attn_case *c) {
    static const int32_t s[] = {0, 1, 2, 0, 1, 2}, p[] = {0, 5, 31, 32, 33, 64};
    c->name = "short";
    c->n = 6;
    memcpy(c->seq, s, sizeof s);
    memcpy(c->pos, p, sizeof p);
}
/* prompt: 150 consecutive positions of slot 1, then a chunk of slot 0 starting at
 * position 40 (its first 40 keys came from an earlier chunk) */
static void case_prompt(attn_case *c) {
    c->name = "prompt";
    c->n = 0;
    for (int t = 0; t < 150; t++) c->seq[c->n] = 1, c->pos[c->n++] = t;
    for (int t = 40; t < 97; t++) c->seq[c->n] = 0, c->pos[c->n++] = t;
}

#endif
