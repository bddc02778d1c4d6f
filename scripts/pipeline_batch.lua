-- A batch pipeline: several prompts in, their completions out, in order.
--   pio scripts/pipeline_batch.lua [MODEL_DIR]
-- (They run one after another; concurrent sequences come with the scheduler.)
local pio = require "pio"

local here = debug.getinfo(1, "S").source:match("^@(.*)/scripts/[^/]*$") or "."
local model_dir = arg[1] or (here .. "/tests/fixtures/qwen3-gqa2")

local model = assert(pio.load(model_dir, { dtype = "bf16" }))
local batch = pio.pipelines.batch(model)
batch:after("decode", function(ctx) io.stderr:write(string.format("  %d tokens\n", #ctx.pieces)) end)

local prompts = { "The capital of France is", "def fibonacci(n):", "Once upon a time" }
local outputs = batch:run(prompts, { max_new_tokens = 16, temperature = 0 })
for i, prompt in ipairs(prompts) do
  print(string.format("%d. %s|%s", i, prompt, outputs[i]))
end
local t = batch:last_timings()
io.stderr:write(string.format("[prefill %.1f ms, decode %.1f ms over %d prompts]\n", t.prefill * 1e3,
  t.decode * 1e3, #prompts))
model:free()
