-- The REPL's helpers (help, completion, readable printing), the REPL itself
-- fed through stdin, and `pio test` from another directory.
local pio = require "pio"
local repl = require "pio.repl"

local fixtures = os.getenv("PIO_FIXTURES") or "tests/fixtures"
local tiny = fixtures .. "/qwen3-gqa2"

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  return io.popen("pwd"):read("l") .. "/" .. path
end
local PIO = absolute((os.getenv("PIO_BUILD_DIR") or "build") .. "/pio")

-- Runs a shell command; returns its output (stdout and stderr) and exit code.
local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)\n$"))
  return out:gsub("rc=%d+\n$", ""), rc
end

describe("help(x) #qwen3", function()
  it("describes every function and module of pio", function()
    local checked = 0
    local function check(name, v)
      local text = repl.text(v)
      assert.is_false(text:find("(no description)", 1, true) ~= nil, name .. ": " .. text)
      checked = checked + 1
    end
    for k, v in pairs(pio) do
      if type(v) == "function" then check("pio." .. k, v) end
      if type(v) == "table" and k ~= "debug" then
        check("pio." .. k, v)
        for k2, v2 in pairs(v) do
          if type(v2) == "function" then check("pio." .. k .. "." .. k2, v2) end
        end
      end
    end
    for _, family in ipairs(pio.strategy.families) do
      for _, name in ipairs(pio.strategy.names(family)) do
        check("pio.strategy." .. family .. "." .. name, pio.strategy[family][name])
      end
    end
    assert.is_true(checked > 100)
  end)

  it("describes every pio object and each of its methods", function()
    local m = assert(pio.load(tiny))
    local objects = {
      m, m.tokenizer, m:start({ 1 }, {}), pio.tensor({ 1, 2 }), pio.strategy.kv.paged(),
      pio.create_qwen3_4b_instruct_2507_plugin(), pio.pipelines.completion(m),
    }
    for _, x in ipairs(objects) do
      local text = repl.text(x)
      local lines = {}
      for line in text:gmatch("[^\n]+") do lines[#lines + 1] = line end
      assert.equal(tostring(x), lines[1])
      assert.is_true(#lines >= 3, text)
      local in_methods = false
      for _, line in ipairs(lines) do
        if line == "methods:" then in_methods = true
        elseif in_methods then
          local name, summary = line:match("^  (%S+)%s+(.*)$")
          assert.truthy(name, line)
          assert.is_false(summary == "function" or summary == "", tostring(x) .. ":" .. name)
        end
      end
    end
    local d = pio.decorate(m, pio.decorators.timing)
    assert.matches("^decorated%(pio.Model", repl.text(d))
    assert.matches("timings%(%)", repl.text(d))
    m:free()
  end)

  it("shows a function's signature and its documentation", function()
    assert.equal("pio.surgery.apply(model, spec)", repl.text(pio.surgery.apply):match("^[^\n]+"))
    assert.matches("^pio.load%(path, opts%) → model | nil, message\n", repl.text(pio.load))
    assert.matches("paged{block=16} +fixed%-size blocks", repl.text(pio.strategy.kv))
    assert.matches("^pio.create_glm_4_7_flash_plugin%(config%) → a pio.Plugin for GLM%-4.7%-Flash",
      repl.text(pio.create_glm_4_7_flash_plugin))
    assert.matches("^pio %S+: help%(x%) describes any pio value", repl.text())
    assert.equal("pio.strategy.kv.paged{ ... } → pio.Strategy: fixed-size blocks from one pool, a block table per sequence\n"
      .. "  block: tokens per block (an integer in [1, 4096], default 16)", repl.text(pio.strategy.kv.paged))
  end)
end)

describe("completion #qwen3", function()
  it("completes globals, fields and methods", function()
    local env = { pio = pio, print = print, m = assert(pio.load(tiny)) }
    assert.same({ "pio.strategies", "pio.strategy" }, repl.complete("pio.strat", env))
    assert.same({ "pio.strategy.kv.paged", "pio.strategy.kv.prefix" }, repl.complete("pio.strategy.kv.p", env))
    assert.same({ "m:generate", "m:generate_batch" }, repl.complete("m:gen", env))
    assert.same({ "pio", "print" }, repl.complete("p", env))
    assert.same({ "m:info" }, repl.complete("m:inf", env))
    assert.same({}, repl.complete("nothing.here", env))
    assert.same({ "while" }, repl.complete("whi", env))
    env.m:free()
  end)
end)

describe("readable printing", function()
  it("prints tables with sorted keys, nested, and pio objects by name", function()
    assert.equal('{ 1, 2, { a = 1 }, x = "y" }', repl.pretty({ 1, 2, { a = 1 }, x = "y" }))
    assert.equal("{}", repl.pretty({}))
    local t = { name = "cycle" }
    t.self = t
    assert.equal('{ name = "cycle", self = <cycle> }', repl.pretty(t))
    assert.equal("{ s = pio.Strategy(kv.paged{block=16}) }", repl.pretty({ s = pio.strategy.kv.paged() }))
    local long = {}
    for i = 1, 30 do long["key" .. i] = i end
    assert.matches("^{\n  key1 = 1,\n  key10 = 10,", repl.pretty(long))
  end)
end)

describe("the REPL fed through stdin #qwen3", function()
  it("has help() and prints results readably", function()
    local input = os.tmpname()
    local f = assert(io.open(input, "w"))
    f:write("help(pio.load)\n{ b = 2, a = { 1, 2 } }\npio.strategy.kv.paged()\n",
            "p = pio.create_qwen3_4b_instruct_2507_plugin()\np\n")
    f:close()
    local out, rc = sh(string.format("%s -i < %s", PIO, input))
    os.remove(input)
    assert.equal(0, rc)
    assert.matches("pio.load%(path, opts%) → model | nil, message", out)
    assert.matches("{ a = { 1, 2 }, b = 2 }\n", out)
    assert.matches("pio.Strategy%(kv.paged{block=16}%)\n", out)
    assert.matches("pio.Plugin%(qwen3_4b_instruct_2507: Qwen3ForCausalLM, not initialized%)\n", out)
  end)
end)

describe("pio test", function()
  local elsewhere
  setup(function()
    elsewhere = os.tmpname()
    os.remove(elsewhere)
    os.execute("mkdir -p " .. elsewhere)
  end)
  teardown(function() os.execute("rm -rf " .. elsewhere) end)

  it("lists one family's specs from any directory (busted tags)", function()
    local out, rc = sh(string.format("cd %s && %s test qwen3 --list", elsewhere, PIO))
    assert.equal(0, rc, out)
    assert.matches("pio.load #qwen3 loads a hand%-made checkpoint", out)
    assert.is_nil(out:find("qwen3_moe parity", 1, true))
    local by_plugin = sh(string.format("cd %s && %s test qwen3_4b_instruct_2507 --list", elsewhere, PIO))
    assert.equal(out, by_plugin)
  end)

  it("runs the specs it selects", function()
    local out, rc = sh(string.format("cd %s && %s test selftest", elsewhere, PIO))
    assert.equal(0, rc, out)
    assert.matches("1 passed, 0 failed\n$", out)
  end)

  it("refuses a tag no spec carries, listing the tags", function()
    local out, rc = sh(string.format("cd %s && %s test nonsense", elsewhere, PIO))
    assert.equal(2, rc)
    assert.matches("^pio test: no tests are tagged 'nonsense' %(tags: [%w_, ]*qwen3[%w_, ]*%)\n$", out)
  end)

  it("is listed by pio --help", function()
    local out = sh(PIO .. " --help")
    assert.matches("pio test %[FAMILY|PLUGIN%]", out)
  end)
end)

describe("pio test's own probe #selftest", function()
  it("runs", function() assert.is_true(true) end)
end)
