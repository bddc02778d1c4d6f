#!/usr/bin/env python3
"""Write pio's test fixtures: tiny random-weight Qwen3 models and transformers' outputs.

Run by hand from anywhere (Python is a dev-time tool; tests never need it):

    /path/to/venv/bin/python scripts/make_fixtures.py            # writes tests/fixtures/
    /path/to/venv/bin/python scripts/make_fixtures.py --out DIR  # writes elsewhere (e.g. to diff)

What it writes, per model directory tests/fixtures/<name>/:
  config.json, generation_config.json, model.safetensors   (save_pretrained, float32)
  tokenizer.json, tokenizer_config.json                    (the fixture BPE tokenizer, duplicated)
  reference.safetensors   logits_f32.<i>, logits_bf16.<i>  [len_i, vocab] float32
  reference.json          prompts, greedy continuations, tokenizer encodings, measurements

Everything is seeded and computed on one CPU thread with deterministic algorithms, so a
rerun with the pinned versions on the same machine writes byte-identical files. If
scripts/make_tokenizer_fixtures.py exists it is run afterwards, so this one command
regenerates all fixtures.
"""

import argparse
import hashlib
import importlib.metadata
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PINNED = {
    "torch": "2.15.0",
    "transformers": "5.24.0",
    "tokenizers": "0.23.3",
    "safetensors": "0.8.0",
}
INSTALL_HINT = "pip install " + " ".join(f"{k}=={v}" for k, v in PINNED.items())


def check_versions():
    """Fail before importing anything heavy if a pinned package differs."""
    bad = []
    found = {}
    for pkg, want in PINNED.items():
        try:
            have = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            have = None
        found[pkg] = have
        # torch wheels carry a local build tag ("2.15.0+cu132"); the release must match.
        if have is None or have.split("+")[0] != want:
            bad.append(f"  {pkg}: need {want}, found {have or 'not installed'}")
    if bad:
        sys.exit(
            "make_fixtures.py: package versions differ from the pinned ones, so the fixtures\n"
            "would not be reproducible:\n" + "\n".join(bad) + "\n"
            f"Install the pinned versions (in a virtual environment) with:\n  {INSTALL_HINT}"
        )
    return found


VERSIONS = check_versions()

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import (  # noqa: E402
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (  # noqa: E402
    AutoTokenizer,
    GenerationConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "fixtures"
TOKENIZER_SCRIPT = ROOT / "scripts" / "make_tokenizer_fixtures.py"
SIZE_LIMIT = 5 * 1024 * 1024  # all fixtures together stay under this

# ----------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE with the pipeline of Qwen3's tokenizer.json
# ----------------------------------------------------------------------------------------

# Qwen2/Qwen3 pre-tokenizer regex, verbatim from Qwen3's tokenizer.json.
QWEN_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BPE_VOCAB = 384  # 256 byte symbols + 128 merges; the added tokens come after these ids
# Added tokens in Qwen3's order; Qwen3 marks <think>/</think> special: false, so do we.
ADDED_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<think>", False),
    ("</think>", False),
]
MODEL_VOCAB = 416  # embedding rows > tokenizer size, like Qwen3's 151936 > 151669

CORPUS = [
    # English prose
    "The quick brown fox jumps over the lazy dog. It wasn't the first time, and it won't "
    "be the last: the dog has seen this fox many times before.",
    "Language models read text as tokens. A tokenizer splits the text into pieces, and each "
    "piece has a number. The model then predicts the next number, one at a time.",
    "In the morning they walked to the station, bought two tickets and waited for the train. "
    "When it finally came, it was full, so they stood all the way to the city.",
    "We're testing the runtime against the reference implementation; they'll compare the "
    "logits and the generated tokens, and I'd like both to match exactly.",
    "Numbers matter too: 3 apples, 12 pears, 2024 was a leap year, and pi is about 3.14159.",
    "Hello, world! How are you today? I'm fine, thanks. THE END.",
    # code
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    "    return a\n\n\nprint(fibonacci(10))\n",
    "#include <stdio.h>\n\nint main(void) {\n    for (int i = 0; i < 10; i++) {\n"
    '        printf("%d\\n", i);\n    }\n    return 0;\n}\n',
    "local function map(t, f)\n  local out = {}\n  for i, v in ipairs(t) do\n"
    "    out[i] = f(v)\n  end\n  return out\nend\n",
    'const config = { "name": "pio", "threads": 4, "dtype": "bf16" };\n'
    "if (config.threads > 0) { console.log(config.name); }\r\n",
    # a little multilingual
    "Le café est très bon, merci beaucoup. Où est la gare ?",
    "Die Straße ist schön, und die Brücke über den Fluss ist alt.",
    "Привет, как дела? Всё хорошо.",
    "你好，世界。今天天气很好。",
    "こんにちは、元気ですか。",
    "¡Hola! ¿Qué tal? Ñandú, señor.",
]


def build_tokenizer():
    """Train the fixture tokenizer; return (tokenizers.Tokenizer, tokenizer.json text)."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=2,
        show_progress=False,
        special_tokens=[],  # added after training so they sit at the end, as in Qwen3
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    assert tok.get_vocab_size() == BPE_VOCAB, tok.get_vocab_size()
    for content, special in ADDED_TOKENS:
        t = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
        if special:
            tok.add_special_tokens([t])
        else:
            tok.add_tokens([t])

    # Make the serialised model section look like Qwen3's: "" (not null) affixes, and merges
    # as "a b" strings (the format of Qwen3's file; newer tokenizers write [a, b] pairs).
    data = json.loads(tok.to_str())
    m = data["model"]
    m["continuing_subword_prefix"] = ""
    m["end_of_word_suffix"] = ""
    for a, b in m["merges"]:
        assert " " not in a and " " not in b
    m["merges"] = [f"{a} {b}" for a, b in m["merges"]]
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    tok = Tokenizer.from_str(text)
    return tok, text


def tokenizer_config(tok):
    """tokenizer_config.json in the shape of Qwen3's (minus its chat template)."""
    vocab = tok.get_vocab(with_added_tokens=True)
    decoder = {}
    for content, special in ADDED_TOKENS:
        decoder[str(vocab[content])] = {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 128,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


# Texts whose encodings tests compare (exercise regex branches, NFC, bytes, added tokens).
TOKENIZER_TEXTS = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say WE'LL and You're and it's DON'T",
    "numbers 12345 and 3.14159 and 2024-06-01",
    "  leading spaces, two  inner   spaces and trailing   ",
    "tabs\tand\nnewlines\r\n\r\nand blank\n\n\nlines  \n  ",
    "def f(x):\n    return x * 2  # comment\n",
    "Cafe\u0301 vs Caf\u00e9 (NFD vs NFC), \u212b (angstrom sign)",
    "Привет мир, 你好，世界, こんにちは",
    "emoji: 😀👍🏽 and symbols ©®™ €100",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "<think>\nLet me think.\n</think>\n\nThe answer is 42.<|im_end|><|endoftext|>",
    "not special: <|im_start and <think and <|endoftext|x",
    "a<|im_end|>b <|im_start|> c",
]

# Prompts for the logits references: lengths about 1, 7, 20 and 60 tokens.
PROMPTS = [
    "The",
    "The dog and the fox",
    "for i in range(10):\n    print(i)\n",
    "<|im_start|>user\nIn the morning they walked to the station and bought two tickets. "
    "Where did they go?<|im_end|>\n<|im_start|>assistant\n",
]
GREEDY_PROMPT = 1
GREEDY_NEW_TOKENS = 32

# ----------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------

MODELS = [
    dict(
        name="qwen3-gqa1",
        seed=1001,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=32,  # 4*32 = 128 != hidden 64, as Qwen3-4B's 32*128 != 2560
        num_hidden_layers=2,
        intermediate_size=96,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
    ),
    dict(
        name="qwen3-gqa2",
        seed=1002,
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_hidden_layers=3,
        intermediate_size=80,
        tie_word_embeddings=False,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        # config.json rewritten in the form Qwen3-4B-Instruct-2507 ships (transformers 4.51:
        # top-level rope_theta, rope_scaling null, torch_dtype), so pio reads both forms
        legacy_config=True,
    ),
    dict(
        name="qwen3-gqa4",
        seed=1004,
        hidden_size=64,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=16,
        num_hidden_layers=2,
        intermediate_size=64,
        tie_word_embeddings=True,
        rope_theta=5000000.0,
        rms_norm_eps=1e-5,
    ),
]
MAX_POSITIONS = 128
LOGIT_STD_TARGET = 2.0  # output-embedding std = this / sqrt(hidden)
PAD_ROW_SCALE = 0.1



def legacy_config(cfg):
    """transformers 5 config.json dict -> the 4.51 form of Qwen3-4B-Instruct-2507's file."""
    out = {k: v for k, v in cfg.items() if k not in ("layer_types", "pad_token_id", "dtype", "rope_parameters")}
    assert cfg["rope_parameters"]["rope_type"] == "default"
    assert all(t == "full_attention" for t in cfg["layer_types"])
    out["rope_scaling"] = None
    out["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
    out["torch_dtype"] = cfg["dtype"]
    out["transformers_version"] = "4.51.0"
    return dict(sorted(out.items()))


def make_config(spec, ids):
    return Qwen3Config(
        vocab_size=MODEL_VOCAB,
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        head_dim=spec["head_dim"],
        hidden_act="silu",
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=spec["rms_norm_eps"],
        tie_word_embeddings=spec["tie_word_embeddings"],
        rope_theta=spec["rope_theta"],  # transformers 5 stores it as rope_parameters
        attention_bias=False,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=spec["num_hidden_layers"],
        bos_token_id=ids["<|endoftext|>"],  # as Qwen3: bos 151643, eos 151645
        eos_token_id=ids["<|im_end|>"],
    )


@torch.no_grad()
def init_weights(model, spec, n_tok):
    """Seeded init with well-spread logits (transformers' std 0.02 gives near-flat ones)."""
    gen = torch.Generator().manual_seed(spec["seed"])
    hidden = spec["hidden_size"]
    params = dict(model.named_parameters())  # tied lm_head appears once, as embed_tokens
    for name in sorted(params):
        p = params[name]
        if name.endswith("norm.weight"):
            # 1 + 0.1 randn: a runtime that ignores (or offsets) norm weights is visibly off
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            out_emb = name == "lm_head.weight" or spec["tie_word_embeddings"]
            std = LOGIT_STD_TARGET / hidden**0.5 if out_emb else 1.0
            w = std * torch.randn(p.shape, generator=gen)
            w[n_tok:] *= PAD_ROW_SCALE
            p.copy_(w)
        elif p.dim() == 2:  # nn.Linear [out, in]
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
        else:
            raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")


@torch.no_grad()
def logits_of(model, ids):
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def greedy(model, ids, n):
    """Greedy continuation by full recompute on the growing sequence; no eos stop."""
    seq = list(ids)
    new, margins = [], []
    for _ in range(n):
        last = logits_of(model, seq)[-1]
        top2 = torch.topk(last, 2)
        nxt = int(torch.argmax(last))  # first index among exact ties, as torch does
        new.append(nxt)
        margins.append(float(top2.values[0] - top2.values[1]))
        seq.append(nxt)
    return new, margins


def top2_margins(logits):
    v = torch.topk(logits, 2, dim=-1).values
    return (v[:, 0] - v[:, 1]).tolist()


def check_file_list(d, tied):
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        dtypes = {f.get_slice(n).get_dtype() for n in names}
    assert dtypes == {"F32"}, dtypes
    if tied:
        assert "lm_head.weight" not in names, "tied model must not store lm_head.weight"
    else:
        assert "lm_head.weight" in names
    return sorted(names)


def make_model(spec, out, tok, tok_json, tok_cfg, hf_tok, tok_encodings):
    d = out / spec["name"]
    d.mkdir(parents=True, exist_ok=True)
    for stale in d.iterdir():
        if stale.is_file():
            stale.unlink()
    vocab = tok.get_vocab(with_added_tokens=True)
    n_tok = tok.get_vocab_size(with_added_tokens=True)

    # --- build, init and save the model
    cfg = make_config(spec, vocab)
    model = Qwen3ForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    init_weights(model, spec, n_tok)
    model.eval()
    eot, im_end = vocab["<|endoftext|>"], vocab["<|im_end|>"]
    # Qwen3-4B-Instruct-2507's generation_config, with the fixture's ids.
    model.generation_config = GenerationConfig(
        bos_token_id=eot,
        pad_token_id=eot,
        eos_token_id=[im_end, eot],
        do_sample=True,
        temperature=0.7,
        top_k=20,
        top_p=0.8,
    )
    model.save_pretrained(str(d), safe_serialization=True)
    config_format = "transformers-" + VERSIONS["transformers"]
    if spec.get("legacy_config"):
        v5 = json.loads((d / "config.json").read_text(encoding="utf-8"))
        write_json(d / "config.json", legacy_config(v5), indent=2)
        config_format = "transformers-4.51 (legacy rope_theta/torch_dtype keys)"
    (d / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    write_json(d / "tokenizer_config.json", tok_cfg, indent=2)
    tensor_names = check_file_list(d, spec["tie_word_embeddings"])

    # --- reload from disk, the way a user would: f32 and bf16, eager attention
    m32 = Qwen3ForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager").eval()
    m16 = Qwen3ForCausalLM.from_pretrained(str(d), dtype=torch.bfloat16, attn_implementation="eager").eval()
    assert m32.config._attn_implementation == "eager" and m16.config._attn_implementation == "eager"
    assert m16.model.rotary_emb.inv_freq.dtype == torch.float32
    for m in (m32, m16):  # the saved config (either form) reads back as built
        assert m.config.rope_parameters == {"rope_theta": spec["rope_theta"], "rope_type": "default"}
        assert m.config.to_dict()["layer_types"] == ["full_attention"] * spec["num_hidden_layers"]
        assert m.config.tie_word_embeddings == spec["tie_word_embeddings"]
    # `model.to(torch.bfloat16)` also casts the rotary inv_freq buffer to bf16 (from_pretrained
    # keeps it in f32), which changes the logits; measured below for information only.
    m16_cast = Qwen3ForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager")
    m16_cast = m16_cast.to(torch.bfloat16).eval()

    prompts = []
    tensors = {}
    d32, d16_cast = 0.0, 0.0
    agree, total = 0, 0
    max_abs, stds, margins16 = [], [], []
    for i, text in enumerate(PROMPTS):
        ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        assert ids == tok.encode(text).ids
        l32 = logits_of(m32, ids)
        lmem = logits_of(model, ids)
        # Same weights; tiny differences only from memory layout in the BLAS paths.
        assert torch.allclose(l32, lmem, rtol=0, atol=1e-5), "reloaded model differs from the saved one"
        l16 = logits_of(m16, ids)
        l16c = logits_of(m16_cast, ids)
        tensors[f"logits_f32.{i}"] = l32.contiguous()
        tensors[f"logits_bf16.{i}"] = l16.contiguous()
        d32 = max(d32, float((l32 - l16).abs().max()))
        d16_cast = max(d16_cast, float((l16 - l16c).abs().max()))
        agree += int((l32.argmax(-1) == l16.argmax(-1)).sum())
        total += len(ids)
        max_abs.append(float(l32.abs().max()))
        stds.append(float(l32[:, :n_tok].std()))
        margins16 += top2_margins(l16)
        prompts.append({"text": text, "ids": ids, "len": len(ids), "max_abs_logit_f32": max_abs[-1]})
    save_file(tensors, str(d / "reference.safetensors"), metadata={"generator": "scripts/make_fixtures.py"})

    gp = prompts[GREEDY_PROMPT]["ids"]
    g32, m32_margins = greedy(m32, gp, GREEDY_NEW_TOKENS)
    g16, _ = greedy(m16, gp, GREEDY_NEW_TOKENS)
    # The same tokens come out of transformers' generate() with its KV cache (f32).
    with torch.no_grad():
        gen = m32.generate(
            torch.tensor([gp]),
            generation_config=GenerationConfig(
                max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=eot
            ),
        )
    assert gen[0, len(gp):].tolist() == g32, f"{spec['name']}: generate() with cache differs"
    specials = {vocab[c] for c, _ in ADDED_TOKENS}
    # pio's generate stops at eos and may not decode rows past the tokenizer, so the
    # reference continuation must contain neither; and no near-ties in f32.
    for t in g32:
        assert t < n_tok and t not in (eot, im_end), f"{spec['name']}: greedy produced {t}"
    assert min(m32_margins) > 5e-3, f"{spec['name']}: f32 greedy near-tie {min(m32_margins)}"
    text_plain = hf_tok.decode(g32, skip_special_tokens=False)
    text_skip = hf_tok.decode(g32, skip_special_tokens=True)
    raw = b"".join(bytes_of_token(tok.id_to_token(t)) for t in g32)
    try:
        raw.decode("utf-8")
        valid_utf8 = True
    except UnicodeDecodeError:
        valid_utf8 = False

    ref = {
        "fixture": spec["name"],
        "generator": "scripts/make_fixtures.py",
        "versions": {k: VERSIONS[k] for k in PINNED},
        "seed": spec["seed"],
        "config": {
            "architecture": "Qwen3ForCausalLM",
            "config_format": config_format,
            "vocab_size": MODEL_VOCAB,
            "tokenizer_size": n_tok,
            "hidden_size": spec["hidden_size"],
            "intermediate_size": spec["intermediate_size"],
            "num_hidden_layers": spec["num_hidden_layers"],
            "num_attention_heads": spec["num_attention_heads"],
            "num_key_value_heads": spec["num_key_value_heads"],
            "head_dim": spec["head_dim"],
            "tie_word_embeddings": spec["tie_word_embeddings"],
            "rope_theta": spec["rope_theta"],
            "rms_norm_eps": spec["rms_norm_eps"],
            "max_position_embeddings": MAX_POSITIONS,
            "bos_token_id": eot,
            "eos_token_id": im_end,
            "tensors": tensor_names,
        },
        "reference": {
            "implementation": "transformers Qwen3ForCausalLM, attn_implementation=eager, use_cache=False",
            "f32": "from_pretrained(dtype=torch.float32)",
            "bf16": "from_pretrained(dtype=torch.bfloat16): weights rounded to bf16 (nearest-even), "
            "rotary inv_freq kept in f32, logits upcast to f32",
        },
        "prompts": prompts,
        "greedy_prompt": GREEDY_PROMPT,
        "greedy_new_tokens": GREEDY_NEW_TOKENS,
        "greedy_f32": g32,
        "greedy_bf16": g16,
        "greedy_f32_text": text_plain,
        # True when the continuation has no added tokens and decodes to valid UTF-8, so
        # any reasonable detokenizer (skipping specials or not) must return exactly this.
        "greedy_f32_text_exact": valid_utf8 and text_plain == text_skip and not (set(g32) & specials),
        "measured": {
            "f32_logit_std": stds,
            "f32_max_abs_logit": max_abs,
            "bf16_vs_f32_max_abs_delta": d32,
            "bf16_vs_f32_max_rel_delta": d32 / max(max_abs),
            "bf16_vs_f32_top1_agreement": agree / total,
            "bf16_cast_buffers_vs_from_pretrained_max_abs_delta": d16_cast,
            "bf16_min_top2_margin": min(margins16),
            "f32_greedy_min_top2_margin": min(m32_margins),
            "greedy_bf16_equals_f32": g16 == g32,
        },
        "tokenizer_encodings": tok_encodings,
    }
    write_json(d / "reference.json", ref, indent=1, inline_lists=True)
    return ref


# ----------------------------------------------------------------------------------------
# Qwen3-MoE (Qwen3MoeForCausalLM): tiny mixtures of experts, same reference format
# ----------------------------------------------------------------------------------------

MOE_MODELS = [
    dict(
        name="qwen3-moe-e8k2",
        seed=2001,
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_hidden_layers=3,
        intermediate_size=64,  # the dense layer's MLP
        moe_intermediate_size=16,
        num_experts=8,
        num_experts_per_tok=2,
        norm_topk_prob=True,  # as Qwen3-Coder-30B-A3B
        decoder_sparse_step=1,
        mlp_only_layers=[1],  # layers 0 and 2 are MoE, layer 1 a dense MLP
        rope_theta=10000000.0,  # Qwen3-Coder-30B-A3B's
        rms_norm_eps=1e-6,
        # the checkpoint in transformers v5's stacked layout (experts.gate_up_proj / down_proj)
        layout="stacked",
    ),
    dict(
        name="qwen3-moe-e16k4",
        seed=2004,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=1,  # GQA group 4
        head_dim=16,
        num_hidden_layers=4,
        intermediate_size=48,
        moe_intermediate_size=16,
        num_experts=16,
        num_experts_per_tok=4,
        norm_topk_prob=False,  # Qwen3MoeConfig's default: the top-k softmax weights as they are
        decoder_sparse_step=2,  # layers 1 and 3 are MoE, 0 and 2 dense
        mlp_only_layers=[],
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        # per-expert tensors, as published checkpoints (and save_pretrained) write them
        layout="per_expert",
    ),
]


def moe_config(spec, ids):
    return Qwen3MoeConfig(
        vocab_size=MODEL_VOCAB,
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        moe_intermediate_size=spec["moe_intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        head_dim=spec["head_dim"],  # not a Qwen3MoeConfig field; the attention reads it (as 30B-A3B's config)
        num_experts=spec["num_experts"],
        num_experts_per_tok=spec["num_experts_per_tok"],
        norm_topk_prob=spec["norm_topk_prob"],
        decoder_sparse_step=spec["decoder_sparse_step"],
        mlp_only_layers=spec["mlp_only_layers"],
        hidden_act="silu",
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=spec["rms_norm_eps"],
        tie_word_embeddings=False,
        rope_theta=spec["rope_theta"],
        attention_bias=False,
        use_sliding_window=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )


def moe_layer_is_sparse(spec, layer):
    """Qwen3MoeDecoderLayer's rule."""
    return (
        layer not in spec["mlp_only_layers"]
        and spec["num_experts"] > 0
        and (layer + 1) % spec["decoder_sparse_step"] == 0
    )


@torch.no_grad()
def init_moe_weights(model, spec, n_tok):
    """As init_weights, for the MoE parameters too: experts' stacks [E, out, in] get
    std 1/sqrt(in), the router [E, hidden] std 1/sqrt(hidden) (router logits of std ~1)."""
    gen = torch.Generator().manual_seed(spec["seed"])
    hidden = spec["hidden_size"]
    params = dict(model.named_parameters())
    for name in sorted(params):
        p = params[name]
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
        elif name == "model.embed_tokens.weight":
            p.copy_(torch.randn(p.shape, generator=gen))
        elif name == "lm_head.weight":
            w = LOGIT_STD_TARGET / hidden**0.5 * torch.randn(p.shape, generator=gen)
            w[n_tok:] *= PAD_ROW_SCALE
            p.copy_(w)
        elif p.dim() in (2, 3):  # nn.Linear [out, in], router [E, in], expert stacks [E, out, in]
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
        else:
            raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")


def stack_experts(d, spec):
    """Rewrites model.safetensors in transformers v5's in-memory layout: per layer
    mlp.experts.gate_up_proj [E, 2I, H] (gate rows, then up rows, per expert) and
    mlp.experts.down_proj [E, H, I], in place of the per-expert tensors."""
    path = d / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys()}
    out = {k: v for k, v in sd.items() if ".mlp.experts." not in k}
    for layer in range(spec["num_hidden_layers"]):
        if not moe_layer_is_sparse(spec, layer):
            continue
        p = f"model.layers.{layer}.mlp.experts"
        experts = range(spec["num_experts"])
        out[f"{p}.gate_up_proj"] = torch.stack(
            [torch.cat([sd[f"{p}.{e}.gate_proj.weight"], sd[f"{p}.{e}.up_proj.weight"]]) for e in experts]
        ).contiguous()
        out[f"{p}.down_proj"] = torch.stack([sd[f"{p}.{e}.down_proj.weight"] for e in experts]).contiguous()
    save_file(out, str(path), metadata=meta)


class RouterProbe:
    """Records every routing decision of a model's MoE layers: the gap, in router
    logits, between the last chosen and the first unchosen expert (0 = an exact tie,
    where torch.topk's pick is unspecified)."""

    def __init__(self, model, top_k):
        self.gaps = []
        self.top_k = top_k
        self.handles = [
            mod.register_forward_hook(self.hook)
            for name, mod in model.named_modules()
            if type(mod).__name__ == "Qwen3MoeTopKRouter"
        ]
        assert self.handles, "no router found"

    def hook(self, module, args, output):
        logits = output[0].float()
        top = torch.topk(logits, self.top_k + 1, dim=-1).values
        self.gaps += (top[:, self.top_k - 1] - top[:, self.top_k]).tolist()

    def close(self):
        for h in self.handles:
            h.remove()


def make_moe_model(spec, out, tok, tok_json, tok_cfg, hf_tok, tok_encodings):
    d = out / spec["name"]
    d.mkdir(parents=True, exist_ok=True)
    for stale in d.iterdir():
        if stale.is_file():
            stale.unlink()
    vocab = tok.get_vocab(with_added_tokens=True)
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    k = spec["num_experts_per_tok"]
    sparse = [moe_layer_is_sparse(spec, i) for i in range(spec["num_hidden_layers"])]
    assert any(sparse) and not all(sparse), "each fixture mixes MoE and dense layers"

    # --- build, init and save: eager attention and eager experts (the per-expert loop)
    cfg = moe_config(spec, vocab)
    model = Qwen3MoeForCausalLM._from_config(
        cfg, attn_implementation="eager", experts_implementation="eager", dtype=torch.float32
    )
    assert model.config._experts_implementation == "eager"
    init_moe_weights(model, spec, n_tok)
    model.eval()
    eot, im_end = vocab["<|endoftext|>"], vocab["<|im_end|>"]
    model.generation_config = GenerationConfig(
        bos_token_id=eot, pad_token_id=eot, eos_token_id=[im_end, eot], do_sample=True,
        temperature=0.7, top_k=20, top_p=0.8,
    )
    model.save_pretrained(str(d), safe_serialization=True)  # writes per-expert tensors
    if spec["layout"] == "stacked":
        stack_experts(d, spec)
    (d / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    write_json(d / "tokenizer_config.json", tok_cfg, indent=2)
    tensor_names = check_file_list(d, False)
    stacked_names = [n for n in tensor_names if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert bool(stacked_names) == (spec["layout"] == "stacked"), stacked_names

    # --- reload from disk as users do; eager experts for the references (as issue 8 asks),
    # and transformers' default (grouped_mm, also on the CPU with torch 2.15) for comparison
    def load(dtype, experts):
        m = Qwen3MoeForCausalLM.from_pretrained(
            str(d), dtype=dtype, attn_implementation="eager", experts_implementation=experts
        ).eval()
        assert m.config._attn_implementation == "eager" and m.config._experts_implementation == experts
        return m

    m32, m16 = load(torch.float32, "eager"), load(torch.bfloat16, "eager")
    m16_default = Qwen3MoeForCausalLM.from_pretrained(str(d), dtype=torch.bfloat16, attn_implementation="eager").eval()
    default_experts = m16_default.config._experts_implementation
    for m in (m32, m16):
        assert m.config.rope_parameters == {"rope_theta": spec["rope_theta"], "rope_type": "default"}
        assert m.config.num_experts == spec["num_experts"]
        assert [hasattr(layer.mlp, "experts") for layer in m.model.layers] == sparse
    # the saved file (either layout) holds the model's weights exactly
    saved = dict(m32.named_parameters())
    for name, p in model.named_parameters():
        assert torch.equal(saved[name], p), name

    probe32, probe16 = RouterProbe(m32, k), RouterProbe(m16, k)
    prompts, tensors = [], {}
    d32 = 0.0
    d_default = 0.0
    agree, agree_default, total = 0, 0, 0
    max_abs, stds, margins16 = [], [], []
    for i, text in enumerate(PROMPTS):
        ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        assert ids == tok.encode(text).ids
        l32 = logits_of(m32, ids)
        lmem = logits_of(model, ids)
        assert torch.allclose(l32, lmem, rtol=0, atol=1e-5), "reloaded model differs from the saved one"
        l16 = logits_of(m16, ids)
        l16d = logits_of(m16_default, ids)
        tensors[f"logits_f32.{i}"] = l32.contiguous()
        tensors[f"logits_bf16.{i}"] = l16.contiguous()
        d32 = max(d32, float((l32 - l16).abs().max()))
        d_default = max(d_default, float((l16 - l16d).abs().max()))
        agree += int((l32.argmax(-1) == l16.argmax(-1)).sum())
        agree_default += int((l16.argmax(-1) == l16d.argmax(-1)).sum())
        total += len(ids)
        max_abs.append(float(l32.abs().max()))
        stds.append(float(l32[:, :n_tok].std()))
        margins16 += top2_margins(l16)
        prompts.append({"text": text, "ids": ids, "len": len(ids), "max_abs_logit_f32": max_abs[-1]})
    probe32.close()
    probe16.close()
    save_file(tensors, str(d / "reference.safetensors"), metadata={"generator": "scripts/make_fixtures.py"})
    # f32 routing must not hinge on the last bits (pio sums in another order).
    assert min(probe32.gaps) > 1e-4, f"{spec['name']}: f32 router near-tie {min(probe32.gaps)}"
    gaps16 = torch.tensor(probe16.gaps)

    gp = prompts[GREEDY_PROMPT]["ids"]
    g32, m32_margins = greedy(m32, gp, GREEDY_NEW_TOKENS)
    g16, _ = greedy(m16, gp, GREEDY_NEW_TOKENS)
    with torch.no_grad():
        gen = m32.generate(
            torch.tensor([gp]),
            generation_config=GenerationConfig(
                max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=eot
            ),
        )
    assert gen[0, len(gp):].tolist() == g32, f"{spec['name']}: generate() with cache differs"
    specials = {vocab[c] for c, _ in ADDED_TOKENS}
    for t in g32:
        assert t < n_tok and t not in (eot, im_end), f"{spec['name']}: greedy produced {t}"
    assert min(m32_margins) > 5e-3, f"{spec['name']}: f32 greedy near-tie {min(m32_margins)}"
    text_plain = hf_tok.decode(g32, skip_special_tokens=False)
    text_skip = hf_tok.decode(g32, skip_special_tokens=True)
    raw = b"".join(bytes_of_token(tok.id_to_token(t)) for t in g32)
    try:
        raw.decode("utf-8")
        valid_utf8 = True
    except UnicodeDecodeError:
        valid_utf8 = False

    ref = {
        "fixture": spec["name"],
        "generator": "scripts/make_fixtures.py",
        "versions": {k_: VERSIONS[k_] for k_ in PINNED},
        "seed": spec["seed"],
        "config": {
            "architecture": "Qwen3MoeForCausalLM",
            "config_format": "transformers-" + VERSIONS["transformers"],
            "checkpoint_layout": spec["layout"],
            "vocab_size": MODEL_VOCAB,
            "tokenizer_size": n_tok,
            "hidden_size": spec["hidden_size"],
            "intermediate_size": spec["intermediate_size"],
            "moe_intermediate_size": spec["moe_intermediate_size"],
            "num_experts": spec["num_experts"],
            "num_experts_per_tok": k,
            "norm_topk_prob": spec["norm_topk_prob"],
            "decoder_sparse_step": spec["decoder_sparse_step"],
            "mlp_only_layers": spec["mlp_only_layers"],
            "moe_layers": [i for i, s_ in enumerate(sparse) if s_],
            "num_hidden_layers": spec["num_hidden_layers"],
            "num_attention_heads": spec["num_attention_heads"],
            "num_key_value_heads": spec["num_key_value_heads"],
            "head_dim": spec["head_dim"],
            "tie_word_embeddings": False,
            "rope_theta": spec["rope_theta"],
            "rms_norm_eps": spec["rms_norm_eps"],
            "max_position_embeddings": MAX_POSITIONS,
            "bos_token_id": eot,
            "eos_token_id": im_end,
            "tensors": tensor_names,
        },
        "reference": {
            "implementation": "transformers Qwen3MoeForCausalLM, attn_implementation=eager, "
            "experts_implementation=eager, use_cache=False",
            "f32": "from_pretrained(dtype=torch.float32)",
            "bf16": "from_pretrained(dtype=torch.bfloat16): weights rounded to bf16 (nearest-even), "
            "rotary inv_freq kept in f32, logits upcast to f32",
        },
        "prompts": prompts,
        "greedy_prompt": GREEDY_PROMPT,
        "greedy_new_tokens": GREEDY_NEW_TOKENS,
        "greedy_f32": g32,
        "greedy_bf16": g16,
        "greedy_f32_text": text_plain,
        "greedy_f32_text_exact": valid_utf8 and text_plain == text_skip and not (set(g32) & specials),
        "measured": {
            "f32_logit_std": stds,
            "f32_max_abs_logit": max_abs,
            "bf16_vs_f32_max_abs_delta": d32,
            "bf16_vs_f32_max_rel_delta": d32 / max(max_abs),
            "bf16_vs_f32_top1_agreement": agree / total,
            "bf16_min_top2_margin": min(margins16),
            "f32_greedy_min_top2_margin": min(m32_margins),
            "greedy_bf16_equals_f32": g16 == g32,
            # routing decisions over all prompts and MoE layers (tokens x layers)
            "routing_decisions": len(probe32.gaps),
            "f32_router_min_gap": min(probe32.gaps),
            "bf16_router_exact_ties": int((gaps16 == 0).sum()),
            "bf16_router_min_nonzero_gap": float(gaps16[gaps16 > 0].min()),
            # transformers' default experts implementation on this CPU, in bf16, vs eager
            "default_experts_implementation": default_experts,
            "bf16_default_experts_vs_eager_max_abs_delta": d_default,
            "bf16_default_experts_vs_eager_top1_agreement": agree_default / total,
        },
        "tokenizer_encodings": tok_encodings,
    }
    write_json(d / "reference.json", ref, indent=1, inline_lists=True)
    return ref


def write_json(path, obj, indent, inline_lists=False):
    """UTF-8 JSON (lua-cjson reads it); with inline_lists, lists of scalars stay on one line."""

    def enc(o, level):
        pad = " " * (indent * (level + 1))
        end = " " * (indent * level)
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {enc(v, level + 1)}" for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + end + "}"
        if isinstance(o, list):
            if not o:
                return "[]"
            if inline_lists and all(not isinstance(v, (dict, list)) for v in o):
                return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in o) + "]"
            return "[\n" + ",\n".join(pad + enc(v, level + 1) for v in o) + "\n" + end + "]"
        return json.dumps(o, ensure_ascii=False)

    text = enc(obj, 0) + "\n"
    assert json.loads(text) == obj
    path.write_text(text, encoding="utf-8")


def bytes_of_token(s):
    """GPT-2 byte-level symbol string -> raw bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = {chr(c): b for b, c in zip(bs, cs)}
    return bytes(table[ch] for ch in s)


def digest(out):
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(out)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------
# Sliding-window attention from config.json: transformers' outputs for a fixture's weights
# under an edited config (the tests copy the fixture and edit its config.json the same way)
# ----------------------------------------------------------------------------------------

SLIDING_WINDOW = 8
SLIDING_PROMPT = 3  # 60 tokens: most positions are past the window
SLIDING_POSITIONS = [0, SLIDING_WINDOW - 1, SLIDING_WINDOW, 20, 40, 59]  # logits rows kept
SLIDING_GREEDY_PROMPT = 1  # 7 tokens: the continuation crosses the window
SLIDING_NEW_TOKENS = 16
SLIDING = [
    # Qwen3: layer_types from max_window_layers (layers >= 1 slide), config in the 4.51 form
    dict(fixture="qwen3-gqa2", cls="dense", name="max_window_layers",
         config=dict(use_sliding_window=True, sliding_window=SLIDING_WINDOW, max_window_layers=1)),
    # Qwen3: explicit layer_types win over max_window_layers
    dict(fixture="qwen3-gqa2", cls="dense", name="layer_types",
         config=dict(use_sliding_window=True, sliding_window=SLIDING_WINDOW, max_window_layers=3,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
    # Qwen3-MoE: every layer slides when use_sliding_window (no max_window_layers there)
    dict(fixture="qwen3-moe-e8k2", cls="moe", name="all_layers", greedy_prompt=2,  # 1: a near-tie
         config=dict(use_sliding_window=True, sliding_window=SLIDING_WINDOW)),
]


@torch.no_grad()
def make_sliding(out, variants):
    """Per fixture: sliding.json (the config edits, positions, greedy tokens) and
    sliding.safetensors (f32 logits rows at SLIDING_POSITIONS of prompt SLIDING_PROMPT)."""
    by_fixture = {}
    for v in variants:
        by_fixture.setdefault(v["fixture"], []).append(v)
    for fixture, vs in by_fixture.items():
        d = out / fixture
        ref = json.loads((d / "reference.json").read_text(encoding="utf-8"))
        ids = ref["prompts"][SLIDING_PROMPT]["ids"]
        tensors, entries = {}, []
        for v in vs:
            cls = Qwen3ForCausalLM if v["cls"] == "dense" else Qwen3MoeForCausalLM
            with tempfile.TemporaryDirectory() as tmp:
                for f in d.iterdir():
                    if f.name != "config.json" and f.is_file():
                        Path(tmp, f.name).symlink_to(f)
                cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
                cfg.update(v["config"])
                Path(tmp, "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
                extra = {} if v["cls"] == "dense" else {"experts_implementation": "eager"}
                m = cls.from_pretrained(tmp, dtype=torch.float32, attn_implementation="eager", **extra).eval()
                full = cls.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager", **extra).eval()
                assert m.config.sliding_window == SLIDING_WINDOW
                layer_types = getattr(m.config, "layer_types", None)
                if v["cls"] == "moe":  # Qwen3MoeAttention reads config.sliding_window in every layer
                    assert all(layer.self_attn.sliding_window == SLIDING_WINDOW for layer in m.model.layers)
                    layer_types = ["sliding_attention"] * len(m.model.layers)
                else:
                    assert [layer.self_attn.sliding_window for layer in m.model.layers] == [
                        SLIDING_WINDOW if t == "sliding_attention" else None for t in layer_types]
                logits = logits_of(m, ids)
                base = logits_of(full, ids)
                # positions inside the window see what full attention sees
                assert torch.equal(logits[:SLIDING_WINDOW], base[:SLIDING_WINDOW]) or \
                    float((logits[:SLIDING_WINDOW] - base[:SLIDING_WINDOW]).abs().max()) < 1e-6
                differs = float((logits[SLIDING_WINDOW:] - base[SLIDING_WINDOW:]).abs().max())
                assert differs > 0.1, f"{fixture}/{v['name']}: the window changes nothing ({differs})"
                gp = ref["prompts"][v.get("greedy_prompt", SLIDING_GREEDY_PROMPT)]["ids"]
                g, margins = greedy(m, gp, SLIDING_NEW_TOKENS)
                gen = m.generate(torch.tensor([gp]), generation_config=GenerationConfig(
                    max_new_tokens=SLIDING_NEW_TOKENS, do_sample=False, eos_token_id=None,
                    pad_token_id=ref["config"]["bos_token_id"]))
                assert gen[0, len(gp):].tolist() == g, f"{fixture}/{v['name']}: generate() with cache differs"
                assert min(margins) > 5e-3, f"{fixture}/{v['name']}: greedy near-tie {min(margins)}"
            key = f"logits_f32.{v['name']}"
            tensors[key] = logits[SLIDING_POSITIONS].contiguous()
            entries.append({
                "name": v["name"], "config": v["config"], "layer_types": layer_types,
                "tensor": key, "max_abs_logit_f32": float(logits.abs().max()),
                "max_abs_delta_vs_full_past_window": differs,
                "greedy_prompt": v.get("greedy_prompt", SLIDING_GREEDY_PROMPT),
                "greedy_f32": g, "greedy_min_top2_margin": min(margins),
            })
        save_file(tensors, str(d / "sliding.safetensors"), metadata={"generator": "scripts/make_fixtures.py"})
        write_json(d / "sliding.json", {
            "fixture": fixture, "generator": "scripts/make_fixtures.py",
            "versions": {k: VERSIONS[k] for k in PINNED},
            "reference": "transformers, attn_implementation=eager, f32, use_cache=False; the fixture's "
                         "weights under config.json with these edits",
            "window": SLIDING_WINDOW, "prompt": SLIDING_PROMPT, "positions": SLIDING_POSITIONS,
            "greedy_new_tokens": SLIDING_NEW_TOKENS,
            "variants": entries,
        }, indent=1, inline_lists=True)
        print(f"{fixture}: sliding references {[e['name'] for e in entries]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixture root (default tests/fixtures)")
    ap.add_argument("--sliding-only", action="store_true",
                    help="only (re)write the sliding-window references from the fixtures already there")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.sliding_only:
        make_sliding(out, SLIDING)
        return

    tok, tok_json = build_tokenizer()
    tok_cfg = tokenizer_config(tok)

    # Load the tokenizer through transformers, as users do, and require it to agree with
    # the tokenizers library on every text (transformers 5 rebuilds Qwen2Tokenizer's pipeline
    # in Python instead of reading it from tokenizer.json).
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "tokenizer.json").write_text(tok_json, encoding="utf-8")
        Path(tmp, "tokenizer_config.json").write_text(json.dumps(tok_cfg), encoding="utf-8")
        hf_tok = AutoTokenizer.from_pretrained(tmp)
    encodings = []
    for text in TOKENIZER_TEXTS:
        ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        ids_lib = tok.encode(text).ids
        assert ids == ids_lib, f"transformers and tokenizers disagree on {text!r}: {ids} vs {ids_lib}"
        encodings.append(
            {
                "text": text,
                "ids": ids,
                "tokens": hf_tok.convert_ids_to_tokens(ids),
                "decoded": hf_tok.decode(ids, skip_special_tokens=False),
            }
        )

    refs = [make_model(spec, out, tok, tok_json, tok_cfg, hf_tok, encodings) for spec in MODELS]
    moe_refs = [make_moe_model(spec, out, tok, tok_json, tok_cfg, hf_tok, encodings) for spec in MOE_MODELS]
    make_sliding(out, SLIDING)

    if TOKENIZER_SCRIPT.exists():
        if out == DEFAULT_OUT.resolve():
            print(f"running {TOKENIZER_SCRIPT.relative_to(ROOT)}")
            subprocess.run([sys.executable, str(TOKENIZER_SCRIPT)], cwd=ROOT, check=True)
        else:
            print(f"--out given: not running {TOKENIZER_SCRIPT.relative_to(ROOT)} (it writes its own place)")

    print(f"tokenizer: {tok.get_vocab_size(with_added_tokens=True)} tokens "
          f"({BPE_VOCAB} BPE + {len(ADDED_TOKENS)} added), model vocab {MODEL_VOCAB}")
    for r in refs:
        m = r["measured"]
        print(f"{r['fixture']}: prompt lens {[p['len'] for p in r['prompts']]}, "
              f"logit std {[round(s, 2) for s in m['f32_logit_std']]}, "
              f"max|logit| {max(m['f32_max_abs_logit']):.3f}, "
              f"bf16-f32 max|d| {m['bf16_vs_f32_max_abs_delta']:.4f} "
              f"(rel {m['bf16_vs_f32_max_rel_delta']:.2e}), top1 agree {m['bf16_vs_f32_top1_agreement']:.3f}, "
              f".to(bf16) vs from_pretrained {m['bf16_cast_buffers_vs_from_pretrained_max_abs_delta']:.4f}, "
              f"greedy bf16==f32 {m['greedy_bf16_equals_f32']}")
    for r in moe_refs:
        m = r["measured"]
        print(f"{r['fixture']}: {m['routing_decisions']} routings, f32 router min gap "
              f"{m['f32_router_min_gap']:.2e}, bf16 router ties {m['bf16_router_exact_ties']}, "
              f"max|logit| {max(m['f32_max_abs_logit']):.3f}, "
              f"bf16-f32 max|d| {m['bf16_vs_f32_max_abs_delta']:.4f} top1 {m['bf16_vs_f32_top1_agreement']:.3f}, "
              f"bf16 {m['default_experts_implementation']}-vs-eager max|d| "
              f"{m['bf16_default_experts_vs_eager_max_abs_delta']:.4f} "
              f"top1 {m['bf16_default_experts_vs_eager_top1_agreement']:.3f}, "
              f"greedy bf16==f32 {m['greedy_bf16_equals_f32']}")
    total = 0
    for p in sorted(out.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.stat().st_size:9d}  {p.relative_to(out)}")
    print(f"total {total} bytes; sha256 {digest(out)}")
    if total > SIZE_LIMIT:
        sys.exit(f"fixtures total {total} bytes, over the {SIZE_LIMIT} byte budget")


if __name__ == "__main__":
    main()
