/* pio/sampler.h: greedy, seeded draws, the filters, the penalties' exact
 * arithmetic, parameter checks, and the empirical distribution. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "pio/sampler.h"
#include "pio_test.h"

#define BIG_VOCAB 151936

/* A test-local generator, so the logits do not depend on libc's rand(). */
static uint64_t lcg = 12345;
static float frand(void) {
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((lcg >> 40) * 0x1.0p-24); /* [0, 1) */
}

static pio_sampler *make(pio_sampler_params p, int32_t n_vocab) {
    pio_error err;
    pio_sampler *s = pio_sampler_new(&p, n_vocab, &err);
    CHECK_MSG(s != NULL, "%s", err.msg);
    return s;
}

static int32_t sample_once(pio_sampler_params p, const float *logits, int32_t n) {
    pio_sampler *s = make(p, n);
    int32_t tok = s ? pio_sampler_sample(s, logits) : -1;
    pio_sampler_free(s);
    return tok;
}

static int32_t argmax(const float *l, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[best]) best = i;
    return best;
}

static void test_greedy(void) {
    pio_sampler_params p = pio_sampler_default_params();
    p.temperature = 0;
    float l[6] = {0.5f, -1.0f, 3.0f, 2.9f, 3.0f, -INFINITY};
    CHECK(sample_once(p, l, 6) == 2); /* ties go to the lowest id */
    float nan_l[3] = {NAN, 1.0f, 0.0f};
    CHECK(sample_once(p, nan_l, 3) == 1); /* NaN never wins */
    float all_inf[3] = {-INFINITY, -INFINITY, -INFINITY};
    CHECK(sample_once(p, all_inf, 3) == 0);

    float *big = malloc(BIG_VOCAB * sizeof *big);
    for (int32_t i = 0; i < BIG_VOCAB; i++) big[i] = frand() * 10 - 5;
    big[123456] = 7.0f;
    CHECK(sample_once(p, big, BIG_VOCAB) == 123456);
    free(big);
}

static void test_seeds(void) {
    enum { N = 64, DRAWS = 200 };
    float l[N];
    for (int i = 0; i < N; i++) l[i] = frand() * 2;
    pio_sampler_params p = pio_sampler_default_params();
    p.seed = 42;
    pio_sampler *a = make(p, N), *b = make(p, N);
    p.seed = 43;
    pio_sampler *c = make(p, N);
    int32_t first[DRAWS];
    int same_ab = 0, same_ac = 0;
    for (int i = 0; i < DRAWS; i++) {
        int32_t ta = pio_sampler_sample(a, l), tb = pio_sampler_sample(b, l),
                tc = pio_sampler_sample(c, l);
        first[i] = ta;
        same_ab += ta == tb;
        same_ac += ta == tc;
        CHECK(ta >= 0 && ta < N);
    }
    CHECK(same_ab == DRAWS);
    CHECK_MSG(same_ac < DRAWS / 4, "seeds 42 and 43 agree on %d of %d draws", same_ac, DRAWS);

    /* reset reseeds: the same sequence again */
    pio_sampler_reset(a);
    int again = 0;
    for (int i = 0; i < DRAWS; i++) again += pio_sampler_sample(a, l) == first[i];
    CHECK(again == DRAWS);

    /* The stream itself is fixed across machines: pin the first draws of seed 42
     * over equal logits (every weight is exactly 1, so no rounding enters),
     * so that a change to the generator cannot slip by. */
    float flat[1000];
    for (int i = 0; i < 1000; i++) flat[i] = 0;
    p.seed = 42;
    pio_sampler *f1 = make(p, 1000), *f2 = make(p, 1000);
    int32_t seq[4];
    for (int i = 0; i < 4; i++) seq[i] = pio_sampler_sample(f1, flat);
    for (int i = 0; i < 4; i++) CHECK(pio_sampler_sample(f2, flat) == seq[i]);
    CHECK_MSG(seq[0] == 83 && seq[1] == 378 && seq[2] == 680 && seq[3] == 924,
              "seed 42 over 1000 equal logits drew %d %d %d %d", seq[0], seq[1], seq[2], seq[3]);
    pio_sampler_free(a);
    pio_sampler_free(b);
    pio_sampler_free(c);
    pio_sampler_free(f1);
    pio_sampler_free(f2);
}

static void test_filters_equal_greedy(void) {
    float *l = malloc(BIG_VOCAB * sizeof *l);
    for (int round = 0; round < 5; round++) {
        for (int32_t i = 0; i < BIG_VOCAB; i++) l[i] = frand() * 8 - 4;
        int32_t best = argmax(l, BIG_VOCAB);
        pio_sampler_params p = pio_sampler_default_params();
        p.seed = (uint64_t)round;
        p.top_k = 1;
        CHECK(sample_once(p, l, BIG_VOCAB) == best);
        p = pio_sampler_default_params();
        p.seed = (uint64_t)round;
        p.top_p = 1e-6f;
        CHECK(sample_once(p, l, BIG_VOCAB) == best);
        p.top_p = 1e-6f;
        p.temperature = 0.7f;
        CHECK(sample_once(p, l, BIG_VOCAB) == best);
    }
    /* top_p tiny with a tie at the top keeps the lowest id, like greedy */
    float tie[4] = {1.0f, 3.0f, 3.0f, 0.0f};
    pio_sampler_params p = pio_sampler_default_params();
    p.top_p = 1e-6f;
    for (uint64_t seed = 0; seed < 20; seed++) {
        p.seed = seed;
        CHECK(sample_once(p, tie, 4) == 1);
    }
    free(l);
}

/* top_k keeps the k best (and, as transformers does, ties with the k-th);
 * top_p keeps the smallest prefix reaching p. Checked against brute force on
 * the full vocabulary, both peaked and flat (where top_p needs most of it). */
typedef struct ranked {
    int32_t id;
    float logit;
} ranked;
static int ranked_cmp(const void *pa, const void *pb) {
    const ranked *a = pa, *b = pb;
    if (a->logit != b->logit) return a->logit > b->logit ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static void test_top_k_top_p_sets(void) {
    float *l = malloc(BIG_VOCAB * sizeof *l);
    ranked *r = malloc(BIG_VOCAB * sizeof *r);
    unsigned char *allowed = malloc(BIG_VOCAB);
    int32_t *rank_of = malloc(BIG_VOCAB * sizeof *rank_of);
    const float scales[2] = {12.0f, 0.5f}; /* peaked, flat */
    for (int sc = 0; sc < 2; sc++) {
        for (int32_t i = 0; i < BIG_VOCAB; i++) {
            l[i] = frand() * scales[sc];
            r[i] = (ranked){i, l[i]};
        }
        qsort(r, BIG_VOCAB, sizeof *r, ranked_cmp);
        for (int32_t i = 0; i < BIG_VOCAB; i++) rank_of[r[i].id] = i;

        /* top_k = 40 */
        memset(allowed, 0, BIG_VOCAB);
        for (int i = 0; i < 40; i++) allowed[r[i].id] = 1;
        pio_sampler_params p = pio_sampler_default_params();
        p.top_k = 40;
        p.seed = 7;
        pio_sampler *s = make(p, BIG_VOCAB);
        int ok = 0;
        for (int i = 0; i < 300; i++) ok += allowed[pio_sampler_sample(s, l)];
        CHECK_MSG(ok == 300, "scale %g: %d of 300 top_k draws in the top 40", scales[sc], ok);
        pio_sampler_free(s);

        /* top_p = 0.9 */
        double sum = 0, cum = 0;
        for (int32_t i = 0; i < BIG_VOCAB; i++) sum += expf(r[i].logit - r[0].logit);
        int32_t nucleus = 0;
        memset(allowed, 0, BIG_VOCAB);
        while (nucleus < BIG_VOCAB) {
            cum += expf(r[nucleus].logit - r[0].logit) / sum;
            allowed[r[nucleus++].id] = 1;
            if (cum >= 0.9) break;
        }
        p = pio_sampler_default_params();
        p.top_p = 0.9f;
        p.seed = 8;
        s = make(p, BIG_VOCAB);
        ok = 0;
        int32_t deepest = 0; /* the worst rank drawn: near the edge, not past it */
        for (int i = 0; i < 400; i++) {
            int32_t t = pio_sampler_sample(s, l);
            ok += allowed[t];
            if (rank_of[t] > deepest) deepest = rank_of[t];
        }
        CHECK_MSG(ok == 400, "scale %g: %d of 400 top_p draws in the %d-token nucleus",
                  scales[sc], ok, nucleus);
        CHECK_MSG(deepest >= nucleus * 8 / 10, "scale %g: deepest rank drawn %d of %d",
                  scales[sc], deepest, nucleus);
        pio_sampler_free(s);
    }

    /* The exact edge of the nucleus where the vocabulary is large and
     * unsorted: probabilities .506, .307, .186, and 3e-4 spread over the rest. */
    for (int32_t i = 0; i < BIG_VOCAB; i++) l[i] = -20.0f;
    l[5] = 0.0f;
    l[77777] = -0.5f;
    l[150000] = -1.0f;
    const float edges[2] = {0.8f, 0.82f};
    for (int e = 0; e < 2; e++) {
        pio_sampler_params p = pio_sampler_default_params();
        p.top_p = edges[e];
        pio_sampler *s = make(p, BIG_VOCAB);
        int h5 = 0, h77777 = 0, h150000 = 0, other = 0;
        for (int i = 0; i < 500; i++) {
            int32_t t = pio_sampler_sample(s, l);
            h5 += t == 5, h77777 += t == 77777, h150000 += t == 150000;
            other += t != 5 && t != 77777 && t != 150000;
        }
        CHECK(h5 > 0 && h77777 > 0 && other == 0);
        CHECK_MSG(e == 0 ? h150000 == 0 : h150000 > 0, "top_p %g: token 150000 drawn %d times",
                  edges[e], h150000);
        pio_sampler_free(s);
    }

    /* Ties with the k-th value survive top_k (transformers masks only values
     * below it): top_k = 1 over {2, 5, 5, 1} draws both 5s. */
    float tie[4] = {2.0f, 5.0f, 5.0f, 1.0f};
    pio_sampler_params p = pio_sampler_default_params();
    p.top_k = 1;
    pio_sampler *s = make(p, 4);
    int hits[4] = {0};
    for (int i = 0; i < 400; i++) hits[pio_sampler_sample(s, tie)]++;
    CHECK(hits[0] == 0 && hits[3] == 0 && hits[1] > 100 && hits[2] > 100);
    pio_sampler_free(s);
    free(l);
    free(r);
    free(allowed);
    free(rank_of);
}

static void test_min_p(void) {
    /* probabilities relative to the top: exp(0)=1, exp(-0.5)=.61, exp(-1)=.37, exp(-3)=.05 */
    float l[5] = {0.0f, -0.5f, -1.0f, -3.0f, -10.0f};
    pio_sampler_params p = pio_sampler_default_params();
    p.min_p = 0.5f;
    p.seed = 3;
    pio_sampler *s = make(p, 5);
    int hits[5] = {0};
    for (int i = 0; i < 2000; i++) hits[pio_sampler_sample(s, l)]++;
    CHECK(hits[0] > 0 && hits[1] > 0);
    CHECK_MSG(hits[2] == 0 && hits[3] == 0 && hits[4] == 0, "hits %d %d %d", hits[2], hits[3],
              hits[4]);
    pio_sampler_free(s);

    p.min_p = 1.0f; /* only the top survives */
    CHECK(sample_once(p, l, 5) == 0);
}

/* The penalties change logits; greedy turns the exact value into a visible
 * choice by placing a rival token at the exact expected value: a tie goes to
 * the lower id (the penalised token 0), the next float down loses to it. */
static int32_t greedy_after(pio_sampler_params p, const float *l, int32_t n, const int32_t *seen,
                            int n_seen) {
    p.temperature = 0;
    pio_sampler *s = make(p, n);
    if (!s) return -1;
    for (int i = 0; i < n_seen; i++) pio_sampler_accept(s, seen[i]);
    int32_t tok = pio_sampler_sample(s, l);
    pio_sampler_free(s);
    return tok;
}

static void test_penalties(void) {
    pio_sampler_params p = pio_sampler_default_params();
    const int32_t seen0[] = {0};

    /* repetition: positive logit divided: 3 / 1.5 = 2 exactly */
    p.repetition_penalty = 1.5f;
    float pos[3] = {3.0f, 2.0f, -5.0f};
    CHECK(greedy_after(p, pos, 3, seen0, 1) == 0);                      /* 2 == 2: tie, id 0 */
    pos[1] = nextafterf(2.0f, 3.0f);
    CHECK(greedy_after(p, pos, 3, seen0, 1) == 1);                      /* 2 < 2+ulp */
    pos[1] = nextafterf(2.0f, 0.0f);
    CHECK(greedy_after(p, pos, 3, seen0, 1) == 0);
    /* negative logit multiplied: -2 * 1.5 = -3 */
    float neg[3] = {-2.0f, -3.0f, -9.0f};
    CHECK(greedy_after(p, neg, 3, seen0, 1) == 0);
    neg[1] = nextafterf(-3.0f, 0.0f);
    CHECK(greedy_after(p, neg, 3, seen0, 1) == 1);
    /* penalty < 1 rewards repetition: 3 / 0.5 = 6 */
    p.repetition_penalty = 0.5f;
    float rew[2] = {3.0f, 6.0f};
    CHECK(greedy_after(p, rew, 2, seen0, 1) == 0);
    rew[1] = nextafterf(6.0f, 7.0f);
    CHECK(greedy_after(p, rew, 2, seen0, 1) == 1);
    /* repeated occurrences count once for the repetition penalty */
    p.repetition_penalty = 2.0f;
    const int32_t thrice[] = {0, 0, 0};
    float rep3[2] = {4.0f, 2.0f}; /* 4 / 2 = 2, not 4 / 8 */
    CHECK(greedy_after(p, rep3, 2, thrice, 3) == 0);
    rep3[1] = nextafterf(2.0f, 3.0f);
    CHECK(greedy_after(p, rep3, 2, thrice, 3) == 1);

    /* presence and frequency: 5 - (2 * 0.75 + 0.5) = 3 for a token seen twice */
    p = pio_sampler_default_params();
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.75f;
    const int32_t twice[] = {0, 2, 0};
    float pf[3] = {5.0f, 3.0f, -100.0f};
    CHECK(greedy_after(p, pf, 3, twice, 3) == 0);
    pf[1] = nextafterf(3.0f, 4.0f);
    CHECK(greedy_after(p, pf, 3, twice, 3) == 1);
    /* negative penalties reward */
    p.presence_penalty = -1.0f;
    p.frequency_penalty = 0.0f;
    float pr[2] = {1.0f, 2.0f};
    CHECK(greedy_after(p, pr, 2, seen0, 1) == 0); /* 1 + 1 = 2: tie */

    /* order: repetition first, then subtraction: 4 / 2 - 1 = 1 (not (4 - 1) / 2 = 1.5) */
    p = pio_sampler_default_params();
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 1.0f;
    float order[2] = {4.0f, 1.25f};
    CHECK(greedy_after(p, order, 2, seen0, 1) == 1);
    order[1] = 1.0f;
    CHECK(greedy_after(p, order, 2, seen0, 1) == 0);

    /* the window: penalty_last_n = 2 sees only the last two accepted tokens */
    p = pio_sampler_default_params();
    p.presence_penalty = 10.0f;
    p.penalty_last_n = 2;
    float win[3] = {3.0f, 1.0f, 0.0f};
    const int32_t hist_out[] = {0, 2, 2}; /* token 0 has left the window */
    const int32_t hist_in[] = {2, 0, 2};
    CHECK(greedy_after(p, win, 3, hist_out, 3) == 0);
    CHECK(greedy_after(p, win, 3, hist_in, 3) == 1);
    p.penalty_last_n = -1; /* all */
    CHECK(greedy_after(p, win, 3, hist_out, 3) == 1);
    p.penalty_last_n = 0; /* none */
    CHECK(greedy_after(p, win, 3, hist_in, 3) == 0);
    /* a long history wraps the window many times */
    p.penalty_last_n = 3;
    p.temperature = 0;
    pio_sampler *s = make(p, 3);
    for (int i = 0; i < 100; i++) pio_sampler_accept(s, i % 2 ? 2 : 0);
    pio_sampler_accept(s, 1);
    pio_sampler_accept(s, 2);
    pio_sampler_accept(s, 1); /* window {1, 2, 1}: token 0 free again */
    CHECK(pio_sampler_sample(s, win) == 0);
    pio_sampler_accept(s, 0);
    pio_sampler_accept(s, 0); /* window {1, 0, 0}: only token 2 is free */
    pio_sampler_accept(s, -5); /* out of range: ignored */
    pio_sampler_accept(s, 1 << 20);
    CHECK(pio_sampler_sample(s, win) == 2);
    pio_sampler_reset(s); /* forgets the history */
    CHECK(pio_sampler_sample(s, win) == 0);
    pio_sampler_free(s);
}

static void test_invalid_params(void) {
    struct {
        pio_sampler_params p;
        const char *name;
    } cases[10];
    int n = 0;
    for (int i = 0; i < 10; i++) cases[i].p = pio_sampler_default_params();
    cases[n].p.temperature = -0.1f, cases[n++].name = "temperature";
    cases[n].p.temperature = NAN, cases[n++].name = "temperature";
    cases[n].p.top_k = -1, cases[n++].name = "top_k";
    cases[n].p.top_p = 0.0f, cases[n++].name = "top_p";
    cases[n].p.top_p = 1.5f, cases[n++].name = "top_p";
    cases[n].p.min_p = -0.1f, cases[n++].name = "min_p";
    cases[n].p.min_p = 1.1f, cases[n++].name = "min_p";
    cases[n].p.repetition_penalty = 0.0f, cases[n++].name = "repetition_penalty";
    cases[n].p.frequency_penalty = INFINITY, cases[n++].name = "frequency_penalty";
    cases[n].p.penalty_last_n = -2, cases[n++].name = "penalty_last_n";
    for (int i = 0; i < n; i++) {
        pio_error err = {0};
        pio_sampler *s = pio_sampler_new(&cases[i].p, 10, &err);
        CHECK(s == NULL && err.status == PIO_ERR_INVALID);
        CHECK_ERR(err, cases[i].name);
        pio_sampler_free(s);
    }
    pio_sampler_params p = pio_sampler_default_params();
    pio_error err = {0};
    CHECK(pio_sampler_new(&p, 0, &err) == NULL && err.status == PIO_ERR_INVALID);
    CHECK_ERR(err, "n_vocab");
    pio_sampler_free(NULL);
}

/* 20k draws at temperature 1 (and 0.5, and with top_k) against the softmax
 * the draw should follow; a loose bound, about 6 standard deviations. */
static void check_distribution(const char *what, pio_sampler_params p, const float *l,
                               const double *expect, int n) {
    enum { DRAWS = 20000 };
    pio_sampler *s = make(p, n);
    if (!s) return;
    int hits[16] = {0};
    for (int i = 0; i < DRAWS; i++) hits[pio_sampler_sample(s, l)]++;
    for (int i = 0; i < n; i++) {
        double got = (double)hits[i] / DRAWS;
        CHECK_MSG(fabs(got - expect[i]) < 0.02, "%s: token %d drawn %.4f, softmax %.4f",
                  what, i, got, expect[i]);
    }
    pio_sampler_free(s);
}

static void test_distribution(void) {
    enum { N = 8 };
    const float l[N] = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f, 0.0f, 2.2f, -3.0f};
    double e[N], sum = 0;
    pio_sampler_params p = pio_sampler_default_params();
    p.seed = 2024;
    for (int i = 0; i < N; i++) sum += e[i] = exp(l[i]);
    for (int i = 0; i < N; i++) e[i] /= sum;
    check_distribution("temperature 1", p, l, e, N);

    p.temperature = 0.5f;
    sum = 0;
    for (int i = 0; i < N; i++) sum += e[i] = exp(l[i] / 0.5);
    for (int i = 0; i < N; i++) e[i] /= sum;
    check_distribution("temperature 0.5", p, l, e, N);

    /* top_k = 3 renormalises over tokens 6, 1, 4 */
    p.temperature = 1.0f;
    p.top_k = 3;
    sum = 0;
    for (int i = 0; i < N; i++) sum += e[i] = (i == 6 || i == 1 || i == 4) ? exp(l[i]) : 0;
    for (int i = 0; i < N; i++) e[i] /= sum;
    check_distribution("top_k 3", p, l, e, N);
}

/* Not a test (tests never assert on time): a rough cost per token at the
 * size that matters, printed for whoever reads the log. */
static void report_speed(void) {
    float *l = malloc(BIG_VOCAB * sizeof *l);
    for (int32_t i = 0; i < BIG_VOCAB; i++) l[i] = frand() * 20 - 10;
    struct {
        const char *name;
        int top_k;
        float top_p, min_p, temp;
    } cfg[] = {{"greedy", 0, 1, 0, 0},       {"temperature 1", 0, 1, 0, 1},
               {"top_k 40 top_p 0.95", 40, 0.95f, 0, 0.7f}, {"top_p 0.9", 0, 0.9f, 0, 1},
               {"min_p 0.05", 0, 1, 0.05f, 1}};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        pio_sampler_params p = pio_sampler_default_params();
        p.top_k = cfg[c].top_k;
        p.top_p = cfg[c].top_p;
        p.min_p = cfg[c].min_p;
        p.temperature = cfg[c].temp;
        p.repetition_penalty = 1.1f;
        pio_sampler *s = make(p, BIG_VOCAB);
        for (int i = 0; i < 64; i++) pio_sampler_accept(s, i * 997);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < 50; i++) pio_sampler_accept(s, pio_sampler_sample(s, l));
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = ((double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6) / 50;
        printf("vocab %d, %-20s %.3f ms/token\n", BIG_VOCAB, cfg[c].name, ms);
        pio_sampler_free(s);
    }
    free(l);
}

int main(void) {
    test_greedy();
    test_seeds();
    test_filters_equal_greedy();
    test_top_k_top_p_sets();
    test_min_p();
    test_penalties();
    test_invalid_params();
    test_distribution();
    report_speed();
    TEST_MAIN_END();
}
