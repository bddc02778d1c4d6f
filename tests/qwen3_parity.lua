-- The Qwen3 parity checks (see tests/spec/qwen3_parity_spec.lua for what they
-- check and the numbers measured), as a function of the device: the CPU spec
-- runs them on "cpu", tests/spec/cuda_spec.lua on "cuda" (busted tag gpu). Load it
-- with loadfile(path, "t", _ENV) from a spec, so that it sees busted's describe/it.
local pio = require "pio"

-- The shared helpers and tolerances (tests/parity_util.lua), in this environment.
local U = assert(loadfile("tests/parity_util.lua", "t", _ENV))()
local FIXTURES, THREADS = U.FIXTURES, U.THREADS
local read_json, ints, bf16_ulp, printable = U.read_json, U.ints, U.bf16_ulp, U.printable
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
                U.f32_prompt_checks(name, ref, vocab, function() return model end,
                                    function() return expected end)
                U.greedy_check(name, ref, function() return model end)
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
                    local worst, big = U.bf16_top1(name, ref, vocab, model16, expected)
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
