#!/usr/bin/env bash
# benches/bench.sh SIZE... — tally against a bare scan and against the same reconciliation
# in DuckDB SQL (benches/reconcile.sql), on data made by `tally generate`.
#
#   benches/bench.sh            # 1m
#   benches/bench.sh 1m 10m     # sizes: events, with an optional k/m suffix (100k, 1m, 10m, 2500000)
#
# Environment:
#   BENCH_DIR     work folder: venv, generated data, outputs, logs, results (default /tmp/tally-bench)
#   TALLY         the tally binary (default $CARGO_TARGET_DIR or ~/.cache/tally-target, release/tally)
#   DUCKDB_SPEC   what pip installs (default duckdb==2.0.1, the version the README figures used)
#   BENCH_RUNS    rounds: each tool runs once per round, tools in turn, each round starting one tool later than the one before (default 5; sizes of 50m events and up always run once: a 100m DuckDB run takes 4–5 minutes)
#   BENCH_MEM_HEADROOM_GB   GiB kept free when deciding whether a size fits (default 2)
#   BENCH_MEM_SAFETY        factor on the memory estimate scaled from the 1m run (default 1.25)
#   BENCH_TALLY_CAP_GB      tally's expected peak past its memory budget, GiB (default 5)
#   BENCH_GROUPS  also time `tally reconcile --groups N` for each N listed, e.g. "6 39 256"
#                 (the default group count's trade-off; default: none)
#
# See benches/README.md for what each row measures.
set -euo pipefail

BENCH_DIR=${BENCH_DIR:-/tmp/tally-bench}
TALLY_SRC=${TALLY:-${CARGO_TARGET_DIR:-$HOME/.cache/tally-target}/release/tally}
DUCKDB_SPEC=${DUCKDB_SPEC:-duckdb==2.0.1}
BENCH_RUNS=${BENCH_RUNS:-5}
HEADROOM_GB=${BENCH_MEM_HEADROOM_GB:-2}
RECONCILE_AS_OF=2026-11-20T00:00:00Z
CLOSE_AS_OF=2026-12-01T00:00:00Z
SETTLE_SECONDS=900          # tally's default --settle 15m
SEED=1
RATE=0.01
SAFETY=${BENCH_MEM_SAFETY:-1.25}   # margin on the linear memory estimate (allocator growth, hash-table doubling)
TALLY_CAP_KB=$(( ${BENCH_TALLY_CAP_GB:-5} * 1024 * 1024 ))   # tally's bounded peak (budget + outputs), with margin
# DuckDB's temporary files when it runs out of memory, with margin: a 100m run wrote up to
# 36.4 GB (364 bytes an event; benches/duckdb-temp-size.sh, 2026-12-03). They go under
# out-SIZE/ (benches/duckdb_run.py sets temp_directory), not into the caller's folder.
DUCKDB_TMP_BYTES_PER_EVENT=450

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SQL="$HERE/reconcile.sql"
VENV="$BENCH_DIR/venv"
PY="$VENV/bin/python"

die() { echo "bench: $*" >&2; exit 2; }
log() { echo "bench: $*" >&2; }

[[ -x "$TALLY_SRC" ]] || die "no tally binary at $TALLY_SRC (build it with cargo build --release, or set TALLY)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is needed"
[[ -f "$SQL" ]] || die "missing $SQL"
[[ -f "$HERE/duckdb_run.py" ]] || die "missing $HERE/duckdb_run.py"
mkdir -p "$BENCH_DIR/bin"
# Run a private copy, so that a rebuild during the benchmark cannot mix two binaries in one table.
TALLY="$BENCH_DIR/bin/tally"
cp -p "$TALLY_SRC" "$TALLY.new" && mv "$TALLY.new" "$TALLY"

# ---- sizes -------------------------------------------------------------------------------
# "1m" -> 1000000, "100k" -> 100000, "2500000" -> 2500000
parse_size() {
    local s=${1,,} n
    case "$s" in
        *[0-9]m) n=${s%m}; echo $((n * 1000000)) ;;
        *[0-9]k) n=${s%k}; echo $((n * 1000)) ;;
        *)       echo "$s" ;;
    esac
}

# ---- DuckDB from PyPI, in a venv ---------------------------------------------------------
setup_duckdb() {
    if [[ -x "$PY" ]] && "$PY" -c 'import duckdb' 2>/dev/null; then
        return
    fi
    log "installing $DUCKDB_SPEC into $VENV"
    python3 -m venv "$VENV"
    "$PY" -m pip install --quiet "$DUCKDB_SPEC"
}

# The DuckDB runner: parameters as SQL variables, then the whole script in one connection.
RUNNER="$HERE/duckdb_run.py"

# pricebook.toml -> the rate-card and plan-id CSVs reconcile.sql reads (once per data set,
# untimed).
RATECARD_PY='
import csv, sys, tomllib
from datetime import timezone
book = tomllib.load(open(sys.argv[1], "rb"))
with open(sys.argv[3], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["plan_id"])
    for plan_id in book.get("plans", {}):
        w.writerow([plan_id])
with open(sys.argv[2], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["product", "action", "model", "credits_per_unit", "increment", "minimum", "effective_from"])
    for r in book.get("rates", []):
        t = r["effective_from"]
        if getattr(t, "tzinfo", None) is None:
            t = t.replace(tzinfo=timezone.utc)
        w.writerow([r["product"], r["action"], r.get("model") or "", r["credits_per_unit"],
                    r.get("increment", "1"), r.get("minimum", "0"),
                    t.astimezone(timezone.utc).isoformat()])
'

# ---- data: generated once per size, cached -----------------------------------------------
ensure_data() {   # label events
    local label=$1 events=$2 dir="$BENCH_DIR/data-$1"
    if [[ ! -f "$dir/generate.json" ]]; then
        rm -rf "$dir" "$dir.partial"
        log "generating $label: $events events, $((events / 100)) accounts, seed $SEED, rate $RATE"
        "$TALLY" generate --out "$dir.partial" --accounts $((events / 100)) --events "$events" \
            --seed "$SEED" --discrepancy-rate "$RATE" >&2
        mv "$dir.partial" "$dir"
    fi
    if [[ ! -f "$dir.rates.csv" || ! -f "$dir.plans.csv" ]]; then
        python3 -c "$RATECARD_PY" "$dir/pricebook.toml" "$dir.rates.csv" "$dir.plans.csv"
    fi
}

# ---- warm inputs -------------------------------------------------------------------------
# Read every input file once before a size is measured, so that each tool starts from the
# same page cache. On a VM the host may take back memory the guest leaves idle: inputs read
# minutes earlier came back at 0.5 GB/s instead of 7.5 GB/s (`dd` of the 5.0 GB of 100m
# data, 2026-12-03), which charged the first measured tool (the bare scan) for reading them.
warm_inputs() {   # data dir
    local t0 bytes
    t0=$(date +%s.%N)
    bytes=$(find -L "$1" -type f \( -name '*.parquet' -o -name pricebook.toml \) -print0 \
        | xargs -0 -r cat | wc -c)
    log "  inputs read once into the page cache: $(awk -v b="$bytes" 'BEGIN {printf "%.2f GB", b / 1e9}') in $(awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.1f s", t1 - t0}')"
}

# ---- timing ------------------------------------------------------------------------------
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# CPU seconds the whole machine has spent busy since boot (all cores), from /proc/stat.
# Compared with the CPU time of the measured commands it shows how much other processes
# took during a measurement.
OUR_CPU=0
busy_cpu_s() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / {printf "%.2f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz}' /proc/stat; }
# CPU seconds the hypervisor has taken from this VM since boot (all cores; /proc/stat's
# steal): time a core was ready to run but the host ran something else. On the bench's VM
# a direct write or read while both cores are busy is paid so (about 1.6 s a GiB written,
# 1 s a GiB read: benches/io-steal.sh), so a split run's spill costs more there than on
# a machine of its own; the table shows it per run, and `foreign` below leaves it out.
OUR_STEAL=0
# shellcheck source=benches/steal.sh
source "$(dirname "${BASH_SOURCE[0]}")/steal.sh"

# One timed run of a tool; its wall (s), CPU (user+sys s), peak RSS (KB) and the steal
# during it (s) are appended to WALLS[TOOL], CPUS[TOOL], RSSS[TOOL] and STEALS[TOOL]
# (space-separated, in run order).
declare -A WALLS=() CPUS=() RSSS=() STEALS=() PROCESS_WALLS=()
# run_once LABEL TOOL I RUNS OUTDIR -- CMD...
run_once() {
    local label=$1 tool=$2 i=$3 runs=$4 out=$5; shift 6
    local tf logf rc steal0 steal
    tf=$(mktemp)
    rm -rf "$out" "$out.tmp"            # close over its own output would be a no-op; DuckDB's spill
    # Write back what the generator or the previous run left dirty in the page cache
    # (gigabytes at 100m), so that it is not charged to this run's disk writes.
    sync
    logf="$BENCH_DIR/logs/$label-$tool-$i.log"
    rc=0
    steal0=$(steal_ticks)
    # DuckDB's wall is its own (benches/duckdb_run.py: from its connection to the end of the
    # SQL), not Python's start-up and import; the process's wall is kept beside it.
    local sqlf=$tf.duckdb-seconds
    rm -f "$sqlf"
    DUCKDB_SECONDS_FILE=$sqlf /usr/bin/time -f '%e %M %U %S' -o "$tf" "$@" >"$logf" 2>&1 || rc=$?
    steal=$(stolen_since "$steal0")
    # tally exits 1 when an [alert] threshold is passed: still a finished run
    if [[ $rc -ne 0 && ! ( $tool == tally-* && $rc -eq 1 ) ]]; then
        rm -f "$tf" "$sqlf"
        die "$tool failed at $label (exit $rc); see $logf"
    fi
    if [[ $tool == duckdb ]]; then
        [[ -s $sqlf ]] || die "duckdb_run.py wrote no time at $label; see $logf"
        PROCESS_WALLS[$tool]+="$(awk 'END {print $1}' "$tf") "
        WALLS[$tool]+="$(cat "$sqlf") "
        rm -f "$sqlf"
    else
        WALLS[$tool]+="$(awk 'END {print $1}' "$tf") "
    fi
    RSSS[$tool]+="$(awk 'END {print $2}' "$tf") "
    CPUS[$tool]+="$(awk 'END {print $3 + $4}' "$tf") "
    STEALS[$tool]+="$steal "
    OUR_CPU=$(awk -v a="$OUR_CPU" 'END {print a + $3 + $4}' "$tf")
    OUR_STEAL=$(awk -v a="$OUR_STEAL" -v s="$steal" 'BEGIN {print a + s}')
    log "  $tool run $i/$runs: $(awk -v s="$steal" 'END {printf "%s s wall, %.2f s cpu, %.0f MB, %.2f s stolen", $1, $3 + $4, $2/1024, s}' "$tf")"
    rm -f "$tf"
}

# The median of a space-separated list.
median_of() { tr ' ' '\n' <<<"$1" | grep . | median; }

# medians TOOL -> sets M_WALL (s), M_CPU (user+sys s), M_RSS (KB) and M_STEAL (s), each
# the median over the tool's runs
medians() {
    M_WALL=$(median_of "${WALLS[$1]}")
    M_RSS=$(median_of "${RSSS[$1]}")
    M_CPU=$(median_of "${CPUS[$1]}")
    M_STEAL=$(median_of "${STEALS[$1]}")
}

# paired_ratio A B -> the median over rounds of (A's wall / B's wall) in the same round: two
# tools timed minutes apart compare through the VM's speed at each moment (it varies by
# 1.6x from hour to hour here), two timed seconds apart much less.
paired_ratio() {
    paste -d' ' <(tr ' ' '\n' <<<"${WALLS[$1]}" | grep .) <(tr ' ' '\n' <<<"${WALLS[$2]}" | grep .) \
        | awk '$2 > 0 {print $1 / $2}' | median
}

# measure LABEL TOOL RUNS OUTDIR -- CMD...   -> RUNS runs of one tool back to back, then
# M_WALL, M_CPU and M_RSS as `medians` sets them
measure() {
    local label=$1 tool=$2 runs=$3 out=$4 i; shift 5
    WALLS[$tool]="" CPUS[$tool]="" RSSS[$tool]=""
    for ((i = 1; i <= runs; i++)); do
        run_once "$label" "$tool" "$i" "$runs" "$out" -- "$@"
    done
    medians "$tool"
}

# ---- memory gate -------------------------------------------------------------------------
# The 1m peak RSS (the larger of tally reconcile and tally close) for this tally binary, in KB; measured if missing.
binary_key() { stat -c '%Y-%s' "$TALLY"; }
RSS1M_FILE="$BENCH_DIR/peak-rss-1m.txt"    # "<binary key> <KB>"

peak_rss_1m() {
    if [[ -f "$RSS1M_FILE" ]] && [[ $(awk '{print $1}' "$RSS1M_FILE") == "$(binary_key)" ]]; then
        awk '{print $2}' "$RSS1M_FILE"
        return
    fi
    log "no 1m measurement for this tally binary yet: measuring 1m once to estimate memory"
    ensure_data 1m 1000000
    local o="$BENCH_DIR/out-1m" r c
    mkdir -p "$BENCH_DIR/logs"
    measure 1m tally-reconcile 1 "$o/reconcile" -- "$TALLY" reconcile --data "$BENCH_DIR/data-1m" \
        --as-of "$RECONCILE_AS_OF" --out "$o/reconcile" --log-format json
    r=$M_RSS
    measure 1m tally-close 1 "$o/close" -- "$TALLY" close --data "$BENCH_DIR/data-1m" \
        --as-of "$CLOSE_AS_OF" --out "$o/close" --log-format json
    c=$M_RSS
    echo "$(binary_key) $(( r > c ? r : c ))" >"$RSS1M_FILE"
    awk '{print $2}' "$RSS1M_FILE"
}

# fits LABEL EVENTS -> 0 if the size fits in memory and on disk, else prints why and returns 1
fits() {
    local label=$1 events=$2 per1m need_kb total_kb avail_kb budget_kb disk_need disk_avail out_kb
    [[ $events -le 1000000 ]] && return 0
    per1m=$(peak_rss_1m) || die "could not measure the 1m run's peak RSS"
    [[ $per1m =~ ^[0-9]+$ ]] || die "could not measure the 1m run's peak RSS"
    # tally sizes its work by its --memory-budget (default 3 GiB) past about 10M events,
    # processing groups of accounts one after another: its peak stops growing with the month
    # (measured: under 4 GiB at 100M events). Scale the 1m peak linearly, capped at that.
    need_kb=$(awk -v p="$per1m" -v n="$events" -v s="$SAFETY" -v cap="$TALLY_CAP_KB" 'BEGIN {
        x = p * n / 1e6 * s; if (x > cap) x = cap; printf "%d", x }')
    total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
    budget_kb=$(( total_kb - HEADROOM_GB * 1024 * 1024 ))
    (( avail_kb - 1024 * 1024 < budget_kb )) && budget_kb=$(( avail_kb - 1024 * 1024 ))
    if (( need_kb > budget_kb )); then
        awk -v l="$label" -v p="$per1m" -v n="$need_kb" -v b="$budget_kb" -v t="$total_kb" -v a="$avail_kb" -v s="$SAFETY" 'BEGIN {
            printf "bench: SKIPPING %s: it would not fit in memory. tally peaked at %.2f GiB at 1m events;\n", l, p/1048576
            printf "bench:   scaled linearly (x%s margin) %s needs about %.1f GiB, but the budget is %.1f GiB\n", s, l, n/1048576, b/1048576
            printf "bench:   (MemTotal %.1f GiB minus BENCH_MEM_HEADROOM_GB; MemAvailable now %.1f GiB). Nothing was generated or run.\n", t/1048576, a/1048576
        }' >&2
        return 1
    fi
    # disk: the data set, unless already generated (the 1m set scaled: about 47 MB per 1m
    # events), x1.5 for the data and its outputs; then the runs' scratch, budgeted as
    # DuckDB's temporary files (DUCKDB_TMP_BYTES_PER_EVENT, 450 bytes an event), which
    # are larger than tally's spill files (about 50 bytes a usage or ledger row, two rows
    # an event). The size's earlier outputs are replaced, so they count as free.
    disk_need=$(( events * DUCKDB_TMP_BYTES_PER_EVENT / 1024 ))
    if [[ ! -f "$BENCH_DIR/data-$label/generate.json" ]]; then
        disk_need=$(( disk_need + $(du -sk "$BENCH_DIR/data-1m" | awk '{print $1}') * events / 1000000 * 3 / 2 ))
    fi
    out_kb=0
    [[ -d "$BENCH_DIR/out-$label" ]] && out_kb=$(du -sk "$BENCH_DIR/out-$label" | awk '{print $1}')
    disk_avail=$(( $(df -Pk "$BENCH_DIR" | awk 'NR==2 {print $4}') + out_kb ))
    if (( disk_need > disk_avail )); then
        log "SKIPPING $label: needs about $((disk_need / 1048576)) GB of disk (data, outputs and DuckDB's temporary files), $((disk_avail / 1048576)) GB free in $BENCH_DIR"
        return 1
    fi
    return 0
}

# ---- one size ----------------------------------------------------------------------------
bench_size() {
    local label=$1 events=$2 runs=$BENCH_RUNS data out
    (( events >= 50000000 )) && runs=1
    data="$BENCH_DIR/data-$label"
    out="$BENCH_DIR/out-$label"
    ensure_data "$label" "$events"
    mkdir -p "$out" "$BENCH_DIR/logs"

    local load0 usage_rows debit_rows disk busy0 t0
    load0=$(cut -d' ' -f1-3 /proc/loadavg)
    usage_rows=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["counts"]["usage_rows"])' "$data/generate.json")
    debit_rows=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["counts"]["debit_rows"])' "$data/generate.json")
    disk=$(du -sh "$data" | awk '{print $1}')
    log "$label: $events events ($usage_rows usage rows, $debit_rows debit rows, $disk on disk), $runs run(s) each, load average $load0"
    warm_inputs "$data"

    local w_scan c_scan r_scan s_scan w_rec c_rec r_rec s_rec w_close c_close r_close s_close
    local w_duck c_duck r_duck s_duck round g tool group_rows=()
    OUR_CPU=0 OUR_STEAL=0 busy0=$(busy_cpu_s) t0=$(date +%s.%N)
    for tool in tally-scan tally-reconcile tally-close duckdb; do
        WALLS[$tool]="" CPUS[$tool]="" RSSS[$tool]="" STEALS[$tool]=""
    done
    for g in ${BENCH_GROUPS:-}; do
        WALLS[tally-reconcile-groups-$g]="" CPUS[tally-reconcile-groups-$g]=""
        RSSS[tally-reconcile-groups-$g]="" STEALS[tally-reconcile-groups-$g]=""
    done
    PROCESS_WALLS[duckdb]=""
    # Rounds: each tool once per round, so that the tools of a round run minutes apart at
    # most and each ratio can also be taken round by round. Each round starts one tool later
    # than the one before: no tool always runs first (a round's first run was slower) or
    # always after the heaviest writer.
    local order=(tally-scan tally-reconcile tally-close duckdb) k
    for ((round = 1; round <= runs; round++)); do
      for ((k = 0; k < ${#order[@]}; k++)); do
        case ${order[(round - 1 + k) % ${#order[@]}]} in
        tally-scan)
        run_once "$label" tally-scan "$round" "$runs" "$out/none" -- "$TALLY" scan --data "$data" \
            --log-format json ;;
        tally-reconcile)
        run_once "$label" tally-reconcile "$round" "$runs" "$out/reconcile" -- "$TALLY" reconcile \
            --data "$data" --as-of "$RECONCILE_AS_OF" --out "$out/reconcile" --log-format json ;;
        tally-close)
        run_once "$label" tally-close "$round" "$runs" "$out/close" -- "$TALLY" close --data "$data" \
            --as-of "$CLOSE_AS_OF" --out "$out/close" --log-format json ;;
        duckdb)
        run_once "$label" duckdb "$round" "$runs" "$out/duckdb" -- "$PY" "$RUNNER" "$SQL" "$data" \
            "$data.rates.csv" "$data.plans.csv" "$out/duckdb" "$RECONCILE_AS_OF" "$SETTLE_SECONDS" ;;
        esac
      done
        # Optional: the same reconcile at forced group counts (row "tally reconcile --groups N").
        for g in ${BENCH_GROUPS:-}; do
            run_once "$label" "tally-reconcile-groups-$g" "$round" "$runs" "$out/reconcile-groups" -- \
                "$TALLY" reconcile --data "$data" --as-of "$RECONCILE_AS_OF" \
                --out "$out/reconcile-groups" --groups "$g" --log-format json
        done
    done
    medians tally-scan; w_scan=$M_WALL c_scan=$M_CPU r_scan=$M_RSS s_scan=$M_STEAL
    medians tally-reconcile; w_rec=$M_WALL c_rec=$M_CPU r_rec=$M_RSS s_rec=$M_STEAL
    medians tally-close; w_close=$M_WALL c_close=$M_CPU r_close=$M_RSS s_close=$M_STEAL
    medians duckdb; w_duck=$M_WALL c_duck=$M_CPU r_duck=$M_RSS s_duck=$M_STEAL
    local w_duck_process
    w_duck_process=$(median_of "${PROCESS_WALLS[duckdb]}")
    for g in ${BENCH_GROUPS:-}; do
        medians "tally-reconcile-groups-$g"
        group_rows+=("tally reconcile --groups $g|$M_WALL|$M_RSS|$M_CPU|$M_STEAL")
    done
    local paired_duck paired_scan
    paired_duck=$(paired_ratio duckdb tally-reconcile)
    paired_scan=$(paired_ratio tally-reconcile tally-scan)

    if [[ $label == 1m ]]; then
        echo "$(binary_key) $(( r_rec > r_close ? r_rec : r_close ))" >"$RSS1M_FILE"
    fi

    local foreign
    foreign=$(awk -v b0="$busy0" -v b1="$(busy_cpu_s)" -v ours="$OUR_CPU" -v stolen="$OUR_STEAL" -v t0="$t0" -v t1="$(date +%s.%N)" -v n="$(nproc)" 'BEGIN {
        f = b1 - b0 - ours - stolen; if (f < 0) f = 0
        printf "%.1f %.1f", f, 100 * f / ((t1 - t0) * n)
    }')
    local tally_version duck_version results="$BENCH_DIR/results-$label.md"
    tally_version="$("$TALLY" --version | head -1) (build $("$TALLY" --version | awk 'NR == 2 {print substr($2, 1, 12)}'), binary of $(date -u -r "$TALLY" +%Y-%m-%dT%H:%MZ))"
    duck_version=$("$PY" -c 'import duckdb; print(duckdb.__version__)')
    {
        echo "### $label: $events events ($usage_rows usage rows, $debit_rows ledger rows, $disk of Parquet)"
        echo
        echo "$(nproc) cores, $(awk '/^MemTotal:/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo);" \
             "$tally_version; DuckDB $duck_version (PRAGMA threads=2); median of $runs run(s)," \
             "in $runs round(s) of every tool;" \
             "load average at start $load0; $(date -u +%Y-%m-%dT%H:%MZ)"
        echo
        echo "| tool | wall s | peak RSS MB | events/s | CPU s (user+sys) | stolen s |"
        echo "|---|---:|---:|---:|---:|---:|"
        for row in "tally scan (bare decode)|$w_scan|$r_scan|$c_scan|$s_scan" \
                   "tally reconcile|$w_rec|$r_rec|$c_rec|$s_rec" \
                   "tally close|$w_close|$r_close|$c_close|$s_close" \
                   "DuckDB SQL reconcile (reconcile.sql; its own time)|$w_duck|$r_duck|$c_duck|$s_duck" \
                   ${group_rows[@]+"${group_rows[@]}"}; do
            IFS='|' read -r name w r c st <<<"$row"
            awk -v n="$name" -v w="$w" -v r="$r" -v c="$c" -v st="$st" -v e="$events" 'BEGIN {
                printf "| %s | %.2f | %.0f | %s | %.2f | %.2f |\n", n, w, r / 1024, (w > 0) ? sprintf("%.0f", e / w) : "n/a", c, st
            }'
        done
        echo
        awk -v d="$w_duck" -v t="$w_rec" -v s="$w_scan" -v rd="$r_duck" -v rt="$r_rec" \
            -v pd="$paired_duck" -v ps="$paired_scan" -v n="$runs" 'BEGIN {
            if (t > 0) printf "- tally reconcile vs DuckDB: speed-up %.2fx (duckdb_time / tally_time; above 1 means tally is faster); memory %.2fx DuckDB'"'"'s\n", d / t, rt / rd
            if (s > 0) printf "- tally reconcile / scan: %.1fx (tally_time / scan_time)\n", t / s
            if (n > 1) printf "- the same ratios round by round (median over the %d rounds of each round'"'"'s ratio): %.2fx DuckDB, %.1fx the scan\n", n, pd, ps
        }'
        awk -v w="$w_duck" -v p="$w_duck_process" 'BEGIN {
            printf "- DuckDB'"'"'s wall is its own, from its connection to the end of the SQL (benches/duckdb_run.py); with Python'"'"'s start-up and import duckdb, the process took %.2f s (median); its CPU s and peak RSS are the process'"'"'s\n", p
        }'
        # where tally's time goes, from the JSON log of its last reconcile and close runs
        for tool in reconcile close; do
            "$PY" - "$tool" "$BENCH_DIR/logs/$label-tally-$tool-$runs.log" <<'PYEOF'
import json, sys
tool, path = sys.argv[1:3]
# per stage name, in first-seen order: total seconds (and how many times it ran: a run
# past its memory budget repeats the group stages once per group)
total, times = {}, {}
for line in open(path, errors="replace"):
    try:
        f = json.loads(line).get("fields", {})
    except ValueError:
        continue
    if f.get("message") == "stage done":
        name = f["stage"]
        total[name] = total.get(name, 0) + f["duration_ms"] / 1000
        times[name] = times.get(name, 0) + 1
if total:
    parts = [f"{n} {t:.2f} s" + (f" ({times[n]}×)" if times[n] > 1 else "") for n, t in total.items()]
    print(f"- tally {tool} stages (its JSON log, last run): " + "; ".join(parts))
PYEOF
        done
        awk 'BEGIN {
            printf "- stolen s: CPU time the hypervisor took from this VM while the run ran (all cores, /proc/stat'"'"'s steal, median over the runs; not in CPU s): on the bench'"'"'s VM a direct write or read while both cores are busy is paid so (benches/io-steal.sh), e.g. a split run'"'"'s spill\n"
        }'
        # other processes' CPU during the measurements (bench bookkeeping included, a few %;
        # steal left out: it is shown per run above)
        awk -v f="$foreign" 'BEGIN {
            split(f, x, " ")
            if (x[2] > 10)
                printf "- WARNING: other processes used %s CPU-s (%s%% of the machine) during these measurements: wall times are inflated and noisy; CPU s is the steadier column\n", x[1], x[2]
            else
                printf "- machine otherwise idle: other processes used %s CPU-s (%s%% of the machine) during these measurements\n", x[1], x[2]
        }'
        # DuckDB's discrepancies against tally's (a correctness check, not timed): counts per
        # kind against summary.json, then row by row against discrepancies.parquet
        "$PY" - "$out/reconcile" "$out/duckdb" <<'PYEOF'
import json, sys, duckdb
tally_out, duck_out = sys.argv[1:3]
tally = {k["kind"]: k["count"] for k in json.load(open(f"{tally_out}/summary.json"))["discrepancies"]["by_kind"]}
duck = dict(duckdb.sql(f"SELECT kind, count(*) FROM '{duck_out}/discrepancies.parquet' GROUP BY kind").fetchall())
diff = [f"{k} {tally.get(k, 0)} vs {duck.get(k, 0)}" for k in sorted(set(tally) | set(duck))
        if tally.get(k, 0) != duck.get(k, 0)]
print(f"- discrepancy rows: tally {sum(tally.values())}, DuckDB {sum(duck.values())}; "
      + ("every kind matches" if not diff else "differing kinds (tally vs DuckDB): " + ", ".join(diff))
      + (" (over_limit_usage needs grant consumption, which the SQL does not model)" if "over_limit_usage" in " ".join(diff) else ""))
cols = ("kind, account_id, event_id, entry_ids, occurred_at, product, action, model, "
        "expected_credits, recorded_credits, delta_credits")
def only(a, b):
    return dict(duckdb.sql(f"SELECT kind, count(*) FROM (SELECT {cols} FROM '{a}/discrepancies.parquet' "
                           f"EXCEPT ALL SELECT {cols} FROM '{b}/discrepancies.parquet') GROUP BY kind").fetchall())
in_tally, in_duck = only(tally_out, duck_out), only(duck_out, tally_out)
fmt = lambda d: ", ".join(f"{k} {n}" for k, n in sorted(d.items())) or "none"
print(f"- row by row (every column): rows only in tally's output: {fmt(in_tally)}; only in DuckDB's: {fmt(in_duck)}")
PYEOF
    } >"$results"
    cat "$results"
    echo
}

# ---- main --------------------------------------------------------------------------------
(( $# )) || set -- 1m
setup_duckdb
mkdir -p "$BENCH_DIR/logs"
for arg in "$@"; do
    label=${arg,,}
    events=$(parse_size "$label")
    [[ $events =~ ^[0-9]+$ && $events -ge 100 ]] || die "bad size '$arg' (use e.g. 1m, 10m, 500k)"
    if ! fits "$label" "$events"; then
        echo
        continue
    fi
    bench_size "$label" "$events"
done
