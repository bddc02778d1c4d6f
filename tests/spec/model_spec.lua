-- pio.load and pio.Model: loading checkpoints, logits, generation, and every
-- kind of bad input giving a clear error while the process goes on.
local pio = require "pio"
local cjson = require "cjson"

local fixtures = os.getenv("PIO_FIXTURES") or "tests/fixtures"
local tiny = fixtures .. "/qwen3-gqa2"

-- ---- a hand-made checkpoint, so every corruption can be written on purpose ----

local tmp = os.tmpname()
os.remove(tmp)
assert(os.execute("mkdir -p " .. tmp))

local config = {
  architectures = { "Qwen3ForCausalLM" }, vocab_size = 16, hidden_size = 8,
  intermediate_size = 8, num_hidden_layers = 1, num_attention_heads = 2,
  num_key_value_heads = 1, head_dim = 4, max_position_embeddings = 32,
  rms_norm_eps = 1e-6, rope_theta = 10000.0, tie_word_embeddings = true,
}

local function tensors_of_tiny()
  local l = "model.layers.0."
  return {
    { "model.embed_tokens.weight", { 16, 8 } }, { l .. "input_layernorm.weight", { 8 } },
    { l .. "self_attn.q_proj.weight", { 8, 8 } }, { l .. "self_attn.k_proj.weight", { 4, 8 } },
    { l .. "self_attn.v_proj.weight", { 4, 8 } }, { l .. "self_attn.o_proj.weight", { 8, 8 } },
    { l .. "self_attn.q_norm.weight", { 4 } }, { l .. "self_attn.k_norm.weight", { 4 } },
    { l .. "post_attention_layernorm.weight", { 8 } }, { l .. "mlp.gate_proj.weight", { 8, 8 } },
    { l .. "mlp.up_proj.weight", { 8, 8 } }, { l .. "mlp.down_proj.weight", { 8, 8 } },
    { "model.norm.weight", { 8 } },
  }
end

-- Writes a safetensors file; `tamper(entries, header)` may change the header first.
local function write_checkpoint(dir, tensors, tamper)
  os.execute("mkdir -p " .. dir)
  local f = assert(io.open(dir .. "/config.json", "w"))
  f:write(cjson.encode(config))
  f:close()
  local header, data, offset = {}, {}, 0
  for _, t in ipairs(tensors) do
    local n = 1
    for _, d in ipairs(t[2]) do n = n * d end
    header[t[1]] = { dtype = "F32", shape = t[2], data_offsets = { offset, offset + 4 * n } }
    for i = 1, n do data[#data + 1] = string.pack("<f", 0.01 * ((i % 7) - 3)) end
    offset = offset + 4 * n
  end
  if tamper then tamper(header) end
  local json = cjson.encode(header)
  json = json .. string.rep(" ", (8 - #json % 8) % 8)
  f = assert(io.open(dir .. "/model.safetensors", "wb"))
  f:write(string.pack("<I8", #json), json, table.concat(data))
  f:close()
  return dir
end

local function file_size(path)
  local f = assert(io.open(path, "rb"))
  local n = f:seek("end")
  f:close()
  return n
end

describe("pio.load #qwen3", function()
  it("loads a hand-made checkpoint", function()
    local m = assert(pio.load(write_checkpoint(tmp .. "/ok", tensors_of_tiny()), { dtype = "f32" }))
    assert.same({ 3, 16 }, m:logits({ 1, 2, 3 }):shape())
    local info = m:info()
    assert.equal("Qwen3ForCausalLM", info.architecture)
    assert.equal("f32", info.dtype)
    assert.equal("cpu", info.device)
    assert.equal(1, info.n_layer)
    assert.is_true(info.weight_bytes > 0 and info.kv_bytes > 0)
  end)

  it("loads the shipped fixture with its tokenizer", function()
    local m = assert(pio.load(tiny, { dtype = "bf16", threads = 2 }))
    assert.equal("bf16", m:info().dtype)
    assert.equal(2, m:info().threads)
    assert.truthy(m.tokenizer)
    assert.equal(m.tokenizer, m.tokenizer)
    assert.matches("^pio.Model%(Qwen3ForCausalLM, bf16, cpu, %d+ layers%)$", tostring(m))
  end)

  it("builds a synthetic model from config.json alone, deterministically", function()
    local cfg = write_checkpoint(tmp .. "/synth", {}) .. "/config.json"
    local a = assert(pio.load(cfg, { synthetic = true, seed = 3, dtype = "f32" }))
    local b = assert(pio.load(cfg, { synthetic = true, seed = 3, dtype = "f32" }))
    assert.same(a:logits({ 1, 2 }):table(), b:logits({ 1, 2 }):table())
    assert.is_nil(a.tokenizer)
  end)

  it("returns nil and a message for a missing directory", function()
    local m, err = pio.load(tmp .. "/nope")
    assert.is_nil(m)
    assert.equal("model directory '" .. tmp .. "/nope' does not exist", err)
  end)

  it("returns nil and a message for a config without architectures", function()
    local dir = tmp .. "/noarch"
    os.execute("mkdir -p " .. dir)
    local f = assert(io.open(dir .. "/config.json", "w"))
    f:write('{"hidden_size": 8}')
    f:close()
    local m, err = pio.load(dir)
    assert.is_nil(m)
    assert.matches("has no 'architectures' list", err, 1, true)
  end)

  it("lists the supported architectures for an unknown one", function()
    local dir = tmp .. "/llama"
    os.execute("mkdir -p " .. dir)
    local f = assert(io.open(dir .. "/config.json", "w"))
    f:write('{"architectures": ["LlamaForCausalLM"]}')
    f:close()
    local m, err = pio.load(dir)
    assert.is_nil(m)
    assert.equal("unsupported architecture 'LlamaForCausalLM' (supported: Qwen3ForCausalLM, Qwen3MoeForCausalLM)", err)
  end)

  it("names a missing tensor", function()
    local ts = tensors_of_tiny()
    table.remove(ts) -- model.norm.weight
    local dir = write_checkpoint(tmp .. "/missing", ts)
    local m, err = pio.load(dir)
    assert.is_nil(m)
    assert.matches("missing tensor 'model.norm.weight'", err, 1, true)
  end)

  it("names a tensor whose shape disagrees with config.json", function()
    local dir = write_checkpoint(tmp .. "/shape", tensors_of_tiny(), function(h)
      h["model.layers.0.self_attn.q_proj.weight"].shape = { 4, 16 }
    end)
    local m, err = pio.load(dir)
    assert.is_nil(m)
    assert.matches("tensor 'model.layers.0.self_attn.q_proj.weight' has shape [4, 16] in the checkpoint but config.json implies [8, 8]", err, 1, true)
  end)

  it("rejects a truncated file", function()
    local dir = write_checkpoint(tmp .. "/trunc", tensors_of_tiny())
    local path = dir .. "/model.safetensors"
    assert(os.execute(string.format("truncate -s %d %s", file_size(path) - 100, path)))
    local m, err = pio.load(dir)
    assert.is_nil(m)
    assert.matches("model.safetensors", err, 1, true)
  end)

  it("rejects a header length beyond the file", function()
    local dir = write_checkpoint(tmp .. "/hdr", tensors_of_tiny())
    local path = dir .. "/model.safetensors"
    local f = assert(io.open(path, "r+b"))
    f:write(string.pack("<I8", 1 << 40))
    f:close()
    local m, err = pio.load(dir)
    assert.is_nil(m)
    assert.matches("header length", err, 1, true)
  end)

  it("rejects overlapping tensors, naming both", function()
    local dir = write_checkpoint(tmp .. "/overlap", tensors_of_tiny(), function(h)
      h["model.norm.weight"].data_offsets = h["model.layers.0.input_layernorm.weight"].data_offsets
    end)
    local m, err = pio.load(dir)
    assert.is_nil(m)
    assert.matches("overlap", err, 1, true)
    assert.matches("model.norm.weight", err, 1, true)
  end)

  it("rejects a dtype or shape that disagrees with the bytes", function()
    local dir = write_checkpoint(tmp .. "/bytes", tensors_of_tiny(), function(h)
      h["model.norm.weight"].dtype = "BF16"
    end)
    local m, err = pio.load(dir)
    assert.is_nil(m)
    assert.matches("model.norm.weight", err, 1, true)
  end)

  it("rejects unknown options and bad option values", function()
    assert.has_error(function() pio.load(tiny, { dtpye = "f32" }) end,
      "pio.load: unknown option 'dtpye' (known: dtype, device, threads, ctx, max_seqs, synthetic, seed, progress, max_bytes, kv)")
    assert.has_error(function() pio.load(tiny, { dtype = "f16" }) end,
      "pio.load: dtype must be 'f32' or 'bf16', got 'f16'")
    assert.has_error(function() pio.load(tiny, { device = "tpu" }) end,
      "pio.load: device must be 'cpu', 'cuda' or 'auto', got 'tpu'")
  end)

  it("names the caller's line in misuse errors, not the library's", function()
    local ok, err = pcall(function() pio.load(tiny, { kv = { lay = "paged" } }) end)
    assert.is_false(ok)
    assert.matches("model_spec%.lua:%d+: pio%.load: kv: unknown option 'lay'", err)
    assert.is_nil(err:find("memory.lua", 1, true))
    ok, err = pcall(function()
      local s = pio.strategy.attention.sink { sink = 4, window = -1 } -- not a tail call
      return s
    end)
    assert.is_false(ok)
    assert.matches("model_spec%.lua:%d+: attention%.sink: window must be", err)
  end)

  it("says so when CUDA is asked for and not available", function()
    local _, available, why = pio.model_device("cuda")
    if available then return pending("a GPU is present: tests/spec/cuda_spec.lua runs there") end
    local m, err = pio.load(tiny, { device = "cuda" })
    assert.is_nil(m)
    if pio.cuda_built then -- the driver's answer, e.g. "no NVIDIA driver is loaded (...)"
      assert.equal("device 'cuda' is not available: " .. why, err)
      assert.matches("^device 'cuda' is not available: cuda: no usable GPU: .+", err)
    else
      assert.equal("device 'cuda' is not available: this pio was built without its backend", err)
    end
  end)
end)

describe("pio.Model #qwen3", function()
  local m
  setup(function() m = assert(pio.load(tiny, { dtype = "f32" })) end)

  it("logits gives one row per id", function()
    local l = m:logits({ 1, 2, 3, 4 })
    assert.same({ 4, m:info().n_vocab }, l:shape())
  end)

  it("rejects ids outside the vocabulary", function()
    local v = m:info().n_vocab
    assert.has_error(function() m:logits({ 1, v }) end,
      string.format("token id %d at batch index 1 is outside the vocabulary [0, %d)", v, v))
    assert.has_error(function() m:logits({ 1, "x" }) end,
      "bad token id at index 2 (an integer expected, got string)")
  end)

  it("rejects a prompt longer than the context", function()
    local ids = {}
    for i = 1, m:info().n_ctx + 1 do ids[i] = 1 end
    local n = #ids
    assert.has_error(function() m:generate(ids, { max_new_tokens = 1 }) end,
      string.format("the prompt has %d tokens but the context holds %d (load with a larger ctx, up to %d)",
        n, m:info().n_ctx, m:info().n_ctx_train))
    assert.has_error(function() m:logits(ids) end)
    -- the model still works afterwards
    assert.same({ 1, m:info().n_vocab }, m:logits({ 1 }):shape())
  end)

  it("generate is greedy at temperature 0 and matches logits' argmax", function()
    local text, stats = m:generate({ 5, 6, 7 }, { max_new_tokens = 4, temperature = 0 })
    assert.equal("string", type(text))
    assert.equal(4, #stats.tokens)
    assert.equal(3, stats.prompt_tokens)
    assert.equal("length", stats.stop_reason)
    local row = m:logits({ 5, 6, 7 }):table()[3]
    local best = 1
    for i = 2, #row do if row[i] > row[best] then best = i end end
    assert.equal(best - 1, stats.tokens[1])
  end)

  it("the same seed gives the same tokens; stream pieces add up to generate's text", function()
    local opts = { max_new_tokens = 12, temperature = 1.0, top_k = 40, seed = 9, ignore_eos = true }
    local t1, s1 = m:generate("The quick brown fox", opts)
    local t2, s2 = m:generate("The quick brown fox", opts)
    assert.equal(t1, t2)
    assert.same(s1.tokens, s2.tokens)
    local pieces = {}
    for piece in m:stream("The quick brown fox", opts) do pieces[#pieces + 1] = piece end
    assert.equal(t1, table.concat(pieces))
    assert.same(s1.tokens, m:last_stats().tokens)
  end)

  it("stops at a stop string without emitting it", function()
    local opts = { max_new_tokens = 24, temperature = 0, ignore_eos = true }
    local full = m:generate("Hello", opts)
    if #full < 4 then return end
    local stop = full:sub(3, 4)
    opts.stop = stop
    local cut, stats = m:generate("Hello", opts)
    assert.equal(full:sub(1, full:find(stop, 1, true) - 1), cut)
    assert.equal("stop", stats.stop_reason)
  end)

  it("never samples the padding rows past the tokenizer's vocabulary", function()
    local n_tok = m.tokenizer:n_vocab()
    assert.is_true(m:info().n_vocab > n_tok)
    local _, stats = m:generate("x", { max_new_tokens = 64, temperature = 50, seed = 1, ignore_eos = true })
    assert.equal(64, #stats.tokens)
    for _, id in ipairs(stats.tokens) do assert.is_true(id < n_tok) end
  end)

  it("rejects unknown generation options", function()
    assert.has_error(function() m:generate("Hi", { max_tokens = 3 }) end,
      "generate: unknown option 'max_tokens' (known: max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty, penalty_last_n, seed, stop, ignore_eos)")
  end)
end)

teardown(function() os.execute("rm -rf " .. tmp) end)
