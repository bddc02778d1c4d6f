-- pio.bench and the benchmark bindings: test parsing, a tiny suite run end to
-- end (rows, JSON, peers that fail), saving weights. Benchmarks measure;
-- nothing here asserts on time.
local pio = require "pio"
local bench = require "pio.bench"
local cjson = require "cjson"

local fixtures = os.getenv("PIO_FIXTURES") or "tests/fixtures"
local tiny = fixtures .. "/qwen3-gqa2"

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p " .. d))
  return d
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- A sink for the printed table.
local function buffer()
  local parts = {}
  return { write = function(self, ...) for _, s in ipairs { ... } do parts[#parts + 1] = s end end,
           flush = function() end, text = function() return table.concat(parts) end }
end

describe("pio.bench", function()
  describe("parse_test", function()
    it("works for llama-bench's test names", function()
      local t = bench.parse_test("pp512")
      assert.same({ 512, 0, 0, "pp512", false }, { t.n_prompt, t.n_gen, t.depth, t.name, t.decode })
      t = bench.parse_test("tg128")
      assert.same({ 0, 128, 0, "tg128", true }, { t.n_prompt, t.n_gen, t.depth, t.name, t.decode })
      t = bench.parse_test("pp512+tg128")
      assert.same({ 512, 128, "pp512+tg128" }, { t.n_prompt, t.n_gen, t.name })
      t = bench.parse_test("tg128 @ d2048")
      assert.same({ 0, 128, 2048, "tg128 @ d2048" }, { t.n_prompt, t.n_gen, t.depth, t.name })
      assert.equal("tg128 @ d2048", bench.parse_test("tg128@d2048").name)
    end)

    it("rejects bad input", function()
      local spec, why = bench.parse_test("pp")
      assert.is_nil(spec)
      assert.equal("bad test 'pp' (expected ppN, tgN, ppN+tgM, optionally @dD)", why)
      assert.is_nil((bench.parse_test("tg0")))
      assert.is_nil((bench.parse_test("pp5+pp6")))
      assert.is_nil((bench.parse_test("xx12")))
    end)
  end)

  it("stats gives the mean and the sample standard deviation", function()
    local mean, sd = bench.stats({ 1, 2, 3, 4 })
    assert.equal(2.5, mean)
    assert.near(math.sqrt(5 / 3), sd, 1e-12)
    assert.same({ 7, 0 }, { bench.stats({ 7 }) })
  end)

  it("parse_peer_output reads a peer script's JSON lines and ignores the rest", function()
    local results, build = bench.parse_peer_output(table.concat({
      'warming up...',
      '{"build": "transformers 5.17.0, torch 2.11.0"}',
      '{"test": "tg128", "samples": [10.0, 14.0]}',
      '{"test": "pp512", "samples": [100]}',
    }, "\n"))
    assert.equal("transformers 5.17.0, torch 2.11.0", build)
    assert.same({ 10.0, 14.0 }, results.tg128.samples)
    assert.near(12.0, results.tg128.mean, 1e-12)
    assert.near(math.sqrt(8), results.tg128.sd, 1e-12)
    assert.equal(100, results.pp512.mean)
    assert.is_nil(results["warming up..."])
    local none = bench.parse_peer_output("Traceback: no GPU")
    assert.is_nil(next(none))
  end)

  it("json encodes nested tables, arrays and odd strings", function()
    local text = bench.json({ b = { 1, 2.5, "x\"y\n" }, a = true, e = setmetatable({}, bench.array) })
    assert.same({ a = true, b = { 1, 2.5, "x\"y\n" }, e = {} }, cjson.decode(text))
    assert.equal('{"a":true,"b":[1,2.5,"x\\"y\\n"],"e":[]}', text)
  end)

  it("paired_median: the median of the pairs' ratios", function()
    assert.equal(3, bench.paired_median({ 2, 9, 4 }, { 1, 3, 1 }))     -- ratios 2, 3, 4
    assert.equal(2.5, bench.paired_median({ 2, 9, 4, 1 }, { 1, 3, 1, 1 })) -- 2, 3, 4, 1
    assert.equal(3, bench.paired_median({ 3, 5 }, { 1 }))               -- only whole pairs
    assert.is_nil(bench.paired_median({}, {}))
  end)

  describe("run", function()
    it("works: rows for every test, roofline fractions, JSON with machine and revision", function()
      local dir = tmpdir()
      local peer_ran = {}
      local suite_path = dir .. "/suite.lua"
      write(suite_path, string.format([[
        return {
          threads = 1, reps = 2, roofline = true,
          models = { { name = "tiny", path = %q, dtype = { "bf16", "f32" } } },
          tests = { "pp4", "tg3", "pp4+tg2", "tg2 @ d5" },
        }]], tiny))
      local suite = assert(bench.load_suite(suite_path))
      suite.peers = {
        { name = "fake", describe = function() return "a fake peer" end,
          prepare = function(ctx) return ctx.spec.dtype == "f32" and "handle" or nil, "no bf16" end,
          run = function(h, ctx)
            peer_ran[#peer_ran + 1] = ctx.spec.dtype
            local r = {}
            for _, s in ipairs(ctx.specs) do r[s.name] = { mean = 1.0, sd = 0, samples = { 1.0 } } end
            return r
          end },
      }
      local out = buffer()
      local json = dir .. "/out.json"
      local res = bench.run(suite, { out = out, json = json, log = function() end })
      assert.equal(8, #res.rows)
      for _, r in ipairs(res.rows) do
        assert.is_true(r.tps > 0)
        assert.equal(2, #r.samples)
        assert.equal(1, r.threads)
        if r.test == "tg3" or r.test == "tg2 @ d5" then
          assert.is_true(r.roofline_fraction > 0)
          -- a bandwidth reading beside each repetition, and the fraction against them
          assert.equal(2, #r.bandwidth_beside)
          assert.is_true(r.bandwidth_beside[1] > 0 and r.bandwidth_beside[2] > 0)
          local want = (r.samples[1] * r.roofline_bytes / r.bandwidth_beside[1]
            + r.samples[2] * r.roofline_bytes / r.bandwidth_beside[2]) / 2
          assert.near(want, r.roofline_fraction_beside, 1e-9 * want)
        else
          assert.is_nil(r.roofline_fraction)
          assert.is_nil(r.bandwidth_beside)
        end
      end
      -- the tiny model fits twice in memory: the peer runs after each of pio's tests, and
      -- for the decode tests (tg3, tg2 @ d5) once after each of pio's 2 repetitions
      assert.same({ "f32", "f32", "f32", "f32", "f32", "f32" }, peer_ran)
      local decoded = cjson.decode(slurp(json))
      assert.equal(8, #decoded.rows)
      assert.equal(8, #decoded.comparisons)
      assert.is_string(decoded.machine.cpu)
      assert.is_number(decoded.machine.read_bandwidth_bytes_per_s)
      assert.is_truthy(decoded.revision)
      local missing, compared = 0, 0
      for _, c in ipairs(decoded.comparisons) do
        if c.dtype == "bf16" then
          missing = missing + 1
          assert.equal("no bf16", c.peer_missing)
        else
          compared = compared + 1
          assert.equal(1.0, c.peer_tps)
          assert.near(c.tps, c.ratio, 1e-6 * c.tps)
          if c.test == "tg3" or c.test == "tg2 @ d5" then
            -- paired: a reading before each of the peer's repetitions, and the median of
            -- pio's sample ÷ the peer's over the pairs
            assert.equal(2, #c.peer_bandwidth_beside)
            local want = (c.roofline_bytes / c.peer_bandwidth_beside[1]
              + c.roofline_bytes / c.peer_bandwidth_beside[2]) / 2
            assert.near(want, c.peer_roofline_fraction_beside, 1e-5 * want) -- JSON keeps 6 digits
            assert.near(c.tps, c.ratio_paired_median, 1e-5 * c.tps) -- median of 2 = their mean
          else
            assert.is_nil(c.ratio_paired_median)
          end
        end
        assert.is_string(c.test)
        assert.is_string(c.model)
      end
      assert.same({ 4, 4 }, { missing, compared })
      local text = out.text()
      assert.truthy(text:find("| tiny bf16", 1, true))
      assert.truthy(text:find("tg2 @ d5", 1, true))
      assert.truthy(text:find("missing", 1, true))
      assert.truthy(text:find("fake: a fake peer", 1, true))
      assert.truthy(text:find("| pio beside |", 1, true))
      os.execute("rm -rf " .. dir)
    end)

    it("runs peers once, after the model is freed, when interleaving is off", function()
      local suite = assert(bench.load_suite((function()
        local dir = tmpdir()
        write(dir .. "/s.lua", string.format([[return { threads = 1, reps = 1, interleave = false,
          models = { { name = "tiny", path = %q, dtype = "f32" } }, tests = { "pp2", "tg2" } }]], tiny))
        return dir .. "/s.lua"
      end)()))
      local calls = {}
      suite.peers = { { name = "fake", prepare = function() return "h" end,
        run = function(_, ctx) calls[#calls + 1] = #ctx.specs return { pp2 = { mean = 2, sd = 0 } } end } }
      local res = bench.run(suite, { out = buffer(), log = function() end })
      assert.same({ 2 }, calls)
      assert.equal(2, res.comparisons[1].peer_tps)
      assert.is_nil(res.comparisons[2].peer_tps) -- the peer gave no tg2
      assert.is_false(res.models[1].peers_interleaved)
    end)

    it("rejects a suite without models and a bad test", function()
      local dir = tmpdir()
      write(dir .. "/a.lua", "return { models = {} }")
      local s, why = bench.load_suite(dir .. "/a.lua")
      assert.is_nil(s)
      assert.equal(dir .. "/a.lua: the suite declares no models", why)
      write(dir .. "/b.lua", string.format("return { models = { { path = %q } }, tests = { 'qq1' } }", tiny))
      s, why = bench.load_suite(dir .. "/b.lua")
      assert.is_nil(s)
      assert.equal(dir .. "/b.lua: bad test 'qq1' (expected ppN, tgN, ppN+tgM, optionally @dD)", why)
      write(dir .. "/c.lua", "return 42")
      s, why = bench.load_suite(dir .. "/c.lua")
      assert.is_nil(s)
      assert.equal(dir .. "/c.lua must return a table (the suite)", why)
      os.execute("rm -rf " .. dir)
    end)
  end)
end)

describe("pio.Model benchmark methods", function()
  it("bench_forward works and rejects bad input", function()
    local m = assert(pio.load(tiny, { threads = 1 }))
    assert.is_true(m:bench_forward(3) >= 0)
    assert.is_true(m:bench_forward(1, 3) >= 0)
    assert.is_true(m:bench_forward(5, 0, 2) >= 0)
    local ctx = m:info().n_ctx
    assert.has_error(function() m:bench_forward(0) end,
                     "bad argument #1 to 'bench_forward' (must be a positive token count)")
    assert.has_error(function() m:bench_forward(2, ctx - 1) end,
                     string.format("2 tokens after %d do not fit the context of %d (load with a larger ctx)",
                                   ctx - 1, ctx))
    m:free()
  end)

  it("bench_decode times concurrent one-token steps and rejects bad input", function()
    local m = assert(pio.load(tiny, { threads = 1, dtype = "f32", max_seqs = 3, ctx = 32 }))
    assert.is_true(m:bench_decode(3, 2, 4) > 0)
    assert.is_true(m:bench_decode(1, 1) > 0)
    assert.has_error(function() m:bench_decode(4, 2) end,
      "bench_decode: 4 sequences (max_seqs 3), 2 steps, depth 0: need 1..max_seqs sequences, steps > 0, depth >= 0")
    assert.has_error(function() m:bench_decode(1, 30, 4) end,
      "bench_decode: depth 4 + 30 steps exceed the context of 32 (load with a larger ctx)")
    assert.has_error(function() m:bench_decode(1, 0) end,
      "bad argument #2 to 'bench_decode' (must be a positive step count)")
    m:free()
  end)

  it("decode_bytes counts the weights a decode step reads", function()
    local m = assert(pio.load(tiny, { threads = 1, dtype = "f32" }))
    local info = m:info()
    assert.is_true(m:decode_bytes() > 0)
    assert.is_true(m:decode_bytes() <= info.weight_bytes)
    m:free()
  end)

  it("save writes a checkpoint that loads back to the same logits", function()
    local dir = tmpdir()
    local m = assert(pio.load(tiny, { threads = 1, dtype = "f32" }))
    assert.is_true(m:save(dir .. "/model.safetensors"))
    assert(os.execute(string.format("cp %s/config.json %s/", tiny, dir)))
    local back = assert(pio.load(dir, { threads = 1, dtype = "f32" }))
    local a, b = m:logits({ 1, 2, 3 }), back:logits({ 1, 2, 3 })
    assert.tensor_near(a, b, 0, 0)
    local ok, why = m:save("/nonexistent-dir/x.safetensors")
    assert.is_nil(ok)
    assert.truthy(why:find("cannot create '/nonexistent-dir/x.safetensors'", 1, true))
    m:free()
    back:free()
    os.execute("rm -rf " .. dir)
  end)

  it("pio.read_bandwidth measures and rejects bad options", function()
    assert.is_true(pio.read_bandwidth({ threads = 1, mib = 8, reps = 1 }) > 0)
    assert.has_error(function() pio.read_bandwidth({ mib = 0 }) end,
                     "pio.read_bandwidth: threads >= 0, mib >= 1 and reps >= 1")
    assert.has_error(function() pio.read_bandwidth({ mb = 1 }) end,
                     "pio.read_bandwidth: unknown option 'mb' (known: threads, mib, reps)")
  end)
end)
