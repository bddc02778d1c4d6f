-- pio.Tokenizer on the real Qwen3 vocabulary (read in place from ../shared; skipped
-- with a message when absent) and on the fixture tokenizer.
local pio = require "pio"

local shared = os.getenv("PIO_QWEN3_TOKENIZER") or "../shared/data/qwen3-tokenizer/tokenizer.json"
local have_shared = io.open(shared, "r")
if have_shared then have_shared:close() end

describe("pio.tokenizer", function()
  it("returns nil and a message for a missing file", function()
    local tok, err = pio.tokenizer("/nonexistent/tokenizer.json")
    assert.is_nil(tok)
    assert.matches("/nonexistent/tokenizer.json", err, 1, true)
  end)

  describe("the fixture tokenizer", function()
    local tok = assert(pio.tokenizer("tests/fixtures/qwen3-gqa1"))

    it("round-trips text and knows its special tokens", function()
      local text = "Hello, world! <|im_start|>user\nhi<|im_end|>"
      local ids = tok:encode(text)
      assert.equal(text, tok:decode(ids))
      assert.equal(385, tok:token_id("<|im_start|>"))
      assert.equal("<|im_start|>", tok:token(385))
      assert.is_nil(tok:token_id("<|no such token|>"))
      assert.equal(389, tok:n_vocab())
      -- special tokens: matched by default, plain text with special=false
      local plain = tok:encode("<|im_end|>", { special = false })
      assert.is_true(#plain > 1)
      assert.same({ 386 }, tok:encode("<|im_end|>"))
      assert.equal("hi", tok:decode(tok:encode("hi<|im_end|>"), { skip_special = true }))
    end)

    it("rejects invalid UTF-8 and ids outside the vocabulary", function()
      assert.has_error(function() tok:encode("ab\xff") end, "invalid UTF-8 at byte 2")
      assert.has_error(function() tok:decode({ 1, 5000 }) end)
    end)
  end)

  describe("the real Qwen3 tokenizer", function()
    if not have_shared then
      it("is absent", function() pending("Qwen3 tokenizer not found at " .. shared) end)
      return
    end
    local tok = assert(pio.tokenizer(shared))

    it("encodes as Hugging Face tokenizers does", function()
      -- ids from tokenizers 0.23.3 on the same file
      assert.same({ 9707, 11, 1879, 0 }, tok:encode("Hello, world!"))
      assert.same({ 151644, 872, 198 }, tok:encode("<|im_start|>user\n"))
      assert.equal(151669, tok:n_vocab())
    end)

    it("decodes CJK and emoji exactly", function()
      local text = "你好，世界 👋🏽 こんにちは"
      assert.equal(text, tok:decode(tok:encode(text)))
    end)
  end)
end)
