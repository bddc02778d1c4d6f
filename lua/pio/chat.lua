--- pio.chat: a model's chat template applied to a conversation, the way
-- transformers' tokenizer.apply_chat_template(..., tokenize=False) does it.
--
--   local chat = require "pio.chat"
--   local text = chat.apply_chat_template(tok, messages, { add_generation_prompt = true,
--                                                         tools = tools, enable_thinking = false })
--
-- messages and tools are Lua tables or JSON text. From JSON text, objects keep
-- their key order, so `tojson` prints a tool schema as Python would; plain Lua
-- tables have no key order and are printed with sorted keys (build them with
-- pio.json.object / pio.json.decode to control the order).
--
-- The template is the model's own, looked for as transformers does: the
-- directory's chat_template.jinja, then tokenizer_config.json's chat_template
-- (a string, or named templates: "tool_use" when tools are given, else
-- "default"), then a processor's chat_template.json. A model without one gets
-- its family's fallback (see M.fallbacks): ChatML for Qwen, GLM's own format
-- for GLM. Template variables are those transformers passes: messages (with
-- null fields dropped and reasoning fields aliased), tools, documents,
-- add_generation_prompt, the special tokens named in tokenizer_config.json
-- (bos_token, eos_token, ...), and every other option given.
local json = require "pio.json"
local jinja = require "pio.jinja"

local M = {}

local null = json.null

-- Family fallbacks for models that ship no template.
M.fallbacks = {
  -- ChatML, as Qwen's models use it: <|im_start|>role\ncontent<|im_end|>\n.
  chatml = "{%- for message in messages %}"
    .. "{{- '<|im_start|>' + message.role + '\\n' }}"
    .. "{%- if message.content is string %}{{- message.content }}"
    .. "{%- else %}{%- for part in message.content %}{%- if part.type == 'text' %}{{- part.text }}{%- endif %}"
    .. "{%- endfor %}{%- endif %}"
    .. "{{- '<|im_end|>\\n' }}"
    .. "{%- endfor %}"
    .. "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
  -- GLM-4.x: [gMASK]<sop>, then <|role|>content with no newline; tool results
  -- under <|observation|>; the generation prompt opens (or, with
  -- enable_thinking=false, closes) the thinking block, as GLM-4.7 does.
  glm = "[gMASK]<sop>"
    .. "{%- for m in messages %}"
    .. "{%- set role = 'observation' if m.role == 'tool' else m.role %}"
    .. "{{- '<|' + role + '|>' }}"
    .. "{%- if m.content is string %}{{- m.content }}"
    .. "{%- else %}{%- for part in m.content %}{%- if part.type == 'text' %}{{- part.text }}{%- endif %}"
    .. "{%- endfor %}{%- endif %}"
    .. "{%- endfor %}"
    .. "{%- if add_generation_prompt %}<|assistant|>"
    .. "{{- '</think>' if (enable_thinking is defined and not enable_thinking) else '<think>' }}{%- endif %}",
}

-- Options that steer apply_chat_template itself; all others become template variables.
local CONTROL = { add_generation_prompt = true, tools = true, documents = true, chat_template = true }

-- transformers passes the special tokens named in tokenizer_config.json.
local SPECIAL_KEYS = { "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token" }

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

local function decode_file(path)
  local text = read_file(path)
  if not text then return nil end
  local ok, v = pcall(json.decode, text)
  if not ok then error(path .. ": " .. v, 0) end
  return v
end

local function get(obj, key)
  if json.is_object(obj) then return obj.map[key] end
  return nil
end

--- The family of a model directory: "glm", "qwen" or nil, from config.json
-- (model_type, architectures) or, failing that, from the tokenizer's tokens.
local function family(dir, tok)
  local config = dir and decode_file(dir .. "/config.json")
  local names = {}
  local mt = get(config, "model_type")
  if type(mt) == "string" then names[#names + 1] = mt end
  local archs = get(config, "architectures")
  if json.is_array(archs) then
    for i = 1, archs.n do if type(archs[i]) == "string" then names[#names + 1] = archs[i] end end
  end
  for _, n in ipairs(names) do
    n = n:lower()
    if n:find("glm", 1, true) then return "glm" end
    if n:find("qwen", 1, true) then return "qwen" end
  end
  if tok then
    if tok:token_to_id("[gMASK]") and tok:token_to_id("<sop>") then return "glm" end
    if tok:token_to_id("<|im_start|>") and tok:token_to_id("<|im_end|>") then return "qwen" end
  end
  return nil
end

--- What a model directory says about chat: { templates = {name → text} or
-- nil, template = text or nil, source = where it came from, specials = {var
-- → token text} }.
function M.load_config(dir, tok)
  local info = { specials = {} }
  local config = dir and decode_file(dir .. "/tokenizer_config.json")
  for _, key in ipairs(SPECIAL_KEYS) do
    local v = get(config, key)
    if json.is_object(v) then v = v.map.content end
    if type(v) == "string" then info.specials[key] = v end
  end
  local jinja_file = dir and read_file(dir .. "/chat_template.jinja")
  local ct = get(config, "chat_template")
  if jinja_file then
    info.template, info.source = jinja_file, dir .. "/chat_template.jinja"
  elseif type(ct) == "string" then
    info.template, info.source = ct, dir .. "/tokenizer_config.json"
  elseif json.is_array(ct) then
    info.templates, info.source = {}, dir .. "/tokenizer_config.json"
    for i = 1, ct.n do
      local name, text = get(ct[i], "name"), get(ct[i], "template")
      if type(name) == "string" and type(text) == "string" then info.templates[name] = text end
    end
  else
    local processor = dir and decode_file(dir .. "/chat_template.json")
    local t = get(processor, "chat_template")
    if type(t) == "string" then info.template, info.source = t, dir .. "/chat_template.json" end
  end
  if not info.template and not info.templates then
    local fam = family(dir, tok)
    if fam == "glm" then
      info.template, info.source = M.fallbacks.glm, "fallback: glm"
    elseif fam == "qwen" then
      info.template, info.source = M.fallbacks.chatml, "fallback: chatml"
    end
  end
  return info
end

-- Per tokenizer (weak keys): its chat configuration, read once.
local configs = setmetatable({}, { __mode = "k" })
-- Compiled templates by text.
local compiled = {}

local function config_of(tok)
  local info = configs[tok]
  if not info then
    info = M.load_config(tok:dir(), tok)
    configs[tok] = info
  end
  return info
end

--- The template text a tokenizer would use (with tools or not), and its source.
function M.template_of(tok, with_tools)
  local info = config_of(tok)
  if info.templates then
    local t = (with_tools and info.templates.tool_use) or info.templates.default
    if not t then
      local names = {}
      for k in pairs(info.templates) do names[#names + 1] = k end
      table.sort(names)
      error("this model has several chat templates and no default: " .. table.concat(names, ", "), 0)
    end
    return t, info.source
  end
  return info.template, info.source
end

local function compile(text)
  local t = compiled[text]
  if not t then
    t = jinja.compile(text, "chat template")
    compiled[text] = t
  end
  return t
end

--- Messages (Lua table or JSON text) as transformers hands them to the
-- template: a list of dicts, null fields dropped, reasoning aliased.
function M.messages(messages)
  if type(messages) == "string" then
    local ok, v = pcall(json.decode, messages)
    if not ok then error("messages: " .. v, 0) end
    messages = v
  end
  if type(messages) ~= "table" or messages == null then
    error("messages must be a list of messages (a table or JSON text), got " .. type(messages), 0)
  end
  local list = json.from_lua(messages)
  if not json.is_array(list) then
    error("messages must be a list of messages, not an object", 0)
  end
  if list.n == 0 then
    error("Cannot apply chat template to an empty conversation. Provide at least one message.", 0)
  end
  local out = json.array({}, list.n)
  for i = 1, list.n do
    local m = list[i]
    if not json.is_object(m) then
      error(string.format("message %d is not an object (a table with role and content)", i), 0)
    end
    local clean = json.object()
    for _, k in ipairs(m.keys) do
      if m.map[k] ~= null then json.set(clean, k, m.map[k]) end
    end
    -- transformers: reasoning given as reasoning_content, thinking or reasoning
    -- is offered under `thinking` (first) and `reasoning_content` (last).
    local r
    for _, k in ipairs({ "reasoning_content", "thinking", "reasoning" }) do
      if clean.map[k] ~= nil then r = clean.map[k] break end
    end
    if r ~= nil then
      -- Python: {"thinking": r, **message, "reasoning_content": r}
      local o = json.object()
      json.set(o, "thinking", r)
      for _, k in ipairs(clean.keys) do json.set(o, k, clean.map[k]) end
      json.set(o, "reasoning_content", r)
      clean = o
    end
    out[i] = clean
  end
  return out
end

local function tools_value(tools)
  if tools == nil or tools == null then return null end
  if type(tools) == "string" then
    local ok, v = pcall(json.decode, tools)
    if not ok then error("tools: " .. v, 0) end
    tools = v
  end
  if type(tools) ~= "table" then error("tools must be a list (a table or JSON text), got " .. type(tools), 0) end
  local list = json.from_lua(tools)
  if not json.is_array(list) then error("tools must be a list of tool definitions, not an object", 0) end
  for i = 1, list.n do
    if not json.is_object(list[i]) then
      error(string.format("tool %d is not an object (a JSON schema)", i), 0)
    end
  end
  return list
end

--- Renders a template text over messages with options (as
-- apply_chat_template's keyword arguments); specials are the special-token
-- variables. Returns the text.
function M.render(template, messages, opts, specials)
  opts = opts or {}
  local vars = {}
  for k, v in pairs(specials or {}) do vars[k] = v end
  for k, v in pairs(opts) do
    if not CONTROL[k] then
      if type(k) ~= "string" then error("chat option names must be strings", 0) end
      vars[k] = v
    end
  end
  vars.messages = M.messages(messages)
  vars.tools = tools_value(opts.tools)
  vars.documents = opts.documents == nil and null or json.from_lua(opts.documents)
  vars.add_generation_prompt = opts.add_generation_prompt and opts.add_generation_prompt ~= null or false
  return compile(template):render(vars)
end

--- tok:apply_chat_template(messages, opts) → text.
-- opts: add_generation_prompt, tools, documents, chat_template (a template
-- text to use instead of the model's), and template variables such as
-- enable_thinking.
function M.apply_chat_template(tok, messages, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'apply_chat_template' (table expected, got " .. type(opts) .. ")", 0)
  end
  opts = opts or {}
  local template = opts.chat_template
  local info = config_of(tok)
  if template == nil then
    template = M.template_of(tok, opts.tools ~= nil and opts.tools ~= null)
    if not template then
      error("no chat template: " .. tostring(tok:dir()) ..
            " has no chat_template.jinja, tokenizer_config.json chat_template or chat_template.json, " ..
            "and its model family has no fallback; pass opts.chat_template", 0)
    end
  end
  return M.render(template, messages, opts, info.specials)
end

--- Whether a prompt is a conversation: a list of message tables, or JSON
-- text of a list whose first element is an object with a "role".
function M.is_messages(prompt)
  if type(prompt) == "table" then
    local first = prompt[1]
    return type(first) == "table" or json.is_object(first)
  end
  if type(prompt) == "string" and prompt:match("^%s*%[%s*{") then
    local ok, v = pcall(json.decode, prompt)
    return ok and json.is_array(v) and v.n > 0 and json.is_object(v[1]) and type(v[1].map.role) == "string"
  end
  return false
end

-- Options of model:generate that belong to the chat template.
local CHAT_OPTS = { add_generation_prompt = true, tools = true, documents = true, chat_template = true,
                    enable_thinking = true, chat_template_kwargs = true }

--- For model:generate / model:stream: the prompt ids of a conversation, and
-- the options left for generation. The generation prompt is added unless
-- opts.add_generation_prompt is false; template variables other than
-- enable_thinking go in opts.chat_template_kwargs.
function M.prompt_ids(model, messages, opts)
  local tok = model.tokenizer
  if not tok then error("this model has no tokenizer: pass token ids instead of messages", 0) end
  local chat_opts, gen_opts = { add_generation_prompt = true }, {}
  for k, v in pairs(opts or {}) do
    if CHAT_OPTS[k] then chat_opts[k] = v else gen_opts[k] = v end
  end
  local kw = chat_opts.chat_template_kwargs
  chat_opts.chat_template_kwargs = nil
  if kw ~= nil then
    if type(kw) ~= "table" then error("chat_template_kwargs must be a table, got " .. type(kw), 0) end
    for k, v in pairs(kw) do chat_opts[k] = v end
  end
  local text = M.apply_chat_template(tok, messages, chat_opts)
  return tok:encode(text), gen_opts
end

return M
