-- What the parity checks share (tests/qwen3_parity.lua, tests/qwen3_moe_parity.lua): where
-- the fixtures are, the tolerances, small helpers and the checks both architectures run.
-- Load it with loadfile("tests/parity_util.lua", "t", _ENV)() from a spec, so that
-- check_shape sees busted's assert.
local cjson = require "cjson"

local M = {}

M.FIXTURES = os.getenv("PIO_FIXTURES") or "tests/fixtures"
M.THREADS = tonumber(os.getenv("PIO_THREADS") or "2")
M.VERBOSE = os.getenv("PIO_VERBOSE") ~= nil

M.F32_RTOL = 1e-4 -- max|dlogit| <= F32_RTOL * max|reference logit|, per prompt
M.BF16_TOP1 = 0.99 -- share of positions whose top-1 must agree

function M.read_file(path)
    local f = assert(io.open(path, "rb"))
    local text = f:read("a")
    f:close()
    return text
end

function M.read_json(path)
    return cjson.decode(M.read_file(path))
end

-- lua-cjson decodes every number as a float; token ids must be integers.
function M.ints(list)
    local out = {}
    for i, v in ipairs(list) do
        out[i] = assert(math.tointeger(v), "token id is not an integer")
    end
    return out
end

-- 0-based index of the largest value; the first one among exact ties, as torch.argmax.
function M.argmax(row)
    local best, at = -math.huge, 0
    for j = 1, #row do
        if row[j] > best then
            best, at = row[j], j - 1
        end
    end
    return at, best
end

-- One bf16 ulp at magnitude x (8 significant bits).
function M.bf16_ulp(x)
    x = math.abs(x)
    if x == 0 then
        return 0
    end
    return 2.0 ^ (math.floor(math.log(x, 2)) - 7)
end

-- Test names: at most n characters (cut on a UTF-8 boundary), control characters as \ddd.
function M.printable(s, n)
    if s == "" then
        return "(empty)"
    end
    local cut = utf8.offset(s, n + 1)
    if cut and cut <= #s then
        s = s:sub(1, cut - 1) .. "..."
    end
    return (s:gsub("%c", function(ch)
        return ("\\%d"):format(ch:byte())
    end))
end

function M.check_shape(t, rows, cols, what)
    local shape = t:shape()
    assert.are.same({ rows, cols }, { shape[1], shape[2] }, what .. ": logits shape")
end

-- Largest |got - want| and largest |want| over a [n][v] pair of nested tables.
function M.max_delta(got, want)
    local d, big = 0, 0
    for r = 1, #want do
        local g, w = got[r], want[r]
        for c = 1, #w do
            d = math.max(d, math.abs(g[c] - w[c]))
            big = math.max(big, math.abs(w[c]))
        end
    end
    return d, big
end

-- ---- the checks both architectures run (registered inside a describe) ----------------
-- model() and expected() return the fixture's loaded model and reference tensors (they
-- are made in lazy_setup, after registration).

-- One it() per prompt: f32 logits at every position within F32_RTOL x max|logit|.
function M.f32_prompt_checks(name, ref, vocab, model, expected)
    for i, p in ipairs(ref.prompts) do
        local ids = M.ints(p.ids)
        it(("matches transformers' f32 logits at every position of prompt %d (%d tokens)"):format(i - 1, #ids), function()
            local what = ("%s prompt %d"):format(name, i - 1)
            local t = model():logits(ids)
            M.check_shape(t, #ids, vocab, what)
            local got = t:table()
            local want = expected()["logits_f32." .. (i - 1)]:table()
            local d, big = M.max_delta(got, want)
            if M.VERBOSE then
                io.stderr:write(("%s f32: max|d| %.3g = %.3g x max|logit|\n"):format(what, d, d / big))
            end
            -- max|dlogit| <= F32_RTOL * max|logit|: an absolute tolerance per prompt
            assert.tensor_near(got, want, 0, M.F32_RTOL * big)
        end)
    end
end

-- transformers' greedy f32 continuation, token for token (and its text where exact).
function M.greedy_check(name, ref, model)
    it("generates transformers' greedy continuation (32 tokens, f32)", function()
        local prompt = M.ints(ref.prompts[math.tointeger(ref.greedy_prompt) + 1].ids)
        local want = M.ints(ref.greedy_f32)
        local text, stats = model():generate(prompt, { max_new_tokens = #want, temperature = 0 })
        assert.are.same(want, stats.tokens, name .. ": greedy f32 tokens differ from transformers'")
        -- Only where no added token or broken UTF-8 leaves room for detokenizer policy.
        if ref.greedy_f32_text_exact then
            assert.are.equal(ref.greedy_f32_text, text)
        end
    end)
end

-- Strict bf16 top-1 agreement (the same token, even where transformers' top two are tied
-- at bf16 precision) at >= BF16_TOP1 of all prompts' positions. Returns the largest
-- |dlogit| and |logit| for callers that bound them too.
function M.bf16_top1(name, ref, vocab, model16, expected)
    local agree, total, worst, big = 0, 0, 0, 0
    local misses = {}
    for i, p in ipairs(ref.prompts) do
        local ids = M.ints(p.ids)
        local t = model16:logits(ids)
        M.check_shape(t, #ids, vocab, ("%s prompt %d"):format(name, i - 1))
        local got = t:table()
        local want = expected["logits_bf16." .. (i - 1)]:table()
        local d, b = M.max_delta(got, want)
        worst, big = math.max(worst, d), math.max(big, b)
        for r = 1, #ids do
            local g = M.argmax(got[r])
            local w, wmax = M.argmax(want[r])
            if g == w then
                agree = agree + 1
            else
                misses[#misses + 1] = ("prompt %d pos %d: pio %d, transformers %d (margin %.4g)"):format(
                    i - 1, r - 1, g, w, wmax - want[r][g + 1])
            end
            total = total + 1
        end
    end
    if M.VERBOSE then
        io.stderr:write(("%s bf16: max|d| %.3g = %.3g x max|logit|, top-1 %d/%d\n"):format(
            name, worst, worst / big, agree, total))
    end
    assert(
        agree >= M.BF16_TOP1 * total,
        ("%s bf16: top-1 agrees at %d of %d positions; misses: %s"):format(
            name, agree, total, table.concat(misses, "; "))
    )
    return worst, big
end

-- One fixture's parity describes, as the dense and MoE files share them: the fixture
-- loaded in f32 on `device`, its logits per prompt and greedy tokens against
-- transformers', then loaded in bf16, the top-1 agreement. hooks (all optional):
--   loaded(get_model, ref)   its run first on the f32 model (the MoE file counts parameters)
--   bf16(worst, big, ref)    a further check of bf16_top1's numbers (the dense file's bound)
--   more(get_model, ref)     further describes on the f32 model (the dense file's tokenizer)
function M.describe_fixture(family, device, name, tags, hooks)
    local pio = require "pio"
    hooks = hooks or {}
    local dir = M.FIXTURES .. "/" .. name
    local ref = M.read_json(dir .. "/reference.json")
    local vocab = math.tointeger(ref.config.vocab_size)
    local function load(dtype)
        local m, err = pio.load(dir, { dtype = dtype, threads = M.THREADS, device = device })
        assert(m, err)
        return m
    end
    describe(("%s parity on %s: %s #%s%s"):format(family, device, name, family, tags or ""), function()
        local expected -- name -> pio.Tensor, from reference.safetensors
        local model -- the fixture in f32
        local function get_model() return model end

        lazy_setup(function()
            expected = assert(pio.safetensors(dir .. "/reference.safetensors"))
            model = load("f32")
        end)

        lazy_teardown(function()
            if model then model:free() end
            expected, model = nil, nil
        end)

        if hooks.loaded then hooks.loaded(get_model, ref) end

        describe("f32", function()
            M.f32_prompt_checks(name, ref, vocab, get_model, function() return expected end)
            M.greedy_check(name, ref, get_model)
        end)

        describe("bf16", function()
            local model16

            lazy_setup(function() model16 = load("bf16") end)

            lazy_teardown(function()
                if model16 then model16:free() end
                model16 = nil
            end)

            it("agrees with transformers' bf16 top-1 at >= 99% of positions", function()
                local worst, big = M.bf16_top1(name, ref, vocab, model16, expected)
                if hooks.bf16 then hooks.bf16(worst, big, ref) end
            end)
        end)

        if hooks.more then hooks.more(get_model, ref) end
    end)
end

-- The scheduler over a paged pool too small for every prompt at once, once per
-- preemption mode: each prompt's text must equal want[i] (the prompt run alone) and the
-- pool must be empty after each run. opts: the scheduler's options (max_tokens, ...).
-- Returns the scheduler's stats per mode ("recompute", "swap").
function M.preemption_runs(m, prompts, gen, want, opts)
  local pio = require "pio"
  local stats = {}
  for _, mode in ipairs { "recompute", "swap" } do
    local o = { preempt = mode }
    for k, v in pairs(opts or {}) do o[k] = v end
    local s = pio.scheduler(m, o)
    local hs = {}
    for i, p in ipairs(prompts) do hs[i] = s:submit(p, gen) end
    s:run()
    for i, h in ipairs(hs) do assert.equal(want[i], h:text(), mode .. ": prompt " .. i) end
    stats[mode] = s:stats()
    s:close()
    assert.equal(0, m:kv_stats().blocks_used)
  end
  return stats
end

return M
