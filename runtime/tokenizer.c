/* pio_tokenizer: encode and decode as Hugging Face `tokenizers` does.
 *
 * encode(text) follows TokenizerImpl::encode_single_sequence with
 * add_special_tokens=False:
 *   1. added tokens whose `normalized` is false are cut out of the raw text
 *      (leftmost-longest, honouring lstrip/rstrip/single_word);
 *   2. each remaining stretch is normalized, and added tokens whose
 *      `normalized` is true are cut out of the result;
 *   3. what is left goes through the pre-tokenizer steps into pieces;
 *   4. each piece goes through BPE (with a per-call cache of repeated pieces).
 * parse_special=false is tokenizers' split_special_tokens: special added
 * tokens are skipped where they match, so their text is encoded as text.
 *
 * decode(ids) looks every id up (added tokens first), drops special ones if
 * asked, lets the decoder turn each token into bytes and reads the bytes as
 * UTF-8 the way Rust's from_utf8_lossy does. */
#include "tokenizer_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- loading ------------------------------------------------------------------ */

pio_tokenizer *pio_tokenizer_load(const char *path, pio_error *err) {
    if (!path) {
        pio_error_set(err, PIO_ERR_INVALID, "tokenizer: no path given");
        return NULL;
    }
    struct stat sb;
    if (stat(path, &sb) != 0) {
        pio_error_set(err, PIO_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    pio_tokenizer *tok = calloc(1, sizeof *tok);
    char *file = malloc(strlen(path) + 32);
    if (!tok || !file) {
        free(tok);
        free(file);
        pio_error_set(err, PIO_ERR_OOM, "out of memory loading tokenizer");
        return NULL;
    }
    pio_status st;
    if (!S_ISDIR(sb.st_mode)) {
        st = tok_load_json_file(tok, path, err);
    } else {
        sprintf(file, "%s/tokenizer.json", path);
        struct stat fs;
        if (stat(file, &fs) == 0) {
            st = tok_load_json_file(tok, file, err);
        } else {
            sprintf(file, "%s/vocab.json", path);
            if (stat(file, &fs) == 0)
                st = tok_load_vocab_merges(tok, path, err);
            else
                st = pio_error_set(err, PIO_ERR_IO,
                                   "cannot open '%s': no tokenizer.json or vocab.json + merges.txt there",
                                   path);
        }
    }
    free(file);
    if (!st) {
        /* The directory: the path, or the part of it before the last '/'. */
        size_t n = strlen(path);
        if (!S_ISDIR(sb.st_mode)) {
            while (n > 0 && path[n - 1] != '/') n--;
            while (n > 1 && path[n - 1] == '/') n--;
        }
        tok->dir = malloc(n + 2);
        if (!tok->dir) st = pio_error_set(err, PIO_ERR_OOM, "out of memory loading tokenizer");
        else if (n == 0) strcpy(tok->dir, ".");
        else {
            memcpy(tok->dir, path, n);
            tok->dir[n] = '\0';
        }
    }
    if (st) {
        tok_free_parts(tok);
        free(tok);
        return NULL;
    }
    return tok;
}

const char *pio_tokenizer_dir(const pio_tokenizer *tok) {
    return tok->dir;
}

void pio_tokenizer_free(pio_tokenizer *tok) {
    if (!tok) return;
    tok_free_parts(tok);
    free(tok);
}

int32_t pio_tokenizer_n_vocab(const pio_tokenizer *tok) {
    return tok->n_vocab;
}

/* ---- encoding ------------------------------------------------------------------- */

typedef struct enc_ctx {
    const pio_tokenizer *tok;
    bool parse_special;
    tok_ids *out;
    tok_match_state ms;
    tok_bpe_scratch bpe;
    tok_pieces a, b, c; /* pre-tokenizer ping-pong, and ByteLevel's regex pieces */
    tok_buf prefixed;   /* a piece with ByteLevel's prefix space */
    /* Pieces already run through BPE in this call: piece -> span of cache_ids. */
    tok_strmap cache;
    tok_ids cache_ids;
    size_t *span; /* (start, count) pairs */
    size_t n_span, span_cap;
} enc_ctx;

static pio_status oom(pio_error *err) {
    return pio_error_set(err, PIO_ERR_OOM, "out of memory encoding text");
}

static pio_status push_id(enc_ctx *c, int32_t id, pio_error *err) {
    return tok_ids_push(c->out, id) ? PIO_OK : oom(err);
}

/* The tokenizer's word cache: true with the ids pushed on a hit. */
static bool wcache_get(tok_wcache *wc, const char *w, size_t n, uint32_t h, tok_ids *out, bool *oom_) {
    if (pthread_mutex_trylock(&wc->lock)) return false;
    const tok_wslot *sl = &wc->slots[h & wc->mask];
    int32_t ids[TOK_WIDS];
    size_t k = 0;
    bool hit = sl->len == n && sl->hash == h && !memcmp(sl->key, w, n);
    if (hit) {
        k = sl->n;
        memcpy(ids, sl->ids, k * sizeof *ids);
    }
    pthread_mutex_unlock(&wc->lock);
    for (size_t i = 0; hit && i < k; i++)
        if (!tok_ids_push(out, ids[i])) *oom_ = true;
    return hit;
}

static void wcache_put(tok_wcache *wc, const char *w, size_t n, uint32_t h, const int32_t *ids,
                       size_t k) {
    if (k > TOK_WIDS || pthread_mutex_trylock(&wc->lock)) return;
    tok_wslot *sl = &wc->slots[h & wc->mask];
    sl->hash = h;
    sl->len = (uint8_t)n;
    sl->n = (uint8_t)k;
    memcpy(sl->key, w, n);
    memcpy(sl->ids, ids, k * sizeof *ids);
    pthread_mutex_unlock(&wc->lock);
}

/* Common words recur: short pieces go through the tokenizer's word cache,
 * longer ones (up to 64 bytes) through a cache for this call. */
static pio_status bpe_cached(enc_ctx *c, const char *w, size_t n, pio_error *err) {
    tok_wcache *wc = c->tok->wcache;
    if (wc && n <= TOK_WKEY) {
        uint32_t h = tok_strmap_hash(w, n);
        bool failed = false;
        if (wcache_get(wc, w, n, h, c->out, &failed)) return failed ? oom(err) : PIO_OK;
        size_t before = c->out->len;
        pio_status st = tok_bpe_word(&c->tok->bpe, &c->bpe, w, n, c->out, err);
        if (!st) wcache_put(wc, w, n, h, c->out->p + before, c->out->len - before);
        return st;
    }
    bool cacheable = n <= 64;
    if (cacheable) {
        int32_t k = tok_strmap_get(&c->cache, w, n);
        if (k >= 0) {
            size_t start = c->span[2 * k], count = c->span[2 * k + 1];
            for (size_t i = 0; i < count; i++)
                if (!tok_ids_push(c->out, c->cache_ids.p[start + i])) return oom(err);
            return PIO_OK;
        }
    }
    size_t before = c->out->len;
    pio_status st = tok_bpe_word(&c->tok->bpe, &c->bpe, w, n, c->out, err);
    if (st || !cacheable || c->n_span >= INT32_MAX) return st;
    if (c->n_span == c->span_cap) {
        size_t cap = c->span_cap ? c->span_cap * 2 : 256;
        size_t *p = realloc(c->span, 2 * cap * sizeof *p);
        if (!p) return oom(err);
        c->span = p;
        c->span_cap = cap;
    }
    c->span[2 * c->n_span] = c->cache_ids.len;
    c->span[2 * c->n_span + 1] = c->out->len - before;
    for (size_t i = before; i < c->out->len; i++)
        if (!tok_ids_push(&c->cache_ids, c->out->p[i])) return oom(err);
    if (!tok_strmap_put(&c->cache, w, n, (int32_t)c->n_span++)) return oom(err);
    return PIO_OK;
}

/* Appends s as one piece with every byte replaced by its character in the
 * byte-level alphabet (one or two UTF-8 bytes each). */
static pio_status map_bytes(enc_ctx *c, const char *s, size_t n, tok_pieces *out, pio_error *err) {
    if (!tok_buf_reserve(&out->bytes, 2 * n + 1) || !tok_pieces_add(out, "", 0)) return oom(err);
    char *w = out->bytes.p + out->bytes.len;
    for (size_t k = 0; k < n; k++) {
        const char *bc = c->tok->byte_char[(uint8_t)s[k]];
        w[0] = bc[1];
        if (bc[0] == 2) w[1] = bc[2];
        w += bc[0];
    }
    out->bytes.len = (size_t)(w - out->bytes.p);
    out->ends[out->n - 1] = out->bytes.len;
    return PIO_OK;
}

/* ByteLevel: a leading space if asked (for every piece, as tokenizers does),
 * GPT-2's split if asked, then the byte mapping. */
static pio_status byte_level(enc_ctx *c, const tok_pretok *p, const char *s, size_t n,
                             tok_pieces *out, pio_error *err) {
    if (p->add_prefix_space && s[0] != ' ') {
        c->prefixed.len = 0;
        if (!tok_buf_append(&c->prefixed, " ", 1) || !tok_buf_append(&c->prefixed, s, n))
            return oom(err);
        s = c->prefixed.p;
        n = c->prefixed.len;
    }
    if (!p->has_re) return map_bytes(c, s, n, out, err);
    tok_pieces_clear(&c->c);
    pio_status st = tok_regex_split(&p->re, &c->ms, s, n, TOK_SPLIT_ISOLATED, false, &c->c, err);
    for (size_t i = 0; i < c->c.n && !st; i++) {
        size_t len;
        const char *piece = tok_piece(&c->c, i, &len);
        st = map_bytes(c, piece, len, out, err);
    }
    return st;
}

/* Steps 3 and 4 for one stretch of normalized text. */
static pio_status encode_text(enc_ctx *c, const char *s, size_t n, pio_error *err) {
    if (n == 0) return PIO_OK;
    const pio_tokenizer *tok = c->tok;
    tok_pieces *cur = &c->a, *next = &c->b;
    tok_pieces_clear(cur);
    if (!tok_pieces_add(cur, s, n)) return oom(err);
    for (size_t k = 0; k < tok->n_pre; k++) {
        const tok_pretok *p = &tok->pre[k];
        tok_pieces_clear(next);
        for (size_t i = 0; i < cur->n; i++) {
            size_t len;
            const char *piece = tok_piece(cur, i, &len);
            pio_status st = p->kind == TOK_PRE_SPLIT
                                ? tok_regex_split(&p->re, &c->ms, piece, len, p->behavior,
                                                  p->invert, next, err)
                                : byte_level(c, p, piece, len, next, err);
            if (st) return st;
        }
        tok_pieces *t = cur;
        cur = next;
        next = t;
    }
    for (size_t i = 0; i < cur->n; i++) {
        size_t len;
        const char *piece = tok_piece(cur, i, &len);
        pio_status st = bpe_cached(c, piece, len, err);
        if (st) return st;
    }
    return PIO_OK;
}

/* Whether the character before `end` / at `start` is a word character. */
static bool ends_with_word(const char *s, size_t end) {
    if (end == 0) return false;
    size_t i = end - 1;
    while (i > 0 && ((uint8_t)s[i] & 0xc0) == 0x80) i--;
    uint32_t ch;
    tok_utf8_decode(s + i, &ch);
    return tok_is_word(ch);
}

static bool starts_with_word(const char *s, size_t start, size_t len) {
    if (start >= len) return false;
    uint32_t ch;
    tok_utf8_decode(s + start, &ch);
    return tok_is_word(ch);
}

typedef pio_status (*text_fn)(enc_ctx *c, const char *s, size_t n, pio_error *err);

/* Cuts added tokens out of s as tokenizers' AddedVocabulary::find_matches
 * does, pushing their ids and handing the text between them to on_text, in
 * order. */
static pio_status split_added(enc_ctx *c, const tok_trie *trie, const char *s, size_t len,
                              text_fn on_text, pio_error *err) {
    const pio_tokenizer *tok = c->tok;
    size_t cursor = 0, pos = 0;
    pio_status st;
    while (pos < len) {
        size_t mlen = 0;
        int32_t idx = tok_trie_match_at(trie, s, len, pos, &mlen);
        if (idx < 0) {
            pos++;
            continue;
        }
        size_t start = pos, stop = pos + mlen;
        pos = stop; /* matches never overlap, whatever happens to this one */
        const tok_added *a = &tok->added[idx];
        if (a->special && !c->parse_special) continue;
        if (a->single_word && (ends_with_word(s, start) || starts_with_word(s, stop, len)))
            continue;
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t i = ns - 1;
                while (i > 0 && ((uint8_t)s[i] & 0xc0) == 0x80) i--;
                uint32_t ch;
                tok_utf8_decode(s + i, &ch);
                if (!tok_is_space(ch)) break;
                ns = i;
            }
            start = ns > cursor ? ns : cursor;
        }
        if (a->rstrip) {
            while (stop < len) {
                uint32_t ch;
                size_t k = tok_utf8_decode(s + stop, &ch);
                if (!tok_is_space(ch)) break;
                stop += k;
            }
        }
        if (cursor < start && (st = on_text(c, s + cursor, start - cursor, err))) return st;
        if ((st = push_id(c, a->id, err))) return st;
        cursor = stop;
    }
    if (cursor < len) return on_text(c, s + cursor, len - cursor, err);
    return PIO_OK;
}

static pio_status on_normalized_text(enc_ctx *c, const char *s, size_t n, pio_error *err) {
    return encode_text(c, s, n, err);
}

static pio_status on_raw_text(enc_ctx *c, const char *s, size_t n, pio_error *err) {
    const pio_tokenizer *tok = c->tok;
    if (!tok_normalize_needed(tok->norm, tok->n_norm, s, n))
        return split_added(c, &tok->norm_trie, s, n, on_normalized_text, err);
    char *norm;
    size_t nlen;
    pio_status st = tok_normalize(tok->norm, tok->n_norm, s, n, &norm, &nlen, err);
    if (st) return st;
    st = split_added(c, &tok->norm_trie, norm, nlen, on_normalized_text, err);
    free(norm);
    return st;
}

pio_status pio_tokenizer_encode(const pio_tokenizer *tok, const char *text, size_t len,
                                bool parse_special, int32_t **ids, size_t *n, pio_error *err) {
    return pio_tokenizer_encode_ex(tok, text, len, parse_special, false, ids, n, err);
}

pio_status pio_tokenizer_encode_ex(const pio_tokenizer *tok, const char *text, size_t len,
                                   bool parse_special, bool add_special, int32_t **ids, size_t *n,
                                   pio_error *err) {
    *ids = NULL;
    *n = 0;
    if (!text && len) return pio_error_set(err, PIO_ERR_INVALID, "encode: text is NULL");
    size_t bad = tok_utf8_valid_up_to(text, len);
    if (bad != len) return pio_error_set(err, PIO_ERR_INVALID, "invalid UTF-8 at byte %zu", bad);

    tok_ids out = {0};
    enc_ctx c = {.tok = tok, .parse_special = parse_special, .out = &out};
    pio_status st = tok_match_state_init(&c.ms, err);
    for (size_t i = 0; add_special && !st && i < tok->post_prefix.len; i++)
        if (!tok_ids_push(&out, tok->post_prefix.p[i])) st = oom(err);
    if (!st && len) st = split_added(&c, &tok->raw_trie, text, len, on_raw_text, err);
    for (size_t i = 0; add_special && !st && i < tok->post_suffix.len; i++)
        if (!tok_ids_push(&out, tok->post_suffix.p[i])) st = oom(err);
    size_t count = out.len;
    if (!st && !out.p && !tok_ids_push(&out, 0)) st = oom(err); /* never hand back NULL */
    tok_match_state_free(&c.ms);
    tok_bpe_scratch_free(&c.bpe);
    tok_pieces_free(&c.a);
    tok_pieces_free(&c.b);
    tok_pieces_free(&c.c);
    tok_buf_free(&c.prefixed);
    tok_strmap_free(&c.cache);
    tok_ids_free(&c.cache_ids);
    free(c.span);
    if (st) {
        tok_ids_free(&out);
        return st;
    }
    *ids = out.p;
    *n = count;
    return PIO_OK;
}

/* ---- decoding ------------------------------------------------------------------- */

static pio_status check_id(const pio_tokenizer *tok, int32_t id, pio_error *err) {
    if (id < 0 || id >= tok->n_vocab)
        return pio_error_set(err, PIO_ERR_RANGE, "token id %d is out of range (vocabulary size %d)",
                             (int)id, (int)tok->n_vocab);
    return PIO_OK;
}

/* Appends what one id contributes before the UTF-8 pass; *emitted tells the
 * no-decoder case whether a separating space is due. */
static bool append_token(const pio_tokenizer *tok, int32_t id, bool skip_special, bool *emitted,
                         tok_buf *bytes) {
    if (tok->dec_len[id] < 0 || (skip_special && tok->special[id])) return true;
    if (tok->decoder == TOK_DEC_NONE && *emitted && !tok_buf_append(bytes, " ", 1)) return false;
    *emitted = true;
    return tok_buf_append(bytes, tok->strings.p + tok->dec_off[id], (size_t)tok->dec_len[id]);
}

pio_status pio_tokenizer_decode(const pio_tokenizer *tok, const int32_t *ids, size_t n,
                                bool skip_special, char **text, size_t *len, pio_error *err) {
    *text = NULL;
    if (len) *len = 0;
    /* One pass to check the ids and size the text, one to copy the tokens'
     * bytes; the lossy UTF-8 pass only runs when the bytes are not valid. */
    size_t total = 0, count = 0;
    bool sep = tok->decoder == TOK_DEC_NONE;
    for (size_t i = 0; i < n; i++) {
        pio_status st = check_id(tok, ids[i], err);
        if (st) return st;
        int32_t id = ids[i];
        if (tok->dec_len[id] < 0 || (skip_special && tok->special[id])) continue;
        total += (size_t)tok->dec_len[id] + (sep && count > 0);
        count++;
    }
    char *bytes = malloc(total + 1);
    if (!bytes) return pio_error_set(err, PIO_ERR_OOM, "out of memory decoding");
    char *w = bytes;
    count = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (tok->dec_len[id] < 0 || (skip_special && tok->special[id])) continue;
        if (sep && count++ > 0) *w++ = ' ';
        memcpy(w, tok->strings.p + tok->dec_off[id], (size_t)tok->dec_len[id]);
        w += tok->dec_len[id];
    }
    *w = '\0';
    if (tok_utf8_valid_up_to(bytes, total) != total) {
        tok_buf out = {0};
        if (tok_utf8_lossy(bytes, total, true, &out) == (size_t)-1 || !tok_buf_append(&out, "", 0)) {
            free(bytes);
            tok_buf_free(&out);
            return pio_error_set(err, PIO_ERR_OOM, "out of memory decoding");
        }
        free(bytes);
        bytes = out.p;
        total = out.len;
    }
    *text = bytes;
    if (len) *len = total;
    return PIO_OK;
}

/* ---- look-ups --------------------------------------------------------------------- */

int32_t pio_tokenizer_token_id(const pio_tokenizer *tok, const char *token) {
    size_t n = strlen(token);
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == n && !memcmp(tok->added[i].content, token, n)) return tok->added[i].id;
    return tok_strmap_get(&tok->bpe.vocab, token, n);
}

const char *pio_tokenizer_token(const pio_tokenizer *tok, int32_t id) {
    if (id < 0 || id >= tok->n_vocab || tok->tok_len[id] < 0) return NULL;
    return tok->strings.p + tok->tok_off[id];
}

bool pio_tokenizer_is_special(const pio_tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->n_vocab && tok->special[id];
}

/* ---- streaming decoder ------------------------------------------------------------ */

struct pio_detok {
    const pio_tokenizer *tok;
    bool skip_special, emitted;
    tok_buf pending; /* bytes of an incomplete UTF-8 sequence */
    tok_buf out;     /* what the last call returned */
};

pio_detok *pio_detok_new(const pio_tokenizer *tok, bool skip_special, pio_error *err) {
    pio_detok *d = calloc(1, sizeof *d);
    if (!d) {
        pio_error_set(err, PIO_ERR_OOM, "out of memory for streaming decoder");
        return NULL;
    }
    d->tok = tok;
    d->skip_special = skip_special;
    return d;
}

void pio_detok_free(pio_detok *d) {
    if (!d) return;
    tok_buf_free(&d->pending);
    tok_buf_free(&d->out);
    free(d);
}

/* Emits what of `pending` is complete; an invalid sequence is settled (as
 * U+FFFD) as soon as it is known to be invalid, exactly as a whole decode
 * would settle it, so the pieces always add up to pio_tokenizer_decode. */
static const char *drain(pio_detok *d, bool final, size_t *len) {
    d->out.len = 0;
    size_t used = tok_utf8_lossy(d->pending.p ? d->pending.p : "", d->pending.len, final, &d->out);
    if (used == (size_t)-1 || !tok_buf_append(&d->out, "", 0)) return NULL;
    if (used) {
        memmove(d->pending.p, d->pending.p + used, d->pending.len - used);
        d->pending.len -= used;
    }
    if (len) *len = d->out.len;
    return d->out.p;
}

const char *pio_detok_push(pio_detok *d, int32_t id, size_t *len, pio_error *err) {
    if (len) *len = 0;
    if (check_id(d->tok, id, err)) return NULL;
    if (!append_token(d->tok, id, d->skip_special, &d->emitted, &d->pending)) {
        pio_error_set(err, PIO_ERR_OOM, "out of memory in streaming decoder");
        return NULL;
    }
    const char *s = drain(d, false, len);
    if (!s) pio_error_set(err, PIO_ERR_OOM, "out of memory in streaming decoder");
    return s;
}

const char *pio_detok_flush(pio_detok *d, size_t *len) {
    const char *s = drain(d, true, len);
    return s ? s : "";
}
