#!/usr/bin/env bash
# Installs the Debian 12 packages pio needs, only those missing (idempotent).
# Runs apt as root, or through sudo when not root.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git     # toolchain
  lua5.4 liblua5.4-dev                     # the embedded interpreter and its headers
  lua-cjson lua-busted                     # JSON in Lua; the Lua test runner
  libcjson-dev libpcre2-dev libutf8proc-dev libreadline-dev  # JSON, regex, NFC, REPL editing
  libxxhash-dev                            # prefix-cache block keys (models/kv.c)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
