/* The BPE model: one pre-tokenized piece in, ids out, exactly as tokenizers'
 * BPE::merge_word and Word::merge_all do it (with dropout off).
 *
 * A piece starts as one symbol per character (with continuing_subword_prefix
 * on all but the first and end_of_word_suffix on the last), unknown
 * characters going to byte-fallback tokens or unk_token. Then the adjacent
 * pair with the lowest merge rank, leftmost on ties, is merged until no pair
 * has a rank. A min-heap of candidate pairs keeps long pieces O(n log n);
 * entries made stale by earlier merges are recognised and skipped. */
#include "tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tok_symbol {
    int32_t id;
    int32_t prev, next; /* neighbours still alive; -1 = none */
    bool alive;
};

struct tok_merge_cand {
    int32_t rank, pos, merged;
};

static bool cand_less(const struct tok_merge_cand *a, const struct tok_merge_cand *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(struct tok_merge_cand *h, size_t *n, struct tok_merge_cand c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!cand_less(&c, &h[parent])) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = c;
}

static struct tok_merge_cand heap_pop(struct tok_merge_cand *h, size_t *n) {
    struct tok_merge_cand top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const struct tok_merge_cand *best = &last;
        if (l < *n && cand_less(&h[l], best)) {
            m = l;
            best = &h[l];
        }
        if (r < *n && cand_less(&h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    h[i] = last;
    return top;
}

static bool scratch_reserve(tok_bpe_scratch *s, size_t nsym) {
    /* Every merge pushes at most two candidates: 3n bounds the heap. */
    if (nsym > s->sym_cap) {
        struct tok_symbol *p = realloc(s->sym, nsym * sizeof *p);
        if (!p) return false;
        s->sym = p;
        s->sym_cap = nsym;
    }
    if (3 * nsym > s->heap_cap) {
        struct tok_merge_cand *h = realloc(s->heap, 3 * nsym * sizeof *h);
        if (!h) return false;
        s->heap = h;
        s->heap_cap = 3 * nsym;
    }
    return true;
}

static void add_symbol(tok_bpe_scratch *s, size_t *n, int32_t id) {
    s->sym[*n] = (struct tok_symbol){id, (int32_t)*n - 1, -1, true};
    if (*n > 0) s->sym[*n - 1].next = (int32_t)*n;
    (*n)++;
}

static void merge_all(const tok_bpe *m, tok_bpe_scratch *s, size_t n) {
    struct tok_symbol *sym = s->sym;
    struct tok_merge_cand *heap = s->heap;
    size_t nh = 0;
    int32_t rank, merged;
    for (size_t i = 0; i + 1 < n; i++)
        if (tok_pairmap_get(&m->merges, sym[i].id, sym[i + 1].id, &rank, &merged))
            heap_push(heap, &nh, (struct tok_merge_cand){rank, (int32_t)i, merged});
    while (nh > 0) {
        struct tok_merge_cand top = heap_pop(heap, &nh);
        struct tok_symbol *cur = &sym[top.pos];
        if (!cur->alive || cur->next < 0) continue;
        struct tok_symbol *right = &sym[cur->next];
        /* Stale: the pair at pos changed since this candidate was queued. */
        if (!tok_pairmap_get(&m->merges, cur->id, right->id, &rank, &merged) ||
            merged != top.merged)
            continue;
        cur->id = top.merged;
        cur->next = right->next;
        right->alive = false;
        if (cur->next >= 0) sym[cur->next].prev = top.pos;
        if (cur->prev >= 0 &&
            tok_pairmap_get(&m->merges, sym[cur->prev].id, cur->id, &rank, &merged))
            heap_push(heap, &nh, (struct tok_merge_cand){rank, cur->prev, merged});
        if (cur->next >= 0 &&
            tok_pairmap_get(&m->merges, cur->id, sym[cur->next].id, &rank, &merged))
            heap_push(heap, &nh, (struct tok_merge_cand){rank, top.pos, merged});
    }
}

/* The id of one initial symbol's string, or -1. */
static int32_t symbol_id(const tok_bpe *m, const char *str, size_t n) {
    if (n <= 3) { /* one code point below U+10000: the direct table */
        uint32_t c;
        if (tok_utf8_decode(str, &c) == n) return m->char_id[c];
    }
    return tok_strmap_get(&m->vocab, str, n);
}

pio_status tok_bpe_word(const tok_bpe *m, tok_bpe_scratch *s, const char *w, size_t len,
                        tok_ids *out, pio_error *err) {
    if (len == 0) return PIO_OK;
    if (m->ignore_merges) {
        int32_t id = tok_strmap_get(&m->vocab, w, len);
        if (id >= 0) return tok_ids_push(out, id) ? PIO_OK : pio_error_set(err, PIO_ERR_OOM, "out of memory");
    }
    /* Byte fallback may turn one character into up to 4 + prefix/suffix symbols. */
    size_t extra = strlen(m->prefix) + strlen(m->suffix);
    if (!scratch_reserve(s, len * (1 + extra) + 4 * (1 + extra)))
        return pio_error_set(err, PIO_ERR_OOM, "out of memory in BPE");

    size_t n = 0;
    int32_t unk = -1; /* a pending unk symbol (fuse_unk grows it in place) */
    for (size_t i = 0; i < len;) {
        uint32_t c;
        size_t clen = tok_utf8_decode(w + i, &c);
        const char *str = w + i;
        size_t slen = clen;
        bool first = i == 0, last = i + clen == len;
        if ((!first && m->prefix[0]) || (last && m->suffix[0])) {
            s->tmp.len = 0;
            if ((!first && !tok_buf_append(&s->tmp, m->prefix, strlen(m->prefix))) ||
                !tok_buf_append(&s->tmp, w + i, clen) ||
                (last && !tok_buf_append(&s->tmp, m->suffix, strlen(m->suffix))))
                return pio_error_set(err, PIO_ERR_OOM, "out of memory in BPE");
            str = s->tmp.p;
            slen = s->tmp.len;
        }
        i += clen;
        int32_t id = symbol_id(m, str, slen);
        if (id >= 0) {
            if (unk >= 0) add_symbol(s, &n, unk);
            unk = -1;
            add_symbol(s, &n, id);
            continue;
        }
        if (m->byte_fallback) {
            int32_t ids[64];
            size_t k = 0;
            for (; k < slen && k < 64; k++) {
                char name[8];
                snprintf(name, sizeof name, "<0x%02X>", (unsigned char)str[k]);
                if ((ids[k] = tok_strmap_get(&m->vocab, name, 6)) < 0) break;
            }
            if (k == slen) {
                /* tokenizers adds these without first emitting a pending unk. */
                for (k = 0; k < slen; k++) add_symbol(s, &n, ids[k]);
                continue;
            }
        }
        if (m->unk_token) {
            if (m->unk_missing)
                return pio_error_set(err, PIO_ERR_FORMAT,
                                     "tokenizer: unk_token '%s' is not in the vocabulary",
                                     m->unk_token);
            if (unk >= 0 && !m->fuse_unk) add_symbol(s, &n, unk);
            unk = m->unk_id;
        }
        /* No unk_token: tokenizers drops the character. */
    }
    if (unk >= 0) add_symbol(s, &n, unk);

    merge_all(m, s, n);
    for (int32_t i = n ? 0 : -1; i >= 0; i = s->sym[i].next)
        if (!tok_ids_push(out, s->sym[i].id)) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    return PIO_OK;
}

void tok_bpe_scratch_free(tok_bpe_scratch *s) {
    free(s->sym);
    free(s->heap);
    tok_buf_free(&s->tmp);
    *s = (tok_bpe_scratch){0};
}

void tok_bpe_free(tok_bpe *m) {
    tok_strmap_free(&m->vocab);
    tok_pairmap_free(&m->merges);
    free(m->char_id);
    free(m->prefix);
    free(m->suffix);
    free(m->unk_token);
    tok_buf_free(&m->load_tmp);
    *m = (tok_bpe){0};
}
