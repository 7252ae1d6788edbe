#!/usr/bin/env bash
# benches/duckdb-temp-size.sh DATA — the most disk DuckDB's temporary files take while the
# bench's DuckDB reconcile (benches/duckdb_run.py, reconcile.sql) runs on DATA, a data set
# of benches/bench.sh (its rate-card and plan CSVs beside it: DATA.rates.csv,
# DATA.plans.csv, which bench.sh writes). It samples the temporary folder's size with `du`
# once a second and prints the largest, in bytes and per event. This is how the scratch
# budget of bench.sh's disk check (DUCKDB_TMP_BYTES_PER_EVENT) was measured, e.g.:
#   benches/duckdb-temp-size.sh /tmp/tally-bench/data-100m
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 DATA" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
data=${1%/}
py=${BENCH_DIR:-/tmp/tally-bench}/venv/bin/python
[[ -x $py ]] || { echo "no DuckDB venv at $py: run benches/bench.sh 1m once" >&2; exit 2; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$py" "$here/duckdb_run.py" "$here/reconcile.sql" "$data" "$data.rates.csv" "$data.plans.csv" \
    "$scratch/out" 2026-11-20T00:00:00Z 900 >"$scratch/log" 2>&1 &
pid=$!
largest=0
while kill -0 "$pid" 2>/dev/null; do
    # No folder yet (DuckDB makes it when it first spills): 0.
    kb=$(du -sk "$scratch/out.tmp" 2>/dev/null | awk '{print $1}') || kb=0
    if (( ${kb:-0} > largest )); then largest=${kb:-0}; fi
    sleep 1
done
wait "$pid" || { tail -c 500 "$scratch/log" >&2; exit 1; }
events=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["counts"]["events"])' \
    "$data/generate.json" 2>/dev/null || echo 0)
python3 -c 'import sys
kb, events = int(sys.argv[1]), int(sys.argv[2])
print(f"DuckDB temporary files: at most {kb * 1024} bytes"
      + (f", {kb * 1024 / events:.0f} bytes an event ({events} events)" if events else ""))' \
    "$largest" "$events"
