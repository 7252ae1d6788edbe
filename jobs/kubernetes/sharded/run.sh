#!/bin/sh
# Driver of one sharded run (mounted from the tally-sharded-manifests ConfigMap): one as-of
# for every shard, shards first, merge after. Exits non-zero (the CronJob's Job fails and
# alerts) when either Job fails.
set -eu
AS_OF=${AS_OF:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
# A hand-set AS_OF goes into sed's replacement: only the form --as-of reads is let through.
case "$AS_OF" in
    [0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]Z) ;;
    *) echo "AS_OF=$AS_OF is not an instant of the form 2026-11-20T00:00:00Z (UTC)" >&2; exit 2 ;;
esac
echo "sharded reconcile as of $AS_OF"

wait_for() {   # job-name → 0 when Complete, 1 when Failed, 2 when 20 reads in a row failed
    misses=0
    while :; do
        # A passing API error must not end the driver while its shards run (the merge would
        # never start): only 20 failed reads in a row (5 minutes or more: each read gives up
        # after 30 s, so that an API that hangs cannot stall the driver) do.
        if ! state=$(kubectl get "$1" --request-timeout=30s -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}'); then
            misses=$((misses + 1))
            if [ "$misses" -ge 20 ]; then
                echo "cannot read $1 from the API (20 reads in a row failed, 15 s apart): kubectl describe $1" >&2
                return 2
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
wait_for "$shards" || exit 1
merge=$(kubectl create -f /manifests/merge-job.yaml -o name)
echo "created $merge"
waited=0
wait_for "$merge" || waited=$?
if [ "$waited" -eq 1 ]; then
    # The merge Job fails on tally's exit 1 too, which is a published night with an alert.
    echo "tally merge exits 1 when it published but crossed an [alert] threshold (the night's" \
        "output is there), 2, 3 or 4 when nothing was published: kubectl logs $merge says which" >&2
fi
[ "$waited" -eq 0 ] || exit 1
echo "published /out/nightly-reconcile as of $AS_OF"
