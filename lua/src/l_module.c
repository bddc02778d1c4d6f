/* The `pio.core` Lua module: registers every userdata type and the free
 * functions. lua/pio/init.lua builds the public `pio` table on top of it. */
#include <unistd.h>

#include "lpio.h"

#include "pio/generate.h"
#include "pio/model.h"

int pio_lua_raise(lua_State *L, const pio_error *err) {
    return luaL_error(L, "%s", err->msg);
}

int pio_lua_fail(lua_State *L, const pio_error *err) {
    if (!pio_status_is_environment(err->status)) return pio_lua_raise(L, err);
    lua_pushnil(L);
    lua_pushstring(L, err->msg);
    return 2;
}

int32_t *pio_lua_check_ids(lua_State *L, int arg, size_t *n) {
    luaL_checktype(L, arg, LUA_TTABLE);
    lua_Integer len = luaL_len(L, arg);
    int32_t *ids = lua_newuserdatauv(L, (size_t)(len ? len : 1) * sizeof *ids, 0);
    for (lua_Integer i = 1; i <= len; i++) {
        lua_geti(L, arg, i);
        int isnum;
        lua_Integer v = lua_tointegerx(L, -1, &isnum);
        if (!isnum || v < INT32_MIN || v > INT32_MAX)
            luaL_error(L, "bad token id at index %d (an integer expected, got %s)", (int)i,
                       luaL_typename(L, -1));
        ids[i - 1] = (int32_t)v;
        lua_pop(L, 1);
    }
    *n = (size_t)len;
    return ids;
}

static int core_now(lua_State *L) {
    lua_pushnumber(L, pio_now());
    return 1;
}

static int core_architectures(lua_State *L) {
    lua_pushstring(L, pio_model_supported_architectures());
    return 1;
}

/* The running executable (the `pio` host, or the lua that loaded the module). */
static int core_executable(lua_State *L) {
    char path[4096];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0) return 0;
    lua_pushlstring(L, path, (size_t)n);
    return 1;
}

/* Test-only accounting, so specs can assert that nothing leaks. */
static int core_live_tensors(lua_State *L) {
    lua_pushinteger(L, pio_debug_live_tensors());
    return 1;
}

static int core_heap_bytes(lua_State *L) {
    lua_pushinteger(L, pio_debug_heap_bytes());
    return 1;
}

int luaopen_pio_core(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"now", core_now},
        {"architectures", core_architectures},
        {"executable", core_executable},
        {"live_tensors", core_live_tensors},
        {"heap_bytes", core_heap_bytes},
        {NULL, NULL},
    };
    luaL_newlib(L, funcs);
    lua_pushstring(L, PIO_VERSION);
    lua_setfield(L, -2, "version");
#ifdef PIO_HAVE_CUDA
    lua_pushboolean(L, 1);
#else
    lua_pushboolean(L, 0);
#endif
    lua_setfield(L, -2, "cuda_built");
    lua_pushstring(L, PIO_SOURCE_DIR); /* configs/, tests/ and scripts/ of this build */
    lua_setfield(L, -2, "source_dir");
    pio_lua_open_tensor(L);
    pio_lua_open_tokenizer(L);
    pio_lua_open_model(L);
    pio_lua_open_safetensors(L);
    pio_lua_open_strategy(L);
    pio_lua_open_plugin(L);
    pio_lua_open_scheduler(L);
    return 1;
}
