/* tokenizer_internal.h: the parts of pio_tokenizer shared by tokenizer*.c.
 *
 * The pipeline mirrors Hugging Face `tokenizers` step by step, because exact
 * parity is the point: added tokens are cut out of the raw text, the rest is
 * normalized, cut again at normalized added tokens, pre-tokenized into pieces
 * and each piece is run through BPE.
 *
 *   tokenizer.c          public API: encode, decode, look-ups, streaming detok
 *   tokenizer_load.c     tokenizer.json and vocab.json + merges.txt
 *   tokenizer_bpe.c      the BPE model: vocabulary, merge ranks, word merging
 *   tokenizer_regex.c    PCRE2 with Oniguruma's classes; Split behaviours
 *   tokenizer_text.c     UTF-8, byte-level alphabet, normalizers, hash maps
 *   tokenizer_unicode.c  generated class tables (scripts/make_tokenizer_unicode.py)
 */
#ifndef PIO_TOKENIZER_INTERNAL_H
#define PIO_TOKENIZER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pthread.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "pio/error.h"
#include "pio/tokenizer.h"

/* ---- growable buffers ---------------------------------------------------- */

typedef struct tok_buf {
    char *p;
    size_t len, cap;
} tok_buf;

bool tok_buf_reserve(tok_buf *b, size_t extra);
bool tok_buf_append(tok_buf *b, const void *data, size_t n);
void tok_buf_free(tok_buf *b);

typedef struct tok_ids {
    int32_t *p;
    size_t len, cap;
} tok_ids;

bool tok_ids_push(tok_ids *v, int32_t id);
void tok_ids_free(tok_ids *v);

/* A list of text pieces stored back to back: piece i is
 * bytes.p[i ? ends[i-1] : 0 .. ends[i]). */
typedef struct tok_pieces {
    tok_buf bytes;
    size_t *ends;
    size_t n, cap;
} tok_pieces;

bool tok_pieces_add(tok_pieces *l, const char *s, size_t n);
void tok_pieces_clear(tok_pieces *l);
void tok_pieces_free(tok_pieces *l);
static inline const char *tok_piece(const tok_pieces *l, size_t i, size_t *n) {
    size_t start = i ? l->ends[i - 1] : 0;
    *n = l->ends[i] - start;
    return l->bytes.p + start;
}

/* ---- hash maps ----------------------------------------------------------- */

/* String -> int32, owning copies of its keys. */
struct tok_strmap_entry {
    uint32_t off, len, hash; /* key at keys.p + off */
    int32_t val;
};
typedef struct tok_strmap_slot {
    uint32_t hash, index; /* index: entry + 1; 0 = empty */
} tok_strmap_slot;
typedef struct tok_strmap {
    struct tok_strmap_entry *entries; /* insertion order */
    size_t n, cap;
    tok_strmap_slot *slots; /* power-of-two count; the hash spares most entry visits */
    size_t mask;
    tok_buf keys;
} tok_strmap;

/* Room for n entries without rehashing. False only when out of memory. */
bool tok_strmap_reserve(tok_strmap *m, size_t n);
/* Insert or overwrite. False only when out of memory. */
bool tok_strmap_put(tok_strmap *m, const char *key, size_t len, int32_t val);
/* The value, or -1. */
int32_t tok_strmap_get(const tok_strmap *m, const char *key, size_t len);
/* The same in pieces, so that a batch of look-ups can overlap their cache
 * misses: hash, then tok_strmap_prefetch at stages 0 (slot), 1 (entry) and 2
 * (key), then the look-up with the hash. */
uint32_t tok_strmap_hash(const char *key, size_t len);
void tok_strmap_prefetch(const tok_strmap *m, uint32_t hash, int stage);
int32_t tok_strmap_get_h(const tok_strmap *m, const char *key, size_t len, uint32_t hash);
void tok_strmap_free(tok_strmap *m);

/* (left id, right id) -> (rank, merged id); one slot per cache access. */
typedef struct tok_pair_slot {
    uint64_t key; /* left << 32 | right; UINT64_MAX = empty */
    int32_t rank, merged;
} tok_pair_slot;
typedef struct tok_pairmap {
    tok_pair_slot *slots;
    size_t n, mask;
} tok_pairmap;

bool tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged);
bool tok_pairmap_reserve(tok_pairmap *m, size_t n);
void tok_pairmap_prefetch(const tok_pairmap *m, int32_t a, int32_t b);
bool tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged);
void tok_pairmap_free(tok_pairmap *m);

/* ---- UTF-8 and Unicode ---------------------------------------------------- */

typedef struct tok_range {
    uint32_t lo, hi;
} tok_range;
typedef struct tok_range_set {
    const tok_range *r;
    size_t n;
} tok_range_set;

/* Generated (tokenizer_unicode.c): Oniguruma's \s, \p{L}, \p{N}, \w, \d, and
 * the letters/numbers that Unicode pio_tok_uni_base_version lacks. */
extern const char pio_tok_uni_base_version[];
extern const tok_range_set pio_tok_uni_space, pio_tok_uni_letter, pio_tok_uni_number;
extern const tok_range_set pio_tok_uni_word, pio_tok_uni_digit;
extern const tok_range_set pio_tok_uni_letter_extra, pio_tok_uni_number_extra;

bool tok_range_has(const tok_range_set *s, uint32_t c);

/* Offset of the first byte that is not valid UTF-8 (Rust's rules), or len. */
size_t tok_utf8_valid_up_to(const char *s, size_t len);
/* Decodes the code point at s (valid UTF-8 assumed); returns its length. */
size_t tok_utf8_decode(const char *s, uint32_t *c);
size_t tok_utf8_encode(uint32_t c, char out[4]);

/* Appends s to out as Rust's String::from_utf8_lossy would: each maximal
 * invalid subsequence becomes U+FFFD. Unless final, an incomplete but so far
 * valid sequence at the end is left unconsumed. Returns the bytes consumed;
 * (size_t)-1 when out of memory. */
size_t tok_utf8_lossy(const char *s, size_t len, bool final, tok_buf *out);

/* White_Space, as Rust's char::is_whitespace and Oniguruma's \s. */
bool tok_is_space(uint32_t c);
/* Rust regex's \w: Alphabetic, marks, decimal digits, connector punctuation,
 * join controls (used by added tokens' single_word). */
bool tok_is_word(uint32_t c);

/* GPT-2's byte-level alphabet: byte -> code point, and back (-1 if none). */
uint32_t tok_byte_to_char(uint8_t b);
int tok_char_to_byte(uint32_t c);

/* ---- normalizers ---------------------------------------------------------- */

typedef enum tok_norm_kind { TOK_NORM_NFC, TOK_NORM_NFD, TOK_NORM_NFKC, TOK_NORM_NFKD } tok_norm_kind;

/* False when the chain is sure to leave s as it is. */
bool tok_normalize_needed(const tok_norm_kind *chain, size_t n, const char *s, size_t len);
/* Applies the normalizer chain to s; *out is malloc'ed. */
pio_status tok_normalize(const tok_norm_kind *chain, size_t n, const char *s, size_t len,
                         char **out, size_t *out_len, pio_error *err);

/* ---- regex ---------------------------------------------------------------- */

typedef struct tok_regex {
    pcre2_code *code;
} tok_regex;

/* Compiles an Oniguruma-syntax pattern (or, literal, a plain string) so that it
 * matches as tokenizers' Split does. `what` names it in errors. */
pio_status tok_regex_compile(tok_regex *re, const char *pattern, size_t len, bool literal,
                             const char *what, pio_error *err);
void tok_regex_free(tok_regex *re);

/* Per-call matching state (match data, JIT stack). */
typedef struct tok_match_state {
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
} tok_match_state;

pio_status tok_match_state_init(tok_match_state *ms, pio_error *err);
void tok_match_state_free(tok_match_state *ms);

typedef enum tok_split_behavior {
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_ISOLATED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS,
} tok_split_behavior;

/* Splits s at the regex's matches as tokenizers' Split pre-tokenizer does and
 * appends the non-empty pieces to out. */
pio_status tok_regex_split(const tok_regex *re, tok_match_state *ms, const char *s, size_t len,
                           tok_split_behavior behavior, bool invert, tok_pieces *out,
                           pio_error *err);

/* ---- BPE model ------------------------------------------------------------ */

typedef struct tok_bpe {
    tok_strmap vocab;          /* token string -> id */
    tok_pairmap merges;        /* (id, id) -> (rank, merged id) */
    int32_t *char_id;          /* code point < 0x10000 -> id of that one-char token, or -1 */
    char *prefix, *suffix;     /* continuing_subword_prefix, end_of_word_suffix ("" if none) */
    int32_t unk_id;            /* -1: none */
    bool unk_missing;          /* unk_token named but not in the vocabulary */
    char *unk_token;
    bool fuse_unk, byte_fallback, ignore_merges;
    tok_buf load_tmp;          /* scratch while reading merges */
} tok_bpe;

/* Scratch space reused across words of one encode call. */
typedef struct tok_bpe_scratch {
    struct tok_symbol *sym;
    size_t sym_cap;
    struct tok_merge_cand *heap;
    size_t heap_cap;
    tok_buf tmp;
} tok_bpe_scratch;

/* Appends the ids of one pre-tokenized piece. */
pio_status tok_bpe_word(const tok_bpe *m, tok_bpe_scratch *s, const char *w, size_t len,
                        tok_ids *out, pio_error *err);
void tok_bpe_scratch_free(tok_bpe_scratch *s);
void tok_bpe_free(tok_bpe *m);

/* ---- the word cache ------------------------------------------------------- */

/* BPE results shared by every encode call on a tokenizer: the same words
 * recur across calls (documents, chat turns). Direct-mapped; a slot holds a
 * pre-tokenized piece of up to TOK_WKEY bytes that BPE turns into up to
 * TOK_WIDS ids, 64 bytes in all. Encodes may run on several threads at once:
 * slots are read and written under `lock`, taken with trylock, so a busy
 * cache is skipped rather than waited for. */
#define TOK_WKEY 26
#define TOK_WIDS 8
typedef struct tok_wslot {
    uint32_t hash;
    uint8_t len, n; /* len 0: empty */
    char key[TOK_WKEY];
    int32_t ids[TOK_WIDS];
} tok_wslot;

_Static_assert(sizeof(tok_wslot) == 64, "a word-cache slot is one cache line");

typedef struct tok_wcache {
    pthread_mutex_t lock;
    tok_wslot *slots;
    size_t mask;
} tok_wcache;

/* ---- the tokenizer -------------------------------------------------------- */

typedef struct tok_added {
    char *content;  /* as given */
    size_t len;
    char *pattern;  /* what is matched: content, normalized when `normalized` */
    size_t pattern_len;
    int32_t id;
    bool special, lstrip, rstrip, normalized, single_word;
} tok_added;

/* Leftmost-longest matcher over a set of added tokens (a byte trie). */
typedef struct tok_trie {
    struct tok_trie_node *nodes;
    size_t n, cap;
    bool first[256]; /* bytes some pattern starts with */
} tok_trie;

typedef enum tok_pretok_kind { TOK_PRE_SPLIT, TOK_PRE_BYTELEVEL } tok_pretok_kind;

typedef struct tok_pretok {
    tok_pretok_kind kind;
    tok_regex re;                 /* Split's pattern, or ByteLevel's GPT-2 regex */
    bool has_re;
    tok_split_behavior behavior;  /* Split */
    bool invert;                  /* Split */
    bool add_prefix_space;        /* ByteLevel */
} tok_pretok;

typedef enum tok_decoder_kind {
    TOK_DEC_NONE,      /* tokens joined with " ", as tokenizers does without a decoder */
    TOK_DEC_BYTELEVEL, /* each token's characters mapped back to bytes */
} tok_decoder_kind;

struct pio_tokenizer {
    tok_bpe bpe;
    tok_norm_kind *norm;   /* normalizer chain; empty = none */
    size_t n_norm;
    tok_pretok *pre;       /* pre-tokenizer steps, Sequences flattened */
    size_t n_pre;
    tok_decoder_kind decoder;
    char byte_char[256][3];  /* byte -> its byte-level character: length, UTF-8 */
    tok_ids post_prefix, post_suffix; /* the post-processor's special tokens */
    tok_wcache *wcache;    /* NULL: none (out of memory at load) */
    char *dir;             /* the directory the files came from */

    tok_added *added;
    size_t n_added;
    tok_trie raw_trie, norm_trie; /* added tokens matched before / after normalizing */

    int32_t n_vocab;
    /* Per id (n_vocab entries): the token string (added content wins over the
     * model's), its decoded bytes, and whether it is special. Offsets into
     * `strings`; len -1 = no token has this id. */
    tok_buf strings;
    uint32_t *tok_off, *dec_off;
    int32_t *tok_len, *dec_len;
    bool *special;
};

/* Added-token trie. */
bool tok_trie_add(tok_trie *t, const char *s, size_t n, int32_t index);
/* Longest pattern starting at s[pos]; returns its index into added or -1. */
int32_t tok_trie_match_at(const tok_trie *t, const char *s, size_t len, size_t pos,
                          size_t *match_len);
void tok_trie_free(tok_trie *t);

/* Loading (tokenizer_load.c). tok is zeroed by the caller; on failure the
 * caller frees whatever was filled in with tok_free_parts. */
pio_status tok_load_json_file(pio_tokenizer *tok, const char *path, pio_error *err);
pio_status tok_load_vocab_merges(pio_tokenizer *tok, const char *dir, pio_error *err);
void tok_free_parts(pio_tokenizer *tok);

#endif
