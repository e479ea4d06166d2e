#!/usr/bin/env bash
# Benchmarks: checkpoint throughput, restore time, image size and runtime overhead, each
# printed next to a baseline measured in the same run on the same machine and disk.
#   examples/bench.sh [MIB ...]     (default: 256 1024 4096)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --workspace --release --quiet
bin=${CARGO_TARGET_DIR:-$root/target}/release
sizes=("${@:-256}")
[ $# -gt 0 ] || sizes=(256 1024 4096)
work=$(mktemp -d "${TMPDIR:-/tmp}/pmig-bench.XXXXXX")
trap 'pkill -f "$work/" 2>/dev/null || true; rm -rf "$work"' EXIT
gcc -O2 -o "$work/mem" examples/bench_mem.c
gcc -O2 -o "$work/openclose" examples/openclose.c
gcc -O2 -o "$work/memcpy" examples/bench_memcpy.c
gcc -O2 -o "$work/live" examples/bench_live.c
now() { date +%s.%N; }
rate() { awk -v m="$1" -v s="$2" 'BEGIN { printf "%.0f MiB/s", m / s }'; }
ms() { awk -v s="$1" 'BEGIN { printf "%.1f ms", s * 1000 }'; }

echo "pmig benchmarks ($(nproc) cores; image dir $work; root: $([ "$(id -u)" = 0 ] && echo yes || echo no))"

# checkpoint IMAGE [PMIG-RUN OPTIONS] -- [MEM ARGS]: runs the subject under pmig-run --exit,
# checkpoints it once it is ready; sets ck (seconds from the signal until the program has
# exited after a durable image) and size (the image's bytes).
fifo=$work/out
checkpoint() {
    local image=$1 opts=()
    shift
    while [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    rm -f "$fifo" "$image"
    mkfifo "$fifo"
    "$bin/pmig-run" --exit "${opts[@]}" --image "$image" "$work/mem" "$mib" "$@" > "$fifo" 2> "$work/run.err" &
    local pid=$!
    exec 3< "$fifo"
    read -r line <&3
    [ "$line" = ready ] || { echo "unexpected: $line"; exit 1; }
    local t0 t1
    t0=$(now)
    kill -USR2 "$pid"
    wait "$pid"
    t1=$(now)
    exec 3<&-
    ck=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    size=$(stat -c %s "$image")
}

# restore IMAGE [PMIG-RESUME OPTIONS]: sets rs (seconds from starting pmig-resume until the
# program prints its next tick) and line (that tick).
restore() {
    rm -f "$fifo"
    mkfifo "$fifo"
    local t0 t1
    t0=$(now)
    "$bin/pmig-resume" "$@" > "$fifo" 2> "$work/resume.err" &
    local rpid=$!
    exec 3< "$fifo"
    read -r line <&3
    t1=$(now)
    exec 3<&-
    kill -9 "$rpid" 2>/dev/null || true
    wait "$rpid" 2>/dev/null || true
    rs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
}

# One size's figures, each next to its baselines: writing and syncing as many bytes to the
# same disk (dd), copying them in memory (into touched and into fresh memory), reading the
# image once from the page cache.
section() {
    mib=$1
    echo
    echo "== $mib MiB of touched heap"
    local t0 t1
    t0=$(now)
    dd if=/dev/zero of="$work/dd.out" bs=4M count=$((mib / 4)) conv=fsync status=none
    t1=$(now)
    rm -f "$work/dd.out"
    disk=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    read -r _ copy _ fresh _ < <("$work/memcpy" "$mib")
    printf '%-34s %12s   (into fresh memory: %s)\n' "baseline: memcpy" "$(ms "$copy")" "$(ms "$fresh")"
    checkpoint "$work/mem.pmig" --
    printf '%-34s %12s   (baseline dd+fsync of %d MiB: %s)\n' "checkpoint throughput" "$(rate "$mib" "$ck")" "$mib" "$(rate "$mib" "$disk")"
    printf '%-34s %12s   (signal to exit, image durable; %.2fx the dd+fsync of as many bytes)\n' "checkpoint time, --exit" "$(ms "$ck")" \
        "$(awk -v a="$ck" -v b="$disk" -v s="$size" -v m="$mib" 'BEGIN { print a / (b * s / (m * 1048576)) }')"
    printf '%-34s %9.1f MiB   (touched memory: %d MiB)\n' "image size" "$(awk -v s="$size" 'BEGIN { print s / 1048576 }')" "$mib"

    # Restore. Baseline: reading the image once from the page cache (restore's floor).
    t0=$(now)
    cat "$work/mem.pmig" > /dev/null
    t1=$(now)
    readimg=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    restore "$work/mem.pmig"
    lazy=$rs
    restore --eager "$work/mem.pmig"
    eager=$rs
    mode="lazy: memory comes in on first touch"
    [ "$(id -u)" = 0 ] || mode="not root: no lazy restore, every page read in first"
    printf '%-34s %12s   (%s; baseline: reading the image once: %s)\n' "restore to first output" "$(ms "$lazy")" "$mode" "$(ms "$readimg")"
    printf '%-34s %12s   (every page read in first; %.1fx reading the image once; memcpy into fresh memory %s)\n' "restore to first output, --eager" "$(ms "$eager")" \
        "$(awk -v a="$eager" -v b="$readimg" 'BEGIN { print a / b }')" "$(ms "$fresh")"

    # Pause of a checkpoint the program survives (no --exit): the longest time between two of
    # the program's own writes until it sees the new image. Written in the background (the
    # default) and, as the baseline, with the program stopped for the whole write
    # (PMIG_BACKGROUND=0).
    pause() {
        rm -f "$fifo" "$work/pause.pmig"
        mkfifo "$fifo"
        PMIG_BACKGROUND=$1 "$bin/pmig-run" --image "$work/pause.pmig" "$work/mem" "$mib" zeros "$work/pause.pmig" > "$fifo" 2> "$work/run.err" &
        local pid=$!
        exec 3< "$fifo"
        read -r line <&3
        [ "$line" = ready ] || { echo "unexpected: $line"; exit 1; }
        kill -USR2 "$pid"
        read -r line <&3
        exec 3<&-
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        us=${line#pause }
    }
    pause 1
    bg=$us
    pause 0
    printf '%-34s %12s   (stopped for the whole write: %s)\n' "pause of a surviving checkpoint" \
        "$(awk -v u="$bg" 'BEGIN { printf "%.1f ms", u / 1000 }')" "$(awk -v u="$us" 'BEGIN { printf "%.1f ms", u / 1000 }')"

    # Packed images (--compress): checkpoint time to durable, size, restore time, for memory that
    # compresses well (one byte per page) and for random memory.
    for kind in zeros text random; do
        checkpoint "$work/packed.pmig" --compress -- "$kind"
        restore "$work/packed.pmig"
        printf '%-34s %12s   (%s; image %.1f MiB of %d MiB, restore %s)\n' "packed checkpoint ($kind)" "$(ms "$ck")" "$(rate "$mib" "$ck")" \
            "$(awk -v s="$size" 'BEGIN { print s / 1048576 }')" "$mib" "$(ms "$rs")"
    done
    rm -f "$work"/*.pmig
}

for m in "${sizes[@]}"; do
    section "$m"
done

# Moves over loopback (--to), the program writing RATE MiB/s: downtime (its last output on
# the source to its first on the target, from its own timestamps) and total time (signal to
# first output on the target), plain (stopped for the whole copy) and --live (pre-copy);
# baseline: one raw TCP copy of as many bytes over the same link (python3).
echo secret > "$work/token"
move() { # move MIB RATE [--live]: sets down and total (seconds) and rounds
    local mib=$1 rate=$2
    shift 2
    rm -f "$work/recv.out" "$work/recv.err" "$work/src.out" "$work/src.err"
    "$bin/pmig-resume" --listen 127.0.0.1:0 --token-file "$work/token" > "$work/recv.out" 2> "$work/recv.err" &
    local rpid=$! port=
    for _ in $(seq 200); do
        port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$work/recv.err")
        [ -n "$port" ] && break
        sleep 0.02
    done
    # The program's output is a file: the moved program goes on writing it (same machine).
    "$bin/pmig-run" --to "127.0.0.1:$port" --token-file "$work/token" "$@" "$work/live" "$mib" "$rate" > "$work/src.out" 2>> "$work/src.err" &
    local pid=$!
    until grep -q '^ready' "$work/src.out" 2>/dev/null; do sleep 0.02; done
    sleep 0.5
    local t0 n
    t0=$(date +%s%6N)
    kill -USR2 "$pid"
    wait "$pid" || { echo "move failed:"; cat "$work/src.err"; exit 1; }
    n=$(grep -c '^tick' "$work/src.out")
    # Ticks from the target: the first after the signal and after the source exited.
    for _ in $(seq 2000); do
        [ "$(grep -c '^tick' "$work/src.out")" -gt "$n" ] && break
        sleep 0.005
    done
    sleep 0.1
    pkill -f "$work/live" 2>/dev/null || true
    kill "$rpid" 2>/dev/null || true
    wait "$rpid" 2>/dev/null || true
    # Downtime: the longest gap between two ticks after the signal (the source's last, the
    # target's first); total: the signal to the tick after that gap.
    read -r down total < <(awk -v t0="$t0" '/^tick/ { t = $2; if (p && t > t0 && t - p > g) { g = t - p; f = t } p = t }
        END { printf "%f %f\n", g / 1e6, (f - t0) / 1e6 }' "$work/src.out")
    rounds=$(grep -c 'pre-copy round' "$work/src.err" || true)
}
rawcopy() { # rawcopy MIB: sets raw (seconds for one TCP copy of MIB MiB over loopback)
    raw=$(python3 - "$1" <<'PY'
import socket, sys, threading, time
n = int(sys.argv[1]) << 20
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
def sink():
    c, _ = l.accept()
    while c.recv(1 << 20): pass
t = threading.Thread(target=sink); t.start()
s = socket.create_connection(l.getsockname()); buf = bytes(4 << 20); t0 = time.time(); left = n
while left > 0:
    s.sendall(buf[:min(left, len(buf))]); left -= len(buf)
s.close(); t.join(); print(time.time() - t0)
PY
)
}
for m in "${sizes[@]}"; do
    [ "$m" -le 1024 ] || continue
    echo
    echo "== moving $m MiB over loopback"
    rawcopy "$m"
    printf '%-34s %12s   (%s)\n' "baseline: one raw TCP copy" "$(ms "$raw")" "$(rate "$m" "$raw")"
    for r in 16 64; do
        move "$m" "$r"
        printf '%-34s %12s   (total %s)\n' "plain move, writing $r MiB/s: down" "$(ms "$down")" "$(ms "$total")"
        move "$m" "$r" --live
        printf '%-34s %12s   (total %s, %.2fx the raw copy; %s pre-copy round(s))\n' "--live, writing $r MiB/s: down" "$(ms "$down")" "$(ms "$total")" \
            "$(awk -v a="$total" -v b="$raw" 'BEGIN { print a / b }')" "$rounds"
    done
done
echo
# Start cost: 500 fork+exec of /bin/true, plain and under pmig-run (libpmig loads in every
# child and starts its checkpoint thread there). Five runs each, alternated (a shared VM is
# noisy): the ratio is of the fastest runs, the medians follow. `perf stat -e page-faults`
# and `LD_DEBUG=statistics` on one run show where a difference goes.
cat > "$work/fe.c" <<'C'
#include <unistd.h>
#include <sys/wait.h>
int main(void) { for (int i = 0; i < 500; i++) { pid_t p = fork(); if (!p) { execl("/bin/true", "true", (char *)0); _exit(1); } waitpid(p, 0, 0); } return 0; }
C
gcc -O2 -o "$work/fe" "$work/fe.c"
plain=() under=()
for _ in 1 2 3 4 5; do
    t0=$(now); "$work/fe"; t1=$(now)
    plain+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
    t0=$(now); "$bin/pmig-run" --image "$work/fe.pmig" "$work/fe" 2>/dev/null; t1=$(now)
    under+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")
done
nth() { printf '%s\n' "${@:2}" | sort -g | sed -n "${1}p"; }
printf '%-34s %12s   (plain: %s; ratio %s; medians %s and %s)\n' "500 fork+exec under pmig" "$(ms "$(nth 1 "${under[@]}")")" \
    "$(ms "$(nth 1 "${plain[@]}")")" "$(awk -v a="$(nth 1 "${plain[@]}")" -v b="$(nth 1 "${under[@]}")" 'BEGIN { printf "%.2fx", b / a }')" \
    "$(ms "$(nth 3 "${under[@]}")")" "$(ms "$(nth 3 "${plain[@]}")")"

# Runtime overhead: 500k open+close pairs, plain and under pmig-run.
t0=$(now); "$work/openclose" 500000; t1=$(now)
plain=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
t0=$(now); "$bin/pmig-run" "$work/openclose" 500000 2>/dev/null; t1=$(now)
under=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
printf '%-34s %12s   (plain: %s; overhead %s)\n' "500k open+close under pmig" "$(ms "$under")" "$(ms "$plain")" \
    "$(awk -v a="$plain" -v b="$under" 'BEGIN { printf "%+.1f%%", (b - a) / a * 100 }')"
