#!/usr/bin/env bash
# benches/instructions.sh BIN... — instructions, not seconds: each tally binary's 1m close
# forced into 3 groups (so that its billed events and invoice lines go through run files)
# and 1m reconcile in 3 groups (the light pass, the spill and its read-back), counted by
# valgrind's callgrind. Counts repeat from run to run where this VM's wall times move by
# 1.6x from hour to hour, so a change of a few percent can be told from none.
#
#   benches/instructions.sh /tmp/tally-before target/release/tally
#
# Prints, per binary and job: the whole run's instructions and those of the run files'
# functions (inclusive: the merges, `runs::for_each_chunk`; the writing, `runs::write_run`;
# a billed event's and an invoice line's decode), then whether every binary's outputs are
# byte-identical to the first's (exit 1 if not). Under valgrind sha256 runs without the
# CPU's SHA extensions, so its share of a run is inflated: compare binaries, not shares.
#
# Environment: BENCH_DIR  where benches/bench.sh keeps its data (default /tmp/tally-bench;
# the 1m data set is made by `benches/bench.sh 1m`). Needs valgrind (Debian: apt install
# valgrind). About two minutes per binary and job.
set -euo pipefail

die() { echo "instructions: $*" >&2; exit 2; }
[[ $# -ge 1 ]] || die "usage: benches/instructions.sh BIN..."
command -v valgrind >/dev/null || die "valgrind is needed (Debian: apt install valgrind)"
command -v callgrind_annotate >/dev/null || die "callgrind_annotate is needed (it comes with valgrind)"
BENCH_DIR=${BENCH_DIR:-/tmp/tally-bench}
data="$BENCH_DIR/data-1m"
[[ -f $data/generate.json ]] || die "no 1m data at $data (make it with benches/bench.sh 1m)"
for bin in "$@"; do [[ -x $bin ]] || die "no executable at $bin"; done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# count LABEL BIN JOB ARGS... -> prints the job's figures; its outputs stay in $work/LABEL-JOB
count() {
    local label=$1 bin=$2 job=$3; shift 3
    local out="$work/$label-$job" profile="$work/$label-$job.callgrind"
    valgrind --tool=callgrind --callgrind-out-file="$profile" "$bin" "$job" --data "$data" \
        --out "$out" --groups 3 --log-format json "$@" >/dev/null 2>"$work/$label-$job.log" \
        || [[ $? -eq 1 ]] || die "$bin $job failed; see its log (kept only while this runs)"
    local total
    total=$(awk '/^summary:/ {print $2}' "$profile")
    printf '%s %s: %s instructions' "$label" "$job" "$total"
    callgrind_annotate --inclusive=yes --threshold=100 "$profile" 2>/dev/null | awk '
        /tally::runs::for_each_chunk \[/ {m = $1}
        /tally::runs::write_run \[/ {w = $1}
        /BilledEventRow as tally::runs::Keyed>::decode \[/ {b = $1}
        /AccountLine as tally::runs::Keyed>::decode \[/ {l = $1}
        END {
            if (m != "") printf "; merges %s", m
            if (w != "") printf "; run-file writing %s", w
            if (b != "") printf "; billed-event decode %s", b
            if (l != "") printf "; invoice-line decode %s", l
            printf "\n"
        }'
}

i=0
for bin in "$@"; do
    i=$((i + 1))
    echo "binary $i: $bin"
    count "$i" "$bin" close --as-of 2026-12-01T00:00:00Z
    count "$i" "$bin" reconcile --as-of 2026-11-20T00:00:00Z
done

same=0
for ((j = 2; j <= i; j++)); do
    for job in close reconcile; do
        if diff -r "$work/1-$job" "$work/$j-$job" >/dev/null; then
            echo "binary $j $job: outputs byte-identical to binary 1's"
        else
            echo "binary $j $job: outputs DIFFER from binary 1's"
            same=1
        fi
    done
done
exit "$same"
