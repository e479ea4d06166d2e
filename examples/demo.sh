#!/usr/bin/env bash
# pmig's main job, end to end: start a program under pmig, checkpoint it (it exits), and
# resume it from the image in another directory, where it goes on from the next step.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tests/deps.sh --demo   # gcc, for the example program
cargo build --workspace --quiet
bin=${CARGO_TARGET_DIR:-$root/target}/debug
work=$(mktemp -d /tmp/pmig-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
gcc -O1 -o "$work/counter" examples/counter.c

echo "== 1. start ./counter under pmig-run (it prints a step every 200 ms)"
{ "$bin/pmig-run" --exit --image "$work/counter.pmig" "$work/counter" 20 & echo $! > "$work/pid"; wait; } \
    | sed 's/^/   [first run] /' &
sleep 1.5
pid=$(cat "$work/pid")
echo "== 2. checkpoint it: kill -USR2 $pid (with --exit, it stops once the image is written)"
kill -USR2 "$pid"
wait
ls -l "$work/counter.pmig" | sed 's/^/   /'
echo "== 3. what the image holds: pmig-resume --inspect"
"$bin/pmig-resume" --inspect "$work/counter.pmig" | sed -n '1,8p' | sed 's/^/   /'
echo "== 4. resume it in another directory: it goes on from the next step"
mkdir -p "$work/elsewhere"
cd "$work/elsewhere"
"$bin/pmig-resume" "$work/counter.pmig" | sed 's/^/   [resumed]   /'
echo "== done: the resumed program finished with status ${PIPESTATUS[0]}"
