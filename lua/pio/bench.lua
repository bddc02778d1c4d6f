-- lua/pio/bench.lua: `pio bench SUITE.lua [--json FILE] [--reps N]`.
--
-- A suite is a Lua script that returns a table:
--
--   return {
--     threads = 2,                                  -- default for every model
--     reps = 5,                                     -- repetitions after a warm-up
--     models = {
--       { name = "qwen3-0.6b", path = "bench/models/qwen3-0.6b/config.json",
--         synthetic = true, seed = 1, dtype = "bf16" },          -- dtype may be a list
--     },
--     tests = { "pp512", "tg128", "pp512+tg128", "tg128@d2048" },
--     roofline = true,        -- measure read bandwidth, print decode rows as its fraction
--     peers = { require_file("bench/llama_cpp.lua") }, -- optional comparisons
--   }
--
-- Tests read as llama-bench's: ppN processes an N-token prompt in one batch,
-- tgN decodes N tokens one at a time, ppN+tgM does both, and "@dD" first fills
-- the KV cache with D tokens (not timed). t/s is tokens ÷ seconds of forward
-- passes, mean ± sd over the repetitions; token ids are made up and nothing
-- is tokenized or sampled, as in llama-bench.
--
-- A peer is a table { name =, prepare = fn(ctx) -> handle | nil, why,
-- run = fn(handle, ctx) -> { [test] = { mean =, sd =, samples = } } | nil, why,
-- describe = fn() -> text }. prepare runs while the pio model is loaded (to
-- export its weights); run after it is freed.
local M = {}

local function say(fmt, ...)
  io.stderr:write(string.format(fmt, ...), "\n")
end

-- ---- tests ------------------------------------------------------------------------

-- "pp512", "tg128", "pp512+tg128", "tg128@d2048" (spaces allowed) → spec, or nil, why.
function M.parse_test(text)
  local s = text:gsub("%s", "")
  local body, depth = s:match("^(.-)@d(%d+)$")
  if not body then body, depth = s, "0" end
  local spec = { n_prompt = 0, n_gen = 0, depth = tonumber(depth) }
  for part in (body .. "+"):gmatch("([^+]*)%+") do
    local kind, n = part:match("^(%a%a)(%d+)$")
    n = tonumber(n)
    if kind == "pp" and n and n > 0 and spec.n_prompt == 0 then
      spec.n_prompt = n
    elseif kind == "tg" and n and n > 0 and spec.n_gen == 0 then
      spec.n_gen = n
    else
      return nil, string.format("bad test '%s' (expected ppN, tgN, ppN+tgM, optionally @dD)", text)
    end
  end
  local name = {}
  if spec.n_prompt > 0 then name[#name + 1] = "pp" .. spec.n_prompt end
  if spec.n_gen > 0 then name[#name + 1] = "tg" .. spec.n_gen end
  spec.name = table.concat(name, "+") .. (spec.depth > 0 and (" @ d" .. spec.depth) or "")
  spec.decode = spec.n_prompt == 0
  return spec
end

local function stats(samples)
  local n, sum = #samples, 0
  for _, v in ipairs(samples) do sum = sum + v end
  local mean = sum / n
  local var = 0
  for _, v in ipairs(samples) do var = var + (v - mean) ^ 2 end
  return mean, n > 1 and math.sqrt(var / (n - 1)) or 0
end
M.stats = stats

--- The median over i of a[i] / b[i] (pairs measured one right after the other).
function M.paired_median(a, b)
  local r = {}
  for i = 1, math.min(#a, #b) do r[#r + 1] = a[i] / b[i] end
  if #r == 0 then return nil end
  table.sort(r)
  local h = (#r + 1) // 2
  return #r % 2 == 1 and r[h] or (r[h] + r[h + 1]) / 2
end

-- One repetition of a test on a pio model: seconds of forward passes.
local function run_once(model, spec, n_prompt_batch)
  local seconds, past = 0, spec.depth
  if spec.n_prompt > 0 then
    seconds = seconds + model:bench_forward(spec.n_prompt, past, n_prompt_batch)
    past = past + spec.n_prompt
  end
  for i = 0, spec.n_gen - 1 do
    seconds = seconds + model:bench_forward(1, past + i)
  end
  return seconds
end

-- Runs spec `reps` times after a warm-up; returns { mean, sd, samples } in t/s.
function M.measure(model, spec, reps, opts)
  opts = opts or {}
  if spec.depth > 0 then model:bench_forward(spec.depth, 0, opts.n_batch or 512) end
  -- Warm-up as llama-bench: the prompt once, one generated token.
  if spec.n_prompt > 0 then model:bench_forward(spec.n_prompt, spec.depth, opts.n_batch) end
  if spec.n_gen > 0 then model:bench_forward(1, spec.depth) end
  -- opts.beside: a function read just before each repetition (the machine's
  -- memory bandwidth at that moment), its values returned as `beside`;
  -- opts.after_rep(r): called after repetition r (a peer's paired repetition).
  local samples, beside = {}, nil
  for r = 1, reps do
    if opts.beside then
      beside = beside or {}
      beside[r] = opts.beside()
    end
    local s = run_once(model, spec, opts.n_batch)
    samples[r] = (spec.n_prompt + spec.n_gen) / s
    if opts.after_rep then opts.after_rep(r) end
  end
  local mean, sd = stats(samples)
  return { mean = mean, sd = sd, samples = samples, beside = beside }
end

--- What a peer's benchmark script printed: one JSON line per test,
-- {"test": NAME, "samples": [t/s, ...]}, and optionally {"build": TEXT}.
-- Returns { [NAME] = { mean =, sd =, samples = } } and the build text.
function M.parse_peer_output(out)
  local results, build
  results = {}
  for line in out:gmatch("[^\n]+") do
    build = line:match('^{"build": "(.*)"}$') or build
    local name, list = line:match('^{"test": "(.-)", "samples": %[(.-)%]}$')
    if name then
      local samples = {}
      for v in list:gmatch("[^,%s]+") do samples[#samples + 1] = tonumber(v) end
      local mean, sd = M.stats(samples)
      results[name] = { mean = mean, sd = sd, samples = samples }
    end
  end
  return results, build
end

-- ---- the machine ----------------------------------------------------------------------

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- For suites and peers: a JSON file decoded (config.json), raising when unreadable.
function M.read_json(path)
  local text = read_file(path)
  if not text then error("cannot read " .. tostring(path), 2) end
  return require("cjson").decode(text)
end

--- For peers: s quoted for the shell, and a command's output with its exit status
-- (ok, output, code).
function M.shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

function M.run_capture(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok, out, code
end

local function shell(cmd)
  local p = io.popen(cmd .. " 2>/dev/null")
  if not p then return nil end
  local s = p:read("a")
  p:close()
  s = s and s:gsub("%s+$", "")
  return s ~= "" and s or nil
end

function M.machine()
  local cpuinfo = read_file("/proc/cpuinfo") or ""
  local meminfo = read_file("/proc/meminfo") or ""
  local cpus = 0
  for _ in cpuinfo:gmatch("\nprocessor%s*:") do cpus = cpus + 1 end
  if cpuinfo:match("^processor%s*:") then cpus = cpus + 1 end
  local flags = cpuinfo:match("\nflags%s*:%s*([^\n]*)") or ""
  local simd = {}
  for _, f in ipairs { "avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16" } do
    if (" " .. flags .. " "):find(" " .. f .. " ", 1, true) then simd[#simd + 1] = f end
  end
  local load = (read_file("/proc/loadavg") or ""):match("^(%S+ %S+ %S+)")
  return {
    cpu = cpuinfo:match("model name%s*:%s*([^\n]*)") or "unknown",
    cpus = cpus,
    memory_bytes = (tonumber(meminfo:match("MemTotal:%s*(%d+)")) or 0) * 1024,
    simd = table.concat(simd, " "),
    kernel = shell("uname -sr"),
    load_average = load,
  }
end

function M.git_revision()
  return shell("git describe --always --dirty --abbrev=12")
end

-- Memory the kernel says can still be had without swapping, in bytes.
function M.mem_available()
  local kb = tonumber((read_file("/proc/meminfo") or ""):match("MemAvailable:%s*(%d+)"))
  return kb and kb * 1024 or nil
end

-- The process's peak resident memory so far, in bytes (Linux VmHWM).
function M.peak_rss()
  local s = read_file("/proc/self/status") or ""
  local kb = tonumber(s:match("VmHWM:%s*(%d+)"))
  return kb and kb * 1024 or nil
end

-- ---- JSON -----------------------------------------------------------------------------

local function json_encode(v, out)
  local t = type(v)
  if t == "table" then
    if #v > 0 or next(v) == nil and getmetatable(v) == M.array then
      out[#out + 1] = "["
      for i, x in ipairs(v) do
        if i > 1 then out[#out + 1] = "," end
        json_encode(x, out)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        json_encode(k, out)
        out[#out + 1] = ":"
        json_encode(v[k], out)
      end
      out[#out + 1] = "}"
    end
  elseif t == "string" then
    out[#out + 1] = '"' .. v:gsub('[%c"\\]', function(c)
      local named = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\t"] = "\\t" }
      return named[c] or string.format("\\u%04x", c:byte())
    end) .. '"'
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      out[#out + 1] = "null"
    elseif math.type(v) == "integer" then
      out[#out + 1] = tostring(v)
    else
      out[#out + 1] = string.format("%.6g", v)
    end
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  else
    out[#out + 1] = "null"
  end
end

M.array = {} -- metatable marking an empty table as [] rather than {}

function M.json(v)
  local out = {}
  json_encode(v, out)
  return table.concat(out)
end

-- ---- the suite ----------------------------------------------------------------------------

-- Loads SUITE.lua; its chunk gets `require_file(path)` (dofile relative to the
-- suite's folder) and the arguments after `--`.
function M.load_suite(path)
  local dir = path:match("^(.*)/[^/]*$") or "."
  local env = setmetatable({}, { __index = _G })
  env.require_file = function(p)
    local full = p:sub(1, 1) == "/" and p or (dir .. "/" .. p)
    local f = io.open(full, "r")
    if not f then full = p end -- also relative to the working directory
    if f then f:close() end
    local chunk, err = loadfile(full, "t", env)
    if not chunk then error(err, 2) end
    return chunk()
  end
  local chunk, err = loadfile(path, "t", env)
  if not chunk then return nil, err end
  local ok, suite = pcall(chunk)
  if not ok then return nil, tostring(suite) end
  if type(suite) ~= "table" then return nil, path .. " must return a table (the suite)" end
  -- A suite with run = function(ctx) measures on its own (bench/serving.lua): see M.run_custom.
  if type(suite.run) == "function" then return suite end
  if type(suite.models) ~= "table" or #suite.models == 0 then
    return nil, path .. ": the suite declares no models"
  end
  suite.tests = suite.tests or { "pp512", "tg128", "pp512+tg128", "tg128@d2048" }
  local specs = {}
  for i, t in ipairs(suite.tests) do
    local spec, why = M.parse_test(t)
    if not spec then return nil, path .. ": " .. why end
    specs[i] = spec
  end
  suite.specs = specs
  return suite
end

-- Every (model, dtype) pair the suite declares, in order.
local function expand_models(suite)
  local out = {}
  for _, m in ipairs(suite.models) do
    local dtypes = type(m.dtype) == "table" and m.dtype or { m.dtype or "bf16" }
    for _, dt in ipairs(dtypes) do
      local copy = {}
      for k, v in pairs(m) do copy[k] = v end
      copy.dtype = dt
      copy.name = m.name or m.path
      copy.threads = m.threads or suite.threads
      out[#out + 1] = copy
    end
  end
  return out
end

local function gib(bytes) return string.format("%.2f GiB", bytes / 2 ^ 30) end

local function fmt_tps(r)
  if not r then return "-" end
  return string.format("%.2f ± %.2f", r.mean, r.sd)
end

-- Prints a markdown table: header list, rows of cells, right-aligned numbers.
local function print_table(out, header, rows)
  local width = {}
  for i, h in ipairs(header) do width[i] = #h end
  local function len(s) return utf8.len(s) or #s end
  for _, r in ipairs(rows) do
    for i, c in ipairs(r) do width[i] = math.max(width[i], len(c)) end
  end
  local function line(cells)
    local parts = {}
    for i, c in ipairs(cells) do
      local pad = string.rep(" ", width[i] - len(c))
      parts[i] = (i <= 2 and c .. pad) or (pad .. c)
    end
    out:write("| ", table.concat(parts, " | "), " |\n")
  end
  line(header)
  local dashes = {}
  for i = 1, #header do
    dashes[i] = i <= 2 and string.rep("-", width[i]) or (string.rep("-", width[i] - 1) .. ":")
  end
  out:write("| ", table.concat(dashes, " | "), " |\n")
  for _, r in ipairs(rows) do line(r) end
  out:flush()
end

-- The bytes a decode step at depth d reads: weights, plus the KV cache rows it attends to.
local function decode_bytes(info, weight_bytes, depth)
  local kv_elem = info.dtype == "f32" and 4 or 2
  return weight_bytes + 2 * info.n_layer * depth * info.n_head_kv * info.head_dim * kv_elem
end

-- Runs a parsed suite. opts: reps, json (path), out (file handle), log (fn).
function M.run(suite, opts)
  local pio = require "pio"
  opts = opts or {}
  local out = opts.out or io.stdout
  local log = opts.log or function(...) say(...) end
  local reps = opts.reps or suite.reps or 5
  local result = {
    suite = suite.name or opts.suite_path,
    revision = M.git_revision(),
    machine = M.machine(),
    reps = reps,
    rows = setmetatable({}, M.array),
    models = setmetatable({}, M.array),
    comparisons = setmetatable({}, M.array),
    peers = setmetatable({}, M.array),
  }
  result.machine.threads = suite.threads
  -- The roofline's bandwidth: the best of several measurements over the run
  -- (before and after each model), since other jobs' memory traffic on a
  -- shared machine only ever lowers a reading. On the CPU, decode rows also
  -- get a reading just before each repetition ("beside"): on a shared machine
  -- the bandwidth at that moment is what the repetition could have had.
  local bandwidth
  local bw_readings = setmetatable({}, M.array)
  result.machine.read_bandwidth_readings = bw_readings
  local function measure_bandwidth()
    if not suite.roofline then return end
    -- A suite may bring its own reading (a GPU's: bench/cuda.lua).
    local reader = suite.bandwidth or function()
      return pio.read_bandwidth({ threads = suite.threads or 0, mib = 1024 })
    end
    local ok, bw = pcall(reader)
    if ok and bw then
      bw_readings[#bw_readings + 1] = bw
      bandwidth = math.max(bandwidth or 0, bw)
      result.machine.read_bandwidth_bytes_per_s = bandwidth
      log("memory read bandwidth (%s threads): %.1f GB/s", tostring(suite.threads or "all"), bw / 1e9)
    else
      log("memory read bandwidth: not measured (%s)", tostring(bw))
    end
  end
  measure_bandwidth()
  local read_beside
  if suite.roofline and not suite.bandwidth and suite.roofline_beside ~= false then
    read_beside = function()
      local ok, bw = pcall(pio.read_bandwidth, { threads = suite.threads or 0, mib = 256, reps = 3 })
      return ok and bw or nil
    end
  end
  -- Mean over repetitions of t/s ÷ (bandwidth beside it ÷ bytes per token).
  local function fraction_beside(samples, readings, bytes)
    if not (samples and readings and bytes) then return nil end
    local sum, n = 0, 0
    for i, tps in ipairs(samples) do
      if readings[i] then sum, n = sum + tps * bytes / readings[i], n + 1 end
    end
    return n > 0 and sum / n or nil
  end
  for _, p in ipairs(suite.peers or {}) do
    result.peers[#result.peers + 1] = { name = p.name, build = p.describe and p.describe() or nil }
  end

  local header = { "model", "size", "params", "backend", "threads", "test", "t/s" }
  local rows = {}
  local compare_rows, compare_meta = {}, {}
  for _, m in ipairs(expand_models(suite)) do
    log("loading %s (%s, %s threads)", m.name, m.dtype, tostring(m.threads or "all"))
    local max_depth = 0
    for _, s in ipairs(suite.specs) do
      max_depth = math.max(max_depth, s.depth + s.n_prompt + s.n_gen)
    end
    local model, err = pio.load(m.path, {
      synthetic = m.synthetic, seed = m.seed, dtype = m.dtype, threads = m.threads,
      ctx = max_depth > 4096 and max_depth or nil, progress = false,
      device = m.device or suite.device,
    })
    if not model then error(string.format("model %s: %s", m.name, err), 0) end
    local info = model:info()
    local backend = info.device == "cuda" and "CUDA" or "CPU"
    local weight_bytes = model:decode_bytes()
    local label = string.format("%s %s", m.name, m.dtype)
    local per_test, peer_beside = {}, {}

    -- Peers export while the model is loaded. When both copies fit in memory
    -- the peer runs each test right after pio's, so that both see the same
    -- load on a shared machine; otherwise the export waits until pio's tests
    -- are done (writing gigabytes would disturb them) and the peer runs after
    -- the model is freed.
    local handles, peers = {}, suite.peers or {}
    local avail = M.mem_available()
    local interleave = #peers > 0 and suite.interleave ~= false and avail ~= nil
      and avail > 1.3 * info.weight_bytes
    local function prepare_peers()
      for i, p in ipairs(peers) do
        local ctx = { model = model, spec = m, info = info, threads = info.threads, log = log }
        local ok, h, why = pcall(p.prepare, ctx)
        if not ok then h, why = nil, tostring(h) end
        handles[i] = { handle = h, why = why, results = {} }
      end
    end
    if interleave then prepare_peers() end
    local function run_peers(specs)
      for i, p in ipairs(peers) do
        local h = handles[i]
        if h.handle then
          local ctx = { spec = m, info = info, threads = info.threads, log = log, reps = reps,
                        specs = specs }
          local ok, res, w = pcall(p.run, h.handle, ctx)
          if ok and res then
            for k, v in pairs(res) do
              h.results[k] = v
              log("  %s %s: %s %s t/s", p.name, label, k, fmt_tps(v))
            end
            h.ran = true
          else
            h.why = ok and w or tostring(res)
          end
        end
      end
    end

    -- Paired decode repetitions: on a shared machine whose memory bandwidth
    -- jumps between levels within seconds, a peer timed after all of pio's
    -- repetitions may see another level than pio did. With interleaving, each
    -- decode repetition of pio is followed by one of the peer (a run of its
    -- own, warm-up included), so that pairs see the same machine; the ratio of
    -- each pair is kept, and their median reported beside the ratio of means.
    local function paired_peer_rep(spec, r)
      for i, p in ipairs(peers) do
        local h = handles[i]
        if h.handle and not h.failed then
          local bw = read_beside and read_beside() or nil
          local ctx = { spec = m, info = info, threads = info.threads, log = function() end,
                        reps = 1, specs = { spec } }
          local ok, res, w = pcall(p.run, h.handle, ctx)
          local one = ok and res and res[spec.name]
          if one and one.samples and one.samples[1] then
            local acc = h.paired[spec.name] or { samples = {}, beside = {} }
            h.paired[spec.name] = acc
            acc.samples[r], acc.beside[r] = one.samples[1], bw
          else
            h.failed, h.why = true, ok and (w or "no result") or tostring(res)
          end
        end
      end
    end
    local function paired_results(spec)
      for i, p in ipairs(peers) do
        local h = handles[i]
        local acc = h.paired[spec.name]
        if acc and #acc.samples == reps then
          local mean, sd = M.stats(acc.samples)
          h.results[spec.name] = { mean = mean, sd = sd, samples = acc.samples, beside = acc.beside,
                                   paired = true }
          h.ran = true
          log("  %s %s: %s %s t/s (paired)", p.name, label, spec.name, fmt_tps(h.results[spec.name]))
        end
      end
    end
    for _, spec in ipairs(suite.specs) do
      log("  %s: %s ...", label, spec.name)
      local load = M.machine().load_average
      local paired = interleave and spec.decode and suite.paired ~= false
      if paired then
        for _, h in ipairs(handles) do h.paired = h.paired or {} end
      end
      local r = M.measure(model, spec, reps, {
        n_batch = m.n_batch, beside = spec.decode and read_beside or nil,
        after_rep = paired and function(i) paired_peer_rep(spec, i) end or nil })
      per_test[spec.name] = r
      log("  %s: %s %s t/s (load %s)", label, spec.name, fmt_tps(r), tostring(load))
      local row = {
        model = m.name, dtype = m.dtype, size_bytes = info.weight_bytes,
        params = info.parameters, backend = backend, threads = info.threads, test = spec.name,
        tps = r.mean, tps_sd = r.sd, samples = r.samples, load_average = load,
      }
      if spec.decode and suite.roofline then
        row.roofline_bytes = decode_bytes(info, weight_bytes, spec.depth)
        row.bandwidth_beside = r.beside
        row.roofline_fraction_beside = fraction_beside(r.samples, r.beside, row.roofline_bytes)
      end
      result.rows[#result.rows + 1] = row
      rows[#rows + 1] = { label, gib(info.weight_bytes), string.format("%.2f B", info.parameters / 1e9),
                          backend, tostring(info.threads), spec.name, fmt_tps(r) }
      if paired then
        paired_results(spec)
      elseif interleave then
        -- The peer's decode rows: a reading just before its run (it runs in
        -- its own process, so not beside each repetition).
        if spec.decode and read_beside then peer_beside[spec.name] = read_beside() end
        run_peers({ spec })
      end
    end
    result.models[#result.models + 1] = {
      name = m.name, dtype = m.dtype, path = m.path, seed = m.seed, params = info.parameters,
      weight_bytes = info.weight_bytes, decode_bytes = weight_bytes, kv_bytes = info.kv_bytes,
      peak_rss_bytes = M.peak_rss(), peers_interleaved = interleave,
    }
    log("  peak memory so far: %s", gib(M.peak_rss() or 0))
    if not interleave then prepare_peers() end
    model:free()
    collectgarbage()
    if not interleave then run_peers(suite.specs) end

    for i, p in ipairs(peers) do
      local h = handles[i]
      local peer_results = h.ran and h.results or nil
      local why = h.why
      if not peer_results then log("  peer %s: not run (%s)", p.name, tostring(why)) end
      for _, spec in ipairs(suite.specs) do
        local mine, theirs = per_test[spec.name], peer_results and peer_results[spec.name]
        local c = {
          test = spec.name, model = m.name, dtype = m.dtype, peer = p.name, tps = mine.mean,
          peer_tps = theirs and theirs.mean or nil, peer_sd = theirs and theirs.sd or nil,
          peer_samples = theirs and theirs.samples or nil,
          ratio = theirs and mine.mean / theirs.mean or nil,
          ratio_paired_median = theirs and theirs.paired and M.paired_median(mine.samples, theirs.samples)
            or nil,
          peer_missing = not peer_results and tostring(why) or nil,
        }
        if spec.decode and suite.roofline then
          c.roofline_bytes = decode_bytes(info, weight_bytes, spec.depth)
          c.bandwidth_beside = mine.beside
          c.roofline_fraction_beside = fraction_beside(mine.samples, mine.beside, c.roofline_bytes)
          local pb = peer_beside[spec.name]
          if theirs and theirs.paired then -- a reading before each of its repetitions
            c.peer_bandwidth_beside = theirs.beside
            c.peer_roofline_fraction_beside = fraction_beside(theirs.samples, theirs.beside,
                                                              c.roofline_bytes)
          elseif theirs and pb then
            c.peer_bandwidth_beside = pb
            c.peer_roofline_fraction_beside = theirs.mean * c.roofline_bytes / pb
          end
        end
        result.comparisons[#result.comparisons + 1] = c
        compare_meta[#compare_meta + 1] = { label = label, mine = mine, theirs = theirs }
      end
    end
    measure_bandwidth()
  end

  -- Roofline figures once the run's bandwidth is known.
  local function roofline(r)
    if r.roofline_bytes and bandwidth then
      r.roofline_tps = bandwidth / r.roofline_bytes
      r.roofline_fraction = r.tps / r.roofline_tps
      if r.peer_tps then r.peer_roofline_fraction = r.peer_tps / r.roofline_tps end
    end
  end
  for _, r in ipairs(result.rows) do roofline(r) end
  for i, c in ipairs(result.comparisons) do
    roofline(c)
    local meta = compare_meta[i]
    compare_rows[#compare_rows + 1] = {
      meta.label, c.test, fmt_tps(meta.mine), meta.theirs and fmt_tps(meta.theirs) or "missing",
      c.ratio and string.format("%.2f", c.ratio) or "-",
      c.ratio_paired_median and string.format("%.2f", c.ratio_paired_median) or "-",
      c.roofline_tps and string.format("%.1f", c.roofline_tps) or "-",
      c.roofline_fraction and string.format("%.0f%%", 100 * c.roofline_fraction) or "-",
      c.roofline_fraction_beside and string.format("%.0f%%", 100 * c.roofline_fraction_beside) or "-",
      c.peer_roofline_fraction_beside and string.format("%.0f%%", 100 * c.peer_roofline_fraction_beside)
        or "-",
    }
  end

  out:write("\n")
  print_table(out, header, rows)
  if #compare_rows > 0 then
    out:write("\n")
    local peer_names = {}
    for _, p in ipairs(suite.peers) do peer_names[#peer_names + 1] = p.name end
    local pn = table.concat(peer_names, "/")
    print_table(out, { "model", "test", "pio t/s", pn .. " t/s", "pio ÷ " .. pn, "paired",
                       "roofline t/s", "pio of roofline", "pio beside", pn .. " beside" },
                compare_rows)
    for i, p in ipairs(result.peers) do
      -- Asked again: a peer learns its build while it runs.
      local peer = suite.peers[i]
      if peer and peer.describe then p.build = peer.describe() end
      if p.build then out:write(string.format("\n%s: %s\n", p.name, p.build)) end
    end
  elseif bandwidth then
    out:write("\n")
    local rr = {}
    for _, r in ipairs(result.rows) do
      if r.roofline_tps then
        rr[#rr + 1] = { r.model .. " " .. r.dtype, r.test, string.format("%.2f", r.tps),
                        string.format("%.1f", r.roofline_tps),
                        string.format("%.0f%%", 100 * r.roofline_fraction),
                        r.roofline_fraction_beside
                          and string.format("%.0f%%", 100 * r.roofline_fraction_beside) or "-" }
      end
    end
    print_table(out, { "model", "test", "t/s", "roofline t/s", "of roofline", "beside" }, rr)
  end
  if bandwidth then
    out:write(string.format("\nroofline: decode bytes per token (weights, plus the KV cache at "
      .. "depth) ÷ %.1f GB/s, the best of %d read-bandwidth measurements in this run\n",
      bandwidth / 1e9, #bw_readings))
    if read_beside then
      out:write("beside: the same fraction against a reading taken just before each repetition "
        .. "(the mean over repetitions)\n")
    end
  end
  out:write(string.format("peak memory: %s; revision %s\n", gib(M.peak_rss() or 0),
                          tostring(result.revision)))
  -- A suite's own summary of the rows (bench/cuda.lua: fractions of the GPU's limits).
  if suite.report then suite.report(result, out) end
  if opts.json then
    local f, err = io.open(opts.json, "w")
    if not f then error("cannot write " .. opts.json .. ": " .. tostring(err), 0) end
    f:write(M.json(result), "\n")
    f:close()
    log("wrote %s", opts.json)
  end
  return result
end

-- A suite that measures on its own: suite.run(ctx) gets ctx = { quick =, reps =, out =,
-- log = fn(fmt, ...), print_table = fn(out, header, rows) } and returns { rows = {...} },
-- written with the suite name and the git revision to --json.
function M.run_custom(suite, opts)
  local ctx = { quick = opts.quick or false, reps = opts.reps, out = io.stdout,
                print_table = print_table,
                log = function(fmt, ...) say("pio bench: " .. fmt, ...) end }
  local result = suite.run(ctx) or {}
  result.suite = suite.name or opts.suite_path
  result.quick = ctx.quick
  result.revision = result.revision or M.git_revision()
  io.stdout:write(string.format("peak memory: %s\n", gib(M.peak_rss() or 0)))
  if opts.json then
    local f, err = io.open(opts.json, "w")
    if not f then error("cannot write " .. opts.json .. ": " .. tostring(err), 0) end
    f:write(M.json(result), "\n")
    f:close()
    say("pio bench: wrote %s", opts.json)
  end
  return result
end

-- ---- the subcommand --------------------------------------------------------------------

local spec = {
  ["--json"] = { key = "json", kind = "string" },
  ["--reps"] = { key = "reps", kind = "count" },
  ["-r"] = { key = "reps", kind = "count" },
  ["--quick"] = { key = "quick", kind = "flag" }, -- for suites with run(ctx): a shorter run
  ["-h"] = { key = "help", kind = "flag" },
  ["--help"] = { key = "help", kind = "flag" },
}

function M.main(args, name, cli)
  local opts, pos = cli.parse(args, spec)
  local function usage_error(msg)
    say("pio %s: %s", name, msg)
    say("Try 'pio %s --help' for usage.", name)
    return 2
  end
  if not opts then return usage_error(pos) end
  if opts.help then
    io.write(cli.help(name))
    return 0
  end
  if #pos == 0 then return usage_error("missing SUITE.lua") end
  if #pos > 1 then return usage_error(string.format("unexpected argument '%s'", pos[2])) end
  local suite, err = M.load_suite(pos[1])
  if not suite then
    say("pio %s: %s", name, err)
    return 1
  end
  local ok, res = pcall(suite.run and M.run_custom or M.run, suite,
                        { reps = opts.reps, json = opts.json, suite_path = pos[1], quick = opts.quick })
  if not ok then
    say("pio %s: %s", name, tostring(res))
    return 1
  end
  return 0
end

return M
