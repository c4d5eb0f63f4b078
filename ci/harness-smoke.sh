#!/usr/bin/env bash
# A short harness run with every library and the example plugin (the full default scenario,
# ~30 s, is the README's first command), then a short run with a foreign rseq user
# (harness/plugins/foreign_rseq.c registers areas of its own: under --mode reserved the other
# libraries get EINVAL and must keep exact sums on their fallback paths).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
make -s -C harness/plugins
target/release/harness --duration 10 --no-progress --json target/harness-smoke.json
target/release/harness --duration 5 --mode reserved --foreign-rseq --no-progress --json target/harness-smoke-foreign.json
# The drop-in allocator as the process's malloc, in every registration mode.
ci/harness-preload.sh 3
