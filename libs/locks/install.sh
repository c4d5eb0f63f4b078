#!/usr/bin/env bash
# Installs libplocks into PREFIX:
#   PREFIX/lib/libplocks.so.0          the library (SONAME libplocks.so.0)
#   PREFIX/lib/libplocks.so            symlink, for linking with -lplocks
#   PREFIX/include/plocks.h            the header
#   PREFIX/lib/pkgconfig/plocks.pc     for pkg-config
#
# Usage: install.sh PREFIX [LIBRARY]
#   LIBRARY defaults to target/release/libplocks.so of this workspace
#   (build it with: cargo build --release -p locks).
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 PREFIX [path/to/libplocks.so]" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="$1"
lib="${2:-$here/../../target/release/libplocks.so}"
if [ ! -f "$lib" ]; then
  echo "$0: $lib not found; build it first: cargo build --release -p locks" >&2
  exit 1
fi
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$lib" "$prefix/lib/libplocks.so.0"
ln -sfn libplocks.so.0 "$prefix/lib/libplocks.so"
install -m 0644 "$here/include/plocks.h" "$prefix/include/plocks.h"
# '|' as the sed delimiter: PREFIX may contain '/'; escape '\', '&' and '|' in it.
escaped="$(printf '%s' "$prefix" | sed -e 's/[\\&|]/\\&/g')"
sed -e "s|@PREFIX@|$escaped|g" "$here/plocks.pc.in" > "$prefix/lib/pkgconfig/plocks.pc"
chmod 0644 "$prefix/lib/pkgconfig/plocks.pc"
echo "installed libplocks into $prefix"
