#!/usr/bin/env bash
# The harness with the drop-in allocator as the whole process's malloc: the harness itself,
# libpcounters, libpalloc.so and the plugins all allocate through libpalloc_preload.so
# (LD_PRELOAD, inherited by the run process the harness re-executes for each registration
# mode), while the libraries are dlopened as usual. One run per mode (libc, reserved, none)
# with simulated hotplug and thread churn; --expect-preload fails a run whose run process
# does not get its malloc from the preload.
# Usage: ci/harness-preload.sh [SECONDS per run, default 5] [more harness options]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
shift || true
cargo build --release --workspace
preload="$PWD/target/release/libpalloc_preload.so"
for mode in libc reserved none; do
    echo "== harness under LD_PRELOAD=$preload, --mode $mode"
    LD_PRELOAD="$preload" target/release/harness --duration "$secs" --mode "$mode" --hotplug simulated \
        --hotplug-rate 2 --churn-rate 1200 --expect-preload --no-progress \
        --json "target/harness-preload-$mode.json" "$@"
done
