-- lua/pio/cli.lua: the subcommands of the `pio` host (`pio generate DIR -p ...`).
--
-- main.c treats a first argument as a subcommand when `commands[name]` exists,
-- and then calls `main(args)` with every argument (the name first); the number
-- main returns is the exit code. A new subcommand is one more entry in
-- `commands`; `pio --help` lists it through `usage()`.
local M = {}

-- name -> { synopsis = one line, summary = what it does, help = option lines,
--           run = function(args, name) -> exit code }, args without the name.
M.commands = {}

local function say(fmt, ...)
  io.stderr:write(string.format(fmt, ...), "\n")
end

-- ---- option parsing --------------------------------------------------------------

-- Value checkers: each takes the option's text and returns the value, or nil
-- and what was expected.
local kinds = {}

function kinds.string(s) return s end

function kinds.integer(s)
  local v = math.tointeger(tonumber(s))
  if v == nil then return nil, "an integer" end
  return v
end

function kinds.count(s) -- an integer >= 1
  local v = math.tointeger(tonumber(s))
  if v == nil or v < 1 then return nil, "a positive integer" end
  return v
end

function kinds.natural(s) -- an integer >= 0
  local v = math.tointeger(tonumber(s))
  if v == nil or v < 0 then return nil, "a non-negative integer" end
  return v
end

function kinds.nonnegative(s)
  local v = tonumber(s)
  if v == nil or not (v >= 0) then return nil, "a number >= 0" end
  return v
end

function kinds.probability(s) -- in (0, 1]
  local v = tonumber(s)
  if v == nil or not (v > 0 and v <= 1) then return nil, "a number in (0, 1]" end
  return v
end

-- Parses args strictly against spec: spec[option] = { key = name in the result,
-- kind = one of `kinds` or "flag", choices = { allowed values } }. Accepts
-- `--opt value`, `--opt=value` and `-x value`; `--` ends the options.
-- Returns opts, positionals; or nil, message.
function M.parse(args, spec)
  local opts, positional = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "--" then
      table.move(args, i + 1, #args, #positional + 1, positional)
      break
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      local name, inline = a:match("^(%-%-[^=]+)=(.*)$")
      name = name or a
      local o = spec[name]
      if o == nil then return nil, string.format("unknown option '%s'", name) end
      if o.kind == "flag" then
        if inline then return nil, string.format("option '%s' takes no value", name) end
        opts[o.key] = true
      else
        local text = inline
        if text == nil then
          i = i + 1
          text = args[i]
          if text == nil then return nil, string.format("option '%s' needs a value", name) end
        end
        local v, expected = kinds[o.kind](text)
        if v ~= nil and o.choices then
          local ok = false
          for _, c in ipairs(o.choices) do ok = ok or c == v end
          if not ok then v, expected = nil, table.concat(o.choices, " or ") end
        end
        if v == nil then
          return nil, string.format("bad value '%s' for %s (expected %s)", text, name, expected)
        end
        opts[o.key] = v
      end
    else
      positional[#positional + 1] = a
    end
    i = i + 1
  end
  return opts, positional
end

-- ---- generate ------------------------------------------------------------------------

local generate_spec = {
  ["-p"] = { key = "prompt", kind = "string" },
  ["--prompt"] = { key = "prompt", kind = "string" },
  ["-n"] = { key = "max_new_tokens", kind = "natural" },
  ["--temp"] = { key = "temperature", kind = "nonnegative" },
  ["--seed"] = { key = "seed", kind = "natural" },
  ["--top-k"] = { key = "top_k", kind = "natural" },
  ["--top-p"] = { key = "top_p", kind = "probability" },
  ["--dtype"] = { key = "dtype", kind = "string", choices = { "f32", "bf16" } },
  ["--threads"] = { key = "threads", kind = "count" },
  ["--device"] = { key = "device", kind = "string", choices = { "cpu", "cuda", "auto" } },
  ["-h"] = { key = "help", kind = "flag" },
  ["--help"] = { key = "help", kind = "flag" },
}

-- The stats line: `[32 tokens, 12.3 tok/s, prompt 7 tokens in 0.01 s]`.
-- s.new_tokens is the count where s.tokens holds the generated ids.
local function stats_line(s)
  local n = s.new_tokens or (type(s.tokens) == "table" and #s.tokens) or s.tokens or 0
  local parts = { string.format("%d tokens", n) }
  if s.tokens_per_second then parts[#parts + 1] = string.format("%.1f tok/s", s.tokens_per_second) end
  if s.prompt_tokens and s.prompt_seconds then
    parts[#parts + 1] = string.format("prompt %d tokens in %.2f s", s.prompt_tokens, s.prompt_seconds)
  end
  return "[" .. table.concat(parts, ", ") .. "]"
end

-- model:last_stats() is the source of truth; where a model lacks it, count the
-- pieces and time them with pio.now() (wall time; os.clock is CPU time).
local function run_generate(args, name)
  local opts, pos = M.parse(args, generate_spec)
  local function usage_error(msg)
    say("pio %s: %s", name, msg)
    say("Try 'pio %s --help' for usage.", name)
    return 2
  end
  if not opts then return usage_error(pos) end
  if opts.help then
    io.write(M.help(name))
    return 0
  end
  if #pos == 0 then return usage_error("missing model directory") end
  if #pos > 1 then return usage_error(string.format("unexpected argument '%s'", pos[2])) end
  if opts.prompt == nil then return usage_error("missing -p PROMPT") end

  local pio = require "pio"
  -- pio.load returns nil, message for a bad directory; a raise is reported the same way.
  local ok, model, err = pcall(pio.load, pos[1], { dtype = opts.dtype, threads = opts.threads,
                                                  device = opts.device })
  if not ok then model, err = nil, model end
  if not model then
    say("pio %s: %s", name, tostring(err))
    return 1
  end

  local stream_opts = {
    max_new_tokens = opts.max_new_tokens,
    temperature = opts.temperature,
    seed = opts.seed,
    top_k = opts.top_k,
    top_p = opts.top_p,
  }
  local now = pio.now
  local started = now and now()
  local pieces = 0
  for piece in model:stream(opts.prompt, stream_opts) do
    io.write(piece)
    io.flush()
    pieces = pieces + 1
  end
  io.write("\n")

  local stats = type(model.last_stats) == "function" and model:last_stats()
  if not stats then
    local seconds = now and now() - started
    stats = { tokens = pieces, tokens_per_second = seconds and seconds > 0 and pieces / seconds or nil }
  end
  say("%s", stats_line(stats))
  if type(model.free) == "function" then model:free() end -- weights go now, not at the next GC
  return 0
end

M.commands.generate = {
  synopsis = "generate DIR -p PROMPT [-n N] [--temp T] [--seed S] [--top-k K] [--top-p P]"
    .. " [--dtype f32|bf16] [--threads N] [--device cpu|cuda|auto]",
  summary = "generate text from a Hugging Face model directory, streamed to stdout",
  help = [[
  -p, --prompt PROMPT  the prompt (required)
  -n N                 generate at most N new tokens
  --temp T             sampling temperature (0 = greedy)
  --seed S             sampling seed
  --top-k K            keep the K most likely tokens (0 = off)
  --top-p P            keep the smallest set with probability >= P (1 = off)
  --dtype f32|bf16     compute dtype of the weights
  --threads N          CPU threads
  --device D           cpu, cuda or auto (default: PIO_DEVICE, else auto: the GPU
                       when one answers)
  -h, --help           print this help
Statistics go to stderr: [N tokens, R tok/s, prompt P tokens in S s].
]],
  run = run_generate,
}

-- ---- bench ---------------------------------------------------------------------------

M.commands.bench = {
  synopsis = "bench SUITE.lua [--json FILE] [--reps N] [--quick]",
  summary = "run a benchmark suite (llama-bench style rows: pp512, tg128, ...)",
  help = [[
  --json FILE          write every row, the machine and the git revision as JSON
  -r, --reps N         repetitions per test after a warm-up (default: the suite's, else 5)
  --quick              a shorter run, for suites that measure on their own (bench/serving.lua)
  -h, --help           print this help
A suite is a Lua script returning { models = {...}, tests = {...} }; see bench/*.lua.
Forward passes alone are timed: no tokenizing, no sampling.
]],
  run = function(args, name) return require("pio.bench").main(args, name, M) end,
}

-- ---- test ----------------------------------------------------------------------------------

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function read_lines(cmd)
  local p = io.popen(cmd)
  if not p then return {} end
  local out = {}
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  return out
end

-- The source tree's specs and the #tags their describe/it names carry.
local function spec_tags(root)
  local tags, seen = {}, {}
  for _, path in ipairs(read_lines("ls " .. shell_quote(root .. "/tests/spec") .. "/*_spec.lua 2>/dev/null")) do
    local f = io.open(path, "r")
    if f then
      for line in f:lines() do
        if line:match("describe%s*%(") or line:match("%f[%w]it%s*%(") then
          for text in line:gmatch('"([^"]*)"') do -- tags live in the names: "pio.Model #qwen3"
            for tag in text:gmatch("#([%a][%w_]*)") do
              if not seen[tag] then seen[tag], tags[#tags + 1] = true, tag end
            end
          end
        end
      end
      f:close()
    end
  end
  table.sort(tags)
  return tags
end

-- run_all_project_tests / run_model_tests(name), as the seed has them: busted
-- over tests/spec from the source tree, whatever the current directory, with
-- this pio as the interpreter (so the specs test the host that runs them).
local function run_test(args, name)
  local opts, pos = M.parse(args, {
    ["-h"] = { key = "help", kind = "flag" }, ["--help"] = { key = "help", kind = "flag" },
    ["--list"] = { key = "list", kind = "flag" },
    ["-o"] = { key = "output", kind = "string" }, ["--output"] = { key = "output", kind = "string" },
  })
  if not opts then
    say("pio %s: %s", name, pos)
    say("Try 'pio %s --help' for usage.", name)
    return 2
  end
  if opts.help then
    io.write(M.help(name))
    return 0
  end
  if #pos > 1 then
    say("pio %s: unexpected argument '%s'", name, pos[2])
    return 2
  end
  local core = require "pio.core"
  local root = os.getenv("PIO_SOURCE_DIR")
  if root == nil or root == "" then root = core.source_dir end
  local tag = pos[1]
  if tag then
    -- a plugin's name stands for its model family
    local ok, plugins = pcall(require, "pio.plugins")
    if ok and plugins.factories then
      for _, d in ipairs(core.plugin_descriptors()) do
        if d.name == tag then tag = d.model_family end
      end
    end
    local tags = spec_tags(root)
    local known = false
    for _, t in ipairs(tags) do known = known or t == tag end
    if not known then
      say("pio %s: no tests are tagged '%s' (tags: %s)", name, pos[1], table.concat(tags, ", "))
      return 2
    end
  end
  local busted = read_lines("command -v busted")[1]
  if not busted then
    say("pio %s: busted is not installed (scripts/install-deps.sh installs it)", name)
    return 1
  end
  local build = os.getenv("PIO_BUILD_DIR")
  if build == nil or build == "" then
    build = (core.executable() or ""):match("^(.*)/[^/]*$") or (root .. "/build")
  end
  local cmd = { "cd", shell_quote(root), "&&", "PIO_BUILD_DIR=" .. shell_quote(build),
                shell_quote(core.executable()), shell_quote(busted) }
  -- busted finds a tag with name:find("#" .. tag): a frontier keeps "qwen3" off "#qwen3_moe".
  if tag then cmd[#cmd + 1] = "--tags=" .. shell_quote(tag .. "%f[^%w_]") end
  if opts.list then cmd[#cmd + 1] = "--list" end
  if opts.output then cmd[#cmd + 1] = "--output=" .. shell_quote(opts.output) end
  local _, _, code = os.execute(table.concat(cmd, " "))
  return code or 1
end

M.commands.test = {
  synopsis = "test [FAMILY|PLUGIN] [--list] [-o HANDLER]",
  summary = "run the Lua specs (all of them, or one model family's), from any directory",
  help = [[
  FAMILY               a model family's tests only, by busted tag: qwen3, qwen3_moe, ...
  PLUGIN               a plugin's name stands for its family (qwen3_4b_instruct_2507 → qwen3)
  --list               list the tests instead of running them
  -o, --output H       busted output handler (default: the summary, last line N passed, N failed)
  -h, --help           print this help
The specs run from the source tree this pio was built from ($PIO_SOURCE_DIR overrides it),
with this pio as the interpreter and its build directory ($PIO_BUILD_DIR overrides it).
]],
  run = run_test,
}

-- ---- entry points ------------------------------------------------------------------------

local function sorted_names()
  local names = {}
  for name in pairs(M.commands) do names[#names + 1] = name end
  table.sort(names)
  return names
end

-- The "Commands:" section of `pio --help`.
function M.usage()
  local out = { "Commands:\n" }
  for _, name in ipairs(sorted_names()) do
    local c = M.commands[name]
    out[#out + 1] = string.format("  pio %s\n      %s\n", c.synopsis or name, c.summary or "")
  end
  out[#out + 1] = "Run 'pio <command> --help' for a command's options.\n"
  return table.concat(out)
end

-- `pio <name> --help`.
function M.help(name)
  local c = M.commands[name]
  return string.format("usage: pio %s\n\n%s\n\nOptions:\n%s", c.synopsis or name, c.summary or "",
                       c.help or "")
end

-- args = { name, ... } as the host got them; returns the exit code.
function M.main(args)
  local name = args[1]
  local c = name and M.commands[name]
  if not c then
    say("pio: unknown command '%s'", tostring(name))
    return 2
  end
  return c.run(table.move(args, 2, #args, 1, {}), name) or 0
end

return M
