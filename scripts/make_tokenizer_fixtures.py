#!/usr/bin/env python3
"""Writes the tokenizer parity fixtures, with Hugging Face `tokenizers` as the
reference (pinned: tokenizers==0.23.3).

tests/fixtures/tokenizer/qwen3_expected.json
    For each corpus text: the ids of encode(text, add_special_tokens=False)
    with special tokens parsed ("ids") and with split_special_tokens
    ("ids_plain"), and decode(ids) with and without skip_special_tokens.
    Plus "decode_cases": id lists (lone bytes of multi-byte characters, random
    ids) with their decoded text, to hold the U+FFFD handling to Rust's.
    Read from the real Qwen3 tokenizer, which stays outside the repository.

tests/fixtures/tokenizer/synthetic_expected.json
    Small tokenizers trained here on the corpus, each switching on features
    Qwen3 does not use (ByteLevel's add_prefix_space and regex, NFKC, other
    Split behaviours and invert, lstrip/rstrip/single_word/normalized added
    tokens, ignore_merges, "a b" merges, subword prefix/suffix, unk and byte
    fallback, post-processors), with their tokenizer.json inline and expected
    outputs.

tests/fixtures/tokenizer/glm4/ and glm4_expected.json
    A tokenizer with the GLM-4 family's pipeline (models.md 4.6): the
    ChatGLM4 split regex with digits in groups of up to three, ByteLevel, no
    normalizer, the GLM-4.5/4.7 added tokens in their order after the BPE
    vocabulary (real GLM-4.7-Flash ids are these plus 154820 - the base here)
    and a post-processor putting [gMASK]<sop> first. Its vocabulary is
    trained here (the real one is not available); the directory is laid out
    as a GLM-4.7-Flash checkpoint ships it (tokenizer.json,
    tokenizer_config.json, chat_template.jinja -> ../../chat/glm-4.7-flash.jinja).
    The expected ids cover the corpus, digit runs and GLM's chat markup.

Every entry has "ids" (add_special_tokens=False) and, where the
post-processor adds tokens, "ids_added" (add_special_tokens=True).

Texts holding U+0000 carry a "*_hex" twin (UTF-8 in hex), because C strings
from cJSON end at the first NUL.

Usage: /root/.venvs/fix/bin/python scripts/make_tokenizer_fixtures.py [tokenizer.json]
"""
import json
import os
import random
import sys

REQUIRED_TOKENIZERS = "0.23.3"

import tokenizers  # noqa: E402
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,  # noqa: E402
                        normalizers, pre_tokenizers, processors, trainers)

if tokenizers.__version__ != REQUIRED_TOKENIZERS:
    sys.exit(f"need tokenizers=={REQUIRED_TOKENIZERS}, found {tokenizers.__version__}")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN3 = os.environ.get("PIO_QWEN3_TOKENIZER",
                       os.path.join(ROOT, "..", "shared", "data", "qwen3-tokenizer", "tokenizer.json"))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

# ---- the corpus ------------------------------------------------------------------

PROSE = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness. The quick brown fox jumps over the lazy dog! Dr. Smith's "
    "co-worker paid $1,234.56 (about \u20ac1,100) on 2024-03-15 at 9:30am -- \"really?\" "
    "she asked; 'yes,' he said.\n\nA new paragraph\u2026 with \u201csmart quotes\u201d, "
    "em\u2014dashes, and \u00bd + \u00bc = \u00be."
)

CODE = [
    "def fib(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
    "    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "print([fib(i) for i in range(10)])  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]\n",
    "#include <stdio.h>\n\nint main(int argc, char **argv) {\n\tfor (int i = 0; i < argc; i++)\n"
    "\t\tprintf(\"%d: %s\\n\", i, argv[i]);\n\treturn 0;\n}\n",
    "const sum = (xs) => xs.reduce((a, b) => a + b, 0);\nconsole.log(`sum=${sum([1, 2, 3])}`);"
    " // => 6\nlet obj = {a: 1, 'b-c': [true, null]};\n",
    "fn main() {\n    let v: Vec<u64> = (1..=10).map(|x| x * x).collect();\n"
    "    println!(\"{:?}\", v);\n}\n",
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tch := make(chan int, 3)\n\tch <- 42\n"
    "\tfmt.Println(<-ch)\n}\n",
    "SELECT u.id, COUNT(*) AS n FROM users u LEFT JOIN orders o ON o.user_id = u.id\n"
    "WHERE u.created_at >= '2024-01-01' GROUP BY u.id HAVING n > 5 ORDER BY n DESC;\n",
    "<!DOCTYPE html>\n<html lang=\"en\">\n  <body>\n    <p class=\"x\">Hi &amp; bye</p>\n"
    "  </body>\n</html>\n",
    "#!/bin/sh\nset -eu\nfor f in *.txt; do\n  wc -l \"$f\" | awk '{print $1}' >> /tmp/out.log 2>&1\ndone\n",
    "local M = {}\nfunction M.greet(name)\n  return (\"hello, %s\"):format(name or \"world\")\nend\n"
    "return M\n",
    "{\"model\": \"qwen3\", \"layers\": 36, \"rope_theta\": 1e6, \"tie\": true, \"eps\": 1e-06}",
]

CJK = [
    "\u4eba\u5de5\u667a\u80fd\u662f\u8ba1\u7b97\u673a\u79d1\u5b66\u7684\u4e00\u4e2a\u5206\u652f\uff0c"
    "\u5b83\u4f01\u56fe\u4e86\u89e3\u667a\u80fd\u7684\u5b9e\u8d28\u3002\u4eca\u5929\u5929\u6c14\u5f88\u597d\uff01",
    "\u543e\u8f29\u306f\u732b\u3067\u3042\u308b\u3002\u540d\u524d\u306f\u307e\u3060\u7121\u3044\u3002"
    "\u30ab\u30bf\u30ab\u30ca\u3068\u3072\u3089\u304c\u306a\u3001\u30ef\u30fc\u30af\u30b7\u30e7\u30c3\u30d7\u3002\uff8a\uff9d\uff76\uff78",
    "\ud55c\uad6d\uc5b4\ub294 \ud55c\uae00\ub85c \uc4f0\uc5ec\uc9d1\ub2c8\ub2e4. \uc548\ub155\ud558\uc138\uc694, "
    "\ubc18\uac11\uc2b5\ub2c8\ub2e4!",
]

RTL_INDIC_THAI = [
    "\u0627\u0644\u0644\u063a\u0629 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u062c\u0645\u064a\u0644\u0629\u064c "
    "\u062c\u062f\u0651\u0627\u064b\u061f \u0661\u0662\u0663",
    "\u05e2\u05d1\u05e8\u05d9\u05ea \u05e0\u05db\u05ea\u05d1\u05ea \u05de\u05d9\u05de\u05d9\u05df "
    "\u05dc\u05e9\u05de\u05d0\u05dc: \u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd.",
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u092d\u093e\u0937\u093e \u0926\u0947\u0935\u0928\u093e\u0917\u0930\u0940 "
    "\u0932\u093f\u092a\u093f \u092e\u0947\u0902 \u0932\u093f\u0916\u0940 \u091c\u093e\u0924\u0940 \u0939\u0948\u0964 \u0967\u0968\u0969",
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22\u0e44\u0e21\u0e48\u0e21\u0e35\u0e0a\u0e48\u0e2d\u0e07\u0e27\u0e48\u0e32"
    "\u0e07\u0e23\u0e30\u0e2b\u0e27\u0e48\u0e32\u0e07\u0e04\u0e33 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a",
]

EMOJI = [
    "I \u2764\ufe0f this \U0001F600\U0001F602\U0001F923!",
    "family: \U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 and "
    "\U0001F469\U0001F3FD\u200d\U0001F4BB, thumbs \U0001F44D\U0001F3FB\U0001F44D\U0001F3FF",
    "flags \U0001F1EF\U0001F1F5\U0001F1FA\U0001F1F8 keycap 1\ufe0f\u20e3 rainbow \U0001F3F3\ufe0f\u200d\U0001F308",
    "\U0001F9D1\u200d\U0001F91D\u200d\U0001F9D1\U0001FAE0\U0001FAF6\U0001F3FC",
]

COMBINING = [
    "cafe\u0301 vs caf\u00e9, A\u030a vs \u00c5 vs \u212b, \u2126hm",          # NFD input, singletons
    "Vie\u0323\u0302t Nam, Tie\u0302\u0301ng Vie\u0323\u0302t",                   # stacked marks
    "\u1112\u1161\u11ab\u1100\u1173\u11af",                                         # Hangul jamo (NFD)
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319a\u0310\u0352l\u0364g\u0351o\u0337",  # zalgo
    "\ufb01ne \ufb02ow \u2460 \u00b2 \uff21\uff22\uff23 \u3300",                        # compat chars (NFC keeps)
]

DIGITS = [
    "1234567890" * 6,
    "pi = 3.14159265358979323846264338327950288419716939937510; e=2.718281828",
    "phone +1 (555) 010-9999, 0x1F, 1e-9, 1_000_000, \u0661\u0662\u0663 \u0967\u0968 \uff11\uff12\uff13 \u2167",
]

SPACES = [
    "a  b   c    d     e",
    "\ttab\t\tdouble\t \tmix",
    "line1\r\nline2\r\n\r\nline4\rlone cr\n",
    "trailing spaces   ",
    "   leading spaces",
    "\n\n\n\nmany newlines\n\n",
    "  \n  \n\t\n",
    " ",
    "\n",
    "",
    "x \u00a0y\u2003z\u3000w\u0085v\u2028u\u2029t\u202fs\u205fr\u1680q\u180ep\u200bo\ufeffn\x0bm\x0cl\x1ck\x1fj",
    "    indented code\n        deeper\n",
    "end with newline and spaces \n   ",
]

CONTRACTIONS = [
    "I'm you're he's she'd we'll they've can't won't it's",
    "I'M YOU'RE HE'S SHE'D WE'LL THEY'VE CAN'T WON'T IT'S",
    "you'RE i'M They'Ve it'S We'lL he'D don'T",
    "'s 'S 'll '\u017f 'x o'clock rock'n'roll '",
    "\u2019s curly\u2019RE",
]

UNICODE_EDGES = [
    # letters and numbers newer than Unicode 14 (Oniguruma knows them, PCRE2 10.42 does not)
    "\U000105c0\U000105c1 \U00011f04\U00011f05 \U00031350\U00031351 \U0002ebf0 \U0001e4d0x \U00016d40 \U00011bc0",
    "\U0001fbf0\U0001fbf1 \U00016ac0 \U00011f50 \U0001e4f0 \U000116d0",
    "nul\x00byte \x01\x02\x7f \ufffd \ue000 \U0010fffd",
    "\u0130stanbul \u0131 \u00df\u1e9e \u03a3\u03c3\u03c2 \u0587",
    "math \u2200x\u2208\u211d: x\u00b2 \u2265 0 \u2192 \u221a(x\u00b2)=|x| \u2211\u220f\u222b",
]

ADDED_TEMPLATES = [
    "{t}", "{t}{t}", "{t}{t}{t}", " {t} ", "abc{t}def", "{t}hello", "hello{t}", "x {t}\n",
    "\n{t}\n", "{t} {t}",
]

LONG = [
    "abcdefghij" * 300,
    "x" * 2000,
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 20,
    "\u6f22" * 500,
    " " * 1000 + "after spaces",
    "=" * 300 + "\n" + "-" * 300,
]


def corpus(added):
    texts = [PROSE] + CODE + CJK + RTL_INDIC_THAI + EMOJI + COMBINING + DIGITS + SPACES
    texts += CONTRACTIONS + UNICODE_EDGES
    for t in added:
        texts += [tpl.format(t=t) for tpl in ADDED_TEMPLATES]
    texts += [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Hi! \u4f60\u597d<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello.<|im_end|>",
        "<|im_start|<|im_end||im_end|> <|endoftext|<|endoftext|>|> <think</think> <tool_call>{}</tool_call>",
        "<|IM_START|> < |im_start| > <|im_start|\u200b>",
    ]
    texts += LONG
    return texts


# ---- helpers -------------------------------------------------------------------------

def with_hex(entry, key, text):
    entry[key] = text
    if "\x00" in text:
        entry[key + "_hex"] = text.encode("utf-8").hex()


def expect(tok, text):
    tok.encode_special_tokens = False
    ids = tok.encode(text, add_special_tokens=False).ids
    tok.encode_special_tokens = True
    plain = tok.encode(text, add_special_tokens=False).ids
    tok.encode_special_tokens = False
    added = tok.encode(text, add_special_tokens=True).ids
    e = {}
    with_hex(e, "text", text)
    e["ids"] = ids
    e["ids_plain"] = plain
    if added != ids:
        e["ids_added"] = added
    with_hex(e, "decoded", tok.decode(ids, skip_special_tokens=False))
    with_hex(e, "decoded_skip", tok.decode(ids, skip_special_tokens=True))
    return e


def decode_case(tok, ids):
    e = {"ids": ids}
    with_hex(e, "decoded", tok.decode(ids, skip_special_tokens=False))
    with_hex(e, "decoded_skip", tok.decode(ids, skip_special_tokens=True))
    return e


def dump(path, obj):
    # One entry per line: diffable, and far smaller than indent=2 over id lists.
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        keys = list(obj)
        for i, k in enumerate(keys):
            v = obj[k]
            f.write(json.dumps(k) + ": ")
            if isinstance(v, list):
                f.write("[\n" + ",\n".join(json.dumps(x, ensure_ascii=False) for x in v) + "\n]")
            else:
                f.write(json.dumps(v, ensure_ascii=False))
            f.write(",\n" if i + 1 < len(keys) else "\n")
        f.write("}\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


# ---- Qwen3 ------------------------------------------------------------------------------

def make_qwen3(path):
    tok = Tokenizer.from_file(path)
    added = [t.content for t in tok.get_added_tokens_decoder().values()]
    entries = [expect(tok, t) for t in corpus(sorted(added))]

    # Decoding: lone and truncated bytes of multi-byte characters, ids that
    # are not UTF-8 on their own, random ids (specials included).
    vocab = tok.get_vocab()
    # GPT-2's byte -> character table, to find each byte's token.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    bl = dict(zip(bs, map(chr, cs)))
    byte_ids = {b: vocab[bl[b]] for b in range(256)}

    def ids_of_bytes(bb):
        return [byte_ids[b] for b in bb]

    cases = [
        ids_of_bytes(b"\xe4\xbd"),                      # truncated 3-byte character
        ids_of_bytes(b"\xe4\xbd\xa0"),                  # the whole of it
        ids_of_bytes(b"\xc3A\xe4\xbd\xa0\xe4"),
        ids_of_bytes(b"\xff\xfe\x80\xbf"),
        ids_of_bytes(b"\xf0\x9f\x98"),                  # truncated emoji
        ids_of_bytes(b"\xf0\x9f\x98\x80\xf0\x9f"),
        ids_of_bytes(b"\xed\xa0\x80"),                  # a surrogate, encoded
        ids_of_bytes(b"\xe0\x80\xaf"),                  # overlong
        ids_of_bytes(b"\xf4\x90\x80\x80"),              # past U+10FFFF
        ids_of_bytes(b"\xc0\xaf\xc1\xbf\xf5\xf8"),
        ids_of_bytes(b"a\xe2\x82") + [vocab["\u0120the"]],
        [151644, 151645, 151643] + ids_of_bytes(b"\xe4") + [151667, 151668],
    ]
    rng = random.Random(1234)
    for _ in range(8):
        cases.append([rng.randrange(0, 151669) for _ in range(rng.randrange(1, 40))])
    dump(os.path.join(OUT_DIR, "qwen3_expected.json"), {
        "tokenizers_version": tokenizers.__version__,
        "source": "Qwen3 tokenizer.json (151643 BPE tokens + 26 added tokens)",
        "n_vocab": max(max(vocab.values()), max(tok.get_added_tokens_decoder())) + 1,
        "entries": entries,
        "decode_cases": [decode_case(tok, c) for c in cases],
    })


# ---- synthetic tokenizers -------------------------------------------------------------------

SYN_TEXTS = [
    "Hello world, hello World! I'M here; you'RE there.",
    "  leading and trailing  ",
    "digits a1b22c333 and 4444x",
    "fire \ufb01re FIRE caf\u00e9 cafe\u0301 fly \ufb02y",
    "<mask> x <mask>y  <mask>  z",
    "[w] a[w] [w]b ([w]) \u00e9[w]",
    "<s>x s>x <s> s>xx",
    "\u20ac 10 \U0001F600 \u4f60\u597d",
    "tab\tnew\nline\r\nend ",
    "",
    "Hello<|endoftext|>world<|endoftext|>",
]


def train(model, pre, norm, decoder, vocab_size, alphabet, special=()):
    tok = Tokenizer(model)
    if norm is not None:
        tok.normalizer = norm
    if pre is not None:
        tok.pre_tokenizer = pre
    if decoder is not None:
        tok.decoder = decoder
    kw = {}
    if getattr(model, "continuing_subword_prefix", None):
        kw["continuing_subword_prefix"] = model.continuing_subword_prefix
    if getattr(model, "end_of_word_suffix", None):
        kw["end_of_word_suffix"] = model.end_of_word_suffix
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=alphabet, special_tokens=list(special), **kw)
    training = corpus([]) * 2 + SYN_TEXTS
    tok.train_from_iterator(training, trainer)
    return tok


def synthetic():
    out = []
    bl_alpha = pre_tokenizers.ByteLevel.alphabet()

    # 1. GPT-2 style: ByteLevel with its own regex and a prefix space, NFKC,
    #    added tokens with every option.
    t = train(models.BPE(), pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
              normalizers.NFKC(), decoders.ByteLevel(), 400, bl_alpha)
    t.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False),
                          AddedToken("<mask>", special=True, lstrip=True, rstrip=True, normalized=False),
                          AddedToken("<s>", special=True, normalized=False),
                          AddedToken("\ufb02y", special=True, normalized=True)])
    t.add_tokens([AddedToken("[w]", single_word=True, normalized=False),
                  AddedToken("\ufb01re", normalized=True),
                  AddedToken("s>x", normalized=False),
                  AddedToken("World", normalized=True, rstrip=True)])
    out.append(("bytelevel_prefix_nfkc_added", t, None))

    # 2..6. Split behaviours (and invert) before a plain ByteLevel; "a b" merges.
    for name, behavior, invert, ignore in [("removed", "removed", False, False),
                                           ("merged_prev", "merged_with_previous", False, False),
                                           ("merged_next", "merged_with_next", False, True),
                                           ("contiguous", "contiguous", False, False),
                                           ("isolated_invert", "isolated", True, False)]:
        pre = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"[ \d]|\s+(?!\S)"), behavior, invert=invert),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        t = train(models.BPE(ignore_merges=ignore), pre, normalizers.Sequence([normalizers.NFD()]),
                  decoders.ByteLevel(), 400, bl_alpha)
        t.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
        out.append(("split_" + name, t, "legacy_merges" if name != "removed" else None))

    # 7. A literal String pattern, MergedWithPrevious.
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(", ", "merged_with_previous"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    t = train(models.BPE(), pre, None, decoders.ByteLevel(), 400, bl_alpha)
    out.append(("split_string", t, None))

    # 8. WordPiece-like affixes, unk fused, no decoder (tokens joined by spaces).
    pre = pre_tokenizers.Split(Regex(r"\s+"), "removed")
    t = train(models.BPE(unk_token="<unk>", fuse_unk=True, continuing_subword_prefix="##",
                         end_of_word_suffix="</w>"),
              pre, normalizers.NFC(), None, 600, [], special=["<unk>"])
    out.append(("affixes_unk", t, None))

    # 9. Byte fallback: <0xXX> tokens in the vocabulary, unk unfused.
    t = train(models.BPE(unk_token="<unk>"), pre, None, None, 500, [], special=["<unk>"])
    j = json.loads(t.to_str())
    v = j["model"]["vocab"]
    for b in range(256):
        v["<0x%02X>" % b] = len(v)
    j["model"]["byte_fallback"] = True
    out.append(("byte_fallback", Tokenizer.from_str(json.dumps(j)), None))

    # 10-11. Post-processors: a TemplateProcessing in a Sequence, and Roberta's.
    j = json.loads(out[0][1].to_str())
    tp = Tokenizer.from_str(json.dumps(j))
    ids = {t.content: i for i, t in tp.get_added_tokens_decoder().items()}
    tp.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<s> <mask> $A <|endoftext|>", pair="<s> $A <|endoftext|> $B:1",
                                      special_tokens=[("<s>", ids["<s>"]), ("<mask>", ids["<mask>"]),
                                                      ("<|endoftext|>", ids["<|endoftext|>"])])])
    out.append(("post_template", tp, None))
    rb = Tokenizer.from_str(json.dumps(j))
    rb.post_processor = processors.RobertaProcessing(("<|endoftext|>", ids["<|endoftext|>"]),
                                                     ("<s>", ids["<s>"]))
    out.append(("post_roberta", rb, None))

    # 12. Added-token ids that disagree with the file: tokenizers renumbers them.
    j = json.loads(out[0][1].to_str())
    for a in j["added_tokens"]:
        a["id"] += 7
    j["added_tokens"].insert(1, dict(j["added_tokens"][0], id=3, content="e", special=True))
    out.append(("added_ids_renumbered", Tokenizer.from_str(json.dumps(j)), j))

    entries = []
    for name, tok, variant in out:
        # The file as written (variant holds it when to_str() would tidy it up).
        j = variant if isinstance(variant, dict) else json.loads(tok.to_str())
        if variant == "legacy_merges":
            j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
            tok = Tokenizer.from_str(json.dumps(j))
        texts = SYN_TEXTS + [SPACES[10]]
        # The Split variants differ only in splitting, the last only in its ids.
        if not name.startswith(("split_", "post_")) and name != "added_ids_renumbered":
            texts += CONTRACTIONS[:2] + [CODE[0], CJK[0], EMOJI[1], COMBINING[0], UNICODE_EDGES[0]]
        entries.append({"name": name, "tokenizer": j,
                        "cases": [expect(tok, x) for x in texts]})
    dump(os.path.join(OUT_DIR, "synthetic_expected.json"), {
        "tokenizers_version": tokenizers.__version__,
        "tokenizers": entries,
    })


# ---- GLM-4 -----------------------------------------------------------------------------------

GLM_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")
# GLM-4.5/4.7's added tokens in id order ([gMASK] = base + 2, <think> = base + 21, ...).
GLM_SPECIAL = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
               "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
               "<|begin_of_video|>", "<|end_of_video|>", "<|begin_of_audio|>", "<|end_of_audio|>",
               "<|begin_of_transcription|>", "<|end_of_transcription|>", "<|code_prefix|>",
               "<|code_middle|>", "<|code_suffix|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
               "<tool_response>", "</tool_response>", "<arg_key>", "</arg_key>", "<arg_value>",
               "</arg_value>", "/nothink", "<|begin_of_box|>", "<|end_of_box|>", "<|image|>", "<|video|>"]
GLM_REAL_BASE = 154820  # <|endoftext|> in GLM-4.7-Flash

GLM_TEXTS = [
    "1234567", "12 345 6789 0", "v1.2.3-rc10", "1,234,567.89", "007 0000 00000", "x" + "9" * 40,
    "٣٤٥٦ ①②③④ ⅫⅬ ½¾1",
    "abc123def4567ghi", "一二三123四五", "2024-03-15T09:30:00Z",
    "[gMASK]<sop><|system|>You are GLM.<|user|>Hi! 12345<|assistant|><think>reason</think>Hello.",
    "[gMASK]<sop><|user|>weather?<|assistant|></think><tool_call>get_weather<arg_key>city</arg_key>"
    "<arg_value>東京</arg_value></tool_call><|observation|><tool_response>25°C</tool_response>",
    "<|user|>/nothink <|begin_of_image|><|image|><|end_of_image|> caption",
]


def make_glm4():
    bl_alpha = pre_tokenizers.ByteLevel.alphabet()
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(GLM_REGEX), "isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok = Tokenizer(models.BPE(ignore_merges=False))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, show_progress=False, initial_alphabet=bl_alpha)
    tok.train_from_iterator(corpus([]) * 2 + SYN_TEXTS + GLM_TEXTS * 3, trainer)
    base = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GLM_SPECIAL])
    ids = {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
    assert [ids[t] for t in GLM_SPECIAL] == list(range(base, base + len(GLM_SPECIAL)))
    tok.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A", pair="[gMASK] <sop> $A $B",
        special_tokens=[("[gMASK]", ids["[gMASK]"]), ("<sop>", ids["<sop>"])])

    d = os.path.join(OUT_DIR, "glm4")
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    config = {
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True}
                                 for t, i in sorted(ids.items(), key=lambda x: x[1])},
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "eos_token": "<|endoftext|>",
        "model_max_length": 128000,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "remove_space": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)
        f.write("\n")
    link = os.path.join(d, "chat_template.jinja")
    if not os.path.lexists(link):
        os.symlink(os.path.join("..", "..", "chat", "glm-4.7-flash.jinja"), link)

    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))  # as written
    texts = [PROSE] + CODE + CJK + RTL_INDIC_THAI + EMOJI + COMBINING + DIGITS + SPACES + CONTRACTIONS
    texts += UNICODE_EDGES + GLM_TEXTS + [LONG[2], LONG[5]]
    for i, t in enumerate(GLM_SPECIAL):
        tpls = ADDED_TEMPLATES if i % 6 == 0 else ADDED_TEMPLATES[:3]
        texts += [tpl.format(t=t) for tpl in tpls]
    dump(os.path.join(OUT_DIR, "glm4_expected.json"), {
        "tokenizers_version": tokenizers.__version__,
        "source": "a tokenizer with GLM-4's pipeline, trained here (see scripts/make_tokenizer_fixtures.py)",
        "n_vocab": tok.get_vocab_size(),
        "special_base": base,
        "real_special_base": GLM_REAL_BASE,
        "special_ids": {t: ids[t] for t in GLM_SPECIAL},
        "entries": [expect(tok, t) for t in texts],
    })


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else QWEN3
    os.makedirs(OUT_DIR, exist_ok=True)
    if not os.path.exists(path):
        sys.exit(f"Qwen3 tokenizer not found at {path}")
    make_qwen3(path)
    synthetic()
    make_glm4()


if __name__ == "__main__":
    main()
