-- The model on the GPU (busted tag gpu): the Qwen3 parity checks of
-- tests/qwen3_parity.lua with device = "cuda" (f32 within 1e-4 x max|logit| of
-- transformers and the same greedy tokens; bf16 top-1 and max|dlogit| bounds as
-- on the CPU), plus what a GPU model must do besides: report its device, be
-- what "auto" picks, refuse bad input and stay usable, refuse what it cannot
-- do yet with a message. Without a usable GPU every test here is pending with
-- the reason (the op-by-op checks are tests/c/test-cuda-ops.c, ctest label gpu).
local pio = require "pio"

local FIXTURES = os.getenv("PIO_FIXTURES") or "tests/fixtures"
local _, available, why = pio.model_device("cuda")

if not available then
  describe("pio on CUDA #gpu", function()
    it("needs a usable GPU", function() pending("no GPU: " .. tostring(why)) end)
  end)
  return
end

assert(loadfile("tests/qwen3_parity.lua", "t", _ENV))()("cuda", " #gpu")

describe("a model on CUDA #gpu", function()
  local dir = FIXTURES .. "/qwen3-gqa2"
  local m

  lazy_setup(function() m = assert(pio.load(dir, { dtype = "bf16", device = "cuda" })) end)
  lazy_teardown(function() if m then m:free() end end)

  it("says where it runs, and auto picks the GPU", function()
    assert.equal("cuda", m:info().device)
    assert.equal("cuda", (pio.model_device("auto")))
  end)

  it("refuses a token outside the vocabulary and keeps working", function()
    local vocab = m:info().n_vocab
    assert.has_error(function() m:logits({ 1, vocab }) end)
    local t = m:logits({ 1, 2, 3 })
    assert.same({ 3, vocab }, t:shape())
  end)

  it("refuses a prompt longer than the context", function()
    local small = assert(pio.load(dir, { dtype = "bf16", device = "cuda", ctx = 8 }))
    local ids = {}
    for i = 1, 9 do ids[i] = i end
    local ok, err = pcall(function() return small:logits(ids) end)
    assert.is_false(ok)
    assert.matches("context", tostring(err))
    small:free()
  end)

  it("decodes one token at a time (a replayed CUDA graph) as the prompt path computes", function()
    local f32 = assert(pio.load(dir, { dtype = "f32", device = "cuda" }))
    local prompt = { 5, 17, 42, 7, 99, 3 }
    local _, stats = f32:generate(prompt, { max_new_tokens = 16, temperature = 0 })
    local all = {}
    for _, id in ipairs(prompt) do all[#all + 1] = id end
    for _, id in ipairs(stats.tokens) do all[#all + 1] = id end
    local rows = f32:logits(all):table()
    for i, id in ipairs(stats.tokens) do
      local row, best, at = rows[#prompt + i - 1], -math.huge, -1
      for j = 1, #row do if row[j] > best then best, at = row[j], j - 1 end end
      assert.equal(at, id, "generated token " .. i)
    end
    f32:free()
  end)

  it("re-captures its decode graph when a longer prompt grows the buffers", function()
    local f32 = assert(pio.load(dir, { dtype = "f32", device = "cuda" }))
    local short, long = { 5, 17 }, {}
    for i = 1, 40 do long[i] = (i * 13) % f32:info().n_vocab end
    f32:generate(short, { max_new_tokens = 8, temperature = 0 }) -- graph captured on small buffers
    local _, after = f32:generate(long, { max_new_tokens = 8, temperature = 0 })
    f32:free()
    local fresh = assert(pio.load(dir, { dtype = "f32", device = "cuda" }))
    local _, alone = fresh:generate(long, { max_new_tokens = 8, temperature = 0 })
    fresh:free()
    assert.same(alone.tokens, after.tokens)
  end)

  it("refuses surgery and saving with a message", function()
    assert.has_error(function() pio.surgery.apply(m, { fuse = { "qkv" } }) end)
    local ok, err = pcall(function() return m:save(os.tmpname()) end)
    assert.is_false(ok and err == nil)
  end)
end)

-- Qwen3-MoE on the GPU: the checks of tests/qwen3_moe_parity.lua with device "cuda". The
-- fixtures' prompts (1-60 tokens: up to 240 token-expert pairs) and decode steps take the
-- device path (grouped expert kernel, no host round trip); the prompt below the grouped
-- cuBLAS path.
assert(loadfile("tests/qwen3_moe_parity.lua", "t", _ENV))()("cuda", " #gpu")

describe("qwen3-moe on cuda, long prompts #gpu #qwen3_moe", function()
  it("a prompt of over 256 token-expert pairs (per-expert cuBLAS products) matches the CPU in f32", function()
    local dir = FIXTURES .. "/qwen3-moe-e16k4"
    local gpu = assert(pio.load(dir, { dtype = "f32", device = "cuda" }))
    local cpu = assert(pio.load(dir, { dtype = "f32", device = "cpu" }))
    local ids = {}
    for i = 1, 100 do ids[i] = (i * 37) % gpu:info().n_vocab end -- 100 tokens x top-4 = 400 pairs
    local a, b = gpu:logits(ids):table(), cpu:logits(ids):table()
    local d, big = 0, 0
    for r = 1, #b do
      for c = 1, #b[r] do
        d = math.max(d, math.abs(a[r][c] - b[r][c]))
        big = math.max(big, math.abs(b[r][c]))
      end
    end
    if os.getenv("PIO_VERBOSE") then
      io.stderr:write(("moe e16k4 100-token prompt cuda vs cpu f32: max|d| %.3g = %.3g x max|logit|\n"):format(d, d / big))
    end
    assert(d <= 1e-4 * big, ("max|dlogit| %.3g > 1e-4 x %.3g"):format(d, big))
    gpu:free()
    cpu:free()
  end)
end)
