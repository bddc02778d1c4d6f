-- bench/moe_cpu.lua: Qwen3-MoE on the CPU, decode and prompt speed against the
-- roofline of the bytes a token actually reads (attention + router + the top_k
-- experts it picks + lm_head + its KV cache), on synthetic bf16 weights.
--
--   build/pio bench/moe_cpu.lua [config.json] [threads]
--
-- Defaults: bench/models/qwen3-moe-small/config.json (64 experts, top-8, 16
-- layers, about 1.9 GB in bf16) and 2 threads (PIO_BENCH_THREADS). PIO_BENCH_REPS
-- sets the repetitions (default 3), PIO_BENCH_BW the bandwidth in GB/s for the
-- roofline (default: measured here with pio.read_bandwidth). Token ids are made up and nothing is
-- sampled, as in llama-bench; the times are those of the forward passes alone.
--
-- Decode (tgN @ dD): N single-token steps after a D-token prompt; the roofline is
-- bytes per step ÷ the measured read bandwidth. "all experts" is what a step
-- would read if every expert were computed, the cost of a naive MoE.
-- Prompt (ppN): one N-token batch. Tokens are grouped by expert, so each expert
-- hit is read once per batch and the bytes per token fall as 1/N: a prompt is
-- compute-bound, so its row gives GFLOP/s (2 per multiply-add of the active
-- weights, plus attention) next to the memory roofline.
--
-- Measured (2 threads, AVX-512 BF16 CPU, a machine shared with other jobs, load 3-4;
-- median of 83 runs over 10 minutes, bandwidth measured before each run, median
-- 25.6 GB/s): decode tg32 @ d16 40.4 t/s = 67% of its roofline (422 MB per token;
-- 61% of 65.8 t/s at 27.8 GB/s), tg32 @ d512 37.5 t/s (63%); computing every expert
-- would cap decode at 15.2 t/s (1.83 GB per token). Prompts: pp16 128, pp64 228,
-- pp256 301, pp512 298 t/s (~116 GFLOP/s). bench/qwen3_moe.lua in the same hour:
-- pio / llama.cpp (0.3.36, same weights) 3.2x pp64, 1.9x pp256, 2.6x tg64, 1.9x
-- tg64 @ d512.
local pio = require "pio"
local cjson = require "cjson"

local path = arg[1] or "bench/models/qwen3-moe-small/config.json"
local threads = math.tointeger(tonumber(arg[2] or os.getenv("PIO_BENCH_THREADS") or "2"))
local reps = math.tointeger(tonumber(os.getenv("PIO_BENCH_REPS") or "3"))

local read_config = require("pio.bench").read_json

local cfg = read_config(path)
local E, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
local H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
local D = cfg.head_dim or E // H
local X = cfg.num_experts or cfg.num_local_experts
local K, I, F = cfg.num_experts_per_tok, cfg.moe_intermediate_size, cfg.intermediate_size
local step = cfg.decoder_sparse_step or 1
local dense_layers = {}
for _, l in ipairs(cfg.mlp_only_layers == cjson.null and {} or cfg.mlp_only_layers or {}) do
  dense_layers[l] = true
end
local n_moe = 0
for l = 0, L - 1 do
  if not dense_layers[l] and X > 0 and (l + 1) % step == 0 then n_moe = n_moe + 1 end
end
local n_dense = L - n_moe

-- Bytes (bf16 matrices, f32 norms) and multiply-adds per token, by part.
local BF, F32 = 2, 4
local attn_w = L * (E * H * D * 2 + E * Hkv * D * 2) -- q, o and k, v
local parts = {
  attention = attn_w * BF + L * (2 * E + 2 * D) * F32,
  router = n_moe * X * E * BF,
  expert = 3 * I * E * BF, -- one expert of one layer
  dense_mlp = n_dense * 3 * F * E * BF,
  lm_head = V * E * BF + E * F32,
}
local function kv_bytes(positions) -- keys and values read by one token's attention, bf16 cache
  return 2 * L * positions * Hkv * D * BF
end
local function decode_bytes(pos, experts_per_layer)
  return parts.attention + parts.router + n_moe * experts_per_layer * parts.expert
    + parts.dense_mlp + parts.lm_head + kv_bytes(pos + 1)
end
-- Expected distinct experts a batch of n tokens hits per layer, if routing were uniform.
local function experts_hit(n)
  return X * (1 - (1 - K / X) ^ n)
end
local function prompt_macs(n) -- per token, averaged over a prompt of n tokens
  local weights = attn_w + n_moe * (X * E + K * 3 * I * E) + n_dense * 3 * F * E
  local attention = L * H * D * 2 * (n + 1) / 2 -- q·k and p·v over (n + 1) / 2 keys on average
  return weights + attention + V * E / n -- logits for the last token only
end

local function stats(samples)
  local sum, var = 0, 0
  for _, v in ipairs(samples) do sum = sum + v end
  local mean = sum / #samples
  for _, v in ipairs(samples) do var = var + (v - mean) ^ 2 end
  return mean, #samples > 1 and math.sqrt(var / (#samples - 1)) or 0
end

local function gb(bytes) return bytes / 1e9 end

-- ---- run --------------------------------------------------------------------------

-- The roofline's bandwidth: PIO_BENCH_BW (GB/s) if set, else measured with the
-- same threads (best of 3 passes over 1 GiB; other load on the machine lowers it).
local bw = tonumber(os.getenv("PIO_BENCH_BW") or "")
local bw_from = "PIO_BENCH_BW"
if bw then
  bw = bw * 1e9
else
  io.stderr:write(("measuring read bandwidth with %d threads...\n"):format(threads))
  bw = assert(pio.read_bandwidth { threads = threads, mib = 1024, reps = 3 })
  bw_from = "measured"
end

local t0 = pio.now()
local model = assert(pio.load(path, { synthetic = true, seed = 1, dtype = "bf16", threads = threads, ctx = 1024 }))
local load_s = pio.now() - t0
local info = model:info()

print(("# %s: %s, %d layers (%d MoE: %d experts, top-%d, moe_intermediate %d), hidden %d, vocab %d"):format(
  path, info.architecture, L, n_moe, X, K, I, E, V))
print(("# %.2f GB of bf16 weights (%.2f B params), synthetic, loaded in %.1f s; %d threads; read bandwidth %.1f GB/s (%s)"):format(
  gb(info.weight_bytes), info.parameters / 1e9, load_s, info.threads, gb(bw), bw_from))
print(("# bytes per decode token: attention %.0f MB, router %.1f MB, %d x %d experts x %.2f MB = %.0f MB, lm_head %.0f MB%s"):format(
  parts.attention / 1e6, parts.router / 1e6, n_moe, K, parts.expert / 1e6, n_moe * K * parts.expert / 1e6,
  parts.lm_head / 1e6, n_dense > 0 and (", dense MLPs %.0f MB"):format(parts.dense_mlp / 1e6) or ""))
if model.decode_bytes then
  print(("# model:decode_bytes() = %.0f MB (weights only; the table adds the KV cache)"):format(model:decode_bytes() / 1e6))
end
print(("# reps %d; t/s = mean ± sd"):format(reps))
print()

local rows = {}
local function row(test, tps, sd, roof_tps, extra)
  rows[#rows + 1] = { test, tps, sd, roof_tps, extra }
  print(("| %-14s | %10.2f ± %-7.2f | %10.2f | %5.1f%% | %s"):format(test, tps, sd, roof_tps, 100 * tps / roof_tps, extra))
  io.stdout:flush()
end

print(("| %-14s | %20s | %10s | %6s | %s"):format("test", "t/s", "roofline", "of it", "notes"))
print("|----------------|----------------------|------------|--------|------")

-- Decode: n steps after a prompt of `depth` tokens (the prompt is not timed).
for _, case in ipairs { { n = 32, depth = 16 }, { n = 32, depth = 512 } } do
  local samples = {}
  for r = 0, reps do
    model:bench_forward(case.depth, 0)
    local s = 0
    for i = 0, case.n - 1 do
      s = s + model:bench_forward(1, case.depth + i)
    end
    if r > 0 then samples[#samples + 1] = case.n / s end -- rep 0 warms up
  end
  local mean, sd = stats(samples)
  local bytes, all = 0, 0
  for i = 0, case.n - 1 do
    bytes = bytes + decode_bytes(case.depth + i, K)
    all = all + decode_bytes(case.depth + i, X)
  end
  bytes, all = bytes / case.n, all / case.n
  row(("tg%d @ d%d"):format(case.n, case.depth), mean, sd, bw / bytes,
    ("%.0f MB/token -> %.1f GB/s; all experts: %.0f MB, roofline %.1f t/s"):format(
      bytes / 1e6, gb(mean * bytes), all / 1e6, bw / all))
end

-- Prompt: one batch of n tokens.
for _, n in ipairs { 16, 64, 256 } do
  local samples = {}
  for r = 0, reps do
    local s = model:bench_forward(n, 0)
    if r > 0 then samples[#samples + 1] = n / s end
  end
  local mean, sd = stats(samples)
  local hit = experts_hit(n)
  local bytes = (parts.attention + parts.router + n_moe * hit * parts.expert + parts.dense_mlp
    + parts.lm_head) / n + kv_bytes((n + 1) / 2)
  row(("pp%d"):format(n), mean, sd, bw / bytes,
    ("%.1f MB/token (%.1f of %d experts hit per layer); %.1f GFLOP/s"):format(
      bytes / 1e6, hit, X, 2 * prompt_macs(n) * mean / 1e9))
end

model:free()
