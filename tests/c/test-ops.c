/* test-ops: every CPU kernel of kernels/cpu/cpu_ops.h against a plain scalar
 * reference (double accumulation) on random inputs with awkward sizes, with
 * pools of 1 and 2 threads, on both dispatch levels (AVX2 forced, AVX-512
 * where the CPU has it), plus the argument checks of every op. Ends with
 * matvec throughput, printed for information and never asserted.
 *
 * PIO_TEST_NO_BENCH=1 skips the throughput part (for valgrind runs).
 */
#define _GNU_SOURCE
#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "cpu_features.h"
#include "cpu_ops.h"
#include "pio_test.h"

/* The AMX kernel over C tiles (this machine may have no AMX): same source as
 * kernels/cpu/matmul_amx.c, so packing, tiling and edges are checked anywhere. */
#define PIO_AMX_EMULATE 1
#include "matmul_amx_impl.h"

/* ---- helpers ------------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
#include "tensor_test_util.h"
static float get(const pio_tensor *t, int64_t i) { return pio_tensor_get(t, i); }
static float rb(double v) { return pio_round_bf16((float)v); }

/* |got - want| <= tol; reports the first few misses of a check site only. */
static int near_failures;
static bool near(double got, double want, double tol) {
    bool ok = fabs(got - want) <= tol || (isnan(got) && isnan(want));
    if (!ok && near_failures++ < 8)
        fprintf(stderr, "  got %.9g want %.9g (tol %.3g)\n", got, want, tol);
    return ok;
}

/* One bf16 step at the scale of v. */
static double bf16_ulp(double v) { return fabs(v) * (1.0 / 128.0) + 1e-30; }

/* In bf16 mode the kernel and the reference round at the same places, so
 * nearly every result agrees to f32 precision (`tight`). A few may sit one
 * bf16 step apart (`loose`), where an f32 intermediate and the reference's
 * double land on either side of a rounding boundary; a missing or extra
 * rounding would move many. */
typedef struct {
    int64_t n, off, bad;
} tally;

static void tally_add(tally *t, double got, double want, double tight, double loose) {
    t->n++;
    double d = fabs(got - want);
    if (d <= tight) return;
    if (d <= loose) {
        t->off++;
    } else {
        t->bad++;
        near(got, want, loose); /* prints the first few */
    }
}

static bool tally_ok(const tally *t) { return t->bad == 0 && t->off <= 1 + t->n / 50; }

static pio_threadpool *pools[2]; /* 1 and 2 threads */

/* ---- matmul -------------------------------------------------------------- */

/* y[i] = x · w[i]ᵀ for n_w weights sharing x (m rows each, m + i·5), as one
 * pio_cpu_matmul_ex call; with dot (bf16 mode) x is rounded to bf16 first,
 * as the model's activations are, and the reference sees the same x. */
static void check_matmul_ex(pio_threadpool *pool, int64_t n, int64_t k, int64_t m, pio_dtype wdt,
                            int n_w, bool dot) {
    pio_tensor *x = R(PIO_F32, n, k), *w[4], *y[4];
    if (dot) pio_cpu_round_bf16(x);
    for (int i = 0; i < n_w; i++) {
        w[i] = R(wdt, m + 5 * i, k);
        y[i] = T(PIO_F32, n, m + 5 * i);
    }
    pio_error err = {0};
    pio_status st = pio_cpu_matmul_ex(pool, x, n_w, (const pio_tensor *const *)w, y, dot, &err);
    CHECK_MSG(st == PIO_OK, "%s", err.msg);
    int bad = 0;
    for (int q = 0; q < n_w; q++) {
        int64_t mq = m + 5 * q;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < mq; j++) {
                double ref = 0, mag = 0;
                for (int64_t l = 0; l < k; l++) {
                    double p = (double)get(x, i * k + l) * get(w[q], j * k + l);
                    ref += p;
                    mag += fabs(p);
                }
                bad += !near(fdata(y[q])[i * mq + j], ref, 2e-6 * mag + 1e-7);
            }
    }
    CHECK_MSG(bad == 0, "matmul n=%lld k=%lld m=%lld w %s x%d dot=%d threads=%d (%s): %d wrong",
              (long long)n, (long long)k, (long long)m, pio_dtype_info(wdt)->name, n_w, dot,
              pio_threadpool_size(pool), pio_cpu_level_name(pio_cpu_level_get()), bad);
    pio_tensor_free(x);
    for (int i = 0; i < n_w; i++) {
        pio_tensor_free(w[i]);
        pio_tensor_free(y[i]);
    }
}

static void check_matmul(pio_threadpool *pool, int64_t n, int64_t k, int64_t m, pio_dtype wdt) {
    check_matmul_ex(pool, n, k, m, wdt, 1, false);
}

static void test_matmul_values(void) {
    static const int64_t ns[] = {1, 3, 17}, ks[] = {1, 7, 33, 1000}, ms[] = {1, 3, 5, 67, 130};
    for (int p = 0; p < 2; p++)
        for (int wd = 0; wd < 2; wd++)
            for (size_t a = 0; a < 3; a++)
                for (size_t b = 0; b < 4; b++)
                    for (size_t c = 0; c < 5; c++)
                        check_matmul(pools[p], ns[a], ks[b], ms[c], wd ? PIO_BF16 : PIO_F32);
    /* Big enough that 2 threads split it into many tasks, with a k tail. */
    check_matmul(pools[1], 1, 1000, 1031, PIO_BF16);
    check_matmul(pools[1], 37, 515, 300, PIO_BF16);
    check_matmul(pools[1], 37, 515, 300, PIO_F32);
    /* bf16 mode (bf16 dot products where the CPU has them), and weights sharing x
     * in one run, tasks straddling weights. Prompt lengths around the tile and
     * block sizes (AMX tiles are 16 rows; x blocks are tens of rows). */
    static const int64_t pn[] = {1, 2, 15, 16, 17, 33, 100, 161};
    for (int p = 0; p < 2; p++)
        for (size_t a = 0; a < sizeof pn / sizeof pn[0]; a++) {
            check_matmul_ex(pools[p], pn[a], 64, 37, PIO_BF16, 1, true);
            check_matmul_ex(pools[p], pn[a], 1000, 35, PIO_BF16, 3, true);
            check_matmul_ex(pools[p], pn[a], 96, 64, PIO_BF16, 2, true);
        }
    check_matmul_ex(pools[1], 4, 33, 19, PIO_BF16, 4, true);
    check_matmul_ex(pools[1], 5, 130, 67, PIO_F32, 3, true); /* f32 weights: no bf16 path */
    check_matmul_ex(pools[1], 5, 130, 67, PIO_F32, 2, false);
    /* f32 prompts: packed 64-row panels, k blocks of 256, tile edges */
    check_matmul_ex(pools[1], 100, 600, 150, PIO_F32, 2, false);
    check_matmul_ex(pools[0], 16, 257, 64, PIO_F32, 1, false);
    check_matmul_ex(pools[1], 300, 2050, 40, PIO_BF16, 2, true); /* several x blocks */
    check_matmul_ex(pools[1], 1, 4096, 257, PIO_BF16, 1, true);
}

/* The value checks on every dispatch level this CPU has, from the forced AVX2
 * baseline up (PIO_CPU caps the level). */
static void test_matmul_dispatch(void) {
    const char *outer = getenv("PIO_CPU");
    char *saved = outer ? strdup(outer) : NULL;
    static const char *const names[] = {"avx2", "avx512", "avx512bf16", "amx"};
    pio_cpu_level top = pio_cpu_level_max();
    /* Someone who forced avx2 (valgrind cannot run AVX-512) keeps it. */
    if (saved && strcmp(saved, "avx2") == 0) top = PIO_CPU_AVX2;
    for (int lv = PIO_CPU_AVX2; lv <= (int)PIO_CPU_AMX; lv++) {
        if (lv > (int)top) {
            printf("matmul: this CPU has no %s, not checked\n", names[lv]);
            continue;
        }
        setenv("PIO_CPU", names[lv], 1);
        CHECK(pio_cpu_features_reinit() == (pio_cpu_level)lv);
        test_matmul_values();
        printf("matmul checked on %s\n", names[lv]);
    }
    if (saved)
        setenv("PIO_CPU", saved, 1);
    else
        unsetenv("PIO_CPU");
    free(saved);
    pio_cpu_features_reinit();
}

/* The AMX path (bf16 mode, 16+ tokens) through pio_cpu_matmul_ex with the
 * emulated tile kernel: prompt lengths around the 16- and 32-row tiles, k
 * tails (32 per step), outputs around the 32-row panels, several weights. */
static void test_matmul_amx_emulated(void) {
    pio_matmul_amx_override = pio_matmul_bf16_amx_emulated;
    static const int64_t pn[] = {16, 17, 31, 32, 33, 50, 64, 97};
    for (int p = 0; p < 2; p++)
        for (size_t a = 0; a < sizeof pn / sizeof pn[0]; a++) {
            check_matmul_ex(pools[p], pn[a], 64, 32, PIO_BF16, 1, true);
            check_matmul_ex(pools[p], pn[a], 100, 37, PIO_BF16, 3, true);
        }
    check_matmul_ex(pools[1], 40, 1000, 70, PIO_BF16, 2, true);
    check_matmul_ex(pools[1], 20, 7, 5, PIO_BF16, 1, true);
    check_matmul_ex(pools[1], 20, 64, 33, PIO_F32, 1, true); /* f32 weights: not AMX */
    pio_matmul_amx_override = NULL;
    printf("matmul checked on amx (emulated tiles)\n");
}

static void test_matmul_rejects(void) {
    pio_error err = {0};
    pio_tensor *x = T(PIO_F32, 3, 7), *w = T(PIO_F32, 5, 8), *y = T(PIO_F32, 3, 5);
    CHECK(pio_cpu_matmul(pools[0], x, w, y, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "[3, 7]");
    CHECK_ERR(err, "[5, 8]");
    pio_tensor *w2 = T(PIO_F32, 5, 7), *y2 = T(PIO_F32, 3, 4);
    CHECK(pio_cpu_matmul(pools[0], x, w2, y2, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "[3, 7]");
    CHECK_ERR(err, "[3, 4]");
    pio_tensor *wf16 = T(PIO_F16, 5, 7);
    CHECK(pio_cpu_matmul(pools[0], x, wf16, y, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "f16");
    CHECK(pio_cpu_matmul(pools[0], x, w2, x, &err) == PIO_ERR_INVALID); /* y must not alias x */
    /* Several weights: each is checked, outputs must not overlap, 1 to 4 of them. */
    pio_tensor *y5 = T(PIO_F32, 3, 5);
    const pio_tensor *ws[5] = {w2, w, w2, w2, w2};
    pio_tensor *ys[5] = {y, y5, y5, y5, y5};
    CHECK(pio_cpu_matmul_ex(pools[0], x, 2, ws, ys, true, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "[5, 8]");
    ws[1] = w2;
    CHECK(pio_cpu_matmul_ex(pools[0], x, 2, ws, (pio_tensor *[]){y, y}, true, &err) ==
          PIO_ERR_INVALID);
    CHECK_ERR(err, "overlap in memory");
    CHECK(pio_cpu_matmul_ex(pools[0], x, 5, ws, ys, true, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "matmul: 5 weights (1 to 4 share one x)");
    CHECK(pio_cpu_matmul_ex(pools[0], x, 0, ws, ys, true, &err) == PIO_ERR_INVALID);
    pio_tensor_free(y5);
    pio_tensor_free(x);
    pio_tensor_free(w);
    pio_tensor_free(y);
    pio_tensor_free(w2);
    pio_tensor_free(y2);
    pio_tensor_free(wf16);
}

/* ---- rmsnorm ------------------------------------------------------------- */

static void check_rmsnorm(pio_threadpool *pool, int64_t rows, int64_t d, pio_dtype wdt, bool rnd,
                          bool in_place) {
    const float eps = 1e-6f;
    pio_tensor *x = R(PIO_F32, rows, d), *w = R(wdt, d);
    if (rnd) pio_cpu_round_bf16(x); /* bf16 mode sees bf16 activations */
    pio_tensor *x0 = pio_tensor_contiguous(x, NULL);
    pio_tensor *y = in_place ? x : T(PIO_F32, rows, d);
    pio_error err = {0};
    CHECK_MSG(pio_cpu_rmsnorm(pool, x, w, eps, y, rnd, &err) == PIO_OK, "%s", err.msg);
    tally ty = {0};
    for (int64_t r = 0; r < rows; r++) {
        double ss = 0;
        for (int64_t i = 0; i < d; i++) ss += (double)get(x0, r * d + i) * get(x0, r * d + i);
        double inv = 1.0 / sqrt(ss / (double)d + eps);
        for (int64_t i = 0; i < d; i++) {
            double xh = get(x0, r * d + i) * inv, wi = get(w, i);
            if (rnd)
                tally_add(&ty, fdata(y)[r * d + i], rb(wi * rb(xh)), 0, bf16_ulp(wi * xh));
            else
                tally_add(&ty, fdata(y)[r * d + i], wi * xh, 1e-5 * fabs(wi * xh) + 1e-7,
                          1e-5 * fabs(wi * xh) + 1e-7);
        }
    }
    CHECK_MSG(tally_ok(&ty),
              "rmsnorm rows=%lld d=%lld w %s round=%d in_place=%d: %lld off, %lld wrong",
              (long long)rows, (long long)d, pio_dtype_info(wdt)->name, rnd, in_place,
              (long long)ty.off, (long long)ty.bad);
    pio_tensor_free(x0);
    pio_tensor_free(w);
    if (!in_place) pio_tensor_free(y);
    pio_tensor_free(x);
}

static void test_rmsnorm(void) {
    static const int64_t ds[] = {1, 7, 33, 1000}, rows[] = {1, 3, 17};
    for (int p = 0; p < 2; p++)
        for (size_t a = 0; a < 4; a++)
            for (size_t r = 0; r < 3; r++)
                for (int wd = 0; wd < 2; wd++)
                    for (int rnd = 0; rnd < 2; rnd++)
                        check_rmsnorm(pools[p], rows[r], ds[a], wd ? PIO_BF16 : PIO_F32, rnd,
                                      (a + r) % 2);
    check_rmsnorm(pools[1], 300, 1000, PIO_BF16, true, false); /* several tasks */

    pio_error err = {0};
    pio_tensor *x = T(PIO_F32, 3, 8), *w = T(PIO_F32, 7), *y = T(PIO_F32, 3, 9),
               *w8 = T(PIO_F32, 8);
    CHECK(pio_cpu_rmsnorm(NULL, x, w, 1e-6f, x, false, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "[3, 8]");
    CHECK_ERR(err, "[7]");
    CHECK(pio_cpu_rmsnorm(NULL, x, w8, 1e-6f, y, false, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "[3, 8]");
    CHECK_ERR(err, "[3, 9]");
    pio_tensor_free(x);
    pio_tensor_free(w);
    pio_tensor_free(y);
    pio_tensor_free(w8);
}

/* ---- rope ---------------------------------------------------------------- */

static void check_rope(int64_t n, int64_t heads, int64_t hd, int rot, bool rnd) {
    pio_tensor *x = R(PIO_F32, n, heads, hd);
    if (rnd) pio_cpu_round_bf16(x);
    pio_tensor *x0 = pio_tensor_contiguous(x, NULL);
    int32_t pos[64];
    float inv_freq[256];
    for (int64_t t = 0; t < n; t++) pos[t] = (int32_t)((t * 37) % 1500);
    for (int i = 0; i < rot / 2; i++)
        inv_freq[i] = 1.0f / powf(10000.0f, (float)(2 * i) / (float)rot);
    pio_error err = {0};
    CHECK_MSG(pio_cpu_rope(x, pos, inv_freq, rot, rnd, &err) == PIO_OK, "%s", err.msg);
    int bad = 0, h2 = rot / 2;
    tally ty = {0};
    for (int64_t t = 0; t < n; t++)
        for (int64_t h = 0; h < heads; h++) {
            int64_t base = (t * heads + h) * hd;
            for (int i = 0; i < h2; i++) {
                float angle = (float)pos[t] * inv_freq[i]; /* f32, as the spec says */
                double c = cos((double)angle), s = sin((double)angle);
                double a = get(x0, base + i), b = get(x0, base + i + h2);
                if (rnd) {
                    double cb = rb(c), sb = rb(s), step = (fabs(a) + fabs(b)) / 128.0;
                    tally_add(&ty, fdata(x)[base + i], rb(rb(a * cb) + rb(-b * sb)), 0, step);
                    tally_add(&ty, fdata(x)[base + i + h2], rb(rb(b * cb) + rb(a * sb)), 0, step);
                } else {
                    tally_add(&ty, fdata(x)[base + i], a * c - b * s, 2e-6, 2e-6);
                    tally_add(&ty, fdata(x)[base + i + h2], b * c + a * s, 2e-6, 2e-6);
                }
            }
            for (int64_t i = rot; i < hd; i++) /* beyond rot_dim: untouched */
                bad += fdata(x)[base + i] != get(x0, base + i);
        }
    CHECK_MSG(bad == 0 && tally_ok(&ty),
              "rope n=%lld heads=%lld hd=%lld rot=%d round=%d: %lld off, %lld wrong", (long long)n,
              (long long)heads, (long long)hd, rot, rnd, (long long)ty.off,
              (long long)(ty.bad + bad));
    pio_tensor_free(x);
    pio_tensor_free(x0);
}

static void test_rope(void) {
    for (int rnd = 0; rnd < 2; rnd++) {
        check_rope(1, 1, 2, 2, rnd);
        check_rope(3, 4, 16, 16, rnd);
        check_rope(17, 2, 64, 32, rnd); /* partial rotary */
        check_rope(5, 3, 10, 6, rnd);
        check_rope(4, 8, 128, 128, rnd); /* Qwen3's heads: 8 pairs per vector step */
        check_rope(2, 3, 52, 40, rnd);   /* 20 pairs: vector steps and a scalar tail */
    }
    pio_error err = {0};
    pio_tensor *x = T(PIO_F32, 3, 4, 16), *x2 = T(PIO_F32, 3, 16);
    int32_t pos[3] = {0};
    float f[8] = {0};
    CHECK(pio_cpu_rope(x, pos, f, 7, false, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "[3, 4, 16]");
    CHECK(pio_cpu_rope(x, pos, f, 18, false, &err) == PIO_ERR_INVALID);
    CHECK(pio_cpu_rope(x2, pos, f, 8, false, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "[3, 16]");
    pio_tensor_free(x);
    pio_tensor_free(x2);
}

/* ---- softmax ------------------------------------------------------------- */

static void check_softmax(int64_t rows, int64_t d, float scale, float offset) {
    pio_tensor *x = rand_tensor(PIO_F32, 2, SHAPE(rows, d), scale);
    for (int64_t i = 0; i < rows * d; i++) fdata(x)[i] += offset;
    pio_tensor *x0 = pio_tensor_contiguous(x, NULL);
    pio_error err = {0};
    CHECK_MSG(pio_cpu_softmax(x, &err) == PIO_OK, "%s", err.msg);
    int bad = 0;
    for (int64_t r = 0; r < rows; r++) {
        double max = -INFINITY, sum = 0;
        for (int64_t i = 0; i < d; i++) max = fmax(max, get(x0, r * d + i));
        for (int64_t i = 0; i < d; i++) sum += exp(get(x0, r * d + i) - max);
        for (int64_t i = 0; i < d; i++) {
            double ref = exp(get(x0, r * d + i) - max) / sum;
            bad += !near(fdata(x)[r * d + i], ref, 1e-5 * ref + 1e-9);
        }
    }
    CHECK_MSG(bad == 0, "softmax rows=%lld d=%lld scale=%g offset=%g: %d wrong", (long long)rows,
              (long long)d, scale, offset, bad);
    pio_tensor_free(x);
    pio_tensor_free(x0);
}

static void test_softmax(void) {
    static const int64_t ds[] = {1, 7, 33, 1000};
    for (size_t a = 0; a < 4; a++) {
        check_softmax(3, ds[a], 1.0f, 0.0f);
        check_softmax(2, ds[a], 30.0f, 0.0f);   /* wide range: tiny probabilities */
        check_softmax(2, ds[a], 1.0f, 1000.0f); /* exp(x) alone would overflow */
    }
    pio_error err = {0};
    pio_tensor *x = T(PIO_BF16, 2, 3);
    CHECK(pio_cpu_softmax(x, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "[2, 3]");
    pio_tensor_free(x);
}

/* ---- silu_mul ------------------------------------------------------------ */

static void check_silu_mul(int64_t n, int64_t d, bool rnd, int alias) {
    pio_tensor *g = rand_tensor(PIO_F32, 2, SHAPE(n, d), 8.0f), *u = R(PIO_F32, n, d);
    if (rnd) {
        pio_cpu_round_bf16(g);
        pio_cpu_round_bf16(u);
    }
    pio_tensor *g0 = pio_tensor_contiguous(g, NULL), *u0 = pio_tensor_contiguous(u, NULL);
    pio_tensor *out = alias == 1 ? g : alias == 2 ? u : T(PIO_F32, n, d);
    pio_error err = {0};
    CHECK_MSG(pio_cpu_silu_mul(g, u, out, rnd, &err) == PIO_OK, "%s", err.msg);
    tally ty = {0};
    for (int64_t i = 0; i < n * d; i++) {
        double gv = get(g0, i), silu = gv / (1.0 + exp(-gv)), u = get(u0, i);
        if (rnd)
            tally_add(&ty, fdata(out)[i], rb(rb(silu) * u), 0, bf16_ulp(silu * u));
        else
            tally_add(&ty, fdata(out)[i], silu * u, 1e-6 * fabs(silu * u) + 1e-9,
                      1e-6 * fabs(silu * u) + 1e-9);
    }
    CHECK_MSG(tally_ok(&ty), "silu_mul [%lld, %lld] round=%d alias=%d: %lld off, %lld wrong",
              (long long)n, (long long)d, rnd, alias, (long long)ty.off, (long long)ty.bad);
    if (alias == 0) pio_tensor_free(out);
    pio_tensor_free(g);
    pio_tensor_free(u);
    pio_tensor_free(g0);
    pio_tensor_free(u0);
}

static void test_silu_mul(void) {
    static const int64_t ds[] = {1, 7, 33, 1000};
    for (size_t a = 0; a < 4; a++)
        for (int rnd = 0; rnd < 2; rnd++)
            for (int alias = 0; alias < 3; alias++) check_silu_mul(3, ds[a], rnd, alias);
    pio_error err = {0};
    pio_tensor *g = T(PIO_F32, 3, 4), *u = T(PIO_F32, 3, 5);
    CHECK(pio_cpu_silu_mul(g, u, g, false, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "[3, 4]");
    CHECK_ERR(err, "[3, 5]");
    pio_tensor_free(g);
    pio_tensor_free(u);
}

/* The fused ops equal the ops they replace, bit for bit: silu_mul on the pool,
 * residual add (+ bf16 rounding) then rmsnorm, and a bf16-mode Linear whose
 * outputs are rounded by the matmul's own threads. */
static void test_fused_equal(void) {
    pio_error err = {0};
    for (int rnd = 0; rnd < 2; rnd++)
        for (int p = 0; p < 2; p++) {
            int64_t n = 37, d = 1000 + 3 * p;
            pio_tensor *g = rand_tensor(PIO_F32, 2, SHAPE(n, d), 8.0f), *u = R(PIO_F32, n, d);
            pio_tensor *a = T(PIO_F32, n, d), *b = T(PIO_F32, n, d);
            CHECK(pio_cpu_silu_mul(g, u, a, rnd, &err) == PIO_OK);
            CHECK(pio_cpu_silu_mul_pool(pools[p], g, u, b, rnd, &err) == PIO_OK);
            CHECK_MSG(!memcmp(fdata(a), fdata(b), (size_t)(n * d) * 4), "silu_mul_pool differs");
            /* residual + norm: x1 += r then norm (reference), x2 the fused op */
            pio_tensor *x1 = R(PIO_F32, n, d), *r = R(PIO_F32, n, d), *w = R(PIO_BF16, d);
            pio_tensor *x2 = T(PIO_F32, n, d), *y1 = T(PIO_F32, n, d), *y2 = T(PIO_F32, n, d);
            if (rnd) pio_cpu_round_bf16(x1);
            memcpy(fdata(x2), fdata(x1), (size_t)(n * d) * 4);
            CHECK(pio_cpu_binary(PIO_ADD, x1, r, x1, &err) == PIO_OK);
            if (rnd) pio_cpu_round_bf16(x1);
            CHECK(pio_cpu_rmsnorm(pools[p], x1, w, 1e-6f, y1, rnd, &err) == PIO_OK);
            CHECK_MSG(pio_cpu_residual_rmsnorm(pools[p], x2, r, w, 1e-6f, y2, rnd, &err) == PIO_OK,
                      "%s", err.msg);
            CHECK_MSG(!memcmp(fdata(x1), fdata(x2), (size_t)(n * d) * 4), "residual differs");
            CHECK_MSG(!memcmp(fdata(y1), fdata(y2), (size_t)(n * d) * 4), "residual norm differs");
            CHECK(pio_cpu_residual_rmsnorm(pools[p], x2, r, w, 1e-6f, x2, rnd, &err) ==
                  PIO_ERR_INVALID);
            /* Linear: matmul_ex then rounding vs pio_cpu_linear, decode and prompt sizes */
            for (int64_t rows = 1; rows <= 40; rows += 39) {
                /* k = 600: two k blocks of the packed kernel, rounded after the last */
                pio_tensor *xx = R(PIO_F32, rows, 600), *ww[2] = {R(PIO_BF16, 70, 600), R(PIO_BF16, 9, 600)};
                pio_tensor *ya[2] = {T(PIO_F32, rows, 70), T(PIO_F32, rows, 9)};
                pio_tensor *yb[2] = {T(PIO_F32, rows, 70), T(PIO_F32, rows, 9)};
                if (rnd) pio_cpu_round_bf16(xx);
                CHECK(pio_cpu_matmul_ex(pools[p], xx, 2, (const pio_tensor *const *)ww, ya, rnd,
                                        &err) == PIO_OK);
                CHECK(pio_cpu_linear(pools[p], xx, 2, (const pio_tensor *const *)ww, yb, rnd,
                                     &err) == PIO_OK);
                for (int i = 0; i < 2; i++) {
                    if (rnd) pio_cpu_round_bf16(ya[i]);
                    CHECK_MSG(!memcmp(fdata(ya[i]), fdata(yb[i]), (size_t)pio_tensor_numel(ya[i]) * 4),
                              "linear differs (rows %lld, round %d)", (long long)rows, rnd);
                    pio_tensor_free(ww[i]);
                    pio_tensor_free(ya[i]);
                    pio_tensor_free(yb[i]);
                }
                pio_tensor_free(xx);
            }
            pio_tensor *all[] = {g, u, a, b, x1, r, w, x2, y1, y2};
            for (size_t i = 0; i < sizeof all / sizeof *all; i++) pio_tensor_free(all[i]);
        }
}

/* q/k norm + RoPE + KV write in one pass equals the four ops in turn, bit for bit. */
static void test_qk_norm_rope(void) {
    pio_error err = {0};
    const int64_t H = 4, KV = 2, D = 32, ctx = 50;
    float inv_freq[16];
    for (int i = 0; i < 16; i++) inv_freq[i] = powf(10000.0f, -2.0f * (float)i / 32.0f);
    for (int rnd = 0; rnd < 2; rnd++)
        for (int cd = 0; cd < 2; cd++)
            for (int64_t n = 1; n <= 37; n += 36) {
                pio_dtype cdt = cd ? PIO_BF16 : PIO_F32;
                int32_t seq[37], pos[37];
                for (int64_t t = 0; t < n; t++) seq[t] = (int32_t)(t % 2), pos[t] = (int32_t)(3 + t);
                pio_tensor *q1 = R(PIO_F32, n, H, D), *k1 = R(PIO_F32, n, KV, D), *v = R(PIO_F32, n, KV, D);
                pio_tensor *q2 = T(PIO_F32, n, H, D), *k2 = T(PIO_F32, n, KV, D);
                pio_tensor *qn = R(PIO_BF16, D), *kn = R(PIO_BF16, D);
                pio_tensor *ck1 = T(cdt, 2, ctx, KV, D), *cv1 = T(cdt, 2, ctx, KV, D);
                pio_tensor *ck2 = T(cdt, 2, ctx, KV, D), *cv2 = T(cdt, 2, ctx, KV, D);
                memcpy(fdata(q2), fdata(q1), (size_t)pio_tensor_numel(q1) * 4);
                memcpy(fdata(k2), fdata(k1), (size_t)pio_tensor_numel(k1) * 4);
                CHECK(pio_cpu_rmsnorm(pools[1], q1, qn, 1e-6f, q1, rnd, &err) == PIO_OK);
                CHECK(pio_cpu_rmsnorm(pools[1], k1, kn, 1e-6f, k1, rnd, &err) == PIO_OK);
                CHECK(pio_cpu_rope(q1, pos, inv_freq, (int)D, rnd, &err) == PIO_OK);
                CHECK(pio_cpu_rope(k1, pos, inv_freq, (int)D, rnd, &err) == PIO_OK);
                CHECK(pio_cpu_kv_write(k1, v, ck1, cv1, seq, pos, &err) == PIO_OK);
                CHECK_MSG(pio_cpu_qk_norm_rope(pools[1], q2, k2, qn, kn, 1e-6f, pos, inv_freq,
                                               (int)D, rnd, v, ck2, cv2, seq, &err) == PIO_OK,
                          "%s", err.msg);
                size_t cb = (size_t)pio_tensor_numel(ck1) * pio_dtype_info(cdt)->size;
                CHECK_MSG(!memcmp(fdata(q1), fdata(q2), (size_t)pio_tensor_numel(q1) * 4) &&
                              !memcmp(fdata(k1), fdata(k2), (size_t)pio_tensor_numel(k1) * 4) &&
                              !memcmp(pio_tensor_data(ck1), pio_tensor_data(ck2), cb) &&
                              !memcmp(pio_tensor_data(cv1), pio_tensor_data(cv2), cb),
                          "qk_norm_rope differs (n %lld, round %d, cache %d)", (long long)n, rnd, cd);
                /* out-of-range position: kv_write's error */
                pos[0] = (int32_t)ctx;
                CHECK(pio_cpu_qk_norm_rope(pools[1], q2, k2, NULL, NULL, 1e-6f, pos, inv_freq, (int)D,
                                           rnd, v, ck2, cv2, seq, &err) == PIO_ERR_RANGE);
                pio_tensor *all[] = {q1, k1, v, q2, k2, qn, kn, ck1, cv1, ck2, cv2};
                for (size_t i = 0; i < sizeof all / sizeof *all; i++) pio_tensor_free(all[i]);
            }
}

/* ---- binary -------------------------------------------------------------- */

static void test_binary(void) {
    static const int64_t ds[] = {1, 7, 33, 1000};
    for (int op = PIO_ADD; op <= PIO_DIV; op++)
        for (size_t a = 0; a < 4; a++)
            for (int bcast = 0; bcast < 2; bcast++)
                for (int alias = 0; alias < 3; alias++) { /* out separate, = a, = b */
                    if (bcast && alias == 2) continue;
                    int64_t d = ds[a];
                    pio_tensor *ta = R(PIO_F32, 2, d),
                               *tb = bcast ? R(PIO_F32, 1) : R(PIO_F32, 2, d);
                    pio_tensor *a0 = pio_tensor_contiguous(ta, NULL),
                               *b0 = pio_tensor_contiguous(tb, NULL);
                    pio_tensor *out = alias == 1 ? ta : alias == 2 ? tb : T(PIO_F32, 2, d);
                    pio_error err = {0};
                    CHECK_MSG(pio_cpu_binary((pio_binary_op)op, ta, tb, out, &err) == PIO_OK, "%s",
                              err.msg);
                    int bad = 0;
                    for (int64_t i = 0; i < 2 * d; i++) {
                        float x = fdata(a0)[i], y = fdata(b0)[bcast ? 0 : i];
                        float ref = op == PIO_ADD   ? x + y
                                    : op == PIO_SUB ? x - y
                                    : op == PIO_MUL ? x * y
                                                    : x / y;
                        bad += fdata(out)[i] != ref; /* one IEEE operation: exact */
                    }
                    CHECK_MSG(bad == 0, "binary op=%d d=%lld bcast=%d alias=%d: %d wrong", op,
                              (long long)d, bcast, alias, bad);
                    if (alias == 0) pio_tensor_free(out);
                    pio_tensor_free(ta);
                    pio_tensor_free(tb);
                    pio_tensor_free(a0);
                    pio_tensor_free(b0);
                }
    pio_error err = {0};
    pio_tensor *a = T(PIO_F32, 2, 3), *b = T(PIO_F32, 3, 2), *o = T(PIO_F32, 3, 2);
    CHECK(pio_cpu_binary(PIO_ADD, a, b, a, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "[2, 3]");
    CHECK_ERR(err, "[3, 2]");
    CHECK(pio_cpu_binary(PIO_MUL, a, a, o, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "[2, 3]");
    CHECK_ERR(err, "[3, 2]");
    pio_tensor_free(a);
    pio_tensor_free(b);
    pio_tensor_free(o);
}

/* ---- round_bf16 ---------------------------------------------------------- */

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void test_round_bf16(void) {
    static const uint32_t special[] = {
        0x3f808000u,                                        /* tie, even below: stays */
        0x3f818000u,                                        /* tie, odd below: rounds up */
        0x3f80c000u, 0x3f807fffu, 0xbf818000u, 0x7f7fffffu, /* max f32 rounds to inf */
        0x7f800000u, 0xff800000u, 0x7fc00001u, 0x7f800001u, /* inf, -inf, NaNs */
        0x00000001u, 0x80000000u, 0x007fffffu,
    };
    static const int64_t ns[] = {1, 7, 33, 1000};
    for (size_t a = 0; a < 4; a++) {
        int64_t n = ns[a];
        pio_tensor *x = rand_tensor(PIO_F32, 1, SHAPE(n), 100.0f);
        for (int64_t i = 0; i < n && i < (int64_t)(sizeof special / sizeof special[0]); i++)
            fdata(x)[(i * 5) % n] = from_bits(special[i]);
        pio_tensor *x0 = pio_tensor_contiguous(x, NULL);
        pio_cpu_round_bf16(x);
        int bad = 0;
        for (int64_t i = 0; i < n; i++) {
            float want = pio_round_bf16(fdata(x0)[i]), got = fdata(x)[i];
            bad += isnan(want) ? !isnan(got) : memcmp(&want, &got, sizeof got) != 0;
        }
        CHECK_MSG(bad == 0, "round_bf16 n=%lld: %d differ from pio_round_bf16", (long long)n, bad);
        pio_tensor_free(x);
        pio_tensor_free(x0);
    }
}

/* ---- embedding ----------------------------------------------------------- */

static void test_embedding(void) {
    for (int wd = 0; wd < 2; wd++)
        for (int64_t d = 1; d <= 33; d += 32) {
            pio_tensor *table = R(wd ? PIO_BF16 : PIO_F32, 10, d), *out = T(PIO_F32, 4, d);
            int32_t ids[4] = {3, 0, 9, 3};
            pio_error err = {0};
            CHECK_MSG(pio_cpu_embedding(table, ids, 4, out, &err) == PIO_OK, "%s", err.msg);
            int bad = 0;
            for (int i = 0; i < 4; i++)
                for (int64_t j = 0; j < d; j++)
                    bad += fdata(out)[i * d + j] != get(table, ids[i] * d + j);
            CHECK_MSG(bad == 0, "embedding %s d=%lld: %d wrong", wd ? "bf16" : "f32", (long long)d,
                      bad);

            int32_t bad_ids[4] = {3, 12, 0, 1};
            CHECK(pio_cpu_embedding(table, bad_ids, 4, out, &err) == PIO_ERR_RANGE);
            CHECK_ERR(err, "12");
            CHECK_ERR(err, "10");
            int32_t neg[1] = {-1};
            pio_tensor *one = T(PIO_F32, 1, d);
            CHECK(pio_cpu_embedding(table, neg, 1, one, &err) == PIO_ERR_RANGE);
            CHECK_ERR(err, "-1");
            pio_tensor *wrong = T(PIO_F32, 4, d + 1);
            CHECK(pio_cpu_embedding(table, ids, 4, wrong, &err) == PIO_ERR_INVALID);
            char ts[32], ws[32];
            snprintf(ts, sizeof ts, "[10, %lld]", (long long)d);
            snprintf(ws, sizeof ws, "[4, %lld]", (long long)d + 1);
            CHECK_ERR(err, ts);
            CHECK_ERR(err, ws);
            pio_tensor_free(table);
            pio_tensor_free(out);
            pio_tensor_free(one);
            pio_tensor_free(wrong);
        }
}

/* ---- kv_write ------------------------------------------------------------ */

static void test_kv_write(void) {
    for (int cd = 0; cd < 2; cd++) {
        pio_dtype dt = cd ? PIO_BF16 : PIO_F32;
        const int64_t slots = 3, ctx = 8, kvh = 2, dk = 5, dv = 3;
        pio_tensor *ck = T(dt, slots, ctx, kvh, dk), *cv = T(dt, slots, ctx, kvh, dv);
        pio_tensor *k = R(PIO_F32, 3, kvh, dk), *v = R(PIO_F32, 3, kvh, dv);
        int32_t seq[3] = {2, 0, 2}, pos[3] = {7, 0, 1};
        pio_error err = {0};
        CHECK_MSG(pio_cpu_kv_write(k, v, ck, cv, seq, pos, &err) == PIO_OK, "%s", err.msg);
        int bad = 0, written = 0;
        for (int64_t s = 0; s < slots; s++)
            for (int64_t p = 0; p < ctx; p++) {
                int t = -1;
                for (int i = 0; i < 3; i++)
                    if (seq[i] == s && pos[i] == p) t = i;
                for (int64_t e = 0; e < kvh * dk; e++) {
                    float want = t < 0 ? 0.0f
                                 : cd  ? rb(get(k, t * kvh * dk + e))
                                       : get(k, t * kvh * dk + e);
                    bad += get(ck, (s * ctx + p) * kvh * dk + e) != want;
                }
                for (int64_t e = 0; e < kvh * dv; e++) {
                    float want = t < 0 ? 0.0f
                                 : cd  ? rb(get(v, t * kvh * dv + e))
                                       : get(v, t * kvh * dv + e);
                    bad += get(cv, (s * ctx + p) * kvh * dv + e) != want;
                }
                written += t >= 0;
            }
        CHECK_MSG(bad == 0 && written == 3, "kv_write cache %s: %d wrong", pio_dtype_info(dt)->name,
                  bad);

        int32_t bad_seq[3] = {2, 3, 0}, bad_pos[3] = {0, 8, 1};
        CHECK(pio_cpu_kv_write(k, v, ck, cv, bad_seq, pos, &err) == PIO_ERR_RANGE);
        CHECK_ERR(err, "slot 3");
        CHECK(pio_cpu_kv_write(k, v, ck, cv, seq, bad_pos, &err) == PIO_ERR_RANGE);
        CHECK_ERR(err, "position 8");
        pio_tensor *k4 = T(PIO_F32, 3, kvh, 4);
        CHECK(pio_cpu_kv_write(k4, v, ck, cv, seq, pos, &err) == PIO_ERR_INVALID);
        CHECK_ERR(err, "[3, 2, 4]");
        CHECK_ERR(err, "[3, 8, 2, 5]");
        pio_tensor_free(ck);
        pio_tensor_free(cv);
        pio_tensor_free(k);
        pio_tensor_free(v);
        pio_tensor_free(k4);
    }
}

/* ---- attention ----------------------------------------------------------- */

/* The naive reference: for each token and head, scores over keys 0..pos[t]
 * in double, softmax, weighted sum of values; in bf16 mode it rounds where
 * transformers' eager attention does. */
static void attention_ref(const pio_tensor *q, const pio_tensor *ck, const pio_tensor *cv,
                          const int32_t *seq, const int32_t *pos, float scale, bool rnd,
                          double *out) {
    const int64_t n = q->shape[0], H = q->shape[1], dk = q->shape[2], ctx = ck->shape[1];
    const int64_t KV = ck->shape[2], dv = cv->shape[3], group = H / KV;
    double *sc = malloc(sizeof(double) * (size_t)ctx);
    for (int64_t t = 0; t < n; t++)
        for (int64_t h = 0; h < H; h++) {
            int64_t g = h / group, L = pos[t] + 1;
            double max = -INFINITY, sum = 0;
            for (int64_t j = 0; j < L; j++) {
                double d = 0;
                for (int64_t i = 0; i < dk; i++)
                    d += (double)get(q, (t * H + h) * dk + i) *
                         get(ck, ((seq[t] * ctx + j) * KV + g) * dk + i);
                sc[j] = rnd ? rb((double)rb(d) * scale) : d * scale;
                max = fmax(max, sc[j]);
            }
            for (int64_t j = 0; j < L; j++) sum += exp(sc[j] - max);
            for (int64_t i = 0; i < dv; i++) out[(t * H + h) * dv + i] = 0;
            for (int64_t j = 0; j < L; j++) {
                double p = exp(sc[j] - max) / sum;
                if (rnd) p = rb(p);
                for (int64_t i = 0; i < dv; i++)
                    out[(t * H + h) * dv + i] +=
                        p * get(cv, ((seq[t] * ctx + j) * KV + g) * dv + i);
            }
        }
    free(sc);
}

static void check_attention(pio_threadpool *pool, int64_t H, int64_t KV, int64_t dk, int64_t dv,
                            int64_t ctx, pio_dtype cdt, bool rnd, int n, const int32_t *seq,
                            const int32_t *pos, float new_key_scale) {
    const int64_t slots = 3;
    /* Earlier tokens' keys and values are already in the cache; this batch's go in by kv_write. */
    pio_tensor *ck = rand_tensor(cdt, 4, SHAPE(slots, ctx, KV, dk), 2.0f);
    pio_tensor *cv = R(cdt, slots, ctx, KV, dv);
    pio_tensor *q = rand_tensor(PIO_F32, 3, SHAPE(n, H, dk), 2.0f);
    pio_tensor *k = rand_tensor(PIO_F32, 3, SHAPE(n, KV, dk), new_key_scale),
               *v = R(PIO_F32, n, KV, dv);
    pio_tensor *out = T(PIO_F32, n, H, dv);
    if (rnd) pio_cpu_round_bf16(q);
    pio_error err = {0};
    CHECK_MSG(pio_cpu_kv_write(k, v, ck, cv, seq, pos, &err) == PIO_OK, "%s", err.msg);
    float scale = 1.0f / sqrtf((float)dk);
    CHECK_MSG(pio_cpu_attention(pool, q, ck, cv, seq, pos, scale, out, rnd, &err) == PIO_OK, "%s",
              err.msg);

    double *ref = malloc(sizeof(double) * (size_t)(n * H * dv));
    attention_ref(q, ck, cv, seq, pos, scale, rnd, ref);
    /* bf16 mode: a score or probability one bf16 step off moves an output by
     * about 1e-2 at most; outputs otherwise agree to f32 precision. */
    tally ty = {0};
    for (int64_t i = 0; i < n * H * dv; i++)
        tally_add(&ty, fdata(out)[i], ref[i], 2e-5, rnd ? 1e-2 : 2e-5);
    CHECK_MSG(tally_ok(&ty),
              "attention H=%lld KV=%lld dk=%lld dv=%lld ctx=%lld cache %s round=%d threads=%d: "
              "%lld off, %lld wrong",
              (long long)H, (long long)KV, (long long)dk, (long long)dv, (long long)ctx,
              pio_dtype_info(cdt)->name, rnd, pio_threadpool_size(pool), (long long)ty.off,
              (long long)ty.bad);
    free(ref);
    pio_tensor_free(ck);
    pio_tensor_free(cv);
    pio_tensor_free(q);
    pio_tensor_free(k);
    pio_tensor_free(v);
    pio_tensor_free(out);
}

static void test_attention(void) {
    /* One batch mixing a prefill (slot 0, positions 0..4), a decode step deep in
     * slot 2, and two tokens continuing slot 1. */
    static const int32_t seq[] = {0, 0, 0, 0, 0, 2, 1, 1}, pos[] = {0, 1, 2, 3, 4, 17, 8, 9};
    static const int64_t ratios[][2] = {{4, 4}, {4, 2}, {8, 2}}; /* GQA groups 1, 2, 4 */
    for (int p = 0; p < 2; p++)
        for (int r = 0; r < 3; r++)
            for (int cd = 0; cd < 2; cd++)
                for (int rnd = 0; rnd < 2; rnd++) {
                    pio_dtype dt = cd ? PIO_BF16 : PIO_F32;
                    check_attention(pools[p], ratios[r][0], ratios[r][1], 16, 16, 20, dt, rnd, 8,
                                    seq, pos, 2.0f);
                    check_attention(pools[p], ratios[r][0], ratios[r][1], 20, 12, 20, dt, rnd, 8,
                                    seq, pos, 2.0f);
                }
    /* Contexts longer than one chunk of scores (4096 keys): the online
     * rescaling and, in bf16 mode, the two-pass path. The batch's own keys
     * are large, so the last chunk (holding key pos[t]) usually raises the max. */
    static const int32_t lseq[] = {1, 0, 1}, lpos[] = {4200, 3, 1500};
    for (int cd = 0; cd < 2; cd++)
        for (int rnd = 0; rnd < 2; rnd++)
            check_attention(pools[1], 4, 2, 32, 32, 4300, cd ? PIO_BF16 : PIO_F32, rnd, 3, lseq,
                            lpos, 8.0f);
    /* One token deep in its context (the keys split over the threads) */
    static const int32_t dseq[] = {1}, dpos[] = {4200}, dpos2[] = {700};
    for (int p = 0; p < 2; p++)
        for (int cd = 0; cd < 2; cd++)
            for (int rnd = 0; rnd < 2; rnd++) {
                pio_dtype dt = cd ? PIO_BF16 : PIO_F32;
                check_attention(pools[p], 8, 2, 32, 24, 4300, dt, rnd, 1, dseq, dpos, 8.0f);
                check_attention(pools[p], 4, 4, 20, 20, 4300, dt, rnd, 1, dseq, dpos2, 2.0f);
            }
    /* Prompts (16 tokens or more: the GEMM-style path on AVX-512): slot 0 from
     * position 0 in a shuffled order, interleaved with slot 2 continuing at 100,
     * and head sizes that fill no register tile exactly. */
    enum { NP = 40 };
    int32_t pseq[NP], ppos[NP];
    for (int i = 0; i < NP; i++) {
        bool first = i % 4 != 3;
        pseq[i] = first ? 0 : 2;
        ppos[i] = first ? (i - i / 4) * 7 % 30 : 100 + i / 4;
    }
    static const int64_t dims[][2] = {{16, 16}, {20, 12}, {128, 128}, {66, 80}};
    for (int r = 0; r < 3; r++)
        for (int d = 0; d < 4; d++)
            for (int cd = 0; cd < 2; cd++)
                for (int rnd = 0; rnd < 2; rnd++)
                    check_attention(pools[r % 2], ratios[r][0], ratios[r][1], dims[d][0],
                                    dims[d][1], 130, cd ? PIO_BF16 : PIO_F32, rnd, NP, pseq, ppos,
                                    2.0f);

    pio_error err = {0};
    pio_tensor *q = T(PIO_F32, 2, 6, 8), *ck = T(PIO_F32, 1, 4, 4, 8), *cv = T(PIO_F32, 1, 4, 4, 8);
    pio_tensor *out = T(PIO_F32, 2, 6, 8);
    int32_t s[2] = {0, 0}, ps[2] = {0, 1};
    CHECK(pio_cpu_attention(NULL, q, ck, cv, s, ps, 1.0f, out, false, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "[2, 6, 8]");
    CHECK_ERR(err, "[1, 4, 4, 8]");
    pio_tensor *q4 = T(PIO_F32, 2, 4, 8), *out7 = T(PIO_F32, 2, 4, 7), *out8 = T(PIO_F32, 2, 4, 8);
    CHECK(pio_cpu_attention(NULL, q4, ck, cv, s, ps, 1.0f, out7, false, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "[2, 4, 8]");
    CHECK_ERR(err, "[2, 4, 7]");
    int32_t far[2] = {0, 4}, slot[2] = {1, 0};
    CHECK(pio_cpu_attention(NULL, q4, ck, cv, s, far, 1.0f, out8, false, &err) == PIO_ERR_RANGE);
    CHECK_ERR(err, "position 4");
    CHECK(pio_cpu_attention(NULL, q4, ck, cv, slot, ps, 1.0f, out8, false, &err) == PIO_ERR_RANGE);
    CHECK_ERR(err, "slot 1");
    pio_tensor_free(q);
    pio_tensor_free(ck);
    pio_tensor_free(cv);
    pio_tensor_free(out);
    pio_tensor_free(q4);
    pio_tensor_free(out7);
    pio_tensor_free(out8);
}

/* ---- throughput (information only) --------------------------------------- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Decode-shaped matvec on bf16 [4096, 4096] weights (32 MiB each). Four weights
 * are cycled so that they cannot all sit in a 32 MiB L3: the cold number is
 * what decode sees; the hot one repeats a single weight. */
static void bench_matvec(void) {
    enum { N_W = 4, ITERS = 24 };
    pio_tensor *w[N_W], *x = R(PIO_F32, 1, 4096), *y = T(PIO_F32, 1, 4096);
    for (int i = 0; i < N_W; i++) w[i] = R(PIO_BF16, 4096, 4096);
    const double bytes = 4096.0 * 4096.0 * 2.0;

    /* A plain read of the same 128 MiB, one thread, for scale (first call only). */
    static bool read_done;
    if (!read_done) {
        double t0 = now();
        uint64_t acc = 0;
        for (int rep = 0; rep < 2; rep++)
            for (int i = 0; i < N_W; i++) {
                const uint64_t *p = pio_tensor_data(w[i]);
                for (size_t j = 0; j < (size_t)bytes / 8; j++) acc += p[j];
            }
        printf("memory read loop, 1 thread: %.1f GB/s (checksum %llx)\n",
               2 * N_W * bytes / (now() - t0) / 1e9, (unsigned long long)(acc & 0xff));
        read_done = true;
    }

    for (int p = 0; p < 2; p++) {
        pio_error err = {0};
        pio_cpu_matmul(pools[p], x, w[0], y, &err); /* warm up threads and pages */
        double t = now();
        for (int i = 0; i < ITERS; i++) pio_cpu_matmul(pools[p], x, w[i % N_W], y, &err);
        double cold = ITERS * bytes / (now() - t) / 1e9;
        t = now();
        for (int i = 0; i < ITERS; i++) pio_cpu_matmul(pools[p], x, w[0], y, &err);
        double hot = ITERS * bytes / (now() - t) / 1e9;
        printf("matvec bf16 [4096 x 4096], %d thread%s, %s: %.1f GB/s (%.2f ms), same weight: %.1f "
               "GB/s\n",
               p + 1, p ? "s" : "", pio_cpu_level_name(pio_cpu_level_get()), cold,
               bytes / cold / 1e6, hot);
    }
    for (int i = 0; i < N_W; i++) pio_tensor_free(w[i]);
    pio_tensor_free(x);
    pio_tensor_free(y);
}

/* ---- the thread pool under many short runs --------------------------------- */

static _Atomic long pool_hits;
static void pool_task(void *ctx, int task, int thread) {
    (void)ctx, (void)thread;
    atomic_fetch_add(&pool_hits, task + 1);
}

/* Every task of every run runs exactly once and is done when run returns,
 * with more threads than cores and with workers that sleep between runs. */
static void test_threadpool(void) {
    for (int spin = 0; spin < 2; spin++) {
        setenv("PIO_SPIN_US", spin ? "100" : "0", 1);
        for (int threads = 2; threads <= 4; threads += 2) {
            pio_error err = {0};
            pio_threadpool *p = pio_threadpool_new(threads, &err);
            long expect = 0;
            int bad = 0;
            atomic_store(&pool_hits, 0);
            for (int r = 0; r < 20000 && !bad; r++) {
                int n = 1 + r % 9;
                pio_threadpool_run(p, n, pool_task, NULL);
                expect += (long)n * (n + 1) / 2;
                bad = atomic_load(&pool_hits) != expect;
            }
            CHECK_MSG(!bad, "thread pool of %d (spin %d): a task ran twice or late", threads, spin);
            pio_threadpool_free(p);
        }
    }
    unsetenv("PIO_SPIN_US");
}

int main(void) {
    pio_error err = {0};
    pools[0] = pio_threadpool_new(1, &err);
    pools[1] = pio_threadpool_new(2, &err);
    if (!pools[0] || !pools[1]) {
        fprintf(stderr, "thread pool: %s\n", err.msg);
        return 2;
    }
    printf("cpu dispatch level: %s\n", pio_cpu_level_name(pio_cpu_level_get()));

    test_threadpool();
    test_matmul_dispatch();
    test_matmul_amx_emulated();
    test_matmul_rejects();
    /* The tests below draw from their own stream, whatever the matmul checks took. */
    rng = 0x2545f4914f6cdd1dull;
    test_rmsnorm();
    test_rope();
    test_softmax();
    test_silu_mul();
    test_fused_equal();
    test_qk_norm_rope();
    test_binary();
    test_round_bf16();
    test_embedding();
    test_kv_write();
    /* attention's inner loops too on every level (16 lanes; bf16 dot products in bf16 mode) */
    for (int lv = PIO_CPU_AVX2; lv <= (int)PIO_CPU_AVX512_BF16; lv++) {
        static const char *const names[] = {"avx2", "avx512", "avx512bf16"};
        const char *outer = getenv("PIO_CPU");
        if (lv > (int)pio_cpu_level_max() || (lv > 0 && outer && strcmp(outer, "avx2") == 0))
            break;
        char *saved = outer ? strdup(outer) : NULL;
        setenv("PIO_CPU", names[lv], 1);
        pio_cpu_features_reinit();
        test_attention();
        printf("attention checked on %s\n", names[lv]);
        if (saved) setenv("PIO_CPU", saved, 1);
        else unsetenv("PIO_CPU");
        free(saved);
        pio_cpu_features_reinit();
    }
    CHECK_MSG(pio_debug_live_tensors() == 0, "%lld tensors leaked",
              (long long)pio_debug_live_tensors());

    const char *no_bench = getenv("PIO_TEST_NO_BENCH");
    if (!(no_bench && *no_bench && strcmp(no_bench, "0") != 0)) {
        bench_matvec();
        if (pio_cpu_level_get() >= PIO_CPU_AVX512) { /* and the baseline, for comparison */
            setenv("PIO_CPU", "avx2", 1);
            pio_cpu_features_reinit();
            bench_matvec();
            unsetenv("PIO_CPU");
            pio_cpu_features_reinit();
        }
    }

    pio_threadpool_free(pools[0]);
    pio_threadpool_free(pools[1]);
    TEST_MAIN_END();
}
