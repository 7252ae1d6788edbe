#!/usr/bin/env bash
# benches/memory-costs.sh — the working memory the group count is planned with
# (src/route.rs), measured by peak RSS on data written for it (benches/odd_shapes.py),
# each as a difference between two runs of the same command in the same run of the script
# (benches/README.md, "Profiles and experiments (2026-12-07, 10:31: the planned memory
# costs measured)"):
#
#   ids    ROWS usage and ROWS ledger rows with event and entry ids ID_BYTES long, against
#          the same rows with ids SHORT_BYTES long: the peak's growth per id byte by the
#          footers (what `route::extra_id_cost` counts), in one group (`--groups 1`; planned
#          at ID_BYTE_COST) and in SPLIT_GROUPS groups (times SPLIT_GROUPS, as a group holds a
#          SPLIT_GROUPS-th of the ids; planned at ID_BYTE_COST x SPLIT_ID_FACTOR: its ids
#          and the next group's, read back meanwhile)
#   plans  PLAN_ACCOUNTS accounts with an allocation and a grant each (two plan rows) and
#          no usage, against 1,000 such accounts: the peak's growth per plan row (planned
#          at RowCosts::plan_row of RECONCILE_ROW_COSTS and CLOSE_ROW_COSTS)
#   months the PLAN_ACCOUNTS accounts with an allocation for each of MONTHS months up to
#          November, against one: the peak's growth per allocation a reconcile does not
#          cover (an account's covered periods are held in a vector of their number,
#          window::covered_periods; also planned at the plan row)
#
# Reconcile at 2026-11-20, close at 2026-12-01. Prints each run's peak and the costs per
# byte and per row, beside the planned ones read from src/route.rs. Small sizes measure the
# fixed costs more than these (ROWS=20000 gives 12.7 bytes an id byte of a group).
# Environment: TALLY (default $CARGO_TARGET_DIR or ~/.cache/tally-target, release/tally),
# BENCH_DIR (default /tmp/tally-bench: its venv gets pyarrow), ROWS (default 100000),
# ID_BYTES (default 1000), SHORT_BYTES (default 20), ACCOUNTS (default 1000: the ids
# data's), SPLIT_GROUPS (default 8), PLAN_ACCOUNTS (default 250000), MONTHS (default 12).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TALLY=${TALLY:-${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}/release/tally}
BENCH_DIR=${BENCH_DIR:-/tmp/tally-bench}
ROWS=${ROWS:-100000} ID_BYTES=${ID_BYTES:-1000} SHORT_BYTES=${SHORT_BYTES:-20}
ACCOUNTS=${ACCOUNTS:-1000} SPLIT_GROUPS=${SPLIT_GROUPS:-8} PLAN_ACCOUNTS=${PLAN_ACCOUNTS:-250000}
MONTHS=${MONTHS:-12}
WORK="$BENCH_DIR/memory-costs"
VENV="$BENCH_DIR/venv"
[[ -x $TALLY ]] || { echo "memory-costs: no tally binary at $TALLY" >&2; exit 2; }
[[ -x /usr/bin/time ]] || { echo "memory-costs: /usr/bin/time (GNU time) is needed" >&2; exit 2; }
((SHORT_BYTES >= 10 && ID_BYTES > SHORT_BYTES && PLAN_ACCOUNTS > 1000 && MONTHS > 1)) ||
    { echo "memory-costs: needs 10 <= SHORT_BYTES < ID_BYTES, PLAN_ACCOUNTS > 1000 and MONTHS > 1" >&2; exit 2; }
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import pyarrow' 2>/dev/null || "$VENV/bin/pip" install -q pyarrow
mkdir -p "$WORK"
# The planned costs, from the source beside this script (src/route.rs).
ROUTE="$HERE/../src/route.rs"
constant() { sed -n "s/^pub const $1: u64 = \([0-9_]*\);/\1/p" "$ROUTE" | tr -d _; }
plan_row() { sed -n "/^pub const $1: RowCosts/,/^}/s/^ *plan_row: \([0-9_]*\),/\1/p" "$ROUTE" | tr -d _; }
ID_BYTE_COST=$(constant ID_BYTE_COST) SPLIT_ID_FACTOR=$(constant SPLIT_ID_FACTOR)
RECONCILE_PLAN_ROW=$(plan_row RECONCILE_ROW_COSTS) CLOSE_PLAN_ROW=$(plan_row CLOSE_ROW_COSTS)
[[ -n $ID_BYTE_COST && -n $SPLIT_ID_FACTOR && -n $RECONCILE_PLAN_ROW && -n $CLOSE_PLAN_ROW ]] ||
    { echo "memory-costs: the planned costs are not found in $ROUTE" >&2; exit 2; }

make_data() { "$VENV/bin/python" "$HERE/odd_shapes.py" "$@"; }
as_of() { [[ $1 == close ]] && echo 2026-12-01T00:00:00Z || echo 2026-11-20T00:00:00Z; }
# measure LABEL COMMAND ROOT FLAGS...: runs tally COMMAND over ROOT, prints "LABEL peak_mib",
# and keeps the peak in bytes in $peak.
measure() {
    local label=$1 command=$2 root=$3
    shift 3
    rm -rf "$WORK/out"
    /usr/bin/time -o "$WORK/time" -f "%M" "$TALLY" "$command" --data "$root" \
        --as-of "$(as_of "$command")" --out "$WORK/out" "$@" >/dev/null 2>"$WORK/log" ||
        { echo "memory-costs: $label failed: see $WORK/log" >&2; exit 1; }
    peak=$(($(cat "$WORK/time") * 1024))
    printf '%-58s %7d MiB\n' "$label" $((peak >> 20))
}
# per A B N: (A - B) / N, one decimal.
per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.1f", (a - b) / n }'; }

short_ids=$(make_data ids "$WORK/ids-short" "$ROWS" "$SHORT_BYTES" "$ACCOUNTS")
long_ids=$(make_data ids "$WORK/ids-long" "$ROWS" "$ID_BYTES" "$ACCOUNTS")
extra=$((long_ids - short_ids))
echo "ids: $ROWS + $ROWS rows; id bytes by the footers $short_ids ($SHORT_BYTES-byte ids) and $long_ids ($ID_BYTES-byte ids)"
for command in reconcile close; do
    measure "$command, $SHORT_BYTES-byte ids, one group" "$command" "$WORK/ids-short" --groups 1
    base=$peak
    measure "$command, $ID_BYTES-byte ids, one group" "$command" "$WORK/ids-long" --groups 1
    echo "  $command, one group: $(per "$peak" "$base" "$extra") bytes of peak an id byte (planned: $ID_BYTE_COST)"
    measure "$command, $SHORT_BYTES-byte ids, $SPLIT_GROUPS groups" "$command" "$WORK/ids-short" --groups "$SPLIT_GROUPS"
    base=$peak
    measure "$command, $ID_BYTES-byte ids, $SPLIT_GROUPS groups" "$command" "$WORK/ids-long" --groups "$SPLIT_GROUPS"
    echo "  $command, $SPLIT_GROUPS groups: $(per $((peak * SPLIT_GROUPS)) $((base * SPLIT_GROUPS)) "$extra") bytes of peak an id byte of a group (planned: $((ID_BYTE_COST * SPLIT_ID_FACTOR)))"
done

make_data plans "$WORK/plans-few" 1000
make_data plans "$WORK/plans-many" "$PLAN_ACCOUNTS"
plan_rows=$((2 * (PLAN_ACCOUNTS - 1000)))
echo "plans: 1000 and $PLAN_ACCOUNTS accounts, an allocation and a grant each, no usage"
for command in reconcile close; do
    measure "$command, 1000 accounts" "$command" "$WORK/plans-few"
    base=$peak
    measure "$command, $PLAN_ACCOUNTS accounts" "$command" "$WORK/plans-many"
    planned=$RECONCILE_PLAN_ROW
    [[ $command == close ]] && planned=$CLOSE_PLAN_ROW
    echo "  $command: $(per "$peak" "$base" "$plan_rows") bytes of peak a plan row (planned: $planned)"
    [[ $command == reconcile ]] && one_month=$peak
done

make_data plans "$WORK/plans-months" "$PLAN_ACCOUNTS" "$MONTHS"
uncovered=$((PLAN_ACCOUNTS * (MONTHS - 1)))
echo "months: $PLAN_ACCOUNTS accounts with $MONTHS monthly allocations each, against one"
measure "reconcile, $MONTHS months" reconcile "$WORK/plans-months"
echo "  reconcile: $(per "$peak" "$one_month" "$uncovered") bytes of peak an allocation not covered (planned: $RECONCILE_PLAN_ROW)"
