/* pio/json.h: reading files and the typed getters' messages. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <unistd.h>

#include "pio/json.h"
#include "pio_test.h"

static char dir[] = "/tmp/pio-json-XXXXXX";

/* Writes text to dir/name; returns the path (caller frees). */
static char *write_tmp(const char *name, const char *text) {
    char *path = NULL;
    if (asprintf(&path, "%s/%s", dir, name) < 0) exit(1);
    FILE *f = fopen(path, "wb");
    if (!f) exit(1);
    fputs(text, f);
    fclose(f);
    return path;
}

int main(void) {
    pio_error err;
    if (!mkdtemp(dir)) return 1;

    char *good = write_tmp("config.json",
                                 "{\"hidden_size\": 2560, \"big\": 1099511627776, \"eps\": 1e-6,\n"
                                 " \"tie\": true, \"name\": \"qwen3\", \"half\": 1.5, \"neg\": -3}\n");
    cJSON *cfg = pio_json_read_file(good, &err);
    CHECK_MSG(cfg != NULL, "%s", err.msg);

    int64_t i = 0;
    CHECK(pio_json_int(cfg, "hidden_size", true, 0, &i, "config.json", &err) == PIO_OK && i == 2560);
    CHECK(pio_json_int(cfg, "big", true, 0, &i, "config.json", &err) == PIO_OK &&
          i == 1099511627776LL); /* beyond INT_MAX, where cJSON's valueint saturates */
    CHECK(pio_json_int(cfg, "neg", true, 0, &i, "config.json", &err) == PIO_OK && i == -3);
    CHECK(pio_json_int(cfg, "absent", false, 7, &i, "config.json", &err) == PIO_OK && i == 7);

    CHECK(pio_json_int(cfg, "absent", true, 7, &i, "config.json", &err) == PIO_ERR_FORMAT);
    CHECK_ERR(err, "config.json: missing key 'absent'");
    CHECK(pio_json_int(cfg, "name", true, 0, &i, "config.json", &err) == PIO_ERR_FORMAT);
    CHECK_ERR(err, "config.json: key 'name' must be an integer, got string");
    CHECK(pio_json_int(cfg, "half", true, 0, &i, "config.json", &err) == PIO_ERR_FORMAT);
    CHECK_ERR(err, "key 'half' must be an integer, got 1.5");

    double d = 0;
    CHECK(pio_json_double(cfg, "eps", true, 0, &d, "config.json", &err) == PIO_OK && d == 1e-6);
    CHECK(pio_json_double(cfg, "hidden_size", true, 0, &d, "cfg", &err) == PIO_OK && d == 2560);
    CHECK(pio_json_double(cfg, "absent", false, 0.5, &d, "cfg", &err) == PIO_OK && d == 0.5);
    CHECK(pio_json_double(cfg, "tie", true, 0, &d, "cfg", &err) == PIO_ERR_FORMAT);
    CHECK_ERR(err, "cfg: key 'tie' must be a number, got boolean");

    bool b = false;
    CHECK(pio_json_bool(cfg, "tie", true, false, &b, "cfg", &err) == PIO_OK && b);
    CHECK(pio_json_bool(cfg, "absent", false, true, &b, "cfg", &err) == PIO_OK && b);
    CHECK(pio_json_bool(cfg, "eps", true, false, &b, "cfg", &err) == PIO_ERR_FORMAT);
    CHECK_ERR(err, "key 'eps' must be a boolean, got number");

    const char *s = NULL;
    CHECK(pio_json_string(cfg, "name", true, NULL, &s, "cfg", &err) == PIO_OK &&
          strcmp(s, "qwen3") == 0);
    CHECK(pio_json_string(cfg, "absent", false, "dflt", &s, "cfg", &err) == PIO_OK &&
          strcmp(s, "dflt") == 0);
    CHECK(pio_json_string(cfg, "big", true, NULL, &s, "cfg", &err) == PIO_ERR_FORMAT);
    CHECK_ERR(err, "key 'big' must be a string, got number");

    /* A getter on something that is not an object says so instead of crashing. */
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(cfg, "name");
    CHECK(pio_json_int(name, "x", false, 0, &i, "cfg.name", &err) == PIO_ERR_FORMAT);
    CHECK_ERR(err, "cfg.name: expected an object");
    cJSON_Delete(cfg);

    /* Missing file: i/o error naming it. */
    char missing[300];
    snprintf(missing, sizeof missing, "%s/nope.json", dir);
    CHECK(pio_json_read_file(missing, &err) == NULL && err.status == PIO_ERR_IO);
    CHECK_ERR(err, "nope.json");

    /* Bad JSON: format error with the path, byte offset and line. */
    char *bad = write_tmp("bad.json", "{\n  \"a\": 1,\n  \"b\": }\n");
    CHECK(pio_json_read_file(bad, &err) == NULL && err.status == PIO_ERR_FORMAT);
    CHECK_ERR(err, "bad.json");
    CHECK_ERR(err, "invalid JSON at byte");
    CHECK_ERR(err, "line 3");

    char *trailing = write_tmp("trailing.json", "{\"a\": 1} x");
    CHECK(pio_json_read_file(trailing, &err) == NULL && err.status == PIO_ERR_FORMAT);
    CHECK_ERR(err, "trailing.json");

    char *empty = write_tmp("empty.json", "");
    CHECK(pio_json_read_file(empty, &err) == NULL && err.status == PIO_ERR_FORMAT);

    char *paths[] = {good, bad, trailing, empty};
    for (int k = 0; k < 4; k++) {
        unlink(paths[k]);
        free(paths[k]);
    }
    rmdir(dir);
    TEST_MAIN_END();
}
