-- What the parity specs share (tests/qwen3_parity.lua, tests/spec/qwen3_moe_parity_spec.lua,
-- tests/spec/qwen3_parity_spec.lua): where the fixtures are, the tolerances, and small helpers.
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

return M
