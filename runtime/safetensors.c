/* Safetensors checkpoints: one file, a sharded set behind
 * model.safetensors.index.json, or a directory holding either.
 *
 * File layout: an 8-byte little-endian header length N, N bytes of JSON
 * ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...}),
 * then the data area that the offsets index. Every file is memory-mapped and
 * its whole header validated on open, so a bad checkpoint fails at load time
 * with a message naming file and tensor, not later inside a kernel. */
#define _GNU_SOURCE
#include "pio/safetensors.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "pio/json.h"

/* The reference implementation refuses larger headers; so do we, so that a
 * corrupt length cannot make cJSON chew through gigabytes. */
#define ST_MAX_HEADER 100000000ull

typedef struct st_dtype {
    const char *name;
    size_t size;
    bool supported;
    pio_dtype dtype;
} st_dtype;

/* Every dtype the safetensors format defines. Those pio has no kernels for are
 * still listed (so a checkpoint carrying, say, I64 position ids opens), and
 * refused only when someone asks for their data. */
static const st_dtype st_dtypes[] = {
    {"BOOL", 1, false, 0},    {"U8", 1, false, 0},      {"I8", 1, false, 0},
    {"U16", 2, false, 0},     {"I16", 2, false, 0},     {"U32", 4, false, 0},
    {"I32", 4, false, 0},     {"U64", 8, false, 0},     {"I64", 8, false, 0},
    {"F16", 2, true, PIO_F16}, {"BF16", 2, true, PIO_BF16}, {"F32", 4, true, PIO_F32},
    {"F64", 8, false, 0},     {"F8_E4M3", 1, false, 0}, {"F8_E5M2", 1, false, 0},
};

static const st_dtype *st_dtype_find(const char *name) {
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, name) == 0) return &st_dtypes[i];
    return NULL;
}

static const char *st_dtype_of(pio_dtype dt) {
    static const char *const names[] = {[PIO_F32] = "F32", [PIO_F16] = "F16", [PIO_BF16] = "BF16"};
    static_assert(sizeof names / sizeof names[0] == PIO_DTYPE_COUNT, "every dtype needs a name");
    return names[dt];
}

typedef struct st_file {
    char *path;         /* as opened, for messages */
    pio_storage *map;   /* the whole file, read-only */
    size_t data_start;  /* 8 + header length */
    size_t data_size;   /* bytes from data_start to the end of the file */
} st_file;

typedef struct st_entry {
    pio_st_info info;   /* first member: pio_safetensors_find hands out &entry->info */
    size_t begin;       /* bytes from the start of the mapped file */
} st_entry;

struct pio_safetensors {
    char *path;
    st_file *files;
    int n_files;
    st_entry *entries;
    size_t n, cap;
    /* Name lookup: open addressing with linear probing. A slot holds an entry
     * index + 1 (0 = empty); n_slots is a power of two, kept at least twice n. */
    uint32_t *slots;
    size_t n_slots;
};

/* ---- name index ------------------------------------------------------- */

static uint64_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    while (*s) {
        h ^= (unsigned char)*s++;
        h *= 1099511628211ull;
    }
    return h;
}

static const st_entry *lookup(const pio_safetensors *st, const char *name) {
    if (!st->n_slots) return NULL;
    size_t mask = st->n_slots - 1;
    for (size_t i = hash_name(name) & mask;; i = (i + 1) & mask) {
        uint32_t s = st->slots[i];
        if (!s) return NULL;
        if (strcmp(st->entries[s - 1].info.name, name) == 0) return &st->entries[s - 1];
    }
}

static void slot_put(uint32_t *slots, size_t n_slots, const char *name, uint32_t value) {
    size_t mask = n_slots - 1, i = hash_name(name) & mask;
    while (slots[i]) i = (i + 1) & mask;
    slots[i] = value;
}

/* Indexes entries[idx], the newest entry; entries before it are indexed already. */
static pio_status index_add(pio_safetensors *st, size_t idx, pio_error *err) {
    const char *name = st->entries[idx].info.name;
    const st_entry *dup = lookup(st, name);
    if (dup && dup->info.file == st->entries[idx].info.file)
        return pio_error_set(err, PIO_ERR_FORMAT, "'%s': duplicate tensor '%s'",
                             st->files[dup->info.file].path, name);
    if (dup)
        return pio_error_set(err, PIO_ERR_FORMAT, "duplicate tensor '%s' in '%s' and '%s'", name,
                             st->files[dup->info.file].path,
                             st->files[st->entries[idx].info.file].path);
    if ((idx + 1) * 2 > st->n_slots) {
        size_t n_slots = st->n_slots ? st->n_slots * 2 : 64;
        uint32_t *slots = calloc(n_slots, sizeof *slots);
        if (!slots) return pio_error_set(err, PIO_ERR_OOM, "out of memory indexing tensors");
        for (size_t i = 0; i < idx; i++)
            slot_put(slots, n_slots, st->entries[i].info.name, (uint32_t)(i + 1));
        free(st->slots);
        st->slots = slots;
        st->n_slots = n_slots;
    }
    slot_put(st->slots, st->n_slots, name, (uint32_t)(idx + 1));
    return PIO_OK;
}

/* ---- one file --------------------------------------------------------- */

/* A JSON number that is an exact integer in int64 range. */
static bool json_integer(const cJSON *v, int64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0)) return false;
    if ((double)(int64_t)d != d) return false;
    *out = (int64_t)d;
    return true;
}

/* Validates one header entry and appends it. */
static pio_status parse_entry(pio_safetensors *st, int fi, const cJSON *item, pio_error *err) {
    const st_file *f = &st->files[fi];
    const char *name = item->string;
    char where[768]; /* every message starts by naming file and tensor */
    snprintf(where, sizeof where, "'%s': tensor '%s'", f->path, name);

    if (!cJSON_IsObject(item))
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: entry must be an object", where);
    const cJSON *jdt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *jshape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *joffs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!jdt) return pio_error_set(err, PIO_ERR_FORMAT, "%s: missing 'dtype'", where);
    if (!jshape) return pio_error_set(err, PIO_ERR_FORMAT, "%s: missing 'shape'", where);
    if (!joffs) return pio_error_set(err, PIO_ERR_FORMAT, "%s: missing 'data_offsets'", where);

    if (!cJSON_IsString(jdt))
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: 'dtype' must be a string", where);
    const st_dtype *dt = st_dtype_find(jdt->valuestring);
    if (!dt)
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: unknown dtype '%s'", where,
                             jdt->valuestring);

    if (!cJSON_IsArray(jshape))
        return pio_error_set(err, PIO_ERR_FORMAT, "%s: 'shape' must be an array of integers",
                             where);
    int ndim = cJSON_GetArraySize(jshape);
    if (ndim > PIO_MAX_DIMS)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: shape has %d dimensions, at most %d supported", where, ndim,
                             PIO_MAX_DIMS);
    int64_t shape[PIO_MAX_DIMS] = {0};
    uint64_t numel = 1, want = 0;
    bool overflow = false;
    for (int d = 0; d < ndim; d++) {
        if (!json_integer(cJSON_GetArrayItem(jshape, d), &shape[d]))
            return pio_error_set(err, PIO_ERR_FORMAT, "%s: 'shape' must be an array of integers",
                                 where);
        if (shape[d] < 0)
            return pio_error_set(err, PIO_ERR_FORMAT, "%s: dimension %d is negative (%lld)",
                                 where, d, (long long)shape[d]);
        overflow |= __builtin_mul_overflow(numel, (uint64_t)shape[d], &numel);
    }
    overflow |= __builtin_mul_overflow(numel, (uint64_t)dt->size, &want);

    int64_t b = 0, e = 0;
    if (!cJSON_IsArray(joffs) || cJSON_GetArraySize(joffs) != 2 ||
        !json_integer(cJSON_GetArrayItem(joffs, 0), &b) ||
        !json_integer(cJSON_GetArrayItem(joffs, 1), &e) || b < 0 || e < b)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: 'data_offsets' must be [begin, end] with 0 <= begin <= end",
                             where);
    uint64_t have = (uint64_t)e - (uint64_t)b;
    if (overflow || have != want) {
        char dims[128];
        size_t used = (size_t)snprintf(dims, sizeof dims, "[");
        for (int d = 0; d < ndim && used < sizeof dims; d++)
            used += (size_t)snprintf(dims + used, sizeof dims - used, "%s%lld", d ? ", " : "",
                                     (long long)shape[d]);
        if (used < sizeof dims) snprintf(dims + used, sizeof dims - used, "]");
        if (overflow)
            return pio_error_set(err, PIO_ERR_FORMAT, "%s: shape %s of %s overflows a byte size",
                                 where, dims, dt->name);
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: byte size %llu (end - begin) differs from shape %s x %s "
                             "(%zu bytes) = %llu",
                             where, (unsigned long long)have, dims, dt->name, dt->size,
                             (unsigned long long)want);
    }
    if ((uint64_t)e > f->data_size)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "%s: data_offsets [%lld, %lld] lie beyond the data area of %zu "
                             "bytes (file truncated?)",
                             where, (long long)b, (long long)e, f->data_size);

    if (st->n == st->cap) {
        size_t cap = st->cap ? st->cap * 2 : 256;
        st_entry *entries = realloc(st->entries, cap * sizeof *entries);
        if (!entries)
            return pio_error_set(err, PIO_ERR_OOM, "out of memory reading '%s'", f->path);
        st->entries = entries;
        st->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy) return pio_error_set(err, PIO_ERR_OOM, "out of memory reading '%s'", f->path);
    st_entry *en = &st->entries[st->n++];
    *en = (st_entry){
        .info = {.name = copy, .st_dtype = dt->name, .supported = dt->supported,
                 .dtype = dt->dtype, .ndim = ndim, .nbytes = (size_t)have, .file = fi},
        .begin = f->data_start + (size_t)b,
    };
    memcpy(en->info.shape, shape, sizeof shape);
    return index_add(st, st->n - 1, err);
}

typedef struct st_range {
    size_t begin, end, idx;
} st_range;

static int range_cmp(const void *a, const void *b) {
    const st_range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Two tensors sharing bytes would alias each other silently. Entries
 * [first, st->n) belong to one file; empty tensors share no bytes. */
static pio_status check_overlaps(pio_safetensors *st, size_t first, pio_error *err) {
    st_range *r = malloc((st->n - first + 1) * sizeof *r);
    if (!r) return pio_error_set(err, PIO_ERR_OOM, "out of memory checking tensor offsets");
    size_t n = 0;
    for (size_t i = first; i < st->n; i++)
        if (st->entries[i].info.nbytes)
            r[n++] = (st_range){st->entries[i].begin,
                                st->entries[i].begin + st->entries[i].info.nbytes, i};
    qsort(r, n, sizeof *r, range_cmp);
    pio_status status = PIO_OK;
    size_t reach = 0; /* index in r of the range reaching furthest so far */
    for (size_t i = 1; i < n; i++) {
        if (r[i].begin < r[reach].end) {
            const st_entry *a = &st->entries[r[reach].idx], *b = &st->entries[r[i].idx];
            size_t base = st->files[a->info.file].data_start;
            status = pio_error_set(err, PIO_ERR_FORMAT,
                                   "'%s': tensors '%s' [%zu, %zu) and '%s' [%zu, %zu) overlap",
                                   st->files[a->info.file].path, a->info.name,
                                   r[reach].begin - base, r[reach].end - base, b->info.name,
                                   r[i].begin - base, r[i].end - base);
            break;
        }
        if (r[i].end > r[reach].end) reach = i;
    }
    free(r);
    return status;
}

/* Maps `path`, validates its header and adds its tensors. */
static pio_status open_file(pio_safetensors *st, const char *path, pio_error *err) {
    st_file *files = realloc(st->files, (size_t)(st->n_files + 1) * sizeof *files);
    if (!files) return pio_error_set(err, PIO_ERR_OOM, "out of memory opening '%s'", path);
    st->files = files;
    int fi = st->n_files;
    st_file *f = &st->files[fi];
    *f = (st_file){.path = strdup(path)};
    if (!f->path) return pio_error_set(err, PIO_ERR_OOM, "out of memory opening '%s'", path);
    st->n_files++; /* from here on pio_safetensors_close cleans the file up */
    f->map = pio_storage_map_file(path, err);
    if (!f->map) return err->status;

    size_t size = f->map->size;
    const unsigned char *bytes = f->map->data;
    if (size < 8)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "'%s': file is %zu bytes, shorter than the 8-byte header length",
                             path, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | bytes[i];
    if (hlen > size - 8)
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "'%s': header length %llu runs past the end of the file "
                             "(%zu bytes after the length field)",
                             path, (unsigned long long)hlen, size - 8);
    if (hlen > ST_MAX_HEADER)
        return pio_error_set(err, PIO_ERR_FORMAT, "'%s': header length %llu exceeds the limit of %llu",
                             path, (unsigned long long)hlen, ST_MAX_HEADER);
    f->data_start = 8 + (size_t)hlen;
    f->data_size = size - f->data_start;

    /* cJSON reads at most hlen bytes, so the unterminated mapped header is fine. */
    const char *hdr = (const char *)bytes + 8, *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, false);
    if (root) /* the reference writer pads the header with spaces */
        while (end < hdr + hlen && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
            end++;
    if (!root || end != hdr + hlen) {
        cJSON_Delete(root);
        return pio_error_set(err, PIO_ERR_FORMAT,
                             "'%s': header is not valid JSON (error at byte %zu of %llu)", path,
                             end ? (size_t)(end - hdr) : (size_t)0, (unsigned long long)hlen);
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return pio_error_set(err, PIO_ERR_FORMAT, "'%s': header is not a JSON object", path);
    }
    size_t first = st->n;
    pio_status status = PIO_OK;
    for (const cJSON *item = root->child; item && !status; item = item->next)
        if (strcmp(item->string, "__metadata__") != 0) status = parse_entry(st, fi, item, err);
    cJSON_Delete(root);
    return status ? status : check_overlaps(st, first, err);
}

/* ---- sharded checkpoints and directories ------------------------------ */

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static bool is_regular_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Opens the shards a model.safetensors.index.json names, each once, and
 * checks that each tensor of its weight_map is where the map says. */
static pio_status open_index(pio_safetensors *st, const char *index_path, pio_error *err) {
    cJSON *root = pio_json_read_file(index_path, err);
    if (!root) return err->status;
    pio_status status = PIO_OK;
    const char **shards = NULL; /* distinct file names, borrowed from root */
    int n_shards = 0, first_file = st->n_files;
    char *dir = strdup(index_path);
    if (!dir) {
        status = pio_error_set(err, PIO_ERR_OOM, "out of memory");
        goto out;
    }
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    else strcpy(dir, ".");

    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        status = pio_error_set(err, PIO_ERR_FORMAT, "'%s': %s", index_path,
                               map ? "'weight_map' must be an object" : "missing 'weight_map'");
        goto out;
    }
    int n_map = cJSON_GetArraySize(map);
    shards = malloc((size_t)(n_map ? n_map : 1) * sizeof *shards);
    if (!shards) {
        status = pio_error_set(err, PIO_ERR_OOM, "out of memory");
        goto out;
    }
    /* Shards interleave in a weight_map sorted by tensor name, but there are
     * few of them: a linear search is plenty. */
    for (const cJSON *item = map->child; item; item = item->next) {
        if (!cJSON_IsString(item)) {
            status = pio_error_set(err, PIO_ERR_FORMAT,
                                   "'%s': weight_map entry '%s' must be a file name", index_path,
                                   item->string);
            goto out;
        }
        int k = 0;
        while (k < n_shards && strcmp(shards[k], item->valuestring) != 0) k++;
        if (k == n_shards) shards[n_shards++] = item->valuestring;
    }
    for (int k = 0; k < n_shards && !status; k++) {
        char *path = join_path(dir, shards[k]);
        if (!path) {
            status = pio_error_set(err, PIO_ERR_OOM, "out of memory");
            break;
        }
        status = open_file(st, path, err);
        if (status == PIO_ERR_IO) pio_error_prefix(err, "shard listed in '%s'", index_path);
        free(path);
    }
    for (const cJSON *item = map->child; item && !status; item = item->next) {
        int k = 0;
        while (strcmp(shards[k], item->valuestring) != 0) k++;
        const st_entry *en = lookup(st, item->string);
        const char *want = st->files[first_file + k].path;
        if (!en)
            status = pio_error_set(err, PIO_ERR_FORMAT,
                                   "'%s': tensor '%s' is missing from its shard '%s'", index_path,
                                   item->string, want);
        else if (en->info.file != first_file + k)
            status = pio_error_set(err, PIO_ERR_FORMAT,
                                   "'%s': tensor '%s' is listed in '%s' but found in '%s'",
                                   index_path, item->string, want,
                                   st->files[en->info.file].path);
    }
out:
    free(shards);
    free(dir);
    cJSON_Delete(root);
    return status;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A directory: the index if there is one, else model.safetensors, else every
 * *.safetensors file in byte-wise name order (so shard order never depends
 * on the locale or on readdir). */
static pio_status open_dir(pio_safetensors *st, const char *dir, pio_error *err) {
    static const char *const preferred[] = {"model.safetensors.index.json", "model.safetensors"};
    for (int i = 0; i < 2; i++) {
        char *p = join_path(dir, preferred[i]);
        if (!p) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
        pio_status status = PIO_OK;
        bool found = is_regular_file(p);
        if (found) status = i == 0 ? open_index(st, p, err) : open_file(st, p, err);
        free(p);
        if (found) return status;
    }

    DIR *d = opendir(dir);
    if (!d) return pio_error_set(err, PIO_ERR_IO, "cannot open '%s': %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    pio_status status = PIO_OK;
    for (struct dirent *de; (de = readdir(d));) {
        size_t len = strlen(de->d_name);
        static const char ext[] = ".safetensors";
        if (len <= sizeof ext - 1 || strcmp(de->d_name + len - (sizeof ext - 1), ext) != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn) {
                status = pio_error_set(err, PIO_ERR_OOM, "out of memory");
                break;
            }
            names = nn;
        }
        if (!(names[n] = strdup(de->d_name))) {
            status = pio_error_set(err, PIO_ERR_OOM, "out of memory");
            break;
        }
        n++;
    }
    closedir(d);
    if (!status && n == 0)
        status = pio_error_set(err, PIO_ERR_IO, "no .safetensors files in '%s'", dir);
    if (!status) qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n && !status; i++) {
        char *p = join_path(dir, names[i]);
        status = p ? open_file(st, p, err) : pio_error_set(err, PIO_ERR_OOM, "out of memory");
        free(p);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return status;
}

/* ---- public API ------------------------------------------------------- */

pio_safetensors *pio_safetensors_open(const char *path, pio_error *err) {
    pio_error local;
    if (!err) err = &local; /* the helpers read err->status back */
    pio_error_clear(err);
    pio_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        pio_error_set(err, PIO_ERR_OOM, "out of memory");
        return NULL;
    }
    struct stat sb;
    pio_status status;
    size_t len = strlen(path);
    if (stat(path, &sb) != 0)
        status = pio_error_set(err, PIO_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    else if (S_ISDIR(sb.st_mode))
        status = open_dir(st, path, err);
    else if (len >= 5 && strcmp(path + len - 5, ".json") == 0)
        status = open_index(st, path, err);
    else
        status = open_file(st, path, err);
    if (status) {
        pio_safetensors_close(st);
        return NULL;
    }
    return st;
}

void pio_safetensors_close(pio_safetensors *st) {
    if (!st) return;
    for (size_t i = 0; i < st->n; i++) free((char *)st->entries[i].info.name);
    for (int i = 0; i < st->n_files; i++) {
        pio_storage_release(st->files[i].map); /* tensors from get keep their own reference */
        free(st->files[i].path);
    }
    free(st->entries);
    free(st->files);
    free(st->slots);
    free(st->path);
    free(st);
}

size_t pio_safetensors_count(const pio_safetensors *st) { return st->n; }

const pio_st_info *pio_safetensors_at(const pio_safetensors *st, size_t i) {
    return i < st->n ? &st->entries[i].info : NULL;
}

const pio_st_info *pio_safetensors_find(const pio_safetensors *st, const char *name) {
    const st_entry *en = lookup(st, name);
    return en ? &en->info : NULL;
}

pio_tensor *pio_safetensors_get(const pio_safetensors *st, const char *name, pio_error *err) {
    const st_entry *en = lookup(st, name);
    if (!en) {
        pio_error_set(err, PIO_ERR_NOT_FOUND, "tensor '%s' not found in '%s'", name, st->path);
        return NULL;
    }
    if (!en->info.supported) {
        pio_error_set(err, PIO_ERR_UNSUPPORTED,
                      "tensor '%s' has dtype %s, which pio cannot load (it loads F32, F16, BF16)",
                      name, en->info.st_dtype);
        return NULL;
    }
    return pio_tensor_from_storage(st->files[en->info.file].map, en->begin, en->info.dtype,
                                   en->info.ndim, en->info.shape, err);
}

/* ---- writing ---------------------------------------------------------- */

typedef struct strbuf {
    char *p;
    size_t len, cap;
    bool oom;
} strbuf;

static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(strbuf *b, const char *fmt, ...) {
    for (int tries = 0; tries < 2 && !b->oom; tries++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (b->p && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap : 1024;
        while (cap - b->len <= (size_t)n) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) b->oom = true;
        else b->p = p, b->cap = cap;
    }
}

static void sb_json_string(strbuf *b, const char *s) {
    sb_printf(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') sb_printf(b, "\\%c", c);
        else if (c < 0x20) sb_printf(b, "\\u%04x", c);
        else sb_printf(b, "%c", c);
    }
    sb_printf(b, "\"");
}

typedef struct write_item {
    const char *name;
    const pio_tensor *t;
    size_t elsize;
} write_item;

static int write_item_by_name(const void *a, const void *b) {
    return strcmp(((const write_item *)a)->name, ((const write_item *)b)->name);
}

/* The reference writer's order: larger elements first (so every tensor is
 * aligned to its element size after the 8-aligned header), then by name. */
static int write_item_by_layout(const void *a, const void *b) {
    const write_item *x = a, *y = b;
    if (x->elsize != y->elsize) return x->elsize > y->elsize ? -1 : 1;
    return strcmp(x->name, y->name);
}

pio_status pio_safetensors_write(const char *path, size_t n, const char *const *names,
                                 const pio_tensor *const *tensors, pio_error *err) {
    write_item *items = calloc(n ? n : 1, sizeof *items);
    if (!items) return pio_error_set(err, PIO_ERR_OOM, "out of memory");
    pio_status status = PIO_OK;
    for (size_t i = 0; i < n && !status; i++) {
        const pio_tensor *t = tensors[i];
        if (!names[i] || !t)
            status = pio_error_set(err, PIO_ERR_INVALID, "writing '%s': entry %zu has no %s", path,
                                   i, names[i] ? "tensor" : "name");
        else if (strcmp(names[i], "__metadata__") == 0)
            status = pio_error_set(err, PIO_ERR_INVALID,
                                   "writing '%s': '__metadata__' is reserved", path);
        else if (t->storage->device != PIO_DEVICE_CPU || !pio_tensor_is_contiguous(t))
            status = pio_error_set(err, PIO_ERR_INVALID,
                                   "writing '%s': tensor '%s' must be contiguous and on the cpu",
                                   path, names[i]);
        items[i] = (write_item){names[i], t, t ? pio_dtype_info(t->dtype)->size : 0};
    }
    if (!status) {
        qsort(items, n, sizeof *items, write_item_by_name);
        for (size_t i = 1; i < n && !status; i++)
            if (strcmp(items[i - 1].name, items[i].name) == 0)
                status = pio_error_set(err, PIO_ERR_INVALID, "writing '%s': duplicate name '%s'",
                                       path, items[i].name);
        qsort(items, n, sizeof *items, write_item_by_layout);
    }

    strbuf h = {0};
    FILE *f = NULL;
    if (!status) {
        sb_printf(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
        size_t offset = 0;
        for (size_t i = 0; i < n; i++) {
            const pio_tensor *t = items[i].t;
            sb_printf(&h, ",");
            sb_json_string(&h, items[i].name);
            sb_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_of(t->dtype));
            for (int d = 0; d < t->ndim; d++)
                sb_printf(&h, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            size_t nb = pio_tensor_nbytes(t);
            sb_printf(&h, "],\"data_offsets\":[%zu,%zu]}", offset, offset + nb);
            offset += nb;
        }
        sb_printf(&h, "}");
        while (h.len % 8) sb_printf(&h, " "); /* keeps the data area 8-byte aligned */
        if (h.oom) status = pio_error_set(err, PIO_ERR_OOM, "out of memory writing '%s'", path);
    }
    if (!status && !(f = fopen(path, "wb")))
        status = pio_error_set(err, PIO_ERR_IO, "cannot create '%s': %s", path, strerror(errno));
    if (!status) {
        unsigned char len8[8];
        for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
        bool ok = fwrite(len8, 1, 8, f) == 8 && fwrite(h.p, 1, h.len, f) == h.len;
        for (size_t i = 0; i < n && ok; i++) {
            size_t nb = pio_tensor_nbytes(items[i].t);
            if (nb) ok = fwrite(pio_tensor_data(items[i].t), 1, nb, f) == nb; /* empty: no data */
        }
        int saved = errno;
        if (fclose(f) != 0 && ok) ok = false, saved = errno;
        if (!ok) {
            remove(path); /* never leave a half-written checkpoint behind */
            status = pio_error_set(err, PIO_ERR_IO, "cannot write '%s': %s", path,
                                   strerror(saved));
        }
    }
    free(h.p);
    free(items);
    return status;
}
