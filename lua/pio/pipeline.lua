--- pio.pipeline: inference as named stages, each a function of one context.
--
--   local p = pio.pipeline{ model = m, "template", "tokenize", "prefill", "decode",
--                           "detokenize", { "postprocess", function(ctx) ... end } }
--   p:before("decode", function(ctx) ... end):after("*", log_stage)
--   local text, ctx = p:run("Once upon a time", { max_new_tokens = 32 })
--
-- A stage is a built-in name (below), { name, fn }, or { name = , run = }.
-- Hooks run before and after a stage ("*": every stage). A failure anywhere
-- in a stage or its hooks is raised as "stage N (name): why". Every run
-- records each stage's seconds in ctx.timings.
--
-- The context: input, model, options (generation options), prompt (text),
-- ids, generation, pieces, tokens, text, output, stats, timings, and
-- on_piece (a function called with each piece of text as it is decoded).
local core = require "pio.core"

local M = {}

local now = core.now

-- ---- the built-in stages ------------------------------------------------------------

local function is_messages(x)
  return type(x) == "table" and type(x[1]) == "table"
end

local function is_ids(x)
  return type(x) == "table" and math.type(x[1]) == "integer"
end

-- The chat template of a model's tokenizer, where it has one. Called as
-- templates are: (messages, ctx).
local function model_template(_, ctx)
  local tok = ctx.model and ctx.model.tokenizer
  local apply = tok and tok.apply_chat_template
  if not apply then
    error("no chat template: this model's tokenizer cannot render chat messages; give the "
          .. "pipeline template = function(messages) return text end", 0)
  end
  return apply(tok, ctx.messages, { add_generation_prompt = true })
end

M.stages = {}

--- template: text as it is; chat messages through the template (the pipeline's
-- `template` function, else the tokenizer's chat template); token ids skip it.
function M.stages.template(ctx)
  local input = ctx.input
  if type(input) == "string" then
    if ctx.chat then
      ctx.messages = { { role = "user", content = input } }
    else
      ctx.prompt = input
      return
    end
  elseif is_ids(input) then
    ctx.ids = input
    return
  elseif is_messages(input) then
    ctx.messages = input
  else
    error("the input must be text, a list of token ids or a list of chat messages, got "
          .. type(input), 0)
  end
  if ctx.system and ctx.messages[1].role ~= "system" then
    table.insert(ctx.messages, 1, { role = "system", content = ctx.system })
  end
  ctx.prompt = (ctx.template or model_template)(ctx.messages, ctx)
  if type(ctx.prompt) ~= "string" then
    error("the chat template returned " .. type(ctx.prompt) .. ", not text", 0)
  end
end

--- tokenize: the prompt's token ids (through the model's tokenizer).
function M.stages.tokenize(ctx)
  if ctx.ids then return end
  local tok = ctx.model.tokenizer
  if not tok then error("this model has no tokenizer: pass token ids instead of text", 0) end
  ctx.ids = tok:encode(ctx.prompt)
end

local function emit(ctx, piece)
  ctx.pieces[#ctx.pieces + 1] = piece
  if ctx.on_piece then ctx.on_piece(piece, ctx) end
end

--- prefill: runs the prompt through the model; the first token comes with it.
function M.stages.prefill(ctx)
  local gen, err = ctx.model:start(ctx.ids, ctx.options)
  if not gen then error(err, 0) end
  ctx.generation = gen
  ctx.pieces = {}
  local piece, perr = gen:step()
  if piece == nil and perr then error(perr, 0) end
  if piece then emit(ctx, piece) end
  ctx.finished = piece == nil
end

--- decode: one token at a time until a stop id, a stop string or max_new_tokens.
function M.stages.decode(ctx)
  if ctx.finished then return end
  local gen = ctx.generation
  while true do
    local piece, err = gen:step()
    if piece == nil then
      if err then error(err, 0) end
      break
    end
    emit(ctx, piece)
  end
  ctx.finished = true
end

--- detokenize: the generated ids and their text (the streaming detokenizer
-- already turned them into whole UTF-8 pieces), and the run's statistics.
function M.stages.detokenize(ctx)
  ctx.stats = ctx.generation:stats()
  ctx.tokens = ctx.stats.tokens
  ctx.text = table.concat(ctx.pieces)
end

--- postprocess: the pipeline's `postprocess` function over the text, if any.
function M.stages.postprocess(ctx)
  ctx.output = ctx.text
  if ctx.postprocess then ctx.output = ctx.postprocess(ctx.text, ctx) end
end

M.order = { "template", "tokenize", "prefill", "decode", "detokenize", "postprocess" }

-- ---- pipelines ------------------------------------------------------------------------

local Pipeline = {}
Pipeline.__index = Pipeline
Pipeline.__name = "pio.Pipeline"

function Pipeline:__tostring()
  local names = {}
  for i, s in ipairs(self.stages) do names[i] = s.name end
  return string.format("pio.Pipeline(%s: %s)", self.name, table.concat(names, " → "))
end

local OPTIONS = { name = true, model = true, template = true, postprocess = true, system = true,
                  chat = true, options = true, on_piece = true }

--- pio.pipeline{ stage, ..., model =, name =, template =, postprocess =,
-- system =, chat =, options =, on_piece = } → a pipeline. Without stages it
-- has the six built-in ones in order.
function M.new(spec)
  if type(spec) ~= "table" then
    error("pio.pipeline: expected a table of stages and options, got " .. type(spec), 2)
  end
  local p = setmetatable({ name = spec.name or "pipeline", stages = {}, hooks = {},
                           defaults = {} }, Pipeline)
  for key, value in pairs(spec) do
    if math.type(key) ~= "integer" then
      if not OPTIONS[key] then
        local known = {}
        for k in pairs(OPTIONS) do known[#known + 1] = k end
        table.sort(known)
        error(string.format("pio.pipeline: unknown option '%s' (known: %s)", tostring(key),
                            table.concat(known, ", ")), 2)
      end
      if key ~= "name" then p.defaults[key] = value end
    end
  end
  local list = #spec > 0 and spec or M.order
  for i, s in ipairs(list) do
    local name, fn
    if type(s) == "string" then
      name, fn = s, M.stages[s]
      if not fn then
        error(string.format("pio.pipeline: stage %d: no built-in stage '%s' (built-in: %s)", i, s,
                            table.concat(M.order, ", ")), 2)
      end
    elseif type(s) == "table" then
      name, fn = s.name or s[1], s.run or s[2]
      if type(name) ~= "string" or type(fn) ~= "function" then
        error(string.format("pio.pipeline: stage %d must be { name, function }", i), 2)
      end
    else
      error(string.format("pio.pipeline: stage %d must be a name or { name, function }, got %s",
                          i, type(s)), 2)
    end
    for _, other in ipairs(p.stages) do
      if other.name == name then
        error(string.format("pio.pipeline: stage '%s' appears twice", name), 2)
      end
    end
    p.stages[#p.stages + 1] = { name = name, run = fn }
  end
  return p
end

local function add_hook(p, when, stage, fn, level)
  if type(fn) ~= "function" then
    error(string.format("%s: the hook must be a function, got %s", when, type(fn)), level)
  end
  local found = stage == "*"
  for _, s in ipairs(p.stages) do found = found or s.name == stage end
  if not found then
    local names = {}
    for i, s in ipairs(p.stages) do names[i] = s.name end
    error(string.format("%s: no stage '%s' in this pipeline (stages: %s)", when, tostring(stage),
                        table.concat(names, ", ")), level)
  end
  local key = when .. ":" .. stage
  p.hooks[key] = p.hooks[key] or {}
  table.insert(p.hooks[key], fn)
  return p
end

--- p:before(stage, fn): fn(ctx) runs before the stage ("*": before every stage).
function Pipeline:before(stage, fn) return add_hook(self, "before", stage, fn, 3) end

--- p:after(stage, fn): fn(ctx) runs after the stage ("*": after every stage).
function Pipeline:after(stage, fn) return add_hook(self, "after", stage, fn, 3) end

--- The names of the stages, in order.
function Pipeline:stage_names()
  local names = {}
  for i, s in ipairs(self.stages) do names[i] = s.name end
  return names
end

local function run_hooks(p, when, stage, ctx)
  for _, key in ipairs { when .. ":*", when .. ":" .. stage } do
    for _, fn in ipairs(p.hooks[key] or {}) do fn(ctx, stage) end
  end
end

-- The text of an error; a position inside pio's own library says nothing
-- to the user and is left out (a position in the user's stage is kept).
local function message(err)
  if type(err) ~= "string" then return tostring(err) end
  return (err:gsub("^[^%s]-/lua/pio/[%w_]+%.lua:%d+: ", ""))
end

--- p:run(input, options, extra) → output, ctx. options are generation
-- options (over the pipeline's `options`); extra sets more context fields
-- for this run (on_piece, template, system, ...).
function Pipeline:run(input, options, extra)
  local ctx = { input = input, timings = {}, pipeline = self }
  for k, v in pairs(self.defaults) do ctx[k] = v end
  for k, v in pairs(extra or {}) do ctx[k] = v end
  if self.defaults.options or options then
    local merged = {}
    for k, v in pairs(self.defaults.options or {}) do merged[k] = v end
    for k, v in pairs(options or {}) do merged[k] = v end
    ctx.options = merged
  end
  for i, stage in ipairs(self.stages) do
    local started = now()
    local ok, err = pcall(function()
      run_hooks(self, "before", stage.name, ctx)
      stage.run(ctx)
      run_hooks(self, "after", stage.name, ctx)
    end)
    ctx.timings[stage.name] = now() - started
    if not ok then
      if ctx.generation then ctx.generation:free() end
      error(string.format("stage %d (%s): %s", i, stage.name, message(err)), 0)
    end
  end
  self.last = ctx
  return ctx.output, ctx
end

--- Seconds per stage of the last run (what pio.decorators.timing reads).
function Pipeline:last_timings()
  return self.last and self.last.timings or nil
end

-- ---- ready-made pipelines ------------------------------------------------------------

local function with(spec, model, opts, name)
  spec.model = model
  spec.name = name
  for k, v in pairs(opts or {}) do spec[k] = v end
  return M.new(spec)
end

--- pio.pipelines.completion(model, opts): text (or token ids) in, text out.
function M.completion(model, opts)
  return with({}, model, opts, "completion")
end

--- pio.pipelines.chat(model, { template =, system = }): chat messages (or a
-- user's text) in, the assistant's reply out; ctx.reply is the message.
function M.chat(model, opts)
  local p = with({ chat = true }, model, opts, "chat")
  return p:after("postprocess", function(ctx)
    ctx.reply = { role = "assistant", content = ctx.output }
  end)
end

local Batch = {}
Batch.__index = Batch
Batch.__name = "pio.Pipeline"

function Batch:__tostring()
  return string.format("pio.Pipeline(batch of %s)", tostring(self.inner))
end

--- Hooks go to the pipeline each input runs through.
function Batch:before(stage, fn) self.inner:before(stage, fn) return self end
function Batch:after(stage, fn) self.inner:after(stage, fn) return self end
function Batch:stage_names() return self.inner:stage_names() end

--- batch:run(inputs, options) → outputs (in order), contexts. Inputs run one
-- after another through the completion (or chat, for message lists) pipeline;
-- a failure names the input: "input 2: stage 3 (prefill): ...".
function Batch:run(inputs, options, extra)
  if type(inputs) ~= "table" then
    error("batch: inputs must be a list, got " .. type(inputs), 2)
  end
  local outputs, contexts = {}, {}
  for i, input in ipairs(inputs) do
    local ok, out, ctx = pcall(self.inner.run, self.inner, input, options, extra)
    if not ok then error(string.format("input %d: %s", i, message(out)), 0) end
    outputs[i], contexts[i] = out, ctx
  end
  local sums = {}
  for _, ctx in ipairs(contexts) do
    for stage, seconds in pairs(ctx.timings) do sums[stage] = (sums[stage] or 0) + seconds end
  end
  self.last_sums = sums
  return outputs, contexts
end

--- Seconds per stage of the last run, summed over its inputs.
function Batch:last_timings() return self.last_sums end

--- pio.pipelines.batch(model, opts): a list of inputs in, a list of outputs out.
-- (They run one after another; concurrent sequences come with the scheduler.)
function M.batch(model, opts)
  local inner = with({}, model, opts, "batch")
  return setmetatable({ name = "batch", inner = inner, stages = inner.stages }, Batch)
end

return M
