/* Timed forward passes, decode byte counts and weight saving for benchmark
 * suites (pio/bench.h). */
#define _GNU_SOURCE
#include "pio/bench.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"
#include "model_internal.h"
#include "pio/generate.h"

pio_status pio_model_bench_forward(pio_model *m, int32_t n_tokens, int32_t n_past,
                                   int32_t n_batch, double *seconds, pio_error *err) {
    *seconds = 0;
    if (n_tokens <= 0 || n_past < 0)
        return pio_error_set(err, PIO_ERR_INVALID, "n_tokens must be > 0 and n_past >= 0");
    if ((int64_t)n_past + n_tokens > m->n_ctx)
        return pio_error_set(err, PIO_ERR_RANGE,
                             "%d tokens after %d do not fit the context of %d (load with a "
                             "larger ctx)", n_tokens, n_past, m->n_ctx);
    if (n_batch <= 0 || n_batch > n_tokens) n_batch = n_tokens;
    int32_t *tok = malloc((size_t)n_batch * 3 * sizeof *tok);
    bool *want = malloc((size_t)n_batch * sizeof *want);
    if (!tok || !want) {
        free(tok);
        free(want);
        return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    }
    int32_t *pos = tok + n_batch, *seq = pos + n_batch;
    uint64_t rng = 0x2545f4914f6cdd1dull ^ (uint64_t)n_past;
    pio_status st = PIO_OK;
    for (int32_t done = 0; done < n_tokens && st == PIO_OK; done += n_batch) {
        int32_t n = n_tokens - done < n_batch ? n_tokens - done : n_batch;
        for (int32_t i = 0; i < n; i++) { /* llama-bench feeds random ids too */
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            tok[i] = (int32_t)(rng % (uint64_t)m->hp.n_vocab);
            pos[i] = n_past + done + i;
            seq[i] = 0;
            want[i] = i == n - 1;
        }
        pio_batch b = {n, tok, pos, seq, want};
        double t0 = pio_now();
        st = pio_model_forward(m, &b, NULL, err);
        *seconds += pio_now() - t0;
    }
    free(tok);
    free(want);
    return st;
}

pio_status pio_model_bench_decode(pio_model *m, int32_t n_seqs, int32_t n_steps, int32_t depth,
                                  double *seconds, pio_error *err) {
    *seconds = 0;
    if (n_seqs <= 0 || n_seqs > m->max_seqs || n_steps <= 0 || depth < 0)
        return pio_error_set(err, PIO_ERR_INVALID, "bench_decode: %d sequences (max_seqs %d), %d "
                             "steps, depth %d: need 1..max_seqs sequences, steps > 0, depth >= 0",
                             n_seqs, m->max_seqs, n_steps, depth);
    if ((int64_t)depth + n_steps > m->n_ctx)
        return pio_error_set(err, PIO_ERR_RANGE, "bench_decode: depth %d + %d steps exceed the "
                             "context of %d (load with a larger ctx)", depth, n_steps, m->n_ctx);
    pio_status st = PIO_OK;
    for (int32_t s = 0; s < n_seqs && depth > 0 && st == PIO_OK; s++) {
        /* the prompt of sequence s (slot 0 is what pio_model_bench_forward fills) */
        int32_t *tok = malloc((size_t)depth * 3 * sizeof *tok);
        if (!tok) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
        int32_t *pos = tok + depth, *seq = pos + depth;
        for (int32_t i = 0; i < depth; i++)
            tok[i] = (int32_t)((i * 7919 + s * 104729) % m->hp.n_vocab), pos[i] = i, seq[i] = s;
        pio_batch b = {depth, tok, pos, seq, NULL};
        st = pio_model_forward(m, &b, NULL, err);
        free(tok);
    }
    int32_t *tok = malloc((size_t)n_seqs * 3 * sizeof *tok);
    if (!tok) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    int32_t *pos = tok + n_seqs, *seq = pos + n_seqs;
    for (int32_t step = 0; step < n_steps && st == PIO_OK; step++) {
        for (int32_t s = 0; s < n_seqs; s++)
            tok[s] = (int32_t)((step * 31 + s * 17) % m->hp.n_vocab), pos[s] = depth + step, seq[s] = s;
        pio_batch b = {n_seqs, tok, pos, seq, NULL};
        double t0 = pio_now();
        st = pio_model_forward(m, &b, NULL, err);
        *seconds += pio_now() - t0;
    }
    free(tok);
    return st;
}

size_t pio_model_decode_bytes(const pio_model *m) {
    size_t bytes = 0;
    for (size_t i = 0; i < m->n_weights; i++) {
        const char *name = m->weights[i].name;
        bool embed = strstr(name, "embed_tokens") != NULL;
        size_t nb = pio_tensor_nbytes(m->weights[i].t);
        /* A MoE layer's step reads top_k of its experts (per-expert tensors or stacks). */
        if (m->hp.n_expert > 0 && strstr(name, ".mlp.experts."))
            nb = nb / (size_t)m->hp.n_expert * (size_t)m->hp.n_expert_used;
        if (!embed || m->hp.tied_embeddings) bytes += nb;
    }
    return bytes;
}

/* ---- safetensors writer ---------------------------------------------------- */

static const char *st_dtype(pio_dtype dt) {
    return dt == PIO_F32 ? "F32" : dt == PIO_BF16 ? "BF16" : "F16";
}

pio_status pio_model_save(const pio_model *m, const char *path, pio_error *err) {
    if (m->n_weights == 0)
        return pio_error_set(err, PIO_ERR_INVALID, "this model lists no weights to save");
    if (m->cuda)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "saving weights from a model on CUDA is not supported (load it on the CPU)");
    /* The header: {"name": {"dtype", "shape", "data_offsets"}, ...}, padded
     * with spaces to a multiple of 8 bytes as the format recommends. */
    size_t cap = 256 + m->n_weights * 192, len = 0;
    char *head = malloc(cap);
    if (!head) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    len += (size_t)snprintf(head + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    size_t offset = 0;
    for (size_t i = 0; i < m->n_weights; i++) {
        const pio_tensor *t = m->weights[i].t;
        size_t nb = pio_tensor_nbytes(t);
        len += (size_t)snprintf(head + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                                m->weights[i].name, st_dtype(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            len += (size_t)snprintf(head + len, cap - len, "%s%lld", d ? "," : "",
                                    (long long)t->shape[d]);
        len += (size_t)snprintf(head + len, cap - len, "],\"data_offsets\":[%zu,%zu]}", offset,
                                offset + nb);
        offset += nb;
    }
    len += (size_t)snprintf(head + len, cap - len, "}");
    while (len % 8 && len + 1 < cap) head[len++] = ' ';
    if (len + 1 >= cap) {
        free(head);
        return pio_error_set(err, PIO_ERR_INVALID, "safetensors header too long");
    }

    FILE *f = fopen(path, "wb");
    if (!f) {
        free(head);
        return pio_error_set(err, PIO_ERR_IO, "cannot create '%s': %s", path, strerror(errno));
    }
    uint64_t hlen = len; /* little-endian u64, as on every machine pio runs on */
    bool ok = fwrite(&hlen, 8, 1, f) == 1 && fwrite(head, 1, len, f) == len;
    free(head);
    for (size_t i = 0; ok && i < m->n_weights; i++) {
        const pio_tensor *t = m->weights[i].t;
        size_t nb = pio_tensor_nbytes(t);
        ok = fwrite(pio_tensor_data(t), 1, nb, f) == nb;
    }
    if (fclose(f) != 0) ok = false;
    if (!ok) return pio_error_set(err, PIO_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
    return PIO_OK;
}

double pio_read_bandwidth(int threads, size_t bytes, int reps, pio_error *err) {
    pio_threadpool *pool = pio_threadpool_new(threads, err);
    if (!pool) return 0;
    double bw = pio_cpu_read_bandwidth(pool, bytes, reps, err);
    pio_threadpool_free(pool);
    return bw;
}
