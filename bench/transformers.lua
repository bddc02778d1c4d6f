-- bench/transformers.lua: a peer for `pio bench` suites on the GPU (bench/cuda.lua):
-- transformers with the same architecture and shapes (the suite's config.json),
-- random bf16 weights made on the device (speed does not depend on the values),
-- sdpa attention, run by bench/peers/transformers_bench.py with the python3
-- that has torch and transformers (PIO_BENCH_TORCH_PYTHON, default python3).
local M = { name = "transformers" }

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "bench"
local build_text

local bench = require "pio.bench"
local quote, run_capture = bench.shell_quote, bench.run_capture

local function python()
  local env = os.getenv("PIO_BENCH_TORCH_PYTHON")
  return (env and env ~= "") and env or "python3"
end


function M.describe() return build_text or "not run" end

function M.prepare(ctx)
  local ok, out = run_capture(quote(python()) ..
    " -c 'import torch, transformers; assert torch.cuda.is_available(), \"no CUDA in torch\"' 2>&1")
  if not ok then return nil, "no usable torch + transformers with CUDA: " .. out:sub(-200) end
  return ctx.spec.path:match("^(.*)/[^/]*$") or "."
end

function M.run(dir, ctx)
  local args = {}
  for _, s in ipairs(ctx.specs) do
    args[#args + 1] = quote(string.format("%d,%d,%d,%s", s.n_prompt, s.n_gen, s.depth, s.name))
  end
  local ok, out = run_capture(string.format("%s %s %s %d %s 2>&1", quote(python()),
    quote(here .. "/peers/transformers_bench.py"), quote(dir), ctx.reps, table.concat(args, " ")))
  local results, build = bench.parse_peer_output(out)
  build_text = build or build_text
  if not ok and next(results) == nil then return nil, "transformers_bench.py failed: " .. out:sub(-2000) end
  return results
end

return M
