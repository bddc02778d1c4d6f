-- The Qwen3-MoE parity checks (see tests/spec/qwen3_moe_parity_spec.lua for what they
-- check and the numbers measured), as a function of the device: the CPU spec runs
-- them on "cpu", tests/spec/cuda_spec.lua on "cuda" (busted tag gpu). Load it with
-- loadfile(path, "t", _ENV) from a spec, so that it sees busted's describe/it.

-- The shared helpers and tolerances (tests/parity_util.lua), in this environment.
local U = assert(loadfile("tests/parity_util.lua", "t", _ENV))()
local NAMES = { "qwen3-moe-e8k2", "qwen3-moe-e16k4" }

-- Whichever layout holds the experts (stacked or per expert), all are loaded: embed,
-- lm_head and the final norm; per layer two norms, q/k/v/o and the head norms; a MoE
-- layer's router and experts, or a dense layer's MLP.
local function loads_every_parameter(get_model, ref)
    it("loads as Qwen3MoeForCausalLM with every parameter of the checkpoint", function()
        local info = get_model():info()
        assert.are.equal("Qwen3MoeForCausalLM", info.architecture)
        assert.are.equal("qwen3_moe", info.family)
        local c = ref.config
        local E, V, D = c.hidden_size, c.vocab_size, c.head_dim
        local QD, KD = c.num_attention_heads * D, c.num_key_value_heads * D
        local moe = {}
        for _, l in ipairs(c.moe_layers) do
            moe[math.tointeger(l)] = true
        end
        local params = 2 * V * E + E
        for l = 0, c.num_hidden_layers - 1 do
            params = params + 2 * E + 2 * D + E * (2 * QD + 2 * KD)
            if moe[l] then
                params = params + c.num_experts * (E + 3 * E * c.moe_intermediate_size)
            else
                params = params + 3 * E * c.intermediate_size
            end
        end
        assert.are.equal(math.tointeger(params), info.parameters)
    end)
end

--- Registers the parity describes for `device` ("cpu" or "cuda"); `tags` is
-- appended to each describe name (e.g. " #gpu").
return function(device, tags)
    for _, name in ipairs(NAMES) do
        U.describe_fixture("qwen3_moe", device, name, tags, { loaded = loads_every_parameter })
    end
end
