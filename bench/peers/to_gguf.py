#!/usr/bin/env python3
"""Writes a Qwen3 or Qwen3-MoE checkpoint (config.json + one model.safetensors,
as `model:save` makes them) into a GGUF file that llama.cpp loads, with the
same weights bit for bit: bf16 stays bf16, f32 stays f32, norms stay f32.
Qwen3-MoE's experts (per-expert tensors or transformers v5's stacks) become
llama.cpp's stacked ffn_{gate,up,down}_exps; every layer must be a MoE layer.

    to_gguf.py MODEL_DIR OUT.gguf

Needs the `gguf` and `numpy` packages (PyPI). Synthetic models carry no
tokenizer; llama.cpp still wants a vocabulary, so a placeholder one of the
right size is written (benchmarks feed token ids, never text).
"""
import json
import struct
import sys

import numpy as np
import gguf


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        raw = data[a:b]
        if info["dtype"] == "F32":
            arr, kind = raw.view(np.float32), None
        elif info["dtype"] == "BF16":
            arr, kind = raw.view(np.uint16), gguf.GGMLQuantizationType.BF16
        else:
            raise SystemExit(f"{name}: dtype {info['dtype']} not handled")
        out[name] = (arr.reshape(info["shape"]), kind)
    return out


def gguf_name(name):
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")  # model.layers.N.<module>...
    layer, rest = parts[2], ".".join(parts[3:])
    table = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_norm.weight": "attn_q_norm.weight",
        "self_attn.k_norm.weight": "attn_k_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
        "mlp.gate.weight": "ffn_gate_inp.weight",  # the MoE router
    }
    return f"blk.{layer}.{table[rest]}"


def stack_experts(tensors, cfg):
    """Qwen3-MoE: per layer, the experts as llama.cpp's stacks [E, I, H] (gate, up)
    and [E, H, I] (down), from per-expert tensors or from v5's gate_up_proj stack."""
    n_layer, n_exp = cfg["num_hidden_layers"], cfg.get("num_experts", cfg.get("num_local_experts"))
    step, dense = cfg.get("decoder_sparse_step", 1), cfg.get("mlp_only_layers") or []
    out = {k: v for k, v in tensors.items() if ".mlp.experts." not in k}
    for layer in range(n_layer):
        if layer in dense or (layer + 1) % step != 0:
            raise SystemExit("to_gguf.py: llama.cpp's qwen3moe has MoE in every layer; "
                             f"layer {layer} is dense here")
        p = f"model.layers.{layer}.mlp.experts"
        if f"{p}.gate_up_proj" in tensors:
            (gu, kind), (down, _) = tensors[f"{p}.gate_up_proj"], tensors[f"{p}.down_proj"]
            half = gu.shape[1] // 2
            gate, up = np.ascontiguousarray(gu[:, :half]), np.ascontiguousarray(gu[:, half:])
        else:
            kind = tensors[f"{p}.0.gate_proj.weight"][1]
            gate, up, down = (np.stack([tensors[f"{p}.{e}.{w}.weight"][0] for e in range(n_exp)])
                              for w in ("gate_proj", "up_proj", "down_proj"))
        blk = f"blk.{layer}"
        out[f"{blk}.ffn_gate_exps.weight"] = (gate, kind)
        out[f"{blk}.ffn_up_exps.weight"] = (up, kind)
        out[f"{blk}.ffn_down_exps.weight"] = (down, kind)
    return out


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    cfg = json.load(open(f"{model_dir}/config.json"))
    tensors = read_safetensors(f"{model_dir}/model.safetensors")
    bf16 = any(k is not None for _, k in tensors.values())

    moe = cfg["architectures"][0] == "Qwen3MoeForCausalLM"
    if moe:
        tensors = stack_experts(tensors, cfg)
    w = gguf.GGUFWriter(out, "qwen3moe" if moe else "qwen3")
    w.add_name(f"pio synthetic {cfg.get('hidden_size')}x{cfg['num_hidden_layers']}")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if bf16 else gguf.LlamaFileType.ALL_F32)
    w.add_context_length(cfg.get("max_position_embeddings", 40960))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    if moe:
        if not cfg.get("norm_topk_prob", False):
            raise SystemExit("to_gguf.py: llama.cpp's qwen3moe renormalises the top-k weights "
                             "(norm_topk_prob true)")
        w.add_expert_count(cfg.get("num_experts", cfg.get("num_local_experts")))
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
    head_dim = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 1000000)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))

    n_vocab = cfg["vocab_size"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list([f"<t{i}>" for i in range(n_vocab)])
    w.add_token_types([gguf.TokenType.NORMAL] * n_vocab)
    w.add_token_merges(["< t"])
    w.add_bos_token_id(cfg.get("bos_token_id", 151643) % n_vocab)
    w.add_eos_token_id(cfg.get("eos_token_id", 151645) % n_vocab)
    w.add_add_bos_token(False)

    for name, (arr, kind) in tensors.items():
        w.add_tensor(name if name.startswith("blk.") else gguf_name(name), arr, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
