-- pio.chat and tok:apply_chat_template: the models' own chat templates,
-- rendered byte for byte as transformers 5.24.0 renders them
-- (tests/fixtures/chat/expected.json, written by scripts/make_chat_fixtures.py),
-- through pio.chat.render and through the tokenizers that carry them.
-- The real Qwen3 template is read in place from ../shared (or the directory in
-- PIO_QWEN3_TOKENIZER_DIR); the cases that need it are pending without it.
local pio = require "pio"
local json = require "pio.json"
local chat = require "pio.chat"

local CHAT = "tests/fixtures/chat/"
local GLM_DIR = "tests/fixtures/tokenizer/glm4"
local QWEN3_DIR = os.getenv("PIO_QWEN3_TOKENIZER_DIR") or "../shared/data/qwen3-tokenizer"

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local have_qwen3 = read(QWEN3_DIR .. "/tokenizer.json") ~= nil

-- The Qwen3 hybrid-thinking template, derived from the shared one as the
-- fixture script derives it.
local GEN = "    {{- '<|im_start|>assistant\\n<think>\\n' }}\n"
local HYBRID = "    {{- '<|im_start|>assistant\\n' }}\n"
  .. "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
  .. "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
  .. "    {%- endif %}\n"

local templates = {
  ["qwen3-coder"] = read(CHAT .. "qwen3-coder.jinja"),
  ["qwen3-vl"] = read(CHAT .. "qwen3-vl.jinja"),
  ["glm-4.7-flash"] = read(CHAT .. "glm-4.7-flash.jinja"),
}
if have_qwen3 then
  local qwen3 = json.decode(read(QWEN3_DIR .. "/tokenizer_config.json")).map.chat_template
  local a, b = qwen3:find(GEN, 1, true)
  templates.qwen3 = qwen3
  templates["qwen3-hybrid"] = qwen3:sub(1, a - 1) .. HYBRID .. qwen3:sub(b + 1)
end

-- Special-token variables as each reference tokenizer's tokenizer_config.json has them.
local SPECIALS = {
  qwen = { eos_token = "<|im_end|>", pad_token = "<|endoftext|>" },
  glm = { eos_token = "<|endoftext|>", pad_token = "<|endoftext|>" },
}

local fixture = json.decode(read(CHAT .. "conversations.json"))
local conversations = {}
for i = 1, fixture.map.conversations.n do
  local c = fixture.map.conversations[i]
  conversations[c.map.name] = c.map
end
local renders = json.decode(read(CHAT .. "expected.json")).map.renders

local function options(r, conv)
  local opts = {}
  for _, k in ipairs(r.options.keys) do opts[k] = r.options.map[k] end
  if conv.tools then opts.tools = conv.tools end
  return opts
end

describe("pio.chat", function()
  it("renders every template over every conversation as transformers does", function()
    local exact, errors, skipped = 0, 0, 0
    for i = 1, renders.n do
      local r = renders[i].map
      local template = templates[r.template]
      if not template then
        skipped = skipped + 1
      else
        local conv = conversations[r.conversation]
        local specials = r.template == "glm-4.7-flash" and SPECIALS.glm or SPECIALS.qwen
        local ok, out = pcall(chat.render, template, conv.messages, options(r, conv), specials)
        local label = ("%s / %s / %s"):format(r.template, r.conversation, json.encode(r.options))
        if r.text then
          assert.is_true(ok, label .. ": " .. tostring(out))
          assert.equal(r.text, out, label)
          exact = exact + 1
        else
          -- transformers raised (the template does not support this input): so must pio
          assert.is_false(ok, label .. " should fail: " .. r.error)
          assert.matches("^chat template line %d+: ", out)
          errors = errors + 1
        end
      end
    end
    if not have_qwen3 then pending("Qwen3 template not found in " .. QWEN3_DIR .. ": " .. skipped .. " renders skipped") end
    assert.is_true(exact > 100 and errors > 5)
  end)

  it("passes the template's own error on, with its line", function()
    -- GLM's template iterates tool-call arguments with .items(): a JSON string has none
    local conv = conversations.tool_string_args
    local ok, err = pcall(chat.render, templates["glm-4.7-flash"], conv.messages, { tools = conv.tools })
    assert.is_false(ok)
    assert.equal("chat template line 66: 'str object' has no attribute 'items'", err)
    ok, err = pcall(chat.render, "{{ raise_exception('only user and assistant roles are supported') }}",
      { { role = "user", content = "x" } })
    assert.equal("chat template line 1: only user and assistant roles are supported", err)
  end)

  it("takes messages and tools as Lua tables or JSON text", function()
    local t = templates["qwen3-vl"]
    local from_lua = chat.render(t, { { role = "user", content = "Hello!" } }, { add_generation_prompt = true })
    local from_json = chat.render(t, '[{"role": "user", "content": "Hello!"}]', { add_generation_prompt = true })
    assert.equal("<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n", from_lua)
    assert.equal(from_lua, from_json)
    -- tojson prints a tool from JSON text in its own key order; a Lua table has
    -- none, so its keys come sorted.
    local tool = '{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}'
    local msgs = { { role = "user", content = "x" } }
    assert.matches('\n{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}\n',
      chat.render(t, msgs, { tools = "[" .. tool .. "]" }), 1, true)
    assert.matches('\n{"function": {"name": "f", "parameters": {"type": "object"}}, "type": "function"}\n',
      chat.render(t, msgs, { tools = { { type = "function", ["function"] = { name = "f", parameters = { type = "object" } } } } }),
      1, true)
    -- null fields are dropped, as transformers drops None
    assert.equal(chat.render(t, '[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]'),
      chat.render(t, '[{"role": "user", "content": "a", "name": null}, {"role": "assistant", "content": "b", "tool_calls": null}]'))
  end)

  it("rejects malformed messages and tools with a clear message", function()
    local t = templates["qwen3-vl"]
    local function err(messages, opts)
      local ok, e = pcall(chat.render, t, messages, opts)
      assert.is_false(ok)
      return e
    end
    assert.equal("messages: invalid JSON at line 1, column 18: expected ',' or '}'",
      err('[{"role": "user" "content": "x"}]'))
    assert.equal("messages: invalid JSON at line 1, column 1: unexpected character 'h'", err("hello"))
    assert.equal("messages must be a list of messages (a table or JSON text), got number", err(42))
    assert.equal("messages must be a list of messages, not an object", err('{"role": "user"}'))
    assert.equal("Cannot apply chat template to an empty conversation. Provide at least one message.", err("[]"))
    assert.equal("message 2 is not an object (a table with role and content)",
      err({ { role = "user", content = "a" }, "b" }))
    assert.equal("tools: invalid JSON at line 1, column 3: extra data after the value",
      err({ { role = "user", content = "a" } }, { tools = "[]]" }))
    assert.equal("tools must be a list of tool definitions, not an object",
      err({ { role = "user", content = "a" } }, { tools = '{"type": "function"}' }))
    assert.equal("tool 1 is not an object (a JSON schema)", err({ { role = "user", content = "a" } }, { tools = { "f" } }))
  end)

  it("has a documented fallback per family", function()
    local msgs = { { role = "system", content = "S" }, { role = "user", content = "U" },
                   { role = "assistant", content = "A" }, { role = "tool", content = "T" } }
    assert.equal("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
      .. "<|im_start|>tool\nT<|im_end|>\n<|im_start|>assistant\n",
      chat.render(chat.fallbacks.chatml, msgs, { add_generation_prompt = true }))
    assert.equal("[gMASK]<sop><|system|>S<|user|>U<|assistant|>A<|observation|>T<|assistant|></think>",
      chat.render(chat.fallbacks.glm, msgs, { add_generation_prompt = true, enable_thinking = false }))
    assert.equal("[gMASK]<sop><|user|>U<|assistant|><think>",
      chat.render(chat.fallbacks.glm, { msgs[2] }, { add_generation_prompt = true }))
  end)
end)

describe("tok:apply_chat_template", function()
  it("uses a GLM-4.7-Flash-style directory's chat_template.jinja, and its ids match transformers'", function()
    local tok = assert(pio.tokenizer(GLM_DIR))
    local text, source = tok:chat_template()
    assert.equal(templates["glm-4.7-flash"], text)
    assert.equal(GLM_DIR .. "/chat_template.jinja", source)
    local checked = 0
    for i = 1, renders.n do
      local r = renders[i].map
      if r.template == "glm-4.7-flash" and r.text then
        local conv = conversations[r.conversation]
        local out = tok:apply_chat_template(conv.messages, options(r, conv))
        assert.equal(r.text, out)
        if r.ids then
          local ids = tok:encode(out)
          assert.equal(r.ids.n, #ids)
          for k = 1, #ids do assert.equal(r.ids[k], ids[k], r.conversation .. " id " .. k) end
        end
        checked = checked + 1
      end
    end
    assert.is_true(checked >= 50)
  end)

  it("uses the real Qwen3 tokenizer_config.json template, and its ids match transformers'", function()
    if not have_qwen3 then return pending("Qwen3 tokenizer not found in " .. QWEN3_DIR) end
    local tok = assert(pio.tokenizer(QWEN3_DIR))
    local _, source = tok:chat_template()
    assert.equal(QWEN3_DIR .. "/tokenizer_config.json", source)
    local checked, with_ids = 0, 0
    for i = 1, renders.n do
      local r = renders[i].map
      if r.template == "qwen3" and r.text then
        local conv = conversations[r.conversation]
        local out = tok:apply_chat_template(conv.messages, options(r, conv))
        assert.equal(r.text, out)
        if r.ids then
          local ids = tok:encode(out)
          assert.equal(r.ids.n, #ids)
          for k = 1, #ids do assert.equal(r.ids[k], ids[k], r.conversation .. " id " .. k) end
          with_ids = with_ids + 1
        end
        checked = checked + 1
      end
    end
    assert.is_true(checked >= 50 and with_ids >= 10)
    -- a template given in the options wins over the model's
    assert.equal("X", tok:apply_chat_template({ { role = "user", content = "x" } }, { chat_template = "X" }))
  end)

  it("falls back to the family format where a model ships no template", function()
    local tok = assert(pio.tokenizer("tests/fixtures/qwen3-gqa1"))
    local _, source = tok:chat_template()
    assert.equal("fallback: chatml", source)
    assert.equal("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
      tok:apply_chat_template({ { role = "user", content = "hi" } }, { add_generation_prompt = true }))
  end)

  it("rejects bad options", function()
    local tok = assert(pio.tokenizer("tests/fixtures/qwen3-gqa1"))
    assert.has_error(function() tok:apply_chat_template({ { role = "user", content = "x" } }, 5) end,
      "bad argument #2 to 'apply_chat_template' (table expected, got number)")
    assert.has_error(function() tok:apply_chat_template("[1,") end,
      "messages: invalid JSON at line 1, column 4: unexpected end of text")
  end)
end)

describe("model:generate and model:stream with chat messages", function()
  local m = assert(pio.load("tests/fixtures/qwen3-gqa1"))
  local msgs = { { role = "system", content = "Be brief." }, { role = "user", content = "Hello there" } }
  local ids = m.tokenizer:encode(m.tokenizer:apply_chat_template(msgs, { add_generation_prompt = true }))

  it("render the model's template with a generation prompt", function()
    local want, wstats = m:generate(ids, { max_new_tokens = 6, temperature = 0 })
    local got, stats = m:generate(msgs, { max_new_tokens = 6, temperature = 0 })
    assert.equal(want, got)
    assert.equal(#ids, stats.prompt_tokens)
    assert.same(wstats.tokens, stats.tokens)
    local json_got = m:generate(json.encode(json.from_lua(msgs)), { max_new_tokens = 6, temperature = 0 })
    assert.equal(want, json_got)
    local parts = {}
    for piece in m:stream(msgs, { max_new_tokens = 6, temperature = 0, enable_thinking = false }) do
      parts[#parts + 1] = piece
    end
    assert.equal(want, table.concat(parts))
    assert.equal(#ids, m:last_stats().prompt_tokens)
  end)

  it("keep chat options apart from generation options", function()
    local _, stats = m:generate(msgs, { max_new_tokens = 2, temperature = 0, add_generation_prompt = false,
                                        chat_template_kwargs = { foo = 1 } })
    local bare = m.tokenizer:encode(m.tokenizer:apply_chat_template(msgs)) -- no "<|im_start|>assistant\n"
    assert.equal(#bare, stats.prompt_tokens)
    assert.is_true(#bare < #ids)
    assert.has_error(function() m:generate(msgs, { chat_template_kwargs = 3 }) end,
      "chat_template_kwargs must be a table, got number")
  end)
end)
