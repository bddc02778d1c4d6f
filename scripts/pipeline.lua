-- The main job: a small Lua pipeline over a Qwen3 model.
--   pio scripts/pipeline.lua [MODEL_DIR] [PROMPT] [MAX_NEW_TOKENS]
-- Without MODEL_DIR it runs the tiny random-weight Qwen3 that ships in
-- tests/fixtures (its text is gibberish by design: the point is the pipeline).
-- With a downloaded checkpoint, e.g. models/Qwen3-4B-Instruct-2507, it is the
-- same script:  pio scripts/pipeline.lua models/Qwen3-4B-Instruct-2507 "Hello"
local pio = require "pio"

local here = debug.getinfo(1, "S").source:match("^@(.*)/scripts/[^/]*$") or "."
local model_dir = arg[1] or (here .. "/tests/fixtures/qwen3-gqa2")
local prompt = arg[2] or "The quick brown fox"
local max_new = tonumber(arg[3] or "32")

local model, err = pio.load(model_dir, { dtype = "bf16" })
if not model then
  io.stderr:write("load: ", err, "\n")
  os.exit(1)
end
local info = model:info()
io.stderr:write(string.format("model: %s, %d layers, %.1f M parameters, %s on %s, %d threads\n",
  info.architecture, info.n_layer, info.parameters / 1e6, info.dtype, info.device, info.threads))

-- The completion pipeline's stages (template, tokenize, prefill, decode,
-- detokenize, postprocess), streaming each piece as it is decoded; a
-- failure names its stage.
local pipeline = pio.pipelines.completion(model, {
  on_piece = function(piece)
    io.write(piece)
    io.flush()
  end,
})
pipeline:before("prefill", function()
  io.write(prompt)
  io.flush()
end)
pipeline:after("detokenize", function(ctx)
  io.write("\n")
  local st = ctx.stats
  io.stderr:write(string.format("[%d prompt tokens at %.1f tok/s; %d new tokens at %.1f tok/s; stop: %s]\n",
    st.prompt_tokens, st.prompt_tokens_per_second, st.new_tokens, st.tokens_per_second,
    st.stop_reason or "?"))
end)

local ok, failure = pcall(pipeline.run, pipeline, prompt, { max_new_tokens = max_new, temperature = 0.8, seed = 42 })
if not ok then
  io.stderr:write(tostring(failure), "\n")
  os.exit(1)
end
model:free()
