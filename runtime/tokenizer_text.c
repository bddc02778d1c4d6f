/* The tokenizer's plumbing: buffers, hash maps, the added-token trie, UTF-8
 * rules exactly as Rust applies them, GPT-2's byte-level alphabet and the
 * Unicode normalizers (libutf8proc). */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

/* ---- buffers -------------------------------------------------------------- */

bool tok_buf_reserve(tok_buf *b, size_t extra) {
    if (b->cap - b->len >= extra) return true;
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len < extra) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return false;
    b->p = p;
    b->cap = cap;
    return true;
}

bool tok_buf_append(tok_buf *b, const void *data, size_t n) {
    if (!tok_buf_reserve(b, n + 1)) return false;
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0'; /* always a C string too, for messages and look-ups */
    return true;
}

void tok_buf_free(tok_buf *b) {
    free(b->p);
    *b = (tok_buf){0};
}

bool tok_ids_push(tok_ids *v, int32_t id) {
    if (v->len == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->p, cap * sizeof *p);
        if (!p) return false;
        v->p = p;
        v->cap = cap;
    }
    v->p[v->len++] = id;
    return true;
}

void tok_ids_free(tok_ids *v) {
    free(v->p);
    *v = (tok_ids){0};
}

bool tok_pieces_add(tok_pieces *l, const char *s, size_t n) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        size_t *e = realloc(l->ends, cap * sizeof *e);
        if (!e) return false;
        l->ends = e;
        l->cap = cap;
    }
    if (!tok_buf_append(&l->bytes, s, n)) return false;
    l->ends[l->n++] = l->bytes.len;
    return true;
}

void tok_pieces_clear(tok_pieces *l) {
    l->n = 0;
    l->bytes.len = 0;
}

void tok_pieces_free(tok_pieces *l) {
    tok_buf_free(&l->bytes);
    free(l->ends);
    *l = (tok_pieces){0};
}

/* ---- hash maps ------------------------------------------------------------ */

static uint64_t mix64(uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    return mix64(h ^ w);
}

static bool strmap_rehash(tok_strmap *m, size_t nslots) {
    tok_strmap_slot *slots = calloc(nslots, sizeof *slots);
    if (!slots) return false;
    for (size_t i = 0; i < m->n; i++) {
        uint32_t h = m->entries[i].hash;
        size_t j = h & (nslots - 1);
        while (slots[j].index) j = (j + 1) & (nslots - 1);
        slots[j] = (tok_strmap_slot){h, (uint32_t)i + 1};
    }
    free(m->slots);
    m->slots = slots;
    m->mask = nslots - 1;
    return true;
}

static bool strmap_grow(tok_strmap *m) {
    return strmap_rehash(m, m->slots ? (m->mask + 1) * 2 : 64);
}

bool tok_strmap_reserve(tok_strmap *m, size_t n) {
    size_t nslots = 64;
    while (nslots < 2 * n) nslots *= 2;
    if (n > m->cap) {
        struct tok_strmap_entry *e = realloc(m->entries, n * sizeof *e);
        if (!e) return false;
        m->entries = e;
        m->cap = n;
    }
    if (m->slots && m->mask + 1 >= nslots) return true;
    return strmap_rehash(m, nslots);
}

/* The slot holding key, or the empty slot where it would go. */
static size_t strmap_find(const tok_strmap *m, const char *key, size_t len, uint32_t hash) {
    size_t j = hash & m->mask;
    for (;;) {
        const tok_strmap_slot *sl = &m->slots[j];
        if (!sl->index) return j;
        if (sl->hash == hash) {
            const struct tok_strmap_entry *en = &m->entries[sl->index - 1];
            if (en->len == len && memcmp(m->keys.p + en->off, key, len) == 0) return j;
        }
        j = (j + 1) & m->mask;
    }
}

bool tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t val) {
    if (len > UINT32_MAX || m->n >= UINT32_MAX - 1) return false;
    if (!m->slots || (m->n + 1) * 2 > m->mask + 1) {
        if (!strmap_grow(m)) return false;
    }
    uint32_t hash = (uint32_t)hash_bytes(key, len);
    size_t j = strmap_find(m, key, len, hash);
    if (m->slots[j].index) {
        m->entries[m->slots[j].index - 1].val = val;
        return true;
    }
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        struct tok_strmap_entry *e = realloc(m->entries, cap * sizeof *e);
        if (!e) return false;
        m->entries = e;
        m->cap = cap;
    }
    size_t off = m->keys.len;
    if (off > UINT32_MAX - len || !tok_buf_append(&m->keys, key, len)) return false;
    m->entries[m->n] = (struct tok_strmap_entry){(uint32_t)off, (uint32_t)len, hash, val};
    m->slots[j] = (tok_strmap_slot){hash, (uint32_t)++m->n};
    return true;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len) {
    return tok_strmap_get_h(m, key, len, tok_strmap_hash(key, len));
}

uint32_t tok_strmap_hash(const char *key, size_t len) {
    return (uint32_t)hash_bytes(key, len);
}

int32_t tok_strmap_get_h(const tok_strmap *m, const char *key, size_t len, uint32_t hash) {
    if (!m->slots) return -1;
    uint32_t e = m->slots[strmap_find(m, key, len, hash)].index;
    return e ? m->entries[e - 1].val : -1;
}

void tok_strmap_prefetch(const tok_strmap *m, uint32_t hash, int stage) {
    if (!m->slots) return;
    const tok_strmap_slot *sl = &m->slots[hash & m->mask];
    if (stage == 0) {
        __builtin_prefetch(sl);
        return;
    }
    if (!sl->index || sl->hash != hash) return;
    const struct tok_strmap_entry *en = &m->entries[sl->index - 1];
    if (stage == 1) __builtin_prefetch(en);
    else __builtin_prefetch(m->keys.p + en->off);
}

void tok_strmap_free(tok_strmap *m) {
    free(m->entries);
    free(m->slots);
    tok_buf_free(&m->keys);
    *m = (tok_strmap){0};
}

static uint64_t pair_key(int32_t a, int32_t b) {
    return (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
}

static bool pairmap_grow(tok_pairmap *m) {
    size_t cap = m->slots ? (m->mask + 1) * 2 : 1024;
    tok_pair_slot *slots = malloc(cap * sizeof *slots);
    if (!slots) return false;
    for (size_t i = 0; i < cap; i++) slots[i].key = UINT64_MAX;
    for (size_t i = 0; m->slots && i <= m->mask; i++) {
        if (m->slots[i].key == UINT64_MAX) continue;
        size_t j = mix64(m->slots[i].key) & (cap - 1);
        while (slots[j].key != UINT64_MAX) j = (j + 1) & (cap - 1);
        slots[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = slots;
    m->mask = cap - 1;
    return true;
}

bool tok_pairmap_reserve(tok_pairmap *m, size_t n) {
    size_t cap = m->slots ? m->mask + 1 : 1024;
    while (cap < 2 * n) cap *= 2;
    if (m->slots && m->mask + 1 >= cap) return true;
    tok_pair_slot *old = m->slots;
    size_t old_cap = old ? m->mask + 1 : 0;
    tok_pair_slot *slots = malloc(cap * sizeof *slots);
    if (!slots) return false;
    for (size_t i = 0; i < cap; i++) slots[i].key = UINT64_MAX;
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].key == UINT64_MAX) continue;
        size_t j = mix64(old[i].key) & (cap - 1);
        while (slots[j].key != UINT64_MAX) j = (j + 1) & (cap - 1);
        slots[j] = old[i];
    }
    free(old);
    m->slots = slots;
    m->mask = cap - 1;
    return true;
}

bool tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged) {
    if (!m->slots || (m->n + 1) * 2 > m->mask + 1) {
        if (!pairmap_grow(m)) return false;
    }
    uint64_t k = pair_key(a, b);
    size_t j = mix64(k) & m->mask;
    while (m->slots[j].key != UINT64_MAX && m->slots[j].key != k) j = (j + 1) & m->mask;
    if (m->slots[j].key == UINT64_MAX) m->n++;
    /* A repeated pair takes the later rank, as tokenizers' HashMap collect does. */
    m->slots[j] = (tok_pair_slot){k, rank, merged};
    return true;
}

void tok_pairmap_prefetch(const tok_pairmap *m, int32_t a, int32_t b) {
    if (m->slots) __builtin_prefetch(&m->slots[mix64(pair_key(a, b)) & m->mask], 1);
}

bool tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged) {
    if (!m->slots) return false;
    uint64_t k = pair_key(a, b);
    for (size_t j = mix64(k) & m->mask;; j = (j + 1) & m->mask) {
        const tok_pair_slot *s = &m->slots[j];
        if (s->key == k) {
            *rank = s->rank;
            *merged = s->merged;
            return true;
        }
        if (s->key == UINT64_MAX) return false;
    }
}

void tok_pairmap_free(tok_pairmap *m) {
    free(m->slots);
    *m = (tok_pairmap){0};
}

/* ---- added-token trie ----------------------------------------------------- */

struct tok_trie_node {
    int32_t child, sibling; /* first child, next sibling; -1 = none */
    int32_t token;          /* index of the pattern ending here, or -1 */
    uint8_t byte;
};

static int32_t trie_new_node(tok_trie *t, uint8_t byte) {
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        struct tok_trie_node *p = realloc(t->nodes, cap * sizeof *p);
        if (!p) return -1;
        t->nodes = p;
        t->cap = cap;
    }
    t->nodes[t->n] = (struct tok_trie_node){-1, -1, -1, byte};
    return (int32_t)t->n++;
}

static int32_t trie_child(const tok_trie *t, int32_t node, uint8_t byte) {
    for (int32_t c = t->nodes[node].child; c >= 0; c = t->nodes[c].sibling)
        if (t->nodes[c].byte == byte) return c;
    return -1;
}

bool tok_trie_add(tok_trie *t, const char *s, size_t n, int32_t index) {
    if (n == 0) return true; /* tokenizers ignores empty patterns */
    if (t->n == 0 && trie_new_node(t, 0) < 0) return false;
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = trie_child(t, node, b);
        if (c < 0) {
            if ((c = trie_new_node(t, b)) < 0) return false;
            t->nodes[c].sibling = t->nodes[node].child;
            t->nodes[node].child = c;
        }
        node = c;
    }
    /* Two tokens with the same text: the first keeps it, as aho-corasick does. */
    if (t->nodes[node].token < 0) t->nodes[node].token = index;
    t->first[(uint8_t)s[0]] = true;
    return true;
}

int32_t tok_trie_match_at(const tok_trie *t, const char *s, size_t len, size_t pos,
                          size_t *match_len) {
    if (t->n == 0 || !t->first[(uint8_t)s[pos]]) return -1;
    int32_t node = 0, best = -1;
    for (size_t i = pos; i < len; i++) {
        node = trie_child(t, node, (uint8_t)s[i]);
        if (node < 0) break;
        if (t->nodes[node].token >= 0) {
            best = t->nodes[node].token;
            *match_len = i + 1 - pos;
        }
    }
    return best;
}

void tok_trie_free(tok_trie *t) {
    free(t->nodes);
    *t = (tok_trie){0};
}

/* ---- UTF-8 ---------------------------------------------------------------- */

/* The sequence length a lead byte announces (0 = never valid), and the range
 * its second byte must fall in: Rust (and Unicode 3.9) exclude overlongs,
 * surrogates and code points past U+10FFFF through these ranges. */
static int utf8_lead(uint8_t b, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80;
    *hi = 0xbf;
    if (b < 0x80) return 1;
    if (b < 0xc2) return 0;
    if (b < 0xe0) return 2;
    if (b < 0xf0) {
        if (b == 0xe0) *lo = 0xa0;
        if (b == 0xed) *hi = 0x9f;
        return 3;
    }
    if (b < 0xf5) {
        if (b == 0xf0) *lo = 0x90;
        if (b == 0xf4) *hi = 0x8f;
        return 4;
    }
    return 0;
}

/* Length of the valid sequence at s[i], or -k when the k bytes from i are a
 * maximal invalid subpart, or 0 when s ends inside a so-far valid sequence. */
static long utf8_step(const uint8_t *s, size_t len, size_t i) {
    uint8_t lo, hi;
    int need = utf8_lead(s[i], &lo, &hi);
    if (need == 0) return -1;
    for (int k = 1; k < need; k++) {
        if (i + k >= len) return 0;
        uint8_t c = s[i + k];
        if (c < lo || c > hi) return -k;
        lo = 0x80;
        hi = 0xbf;
    }
    return need;
}

size_t tok_utf8_valid_up_to(const char *str, size_t len) {
    const uint8_t *s = (const uint8_t *)str;
    size_t i = 0;
    while (i < len) {
        if (s[i] < 0x80) {
            /* ASCII runs, eight bytes at a time */
            while (i + 8 <= len) {
                uint64_t w;
                memcpy(&w, s + i, 8);
                if (w & 0x8080808080808080ull) break;
                i += 8;
            }
            if (i < len && s[i] < 0x80) i++;
            continue;
        }
        long n = utf8_step(s, len, i);
        if (n <= 0) return i;
        i += (size_t)n;
    }
    return len;
}

size_t tok_utf8_decode(const char *str, uint32_t *c) {
    const uint8_t *s = (const uint8_t *)str;
    if (s[0] < 0x80) {
        *c = s[0];
        return 1;
    }
    if (s[0] < 0xe0) {
        *c = (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f);
        return 2;
    }
    if (s[0] < 0xf0) {
        *c = (uint32_t)(s[0] & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
        return 3;
    }
    *c = (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3f) << 12 |
         (uint32_t)(s[2] & 0x3f) << 6 | (s[3] & 0x3f);
    return 4;
}

size_t tok_utf8_encode(uint32_t c, char out[4]) {
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xc0 | c >> 6);
        out[1] = (char)(0x80 | (c & 0x3f));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xe0 | c >> 12);
        out[1] = (char)(0x80 | (c >> 6 & 0x3f));
        out[2] = (char)(0x80 | (c & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | c >> 18);
    out[1] = (char)(0x80 | (c >> 12 & 0x3f));
    out[2] = (char)(0x80 | (c >> 6 & 0x3f));
    out[3] = (char)(0x80 | (c & 0x3f));
    return 4;
}

size_t tok_utf8_lossy(const char *str, size_t len, bool final, tok_buf *out) {
    static const char replacement[] = "\xef\xbf\xbd";
    const uint8_t *s = (const uint8_t *)str;
    size_t i = 0, run = 0; /* run: start of valid bytes not yet copied */
    if (!tok_buf_reserve(out, len + 1)) return (size_t)-1;
    while (i < len) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        long n = utf8_step(s, len, i);
        if (n > 0) {
            i += (size_t)n;
            continue;
        }
        if (!tok_buf_append(out, str + run, i - run)) return (size_t)-1;
        if (n == 0 && !final) return i; /* hold the incomplete tail back */
        if (!tok_buf_append(out, replacement, 3)) return (size_t)-1;
        i = n == 0 ? len : i + (size_t)-n;
        run = i;
    }
    if (!tok_buf_append(out, str + run, i - run)) return (size_t)-1;
    return i;
}

/* ---- character classes ---------------------------------------------------- */

bool tok_range_has(const tok_range_set *s, uint32_t c) {
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < s->r[mid].lo) hi = mid;
        else if (c > s->r[mid].hi) lo = mid + 1;
        else return true;
    }
    return false;
}

bool tok_is_space(uint32_t c) {
    return tok_range_has(&pio_tok_uni_space, c);
}

bool tok_is_word(uint32_t c) {
    if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                         (c >= 'A' && c <= 'Z') || c == '_';
    if (c == 0x200c || c == 0x200d) return true; /* Join_Control */
    /* Other_Alphabetic symbols: circled and squared Latin letters. */
    if ((c >= 0x24b6 && c <= 0x24e9) || (c >= 0x1f130 && c <= 0x1f149) ||
        (c >= 0x1f150 && c <= 0x1f169) || (c >= 0x1f170 && c <= 0x1f189))
        return true;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
        return true;
    default:
        return false;
    }
}

/* ---- GPT-2 byte-level alphabet ---------------------------------------------- */

/* Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls,
 * space, DEL, NBSP, soft hyphen) are moved, in order, to U+0100..U+0143, so
 * that every byte is a visible character. */
static bool byte_is_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
}

uint32_t tok_byte_to_char(uint8_t b) {
    if (byte_is_printable(b)) return b;
    unsigned n = 0;
    for (unsigned i = 0; i < b; i++) n += !byte_is_printable(i);
    return 256 + n;
}

int tok_char_to_byte(uint32_t c) {
    /* The 68 moved bytes, in order: controls and space, DEL..NBSP, soft hyphen. */
    static const uint8_t moved[68] = {
        0,   1,   2,   3,   4,   5,   6,   7,   8,   9,   10,  11,  12,  13,  14,  15,  16,
        17,  18,  19,  20,  21,  22,  23,  24,  25,  26,  27,  28,  29,  30,  31,  32,  127,
        128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144,
        145, 146, 147, 148, 149, 150, 151, 152, 153, 154, 155, 156, 157, 158, 159, 160, 173};
    if (c < 256) return byte_is_printable(c) ? (int)c : -1;
    if (c >= 256 + 68) return -1;
    return moved[c - 256];
}

/* ---- normalizers ---------------------------------------------------------- */

/* Whether NFC can change c or what is next to it: c decomposes canonically,
 * has a combining class, can be the second of a composed pair, or is a
 * conjoining jamo. Any other character (below U+0300 and most of the rest)
 * is a safe boundary: NFC of a string is NFC of its pieces cut right before
 * such characters, since nothing composes with them or reorders across them. */
static bool nfc_may_change(uint32_t c) {
    if (c < 0x300) return false;
    if ((c >= 0x1100 && c <= 0x11ff) || (c >= 0xa960 && c <= 0xa97f) || (c >= 0xd7b0 && c <= 0xd7ff))
        return true;
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)c);
    if (p->combining_class != 0) return true;
    if (p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0) return true; /* canonical */
    return p->comb_index != UINT16_MAX && p->comb_index >= 0x8000;            /* a second */
}

bool tok_normalize_needed(const tok_norm_kind *chain, size_t n, const char *s, size_t len) {
    /* ASCII is invariant under all four forms. Below U+0300 NFC changes
     * nothing either (no character there decomposes and no two of them
     * compose; checked against Python's unicodedata): a cheap pass spares
     * the common case the full normalizer. */
    bool nfc_only = true;
    for (size_t i = 0; i < n; i++) nfc_only &= chain[i] == TOK_NORM_NFC;
    uint8_t limit = nfc_only ? 0xcc : 0x80; /* lead byte of U+0300 */
    size_t i = 0;
    while (i < len && (uint8_t)s[i] < limit) i++;
    if (i == len) return false;
    if (!nfc_only) return true;
    /* NFC leaves a string alone when none of its characters decomposes
     * canonically, has a combining class, can be the second of a composed
     * pair, or is a conjoining jamo: then decomposition changes nothing and
     * nothing composes. Most text (CJK, Cyrillic, ...) passes this check,
     * which reads utf8proc's own tables, far cheaper than normalizing. */
    while (i > 0 && ((uint8_t)s[i] & 0xc0) == 0x80) i--;
    for (; i < len;) {
        uint32_t c;
        i += tok_utf8_decode(s + i, &c);
        if (nfc_may_change(c)) return true;
    }
    return false;
}

/* NFC alone: only the stretches around characters NFC can change go through
 * utf8proc, each from the safe character before it to the next safe one. */
static pio_status nfc_pieces(const char *s, size_t len, char **out, size_t *out_len, pio_error *err) {
    tok_buf b = {0};
    size_t i = 0, copied = 0, prev = 0; /* prev: start of the last safe character */
    pio_status st = PIO_OK;
    if (!tok_buf_reserve(&b, len + 1)) return pio_error_set(err, PIO_ERR_OOM, "out of memory normalizing text");
    while (i < len && !st) {
        size_t start = i;
        uint32_t c;
        i += tok_utf8_decode(s + i, &c);
        if (!nfc_may_change(c)) {
            prev = start;
            continue;
        }
        size_t rs = start == 0 ? 0 : prev, re = i;
        while (re < len) {
            size_t k = tok_utf8_decode(s + re, &c);
            if (!nfc_may_change(c)) break;
            re += k;
        }
        utf8proc_uint8_t *piece = NULL;
        utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s + rs, (utf8proc_ssize_t)(re - rs),
                                          &piece, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (r < 0)
            st = pio_error_set(err, r == UTF8PROC_ERROR_NOMEM ? PIO_ERR_OOM : PIO_ERR_INVALID,
                               "normalizer: %s", utf8proc_errmsg(r));
        else if (!tok_buf_append(&b, s + copied, rs - copied) || !tok_buf_append(&b, piece, (size_t)r))
            st = pio_error_set(err, PIO_ERR_OOM, "out of memory normalizing text");
        free(piece);
        copied = i = re;
    }
    if (!st && !tok_buf_append(&b, s + copied, len - copied))
        st = pio_error_set(err, PIO_ERR_OOM, "out of memory normalizing text");
    if (st) {
        tok_buf_free(&b);
        return st;
    }
    *out = b.p;
    *out_len = b.len;
    return PIO_OK;
}

pio_status tok_normalize(const tok_norm_kind *chain, size_t n, const char *s, size_t len,
                         char **out, size_t *out_len, pio_error *err) {
    if (n == 1 && chain[0] == TOK_NORM_NFC) return nfc_pieces(s, len, out, out_len, err);
    static const utf8proc_option_t options[] = {
        [TOK_NORM_NFC] = UTF8PROC_STABLE | UTF8PROC_COMPOSE,
        [TOK_NORM_NFD] = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE,
        [TOK_NORM_NFKC] = UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT,
        [TOK_NORM_NFKD] = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT,
    };
    char *cur = malloc(len + 1);
    if (!cur) return pio_error_set(err, PIO_ERR_OOM, "out of memory normalizing text");
    memcpy(cur, s, len);
    cur[len] = '\0';
    for (size_t i = 0; i < n; i++) {
        utf8proc_uint8_t *next = NULL;
        utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)cur, (utf8proc_ssize_t)len,
                                          &next, options[chain[i]]);
        free(cur);
        if (r < 0) {
            return pio_error_set(err, r == UTF8PROC_ERROR_NOMEM ? PIO_ERR_OOM : PIO_ERR_INVALID,
                                 "normalizer: %s", utf8proc_errmsg(r));
        }
        cur = (char *)next;
        len = (size_t)r;
    }
    *out = cur;
    *out_len = len;
    return PIO_OK;
}
