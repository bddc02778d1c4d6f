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
      assert.has_error(function() tok:encode("\xe4\xbd") end, "invalid UTF-8 at byte 0")
      assert.has_error(function() tok:encode("ok \xed\xa0\x80") end, "invalid UTF-8 at byte 3")
      assert.has_error(function() tok:decode({ 1, 5000 }) end, "token id 5000 is out of range (vocabulary size 389)")
      assert.has_error(function() tok:decode({ -1 }) end, "token id -1 is out of range (vocabulary size 389)")
    end)

    it("has the issue's names beside the foundation's", function()
      assert.equal(385, tok:token_to_id("<|im_start|>"))
      assert.equal("<|im_start|>", tok:id_to_token(385))
      assert.is_nil(tok:token_to_id("<|nope|>"))
      assert.is_nil(tok:id_to_token(389))
      assert.is_nil(tok:id_to_token(-1))
      assert.equal(389, tok:vocab_size())
      assert.is_true(tok:is_special(386))
      assert.is_false(tok:is_special(387)) -- <think> is not special in Qwen3
      assert.equal("tests/fixtures/qwen3-gqa1", tok:dir())
      -- a post-processor that adds nothing (ByteLevel): add_special changes nothing
      assert.same(tok:encode("hi there"), tok:encode("hi there", { add_special = true }))
    end)

    it("rejects unknown options", function()
      assert.has_error(function() tok:encode("x", { add_special_tokens = true }) end,
        "bad argument #2 to 'encode' (unknown option 'add_special_tokens')")
      assert.has_error(function() tok:decode({ 1 }, { skip = true }) end,
        "bad argument #2 to 'decode' (unknown option 'skip')")
      assert.has_error(function() tok:encode("x", 3) end,
        "bad argument #2 to 'encode' (table expected, got number)")
    end)
  end)

  describe("a GLM-4.7-Flash-style directory", function()
    local tok = assert(pio.tokenizer("tests/fixtures/tokenizer/glm4"))
    local base = tok:token_to_id("<|endoftext|>")

    it("loads with GLM's special-token layout and digit grouping", function()
      assert.equal(base + 2, tok:token_to_id("[gMASK]"))
      assert.equal(base + 4, tok:token_to_id("<sop>"))
      assert.equal(base + 21, tok:token_to_id("<think>"))
      assert.equal(base + 22, tok:token_to_id("</think>"))
      assert.equal(base + 36, tok:vocab_size())
      local ids = tok:encode("1234567")
      assert.equal(3, #ids)
      assert.equal("123", tok:id_to_token(ids[1]))
      assert.equal("7", tok:id_to_token(ids[3]))
    end)

    it("adds [gMASK]<sop> only when asked, as its post-processor says", function()
      local plain = tok:encode("hello")
      local added = tok:encode("hello", { add_special = true })
      assert.equal(#plain + 2, #added)
      assert.equal(base + 2, added[1])
      assert.equal(base + 4, added[2])
      assert.equal("[gMASK]<sop>hello", tok:decode(added))
      assert.equal("hello", tok:decode(added, { skip_special = true }))
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
