#!/usr/bin/env bash
# benches/stages.sh [RUNS] TALLY -- TALLY_ARGS...  — one tally job, RUNS times (default 1),
# timed as a whole and stage by stage from its JSON log, with its memory by stage.
#
#   benches/stages.sh 3 target/release/tally -- \
#       reconcile --groups 3 --data /tmp/tally-bench/data-1m --as-of 2026-11-20T00:00:00Z
#
# Each run writes to its own fresh output folder (`--out` is added: do not pass one; it is
# deleted after the run, as a 100m close writes about 10 GB) with `--log-format json`
# added, after a `sync` (outside the timing, as in bench.sh). For each run it prints one line
# from GNU time: wall, user and system CPU seconds, peak RSS, minor page faults, the CPU
# seconds the hypervisor stole from the whole machine meanwhile (/proc/stat; see
# benches/io-steal.sh) and tally's exit code; then its stages in the order they ended: how
# many times each ended (a split run repeats a group's stages), summed wall (`duration_ms`)
# and CPU (`cpu_ms`: the whole process's, so it includes a stage running beside; "-" for
# the stages logged with `progress::log_stage`, which log none) seconds, and the highest
# VmRSS sampled while the stage ran. VmRSS is read from /proc every 0.1 s (a stage shorter than
# that may get no sample: "-"), and a sample counts for every stage running then (stages
# overlap: "fingerprint inputs" beside "route", "read spill" beside the previous group).
# With RUNS > 1, a summary: per stage the median wall and CPU seconds and the highest RSS.
# A failed run stops the script (exit 1) with the tail of tally's stderr.
#
# Environment: STAGES_DIR  work folder, then kept with each run's log-N.jsonl (tally's
# stderr), rss-N.txt ("epoch_seconds rss_kib" lines), stdout-N.txt and runs.jsonl (the
# tables as JSON) (default a fresh temporary folder, removed at the end).
set -euo pipefail

die() { echo "stages: $*" >&2; exit 2; }
usage="usage: benches/stages.sh [RUNS] TALLY -- TALLY_ARGS..."
if [[ $# -ge 3 && $2 == "--" ]]; then runs=1 bin=$1; shift 2
elif [[ $# -ge 4 && $3 == "--" ]]; then runs=$1 bin=$2; shift 3
else die "$usage"; fi
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive count, not '$runs'"
[[ -f $bin && -x $bin ]] || die "no executable at $bin"
[[ -x /usr/bin/time ]] || die "/usr/bin/time (GNU time) is needed"
command -v pgrep >/dev/null || die "pgrep (procps) is needed to find tally's process"
for arg in "$@"; do
    [[ $arg != --out && $arg != --out=* ]] || die "stages.sh picks each run's --out itself"
    [[ $arg != --log-format* ]] || die "stages.sh adds --log-format json itself"
done

dir=${STAGES_DIR:-$(mktemp -d)}
mkdir -p "$dir"
# A private copy of the binary: a rebuild during the runs cannot mix two binaries.
cleanup() { rm -f "$dir/tally" "$dir/pid" "$dir/time"; [[ -n ${STAGES_DIR:-} ]] || rm -rf "$dir"; }
trap cleanup EXIT
cp "$bin" "$dir/tally"
rm -f "$dir/runs.jsonl"

# shellcheck source=benches/steal.sh
source "$(dirname "${BASH_SOURCE[0]}")/steal.sh"
# tally's stage lines are INFO (a TALLY_LOG exported by the caller could hide them), and
# printf's %f wants a '.' decimal point.
export TALLY_LOG=info LC_ALL=C

# "epoch_seconds rss_kib" of GNU time's child (tally) every 0.1 s, until it exits. time's
# pid comes from the file its subshell writes before exec; tally itself is found as its
# child, so no wrapper process runs inside the measurement (its faults would count).
sample() {
    local tpid pid='' key val rest rss
    local tries=0
    until [[ -s $dir/pid ]]; do ((++tries < 1000)) || return 0; sleep 0.01; done
    tpid=$(<"$dir/pid")
    while [[ -z $pid && -e /proc/$tpid ]]; do pid=$(pgrep -P "$tpid") || sleep 0.01; done
    while [[ -n $pid ]]; do
        rss=''
        { while read -r key val rest; do
            if [[ $key == VmRSS: ]]; then rss=$val; break; fi
        done <"/proc/$pid/status"; } 2>/dev/null || true
        [[ -n $rss ]] || break  # gone, or a zombie (no VmRSS line)
        echo "$EPOCHREALTIME $rss"
        sleep 0.1
    done
}

# The log parser: `run` prints one run's stage table and appends it to runs.jsonl,
# `summary` prints the medians over runs.jsonl.
read -r -d '' PY <<'PY' || true
import datetime, json, statistics, sys

def ts(text):
    # Python before 3.11 does not read a trailing "Z".
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

def cell(value, decimals):
    return f"{value:8.{decimals}f}" if value is not None else f"{'-':>8}"

def table(rows):
    print(f"  {'stage':36} {'n':>3} {'wall s':>8} {'CPU s':>8} {'RSS MiB':>8}")
    for name, s in rows.items():
        print(f"  {name:36} {s['n']:3d} {cell(s['wall'], 2)} {cell(s['cpu'], 2)} {cell(s['rss'], 0)}")

def run(log, rss_file, runs_file, *whole):
    stages, group_start = {}, None
    for line in open(log, errors="replace"):
        try:
            rec = json.loads(line)
            fields, when = rec["fields"], ts(rec["timestamp"])
        except (ValueError, KeyError, TypeError):
            continue  # not a JSON log line (e.g. a panic's text)
        if fields.get("message") == "group":
            group_start = when
        if fields.get("message") != "stage done":
            continue
        took = fields.get("duration_ms", 0) / 1000
        span = (when - took, when)
        # A spilled group is read back while the group before it is processed, and its line
        # is logged after that group's stages (progress::log_stage): it started with the
        # last "group" line, not `took` before its own line.
        if fields["stage"] == "read spill" and group_start is not None:
            span = (group_start, group_start + took)
        s = stages.setdefault(fields["stage"], {"n": 0, "wall": 0.0, "cpu": None, "spans": []})
        s["n"] += 1
        s["wall"] += took
        if "cpu_ms" in fields:
            s["cpu"] = (s["cpu"] or 0) + fields["cpu_ms"] / 1000
        s["spans"].append(span)
    if not stages:
        sys.exit(f"stages: no 'stage done' line in {log}: not tally's JSON log, or its level hides INFO")
    samples = []
    for line in open(rss_file):
        t, kib = line.split()
        samples.append((float(t.replace(",", ".")), int(kib)))
    for s in stages.values():
        spans = s.pop("spans")
        inside = [kib for t, kib in samples if any(a <= t <= b for a, b in spans)]
        s["rss"] = max(inside) / 1024 if inside else None
    table(stages)
    peak = max((kib for _, kib in samples), default=0) / 1024
    print(f"  sampler: {len(samples)} samples, peak {peak:.0f} MiB")
    wall, user, sys_, peak_kib, stolen = map(float, whole)
    with open(runs_file, "a") as out:
        out.write(json.dumps({"wall": wall, "cpu": user + sys_, "peak": peak_kib / 1024,
                              "stolen": stolen, "stages": stages}) + "\n")

def summary(runs_file):
    runs = [json.loads(line) for line in open(runs_file)]
    med = lambda key: statistics.median(r[key] for r in runs)
    print(f"median of {len(runs)} runs: {med('wall'):.2f} s wall, {med('cpu'):.2f} s CPU (user+sys), "
          f"{med('stolen'):.2f} s stolen; highest peak {max(r['peak'] for r in runs):.0f} MiB")
    rows = {}
    for r in runs:
        for name, s in r["stages"].items():
            rows.setdefault(name, []).append(s)
    out = {}
    for name, seen in rows.items():
        cpus = [s["cpu"] for s in seen if s["cpu"] is not None]
        rsses = [s["rss"] for s in seen if s["rss"] is not None]
        out[name] = {"n": max(s["n"] for s in seen),
                     "wall": statistics.median(s["wall"] for s in seen),
                     "cpu": statistics.median(cpus) if cpus else None,
                     "rss": max(rsses) if rsses else None}
    table(out)

{"run": run, "summary": summary}[sys.argv[1]](*sys.argv[2:])
PY

echo "stages: $runs run(s) of $bin $*; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%Y-%m-%dT%H:%MZ)"
for ((i = 1; i <= runs; i++)); do
    out="$dir/out-$i" log="$dir/log-$i.jsonl" rss="$dir/rss-$i.txt"
    rm -rf "$out" "$dir/pid"
    sync
    sample >"$rss" &
    sampler=$!
    steal0=$(steal_ticks)
    rc=0
    ( echo "$BASHPID" >"$dir/pid"
      exec /usr/bin/time -o "$dir/time" -f "%e %U %S %M %R" "$dir/tally" "$@" \
          --out "$out" --log-format json >"$dir/stdout-$i.txt" 2>"$log" ) || rc=$?
    stolen=$(stolen_since "$steal0")
    wait "$sampler" || true
    # On failure GNU time writes "Command exited with non-zero status N" first.
    read -r wall user sys peak_kb faults < <(tail -n 1 "$dir/time")
    printf 'run %d: %6.2f s wall, %6.2f s user, %5.2f s sys, %5d MiB peak, %8d faults, %5.2f s stolen, exit %d\n' \
        "$i" "$wall" "$user" "$sys" $(((peak_kb + 512) / 1024)) "$faults" "$stolen" "$rc"
    if ((rc != 0)); then
        echo "stages: run $i failed (exit $rc); the end of its stderr:" >&2
        tail -n 10 "$log" >&2
        rm -rf "$out"
        exit 1
    fi
    rm -rf "$out" "$dir/.out-$i.tally-lock"
    python3 -c "$PY" run "$log" "$rss" "$dir/runs.jsonl" "$wall" "$user" "$sys" "$peak_kb" "$stolen"
done
if ((runs > 1)); then python3 -c "$PY" summary "$dir/runs.jsonl"; fi
