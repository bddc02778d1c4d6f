--- pio.decorate(obj, d1, d2, ...) and pio.decorators: wrap a model, a plugin
-- or a pipeline so that its work methods are timed, logged, validated, cached
-- or retried, while everything else passes straight through. The decorated
-- object keeps the interface: it answers the same methods with the same
-- results (d1 is outermost), so it passes wherever the original does.
--
--   local timed = pio.decorate(m, pio.decorators.timing, pio.decorators.log{ level = "info" })
--   timed:generate("Hi")          -- as m:generate, timed and logged
--   timed:timings()               -- { calls = {generate = {...}}, stages = {prefill = ...} }
--
-- A decorator is used as it is (defaults) or called with options:
-- pio.decorators.cache is a 64-entry cache, pio.decorators.cache{ size = 8 } an 8-entry one.
local core = require "pio.core"

local M = {}

local now = core.now

--- The methods that do the work (the rest pass through untouched).
M.work = { generate = true, stream = true, logits = true, infer = true, execute = true,
           run = true, load_model = true }

-- ---- making decorators ----------------------------------------------------------------

local Decorator = {}
Decorator.__index = Decorator

function Decorator:__call(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error(string.format("pio.decorators.%s: options must be a table, got %s", self.name, type(opts)), 2)
  end
  for k in pairs(opts or {}) do
    if self.options[k] == nil then
      local known = {}
      for name in pairs(self.options) do known[#known + 1] = name end
      table.sort(known)
      error(string.format("pio.decorators.%s: unknown option '%s' (known: %s)", self.name,
                          tostring(k), table.concat(known, ", ")), 2)
    end
  end
  local merged = {}
  for k, v in pairs(self.options) do merged[k] = v end
  for k, v in pairs(opts or {}) do merged[k] = v end
  if self.check then self.check(merged, 3) end
  return setmetatable({ name = self.name, options = merged, make = self.make,
                        check = self.check }, Decorator)
end

function Decorator:__tostring() return "pio.decorators." .. self.name end

-- name, default options, make(options) → { wrap = function(method, call) → call, extras = {...} }
local function decorator(name, defaults, make, check)
  local d = setmetatable({ name = name, options = defaults, make = make, check = check }, Decorator)
  M[name] = d
  return d
end

-- A short, readable rendering of call arguments for logs and cache keys.
local function render(v, depth, seen)
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t == "number" then
    return math.type(v) == "integer" and tostring(v) or string.format("%.17g", v)
  end
  if t ~= "table" then return tostring(v) end
  if seen[v] or depth > 4 then return "{...}" end
  seen[v] = true
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then return a < b end
    return type(a) < type(b)
  end)
  local parts = {}
  for _, k in ipairs(keys) do
    local key = math.type(k) == "integer" and "" or (tostring(k) .. "=")
    parts[#parts + 1] = key .. render(v[k], depth + 1, seen)
  end
  seen[v] = nil
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function render_args(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = render((select(i, ...)), 1, {}) end
  return table.concat(parts, ", ")
end

-- Runs f(...) returning ok, n, results... (results packed).
local function pcall_packed(f, ...)
  local r = table.pack(pcall(f, ...))
  return r[1], r
end

-- ---- timing ---------------------------------------------------------------------------

-- Stage seconds of the last call, where the object reports them.
local function last_timings(target)
  local ok, f = pcall(function() return target.last_timings end)
  if ok and type(f) == "function" then return f(target) end
  ok, f = pcall(function() return target.last_stats end)
  if ok and type(f) == "function" then
    local s = f(target)
    if s and s.prompt_seconds then return { prefill = s.prompt_seconds, decode = s.gen_seconds } end
  end
end

decorator("timing", {}, function(_, target)
  local calls, stages = {}, {}
  local function add(tab, name, seconds)
    local t = tab[name] or { count = 0, total = 0 }
    t.count, t.total, t.last = t.count + 1, t.total + seconds, seconds
    tab[name] = t
  end
  local seen -- the stage timings already counted (a cached call runs no stage)
  local function record(method, started)
    add(calls, method, now() - started)
    local t = last_timings(target)
    local key = t and render(t, 1, {})
    if t and key ~= seen then
      for stage, seconds in pairs(t) do add(stages, stage, seconds) end
      seen = key
    end
  end
  return {
    wrap = function(method, call)
      return function(...)
        local started = now()
        local ok, r = pcall_packed(call, ...)
        if method == "stream" and ok and type(r[2]) == "function" then
          local iter = r[2] -- the call lasts until the iterator is done
          return function()
            local piece = iter()
            if piece == nil then record(method, started) end
            return piece
          end
        end
        record(method, started)
        if not ok then error(r[2], 0) end
        return table.unpack(r, 2, r.n)
      end
    end,
    extras = {
      --- timings() → { calls = { method = {count, total, last} }, stages = { stage = {...} } }
      timings = function() return { calls = calls, stages = stages } end,
    },
  }
end)

-- ---- logging ----------------------------------------------------------------------------

local LEVELS = { debug = 1, info = 2, warn = 3, error = 4 }

local function check_level(o, level)
  if not LEVELS[o.level] then
    error(string.format("pio.decorators.log: level must be debug, info, warn or error, got %s",
                        tostring(o.level)), level)
  end
  if o.sink and type(o.sink) ~= "function" then
    error("pio.decorators.log: sink must be a function, got " .. type(o.sink), level)
  end
end

decorator("log", { level = "info", threshold = "debug", sink = false, name = false },
  function(o, target)
    local sink = o.sink or function(line) io.stderr:write(line, "\n") end
    local label = o.name or tostring(target)
    local function emit(level, text)
      if LEVELS[level] >= LEVELS[o.threshold] then sink(string.format("[pio] %s: %s", level, text), level) end
    end
    return {
      wrap = function(method, call)
        return function(...)
          local args = render_args(select(2, ...)) -- not self
          local started = now()
          local ok, r = pcall_packed(call, ...)
          local seconds = now() - started
          if not ok then
            emit("error", string.format("%s %s(%s) failed after %.3f s: %s", label, method, args,
                                        seconds, tostring(r[2])))
            error(r[2], 0)
          elseif r[2] == nil and r.n >= 3 then
            emit("warn", string.format("%s %s(%s) → nil, %s (%.3f s)", label, method, args,
                                       tostring(r[3]), seconds))
          else
            emit(o.level, string.format("%s %s(%s) → ok (%.3f s)", label, method, args, seconds))
          end
          return table.unpack(r, 2, r.n)
        end
      end,
    }
  end,
  function(o, level)
    check_level(o, level)
    if not LEVELS[o.threshold] then
      error(string.format("pio.decorators.log: threshold must be debug, info, warn or error, got %s",
                          tostring(o.threshold)), level)
    end
  end)

-- ---- input validation ---------------------------------------------------------------------

decorator("validate", { max_chars = false, allow_ids = true, allow_messages = true },
  function(o)
    local function check(method, input, opts)
      local what = "validate: " .. method .. ": "
      if type(input) == "string" then
        if input == "" then error(what .. "the input is empty", 0) end
        if o.max_chars and #input > o.max_chars then
          error(string.format("%sthe input has %d bytes, more than max_chars %d", what, #input,
                              o.max_chars), 0)
        end
      elseif type(input) == "table" and #input > 0 and type(input[1]) == "table" then
        if not o.allow_messages then error(what .. "chat messages are not accepted here", 0) end
        for i, msg in ipairs(input) do
          if type(msg) ~= "table" or type(msg.role) ~= "string" then
            error(string.format("%smessage %d has no 'role' string", what, i), 0)
          end
          if type(msg.content) ~= "string" then
            error(string.format("%smessage %d has no 'content' string", what, i), 0)
          end
        end
      elseif type(input) == "table" and #input > 0 then
        if not o.allow_ids then error(what .. "token ids are not accepted here", 0) end
        for i, id in ipairs(input) do
          if math.type(id) ~= "integer" or id < 0 then
            error(string.format("%stoken %d is not a non-negative integer", what, i), 0)
          end
        end
      elseif type(input) == "table" then
        error(what .. "the input is empty", 0)
      else
        error(string.format("%sthe input must be text, token ids or chat messages, got %s", what,
                            type(input)), 0)
      end
      if opts ~= nil and type(opts) ~= "table" then
        error(string.format("%soptions must be a table, got %s", what, type(opts)), 0)
      end
    end
    return {
      wrap = function(method, call)
        if method == "load_model" then return call end
        return function(self, input, opts, ...)
          check(method, input, opts)
          return call(self, input, opts, ...)
        end
      end,
    }
  end,
  function(o, level)
    if o.max_chars and (math.type(o.max_chars) ~= "integer" or o.max_chars < 1) then
      error("pio.decorators.validate: max_chars must be a positive integer", level)
    end
  end)

-- ---- LRU result cache -------------------------------------------------------------------------

local CACHED = { generate = true, infer = true, execute = true, run = true }

-- A key for the arguments, or nil when they hold something without a value
-- identity (a callback, a userdata): such calls are not cached.
local function cache_key(method, ...)
  local plain = true
  local function walk(v, seen)
    local t = type(v)
    if t == "function" or t == "userdata" or t == "thread" then plain = false
    elseif t == "table" and not seen[v] then
      seen[v] = true
      for k, x in pairs(v) do walk(k, seen); walk(x, seen) end
    end
  end
  for i = 1, select("#", ...) do walk((select(i, ...)), {}) end
  if not plain then return nil end
  return method .. "(" .. render_args(...) .. ")"
end

decorator("cache", { size = 64 }, function(o)
  local entries, order = {}, {} -- key -> packed results; keys oldest first
  local stats = { hits = 0, misses = 0 }
  local function touch(key)
    for i, k in ipairs(order) do
      if k == key then table.remove(order, i) break end
    end
    order[#order + 1] = key
  end
  return {
    wrap = function(method, call)
      if not CACHED[method] then return call end
      return function(self, ...)
        local key = cache_key(method, ...)
        if key and entries[key] then
          stats.hits = stats.hits + 1
          touch(key)
          local r = entries[key]
          return table.unpack(r, 1, r.n)
        end
        stats.misses = stats.misses + 1
        local r = table.pack(call(self, ...))
        if key and r[1] ~= nil then -- failures (nil, why) are not remembered
          entries[key] = r
          touch(key)
          while #order > o.size do entries[table.remove(order, 1)] = nil end
        end
        return table.unpack(r, 1, r.n)
      end
    end,
    extras = {
      --- cache_stats() → { hits =, misses =, size =, capacity = }
      cache_stats = function()
        return { hits = stats.hits, misses = stats.misses, size = #order, capacity = o.size }
      end,
      --- cache_clear(): forgets every entry.
      cache_clear = function() entries, order = {}, {} end,
    },
  }
end, function(o, level)
  if math.type(o.size) ~= "integer" or o.size < 1 then
    error("pio.decorators.cache: size must be a positive integer, got " .. tostring(o.size), level)
  end
end)

-- ---- retry of transient failures ------------------------------------------------------------

--- The default test of a transient failure: an environment failure (a call
-- that returned nil and a message: a file, the memory, the device) may pass
-- on a second try; a raised error is misuse and would fail the same way.
function M.transient(err, raised)
  return not raised
end

decorator("retry", { attempts = 3, delay = 0, transient = false }, function(o)
  local is_transient = o.transient or M.transient
  local retries = 0
  return {
    wrap = function(method, call)
      if method == "stream" then return call end
      return function(...)
        local r
        for attempt = 1, o.attempts do
          local ok
          ok, r = pcall_packed(call, ...)
          local failed = not ok or (r[2] == nil and r.n >= 3)
          if not failed then break end
          local err = ok and r[3] or r[2]
          if attempt == o.attempts or not is_transient(err, not ok) then
            if not ok then error(err, 0) end
            break
          end
          retries = retries + 1
          if o.delay > 0 then
            local deadline = now() + o.delay * 2 ^ (attempt - 1)
            while now() < deadline do end
          end
        end
        return table.unpack(r, 2, r.n)
      end
    end,
    extras = {
      --- retries() → how many times a call was tried again.
      retries = function() return retries end,
    },
  }
end, function(o, level)
  if math.type(o.attempts) ~= "integer" or o.attempts < 1 then
    error("pio.decorators.retry: attempts must be a positive integer, got " .. tostring(o.attempts), level)
  end
  if type(o.delay) ~= "number" or o.delay < 0 then
    error("pio.decorators.retry: delay must be a number >= 0, got " .. tostring(o.delay), level)
  end
  if o.transient and type(o.transient) ~= "function" then
    error("pio.decorators.retry: transient must be a function, got " .. type(o.transient), level)
  end
end)

-- ---- pio.decorate ---------------------------------------------------------------------------

--- pio.decorate(obj, d1, d2, ...) → a decorated obj (d1 outermost). obj: a
-- model, a plugin, a pipeline or anything with methods.
function M.decorate(obj, ...)
  local t = type(obj)
  if t ~= "table" and t ~= "userdata" then
    error("pio.decorate: expected an object with methods, got " .. t, 2)
  end
  local decorators = { ... }
  if #decorators == 0 then error("pio.decorate: no decorators given", 2) end
  local made = {}
  for i, d in ipairs(decorators) do
    if getmetatable(d) ~= Decorator then
      error(string.format("pio.decorate: argument %d must be a pio.decorators value, got %s", i + 1,
                          type(d)), 2)
    end
    made[i] = d.make(d.options, obj)
  end
  local names = {}
  for i, d in ipairs(decorators) do names[i] = d.name end
  local extras = {}
  for _, m in ipairs(made) do
    for k, f in pairs(m.extras or {}) do extras[k] = f end
  end
  local proxy, wrapped = {}, {}
  extras.undecorated = function() return obj end
  extras.decorators = function() return table.move(names, 1, #names, 1, {}) end
  return setmetatable(proxy, {
    __name = "pio.Decorated",
    __index = function(_, key)
      if extras[key] then return function(_, ...) return extras[key](...) end end
      if wrapped[key] then return wrapped[key] end
      local v = obj[key]
      if type(v) ~= "function" then return v end
      local base = function(self, ...)
        if self == proxy then self = obj end
        return v(self, ...)
      end
      local call = base
      if M.work[key] then
        for i = #made, 1, -1 do call = made[i].wrap(key, call) end
      end
      wrapped[key] = call
      return call
    end,
    __tostring = function()
      return string.format("decorated(%s; %s)", tostring(obj), table.concat(names, ", "))
    end,
    __close = function()
      local ok, f = pcall(function() return obj.cleanup or obj.free end)
      if ok and type(f) == "function" then f(obj) end
    end,
  })
end

return M
