"""Differential test of tally against the oracle of the contract.

    python tests/oracle/run.py --tally PATH [--seeds 0..300] [--command reconcile|close|both]
                               [--tally-args "--groups 3"] [--keep DIR]

First checks the oracle itself against the hand-worked golden fixtures, then, for every
seed, generates a data root, runs tally and the oracle on it and compares every output
table. Prints each disagreement (seed, table, row, column, both values) and a one-line
summary; exits 1 if there is any disagreement (tally or golden), else 0.
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
import gen  # noqa: E402
import oracle  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures", "golden")
SHOWN_PER_RUN = 20


def seeds(text):
    """`0..300` (end excluded), `7`, or `1,5,9`."""
    if ".." in text:
        a, z = text.split("..")
        return range(int(a), int(z))
    return [int(s) for s in text.split(",")]


def report(label, diffs, other="tally"):
    for table, row, column, want, got in diffs[:SHOWN_PER_RUN]:
        if table == "error":
            print(f"  {label}: error: {column}: {want}")
            continue
        where = f"{table}" + ("" if row is None else f" row {row}") + f" {column}"
        print(f"  {label}: {where}: oracle {compare.show(want)} | {other} {compare.show(got)}")
    if len(diffs) > SHOWN_PER_RUN:
        print(f"  {label}: ... and {len(diffs) - SHOWN_PER_RUN} more")


def golden_self_check():
    """The oracle against every golden fixture's expected outputs; -> disagreements."""
    total = 0
    for name in sorted(os.listdir(GOLDEN)):
        args_path = os.path.join(GOLDEN, name, "args.toml")
        if not os.path.isfile(args_path):
            continue
        with open(args_path, "rb") as f:
            args = tomllib.load(f)
        result = oracle.run(os.path.join(GOLDEN, name, "data"), args["command"],
                            oracle.parse_instant(args["as_of"]),
                            oracle.parse_settle(args.get("settle", "15m")))
        diffs = compare.compare_golden(os.path.join(GOLDEN, name, "expected"),
                                       args["command"], result)
        report(f"golden {name}", diffs, other="expected")
        total += len(diffs)
    return total


def generate(seed, work):
    """Seed's data root under work/seed-N/data; -> {command: (as_of, settle)}."""
    as_ofs = gen.gen(seed, os.path.join(work, f"seed-{seed}", "data"))
    with open(os.path.join(work, f"seed-{seed}", "as_of.toml"), "w") as f:
        f.write("".join(f'{c} = ["{a}", "{s}"]\n' for c, (a, s) in as_ofs.items()))
    return as_ofs


def run_one(tally, extra, seed, command, work, as_of, settle):
    """Run tally and the oracle on seed's root for one command; -> disagreements."""
    root = os.path.join(work, f"seed-{seed}", "data")
    out = os.path.join(work, f"seed-{seed}", command)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [tally, command, "--data", root, "--as-of", as_of, "--settle", settle, "--out", out,
           "--log-format", "json", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, TALLY_LOG="error"))
    if p.returncode != 0:
        return [("tally", None, f"exit {p.returncode}: {' '.join(cmd)}", 0,
                 p.stderr.strip()[-400:])]
    result = oracle.run(root, command, oracle.parse_instant(as_of), oracle.parse_settle(settle))
    # manifest.json writes the as-of as tally renders it: RFC 3339, fraction only when set
    shown = compare.csv_cell(oracle.parse_instant(as_of), "ts")
    return compare.compare_run(root, out, command, shown, result)


def run_seed(tally, extra, seed, commands, work):
    """-> {command: disagreements}; a generator, oracle or reader failure counts as one."""
    def error(e):
        return [("error", None, type(e).__name__, str(e)[-400:], None)]
    try:
        as_ofs = generate(seed, work)
    except Exception as e:
        return {c: error(e) for c in commands}
    found = {}
    for c in commands:
        try:
            found[c] = run_one(tally, extra, seed, c, work, *as_ofs[c])
        except Exception as e:
            found[c] = error(e)
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tally", required=True, help="the tally binary to test")
    ap.add_argument("--seeds", default="0..300", help="A..B (B excluded), N or N,M,...")
    ap.add_argument("--command", default="both", choices=["reconcile", "close", "both"])
    ap.add_argument("--tally-args", default="",
                    help="more flags for every tally run, e.g. \"--memory-budget 1KiB\" "
                         "(a split run, each account its own group) or \"--groups 3\"")
    ap.add_argument("--keep", help="keep every data root and output under this folder")
    a = ap.parse_args()
    if not (os.path.isfile(a.tally) and os.access(a.tally, os.X_OK)):
        ap.error(f"--tally {a.tally}: not an executable file (build it: cargo build --release)")
    try:
        chosen = list(seeds(a.seeds))
    except ValueError:
        ap.error(f"--seeds {a.seeds}: not A..B, N or N,M,...")
    if not chosen:
        ap.error(f"--seeds {a.seeds}: no seeds (A..B excludes B)")
    commands = ["reconcile", "close"] if a.command == "both" else [a.command]
    start = time.monotonic()
    golden = golden_self_check()
    work = a.keep or tempfile.mkdtemp(prefix="tally-oracle-")
    os.makedirs(work, exist_ok=True)
    runs = bad_runs = disagreements = 0
    for seed in chosen:
        seed_bad = False
        found = run_seed(os.path.abspath(a.tally), shlex.split(a.tally_args), seed, commands, work)
        for command, diffs in found.items():
            runs += 1
            if diffs:
                seed_bad = True
                bad_runs += 1
                disagreements += len(diffs)
                print(f"seed {seed} {command}: {len(diffs)} disagreement(s)"
                      f" (data root: {os.path.join(work, f'seed-{seed}', 'data')})")
                report(f"seed {seed} {command}", diffs)
        if not a.keep and not seed_bad:
            shutil.rmtree(os.path.join(work, f"seed-{seed}"), ignore_errors=True)
    if not a.keep and not bad_runs:
        shutil.rmtree(work, ignore_errors=True)
    print(f"oracle: {runs} runs ({len(chosen)} seeds x {'+'.join(commands)}), "
          f"{disagreements} disagreement(s) in {bad_runs} run(s); golden self-check: "
          f"{golden} disagreement(s); {time.monotonic() - start:.0f}s")
    sys.exit(1 if disagreements or golden else 0)


if __name__ == "__main__":
    main()
