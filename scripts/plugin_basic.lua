-- The seed's basic usage, as written:
--   pio scripts/plugin_basic.lua [MODEL_DIR]
-- Without MODEL_DIR it uses the tiny random-weight Qwen3 in tests/fixtures
-- (its text is gibberish by design); with models/Qwen3-4B-Instruct-2507 it is
-- the real model. Without weights, load_model says what to download and where.
local pio = require "pio"

local here = debug.getinfo(1, "S").source:match("^@(.*)/scripts/[^/]*$") or "."
local model_path = arg[1] or (here .. "/tests/fixtures/qwen3-gqa2")

local plugin = pio.create_qwen3_4b_instruct_2507_plugin()
plugin:initialize { model_path = model_path, device = "cpu", dtype = "bf16", max_new_tokens = 32 }
assert(plugin:load_model())
print(plugin)
print(plugin:infer("Your input text"))
plugin:cleanup()
