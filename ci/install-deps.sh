#!/usr/bin/env bash
# Installs what the build and the tests need on a fresh Debian machine with rustup.
set -euo pipefail
missing=()
for tool in gcc pkg-config nm make python3 cpio dpkg-deb; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=()
  for t in "${missing[@]}"; do
    case "$t" in
      gcc|make) pkgs+=(build-essential) ;;
      pkg-config) pkgs+=(pkg-config) ;;
      nm) pkgs+=(binutils) ;;
      python3|cpio) pkgs+=("$t") ;;
      dpkg-deb) pkgs+=(dpkg) ;;
    esac
  done
  echo "installing: ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  for i in 1 2 3; do apt-get update -qq && break || sleep 5; done
  apt-get install -y -qq "${pkgs[@]}"
fi
# The allocator benchmark's peers (bench/alloc, by LD_PRELOAD), the real programs that
# ci/alloc-programs.sh runs under a drop-in malloc, liburcu (the RCU benchmark's peer and the
# key-value server's rculfhash stack), memcached and its load generator (apps/kvd's peers).
alloc_pkgs=()
for pkg in libjemalloc2 libjemalloc-dev libmimalloc2.0 libtcmalloc-minimal4 sqlite3 git gcc python3 \
  liburcu-dev memcached libmemcached-tools; do
  dpkg -s "$pkg" >/dev/null 2>&1 || alloc_pkgs+=("$pkg")
done
if [ ${#alloc_pkgs[@]} -gt 0 ]; then
  echo "installing: ${alloc_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  for i in 1 2 3; do apt-get update -qq && break || sleep 5; done
  apt-get install -y -qq "${alloc_pkgs[@]}"
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
rustup target list --installed | grep -q '^aarch64-unknown-linux-gnu$' || rustup target add aarch64-unknown-linux-gnu
# kvd-check bench's throughput plot (apps/kvd-check/plot_throughput.py).
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib || python3 -m pip install -q --break-system-packages matplotlib
