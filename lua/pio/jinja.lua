--- pio.jinja: a Jinja2 interpreter for chat templates, written to render
-- byte for byte what Python's jinja2 renders in the environment transformers
-- builds for chat templates (ImmutableSandboxedEnvironment with trim_blocks,
-- lstrip_blocks, the loopcontrols extension, the `generation` tag and the
-- globals raise_exception, strftime_now, namespace, dict, range).
--
--   local jinja = require "pio.jinja"
--   local tpl = jinja.compile(text, "chat template")   -- raises on bad syntax
--   local s = tpl:render(vars)                          -- vars: a Lua table
--
-- Values follow Python's: strings are UTF-8 (indexing, slicing and length
-- count code points), numbers keep Lua's integer/float subtypes (Python's int
-- and float), lists and dicts are pio.json arrays and objects (dicts keep
-- their key order), and `none` is pio.json.null. What Python would print
-- (str(), repr() of containers, float repr) is reproduced.
--
-- Not supported, and refused with the construct and the line named:
-- template inheritance and loading (extends, block, include, import, from),
-- call blocks, filter blocks, autoescape blocks, i18n, and the filters and
-- tests listed as unsupported below. Case mapping (upper, lower, title, ...)
-- knows ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic.
--
-- Errors are raised as strings "<name> line <n>: <message>".
local json = require "pio.json"

local M = {}

local null, ARRAY, OBJECT = json.null, json.ARRAY, json.OBJECT
local concat, insert = table.concat, table.insert
local sub, byte, char, find, format, rep = string.sub, string.byte, string.char, string.find,
  string.format, string.rep
local mtype, floor = math.type, math.floor

-- ---- value types beyond pio.json's ---------------------------------------------

local UNDEF = { __name = "Undefined" }
local MARKUP = { __name = "Markup" }
local CALLABLE = { __name = "callable" }
local NAMESPACE = { __name = "Namespace" }
local LOOP = { __name = "LoopContext" }

local function undefined(hint) return setmetatable({ hint = hint }, UNDEF) end
local function is_undef(v) return getmetatable(v) == UNDEF end
local function markup(s) return setmetatable({ s = s }, MARKUP) end
local function callable(name, fn) return setmetatable({ name = name, fn = fn }, CALLABLE) end

local function new_list(items, n)
  items = items or {}
  items.n = n or #items
  return setmetatable(items, ARRAY)
end
local function new_tuple(items, n)
  local t = new_list(items, n)
  t.tuple = true
  return t
end
local new_dict, dict_set = json.object, json.set

--- Thrown (as a table) by errors, so the renderer can add the line.
local TemplateError = {}
TemplateError.__index = TemplateError
local function raise(msg, line) error(setmetatable({ msg = msg, line = line }, TemplateError), 0) end

-- ---- UTF-8 and Python's str helpers ----------------------------------------------

local function cps(s) -- code points of s (invalid UTF-8: bytes)
  local out, n = {}, 0
  if utf8.len(s) then
    for _, c in utf8.codes(s, true) do n = n + 1; out[n] = c end
  else
    for i = 1, #s do out[i] = byte(s, i) end
    n = #s
  end
  return out, n
end
local function from_cps(list, i, j)
  local out = {}
  for k = i or 1, j or #list do out[#out + 1] = utf8.char(list[k]) end
  return concat(out)
end
local function ulen(s) return utf8.len(s) or #s end

local PY_SPACE = { [9] = 1, [10] = 1, [11] = 1, [12] = 1, [13] = 1, [28] = 1, [29] = 1, [30] = 1,
  [31] = 1, [32] = 1, [0x85] = 1, [0xa0] = 1, [0x1680] = 1, [0x2028] = 1, [0x2029] = 1,
  [0x202f] = 1, [0x205f] = 1, [0x3000] = 1 }
for c = 0x2000, 0x200a do PY_SPACE[c] = 1 end
local function is_space(c) return PY_SPACE[c] ~= nil end

-- Case mapping for the scripts templates and messages commonly use.
local UPPER, LOWER = {}, {}
local function pair(lo, up) UPPER[lo] = up; LOWER[up] = lo end
for c = 0x61, 0x7a do pair(c, c - 32) end
for c = 0xe0, 0xfe do if c ~= 0xf7 then pair(c, c - 32) end end
UPPER[0xff] = 0x178; LOWER[0x178] = 0xff
for c = 0x100, 0x17f, 2 do
  if c ~= 0x130 and c ~= 0x138 and not (c >= 0x139 and c <= 0x148) and not (c >= 0x179 and c <= 0x17e) then
    pair(c + 1, c)
  end
end
for c = 0x139, 0x147, 2 do pair(c + 1, c) end
for c = 0x179, 0x17d, 2 do pair(c + 1, c) end
LOWER[0x130] = 0x69 -- İ
UPPER[0x131] = 0x49 -- ı
UPPER[0x17f] = 0x53 -- ſ
for c = 0x3b1, 0x3c9 do if c ~= 0x3c2 then pair(c, c - 32) end end
UPPER[0x3c2] = 0x3a3
pair(0x3ac, 0x386); pair(0x3ad, 0x388); pair(0x3ae, 0x389); pair(0x3af, 0x38a)
pair(0x3cc, 0x38c); pair(0x3cd, 0x38e); pair(0x3ce, 0x38f)
for c = 0x430, 0x44f do pair(c, c - 32) end
for c = 0x450, 0x45f do pair(c, c - 80) end
local SPECIAL_UPPER = { [0xdf] = "SS" }

local function map_case(s, tbl, special)
  if not find(s, "[\128-\255]") then
    if tbl == UPPER then return s:upper() end
    return s:lower()
  end
  local list, n = cps(s)
  local out = {}
  for i = 1, n do
    local c = list[i]
    out[i] = (special and special[c]) or utf8.char(tbl[c] or c)
  end
  return concat(out)
end
local function upper(s) return map_case(s, UPPER, SPECIAL_UPPER) end
local function lower(s) return map_case(s, LOWER) end
local function is_cased(c) return UPPER[c] ~= nil or LOWER[c] ~= nil end

-- ---- Python str() and repr() ---------------------------------------------------------

local py_str, py_repr

-- Characters Python's repr() escapes (not str.isprintable()), beyond ASCII controls.
local function non_printable(c)
  return (c >= 0x7f and c <= 0xa0) or c == 0xad or c == 0x1680 or (c >= 0x2000 and c <= 0x200f) or
    (c >= 0x2028 and c <= 0x202f) or (c >= 0x205f and c <= 0x2064) or (c >= 0x2066 and c <= 0x206f) or
    c == 0x3000 or (c >= 0xd800 and c <= 0xdfff) or c == 0xfeff or (c >= 0xfff9 and c <= 0xfffb) or
    (c >= 0xe000 and c <= 0xf8ff) or c >= 0xf0000 or c == 0x180e
end

local function str_repr(s)
  local q = "'"
  if find(s, "'", 1, true) and not find(s, '"', 1, true) then q = '"' end
  local list, n = cps(s)
  local out = { q }
  for i = 1, n do
    local c = list[i]
    local e
    if c == 92 then e = "\\\\"
    elseif c == byte(q) then e = "\\" .. q
    elseif c == 10 then e = "\\n"
    elseif c == 13 then e = "\\r"
    elseif c == 9 then e = "\\t"
    elseif c < 0x20 or non_printable(c) then
      if c < 0x100 then e = format("\\x%02x", c)
      elseif c < 0x10000 then e = format("\\u%04x", c)
      else e = format("\\U%08x", c) end
    else e = utf8.char(c) end
    out[#out + 1] = e
  end
  out[#out + 1] = q
  return concat(out)
end

function py_repr(v, depth)
  depth = (depth or 0) + 1
  if depth > 100 then raise("maximum recursion depth exceeded while getting the repr of an object") end
  local t = type(v)
  if t == "string" then return str_repr(v) end
  if t == "table" then
    local mt = getmetatable(v)
    if mt == ARRAY then
      if v.range then return v.range end
      local parts = {}
      for i = 1, v.n do parts[i] = py_repr(v[i], depth) end
      if v.tuple then
        if v.n == 1 then return "(" .. parts[1] .. ",)" end
        return "(" .. concat(parts, ", ") .. ")"
      end
      return "[" .. concat(parts, ", ") .. "]"
    elseif mt == OBJECT then
      local parts = {}
      for i, k in ipairs(v.keys) do parts[i] = py_repr(k, depth) .. ": " .. py_repr(v.map[k], depth) end
      return "{" .. concat(parts, ", ") .. "}"
    elseif mt == MARKUP then
      return "Markup(" .. str_repr(v.s) .. ")"
    elseif mt == UNDEF then
      return "Undefined"
    end
  end
  return py_str(v)
end

function py_str(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then
    if mtype(v) == "integer" then return tostring(v) end
    return json.float_repr(v)
  end
  if t == "boolean" then return v and "True" or "False" end
  if v == null or v == nil then return "None" end
  local mt = getmetatable(v)
  if mt == UNDEF then return "" end
  if mt == MARKUP then return v.s end
  if mt == ARRAY or mt == OBJECT then return py_repr(v) end
  if mt == NAMESPACE then return "<Namespace " .. py_repr(v.attrs) .. ">" end
  if mt == CALLABLE then return "<function " .. v.name .. ">" end
  if mt == LOOP then return "<LoopContext>" end
  return tostring(v)
end

local function type_name(v)
  local t = type(v)
  if t == "string" then return "str" end
  if t == "number" then return mtype(v) == "integer" and "int" or "float" end
  if t == "boolean" then return "bool" end
  if v == null or v == nil then return "NoneType" end
  local mt = getmetatable(v)
  if mt == ARRAY then return v.tuple and "tuple" or "list" end
  if mt == OBJECT then return "dict" end
  if mt == UNDEF then return "Undefined" end
  if mt == MARKUP then return "Markup" end
  if mt == CALLABLE then return "function" end
  if mt == NAMESPACE then return "Namespace" end
  return t
end

local function undef_fail(u)
  raise(u.hint or "undefined value")
end

-- ---- truth, equality, ordering ------------------------------------------------------------

local function truthy(v)
  local t = type(v)
  if t == "boolean" then return v end
  if t == "string" then return v ~= "" end
  if t == "number" then return v ~= 0 end
  if v == null or v == nil then return false end
  local mt = getmetatable(v)
  if mt == UNDEF then return false end
  if mt == ARRAY then return v.n > 0 end
  if mt == OBJECT then return #v.keys > 0 end
  if mt == MARKUP then return v.s ~= "" end
  return true
end

local function as_num(v)
  if type(v) == "boolean" then return v and 1 or 0 end
  return v
end
local function is_num(v) local t = type(v); return t == "number" or t == "boolean" end
local function plain(v) -- Markup reads as its string
  if getmetatable(v) == MARKUP then return v.s end
  return v
end

local function py_eq(a, b)
  a, b = plain(a), plain(b)
  if is_num(a) and is_num(b) then return as_num(a) == as_num(b) end
  local ta, tb = type(a), type(b)
  if ta ~= tb then return false end
  if ta ~= "table" then return a == b end
  local ma, mb = getmetatable(a), getmetatable(b)
  if ma ~= mb then return false end
  if ma == ARRAY then
    if a.n ~= b.n or (a.tuple or false) ~= (b.tuple or false) then return false end
    for i = 1, a.n do if not py_eq(a[i], b[i]) then return false end end
    return true
  elseif ma == OBJECT then
    if #a.keys ~= #b.keys then return false end
    for _, k in ipairs(a.keys) do
      local bv = b.map[k]
      if bv == nil or not py_eq(a.map[k], bv) then return false end
    end
    return true
  elseif ma == UNDEF then
    return true
  end
  return rawequal(a, b)
end

local function py_lt(a, b, op)
  a, b = plain(a), plain(b)
  if is_num(a) and is_num(b) then return as_num(a) < as_num(b) end
  if type(a) == "string" and type(b) == "string" then return a < b end
  local ma, mb = getmetatable(a), getmetatable(b)
  if ma == ARRAY and mb == ARRAY and (a.tuple or false) == (b.tuple or false) then
    for i = 1, math.min(a.n, b.n) do
      if not py_eq(a[i], b[i]) then return py_lt(a[i], b[i], op) end
    end
    return a.n < b.n
  end
  if ma == UNDEF then undef_fail(a) end
  if mb == UNDEF then undef_fail(b) end
  raise(format("'%s' not supported between instances of '%s' and '%s'", op or "<", type_name(a), type_name(b)))
end

-- ---- iteration, containment, length -----------------------------------------------------

--- The items a for loop (or list()) sees: list, n.
local function py_iter(v)
  v = plain(v)
  local t = type(v)
  if t == "string" then
    local list, n = cps(v)
    for i = 1, n do list[i] = utf8.char(list[i]) end
    return list, n
  end
  local mt = getmetatable(v)
  if mt == ARRAY then return v, v.n end
  if mt == OBJECT then return v.keys, #v.keys end
  if mt == UNDEF then return {}, 0 end
  raise(format("'%s' object is not iterable", type_name(v)))
end

local function py_len(v)
  v = plain(v)
  if type(v) == "string" then return ulen(v) end
  local mt = getmetatable(v)
  if mt == ARRAY then return v.n end
  if mt == OBJECT then return #v.keys end
  if mt == UNDEF then return 0 end
  raise(format("object of type '%s' has no len()", type_name(v)))
end

local function dict_key(k) -- Python hashes 1, 1.0 and True alike
  if type(k) == "boolean" then return k and 1 or 0 end
  if getmetatable(k) == MARKUP then return k.s end
  return k
end

local function py_contains(container, item)
  container = plain(container)
  if type(container) == "string" then
    item = plain(item)
    if type(item) ~= "string" then
      raise(format("'in <string>' requires string as left operand, not %s", type_name(item)))
    end
    return find(container, item, 1, true) ~= nil
  end
  local mt = getmetatable(container)
  if mt == ARRAY then
    for i = 1, container.n do if py_eq(container[i], item) then return true end end
    return false
  elseif mt == OBJECT then
    local k = dict_key(item)
    if type(k) == "table" then return false end
    return container.map[k] ~= nil
  elseif mt == UNDEF then
    return false
  end
  raise(format("argument of type '%s' is not iterable", type_name(container)))
end

-- ---- slicing -----------------------------------------------------------------------------------

local function slice_indices(len, start, stop, step)
  step = step or 1
  if step == 0 then raise("slice step cannot be zero") end
  local function adjust(v, default, lo, hi)
    if v == nil then return default end
    if v < 0 then v = v + len; if v < lo then v = lo end
    elseif v > hi then v = hi end
    return v
  end
  if step > 0 then
    return adjust(start, 0, 0, len), adjust(stop, len, 0, len), step
  end
  return adjust(start, len - 1, -1, len - 1), adjust(stop, -1, -1, len - 1), step
end

local function slice_range(len, start, stop, step)
  local a, b, s = slice_indices(len, start, stop, step)
  local idx = {}
  if s > 0 then
    local i = a
    while i < b do idx[#idx + 1] = i; i = i + s end
  else
    local i = a
    while i > b do idx[#idx + 1] = i; i = i + s end
  end
  return idx
end

local function slice_value(v, start, stop, step)
  v = plain(v)
  if type(v) == "string" then
    local list, n = cps(v)
    local out = {}
    for _, i in ipairs(slice_range(n, start, stop, step)) do out[#out + 1] = utf8.char(list[i + 1]) end
    return concat(out)
  end
  local mt = getmetatable(v)
  if mt == ARRAY then
    local out, k = {}, 0
    for _, i in ipairs(slice_range(v.n, start, stop, step)) do k = k + 1; out[k] = v[i + 1] end
    local r = new_list(out, k)
    r.tuple = v.tuple
    return r
  end
  if mt == UNDEF then undef_fail(v) end
  raise(format("'%s' object is not subscriptable", type_name(v)))
end

-- ---- attribute and item access -------------------------------------------------------------

local str_methods, dict_methods, list_methods = {}, {}, {}
local UNSAFE = { append = "list", extend = "list", insert = "list", pop = true, remove = "list",
                 reverse = "list", sort = "list", clear = true, popitem = "dict", setdefault = "dict",
                 update = "dict" }

local function bound(obj, name, fn)
  return callable(name, function(args, kwargs) return fn(obj, args, kwargs) end)
end

local getitem

local function getattr(obj, name)
  local t = type(obj)
  if t == "string" or getmetatable(obj) == MARKUP then
    local m = str_methods[name]
    if m then return bound(plain(obj), name, m) end
    return undefined(format("'str object' has no attribute '%s'", name))
  end
  local mt = getmetatable(obj)
  if mt == OBJECT then
    local m = dict_methods[name]
    if m then return bound(obj, name, m) end
    if UNSAFE[name] == true or UNSAFE[name] == "dict" then
      raise(format("access to attribute '%s' of 'dict' object is unsafe.", name))
    end
    local v = obj.map[name]
    if v ~= nil then return v end
    return undefined(format("'dict object' has no attribute '%s'", name))
  elseif mt == ARRAY then
    local m = list_methods[name]
    if m then return bound(obj, name, m) end
    if UNSAFE[name] == true or UNSAFE[name] == "list" then
      raise(format("access to attribute '%s' of '%s' object is unsafe.", name, type_name(obj)))
    end
    return undefined(format("'%s object' has no attribute '%s'", type_name(obj), name))
  elseif mt == NAMESPACE then
    local v = obj.attrs.map[name]
    if v ~= nil then return v end
    return undefined(format("'Namespace object' has no attribute '%s'", name))
  elseif mt == LOOP then
    local v = obj.get(name)
    if v ~= nil then return v end
    return undefined(format("'LoopContext object' has no attribute '%s'", name))
  elseif mt == UNDEF then
    undef_fail(obj)
  end
  return undefined(format("'%s object' has no attribute '%s'", type_name(obj), name))
end

function getitem(obj, key)
  local mt = getmetatable(obj)
  if mt == UNDEF then undef_fail(obj) end
  key = plain(key)
  if mt == OBJECT then
    local k = dict_key(key)
    local v
    if type(k) ~= "table" then v = obj.map[k] end
    if v ~= nil then return v end
    if type(key) == "string" and dict_methods[key] then return getattr(obj, key) end
    return undefined(format("'dict object' has no attribute %s", py_repr(key)))
  end
  if mt == ARRAY or type(obj) == "string" or mt == MARKUP then
    local o = plain(obj)
    if is_num(key) and (type(key) == "boolean" or mtype(key) == "integer") then
      local n = py_len(o)
      local i = as_num(key)
      if i < 0 then i = i + n end
      if i < 0 or i >= n then
        return undefined(format("%s object has no element %s", type_name(o), py_str(key)))
      end
      if type(o) == "string" then
        local list = cps(o)
        return utf8.char(list[i + 1])
      end
      return o[i + 1]
    end
    if type(key) == "string" then return getattr(obj, key) end
    return undefined(format("'%s object' has no attribute %s", type_name(o), py_repr(key)))
  end
  if mt == NAMESPACE and type(key) == "string" then return getattr(obj, key) end
  if mt == LOOP and type(key) == "string" then return getattr(obj, key) end
  return undefined(format("'%s object' has no attribute %s", type_name(obj), py_repr(key)))
end

-- ---- arithmetic ----------------------------------------------------------------------------------

local function escape_html(s)
  return (s:gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&#34;",
                               ["'"] = "&#39;" }))
end
local function escape_value(v)
  if getmetatable(v) == MARKUP then return v.s end
  return escape_html(py_str(v))
end

local function check_operands(op, a, b)
  if is_undef(a) then undef_fail(a) end
  if is_undef(b) then undef_fail(b) end
  raise(format("unsupported operand type(s) for %s: '%s' and '%s'", op, type_name(a), type_name(b)))
end

local function py_add(a, b)
  if is_num(a) and is_num(b) then return as_num(a) + as_num(b) end
  local ma, mb = getmetatable(a), getmetatable(b)
  if ma == MARKUP or mb == MARKUP then
    -- Markup escapes the other operand, whichever side it is on.
    if (type(a) == "string" or ma == MARKUP) and (type(b) == "string" or mb == MARKUP) then
      local sa = ma == MARKUP and a.s or escape_html(a)
      local sb = mb == MARKUP and b.s or escape_html(b)
      return markup(sa .. sb)
    end
  end
  if type(a) == "string" and type(b) == "string" then return a .. b end
  if type(a) == "string" and not is_undef(b) then
    raise(format('can only concatenate str (not "%s") to str', type_name(b)))
  end
  if ma == ARRAY and mb == ARRAY and (a.tuple or false) == (b.tuple or false) then
    local out = {}
    for i = 1, a.n do out[i] = a[i] end
    for i = 1, b.n do out[a.n + i] = b[i] end
    local r = new_list(out, a.n + b.n)
    r.tuple = a.tuple
    return r
  end
  if ma == ARRAY and not is_undef(b) then
    raise(format('can only concatenate %s (not "%s") to %s', type_name(a), type_name(b), type_name(a)))
  end
  check_operands("+", a, b)
end

local function int_pow(a, b)
  local r = 1
  while b > 0 do
    if b & 1 == 1 then r = r * a end
    a = a * a
    b = b >> 1
  end
  return r
end

local function py_arith(op, a, b)
  if op == "+" then return py_add(a, b) end
  if is_num(a) and is_num(b) then
    a, b = as_num(a), as_num(b)
    if op == "-" then return a - b end
    if op == "*" then return a * b end
    if op == "/" then
      if b == 0 then raise("division by zero") end
      return a / b
    end
    if op == "//" then
      if b == 0 then raise("integer division or modulo by zero") end
      return a // b
    end
    if op == "%" then
      if b == 0 then raise("integer division or modulo by zero") end
      return a % b
    end
    if op == "**" then
      if mtype(a) == "integer" and mtype(b) == "integer" and b >= 0 then return int_pow(a, b) end
      if a == 0 and b < 0 then raise("0.0 cannot be raised to a negative power") end
      return (a + 0.0) ^ b
    end
  end
  if op == "*" then
    local s, n = a, b
    if is_num(a) then s, n = b, a end
    if is_num(n) and mtype(as_num(n)) == "integer" then
      n = as_num(n)
      if type(plain(s)) == "string" then return rep(plain(s), math.max(n, 0)) end
      if getmetatable(s) == ARRAY then
        local out, k = {}, 0
        for _ = 1, n do for i = 1, s.n do k = k + 1; out[k] = s[i] end end
        local r = new_list(out, k)
        r.tuple = s.tuple
        return r
      end
    end
  end
  if op == "%" and type(plain(a)) == "string" then
    local args = b
    if getmetatable(b) ~= ARRAY or not b.tuple then args = { b, n = 1 } end
    return M.printf(plain(a), args)
  end
  check_operands(op, a, b)
end

-- ---- string methods ---------------------------------------------------------------------------------

local function arg_str(v, what)
  v = plain(v)
  if type(v) ~= "string" then raise(format("%s must be str, not %s", what, type_name(v))) end
  return v
end

local function strip_set(chars)
  if chars == nil or chars == null then return is_space end
  local set = {}
  for _, c in ipairs((cps(arg_str(chars, "strip arg")))) do set[c] = true end
  return function(c) return set[c] ~= nil end
end

local function py_strip(s, chars, left, right)
  local list, n = cps(s)
  local test = strip_set(chars)
  local i, j = 1, n
  if left then while i <= j and test(list[i]) do i = i + 1 end end
  if right then while j >= i and test(list[j]) do j = j - 1 end end
  if i == 1 and j == n then return s end
  return from_cps(list, i, j)
end

local function split_ws(s, maxsplit, from_right)
  local list, n = cps(s)
  local words = {}
  if not from_right then
    local i = 1
    while i <= n do
      while i <= n and is_space(list[i]) do i = i + 1 end
      if i > n then break end
      if maxsplit >= 0 and #words == maxsplit then
        words[#words + 1] = from_cps(list, i, n)
        break
      end
      local j = i
      while j <= n and not is_space(list[j]) do j = j + 1 end
      words[#words + 1] = from_cps(list, i, j - 1)
      i = j
    end
    return words
  end
  local j = n
  while j >= 1 do
    while j >= 1 and is_space(list[j]) do j = j - 1 end
    if j < 1 then break end
    if maxsplit >= 0 and #words == maxsplit then
      insert(words, 1, from_cps(list, 1, j))
      break
    end
    local i = j
    while i >= 1 and not is_space(list[i]) do i = i - 1 end
    insert(words, 1, from_cps(list, i + 1, j))
    j = i
  end
  return words
end

local function split_sep(s, sep, maxsplit, from_right)
  if sep == "" then raise("empty separator") end
  local parts = {}
  if not from_right then
    local pos = 1
    while maxsplit < 0 or #parts < maxsplit do
      local a, b = find(s, sep, pos, true)
      if not a then break end
      parts[#parts + 1] = sub(s, pos, a - 1)
      pos = b + 1
    end
    parts[#parts + 1] = sub(s, pos)
    return parts
  end
  local stop = #s
  local rev = {}
  while maxsplit < 0 or #rev < maxsplit do
    -- the last occurrence of sep ending at or before stop
    local found
    local pos = 1
    while true do
      local a, b = find(s, sep, pos, true)
      if not a or b > stop then break end
      found = a
      pos = a + 1
    end
    if not found then break end
    rev[#rev + 1] = sub(s, found + #sep, stop)
    stop = found - 1
  end
  rev[#rev + 1] = sub(s, 1, stop)
  for i = #rev, 1, -1 do parts[#parts + 1] = rev[i] end
  return parts
end

local function opt_int(v, default)
  if v == nil or v == null then return default end
  v = as_num(v)
  if mtype(v) ~= "integer" then raise("an integer is required") end
  return v
end

-- Index conversions between code points (0-based) and bytes.
local function cp_offset(s, i) -- byte position of code point i (0-based), or #s + 1
  if i <= 0 then return 1 end
  local off = utf8.offset(s, i + 1)
  return off or (#s + 1)
end

local function find_in(s, subs, start, stop, from_right)
  local n = ulen(s)
  local a, b = slice_indices(n, start, stop, 1)
  if b < a then
    if ulen(subs) == 0 and a <= n and start == nil then return 0 end
    return -1
  end
  local bs, be = cp_offset(s, a), cp_offset(s, b) - 1
  local hay = sub(s, bs, be)
  local pos
  if not from_right then
    pos = find(hay, subs, 1, true)
  else
    local p = 1
    while true do
      local q = find(hay, subs, p, true)
      if not q then break end
      pos = q
      if subs == "" then if q > #hay then break end end
      p = q + 1
      if p > #hay + 1 then break end
    end
  end
  if not pos then return -1 end
  return a + ulen(sub(hay, 1, pos - 1))
end

local function title_case(s)
  local list, n = cps(s)
  local out, prev = {}, false
  for i = 1, n do
    local c = list[i]
    if prev then out[i] = utf8.char(LOWER[c] or c)
    else out[i] = SPECIAL_UPPER[c] and "Ss" or utf8.char(UPPER[c] or c) end
    prev = is_cased(c)
  end
  return concat(out)
end

local function capitalize(s)
  local list, n = cps(s)
  if n == 0 then return s end
  local out = { SPECIAL_UPPER[list[1]] and "Ss" or utf8.char(UPPER[list[1]] or list[1]) }
  for i = 2, n do out[i] = utf8.char(LOWER[list[i]] or list[i]) end
  return concat(out)
end

local function affix_test(s, args, at_end)
  local what, start, stop = args[1], args[2], args[3]
  local n = ulen(s)
  local a, b = slice_indices(n, opt_int(start), opt_int(stop), 1)
  local region = b >= a and sub(s, cp_offset(s, a), cp_offset(s, b) - 1) or nil
  local options = {}
  if getmetatable(what) == ARRAY then
    for i = 1, what.n do options[i] = arg_str(what[i], "startswith arg") end
  else
    options[1] = arg_str(what, at_end and "endswith first arg" or "startswith first arg")
  end
  if not region then return false end
  for _, o in ipairs(options) do
    if at_end then
      if o == "" or sub(region, -#o) == o then return true end
    elseif sub(region, 1, #o) == o then
      return true
    end
  end
  return false
end

local function all_cps(s, pred)
  local list, n = cps(s)
  if n == 0 then return false end
  for i = 1, n do if not pred(list[i]) then return false end end
  return true
end

str_methods = {
  startswith = function(s, a) return affix_test(s, a, false) end,
  endswith = function(s, a) return affix_test(s, a, true) end,
  strip = function(s, a) return py_strip(s, a[1], true, true) end,
  lstrip = function(s, a) return py_strip(s, a[1], true, false) end,
  rstrip = function(s, a) return py_strip(s, a[1], false, true) end,
  split = function(s, a, kw)
    local sep = a[1]; if sep == nil then sep = kw and kw.map.sep end
    local maxsplit = opt_int(a[2] or (kw and kw.map.maxsplit), -1)
    if sep == nil or sep == null then return new_list(split_ws(s, maxsplit, false)) end
    return new_list(split_sep(s, arg_str(sep, "sep"), maxsplit, false))
  end,
  rsplit = function(s, a, kw)
    local sep = a[1]; if sep == nil then sep = kw and kw.map.sep end
    local maxsplit = opt_int(a[2] or (kw and kw.map.maxsplit), -1)
    if sep == nil or sep == null then return new_list(split_ws(s, maxsplit, true)) end
    return new_list(split_sep(s, arg_str(sep, "sep"), maxsplit, true))
  end,
  splitlines = function(s, a)
    local keep = truthy(a[1] or false)
    local out = {}
    local pos = 1
    while pos <= #s do
      local a1, b1 = find(s, "\r\n", pos, true)
      local a2 = find(s, "[\n\r\v\f\28\29\30]", pos)
      local a3, b3 = find(s, "\194\133", pos, true)
      local a4, b4 = find(s, "\226\128[\168\169]", pos)
      local best, bend
      for _, c in ipairs({ { a1, b1 }, { a2, a2 }, { a3, b3 }, { a4, b4 } }) do
        if c[1] and (not best or c[1] < best or (c[1] == best and c[2] > bend)) then best, bend = c[1], c[2] end
      end
      if not best then out[#out + 1] = sub(s, pos); break end
      out[#out + 1] = sub(s, pos, keep and bend or best - 1)
      pos = bend + 1
    end
    return new_list(out)
  end,
  upper = function(s) return upper(s) end,
  lower = function(s) return lower(s) end,
  casefold = function(s) return lower(s) end,
  title = function(s) return title_case(s) end,
  capitalize = function(s) return capitalize(s) end,
  swapcase = function(s)
    local list, n = cps(s)
    for i = 1, n do list[i] = UPPER[list[i]] or LOWER[list[i]] or list[i] end
    return from_cps(list)
  end,
  replace = function(s, a)
    local old, new = arg_str(a[1], "replace arg 1"), arg_str(a[2], "replace arg 2")
    local count = opt_int(a[3], -1)
    if old == "" then
      local list, n = cps(s)
      local out = {}
      local k = 0
      for i = 1, n do
        if count < 0 or k < count then out[#out + 1] = new; k = k + 1 end
        out[#out + 1] = utf8.char(list[i])
      end
      if count < 0 or k < count then out[#out + 1] = new end
      return concat(out)
    end
    local out, pos, k = {}, 1, 0
    while count < 0 or k < count do
      local x, y = find(s, old, pos, true)
      if not x then break end
      out[#out + 1] = sub(s, pos, x - 1)
      out[#out + 1] = new
      pos = y + 1
      k = k + 1
    end
    out[#out + 1] = sub(s, pos)
    return concat(out)
  end,
  find = function(s, a) return find_in(s, arg_str(a[1], "find arg"), opt_int(a[2]), opt_int(a[3]), false) end,
  rfind = function(s, a) return find_in(s, arg_str(a[1], "rfind arg"), opt_int(a[2]), opt_int(a[3]), true) end,
  index = function(s, a)
    local r = find_in(s, arg_str(a[1], "index arg"), opt_int(a[2]), opt_int(a[3]), false)
    if r < 0 then raise("substring not found") end
    return r
  end,
  rindex = function(s, a)
    local r = find_in(s, arg_str(a[1], "rindex arg"), opt_int(a[2]), opt_int(a[3]), true)
    if r < 0 then raise("substring not found") end
    return r
  end,
  count = function(s, a)
    local what = arg_str(a[1], "count arg")
    if what == "" then return ulen(s) + 1 end
    local k, pos = 0, 1
    while true do
      local x, y = find(s, what, pos, true)
      if not x then return k end
      k = k + 1
      pos = y + 1
    end
  end,
  join = function(s, a)
    local items, n = py_iter(a[1])
    local parts = {}
    for i = 1, n do
      local v = plain(items[i])
      if type(v) ~= "string" then
        raise(format("sequence item %d: expected str instance, %s found", i - 1, type_name(v)))
      end
      parts[i] = v
    end
    return concat(parts, s)
  end,
  isdigit = function(s) return all_cps(s, function(c) return c >= 48 and c <= 57 end) end,
  isnumeric = function(s) return all_cps(s, function(c) return c >= 48 and c <= 57 end) end,
  isdecimal = function(s) return all_cps(s, function(c) return c >= 48 and c <= 57 end) end,
  isalpha = function(s) return all_cps(s, function(c) return is_cased(c) or c > 0x2e7f end) end,
  isalnum = function(s) return all_cps(s, function(c) return is_cased(c) or (c >= 48 and c <= 57) or c > 0x2e7f end) end,
  isspace = function(s) return all_cps(s, is_space) end,
  islower = function(s) return s ~= upper(s) and s == lower(s) end,
  isupper = function(s) return s ~= lower(s) and s == upper(s) end,
  removeprefix = function(s, a)
    local p = arg_str(a[1], "removeprefix arg")
    if sub(s, 1, #p) == p then return sub(s, #p + 1) end
    return s
  end,
  removesuffix = function(s, a)
    local p = arg_str(a[1], "removesuffix arg")
    if p ~= "" and sub(s, -#p) == p then return sub(s, 1, #s - #p) end
    return s
  end,
  partition = function(s, a)
    local sep = arg_str(a[1], "partition arg")
    local x, y = find(s, sep, 1, true)
    if not x then return new_tuple({ s, "", "" }) end
    return new_tuple({ sub(s, 1, x - 1), sep, sub(s, y + 1) })
  end,
  zfill = function(s, a)
    local w = opt_int(a[1], 0)
    local n = ulen(s)
    if n >= w then return s end
    local sign = sub(s, 1, 1)
    if sign == "+" or sign == "-" then return sign .. rep("0", w - n) .. sub(s, 2) end
    return rep("0", w - n) .. s
  end,
  ljust = function(s, a)
    local w, fill = opt_int(a[1], 0), a[2] and arg_str(a[2], "fill") or " "
    local n = ulen(s)
    return n >= w and s or s .. rep(fill, w - n)
  end,
  rjust = function(s, a)
    local w, fill = opt_int(a[1], 0), a[2] and arg_str(a[2], "fill") or " "
    local n = ulen(s)
    return n >= w and s or rep(fill, w - n) .. s
  end,
  center = function(s, a)
    local w, fill = opt_int(a[1], 0), a[2] and arg_str(a[2], "fill") or " "
    local n = ulen(s)
    if n >= w then return s end
    local marg = w - n
    local left = marg // 2 + (marg & w & 1)
    return rep(fill, left) .. s .. rep(fill, marg - left)
  end,
  format = function() raise("str.format is not supported") end,
}

dict_methods = {
  items = function(d)
    local out = {}
    for i, k in ipairs(d.keys) do out[i] = new_tuple({ k, d.map[k] }) end
    return new_list(out)
  end,
  keys = function(d)
    local out = {}
    for i, k in ipairs(d.keys) do out[i] = k end
    return new_list(out)
  end,
  values = function(d)
    local out = {}
    for i, k in ipairs(d.keys) do out[i] = d.map[k] end
    return new_list(out, #d.keys)
  end,
  get = function(d, a)
    local k = dict_key(plain(a[1]))
    local v
    if type(k) ~= "table" then v = d.map[k] end
    if v ~= nil then return v end
    if a[2] ~= nil then return a[2] end
    return null
  end,
  copy = function(d)
    local o = new_dict()
    for _, k in ipairs(d.keys) do dict_set(o, k, d.map[k]) end
    return o
  end,
}

list_methods = {
  index = function(l, a)
    for i = 1, l.n do if py_eq(l[i], a[1]) then return i - 1 end end
    raise(format("%s is not in list", py_repr(a[1])))
  end,
  count = function(l, a)
    local k = 0
    for i = 1, l.n do if py_eq(l[i], a[1]) then k = k + 1 end end
    return k
  end,
  copy = function(l)
    local out = {}
    for i = 1, l.n do out[i] = l[i] end
    return new_list(out, l.n)
  end,
}

-- ---- tojson ------------------------------------------------------------------------------------------

local function json_hook(v)
  local mt = getmetatable(v)
  if mt == MARKUP then return nil end
  if mt == UNDEF then raise("Object of type Undefined is not JSON serializable") end
  if mt == NAMESPACE or mt == CALLABLE or mt == LOOP then
    raise(format("Object of type %s is not JSON serializable", type_name(v)))
  end
  return nil
end

local function to_json_value(v)
  -- Markup becomes its string; everything else is already a JSON value.
  local mt = getmetatable(v)
  if mt == MARKUP then return v.s end
  if mt == UNDEF or mt == NAMESPACE or mt == CALLABLE or mt == LOOP then json_hook(v) end
  if mt == ARRAY then
    local out = {}
    for i = 1, v.n do out[i] = to_json_value(v[i]) end
    return new_list(out, v.n)
  elseif mt == OBJECT then
    local o = new_dict()
    for _, k in ipairs(v.keys) do
      local kk = k
      if getmetatable(k) == MARKUP then kk = k.s end
      dict_set(o, kk, to_json_value(v.map[k]))
    end
    return o
  end
  return v
end

local function tojson(v, args, kwargs)
  -- transformers: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
  local names = { "ensure_ascii", "indent", "separators", "sort_keys" }
  local o = {}
  for i, name in ipairs(names) do
    local a = args[i]
    if a == nil and kwargs then a = kwargs.map[name] end
    if a ~= nil and a ~= null then o[name] = a end
  end
  for _, k in ipairs(kwargs and kwargs.keys or {}) do
    local known = false
    for _, n in ipairs(names) do if n == k then known = true end end
    if not known then raise(format("tojson() got an unexpected keyword argument '%s'", k)) end
  end
  if o.indent ~= nil then
    local ind = plain(o.indent)
    if type(ind) ~= "string" and not (is_num(ind) and mtype(as_num(ind)) == "integer") then
      raise("indent must be an integer or a string")
    end
    o.indent = is_num(ind) and as_num(ind) or ind
  end
  if o.separators then
    local s = o.separators
    if getmetatable(s) ~= ARRAY or s.n ~= 2 then raise("separators must be a pair of strings") end
    o.separators = { arg_str(s[1], "separator"), arg_str(s[2], "separator") }
  end
  local ok, res = pcall(json.encode, to_json_value(v), {
    ensure_ascii = o.ensure_ascii ~= nil and truthy(o.ensure_ascii), indent = o.indent,
    separators = o.separators, sort_keys = o.sort_keys ~= nil and truthy(o.sort_keys) })
  if not ok then
    if getmetatable(res) == TemplateError then error(res, 0) end
    raise(tostring(res))
  end
  return res
end
M.tojson = function(v, opts) -- for callers outside templates
  local kw = new_dict()
  for k, val in pairs(opts or {}) do dict_set(kw, k, val) end
  return tojson(v, {}, kw)
end

-- ---- filters -----------------------------------------------------------------------------------------

local filters, tests = {}, {}

local function soft_str(v) return py_str(v) end

local function kwarg(kwargs, name) return kwargs and kwargs.map[name] end
local function argn(args, kwargs, i, name, default)
  local v = args[i]
  if v == nil then v = kwarg(kwargs, name) end
  if v == nil then return default end
  return v
end

local function attr_getter(attribute)
  if attribute == nil or attribute == null then return function(x) return x end end
  local parts = {}
  if type(attribute) == "number" then parts = { attribute }
  else
    for p in tostring(plain(attribute)):gmatch("[^.]+") do
      parts[#parts + 1] = tonumber(p) and math.tointeger(tonumber(p)) or p
    end
  end
  return function(x)
    for _, p in ipairs(parts) do x = getitem(x, p) end
    return x
  end
end

local function sort_key_fn(case_sensitive, attribute)
  local get = attr_getter(attribute)
  return function(x)
    local v = get(x)
    if not case_sensitive and type(plain(v)) == "string" then return lower(plain(v)) end
    return v
  end
end

local function py_sorted(list, n, keyfn, reverse)
  local idx = {}
  for i = 1, n do idx[i] = { key = keyfn(list[i]), v = list[i], i = i } end
  table.sort(idx, function(a, b)
    if reverse then
      if py_lt(b.key, a.key) then return true end
      if py_lt(a.key, b.key) then return false end
    else
      if py_lt(a.key, b.key) then return true end
      if py_lt(b.key, a.key) then return false end
    end
    return a.i < b.i -- stable, as Python's sort
  end)
  local out = {}
  for i, e in ipairs(idx) do out[i] = e.v end
  return out
end

local env -- forward: the filter/test tables need to call each other

local function select_impl(value, args, kwargs, attr_mode, want)
  local items, n = py_iter(value)
  local get, test_name, rest
  if attr_mode then
    get = attr_getter(args[1])
    test_name, rest = args[2], { table.unpack(args, 3, args.n or #args) }
  else
    get = function(x) return x end
    test_name, rest = args[1], { table.unpack(args, 2, args.n or #args) }
  end
  local test
  if test_name == nil then test = function(v) return truthy(v) end
  else
    local fn = tests[plain(test_name)]
    if not fn then raise(format("No test named %s.", py_repr(test_name))) end
    test = function(v) return fn(v, rest) end
  end
  local out = {}
  for i = 1, n do
    if (test(get(items[i])) and true or false) == want then out[#out + 1] = items[i] end
  end
  return new_list(out)
end

local function do_round(v, precision, method)
  v = as_num(v)
  precision = opt_int(precision, 0)
  method = method or "common"
  local m = 10.0 ^ precision
  if method == "common" then
    -- Python's round(): to nearest, ties to even, on the decimal value.
    local s = format("%." .. math.max(precision, 0) .. "f", v)
    if precision < 0 then
      local x = v / (10.0 ^ -precision)
      local r = floor(x + 0.5)
      if r - x == 0.5 and r % 2 ~= 0 then r = r - 1 end
      return r * (10.0 ^ -precision)
    end
    return tonumber(s) + 0.0
  elseif method == "ceil" then
    return math.ceil(v * m) / m
  elseif method == "floor" then
    return floor(v * m) / m
  end
  raise("method must be 'common', 'ceil' or 'floor'")
end

local function to_int(v, default, base)
  v = plain(v)
  if type(v) == "boolean" then return v and 1 or 0 end
  if type(v) == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return default end
    local i = math.tointeger(v < 0 and math.ceil(v) or floor(v))
    return i or default
  end
  if type(v) == "string" then
    local s = py_strip(v, nil, true, true):gsub("_", "")
    local n = tonumber(s, base ~= 10 and base or nil)
    if n and math.tointeger(n) and not s:find("[.eE]") then return math.tointeger(n) end
    local f = tonumber(s)
    if f and s:match("^[%s+-]*[%d.]") then return to_int(f, default, 10) end
    return default
  end
  return default
end

filters = {
  abs = function(v)
    if not is_num(v) then raise(format("bad operand type for abs(): '%s'", type_name(v))) end
    return math.abs(as_num(v))
  end,
  attr = function(v, a) return getattr(v, arg_str(a[1], "attr")) end,
  capitalize = function(v) return capitalize(soft_str(v)) end,
  center = function(v, a, kw) return str_methods.center(soft_str(v), { argn(a, kw, 1, "width", 80) }) end,
  count = function(v) return py_len(v) end,
  length = function(v) return py_len(v) end,
  default = function(v, a, kw)
    local d = argn(a, kw, 1, "default_value", "")
    local boolean = truthy(argn(a, kw, 2, "boolean", false))
    if is_undef(v) or (boolean and not truthy(v)) then return d end
    return v
  end,
  dictsort = function(v, a, kw)
    local case_sensitive = truthy(argn(a, kw, 1, "case_sensitive", false))
    local by = plain(argn(a, kw, 2, "by", "key"))
    local reverse = truthy(argn(a, kw, 3, "reverse", false))
    if getmetatable(v) ~= OBJECT then raise("dictsort: value must be a dict") end
    local items = dict_methods.items(v)
    local pos = by == "key" and 0 or by == "value" and 1 or raise("You can only sort by either 'key' or 'value'")
    local sorted = py_sorted(items, items.n, sort_key_fn(case_sensitive, pos), reverse)
    return new_list(sorted, items.n)
  end,
  escape = function(v) return markup(escape_value(v)) end,
  first = function(v)
    local items, n = py_iter(v)
    if n == 0 then return undefined("No first item, sequence was empty.") end
    return items[1]
  end,
  last = function(v)
    local items, n
    if getmetatable(v) == ARRAY or type(plain(v)) == "string" then items, n = py_iter(v)
    else items, n = py_iter(v) end
    if n == 0 then return undefined("No last item, sequence was empty.") end
    return items[n]
  end,
  float = function(v, a, kw)
    local default = argn(a, kw, 1, "default", 0.0)
    v = plain(v)
    if is_num(v) then return as_num(v) + 0.0 end
    if type(v) == "string" then
      local f = tonumber(py_strip(v, nil, true, true))
      if f then return f + 0.0 end
    end
    return default
  end,
  indent = function(v, a, kw)
    local width = argn(a, kw, 1, "width", 4)
    local first = truthy(argn(a, kw, 2, "first", false))
    local blank = truthy(argn(a, kw, 3, "blank", false))
    local ind = type(plain(width)) == "string" and plain(width) or rep(" ", as_num(width))
    local s = soft_str(v)
    local newline = "\n"
    s = s .. newline
    local lines = split_sep(s, "\n", -1, false)
    -- lines = s.splitlines() in jinja2; reproduce for "\n" text
    lines[#lines] = nil
    local rv
    if blank then
      for i = 2, #lines do lines[i] = ind .. lines[i] end
      rv = concat(lines, newline)
    else
      for i = 2, #lines do if lines[i] ~= "" then lines[i] = ind .. lines[i] end end
      rv = concat(lines, newline)
    end
    if first then rv = ind .. rv end
    return rv
  end,
  int = function(v, a, kw)
    local default = argn(a, kw, 1, "default", 0)
    local base = opt_int(argn(a, kw, 2, "base", 10), 10)
    return to_int(v, default, base)
  end,
  items = function(v)
    if is_undef(v) then return new_list({}) end
    if getmetatable(v) ~= OBJECT then raise("Can only get item pairs from a mapping.") end
    return dict_methods.items(v)
  end,
  join = function(v, a, kw)
    local d = soft_str(argn(a, kw, 1, "d", ""))
    local attribute = argn(a, kw, 2, "attribute", nil)
    local items, n = py_iter(v)
    local get = attr_getter(attribute)
    local parts = {}
    for i = 1, n do parts[i] = soft_str(get(items[i])) end
    return concat(parts, d)
  end,
  list = function(v)
    local items, n = py_iter(v)
    local out = {}
    for i = 1, n do out[i] = items[i] end
    return new_list(out, n)
  end,
  lower = function(v) return lower(soft_str(v)) end,
  upper = function(v) return upper(soft_str(v)) end,
  title = function(v) return title_case(soft_str(v)) end,
  map = function(v, a, kw)
    local items, n = py_iter(v)
    local out = {}
    if a[1] == nil and kw and kw.map.attribute ~= nil then
      local get = attr_getter(kw.map.attribute)
      local default = kw.map.default
      for i = 1, n do
        local x = get(items[i])
        if is_undef(x) and default ~= nil then x = default end
        out[i] = x
      end
      return new_list(out, n)
    end
    local name = plain(a[1])
    local f = filters[name]
    if not f then raise(format("No filter named %s.", py_repr(name))) end
    local rest = { n = (a.n or #a) - 1 }
    for i = 2, (a.n or #a) do rest[i - 1] = a[i] end
    for i = 1, n do out[i] = f(items[i], rest, kw) end
    return new_list(out, n)
  end,
  max = function(v, a, kw)
    local items, n = py_iter(v)
    if n == 0 then return undefined("No aggregated item, sequence was empty.") end
    local key = sort_key_fn(truthy(argn(a, kw, 1, "case_sensitive", false)), argn(a, kw, 2, "attribute", nil))
    local best = items[1]
    for i = 2, n do if py_lt(key(best), key(items[i])) then best = items[i] end end
    return best
  end,
  min = function(v, a, kw)
    local items, n = py_iter(v)
    if n == 0 then return undefined("No aggregated item, sequence was empty.") end
    local key = sort_key_fn(truthy(argn(a, kw, 1, "case_sensitive", false)), argn(a, kw, 2, "attribute", nil))
    local best = items[1]
    for i = 2, n do if py_lt(key(items[i]), key(best)) then best = items[i] end end
    return best
  end,
  reject = function(v, a, kw) return select_impl(v, a, kw, false, false) end,
  rejectattr = function(v, a, kw) return select_impl(v, a, kw, true, false) end,
  select = function(v, a, kw) return select_impl(v, a, kw, false, true) end,
  selectattr = function(v, a, kw) return select_impl(v, a, kw, true, true) end,
  replace = function(v, a, kw)
    local count = argn(a, kw, 3, "count", nil)
    return str_methods.replace(soft_str(v), { a[1], a[2], count })
  end,
  reverse = function(v)
    v = plain(v)
    if type(v) == "string" then
      local list, n = cps(v)
      local out = {}
      for i = n, 1, -1 do out[#out + 1] = utf8.char(list[i]) end
      return concat(out)
    end
    local items, n = py_iter(v)
    local out = {}
    for i = n, 1, -1 do out[#out + 1] = items[i] end
    return new_list(out, n)
  end,
  round = function(v, a, kw)
    return do_round(v, argn(a, kw, 1, "precision", 0), plain(argn(a, kw, 2, "method", "common")))
  end,
  safe = function(v) return markup(py_str(v)) end,
  sort = function(v, a, kw)
    local reverse = truthy(argn(a, kw, 1, "reverse", false))
    local case_sensitive = truthy(argn(a, kw, 2, "case_sensitive", false))
    local attribute = argn(a, kw, 3, "attribute", nil)
    local items, n = py_iter(v)
    return new_list(py_sorted(items, n, sort_key_fn(case_sensitive, attribute), reverse), n)
  end,
  string = function(v) return py_str(v) end,
  sum = function(v, a, kw)
    local get = attr_getter(argn(a, kw, 1, "attribute", nil))
    local total = argn(a, kw, 2, "start", 0)
    local items, n = py_iter(v)
    for i = 1, n do total = py_arith("+", total, get(items[i])) end
    return total
  end,
  tojson = tojson,
  trim = function(v, a, kw) return py_strip(soft_str(v), argn(a, kw, 1, "chars", nil), true, true) end,
  truncate = function(v, a, kw)
    local s = soft_str(v)
    local length = opt_int(argn(a, kw, 1, "length", 255), 255)
    local killwords = truthy(argn(a, kw, 2, "killwords", false))
    local ending = soft_str(argn(a, kw, 3, "end", "..."))
    local leeway = opt_int(argn(a, kw, 4, "leeway", 5), 5)
    local list, n = cps(s)
    if n <= length + leeway then return s end
    local el = ulen(ending)
    if killwords then return from_cps(list, 1, length - el) .. ending end
    local cut = from_cps(list, 1, length - el)
    local words = split_sep(cut, " ", -1, true)
    words = split_sep(cut, " ", 1, true)
    return (#words > 1 and words[1] or cut) .. ending
  end,
  unique = function(v, a, kw)
    local key = sort_key_fn(truthy(argn(a, kw, 1, "case_sensitive", false)), argn(a, kw, 2, "attribute", nil))
    local items, n = py_iter(v)
    local out, seen = {}, {}
    for i = 1, n do
      local k = key(items[i])
      local dup = false
      for _, s in ipairs(seen) do if py_eq(s, k) then dup = true break end end
      if not dup then seen[#seen + 1] = k; out[#out + 1] = items[i] end
    end
    return new_list(out)
  end,
  wordcount = function(v)
    local n = 0
    for _ in soft_str(v):gmatch("[%w_]+") do n = n + 1 end
    return n
  end,
  format = function(v, a) return M.printf(soft_str(v), a) end,
}
function M.printf(s, a)
    local i = 0
    local out = s:gsub("%%([%-+ #0]*%d*%.?%d*)([sdifrx%%])", function(flags, conv)
      if conv == "%" then return "%" end
      i = i + 1
      local x = a[i]
      if conv == "s" then return format("%" .. flags .. "s", py_str(x)) end
      if conv == "r" then return format("%" .. flags .. "s", py_repr(x)) end
      if conv == "d" or conv == "i" then return format("%" .. flags .. "d", to_int(x, 0, 10)) end
      if conv == "x" then return format("%" .. flags .. "x", to_int(x, 0, 10)) end
      return format("%" .. flags .. "f", as_num(x))
    end)
    return out
end
filters.d = filters.default
filters.e = filters.escape

-- Filters jinja2 has that chat templates have no business with (random
-- output, HTML and URL helpers); naming them is refused at compile time.
local UNSUPPORTED_FILTERS = { "batch", "filesizeformat", "forceescape", "groupby", "pprint", "random",
  "slice", "striptags", "urlencode", "urlize", "wordwrap", "xmlattr" }

local function test_num(v) return type(v) == "number" or type(v) == "boolean" end
tests = {
  boolean = function(v) return type(v) == "boolean" end,
  callable = function(v) return getmetatable(v) == CALLABLE or is_undef(v) end,
  defined = function(v) return not is_undef(v) end,
  undefined = function(v) return is_undef(v) end,
  divisibleby = function(v, a) return as_num(v) % as_num(a[1]) == 0 end,
  eq = function(v, a) return py_eq(v, a[1]) end,
  ne = function(v, a) return not py_eq(v, a[1]) end,
  lt = function(v, a) return py_lt(v, a[1], "<") end,
  gt = function(v, a) return py_lt(a[1], v, ">") end,
  le = function(v, a) return not py_lt(a[1], v, "<=") end,
  ge = function(v, a) return not py_lt(v, a[1], ">=") end,
  escaped = function(v) return getmetatable(v) == MARKUP end,
  even = function(v) return as_num(v) % 2 == 0 end,
  odd = function(v) return as_num(v) % 2 == 1 end,
  ["false"] = function(v) return v == false end,
  ["true"] = function(v) return v == true end,
  float = function(v) return mtype(v) == "float" end,
  integer = function(v) return mtype(v) == "integer" end,
  ["in"] = function(v, a) return py_contains(a[1], v) end,
  iterable = function(v)
    local mt = getmetatable(v)
    return type(v) == "string" or mt == ARRAY or mt == OBJECT or mt == MARKUP or mt == UNDEF
  end,
  sequence = function(v)
    local mt = getmetatable(v)
    return type(v) == "string" or mt == ARRAY or mt == OBJECT or mt == MARKUP or mt == UNDEF
  end,
  mapping = function(v) return getmetatable(v) == OBJECT end,
  none = function(v) return v == null end,
  number = function(v) return test_num(v) end,
  string = function(v) return type(v) == "string" or getmetatable(v) == MARKUP end,
  lower = function(v) v = soft_str(v); return str_methods.islower(v) end,
  upper = function(v) v = soft_str(v); return str_methods.isupper(v) end,
  sameas = function(v, a)
    local o = a[1]
    if type(v) == "table" and v ~= null then return rawequal(v, o) end
    if type(v) ~= type(o) then return false end
    if type(v) == "number" then return mtype(v) == mtype(o) and v == o end
    return v == o
  end,
  filter = function(v) return filters[plain(v)] ~= nil end,
  test = function(v) return tests[plain(v)] ~= nil end,
}
tests["=="] = tests.eq; tests.equalto = tests.eq; tests["!="] = tests.ne
tests["<"] = tests.lt; tests.lessthan = tests.lt; tests[">"] = tests.gt; tests.greaterthan = tests.gt
tests["<="] = tests.le; tests[">="] = tests.ge

-- ---- lexer ----------------------------------------------------------------------------------------------

-- Length of the Python-whitespace character at s[i], or 0.
local function ws_at(s, i)
  local b = byte(s, i)
  if not b then return 0 end
  if b == 32 or (b >= 9 and b <= 13) or (b >= 28 and b <= 31) then return 1 end
  if b < 0xc2 then return 0 end
  local c
  if b < 0xe0 then
    local b2 = byte(s, i + 1)
    if b == 0xc2 and (b2 == 0x85 or b2 == 0xa0) then return 2 end
    return 0
  end
  local b2, b3 = byte(s, i + 1), byte(s, i + 2)
  if not b3 then return 0 end
  c = ((b & 0x0f) << 12) | ((b2 & 0x3f) << 6) | (b3 & 0x3f)
  if b < 0xf0 and PY_SPACE[c] then return 3 end
  return 0
end

local function skip_ws(s, i)
  while true do
    local k = ws_at(s, i)
    if k == 0 then return i end
    i = i + k
  end
end

--- Python's str.rstrip() on s[1..j]: the new end.
local function rstrip_end(s, j)
  while j >= 1 do
    local b = byte(s, j)
    if b < 0x80 then
      if ws_at(s, j) == 0 then return j end
      j = j - 1
    else
      local k = j
      while k > 1 and byte(s, k) >= 0x80 and byte(s, k) < 0xc0 do k = k - 1 end
      if ws_at(s, k) ~= j - k + 1 then return j end
      j = k - 1
    end
  end
  return j
end

local OPERATORS = { "//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]", "(", ")",
                    "{", "}", ">", "<", "=", ".", ":", "|", ",", ";" }
local CLOSING = { ["("] = ")", ["["] = "]", ["{"] = "}" }

local ESCAPES = { ["\\"] = "\\", ["'"] = "'", ['"'] = '"', a = "\a", b = "\b", f = "\f", n = "\n", r = "\r",
                  t = "\t", v = "\v", ["\n"] = "" }

-- Python's unicode-escape decoding of a string literal's body.
local function unescape(body, fail)
  if not find(body, "\\", 1, true) then return body end
  local out, i = {}, 1
  while i <= #body do
    local c = sub(body, i, i)
    if c ~= "\\" then
      local j = find(body, "\\", i, true) or (#body + 1)
      out[#out + 1] = sub(body, i, j - 1)
      i = j
    else
      local e = sub(body, i + 1, i + 1)
      if ESCAPES[e] then
        out[#out + 1] = ESCAPES[e]
        i = i + 2
      elseif e:match("[0-7]") then
        local oct = body:match("^[0-7][0-7]?[0-7]?", i + 1)
        out[#out + 1] = utf8.char(tonumber(oct, 8))
        i = i + 1 + #oct
      elseif e == "x" or e == "u" or e == "U" then
        local len = e == "x" and 2 or e == "u" and 4 or 8
        local hex = sub(body, i + 2, i + 1 + len)
        if #hex ~= len or not hex:match("^%x+$") then
          fail(format("truncated \\%sXX escape", e))
        end
        local cp = tonumber(hex, 16)
        if cp > 0x10ffff then fail("illegal Unicode character") end
        out[#out + 1] = utf8.char(cp)
        i = i + 2 + len
      elseif e == "N" then
        fail("\\N{...} escapes are not supported")
      elseif e == "" then
        fail("\\ at end of string")
      else
        out[#out + 1] = "\\" -- unknown escapes keep their backslash, as Python does
        i = i + 1
      end
    end
  end
  return concat(out)
end

local function tokenize(src, name)
  local function fail(msg, line) error(format("%s line %d: %s", name, line, msg), 0) end
  -- Newlines normalised to \n, and one trailing newline dropped, as jinja2 does.
  src = src:gsub("\r\n", "\n"):gsub("\r", "\n")
  if sub(src, -1) == "\n" then src = sub(src, 1, -2) end
  local toks, nt = {}, 0
  local function push(t, v, line) nt = nt + 1; toks[nt] = { t = t, v = v, line = line } end
  local pos, line, n = 1, 1, #src
  local line_starting = true
  local function count_nl(s) local _, k = s:gsub("\n", ""); return k end

  while pos <= n do
    -- The next tag: {{, {% or {#, whichever comes first.
    local tag_at = find(src, "{[{%%#]", pos)
    if not tag_at then
      push("data", sub(src, pos), line)
      break
    end
    local kind = sub(src, tag_at + 1, tag_at + 1)
    local sign = sub(src, tag_at + 2, tag_at + 2)
    if sign ~= "-" and sign ~= "+" then sign = "" end
    local text = sub(src, pos, tag_at - 1)
    local text_line = line
    line = line + count_nl(text)
    -- raw blocks
    local raw_s, raw_e = nil, nil
    if kind == "%" then
      raw_s, raw_e = find(src, "^{%%[%-+]?%s*raw%s*%-%%}", tag_at)
      if raw_s then
        raw_e = skip_ws(src, raw_e + 1) - 1
      else
        raw_s, raw_e = find(src, "^{%%[%-+]?%s*raw%s*%%}", tag_at)
      end
    end
    if sign == "-" then
      text = sub(text, 1, rstrip_end(text, #text))
    elseif sign ~= "+" and kind ~= "{" then
      -- lstrip_blocks: drop the spaces between the last newline and the tag.
      local l_pos = 0
      local last_nl = text:match(".*()\n")
      if last_nl then l_pos = last_nl end
      if l_pos > 0 or line_starting then
        local rest = sub(text, l_pos + 1)
        if rest ~= "" and skip_ws(rest, 1) == #rest + 1 then text = sub(text, 1, l_pos) end
      end
    end
    if text ~= "" then push("data", text, text_line) end

    if raw_s then
      -- {% raw %} ... {% endraw %}: the body is data.
      local body_start = raw_e + 1
      local e_s, e_e, esign, closer
      local p = body_start
      while true do
        e_s = find(src, "{%", p, true)
        if not e_s then fail("Missing end of raw directive", line) end
        local s2, e2, sg, cl = find(src, "^{%%([%-+]?)%s*endraw%s*([%-+]?%%})", e_s)
        if s2 then e_e, esign, closer = e2, sg, cl break end
        p = e_s + 2
      end
      local body = sub(src, body_start, e_s - 1)
      line = line + count_nl(sub(src, tag_at, body_start - 1))
      if esign == "-" then
        body = sub(body, 1, rstrip_end(body, #body))
      elseif esign ~= "+" then
        local last_nl = body:match(".*()\n")
        local l_pos = last_nl or 0
        if l_pos > 0 then
          local rest = sub(body, l_pos + 1)
          if rest ~= "" and skip_ws(rest, 1) == #rest + 1 then body = sub(body, 1, l_pos) end
        end
      end
      if body ~= "" then push("data", body, line) end
      line = line + count_nl(sub(src, body_start, e_e))
      pos = e_e + 1
      if closer == "-%}" then
        local np = skip_ws(src, pos)
        line = line + count_nl(sub(src, pos, np - 1))
        pos = np
      elseif closer == "%}" and sub(src, pos, pos) == "\n" then
        pos = pos + 1
        line = line + 1
      end
      line_starting = sub(src, pos - 1, pos - 1) == "\n"
      goto continue
    end

    pos = tag_at + 2 + #sign
    if kind == "#" then
      -- A comment ends at the first #}; a + or - right before it belongs to the end.
      local close = find(src, "#}", pos, true)
      if not close then fail("Missing end of comment tag", line) end
      local before = sub(src, close - 1, close - 1)
      local endsign = (close - 1 >= pos and (before == "-" or before == "+")) and before or ""
      line = line + count_nl(sub(src, pos, close + 1))
      pos = close + 2
      if endsign == "-" then
        local np = skip_ws(src, pos)
        line = line + count_nl(sub(src, pos, np - 1))
        pos = np
      elseif endsign == "" and sub(src, pos, pos) == "\n" then
        pos = pos + 1
        line = line + 1
      end
      line_starting = sub(src, pos - 1, pos - 1) == "\n"
      goto continue
    end

    do
      local is_block = kind == "%"
      push(is_block and "block_begin" or "var_begin", nil, line)
      local stack = {}
      while true do
        if pos > n then fail(is_block and "unexpected end of template, expected '%}'" or
                               "unexpected end of template, expected '}}'", line) end
        if #stack == 0 then
          local ended = false
          if is_block then
            if sub(src, pos, pos + 2) == "+%}" then
              pos = pos + 3; ended = true
            elseif sub(src, pos, pos + 2) == "-%}" then
              local np = skip_ws(src, pos + 3)
              line = line + count_nl(sub(src, pos, np - 1))
              pos = np; ended = true
            elseif sub(src, pos, pos + 1) == "%}" then
              pos = pos + 2
              if sub(src, pos, pos) == "\n" then pos = pos + 1; line = line + 1 end
              ended = true
            end
          else
            if sub(src, pos, pos + 2) == "-}}" then
              local np = skip_ws(src, pos + 3)
              line = line + count_nl(sub(src, pos, np - 1))
              pos = np; ended = true
            elseif sub(src, pos, pos + 1) == "}}" then
              pos = pos + 2; ended = true
            end
          end
          if ended then
            push(is_block and "block_end" or "var_end", nil, line)
            line_starting = sub(src, pos - 1, pos - 1) == "\n"
            break
          end
        end
        local np = skip_ws(src, pos)
        if np > pos then
          line = line + count_nl(sub(src, pos, np - 1))
          pos = np
        else
          local c = sub(src, pos, pos)
          local s, e
          -- float, integer, name, string, operator: in jinja2's order.
          s, e = find(src, "^%d[%d_]*%.%d[%d_]*[eE][-+]?%d[%d_]*", pos)
          if not s then s, e = find(src, "^%d[%d_]*[eE][-+]?%d[%d_]*", pos) end
          if not s then s, e = find(src, "^%d[%d_]*%.%d[%d_]*", pos) end
          if s and sub(src, pos - 1, pos - 1) ~= "." then
            push("float", tonumber((sub(src, s, e):gsub("_", ""))) + 0.0, line)
            pos = e + 1
          else
            s, e = find(src, "^0[bB][01_]+", pos)
            local base = 2
            if not s then s, e = find(src, "^0[oO][0-7_]+", pos); base = 8 end
            if not s then s, e = find(src, "^0[xX][%x_]+", pos); base = 16 end
            if s then
              push("integer", math.tointeger(tonumber((sub(src, s + 2, e):gsub("_", "")), base)), line)
              pos = e + 1
            else
              s, e = find(src, "^%d[%d_]*", pos)
              if s then
                local txt = sub(src, s, e):gsub("_", "")
                push("integer", math.tointeger(tonumber(txt)) or tonumber(txt), line)
                pos = e + 1
              else
                s, e = find(src, "^[%a_\128-\255][%w_\128-\255]*", pos)
                if s then
                  push("name", sub(src, s, e), line)
                  pos = e + 1
                elseif c == "'" or c == '"' then
                  local j = pos + 1
                  while true do
                    local k = find(src, "[\\" .. c .. "]", j)
                    if not k then fail("unexpected end of string", line) end
                    if sub(src, k, k) == "\\" then j = k + 2 else e = k break end
                  end
                  local body = sub(src, pos + 1, e - 1)
                  local tline = line
                  push("string", unescape(body, function(m) fail(m, tline) end), line)
                  line = line + count_nl(body)
                  pos = e + 1
                else
                  local op
                  for _, o in ipairs(OPERATORS) do
                    if sub(src, pos, pos + #o - 1) == o then op = o break end
                  end
                  if not op then fail(format("unexpected char %s at %d", str_repr(c), pos - 1), line) end
                  if CLOSING[op] then
                    stack[#stack + 1] = CLOSING[op]
                  elseif op == ")" or op == "]" or op == "}" then
                    if #stack == 0 then fail(format("unexpected '%s'", op), line) end
                    local want = table.remove(stack)
                    if want ~= op then fail(format("unexpected '%s', expected '%s'", op, want), line) end
                  end
                  push(op, op, line)
                  pos = pos + #op
                end
              end
            end
          end
        end
      end
    end
    ::continue::
  end
  push("eof", nil, line)
  return toks
end

-- ---- parser ------------------------------------------------------------------------------------------------

local Parser = {}
Parser.__index = Parser

local function describe(tok)
  if tok.t == "eof" then return "end of template" end
  if tok.t == "name" or tok.t == "string" or tok.t == "integer" or tok.t == "float" then
    return tostring(tok.v)
  end
  if tok.t == "block_begin" then return "begin of statement block" end
  if tok.t == "block_end" then return "end of statement block" end
  if tok.t == "var_begin" then return "begin of print statement" end
  if tok.t == "var_end" then return "end of print statement" end
  if tok.t == "data" then return "template data" end
  return tok.t
end

function Parser:fail(msg, line)
  error(format("%s line %d: %s", self.name, line or self.tok[self.i].line, msg), 0)
end
function Parser:cur() return self.tok[self.i] end
function Parser:look() return self.tok[self.i + 1] end
function Parser:next() local t = self.tok[self.i]; self.i = self.i + 1; return t end
function Parser:is(t, v)
  local c = self.tok[self.i]
  return c.t == t and (v == nil or c.v == v)
end
function Parser:skip_if(t, v)
  if self:is(t, v) then return self:next() end
  return nil
end
function Parser:expect(t, v)
  local c = self:cur()
  if c.t ~= t or (v ~= nil and c.v ~= v) then
    local want = v or t
    if c.t == "eof" then
      self:fail(format("unexpected end of template, expected '%s'", want), c.line)
    end
    self:fail(format("expected token '%s', got '%s'", want, describe(c)), c.line)
  end
  return self:next()
end

local UNSUPPORTED_TAGS = { extends = true, block = true, include = true, import = true, from = true,
  call = true, filter = true, autoescape = true, trans = true, pluralize = true, ["do"] = true,
  print = false }

function Parser:subparse(end_tags)
  local body = {}
  while true do
    local t = self:cur()
    if t.t == "data" then
      body[#body + 1] = { k = "data", v = t.v, line = t.line }
      self:next()
    elseif t.t == "var_begin" then
      self:next()
      local e = self:parse_tuple(true)
      self:expect("var_end")
      body[#body + 1] = { k = "output", e = e, line = t.line }
    elseif t.t == "block_begin" then
      self:next()
      local c = self:cur()
      if end_tags and c.t == "name" and end_tags[c.v] then return body end
      body[#body + 1] = self:parse_statement()
    elseif t.t == "eof" then
      if end_tags then
        local names = {}
        for k in pairs(end_tags) do names[#names + 1] = "'" .. k .. "'" end
        table.sort(names)
        self:fail("Unexpected end of template. Jinja was looking for the following tags: " ..
          concat(names, " or ") .. ".", t.line)
      end
      return body
    else
      self:fail(format("unexpected '%s'", describe(t)), t.line)
    end
  end
end

--- Parses statements up to one of end_tags (a set); leaves the end tag's
-- name as the current token unless drop is set.
function Parser:parse_statements(end_tags, drop)
  self:skip_if(":")
  self:expect("block_end")
  local body = self:subparse(end_tags)
  if drop then self:next() end
  return body
end

function Parser:parse_statement()
  local t = self:cur()
  if t.t ~= "name" then self:fail("tag name expected", t.line) end
  local name = t.v
  local fn = self["stmt_" .. name]
  if fn then return fn(self) end
  if UNSUPPORTED_TAGS[name] ~= nil then
    self:fail(format("unsupported Jinja construct '{%% %s %%}'", name), t.line)
  end
  if name:match("^end") or name == "else" or name == "elif" then
    self:fail(format("Encountered unknown tag '%s'.", name), t.line)
  end
  self:fail(format("Encountered unknown tag '%s'.", name), t.line)
end

function Parser:stmt_if()
  local line = self:next().line
  local node = { k = "if", branches = {}, line = line }
  while true do
    local test = self:parse_tuple(false)
    local body = self:parse_statements({ elif = true, ["else"] = true, endif = true })
    node.branches[#node.branches + 1] = { test = test, body = body }
    local tok = self:next()
    if tok.v == "elif" then
      -- continue with the next branch
    elseif tok.v == "else" then
      node.else_ = self:parse_statements({ endif = true }, true)
      break
    else
      break
    end
  end
  self:expect("block_end")
  return node
end

function Parser:parse_assign_target(with_tuple, name_only, extra_end, with_namespace)
  local t = self:cur()
  if with_namespace and t.t == "name" and self:look().t == "." then
    self:next(); self:next()
    local attr = self:expect("name")
    return { k = "nsref", name = t.v, attr = attr.v, line = t.line }
  end
  local target
  if name_only then
    local nt = self:expect("name")
    target = { k = "name", name = nt.v, line = nt.line }
  elseif with_tuple ~= false then
    target = self:parse_tuple(false, true, extra_end)
  else
    target = self:parse_primary()
  end
  local function check(node)
    if node.k == "name" then
      if node.name == "true" or node.name == "false" or node.name == "none" or node.name == "True" or
        node.name == "False" or node.name == "None" then
        self:fail(format("can't assign to %s", node.name), node.line)
      end
      return
    end
    if node.k == "tuple" then
      for _, item in ipairs(node.items) do check(item) end
      return
    end
    self:fail(format("can't assign to '%s'", node.k), node.line)
  end
  check(target)
  return target
end

function Parser:stmt_for()
  local line = self:next().line
  local target = self:parse_assign_target(true, false, { ["in"] = true })
  self:expect("name", "in")
  local iter = self:parse_tuple(false, false, { recursive = true })
  local cond
  if self:skip_if("name", "if") then cond = self:parse_expression(true) end
  if self:skip_if("name", "recursive") then
    self:fail("unsupported Jinja construct 'recursive loops'", line)
  end
  local body = self:parse_statements({ endfor = true, ["else"] = true })
  local else_
  if self:next().v == "else" then
    else_ = self:parse_statements({ endfor = true }, true)
  end
  self:expect("block_end")
  return { k = "for", target = target, iter = iter, cond = cond, body = body, else_ = else_, line = line }
end

function Parser:stmt_set()
  local line = self:next().line
  local target = self:parse_assign_target(true, false, nil, true)
  if self:skip_if("=") then
    local value = self:parse_tuple(true)
    self:expect("block_end")
    return { k = "set", target = target, value = value, line = line }
  end
  local filter
  if self:is("|") then filter = self:parse_filter(nil) end
  local body = self:parse_statements({ endset = true }, true)
  self:expect("block_end")
  return { k = "setblock", target = target, filter = filter, body = body, line = line }
end

function Parser:stmt_macro()
  local line = self:next().line
  local name = self:expect("name").v
  local args, defaults = {}, {}
  self:expect("(")
  while not self:is(")") do
    if #args > 0 then self:expect(",") end
    local a = self:expect("name")
    if self:skip_if("=") then
      defaults[#args + 1] = self:parse_expression(true)
    elseif next(defaults) then
      self:fail("non-default argument follows default argument", a.line)
    end
    args[#args + 1] = a.v
  end
  self:expect(")")
  local body = self:parse_statements({ endmacro = true }, true)
  self:expect("block_end")
  return { k = "macro", name = name, args = args, defaults = defaults, body = body, line = line }
end

function Parser:stmt_with()
  local line = self:next().line
  local targets, values = {}, {}
  while not self:is("block_end") do
    if #targets > 0 then self:expect(",") end
    targets[#targets + 1] = self:parse_assign_target()
    self:expect("=")
    values[#values + 1] = self:parse_expression(true)
  end
  local body = self:parse_statements({ endwith = true }, true)
  self:expect("block_end")
  return { k = "with", targets = targets, values = values, body = body, line = line }
end

function Parser:stmt_generation()
  local line = self:next().line
  local body = self:parse_statements({ endgeneration = true }, true)
  self:expect("block_end")
  return { k = "generation", body = body, line = line }
end

function Parser:stmt_break()
  local line = self:next().line
  self:expect("block_end")
  return { k = "break", line = line }
end

function Parser:stmt_continue()
  local line = self:next().line
  self:expect("block_end")
  return { k = "continue", line = line }
end

function Parser:stmt_print()
  local line = self:next().line
  local e = self:parse_tuple(true)
  self:expect("block_end")
  return { k = "output", e = e, line = line }
end

-- Expressions ----------------------------------------------------------------------------

function Parser:is_tuple_end(extra_end)
  local c = self:cur()
  if c.t == "var_end" or c.t == "block_end" or c.t == ")" then return true end
  if extra_end and c.t == "name" and extra_end[c.v] then return true end
  return false
end

function Parser:parse_tuple(with_condexpr, simplified, extra_end, explicit_parens)
  local line = self:cur().line
  local items, is_tuple = {}, false
  while true do
    if #items > 0 then self:expect(",") end
    if self:is_tuple_end(extra_end) then break end
    if simplified then items[#items + 1] = self:parse_primary()
    else items[#items + 1] = self:parse_expression(with_condexpr) end
    if self:is(",") then is_tuple = true else break end
  end
  if not is_tuple then
    if #items > 0 then return items[1] end
    if not explicit_parens then
      self:fail(format("Expected an expression, got '%s'", describe(self:cur())), self:cur().line)
    end
  end
  return { k = "tuple", items = items, line = line }
end

function Parser:parse_expression(with_condexpr)
  if with_condexpr == false then return self:parse_or() end
  local line = self:cur().line
  local e = self:parse_or()
  while self:skip_if("name", "if") do
    local cond = self:parse_or()
    local else_
    if self:skip_if("name", "else") then else_ = self:parse_expression(true) end
    e = { k = "condexpr", test = cond, a = e, b = else_, line = line }
  end
  return e
end

function Parser:parse_or()
  local e = self:parse_and()
  while self:is("name", "or") do
    local line = self:next().line
    e = { k = "or", a = e, b = self:parse_and(), line = line }
  end
  return e
end

function Parser:parse_and()
  local e = self:parse_not()
  while self:is("name", "and") do
    local line = self:next().line
    e = { k = "and", a = e, b = self:parse_not(), line = line }
  end
  return e
end

function Parser:parse_not()
  if self:is("name", "not") then
    local line = self:next().line
    return { k = "not", a = self:parse_not(), line = line }
  end
  return self:parse_compare()
end

local COMPARE = { ["=="] = true, ["!="] = true, ["<"] = true, [">"] = true, ["<="] = true, [">="] = true }

function Parser:parse_compare()
  local line = self:cur().line
  local e = self:parse_math1()
  local ops = {}
  while true do
    local c = self:cur()
    if COMPARE[c.t] then
      self:next()
      ops[#ops + 1] = { op = c.t, e = self:parse_math1() }
    elseif self:skip_if("name", "in") then
      ops[#ops + 1] = { op = "in", e = self:parse_math1() }
    elseif self:is("name", "not") and self:look().t == "name" and self:look().v == "in" then
      self:next(); self:next()
      ops[#ops + 1] = { op = "notin", e = self:parse_math1() }
    else
      break
    end
  end
  if #ops == 0 then return e end
  return { k = "compare", e = e, ops = ops, line = line }
end

function Parser:parse_math1()
  local e = self:parse_concat()
  while self:is("+") or self:is("-") do
    local t = self:next()
    e = { k = "bin", op = t.t, a = e, b = self:parse_concat(), line = t.line }
  end
  return e
end

function Parser:parse_concat()
  local line = self:cur().line
  local args = { self:parse_math2() }
  while self:skip_if("~") do args[#args + 1] = self:parse_math2() end
  if #args == 1 then return args[1] end
  return { k = "concat", args = args, line = line }
end

function Parser:parse_math2()
  local e = self:parse_pow()
  while self:is("*") or self:is("/") or self:is("//") or self:is("%") do
    local t = self:next()
    e = { k = "bin", op = t.t, a = e, b = self:parse_pow(), line = t.line }
  end
  return e
end

function Parser:parse_pow()
  local e = self:parse_unary(true)
  while self:is("**") do
    local t = self:next()
    e = { k = "bin", op = "**", a = e, b = self:parse_unary(true), line = t.line }
  end
  return e
end

function Parser:parse_unary(with_filter)
  local t = self:cur()
  local node
  if t.t == "-" then
    self:next()
    node = { k = "neg", a = self:parse_unary(false), line = t.line }
  elseif t.t == "+" then
    self:next()
    node = { k = "pos", a = self:parse_unary(false), line = t.line }
  else
    node = self:parse_primary()
  end
  node = self:parse_postfix(node)
  if with_filter then node = self:parse_filter_expr(node) end
  return node
end

function Parser:parse_primary()
  local t = self:cur()
  if t.t == "name" then
    self:next()
    if t.v == "true" or t.v == "True" then return { k = "const", v = true, line = t.line } end
    if t.v == "false" or t.v == "False" then return { k = "const", v = false, line = t.line } end
    if t.v == "none" or t.v == "None" then return { k = "const", v = null, line = t.line } end
    return { k = "name", name = t.v, line = t.line }
  elseif t.t == "string" then
    self:next()
    local buf = { t.v }
    while self:is("string") do buf[#buf + 1] = self:next().v end
    return { k = "const", v = concat(buf), line = t.line }
  elseif t.t == "integer" or t.t == "float" then
    self:next()
    return { k = "const", v = t.v, line = t.line }
  elseif t.t == "(" then
    self:next()
    local e = self:parse_tuple(true, false, nil, true)
    self:expect(")")
    return e
  elseif t.t == "[" then
    self:next()
    local items = {}
    while not self:is("]") do
      if #items > 0 then self:expect(",") end
      if self:is("]") then break end
      items[#items + 1] = self:parse_expression(true)
    end
    self:expect("]")
    return { k = "list", items = items, line = t.line }
  elseif t.t == "{" then
    self:next()
    local pairs_ = {}
    while not self:is("}") do
      if #pairs_ > 0 then self:expect(",") end
      if self:is("}") then break end
      local key = self:parse_expression(true)
      self:expect(":")
      pairs_[#pairs_ + 1] = { key = key, value = self:parse_expression(true) }
    end
    self:expect("}")
    return { k = "dict", pairs = pairs_, line = t.line }
  end
  if t.t == "eof" then self:fail("unexpected end of template", t.line) end
  self:fail(format("unexpected '%s'", describe(t)), t.line)
end

function Parser:parse_postfix(node)
  while true do
    local t = self:cur()
    if t.t == "." then
      self:next()
      local a = self:next()
      if a.t == "name" then
        node = { k = "getattr", obj = node, attr = a.v, line = t.line }
      elseif a.t == "integer" then
        node = { k = "getitem", obj = node, key = { k = "const", v = a.v, line = a.line }, line = t.line }
      else
        self:fail("expected name or number", a.line)
      end
    elseif t.t == "[" then
      self:next()
      local args = {}
      while not self:is("]") do
        if #args > 0 then self:expect(",") end
        args[#args + 1] = self:parse_subscribed()
      end
      self:expect("]")
      local key = #args == 1 and args[1] or { k = "tuple", items = args, line = t.line }
      node = { k = "getitem", obj = node, key = key, line = t.line }
    elseif t.t == "(" then
      node = self:parse_call(node)
    else
      return node
    end
  end
end

function Parser:parse_subscribed()
  local line = self:cur().line
  local parts = {}
  if self:is(":") then
    self:next()
    parts[1] = false
  else
    local e = self:parse_expression(true)
    if not self:is(":") then return e end
    self:next()
    parts[1] = e
  end
  if self:is(":") then parts[2] = false
  elseif not self:is("]") and not self:is(",") then parts[2] = self:parse_expression(true)
  else parts[2] = false end
  if self:is(":") then
    self:next()
    if not self:is("]") and not self:is(",") then parts[3] = self:parse_expression(true) else parts[3] = false end
  else
    parts[3] = false
  end
  return { k = "slice", start = parts[1] or nil, stop = parts[2] or nil, step = parts[3] or nil, line = line }
end

function Parser:parse_call_args()
  local line = self:expect("(").line
  local args, kwargs = {}, {}
  local require_comma = false
  while not self:is(")") do
    if require_comma then
      self:expect(",")
      if self:is(")") then break end
    end
    if self:is("*") or self:is("**") then
      self:fail("unsupported Jinja construct '*args/**kwargs in calls'", line)
    end
    if self:is("name") and self:look().t == "=" then
      local key = self:next().v
      self:next()
      kwargs[#kwargs + 1] = { key = key, value = self:parse_expression(true) }
    else
      if #kwargs > 0 then self:fail("invalid syntax for function call expression", line) end
      args[#args + 1] = self:parse_expression(true)
    end
    require_comma = true
  end
  self:expect(")")
  return args, kwargs
end

function Parser:parse_call(node)
  local line = self:cur().line
  local args, kwargs = self:parse_call_args()
  return { k = "call", fn = node, args = args, kwargs = kwargs, line = line }
end

function Parser:parse_filter(node, start_inline)
  while self:is("|") or start_inline do
    if not start_inline then self:next() end
    start_inline = false
    local t = self:expect("name")
    local name = t.v
    while self:is(".") do
      self:next()
      name = name .. "." .. self:expect("name").v
    end
    if not filters[name] then
      for _, u in ipairs(UNSUPPORTED_FILTERS) do
        if u == name then self:fail(format("unsupported filter '%s'", name), t.line) end
      end
      self:fail(format("No filter named '%s'.", name), t.line)
    end
    local args, kwargs = {}, {}
    if self:is("(") then args, kwargs = self:parse_call_args() end
    node = { k = "filter", name = name, node = node, args = args, kwargs = kwargs, line = t.line }
  end
  return node
end

function Parser:parse_test(node)
  local line = self:next().line
  local negated = false
  if self:skip_if("name", "not") then negated = true end
  local nt = self:expect("name")
  local name = nt.v
  while self:is(".") do
    self:next()
    name = name .. "." .. self:expect("name").v
  end
  local args, kwargs = {}, {}
  local c = self:cur()
  if c.t == "(" then
    args, kwargs = self:parse_call_args()
  elseif (c.t == "name" or c.t == "string" or c.t == "integer" or c.t == "float" or c.t == "[" or c.t == "{")
    and not (c.t == "name" and (c.v == "else" or c.v == "or" or c.v == "and")) then
    if c.t == "name" and c.v == "is" then self:fail("You cannot chain multiple tests with is", c.line) end
    local a = self:parse_primary()
    args = { self:parse_postfix(a) }
  end
  if not tests[name] then self:fail(format("No test named '%s'.", name), nt.line) end
  node = { k = "test", name = name, node = node, args = args, kwargs = kwargs, line = line }
  if negated then node = { k = "not", a = node, line = line } end
  return node
end

function Parser:parse_filter_expr(node)
  while true do
    local c = self:cur()
    if c.t == "|" then node = self:parse_filter(node)
    elseif c.t == "name" and c.v == "is" then node = self:parse_test(node)
    elseif c.t == "(" then node = self:parse_call(node)
    else return node end
  end
end

-- ---- evaluation ----------------------------------------------------------------------------------------

local Scope = {}
Scope.__index = Scope
local function new_scope(parent) return setmetatable({ vars = {}, parent = parent }, Scope) end
function Scope:lookup(name)
  local s = self
  while s do
    local v = s.vars[name]
    if v ~= nil then return v end
    s = s.parent
  end
  return nil
end

local BREAK, CONTINUE = {}, {}

local eval, render_body

local function eval_args(node, scope)
  local args = { n = #node.args }
  for i, a in ipairs(node.args) do args[i] = eval(a, scope) end
  local kwargs
  if #node.kwargs > 0 then
    kwargs = new_dict()
    for _, kw in ipairs(node.kwargs) do dict_set(kwargs, kw.key, eval(kw.value, scope)) end
  end
  return args, kwargs
end

local function call_value(fn, args, kwargs)
  if getmetatable(fn) == CALLABLE then return fn.fn(args, kwargs) end
  if is_undef(fn) then undef_fail(fn) end
  raise(format("'%s' object is not callable", type_name(fn)))
end

local function compare(op, a, b)
  if op == "==" then return py_eq(a, b) end
  if op == "!=" then return not py_eq(a, b) end
  if op == "<" then return py_lt(a, b, "<") end
  if op == ">" then return py_lt(b, a, ">") end
  if op == "<=" then return not py_lt(b, a, "<=") end
  if op == ">=" then return not py_lt(a, b, ">=") end
  if op == "in" then return py_contains(b, a) end
  if op == "notin" then return not py_contains(b, a) end
end

local function assign(target, value, scope)
  if target.k == "name" then
    scope.vars[target.name] = value
  elseif target.k == "tuple" then
    local items, n = py_iter(value)
    if n ~= #target.items then
      if n > #target.items then raise(format("too many values to unpack (expected %d)", #target.items)) end
      raise(format("not enough values to unpack (expected %d, got %d)", #target.items, n))
    end
    for i, t in ipairs(target.items) do assign(t, items[i], scope) end
  elseif target.k == "nsref" then
    local ns = scope:lookup(target.name)
    if getmetatable(ns) ~= NAMESPACE then raise("cannot assign attribute on non-namespace object") end
    if sub(target.attr, 1, 1) == "_" then
      raise(format("Chat templates cannot store underscore-prefixed attributes on a namespace, but got %s. Please rename the attribute.", str_repr(target.attr)))
    end
    dict_set(ns.attrs, target.attr, value)
  end
end

local ev = {}

function ev.const(n) return n.v end
function ev.name(n, scope)
  local v = scope:lookup(n.name)
  if v == nil then return undefined(format("'%s' is undefined", n.name)) end
  return v
end
function ev.list(n, scope)
  local out = {}
  for i, it in ipairs(n.items) do out[i] = eval(it, scope) end
  return new_list(out, #n.items)
end
function ev.tuple(n, scope)
  local out = {}
  for i, it in ipairs(n.items) do out[i] = eval(it, scope) end
  return new_tuple(out, #n.items)
end
function ev.dict(n, scope)
  local d = new_dict()
  for _, p in ipairs(n.pairs) do
    local k = eval(p.key, scope)
    local kk = dict_key(k)
    if type(kk) == "table" then raise(format("unhashable type: '%s'", type_name(k))) end
    dict_set(d, kk, eval(p.value, scope))
  end
  return d
end
function ev.getattr(n, scope) return getattr(eval(n.obj, scope), n.attr) end
function ev.getitem(n, scope)
  local obj = eval(n.obj, scope)
  if n.key.k == "slice" then
    local function opt(e)
      if not e then return nil end
      local v = eval(e, scope)
      if v == null then return nil end
      v = as_num(v)
      if mtype(v) ~= "integer" then raise("slice indices must be integers or None") end
      return v
    end
    if is_undef(obj) then undef_fail(obj) end
    return slice_value(obj, opt(n.key.start), opt(n.key.stop), opt(n.key.step))
  end
  return getitem(obj, eval(n.key, scope))
end
function ev.call(n, scope)
  local fn = eval(n.fn, scope)
  local args, kwargs = eval_args(n, scope)
  return call_value(fn, args, kwargs)
end
function ev.filter(n, scope)
  local v = eval(n.node, scope)
  local args, kwargs = eval_args(n, scope)
  return filters[n.name](v, args, kwargs)
end
function ev.test(n, scope)
  local v = eval(n.node, scope)
  local args = eval_args(n, scope)
  return tests[n.name](v, args) and true or false
end
function ev.not_(n, scope) return not truthy(eval(n.a, scope)) end
ev["not"] = ev.not_
function ev.neg(n, scope)
  local v = eval(n.a, scope)
  if not is_num(v) then
    if is_undef(v) then undef_fail(v) end
    raise(format("bad operand type for unary -: '%s'", type_name(v)))
  end
  return -as_num(v)
end
function ev.pos(n, scope)
  local v = eval(n.a, scope)
  if not is_num(v) then
    if is_undef(v) then undef_fail(v) end
    raise(format("bad operand type for unary +: '%s'", type_name(v)))
  end
  return as_num(v)
end
ev["and"] = function(n, scope)
  local a = eval(n.a, scope)
  if not truthy(a) then return a end
  return eval(n.b, scope)
end
ev["or"] = function(n, scope)
  local a = eval(n.a, scope)
  if truthy(a) then return a end
  return eval(n.b, scope)
end
function ev.condexpr(n, scope)
  if truthy(eval(n.test, scope)) then return eval(n.a, scope) end
  if n.b then return eval(n.b, scope) end
  return undefined("the inline if-expression on line " .. n.line .. " evaluated to false and no else section was defined.")
end
function ev.bin(n, scope)
  return py_arith(n.op, eval(n.a, scope), eval(n.b, scope))
end
function ev.concat(n, scope)
  local parts = {}
  for i, a in ipairs(n.args) do parts[i] = py_str(eval(a, scope)) end
  return concat(parts)
end
function ev.compare(n, scope)
  local left = eval(n.e, scope)
  for _, o in ipairs(n.ops) do
    local right = eval(o.e, scope)
    if not compare(o.op, left, right) then return false end
    left = right
  end
  return true
end

function eval(n, scope)
  local f = ev[n.k]
  if not f then raise("cannot evaluate '" .. n.k .. "'") end
  local ok, res = pcall(f, n, scope)
  if ok then return res end
  if getmetatable(res) == TemplateError then
    if not res.line then res.line = n.line end
    error(res, 0)
  end
  error(setmetatable({ msg = tostring(res), line = n.line }, TemplateError), 0)
end

local function make_loop(items, n, depth)
  local loop = setmetatable({ i = 0 }, LOOP)
  local last_changed = {}
  loop.get = function(name)
    local i = loop.i
    if name == "index" then return i end
    if name == "index0" then return i - 1 end
    if name == "revindex" then return n - i + 1 end
    if name == "revindex0" then return n - i end
    if name == "first" then return i == 1 end
    if name == "last" then return i == n end
    if name == "length" then return n end
    if name == "depth" then return depth end
    if name == "depth0" then return depth - 1 end
    if name == "previtem" then
      if i > 1 then return items[i - 1] end
      return undefined("there is no previous item")
    end
    if name == "nextitem" then
      if i < n then return items[i + 1] end
      return undefined("there is no next item")
    end
    if name == "cycle" then
      return callable("cycle", function(args)
        if (args.n or #args) == 0 then raise("no items for cycling given") end
        return args[(i - 1) % (args.n or #args) + 1]
      end)
    end
    if name == "changed" then
      return callable("changed", function(args)
        local vals = new_list({ table.unpack(args, 1, args.n or #args) }, args.n or #args)
        if last_changed.v ~= nil and py_eq(last_changed.v, vals) then return false end
        last_changed.v = vals
        return true
      end)
    end
    return nil
  end
  return loop
end

local exec = {}

function exec.data(n, scope, out) out[#out + 1] = n.v end
function exec.output(n, scope, out) out[#out + 1] = py_str(eval(n.e, scope)) end
exec["if"] = function(n, scope, out)
  for _, b in ipairs(n.branches) do
    if truthy(eval(b.test, scope)) then return render_body(b.body, scope, out) end
  end
  if n.else_ then return render_body(n.else_, scope, out) end
end
exec["for"] = function(n, scope, out)
  local seq = eval(n.iter, scope)
  local items, count = py_iter(seq)
  -- A copy: the loop must not see later changes (and filtered items are counted).
  local list, k = {}, 0
  if n.cond then
    for i = 1, count do
      local s = new_scope(scope)
      assign(n.target, items[i], s)
      if truthy(eval(n.cond, s)) then k = k + 1; list[k] = items[i] end
    end
  else
    for i = 1, count do list[i] = items[i] end
    k = count
  end
  if k == 0 then
    if n.else_ then return render_body(n.else_, scope, out) end
    return
  end
  local loop = make_loop(list, k, 1) -- depth counts recursive loops only
  for i = 1, k do
    loop.i = i
    local s = new_scope(scope)
    s.vars.loop = loop
    assign(n.target, list[i], s)
    local sig = render_body(n.body, s, out)
    if sig == BREAK then break end
  end
end
function exec.set(n, scope)
  assign(n.target, eval(n.value, scope), scope)
end
function exec.setblock(n, scope)
  local buf = {}
  render_body(n.body, scope, buf)
  local v = concat(buf)
  if n.filter then
    local s = new_scope(scope)
    -- the filter chain reads its input from this hidden variable
    local f = n.filter
    local chain = {}
    while f and f.k == "filter" do chain[#chain + 1] = f; f = f.node end
    for i = #chain, 1, -1 do
      local node = chain[i]
      local args, kwargs = eval_args(node, s)
      v = filters[node.name](v, args, kwargs)
    end
  end
  assign(n.target, v, scope)
end
function exec.macro(n, scope)
  local def_scope = scope
  local fn = callable(n.name, function(args, kwargs)
    local s = new_scope(def_scope)
    local nargs = args.n or #args
    if nargs > #n.args then
      raise(format("macro '%s' takes not more than %d argument(s)", n.name, #n.args))
    end
    for i, name in ipairs(n.args) do
      local v = args[i]
      if v == nil and kwargs and kwargs.map[name] ~= nil then v = kwargs.map[name] end
      if v == nil then
        if n.defaults[i] then v = eval(n.defaults[i], s)
        else v = undefined(format("parameter '%s' was not provided", name)) end
      end
      s.vars[name] = v
    end
    if kwargs then
      for _, k in ipairs(kwargs.keys) do
        local known = false
        for _, a in ipairs(n.args) do if a == k then known = true end end
        if not known then raise(format("macro '%s' takes no keyword argument '%s'", n.name, k)) end
      end
    end
    local buf = {}
    render_body(n.body, s, buf)
    return concat(buf)
  end)
  scope.vars[n.name] = fn
end
exec.with = function(n, scope, out)
  local s = new_scope(scope)
  local vals = {}
  for i, v in ipairs(n.values) do vals[i] = eval(v, scope) end
  for i, t in ipairs(n.targets) do assign(t, vals[i], s) end
  return render_body(n.body, s, out)
end
function exec.generation(n, scope, out) return render_body(n.body, scope, out) end
exec["break"] = function() return BREAK end
exec["continue"] = function() return CONTINUE end

function render_body(body, scope, out)
  for _, n in ipairs(body) do
    local ok, sig = pcall(exec[n.k], n, scope, out)
    if not ok then
      if getmetatable(sig) == TemplateError then
        if not sig.line then sig.line = n.line end
        error(sig, 0)
      end
      error(setmetatable({ msg = tostring(sig), line = n.line }, TemplateError), 0)
    end
    if sig == BREAK or sig == CONTINUE then return sig end
  end
end

-- ---- globals ----------------------------------------------------------------------------------------------

local MAX_RANGE = 100000

local function make_globals()
  local g = {}
  g.range = callable("range", function(args)
    local a, b, s
    local n = args.n or #args
    for i = 1, n do
      local v = as_num(args[i])
      if mtype(v) ~= "integer" then raise(format("'%s' object cannot be interpreted as an integer", type_name(args[i]))) end
    end
    if n == 1 then a, b, s = 0, as_num(args[1]), 1
    elseif n == 2 then a, b, s = as_num(args[1]), as_num(args[2]), 1
    elseif n == 3 then a, b, s = as_num(args[1]), as_num(args[2]), as_num(args[3])
    else raise(format("range expected at most 3 arguments, got %d", n)) end
    if s == 0 then raise("range() arg 3 must not be zero") end
    local out, k = {}, 0
    local i = a
    while (s > 0 and i < b) or (s < 0 and i > b) do
      k = k + 1
      if k > MAX_RANGE then raise(format("Range too big. The sandbox blocks ranges larger than MAX_RANGE (%d).", MAX_RANGE)) end
      out[k] = i
      i = i + s
    end
    local r = new_list(out, k)
    r.range = s == 1 and format("range(%d, %d)", a, b) or format("range(%d, %d, %d)", a, b, s)
    return r
  end)
  g.namespace = callable("namespace", function(args, kwargs)
    local ns = setmetatable({ attrs = new_dict() }, NAMESPACE)
    if args[1] ~= nil then
      local d = args[1]
      if getmetatable(d) ~= OBJECT then raise("namespace() argument must be a mapping") end
      for _, k in ipairs(d.keys) do dict_set(ns.attrs, k, d.map[k]) end
    end
    if kwargs then
      for _, k in ipairs(kwargs.keys) do
        if type(k) == "string" and sub(k, 1, 1) == "_" then
          raise(format("Chat templates cannot store underscore-prefixed attributes on a namespace, but got %s. Please rename the attribute.", str_repr(k)))
        end
        dict_set(ns.attrs, k, kwargs.map[k])
      end
    end
    return ns
  end)
  g.dict = callable("dict", function(args, kwargs)
    local d = new_dict()
    if args[1] ~= nil then
      local src = args[1]
      if getmetatable(src) == OBJECT then
        for _, k in ipairs(src.keys) do dict_set(d, k, src.map[k]) end
      else
        local items, n = py_iter(src)
        for i = 1, n do
          local pk, pn = py_iter(items[i])
          if pn ~= 2 then raise("dictionary update sequence element has wrong length") end
          dict_set(d, dict_key(pk[1]), pk[2])
        end
      end
    end
    if kwargs then for _, k in ipairs(kwargs.keys) do dict_set(d, k, kwargs.map[k]) end end
    return d
  end)
  g.raise_exception = callable("raise_exception", function(args)
    raise(py_str(args[1] == nil and "" or args[1]))
  end)
  g.strftime_now = callable("strftime_now", function(args)
    return os.date(arg_str(args[1], "format"))
  end)
  return g
end

-- ---- conversion of Lua values -------------------------------------------------------------------

--- Lua values to template values: plain tables become lists (sequences) or
-- dicts (sorted keys); pio.json values are used as they are.
local function from_lua(v)
  local t = type(v)
  if t == "table" then
    local mt = getmetatable(v)
    if mt == nil or mt == ARRAY or mt == OBJECT then return json.from_lua(v) end
    return v
  end
  if t == "function" then
    return callable("function", function(args) return v(table.unpack(args, 1, args.n or #args)) end)
  end
  return v
end
M.from_lua = from_lua

-- ---- the Template object -------------------------------------------------------------------------------

local Template = {}
Template.__index = Template

--- Compiles template text; `name` prefixes error messages ("chat template").
function M.compile(text, name)
  if type(text) ~= "string" then error("template must be a string, got " .. type(text), 2) end
  name = name or "template"
  local toks = tokenize(text, name)
  local p = setmetatable({ tok = toks, i = 1, name = name }, Parser)
  local body = p:subparse(nil)
  return setmetatable({ body = body, name = name }, Template)
end

--- Renders with the given variables (a Lua table of name → value; nil keys
-- are undefined). Returns the text, or raises "<name> line N: message".
function Template:render(vars)
  local globals = new_scope(nil)
  for k, v in pairs(make_globals()) do globals.vars[k] = v end
  local ctx = new_scope(globals)
  for k, v in pairs(vars or {}) do ctx.vars[k] = from_lua(v) end
  local top = new_scope(ctx)
  local out = {}
  local ok, err = pcall(render_body, self.body, top, out)
  if not ok then
    if getmetatable(err) == TemplateError then
      error(format("%s line %d: %s", self.name, err.line or 0, err.msg), 0)
    end
    error(err, 0)
  end
  return concat(out)
end

M.null = null
M.py_str, M.py_repr = py_str, py_repr
M.undefined = function() return undefined("undefined") end

return M
