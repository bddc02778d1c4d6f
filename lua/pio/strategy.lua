--- pio.strategy: strategies by family, the selection policy and model:use.
--
--   pio.strategy.kv.paged{ block = 16 }        -- a pio.Strategy (C userdata)
--   pio.strategy.sampling.top_k(20)            -- a number sets the first parameter
--   pio.strategy.sampling.chain(a, b, c)       -- a sampler chain made of strategies
--   s:supports(model, device)                  -- true, or false and the reason
--   pio.strategy.select(model, "cpu", { prefer = { kv = "paged" } })  -- a plan per family
--   model:use(plan) / model:use(s1, s2, ...)   -- recorded, reported by model:info()
--
-- The runtime's table (runtime/strategy.c) says what it can honour; this file
-- only picks among what it offers.
local core = require "pio.core"
local device = require "pio.device"

local M = {}

M.families = { "attention", "kv", "precision", "sampling", "offload", "parallel" }
local is_family = {}
for _, f in ipairs(M.families) do is_family[f] = true end

local Strategy = core.Strategy -- the method table of pio.Strategy userdata
local Model = core.Model

local defs = {} -- "kv.paged" -> the C table's row
for _, d in ipairs(core.strategies()) do defs[d.family .. "." .. d.name] = d end

--- true when x is a pio.Strategy.
function M.is(x)
  return type(x) == "userdata" and getmetatable(x) and getmetatable(x).__name == "pio.Strategy"
end

-- ---- families -----------------------------------------------------------------------

local function constructor(family, d)
  if d.composite then
    return function(...)
      local parts = { ... }
      if #parts == 1 and type(parts[1]) == "table" and not M.is(parts[1]) then parts = parts[1] end
      return core.strategy(family, d.name, parts)
    end
  end
  return function(params)
    if type(params) == "number" then -- sugar: the first parameter
      if #d.params == 0 then
        error(string.format("%s.%s takes no parameters", family, d.name), 2)
      end
      params = { [d.params[1].name] = params }
    end
    -- A bad parameter raised by the core names the caller's line, not this file's.
    local ok, s = pcall(core.strategy, family, d.name, params)
    if not ok then error(tostring(s):gsub("^[^\n]-%.lua:%d+: ", ""), 2) end
    return s
  end
end

for _, family in ipairs(M.families) do
  local fam = {}
  local names = {}
  for _, d in ipairs(core.strategies()) do
    if d.family == family then
      fam[d.name] = constructor(family, d)
      names[#names + 1] = d.name
    end
  end
  M[family] = setmetatable(fam, {
    __index = function(_, name)
      error(string.format("pio.strategy.%s has no strategy '%s' (known: %s)", family,
                          tostring(name), table.concat(names, ", ")), 2)
    end,
  })
end

--- Every strategy id ("kv.paged", ...), optionally of one family, in table order.
function M.list(family)
  local out = {}
  for _, d in ipairs(core.strategies()) do
    if family == nil or d.family == family then out[#out + 1] = d.family .. "." .. d.name end
  end
  return out
end

--- The names of a family's strategies ({} for an unknown family).
function M.names(family)
  local out = {}
  for _, d in ipairs(core.strategies()) do
    if d.family == family then out[#out + 1] = d.name end
  end
  return out
end

--- The runtime's row for an id: summary, params (with defaults and ranges),
-- applies ("load", "generate", "nowhere"), not_yet.
function M.describe(id)
  local d = defs[id]
  if not d then error(string.format("pio.strategy.describe: unknown strategy '%s'", tostring(id)), 2) end
  return d
end

-- ---- supports: models, paths and device names as well as plain tables ----------------

local function model_info(model)
  if type(model) == "userdata" and getmetatable(model) and getmetatable(model).__name == "pio.Model" then
    return model:info()
  end
  if type(model) == "string" then
    local est, err = core.estimate(model, { synthetic = model:match("%.json$") ~= nil })
    if not est then error(err, 3) end
    est.dtype = nil -- not loaded: every precision is still open
    return est
  end
  if model == nil or type(model) == "table" then return model or {} end
  error("a model must be a pio.Model, a model directory or config.json, or an info table, got "
        .. type(model), 3)
end

local function device_info(dev, model)
  if type(dev) == "table" then return dev end
  if dev == nil and type(model) == "table" and model.device then dev = model.device end
  if dev ~= nil and type(dev) ~= "string" then
    error("a device must be a name ('cpu', 'cuda', 'auto') or a pio.device.info table, got "
          .. type(dev), 3)
  end
  return device.info(dev)
end

local c_supports = Strategy.supports

--- s:supports(model, device) → true, or false and why. model: a pio.Model, a
-- path, or an info table; device: a name or a pio.device.info table.
function Strategy.supports(s, model, dev)
  local info = model_info(model)
  return c_supports(s, info, device_info(dev, info))
end

-- ---- the selection policy ------------------------------------------------------------

--- Candidates per family, best first: the first one the runtime supports for
-- the model and device wins. Each entry is a list of { name, params } (or a
-- function (model_info, device_info) returning one). Override per call with
-- select's `prefer`, or change this table for the whole Lua state.
M.policy = {
  attention = { { "full" } },
  kv = { { "contiguous" }, { "paged", { block = 16 } } }, -- paged when preferred
  precision = function(_, dev)
    -- bf16 halves the bytes every decode step reads; f32 is the reference mode.
    if dev.device == "cuda" then return { { "bf16" } } end
    return { { "bf16" }, { "f32" } }
  end,
  parallel = function(_, dev)
    if dev.device == "cuda" and (dev.count or 1) > 1 then
      return { { "tensor", { size = dev.count } } }
    end
    return { { "threads", { n = 0 } } }
  end,
  offload = function(model, dev)
    -- only when the model is bigger than the device's memory
    local need = model.total or ((model.weight_bytes or 0) + (model.kv_bytes or 0))
    local have = dev.available_memory or dev.total_memory
    if have and need > have then return { { "experts" }, { "layers" } } end
    return {}
  end,
  sampling = {}, -- the model's generation_config.json decides unless a call prefers otherwise
}

local Plan = {}
Plan.__index = Plan

function Plan:__tostring()
  local parts = {}
  for _, s in ipairs(self.strategies) do parts[#parts + 1] = s.description end
  local out = "pio.strategy plan: " .. table.concat(parts, ", ")
  for _, skip in ipairs(self.skipped) do
    out = out .. string.format("\n  skipped %s: %s", skip.strategy, skip.reason)
  end
  return out
end

-- prefer: a list of strategies, or family -> a strategy, a name, or a list of those.
local function preferences(prefer)
  local by_family = {}
  local function add(family, item)
    if by_family[family] == nil then by_family[family] = {} end
    table.insert(by_family[family], item)
  end
  if prefer == nil then return by_family end
  if type(prefer) ~= "table" then
    error("pio.strategy.select: prefer must be a table, got " .. type(prefer), 3)
  end
  for key, value in pairs(prefer) do
    if math.type(key) == "integer" then
      if not M.is(value) then
        error(string.format("pio.strategy.select: prefer[%d] must be a pio.Strategy, got %s",
                            key, type(value)), 3)
      end
      add(value.family, value)
    else
      if not is_family[key] then
        error(string.format("pio.strategy.select: prefer: unknown family '%s' (known: %s)",
                            tostring(key), table.concat(M.families, ", ")), 3)
      end
      local items = (type(value) == "table" and not M.is(value)) and value or { value }
      for _, item in ipairs(items) do
        if type(item) == "string" then
          local names = M.names(key)
          local found = false
          for _, n in ipairs(names) do found = found or n == item end
          if not found then
            error(string.format("pio.strategy.select: prefer: pio.strategy.%s has no strategy '%s' (known: %s)",
                                key, item, table.concat(names, ", ")), 3)
          end
          item = M[key][item]()
        elseif not M.is(item) or item.family ~= key then
          error(string.format("pio.strategy.select: prefer.%s must name or hold %s strategies",
                              key, key), 3)
        end
        add(key, item)
      end
    end
  end
  return by_family
end

--- pio.strategy.select(model, device, { prefer = ... }) → a plan: one strategy
-- per family the runtime supports for this model and device (sampling and
-- offload only when preferred or needed), `skipped` candidates with their
-- reasons, `load_options` (dtype, threads) and `generate_options`.
function M.select(model, dev, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("pio.strategy.select: options must be a table", 2) end
  for key in pairs(opts) do
    if key ~= "prefer" then
      error(string.format("pio.strategy.select: unknown option '%s' (known: prefer)", tostring(key)), 2)
    end
  end
  local info = model_info(model)
  local dinfo = device_info(dev, info)
  local prefer = preferences(opts.prefer)
  local plan = setmetatable({ strategies = {}, skipped = {}, load_options = {},
                              generate_options = {}, model = info, device = dinfo }, Plan)
  for _, family in ipairs(M.families) do
    local candidates = {}
    for _, s in ipairs(prefer[family] or {}) do candidates[#candidates + 1] = s end
    local policy = M.policy[family] or {}
    if type(policy) == "function" then policy = policy(info, dinfo) end
    for _, c in ipairs(policy) do candidates[#candidates + 1] = core.strategy(family, c[1], c[2]) end
    local tried = {}
    for _, s in ipairs(candidates) do
      if tried[s.description] then goto next end
      tried[s.description] = true
      local ok, why = c_supports(s, info, dinfo)
      if ok then
        plan[family] = s
        plan.strategies[#plan.strategies + 1] = s
        local into = s.applies == "load" and plan.load_options or
                     s.applies == "generate" and plan.generate_options or nil
        if into then for k, v in pairs(s.options) do into[k] = v end end
        break
      end
      plan.skipped[#plan.skipped + 1] = { strategy = s.description, reason = why }
      ::next::
    end
  end
  return plan
end

-- ---- model:use ----------------------------------------------------------------------

local used = setmetatable({}, { __mode = "k" }) -- model -> { strategies in use order }
local base = setmetatable({}, { __mode = "k" }) -- model -> its KV configuration before model:use
local c_info, c_start = Model.info, Model.start -- the C methods this file wraps

-- The KV configuration the cache has now (pio.load's kv option, model:kv_configure), in
-- model:kv_configure's terms; the model's own dtype is format "model".
local function current_kv(model, info)
  local st = model:kv_stats()
  local c = { layout = st.layout, format = st.format == info.dtype and "model" or st.format,
              attention = st.attention }
  if st.layout == "paged" then c.block, c.blocks, c.prefix = st.block_size, st.blocks_total, st.prefix or nil end
  if st.attention ~= "full" then c.window = st.window end
  if st.attention == "sink" then c.sink = st.sink end
  return c
end

local function base_kv(model, info)
  if not base[model] then base[model] = current_kv(model, info) end
  return base[model]
end

-- What a model does without being told (the load's choices): reported by model:info().
local function implicit(model, info)
  local kv = base_kv(model, info)
  local out = {}
  if kv.attention == "sliding" then
    out[#out + 1] = core.strategy("attention", "sliding", { window = kv.window })
  elseif kv.attention == "sink" then
    out[#out + 1] = core.strategy("attention", "sink", { sink = kv.sink, window = kv.window })
  else
    out[#out + 1] = core.strategy("attention", "full")
  end
  if kv.layout == "paged" then
    out[#out + 1] = core.strategy("kv", "paged", { block = kv.block })
    if kv.prefix then out[#out + 1] = core.strategy("kv", "prefix") end
  else
    out[#out + 1] = core.strategy("kv", "contiguous")
  end
  if kv.format == "int8" then out[#out + 1] = core.strategy("kv", "int8") end
  out[#out + 1] = core.strategy("precision", info.dtype)
  out[#out + 1] = core.strategy("parallel", "threads", { n = info.threads })
  return out
end

-- Whether strategy s replaces an earlier one, old, of its family: sampling
-- steps compose; kv.paged, kv.prefix and kv.int8 compose (a paged int8 cache
-- with prefix caching), kv.contiguous replaces the paged ones; other
-- families hold one strategy.
local function replaces(old, s)
  if s.family == "sampling" then return false end
  if s.family ~= "kv" then return true end
  local layout = { contiguous = true, paged = true, prefix = true }
  return s.name == "contiguous" and layout[old.name] or old.name == "contiguous" and layout[s.name]
end

-- The KV configuration (model:kv_configure) the kv and attention strategies in `list` ask
-- for, on top of `from` (what the model was loaded with).
local function kv_config(list, from)
  local c = {}
  for k, v in pairs(from) do c[k] = v end
  for _, s in ipairs(list) do
    if s.id == "kv.contiguous" then c.layout, c.block, c.blocks, c.prefix = "contiguous", nil, nil, nil
    elseif s.id == "kv.paged" then
      if c.layout ~= "paged" or c.block ~= s.params.block then c.blocks = nil end
      c.layout, c.block = "paged", s.params.block
    elseif s.id == "kv.prefix" then
      if c.layout ~= "paged" then c.layout, c.block, c.blocks = "paged", nil, nil end
      c.prefix = true
    elseif s.id == "kv.int8" then c.format = "int8"
    elseif s.id == "attention.full" then c.attention, c.window, c.sink = "full", nil, nil
    elseif s.id == "attention.sliding" then c.attention, c.window, c.sink = "sliding", s.params.window, nil
    elseif s.id == "attention.sink" then
      c.attention, c.window, c.sink = "sink", s.params.window, s.params.sink
    end
  end
  return c
end

local function same_config(a, b)
  for _, k in ipairs { "layout", "block", "blocks", "prefix", "format", "attention", "window", "sink" } do
    if a[k] ~= b[k] then return false end
  end
  return true
end

--- model:use(s, ...) takes strategies (or a plan from pio.strategy.select, or
-- a list): each must be supported for this model and device, else it raises
-- with the reason. Sampling strategies become the model's generation
-- defaults (per-call options still win); a later strategy of the same family
-- and name replaces an earlier one. Returns the model.
function Model.use(model, ...)
  local info = c_info(model)
  local dinfo = device.info(info.device)
  local list = {}
  for i = 1, select("#", ...) do
    local arg = select(i, ...)
    if M.is(arg) then
      list[#list + 1] = arg
    elseif type(arg) == "table" then
      for _, s in ipairs(arg.strategies or arg) do
        if not M.is(s) then
          error(string.format("model:use: argument %d must hold pio.Strategy values, got %s", i,
                              type(s)), 2)
        end
        list[#list + 1] = s
      end
    else
      error(string.format("model:use: argument %d must be a pio.Strategy, got %s", i, type(arg)), 2)
    end
  end
  for _, s in ipairs(list) do
    local ok, why = c_supports(s, info, dinfo)
    if not ok then
      error(string.format("model:use: %s is not supported here: %s", s.description, why), 2)
    end
  end
  local mine = {}
  for i, s in ipairs(used[model] or {}) do mine[i] = s end
  for _, s in ipairs(list) do
    if s.id == "parallel.threads" and s.params.n == 0 then -- "all CPUs": say how many
      s = core.strategy("parallel", "threads", { n = info.threads })
    end
    for i = #mine, 1, -1 do
      if mine[i].family == s.family and (mine[i].name == s.name or replaces(mine[i], s)) then
        table.remove(mine, i)
      end
    end
    mine[#mine + 1] = s
  end
  -- The KV cache is reallocated (models/kv.c) when its strategies change; a cache that
  -- grows must fit the memory budget (lua/pio/memory.lua).
  local from = base_kv(model, info)
  local cfg, old = kv_config(mine, from), kv_config(used[model] or {}, from)
  if not same_config(cfg, old) then
    local ok, why = require("pio.memory").kv_fits(model, model:kv_bytes(cfg))
    if not ok then error("model:use: " .. why, 2) end
    -- what the cache holds goes: generations do not outlive a change of cache
    for seq = 0, info.max_seqs - 1 do model:seq_free(seq) end
    ok, why = model:kv_configure(cfg)
    if not ok then error("model:use: " .. tostring(why), 2) end
  end
  used[model] = mine
  return model
end

-- The strategies in effect for a model whose C info is `info`.
local function in_effect(model, info)
  local mine = used[model] or {}
  local out, have = {}, {}
  for _, s in ipairs(mine) do have[s.family] = true end
  for _, family in ipairs(M.families) do
    for _, s in ipairs(implicit(model, info)) do
      if s.family == family and not have[family] then out[#out + 1] = s end
    end
    for _, s in ipairs(mine) do
      if s.family == family then out[#out + 1] = s end
    end
  end
  return out
end

--- model:strategies() → the strategies in effect: what model:use recorded,
-- and for each other family what the runtime does anyway.
function Model.strategies(model)
  return in_effect(model, c_info(model))
end

--- model:info() also reports `strategies`: descriptions of those in effect.
function Model.info(model)
  local info = c_info(model)
  local names = {}
  for _, s in ipairs(in_effect(model, info)) do names[#names + 1] = s.description end
  info.strategies = names
  local kv = model:kv_stats()
  info.kv = { layout = kv.layout, format = kv.format, attention = kv.attention,
              block_size = kv.block_size, blocks = kv.blocks_total, bytes = kv.bytes,
              prefix = kv.prefix, window = kv.window > 0 and kv.window or nil,
              sink = kv.attention == "sink" and kv.sink or nil }
  return info
end

-- The generation options the model's sampling strategies set.
local function sampling_options(model)
  local opts = {}
  for _, s in ipairs(used[model] or {}) do
    if s.applies == "generate" then
      for k, v in pairs(s.options) do opts[k] = v end
    end
  end
  return opts
end

--- model:start(ids, opts): the used sampling strategies under the call's options.
function Model.start(model, ids, opts)
  local defaults = used[model] and sampling_options(model)
  if defaults and next(defaults) then
    local merged = {}
    for k, v in pairs(defaults) do merged[k] = v end
    for k, v in pairs(opts or {}) do merged[k] = v end
    opts = merged
  end
  return c_start(model, ids, opts)
end

return M
