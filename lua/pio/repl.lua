--- pio.repl: what the interactive `pio` adds to Lua: help(x) for every pio
-- object, tab completion of names, and readable printing of plugins,
-- models, tensors and tables. main.c calls complete() from readline and
-- show() to print results; everything here works without a terminal too.
local M = {}

-- ---- documentation --------------------------------------------------------------------
--
-- Lua functions document themselves: help reads the `--` comment block right
-- above their definition in the source. C functions and the userdata types
-- are described here.

M.docs = {
  ["pio.load"] = "pio.load(path, opts) → model | nil, message\n"
    .. "Loads a Hugging Face model directory (or, with synthetic = true, a config.json) with\n"
    .. "opts dtype ('bf16'|'f32'), device, threads, ctx, max_seqs, synthetic, seed, progress,\n"
    .. "max_bytes. Under a pio.memory budget, max_bytes is what the budget has left.",
  ["pio.estimate"] = "pio.estimate(path, opts) → { weights, kv, activations, total, parameters, ... } | nil, message\n"
    .. "The bytes pio.load(path, opts) would take, from config.json alone (nothing allocated).",
  ["pio.tokenizer"] = "pio.tokenizer(path) → tokenizer | nil, message\nLoads tokenizer.json (or vocab.json + merges.txt) alone.",
  ["pio.tensor"] = "pio.tensor(nested table, { dtype = }) → tensor",
  ["pio.zeros"] = "pio.zeros(shape..., { dtype = }) → tensor of zeros",
  ["pio.ones"] = "pio.ones(shape..., { dtype = }) → tensor of ones",
  ["pio.randn"] = "pio.randn(shape..., { dtype =, seed = }) → tensor of seeded normal numbers",
  ["pio.safetensors"] = "pio.safetensors(path) → { name = tensor } viewing a checkpoint file (no copy)",
  ["pio.architectures"] = "pio.architectures() → the config.json architectures this pio runs, comma-separated",
  ["pio.strategies"] = "pio.strategies() → the runtime's strategy table as data (see pio.strategy)",
  ["pio.strategy"] = "pio.strategy: strategy families (attention, kv, precision, sampling, offload,\n"
    .. "parallel), pio.strategy.select and model:use. Try help(pio.strategy.kv).",
  ["pio.now"] = "pio.now() → monotonic seconds",
  ["pio.model_device"] = "pio.model_device(name) → the device models load on for name ('auto' resolved), true | false, why",
  ["pio.executable"] = "pio.executable() → the path of the running executable",
  ["pio.read_bandwidth"] = "pio.read_bandwidth{ threads =, mib =, reps = } → memory read bytes per second",
  ["pio.live_tensors"] = "pio.live_tensors() → live tensor headers (test-only accounting)",
  ["pio.heap_bytes"] = "pio.heap_bytes() → heap bytes held by tensors (test-only accounting)",
  ["pio.version"] = "pio.version: the version string",
  ["pio.cuda_built"] = "pio.cuda_built: whether this pio has its CUDA backend",
  ["pio.source_dir"] = "pio.source_dir: the source tree this pio was built from (configs/, tests/, scripts/)",
  ["pio.debug"] = "pio.debug: test-only accounting (live_tensors, heap_bytes)",

  ["pio.config"] = "pio.config: the presets in configs/<plugin>.json (read with lua-cjson) and their checks",
  ["pio.decorators"] = "pio.decorators: timing, log, validate, cache, retry; use with pio.decorate(obj, ...)",
  ["pio.decorators.timing"] = "pio.decorators.timing: seconds per call and per stage; obj:timings()",
  ["pio.decorators.log"] = "pio.decorators.log{ level =, threshold =, sink =, name = }: a line per call",
  ["pio.decorators.validate"] = "pio.decorators.validate{ max_chars =, allow_ids =, allow_messages = }: checks inputs first",
  ["pio.decorators.cache"] = "pio.decorators.cache{ size = 64 }: LRU of results keyed on input and options; obj:cache_stats()",
  ["pio.decorators.retry"] = "pio.decorators.retry{ attempts = 3, delay = 0, transient = fn }: tries failed calls again; obj:retries()",
  ["pio.decorators.work"] = "pio.decorators.work: the methods decorators wrap (the rest pass through)",
  ["pio.device"] = "pio.device: device facts (pio.device.info('cpu'), /proc/meminfo)",
  ["pio.memory"] = "pio.memory: per-device budgets (max_memory_ratio), report(), refusing models that cannot fit",
  ["pio.pipelines"] = "pio.pipelines: ready-made completion, chat and batch pipelines",
  ["pio.plugins"] = "pio.plugins: the plugin registry (one per Lua state): register, create, list, metadata",
  ["pio.plugins.factories"] = "pio.plugins.factories: the seed's factory functions by name",
  ["pio.plugins.interface"] = "pio.plugins.interface: the methods every plugin has",
  ["pio.strategy.policy"] = "pio.strategy.policy: candidates per family, best first, for pio.strategy.select",
  ["pio.strategy.families"] = "pio.strategy.families: attention, kv, precision, sampling, offload, parallel",
  ["pio.surgery"] = "pio.surgery: model surgery on loaded weights (pio.surgery.apply)",
  ["pio.Model"] = "pio.Model: a loaded model: weights, KV cache, tokenizer (m.tokenizer).\n"
    .. "Free it now with m:free() or `local m <close> = ...`.",
  ["pio.Model:logits"] = "m:logits(ids) → tensor [#ids, vocab] of a fresh sequence (0-based ids)",
  ["pio.Model:info"] = "m:info() → architecture, dtype, device, parameters, weight_bytes, kv_bytes,\n"
    .. "activation_bytes, n_layer, n_ctx, ..., strategies",
  ["pio.Model:start"] = "m:start(ids, opts) → a pio.Generation (the primitive under generate and stream)",
  ["pio.Model:free"] = "m:free(): releases the weights and the KV cache now",
  ["pio.Model:surgery"] = "m:surgery{ fuse_qkv =, fuse_gate_up =, remove_layers = {...} } → report\n"
    .. "The primitive under pio.surgery.apply.",
  ["pio.Model:bench_forward"] = "m:bench_forward(n_tokens, n_past, n_batch) → seconds of forward passes (benchmarks)",
  ["pio.Model:bench_decode"] = "m:bench_decode(n_seqs, n_steps, depth) → seconds of n_steps one-token passes\n"
    .. "of n_seqs sequences at once, after depth untimed prompt tokens each (benchmarks)",
  ["pio.Model:decode_bytes"] = "m:decode_bytes() → weight bytes one decode step reads",
  ["pio.Model:save"] = "m:save(path) → true | nil, message: every weight into one safetensors file",
  ["pio.Model:kv_configure"] = "m:kv_configure{ layout =, block =, blocks =, bytes =, format =, prefix =,\n"
    .. "attention =, window =, sink = }: reallocates the KV cache (what kv/attention strategies set)",
  ["pio.Model:kv_stats"] = "m:kv_stats() → layout, format, attention, block_size, blocks_total/used/cached/free,\n"
    .. "bytes_per_block, bytes, prefix, prefix_hits, prefix_misses, tokens_reused, evictions",
  ["pio.Model:seq_free"] = "m:seq_free(seq): empties a KV slot (0-based); its cached prefix blocks stay",
  ["pio.Model:seq_reserve"] = "m:seq_reserve(seq, n) → true | nil, message: KV room for positions [0, n) of\n"
    .. "slot seq (0-based) before running anything (out of KV blocks: nil and the numbers)",
  ["pio.Model:kv_bytes"] = "m:kv_bytes([cfg]) → bytes the KV cache takes with cfg (m:kv_configure's keys), or now",
  ["pio.Model:save_sequence"] = "m:save_sequence(seq, path) → true | nil, message: the slot's tokens and KV",
  ["pio.Model:load_sequence"] = "m:load_sequence(seq, path) → positions | nil, message (another model or\n"
    .. "KV format is refused)",
  ["pio.Tensor"] = "pio.Tensor: dtype f32/f16/bf16, up to 4 dims, 1-based dims in Lua; + - * / work.",
  ["pio.Tensor:shape"] = "t:shape() → { dims }",
  ["pio.Tensor:dtype"] = "t:dtype() → 'f32' | 'f16' | 'bf16'",
  ["pio.Tensor:numel"] = "t:numel() → number of elements",
  ["pio.Tensor:table"] = "t:table() → nested Lua tables of numbers",
  ["pio.Tensor:view"] = "t:view(shape...) → a view with another shape (contiguous tensors; one -1 inferred)",
  ["pio.Tensor:transpose"] = "t:transpose(a, b) → a view with dims a and b swapped",
  ["pio.Tensor:contiguous"] = "t:contiguous() → a contiguous copy",
  ["pio.Tensor:to"] = "t:to(dtype) → a copy in another dtype",
  ["pio.Tensor:matmul"] = "a:matmul(b) → a · b",
  ["pio.Tensor:softmax"] = "t:softmax(dim) → softmax over dim (default: the last)",
  ["pio.Tensor:rmsnorm"] = "t:rmsnorm(w, eps) → RMSNorm over the last dim",
  ["pio.Tensor:free"] = "t:free(): releases the storage now",
  ["pio.Tokenizer"] = "pio.Tokenizer: byte-level BPE; text ↔ 0-based token ids.",
  ["pio.Tokenizer:encode"] = "tok:encode(text, { special = true, add_special = false }) → ids",
  ["pio.Tokenizer:apply_chat_template"] = "tok:apply_chat_template(messages, { add_generation_prompt =, tools =,\n"
    .. "enable_thinking =, ... }) → text through the model's chat template (pio.chat)",
  ["pio.Tokenizer:chat_template"] = "tok:chat_template(with_tools) → template text, where it came from",
  ["pio.Tokenizer:token_to_id"] = "tok:token_to_id(piece) → id | nil",
  ["pio.Tokenizer:id_to_token"] = "tok:id_to_token(id) → piece | nil",
  ["pio.Tokenizer:vocab_size"] = "tok:vocab_size() → vocabulary size, added tokens included",
  ["pio.Tokenizer:is_special"] = "tok:is_special(id) → whether id is a special added token",
  ["pio.Tokenizer:dir"] = "tok:dir() → the directory its files came from",
  ["pio.Tokenizer:decode"] = "tok:decode(ids, { skip_special = false }) → text",
  ["pio.Tokenizer:n_vocab"] = "tok:n_vocab() → vocabulary size",
  ["pio.Tokenizer:token_id"] = "tok:token_id(piece) → id | nil",
  ["pio.Tokenizer:token"] = "tok:token(id) → piece",
  ["pio.Tokenizer:free"] = "tok:free(): releases the tokenizer now",
  ["pio.Generation"] = "pio.Generation: a generation in progress (model:start).",
  ["pio.Generation:step"] = "gen:step() → the next piece of text, or nil when finished",
  ["pio.Generation:stats"] = "gen:stats() → tokens, prompt_tokens, new_tokens, timings, stop_reason",
  ["pio.Generation:free"] = "gen:free(): releases it now",
  ["pio.Strategy"] = "pio.Strategy: a named, parameterised choice in a family: s.name, s.family, s.id,\n"
    .. "s.params, s.options (what it sets), s.applies ('load', 'generate', 'nowhere'), s.description.",
  ["pio.Strategy:supports"] = "s:supports(model, device) → true | false, reason\n"
    .. "model: a pio.Model, a path or an info table; device: a name or pio.device.info(...).",
  ["pio.Plugin"] = "pio.Plugin: a C-backed model plugin: initialize, load_model, infer, cleanup, execute,\n"
    .. "get_model_info, update_config, supports_config (the seed's interface).",
  ["pio.Pipeline"] = "pio.Pipeline: named stages (template, tokenize, prefill, decode, detokenize,\n"
    .. "postprocess) with p:before/p:after hooks; p:run(input, options) → output, ctx.",
  ["pio.Decorated"] = "A decorated object (pio.decorate): the same methods, timed/logged/validated/cached/retried.\n"
    .. "Extra: timings(), cache_stats(), retries(), decorators(), undecorated().",
}

-- The seed's factories describe the plugin they make.
do
  local ok, core = pcall(require, "pio.core")
  for _, d in ipairs(ok and core.plugin_descriptors and core.plugin_descriptors() or {}) do
    M.docs["pio." .. d.factory] = string.format("pio.%s(config) → a pio.Plugin for %s\n"
      .. "(%s; raises when this pio does not run %s yet)", d.factory, d.description, d.hf_repo,
      d.architecture)
  end
end

-- Each strategy constructor describes its row of the runtime's table.
local function strategy_doc(d)
  local params = {}
  for _, p in ipairs(d.params) do
    params[#params + 1] = string.format("  %s: %s (%s in [%g, %g], default %g)", p.name, p.doc,
                                        p.integer and "an integer" or "a number", p.min, p.max, p.default)
  end
  local call = d.composite and "(s1, s2, ...)" or (#d.params > 0 and "{ ... }" or "()")
  return string.format("pio.strategy.%s.%s%s → pio.Strategy: %s%s%s", d.family, d.name, call,
                       d.summary, #params > 0 and ("\n" .. table.concat(params, "\n")) or "",
                       d.not_yet and ("\nnot supported yet: " .. d.not_yet) or "")
end

-- Where a Lua function is defined: its doc comment (the `--` lines above it).
local source_cache = {}
local function doc_comment(f)
  local info = debug.getinfo(f, "S")
  if info.what ~= "Lua" or info.source:sub(1, 1) ~= "@" or info.linedefined < 1 then return nil end
  local path = info.source:sub(2)
  local lines = source_cache[path]
  if not lines then
    local file = io.open(path, "r")
    if not file then return nil end
    lines = {}
    for line in file:lines() do lines[#lines + 1] = line end
    file:close()
    source_cache[path] = lines
  end
  local out = {}
  local i = info.linedefined - 1
  while i >= 1 and lines[i]:match("^%s*%-%-") do
    table.insert(out, 1, (lines[i]:gsub("^%s*%-%-%-?%s?", "")))
    i = i - 1
  end
  local params = lines[info.linedefined]:match("function%s*[%w_.:]*%s*(%b())")
  return #out > 0 and table.concat(out, "\n") or nil, params
end

-- ---- naming values ------------------------------------------------------------------------

local TYPES = { ["pio.Model"] = true, ["pio.Tensor"] = true, ["pio.Tokenizer"] = true,
                ["pio.Generation"] = true, ["pio.Strategy"] = true, ["pio.Plugin"] = true,
                ["pio.Pipeline"] = true, ["pio.Decorated"] = true }

local function type_name(x)
  local mt = getmetatable(x)
  local name = type(mt) == "table" and rawget(mt, "__name")
  return type(name) == "string" and name or nil
end

-- The methods table of a userdata or object type (what its __index serves).
local function methods_of(x)
  local mt = getmetatable(x)
  if type(mt) ~= "table" then return nil end
  local t = rawget(mt, "methods")
  if type(t) == "table" then return t end
  t = rawget(mt, "__index")
  if type(t) == "table" then return t end
  return nil
end

local function pio_table()
  local ok, pio = pcall(require, "pio")
  return ok and pio or {}
end

-- value -> "pio.x.y" for everything reachable from pio (two levels down), and
-- "pio.Model:method" for the methods of the userdata types.
local function names()
  local out = {}
  local pio = pio_table()
  out[pio] = "pio"
  if type(pio.strategy) == "table" and pio.strategies then -- pio.strategy.<family>.<name>
    for _, d in ipairs(pio.strategies()) do
      local ok, f = pcall(function() return pio.strategy[d.family][d.name] end)
      if ok and f then
        local name = "pio.strategy." .. d.family .. "." .. d.name
        out[f] = name
        M.docs[name] = M.docs[name] or strategy_doc(d)
      end
    end
  end
  for k, v in pairs(pio) do
    if type(k) == "string" then
      local name = "pio." .. k
      if (type(v) == "function" or type(v) == "table") and out[v] == nil then out[v] = name end
      if type(v) == "table" and k ~= "debug" then
        for k2, v2 in pairs(v) do
          if type(k2) == "string" and (type(v2) == "function" or type(v2) == "table")
             and out[v2] == nil then
            local type_methods = k == "Model" or k == "Plugin" or k == "Strategy"
            out[v2] = "pio." .. k .. (type_methods and ":" or ".") .. k2
          end
        end
      end
    end
  end
  return out
end

local function first_line(text)
  return (text or ""):match("^[^\n]*")
end

-- The documentation of a named thing: the docs table, else its comment.
local function doc_for(name, value)
  if name and M.docs[name] then return M.docs[name] end
  if type(value) == "function" then return (doc_comment(value)) end
  return nil
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

-- "  name  summary" lines for a table of functions / tables.
local function member_lines(prefix, t, sep, out)
  local named = names()
  for _, k in ipairs(sorted_keys(t)) do
    local v = t[k]
    if type(k) == "string" and k:sub(1, 1) ~= "_" then
      local name = prefix .. sep .. k
      local summary = first_line(doc_for(named[v] or name, v) or doc_for(name, v))
      if summary == "" then summary = type(v) end
      out[#out + 1] = string.format("  %-28s %s", k, summary)
    end
  end
end

--- help.text(x) → the help for x as text (help(x) prints it).
function M.text(x)
  if x == nil then
    return table.concat({
      "pio " .. tostring(pio_table().version) .. ": help(x) describes any pio value, e.g.",
      "  help(pio)            the library",
      "  help(pio.load)       a function",
      "  help(m)              a model, plugin, tensor, strategy or pipeline and its methods",
      "  help(pio.strategy)   strategies; help(pio.plugins), help(pio.memory), ...",
      "Tab completes names (pio.str<Tab>, m:<Tab>). Ctrl-D leaves.",
    }, "\n")
  end
  local named = names()
  local tname = type_name(x)
  local tx = type(x)
  if tx == "userdata" or (tx == "table" and tname and TYPES[tname]) then
    local out = { tostring(x), M.docs[tname] or (tname or tx) }
    local methods = methods_of(x)
    if tname == "pio.Decorated" then methods = nil end
    if methods then
      out[#out + 1] = "methods:"
      member_lines(tname, methods, ":", out)
    end
    return table.concat(out, "\n")
  end
  if tx == "function" then
    local name = named[x] or "function"
    if M.docs[name] then return M.docs[name] end
    local doc, params = doc_comment(x)
    return name .. (params or "(...)") .. "\n" .. (doc or "(no description)")
  end
  if tx == "table" then
    local name = named[x]
    local out = {}
    if name then
      local doc = M.docs[name]
      out[#out + 1] = doc or name
      local mt = getmetatable(x)
      if name:match("^pio%.strategy%.") and mt and mt.__index then
        for _, d in ipairs(pio_table().strategies()) do
          if "pio.strategy." .. d.family == name then
            local params = {}
            for _, p in ipairs(d.params) do params[#params + 1] = string.format("%s=%g", p.name, p.default) end
            out[#out + 1] = string.format("  %-20s %s%s", d.name .. (#params > 0 and "{" .. table.concat(params, ", ") .. "}" or "()"),
              d.summary, d.not_yet and (" [not yet: " .. d.not_yet .. "]") or "")
          end
        end
        return table.concat(out, "\n")
      end
      member_lines(name, x, name:match("^pio%.%u") and ":" or ".", out)
      return table.concat(out, "\n")
    end
    return M.pretty(x)
  end
  return string.format("%s: %s", tx, M.pretty(x))
end

--- help(x): prints what x is and what it offers (help() for an overview).
function M.help(x)
  print(M.text(x))
end

-- ---- readable printing --------------------------------------------------------------------

local function is_identifier(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil
end

local function render(v, indent, depth, seen)
  local t = type(v)
  if t == "string" then return string.format("%q", v) end
  if t ~= "table" or type_name(v) or (getmetatable(v) and getmetatable(v).__tostring) then
    return tostring(v)
  end
  if seen[v] then return "<cycle>" end
  if next(v) == nil then return "{}" end
  if depth <= 0 then return "{...}" end
  seen[v] = true
  local n = #v
  local parts = {}
  for i = 1, n do parts[#parts + 1] = render(v[i], indent .. "  ", depth - 1, seen) end
  for _, k in ipairs(sorted_keys(v)) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then
      local key = is_identifier(k) and k or ("[" .. render(k, "", 0, seen) .. "]")
      parts[#parts + 1] = key .. " = " .. render(v[k], indent .. "  ", depth - 1, seen)
    end
  end
  seen[v] = nil
  local flat = "{ " .. table.concat(parts, ", ") .. " }"
  if #flat + #indent <= 96 and not flat:find("\n", 1, true) then return flat end
  return "{\n" .. indent .. "  " .. table.concat(parts, ",\n" .. indent .. "  ") .. "\n" .. indent .. "}"
end

--- pretty(v, depth) → v as readable text: tables with sorted keys (nested to
-- depth, default 3), strings quoted, pio objects by their tostring.
function M.pretty(v, depth)
  return render(v, "", depth or 3, {})
end

--- show(...): prints each value readably (what the REPL does with results).
function M.show(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do
    local v = select(i, ...)
    parts[i] = type(v) == "string" and v or M.pretty(v)
  end
  if n > 0 then print(table.concat(parts, "\t")) end
end

-- ---- completion -----------------------------------------------------------------------------

local KEYWORDS = { "and", "break", "do", "else", "elseif", "end", "false", "for", "function",
                   "goto", "if", "in", "local", "nil", "not", "or", "repeat", "return", "then",
                   "true", "until", "while" }

-- Field names of a value: table keys, and for objects their methods.
local function fields(v, methods_only)
  local out = {}
  if type(v) == "table" and not methods_only then
    for k in pairs(v) do if is_identifier(k) then out[#out + 1] = k end end
  end
  local methods = methods_of(v)
  if methods then
    for k, f in pairs(methods) do
      if is_identifier(k) and (not methods_only or type(f) == "function") then out[#out + 1] = k end
    end
  end
  if methods_only and type(v) == "table" then
    for k, f in pairs(v) do if is_identifier(k) and type(f) == "function" then out[#out + 1] = k end end
  end
  local mt = getmetatable(v)
  if type(v) == "table" and mt and type(mt.__index) == "table" and mt.__index ~= methods then
    for k in pairs(mt.__index) do if is_identifier(k) then out[#out + 1] = k end end
  end
  return out
end

--- complete(word, env) → the completions of word (e.g. "pio.stra" →
-- { "pio.strategy" }, "m:ge" → { "m:generate" }), sorted, looking names up in
-- env (default _G). Nothing is called but __index.
function M.complete(word, env)
  env = env or _G
  local base, sep, partial = word:match("^(.-)([.:])([%w_]*)$")
  local candidates = {}
  if not base then -- a bare name: globals and keywords
    partial = word
    for k in pairs(env) do if is_identifier(k) then candidates[#candidates + 1] = k end end
    for _, k in ipairs(KEYWORDS) do candidates[#candidates + 1] = k end
    base, sep = "", ""
  else
    local v = env
    for name in base:gmatch("[^.]+") do
      if not is_identifier(name) then return {} end
      local ok, x = pcall(function() return v[name] end)
      if not ok or x == nil then return {} end
      v = x
    end
    if base:find(":", 1, true) then return {} end
    candidates = fields(v, sep == ":")
  end
  local seen, out = {}, {}
  for _, c in ipairs(candidates) do
    if not seen[c] and c:sub(1, #partial) == partial and (partial:sub(1, 1) == "_" or c:sub(1, 1) ~= "_") then
      seen[c] = true
      out[#out + 1] = base .. sep .. c
    end
  end
  table.sort(out)
  return out
end

return M
