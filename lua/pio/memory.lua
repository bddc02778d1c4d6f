--- pio.memory: the memory manager. One budget per device for the whole Lua
-- state (the seed's max_memory_ratio), an account of what loaded models take
-- (weights, activations, KV cache) and of what is free, and loading that
-- refuses a model that cannot fit before anything is allocated: pio.load
-- passes the budget's remainder as max_bytes, and the C loader compares its
-- estimate from config.json against it first.
local core = require "pio.core"
local device = require "pio.device"

local M = {}

local budgets = {}                                 -- device -> budget
local models = setmetatable({}, { __mode = "k" }) -- model -> device, for every pio.load

--- "1.50 GiB", "12.3 MiB": as the C loader writes sizes.
function M.format_bytes(n)
  if n >= 2 ^ 30 then return string.format("%.2f GiB", n / 2 ^ 30) end
  if n >= 2 ^ 20 then return string.format("%.1f MiB", n / 2 ^ 20) end
  if n >= 1024 then return string.format("%.0f KiB", n / 1024) end
  return string.format("%d B", n)
end

local function check_keys(opts, what, known)
  for key in pairs(opts) do
    local ok = false
    for _, k in ipairs(known) do ok = ok or k == key end
    if not ok then
      error(string.format("%s: unknown option '%s' (known: %s)", what, tostring(key),
                          table.concat(known, ", ")), 3)
    end
  end
end

-- What the live models on a device take: weights, activations, kv, count.
local function usage(dev)
  local u = { weights = 0, activations = 0, kv = 0, models = 0 }
  for m, d in pairs(models) do
    local ok, info = pcall(function() return m:info() end) -- a freed model is gone
    if ok and d == dev then
      u.weights = u.weights + info.weight_bytes
      u.activations = u.activations + info.activation_bytes
      u.kv = u.kv + info.kv_bytes
      u.models = u.models + 1
    end
  end
  u.used = u.weights + u.activations + u.kv
  return u
end

local Budget = {}
Budget.__index = Budget

-- "11.77 GiB = 0.50 × 23.54 GiB", or "1.00 GiB" for a budget given in bytes.
local function size_of(b)
  if not b.max_memory_ratio then return M.format_bytes(b.bytes) end
  return string.format("%s = %.2f × %s", M.format_bytes(b.bytes), b.max_memory_ratio,
                       M.format_bytes(b.total))
end

function Budget:__tostring()
  return string.format("pio.memory.budget(%s: %s, %s free)", self.device, size_of(self),
                       M.format_bytes(self:free()))
end

--- Bytes the device's live models take.
function Budget:used() return usage(self.device).used end

--- Bytes left for the next model.
function Budget:free() return math.max(0, self.bytes - self:used()) end

--- budget:fits(path, load_opts) → true, or false and a message with the numbers.
function Budget:fits(path, opts)
  local est, err = core.estimate(path, opts)
  if not est then return false, err end
  local free = self:free()
  if est.total <= free then return true end
  return false, string.format("%s needs %s (weights %s, KV cache %s, activations %s) but %s of the %s budget is free",
    est.architecture, M.format_bytes(est.total), M.format_bytes(est.weights),
    M.format_bytes(est.kv), M.format_bytes(est.activations), M.format_bytes(free), self.device)
end

--- pio.memory.budget{device = "cpu", max_memory_ratio = 0.9} sets the device's
-- budget to that share of its memory (or to `bytes` exactly) and returns it;
-- pio.memory.budget() / budget{device = d} alone returns the current one (nil if none).
-- A device this pio cannot use gives nil, message.
function M.budget(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("pio.memory.budget: options must be a table, got " .. type(opts), 2)
  end
  check_keys(opts, "pio.memory.budget", { "device", "max_memory_ratio", "bytes" })
  local ok, dev = pcall(device.resolve, opts.device)
  if not ok then error("pio.memory.budget: " .. dev, 2) end
  local ratio, bytes = opts.max_memory_ratio, opts.bytes
  if ratio == nil and bytes == nil then return budgets[dev] end
  if ratio ~= nil and (type(ratio) ~= "number" or not (ratio > 0 and ratio <= 1)) then
    error(string.format("pio.memory.budget: max_memory_ratio must be a number in (0, 1], got %s",
                        tostring(ratio)), 2)
  end
  if bytes ~= nil and (math.type(bytes) ~= "integer" or bytes <= 0) then
    error(string.format("pio.memory.budget: bytes must be a positive integer, got %s",
                        tostring(bytes)), 2)
  end
  local info = device.info(dev)
  if not info.available then
    return nil, string.format("device '%s' is not available: %s", dev, info.reason)
  end
  local total = info.total_memory
  if bytes == nil and not total then
    return nil, string.format("pio cannot tell how much memory '%s' has: give bytes =", dev)
  end
  local b = setmetatable({ device = dev, total = total or bytes, max_memory_ratio = ratio,
                           bytes = bytes or math.floor(total * ratio) }, Budget)
  budgets[dev] = b
  return b
end

--- Removes the device's budget (pio.load is unlimited again there).
function M.clear(dev)
  budgets[device.resolve(dev)] = nil
end

--- pio.memory.report(device) → { device =, total =, available =, budget =,
-- weights =, activations =, kv =, used =, free =, models = } in bytes. free
-- is the budget's remainder where a budget is set, else what the system
-- reports available (/proc/meminfo's MemAvailable for the host).
function M.report(dev)
  local ok, d = pcall(device.resolve, dev)
  if not ok then error("pio.memory.report: " .. d, 2) end
  local info = device.info(d)
  local u = usage(d)
  local b = budgets[d]
  local r = { device = d, total = info.total_memory, available = info.available_memory,
              budget = b and b.bytes or nil, weights = u.weights, activations = u.activations,
              kv = u.kv, used = u.used, models = u.models }
  if b then r.free = math.max(0, b.bytes - u.used) else r.free = info.available_memory end
  return setmetatable(r, { __tostring = function(t)
    local function f(n) return n and M.format_bytes(n) or "?" end
    return string.format("%s: weights %s, activations %s, KV cache %s (%d model%s); free %s%s",
      t.device, f(t.weights), f(t.activations), f(t.kv), t.models, t.models == 1 and "" or "s",
      f(t.free), t.budget and (" of a " .. f(t.budget) .. " budget") or
        (" (of " .. f(t.total) .. ")"))
  end })
end

--- Bytes a model may take on a device when it may use a share `ratio` of the
-- device's memory: that share less what the device's live models take, and
-- no more than the device's budget leaves. nil when pio cannot tell (no limit).
function M.allowance(dev, ratio)
  local d = device.resolve(dev)
  local info = device.info(d)
  local used = usage(d).used
  local limit
  if ratio and info.total_memory then limit = math.floor(info.total_memory * ratio) - used end
  local b = budgets[d]
  if b then limit = math.min(limit or b.bytes, b.bytes - used) end
  if limit == nil then return nil end
  return math.max(1, limit) -- 0 would mean "no limit" to the loader
end

--- memory.kv_fits(model, bytes) → true, or false and a message with the numbers: whether
-- the model's KV cache may become `bytes` under its device's budget (model:use asks before
-- it reallocates the cache). A cache that shrinks, or no budget, always fits.
function M.kv_fits(model, bytes)
  local dev = models[model]
  local b = dev and budgets[dev]
  if not b then return true end
  local now = model:info().kv_bytes
  if bytes <= now then return true end
  local used = usage(dev).used
  if used - now + bytes <= b.bytes then return true end
  return false, string.format(
    "the KV cache would grow from %s to %s, %s more, but the %s budget (%s) has %s free",
    M.format_bytes(now), M.format_bytes(bytes), M.format_bytes(bytes - now), dev, size_of(b),
    M.format_bytes(math.max(0, b.bytes - used)))
end

--- Wraps the C loader: under a budget, a load gets max_bytes = what is left
-- of it (unless the caller gives max_bytes), and every model loaded is counted.
function M.wrap_load(load)
  return function(path, opts)
    if opts ~= nil and type(opts) ~= "table" then return load(path, opts) end -- load raises
    local dev = opts and opts.device
    local ok, d = pcall(device.resolve, dev)
    local b = ok and budgets[d] or nil
    local call = opts
    if b and (opts == nil or opts.max_bytes == nil) then
      call = {}
      for k, v in pairs(opts or {}) do call[k] = v end
      local free = b:free()
      if free < 1 then
        return nil, string.format("the %s memory budget (%s) is used up by %d model(s)", d,
                                  M.format_bytes(b.bytes), usage(d).models)
      end
      call.max_bytes = free
    end
    -- Misuse raised by the loader names the caller's line, not this file's.
    local ok, model, err = pcall(load, path, call)
    if not ok then error(tostring(model):gsub("^[^\n]-%.lua:%d+: ", ""), 2) end
    if not model then
      if b and call ~= opts and err and err:find("does not fit", 1, true) then
        err = string.format("%s (the %s budget: %s; %s in use)", err, d, size_of(b),
                            M.format_bytes(b:used()))
      end
      return nil, err
    end
    models[model] = ok and d or "cpu"
    return model
  end
end

return M
