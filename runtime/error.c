#include "pio/error.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const status_names[] = {
    [PIO_OK] = "ok",
    [PIO_ERR_INVALID] = "invalid argument",
    [PIO_ERR_RANGE] = "out of range",
    [PIO_ERR_UNSUPPORTED] = "unsupported",
    [PIO_ERR_IO] = "i/o error",
    [PIO_ERR_FORMAT] = "malformed file",
    [PIO_ERR_NOT_FOUND] = "not found",
    [PIO_ERR_OOM] = "out of memory",
};
static_assert(sizeof status_names / sizeof status_names[0] == PIO_STATUS_COUNT,
              "every status needs a name");

pio_status pio_error_set(pio_error *err, pio_status st, const char *fmt, ...) {
    if (err) {
        err->status = st;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return st;
}

pio_status pio_error_prefix(pio_error *err, const char *fmt, ...) {
    if (!err) return PIO_OK;
    char old[sizeof err->msg];
    memcpy(old, err->msg, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    size_t used = n < 0 ? 0 : (size_t)n < sizeof err->msg ? (size_t)n : sizeof err->msg - 1;
    /* Append ": old" in what room is left; a message cut short beats an overflow. */
    if (used + 2 < sizeof err->msg) {
        memcpy(err->msg + used, ": ", 2);
        used += 2;
        size_t room = sizeof err->msg - used - 1, len = strlen(old);
        if (len > room) len = room;
        memcpy(err->msg + used, old, len);
        err->msg[used + len] = '\0';
    }
    return err->status;
}

void pio_error_clear(pio_error *err) {
    if (err) {
        err->status = PIO_OK;
        err->msg[0] = '\0';
    }
}

const char *pio_status_name(pio_status st) {
    return (st >= 0 && st < PIO_STATUS_COUNT) ? status_names[st] : "unknown status";
}

int pio_status_is_environment(pio_status st) {
    return st == PIO_ERR_IO || st == PIO_ERR_FORMAT || st == PIO_ERR_NOT_FOUND ||
           st == PIO_ERR_OOM;
}
