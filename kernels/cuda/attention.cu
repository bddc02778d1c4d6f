/* Causal GQA attention over the KV cache: a split-K kernel for decode (and
 * for the f32 reference mode), and a tensor-core tile kernel for prompts.
 *
 * Split path. Block (token t, kv head g, head batch, split s): up to 4 query
 * heads that share kv head g, keys [s·chunk, (s+1)·chunk) of 0..pos[t].
 * Each warp takes 4 keys at a time (four rows in flight), a lane owns
 * head_dim/32 consecutive elements of q, k, v and o, and a score is one warp
 * reduction. The chunk is computed on the device from pos[t], so a graph
 * captured with a fixed number of splits is right for any position. Modes:
 *   FLASH  online softmax: partial (max, sum, Σ e^(s−max) v) per split, then
 *          attn_reduce_kernel combines the splits (round_bf16 = false);
 *   STATS  pass 1 of bf16 mode: per split max and Σ e^(s − max);
 *   ROUND  pass 2 of bf16 mode: every block first combines all splits' stats
 *          into the row's final max M and sum L, then p = bf16(e^(s−M) / L),
 *          exactly as transformers' eager attention rounds its probabilities,
 *          and Σ p v per split; attn_reduce_kernel adds the splits.
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
 */
#include <algorithm>
#include <math.h>

#include "cuda_internal.cuh"

/* ============================== split path ============================== */

enum { SP_WARPS = 4, SP_THREADS = 32 * SP_WARPS, SP_GB = 4, SP_KT = 4 };
enum { MODE_FLASH = 0, MODE_STATS = 1, MODE_ROUND = 2 };

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
    pio_rows out;               /* [n, H * Dv]: written directly when nsplit == 1 */
};

/* Elements [lane·DPL, lane·DPL + DPL) of a row at element offset `off`,
 * zeros past D or when !valid. vec: D == 32·DPL and rows aligned, so one load. */
template <int DPL>
static __device__ __forceinline__ void load_lane(const void *base, int64_t off, bool bf16, bool vec,
                                                 int D, bool valid, float (&r)[DPL]) {
    const int lane = threadIdx.x & 31;
    if (valid && vec) {
        if (bf16) {
            const uint16_t *p = (const uint16_t *)base + off + lane * DPL;
            uint32_t w[DPL / 2];
            if constexpr (DPL == 2) {
                w[0] = *(const uint32_t *)p;
            } else if constexpr (DPL == 4) {
                uint2 u = *(const uint2 *)p;
                w[0] = u.x;
                w[1] = u.y;
            } else {
                static_assert(DPL == 8, "DPL is 2, 4 or 8");
                uint4 u = *(const uint4 *)p;
                w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w;
            }
#pragma unroll
            for (int i = 0; i < DPL / 2; i++) {
                r[2 * i] = __uint_as_float(w[i] << 16);
                r[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
            }
        } else {
            const float *p = (const float *)base + off + lane * DPL;
            if constexpr (DPL == 2) {
                float2 u = *(const float2 *)p;
                r[0] = u.x;
                r[1] = u.y;
            } else {
#pragma unroll
                for (int i = 0; i < DPL / 4; i++) {
                    float4 u = ((const float4 *)p)[i];
                    r[4 * i] = u.x, r[4 * i + 1] = u.y, r[4 * i + 2] = u.z, r[4 * i + 3] = u.w;
                }
            }
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < DPL; i++) {
        const int d = lane * DPL + i;
        r[i] = valid && d < D ? load_act(base, off + d, bf16) : 0.0f;
    }
}

static __device__ __forceinline__ float weight_of(float m, float M) {
    return m == -INFINITY ? 0.0f : expf(m - M);
}

template <int DPL, int MODE>
static __global__ void __launch_bounds__(SP_THREADS) attn_split_kernel(split_args a) {
    pio_wait_prior();
    __shared__ float sm_m[SP_WARPS][SP_GB], sm_l[SP_WARPS][SP_GB];
    __shared__ float sm_o[MODE == MODE_STATS ? 1 : SP_WARPS][SP_GB][32 * DPL];
    const int t = blockIdx.x, kvh = blockIdx.y / a.hb_count, hb = blockIdx.y % a.hb_count;
    const int split = blockIdx.z, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h0 = kvh * a.G + hb * SP_GB, nh = min(SP_GB, a.G - hb * SP_GB);
    const int L = a.pos[t] + 1, chunk = (L + a.nsplit - 1) / a.nsplit;
    const int js = min(L, split * chunk), je = min(L, js + chunk);
    const int64_t seq_row = (int64_t)a.seq[t] * a.ctx_len; /* key 0 of this sequence, in rows */

    float qv[SP_GB][DPL];
#pragma unroll
    for (int g = 0; g < SP_GB; g++)
        load_lane<DPL>(a.q.p, a.q.at(t) + (int64_t)(h0 + g) * a.Dk, a.q.bf16, false, a.Dk, g < nh,
                       qv[g]);

    /* ROUND: the row's final max and 1/sum from pass 1's splits. */
    float Mg[SP_GB], invL[SP_GB];
    if (MODE == MODE_ROUND) {
#pragma unroll
        for (int g = 0; g < SP_GB; g++) {
            Mg[g] = 0.0f;
            invL[g] = 0.0f;
            if (g >= nh) continue;
            const float *ml = a.part_ml + ((int64_t)t * a.H + h0 + g) * a.nsplit * 2;
            float M = -INFINITY, Ls = 0.0f;
            for (int s = 0; s < a.nsplit; s++) M = fmaxf(M, ml[2 * s]);
            for (int s = 0; s < a.nsplit; s++) Ls += ml[2 * s + 1] * weight_of(ml[2 * s], M);
            Mg[g] = M;
            invL[g] = 1.0f / Ls;
        }
    }

    float m[SP_GB], l[SP_GB], o[SP_GB][DPL];
#pragma unroll
    for (int g = 0; g < SP_GB; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) o[g][i] = 0.0f;
    }

    const int64_t krow = (int64_t)a.Hkv * a.Dk, vrow = (int64_t)a.Hkv * a.Dv;
    for (int j0 = js + warp * SP_KT; j0 < je; j0 += SP_WARPS * SP_KT) {
        float kr[SP_KT][DPL];
#pragma unroll
        for (int kt = 0; kt < SP_KT; kt++)
            load_lane<DPL>(a.k, (seq_row + j0 + kt) * krow + (int64_t)kvh * a.Dk, a.k_bf16, a.k_vec,
                           a.Dk, j0 + kt < je, kr[kt]);
        float s[SP_KT][SP_GB];
#pragma unroll
        for (int kt = 0; kt < SP_KT; kt++)
#pragma unroll
            for (int g = 0; g < SP_GB; g++) {
                float d = 0.0f;
#pragma unroll
                for (int i = 0; i < DPL; i++) d = fmaf(qv[g][i], kr[kt][i], d);
                d = warp_sum(d);
                d = a.rnd ? round_bf16(round_bf16(d) * a.scale) : d * a.scale;
                s[kt][g] = j0 + kt < je ? d : -INFINITY;
            }
        if constexpr (MODE == MODE_STATS) {
#pragma unroll
            for (int g = 0; g < SP_GB; g++) {
                float tmax = s[0][g]; /* key j0 is always valid */
#pragma unroll
                for (int kt = 1; kt < SP_KT; kt++) tmax = fmaxf(tmax, s[kt][g]);
                const float mn = fmaxf(m[g], tmax);
                float sum = 0.0f;
#pragma unroll
                for (int kt = 0; kt < SP_KT; kt++) sum += expf(s[kt][g] - mn);
                l[g] = l[g] * weight_of(m[g], mn) + sum;
                m[g] = mn;
            }
        } else {
            float vr[SP_KT][DPL];
#pragma unroll
            for (int kt = 0; kt < SP_KT; kt++)
                load_lane<DPL>(a.v, (seq_row + j0 + kt) * vrow + (int64_t)kvh * a.Dv, a.v_bf16, a.v_vec,
                               a.Dv, j0 + kt < je, vr[kt]);
#pragma unroll
            for (int g = 0; g < SP_GB; g++) {
                float p[SP_KT];
                if constexpr (MODE == MODE_FLASH) {
                    float tmax = s[0][g];
#pragma unroll
                    for (int kt = 1; kt < SP_KT; kt++) tmax = fmaxf(tmax, s[kt][g]);
                    const float mn = fmaxf(m[g], tmax), corr = weight_of(m[g], mn);
                    float sum = 0.0f;
#pragma unroll
                    for (int kt = 0; kt < SP_KT; kt++) sum += (p[kt] = expf(s[kt][g] - mn));
                    l[g] = l[g] * corr + sum;
                    m[g] = mn;
#pragma unroll
                    for (int i = 0; i < DPL; i++) o[g][i] *= corr;
                } else {
#pragma unroll
                    for (int kt = 0; kt < SP_KT; kt++)
                        p[kt] = s[kt][g] == -INFINITY ? 0.0f
                                                      : round_bf16(expf(s[kt][g] - Mg[g]) * invL[g]);
                }
#pragma unroll
                for (int kt = 0; kt < SP_KT; kt++)
#pragma unroll
                    for (int i = 0; i < DPL; i++) o[g][i] = fmaf(p[kt], vr[kt][i], o[g][i]);
            }
        }
    }

    /* Combine the 4 warps' partial results. */
    if (lane == 0)
#pragma unroll
        for (int g = 0; g < SP_GB; g++) sm_m[warp][g] = m[g], sm_l[warp][g] = l[g];
    if (MODE != MODE_STATS)
#pragma unroll
        for (int g = 0; g < SP_GB; g++)
#pragma unroll
            for (int i = 0; i < DPL; i++) sm_o[MODE == MODE_STATS ? 0 : warp][g][lane * DPL + i] = o[g][i];
    __syncthreads();

    const bool direct = a.nsplit == 1 && MODE != MODE_STATS;
    for (int idx = threadIdx.x; idx < nh * (MODE == MODE_STATS ? 1 : a.Dv); idx += SP_THREADS) {
        const int g = MODE == MODE_STATS ? idx : idx / a.Dv, d = MODE == MODE_STATS ? 0 : idx % a.Dv;
        float Mb = -INFINITY, Lb = 0.0f, ob = 0.0f;
        for (int w = 0; w < SP_WARPS; w++) Mb = fmaxf(Mb, sm_m[w][g]);
        for (int w = 0; w < SP_WARPS; w++) {
            const float f = MODE == MODE_ROUND ? 1.0f : weight_of(sm_m[w][g], Mb);
            Lb += sm_l[w][g] * f;
            if (MODE != MODE_STATS) ob += sm_o[MODE == MODE_STATS ? 0 : w][g][d] * f;
        }
        const int64_t row = (int64_t)t * a.H + h0 + g; /* (token, head) */
        if (direct) {
            const float v = MODE == MODE_FLASH ? ob * (1.0f / Lb) : ob;
            store_act(a.out.p, a.out.at(t) + (int64_t)(h0 + g) * a.Dv + d, a.out.bf16, v);
            continue;
        }
        if (MODE != MODE_STATS) a.part_o[(row * a.nsplit + split) * a.Dv + d] = ob;
        if (MODE != MODE_ROUND && d == 0) {
            a.part_ml[(row * a.nsplit + split) * 2] = Mb;
            a.part_ml[(row * a.nsplit + split) * 2 + 1] = Lb;
        }
    }
}

/* Block (token, head): combines the splits. FLASH: Σ_s o_s e^(m_s − M) / Σ_s l_s e^(m_s − M);
 * ROUND: Σ_s o_s (the probabilities were already final). */
static __global__ void attn_reduce_kernel(split_args a, bool round_mode) {
    pio_wait_prior();
    const int64_t row = blockIdx.x; /* t * H + h */
    const int64_t t = row / a.H, h = row % a.H;
    const float *ml = a.part_ml + row * a.nsplit * 2;
    float M = -INFINITY, Ls = 0.0f;
    if (!round_mode) {
        for (int s = 0; s < a.nsplit; s++) M = fmaxf(M, ml[2 * s]);
        for (int s = 0; s < a.nsplit; s++) Ls += ml[2 * s + 1] * weight_of(ml[2 * s], M);
    }
    const float inv = round_mode ? 1.0f : 1.0f / Ls;
    for (int d = threadIdx.x; d < a.Dv; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < a.nsplit; s++)
            acc += a.part_o[(row * a.nsplit + s) * a.Dv + d] * (round_mode ? 1.0f : weight_of(ml[2 * s], M));
        store_act(a.out.p, a.out.at(t) + h * a.Dv + d, a.out.bf16, acc * inv);
    }
}

template <int DPL>
static void launch_split(const pio_cuda_ctx *ctx, const split_args &a, dim3 grid, int mode) {
    switch (mode) {
    case MODE_FLASH: pio_launch(ctx, attn_split_kernel<DPL, MODE_FLASH>, grid, SP_THREADS, 0, a); break;
    case MODE_STATS: pio_launch(ctx, attn_split_kernel<DPL, MODE_STATS>, grid, SP_THREADS, 0, a); break;
    default: pio_launch(ctx, attn_split_kernel<DPL, MODE_ROUND>, grid, SP_THREADS, 0, a); break;
    }
}

static bool aligned(const void *p, size_t n) { return ((uintptr_t)p % n) == 0; }

static pio_status run_split(pio_cuda_ctx *ctx, split_args a, int64_t n, int64_t ctx_len,
                            bool round_bf16, pio_error *err) {
    const int D = std::max(a.Dk, a.Dv);
    const int dpl = D <= 64 ? 2 : D <= 128 ? 4 : 8;
    a.hb_count = (a.G + SP_GB - 1) / SP_GB;
    a.k_vec = a.Dk == 32 * dpl && aligned(a.k, 16);
    a.v_vec = a.Dv == 32 * dpl && aligned(a.v, 16);
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
    /* Scratch: per (token, head, split) the max and sum (FLASH, STATS), and
     * the partial output (when the splits must be combined). */
    const size_t ml_floats = (size_t)n * a.H * nsplit * 2;
    const size_t o_floats = nsplit > 1 ? (size_t)n * a.H * nsplit * a.Dv : 0;
    if (nsplit > 1 || round_bf16) {
        float *ws = (float *)pio_cuda_workspace(ctx, (ml_floats + o_floats) * sizeof(float), err);
        if (!ws) return err ? err->status : PIO_ERR_OOM;
        a.part_ml = ws;
        a.part_o = nsplit > 1 ? ws + ml_floats : NULL;
    }
    const dim3 grid((unsigned)n, (unsigned)(a.Hkv * a.hb_count), (unsigned)nsplit);
    auto launch = [&](int mode) {
        if (dpl == 2)
            launch_split<2>(ctx, a, grid, mode);
        else if (dpl == 4)
            launch_split<4>(ctx, a, grid, mode);
        else
            launch_split<8>(ctx, a, grid, mode);
    };
    pio_status st;
    if (round_bf16) { /* pass 1 (max and sum per split), then pass 2 with the final ones */
        launch(MODE_STATS);
        if ((st = pio_cuda_launched(err, "attention (stats)"))) return st;
        launch(MODE_ROUND);
    } else {
        launch(MODE_FLASH);
    }
    if ((st = pio_cuda_launched(err, "attention (split)"))) return st;
    if (nsplit > 1) {
        pio_launch(ctx, attn_reduce_kernel, dim3((unsigned)(n * a.H)), dim3(128), 0, a, round_bf16);
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
};

template <int D>
static constexpr size_t mma_smem_bytes() {
    return (size_t)(MMA_ROWS + 4 * MMA_KEYS) * (D + MMA_PAD) * sizeof(uint16_t);
}

/* ROUND: bf16 mode, two passes; else one online-softmax pass. */
template <int D, bool ROUND>
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
    auto load_tile = [&](uint16_t *dst, const uint16_t *src, int kb) {
        constexpr int CH = D / 8;
        for (int c = tid; c < MMA_KEYS * CH; c += MMA_THREADS) {
            const int r = c / CH, ch = c % CH, j = kb * MMA_KEYS + r;
            const bool ok = j < kv_len;
            cp_async16(dst + r * LD + ch * 8, src + base + (int64_t)(ok ? j : 0) * row_elems + ch * 8, ok);
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

template <int D, bool ROUND>
static pio_status launch_mma_t(pio_cuda_ctx *ctx, const mma_args &a, int n_tiles, pio_error *err) {
    constexpr size_t smem = mma_smem_bytes<D>();
    CU_TRY(cudaFuncSetAttribute(attn_mma_kernel<D, ROUND>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)smem),
           "attention (shared memory limit)");
    attn_mma_kernel<D, ROUND><<<dim3((unsigned)n_tiles, (unsigned)a.Hkv), MMA_THREADS, smem, ctx->stream>>>(a);
    return pio_cuda_launched(err, "attention (tensor cores)");
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
    if ((st = pio_cuda_batch_check_cache(op, b, cache_k, err))) return st;
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
    a.ctx_len = cache_k->shape[1];
    a.seq = b->d_seq;
    a.pos = b->d_pos;
    a.scale = scale;
    a.rnd = round_bf16;
    a.out = pio_cuda_rows(out);
    /* Splits are planned for the whole context, not this batch's positions:
     * a step captured in a graph is replayed at any position, and a direct
     * run then does the same arithmetic as the replay (and sizes the same
     * scratch, which capture cannot grow). Empty splits cost a few blocks. */
    return run_split(ctx, a, n, cache_k->shape[1], round_bf16, err);
}
