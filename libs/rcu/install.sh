#!/usr/bin/env bash
# Installs libprcu into PREFIX:
#   PREFIX/lib/libprcu.so.0          the library (SONAME libprcu.so.0)
#   PREFIX/lib/libprcu.so            symlink, for linking with -lprcu
#   PREFIX/include/prcu.h            the header
#   PREFIX/lib/pkgconfig/prcu.pc     for pkg-config
#
# Usage: install.sh PREFIX [LIBRARY]
#   LIBRARY defaults to target/release/libprcu.so of this workspace
#   (build it with: cargo build --release -p rcu).
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 PREFIX [path/to/libprcu.so]" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="$1"
lib="${2:-$here/../../target/release/libprcu.so}"
if [ ! -f "$lib" ]; then
  echo "$0: $lib not found; build it first: cargo build --release -p rcu" >&2
  exit 1
fi
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$lib" "$prefix/lib/libprcu.so.0"
ln -sfn libprcu.so.0 "$prefix/lib/libprcu.so"
install -m 0644 "$here/include/prcu.h" "$prefix/include/prcu.h"
# '|' as the sed delimiter: PREFIX may contain '/'; escape '\', '&' and '|' in it.
escaped="$(printf '%s' "$prefix" | sed -e 's/[\\&|]/\\&/g')"
sed -e "s|@PREFIX@|$escaped|g" "$here/prcu.pc.in" > "$prefix/lib/pkgconfig/prcu.pc"
chmod 0644 "$prefix/lib/pkgconfig/prcu.pc"
echo "installed libprcu into $prefix"
