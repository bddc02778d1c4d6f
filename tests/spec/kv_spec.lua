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
                  blocks = 2 * 128 / 8, bytes = info.kv_bytes }, info.kv)
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
      "kv: sliding attention needs a window >= 1, got 0")
    m:logits({ 1, 2, 3 })
    assert.has_error(function() m:kv_configure { layout = "paged" } end,
      "kv: sequence 0 holds 3 positions; free every sequence before reconfiguring the cache")
  end)
end)
