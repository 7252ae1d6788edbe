"""Differential test of tally against the oracle of the contract.

    python tests/oracle/run.py --tally PATH [--seeds 0..300]
                               [--command reconcile|close|both|history]
                               [--tally-args "--groups 3"] [--keep DIR]

First checks the oracle itself against the hand-worked golden fixtures, then, for every
seed, generates a data root, runs tally and the oracle on it and compares every output
table (with `history`: a sequence of closes with `--history`, each compared, then the
no-op and refusal cases; see README.md, "Sequences of closes"). Prints each disagreement (seed, table, row, column, both values) and a one-line
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


# ------------------------------------------------------------------------------ history

def tally_close(tally, extra, root, as_of, settle, out, history=None):
    cmd = [tally, "close", "--data", root, "--as-of", as_of, "--settle", settle, "--out", out,
           "--log-format", "json", *(["--history", history] if history else []), *extra]
    p = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, TALLY_LOG="error"))
    return p, cmd


def check_close(tally, extra, root, as_of, settle, out, history=None):
    """One close run by tally and by the oracle (with `--history` when given); -> diffs."""
    p, cmd = tally_close(tally, extra, root, as_of, settle, out, history)
    if p.returncode != 0:
        return [("tally", None, f"exit {p.returncode}: {' '.join(cmd)}", 0,
                 p.stderr.strip()[-400:])]
    result = oracle.run(root, "close", oracle.parse_instant(as_of), oracle.parse_settle(settle),
                        history=history, own_out=out)
    shown = compare.csv_cell(oracle.parse_instant(as_of), "ts")
    return compare.compare_run(root, out, "close", shown, result, history)


def expect_exit(tally, extra, root, as_of, settle, out, history, code, unchanged=None):
    """A no-op or refused close: exit `code`, and `unchanged` (a folder) not rewritten."""
    before = unchanged and compare.sha256(os.path.join(unchanged, "manifest.json"))
    existed = os.path.exists(out)
    p, cmd = tally_close(tally, extra, root, as_of, settle, out, history)
    diffs = []
    if p.returncode != code:
        diffs.append(("exit", None, " ".join(cmd), code,
                      f"{p.returncode}: {p.stderr.strip()[-300:]}"))
    if unchanged and compare.sha256(os.path.join(unchanged, "manifest.json")) != before:
        diffs.append(("exit", None, f"{unchanged} rewritten", "unchanged", "rewritten"))
    if code != 0 and not existed and os.path.exists(out):
        diffs.append(("exit", None, f"{out} written by a refused run", "absent", "present"))
    return diffs


def run_history_seed(tally, extra, seed, work):
    """A sequence of closes over one root (gen.gen_history); -> {label: disagreements}."""
    base = os.path.join(work, f"seed-{seed}")
    shutil.rmtree(base, ignore_errors=True)
    try:
        plan = gen.gen_history(seed, base)
    except Exception as e:
        return {"history gen": [("error", None, type(e).__name__, str(e)[-400:], None)]}
    root, hist, settle = os.path.join(base, "data"), os.path.join(base, "hist"), plan["settle"]
    with open(os.path.join(base, "as_of.toml"), "w") as f:
        f.write(f'settle = "{settle}"\ncloses = {plan["closes"]}\n'.replace("'", '"'))
    found = {}

    def check(label, fn, *args, **kw):
        try:
            found[label] = fn(tally, extra, *args, **kw)
        except Exception as e:
            found[label] = [("error", None, type(e).__name__, str(e)[-400:], None)]
    runs = []   # (out, as_of, history) of every close made, for the refusals
    for k, as_of in enumerate(plan["closes"]):
        stage = os.path.join(base, f"stage-{k}")
        if os.path.isdir(stage):   # the rows that arrived since the last close
            shutil.copytree(stage, root, dirs_exist_ok=True)
        history = hist if k or plan["first_history"] else None
        n = k + 1
        if k in plan["backups"]:    # a copy at this very as-of: the close skips it
            check(f"close-{n} backup", check_close, root, as_of, settle,
                  os.path.join(hist, f"backup-{n}"), hist)
        if k in plan["futures"]:    # a `_`/`.` folder holding a later close: never read
            later = oracle.from_us(oracle.parse_instant(as_of) + 60 * 86400 * 10**6)
            check(f"close-{n} _future", check_close, root, later.strftime("%Y-%m-%dT%H:%M:%SZ"),
                  settle, os.path.join(hist, f"{plan['futures'][k]}future-{n}"))
        if k in plan["recons"]:     # a reconcile's folder: not a close, not read
            p = subprocess.run([tally, "reconcile", "--data", root, "--as-of", as_of,
                                "--settle", settle, "--out", os.path.join(hist, f"recon-{n}"),
                                "--log-format", "json", *extra], capture_output=True,
                               text=True, env=dict(os.environ, TALLY_LOG="error"))
            if p.returncode:
                found[f"recon-{n}"] = [("tally", None, f"reconcile exit {p.returncode}", 0,
                                        p.stderr.strip()[-300:])]
        # README: Late events — --out directly inside DIR "after folding . and ..".
        out = os.path.join(hist, plan["out_forms"][k] + f"close-{n}")
        check(f"close-{n}", check_close, root, as_of, settle, out, history)
        runs.append((out, as_of, history))
    if plan["refusals"]:
        last_out, last_as_of, last_hist = runs[-1]
        # the same close again: "already closed with the same inputs", exit 0, nothing written
        check("no-op", expect_exit, root, last_as_of, settle, last_out, last_hist, 0,
              unchanged=last_out)
        if len(runs) > 1:   # the first close again, its inputs (data, history) changed: exit 3
            check("re-close-1", expect_exit, root, runs[0][1], settle, runs[0][0], runs[0][2], 3,
                  unchanged=runs[0][0])
        # --out not directly inside the history folder: exit 2
        check("out-nested", expect_exit, root, last_as_of, settle,
              os.path.join(hist, "sub", "close-x"), hist, 2)
        check("out-outside", expect_exit, root, last_as_of, settle,
              os.path.join(base, "close-x"), hist, 2)
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tally", required=True, help="the tally binary to test")
    ap.add_argument("--seeds", default="0..300", help="A..B (B excluded), N or N,M,...")
    ap.add_argument("--command", default="both",
                    choices=["reconcile", "close", "both", "history"],
                    help="history: a sequence of 2-3 closes over one root with --history "
                         "(late events), instead of reconcile/close")
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
    commands = {"both": ["reconcile", "close"], "history": ["history"]}.get(a.command,
                                                                             [a.command])
    start = time.monotonic()
    golden = golden_self_check()
    work = a.keep or tempfile.mkdtemp(prefix="tally-oracle-")
    os.makedirs(work, exist_ok=True)
    runs = bad_runs = disagreements = 0
    for seed in chosen:
        seed_bad = False
        if a.command == "history":
            found = run_history_seed(os.path.abspath(a.tally), shlex.split(a.tally_args), seed,
                                     work)
        else:
            found = run_seed(os.path.abspath(a.tally), shlex.split(a.tally_args), seed,
                             commands, work)
        for command, diffs in found.items():
            runs += 1
            if diffs:
                seed_bad = True
                bad_runs += 1
                disagreements += len(diffs)
                print(f"seed {seed} {command}: {len(diffs)} disagreement(s)"
                      f" (data root: {os.path.join(work, f'seed-{seed}', 'data')})")
                if a.command == "history":
                    print(f"  (history: {os.path.join(work, f'seed-{seed}', 'hist')}; the root"
                          f" holds the last close's rows: stage-K/ are the rows added before"
                          f" close K+1)")
                report(f"seed {seed} {command}", diffs)
        if not a.keep and not seed_bad:
            shutil.rmtree(os.path.join(work, f"seed-{seed}"), ignore_errors=True)
    if not a.keep and not bad_runs:
        shutil.rmtree(work, ignore_errors=True)
    what = "history sequences" if a.command == "history" else "+".join(commands)
    print(f"oracle: {runs} runs ({len(chosen)} seeds x {what}), "
          f"{disagreements} disagreement(s) in {bad_runs} run(s); golden self-check: "
          f"{golden} disagreement(s); {time.monotonic() - start:.0f}s")
    sys.exit(1 if disagreements or golden else 0)


if __name__ == "__main__":
    main()
