/* test-cuda-paged: the paged KV cache's CUDA ops (kernels/cuda/cuda_ops.h: block
 * tables, kv_write_paged, qk_norm_rope_kv with a table, attention_paged, copy_2d)
 * against the contiguous ops on the same keys and against the CPU twin
 * (kernels/cpu/attention_paged.c).
 *
 * Every layout here is scattered: each slot's logical blocks sit in pool blocks
 * in a shuffled order, interleaved with the other slots' and with spare blocks,
 * and unused rows hold NaN, so a kernel reading a wrong row fails. Block sizes
 * 16 (a power of two) and 7 (not one, nor a divisor of the 64-key tiles).
 *
 *   writes     kv_write_paged and the fused qk_norm_rope_kv with a table put
 *              each token's row where the table says and touch nothing else;
 *              the rows equal the contiguous op's bit for bit;
 *   attention  decode (tokens at scattered positions of several slots, block
 *              edges, position 0), short contexts and a prompt (two slots,
 *              one starting mid-sequence), f32 and bf16 caches, round_bf16
 *              off and on, GQA 1 and 4, head sizes 64/128/80, every path and
 *              split count: equal bit for bit to pio_cuda_attention on a
 *              contiguous cache of max_pos positions with the same keys, and
 *              within the CPU twin's bounds (those of test-cuda-ops);
 *   graph      a captured decode step replayed after the table, the positions
 *              and the pool's contents changed equals a direct run;
 *   copies     copy on write of a block (device to device) leaves the shared
 *              block as it was; a slot swapped out to host memory (pageable and
 *              pinned) and back into other blocks attends exactly as before;
 *   rejects    a table row longer than the table, a token whose block is
 *              absent, a pool that does not match the table.
 *
 * Without a usable GPU it prints "SKIP: no CUDA device (...)" and exits 77
 * (ctest: skipped; label gpu), as test-cuda-ops does.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention_paged.h"
#include "cpu_ops.h"
#include "cuda_ops.h"
#include "pio_test.h"

static pio_cuda_ctx *ctx;
static pio_threadpool *pool;

/* ---- helpers (tests/c/cuda_test_util.h, over ctx and rng) --------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
#include "cuda_test_util.h"

static pio_cuda_batch *batch_of(int32_t n, const int32_t *seq, const int32_t *pos) {
    pio_error err = {0};
    pio_cuda_batch *b = pio_cuda_batch_new(ctx, n > 0 ? n : 1, &err);
    if (!b || pio_cuda_batch_set(ctx, b, NULL, seq, pos, n, &err) != PIO_OK) die("batch", &err);
    return b;
}

/* Whether two host f32 tensors hold the same bits (NaN included). */
static bool same_bits(const pio_tensor *a, const pio_tensor *b) {
    return pio_tensor_numel(a) == pio_tensor_numel(b) &&
           memcmp(fp(a), fp(b), (size_t)pio_tensor_numel(a) * sizeof(float)) == 0;
}

/* |got - want| within tight (or loose for at most `share` of the values); NaN fails. */
static bool close_enough(const pio_tensor *got, const pio_tensor *want, double tight, double loose,
                         double share, double *worst) {
    int64_t off = 0, bad = 0, n = pio_tensor_numel(want);
    *worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)fp(got)[i] - fp(want)[i]);
        if (!(d == d)) d = INFINITY;
        if (d > *worst) *worst = d;
        if (d <= tight) continue;
        if (d <= loose) off++;
        else bad++;
    }
    return bad == 0 && off <= 1 + (int64_t)(share * (double)n);
}

/* ---- a scattered paged layout ------------------------------------------------------ */

enum { SLOTS = 3, MAX_POS = 200, SPARE = 5 };

typedef struct {
    int32_t block, cols, n_blocks;
    int32_t table[SLOTS * MAX_POS];    /* [SLOTS, cols] */
    int32_t spare[SPARE];              /* pool blocks no slot uses */
    int32_t lens[SLOTS];
    const int32_t *rows[SLOTS];
    pio_kv_table kt[SLOTS];            /* the CPU twin's view of the same table */
} layout;

/* Logical block c of slot s gets a pool block from a shuffled permutation,
 * slots interleaved: tables are neither monotonic nor contiguous. */
static void layout_make(layout *L, int32_t block) {
    L->block = block;
    L->cols = (MAX_POS + block - 1) / block;
    L->n_blocks = SLOTS * L->cols + SPARE;
    int32_t perm[SLOTS * MAX_POS + SPARE];
    for (int32_t i = 0; i < L->n_blocks; i++) perm[i] = i;
    for (int32_t i = L->n_blocks - 1; i > 0; i--) {
        int32_t j = irand(i + 1), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int32_t s = 0; s < SLOTS; s++) {
        for (int32_t c = 0; c < L->cols; c++) L->table[s * L->cols + c] = perm[c * SLOTS + s];
        L->lens[s] = L->cols;
        L->rows[s] = L->table + s * L->cols;
        L->kt[s] = (pio_kv_table){L->rows[s], L->cols};
    }
    for (int i = 0; i < SPARE; i++) L->spare[i] = perm[SLOTS * L->cols + i];
}

static int64_t row_in_pool(const layout *L, int32_t s, int32_t p) {
    return (int64_t)L->table[s * L->cols + p / L->block] * L->block + p % L->block;
}

/* Host pool [n_blocks, block, heads, d] (f32): NaN, then each (slot, position)
 * row of the contiguous host cache c [SLOTS, MAX_POS, heads, d] where L puts it. */
static pio_tensor *scatter_pool(const layout *L, const pio_tensor *c) {
    const int64_t heads = c->shape[2], d = c->shape[3], w = heads * d;
    pio_tensor *p = H(L->n_blocks, L->block, heads, d);
    for (int64_t i = 0; i < pio_tensor_numel(p); i++) fp(p)[i] = NAN;
    for (int32_t s = 0; s < SLOTS; s++)
        for (int32_t q = 0; q < MAX_POS; q++)
            memcpy(fp(p) + row_in_pool(L, s, q) * w, fp(c) + ((int64_t)s * MAX_POS + q) * w,
                   (size_t)w * sizeof(float));
    return p;
}

static pio_cuda_block_table *table_of(const layout *L) {
    pio_error err = {0};
    pio_cuda_block_table *t =
        pio_cuda_block_table_new(ctx, SLOTS, MAX_POS, L->block, L->n_blocks, &err);
    if (!t || pio_cuda_block_table_set(ctx, t, L->rows, L->lens, &err) != PIO_OK)
        die("block table", &err);
    return t;
}

/* ---- writes ------------------------------------------------------------------------- */

/* Tokens written: block edges, position 0, the last position, several slots. */
static const int32_t W_SEQ[] = {0, 1, 2, 1, 1, 0, 2};
static const int32_t W_POS[] = {199, 0, 37, 15, 16, 64, 6};
enum { W_N = 7 };

static void check_write(int64_t Hq, int64_t Hkv, int64_t D, int32_t block, pio_dtype cd,
                        bool fused, bool rnd) {
    pio_error err = {0};
    layout L;
    layout_make(&L, block);
    pio_cuda_block_table *tab = table_of(&L);
    pio_cuda_batch *b = batch_of(W_N, W_SEQ, W_POS);
    const pio_dtype act = rnd ? PIO_BF16 : PIO_F32;
    pio_tensor *qh = HR(2.0f, rnd, W_N, Hq, D), *kh = HR(2.0f, rnd, W_N, Hkv, D);
    pio_tensor *vh = HR(1.0f, rnd, W_N, Hkv, D);
    pio_tensor *k = dev(kh, act), *v = dev(vh, act);
    pio_tensor *qa = dev(qh, act), *qb = dev(qh, act); /* the fused op ropes q in place */
    pio_tensor *ck = DP(cd, SLOTS, MAX_POS, Hkv, D), *cv = DP(cd, SLOTS, MAX_POS, Hkv, D);
    pio_tensor *pk = DP(cd, L.n_blocks, block, Hkv, D), *pv = DP(cd, L.n_blocks, block, Hkv, D);
    pio_status s1, s2;
    if (fused) {
        pio_tensor *qnh = HR(1.0f, rnd, D), *knh = HR(1.0f, rnd, D), *ifh = H(D / 2);
        for (int64_t i = 0; i < D / 2; i++) fp(ifh)[i] = powf(10000.0f, -2.0f * (float)i / (float)D);
        pio_tensor *qn = dev(qnh, act), *kn = dev(knh, act), *inv = dev(ifh, PIO_F32);
        pio_cuda_qkv_args a = {.q = qa, .k = k, .v = v, .q_norm = qn, .k_norm = kn, .eps = 1e-6f,
                               .inv_freq = inv, .rot_dim = (int)D, .cache_k = ck, .cache_v = cv,
                               .batch = b, .round_bf16 = rnd};
        s1 = pio_cuda_qk_norm_rope_kv(ctx, &a, &err);
        a.q = qb, a.cache_k = pk, a.cache_v = pv, a.table = tab;
        s2 = pio_cuda_qk_norm_rope_kv(ctx, &a, &err);
        pio_tensor *ga = down(qa), *gb = down(qb);
        CHECK_MSG(same_bits(ga, gb), "qk_norm_rope_kv with a table changed q");
        pio_tensor_free(ga), pio_tensor_free(gb);
        pio_tensor_free(qnh), pio_tensor_free(knh), pio_tensor_free(ifh);
        dfree(qn), dfree(kn), dfree(inv);
    } else {
        s1 = pio_cuda_kv_write(ctx, k, v, ck, cv, b, &err);
        s2 = pio_cuda_kv_write_paged(ctx, k, v, pk, pv, b, tab, &err);
    }
    CHECK_MSG(s1 == PIO_OK && s2 == PIO_OK, "%s: %s", fused ? "qk_norm_rope_kv" : "kv_write",
              err.msg);
    const int64_t w = Hkv * D;
    pio_tensor *gc[2] = {down(ck), down(cv)}, *gp[2] = {down(pk), down(pv)};
    for (int kv = 0; kv < 2; kv++) {
        int rows_bad = 0, written = 0;
        for (int t = 0; t < W_N; t++) {
            const float *want = fp(gc[kv]) + ((int64_t)W_SEQ[t] * MAX_POS + W_POS[t]) * w;
            const float *got = fp(gp[kv]) + row_in_pool(&L, W_SEQ[t], W_POS[t]) * w;
            rows_bad += memcmp(want, got, (size_t)w * sizeof(float)) != 0 || isnan(want[0]);
        }
        for (int64_t r = 0; r < (int64_t)L.n_blocks * block; r++)
            written += !isnan(fp(gp[kv])[r * w]);
        CHECK_MSG(rows_bad == 0 && written == W_N,
                  "%s paged %s H=%lld Hkv=%lld D=%lld block %d cache %s round %d: %d rows differ "
                  "from the contiguous op's, %d rows written (want %d)",
                  fused ? "qk_norm_rope_kv" : "kv_write", kv ? "V" : "K", (long long)Hq,
                  (long long)Hkv, (long long)D, block, dtn(cd), rnd, rows_bad, written, W_N);
        pio_tensor_free(gc[kv]), pio_tensor_free(gp[kv]);
    }
    pio_tensor *hs[] = {qh, kh, vh};
    for (size_t i = 0; i < 3; i++) pio_tensor_free(hs[i]);
    pio_tensor *ds[] = {k, v, qa, qb, ck, cv, pk, pv};
    for (size_t i = 0; i < 8; i++) dfree(ds[i]);
    pio_cuda_batch_free(ctx, b);
    pio_cuda_block_table_free(ctx, tab);
}

/* ---- attention ----------------------------------------------------------------------- */

static void case_decode(attn_case *c) {
    static const int32_t s[] = {0, 1, 2, 0, 2, 1}, p[] = {199, 36, 101, 0, 16, 111};
    c->name = "decode";
    c->n = 6;
    memcpy(c->seq, s, sizeof s);
    memcpy(c->pos, p, sizeof p);
}

static void check_attention(const attn_case *c, int64_t Hq, int64_t Hkv, int64_t D,
                            int32_t block, pio_dtype cd, bool rnd, pio_cuda_attn_path path,
                            int splits) {
    pio_error err = {0};
    const int64_t n = c->n;
    const float scale = 1.0f / sqrtf((float)D);
    layout L;
    layout_make(&L, block);
    pio_tensor *qh = HR(2.0f, rnd, n, Hq, D);
    pio_tensor *kh = HR(2.0f, cd == PIO_BF16, SLOTS, MAX_POS, Hkv, D);
    pio_tensor *vh = HR(1.0f, cd == PIO_BF16, SLOTS, MAX_POS, Hkv, D);
    pio_tensor *kp = scatter_pool(&L, kh), *vp = scatter_pool(&L, vh);
    pio_tensor *q = dev(qh, PIO_F32), *kc = dev(kh, cd), *vc = dev(vh, cd);
    pio_tensor *kpd = dev(kp, cd), *vpd = dev(vp, cd);
    pio_tensor *oc = DP(PIO_F32, n, Hq, D), *op = DP(PIO_F32, n, Hq, D);
    pio_cuda_batch *b = batch_of((int32_t)n, c->seq, c->pos);
    pio_cuda_block_table *tab = table_of(&L);
    pio_cuda_set_attn_path(ctx, path);
    pio_cuda_set_attn_splits(ctx, splits);
    pio_status s1 = pio_cuda_attention(ctx, q, kc, vc, b, scale, oc, rnd, &err);
    pio_status s2 = s1 ? s1 : pio_cuda_attention_paged(ctx, q, kpd, vpd, b, tab, scale, op, rnd, &err);
    pio_cuda_set_attn_path(ctx, PIO_CUDA_ATTN_AUTO);
    pio_cuda_set_attn_splits(ctx, 0);
    CHECK_MSG(s1 == PIO_OK && s2 == PIO_OK, "attention_paged: %s", err.msg);
    pio_tensor *gc = down(oc), *gp = down(op);
    CHECK_MSG(same_bits(gc, gp),
              "attention_paged %s H=%lld Hkv=%lld D=%lld block %d cache %s round %d path %d "
              "splits %d: not bit-identical to the contiguous cache's",
              c->name, (long long)Hq, (long long)Hkv, (long long)D, block, dtn(cd), rnd,
              (int)path, splits);

    /* The CPU twin over the same pool and tables. */
    pio_tensor *kpc = pio_tensor_to(kp, cd, NULL), *vpc = pio_tensor_to(vp, cd, NULL);
    pio_kv_view view = {
        .pool = {.k = pio_tensor_data(kpc), .v = pio_tensor_data(vpc),
                 .elem = cd == PIO_BF16 ? PIO_KV_ELEM_BF16 : PIO_KV_ELEM_F32,
                 .n_blocks = L.n_blocks, .block = block, .kv_heads = Hkv, .dk = D, .dv = D},
        .tables = L.kt, .slots = SLOTS};
    pio_tensor *want = H(n, Hq, D);
    CHECK_MSG(pio_cpu_attention_paged(pool, qh, &view, c->seq, c->pos, scale, want, rnd, &err) ==
                  PIO_OK, "cpu attention_paged: %s", err.msg);
    double worst;
    bool good = rnd ? close_enough(gp, want, 1e-4, 1e-2, 0.05, &worst) /* one bf16 step, rarely */
                    : close_enough(gp, want, 2e-5, 2e-5, 0, &worst);
    CHECK_MSG(good, "attention_paged %s H=%lld Hkv=%lld D=%lld block %d cache %s round %d path %d "
              "splits %d vs the CPU twin: worst %.3g", c->name, (long long)Hq, (long long)Hkv,
              (long long)D, block, dtn(cd), rnd, (int)path, splits, worst);

    pio_tensor *hs[] = {qh, kh, vh, kp, vp, kpc, vpc, want, gc, gp};
    for (size_t i = 0; i < sizeof hs / sizeof *hs; i++) pio_tensor_free(hs[i]);
    pio_tensor *ds[] = {q, kc, vc, kpd, vpd, oc, op};
    for (size_t i = 0; i < sizeof ds / sizeof *ds; i++) dfree(ds[i]);
    pio_cuda_batch_free(ctx, b);
    pio_cuda_block_table_free(ctx, tab);
}

static void test_attention(void) {
    attn_case dec, sh, pr;
    case_decode(&dec), case_short(&sh), case_prompt(&pr);
    static const int32_t blocks[] = {16, 7};
    for (int bi = 0; bi < 2; bi++)
        for (int rnd = 0; rnd < 2; rnd++)
            for (int cd = 0; cd < 2; cd++) {
                const pio_dtype c = cd ? PIO_BF16 : PIO_F32;
                const int32_t bs = blocks[bi];
                static const int splits[] = {0, 1, 3};
                for (int s = 0; s < 3; s++) {
                    check_attention(&dec, 8, 2, 128, bs, c, rnd, PIO_CUDA_ATTN_SPLIT, splits[s]);
                    check_attention(&dec, 4, 4, 64, bs, c, rnd, PIO_CUDA_ATTN_SPLIT, splits[s]);
                }
                check_attention(&sh, 8, 2, 128, bs, c, rnd, PIO_CUDA_ATTN_AUTO, 0);
                check_attention(&sh, 6, 6, 80, bs, c, rnd, PIO_CUDA_ATTN_AUTO, 0);
                /* AUTO: tensor cores for bf16 caches in bf16 mode, split otherwise */
                check_attention(&pr, 8, 2, 128, bs, c, rnd, PIO_CUDA_ATTN_AUTO, 0);
                check_attention(&pr, 4, 4, 64, bs, c, rnd, PIO_CUDA_ATTN_AUTO, 0);
                check_attention(&pr, 8, 2, 64, bs, c, rnd, PIO_CUDA_ATTN_SPLIT, 2);
            }
    /* tensor cores forced on a decode batch (one-token tiles) */
    check_attention(&dec, 8, 2, 128, 16, PIO_BF16, true, PIO_CUDA_ATTN_MMA, 0);
    check_attention(&dec, 4, 4, 64, 7, PIO_BF16, true, PIO_CUDA_ATTN_MMA, 0);
}

/* ---- a captured step replayed over new tables -------------------------------------- */

static void test_graph(pio_dtype cd, bool rnd) {
    pio_error err = {0};
    const int64_t Hq = 8, Hkv = 2, D = 128;
    const float scale = 1.0f / sqrtf((float)D);
    layout L;
    layout_make(&L, 16);
    pio_tensor *kh = HR(2.0f, cd == PIO_BF16, SLOTS, MAX_POS, Hkv, D);
    pio_tensor *vh = HR(1.0f, cd == PIO_BF16, SLOTS, MAX_POS, Hkv, D);
    pio_tensor *qh = HR(2.0f, rnd, 1, Hq, D);
    pio_tensor *kp = scatter_pool(&L, kh), *vp = scatter_pool(&L, vh);
    pio_tensor *q = dev(qh, PIO_F32), *kc = dev(kh, cd), *vc = dev(vh, cd);
    pio_tensor *kpd = dev(kp, cd), *vpd = dev(vp, cd);
    pio_tensor *og = DP(PIO_F32, 1, Hq, D), *oc = DP(PIO_F32, 1, Hq, D);
    int32_t seq = 1, pos = 20;
    pio_cuda_batch *b = batch_of(1, &seq, &pos);
    pio_cuda_block_table *tab = table_of(&L);
    pio_cuda_graph *g = NULL;
    /* a direct run first (scratch gets its size), then the capture */
    bool ok = pio_cuda_attention_paged(ctx, q, kpd, vpd, b, tab, scale, og, rnd, &err) == PIO_OK &&
              pio_cuda_graph_begin(ctx, &err) == PIO_OK;
    if (ok) {
        pio_status st = pio_cuda_attention_paged(ctx, q, kpd, vpd, b, tab, scale, og, rnd, &err);
        ok = pio_cuda_graph_end(ctx, &g, &err) == PIO_OK && st == PIO_OK;
    }
    CHECK_MSG(ok, "graph capture of attention_paged: %s", err.msg);
    static const int32_t steps[][2] = {{1, 21}, {0, 199}, {2, 64}, {2, 0}};
    for (int i = 0; ok && i < 4; i++) {
        /* a new layout: the same keys in other blocks of the same pool */
        layout_make(&L, 16);
        pio_tensor *kp2 = scatter_pool(&L, kh), *vp2 = scatter_pool(&L, vh);
        seq = steps[i][0], pos = steps[i][1];
        ok = pio_cuda_copy_to_device(ctx, kpd, kp2, &err) == PIO_OK &&
             pio_cuda_copy_to_device(ctx, vpd, vp2, &err) == PIO_OK &&
             pio_cuda_block_table_set(ctx, tab, L.rows, L.lens, &err) == PIO_OK &&
             pio_cuda_batch_set(ctx, b, NULL, &seq, &pos, 1, &err) == PIO_OK &&
             pio_cuda_graph_launch(ctx, g, &err) == PIO_OK &&
             pio_cuda_attention(ctx, q, kc, vc, b, scale, oc, rnd, &err) == PIO_OK;
        CHECK_MSG(ok, "graph replay: %s", err.msg);
        pio_tensor *gg = down(og), *gc = down(oc);
        CHECK_MSG(same_bits(gg, gc), "attention_paged graph replay %d (slot %d, position %d, "
                  "cache %s, round %d) differs from a direct contiguous run", i, seq, pos,
                  dtn(cd), rnd);
        pio_tensor_free(gg), pio_tensor_free(gc), pio_tensor_free(kp2), pio_tensor_free(vp2);
    }
    pio_cuda_graph_free(g);
    pio_tensor *hs[] = {kh, vh, qh, kp, vp};
    for (size_t i = 0; i < 5; i++) pio_tensor_free(hs[i]);
    pio_tensor *ds[] = {q, kc, vc, kpd, vpd, og, oc};
    for (size_t i = 0; i < 7; i++) dfree(ds[i]);
    pio_cuda_batch_free(ctx, b);
    pio_cuda_block_table_free(ctx, tab);
}

/* ---- copy on write and swap ------------------------------------------------------------ */

/* Copies block `from` to `to` of a pool on the device, then writes one token
 * into the copy (the slot's table now points there): the shared block keeps
 * its rows, the copy has the new row and otherwise the old ones. */
static void test_copy_on_write(pio_dtype cd) {
    pio_error err = {0};
    const int64_t Hkv = 2, D = 64, w = Hkv * D;
    layout L;
    layout_make(&L, 16);
    pio_tensor *kh = HR(2.0f, cd == PIO_BF16, SLOTS, MAX_POS, Hkv, D);
    pio_tensor *kp = scatter_pool(&L, kh);
    pio_tensor *kpd = dev(kp, cd), *vpd = dev(kp, cd);
    const size_t es = pio_dtype_info(cd)->size, bytes = (size_t)(16 * w) * es;
    const int32_t from = L.table[0 * L.cols + 2], to = L.spare[0];
    char *base = pio_tensor_data(kpd);
    CHECK_MSG(pio_cuda_copy_2d(ctx, base + (size_t)to * bytes, bytes, base + (size_t)from * bytes,
                               bytes, bytes, 1, &err) == PIO_OK, "copy_2d: %s", err.msg);
    L.table[0 * L.cols + 2] = to; /* slot 0's logical block 2 is now the copy */
    pio_cuda_block_table *tab = table_of(&L);
    int32_t seq = 0, pos = 2 * 16 + 5;
    pio_cuda_batch *b = batch_of(1, &seq, &pos);
    pio_tensor *nk = HR(3.0f, true, 1, Hkv, D), *nkd = dev(nk, PIO_F32);
    CHECK_MSG(pio_cuda_kv_write_paged(ctx, nkd, nkd, kpd, vpd, b, tab, &err) == PIO_OK,
              "kv_write_paged: %s", err.msg);
    pio_tensor *got = down(kpd), *newrow = pio_tensor_to(nk, cd, NULL);
    pio_tensor *newf = pio_tensor_to(newrow, PIO_F32, NULL);
    int bad = 0;
    for (int r = 0; r < 16; r++) {
        const float *src = fp(kp) + ((int64_t)from * 16 + r) * w;
        const float *at_from = fp(got) + ((int64_t)from * 16 + r) * w;
        const float *at_to = fp(got) + ((int64_t)to * 16 + r) * w;
        bad += memcmp(at_from, src, (size_t)w * sizeof(float)) != 0; /* the shared block */
        const float *want = r == 5 ? fp(newf) : src;
        bad += memcmp(at_to, want, (size_t)w * sizeof(float)) != 0;
    }
    CHECK_MSG(bad == 0, "copy on write (%s): %d rows wrong", dtn(cd), bad);
    pio_tensor_free(kh), pio_tensor_free(kp), pio_tensor_free(nk), pio_tensor_free(got);
    pio_tensor_free(newrow), pio_tensor_free(newf);
    dfree(kpd), dfree(vpd), dfree(nkd);
    pio_cuda_batch_free(ctx, b);
    pio_cuda_block_table_free(ctx, tab);
}

/* One slot's rows (K, V per position, interleaved as models/kv_checkpoint.c
 * lays them out) out to host memory, then back into other blocks of a fresh
 * pool: attention through the new table equals attention before, bit for bit. */
static void test_swap(pio_dtype cd, bool pinned) {
    pio_error err = {0};
    const int64_t Hq = 8, Hkv = 2, D = 128, w = Hkv * D;
    const float scale = 1.0f / sqrtf((float)D);
    const int32_t slot = 1, len = 150;
    layout L, L2;
    layout_make(&L, 16);
    layout_make(&L2, 16);
    pio_tensor *kh = HR(2.0f, cd == PIO_BF16, SLOTS, MAX_POS, Hkv, D);
    pio_tensor *vh = HR(1.0f, cd == PIO_BF16, SLOTS, MAX_POS, Hkv, D);
    pio_tensor *kp = scatter_pool(&L, kh), *vp = scatter_pool(&L, vh);
    pio_tensor *kpd = dev(kp, cd), *vpd = dev(vp, cd);
    pio_tensor *k2 = DP(cd, L.n_blocks, 16, Hkv, D), *v2 = DP(cd, L.n_blocks, 16, Hkv, D);
    const size_t rb = (size_t)w * pio_dtype_info(cd)->size, per_pos = 2 * rb;
    char *img = pinned ? pio_cuda_host_alloc(per_pos * len, &err) : malloc(per_pos * len);
    if (!img) die("swap image", &err);
    bool ok = true;
    /* out: a run of rows per block */
    for (int32_t p = 0; ok && p < len; p += 16) {
        const int32_t run = len - p < 16 ? len - p : 16;
        const int64_t row = row_in_pool(&L, slot, p);
        ok = pio_cuda_copy_2d(ctx, img + p * per_pos, per_pos, (char *)pio_tensor_data(kpd) + row * rb,
                              rb, rb, (size_t)run, &err) == PIO_OK &&
             pio_cuda_copy_2d(ctx, img + p * per_pos + rb, per_pos,
                              (char *)pio_tensor_data(vpd) + row * rb, rb, rb, (size_t)run,
                              &err) == PIO_OK;
    }
    ok = ok && pio_cuda_sync(ctx, &err) == PIO_OK;
    CHECK_MSG(ok, "swap out: %s", err.msg);
    /* the image holds the slot's rows, in order */
    int bad = 0;
    for (int32_t p = 0; p < len; p++) {
        const float *want = fp(kh) + ((int64_t)slot * MAX_POS + p) * w;
        for (int64_t i = 0; i < w; i++) {
            float got = cd == PIO_BF16 ? pio_bf16_to_f32(((uint16_t *)(img + p * per_pos))[i])
                                       : ((float *)(img + p * per_pos))[i];
            bad += got != want[i];
        }
    }
    CHECK_MSG(bad == 0, "swap out (%s, %s host memory): %d values differ", dtn(cd),
              pinned ? "pinned" : "pageable", bad);
    /* back: into the blocks of another layout */
    for (int32_t p = 0; ok && p < len; p += 16) {
        const int32_t run = len - p < 16 ? len - p : 16;
        const int64_t row = row_in_pool(&L2, slot, p);
        ok = pio_cuda_copy_2d(ctx, (char *)pio_tensor_data(k2) + row * rb, rb, img + p * per_pos,
                              per_pos, rb, (size_t)run, &err) == PIO_OK &&
             pio_cuda_copy_2d(ctx, (char *)pio_tensor_data(v2) + row * rb, rb,
                              img + p * per_pos + rb, per_pos, rb, (size_t)run, &err) == PIO_OK;
    }
    ok = ok && pio_cuda_sync(ctx, &err) == PIO_OK;
    CHECK_MSG(ok, "swap in: %s", err.msg);
    /* decode steps of the slot through both */
    int32_t seq[3] = {slot, slot, slot}, pos[3] = {len - 1, 64, 0};
    pio_cuda_batch *b = batch_of(3, seq, pos);
    pio_tensor *qh = HR(2.0f, true, 3, Hq, D), *q = dev(qh, PIO_F32);
    pio_tensor *o1 = DP(PIO_F32, 3, Hq, D), *o2 = DP(PIO_F32, 3, Hq, D);
    pio_cuda_block_table *t1 = table_of(&L), *t2 = table_of(&L2);
    ok = pio_cuda_attention_paged(ctx, q, kpd, vpd, b, t1, scale, o1, true, &err) == PIO_OK &&
         pio_cuda_attention_paged(ctx, q, k2, v2, b, t2, scale, o2, true, &err) == PIO_OK;
    CHECK_MSG(ok, "attention after swap: %s", err.msg);
    pio_tensor *g1 = down(o1), *g2 = down(o2);
    CHECK_MSG(same_bits(g1, g2), "attention after a swap round trip (%s, %s) differs", dtn(cd),
              pinned ? "pinned" : "pageable");
    if (pinned) pio_cuda_host_free(img);
    else free(img);
    pio_tensor *hs[] = {kh, vh, kp, vp, qh, g1, g2};
    for (size_t i = 0; i < 7; i++) pio_tensor_free(hs[i]);
    pio_tensor *ds[] = {kpd, vpd, k2, v2, q, o1, o2};
    for (size_t i = 0; i < 7; i++) dfree(ds[i]);
    pio_cuda_batch_free(ctx, b);
    pio_cuda_block_table_free(ctx, t1);
    pio_cuda_block_table_free(ctx, t2);
}

/* ---- rejects ------------------------------------------------------------------------------ */

static void test_rejects(void) {
    pio_error err = {0};
    const int64_t Hq = 4, Hkv = 2, D = 64;
    layout L;
    layout_make(&L, 16);
    pio_cuda_block_table *tab = table_of(&L);
    int32_t lens[SLOTS] = {L.cols + 1, 0, 0};
    CHECK(pio_cuda_block_table_set(ctx, tab, L.rows, lens, &err) == PIO_ERR_RANGE);
    CHECK_ERR(err, "slot 0 has 14 blocks for a row of 13");
    CHECK(pio_cuda_block_table_new(ctx, 0, MAX_POS, 16, 4, &err) == NULL);
    /* slot 2 holds its first block only */
    int32_t short_lens[SLOTS] = {L.cols, L.cols, 1};
    CHECK(pio_cuda_block_table_set(ctx, tab, L.rows, short_lens, &err) == PIO_OK);
    pio_tensor *kh = HR(1.0f, false, 2, Hkv, D), *k = dev(kh, PIO_F32);
    pio_tensor *qh = HR(1.0f, false, 2, Hq, D), *q = dev(qh, PIO_F32), *o = DP(PIO_F32, 2, Hq, D);
    pio_tensor *pk = DP(PIO_F32, L.n_blocks, 16, Hkv, D), *pv = DP(PIO_F32, L.n_blocks, 16, Hkv, D);
    int32_t seq[2] = {0, 2}, pos[2] = {3, 40};
    pio_cuda_batch *b = batch_of(2, seq, pos);
    err = (pio_error){0};
    CHECK(pio_cuda_kv_write_paged(ctx, k, k, pk, pv, b, tab, &err) == PIO_ERR_RANGE);
    CHECK_ERR(err, "token 1: slot 2 has no block for position 40");
    err = (pio_error){0};
    CHECK(pio_cuda_attention_paged(ctx, q, pk, pv, b, tab, 0.125f, o, false, &err) == PIO_ERR_RANGE);
    CHECK_ERR(err, "token 1: the table of slot 2 lacks a block for positions 0..40");
    pos[1] = 15; /* inside its one block: fine */
    CHECK(pio_cuda_batch_set(ctx, b, NULL, seq, pos, 2, &err) == PIO_OK);
    CHECK_MSG(pio_cuda_attention_paged(ctx, q, pk, pv, b, tab, 0.125f, o, false, &err) == PIO_OK,
              "%s", err.msg);
    pos[1] = MAX_POS;
    CHECK(pio_cuda_batch_set(ctx, b, NULL, seq, pos, 2, &err) == PIO_OK);
    err = (pio_error){0};
    CHECK(pio_cuda_kv_write_paged(ctx, k, k, pk, pv, b, tab, &err) == PIO_ERR_RANGE);
    CHECK_ERR(err, "position 200 is out of range for a context of 200");
    /* a pool that is not the table's */
    pio_tensor *small = DP(PIO_F32, L.n_blocks, 8, Hkv, D);
    pos[1] = 15;
    CHECK(pio_cuda_batch_set(ctx, b, NULL, seq, pos, 2, &err) == PIO_OK);
    err = (pio_error){0};
    CHECK(pio_cuda_attention_paged(ctx, q, small, small, b, tab, 0.125f, o, false, &err) ==
          PIO_ERR_INVALID);
    CHECK_ERR(err, "is not a pool of");
    CHECK_MSG(pio_cuda_sync(ctx, &err) == PIO_OK, "%s", err.msg);
    pio_tensor_free(kh), pio_tensor_free(qh);
    dfree(k), dfree(q), dfree(o), dfree(pk), dfree(pv), dfree(small);
    pio_cuda_batch_free(ctx, b);
    pio_cuda_block_table_free(ctx, tab);
}

int main(void) {
    pio_error err = {0};
    if (pio_cuda_available(&err) == 0) {
        printf("SKIP: no CUDA device (%s)\n", err.msg);
        return 77;
    }
    ctx = pio_cuda_ctx_new(NULL, &err);
    if (!ctx) {
        printf("SKIP: no CUDA device (%s)\n", err.msg);
        return 77;
    }
    pool = pio_threadpool_new(4, &err);
    if (!pool) die("thread pool", &err);

    test_rejects();
    for (int pdl = 0; pdl < 2; pdl++) {
        pio_cuda_set_pdl(ctx, pdl == 1); /* without, then with programmatic dependent launch */
        if (pdl && !pio_cuda_pdl(ctx)) break;
        for (int cd = 0; cd < 2; cd++) {
            const pio_dtype c = cd ? PIO_BF16 : PIO_F32;
            for (int rnd = 0; rnd < 2; rnd++)
                for (int fused = 0; fused < 2; fused++) {
                    check_write(8, 2, 128, 16, c, fused, rnd);
                    check_write(4, 4, 64, 7, c, fused, rnd);
                }
            test_graph(c, cd == 1);
            test_copy_on_write(c);
            test_swap(c, false);
            test_swap(c, true);
        }
        if (!pdl) test_attention();
    }
    pio_cuda_set_pdl(ctx, false);
    CHECK_MSG(pio_cuda_sync(ctx, &err) == PIO_OK, "asynchronous failure: %s", err.msg);
    pio_threadpool_free(pool);
    pio_cuda_ctx_free(ctx);
    TEST_MAIN_END();
}
