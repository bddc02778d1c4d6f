#!/usr/bin/env bash
# Every test: install what is missing, build twice (plain, and with
# AddressSanitizer + UndefinedBehaviorSanitizer), run the C tests (ctest) and
# the Lua specs (busted) in both builds. Any sanitizer report fails the run.
# The last line is "N passed, N failed" over all of them.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
"$root/scripts/install-deps.sh" || exit 1

# Models load on the CPU unless a spec names a device: on a machine with a GPU,
# "auto" would otherwise move the CPU suite there (tests/spec/cuda_spec.lua and
# scripts/gpu-check.sh test the GPU).
export PIO_DEVICE="${PIO_DEVICE:-cpu}"

passed=0
failed=0
log="$(mktemp -d)"

# Adds the counts of one runner: ctest's summary or a "N passed, N failed" line.
count() {
  local name="$1" out="$2" rc="$3" p f line
  if line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1) && [ -n "$line" ]; then
    p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
  elif line=$(grep -E 'tests passed, [0-9]+ tests failed out of [0-9]+' "$out" | tail -n 1) && [ -n "$line" ]; then
    local total
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+)/\1/')
    total=$(echo "$line" | sed -E 's/.*out of ([0-9]+)/\1/')
    p=$((total - f))
  else
    p=0
    f=1
    echo "test.sh: $name printed no summary (exit $rc)"
  fi
  # A runner that crashed or found a sanitizer report fails even if it counted passes.
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$out"; then
    echo "test.sh: $name: sanitizer report"
    grep -E -A5 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$out" | head -40
    f=$((f + 1))
  fi
  echo "test.sh: $name: $p passed, $f failed"
  passed=$((passed + p))
  failed=$((failed + f))
}

run() { # name, then the command
  local name="$1"
  shift
  echo "== $name"
  "$@" >"$log/$name.out" 2>&1
  local rc=$?
  tail -n 30 "$log/$name.out"
  count "$name" "$log/$name.out" "$rc"
}

build_ok=1
"$root/scripts/build.sh" "$root/build" >"$log/build.out" 2>&1 || { cat "$log/build.out"; build_ok=0; }
if [ $build_ok -eq 1 ]; then
  run c-tests ctest --test-dir "$root/build" --output-on-failure
  run lua-specs env PIO_BUILD_DIR="$root/build" busted
else
  failed=$((failed + 1))
fi

# The sanitizer build runs the same tests. The Lua specs go through the
# instrumented `pio` host running busted, so the bindings are checked too.
# AVX-512 kernels run under ASan; only valgrind needs PIO_CPU=avx2.
asan_ok=1
"$root/scripts/build.sh" "$root/build-asan" -DPIO_SANITIZE=ON >"$log/build-asan.out" 2>&1 ||
  { cat "$log/build-asan.out"; asan_ok=0; }
if [ $asan_ok -eq 1 ]; then
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  run c-tests-asan ctest --test-dir "$root/build-asan" --output-on-failure
  run lua-specs-asan env PIO_BUILD_DIR="$root/build-asan" \
    "$root/build-asan/pio" "$(command -v busted)"
else
  failed=$((failed + 1))
fi

rm -rf "$log"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
