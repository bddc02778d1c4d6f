#!/usr/bin/env python3
"""Times a GGUF model with llama.cpp (through llama-cpp-python's C API) the
way llama-bench does: for each test a fresh context, the KV cache reset
before every repetition (to the untimed depth prompt), random token ids,
logits for the last token of each batch, a warm-up run first.

    llama_cpp_bench.py MODEL.gguf THREADS REPS TEST...   (TEST = n_prompt,n_gen,n_depth,name)

Prints one JSON object per test on stdout:
    {"test": name, "samples": [t/s, ...]}
and a first line {"build": "..."} describing the llama.cpp build.
"""
import ctypes
import json
import random
import sys
import time

import llama_cpp as L


def quiet_logs():
    @L.llama_log_callback
    def sink(level, text, user_data):
        pass
    L.llama_log_set(sink, ctypes.c_void_p(0))
    return sink  # keep the callback alive


def main():
    path, threads, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    tests = []
    for t in sys.argv[4:]:
        p, g, d, name = t.split(",", 3)
        tests.append((int(p), int(g), int(d), name))
    keep = quiet_logs()
    L.llama_backend_init()
    info = L.llama_print_system_info().decode().strip()
    print(json.dumps({"build": f"llama-cpp-python {L.__version__}: {info}"}), flush=True)

    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(path.encode(), mp)
    if not model:
        raise SystemExit(f"llama.cpp could not load {path}")
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    n_batch = 2048
    rng = random.Random(1)

    for n_prompt, n_gen, n_depth, name in tests:
        cp = L.llama_context_default_params()
        cp.n_ctx = n_prompt + n_gen + n_depth
        cp.n_batch = n_batch
        cp.n_ubatch = 512
        cp.n_threads = threads
        cp.n_threads_batch = threads
        ctx = L.llama_init_from_model(model, cp)
        if not ctx:
            raise SystemExit("llama.cpp could not create a context")
        mem = L.llama_get_memory(ctx)
        toks = (L.llama_token * n_batch)()

        def prompt(n):
            done = 0
            while done < n:
                k = min(n - done, n_batch)
                for i in range(k):
                    toks[i] = rng.randrange(n_vocab)
                if L.llama_decode(ctx, L.llama_batch_get_one(toks, k)) != 0:
                    raise SystemExit("llama_decode failed")
                done += k
            L.llama_synchronize(ctx)

        def gen(n):
            tok = (L.llama_token * 1)()
            for _ in range(n):
                tok[0] = rng.randrange(n_vocab)
                if L.llama_decode(ctx, L.llama_batch_get_one(tok, 1)) != 0:
                    raise SystemExit("llama_decode failed")
                L.llama_synchronize(ctx)

        # The depth is processed once, untimed; each repetition then drops the
        # positions after it, which leaves the cache exactly as llama-bench's
        # clear-and-refill does (same tokens' keys and values) without paying
        # for a 2048-token prompt per repetition on a 2-core machine.
        L.llama_memory_clear(mem, False)
        if n_depth:
            prompt(n_depth)
        # warm-up, as llama-bench: the prompt once, one generated token
        if n_prompt:
            prompt(n_prompt)
        if n_gen:
            gen(1)
        samples = []
        for _ in range(reps):
            L.llama_memory_seq_rm(mem, 0, n_depth, -1)
            t0 = time.perf_counter()
            if n_prompt:
                prompt(n_prompt)
            if n_gen:
                gen(n_gen)
            samples.append((n_prompt + n_gen) / (time.perf_counter() - t0))
        print(json.dumps({"test": name, "samples": samples}), flush=True)
        L.llama_free(ctx)
    L.llama_model_free(model)
    del keep


if __name__ == "__main__":
    main()
