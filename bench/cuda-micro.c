/* cuda-micro: the CUDA kernels against the card's own limits.
 *
 *   1. the two ceilings: device-to-device copy bandwidth (bytes read + written)
 *      and cuBLAS bf16 GEMM peak at large square sizes;
 *   2. the decode matrix-vector kernel on Qwen3-4B weight shapes (models.md
 *      §1.2): GB/s and its share of the copy bandwidth, against cuBLAS at n = 1,
 *      for each warps-per-row setting, and the matvec/cuBLAS crossover in n;
 *   3. prompt GEMMs (cuBLAS) at n = 512 and 2048: TFLOP/s and share of peak;
 *   4. attention: tensor-core prompt kernel, split decode kernel;
 *   5. an op chain with the shapes of a whole Qwen3-4B forward pass (36
 *      layers of random bf16 weights made on the device), decode step direct
 *      and as a CUDA graph, and prompts of 512 and 2048 tokens. These are the
 *      kernels only, chained as the model will chain them: not the model's
 *      forward pass (that is not wired to CUDA yet).
 *
 * Every time is the median of repeated runs between CUDA events after a
 * warm-up; inputs are random (never zeros); weights are rotated through
 * copies larger than L2 where a single copy would stay cached.
 * Usage: cuda-micro [--quick]   (--quick: fewer sizes and repetitions)
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_ops.h"

static pio_cuda_ctx *ctx;
static pio_cuda_event *ev0, *ev1;
static bool quick;
static double copy_gbs, gemm_peak; /* the two ceilings, once measured */

static void die(const char *what, const pio_error *err) {
    fprintf(stderr, "cuda-micro: %s: %s\n", what, err->msg);
    exit(1);
}

#define TRY(call)                                         \
    do {                                                  \
        pio_error e_ = {0};                               \
        pio_error *err = &e_;                             \
        if ((call) != PIO_OK) die(#call, err);            \
    } while (0)

static pio_tensor *dnew(pio_dtype dt, int ndim, const int64_t *shape, float scale, uint64_t seed) {
    pio_error err = {0};
    pio_tensor *t = pio_cuda_tensor_new(ctx, dt, ndim, shape, &err);
    if (!t) die("allocate", &err);
    if (scale != 0 && pio_cuda_fill_random(ctx, t, seed, scale, &err) != PIO_OK) die("fill", &err);
    return t;
}
#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})
#define NDIM(...) ((int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
#define DNEW(dt, scale, seed, ...) dnew(dt, NDIM(__VA_ARGS__), SHAPE(__VA_ARGS__), scale, seed)

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median milliseconds of fn(arg, i) over reps timed runs (each run timed alone). */
typedef void (*run_fn)(void *arg, int i);
static double time_ms(run_fn fn, void *arg, int warm, int reps) {
    pio_error err = {0};
    for (int i = 0; i < warm; i++) fn(arg, i);
    double *t = malloc(sizeof(double) * (size_t)reps);
    for (int i = 0; i < reps; i++) {
        if (pio_cuda_event_record(ctx, ev0, &err)) die("event", &err);
        fn(arg, i);
        if (pio_cuda_event_record(ctx, ev1, &err)) die("event", &err);
        t[i] = pio_cuda_event_ms(ev0, ev1, &err);
        if (t[i] < 0) die("event time", &err);
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    double med = t[reps / 2];
    free(t);
    return med;
}

/* ---- 1. ceilings --------------------------------------------------------------- */

typedef struct {
    pio_tensor *a, *b;
} copy_arg;
static void run_copy(void *p, int i) {
    copy_arg *c = p;
    TRY(pio_cuda_copy(ctx, (i & 1) ? c->a : c->b, (i & 1) ? c->b : c->a, err));
}

typedef struct {
    pio_tensor *x, *w, *y;
} mm_arg;
static void run_mm(void *p, int i) {
    mm_arg *m = p;
    (void)i;
    TRY(pio_cuda_matmul(ctx, m->x, m->w, m->y, err));
}

static void ceilings(void) {
    const pio_cuda_device_info *info = pio_cuda_ctx_info(ctx);
    int64_t bytes = (int64_t)1 << 30; /* 1 GiB each way, far beyond L2 */
    if ((size_t)bytes * 4 > info->free_bytes) bytes = (int64_t)(info->free_bytes / 8);
    copy_arg c = {DNEW(PIO_F32, 1.0f, 1, bytes / 4), DNEW(PIO_F32, 1.0f, 2, bytes / 4)};
    double ms = time_ms(run_copy, &c, 3, quick ? 5 : 20);
    copy_gbs = 2.0 * (double)bytes / (ms * 1e-3) / 1e9;
    printf("%-44s %10.3f ms %9.1f GB/s (read + write)\n", "copy D2D 1 GiB", ms, copy_gbs);
    pio_cuda_tensor_free(ctx, c.a);
    pio_cuda_tensor_free(ctx, c.b);

    pio_cuda_set_mm_path(ctx, PIO_CUDA_MM_CUBLAS);
    static const int64_t sizes[] = {4096, 8192, 16384};
    for (size_t s = 0; s < (quick ? 2u : 3u); s++) {
        int64_t N = sizes[s];
        mm_arg m = {DNEW(PIO_BF16, 1.0f, 3, N, N), DNEW(PIO_BF16, 1.0f, 4, N, N),
                    DNEW(PIO_BF16, 0, 0, N, N)};
        double t = time_ms(run_mm, &m, 3, quick ? 5 : 15);
        double tf = 2.0 * (double)N * N * N / (t * 1e-3) / 1e12;
        if (tf > gemm_peak) gemm_peak = tf;
        char name[64];
        snprintf(name, sizeof name, "cuBLAS bf16 GEMM %lld^3", (long long)N);
        printf("%-44s %10.3f ms %9.1f TFLOP/s\n", name, t, tf);
        pio_cuda_tensor_free(ctx, m.x);
        pio_cuda_tensor_free(ctx, m.w);
        pio_cuda_tensor_free(ctx, m.y);
    }
    pio_cuda_set_mm_path(ctx, PIO_CUDA_MM_AUTO);
    printf("ceilings: copy %.1f GB/s, bf16 GEMM peak %.1f TFLOP/s\n\n", copy_gbs, gemm_peak);
}

/* ---- 2. decode matvec ------------------------------------------------------------- */

typedef struct {
    const char *name;
    int64_t m, k;
} wshape;
static const wshape qwen3_4b[] = {
    {"q_proj 4096x2560", 4096, 2560},     {"k_proj 1024x2560", 1024, 2560},
    {"o_proj 2560x4096", 2560, 4096},     {"gate/up 9728x2560", 9728, 2560},
    {"down 2560x9728", 2560, 9728},       {"qkv fused 6144x2560", 6144, 2560},
    {"gate_up fused 19456x2560", 19456, 2560}, {"lm_head 151936x2560", 151936, 2560},
};
enum { N_SHAPES = sizeof qwen3_4b / sizeof qwen3_4b[0] };

typedef struct {
    pio_tensor **w;
    int copies;
    pio_tensor *x, *y;
} mv_arg;
static void run_mv(void *p, int i) {
    mv_arg *a = p;
    TRY(pio_cuda_matmul(ctx, a->x, a->w[i % a->copies], a->y, err));
}

static double time_matvec(mv_arg *a, pio_cuda_mm_path path, int wpr) {
    pio_cuda_set_mm_path(ctx, path);
    pio_cuda_set_matvec_warps(ctx, wpr);
    double ms = time_ms(run_mv, a, 2 * a->copies, quick ? 20 : 60);
    pio_cuda_set_mm_path(ctx, PIO_CUDA_MM_AUTO);
    pio_cuda_set_matvec_warps(ctx, 0);
    return ms;
}

static void matvec(void) {
    const size_t l2 = (size_t)pio_cuda_ctx_info(ctx)->l2_bytes;
    printf("%-26s %8s %8s %7s | %8s %8s %8s %8s | %8s %7s | %s\n", "decode matvec (n=1)",
           "auto us", "GB/s", "%copy", "wpr1 us", "wpr2 us", "wpr4 us", "wpr8 us", "cuBLAS", "%copy",
           "crossover n");
    double total_auto = 0, total_bytes = 0;
    for (int s = 0; s < N_SHAPES; s++) {
        const wshape *ws = &qwen3_4b[s];
        size_t bytes = (size_t)(ws->m * ws->k) * 2;
        int copies = (int)((4 * l2 + bytes - 1) / bytes); /* together > 4 × L2: never cached */
        if (copies < 2) copies = 2;
        if (copies > 64) copies = 64;
        mv_arg a = {malloc(sizeof(pio_tensor *) * (size_t)copies), copies,
                    DNEW(PIO_BF16, 1.0f, 7, 1, ws->k), DNEW(PIO_F32, 0, 0, 1, ws->m)};
        for (int c = 0; c < copies; c++) a.w[c] = DNEW(PIO_BF16, 0.02f, 100 + (uint64_t)c, ws->m, ws->k);
        double t_auto = time_matvec(&a, PIO_CUDA_MM_MATVEC, 0);
        double t_w[4];
        for (int i = 0; i < 4; i++) t_w[i] = time_matvec(&a, PIO_CUDA_MM_MATVEC, 1 << i);
        double t_cb = time_matvec(&a, PIO_CUDA_MM_CUBLAS, 0);
        pio_error err = {0};
        if (pio_cuda_matmul_tune(ctx, ws->m, ws->k, &err)) die("tune", &err);
        double gbs = (double)bytes / (t_auto * 1e-3) / 1e9, gbs_cb = (double)bytes / (t_cb * 1e-3) / 1e9;
        printf("%-26s %8.1f %8.1f %6.1f%% | %8.1f %8.1f %8.1f %8.1f | %8.1f %6.1f%% | %d\n", ws->name,
               t_auto * 1e3, gbs, 100 * gbs / copy_gbs, t_w[0] * 1e3, t_w[1] * 1e3, t_w[2] * 1e3,
               t_w[3] * 1e3, t_cb * 1e3, 100 * gbs_cb / copy_gbs,
               pio_cuda_matmul_crossover(ctx, ws->m, ws->k));
        if (s < 5) { /* one layer's worth of the unfused shapes */
            int mult = s == 1 ? 2 : s == 3 ? 2 : 1; /* k and v; gate and up */
            total_auto += mult * t_auto;
            total_bytes += mult * (double)bytes;
        }
        for (int c = 0; c < copies; c++) pio_cuda_tensor_free(ctx, a.w[c]);
        free(a.w);
        pio_cuda_tensor_free(ctx, a.x);
        pio_cuda_tensor_free(ctx, a.y);
    }
    printf("one layer's 7 matvecs: %.1f us, %.1f GB/s = %.1f%% of copy bandwidth\n\n",
           total_auto * 1e3, total_bytes / (total_auto * 1e-3) / 1e9,
           100 * total_bytes / (total_auto * 1e-3) / 1e9 / copy_gbs);
}

/* ---- 3. prompt GEMMs ------------------------------------------------------------------ */

static void prompt_gemm(void) {
    static const int64_t ns[] = {512, 2048};
    printf("%-26s %6s %10s %10s %7s\n", "prompt GEMM (cuBLAS bf16)", "n", "ms", "TFLOP/s", "%peak");
    for (int ni = 0; ni < 2; ni++) {
        double layer_ms = 0, layer_flop = 0;
        static const int fused[] = {5, 2, 6, 4}; /* qkv, o, gate_up, down */
        for (int f = 0; f < 4; f++) {
            const wshape *ws = &qwen3_4b[fused[f]];
            int64_t n = ns[ni];
            mm_arg m = {DNEW(PIO_BF16, 1.0f, 11, n, ws->k), DNEW(PIO_BF16, 0.02f, 12, ws->m, ws->k),
                        DNEW(PIO_BF16, 0, 0, n, ws->m)};
            double t = time_ms(run_mm, &m, 3, quick ? 5 : 20);
            double flop = 2.0 * (double)n * ws->m * ws->k, tf = flop / (t * 1e-3) / 1e12;
            printf("%-26s %6lld %10.3f %10.1f %6.1f%%\n", ws->name, (long long)n, t, tf,
                   100 * tf / gemm_peak);
            layer_ms += t;
            layer_flop += flop;
            pio_cuda_tensor_free(ctx, m.x);
            pio_cuda_tensor_free(ctx, m.w);
            pio_cuda_tensor_free(ctx, m.y);
        }
        printf("%-26s %6lld %10.3f %10.1f %6.1f%%\n", "one layer (4 GEMMs)", (long long)ns[ni], layer_ms,
               layer_flop / (layer_ms * 1e-3) / 1e12, 100 * layer_flop / (layer_ms * 1e-3) / 1e12 / gemm_peak);
    }
    printf("\n");
}

/* ---- 4. attention ------------------------------------------------------------------------- */

typedef struct {
    pio_tensor *q, *k, *v, *o;
    pio_cuda_batch *b;
    bool rnd;
} attn_arg;
static void run_attn(void *p, int i) {
    attn_arg *a = p;
    (void)i;
    TRY(pio_cuda_attention(ctx, a->q, a->k, a->v, a->b, 0.08838835f, a->o, a->rnd, err));
}

static void attention(void) {
    const int64_t H = 32, Hkv = 8, D = 128, ctxlen = 32768;
    pio_error err = {0};
    pio_tensor *k = DNEW(PIO_BF16, 1.0f, 21, 1, ctxlen, Hkv, D), *v = DNEW(PIO_BF16, 1.0f, 22, 1, ctxlen, Hkv, D);
    printf("%-44s %10s %10s\n", "attention (H 32, kv 8, D 128, bf16 cache)", "ms", "rate");
    static const int64_t ss[] = {512, 2048};
    for (int si = 0; si < 2; si++) { /* a whole prompt at once, causal */
        int64_t S = ss[si];
        int32_t *seq = calloc((size_t)S, sizeof(int32_t)), *pos = malloc(sizeof(int32_t) * (size_t)S);
        for (int64_t t = 0; t < S; t++) pos[t] = (int32_t)t;
        pio_cuda_batch *b = pio_cuda_batch_new(ctx, (int32_t)S, &err);
        if (!b || pio_cuda_batch_set(ctx, b, NULL, seq, pos, (int32_t)S, &err)) die("batch", &err);
        attn_arg a = {DNEW(PIO_BF16, 1.0f, 23, S, H, D), k, v, DNEW(PIO_BF16, 0, 0, S, H, D), b, true};
        const double flop = 4.0 * (double)S * (double)(S + 1) / 2 * D * H; /* QKᵀ and PV, causal */
        for (int mode = 0; mode < 3; mode++) {
            /* 0: tensor cores, bf16 mode (two passes); 1: tensor cores, one pass; 2: split path */
            pio_cuda_set_attn_path(ctx, mode == 2 ? PIO_CUDA_ATTN_SPLIT : PIO_CUDA_ATTN_MMA);
            pio_cuda_set_attn_bf16_q(ctx, mode == 1);
            a.rnd = mode != 1;
            if (mode == 2 && quick) continue;
            double t = time_ms(run_attn, &a, 2, quick ? 3 : 10);
            static const char *names[] = {"tensor cores, bf16 2-pass", "tensor cores, 1-pass",
                                          "split path (bf16 mode)"};
            char name[80];
            snprintf(name, sizeof name, "prompt %lld: %s", (long long)S, names[mode]);
            printf("%-44s %10.3f %7.1f TFLOP/s\n", name, t, flop / (t * 1e-3) / 1e12);
        }
        pio_cuda_set_attn_path(ctx, PIO_CUDA_ATTN_AUTO);
        pio_cuda_set_attn_bf16_q(ctx, false);
        pio_cuda_tensor_free(ctx, a.q);
        pio_cuda_tensor_free(ctx, a.o);
        pio_cuda_batch_free(ctx, b);
        free(seq);
        free(pos);
    }
    static const int32_t lens[] = {512, 4096, 32768};
    for (int li = 0; li < 3; li++) { /* one decode token at the end of a long context */
        int32_t seq = 0, pos = lens[li] - 1;
        pio_cuda_batch *b = pio_cuda_batch_new(ctx, 1, &err);
        if (!b || pio_cuda_batch_set(ctx, b, NULL, &seq, &pos, 1, &err)) die("batch", &err);
        attn_arg a = {DNEW(PIO_BF16, 1.0f, 24, 1, H, D), k, v, DNEW(PIO_BF16, 0, 0, 1, H, D), b, true};
        const double bytes = 2.0 * lens[li] * Hkv * D * 2;
        for (int rnd = 1; rnd >= 0; rnd--) {
            a.rnd = rnd;
            double t = time_ms(run_attn, &a, 3, quick ? 10 : 50);
            char name[80];
            snprintf(name, sizeof name, "decode at %d keys (%s)", lens[li], rnd ? "bf16 2-pass" : "f32 1-pass");
            printf("%-44s %10.4f %7.1f GB/s (%.0f%% of copy)\n", name, t, bytes / (t * 1e-3) / 1e9,
                   100 * bytes / (t * 1e-3) / 1e9 / copy_gbs);
        }
        pio_cuda_tensor_free(ctx, a.q);
        pio_cuda_tensor_free(ctx, a.o);
        pio_cuda_batch_free(ctx, b);
    }
    pio_cuda_tensor_free(ctx, k);
    pio_cuda_tensor_free(ctx, v);
    printf("\n");
}

/* ---- 5. the op chain of a Qwen3-4B forward pass ----------------------------------------------- */

enum { L = 36, E = 2560, NH = 32, NKV = 8, HD = 128, F = 9728, V = 151936, CTX = 4096 };

typedef struct {
    pio_tensor *wqkv, *wo, *wgu, *wdown, *n_in, *n_post, *qn, *kn, *ck, *cv;
} layer_w;

typedef struct {
    layer_w l[L];
    pio_tensor *emb, *n_final, *inv_freq;
    /* activations for up to nmax tokens (bf16 mode: bf16, logits f32) */
    int64_t nmax;
    pio_tensor *x, *h, *qkv, *att, *out, *gu, *logits;
    pio_cuda_batch *b;
    int64_t n;
} chain;

/* A borrowed 2-D or 3-D view over a device tensor's bytes (rows `stride` apart). */
static pio_tensor view(const pio_tensor *t, int ndim, const int64_t *shape, int64_t stride0,
                       int64_t col0) {
    pio_tensor v = *t;
    v.ndim = ndim;
    int64_t s = 1;
    for (int i = ndim - 1; i >= 1; i--) {
        v.shape[i] = shape[i];
        v.stride[i] = s;
        s *= shape[i];
    }
    v.shape[0] = shape[0];
    v.stride[0] = stride0;
    v.offset += (size_t)col0 * pio_dtype_info(t->dtype)->size;
    return v;
}

static void chain_init(chain *c, int64_t nmax) {
    memset(c, 0, sizeof *c);
    uint64_t seed = 1000;
    for (int i = 0; i < L; i++) {
        layer_w *w = &c->l[i];
        w->wqkv = DNEW(PIO_BF16, 0.02f, seed++, (NH + 2 * NKV) * HD, E);
        w->wo = DNEW(PIO_BF16, 0.02f, seed++, E, NH * HD);
        w->wgu = DNEW(PIO_BF16, 0.02f, seed++, 2 * F, E);
        w->wdown = DNEW(PIO_BF16, 0.02f, seed++, E, F);
        w->n_in = DNEW(PIO_BF16, 1.0f, seed++, E);
        w->n_post = DNEW(PIO_BF16, 1.0f, seed++, E);
        w->qn = DNEW(PIO_BF16, 1.0f, seed++, HD);
        w->kn = DNEW(PIO_BF16, 1.0f, seed++, HD);
        w->ck = DNEW(PIO_BF16, 0, 0, 1, CTX, NKV, HD);
        w->cv = DNEW(PIO_BF16, 0, 0, 1, CTX, NKV, HD);
    }
    c->emb = DNEW(PIO_BF16, 0.02f, seed++, V, E);
    c->n_final = DNEW(PIO_BF16, 1.0f, seed++, E);
    c->inv_freq = DNEW(PIO_F32, 0, 0, HD / 2);
    {
        pio_error err = {0};
        pio_tensor *h = pio_tensor_new(PIO_F32, 1, SHAPE(HD / 2), &err);
        for (int i = 0; i < HD / 2; i++)
            ((float *)pio_tensor_data(h))[i] = 1.0f / powf(5e6f, (float)(2 * i) / (float)HD);
        if (!h || pio_cuda_copy_to_device(ctx, c->inv_freq, h, &err)) die("inv_freq", &err);
        pio_tensor_free(h);
    }
    c->nmax = nmax;
    c->x = DNEW(PIO_BF16, 1.0f, seed++, nmax, E);
    c->h = DNEW(PIO_BF16, 0, 0, nmax, E);
    c->qkv = DNEW(PIO_BF16, 0, 0, nmax, (NH + 2 * NKV) * HD);
    c->att = DNEW(PIO_BF16, 0, 0, nmax, NH, HD);
    c->out = DNEW(PIO_BF16, 0, 0, nmax, E);
    c->gu = DNEW(PIO_BF16, 0, 0, nmax, 2 * F);
    c->logits = DNEW(PIO_F32, 0, 0, 1, V);
    pio_error err = {0};
    c->b = pio_cuda_batch_new(ctx, (int32_t)nmax, &err);
    if (!c->b) die("batch", &err);
}

static void chain_free(chain *c) {
    for (int i = 0; i < L; i++) {
        pio_tensor **ts = (pio_tensor **)&c->l[i];
        for (size_t j = 0; j < sizeof(layer_w) / sizeof(pio_tensor *); j++) pio_cuda_tensor_free(ctx, ts[j]);
    }
    pio_tensor *ts[] = {c->emb, c->n_final, c->inv_freq, c->x, c->h, c->qkv, c->att, c->out, c->gu, c->logits};
    for (size_t j = 0; j < sizeof ts / sizeof *ts; j++) pio_cuda_tensor_free(ctx, ts[j]);
    pio_cuda_batch_free(ctx, c->b);
}

/* Tokens at positions p0 .. p0 + n - 1 of sequence 0. */
static void chain_set(chain *c, int64_t n, int32_t p0) {
    int32_t *seq = calloc((size_t)n, sizeof(int32_t)), *pos = malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t t = 0; t < n; t++) pos[t] = p0 + (int32_t)t;
    pio_error err = {0};
    if (pio_cuda_batch_set(ctx, c->b, NULL, seq, pos, (int32_t)n, &err)) die("batch", &err);
    c->n = n;
    free(seq);
    free(pos);
}

/* One forward pass over the batch (the embedding lookup is left out: x is given). */
static void chain_run(void *p, int rep) {
    chain *c = p;
    (void)rep;
    const int64_t n = c->n, QKV = (NH + 2 * NKV) * HD;
    pio_tensor x = view(c->x, 2, SHAPE(n, E), E, 0), h = view(c->h, 2, SHAPE(n, E), E, 0);
    pio_tensor qkv = view(c->qkv, 2, SHAPE(n, QKV), QKV, 0);
    pio_tensor q = view(c->qkv, 3, SHAPE(n, NH, HD), QKV, 0);
    pio_tensor k = view(c->qkv, 3, SHAPE(n, NKV, HD), QKV, NH * HD);
    pio_tensor v = view(c->qkv, 3, SHAPE(n, NKV, HD), QKV, (NH + NKV) * HD);
    pio_tensor att3 = view(c->att, 3, SHAPE(n, NH, HD), NH * HD, 0);
    pio_tensor att2 = view(c->att, 2, SHAPE(n, NH * HD), NH * HD, 0);
    pio_tensor out = view(c->out, 2, SHAPE(n, E), E, 0);
    pio_tensor gu = view(c->gu, 2, SHAPE(n, 2 * F), 2 * F, 0);
    pio_tensor gate = view(c->gu, 2, SHAPE(n, F), 2 * F, 0), up = view(c->gu, 2, SHAPE(n, F), 2 * F, F);
    for (int i = 0; i < L; i++) {
        layer_w *w = &c->l[i];
        TRY(pio_cuda_add_rmsnorm(ctx, &x, i ? &out : NULL, w->n_in, 1e-6f, &h, true, err));
        TRY(pio_cuda_matmul(ctx, &h, w->wqkv, &qkv, err));
        pio_cuda_qkv_args a = {.q = &q, .k = &k, .v = &v, .q_norm = w->qn, .k_norm = w->kn,
                               .eps = 1e-6f, .inv_freq = c->inv_freq, .rot_dim = HD,
                               .cache_k = w->ck, .cache_v = w->cv, .batch = c->b, .round_bf16 = true};
        TRY(pio_cuda_qk_norm_rope_kv(ctx, &a, err));
        TRY(pio_cuda_attention(ctx, &q, w->ck, w->cv, c->b, 0.08838835f, &att3, true, err));
        TRY(pio_cuda_matmul(ctx, &att2, w->wo, &out, err));
        TRY(pio_cuda_add_rmsnorm(ctx, &x, &out, w->n_post, 1e-6f, &h, true, err));
        TRY(pio_cuda_matmul(ctx, &h, w->wgu, &gu, err));
        TRY(pio_cuda_silu_mul(ctx, &gate, &up, &gate, true, err));
        TRY(pio_cuda_matmul(ctx, &gate, w->wdown, &out, err));
    }
    /* the last token's logits */
    pio_tensor xl = view(c->x, 2, SHAPE(1, E), E, (n - 1) * E), hl = view(c->h, 2, SHAPE(1, E), E, 0);
    pio_tensor ol = view(c->out, 2, SHAPE(1, E), E, (n - 1) * E);
    TRY(pio_cuda_add_rmsnorm(ctx, &xl, &ol, c->n_final, 1e-6f, &hl, true, err));
    TRY(pio_cuda_matmul(ctx, &hl, c->emb, c->logits, err));
}

static void run_graph(void *p, int rep) {
    (void)rep;
    TRY(pio_cuda_graph_launch(ctx, (pio_cuda_graph *)p, err));
}

static void op_chain(void) {
    const pio_cuda_device_info *info = pio_cuda_ctx_info(ctx);
    const int64_t nmax = quick ? 512 : 2048;
    if (info->free_bytes < ((size_t)12 << 30)) {
        printf("op chain: skipped (%.1f GiB free, needs about 12)\n\n", (double)info->free_bytes / 1073741824.0);
        return;
    }
    chain c;
    chain_init(&c, nmax);
    const double weight_bytes = 2.0 * ((double)L * ((NH + 2 * NKV) * HD * E + E * NH * HD + 2.0 * F * E + E * F) +
                                       (double)V * E);
    const double params = weight_bytes / 2;
    printf("op chain, Qwen3-4B shapes (kernels only, NOT the model forward): %.2f GB of bf16 weights\n",
           weight_bytes / 1e9);
    printf("%-44s %10s %10s %s\n", "", "ms", "tok/s", "vs limit");
    static const int64_t ns[] = {512, 2048};
    for (int i = 0; i < 2; i++) { /* a prompt of n tokens from position 0 */
        if (ns[i] > nmax) continue;
        chain_set(&c, ns[i], 0);
        double t = time_ms(chain_run, &c, 2, quick ? 3 : 10);
        const double flop = 2.0 * params * ns[i] +
                            (double)L * 4.0 * ns[i] * (ns[i] + 1) / 2 * HD * NH;
        char name[80];
        snprintf(name, sizeof name, "prompt %lld tokens", (long long)ns[i]);
        printf("%-44s %10.3f %10.1f %5.1f%% of GEMM peak (%.1f TFLOP/s)\n", name, t, ns[i] * 1e3 / t,
               100 * flop / (t * 1e-3) / 1e12 / gemm_peak, flop / (t * 1e-3) / 1e12);
    }
    static const int32_t at[] = {128, 2047};
    for (int i = 0; i < 2; i++) { /* decode: 1 token after at[i] tokens of context */
        chain_set(&c, 1, at[i]);
        const bool pdl_default = pio_cuda_pdl(ctx);
        pio_cuda_set_pdl(ctx, false); /* the first two rows without it */
        double t = time_ms(chain_run, &c, 3, quick ? 10 : 30);
        pio_error err = {0};
        pio_cuda_graph *g = NULL;
        if (pio_cuda_graph_begin(ctx, &err)) die("graph", &err);
        chain_run(&c, 0);
        if (pio_cuda_graph_end(ctx, &g, &err)) die("graph", &err);
        double tg = time_ms(run_graph, g, 3, quick ? 10 : 30);
        pio_cuda_graph_free(g);
        const double floor_ms = weight_bytes / (copy_gbs * 1e9) * 1e3;
        char name[80];
        snprintf(name, sizeof name, "decode @ %d, direct launches", at[i]);
        printf("%-44s %10.3f %10.1f %5.1f%% of bandwidth roofline (%.3f ms)\n", name, t, 1e3 / t,
               100 * floor_ms / t, floor_ms);
        snprintf(name, sizeof name, "decode @ %d, CUDA graph", at[i]);
        printf("%-44s %10.3f %10.1f %5.1f%% of bandwidth roofline\n", name, tg, 1e3 / tg, 100 * floor_ms / tg);
        /* The same graph with programmatic dependent launch between the kernels. */
        pio_cuda_set_pdl(ctx, true);
        if (pio_cuda_pdl(ctx)) {
            g = NULL;
            chain_run(&c, 0);
            if (pio_cuda_graph_begin(ctx, &err)) die("graph", &err);
            chain_run(&c, 0);
            if (pio_cuda_graph_end(ctx, &g, &err)) die("graph (PDL)", &err);
            double tp = time_ms(run_graph, g, 3, quick ? 10 : 30);
            pio_cuda_graph_free(g);
            snprintf(name, sizeof name, "decode @ %d, CUDA graph + PDL", at[i]);
            printf("%-44s %10.3f %10.1f %5.1f%% of bandwidth roofline\n", name, tp, 1e3 / tp,
                   100 * floor_ms / tp);
        }
        pio_cuda_set_pdl(ctx, pdl_default);
    }
    chain_free(&c);
    printf("\n");
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = true;
        else {
            fprintf(stderr, "usage: cuda-micro [--quick]\n");
            return 2;
        }
    }
    pio_error err = {0};
    if (pio_cuda_available(&err) == 0) {
        printf("cuda-micro: %s\n", err.msg);
        return 1;
    }
    ctx = pio_cuda_ctx_new(NULL, &err);
    if (!ctx) die("context", &err);
    ev0 = pio_cuda_event_new(&err);
    ev1 = pio_cuda_event_new(&err);
    if (!ev0 || !ev1) die("events", &err);
    const pio_cuda_device_info *info = pio_cuda_ctx_info(ctx);
    printf("device %d: %s, cc %d.%d, %d SMs, %.1f GiB (%.1f free), L2 %d MiB, driver %d, runtime %d\n\n",
           info->device, info->name, info->cc_major, info->cc_minor, info->sm_count,
           (double)info->total_bytes / 1073741824.0, (double)info->free_bytes / 1073741824.0,
           info->l2_bytes >> 20, info->driver_version, info->runtime_version);
    ceilings();
    matvec();
    prompt_gemm();
    attention();
    op_chain();
    if (pio_cuda_sync(ctx, &err)) die("final sync", &err);
    pio_cuda_mem_stats ms;
    pio_cuda_mem_stats_get(ctx, &ms);
    printf("pool peak %.2f GiB, %lld cudaMalloc calls\n", (double)ms.peak / 1073741824.0,
           (long long)ms.n_device_alloc);
    pio_cuda_event_free(ev0);
    pio_cuda_event_free(ev1);
    pio_cuda_ctx_free(ctx);
    return 0;
}
