/* JSON files through Debian's cJSON, with getters whose errors say which key
 * of which file had which wrong type: config.json mistakes should read as
 * "config.json: key 'hidden_size' must be an integer, got string". */
#include "pio/json.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *type_name(const cJSON *v) {
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "boolean";
    if (cJSON_IsNumber(v)) return "number";
    if (cJSON_IsString(v)) return "string";
    if (cJSON_IsArray(v)) return "array";
    if (cJSON_IsObject(v)) return "object";
    return "invalid value";
}

cJSON *pio_json_read_file(const char *path, pio_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        pio_error_set(err, PIO_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    /* Read in chunks rather than trusting ftell, so pipes and /proc work too. */
    size_t len = 0, cap = 0;
    char *buf = NULL;
    for (;;) {
        if (cap - len < 4096) {
            size_t ncap = cap ? cap * 2 : 65536;
            char *nbuf = realloc(buf, ncap);
            if (!nbuf) {
                free(buf);
                fclose(f);
                pio_error_set(err, PIO_ERR_OOM, "out of memory reading '%s'", path);
                return NULL;
            }
            buf = nbuf;
            cap = ncap;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        pio_error_set(err, PIO_ERR_IO, "cannot read '%s'", path);
        return NULL;
    }

    buf[len] = '\0'; /* the loop above always leaves room; belt and braces for cJSON */

    /* cJSON_GetErrorPtr is a global; the parse_end out-parameter is not. */
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, false);
    if (root) {
        /* Anything but whitespace after the value means a corrupt file. */
        while (end < buf + len && *end && strchr(" \t\r\n", *end)) end++;
        if (end < buf + len) {
            cJSON_Delete(root);
            root = NULL;
        }
    }
    if (!root) {
        size_t off = end ? (size_t)(end - buf) : 0, line = 1;
        for (size_t i = 0; i < off && i < len; i++) line += buf[i] == '\n';
        pio_error_set(err, PIO_ERR_FORMAT, "'%s': invalid JSON at byte %zu (line %zu)", path,
                      off, line);
    }
    free(buf);
    return root;
}

/* Shared front half of every getter: NULL (with *st = PIO_OK) for a missing
 * optional key, the item otherwise. */
static const cJSON *member(const cJSON *obj, const char *key, bool required, const char *what,
                           pio_status *st, pio_error *err) {
    if (!what) what = "json";
    *st = PIO_OK;
    if (!cJSON_IsObject(obj)) {
        *st = pio_error_set(err, PIO_ERR_FORMAT, "%s: expected an object holding key '%s', got %s",
                            what, key, obj ? type_name(obj) : "nothing");
        return NULL;
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v && required) *st = pio_error_set(err, PIO_ERR_FORMAT, "%s: missing key '%s'", what, key);
    return v;
}

static pio_status wrong_type(const cJSON *v, const char *key, const char *expected,
                             const char *what, pio_error *err) {
    return pio_error_set(err, PIO_ERR_FORMAT, "%s: key '%s' must be %s, got %s",
                         what ? what : "json", key, expected, type_name(v));
}

pio_status pio_json_int(const cJSON *obj, const char *key, bool required, int64_t fallback,
                        int64_t *out, const char *what, pio_error *err) {
    pio_status st;
    const cJSON *v = member(obj, key, required, what, &st, err);
    if (st) return st;
    if (!v) {
        *out = fallback;
        return PIO_OK;
    }
    if (!cJSON_IsNumber(v)) return wrong_type(v, key, "an integer", what, err);
    /* cJSON's valueint saturates at INT_MAX; valuedouble holds every integer
     * up to 2^53 exactly, which covers every size a config can name. */
    double d = v->valuedouble;
    if (d != floor(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0)
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: key '%s' must be an integer, got %g",
                             what ? what : "json", key, d);
    *out = (int64_t)d;
    return PIO_OK;
}

pio_status pio_json_double(const cJSON *obj, const char *key, bool required, double fallback,
                           double *out, const char *what, pio_error *err) {
    pio_status st;
    const cJSON *v = member(obj, key, required, what, &st, err);
    if (st) return st;
    if (!v) {
        *out = fallback;
        return PIO_OK;
    }
    if (!cJSON_IsNumber(v)) return wrong_type(v, key, "a number", what, err);
    *out = v->valuedouble;
    return PIO_OK;
}

pio_status pio_json_bool(const cJSON *obj, const char *key, bool required, bool fallback,
                         bool *out, const char *what, pio_error *err) {
    pio_status st;
    const cJSON *v = member(obj, key, required, what, &st, err);
    if (st) return st;
    if (!v) {
        *out = fallback;
        return PIO_OK;
    }
    if (!cJSON_IsBool(v)) return wrong_type(v, key, "a boolean", what, err);
    *out = cJSON_IsTrue(v);
    return PIO_OK;
}

pio_status pio_json_string(const cJSON *obj, const char *key, bool required,
                           const char *fallback, const char **out, const char *what,
                           pio_error *err) {
    pio_status st;
    const cJSON *v = member(obj, key, required, what, &st, err);
    if (st) return st;
    if (!v) {
        *out = fallback;
        return PIO_OK;
    }
    if (!cJSON_IsString(v)) return wrong_type(v, key, "a string", what, err);
    *out = v->valuestring;
    return PIO_OK;
}
