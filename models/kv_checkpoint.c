/* Sequence checkpoints (pio/kv.h): a slot's tokens and KV rows in a file,
 * with what they are only valid for (the model and the KV format), so a long
 * shared context is computed once and reloaded later.
 *
 * File (little-endian, as the machine writes it; a checkpoint is a cache, not
 * an interchange format):
 *   header   magic "PIOKVSQ1", architecture[64], n_layer, n_head_kv, head_dim,
 *            model dtype, KV element type, model hash (u64), len
 *   tokens   [len] int32
 *   present  [len] uint8: 1 when the position's KV is held (windowed slots
 *            gave some back)
 *   rows     per layer, per present position: K [kv_heads, head_dim], V
 *            [kv_heads, head_dim] in the KV element type, then (int8) the K
 *            and V scales [kv_heads] f32
 * The model hash covers the hyper-parameters and every weight's name and
 * shape: a file from another model is refused naming what differs. Loading
 * is exact: the same bytes go back into the cache.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "kv_internal.h"
#include "model_internal.h"

static const char MAGIC[8] = {'P', 'I', 'O', 'K', 'V', 'S', 'Q', '1'};

typedef struct {
    char magic[8];
    char architecture[64];
    int32_t n_layer, n_head_kv, head_dim, dtype, elem, len;
    uint64_t model_hash;
} header;

static uint64_t model_hash(const pio_model *m) {
    XXH3_state_t *s = XXH3_createState();
    if (!s) return 0;
    XXH3_64bits_reset(s);
    const pio_hparams *hp = &m->hp;
    int64_t ints[] = {hp->n_vocab, hp->n_embd, hp->n_layer, hp->n_head, hp->n_head_kv,
                      hp->head_dim, hp->n_ff, hp->n_expert, hp->n_expert_used, hp->n_ff_exp,
                      hp->tied_embeddings, m->dtype};
    double reals[] = {hp->rope_theta, hp->norm_eps};
    XXH3_64bits_update(s, hp->architecture, strlen(hp->architecture));
    XXH3_64bits_update(s, ints, sizeof ints);
    XXH3_64bits_update(s, reals, sizeof reals);
    if (hp->sliding_window > 0) { /* windows change every layer's input past the first */
        XXH3_64bits_update(s, &hp->sliding_window, sizeof hp->sliding_window);
        XXH3_64bits_update(s, hp->sliding_layer, (size_t)hp->n_layer);
    }
    for (size_t i = 0; i < m->n_weights; i++) {
        const pio_tensor *t = m->weights[i].t;
        XXH3_64bits_update(s, m->weights[i].name, strlen(m->weights[i].name) + 1);
        XXH3_64bits_update(s, &t->ndim, sizeof t->ndim);
        XXH3_64bits_update(s, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    }
    uint64_t h = XXH3_64bits_digest(s);
    XXH3_freeState(s);
    return h;
}

static header header_of(const pio_model *m, int32_t len) {
    header h = {.n_layer = m->hp.n_layer, .n_head_kv = m->hp.n_head_kv,
                .head_dim = m->hp.head_dim, .dtype = (int32_t)m->dtype,
                .elem = (int32_t)m->kv->elem, .len = len, .model_hash = model_hash(m)};
    memcpy(h.magic, MAGIC, sizeof MAGIC);
    snprintf(h.architecture, sizeof h.architecture, "%s", m->hp.architecture);
    return h;
}

/* Pool block and row of (slot, pos), or -1 when the slot does not hold it. */
static int64_t row_of(const pio_model *m, int32_t seq, int32_t pos) {
    const pio_kv *kv = m->kv;
    if (kv->cfg.layout != PIO_KV_PAGED) return (int64_t)seq * kv->block + pos;
    const pio_kv_seq *s = &kv->seqs[seq];
    int32_t lb = pos / kv->block;
    if (lb >= s->n_table || s->table[lb] < 0) return -1;
    return (int64_t)s->table[lb] * kv->block + pos % kv->block;
}

/* The bytes of one position's K (which 0) or V (1) row, or scales (2, 3). */
static char *row_bytes(const pio_model *m, int layer, int which, int64_t row, size_t *n) {
    const pio_kv_pool *p = &m->kv->pools[layer];
    const size_t heads = (size_t)p->kv_heads, es = pio_kv_elem_size(p->elem);
    if (which < 2) {
        *n = heads * (size_t)p->dk * es;
        return (char *)(which ? p->v : p->k) + (size_t)row * *n;
    }
    *n = heads * sizeof(float);
    return (char *)((which == 2 ? p->k_scale : p->v_scale) + (size_t)row * heads);
}

/* A slot in range, on a model whose cache lives in host memory. */
static pio_status check_slot(const pio_model *m, int32_t seq, pio_error *err) {
    if (seq < 0 || seq >= m->max_seqs)
        return pio_error_set(err, PIO_ERR_RANGE, "sequence slot %d is outside [0, %d)", seq,
                             m->max_seqs);
    if (m->device != PIO_DEVICE_CPU)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "sequence checkpoints run on the CPU only for now");
    return PIO_OK;
}

pio_status pio_model_seq_save(const pio_model *m, int32_t seq, const char *path, pio_error *err) {
    pio_status st = check_slot(m, seq, err);
    if (st) return st;
    const pio_kv_seq *s = &m->kv->seqs[seq];
    if (s->len == 0)
        return pio_error_set(err, PIO_ERR_INVALID, "sequence %d is empty: nothing to save", seq);
    FILE *f = fopen(path, "wb");
    if (!f) return pio_error_set(err, PIO_ERR_IO, "cannot write '%s'", path);
    header h = header_of(m, s->len);
    bool ok = fwrite(&h, sizeof h, 1, f) == 1 &&
              fwrite(s->tokens, sizeof(int32_t), (size_t)s->len, f) == (size_t)s->len;
    for (int32_t p = 0; ok && p < s->len; p++) {
        uint8_t present = row_of(m, seq, p) >= 0;
        ok = fwrite(&present, 1, 1, f) == 1;
    }
    const int parts = m->kv->elem == PIO_KV_ELEM_I8 ? 4 : 2;
    for (int l = 0; ok && l < m->hp.n_layer; l++)
        for (int32_t p = 0; ok && p < s->len; p++) {
            int64_t row = row_of(m, seq, p);
            for (int w = 0; row >= 0 && ok && w < parts; w++) {
                size_t n;
                const char *b = row_bytes(m, l, w, row, &n);
                ok = fwrite(b, 1, n, f) == n;
            }
        }
    if (fclose(f) != 0) ok = false;
    if (!ok) return pio_error_set(err, PIO_ERR_IO, "writing '%s' failed", path);
    return PIO_OK;
}

static const char *elem_name(int32_t e) {
    return e == PIO_KV_ELEM_F32 ? "f32" : e == PIO_KV_ELEM_BF16 ? "bf16" : e == PIO_KV_ELEM_I8 ? "int8" : "?";
}

/* Refuses a file made for another model or KV format, naming the difference. */
static pio_status check_header(const pio_model *m, const header *h, const char *path,
                               pio_error *err) {
    header mine = header_of(m, 0);
    if (memcmp(h->magic, MAGIC, sizeof MAGIC))
        return pio_error_set(err, PIO_ERR_FORMAT, "'%s' is not a pio sequence checkpoint", path);
    if (strncmp(h->architecture, mine.architecture, sizeof h->architecture))
        return pio_error_set(err, PIO_ERR_FORMAT, "'%s' is from a %.64s model, this one is %s",
                             path, h->architecture, mine.architecture);
    if (h->n_layer != mine.n_layer || h->n_head_kv != mine.n_head_kv ||
        h->head_dim != mine.head_dim)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "'%s' is from a model with %d layers, %d kv heads of %d; this one "
                             "has %d layers, %d kv heads of %d", path, h->n_layer, h->n_head_kv,
                             h->head_dim, mine.n_layer, mine.n_head_kv, mine.head_dim);
    if (h->elem != mine.elem)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "'%s' holds %s KV, this model's cache is %s", path,
                             elem_name(h->elem), elem_name(mine.elem));
    if (h->model_hash != mine.model_hash)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "'%s' is from another model: the configuration or the weights' "
                             "names and shapes differ", path);
    if (h->len <= 0 || h->len > pio_kv_max_pos(m))
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "'%s' holds %d positions; this model's context is %d", path, h->len,
                             m->n_ctx);
    return PIO_OK;
}

pio_status pio_model_seq_load(pio_model *m, int32_t seq, const char *path, pio_error *err) {
    pio_status st = check_slot(m, seq, err);
    if (st) return st;
    FILE *f = fopen(path, "rb");
    if (!f) return pio_error_set(err, PIO_ERR_IO, "cannot open '%s'", path);
    header h;
    if (fread(&h, sizeof h, 1, f) != 1)
        st = pio_error_set(err, PIO_ERR_FORMAT, "'%s' is too short for a checkpoint", path);
    if (st == PIO_OK) st = check_header(m, &h, path, err);
    int32_t *tokens = NULL;
    uint8_t *present = NULL;
    if (st == PIO_OK) {
        tokens = malloc(sizeof *tokens * (size_t)h.len);
        present = malloc((size_t)h.len);
        if (!tokens || !present) st = pio_error_set(err, PIO_ERR_OOM, "out of memory");
    }
    if (st == PIO_OK && (fread(tokens, sizeof *tokens, (size_t)h.len, f) != (size_t)h.len ||
                         fread(present, 1, (size_t)h.len, f) != (size_t)h.len))
        st = pio_error_set(err, PIO_ERR_FORMAT, "'%s' is truncated", path);
    for (int32_t p = 0; st == PIO_OK && p < h.len; p++)
        if (tokens[p] < 0 || tokens[p] >= m->hp.n_vocab)
            st = pio_error_set(err, PIO_ERR_FORMAT, "'%s': token %d at position %d is outside "
                               "the vocabulary", path, tokens[p], p);
    if (st == PIO_OK) {
        /* Room for the positions the file holds: a forward of its tokens would
         * reserve the same (the last ones decide a windowed slot's blocks). */
        pio_model_seq_free(m, seq);
        st = pio_model_seq_reserve(m, seq, h.len, err);
    }
    if (st == PIO_OK) {
        pio_kv_seq *s = &m->kv->seqs[seq];
        /* Mark positions held, so row_of finds their blocks; the tokens follow. */
        int32_t *t = realloc(s->tokens, sizeof *t * (size_t)h.len);
        if (!t) st = pio_error_set(err, PIO_ERR_OOM, "out of memory");
        else {
            s->tokens = t;
            s->cap_tokens = s->cap_tokens > h.len ? s->cap_tokens : h.len;
            memcpy(s->tokens, tokens, sizeof *t * (size_t)h.len);
            s->len = h.len;
        }
    }
    const int parts = m->kv->elem == PIO_KV_ELEM_I8 ? 4 : 2;
    for (int l = 0; st == PIO_OK && l < m->hp.n_layer; l++)
        for (int32_t p = 0; st == PIO_OK && p < h.len; p++) {
            if (!present[p]) continue;
            int64_t row = row_of(m, seq, p);
            for (int w = 0; st == PIO_OK && w < parts; w++) {
                size_t n;
                char *b = row >= 0 ? row_bytes(m, l, w, row, &n) : NULL;
                if (!b) { /* held then, out of the window now: skip its bytes */
                    row_bytes(m, l, w, 0, &n);
                    if (fseek(f, (long)n, SEEK_CUR))
                        st = pio_error_set(err, PIO_ERR_FORMAT, "'%s' is truncated", path);
                    continue;
                }
                if (fread(b, 1, n, f) != n)
                    st = pio_error_set(err, PIO_ERR_FORMAT, "'%s' is truncated", path);
            }
        }
    if (st != PIO_OK) pio_model_seq_free(m, seq);
    free(tokens);
    free(present);
    fclose(f);
    return st;
}

/* ---- swap to host memory ----------------------------------------------------------
 * The checkpoint's layout in one buffer: tokens [len], present [len], then per
 * layer, per present position, K, V (and the int8 scales) rows. */

struct pio_kv_swap {
    int32_t len, n_layer, elem;
    size_t bytes; /* of data */
    int32_t *tokens;
    uint8_t *present;
    char *rows;
    char data[];
};

pio_kv_swap *pio_model_seq_swap_out(pio_model *m, int32_t seq, pio_error *err) {
    if (seq < 0 || seq >= m->max_seqs) {
        pio_error_set(err, PIO_ERR_RANGE, "sequence slot %d is outside [0, %d)", seq, m->max_seqs);
        return NULL;
    }
    if (m->device != PIO_DEVICE_CPU) {
        pio_error_set(err, PIO_ERR_UNSUPPORTED, "swapping KV to host memory runs on the CPU only for now");
        return NULL;
    }
    const pio_kv_seq *s = &m->kv->seqs[seq];
    if (s->len == 0) {
        pio_error_set(err, PIO_ERR_INVALID, "sequence %d is empty: nothing to swap out", seq);
        return NULL;
    }
    const int parts = m->kv->elem == PIO_KV_ELEM_I8 ? 4 : 2;
    size_t per_pos = 0, n;
    for (int w = 0; w < parts; w++) row_bytes(m, 0, w, 0, &n), per_pos += n;
    int32_t held = 0;
    for (int32_t p = 0; p < s->len; p++) held += row_of(m, seq, p) >= 0;
    size_t head = (size_t)s->len * (sizeof(int32_t) + 1);
    head = (head + 15) & ~(size_t)15;
    size_t bytes = head + (size_t)m->hp.n_layer * (size_t)held * per_pos;
    pio_kv_swap *sw = malloc(sizeof *sw + bytes);
    if (!sw) {
        pio_error_set(err, PIO_ERR_OOM, "out of host memory swapping out sequence %d (%zu bytes)",
                      seq, bytes);
        return NULL;
    }
    *sw = (pio_kv_swap){.len = s->len, .n_layer = m->hp.n_layer, .elem = (int32_t)m->kv->elem,
                        .bytes = bytes};
    sw->tokens = (int32_t *)sw->data;
    sw->present = (uint8_t *)(sw->tokens + s->len);
    sw->rows = sw->data + head;
    memcpy(sw->tokens, s->tokens, (size_t)s->len * sizeof *sw->tokens);
    for (int32_t p = 0; p < s->len; p++) sw->present[p] = row_of(m, seq, p) >= 0;
    char *out = sw->rows;
    for (int l = 0; l < m->hp.n_layer; l++)
        for (int32_t p = 0; p < s->len; p++) {
            int64_t row = row_of(m, seq, p);
            for (int w = 0; row >= 0 && w < parts; w++) {
                const char *b = row_bytes(m, l, w, row, &n);
                memcpy(out, b, n);
                out += n;
            }
        }
    pio_model_seq_free(m, seq);
    return sw;
}

pio_status pio_model_seq_swap_in(pio_model *m, int32_t seq, const pio_kv_swap *sw, pio_error *err) {
    if (seq < 0 || seq >= m->max_seqs)
        return pio_error_set(err, PIO_ERR_RANGE, "sequence slot %d is outside [0, %d)", seq,
                             m->max_seqs);
    if (sw->elem != (int32_t)m->kv->elem || sw->n_layer != m->hp.n_layer)
        return pio_error_set(err, PIO_ERR_INVALID,
                             "the KV cache changed since the sequence was swapped out (%s KV, "
                             "%d layers then; %s, %d now)", elem_name(sw->elem), sw->n_layer,
                             elem_name((int32_t)m->kv->elem), m->hp.n_layer);
    pio_model_seq_free(m, seq);
    pio_status st = pio_model_seq_reserve(m, seq, sw->len, err);
    if (st) return st;
    pio_kv_seq *s = &m->kv->seqs[seq];
    if (s->cap_tokens < sw->len) {
        int32_t *t = realloc(s->tokens, sizeof *t * (size_t)sw->len);
        if (!t) {
            pio_model_seq_free(m, seq);
            return pio_error_set(err, PIO_ERR_OOM, "out of memory");
        }
        s->tokens = t;
        s->cap_tokens = sw->len;
    }
    memcpy(s->tokens, sw->tokens, sizeof *s->tokens * (size_t)sw->len);
    s->len = sw->len;
    const int parts = m->kv->elem == PIO_KV_ELEM_I8 ? 4 : 2;
    const char *in = sw->rows;
    for (int l = 0; l < m->hp.n_layer; l++)
        for (int32_t p = 0; p < sw->len; p++) {
            if (!sw->present[p]) continue;
            int64_t row = row_of(m, seq, p);
            for (int w = 0; w < parts; w++) {
                size_t n;
                char *b = row >= 0 ? row_bytes(m, l, w, row, &n) : (row_bytes(m, l, w, 0, &n), NULL);
                if (b) memcpy(b, in, n); /* else out of the window now (as in a checkpoint) */
                in += n;
            }
        }
    return PIO_OK;
}

size_t pio_kv_swap_bytes(const pio_kv_swap *sw) { return sw ? sizeof *sw + sw->bytes : 0; }
int32_t pio_kv_swap_length(const pio_kv_swap *sw) { return sw ? sw->len : 0; }
void pio_kv_swap_free(pio_kv_swap *sw) { free(sw); }
