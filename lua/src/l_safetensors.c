/* pio.safetensors(path) → { name = Tensor, ... }: every loadable tensor of a
 * checkpoint, viewing the memory-mapped file (no copy). */
#include "lpio.h"
#include "pio/safetensors.h"

static int l_safetensors(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    pio_error err;
    pio_safetensors *st = pio_safetensors_open(path, &err);
    if (!st) return pio_lua_fail(L, &err);
    lua_newtable(L);
    for (size_t i = 0; i < pio_safetensors_count(st); i++) {
        const pio_st_info *info = pio_safetensors_at(st, i);
        if (!info->supported) continue; /* e.g. I64 buffers: nothing a model reads */
        pio_tensor *t = pio_safetensors_get(st, info->name, &err);
        if (!t) {
            pio_safetensors_close(st);
            return pio_lua_fail(L, &err);
        }
        pio_lua_push_tensor(L, t);
        lua_setfield(L, -2, info->name);
    }
    pio_safetensors_close(st); /* the tensors keep their mappings alive */
    return 1;
}

void pio_lua_open_safetensors(lua_State *L) {
    lua_pushcfunction(L, l_safetensors);
    lua_setfield(L, -2, "safetensors");
}
