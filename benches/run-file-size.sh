#!/usr/bin/env bash
# benches/run-file-size.sh TALLY DATA — the size of a close's run files (billed events and
# invoice lines, the files a split close writes per group and a shard keeps), per row.
# It runs `TALLY close --shard 0/1` (one shard keeps its run files in its folder, listed
# with their rows in shard.json) at the bench's close as-of into a temporary folder. This
# is how the run-file sizes in README "Scaling" and benches/README were measured; run it
# for two binaries in turn to compare them, e.g.:
#   benches/run-file-size.sh ~/.cache/tally-target/release/tally /tmp/tally-bench/data-10m
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 TALLY DATA" >&2; exit 2; }
tally=$1 data=$2
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$tally" close --data "$data" --as-of 2026-12-01T00:00:00Z --out "$scratch/out" \
    --shard 0/1 --log-format json 2>"$scratch/log" >/dev/null \
    || { tail -1 "$scratch/log" >&2; exit 1; }
python3 - "$scratch/out.shards/shard=0" <<'PY'
import json, os, sys
folder = sys.argv[1]
runs = json.load(open(os.path.join(folder, "shard.json")))["runs"]
for kind in ("billed", "lines"):
    files = [r for r in runs if r["path"].startswith(kind + "-")]
    size = sum(os.path.getsize(os.path.join(folder, r["path"])) for r in files)
    rows = sum(r["rows"] for r in files)
    print(f"{kind}: {len(files)} run files, {rows} rows, {size} bytes, "
          f"{size / max(rows, 1):.1f} bytes a row")
PY
