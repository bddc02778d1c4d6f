/* The sampler: logits in, one token out.
 *
 * Internally a chain of stages, each a small function over an array of
 * candidates (id, logit), built from the parameters in transformers' order:
 * penalties, temperature, top_k, top_p, min_p, then a seeded draw (or argmax
 * when temperature is 0). Keeping stages separate, as llama.cpp's sampler
 * chain does, is what lets a Lua strategy compose them later.
 *
 * Speed matters at a vocabulary of 151,936: the candidate buffer is allocated
 * once, top_k selects instead of sorting, and top_p sorts only the few
 * candidates at the edge of its nucleus.
 */
#include "pio/sampler.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct pio_cand {
    int32_t id;
    float logit;
} pio_cand;

typedef struct pio_cands {
    pio_cand *data;
    size_t size;
    bool sorted;      /* descending logit, ties by ascending id */
    bool by_id;       /* the whole vocabulary, data[i].id == i */
    int32_t selected; /* set by the terminal stage (greedy or dist) */
} pio_cands;

typedef union stage_arg {
    float f;   /* temperature, top_p, min_p */
    int32_t k; /* top_k */
} stage_arg;

typedef struct sampler_stage sampler_stage;
typedef void (*stage_fn)(pio_sampler *s, const sampler_stage *st, pio_cands *c);
struct sampler_stage {
    const char *name; /* "penalties", "temperature", "top_k", ... */
    stage_fn apply;
    stage_arg arg;
};

#define MAX_STAGES 8

struct pio_sampler {
    pio_sampler_params params;
    int32_t n_vocab;
    sampler_stage chain[MAX_STAGES];
    int n_stages;
    pio_cand *cands; /* [n_vocab], reused by every call */
    float *weights;  /* [n_vocab], exp(logit - max) scratch for the draw */
    uint64_t rng[4]; /* xoshiro256** state */

    /* Penalty window, NULL when no penalty is on. counts[t] is how often t
     * occurs among the last penalty_last_n accepted tokens; seen lists the
     * tokens with a nonzero count so a sample touches only those. */
    int32_t *counts, *seen, *seen_pos;
    int32_t n_seen;
    int32_t *ring; /* the window itself when penalty_last_n > 0 */
    int32_t ring_head, ring_fill;
};

/* ---- random numbers ------------------------------------------------------
 * xoshiro256** seeded through splitmix64 (Vigna's recommendation): integer
 * only, so the same seed gives the same stream on every machine. */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4]) {
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static void rng_seed(uint64_t s[4], uint64_t seed) {
    for (int i = 0; i < 4; i++) s[i] = splitmix64(&seed);
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4]) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

/* ---- candidate order ----------------------------------------------------
 * A total order (logit descending, then id ascending) makes selection and
 * sorting deterministic, and makes ties go to the lowest id as greedy does. */

static inline bool cand_before(pio_cand a, pio_cand b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

static int cand_cmp(const void *pa, const void *pb) {
    pio_cand a = *(const pio_cand *)pa, b = *(const pio_cand *)pb;
    return cand_before(a, b) ? -1 : cand_before(b, a) ? 1 : 0;
}

static inline void cand_swap(pio_cand *a, pio_cand *b) {
    pio_cand t = *a;
    *a = *b;
    *b = t;
}

static void sort_all(pio_cands *c) {
    qsort(c->data, c->size, sizeof *c->data, cand_cmp);
    c->sorted = true;
    c->by_id = false;
}

/* The k-th largest logit (1 <= k <= size), through a min-heap of the k
 * largest seen so far in heap[k]: once it fills, almost every logit fails the
 * single comparison with its root, so this costs about one pass. */
static float kth_largest(const pio_cands *c, size_t k, float *heap) {
    size_t n = 0;
    for (size_t i = 0; i < c->size; i++) {
        float x = c->data[i].logit;
        if (n < k) { /* push and sift up */
            size_t j = n++;
            for (; j > 0 && heap[(j - 1) / 2] > x; j = (j - 1) / 2) heap[j] = heap[(j - 1) / 2];
            heap[j] = x;
        } else if (x > heap[0]) { /* replace the root and sift down */
            size_t j = 0;
            for (;;) {
                size_t l = 2 * j + 1, m = l + 1 < k && heap[l + 1] < heap[l] ? l + 1 : l;
                if (l >= k || heap[m] >= x) break;
                heap[j] = heap[m];
                j = m;
            }
            heap[j] = x;
        }
    }
    return heap[0];
}

static float max_logit(const pio_cands *c) {
    if (c->sorted) return c->data[0].logit;
    float m = -INFINITY;
    for (size_t i = 0; i < c->size; i++) m = c->data[i].logit > m ? c->data[i].logit : m;
    return m;
}

/* ---- stages ------------------------------------------------------------ */

/* Repetition as transformers' RepetitionPenaltyLogitsProcessor (once per
 * distinct token, however often it occurs), then presence and frequency as
 * llama.cpp and OpenAI subtract them. */
static inline float penalize(float logit, int32_t count, const pio_sampler_params *p) {
    logit = logit < 0 ? logit * p->repetition_penalty : logit / p->repetition_penalty;
    return logit - ((float)count * p->frequency_penalty + (float)(count > 0) * p->presence_penalty);
}

static void stage_penalties(pio_sampler *s, const sampler_stage *st, pio_cands *c) {
    (void)st;
    if (c->by_id) { /* the usual case: visit only the tokens seen */
        for (int32_t j = 0; j < s->n_seen; j++) {
            pio_cand *cand = &c->data[s->seen[j]];
            cand->logit = penalize(cand->logit, s->counts[cand->id], &s->params);
        }
    } else {
        for (size_t i = 0; i < c->size; i++) {
            int32_t n = s->counts[c->data[i].id];
            if (n) c->data[i].logit = penalize(c->data[i].logit, n, &s->params);
        }
    }
    c->sorted = false;
}

static void stage_temperature(pio_sampler *s, const sampler_stage *st, pio_cands *c) {
    (void)s;
    /* Divide, not multiply by 1/T: transformers' TemperatureLogitsWarper divides. */
    const float t = st->arg.f;
    for (size_t i = 0; i < c->size; i++) c->data[i].logit /= t;
    c->sorted = false; /* rounding can merge neighbours, breaking the id tie order */
}

static void stage_greedy(pio_sampler *s, const sampler_stage *st, pio_cands *c) {
    (void)s; (void)st;
    if (c->sorted) {
        c->selected = c->data[0].id;
        return;
    }
    pio_cand best = c->data[0];
    for (size_t i = 1; i < c->size; i++)
        if (cand_before(c->data[i], best)) best = c->data[i];
    c->selected = best.id;
}

/* Keeps every token whose logit is at least the k-th largest: the k best
 * and, as transformers' TopKLogitsWarper does (it masks only logits below
 * the k-th value), any tied with the k-th. Selection, not a full sort. */
static void stage_top_k(pio_sampler *s, const sampler_stage *st, pio_cands *c) {
    size_t k = (size_t)st->arg.k;
    if (k >= c->size) return;
    float kth = kth_largest(c, k, s->weights);
    size_t keep = 0;
    for (size_t i = 0; i < c->size; i++)
        if (c->data[i].logit >= kth) c->data[keep++] = c->data[i];
    c->size = keep;
    sort_all(c); /* k is small; a sorted set spares later stages a search */
}

/* top_p buckets: how finely logits below the maximum are told apart. Tokens
 * more than TOP_P_RANGE below it (weight < e^-32) share the last bucket. */
#define TOP_P_BUCKETS 1024
#define TOP_P_RANGE 32.0f

static inline int top_p_bucket(float logit, float lmax) {
    float d = (lmax - logit) * (TOP_P_BUCKETS / TOP_P_RANGE); /* monotone in logit */
    return d < TOP_P_BUCKETS - 1 ? (int)d : TOP_P_BUCKETS - 1;
}

/* Keeps the smallest set of best tokens (in candidate order) whose
 * probability mass reaches p. A sorted or short array is walked directly.
 * Otherwise a histogram of probability mass over logit buckets finds the
 * bucket where the mass crosses p: every better bucket is kept whole, and
 * only the crossing bucket is sorted, instead of the whole vocabulary. */
static void stage_top_p(pio_sampler *s, const sampler_stage *st, pio_cands *c) {
    (void)s;
    const double p = st->arg.f;
    if (c->size <= 1) return;
    float lmax = max_logit(c);
    if (!isfinite(lmax)) return;

    size_t first = 0; /* candidates [0, first) are kept; the walk starts there */
    size_t walk_end = c->size;
    double sum = 0, cum = 0;
    if (!c->sorted && c->size > 2 * TOP_P_BUCKETS) {
        static_assert(TOP_P_BUCKETS <= 4096, "the histogram lives on the stack");
        double mass[TOP_P_BUCKETS] = {0};
        for (size_t i = 0; i < c->size; i++) {
            float w = expf(c->data[i].logit - lmax);
            mass[top_p_bucket(c->data[i].logit, lmax)] += w;
            sum += w;
        }
        int cross = 0;
        while (cross < TOP_P_BUCKETS - 1 && (cum + mass[cross]) / sum < p) cum += mass[cross++];
        /* Partition: buckets before the crossing one, then the crossing one. */
        for (size_t i = 0; i < c->size; i++)
            if (top_p_bucket(c->data[i].logit, lmax) < cross)
                cand_swap(&c->data[first++], &c->data[i]);
        walk_end = first;
        for (size_t i = first; i < c->size; i++)
            if (top_p_bucket(c->data[i].logit, lmax) == cross)
                cand_swap(&c->data[walk_end++], &c->data[i]);
        qsort(c->data + first, walk_end - first, sizeof *c->data, cand_cmp);
        c->sorted = false;
        c->by_id = false;
    } else {
        for (size_t i = 0; i < c->size; i++) sum += expf(c->data[i].logit - lmax);
        if (!c->sorted) sort_all(c);
    }
    for (size_t i = first; i < walk_end; i++) {
        cum += expf(c->data[i].logit - lmax);
        if (cum / sum >= p) {
            c->size = i + 1;
            return;
        }
    }
    c->size = walk_end; /* rounding left the mass a hair under p: keep all walked */
}

/* Keeps tokens with probability >= min_p × the top probability, that is
 * logit - max >= log(min_p): compared in logit space, so no exp per token.
 * A stable compaction, so order is kept. */
static void stage_min_p(pio_sampler *s, const sampler_stage *st, pio_cands *c) {
    (void)s;
    const float log_mp = logf(st->arg.f);
    float lmax = max_logit(c);
    if (!isfinite(lmax)) return;
    size_t keep = 0;
    for (size_t i = 0; i < c->size; i++)
        if (c->data[i].logit - lmax >= log_mp) c->data[keep++] = c->data[i];
    if (keep != c->size) c->by_id = false;
    c->size = keep;
}

/* Draws from softmax(logits) over the remaining candidates. */
static void stage_dist(pio_sampler *s, const sampler_stage *st, pio_cands *c) {
    double u = rng_uniform(s->rng); /* drawn every time: one number per token */
    float lmax = max_logit(c);
    if (!isfinite(lmax)) { /* all -inf (or a +inf): nothing to weigh, take the best */
        stage_greedy(s, st, c);
        return;
    }
    double sum = 0;
    for (size_t i = 0; i < c->size; i++) sum += s->weights[i] = expf(c->data[i].logit - lmax);
    double target = u * sum, cum = 0;
    for (size_t i = 0; i < c->size; i++) {
        cum += s->weights[i];
        if (target < cum) {
            c->selected = c->data[i].id;
            return;
        }
    }
    /* u * sum rounded up to the total: the last token with any weight */
    for (size_t i = c->size; i-- > 0;)
        if (s->weights[i] > 0) {
            c->selected = c->data[i].id;
            return;
        }
    stage_greedy(s, st, c);
}

/* ---- penalty window ---------------------------------------------------- */

static void count_add(pio_sampler *s, int32_t tok) {
    if (s->counts[tok]++ == 0) {
        s->seen_pos[tok] = s->n_seen;
        s->seen[s->n_seen++] = tok;
    }
}

static void count_remove(pio_sampler *s, int32_t tok) {
    if (--s->counts[tok] == 0) { /* swap-remove from the seen list */
        int32_t last = s->seen[--s->n_seen];
        s->seen[s->seen_pos[tok]] = last;
        s->seen_pos[last] = s->seen_pos[tok];
    }
}

void pio_sampler_accept(pio_sampler *s, int32_t token) {
    /* No penalty, nothing to remember. An id outside the vocabulary has no
     * logit to penalise, and accept has no error channel: it is ignored. */
    if (!s->counts || token < 0 || token >= s->n_vocab) return;
    int32_t last_n = s->params.penalty_last_n;
    if (last_n > 0) {
        if (s->ring_fill == last_n) { /* window full: the oldest token leaves */
            count_remove(s, s->ring[s->ring_head]);
            s->ring[s->ring_head] = token;
            s->ring_head = (s->ring_head + 1) % last_n;
        } else {
            s->ring[s->ring_fill++] = token;
        }
    }
    count_add(s, token);
}

void pio_sampler_reset(pio_sampler *s) {
    if (s->counts) {
        for (int32_t j = 0; j < s->n_seen; j++) s->counts[s->seen[j]] = 0;
        s->n_seen = 0;
        s->ring_head = s->ring_fill = 0;
    }
    rng_seed(s->rng, s->params.seed);
}

/* ---- construction ------------------------------------------------------ */

pio_sampler_params pio_sampler_default_params(void) {
    return (pio_sampler_params){
        .temperature = 1.0f,
        .top_k = 0,
        .top_p = 1.0f,
        .min_p = 0.0f,
        .repetition_penalty = 1.0f,
        .presence_penalty = 0.0f,
        .frequency_penalty = 0.0f,
        .penalty_last_n = -1,
        .seed = 0,
    };
}

/* Written as !(ok) so that NaN fails every check. */
static pio_status check_params(const pio_sampler_params *p, int32_t n_vocab, pio_error *err) {
    if (!(n_vocab > 0))
        return pio_error_set(err, PIO_ERR_INVALID, "n_vocab must be > 0, got %d", n_vocab);
    if (!(p->temperature >= 0 && isfinite(p->temperature)))
        return pio_error_set(err, PIO_ERR_INVALID, "temperature must be >= 0, got %g",
                             p->temperature);
    if (!(p->top_k >= 0))
        return pio_error_set(err, PIO_ERR_INVALID, "top_k must be >= 0 (0 = off), got %d",
                             p->top_k);
    if (!(p->top_p > 0 && p->top_p <= 1))
        return pio_error_set(err, PIO_ERR_INVALID, "top_p must be in (0, 1], got %g", p->top_p);
    if (!(p->min_p >= 0 && p->min_p <= 1))
        return pio_error_set(err, PIO_ERR_INVALID, "min_p must be in [0, 1], got %g", p->min_p);
    if (!(p->repetition_penalty > 0 && isfinite(p->repetition_penalty)))
        return pio_error_set(err, PIO_ERR_INVALID, "repetition_penalty must be > 0, got %g",
                             p->repetition_penalty);
    if (!isfinite(p->presence_penalty))
        return pio_error_set(err, PIO_ERR_INVALID, "presence_penalty must be finite, got %g",
                             p->presence_penalty);
    if (!isfinite(p->frequency_penalty))
        return pio_error_set(err, PIO_ERR_INVALID, "frequency_penalty must be finite, got %g",
                             p->frequency_penalty);
    if (!(p->penalty_last_n >= -1))
        return pio_error_set(err, PIO_ERR_INVALID,
                             "penalty_last_n must be >= -1 (-1 = all), got %d", p->penalty_last_n);
    return PIO_OK;
}

static void chain_add(pio_sampler *s, const char *name, stage_fn apply, stage_arg arg) {
    s->chain[s->n_stages++] = (sampler_stage){.name = name, .apply = apply, .arg = arg};
}

pio_sampler *pio_sampler_new(const pio_sampler_params *p, int32_t n_vocab, pio_error *err) {
    if (check_params(p, n_vocab, err)) return NULL;
    pio_sampler *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->params = *p;
    s->n_vocab = n_vocab;
    s->cands = malloc((size_t)n_vocab * sizeof *s->cands);
    s->weights = malloc((size_t)n_vocab * sizeof *s->weights);
    if (!s->cands || !s->weights) goto oom;

    bool penalties = p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f ||
                     p->frequency_penalty != 0.0f;
    if (penalties && p->penalty_last_n != 0) {
        s->counts = calloc((size_t)n_vocab, sizeof *s->counts);
        s->seen = malloc((size_t)n_vocab * sizeof *s->seen);
        s->seen_pos = malloc((size_t)n_vocab * sizeof *s->seen_pos);
        if (p->penalty_last_n > 0) s->ring = malloc((size_t)p->penalty_last_n * sizeof *s->ring);
        if (!s->counts || !s->seen || !s->seen_pos || (p->penalty_last_n > 0 && !s->ring))
            goto oom;
        chain_add(s, "penalties", stage_penalties, (stage_arg){0});
    }
    if (p->temperature == 0) {
        /* Every filter keeps the best token, so greedy needs none of them. */
        chain_add(s, "greedy", stage_greedy, (stage_arg){0});
    } else {
        if (p->temperature != 1.0f)
            chain_add(s, "temperature", stage_temperature, (stage_arg){.f = p->temperature});
        if (p->top_k > 0) chain_add(s, "top_k", stage_top_k, (stage_arg){.k = p->top_k});
        if (p->top_p < 1.0f) chain_add(s, "top_p", stage_top_p, (stage_arg){.f = p->top_p});
        if (p->min_p > 0.0f) chain_add(s, "min_p", stage_min_p, (stage_arg){.f = p->min_p});
        chain_add(s, "dist", stage_dist, (stage_arg){0});
    }
    pio_sampler_reset(s);
    return s;
oom:
    pio_sampler_free(s);
    pio_error_set(err, PIO_ERR_OOM, "out of memory creating a sampler for %d tokens", n_vocab);
    return NULL;
}

void pio_sampler_free(pio_sampler *s) {
    if (!s) return;
    free(s->cands);
    free(s->weights);
    free(s->counts);
    free(s->seen);
    free(s->seen_pos);
    free(s->ring);
    free(s);
}

int32_t pio_sampler_sample(pio_sampler *s, const float *logits) {
    pio_cands c = {.data = s->cands, .size = (size_t)s->n_vocab, .by_id = true, .selected = -1};
    /* NaN would break the candidate order; it ranks below everything instead. */
    for (int32_t i = 0; i < s->n_vocab; i++)
        s->cands[i] = (pio_cand){i, isnan(logits[i]) ? -INFINITY : logits[i]};
    for (int i = 0; i < s->n_stages; i++) s->chain[i].apply(s, &s->chain[i], &c);
    return c.selected;
}
