--- pio.plugins: the plugin manager, one registry per Lua state (this module
-- is required once per state), holding C-backed plugins (pio.Plugin userdata,
-- pio/plugin.h) and Lua-table plugins side by side.
--
-- The seed's plugin interface, word for word:
--   initialize(config) → true          load_model(config) → model | nil, why
--   infer(data) → result               cleanup() → true
--   execute(data, options) → result, stats
--   get_model_info() → table           update_config(config) → true
--   supports_config(config) → true | false, why
local core = require "pio.core"
local config = require "pio.config"
local device = require "pio.device"
local memory = require "pio.memory"
local pipeline = require "pio.pipeline"
local strategy = require "pio.strategy"
local cjson = require "cjson"

local M = {}

--- The methods every plugin has.
M.interface = { "initialize", "load_model", "infer", "cleanup", "execute", "get_model_info",
                "update_config", "supports_config" }

local registry = {} -- name -> { factory =, metadata =, kind = "c" | "lua", descriptor = }

-- ---- architectures the runtime serves --------------------------------------------------

--- true when the runtime (pio.architectures(), asked now) serves `arch`.
function M.architecture_supported(arch)
  for name in core.architectures():gmatch("[^,%s]+") do
    if name == arch then return true end
  end
  return false
end

local function unavailable_reason(d)
  if M.architecture_supported(d.architecture) then return nil end
  return string.format("%s: the %s architecture is not implemented yet (this pio runs %s)",
                       d.name, d.architecture, core.architectures())
end

-- ---- registry ------------------------------------------------------------------------

local META_STRINGS = { "version", "description", "model_family" }

--- pio.plugins.register(name, factory, metadata): factory(config) returns a
-- plugin (a table or userdata with the interface's methods); metadata has at
-- least version, description and model_family (strings).
function M.register(name, factory, metadata)
  if type(name) ~= "string" or not name:match("^[%w_]+$") then
    error("pio.plugins.register: the name must be a word of letters, digits and _, got "
          .. (type(name) == "string" and ("'" .. name .. "'") or type(name)), 2)
  end
  if registry[name] then error(string.format("pio.plugins.register: '%s' is already registered", name), 2) end
  if type(factory) ~= "function" then
    error("pio.plugins.register: the factory must be a function, got " .. type(factory), 2)
  end
  if type(metadata) ~= "table" then
    error("pio.plugins.register: metadata must be a table, got " .. type(metadata), 2)
  end
  for _, key in ipairs(META_STRINGS) do
    if type(metadata[key]) ~= "string" then
      error(string.format("pio.plugins.register: metadata.%s must be a string, got %s", key,
                          type(metadata[key])), 2)
    end
  end
  registry[name] = { factory = factory, metadata = config.copy(metadata), kind = "lua" }
end

--- Removes a plugin from the registry (true if it was there).
function M.unregister(name)
  local had = registry[name] ~= nil
  registry[name] = nil
  return had
end

--- The registered names, sorted.
function M.list()
  local names = {}
  for name in pairs(registry) do names[#names + 1] = name end
  table.sort(names)
  return names
end

local function entry(name, what)
  local e = registry[name]
  if not e then
    error(string.format("%s: no plugin named '%s' (registered: %s)", what, tostring(name),
                        table.concat(M.list(), ", ")), 3)
  end
  return e
end

-- Metadata of a C plugin, with what this build and machine offer, asked now.
local function c_metadata(d)
  local preset = config.read(d.name)
  local md = {
    name = d.name, version = preset and preset.version or core.version, kind = "c",
    description = d.description, model_family = d.model_family, architecture = d.architecture,
    hf_repo = d.hf_repo, factory = d.factory, dtypes = { "bf16", "f32" },
    devices = select(2, core.model_device("cuda")) and { "cpu", "cuda" } or { "cpu" },
  }
  local reason = unavailable_reason(d)
  md.available = reason == nil
  md.reason = reason
  -- What the runtime honours for this architecture on the default device.
  local info = { architecture = d.architecture }
  local arch = preset and preset.architecture
  if arch then
    local text = arch.text_config or arch
    info.n_layer = text.num_hidden_layers
    info.n_expert = text.num_experts or text.n_routed_experts or 0
  end
  local dev = device.info("auto")
  md.strategies = {}
  for _, id in ipairs(strategy.list()) do
    local family, name = id:match("^(%w+)%.(.+)$")
    local s = core.strategy(family, name, strategy.describe(id).composite and {} or nil)
    if s:supports(info, dev) then md.strategies[#md.strategies + 1] = id end
  end
  return md
end

--- pio.plugins.metadata(name) → name, version, description, model_family,
-- kind ("c" or "lua"), and for C plugins architecture, hf_repo, devices,
-- dtypes, strategies (supported here), available and reason.
function M.metadata(name)
  local e = entry(name, "pio.plugins.metadata")
  if e.kind == "c" then return c_metadata(e.descriptor) end
  local md = config.copy(e.metadata)
  md.name = md.name or name
  md.kind = "lua"
  return md
end

--- Every plugin has the interface's methods: true, or false and the missing ones.
function M.check(plugin)
  local missing = {}
  for _, method in ipairs(M.interface) do
    local ok, f = pcall(function() return plugin[method] end)
    if not ok or type(f) ~= "function" then missing[#missing + 1] = method end
  end
  if #missing > 0 then return false, table.concat(missing, ", ") end
  return true
end

--- pio.plugins.create(name, config) → a plugin, initialized with config when given.
function M.create(name, cfg)
  local e = entry(name, "pio.plugins.create")
  local plugin = e.factory(cfg)
  local ok, missing = M.check(plugin)
  if not ok then
    error(string.format("pio.plugins.create: plugin '%s' lacks %s", name, missing), 2)
  end
  if cfg ~= nil and e.kind == "lua" then plugin:initialize(cfg) end
  return plugin
end

-- ---- C-backed plugins: the lifecycle -------------------------------------------------

local Plugin = core.Plugin -- the method table of pio.Plugin userdata
local states = setmetatable({}, { __mode = "k" }) -- plugin -> its state

local function state(p)
  local st = states[p]
  if not st then
    local preset = assert(config.read(p.name))
    st = { preset = preset, config = config.defaults(preset), initialized = false }
    states[p] = st
  end
  return st
end

local GENERATION_KEYS = { "max_new_tokens", "temperature", "top_k", "top_p", "min_p",
                          "repetition_penalty", "presence_penalty", "seed", "stop" }

-- A config's strategies must name strategies pio knows: nil, or what is wrong.
local function check_strategies(prefs)
  for family, v in pairs(prefs) do
    local names = type(family) == "string" and strategy.names(family)
    if not names or #names == 0 then
      return string.format("'strategies' has an unknown family '%s' (known: %s)", tostring(family),
                           table.concat(strategy.families, ", "))
    end
    for _, name in ipairs(type(v) == "table" and v or { v }) do
      local found = false
      for _, n in ipairs(names) do found = found or n == name end
      if not found then
        return string.format("'strategies': pio.strategy.%s has no strategy '%s' (known: %s)",
                             family, tostring(name), table.concat(names, ", "))
      end
    end
  end
end

-- true, or false and why: the keys and types, then what this build can do.
local function acceptable(st, cfg)
  local ok, why = config.validate(st.preset, cfg)
  if not ok then return false, why end
  if cfg.device then
    local info = device.info(cfg.device)
    if not info.available then
      return false, string.format("device '%s' is not available: %s", info.device, info.reason)
    end
  end
  if cfg.strategies then
    why = check_strategies(cfg.strategies)
    if why then return false, why end
  end
  return true
end

--- plugin:initialize(config) → true: the preset's defaults with config over them.
function Plugin.initialize(p, cfg)
  local st = state(p)
  if cfg ~= nil then
    local ok, why = acceptable(st, cfg)
    if not ok then error("initialize: " .. why, 2) end
  end
  st.config = config.merge(config.defaults(st.preset), cfg)
  st.initialized = true
  return true
end

--- plugin:update_config(config) → true; keys and types checked, unknown keys
-- refused by name. Load settings take effect at the next load_model,
-- generation settings at the next infer.
function Plugin.update_config(p, cfg)
  local st = state(p)
  local ok, why = acceptable(st, cfg)
  if not ok then error("update_config: " .. why, 2) end
  st.config = config.merge(st.config, cfg)
  return true
end

--- plugin:supports_config(config) → true, or false and why; changes nothing.
function Plugin.supports_config(p, cfg)
  return acceptable(state(p), cfg)
end

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

-- Where the model comes from: a directory, or (synthetic) a config.json.
-- Returns path, cleanup-path-or-nil; or nil, why.
local function model_source(p, st)
  local d, cfg = p.descriptor, st.config
  local dir = cfg.model_path
  local has_config = exists(dir .. "/config.json")
  if has_config then
    local f = io.open(dir .. "/config.json", "r")
    local ok, hf = pcall(cjson.decode, f:read("a"))
    f:close()
    local arch = ok and type(hf) == "table" and type(hf.architectures) == "table" and hf.architectures[1]
    if arch and arch ~= d.architecture then
      return nil, string.format("%s: '%s' holds a %s model, not %s", d.name, dir, arch,
                                d.architecture)
    end
  end
  if cfg.synthetic then
    if has_config then return dir end
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(cjson.encode(st.preset.architecture))
    f:close()
    return path, path
  end
  if has_config and (exists(dir .. "/model.safetensors") or
                     exists(dir .. "/model.safetensors.index.json")) then
    return dir
  end
  return nil, string.format("%s: no weights at '%s': download %s from Hugging Face into that "
    .. "directory (huggingface-cli download %s --local-dir %s), point model_path at a copy you "
    .. "have, or set synthetic = true for random weights of the same shapes",
    d.name, dir, d.hf_repo, d.hf_repo, dir)
end

--- plugin:load_model(config) → the model, or nil and why (no weights: what to
-- download and where; too big: the numbers). Strategies are chosen by
-- pio.strategy.select with the config's preferences (dtype, threads,
-- strategies) and recorded on the model.
function Plugin.load_model(p, cfg)
  local st = state(p)
  if not st.initialized then error("load_model: call initialize first", 2) end
  if cfg ~= nil then
    local ok, why = acceptable(st, cfg)
    if not ok then error("load_model: " .. why, 2) end
    st.config = config.merge(st.config, cfg)
  end
  if st.model then
    st.model:free()
    st.model = nil
  end
  local c = st.config
  local dinfo = device.info(c.device)
  if not dinfo.available then
    return nil, string.format("%s: device '%s' is not available: %s", p.name, dinfo.device,
                              dinfo.reason)
  end
  local path, tmp = model_source(p, st)
  if not path then return nil, tmp end
  local load_opts = { device = dinfo.device, ctx = c.ctx, max_seqs = c.max_seqs,
                      synthetic = c.synthetic, seed = c.seed, dtype = c.dtype }
  local est, err = core.estimate(path, load_opts)
  if not est then
    if tmp then os.remove(tmp) end
    return nil, string.format("%s: %s", p.name, err)
  end
  est.dtype = nil -- not loaded yet: any precision is open
  local prefer = config.copy(c.strategies)
  prefer.precision = prefer.precision or c.dtype
  if dinfo.device == "cpu" and not prefer.parallel then
    prefer.parallel = strategy.parallel.threads { n = c.threads }
  end
  local plan = strategy.select(est, dinfo, { prefer = prefer })
  for k, v in pairs(plan.load_options) do load_opts[k] = v end
  load_opts.max_bytes = memory.allowance(dinfo.device, c.max_memory_ratio)
  local model
  model, err = require("pio").load(path, load_opts)
  if tmp then os.remove(tmp) end
  if not model then return nil, string.format("%s: %s", p.name, err) end
  model:use(plan)
  st.model, st.plan = model, plan
  return model
end

-- The generation options of the config, with per-call ones over them.
local function generation_options(st, opts)
  local out = {}
  for _, k in ipairs(GENERATION_KEYS) do out[k] = st.config[k] end
  if out.stop and #out.stop == 0 then out.stop = nil end
  for k, v in pairs(opts or {}) do out[k] = v end
  return out
end

local function run(p, data, opts, method)
  local st = state(p)
  if not st.model then error(method .. ": no model loaded (call load_model first)", 3) end
  local kind = type(data)
  if kind ~= "string" and kind ~= "table" then
    error(string.format("%s: data must be text, a list of token ids or a list of chat messages, got %s",
                        method, kind), 3)
  end
  local system = st.config.system_prompt ~= "" and st.config.system_prompt or nil
  local pipe = kind == "table" and type(data[1]) == "table"
               and pipeline.chat(st.model, { system = system })
               or pipeline.completion(st.model)
  local out, ctx = pipe:run(data, generation_options(st, opts))
  st.last = ctx
  return out, ctx
end

--- plugin:infer(data) → the generated text. data: text, token ids, or chat
-- messages ({ {role =, content =}, ... }, rendered by the model's template).
function Plugin.infer(p, data)
  return (run(p, data, nil, "infer"))
end

--- plugin:execute(data, options) → text, stats: infer with per-call
-- generation options (max_new_tokens, temperature, ...).
function Plugin.execute(p, data, opts)
  if opts ~= nil then
    if type(opts) ~= "table" then error("execute: options must be a table, got " .. type(opts), 2) end
    for k in pairs(opts) do
      local ok = false
      for _, g in ipairs(GENERATION_KEYS) do ok = ok or g == k end
      if not ok then
        error(string.format("execute: unknown option '%s' (known: %s)", tostring(k),
                            table.concat(GENERATION_KEYS, ", ")), 2)
      end
    end
  end
  local out, ctx = run(p, data, opts, "execute")
  local stats = config.copy(ctx.stats)
  stats.timings = ctx.timings
  return out, stats
end

--- plugin:cleanup() → true: the model is freed now, the plugin is back to
-- before initialize.
function Plugin.cleanup(p)
  local st = state(p)
  if st.model then st.model:free() end
  st.model, st.plan, st.last, st.initialized = nil, nil, nil, false
  return true
end

--- plugin:get_model_info() → the plugin's metadata, its config, and the
-- loaded model's info (info, strategies) when there is one.
function Plugin.get_model_info(p)
  local st = state(p)
  local md = c_metadata(p.descriptor)
  local out = { name = md.name, version = md.version, architecture = md.architecture,
                model_family = md.model_family, hf_repo = md.hf_repo,
                model_path = st.config.model_path, initialized = st.initialized,
                loaded = st.model ~= nil, config = config.copy(st.config) }
  if st.model then
    local info = st.model:info()
    out.info = info
    out.parameters, out.dtype, out.device = info.parameters, info.dtype, info.device
    out.strategies = info.strategies
  end
  return out
end

--- Seconds per stage of the last infer/execute (what pio.decorators.timing reads).
function Plugin.last_timings(p)
  local last = state(p).last
  return last and last.timings or nil
end

--- Statistics of the last infer/execute.
function Plugin.last_stats(p)
  local last = state(p).last
  return last and last.stats or nil
end

--- For tostring: "pio.Plugin(qwen3_4b_instruct_2507: Qwen3ForCausalLM, loaded: ...)".
function Plugin.describe(p)
  local st = states[p]
  local status
  if st and st.model then
    local ok, info = pcall(st.model.info, st.model)
    status = ok and string.format("loaded %s, %d layers, %s on %s", st.config.model_path,
                                  info.n_layer, info.dtype, info.device) or "loaded"
  elseif st and st.initialized then
    status = "initialized"
  else
    status = "not initialized"
  end
  return string.format("pio.Plugin(%s: %s, %s)", p.name, p.descriptor.architecture, status)
end

-- ---- the C plugins' factories, under the seed's names --------------------------------

M.factories = {}

for _, d in ipairs(core.plugin_descriptors()) do
  local function factory(cfg)
    local reason = unavailable_reason(d)
    if reason then error(reason, 3) end
    local p = core.plugin(d.name)
    if cfg ~= nil then
      local ok, err = pcall(p.initialize, p, cfg)
      if not ok then error(err, 3) end
    end
    return p
  end
  registry[d.name] = { factory = factory, kind = "c", descriptor = d }
  M.factories[d.factory] = function(cfg) return factory(cfg) end
end

-- ---- adapters: a Lua plugin around another plugin ---------------------------------------

--- pio.plugins.adapter(inner, { name =, input = fn(data) → data,
-- output = fn(result) → result, metadata = }) → a Lua-table plugin that
-- forwards every interface method to inner, transforming infer/execute's
-- input and output (the seed's adapter pattern).
function M.adapter(inner, opts)
  opts = opts or {}
  local ok, missing = M.check(inner)
  if not ok then error("pio.plugins.adapter: the inner plugin lacks " .. missing, 2) end
  local input = opts.input or function(x) return x end
  local output = opts.output or function(x) return x end
  local a = { inner = inner, name = opts.name or ("adapted " .. tostring(inner.name)) }
  for _, method in ipairs(M.interface) do
    a[method] = function(_, ...) return inner[method](inner, ...) end
  end
  function a.infer(_, data) return output(inner:infer(input(data))) end
  function a.execute(_, data, o)
    local out, stats = inner:execute(input(data), o)
    return output(out), stats
  end
  function a.get_model_info()
    local info = inner:get_model_info()
    info.adapted_from = info.name
    info.name = a.name
    return info
  end
  return setmetatable(a, { __tostring = function()
    return string.format("Lua plugin %s (adapting %s)", a.name, tostring(inner))
  end })
end

return M
