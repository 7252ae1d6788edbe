#!/bin/sh
# Driver of one sharded run (mounted from the tally-sharded-manifests ConfigMap): one as-of
# for every shard, shards first, merge after. Exits non-zero (the CronJob's Job fails and
# alerts) when either Job fails.
set -eu
AS_OF=${AS_OF:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
echo "sharded reconcile as of $AS_OF"

wait_for() {   # job-name → 0 when Complete, 1 when Failed (or the API unreachable for 5 min)
    misses=0
    while :; do
        # A passing API error must not end the driver while its shards run (the merge would
        # never start): only 20 failed reads in a row (5 minutes) do.
        if ! state=$(kubectl get "$1" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}'); then
            misses=$((misses + 1))
            if [ "$misses" -ge 20 ]; then
                echo "cannot read $1 from the API for 5 minutes: kubectl describe $1" >&2
                return 1
            fi
            sleep 15
            continue
        fi
        misses=0
        case " $state " in
            *" Complete "*) return 0 ;;
            *" Failed "*) echo "$1 failed: kubectl describe $1" >&2; return 1 ;;
        esac
        sleep 15
    done
}

shards=$(sed "s/__AS_OF__/$AS_OF/" /manifests/shards-job.yaml | kubectl create -f - -o name)
echo "created $shards"
wait_for "$shards"
merge=$(kubectl create -f /manifests/merge-job.yaml -o name)
echo "created $merge"
wait_for "$merge"
echo "published /out/nightly-reconcile as of $AS_OF"
