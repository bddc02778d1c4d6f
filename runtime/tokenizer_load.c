/* Loading: tokenizer.json read component by component, or the GPT-2/Qwen2
 * files vocab.json + merges.txt (+ tokenizer_config.json).
 *
 * Each component is interpreted from what the file declares; a type pio does
 * not implement is refused with its name rather than approximated, since a
 * tokenizer that is slightly wrong fails silently downstream. */
#include "tokenizer_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cJSON.h>

#include "pio/json.h"

/* Qwen2's split regex: what transformers' Qwen2 converter gives vocab.json
 * tokenizers (and what Qwen2/2.5/3 tokenizer.json files declare). */
static const char qwen2_regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* GPT-2's, applied by the ByteLevel pre-tokenizer itself when use_regex is set. */
static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Ids index dense per-id tables, so absurd ids are refused rather than allocated. */
#define TOK_MAX_ID (1 << 26)

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static pio_status oom(pio_error *err) {
    return pio_error_set(err, PIO_ERR_OOM, "out of memory loading tokenizer");
}

static const char *type_of(const cJSON *obj) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* ---- normalizer -------------------------------------------------------------- */

static pio_status add_norm(pio_tokenizer *tok, tok_norm_kind k, pio_error *err) {
    tok_norm_kind *p = realloc(tok->norm, (tok->n_norm + 1) * sizeof *p);
    if (!p) return oom(err);
    tok->norm = p;
    tok->norm[tok->n_norm++] = k;
    return PIO_OK;
}

static pio_status parse_normalizer(pio_tokenizer *tok, const cJSON *n, const char *what,
                                   pio_error *err) {
    if (!n || cJSON_IsNull(n)) return PIO_OK;
    const char *type = type_of(n);
    if (!type) return pio_error_set(err, PIO_ERR_FORMAT, "%s: normalizer without a type", what);
    static const struct { const char *name; tok_norm_kind kind; } forms[] = {
        {"NFC", TOK_NORM_NFC}, {"NFD", TOK_NORM_NFD}, {"NFKC", TOK_NORM_NFKC}, {"NFKD", TOK_NORM_NFKD}};
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++)
        if (!strcmp(type, forms[i].name)) return add_norm(tok, forms[i].kind, err);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        if (!cJSON_IsArray(list))
            return pio_error_set(err, PIO_ERR_FORMAT, "%s: normalizer Sequence needs 'normalizers'", what);
        const cJSON *item;
        cJSON_ArrayForEach(item, list) {
            pio_status st = parse_normalizer(tok, item, what, err);
            if (st) return st;
        }
        return PIO_OK;
    }
    return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: unsupported normalizer '%s'", what, type);
}

/* ---- pre-tokenizer ------------------------------------------------------------- */

static pio_status add_pretok(pio_tokenizer *tok, tok_pretok **out, pio_error *err) {
    tok_pretok *p = realloc(tok->pre, (tok->n_pre + 1) * sizeof *p);
    if (!p) return oom(err);
    tok->pre = p;
    *out = &tok->pre[tok->n_pre++];
    **out = (tok_pretok){0};
    return PIO_OK;
}

static pio_status parse_split(pio_tokenizer *tok, const cJSON *n, const char *what,
                              pio_error *err) {
    static const struct { const char *name; tok_split_behavior b; } behaviors[] = {
        {"Removed", TOK_SPLIT_REMOVED},           {"Isolated", TOK_SPLIT_ISOLATED},
        {"MergedWithPrevious", TOK_SPLIT_MERGED_PREV}, {"MergedWithNext", TOK_SPLIT_MERGED_NEXT},
        {"Contiguous", TOK_SPLIT_CONTIGUOUS}};
    const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(n, "pattern");
    const cJSON *regex = cJSON_GetObjectItemCaseSensitive(pattern, "Regex");
    const cJSON *string = cJSON_GetObjectItemCaseSensitive(pattern, "String");
    const cJSON *src = cJSON_IsString(regex) ? regex : string;
    if (!cJSON_IsString(src))
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: Split pre_tokenizer needs pattern {\"Regex\": ...} or {\"String\": ...}",
                             what);
    const char *behavior;
    bool invert;
    pio_status st = pio_json_string(n, "behavior", true, NULL, &behavior, what, err);
    if (!st) st = pio_json_bool(n, "invert", false, false, &invert, what, err);
    if (st) return st;
    size_t b = 0;
    while (b < sizeof behaviors / sizeof behaviors[0] && strcmp(behavior, behaviors[b].name)) b++;
    if (b == sizeof behaviors / sizeof behaviors[0])
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: unsupported Split behavior '%s'", what,
                             behavior);
    tok_pretok *p = NULL;
    if ((st = add_pretok(tok, &p, err))) return st;
    p->kind = TOK_PRE_SPLIT;
    p->behavior = behaviors[b].b;
    p->invert = invert;
    char name[600];
    snprintf(name, sizeof name, "%s: Split pattern", what);
    st = tok_regex_compile(&p->re, src->valuestring, strlen(src->valuestring), src == string,
                           name, err);
    p->has_re = st == PIO_OK;
    return st;
}

static pio_status parse_pre_tokenizer(pio_tokenizer *tok, const cJSON *n, const char *what,
                                      pio_error *err) {
    if (!n || cJSON_IsNull(n)) return PIO_OK;
    const char *type = type_of(n);
    if (!type) return pio_error_set(err, PIO_ERR_FORMAT, "%s: pre_tokenizer without a type", what);
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "pretokenizers");
        if (!cJSON_IsArray(list))
            return pio_error_set(err, PIO_ERR_FORMAT, "%s: pre_tokenizer Sequence needs 'pretokenizers'",
                                 what);
        const cJSON *item;
        cJSON_ArrayForEach(item, list) {
            pio_status st = parse_pre_tokenizer(tok, item, what, err);
            if (st) return st;
        }
        return PIO_OK;
    }
    if (!strcmp(type, "Split")) return parse_split(tok, n, what, err);
    if (!strcmp(type, "ByteLevel")) {
        bool prefix, use_regex;
        pio_status st = pio_json_bool(n, "add_prefix_space", false, true, &prefix, what, err);
        if (!st) st = pio_json_bool(n, "use_regex", false, true, &use_regex, what, err);
        tok_pretok *p = NULL;
        if (!st) st = add_pretok(tok, &p, err);
        if (st) return st;
        p->kind = TOK_PRE_BYTELEVEL;
        p->add_prefix_space = prefix;
        if (use_regex) {
            st = tok_regex_compile(&p->re, gpt2_regex, strlen(gpt2_regex), false,
                                   "ByteLevel regex", err);
            p->has_re = st == PIO_OK;
        }
        return st;
    }
    return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: unsupported pre_tokenizer '%s'", what, type);
}

/* ---- decoder and post-processor ------------------------------------------------ */

static pio_status parse_decoder(pio_tokenizer *tok, const cJSON *n, const char *what,
                                pio_error *err) {
    tok->decoder = TOK_DEC_NONE;
    if (!n || cJSON_IsNull(n)) return PIO_OK;
    const char *type = type_of(n);
    if (!type) return pio_error_set(err, PIO_ERR_FORMAT, "%s: decoder without a type", what);
    if (!strcmp(type, "ByteLevel")) {
        tok->decoder = TOK_DEC_BYTELEVEL;
        return PIO_OK;
    }
    if (!strcmp(type, "Sequence")) {
        /* A Sequence holding just ByteLevel is ByteLevel. */
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "decoders");
        if (!cJSON_IsArray(list))
            return pio_error_set(err, PIO_ERR_FORMAT, "%s: decoder Sequence needs 'decoders'", what);
        int count = cJSON_GetArraySize(list);
        if (count == 0) return PIO_OK;
        const char *inner = type_of(cJSON_GetArrayItem(list, 0));
        if (count == 1 && inner && !strcmp(inner, "ByteLevel")) {
            tok->decoder = TOK_DEC_BYTELEVEL;
            return PIO_OK;
        }
        const cJSON *item;
        cJSON_ArrayForEach(item, list) {
            const char *t = type_of(item);
            if (!t || strcmp(t, "ByteLevel"))
                return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                                     "%s: unsupported decoder '%s' (in a Sequence)", what,
                                     t ? t : "?");
        }
        return pio_error_set(err, PIO_ERR_UNSUPPORTED,
                             "%s: unsupported decoder Sequence of several ByteLevel", what);
    }
    return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: unsupported decoder '%s'", what, type);
}

/* The post-processor: the special tokens tokenizers' encode(text,
 * add_special_tokens=True) puts around a single sequence. pio's plain encode
 * leaves them out (add_special_tokens=False), since chat templates place BOS
 * and the like themselves; pio_tokenizer_encode_ex adds them on request. Only
 * ids matter here, so ByteLevel (offsets only) adds nothing. */
static pio_status add_ids(tok_ids *v, const int32_t *ids, size_t n, pio_error *err) {
    for (size_t i = 0; i < n; i++)
        if (!tok_ids_push(v, ids[i])) return oom(err);
    return PIO_OK;
}

/* ["<s>", 0] as Roberta/Bert processors spell a token. */
static pio_status pair_token(const cJSON *n, const char *key, int32_t *id, const char *what,
                             pio_error *err) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(n, key);
    if (!cJSON_IsArray(p) || cJSON_GetArraySize(p) != 2 || !cJSON_IsNumber(cJSON_GetArrayItem(p, 1)))
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: post_processor needs '%s' as [token, id]", what,
                             key);
    double v = cJSON_GetArrayItem(p, 1)->valuedouble;
    if (!(v >= 0 && v < TOK_MAX_ID) || v != (double)(int32_t)v)
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: post_processor '%s' has invalid id %g", what, key, v);
    *id = (int32_t)v;
    return PIO_OK;
}

static pio_status template_ids(const cJSON *n, const char *name, tok_ids *out, const char *what,
                               pio_error *err) {
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(n, "special_tokens");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(specials, name);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(tok, "ids"), *it;
    if (!cJSON_IsArray(ids))
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: TemplateProcessing special token '%s' has no ids",
                             what, name);
    cJSON_ArrayForEach(it, ids) {
        if (!cJSON_IsNumber(it) || !(it->valuedouble >= 0 && it->valuedouble < TOK_MAX_ID))
            return pio_error_set(err, PIO_ERR_FORMAT, "%s: TemplateProcessing special token '%s' has an invalid id",
                                 what, name);
        if (!tok_ids_push(out, (int32_t)it->valuedouble)) return oom(err);
    }
    return PIO_OK;
}

/* Wraps the current (prefix, suffix) in one more processor's. */
static pio_status parse_post_processor(pio_tokenizer *tok, const cJSON *n, const char *what,
                                       pio_error *err) {
    if (!n || cJSON_IsNull(n)) return PIO_OK;
    const char *type = type_of(n);
    if (!type) return pio_error_set(err, PIO_ERR_FORMAT, "%s: post_processor without a type", what);
    if (!strcmp(type, "ByteLevel")) return PIO_OK;
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "processors"), *item;
        if (!cJSON_IsArray(list))
            return pio_error_set(err, PIO_ERR_FORMAT, "%s: post_processor Sequence needs 'processors'", what);
        cJSON_ArrayForEach(item, list) {
            pio_status st = parse_post_processor(tok, item, what, err);
            if (st) return st;
        }
        return PIO_OK;
    }
    tok_ids pre = {0}, post = {0};
    pio_status st = PIO_OK;
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        int32_t cls, sep;
        if (!(st = pair_token(n, "cls", &cls, what, err)) && !(st = pair_token(n, "sep", &sep, what, err)) &&
            (!tok_ids_push(&pre, cls) || !tok_ids_push(&post, sep)))
            st = oom(err);
    } else if (!strcmp(type, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(n, "single"), *piece;
        if (!cJSON_IsArray(single))
            return pio_error_set(err, PIO_ERR_FORMAT, "%s: TemplateProcessing needs 'single'", what);
        bool seen = false;
        cJSON_ArrayForEach(piece, single) {
            const cJSON *sp = cJSON_GetObjectItemCaseSensitive(piece, "SpecialToken");
            const cJSON *seq = cJSON_GetObjectItemCaseSensitive(piece, "Sequence");
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(sp ? sp : seq, "id");
            if (!cJSON_IsString(id)) {
                st = pio_error_set(err, PIO_ERR_FORMAT, "%s: TemplateProcessing piece without an id", what);
            } else if (sp) {
                st = template_ids(n, id->valuestring, seen ? &post : &pre, what, err);
            } else if (seq && !strcmp(id->valuestring, "A") && !seen) {
                seen = true;
            } else {
                st = pio_error_set(err, PIO_ERR_UNSUPPORTED,
                                   "%s: unsupported TemplateProcessing single piece (sequence '%s')", what,
                                   id->valuestring);
            }
            if (st) break;
        }
        if (!st && !seen)
            st = pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: TemplateProcessing 'single' has no $A", what);
    } else {
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: unsupported post_processor '%s'", what, type);
    }
    /* new prefix = pre + old prefix; new suffix = old suffix + post */
    if (!st) st = add_ids(&pre, tok->post_prefix.p, tok->post_prefix.len, err);
    if (!st) st = add_ids(&tok->post_suffix, post.p, post.len, err);
    if (!st) {
        tok_ids_free(&tok->post_prefix);
        tok->post_prefix = pre;
        pre = (tok_ids){0};
    }
    tok_ids_free(&pre);
    tok_ids_free(&post);
    return st;
}

static char *read_text(const char *path, size_t *len, pio_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        pio_error_set(err, PIO_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    tok_buf b = {0};
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (!tok_buf_append(&b, chunk, got)) {
            fclose(f);
            tok_buf_free(&b);
            oom(err);
            return NULL;
        }
    }
    bool failed = ferror(f);
    fclose(f);
    if (failed || !tok_buf_append(&b, "", 0)) {
        tok_buf_free(&b);
        pio_error_set(err, PIO_ERR_IO, "cannot read '%s'", path);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

static bool file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* ---- the big arrays, without a cJSON tree ----------------------------------------
 *
 * model.vocab and model.merges are most of a tokenizer.json (5 MB for Qwen3,
 * 300k strings). cJSON would allocate a node and a string for each; instead
 * their spans are found with a skipping scanner, blanked out of the text cJSON
 * parses, and read straight from the file's bytes into the hash maps. */

typedef struct json_span {
    size_t start, end; /* [start, end) of the value; end == 0: not found */
} json_span;

static size_t json_ws(const char *s, size_t i, size_t n) {
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    return i;
}

/* s[*i] is a quote: moves *i past the closing one. */
static bool json_skip_string(const char *s, size_t n, size_t *i) {
    size_t j = *i + 1;
    for (;;) {
        const char *q = memchr(s + j, '"', n - j);
        if (!q) return false;
        size_t k = (size_t)(q - s), bs = 0;
        while (k - bs > j && s[k - bs - 1] == '\\') bs++;
        j = k + 1;
        if (bs % 2 == 0) break;
    }
    *i = j;
    return true;
}

static bool json_skip_value(const char *s, size_t n, size_t *i, int depth) {
    size_t j = json_ws(s, *i, n);
    if (j >= n || depth > 200) return false;
    char c = s[j];
    if (c == '"') {
        if (!json_skip_string(s, n, &j)) return false;
    } else if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j = json_ws(s, j + 1, n);
        if (j < n && s[j] == close) {
            j++;
        } else {
            for (;;) {
                if (c == '{') {
                    j = json_ws(s, j, n);
                    if (j >= n || s[j] != '"' || !json_skip_string(s, n, &j)) return false;
                    j = json_ws(s, j, n);
                    if (j >= n || s[j] != ':') return false;
                    j++;
                }
                if (!json_skip_value(s, n, &j, depth + 1)) return false;
                j = json_ws(s, j, n);
                if (j >= n) return false;
                if (s[j] == close) {
                    j++;
                    break;
                }
                if (s[j] != ',') return false;
                j++;
            }
        }
    } else {
        while (j < n) {
            char d = s[j];
            if (d == ',' || d == '}' || d == ']' || d == ' ' || d == '\t' || d == '\r' || d == '\n') break;
            j++;
        }
    }
    *i = j;
    return true;
}

/* Whether the string at s[i] (a quote) is exactly `key`. */
static bool json_key_is(const char *s, size_t n, size_t i, const char *key) {
    size_t k = strlen(key);
    return i + k + 1 < n && !memcmp(s + i + 1, key, k) && s[i + k + 1] == '"';
}

/* Finds model.vocab (an object) and model.merges (an array) in the top-level
 * object; leaves the spans empty when the text is not shaped so (cJSON then
 * parses everything and reports what is wrong). */
static void find_model_spans(const char *s, size_t n, json_span *vocab, json_span *merges) {
    size_t i = json_ws(s, 0, n);
    if (i >= n || s[i] != '{') return;
    i = json_ws(s, i + 1, n);
    while (i < n && s[i] == '"') {
        bool is_model = json_key_is(s, n, i, "model");
        if (!json_skip_string(s, n, &i)) return;
        i = json_ws(s, i, n);
        if (i >= n || s[i] != ':') return;
        i = json_ws(s, i + 1, n);
        if (is_model && i < n && s[i] == '{') {
            size_t j = json_ws(s, i + 1, n);
            while (j < n && s[j] == '"') {
                bool v = json_key_is(s, n, j, "vocab"), m = json_key_is(s, n, j, "merges");
                if (!json_skip_string(s, n, &j)) return;
                j = json_ws(s, j, n);
                if (j >= n || s[j] != ':') return;
                j = json_ws(s, j + 1, n);
                size_t start = j;
                if (!json_skip_value(s, n, &j, 1)) return;
                if (v && s[start] == '{') *vocab = (json_span){start, j};
                if (m && s[start] == '[') *merges = (json_span){start, j};
                j = json_ws(s, j, n);
                if (j < n && s[j] == ',') j = json_ws(s, j + 1, n);
            }
        }
        if (!json_skip_value(s, n, &i, 1)) return;
        i = json_ws(s, i, n);
        if (i < n && s[i] == ',') i = json_ws(s, i + 1, n);
        else break;
    }
}

static int hex4(const char *s) {
    int v = 0;
    for (int k = 0; k < 4; k++) {
        char c = s[k];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Decodes the JSON string at s[*i] (a quote) into out (replacing its
 * contents); moves *i past it. */
static bool json_read_string(const char *s, size_t n, size_t *i, tok_buf *out) {
    size_t j = *i + 1;
    out->len = 0;
    for (;;) {
        size_t k = j;
        while (k < n && s[k] != '"' && s[k] != '\\' && (unsigned char)s[k] >= 0x20) k++;
        if (k >= n || (unsigned char)s[k] < 0x20) return false;
        if (k > j && !tok_buf_append(out, s + j, k - j)) return false;
        if (s[k] == '"') {
            *i = k + 1;
            if (!out->p && !tok_buf_append(out, "", 0)) return false;
            return true;
        }
        if (k + 1 >= n) return false;
        char e = s[k + 1], c;
        j = k + 2;
        switch (e) {
        case '"': c = '"'; break;
        case '\\': c = '\\'; break;
        case '/': c = '/'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
            int cp = k + 6 <= n ? hex4(s + k + 2) : -1;
            if (cp < 0) return false;
            j = k + 6;
            if (cp >= 0xdc00 && cp <= 0xdfff) return false; /* lone low surrogate */
            if (cp >= 0xd800 && cp <= 0xdbff) {
                int lo = j + 6 <= n && s[j] == '\\' && s[j + 1] == 'u' ? hex4(s + j + 2) : -1;
                if (lo < 0xdc00 || lo > 0xdfff) return false;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                j += 6;
            }
            char u[4];
            if (!tok_buf_append(out, u, tok_utf8_encode((uint32_t)cp, u))) return false;
            continue;
        }
        default: return false;
        }
        if (!tok_buf_append(out, &c, 1)) return false;
    }
}

static pio_status span_error(const char *what, const char *name, size_t at, pio_error *err) {
    return pio_error_set(err, PIO_ERR_FORMAT, "%s: invalid JSON in model.%s at byte %zu", what, name,
                         at);
}

/* ---- BPE model ------------------------------------------------------------------- */

static pio_status vocab_put(pio_tokenizer *tok, const char *s, size_t n, double id,
                            const char *what, pio_error *err) {
    if (!(id >= 0 && id < TOK_MAX_ID) || id != (double)(int32_t)id)
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: token '%s' has invalid id %g", what, s, id);
    if (!tok_strmap_put(&tok->bpe.vocab, s, n, (int32_t)id)) return oom(err);
    if ((int32_t)id >= tok->n_vocab) tok->n_vocab = (int32_t)id + 1;
    return PIO_OK;
}

/* The ids of one merge, the three look-ups' hashes known (merged = a + b
 * less b's prefix). */
static pio_status merge_ids_h(pio_tokenizer *tok, const char *a, size_t na, uint32_t ha,
                              const char *b, size_t nb, uint32_t hb, const char *ab, size_t nab,
                              uint32_t hab, int32_t rank, int32_t ids[3], const char *what,
                              pio_error *err) {
    tok_bpe *m = &tok->bpe;
    ids[0] = tok_strmap_get_h(&m->vocab, a, na, ha);
    ids[1] = tok_strmap_get_h(&m->vocab, b, nb, hb);
    if (ids[0] < 0 || ids[1] < 0 || nb < strlen(m->prefix))
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: merge %zu ('%.*s' '%.*s') uses a token not in the vocabulary",
                             what, (size_t)rank + 1, (int)na, a, (int)nb, b);
    ids[2] = tok_strmap_get_h(&m->vocab, ab, nab, hab);
    if (ids[2] < 0)
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: merge %zu gives '%.*s', which is not in the vocabulary",
                             what, (size_t)rank + 1, (int)nab, ab);
    return PIO_OK;
}

static pio_status add_merge(pio_tokenizer *tok, const char *a, size_t na, const char *b,
                            size_t nb, int32_t rank, const char *what, pio_error *err) {
    tok_bpe *m = &tok->bpe;
    int32_t ia = tok_strmap_get(&m->vocab, a, na), ib = tok_strmap_get(&m->vocab, b, nb);
    size_t plen = strlen(m->prefix);
    /* As tokenizers: the merged token is a + b without b's subword prefix. */
    if (ia < 0 || ib < 0 || nb < plen)
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: merge %zu ('%.*s' '%.*s') uses a token not in the vocabulary",
                             what, (size_t)rank + 1, (int)na, a, (int)nb, b);
    tok_buf *t = &m->load_tmp;
    t->len = 0;
    if (!tok_buf_append(t, a, na) || !tok_buf_append(t, b + plen, nb - plen)) return oom(err);
    int32_t merged = tok_strmap_get(&m->vocab, t->p, t->len);
    if (merged < 0)
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: merge %zu gives '%s', which is not in the vocabulary",
                             what, (size_t)rank + 1, t->p);
    if (!tok_pairmap_put(&m->merges, ia, ib, rank, merged)) return oom(err);
    return PIO_OK;
}

/* One merge written as "a b" (tokenizer.json's older form, and merges.txt). */
static pio_status add_merge_line(pio_tokenizer *tok, const char *line, size_t len, int32_t rank,
                                 const char *what, pio_error *err) {
    const char *sp = memchr(line, ' ', len);
    if (!sp || memchr(sp + 1, ' ', len - (size_t)(sp + 1 - line)))
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: merge %d is not two tokens separated by a space",
                             what, rank + 1);
    return add_merge(tok, line, (size_t)(sp - line), sp + 1, len - (size_t)(sp + 1 - line), rank,
                     what, err);
}

/* model.vocab read from its span: {"token": id, ...}. */
static pio_status read_vocab_span(pio_tokenizer *tok, const char *s, json_span sp, const char *what,
                                  pio_error *err) {
    tok_buf key = {0};
    pio_status st = PIO_OK;
    /* Roughly one entry per 12 bytes: size the map once instead of rehashing. */
    if (!tok_strmap_reserve(&tok->bpe.vocab, (sp.end - sp.start) / 12)) return oom(err);
    size_t i = json_ws(s, sp.start + 1, sp.end);
    while (!st && i < sp.end && s[i] != '}') {
        if (s[i] != '"' || !json_read_string(s, sp.end, &i, &key)) {
            st = span_error(what, "vocab", i, err);
            break;
        }
        i = json_ws(s, i, sp.end);
        if (i >= sp.end || s[i] != ':') {
            st = span_error(what, "vocab", i, err);
            break;
        }
        i = json_ws(s, i + 1, sp.end);
        size_t start = i;
        while (i < sp.end && (s[i] == '-' || s[i] == '+' || s[i] == '.' || s[i] == 'e' ||
                              s[i] == 'E' || (s[i] >= '0' && s[i] <= '9')))
            i++;
        char num[64], *end;
        if (i == start || i - start >= sizeof num) {
            st = pio_error_set(err, PIO_ERR_FORMAT, "%s: vocab entry '%s' is not a number", what, key.p);
            break;
        }
        memcpy(num, s + start, i - start);
        num[i - start] = '\0';
        double id = strtod(num, &end);
        if (*end) {
            st = span_error(what, "vocab", start, err);
            break;
        }
        if ((st = vocab_put(tok, key.p, key.len, id, what, err))) break;
        i = json_ws(s, i, sp.end);
        if (i < sp.end && s[i] == ',') i = json_ws(s, i + 1, sp.end);
        else if (i >= sp.end || s[i] != '}') st = span_error(what, "vocab", i, err);
    }
    tok_buf_free(&key);
    return st;
}

/* model.merges read from its span: ["a b", ...] or [["a", "b"], ...]. Merges
 * are resolved in batches whose hash-map look-ups are prefetched together:
 * 450k random look-ups into a 150k-token vocabulary are most of the load. */
typedef struct merge_item {
    size_t a, na, b, nb, ab, nab; /* offsets into the batch's bytes */
    uint32_t ha, hb, hab;
    int32_t rank;
    bool not_two; /* "a b" form with other than one space */
} merge_item;

#define MERGE_BATCH 64

static pio_status flush_merges(pio_tokenizer *tok, merge_item *items, size_t n, tok_buf *bytes,
                               const char *what, pio_error *err) {
    const tok_strmap *v = &tok->bpe.vocab;
    const char *p = bytes->p;
    for (size_t k = 0; k < n; k++) {
        merge_item *it = &items[k];
        it->ha = tok_strmap_hash(p + it->a, it->na);
        it->hb = tok_strmap_hash(p + it->b, it->nb);
        it->hab = tok_strmap_hash(p + it->ab, it->nab);
    }
    for (int stage = 0; stage < 3; stage++)
        for (size_t k = 0; k < n; k++) {
            tok_strmap_prefetch(v, items[k].ha, stage);
            tok_strmap_prefetch(v, items[k].hb, stage);
            tok_strmap_prefetch(v, items[k].hab, stage);
        }
    int32_t ids[MERGE_BATCH][3];
    for (size_t k = 0; k < n; k++) {
        merge_item *it = &items[k];
        if (it->not_two)
            return pio_error_set(err, PIO_ERR_FORMAT, "%s: merge %d is not two tokens separated by a space",
                                 what, it->rank + 1);
        pio_status st = merge_ids_h(tok, p + it->a, it->na, it->ha, p + it->b, it->nb, it->hb,
                                    p + it->ab, it->nab, it->hab, it->rank, ids[k], what, err);
        if (st) return st;
        tok_pairmap_prefetch(&tok->bpe.merges, ids[k][0], ids[k][1]);
    }
    for (size_t k = 0; k < n; k++)
        if (!tok_pairmap_put(&tok->bpe.merges, ids[k][0], ids[k][1], items[k].rank, ids[k][2]))
            return oom(err);
    bytes->len = 0;
    return PIO_OK;
}

/* Queues merge (a, b) with its merged string a + b-without-prefix. */
static bool queue_merge(merge_item *it, tok_buf *bytes, const char *a, size_t na, const char *b,
                        size_t nb, size_t plen) {
    size_t tail = nb >= plen ? nb - plen : 0;
    if (!tok_buf_reserve(bytes, 2 * na + nb + tail + 1)) return false;
    char *w = bytes->p + bytes->len;
    it->a = bytes->len;
    it->na = na;
    memcpy(w, a, na);
    it->b = it->a + na;
    it->nb = nb;
    memcpy(w + na, b, nb);
    it->ab = it->b + nb;
    it->nab = na + tail;
    memcpy(w + na + nb, a, na);
    memcpy(w + 2 * na + nb, b + (nb - tail), tail);
    bytes->len += 2 * na + nb + tail;
    return true;
}

static pio_status read_merges_span(pio_tokenizer *tok, const char *s, json_span sp,
                                   const char *what, pio_error *err) {
    tok_buf a = {0}, b = {0}, bytes = {0};
    merge_item items[MERGE_BATCH];
    size_t nq = 0, plen = strlen(tok->bpe.prefix);
    pio_status st = PIO_OK;
    int32_t rank = 0;
    if (!tok_pairmap_reserve(&tok->bpe.merges, (sp.end - sp.start) / 10)) return oom(err);
    size_t i = json_ws(s, sp.start + 1, sp.end);
    while (!st && i < sp.end && s[i] != ']') {
        size_t at = i;
        bool queued = false, ok = true;
        merge_item *it = &items[nq];
        *it = (merge_item){.rank = rank};
        if (s[i] == '"') {
            if (!json_read_string(s, sp.end, &i, &a)) {
                st = span_error(what, "merges", at, err);
                break;
            }
            if (!(a.len >= 8 && !strncmp(a.p, "#version", 8))) {
                const char *space = memchr(a.p, ' ', a.len);
                size_t na = space ? (size_t)(space - a.p) : a.len;
                size_t rest = space ? a.len - na - 1 : 0;
                it->not_two = !space || memchr(space + 1, ' ', rest);
                ok = queue_merge(it, &bytes, a.p, na, space ? space + 1 : "", rest, plen);
                queued = true;
            }
        } else if (s[i] == '[') {
            i = json_ws(s, i + 1, sp.end);
            bool good = i < sp.end && s[i] == '"' && json_read_string(s, sp.end, &i, &a);
            if (good) i = json_ws(s, i, sp.end);
            good = good && i < sp.end && s[i] == ',';
            if (good) i = json_ws(s, i + 1, sp.end);
            good = good && i < sp.end && s[i] == '"' && json_read_string(s, sp.end, &i, &b);
            if (good) i = json_ws(s, i, sp.end);
            good = good && i < sp.end && s[i] == ']';
            if (!good) {
                st = flush_merges(tok, items, nq, &bytes, what, err);
                if (!st)
                    st = pio_error_set(err, PIO_ERR_FORMAT,
                                       "%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]", what, rank + 1);
                break;
            }
            i++;
            ok = queue_merge(it, &bytes, a.p, a.len, b.p, b.len, plen);
            queued = true;
        } else {
            st = flush_merges(tok, items, nq, &bytes, what, err);
            if (!st)
                st = pio_error_set(err, PIO_ERR_FORMAT, "%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]",
                                   what, rank + 1);
            break;
        }
        if (!ok) {
            st = oom(err);
            break;
        }
        if (queued) {
            rank++;
            if (++nq == MERGE_BATCH) {
                st = flush_merges(tok, items, nq, &bytes, what, err);
                nq = 0;
            }
        }
        i = json_ws(s, i, sp.end);
        if (i < sp.end && s[i] == ',') i = json_ws(s, i + 1, sp.end);
        else if (!st && (i >= sp.end || s[i] != ']')) st = span_error(what, "merges", i, err);
    }
    if (!st && nq) st = flush_merges(tok, items, nq, &bytes, what, err);
    tok_buf_free(&a);
    tok_buf_free(&b);
    tok_buf_free(&bytes);
    return st;
}

/* The char -> id table BPE uses for single characters below U+10000. */
static pio_status build_char_table(tok_bpe *m, pio_error *err) {
    m->char_id = malloc(0x10000 * sizeof *m->char_id);
    if (!m->char_id) return oom(err);
    for (size_t i = 0; i < 0x10000; i++) m->char_id[i] = -1;
    for (size_t i = 0; i < m->vocab.n; i++) {
        const struct tok_strmap_entry *e = &m->vocab.entries[i];
        const char *s = m->vocab.keys.p + e->off;
        uint32_t c;
        if (e->len >= 1 && e->len <= 3 && tok_utf8_decode(s, &c) == e->len &&
            tok_utf8_valid_up_to(s, e->len) == e->len)
            m->char_id[c] = e->val;
    }
    return PIO_OK;
}

static pio_status opt_string(const cJSON *obj, const char *key, char **out, const char *what,
                             pio_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v && !cJSON_IsNull(v) && !cJSON_IsString(v))
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: model key '%s' must be a string or null",
                             what, key);
    *out = xstrdup(cJSON_IsString(v) ? v->valuestring : "");
    return *out ? PIO_OK : oom(err);
}

static pio_status parse_model(pio_tokenizer *tok, const cJSON *model, const char *text,
                              json_span vocab_span, json_span merges_span, const char *what,
                              pio_error *err) {
    tok_bpe *m = &tok->bpe;
    const char *type = type_of(model);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(model))
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: missing 'model'", what);
    if (type ? strcmp(type, "BPE") != 0 : !merges)
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: unsupported model '%s'", what,
                             type ? type : "(untyped, not BPE)");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: BPE model needs 'vocab' (object) and 'merges' (array)",
                             what);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: unsupported BPE dropout (must be null)", what);
    pio_status st;
    if ((st = pio_json_bool(model, "fuse_unk", false, false, &m->fuse_unk, what, err)) ||
        (st = pio_json_bool(model, "byte_fallback", false, false, &m->byte_fallback, what, err)) ||
        (st = pio_json_bool(model, "ignore_merges", false, false, &m->ignore_merges, what, err)) ||
        (st = opt_string(model, "continuing_subword_prefix", &m->prefix, what, err)) ||
        (st = opt_string(model, "end_of_word_suffix", &m->suffix, what, err)))
        return st;
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    if (cJSON_IsString(unk) && !(m->unk_token = xstrdup(unk->valuestring))) return oom(err);

    if (vocab_span.end && (st = read_vocab_span(tok, text, vocab_span, what, err))) return st;
    if (merges_span.end && (st = read_merges_span(tok, text, merges_span, what, err))) return st;
    const cJSON *item;
    cJSON_ArrayForEach(item, vocab) {
        if (!cJSON_IsNumber(item))
            return pio_error_set(err, PIO_ERR_FORMAT, "%s: vocab entry '%s' is not a number", what,
                                 item->string);
        if ((st = vocab_put(tok, item->string, strlen(item->string), item->valuedouble, what, err)))
            return st;
    }
    int32_t rank = 0;
    cJSON_ArrayForEach(item, merges) {
        if (cJSON_IsString(item)) {
            if (!strncmp(item->valuestring, "#version", 8)) continue;
            st = add_merge_line(tok, item->valuestring, strlen(item->valuestring), rank, what, err);
        } else if (cJSON_IsArray(item) && cJSON_GetArraySize(item) == 2 &&
                   cJSON_IsString(item->child) && cJSON_IsString(item->child->next)) {
            const char *a = item->child->valuestring, *b = item->child->next->valuestring;
            st = add_merge(tok, a, strlen(a), b, strlen(b), rank, what, err);
        } else {
            st = pio_error_set(err, PIO_ERR_FORMAT, "%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]",
                               what, rank + 1);
        }
        if (st) return st;
        rank++;
    }
    return PIO_OK;
}

/* ---- added tokens ---------------------------------------------------------------- */

static pio_status parse_added_token(pio_tokenizer *tok, const cJSON *t, int64_t id,
                                    const char *what, pio_error *err) {
    const char *content;
    bool special, lstrip, rstrip, single_word, normalized;
    pio_status st;
    if ((st = pio_json_string(t, "content", true, NULL, &content, what, err)) ||
        (st = pio_json_bool(t, "special", false, false, &special, what, err)) ||
        (st = pio_json_bool(t, "lstrip", false, false, &lstrip, what, err)) ||
        (st = pio_json_bool(t, "rstrip", false, false, &rstrip, what, err)) ||
        (st = pio_json_bool(t, "single_word", false, false, &single_word, what, err)) ||
        (st = pio_json_bool(t, "normalized", false, !special, &normalized, what, err)))
        return st;
    if (id < 0 || id >= TOK_MAX_ID)
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: added token '%s' has invalid id %lld", what,
                             content, (long long)id);
    if (!content[0]) return PIO_OK; /* tokenizers ignores empty added tokens */
    tok_added *p = realloc(tok->added, (tok->n_added + 1) * sizeof *p);
    if (!p) return oom(err);
    tok->added = p;
    tok_added *a = &tok->added[tok->n_added++];
    *a = (tok_added){.id = (int32_t)id, .special = special, .lstrip = lstrip, .rstrip = rstrip,
                     .normalized = normalized, .single_word = single_word};
    a->len = strlen(content);
    if (!(a->content = xstrdup(content))) return oom(err);
    return PIO_OK;
}

/* Ids as tokenizers 0.23.3 gives them on load, which is not by the declared
 * "id": in file order, a token already in the vocabulary (or added before)
 * takes that id, any other the next id after the model's vocabulary and the
 * added tokens so far. In consistent files (all published ones we know) this
 * is the declared id; in others it is what transformers would use too. */
static pio_status assign_added_ids(pio_tokenizer *tok, pio_error *err) {
    int64_t model_size = (int64_t)tok->bpe.vocab.n, max = -1;
    tok_strmap by_content = {0};
    pio_status st = PIO_OK;
    for (size_t i = 0; i < tok->n_added && !st; i++) {
        tok_added *a = &tok->added[i];
        int64_t id = tok_strmap_get(&by_content, a->content, a->len);
        if (id < 0) id = tok_strmap_get(&tok->bpe.vocab, a->content, a->len);
        if (id < 0) id = max < 0 ? model_size : max >= model_size ? max + 1 : model_size;
        if (id >= TOK_MAX_ID) {
            st = pio_error_set(err, PIO_ERR_FORMAT, "tokenizer: added token '%s' gets id %lld, too large",
                               a->content, (long long)id);
            break;
        }
        if (!tok_strmap_put(&by_content, a->content, a->len, (int32_t)id)) st = oom(err);
        a->id = (int32_t)id;
        if (id > max) max = id;
        if (id >= tok->n_vocab) tok->n_vocab = (int32_t)id + 1;
    }
    tok_strmap_free(&by_content);
    return st;
}

/* ---- per-id tables ----------------------------------------------------------------- */

static pio_status add_string(pio_tokenizer *tok, const char *s, size_t n, uint32_t *off,
                             pio_error *err) {
    if (tok->strings.len > UINT32_MAX - n - 1) return oom(err);
    *off = (uint32_t)tok->strings.len;
    return tok_buf_append(&tok->strings, s, n) && tok_buf_append(&tok->strings, "", 1) ? PIO_OK
                                                                                       : oom(err);
}

/* What the decoder makes of one token (before the final lossy UTF-8 pass). */
static pio_status add_decoded(pio_tokenizer *tok, int32_t id, pio_error *err) {
    const char *s = tok->strings.p + tok->tok_off[id];
    size_t n = (size_t)tok->tok_len[id];
    tok_buf bytes = {0};
    bool mapped = tok->decoder == TOK_DEC_BYTELEVEL;
    for (size_t i = 0; mapped && i < n;) {
        uint32_t c;
        i += tok_utf8_decode(s + i, &c);
        int b = tok_char_to_byte(c);
        if (b < 0) mapped = false;
        else if (!tok_buf_append(&bytes, &(char){(char)b}, 1)) {
            tok_buf_free(&bytes);
            return oom(err);
        }
    }
    /* A token with a character outside the byte alphabet decodes as itself.
     * (Copied first: s points into tok->strings, which add_string may move.) */
    if (!mapped) {
        bytes.len = 0;
        if (!tok_buf_append(&bytes, s, n)) {
            tok_buf_free(&bytes);
            return oom(err);
        }
    }
    pio_status st = add_string(tok, bytes.p ? bytes.p : "", bytes.len, &tok->dec_off[id], err);
    tok->dec_len[id] = (int32_t)bytes.len;
    tok_buf_free(&bytes);
    return st;
}

static pio_status finish(pio_tokenizer *tok, pio_error *err) {
    size_t nv = (size_t)tok->n_vocab;
    pio_status st = assign_added_ids(tok, err);
    if (st) return st;
    nv = (size_t)tok->n_vocab;
    if (nv == 0) return pio_error_set(err, PIO_ERR_FORMAT, "tokenizer: empty vocabulary");
    if ((st = build_char_table(&tok->bpe, err))) return st;
    for (int b = 0; b < 256; b++) { /* the alphabet lies below U+0800: two bytes at most */
        char u[4];
        size_t n = tok_utf8_encode(tok_byte_to_char((uint8_t)b), u);
        tok->byte_char[b][0] = (char)n;
        memcpy(&tok->byte_char[b][1], u, n);
    }
    /* The word cache: 2^15 slots, 2 MB (calloc'ed pages are only touched as used). */
    tok->wcache = calloc(1, sizeof *tok->wcache);
    if (tok->wcache) {
        tok->wcache->slots = calloc((size_t)1 << 15, sizeof(tok_wslot));
        tok->wcache->mask = ((size_t)1 << 15) - 1;
        if (!tok->wcache->slots || pthread_mutex_init(&tok->wcache->lock, NULL)) {
            free(tok->wcache->slots);
            free(tok->wcache);
            tok->wcache = NULL; /* encoding works without it, only slower */
        }
    }
    tok->bpe.unk_id = -1;
    if (tok->bpe.unk_token) {
        tok->bpe.unk_id = tok_strmap_get(&tok->bpe.vocab, tok->bpe.unk_token, strlen(tok->bpe.unk_token));
        tok->bpe.unk_missing = tok->bpe.unk_id < 0;
    }

    /* Added tokens that match normalized text are matched in their normalized form. */
    for (size_t i = 0; i < tok->n_added; i++) {
        tok_added *a = &tok->added[i];
        if (a->normalized && tok->n_norm) {
            st = tok_normalize(tok->norm, tok->n_norm, a->content, a->len, &a->pattern,
                               &a->pattern_len, err);
            if (st) return st;
        } else {
            if (!(a->pattern = xstrdup(a->content))) return oom(err);
            a->pattern_len = a->len;
        }
        if (!tok_trie_add(a->normalized ? &tok->norm_trie : &tok->raw_trie, a->pattern,
                          a->pattern_len, (int32_t)i))
            return oom(err);
    }

    tok->tok_off = calloc(nv, sizeof *tok->tok_off);
    tok->dec_off = calloc(nv, sizeof *tok->dec_off);
    tok->tok_len = malloc(nv * sizeof *tok->tok_len);
    tok->dec_len = malloc(nv * sizeof *tok->dec_len);
    tok->special = calloc(nv, sizeof *tok->special);
    if (!tok->tok_off || !tok->dec_off || !tok->tok_len || !tok->dec_len || !tok->special)
        return oom(err);
    for (size_t i = 0; i < nv; i++) tok->tok_len[i] = tok->dec_len[i] = -1;

    /* Token strings: the model's, then added tokens over them (tokenizers
     * looks an id up among added tokens first, and answers with the
     * normalized form of a `normalized` one). */
    const tok_strmap *v = &tok->bpe.vocab;
    for (size_t i = 0; i < v->n; i++) {
        const struct tok_strmap_entry *e = &v->entries[i];
        if ((st = add_string(tok, v->keys.p + e->off, e->len, &tok->tok_off[e->val], err))) return st;
        tok->tok_len[e->val] = (int32_t)e->len;
    }
    tok_strmap specials = {0};
    for (size_t i = 0; i < tok->n_added; i++) {
        tok_added *a = &tok->added[i];
        if ((st = add_string(tok, a->pattern, a->pattern_len, &tok->tok_off[a->id], err))) goto out;
        tok->tok_len[a->id] = (int32_t)a->pattern_len;
        if (a->special && !tok_strmap_put(&specials, a->content, a->len, 1)) {
            st = oom(err);
            goto out;
        }
    }
    /* Decoding skips by token text: a model token spelled like a special
     * token is skipped too, and a special token whose normalized form differs
     * is not (tokenizers 0.23.3 behaves so). */
    for (size_t i = 0; i < nv; i++) {
        if (tok->tok_len[i] < 0) continue;
        if ((st = add_decoded(tok, (int32_t)i, err))) goto out;
        tok->special[i] = specials.n && tok_strmap_get(&specials, tok->strings.p + tok->tok_off[i],
                                                       (size_t)tok->tok_len[i]) >= 0;
    }
out:
    tok_strmap_free(&specials);
    return st;
}

/* ---- tokenizer.json ------------------------------------------------------------------ */

pio_status tok_load_json_file(pio_tokenizer *tok, const char *path, pio_error *err) {
    size_t len;
    char *text = read_text(path, &len, err);
    if (!text) return err ? err->status : PIO_ERR_IO;
    json_span vocab = {0}, merges = {0};
    find_model_spans(text, len, &vocab, &merges);
    /* cJSON parses a copy with the two spans emptied ("{}", "[]" and spaces,
     * so offsets in its error messages still point into the file). */
    char *small = malloc(len + 1);
    if (!small) {
        free(text);
        return oom(err);
    }
    memcpy(small, text, len + 1);
    json_span spans[2] = {vocab, merges};
    for (int k = 0; k < 2; k++)
        if (spans[k].end) memset(small + spans[k].start + 1, ' ', spans[k].end - spans[k].start - 2);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(small, len, &end, false);
    if (root) {
        while (end < small + len && *end && strchr(" \t\r\n", *end)) end++;
        if (end < small + len) {
            cJSON_Delete(root);
            root = NULL;
        }
    }
    size_t off = end ? (size_t)(end - small) : 0;
    free(small);
    if (!root) {
        size_t line = 1;
        for (size_t i = 0; i < off && i < len; i++) line += text[i] == '\n';
        free(text);
        return pio_error_set(err, PIO_ERR_FORMAT, "'%s': invalid JSON at byte %zu (line %zu)", path,
                             off, line);
    }
    const char *what = path;
    pio_status st = PIO_OK;

    if (!cJSON_IsObject(root)) {
        st = pio_error_set(err, PIO_ERR_FORMAT, "%s: not a JSON object", what);
        goto done;
    }
    if ((st = parse_normalizer(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), what, err)) ||
        (st = parse_pre_tokenizer(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), what, err)) ||
        (st = parse_decoder(tok, cJSON_GetObjectItemCaseSensitive(root, "decoder"), what, err)) ||
        (st = parse_post_processor(tok, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), what, err)) ||
        (st = parse_model(tok, cJSON_GetObjectItemCaseSensitive(root, "model"), text, vocab, merges,
                          what, err)))
        goto done;
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), *t;
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added)) {
        st = pio_error_set(err, PIO_ERR_FORMAT, "%s: 'added_tokens' must be an array", what);
        goto done;
    }
    cJSON_ArrayForEach(t, added) {
        int64_t id;
        if ((st = pio_json_int(t, "id", true, 0, &id, what, err)) ||
            (st = parse_added_token(tok, t, id, what, err)))
            goto done;
    }
    st = finish(tok, err);
done:
    cJSON_Delete(root);
    free(text);
    return st;
}

/* ---- vocab.json + merges.txt ------------------------------------------------------------ */

/* transformers' Qwen2 reading of merges.txt: lines stripped, blank lines and a
 * leading "#version" line skipped, two whitespace-separated tokens each. */
static pio_status load_merges_txt(pio_tokenizer *tok, const char *path, pio_error *err) {
    size_t len;
    char *text = read_text(path, &len, err);
    if (!text) return err ? err->status : PIO_ERR_IO;
    pio_status st = PIO_OK;
    int32_t rank = 0;
    size_t line_no = 0;
    for (char *line = text; st == PIO_OK && line < text + len; line_no++) {
        char *end = memchr(line, '\n', (size_t)(text + len - line));
        if (!end) end = text + len;
        char *next = end + 1;
        while (line < end && strchr(" \t\r\f\v", *line)) line++;
        while (end > line && strchr(" \t\r\f\v", end[-1])) end--;
        size_t n = (size_t)(end - line);
        if (n && !(line_no == 0 && n >= 9 && !strncmp(line, "#version:", 9))) {
            char *sp = line;
            while (sp < end && !strchr(" \t", *sp)) sp++;
            char *b = sp;
            while (b < end && strchr(" \t", *b)) b++;
            char *b_end = b;
            while (b_end < end && !strchr(" \t", *b_end)) b_end++;
            if (sp == end || b == end || b_end != end)
                st = pio_error_set(err, PIO_ERR_FORMAT, "%s: line %zu is not two tokens", path,
                                   line_no + 1);
            else
                st = add_merge(tok, line, (size_t)(sp - line), b, (size_t)(end - b), rank++, path, err);
        }
        line = next;
    }
    free(text);
    return st;
}

static int cmp_added_id(const void *a, const void *b) {
    int32_t x = ((const tok_added *)a)->id, y = ((const tok_added *)b)->id;
    return (x > y) - (x < y);
}

pio_status tok_load_vocab_merges(pio_tokenizer *tok, const char *dir, pio_error *err) {
    size_t dl = strlen(dir);
    char *path = malloc(dl + 32);
    if (!path) return oom(err);
    pio_status st = PIO_OK;
    cJSON *vocab = NULL, *config = NULL;

    /* The GPT-2/Qwen2 byte-level pipeline, as transformers' Qwen2 converter builds it. */
    tok_pretok *p = NULL;
    if ((st = add_norm(tok, TOK_NORM_NFC, err)) || (st = add_pretok(tok, &p, err))) goto done;
    p->kind = TOK_PRE_SPLIT;
    p->behavior = TOK_SPLIT_ISOLATED;
    if ((st = tok_regex_compile(&p->re, qwen2_regex, strlen(qwen2_regex), false, "Qwen2 regex", err)))
        goto done;
    p->has_re = true;
    if ((st = add_pretok(tok, &p, err))) goto done;
    p->kind = TOK_PRE_BYTELEVEL;
    tok->decoder = TOK_DEC_BYTELEVEL;
    if (!(tok->bpe.prefix = xstrdup("")) || !(tok->bpe.suffix = xstrdup(""))) {
        st = oom(err);
        goto done;
    }

    snprintf(path, dl + 32, "%s/vocab.json", dir);
    if (!(vocab = pio_json_read_file(path, err))) {
        st = err ? err->status : PIO_ERR_IO;
        goto done;
    }
    if (!cJSON_IsObject(vocab)) {
        st = pio_error_set(err, PIO_ERR_FORMAT, "%s: not a JSON object", path);
        goto done;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, vocab) {
        if (!cJSON_IsNumber(item)) {
            st = pio_error_set(err, PIO_ERR_FORMAT, "%s: entry '%s' is not a number", path, item->string);
            goto done;
        }
        if ((st = vocab_put(tok, item->string, strlen(item->string), item->valuedouble, path, err)))
            goto done;
    }
    snprintf(path, dl + 32, "%s/merges.txt", dir);
    if ((st = load_merges_txt(tok, path, err))) goto done;

    /* Added tokens, from tokenizer_config.json's added_tokens_decoder (id -> token). */
    snprintf(path, dl + 32, "%s/tokenizer_config.json", dir);
    if (file_exists(path)) {
        if (!(config = pio_json_read_file(path, err))) {
            st = err ? err->status : PIO_ERR_IO;
            goto done;
        }
        const cJSON *dec = cJSON_GetObjectItemCaseSensitive(config, "added_tokens_decoder");
        const cJSON *list = cJSON_IsObject(dec) ? dec : NULL;
        cJSON_ArrayForEach(item, list) {
            char *end;
            errno = 0;
            long long id = strtoll(item->string, &end, 10);
            if (*end || errno || end == item->string) {
                st = pio_error_set(err, PIO_ERR_FORMAT, "%s: added_tokens_decoder key '%s' is not an id",
                                   path, item->string);
                goto done;
            }
            if ((st = parse_added_token(tok, item, id, path, err))) goto done;
        }
        /* transformers adds them in id order; ids are then assigned as in finish(). */
        qsort(tok->added, tok->n_added, sizeof *tok->added, cmp_added_id);
    }
    st = finish(tok, err);
done:
    cJSON_Delete(vocab);
    cJSON_Delete(config);
    free(path);
    return st;
}

void tok_free_parts(pio_tokenizer *tok) {
    if (tok->wcache) {
        pthread_mutex_destroy(&tok->wcache->lock);
        free(tok->wcache->slots);
        free(tok->wcache);
        tok->wcache = NULL;
    }
    tok_bpe_free(&tok->bpe);
    tok_ids_free(&tok->post_prefix);
    tok_ids_free(&tok->post_suffix);
    free(tok->dir);
    free(tok->norm);
    for (size_t i = 0; i < tok->n_pre; i++)
        if (tok->pre[i].has_re) tok_regex_free(&tok->pre[i].re);
    free(tok->pre);
    for (size_t i = 0; i < tok->n_added; i++) {
        free(tok->added[i].content);
        free(tok->added[i].pattern);
    }
    free(tok->added);
    tok_trie_free(&tok->raw_trie);
    tok_trie_free(&tok->norm_trie);
    tok_buf_free(&tok->strings);
    free(tok->tok_off);
    free(tok->dec_off);
    free(tok->tok_len);
    free(tok->dec_len);
    free(tok->special);
}
