-- tests/spec/host_spec.lua: the `pio` executable, driven as a user would from
-- a shell: scripts, -e, the REPL fed through stdin, and subcommands.

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  local pwd = io.popen("pwd"):read("l")
  return pwd .. "/" .. path
end

local PIO = absolute((os.getenv("PIO_BUILD_DIR") or "build") .. "/pio")

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- Runs `pio <args>` (args already shell-quoted where needed) with `input` on
-- stdin (/dev/null when nil, so nothing can wait on a terminal). opts.cwd runs
-- it from another directory, opts.env = { NAME = value } sets variables.
-- Returns { code =, out =, err = }.
local function run(args, input, opts)
  opts = opts or {}
  local out, err, inp = os.tmpname(), os.tmpname(), os.tmpname()
  write_file(inp, input or "")
  local cmd = string.format("%s %s <%s >%s 2>%s", shell_quote(PIO), args,
                            input and inp or "/dev/null", out, err)
  for name, value in pairs(opts.env or {}) do cmd = name .. "=" .. shell_quote(value) .. " " .. cmd end
  if opts.cwd then cmd = "cd " .. shell_quote(opts.cwd) .. " && " .. cmd end
  local _, _, code = os.execute(cmd)
  local result = { code = code, out = slurp(out), err = slurp(err) }
  os.remove(out)
  os.remove(err)
  os.remove(inp)
  return result
end

local function temp_script(text)
  local path = os.tmpname() .. ".lua"
  write_file(path, text)
  return path
end

describe("pio host", function()
  it("takes the default device from PIO_DEVICE when pio.load names none", function()
    local function load_with(device)
      local p = io.popen("PIO_DEVICE=" .. device .. " " .. shell_quote(PIO)
        .. " -e 'local ok, m = pcall(require(\"pio\").load, \"tests/fixtures/qwen3-gqa2\"); "
        .. "print(ok and m and m:info().device or tostring(m))' 2>&1")
      local out = p:read("a")
      p:close()
      return out
    end
    assert.equal("cpu\n", load_with("cpu"))
    assert.matches("device must be 'cpu', 'cuda' or 'auto', got 'tpu'", load_with("tpu"))
  end)

  it("exists (build it with cmake first)", function()
    assert.is_true(os.execute("test -x " .. shell_quote(PIO)) == true, PIO .. " is not built")
  end)

  describe("--version and --help", function()
    it("prints `pio <version>`", function()
      local r = run("--version")
      assert.are.equal(0, r.code)
      assert.matches("^pio %d+%.%d+%.%d+\n$", r.out)
    end)

    it("prints the usage of every mode and subcommand", function()
      local r = run("--help")
      assert.are.equal(0, r.code)
      for _, word in ipairs { "script.lua", "-e code", "-i", "--version", "generate DIR -p PROMPT" } do
        assert.truthy(r.out:find(word, 1, true), "--help does not mention " .. word)
      end
    end)
  end)

  describe("command line", function()
    it("rejects an unknown option, naming it, with exit code 2", function()
      local r = run("--frobnicate")
      assert.are.equal(2, r.code)
      assert.are.equal("pio: unknown option '--frobnicate'\nTry 'pio --help' for usage.\n", r.err)
    end)

    it("rejects -e without code", function()
      local r = run("-e")
      assert.are.equal(2, r.code)
      assert.matches("'%-e'", r.err)
    end)

    it("rejects an unknown command that is not a file", function()
      local r = run("frobnicate")
      assert.are.equal(2, r.code)
      assert.are.equal("pio: unknown command or file 'frobnicate'\nTry 'pio --help' for usage.\n", r.err)
    end)
  end)

  describe("-e", function()
    it("runs each chunk in order", function()
      local r = run("-e 'print(1 + 1)' -e 'print(\"x\")'")
      assert.are.equal(0, r.code)
      assert.are.equal("2\nx\n", r.out)
    end)

    it("runs before the script, and leaves no global pio for scripts", function()
      local script = temp_script("print(x, pio)\n")
      local r = run("-e 'x = 7' " .. shell_quote(script))
      os.remove(script)
      assert.are.equal(0, r.code)
      assert.are.equal("7\tnil\n", r.out)
    end)

    it("reports an error with `pio:` and exit code 1", function()
      local r = run("-e 'error(\"kaput\")'")
      assert.are.equal(1, r.code)
      assert.matches("^pio: %(command line%):1: kaput\n", r.err)
    end)
  end)

  describe("scripts", function()
    it("get arg and ... as lua gives them", function()
      local script = temp_script([[
print(arg[0], arg[1], arg[2], #arg)
print(select("#", ...), ...)
print(arg[-1] == arg[-1]:match(".*/pio$"))
]])
      local r = run(shell_quote(script) .. " one 'two words'")
      assert.are.equal(0, r.code, r.err)
      assert.are.equal(script .. "\tone\ttwo words\t2\n2\tone\ttwo words\ntrue\n", r.out)
      os.remove(script)
    end)

    it("skip a shebang line", function()
      local script = temp_script("#!/usr/bin/env pio\nprint('ran')\n")
      local r = run(shell_quote(script))
      os.remove(script)
      assert.are.equal(0, r.code)
      assert.are.equal("ran\n", r.out)
    end)

    it("report an error as `pio: <message>` with a traceback, exit code 1", function()
      local script = temp_script("local function f() error('boom') end\nf()\n")
      local r = run(shell_quote(script))
      os.remove(script)
      assert.are.equal(1, r.code)
      assert.are.equal("", r.out)
      assert.matches("^pio: [^\n]*:1: boom\nstack traceback:\n", r.err)
    end)

    it("report a syntax error with exit code 1", function()
      local script = temp_script("x = = 1\n")
      local r = run(shell_quote(script))
      os.remove(script)
      assert.are.equal(1, r.code)
      assert.matches("^pio: [^\n]*:1: unexpected symbol", r.err)
    end)

    it("are read from stdin with `-`", function()
      local r = run("- a b", "print(arg[0], ...)\n")
      assert.are.equal(0, r.code)
      assert.are.equal("-\ta\tb\n", r.out)
    end)

    it("are read from stdin when stdin is not a terminal and there are no arguments", function()
      local r = run("", "print('from stdin')\n")
      assert.are.equal(0, r.code)
      assert.are.equal("from stdin\n", r.out)
    end)

    it("can require the pio library from any directory", function()
      local r = run("-e 'print(type(require(\"pio\").version))'", nil, { cwd = "/" })
      assert.are.equal(0, r.code, r.err)
      assert.are.equal("string\n", r.out)
    end)

    it("find the library in $PIO_LUA_DIR when it is set", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. shell_quote(dir .. "/pio")))
      write_file(dir .. "/pio/init.lua", "return { where = 'PIO_LUA_DIR' }\n")
      local r = run("-e 'print(require(\"pio\").where)'", nil, { env = { PIO_LUA_DIR = dir } })
      os.execute("rm -r " .. shell_quote(dir))
      assert.are.equal(0, r.code, r.err)
      assert.are.equal("PIO_LUA_DIR\n", r.out)
    end)
  end)

  describe("the REPL fed through stdin", function()
    it("prints the values of expressions", function()
      local r = run("-i", "1 + 2\n'a', 'b'\nnil\nlocal y = 3\n")
      assert.are.equal(0, r.code)
      assert.are.equal("3\na\tb\nnil\n", r.out)
      assert.are.equal("", r.err)
    end)

    it("prints values through __tostring", function()
      local r = run("-i", "setmetatable({}, { __tostring = function() return 'T!' end })\n")
      assert.are.equal("T!\n", r.out)
    end)

    it("continues a statement over several lines", function()
      local r = run("-i", "function twice(x)\n  return x * 2\nend\ntwice(21)\n")
      assert.are.equal(0, r.code)
      assert.are.equal("42\n", r.out)
      assert.are.equal("", r.err)
    end)

    it("survives an error and runs the statements after it", function()
      local r = run("-i", "error('bad thing')\nx = 5\nx\nnil + 1\nx + 1\n")
      assert.are.equal(0, r.code)
      assert.are.equal("5\n6\n", r.out)
      assert.matches("^stdin:1: bad thing\n", r.err)
      assert.matches("attempt to perform arithmetic on a nil value", r.err)
    end)

    it("reports a statement left unfinished at the end of input", function()
      local r = run("-i", "function f()\n")
      assert.are.equal(0, r.code)
      assert.matches("'end' expected", r.err)
    end)

    it("runs after -e and a script, and has the global pio", function()
      local script = temp_script("z = 40\n")
      local r = run("-e 'w = 2' -i " .. shell_quote(script), "z + w\ntype(pio)\n")
      os.remove(script)
      assert.are.equal(0, r.code, r.err)
      assert.are.equal("42\ntable\n", r.out)
    end)
  end)

  describe("generate", function()
    it("reports a missing model directory and exits non-zero", function()
      local r = run("generate /nonexistent/model-dir -p hello")
      assert.are_not.equal(0, r.code)
      assert.are.equal("", r.out)
      assert.matches("^pio generate: [^\n]*/nonexistent/model%-dir", r.err)
    end)

    it("rejects an unknown option with exit code 2", function()
      local r = run("generate some-dir -p hi --frobnicate")
      assert.are.equal(2, r.code)
      assert.matches("^pio generate: unknown option '%-%-frobnicate'\n", r.err)
    end)

    it("rejects a bad number with exit code 2", function()
      local r = run("generate some-dir -p hi -n lots")
      assert.are.equal(2, r.code)
      assert.matches("^pio generate: bad value 'lots' for %-n %(expected a non%-negative integer%)\n", r.err)
    end)

    it("takes --device, refuses an unknown one, and says why CUDA is not there", function()
      local r = run("generate some-dir -p hi --device tpu")
      assert.are.equal(2, r.code)
      assert.matches("^pio generate: bad value 'tpu' for %-%-device %(expected cpu or cuda or auto%)\n", r.err)
      r = run("generate tests/fixtures/qwen3-gqa2 -p hi -n 2 --temp 0 --device cpu")
      assert.are.equal(0, r.code)
      assert.matches("%[2 tokens", r.err)
      local _, available = require("pio").model_device("cuda")
      if not available then
        r = run("generate tests/fixtures/qwen3-gqa2 -p hi -n 2 --device cuda")
        assert.are.equal(1, r.code)
        assert.matches("^pio generate: device 'cuda' is not available: ", r.err)
      end
    end)

    it("requires a prompt", function()
      local r = run("generate some-dir")
      assert.are.equal(2, r.code)
      assert.matches("^pio generate: missing %-p PROMPT\n", r.err)
    end)

    it("prints its help", function()
      local r = run("generate --help")
      assert.are.equal(0, r.code)
      assert.matches("^usage: pio generate DIR %-p PROMPT", r.out)
      assert.truthy(r.out:find("--top-p", 1, true))
    end)
  end)
end)
