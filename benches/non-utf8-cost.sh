#!/usr/bin/env bash
# benches/non-utf8-cost.sh SIZE [RUNS] — what one string that is not UTF-8 costs a reconcile.
#
#   benches/non-utf8-cost.sh 10m 3
#
# Copies the bench data root of SIZE (made by benches/bench.sh: $BENCH_DIR/data-SIZE),
# appends a 0xff byte to one `product` value in the middle of the first usage file's first
# row group (a dictionary-encoded column: the Parquet reader refuses that row group at its
# first batch, so tally reads the whole row group again with its strings as bytes), then
# reconciles the clean and the damaged root alternately RUNS times (default 3) with the same
# binary, and prints each run's wall time and peak RSS and the ratio of the medians
# (damaged / clean). The damaged run must reject exactly one more row than the clean one.
#
# Environment: BENCH_DIR (default /tmp/tally-bench; its venv has pyarrow), TALLY (default
# $CARGO_TARGET_DIR or ~/.cache/tally-target, release/tally).
set -euo pipefail
size=${1:?usage: non-utf8-cost.sh SIZE [RUNS]}
runs=${2:-3}
BENCH_DIR=${BENCH_DIR:-/tmp/tally-bench}
TALLY=${TALLY:-${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}/release/tally}
PY="$BENCH_DIR/venv/bin/python"
clean="$BENCH_DIR/data-$size"
[[ -d $clean ]] || { echo "non-utf8-cost: no $clean (run benches/bench.sh $size first)" >&2; exit 2; }
[[ -x $PY ]] || { echo "non-utf8-cost: no $PY (benches/bench.sh makes it)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$clean" "$work/damaged"
file=$(find "$work/damaged/usage" -name '*.parquet' | sort | head -1)
"$PY" - "$file" <<'EOF'
import sys
import pyarrow as pa
import pyarrow.parquet as pq
path = sys.argv[1]
meta = pq.ParquetFile(path).metadata
table = pq.read_table(path)
i = table.schema.get_field_index("product")
values = [v.encode() for v in table.column(i).to_pylist()]
row = meta.row_group(0).num_rows // 2
values[row] += b"\xff"
# A binary array viewed as strings: pyarrow does not check, as some exporters do not.
table = table.set_column(i, "product", pa.array(values, pa.binary()).view(pa.string()))
pq.write_table(table, path, row_group_size=meta.row_group(0).num_rows)
print(f"non-utf8-cost: {path}: row {row} of {meta.num_rows} holds product ...\\xff", file=sys.stderr)
EOF
declare -A times peaks rejected
for ((i = 1; i <= runs; i++)); do
    for side in clean damaged; do
        data=$clean; [[ $side == damaged ]] && data="$work/damaged"
        out="$work/out-$side"
        rm -rf "$out"
        /usr/bin/time -o "$work/time" -f "%e %M" "$TALLY" reconcile --data "$data" \
            --as-of 2026-11-20T00:00:00Z --out "$out" >"$work/stdout" 2>"$work/log" \
            || { echo "non-utf8-cost: $side run failed: $(tail -1 "$work/log")" >&2; exit 1; }
        read -r wall peak_kb <"$work/time"
        printf '%-7s run %d: %6.2f s wall, %5d MiB peak\n' "$side" "$i" "$wall" $((peak_kb / 1024))
        times[$side]+="$wall "
        peaks[$side]=$((peak_kb / 1024))
        rejected[$side]=$(grep -o '[0-9]* rejected rows' "$work/stdout" | cut -d' ' -f1)
    done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mc=$(median "${times[clean]}"); md=$(median "${times[damaged]}")
echo "rejected rows: clean ${rejected[clean]}, damaged ${rejected[damaged]}"
(( rejected[damaged] == rejected[clean] + 1 )) || { echo "non-utf8-cost: the damaged run should reject one more row" >&2; exit 1; }
awk -v c="$mc" -v d="$md" 'BEGIN {printf "median wall: clean %.2f s, damaged %.2f s: damaged / clean %.3f\n", c, d, d / c}'
echo "last peaks: clean ${peaks[clean]} MiB, damaged ${peaks[damaged]} MiB"
