#!/usr/bin/env bash
# Installs libprcu into PREFIX: lib/libprcu.so.0 (SONAME) and lib/libprcu.so, include/prcu.h,
# lib/pkgconfig/prcu.pc.
#
# Usage: install.sh PREFIX [LIBRARY]
#   LIBRARY defaults to target/release/libprcu.so of this workspace
#   (build it with: cargo build --release -p rcu).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 PREFIX [path/to/libprcu.so]" >&2
  exit 2
fi
exec bash "$here/../install-lib.sh" "$here" prcu rcu "$@"
