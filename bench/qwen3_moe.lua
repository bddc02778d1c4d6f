-- bench/qwen3_moe.lua: Qwen3-MoE on synthetic weights (seeded, no download),
-- 2 threads, llama-bench's tests, decode rows against the memory roofline of
-- the bytes a token reads (model:decode_bytes counts top_k of the experts), and
-- llama.cpp on the same weights as a peer (bench/peers/install.sh; without it
-- the peer rows say "missing").
--   pio bench bench/qwen3_moe.lua [--json out.json] [--reps N]
-- PIO_BENCH_PEERS=0 leaves llama.cpp out. bench/moe_cpu.lua prints the byte
-- breakdown and prompt GFLOP/s for the same model.
local peers = {}
if os.getenv("PIO_BENCH_PEERS") ~= "0" then peers[1] = require_file("llama_cpp.lua") end

return {
  name = "qwen3_moe",
  threads = tonumber(os.getenv("PIO_BENCH_THREADS") or "2"),
  reps = 3,
  models = {
    {
      name = "qwen3-moe-small",
      path = "bench/models/qwen3-moe-small/config.json",
      synthetic = true,
      seed = 1,
      dtype = "bf16",
    },
  },
  tests = { "pp64", "pp256", "tg64", "tg64 @ d512" },
  roofline = true,
  peers = peers,
}
