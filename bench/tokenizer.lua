-- Tokenizer speed, pio beside Hugging Face `tokenizers`, single thread:
--
--   build/pio bench/tokenizer.lua [tokenizer.json or dir]
--
-- Generates a mixed corpus (English prose, code in several languages, Chinese,
-- Japanese, Korean, Russian, Arabic, Hindi, Thai, emoji, JSON and Markdown;
-- deterministic), then measures on the Qwen3 tokenizer (default
-- ../shared/data/qwen3-tokenizer, or $PIO_QWEN3_TOKENIZER, or the argument):
--   load    seconds to read tokenizer.json into a usable tokenizer
--   encode  MB of UTF-8 text per second, document by document
--   decode  MB of text produced per second from the ids of each document
-- and the same with `tokenizers` in the same run when the Python in
-- $PIO_PYTHON (default python3) imports it, with RAYON_NUM_THREADS=1 and
-- TOKENIZERS_PARALLELISM=false; its encode is the faster of a loop of
-- encode() and one encode_batch_fast (no offsets). Both must produce the
-- same number of ids. Best of N runs ($PIO_BENCH_REPS, default 3); corpus size
-- in MB from $PIO_BENCH_MB (default 10); $PIO_BENCH_CORPUS_OUT writes the
-- corpus to a file (documents separated by \x1e).
local pio = require "pio"
local core = require "pio.core"

local now = core.now or os.clock
local here = (debug.getinfo(1, "S").source:match("^@(.*)/bench/[^/]*$")) or "."
local path = arg and arg[1] or os.getenv("PIO_QWEN3_TOKENIZER") or (here .. "/../shared/data/qwen3-tokenizer")
local mb = tonumber(os.getenv("PIO_BENCH_MB") or "10")
local reps = math.tointeger(tonumber(os.getenv("PIO_BENCH_REPS") or "3")) or 3
local python = os.getenv("PIO_PYTHON") or "python3"

-- ---- the corpus -------------------------------------------------------------------

local seed = 12345
local function rand(n) -- 1..n, a 31-bit LCG: the same corpus everywhere
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed % n + 1
end
local function pick(list) return list[rand(#list)] end

local function words(text)
  local out = {}
  for w in text:gmatch("%S+") do out[#out + 1] = w end
  return out
end

local EN = words([[the of and to in is was that for it with as his on be at by had are but from or
have an they which one you were her all she there would their we him been has when who will more no
if out so said what up its about into than them can only other new some could time these two may
then do first any my now such like our over man me even most made after also did many before must
through back years where much your way well down should because each just those people how too
little state good very make world still own see men work long get here between both life being under
never day same another know while last might us great old year off come since against go came right
used take three himself few house use during without again place around however home small found
Mrs thought went say part once general high upon school every don't does got united left number
course war until always away something fact though water less public put think almost hand enough
far took head yet government system better set told nothing night end why called didn't eyes find
going look asked later knew point next program city business give group toward young days let room
president side social given present several order national possible rather second face per among
form important often things looking large fall early model data training inference tokenizer kernel
memory latency throughput benchmark parameter gradient attention transformer layer batch vector]])
local CODE = {
  "def %s(%s, n=%d):\n    \"\"\"Return the %s of %s.\"\"\"\n    total = 0\n    for i in range(n):\n        total += %s[i] * %d\n    return total\n\n",
  "static int %s(const char *%s, size_t n) {\n\tint acc = %d;\n\tfor (size_t i = 0; i < n; i++)\n\t\tacc = acc * 31 + %s[i];\n\treturn acc %% %d;\n}\n\n",
  "const %s = async (%s) => {\n  const res = await fetch(`/api/v1/%s?id=${%s}`);\n  if (!res.ok) throw new Error(\"HTTP \" + res.status);\n  return (await res.json()).items.slice(0, %d);\n};\n",
  "local function %s(%s)\n  local t = {}\n  for k, v in pairs(%s or {}) do t[#t + 1] = k .. \"=\" .. tostring(v) end\n  return table.concat(t, \", \"), %d\nend\n",
  "fn %s(%s: &[u64]) -> u64 {\n    %s.iter().filter(|x| **x %% %d == 0).map(|x| x * x).sum()\n}\n",
  "SELECT %s, COUNT(*) AS n FROM %s WHERE created_at > '2024-0%d-01' GROUP BY %s ORDER BY n DESC LIMIT %d;\n",
}
local IDENT = words("value items count buffer index result user_id config_path max_len tokens scores "
  .. "handle request response weights cache offset stride shape dtype device stream")
local ZH = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则首单据导影失拿网香似斯专石若兵弟谁校读志飞观争究包组造落视济喜离虽坏兴切"
local JA = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。東京の天気は晴れ、明日はコンピューターとソフトウェアの勉強をします。"
local KO = words("한국어 문장 안녕하세요 반갑습니다 오늘 날씨가 좋습니다 컴퓨터 프로그램 학교 선생님 학생 공부 사랑 시간 사람 세계 정부 경제 문화 기술 개발 모델 데이터")
local RU = words("машинное обучение это раздел искусственного интеллекта который изучает методы построения алгоритмов способных обучаться модель данные токенизатор")
local AR = words("اللغة العربية جميلة جدا التعلم الآلي هو فرع من الذكاء الاصطناعي نموذج البيانات")
local HI = words("हिन्दी भाषा देवनागरी लिपि में लिखी जाती है मशीन लर्निंग कृत्रिम बुद्धिमत्ता मॉडल डेटा")
local TH = words("ภาษาไทย สวัสดีครับ การเรียนรู้ของเครื่อง ปัญญาประดิษฐ์ แบบจำลอง ข้อมูล")
local EMOJI = words("😀 😂 🤣 ❤️ 👍🏽 👨‍👩‍👧‍👦 🚀 ✨ 🎉 🇯🇵 🏳️‍🌈 🧑‍🤝‍🧑 ☕ ✅ ⚠️")

local function utf8_chars(s)
  local out = {}
  for _, c in utf8.codes(s) do out[#out + 1] = utf8.char(c) end
  return out
end
local ZH_CHARS, JA_CHARS = utf8_chars(ZH), utf8_chars(JA)

local function english(n)
  local out = {}
  for _ = 1, n do
    local len = 5 + rand(20)
    local s = {}
    for i = 1, len do
      local w = pick(EN)
      if i == 1 then w = w:sub(1, 1):upper() .. w:sub(2) end
      if rand(30) == 1 then w = tostring(rand(100000)) end
      if rand(25) == 1 then w = w .. "," end
      s[#s + 1] = w
    end
    out[#out + 1] = table.concat(s, " ") .. pick({ ".", ".", ".", "?", "!", ":" })
  end
  return table.concat(out, " ") .. "\n\n"
end

local function code()
  local tpl = pick(CODE)
  local args = {}
  for spec in tpl:gmatch("%%[sd]") do
    args[#args + 1] = spec == "%s" and pick(IDENT) or rand(1000)
  end
  return tpl:format(table.unpack(args))
end

local function run_of(chars, n)
  local out = {}
  for _ = 1, n do out[#out + 1] = pick(chars) end
  return table.concat(out)
end

local function other()
  local k = rand(8)
  if k == 1 then return run_of(ZH_CHARS, 20 + rand(60)) .. "。" .. run_of(ZH_CHARS, 10 + rand(40)) .. "！\n" end
  if k == 2 then return run_of(JA_CHARS, 30 + rand(60)) .. "\n" end
  local list = ({ KO, RU, AR, HI, TH, KO })[k - 2]
  local s = {}
  for _ = 1, 10 + rand(30) do s[#s + 1] = pick(list) end
  return table.concat(s, " ") .. ".\n"
end

local function markup()
  local k = rand(3)
  if k == 1 then
    return ('{"id": %d, "name": "%s", "tags": ["%s", "%s"], "score": %d.%d, "ok": true}\n'):format(
      rand(99999), pick(IDENT), pick(EN), pick(EN), rand(100), rand(999))
  elseif k == 2 then
    return ("## %s %s\n\n- **%s**: %s %s\n- `%s()` returns %d\n\n"):format(pick(EN), pick(EN), pick(EN),
      pick(EN), pick(EMOJI), pick(IDENT), rand(64))
  end
  local s = {}
  for _ = 1, 5 + rand(10) do s[#s + 1] = pick(EN) .. " " .. pick(EMOJI) end
  return table.concat(s, " ") .. "\n"
end

local function make_corpus(bytes)
  local docs, total = {}, 0
  while total < bytes do
    local parts = {}
    for _ = 1, 2 + rand(6) do
      local k = rand(20)
      if k <= 9 then parts[#parts + 1] = english(1 + rand(4))
      elseif k <= 14 then parts[#parts + 1] = code()
      elseif k <= 18 then parts[#parts + 1] = other()
      else parts[#parts + 1] = markup() end
    end
    local doc = table.concat(parts)
    docs[#docs + 1] = doc
    total = total + #doc
  end
  return docs, total
end

-- ---- measuring ---------------------------------------------------------------------

local function best_of(n, fn)
  local best = math.huge
  for _ = 1, n do
    local t0 = now()
    fn()
    local dt = now() - t0
    if dt < best then best = dt end
  end
  return best
end

local docs, total = make_corpus(math.floor(mb * 1e6))
if os.getenv("PIO_BENCH_CORPUS_OUT") then -- the corpus for other tools: documents joined by \x1e
  local f = assert(io.open(os.getenv("PIO_BENCH_CORPUS_OUT"), "wb"))
  f:write(table.concat(docs, "\x1e"))
  f:close()
end

local tok
local load_s = best_of(reps, function()
  if tok then tok:free() end
  tok = assert(pio.tokenizer(path))
end)

local all_ids, n_tokens = {}, 0
local encode_s = best_of(reps, function()
  n_tokens = 0
  for i, d in ipairs(docs) do
    local ids = tok:encode(d)
    all_ids[i] = ids
    n_tokens = n_tokens + #ids
  end
end)

local decoded_bytes = 0
local decode_s = best_of(reps, function()
  decoded_bytes = 0
  for i = 1, #docs do decoded_bytes = decoded_bytes + #tok:decode(all_ids[i]) end
end)
assert(decoded_bytes == total, "decode did not give the corpus back")

-- ---- tokenizers in the same run ----------------------------------------------------------

local PY = [[
import json, os, sys, time
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
import tokenizers
from tokenizers import Tokenizer
path, corpus, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
if os.path.isdir(path):
    path = os.path.join(path, "tokenizer.json")
docs = open(corpus, encoding="utf-8").read().split("\x1e")
def best(fn):
    b = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); b = min(b, time.perf_counter() - t0)
    return b
tok = None
def load():
    global tok
    tok = Tokenizer.from_file(path)
load_s = best(load)
out = {}
def enc_loop():
    out["ids"] = [tok.encode(d, add_special_tokens=False).ids for d in docs]
def enc_batch():
    tok.encode_batch_fast(docs, add_special_tokens=False)
loop_s, batch_s = best(enc_loop), best(enc_batch)
ids = out["ids"]
def dec():
    for x in ids: tok.decode(x, skip_special_tokens=False)
dec_s = best(dec)
print(json.dumps({"version": tokenizers.__version__, "load_s": load_s, "encode_s": min(loop_s, batch_s),
                  "encode_loop_s": loop_s, "encode_batch_s": batch_s, "decode_s": dec_s,
                  "tokens": sum(len(x) for x in ids)}))
]]

local function shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local peer, peer_why
do
  local ok = os.execute(python .. " -c 'import tokenizers' >/dev/null 2>&1")
  if not ok then
    peer_why = "tokenizers not importable by " .. python .. " (set PIO_PYTHON)"
  else
    local corpus_file, script = os.tmpname(), os.tmpname()
    local f = assert(io.open(corpus_file, "wb"))
    f:write(table.concat(docs, "\x1e"))
    f:close()
    f = assert(io.open(script, "wb"))
    f:write(PY)
    f:close()
    local p = io.popen(("%s %s %s %s %d 2>&1"):format(python, shell_quote(script), shell_quote(path),
      shell_quote(corpus_file), reps))
    local out = p:read("a")
    p:close()
    os.remove(corpus_file)
    os.remove(script)
    local last = out:gsub("%s+$", ""):match("[^\n]*$") or ""
    local ok2, res = pcall(require("pio.json").decode, last)
    if ok2 then peer = res.map else peer_why = "tokenizers run failed: " .. out:sub(1, 200) end
  end
end

-- ---- the table ----------------------------------------------------------------------------

local function row(name, a, b, ratio)
  print(("%-15s %14s %18s %16s"):format(name, a, b or "-", ratio or "-"))
end

print(("tokenizer bench: %s\ncorpus: %.1f MB in %d documents (generated), single thread, best of %d")
  :format(path, total / 1e6, #docs, reps))
row("", "pio", peer and ("tokenizers " .. peer.version) or "tokenizers", "pio / tokenizers")
local function mbs(s, bytes) return bytes / s / 1e6 end
if peer then
  row("load (ms)", ("%.1f"):format(load_s * 1e3), ("%.1f"):format(peer.load_s * 1e3),
    ("%.2fx faster"):format(peer.load_s / load_s))
  row("encode (MB/s)", ("%.2f"):format(mbs(encode_s, total)), ("%.2f"):format(mbs(peer.encode_s, total)),
    ("%.2fx"):format(peer.encode_s / encode_s))
  row("decode (MB/s)", ("%.1f"):format(mbs(decode_s, total)), ("%.1f"):format(mbs(peer.decode_s, total)),
    ("%.2fx"):format(peer.decode_s / decode_s))
  row("tokens", tostring(n_tokens), tostring(math.tointeger(peer.tokens)),
    n_tokens == peer.tokens and "identical" or "DIFFERENT")
  print(("(tokenizers encode: loop %.2f MB/s, encode_batch_fast %.2f MB/s)"):format(
    mbs(peer.encode_loop_s, total), mbs(peer.encode_batch_s, total)))
else
  row("load (ms)", ("%.1f"):format(load_s * 1e3))
  row("encode (MB/s)", ("%.2f"):format(mbs(encode_s, total)))
  row("decode (MB/s)", ("%.1f"):format(mbs(decode_s, total)))
  row("tokens", tostring(n_tokens))
  print("(" .. peer_why .. ")")
end
tok:free()
