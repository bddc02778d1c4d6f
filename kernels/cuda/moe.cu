/* kernels/cuda/moe.cu: mixture-of-experts on the device (cuda_ops.h), the
 * twins of kernels/cpu/moe.c: routing, grouping the (token, choice) pairs by
 * expert, gathering their rows, products by the selected experts only, and the
 * weighted combination. Everything stays on the device, so a decode step needs
 * no host round trip and can be captured in a graph.
 *
 * Routing and grouping are serial per token / per batch on purpose: they
 * reproduce the CPU's order of operations (softmax sum, top-k with the lower
 * id first among ties, a stable counting sort) bit for bit on the device, and
 * at <= 4096 experts and a few thousand pairs they cost microseconds. */
#include "cuda_internal.cuh"

/* ---- route ---------------------------------------------------------------------- */

struct route_args {
    const float *logits; /* [n, E] */
    int64_t n;
    int32_t E, K;
    bool softmax, norm, round_bf16;
    float norm_eps, scale;
    int32_t *ids;     /* [n * K] */
    float *weights;   /* [n * K] */
};

/* One block per token: exponentials in parallel; thread 0 sums them in the
 * CPU's order (so the weights match it bit for bit); each of the top_k picks is
 * a block-wide argmax with the CPU's tie rule (the larger score, then the lower
 * expert id). Shared: score[E], taken[E]. */
enum { ROUTE_THREADS = 128 };

static __global__ void route_kernel(route_args a) {
    pio_wait_prior();
    extern __shared__ float score[];
    bool *taken = (bool *)(score + a.E);
    __shared__ float row_max, row_sum, red_v[ROUTE_THREADS / 32];
    __shared__ int32_t red_i[ROUTE_THREADS / 32];
    const int64_t t = blockIdx.x;
    const float *row = a.logits + t * a.E;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (threadIdx.x == 0) {
        float mx = row[0];
        for (int32_t e = 1; e < a.E; e++) mx = row[e] > mx ? row[e] : mx;
        row_max = mx;
    }
    __syncthreads();
    for (int32_t e = threadIdx.x; e < a.E; e += blockDim.x) {
        score[e] = a.softmax ? expf(row[e] - row_max) : 1.0f / (1.0f + expf(-row[e]));
        taken[e] = false;
    }
    __syncthreads();
    if (a.softmax) {
        if (threadIdx.x == 0) {
            float sum = 0.0f;
            for (int32_t e = 0; e < a.E; e++) sum += score[e];
            row_sum = sum;
        }
        __syncthreads();
        for (int32_t e = threadIdx.x; e < a.E; e += blockDim.x) score[e] /= row_sum;
        __syncthreads();
    }
    int32_t *id = a.ids + t * a.K;
    float *w = a.weights + t * a.K;
    for (int32_t j = 0; j < a.K; j++) {
        /* this thread's best untaken (larger score, then lower id) ... */
        float bv = -INFINITY;
        int32_t bi = -1;
        for (int32_t e = threadIdx.x; e < a.E; e += blockDim.x)
            if (!taken[e] && (bi < 0 || score[e] > bv)) bv = score[e], bi = e;
        /* ... then the warp's and the block's, with the same rule */
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) bv = ov, bi = oi;
        }
        if (lane == 0) red_v[warp] = bv, red_i[warp] = bi;
        __syncthreads();
        if (threadIdx.x == 0) {
            float v = red_v[0];
            int32_t i = red_i[0];
            for (int q = 1; q < (int)(blockDim.x >> 5); q++)
                if (red_i[q] >= 0 && (i < 0 || red_v[q] > v || (red_v[q] == v && red_i[q] < i)))
                    v = red_v[q], i = red_i[q];
            taken[i] = true;
            id[j] = i;
            w[j] = score[i];
        }
        __syncthreads();
    }
    if (threadIdx.x != 0) return;
    float sum = 0.0f;
    for (int32_t j = 0; j < a.K; j++) sum += w[j];
    for (int32_t j = 0; j < a.K; j++) {
        float v = w[j];
        if (a.norm) v /= sum + a.norm_eps;
        v *= a.scale;
        w[j] = a.round_bf16 ? round_bf16(v) : v;
    }
}

pio_status pio_cuda_moe_route(pio_cuda_ctx *ctx, const pio_tensor *logits,
                              const pio_moe_route_params *p, int32_t *ids, float *weights,
                              pio_error *err) {
    const char *op = "moe_route";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check(op, "logits", logits, DT_F32, false, err)) return PIO_ERR_INVALID;
    if (logits->ndim != 2)
        return pio_cuda_shape_error(err, op, "logits", logits, "logits", logits,
                                    "must be [n, n_expert]");
    const int64_t E = logits->shape[1];
    if (E < 1 || E > 4096 || p->top_k < 1 || p->top_k > E)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: top_k %d of %lld experts (1..4096)", op,
                             p->top_k, (long long)E);
    if (p->bias || p->n_group > 1)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "%s: score correction bias and expert groups do not run on CUDA yet",
                             op);
    if (p->scoring != PIO_MOE_SOFTMAX && p->scoring != PIO_MOE_SIGMOID)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: unknown scoring %d", op, (int)p->scoring);
    route_args a = {(const float *)pio_tensor_data(logits), logits->shape[0], (int32_t)E,
                    p->top_k, p->scoring == PIO_MOE_SOFTMAX, p->norm, p->round_bf16,
                    p->norm_eps, p->scale, ids, weights};
    if (a.n == 0) return PIO_OK;
    size_t smem = (size_t)E * (sizeof(float) + sizeof(bool));
    pio_launch(ctx, route_kernel, dim3((unsigned)a.n), dim3(ROUTE_THREADS), smem, a);
    return pio_cuda_launched(err, op);
}

/* ---- sort: a stable counting sort of the pairs by expert ---------------------------------
 * One block: the counts with shared-memory atomics, then thread 0 scans them
 * and places the pairs in order (stable: a pair's row follows the earlier
 * pairs of its expert), all in shared memory, and lists the experts that got
 * rows: active[0] = how many, active[1..] = which (ascending), so the expert
 * products launch blocks for those alone. Shared: cnt[E + 1] and, when they
 * fit, the ids. */
enum { SORT_THREADS = 256 };

static __global__ void sort_kernel(const int32_t *ids, int32_t n_pairs, int32_t E, bool staged,
                                   int32_t *offsets, int32_t *pair_of_row, int32_t *row_of_pair,
                                   int32_t *active) {
    pio_wait_prior();
    extern __shared__ int32_t cnt[]; /* [E + 1], then ids [n_pairs] when staged */
    int32_t *sid = cnt + E + 1;
    for (int32_t e = threadIdx.x; e <= E; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int32_t i = threadIdx.x; i < n_pairs; i += blockDim.x) {
        const int32_t e = ids[i];
        if (staged) sid[i] = e;
        if (e >= 0 && e < E) atomicAdd(&cnt[e + 1], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int32_t n_active = 0;
        for (int32_t e = 0; e < E; e++) {
            if (cnt[e + 1] > 0) active[1 + n_active++] = e;
            cnt[e + 1] += cnt[e];
        }
        active[0] = n_active;
        for (int32_t e = 0; e <= E; e++) offsets[e] = cnt[e];
        for (int32_t i = 0; i < n_pairs; i++) { /* cnt[e] walks expert e's rows */
            const int32_t e = staged ? sid[i] : ids[i];
            const int32_t r = (e >= 0 && e < E) ? cnt[e]++ : 0; /* ids come from route_kernel */
            pair_of_row[r] = i;
            row_of_pair[i] = r;
        }
    }
}

pio_status pio_cuda_moe_sort(pio_cuda_ctx *ctx, const int32_t *ids, int64_t n_pairs,
                             int32_t n_expert, int32_t *offsets, int32_t *pair_of_row,
                             int32_t *row_of_pair, int32_t *active, pio_error *err) {
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (n_expert < 1 || n_expert > 4096 || n_pairs < 0 || n_pairs > INT32_MAX)
        return pio_error_set(err, PIO_ERR_INVALID, "moe_sort: %lld pairs over %d experts (1..4096)",
                             (long long)n_pairs, n_expert);
    /* the ids go to shared memory too when both fit the default 48 KiB */
    const bool staged = (size_t)(n_expert + 1 + n_pairs) * sizeof(int32_t) <= 48 * 1024;
    const size_t smem = (size_t)(n_expert + 1 + (staged ? n_pairs : 0)) * sizeof(int32_t);
    pio_launch(ctx, sort_kernel, dim3(1), dim3(SORT_THREADS), smem, ids, (int32_t)n_pairs,
               n_expert, staged, offsets, pair_of_row, row_of_pair, active);
    return pio_cuda_launched(err, "moe_sort");
}

/* ---- gather: out[r, :] = x[pair_of_row[r] / K, :] --------------------------------------- */

static __global__ void gather_kernel(pio_rows x, pio_rows o, const int32_t *pair_of_row, int32_t K) {
    const int64_t r = blockIdx.y;
    const int64_t t = pair_of_row[r] / K;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < x.width;
         i += (int64_t)gridDim.x * blockDim.x)
        store_act(o.p, o.at(r) + i, o.bf16, load_act(x.p, x.at(t) + i, x.bf16));
}

pio_status pio_cuda_moe_gather(pio_cuda_ctx *ctx, const pio_tensor *x, const int32_t *pair_of_row,
                               int32_t top_k, pio_tensor *out, pio_error *err) {
    const char *op = "moe_gather";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check(op, "x", x, DT_ACT, true, err) ||
        !pio_cuda_check(op, "out", out, DT_ACT, true, err))
        return PIO_ERR_INVALID;
    if (x->ndim != 2 || out->ndim != 2 || x->shape[1] != out->shape[1] || top_k < 1 ||
        out->shape[0] > x->shape[0] * top_k)
        return pio_cuda_shape_error(err, op, "x", x, "out", out,
                                    "do not fit out[rows, d] with rows <= n * top_k from x[n, d]");
    pio_rows xr = pio_cuda_rows(x), orow = pio_cuda_rows(out);
    if (orow.rows == 0 || xr.width == 0) return PIO_OK;
    dim3 grid(pio_cuda_blocks(xr.width, 256) < 64 ? pio_cuda_blocks(xr.width, 256) : 64,
              (unsigned)orow.rows);
    gather_kernel<<<grid, 256, 0, ctx->stream>>>(xr, orow, pair_of_row, top_k);
    return pio_cuda_launched(err, op);
}

/* ---- products by the selected experts --------------------------------------------------
 * y[r, :] = W_e · x[src(r), :] for the rows r = offsets[e] .. offsets[e+1]-1 of
 * each expert e (the grouped layout), src(r) = pair_of_row[r] / K (x_by_token:
 * the token's row of the layer input) or r (x already grouped). One block per
 * (expert, 32 output rows): it reads each of those weight rows once, whatever
 * the number of rows the expert has, against up to `rmax` of them staged in
 * shared memory as f32 (more rows: more passes). Experts nobody chose leave at
 * once, so a decode step reads the active experts' weights once, and a batch of
 * a few sequences reads each chosen expert once, not once per token. */
enum { EXPERT_ROWS_PER_BLOCK = 32, EXPERT_THREADS = 256, EXPERT_RMAX = 8 };

struct expert_args {
    const void *const *w; /* [E] device pointers to [m, k] weights */
    bool w_bf16;
    int64_t m, k;
    pio_rows x, y;
    const int32_t *offsets, *pair_of_row, *active;
    int32_t K, rmax;
    bool x_by_token;
};

static __global__ void expert_matmul_kernel(expert_args a) {
    pio_wait_prior();
    extern __shared__ float xs[]; /* [rmax][k] */
    if ((int)blockIdx.y >= a.active[0]) return; /* fewer experts chosen than blocks in y */
    const int e = a.active[1 + blockIdx.y];
    const int32_t first = a.offsets[e], last = a.offsets[e + 1];
    if (first >= last) return;
    const void *w = a.w[e];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t row0 = (int64_t)blockIdx.x * EXPERT_ROWS_PER_BLOCK;
    const bool vec = a.w_bf16 && (a.k & 7) == 0 && ((uintptr_t)w & 15) == 0;
    for (int32_t r0 = first; r0 < last; r0 += a.rmax) {
        const int nr = last - r0 < a.rmax ? last - r0 : a.rmax;
        __syncthreads(); /* the previous pass is done with xs */
        for (int j = 0; j < nr; j++) {
            const int64_t r = r0 + j, src = a.x_by_token ? a.pair_of_row[r] / a.K : r;
            for (int64_t i = threadIdx.x; i < a.k; i += blockDim.x)
                xs[j * a.k + i] = load_act(a.x.p, a.x.at(src) + i, a.x.bf16);
        }
        __syncthreads();
        for (int64_t o = row0 + warp; o < row0 + EXPERT_ROWS_PER_BLOCK && o < a.m;
             o += EXPERT_THREADS / 32) {
            float acc[EXPERT_RMAX];
#pragma unroll
            for (int j = 0; j < EXPERT_RMAX; j++) acc[j] = 0.0f;
            if (vec) {
                const uint16_t *wr = (const uint16_t *)w + o * a.k;
                for (int64_t i = (int64_t)lane * 8; i < a.k; i += 32 * 8) {
                    uint4 v = *(const uint4 *)(wr + i);
                    const uint32_t u[4] = {v.x, v.y, v.z, v.w};
                    float wf[8];
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        wf[2 * q] = __uint_as_float(u[q] << 16);
                        wf[2 * q + 1] = __uint_as_float(u[q] & 0xffff0000u);
                    }
#pragma unroll
                    for (int j = 0; j < EXPERT_RMAX; j++) {
                        if (j >= nr) break;
                        const float *xj = xs + j * a.k + i;
#pragma unroll
                        for (int q = 0; q < 8; q++) acc[j] += wf[q] * xj[q];
                    }
                }
            } else {
                for (int64_t i = lane; i < a.k; i += 32) {
                    const float wv = a.w_bf16 ? bf16_bits_to_f32(((const uint16_t *)w)[o * a.k + i])
                                              : ((const float *)w)[o * a.k + i];
#pragma unroll
                    for (int j = 0; j < EXPERT_RMAX; j++) {
                        if (j >= nr) break;
                        acc[j] += wv * xs[j * a.k + i];
                    }
                }
            }
#pragma unroll
            for (int j = 0; j < EXPERT_RMAX; j++) {
                if (j >= nr) break;
                const float v = warp_sum(acc[j]);
                if (lane == 0) store_act(a.y.p, a.y.at(r0 + j) + o, a.y.bf16, v);
            }
        }
    }
}

pio_status pio_cuda_moe_expert_matmul(pio_cuda_ctx *ctx, const pio_tensor *x,
                                      const void *const *d_weights, pio_dtype w_dtype, int64_t m,
                                      int64_t k, int32_t n_expert, const int32_t *offsets,
                                      const int32_t *active, const int32_t *pair_of_row,
                                      int32_t top_k, bool x_by_token, pio_tensor *y,
                                      pio_error *err) {
    const char *op = "moe_expert_matmul";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check(op, "x", x, DT_ACT, true, err) ||
        !pio_cuda_check(op, "y", y, DT_ACT, true, err))
        return PIO_ERR_INVALID;
    if (w_dtype != PIO_F32 && w_dtype != PIO_BF16)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: expert weights must be f32 or bf16", op);
    if (n_expert < 1 || n_expert > 65535 || x->ndim != 2 || y->ndim != 2 || x->shape[1] != k ||
        y->shape[1] != m || top_k < 1 || (!x_by_token && x->shape[0] != y->shape[0]) ||
        (x_by_token && y->shape[0] > x->shape[0] * top_k))
        return pio_cuda_shape_error(err, op, "x", x, "y", y, "do not fit y[rows, m] = W_e · x[src, k]");
    const size_t row_bytes = (size_t)k * sizeof(float), smem_max = 48 * 1024;
    if (row_bytes > smem_max)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: rows of %lld values exceed the kernel's "
                             "shared memory (12288)", op, (long long)k);
    int rmax = (int)(smem_max / row_bytes);
    rmax = rmax > EXPERT_RMAX ? EXPERT_RMAX : rmax;
    expert_args a = {d_weights, w_dtype == PIO_BF16, m, k, pio_cuda_rows(x), pio_cuda_rows(y),
                     offsets, pair_of_row, active, top_k, rmax, x_by_token};
    if (a.y.rows == 0 || m == 0) return PIO_OK;
    /* at most min(experts, rows) experts have rows: blocks in y for those alone */
    const int64_t most = a.y.rows < n_expert ? a.y.rows : n_expert;
    dim3 grid(pio_cuda_blocks(m, EXPERT_ROWS_PER_BLOCK), (unsigned)most);
    pio_launch(ctx, expert_matmul_kernel, grid, dim3(EXPERT_THREADS), (size_t)rmax * row_bytes, a);
    return pio_cuda_launched(err, op);
}

/* ---- combine ------------------------------------------------------------------------- */

struct combine_args {
    pio_rows y, out;
    const int32_t *row_of_pair, *ids;
    const float *w;
    int32_t K;
    bool expert_order, round_bf16;
};

/* One block per token; each thread its columns, the terms in the CPU's order
 * and with its roundings (moe.c combine_token). */
static __global__ void combine_kernel(combine_args a) {
    pio_wait_prior();
    const int64_t t = blockIdx.y;
    int32_t order[32];
    for (int32_t j = 0; j < a.K; j++) order[j] = j;
    if (a.expert_order) {
        const int32_t *id = a.ids + t * a.K;
        for (int32_t j = 1; j < a.K; j++)
            for (int32_t i = j; i > 0 && id[order[i]] < id[order[i - 1]]; i--) {
                int32_t tmp = order[i];
                order[i] = order[i - 1];
                order[i - 1] = tmp;
            }
    }
    const bool round_each = a.round_bf16 && a.expert_order;
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < a.out.width;
         c += (int64_t)gridDim.x * blockDim.x) {
        float o = 0.0f;
        for (int32_t j = 0; j < a.K; j++) {
            const int64_t pair = t * a.K + order[j];
            const float y = load_act(a.y.p, a.y.at(a.row_of_pair[pair]) + c, a.y.bf16);
            const float w = a.w[pair];
            if (a.round_bf16)
                o = round_each ? round_bf16(o + round_bf16(w * y)) : o + round_bf16(w * y);
            else
                o += w * y;
        }
        if (a.round_bf16 && !round_each) o = round_bf16(o);
        store_act(a.out.p, a.out.at(t) + c, a.out.bf16, o);
    }
}

pio_status pio_cuda_moe_combine(pio_cuda_ctx *ctx, const pio_tensor *y, const int32_t *row_of_pair,
                                const int32_t *ids, const float *weights, int32_t top_k,
                                pio_moe_accum accum, bool round_bf16, pio_tensor *out,
                                pio_error *err) {
    const char *op = "moe_combine";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check(op, "y", y, DT_ACT, true, err) ||
        !pio_cuda_check(op, "out", out, DT_ACT, true, err))
        return PIO_ERR_INVALID;
    if (y->ndim != 2 || out->ndim != 2 || top_k < 1 || top_k > 32 || y->shape[1] != out->shape[1] ||
        y->shape[0] != out->shape[0] * top_k)
        return pio_cuda_shape_error(err, op, "y", y, "out", out,
                                    "do not fit y[n * top_k, d] → out[n, d] (top_k <= 32)");
    if (pio_cuda_overlap(y, out))
        return pio_cuda_shape_error(err, op, "y", y, "out", out, "overlap in memory");
    if (accum != PIO_MOE_ACCUM_EXPERT_ORDER && accum != PIO_MOE_ACCUM_F32)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: unknown accumulation %d", op, (int)accum);
    combine_args a = {pio_cuda_rows(y), pio_cuda_rows(out), row_of_pair, ids, weights, top_k,
                      accum == PIO_MOE_ACCUM_EXPERT_ORDER, round_bf16};
    if (a.out.rows == 0 || a.out.width == 0) return PIO_OK;
    unsigned bx = pio_cuda_blocks(a.out.width, 256);
    dim3 grid(bx < 16 ? bx : 16, (unsigned)a.out.rows);
    pio_launch(ctx, combine_kernel, grid, dim3(256), 0, a);
    return pio_cuda_launched(err, op);
}
