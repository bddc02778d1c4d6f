/* pio.Tensor: tensors in Lua. Dimensions are 1-based here (Lua convention)
 * and converted to the core's 0-based ones; negative dims count from the end. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cpu_ops.h"
#include "lpio.h"

#define TENSOR_MT "pio.Tensor"

/* The userdata holds a pointer: NULL once freed (like liolib's closed file). */
typedef struct { pio_tensor *t; } tensor_box;

void pio_lua_push_tensor(lua_State *L, pio_tensor *t) {
    tensor_box *box = lua_newuserdatauv(L, sizeof *box, 0);
    box->t = NULL; /* safe state before anything can fail */
    luaL_setmetatable(L, TENSOR_MT);
    box->t = t;
}

pio_tensor *pio_lua_check_tensor(lua_State *L, int arg) {
    tensor_box *box = luaL_checkudata(L, arg, TENSOR_MT);
    if (!box->t) luaL_argerror(L, arg, "tensor has been freed");
    return box->t;
}

static pio_tensor *to_tensor_or_null(lua_State *L, int arg) {
    tensor_box *box = luaL_testudata(L, arg, TENSOR_MT);
    return box ? box->t : NULL;
}

/* Converts a 1-based (or negative) Lua dim to 0-based, raising if out of range. */
static int check_dim(lua_State *L, int arg, const pio_tensor *t) {
    lua_Integer d = luaL_checkinteger(L, arg);
    lua_Integer z = d < 0 ? t->ndim + d : d - 1;
    if (z < 0 || z >= t->ndim)
        luaL_error(L, "dimension %d out of range for a %d-d tensor", (int)d, t->ndim);
    return (int)z;
}

static pio_dtype opt_dtype(lua_State *L, int opts, pio_dtype fallback) {
    if (lua_type(L, opts) != LUA_TTABLE) return fallback;
    lua_getfield(L, opts, "dtype");
    pio_dtype dt = fallback;
    if (!lua_isnil(L, -1)) {
        const char *name = luaL_checkstring(L, -1);
        if (!pio_dtype_from_name(name, &dt))
            luaL_error(L, "unknown dtype '%s' (expected f32, f16 or bf16)", name);
    }
    lua_pop(L, 1);
    return dt;
}

/* Shape from a table {2, 3} at `arg` or from numbers arg, arg+1, ... */
static int read_shape(lua_State *L, int arg, int64_t *shape) {
    int ndim = 0;
    if (lua_type(L, arg) == LUA_TTABLE) {
        lua_Integer n = luaL_len(L, arg);
        if (n > PIO_MAX_DIMS) luaL_error(L, "tensors have at most %d dimensions", PIO_MAX_DIMS);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_geti(L, arg, i);
            int isnum;
            lua_Integer v = lua_tointegerx(L, -1, &isnum);
            if (!isnum) luaL_error(L, "shape entries must be integers");
            shape[ndim++] = v;
            lua_pop(L, 1);
        }
    } else {
        while (lua_type(L, arg + ndim) == LUA_TNUMBER) {
            if (ndim == PIO_MAX_DIMS)
                luaL_error(L, "tensors have at most %d dimensions", PIO_MAX_DIMS);
            shape[ndim] = luaL_checkinteger(L, arg + ndim);
            ndim++;
        }
    }
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) luaL_error(L, "shape entries must be >= 0, got %d", (int)shape[i]);
    return ndim;
}

static pio_tensor *new_or_raise(lua_State *L, pio_dtype dt, int ndim, const int64_t *shape) {
    pio_error err;
    pio_tensor *t = pio_tensor_new(dt, ndim, shape, &err);
    if (!t) pio_lua_raise(L, &err);
    return t;
}

/* ---- constructors --------------------------------------------------------- */

/* Infers the shape of nested tables: {{1,2},{3,4}} is [2, 2]. */
static int nested_shape(lua_State *L, int idx, int64_t *shape, int depth) {
    if (lua_type(L, idx) != LUA_TTABLE) return depth;
    if (depth == PIO_MAX_DIMS) luaL_error(L, "tensors have at most %d dimensions", PIO_MAX_DIMS);
    shape[depth] = (int64_t)luaL_len(L, idx);
    if (shape[depth] == 0) return depth + 1;
    lua_geti(L, idx, 1);
    int nd = nested_shape(L, lua_gettop(L), shape, depth + 1);
    lua_pop(L, 1);
    return nd;
}

static void fill_nested(lua_State *L, int idx, pio_tensor *t, int depth, int64_t *flat) {
    lua_Integer n = luaL_len(L, idx);
    if (n != t->shape[depth])
        luaL_error(L, "ragged nested table: dimension %d has %d and %d entries", depth + 1,
                   (int)t->shape[depth], (int)n);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_geti(L, idx, i);
        if (depth + 1 < t->ndim) {
            if (lua_type(L, -1) != LUA_TTABLE)
                luaL_error(L, "ragged nested table: expected a table at depth %d", depth + 2);
            fill_nested(L, lua_gettop(L), t, depth + 1, flat);
        } else {
            int isnum;
            lua_Number v = lua_tonumberx(L, -1, &isnum);
            if (!isnum) luaL_error(L, "tensor values must be numbers, got %s", luaL_typename(L, -1));
            pio_tensor_set(t, (*flat)++, (float)v);
        }
        lua_pop(L, 1);
    }
}

/* pio.tensor({{1, 2}, {3, 4}}, {dtype=}) from values, or pio.tensor(2, 3) zeros of a shape. */
static int l_tensor(lua_State *L) {
    int64_t shape[PIO_MAX_DIMS];
    if (lua_type(L, 1) == LUA_TTABLE) {
        int ndim = nested_shape(L, 1, shape, 0);
        pio_tensor *t = new_or_raise(L, opt_dtype(L, 2, PIO_F32), ndim, shape);
        pio_lua_push_tensor(L, t);
        int64_t flat = 0;
        if (pio_tensor_numel(t) > 0) fill_nested(L, 1, t, 0, &flat);
        return 1;
    }
    if (lua_type(L, 1) != LUA_TNUMBER)
        return luaL_argerror(L, 1, "a table of values or a shape expected");
    int ndim = read_shape(L, 1, shape);
    pio_lua_push_tensor(L, new_or_raise(L, opt_dtype(L, ndim + 1, PIO_F32), ndim, shape));
    return 1;
}

static int filled(lua_State *L, float value, bool random) {
    int64_t shape[PIO_MAX_DIMS];
    int ndim = read_shape(L, 1, shape);
    int opts = lua_type(L, 1) == LUA_TTABLE ? 2 : ndim + 1;
    pio_tensor *t = new_or_raise(L, opt_dtype(L, opts, PIO_F32), ndim, shape);
    pio_lua_push_tensor(L, t);
    uint64_t seed = 0;
    if (lua_type(L, opts) == LUA_TTABLE) {
        lua_getfield(L, opts, "seed");
        seed = (uint64_t)luaL_optinteger(L, -1, 0);
        lua_pop(L, 1);
    }
    int64_t n = pio_tensor_numel(t);
    uint64_t state = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
    for (int64_t i = 0; i < n; i++) {
        float v = value;
        if (random) { /* Box–Muller over a splitmix64 stream: same seed, same numbers */
            uint64_t z[2];
            for (int k = 0; k < 2; k++) {
                uint64_t x = (state += 0x9e3779b97f4a7c15ull);
                x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
                x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
                z[k] = x ^ (x >> 31);
            }
            double u1 = ((z[0] >> 11) + 1.0) * 0x1.0p-53, u2 = (z[1] >> 11) * 0x1.0p-53;
            v = (float)(sqrt(-2.0 * log(u1)) * cos(2 * M_PI * u2));
        }
        pio_tensor_set(t, i, v);
    }
    return 1;
}

static int l_zeros(lua_State *L) { return filled(L, 0.0f, false); }
static int l_ones(lua_State *L) { return filled(L, 1.0f, false); }
static int l_randn(lua_State *L) { return filled(L, 0.0f, true); }

/* ---- inspection ----------------------------------------------------------- */

static int t_shape(lua_State *L) {
    pio_tensor *t = pio_lua_check_tensor(L, 1);
    lua_createtable(L, t->ndim, 0);
    for (int i = 0; i < t->ndim; i++) {
        lua_pushinteger(L, t->shape[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int t_dtype(lua_State *L) {
    lua_pushstring(L, pio_dtype_info(pio_lua_check_tensor(L, 1)->dtype)->name);
    return 1;
}

static int t_numel(lua_State *L) {
    lua_pushinteger(L, pio_tensor_numel(pio_lua_check_tensor(L, 1)));
    return 1;
}

static void push_nested(lua_State *L, const pio_tensor *t, int depth, int64_t *flat) {
    if (t->ndim == 0) {
        lua_pushnumber(L, pio_tensor_get(t, (*flat)++));
        return;
    }
    lua_createtable(L, (int)t->shape[depth], 0);
    for (int64_t i = 0; i < t->shape[depth]; i++) {
        if (depth + 1 < t->ndim) push_nested(L, t, depth + 1, flat);
        else lua_pushnumber(L, pio_tensor_get(t, (*flat)++));
        lua_rawseti(L, -2, i + 1);
    }
}

static int t_table(lua_State *L) {
    pio_tensor *t = pio_lua_check_tensor(L, 1);
    int64_t flat = 0;
    push_nested(L, t, 0, &flat);
    return 1;
}

/* "pio.Tensor(f32, [2, 3], cpu) [[1, 2, 3], [4, 5, 6]]" with at most 6 values per row. */
static void preview(luaL_Buffer *b, const pio_tensor *t, int depth, int64_t base) {
    char num[32];
    if (t->ndim == 0) {
        snprintf(num, sizeof num, "%.6g", pio_tensor_get(t, 0));
        luaL_addstring(b, num);
        return;
    }
    int64_t inner = 1;
    for (int i = depth + 1; i < t->ndim; i++) inner *= t->shape[i];
    luaL_addchar(b, '[');
    for (int64_t i = 0; i < t->shape[depth]; i++) {
        if (i) luaL_addstring(b, ", ");
        if (i == 3 && t->shape[depth] > 6) {
            luaL_addstring(b, "...");
            i = t->shape[depth] - 3;
            luaL_addstring(b, ", ");
        }
        if (depth + 1 < t->ndim) {
            preview(b, t, depth + 1, base + i * inner);
        } else {
            snprintf(num, sizeof num, "%.6g", pio_tensor_get(t, base + i));
            luaL_addstring(b, num);
        }
    }
    luaL_addchar(b, ']');
}

static int t_tostring(lua_State *L) {
    tensor_box *box = luaL_checkudata(L, 1, TENSOR_MT);
    if (!box->t) {
        lua_pushliteral(L, "pio.Tensor (freed)");
        return 1;
    }
    const pio_tensor *t = box->t;
    char shape[96];
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_pushfstring(L, "pio.Tensor(%s, %s, %s) ", pio_dtype_info(t->dtype)->name,
                    pio_shape_str(t, shape, sizeof shape),
                    pio_device_name(t->storage->device));
    luaL_addvalue(&b);
    if (pio_tensor_numel(t) > 0) preview(&b, t, 0, 0);
    luaL_pushresult(&b);
    return 1;
}

/* ---- views and copies ----------------------------------------------------- */

static int push_or_raise(lua_State *L, pio_tensor *t, const pio_error *err) {
    if (!t) return pio_lua_raise(L, err);
    pio_lua_push_tensor(L, t);
    return 1;
}

static int t_view(lua_State *L) {
    pio_tensor *t = pio_lua_check_tensor(L, 1);
    int64_t shape[PIO_MAX_DIMS];
    int ndim = lua_type(L, 2) == LUA_TTABLE ? (int)luaL_len(L, 2) : lua_gettop(L) - 1;
    if (ndim < 1 || ndim > PIO_MAX_DIMS)
        return luaL_error(L, "view: give 1 to %d sizes", PIO_MAX_DIMS);
    for (int i = 0; i < ndim; i++) {
        if (lua_type(L, 2) == LUA_TTABLE) {
            lua_geti(L, 2, i + 1);
            shape[i] = luaL_checkinteger(L, -1);
            lua_pop(L, 1);
        } else {
            shape[i] = luaL_checkinteger(L, i + 2);
        }
    }
    pio_error err;
    return push_or_raise(L, pio_tensor_view(t, ndim, shape, &err), &err);
}

static int t_transpose(lua_State *L) {
    pio_tensor *t = pio_lua_check_tensor(L, 1);
    int a = check_dim(L, 2, t), b = check_dim(L, 3, t);
    pio_error err;
    return push_or_raise(L, pio_tensor_transpose(t, a, b, &err), &err);
}

static int t_contiguous(lua_State *L) {
    pio_error err;
    return push_or_raise(L, pio_tensor_contiguous(pio_lua_check_tensor(L, 1), &err), &err);
}

static int t_to(lua_State *L) {
    pio_tensor *t = pio_lua_check_tensor(L, 1);
    const char *name = luaL_checkstring(L, 2);
    pio_dtype dt;
    if (!pio_dtype_from_name(name, &dt))
        return luaL_error(L, "unknown dtype '%s' (expected f32, f16 or bf16)", name);
    pio_error err;
    return push_or_raise(L, pio_tensor_to(t, dt, &err), &err);
}

/* An f32 contiguous copy for kernels that want one (pushed on the stack so the
 * GC owns it if a later step raises). */
static pio_tensor *f32_copy(lua_State *L, const pio_tensor *t) {
    pio_error err;
    pio_tensor *c = pio_tensor_to(t, PIO_F32, &err);
    if (!c) pio_lua_raise(L, &err);
    pio_lua_push_tensor(L, c);
    return c;
}

/* ---- arithmetic ------------------------------------------------------------ */

static int arith(lua_State *L, pio_binary_op op) {
    static const char *const names[] = {"add", "sub", "mul", "div"};
    pio_tensor *a = to_tensor_or_null(L, 1), *b = to_tensor_or_null(L, 2);
    if (!a && !b) return luaL_error(L, "%s: a pio.Tensor expected", names[op]);
    if ((lua_type(L, 1) == LUA_TUSERDATA && !a) || (lua_type(L, 2) == LUA_TUSERDATA && !b))
        return luaL_error(L, "%s: operand is a freed tensor", names[op]);
    pio_dtype out_dt = a ? a->dtype : b->dtype;
    if (a && b && !pio_tensor_same_shape(a, b) && pio_tensor_numel(b) != 1) {
        char sa[96], sb[96];
        return luaL_error(L, "%s: shapes %s and %s do not match", names[op],
                          pio_shape_str(a, sa, sizeof sa), pio_shape_str(b, sb, sizeof sb));
    }
    /* Numbers become one-element tensors; the kernel broadcasts them. */
    int64_t one = 1;
    pio_tensor *ta, *tb;
    if (a) ta = f32_copy(L, a);
    else {
        ta = new_or_raise(L, PIO_F32, 1, &one);
        pio_lua_push_tensor(L, ta);
        pio_tensor_set(ta, 0, (float)luaL_checknumber(L, 1));
    }
    if (b) tb = f32_copy(L, b);
    else {
        tb = new_or_raise(L, PIO_F32, 1, &one);
        pio_lua_push_tensor(L, tb);
        pio_tensor_set(tb, 0, (float)luaL_checknumber(L, 2));
    }
    /* number ∘ tensor: the result has the tensor's shape. */
    pio_tensor *shape_src = a ? ta : tb;
    pio_tensor *out = new_or_raise(L, PIO_F32, shape_src->ndim, shape_src->shape);
    pio_lua_push_tensor(L, out);
    pio_error err;
    pio_status st;
    if (!a) { /* n ∘ t: compute with a full tensor of n on the left */
        pio_tensor *full = new_or_raise(L, PIO_F32, tb->ndim, tb->shape);
        pio_lua_push_tensor(L, full);
        float v = pio_tensor_get(ta, 0);
        for (int64_t i = 0; i < pio_tensor_numel(full); i++) pio_tensor_set(full, i, v);
        st = pio_cpu_binary(op, full, tb, out, &err);
        lua_pop(L, 1);
    } else {
        st = pio_cpu_binary(op, ta, tb, out, &err);
    }
    if (st) return pio_lua_raise(L, &err);
    if (out_dt != PIO_F32) return push_or_raise(L, pio_tensor_to(out, out_dt, &err), &err);
    return 1;
}

static int t_add(lua_State *L) { return arith(L, PIO_ADD); }
static int t_sub(lua_State *L) { return arith(L, PIO_SUB); }
static int t_mul(lua_State *L) { return arith(L, PIO_MUL); }
static int t_div(lua_State *L) { return arith(L, PIO_DIV); }

static int t_unm(lua_State *L) {
    lua_settop(L, 1);
    lua_pushnumber(L, -1);
    return arith(L, PIO_MUL);
}

/* a [n, k] · b [k, m] → [n, m] (f32). */
static int t_matmul(lua_State *L) {
    pio_tensor *a = pio_lua_check_tensor(L, 1), *b = pio_lua_check_tensor(L, 2);
    char sa[96], sb[96];
    if (a->ndim != 2 || b->ndim != 2 || a->shape[1] != b->shape[0])
        return luaL_error(L, "matmul: shapes %s and %s are not compatible (want [n, k] and [k, m])",
                          pio_shape_str(a, sa, sizeof sa), pio_shape_str(b, sb, sizeof sb));
    pio_error err;
    pio_tensor *bt = pio_tensor_transpose(b, 0, 1, &err);
    if (!bt) return pio_lua_raise(L, &err);
    pio_lua_push_tensor(L, bt);
    pio_tensor *x = f32_copy(L, a), *w = f32_copy(L, bt);
    int64_t shape[2] = {a->shape[0], b->shape[1]};
    pio_tensor *y = new_or_raise(L, PIO_F32, 2, shape);
    pio_lua_push_tensor(L, y);
    if (pio_cpu_matmul(NULL, x, w, y, &err)) return pio_lua_raise(L, &err);
    return 1;
}

/* Softmax over a dimension (default: the last). */
static int t_softmax(lua_State *L) {
    pio_tensor *t = pio_lua_check_tensor(L, 1);
    int dim = lua_isnoneornil(L, 2) ? t->ndim - 1 : check_dim(L, 2, t);
    pio_error err;
    pio_tensor *moved = pio_tensor_transpose(t, dim, t->ndim - 1, &err);
    if (!moved) return pio_lua_raise(L, &err);
    pio_lua_push_tensor(L, moved);
    pio_tensor *work = f32_copy(L, moved);
    if (pio_cpu_softmax(work, &err)) return pio_lua_raise(L, &err);
    pio_tensor *back = pio_tensor_transpose(work, dim, t->ndim - 1, &err);
    if (!back) return pio_lua_raise(L, &err);
    pio_lua_push_tensor(L, back);
    return push_or_raise(L, pio_tensor_to(back, t->dtype, &err), &err);
}

static int t_rmsnorm(lua_State *L) {
    pio_tensor *t = pio_lua_check_tensor(L, 1), *w = pio_lua_check_tensor(L, 2);
    float eps = (float)luaL_optnumber(L, 3, 1e-6);
    pio_tensor *x = f32_copy(L, t), *wf = f32_copy(L, w);
    pio_tensor *y = new_or_raise(L, PIO_F32, x->ndim, x->shape);
    pio_lua_push_tensor(L, y);
    pio_error err;
    if (pio_cpu_rmsnorm(NULL, x, wf, eps, y, false, &err)) return pio_lua_raise(L, &err);
    return 1;
}

/* t:free() releases the storage now; `<close>` and __gc do the same. */
static int t_free(lua_State *L) {
    tensor_box *box = luaL_checkudata(L, 1, TENSOR_MT);
    pio_tensor_free(box->t);
    box->t = NULL;
    return 0;
}

static int t_eq(lua_State *L) {
    tensor_box *a = luaL_testudata(L, 1, TENSOR_MT), *b = luaL_testudata(L, 2, TENSOR_MT);
    lua_pushboolean(L, a && b && a->t == b->t);
    return 1;
}

void pio_lua_open_tensor(lua_State *L) {
    static const luaL_Reg methods[] = {
        {"shape", t_shape},         {"dtype", t_dtype},     {"numel", t_numel},
        {"table", t_table},         {"view", t_view},       {"transpose", t_transpose},
        {"contiguous", t_contiguous}, {"to", t_to},         {"matmul", t_matmul},
        {"softmax", t_softmax},     {"rmsnorm", t_rmsnorm}, {"free", t_free},
        {NULL, NULL},
    };
    static const luaL_Reg meta[] = {
        {"__add", t_add}, {"__sub", t_sub}, {"__mul", t_mul}, {"__div", t_div},
        {"__unm", t_unm}, {"__eq", t_eq},   {"__tostring", t_tostring},
        {"__gc", t_free}, {"__close", t_free}, {NULL, NULL},
    };
    luaL_newmetatable(L, TENSOR_MT);
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);

    static const luaL_Reg funcs[] = {
        {"tensor", l_tensor}, {"zeros", l_zeros}, {"ones", l_ones}, {"randn", l_randn},
        {NULL, NULL},
    };
    luaL_setfuncs(L, funcs, 0);
}
