#!/usr/bin/env bash
# Kernel matrix in qemu: installs the host packages it needs (qemu-system-x86, busybox-static,
# cpio, socat; apt with retries) and runs ci/vm/run.py with the given options.
#   bash ci/vm/run.sh --short        # CI: 6.1, 6.12, 7.3; hot-add to 8 vCPUs; ~20 s of payload each
#   bash ci/vm/run.sh                # longer runs
#   bash ci/vm/run.sh --full         # plus -smp 16 and -smp 32 boots
# Kernel packages are cached in /var/cache/rseq-vm (RSEQ_VM_CACHE or --cache to change).
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || need+=(busybox-static)
command -v cpio >/dev/null 2>&1 || need+=(cpio)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v objcopy >/dev/null 2>&1 || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
  echo "vm: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  ok=
  for i in 1 2 3; do
    if apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
      ok=1
      break
    fi
    echo "vm: apt-get failed (attempt $i of 3)"
    sleep $((i * 5))
  done
  [ -n "$ok" ] || { echo "vm: FATAL: cannot install ${need[*]}"; exit 2; }
fi
exec python3 ci/vm/run.py "$@"
