-- pio.Strategy, pio.strategy.select and model:use: strategies are the
-- runtime's own account of what it can honour, never faked.
local pio = require "pio"

local fixtures = os.getenv("PIO_FIXTURES") or "tests/fixtures"
local tiny = fixtures .. "/qwen3-gqa2"
local S = pio.strategy
local cpu = pio.device.info("cpu")

describe("pio.Strategy #qwen3", function()
  it("covers the six families", function()
    assert.same({ "attention", "kv", "precision", "sampling", "offload", "parallel" }, S.families)
    for _, family in ipairs(S.families) do assert.is_true(#S.list(family) > 0, family) end
    assert.same({ "kv.contiguous", "kv.paged", "kv.prefix", "kv.int8", "kv.fp8" }, S.list("kv"))
  end)

  it("is userdata with name, family, params and a description", function()
    local s = S.kv.paged { block = 32 }
    assert.equal("userdata", type(s))
    assert.equal("paged", s.name)
    assert.equal("kv", s.family)
    assert.equal("kv.paged", s.id)
    assert.same({ block = 32 }, s.params)
    assert.equal("pio.Strategy(kv.paged{block=32})", tostring(s))
    assert.same({ block = 16 }, S.kv.paged().params) -- the default
    assert.equal(S.kv.paged(), S.kv.paged { block = 16 })
    assert.are_not.equal(S.kv.paged(), S.kv.paged { block = 8 })
    assert.equal("pio.Strategy(sampling.top_k{k=20})", tostring(S.sampling.top_k(20)))
  end)

  it("says where it applies and which options it sets", function()
    assert.equal("load", S.precision.bf16().applies)
    assert.same({ dtype = "bf16" }, S.precision.bf16().options)
    assert.same({ threads = 4 }, S.parallel.threads(4).options)
    assert.equal("generate", S.sampling.top_p(0.9).applies)
    assert.same({ top_p = 0.9 }, S.sampling.top_p(0.9).options)
    assert.same({ temperature = 0 }, S.sampling.greedy().options)
    assert.same({ repetition_penalty = 1.2, penalty_last_n = 64 },
      S.sampling.repetition_penalty { penalty = 1.2, last_n = 64 }.options)
    assert.equal("nowhere", S.attention.full().applies)
    assert.same({}, S.kv.contiguous().options)
  end)

  it("composes a sampler chain of sampling strategies", function()
    local chain = S.sampling.chain(S.sampling.top_k(20), S.sampling.top_p(0.8), S.sampling.temperature(0.7))
    assert.equal("pio.Strategy(sampling.chain{top_k{k=20}, top_p{p=0.8}, temperature{value=0.7}})", tostring(chain))
    assert.same({ top_k = 20, top_p = 0.8, temperature = 0.7 }, chain.options)
    assert.equal(3, #chain.parts)
    local nested = S.sampling.chain(chain, S.sampling.min_p(0.1))
    assert.equal(4, #nested.parts)
    assert.is_true(chain:supports(tiny, cpu))
  end)

  it("rejects unknown families, strategies and parameters, naming them", function()
    assert.has_error(function() return S.kv.pagd end,
      "pio.strategy.kv has no strategy 'pagd' (known: contiguous, paged, prefix, int8, fp8)")
    assert.has_error(function() S.kv.paged { blocks = 16 } end,
      "kv.paged: unknown parameter 'blocks' (known: block)")
    assert.has_error(function() S.kv.contiguous { block = 16 } end,
      "kv.contiguous: unknown parameter 'block' (it takes none)")
    assert.has_error(function() S.kv.paged { block = 0 } end,
      "kv.paged: block must be an integer in [1, 4096], got 0")
    assert.has_error(function() S.kv.paged { block = 2.5 } end,
      "kv.paged: block must be an integer in [1, 4096], got 2.5")
    assert.has_error(function() S.kv.paged { block = "16" } end,
      "kv.paged: block must be a number, got string")
    assert.has_error(function() S.sampling.top_p(1.5) end,
      "sampling.top_p: p must be a number in [1e-06, 1], got 1.5")
    assert.has_error(function() S.kv.int8(3) end, "kv.int8 takes no parameters")
    assert.has_error(function() S.sampling.chain(S.sampling.top_k(1), S.sampling.top_k(2)) end,
      "sampling.chain: parts 1 and 2 both set top_k")
    assert.has_error(function() S.sampling.chain(S.kv.paged()) end,
      "sampling.chain: part 1 must be a pio.Strategy of the sampling family, got kv.paged")
    assert.has_error(function() S.sampling.chain("top_k") end,
      "sampling.chain: part 1 must be a pio.Strategy of the sampling family, got string")
  end)
end)

describe("Strategy:supports #qwen3", function()
  local m
  setup(function() m = assert(pio.load(tiny, { dtype = "f32", threads = 2 })) end)
  teardown(function() m:free() end)

  it("says yes to what the runtime does", function()
    for _, s in ipairs { S.attention.full(), S.kv.contiguous(), S.precision.f32(),
                         S.sampling.top_k(5), S.parallel.threads(2), S.parallel.threads(0) } do
      assert.is_true(s:supports(m, "cpu"), tostring(s))
    end
  end)

  it("refuses what the runtime cannot honour yet, with the reason", function()
    local function no(s, model, dev, reason)
      local ok, why = s:supports(model, dev)
      assert.is_false(ok, tostring(s))
      assert.equal(reason, why)
    end
    no(S.kv.fp8(), m, "cpu", "fp8 (e4m3) KV is a GPU format; the CPU has no fp8 arithmetic")
    no(S.precision.bf16(), m, "cpu",
      "the model is loaded in f32; precision is chosen when loading (dtype = \"bf16\")")
    no(S.parallel.threads(3), m, "cpu",
      "the model was loaded with 2 threads; threads are chosen when loading")
    no(S.parallel.tensor(), m, "cpu",
      "tensor parallelism splits a model across GPUs; on the CPU use parallel.threads")
    no(S.offload.experts(), m, "cpu", "Qwen3ForCausalLM has no experts to keep in host memory")
  end)

  it("offload is a strategy: unsupported on the CPU-only build, with the reason", function()
    local ok, why = S.offload.layers { n = 8 }:supports(m, "cpu")
    assert.is_false(ok)
    assert.equal("on the CPU every weight already lives in host memory: offload is for a GPU too small for the model", why)
    local gpu = pio.device.info("cuda")
    if not gpu.available then
      ok, why = S.offload.layers():supports(m, "cuda")
      assert.is_false(ok)
      assert.equal("device 'cuda' is not available: " .. gpu.reason, why)
    end
  end)

  it("takes models, paths, info tables and device names or tables", function()
    assert.is_true(S.precision.bf16():supports(tiny, "cpu")) -- not loaded: any precision
    assert.is_true(S.attention.full():supports(m:info(), cpu))
    assert.is_true(S.attention.full():supports({}, {}))
    assert.has_error(function() S.attention.full():supports(m, 3) end)
    assert.has_error(function() S.attention.full():supports(m, "tpu") end)
  end)
end)

describe("pio.strategy.select #qwen3", function()
  it("picks one supported strategy per family and says what it skipped", function()
    local plan = S.select(tiny, "cpu")
    assert.equal(S.attention.full(), plan.attention)
    assert.equal(S.kv.contiguous(), plan.kv)
    assert.equal(S.precision.bf16(), plan.precision)
    assert.equal(S.parallel.threads(0), plan.parallel)
    assert.is_nil(plan.sampling)
    assert.is_nil(plan.offload)
    assert.same({}, plan.skipped)
    assert.same({ dtype = "bf16", threads = 0 }, plan.load_options)
    assert.matches("^pio.strategy plan: attention.full, kv.contiguous, precision.bf16, parallel.threads{n=0}", tostring(plan))
  end)

  it("is overridden per call with prefer, falling back when a preference is unsupported", function()
    local plan = S.select(tiny, "cpu", { prefer = { precision = "f32", kv = "fp8",
                                                      sampling = S.sampling.top_k(7) } })
    assert.equal(S.precision.f32(), plan.precision)
    assert.equal(S.kv.contiguous(), plan.kv)
    assert.equal(S.sampling.top_k(7), plan.sampling)
    assert.same({ top_k = 7 }, plan.generate_options)
    assert.equal("kv.fp8", plan.skipped[1].strategy)
    local list = S.select(tiny, "cpu", { prefer = { S.precision.f32() } })
    assert.equal(S.precision.f32(), list.precision)
  end)

  it("follows the policy table, which a state may change", function()
    local saved = S.policy.kv
    S.policy.kv = { { "contiguous" } }
    local plan = S.select(tiny, "cpu")
    S.policy.kv = saved
    assert.same({}, plan.skipped)
  end)

  it("rejects bad preferences, naming them", function()
    assert.has_error(function() S.select(tiny, "cpu", { prefer = { kvv = "paged" } }) end,
      "pio.strategy.select: prefer: unknown family 'kvv' (known: attention, kv, precision, sampling, offload, parallel)")
    assert.has_error(function() S.select(tiny, "cpu", { prefer = { 3 } }) end,
      "pio.strategy.select: prefer[1] must be a pio.Strategy, got number")
    assert.has_error(function() S.select(tiny, "cpu", { perfer = {} }) end,
      "pio.strategy.select: unknown option 'perfer' (known: prefer)")
    assert.has_error(function() S.select(tiny, "cpu", { prefer = { kv = "pagd" } }) end,
      "pio.strategy.select: prefer: pio.strategy.kv has no strategy 'pagd' (known: contiguous, paged, prefix, int8, fp8)")
  end)
end)

describe("model:use #qwen3", function()
  local m
  before_each(function() m = assert(pio.load(tiny, { dtype = "f32", threads = 2 })) end)
  after_each(function() m:free() end)

  it("reports the strategies in effect through model:info()", function()
    assert.same({ "attention.full", "kv.contiguous", "precision.f32", "parallel.threads{n=2}" },
      m:info().strategies)
    assert.equal(m, m:use(S.sampling.top_k(5), S.sampling.top_p(0.9)))
    assert.same({ "attention.full", "kv.contiguous", "precision.f32", "sampling.top_k{k=5}",
                  "sampling.top_p{p=0.9}", "parallel.threads{n=2}" }, m:info().strategies)
    m:use(S.sampling.top_k(9)) -- the same step again replaces it
    assert.same("sampling.top_k{k=9}", m:info().strategies[5])
    m:use(S.select(m, "cpu")) -- a whole plan
    assert.equal(6, #m:strategies())
  end)

  it("maps sampling strategies onto the sampler; per-call options win", function()
    local opts = { max_new_tokens = 6, ignore_eos = true, seed = 3 }
    local greedy = m:generate("Hello", { max_new_tokens = 6, ignore_eos = true, temperature = 0 })
    m:use(S.sampling.greedy())
    assert.equal(greedy, m:generate("Hello", opts))
    m:use(S.sampling.chain(S.sampling.temperature(5.0), S.sampling.top_k(50)))
    local hot = m:generate("Hello", opts)
    local hot_again = m:generate("Hello", { max_new_tokens = 6, ignore_eos = true, seed = 3,
                                             temperature = 5.0, top_k = 50 })
    assert.equal(hot_again, hot)
    assert.equal(greedy, m:generate("Hello", { max_new_tokens = 6, ignore_eos = true, temperature = 0 }))
  end)

  it("refuses a strategy the runtime cannot honour, with the reason", function()
    assert.has_error(function() m:use(S.kv.fp8()) end,
      "model:use: kv.fp8 is not supported here: fp8 (e4m3) KV is a GPU format; the CPU has no fp8 arithmetic")
    assert.has_error(function() m:use(S.precision.bf16()) end,
      "model:use: precision.bf16 is not supported here: the model is loaded in f32; precision is chosen when loading (dtype = \"bf16\")")
    assert.has_error(function() m:use("kv.paged") end,
      "model:use: argument 1 must be a pio.Strategy, got string")
    assert.has_error(function() m:use({ 3 }) end,
      "model:use: argument 1 must hold pio.Strategy values, got number")
    assert.same({ "attention.full", "kv.contiguous", "precision.f32", "parallel.threads{n=2}" },
      m:info().strategies) -- nothing recorded
  end)
end)
