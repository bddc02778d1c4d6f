-- bench/qwen3.lua: pio alone on synthetic Qwen3 weights (seeded, no download),
-- 2 threads, llama-bench's tests, decode rows against the memory roofline.
--   pio bench bench/qwen3.lua [--json out.json] [--reps N]
-- PIO_BENCH_MODELS=0.6b,4b and PIO_BENCH_DTYPES=bf16,f32 pick what runs
-- (default: 0.6b in bf16 and f32); PIO_BENCH_TESTS="pp512,tg128" a subset
-- of the tests (e.g. for Qwen3-4B in f32, where tg128 alone takes minutes).
local function pick(var, default)
  local set = {}
  for w in (os.getenv(var) or default):gmatch("[^,%s]+") do set[#set + 1] = w end
  return set
end

local models = {}
for _, size in ipairs(pick("PIO_BENCH_MODELS", "0.6b")) do
  models[#models + 1] = {
    name = "qwen3-" .. size,
    path = "bench/models/qwen3-" .. size .. "/config.json",
    synthetic = true,
    seed = 1,
    dtype = pick("PIO_BENCH_DTYPES", "bf16,f32"),
  }
end

return {
  name = "qwen3",
  threads = tonumber(os.getenv("PIO_BENCH_THREADS") or "2"),
  reps = 5,
  models = models,
  tests = pick("PIO_BENCH_TESTS", "pp512,tg128,pp512+tg128,tg128@d2048"),
  roofline = true,
}
