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
# 2, 3, 4), or the first failed shard's (the others are stopped).
set -euo pipefail
N=${1:?usage: sharded-local.sh N}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TALLY=${TALLY:-tally}
AS_OF=${AS_OF:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
JOB=${JOB:-"$HERE/nightly-reconcile.toml"}
# Passed to the shards and the merge alike, so that they agree wherever the job file is.
OUT=${OUT:-"$HERE/../out/nightly-reconcile"}

pids=()
for ((i = 0; i < N; i++)); do
    "$TALLY" reconcile --job "$JOB" --as-of "$AS_OF" --out "$OUT" --shard "$i/$N" &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    status=0
    wait "$pid" || status=$?
    if ((status != 0)); then
        # The other shards would only be thrown away: stop them (each removes its scratch).
        kill "${pids[@]}" 2>/dev/null || true
        wait 2>/dev/null || true
        exit "$status"
    fi
done
exec "$TALLY" merge --job "$JOB" --out "$OUT"
