--- pio: the Lua face of the runtime.
-- The primitives live in C (`pio.core`); this module re-exports them and adds
-- the sugar that reads better in Lua: generate and stream over a generation.
local core = require "pio.core"

local pio = {}
for k, v in pairs(core) do pio[k] = v end

local Model = core.Model -- the method table of pio.Model userdata

-- The last generation of each model, for model:last_stats(); weak keys so a
-- model that is collected takes its entry with it.
local last_generation = setmetatable({}, { __mode = "k" })

--- Token ids for a prompt, and the options left for generation: a list of
-- chat messages (tables or JSON text) goes through the model's chat template
-- (pio.chat), a string through its tokenizer, a table of ids is used as it is.
local function prompt_ids(model, prompt, opts)
  local chat = require "pio.chat"
  if chat.is_messages(prompt) then return chat.prompt_ids(model, prompt, opts) end
  if type(prompt) == "table" then return prompt, opts end
  if type(prompt) ~= "string" then
    error("prompt must be a string or a list of token ids, got " .. type(prompt), 3)
  end
  local tok = model.tokenizer
  if not tok then
    error("this model has no tokenizer: pass token ids instead of text", 3)
  end
  return tok:encode(prompt), opts
end

--- model:stream(prompt, opts) → an iterator of text pieces as they complete.
-- After the loop, model:last_stats() describes the run.
function Model.stream(model, prompt, opts)
  local ids, gen_opts = prompt_ids(model, prompt, opts)
  local gen, err = model:start(ids, gen_opts)
  if not gen then error(err, 2) end
  last_generation[model] = gen
  return function()
    local piece, perr = gen:step()
    if piece == nil and perr then error(perr, 2) end
    return piece
  end
end

--- model:generate(prompt, opts) → text, stats
-- stats: tokens (the new ids), prompt_tokens, new_tokens, prompt_seconds,
-- gen_seconds, tokens_per_second, stop_reason ("length", "eos", "stop", "context").
function Model.generate(model, prompt, opts)
  local ids, gen_opts = prompt_ids(model, prompt, opts)
  local gen, err = model:start(ids, gen_opts)
  if not gen then return nil, err end
  local parts = {}
  while true do
    local piece, perr = gen:step()
    if piece == nil then
      if perr then return nil, perr end
      break
    end
    parts[#parts + 1] = piece
  end
  last_generation[model] = gen
  return table.concat(parts), gen:stats()
end

--- Statistics of the last generate or stream call.
function Model.last_stats(model)
  local gen = last_generation[model]
  return gen and gen:stats() or nil
end

--- Test-only accounting: live tensor headers and heap bytes, so specs can
-- assert that nothing leaks.
pio.debug = { live_tensors = core.live_tensors, heap_bytes = core.heap_bytes }

-- ---- the composition layer: one concept per file in lua/pio/ ------------------------

pio.device = require "pio.device"       -- device facts: pio.device.info("cpu")
pio.memory = require "pio.memory"       -- budgets, report, refusing what cannot fit
pio.load = pio.memory.wrap_load(core.load)
pio.strategy = require "pio.strategy"   -- strategy families, select, model:use
pio.config = require "pio.config"       -- configs/<plugin>.json
pio.plugins = require "pio.plugins"     -- the registry, C and Lua plugins
for factory_name, factory in pairs(pio.plugins.factories) do pio[factory_name] = factory end
pio.plugin, pio.plugin_descriptors = nil, nil -- the registry's primitives, not API
pio.decorators = require "pio.decorators"
pio.decorate = pio.decorators.decorate
local pipeline = require "pio.pipeline"
pio.pipeline = pipeline.new
pio.pipelines = { completion = pipeline.completion, chat = pipeline.chat, batch = pipeline.batch }
pio.surgery = require "pio.surgery"
local scheduler = require "pio.scheduler"   -- continuous batching; model:generate_batch
scheduler.prompt_ids = prompt_ids           -- prompts read as generate reads them
pio.scheduler = scheduler.new

return pio
