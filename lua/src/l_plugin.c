/* pio.Plugin: a C-backed model plugin (pio/plugin.h). The userdata carries the
 * plugin's C descriptor; the seed's lifecycle methods (initialize, load_model,
 * infer, cleanup, ...) are Lua functions that lua/pio/plugins.lua puts into
 * the methods table, as init.lua does for pio.Model. */
#include <string.h>

#include "lpio.h"
#include "pio/plugin.h"

#define PLUGIN_MT "pio.Plugin"

typedef struct { const pio_plugin_desc *d; } plugin_box;

static const pio_plugin_desc *check_plugin(lua_State *L, int arg) {
    return ((plugin_box *)luaL_checkudata(L, arg, PLUGIN_MT))->d;
}

static void push_descriptor(lua_State *L, const pio_plugin_desc *d) {
    lua_createtable(L, 0, 6);
#define SET(k) (lua_pushstring(L, d->k), lua_setfield(L, -2, #k))
    SET(name);
    SET(factory);
    SET(description);
    SET(model_family);
    SET(architecture);
    SET(hf_repo);
#undef SET
}

/* core.plugin_descriptors() → {descriptor, ...} in table order. */
static int l_plugin_descriptors(lua_State *L) {
    lua_createtable(L, pio_plugin_count(), 0);
    for (int i = 0; i < pio_plugin_count(); i++) {
        push_descriptor(L, pio_plugin_at(i));
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* core.plugin(name) → a new pio.Plugin for one of the table's plugins. */
static int l_plugin(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    const pio_plugin_desc *d = pio_plugin_find(name);
    if (!d) return luaL_error(L, "no C plugin named '%s'", name);
    plugin_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->d = d;
    luaL_setmetatable(L, PLUGIN_MT);
    return 1;
}

static int p_index(lua_State *L) {
    const pio_plugin_desc *d = check_plugin(L, 1);
    const char *key = luaL_checkstring(L, 2);
    if (strcmp(key, "name") == 0) {
        lua_pushstring(L, d->name);
    } else if (strcmp(key, "descriptor") == 0) {
        push_descriptor(L, d);
    } else {
        luaL_getmetafield(L, 1, "methods");
        lua_getfield(L, -1, key);
    }
    return 1;
}

/* Calls the Lua method `name` on the plugin if it exists; returns its result count. */
static int call_method(lua_State *L, const char *name, int nresults) {
    luaL_getmetafield(L, 1, "methods");
    if (lua_getfield(L, -1, name) != LUA_TFUNCTION) return 0;
    lua_pushvalue(L, 1);
    lua_call(L, 1, nresults);
    return nresults;
}

static int p_tostring(lua_State *L) {
    const pio_plugin_desc *d = check_plugin(L, 1);
    if (call_method(L, "describe", 1) && lua_type(L, -1) == LUA_TSTRING) return 1;
    lua_pushfstring(L, "pio.Plugin(%s)", d->name);
    return 1;
}

/* `local p <close> = pio.create_...()`: cleanup() when the scope ends. */
static int p_close(lua_State *L) {
    check_plugin(L, 1);
    call_method(L, "cleanup", 0);
    return 0;
}

void pio_lua_open_plugin(lua_State *L) {
    static const luaL_Reg meta[] = {
        {"__index", p_index}, {"__tostring", p_tostring}, {"__close", p_close}, {NULL, NULL},
    };
    luaL_newmetatable(L, PLUGIN_MT);
    luaL_setfuncs(L, meta, 0);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "methods"); /* plugins.lua fills it */
    lua_setfield(L, -3, "Plugin");
    lua_pop(L, 1);

    lua_pushcfunction(L, l_plugin);
    lua_setfield(L, -2, "plugin");
    lua_pushcfunction(L, l_plugin_descriptors);
    lua_setfield(L, -2, "plugin_descriptors");
}
