/* The tokenizer against Hugging Face `tokenizers` 0.23.3.
 *
 * Fixtures (scripts/make_tokenizer_fixtures.py) hold what tokenizers itself
 * produced: the Qwen3 tokenizer over a broad corpus (needs the real
 * tokenizer.json from ../shared, skipped when absent), and small synthetic
 * tokenizers that switch on what Qwen3 does not use. Every encode must give
 * exactly the same ids, every decode the same text, and the streaming decoder
 * must add up to the whole decode without ever emitting half a character.
 * The rest checks errors and the vocab.json + merges.txt loader. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#include "pio/json.h"
#include "pio/tokenizer.h"
#include "pio_test.h"

#ifndef PIO_SOURCE_DIR
#define PIO_SOURCE_DIR "."
#endif
#ifndef PIO_SHARED_DIR
#define PIO_SHARED_DIR "../shared"
#endif

#define FIXTURES PIO_SOURCE_DIR "/tests/fixtures/tokenizer/"

static char tmpdir[64]; /* scratch files, removed at the end */

/* ---- helpers ----------------------------------------------------------------- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static bool write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return false;
    bool ok = fwrite(text, 1, strlen(text), f) == strlen(text);
    return fclose(f) == 0 && ok;
}

/* Strict UTF-8 (complete characters only). */
static bool utf8_ok(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t need = c < 0x80 ? 1 : c >= 0xc2 && c < 0xe0 ? 2 : c >= 0xe0 && c < 0xf0 ? 3
                                   : c >= 0xf0 && c < 0xf5 ? 4 : 0;
        if (!need || i + need > n) return false;
        for (size_t k = 1; k < need; k++) {
            unsigned lo = 0x80, hi = 0xbf;
            if (k == 1 && c == 0xe0) lo = 0xa0;
            if (k == 1 && c == 0xed) hi = 0x9f;
            if (k == 1 && c == 0xf0) lo = 0x90;
            if (k == 1 && c == 0xf4) hi = 0x8f;
            if (s[i + k] < lo || s[i + k] > hi) return false;
        }
        i += need;
    }
    return true;
}

/* A fixture string: the "<key>_hex" twin when present (texts with U+0000). */
static char *fixture_text(const cJSON *e, const char *key, size_t *len) {
    char hexkey[64];
    snprintf(hexkey, sizeof hexkey, "%s_hex", key);
    const cJSON *hex = cJSON_GetObjectItemCaseSensitive(e, hexkey);
    if (cJSON_IsString(hex)) {
        size_t n = strlen(hex->valuestring) / 2;
        char *out = malloc(n + 1);
        for (size_t i = 0; i < n; i++) {
            unsigned v;
            sscanf(hex->valuestring + 2 * i, "%2x", &v);
            out[i] = (char)v;
        }
        out[n] = '\0';
        *len = n;
        return out;
    }
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(e, key);
    const char *v = cJSON_IsString(s) ? s->valuestring : "";
    *len = strlen(v);
    char *out = malloc(*len + 1);
    memcpy(out, v, *len + 1);
    return out;
}

static int32_t *fixture_ids(const cJSON *e, const char *key, size_t *n) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(e, key);
    *n = (size_t)cJSON_GetArraySize(arr);
    int32_t *ids = malloc((*n + 1) * sizeof *ids);
    size_t i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) ids[i++] = (int32_t)it->valuedouble;
    return ids;
}

static void show(const char *s, size_t n) {
    for (size_t i = 0; i < n && i < 60; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != 0x7f) fputc(c, stderr);
        else fprintf(stderr, "\\x%02x", c);
    }
    if (n > 60) fputs("...", stderr);
}

/* ---- per-entry checks ---------------------------------------------------------- */

typedef struct tally {
    int entries, exact;
} tally;

static bool check_encode_ex(const pio_tokenizer *tok, const char *label, const char *text,
                            size_t len, bool special, bool add_special, const int32_t *want,
                            size_t nwant) {
    int32_t *ids = NULL;
    size_t n = 0;
    pio_error err = {0};
    pio_status st = add_special ? pio_tokenizer_encode_ex(tok, text, len, special, true, &ids, &n, &err)
                                : pio_tokenizer_encode(tok, text, len, special, &ids, &n, &err);
    bool same = st == PIO_OK && n == nwant && (n == 0 || !memcmp(ids, want, n * sizeof *ids));
    if (!same) {
        size_t at = 0;
        while (st == PIO_OK && at < n && at < nwant && ids[at] == want[at]) at++;
        fprintf(stderr, "%s: encode(%s%s) differs: '", label, special ? "special" : "plain",
                add_special ? ", add_special" : "");
        show(text, len);
        fprintf(stderr, "': status %d (%s), got %zu ids, want %zu, first difference at %zu",
                (int)st, err.msg, n, nwant, at);
        if (at < n && at < nwant) fprintf(stderr, " (got %d, want %d)", ids[at], want[at]);
        fputc('\n', stderr);
    }
    CHECK(same);
    free(ids);
    return same;
}

static bool check_encode(const pio_tokenizer *tok, const char *label, const char *text,
                         size_t len, bool special, const int32_t *want, size_t nwant) {
    return check_encode_ex(tok, label, text, len, special, false, want, nwant);
}

static bool check_decode(const pio_tokenizer *tok, const char *label, const int32_t *ids,
                         size_t n, bool skip, const char *want, size_t nwant) {
    char *text = NULL;
    size_t len = 0;
    pio_error err = {0};
    pio_status st = pio_tokenizer_decode(tok, ids, n, skip, &text, &len, &err);
    bool same = st == PIO_OK && len == nwant && !memcmp(text, want, len) && text[len] == '\0';
    if (!same) {
        fprintf(stderr, "%s: decode(skip=%d) differs: got '", label, skip);
        if (text) show(text, len);
        fprintf(stderr, "', want '");
        show(want, nwant);
        fprintf(stderr, "' (%s)\n", err.msg);
    }
    CHECK(same);
    free(text);

    /* Streaming: the chunks are whole characters and add up to the same text. */
    pio_detok *d = pio_detok_new(tok, skip, &err);
    CHECK(d != NULL);
    if (!d) return false;
    char *acc = malloc(nwant * 2 + 64);
    size_t alen = 0, cap = nwant * 2 + 64;
    bool chunks_ok = true;
    for (size_t i = 0; i <= n; i++) {
        size_t cl = 0;
        const char *chunk = i < n ? pio_detok_push(d, ids[i], &cl, &err) : pio_detok_flush(d, &cl);
        if (!chunk) {
            chunks_ok = false;
            break;
        }
        if (!utf8_ok(chunk, cl)) chunks_ok = false;
        if (alen + cl + 1 > cap) {
            cap = (alen + cl + 1) * 2;
            acc = realloc(acc, cap);
        }
        memcpy(acc + alen, chunk, cl);
        alen += cl;
    }
    bool stream_same = chunks_ok && alen == nwant && !memcmp(acc, want, alen);
    if (!stream_same) fprintf(stderr, "%s: streaming decode (skip=%d) differs\n", label, skip);
    CHECK(chunks_ok);
    CHECK(stream_same);
    free(acc);
    pio_detok_free(d);
    return same && stream_same;
}

/* All checks of one fixture entry; true when all are exact. */
static bool check_entry(const pio_tokenizer *tok, const cJSON *e, const char *label) {
    size_t len, n, np, dl, dsl;
    char *text = fixture_text(e, "text", &len);
    char *dec = fixture_text(e, "decoded", &dl);
    char *dec_skip = fixture_text(e, "decoded_skip", &dsl);
    int32_t *ids = fixture_ids(e, "ids", &n);
    int32_t *plain = fixture_ids(e, "ids_plain", &np);
    bool ok = check_encode(tok, label, text, len, true, ids, n);
    ok &= check_encode(tok, label, text, len, false, plain, np);
    ok &= check_decode(tok, label, ids, n, false, dec, dl);
    ok &= check_decode(tok, label, ids, n, true, dec_skip, dsl);
    /* add_special_tokens=True: "ids_added" where the post-processor adds any. */
    if (cJSON_GetObjectItemCaseSensitive(e, "ids_added")) {
        size_t na;
        int32_t *added = fixture_ids(e, "ids_added", &na);
        ok &= check_encode_ex(tok, label, text, len, true, true, added, na);
        free(added);
    } else {
        ok &= check_encode_ex(tok, label, text, len, true, true, ids, n);
    }
    free(text);
    free(dec);
    free(dec_skip);
    free(ids);
    free(plain);
    return ok;
}

/* ---- Qwen3 parity ---------------------------------------------------------------- */

static void throughput(const pio_tokenizer *tok, const cJSON *entries) {
    /* A realistic mix: the corpus, repeated to about 1 MB. */
    size_t cap = 1 << 21, len = 0;
    char *big = malloc(cap);
    while (len < (1 << 20)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, entries) {
            size_t n;
            char *t = fixture_text(e, "text", &n);
            if (len + n < cap) {
                memcpy(big + len, t, n);
                len += n;
            }
            free(t);
        }
    }
    int32_t *ids;
    size_t n;
    pio_error err = {0};
    double t0 = now();
    pio_status st = pio_tokenizer_encode(tok, big, len, true, &ids, &n, &err);
    double t1 = now();
    CHECK(st == PIO_OK);
    if (st == PIO_OK) {
        printf("encode throughput (information only): %.1f MB/s (%zu bytes -> %zu tokens in %.1f ms)\n",
               len / (t1 - t0) / 1e6, len, n, (t1 - t0) * 1e3);
        free(ids);
    }
    t0 = now();
    st = pio_tokenizer_encode(tok, big, 100000, true, &ids, &n, &err);
    t1 = now();
    if (st == PIO_OK) {
        printf("encode of 100 KB (information only): %.1f ms\n", (t1 - t0) * 1e3);
        free(ids);
    }
    free(big);
}

/* The same vocabulary written out as vocab.json + merges.txt (+ the added
 * tokens in tokenizer_config.json) must encode the corpus identically: this
 * holds the built-in Qwen2 pipeline to what tokenizer.json declares. */
static void qwen3_as_vocab_merges(const char *json_path, const cJSON *entries) {
    pio_error err = {0};
    cJSON *root = pio_json_read_file(json_path, &err);
    CHECK(root != NULL);
    if (!root) return;
    char dir[96], path[128];
    snprintf(dir, sizeof dir, "%s/qwen3", tmpdir);
    mkdir(dir, 0700);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    char *vocab = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(model, "vocab"));
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    CHECK(write_file(path, vocab));
    free(vocab);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    FILE *f = fopen(path, "wb");
    fputs("#version: 0.2\n", f);
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(model, "merges")) {
        if (cJSON_IsString(m)) fprintf(f, "%s\n", m->valuestring);
        else fprintf(f, "%s %s\n", m->child->valuestring, m->child->next->valuestring);
    }
    fclose(f);
    cJSON *cfg = cJSON_CreateObject(), *dec = cJSON_AddObjectToObject(cfg, "added_tokens_decoder");
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")) {
        char id[16];
        snprintf(id, sizeof id, "%d", cJSON_GetObjectItemCaseSensitive(m, "id")->valueint);
        cJSON *t = cJSON_Duplicate(m, true);
        cJSON_DeleteItemFromObject(t, "id");
        cJSON_AddItemToObject(dec, id, t);
    }
    char *cfg_text = cJSON_PrintUnformatted(cfg);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    CHECK(write_file(path, cfg_text));
    free(cfg_text);
    cJSON_Delete(cfg);
    cJSON_Delete(root);

    pio_tokenizer *tok = pio_tokenizer_load(dir, &err);
    CHECK_MSG(tok != NULL, "%s", err.msg);
    int n = 0, exact = 0;
    const cJSON *e, *list = tok ? entries : NULL;
    cJSON_ArrayForEach(e, list) {
        char label[64];
        snprintf(label, sizeof label, "qwen3 vocab.json entry %d", n++);
        size_t len, ni, np;
        char *text = fixture_text(e, "text", &len);
        int32_t *ids = fixture_ids(e, "ids", &ni), *plain = fixture_ids(e, "ids_plain", &np);
        bool ok = check_encode(tok, label, text, len, true, ids, ni);
        ok &= check_encode(tok, label, text, len, false, plain, np);
        exact += ok;
        free(text);
        free(ids);
        free(plain);
    }
    if (tok) printf("qwen3 as vocab.json + merges.txt: %d/%d corpus entries exact\n", exact, n);
    pio_tokenizer_free(tok);
    static const char *const files[] = {"vocab.json", "merges.txt", "tokenizer_config.json"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void test_qwen3(void) {
    const char *path = getenv("PIO_QWEN3_TOKENIZER");
    if (!path || !*path) path = PIO_SHARED_DIR "/data/qwen3-tokenizer/tokenizer.json";
    if (access(path, R_OK) != 0) {
        printf("SKIP: qwen3 tokenizer not found at %s\n", path);
        return;
    }
    pio_error err = {0};
    double t0 = now();
    pio_tokenizer *tok = pio_tokenizer_load(path, &err);
    double t1 = now();
    CHECK_MSG(tok != NULL, "%s", err.msg);
    if (!tok) return;
    printf("qwen3 tokenizer loaded in %.0f ms\n", (t1 - t0) * 1e3);
    cJSON *fx = pio_json_read_file(FIXTURES "qwen3_expected.json", &err);
    CHECK_MSG(fx != NULL, "%s", err.msg);
    if (!fx) {
        pio_tokenizer_free(tok);
        return;
    }
    int64_t nv = 0;
    pio_json_int(fx, "n_vocab", true, 0, &nv, "fixture", &err);
    CHECK(pio_tokenizer_n_vocab(tok) == nv);
    CHECK(pio_tokenizer_token_id(tok, "<|im_end|>") == 151645);
    CHECK(pio_tokenizer_is_special(tok, 151645) && !pio_tokenizer_is_special(tok, 151667));
    CHECK(pio_tokenizer_token(tok, 151667) && !strcmp(pio_tokenizer_token(tok, 151667), "<think>"));
    CHECK(pio_tokenizer_token_id(tok, "\xc4\xa0the") == 279); /* "Ġthe" */

    tally t = {0};
    const cJSON *entries = cJSON_GetObjectItemCaseSensitive(fx, "entries"), *e;
    int i = 0;
    cJSON_ArrayForEach(e, entries) {
        char label[64];
        snprintf(label, sizeof label, "qwen3 entry %d", i++);
        t.entries++;
        t.exact += check_entry(tok, e, label);
    }
    int dcases = 0, dexact = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(fx, "decode_cases")) {
        char label[64];
        snprintf(label, sizeof label, "qwen3 decode case %d", dcases++);
        size_t n, dl, dsl;
        int32_t *ids = fixture_ids(e, "ids", &n);
        char *dec = fixture_text(e, "decoded", &dl), *dec_skip = fixture_text(e, "decoded_skip", &dsl);
        bool ok = check_decode(tok, label, ids, n, false, dec, dl);
        ok &= check_decode(tok, label, ids, n, true, dec_skip, dsl);
        dexact += ok;
        free(ids);
        free(dec);
        free(dec_skip);
    }
    printf("qwen3 parity: %d/%d corpus entries exact (ids both modes, decode, streaming); "
           "%d/%d decode cases exact\n", t.exact, t.entries, dexact, dcases);
    throughput(tok, entries);
    qwen3_as_vocab_merges(path, entries);
    cJSON_Delete(fx);
    pio_tokenizer_free(tok);
}

/* ---- GLM-4 ---------------------------------------------------------------------------------- */

/* A directory laid out as GLM-4.7-Flash ships its tokenizer, with GLM-4's
 * pipeline (digits in groups of up to three, its added tokens, [gMASK]<sop>
 * from the post-processor): every corpus entry exact. */
static void test_glm4(void) {
    pio_error err = {0};
    const char *dir = PIO_SOURCE_DIR "/tests/fixtures/tokenizer/glm4";
    pio_tokenizer *tok = pio_tokenizer_load(dir, &err);
    CHECK_MSG(tok != NULL, "%s", err.msg);
    cJSON *fx = pio_json_read_file(FIXTURES "glm4_expected.json", &err);
    CHECK_MSG(fx != NULL, "%s", err.msg);
    if (!tok || !fx) {
        pio_tokenizer_free(tok);
        cJSON_Delete(fx);
        return;
    }
    CHECK(!strcmp(pio_tokenizer_dir(tok), dir));
    int64_t nv = 0, base = 0;
    pio_json_int(fx, "n_vocab", true, 0, &nv, "fixture", &err);
    pio_json_int(fx, "special_base", true, 0, &base, "fixture", &err);
    CHECK(pio_tokenizer_n_vocab(tok) == nv);
    const cJSON *sp;
    int nspecial = 0;
    cJSON_ArrayForEach(sp, cJSON_GetObjectItemCaseSensitive(fx, "special_ids")) {
        CHECK_MSG(pio_tokenizer_token_id(tok, sp->string) == (int32_t)sp->valuedouble, "%s", sp->string);
        CHECK(pio_tokenizer_is_special(tok, (int32_t)sp->valuedouble));
        nspecial++;
    }
    CHECK(nspecial == 36);
    /* GLM-4.7-Flash's layout: [gMASK] at base + 2, <sop> + 4, <think> + 21, </think> + 22. */
    CHECK(pio_tokenizer_token_id(tok, "[gMASK]") == base + 2 && pio_tokenizer_token_id(tok, "<sop>") == base + 4);
    CHECK(pio_tokenizer_token_id(tok, "<think>") == base + 21 && pio_tokenizer_token_id(tok, "</think>") == base + 22);
    int n = 0, exact = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(fx, "entries")) {
        char label[64];
        snprintf(label, sizeof label, "glm4 entry %d", n++);
        exact += check_entry(tok, e, label);
    }
    printf("glm4 pipeline parity: %d/%d corpus entries exact (ids with and without special tokens "
           "parsed and added, decode, streaming)\n", exact, n);
    /* Digits go in threes; [gMASK]<sop> come first with add_special. */
    int32_t *ids = NULL;
    size_t k = 0;
    CHECK(pio_tokenizer_encode_ex(tok, "1234567", 7, true, true, &ids, &k, &err) == PIO_OK && k == 5 &&
          ids[0] == base + 2 && ids[1] == base + 4);
    if (k == 5) {
        const char *t2 = pio_tokenizer_token(tok, ids[2]), *t4 = pio_tokenizer_token(tok, ids[4]);
        CHECK(t2 && !strcmp(t2, "123") && t4 && !strcmp(t4, "7"));
    }
    free(ids);
    cJSON_Delete(fx);
    pio_tokenizer_free(tok);
}

/* Several threads encoding with one tokenizer (and its shared word cache)
 * all get the fixture's ids. */
typedef struct thread_job {
    const pio_tokenizer *tok;
    const cJSON *entries;
    int rounds, bad;
} thread_job;

static void *encode_entries(void *arg) {
    thread_job *job = arg;
    for (int r = 0; r < job->rounds; r++) {
        const cJSON *e;
        cJSON_ArrayForEach(e, job->entries) {
            size_t len, nwant, n;
            char *text = fixture_text(e, "text", &len);
            int32_t *want = fixture_ids(e, "ids", &nwant), *ids = NULL;
            pio_error err;
            if (pio_tokenizer_encode(job->tok, text, len, true, &ids, &n, &err) != PIO_OK || n != nwant ||
                (n && memcmp(ids, want, n * sizeof *ids)))
                job->bad++;
            free(ids);
            free(want);
            free(text);
        }
    }
    return NULL;
}

static void test_threads(void) {
    pio_error err = {0};
    pio_tokenizer *tok = pio_tokenizer_load(PIO_SOURCE_DIR "/tests/fixtures/tokenizer/glm4", &err);
    cJSON *fx = pio_json_read_file(FIXTURES "glm4_expected.json", &err);
    CHECK(tok && fx);
    if (tok && fx) {
        enum { NT = 4 };
        pthread_t th[NT];
        thread_job jobs[NT];
        for (int i = 0; i < NT; i++) {
            jobs[i] = (thread_job){tok, cJSON_GetObjectItemCaseSensitive(fx, "entries"), 3, 0};
            CHECK(pthread_create(&th[i], NULL, encode_entries, &jobs[i]) == 0);
        }
        int bad = 0;
        for (int i = 0; i < NT; i++) {
            pthread_join(th[i], NULL);
            bad += jobs[i].bad;
        }
        CHECK_MSG(bad == 0, "%d encodes differ across threads", bad);
        printf("4 threads x 3 rounds over the glm4 corpus on one tokenizer: %d differences\n", bad);
    }
    cJSON_Delete(fx);
    pio_tokenizer_free(tok);
}

/* ---- synthetic tokenizers ---------------------------------------------------------- */

static void test_synthetic(void) {
    pio_error err = {0};
    cJSON *fx = pio_json_read_file(FIXTURES "synthetic_expected.json", &err);
    CHECK_MSG(fx != NULL, "%s", err.msg);
    if (!fx) return;
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(fx, "tokenizers")) {
        const char *name = cJSON_GetObjectItemCaseSensitive(t, "name")->valuestring;
        char path[128];
        snprintf(path, sizeof path, "%s/%s.json", tmpdir, name);
        char *json = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(t, "tokenizer"));
        CHECK(write_file(path, json));
        free(json);
        pio_tokenizer *tok = pio_tokenizer_load(path, &err);
        CHECK_MSG(tok != NULL, "%s: %s", name, err.msg);
        unlink(path);
        if (!tok) continue;
        int n = 0, exact = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(t, "cases")) {
            char label[96];
            snprintf(label, sizeof label, "%s case %d", name, n++);
            exact += check_entry(tok, e, label);
        }
        printf("synthetic %-28s %d/%d cases exact\n", name, exact, n);
        pio_tokenizer_free(tok);
    }
    cJSON_Delete(fx);
}

/* ---- vocab.json + merges.txt ----------------------------------------------------------- */

/* GPT-2's byte-level character for a byte, as UTF-8. */
static void byte_char(int b, char out[3]) {
    bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    unsigned c = b;
    if (!printable) {
        c = 256;
        for (int i = 0; i < b; i++)
            c += !((i >= 0x21 && i <= 0x7e) || (i >= 0xa1 && i <= 0xac) || i >= 0xae);
    }
    if (c < 0x80) {
        out[0] = (char)c;
        out[1] = 0;
    } else {
        out[0] = (char)(0xc0 | c >> 6);
        out[1] = (char)(0x80 | (c & 0x3f));
        out[2] = 0;
    }
}

/* A tiny byte-level vocabulary: the 256 bytes, then merges building a few
 * words left to right. Fills vocab (object) and merges (array of "a b"). */
static void tiny_vocab(cJSON *vocab, cJSON *merges) {
    static const char *const words[] = {" hello", "hello", " world", " the", "ing", " 123", "\xe4\xbd\xa0\xe5\xa5\xbd"};
    int next = 0;
    for (int b = 0; b < 256; b++) {
        char c[3];
        byte_char(b, c);
        cJSON_AddNumberToObject(vocab, c, next++);
    }
    for (size_t w = 0; w < sizeof words / sizeof words[0]; w++) {
        char left[64] = "";
        size_t ll = 0;
        for (const char *s = words[w]; *s; s++) {
            char c[3], merge[160];
            byte_char((unsigned char)*s, c);
            size_t cl = strlen(c);
            if (ll > 0) {
                snprintf(merge, sizeof merge, "%s %s", left, c);
                memcpy(left + ll, c, cl + 1); /* left is now the merged token */
                if (!cJSON_GetObjectItemCaseSensitive(vocab, left)) {
                    cJSON_AddItemToArray(merges, cJSON_CreateString(merge));
                    cJSON_AddNumberToObject(vocab, left, next++);
                }
            } else {
                memcpy(left, c, cl + 1);
            }
            ll += cl;
        }
    }
}

static void test_vocab_merges_dir(void) {
    char dir[96], path[128];
    snprintf(dir, sizeof dir, "%s/vm", tmpdir);
    mkdir(dir, 0700);
    cJSON *vocab = cJSON_CreateObject(), *merges = cJSON_CreateArray();
    tiny_vocab(vocab, merges);
    int n_model = cJSON_GetArraySize(vocab);

    /* The directory form. */
    char *s = cJSON_PrintUnformatted(vocab);
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    CHECK(write_file(path, s));
    free(s);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    FILE *f = fopen(path, "wb");
    fputs("#version: 0.2\n", f);
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) fprintf(f, "%s\n", m->valuestring);
    fclose(f);
    char cfg[512];
    snprintf(cfg, sizeof cfg,
             "{\"added_tokens_decoder\": {"
             "\"%d\": {\"content\": \"<|endoftext|>\", \"lstrip\": false, \"normalized\": false,"
             " \"rstrip\": false, \"single_word\": false, \"special\": true},"
             "\"%d\": {\"content\": \"<think>\", \"lstrip\": false, \"normalized\": false,"
             " \"rstrip\": false, \"single_word\": false, \"special\": false}}}",
             n_model, n_model + 1);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    CHECK(write_file(path, cfg));

    /* The equivalent tokenizer.json. */
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    const char *contents[] = {"<|endoftext|>", "<think>"};
    for (int i = 0; i < 2; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", n_model + i);
        cJSON_AddStringToObject(a, "content", contents[i]);
        cJSON_AddBoolToObject(a, "special", i == 0);
        cJSON_AddBoolToObject(a, "normalized", false);
        cJSON_AddItemToArray(added, a);
    }
    cJSON *norm = cJSON_AddObjectToObject(root, "normalizer");
    cJSON_AddStringToObject(norm, "type", "NFC");
    cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
    cJSON_AddStringToObject(pre, "type", "Sequence");
    cJSON *list = cJSON_AddArrayToObject(pre, "pretokenizers");
    cJSON *split = cJSON_CreateObject();
    cJSON_AddStringToObject(split, "type", "Split");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(split, "pattern"), "Regex",
                            "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+");
    cJSON_AddStringToObject(split, "behavior", "Isolated");
    cJSON_AddBoolToObject(split, "invert", false);
    cJSON_AddItemToArray(list, split);
    cJSON *bl = cJSON_CreateObject();
    cJSON_AddStringToObject(bl, "type", "ByteLevel");
    cJSON_AddBoolToObject(bl, "add_prefix_space", false);
    cJSON_AddBoolToObject(bl, "trim_offsets", false);
    cJSON_AddBoolToObject(bl, "use_regex", false);
    cJSON_AddItemToArray(list, bl);
    cJSON_AddItemToObject(root, "decoder", cJSON_Duplicate(bl, true));
    cJSON *model = cJSON_AddObjectToObject(root, "model");
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", merges);
    s = cJSON_Print(root);
    snprintf(path, sizeof path, "%s/equivalent.json", tmpdir);
    CHECK(write_file(path, s));
    free(s);
    cJSON_Delete(root);

    pio_error err = {0};
    pio_tokenizer *a = pio_tokenizer_load(dir, &err);
    CHECK_MSG(a != NULL, "%s", err.msg);
    pio_tokenizer *b = pio_tokenizer_load(path, &err);
    CHECK_MSG(b != NULL, "%s", err.msg);
    if (a && b) {
        CHECK(pio_tokenizer_n_vocab(a) == pio_tokenizer_n_vocab(b));
        CHECK(pio_tokenizer_n_vocab(a) == n_model + 2);
        static const char *const texts[] = {
            "hello world", " hello hello the thing 123", "Hello <|endoftext|> worlds<think>x",
            "cafe\xcc\x81 \xe4\xbd\xa0\xe5\xa5\xbd\xe4\xbd\xa0!\r\n\n  end  ", "I'M you'RE 1234567"};
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
            for (int sp = 0; sp < 2; sp++) {
                int32_t *ia, *ib;
                size_t na, nb;
                CHECK(pio_tokenizer_encode(a, texts[i], strlen(texts[i]), sp, &ia, &na, &err) == PIO_OK);
                CHECK(pio_tokenizer_encode(b, texts[i], strlen(texts[i]), sp, &ib, &nb, &err) == PIO_OK);
                CHECK_MSG(na == nb && !memcmp(ia, ib, na * sizeof *ia), "vocab.json vs tokenizer.json: '%s'",
                          texts[i]);
                char *back;
                CHECK(pio_tokenizer_decode(a, ia, na, false, &back, NULL, &err) == PIO_OK);
                /* Round trip, up to NFC (the one normalization in this text). */
                if (i != 3) CHECK_MSG(!strcmp(back, texts[i]), "round trip '%s' -> '%s'", texts[i], back);
                free(back);
                free(ia);
                free(ib);
            }
        }
        int32_t *ids;
        size_t n;
        CHECK(pio_tokenizer_encode(a, " hello", 6, true, &ids, &n, &err) == PIO_OK);
        CHECK(n == 1 && ids[0] == pio_tokenizer_token_id(a, "\xc4\xa0hello"));
        free(ids);
        CHECK(pio_tokenizer_encode(a, "<|endoftext|>", 13, true, &ids, &n, &err) == PIO_OK);
        CHECK(n == 1 && ids[0] == n_model && pio_tokenizer_is_special(a, n_model));
        free(ids);
        CHECK(pio_tokenizer_encode(a, "<|endoftext|>", 13, false, &ids, &n, &err) == PIO_OK);
        CHECK(n > 1);
        free(ids);
    }
    pio_tokenizer_free(a);
    pio_tokenizer_free(b);

    /* Errors in these files. */
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    CHECK(write_file(path, "#version: 0.2\nh e\nnot-a-pair\n"));
    a = pio_tokenizer_load(dir, &err);
    CHECK(a == NULL && err.status == PIO_ERR_FORMAT);
    CHECK_ERR(err, "line 3");
    CHECK(write_file(path, "h e\nq zz\n"));
    a = pio_tokenizer_load(dir, &err);
    CHECK(a == NULL && err.status == PIO_ERR_FORMAT);
    CHECK_ERR(err, "not in the vocabulary");
    unlink(path);
    a = pio_tokenizer_load(dir, &err);
    CHECK(a == NULL && err.status == PIO_ERR_IO);
    CHECK_ERR(err, "merges.txt");

    snprintf(path, sizeof path, "%s/vocab.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    unlink(path);
    a = pio_tokenizer_load(dir, &err);
    CHECK(a == NULL && err.status == PIO_ERR_IO);
    CHECK_ERR(err, "no tokenizer.json or vocab.json");
    rmdir(dir);
    snprintf(path, sizeof path, "%s/equivalent.json", tmpdir);
    unlink(path);
}

/* ---- errors ------------------------------------------------------------------------------ */

/* A minimal valid tokenizer.json with one component replaced. */
static pio_tokenizer *load_variant(const char *key, const char *value, pio_error *err) {
    char json[2048], path[128];
    snprintf(json, sizeof json,
             "{\"normalizer\": %s, \"pre_tokenizer\": %s, \"decoder\": %s, \"post_processor\": %s,"
             " \"added_tokens\": [], \"model\": %s}",
             !strcmp(key, "normalizer") ? value : "null",
             !strcmp(key, "pre_tokenizer") ? value : "{\"type\": \"ByteLevel\", \"add_prefix_space\": false}",
             !strcmp(key, "decoder") ? value : "{\"type\": \"ByteLevel\"}",
             !strcmp(key, "post_processor") ? value : "null",
             !strcmp(key, "model") ? value
                                   : "{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"a b\"]}");
    snprintf(path, sizeof path, "%s/tokenizer.json", tmpdir);
    write_file(path, json);
    pio_tokenizer *tok = pio_tokenizer_load(path, err);
    unlink(path);
    return tok;
}

static void test_errors(void) {
    pio_error err = {0};
    char path[128];

    /* Missing file; malformed JSON. */
    pio_tokenizer *tok = pio_tokenizer_load("/nonexistent/pio/tokenizer.json", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_IO);
    CHECK_ERR(err, "/nonexistent/pio/tokenizer.json");
    snprintf(path, sizeof path, "%s/tokenizer.json", tmpdir);
    write_file(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0,}");
    tok = pio_tokenizer_load(path, &err);
    CHECK(tok == NULL && err.status == PIO_ERR_FORMAT);
    CHECK_ERR(err, "tokenizer.json");
    unlink(path);

    /* Unsupported components are named. */
    tok = load_variant("pre_tokenizer", "{\"type\": \"Metaspace\", \"replacement\": \"_\"}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_UNSUPPORTED);
    CHECK_ERR(err, "tokenizer.json: unsupported pre_tokenizer 'Metaspace'");
    tok = load_variant("normalizer", "{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFC\"}, {\"type\": \"Lowercase\"}]}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_UNSUPPORTED);
    CHECK_ERR(err, "unsupported normalizer 'Lowercase'");
    tok = load_variant("model", "{\"type\": \"Unigram\", \"vocab\": []}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_UNSUPPORTED);
    CHECK_ERR(err, "unsupported model 'Unigram'");
    tok = load_variant("decoder", "{\"type\": \"WordPiece\"}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_UNSUPPORTED);
    CHECK_ERR(err, "unsupported decoder 'WordPiece'");
    tok = load_variant("model", "{\"type\": \"BPE\", \"dropout\": 0.1, \"vocab\": {}, \"merges\": []}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_UNSUPPORTED);
    CHECK_ERR(err, "dropout");
    tok = load_variant("pre_tokenizer", "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(unclosed\"}, \"behavior\": \"Isolated\"}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_UNSUPPORTED);
    CHECK_ERR(err, "cannot compile regex");
    tok = load_variant("pre_tokenizer", "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"[a-z&&[^aeiou]]+\"}, \"behavior\": \"Isolated\"}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_UNSUPPORTED);
    CHECK_ERR(err, "nested character classes");
    tok = load_variant("post_processor", "{\"type\": \"Custom\"}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_UNSUPPORTED);
    CHECK_ERR(err, "tokenizer.json: unsupported post_processor 'Custom'");
    tok = load_variant("post_processor",
                       "{\"type\": \"TemplateProcessing\", \"single\": [{\"Sequence\": {\"id\": \"B\", \"type_id\": 0}}],"
                       " \"special_tokens\": {}}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_UNSUPPORTED);
    CHECK_ERR(err, "unsupported TemplateProcessing single piece (sequence 'B')");
    tok = load_variant("post_processor",
                       "{\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}},"
                       " {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"special_tokens\": {}}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_FORMAT);
    CHECK_ERR(err, "TemplateProcessing special token '<s>' has no ids");
    tok = load_variant("model", "{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b c\"]}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_FORMAT);
    CHECK_ERR(err, "merge 1 is not two tokens separated by a space");
    tok = load_variant("model", "{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [[\"a\"]]}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_FORMAT);
    CHECK_ERR(err, "merge 1 is neither \"a b\" nor [\"a\", \"b\"]");
    tok = load_variant("model", "{\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_FORMAT);
    CHECK_ERR(err, "vocab entry 'a' is not a number");
    tok = load_variant("model", "{\"type\": \"BPE\", \"vocab\": {\"\\ud800\": 0}, \"merges\": []}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_FORMAT);
    CHECK_ERR(err, "invalid JSON in model.vocab at byte");
    tok = load_variant("model", "{\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}", &err);
    CHECK(tok == NULL && err.status == PIO_ERR_FORMAT);
    CHECK_ERR(err, "not in the vocabulary");

    /* The minimal one works; bad input to it fails cleanly. */
    tok = load_variant("", "", &err);
    CHECK_MSG(tok != NULL, "%s", err.msg);
    if (!tok) return;
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(pio_tokenizer_encode(tok, "ab", 2, true, &ids, &n, &err) == PIO_OK && n == 1 && ids[0] == 2);
    free(ids);
    CHECK(pio_tokenizer_encode(tok, "", 0, true, &ids, &n, &err) == PIO_OK && n == 0);
    free(ids);
    /* Characters outside the vocabulary (no unk_token) are dropped, as tokenizers does. */
    CHECK(pio_tokenizer_encode(tok, "xa", 2, true, &ids, &n, &err) == PIO_OK && n == 1 && ids[0] == 0);
    free(ids);
    CHECK(pio_tokenizer_encode(tok, "ab\xe4\xbd", 4, true, &ids, &n, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "invalid UTF-8 at byte 2");
    CHECK(pio_tokenizer_encode(tok, "a\xc0\xafz", 4, false, &ids, &n, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "invalid UTF-8 at byte 1");
    CHECK(pio_tokenizer_encode(tok, "\xed\xa0\x80", 3, false, &ids, &n, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "invalid UTF-8 at byte 0");
    char *text = NULL;
    int32_t bad[] = {0, 3};
    CHECK(pio_tokenizer_decode(tok, bad, 2, false, &text, NULL, &err) == PIO_ERR_RANGE && !text);
    CHECK_ERR(err, "token id 3 is out of range (vocabulary size 3)");
    int32_t neg[] = {-1};
    CHECK(pio_tokenizer_decode(tok, neg, 1, false, &text, NULL, &err) == PIO_ERR_RANGE);
    CHECK_ERR(err, "token id -1");
    pio_detok *d = pio_detok_new(tok, false, &err);
    size_t len = 99;
    CHECK(pio_detok_push(d, 7, &len, &err) == NULL && err.status == PIO_ERR_RANGE && len == 0);
    CHECK(pio_detok_push(d, 2, &len, &err) != NULL && len == 2);
    pio_detok_free(d);
    CHECK(pio_tokenizer_token_id(tok, "ab") == 2 && pio_tokenizer_token_id(tok, "zz") == -1);
    CHECK(pio_tokenizer_token(tok, 5) == NULL && !pio_tokenizer_is_special(tok, -4));
    pio_tokenizer_free(tok);
}

/* Streaming holds back an incomplete character and flushes leftovers as U+FFFD. */
static void test_streaming_bytes(void) {
    pio_error err = {0};
    /* Vocabulary of single byte-level characters for the bytes of "é" and "€". */
    char json[1024], path[128], c1[3], c2[3], c3[3], c4[3];
    byte_char(0xc3, c1);
    byte_char(0xa9, c2);
    byte_char(0xe2, c3);
    byte_char(0x82, c4);
    snprintf(json, sizeof json,
             "{\"decoder\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", \"vocab\":"
             " {\"%s\": 0, \"%s\": 1, \"%s\": 2, \"%s\": 3, \"a\": 4}, \"merges\": []}}",
             c1, c2, c3, c4);
    snprintf(path, sizeof path, "%s/tokenizer.json", tmpdir);
    write_file(path, json);
    pio_tokenizer *tok = pio_tokenizer_load(path, &err);
    unlink(path);
    CHECK_MSG(tok != NULL, "%s", err.msg);
    if (!tok) return;
    pio_detok *d = pio_detok_new(tok, false, &err);
    size_t len;
    const char *s = pio_detok_push(d, 0, &len, &err); /* 0xC3: held */
    CHECK(s && len == 0);
    s = pio_detok_push(d, 1, &len, &err); /* 0xA9: "é" */
    CHECK(s && len == 2 && !memcmp(s, "\xc3\xa9", 2));
    s = pio_detok_push(d, 2, &len, &err); /* 0xE2: held */
    CHECK(s && len == 0);
    s = pio_detok_push(d, 3, &len, &err); /* 0x82: still incomplete */
    CHECK(s && len == 0);
    s = pio_detok_push(d, 4, &len, &err); /* "a" settles E2 82 as one U+FFFD */
    CHECK(s && len == 4 && !memcmp(s, "\xef\xbf\xbd" "a", 4));
    s = pio_detok_push(d, 2, &len, &err);
    CHECK(s && len == 0);
    s = pio_detok_flush(d, &len);
    CHECK(len == 3 && !memcmp(s, "\xef\xbf\xbd", 3));
    s = pio_detok_flush(d, &len);
    CHECK(len == 0);
    pio_detok_free(d);
    pio_tokenizer_free(tok);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/pio-tok-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_errors();
    test_streaming_bytes();
    test_vocab_merges_dir();
    test_synthetic();
    test_glm4();
    test_threads();
    test_qwen3();
    rmdir(tmpdir);
    TEST_MAIN_END();
}
