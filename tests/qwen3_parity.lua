-- The Qwen3 parity checks (see tests/spec/qwen3_parity_spec.lua for what they
-- check and the numbers measured), as a function of the device: the CPU spec
-- runs them on "cpu", tests/spec/cuda_spec.lua on "cuda" (busted tag gpu). Load it
-- with loadfile(path, "t", _ENV) from a spec, so that it sees busted's describe/it.
local pio = require "pio"

-- The shared helpers and tolerances (tests/parity_util.lua), in this environment.
local U = assert(loadfile("tests/parity_util.lua", "t", _ENV))()
local FIXTURES, THREADS, VERBOSE = U.FIXTURES, U.THREADS, U.VERBOSE
local F32_RTOL, BF16_TOP1 = U.F32_RTOL, U.BF16_TOP1
local read_json, ints, argmax, bf16_ulp = U.read_json, U.ints, U.argmax, U.bf16_ulp
local printable, check_shape, max_delta = U.printable, U.check_shape, U.max_delta
local NAMES = { "qwen3-gqa1", "qwen3-gqa2", "qwen3-gqa4" }

--- Registers the parity describes for `device` ("cpu" or "cuda"); `tags` is
-- appended to each describe name (e.g. " #gpu").
return function(device, tags)
    tags = tags or ""
    for _, name in ipairs(NAMES) do
        local dir = FIXTURES .. "/" .. name
        local ref = read_json(dir .. "/reference.json")
        local vocab = math.tointeger(ref.config.vocab_size)

        describe(("qwen3 parity on %s: %s #qwen3%s"):format(device, name, tags), function()
            local expected -- name -> pio.Tensor, from reference.safetensors
            local model -- the fixture loaded in f32 (logits, greedy, tokenizer)

            lazy_setup(function()
                expected = assert(pio.safetensors(dir .. "/reference.safetensors"))
                local m, err = pio.load(dir, { dtype = "f32", threads = THREADS, device = device })
                assert(m, err)
                model = m
            end)

            lazy_teardown(function()
                if model then
                    model:free()
                end
                expected, model = nil, nil
            end)

            describe("f32", function()
                for i, p in ipairs(ref.prompts) do
                    local ids = ints(p.ids)
                    it(("matches transformers' f32 logits at every position of prompt %d (%d tokens)"):format(i - 1, #ids), function()
                        local what = ("%s prompt %d"):format(name, i - 1)
                        local t = model:logits(ids)
                        check_shape(t, #ids, vocab, what)
                        local got = t:table()
                        local want = expected["logits_f32." .. (i - 1)]:table()
                        local d, big = max_delta(got, want)
                        if VERBOSE then
                            io.stderr:write(("%s f32: max|d| %.3g = %.3g x max|logit|\n"):format(what, d, d / big))
                        end
                        -- max|dlogit| <= F32_RTOL * max|logit|: an absolute tolerance per prompt
                        assert.tensor_near(got, want, 0, F32_RTOL * big)
                    end)
                end

                it("generates transformers' greedy continuation (32 tokens, f32)", function()
                    local prompt = ints(ref.prompts[math.tointeger(ref.greedy_prompt) + 1].ids)
                    local want = ints(ref.greedy_f32)
                    local text, stats = model:generate(prompt, { max_new_tokens = #want, temperature = 0 })
                    assert.are.same(want, stats.tokens, name .. ": greedy f32 tokens differ from transformers'")
                    -- Only where no added token or broken UTF-8 leaves room for detokenizer policy.
                    if ref.greedy_f32_text_exact then
                        assert.are.equal(ref.greedy_f32_text, text)
                    end
                end)
            end)

            describe("bf16", function()
                local model16

                lazy_setup(function()
                    local m, err = pio.load(dir, { dtype = "bf16", threads = THREADS, device = device })
                    assert(m, err)
                    model16 = m
                end)

                lazy_teardown(function()
                    if model16 then
                        model16:free()
                    end
                    model16 = nil
                end)

                it("agrees with transformers' bf16 top-1 at >= 99% of positions", function()
                    local agree, total, worst, big = 0, 0, 0, 0
                    local misses = {}
                    for i, p in ipairs(ref.prompts) do
                        local ids = ints(p.ids)
                        local t = model16:logits(ids)
                        check_shape(t, #ids, vocab, ("%s prompt %d"):format(name, i - 1))
                        local got = t:table()
                        local want = expected["logits_bf16." .. (i - 1)]:table()
                        local d, b = max_delta(got, want)
                        worst, big = math.max(worst, d), math.max(big, b)
                        for r = 1, #ids do
                            local g = argmax(got[r])
                            local w, wmax = argmax(want[r])
                            -- Strict: the same token, even where transformers' top two are tied
                            -- at bf16 precision.
                            if g == w then
                                agree = agree + 1
                            else
                                misses[#misses + 1] = ("prompt %d pos %d: pio %d, transformers %d (margin %.4g)"):format(
                                    i - 1, r - 1, g, w, wmax - want[r][g + 1])
                            end
                            total = total + 1
                        end
                    end
                    if VERBOSE then
                        io.stderr:write(("%s bf16: max|d| %.3g = %.3g x max|logit|, top-1 %d/%d\n"):format(
                            name, worst, worst / big, agree, total))
                    end
                    assert(
                        agree >= BF16_TOP1 * total,
                        ("%s bf16: top-1 agrees at %d of %d positions; misses: %s"):format(
                            name, agree, total, table.concat(misses, "; "))
                    )
                    -- pio rounds where transformers rounds, so it may differ only by the
                    -- order of f32 sums: allow two bf16 steps at the largest logit (measured: at
                    -- most one), far below transformers' own f32-vs-bf16 distance.
                    local bound = math.min(2 * bf16_ulp(big), ref.measured.bf16_vs_f32_max_abs_delta)
                    assert(
                        worst <= bound,
                        ("%s bf16: max|dlogit| %.4g vs transformers bf16 exceeds %.4g"):format(
                            name, worst, bound)
                    )
                end)
            end)

            describe("tokenizer", function()
                for k, e in ipairs(ref.tokenizer_encodings) do
                    it(("encodes text %d like transformers: %s"):format(k, printable(e.text, 32)), function()
                        assert.are.same(ints(e.ids), model.tokenizer:encode(e.text), "encoding of " .. ("%q"):format(e.text))
                    end)
                end

                it("encodes the prompts like transformers", function()
                    for _, p in ipairs(ref.prompts) do
                        assert.are.same(ints(p.ids), model.tokenizer:encode(p.text))
                    end
                end)
            end)
        end)
    end
end
