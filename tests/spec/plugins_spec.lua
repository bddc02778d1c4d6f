-- pio.plugins: the registry, the seed's factories, per-plugin presets, and
-- the seed's basic usage on the fixtures.
local pio = require "pio"
local core = require "pio.core"
local cjson = require "cjson"

local fixtures = os.getenv("PIO_FIXTURES") or "tests/fixtures"
local tiny = fixtures .. "/qwen3-gqa2"

local PLUGINS = {
  qwen3_4b_instruct_2507 = { factory = "create_qwen3_4b_instruct_2507_plugin", arch = "Qwen3ForCausalLM",
                             repo = "Qwen/Qwen3-4B-Instruct-2507" },
  qwen3_coder_30b = { factory = "create_qwen3_coder_30b_plugin", arch = "Qwen3MoeForCausalLM",
                      repo = "Qwen/Qwen3-Coder-30B-A3B-Instruct" },
  qwen3_vl_2b_instruct = { factory = "create_qwen3_vl_2b_instruct_plugin",
                           arch = "Qwen3VLForConditionalGeneration", repo = "Qwen/Qwen3-VL-2B-Instruct" },
  glm_4_7_flash = { factory = "create_glm_4_7_flash_plugin", arch = "Glm4MoeLiteForCausalLM",
                    repo = "zai-org/GLM-4.7-Flash" },
}

local function runs(arch)
  for name in pio.architectures():gmatch("[^,%s]+") do if name == arch then return true end end
  return false
end

describe("the seed's basic usage #qwen3", function()
  it("runs as written on the fixture", function()
    local plugin = pio.create_qwen3_4b_instruct_2507_plugin()
    assert.is_true(plugin:initialize { model_path = tiny, device = "cpu", dtype = "bf16" })
    assert.truthy(plugin:load_model())
    local text = plugin:infer("Your input text")
    assert.equal("string", type(text))
    assert.is_true(#text > 0)
    assert.is_true(plugin:cleanup())
  end)

  it("runs as a script (scripts/plugin_basic.lua)", function()
    local pio_exe = (os.getenv("PIO_BUILD_DIR") or "build") .. "/pio"
    local p = io.popen(pio_exe .. " scripts/plugin_basic.lua " .. tiny .. " 2>&1; echo rc=$?")
    local out = p:read("a")
    p:close()
    assert.matches("rc=0\n$", out)
    assert.matches("pio.Plugin%(qwen3_4b_instruct_2507: Qwen3ForCausalLM, loaded", out)
  end)
end)

describe("the factories", function()
  for name, want in pairs(PLUGINS) do
    it(want.factory .. " follows the runtime's architectures", function()
      local factory = pio[want.factory]
      assert.equal("function", type(factory))
      if runs(want.arch) then
        local p = factory()
        assert.equal(name, p.name)
        assert.is_true(pio.plugins.metadata(name).available)
      else
        assert.has_error(function() factory() end,
          string.format("%s: the %s architecture is not implemented yet (this pio runs %s)", name,
                        want.arch, pio.architectures()))
        local md = pio.plugins.metadata(name)
        assert.is_false(md.available)
        assert.equal(string.format("%s: the %s architecture is not implemented yet (this pio runs %s)",
                                   name, want.arch, pio.architectures()), md.reason)
      end
    end)
  end

  it("works as soon as the runtime lists the architecture (asked at run time)", function()
    local real = core.architectures
    core.architectures = function() return real() .. ", Glm4MoeLiteForCausalLM" end
    local ok, p = pcall(pio.create_glm_4_7_flash_plugin)
    core.architectures = real
    assert.is_true(ok, tostring(p))
    assert.equal("glm_4_7_flash", p.name)
  end)
end)

describe("pio.plugins", function()
  it("lists every plugin and describes each", function()
    local names = pio.plugins.list()
    for name in pairs(PLUGINS) do
      local found = false
      for _, n in ipairs(names) do found = found or n == name end
      assert.is_true(found, name)
      local md = pio.plugins.metadata(name)
      assert.equal(name, md.name)
      assert.equal("c", md.kind)
      assert.equal(PLUGINS[name].arch, md.architecture)
      assert.equal(PLUGINS[name].repo, md.hf_repo)
      assert.equal("1.0.0", md.version)
      assert.same({ "bf16", "f32" }, md.dtypes)
      assert.is_true(#md.devices >= 1 and md.devices[1] == "cpu")
      assert.equal("string", type(md.description))
      assert.equal("string", type(md.model_family))
    end
    local md = pio.plugins.metadata("qwen3_4b_instruct_2507")
    local has = {}
    for _, id in ipairs(md.strategies) do has[id] = true end
    assert.is_true(has["attention.full"] and has["precision.bf16"] and has["sampling.top_k"])
    assert.is_nil(has["kv.fp8"]) -- not honoured on the CPU, so not offered
    assert.is_nil(has["offload.layers"])
  end)

  it("is one registry per Lua state", function()
    assert.equal(require "pio.plugins", pio.plugins)
    pio.plugins.register("spec_singleton", function() end, { version = "0", description = "x", model_family = "x" })
    assert.equal("lua", require("pio.plugins").metadata("spec_singleton").kind)
    assert.is_true(pio.plugins.unregister("spec_singleton"))
    assert.is_false(pio.plugins.unregister("spec_singleton"))
  end)

  it("creates a C plugin by name, initialized with the config", function()
    local p = pio.plugins.create("qwen3_4b_instruct_2507", { model_path = tiny, dtype = "f32" })
    assert.equal("pio.Plugin(qwen3_4b_instruct_2507: Qwen3ForCausalLM, initialized)", tostring(p))
    assert.equal("f32", p:get_model_info().config.dtype)
  end)

  it("rejects bad registrations and unknown names, naming them", function()
    local md = { version = "1", description = "d", model_family = "f" }
    assert.has_error(function() pio.plugins.register("bad name", function() end, md) end,
      "pio.plugins.register: the name must be a word of letters, digits and _, got 'bad name'")
    assert.has_error(function() pio.plugins.register("qwen3_4b_instruct_2507", function() end, md) end,
      "pio.plugins.register: 'qwen3_4b_instruct_2507' is already registered")
    assert.has_error(function() pio.plugins.register("x", "f", md) end,
      "pio.plugins.register: the factory must be a function, got string")
    assert.has_error(function() pio.plugins.register("x", function() end, { version = "1" }) end,
      "pio.plugins.register: metadata.description must be a string, got nil")
    assert.has_error(function() pio.plugins.create("nope") end,
      "pio.plugins.create: no plugin named 'nope' (registered: " .. table.concat(pio.plugins.list(), ", ") .. ")")
    assert.has_error(function() pio.plugins.metadata("nope") end,
      "pio.plugins.metadata: no plugin named 'nope' (registered: " .. table.concat(pio.plugins.list(), ", ") .. ")")
    pio.plugins.register("half", function() return { infer = function() end } end, md)
    assert.has_error(function() pio.plugins.create("half") end,
      "pio.plugins.create: plugin 'half' lacks initialize, load_model, cleanup, execute, get_model_info, update_config, supports_config")
    pio.plugins.unregister("half")
  end)
end)

describe("a Lua plugin adapting a C plugin #qwen3", function()
  it("registers beside the C ones and forwards the interface", function()
    pio.plugins.register("shouting_qwen3", function()
      return pio.plugins.adapter(pio.create_qwen3_4b_instruct_2507_plugin(),
                                 { name = "shouting_qwen3", output = string.upper })
    end, { version = "0.1", description = "Qwen3 in capitals", model_family = "qwen3" })
    local p = pio.plugins.create("shouting_qwen3", { model_path = tiny, temperature = 0, max_new_tokens = 8 })
    assert.truthy(p:load_model())
    local plain = p.inner:infer("Hello")
    assert.equal(plain:upper(), p:infer("Hello"))
    assert.equal("shouting_qwen3", p:get_model_info().name)
    assert.equal("qwen3_4b_instruct_2507", p:get_model_info().adapted_from)
    assert.equal("lua", pio.plugins.metadata("shouting_qwen3").kind)
    assert.is_true(p:cleanup())
    pio.plugins.unregister("shouting_qwen3")
  end)
end)

describe("configs/<plugin>.json #qwen3", function()
  it("holds each plugin's defaults, read with lua-cjson", function()
    for name in pairs(PLUGINS) do
      local f = assert(io.open("configs/" .. name .. ".json"))
      local preset = cjson.decode(f:read("a"))
      f:close()
      assert.equal(name, preset.plugin)
      for _, key in ipairs { "model_path", "device", "dtype", "max_new_tokens", "temperature",
                             "max_memory_ratio", "synthetic" } do
        assert.truthy(preset.keys[key], name .. " lacks " .. key)
      end
      assert.equal(PLUGINS[name].arch, preset.architecture.architectures[1])
    end
    local p = pio.create_qwen3_4b_instruct_2507_plugin()
    p:initialize()
    local cfg = p:get_model_info().config
    assert.equal("models/Qwen3-4B-Instruct-2507", cfg.model_path)
    assert.equal(0.7, cfg.temperature)
    assert.equal(20, cfg.top_k)
  end)

  it("update_config checks keys and types, rejecting unknown keys by name", function()
    local p = pio.create_qwen3_4b_instruct_2507_plugin()
    p:initialize()
    assert.is_true(p:update_config { temperature = 0.2, max_new_tokens = 4 })
    assert.equal(0.2, p:get_model_info().config.temperature)
    local known = table.concat(pio.config.names(pio.config.read("qwen3_4b_instruct_2507")), ", ")
    assert.has_error(function() p:update_config { temprature = 0.2 } end,
      "update_config: unknown key 'temprature' (known: " .. known .. ")")
    assert.has_error(function() p:update_config { temperature = "hot" } end,
      "update_config: 'temperature' must be a number, got string")
    assert.has_error(function() p:update_config { max_new_tokens = 1.5 } end,
      "update_config: 'max_new_tokens' must be an integer, got 1.5")
    assert.has_error(function() p:update_config { dtype = "f16" } end,
      "update_config: 'dtype' must be one of bf16, f32, got 'f16'")
    assert.has_error(function() p:update_config { top_p = 2 } end,
      "update_config: 'top_p' must be in [0, 1], got 2")
    assert.has_error(function() p:update_config { synthetic = "yes" } end,
      "update_config: 'synthetic' must be a boolean, got string")
    assert.has_error(function() p:update_config { strategies = { kv = "pagd" } } end,
      "update_config: 'strategies': pio.strategy.kv has no strategy 'pagd' (known: contiguous, paged, prefix, int8, fp8)")
    assert.has_error(function() p:update_config("hot") end,
      "update_config: config must be a table, got string")
    assert.equal(0.2, p:get_model_info().config.temperature) -- nothing changed by the failures
  end)

  it("supports_config answers without side effects", function()
    local p = pio.create_qwen3_4b_instruct_2507_plugin()
    p:initialize { temperature = 0.3 }
    assert.is_true(p:supports_config { temperature = 0.9, dtype = "f32" })
    assert.equal(0.3, p:get_model_info().config.temperature)
    local ok, why = p:supports_config { temperature = -1 }
    assert.is_false(ok)
    assert.equal("'temperature' must be >= 0, got -1", why)
    ok, why = p:supports_config { colour = "blue" }
    assert.is_false(ok)
    assert.matches("^unknown key 'colour' %(known: ", why)
    local gpu = pio.device.info("cuda")
    if not gpu.available then
      ok, why = p:supports_config { device = "cuda" }
      assert.is_false(ok)
      assert.equal("device 'cuda' is not available: " .. gpu.reason, why)
    end
    assert.equal(0.3, p:get_model_info().config.temperature)
  end)

  it("load_model without weights says what to download and where", function()
    local p = pio.create_qwen3_4b_instruct_2507_plugin()
    p:initialize { model_path = "/nonexistent/Qwen3-4B" }
    local m, err = p:load_model()
    assert.is_nil(m)
    assert.equal("qwen3_4b_instruct_2507: no weights at '/nonexistent/Qwen3-4B': download "
      .. "Qwen/Qwen3-4B-Instruct-2507 from Hugging Face into that directory (huggingface-cli "
      .. "download Qwen/Qwen3-4B-Instruct-2507 --local-dir /nonexistent/Qwen3-4B), point "
      .. "model_path at a copy you have, or set synthetic = true for random weights of the same shapes", err)
  end)

  it("load_model refuses a directory of another architecture", function()
    local p = pio.create_qwen3_4b_instruct_2507_plugin()
    p:initialize { model_path = fixtures .. "/qwen3-moe-e8k2" }
    local m, err = p:load_model()
    assert.is_nil(m)
    assert.equal("qwen3_4b_instruct_2507: '" .. fixtures .. "/qwen3-moe-e8k2' holds a Qwen3MoeForCausalLM model, not Qwen3ForCausalLM", err)
  end)

  it("rejects lifecycle misuse with exact messages", function()
    local p = pio.create_qwen3_4b_instruct_2507_plugin()
    assert.has_error(function() p:load_model() end, "load_model: call initialize first")
    assert.has_error(function() p:initialize { bogus = 1 } end,
      "initialize: unknown key 'bogus' (known: " .. table.concat(pio.config.names(pio.config.read("qwen3_4b_instruct_2507")), ", ") .. ")")
    p:initialize { model_path = tiny }
    assert.has_error(function() p:infer("x") end, "infer: no model loaded (call load_model first)")
    assert.truthy(p:load_model())
    assert.has_error(function() p:infer(42) end,
      "infer: data must be text, a list of token ids or a list of chat messages, got number")
    assert.has_error(function() p:execute("x", { max_tokens = 1 }) end,
      "execute: unknown option 'max_tokens' (known: max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty, seed, stop)")
    p:cleanup()
  end)

  it("synthetic = true builds the full-size architecture (refused here by its size, with the numbers)", function()
    local p = pio.create_qwen3_4b_instruct_2507_plugin()
    p:initialize { model_path = "/nonexistent", synthetic = true, max_memory_ratio = 1e-6 }
    local heap = pio.debug.heap_bytes()
    local m, err = p:load_model()
    assert.is_nil(m)
    assert.matches("^qwen3_4b_instruct_2507: Qwen3ForCausalLM does not fit: it needs %d+%.%d+ GiB %(weights 7%.49 GiB, KV cache 576%.0 MiB, activations %d+%.%d MiB%) but the memory budget is ", err)
    assert.equal(heap, pio.debug.heap_bytes())
    local est = pio.estimate("configs/../bench/models/qwen3-4b/config.json", { synthetic = true })
    assert.equal(4022468096, est.parameters) -- Qwen3-4B's published parameter count
  end)

  it("synthetic = true over a model directory keeps its tokenizer", function()
    local p = pio.create_qwen3_4b_instruct_2507_plugin()
    p:initialize { model_path = tiny, synthetic = true, seed = 5, max_new_tokens = 4, temperature = 0 }
    local m = assert(p:load_model())
    assert.truthy(m.tokenizer)
    assert.equal("string", type(p:infer("Hello")))
    p:cleanup()
  end)
end)
