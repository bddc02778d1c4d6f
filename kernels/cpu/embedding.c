/* Embedding lookup: out[i, :] = table[ids[i], :], widened to f32. */
#include "cpu_internal.h"

pio_status pio_cpu_embedding(const pio_tensor *table, const int32_t *ids, int64_t n,
                             pio_tensor *out, pio_error *err) {
    const char *op = "embedding";
    char s[PIO_SHAPE_BUF];
    if (!pio_cpu_check_f32_bf16(op, "table", table, err) || !pio_cpu_check_f32(op, "out", out, err))
        return PIO_ERR_INVALID;
    if (table->ndim != 2 || out->ndim != 2 || out->shape[0] != n ||
        out->shape[1] != table->shape[1])
        return pio_cpu_shape_error(err, op, "table", table, "out", out,
                                   "do not fit table[V, d] and out[n, d]");
    if (n < 0 || (n > 0 && !ids))
        return pio_error_set(err, PIO_ERR_INVALID, "%s: %lld ids for out %s", op, (long long)n,
                             pio_shape_str(out, s, sizeof s));
    const int64_t vocab = table->shape[0], d = table->shape[1];
    /* Check every id before writing anything, so a bad batch leaves out untouched. */
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return pio_error_set(
                err, PIO_ERR_RANGE,
                "%s: token id %d (at %lld) is out of range for a vocabulary of %lld", op,
                (int)ids[i], (long long)i, (long long)vocab);

    const size_t elem = pio_dtype_info(table->dtype)->size;
    const char *rows = pio_tensor_data(table);
    float *o = pio_tensor_data(out);
    for (int64_t i = 0; i < n; i++)
        pio_convert(o + i * d, PIO_F32, rows + (size_t)ids[i] * (size_t)d * elem, table->dtype,
                    (size_t)d);
    return PIO_OK;
}
