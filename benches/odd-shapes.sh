#!/usr/bin/env bash
# benches/odd-shapes.sh — costs that grow with the shape of the input, not its rows, each
# against a baseline measured in the same run (benches/README.md, "Profiles and experiments
# (2026-12-05, later morning: odd input shapes)"):
#
#   grants     one account-period, EVENTS events and GRANTS grants usable by none of them
#              (each event passes them all), against the same events with 1 grant
#   row groups ROWS usage and ROWS ledger rows one row a row group, against the same rows
#              in one row group, and against `tally scan` of the same files
#   files      FILES usage and FILES ledger rows one row a file, against the same rows in
#              one file each: the peak's growth per file (what a file costs beyond its
#              rows; past load::MAX_KEPT_FOOTERS files a footer is read again, not kept;
#              pipeline::BYTES_PER_FILE); and a close run again over its own folder (nothing
#              to do: the inputs' fingerprint and the comparison with the earlier manifest,
#              whose cost grows with the files), against the same over the one-file root
#   allocations one account's allocation row COPIES times (every copy overlaps every other:
#              all rejected, overlapping_period, each naming its first overlap), against 1
#
# Prints wall seconds and peak RSS of each run and the ratios. Environment: TALLY (default
# $CARGO_TARGET_DIR or ~/.cache/tally-target, release/tally), BENCH_DIR (default
# /tmp/tally-bench: its venv gets pyarrow), EVENTS and GRANTS (default 100000 each), ROWS
# (default 100000), FILES (default 20000), COPIES (default 100000).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TALLY=${TALLY:-${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}/release/tally}
BENCH_DIR=${BENCH_DIR:-/tmp/tally-bench}
EVENTS=${EVENTS:-100000} GRANTS=${GRANTS:-100000} ROWS=${ROWS:-100000} FILES=${FILES:-20000}
COPIES=${COPIES:-100000}
WORK="$BENCH_DIR/odd-shapes"
VENV="$BENCH_DIR/venv"
[[ -x $TALLY ]] || { echo "odd-shapes: no tally binary at $TALLY" >&2; exit 2; }
[[ -x /usr/bin/time ]] || { echo "odd-shapes: /usr/bin/time (GNU time) is needed" >&2; exit 2; }
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import pyarrow' 2>/dev/null || "$VENV/bin/pip" install -q pyarrow
mkdir -p "$WORK"

make() { "$VENV/bin/python" "$HERE/odd_shapes.py" "$@"; }
# measure LABEL -- COMMAND...: prints "LABEL wall_s peak_mib" and keeps them in $wall $peak.
measure() {
    local label=$1; shift 2
    rm -rf "$WORK/out"
    /usr/bin/time -o "$WORK/time" -f "%e %M" "$@" >/dev/null 2>"$WORK/log" ||
        { echo "odd-shapes: $label failed: see $WORK/log" >&2; exit 1; }
    read -r wall peak_kb <"$WORK/time"
    peak=$((peak_kb / 1024))
    printf '%-44s %8.2f s %7d MiB\n' "$label" "$wall" "$peak"
}
# The reconcile of data root $1 (more flags after it), as a command line for measure.
reconcile() { RUN=("$TALLY" reconcile --data "$1" --as-of 2026-11-20T00:00:00Z --out "$WORK/out" "${@:2}"); }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b > 0 ? a / b : 0) }'; }

make grants "$WORK/grants-1" "$EVENTS" 1
make grants "$WORK/grants-many" "$EVENTS" "$GRANTS"
reconcile "$WORK/grants-1"
measure "reconcile, $EVENTS events, 1 grant" -- "${RUN[@]}"
base=$wall
reconcile "$WORK/grants-many"
measure "reconcile, $EVENTS events, $GRANTS grants" -- "${RUN[@]}"
echo "grants: $(ratio "$wall" "$base")x the time of 1 grant"

make flat "$WORK/flat" "$ROWS"
make rowgroups "$WORK/rowgroups" "$ROWS"
reconcile "$WORK/flat" --memory-budget 128MiB
measure "reconcile, $ROWS + $ROWS rows, one row group" -- "${RUN[@]}"
flat_peak=$peak
measure "scan, one row a row group" -- "$TALLY" scan --data "$WORK/rowgroups"
scan_peak=$peak scan_wall=$wall
reconcile "$WORK/rowgroups" --memory-budget 128MiB
measure "reconcile, one row a row group" -- "${RUN[@]}"
echo "row groups: peak $(ratio "$peak" "$flat_peak")x the one-row-group run's, $(ratio "$peak" "$scan_peak")x the scan's; time $(ratio "$wall" "$scan_wall")x the scan's"

make flat "$WORK/files-flat" "$FILES"
make files "$WORK/files" "$FILES"
reconcile "$WORK/files-flat" --memory-budget 128MiB
measure "reconcile, $FILES + $FILES rows, one file each" -- "${RUN[@]}"
one_file_peak=$peak
reconcile "$WORK/files" --memory-budget 128MiB
measure "reconcile, one row a file" -- "${RUN[@]}"
per_file_kib=$(awk -v p="$peak" -v b="$one_file_peak" -v n="$FILES" 'BEGIN { printf "%.1f", (p - b) * 1024 / (2 * n) }')
echo "files: peak $(ratio "$peak" "$one_file_peak")x the one-file run's: ${per_file_kib} KiB more a file"

# A close, then the same close again over its folder: the second finds nothing to do.
close_again() {
    local root=$1 label=$2 out="$WORK/close-again"
    rm -rf "$out"
    "$TALLY" close --data "$root" --as-of 2026-12-01T00:00:00Z --out "$out" >/dev/null 2>&1 ||
        { echo "odd-shapes: the close of $root failed" >&2; exit 1; }
    measure "$label" -- "$TALLY" close --data "$root" --as-of 2026-12-01T00:00:00Z --out "$out"
}
close_again "$WORK/files-flat" "close again (nothing to do), one file each"
again_base=$wall
close_again "$WORK/files" "close again (nothing to do), one row a file"
per_file_us=$(awk -v w="$wall" -v b="$again_base" -v n="$FILES" 'BEGIN { printf "%.1f", (w - b) * 1e6 / (2 * n) }')
echo "files: a close run again over its folder: $wall s against $again_base s for the one-file root, ${per_file_us} us more a file"

make allocations "$WORK/allocations-1" 1
make allocations "$WORK/allocations-many" "$COPIES"
reconcile "$WORK/allocations-1"
measure "reconcile, 1 allocation" -- "${RUN[@]}"
base=$wall
reconcile "$WORK/allocations-many"
measure "reconcile, the allocation $COPIES times" -- "${RUN[@]}"
echo "allocations: $COPIES copies of one allocation row: $wall s against $base s for one"
