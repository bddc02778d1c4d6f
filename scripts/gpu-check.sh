#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU (H100/H200: sm_90). On an H100
# (measured 2026-11-27) the build and checks take about 1.5 minutes and each
# model benchmark 0.5 to 2 minutes; everything, about 7 minutes. Steps:
#   1. names the card and the toolkit;
#   2. configures and builds for sm_90: the whole project (with the Debian
#      packages scripts/gpu-deps.sh unpacked into .gpu-deps where the machine
#      lacks them), else the kernels alone (kernels/cuda/standalone);
#   3. runs the gpu-labelled C tests (tests/c/test-cuda-*.c: every CUDA op
#      against its CPU twin, without and then with programmatic dependent launch;
#      the paged KV cache's ops against the contiguous ones);
#      a skip counts as a failure here;
#   4. runs bench/cuda-micro: copy bandwidth, cuBLAS bf16 peak, the matvec
#      kernel on Qwen3-4B shapes, prompt GEMMs, attention, and the op chain of
#      a Qwen3-4B forward pass (kernels only, as a graph with and without PDL);
#   5. the busted specs tagged gpu (Qwen3 and Qwen3-MoE fixtures on cuda against
#      transformers' outputs); PIO_GPU_NOPDL=1 runs them again without
#      programmatic dependent launch (PIO_CUDA_PDL=0);
#   6. the model benchmarks (PIO_GPU_BENCH): dense = bench/cuda.lua (Qwen3-4B,
#      transformers on the same card; tg128/pp512 again without PDL when
#      PIO_GPU_NOPDL=1), serving =
#      bench/serving.lua on cuda, moe = bench/cuda_moe.lua (the 30B-A3B shape);
#   7. prints a short summary table.
# Every step has a timeout; a failing step is reported and the next one still
# runs, and the script exits non-zero if any failed.
#
# Environment: PIO_GPU_BENCH (which model benchmarks: "dense,moe,serving" by default),
# PIO_GPU_BUILD (build folder, default build-gpu), OUT (where logs
# are written, default the build folder), PIO_GPU_QUICK=1 (fewer sizes and
# repetitions), PIO_GPU_SANITIZE=1 (also run the quick test under
# compute-sanitizer memcheck and racecheck, and memcheck of the paged KV tests:
# slower), PIO_CUDA_ARCH (default 90).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${PIO_GPU_BUILD:-$root/build-gpu}"
logs="${OUT:-$build}"
arch="${PIO_CUDA_ARCH:-90}"
mkdir -p "$build" "$logs"
cd "$root" # busted reads .busted here; suites name paths from here
failed=()
t_start=$(date +%s)

# step NAME SECONDS CMD...: runs CMD with a time limit, its output to the
# terminal and to $logs/NAME.log; records a failure instead of stopping.
step() {
  local name="$1" limit="$2"
  shift 2
  local t0 rc
  t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  set +e
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$logs/$name.log"
  rc=${PIPESTATUS[0]}
  set -e
  echo "== $name: exit $rc after $(($(date +%s) - t0))s"
  if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 124 ] && echo "== $name: TIMED OUT"
    failed+=("$name")
  fi
  return 0
}

echo "== card"
if command -v nvidia-smi >/dev/null; then
  timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem \
    --format=csv,noheader || echo "nvidia-smi failed"
else
  echo "nvidia-smi not found"
fi
command -v nvcc >/dev/null || export PATH="/usr/local/cuda/bin:$PATH"
echo "nvcc: $(nvcc --version 2>/dev/null | tail -n 1 || echo missing)"
echo "cmake: $(cmake --version | head -n 1)"

# Unpacked Debian packages (scripts/gpu-deps.sh), where the machine lacks them.
source "$root/scripts/gpu-env.sh"

src="$root"
if ! pkg-config --exists lua5.4 libcjson libpcre2-8 libutf8proc 2>/dev/null; then
  src="$root/kernels/cuda/standalone"
  echo "== the Lua/cJSON/PCRE2/utf8proc dev packages are missing: building the kernels alone ($src)"
fi
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
# A build folder configured from the other source tree or generator cannot be reused.
if [ -f "$build/CMakeCache.txt" ] && ! grep -q "CMAKE_HOME_DIRECTORY:INTERNAL=$src\$" "$build/CMakeCache.txt"; then
  rm -rf "$build"
  mkdir -p "$build"
fi

step configure 120 cmake -S "$src" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DPIO_CUDA_VERBOSE=ON -DPIO_CUDA_WERROR=OFF
if [ "$src" = "$root" ]; then
  step build 300 cmake --build "$build" -j"$(nproc)"
else
  step build 300 cmake --build "$build" -j"$(nproc)" --target test-cuda-ops test-cuda-paged cuda-micro
fi
# The compiler's resource report (registers, shared memory, spills) for the notes.
grep -hE "ptxas info *: (Compiling|Used)|spill" "$logs/build.log" >"$logs/ptxas.txt" 2>/dev/null || true

if [ -x "$build/test-cuda-ops" ]; then
  step gpu-tests 240 ctest --test-dir "$build" -L gpu -V --no-tests=error
  if grep -q "Skipped" "$logs/gpu-tests.log"; then
    echo "== gpu-tests: SKIPPED on a GPU machine (no usable device?): counted as a failure"
    failed+=("gpu-tests-skipped")
  fi
  if [ "${PIO_GPU_SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null; then
    step memcheck 300 env PIO_CUDA_TEST_QUICK=1 compute-sanitizer --tool memcheck --error-exitcode 1 "$build/test-cuda-ops"
    step racecheck 300 env PIO_CUDA_TEST_QUICK=1 compute-sanitizer --tool racecheck --error-exitcode 1 "$build/test-cuda-ops"
    # The paged KV cache's ops (block-table lookups shared by shuffle, scattered pools).
    if [ -x "$build/test-cuda-paged" ]; then
      step memcheck-paged 300 compute-sanitizer --tool memcheck --error-exitcode 1 "$build/test-cuda-paged"
    fi
  fi
fi

if [ -x "$build/cuda-micro" ]; then
  quick=()
  [ "${PIO_GPU_QUICK:-0}" = 1 ] && quick=(--quick)
  step micro-bench 240 "$build/cuda-micro" "${quick[@]}"
fi

# The model on the GPU: busted's gpu-tagged specs (Qwen3 fixtures against
# transformers' outputs in f32 and bf16, errors), then the end-to-end benchmark
# (bench/cuda.lua: synthetic Qwen3-4B, tg128 / pp512 / pp2048 / tg128 @ d2048,
# transformers on the same card) against the ceilings measured above.
if [ -x "$build/pio" ]; then
  busted_cmd=(busted) # the unpacked busted's "#!/usr/bin/env lua" finds no lua there
  [ -f "$root/.gpu-deps/root/usr/bin/busted" ] && busted_cmd=(lua5.4 "$root/.gpu-deps/root/usr/bin/busted")
  step gpu-specs 300 env PIO_BUILD_DIR="$build" "${busted_cmd[@]}" --tags=gpu
  if grep -qE "^0 passed" "$logs/gpu-specs.log" 2>/dev/null; then failed+=("gpu-specs-none-ran"); fi
  copy=$(sed -nE 's/^ceilings: copy ([0-9.]+) GB\/s.*/\1/p' "$logs/micro-bench.log" 2>/dev/null | head -n 1)
  peak=$(sed -nE 's/^ceilings:.*peak ([0-9.]+) TFLOP\/s.*/\1/p' "$logs/micro-bench.log" 2>/dev/null | head -n 1)
  reps=5
  [ "${PIO_GPU_QUICK:-0}" = 1 ] && reps=3
  benches="${PIO_GPU_BENCH:-dense,moe,serving}"
  if [[ ",$benches," == *,dense,* ]]; then
    step model-bench 360 env PIO_GPU_COPY_GBS="$copy" PIO_GPU_PEAK_TFLOPS="$peak" \
      "$build/pio" bench "$root/bench/cuda.lua" --reps "$reps" --json "$logs/bench-cuda.json"
  fi
  # Programmatic dependent launch is on by default (Hopper); PIO_GPU_NOPDL=1
  # runs the specs again without it (same numbers expected) and decode and a
  # prompt, to compare with the rows above.
  if [ "${PIO_GPU_NOPDL:-0}" = 1 ]; then
    step gpu-specs-nopdl 300 env PIO_CUDA_PDL=0 PIO_BUILD_DIR="$build" "${busted_cmd[@]}" --tags=gpu
    if [[ ",$benches," == *,dense,* ]]; then
      step model-bench-nopdl 240 env PIO_CUDA_PDL=0 PIO_BENCH_PEERS=0 PIO_BENCH_TESTS=tg128,pp512 \
        PIO_GPU_COPY_GBS="$copy" PIO_GPU_PEAK_TFLOPS="$peak" \
        "$build/pio" bench "$root/bench/cuda.lua" --reps "$reps" --json "$logs/bench-cuda-nopdl.json"
    fi
  fi
  # Continuous batching on the GPU (bench/serving.lua, Qwen3-4B: concurrency, prefix
  # reuse and preemption on the paged KV cache, capacity).
  if [[ ",$benches," == *,serving,* ]]; then
    step serving-bench 300 env PIO_BENCH_DEVICE=cuda "$build/pio" bench "$root/bench/serving.lua" \
      --quick --json "$logs/bench-serving.json"
  fi
  # Qwen3-MoE at the 30B-A3B shape (about 61 GB of bf16 weights: an 80 GB card).
  if [[ ",$benches," == *,moe,* ]]; then
    step moe-bench 300 env PIO_GPU_COPY_GBS="$copy" \
      "$build/pio" bench "$root/bench/cuda_moe.lua" --reps "$reps" --json "$logs/bench-cuda-moe.json"
  fi
fi

echo
echo "== summary ($(($(date +%s) - t_start))s)"
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | sed 's/^/card: /' || true
if [ -f "$logs/gpu-tests.log" ]; then
  grep -E "tests passed|passed, [0-9]+ failed" "$logs/gpu-tests.log" | tail -n 2 | sed 's/^/tests: /' || true
fi
if [ -f "$logs/gpu-specs.log" ]; then
  grep -E "^[0-9]+ passed, [0-9]+ failed" "$logs/gpu-specs.log" | tail -n 1 | sed 's/^/gpu specs: /' || true
fi
if [ -f "$logs/model-bench.log" ]; then
  sed -n '/^| model/,$p' "$logs/model-bench.log" | grep -vE "^(peak memory|wrote)" || true
fi
if [ -f "$logs/gpu-specs-nopdl.log" ]; then
  grep -E "^[0-9]+ passed, [0-9]+ failed" "$logs/gpu-specs-nopdl.log" | tail -n 1 | sed 's/^/gpu specs without PDL: /' || true
fi
if [ -f "$logs/model-bench-nopdl.log" ]; then
  echo "without programmatic dependent launch (PIO_CUDA_PDL=0):"
  grep -E "^\| qwen3" "$logs/model-bench-nopdl.log" | head -n 4 || true
fi
if [ -f "$logs/serving-bench.log" ]; then
  sed -n '/ on cuda$/,$p' "$logs/serving-bench.log" | grep -vE "^(peak memory|pio bench: wrote)" || true
fi
if [ -f "$logs/moe-bench.log" ]; then
  sed -n '/on cuda, bf16/,$p' "$logs/moe-bench.log" | grep -vE "^(peak memory|pio bench: wrote)" || true
fi
if [ -f "$logs/micro-bench.log" ]; then
  grep -E "^ceilings:|^one layer's 7 matvecs|^one layer \(4 GEMMs\)|^decode @|^prompt [0-9]+ tokens|^prompt [0-9]+: tensor cores, bf16|^decode at 4096" \
    "$logs/micro-bench.log" || true
fi
echo "logs: $logs"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "gpu-check: all steps passed"
