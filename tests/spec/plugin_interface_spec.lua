-- The seed's plugin interface, one spec every plugin passes: each C plugin
-- the runtime can run (on its fixture), a Lua plugin adapting one, and a
-- decorated plugin. A C plugin whose architecture is missing is listed as
-- pending with the factory's own message.
local pio = require "pio"

local fixtures = os.getenv("PIO_FIXTURES") or "tests/fixtures"

-- A fixture per C plugin (tiny random weights of the architecture).
local FIXTURE = {
  qwen3_4b_instruct_2507 = fixtures .. "/qwen3-gqa2",
  qwen3_coder_30b = fixtures .. "/qwen3-moe-e8k2",
}

local subjects = {}
for _, name in ipairs(pio.plugins.list()) do
  local md = pio.plugins.metadata(name)
  if md.kind == "c" then
    subjects[#subjects + 1] = {
      label = "C plugin " .. name, name = name,
      -- why it cannot run here (yet): its architecture, or a fixture to run it on
      unavailable = not md.available and md.reason or
                    not FIXTURE[name] and ("no fixture for " .. name .. " yet") or nil,
      make = function() return pio.plugins.create(name), FIXTURE[name] end,
    }
  end
end
subjects[#subjects + 1] = {
  label = "Lua plugin adapting qwen3_4b_instruct_2507", name = "adapted",
  make = function()
    return pio.plugins.adapter(pio.create_qwen3_4b_instruct_2507_plugin(), { name = "adapted" }),
           FIXTURE.qwen3_4b_instruct_2507, "qwen3"
  end,
}
subjects[#subjects + 1] = {
  label = "decorated qwen3_4b_instruct_2507", name = "qwen3_4b_instruct_2507",
  make = function()
    local lines = {}
    local d = pio.decorate(pio.create_qwen3_4b_instruct_2507_plugin(), pio.decorators.timing,
                           pio.decorators.validate, pio.decorators.cache,
                           pio.decorators.log { sink = function(line) lines[#lines + 1] = line end },
                           pio.decorators.retry)
    return d, FIXTURE.qwen3_4b_instruct_2507, "qwen3"
  end,
}

for _, subject in ipairs(subjects) do
  if subject.unavailable then
    pending("the plugin interface: " .. subject.label .. ": " .. subject.unavailable)
    goto next
  end
  describe("the plugin interface: " .. subject.label .. " #plugins", function()
    local p, fixture = nil, nil
    setup(function() p, fixture = subject.make() end)

    it("has every method of the seed's interface", function()
      assert.is_true(pio.plugins.check(p))
      for _, method in ipairs { "initialize", "load_model", "infer", "cleanup", "execute",
                                "get_model_info", "update_config", "supports_config" } do
        assert.equal("function", type(p[method]), method)
      end
    end)

    it("runs the lifecycle: initialize, load_model, infer, execute, cleanup", function()
      assert.is_true(p:initialize { model_path = fixture, dtype = "f32", temperature = 0,
                                    max_new_tokens = 6, device = "cpu" })
      assert.truthy(p:load_model())
      local info = p:get_model_info()
      assert.is_true(info.loaded)
      assert.equal(subject.name, info.name)
      local text = p:infer("Your input text")
      assert.equal("string", type(text))
      assert.equal(text, p:infer("Your input text")) -- greedy: the same again
      local out, stats = p:execute("Your input text", { max_new_tokens = 3 })
      assert.equal("string", type(out))
      assert.is_true(stats.new_tokens <= 3)
      assert.is_true(p:cleanup())
      assert.is_false(p:get_model_info().loaded)
    end)

    it("checks configs: supports_config has no side effects, update_config names what is wrong", function()
      p:initialize { model_path = fixture, temperature = 0.4 }
      assert.is_true(p:supports_config { temperature = 0.9 })
      local ok, why = p:supports_config { bogus = 1 }
      assert.is_false(ok)
      assert.matches("^unknown key 'bogus' %(known: ", why)
      assert.equal(0.4, p:get_model_info().config.temperature)
      assert.is_true(p:update_config { temperature = 0.5 })
      assert.equal(0.5, p:get_model_info().config.temperature)
      assert.has_error(function() p:update_config { temperature = "warm" } end,
        "update_config: 'temperature' must be a number, got string")
    end)

    it("rejects infer before load_model with the exact message", function()
      p:initialize { model_path = fixture }
      assert.has_error(function() p:infer("x") end, "infer: no model loaded (call load_model first)")
    end)
  end)
  ::next::
end
