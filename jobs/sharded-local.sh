#!/usr/bin/env bash
# The sharded run with plain processes on one host (the same steps as kubernetes/sharded/):
# N shard processes with one as-of, then the merge of those N shards.
#
#   jobs/sharded-local.sh 4                       # nightly reconcile in 4 shards, as of now
#   AS_OF=2026-11-20T00:00:00Z jobs/sharded-local.sh 2
#   JOB=/etc/tally/nightly-reconcile.toml OUT=/var/lib/tally/out/nightly-reconcile \
#       TALLY=/usr/local/bin/tally jobs/sharded-local.sh 4
#   JOB=/etc/tally/period-close.toml OUT=/var/lib/tally/out/closes/2026-12-01 \
#       AS_OF=2026-12-01T00:00:00Z jobs/sharded-local.sh 4      # a close: its job file's command
#
# The command (reconcile or close) is the job file's `command` (reconcile without one).
# Shards go to
# $OUT.shards/shard=I/, the merged run to $OUT (by default this folder's
# nightly-reconcile.toml and out/nightly-reconcile); the merge is given this run's N shard
# folders, so a shard folder left by a run with more shards is not read. Every shard runs
# at once, each within the job's memory_budget: give the host N times that. Exit status:
# the merge's (0, 1 alert, 2, 3, 4), the first failed shard's (the others are stopped), 2
# for a bad N, a JOB without its OUT, a JOB that cannot be read or whose `command` is
# neither reconcile nor close, or 129/130/143 when the script is stopped by a signal (the
# shards too).
set -euo pipefail
refuse() { echo "sharded-local.sh: $*" >&2; exit 2; }
N=${1:-}
[[ $N =~ ^[1-9][0-9]*$ ]] || refuse "usage: sharded-local.sh N (N shards, a positive count)"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TALLY=${TALLY:-tally}
AS_OF=${AS_OF:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
# JOB and OUT go together: OUT is where the shards and the merge meet (the job's `out`).
if [[ -n ${JOB:-} && -z ${OUT:-} || -z ${JOB:-} && -n ${OUT:-} ]]; then
    refuse "set JOB and OUT together (OUT: the folder the merge publishes, the job file's out)"
fi
JOB=${JOB:-"$HERE/nightly-reconcile.toml"}
OUT=${OUT:-"$HERE/../out/nightly-reconcile"}
# The merge does not fill in `{as_of}` / `{as_of_date}` (it has no as-of of its own): refused
# before any shard runs, not after.
[[ $OUT != *"{as_of"* ]] ||
    refuse "OUT=$OUT: give the folder with the as-of filled in (closes/2026-12-01, not closes/{as_of_date}): the merge does not fill it in"
# The job file's `command = "..."` line (tally checks it again against the command run);
# a job file without one is a reconcile's, as tally reads it.
[[ -r $JOB ]] || refuse "$JOB: cannot read the job file"
COMMAND=$(sed -n "s/^[[:space:]]*command[[:space:]]*=[[:space:]]*[\"']\([a-z]*\)[\"'].*/\1/p" "$JOB" | head -n 1)
COMMAND=${COMMAND:-reconcile}
[[ $COMMAND == reconcile || $COMMAND == close ]] ||
    refuse "$JOB: command = \"$COMMAND\" is not reconcile or close"

pids=()
# Stop every shard still running (each removes its scratch folders) and wait for them.
stop_shards() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
}
# The shards run in the background, where a non-interactive shell ignores SIGINT for them:
# a signal to this script stops them here.
trap 'stop_shards; exit 130' INT
trap 'stop_shards; exit 143' TERM
trap 'stop_shards; exit 129' HUP

for ((i = 0; i < N; i++)); do
    "$TALLY" "$COMMAND" --job "$JOB" --as-of "$AS_OF" --out "$OUT" --shard "$i/$N" &
    pids+=($!)
done
# As the shards end, in any order: the first that fails stops the others.
for ((ended = 0; ended < N; ended++)); do
    status=0
    wait -n || status=$?
    if ((status != 0)); then
        stop_shards
        exit "$status"
    fi
done
trap - INT TERM HUP
shards=()
for ((i = 0; i < N; i++)); do
    shards+=("$OUT.shards/shard=$i")
done
exec "$TALLY" merge --job "$JOB" --out "$OUT" "${shards[@]}"
