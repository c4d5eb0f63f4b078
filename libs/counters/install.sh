#!/usr/bin/env bash
# Installs libpcounters into PREFIX: lib/libpcounters.so.0 (SONAME) and lib/libpcounters.so, include/pcounters.h,
# lib/pkgconfig/pcounters.pc.
#
# Usage: install.sh PREFIX [LIBRARY]
#   LIBRARY defaults to target/release/libpcounters.so of this workspace
#   (build it with: cargo build --release -p counters).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 PREFIX [path/to/libpcounters.so]" >&2
  exit 2
fi
exec bash "$here/../install-lib.sh" "$here" pcounters counters "$@"
