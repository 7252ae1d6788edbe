#!/usr/bin/env bash
# benches/spill-size.sh TALLY OUT ARGS... — run `TALLY reconcile --out OUT ARGS...` with a
# private TMPDIR and report its wall time, peak RSS and the largest size its spill folder
# reached (sampled every 50 ms with `du -sb`), then its route and load-and-spill stages.
# This is how the spill sizes in README "Scaling" and benches/README were measured, and
# the alternating A/B runs of two binaries (run it for each in turn), e.g.:
#   benches/spill-size.sh ~/.cache/tally-target/release/tally /tmp/o100 \
#       --data /tmp/tally-bench/data-100m --as-of 2026-11-20T00:00:00Z
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 TALLY OUT ARGS..." >&2; exit 2; }
tally=$1 out=$2
shift 2
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/tmp"
rm -rf "$out"
(
    largest=0
    while [[ ! -e "$scratch/done" ]]; do
        size=$(du -sb "$scratch/tmp" 2>/dev/null | cut -f1)
        (( ${size:-0} > largest )) && largest=$size
        echo "$largest" > "$scratch/largest"
        sleep 0.05
    done
) &
sampler=$!
status=0
TMPDIR="$scratch/tmp" /usr/bin/time -f "%e s wall, %M KB peak RSS, %U s user, %S s sys" \
    "$tally" reconcile --out "$out" --log-format json "$@" 2>"$out.log" >/dev/null || status=$?
touch "$scratch/done"
wait "$sampler"
echo "$(tail -1 "$out.log"), spill folder at most $(cat "$scratch/largest") bytes"
grep -o '"stage":"\(route\|load and spill\)"[^}]*' "$out.log" || true
exit "$status"
