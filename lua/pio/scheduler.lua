--- pio.scheduler: continuous batching over one model.
--
--   local s = pio.scheduler(model, { max_batch = 8, max_tokens = 256 })
--   local h = s:submit("Once upon a time", { max_tokens = 32, temperature = 0,
--                      on_token = function(h, text, id) io.write(text) end,
--                      on_done = function(h, reason) print(reason) end })
--   s:run()                 -- or s:step() in a loop of your own
--   print(h:text(), h.status, s:stats().handles[1].ttft)
--
-- Each step runs one batch: the next token of every running sequence plus
-- chunks of new prompts, up to max_tokens tokens and max_batch sequences
-- (at most the model's max_seqs, its default). When the KV cache runs out of
-- room the newest sequence is preempted and later recomputed, or with
-- preempt = "swap" its KV waits in host memory (models/scheduler.c).
-- Callbacks run after the batch, in batch order; an error in one is raised
-- from step() once every event of the step has been delivered.
local core = require "pio.core"

local M = {}

-- Set by init.lua: how generate reads a prompt (chat messages, text, ids).
M.prompt_ids = nil

local Scheduler = {}
Scheduler.__index = Scheduler

local Handle = {}

local function check_count(what, key, v)
  if v == nil then return nil end
  if math.type(v) ~= "integer" or v < 1 then
    error(string.format("%s: %s must be an integer >= 1, got %s", what, key, tostring(v)), 3)
  end
  return v
end

--- pio.scheduler(model, { max_batch =, max_tokens =, preempt = "recompute" | "swap" }) →
-- a scheduler. preempt: what a sequence preempted for KV room loses: its KV, recomputed
-- when it resumes (the default), or nothing, its KV copied to host memory and back ("swap").
function M.new(model, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("pio.scheduler: options must be a table", 2) end
  for k in pairs(opts) do
    if k ~= "max_batch" and k ~= "max_tokens" and k ~= "preempt" then
      error(string.format("pio.scheduler: unknown option '%s' (known: max_batch, max_tokens, preempt)",
                          tostring(k)), 2)
    end
  end
  local max_batch = check_count("pio.scheduler", "max_batch", opts.max_batch)
  local max_tokens = check_count("pio.scheduler", "max_tokens", opts.max_tokens)
  local preempt = opts.preempt or "recompute"
  if preempt ~= "recompute" and preempt ~= "swap" then
    error(string.format("pio.scheduler: preempt must be 'recompute' or 'swap', got %s",
                        type(preempt) == "string" and ("'" .. preempt .. "'") or tostring(preempt)), 2)
  end
  local ok, c = pcall(core.scheduler, model, max_batch, max_tokens, preempt)
  if not ok then error("pio.scheduler: " .. tostring(c), 2) end
  return setmetatable({
    core = c, model = model,
    live = {},                                -- id → handle, until done (callbacks need them)
    handles = setmetatable({}, { __mode = "v" }), -- id → handle, while the caller keeps it
    order = setmetatable({}, { __mode = "v" }),   -- handles in submission order (with holes)
    submitted = 0,
  }, Scheduler)
end

local SUBMIT_ONLY = { on_token = true, on_done = true, max_tokens = true }

--- s:submit(prompt, opts) → handle. prompt: text, token ids or chat messages
-- (as model:generate); opts: generation options (max_tokens or max_new_tokens,
-- temperature, top_k, top_p, seed, stop, ...), on_token(h, text, id) and on_done(h, reason).
function Scheduler:submit(prompt, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("submit: options must be a table", 2) end
  for _, f in ipairs { "on_token", "on_done" } do
    if opts[f] ~= nil and type(opts[f]) ~= "function" then
      error(string.format("submit: %s must be a function, got %s", f, type(opts[f])), 2)
    end
  end
  if opts.max_tokens ~= nil and opts.max_new_tokens ~= nil then
    error("submit: give max_tokens or max_new_tokens, not both", 2)
  end
  local gen_opts = {}
  for k, v in pairs(opts) do
    if not SUBMIT_ONLY[k] then gen_opts[k] = v end
  end
  gen_opts.max_new_tokens = opts.max_tokens or opts.max_new_tokens
  local ok, gen = pcall(function()
    local ids, rest = M.prompt_ids(self.model, prompt, gen_opts)
    local g, why = self.model:start(ids, rest)
    if not g then error(why, 0) end
    return g
  end)
  if not ok then -- the message alone: no "file.lua:N:" of the layers in between, no "generate: "
    local msg = tostring(gen):gsub("^[^\n]-%.lua:%d+: ", ""):gsub("^generate: ", "")
    error("submit: " .. msg, 2)
  end
  local id = self.core:submit(gen)
  local h = setmetatable({ id = id, scheduler = self, on_token = opts.on_token,
                           on_done = opts.on_done }, Handle)
  self.live[id], self.handles[id] = h, h
  self.submitted = self.submitted + 1
  self.order[self.submitted] = h
  return h
end

--- s:step() → the number of running sequences after one batch.
function Scheduler:step()
  local running, events = self.core:step()
  local failure
  local function call(f, ...)
    local ok, err = pcall(f, ...)
    if not ok and failure == nil then failure = err end
  end
  for _, ev in ipairs(events) do
    local h = self.handles[ev.id]
    if ev.done then self.live[ev.id] = nil end
    if h then
      if h.on_token and (ev.token >= 0 or ev.text ~= "") then
        call(h.on_token, h, ev.text, ev.token >= 0 and ev.token or nil)
      end
      if ev.done and h.on_done then call(h.on_done, h, ev.done) end
    end
  end
  if failure ~= nil then error(failure, 0) end
  return running
end

--- s:run(): steps until every submitted sequence is done.
function Scheduler:run()
  while self.core:busy() do self:step() end
end

--- s:stats() → steps, batch_tokens, prompt_tokens, generated_tokens,
-- reused_tokens, preemptions, swaps_out, swaps_in, swapped_out_bytes, swapped_in_bytes,
-- swap_held_bytes, swap_seconds, running, waiting, forward_seconds, and handles:
-- per handle kept alive { id, status, tokens, ttft, tpot, preemptions,
-- reused_tokens } (ttft, tpot in seconds; nil until known).
function Scheduler:stats()
  local st = self.core:stats()
  st.handles = {}
  for i = 1, self.submitted do
    local h = self.order[i] -- nil once the caller let go of it
    local info = h and self.core:seq(h.id)
    if info then
      local first, done, n = info.first_token, info.finished, #info.tokens
      st.handles[#st.handles + 1] = {
        id = h.id, status = info.status, tokens = n, preemptions = info.preemptions,
        reused_tokens = info.reused_tokens,
        ttft = first > 0 and first - info.submitted or nil,
        tpot = (done > 0 and n > 1) and (done - first) / (n - 1) or nil,
      }
    end
  end
  return st
end

--- s:close(): frees the scheduler now (sequences not done are dropped).
function Scheduler:close()
  self.core:free()
  self.live = {}
end

-- ---- handles ---------------------------------------------------------------

function Handle.__index(h, key)
  if key == "status" then return h.scheduler.core:seq(h.id).status end
  return Handle[key]
end

--- A handle that is no longer referenced releases its sequence's memory.
function Handle.__gc(h)
  h.scheduler.core:release(h.id)
end

function Handle:text() return self.scheduler.core:seq(self.id).text end
function Handle:tokens() return self.scheduler.core:seq(self.id).tokens end
--- Why it stopped ("length", "eos", "stop", "context", "cancelled", "error"), or nil.
function Handle:stop_reason() return self.scheduler.core:seq(self.id).stop_reason end

--- h:cancel() → true if it was still running or queued; on_done(h, "cancelled") runs now.
function Handle:cancel()
  local s = self.scheduler
  if not s.core:cancel(self.id) then return false end
  s.live[self.id] = nil
  if self.on_done then self.on_done(self, "cancelled") end
  return true
end

-- ---- model:generate_batch ----------------------------------------------------

--- model:generate_batch(prompts, opts) → { text, ... } in the prompts' order:
-- every prompt through one scheduler (max_batch: the model's max_seqs).
-- opts: generation options for all of them, plus max_batch and max_tokens_per_step.
function core.Model.generate_batch(model, prompts, opts)
  if type(prompts) ~= "table" then
    error("generate_batch: prompts must be a list, got " .. type(prompts), 2)
  end
  opts = opts or {}
  local gen_opts = {}
  for k, v in pairs(opts) do gen_opts[k] = v end
  gen_opts.max_batch, gen_opts.max_tokens_per_step = nil, nil
  local max_seqs = model:info().max_seqs
  local ok, s = pcall(M.new, model, {
    max_batch = opts.max_batch or math.max(1, math.min(#prompts, max_seqs)),
    max_tokens = opts.max_tokens_per_step })
  if not ok then error((tostring(s):gsub("^pio%.scheduler", "generate_batch")), 2) end
  local handles = {}
  for i, p in ipairs(prompts) do
    local ok2, h = pcall(s.submit, s, p, gen_opts)
    if not ok2 then
      s:close()
      error(string.format("generate_batch: prompt %d: %s", i, (tostring(h):gsub("^submit: ", ""))), 2)
    end
    handles[i] = h
  end
  s:run()
  local texts = {}
  for i, h in ipairs(handles) do texts[i] = h:text() end
  s:close()
  return texts
end

return M
