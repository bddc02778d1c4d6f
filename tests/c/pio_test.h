/* A minimal C test harness: CHECK records a failure and goes on; the test
 * program's exit status is the number of failed checks (0 = pass).
 * Each test file prints "N passed, N failed" for its checks. */
#ifndef PIO_TEST_H
#define PIO_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int pio_test_passed, pio_test_failed;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (cond) {                                                                   \
            pio_test_passed++;                                                        \
        } else {                                                                      \
            pio_test_failed++;                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
        }                                                                             \
    } while (0)

#define CHECK_MSG(cond, ...)                                                          \
    do {                                                                              \
        if (cond) {                                                                   \
            pio_test_passed++;                                                        \
        } else {                                                                      \
            pio_test_failed++;                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                             \
            fputc('\n', stderr);                                                      \
        }                                                                             \
    } while (0)

/* The error message contains the given substring. */
#define CHECK_ERR(err, substr) \
    CHECK_MSG(strstr((err).msg, (substr)) != NULL, "message '%s' lacks '%s'", (err).msg, (substr))

#define TEST_MAIN_END()                                                               \
    do {                                                                              \
        printf("%d passed, %d failed\n", pio_test_passed, pio_test_failed);          \
        return pio_test_failed ? 1 : 0;                                               \
    } while (0)

#endif
