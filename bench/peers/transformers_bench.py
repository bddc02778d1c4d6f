"""transformers on the GPU, for bench/cuda.lua: the same architecture and shapes
as pio's synthetic model (config.json), random bf16 weights made on the device
(speed does not depend on the values), eager generation as users run it.

    python transformers_bench.py CONFIG_DIR REPS TEST...

Each TEST is "n_prompt,n_gen,depth,name" (bench/cuda.lua passes its tests).
Prompt tests time one forward pass over n_prompt tokens (after `depth` cached
tokens); generation tests time model.generate for n_gen new tokens after a
one-token prompt (min_new_tokens = max_new_tokens, so EOS cannot end it early),
minus nothing: prompt and sampling are part of each step, as in pio's tg rows.
Prints one JSON line per test: {"test": NAME, "samples": [tok/s, ...]}, and
{"build": ...} first.
"""
import json
import sys
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def main():
    cfg_dir, reps, tests = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    dev = torch.device("cuda")
    print(json.dumps({"build": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                               f"{torch.cuda.get_device_name(0)}, sdpa attention"}), flush=True)
    config = AutoConfig.from_pretrained(cfg_dir)
    torch.manual_seed(1)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16,
                                                 attn_implementation="sdpa")
    model.eval()
    vocab = config.vocab_size

    def sync():
        torch.cuda.synchronize()

    for t in tests:
        n_prompt, n_gen, depth, name = t.split(",")
        n_prompt, n_gen, depth = int(n_prompt), int(n_gen), int(depth)
        samples = []
        for r in range(reps + 1):  # the first run is the warm-up
            with torch.inference_mode():
                if n_gen == 0:
                    past = None
                    if depth:
                        ids = torch.randint(0, vocab, (1, depth), device=dev)
                        past = model(ids, use_cache=True).past_key_values
                    ids = torch.randint(0, vocab, (1, n_prompt), device=dev)
                    sync()
                    t0 = time.perf_counter()
                    model(ids, past_key_values=past, use_cache=past is not None, logits_to_keep=1)
                    sync()
                    dt = time.perf_counter() - t0
                    tps = n_prompt / dt
                else:
                    ids = torch.randint(0, vocab, (1, max(1, n_prompt)), device=dev)
                    sync()
                    t0 = time.perf_counter()
                    model.generate(ids, max_new_tokens=n_gen, min_new_tokens=n_gen,
                                   do_sample=False, pad_token_id=0)
                    sync()
                    dt = time.perf_counter() - t0
                    tps = (n_prompt + n_gen) / dt
            if r > 0:
                samples.append(tps)
        print(json.dumps({"test": name, "samples": samples}), flush=True)


if __name__ == "__main__":
    main()
