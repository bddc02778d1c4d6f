-- The Qwen3 parity checks (see tests/spec/qwen3_parity_spec.lua for what they
-- check and the numbers measured), as a function of the device: the CPU spec
-- runs them on "cpu", tests/spec/cuda_spec.lua on "cuda" (busted tag gpu). Load it
-- with loadfile(path, "t", _ENV) from a spec, so that it sees busted's describe/it.

-- The shared helpers and tolerances (tests/parity_util.lua), in this environment.
local U = assert(loadfile("tests/parity_util.lua", "t", _ENV))()
local ints, bf16_ulp, printable = U.ints, U.bf16_ulp, U.printable
local NAMES = { "qwen3-gqa1", "qwen3-gqa2", "qwen3-gqa4" }

-- pio rounds where transformers rounds, so in bf16 it may differ only by the order of
-- f32 sums: allow two bf16 steps at the largest logit (measured: at most one), far
-- below transformers' own f32-vs-bf16 distance.
local function bf16_bound(name)
    return function(worst, big, ref)
        local bound = math.min(2 * bf16_ulp(big), ref.measured.bf16_vs_f32_max_abs_delta)
        assert(worst <= bound, ("%s bf16: max|dlogit| %.4g vs transformers bf16 exceeds %.4g"):format(
            name, worst, bound))
    end
end

-- The fixture's tokenizer encodes as transformers' does.
local function tokenizer_checks(get_model, ref)
    describe("tokenizer", function()
        for k, e in ipairs(ref.tokenizer_encodings) do
            it(("encodes text %d like transformers: %s"):format(k, printable(e.text, 32)), function()
                assert.are.same(ints(e.ids), get_model().tokenizer:encode(e.text),
                                "encoding of " .. ("%q"):format(e.text))
            end)
        end

        it("encodes the prompts like transformers", function()
            for _, p in ipairs(ref.prompts) do
                assert.are.same(ints(p.ids), get_model().tokenizer:encode(p.text))
            end
        end)
    end)
end

--- Registers the parity describes for `device` ("cpu" or "cuda"); `tags` is
-- appended to each describe name (e.g. " #gpu").
return function(device, tags)
    for _, name in ipairs(NAMES) do
        U.describe_fixture("qwen3", device, name, tags, { bf16 = bf16_bound(name), more = tokenizer_checks })
    end
end
