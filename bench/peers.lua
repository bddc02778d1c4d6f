-- bench/peers.lua: pio and llama.cpp on the same synthetic Qwen3 weights in
-- one run, same threads, llama-bench's tests; decode rows as a fraction of the
-- memory roofline measured in the same run.
--   pio bench bench/peers.lua [--json out.json] [--reps N]
-- PIO_BENCH_MODELS=0.6b,4b and PIO_BENCH_DTYPES=bf16,f32 pick what runs
-- (default: 0.6b in bf16 and f32). llama.cpp comes from llama-cpp-python built
-- from source (bench/peers/install.sh); without it the rows say "missing".
local suite = require_file("qwen3.lua")
suite.name = "peers"
suite.peers = { require_file("llama_cpp.lua") }
return suite
