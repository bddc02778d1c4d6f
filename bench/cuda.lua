-- bench/cuda.lua: pio on an NVIDIA GPU, a Qwen3-4B-shaped model (models.md §1.1)
-- with seeded random bf16 weights made on the device, against the card's limits
-- and transformers on the same card:
--   pio bench bench/cuda.lua [--json out.json] [--reps N]
-- scripts/gpu-check.sh runs it after bench/cuda-micro has measured the card's
-- ceilings and passes them on: PIO_GPU_COPY_GBS (device-to-device copy, bytes
-- read + written per second / 1e9: the decode roofline's bandwidth) and
-- PIO_GPU_PEAK_TFLOPS (cuBLAS bf16 GEMM 8192³). Decode rows are printed as a
-- fraction of the bandwidth roofline (weight + KV bytes per token ÷ bandwidth),
-- prompt rows as a fraction of the GEMM peak (2 flops per weight per token plus
-- the causal attention's 4·L·H·D per key). PIO_BENCH_PEERS=0 skips transformers;
-- PIO_BENCH_TESTS and PIO_BENCH_MODELS pick a subset (as in bench/qwen3.lua).
local function pick(var, default)
  local set = {}
  for w in (os.getenv(var) or default):gmatch("[^,%s]+") do set[#set + 1] = w end
  return set
end

local copy_gbs = tonumber(os.getenv("PIO_GPU_COPY_GBS") or "")
local peak_tflops = tonumber(os.getenv("PIO_GPU_PEAK_TFLOPS") or "")

local models = {}
for _, size in ipairs(pick("PIO_BENCH_MODELS", "4b")) do
  models[#models + 1] = {
    name = "qwen3-" .. size, path = "bench/models/qwen3-" .. size .. "/config.json",
    synthetic = true, seed = 1, dtype = "bf16",
  }
end

-- Flops of one prompt token at `keys` keys: every layer weight once (2 per
-- weight), attention 4·H·D per key and layer (q·k and p·v). The lm_head runs
-- for the last token only and is left out.
local function prompt_flops(cfg, n_prompt, depth)
  local E, H, Hkv, D, F, L = cfg.hidden_size, cfg.num_attention_heads,
    cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size, cfg.num_hidden_layers
  local per_layer = (H * D + 2 * Hkv * D) * E + E * H * D + 3 * E * F
  local mean_keys = depth + (n_prompt + 1) / 2
  return n_prompt * (2 * per_layer * L + 4 * L * H * D * mean_keys)
end

local read_config = require("pio.bench").read_json

local function report(result, out)
  if not peak_tflops then return end
  out:write("\nprompt rows against the cuBLAS bf16 peak of this run:\n")
  for _, r in ipairs(result.rows) do
    local spec = require("pio.bench").parse_test(r.test)
    if spec and spec.n_gen == 0 and spec.n_prompt > 0 then
      local path
      for _, m in ipairs(models) do if m.name == r.model then path = m.path end end
      local fl = prompt_flops(read_config(path), spec.n_prompt, spec.depth)
      local tflops = r.tps / spec.n_prompt * fl / 1e12
      r.tflops, r.peak_fraction = tflops, tflops * 1e12 / (peak_tflops * 1e12)
      out:write(string.format("  %s %s: %.1f TFLOP/s = %.0f%% of %.1f TFLOP/s\n", r.model, r.test,
        tflops, 100 * r.peak_fraction, peak_tflops))
    end
  end
end

return {
  name = "cuda",
  device = "cuda",
  threads = 1,
  reps = 5,
  models = models,
  tests = pick("PIO_BENCH_TESTS", "tg128,pp512,pp2048,tg128@d2048"),
  roofline = copy_gbs ~= nil,
  bandwidth = function() return copy_gbs * 1e9 end,
  peers = os.getenv("PIO_BENCH_PEERS") ~= "0" and { require_file("transformers.lua") } or {},
  report = report,
}
