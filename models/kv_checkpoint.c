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
 *
 * Rows move between the cache and host memory one layer at a time, a run of
 * consecutive rows (one block, or a contiguous slot) per copy: memcpy on the
 * CPU, device copies through pinned memory on CUDA (pio_kv_copy_rows).
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

static pio_status check_slot(const pio_model *m, int32_t seq, pio_error *err) {
    if (seq < 0 || seq >= m->max_seqs)
        return pio_error_set(err, PIO_ERR_RANGE, "sequence slot %d is outside [0, %d)", seq,
                             m->max_seqs);
    return PIO_OK;
}

static int n_parts(const pio_model *m) { return m->kv->elem == PIO_KV_ELEM_I8 ? 4 : 2; }

/* Bytes of one held position in one layer: K, V (and the int8 scales). */
static size_t pos_bytes(const pio_model *m) {
    size_t per_pos = 0, n;
    for (int w = 0; w < n_parts(m); w++) row_bytes(m, 0, w, 0, &n), per_pos += n;
    return per_pos;
}

/* Layer `l` of slot `seq` between the cache and img (per position marked in
 * present, its parts in order). to_img: cache → img; else img → cache, and a
 * marked position whose block the slot no longer holds (out of its window
 * now) is skipped. Runs of rows that follow each other in the storage go in
 * one copy. On CUDA the copies are only enqueued. */
static pio_status transfer_layer(pio_model *m, int32_t seq, int l, int32_t len,
                                 const uint8_t *present, char *img, bool to_img, pio_error *err) {
    const int parts = n_parts(m);
    const size_t per_pos = pos_bytes(m);
    pio_status st = PIO_OK;
    for (int32_t p = 0; st == PIO_OK && p < len;) {
        if (!present[p]) {
            p++;
            continue;
        }
        const int64_t row = row_of(m, seq, p);
        int32_t end = p + 1;
        while (row >= 0 && end < len && present[end] && row_of(m, seq, end) == row + (end - p))
            end++;
        size_t off = 0;
        for (int w = 0; row >= 0 && st == PIO_OK && w < parts; w++) {
            size_t n;
            char *rows = row_bytes(m, l, w, row, &n);
            st = to_img ? pio_kv_copy_rows(m, img + off, per_pos, rows, n, n, (size_t)(end - p), err)
                        : pio_kv_copy_rows(m, rows, n, img + off, per_pos, n, (size_t)(end - p), err);
            off += n;
        }
        img += (size_t)(end - p) * per_pos;
        p = end;
    }
    return st;
}

/* One layer's rows into host memory `out` (bytes long), or back from `in`.
 * CUDA: through pinned staging, waiting for the copies. */
static pio_status layer_to_host(pio_model *m, int32_t seq, int l, int32_t len,
                                const uint8_t *present, char *out, size_t bytes, pio_error *err) {
    char *img = out;
    if (m->cuda && !(img = pio_model_cuda_staging(m, bytes, err))) return err->status;
    pio_status st = transfer_layer(m, seq, l, len, present, img, true, err);
    if (st == PIO_OK && m->cuda && (st = pio_model_cuda_sync(m, err)) == PIO_OK)
        memcpy(out, img, bytes);
    return st;
}

static pio_status layer_from_host(pio_model *m, int32_t seq, int l, int32_t len,
                                  const uint8_t *present, const char *in, size_t bytes,
                                  pio_error *err) {
    char *img = (char *)in;
    if (m->cuda) {
        if (!(img = pio_model_cuda_staging(m, bytes, err))) return err->status;
        memcpy(img, in, bytes);
    }
    pio_status st = transfer_layer(m, seq, l, len, present, img, false, err);
    if (st == PIO_OK && m->cuda) st = pio_model_cuda_sync(m, err); /* staging is reused */
    return st;
}

pio_status pio_model_seq_save(const pio_model *cm, int32_t seq, const char *path, pio_error *err) {
    pio_model *m = (pio_model *)cm; /* CUDA: the pinned staging buffer is the model's */
    pio_status st = check_slot(m, seq, err);
    if (st) return st;
    const pio_kv_seq *s = &m->kv->seqs[seq];
    if (s->len == 0)
        return pio_error_set(err, PIO_ERR_INVALID, "sequence %d is empty: nothing to save", seq);
    uint8_t *present = malloc((size_t)s->len);
    if (!present) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    int32_t held = 0;
    for (int32_t p = 0; p < s->len; p++) held += present[p] = row_of(m, seq, p) >= 0;
    const size_t layer_bytes = (size_t)held * pos_bytes(m);
    char *rows = malloc(layer_bytes ? layer_bytes : 1);
    FILE *f = rows ? fopen(path, "wb") : NULL;
    if (!f) {
        free(present);
        free(rows);
        return rows ? pio_error_set(err, PIO_ERR_IO, "cannot write '%s'", path)
                    : pio_error_set(err, PIO_ERR_OOM, "out of memory");
    }
    header h = header_of(m, s->len);
    bool ok = fwrite(&h, sizeof h, 1, f) == 1 &&
              fwrite(s->tokens, sizeof(int32_t), (size_t)s->len, f) == (size_t)s->len &&
              fwrite(present, 1, (size_t)s->len, f) == (size_t)s->len;
    for (int l = 0; ok && st == PIO_OK && l < m->hp.n_layer; l++)
        if ((st = layer_to_host(m, seq, l, s->len, present, rows, layer_bytes, err)) == PIO_OK)
            ok = fwrite(rows, 1, layer_bytes, f) == layer_bytes;
    if (fclose(f) != 0) ok = false;
    free(present);
    free(rows);
    if (st) return st;
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
            s->cap_tokens = h.len; /* what realloc left, even when it shrank */
            memcpy(s->tokens, tokens, sizeof *t * (size_t)h.len);
            s->len = h.len;
        }
    }
    /* Per layer: the file's rows, then into the blocks the slot holds now (a
     * position held then and out of the window now is skipped). */
    char *rows = NULL;
    size_t layer_bytes = 0;
    if (st == PIO_OK) {
        int32_t held = 0;
        for (int32_t p = 0; p < h.len; p++) held += present[p] != 0;
        layer_bytes = (size_t)held * pos_bytes(m);
        if (!(rows = malloc(layer_bytes ? layer_bytes : 1)))
            st = pio_error_set(err, PIO_ERR_OOM, "out of memory");
    }
    for (int l = 0; st == PIO_OK && l < m->hp.n_layer; l++) {
        if (fread(rows, 1, layer_bytes, f) != layer_bytes)
            st = pio_error_set(err, PIO_ERR_FORMAT, "'%s' is truncated", path);
        else
            st = layer_from_host(m, seq, l, h.len, present, rows, layer_bytes, err);
    }
    if (st != PIO_OK) pio_model_seq_free(m, seq);
    free(rows);
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
    const pio_kv_seq *s = &m->kv->seqs[seq];
    if (s->len == 0) {
        pio_error_set(err, PIO_ERR_INVALID, "sequence %d is empty: nothing to swap out", seq);
        return NULL;
    }
    const size_t per_pos = pos_bytes(m);
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
    const size_t layer_bytes = (size_t)held * per_pos;
    for (int l = 0; l < m->hp.n_layer; l++)
        if (layer_to_host(m, seq, l, s->len, sw->present, sw->rows + (size_t)l * layer_bytes,
                          layer_bytes, err)) {
            free(sw); /* the slot is left as it was */
            return NULL;
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
    int32_t held = 0;
    for (int32_t p = 0; p < sw->len; p++) held += sw->present[p] != 0;
    const size_t layer_bytes = (size_t)held * pos_bytes(m);
    for (int l = 0; st == PIO_OK && l < m->hp.n_layer; l++)
        st = layer_from_host(m, seq, l, sw->len, sw->present, sw->rows + (size_t)l * layer_bytes,
                             layer_bytes, err);
    if (st) pio_model_seq_free(m, seq);
    return st;
}

size_t pio_kv_swap_bytes(const pio_kv_swap *sw) { return sw ? sizeof *sw + sw->bytes : 0; }
int32_t pio_kv_swap_length(const pio_kv_swap *sw) { return sw ? sw->len : 0; }
void pio_kv_swap_free(pio_kv_swap *sw) { free(sw); }
