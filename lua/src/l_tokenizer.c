/* pio.Tokenizer: encode / decode in Lua. A tokenizer from pio.tokenizer(path)
 * is owned by its userdata; model.tokenizer borrows the model's and keeps the
 * model alive through its user value. Ids are 0-based, as in the vocabulary.
 * Chat templates are Lua (pio.chat); apply_chat_template hands over to it. */
#include <stdlib.h>
#include <string.h>

#include "lpio.h"
#include "pio/tokenizer.h"

#define TOKENIZER_MT "pio.Tokenizer"

typedef struct {
    pio_tokenizer *tok;
    bool owned;
} tokenizer_box;

static tokenizer_box *check_box(lua_State *L, int arg) {
    tokenizer_box *box = luaL_checkudata(L, arg, TOKENIZER_MT);
    if (!box->tok) luaL_argerror(L, arg, "tokenizer has been freed");
    return box;
}

/* Pushes a borrowed tokenizer whose owner (at index owner) must outlive it. */
void pio_lua_push_borrowed_tokenizer(lua_State *L, const pio_tokenizer *tok, int owner) {
    owner = lua_absindex(L, owner);
    tokenizer_box *box = lua_newuserdatauv(L, sizeof *box, 1);
    box->tok = NULL;
    box->owned = false;
    luaL_setmetatable(L, TOKENIZER_MT);
    lua_pushvalue(L, owner);
    lua_setiuservalue(L, -2, 1);
    box->tok = (pio_tokenizer *)tok;
}

static int l_tokenizer(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    tokenizer_box *box = lua_newuserdatauv(L, sizeof *box, 1);
    box->tok = NULL;
    box->owned = true;
    luaL_setmetatable(L, TOKENIZER_MT);
    pio_error err;
    box->tok = pio_tokenizer_load(path, &err);
    if (!box->tok) return pio_lua_fail(L, &err);
    return 1;
}

/* An options table: nil or a table whose keys are all in `known` (NULL-ended). */
static void check_opts(lua_State *L, int arg, const char *const *known) {
    if (lua_isnoneornil(L, arg)) return;
    luaL_checktype(L, arg, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, arg)) {
        lua_pop(L, 1);
        bool ok = false;
        if (lua_type(L, -1) == LUA_TSTRING)
            for (size_t i = 0; known[i] && !ok; i++) ok = !strcmp(lua_tostring(L, -1), known[i]);
        if (!ok) {
            lua_pushvalue(L, -1);
            const char *key = luaL_tolstring(L, -1, NULL);
            luaL_argerror(L, arg, lua_pushfstring(L, "unknown option '%s'", key));
        }
    }
}

static bool opt_flag(lua_State *L, int opts, const char *key, bool fallback) {
    if (lua_type(L, opts) != LUA_TTABLE) return fallback;
    lua_getfield(L, opts, key);
    bool v = lua_isnil(L, -1) ? fallback : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* tok:encode(text, {special=true, add_special=false}) → {ids...}
 * special: added tokens in the text are matched (tokenizers' default);
 * add_special: the post-processor's tokens (BOS and the like) are added, as
 * tokenizers' add_special_tokens=True does. */
static int tok_encode(lua_State *L) {
    static const char *const known[] = {"special", "add_special", NULL};
    tokenizer_box *box = check_box(L, 1);
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    check_opts(L, 3, known);
    bool special = opt_flag(L, 3, "special", true);
    bool add_special = opt_flag(L, 3, "add_special", false);
    int32_t *ids;
    size_t n;
    pio_error err;
    if (pio_tokenizer_encode_ex(box->tok, text, len, special, add_special, &ids, &n, &err))
        return pio_lua_raise(L, &err);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushinteger(L, ids[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    free(ids);
    return 1;
}

/* tok:decode(ids, {skip_special=false}) → string */
static int tok_decode(lua_State *L) {
    static const char *const known[] = {"skip_special", NULL};
    tokenizer_box *box = check_box(L, 1);
    check_opts(L, 3, known);
    bool skip = opt_flag(L, 3, "skip_special", false);
    size_t n;
    int32_t *ids = pio_lua_check_ids(L, 2, &n); /* pushes its scratch: read opts first */
    char *text;
    size_t len;
    pio_error err;
    if (pio_tokenizer_decode(box->tok, ids, n, skip, &text, &len, &err))
        return pio_lua_raise(L, &err);
    lua_pushlstring(L, text, len);
    free(text);
    return 1;
}

static int tok_n_vocab(lua_State *L) {
    lua_pushinteger(L, pio_tokenizer_n_vocab(check_box(L, 1)->tok));
    return 1;
}

static int tok_token_id(lua_State *L) {
    int32_t id = pio_tokenizer_token_id(check_box(L, 1)->tok, luaL_checkstring(L, 2));
    if (id < 0) lua_pushnil(L);
    else lua_pushinteger(L, id);
    return 1;
}

static int tok_token(lua_State *L) {
    tokenizer_box *box = check_box(L, 1);
    lua_Integer id = luaL_checkinteger(L, 2);
    const char *s = id >= 0 && id <= INT32_MAX ? pio_tokenizer_token(box->tok, (int32_t)id) : NULL;
    if (s) lua_pushstring(L, s);
    else lua_pushnil(L);
    return 1;
}

static int tok_is_special(lua_State *L) {
    tokenizer_box *box = check_box(L, 1);
    lua_Integer id = luaL_checkinteger(L, 2);
    lua_pushboolean(L, id >= 0 && id <= INT32_MAX && pio_tokenizer_is_special(box->tok, (int32_t)id));
    return 1;
}

static int tok_dir(lua_State *L) {
    lua_pushstring(L, pio_tokenizer_dir(check_box(L, 1)->tok));
    return 1;
}

/* Calls require("pio.chat")[name](self, ...) with the method's arguments. */
static int call_chat(lua_State *L, const char *name) {
    check_box(L, 1);
    int n = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "pio.chat");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, name);
    lua_remove(L, -2);
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

/* tok:apply_chat_template(messages, {add_generation_prompt=, tools=, enable_thinking=, ...}) → text */
static int tok_apply_chat_template(lua_State *L) {
    return call_chat(L, "apply_chat_template");
}

/* tok:chat_template([with_tools]) → template text (nil if none), where it came from */
static int tok_chat_template(lua_State *L) {
    return call_chat(L, "template_of");
}

static int tok_gc(lua_State *L) {
    tokenizer_box *box = luaL_checkudata(L, 1, TOKENIZER_MT);
    if (box->owned) pio_tokenizer_free(box->tok);
    box->tok = NULL;
    return 0;
}

static int tok_tostring(lua_State *L) {
    tokenizer_box *box = luaL_checkudata(L, 1, TOKENIZER_MT);
    if (box->tok) lua_pushfstring(L, "pio.Tokenizer(%d tokens)", (int)pio_tokenizer_n_vocab(box->tok));
    else lua_pushliteral(L, "pio.Tokenizer (freed)");
    return 1;
}

void pio_lua_open_tokenizer(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"encode", tok_encode},
        {"decode", tok_decode},
        {"apply_chat_template", tok_apply_chat_template},
        {"chat_template", tok_chat_template},
        {"token_to_id", tok_token_id},
        {"id_to_token", tok_token},
        {"vocab_size", tok_n_vocab},
        {"is_special", tok_is_special},
        {"dir", tok_dir},
        /* the foundation's names, kept */
        {"n_vocab", tok_n_vocab},
        {"token_id", tok_token_id},
        {"token", tok_token},
        {"free", tok_gc},
        {NULL, NULL},
    };
    static const luaL_Reg meta[] = {
        {"__gc", tok_gc}, {"__close", tok_gc}, {"__tostring", tok_tostring}, {NULL, NULL},
    };
    luaL_newmetatable(L, TOKENIZER_MT);
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_tokenizer);
    lua_setfield(L, -2, "tokenizer");
}
