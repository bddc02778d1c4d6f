-- pio.jinja and pio.json: byte-for-byte what Python's jinja2 (in transformers'
-- chat-template environment) and json render, and clear errors for what
-- they do not support. The expected outputs are in
-- tests/fixtures/chat/jinja_cases.json (scripts/make_chat_fixtures.py).
local json = require "pio.json"
local jinja = require "pio.jinja"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function render(text, vars)
  return jinja.compile(text, "t"):render(vars or {})
end

local function fails(text, vars)
  local ok, err = pcall(render, text, vars)
  assert.is_false(ok, "expected an error from " .. text)
  return err
end

describe("pio.jinja", function()
  describe("the jinja2 micro-cases", function()
    local cases = json.decode(read("tests/fixtures/chat/jinja_cases.json")).map.cases
    it("render exactly as jinja2 3.1.6 does, and fail where it fails", function()
      local exact, failing = 0, 0
      for i = 1, cases.n do
        local c = cases[i].map
        local vars = {}
        for _, k in ipairs(c.vars.keys) do vars[k] = c.vars.map[k] end
        local ok, out = pcall(render, c.template, vars)
        if c.output ~= nil then
          assert.is_true(ok, ("case %d %q: %s"):format(i, c.template, tostring(out)))
          assert.equal(c.output, out, ("case %d %q"):format(i, c.template))
          exact = exact + 1
        else
          assert.is_false(ok, ("case %d %q should fail like jinja2 (%s)"):format(i, c.template, c.error))
          failing = failing + 1
        end
      end
      assert.equal(cases.n, exact + failing)
      assert.is_true(exact >= 60 and failing >= 5)
    end)
  end)

  describe("compile", function()
    it("refuses unsupported constructs, naming the construct and the line", function()
      local function compile_error(text)
        local ok, err = pcall(jinja.compile, text, "chat template")
        assert.is_false(ok)
        return err
      end
      assert.equal("chat template line 1: unsupported Jinja construct '{% include %}'",
        compile_error("{% include 'other.jinja' %}"))
      assert.equal("chat template line 3: unsupported Jinja construct '{% extends %}'",
        compile_error("a\nb\n{% extends 'base' %}"))
      assert.equal("chat template line 2: unsupported Jinja construct '{% import %}'",
        compile_error("x\n  {%- import 'm' as m %}"))
      assert.equal("chat template line 1: unsupported Jinja construct '{% call %}'",
        compile_error("{% call f() %}x{% endcall %}"))
      assert.equal("chat template line 1: unsupported Jinja construct '{% filter %}'",
        compile_error("{% filter upper %}x{% endfilter %}"))
      assert.equal("chat template line 2: unsupported Jinja construct 'recursive loops'",
        compile_error("\n{% for x in y recursive %}{% endfor %}"))
      assert.equal("chat template line 1: unsupported filter 'xmlattr'", compile_error("{{ d|xmlattr }}"))
      assert.equal("chat template line 4: unsupported filter 'random'", compile_error("\n\n\n{{ [1, 2]|random }}"))
      assert.equal("chat template line 1: unsupported Jinja construct '*args/**kwargs in calls'",
        compile_error("{{ f(*args) }}"))
    end)

    it("reports syntax errors with the line", function()
      local function compile_error(text)
        local ok, err = pcall(jinja.compile, text, "t")
        assert.is_false(ok)
        return err
      end
      assert.equal("t line 1: No filter named 'nosuch'.", compile_error("{{ x|nosuch }}"))
      assert.equal("t line 2: No test named 'nosuch'.", compile_error("\n{{ x is nosuch }}"))
      assert.equal("t line 1: Encountered unknown tag 'frobnicate'.", compile_error("{% frobnicate %}"))
      assert.equal("t line 1: Unexpected end of template. Jinja was looking for the following tags: "
        .. "'elif' or 'else' or 'endif'.", compile_error("{% if x %}open"))
      assert.equal("t line 1: unexpected 'end of print statement'", compile_error("{{ 1 + }}"))
      assert.equal("t line 1: unexpected end of template, expected '}}'", compile_error("{{ 1 "))
      assert.equal("t line 2: Missing end of comment tag", compile_error("a\n{# never closed"))
      assert.equal("t line 1: unexpected ')'", compile_error("{{ 1) }}"))
      assert.equal("t line 1: can't assign to 'const'", compile_error("{% set 1 = 2 %}"))
      assert.equal("t line 1: non-default argument follows default argument",
        compile_error("{% macro m(a=1, b) %}{% endmacro %}"))
    end)

    it("rejects a template that is not a string", function()
      assert.has_error(function() jinja.compile(42) end, "template must be a string, got number")
    end)
  end)

  describe("render", function()
    it("names the line of a runtime error", function()
      assert.equal("t line 2: 'x' is undefined", fails("ok\n{{ x.y }}"))
      assert.equal("t line 3: boom", fails("\n\n{{ raise_exception('boom') }}"))
      assert.equal('t line 1: can only concatenate str (not "int") to str', fails("{{ 'a' + 1 }}"))
      assert.equal("t line 1: 'dict object' has no attribute 'content'",
        fails("{{ m.content + 'x' }}", { m = json.object() }))
      assert.equal("t line 1: Object of type Undefined is not JSON serializable", fails("{{ nope|tojson }}"))
      assert.equal("t line 1: access to attribute 'append' of 'list' object is unsafe.", fails("{{ [].append(1) }}"))
      assert.equal("t line 1: division by zero", fails("{{ 1 / 0 }}"))
      assert.equal("t line 1: 'int' object is not iterable", fails("{% for a in 5 %}{% endfor %}"))
      assert.equal("t line 1: Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).",
        fails("{{ range(200000)|length }}"))
    end)

    it("takes Lua values: tables become lists and dicts (keys sorted), nil is undefined", function()
      assert.equal("[1, 2] {'a': 1, 'b': [True]} None", render("{{ l }} {{ d }} {{ n }}",
        { l = { 1, 2 }, d = { b = { true }, a = 1 }, n = json.null }))
      assert.equal("False", render("{{ x is defined }}", { x = nil }))
      assert.equal('{"z": 1, "a": 2}', render("{{ d|tojson }}", { d = json.decode('{"z": 1, "a": 2}') }))
      assert.equal("3", render("{{ f(1, 2) }}", { f = function(a, b) return a + b end }))
    end)

    it("renders the same template repeatedly", function()
      local t = jinja.compile("{% set ns = namespace(n=0) %}{% for m in ms %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}")
      assert.equal("3", t:render { ms = { 1, 2, 3 } })
      assert.equal("1", t:render { ms = { 9 } })
    end)
  end)
end)

describe("pio.json", function()
  it("decodes keeping key order, integers and floats", function()
    local v = json.decode('{"b": 1, "a": [1.0, 2, -3e2, null, true, "x\\u00e9\\ud83d\\ude00\\n"], "c": {}}')
    assert.same({ "b", "a", "c" }, v.keys)
    assert.equal("integer", math.type(v.map.b))
    assert.equal("float", math.type(v.map.a[1]))
    assert.equal(-300.0, v.map.a[3])
    assert.equal(json.null, v.map.a[4])
    assert.equal("x\u{e9}\u{1F600}\n", v.map.a[6])
    assert.equal(6, v.map.a.n)
  end)

  it("encodes as Python's json.dumps", function()
    local v = json.decode('{"b": 1, "a": [1.0, 1e-06, 1e16, null, "é\\"\\u0001\\u007f"], "e": {}, "l": []}')
    assert.equal('{"b": 1, "a": [1.0, 1e-06, 1e+16, null, "é\\"\\u0001\127"], "e": {}, "l": []}', json.encode(v))
    assert.equal('{"b":1,"a":[1.0,1e-06,1e+16,null,"\\u00e9\\"\\u0001\\u007f"],"e":{},"l":[]}',
      json.encode(v, { separators = { ",", ":" }, ensure_ascii = true }))
    assert.equal('{\n  "a": [\n    1\n  ],\n  "b": {}\n}', json.encode(json.decode('{"b": {}, "a": [1]}'),
      { indent = 2, sort_keys = true }))
    assert.equal('{"a": 1, "b": [2, 3]}', json.encode({ b = { 2, 3 }, a = 1 }))
  end)

  it("writes floats as Python's repr", function()
    local cases = { [0.1] = "0.1", [1.0] = "1.0", [1e16] = "1e+16", [1e15] = "1000000000000000.0",
                    [1e-05] = "1e-05", [0.0001] = "0.0001", [1 / 3] = "0.3333333333333333",
                    [2 ^ 0.5] = "1.4142135623730951", [-2.5e-300] = "-2.5e-300", [123456.789] = "123456.789" }
    for x, want in pairs(cases) do assert.equal(want, json.float_repr(x)) end
    assert.equal("-0.0", json.float_repr(-0.0))
    assert.equal("inf", json.float_repr(math.huge))
  end)

  it("rejects malformed JSON with the line and column", function()
    local function err(text)
      local ok, e = pcall(json.decode, text)
      assert.is_false(ok)
      return e
    end
    assert.equal("invalid JSON at line 1, column 6: expected ':'", err('{"a" 1}'))
    assert.equal("invalid JSON at line 2, column 4: expected ',' or ']'", err('[1,\n 2 3]'))
    assert.equal("invalid JSON at line 1, column 1: unexpected end of text", err(""))
    assert.equal("invalid JSON at line 1, column 3: extra data after the value", err("1 2"))
    assert.equal("invalid JSON at line 1, column 2: unterminated string", err('["abc'))
    assert.equal("invalid JSON at line 1, column 1: unexpected character '''", err("'x'"))
    assert.equal("invalid JSON: not UTF-8 at byte 3", err('"a\xff"'))
    assert.equal("invalid JSON at line 1, column 3: bad escape \\q", err('"a\\q"'))
  end)
end)
