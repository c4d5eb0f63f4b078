#!/usr/bin/env bash
# Brings every CPU that is offline back online (hotplug tests and harness runs restore CPUs
# themselves; this is the last line of defence). Skips silently where sysfs is not writable.
for f in /sys/devices/system/cpu/cpu[0-9]*/online; do
  [ -w "$f" ] || continue
  if [ "$(cat "$f" 2>/dev/null)" = "0" ]; then
    echo 1 > "$f" 2>/dev/null && echo "restored $(basename "$(dirname "$f")") online"
  fi
done
exit 0
