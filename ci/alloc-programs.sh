#!/usr/bin/env bash
# Runs real programs under LD_PRELOAD of a drop-in malloc and compares them with a run on
# glibc's malloc: python3 (PYTHONMALLOC=malloc, ci/alloc-programs/workload.py), sqlite3 (a few
# thousand inserts and queries), git (init, commits, log, gc, fsck on a small repository with
# fixed dates) and gcc -O2 compiling ci/alloc-programs/cprog (the compiled program's output and
# the generated assembly are compared). Each program's stdout, stderr and exit status must be
# identical between the two runs and the status 0.
#
# Usage: ci/alloc-programs.sh [PRELOAD.so]   (default target/release/libpalloc_preload.so)
# ALLOC_PROGRAMS_KEEP=1 keeps the runs' directories and outputs.
# Prints one PASS/FAIL line per program (a diff after a FAIL) and exits 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
lib=${1:-target/release/libpalloc_preload.so}
if [ ! -f "$lib" ]; then
  echo "alloc-programs: $lib does not exist (build it with 'cargo build --release', or pass a path)" >&2
  exit 2
fi
lib=$(realpath "$lib")
for tool in python3 sqlite3 git gcc; do
  command -v "$tool" >/dev/null || { echo "alloc-programs: $tool is missing (ci/install-deps.sh installs it)" >&2; exit 2; }
done

# ld.so skips a preload it cannot load and still runs the program: check that it loads.
if ! LD_PRELOAD=$lib cat /proc/self/maps 2>/dev/null | grep -qF "$lib"; then
  echo "alloc-programs: LD_PRELOAD=$lib is not loaded by ld.so:" >&2
  LD_PRELOAD=$lib /bin/true 2>&1 | head -3 >&2
  exit 2
fi

work=$(mktemp -d)
# ALLOC_PROGRAMS_KEEP=1 keeps every run's directory and output for a look afterwards.
if [ "${ALLOC_PROGRAMS_KEEP:-0}" = 1 ]; then
  echo "alloc-programs: keeping $work"
else
  trap 'rm -rf "$work"' EXIT
fi
unset LD_PRELOAD
failures=0

# run NAME MODE COMMAND...: runs COMMAND in a fresh directory $work/NAME.MODE (MODE "base" or
# "preload"), saving stdout, stderr and the exit status under $work/NAME.MODE.{out,err,rc}.
run() {
  local name=$1 mode=$2
  shift 2
  local dir=$work/$name.$mode
  mkdir -p "$dir"
  local rc=0
  if [ "$mode" = preload ]; then
    (cd "$dir" && export LD_PRELOAD="$lib" && "$@") >"$dir.out" 2>"$dir.err" || rc=$?
  else
    (cd "$dir" && "$@") >"$dir.out" 2>"$dir.err" || rc=$?
  fi
  echo "$rc" >"$dir.rc"
}

# check NAME COMMAND...: runs COMMAND both ways and compares.
check() {
  local name=$1
  shift
  run "$name" base "$@"
  run "$name" preload "$@"
  local b=$work/$name.base p=$work/$name.preload ok=1
  [ "$(cat "$b.rc")" = 0 ] || ok=0
  [ "$(cat "$p.rc")" = 0 ] || ok=0
  cmp -s "$b.out" "$p.out" || ok=0
  cmp -s "$b.err" "$p.err" || ok=0
  if [ $ok = 1 ]; then
    echo "PASS $name ($(wc -l <"$b.out") lines of output)"
  else
    failures=$((failures + 1))
    echo "FAIL $name: exit status $(cat "$b.rc") on glibc's malloc, $(cat "$p.rc") under $lib"
    diff -u --label "$name stdout (glibc malloc)" --label "$name stdout (preload)" "$b.out" "$p.out" | head -40 || true
    diff -u --label "$name stderr (glibc malloc)" --label "$name stderr (preload)" "$b.err" "$p.err" | head -40 || true
  fi
}

python_workload() {
  PYTHONMALLOC=malloc PYTHONHASHSEED=0 python3 "$root/ci/alloc-programs/workload.py"
}

sqlite_workload() {
  {
    echo "PRAGMA journal_mode=DELETE;"
    echo "CREATE TABLE item(id INTEGER PRIMARY KEY, name TEXT NOT NULL, grp INTEGER, price REAL, note TEXT);"
    echo "CREATE TABLE grp(id INTEGER PRIMARY KEY, label TEXT);"
    echo "BEGIN;"
    for g in $(seq 0 49); do echo "INSERT INTO grp VALUES($g, 'group-$g');"; done
    awk 'BEGIN { s = 12345; for (i = 1; i <= 5000; i++) { s = (s * 1103515245 + 12345) % 2147483648;
         printf "INSERT INTO item(name, grp, price, note) VALUES(%c%s-%d%c, %d, %d.%02d, printf(%c%%.*c%c, %d, %cx%c));\n",
         39, "item", i, 39, s % 50, s % 1000, s % 100, 39, 39, s % 200, 39, 39 } }'
    echo "COMMIT;"
    echo "CREATE INDEX item_grp ON item(grp, price);"
    echo "SELECT count(*), sum(price), max(length(note)) FROM item;"
    echo "SELECT g.label, count(*), round(avg(i.price), 3) FROM item i JOIN grp g ON g.id = i.grp GROUP BY g.id ORDER BY g.id;"
    echo "SELECT name, price FROM item WHERE grp = 7 ORDER BY price DESC, id LIMIT 20;"
    echo "SELECT count(*) FROM item WHERE name LIKE 'item-1%' AND note GLOB 'x*';"
    echo "UPDATE item SET note = upper(name) || note WHERE id % 3 = 0;"
    echo "DELETE FROM item WHERE id % 5 = 0;"
    echo "SELECT count(*), sum(length(note)), group_concat(id, ',') FILTER (WHERE id < 60) FROM item;"
    echo "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2000) SELECT sum(x * x) FROM n;"
    echo "VACUUM;"
    echo "PRAGMA integrity_check;"
    echo "SELECT grp, count(*) FROM item GROUP BY grp HAVING count(*) > 80 ORDER BY 2 DESC, 1;"
  } >items.sql
  sqlite3 -batch items.db <items.sql
}

git_workload() {
  export HOME=$PWD GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
  export GIT_AUTHOR_NAME="A U Thor" GIT_AUTHOR_EMAIL=author@example.com
  export GIT_COMMITTER_NAME="C O Mitter" GIT_COMMITTER_EMAIL=committer@example.com
  git init -q -b main repo
  cd repo
  git config pack.threads 1
  for c in $(seq 1 12); do
    export GIT_AUTHOR_DATE="2026-01-01T00:$(printf %02d "$c"):00Z" GIT_COMMITTER_DATE="2026-01-01T00:$(printf %02d "$c"):30Z"
    for f in $(seq 1 6); do
      mkdir -p "dir$((f % 3))"
      seq "$c" "$((c * f * 50))" | sed "s/^/line $f /" >"dir$((f % 3))/file$f.txt"
    done
    echo "commit $c" >>CHANGES
    git add -A
    git commit -q -m "change $c" -m "touches every file"
  done
  git log --stat --format='%H %an %ad %s' --date=iso-strict
  git gc -q --aggressive
  git fsck --full --strict
  git count-objects -v | grep -E '^(count|in-pack|packs|garbage):'
  git rev-list --all --objects | wc -l
  git show --format=%T -s HEAD~5
  git diff --stat HEAD~6 HEAD
}

gcc_workload() {
  cp "$root"/ci/alloc-programs/cprog/*.[ch] .
  gcc -O2 -Wall -Wextra -Werror -o prog main.c table.c text.c
  gcc -O2 -S main.c table.c text.c
  cat main.s table.s text.s | sha256sum
  env -u LD_PRELOAD ./prog
}

check python3 python_workload
check sqlite3 sqlite_workload
check git git_workload
check gcc gcc_workload

if [ "$failures" -gt 0 ]; then
  echo "alloc-programs: $failures program(s) FAILED under $lib"
  exit 1
fi
echo "alloc-programs: all programs PASS under $lib"
