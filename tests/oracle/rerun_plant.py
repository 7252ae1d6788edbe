#!/usr/bin/env python3
"""A tally with one deliberate error in its re-runs and refusals, to show rerun_check.py
reports it.

    RERUN_PLANT=MODE TALLY_REAL=/path/to/tally rerun_plant.py ARGS...

Runs the real binary with ARGS and alters what it did as MODE says (every other run is
passed through unchanged). Call it through a two-line shell script:

    #!/bin/sh
    RERUN_PLANT=noop-write TALLY_REAL=/tmp/oracle-bin/tally-d00ae43 exec python3 rerun_plant.py "$@"

MODE:
  noop-write     a close that found nothing to do: one line appended to OUT/summary.md
  refuse-delete  a close refused (exit 3) over an existing folder: OUT/report.html removed
  no-name        a close refused for other inputs: the stderr line names nothing that changed
  force-stale    a `close --force` that published: OUT/invoices.csv put back as it was before
  force-backup   a `close --force` over a close: the replaced folder kept beside it as OUT.old
  foreign-wipe   `--out` a non-empty folder without manifest.json: the folder emptied, then
                 the real run (tally wiping other data)
  noop-no-alert  a close that found nothing to do and exited 1 (a job's `[alert]` crossed):
                 exit 0, its `tally: alert:` line dropped (the retry hiding the alert)

Sharded (rerun_check.py --part sharded):
  shard-ignore   a close shard refused for other inputs (exit 3): run again with --force, so
                 the shard computes and replaces OUT.shards/shard=I (the behaviour before
                 the shards refused)
  shard-wipe     a close shard refused (exit 3): its OUT.shards/shard=I removed
  merge-force    `merge --force` that found nothing to do: the close replaced anyway by a
                 close --force of the shards' data root as it is now (--force on the merge
                 alone replacing the close)
  merge-dup      `merge` refused for a shard given twice: run again with each folder once
                 (duplicates silently dropped)
"""
import json
import re
import os
import shutil
import subprocess
import sys


def arg(args, flag):
    return args[args.index(flag) + 1] if flag in args else None


def main():
    args = sys.argv[1:]
    mode = os.environ.get("RERUN_PLANT", "")
    command = args[0] if args else ""
    out = arg(args, "--out")
    had_close = bool(out) and os.path.isfile(os.path.join(out, "manifest.json"))
    if mode == "foreign-wipe" and out and os.path.isdir(out) and os.listdir(out) \
            and not os.path.exists(os.path.join(out, "manifest.json")):
        shutil.rmtree(out)
        os.makedirs(out)
    stale = None
    if mode == "force-stale" and "--force" in args and had_close \
            and os.path.isfile(os.path.join(out, "invoices.csv")):
        with open(os.path.join(out, "invoices.csv"), "rb") as f:
            stale = f.read()
    if mode == "force-backup" and command == "close" and "--force" in args and had_close:
        shutil.rmtree(out + ".old", ignore_errors=True)
        shutil.copytree(out, out + ".old")
    real = os.environ["TALLY_REAL"]
    p = subprocess.run([real, *args], capture_output=True, text=True)
    stdout, stderr = p.stdout, p.stderr
    shard = arg(args, "--shard")
    if command == "close" and shard and p.returncode == 3:
        if mode == "shard-ignore" and "other inputs" in stderr:
            p = subprocess.run([real, *args, "--force"], capture_output=True, text=True)
            stdout, stderr = p.stdout, p.stderr
        elif mode == "shard-wipe":
            shutil.rmtree(os.path.join(out + ".shards", f"shard={shard.split('/')[0]}"),
                          ignore_errors=True)
    if command == "merge" and mode == "merge-force" and "--force" in args \
            and p.returncode == 0 and "nothing to do" in stdout:
        with open(os.path.join(out, "manifest.json")) as f:
            m = json.load(f)
        with open(os.path.join(out + ".shards", "shard=0", "shard.json")) as f:
            data = json.load(f)["data"]
        p = subprocess.run([real, "close", "--data", data, "--as-of", m["as_of"], "--settle",
                            f"{m['settings']['settle_seconds']}s", "--out", out, "--force"],
                           capture_output=True, text=True)
        stdout, stderr = p.stdout, p.stderr
    if command == "merge" and mode == "merge-dup" and p.returncode == 3 \
            and "given twice" in stderr:
        dup = re.search(r"given twice: .* and (\S+)$", stderr.strip()).group(1)
        rest, once = [], False
        for a in args[1:]:
            if a == dup and once:
                continue
            once = once or a == dup
            if not a.startswith("-") and os.path.abspath(a) == os.path.dirname(dup):
                rest += [os.path.join(a, d) for d in sorted(os.listdir(a))
                         if d.startswith("shard=") and os.path.join(a, d) != dup]
            else:
                rest.append(a)
        p = subprocess.run([real, "merge", *rest], capture_output=True, text=True)
        stdout, stderr = p.stdout, p.stderr
    if command == "close" and out:
        if mode == "noop-write" and p.returncode == 0 and "nothing to do" in stdout:
            with open(os.path.join(out, "summary.md"), "a") as f:
                f.write("\n")
        elif mode == "refuse-delete" and p.returncode == 3 and had_close \
                and os.path.exists(os.path.join(out, "report.html")):
            os.remove(os.path.join(out, "report.html"))
        elif mode == "no-name" and p.returncode == 3 and "other inputs" in stderr:
            stderr = f"tally: refused: {out} already holds a close with other inputs\n"
        elif mode == "force-stale" and p.returncode == 0 and stale is not None \
                and "published" in stdout:
            with open(os.path.join(out, "invoices.csv"), "wb") as f:
                f.write(stale)
        elif mode == "force-backup" and os.path.isdir(out + ".old") \
                and not (p.returncode == 0 and "published" in stdout):
            shutil.rmtree(out + ".old")   # kept only when the forced run replaced the close
    if mode == "noop-no-alert" and command == "close" and p.returncode == 1 \
            and "nothing to do" in stdout:
        stderr = "".join(line for line in stderr.splitlines(True)
                         if not line.startswith("tally: alert:"))
        p.returncode = 0
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    sys.exit(p.returncode)


if __name__ == "__main__":
    main()
