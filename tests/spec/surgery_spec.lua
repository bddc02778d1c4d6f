-- pio.surgery: fusing projections keeps the outputs; removing layers takes
-- their weights and KV cache; every change is reported.
local pio = require "pio"

local fixtures = os.getenv("PIO_FIXTURES") or "tests/fixtures"
local tiny = fixtures .. "/qwen3-gqa2"
local IDS = { 3, 14, 15, 92, 65, 35, 89, 79 }

describe("pio.surgery #qwen3", function()
  for _, dtype in ipairs { "f32", "bf16" } do
    it("fuse = {qkv, gate_up} leaves the logits unchanged (" .. dtype .. ")", function()
      local m = assert(pio.load(tiny, { dtype = dtype, threads = 2 }))
      local before = m:logits(IDS)
      local greedy = m:generate("Hello", { max_new_tokens = 8, temperature = 0, ignore_eos = true })
      local info = m:info()
      local r = pio.surgery.apply(m, { fuse = { "qkv", "gate_up" } })
      assert.same({ qkv = 3, gate_up = 3 }, r.fused)
      assert.same({}, r.removed.layers)
      assert.same({ before = 3, after = 3 }, r.n_layer)
      assert.same({ before = info.weight_bytes, after = info.weight_bytes }, r.weight_bytes)
      assert.is_true(r.copied_bytes > 0)
      assert.matches("^pio.surgery: fused q|k|v in 3 layer%(s%) and gate|up in 3 layer%(s%) %([%d.]+ KiB in fused matrices%)$", tostring(r))
      assert.tensor_near(m:logits(IDS), before, 1e-5, 1e-6)
      assert.equal(greedy, m:generate("Hello", { max_new_tokens = 8, temperature = 0, ignore_eos = true }))
      local again = pio.surgery.apply(m, { fuse = "qkv" })
      assert.same({ qkv = 0, gate_up = 0 }, again.fused)
      assert.equal("pio.surgery: nothing changed", tostring(again))
      m:free()
    end)
  end

  it("remove = {layers = ...} drops layers, their weights and their KV cache", function()
    local m = assert(pio.load(tiny, { dtype = "f32" }))
    local info = m:info()
    local r = pio.surgery.apply(m, { remove = { layers = { 2, 0 } } })
    assert.same({ 0, 2 }, r.removed.layers)
    assert.same({ before = 3, after = 1 }, r.n_layer)
    assert.equal(info.kv_bytes // 3, r.kv_bytes.after)
    assert.is_true(r.weight_bytes.after < r.weight_bytes.before)
    assert.is_true(r.parameters.after < r.parameters.before)
    local now = m:info()
    assert.equal(1, now.n_layer)
    assert.equal(r.kv_bytes.after, now.kv_bytes)
    assert.equal(r.weight_bytes.after, now.weight_bytes)
    assert.matches("^pio.surgery: removed layer%(s%) 0, 2: 3 → 1 layers", tostring(r))
    assert.same({ 2, info.n_vocab }, m:logits({ 1, 2 }):shape())
    m:free()
  end)

  -- The named-weight list (what save and decode_bytes walk) must drop the
  -- removed layers, fused parts included, and renumber the kept ones, so the
  -- saved file loads back as the smaller model with the same logits.
  it("after fusing and removing layers, save and decode_bytes see the smaller model", function()
    local m = assert(pio.load(tiny, { dtype = "f32", threads = 1 }))
    pio.surgery.apply(m, { fuse = { "qkv", "gate_up" } })
    local before = m:decode_bytes()
    local r = pio.surgery.apply(m, { remove = { layers = { 0 } } })
    assert.equal(r.weight_bytes.before - r.weight_bytes.after, before - m:decode_bytes())
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    assert.is_true(m:save(dir .. "/model.safetensors"))
    local names = {}
    for name in pairs(pio.safetensors(dir .. "/model.safetensors")) do
      local l = name:match("^model%.layers%.(%d+)%.")
      if l then names[tonumber(l)] = true end
    end
    assert.same({ [0] = true, [1] = true }, names)
    local f = assert(io.open(tiny .. "/config.json"))
    local config = f:read("a"):gsub('"num_hidden_layers"%s*:%s*%d+', '"num_hidden_layers": 2')
    f:close()
    f = assert(io.open(dir .. "/config.json", "w"))
    f:write(config)
    f:close()
    local back = assert(pio.load(dir, { dtype = "f32", threads = 1 }))
    assert.tensor_near(back:logits(IDS), m:logits(IDS), 1e-5, 1e-6)
    back:free()
    m:free()
    os.execute("rm -rf " .. dir)
  end)

  it("rejects bad requests with exact messages, changing nothing", function()
    local m = assert(pio.load(tiny, { dtype = "f32" }))
    assert.has_error(function() pio.surgery.apply({}, { fuse = "qkv" }) end,
      "pio.surgery.apply: expected a pio.Model, got table")
    assert.has_error(function() pio.surgery.apply(m, "qkv") end,
      "pio.surgery.apply: expected a table { fuse = ..., remove = ... }, got string")
    assert.has_error(function() pio.surgery.apply(m, { fusee = { "qkv" } }) end,
      "pio.surgery.apply: unknown key 'fusee' (known: fuse, remove)")
    assert.has_error(function() pio.surgery.apply(m, { fuse = { "qk" } }) end,
      "pio.surgery.apply: cannot fuse 'qk' (known: gate_up, qkv)")
    assert.has_error(function() pio.surgery.apply(m, { remove = { heads = { 1 } } }) end,
      "pio.surgery.apply: cannot remove 'heads' (known: layers)")
    assert.has_error(function() pio.surgery.apply(m, { remove = { layers = { "1" } } }) end,
      "pio.surgery.apply: remove.layers[1] must be an integer, got string")
    assert.has_error(function() pio.surgery.apply(m, { remove = { layers = { 3 } } }) end,
      "pio.surgery.apply: layer 3 is outside [0, 3) (layers are numbered as in the checkpoint: model.layers.0 is the first)")
    assert.has_error(function() pio.surgery.apply(m, { remove = { layers = { 1, 1 } } }) end,
      "pio.surgery.apply: layer 1 is named twice")
    assert.has_error(function() pio.surgery.apply(m, { remove = { layers = { 0, 1, 2 } } }) end,
      "pio.surgery.apply: removing all 3 layers would leave no model")
    assert.equal(3, m:info().n_layer)
    m:free()
  end)

  it("says when an architecture has no surgery yet", function()
    local moe = fixtures .. "/qwen3-moe-e8k2"
    local m = pio.load(moe, { dtype = "f32" })
    if not m then return pending("no Qwen3-MoE here") end
    assert.has_error(function() pio.surgery.apply(m, { fuse = { "qkv" } }) end,
      "pio.surgery.apply: model surgery is not supported for Qwen3MoeForCausalLM yet")
    m:free()
  end)
end)
