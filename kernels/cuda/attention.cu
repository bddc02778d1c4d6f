/* Causal GQA attention over the KV cache: a split-K kernel for decode (and
 * for the f32 reference mode), and a tensor-core tile kernel for prompts.
 *
 * Split path. Block (token t, kv head g, head batch, split s): up to 4 query
 * heads that share kv head g, keys [s·chunk, (s+1)·chunk) of 0..pos[t], the
 * chunk a multiple of 32 computed on the device from pos[t] (so a graph
 * captured with a fixed number of splits is right for any position). Each
 * warp takes tiles of 32 keys in turn, copied by cp.async into its own
 * shared memory (double-buffered where room allows; K rows padded to an odd
 * number of 16-byte chunks). Scores: lane i owns key i of the tile and takes
 * the full dot products of its K row with the heads' q (f32 in shared
 * memory, read by all lanes at once): no reduction per score. Softmax: one
 * warp max per head and tile; sums kept per lane. P·V: a lane owns Dv/32
 * (2, 4 or 8) consecutive output elements, reads them from every V row of
 * the tile and takes the keys' probabilities from shared memory. The warps'
 * partial results are combined per block. Modes:
 *   FLASH  online softmax: partial (max, sum, Σ e^(s−max) v) per split, then
 *          attn_reduce_kernel combines the splits (round_bf16 = false);
 *   STATS  pass 1 of bf16 mode: per split max and Σ e^(s − max); also writes
 *          the (rounded) scores to scratch [n, H, ctx] for pass 2;
 *   ROUND  pass 2 of bf16 mode: every block first combines all splits' stats
 *          into the row's final max M and sum L, then p = bf16(e^(s−M) / L),
 *          exactly as transformers' eager attention rounds its probabilities,
 *          and Σ p v per split; attn_reduce_kernel adds the splits. It reads
 *          pass 1's scores (recomputes them from K when the scratch would
 *          exceed 256 MiB), so K is read once.
 * With one split, FLASH and ROUND write the output directly.
 *
 * Tensor-core path (bf16 caches, head_dim 64 or 128). A block owns 64 rows:
 * 64/G consecutive tokens of one sequence × the G query heads of one kv head,
 * so each K/V tile is loaded once for all of them. 4 warps × 16 rows; Q·Kᵀ
 * and P·V by mma.sync m16n8k16 (bf16 in, f32 accumulate), K/V tiles of 64
 * keys double-buffered in shared memory by cp.async, fragments by ldmatrix,
 * rows padded by 16 bytes so ldmatrix is free of bank conflicts. In bf16
 * mode two passes (max and sum first, then the rounded probabilities, as
 * above); otherwise one online-softmax pass.
 *
 * Paged caches (pio_cuda_attention_paged): the caches are pools [n_blocks,
 * block, Hkv, D] and key j of slot s is row j % block of pool block
 * table[s][j / block]. Both paths map each key's row through the table where
 * they copy K/V rows into shared memory (a tile may straddle blocks of any
 * size); everything else, the split plan included (made for the table's
 * max_pos), is the contiguous path's, so the results are the same bits.
 */
#include <algorithm>
#include <atomic>
#include <math.h>

#include "cuda_internal.cuh"

/* ============================== split path ============================== */

enum { SP_WARPS = 4, SP_THREADS = 32 * SP_WARPS, SP_GB = 4, SP_KT = 32 };
enum { MODE_FLASH = 0, MODE_STATS = 1, MODE_ROUND = 2 };
/* Shared memory for a block's tiles: at most this much, so that three blocks
 * fit on an SM (228 KiB on Hopper, with q, the static arrays and 1 KiB each). */
static const size_t SP_TILE_BUDGET = 70 * 1024;

struct split_args {
    pio_rows q;                 /* [n, H * Dk] */
    int H, Hkv, G, hb_count, Dk, Dv;
    const void *k, *v;          /* caches [slots, ctx, Hkv, D] */
    bool k_bf16, v_bf16, k_vec, v_vec;
    int64_t ctx_len;
    const int32_t *seq, *pos;
    float scale;
    int nsplit;
    bool rnd;                   /* scores rounded as transformers' bf16 matmul */
    float *part_o;              /* [n, H, nsplit, Dv] */
    float *part_ml;             /* [n, H, nsplit, 2] */
    float *sc;                  /* [n, H, ctx_len]: STATS's scores for ROUND, or NULL (ROUND recomputes them) */
    pio_rows out;               /* [n, H * Dv]: written directly when nsplit == 1 */
    /* Dynamic shared memory (plan_tiles): q of the block's heads (q_bytes,
     * when K is read), then per warp nst stages of stage_bytes, each the K
     * rows (at k_off), the V rows (v_off) and the scores (s_off) of 32 keys,
     * as the mode needs them. */
    int q_bytes;
    int k_chunks, k_pitch;      /* 16-byte chunks of a K row (Dk padded with zeros), bytes between rows */
    int v_elems, v_chunks;      /* a V row: elements (Dv padded with zeros), 16-byte chunks */
    int nst, stage_bytes, k_off, v_off, s_off;
    /* Paged: k, v are pools [n_blocks, block, Hkv, D], key j of slot s at row
     * table[s · table_cols + j / block] · block + j % block (ctx_len is then the
     * positions a slot may hold: sc's row length). NULL: contiguous. */
    const int32_t *table;
    int table_cols, block;
};

/* The pool row of key j through a slot's row of the block table. */
static __device__ __forceinline__ int64_t paged_row(const int32_t *tab, int block, int j) {
    return (int64_t)tab[j / block] * block + j % block;
}

static __device__ __forceinline__ uint32_t sp_smem(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
/* 16 (4) bytes global → shared, or zeros when !pred (src not read). */
static __device__ __forceinline__ void sp_cp16(void *dst, const void *src, bool pred) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sp_smem(dst)), "l"(src),
                 "r"(pred ? 16 : 0));
}
static __device__ __forceinline__ void sp_cp4(void *dst, const void *src, bool pred) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(sp_smem(dst)), "l"(src),
                 "r"(pred ? 4 : 0));
}
static __device__ __forceinline__ void sp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
static __device__ __forceinline__ void sp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* The warp copies 32 rows of a cache into shared memory: row r (r < nk) from
 * element first + r·stride, its D elements then zeros up to `elems`; rows
 * r >= nk all zeros (so that p = 0 never meets a NaN). vec: 16-byte aligned
 * rows of whole chunks, copied by cp.async; else element by element.
 * paged: row r starts instead at element prow_r · stride + col, prow_r being
 * lane r's `prow` (each lane resolves one row through the block table, the
 * others read it by shuffle: every lane runs the loops the same number of
 * times). */
static __device__ __forceinline__ void stage_rows(unsigned char *dst, int pitch, const void *base,
                                                  bool bf16, bool vec, int64_t first, int64_t stride,
                                                  int nk, int D, int elems, bool paged = false,
                                                  int64_t prow = 0, int64_t col = 0) {
    const int lane = threadIdx.x & 31, esz = bf16 ? 2 : 4;
    if (vec) {
        const int chunks = elems * esz / 16, real = D * esz / 16;
        const unsigned char *src0 = (const unsigned char *)base + first * esz;
        const int dr = 32 / chunks, dc = 32 % chunks;
        int r = lane / chunks, c = lane % chunks; /* chunk (r, c) of the tile, lane + 32·i */
        for (int i = lane; i < 32 * chunks; i += 32) {
            const bool ok = r < nk && c < real;
            if (paged) {
                const int64_t row = __shfl_sync(0xffffffffu, prow, r);
                const unsigned char *src = (const unsigned char *)base + (row * stride + col) * esz;
                sp_cp16(dst + r * pitch + 16 * c, ok ? src + 16 * c : (const unsigned char *)base, ok);
            } else {
                sp_cp16(dst + r * pitch + 16 * c, ok ? src0 + ((int64_t)r * stride * esz + 16 * c) : src0, ok);
            }
            r += dr;
            c += dc;
            if (c >= chunks) c -= chunks, r++;
        }
        return;
    }
    for (int i = lane; i < 32 * elems; i += 32) {
        const int r = i / elems, e = i % elems;
        const bool ok = r < nk && e < D;
        const int64_t at = paged ? __shfl_sync(0xffffffffu, prow, r) * stride + col + e
                                 : first + (int64_t)r * stride + e;
        if (bf16)
            *(uint16_t *)(dst + r * pitch + 2 * e) = ok ? ((const uint16_t *)base)[at] : (uint16_t)0;
        else
            *(uint32_t *)(dst + r * pitch + 4 * e) = ok ? ((const uint32_t *)base)[at] : 0u;
    }
}

/* acc[g] = q[g] · this lane's K row (`chunks` 16-byte chunks in shared memory);
 * q[g] at q + g·qstride. */
template <bool KB16>
static __device__ __forceinline__ void dot_row(const unsigned char *row, const float *q, int qstride,
                                               int chunks, float (&acc)[SP_GB]) {
    constexpr int E = KB16 ? 8 : 4; /* elements per chunk */
    float a0[SP_GB], a1[SP_GB];     /* two chains per head */
#pragma unroll
    for (int g = 0; g < SP_GB; g++) a0[g] = a1[g] = 0.0f;
#pragma unroll 2
    for (int c = 0; c < chunks; c++) {
        const uint4 u = *(const uint4 *)(row + 16 * c);
        float kf[E];
        if constexpr (KB16) {
            const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                kf[2 * i] = __uint_as_float(w[i] << 16);
                kf[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
            }
        } else {
            kf[0] = __uint_as_float(u.x), kf[1] = __uint_as_float(u.y);
            kf[2] = __uint_as_float(u.z), kf[3] = __uint_as_float(u.w);
        }
#pragma unroll
        for (int g = 0; g < SP_GB; g++) {
            const float4 *qp = (const float4 *)(q + g * qstride + c * E); /* the same in every lane */
#pragma unroll
            for (int i = 0; i < E / 4; i++) {
                const float4 qq = qp[i];
                a0[g] = fmaf(qq.x, kf[4 * i], a0[g]);
                a1[g] = fmaf(qq.y, kf[4 * i + 1], a1[g]);
                a0[g] = fmaf(qq.z, kf[4 * i + 2], a0[g]);
                a1[g] = fmaf(qq.w, kf[4 * i + 3], a1[g]);
            }
        }
    }
#pragma unroll
    for (int g = 0; g < SP_GB; g++) acc[g] = a0[g] + a1[g];
}

/* o[g] += Σ_r p[r][g] · V row r, over the tile's 32 rows (zeros past the valid
 * keys); this lane's elements [lane·DPL, lane·DPL + DPL), when `has`. */
template <int DPL, bool VB16>
static __device__ __forceinline__ void pv_tile(const unsigned char *vt, int pitch, bool has,
                                               const float4 *p, float (&o)[SP_GB][DPL]) {
    const int lane = threadIdx.x & 31;
    const unsigned char *base = vt + lane * DPL * (VB16 ? 2 : 4);
#pragma unroll 8
    for (int r = 0; r < SP_KT; r++) {
        const float4 pr = p[r];
        float v[DPL];
#pragma unroll
        for (int i = 0; i < DPL; i++) v[i] = 0.0f;
        if (has) {
            const unsigned char *src = base + r * pitch;
            if constexpr (VB16) {
                uint32_t w[DPL / 2];
                if constexpr (DPL == 2) {
                    w[0] = *(const uint32_t *)src;
                } else if constexpr (DPL == 4) {
                    const uint2 u = *(const uint2 *)src;
                    w[0] = u.x, w[1] = u.y;
                } else {
                    static_assert(DPL == 8, "DPL is 2, 4 or 8");
                    const uint4 u = *(const uint4 *)src;
                    w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w;
                }
#pragma unroll
                for (int i = 0; i < DPL / 2; i++) {
                    v[2 * i] = __uint_as_float(w[i] << 16);
                    v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
                }
            } else if constexpr (DPL == 2) {
                const float2 u = *(const float2 *)src;
                v[0] = u.x, v[1] = u.y;
            } else {
#pragma unroll
                for (int i = 0; i < DPL / 4; i++) {
                    const float4 u = ((const float4 *)src)[i];
                    v[4 * i] = u.x, v[4 * i + 1] = u.y, v[4 * i + 2] = u.z, v[4 * i + 3] = u.w;
                }
            }
        }
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            o[0][i] = fmaf(pr.x, v[i], o[0][i]);
            o[1][i] = fmaf(pr.y, v[i], o[1][i]);
            o[2][i] = fmaf(pr.z, v[i], o[2][i]);
            o[3][i] = fmaf(pr.w, v[i], o[3][i]);
        }
    }
}

static __device__ __forceinline__ float weight_of(float m, float M) {
    return m == -INFINITY ? 0.0f : expf(m - M);
}

/* PAGED: K/V rows through the block table; a template argument so that the
 * contiguous kernel carries none of its address arithmetic. */
template <int DPL, int MODE, bool PAGED>
static __global__ void __launch_bounds__(SP_THREADS) attn_split_kernel(split_args a) {
    pio_wait_prior();
    extern __shared__ __align__(16) unsigned char sp_dyn[]; /* q, the warps' tiles; at the end, o */
    __shared__ float4 sm_p[SP_WARPS][SP_KT]; /* a tile's probabilities, per key: the 4 heads */
    __shared__ float sm_m[SP_WARPS][SP_GB], sm_l[SP_WARPS][SP_GB];
    constexpr bool HAS_V = MODE != MODE_STATS;
    const bool use_k = MODE != MODE_ROUND || !a.sc, use_s = MODE == MODE_ROUND && a.sc;
    const int t = blockIdx.x, kvh = blockIdx.y / a.hb_count, hb = blockIdx.y % a.hb_count;
    const int split = blockIdx.z, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const int h0 = kvh * a.G + hb * SP_GB, nh = min(SP_GB, a.G - hb * SP_GB);
    /* Keys [js, je): the split's share of 0..pos[t], whole tiles of 32 but the last. */
    const int L = a.pos[t] + 1;
    const int chunk = ((L + a.nsplit - 1) / a.nsplit + SP_KT - 1) / SP_KT * SP_KT;
    const int js = min(L, split * chunk), je = min(L, js + chunk);
    const int64_t seq_row = (int64_t)a.seq[t] * a.ctx_len; /* key 0 of this sequence, in rows */
    const int64_t krow = (int64_t)a.Hkv * a.Dk, vrow = (int64_t)a.Hkv * a.Dv;
    const int64_t row0 = (int64_t)t * a.H + h0; /* (token, head h0) */
    const int k_elems = a.k_chunks * (a.k_bf16 ? 8 : 4);

    /* Warp w takes the tiles w, w + nw, ...: local tile i starts at key js + 32 (w + i nw). */
    const int ntile = (je - js + SP_KT - 1) / SP_KT;
    const int nloc = warp < ntile ? (ntile - warp + nw - 1) / nw : 0;
    float *sm_q = (float *)sp_dyn; /* [SP_GB][k_elems] */
    unsigned char *wtiles = sp_dyn + a.q_bytes + (size_t)warp * a.nst * a.stage_bytes;
    /* Paged: the slot's row of the block table. */
    const int32_t *tab = PAGED ? a.table + (int64_t)a.seq[t] * a.table_cols : NULL;
    auto issue = [&](int i) { /* tile i into stage i mod nst, as one cp.async group */
        if (i < nloc) {
            const int j0 = js + (warp + i * nw) * SP_KT, nk = min(SP_KT, je - j0);
            unsigned char *st = wtiles + (i % a.nst) * a.stage_bytes;
            /* Paged: this lane's key's pool row (lanes past the tile's keys: its last key's). */
            const int64_t prow = PAGED ? paged_row(tab, a.block, j0 + min(lane, nk - 1)) : 0;
            if (use_k)
                stage_rows(st + a.k_off, a.k_pitch, a.k, a.k_bf16, a.k_vec,
                           (seq_row + j0) * krow + (int64_t)kvh * a.Dk, krow, nk, a.Dk, k_elems,
                           PAGED, prow, (int64_t)kvh * a.Dk);
            if (HAS_V)
                stage_rows(st + a.v_off, a.v_chunks * 16, a.v, a.v_bf16, a.v_vec,
                           (seq_row + j0) * vrow + (int64_t)kvh * a.Dv, vrow, nk, a.Dv, a.v_elems,
                           PAGED, prow, (int64_t)kvh * a.Dv);
            if (use_s)
#pragma unroll
                for (int g = 0; g < SP_GB; g++) {
                    const bool ok = g < nh && lane < nk;
                    sp_cp4(st + a.s_off + (g * SP_KT + lane) * 4,
                           ok ? a.sc + (row0 + g) * a.ctx_len + j0 + lane : a.sc, ok);
                }
        }
        sp_commit();
    };
    for (int i = 0; i < a.nst - 1; i++) issue(i);

    if (use_k) { /* q of the block's heads, zeros past Dk and for heads past nh */
        for (int i = threadIdx.x; i < SP_GB * k_elems; i += blockDim.x) {
            const int g = i / k_elems, d = i % k_elems;
            sm_q[i] = g < nh && d < a.Dk
                             ? load_act(a.q.p, a.q.at(t) + (int64_t)(h0 + g) * a.Dk + d, a.q.bf16)
                             : 0.0f;
        }
    }

    /* ROUND: the row's final max and 1/sum from pass 1's splits (each warp its own copy). */
    float Mg[SP_GB], invL[SP_GB];
#pragma unroll
    for (int g = 0; g < SP_GB; g++) {
        Mg[g] = 0.0f;
        invL[g] = 0.0f;
        if (MODE != MODE_ROUND || g >= nh) continue;
        const float *ml = a.part_ml + (row0 + g) * a.nsplit * 2;
        float M = -INFINITY, Ls = 0.0f;
        for (int s = lane; s < a.nsplit; s += 32) M = fmaxf(M, ml[2 * s]);
        M = warp_max(M);
        for (int s = lane; s < a.nsplit; s += 32) Ls += ml[2 * s + 1] * weight_of(ml[2 * s], M);
        Ls = warp_sum(Ls);
        Mg[g] = M;
        invL[g] = 1.0f / Ls;
    }
    __syncthreads(); /* sm_q */

    /* m: the warp's running max (the same in every lane); l: this lane's share of the sum. */
    float m[SP_GB], l[SP_GB], o[SP_GB][DPL];
#pragma unroll
    for (int g = 0; g < SP_GB; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) o[g][i] = 0.0f;
    }
    const bool has_v = lane * DPL < a.v_elems;
    for (int i = 0; i < nloc; i++) {
        issue(i + a.nst - 1);
        if (a.nst > 1)
            sp_wait<1>(); /* all but the group just issued: tile i is in */
        else
            sp_wait<0>();
        __syncwarp();
        const unsigned char *st = wtiles + (i % a.nst) * a.stage_bytes;
        const int j0 = js + (warp + i * nw) * SP_KT, nk = min(SP_KT, je - j0);
        const bool valid = lane < nk; /* this lane's key j0 + lane */
        float s[SP_GB];
        if (use_k) {
            float acc[SP_GB];
            const unsigned char *row = st + a.k_off + lane * a.k_pitch;
            if (a.k_bf16)
                dot_row<true>(row, sm_q, k_elems, a.k_chunks, acc);
            else
                dot_row<false>(row, sm_q, k_elems, a.k_chunks, acc);
#pragma unroll
            for (int g = 0; g < SP_GB; g++)
                s[g] = a.rnd ? round_bf16(round_bf16(acc[g]) * a.scale) : acc[g] * a.scale;
        } else {
#pragma unroll
            for (int g = 0; g < SP_GB; g++) s[g] = ((const float *)(st + a.s_off))[g * SP_KT + lane];
        }
#pragma unroll
        for (int g = 0; g < SP_GB; g++) s[g] = valid ? s[g] : -INFINITY;

        if constexpr (MODE == MODE_STATS) {
#pragma unroll
            for (int g = 0; g < SP_GB; g++) {
                if (g >= nh) continue;
                if (a.sc && valid) a.sc[(row0 + g) * a.ctx_len + j0 + lane] = s[g];
                const float mn = fmaxf(m[g], warp_max(s[g])); /* key j0 is valid: finite */
                l[g] = l[g] * weight_of(m[g], mn) + (valid ? expf(s[g] - mn) : 0.0f);
                m[g] = mn;
            }
        } else {
            float p[SP_GB];
#pragma unroll
            for (int g = 0; g < SP_GB; g++) {
                p[g] = 0.0f;
                if (g >= nh) continue;
                if constexpr (MODE == MODE_FLASH) {
                    const float mn = fmaxf(m[g], warp_max(s[g])), corr = weight_of(m[g], mn);
                    p[g] = valid ? expf(s[g] - mn) : 0.0f;
                    l[g] = l[g] * corr + p[g];
                    m[g] = mn;
#pragma unroll
                    for (int d = 0; d < DPL; d++) o[g][d] *= corr;
                } else {
                    p[g] = s[g] == -INFINITY ? 0.0f : round_bf16(expf(s[g] - Mg[g]) * invL[g]);
                }
            }
            sm_p[warp][lane] = make_float4(p[0], p[1], p[2], p[3]);
            __syncwarp();
            if (a.v_bf16)
                pv_tile<DPL, true>(st + a.v_off, a.v_chunks * 16, has_v, sm_p[warp], o);
            else
                pv_tile<DPL, false>(st + a.v_off, a.v_chunks * 16, has_v, sm_p[warp], o);
        }
        __syncwarp(); /* the stage and sm_p are free again */
    }
    sp_wait<0>();

    /* Combine the warps' partial results (o in the dynamic shared memory, now free). */
    __syncthreads();
    float *sm_o = (float *)sp_dyn; /* [nw][SP_GB][32 * DPL] */
#pragma unroll
    for (int g = 0; g < SP_GB; g++) {
        const float lw = MODE == MODE_ROUND ? 0.0f : warp_sum(l[g]);
        if (lane == 0) sm_m[warp][g] = m[g], sm_l[warp][g] = lw;
        if (HAS_V)
#pragma unroll
            for (int d = 0; d < DPL; d++) sm_o[(warp * SP_GB + g) * 32 * DPL + lane * DPL + d] = o[g][d];
    }
    __syncthreads();

    const bool direct = a.nsplit == 1 && MODE != MODE_STATS;
    for (int idx = threadIdx.x; idx < nh * (MODE == MODE_STATS ? 1 : a.Dv); idx += blockDim.x) {
        const int g = MODE == MODE_STATS ? idx : idx / a.Dv, d = MODE == MODE_STATS ? 0 : idx % a.Dv;
        float Mb = -INFINITY, Lb = 0.0f, ob = 0.0f;
        for (int w = 0; w < nw; w++) Mb = fmaxf(Mb, sm_m[w][g]);
        for (int w = 0; w < nw; w++) {
            const float f = MODE == MODE_ROUND ? 1.0f : weight_of(sm_m[w][g], Mb);
            Lb += sm_l[w][g] * f;
            if (HAS_V) ob += sm_o[(w * SP_GB + g) * 32 * DPL + d] * f;
        }
        const int64_t row = row0 + g; /* (token, head) */
        if (direct) {
            const float v = MODE == MODE_FLASH ? ob * (1.0f / Lb) : ob;
            store_act(a.out.p, a.out.at(t) + (int64_t)(h0 + g) * a.Dv + d, a.out.bf16, v);
            continue;
        }
        if (HAS_V) a.part_o[(row * a.nsplit + split) * a.Dv + d] = ob;
        if (MODE != MODE_ROUND && d == 0) {
            a.part_ml[(row * a.nsplit + split) * 2] = Mb;
            a.part_ml[(row * a.nsplit + split) * 2 + 1] = Lb;
        }
    }
}

/* Block (token, head): combines the splits. FLASH: Σ_s o_s e^(m_s − M) / Σ_s l_s e^(m_s − M);
 * ROUND: Σ_s o_s (the probabilities were already final). RD_PARTS groups of
 * threads each add every RD_PARTS-th split of an element (many loads in
 * flight), the weights e^(m_s − M) computed once per split, RD_CHUNK at a time. */
enum { RD_PARTS = 4, RD_CHUNK = 256 };
static __global__ void attn_reduce_kernel(split_args a, bool round_mode) {
    pio_wait_prior();
    __shared__ float sw[RD_CHUNK];
    __shared__ float part[RD_PARTS][256];
    const int64_t row = blockIdx.x; /* t * H + h */
    const int64_t t = row / a.H, h = row % a.H;
    const float *ml = a.part_ml + row * a.nsplit * 2;
    const float *po = a.part_o + row * a.nsplit * a.Dv;
    const int lane = threadIdx.x & 31;
    float M = -INFINITY, Ls = 0.0f; /* every warp the same */
    if (!round_mode) {
        for (int s = lane; s < a.nsplit; s += 32) M = fmaxf(M, ml[2 * s]);
        M = warp_max(M);
        for (int s = lane; s < a.nsplit; s += 32) Ls += ml[2 * s + 1] * weight_of(ml[2 * s], M);
        Ls = warp_sum(Ls);
    }
    const int dr = (a.Dv + 31) / 32 * 32; /* blockDim.x = RD_PARTS · dr */
    const int d = threadIdx.x % dr, pi = threadIdx.x / dr;
    float acc = 0.0f;
    for (int s0 = 0; s0 < a.nsplit; s0 += RD_CHUNK) {
        const int ns = min((int)RD_CHUNK, a.nsplit - s0);
        __syncthreads();
        for (int i = threadIdx.x; i < ns; i += blockDim.x)
            sw[i] = round_mode ? 1.0f : weight_of(ml[2 * (s0 + i)], M);
        __syncthreads();
        if (d < a.Dv)
#pragma unroll 8
            for (int i = pi; i < ns; i += RD_PARTS) acc += po[(int64_t)(s0 + i) * a.Dv + d] * sw[i];
    }
    part[pi][d] = acc;
    __syncthreads();
    if (pi == 0 && d < a.Dv) {
        float sum = 0.0f;
#pragma unroll
        for (int p = 0; p < RD_PARTS; p++) sum += part[p][d];
        store_act(a.out.p, a.out.at(t) + h * a.Dv + d, a.out.bf16, round_mode ? sum : sum * (1.0f / Ls));
    }
}

typedef void (*split_kernel_fn)(split_args);

/* Whether a split kernel (DPL 2/4/8 × mode) may use more than 48 KiB of
 * dynamic shared memory on a device: raised once, not at every launch. */
enum { SP_DEVICES = 16 };
static std::atomic<bool> sp_smem_raised[3][3][2][SP_DEVICES];

template <int DPL, bool PAGED>
static split_kernel_fn split_kernel(int mode) {
    switch (mode) {
    case MODE_FLASH: return attn_split_kernel<DPL, MODE_FLASH, PAGED>;
    case MODE_STATS: return attn_split_kernel<DPL, MODE_STATS, PAGED>;
    default: return attn_split_kernel<DPL, MODE_ROUND, PAGED>;
    }
}

template <bool PAGED>
static split_kernel_fn split_kernel_for(int dpl, int mode) {
    return dpl == 2 ? split_kernel<2, PAGED>(mode) : dpl == 4 ? split_kernel<4, PAGED>(mode)
                                                              : split_kernel<8, PAGED>(mode);
}

static bool aligned(const void *p, size_t n) { return ((uintptr_t)p % n) == 0; }

/* The tiles' layout for `mode` (split_args' last fields), the warps per block
 * and the dynamic shared memory in bytes. Two stages (the next tile copied
 * while this one is used) where four warps of them fit the budget, else one;
 * fewer warps only for rows too large for four. */
static size_t plan_tiles(split_args &a, int mode, int dpl, int *warps) {
    const bool use_k = mode != MODE_ROUND || !a.sc, use_v = mode != MODE_STATS;
    const bool use_s = mode == MODE_ROUND && a.sc;
    const int epk = a.k_bf16 ? 8 : 4, epv = a.v_bf16 ? 8 : 4; /* elements per 16 bytes */
    a.k_chunks = (a.Dk + epk - 1) / epk;
    a.k_pitch = (a.k_chunks | 1) * 16; /* odd: lane r's row read by chunks is free of bank conflicts */
    a.q_bytes = use_k ? SP_GB * a.k_chunks * epk * (int)sizeof(float) : 0;
    const int va = std::max(epv, dpl);
    a.v_elems = (a.Dv + va - 1) / va * va;
    a.v_chunks = a.v_elems / epv;
    int off = 0;
    a.k_off = off;
    if (use_k) off += SP_KT * a.k_pitch;
    a.v_off = off;
    if (use_v) off += SP_KT * a.v_chunks * 16;
    a.s_off = off;
    if (use_s) off += SP_GB * SP_KT * (int)sizeof(float);
    a.stage_bytes = off;
    a.nst = (size_t)SP_WARPS * 2 * off <= SP_TILE_BUDGET ? 2 : 1;
    const size_t per_warp = (size_t)a.nst * off;
    const int nw = (int)std::min<size_t>(SP_WARPS, std::max<size_t>(1, SP_TILE_BUDGET / per_warp));
    *warps = nw;
    size_t bytes = a.q_bytes + nw * per_warp;
    if (use_v) bytes = std::max(bytes, (size_t)nw * SP_GB * 32 * dpl * sizeof(float));
    return bytes;
}

static pio_status run_split(pio_cuda_ctx *ctx, split_args a, int64_t n, int64_t ctx_len,
                            bool round_bf16, pio_error *err) {
    const int dpl = a.Dv <= 64 ? 2 : a.Dv <= 128 ? 4 : 8; /* V elements per lane */
    a.hb_count = (a.G + SP_GB - 1) / SP_GB;
    a.k_vec = a.Dk % (a.k_bf16 ? 8 : 4) == 0 && aligned(a.k, 16);
    a.v_vec = a.Dv % (a.v_bf16 ? 8 : 4) == 0 && aligned(a.v, 16);
    if ((int64_t)a.Hkv * a.hb_count > 65535)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "attention: too many kv heads (%d)", a.Hkv);
    /* Splits: enough blocks for about two waves, each split >= 64 keys. */
    int nsplit = ctx->attn_splits;
    if (nsplit <= 0) {
        const int64_t base = n * a.Hkv * a.hb_count, want = 2 * (int64_t)ctx->info.sm_count;
        const int64_t by_len = std::max<int64_t>(1, (ctx_len + 63) / 64);
        int64_t s = (want + base - 1) / base;
        nsplit = (int)std::min<int64_t>(std::min<int64_t>(s, by_len), PIO_CUDA_MAX_SPLITS);
        if (nsplit < 1) nsplit = 1;
    }
    a.nsplit = nsplit;
    /* Scratch: per (token, head, split) the max and sum (FLASH, STATS), the
     * partial output (when the splits must be combined), and in bf16 mode
     * pass 1's scores for pass 2 (per (token, head) the whole context, so the
     * size does not depend on the positions; beyond 256 MiB pass 2 computes
     * them again). */
    const size_t ml_floats = (size_t)n * a.H * nsplit * 2;
    const size_t o_floats = nsplit > 1 ? (size_t)n * a.H * nsplit * a.Dv : 0;
    size_t sc_floats = round_bf16 ? (size_t)n * a.H * (size_t)ctx_len : 0;
    if (sc_floats * sizeof(float) > ((size_t)256 << 20)) sc_floats = 0;
    if (nsplit > 1 || round_bf16) {
        float *ws = (float *)pio_cuda_workspace(ctx, (ml_floats + o_floats + sc_floats) * sizeof(float), err);
        if (!ws) return err ? err->status : PIO_ERR_OOM;
        a.part_ml = ws;
        a.part_o = nsplit > 1 ? ws + ml_floats : NULL;
        a.sc = sc_floats ? ws + ml_floats + o_floats : NULL;
    }
    const dim3 grid((unsigned)n, (unsigned)(a.Hkv * a.hb_count), (unsigned)nsplit);
    auto launch = [&](int mode, const char *what) -> pio_status {
        split_args b = a;
        int nw = SP_WARPS;
        const size_t smem = plan_tiles(b, mode, dpl, &nw);
        if (smem + 8192 > ctx->info.smem_optin) /* 8 KiB: the static arrays, with room */
            return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                                 "attention: %zu bytes of shared memory per block, the device has %zu",
                                 smem, ctx->info.smem_optin);
        const bool paged = a.table != NULL;
        const split_kernel_fn k = paged ? split_kernel_for<true>(dpl, mode) : split_kernel_for<false>(dpl, mode);
        /* Above 48 KiB a kernel must be allowed more (all the device has: the
         * limit costs nothing); not while capturing, where the uncaptured run
         * before the capture has done it. */
        if (smem > 48 * 1024) {
            std::atomic<bool> *raised = ctx->device >= 0 && ctx->device < SP_DEVICES
                                            ? &sp_smem_raised[dpl / 4][mode][paged][ctx->device]
                                            : NULL;
            if (!raised || !raised->load()) {
                if (ctx->capturing)
                    return pio_error_set(err, PIO_ERR_INVALID,
                                         "attention: run the step once before capturing it "
                                         "(the kernel's shared-memory limit)");
                CU_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)(ctx->info.smem_optin - 8192)),
                       "attention (shared memory limit)");
                if (raised) raised->store(true);
            }
        }
        pio_launch(ctx, k, grid, dim3((unsigned)(32 * nw)), smem, b);
        return pio_cuda_launched(err, what);
    };
    pio_status st;
    if (round_bf16) { /* pass 1 (max and sum per split, the scores), then pass 2 with the final ones */
        if ((st = launch(MODE_STATS, "attention (stats)"))) return st;
        if ((st = launch(MODE_ROUND, "attention (split)"))) return st;
    } else {
        if ((st = launch(MODE_FLASH, "attention (split)"))) return st;
    }
    if (nsplit > 1) {
        pio_launch(ctx, attn_reduce_kernel, dim3((unsigned)(n * a.H)),
                   dim3((unsigned)(RD_PARTS * ((a.Dv + 31) / 32 * 32))), 0, a, round_bf16);
        if ((st = pio_cuda_launched(err, "attention (reduce)"))) return st;
    }
    return PIO_OK;
}

/* =========================== tensor-core path =========================== */

enum { MMA_ROWS = 64, MMA_KEYS = 64, MMA_THREADS = 128, MMA_PAD = 8 };

static __device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16 bytes global → shared, or 16 zero bytes when !pred (src not read). */
static __device__ __forceinline__ void cp_async16(void *dst, const void *src, bool pred) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(pred ? 16 : 0));
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

static __device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

/* c += a (16×16 bf16, row) · b (16×8 bf16, col), f32 accumulators. */
static __device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Two f32 as bf16x2: lo in the low half (the lower column). */
static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

struct mma_args {
    pio_rows q;                 /* [n, H * D] f32|bf16 */
    const uint16_t *k, *v;      /* bf16 caches [slots, ctx, Hkv, D] */
    int64_t ctx_len;
    int H, Hkv, G;
    const int32_t *pos;
    const int32_t *tiles;       /* [n_tiles][4]: first token, tokens, seq, kv_len */
    float scale;
    pio_rows out;               /* [n, H * D] */
    const int32_t *table;       /* paged (as split_args), else NULL */
    int table_cols, block;
};

template <int D>
static constexpr size_t mma_smem_bytes() {
    return (size_t)(MMA_ROWS + 4 * MMA_KEYS) * (D + MMA_PAD) * sizeof(uint16_t);
}

/* ROUND: bf16 mode, two passes; else one online-softmax pass. */
template <int D, bool ROUND, bool PAGED> /* PAGED: as the split kernel's */
static __global__ void __launch_bounds__(MMA_THREADS)
    attn_mma_kernel(mma_args a) {
    constexpr int LD = D + MMA_PAD; /* shared row length in elements */
    constexpr int KSTEPS = D / 16, DBLK = D / 8, NBLK = MMA_KEYS / 8;
    extern __shared__ __align__(16) uint16_t sm[];
    uint16_t *Qs = sm;                           /* [64][LD] */
    uint16_t *Ks = Qs + MMA_ROWS * LD;           /* [2][64][LD] */
    uint16_t *Vs = Ks + 2 * MMA_KEYS * LD;       /* [2][64][LD] */

    const int *tile = a.tiles + 4 * blockIdx.x;
    const int t0 = tile[0], ntok = tile[1], seq = tile[2], kv_len = tile[3];
    const int kvh = blockIdx.y, G = a.G, rows = ntok * G;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

    /* Q rows: row r is token t0 + r / G, head kvh·G + r % G; rounded to bf16. */
    for (int e = tid; e < MMA_ROWS * D; e += MMA_THREADS) {
        const int r = e / D, d = e % D;
        float v = 0.0f;
        if (r < rows)
            v = load_act(a.q.p, a.q.at(t0 + r / G) + (int64_t)(kvh * G + r % G) * D + d, a.q.bf16);
        Qs[r * LD + d] = f32_to_bf16_bits(v);
    }

    /* K/V tile loader: 64 rows × D/8 chunks of 16 bytes, zeros past kv_len. */
    const int64_t row_elems = (int64_t)a.Hkv * D;
    const int64_t base = ((int64_t)seq * a.ctx_len) * row_elems + (int64_t)kvh * D;
    const int32_t *tab = PAGED ? a.table + (int64_t)seq * a.table_cols : NULL;
    auto load_tile = [&](uint16_t *dst, const uint16_t *src, int kb) {
        constexpr int CH = D / 8;
        for (int c = tid; c < MMA_KEYS * CH; c += MMA_THREADS) {
            const int r = c / CH, ch = c % CH, j = kb * MMA_KEYS + r;
            const bool ok = j < kv_len;
            /* Past kv_len nothing is read (zeros): any address in the cache will do. */
            const int64_t at = !PAGED ? base + (int64_t)(ok ? j : 0) * row_elems
                               : ok   ? paged_row(tab, a.block, j) * row_elems + (int64_t)kvh * D
                                      : 0;
            cp_async16(dst + r * LD + ch * 8, src + at + ch * 8, ok);
        }
    };

    __syncthreads();
    /* This warp's Q fragments, kept in registers: 16 rows × D. */
    uint32_t qf[KSTEPS][4];
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ks++) {
        const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, c = ks * 16 + (lane >> 4) * 8;
        ldmatrix_x4(qf[ks], Qs + r * LD + c);
    }

    /* The two rows this thread holds in the accumulators, and their positions. */
    const int ra = warp * 16 + (lane >> 2), rb = ra + 8;
    const int pa = ra < rows ? a.pos[t0 + ra / G] : -1, pb = rb < rows ? a.pos[t0 + rb / G] : -1;
    const int nkb = (kv_len + MMA_KEYS - 1) / MMA_KEYS;

    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;
    float o[DBLK][4];
#pragma unroll
    for (int i = 0; i < DBLK; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;

    /* S = Q Kᵀ for key block kb (in stage st), scaled, rounded, masked. */
    auto scores = [&](float (&s)[NBLK][4], const uint16_t *Kst, int kb) {
#pragma unroll
        for (int nb = 0; nb < NBLK; nb++) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ks++)
#pragma unroll
            for (int nb = 0; nb < NBLK; nb += 2) {
                uint32_t b[4];
                const int key = nb * 8 + (lane & 7) + (lane >> 4) * 8;
                const int c = ks * 16 + ((lane >> 3) & 1) * 8;
                ldmatrix_x4(b, Kst + key * LD + c);
                mma_bf16(s[nb], qf[ks], b[0], b[1]);
                mma_bf16(s[nb + 1], qf[ks], b[2], b[3]);
            }
#pragma unroll
        for (int nb = 0; nb < NBLK; nb++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int j = kb * MMA_KEYS + nb * 8 + (lane & 3) * 2 + (i & 1);
                const int p = i < 2 ? pa : pb;
                float v = ROUND ? round_bf16(round_bf16(s[nb][i]) * a.scale) : s[nb][i] * a.scale;
                s[nb][i] = j <= p ? v : -INFINITY; /* p < kv_len, so j <= p is in range */
            }
    };

    /* Row max over the tile, shared by the 4 lanes that hold a row. */
    auto row_max = [&](const float (&s)[NBLK][4], float &ma, float &mb) {
        ma = -INFINITY;
        mb = -INFINITY;
#pragma unroll
        for (int nb = 0; nb < NBLK; nb++) {
            ma = fmaxf(ma, fmaxf(s[nb][0], s[nb][1]));
            mb = fmaxf(mb, fmaxf(s[nb][2], s[nb][3]));
        }
#pragma unroll
        for (int off = 1; off <= 2; off <<= 1) {
            ma = fmaxf(ma, __shfl_xor_sync(0xffffffffu, ma, off));
            mb = fmaxf(mb, __shfl_xor_sync(0xffffffffu, mb, off));
        }
    };

    /* O += P V for key block kb (stage st), P given per accumulator element. */
    auto pv = [&](const float (&p)[NBLK][4], const uint16_t *Vst) {
#pragma unroll
        for (int kk = 0; kk < MMA_KEYS / 16; kk++) {
            uint32_t af[4];
            af[0] = pack_bf16(p[2 * kk][0], p[2 * kk][1]);
            af[1] = pack_bf16(p[2 * kk][2], p[2 * kk][3]);
            af[2] = pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]);
            af[3] = pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
            for (int nd = 0; nd < DBLK; nd += 2) {
                uint32_t b[4];
                const int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                const int c = nd * 8 + (lane >> 4) * 8;
                ldmatrix_x4_trans(b, Vst + key * LD + c);
                mma_bf16(o[nd], af, b[0], b[1]);
                mma_bf16(o[nd + 1], af, b[2], b[3]);
            }
        }
    };

    if (ROUND) { /* pass 1: each row's max and Σ e^(s − max) */
        load_tile(Ks, a.k, 0);
        cp_async_commit();
        for (int kb = 0; kb < nkb; kb++) {
            if (kb + 1 < nkb) load_tile(Ks + ((kb + 1) & 1) * MMA_KEYS * LD, a.k, kb + 1);
            cp_async_commit();
            cp_async_wait<1>();
            __syncthreads();
            float s[NBLK][4], ta, tb;
            scores(s, Ks + (kb & 1) * MMA_KEYS * LD, kb);
            row_max(s, ta, tb);
            const float na = fmaxf(m_a, ta), nb_ = fmaxf(m_b, tb);
            const float ua = na == -INFINITY ? 0.0f : na, ub = nb_ == -INFINITY ? 0.0f : nb_;
            float sa = 0.0f, sb = 0.0f;
#pragma unroll
            for (int nb = 0; nb < NBLK; nb++) {
                sa += expf(s[nb][0] - ua) + expf(s[nb][1] - ua);
                sb += expf(s[nb][2] - ub) + expf(s[nb][3] - ub);
            }
            l_a = l_a * expf(m_a - ua) + sa;
            l_b = l_b * expf(m_b - ub) + sb;
            m_a = na;
            m_b = nb_;
            __syncthreads(); /* the stage is reloaded next iteration */
        }
#pragma unroll
        for (int off = 1; off <= 2; off <<= 1) {
            l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
            l_b += __shfl_xor_sync(0xffffffffu, l_b, off);
        }
    }

    /* Pass 2 (or the only pass): S again, P, O += P V. */
    load_tile(Ks, a.k, 0);
    load_tile(Vs, a.v, 0);
    cp_async_commit();
    const float inv_a = l_a > 0.0f ? 1.0f / l_a : 0.0f, inv_b = l_b > 0.0f ? 1.0f / l_b : 0.0f;
    for (int kb = 0; kb < nkb; kb++) {
        if (kb + 1 < nkb) {
            load_tile(Ks + ((kb + 1) & 1) * MMA_KEYS * LD, a.k, kb + 1);
            load_tile(Vs + ((kb + 1) & 1) * MMA_KEYS * LD, a.v, kb + 1);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        float s[NBLK][4];
        scores(s, Ks + (kb & 1) * MMA_KEYS * LD, kb);
        if (ROUND) {
#pragma unroll
            for (int nb = 0; nb < NBLK; nb++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const float mm = i < 2 ? m_a : m_b, inv = i < 2 ? inv_a : inv_b;
                    s[nb][i] = s[nb][i] == -INFINITY ? 0.0f : round_bf16(expf(s[nb][i] - mm) * inv);
                }
        } else {
            float ta, tb;
            row_max(s, ta, tb);
            const float na = fmaxf(m_a, ta), nb_ = fmaxf(m_b, tb);
            const float ua = na == -INFINITY ? 0.0f : na, ub = nb_ == -INFINITY ? 0.0f : nb_;
            const float ca = expf(m_a - ua), cb = expf(m_b - ub);
            float sa = 0.0f, sb = 0.0f;
#pragma unroll
            for (int nb = 0; nb < NBLK; nb++) {
                s[nb][0] = expf(s[nb][0] - ua);
                s[nb][1] = expf(s[nb][1] - ua);
                s[nb][2] = expf(s[nb][2] - ub);
                s[nb][3] = expf(s[nb][3] - ub);
                sa += s[nb][0] + s[nb][1];
                sb += s[nb][2] + s[nb][3];
            }
            l_a = l_a * ca + sa; /* per lane: the 4 lanes' sums are added at the end */
            l_b = l_b * cb + sb;
            m_a = na;
            m_b = nb_;
#pragma unroll
            for (int nd = 0; nd < DBLK; nd++) {
                o[nd][0] *= ca;
                o[nd][1] *= ca;
                o[nd][2] *= cb;
                o[nd][3] *= cb;
            }
        }
        pv(s, Vs + (kb & 1) * MMA_KEYS * LD);
        __syncthreads();
    }

    float fa = 1.0f, fb = 1.0f;
    if (!ROUND) {
#pragma unroll
        for (int off = 1; off <= 2; off <<= 1) {
            l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
            l_b += __shfl_xor_sync(0xffffffffu, l_b, off);
        }
        fa = l_a > 0.0f ? 1.0f / l_a : 0.0f;
        fb = l_b > 0.0f ? 1.0f / l_b : 0.0f;
    }
#pragma unroll
    for (int nd = 0; nd < DBLK; nd++) {
        const int d = nd * 8 + (lane & 3) * 2;
        if (ra < rows) {
            const int64_t at = a.out.at(t0 + ra / G) + (int64_t)(kvh * G + ra % G) * D + d;
            store_act(a.out.p, at, a.out.bf16, o[nd][0] * fa);
            store_act(a.out.p, at + 1, a.out.bf16, o[nd][1] * fa);
        }
        if (rb < rows) {
            const int64_t at = a.out.at(t0 + rb / G) + (int64_t)(kvh * G + rb % G) * D + d;
            store_act(a.out.p, at, a.out.bf16, o[nd][2] * fb);
            store_act(a.out.p, at + 1, a.out.bf16, o[nd][3] * fb);
        }
    }
}

template <int D, bool ROUND, bool PAGED>
static pio_status launch_mma_p(pio_cuda_ctx *ctx, const mma_args &a, int n_tiles, pio_error *err) {
    constexpr size_t smem = mma_smem_bytes<D>();
    CU_TRY(cudaFuncSetAttribute(attn_mma_kernel<D, ROUND, PAGED>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
           "attention (shared memory limit)");
    attn_mma_kernel<D, ROUND, PAGED>
        <<<dim3((unsigned)n_tiles, (unsigned)a.Hkv), MMA_THREADS, smem, ctx->stream>>>(a);
    return pio_cuda_launched(err, "attention (tensor cores)");
}

template <int D, bool ROUND>
static pio_status launch_mma_t(pio_cuda_ctx *ctx, const mma_args &a, int n_tiles, pio_error *err) {
    return a.table ? launch_mma_p<D, ROUND, true>(ctx, a, n_tiles, err)
                   : launch_mma_p<D, ROUND, false>(ctx, a, n_tiles, err);
}

/* Whether the tensor-core kernel can run this problem. */
static bool mma_fits(const pio_cuda_ctx *ctx, const pio_tensor *q, const pio_tensor *ck,
                     const pio_tensor *cv, int G, bool round_bf16) {
    const int64_t D = q->shape[2];
    if (ck->dtype != PIO_BF16 || cv->dtype != PIO_BF16 || cv->shape[3] != D) return false;
    if (D != 64 && D != 128) return false;
    if (G < 1 || MMA_ROWS % G != 0) return false;
    if (!round_bf16 && !ctx->attn_bf16_q) return false;
    if (!aligned(pio_tensor_data(ck), 16) || !aligned(pio_tensor_data(cv), 16)) return false;
    const size_t need = D == 64 ? mma_smem_bytes<64>() : mma_smem_bytes<128>();
    return ctx->info.smem_optin >= need;
}

/* ================================ entry ================================= */

pio_status pio_cuda_attention(pio_cuda_ctx *ctx, const pio_tensor *q, const pio_tensor *cache_k,
                              const pio_tensor *cache_v, const pio_cuda_batch *b, float scale,
                              pio_tensor *out, bool round_bf16, pio_error *err) {
    return pio_cuda_attention_paged(ctx, q, cache_k, cache_v, b, NULL, scale, out, round_bf16, err);
}

pio_status pio_cuda_attention_paged(pio_cuda_ctx *ctx, const pio_tensor *q,
                                    const pio_tensor *cache_k, const pio_tensor *cache_v,
                                    const pio_cuda_batch *b, const pio_cuda_block_table *table,
                                    float scale, pio_tensor *out, bool round_bf16,
                                    pio_error *err) {
    const char *op = "attention";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check(op, "q", q, DT_ACT, true, err) ||
        !pio_cuda_check(op, "cache_k", cache_k, DT_ACT, false, err) ||
        !pio_cuda_check(op, "cache_v", cache_v, DT_ACT, false, err) ||
        !pio_cuda_check(op, "out", out, DT_ACT, true, err))
        return PIO_ERR_INVALID;
    if (q->ndim != 3 || cache_k->ndim != 4 || q->shape[2] != cache_k->shape[3] ||
        cache_k->shape[2] <= 0 || q->shape[1] % cache_k->shape[2] != 0)
        return pio_cuda_shape_error(
            err, op, "q", q, "cache_k", cache_k,
            "do not fit q[n, heads, head_dim] and cache_k[slots, ctx, kv_heads, head_dim] "
            "with heads a multiple of kv_heads");
    if (cache_v->ndim != 4 || cache_v->shape[0] != cache_k->shape[0] ||
        cache_v->shape[1] != cache_k->shape[1] || cache_v->shape[2] != cache_k->shape[2])
        return pio_cuda_shape_error(err, op, "cache_k", cache_k, "cache_v", cache_v,
                                    "must agree on slots, ctx and kv_heads");
    if (out->ndim != 3 || out->shape[0] != q->shape[0] || out->shape[1] != q->shape[1] ||
        out->shape[2] != cache_v->shape[3])
        return pio_cuda_shape_error(err, op, "q", q, "out", out,
                                    "do not fit out[n, heads, v_head_dim] for this q and cache_v");
    if (pio_cuda_overlap(q, out))
        return pio_cuda_shape_error(err, op, "q", q, "out", out, "overlap in memory");
    if (q->shape[2] > 256 || cache_v->shape[3] > 256)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: head_dim above 256 on CUDA", op);
    if (!b) return pio_error_set(err, PIO_ERR_INVALID, "%s: the batch is missing", op);
    if (q->shape[0] != b->n) {
        char sq[PIO_SHAPE_BUF];
        return pio_error_set(err, PIO_ERR_INVALID, "%s: q %s has %lld tokens, the batch %d", op,
                             pio_shape_str(q, sq, sizeof sq), (long long)q->shape[0], (int)b->n);
    }
    /* Contiguous: slots and positions within the cache. Paged: within the table,
     * and every block a token reads present. */
    if ((st = table ? pio_cuda_batch_check_table(op, b, table, cache_k, true, err)
                    : pio_cuda_batch_check_cache(op, b, cache_k, err)))
        return st;
    /* Keys a slot may hold: what the split plan and the score scratch are made for. */
    const int64_t ctx_len = table ? table->max_pos : cache_k->shape[1];
    const int64_t n = b->n;
    if (n == 0 || q->shape[1] == 0) return PIO_OK;
    if (n > 2147483647LL)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: too many tokens", op);

    const int H = (int)q->shape[1], Hkv = (int)cache_k->shape[2], G = H / Hkv;
    bool use_mma = false;
    if (ctx->attn_path != PIO_CUDA_ATTN_SPLIT && !ctx->capturing &&
        mma_fits(ctx, q, cache_k, cache_v, G, round_bf16)) {
        const int tpt = MMA_ROWS / G;
        if (ctx->attn_path == PIO_CUDA_ATTN_MMA || n >= tpt) {
            if ((st = pio_cuda_batch_plan(ctx, b, tpt, err))) return st;
            /* Worth it when tiles are at least half full (prompts, not decode). */
            use_mma = ctx->attn_path == PIO_CUDA_ATTN_MMA || 2 * n >= (int64_t)b->n_tiles * tpt;
        }
    }
    if (use_mma) {
        if (b->n_tiles > 2147483647 || Hkv > 65535)
            return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: grid too large", op);
        mma_args a;
        a.q = pio_cuda_rows(q);
        a.k = (const uint16_t *)pio_tensor_data(cache_k);
        a.v = (const uint16_t *)pio_tensor_data(cache_v);
        a.ctx_len = cache_k->shape[1];
        a.H = H;
        a.Hkv = Hkv;
        a.G = G;
        a.pos = b->d_pos;
        a.tiles = b->d_tiles;
        a.scale = scale;
        a.out = pio_cuda_rows(out);
        a.table = table ? table->d_table : NULL;
        a.table_cols = table ? table->cols : 0;
        a.block = table ? table->block : 0;
        const int64_t D = q->shape[2];
        if (D == 64)
            return round_bf16 ? launch_mma_t<64, true>(ctx, a, b->n_tiles, err)
                              : launch_mma_t<64, false>(ctx, a, b->n_tiles, err);
        return round_bf16 ? launch_mma_t<128, true>(ctx, a, b->n_tiles, err)
                          : launch_mma_t<128, false>(ctx, a, b->n_tiles, err);
    }

    split_args a = {};
    a.q = pio_cuda_rows(q);
    a.H = H;
    a.Hkv = Hkv;
    a.G = G;
    a.Dk = (int)q->shape[2];
    a.Dv = (int)cache_v->shape[3];
    a.k = pio_tensor_data(cache_k);
    a.v = pio_tensor_data(cache_v);
    a.k_bf16 = cache_k->dtype == PIO_BF16;
    a.v_bf16 = cache_v->dtype == PIO_BF16;
    a.ctx_len = ctx_len;
    a.seq = b->d_seq;
    a.pos = b->d_pos;
    a.scale = scale;
    a.rnd = round_bf16;
    a.out = pio_cuda_rows(out);
    a.table = table ? table->d_table : NULL;
    a.table_cols = table ? table->cols : 0;
    a.block = table ? table->block : 0;
    /* Splits are planned for the whole context, not this batch's positions:
     * a step captured in a graph is replayed at any position, and a direct
     * run then does the same arithmetic as the replay (and sizes the same
     * scratch, which capture cannot grow). Empty splits cost a few blocks. */
    return run_split(ctx, a, n, ctx_len, round_bf16, err);
}
