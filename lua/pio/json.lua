--- pio.json: JSON text in and out, the way Python's `json` module does it.
--
-- Chat templates print tool schemas with `tojson`, so a tool given as JSON
-- text must come back out byte for byte as Python would print it: objects keep
-- their key order, integers stay integers ("1") and floats stay floats ("1.0").
-- lua-cjson keeps neither, hence this module.
--
-- Values:
--   null       json.null (a sentinel; Lua's nil cannot live in a table)
--   array      a table {n = count, [1..n] = items} with json.ARRAY as metatable
--   object     a table {keys = {k1, k2, ...}, map = {[k] = v}} with json.OBJECT
--   string, number (integer or float subtype), boolean: themselves
--
-- json.decode(text) → value, or raises "invalid JSON at line L, column C: why".
-- json.encode(value, {indent=, separators=, sort_keys=, ensure_ascii=}) follows
-- json.dumps (ensure_ascii defaults to false, as transformers' tojson has it).
-- Plain Lua tables are accepted too: a sequence (or an empty table) is an
-- array, anything else an object whose keys are sorted, since a Lua table has
-- no key order of its own.
local M = {}

local null = setmetatable({}, { __name = "pio.json.null", __tostring = function() return "null" end })
M.null = null

local ARRAY = { __name = "pio.json.array" }
local OBJECT = { __name = "pio.json.object" }
M.ARRAY, M.OBJECT = ARRAY, OBJECT

local concat, floor, huge = table.concat, math.floor, math.huge
local byte, char, sub, find, format = string.byte, string.char, string.sub, string.find, string.format
local mtype = math.type

--- A new array from a Lua list (n items; n defaults to #list).
function M.array(list, n)
  list = list or {}
  list.n = n or #list
  return setmetatable(list, ARRAY)
end

--- A new, empty object.
function M.object()
  return setmetatable({ keys = {}, map = {} }, OBJECT)
end

--- Sets obj[k] = v, appending k to the key order when it is new.
function M.set(obj, k, v)
  if obj.map[k] == nil then obj.keys[#obj.keys + 1] = k end
  obj.map[k] = v
end

function M.is_array(v) return getmetatable(v) == ARRAY end
function M.is_object(v) return getmetatable(v) == OBJECT end

-- ---- decoding ---------------------------------------------------------------

local function position(text, i)
  local line, col = 1, 1
  local p = 1
  while true do
    local nl = find(text, "\n", p, true)
    if not nl or nl >= i then break end
    line = line + 1
    p = nl + 1
  end
  col = i - p + 1
  return line, col
end

local function fail(text, i, why)
  local line, col = position(text, i)
  error(format("invalid JSON at line %d, column %d: %s", line, col, why), 0)
end

local function skip_ws(text, i)
  local _, e = find(text, "^[ \t\r\n]*", i)
  return e + 1
end

local escapes = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function decode_string(text, i) -- text[i] is the opening quote
  local parts, np = {}, 0
  local j = i + 1
  while true do
    local s, e = find(text, '^[^"\\\0-\31]*', j)
    if e >= s then
      np = np + 1
      parts[np] = sub(text, s, e)
    end
    j = e + 1
    local c = sub(text, j, j)
    if c == '"' then
      return concat(parts), j + 1
    elseif c == "\\" then
      local esc = sub(text, j + 1, j + 1)
      if escapes[esc] then
        np = np + 1
        parts[np] = escapes[esc]
        j = j + 2
      elseif esc == "u" then
        local hex = sub(text, j + 2, j + 5)
        if not hex:match("^%x%x%x%x$") then fail(text, j, "bad \\u escape") end
        local cp = tonumber(hex, 16)
        j = j + 6
        if cp >= 0xD800 and cp <= 0xDBFF and sub(text, j, j + 1) == "\\u" then
          local lo = sub(text, j + 2, j + 5)
          local lcp = lo:match("^%x%x%x%x$") and tonumber(lo, 16)
          if lcp and lcp >= 0xDC00 and lcp <= 0xDFFF then
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lcp - 0xDC00)
            j = j + 6
          end
        end
        np = np + 1
        parts[np] = utf8.char(cp) -- a lone surrogate stays one, as in Python
      else
        fail(text, j, "bad escape \\" .. esc)
      end
    elseif c == "" then
      fail(text, i, "unterminated string")
    else
      fail(text, j, "control character in string")
    end
  end
end

local decode_value

local function decode_array(text, i, depth)
  local arr, n = setmetatable({}, ARRAY), 0
  i = skip_ws(text, i + 1)
  if sub(text, i, i) == "]" then
    arr.n = 0
    return arr, i + 1
  end
  while true do
    local v
    v, i = decode_value(text, i, depth)
    n = n + 1
    arr[n] = v
    i = skip_ws(text, i)
    local c = sub(text, i, i)
    if c == "]" then
      arr.n = n
      return arr, i + 1
    elseif c ~= "," then
      fail(text, i, "expected ',' or ']'")
    end
    i = skip_ws(text, i + 1)
  end
end

local function decode_object(text, i, depth)
  local obj = M.object()
  local keys, map = obj.keys, obj.map
  i = skip_ws(text, i + 1)
  if sub(text, i, i) == "}" then return obj, i + 1 end
  while true do
    if sub(text, i, i) ~= '"' then fail(text, i, "expected a string key") end
    local k
    k, i = decode_string(text, i)
    i = skip_ws(text, i)
    if sub(text, i, i) ~= ":" then fail(text, i, "expected ':'") end
    local v
    v, i = decode_value(text, skip_ws(text, i + 1), depth)
    if map[k] == nil then keys[#keys + 1] = k end -- a repeated key keeps its first place, as dict does
    map[k] = v
    i = skip_ws(text, i)
    local c = sub(text, i, i)
    if c == "}" then return obj, i + 1 end
    if c ~= "," then fail(text, i, "expected ',' or '}'") end
    i = skip_ws(text, i + 1)
  end
end

function decode_value(text, i, depth)
  if depth > 500 then fail(text, i, "nesting too deep") end
  local c = sub(text, i, i)
  if c == "{" then return decode_object(text, i, depth + 1) end
  if c == "[" then return decode_array(text, i, depth + 1) end
  if c == '"' then return decode_string(text, i) end
  if c == "t" and sub(text, i, i + 3) == "true" then return true, i + 4 end
  if c == "f" and sub(text, i, i + 4) == "false" then return false, i + 5 end
  if c == "n" and sub(text, i, i + 3) == "null" then return null, i + 4 end
  if c == "N" and sub(text, i, i + 2) == "NaN" then return 0 / 0, i + 3 end
  if c == "I" and sub(text, i, i + 7) == "Infinity" then return huge, i + 8 end
  if c == "-" and sub(text, i, i + 8) == "-Infinity" then return -huge, i + 9 end
  local s, e, int, frac, exp = find(text, "^(-?%d+)(%.?%d*)([eE]?[-+]?%d*)", i)
  if s and not int:match("^-?0%d") and (frac == "" or #frac > 1) and (exp == "" or exp:match("%d$")) then
    local txt = sub(text, s, e)
    if frac == "" and exp == "" then
      local v = math.tointeger(tonumber(txt))
      if v then return v, e + 1 end -- beyond 64 bits it becomes a float
    end
    return tonumber(txt) + 0.0, e + 1
  end
  if c == "" then fail(text, i, "unexpected end of text") end
  fail(text, i, "unexpected character '" .. c .. "'")
end

--- Parses JSON text. Raises "invalid JSON at line L, column C: ..." on bad input.
function M.decode(text)
  if type(text) ~= "string" then error("JSON text must be a string, got " .. type(text), 2) end
  local ok, bad = utf8.len(text)
  if not ok then error(format("invalid JSON: not UTF-8 at byte %d", bad), 0) end
  local v, i = decode_value(text, skip_ws(text, 1), 0)
  i = skip_ws(text, i)
  if i <= #text then fail(text, i, "extra data after the value") end
  return v
end

-- ---- Python's repr of a float ---------------------------------------------------

--- float.__repr__: the shortest text that reads back as the same double,
-- fixed-point when the exponent is in [-4, 16), otherwise 'd.ddde+XX'.
function M.float_repr(x)
  if x ~= x then return "nan" end
  if x == huge then return "inf" end
  if x == -huge then return "-inf" end
  if x == 0 then return (1 / x < 0) and "-0.0" or "0.0" end
  local s
  for p = 1, 17 do
    s = format("%." .. (p - 1) .. "e", x)
    if tonumber(s) == x then break end
  end
  local sign, mant, exp = s:match("^(-?)([%d%.]+)e([-+]%d+)$")
  local digits = mant:gsub("%.", "")
  exp = tonumber(exp)
  if exp >= -4 and exp < 16 then
    local point = exp + 1 -- digits before the decimal point
    local out
    if point <= 0 then
      out = "0." .. string.rep("0", -point) .. digits
    elseif point >= #digits then
      out = digits .. string.rep("0", point - #digits) .. ".0"
    else
      out = sub(digits, 1, point) .. "." .. sub(digits, point + 1)
    end
    return sign .. out
  end
  local m = sub(digits, 1, 1)
  if #digits > 1 then m = m .. "." .. sub(digits, 2) end
  return format("%s%se%s%02d", sign, m, exp < 0 and "-" or "+", math.abs(exp))
end

-- ---- encoding ---------------------------------------------------------------------

local ctrl_escape = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
                      ["\b"] = "\\b", ["\f"] = "\\f" }

local function quote(s, ensure_ascii)
  s = s:gsub('[%c"\\]', function(c)
    return ctrl_escape[c] or (byte(c) < 0x20 and format("\\u%04x", byte(c))) or c
  end)
  if ensure_ascii and find(s, "[\128-\255]") then
    local out = {}
    for _, cp in utf8.codes(s, true) do
      if cp < 0x7f then
        out[#out + 1] = char(cp)
      elseif cp < 0x10000 then
        out[#out + 1] = format("\\u%04x", cp)
      else
        cp = cp - 0x10000
        out[#out + 1] = format("\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF))
      end
    end
    s = concat(out)
  end
  return '"' .. s .. '"'
end
M.quote = quote

local function number_text(v)
  if mtype(v) == "integer" then return tostring(v) end
  if v ~= v then return "NaN" end
  if v == huge then return "Infinity" end
  if v == -huge then return "-Infinity" end
  return M.float_repr(v)
end

local function key_text(k, ensure_ascii)
  local t = type(k)
  if t == "string" then return quote(k, ensure_ascii) end
  if t == "number" then return '"' .. number_text(k) .. '"' end
  if t == "boolean" then return k and '"true"' or '"false"' end
  if k == null then return '"null"' end
  error("keys must be str, int, float, bool or None, not " .. t, 0)
end

--- Lists a plain Lua table as an array (items, n) or nil when it is an object.
local function plain_array(t)
  local n = #t
  local count = 0
  for _ in pairs(t) do
    count = count + 1
    if count > n then return nil end
  end
  return t, n
end

local function sorted_keys(keys)
  local ks = {}
  for i = 1, #keys do ks[i] = keys[i] end
  table.sort(ks, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then error("'<' not supported between keys of type " .. ta .. " and " .. tb, 0) end
    return a < b
  end)
  return ks
end

--- Calls fn(k, v) for each entry of a Lua value that is an object, in order;
-- returns false when v is not an object. Shared with the Jinja interpreter.
function M.object_entries(v)
  local mt = getmetatable(v)
  if mt == OBJECT then return v.keys, v.map end
  if mt ~= nil or type(v) ~= "table" then return nil end
  if plain_array(v) then return nil end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  return sorted_keys(keys), v
end

--- Items of a Lua value that is an array: list, n; or nil.
function M.array_items(v)
  local mt = getmetatable(v)
  if mt == ARRAY then return v, v.n end
  if mt ~= nil or type(v) ~= "table" then return nil end
  return plain_array(v)
end

local encode_value

local function encode_list(items, n, o, level, out)
  if n == 0 then out[#out + 1] = "[]" return end
  out[#out + 1] = "["
  local nl = o.indent and ("\n" .. string.rep(o.indent, level + 1))
  for i = 1, n do
    if i > 1 then out[#out + 1] = o.item_sep end
    if nl then out[#out + 1] = nl end
    encode_value(items[i], o, level + 1, out)
  end
  if nl then out[#out + 1] = "\n" .. string.rep(o.indent, level) end
  out[#out + 1] = "]"
end

function encode_value(v, o, level, out)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = quote(v, o.ensure_ascii)
  elseif t == "number" then
    out[#out + 1] = number_text(v)
  elseif t == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif v == null or v == nil then
    out[#out + 1] = "null"
  elseif o.hook and o.hook(v, o, level, out) then
    -- written by the hook (the Jinja interpreter's own types)
  elseif t == "table" then
    if level > 200 then error("circular reference or nesting too deep", 0) end
    local items, n = M.array_items(v)
    if items then return encode_list(items, n, o, level, out) end
    local keys, map = M.object_entries(v)
    if not keys then error("Object of type " .. (getmetatable(v) and getmetatable(v).__name or t) ..
                           " is not JSON serializable", 0) end
    if #keys == 0 then out[#out + 1] = "{}" return end
    if o.sort_keys then keys = sorted_keys(keys) end
    out[#out + 1] = "{"
    local nl = o.indent and ("\n" .. string.rep(o.indent, level + 1))
    for i, k in ipairs(keys) do
      if i > 1 then out[#out + 1] = o.item_sep end
      if nl then out[#out + 1] = nl end
      out[#out + 1] = key_text(k, o.ensure_ascii)
      out[#out + 1] = o.key_sep
      encode_value(map[k], o, level + 1, out)
    end
    if nl then out[#out + 1] = "\n" .. string.rep(o.indent, level) end
    out[#out + 1] = "}"
  else
    error("Object of type " .. t .. " is not JSON serializable", 0)
  end
end

--- json.dumps: opts.indent (integer or string), opts.separators ({item, key}),
-- opts.sort_keys, opts.ensure_ascii (default false). opts.hook(v, o, level, out)
-- may write values of other types and return true.
function M.encode(v, opts)
  opts = opts or {}
  local indent = opts.indent
  if indent == null then indent = nil end
  if type(indent) == "number" then indent = string.rep(" ", math.max(0, floor(indent))) end
  local item_sep, key_sep = ", ", ": "
  if indent then item_sep = "," end
  if opts.separators and opts.separators ~= null then
    item_sep, key_sep = opts.separators[1], opts.separators[2]
  end
  local o = { indent = indent, item_sep = item_sep, key_sep = key_sep, hook = opts.hook,
              sort_keys = opts.sort_keys and opts.sort_keys ~= null,
              ensure_ascii = opts.ensure_ascii and opts.ensure_ascii ~= null }
  local out = {}
  encode_value(v, o, 0, out)
  return concat(out)
end

--- Converts plain Lua tables (recursively) to arrays and objects; values that
-- already are arrays and objects are kept (and walked).
function M.from_lua(v, depth)
  depth = depth or 0
  if depth > 200 then error("table nesting too deep (a cycle?)", 0) end
  if type(v) ~= "table" or v == null then return v end
  local mt = getmetatable(v)
  if mt == ARRAY then
    local a = setmetatable({ n = v.n }, ARRAY)
    for i = 1, v.n do a[i] = M.from_lua(v[i], depth + 1) end
    return a
  elseif mt == OBJECT then
    local o = M.object()
    for _, k in ipairs(v.keys) do M.set(o, k, M.from_lua(v.map[k], depth + 1)) end
    return o
  elseif mt ~= nil then
    return v
  end
  local items, n = plain_array(v)
  if items then
    local a = setmetatable({ n = n }, ARRAY)
    for i = 1, n do a[i] = M.from_lua(items[i], depth + 1) end
    return a
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  local o = M.object()
  for _, k in ipairs(sorted_keys(keys)) do M.set(o, k, M.from_lua(v[k], depth + 1)) end
  return o
end

return M
