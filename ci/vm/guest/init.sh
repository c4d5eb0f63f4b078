#!/bin/sh
# /init of the test VM (busybox). Runs /plan.sh, which the host writes for each boot, and
# powers off. Human-readable output goes to the console (ttyS0); records for the host go to
# the data channel (ttyS1, or the virtio port "data"), one per line, all starting with "@@ ":
#   @@ BEGIN <step>             a step starts
#   @@ END <step> rc=<n> secs=<s>
#   @@ FACT <key> <value...>    a fact about the guest (kernel, CPUs, ...)
#   @@ FILE <name>              followed by base64(gzip(file)) lines, then
#   @@ ENDFILE <name>
#   @@ HOTADD READY <n>         the host may now add <n> vCPUs through QMP
#   @@ CPU <event...>           hot-add/online/offline progress
#   @@ ASK <question>           the host answers one line on the same channel
#   @@ DONE                     the plan ran to its end (no DONE: the guest hung or died)
# Only this script (never a background job) writes to the data channel, so records and
# file blocks never interleave.

/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp && mount -t tmpfs tmpfs /tmp
# A cpuset hierarchy for the harness's cpuset disturbance: v1 where the kernel has it (6.1),
# else the unified v2 hierarchy (6.12 and 7.3 are built without CONFIG_CPUSETS_V1).
if mount -t tmpfs cgroup /sys/fs/cgroup 2>/dev/null; then
  mkdir -p /sys/fs/cgroup/cpuset
  if ! mount -t cgroup -o cpuset cpuset /sys/fs/cgroup/cpuset 2>/dev/null; then
    rmdir /sys/fs/cgroup/cpuset
    mkdir -p /sys/fs/cgroup/unified
    mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified 2>/dev/null || rmdir /sys/fs/cgroup/unified
  fi
fi
# Kernels that have the data channel's drivers as modules (6.1 on arm64: virtio_pci,
# virtio_console): the host put them in /modules, dependencies first.
if [ -f /modules/order ]; then
  for m in $(cat /modules/order); do insmod "/modules/$m" || echo "=== insmod $m failed"; done
  i=0
  while [ "$i" -lt 50 ] && ! grep -qs '^data$' /sys/class/virtio-ports/*/name; do usleep 100000; i=$((i + 1)); done
fi
# The data channel is a socket on the host, both ways: a virtio serial port named "data" where
# there is one (aarch64: the virt machine has a single UART, the console), else ttyS1 (x86_64),
# raw and without echo.
data=/dev/ttyS1
for n in /sys/class/virtio-ports/*/name; do
  [ "$(cat "$n" 2>/dev/null)" = data ] || continue
  d=${n%/name}
  data=/dev/${d##*/}
done
[ "$data" = /dev/ttyS1 ] && stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec 3<>"$data"
export HOME=/tmp
cd /tmp

rec() { echo "@@ $*" >&3; }
# ask QUESTION: the host answers one line ("OK ..." or "ERR ..."); returns 0 on OK.
ask() {
  rec "ASK $*"
  answer=""
  read -r -t 60 answer <&3
  echo "=== asked the host: $* -> ${answer:-no answer}"
  case "$answer" in OK*) return 0 ;; *) return 1 ;; esac
}
# Single-instruction translation blocks: under TCG an interrupt is only taken between two
# translation blocks, so a short critical section without a branch is never interrupted, and
# no rseq restart ever happens. With this on, interrupts land on any instruction.
singlestep() { # on|off
  if ask "singlestep $1"; then rec "FACT singlestep $1"; else rec "FACT singlestep $1 failed"; fi
}
now() { cut -d' ' -f1 /proc/uptime; }
# secs_since START: seconds (one decimal) since an uptime reading
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

sendfile() { # NAME PATH
  rec "FILE $1"
  if [ -f "$2" ]; then gzip -c "$2" | base64 >&3; fi
  rec "ENDFILE $1"
}

cpu_list() { cat "/sys/devices/system/cpu/$1" 2>/dev/null; }

facts() {
  rec "FACT kernel $(uname -r)"
  rec "FACT arch $(uname -m)"
  rec "FACT possible $(cpu_list possible)"
  rec "FACT present $(cpu_list present)"
  rec "FACT online $(cpu_list online)"
  rec "FACT nproc $(nproc)"
  rec "FACT mem_kib $(awk '/MemTotal/ { print $2 }' /proc/meminfo)"
  rec "FACT cpuset_v1 $([ -d /sys/fs/cgroup/cpuset ] && echo yes || echo no)"
  rec "FACT cgroup2_controllers $(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null || echo none)"
  rec "FACT uptime $(now)"
  dmesg > /tmp/dmesg.boot
  wc -l < /tmp/dmesg.boot > /tmp/dmesg.seen
  grep -E 'hotplug CPUs|Table Upgrade|ACPI: (FACP|APIC) |Allowing .* CPUs|smpboot: Total|SMP: Total' /tmp/dmesg.boot |
    sed 's/^\[[ 0-9.]*\] //' | while read -r l; do rec "FACT dmesg $l"; done
}

# stuck_report NAME : where the payload's threads are blocked, for a step about to time out:
# each thread's kernel wait channel and stack, and the kernel's list of blocked tasks.
stuck_report() {
  echo "=== [$1] still running near its time limit: the payload's threads"
  for p in /proc/[0-9]*; do
    [ "$p/exe" -ef /payload/bin/harness ] || [ "$p/exe" -ef "/payload/tests/${1#rseq.}" ] || continue
    for t in "$p"/task/[0-9]*; do
      echo "--- ${t#/proc/} $(cat "$t/comm" 2>/dev/null) state=$(awk '/^State:/ { print $2 }' "$t/status" 2>/dev/null) wchan=$(cat "$t/wchan" 2>/dev/null)"
      head -8 "$t/stack" 2>/dev/null
    done
  done
  echo w > /proc/sysrq-trigger 2>/dev/null
}

# watchdog_start NAME LIMIT : a stuck report on the console 10 s before LIMIT runs out.
watchdog_start() {
  ( sleep $(($2 > 30 ? $2 - 10 : $2)); stuck_report "$1" ) > /dev/console 2>&1 &
  watch_pid=$!
}

# watchdog_stop NAME LIMIT : stops the watchdog; reads the step's exit status into rc.
watchdog_stop() {
  kill "$watch_pid" 2>/dev/null
  rc=$(cat /tmp/rc)
  [ "$rc" = 143 ] || [ "$rc" = 137 ] && echo "=== [$1] TIMEOUT after $2 s"
}

# kernel_news NAME : after a step, the clock source in use and the kernel's messages since the
# previous call that bear on timing (clock source changes, watchdogs, stalls, lockups).
kernel_news() {
  rec "FACT clocksource.$1 $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null)"
  dmesg > /tmp/dmesg.now
  seen=$(cat /tmp/dmesg.seen 2>/dev/null || echo 0)
  tail -n +$((seen + 1)) /tmp/dmesg.now |
    grep -iE 'clocksource|tsc|watchdog|stall|lockup|hung|blocked for' | head -20 |
    sed 's/^\[[ 0-9.]*\] //' | while read -r l; do rec "FACT kernel.$1 $l"; done
  wc -l < /tmp/dmesg.now > /tmp/dmesg.seen
}

# run_step NAME TIMEOUT CMD... : runs CMD with a timeout; output to the console and the host.
run_step() {
  name=$1; t=$2; shift 2
  rec "BEGIN $name"
  echo "=== [$name] $*"
  t0=$(now)
  watchdog_start "$name" "$t"
  { timeout -k 5 "$t" "$@"; echo $? > /tmp/rc; } 2>&1 | tee "/tmp/out.$name"
  watchdog_stop "$name" "$t"
  sendfile "out.$name" "/tmp/out.$name"
  [ -f "/tmp/json.$name" ] && sendfile "json.$name" "/tmp/json.$name"
  kernel_news "$name"
  rec "END $name rc=$rc secs=$(secs_since "$t0")"
  echo "=== [$name] rc=$rc"
}

# Largest VmHWM (KiB) of the processes running EXE, sampled every second into FILE (shell
# builtins only: forking a helper per process is slow under single-stepping TCG).
rss_sampler() { # EXE FILE
  max=0
  while :; do
    for p in /proc/[0-9]*; do
      [ "$p/exe" -ef "$1" ] || continue
      while read -r k v _; do
        if [ "$k" = VmHWM: ]; then
          [ "$v" -gt "$max" ] && { max=$v; echo "$max" > "$2"; }
          break
        fi
      done < "$p/status" 2>/dev/null
    done
    sleep 1
  done
}

# Per-CPU busy ticks (user+nice+system) from /proc/stat, "cpuN ticks" per line.
cpu_ticks() { awk '/^cpu[0-9]/ { print $1, $2 + $3 + $4 }' /proc/stat; }

# hotadd_step NAME TIMEOUT NEW SETTLE CYCLES CMD... : CMD (the harness) runs in the
# background; after SETTLE seconds the host is told to add NEW vCPUs; each one that appears
# is brought online; then every added CPU goes offline and online CYCLES times.
hotadd_step() {
  name=$1; t=$2; new=$3; settle=$4; cycles=$5; shift 5
  rec "BEGIN $name"
  echo "=== [$name] hot-add $new vCPUs during: $*"
  t0=$(now)
  cpu_ticks > /tmp/ticks0
  initial=$(cpu_list present)
  before=" $(for d in /sys/devices/system/cpu/cpu[0-9]*; do printf '%s ' "${d##*/cpu}"; done)"
  rss_sampler /payload/bin/harness "/tmp/rss.$name" &
  rss_pid=$!
  ( timeout -k 5 "$t" "$@" > "/tmp/out.$name" 2>&1; echo $? > /tmp/rc ) &
  run_pid=$!
  watchdog_start "$name" "$t"
  sleep "$settle"
  rec "HOTADD READY $new"
  echo "=== [$name] host may add $new vCPUs (present: $initial)"
  added=""
  deadline=$(awk -v a="$(now)" -v n="$new" 'BEGIN { printf "%d", a + 20 + 6 * n }')
  while :; do
    for d in /sys/devices/system/cpu/cpu[0-9]*; do
      c=${d##*/cpu}
      [ -f "$d/online" ] || continue
      case " $added $before " in *" $c "*) continue ;; esac
      if [ "$(cat "$d/online")" = 0 ]; then
        if echo 1 > "$d/online" 2>/dev/null; then r=ok; else r=failed; fi
        added="$added $c"
        rec "CPU online cpu$c $r t=$(secs_since "$t0") online=$(cpu_list online)"
        echo "=== [$name] cpu$c appeared, online: $r"
      fi
    done
    n=$(echo $added | wc -w)
    [ "$n" -ge "$new" ] && break
    if [ "$(awk -v d="$deadline" -v n="$(now)" 'BEGIN { print (n > d) }')" = 1 ]; then
      rec "CPU timeout $n of $new appeared"
      break
    fi
    kill -0 $run_pid 2>/dev/null || { rec "CPU payload-exited $n of $new appeared"; break; }
    usleep 200000
  done
  i=0
  while [ "$i" -lt "$cycles" ] && kill -0 $run_pid 2>/dev/null; do
    for c in $added; do
      f=/sys/devices/system/cpu/cpu$c/online
      r=ok
      echo 0 > "$f" 2>/dev/null || r=busy
      usleep 300000
      echo 1 > "$f" 2>/dev/null || r="$r,online-failed"
      rec "CPU cycle cpu$c $r t=$(secs_since "$t0")"
    done
    i=$((i + 1))
  done
  # Bring back anything the cycles or the harness left offline, then wait for the payload.
  for c in $added; do echo 1 > "/sys/devices/system/cpu/cpu$c/online" 2>/dev/null; done
  wait $run_pid
  watchdog_stop "$name" "$t"
  cpu_ticks > /tmp/ticks1
  kill $rss_pid 2>/dev/null
  rec "FACT rss_kib.$name $(cat "/tmp/rss.$name" 2>/dev/null)"
  rec "FACT online_after.$name $(cpu_list online)"
  awk 'NR == FNR { a[$1] = $2; next } { print "@@ FACT ticks." n " " $1 " " $2 - a[$1] }' n="$name" \
    /tmp/ticks0 /tmp/ticks1 >&3
  cat "/tmp/out.$name"
  sendfile "out.$name" "/tmp/out.$name"
  [ -f "/tmp/json.$name" ] && sendfile "json.$name" "/tmp/json.$name"
  kernel_news "$name"
  rec "END $name rc=$rc secs=$(secs_since "$t0")"
  echo "=== [$name] rc=$rc"
}

# harness_step NAME TIMEOUT HARNESS-ARGS... : a harness run with its RSS and per-CPU ticks.
harness_step() {
  name=$1; shift
  cpu_ticks > /tmp/ticks0
  rss_sampler /payload/bin/harness "/tmp/rss.$name" &
  rss_pid=$!
  run_step "$name" "$@"
  kill $rss_pid 2>/dev/null
  cpu_ticks > /tmp/ticks1
  rec "FACT rss_kib.$name $(cat "/tmp/rss.$name" 2>/dev/null)"
  awk 'NR == FNR { a[$1] = $2; next } { print "@@ FACT ticks." n " " $1 " " $2 - a[$1] }' n="$name" \
    /tmp/ticks0 /tmp/ticks1 >&3
}

dump_acpi() {
  for t in FACP APIC; do sendfile "acpi.$t" "/sys/firmware/acpi/tables/$t"; done
}

echo "=== guest up at $(now) s: $(uname -r), CPUs online $(cpu_list online), possible $(cpu_list possible)"
rec "BOOTED"
facts
. /plan.sh
rec "DONE"
# The host answers once it has read everything before this line: nothing is lost in the
# UART's buffer at power-off.
ask bye || true
exec 3>&-
echo "=== guest done at $(now) s"
sync
poweroff -f
