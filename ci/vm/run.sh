#!/usr/bin/env bash
# Kernel matrix in qemu: installs the host packages it needs (qemu-system-x86, busybox-static,
# cpio, socat; with --arch aarch64|all also qemu-system-arm and the arm64 cross toolchain; apt
# with retries) and runs ci/vm/run.py with the given options.
#   bash ci/vm/run.sh --short        # CI: 6.1, 6.12, 7.3; hot-add to 8 vCPUs; ~20 s of payload each
#   bash ci/vm/run.sh                # longer runs
#   bash ci/vm/run.sh --full         # plus -smp 16 and -smp 32 boots
#   bash ci/vm/run.sh --short --arch aarch64 --kernels 7.3   # arm64 guest, one kernel
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
# --arch aarch64 or all: the arm64 emulator and the cross toolchain (gcc for the C plugins and
# as cargo's linker, the arm64 glibc the payload's loader and libraries come from).
arch=x86_64
prev=
for a in "$@"; do
  case "$a" in --arch=*) arch=${a#--arch=} ;; esac
  [ "$prev" = --arch ] && arch=$a
  prev=$a
done
if [ "$arch" = aarch64 ] || [ "$arch" = all ]; then
  command -v qemu-system-aarch64 >/dev/null 2>&1 || need+=(qemu-system-arm)
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
  [ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || need+=(libc6-arm64-cross)
  [ -e /usr/aarch64-linux-gnu/lib/crt1.o ] || need+=(libc6-dev-arm64-cross)
fi
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
