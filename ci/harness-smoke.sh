#!/usr/bin/env bash
# A short harness run with every library and the example plugin (the full default scenario,
# ~30 s, is the README's first command).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
make -s -C harness/plugins
target/release/harness --duration 10 --no-progress --json target/harness-smoke.json
