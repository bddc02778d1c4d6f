#!/usr/bin/env bash
# The main job: install what is missing, build, and run the Lua pipeline
# scripts/pipeline.lua on the tiny Qwen3 model that ships with the repo.
# Any arguments are passed to the pipeline (e.g. a model directory).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build"
exec "$root/build/pio" "$root/scripts/pipeline.lua" "$@"
