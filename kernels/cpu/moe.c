/* Mixture-of-experts kernels: routing, grouping the token-choice pairs by
 * expert, gathering their input rows and combining the weighted expert
 * outputs (see cpu_ops.h). The expert matmuls themselves are pio_cpu_matmul
 * on each expert's contiguous group of rows, called by pio_build_moe. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_features.h"
#include "cpu_internal.h"
#include "matmul_kernels.h"

/* Per-token scratch lives on the stack; real models have at most a few hundred. */
#define PIO_MOE_MAX_EXPERTS 4096

/* ---- route ------------------------------------------------------------------ */

/* Index of the largest value among those not yet taken: the first one among
 * exact ties (lower index), and never -1 while something is left, even for
 * NaN or −inf scores. */
static int32_t best_untaken(const float *v, const bool *taken, int32_t n) {
    int32_t best = -1;
    for (int32_t e = 0; e < n; e++) {
        if (taken[e]) continue;
        if (best < 0 || v[e] > v[best]) best = e;
    }
    return best;
}

static pio_status check_route(const pio_tensor *logits, const pio_moe_route_params *p,
                              pio_error *err) {
    const char *op = "moe_route";
    char s[PIO_SHAPE_BUF];
    if (!pio_cpu_check_f32(op, "logits", logits, err)) return PIO_ERR_INVALID;
    if (logits->ndim != 2)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: logits %s must be [n, n_expert]", op,
                             pio_shape_str(logits, s, sizeof s));
    int64_t E = logits->shape[1];
    if (E < 1 || E > PIO_MOE_MAX_EXPERTS)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: %lld experts, must be in [1, %d]", op,
                             (long long)E, PIO_MOE_MAX_EXPERTS);
    if (p->top_k < 1 || p->top_k > E)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: top_k %d must be in [1, %lld]", op,
                             p->top_k, (long long)E);
    if (p->scoring != PIO_MOE_SOFTMAX && p->scoring != PIO_MOE_SIGMOID)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: unknown scoring %d", op, (int)p->scoring);
    if (p->n_group > 1) {
        if (E % p->n_group != 0 || E / p->n_group < 2)
            return pio_error_set(err, PIO_ERR_INVALID,
                                 "%s: %lld experts do not split into %d groups of two or more",
                                 op, (long long)E, p->n_group);
        if (p->topk_group < 1 || p->topk_group > p->n_group)
            return pio_error_set(err, PIO_ERR_INVALID, "%s: topk_group %d must be in [1, %d]",
                                 op, p->topk_group, p->n_group);
        if ((int64_t)p->top_k > (int64_t)p->topk_group * (E / p->n_group))
            return pio_error_set(err, PIO_ERR_INVALID,
                                 "%s: top_k %d exceeds the %lld experts of %d kept group(s)", op,
                                 p->top_k, (long long)(p->topk_group * (E / p->n_group)),
                                 p->topk_group);
    }
    return PIO_OK;
}

/* Keeps the topk_group groups whose two best choice values sum highest and sets
 * every other expert's choice to −inf (as transformers' masked_fill). */
static void mask_groups(float *choice, bool *taken, int32_t E, const pio_moe_route_params *p) {
    int32_t gs = E / p->n_group;
    float group_score[p->n_group];
    bool kept[p->n_group];
    for (int32_t g = 0; g < p->n_group; g++) {
        const float *c = choice + (int64_t)g * gs;
        int32_t a = best_untaken(c, taken, gs); /* taken is all false here */
        taken[a] = true;
        int32_t b = best_untaken(c, taken, gs);
        taken[a] = false;
        group_score[g] = c[a] + c[b];
        kept[g] = false;
    }
    for (int32_t i = 0; i < p->topk_group; i++) kept[best_untaken(group_score, kept, p->n_group)] = true;
    for (int32_t g = 0; g < p->n_group; g++)
        if (!kept[g])
            for (int32_t e = 0; e < gs; e++) choice[(int64_t)g * gs + e] = -INFINITY;
}

pio_status pio_cpu_moe_route(const pio_tensor *logits, const pio_moe_route_params *p,
                             int32_t *ids, float *weights, pio_error *err) {
    pio_status st = check_route(logits, p, err);
    if (st) return st;
    const int64_t n = logits->shape[0];
    const int32_t E = (int32_t)logits->shape[1], K = p->top_k;
    const float *x = pio_tensor_data(logits);
    float score[E], choice[E];
    bool taken[E];
    for (int64_t t = 0; t < n; t++) {
        const float *row = x + t * E;
        if (p->scoring == PIO_MOE_SOFTMAX) {
            float max = row[0], sum = 0.0f;
            for (int32_t e = 1; e < E; e++) max = row[e] > max ? row[e] : max;
            for (int32_t e = 0; e < E; e++) sum += score[e] = expf(row[e] - max);
            for (int32_t e = 0; e < E; e++) score[e] /= sum;
        } else {
            for (int32_t e = 0; e < E; e++) score[e] = 1.0f / (1.0f + expf(-row[e]));
        }
        for (int32_t e = 0; e < E; e++) {
            choice[e] = p->bias ? score[e] + p->bias[e] : score[e];
            taken[e] = false;
        }
        if (p->n_group > 1) mask_groups(choice, taken, E, p);

        int32_t *id = ids + t * K;
        float *w = weights + t * K, sum = 0.0f;
        for (int32_t j = 0; j < K; j++) {
            id[j] = best_untaken(choice, taken, E);
            taken[id[j]] = true;
            w[j] = score[id[j]];
            sum += w[j];
        }
        for (int32_t j = 0; j < K; j++) {
            if (p->norm) w[j] /= sum + p->norm_eps;
            w[j] *= p->scale;
            if (p->round_bf16) w[j] = pio_round_bf16(w[j]);
        }
    }
    return PIO_OK;
}

/* ---- sort and gather -------------------------------------------------------- */

pio_status pio_cpu_moe_sort(const int32_t *ids, int64_t n_pairs, int32_t n_expert,
                            int32_t *offsets, int32_t *pair_of_row, int32_t *row_of_pair,
                            pio_error *err) {
    if (n_expert < 1 || n_pairs < 0 || n_pairs > INT32_MAX)
        return pio_error_set(err, PIO_ERR_INVALID,
                             "moe_sort: %lld pairs over %d experts (need >= 1 expert)",
                             (long long)n_pairs, n_expert);
    memset(offsets, 0, (size_t)(n_expert + 1) * sizeof *offsets);
    for (int64_t i = 0; i < n_pairs; i++) {
        if (ids[i] < 0 || ids[i] >= n_expert)
            return pio_error_set(err, PIO_ERR_RANGE, "moe_sort: expert id %d at pair %lld is "
                                 "outside [0, %d)", ids[i], (long long)i, n_expert);
        offsets[ids[i] + 1]++;
    }
    for (int32_t e = 0; e < n_expert; e++) offsets[e + 1] += offsets[e];
    /* Pairs in ascending order land in ascending rows of their expert: stable. */
    for (int64_t i = 0; i < n_pairs; i++) {
        int32_t r = offsets[ids[i]]++;
        pair_of_row[r] = (int32_t)i;
        row_of_pair[i] = r;
    }
    for (int32_t e = n_expert; e > 0; e--) offsets[e] = offsets[e - 1];
    offsets[0] = 0;
    return PIO_OK;
}

pio_status pio_cpu_moe_gather(const pio_tensor *x, const int32_t *pair_of_row, int32_t top_k,
                              pio_tensor *out, pio_error *err) {
    const char *op = "moe_gather";
    if (!pio_cpu_check_f32(op, "x", x, err) || !pio_cpu_check_f32(op, "out", out, err))
        return PIO_ERR_INVALID;
    if (x->ndim != 2 || out->ndim != 2 || x->shape[1] != out->shape[1] || top_k < 1 ||
        out->shape[0] > x->shape[0] * top_k)
        return pio_cpu_shape_error(err, op, "x", x, "out", out,
                                   "do not fit out[rows, d] with rows <= n * top_k from x[n, d]");
    if (pio_cpu_overlap(x, out))
        return pio_cpu_shape_error(err, op, "x", x, "out", out, "overlap in memory");
    const int64_t rows = out->shape[0], d = x->shape[1], n = x->shape[0];
    const float *src = pio_tensor_data(x);
    float *dst = pio_tensor_data(out);
    for (int64_t r = 0; r < rows; r++) {
        int64_t t = pair_of_row[r] / top_k;
        if (pair_of_row[r] < 0 || t >= n)
            return pio_error_set(err, PIO_ERR_RANGE, "%s: row %lld names pair %d, outside [0, "
                                 "%lld)", op, (long long)r, pair_of_row[r],
                                 (long long)(n * top_k));
        memcpy(dst + r * d, src + t * d, (size_t)d * sizeof(float));
    }
    return PIO_OK;
}

/* ---- combine ---------------------------------------------------------------- */

typedef struct {
    const float *y;
    float *out;
    const int32_t *row_of_pair, *ids;
    const float *w;
    int32_t k;
    int64_t n, d;
    pio_moe_accum accum;
    bool round_bf16;
    int n_tasks;
} combine_ctx;

static void combine_token(const combine_ctx *c, int64_t t) {
    const int32_t k = c->k;
    int32_t order[k];
    for (int32_t j = 0; j < k; j++) order[j] = j;
    if (c->accum == PIO_MOE_ACCUM_EXPERT_ORDER) { /* insertion sort by expert id */
        const int32_t *id = c->ids + t * k;
        for (int32_t j = 1; j < k; j++)
            for (int32_t i = j; i > 0 && id[order[i]] < id[order[i - 1]]; i--) {
                int32_t tmp = order[i];
                order[i] = order[i - 1];
                order[i - 1] = tmp;
            }
    }
    float *o = c->out + t * c->d;
    memset(o, 0, (size_t)c->d * sizeof(float));
    /* Expert order rounds the running sum after every add; f32 only at the end. */
    bool round_each = c->round_bf16 && c->accum == PIO_MOE_ACCUM_EXPERT_ORDER;
    for (int32_t j = 0; j < k; j++) {
        int64_t pair = t * k + order[j];
        const float *y = c->y + (int64_t)c->row_of_pair[pair] * c->d;
        const float w = c->w[pair];
        if (c->round_bf16) {
            if (round_each)
                for (int64_t i = 0; i < c->d; i++) o[i] = pio_round_bf16(o[i] + pio_round_bf16(w * y[i]));
            else
                for (int64_t i = 0; i < c->d; i++) o[i] += pio_round_bf16(w * y[i]);
        } else {
            for (int64_t i = 0; i < c->d; i++) o[i] += w * y[i];
        }
    }
    if (c->round_bf16 && !round_each)
        for (int64_t i = 0; i < c->d; i++) o[i] = pio_round_bf16(o[i]);
}

static void combine_task(void *arg, int task, int thread) {
    (void)thread;
    const combine_ctx *c = arg;
    int64_t t0, t1;
    pio_cpu_task_range(c->n, c->n_tasks, task, 1, &t0, &t1);
    for (int64_t t = t0; t < t1; t++) combine_token(c, t);
}

pio_status pio_cpu_moe_combine(pio_threadpool *pool, const pio_tensor *y,
                               const int32_t *row_of_pair, const int32_t *ids,
                               const float *weights, int32_t top_k, pio_moe_accum accum,
                               bool round_bf16, pio_tensor *out, pio_error *err) {
    const char *op = "moe_combine";
    if (!pio_cpu_check_f32(op, "y", y, err) || !pio_cpu_check_f32(op, "out", out, err))
        return PIO_ERR_INVALID;
    if (y->ndim != 2 || out->ndim != 2 || top_k < 1 || y->shape[1] != out->shape[1] ||
        y->shape[0] != out->shape[0] * top_k)
        return pio_cpu_shape_error(err, op, "y", y, "out", out,
                                   "do not fit y[n * top_k, d] → out[n, d]");
    if (pio_cpu_overlap(y, out))
        return pio_cpu_shape_error(err, op, "y", y, "out", out, "overlap in memory");
    if (accum != PIO_MOE_ACCUM_EXPERT_ORDER && accum != PIO_MOE_ACCUM_F32)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: unknown accumulation %d", op, (int)accum);
    combine_ctx c = {.y = pio_tensor_data(y), .out = pio_tensor_data(out),
                     .row_of_pair = row_of_pair, .ids = ids, .w = weights, .k = top_k,
                     .n = out->shape[0], .d = out->shape[1], .accum = accum,
                     .round_bf16 = round_bf16};
    for (int64_t i = 0; i < c.n * top_k; i++)
        if (row_of_pair[i] < 0 || row_of_pair[i] >= c.n * top_k)
            return pio_error_set(err, PIO_ERR_RANGE, "%s: pair %lld names row %d, outside [0, "
                                 "%lld)", op, (long long)i, row_of_pair[i],
                                 (long long)(c.n * top_k));
    if (c.n == 0 || c.d == 0) return PIO_OK;
    /* A task should move at least ~64K values, or waking threads costs more than it saves. */
    int64_t per_token = (int64_t)top_k * c.d;
    c.n_tasks = pio_cpu_n_tasks(pool, c.n, (65536 + per_token - 1) / per_token);
    pio_threadpool_run(pool, c.n_tasks, combine_task, &c);
    return PIO_OK;
}

/* ---- grouped matmul ---------------------------------------------------------- */

enum { ROW_GRANULE = 4, STACK_JOBS = 64 };

typedef struct {
    pio_matmul_job *job;
    pio_matmul_kernel *kernel;
    int32_t *first_task; /* tasks of job j: first_task[j] .. first_task[j+1]-1 */
    int n_jobs;
} grouped_ctx;

static void grouped_task(void *arg, int task, int thread) {
    (void)thread;
    const grouped_ctx *c = arg;
    int lo = 0, hi = c->n_jobs - 1; /* the job whose task range holds `task` */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (c->first_task[mid] <= task) lo = mid;
        else hi = mid - 1;
    }
    const pio_matmul_job *job = &c->job[lo];
    int n = c->first_task[lo + 1] - c->first_task[lo];
    int64_t m0, m1;
    pio_cpu_task_range(job->m, n, task - c->first_task[lo], ROW_GRANULE, &m0, &m1);
    if (m0 < m1) c->kernel[lo](job, m0, m1);
}

static pio_matmul_kernel pick_kernel(pio_dtype w_dtype) { /* as pio_cpu_matmul's */
    bool bf16 = w_dtype == PIO_BF16;
    if (pio_cpu_level_get() >= PIO_CPU_AVX512)
        return bf16 ? pio_matmul_bf16_avx512 : pio_matmul_f32_avx512;
    return bf16 ? pio_matmul_bf16_avx2 : pio_matmul_f32_avx2;
}

static pio_status check_job(const char *op, int j, const pio_tensor *x, const pio_tensor *w,
                            const pio_tensor *y, pio_error *err) {
    if (!pio_cpu_check_f32(op, "x", x, err) || !pio_cpu_check_f32_bf16(op, "w", w, err) ||
        !pio_cpu_check_f32(op, "y", y, err))
        return pio_error_prefix(err, "job %d", j);
    if (w->ndim != 2 || x->ndim != 2 || y->ndim != 2 || x->shape[1] != w->shape[1]) {
        pio_cpu_shape_error(err, op, "x", x, "w", w, "do not fit x[n, k] · w[m, k]ᵀ");
        return pio_error_prefix(err, "job %d", j);
    }
    if (y->shape[0] != x->shape[0] || y->shape[1] != w->shape[0]) {
        pio_cpu_shape_error(err, op, "x", x, "y", y, "do not fit y[n, m] = x[n, k] · w[m, k]ᵀ");
        return pio_error_prefix(err, "job %d", j);
    }
    if (pio_cpu_overlap(x, y) || pio_cpu_overlap(w, y)) {
        pio_cpu_shape_error(err, op, "x", x, "y", y, "overlap in memory (or w and y do)");
        return pio_error_prefix(err, "job %d", j);
    }
    return PIO_OK;
}

pio_status pio_cpu_matmul_grouped(pio_threadpool *pool, int n_jobs, const pio_tensor *const *x,
                                  const pio_tensor *const *w, pio_tensor *const *y,
                                  pio_error *err) {
    const char *op = "matmul_grouped";
    if (n_jobs < 0)
        return pio_error_set(err, PIO_ERR_INVALID, "%s: %d jobs", op, n_jobs);
    for (int j = 0; j < n_jobs; j++) {
        pio_status st = check_job(op, j, x[j], w[j], y[j], err);
        if (st) return st;
    }
    pio_matmul_job job_buf[STACK_JOBS];
    pio_matmul_kernel kernel_buf[STACK_JOBS];
    int32_t first_buf[STACK_JOBS + 1];
    grouped_ctx c = {job_buf, kernel_buf, first_buf, 0};
    void *heap = NULL;
    if (n_jobs > STACK_JOBS) { /* a prompt that hits many experts: one allocation per call */
        heap = malloc((size_t)n_jobs * (sizeof *c.job + sizeof *c.kernel + sizeof *c.first_task) +
                      sizeof *c.first_task);
        if (!heap) return pio_error_set(err, PIO_ERR_OOM, "%s: out of memory", op);
        c.job = heap;
        c.kernel = (pio_matmul_kernel *)(c.job + n_jobs);
        c.first_task = (int32_t *)(c.kernel + n_jobs);
    }
    int64_t total_rows = 0, most_macs = 1;
    for (int j = 0; j < n_jobs; j++) {
        pio_matmul_job job = {.x = pio_tensor_data(x[j]), .w = pio_tensor_data(w[j]),
                              .y = pio_tensor_data(y[j]), .n = x[j]->shape[0],
                              .k = w[j]->shape[1], .m = w[j]->shape[0]};
        if (job.n == 0 || job.m == 0) continue;
        if (job.k == 0) { /* an empty sum */
            memset(job.y, 0, (size_t)(job.n * job.m) * sizeof(float));
            continue;
        }
        c.job[c.n_jobs] = job;
        c.kernel[c.n_jobs++] = pick_kernel(w[j]->dtype);
        total_rows += job.m;
        most_macs = job.n * job.k > most_macs ? job.n * job.k : most_macs;
    }
    if (c.n_jobs > 0) {
        /* Rows per task: about 4 tasks per thread over all the jobs together, none
         * under ~64K multiply-adds (waking threads costs more than it saves), whole
         * register tiles; a job smaller than that is one task. */
        int threads = pio_threadpool_size(pool);
        int64_t rows = threads > 1 ? (total_rows + 4 * threads - 1) / (4 * threads) : total_rows;
        int64_t min_rows = (65536 + most_macs - 1) / most_macs;
        rows = rows < min_rows ? min_rows : rows;
        rows = (rows + ROW_GRANULE - 1) / ROW_GRANULE * ROW_GRANULE;
        c.first_task[0] = 0;
        for (int j = 0; j < c.n_jobs; j++)
            c.first_task[j + 1] = c.first_task[j] + (int32_t)((c.job[j].m + rows - 1) / rows);
        pio_threadpool_run(pool, c.first_task[c.n_jobs], grouped_task, &c);
    }
    free(heap);
    return PIO_OK;
}
