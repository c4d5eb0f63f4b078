#!/usr/bin/env bash
# A short harness run with every library (libpcounters, libpalloc, libprcu, libplocks) and the
# example plugin (the full default scenario, ~30 s, is the README's first command), then a short
# run with a foreign rseq user (harness/plugins/foreign_rseq.c registers areas of its own: under
# --mode reserved the other libraries get EINVAL and must keep exact sums on their fallback paths).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
make -s -C harness/plugins
target/release/harness --duration 10 --no-progress --json target/harness-smoke.json
# The default discovery found every library the harness has an adapter for.
python3 - target/harness-smoke.json <<'EOF'
import json, sys
kinds = {l["kind"] for l in json.load(open(sys.argv[1]))["state"]["libs"]}
missing = {"counters", "alloc", "rcu", "locks", "plugin"} - kinds
if missing:
    sys.exit(f"harness-smoke: the default run left out {sorted(missing)} (it loaded {sorted(kinds)})")
EOF
target/release/harness --duration 5 --mode reserved --foreign-rseq --no-progress --json target/harness-smoke-foreign.json
# The drop-in allocator as the process's malloc, in every registration mode.
ci/harness-preload.sh 3
