-- pio.decorate and pio.decorators: timing, logging, validation, caching and
-- retry around models, plugins and pipelines, keeping their interface.
local pio = require "pio"
local D = pio.decorators

local fixtures = os.getenv("PIO_FIXTURES") or "tests/fixtures"
local tiny = fixtures .. "/qwen3-gqa2"
local GREEDY = { max_new_tokens = 5, temperature = 0, ignore_eos = true }

describe("pio.decorate #qwen3", function()
  local m
  setup(function() m = assert(pio.load(tiny, { dtype = "f32", threads = 2 })) end)
  teardown(function() m:free() end)

  it("keeps the interface: same results, other methods pass through", function()
    local d = pio.decorate(m, D.timing, D.log { sink = function() end }, D.validate, D.cache, D.retry)
    assert.equal(m:generate("Hello", GREEDY), d:generate("Hello", GREEDY))
    assert.same(m:info().n_layer, d:info().n_layer)
    assert.equal(m.tokenizer, d.tokenizer)
    local pieces = {}
    for piece in d:stream("Hello", GREEDY) do pieces[#pieces + 1] = piece end
    assert.equal(m:generate("Hello", GREEDY), table.concat(pieces))
    assert.equal(m, d:undecorated())
    assert.same({ "timing", "log", "validate", "cache", "retry" }, d:decorators())
    assert.equal("decorated(" .. tostring(m) .. "; timing, log, validate, cache, retry)", tostring(d))
  end)

  it("timing: seconds per call and per stage", function()
    local d = pio.decorate(m, D.timing)
    d:generate("Hello", GREEDY)
    d:generate("Hi there", GREEDY)
    local t = d:timings()
    assert.equal(2, t.calls.generate.count)
    assert.is_true(t.calls.generate.total > 0)
    assert.equal(2, t.stages.prefill.count)
    assert.equal(2, t.stages.decode.count)
    assert.is_true(t.stages.prefill.total > 0 and t.stages.decode.total > 0)
    for _ in d:stream("Hello", GREEDY) do end
    assert.equal(1, d:timings().calls.stream.count)
  end)

  it("timing reads a pipeline's stages", function()
    local d = pio.decorate(pio.pipelines.completion(m), D.timing)
    d:run("Hello", GREEDY)
    local stages = d:timings().stages
    for _, name in ipairs { "template", "tokenize", "prefill", "decode", "detokenize", "postprocess" } do
      assert.equal(1, stages[name].count, name)
    end
  end)

  it("log: one line per call, failures at error level", function()
    local lines = {}
    local d = pio.decorate(m, D.log { level = "info", name = "tiny", sink = function(l) lines[#lines + 1] = l end })
    d:generate("Hello", { max_new_tokens = 2, temperature = 0 })
    assert.matches('^%[pio%] info: tiny generate%("Hello", {max_new_tokens=2, temperature=0}%) → ok %(%d+%.%d+ s%)$', lines[1])
    assert.has_error(function() d:generate("Hello", { bogus = 1 }) end)
    assert.matches("^%[pio%] error: tiny generate%(\"Hello\", {bogus=1}%) failed after %d+%.%d+ s: ", lines[2])
    local quiet = pio.decorate(m, D.log { threshold = "warn", sink = function(l) lines[#lines + 1] = l end })
    quiet:generate("Hello", { max_new_tokens = 1 })
    assert.equal(2, #lines)
  end)

  it("validate: inputs are checked before the call, with exact messages", function()
    local d = pio.decorate(m, D.validate { max_chars = 10 })
    assert.has_error(function() d:generate("") end, "validate: generate: the input is empty")
    assert.has_error(function() d:generate({}) end, "validate: generate: the input is empty")
    assert.has_error(function() d:generate(42) end,
      "validate: generate: the input must be text, token ids or chat messages, got number")
    assert.has_error(function() d:generate("a much longer prompt") end,
      "validate: generate: the input has 20 bytes, more than max_chars 10")
    assert.has_error(function() d:generate({ 1, -2 }) end,
      "validate: generate: token 2 is not a non-negative integer")
    assert.has_error(function() d:generate({ { role = "user" } }) end,
      "validate: generate: message 1 has no 'content' string")
    assert.has_error(function() d:generate("Hi", "fast") end,
      "validate: generate: options must be a table, got string")
    assert.equal("string", type(d:generate({ 1, 2, 3 }, { max_new_tokens = 1 })))
  end)

  it("cache: LRU on input and options", function()
    local d = pio.decorate(m, D.cache { size = 2 })
    local a = d:generate("one", GREEDY)
    assert.equal(a, d:generate("one", GREEDY))
    assert.same({ hits = 1, misses = 1, size = 1, capacity = 2 }, d:cache_stats())
    d:generate("one", { max_new_tokens = 4, temperature = 0, ignore_eos = true }) -- other options: a miss
    d:generate("two", GREEDY)                                                    -- evicts the oldest
    assert.equal(2, d:cache_stats().size)
    d:generate("one", GREEDY)
    assert.equal(4, d:cache_stats().misses)
    d:generate("one", { max_new_tokens = 5, ignore_eos = true, temperature = 0 }) -- same options, other order
    assert.equal(2, d:cache_stats().hits)
    d:cache_clear()
    assert.equal(0, d:cache_stats().size)
  end)
end)

describe("pio.decorators.retry", function()
  -- A stand-in whose calls fail `failures` times, the environment way (nil, why) or raising.
  local function flaky(failures, raise)
    local o = { calls = 0 }
    function o.infer(self, data)
      self.calls = self.calls + 1
      if self.calls <= failures then
        if raise then error("device busy", 0) end
        return nil, "device busy"
      end
      return "ok: " .. data
    end
    return o
  end

  it("tries environment failures (nil, why) again", function()
    local o = flaky(2)
    local d = pio.decorate(o, D.retry { attempts = 3 })
    assert.equal("ok: x", d:infer("x"))
    assert.equal(3, o.calls)
    assert.equal(2, d:retries())
  end)

  it("gives up after the attempts with the last failure", function()
    local o = flaky(5)
    local r, err = pio.decorate(o, D.retry { attempts = 2 }):infer("x")
    assert.is_nil(r)
    assert.equal("device busy", err)
    assert.equal(2, o.calls)
  end)

  it("does not repeat misuse (raised errors) unless told they are transient", function()
    local o = flaky(1, true)
    assert.has_error(function() pio.decorate(o, D.retry):infer("x") end, "device busy")
    assert.equal(1, o.calls)
    local o2 = flaky(1, true)
    local d = pio.decorate(o2, D.retry { transient = function(err) return err:find("busy") ~= nil end })
    assert.equal("ok: x", d:infer("x"))
  end)
end)

describe("pio.decorators misuse", function()
  it("rejects bad arguments with exact messages", function()
    assert.has_error(function() pio.decorate(3, D.timing) end,
      "pio.decorate: expected an object with methods, got number")
    assert.has_error(function() pio.decorate({}, "timing") end,
      "pio.decorate: argument 2 must be a pio.decorators value, got string")
    assert.has_error(function() pio.decorate({}) end, "pio.decorate: no decorators given")
    assert.has_error(function() D.cache { sise = 2 } end,
      "pio.decorators.cache: unknown option 'sise' (known: size)")
    assert.has_error(function() D.cache { size = 0 } end,
      "pio.decorators.cache: size must be a positive integer, got 0")
    assert.has_error(function() D.log { level = "loud" } end,
      "pio.decorators.log: level must be debug, info, warn or error, got loud")
    assert.has_error(function() D.retry { attempts = 0 } end,
      "pio.decorators.retry: attempts must be a positive integer, got 0")
    assert.has_error(function() D.validate { max_chars = -1 } end,
      "pio.decorators.validate: max_chars must be a positive integer")
    assert.has_error(function() D.timing("x") end,
      "pio.decorators.timing: options must be a table, got string")
  end)
end)
