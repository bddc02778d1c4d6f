/* test-moe: the mixture-of-experts kernels (kernels/cpu/moe.c) against plain
 * scalar references (and the grouped matmul against one matmul per job),
 * the pio_build_moe layer builder against a whole-block
 * reference in f32 and bf16 modes (and that experts no token picks are never
 * computed), and the Qwen3-MoE loader: both checkpoint layouts give the same
 * model, batching does not change the logits, bad configs and checkpoints
 * fail with clear messages. */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cpu_ops.h"
#include "layers.h"
#include "pio/safetensors.h"
#include "pio_test.h"

/* ---- helpers ------------------------------------------------------------- */

static uint64_t rng = 0x2545f4914f6cdd1dull;
#include "tensor_test_util.h"
static float rb(float v) { return pio_round_bf16(v); }

/* ---- route ----------------------------------------------------------------- */

/* The reference router, in double, written as transformers' routers read:
 * scores, choice = scores + bias, group mask, top-k by choice (lower id on
 * ties), weights from the scores, normalised, scaled, cast. Returns the gap
 * between the k-th and (k+1)-th choice (to skip rows where f32 vs double could
 * pick differently). */
static double ref_route(const float *logits, int E, const pio_moe_route_params *p, int *ids,
                        double *w) {
    double s[E], c[E];
    bool taken[E];
    double max = -INFINITY, sum = 0;
    for (int e = 0; e < E; e++) max = fmax(max, logits[e]);
    for (int e = 0; e < E; e++) {
        s[e] = p->scoring == PIO_MOE_SOFTMAX ? exp(logits[e] - max) : 1.0 / (1.0 + exp(-logits[e]));
        sum += s[e];
    }
    for (int e = 0; e < E; e++) {
        if (p->scoring == PIO_MOE_SOFTMAX) s[e] /= sum;
        c[e] = s[e] + (p->bias ? p->bias[e] : 0.0);
        taken[e] = false;
    }
    if (p->n_group > 1) {
        int gs = E / p->n_group;
        double gscore[p->n_group];
        bool keep[p->n_group];
        for (int g = 0; g < p->n_group; g++) {
            double a = -INFINITY, b = -INFINITY;
            for (int e = g * gs; e < (g + 1) * gs; e++) {
                if (c[e] > a) b = a, a = c[e];
                else if (c[e] > b) b = c[e];
            }
            gscore[g] = a + b;
            keep[g] = false;
        }
        for (int i = 0; i < p->topk_group; i++) {
            int best = -1;
            for (int g = 0; g < p->n_group; g++)
                if (!keep[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
            keep[best] = true;
        }
        for (int e = 0; e < E; e++)
            if (!keep[e / gs]) c[e] = -INFINITY;
    }
    double wsum = 0, last = 0;
    for (int j = 0; j < p->top_k; j++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!taken[e] && (best < 0 || c[e] > c[best])) best = e;
        taken[best] = true;
        ids[j] = best;
        w[j] = s[best];
        wsum += w[j];
        last = c[best];
    }
    double next = -INFINITY;
    for (int e = 0; e < E; e++)
        if (!taken[e]) next = fmax(next, c[e]);
    for (int j = 0; j < p->top_k; j++) {
        if (p->norm) w[j] /= wsum + p->norm_eps;
        w[j] *= p->scale;
    }
    return last - next;
}

static void check_route_case(const char *what, int n, int E, const pio_moe_route_params *p,
                             float logit_scale) {
    pio_tensor *logits = rand_tensor(PIO_F32, 2, SHAPE(n, E), logit_scale);
    int K = p->top_k;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n * K));
    float *w = malloc(sizeof(float) * (size_t)(n * K));
    pio_error err;
    CHECK_MSG(pio_cpu_moe_route(logits, p, ids, w, &err) == PIO_OK, "%s: %s", what, err.msg);
    int bad_ids = 0, bad_w = 0, skipped = 0;
    for (int t = 0; t < n; t++) {
        int rid[K];
        double rw[K];
        double gap = ref_route(fdata(logits) + (size_t)t * E, E, p, rid, rw);
        if (gap < 1e-5) { /* f32 and double may order a near-tie differently */
            skipped++;
            continue;
        }
        for (int j = 0; j < K; j++) {
            bad_ids += ids[t * K + j] != rid[j];
            double want = p->round_bf16 ? rb((float)rw[j]) : rw[j];
            /* bf16: at most one step apart where f32 and double round differently */
            double tol = p->round_bf16 ? fabs(want) / 128.0 : 1e-6 * fabs(want) + 1e-7;
            bad_w += fabs(w[t * K + j] - want) > tol;
        }
    }
    CHECK_MSG(bad_ids == 0 && bad_w == 0 && skipped < n / 4,
              "%s: %d ids and %d weights differ (%d near-tie rows skipped)", what, bad_ids, bad_w,
              skipped);
    free(ids), free(w);
    pio_tensor_free(logits);
}

static void test_route(void) {
    pio_moe_route_params qwen = {.scoring = PIO_MOE_SOFTMAX, .top_k = 8, .norm = true,
                                 .scale = 1.0f};
    check_route_case("softmax 128 top-8 norm", 41, 128, &qwen, 3.0f);
    qwen.norm = false;
    qwen.top_k = 2;
    check_route_case("softmax 8 top-2", 33, 8, &qwen, 2.0f);
    qwen.round_bf16 = true;
    qwen.top_k = 4;
    check_route_case("softmax 16 top-4 bf16", 29, 16, &qwen, 2.0f);
    qwen.top_k = 1;
    check_route_case("softmax 3 top-1", 9, 3, &qwen, 2.0f);

    float bias[64];
    for (int e = 0; e < 64; e++) bias[e] = 0.05f * frand();
    pio_moe_route_params glm = {.scoring = PIO_MOE_SIGMOID, .top_k = 4, .bias = bias,
                                .n_group = 1, .topk_group = 1, .norm = true, .norm_eps = 1e-20f,
                                .scale = 1.8f};
    check_route_case("sigmoid 64 top-4 bias norm scale", 37, 64, &glm, 3.0f);
    glm.n_group = 8;
    glm.topk_group = 3;
    glm.top_k = 6;
    check_route_case("sigmoid 64 top-6 in 3 of 8 groups", 37, 64, &glm, 3.0f);

    /* Exact ties go to the lower expert id, whatever their positions. */
    pio_tensor *tied = T(PIO_F32, 2, 6);
    float row[2][6] = {{1, 3, 0, 3, 2, 3}, {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f}};
    memcpy(fdata(tied), row, sizeof row);
    int32_t ids[6];
    float w[6];
    pio_error err;
    pio_moe_route_params p3 = {.scoring = PIO_MOE_SOFTMAX, .top_k = 3, .norm = true, .scale = 1};
    CHECK(pio_cpu_moe_route(tied, &p3, ids, w, &err) == PIO_OK);
    CHECK(ids[0] == 1 && ids[1] == 3 && ids[2] == 5);
    CHECK(ids[3] == 0 && ids[4] == 1 && ids[5] == 2);
    CHECK(fabsf(w[3] - 1.0f / 3.0f) < 1e-7f && w[0] == w[1] && w[1] == w[2]);

    /* Argument checks. */
    p3.top_k = 7;
    CHECK(pio_cpu_moe_route(tied, &p3, ids, w, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "moe_route: top_k 7 must be in [1, 6]");
    p3.top_k = 0;
    CHECK(pio_cpu_moe_route(tied, &p3, ids, w, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "top_k 0 must be in [1, 6]");
    p3.top_k = 2;
    p3.n_group = 4;
    p3.topk_group = 1;
    CHECK(pio_cpu_moe_route(tied, &p3, ids, w, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "moe_route: 6 experts do not split into 4 groups of two or more");
    p3.n_group = 3;
    p3.topk_group = 4;
    CHECK(pio_cpu_moe_route(tied, &p3, ids, w, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "topk_group 4 must be in [1, 3]");
    p3.topk_group = 1;
    p3.top_k = 3;
    CHECK(pio_cpu_moe_route(tied, &p3, ids, w, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "top_k 3 exceeds the 2 experts of 1 kept group(s)");
    p3.n_group = 0;
    pio_tensor *flat = T(PIO_F32, 6), *half = T(PIO_BF16, 2, 6);
    CHECK(pio_cpu_moe_route(flat, &p3, ids, w, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "moe_route: logits [6] must be [n, n_expert]");
    CHECK(pio_cpu_moe_route(half, &p3, ids, w, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "must be f32, got bf16");
    pio_tensor_free(tied), pio_tensor_free(flat), pio_tensor_free(half);
}

/* ---- sort, gather ---------------------------------------------------------- */

static void test_sort_gather(void) {
    enum { N = 23, K = 3, X = 10, D = 7 };
    int32_t ids[N * K], offsets[X + 1], por[N * K], rop[N * K];
    for (int t = 0; t < N; t++) /* distinct experts per token, experts 4 and 9 never */
        for (int j = 0; j < K; j++) ids[t * K + j] = (int32_t)((t * 7 + j * 3) % 8 + (t % 3 == 0));
    for (int i = 0; i < N * K; i++) ids[i] = ids[i] == 4 ? 8 : ids[i];
    pio_error err;
    CHECK(pio_cpu_moe_sort(ids, N * K, X, offsets, por, rop, &err) == PIO_OK);
    CHECK(offsets[0] == 0 && offsets[X] == N * K);
    CHECK(offsets[4] == offsets[5] && offsets[9] == offsets[10]);
    bool ok = true;
    for (int e = 0; e < X; e++) {
        int count = 0;
        for (int i = 0; i < N * K; i++) count += ids[i] == e;
        ok = ok && offsets[e + 1] - offsets[e] == count;
        for (int r = offsets[e]; r < offsets[e + 1]; r++) {
            ok = ok && ids[por[r]] == e && rop[por[r]] == r;
            ok = ok && (r == offsets[e] || por[r] > por[r - 1]); /* stable: tokens ascending */
        }
    }
    CHECK_MSG(ok, "sort: groups, inverse or order wrong");

    pio_tensor *x = R(PIO_F32, N, D), *g = T(PIO_F32, N * K, D);
    CHECK(pio_cpu_moe_gather(x, por, K, g, &err) == PIO_OK);
    ok = true;
    for (int r = 0; r < N * K; r++)
        ok = ok && memcmp(fdata(g) + r * D, fdata(x) + (por[r] / K) * D, sizeof(float) * D) == 0;
    CHECK(ok);

    ids[5] = X;
    CHECK(pio_cpu_moe_sort(ids, N * K, X, offsets, por, rop, &err) == PIO_ERR_RANGE);
    CHECK_ERR(err, "moe_sort: expert id 10 at pair 5 is outside [0, 10)");
    pio_tensor *big = T(PIO_F32, N * K + 1, D), *wide = T(PIO_F32, N * K, D + 1);
    CHECK(pio_cpu_moe_gather(x, por, K, big, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "moe_gather: x [23, 7] and out [70, 7] do not fit");
    CHECK(pio_cpu_moe_gather(x, por, K, wide, &err) == PIO_ERR_INVALID);
    pio_tensor_free(x), pio_tensor_free(g), pio_tensor_free(big), pio_tensor_free(wide);
}

/* ---- combine --------------------------------------------------------------- */

/* torch's arithmetic, op by op in f32: eager rounds w·y and then the running
 * sum after every index_add_ (experts ascending); grouped_mm rounds w·y, sums
 * the k terms in f32 in router order and rounds once. */
static void ref_combine(const float *y, const int32_t *rop, const int32_t *ids, const float *w,
                        int n, int k, int d, pio_moe_accum accum, bool round, float *out) {
    for (int t = 0; t < n; t++) {
        int order[k];
        for (int j = 0; j < k; j++) order[j] = j;
        if (accum == PIO_MOE_ACCUM_EXPERT_ORDER) /* selection sort by expert id */
            for (int a = 0; a < k; a++)
                for (int b = a + 1; b < k; b++)
                    if (ids[t * k + order[b]] < ids[t * k + order[a]]) {
                        int tmp = order[a];
                        order[a] = order[b], order[b] = tmp;
                    }
        for (int i = 0; i < d; i++) {
            float acc = 0.0f;
            for (int j = 0; j < k; j++) {
                int pair = t * k + order[j];
                float c = w[pair] * y[(size_t)rop[pair] * d + i];
                if (round) c = rb(c);
                acc += c;
                if (round && accum == PIO_MOE_ACCUM_EXPERT_ORDER) acc = rb(acc);
            }
            out[(size_t)t * d + i] = round ? rb(acc) : acc;
        }
    }
}

static void test_combine(void) {
    enum { N = 37, K = 4, X = 9, D = 50 };
    int32_t ids[N * K], offsets[X + 1], por[N * K], rop[N * K];
    float w[N * K];
    for (int t = 0; t < N; t++) {
        int first = (int)((frand() + 1.0f) * 4.5f) % X;
        for (int j = 0; j < K; j++) {
            ids[t * K + j] = (first + j * 2) % X; /* distinct, often not ascending */
            w[t * K + j] = rb(0.5f * (frand() + 1.0f));
        }
    }
    pio_error err;
    CHECK(pio_cpu_moe_sort(ids, N * K, X, offsets, por, rop, &err) == PIO_OK);
    pio_tensor *y = T(PIO_F32, N * K, D), *out = T(PIO_F32, N, D);
    for (int64_t i = 0; i < N * K * D; i++) fdata(y)[i] = rb(frand() * 4.0f);
    float *want = malloc(sizeof(float) * N * D);
    pio_threadpool *pool2 = pio_threadpool_new(2, &err);
    pio_threadpool *pools[2] = {NULL, pool2};
    pio_moe_accum modes[2] = {PIO_MOE_ACCUM_EXPERT_ORDER, PIO_MOE_ACCUM_F32};
    for (int pi = 0; pi < 2; pi++)
        for (int mi = 0; mi < 2; mi++)
            for (int round = 0; round < 2; round++) {
                CHECK(pio_cpu_moe_combine(pools[pi], y, rop, ids, w, K, modes[mi], round, out,
                                          &err) == PIO_OK);
                ref_combine(fdata(y), rop, ids, w, N, K, D, modes[mi], round, want);
                CHECK_MSG(memcmp(want, fdata(out), sizeof(float) * N * D) == 0,
                          "combine (threads %d, mode %d, round %d) differs from torch's order",
                          pi + 1, mi, round);
            }
    /* The two orders really differ in bf16 (else the test above proves nothing). */
    float *eager = malloc(sizeof(float) * N * D);
    ref_combine(fdata(y), rop, ids, w, N, K, D, PIO_MOE_ACCUM_EXPERT_ORDER, true, eager);
    ref_combine(fdata(y), rop, ids, w, N, K, D, PIO_MOE_ACCUM_F32, true, want);
    CHECK(memcmp(want, eager, sizeof(float) * N * D) != 0);

    pio_tensor *bad = T(PIO_F32, N + 1, D);
    CHECK(pio_cpu_moe_combine(NULL, y, rop, ids, w, K, modes[0], false, bad, &err) ==
          PIO_ERR_INVALID);
    CHECK_ERR(err, "moe_combine: y [148, 50] and out [38, 50] do not fit");
    rop[3] = N * K;
    CHECK(pio_cpu_moe_combine(NULL, y, rop, ids, w, K, modes[0], false, out, &err) ==
          PIO_ERR_RANGE);
    CHECK_ERR(err, "moe_combine: pair 3 names row 148, outside [0, 148)");
    free(want), free(eager);
    pio_tensor_free(y), pio_tensor_free(out), pio_tensor_free(bad);
    pio_threadpool_free(pool2);
}

/* ---- grouped matmul -------------------------------------------------------- */

/* Jobs of assorted shapes (rows not a multiple of the tile, a k of 0, an empty
 * job) give exactly what one pio_cpu_matmul per job gives, for 1 and 2 threads. */
static void test_matmul_grouped(void) {
    enum { J = 7 };
    int64_t n[J] = {1, 3, 17, 0, 5, 2, 9}, k[J] = {64, 40, 33, 16, 1, 130, 8};
    int64_t m[J] = {300, 12, 7, 5, 6, 129, 1};
    pio_dtype dt[J] = {PIO_BF16, PIO_F32, PIO_BF16, PIO_F32, PIO_BF16, PIO_BF16, PIO_F32};
    pio_tensor *x[J], *w[J], *y[J], *ref[J];
    for (int j = 0; j < J; j++) {
        x[j] = rand_tensor(PIO_F32, 2, SHAPE(n[j], k[j]), 1.0f);
        w[j] = rand_tensor(dt[j], 2, SHAPE(m[j], k[j]), 1.0f);
        y[j] = rand_tensor(PIO_F32, 2, SHAPE(n[j], m[j]), 1.0f); /* garbage to overwrite */
        ref[j] = T(PIO_F32, n[j], m[j]);
    }
    pio_error err;
    pio_threadpool *pool2 = pio_threadpool_new(2, &err);
    pio_threadpool *pools[2] = {NULL, pool2};
    for (int pi = 0; pi < 2; pi++) {
        for (int j = 0; j < J; j++) CHECK(pio_cpu_matmul(pools[pi], x[j], w[j], ref[j], &err) == PIO_OK);
        CHECK_MSG(pio_cpu_matmul_grouped(pools[pi], J, (const pio_tensor *const *)x,
                                         (const pio_tensor *const *)w, y, &err) == PIO_OK,
                  "%s", err.msg);
        bool same = true;
        for (int j = 0; j < J; j++)
            same = same && (pio_tensor_nbytes(y[j]) == 0 ||
                            memcmp(fdata(y[j]), fdata(ref[j]), pio_tensor_nbytes(y[j])) == 0);
        CHECK_MSG(same, "grouped matmul (%d threads) differs from one matmul per job", pi + 1);
    }
    /* Many jobs (more than fit on the stack) and the argument checks. */
    enum { MANY = 150 };
    const pio_tensor *xs[MANY], *ws[MANY];
    pio_tensor *ys[MANY];
    for (int i = 0; i < MANY; i++) xs[i] = x[2], ws[i] = w[2], ys[i] = T(PIO_F32, 17, 7);
    CHECK(pio_cpu_matmul_grouped(pool2, MANY, xs, ws, ys, &err) == PIO_OK);
    bool same = true;
    for (int i = 0; i < MANY; i++) same = same && memcmp(fdata(ys[i]), fdata(ref[2]), 17 * 7 * 4) == 0;
    CHECK(same);
    for (int i = 0; i < MANY; i++) pio_tensor_free(ys[i]);
    const pio_tensor *bx[2] = {x[0], x[1]}, *bw[2] = {w[0], w[0]};
    pio_tensor *by[2] = {y[0], y[1]};
    CHECK(pio_cpu_matmul_grouped(NULL, 2, bx, bw, by, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "job 1: matmul_grouped: x [3, 40] and w [300, 64] do not fit");
    bw[1] = w[1];
    by[1] = y[0];
    CHECK(pio_cpu_matmul_grouped(NULL, 2, bx, bw, by, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "job 1: matmul_grouped: x [3, 40] and y [1, 300] do not fit");
    for (int j = 0; j < J; j++)
        pio_tensor_free(x[j]), pio_tensor_free(w[j]), pio_tensor_free(y[j]), pio_tensor_free(ref[j]);
    pio_threadpool_free(pool2);
}

/* ---- pio_build_moe --------------------------------------------------------- */

/* The whole block as transformers computes it, one token at a time: router
 * linear, route, then per expert (ascending) silu(gate)·up → down, weighted,
 * accumulated; `round` puts torch's bf16 roundings in. */
static void ref_moe(const float *h, int n, int E, int F, int X, const pio_tensor *router,
                    pio_tensor *const *gate, pio_tensor *const *up, pio_tensor *const *down,
                    const pio_moe_params *p, bool round, float *out) {
    int K = p->route.top_k;
    float logits[X], g[F], u[F], a[F];
    pio_moe_route_params rp = p->route;
    rp.round_bf16 = round && p->weights_bf16;
    for (int t = 0; t < n; t++) {
        const float *x = h + (size_t)t * E;
        for (int e = 0; e < X; e++) {
            double s = 0;
            for (int i = 0; i < E; i++) s += (double)x[i] * pio_tensor_get(router, (int64_t)e * E + i);
            logits[e] = round ? rb((float)s) : (float)s;
        }
        int32_t ids[K];
        float w[K];
        pio_error err;
        pio_tensor *l = pio_tensor_new(PIO_F32, 2, SHAPE(1, X), &err);
        memcpy(pio_tensor_data(l), logits, sizeof logits);
        pio_cpu_moe_route(l, &rp, ids, w, &err);
        pio_tensor_free(l);
        float acc[E];
        memset(acc, 0, sizeof acc);
        for (int e = 0; e < X; e++) {
            int j = -1;
            for (int q = 0; q < K; q++) j = ids[q] == e ? q : j;
            if (j < 0) continue;
            for (int f = 0; f < F; f++) {
                double sg = 0, su = 0;
                for (int i = 0; i < E; i++) {
                    sg += (double)x[i] * pio_tensor_get(gate[e], (int64_t)f * E + i);
                    su += (double)x[i] * pio_tensor_get(up[e], (int64_t)f * E + i);
                }
                g[f] = round ? rb((float)sg) : (float)sg;
                u[f] = round ? rb((float)su) : (float)su;
                float s = g[f] / (1.0f + expf(-g[f]));
                a[f] = round ? rb(rb(s) * u[f]) : s * u[f];
            }
            for (int i = 0; i < E; i++) {
                double sd = 0;
                for (int f = 0; f < F; f++) sd += (double)a[f] * pio_tensor_get(down[e], (int64_t)i * F + f);
                float y = round ? rb((float)sd) : (float)sd;
                float c = round ? rb(w[j] * y) : w[j] * y;
                acc[i] = round ? rb(acc[i] + c) : acc[i] + c;
            }
        }
        memcpy(out + (size_t)t * E, acc, sizeof acc);
    }
}

/* n tokens: 19 leaves every expert under 16 rows (the grouped runs of decode);
 * 150 gives most experts their own runs (prompts) and some still grouped. */
static void check_build_moe(pio_dtype wdt, bool round, int threads, int n) {
    enum { E = 40, F = 24, X = 8 };
    const int N = n;
    pio_error err;
    pio_model m = {0};
    m.pool = pio_threadpool_new(threads, &err);
    m.round_bf16 = round;
    /* Experts 6 and 7 can never win: their router rows are -1 and h > 0. Their
     * weights are NaN, so computing them at all would poison the output. */
    pio_tensor *h = T(PIO_F32, N, E), *out = T(PIO_F32, N, E);
    for (int64_t i = 0; i < N * E; i++) fdata(h)[i] = rb(0.05f + fabsf(frand()));
    pio_tensor *router = rand_tensor(wdt, 2, SHAPE(X, E), 0.3f);
    for (int i = 0; i < 2 * E; i++) pio_tensor_set(router, 6 * E + i, -1.0f);
    pio_tensor *gate[X], *up[X], *down[X];
    for (int e = 0; e < X; e++) {
        gate[e] = rand_tensor(wdt, 2, SHAPE(F, E), 0.3f);
        up[e] = rand_tensor(wdt, 2, SHAPE(F, E), 0.3f);
        down[e] = rand_tensor(wdt, 2, SHAPE(E, F), 0.3f);
        if (e >= 6)
            for (int64_t i = 0; i < F * E; i++) {
                pio_tensor_set(gate[e], i, NAN);
                pio_tensor_set(up[e], i, NAN);
                pio_tensor_set(down[e], i, NAN);
            }
    }
    pio_moe_weights w = {.router = router, .n_expert = X,
                         .gate = (const pio_tensor *const *)gate,
                         .up = (const pio_tensor *const *)up,
                         .down = (const pio_tensor *const *)down};
    pio_moe_params p = {.route = {.scoring = PIO_MOE_SOFTMAX, .top_k = 3, .norm = true,
                                  .scale = 1.0f},
                        .weights_bf16 = true, .accum = PIO_MOE_ACCUM_EXPERT_ORDER};
    CHECK_MSG(pio_build_moe(&m, &w, &p, h, out, &err) == PIO_OK, "%s", err.msg);
    float *want = malloc(sizeof(float) * N * E);
    ref_moe(fdata(h), N, E, F, X, router, gate, up, down, &p, round, want);
    int finite = 0, far = 0, off = 0;
    double worst = 0, rms = 0;
    for (int i = 0; i < N * E; i++) rms += (double)want[i] * want[i] / (N * E);
    rms = sqrt(rms);
    for (int i = 0; i < N * E; i++) {
        float got = fdata(out)[i];
        finite += isfinite(got) != 0;
        double d = fabs(got - want[i]);
        worst = fmax(worst, d);
        if (round) { /* same roundings; only f32-vs-double sums may land a step apart, and
                      * a step in a term shows larger where the terms nearly cancel */
            off += d > 1e-6 * fabs(want[i]);
            far += d > fabs(want[i]) / 64.0 + rms / 256.0;
        } else {
            far += d > 1e-5 * (1.0 + fabs(want[i]));
        }
    }
    CHECK_MSG(finite == N * E, "build_moe (%s, round %d): %d of %d outputs not finite: an "
              "unselected expert was computed", pio_dtype_info(wdt)->name, round, N * E - finite,
              N * E);
    CHECK_MSG(far == 0 && off <= N * E / 20, "build_moe (%s, round %d, %d threads, %d tokens): "
              "%d far, %d off by a bf16 step, worst %g (rms %g)", pio_dtype_info(wdt)->name, round,
              threads, N, far, off, worst, rms);
    free(want);
    pio_tensor_free(h), pio_tensor_free(out), pio_tensor_free(router);
    for (int e = 0; e < X; e++)
        pio_tensor_free(gate[e]), pio_tensor_free(up[e]), pio_tensor_free(down[e]);
    for (int i = 0; i < PIO_SLOT_COUNT; i++) pio_tensor_free(m.scratch.buf[i]);
    pio_threadpool_free(m.pool);
}

static void test_build_moe(void) {
    for (int n = 19; n <= 150; n += 131) {
        check_build_moe(PIO_F32, false, 1, n);
        check_build_moe(PIO_F32, false, 2, n);
        check_build_moe(PIO_BF16, false, 2, n);
        check_build_moe(PIO_BF16, true, 1, n);
        check_build_moe(PIO_BF16, true, 2, n);
    }
}

/* ---- the Qwen3-MoE architecture -------------------------------------------- */

static char dir[256];

static void write_file(const char *d, const char *name, const char *text) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", d, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static float *logits_of(pio_model *m, const int32_t *ids, int n, int chunk, int32_t vocab) {
    float *out = malloc(sizeof(float) * (size_t)n * (size_t)vocab);
    for (int begin = 0; begin < n; begin += chunk) {
        int len = begin + chunk < n ? chunk : n - begin;
        int32_t pos[64], seq[64];
        for (int i = 0; i < len; i++) pos[i] = begin + i, seq[i] = 0;
        pio_batch b = {len, ids + begin, pos, seq, NULL};
        const pio_tensor *logits;
        pio_error err;
        CHECK_MSG(pio_model_forward(m, &b, &logits, &err) == PIO_OK, "%s", err.msg);
        memcpy(out + (size_t)begin * vocab, pio_tensor_data(logits),
               sizeof(float) * (size_t)len * vocab);
    }
    return out;
}

static float max_diff(const float *a, const float *b, size_t n) {
    float d = 0;
    for (size_t i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

static const char *moe_config =
    "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"vocab_size\": 61, \"hidden_size\": 32,"
    " \"intermediate_size\": 40, \"moe_intermediate_size\": 12, \"num_hidden_layers\": 3,"
    " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 8,"
    " \"num_local_experts\": 6, \"num_experts_per_tok\": 2, \"norm_topk_prob\": true,"
    " \"mlp_only_layers\": [2], \"decoder_sparse_step\": 1, \"max_position_embeddings\": 64,"
    " \"rms_norm_eps\": 1e-6, \"rope_parameters\": {\"rope_theta\": 1e6, \"rope_type\": \"default\"},"
    " \"tie_word_embeddings\": false}";

/* Prompt-at-once, token-by-token and chunked runs give the same logits: the
 * grouping by expert changes with the batch, the arithmetic must not. */
static void test_model_batching(void) {
    write_file(dir, "config.json", moe_config);
    pio_load_opts o = pio_load_opts_default();
    o.synthetic = true;
    o.dtype = PIO_F32;
    o.threads = 2;
    o.seed = 5;
    pio_error err;
    pio_model *m = pio_model_load(dir, &o, &err);
    CHECK_MSG(m != NULL, "%s", err.msg);
    if (!m) return;
    pio_model_info info;
    pio_model_get_info(m, &info);
    CHECK(strcmp(info.architecture, "Qwen3MoeForCausalLM") == 0 && strcmp(info.family, "qwen3_moe") == 0);
    /* embed + lm_head + final norm; per layer 2 norms, q k v o, 2 head norms; MoE layers
     * 0 and 1: router + 6 experts of 3 [12, 32] matrices; layer 2: a dense MLP of 40 */
    int64_t attn = 2 * 32 + 32 * 32 + 2 * 16 * 32 + 32 * 32 + 2 * 8;
    int64_t want = 2 * 61 * 32 + 32 + 3 * attn + 2 * (6 * 32 + 6 * 3 * 12 * 32) + 3 * 40 * 32;
    CHECK_MSG(info.n_params == want, "params %lld, want %lld", (long long)info.n_params,
              (long long)want);
    int32_t ids[14] = {1, 5, 9, 33, 2, 60, 0, 17, 40, 41, 8, 3, 3, 3};
    float *whole = logits_of(m, ids, 14, 14, 61), *single = logits_of(m, ids, 14, 1, 61);
    float *mixed = logits_of(m, ids, 14, 5, 61);
    CHECK_MSG(max_diff(whole, single, 14 * 61) < 1e-5f, "prompt vs decode %g",
              max_diff(whole, single, 14 * 61));
    CHECK_MSG(max_diff(whole, mixed, 14 * 61) < 1e-5f, "chunks %g", max_diff(whole, mixed, 14 * 61));
    free(whole), free(single), free(mixed);
    pio_model_free(m);
}

static void expect_config_error(const char *config, const char *msg) {
    write_file(dir, "config.json", config);
    pio_load_opts o = pio_load_opts_default();
    o.synthetic = true;
    pio_error err;
    pio_model *m = pio_model_load(dir, &o, &err);
    CHECK_MSG(m == NULL, "config accepted: %s", config);
    pio_model_free(m);
    CHECK_ERR(err, msg);
}

static void test_bad_configs(void) {
    const char *base =
        "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"vocab_size\": 61, \"hidden_size\": 32,"
        " \"intermediate_size\": 40, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
        " \"max_position_embeddings\": 64";
    char cfg[1024];
    snprintf(cfg, sizeof cfg, "%s}", base);
    expect_config_error(cfg, "missing key 'num_local_experts'");
    snprintf(cfg, sizeof cfg, "%s, \"num_experts\": 4, \"num_experts_per_tok\": 5}", base);
    expect_config_error(cfg, "num_experts_per_tok 5 must be in [1, num_experts = 4]");
    snprintf(cfg, sizeof cfg, "%s, \"num_experts\": 4, \"num_experts_per_tok\": 2, \"decoder_sparse_step\": 0}", base);
    expect_config_error(cfg, "decoder_sparse_step must be >= 1, got 0");
    snprintf(cfg, sizeof cfg, "%s, \"num_experts\": 4, \"num_experts_per_tok\": 2, \"mlp_only_layers\": 1}", base);
    expect_config_error(cfg, "key 'mlp_only_layers' must be a list of layer indices");
    snprintf(cfg, sizeof cfg, "%s, \"num_experts\": 4, \"num_experts_per_tok\": 2, \"mlp_only_layers\": [-1]}", base);
    expect_config_error(cfg, "'mlp_only_layers' holds something other than a layer index");
    /* sliding windows are supported (every layer, as transformers' Qwen3-MoE); a bad one is not */
    snprintf(cfg, sizeof cfg, "%s, \"num_experts\": 4, \"num_experts_per_tok\": 2, \"use_sliding_window\": true, \"sliding_window\": -2}", base);
    expect_config_error(cfg, "sliding_window must be >= 1, got -2");
}

/* The fixture with stacked experts, rewritten with per-expert tensors (the
 * published layout), loads to bit-identical logits; a checkpoint missing an
 * expert, or with a stack of the wrong shape, fails naming the tensor. */
static void test_layouts(void) {
    char src[512], dst[512], path[600];
    snprintf(src, sizeof src, "%s/tests/fixtures/qwen3-moe-e8k2", PIO_SOURCE_DIR);
    snprintf(dst, sizeof dst, "%s/per-expert", dir);
    if (mkdir(dst, 0700) != 0) {
        CHECK_MSG(false, "cannot make %s", dst);
        return;
    }
    snprintf(path, sizeof path, "cp %s/config.json %s/", src, dst);
    CHECK(system(path) == 0);
    pio_error err;
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    pio_safetensors *st = pio_safetensors_open(path, &err);
    CHECK_MSG(st != NULL, "%s", err.msg);
    if (!st) return;

    /* Every tensor but the stacks as it is; each stack cut into per-expert views. */
    enum { MAX = 256 };
    const char *names[MAX];
    const pio_tensor *tensors[MAX];
    pio_tensor *owned[MAX];
    char *owned_names[MAX];
    int n = 0, n_owned = 0, n_names = 0;
    int64_t E = 8, H = 48, I = 16; /* qwen3-moe-e8k2 */
    const char *skip_name = NULL; /* an expert tensor to leave out, second pass */
    for (int pass = 0; pass < 3; pass++) {
        n = 0;
        for (size_t i = 0; i < pio_safetensors_count(st); i++) {
            const pio_st_info *ti = pio_safetensors_at(st, i);
            pio_tensor *t = pio_safetensors_get(st, ti->name, &err);
            owned[n_owned++] = t;
            const char *stack = strstr(ti->name, "mlp.experts.");
            if (!stack) {
                names[n] = ti->name, tensors[n++] = t;
                continue;
            }
            int layer = atoi(ti->name + strlen("model.layers."));
            bool gate_up = strstr(ti->name, "gate_up_proj") != NULL;
            if (pass == 2 && gate_up) { /* a stack of the wrong shape: [E, 2I, H] as [E, I, 2H] */
                pio_tensor *v = pio_tensor_view(t, 3, SHAPE(E, I, 2 * H), &err);
                owned[n_owned++] = v;
                names[n] = ti->name, tensors[n++] = v;
                continue;
            }
            if (pass == 2) {
                names[n] = ti->name, tensors[n++] = t;
                continue;
            }
            for (int64_t e = 0; e < E; e++) {
                const char *kinds[2] = {gate_up ? "gate_proj" : "down_proj", "up_proj"};
                for (int part = 0; part < (gate_up ? 2 : 1); part++) {
                    int64_t rows = gate_up ? I : H, cols = gate_up ? H : I;
                    size_t el = pio_dtype_info(t->dtype)->size;
                    size_t off = t->offset + (size_t)((e * t->shape[1] + part * I) * t->shape[2]) * el;
                    pio_tensor *v = pio_tensor_from_storage(t->storage, off, t->dtype, 2,
                                                            SHAPE(rows, cols), &err);
                    owned[n_owned++] = v;
                    char *nm = malloc(128);
                    snprintf(nm, 128, "model.layers.%d.mlp.experts.%lld.%s.weight", layer,
                             (long long)e, kinds[part]);
                    owned_names[n_names++] = nm;
                    if (pass == 1 && layer == 2 && e == 3 && part == 1) {
                        skip_name = nm;
                        continue;
                    }
                    names[n] = nm, tensors[n++] = v;
                }
            }
        }
        snprintf(path, sizeof path, "%s/model.safetensors", dst);
        CHECK_MSG(pio_safetensors_write(path, (size_t)n, names, tensors, &err) == PIO_OK, "%s",
                  err.msg);
        pio_load_opts o = pio_load_opts_default();
        o.dtype = PIO_F32;
        o.threads = 2;
        if (pass == 0) {
            /* f32 checkpoints in f32 mode: every weight, experts included, stays in the
             * mapped file (views of the stacks, or the per-expert tensors), so the heap
             * grows by the KV cache and small bookkeeping only. */
            int64_t heap0 = pio_debug_heap_bytes();
            pio_model *a = pio_model_load(src, &o, &err);
            CHECK_MSG(a != NULL, "%s", err.msg);
            int64_t heap_a = pio_debug_heap_bytes() - heap0;
            pio_model *b = pio_model_load(dst, &o, &err);
            CHECK_MSG(b != NULL, "%s", err.msg);
            int64_t heap_b = pio_debug_heap_bytes() - heap0 - heap_a;
            if (a && b) {
                int32_t ids[9] = {5, 300, 17, 99, 4, 4, 250, 1, 383};
                float *la = logits_of(a, ids, 9, 9, 416), *lb = logits_of(b, ids, 9, 9, 416);
                CHECK_MSG(memcmp(la, lb, sizeof(float) * 9 * 416) == 0,
                          "stacked and per-expert layouts differ by %g", max_diff(la, lb, 9 * 416));
                pio_model_info ia, ib;
                pio_model_get_info(a, &ia), pio_model_get_info(b, &ib);
                CHECK(ia.n_params == ib.n_params && ia.weight_bytes == ib.weight_bytes);
                CHECK_MSG(heap_a <= (int64_t)ia.kv_bytes + 65536 && heap_b <= (int64_t)ib.kv_bytes + 65536,
                          "weights copied to the heap: %lld and %lld bytes for %zu of weights",
                          (long long)heap_a, (long long)heap_b, ia.weight_bytes);
                free(la), free(lb);
            }
            pio_model_free(a), pio_model_free(b);
        } else {
            pio_model *b = pio_model_load(dst, &o, &err);
            CHECK(b == NULL);
            pio_model_free(b);
            if (pass == 1) {
                char want[200];
                snprintf(want, sizeof want, "missing tensor '%s'", skip_name);
                CHECK_ERR(err, want);
            } else {
                CHECK_ERR(err, "tensor 'model.layers.0.mlp.experts.gate_up_proj' has shape "
                               "[8, 16, 96] in the checkpoint but config.json implies [8, 32, 48]");
            }
        }
        for (int i = 0; i < n_owned; i++) pio_tensor_free(owned[i]);
        for (int i = 0; i < n_names; i++) free(owned_names[i]);
        n_owned = n_names = 0;
    }
    pio_safetensors_close(st);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/pio-test-moe-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    int64_t live = pio_debug_live_tensors(), heap = pio_debug_heap_bytes();
    test_route();
    test_sort_gather();
    test_combine();
    test_matmul_grouped();
    test_build_moe();
    test_model_batching();
    test_bad_configs();
    test_layouts();
    CHECK_MSG(pio_debug_live_tensors() == live, "%lld tensors leaked",
              (long long)(pio_debug_live_tensors() - live));
    CHECK(pio_debug_heap_bytes() == heap);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    TEST_MAIN_END();
}
