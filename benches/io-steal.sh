#!/usr/bin/env bash
# benches/io-steal.sh [GIB] — what direct (O_DIRECT) disk I/O costs this machine in CPU
# taken by the hypervisor ("steal", /proc/stat), with the cores idle and with every core
# busy. A split run writes its spill and reads it back with O_DIRECT while its cores are
# busy; on a VM whose host does the disk's work on the cores the guest runs on, each GiB
# is then paid in stolen CPU as well as in device time (the bench's "stolen s" column).
#
# It writes GIB GiB (default 1) to a file in $TMPDIR (where tally's spill goes) with `dd
# oflag=direct` in 1 MiB blocks (a spill file's write buffer at 4 or more groups), reads it
# back with `iflag=direct`, each once with the cores idle and once beside one busy loop a
# core (`yes`), and prints wall, throughput and stolen CPU-seconds per GiB.
set -euo pipefail

GIB=${1:-1}
[[ $GIB =~ ^[1-9][0-9]*$ ]] || { echo "io-steal.sh: GIB must be a whole number of GiB, e.g. 1" >&2; exit 2; }
DIR=${TMPDIR:-/tmp}
FILE=$(mktemp "$DIR/io-steal.XXXXXX")
HZ=$(getconf CLK_TCK)
CORES=$(nproc)
BUSY=()
cleanup() {
    if ((${#BUSY[@]})); then kill "${BUSY[@]}" 2>/dev/null || true; fi
    rm -f "$FILE"
}
trap cleanup EXIT

# shellcheck source=benches/steal.sh
source "$(dirname "${BASH_SOURCE[0]}")/steal.sh"

# measure LABEL DD-ARGS... -> one line: wall, MB/s, stolen CPU-s per GiB
measure() {
    local label=$1 s0 s1 t0 t1; shift
    sync
    s0=$(steal_ticks) t0=$(date +%s.%N)
    dd "$@" bs=1M count=$((GIB * 1024)) status=none
    t1=$(date +%s.%N) s1=$(steal_ticks)
    awk -v l="$label" -v t0="$t0" -v t1="$t1" -v s=$((s1 - s0)) -v hz="$HZ" -v g="$GIB" 'BEGIN {
        w = t1 - t0
        printf "| %s | %.2f | %.0f | %.2f |\n", l, w, g * 1073.741824 / w, s / hz / g
    }'
}

start_busy() {
    local i
    for ((i = 0; i < CORES; i++)); do
        yes >/dev/null &
        BUSY+=($!)
    done
    sleep 0.5
}

stop_busy() {
    kill "${BUSY[@]}" 2>/dev/null || true
    wait "${BUSY[@]}" 2>/dev/null || true
    BUSY=()
    sleep 1
}

echo "$CORES cores; $GIB GiB in 1 MiB blocks to $DIR ($(df -h --output=source "$DIR" | tail -1)); $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "| direct I/O | wall s | MB/s | stolen CPU-s a GiB |"
echo "|---|---:|---:|---:|"
measure "write, cores idle" if=/dev/zero of="$FILE" oflag=direct
measure "read, cores idle" if="$FILE" of=/dev/null iflag=direct
start_busy
measure "write, every core busy" if=/dev/zero of="$FILE" oflag=direct
measure "read, every core busy" if="$FILE" of=/dev/null iflag=direct
stop_busy
