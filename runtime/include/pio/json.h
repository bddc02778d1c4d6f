/* pio/json.h: reading JSON files with cJSON (Debian's libcjson), and typed
 * getters that report the key and the expected type on a mismatch. */
#ifndef PIO_JSON_H
#define PIO_JSON_H

#include <stdbool.h>
#include <stdint.h>

#include <cJSON.h>

#include "pio/error.h"

/* Parses a whole file. Missing file: PIO_ERR_IO; bad JSON: PIO_ERR_FORMAT with
 * the path and the byte offset. Caller frees with cJSON_Delete. */
cJSON *pio_json_read_file(const char *path, pio_error *err);

/* Getters for object members. A missing key gives `fallback` when `required`
 * is false and PIO_ERR_FORMAT ("<what>: missing key 'k'") when it is true; a
 * value of the wrong type is always PIO_ERR_FORMAT naming key and type. */
pio_status pio_json_int(const cJSON *obj, const char *key, bool required, int64_t fallback,
                        int64_t *out, const char *what, pio_error *err);
pio_status pio_json_double(const cJSON *obj, const char *key, bool required, double fallback,
                           double *out, const char *what, pio_error *err);
pio_status pio_json_bool(const cJSON *obj, const char *key, bool required, bool fallback,
                         bool *out, const char *what, pio_error *err);
/* Borrowed string or fallback. */
pio_status pio_json_string(const cJSON *obj, const char *key, bool required,
                           const char *fallback, const char **out, const char *what,
                           pio_error *err);

#endif
