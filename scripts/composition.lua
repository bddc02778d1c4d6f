-- Strategies, decorators, the memory manager and model surgery together.
--   pio scripts/composition.lua [MODEL_DIR]
local pio = require "pio"

local here = debug.getinfo(1, "S").source:match("^@(.*)/scripts/[^/]*$") or "."
local model_dir = arg[1] or (here .. "/tests/fixtures/qwen3-gqa2")

-- 1. The memory manager: a budget for the CPU, what a model needs, a report.
local budget = assert(pio.memory.budget { device = "cpu", max_memory_ratio = 0.5 })
print(budget)
local ok, why = budget:fits(model_dir, { dtype = "bf16" })
print("fits:", ok, why or "")

-- 2. Strategies: a plan for this model on this device, then a model that uses it.
local plan = pio.strategy.select(model_dir, "cpu", { prefer = { kv = "paged" } })
print(plan) -- kv.paged is skipped with its reason until the paged cache exists
local model = assert(pio.load(model_dir, plan.load_options))
model:use(plan, pio.strategy.sampling.chain(pio.strategy.sampling.top_k(20),
                                           pio.strategy.sampling.top_p(0.8),
                                           pio.strategy.sampling.temperature(0.7)))
print("strategies: " .. table.concat(model:info().strategies, ", "))

-- 3. Decorators: timed, logged, cached; the same interface as the model.
local m = pio.decorate(model, pio.decorators.timing, pio.decorators.log { level = "info" },
                       pio.decorators.cache { size = 8 })
for _ = 1, 2 do m:generate("Hello", { max_new_tokens = 8, seed = 1 }) end
local t = m:timings()
print(string.format("generate: %d calls, %.1f ms; prefill %.1f ms, decode %.1f ms; cache %d hit(s)",
  t.calls.generate.count, t.calls.generate.total * 1e3, t.stages.prefill.total * 1e3,
  t.stages.decode.total * 1e3, m:cache_stats().hits))

-- 4. Surgery: fuse projections (same outputs), then report memory.
print(pio.surgery.apply(model, { fuse = { "qkv", "gate_up" } }))
print(pio.memory.report("cpu"))
model:free()
pio.memory.clear("cpu")
