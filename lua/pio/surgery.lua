--- pio.surgery: model surgery on loaded weights.
--
--   local report = pio.surgery.apply(m, { fuse = { "qkv", "gate_up" }, remove = { layers = { 30, 31 } } })
--   print(report)   -- what changed, with the numbers
--
-- fuse: "qkv" concatenates each layer's q, k and v projections into one
-- matrix and "gate_up" its gate and up projections, so one matmul reads the
-- input once for them (same outputs; the parts become views of the fused
-- matrix). remove: { layers = {...} } drops decoder layers (numbered as the
-- checkpoint names them, model.layers.0 first) and their KV cache; the model
-- then computes something else, by design (layer pruning).
local memory = require "pio.memory"

local M = {}

local FUSIONS = { qkv = "fuse_qkv", gate_up = "fuse_gate_up" }

local function keys_of(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = tostring(k) end
  table.sort(out)
  return out
end

local Report = {}
Report.__index = Report

function Report:__tostring()
  local f = memory.format_bytes
  local lines = {}
  if self.fused.qkv > 0 or self.fused.gate_up > 0 then
    lines[#lines + 1] = string.format("fused q|k|v in %d layer(s) and gate|up in %d layer(s) (%s in fused matrices)",
      self.fused.qkv, self.fused.gate_up, f(self.copied_bytes))
  end
  if #self.removed.layers > 0 then
    local ids = {}
    for i, l in ipairs(self.removed.layers) do ids[i] = tostring(l) end
    lines[#lines + 1] = string.format("removed layer(s) %s: %d → %d layers, %.1f M → %.1f M parameters, weights %s → %s, KV cache %s → %s",
      table.concat(ids, ", "), self.n_layer.before, self.n_layer.after,
      self.parameters.before / 1e6, self.parameters.after / 1e6, f(self.weight_bytes.before),
      f(self.weight_bytes.after), f(self.kv_bytes.before), f(self.kv_bytes.after))
  end
  if #lines == 0 then lines[1] = "nothing changed" end
  return "pio.surgery: " .. table.concat(lines, "; ")
end

--- pio.surgery.apply(model, { fuse = {...}, remove = { layers = {...} } }) →
-- a report: fused = { qkv =, gate_up = } (layers fused now), removed =
-- { layers = {...} }, and before/after of n_layer, parameters, weight_bytes,
-- kv_bytes, plus copied_bytes.
function M.apply(model, spec)
  local ok, method = pcall(function() return model.surgery end)
  if not ok or type(method) ~= "function" then
    error("pio.surgery.apply: expected a pio.Model, got " .. type(model), 2)
  end
  if type(spec) ~= "table" then
    error("pio.surgery.apply: expected a table { fuse = ..., remove = ... }, got " .. type(spec), 2)
  end
  for k in pairs(spec) do
    if k ~= "fuse" and k ~= "remove" then
      error(string.format("pio.surgery.apply: unknown key '%s' (known: fuse, remove)", tostring(k)), 2)
    end
  end
  local c = {}
  local fuse = spec.fuse or {}
  if type(fuse) == "string" then fuse = { fuse } end
  if type(fuse) ~= "table" then
    error("pio.surgery.apply: fuse must be a list of names (qkv, gate_up), got " .. type(fuse), 2)
  end
  for _, name in ipairs(fuse) do
    if not FUSIONS[name] then
      error(string.format("pio.surgery.apply: cannot fuse '%s' (known: gate_up, qkv)", tostring(name)), 2)
    end
    c[FUSIONS[name]] = true
  end
  local removed = {}
  if spec.remove ~= nil then
    if type(spec.remove) ~= "table" then
      error("pio.surgery.apply: remove must be { layers = {...} }, got " .. type(spec.remove), 2)
    end
    for _, k in ipairs(keys_of(spec.remove)) do
      if k ~= "layers" then
        error(string.format("pio.surgery.apply: cannot remove '%s' (known: layers)", k), 2)
      end
    end
    local layers = spec.remove.layers or {}
    if type(layers) ~= "table" then
      error("pio.surgery.apply: remove.layers must be a list of layer numbers, got " .. type(layers), 2)
    end
    for i, l in ipairs(layers) do
      if math.type(l) ~= "integer" then
        error(string.format("pio.surgery.apply: remove.layers[%d] must be an integer, got %s", i,
                            type(l)), 2)
      end
      removed[i] = l
    end
    table.sort(removed)
    if #removed > 0 then c.remove_layers = removed end
  end
  local ok2, r = pcall(method, model, c)
  if not ok2 then error("pio.surgery.apply: " .. tostring(r), 2) end
  return setmetatable({
    fused = { qkv = r.fused_qkv, gate_up = r.fused_gate_up },
    removed = { layers = removed },
    n_layer = { before = r.n_layer_before, after = r.n_layer_after },
    parameters = { before = r.params_before, after = r.params_after },
    weight_bytes = { before = r.weight_bytes_before, after = r.weight_bytes_after },
    kv_bytes = { before = r.kv_bytes_before, after = r.kv_bytes_after },
    copied_bytes = r.copied_bytes,
  }, Report)
end

return M
