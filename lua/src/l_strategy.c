/* pio.Strategy: one row of the runtime's strategy table (pio/strategy.h) with
 * its parameters. lua/pio/strategy.lua builds the family tables
 * (pio.strategy.kv.paged{block = 16}), the selection policy and model:use on
 * top of these primitives. */
#include <stdio.h>
#include <string.h>

#include "lpio.h"
#include "pio/strategy.h"

#define STRATEGY_MT "pio.Strategy"

/* Uservalue 1: for a composite strategy, the list of its parts. */
typedef struct {
    const pio_strategy_def *def;
    double values[PIO_STRATEGY_MAX_PARAMS];
} strategy_box;

static strategy_box *check_strategy(lua_State *L, int arg) {
    return luaL_checkudata(L, arg, STRATEGY_MT);
}

static const char *applies_name(pio_strategy_applies a) {
    return a == PIO_APPLIES_LOAD ? "load" : a == PIO_APPLIES_GENERATE ? "generate" : "nowhere";
}

/* Pushes "a, b, c": the names of the family's strategies or a strategy's parameters. */
static void push_strategy_names(lua_State *L, pio_strategy_family f) {
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    bool first = true;
    for (int i = 0; i < pio_strategy_count(); i++) {
        const pio_strategy_def *d = pio_strategy_at(i);
        if (d->family != f) continue;
        if (!first) luaL_addstring(&b, ", ");
        luaL_addstring(&b, d->name);
        first = false;
    }
    luaL_pushresult(&b);
}

static void push_param_names(lua_State *L, const pio_strategy_def *d) {
    if (d->n_params == 0) {
        lua_pushliteral(L, "it takes none");
        return;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "known: ");
    for (int i = 0; i < d->n_params; i++) {
        if (i) luaL_addstring(&b, ", ");
        luaL_addstring(&b, d->params[i].name);
    }
    luaL_pushresult(&b);
}

static const pio_strategy_def *check_def(lua_State *L, int family_arg, int name_arg) {
    const char *family = luaL_checkstring(L, family_arg);
    const char *name = luaL_checkstring(L, name_arg);
    pio_strategy_family f;
    if (!pio_strategy_family_from_name(family, &f)) {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (int i = 0; i < PIO_STRATEGY_FAMILY_COUNT; i++) {
            if (i) luaL_addstring(&b, ", ");
            luaL_addstring(&b, pio_strategy_family_name((pio_strategy_family)i));
        }
        luaL_pushresult(&b);
        luaL_error(L, "pio.strategy: unknown family '%s' (known: %s)", family, lua_tostring(L, -1));
    }
    const pio_strategy_def *d = pio_strategy_find(f, name);
    if (!d) {
        push_strategy_names(L, f);
        luaL_error(L, "pio.strategy.%s has no strategy '%s' (known: %s)", family, name,
                   lua_tostring(L, -1));
    }
    return d;
}

/* ---- construction ----------------------------------------------------------------- */

/* The options a strategy sets, into the table on top: constant ones and the
 * parameters that name an option. */
static void add_options(lua_State *L, const strategy_box *s) {
    const pio_strategy_def *d = s->def;
    if (d->option) {
        lua_Number n;
        if (lua_stringtonumber(L, d->value)) { /* "0" → 0 */
            n = lua_tonumber(L, -1);
            lua_pop(L, 1);
            lua_pushnumber(L, n);
        } else {
            lua_pushstring(L, d->value);
        }
        lua_setfield(L, -2, d->option);
    }
    for (int i = 0; i < d->n_params; i++) {
        if (!d->params[i].option) continue;
        if (d->params[i].integer) lua_pushinteger(L, (lua_Integer)s->values[i]);
        else lua_pushnumber(L, s->values[i]);
        lua_setfield(L, -2, d->params[i].option);
    }
}

/* A composite's parts: each a strategy of its family (a nested composite is
 * flattened), no option set twice. Leaves the list of parts on the stack. */
static void read_parts(lua_State *L, int arg, const pio_strategy_def *d) {
    const char *family = pio_strategy_family_name(d->family);
    lua_newtable(L);
    int parts = lua_gettop(L);
    lua_newtable(L); /* option -> index of the part that set it */
    int owners = parts + 1;
    lua_newtable(L); /* scratch for one part's options */
    int scratch = parts + 2;
    lua_Integer n = 0;
    lua_Integer len = lua_isnoneornil(L, arg) ? 0 : luaL_len(L, arg);
    for (lua_Integer i = 1; i <= len; i++) {
        lua_geti(L, arg, i);
        strategy_box *p = luaL_testudata(L, -1, STRATEGY_MT);
        if (!p || p->def->family != d->family)
            luaL_error(L, "%s.%s: part %d must be a pio.Strategy of the %s family, got %s", family,
                       d->name, (int)i, family,
                       p ? lua_pushfstring(L, "%s.%s", pio_strategy_family_name(p->def->family),
                                           p->def->name)
                         : luaL_typename(L, -1));
        /* a nested composite contributes its parts */
        int top = lua_gettop(L);
        if (p->def->composite) {
            lua_getiuservalue(L, top, 1);
        } else {
            lua_createtable(L, 1, 0);
            lua_pushvalue(L, top);
            lua_rawseti(L, -2, 1);
        }
        for (lua_Integer j = 1; j <= (lua_Integer)lua_rawlen(L, -1); j++) {
            lua_rawgeti(L, -1, j);
            strategy_box *leaf = lua_touserdata(L, -1);
            lua_newtable(L);
            lua_replace(L, scratch);
            lua_pushvalue(L, scratch);
            add_options(L, leaf);
            lua_pop(L, 1);
            lua_pushnil(L);
            while (lua_next(L, scratch)) {
                lua_pop(L, 1);
                if (lua_getfield(L, owners, lua_tostring(L, -1)) != LUA_TNIL)
                    luaL_error(L, "%s.%s: parts %d and %d both set %s", family, d->name,
                               (int)lua_tointeger(L, -1), (int)i, lua_tostring(L, -2));
                lua_pop(L, 1);
                lua_pushinteger(L, i);
                lua_setfield(L, owners, lua_tostring(L, -2));
            }
            lua_rawseti(L, parts, ++n);
        }
        lua_settop(L, scratch);
    }
    lua_settop(L, parts);
}

/* core.strategy(family, name [, params]) → pio.Strategy */
static int l_strategy(lua_State *L) {
    const pio_strategy_def *d = check_def(L, 1, 2);
    const char *family = pio_strategy_family_name(d->family);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 3);
    strategy_box *s = lua_newuserdatauv(L, sizeof *s, 1);
    s->def = d;
    for (int i = 0; i < d->n_params; i++) s->values[i] = d->params[i].def;
    luaL_setmetatable(L, STRATEGY_MT);
    if (d->composite) {
        read_parts(L, 3, d);
        lua_setiuservalue(L, 4, 1);
        return 1;
    }
    if (lua_isnil(L, 3)) return 1;
    lua_pushnil(L);
    while (lua_next(L, 3)) {
        int idx = lua_type(L, -2) == LUA_TSTRING ? pio_strategy_param_index(d, lua_tostring(L, -2))
                                                 : -1;
        if (idx < 0) {
            const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2)
                                                              : luaL_typename(L, -2);
            push_param_names(L, d);
            return luaL_error(L, "%s.%s: unknown parameter '%s' (%s)", family, d->name, key,
                              lua_tostring(L, -1));
        }
        int isnum;
        lua_Number v = lua_tonumberx(L, -1, &isnum);
        if (!isnum || lua_type(L, -1) != LUA_TNUMBER)
            return luaL_error(L, "%s.%s: %s must be a number, got %s", family, d->name,
                              d->params[idx].name, luaL_typename(L, -1));
        s->values[idx] = v;
        lua_pop(L, 1);
    }
    pio_error err;
    if (pio_strategy_check(d, s->values, &err)) return pio_lua_raise(L, &err);
    return 1;
}

/* core.strategies() → the table as Lua data: {family=, name=, summary=,
 * applies=, params = {{name=, integer=, default=, min=, max=, option=, doc=}},
 * composite=, not_yet=} in table order. */
static int l_strategies(lua_State *L) {
    lua_createtable(L, pio_strategy_count(), 0);
    for (int i = 0; i < pio_strategy_count(); i++) {
        const pio_strategy_def *d = pio_strategy_at(i);
        lua_createtable(L, 0, 8);
        lua_pushstring(L, pio_strategy_family_name(d->family));
        lua_setfield(L, -2, "family");
        lua_pushstring(L, d->name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, d->summary);
        lua_setfield(L, -2, "summary");
        lua_pushstring(L, applies_name(d->applies));
        lua_setfield(L, -2, "applies");
        lua_pushboolean(L, d->composite);
        lua_setfield(L, -2, "composite");
        if (d->not_yet) {
            lua_pushstring(L, d->not_yet);
            lua_setfield(L, -2, "not_yet");
        }
        lua_createtable(L, d->n_params, 0);
        for (int j = 0; j < d->n_params; j++) {
            const pio_strategy_param *p = &d->params[j];
            lua_createtable(L, 0, 7);
            lua_pushstring(L, p->name);
            lua_setfield(L, -2, "name");
            lua_pushboolean(L, p->integer);
            lua_setfield(L, -2, "integer");
            lua_pushnumber(L, p->def);
            lua_setfield(L, -2, "default");
            lua_pushnumber(L, p->min);
            lua_setfield(L, -2, "min");
            lua_pushnumber(L, p->max);
            lua_setfield(L, -2, "max");
            if (p->option) {
                lua_pushstring(L, p->option);
                lua_setfield(L, -2, "option");
            }
            lua_pushstring(L, p->doc);
            lua_setfield(L, -2, "doc");
            lua_rawseti(L, -2, j + 1);
        }
        lua_setfield(L, -2, "params");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* ---- methods ------------------------------------------------------------------------ */

static const char *opt_field_str(lua_State *L, int t, const char *key) {
    if (lua_type(L, t) != LUA_TTABLE) return NULL;
    lua_getfield(L, t, key);
    const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    lua_pop(L, 1); /* kept alive by the table */
    return v;
}

static int32_t opt_field_int(lua_State *L, int t, const char *key, int32_t fallback) {
    if (lua_type(L, t) != LUA_TTABLE) return fallback;
    lua_getfield(L, t, key);
    int isnum;
    lua_Integer v = lua_tointegerx(L, -1, &isnum);
    lua_pop(L, 1);
    return isnum ? (int32_t)v : fallback;
}

/* s:supports(model_info, device_info) → true, or false, reason. Both are
 * plain tables (model:info(), pio.device.info(...)); missing facts are unknown
 * and do not count against a strategy. */
static int s_supports(lua_State *L) {
    strategy_box *s = check_strategy(L, 1);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    pio_strategy_context c = {
        .architecture = opt_field_str(L, 2, "architecture"),
        .dtype = opt_field_str(L, 2, "dtype"),
        .threads = opt_field_int(L, 2, "threads", 0),
        .n_layer = opt_field_int(L, 2, "n_layer", 0),
        .n_head = opt_field_int(L, 2, "n_head", 0),
        .n_head_kv = opt_field_int(L, 2, "n_head_kv", 0),
        .n_expert = opt_field_int(L, 2, "n_expert", 0),
        .device = opt_field_str(L, 3, "device"),
        .device_available = true,
        .device_reason = opt_field_str(L, 3, "reason"),
        .device_count = opt_field_int(L, 3, "count", 0),
    };
    if (lua_type(L, 3) == LUA_TTABLE) {
        lua_getfield(L, 3, "available");
        c.device_available = lua_isnil(L, -1) || lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    char why[512];
    if (s->def->composite) { /* supported when every part is */
        lua_getiuservalue(L, 1, 1);
        for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, -1); i++) {
            lua_rawgeti(L, -1, i);
            strategy_box *part = lua_touserdata(L, -1);
            lua_pop(L, 1);
            if (!pio_strategy_supports(part->def, part->values, &c, why, sizeof why)) {
                lua_pushboolean(L, 0);
                lua_pushfstring(L, "%s: %s", part->def->name, why);
                return 2;
            }
        }
    }
    if (!pio_strategy_supports(s->def, s->values, &c, why, sizeof why)) {
        lua_pushboolean(L, 0);
        lua_pushstring(L, why);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* Pushes "kv.paged{block=16}" or "sampling.chain{top_k{k=20}, top_p{p=0.8}}";
 * with_family false leaves out "family." (for the parts of a chain). */
static void push_description(lua_State *L, int idx, bool with_family) {
    idx = lua_absindex(L, idx);
    strategy_box *s = lua_touserdata(L, idx);
    const pio_strategy_def *d = s->def;
    int base = lua_gettop(L);
    if (with_family) lua_pushfstring(L, "%s.", pio_strategy_family_name(d->family));
    lua_pushstring(L, d->name);
    if (d->composite) {
        lua_getiuservalue(L, idx, 1);
        int list = lua_gettop(L);
        lua_pushliteral(L, "{");
        for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, list); i++) {
            if (i > 1) lua_pushliteral(L, ", ");
            lua_rawgeti(L, list, i);
            push_description(L, -1, false);
            lua_remove(L, -2);
        }
        lua_pushliteral(L, "}");
        lua_remove(L, list);
    } else if (d->n_params) {
        for (int i = 0; i < d->n_params; i++) {
            char num[128];
            snprintf(num, sizeof num, "%s%s=%.15g", i ? ", " : "{", d->params[i].name,
                     s->values[i]);
            lua_pushstring(L, num);
        }
        lua_pushliteral(L, "}");
    }
    lua_concat(L, lua_gettop(L) - base);
}

static int s_index(lua_State *L) {
    strategy_box *s = check_strategy(L, 1);
    const pio_strategy_def *d = s->def;
    const char *key = luaL_checkstring(L, 2);
    if (strcmp(key, "name") == 0) {
        lua_pushstring(L, d->name);
    } else if (strcmp(key, "family") == 0) {
        lua_pushstring(L, pio_strategy_family_name(d->family));
    } else if (strcmp(key, "id") == 0) {
        lua_pushfstring(L, "%s.%s", pio_strategy_family_name(d->family), d->name);
    } else if (strcmp(key, "summary") == 0) {
        lua_pushstring(L, d->summary);
    } else if (strcmp(key, "applies") == 0) {
        lua_pushstring(L, applies_name(d->applies));
    } else if (strcmp(key, "params") == 0) {
        lua_createtable(L, 0, d->n_params);
        for (int i = 0; i < d->n_params; i++) {
            if (d->params[i].integer) lua_pushinteger(L, (lua_Integer)s->values[i]);
            else lua_pushnumber(L, s->values[i]);
            lua_setfield(L, -2, d->params[i].name);
        }
    } else if (strcmp(key, "options") == 0) {
        lua_newtable(L);
        if (d->composite) {
            lua_getiuservalue(L, 1, 1);
            for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, -1); i++) {
                lua_rawgeti(L, -1, i);
                strategy_box *part = lua_touserdata(L, -1);
                lua_pop(L, 1);
                lua_pushvalue(L, -2);
                add_options(L, part);
                lua_pop(L, 1);
            }
            lua_pop(L, 1);
        } else {
            add_options(L, s);
        }
    } else if (strcmp(key, "parts") == 0) {
        if (!d->composite) return 0;
        lua_getiuservalue(L, 1, 1);
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        lua_createtable(L, (int)n, 0); /* a copy: the parts are fixed */
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -2, i);
            lua_rawseti(L, -2, i);
        }
    } else if (strcmp(key, "description") == 0) {
        push_description(L, 1, true);
    } else {
        luaL_getmetafield(L, 1, "methods");
        lua_getfield(L, -1, key);
    }
    return 1;
}

static int s_tostring(lua_State *L) {
    check_strategy(L, 1);
    push_description(L, 1, true);
    lua_pushfstring(L, "pio.Strategy(%s)", lua_tostring(L, -1));
    return 1;
}

/* Equal when they describe the same choice. */
static int s_eq(lua_State *L) {
    check_strategy(L, 1);
    check_strategy(L, 2);
    push_description(L, 1, true);
    push_description(L, 2, true);
    lua_pushboolean(L, lua_rawequal(L, -1, -2));
    return 1;
}

void pio_lua_open_strategy(lua_State *L) {
    static const luaL_Reg methods[] = {{"supports", s_supports}, {NULL, NULL}};
    static const luaL_Reg meta[] = {
        {"__index", s_index}, {"__tostring", s_tostring}, {"__eq", s_eq}, {NULL, NULL},
    };
    luaL_newmetatable(L, STRATEGY_MT);
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "methods"); /* strategy.lua adds Lua sugar here */
    lua_setfield(L, -3, "Strategy");
    lua_pop(L, 1);

    lua_pushcfunction(L, l_strategy);
    lua_setfield(L, -2, "strategy");
    lua_pushcfunction(L, l_strategies);
    lua_setfield(L, -2, "strategies");
}
