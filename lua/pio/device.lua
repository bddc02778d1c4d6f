--- pio.device: what pio knows about the machine's devices, as plain tables
-- that strategies (`s:supports(model_info, device_info)`), the selection
-- policy and the memory manager read.
local core = require "pio.core"

local M = {}

--- Host memory from /proc/meminfo in bytes: { total =, available =, free = },
-- or nil, message where there is no /proc (not Linux).
function M.meminfo()
  local f, err = io.open("/proc/meminfo", "r")
  if not f then return nil, "cannot read /proc/meminfo: " .. tostring(err) end
  local kib = {}
  for line in f:lines() do
    local key, value = line:match("^(%w+):%s+(%d+) kB")
    if key then kib[key] = tonumber(value) end
  end
  f:close()
  local function bytes(key) return kib[key] and kib[key] * 1024 or nil end
  return { total = bytes("MemTotal"), available = bytes("MemAvailable") or bytes("MemFree"),
           free = bytes("MemFree") }
end

-- Online CPUs, as the thread pool counts them by default.
local function cpu_count()
  local f = io.open("/sys/devices/system/cpu/online", "r")
  local text = f and f:read("l")
  if f then f:close() end
  local n = 0
  for range in (text or ""):gmatch("[^,]+") do
    local a, b = range:match("^(%d+)%-(%d+)$")
    if a then n = n + tonumber(b) - tonumber(a) + 1
    elseif range:match("^%d+$") then n = n + 1 end
  end
  return n > 0 and n or nil
end

--- The device a name stands for: "auto" is where the loader runs models (the
-- runtime's answer: the GPU once its backend runs models, else the CPU).
function M.resolve(name)
  name = name or "auto"
  if name ~= "cpu" and name ~= "cuda" and name ~= "auto" then
    error(string.format("device must be 'cpu', 'cuda' or 'auto', got '%s'", tostring(name)), 0)
  end
  return (core.model_device(name))
end

--- pio.device.info(name) → { device =, available =, reason =, count =,
-- total_memory =, available_memory =, threads = } for "cpu", "cuda" or
-- "auto" (the default). A device models cannot run on here says why in `reason`.
function M.info(name)
  if name ~= nil and type(name) ~= "string" then
    error("pio.device.info: the device must be a string, got " .. type(name), 2)
  end
  local ok, dev = pcall(M.resolve, name)
  if not ok then error("pio.device.info: " .. dev, 2) end
  if dev == "cpu" then
    local mem = M.meminfo() or {}
    return { device = "cpu", available = true, count = 1, total_memory = mem.total,
             available_memory = mem.available, threads = cpu_count() }
  end
  local _, ok, why = core.model_device(dev)
  if not ok then return { device = dev, available = false, reason = why, count = 0 } end
  return { device = dev, available = true }
end

return M
