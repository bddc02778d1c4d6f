/* pio.Scheduler: the C scheduler (pio/scheduler.h) as userdata. The handles,
 * callbacks and prompt reading are Lua (lua/pio/scheduler.lua); here are the
 * primitives it drives. The scheduler keeps its model alive (user value 1). The
 * KV cache underneath is the model's (model:kv_configure, kv_stats, seq_reserve,
 * seq_free in l_model.c). */
#include "lpio.h"
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
}
