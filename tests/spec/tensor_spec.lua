-- pio.Tensor: construction, inspection, views, arithmetic, and the errors of misuse.
local pio = require "pio"

describe("pio.Tensor", function()
  local live_before
  before_each(function()
    collectgarbage()
    collectgarbage()
    live_before = pio.debug.live_tensors()
  end)

  describe("pio.tensor", function()
    it("builds from nested tables and reports shape, dtype and values", function()
      local t = pio.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
      assert.same({ 2, 3 }, t:shape())
      assert.equal("f32", t:dtype())
      assert.same({ { 1, 2, 3 }, { 4, 5, 6 } }, t:table())
      assert.equal(6, t:numel())
    end)

    it("takes a dtype and rounds to it", function()
      local t = pio.tensor({ 1.0, 1.00390625, 3.14159 }, { dtype = "bf16" })
      assert.equal("bf16", t:dtype())
      assert.same({ 1.0, 1.0, 3.140625 }, t:table())
    end)

    it("builds zeros of a shape from numbers", function()
      local t = pio.tensor(2, 3)
      assert.same({ { 0, 0, 0 }, { 0, 0, 0 } }, t:table())
    end)

    it("rejects an unknown dtype, ragged tables and non-numbers", function()
      assert.has_error(function() pio.tensor({ 1 }, { dtype = "f64" }) end,
        "unknown dtype 'f64' (expected f32, f16 or bf16)")
      assert.has_error(function() pio.tensor({ { 1, 2 }, { 3 } }) end,
        "ragged nested table: dimension 2 has 2 and 1 entries")
      assert.has_error(function() pio.tensor({ 1, "x" }) end, "tensor values must be numbers, got string")
    end)
  end)

  describe("zeros, ones, randn", function()
    it("fill a shape", function()
      assert.same({ { 1, 1 } }, pio.ones({ 1, 2 }):table())
      assert.same({ 0, 0, 0 }, pio.zeros({ 3 }):table())
    end)

    it("randn is seeded and roughly standard normal", function()
      local a, b = pio.randn({ 1000 }, { seed = 5 }), pio.randn({ 1000 }, { seed = 5 })
      assert.same(a:table(), b:table())
      local sum, sq = 0, 0
      for _, v in ipairs(a:table()) do sum, sq = sum + v, sq + v * v end
      assert.is_true(math.abs(sum / 1000) < 0.1)
      assert.is_true(math.abs(sq / 1000 - 1) < 0.15)
      assert.are_not.same(a:table(), pio.randn({ 1000 }, { seed = 6 }):table())
    end)
  end)

  describe("tostring", function()
    it("names dtype, shape and device, with a preview", function()
      assert.equal("pio.Tensor(bf16, [2, 3], cpu) [[1, 2, 3], [4, 5, 6]]",
        tostring(pio.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { dtype = "bf16" })))
      local long = tostring(pio.zeros({ 100 }))
      assert.truthy(long:find("...", 1, true))
    end)
  end)

  describe("view and transpose", function()
    it("reshape and swap dimensions without copying", function()
      local t = pio.tensor({ 1, 2, 3, 4, 5, 6 })
      assert.same({ { 1, 2, 3 }, { 4, 5, 6 } }, t:view(2, 3):table())
      assert.same({ { 1, 2 }, { 3, 4 }, { 5, 6 } }, t:view({ -1, 2 }):table())
      local tr = t:view(2, 3):transpose(1, 2)
      assert.same({ 3, 2 }, tr:shape())
      assert.same({ { 1, 4 }, { 2, 5 }, { 3, 6 } }, tr:table())
      assert.same({ { 1, 4 }, { 2, 5 }, { 3, 6 } }, tr:contiguous():table())
    end)

    it("rejects a size that does not fit, a strided view and a bad dimension", function()
      local t = pio.tensor({ 1, 2, 3, 4, 5, 6 })
      assert.has_error(function() t:view(4, 2) end,
        "view: shape [4, 2] is invalid for a tensor of shape [6]")
      assert.has_error(function() t:view(2, 3):transpose(1, 2):view(6) end,
        "view: tensor [3, 2] is not contiguous (call contiguous() first)")
      assert.has_error(function() t:transpose(1, 3) end, "dimension 3 out of range for a 1-d tensor")
      assert.has_error(function() t.view(nil, 2) end,
        "bad argument #1 to 'view' (pio.Tensor expected, got nil)")
    end)
  end)

  describe("to", function()
    it("converts between dtypes", function()
      local t = pio.tensor({ 0.1, 65504, 1e-8 }):to("f16")
      assert.equal("f16", t:dtype())
      local v = t:table()
      assert.is_true(math.abs(v[1] - 0.1) < 1e-4)
      assert.equal(65504, v[2])
      assert.equal("f32", t:to("f32"):dtype())
      assert.has_error(function() t:to("int8") end, "unknown dtype 'int8' (expected f32, f16 or bf16)")
    end)
  end)

  describe("arithmetic", function()
    it("adds, subtracts, multiplies and divides element-wise and with numbers", function()
      local a, b = pio.tensor({ 1, 2, 3 }), pio.tensor({ 4, 5, 6 })
      assert.same({ 5, 7, 9 }, (a + b):table())
      assert.same({ -3, -3, -3 }, (a - b):table())
      assert.same({ 4, 10, 18 }, (a * b):table())
      assert.tensor_near(a / b, { 0.25, 0.4, 0.5 }, 1e-7)
      assert.same({ 2, 4, 6 }, (a * 2):table())
      assert.same({ 9, 8, 7 }, (10 - a):table())
      assert.same({ -1, -2, -3 }, (-a):table())
    end)

    it("keeps the dtype of the tensor operand", function()
      assert.equal("bf16", (pio.ones({ 2 }, { dtype = "bf16" }) + 1):dtype())
    end)

    it("rejects mismatched shapes naming both", function()
      local a, b = pio.zeros({ 2, 3 }), pio.zeros({ 3, 2 })
      assert.has_error(function() return a + b end, "add: shapes [2, 3] and [3, 2] do not match")
    end)
  end)

  describe("matmul, softmax, rmsnorm", function()
    it("multiplies matrices", function()
      local a = pio.tensor({ { 1, 2 }, { 3, 4 } })
      local b = pio.tensor({ { 5, 6, 7 }, { 8, 9, 10 } })
      assert.same({ { 21, 24, 27 }, { 47, 54, 61 } }, a:matmul(b):table())
    end)

    it("rejects incompatible shapes naming both", function()
      assert.has_error(function() pio.zeros({ 2, 3 }):matmul(pio.zeros({ 2, 3 })) end,
        "matmul: shapes [2, 3] and [2, 3] are not compatible (want [n, k] and [k, m])")
    end)

    it("softmax sums to one over the chosen dimension", function()
      local t = pio.tensor({ { 1, 2, 3 }, { 1, 1, 1 } })
      assert.tensor_near(t:softmax(), { { 0.09003057, 0.24472847, 0.66524096 }, { 1 / 3, 1 / 3, 1 / 3 } }, 1e-6)
      assert.tensor_near(t:softmax(1), { { 0.5, 0.73105858, 0.88079708 }, { 0.5, 0.26894142, 0.11920292 } }, 1e-6)
    end)

    it("rmsnorm matches the formula and checks the weight's shape", function()
      local x, w = pio.tensor({ { 1, 2, 3, 4 } }), pio.tensor({ 1, 2, 1, 0.5 })
      local r = 1 / math.sqrt((1 + 4 + 9 + 16) / 4 + 1e-6)
      assert.tensor_near(x:rmsnorm(w, 1e-6), { { r, 4 * r, 3 * r, 2 * r } }, 1e-6)
      assert.has_error(function() x:rmsnorm(pio.ones({ 3 })) end)
    end)
  end)

  describe("lifetime", function()
    it("frees with :free() and <close>, and leaks nothing", function()
      do
        local t <close> = pio.zeros({ 10 })
        local u = pio.ones({ 10 })
        u:free()
        assert.equal("pio.Tensor (freed)", tostring(u))
        assert.has_error(function() u:shape() end, "calling 'shape' on bad self (tensor has been freed)")
      end
      collectgarbage()
      collectgarbage()
      assert.equal(live_before, pio.debug.live_tensors())
    end)
  end)
end)
