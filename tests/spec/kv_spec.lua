-- The KV cache strategies from Lua: model:use applies them (models/kv.c),
-- model:info() and model:kv_stats() report them, checkpoints round-trip.
local pio = require "pio"
local S = pio.strategy
local fixture = "tests/fixtures/qwen3-gqa2"

describe("KV strategies #qwen3", function()
  local m
  before_each(function() m = assert(pio.load(fixture, { dtype = "f32", threads = 2, max_seqs = 2 })) end)
  after_each(function() m:free() end)

  it("paged, prefix and int8 compose and are reported", function()
    local ids = m.tokenizer:encode("The quick brown fox jumps over the lazy dog, again and again and again.")
    local want = m:generate(ids, { max_new_tokens = 8, temperature = 0, ignore_eos = true })
    m:use(S.kv.paged { block = 8 }, S.kv.prefix())
    local info = m:info()
    assert.same({ layout = "paged", format = "f32", attention = "full", block_size = 8,
                  blocks = 2 * 128 // 8, bytes = info.kv_bytes, prefix = true }, info.kv)
    assert.equal(want, m:generate(ids, { max_new_tokens = 8, temperature = 0, ignore_eos = true }))
    assert.equal(want, m:generate(ids, { max_new_tokens = 8, temperature = 0, ignore_eos = true }))
    local st = m:kv_stats()
    assert.equal(1, st.prefix_hits)
    assert.equal(1, st.prefix_misses)
    assert.is_true(st.tokens_reused > 0 and st.tokens_reused % 8 == 0)
    m:seq_free(0)
    m:use(S.kv.int8())
    assert.equal("int8", m:kv_stats().format)
    assert.equal("paged", m:kv_stats().layout) -- int8 joins paged + prefix
    assert.is_true(m:info().kv_bytes < info.kv_bytes)
    m:use(S.kv.contiguous())
    assert.same("contiguous", m:kv_stats().layout)
  end)

  it("sink attention runs past the context on the paged cache", function()
    m:use(S.kv.paged { block = 4 }, S.attention.sink { sink = 4, window = 16 })
    local text, stats = m:generate({ 1, 2, 3 }, { max_new_tokens = 200, temperature = 0, ignore_eos = true })
    assert.equal(200, stats.new_tokens) -- ctx is 128
    assert.is_true(m:kv_stats().blocks_used <= 7)
  end)

  it("checkpoints a sequence and refuses another format", function()
    local path = os.tmpname()
    local ids = { 5, 6, 7, 8, 9, 10, 11, 12 }
    m:logits(ids)
    assert.is_true(m:save_sequence(0, path))
    local other = assert(pio.load(fixture, { dtype = "f32", threads = 2 }))
    assert.equal(8, other:load_sequence(0, path))
    other:use(S.kv.int8())
    local ok, why = other:load_sequence(0, path)
    assert.is_nil(ok)
    assert.matches("holds f32 KV, this model's cache is int8", why, 1, true)
    other:free()
    os.remove(path)
  end)

  it("rejects bad input naming the problem", function()
    assert.has_error(function() S.kv.paged { block = 0 } end,
      "kv.paged: block must be an integer in [1, 4096], got 0")
    assert.has_error(function() S.attention.sliding { window = -1 } end,
      "attention.sliding: window must be an integer in [1, 1e+09], got -1")
    assert.has_error(function() m:kv_configure { layout = "ring" } end,
      "model:kv_configure: unknown layout 'ring' (known: contiguous, paged)")
    assert.has_error(function() m:kv_configure { colour = 1 } end)
    assert.has_error(function() m:kv_configure { attention = "sliding", window = 0 } end,
      "model:kv_configure: window must be an integer in [1, 2147483647], got 0")
    m:logits({ 1, 2, 3 })
    assert.has_error(function() m:kv_configure { layout = "paged" } end,
      "kv: sequence 0 holds 3 positions; free every sequence before reconfiguring the cache")
  end)
end)

describe("pio.load's kv option #qwen3", function()
  local ids = { 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21 }
  local greedy = { max_new_tokens = 8, temperature = 0, ignore_eos = true }

  it("loads with the cache chosen, generates what the default cache does, and reports it", function()
    local plain = assert(pio.load(fixture, { dtype = "f32", threads = 2 }))
    local _, want = plain:generate(ids, greedy)
    local want_bytes = plain:info().kv_bytes
    plain:free()
    local m = assert(pio.load(fixture, { dtype = "f32", threads = 2, max_seqs = 2,
      kv = { layout = "paged", block = 8, blocks = 20, format = "bf16", prefix = true } }))
    local st = m:kv_stats()
    assert.same({ "paged", 8, 20, "bf16", true },
                { st.layout, st.block_size, st.blocks_total, st.format, st.prefix })
    -- bf16 K/V: half of f32's per position; 20 blocks of 8 positions
    assert.equal(20 * 8 * want_bytes // 128 // 2, m:info().kv_bytes)
    local names = table.concat(m:info().strategies, " ")
    assert.is_truthy(names:find("kv.paged{block=8}", 1, true), names)
    assert.is_truthy(names:find("kv.prefix", 1, true), names)
    local _, got = m:generate(ids, greedy)
    assert.equal(#want.tokens, #got.tokens)
    -- strategies compose on top of what the load chose: int8 keeps paged, block 8, prefix
    m:use(S.kv.int8())
    st = m:kv_stats()
    assert.same({ "paged", 8, 20, "int8", true },
                { st.layout, st.block_size, st.blocks_total, st.format, st.prefix })
    m:free()

    local f = assert(pio.load(fixture, { dtype = "f32", threads = 2, kv = { format = "f32" } }))
    assert.equal(want_bytes, f:info().kv_bytes) -- the model's own dtype: the default cache
    local _, same = f:generate(ids, greedy)
    assert.same(want.tokens, same.tokens)
    f:free()
    local w = assert(pio.load(fixture, { dtype = "f32", threads = 2,
      kv = { layout = "paged", block = 4, attention = "sink", sink = 4, window = 8 } }))
    assert.same({ "sink", 8, 4 }, { w:kv_stats().attention, w:kv_stats().window, w:kv_stats().sink })
    assert.same({ 8, 8, 8 }, w:info().layer_windows)
    w:free()
  end)

  it("pio.estimate counts the cache the kv option asks for", function()
    local full = assert(pio.estimate(fixture, { dtype = "f32" }))
    local int8 = assert(pio.estimate(fixture, { dtype = "f32", kv = { format = "int8" } }))
    local paged = assert(pio.estimate(fixture, { dtype = "f32", kv = { layout = "paged", blocks = 4 } }))
    -- int8: one byte per element plus an f32 scale per (position, head) for K and for V
    local hd = full.head_dim
    assert.equal(full.kv * (hd + 4) // (4 * hd), int8.kv)
    assert.equal(full.kv * 4 * 16 // 128, paged.kv)
    local m = assert(pio.load(fixture, { dtype = "f32", threads = 2, kv = { format = "int8" } }))
    assert.equal(int8.kv, m:info().kv_bytes)
    m:free()
  end)

  it("model:use refuses to grow the cache past the memory budget, with the numbers", function()
    local m = assert(pio.load(fixture, { dtype = "f32", threads = 2, device = "cpu",
      kv = { layout = "paged", blocks = 2 } }))
    local info = m:info()
    assert.equal(1000 * info.kv_bytes, m:kv_bytes { layout = "paged", block = 16, blocks = 2000 })
    local budget = info.weight_bytes + info.activation_bytes + 2 * info.kv_bytes
    pio.memory.budget { device = "cpu", bytes = budget }
    local ok, err = pcall(m.use, m, S.kv.paged { block = 32 }) -- a new block size: room for a context
    pio.memory.clear("cpu")
    assert.is_false(ok)
    assert.matches("model:use: the KV cache would grow from " .. pio.memory.format_bytes(info.kv_bytes)
      .. " to " .. pio.memory.format_bytes(info.kv_bytes * 4), err, 1, true)
    assert.matches("but the cpu budget (" .. pio.memory.format_bytes(budget) .. ") has "
      .. pio.memory.format_bytes(info.kv_bytes) .. " free", err, 1, true)
    assert.equal(info.kv_bytes, m:info().kv_bytes) -- unchanged
    pio.memory.budget { device = "cpu", bytes = budget }
    m:use(S.kv.int8()) -- a smaller cache fits
    pio.memory.clear("cpu")
    assert.is_true(m:info().kv_bytes < info.kv_bytes)
    m:free()
  end)

  it("refuses bad kv options by name", function()
    local function load_err(kv)
      local ok, err = pcall(pio.load, fixture, { dtype = "f32", kv = kv })
      assert.is_false(ok)
      return err
    end
    assert.matches("pio.load: kv: unknown option 'colour' (known: layout, block, blocks, bytes, format, "
      .. "prefix, attention, window, sink)", load_err { colour = 1 }, 1, true)
    assert.matches("pio.load: kv: unknown layout 'ring' (known: contiguous, paged)",
      load_err { layout = "ring" }, 1, true)
    assert.matches("pio.load: kv: unknown format 'fp8' (known: model, int8, f32, bf16)",
      load_err { format = "fp8" }, 1, true)
    assert.matches("pio.load: kv: unknown attention 'local' (known: full, sliding, sink)",
      load_err { attention = "local" }, 1, true)
    assert.matches("pio.load: kv: block must be an integer in [1, 1048576], got 0",
      load_err { layout = "paged", block = 0 }, 1, true)
    assert.matches("pio.load: kv: give blocks or bytes, not both",
      load_err { layout = "paged", blocks = 4, bytes = 1 << 20 }, 1, true)
    assert.matches("pio.load: kv: block, blocks, bytes and prefix need layout = 'paged'",
      load_err { prefix = true }, 1, true)
    assert.matches("pio.load: kv: attention 'sliding' needs a window",
      load_err { attention = "sliding" }, 1, true)
    assert.matches("pio.load: kv: window and sink need attention = 'sliding' or 'sink'",
      load_err { window = 4 }, 1, true)
    assert.matches("pio.load: kv: prefix must be a boolean, got string",
      load_err { layout = "paged", prefix = "yes" }, 1, true)
    assert.matches("pio.load: kv: kv options must be a table, got string", load_err("paged"), 1, true)
    local m, err = pio.load(fixture, { dtype = "f32", kv = { layout = "paged", bytes = 10 } })
    assert.is_nil(m)
    assert.matches("kv: a budget of 10 bytes holds no block", err, 1, true)
  end)
end)
