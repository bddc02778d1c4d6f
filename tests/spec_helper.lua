-- tests/spec_helper.lua: loaded by busted before every spec (see .busted).
--
-- assert.tensor_near(a, b, rtol, atol): a and b are pio Tensors or nested Lua
-- tables of numbers (a Tensor is read through t:shape() and t:table()). Shapes
-- must match, and every element must satisfy numpy's allclose rule with b as
-- the reference: |a - b| <= atol + rtol * |b| (defaults rtol 1e-5, atol 1e-8).
-- NaN is never near anything. A failure names the worst element's 0-based
-- index and both values.
local luassert = require "luassert"
local say = require "say"

local function is_tensor(x)
  if type(x) ~= "userdata" then return false end
  local ok, method = pcall(function() return x.table end) -- a userdata may have no __index
  return ok and type(method) == "function"
end

-- Returns shape (array of dims), flat (array of numbers in row-major order),
-- or nil, message.
local function flatten(x, what)
  if is_tensor(x) then
    local shape = x:shape()
    if type(shape) ~= "table" then shape = { x:shape() } end
    local flat = {}
    local function walk(v)
      if type(v) == "table" then
        for i = 1, #v do walk(v[i]) end
      else
        flat[#flat + 1] = v
      end
    end
    walk(x:table())
    return shape, flat
  end
  if type(x) == "number" then return {}, { x } end
  if type(x) ~= "table" then
    return nil, string.format("%s is a %s, not a pio.Tensor or a table", what, type(x))
  end
  -- A nested table's shape comes from its first elements; ragged tables are rejected.
  local shape, flat = {}, {}
  local probe = x
  while type(probe) == "table" do
    shape[#shape + 1] = #probe
    probe = probe[1]
  end
  local function walk(v, depth, path)
    if depth > #shape then
      if type(v) ~= "number" then
        return string.format("%s%s is a %s, not a number", what, path, type(v))
      end
      flat[#flat + 1] = v
      return nil
    end
    if type(v) ~= "table" or #v ~= shape[depth] then
      return string.format("%s%s is ragged (expected %d elements)", what, path, shape[depth])
    end
    for i = 1, #v do
      local err = walk(v[i], depth + 1, path .. "[" .. i .. "]")
      if err then return err end
    end
    return nil
  end
  local err = walk(x, 1, "")
  if err then return nil, err end
  return shape, flat
end

local function shape_string(shape)
  return "{" .. table.concat(shape, ", ") .. "}"
end

-- The 0-based multi-index of flat position k (1-based) in shape.
local function index_string(shape, k)
  local idx, rest = {}, k - 1
  for d = #shape, 1, -1 do
    idx[d] = rest % shape[d]
    rest = rest // shape[d]
  end
  return "[" .. table.concat(idx, ", ") .. "]"
end

local function tensor_near(state, arguments)
  local rtol = arguments[3] or 1e-5
  local atol = arguments[4] or 1e-8
  local sa, fa = flatten(arguments[1], "a")
  local sb, fb = flatten(arguments[2], "b")
  if not sa or not sb then
    state.failure_message = sa and fb or fa
    return false
  end
  if #sa ~= #sb or #fa ~= #fb or shape_string(sa) ~= shape_string(sb) then
    state.failure_message = string.format("shapes differ: a is %s, b is %s", shape_string(sa),
                                          shape_string(sb))
    return false
  end
  local worst, worst_excess, bad = nil, -math.huge, 0
  for k = 1, #fa do
    local a, b = fa[k], fb[k]
    local excess
    if a ~= a or b ~= b then
      excess = math.huge
    elseif a == b then -- covers equal infinities
      excess = -atol
    else
      excess = math.abs(a - b) - (atol + rtol * math.abs(b))
      if excess ~= excess then excess = math.huge end -- inf - inf
    end
    if excess > 0 then bad = bad + 1 end
    if excess > worst_excess then worst, worst_excess = k, excess end
  end
  if bad > 0 then
    local a, b = fa[worst], fb[worst]
    local why = (a ~= a or b ~= b) and "NaN is never near"
      or string.format("|a - b| = %.3g > atol %g + rtol %g * |b|", math.abs(a - b), atol, rtol)
    state.failure_message = string.format(
      "tensors differ at index %s (0-based): a = %.9g, b = %.9g, %s; %d of %d elements out of tolerance",
      index_string(sa, worst), a, b, why, bad, #fa)
    return false
  end
  state.failure_message = string.format(
    "expected tensors to differ, but all %d elements of shape %s are within rtol %g, atol %g",
    #fa, shape_string(sa), rtol, atol)
  return true
end

-- The detailed text is in state.failure_message; these are the fallbacks luassert appends.
say:set("assertion.tensor_near.positive", "Expected the tensors to be near.")
say:set("assertion.tensor_near.negative", "Expected the tensors not to be near.")
luassert:register("assertion", "tensor_near", tensor_near, "assertion.tensor_near.positive",
                  "assertion.tensor_near.negative")
