# Sourced (not run): points the compiler, pkg-config, the loader and Lua at
# the Debian packages that scripts/gpu-deps.sh unpacked into .gpu-deps/root.
# The GPU machine has no Lua/cJSON/PCRE2/utf8proc/busted packages and cannot
# fetch any; those travel with the run (carry ".gpu-deps"). Without the folder
# this does nothing.
deps="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.gpu-deps/root"
if [ -d "$deps" ]; then
  lib="$deps/usr/lib/x86_64-linux-gnu"
  export PATH="$PATH:$deps/usr/bin"
  export PKG_CONFIG_LIBDIR="$lib/pkgconfig:$deps/usr/share/pkgconfig"
  export PKG_CONFIG_SYSROOT_DIR="$deps"
  export CPATH="$deps/usr/include:$deps/usr/include/x86_64-linux-gnu${CPATH:+:$CPATH}"
  export LIBRARY_PATH="$lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$lib"
  export CMAKE_LIBRARY_PATH="$lib"
  export LUA_PATH="$deps/usr/share/lua/5.4/?.lua;$deps/usr/share/lua/5.4/?/init.lua;;"
  export LUA_CPATH="$lib/lua/5.4/?.so;;"
  echo "== using the unpacked packages in $deps"
fi

