#!/usr/bin/env bash
# Installs libpcounters into PREFIX:
#   PREFIX/lib/libpcounters.so.0          the library (SONAME libpcounters.so.0)
#   PREFIX/lib/libpcounters.so            symlink, for linking with -lpcounters
#   PREFIX/include/pcounters.h            the header
#   PREFIX/lib/pkgconfig/pcounters.pc     for pkg-config
#
# Usage: install.sh PREFIX [LIBRARY]
#   LIBRARY defaults to target/release/libpcounters.so of this workspace
#   (build it with: cargo build --release -p counters).
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 PREFIX [path/to/libpcounters.so]" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="$1"
lib="${2:-$here/../../target/release/libpcounters.so}"
if [ ! -f "$lib" ]; then
  echo "$0: $lib not found; build it first: cargo build --release -p counters" >&2
  exit 1
fi
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$lib" "$prefix/lib/libpcounters.so.0"
ln -sfn libpcounters.so.0 "$prefix/lib/libpcounters.so"
install -m 0644 "$here/include/pcounters.h" "$prefix/include/pcounters.h"
# '|' as the sed delimiter: PREFIX may contain '/'; escape '\', '&' and '|' in it.
escaped="$(printf '%s' "$prefix" | sed -e 's/[\\&|]/\\&/g')"
sed -e "s|@PREFIX@|$escaped|g" "$here/pcounters.pc.in" > "$prefix/lib/pkgconfig/pcounters.pc"
chmod 0644 "$prefix/lib/pkgconfig/pcounters.pc"
echo "installed libpcounters into $prefix"
