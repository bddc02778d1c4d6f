/* pio.Model and pio.Generation: loading, logits, and the generation loop
 * driven from Lua one piece of text at a time (init.lua builds generate and
 * stream on top). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lpio.h"
#include "pio/bench.h"
#include "pio/generate.h"
#include "pio/model.h"

#define MODEL_MT "pio.Model"
#define GENERATION_MT "pio.Generation"

typedef struct { pio_model *m; } model_box;
typedef struct { pio_generation *g; } generation_box;

static pio_model *check_model(lua_State *L, int arg) {
    model_box *box = luaL_checkudata(L, arg, MODEL_MT);
    if (!box->m) luaL_argerror(L, arg, "model has been freed");
    return box->m;
}

/* Every key of an options table must be one we know: a typo is an error, not a silent default. */
static void check_keys(lua_State *L, int opts, const char *what, const char *const *known) {
    if (lua_isnoneornil(L, opts)) return;
    luaL_checktype(L, opts, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, opts)) {
        lua_pop(L, 1);
        const char *key = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        bool ok = false;
        for (int i = 0; key && known[i]; i++) ok = ok || strcmp(key, known[i]) == 0;
        if (!ok) {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (int i = 0; known[i]; i++) {
                if (i) luaL_addstring(&b, ", ");
                luaL_addstring(&b, known[i]);
            }
            luaL_pushresult(&b);
            luaL_error(L, "%s: unknown option '%s' (known: %s)", what,
                       key ? key : luaL_typename(L, -2), lua_tostring(L, -1));
        }
    }
}

static lua_Integer opt_int(lua_State *L, int opts, const char *key, lua_Integer fallback) {
    if (lua_isnoneornil(L, opts)) return fallback;
    lua_getfield(L, opts, key);
    lua_Integer v = fallback;
    if (!lua_isnil(L, -1)) {
        int isnum;
        v = lua_tointegerx(L, -1, &isnum);
        if (!isnum) luaL_error(L, "option '%s' must be an integer, got %s", key, luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    return v;
}

static lua_Number opt_num(lua_State *L, int opts, const char *key, lua_Number fallback) {
    if (lua_isnoneornil(L, opts)) return fallback;
    lua_getfield(L, opts, key);
    lua_Number v = fallback;
    if (!lua_isnil(L, -1)) {
        int isnum;
        v = lua_tonumberx(L, -1, &isnum);
        if (!isnum) luaL_error(L, "option '%s' must be a number, got %s", key, luaL_typename(L, -1));
    }
    lua_pop(L, 1);
    return v;
}

static bool opt_bool(lua_State *L, int opts, const char *key, bool fallback) {
    if (lua_isnoneornil(L, opts)) return fallback;
    lua_getfield(L, opts, key);
    bool v = lua_isnil(L, -1) ? fallback : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

static const char *opt_str(lua_State *L, int opts, const char *key, const char *fallback) {
    if (lua_isnoneornil(L, opts)) return fallback;
    lua_getfield(L, opts, key);
    const char *v = lua_isnil(L, -1) ? fallback : luaL_checkstring(L, -1);
    lua_pop(L, 1); /* the string stays alive: it is referenced by the options table */
    return v;
}

/* ---- loading --------------------------------------------------------------- */

static void progress_to_stderr(void *ud, const char *stage, size_t done, size_t total) {
    if (total == 0) return;
    if (done == total || done % 8 == 0)
        fprintf(stderr, "\r%s %zu/%zu (%d%%)%s", stage, done, total, (int)(100 * done / total),
                done == total ? "\n" : "");
    fflush(stderr);
}

/* "cpu", "cuda" or "auto" (the device models run on). */
static pio_device check_device(lua_State *L, const char *name, const char *what) {
    if (strcmp(name, "cpu") == 0) return PIO_DEVICE_CPU;
    if (strcmp(name, "cuda") == 0) return PIO_DEVICE_CUDA;
    if (strcmp(name, "auto") == 0) return pio_model_auto_device();
    luaL_error(L, "%s: device must be 'cpu', 'cuda' or 'auto', got '%s'", what, name);
    return PIO_DEVICE_CPU;
}

/* pio.model_device(name) → the device name models load on for it ("auto" resolved), and
 * whether they can: true, or false and why. */
static int l_model_device(lua_State *L) {
    pio_device d = check_device(L, luaL_optstring(L, 1, "auto"), "pio.model_device");
    const char *why = NULL;
    bool ok = pio_model_device_available(d, &why);
    lua_pushstring(L, pio_device_name(d));
    lua_pushboolean(L, ok);
    if (ok) return 2;
    lua_pushstring(L, why);
    return 3;
}

/* One of `names` (NULL-terminated) at key of table t (absent: fallback), as its index. */
static int kv_choice(lua_State *L, int t, const char *what, const char *key,
                     const char *const *names, int fallback) {
    lua_getfield(L, t, key);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return fallback;
    }
    const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    for (int i = 0; v && names[i]; i++)
        if (strcmp(v, names[i]) == 0) {
            lua_pop(L, 1);
            return i;
        }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 0; names[i]; i++) {
        if (i) luaL_addstring(&b, ", ");
        luaL_addstring(&b, names[i]);
    }
    luaL_pushresult(&b);
    if (v) luaL_error(L, "%s: unknown %s '%s' (known: %s)", what, key, v, lua_tostring(L, -1));
    luaL_error(L, "%s: %s must be a string (known: %s), got %s", what, key, lua_tostring(L, -1),
               luaL_typename(L, -2));
    return -1;
}

/* An integer field >= lo (absent: 0). */
static lua_Integer kv_int(lua_State *L, int t, const char *what, const char *key, lua_Integer lo,
                          lua_Integer hi) {
    lua_getfield(L, t, key);
    lua_Integer v = 0;
    if (!lua_isnil(L, -1)) {
        int ok;
        v = lua_tointegerx(L, -1, &ok);
        if (!ok || lua_type(L, -1) != LUA_TNUMBER || v < lo || v > hi)
            luaL_error(L, "%s: %s must be an integer in [%I, %I], got %s", what, key,
                       (LUAI_UACINT)lo, (LUAI_UACINT)hi, luaL_tolstring(L, -1, NULL));
    }
    lua_pop(L, 1);
    return v;
}

/* The KV cache's configuration from a Lua table (pio.load's kv option,
 * model:kv_configure): {layout=, block=, blocks=, bytes=, format=, prefix=,
 * attention=, window=, sink=}; unknown keys and values raise naming them. */
static void read_kv_config(lua_State *L, int t, const char *what, pio_kv_config *c) {
    static const char *const known[] = {"layout", "block", "blocks", "bytes", "format", "prefix",
                                        "attention", "window", "sink", NULL};
    static const char *const layouts[] = {"contiguous", "paged", NULL};
    static const char *const formats[] = {"model", "int8", "f32", "bf16", NULL};
    static const char *const attns[] = {"full", "sliding", "sink", NULL};
    t = lua_absindex(L, t);
    if (!lua_istable(L, t)) luaL_error(L, "%s: kv options must be a table, got %s", what, luaL_typename(L, t));
    check_keys(L, t, what, known);
    *c = (pio_kv_config){0};
    c->layout = (pio_kv_layout)kv_choice(L, t, what, "layout", layouts, 0);
    c->format = (pio_kv_format)kv_choice(L, t, what, "format", formats, 0);
    c->attention = (pio_kv_attention)kv_choice(L, t, what, "attention", attns, 0);
    c->block_size = (int32_t)kv_int(L, t, what, "block", 1, 1 << 20);
    c->n_blocks = (int32_t)kv_int(L, t, what, "blocks", 1, INT32_MAX);
    c->max_bytes = (size_t)kv_int(L, t, what, "bytes", 1, LUA_MAXINTEGER);
    c->window = (int32_t)kv_int(L, t, what, "window", 1, INT32_MAX);
    c->sink = (int32_t)kv_int(L, t, what, "sink", 0, INT32_MAX);
    lua_getfield(L, t, "prefix");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
        luaL_error(L, "%s: prefix must be a boolean, got %s", what, luaL_typename(L, -1));
    c->prefix_cache = lua_toboolean(L, -1);
    lua_pop(L, 1);
    bool paged = c->layout == PIO_KV_PAGED;
    if (!paged && (c->block_size || c->n_blocks || c->max_bytes || c->prefix_cache))
        luaL_error(L, "%s: block, blocks, bytes and prefix need layout = 'paged'", what);
    if (c->n_blocks && c->max_bytes) luaL_error(L, "%s: give blocks or bytes, not both", what);
    if (c->attention == PIO_ATTN_FULL && (c->window || c->sink))
        luaL_error(L, "%s: window and sink need attention = 'sliding' or 'sink'", what);
    if (c->attention != PIO_ATTN_FULL && !c->window)
        luaL_error(L, "%s: attention '%s' needs a window", what, attns[c->attention]);
    if (c->attention == PIO_ATTN_SLIDING && c->sink)
        luaL_error(L, "%s: sink needs attention = 'sink'", what);
}

/* The options of pio.load and pio.estimate. `what` names the caller in messages. */
static void read_load_opts(lua_State *L, int arg, const char *what, pio_load_opts *opts) {
    static const char *const known[] = {"dtype", "device", "threads", "ctx", "max_seqs",
                                        "synthetic", "seed", "progress", "max_bytes", "kv", NULL};
    check_keys(L, arg, what, known);
    *opts = pio_load_opts_default();
    const char *dtype = opt_str(L, arg, "dtype", "bf16");
    if (!pio_dtype_from_name(dtype, &opts->dtype) || opts->dtype == PIO_F16)
        luaL_error(L, "%s: dtype must be 'f32' or 'bf16', got '%s'", what, dtype);
    /* No device named: PIO_DEVICE if set (scripts/test.sh pins "cpu" so that the CPU
     * suite means the same on a machine with a GPU), else "auto". */
    const char *env_device = getenv("PIO_DEVICE");
    const char *def_device = env_device && env_device[0] ? env_device : "auto";
    opts->device = check_device(L, opt_str(L, arg, "device", def_device), what);
    opts->threads = (int)opt_int(L, arg, "threads", 0);
    opts->ctx = (int32_t)opt_int(L, arg, "ctx", 0);
    opts->max_seqs = (int32_t)opt_int(L, arg, "max_seqs", 0);
    opts->synthetic = opt_bool(L, arg, "synthetic", false);
    opts->seed = (uint64_t)opt_int(L, arg, "seed", 0);
    lua_Integer max_bytes = opt_int(L, arg, "max_bytes", 0);
    if (opts->threads < 0 || opts->ctx < 0 || opts->max_seqs < 0)
        luaL_error(L, "%s: threads, ctx and max_seqs must be >= 0", what);
    if (max_bytes < 0) luaL_error(L, "%s: max_bytes must be >= 0 (0: no limit)", what);
    opts->max_bytes = (size_t)max_bytes;
    if (opt_bool(L, arg, "progress", isatty(STDERR_FILENO))) opts->progress = progress_to_stderr;
    if (!lua_isnoneornil(L, arg)) {
        lua_getfield(L, arg, "kv");
        if (!lua_isnil(L, -1)) {
            char kv_what[64];
            snprintf(kv_what, sizeof kv_what, "%s: kv", what);
            read_kv_config(L, -1, kv_what, &opts->kv);
        }
        lua_pop(L, 1);
    }
}

/* pio.load(path, {dtype=, device=, threads=, ctx=, max_seqs=, synthetic=, seed=, progress=,
 * max_bytes=}) */
static int l_load(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    pio_load_opts opts;
    read_load_opts(L, 2, "pio.load", &opts);
    model_box *box = lua_newuserdatauv(L, sizeof *box, 1);
    box->m = NULL;
    luaL_setmetatable(L, MODEL_MT);
    pio_error err;
    box->m = pio_model_load(path, &opts, &err);
    if (!box->m) { /* every load failure is about the files or the machine: nil, message */
        lua_pushnil(L);
        lua_pushstring(L, err.msg);
        return 2;
    }
    return 1;
}

/* pio.estimate(path, opts) → {weights=, kv=, activations=, total=, parameters=, ...}, the
 * bytes pio.load(path, opts) would take, from config.json alone; or nil, message. */
static int l_estimate(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    pio_load_opts opts;
    read_load_opts(L, 2, "pio.estimate", &opts);
    pio_model_footprint fp;
    pio_error err;
    if (pio_model_estimate(path, &opts, &fp, &err)) {
        lua_pushnil(L);
        lua_pushstring(L, err.msg);
        return 2;
    }
    lua_createtable(L, 0, 16);
#define SET_STR(k, v) (lua_pushstring(L, v), lua_setfield(L, -2, k))
#define SET_INT(k, v) (lua_pushinteger(L, (lua_Integer)(v)), lua_setfield(L, -2, k))
    SET_STR("architecture", fp.architecture);
    SET_STR("family", fp.family);
    SET_STR("dtype", pio_dtype_info(fp.dtype)->name);
    SET_INT("parameters", fp.n_params);
    SET_INT("weights", fp.weight_bytes);
    SET_INT("kv", fp.kv_bytes);
    SET_INT("activations", fp.activation_bytes);
    SET_INT("total", fp.total_bytes);
    SET_INT("n_vocab", fp.n_vocab);
    SET_INT("n_ctx", fp.n_ctx);
    SET_INT("n_ctx_train", fp.n_ctx_train);
    SET_INT("n_layer", fp.n_layer);
    SET_INT("n_embd", fp.n_embd);
    SET_INT("n_head", fp.n_head);
    SET_INT("n_head_kv", fp.n_head_kv);
    SET_INT("head_dim", fp.head_dim);
    SET_INT("max_seqs", fp.max_seqs);
#undef SET_STR
#undef SET_INT
    return 1;
}

/* ---- surgery ----------------------------------------------------------------- */

/* model:surgery{fuse_qkv=, fuse_gate_up=, remove_layers={...}} → report table.
 * The primitive under pio.surgery.apply; layer numbers are the checkpoint's (0-based). */
static int m_surgery(lua_State *L) {
    static const char *const known[] = {"fuse_qkv", "fuse_gate_up", "remove_layers", NULL};
    pio_model *m = check_model(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    check_keys(L, 2, "surgery", known);
    pio_surgery s = {.fuse_qkv = opt_bool(L, 2, "fuse_qkv", false),
                     .fuse_gate_up = opt_bool(L, 2, "fuse_gate_up", false)};
    lua_getfield(L, 2, "remove_layers");
    if (!lua_isnil(L, -1)) {
        size_t n;
        s.remove_layers = pio_lua_check_ids(L, lua_gettop(L), &n);
        s.n_remove = n;
    }
    pio_surgery_report r;
    pio_error err;
    if (pio_model_surgery(m, &s, &r, &err)) return pio_lua_fail(L, &err);
    lua_createtable(L, 0, 12);
#define SET_INT(k, v) (lua_pushinteger(L, (lua_Integer)(v)), lua_setfield(L, -2, k))
    SET_INT("fused_qkv", r.fused_qkv);
    SET_INT("fused_gate_up", r.fused_gate_up);
    SET_INT("removed_layers", r.removed_layers);
    SET_INT("n_layer_before", r.n_layer_before);
    SET_INT("n_layer_after", r.n_layer_after);
    SET_INT("params_before", r.params_before);
    SET_INT("params_after", r.params_after);
    SET_INT("weight_bytes_before", r.weight_bytes_before);
    SET_INT("weight_bytes_after", r.weight_bytes_after);
    SET_INT("kv_bytes_before", r.kv_bytes_before);
    SET_INT("kv_bytes_after", r.kv_bytes_after);
    SET_INT("copied_bytes", r.copied_bytes);
#undef SET_INT
    return 1;
}

/* ---- logits ---------------------------------------------------------------- */

/* model:logits(ids) → Tensor [#ids, vocab] for a fresh sequence (slot 0). */
static int m_logits(lua_State *L) {
    pio_model *m = check_model(L, 1);
    size_t n;
    int32_t *ids = pio_lua_check_ids(L, 2, &n);
    if (n == 0) return luaL_error(L, "logits: the list of ids is empty");
    pio_model_info info;
    pio_model_get_info(m, &info);
    if (n > (size_t)info.n_ctx)
        return luaL_error(L, "logits: %d tokens do not fit the context of %d", (int)n, info.n_ctx);
    int32_t *pos = lua_newuserdatauv(L, n * sizeof *pos, 0);
    int32_t *seq = lua_newuserdatauv(L, n * sizeof *seq, 0);
    for (size_t i = 0; i < n; i++) {
        pos[i] = (int32_t)i;
        seq[i] = 0;
    }
    pio_batch b = {(int32_t)n, ids, pos, seq, NULL};
    const pio_tensor *logits;
    pio_error err;
    if (pio_model_forward(m, &b, &logits, &err)) return pio_lua_fail(L, &err);
    pio_tensor *copy = pio_tensor_contiguous(logits, &err);
    if (!copy) return pio_lua_fail(L, &err);
    pio_lua_push_tensor(L, copy);
    return 1;
}

/* ---- benchmarks (pio/bench.h) --------------------------------------------- */

/* model:bench_forward(n_tokens [, n_past [, n_batch]]) → seconds of forward
 * passes over made-up tokens of slot 0 (logits for the last one only). */
static int m_bench_forward(lua_State *L) {
    pio_model *m = check_model(L, 1);
    lua_Integer n = luaL_checkinteger(L, 2), past = luaL_optinteger(L, 3, 0);
    lua_Integer batch = luaL_optinteger(L, 4, 0);
    luaL_argcheck(L, n > 0 && n <= INT32_MAX, 2, "must be a positive token count");
    luaL_argcheck(L, past >= 0 && past <= INT32_MAX, 3, "must be >= 0");
    luaL_argcheck(L, batch >= 0 && batch <= INT32_MAX, 4, "must be >= 0");
    double seconds;
    pio_error err;
    if (pio_model_bench_forward(m, (int32_t)n, (int32_t)past, (int32_t)batch, &seconds, &err))
        return pio_lua_raise(L, &err);
    lua_pushnumber(L, seconds);
    return 1;
}

/* model:bench_decode(n_seqs, n_steps [, depth]) → seconds of n_steps forward passes
 * of one token for each of n_seqs sequences (after `depth` untimed prompt tokens each). */
static int m_bench_decode(lua_State *L) {
    pio_model *m = check_model(L, 1);
    lua_Integer seqs = luaL_checkinteger(L, 2), steps = luaL_checkinteger(L, 3);
    lua_Integer depth = luaL_optinteger(L, 4, 0);
    luaL_argcheck(L, seqs > 0 && seqs <= INT32_MAX, 2, "must be a positive sequence count");
    luaL_argcheck(L, steps > 0 && steps <= INT32_MAX, 3, "must be a positive step count");
    luaL_argcheck(L, depth >= 0 && depth <= INT32_MAX, 4, "must be >= 0");
    double seconds;
    pio_error err;
    if (pio_model_bench_decode(m, (int32_t)seqs, (int32_t)steps, (int32_t)depth, &seconds, &err))
        return pio_lua_raise(L, &err);
    lua_pushnumber(L, seconds);
    return 1;
}

/* model:decode_bytes() → weight bytes one decode step reads. */
static int m_decode_bytes(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)pio_model_decode_bytes(check_model(L, 1)));
    return 1;
}

/* model:save(path) → true, or nil, message: every weight into one safetensors file. */
static int m_save(lua_State *L) {
    pio_model *m = check_model(L, 1);
    const char *path = luaL_checkstring(L, 2);
    pio_error err;
    if (pio_model_save(m, path, &err)) return pio_lua_fail(L, &err);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- the KV cache (pio/kv.h) --------------------------------------------------- */

/* model:kv_configure{layout=, block=, blocks=, bytes=, format=, prefix=, attention=,
 * window=, sink=}: what lua/pio/strategy.lua's kv and attention strategies set. Does not
 * look at the memory budget (model:use does: lua/pio/memory.lua). */
static int m_kv_configure(lua_State *L) {
    pio_model *m = check_model(L, 1);
    pio_kv_config c;
    read_kv_config(L, 2, "model:kv_configure", &c);
    pio_error err;
    if (pio_model_kv_configure(m, &c, &err)) return pio_lua_fail(L, &err);
    lua_settop(L, 1);
    return 1;
}

/* model:kv_bytes([cfg]) → the bytes the cache would take with cfg (the current one when
 * absent), as pio.estimate counts them. */
static int m_kv_bytes(lua_State *L) {
    pio_model *m = check_model(L, 1);
    pio_kv_config c;
    if (!lua_isnoneornil(L, 2)) read_kv_config(L, 2, "model:kv_bytes", &c);
    size_t bytes;
    pio_error err;
    if (pio_model_kv_bytes(m, lua_isnoneornil(L, 2) ? NULL : &c, &bytes, &err))
        return pio_lua_fail(L, &err);
    lua_pushinteger(L, (lua_Integer)bytes);
    return 1;
}

/* model:kv_stats() → {layout=, format=, attention=, window=, sink=, block_size=, blocks_total=,
 * blocks_used=, blocks_cached=, blocks_free=, bytes_per_block=, bytes=, prefix_hits=,
 * prefix_misses=, tokens_reused=, evictions=} */
static int m_kv_stats(lua_State *L) {
    pio_kv_stats s;
    pio_model_kv_stats(check_model(L, 1), &s);
    lua_createtable(L, 0, 16);
    lua_pushstring(L, s.layout), lua_setfield(L, -2, "layout");
    lua_pushstring(L, s.format), lua_setfield(L, -2, "format");
    lua_pushstring(L, s.attention), lua_setfield(L, -2, "attention");
    lua_pushboolean(L, s.prefix_cache), lua_setfield(L, -2, "prefix");
#define KV_INT(name, v) (lua_pushinteger(L, (lua_Integer)(v)), lua_setfield(L, -2, name))
    KV_INT("window", s.window), KV_INT("sink", s.sink), KV_INT("block_size", s.block_size);
    KV_INT("blocks_total", s.blocks_total), KV_INT("blocks_used", s.blocks_used);
    KV_INT("blocks_cached", s.blocks_cached), KV_INT("blocks_free", s.blocks_free);
    KV_INT("bytes_per_block", s.bytes_per_block), KV_INT("bytes", s.bytes_total);
    KV_INT("prefix_hits", s.prefix_hits), KV_INT("prefix_misses", s.prefix_misses);
    KV_INT("tokens_reused", s.tokens_reused), KV_INT("evictions", s.evictions);
#undef KV_INT
    return 1;
}

/* The slot at arg: an integer in [0, max_seqs). */
static int32_t check_slot(lua_State *L, pio_model *m, int arg) {
    lua_Integer seq = luaL_checkinteger(L, arg);
    pio_model_info i;
    pio_model_get_info(m, &i);
    if (seq < 0 || seq >= i.max_seqs)
        luaL_error(L, "sequence slot %I is outside [0, %d) (slots are 0-based; load with max_seqs "
                   "for more)", (LUAI_UACINT)seq, (int)i.max_seqs);
    return (int32_t)seq;
}

/* model:seq_free(seq): empties a slot (0-based, as pio_batch). */
static int m_seq_free(lua_State *L) {
    pio_model *m = check_model(L, 1);
    pio_model_seq_free(m, check_slot(L, m, 2));
    return 0;
}

/* model:seq_reserve(seq, n_positions) → true, or nil, message (out of KV blocks): room
 * for positions [0, n) in the slot before running anything (pio_model_seq_reserve). */
static int m_seq_reserve(lua_State *L) {
    pio_model *m = check_model(L, 1);
    int32_t seq = check_slot(L, m, 2);
    lua_Integer n = luaL_checkinteger(L, 3);
    if (n < 0 || n > INT32_MAX)
        return luaL_error(L, "seq_reserve: positions must be in [0, %d], got %I", INT32_MAX,
                          (LUAI_UACINT)n);
    pio_error err;
    if (pio_model_seq_reserve(m, seq, (int32_t)n, &err)) return pio_lua_fail(L, &err);
    lua_pushboolean(L, 1);
    return 1;
}

/* model:save_sequence(seq, path), model:load_sequence(seq, path): checkpoints. */
static int m_save_sequence(lua_State *L) {
    pio_model *m = check_model(L, 1);
    int32_t seq = (int32_t)luaL_checkinteger(L, 2);
    const char *path = luaL_checkstring(L, 3);
    pio_error err;
    if (pio_model_seq_save(m, seq, path, &err)) return pio_lua_fail(L, &err);
    lua_pushboolean(L, 1);
    return 1;
}

static int m_load_sequence(lua_State *L) {
    pio_model *m = check_model(L, 1);
    int32_t seq = (int32_t)luaL_checkinteger(L, 2);
    const char *path = luaL_checkstring(L, 3);
    pio_error err;
    if (pio_model_seq_load(m, seq, path, &err)) return pio_lua_fail(L, &err);
    lua_pushinteger(L, pio_model_seq_length(m, seq));
    return 1;
}

/* pio.read_bandwidth{threads=, mib=, reps=} → bytes per second. */
static int l_read_bandwidth(lua_State *L) {
    static const char *const known[] = {"threads", "mib", "reps", NULL};
    check_keys(L, 1, "pio.read_bandwidth", known);
    lua_Integer threads = opt_int(L, 1, "threads", 0), mib = opt_int(L, 1, "mib", 1024);
    lua_Integer reps = opt_int(L, 1, "reps", 5);
    if (threads < 0 || mib < 1 || reps < 1)
        return luaL_error(L, "pio.read_bandwidth: threads >= 0, mib >= 1 and reps >= 1");
    pio_error err;
    double bw = pio_read_bandwidth((int)threads, (size_t)mib << 20, (int)reps, &err);
    if (bw <= 0) return pio_lua_fail(L, &err);
    lua_pushnumber(L, bw);
    return 1;
}

/* ---- info ------------------------------------------------------------------ */

static int m_info(lua_State *L) {
    pio_model_info i;
    pio_model_get_info(check_model(L, 1), &i);
    lua_newtable(L);
#define SET_STR(k, v) (lua_pushstring(L, v), lua_setfield(L, -2, k))
#define SET_INT(k, v) (lua_pushinteger(L, (lua_Integer)(v)), lua_setfield(L, -2, k))
    SET_STR("architecture", i.architecture);
    SET_STR("family", i.family);
    SET_STR("dtype", pio_dtype_info(i.dtype)->name);
    SET_STR("device", pio_device_name(i.device));
    SET_INT("parameters", i.n_params);
    SET_INT("weight_bytes", i.weight_bytes);
    SET_INT("kv_bytes", i.kv_bytes);
    SET_INT("activation_bytes", i.activation_bytes);
    SET_INT("threads", i.threads);
    SET_INT("n_vocab", i.n_vocab);
    SET_INT("n_ctx", i.n_ctx);
    SET_INT("n_ctx_train", i.n_ctx_train);
    SET_INT("n_layer", i.n_layer);
    SET_INT("n_embd", i.n_embd);
    SET_INT("n_head", i.n_head);
    SET_INT("n_head_kv", i.n_head_kv);
    SET_INT("head_dim", i.head_dim);
    SET_INT("max_seqs", i.max_seqs);
    /* Attention windows: config.json's (nil: none) and, per layer, the one in
     * effect (0: full attention; a sliding or sink strategy sets every layer's). */
    pio_model *m = check_model(L, 1);
    if (pio_model_config_window(m) > 0) SET_INT("sliding_window", pio_model_config_window(m));
    lua_createtable(L, i.n_layer, 0);
    for (int32_t l = 0; l < i.n_layer; l++) {
        lua_pushinteger(L, pio_model_layer_window(m, l));
        lua_rawseti(L, -2, l + 1);
    }
    lua_setfield(L, -2, "layer_windows");
#undef SET_STR
#undef SET_INT
    return 1;
}

static int m_index(lua_State *L) {
    pio_model *m = check_model(L, 1);
    const char *key = luaL_checkstring(L, 2);
    if (strcmp(key, "tokenizer") == 0) {
        /* Cached in the user value so model.tokenizer is the same object each time. */
        lua_getiuservalue(L, 1, 1);
        if (lua_isnil(L, -1) && pio_model_tokenizer(m)) {
            lua_pop(L, 1);
            pio_lua_push_borrowed_tokenizer(L, pio_model_tokenizer(m), 1);
            lua_pushvalue(L, -1);
            lua_setiuservalue(L, 1, 1);
        }
        return 1;
    }
    luaL_getmetafield(L, 1, "methods");
    lua_getfield(L, -1, key);
    return 1;
}

static int m_free(lua_State *L) {
    model_box *box = luaL_checkudata(L, 1, MODEL_MT);
    pio_model_free(box->m);
    box->m = NULL;
    return 0;
}

static int m_tostring(lua_State *L) {
    model_box *box = luaL_checkudata(L, 1, MODEL_MT);
    if (!box->m) {
        lua_pushliteral(L, "pio.Model (freed)");
        return 1;
    }
    pio_model_info i;
    pio_model_get_info(box->m, &i);
    lua_pushfstring(L, "pio.Model(%s, %s, %s, %d layers)", i.architecture,
                    pio_dtype_info(i.dtype)->name, pio_device_name(i.device), (int)i.n_layer);
    return 1;
}

/* ---- generation ------------------------------------------------------------ */

static pio_generation *check_generation(lua_State *L, int arg) {
    generation_box *box = luaL_checkudata(L, arg, GENERATION_MT);
    if (!box->g) luaL_argerror(L, arg, "generation has been freed");
    return box->g;
}

/* model:start(ids, opts) → pio.Generation; ids are 0-based token ids. */
static int m_start(lua_State *L) {
    static const char *const known[] = {
        "max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
        "presence_penalty", "frequency_penalty", "penalty_last_n", "seed", "stop",
        "ignore_eos", NULL};
    pio_model *m = check_model(L, 1);
    size_t n;
    int32_t *ids = pio_lua_check_ids(L, 2, &n);
    check_keys(L, 3, "generate", known);
    pio_gen_opts o = pio_gen_default_opts();
    pio_model_default_sampling(m, &o.sampling);
    pio_sampler_params *s = &o.sampling;
    o.max_new_tokens = (int32_t)opt_int(L, 3, "max_new_tokens", o.max_new_tokens);
    s->temperature = (float)opt_num(L, 3, "temperature", s->temperature);
    s->top_k = (int32_t)opt_int(L, 3, "top_k", s->top_k);
    s->top_p = (float)opt_num(L, 3, "top_p", s->top_p);
    s->min_p = (float)opt_num(L, 3, "min_p", s->min_p);
    s->repetition_penalty = (float)opt_num(L, 3, "repetition_penalty", s->repetition_penalty);
    s->presence_penalty = (float)opt_num(L, 3, "presence_penalty", s->presence_penalty);
    s->frequency_penalty = (float)opt_num(L, 3, "frequency_penalty", s->frequency_penalty);
    s->penalty_last_n = (int32_t)opt_int(L, 3, "penalty_last_n", s->penalty_last_n);
    s->seed = (uint64_t)opt_int(L, 3, "seed", (lua_Integer)s->seed);
    o.ignore_eos = opt_bool(L, 3, "ignore_eos", false);

    /* stop: a string or a list of strings (kept alive by the options table). */
    const char *stops[16];
    if (!lua_isnoneornil(L, 3)) {
        lua_getfield(L, 3, "stop");
        if (lua_type(L, -1) == LUA_TSTRING) {
            stops[o.n_stop++] = lua_tostring(L, -1);
        } else if (lua_type(L, -1) == LUA_TTABLE) {
            for (lua_Integer i = 1; i <= luaL_len(L, -1) && o.n_stop < 16; i++) {
                lua_geti(L, -1, i);
                if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
                    return luaL_error(L, "option 'stop' must hold non-empty strings");
                stops[o.n_stop++] = lua_tostring(L, -1);
                lua_pop(L, 1);
            }
        } else if (!lua_isnil(L, -1)) {
            return luaL_error(L, "option 'stop' must be a string or a list of strings");
        }
        lua_pop(L, 1);
        o.stop = stops;
    }

    generation_box *box = lua_newuserdatauv(L, sizeof *box, 1);
    box->g = NULL;
    luaL_setmetatable(L, GENERATION_MT);
    lua_pushvalue(L, 1); /* the generation keeps its model alive */
    lua_setiuservalue(L, -2, 1);
    pio_error err;
    box->g = pio_generation_new(m, ids, n, &o, &err);
    if (!box->g) return pio_lua_fail(L, &err);
    return 1;
}

/* gen:step() → text piece, or nil when finished. */
static int g_step(lua_State *L) {
    pio_generation *g = check_generation(L, 1);
    const char *text;
    size_t len;
    bool done;
    pio_error err;
    if (pio_generation_step(g, &text, &len, &done, &err)) return pio_lua_fail(L, &err);
    if (done && len == 0) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushlstring(L, text, len);
    return 1;
}

static int g_stats(lua_State *L) {
    pio_generation *g = check_generation(L, 1);
    pio_gen_stats s = pio_generation_stats(g);
    size_t n;
    const int32_t *tokens = pio_generation_tokens(g, &n);
    lua_newtable(L);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushinteger(L, tokens[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "tokens");
    lua_pushinteger(L, s.prompt_tokens);
    lua_setfield(L, -2, "prompt_tokens");
    lua_pushinteger(L, s.new_tokens);
    lua_setfield(L, -2, "new_tokens");
    lua_pushnumber(L, s.prompt_seconds);
    lua_setfield(L, -2, "prompt_seconds");
    lua_pushnumber(L, s.gen_seconds);
    lua_setfield(L, -2, "gen_seconds");
    /* The first new token comes with the prompt pass; the rate counts the rest. */
    lua_pushnumber(L, s.gen_seconds > 0 ? (s.new_tokens - 1) / s.gen_seconds : 0);
    lua_setfield(L, -2, "tokens_per_second");
    lua_pushnumber(L, s.prompt_seconds > 0 ? s.prompt_tokens / s.prompt_seconds : 0);
    lua_setfield(L, -2, "prompt_tokens_per_second");
    if (s.stop_reason) {
        lua_pushstring(L, s.stop_reason);
        lua_setfield(L, -2, "stop_reason");
    }
    return 1;
}

static int g_free(lua_State *L) {
    generation_box *box = luaL_checkudata(L, 1, GENERATION_MT);
    pio_generation_free(box->g);
    box->g = NULL;
    return 0;
}

pio_model *pio_lua_check_model(lua_State *L, int arg) { return check_model(L, arg); }

pio_model *pio_lua_model_or_null(lua_State *L, int idx) {
    model_box *box = luaL_testudata(L, idx, MODEL_MT);
    return box ? box->m : NULL;
}

pio_generation *pio_lua_take_generation(lua_State *L, int arg) {
    generation_box *box = luaL_checkudata(L, arg, GENERATION_MT);
    pio_generation *g = check_generation(L, arg);
    box->g = NULL;
    return g;
}

void pio_lua_open_model(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"logits", m_logits}, {"info", m_info}, {"start", m_start}, {"free", m_free},
        {"surgery", m_surgery},
        {"bench_forward", m_bench_forward}, {"bench_decode", m_bench_decode},
        {"decode_bytes", m_decode_bytes}, {"save", m_save},
        {"kv_configure", m_kv_configure}, {"kv_stats", m_kv_stats}, {"kv_bytes", m_kv_bytes},
        {"seq_free", m_seq_free}, {"seq_reserve", m_seq_reserve},
        {"save_sequence", m_save_sequence}, {"load_sequence", m_load_sequence},
        {NULL, NULL},
    };
    static const luaL_Reg meta[] = {
        {"__index", m_index}, {"__gc", m_free}, {"__close", m_free},
        {"__tostring", m_tostring}, {NULL, NULL},
    };
    luaL_newmetatable(L, MODEL_MT);
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "methods"); /* init.lua adds Lua methods here */
    lua_setfield(L, -3, "Model");   /* module.Model = methods */
    lua_pop(L, 1);

    static const luaL_Reg gen_methods[] = {
        {"step", g_step}, {"stats", g_stats}, {"free", g_free}, {NULL, NULL},
    };
    luaL_newmetatable(L, GENERATION_MT);
    lua_pushcfunction(L, g_free);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, g_free);
    lua_setfield(L, -2, "__close");
    luaL_newlib(L, gen_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    lua_pushcfunction(L, l_load);
    lua_setfield(L, -2, "load");
    lua_pushcfunction(L, l_estimate);
    lua_setfield(L, -2, "estimate");
    lua_pushcfunction(L, l_model_device);
    lua_setfield(L, -2, "model_device");
    lua_pushcfunction(L, l_read_bandwidth);
    lua_setfield(L, -2, "read_bandwidth");
}
