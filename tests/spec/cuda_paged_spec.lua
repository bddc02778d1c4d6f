-- The paged KV cache on the GPU (busted tag gpu): on the Qwen3 fixtures loaded with
-- device = "cuda", the paged cache (16-position blocks, prefix caching) gives the
-- contiguous cache's logits (the same kernels through block tables: equal, held to 1e-6
-- of the largest logit) and greedy tokens in f32 and bf16; a prompt sharing a cached
-- prefix attaches its blocks and generates the same; the scheduler preempting by
-- recompute and by swap to host memory gives every prompt its text alone; running out of
-- blocks is the CPU's message; checkpoints round-trip between the layouts and devices.
-- The op-level checks (scattered tables, every attention path, copies) are
-- tests/c/test-cuda-paged.c. Without a usable GPU the gpu part is pending with the
-- reason; what the strategy table says about cuda is checked everywhere.
local pio = require "pio"
local S = pio.strategy
local U = loadfile("tests/parity_util.lua", "t", _ENV)()

local FIXTURES = os.getenv("PIO_FIXTURES") or "tests/fixtures"
local VERBOSE = os.getenv("PIO_VERBOSE") ~= nil

describe("KV strategies for a model on cuda", function()
  local gpu = { device = "cuda", available = true, count = 1 }

  it("the paged cache and prefix caching are supported there", function()
    assert.is_true(S.kv.paged():supports({}, gpu))
    assert.is_true(S.kv.paged { block = 8 }:supports({}, gpu))
    assert.is_true(S.kv.prefix():supports({}, gpu))
  end)

  it("int8 KV and windowed attention say they run on the CPU only", function()
    local function no(s, reason)
      local ok, why = s:supports({}, gpu)
      assert.is_false(ok, tostring(s))
      assert.equal(reason, why)
    end
    no(S.kv.int8(), "kv.int8 runs on the CPU only for now (the model is on 'cuda')")
    no(S.attention.sliding { window = 8 }, "attention.sliding runs on the CPU only for now (the model is on 'cuda')")
    no(S.attention.sink { sink = 4, window = 8 }, "attention.sink runs on the CPU only for now (the model is on 'cuda')")
  end)
end)

local _, available, why = pio.model_device("cuda")
if not available then
  describe("the paged KV cache on CUDA #gpu", function()
    it("needs a usable GPU", function() pending("no GPU: " .. tostring(why)) end)
  end)
  return
end

local PAGED = { layout = "paged", block = 16, prefix = true }

local function load(name, dtype, kv, extra)
  local opts = { dtype = dtype, device = "cuda", kv = kv }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return assert(pio.load(FIXTURES .. "/" .. name, opts))
end

-- Made-up prompts over the fixture's vocabulary.
local function ids(n, salt, vocab)
  local out = {}
  for i = 1, n do out[i] = (i * 37 + salt * 101) % vocab end
  return out
end

local function concat(a, b)
  local out = {}
  for i, v in ipairs(a) do out[i] = v end
  for _, v in ipairs(b) do out[#out + 1] = v end
  return out
end

-- max|a - b| and max|b| over two logits tables (rows of the same shape).
local function max_diff(a, b)
  assert.equal(#b, #a)
  local d, big, differ = 0, 0, 0
  for r = 1, #b do
    for c = 1, #b[r] do
      local x = math.abs(a[r][c] - b[r][c])
      if x > 0 then differ = differ + 1 end
      d = math.max(d, x)
      big = math.max(big, math.abs(b[r][c]))
    end
  end
  return d, big, differ
end

local GREEDY = { max_new_tokens = 40, temperature = 0, ignore_eos = true }

-- The message of a call that fails, raised or returned as nil, message (nil if it worked).
local function failure(fn, ...)
  local r = table.pack(pcall(fn, ...))
  if not r[1] then return tostring(r[2]) end
  if r[2] == nil then return tostring(r[3]) end
  return nil
end

for _, name in ipairs { "qwen3-gqa1", "qwen3-gqa4" } do
  for _, dtype in ipairs { "f32", "bf16" } do
    describe(("paged KV on cuda: %s %s #gpu #qwen3"):format(name, dtype), function()
      local plain, paged, vocab

      lazy_setup(function()
        plain = load(name, dtype)
        paged = load(name, dtype, PAGED)
        vocab = plain:info().n_vocab
      end)
      lazy_teardown(function()
        if plain then plain:free() end
        if paged then paged:free() end
      end)

      it("reports the paged cache in the model's dtype", function()
        local st = paged:kv_stats()
        assert.same({ "paged", 16, dtype, true, 128 // 16 },
                    { st.layout, st.block_size, st.format, st.prefix, st.blocks_total })
        assert.equal("cuda", paged:info().device)
      end)

      it("gives the contiguous cache's logits for a prompt", function()
        local p = ids(45, 1, vocab) -- three blocks, the last one partly filled
        local d, big, differ = max_diff(paged:logits(p):table(), plain:logits(p):table())
        if VERBOSE then
          io.stderr:write(("%s %s prompt: max|d| %.3g of max|logit| %.3g, %d values differ\n")
            :format(name, dtype, d, big, differ))
        end
        assert(d <= 1e-6 * big, ("max|dlogit| %.3g > 1e-6 x %.3g"):format(d, big))
      end)

      it("decodes the contiguous cache's greedy tokens (a replayed graph over block tables)", function()
        local p = ids(13, 2, vocab)
        local _, want = plain:generate(p, GREEDY)
        local _, got = paged:generate(p, GREEDY) -- 13 + 40 positions: four blocks
        assert.same(want.tokens, got.tokens)
        -- and every decode step's logits: the whole sequence as one prompt on both
        local all = concat(p, got.tokens)
        local d, big = max_diff(paged:logits(all):table(), plain:logits(all):table())
        assert(d <= 1e-6 * big, ("max|dlogit| %.3g > 1e-6 x %.3g"):format(d, big))
      end)

      it("reuses a cached prefix and generates what the contiguous cache does", function()
        local system = ids(40, 3, vocab) -- two full blocks to share
        local before = paged:kv_stats()
        local first = concat(system, ids(5, 4, vocab))
        local second = concat(system, ids(7, 5, vocab))
        local _, a = paged:generate(first, { max_new_tokens = 8, temperature = 0, ignore_eos = true })
        local _, b = paged:generate(second, { max_new_tokens = 8, temperature = 0, ignore_eos = true })
        local st = paged:kv_stats()
        assert.is_true(st.prefix_hits > before.prefix_hits)
        assert.is_true(st.tokens_reused - before.tokens_reused >= 32)
        local _, wa = plain:generate(first, { max_new_tokens = 8, temperature = 0, ignore_eos = true })
        local _, wb = plain:generate(second, { max_new_tokens = 8, temperature = 0, ignore_eos = true })
        assert.same(wa.tokens, a.tokens)
        assert.same(wb.tokens, b.tokens)
      end)
    end)
  end
end

describe("paged KV on cuda: configuring, the scheduler, checkpoints #gpu #qwen3", function()
  local tiny = "qwen3-gqa2"

  local PROMPTS = {
    "Hello", "The quick brown fox jumps over the lazy dog", "a",
    "Once upon a time there was a model that", "x y z", "one two three four five six seven eight",
    "hi there", { { role = "user", content = "What is two plus two?" } },
  }
  local STEPS = { max_tokens = 10, temperature = 0, ignore_eos = true }

  it("model:use switches a loaded model to paged + prefix and back, and generates the same", function()
    local m = load(tiny, "f32", nil, { max_seqs = 2 })
    local p = ids(30, 6, m:info().n_vocab)
    local _, want = m:generate(p, GREEDY)
    m:seq_free(0)
    m:use(S.kv.paged { block = 8 }, S.kv.prefix())
    local st = m:kv_stats()
    assert.same({ "paged", 8, 2 * 128 // 8, true }, { st.layout, st.block_size, st.blocks_total, st.prefix })
    local _, got = m:generate(p, GREEDY)
    assert.same(want.tokens, got.tokens)
    local _, again = m:generate(p, GREEDY) -- from the cached prefix
    assert.same(want.tokens, again.tokens)
    assert.equal(1, m:kv_stats().prefix_hits)
    m:seq_free(0)
    m:use(S.kv.contiguous())
    assert.equal("contiguous", m:kv_stats().layout)
    local _, back = m:generate(p, GREEDY)
    assert.same(want.tokens, back.tokens)
    m:seq_free(0)
    assert.matches("kv.int8 runs on the CPU only for now (the model is on 'cuda')",
      failure(m.use, m, S.kv.int8()), 1, true)
    assert.matches("kv: int8 KV runs on the CPU only for now (the model is on 'cuda')",
      failure(m.kv_configure, m, { format = "int8" }), 1, true)
    assert.matches("kv: sliding attention runs on the CPU only for now (the model is on 'cuda')",
      failure(m.kv_configure, m, { layout = "paged", attention = "sliding", window = 8 }), 1, true)
    assert.equal("contiguous", m:kv_stats().layout) -- left as it was
    m:free()
  end)

  it("preempts by recompute and by swap on a small pool: every text is the one alone", function()
    local m = load(tiny, "f32", nil, { max_seqs = 4 })
    local want = {}
    for i, p in ipairs(PROMPTS) do
      want[i] = m:generate(p, { max_new_tokens = 10, temperature = 0, ignore_eos = true })
    end
    m:seq_free(0)
    -- 12 blocks of 4 positions: not enough for four sequences of up to ~40 positions.
    m:kv_configure { layout = "paged", block = 4, blocks = 12 }
    local stats = U.preemption_runs(m, PROMPTS, STEPS, want, { max_tokens = 16, max_batch = 4 })
    local rc, sw = stats.recompute, stats.swap
    assert.is_true(rc.preemptions > 0 and sw.preemptions > 0)
    assert.is_true(sw.swaps_out > 0 and sw.swaps_in == sw.swaps_out)
    assert.equal(sw.swapped_out_bytes, sw.swapped_in_bytes)
    assert.is_true(sw.prompt_tokens < rc.prompt_tokens)
    -- out of blocks: the CPU's message
    assert.is_true(m:seq_reserve(1, 40))
    local ok, msg = m:seq_reserve(2, 40)
    assert.is_nil(ok)
    assert.matches("out of KV blocks: need 10, free 2 (sequence 2, 40 positions; the pool has 12 blocks of 4)",
      msg, 1, true)
    m:seq_free(1)
    m:free()
  end)

  it("a generation that outgrows the pool fails with the CPU's message, and the model goes on", function()
    local m = load(tiny, "f32", { layout = "paged", block = 4, blocks = 3 })
    local vocab = m:info().n_vocab
    assert.matches("out of KV blocks: need 5, free 3 (sequence 0, 20 positions; the pool has 3 blocks of 4)",
      failure(m.generate, m, ids(20, 7, vocab), { max_new_tokens = 4, temperature = 0 }), 1, true)
    m:seq_free(0)
    local _, st = m:generate(ids(6, 8, vocab), { max_new_tokens = 4, temperature = 0, ignore_eos = true })
    assert.equal(4, #st.tokens)
    m:free()
  end)

  it("checkpoints a paged sequence and loads it into a contiguous and a CPU model", function()
    local a = load(tiny, "bf16", PAGED)
    local p = ids(37, 9, a:info().n_vocab)
    a:logits(p)
    local path, path2 = os.tmpname(), os.tmpname()
    assert.is_true(a:save_sequence(0, path))
    local b = load(tiny, "bf16")
    assert.equal(37, b:load_sequence(0, path))
    assert.is_true(b:save_sequence(0, path2))
    local function bytes(f)
      local h = assert(io.open(f, "rb"))
      local s = h:read("a")
      h:close()
      return s
    end
    assert.equal(bytes(path), bytes(path2)) -- the same rows back out of the other layout
    local c = assert(pio.load(FIXTURES .. "/" .. tiny, { dtype = "bf16", device = "cpu", threads = 2 }))
    assert.equal(37, c:load_sequence(0, path))
    a:free()
    b:free()
    c:free()
    os.remove(path)
    os.remove(path2)
  end)
end)
