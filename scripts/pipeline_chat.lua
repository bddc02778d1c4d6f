-- A chat pipeline: messages in, the assistant's reply out.
--   pio scripts/pipeline_chat.lua [MODEL_DIR] [QUESTION]
-- The template is the model's own chat template where its tokenizer renders
-- one; otherwise (the fixtures ship none) Qwen's ChatML, written out here.
local pio = require "pio"

local here = debug.getinfo(1, "S").source:match("^@(.*)/scripts/[^/]*$") or "."
local model_dir = arg[1] or (here .. "/tests/fixtures/qwen3-gqa2")
local question = arg[2] or "What is a tokenizer?"

local model = assert(pio.load(model_dir, { dtype = "bf16" }))

local function chatml(messages)
  local out = {}
  for _, msg in ipairs(messages) do
    out[#out + 1] = "<|im_start|>" .. msg.role .. "\n" .. msg.content .. "<|im_end|>\n"
  end
  return table.concat(out) .. "<|im_start|>assistant\n"
end

local chat = pio.pipelines.chat(model, {
  system = "You are a concise assistant.",
  template = not model.tokenizer.apply_chat_template and chatml or nil,
  postprocess = function(text) return (text:gsub("^%s+", ""):gsub("%s+$", "")) end,
})

local messages = { { role = "user", content = question } }
local reply, ctx = chat:run(messages, { max_new_tokens = 48, temperature = 0.7, seed = 1 })
print("user:      " .. question)
print("assistant: " .. reply)
io.stderr:write(string.format("[prompt %d tokens; %d new tokens; template %.1f ms, prefill %.1f ms, decode %.1f ms]\n",
  #ctx.ids, ctx.stats.new_tokens, ctx.timings.template * 1e3, ctx.timings.prefill * 1e3,
  ctx.timings.decode * 1e3))
model:free()
