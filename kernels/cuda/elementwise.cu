/* Memory-bound ops: embedding, RMSNorm (+ residual), the per-head
 * norm + RoPE + KV-cache write, silu·mul, binary, round, softmax.
 *
 * Each is one pass over its data with f32 arithmetic in registers, rounding
 * exactly where the CPU op rounds. None needs more than a block per row, so
 * the launches are sized by rows; at decode (one token) they are bound by
 * launch latency, which CUDA graphs remove. */
#include "cuda_internal.cuh"

/* Threads for a block that owns one row of d elements: about 8 per thread,
 * a whole number of warps, 32 to 1024. */
static int row_threads(int64_t d) {
    int64_t t = (d + 7) / 8;
    t = (t + 31) / 32 * 32;
    return t < 32 ? 32 : t > 1024 ? 1024 : (int)t;
}

/* Grid rows are capped by CUDA's grid.y limit; kernels loop over the rest. */
static unsigned grid_rows(int64_t rows) { return (unsigned)(rows < 65535 ? (rows > 0 ? rows : 1) : 65535); }

/* ---- embedding ------------------------------------------------------------ */

static __global__ void embedding_kernel(const void *table, bool t_bf16, int64_t d,
                                        const int32_t *ids, int64_t n, pio_rows out) {
    pio_wait_prior();
    for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
        const int64_t src = (int64_t)ids[r] * d, dst = out.at(r);
        for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
            store_act(out.p, dst + i, out.bf16, load_act(table, src + i, t_bf16));
    }
}

pio_status pio_cuda_embedding(pio_cuda_ctx *ctx, const pio_tensor *table, const pio_cuda_batch *b,
                              pio_tensor *out, pio_error *err) {
    const char *op = "embedding";
    char s[PIO_SHAPE_BUF];
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check(op, "table", table, DT_ACT, false, err) ||
        !pio_cuda_check(op, "out", out, DT_ACT, true, err))
        return PIO_ERR_INVALID;
    if (!b) return pio_error_set(err, PIO_ERR_INVALID, "%s: the batch is missing", op);
    if (table->ndim != 2 || out->ndim != 2 || out->shape[0] != b->n ||
        out->shape[1] != table->shape[1])
        return pio_cuda_shape_error(err, op, "table", table, "out", out,
                                    "do not fit table[V, d] and out[n, d]");
    if (b->n > 0 && !b->has_ids)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: the batch has no token ids for out %s", op,
                             pio_shape_str(out, s, sizeof s));
    const int64_t vocab = table->shape[0];
    if (b->n > 0 && (b->min_id < 0 || b->max_id >= vocab))
        for (int32_t i = 0; i < b->n; i++)
            if (b->ids[i] < 0 || b->ids[i] >= vocab)
                return pio_error_set(
                    err, PIO_ERR_RANGE,
                    "%s: token id %d (at %d) is out of range for a vocabulary of %lld", op,
                    (int)b->ids[i], (int)i, (long long)vocab);
    if (b->n == 0 || table->shape[1] == 0) return PIO_OK;
    pio_launch(ctx, embedding_kernel, dim3(grid_rows(b->n)), dim3(row_threads(table->shape[1])), 0,
               (const void *)pio_tensor_data(table), table->dtype == PIO_BF16, table->shape[1],
               (const int32_t *)b->d_ids, (int64_t)b->n, pio_cuda_rows(out));
    return pio_cuda_launched(err, op);
}

/* ---- RMSNorm with an optional residual add ------------------------------------ */

/* x ← x + r (rounded in bf16 mode; stored in x's dtype), then y = norm(x) · w.
 * One block per row. In pass 2 each thread reads back only the elements it
 * wrote in pass 1, so x may be y when r is absent. */
static __global__ void add_rmsnorm_kernel(pio_rows x, pio_rows r, bool has_r, const void *w,
                                          bool w_bf16, float eps, pio_rows y, bool rnd) {
    pio_wait_prior();
    __shared__ float red[32];
    const int64_t d = x.width;
    for (int64_t row = blockIdx.x; row < x.rows; row += gridDim.x) {
        const int64_t xo = x.at(row), yo = y.at(row), ro = has_r ? r.at(row) : 0;
        float ss = 0.0f;
        for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
            float v = load_act(x.p, xo + i, x.bf16);
            if (has_r) {
                v += load_act(r.p, ro + i, r.bf16);
                if (rnd || x.bf16) v = round_bf16(v); /* the residual stream is bf16 */
                store_act(x.p, xo + i, x.bf16, v);
            }
            ss += v * v;
        }
        ss = block_sum(ss, red);
        const float inv = 1.0f / sqrtf(ss / (float)d + eps); /* as the CPU op */
        for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
            float xh = load_act(x.p, xo + i, x.bf16) * inv;
            float wv = load_act(w, i, w_bf16);
            store_act(y.p, yo + i, y.bf16, rnd ? round_bf16(wv * round_bf16(xh)) : wv * xh);
        }
    }
}

pio_status pio_cuda_add_rmsnorm(pio_cuda_ctx *ctx, pio_tensor *x, const pio_tensor *r,
                                const pio_tensor *w, float eps, pio_tensor *y, bool round_bf16,
                                pio_error *err) {
    const char *op = r ? "add_rmsnorm" : "rmsnorm";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check(op, "x", x, DT_ACT, true, err) ||
        (r && !pio_cuda_check(op, "r", r, DT_ACT, true, err)) ||
        !pio_cuda_check(op, "w", w, DT_ACT, false, err) ||
        !pio_cuda_check(op, "y", y, DT_ACT, true, err))
        return PIO_ERR_INVALID;
    if (x->ndim < 1 || w->ndim != 1 || w->shape[0] != x->shape[x->ndim - 1])
        return pio_cuda_shape_error(err, op, "x", x, "w", w, "do not fit x[..., d] and w[d]");
    if (!pio_tensor_same_shape(x, y))
        return pio_cuda_shape_error(err, op, "x", x, "y", y, "must have the same shape");
    if (r && !pio_tensor_same_shape(x, r))
        return pio_cuda_shape_error(err, op, "x", x, "r", r, "must have the same shape");
    if (r ? pio_cuda_overlap(x, y) : pio_cuda_partial_overlap(x, y))
        return pio_cuda_shape_error(err, op, "x", x, "y", y,
                                    r ? "overlap (with a residual, y must be separate)"
                                      : "overlap without being the same tensor");
    if (r && (pio_cuda_partial_overlap(x, r) || pio_cuda_overlap(r, y)))
        return pio_cuda_shape_error(err, op, "x", x, "r", r, "overlap");
    pio_rows xr = pio_cuda_rows_last(x), yr = pio_cuda_rows_last(y);
    pio_rows rr = r ? pio_cuda_rows_last(r) : xr;
    if (xr.rows == 0 || xr.width == 0) return PIO_OK;
    pio_launch(ctx, add_rmsnorm_kernel, dim3(grid_rows(xr.rows)), dim3(row_threads(xr.width)), 0,
               xr, rr, r != NULL, (const void *)pio_tensor_data(w), w->dtype == PIO_BF16, eps, yr,
               round_bf16);
    return pio_cuda_launched(err, op);
}

pio_status pio_cuda_rmsnorm(pio_cuda_ctx *ctx, const pio_tensor *x, const pio_tensor *w, float eps,
                            pio_tensor *y, bool round_bf16, pio_error *err) {
    return pio_cuda_add_rmsnorm(ctx, (pio_tensor *)x, NULL, w, eps, y, round_bf16, err);
}

/* ---- per-head norm, RoPE and the KV-cache write --------------------------------- */

/* Block (t, y): token t, and by y one head of q (normed, roped, in place),
 * of k (normed, roped, into cache_k) or of v (into cache_v). Thread j holds
 * element j of the head (blockDim.x >= head_dim). */
struct head_args {
    pio_rows q, k, v;    /* [n, heads * D]: one row per token (group 1) */
    int nq, nk, nv;      /* heads of each kind: block y < nq is q, then k, then v */
    int D;
    const void *q_norm, *k_norm;
    bool qn_bf16, kn_bf16;
    float eps;
    const float *inv_freq;
    int rot;             /* 0: no RoPE */
    void *ck, *cv;       /* caches [slots, ctx, kv_heads, D] or, with table, pools
                            [n_blocks, block, kv_heads, D]; NULL: k written in place */
    bool ck_bf16, cv_bf16;
    int64_t ctx_len;     /* positions per slot, or per block (table) */
    int kv_heads;
    const int32_t *table; /* paged: [slots, table_cols] pool block of each logical block */
    int table_cols;
    const int32_t *seq, *pos;
    bool rnd;
};

static __global__ void head_kernel(head_args a) {
    pio_wait_prior();
    extern __shared__ float hv[]; /* [D] the normed head, for the RoPE partner */
    __shared__ float red[32];
    const int64_t t = blockIdx.x;
    const int y = blockIdx.y, j = threadIdx.x, D = a.D;
    const int kind = y < a.nq ? 0 : y < a.nq + a.nk ? 1 : 2;
    const int h = kind == 0 ? y : kind == 1 ? y - a.nq : y - a.nq - a.nk;
    /* The source rows picked field by field: a reference into the kernel's
     * parameters would copy them to the stack. */
    char *const sp = kind == 0 ? a.q.p : kind == 1 ? a.k.p : a.v.p;
    const int64_t sstride = kind == 0 ? a.q.stride : kind == 1 ? a.k.stride : a.v.stride;
    const bool sbf16 = kind == 0 ? a.q.bf16 : kind == 1 ? a.k.bf16 : a.v.bf16;
    const int64_t so = t * sstride + (int64_t)h * D;
    float x = j < D ? load_act(sp, so + j, sbf16) : 0.0f;

    if (kind < 2) {
        const void *nw = kind == 0 ? a.q_norm : a.k_norm;
        if (nw) { /* pio_cpu_rmsnorm over the head */
            float ss = block_sum(x * x, red);
            float inv = 1.0f / sqrtf(ss / (float)D + a.eps);
            if (j < D) {
                float wv = load_act(nw, j, kind == 0 ? a.qn_bf16 : a.kn_bf16);
                float xh = x * inv;
                x = a.rnd ? round_bf16(wv * round_bf16(xh)) : wv * xh;
            }
        }
        if (a.rot > 0) { /* pio_cpu_rope */
            if (j < D) hv[j] = x;
            __syncthreads();
            const int half = a.rot / 2;
            if (j < a.rot) {
                const int i = j < half ? j : j - half;
                const float angle = (float)a.pos[t] * a.inv_freq[i];
                float c = cosf(angle), s = sinf(angle);
                if (a.rnd) {
                    c = round_bf16(c);
                    s = round_bf16(s);
                }
                if (j < half) {
                    const float x1 = hv[j + half];
                    x = a.rnd ? round_bf16(round_bf16(x * c) + round_bf16(-x1 * s)) : x * c - x1 * s;
                } else {
                    const float x0 = hv[j - half];
                    x = a.rnd ? round_bf16(round_bf16(x * c) + round_bf16(x0 * s)) : x * c + x0 * s;
                }
            }
        }
    }
    if (j >= D) return;
    if (kind == 0 || (kind == 1 && !a.ck)) {
        store_act(sp, so + j, sbf16, x);
        return;
    }
    void *cache = kind == 1 ? a.ck : a.cv;
    /* The position's row: slot-major, or row pos % block of its pool block. */
    const int64_t p = a.pos[t];
    const int64_t row =
        a.table ? (int64_t)a.table[(int64_t)a.seq[t] * a.table_cols + p / a.ctx_len] * a.ctx_len +
                      p % a.ctx_len
                : (int64_t)a.seq[t] * a.ctx_len + p;
    const int64_t at = (row * a.kv_heads + h) * D + j;
    store_act(cache, at, kind == 1 ? a.ck_bf16 : a.cv_bf16, x);
}

static pio_status launch_heads(pio_cuda_ctx *ctx, const head_args &a, int64_t n, const char *op,
                               pio_error *err) {
    const int heads = a.nq + a.nk + a.nv;
    if (n == 0 || heads == 0 || a.D == 0) return PIO_OK;
    if (heads > 65535)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: %d heads per token (at most 65535)", op,
                             heads);
    const int threads = (a.D + 31) / 32 * 32;
    pio_launch(ctx, head_kernel, dim3((unsigned)n, (unsigned)heads), dim3(threads),
               (size_t)a.D * sizeof(float), a);
    return pio_cuda_launched(err, op);
}

/* [n, heads, D] with its row layout, or an error naming the tensor. */
static bool heads_layout(const char *op, const char *name, const pio_tensor *t, pio_error *err) {
    char s[PIO_SHAPE_BUF];
    if (t->ndim != 3) {
        pio_error_set(err, PIO_ERR_INVALID, "%s: %s %s must be [n, heads, head_dim]", op, name,
                      pio_shape_str(t, s, sizeof s));
        return false;
    }
    if (t->shape[2] > 1024) {
        pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: %s %s: head_dim above 1024", op, name,
                      pio_shape_str(t, s, sizeof s));
        return false;
    }
    return true;
}

static bool check_norm_w(const char *op, const char *name, const pio_tensor *w, int64_t D,
                         pio_error *err) {
    char s[PIO_SHAPE_BUF];
    if (!w) return true;
    if (!pio_cuda_check(op, name, w, DT_ACT, false, err)) return false;
    if (w->ndim != 1 || w->shape[0] != D) {
        pio_error_set(err, PIO_ERR_INVALID, "%s: %s %s must be [%lld]", op, name,
                      pio_shape_str(w, s, sizeof s), (long long)D);
        return false;
    }
    return true;
}

static bool check_rope(const char *op, const pio_tensor *x, const pio_tensor *inv_freq, int rot,
                       pio_error *err) {
    char s[PIO_SHAPE_BUF];
    if (!inv_freq) return true;
    if (rot <= 0 || rot % 2 != 0 || rot > x->shape[2]) {
        pio_error_set(err, PIO_ERR_INVALID,
                      "%s: rot_dim %d must be even and in (0, head_dim] for x %s", op, rot,
                      pio_shape_str(x, s, sizeof s));
        return false;
    }
    if (!pio_cuda_check(op, "inv_freq", inv_freq, DT_F32, false, err)) return false;
    if (pio_tensor_numel(inv_freq) < rot / 2) {
        pio_error_set(err, PIO_ERR_INVALID, "%s: inv_freq %s holds fewer than rot_dim/2 = %d values",
                      op, pio_shape_str(inv_freq, s, sizeof s), rot / 2);
        return false;
    }
    return true;
}

static bool check_batch_n(const char *op, const pio_tensor *x, const pio_cuda_batch *b,
                          pio_error *err) {
    char s[PIO_SHAPE_BUF];
    if (!b) {
        pio_error_set(err, PIO_ERR_INVALID, "%s: the batch is missing", op);
        return false;
    }
    if (x->shape[0] != b->n) {
        pio_error_set(err, PIO_ERR_INVALID, "%s: x %s has %lld tokens, the batch %d", op,
                      pio_shape_str(x, s, sizeof s), (long long)x->shape[0], (int)b->n);
        return false;
    }
    return true;
}

/* k/v [n, kv_heads, D] fit cache [slots, ctx, kv_heads, D]. */
static bool check_cache_pair(const char *op, const char *src_name, const pio_tensor *src,
                             const char *cache_name, const pio_tensor *cache, pio_error *err) {
    if (!pio_cuda_check(op, cache_name, cache, DT_ACT, false, err)) return false;
    if (src->ndim != 3 || cache->ndim != 4 || src->shape[1] != cache->shape[2] ||
        src->shape[2] != cache->shape[3]) {
        pio_cuda_shape_error(err, op, src_name, src, cache_name, cache,
                             "do not fit [n, kv_heads, head_dim] and [slots, ctx, kv_heads, head_dim]");
        return false;
    }
    return true;
}

pio_status pio_cuda_rope(pio_cuda_ctx *ctx, pio_tensor *x, const pio_cuda_batch *b,
                         const pio_tensor *inv_freq, int rot_dim, bool round_bf16,
                         pio_error *err) {
    const char *op = "rope";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check(op, "x", x, DT_ACT, true, err) || !heads_layout(op, "x", x, err))
        return PIO_ERR_INVALID;
    if (!inv_freq)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: positions and inv_freq are required", op);
    if (!check_rope(op, x, inv_freq, rot_dim, err) || !check_batch_n(op, x, b, err))
        return err ? err->status : PIO_ERR_INVALID;
    head_args a = {};
    a.q = pio_cuda_rows(x);
    a.nq = (int)x->shape[1];
    a.D = (int)x->shape[2];
    a.inv_freq = (const float *)pio_tensor_data(inv_freq);
    a.rot = rot_dim;
    a.pos = b->d_pos;
    a.seq = b->d_seq;
    a.rnd = round_bf16;
    return launch_heads(ctx, a, x->shape[0], op, err);
}

/* The positions a batch writes: in range of the caches, or (paged) of the table. */
static pio_status check_written(const char *op, const pio_cuda_batch *b,
                                const pio_cuda_block_table *table, const pio_tensor *cache_k,
                                pio_error *err) {
    if (!table) return pio_cuda_batch_check_cache(op, b, cache_k, err);
    return pio_cuda_batch_check_table(op, b, table, cache_k, false, err);
}

static void set_cache_rows(head_args &a, const pio_tensor *cache_k, const pio_tensor *cache_v,
                           const pio_cuda_block_table *table) {
    a.ck = pio_tensor_data(cache_k);
    a.cv = pio_tensor_data(cache_v);
    a.ck_bf16 = cache_k->dtype == PIO_BF16;
    a.cv_bf16 = cache_v->dtype == PIO_BF16;
    a.ctx_len = cache_k->shape[1]; /* paged: the block size (checked against the table) */
    a.kv_heads = (int)cache_k->shape[2];
    a.table = table ? table->d_table : NULL;
    a.table_cols = table ? table->cols : 0;
}

pio_status pio_cuda_kv_write(pio_cuda_ctx *ctx, const pio_tensor *k, const pio_tensor *v,
                             pio_tensor *cache_k, pio_tensor *cache_v, const pio_cuda_batch *b,
                             pio_error *err) {
    return pio_cuda_kv_write_paged(ctx, k, v, cache_k, cache_v, b, NULL, err);
}

pio_status pio_cuda_kv_write_paged(pio_cuda_ctx *ctx, const pio_tensor *k, const pio_tensor *v,
                                   pio_tensor *cache_k, pio_tensor *cache_v,
                                   const pio_cuda_batch *b, const pio_cuda_block_table *table,
                                   pio_error *err) {
    const char *op = "kv_write";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check(op, "k", k, DT_ACT, true, err) ||
        !pio_cuda_check(op, "v", v, DT_ACT, true, err) ||
        !check_cache_pair(op, "k", k, "cache_k", cache_k, err) ||
        !check_cache_pair(op, "v", v, "cache_v", cache_v, err))
        return err ? err->status : PIO_ERR_INVALID;
    if (k->shape[0] != v->shape[0])
        return pio_cuda_shape_error(err, op, "k", k, "v", v, "hold different numbers of tokens");
    if (cache_k->shape[0] != cache_v->shape[0] || cache_k->shape[1] != cache_v->shape[1])
        return pio_cuda_shape_error(err, op, "cache_k", cache_k, "cache_v", cache_v,
                                    "differ in slots or context length");
    if (k->shape[2] != v->shape[2])
        return pio_cuda_shape_error(err, op, "k", k, "v", v,
                                    "differ in head_dim (not supported on CUDA yet)");
    if (k->shape[2] > 1024)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: head_dim above 1024", op);
    if (!check_batch_n(op, k, b, err)) return PIO_ERR_INVALID;
    if ((st = check_written(op, b, table, cache_k, err))) return st;
    head_args a = {};
    a.k = pio_cuda_rows(k);
    a.v = pio_cuda_rows(v);
    a.nk = a.nv = (int)k->shape[1];
    a.D = (int)k->shape[2];
    set_cache_rows(a, cache_k, cache_v, table);
    a.seq = b->d_seq;
    a.pos = b->d_pos;
    return launch_heads(ctx, a, k->shape[0], op, err);
}

pio_status pio_cuda_qk_norm_rope_kv(pio_cuda_ctx *ctx, const pio_cuda_qkv_args *in,
                                    pio_error *err) {
    const char *op = "qk_norm_rope_kv";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!in) return pio_error_set(err, PIO_ERR_INVALID, "%s: arguments are missing", op);
    if (!pio_cuda_check(op, "q", in->q, DT_ACT, true, err) ||
        !pio_cuda_check(op, "k", in->k, DT_ACT, true, err) ||
        !pio_cuda_check(op, "v", in->v, DT_ACT, true, err) || !heads_layout(op, "q", in->q, err) ||
        !check_cache_pair(op, "k", in->k, "cache_k", in->cache_k, err) ||
        !check_cache_pair(op, "v", in->v, "cache_v", in->cache_v, err))
        return err ? err->status : PIO_ERR_INVALID;
    const pio_tensor *q = in->q, *k = in->k, *v = in->v;
    const int64_t D = q->shape[2];
    if (k->shape[2] != D || v->shape[2] != D || k->shape[0] != q->shape[0] ||
        v->shape[0] != q->shape[0] || v->shape[1] != k->shape[1])
        return pio_cuda_shape_error(err, op, "q", q, "k", k,
                                    "do not fit q[n, heads, D], k and v [n, kv_heads, D]");
    if (in->cache_k->shape[0] != in->cache_v->shape[0] ||
        in->cache_k->shape[1] != in->cache_v->shape[1])
        return pio_cuda_shape_error(err, op, "cache_k", in->cache_k, "cache_v", in->cache_v,
                                    "differ in slots or context length");
    if (pio_cuda_overlap(q, k) || pio_cuda_overlap(q, v))
        return pio_cuda_shape_error(err, op, "q", q, "k", k, "q overlaps k or v");
    if (!check_norm_w(op, "q_norm", in->q_norm, D, err) ||
        !check_norm_w(op, "k_norm", in->k_norm, D, err) ||
        !check_rope(op, q, in->inv_freq, in->rot_dim, err) ||
        !check_batch_n(op, q, in->batch, err))
        return err ? err->status : PIO_ERR_INVALID;
    if ((st = check_written(op, in->batch, in->table, in->cache_k, err))) return st;
    head_args a = {};
    a.q = pio_cuda_rows(q);
    a.k = pio_cuda_rows(k);
    a.v = pio_cuda_rows(v);
    a.nq = (int)q->shape[1];
    a.nk = a.nv = (int)k->shape[1];
    a.D = (int)D;
    a.q_norm = in->q_norm ? pio_tensor_data(in->q_norm) : NULL;
    a.k_norm = in->k_norm ? pio_tensor_data(in->k_norm) : NULL;
    a.qn_bf16 = in->q_norm && in->q_norm->dtype == PIO_BF16;
    a.kn_bf16 = in->k_norm && in->k_norm->dtype == PIO_BF16;
    a.eps = in->eps;
    a.inv_freq = in->inv_freq ? (const float *)pio_tensor_data(in->inv_freq) : NULL;
    a.rot = in->inv_freq ? in->rot_dim : 0;
    set_cache_rows(a, in->cache_k, in->cache_v, in->table);
    a.seq = in->batch->d_seq;
    a.pos = in->batch->d_pos;
    a.rnd = in->round_bf16;
    return launch_heads(ctx, a, q->shape[0], op, err);
}

/* ---- silu·mul, binary, round ------------------------------------------------------ */

/* Element-wise kernels walk [rows, width]: grid.y over rows (looping past
 * 65535), grid.x and threads over the width. */
static dim3 ew_grid(int64_t rows, int64_t width) {
    return dim3(pio_cuda_blocks(width, 256), grid_rows(rows));
}

static __global__ void silu_mul_kernel(pio_rows g, pio_rows u, pio_rows o, bool rnd) {
    pio_wait_prior();
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= g.width) return;
    for (int64_t r = blockIdx.y; r < g.rows; r += gridDim.y) {
        float gv = load_act(g.p, g.at(r) + i, g.bf16), uv = load_act(u.p, u.at(r) + i, u.bf16);
        float s = gv / (1.0f + expf(-gv));
        store_act(o.p, o.at(r) + i, o.bf16, rnd ? round_bf16(round_bf16(s) * uv) : s * uv);
    }
}

pio_status pio_cuda_silu_mul(pio_cuda_ctx *ctx, const pio_tensor *gate, const pio_tensor *up,
                             pio_tensor *out, bool round_bf16, pio_error *err) {
    const char *op = "silu_mul";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check(op, "gate", gate, DT_ACT, true, err) ||
        !pio_cuda_check(op, "up", up, DT_ACT, true, err) ||
        !pio_cuda_check(op, "out", out, DT_ACT, true, err))
        return PIO_ERR_INVALID;
    if (!pio_tensor_same_shape(gate, up))
        return pio_cuda_shape_error(err, op, "gate", gate, "up", up, "must have the same shape");
    if (!pio_tensor_same_shape(gate, out))
        return pio_cuda_shape_error(err, op, "gate", gate, "out", out, "must have the same shape");
    if (pio_cuda_partial_overlap(gate, out) || pio_cuda_partial_overlap(up, out))
        return pio_cuda_shape_error(err, op, "gate", gate, "out", out,
                                    "out overlaps an input without being the same tensor");
    pio_rows g = pio_cuda_rows(gate), u = pio_cuda_rows(up), o = pio_cuda_rows(out);
    if (g.rows == 0 || g.width == 0) return PIO_OK;
    pio_launch(ctx, silu_mul_kernel, ew_grid(g.rows, g.width), dim3(256), 0, g, u, o, round_bf16);
    return pio_cuda_launched(err, op);
}

static __global__ void binary_kernel(int op, pio_rows a, pio_rows b, bool scalar_b, pio_rows o) {
    pio_wait_prior();
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= a.width) return;
    const float bs = scalar_b ? load_act(b.p, 0, b.bf16) : 0.0f;
    for (int64_t r = blockIdx.y; r < a.rows; r += gridDim.y) {
        float x = load_act(a.p, a.at(r) + i, a.bf16);
        float y = scalar_b ? bs : load_act(b.p, b.at(r) + i, b.bf16);
        float z = op == PIO_ADD ? x + y : op == PIO_SUB ? x - y : op == PIO_MUL ? x * y : x / y;
        store_act(o.p, o.at(r) + i, o.bf16, z);
    }
}

pio_status pio_cuda_binary(pio_cuda_ctx *ctx, pio_binary_op bop, const pio_tensor *a,
                           const pio_tensor *b, pio_tensor *out, pio_error *err) {
    const char *op = "binary";
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if ((unsigned)bop > PIO_DIV)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: unknown operation %d", op, (int)bop);
    if (!pio_cuda_check(op, "a", a, DT_ACT, true, err) ||
        !pio_cuda_check(op, "b", b, DT_ACT, true, err) ||
        !pio_cuda_check(op, "out", out, DT_ACT, true, err))
        return PIO_ERR_INVALID;
    bool scalar_b = pio_tensor_numel(b) == 1;
    if (!scalar_b && !pio_tensor_same_shape(a, b))
        return pio_cuda_shape_error(err, op, "a", a, "b", b,
                                    "must have the same shape (or b a single element)");
    if (!pio_tensor_same_shape(a, out))
        return pio_cuda_shape_error(err, op, "a", a, "out", out, "must have the same shape");
    if (pio_cuda_partial_overlap(a, out) || (!scalar_b && pio_cuda_partial_overlap(b, out)) ||
        (scalar_b && pio_cuda_overlap(b, out) && pio_tensor_numel(out) > 1))
        return pio_cuda_shape_error(err, op, "a", a, "out", out,
                                    "out overlaps an input without being the same tensor");
    pio_rows ar = pio_cuda_rows(a), br = pio_cuda_rows(b), orr = pio_cuda_rows(out);
    if (ar.rows == 0 || ar.width == 0) return PIO_OK;
    pio_launch(ctx, binary_kernel, ew_grid(ar.rows, ar.width), dim3(256), 0, (int)bop, ar, br,
               scalar_b, orr);
    return pio_cuda_launched(err, op);
}

static __global__ void round_kernel(pio_rows x) {
    pio_wait_prior();
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= x.width) return;
    for (int64_t r = blockIdx.y; r < x.rows; r += gridDim.y) {
        float *p = (float *)x.p + x.at(r) + i;
        *p = round_bf16(*p);
    }
}

pio_status pio_cuda_round_bf16(pio_cuda_ctx *ctx, pio_tensor *x, pio_error *err) {
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check("round_bf16", "x", x, DT_ACT, true, err)) return PIO_ERR_INVALID;
    if (x->dtype == PIO_BF16) return PIO_OK; /* already bf16 values */
    pio_rows r = pio_cuda_rows(x);
    if (r.rows == 0 || r.width == 0) return PIO_OK;
    pio_launch(ctx, round_kernel, ew_grid(r.rows, r.width), dim3(256), 0, r);
    return pio_cuda_launched(err, "round_bf16");
}

/* ---- softmax ----------------------------------------------------------------------- */

static __global__ void softmax_kernel(pio_rows x) {
    __shared__ float red[32];
    const int64_t d = x.width;
    for (int64_t row = blockIdx.x; row < x.rows; row += gridDim.x) {
        const int64_t o = x.at(row);
        float m = -INFINITY;
        for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
            m = fmaxf(m, load_act(x.p, o + i, x.bf16));
        m = block_max(m, red);
        float s = 0.0f;
        for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
            float e = expf(load_act(x.p, o + i, x.bf16) - m); /* −inf − −inf: NaN, as torch */
            if (!x.bf16) ((float *)x.p)[o + i] = e;
            s += e;
        }
        s = block_sum(s, red);
        for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
            float e = x.bf16 ? expf(load_act(x.p, o + i, true) - m) : ((float *)x.p)[o + i];
            store_act(x.p, o + i, x.bf16, e / s);
        }
    }
}

pio_status pio_cuda_softmax(pio_cuda_ctx *ctx, pio_tensor *x, pio_error *err) {
    pio_status st = pio_cuda_enter(ctx, err);
    if (st) return st;
    if (!pio_cuda_check("softmax", "x", x, DT_ACT, true, err)) return PIO_ERR_INVALID;
    if (x->ndim < 1)
        return pio_error_set(err, PIO_ERR_INVALID, "softmax: x [] has no last dimension");
    pio_rows r = pio_cuda_rows_last(x);
    if (r.rows == 0 || r.width == 0) return PIO_OK;
    softmax_kernel<<<grid_rows(r.rows), row_threads(r.width), 0, ctx->stream>>>(r);
    return pio_cuda_launched(err, "softmax");
}
