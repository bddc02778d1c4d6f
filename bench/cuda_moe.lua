-- bench/cuda_moe.lua: Qwen3-MoE on an NVIDIA GPU, the full Qwen3-Coder-30B-A3B shape
-- (bench/models/qwen3-coder-30b-a3b/config.json: 48 layers, 128 experts, top-8; about
-- 61 GB of bf16 weights, made on the device from a seed), decode at 1, 8 and 32
-- concurrent sequences and a 512-token prompt, each against the roofline of the bytes
-- a step actually reads:
--   pio bench bench/cuda_moe.lua [--json out.json] [--reps N]
-- scripts/gpu-check.sh runs it with PIO_GPU_COPY_GBS (the card's copy bandwidth,
-- measured in the same run). A decode step of B sequences reads the attention
-- weights, the routers, the lm_head, and every expert at least one of the B tokens
-- picks: with the router's choices spread evenly (random weights spread them), that is
-- E·(1 - (1 - k/E)^B) experts per layer on average. PIO_BENCH_MOE_CONFIG picks
-- another config.json (e.g. bench/models/qwen3-moe-small/config.json for a quick run).
local path = os.getenv("PIO_BENCH_MOE_CONFIG") or "bench/models/qwen3-coder-30b-a3b/config.json"
local copy_gbs = tonumber(os.getenv("PIO_GPU_COPY_GBS") or "")
local STEPS, DEPTH, BATCHES = 64, 16, { 1, 8, 32 }

local read_config = require("pio.bench").read_json

-- Bytes one decode step of `b` sequences reads (bf16 weights, 2 bytes each).
local function step_bytes(cfg, info, b)
  local H, L = cfg.hidden_size, cfg.num_hidden_layers
  local X, k, F = cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size
  local expert = 3 * F * H * 2
  local experts_total = L * X * expert
  local others = info.weight_bytes - experts_total -- attention, norms, routers, embeddings
  if not cfg.tie_word_embeddings then
    others = others - cfg.vocab_size * H * 2 -- the embedding table is a gather, not a read
  end
  local distinct = X * (1 - (1 - k / X) ^ b)
  local kv = 2 * L * cfg.num_key_value_heads * cfg.head_dim * 2 * (DEPTH + STEPS / 2) * b
  return others + L * distinct * expert + kv, distinct
end

return {
  name = "cuda-moe",
  run = function(ctx)
    local pio = require "pio"
    local bench = require "pio.bench"
    local reps = ctx.reps or 3
    local cfg = read_config(path)
    ctx.log("loading %s on cuda (synthetic bf16)", path)
    local t0 = os.time()
    local m = assert(pio.load(path, { synthetic = true, seed = 1, dtype = "bf16", device = "cuda",
                                      max_seqs = 32, ctx = 1024, progress = false }))
    local info = m:info()
    ctx.log("loaded: %.1f GB of weights in about %d s", info.weight_bytes / 1e9, os.time() - t0)
    local rows, result = {}, { model = path, weight_bytes = info.weight_bytes, rows = {},
                               copy_gbs = copy_gbs, machine = bench.machine() }
    for _, b in ipairs(BATCHES) do
      m:bench_decode(b, 4, DEPTH) -- warm-up (and, at one sequence, the graph capture)
      local samples = {}
      for r = 1, reps do samples[r] = b * STEPS / m:bench_decode(b, STEPS, DEPTH) end
      local mean, sd = bench.stats(samples)
      local bytes, distinct = step_bytes(cfg, info, b)
      local roof = copy_gbs and copy_gbs * 1e9 / bytes * b or nil
      local name = ("decode, %d sequence%s"):format(b, b > 1 and "s" or "")
      result.rows[#result.rows + 1] = { test = name, sequences = b, tps = mean, tps_sd = sd,
        samples = samples, step_bytes = bytes, experts_read_per_layer = distinct,
        roofline_tps = roof, roofline_fraction = roof and mean / roof or nil }
      rows[#rows + 1] = { name, ("%.1f ± %.1f"):format(mean, sd), ("%.2f GB"):format(bytes / 1e9),
        ("%.1f"):format(distinct), roof and ("%.0f"):format(roof) or "-",
        roof and ("%.0f%%"):format(100 * mean / roof) or "-" }
      ctx.log("%s: %.1f tok/s", name, mean)
    end
    m:bench_forward(512, 0) -- warm-up
    local samples = {}
    for r = 1, reps do samples[r] = 512 / m:bench_forward(512, 0) end
    local mean, sd = bench.stats(samples)
    result.rows[#result.rows + 1] = { test = "pp512", tps = mean, tps_sd = sd, samples = samples }
    rows[#rows + 1] = { "pp512", ("%.0f ± %.0f"):format(mean, sd), "-", "-", "-", "-" }
    m:free()
    ctx.out:write(("\n%s on cuda, bf16, %.1f GB of weights; roofline at %s GB/s (copy bandwidth)\n\n")
      :format(path, info.weight_bytes / 1e9, copy_gbs and ("%.1f"):format(copy_gbs) or "?"))
    ctx.print_table(ctx.out, { "test", "tok/s", "bytes/step", "experts/layer", "roofline tok/s",
                               "of roofline" }, rows)
    return result
  end,
}
