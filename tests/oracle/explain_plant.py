#!/usr/bin/env python3
"""A tally with one deliberate error in `explain`, to show explain_check.py reports it.

    EXPLAIN_PLANT=MODE TALLY_REAL=/path/to/tally explain_plant.py ARGS...

Runs the real binary with ARGS; for `explain ... --json` that exits 0, alters its JSON as
MODE says (every other run is passed through unchanged). Make it executable with a
`#!` line naming a Python that has pyarrow, or call it through a two-line shell script:

    #!/bin/sh
    EXPLAIN_PLANT=used TALLY_REAL=/tmp/oracle-bin/tally-f6299b9 exec python3 explain_plant.py "$@"

MODE:
  used        --account under reconcile: each period's balance.used_credits + 0.001
  total       --account under --close: each invoice's total_minor + 1
  delta       --event: the last discrepancy row's delta_credits - 1.000
  drop-ol     --event/--entry: the event's over_limit_usage row left out
  late        --event under --close --history: late_from null
  quantity    --account under --close: the first invoice line's quantity + 0.001
  missing-0   an id of no row: exit 0 and `{}` instead of exit 2
"""
import json
import os
import subprocess
import sys
from decimal import Decimal


def bump(text, by):
    return f"{Decimal(text) + Decimal(by):.3f}"


def main():
    args = sys.argv[1:]
    mode = os.environ.get("EXPLAIN_PLANT", "")
    p = subprocess.run([os.environ["TALLY_REAL"], *args], capture_output=True, text=True)
    if not args or args[0] != "explain" or "--json" not in args:
        sys.stdout.write(p.stdout)
        sys.stderr.write(p.stderr)
        sys.exit(p.returncode)
    if p.returncode == 2 and mode == "missing-0" and "has " in p.stderr and "no row" in p.stderr:
        print("{}")
        sys.exit(0)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        sys.exit(p.returncode)
    d = json.loads(p.stdout)
    close = "--close" in args
    acct, ev = d.get("account"), d.get("event")
    if mode == "used" and acct and not close:
        for per in acct["periods"]:
            if per["balance"]:
                per["balance"]["used_credits"] = bump(per["balance"]["used_credits"], "0.001")
    elif mode == "total" and acct and close:
        for per in acct["periods"]:
            if per["invoice"]:
                per["invoice"]["total_minor"] += 1
    elif mode == "quantity" and acct and close:
        for per in acct["periods"]:
            if per["invoice"] and per["invoice"]["lines"]:
                line = per["invoice"]["lines"][0]
                line["quantity"] = bump(line["quantity"], "0.001")
                break
    elif mode == "delta" and ev and ev["discrepancies"]:
        row = ev["discrepancies"][-1]
        if row["delta_credits"] is not None:
            row["delta_credits"] = bump(row["delta_credits"], "-1")
    elif mode == "drop-ol" and ev:
        ev["discrepancies"] = [r for r in ev["discrepancies"] if r["kind"] != "over_limit_usage"]
    elif mode == "late" and ev and close and "--history" in args:
        ev["late_from"] = None
    json.dump(d, sys.stdout, indent=2, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
