-- bench/serving.lua: continuous batching (pio.scheduler) on the CPU with a
-- small synthetic Qwen3 (bench/models/qwen3-serving-small: 4 layers, 768
-- wide, 34 M parameters, 68 MB in bf16: more than the L3 cache, so decode reads
-- memory as a real model does, yet 64 sequences at once fit a 2-core machine).
--   pio bench bench/serving.lua [--quick] [--json out.json]
-- Four parts:
--   concurrency  c requests submitted at once (c = 1, 8, 32, 64), each a
--                64-token prompt and 32 greedy tokens (--quick: 16): output
--                tokens per second of wall time, TTFT and time per output
--                token (p50, p99 over the requests; all are submitted at once,
--                so TTFT includes waiting for a slot);
--   prefix       8 requests arriving together, sharing a 2,000-token system
--                prompt that an earlier request ran (each with its own 32-token
--                question, 8 new tokens), on the paged KV cache, prefix caching
--                off vs on: wall time and mean TTFT of the 8;
--   preemption   16 requests of 256 + 64 tokens at once on a paged pool with room for
--                8 at full length: preemption by recompute vs by swap to host memory
--                (wall time, preemptions, tokens computed twice, bytes swapped);
--   capacity     how many 4,096-token sequences a 256 MiB KV budget holds (4 GiB on
--                cuda, for Qwen3-4B's 144 KiB per position), contiguous vs paged,
--                bf16 vs int8 (bf16 only on cuda: int8 KV runs on the CPU), on a
--                model serving an 8,192-token context: configured for real, then
--                filled with 4,096-position reservations until the pool says no.
-- PIO_BENCH_THREADS (default 2) sets the threads. PIO_BENCH_DEVICE=cuda runs every part
-- on the GPU (scripts/gpu-check.sh does) with a synthetic Qwen3-4B
-- (PIO_BENCH_SERVING_MODEL picks another config.json), the paged parts on the device's
-- paged KV cache.
--
-- Measured on the 2-core development VM (AMD EPYC, bf16, 2 threads, load ~1.2), 20 s:
--   output tok/s 339 (c=1), 856 (8), 1245 (32), 1422 (64); TPOT p50 2.4, 5.4, 17.0, 30.0 ms;
--   prefix reuse: the 8 requests in 0.23 s instead of 6.55 s (28x), mean TTFT 22x lower;
--   4k-token sequences in 256 MiB: bf16 8 contiguous / 16 paged, int8 15 / 30.
local pio = require "pio"

local DEVICE = os.getenv("PIO_BENCH_DEVICE") or "cpu"
local MODEL = os.getenv("PIO_BENCH_SERVING_MODEL") or (DEVICE == "cuda"
  and "bench/models/qwen3-4b/config.json" or "bench/models/qwen3-serving-small/config.json")
local THREADS = tonumber(os.getenv("PIO_BENCH_THREADS") or "2")

local function load(opts)
  local o = { synthetic = true, seed = 1, dtype = "bf16", threads = THREADS, progress = false,
              device = DEVICE }
  for k, v in pairs(opts) do o[k] = v end
  return assert(pio.load(MODEL, o))
end

-- Made-up token ids (the model has no tokenizer): request r's prompt.
local function prompt(r, n, offset)
  local ids = {}
  for i = 1, n do ids[i] = (r * 7919 + i * 104729 + (offset or 0)) % 8000 end
  return ids
end

local function percentile(xs, p)
  if #xs == 0 then return nil end
  local s = {}
  for i, v in ipairs(xs) do s[i] = v end
  table.sort(s)
  return s[math.max(1, math.ceil(p / 100 * #s))]
end

local function ms(x) return x and string.format("%.1f", 1000 * x) or "-" end

-- Runs every prompt through one scheduler; wall seconds and per-request stats.
local function serve(model, prompts, new_tokens, max_batch, max_tokens, preempt)
  local s = pio.scheduler(model, { max_batch = max_batch, max_tokens = max_tokens,
                                   preempt = preempt })
  local t0 = pio.now()
  local handles = {}
  for i, p in ipairs(prompts) do
    handles[i] = s:submit(p, { max_tokens = new_tokens, temperature = 0, ignore_eos = true })
  end
  s:run()
  local wall = pio.now() - t0
  local st = s:stats()
  s:close()
  local ttft, tpot, generated = {}, {}, 0
  for _, h in ipairs(st.handles) do
    ttft[#ttft + 1] = h.ttft
    if h.tpot then tpot[#tpot + 1] = h.tpot end
    generated = generated + h.tokens
  end
  return { wall = wall, ttft = ttft, tpot = tpot, generated = generated, stats = st }
end

local function concurrency(ctx, rows, json)
  local new_tokens = ctx.quick and 16 or 32
  local model = load({ max_seqs = 64, ctx = 512 })
  serve(model, { prompt(0, 64) }, 4, 1) -- warm-up: scratch buffers, page faults
  for _, c in ipairs { 1, 8, 32, 64 } do
    local n = math.max(c, 4) -- at least 4 requests, so c = 1 has percentiles too
    local prompts = {}
    for r = 1, n do prompts[r] = prompt(r, 64) end
    local r = serve(model, prompts, new_tokens, c, 512)
    local tps = r.generated / r.wall
    rows[#rows + 1] = { "concurrency", "c=" .. c, string.format("%.1f", tps),
      ms(percentile(r.ttft, 50)), ms(percentile(r.ttft, 99)),
      ms(percentile(r.tpot, 50)), ms(percentile(r.tpot, 99)), tostring(r.stats.steps) }
    json[#json + 1] = { part = "concurrency", concurrency = c, requests = n,
      prompt_tokens = 64, new_tokens = new_tokens, output_tps = tps, wall_seconds = r.wall,
      ttft_p50 = percentile(r.ttft, 50), ttft_p99 = percentile(r.ttft, 99),
      tpot_p50 = percentile(r.tpot, 50), tpot_p99 = percentile(r.tpot, 99),
      steps = r.stats.steps, preemptions = r.stats.preemptions }
    ctx.log("concurrency %d: %.1f output tok/s", c, tps)
  end
  model:free()
end

-- The KV cache layouts and formats (pio/kv.h), through the model's methods.
local function configure(model, cfg)
  local ok, err = model:kv_configure(cfg)
  if not ok then error("configuring the KV cache: " .. tostring(err), 0) end
end

local function prefix(ctx, rows, json)
  local system = prompt(0, 2000)
  local model = load({ max_seqs = 8, ctx = 2048 + 64 })
  local results = {}
  for _, cache in ipairs { false, true } do
    configure(model, { layout = "paged", block = 16, prefix = cache })
    local function request(r)
      local p = {}
      for i, id in ipairs(system) do p[i] = id end
      for i, id in ipairs(prompt(r, 32, 17)) do p[#system + i] = id end
      return p
    end
    -- One earlier request has run the system prompt (with the cache on, it is cached now);
    -- then 8 arrive at once. Only those 8 are timed.
    serve(model, { request(0) }, 1, 1, 512)
    local prompts = {}
    for r = 1, 8 do prompts[r] = request(r) end
    local r = serve(model, prompts, 8, 8, 512)
    local sum = 0
    for _, t in ipairs(r.ttft) do sum = sum + t end
    results[cache] = r
    r.mean_ttft = sum / #r.ttft
    local ks = model:kv_stats()
    rows[#rows + 1] = { "prefix", cache and "cache on" or "cache off",
      string.format("%.1f", r.generated / r.wall), ms(percentile(r.ttft, 50)),
      ms(percentile(r.ttft, 99)), ms(percentile(r.tpot, 50)), ms(percentile(r.tpot, 99)),
      tostring(r.stats.steps) }
    json[#json + 1] = { part = "prefix", prefix_cache = cache, requests = 8,
      shared_tokens = 2000, own_tokens = 32, new_tokens = 8, wall_seconds = r.wall,
      mean_ttft = r.mean_ttft, output_tps = r.generated / r.wall,
      reused_tokens = r.stats.reused_tokens, prefix_hits = ks.prefix_hits }
    ctx.log("prefix cache %s: %.2f s, %d tokens reused", cache and "on" or "off", r.wall,
            r.stats.reused_tokens)
  end
  local speedup = results[false].wall / results[true].wall
  json[#json + 1] = { part = "prefix_speedup", wall = speedup,
                      ttft = results[false].mean_ttft / results[true].mean_ttft }
  model:free()
  return speedup, results[false].mean_ttft / results[true].mean_ttft
end

-- Preemption: 16 requests (256-token prompts, 64 new tokens: 320 positions each) at once on
-- a paged pool of 160 blocks of 16, room for 8 of them at their full length, so sequences
-- are preempted as they grow; by recompute (their KV dropped and computed again) and by
-- swap (their KV copied to host memory and back).
local function preemption(ctx, rows, json)
  local new_tokens = ctx.quick and 32 or 64
  local model = load({ max_seqs = 16, ctx = 512, kv = { layout = "paged", block = 16, blocks = 160 } })
  local prompts = {}
  for r = 1, 16 do prompts[r] = prompt(r, 256, 31) end
  local out = {}
  for _, mode in ipairs { "recompute", "swap" } do
    local r = serve(model, prompts, new_tokens, 16, 512, mode)
    local st = r.stats
    local minimum = 16 * 256 + 16 * (new_tokens - 1) -- every token through the model once
    rows[#rows + 1] = { "preempt", mode, string.format("%.1f", r.generated / r.wall),
      ms(percentile(r.ttft, 50)), ms(percentile(r.ttft, 99)), ms(percentile(r.tpot, 50)),
      ms(percentile(r.tpot, 99)), tostring(st.steps) }
    json[#json + 1] = { part = "preemption", preempt = mode, requests = 16, prompt_tokens = 256,
      new_tokens = new_tokens, pool_blocks = 160, block = 16, wall_seconds = r.wall,
      output_tps = r.generated / r.wall, preemptions = st.preemptions,
      recomputed_tokens = st.batch_tokens - minimum, swaps_out = st.swaps_out,
      swapped_out_bytes = st.swapped_out_bytes, swap_seconds = st.swap_seconds }
    out[mode] = { wall = r.wall, preemptions = st.preemptions,
                  recomputed = st.batch_tokens - minimum, swapped = st.swapped_out_bytes,
                  swap_seconds = st.swap_seconds }
    ctx.log("preempt %s: %.2f s, %d preemptions, %d tokens recomputed, %.1f MiB swapped",
            mode, r.wall, st.preemptions, st.batch_tokens - minimum, st.swapped_out_bytes / 2 ^ 20)
  end
  model:free()
  return out
end

-- Sequences of 4,096 positions that fit: reserve slot after slot until the pool refuses.
local function fill(model, slots)
  local n = 0
  for slot = 0, slots - 1 do
    if not model:seq_reserve(slot, 4096) then break end
    n = n + 1
  end
  for slot = 0, slots - 1 do model:seq_free(slot) end
  return n
end

-- The capacity part's KV budget: a 4B model's 4k-token sequence alone takes 576 MiB.
local CAPACITY_BUDGET = DEVICE == "cpu" and 256 * 2 ^ 20 or 4 * 2 ^ 30
local CAPACITY_FORMATS = DEVICE == "cpu" and { "bf16", "int8" } or { "bf16" }

local function capacity(ctx, rows, json)
  local budget, ctx_len = CAPACITY_BUDGET, 8192
  local cap_rows = {}
  for _, format in ipairs(CAPACITY_FORMATS) do
    -- Contiguous: every slot owns the whole context, so the budget buys budget ÷ slot bytes slots.
    local probe = load({ max_seqs = 1, ctx = ctx_len })
    configure(probe, { layout = "contiguous", format = format == "int8" and "int8" or "model" })
    local per_slot = probe:kv_stats().bytes
    probe:free()
    local slots = math.floor(budget / per_slot)
    local contiguous = 0
    if slots > 0 then
      local m = load({ max_seqs = slots, ctx = ctx_len })
      configure(m, { layout = "contiguous", format = format == "int8" and "int8" or "model" })
      assert(m:kv_stats().bytes <= budget)
      contiguous = fill(m, slots)
      m:free()
    end
    -- Paged: one pool of the budget's blocks; slots take what they use. Configured as it
    -- loads: 64 contiguous slots of this context would not fit a GPU first.
    local m = load({ max_seqs = 64, ctx = ctx_len, kv = { layout = "paged", block = 16,
                     bytes = budget, format = format == "int8" and "int8" or "model" } })
    local ks = m:kv_stats()
    local paged = fill(m, 64)
    m:free()
    for _, c in ipairs { { "contiguous", contiguous }, { "paged", paged } } do
      cap_rows[#cap_rows + 1] = { format, c[1], tostring(c[2]),
        string.format("%d B", ks.bytes_per_block // ks.block_size) }
      json[#json + 1] = { part = "capacity", format = format, layout = c[1], sequences = c[2],
        sequence_tokens = 4096, context = ctx_len, budget_bytes = budget,
        bytes_per_token = ks.bytes_per_block // ks.block_size }
    end
  end
  return cap_rows
end

return {
  name = "serving",
  run = function(ctx)
    local rows, json = {}, {}
    concurrency(ctx, rows, json)
    local speedup, ttft_speedup = prefix(ctx, rows, json)
    local pre = preemption(ctx, rows, json)
    local cap = capacity(ctx, rows, json)
    ctx.out:write(DEVICE ~= "cpu" and ("\n%s on %s\n"):format(MODEL, DEVICE) or "\n")
    ctx.print_table(ctx.out, { "part", "case", "output t/s", "TTFT p50 ms", "TTFT p99 ms",
                               "TPOT p50 ms", "TPOT p99 ms", "steps" }, rows)
    ctx.out:write(string.format("\nprefix reuse on a shared 2,000-token system prompt: %.2fx "
      .. "faster overall, %.2fx lower mean TTFT\n", speedup, ttft_speedup))
    ctx.out:write(string.format("preemption (16 requests, room for 8): recompute %.2f s, %d "
      .. "preemptions, %d tokens computed again; swap %.2f s, %d preemptions, %.1f MiB to host "
      .. "and back in %.3f s, %d tokens computed again\n\n", pre.recompute.wall,
      pre.recompute.preemptions, pre.recompute.recomputed, pre.swap.wall, pre.swap.preemptions,
      pre.swap.swapped / 2 ^ 20, pre.swap.swap_seconds, pre.swap.recomputed))
    ctx.print_table(ctx.out, { "KV format", "layout",
                               ("4k-token sequences in %d MiB"):format(CAPACITY_BUDGET // 2 ^ 20),
                               "KV bytes/token" }, cap)
    if DEVICE ~= "cpu" then return { rows = json, device = DEVICE, model = MODEL } end
    return { rows = json }
  end,
}
