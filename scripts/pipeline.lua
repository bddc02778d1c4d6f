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

-- Each stage is a named function; a failure says which stage and why.
local function run_stages(stages, state)
  for i, stage in ipairs(stages) do
    local ok, err = pcall(stage.run, state)
    if not ok then
      io.stderr:write(string.format("stage %d (%s): %s\n", i, stage.name, tostring(err)))
      os.exit(1)
    end
  end
  return state
end

run_stages({
  { name = "load", run = function(s)
      s.model = assert(pio.load(model_dir, { dtype = "bf16" }))
      local info = s.model:info()
      io.stderr:write(string.format("model: %s, %d layers, %.1f M parameters, %s on %s, %d threads\n",
        info.architecture, info.n_layer, info.parameters / 1e6, info.dtype, info.device, info.threads))
    end },
  { name = "tokenize", run = function(s)
      s.ids = s.model.tokenizer:encode(prompt)
    end },
  { name = "generate", run = function(s)
      io.write(prompt)
      io.flush()
      for piece in s.model:stream(s.ids, { max_new_tokens = max_new, temperature = 0.8, seed = 42 }) do
        io.write(piece)
        io.flush()
      end
      io.write("\n")
    end },
  { name = "report", run = function(s)
      local st = s.model:last_stats()
      io.stderr:write(string.format("[%d prompt tokens at %.1f tok/s; %d new tokens at %.1f tok/s; stop: %s]\n",
        st.prompt_tokens, st.prompt_tokens_per_second, st.new_tokens, st.tokens_per_second,
        st.stop_reason or "?"))
    end },
}, {})
