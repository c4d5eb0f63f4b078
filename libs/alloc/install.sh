#!/usr/bin/env bash
# Installs libpalloc into PREFIX:
#   PREFIX/lib/libpalloc.so.0          the library (SONAME libpalloc.so.0)
#   PREFIX/lib/libpalloc.so            symlink, for linking with -lpalloc
#   PREFIX/include/palloc.h            the header
#   PREFIX/lib/pkgconfig/palloc.pc     for pkg-config
#
# Usage: install.sh PREFIX [LIBRARY]
#   LIBRARY defaults to target/release/libpalloc.so of this workspace
#   (build it with: cargo build --release -p palloc).
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 PREFIX [path/to/libpalloc.so]" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="$1"
lib="${2:-$here/../../target/release/libpalloc.so}"
if [ ! -f "$lib" ]; then
  echo "$0: $lib not found; build it first: cargo build --release -p palloc" >&2
  exit 1
fi
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$lib" "$prefix/lib/libpalloc.so.0"
ln -sfn libpalloc.so.0 "$prefix/lib/libpalloc.so"
install -m 0644 "$here/include/palloc.h" "$prefix/include/palloc.h"
# '|' as the sed delimiter: PREFIX may contain '/'; escape '\', '&' and '|' in it.
escaped="$(printf '%s' "$prefix" | sed -e 's/[\\&|]/\\&/g')"
sed -e "s|@PREFIX@|$escaped|g" "$here/palloc.pc.in" > "$prefix/lib/pkgconfig/palloc.pc"
chmod 0644 "$prefix/lib/pkgconfig/palloc.pc"
echo "installed libpalloc into $prefix"
