#!/usr/bin/env bash
# benches/ab.sh RUNS BIN_A BIN_B -- TALLY_ARGS...  — two tally binaries on the same job,
# run alternately (A, B, A, B, ...), so that the machine's drift falls on both alike.
#
#   benches/ab.sh 4 /tmp/tally-old target/release/tally -- \
#       reconcile --data /tmp/tally-bench/data-20m --as-of 2026-11-20T00:00:00Z
#
# Each run writes to its own output folder (`--out` is added: do not pass one) and prints
# wall seconds, user and system CPU seconds, minor page faults (pages the process touched
# for the first time: on this project's VMs each costs a few microseconds of kernel time)
# and peak RSS, from GNU time, and the CPU seconds the hypervisor took from the machine
# meanwhile (steal, /proc/stat: a split run's spill is paid so on some VMs; see
# benches/io-steal.sh). At the end: each binary's runs side by side, and whether
# the two binaries' last outputs are byte-identical (`diff -r`; exit 1 if not).
#
# Environment: AB_DIR  work folder for the outputs (default a fresh temporary folder,
# removed at the end).
set -euo pipefail

die() { echo "ab: $*" >&2; exit 2; }
[[ $# -ge 4 && $4 == "--" ]] || die "usage: benches/ab.sh RUNS BIN_A BIN_B -- TALLY_ARGS..."
runs=$1 a=$2 b=$3
shift 4
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive count, not '$runs'"
for bin in "$a" "$b"; do [[ -x $bin ]] || die "no executable at $bin"; done
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is needed"
for arg in "$@"; do [[ $arg != --out ]] || die "ab.sh picks each run's --out itself"; done

dir=${AB_DIR:-$(mktemp -d)}
[[ -n ${AB_DIR:-} ]] || trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir"

# shellcheck source=benches/steal.sh
source "$(dirname "${BASH_SOURCE[0]}")/steal.sh"

declare -A seen
for ((i = 1; i <= runs; i++)); do
    for side in A B; do
        bin=$a; [[ $side == B ]] && bin=$b
        out="$dir/out-$side"
        rm -rf "$out"
        steal0=$(steal_ticks)
        /usr/bin/time -o "$dir/time" -f "%e %U %S %R %M" "$bin" "$@" --out "$out" \
            >"$dir/stdout-$side" 2>"$dir/log-$side" || die "$side run $i failed: see $dir/log-$side"
        stolen=$(stolen_since "$steal0")
        read -r wall user sys faults peak_kb <"$dir/time"
        printf '%s run %d: %6.2f s wall, %6.2f s user, %5.2f s sys, %5.2f s stolen, %8d faults, %5d MiB peak\n' \
            "$side" "$i" "$wall" "$user" "$sys" "$stolen" "$faults" $((peak_kb / 1024))
        seen[$side]+="$wall s / ${sys} s sys / ${stolen} s stolen / $faults faults / $((peak_kb / 1024)) MiB;  "
    done
done
echo "A ($a): ${seen[A]}"
echo "B ($b): ${seen[B]}"
if diff -r -q "$dir/out-A" "$dir/out-B" >/dev/null; then
    echo "outputs: byte-identical"
else
    echo "outputs: DIFFER (diff -r $dir/out-A $dir/out-B; set AB_DIR to keep them)"
    exit 1
fi
