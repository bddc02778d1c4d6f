-- pio.memory: budgets per device, the report, and refusing a model that
-- cannot fit before anything is allocated, with the numbers.
local pio = require "pio"

local fixtures = os.getenv("PIO_FIXTURES") or "tests/fixtures"
local tiny = fixtures .. "/qwen3-gqa2"
local qwen3_4b = "bench/models/qwen3-4b/config.json"

local function meminfo(key)
  for line in io.lines("/proc/meminfo") do
    local k, v = line:match("^(%w+):%s+(%d+) kB")
    if k == key then return tonumber(v) * 1024 end
  end
end

describe("pio.memory #qwen3", function()
  after_each(function() pio.memory.clear("cpu") end)

  it("budget sets a share of the device's memory, once per Lua state", function()
    assert.is_nil(pio.memory.budget())
    local b = assert(pio.memory.budget { device = "cpu", max_memory_ratio = 0.25 })
    assert.equal("cpu", b.device)
    assert.equal(meminfo("MemTotal"), b.total)
    assert.equal(math.floor(b.total * 0.25), b.bytes)
    assert.equal(b, pio.memory.budget { device = "cpu" })
    assert.equal(b, pio.memory.budget())
    assert.matches("^pio.memory.budget%(cpu: [%d.]+ [GM]iB = 0.25 × [%d.]+ GiB, [%d.]+ [GM]iB free%)$", tostring(b))
    local exact = pio.memory.budget { bytes = 1 << 30 }
    assert.equal(1 << 30, exact.bytes)
    assert.matches("^pio.memory.budget%(cpu: 1.00 GiB, [%d.]+ [GM]iB free%)$", tostring(exact))
  end)

  it("report counts weights, activations and KV of live models, and what is free", function()
    local r0 = pio.memory.report()
    assert.equal("cpu", r0.device)
    assert.equal(meminfo("MemTotal"), r0.total)
    assert.is_true(r0.available > 0 and r0.free == r0.available) -- no budget: what the host has
    local m = assert(pio.load(tiny, { dtype = "f32" }))
    m:generate("Hello", { max_new_tokens = 2 })
    local info = m:info()
    local r = pio.memory.report("cpu")
    assert.equal(r0.weights + info.weight_bytes, r.weights)
    assert.equal(r0.kv + info.kv_bytes, r.kv)
    assert.equal(r0.activations + info.activation_bytes, r.activations)
    assert.is_true(info.activation_bytes > 0)
    assert.equal(r.weights + r.kv + r.activations, r.used)
    pio.memory.budget { bytes = 64 << 20 }
    r = pio.memory.report()
    assert.equal(64 << 20, r.budget)
    assert.equal((64 << 20) - r.used, r.free)
    assert.matches("^cpu: weights [%d.]+ [KM]iB, activations [%d.]+ [KM]iB, KV cache [%d.]+ [KM]iB %(%d+ models?%); free [%d.]+ MiB of a 64.0 MiB budget$", tostring(r))
    m:free()
    assert.equal(r0.weights, pio.memory.report().weights)
  end)

  it("refuses a model that cannot fit before allocating anything, with the numbers", function()
    pio.memory.budget { device = "cpu", bytes = 256 << 20 }
    local heap, tensors = pio.debug.heap_bytes(), pio.debug.live_tensors()
    local m, err = pio.load(qwen3_4b, { synthetic = true, dtype = "bf16" })
    assert.is_nil(m)
    assert.matches("^Qwen3ForCausalLM does not fit: it needs 8%.13 GiB %(weights 7%.49 GiB, KV cache 576%.0 MiB, activations 73%.6 MiB%) but the memory budget is 256%.0 MiB %(the cpu budget: 256%.0 MiB; [%d.]+ [KMG]?i?B in use%)$", err)
    assert.equal(heap, pio.debug.heap_bytes())
    assert.equal(tensors, pio.debug.live_tensors())
    local ok, why = pio.memory.budget():fits(qwen3_4b, { synthetic = true })
    assert.is_false(ok)
    assert.matches("^Qwen3ForCausalLM needs 8%.13 GiB %(weights 7%.49 GiB, KV cache 576%.0 MiB, activations 73%.6 MiB%) but [%d.]+ MiB of the cpu budget is free$", why)
    assert.truthy(pio.load(tiny)) -- a small one still fits
  end)

  it("pio.estimate gives the bytes of a load from config.json alone", function()
    local est = assert(pio.estimate(qwen3_4b, { synthetic = true, dtype = "bf16", ctx = 4096 }))
    assert.equal("Qwen3ForCausalLM", est.architecture)
    assert.equal(4022468096, est.parameters)
    assert.equal(2 * 36 * 4096 * 8 * 128 * 2, est.kv)
    assert.equal(est.weights + est.kv + est.activations, est.total)
    local m = assert(pio.load(tiny, { dtype = "f32", max_seqs = 2 }))
    local e = assert(pio.estimate(tiny, { dtype = "f32", max_seqs = 2 }))
    assert.equal(m:info().weight_bytes, e.weights)
    assert.equal(m:info().kv_bytes, e.kv)
    m:free()
    local none, err = pio.estimate("/nonexistent")
    assert.is_nil(none)
    assert.equal("model directory '/nonexistent' does not exist", err)
  end)

  it("rejects bad budgets with exact messages", function()
    assert.has_error(function() pio.memory.budget { max_memory_ratio = 1.5 } end,
      "pio.memory.budget: max_memory_ratio must be a number in (0, 1], got 1.5")
    assert.has_error(function() pio.memory.budget { max_memory_ratio = 0 } end,
      "pio.memory.budget: max_memory_ratio must be a number in (0, 1], got 0")
    assert.has_error(function() pio.memory.budget { ratio = 0.5 } end,
      "pio.memory.budget: unknown option 'ratio' (known: device, max_memory_ratio, bytes)")
    assert.has_error(function() pio.memory.budget { device = "tpu", max_memory_ratio = 0.5 } end,
      "pio.memory.budget: device must be 'cpu', 'cuda' or 'auto', got 'tpu'")
    assert.has_error(function() pio.memory.budget { bytes = -1 } end,
      "pio.memory.budget: bytes must be a positive integer, got -1")
    assert.has_error(function() pio.memory.report("tpu") end,
      "pio.memory.report: device must be 'cpu', 'cuda' or 'auto', got 'tpu'")
    assert.has_error(function() pio.load(tiny, { max_bytes = -1 }) end,
      "pio.load: max_bytes must be >= 0 (0: no limit)")
    local gpu = pio.device.info("cuda")
    if not gpu.available then -- built without CUDA, or its backend runs no models yet
      local b, err = pio.memory.budget { device = "cuda", max_memory_ratio = 0.9 }
      assert.is_nil(b)
      assert.equal("device 'cuda' is not available: " .. gpu.reason, err)
    end
  end)
end)

describe("pio.device", function()
  it("says where models run and why a device is not available", function()
    local cpu = pio.device.info("cpu")
    assert.is_true(cpu.available)
    assert.is_true(cpu.threads >= 1 and cpu.total_memory > 0)
    assert.equal(pio.model_device("auto"), pio.device.info().device)
    local gpu = pio.device.info("cuda")
    if not gpu.available then
      local m, err = pio.load(tiny, { device = "cuda" })
      assert.is_nil(m)
      assert.equal("device 'cuda' is not available: " .. gpu.reason, err)
    end
    assert.has_error(function() pio.device.info("tpu") end,
      "pio.device.info: device must be 'cpu', 'cuda' or 'auto', got 'tpu'")
  end)
end)
