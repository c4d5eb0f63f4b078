#!/usr/bin/env bash
# Smoke run of the RCU benchmark (libprcu against liburcu memb/qsbr/rculfhash,
# pthread_rwlock, crossbeam-epoch and arc-swap): quick mode, release build, a few seconds.
# Fails when a variant's results are wrong (refused token, missed map key) or a row is
# missing; the figures themselves are printed, never checked.
# Needs liburcu-dev (ci/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p rcu-bench
./target/release/rcu-bench --quick
