/* pio.Scheduler: the C scheduler (pio/scheduler.h) as userdata. The handles,
 * callbacks and prompt reading are Lua (lua/pio/scheduler.lua); here are the
 * primitives it drives. The scheduler keeps its model alive (user value 1). */
#include <string.h>

#include "lpio.h"
#include "pio/kv.h"
#include "pio/scheduler.h"

#define SCHEDULER_MT "pio.Scheduler"

typedef struct { pio_scheduler *s; } scheduler_box;

/* The scheduler at arg, its model still loaded (else a Lua error). */
static pio_scheduler *check_scheduler(lua_State *L, int arg) {
    scheduler_box *box = luaL_checkudata(L, arg, SCHEDULER_MT);
    if (!box->s) luaL_argerror(L, arg, "scheduler has been freed");
    lua_getiuservalue(L, arg, 1);
    pio_lua_check_model(L, lua_gettop(L));
    lua_pop(L, 1);
    return box->s;
}

/* core.scheduler(model, max_batch, max_tokens, preempt) (0: defaults; preempt "recompute"
 * or "swap"; lua/pio/scheduler.lua checks). */
static int l_scheduler(lua_State *L) {
    static const char *const modes[] = {"recompute", "swap", NULL};
    pio_model *m = pio_lua_check_model(L, 1);
    pio_sched_opts o = {.max_batch = (int32_t)luaL_optinteger(L, 2, 0),
                        .max_tokens = (int32_t)luaL_optinteger(L, 3, 0),
                        .preempt = (pio_preempt_mode)luaL_checkoption(L, 4, "recompute", modes)};
    scheduler_box *box = lua_newuserdatauv(L, sizeof *box, 1);
    box->s = NULL;
    luaL_setmetatable(L, SCHEDULER_MT);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);
    pio_error err;
    if (!(box->s = pio_scheduler_new(m, &o, &err))) return pio_lua_raise(L, &err);
    return 1;
}

/* s:submit(generation) → id; the pio.Generation is taken over (left freed). */
static int s_submit(lua_State *L) {
    pio_scheduler *s = check_scheduler(L, 1);
    pio_error err;
    int32_t id = pio_scheduler_submit(s, pio_lua_take_generation(L, 2), &err);
    if (id < 0) return pio_lua_raise(L, &err);
    lua_pushinteger(L, id);
    return 1;
}

/* s:step() → running, { {id=, token=, text=, done=}, ... } (token -1: none). */
static int s_step(lua_State *L) {
    pio_scheduler *s = check_scheduler(L, 1);
    int32_t running;
    pio_error err;
    if (pio_scheduler_step(s, &running, &err)) return pio_lua_raise(L, &err);
    size_t n;
    const pio_sched_event *ev = pio_scheduler_events(s, &n);
    lua_pushinteger(L, running);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_createtable(L, 0, 4);
        lua_pushinteger(L, ev[i].id);
        lua_setfield(L, -2, "id");
        lua_pushinteger(L, ev[i].token);
        lua_setfield(L, -2, "token");
        lua_pushlstring(L, ev[i].text, ev[i].len);
        lua_setfield(L, -2, "text");
        if (ev[i].done) {
            lua_pushstring(L, ev[i].done);
            lua_setfield(L, -2, "done");
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 2;
}

static int s_busy(lua_State *L) {
    lua_pushboolean(L, pio_scheduler_busy(check_scheduler(L, 1)));
    return 1;
}

static int s_cancel(lua_State *L) {
    pio_scheduler *s = check_scheduler(L, 1);
    lua_pushboolean(L, pio_scheduler_cancel(s, (int32_t)luaL_checkinteger(L, 2)));
    return 1;
}

/* s:seq(id) → { status=, stop_reason=, error=, text=, tokens=, prompt_tokens=,
 * reused_tokens=, preemptions=, submitted=, first_token=, finished= }. */
static int s_seq(lua_State *L) {
    pio_scheduler *s = check_scheduler(L, 1);
    pio_seq_info info;
    pio_error err;
    if (pio_scheduler_seq(s, (int32_t)luaL_checkinteger(L, 2), &info, &err))
        return pio_lua_raise(L, &err);
    lua_createtable(L, 0, 12);
    lua_pushstring(L, pio_seq_status_name(info.status));
    lua_setfield(L, -2, "status");
    if (info.stop_reason) {
        lua_pushstring(L, info.stop_reason);
        lua_setfield(L, -2, "stop_reason");
    }
    if (info.error) {
        lua_pushstring(L, info.error);
        lua_setfield(L, -2, "error");
    }
    lua_pushlstring(L, info.text, info.len);
    lua_setfield(L, -2, "text");
    lua_createtable(L, (int)info.n_tokens, 0);
    for (size_t i = 0; i < info.n_tokens; i++) {
        lua_pushinteger(L, info.tokens[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "tokens");
#define SET_NUM(k, v) (lua_pushnumber(L, v), lua_setfield(L, -2, k))
#define SET_INT(k, v) (lua_pushinteger(L, v), lua_setfield(L, -2, k))
    SET_INT("prompt_tokens", info.prompt_tokens);
    SET_INT("reused_tokens", info.reused_tokens);
    SET_INT("preemptions", info.preemptions);
    SET_NUM("submitted", info.submitted);
    SET_NUM("first_token", info.first_token);
    SET_NUM("finished", info.finished);
    return 1;
}

static int s_release(lua_State *L) {
    scheduler_box *box = luaL_checkudata(L, 1, SCHEDULER_MT);
    if (box->s) pio_scheduler_release(box->s, (int32_t)luaL_checkinteger(L, 2));
    return 0;
}

static int s_stats(lua_State *L) {
    pio_sched_stats st;
    pio_scheduler_stats(check_scheduler(L, 1), &st);
    lua_createtable(L, 0, 15);
    SET_INT("steps", st.steps);
    SET_INT("batch_tokens", st.batch_tokens);
    SET_INT("prompt_tokens", st.prompt_tokens);
    SET_INT("generated_tokens", st.generated_tokens);
    SET_INT("reused_tokens", st.reused_tokens);
    SET_INT("preemptions", st.preemptions);
    SET_INT("swaps_out", st.swaps_out);
    SET_INT("swaps_in", st.swaps_in);
    SET_INT("swapped_out_bytes", st.swapped_out_bytes);
    SET_INT("swapped_in_bytes", st.swapped_in_bytes);
    SET_INT("swap_held_bytes", st.swap_held_bytes);
    SET_NUM("swap_seconds", st.swap_seconds);
    SET_INT("running", st.running);
    SET_INT("waiting", st.waiting);
    SET_NUM("forward_seconds", st.forward_seconds);
#undef SET_NUM
#undef SET_INT
    return 1;
}

/* Frees the scheduler (slots emptied while the model is still loaded). */
static int s_free(lua_State *L) {
    scheduler_box *box = luaL_checkudata(L, 1, SCHEDULER_MT);
    if (!box->s) return 0;
    lua_getiuservalue(L, 1, 1);
    if (!pio_lua_model_or_null(L, lua_gettop(L))) pio_scheduler_forget_model(box->s);
    pio_scheduler_free(box->s);
    box->s = NULL;
    return 0;
}

/* ---- the KV primitives the scheduler uses (pio/kv.h), for benchmarks and tests ---- */

static int opt_field_int(lua_State *L, int t, const char *key, lua_Integer fallback) {
    lua_getfield(L, t, key);
    lua_Integer v = lua_isnil(L, -1) ? fallback : luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    return (int)v;
}

/* Field key of table t: one of two names (or absent: the first), as 0 or 1. */
static int field_choice(lua_State *L, int t, const char *key, const char *a, const char *b) {
    lua_getfield(L, t, key);
    const char *v = lua_isnil(L, -1) ? a : lua_tostring(L, -1);
    int which = v && strcmp(v, a) == 0 ? 0 : v && strcmp(v, b) == 0 ? 1 : -1;
    if (which < 0)
        luaL_error(L, "KV %s must be '%s' or '%s', got %s", key, a, b,
                   v ? lua_pushfstring(L, "'%s'", v) : luaL_typename(L, -1));
    lua_pop(L, 1);
    return which;
}

/* sched_kv.configure(model, {layout=, block_size=, n_blocks=, max_bytes=, format=,
 * prefix_cache=}): layout "contiguous" | "paged", format "model" | "int8". */
static int l_kv_configure(lua_State *L) {
    pio_model *m = pio_lua_check_model(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    pio_kv_config c = {0};
    c.layout = field_choice(L, 2, "layout", "contiguous", "paged") ? PIO_KV_PAGED
                                                                   : PIO_KV_CONTIGUOUS;
    c.format = field_choice(L, 2, "format", "model", "int8") ? PIO_KV_INT8 : PIO_KV_MODEL_DTYPE;
    lua_getfield(L, 2, "prefix_cache");
    c.prefix_cache = lua_toboolean(L, -1);
    lua_pop(L, 1);
    c.block_size = opt_field_int(L, 2, "block_size", 0);
    c.n_blocks = opt_field_int(L, 2, "n_blocks", 0);
    lua_getfield(L, 2, "max_bytes");
    c.max_bytes = lua_isnil(L, -1) ? 0 : (size_t)luaL_checkinteger(L, -1);
    lua_pop(L, 1);
    pio_error err;
    if (pio_model_kv_configure(m, &c, &err)) return pio_lua_fail(L, &err);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_kv_stats(lua_State *L) {
    pio_kv_stats st;
    if (pio_model_kv_stats(pio_lua_check_model(L, 1), &st)) return 0;
    lua_createtable(L, 0, 14);
    lua_pushstring(L, st.layout);
    lua_setfield(L, -2, "layout");
    lua_pushstring(L, st.format);
    lua_setfield(L, -2, "format");
#define SET_INT(k, v) (lua_pushinteger(L, (lua_Integer)(v)), lua_setfield(L, -2, k))
    SET_INT("block_size", st.block_size);
    SET_INT("blocks_total", st.blocks_total);
    SET_INT("blocks_used", st.blocks_used);
    SET_INT("blocks_cached", st.blocks_cached);
    SET_INT("blocks_free", st.blocks_free);
    SET_INT("bytes_per_block", st.bytes_per_block);
    SET_INT("bytes_total", st.bytes_total);
    SET_INT("prefix_hits", st.prefix_hits);
    SET_INT("prefix_misses", st.prefix_misses);
    SET_INT("tokens_reused", st.tokens_reused);
    SET_INT("evictions", st.evictions);
#undef SET_INT
    return 1;
}

/* sched_kv.reserve(model, slot, n) → true, or nil, message (e.g. out of KV blocks). */
static int l_kv_reserve(lua_State *L) {
    pio_model *m = pio_lua_check_model(L, 1);
    pio_error err;
    if (pio_model_seq_reserve(m, (int32_t)luaL_checkinteger(L, 2),
                              (int32_t)luaL_checkinteger(L, 3), &err)) {
        lua_pushnil(L);
        lua_pushstring(L, err.msg);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_kv_free(lua_State *L) {
    pio_model_seq_free(pio_lua_check_model(L, 1), (int32_t)luaL_checkinteger(L, 2));
    return 0;
}

void pio_lua_open_scheduler(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"submit", s_submit}, {"step", s_step}, {"busy", s_busy}, {"cancel", s_cancel},
        {"seq", s_seq}, {"release", s_release}, {"stats", s_stats}, {"free", s_free},
        {NULL, NULL},
    };
    luaL_newmetatable(L, SCHEDULER_MT);
    lua_pushcfunction(L, s_free);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, s_free);
    lua_setfield(L, -2, "__close");
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_scheduler);
    lua_setfield(L, -2, "scheduler");
    static const luaL_Reg kv[] = {
        {"configure", l_kv_configure}, {"stats", l_kv_stats}, {"reserve", l_kv_reserve},
        {"free", l_kv_free}, {NULL, NULL},
    };
    luaL_newlib(L, kv); /* pio.scheduler's module keeps it as .kv (init.lua) */
    lua_setfield(L, -2, "sched_kv");
}
