/* Causal attention with GQA over the KV cache.
 *
 * Token t sees keys 0..pos[t] of cache slot seq[t]; query head h reads kv head
 * h / group:   out = Σ_j softmax_j(q·k_j · scale) v_j
 *
 * A work item is one token, one kv head and a batch of up to HEAD_BATCH of the
 * query heads that share it, so the cache rows are read from memory once per
 * batch rather than once per head (decode at long context is bound by reading
 * the cache). The heads take turns on slices of SLICE keys: one kv head's rows
 * are kv_heads · head_dim elements apart (2 KiB for 8 × 128 in bf16), a
 * stride that maps them onto few L2 sets, so only a small slice is sure to
 * stay cached until the last head of the batch has used it.
 *
 * Scores live in a stack buffer (CHUNK per head), so any context length works
 * without heap scratch. The f32 path is an online softmax: when a chunk raises
 * a head's running max, its partial output and sum are rescaled. The bf16 path
 * rounds each probability, which needs the final max and sum before the first
 * p·v: a statistics pass runs first, and the second pass recomputes the
 * scores only when they did not fit one chunk. The output rows are the
 * accumulators.
 *
 * A single token with SPLIT_MIN_KEYS keys or more (decode deep in the
 * context) splits the keys over the threads instead (attend_split), so the
 * cache is read as contiguous runs of positions holding every kv head.
 *
 * Batches of PREFILL_MIN tokens or more with full attention go instead to
 * attention_prefill_avx512.c where the CPU has AVX-512 (AVX-512 BF16 in bf16
 * mode): per kv head, Q·Kᵀ and P·V as register-tiled GEMMs over packed K and V.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention_kernels.h"
#include "attention_paged.h"
#include "cpu_features.h"
#include "cpu_internal.h"
#include "simd_avx2.h"

enum {
    CHUNK = 4096,   /* keys per pass: contexts up to 4096 read K once in bf16 mode */
    SLICE = 64,     /* keys every head of a batch handles before the next slice */
    HEAD_BATCH = 4, /* query heads per work item: scores take 4 · CHUNK · 4 B = 64 KiB of stack */
};

typedef struct {
    const float *q;    /* [n, heads, dk] */
    const pio_kv_view *kv; /* the cache: blocks [n_blocks, block, kv_heads, dk | dv] */
    float *out;        /* [n, heads, dv] */
    const int32_t *seq, *pos;
    int64_t n, heads, kv_heads, dk, dv;
    float *tiles;      /* int8 cache: per thread, SLICE dequantized rows of K and of V */
    size_t tile_floats; /* floats per thread */
    int64_t group;   /* query heads per kv head */
    int64_t hb;      /* query heads per work item (<= HEAD_BATCH) */
    int64_t batches; /* work items per (token, kv head) */
    float scale;
    bool k_bf16, v_bf16, round_bf16;
    bool avx512; /* the 16-lane inner loops of attention_avx512.c */
    bool dot;    /* bf16 mode, bf16 cache, AVX-512 BF16: q·k with vdpbf16ps */
    int n_tasks;
} attn_ctx;

enum { QB_MAX = 512 };     /* head_dim up to this takes the bf16 dot-product path */
enum { PREFILL_MIN = 16 }; /* batches from this many tokens take the GEMM-style path */

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* ---- q·k: four keys at a time share the loads of q ----------------------- */

/* The sums of a, b, c, d as one vector [Σa, Σb, Σc, Σd]. */
static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* q[0..d) · k_r[0..d) for the four keys k, k + step, k + 2 step, k + 3 step. */
static ALWAYS_INLINE __m128 dot4(const float *q, const char *k, size_t step, int64_t d, int bf16) {
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
        __m256 qv = _mm256_loadu_ps(q + i);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            a[r] = _mm256_fmadd_ps(qv, pio_load8(k + r * step, i, bf16), a[r]);
    }
    if (i < d) { /* head_dim not a multiple of 8 */
        __m256 qv = pio_load8_tail(q, i, d - i, 0);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            a[r] = _mm256_fmadd_ps(qv, pio_load8_tail(k + r * step, i, d - i, bf16), a[r]);
    }
    return hsum4(a[0], a[1], a[2], a[3]);
}

static ALWAYS_INLINE float dot1(const float *q, const char *k, int64_t d, int bf16) {
    __m256 a = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= d; i += 8)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), pio_load8(k, i, bf16), a);
    if (i < d)
        a = _mm256_fmadd_ps(pio_load8_tail(q, i, d - i, 0), pio_load8_tail(k, i, d - i, bf16), a);
    return pio_hsum256(a);
}

static inline float finish_score(const attn_ctx *c, float d) {
    /* transformers in bf16: the QKᵀ matmul's output is bf16, then ×scale in bf16 */
    return c->round_bf16 ? pio_round_bf16(pio_round_bf16(d) * c->scale) : d * c->scale;
}

/* s[j] = score of key j0 + j for j < len; k points at key 0, keys `step` bytes apart. */
static ALWAYS_INLINE void scores_impl(const attn_ctx *c, const float *q, const char *k, size_t step,
                                      int64_t j0, int64_t len, float *s, int bf16) {
    k += (size_t)j0 * step;
    int64_t j = 0;
    for (; j + 4 <= len; j += 4, k += 4 * step) {
        float d[4];
        _mm_storeu_ps(d, dot4(q, k, step, c->dk, bf16));
        for (int r = 0; r < 4; r++) s[j + r] = finish_score(c, d[r]);
    }
    for (; j < len; j++, k += step) s[j] = finish_score(c, dot1(q, k, c->dk, bf16));
}

static void scores(const attn_ctx *c, const float *q, const uint16_t *qb, const char *k,
                   size_t step, int64_t j0, int64_t len, float *s) {
    if (c->avx512) {
        pio_attn_scores_args a = {.q = q, .qb = c->dot ? qb : NULL, .k = k + (size_t)j0 * step,
                                  .step = step, .len = len, .d = c->dk, .scale = c->scale,
                                  .k_bf16 = c->k_bf16, .round_bf16 = c->round_bf16, .out = s};
        pio_attn_scores_avx512(&a);
        return;
    }
    if (c->k_bf16)
        scores_impl(c, q, k, step, j0, len, s, 1);
    else
        scores_impl(c, q, k, step, j0, len, s, 0);
}

/* ---- softmax pieces ------------------------------------------------------ */

static float max_of(const float *s, int64_t len) {
    float m = -__builtin_inff();
    for (int64_t j = 0; j < len; j++) m = s[j] > m ? s[j] : m;
    return m;
}

/* e^(x − max) · mul, lane by lane. */
static inline __m256 exp_shifted(__m256 x, float max, float mul) {
    return _mm256_mul_ps(pio_exp256(_mm256_sub_ps(x, _mm256_set1_ps(max))), _mm256_set1_ps(mul));
}

/* Σ_j e^(s[j] − max). */
static float sum_exp(const float *s, int64_t len, float max) {
    __m256 sum = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= len; j += 8)
        sum = _mm256_add_ps(sum, exp_shifted(_mm256_loadu_ps(s + j), max, 1.0f));
    float total = pio_hsum256(sum);
    for (; j < len; j++) total += expf(s[j] - max);
    return total;
}

/* s[j] ← e^(s[j] − max) · mul; returns the sum of the new values. */
static float exp_in_place(float *s, int64_t len, float max, float mul) {
    __m256 sum = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= len; j += 8) {
        __m256 e = exp_shifted(_mm256_loadu_ps(s + j), max, mul);
        _mm256_storeu_ps(s + j, e);
        sum = _mm256_add_ps(sum, e);
    }
    float total = pio_hsum256(sum);
    for (; j < len; j++) {
        s[j] = expf(s[j] - max) * mul;
        total += s[j];
    }
    return total;
}

static void scale_row(float *o, int64_t d, float by) {
    for (int64_t i = 0; i < d; i++) o[i] *= by;
}

/* ---- p·v: four values per pass over the output row ----------------------- */

/* o[0..d) += Σ_r p[r] · v_r[0..d) over the R values v, v + step, ... (R = 1 or 4):
 * one load and store of o per R values. */
static ALWAYS_INLINE void pv_step(float *o, const float *p, const char *v, size_t step, int R,
                                  int64_t d, int bf16) {
    __m256 pb[4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) pb[r] = _mm256_set1_ps(p[r]);
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
        __m256 acc = _mm256_loadu_ps(o + i);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            acc = _mm256_fmadd_ps(pb[r], pio_load8(v + r * step, i, bf16), acc);
        _mm256_storeu_ps(o + i, acc);
    }
    if (i < d) { /* v_head_dim not a multiple of 8 */
        __m256i m = pio_tail_mask256(d - i);
        __m256 acc = _mm256_maskload_ps(o + i, m);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            acc = _mm256_fmadd_ps(pb[r], pio_load8_tail(v + r * step, i, d - i, bf16), acc);
        _mm256_maskstore_ps(o + i, m, acc);
    }
}

/* o[0..d) += Σ_j p[j] · v_j for j < len; v points at value 0, values `step` bytes apart. */
static ALWAYS_INLINE void pv_impl(float *o, const float *p, const char *v, size_t step, int64_t len,
                                  int64_t d, int bf16) {
    int64_t j = 0;
    for (; j + 4 <= len; j += 4) pv_step(o, p + j, v + (size_t)j * step, step, 4, d, bf16);
    for (; j < len; j++) pv_step(o, p + j, v + (size_t)j * step, step, 1, d, bf16);
}

static void pv(const attn_ctx *c, float *o, const float *p, const char *v, size_t step,
               int64_t len) {
    if (c->avx512) {
        pio_attn_pv_avx512(o, p, v, step, len, c->dv, c->v_bf16);
        return;
    }
    if (c->v_bf16)
        pv_impl(o, p, v, step, len, c->dv, 1);
    else
        pv_impl(o, p, v, step, len, c->dv, 0);
}

/* ---- one work item ------------------------------------------------------- */

/* Asks for rows [j0, j0 + len) of one kv head (row_bytes each, step apart)
 * while the current slice is computed. The strided rows defeat the hardware
 * prefetcher; without this each one costs a full memory latency. */
static void prefetch_rows(const char *base, size_t step, size_t row_bytes, int64_t j0,
                          int64_t len) {
    for (int64_t j = 0; j < len; j++)
        for (size_t off = 0; off < row_bytes; off += 64)
            _mm_prefetch(base + (size_t)(j0 + j) * step + off, _MM_HINT_T1);
}

/* The positions token t attends to, as visible keys 0 .. n_keys-1: key j is
 * position j for j < s_keep (the sink), else first + j - s_keep. */
typedef struct {
    int64_t slot, n_keys, s_keep, first;
} span;

static span span_of(const attn_ctx *c, int64_t t) {
    int64_t s_keep, first;
    pio_kv_visible(c->kv, c->pos[t], &s_keep, &first);
    return (span){c->seq[t], s_keep + c->pos[t] - first + 1, s_keep, first};
}

/* Keys (which 0) or values (1) j .. j + *len - 1 of kv head g as rows `*step`
 * bytes apart: *len is cut where the rows stop being evenly spaced (the end
 * of the sink, of a block). An int8 cache is dequantized into tile. */
static const char *kv_rows(const attn_ctx *c, int which, const span *sp, int64_t g, int64_t j,
                           int64_t *len, size_t *step, float *tile) {
    const pio_kv_pool *pool = &c->kv->pool;
    const int64_t p = j < sp->s_keep ? j : sp->first + j - sp->s_keep;
    int64_t run = j < sp->s_keep ? sp->s_keep - j : sp->n_keys - j;
    const int64_t blk = c->kv->tables ? c->kv->tables[sp->slot].block[p / pool->block] : sp->slot;
    const int64_t r = p % pool->block;
    if (pool->block - r < run) run = pool->block - r;
    if (*len > run) *len = run;
    const int64_t d = which ? c->dv : c->dk;
    const size_t es = pio_kv_elem_size(pool->elem);
    const int64_t row = (blk * pool->block + r) * c->kv_heads + g; /* in rows of d elements */
    const char *base = which ? pool->v : pool->k;
    *step = (size_t)(c->kv_heads * d) * es;
    if (pool->elem != PIO_KV_ELEM_I8) return base + (size_t)(row * d) * es;
    const float *scale = (which ? pool->v_scale : pool->k_scale) + row;
    pio_kv_dequant_rows((const int8_t *)base + row * d, *step, scale, (size_t)c->kv_heads, *len,
                        d, tile);
    *step = (size_t)d * sizeof(float);
    return (const char *)tile;
}

/* Whether the keys are one evenly spaced run (a contiguous cache, full
 * attention): then the next slice is prefetched while this one is computed. */
static bool one_run(const attn_ctx *c) { return !c->kv->tables && c->kv->window <= 0; }

/* s[b][j] = score of key j0 + j for the nh heads q[b], j < len, a slice of keys
 * at a time for all heads. */
static void chunk_scores(const attn_ctx *c, const float *const *q, uint16_t (*qb)[QB_MAX],
                         int64_t nh, const span *sp, int64_t g, int64_t j0, int64_t len,
                         float (*s)[CHUNK], float *tile) {
    const size_t row_bytes = (size_t)c->dk * (c->k_bf16 ? 2 : 4);
    for (int64_t js = 0; js < len; js += SLICE) {
        int64_t sl = len - js < SLICE ? len - js : SLICE;
        int64_t next = len - js - sl < SLICE ? len - js - sl : SLICE;
        for (int64_t off = 0; off < sl;) {
            int64_t seg = sl - off;
            size_t step;
            const char *k = kv_rows(c, 0, sp, g, j0 + js + off, &seg, &step, tile);
            if (off == 0 && seg == sl && one_run(c))
                prefetch_rows(k, step, row_bytes, sl, next);
            for (int64_t b = 0; b < nh; b++) scores(c, q[b], qb[b], k, step, 0, seg, s[b] + js + off);
            off += seg;
        }
    }
}

/* o[b] += Σ_j p[b][j] · v_j over values j0 .. j0 + len - 1, a slice at a time. */
static void chunk_pv(const attn_ctx *c, float *const *o, int64_t nh, const span *sp, int64_t g,
                     int64_t j0, int64_t len, float (*s)[CHUNK], float *tile) {
    const size_t v_row_bytes = (size_t)c->dv * (c->v_bf16 ? 2 : 4);
    for (int64_t js = 0; js < len; js += SLICE) {
        int64_t sl = len - js < SLICE ? len - js : SLICE;
        int64_t next = len - js - sl < SLICE ? len - js - sl : SLICE;
        for (int64_t off = 0; off < sl;) {
            int64_t seg = sl - off;
            size_t step;
            const char *v = kv_rows(c, 1, sp, g, j0 + js + off, &seg, &step, tile);
            if (off == 0 && seg == sl && one_run(c))
                prefetch_rows(v, step, v_row_bytes, sl, next);
            for (int64_t b = 0; b < nh; b++) pv(c, o[b], s[b] + js + off, v, step, seg);
            off += seg;
        }
    }
}

/* Query heads h0..h0+nh-1 of token t, all reading kv head g. */
static void attend(const attn_ctx *c, int64_t t, int64_t g, int64_t h0, int64_t nh, float *tile) {
    const span sp = span_of(c, t);
    const int64_t n_keys = sp.n_keys;
    const float *q[HEAD_BATCH];
    float *o[HEAD_BATCH];
    float s[HEAD_BATCH][CHUNK], max[HEAD_BATCH], sum[HEAD_BATCH];
    uint16_t qb[HEAD_BATCH][QB_MAX];
    for (int64_t b = 0; b < nh; b++) {
        q[b] = c->q + (t * c->heads + h0 + b) * c->dk;
        if (c->dot) pio_attn_q_to_bf16_avx512(q[b], qb[b], c->dk);
        o[b] = c->out + (t * c->heads + h0 + b) * c->dv;
        max[b] = -__builtin_inff();
        sum[b] = 0.0f;
        memset(o[b], 0, (size_t)c->dv * sizeof(float));
    }

    bool have_scores = false; /* s already holds every score (one chunk) */
    if (c->round_bf16) {
        /* Pass 1: each head's max and sum of e^(s − max) over all keys. */
        for (int64_t j0 = 0; j0 < n_keys; j0 += CHUNK) {
            int64_t len = n_keys - j0 < CHUNK ? n_keys - j0 : CHUNK;
            chunk_scores(c, q, qb, nh, &sp, g, j0, len, s, tile);
            for (int64_t b = 0; b < nh; b++) {
                float cmax = max_of(s[b], len);
                if (cmax > max[b]) {
                    sum[b] *= expf(max[b] - cmax); /* 0 · e^−inf on the first chunk */
                    max[b] = cmax;
                }
                sum[b] += sum_exp(s[b], len, max[b]);
            }
        }
        have_scores = n_keys <= CHUNK;
    }

    for (int64_t j0 = 0; j0 < n_keys; j0 += CHUNK) {
        int64_t len = n_keys - j0 < CHUNK ? n_keys - j0 : CHUNK;
        if (!have_scores) chunk_scores(c, q, qb, nh, &sp, g, j0, len, s, tile);
        for (int64_t b = 0; b < nh; b++) {
            if (c->round_bf16) {
                exp_in_place(s[b], len, max[b], 1.0f / sum[b]);
                int64_t j = 0; /* probabilities to bf16 */
                for (; j + 8 <= len; j += 8)
                    _mm256_storeu_ps(s[b] + j, pio_round_bf16_256(_mm256_loadu_ps(s[b] + j)));
                for (; j < len; j++) s[b][j] = pio_round_bf16(s[b][j]);
            } else {
                float cmax = max_of(s[b], len);
                if (cmax > max[b]) { /* o and sum were relative to the old max */
                    float keep = expf(max[b] - cmax);
                    if (j0 > 0) scale_row(o[b], c->dv, keep);
                    sum[b] *= keep;
                    max[b] = cmax;
                }
                sum[b] += exp_in_place(s[b], len, max[b], 1.0f);
            }
        }
        chunk_pv(c, o, nh, &sp, g, j0, len, s, tile);
    }
    if (!c->round_bf16) /* o held Σ e^(s − max) v */
        for (int64_t b = 0; b < nh; b++) scale_row(o[b], c->dv, 1.0f / sum[b]);
}

/* ---- decode deep in the context: keys split over the threads ------------------
 * One token: every task takes a range of keys for all heads, so the cache is
 * read as one contiguous run of positions (all kv heads of a position lie
 * together) instead of one strided kv head per task. Pass 1 writes the scores
 * and each range's max per head; the caller merges them; pass 2 turns scores
 * into probabilities (the global max and sum: bf16 mode rounds them) and sums
 * each range's p·v; the ranges' partial outputs are added at the end. */
enum { SPLIT_MIN_KEYS = 512, SPLIT_SLICE = 16 };
static _Thread_local float *split_buf;
static _Thread_local size_t split_cap;

typedef struct {
    const attn_ctx *c;
    span sp;
    int64_t n_keys, n_ranges;
    float *s;      /* [heads][n_keys] scores, then probabilities */
    float *rmax;   /* [n_ranges][heads] */
    float *rsum;   /* [n_ranges][heads]: Σ e^(s − range max) */
    float *gmax, *gmul, *gsum; /* [heads]: global max; 1/Σ (bf16) or 1 (f32); Σ */
    float *part;   /* [n_ranges][heads][dv] */
    uint16_t (*qb)[QB_MAX];
} split_ctx;

static void split_range(const split_ctx *x, int task, int64_t *j0, int64_t *j1) {
    pio_cpu_task_range(x->n_keys, (int)x->n_ranges, task, SPLIT_SLICE, j0, j1);
}

static void split_scores_task(void *arg, int task, int thread) {
    (void)thread;
    const split_ctx *x = arg;
    const attn_ctx *c = x->c;
    int64_t j0, j1;
    split_range(x, task, &j0, &j1);
    for (int64_t j = j0; j < j1;) {
        int64_t len = j1 - j < SPLIT_SLICE ? j1 - j : SPLIT_SLICE;
        for (int64_t g = 0; g < c->kv_heads; g++) {
            int64_t seg = len;
            size_t step;
            const char *k = kv_rows(c, 0, &x->sp, g, j, &seg, &step, NULL);
            for (int64_t b = 0; b < c->group; b++) {
                int64_t h = g * c->group + b;
                scores(c, c->q + h * c->dk, x->qb[h], k, step, 0, seg, x->s + h * x->n_keys + j);
            }
            if (g + 1 == c->kv_heads) len = seg; /* a block boundary cut the run */
        }
        j += len;
    }
    for (int64_t h = 0; h < c->heads; h++) {
        const float *sh = x->s + h * x->n_keys + j0;
        float m = max_of(sh, j1 - j0);
        x->rmax[task * c->heads + h] = m;
        x->rsum[task * c->heads + h] = sum_exp(sh, j1 - j0, m);
    }
}

static void split_pv_task(void *arg, int task, int thread) {
    (void)thread;
    const split_ctx *x = arg;
    const attn_ctx *c = x->c;
    int64_t j0, j1;
    split_range(x, task, &j0, &j1);
    float *part = x->part + (size_t)task * (size_t)(c->heads * c->dv);
    memset(part, 0, (size_t)(c->heads * c->dv) * sizeof(float));
    for (int64_t h = 0; h < c->heads; h++) {
        float *p = x->s + h * x->n_keys + j0;
        exp_in_place(p, j1 - j0, x->gmax[h], x->gmul[h]);
        if (c->round_bf16) {
            int64_t j = 0;
            for (; j + 8 <= j1 - j0; j += 8)
                _mm256_storeu_ps(p + j, pio_round_bf16_256(_mm256_loadu_ps(p + j)));
            for (; j < j1 - j0; j++) p[j] = pio_round_bf16(p[j]);
        }
    }
    for (int64_t j = j0; j < j1;) {
        int64_t len = j1 - j < SPLIT_SLICE ? j1 - j : SPLIT_SLICE;
        for (int64_t g = 0; g < c->kv_heads; g++) {
            int64_t seg = len;
            size_t step;
            const char *v = kv_rows(c, 1, &x->sp, g, j, &seg, &step, NULL);
            for (int64_t b = 0; b < c->group; b++) {
                int64_t h = g * c->group + b;
                pv(c, part + h * c->dv, x->s + h * x->n_keys + j, v, step, seg);
            }
            if (g + 1 == c->kv_heads) len = seg;
        }
        j += len;
    }
}

/* false: no scratch memory (the caller takes the per-head path). */
static bool attend_split(attn_ctx *c, pio_threadpool *pool) {
    split_ctx x = {.c = c, .sp = span_of(c, 0)};
    x.n_keys = x.sp.n_keys;
    const int threads = pio_threadpool_size(pool);
    x.n_ranges = x.n_keys / 256;
    if (x.n_ranges > 4 * threads) x.n_ranges = 4 * threads;
    if (x.n_ranges < threads) x.n_ranges = threads;
    const int64_t H = c->heads;
    size_t floats = (size_t)(H * x.n_keys + 2 * x.n_ranges * H + 3 * H + x.n_ranges * H * c->dv);
    size_t bytes = floats * sizeof(float) + (size_t)H * sizeof *x.qb;
    if (bytes > split_cap) { /* grown, never shrunk: steady decode allocates nothing */
        free(split_buf);
        split_cap = 0;
        if (!(split_buf = malloc(bytes))) return false;
        split_cap = bytes;
    }
    float *mem = split_buf;
    x.s = mem;
    x.rmax = x.s + H * x.n_keys;
    x.rsum = x.rmax + x.n_ranges * H;
    x.gmax = x.rsum + x.n_ranges * H;
    x.gmul = x.gmax + H;
    x.gsum = x.gmul + H;
    x.part = x.gsum + H;
    x.qb = (uint16_t(*)[QB_MAX])(x.part + x.n_ranges * H * c->dv);
    for (int64_t h = 0; h < H && c->dot; h++) pio_attn_q_to_bf16_avx512(c->q + h * c->dk, x.qb[h], c->dk);
    pio_threadpool_run(pool, (int)x.n_ranges, split_scores_task, &x);
    for (int64_t h = 0; h < H; h++) {
        float m = -__builtin_inff(), sum = 0.0f;
        for (int64_t r = 0; r < x.n_ranges; r++) m = x.rmax[r * H + h] > m ? x.rmax[r * H + h] : m;
        for (int64_t r = 0; r < x.n_ranges; r++)
            sum += x.rsum[r * H + h] * expf(x.rmax[r * H + h] - m);
        x.gmax[h] = m;
        x.gsum[h] = sum;
        x.gmul[h] = c->round_bf16 ? 1.0f / sum : 1.0f; /* f32: divided at the end */
    }
    pio_threadpool_run(pool, (int)x.n_ranges, split_pv_task, &x);
    for (int64_t h = 0; h < H; h++) {
        float *o = c->out + h * c->dv;
        const float by = 1.0f / x.gsum[h];
        for (int64_t i = 0; i < c->dv; i++) {
            float acc = 0.0f;
            for (int64_t r = 0; r < x.n_ranges; r++) acc += x.part[(r * H + h) * c->dv + i];
            o[i] = c->round_bf16 ? acc : acc * by;
        }
    }
    return true;
}

static void attention_task(void *arg, int task, int thread) {
    const attn_ctx *c = arg;
    float *tile = c->tiles ? c->tiles + (size_t)thread * c->tile_floats : NULL;
    int64_t i0, i1;
    pio_cpu_task_range(c->n * c->kv_heads * c->batches, c->n_tasks, task, 1, &i0, &i1);
    for (int64_t i = i0; i < i1; i++) {
        int64_t t = i / (c->kv_heads * c->batches), rest = i % (c->kv_heads * c->batches);
        int64_t g = rest / c->batches, b = rest % c->batches;
        int64_t first = b * c->hb, nh = c->group - first < c->hb ? c->group - first : c->hb;
        attend(c, t, g, g * c->group + first, nh, tile);
    }
}

/* ---- entry points -------------------------------------------------------- */

pio_status pio_cpu_attention_run(pio_threadpool *pool, const float *q, int64_t n, int64_t heads,
                                 const pio_kv_view *kv, const int32_t *seq, const int32_t *pos,
                                 float scale, float *out, bool round_bf16, pio_error *err) {
    const pio_kv_pool *kp = &kv->pool;
    const bool int8 = kp->elem == PIO_KV_ELEM_I8; /* read through f32 tiles */
    attn_ctx c = {.q = q,
                  .kv = kv,
                  .out = out,
                  .seq = seq,
                  .pos = pos,
                  .n = n,
                  .heads = heads,
                  .kv_heads = kp->kv_heads,
                  .dk = kp->dk,
                  .dv = kp->dv,
                  .scale = scale,
                  .k_bf16 = kp->elem == PIO_KV_ELEM_BF16,
                  .v_bf16 = kp->elem == PIO_KV_ELEM_BF16,
                  .round_bf16 = round_bf16};
    pio_cpu_level level = pio_cpu_level_get();
    c.avx512 = level >= PIO_CPU_AVX512;
    c.dot = level >= PIO_CPU_AVX512_BF16 && round_bf16 && c.k_bf16 && c.dk <= QB_MAX;
    /* Prompts with full attention: as GEMMs over packed K and V (attention_prefill_avx512.c). */
    if (n >= PREFILL_MIN && kv->window <= 0 && !int8 &&
        ((c.dot && c.dk % 2 == 0) || (c.avx512 && !round_bf16 && kp->elem == PIO_KV_ELEM_F32)) &&
        pio_attn_prefill_avx512(pool, q, n, heads, kv, seq, pos, scale, out, c.dot))
        return PIO_OK;
    int64_t keys = 0; /* keys visited per head, summed over tokens: the work estimate */
    for (int64_t t = 0; t < c.n; t++) keys += span_of(&c, t).n_keys;
    if (c.n == 0 || c.heads == 0) return PIO_OK;

    /* Batch the heads of a group for cache reuse, but halve the batch while
     * that leaves fewer than two items per thread (decode with few kv heads
     * on many threads). */
    int threads = pio_threadpool_size(pool);
    if (int8) {
        c.tile_floats = (size_t)SLICE * (size_t)(c.dk > c.dv ? c.dk : c.dv);
        c.tiles = malloc((size_t)threads * c.tile_floats * sizeof(float));
        if (!c.tiles)
            return pio_error_set(err, PIO_ERR_OOM, "attention: out of memory for int8 tiles");
    }
    c.group = c.heads / c.kv_heads;
    /* One token deep in its context, threads to share it: split the keys. */
    if (c.n == 1 && !int8 && threads > 1 && keys >= SPLIT_MIN_KEYS && c.dk <= QB_MAX &&
        attend_split(&c, pool))
        return PIO_OK;
    c.hb = c.group < HEAD_BATCH ? c.group : HEAD_BATCH;
    for (;;) {
        c.batches = (c.group + c.hb - 1) / c.hb;
        if (c.hb == 1 || c.n * c.kv_heads * c.batches >= 2 * (int64_t)threads) break;
        c.hb = (c.hb + 1) / 2;
    }
    /* Items differ in cost (later tokens see more keys), so cut finer than
     * other kernels: up to 16 tasks per thread, one for tiny problems. */
    const int64_t items = c.n * c.kv_heads * c.batches;
    const int64_t work = keys * c.heads * (c.dk + c.dv);
    const int64_t tasks = work < 65536 || threads == 1 ? 1 : 16 * (int64_t)threads;
    c.n_tasks = (int)(tasks < items ? tasks : items);
    pio_threadpool_run(pool, c.n_tasks, attention_task, &c);
    free(c.tiles);
    return PIO_OK;
}

pio_status pio_cpu_attention(pio_threadpool *pool, const pio_tensor *q, const pio_tensor *cache_k,
                             const pio_tensor *cache_v, const int32_t *seq, const int32_t *pos,
                             float scale, pio_tensor *out, bool round_bf16, pio_error *err) {
    const char *op = "attention";
    if (!pio_cpu_check_f32(op, "q", q, err) ||
        !pio_cpu_check_f32_bf16(op, "cache_k", cache_k, err) ||
        !pio_cpu_check_f32_bf16(op, "cache_v", cache_v, err) ||
        !pio_cpu_check_f32(op, "out", out, err))
        return PIO_ERR_INVALID;
    if (q->ndim != 3 || cache_k->ndim != 4 || q->shape[2] != cache_k->shape[3] ||
        cache_k->shape[2] <= 0 || q->shape[1] % cache_k->shape[2] != 0)
        return pio_cpu_shape_error(
            err, op, "q", q, "cache_k", cache_k,
            "do not fit q[n, heads, head_dim] and cache_k[slots, ctx, kv_heads, head_dim] "
            "with heads a multiple of kv_heads");
    if (cache_v->ndim != 4 || cache_v->shape[0] != cache_k->shape[0] ||
        cache_v->shape[1] != cache_k->shape[1] || cache_v->shape[2] != cache_k->shape[2])
        return pio_cpu_shape_error(err, op, "cache_k", cache_k, "cache_v", cache_v,
                                   "must agree on slots, ctx and kv_heads");
    if (cache_k->dtype != cache_v->dtype)
        return pio_cpu_shape_error(err, op, "cache_k", cache_k, "cache_v", cache_v,
                                   "must have the same dtype");
    if (out->ndim != 3 || out->shape[0] != q->shape[0] || out->shape[1] != q->shape[1] ||
        out->shape[2] != cache_v->shape[3])
        return pio_cpu_shape_error(err, op, "q", q, "out", out,
                                   "do not fit out[n, heads, v_head_dim] for this q and cache_v");
    if (pio_cpu_overlap(q, out))
        return pio_cpu_shape_error(err, op, "q", q, "out", out, "overlap in memory");
    const int64_t n = q->shape[0], slots = cache_k->shape[0], ctx = cache_k->shape[1];
    if (n > 0 && (!seq || !pos))
        return pio_error_set(err, PIO_ERR_INVALID, "%s: seq and pos are required", op);
    for (int64_t t = 0; t < n; t++) {
        if (seq[t] < 0 || seq[t] >= slots)
            return pio_error_set(err, PIO_ERR_RANGE,
                                 "%s: token %lld: sequence slot %d is out of range for %lld slots",
                                 op, (long long)t, (int)seq[t], (long long)slots);
        if (pos[t] < 0 || pos[t] >= ctx)
            return pio_error_set(
                err, PIO_ERR_RANGE,
                "%s: token %lld: position %d is out of range for a context of %lld", op,
                (long long)t, (int)pos[t], (long long)ctx);
    }
    /* The contiguous cache is a pool of one ctx-long block per slot. */
    pio_kv_view kv = {
        .pool = {.k = pio_tensor_data(cache_k), .v = pio_tensor_data(cache_v),
                 .elem = cache_k->dtype == PIO_BF16 ? PIO_KV_ELEM_BF16 : PIO_KV_ELEM_F32,
                 .n_blocks = slots, .block = ctx, .kv_heads = cache_k->shape[2],
                 .dk = cache_k->shape[3], .dv = cache_v->shape[3]},
        .slots = slots};
    return pio_cpu_attention_run(pool, pio_tensor_data(q), n, q->shape[1], &kv, seq, pos, scale,
                                 pio_tensor_data(out), round_bf16, err);
}
