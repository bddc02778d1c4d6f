-- Qwen3 dense parity with Hugging Face transformers, on the tiny fixtures written by
-- scripts/make_fixtures.py (tests/fixtures/qwen3-gqa{1,2,4}; see tests/fixtures/README.md).
--
-- For every fixture:
--   f32:  pio's logits for every position of 4 prompts (1, 7, 20, 60 tokens) are within
--         1e-4 x max|logit| of transformers' float32 eager logits, and pio's greedy 32-token
--         continuation is transformers' token for token;
--   bf16: pio's top-1 agrees with transformers' bfloat16 eager run at >= 99% of positions
--         (over all prompts of a fixture; with 88 positions that is every one). Where the
--         reference's top two logits are within one bf16 ulp they are tied at that precision
--         and either token counts as agreeing. pio's bf16 logits must also be no further from
--         transformers' bf16 logits than transformers' own f32 run is (a coarse guard; the
--         tight number goes in the placeholder below once measured);
--   tokenizer: the fixture tokenizer encodes a set of texts (regex branches, NFC, bytes,
--         added tokens) exactly as transformers does.
--
-- The bf16 reference is from_pretrained(dtype=torch.bfloat16): weights rounded to bf16
-- (nearest-even) from the f32 file, rotary inv_freq kept in f32. (model.to(torch.bfloat16)
-- would also round inv_freq and moves logits by ~0.1.) pio's bf16 mode loads the same f32
-- file and must round the same way.
--
-- Reference numbers from transformers 5.24.0 / torch 2.15.0 (reference.json "measured"):
--   transformers bf16 vs transformers f32, max|dlogit| / max|logit| over all prompts:
--     qwen3-gqa1 1.75e-2 (0.148 abs), qwen3-gqa2 1.21e-2 (0.121), qwen3-gqa4 2.41e-2 (0.196);
--     top-1 agreement between those two runs: 96.6%, 97.7%, 98.9%.
--   transformers bf16 re-run with every matmul accumulated in f64 before the bf16 rounding
--   (a stand-in for a runtime that rounds where transformers does but sums in another
--   order): max|dlogit| 0.0625, 0.031, 3e-5 abs; top-1 identical at all 264 positions.
--
-- Measured for pio (PIO_VERBOSE=1 prints them), 2 threads, AVX-512 kernels:
--   f32 vs transformers f32, max|dlogit| / max|logit|: at most 8.2e-7 (gqa1), 4.3e-7 (gqa2),
--     7.7e-7 (gqa4): about 100x inside the 1e-4 bound; greedy 32 tokens identical.
--   bf16 vs transformers bf16, max|dlogit| / max|logit|: 7.35e-3 (gqa1, 0.0625 abs = one bf16
--     step), 0 (gqa2, bit-identical), 3.85e-3 (gqa4, 0.031 abs); top-1 88/88 on all three.

-- The checks live in tests/qwen3_parity.lua, loaded into this spec's environment
-- (busted's describe/it) so that tests/spec/cuda_spec.lua runs them on the GPU too.
assert(loadfile("tests/qwen3_parity.lua", "t", _ENV))()("cpu")

-- Sliding-window attention from config.json (use_sliding_window, sliding_window,
-- max_window_layers, layer_types), against transformers: the fixture's weights under an
-- edited config.json (scripts/make_fixtures.py writes sliding.json and sliding.safetensors:
-- f32 logits rows of the 60-token prompt and 16 greedy tokens, window 8). Measured: pio's
-- f32 rows within 5e-7 x max|logit| of transformers', greedy identical.
local cjson = require "cjson"
local pio = require "pio"
local U = assert(loadfile("tests/parity_util.lua", "t", _ENV))()
local FIXTURES, read_file, ints = U.FIXTURES, U.read_file, U.ints

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- A copy of fixture dir in a fresh temporary directory, config.json edited by `edits`
-- (a key set to cjson.null is written as null).
local function edited_copy(dir, edits)
  local tmp = os.tmpname()
  os.remove(tmp)
  assert(os.execute("mkdir -p " .. tmp))
  for _, f in ipairs { "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                       "generation_config.json" } do
    local ok, s = pcall(read_file, dir .. "/" .. f)
    if ok then write_file(tmp .. "/" .. f, s) end
  end
  local cfg = cjson.decode(read_file(dir .. "/config.json"))
  for k, v in pairs(edits) do cfg[k] = v end
  write_file(tmp .. "/config.json", cjson.encode(cfg))
  return tmp
end

for _, fixture in ipairs { "qwen3-gqa2", "qwen3-moe-e8k2" } do
  local dir = FIXTURES .. "/" .. fixture
  local sref = U.read_json(dir .. "/sliding.json")
  local ref = U.read_json(dir .. "/reference.json")
  local window = math.tointeger(sref.window)
  local positions = ints(sref.positions)
  local prompt = ints(ref.prompts[math.tointeger(sref.prompt) + 1].ids)

  describe("sliding window from config.json: " .. fixture .. " #qwen3 #kv", function()
    local expected, full, tmps
    lazy_setup(function()
      expected = assert(pio.safetensors(dir .. "/sliding.safetensors"))
      full = assert(pio.load(dir, { dtype = "f32", threads = 2 }))
      tmps = {}
    end)
    lazy_teardown(function()
      full:free()
      for _, t in ipairs(tmps) do os.execute("rm -rf " .. t) end
    end)

    for _, v in ipairs(sref.variants) do
      it(v.name .. ": transformers' logits and greedy tokens, full attention inside the window", function()
        local tmp = edited_copy(dir, v.config)
        tmps[#tmps + 1] = tmp
        local m = assert(pio.load(tmp, { dtype = "f32", threads = 2, max_seqs = 2 }))
        local info = m:info()
        assert.equal(window, info.sliding_window)
        local want_windows = {}
        for l, t in ipairs(v.layer_types) do want_windows[l] = t == "sliding_attention" and window or 0 end
        assert.same(want_windows, info.layer_windows)

        local got = m:logits(prompt):table()
        local base = full:logits(prompt):table()
        local want = expected[v.tensor]:table()
        local d, big, past = 0, 0, 0
        for r, p in ipairs(positions) do
          for c = 1, #want[r] do
            d = math.max(d, math.abs(got[p + 1][c] - want[r][c]))
            big = math.max(big, math.abs(want[r][c]))
          end
        end
        assert.is_true(d <= 1e-4 * big, ("max|dlogit| %.3g vs max|logit| %.3g"):format(d, big))
        local inside = 0
        for p = 1, #prompt do
          for c = 1, #got[p] do
            if p <= window then
              inside = math.max(inside, math.abs(got[p][c] - base[p][c]))
            else
              past = math.max(past, math.abs(got[p][c] - base[p][c]))
            end
          end
        end
        assert.is_true(past > 0.1, "the window changed nothing past it")
        -- Inside the window full attention's numbers: exactly for the first `window` tokens
        -- alone; in the long prompt MoE experts batch other rows (last-bit differences).
        assert.is_true(inside <= 1e-5 * big, ("inside the window: max|dlogit| %.3g"):format(inside))
        local head = { table.unpack(prompt, 1, window) }
        assert.same(full:logits(head):table(), m:logits(head):table())

        -- through the KV cache, a token at a time: contiguous, then paged (4-position blocks)
        local gp = ints(ref.prompts[math.tointeger(v.greedy_prompt) + 1].ids)
        local greedy = ints(v.greedy_f32)
        local opts = { max_new_tokens = #greedy, temperature = 0, ignore_eos = true }
        local _, st = m:generate(gp, opts)
        assert.same(greedy, st.tokens)
        m:use(pio.strategy.kv.paged { block = 4 })
        _, st = m:generate(gp, opts)
        assert.same(greedy, st.tokens)
        -- a sliding strategy overrides config.json for every layer
        m:use(pio.strategy.attention.sliding { window = 3 })
        assert.same({ 3, 3, 3 }, m:info().layer_windows)
        m:free()
      end)
    end

    it("refuses a config whose layer_types it cannot follow, naming the problem", function()
      local cases = {
        { { layer_types = { "full_attention" } }, "layer_types must be a list of 3 strings (one per layer)" },
        { { use_sliding_window = true, sliding_window = 8,
            layer_types = { "full_attention", "chunked_attention", "full_attention" } },
          "layer_types[1] is 'chunked_attention' (known: full_attention, sliding_attention)" },
        { { use_sliding_window = false,
            layer_types = { "sliding_attention", "full_attention", "full_attention" } },
          "layer_types[0] is 'sliding_attention' but there is no window" },
        { { use_sliding_window = true, sliding_window = 0 }, "sliding_window must be >= 1, got 0" },
      }
      for _, case in ipairs(cases) do
        local tmp = edited_copy(dir, case[1])
        tmps[#tmps + 1] = tmp
        local m, err = pio.load(tmp, { dtype = "f32", threads = 2 })
        assert.is_nil(m)
        assert.matches(case[2], err, 1, true)
      end
    end)
  end)
end
