#!/usr/bin/env bash
# The sharded run with plain processes on one host (the same steps as kubernetes/sharded/):
# N shard processes with one as-of, then the merge.
#
#   jobs/sharded-local.sh 4                       # nightly reconcile in 4 shards, as of now
#   AS_OF=2026-11-20T00:00:00Z jobs/sharded-local.sh 2
#   JOB=/etc/tally/nightly-reconcile.toml OUT=/var/lib/tally/out/nightly-reconcile \
#       TALLY=/usr/local/bin/tally jobs/sharded-local.sh 4
#
# Shards go to $OUT.shards/shard=I/, the merged run to $OUT (by default this folder's
# nightly-reconcile.toml and out/nightly-reconcile). Every shard runs at once, each within
# the job's memory_budget: give the host N times that. Exit status: the merge's (0, 1 alert,
# 2, 3, 4), the first failed shard's (the others are stopped), 2 for a bad N or a JOB
# without its OUT, or 129/130/143 when the script is stopped by a signal (the shards too).
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
    "$TALLY" reconcile --job "$JOB" --as-of "$AS_OF" --out "$OUT" --shard "$i/$N" &
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
exec "$TALLY" merge --job "$JOB" --out "$OUT"
