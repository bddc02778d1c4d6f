--- pio.config: the per-plugin presets in configs/<plugin>.json, read with
-- lua-cjson, and the checks update_config and supports_config share.
--
-- A preset has `keys`: name -> { type = "string" | "number" | "integer" |
-- "boolean" | "table", default =, doc =, choices = {...}, min =, max = },
-- and `architecture`: the published config.json of the model (what
-- synthetic = true builds when no model directory is at hand).
local cjson = require "cjson"
local core = require "pio.core"

local M = {}

--- Where presets are read from: $PIO_CONFIG_DIR, else the source tree's configs/.
function M.dir()
  local dir = os.getenv("PIO_CONFIG_DIR")
  if dir == nil or dir == "" then dir = core.source_dir .. "/configs" end
  return dir
end

local cache = {}

--- The preset of a plugin, parsed (cached per Lua state); nil, message if absent or broken.
function M.read(name)
  if cache[name] then return cache[name] end
  local path = M.dir() .. "/" .. name .. ".json"
  local f, err = io.open(path, "r")
  if not f then return nil, "cannot read the preset " .. path .. ": " .. tostring(err) end
  local text = f:read("a")
  f:close()
  local ok, preset = pcall(cjson.decode, text)
  if not ok then return nil, string.format("%s is not valid JSON: %s", path, preset) end
  if type(preset.keys) ~= "table" then return nil, path .. " has no \"keys\" object" end
  -- lua-cjson reads every number as a float: integer keys get integers back.
  for _, spec in pairs(preset.keys) do
    if spec.type == "integer" then
      for _, field in ipairs { "default", "min", "max" } do
        if type(spec[field]) == "number" then spec[field] = math.tointeger(spec[field]) or spec[field] end
      end
    end
  end
  preset.path = path
  cache[name] = preset
  return preset
end

--- A deep copy of v (tables copied all the way down).
function M.copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = M.copy(x) end
  return out
end
local copy = M.copy

--- The defaults of a preset's keys, as a fresh table.
function M.defaults(preset)
  local out = {}
  for key, spec in pairs(preset.keys) do out[key] = copy(spec.default) end
  return out
end

--- Sorted names of a preset's keys.
function M.names(preset)
  local names = {}
  for key in pairs(preset.keys) do names[#names + 1] = key end
  table.sort(names)
  return names
end

-- Numbers as people write them: 1 rather than 1.0.
local function num(v)
  if math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2 ^ 53 then
    return string.format("%d", v)
  end
  return tostring(v)
end

local function describe(v)
  if type(v) == "string" then return "'" .. v .. "'" end
  if type(v) == "number" then return num(v) end
  return tostring(v)
end

-- nil if value suits spec, else what is wrong with it.
local function check_value(key, spec, value)
  local t = spec.type
  if t == "integer" then
    if math.type(value) ~= "integer" then
      return string.format("'%s' must be an integer, got %s", key,
                           type(value) == "number" and tostring(value) or type(value))
    end
  elseif t == "number" then
    if type(value) ~= "number" then
      return string.format("'%s' must be a number, got %s", key, type(value))
    end
  elseif type(value) ~= t then
    return string.format("'%s' must be a %s, got %s", key, t, type(value))
  end
  if spec.choices then
    local ok = false
    for _, c in ipairs(spec.choices) do ok = ok or c == value end
    if not ok then
      return string.format("'%s' must be one of %s, got %s", key, table.concat(spec.choices, ", "),
                           describe(value))
    end
  end
  if type(value) == "number" then
    local lo, hi = spec.min, spec.max
    if (lo and value < lo) or (hi and value > hi) then
      if lo and hi then
        return string.format("'%s' must be in [%s, %s], got %s", key, num(lo), num(hi), num(value))
      elseif lo then
        return string.format("'%s' must be >= %s, got %s", key, num(lo), num(value))
      end
      return string.format("'%s' must be <= %s, got %s", key, num(hi), num(value))
    end
  end
  if key == "stop" then
    for i, s in ipairs(value) do
      if type(s) ~= "string" or s == "" then
        return string.format("'stop' must hold non-empty strings, got %s at %d", type(s), i)
      end
    end
  end
  return nil
end

--- true, or false and the first problem with cfg against the preset's keys
-- (keys in sorted order, so the same config always names the same problem).
function M.validate(preset, cfg)
  if type(cfg) ~= "table" then return false, "config must be a table, got " .. type(cfg) end
  local keys = {}
  for key in pairs(cfg) do
    if type(key) ~= "string" then return false, "config keys must be strings, got " .. type(key) end
    keys[#keys + 1] = key
  end
  table.sort(keys)
  for _, key in ipairs(keys) do
    local spec = preset.keys[key]
    if not spec then
      return false, string.format("unknown key '%s' (known: %s)", key,
                                  table.concat(M.names(preset), ", "))
    end
    local problem = check_value(key, spec, cfg[key])
    if problem then return false, problem end
  end
  return true
end

--- base with cfg's keys laid over it (tables copied), as a new table.
function M.merge(base, cfg)
  local out = copy(base)
  for k, v in pairs(cfg or {}) do out[k] = copy(v) end
  return out
end

return M
