/* Prompt attention as two small GEMMs per kv head (AVX-512), instead of one
 * query row at a time: S = Q·Kᵀ, a softmax per row, O = P·V.
 *
 * Rows are (token, query head) pairs of one sequence that share kv head g;
 * they are cut into tiles of RT rows. Keys and values of every (sequence,
 * kv head) are first packed once into panels that the register tiles read
 * with aligned loads:
 *   K: [keys / 64][dk (f32) or dk / 2 pairs (bf16)][64 keys]
 *   V: [keys (f32) or keys / 2 pairs (bf16)][dv]
 * and a 6 × 64 register tile (24 accumulators) multiplies broadcast q values
 * (or q pairs, for vdpbf16ps) by a panel row, as in matmul_packed_avx512.c.
 * P·V takes probability pairs of consecutive keys times value pairs.
 *
 * Arithmetic is attention.c's: bf16 mode rounds q·k to bf16, then × scale to
 * bf16, takes e^(s − max) / Σ in f32 and rounds each probability to bf16
 * before P·V (transformers' eager attention in bf16); products of bf16 are
 * exact and sums f32. f32 mode sums e^(s − max) · v and divides by Σ at the
 * end. Only the order of the f32 sums differs from the one-row path.
 * Token t sees keys 0 .. pos[t]: the keys past it inside a tile get p = 0.
 */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention_kernels.h"
#include "cpu_internal.h"
#include "simd_avx2.h"
#include "simd_avx512.h"

enum { MR = 6, NR = 64, RT = 48 };

#define ALWAYS_INLINE inline __attribute__((always_inline))

typedef struct {
    int64_t slot;   /* cache slot of the group's sequence */
    int64_t n_tok;  /* tokens of this sequence in the batch */
    int64_t first;  /* index of its first token in the batch's token order (tok[]) */
    int64_t n_keys; /* max pos + 1 over its tokens */
    int64_t kpad;   /* n_keys rounded up to NR */
    size_t k_off, v_off; /* bytes into the pack buffer, for kv head 0; per head += head_bytes */
    size_t head_k_bytes, head_v_bytes;
    int64_t first_tile; /* tiles of the groups before this one, all kv heads */
} seq_group;

typedef struct {
    const float *q;
    float *out;
    const pio_kv_view *kv;
    const int32_t *pos;
    const int32_t *tok; /* batch token indices, grouped by sequence */
    seq_group *groups;
    int64_t n_groups, heads, kv_heads, G, dk, dv, dvp; /* dvp: dv rounded up to 64 */
    float scale;
    bool dot; /* bf16 mode: bf16 cache, vdpbf16ps */
    char *pack;
    char *scratch; /* per thread */
    size_t scratch_bytes;
    int64_t n_tiles;
} pf_ctx;

/* ---- addresses ------------------------------------------------------------ */

static const char *kv_row(const pio_kv_view *kv, int which, int64_t slot, int64_t g, int64_t j,
                          int64_t d) {
    const pio_kv_pool *p = &kv->pool;
    int64_t blk = kv->tables ? kv->tables[slot].block[j / p->block] : slot;
    int64_t row = (blk * p->block + j % p->block) * p->kv_heads + g;
    size_t es = pio_kv_elem_size(p->elem);
    return (const char *)(which ? p->v : p->k) + (size_t)(row * d) * es;
}

/* ---- packing (one task per sequence group and kv head) ---------------------- */

static void pack_task(void *arg, int task, int thread) {
    (void)thread;
    const pf_ctx *c = arg;
    const seq_group *sg = &c->groups[task / c->kv_heads];
    const int64_t g = task % c->kv_heads, dk = c->dk, dv = c->dv, dvp = c->dvp, kpad = sg->kpad;
    char *kp = c->pack + sg->k_off + (size_t)g * sg->head_k_bytes;
    char *vp = c->pack + sg->v_off + (size_t)g * sg->head_v_bytes;
    if (c->dot) {
        /* K pairs: kp[blk][p][n] = (k[blk*64+n][2p], k[..][2p+1]) as one uint32 */
        uint32_t *K = (uint32_t *)kp;
        const int64_t np = dk / 2;
        for (int64_t j = 0; j < kpad; j++) {
            uint32_t *dst = K + (j / NR) * np * NR + j % NR;
            if (j < sg->n_keys) {
                const uint32_t *src = (const uint32_t *)kv_row(c->kv, 0, sg->slot, g, j, dk);
                for (int64_t p = 0; p < np; p++) dst[p * NR] = src[p];
            } else {
                for (int64_t p = 0; p < np; p++) dst[p * NR] = 0;
            }
        }
        /* V pairs: vp[jp][c] = (v[2jp][c], v[2jp+1][c]) */
        uint32_t *V = (uint32_t *)vp;
        for (int64_t jp = 0; jp < kpad / 2; jp++) {
            int64_t j0 = 2 * jp, j1 = 2 * jp + 1;
            const uint16_t *a = j0 < sg->n_keys ? (const uint16_t *)kv_row(c->kv, 1, sg->slot, g, j0, dv) : NULL;
            const uint16_t *b = j1 < sg->n_keys ? (const uint16_t *)kv_row(c->kv, 1, sg->slot, g, j1, dv) : NULL;
            uint32_t *dst = V + jp * dvp;
            for (int64_t i = 0; i < dvp; i += 16) {
                __mmask16 m = i >= dv ? 0 : dv - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (dv - i)) - 1);
                __m256i va = a ? _mm256_maskz_loadu_epi16(m, a + i) : _mm256_setzero_si256();
                __m256i vb = b ? _mm256_maskz_loadu_epi16(m, b + i) : _mm256_setzero_si256();
                __m512i wa = _mm512_cvtepu16_epi32(va), wb = _mm512_cvtepu16_epi32(vb);
                _mm512_storeu_si512(dst + i, _mm512_or_si512(wa, _mm512_slli_epi32(wb, 16)));
            }
        }
    } else {
        float *K = (float *)kp;
        for (int64_t j = 0; j < kpad; j++) {
            float *dst = K + (j / NR) * dk * NR + j % NR;
            if (j < sg->n_keys) {
                const float *src = (const float *)kv_row(c->kv, 0, sg->slot, g, j, dk);
                for (int64_t i = 0; i < dk; i++) dst[i * NR] = src[i];
            } else {
                for (int64_t i = 0; i < dk; i++) dst[i * NR] = 0;
            }
        }
        float *V = (float *)vp;
        for (int64_t j = 0; j < kpad; j++) {
            int64_t have = j < sg->n_keys ? dv : 0;
            if (have) memcpy(V + j * dvp, kv_row(c->kv, 1, sg->slot, g, j, dv), (size_t)dv * 4);
            memset(V + j * dvp + have, 0, (size_t)(dvp - have) * 4);
        }
    }
}

/* ---- register tiles ----------------------------------------------------------- */

/* S[a][0..64) for a < mr: scores of query rows against one 64-key panel block.
 * bf16: q pairs (uint32) × K pairs; f32: q values × K. */
static ALWAYS_INLINE void score_tile(const void *qv, int64_t ldq, const void *panel, int64_t steps,
                                     float *s, int64_t lds, int mr, float scale, int dot) {
    __m512 acc[MR][4];
#pragma GCC unroll 6
    for (int a = 0; a < mr; a++)
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) acc[a][b] = _mm512_setzero_ps();
    if (dot) {
        const uint32_t *q = qv, *p = panel;
        for (int64_t kp = 0; kp < steps; kp++, p += NR) {
            __m512bh w0 = (__m512bh)_mm512_load_si512(p), w1 = (__m512bh)_mm512_load_si512(p + 16);
            __m512bh w2 = (__m512bh)_mm512_load_si512(p + 32), w3 = (__m512bh)_mm512_load_si512(p + 48);
#pragma GCC unroll 6
            for (int a = 0; a < mr; a++) {
                __m512bh x = (__m512bh)_mm512_set1_epi32((int)q[a * ldq + kp]);
                acc[a][0] = _mm512_dpbf16_ps(acc[a][0], x, w0);
                acc[a][1] = _mm512_dpbf16_ps(acc[a][1], x, w1);
                acc[a][2] = _mm512_dpbf16_ps(acc[a][2], x, w2);
                acc[a][3] = _mm512_dpbf16_ps(acc[a][3], x, w3);
            }
        }
    } else {
        const float *q = qv, *p = panel;
        for (int64_t kk = 0; kk < steps; kk++, p += NR) {
            __m512 w0 = _mm512_load_ps(p), w1 = _mm512_load_ps(p + 16);
            __m512 w2 = _mm512_load_ps(p + 32), w3 = _mm512_load_ps(p + 48);
#pragma GCC unroll 6
            for (int a = 0; a < mr; a++) {
                __m512 x = _mm512_set1_ps(q[a * ldq + kk]);
                acc[a][0] = _mm512_fmadd_ps(x, w0, acc[a][0]);
                acc[a][1] = _mm512_fmadd_ps(x, w1, acc[a][1]);
                acc[a][2] = _mm512_fmadd_ps(x, w2, acc[a][2]);
                acc[a][3] = _mm512_fmadd_ps(x, w3, acc[a][3]);
            }
        }
    }
    const __m512 sc = _mm512_set1_ps(scale);
#pragma GCC unroll 6
    for (int a = 0; a < mr; a++)
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) {
            __m512 v = dot ? pio_round_bf16_512(_mm512_mul_ps(pio_round_bf16_512(acc[a][b]), sc))
                           : _mm512_mul_ps(acc[a][b], sc);
            _mm512_storeu_ps(s + a * lds + 16 * b, v);
        }
}

/* o[a][c0 .. c0 + 16·nb) (+)= Σ_j p[a][j] v[j][..] over steps j (f32) or pairs (bf16). */
static ALWAYS_INLINE void pv_tile(const void *pv, int64_t ldp, const void *vpanel, int64_t ldv,
                                  int64_t steps, float *o, int64_t ldo, int mr, int dot) {
    __m512 acc[MR][4];
#pragma GCC unroll 6
    for (int a = 0; a < mr; a++)
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) acc[a][b] = _mm512_setzero_ps();
    if (dot) {
        const uint32_t *p = pv, *v = vpanel;
        for (int64_t jp = 0; jp < steps; jp++, v += ldv) {
            __m512bh w0 = (__m512bh)_mm512_loadu_si512(v), w1 = (__m512bh)_mm512_loadu_si512(v + 16);
            __m512bh w2 = (__m512bh)_mm512_loadu_si512(v + 32), w3 = (__m512bh)_mm512_loadu_si512(v + 48);
#pragma GCC unroll 6
            for (int a = 0; a < mr; a++) {
                __m512bh x = (__m512bh)_mm512_set1_epi32((int)p[a * ldp + jp]);
                acc[a][0] = _mm512_dpbf16_ps(acc[a][0], x, w0);
                acc[a][1] = _mm512_dpbf16_ps(acc[a][1], x, w1);
                acc[a][2] = _mm512_dpbf16_ps(acc[a][2], x, w2);
                acc[a][3] = _mm512_dpbf16_ps(acc[a][3], x, w3);
            }
        }
    } else {
        const float *p = pv, *v = vpanel;
        for (int64_t j = 0; j < steps; j++, v += ldv) {
            __m512 w0 = _mm512_loadu_ps(v), w1 = _mm512_loadu_ps(v + 16);
            __m512 w2 = _mm512_loadu_ps(v + 32), w3 = _mm512_loadu_ps(v + 48);
#pragma GCC unroll 6
            for (int a = 0; a < mr; a++) {
                __m512 x = _mm512_set1_ps(p[a * ldp + j]);
                acc[a][0] = _mm512_fmadd_ps(x, w0, acc[a][0]);
                acc[a][1] = _mm512_fmadd_ps(x, w1, acc[a][1]);
                acc[a][2] = _mm512_fmadd_ps(x, w2, acc[a][2]);
                acc[a][3] = _mm512_fmadd_ps(x, w3, acc[a][3]);
            }
        }
    }
#pragma GCC unroll 6
    for (int a = 0; a < mr; a++)
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) _mm512_storeu_ps(o + a * ldo + 16 * b, acc[a][b]);
}

#define BY_MR(call_mr)                    \
    switch (mr) {                         \
    case 6: call_mr(6); break;            \
    case 5: call_mr(5); break;            \
    case 4: call_mr(4); break;            \
    case 3: call_mr(3); break;            \
    case 2: call_mr(2); break;            \
    default: call_mr(1); break;           \
    }

static void score_any(const void *q, int64_t ldq, const void *panel, int64_t steps, float *s,
                      int64_t lds, int mr, float scale, int dot) {
#define CALL(R) dot ? score_tile(q, ldq, panel, steps, s, lds, R, scale, 1) \
                    : score_tile(q, ldq, panel, steps, s, lds, R, scale, 0)
    BY_MR(CALL)
#undef CALL
}

static void pv_any(const void *p, int64_t ldp, const void *v, int64_t ldv, int64_t steps, float *o,
                   int64_t ldo, int mr, int dot) {
#define CALL(R) dot ? pv_tile(p, ldp, v, ldv, steps, o, ldo, R, 1) \
                    : pv_tile(p, ldp, v, ldv, steps, o, ldo, R, 0)
    BY_MR(CALL)
#undef CALL
}

/* ---- softmax of one row (attention.c's arithmetic) ---------------------------- */

/* pio_exp256 of simd_avx2.h on 16 lanes: the same operations lane for lane,
 * so the same results. */
static ALWAYS_INLINE __m512 exp16(__m512 x) {
    const __m512 hi = _mm512_set1_ps(88.3762626647949f), lo = _mm512_set1_ps(-87.3365447504f);
    __mmask16 too_small = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    __mmask16 too_big = _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ);
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    __m512 c = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(c, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), c);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    __m512 y = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
    y = _mm512_maskz_mov_ps((__mmask16)~too_small, y);
    y = _mm512_mask_mov_ps(y, too_big, _mm512_set1_ps(__builtin_inff()));
    return _mm512_mask_mov_ps(y, nan, x);
}

/* s[0..len) → e^(s − max) in place, zeros on to len_pad; returns Σ. */
static float exp_row(float *s, int64_t len, int64_t len_pad) {
    __m512 mx = _mm512_set1_ps(-__builtin_inff());
    int64_t j = 0;
    for (; j + 16 <= len; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
    float max = _mm512_reduce_max_ps(mx);
    for (; j < len; j++) max = s[j] > max ? s[j] : max;
    const __m512 vmax = _mm512_set1_ps(max);
    __m512 sum = _mm512_setzero_ps();
    for (j = 0; j < len; j += 16) {
        __mmask16 m = len - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (len - j)) - 1);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vmax));
        e = _mm512_maskz_mov_ps(m, e);
        _mm512_storeu_ps(s + j, e); /* s is padded to a multiple of 64: lanes past len get 0 */
        sum = _mm512_add_ps(sum, e);
    }
    for (; j < len_pad; j += 16) _mm512_storeu_ps(s + j, _mm512_setzero_ps());
    return _mm512_reduce_add_ps(sum);
}

/* Probabilities of one row: bf16 mode rounds e · (1 / Σ) to bf16 into pb (zeros
 * after len up to len_pad) and returns 1; f32 leaves e in s and returns 1 / Σ. */
static float softmax_row(float *s, int64_t len, int64_t len_pad, uint16_t *pb, int dot) {
    const float sum = exp_row(s, len, len_pad);
    if (!dot) return 1.0f / sum;
    const __m512 mul = _mm512_set1_ps(1.0f / sum);
    for (int64_t j = 0; j < len_pad; j += 16) {
        __m512 p = pio_round_bf16_512(_mm512_mul_ps(_mm512_loadu_ps(s + j), mul));
        _mm256_storeu_si256((__m256i *)(pb + j),
                            _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(p), 16)));
    }
    return 1.0f;
}

/* ---- one tile of rows ------------------------------------------------------------ */

static void tile_task(void *arg, int task, int thread) {
    const pf_ctx *c = arg;
    /* later tiles see more keys: hand them out first */
    int64_t t_id = c->n_tiles - 1 - task;
    int64_t gi = 0;
    while (gi + 1 < c->n_groups && c->groups[gi + 1].first_tile <= t_id) gi++;
    const seq_group *sg = &c->groups[gi];
    const int64_t rows = sg->n_tok * c->G, tiles = (rows + RT - 1) / RT;
    const int64_t local = t_id - sg->first_tile, g = local / tiles, r0 = (local % tiles) * RT;
    const int64_t nr = rows - r0 < RT ? rows - r0 : RT;
    const int64_t dk = c->dk, dv = c->dv, kpad = sg->kpad, G = c->G;
    const int dot = c->dot;

    char *mine = c->scratch + (size_t)thread * c->scratch_bytes;
    float *S = (float *)mine;                      /* [RT][kpad] */
    uint16_t *Pb = (uint16_t *)(S + RT * kpad);    /* [RT][kpad] bf16 */
    float *Qf = (float *)(Pb + RT * kpad);         /* [RT][dk] f32 or bf16 */
    float *O = Qf + RT * dk;                       /* [MR][64] */
    float inv[RT];
    int64_t lim[RT]; /* keys each row sees */

    for (int64_t r = 0; r < nr; r++) {
        int64_t t = c->tok[sg->first + (r0 + r) / G], h = g * G + (r0 + r) % G;
        const float *q = c->q + (t * c->heads + h) * dk;
        lim[r] = (int64_t)c->pos[t] + 1;
        if (dot) pio_attn_q_to_bf16_avx512(q, (uint16_t *)Qf + r * dk, dk);
        else memcpy(Qf + r * dk, q, (size_t)dk * 4);
    }
    const char *K = c->pack + sg->k_off + (size_t)g * sg->head_k_bytes;
    const char *V = c->pack + sg->v_off + (size_t)g * sg->head_v_bytes;
    const int64_t ksteps = dot ? dk / 2 : dk;
    const size_t kblk = (size_t)ksteps * NR * 4; /* bytes per 64-key panel block */

    /* S and softmax, MR rows at a time over the key blocks any of them sees */
    for (int64_t a0 = 0; a0 < nr; a0 += MR) {
        int mr = nr - a0 < MR ? (int)(nr - a0) : MR;
        int64_t ext = 0;
        for (int a = 0; a < mr; a++) ext = lim[a0 + a] > ext ? lim[a0 + a] : ext;
        const void *qa = dot ? (const void *)((const uint32_t *)Qf + a0 * (dk / 2))
                             : (const void *)(Qf + a0 * dk);
        for (int64_t kb = 0; kb * NR < ext; kb++)
            score_any(qa, ksteps, K + kb * kblk, ksteps, S + a0 * kpad + kb * NR, kpad, mr,
                      c->scale, dot);
        int64_t ext_pad = (ext + 15) & ~(int64_t)15;
        for (int a = 0; a < mr; a++)
            inv[a0 + a] = softmax_row(S + (a0 + a) * kpad, lim[a0 + a], ext_pad,
                                      Pb + (a0 + a) * kpad, dot);
    }
    /* O = P·V, 64 output columns at a time */
    for (int64_t a0 = 0; a0 < nr; a0 += MR) {
        int mr = nr - a0 < MR ? (int)(nr - a0) : MR;
        int64_t ext = 0;
        for (int a = 0; a < mr; a++) ext = lim[a0 + a] > ext ? lim[a0 + a] : ext;
        ext = (ext + 15) & ~(int64_t)15;
        for (int64_t c0 = 0; c0 < dv; c0 += 64) {
            if (dot)
                pv_any((const uint32_t *)(Pb + a0 * kpad), kpad / 2, (const uint32_t *)V + c0,
                       c->dvp, ext / 2, O, 64, mr, 1);
            else
                pv_any(S + a0 * kpad, kpad, (const float *)V + c0, c->dvp, ext, O, 64, mr, 0);
            int64_t w = dv - c0 < 64 ? dv - c0 : 64;
            for (int a = 0; a < mr; a++) {
                int64_t r = a0 + a;
                int64_t t = c->tok[sg->first + (r0 + r) / G], h = g * G + (r0 + r) % G;
                float *dst = c->out + (t * c->heads + h) * dv + c0;
                const __m512 by = _mm512_set1_ps(inv[r]);
                for (int64_t i = 0; i < w; i += 16) {
                    __mmask16 m = w - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (w - i)) - 1);
                    __m512 v = _mm512_loadu_ps(O + a * 64 + i);
                    _mm512_mask_storeu_ps(dst + i, m, dot ? v : _mm512_mul_ps(v, by));
                }
            }
        }
    }
}

/* ---- entry ------------------------------------------------------------------------- */

static _Thread_local char *pack_buf, *scratch_buf;
static _Thread_local size_t pack_cap, scratch_cap;
static _Thread_local int32_t *tok_buf;
static _Thread_local size_t tok_cap;

static bool grow(char **buf, size_t *cap, size_t bytes) {
    if (bytes <= *cap) return true;
    free(*buf);
    *cap = 0;
    *buf = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!*buf) return false;
    *cap = bytes;
    return true;
}

bool pio_attn_prefill_avx512(pio_threadpool *pool, const float *q, int64_t n, int64_t heads,
                             const pio_kv_view *kv, const int32_t *seq, const int32_t *pos,
                             float scale, float *out, bool dot) {
    const pio_kv_pool *kp = &kv->pool;
    const int64_t kv_heads = kp->kv_heads, dk = kp->dk, dv = kp->dv;
    /* tokens grouped by sequence (stable), groups in order of first appearance */
    if (!grow((char **)&tok_buf, &tok_cap, (size_t)n * 4 * 2)) return false;
    int32_t *tok = tok_buf, *done = tok_buf + n;
    enum { MAX_GROUPS = 64 };
    seq_group groups[MAX_GROUPS];
    int64_t n_groups = 0, filled = 0;
    memset(done, 0, (size_t)n * 4);
    for (int64_t t = 0; t < n; t++) {
        if (done[t]) continue;
        if (n_groups == MAX_GROUPS) return false;
        seq_group *sg = &groups[n_groups++];
        *sg = (seq_group){.slot = seq[t], .first = filled};
        for (int64_t u = t; u < n; u++)
            if (!done[u] && seq[u] == seq[t]) {
                done[u] = 1;
                tok[filled++] = (int32_t)u;
                sg->n_tok++;
                if (pos[u] + 1 > sg->n_keys) sg->n_keys = pos[u] + 1;
            }
    }
    const size_t es = dot ? 2 : 4;
    size_t off = 0, max_kpad = 0;
    int64_t tiles = 0;
    for (int64_t i = 0; i < n_groups; i++) {
        seq_group *sg = &groups[i];
        sg->kpad = (sg->n_keys + NR - 1) / NR * NR;
        sg->head_k_bytes = (size_t)(sg->kpad * dk) * es;
        sg->head_v_bytes = (size_t)(sg->kpad * ((dv + 63) / 64 * 64)) * es;
        sg->k_off = off;
        off += sg->head_k_bytes * (size_t)kv_heads;
        sg->v_off = off;
        off += sg->head_v_bytes * (size_t)kv_heads;
        sg->first_tile = tiles;
        tiles += kv_heads * ((sg->n_tok * (heads / kv_heads) + RT - 1) / RT);
        if ((size_t)sg->kpad > max_kpad) max_kpad = (size_t)sg->kpad;
    }
    const int threads = pio_threadpool_size(pool);
    const size_t scratch = (RT * max_kpad * 6 + (size_t)RT * dk * 4 + MR * 64 * 4 + 63) & ~(size_t)63;
    if (!grow(&pack_buf, &pack_cap, off) ||
        !grow(&scratch_buf, &scratch_cap, scratch * (size_t)threads))
        return false;
    pf_ctx c = {.q = q, .out = out, .kv = kv, .pos = pos, .tok = tok, .groups = groups,
                .n_groups = n_groups, .heads = heads, .kv_heads = kv_heads,
                .G = heads / kv_heads, .dk = dk, .dv = dv, .dvp = (dv + 63) / 64 * 64, .scale = scale, .dot = dot,
                .pack = pack_buf, .scratch = scratch_buf, .scratch_bytes = scratch,
                .n_tiles = tiles};
    pio_threadpool_run(pool, (int)(n_groups * kv_heads), pack_task, &c);
    pio_threadpool_run(pool, (int)tiles, tile_task, &c);
    return true;
}
