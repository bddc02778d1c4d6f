-- bench/llama_cpp.lua: llama.cpp as a peer of `pio bench` (see lua/pio/bench.lua).
--
-- prepare: the pio model's own weights go to safetensors (model:save), then
-- to GGUF with the `gguf` package (bench/peers/to_gguf.py), cached under
-- $PIO_BENCH_CACHE (default ~/.cache/pio-bench) by model, dtype and seed.
-- run: bench/peers/llama_cpp_bench.py times them with llama.cpp through
-- llama-cpp-python, llama-bench's way, with the same threads and tests.
--
-- The Python environment is $PIO_BENCH_PYTHON, else /root/.venvs/pio-peers
-- (bench/peers/install.sh makes it). Without it the peer is reported missing.
local M = { name = "llama.cpp" }

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "bench"

local bench = require "pio.bench"
local quote, run_capture = bench.shell_quote, bench.run_capture

local function python()
  local env = os.getenv("PIO_BENCH_PYTHON")
  if env and env ~= "" then return env end
  local home = os.getenv("HOME") or "/root"
  for _, p in ipairs { "/root/.venvs/pio-peers/bin/python", home .. "/.venvs/pio-peers/bin/python" } do
    local f = io.open(p, "r")
    if f then f:close() return p end
  end
  return nil
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function cache_dir()
  local d = os.getenv("PIO_BENCH_CACHE")
  if d and d ~= "" then return d end
  return (os.getenv("HOME") or "/tmp") .. "/.cache/pio-bench"
end


local build_text
function M.describe()
  if build_text then return build_text end
  local py = python()
  if not py then return "not installed (bench/peers/install.sh)" end
  local ok, out = run_capture(quote(py) .. " -c " .. quote(
    "import llama_cpp as L; L.llama_backend_init(); " ..
    "print('llama-cpp-python', L.__version__, 'built from source:', L.llama_print_system_info().decode().strip())")
    .. " 2>/dev/null")
  build_text = ok and out:gsub("%s+$", "") or "not importable"
  return build_text
end

function M.prepare(ctx)
  local py = python()
  if not py then return nil, "no Python environment with llama-cpp-python (run bench/peers/install.sh)" end
  local ok = run_capture(quote(py) .. " -c 'import llama_cpp, gguf' 2>&1")
  if not ok then return nil, py .. " cannot import llama_cpp and gguf (run bench/peers/install.sh)" end
  local spec = ctx.spec
  local key = string.format("%s-%s-seed%s-v1", spec.name, spec.dtype, tostring(spec.seed or 0))
  local dir = cache_dir() .. "/" .. key
  local gguf = dir .. "/model.gguf"
  if exists(gguf) then
    ctx.log("  llama.cpp: using %s", gguf)
    return gguf
  end
  if not spec.synthetic then
    return nil, "only synthetic models are exported for the peer (they have no tokenizer to convert)"
  end
  os.execute("mkdir -p " .. quote(dir))
  ctx.log("  llama.cpp: writing the same weights to %s", gguf)
  local saved, why = ctx.model:save(dir .. "/model.safetensors")
  if not saved then return nil, why end
  os.execute(string.format("cp %s %s/config.json", quote(spec.path), quote(dir)))
  local okc, out = run_capture(string.format("%s %s %s %s 2>&1", quote(py),
    quote(here .. "/peers/to_gguf.py"), quote(dir), quote(gguf .. ".part")))
  os.remove(dir .. "/model.safetensors")
  if not okc then return nil, "to_gguf.py failed: " .. out end
  os.rename(gguf .. ".part", gguf)
  return gguf
end

function M.run(gguf, ctx)
  local args = {}
  for _, s in ipairs(ctx.specs) do
    args[#args + 1] = quote(string.format("%d,%d,%d,%s", s.n_prompt, s.n_gen, s.depth, s.name))
  end
  ctx.log("  llama.cpp: %s, %d threads", gguf, ctx.threads)
  local ok, out = run_capture(string.format("%s %s %s %d %d %s 2>&1", quote(python()),
    quote(here .. "/peers/llama_cpp_bench.py"), quote(gguf), ctx.threads, ctx.reps,
    table.concat(args, " ")))
  local results, build = bench.parse_peer_output(out)
  build_text = build or build_text
  if not ok and next(results) == nil then return nil, "llama_cpp_bench.py failed: " .. out end
  return results
end

return M
