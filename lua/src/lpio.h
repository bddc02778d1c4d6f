/* lua/src/lpio.h: what the binding files share. Only lua/src/ includes lua.h.
 *
 * Conventions (from liolib): misuse raises a Lua error; failures of the
 * environment (missing file, out of memory) return `nil, message`. */
#ifndef PIO_LPIO_H
#define PIO_LPIO_H

#include <lauxlib.h>
#include <lua.h>

#include "pio/error.h"
#include "pio/tensor.h"

/* The Lua module: `require "pio.core"` (lua/pio/init.lua builds `pio` on it). */
int luaopen_pio_core(lua_State *L);

/* Per-type registration, called by luaopen_pio_core with the module table on top. */
void pio_lua_open_tensor(lua_State *L);
void pio_lua_open_tokenizer(lua_State *L);
void pio_lua_open_model(lua_State *L);
void pio_lua_open_safetensors(lua_State *L);
void pio_lua_open_strategy(lua_State *L);
void pio_lua_open_plugin(lua_State *L);
void pio_lua_open_scheduler(lua_State *L);

/* A tokenizer userdata borrowing tok; the value at index owner is kept alive. */
struct pio_tokenizer;
void pio_lua_push_borrowed_tokenizer(lua_State *L, const struct pio_tokenizer *tok, int owner);

/* Raises err's message as a Lua error (does not return). */
int pio_lua_raise(lua_State *L, const pio_error *err);
/* Misuse raises; environment failures push nil, message and return 2. */
int pio_lua_fail(lua_State *L, const pio_error *err);

/* Tensors: pushes a new pio.Tensor userdata taking ownership of t. */
void pio_lua_push_tensor(lua_State *L, pio_tensor *t);
pio_tensor *pio_lua_check_tensor(lua_State *L, int arg);

/* Models and generations for other bindings (l_scheduler.c). check_model
 * raises when the model was freed; model_or_null returns NULL then (for
 * finalizers). take_generation takes a pio.Generation's generation over,
 * leaving the userdata freed. */
struct pio_model;
struct pio_generation;
struct pio_model *pio_lua_check_model(lua_State *L, int arg);
struct pio_model *pio_lua_model_or_null(lua_State *L, int idx);
struct pio_generation *pio_lua_take_generation(lua_State *L, int arg);

/* Reads a Lua array of 0-based token ids; the result is lua_newuserdatauv-owned
 * scratch left on the stack (freed by the GC); *n gets the count. */
int32_t *pio_lua_check_ids(lua_State *L, int arg, size_t *n);

#endif
