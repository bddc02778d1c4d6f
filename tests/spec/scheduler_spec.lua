-- pio.scheduler and model:generate_batch: continuous batching gives each
-- sequence what it gets alone, streams in order, cancels, survives bad input
-- and failing callbacks, preempts when the KV pool runs out (recompute or swap).
local pio = require "pio"
local U = loadfile("tests/parity_util.lua", "t", _ENV)()

local fixtures = os.getenv("PIO_FIXTURES") or "tests/fixtures"
local tiny = fixtures .. "/qwen3-gqa2"

local PROMPTS = {
  "Hello", "The quick brown fox jumps over the lazy dog", "a",
  "Once upon a time there was a model that", "x y z", "one two three four five six seven eight",
  "hi there", { { role = "user", content = "What is two plus two?" } },
}
local GREEDY = { max_tokens = 10, temperature = 0, ignore_eos = true }

local function load(max_seqs)
  return assert(pio.load(tiny, { dtype = "f32", threads = 2, max_seqs = max_seqs or 4 }))
end

local function alone(m, prompt)
  return m:generate(prompt, { max_new_tokens = 10, temperature = 0, ignore_eos = true })
end

describe("pio.scheduler #qwen3", function()
  it("gives eight prompts, admitted mid-run and chunked, the text each gets alone", function()
    local m = load(4)
    local want = {}
    for i, p in ipairs(PROMPTS) do want[i] = alone(m, p) end
    local s = pio.scheduler(m, { max_batch = 4, max_tokens = 6 })
    local hs, most = {}, 0
    for i, p in ipairs(PROMPTS) do hs[i] = s:submit(p, GREEDY) end
    assert.equal("queued", hs[8].status)
    while true do
      local running = s:step()
      most = math.max(most, running)
      if running == 0 and hs[8].status == "done" then break end
    end
    assert.equal(4, most)
    for i, h in ipairs(hs) do
      assert.equal(want[i], h:text())
      assert.equal(10, #h:tokens())
      assert.equal("done", h.status)
      assert.equal("length", h:stop_reason())
    end
    local st = s:stats()
    assert.equal(80, st.generated_tokens)
    assert.equal(0, st.preemptions)
    assert.equal(8, #st.handles)
    for _, hs_ in ipairs(st.handles) do
      assert.is_true(hs_.ttft > 0 and hs_.tpot > 0)
    end
    m:free()
  end)

  it("streams each sequence's tokens in order, then on_done once", function()
    local m = load(2)
    local s = pio.scheduler(m, { max_tokens = 4 })
    local log = {}
    local hs = {}
    for i = 1, 3 do
      hs[i] = s:submit(PROMPTS[i + 1], {
        max_tokens = 6, temperature = 0, ignore_eos = true,
        on_token = function(h, text, id)
          assert.equal("string", type(text))
          log[h.id] = log[h.id] or { ids = {}, text = "" }
          table.insert(log[h.id].ids, id)
          log[h.id].text = log[h.id].text .. text
        end,
        on_done = function(h, reason)
          assert.is_nil(log[h.id].done)
          log[h.id].done = reason
        end,
      })
    end
    s:run()
    for _, h in ipairs(hs) do
      assert.same(h:tokens(), log[h.id].ids)
      assert.equal(h:text(), log[h.id].text)
      assert.equal("length", log[h.id].done)
    end
    m:free()
  end)

  it("cancels queued and running sequences, and the others go on", function()
    local m = load(2)
    local s = pio.scheduler(m, { max_batch = 1 })
    local reasons = {}
    local function opts()
      return { max_tokens = 5, temperature = 0, ignore_eos = true,
               on_done = function(h, r) reasons[h.id] = r end }
    end
    local a, b, c = s:submit("Hello", opts()), s:submit("a", opts()), s:submit("x y z", opts())
    s:step()
    assert.equal("running", a.status)
    assert.is_true(a:cancel())
    assert.is_false(a:cancel())
    assert.is_true(b:cancel())
    assert.equal("cancelled", reasons[a.id])
    assert.equal("cancelled", reasons[b.id])
    s:run()
    assert.equal("length", reasons[c.id])
    assert.equal(alone(m, "x y z"):sub(1, #c:text()), c:text())
    m:free()
  end)

  it("rejects bad input naming the problem, and stays usable", function()
    local m = load(2)
    assert.has_error(function() pio.scheduler(m, { max_batch = 0 }) end,
      "pio.scheduler: max_batch must be an integer >= 1, got 0")
    assert.has_error(function() pio.scheduler(m, { max_batch = 3 }) end,
      "pio.scheduler: max_batch 3 exceeds the model's 2 sequence slots (load it with max_seqs = 3)")
    assert.has_error(function() pio.scheduler(m, { batch = 2 }) end,
      "pio.scheduler: unknown option 'batch' (known: max_batch, max_tokens, preempt)")
    assert.has_error(function() pio.scheduler(m, { preempt = "drop" }) end,
      "pio.scheduler: preempt must be 'recompute' or 'swap', got 'drop'")
    assert.has_error(function() pio.scheduler(m, { preempt = true }) end,
      "pio.scheduler: preempt must be 'recompute' or 'swap', got true")
    local s = pio.scheduler(m, { max_tokens = 4 })
    assert.has_error(function() s:submit("", GREEDY) end, "submit: the prompt is empty")
    assert.has_error(function() s:submit("Hello", { max_tokens = 4, temprature = 0 }) end,
      "submit: unknown option 'temprature' (known: max_new_tokens, temperature, top_k, top_p, "
      .. "min_p, repetition_penalty, presence_penalty, frequency_penalty, penalty_last_n, seed, "
      .. "stop, ignore_eos)")
    local long = {}
    for i = 1, 129 do long[i] = i % 300 end
    assert.has_error(function() s:submit(long, GREEDY) end,
      "submit: the prompt has 129 tokens but the context holds 128 (load with a larger ctx, up to 128)")
    assert.has_error(function() s:submit("Hello", { on_token = 1 }) end,
      "submit: on_token must be a function, got number")
    local h = s:submit("Hello", GREEDY)
    s:run()
    assert.equal(alone(m, "Hello"), h:text())
    m:free()
  end)

  it("raises a callback's error from step() and keeps going", function()
    local m = load(2)
    local s = pio.scheduler(m, {})
    local calls = 0
    local bad = s:submit("Hello", { max_tokens = 4, temperature = 0, ignore_eos = true,
      on_token = function() calls = calls + 1; if calls == 2 then error("boom in callback", 0) end end })
    local good = s:submit("a", GREEDY)
    s:step()
    assert.has_error(function() s:step() end, "boom in callback")
    s:run()
    assert.equal(4, #bad:tokens())
    assert.equal(alone(m, "a"), good:text())
    m:free()
  end)

  it("preempts when the KV pool runs out, and every text is still right", function()
    local m = load(4)
    local want = {}
    for i, p in ipairs(PROMPTS) do want[i] = alone(m, p) end
    m:seq_free(0) -- what model:generate left in slot 0
    -- 12 blocks of 4 positions: not enough for four sequences of up to ~40 positions.
    assert.equal(m, m:kv_configure { layout = "paged", block = 4, blocks = 12 })
    local s = pio.scheduler(m, { max_tokens = 16 })
    local hs = {}
    for i, p in ipairs(PROMPTS) do hs[i] = s:submit(p, GREEDY) end
    s:run()
    for i, h in ipairs(hs) do assert.equal(want[i], h:text()) end
    assert.is_true(s:stats().preemptions > 0)
    assert.equal(0, m:kv_stats().blocks_used)
    assert.has_error(function() m:kv_configure { layout = "pages" } end,
      "model:kv_configure: unknown layout 'pages' (known: contiguous, paged)")
    -- a slot reserved by hand: nil and the numbers when the pool cannot
    assert.is_true(m:seq_reserve(1, 40))
    assert.equal(10, m:kv_stats().blocks_used)
    local ok, why = m:seq_reserve(2, 40)
    assert.is_nil(ok)
    assert.matches("out of KV blocks: need 10, free 2 (sequence 2, 40 positions; the pool has 12 blocks of 4)",
      why, 1, true)
    m:seq_free(1)
    assert.equal(0, m:kv_stats().blocks_used)
    assert.has_error(function() m:seq_reserve(4, 1) end,
      "sequence slot 4 is outside [0, 4) (slots are 0-based; load with max_seqs for more)")
    assert.has_error(function() m:seq_free(-1) end,
      "sequence slot -1 is outside [0, 4) (slots are 0-based; load with max_seqs for more)")
    m:free()
  end)

  it("preempts by swapping KV to host memory: the texts of recompute and of running alone", function()
    local m = load(4)
    local want = {}
    for i, p in ipairs(PROMPTS) do want[i] = alone(m, p) end
    m:seq_free(0) -- what model:generate left in slot 0
    m:kv_configure { layout = "paged", block = 4, blocks = 12 }
    local stats = U.preemption_runs(m, PROMPTS, GREEDY, want, { max_tokens = 16 })
    local rc, sw = stats.recompute, stats.swap
    assert.is_true(rc.preemptions > 0 and sw.preemptions > 0)
    assert.same({ 0, 0, 0 }, { rc.swaps_out, rc.swapped_out_bytes, rc.swap_held_bytes })
    assert.is_true(sw.swaps_out > 0 and sw.swaps_in == sw.swaps_out, sw.swaps_out .. " out, " .. sw.swaps_in .. " in")
    -- every swap's rows: 3 layers, 2 kv heads of 32, K and V in f32, per position held
    assert.is_true(sw.swapped_out_bytes >= sw.swaps_out * 3 * 2 * 2 * 32 * 4)
    assert.equal(sw.swapped_out_bytes, sw.swapped_in_bytes)
    assert.equal(0, sw.swap_held_bytes)
    -- nothing recomputed: fewer tokens through the model than recompute needed
    assert.is_true(sw.prompt_tokens < rc.prompt_tokens and sw.batch_tokens < rc.batch_tokens,
      ("swap %d/%d, recompute %d/%d"):format(sw.prompt_tokens, sw.batch_tokens, rc.prompt_tokens, rc.batch_tokens))
    m:free()
  end)

  it("model:generate_batch returns the texts in order", function()
    local m = load(3)
    local texts = m:generate_batch({ "Hello", "a", "x y z", "hi there" },
                                   { max_new_tokens = 10, temperature = 0, ignore_eos = true })
    assert.same({ alone(m, "Hello"), alone(m, "a"), alone(m, "x y z"), (alone(m, "hi there")) }, texts)
    assert.has_error(function() m:generate_batch({ "ok", "" }, GREEDY) end,
      "generate_batch: prompt 2: the prompt is empty")
    m:free()
  end)
end)
