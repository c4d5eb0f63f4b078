#!/usr/bin/env bash
# Installs libplocks into PREFIX: lib/libplocks.so.0 (SONAME) and lib/libplocks.so, include/plocks.h,
# lib/pkgconfig/plocks.pc.
#
# Usage: install.sh PREFIX [LIBRARY]
#   LIBRARY defaults to target/release/libplocks.so of this workspace
#   (build it with: cargo build --release -p locks).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 PREFIX [path/to/libplocks.so]" >&2
  exit 2
fi
exec bash "$here/../install-lib.sh" "$here" plocks locks "$@"
