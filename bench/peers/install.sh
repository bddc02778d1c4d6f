#!/usr/bin/env bash
# Makes the Python environment bench/peers.lua uses for llama.cpp: the `gguf`
# package and llama-cpp-python compiled from source (PyPI) for this CPU's
# instruction sets, chosen explicitly rather than with -march=native (no AMX:
# gcc 12's _tile_loadconfig lets the compiler drop the stores that fill the
# tile configuration, and llama.cpp's native build dies with SIGILL on AMX
# machines for it). Takes several minutes on 2 cores. Nothing lands in the repo.
set -euo pipefail
venv="${PIO_BENCH_VENV:-/root/.venvs/pio-peers}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q gguf numpy
flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
if grep -qw avx512f /proc/cpuinfo; then
  flags="$flags -DGGML_AVX512=ON"
  grep -qw avx512_bf16 /proc/cpuinfo && flags="$flags -DGGML_AVX512_BF16=ON"
  grep -qw avx512_vnni /proc/cpuinfo && flags="$flags -DGGML_AVX512_VNNI=ON"
  grep -qw avx512vbmi /proc/cpuinfo && flags="$flags -DGGML_AVX512_VBMI=ON"
fi
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
CMAKE_ARGS="$flags -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release" \
  "$venv/bin/pip" install --no-binary llama-cpp-python "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
echo "peers ready: PIO_BENCH_PYTHON=$venv/bin/python"
