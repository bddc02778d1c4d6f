/* tests/c/tensor_test_util.h: random host tensors for the CPU kernel tests
 * (test-ops.c, test-moe.c). The including file defines its random state,
 * seeded as that test wants, before including this:
 *
 *   static uint64_t rng;
 */
#ifndef PIO_TENSOR_TEST_UTIL_H
#define PIO_TENSOR_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "pio/tensor.h"

/* Uniform in [-1, 1) (xorshift). */
static float frand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static pio_tensor *tensor(pio_dtype dt, int ndim, const int64_t *shape) {
    pio_error err = {0};
    pio_tensor *t = pio_tensor_new(dt, ndim, shape, &err);
    if (!t) {
        fprintf(stderr, "cannot allocate a test tensor: %s\n", err.msg);
        exit(2);
    }
    return t;
}

/* Random values times `scale` (bf16 tensors hold them rounded). */
static pio_tensor *rand_tensor(pio_dtype dt, int ndim, const int64_t *shape, float scale) {
    pio_tensor *t = tensor(dt, ndim, shape);
    for (int64_t i = 0; i < pio_tensor_numel(t); i++) pio_tensor_set(t, i, frand() * scale);
    return t;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define NDIM(...) ((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#define T(dt, ...) tensor(dt, NDIM(__VA_ARGS__), SHAPE(__VA_ARGS__))
#define R(dt, ...) rand_tensor(dt, NDIM(__VA_ARGS__), SHAPE(__VA_ARGS__), 1.0f)

static float *fdata(const pio_tensor *t) { return pio_tensor_data(t); }

#endif
