#!/usr/bin/env bash
# The sharded run with plain processes on one host (the same steps as kubernetes/sharded/):
# N shard processes with one as-of, then the merge.
#
#   jobs/sharded-local.sh 4                       # nightly reconcile in 4 shards, as of now
#   AS_OF=2026-11-20T00:00:00Z jobs/sharded-local.sh 2
#
# Shards go to out/nightly-reconcile.shards/shard=I/, the merged run to out/nightly-reconcile
# (the paths of jobs/nightly-reconcile.toml). Exit status: the merge's (0, 1 alert, 2, 3, 4),
# or the first failed shard's.
set -euo pipefail
N=${1:?usage: sharded-local.sh N}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TALLY=${TALLY:-tally}
AS_OF=${AS_OF:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
JOB="$HERE/nightly-reconcile.toml"
OUT="$HERE/../out/nightly-reconcile"   # the job file's `out`: shards go to $OUT.shards/

pids=()
for ((i = 0; i < N; i++)); do
    "$TALLY" reconcile --job "$JOB" --as-of "$AS_OF" --shard "$i/$N" &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid" || exit $?
done
exec "$TALLY" merge --job "$JOB" --out "$OUT"
