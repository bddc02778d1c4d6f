/* pio/safetensors.h: round trips, sharded and directory checkpoints, and
 * every malformed file the loader must refuse with a message naming it. */
#define _GNU_SOURCE
#include <ftw.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pio/safetensors.h"
#include "pio_test.h"

static char root[] = "/tmp/pio-st-XXXXXX";

/* root/rel, in one of a few rotating buffers so a call can use several. */
static const char *at(const char *rel) {
    static char bufs[8][512];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", root, rel);
    return b;
}

static void write_bytes(const char *path, const void *bytes, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(bytes, 1, n, f) != n) {
        perror(path);
        exit(2);
    }
    fclose(f);
}

/* A safetensors file by hand: the 8-byte length, header, then data_len bytes. */
static void write_raw(const char *path, const char *header, size_t data_len) {
    size_t hlen = strlen(header), n = 8 + hlen + data_len;
    unsigned char *b = calloc(1, n);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(b + 8, header, hlen);
    for (size_t i = 0; i < data_len; i++) b[8 + hlen + i] = (unsigned char)i;
    write_bytes(path, b, n);
    free(b);
}

static void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

/* Opening must fail with this status and a message holding both substrings. */
static void expect_fail(const char *path, pio_status status, const char *s1, const char *s2,
                        int line) {
    pio_error err = {0};
    pio_safetensors *st = pio_safetensors_open(path, &err);
    CHECK_MSG(st == NULL, "line %d: %s opened", line, path);
    printf("refused: %s\n", err.msg); /* for whoever reads the log: what users will see */
    CHECK_MSG(err.status == status, "line %d: status %s, want %s (%s)", line,
              pio_status_name(err.status), pio_status_name(status), err.msg);
    CHECK_MSG(strstr(err.msg, s1) != NULL, "line %d: message '%s' lacks '%s'", line, err.msg, s1);
    if (s2) CHECK_MSG(strstr(err.msg, s2) != NULL, "line %d: message '%s' lacks '%s'", line, err.msg, s2);
    pio_safetensors_close(st);
}
#define EXPECT_FAIL(path, status, s1, s2) expect_fail(path, status, s1, s2, __LINE__)

/* A raw single-tensor-entry header with 64 data bytes, expected to fail. */
#define EXPECT_BAD_HEADER(header, s1, s2)                                  \
    do {                                                                   \
        write_raw(at("bad.safetensors"), header, 64);                      \
        EXPECT_FAIL(at("bad.safetensors"), PIO_ERR_FORMAT, s1, s2);        \
    } while (0)

static pio_tensor *filled(pio_dtype dt, int ndim, const int64_t *shape, float base) {
    pio_tensor *t = pio_tensor_new(dt, ndim, shape, NULL);
    for (int64_t i = 0; i < pio_tensor_numel(t); i++) pio_tensor_set(t, i, base + 0.5f * (float)i);
    return t;
}

static bool same_values(const pio_tensor *a, const pio_tensor *b) {
    if (a->dtype != b->dtype || !pio_tensor_same_shape(a, b)) return false;
    for (int64_t i = 0; i < pio_tensor_numel(a); i++)
        if (pio_tensor_get(a, i) != pio_tensor_get(b, i)) return false;
    return true;
}

static void test_round_trip(void) {
    pio_error err = {0};
    const int64_t s23[] = {2, 3}, s4[] = {4}, s22[] = {2, 2}, s03[] = {0, 3}, s2111[] = {2, 1, 1, 1};
    pio_tensor *t[6] = {
        filled(PIO_F32, 2, s23, 1.0f),  filled(PIO_BF16, 1, s4, -2.0f),
        filled(PIO_F16, 2, s22, 0.25f), filled(PIO_F32, 0, NULL, 42.0f), /* a scalar */
        filled(PIO_F32, 2, s03, 0.0f),  /* empty */
        filled(PIO_BF16, 4, s2111, 3.0f),
    };
    const char *names[6] = {"model.embed.weight", "layers.0.norm", "half", "scalar", "empty",
                            "four \"dims\"\\"};
    CHECK(pio_safetensors_write(at("rt.safetensors"), 6, names, (const pio_tensor *const *)t,
                                &err) == PIO_OK);

    /* the header is padded so the data area starts 8-byte aligned */
    FILE *f = fopen(at("rt.safetensors"), "rb");
    unsigned char len8[8] = {0};
    CHECK(f && fread(len8, 1, 8, f) == 8);
    if (f) fclose(f);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | len8[i];
    CHECK_MSG(hlen % 8 == 0, "header length %llu", (unsigned long long)hlen);

    pio_safetensors *st = pio_safetensors_open(at("rt.safetensors"), &err);
    CHECK_MSG(st != NULL, "%s", err.msg);
    if (!st) return;
    CHECK(pio_safetensors_count(st) == 6);
    for (int i = 0; i < 6; i++) {
        const pio_st_info *info = pio_safetensors_find(st, names[i]);
        CHECK_MSG(info != NULL, "'%s' not found", names[i]);
        if (!info) continue;
        CHECK(strcmp(info->name, names[i]) == 0);
        CHECK(info->supported && info->dtype == t[i]->dtype && info->ndim == t[i]->ndim);
        CHECK(info->nbytes == pio_tensor_nbytes(t[i]) && info->file == 0);
        for (int d = 0; d < info->ndim; d++) CHECK(info->shape[d] == t[i]->shape[d]);
        pio_tensor *got = pio_safetensors_get(st, names[i], &err);
        CHECK_MSG(got != NULL, "%s", err.msg);
        if (!got) continue;
        CHECK_MSG(same_values(got, t[i]), "values of '%s'", names[i]);
        CHECK(got->storage->kind == PIO_STORAGE_MMAP); /* zero copy */
        pio_tensor_free(got);
    }
    CHECK(strcmp(pio_safetensors_find(st, "layers.0.norm")->st_dtype, "BF16") == 0);
    CHECK(strcmp(pio_safetensors_find(st, "half")->st_dtype, "F16") == 0);
    CHECK(pio_safetensors_at(st, 6) == NULL);
    size_t listed = 0;
    for (size_t i = 0; i < pio_safetensors_count(st); i++)
        listed += pio_safetensors_find(st, pio_safetensors_at(st, i)->name) ==
                  pio_safetensors_at(st, i);
    CHECK(listed == 6);

    /* an absent tensor: not found, named */
    CHECK(pio_safetensors_get(st, "lm_head.weight", &err) == NULL);
    CHECK(err.status == PIO_ERR_NOT_FOUND);
    CHECK_ERR(err, "'lm_head.weight'");
    CHECK(pio_safetensors_find(st, "lm_head.weight") == NULL);

    /* a tensor outlives the checkpoint it came from: it holds the mapping */
    pio_tensor *kept = pio_safetensors_get(st, "model.embed.weight", &err);
    pio_safetensors_close(st);
    CHECK(kept && same_values(kept, t[0]));
    pio_tensor_free(kept);
    for (int i = 0; i < 6; i++) pio_tensor_free(t[i]);
}

static void test_write_errors(void) {
    pio_error err = {0};
    const int64_t s23[] = {2, 3};
    pio_tensor *a = filled(PIO_F32, 2, s23, 0), *tr = pio_tensor_transpose(a, 0, 1, &err);
    const pio_tensor *two[2] = {a, a};
    const char *dup[2] = {"x", "x"};
    CHECK(pio_safetensors_write(at("w.safetensors"), 2, dup, two, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "duplicate name 'x'");
    const pio_tensor *one[1] = {tr};
    const char *n1[1] = {"t"};
    CHECK(pio_safetensors_write(at("w.safetensors"), 1, n1, one, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "'t' must be contiguous");
    one[0] = a;
    const char *meta[1] = {"__metadata__"};
    CHECK(pio_safetensors_write(at("w.safetensors"), 1, meta, one, &err) == PIO_ERR_INVALID);
    CHECK_ERR(err, "reserved");
    CHECK(pio_safetensors_write(at("no/such/dir/w.safetensors"), 1, n1, one, &err) ==
          PIO_ERR_IO);
    CHECK_ERR(err, "no/such/dir/w.safetensors");
    CHECK(access(at("w.safetensors"), F_OK) != 0); /* nothing written by the failures */
    pio_tensor_free(tr);
    pio_tensor_free(a);
}

/* Known dtypes pio cannot load open fine and are refused only on get. */
static void test_unsupported_dtype(void) {
    pio_error err = {0};
    write_raw(at("ids.safetensors"),
              "{\"__metadata__\":{\"format\":\"pt\"},"
              "\"position_ids\":{\"dtype\":\"I64\",\"shape\":[4],\"data_offsets\":[0,32]},"
              "\"mask\":{\"dtype\":\"BOOL\",\"shape\":[2,4],\"data_offsets\":[32,40]},"
              "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[40,48]},"
              "\"fp8\":{\"dtype\":\"F8_E4M3\",\"shape\":[8],\"data_offsets\":[48,56]}}",
              56);
    pio_safetensors *st = pio_safetensors_open(at("ids.safetensors"), &err);
    CHECK_MSG(st != NULL, "%s", err.msg);
    if (!st) return;
    const pio_st_info *info = pio_safetensors_find(st, "position_ids");
    CHECK(info && !info->supported && strcmp(info->st_dtype, "I64") == 0 && info->nbytes == 32);
    CHECK(pio_safetensors_get(st, "position_ids", &err) == NULL);
    CHECK(err.status == PIO_ERR_UNSUPPORTED);
    CHECK_ERR(err, "'position_ids'");
    CHECK_ERR(err, "I64");
    CHECK(pio_safetensors_get(st, "fp8", &err) == NULL && err.status == PIO_ERR_UNSUPPORTED);
    CHECK_ERR(err, "F8_E4M3");
    pio_tensor *w = pio_safetensors_get(st, "w", &err);
    CHECK_MSG(w != NULL, "%s", err.msg);
    if (w) { /* data bytes are 0, 1, 2, ...: w sits at offset 40 of the data area */
        const unsigned char *b = pio_tensor_data(w);
        CHECK(b[0] == 40 && b[7] == 47);
    }
    pio_tensor_free(w);
    pio_safetensors_close(st);
}

static void test_bad_files(void) {
    /* shorter than the length field */
    write_bytes(at("short.safetensors"), "\x05\0\0\0\0", 5);
    EXPECT_FAIL(at("short.safetensors"), PIO_ERR_FORMAT, "short.safetensors", "shorter than");
    write_bytes(at("zero.safetensors"), "", 0);
    EXPECT_FAIL(at("zero.safetensors"), PIO_ERR_FORMAT, "zero.safetensors", "0 bytes");

    /* header length past the end: both numbers */
    unsigned char big[18] = {0xe8, 0x03}; /* 1000, then 10 bytes */
    memcpy(big + 8, "{}        ", 10);
    write_bytes(at("len.safetensors"), big, sizeof big);
    EXPECT_FAIL(at("len.safetensors"), PIO_ERR_FORMAT, "header length 1000", "10 bytes");
    unsigned char huge[16] = {0, 0, 0, 0, 0, 0, 0, 0x80}; /* 2^63 */
    write_bytes(at("len.safetensors"), huge, sizeof huge);
    EXPECT_FAIL(at("len.safetensors"), PIO_ERR_FORMAT, "header length 9223372036854775808", NULL);

    /* header not JSON, not an object, trailing junk */
    EXPECT_BAD_HEADER("{\"a\": ", "bad.safetensors", "not valid JSON");
    EXPECT_BAD_HEADER("{} x", "bad.safetensors", "not valid JSON");
    EXPECT_BAD_HEADER("[1, 2]", "bad.safetensors", "not a JSON object");
    EXPECT_BAD_HEADER("\"str\"", "bad.safetensors", "not a JSON object");

    /* entries: missing members and wrong types, each naming the tensor */
    EXPECT_BAD_HEADER("{\"w\": 3}", "tensor 'w'", "must be an object");
    EXPECT_BAD_HEADER("{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", "tensor 'w'",
                      "missing 'dtype'");
    EXPECT_BAD_HEADER("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", "tensor 'w'",
                      "missing 'shape'");
    EXPECT_BAD_HEADER("{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", "tensor 'w'",
                      "missing 'data_offsets'");
    EXPECT_BAD_HEADER("{\"w\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", "tensor 'w'",
                      "'dtype' must be a string");
    EXPECT_BAD_HEADER("{\"w\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}",
                      "tensor 'w'", "'shape' must be an array of integers");
    EXPECT_BAD_HEADER("{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}",
                      "tensor 'w'", "'shape' must be an array of integers");
    EXPECT_BAD_HEADER("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}",
                      "tensor 'w'", "'data_offsets' must be [begin, end]");
    EXPECT_BAD_HEADER("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}",
                      "tensor 'w'", "'data_offsets' must be [begin, end]");
    EXPECT_BAD_HEADER("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":\"0-8\"}}",
                      "tensor 'w'", "'data_offsets'");

    /* dtype, dims, sizes, bounds */
    EXPECT_BAD_HEADER("{\"w\":{\"dtype\":\"Q4_K\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                      "tensor 'w'", "unknown dtype 'Q4_K'");
    EXPECT_BAD_HEADER("{\"w\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                      "tensor 'w'", "unknown dtype 'f32'");
    EXPECT_BAD_HEADER("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,8]}}",
                      "tensor 'w'", "dimension 1 is negative (-1)");
    EXPECT_BAD_HEADER(
        "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,2],\"data_offsets\":[0,2]}}", "tensor 'w'",
        "5 dimensions");
    EXPECT_BAD_HEADER("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}",
                      "tensor 'w'",
                      "byte size 12 (end - begin) differs from shape [2, 2] x F32 (4 bytes) = 16");
    EXPECT_BAD_HEADER("{\"w\":{\"dtype\":\"BF16\",\"shape\":[4294967296,4294967296],"
                      "\"data_offsets\":[0,8]}}",
                      "tensor 'w'", "shape [4294967296, 4294967296] of BF16 overflows");
    EXPECT_BAD_HEADER("{\"w\":{\"dtype\":\"F32\",\"shape\":[32],\"data_offsets\":[0,128]}}",
                      "tensor 'w'", "beyond the data area of 64 bytes");

    /* overlapping tensors, named both; touching and empty ones are fine */
    EXPECT_BAD_HEADER("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[32,48]},"
                      "\"c\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
                      "'a' [0, 16) and 'c' [8, 24) overlap", "bad.safetensors");
    EXPECT_BAD_HEADER("{\"big\":{\"dtype\":\"U8\",\"shape\":[64],\"data_offsets\":[0,64]},"
                      "\"inner\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[20,24]}}",
                      "'big'", "'inner'");
    write_raw(at("ok.safetensors"),
              "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
              "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,32]},"
              "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]},"
              "\"__metadata__\":[\"ignored\",\"whatever it holds\"]}    ",
              64);
    pio_error err = {0};
    pio_safetensors *st = pio_safetensors_open(at("ok.safetensors"), &err);
    CHECK_MSG(st && pio_safetensors_count(st) == 3, "%s", err.msg);
    pio_safetensors_close(st);

    /* the same name twice in one header */
    EXPECT_BAD_HEADER("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                      "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}",
                      "bad.safetensors", "duplicate tensor 'a'");

    /* a valid file cut short: its data area no longer holds the last tensor */
    const int64_t s16[] = {16};
    pio_tensor *t = filled(PIO_F32, 1, s16, 0);
    const char *name[1] = {"weight"};
    pio_safetensors_write(at("cut.safetensors"), 1, name, (const pio_tensor *const *)&t, &err);
    struct stat sb;
    stat(at("cut.safetensors"), &sb);
    CHECK(truncate(at("cut.safetensors"), sb.st_size - 10) == 0);
    EXPECT_FAIL(at("cut.safetensors"), PIO_ERR_FORMAT, "tensor 'weight'",
                "data_offsets [0, 64] lie beyond the data area of 54 bytes");
    pio_tensor_free(t);

    /* not there at all */
    EXPECT_FAIL(at("missing.safetensors"), PIO_ERR_IO, "missing.safetensors", NULL);
}

/* Writes a shard of `n` F32 [2] tensors called names[i], values base + i. */
static void write_shard(const char *path, int n, const char *const *names, float base) {
    pio_tensor *t[8];
    const int64_t s2[] = {2};
    for (int i = 0; i < n; i++) t[i] = filled(PIO_F32, 1, s2, base + (float)i);
    pio_error err = {0};
    CHECK_MSG(pio_safetensors_write(path, (size_t)n, names, (const pio_tensor *const *)t, &err) ==
                  PIO_OK, "%s", err.msg);
    for (int i = 0; i < n; i++) pio_tensor_free(t[i]);
}

static void test_sharded(void) {
    pio_error err = {0};
    mkdir(at("sharded"), 0700);
    const char *s1[] = {"a", "b"}, *s2[] = {"c"};
    write_shard(at("sharded/model-00001-of-00002.safetensors"), 2, s1, 10);
    write_shard(at("sharded/model-00002-of-00002.safetensors"), 1, s2, 20);
    write_text(at("sharded/model.safetensors.index.json"),
               "{\"metadata\":{\"total_size\":24},\"weight_map\":{"
               "\"a\":\"model-00001-of-00002.safetensors\","
               "\"c\":\"model-00002-of-00002.safetensors\","
               "\"b\":\"model-00001-of-00002.safetensors\"}}");
    const char *paths[2] = {at("sharded/model.safetensors.index.json"), at("sharded")};
    for (int k = 0; k < 2; k++) { /* the index itself, then its directory */
        pio_safetensors *st = pio_safetensors_open(paths[k], &err);
        CHECK_MSG(st != NULL, "%s: %s", paths[k], err.msg);
        if (!st) continue;
        CHECK(pio_safetensors_count(st) == 3);
        const pio_st_info *a = pio_safetensors_find(st, "a"), *c = pio_safetensors_find(st, "c");
        CHECK(a && c && a->file != c->file);
        pio_tensor *tc = pio_safetensors_get(st, "c", &err);
        CHECK(tc && pio_tensor_get(tc, 0) == 20.0f && pio_tensor_get(tc, 1) == 20.5f);
        pio_tensor *tb = pio_safetensors_get(st, "b", &err);
        CHECK(tb && pio_tensor_get(tb, 0) == 11.0f);
        pio_tensor_free(tc);
        pio_tensor_free(tb);
        pio_safetensors_close(st);
    }

    /* a missing shard file: i/o error naming it */
    write_text(at("sharded/gone.index.json"),
               "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
               "\"z\":\"model-00009-of-00009.safetensors\"}}");
    EXPECT_FAIL(at("sharded/gone.index.json"), PIO_ERR_IO, "model-00009-of-00009.safetensors",
                "gone.index.json");
    /* a tensor the map promises but the shard lacks: named with its shard */
    write_text(at("sharded/lying.index.json"),
               "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
               "\"d\":\"model-00002-of-00002.safetensors\"}}");
    EXPECT_FAIL(at("sharded/lying.index.json"), PIO_ERR_FORMAT, "tensor 'd'",
                "model-00002-of-00002.safetensors");
    /* the map points at the wrong shard */
    write_text(at("sharded/wrong.index.json"),
               "{\"weight_map\":{\"a\":\"model-00002-of-00002.safetensors\","
               "\"c\":\"model-00001-of-00002.safetensors\"}}");
    EXPECT_FAIL(at("sharded/wrong.index.json"), PIO_ERR_FORMAT, "tensor 'a'",
                "model-00002-of-00002.safetensors");
    write_text(at("sharded/nomap.index.json"), "{\"metadata\":{}}");
    EXPECT_FAIL(at("sharded/nomap.index.json"), PIO_ERR_FORMAT, "missing 'weight_map'", NULL);
    write_text(at("sharded/badval.index.json"), "{\"weight_map\":{\"a\":1}}");
    EXPECT_FAIL(at("sharded/badval.index.json"), PIO_ERR_FORMAT, "weight_map entry 'a'", NULL);
    write_text(at("sharded/broken.index.json"), "{\"weight_map\":");
    EXPECT_FAIL(at("sharded/broken.index.json"), PIO_ERR_FORMAT, "broken.index.json", NULL);
}

static void test_directories(void) {
    pio_error err = {0};
    const char *x[] = {"x"}, *y[] = {"y"}, *xy[] = {"x", "y"};

    /* model.safetensors wins over other files beside it */
    mkdir(at("single"), 0700);
    write_shard(at("single/model.safetensors"), 2, xy, 1);
    write_shard(at("single/other.safetensors"), 1, x, 5);
    pio_safetensors *st = pio_safetensors_open(at("single"), &err);
    CHECK_MSG(st && pio_safetensors_count(st) == 2, "%s", err.msg);
    pio_safetensors_close(st);

    /* otherwise every *.safetensors, in byte-wise name order */
    mkdir(at("glob"), 0700);
    write_shard(at("glob/part-b.safetensors"), 1, y, 2);
    write_shard(at("glob/part-a.safetensors"), 1, x, 1);
    write_text(at("glob/notes.txt"), "not a checkpoint");
    write_text(at("glob/config.json"), "{}");
    st = pio_safetensors_open(at("glob"), &err);
    CHECK_MSG(st && pio_safetensors_count(st) == 2, "%s", err.msg);
    if (st) {
        CHECK(strcmp(pio_safetensors_at(st, 0)->name, "x") == 0);
        CHECK(pio_safetensors_find(st, "x")->file == 0 && pio_safetensors_find(st, "y")->file == 1);
        pio_safetensors_close(st);
    }

    /* the same tensor in two shards */
    mkdir(at("dup"), 0700);
    write_shard(at("dup/one.safetensors"), 1, x, 1);
    write_shard(at("dup/two.safetensors"), 1, x, 2);
    EXPECT_FAIL(at("dup"), PIO_ERR_FORMAT, "duplicate tensor 'x'", "two.safetensors");

    /* nothing to load */
    mkdir(at("empty"), 0700);
    EXPECT_FAIL(at("empty"), PIO_ERR_IO, "no .safetensors files", "empty");

    /* a bad shard in a directory is named */
    mkdir(at("badshard"), 0700);
    write_shard(at("badshard/a.safetensors"), 1, x, 1);
    write_bytes(at("badshard/b.safetensors"), "abc", 3);
    EXPECT_FAIL(at("badshard"), PIO_ERR_FORMAT, "b.safetensors", "shorter than");
}

/* Real checkpoints hold ~20k tensors: every one must be found by name. */
static void test_many(void) {
    enum { N = 20000 };
    char(*names)[48] = malloc(N * sizeof *names);
    const char **np = malloc(N * sizeof *np);
    pio_tensor **ts = malloc(N * sizeof *ts);
    const int64_t s1[] = {1};
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "model.layers.%d.mlp.experts.%d.w", i / 128, i % 128);
        np[i] = names[i];
        ts[i] = filled(i % 2 ? PIO_BF16 : PIO_F32, 1, s1, (float)(i % 256));
    }
    pio_error err = {0};
    CHECK(pio_safetensors_write(at("many.safetensors"), N, np, (const pio_tensor *const *)ts,
                                &err) == PIO_OK);
    pio_safetensors *st = pio_safetensors_open(at("many.safetensors"), &err);
    CHECK_MSG(st != NULL, "%s", err.msg);
    if (st) {
        CHECK(pio_safetensors_count(st) == N);
        int found = 0, right = 0;
        for (int i = 0; i < N; i++) {
            const pio_st_info *info = pio_safetensors_find(st, names[i]);
            found += info != NULL;
            pio_tensor *t = info ? pio_safetensors_get(st, names[i], &err) : NULL;
            right += t && pio_tensor_get(t, 0) == (float)(i % 256) && t->dtype == ts[i]->dtype;
            pio_tensor_free(t);
        }
        CHECK(found == N && right == N);
        CHECK(pio_safetensors_find(st, "model.layers.0.mlp.experts.0") == NULL);
        pio_safetensors_close(st);
    }
    for (int i = 0; i < N; i++) pio_tensor_free(ts[i]);
    free(ts);
    free(np);
    free(names);
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int main(void) {
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    int64_t live0 = pio_debug_live_tensors(), heap0 = pio_debug_heap_bytes();

    test_round_trip();
    test_write_errors();
    test_unsupported_dtype();
    test_bad_files();
    test_sharded();
    test_directories();
    test_many();

    CHECK_MSG(pio_debug_live_tensors() == live0, "%lld tensors leaked",
              (long long)(pio_debug_live_tensors() - live0));
    CHECK_MSG(pio_debug_heap_bytes() == heap0, "%lld heap bytes leaked",
              (long long)(pio_debug_heap_bytes() - heap0));
    nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    TEST_MAIN_END();
}
