/* Split regexes: Oniguruma patterns run with PCRE2, splitting as tokenizers
 * does.
 *
 * tokenizers compiles Split patterns with Oniguruma (Ruby syntax). PCRE2 reads
 * the same syntax for everything tokenizer files use, but gives some escapes
 * other classes: its \s also matches U+180E, its \w lacks marks and most
 * numbers, and its \p{L}/\p{N} follow the Unicode version PCRE2 was built with
 * (14.0 in Debian 12) rather than Oniguruma's (16.0 in tokenizers 0.23.3). So
 * \s \w \d \p{L} \p{N}, their negations and \b \B are rewritten into the code
 * point ranges tokenizers itself uses, measured by
 * scripts/make_tokenizer_unicode.py. Oniguruma's \h (a hex digit, not PCRE2's
 * horizontal space) and \uHHHH are translated too. Other properties (\p{Lu},
 * \p{P}, ...) are left to PCRE2: exact for code points Unicode 14 assigns.
 * Nested classes and && (which PCRE2 would misread) are refused.
 */
#include "tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- pattern translation ---------------------------------------------------- */

typedef struct class_src {
    const tok_range_set *full;  /* the exact class */
    const tok_range_set *extra; /* what PCRE2's own property lacks, when usable */
    const char *native;         /* that property ("\\p{L}"), or NULL */
} class_src;

static bool put(tok_buf *b, const char *s) {
    return tok_buf_append(b, s, strlen(s));
}

static bool put_ranges(tok_buf *b, const tok_range *r, size_t n) {
    char tmp[40];
    for (size_t i = 0; i < n; i++) {
        int k = r[i].lo == r[i].hi ? snprintf(tmp, sizeof tmp, "\\x{%x}", r[i].lo)
                                   : snprintf(tmp, sizeof tmp, "\\x{%x}-\\x{%x}", r[i].lo, r[i].hi);
        if (!tok_buf_append(b, tmp, (size_t)k)) return false;
    }
    return true;
}

/* The complement of a range set, without the surrogates (which UTF-mode
 * PCRE2 refuses in a class). */
static bool put_complement(tok_buf *b, const tok_range_set *s) {
    uint32_t next = 0;
    for (size_t i = 0; i <= s->n; i++) {
        uint32_t lo = next, hi = i < s->n ? s->r[i].lo : 0x110000;
        if (hi > lo) {
            tok_range parts[2];
            size_t np = 0;
            if (lo < 0xd800) parts[np++] = (tok_range){lo, (hi < 0xd800 ? hi : 0xd800) - 1};
            if (hi > 0xe000) parts[np++] = (tok_range){lo > 0xe000 ? lo : 0xe000, hi - 1};
            if (!put_ranges(b, parts, np)) return false;
        }
        if (i < s->n) next = s->r[i].hi + 1;
    }
    return true;
}

/* Writes a class item: inside [...] just its ranges, outside a whole class. */
static bool put_class(tok_buf *b, const class_src *c, bool negate, bool in_class) {
    if (in_class) {
        if (negate) return put_complement(b, c->full);
        if (c->native) return put(b, c->native) && put_ranges(b, c->extra->r, c->extra->n);
        return put_ranges(b, c->full->r, c->full->n);
    }
    if (!put(b, negate ? "[^" : "[")) return false;
    if (c->native) {
        if (!put(b, c->native) || !put_ranges(b, c->extra->r, c->extra->n)) return false;
    } else if (!put_ranges(b, c->full->r, c->full->n)) {
        return false;
    }
    return put(b, "]");
}

static const tok_range hex_r[] = {{'0', '9'}, {'A', 'F'}, {'a', 'f'}};
static const tok_range_set hex_set = {hex_r, 3};

static bool is_hex4(const char *s) {
    for (int k = 0; k < 4; k++)
        if (!strchr("0123456789abcdefABCDEF", s[k]) || !s[k]) return false;
    return true;
}

/* Returns the PCRE2 pattern (malloc'ed), or NULL with *why set to a reason
 * (NULL: out of memory). */
static char *translate(const char *pat, size_t len, bool native_ok, const char **why) {
    class_src space = {&pio_tok_uni_space, NULL, NULL};
    class_src hex = {&hex_set, NULL, NULL};
    class_src word = {&pio_tok_uni_word, NULL, NULL};
    class_src digit = {&pio_tok_uni_digit, NULL, NULL};
    class_src letter = {&pio_tok_uni_letter, &pio_tok_uni_letter_extra,
                        native_ok ? "\\p{L}" : NULL};
    class_src number = {&pio_tok_uni_number, &pio_tok_uni_number_extra,
                        native_ok ? "\\p{N}" : NULL};
    tok_buf b = {0};
    bool in_class = false, ok = true;
    *why = NULL;
    size_t class_start = 0; /* where a leading ']' would still be literal */
    for (size_t i = 0; ok && i < len;) {
        char c = pat[i];
        if (c == '\\' && i + 1 < len) {
            char e = pat[i + 1];
            if (e == 's' || e == 'S') {
                ok = put_class(&b, &space, e == 'S', in_class);
                i += 2;
                continue;
            }
            const class_src *simple = e == 'h' || e == 'H' ? &hex
                                    : e == 'w' || e == 'W' ? &word
                                    : e == 'd' || e == 'D' ? &digit : NULL;
            if (simple) {
                ok = put_class(&b, simple, e == 'H' || e == 'W' || e == 'D', in_class);
                i += 2;
                continue;
            }
            if ((e == 'b' || e == 'B') && !in_class) {
                /* A word boundary by Oniguruma's \w: word on exactly one side
                 * (\b), or on both or neither (\B). */
                ok = put(&b, e == 'b' ? "(?:(?<=" : "(?:(?<=") && put_class(&b, &word, false, false) &&
                     put(&b, e == 'b' ? ")(?!" : ")(?=") && put_class(&b, &word, false, false) &&
                     put(&b, ")|(?<!") && put_class(&b, &word, false, false) &&
                     put(&b, e == 'b' ? ")(?=" : ")(?!") && put_class(&b, &word, false, false) &&
                     put(&b, "))");
                i += 2;
                continue;
            }
            if ((e == 'p' || e == 'P') && i + 2 < len && pat[i + 2] == '{') {
                const char *close = memchr(pat + i + 3, '}', len - i - 3);
                if (close) {
                    const char *name = pat + i + 3;
                    bool neg = e == 'P';
                    if (*name == '^') {
                        neg = !neg;
                        name++;
                    }
                    size_t nl = (size_t)(close - name);
                    const class_src *src = NULL;
                    if ((nl == 1 && *name == 'L') || (nl == 6 && !memcmp(name, "Letter", 6)))
                        src = &letter;
                    else if ((nl == 1 && *name == 'N') || (nl == 6 && !memcmp(name, "Number", 6)))
                        src = &number;
                    if (src) {
                        ok = put_class(&b, src, neg, in_class);
                        i = (size_t)(close - pat) + 1;
                        continue;
                    }
                }
            }
            if (e == 'u' && i + 6 <= len && is_hex4(pat + i + 2)) {
                /* Oniguruma (Ruby) \uHHHH; PCRE2 spells it \x{HHHH}. */
                char tmp[16];
                snprintf(tmp, sizeof tmp, "\\x{%.4s}", pat + i + 2);
                ok = put(&b, tmp);
                i += 6;
                continue;
            }
            /* Any other escape passes through whole (with a multi-byte char). */
            size_t n = 2;
            while (i + n < len && ((unsigned char)pat[i + n] & 0xc0) == 0x80) n++;
            ok = tok_buf_append(&b, pat + i, n);
            i += n;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            class_start = i + 1;
            if (class_start < len && pat[class_start] == '^') class_start++;
        } else if (in_class && c == '[' && i + 1 < len && pat[i + 1] == ':') {
            /* POSIX class [:name:] (or [:^name:]): those with a measured
             * table are translated, the others copied through. */
            size_t n = 1;
            for (size_t k = i + 2; k + 1 < len; k++) {
                if (pat[k] == ':' && pat[k + 1] == ']') {
                    n = k + 2 - i;
                    break;
                }
            }
            bool neg = n > 4 && pat[i + 2] == '^';
            const char *name = pat + i + 2 + neg;
            size_t nl = n > 4 ? n - 4 - neg : 0;
            const class_src *src = nl == 5 && !memcmp(name, "space", 5)  ? &space
                                 : nl == 5 && !memcmp(name, "digit", 5)  ? &digit
                                 : nl == 4 && !memcmp(name, "word", 4)   ? &word
                                 : nl == 6 && !memcmp(name, "xdigit", 6) ? &hex : NULL;
            ok = src ? put_class(&b, src, neg, true) : tok_buf_append(&b, pat + i, n);
            i += n;
            continue;
        } else if (in_class && (c == '[' || (c == '&' && i + 1 < len && pat[i + 1] == '&'))) {
            /* Oniguruma nests classes and intersects them with &&; PCRE2
             * would read both as literal characters. */
            *why = "nested character classes and && are not supported";
            ok = false;
            break;
        } else if (in_class && c == ']' && i != class_start) {
            in_class = false;
        }
        ok = tok_buf_append(&b, pat + i, 1);
        i++;
    }
    if (!ok || !tok_buf_append(&b, "", 0)) {
        tok_buf_free(&b);
        return NULL;
    }
    return b.p;
}

/* PCRE2's property tables may stand in for Oniguruma's (plus the extra
 * ranges) only when PCRE2 has the exact Unicode version the extras were
 * measured against. */
static bool native_classes_ok(void) {
    char version[32] = "";
    if (pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, version) < 0) return false;
    return pio_tok_uni_base_version[0] && strcmp(version, pio_tok_uni_base_version) == 0;
}

/* ---- compile and match ------------------------------------------------------ */

pio_status tok_regex_compile(tok_regex *re, const char *pattern, size_t len, bool literal,
                             const char *what, pio_error *err) {
    char *translated = NULL;
    uint32_t options = PCRE2_UTF;
    if (literal) {
        options |= PCRE2_LITERAL;
    } else {
        const char *why;
        translated = translate(pattern, len, native_classes_ok(), &why);
        if (!translated && why)
            return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: unsupported regex: %s", what, why);
        if (!translated) return pio_error_set(err, PIO_ERR_OOM, "out of memory compiling %s", what);
        pattern = translated;
        len = strlen(translated);
        /* Ruby syntax: ^ and $ are line anchors, lines end at \n only. */
        options |= PCRE2_UCP | PCRE2_MULTILINE;
    }
    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    if (!cc) {
        free(translated);
        return pio_error_set(err, PIO_ERR_OOM, "out of memory compiling %s", what);
    }
    pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
    int code;
    PCRE2_SIZE offset;
    re->code = pcre2_compile((PCRE2_SPTR)pattern, len, options, &code, &offset, cc);
    pcre2_compile_context_free(cc);
    free(translated);
    if (!re->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return pio_error_set(err, PIO_ERR_UNSUPPORTED, "%s: cannot compile regex: %s", what,
                             (const char *)msg);
    }
    /* Without JIT the interpreter still matches correctly, only slower. */
    pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);
    return PIO_OK;
}

void tok_regex_free(tok_regex *re) {
    pcre2_code_free(re->code);
    re->code = NULL;
}

pio_status tok_match_state_init(tok_match_state *ms, pio_error *err) {
    *ms = (tok_match_state){0};
    ms->md = pcre2_match_data_create(1, NULL);
    ms->mctx = pcre2_match_context_create(NULL);
    if (!ms->md || !ms->mctx) {
        tok_match_state_free(ms);
        return pio_error_set(err, PIO_ERR_OOM, "out of memory for regex matching");
    }
    return PIO_OK;
}

void tok_match_state_free(tok_match_state *ms) {
    pcre2_match_data_free(ms->md);
    pcre2_match_context_free(ms->mctx);
    pcre2_jit_stack_free(ms->jit_stack);
    *ms = (tok_match_state){0};
}

/* One search from `from`: 1 with (*st, *en), 0 for no match. */
static pio_status search(const tok_regex *re, tok_match_state *ms, const char *s, size_t len,
                         size_t from, size_t *st, size_t *en, int *found, pio_error *err) {
    int rc = pcre2_match(re->code, (PCRE2_SPTR)s, len, from, PCRE2_NO_UTF_CHECK, ms->md,
                         ms->mctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !ms->jit_stack) {
        /* Long runs (kilobytes of spaces) can outgrow the default 32 KiB. */
        ms->jit_stack = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, NULL);
        if (!ms->jit_stack) return pio_error_set(err, PIO_ERR_OOM, "out of memory for regex stack");
        pcre2_jit_stack_assign(ms->mctx, NULL, ms->jit_stack);
        rc = pcre2_match(re->code, (PCRE2_SPTR)s, len, from, PCRE2_NO_UTF_CHECK, ms->md,
                         ms->mctx);
    }
    if (rc == PCRE2_ERROR_NOMATCH) {
        *found = 0;
        return PIO_OK;
    }
    if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        return pio_error_set(err, PIO_ERR_INVALID, "pre-tokenizer regex failed at byte %zu: %s",
                             from, (const char *)msg);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(ms->md);
    *st = ov[0];
    *en = ov[1];
    *found = 1;
    return PIO_OK;
}

typedef struct seg {
    size_t start, end;
    bool match;
} seg;

typedef struct seg_list {
    seg *p;
    size_t n, cap;
} seg_list;

static bool seg_push(seg_list *l, size_t start, size_t end, bool match) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        seg *p = realloc(l->p, cap * sizeof *p);
        if (!p) return false;
        l->p = p;
        l->cap = cap;
    }
    l->p[l->n++] = (seg){start, end, match};
    return true;
}

/* The matches and the text between them, as tokenizers' Pattern::find_matches
 * gives them for an Oniguruma regex: an empty match right where the previous
 * match ended is skipped by moving on one character. */
static pio_status find_segments(const tok_regex *re, tok_match_state *ms, const char *s,
                                size_t len, bool invert, seg_list *out, pio_error *err) {
    size_t last_end = 0, prev = 0, last_match_end = 0;
    bool have_last = false;
    while (last_end <= len) {
        size_t st, en;
        int found;
        pio_status rc = search(re, ms, s, len, last_end, &st, &en, &found, err);
        if (rc) return rc;
        if (!found) break;
        if (st == en && have_last && last_match_end == en) {
            size_t step = 1;
            if (last_end < len) {
                uint32_t c;
                step = tok_utf8_decode(s + last_end, &c);
            }
            last_end += step;
            continue;
        }
        last_end = last_match_end = en;
        have_last = true;
        if (prev != st && !seg_push(out, prev, st, invert)) goto oom;
        if (!seg_push(out, st, en, !invert)) goto oom;
        prev = en;
    }
    if (prev != len && !seg_push(out, prev, len, invert)) goto oom;
    return PIO_OK;
oom:
    return pio_error_set(err, PIO_ERR_OOM, "out of memory splitting text");
}

pio_status tok_regex_split(const tok_regex *re, tok_match_state *ms, const char *s, size_t len,
                           tok_split_behavior behavior, bool invert, tok_pieces *out,
                           pio_error *err) {
    if (len == 0) return PIO_OK; /* one empty piece, which tokenizers then drops */
    seg_list segs = {0};
    pio_status rc = find_segments(re, ms, s, len, invert, &segs, err);
    if (rc) goto done;

    /* Fold the segments as tokenizers' NormalizedString::split does; `keep`
     * collects (start, end) ranges in place over segs. */
    size_t nk = 0;
    bool prev_match = false;
    switch (behavior) {
    case TOK_SPLIT_ISOLATED:
        nk = segs.n;
        break;
    case TOK_SPLIT_REMOVED:
        for (size_t i = 0; i < segs.n; i++)
            if (!segs.p[i].match) segs.p[nk++] = segs.p[i];
        break;
    case TOK_SPLIT_CONTIGUOUS:
    case TOK_SPLIT_MERGED_PREV:
        for (size_t i = 0; i < segs.n; i++) {
            seg g = segs.p[i];
            bool merge = behavior == TOK_SPLIT_CONTIGUOUS ? g.match == prev_match
                                                          : g.match && !prev_match;
            if (merge && nk > 0) segs.p[nk - 1].end = g.end;
            else segs.p[nk++] = g;
            prev_match = g.match;
        }
        break;
    case TOK_SPLIT_MERGED_NEXT: {
        /* Right to left, extending the piece that follows; built from the end. */
        size_t w = segs.n;
        for (size_t i = segs.n; i-- > 0;) {
            seg g = segs.p[i];
            if (g.match && !prev_match && w < segs.n) segs.p[w].start = g.start;
            else segs.p[--w] = g;
            prev_match = g.match;
        }
        memmove(segs.p, segs.p + w, (segs.n - w) * sizeof *segs.p);
        nk = segs.n - w;
        break;
    }
    }
    for (size_t i = 0; i < nk; i++) {
        seg g = segs.p[i];
        if (g.end > g.start && !tok_pieces_add(out, s + g.start, g.end - g.start)) {
            rc = pio_error_set(err, PIO_ERR_OOM, "out of memory splitting text");
            break;
        }
    }
done:
    free(segs.p);
    return rc;
}
