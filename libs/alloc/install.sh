#!/usr/bin/env bash
# Installs libpalloc into PREFIX: lib/libpalloc.so.0 (SONAME) and lib/libpalloc.so, include/palloc.h,
# lib/pkgconfig/palloc.pc.
#
# Usage: install.sh PREFIX [LIBRARY]
#   LIBRARY defaults to target/release/libpalloc.so of this workspace
#   (build it with: cargo build --release -p palloc).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 PREFIX [path/to/libpalloc.so]" >&2
  exit 2
fi
exec bash "$here/../install-lib.sh" "$here" palloc palloc "$@"
