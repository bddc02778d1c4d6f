#!/usr/bin/env bash
# Prepares, on a Debian 12 machine with apt, the packages that the GPU machine
# lacks to build and test the whole project there (Lua 5.4 and its headers,
# cJSON, PCRE2, utf8proc, readline, xxhash, busted and its Lua modules), as a
# folder of unpacked .deb files: .gpu-deps/root. The GPU machine (scripts/
# gpu-check.sh) points the compiler, pkg-config, the loader and Lua at it.
# Nothing is installed here: the packages are downloaded and unpacked only.
# Use: scripts/gpu-deps.sh, then carry ".gpu-deps" with the device run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.gpu-deps"
packages=(
  lua5.4 liblua5.4-0 liblua5.4-dev libcjson1 libcjson-dev
  libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libpcre2-dev
  libutf8proc2 libutf8proc-dev libreadline8 libreadline-dev readline-common
  libncurses-dev libncurses6 libtinfo6 libxxhash0 libxxhash-dev
  lua-busted lua-cliargs lua-dkjson lua-filesystem lua-luassert lua-mediator
  lua-penlight lua-say lua-system lua-term lua-cjson
  pkgconf pkgconf-bin libpkgconf3 pkg-config
)
rm -rf "$dest"
mkdir -p "$dest/debs" "$dest/root"
(cd "$dest/debs" && apt-get download "${packages[@]}" >/dev/null 2>&1 ||
  { echo "gpu-deps: apt-get download failed (no Debian package index?)"; exit 1; })
for deb in "$dest"/debs/*.deb; do dpkg -x "$deb" "$dest/root"; done
rm -rf "$dest/debs"
# Absolute links (libreadline.so -> /lib/...) would point outside the folder
# there: move every library to usr/lib and make such links relative.
libdir="$dest/root/usr/lib/x86_64-linux-gnu"
if [ -d "$dest/root/lib/x86_64-linux-gnu" ]; then
  cp -a "$dest/root/lib/x86_64-linux-gnu/." "$libdir/"
fi
find "$dest/root" -type l -lname '/*' | while read -r link; do
  ln -sfn "$(basename "$(readlink "$link")")" "$link"
done
# pkg-config files name prefix=/usr; the GPU machine rewrites them to this folder.
echo "gpu-deps: $(du -sh "$dest" | cut -f1) in $dest"
