#!/usr/bin/env bash
# Installs one of the workspace's C libraries into PREFIX (each libs/*/install.sh calls this
# with its names):
#   PREFIX/lib/libNAME.so.0          the library (its SONAME)
#   PREFIX/lib/libNAME.so            symlink, for linking with -lNAME
#   PREFIX/include/NAME.h            the header (from the library's include/)
#   PREFIX/lib/pkgconfig/NAME.pc     for pkg-config (from the library's NAME.pc.in)
#
# Usage: install-lib.sh DIR NAME CRATE PREFIX [LIBRARY]
#   DIR is the library's folder (holding include/NAME.h and NAME.pc.in); LIBRARY defaults to
#   target/release/libNAME.so of this workspace (built by: cargo build --release -p CRATE).
set -euo pipefail

if [ $# -lt 4 ] || [ $# -gt 5 ]; then
  echo "usage: install-lib.sh DIR NAME CRATE PREFIX [LIBRARY]" >&2
  exit 2
fi
here="$(cd "$1" && pwd)"
name="$2"
crate="$3"
prefix="$4"
lib="${5:-$here/../../target/release/lib$name.so}"
if [ ! -f "$lib" ]; then
  echo "install.sh: $lib not found; build it first: cargo build --release -p $crate" >&2
  exit 1
fi
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$lib" "$prefix/lib/lib$name.so.0"
ln -sfn "lib$name.so.0" "$prefix/lib/lib$name.so"
install -m 0644 "$here/include/$name.h" "$prefix/include/$name.h"
# '|' as the sed delimiter: PREFIX may contain '/'; escape '\', '&' and '|' in it.
escaped="$(printf '%s' "$prefix" | sed -e 's/[\\&|]/\\&/g')"
sed -e "s|@PREFIX@|$escaped|g" "$here/$name.pc.in" > "$prefix/lib/pkgconfig/$name.pc"
chmod 0644 "$prefix/lib/pkgconfig/$name.pc"
echo "installed lib$name into $prefix"
