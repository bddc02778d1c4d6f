/* pio/tensor.h: dtypes, refcounted storage and strided tensors.
 *
 * A pio_tensor is a small header (dtype, shape, strides in elements, byte
 * offset) over a refcounted pio_storage. Views share storage. Storage lives on
 * the host heap, in a read-only memory map of a file, or on a device.
 * Ownership: every pio_tensor* returned by a *_new / view / copy function is
 * owned by the caller and released with pio_tensor_free (which drops one
 * storage reference). Shapes are 0-based and row-major: shape[ndim-1] is the
 * fastest-moving dimension of a contiguous tensor.
 */
#ifndef PIO_TENSOR_H
#define PIO_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pio/error.h"

#define PIO_MAX_DIMS 4

typedef enum pio_dtype { PIO_F32 = 0, PIO_F16, PIO_BF16, PIO_DTYPE_COUNT } pio_dtype;

typedef struct pio_dtype_traits {
    const char *name; /* "f32", "f16", "bf16" */
    size_t size;      /* bytes per element */
} pio_dtype_traits;

const pio_dtype_traits *pio_dtype_info(pio_dtype dt);
/* Accepts "f32"/"float32", "f16"/"float16", "bf16"/"bfloat16". Returns false if unknown. */
bool pio_dtype_from_name(const char *name, pio_dtype *out);

typedef enum pio_device { PIO_DEVICE_CPU = 0, PIO_DEVICE_CUDA, PIO_DEVICE_COUNT } pio_device;
const char *pio_device_name(pio_device dev);

typedef enum pio_storage_kind { PIO_STORAGE_HEAP, PIO_STORAGE_MMAP, PIO_STORAGE_DEVICE } pio_storage_kind;

typedef struct pio_storage {
    int refcount;
    pio_storage_kind kind;
    pio_device device;
    void *data;   /* first byte usable by tensors */
    size_t size;  /* usable bytes from data */
    void *base;   /* what to munmap/free: may differ from data for mmap */
    size_t base_len;
} pio_storage;

/* Heap storage of `size` bytes, zero-filled, 64-byte aligned. NULL + PIO_ERR_OOM on failure. */
pio_storage *pio_storage_new_heap(size_t size, pio_error *err);
/* Maps the whole file read-only. data = start of file. */
pio_storage *pio_storage_map_file(const char *path, pio_error *err);
void pio_storage_retain(pio_storage *s);
void pio_storage_release(pio_storage *s);

typedef struct pio_tensor {
    pio_dtype dtype;
    int ndim;
    int64_t shape[PIO_MAX_DIMS];
    int64_t stride[PIO_MAX_DIMS]; /* in elements */
    size_t offset;                /* in bytes from storage->data */
    pio_storage *storage;         /* one reference owned by this tensor */
} pio_tensor;

/* New contiguous zero-filled heap tensor. */
pio_tensor *pio_tensor_new(pio_dtype dt, int ndim, const int64_t *shape, pio_error *err);
/* A contiguous tensor over existing storage at a byte offset (retains storage).
 * Fails with PIO_ERR_FORMAT if the bytes do not fit inside the storage. */
pio_tensor *pio_tensor_from_storage(pio_storage *s, size_t offset, pio_dtype dt, int ndim,
                                    const int64_t *shape, pio_error *err);
void pio_tensor_free(pio_tensor *t);

static inline void *pio_tensor_data(const pio_tensor *t) {
    return (char *)t->storage->data + t->offset;
}
int64_t pio_tensor_numel(const pio_tensor *t);
size_t pio_tensor_nbytes(const pio_tensor *t); /* numel * dtype size */
bool pio_tensor_is_contiguous(const pio_tensor *t);
bool pio_tensor_same_shape(const pio_tensor *a, const pio_tensor *b);
/* "[2, 3]" into buf; returns buf. */
char *pio_shape_str(const pio_tensor *t, char *buf, size_t len);

/* Views (share storage). view needs a contiguous tensor and the same numel;
 * one dimension may be -1 (inferred). */
pio_tensor *pio_tensor_view(const pio_tensor *t, int ndim, const int64_t *shape, pio_error *err);
pio_tensor *pio_tensor_transpose(const pio_tensor *t, int a, int b, pio_error *err);
/* Rows [start, start+len) of dimension 0. */
pio_tensor *pio_tensor_narrow(const pio_tensor *t, int dim, int64_t start, int64_t len,
                              pio_error *err);
/* Copies (always new storage, contiguous). */
pio_tensor *pio_tensor_contiguous(const pio_tensor *t, pio_error *err);
pio_tensor *pio_tensor_to(const pio_tensor *t, pio_dtype dt, pio_error *err);
/* Copies src into dst (same shape; any strides; converts dtype). */
pio_status pio_tensor_copy(pio_tensor *dst, const pio_tensor *src, pio_error *err);

/* Element access by flat logical index (row-major over shape), any strides/dtype. */
float pio_tensor_get(const pio_tensor *t, int64_t flat_index);
void pio_tensor_set(pio_tensor *t, int64_t flat_index, float v);

/* Scalar conversions. bf16/f16 rounding is round-to-nearest-even, as torch does. */
static inline float pio_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}
static inline uint16_t pio_f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = {.f = f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40); /* quiet NaN */
    v.u += 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)(v.u >> 16);
}
static inline float pio_round_bf16(float f) { return pio_bf16_to_f32(pio_f32_to_bf16(f)); }
float pio_f16_to_f32(uint16_t h);
uint16_t pio_f32_to_f16(float f);

/* Converts n contiguous values between dtypes (same dtype: memcpy). */
void pio_convert(void *dst, pio_dtype dst_dt, const void *src, pio_dtype src_dt, size_t n);

/* Test-only accounting: live tensor headers and heap storage bytes. */
int64_t pio_debug_live_tensors(void);
int64_t pio_debug_heap_bytes(void);

#endif
