/* pio/error.h: how every core function reports failure.
 *
 * Core functions return a pio_status and, on failure, fill a caller-owned
 * pio_error with a human-readable message. Nothing reachable from user input
 * aborts or exits. The Lua bindings turn misuse (PIO_ERR_INVALID, PIO_ERR_RANGE,
 * PIO_ERR_UNSUPPORTED) into Lua errors and environment failures (PIO_ERR_IO,
 * PIO_ERR_FORMAT, PIO_ERR_OOM, PIO_ERR_NOT_FOUND) into `nil, message`.
 */
#ifndef PIO_ERROR_H
#define PIO_ERROR_H

#include <stddef.h>

typedef enum pio_status {
    PIO_OK = 0,
    PIO_ERR_INVALID,     /* bad argument: wrong shape, dtype, option */
    PIO_ERR_RANGE,       /* index out of range: token id, position, context */
    PIO_ERR_UNSUPPORTED, /* valid but not implemented: architecture, component */
    PIO_ERR_IO,          /* file missing or unreadable */
    PIO_ERR_FORMAT,      /* file present but malformed */
    PIO_ERR_NOT_FOUND,   /* a named thing is absent: tensor, key */
    PIO_ERR_OOM,         /* allocation failed */
    PIO_STATUS_COUNT
} pio_status;

typedef struct pio_error {
    pio_status status;
    char msg[1024];
} pio_error;

/* Sets err (may be NULL) and returns st, so callers can `return pio_error_set(...)`. */
pio_status pio_error_set(pio_error *err, pio_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "context: " to an existing message (for layered errors). */
pio_status pio_error_prefix(pio_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

void pio_error_clear(pio_error *err);

/* Short name of a status: "invalid argument", "out of memory", ... */
const char *pio_status_name(pio_status st);

/* True for failures of the environment (file, memory), false for misuse. */
int pio_status_is_environment(pio_status st);

#endif
