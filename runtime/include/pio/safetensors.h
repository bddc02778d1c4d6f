/* pio/safetensors.h: memory-mapped safetensors checkpoints.
 *
 * Opens a single .safetensors file, a sharded checkpoint through its
 * model.safetensors.index.json, or a directory holding either. Every header is
 * validated before any tensor is handed out: the 8-byte header length lies
 * inside the file, the header is a JSON object, each tensor's dtype is a known
 * safetensors dtype, its byte size equals shape × dtype size, its
 * [begin, end) lies inside the data area, and no two tensors overlap.
 * Tensors returned by pio_safetensors_get view the mapped file (zero copy).
 */
#ifndef PIO_SAFETENSORS_H
#define PIO_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pio/error.h"
#include "pio/tensor.h"

typedef struct pio_safetensors pio_safetensors;

typedef struct pio_st_info {
    const char *name;      /* borrowed, lives as long as the pio_safetensors */
    const char *st_dtype;  /* the file's dtype string: "BF16", "F32", "I64", ... */
    bool supported;        /* dtype maps to a pio_dtype (F32, F16, BF16) */
    pio_dtype dtype;       /* valid when supported */
    int ndim;
    int64_t shape[PIO_MAX_DIMS];
    size_t nbytes;
    int file;              /* index of the shard */
} pio_st_info;

/* path: a .safetensors file, a *.index.json, or a directory containing
 * model.safetensors.index.json or exactly the *.safetensors files to use. */
pio_safetensors *pio_safetensors_open(const char *path, pio_error *err);
void pio_safetensors_close(pio_safetensors *st);

size_t pio_safetensors_count(const pio_safetensors *st);
const pio_st_info *pio_safetensors_at(const pio_safetensors *st, size_t i);
/* NULL when absent. */
const pio_st_info *pio_safetensors_find(const pio_safetensors *st, const char *name);

/* A tensor viewing the mapped bytes (caller frees). Absent name: NULL and
 * PIO_ERR_NOT_FOUND with the name in the message; unsupported dtype:
 * PIO_ERR_UNSUPPORTED naming tensor and dtype. */
pio_tensor *pio_safetensors_get(const pio_safetensors *st, const char *name, pio_error *err);

/* Writes tensors (contiguous f32/f16/bf16) to a .safetensors file: used by
 * tests and tools. names[i] pairs with tensors[i]. */
pio_status pio_safetensors_write(const char *path, size_t n, const char *const *names,
                                 const pio_tensor *const *tensors, pio_error *err);

#endif
