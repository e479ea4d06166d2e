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
