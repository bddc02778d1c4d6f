/* Tensors and storage: the data structure everything else passes around. */
#define _GNU_SOURCE
#include "pio/tensor.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const pio_dtype_traits dtype_traits[] = {
    [PIO_F32] = {"f32", 4},
    [PIO_F16] = {"f16", 2},
    [PIO_BF16] = {"bf16", 2},
};
static_assert(sizeof dtype_traits / sizeof dtype_traits[0] == PIO_DTYPE_COUNT,
              "every dtype needs traits");

static atomic_llong live_tensors, heap_bytes;

int64_t pio_debug_live_tensors(void) { return atomic_load(&live_tensors); }
int64_t pio_debug_heap_bytes(void) { return atomic_load(&heap_bytes); }

const pio_dtype_traits *pio_dtype_info(pio_dtype dt) {
    assert(dt >= 0 && dt < PIO_DTYPE_COUNT);
    return &dtype_traits[dt];
}

bool pio_dtype_from_name(const char *name, pio_dtype *out) {
    static const struct { const char *name; pio_dtype dt; } aliases[] = {
        {"f32", PIO_F32},  {"float32", PIO_F32},   {"f16", PIO_F16},
        {"float16", PIO_F16}, {"bf16", PIO_BF16}, {"bfloat16", PIO_BF16},
    };
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (strcmp(name, aliases[i].name) == 0) {
            *out = aliases[i].dt;
            return true;
        }
    return false;
}

const char *pio_device_name(pio_device dev) {
    static const char *const names[] = {[PIO_DEVICE_CPU] = "cpu", [PIO_DEVICE_CUDA] = "cuda"};
    static_assert(sizeof names / sizeof names[0] == PIO_DEVICE_COUNT, "every device needs a name");
    return names[dev];
}

/* ---- storage ---------------------------------------------------------- */

/* Storage of 4 MiB and more (weights, KV cache, prompt activations) is
 * 2 MiB-aligned and asks for transparent huge pages (MADV_HUGEPAGE: the
 * kernel's default is often "madvise"). Decode streams every weight once per
 * token; with 4 KiB pages each page is a TLB miss and the prefetchers stop
 * at every page boundary (bf16 Qwen3-0.6B decode on the 2-core Zen 4: see
 * the commit that added this). */
enum { HUGE_MIN = 4u << 20, HUGE_ALIGN = 2u << 20 };

pio_storage *pio_storage_new_heap(size_t size, pio_error *err) {
    pio_storage *s = calloc(1, sizeof *s);
    bool huge = size >= HUGE_MIN;
    size_t align = huge ? HUGE_ALIGN : 64;
    size_t rounded = (size + align - 1) & ~(align - 1);
    void *data = NULL;
    if (!s || (rounded && posix_memalign(&data, align, rounded) != 0)) {
        free(s);
        pio_error_set(err, PIO_ERR_OOM, "out of memory allocating %zu bytes", size);
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    if (huge) madvise(data, rounded, MADV_HUGEPAGE); /* advice only: failure is fine */
#endif
    if (rounded) memset(data, 0, rounded);
    *s = (pio_storage){.refcount = 1, .kind = PIO_STORAGE_HEAP, .device = PIO_DEVICE_CPU,
                       .data = data, .size = size, .base = data, .base_len = rounded};
    atomic_fetch_add(&heap_bytes, (long long)size);
    return s;
}

pio_storage *pio_storage_map_file(const char *path, pio_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        pio_error_set(err, PIO_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        pio_error_set(err, PIO_ERR_IO, "'%s' is not a regular file", path);
        return NULL;
    }
    size_t len = (size_t)st.st_size;
    void *map = NULL;
    if (len > 0) {
        map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            close(fd);
            pio_error_set(err, PIO_ERR_IO, "cannot map '%s': %s", path, strerror(errno));
            return NULL;
        }
    }
    close(fd);
    pio_storage *s = calloc(1, sizeof *s);
    if (!s) {
        if (map) munmap(map, len);
        pio_error_set(err, PIO_ERR_OOM, "out of memory");
        return NULL;
    }
    *s = (pio_storage){.refcount = 1, .kind = PIO_STORAGE_MMAP, .device = PIO_DEVICE_CPU,
                       .data = map, .size = len, .base = map, .base_len = len};
    return s;
}

void pio_storage_retain(pio_storage *s) {
    if (s) __atomic_add_fetch(&s->refcount, 1, __ATOMIC_RELAXED);
}

void pio_storage_release(pio_storage *s) {
    if (!s || __atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) > 0) return;
    switch (s->kind) {
    case PIO_STORAGE_HEAP:
        atomic_fetch_sub(&heap_bytes, (long long)s->size);
        free(s->base);
        break;
    case PIO_STORAGE_MMAP:
        if (s->base) munmap(s->base, s->base_len);
        break;
    case PIO_STORAGE_DEVICE:
        /* device storage is released by its backend before reaching here */
        break;
    }
    free(s);
}

/* ---- tensors ---------------------------------------------------------- */

static bool shape_valid(int ndim, const int64_t *shape, pio_error *err) {
    if (ndim < 0 || ndim > PIO_MAX_DIMS) {
        pio_error_set(err, PIO_ERR_INVALID, "tensors have 0 to %d dimensions, got %d",
                      PIO_MAX_DIMS, ndim);
        return false;
    }
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) {
            pio_error_set(err, PIO_ERR_INVALID, "dimension %d has negative size %lld", i,
                          (long long)shape[i]);
            return false;
        }
    return true;
}

static pio_tensor *header_new(pio_dtype dt, int ndim, const int64_t *shape, pio_error *err) {
    pio_tensor *t = calloc(1, sizeof *t);
    if (!t) {
        pio_error_set(err, PIO_ERR_OOM, "out of memory");
        return NULL;
    }
    t->dtype = dt;
    t->ndim = ndim;
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        t->shape[i] = shape[i];
        t->stride[i] = stride;
        stride *= shape[i] ? shape[i] : 1;
    }
    atomic_fetch_add(&live_tensors, 1);
    return t;
}

static int64_t numel_of(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

pio_tensor *pio_tensor_new(pio_dtype dt, int ndim, const int64_t *shape, pio_error *err) {
    if (!shape_valid(ndim, shape, err)) return NULL;
    int64_t n = numel_of(ndim, shape);
    if (n > (int64_t)(SIZE_MAX / 8)) {
        pio_error_set(err, PIO_ERR_OOM, "tensor of %lld elements is too large", (long long)n);
        return NULL;
    }
    pio_storage *s = pio_storage_new_heap((size_t)n * pio_dtype_info(dt)->size, err);
    if (!s) return NULL;
    pio_tensor *t = header_new(dt, ndim, shape, err);
    if (!t) {
        pio_storage_release(s);
        return NULL;
    }
    t->storage = s;
    return t;
}

pio_tensor *pio_tensor_from_storage(pio_storage *s, size_t offset, pio_dtype dt, int ndim,
                                    const int64_t *shape, pio_error *err) {
    if (!shape_valid(ndim, shape, err)) return NULL;
    size_t bytes = (size_t)numel_of(ndim, shape) * pio_dtype_info(dt)->size;
    if (offset > s->size || bytes > s->size - offset) {
        pio_error_set(err, PIO_ERR_FORMAT,
                      "tensor of %zu bytes at offset %zu does not fit in %zu bytes of storage",
                      bytes, offset, s->size);
        return NULL;
    }
    pio_tensor *t = header_new(dt, ndim, shape, err);
    if (!t) return NULL;
    pio_storage_retain(s);
    t->storage = s;
    t->offset = offset;
    return t;
}

void pio_tensor_free(pio_tensor *t) {
    if (!t) return;
    pio_storage_release(t->storage);
    atomic_fetch_sub(&live_tensors, 1);
    free(t);
}

int64_t pio_tensor_numel(const pio_tensor *t) { return numel_of(t->ndim, t->shape); }

size_t pio_tensor_nbytes(const pio_tensor *t) {
    return (size_t)pio_tensor_numel(t) * pio_dtype_info(t->dtype)->size;
}

bool pio_tensor_is_contiguous(const pio_tensor *t) {
    int64_t expect = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] != 1 && t->stride[i] != expect) return false;
        expect *= t->shape[i];
    }
    return true;
}

bool pio_tensor_same_shape(const pio_tensor *a, const pio_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

char *pio_shape_str(const pio_tensor *t, char *buf, size_t len) {
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < t->ndim && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", i ? ", " : "",
                                 (long long)t->shape[i]);
    if (used < len) snprintf(buf + used, len - used, "]");
    return buf;
}

static pio_tensor *share(const pio_tensor *t, pio_error *err) {
    pio_tensor *v = header_new(t->dtype, 0, NULL, err);
    if (!v) return NULL;
    *v = *t;
    pio_storage_retain(v->storage);
    return v;
}

pio_tensor *pio_tensor_view(const pio_tensor *t, int ndim, const int64_t *shape, pio_error *err) {
    char sbuf[96];
    if (ndim < 1 || ndim > PIO_MAX_DIMS) {
        pio_error_set(err, PIO_ERR_INVALID, "view: tensors have 1 to %d dimensions, got %d",
                      PIO_MAX_DIMS, ndim);
        return NULL;
    }
    if (!pio_tensor_is_contiguous(t)) {
        pio_error_set(err, PIO_ERR_INVALID,
                      "view: tensor %s is not contiguous (call contiguous() first)",
                      pio_shape_str(t, sbuf, sizeof sbuf));
        return NULL;
    }
    int64_t resolved[PIO_MAX_DIMS], known = 1;
    int infer = -1;
    for (int i = 0; i < ndim; i++) {
        resolved[i] = shape[i];
        if (shape[i] == -1) {
            if (infer >= 0) {
                pio_error_set(err, PIO_ERR_INVALID, "view: only one dimension can be -1");
                return NULL;
            }
            infer = i;
        } else if (shape[i] < 0) {
            pio_error_set(err, PIO_ERR_INVALID, "view: invalid size %lld", (long long)shape[i]);
            return NULL;
        } else {
            known *= shape[i];
        }
    }
    int64_t n = pio_tensor_numel(t);
    if (infer >= 0) resolved[infer] = known ? n / known : 0;
    if (numel_of(ndim, resolved) != n) {
        char want[96] = "[";
        size_t u = 1;
        for (int i = 0; i < ndim; i++)
            u += (size_t)snprintf(want + u, sizeof want - u, "%s%lld", i ? ", " : "",
                                  (long long)shape[i]);
        snprintf(want + u, sizeof want - u, "]");
        pio_error_set(err, PIO_ERR_INVALID, "view: shape %s is invalid for a tensor of shape %s",
                      want, pio_shape_str(t, sbuf, sizeof sbuf));
        return NULL;
    }
    pio_tensor *v = share(t, err);
    if (!v) return NULL;
    v->ndim = ndim;
    int64_t stride = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        v->shape[i] = resolved[i];
        v->stride[i] = stride;
        stride *= resolved[i] ? resolved[i] : 1;
    }
    return v;
}

pio_tensor *pio_tensor_transpose(const pio_tensor *t, int a, int b, pio_error *err) {
    if (a < 0 || a >= t->ndim || b < 0 || b >= t->ndim) {
        pio_error_set(err, PIO_ERR_INVALID, "transpose: dimensions %d and %d out of range for %d-d tensor",
                      a, b, t->ndim);
        return NULL;
    }
    pio_tensor *v = share(t, err);
    if (!v) return NULL;
    int64_t s = v->shape[a], st = v->stride[a];
    v->shape[a] = v->shape[b];
    v->stride[a] = v->stride[b];
    v->shape[b] = s;
    v->stride[b] = st;
    return v;
}

pio_tensor *pio_tensor_narrow(const pio_tensor *t, int dim, int64_t start, int64_t len,
                              pio_error *err) {
    if (dim < 0 || dim >= t->ndim || start < 0 || len < 0 || start + len > t->shape[dim]) {
        pio_error_set(err, PIO_ERR_RANGE, "narrow: [%lld, %lld) out of range for dimension %d",
                      (long long)start, (long long)(start + len), dim);
        return NULL;
    }
    pio_tensor *v = share(t, err);
    if (!v) return NULL;
    v->offset += (size_t)(start * t->stride[dim]) * pio_dtype_info(t->dtype)->size;
    v->shape[dim] = len;
    return v;
}

/* Offset in elements of the flat (row-major logical) index. */
static int64_t element_offset(const pio_tensor *t, int64_t flat) {
    int64_t off = 0;
    for (int i = t->ndim - 1; i >= 0; i--) {
        int64_t idx = flat % t->shape[i];
        flat /= t->shape[i];
        off += idx * t->stride[i];
    }
    return off;
}

float pio_tensor_get(const pio_tensor *t, int64_t flat) {
    int64_t off = element_offset(t, flat);
    const void *p = pio_tensor_data(t);
    switch (t->dtype) {
    case PIO_F32: return ((const float *)p)[off];
    case PIO_F16: return pio_f16_to_f32(((const uint16_t *)p)[off]);
    case PIO_BF16: return pio_bf16_to_f32(((const uint16_t *)p)[off]);
    default: return 0.0f;
    }
}

void pio_tensor_set(pio_tensor *t, int64_t flat, float v) {
    int64_t off = element_offset(t, flat);
    void *p = pio_tensor_data(t);
    switch (t->dtype) {
    case PIO_F32: ((float *)p)[off] = v; break;
    case PIO_F16: ((uint16_t *)p)[off] = pio_f32_to_f16(v); break;
    case PIO_BF16: ((uint16_t *)p)[off] = pio_f32_to_bf16(v); break;
    default: break;
    }
}

pio_status pio_tensor_copy(pio_tensor *dst, const pio_tensor *src, pio_error *err) {
    char a[96], b[96];
    if (!pio_tensor_same_shape(dst, src))
        return pio_error_set(err, PIO_ERR_INVALID, "copy: shape %s does not match %s",
                             pio_shape_str(src, a, sizeof a), pio_shape_str(dst, b, sizeof b));
    int64_t n = pio_tensor_numel(src);
    if (pio_tensor_is_contiguous(dst) && pio_tensor_is_contiguous(src)) {
        pio_convert(pio_tensor_data(dst), dst->dtype, pio_tensor_data(src), src->dtype, (size_t)n);
        return PIO_OK;
    }
    for (int64_t i = 0; i < n; i++) pio_tensor_set(dst, i, pio_tensor_get(src, i));
    return PIO_OK;
}

pio_tensor *pio_tensor_contiguous(const pio_tensor *t, pio_error *err) {
    return pio_tensor_to(t, t->dtype, err);
}

pio_tensor *pio_tensor_to(const pio_tensor *t, pio_dtype dt, pio_error *err) {
    pio_tensor *out = pio_tensor_new(dt, t->ndim, t->shape, err);
    if (!out) return NULL;
    if (pio_tensor_copy(out, t, err) != PIO_OK) {
        pio_tensor_free(out);
        return NULL;
    }
    return out;
}

/* ---- scalar conversions ---------------------------------------------- */

float pio_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    union { uint32_t u; float f; } v;
    if (exp == 0) {
        if (man == 0) {
            v.u = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            v.u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        v.u = sign | 0x7f800000u | (man << 13);
    } else {
        v.u = sign | ((exp + 112) << 23) | (man << 13);
    }
    return v.f;
}

uint16_t pio_f32_to_f16(float f) {
    union { float f; uint32_t u; } v = {.f = f};
    uint32_t sign = (v.u >> 16) & 0x8000, x = v.u & 0x7fffffffu;
    if (x > 0x7f800000u) return (uint16_t)(sign | 0x7e00); /* NaN */
    if (x >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* overflow to inf */
    if (x < 0x38800000u) { /* subnormal or zero: round to nearest even in 2^-24 units */
        if (x < 0x33000000u) return (uint16_t)sign;
        uint32_t e = x >> 23, man = (x & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e, half = 1u << (shift - 1), rest = man & ((1u << shift) - 1);
        uint32_t r = man >> shift;
        if (rest > half || (rest == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = x + 0xfffu + ((x >> 13) & 1u) - (112u << 23);
    return (uint16_t)(sign | (r >> 13));
}

void pio_convert(void *dst, pio_dtype dst_dt, const void *src, pio_dtype src_dt, size_t n) {
    if (dst_dt == src_dt) {
        memcpy(dst, src, n * pio_dtype_info(dst_dt)->size);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float v;
        switch (src_dt) {
        case PIO_F32: v = ((const float *)src)[i]; break;
        case PIO_F16: v = pio_f16_to_f32(((const uint16_t *)src)[i]); break;
        default: v = pio_bf16_to_f32(((const uint16_t *)src)[i]); break;
        }
        switch (dst_dt) {
        case PIO_F32: ((float *)dst)[i] = v; break;
        case PIO_F16: ((uint16_t *)dst)[i] = pio_f32_to_f16(v); break;
        default: ((uint16_t *)dst)[i] = pio_f32_to_bf16(v); break;
        }
    }
}
