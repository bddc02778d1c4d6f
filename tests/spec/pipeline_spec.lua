-- pio.pipeline: named stages with hooks; errors name their stage; the
-- ready-made completion, chat and batch pipelines.
local pio = require "pio"

local fixtures = os.getenv("PIO_FIXTURES") or "tests/fixtures"
local tiny = fixtures .. "/qwen3-gqa2"
local GREEDY = { max_new_tokens = 6, temperature = 0, ignore_eos = true }

-- Qwen's ChatML, for the fixture (its tokenizer_config.json has no template).
local function chatml(messages)
  local out = {}
  for _, msg in ipairs(messages) do
    out[#out + 1] = "<|im_start|>" .. msg.role .. "\n" .. msg.content .. "<|im_end|>\n"
  end
  return table.concat(out) .. "<|im_start|>assistant\n"
end

describe("pio.pipeline #qwen3", function()
  local m
  setup(function() m = assert(pio.load(tiny, { dtype = "f32", threads = 2 })) end)
  teardown(function() m:free() end)

  it("has the six named stages in order by default", function()
    local p = pio.pipeline { model = m }
    assert.same({ "template", "tokenize", "prefill", "decode", "detokenize", "postprocess" }, p:stage_names())
    assert.equal("pio.Pipeline(pipeline: template → tokenize → prefill → decode → detokenize → postprocess)",
      tostring(p))
  end)

  it("completion gives what model:generate gives, with every stage timed", function()
    local p = pio.pipelines.completion(m)
    local text, ctx = p:run("Once upon a time", GREEDY)
    assert.equal(m:generate("Once upon a time", GREEDY), text)
    assert.equal(6, #ctx.tokens)
    assert.same(m.tokenizer:encode("Once upon a time"), ctx.ids)
    for _, name in ipairs(p:stage_names()) do assert.is_true(ctx.timings[name] >= 0, name) end
    assert.equal(text, (p:run(m.tokenizer:encode("Once upon a time"), GREEDY))) -- ids skip the template
  end)

  it("runs hooks before and after each stage, in order", function()
    local seen = {}
    local p = pio.pipelines.completion(m)
    p:before("*", function(_, stage) seen[#seen + 1] = "before " .. stage end)
     :after("tokenize", function(ctx) seen[#seen + 1] = "ids " .. #ctx.ids end)
     :before("decode", function() seen[#seen + 1] = "decoding" end)
    p:run("Hi", { max_new_tokens = 2, temperature = 0 })
    assert.same({ "before template", "before tokenize", "ids " .. #m.tokenizer:encode("Hi"),
                  "before prefill", "before decode", "decoding", "before detokenize",
                  "before postprocess" }, seen)
  end)

  it("takes custom stages and replacements, and streams with on_piece", function()
    local pieces = {}
    local p = pio.pipeline {
      model = m, name = "shout",
      "template", "tokenize", "prefill", "decode", "detokenize",
      { "postprocess", function(ctx) ctx.output = ctx.text:upper() end },
      { name = "count", run = function(ctx) ctx.count = #ctx.output end },
      on_piece = function(piece) pieces[#pieces + 1] = piece end,
    }
    local out, ctx = p:run("Hello", GREEDY)
    assert.equal(m:generate("Hello", GREEDY):upper(), out)
    assert.equal(#out, ctx.count)
    assert.equal(ctx.text, table.concat(pieces))
  end)

  it("names the stage of a failure", function()
    local p = pio.pipelines.completion(m)
    assert.has_error(function() p:run(42) end,
      "stage 1 (template): the input must be text, a list of token ids or a list of chat messages, got number")
    assert.has_error(function() p:run("x", { max_tokens = 1 }) end,
      "stage 3 (prefill): generate: unknown option 'max_tokens' (known: max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty, penalty_last_n, seed, stop, ignore_eos)")
    local boom = pio.pipeline { model = m, "template", { "explode", function() error("kaboom", 0) end } }
    assert.has_error(function() boom:run("x") end, "stage 2 (explode): kaboom")
    p:after("tokenize", function() error("hook failed", 0) end)
    assert.has_error(function() p:run("x") end, "stage 2 (tokenize): hook failed")
    local no_tok = pio.pipeline { model = { tokenizer = nil }, "template", "tokenize" }
    assert.has_error(function() no_tok:run("x") end,
      "stage 2 (tokenize): this model has no tokenizer: pass token ids instead of text")
  end)

  it("rejects bad pipelines with exact messages", function()
    assert.has_error(function() pio.pipeline("x") end,
      "pio.pipeline: expected a table of stages and options, got string")
    assert.has_error(function() pio.pipeline { "template", "tokenise" } end,
      "pio.pipeline: stage 2: no built-in stage 'tokenise' (built-in: template, tokenize, prefill, decode, detokenize, postprocess)")
    assert.has_error(function() pio.pipeline { "template", "template" } end,
      "pio.pipeline: stage 'template' appears twice")
    assert.has_error(function() pio.pipeline { { "x" } } end,
      "pio.pipeline: stage 1 must be { name, function }")
    assert.has_error(function() pio.pipeline { modle = m } end,
      "pio.pipeline: unknown option 'modle' (known: chat, model, name, on_piece, options, postprocess, system, template)")
    local p = pio.pipeline { model = m }
    assert.has_error(function() p:before("decoding", function() end) end,
      "before: no stage 'decoding' in this pipeline (stages: template, tokenize, prefill, decode, detokenize, postprocess)")
    assert.has_error(function() p:after("decode", "f") end, "after: the hook must be a function, got string")
  end)
end)

describe("pio.pipelines #qwen3", function()
  local m
  setup(function() m = assert(pio.load(tiny, { dtype = "f32", threads = 2 })) end)
  teardown(function() m:free() end)

  it("chat renders messages through the template and returns the reply", function()
    local p = pio.pipelines.chat(m, { template = chatml, system = "Be brief." })
    local reply, ctx = p:run({ { role = "user", content = "Hi" } }, GREEDY)
    assert.equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
      ctx.prompt)
    assert.equal(m:generate(ctx.prompt, GREEDY), reply)
    assert.same({ role = "assistant", content = reply }, ctx.reply)
    local again = p:run("Hi", GREEDY) -- text is a user message
    assert.equal(reply, again)
  end)

  it("chat without a template says so (until the tokenizer renders chat templates)", function()
    if m.tokenizer.apply_chat_template then return pending("the tokenizer renders chat templates") end
    assert.has_error(function() pio.pipelines.chat(m):run("Hi") end,
      "stage 1 (template): no chat template: this model's tokenizer cannot render chat messages; give the pipeline template = function(messages) return text end")
  end)

  it("batch runs each input and names the one that fails", function()
    local b = pio.pipelines.batch(m)
    local outs = b:run({ "one", "two", m.tokenizer:encode("three") }, GREEDY)
    assert.equal(3, #outs)
    assert.equal(m:generate("two", GREEDY), outs[2])
    assert.has_error(function() b:run({ "one", 7 }, GREEDY) end,
      "input 2: stage 1 (template): the input must be text, a list of token ids or a list of chat messages, got number")
    assert.has_error(function() b:run("one") end, "batch: inputs must be a list, got string")
    assert.equal("pio.Pipeline(batch of pio.Pipeline(batch: template → tokenize → prefill → decode → detokenize → postprocess))",
      tostring(b))
  end)
end)

describe("the example scripts #qwen3", function()
  local exe = (os.getenv("PIO_BUILD_DIR") or "build") .. "/pio"
  for _, script in ipairs { "scripts/pipeline.lua", "scripts/pipeline_chat.lua", "scripts/pipeline_batch.lua",
                            "scripts/composition.lua" } do
    it(script .. " runs on the fixture", function()
      local p = io.popen(string.format("%s %s %s 2>&1; echo rc=$?", exe, script, tiny))
      local out = p:read("a")
      p:close()
      assert.matches("rc=0\n$", out, nil, out)
    end)
  end
end)
