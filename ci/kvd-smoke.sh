#!/usr/bin/env bash
# Key-value server smoke (well under 90 s): a short verify of kvd --stack ours under every rseq
# setup with disturbance (cpu1 hotplug, affinity, cpuset; skipped where not root), the same on
# memcached as a control, then a --quick bench of every server and a --quick bench-store of every stack. CPUs are restored on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'bash ci/restore-cpus.sh' EXIT
cargo build --release -p kvd -p kvd-check
bin=target/release/kvd-check
timeout 60 "$bin" verify --server ours --rseq libc,tunable,denied --disturb --clients 4 --keys 300 --ops 8000
if command -v memcached >/dev/null; then
  timeout 30 "$bin" verify --server memcached --rseq libc --disturb --clients 4 --keys 300 --ops 8000
fi
timeout 60 "$bin" bench --quick --out target/kvd-bench-quick
timeout 60 "$bin" bench-store --quick --out target/kvd-bench-store-quick
