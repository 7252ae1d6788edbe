"""Differential test of tally against the oracle of the contract.

    python tests/oracle/run.py --tally PATH [--seeds 0..300]
                               [--command reconcile|close|both|history]
                               [--tally-args "--groups 3"] [--shards N] [--text-ids]
                               [--keep DIR]

First checks the oracle itself against the hand-worked golden fixtures, then, for every
seed, generates a data root, runs tally and the oracle on it and compares every output
table, its CSV copy, the manifest's listing of every output file and the conservation
identities of summary.json (with `history`: a sequence of closes with `--history`, each
compared, then the no-op and refusal cases; see README.md, "Sequences of closes"). With `--shards N`, every
tally run is also made as N shards + `tally merge` into a folder of its own, and the merged
folder must hold the one-machine run's files byte for byte, with the same exit code (see
README.md, "Sharded runs"). Prints each disagreement (seed, table, row, column, both values)
and a one-line summary; exits 1 if there is any disagreement (tally or golden), else 0.
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


# --text-ids: ids and names that a spreadsheet would read as a formula or that need quoting
# (README: CSV exports — the `'` prefix, RFC 4180 quoting), in place of gen.py's plain ones.
TEXT_ACCOUNTS = ["acc-A", "=acc", "-5", "+1", "@a", "\tT", "a,b", 'q"x', "l\nm", "\rcr", "' x",
                 "a\u00e9", "-1.5", "b"]
TEXT_GRANT_IDS = ["g1", "-g", "=g", 'g,"1"', "ga", "@gB", "g10", "+g2", "Ga", "g", "g\u00e9",
                  "\th"]
TEXT_SKUS = [("=p", "-a", '@m,"x"'), ("+p", "a\nb", None), ("=p", "-a", None)]
TEXT_RATE = ('\n[[rates]]\nproduct = "=p"\naction = "-a"\nmodel = "@m,\\"x\\""\nunit = "u"\n'
             'credits_per_unit = "2"\neffective_from = 2026-01-01T00:00:00Z\n')


def use_text_ids():
    """gen.py with TEXT_ACCOUNTS, TEXT_GRANT_IDS, TEXT_SKUS (and a rate for the first, so
    that it reaches invoice_lines); every other choice of the generator as before."""
    gen.ACCOUNTS, gen.GRANT_IDS, gen.SKUS = TEXT_ACCOUNTS, TEXT_GRANT_IDS, gen.SKUS + TEXT_SKUS
    plain = gen.pricebook
    gen.pricebook = lambda R, currency: plain(R, currency) + TEXT_RATE


def seeds(text):
    """`0..300` (end excluded), `7`, or `1,5,9`."""
    if ".." in text:
        a, z = text.split("..")
        return range(int(a), int(z))
    return [int(s) for s in text.split(",")]


def binary_and_seeds(ap, a):
    """The tally binary (absolute) and the seeds of parsed arguments `a` (`--tally`,
    `--seeds`), checked: `ap.error` (exit 2) for a binary that is not executable or seeds
    that are not A..B, N or N,M,... (run.py, explain_check.py and rerun_check.py)."""
    if not (os.path.isfile(a.tally) and os.access(a.tally, os.X_OK)):
        ap.error(f"--tally {a.tally}: not an executable file (build it: cargo build --release)")
    try:
        chosen = list(seeds(a.seeds))
    except ValueError:
        ap.error(f"--seeds {a.seeds}: not A..B, N or N,M,...")
    if not chosen:
        ap.error(f"--seeds {a.seeds}: no seeds (A..B excludes B)")
    return os.path.abspath(a.tally), chosen


def report(label, diffs, other="tally", want_name="oracle"):
    for table, row, column, want, got in diffs[:SHOWN_PER_RUN]:
        if table == "error":
            print(f"  {label}: error: {column}: {want}")
            continue
        where = f"{table}" + ("" if row is None else f" row {row}") + f" {column}"
        if table.endswith("(conservation)"):   # both sides are tally's (compare.check_conservation)
            print(f"  {label}: {where}: right-hand side {compare.show(want)} | left-hand side "
                  f"{compare.show(got)}")
            continue
        print(f"  {label}: {where}: {want_name} {compare.show(want)} | {other} "
              f"{compare.show(got)}")
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


def run_tally(cmd):
    return subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, TALLY_LOG="error"))


# ------------------------------------------------------------------------------ shards

SHARDED = " sharded"   # the suffix of a sharded run's label: `seed 7 close-2 sharded: ...`


def tally_sharded(tally, extra, command, flags, out, n):
    """`tally COMMAND FLAGS --out OUT --shard I/N EXTRA` for every I in 0..N (each writes
    OUT.shards/shard=I/), then, if every shard exited 0, `tally merge --out OUT` (README:
    Commands, "Many machines"). -> (exit code, command lines, stderr, whether the merge
    ran): the code is the first shard's non-zero exit, else the merge's. Every shard runs
    even after one fails (so that a refusal is checked to write nothing from any of them);
    the merge does not (a driver would not start it, and it would only report the missing
    shard)."""
    cmds, first = [], None
    for i in range(n):
        cmd = [tally, command, *flags, "--out", out, "--shard", f"{i}/{n}", *extra]
        p = run_tally(cmd)
        cmds.append(cmd)
        if p.returncode and first is None:
            first = (p.returncode, cmds, p.stderr, False)
    if first:
        return first
    cmd = [tally, "merge", "--out", out, "--log-format", "json"]
    p = run_tally(cmd)
    return p.returncode, cmds + [cmd], p.stderr, True


def check_sharded(tally, extra, n, command, flags, out, one_out, one_code, unchanged=False):
    """The run of `flags` made as n shards + merge into `out` against the same run made on
    one machine into `one_out` (exit `one_code`): the same exit code; when both published
    (exit 0 and not a no-op), every file of `out` byte-identical to `one_out`'s. With
    `unchanged` (a no-op or a refusal over an existing close), `out` must not be rewritten;
    a refused run (exit other than 0) over an `out` that did not exist must not write `out`,
    nor `out.shards` when a shard refused (a merge's refusal comes after the shards wrote).
    -> disagreements (one-machine value, then the sharded one)."""
    before = compare.tree(out) if unchanged else None
    existed = {p: os.path.exists(p) for p in (out, out + ".shards")}
    code, cmds, err, merged = tally_sharded(tally, extra, command, flags, out, n)
    if merged:
        existed.pop(out + ".shards")
    shown = " && ".join(" ".join(c) for c in cmds)
    diffs = []
    if code != one_code:
        diffs.append(("exit", None, shown, one_code, f"{code}: {err.strip()[-300:]}"))
    if unchanged:
        if compare.tree(out) != before:
            diffs.append(("exit", None, f"{out} rewritten", "unchanged", "rewritten"))
    elif code == 0 and one_code == 0:
        diffs += compare.compare_trees(one_out, out)
    if code != 0:
        diffs += [("exit", None, f"{p} written by a refused run", "absent", "present")
                  for p, was in existed.items() if not was and os.path.exists(p)]
    return diffs


def run_one(tally, extra, seed, command, work, as_of, settle, shards=0):
    """Run tally and the oracle on seed's root for one command; -> disagreements, or with
    `shards`, {command: disagreements, command sharded: disagreements}."""
    root = os.path.join(work, f"seed-{seed}", "data")
    out = os.path.join(work, f"seed-{seed}", command)
    shutil.rmtree(out, ignore_errors=True)
    flags = ["--data", root, "--as-of", as_of, "--settle", settle, "--log-format", "json"]
    cmd = [tally, command, *flags[:6], "--out", out, *flags[6:], *extra]
    p = run_tally(cmd)
    if shards:
        sout = os.path.join(work, f"seed-{seed}", "sharded", command)
        shutil.rmtree(sout, ignore_errors=True)
        shutil.rmtree(sout + ".shards", ignore_errors=True)
        os.makedirs(os.path.dirname(sout), exist_ok=True)
        sharded = check_sharded(tally, extra, shards, command, flags, sout, out, p.returncode)
        try:
            one = one_oracle(p, cmd, root, out, command, as_of, settle)
        except Exception as e:
            one = [("error", None, type(e).__name__, str(e)[-400:], None)]
        return {command: one, command + SHARDED: sharded}
    return one_oracle(p, cmd, root, out, command, as_of, settle)


def one_oracle(p, cmd, root, out, command, as_of, settle):
    """A one-machine run `p` (command line `cmd`) against the oracle; -> disagreements."""
    if p.returncode != 0:
        return [("tally", None, f"exit {p.returncode}: {' '.join(cmd)}", 0,
                 p.stderr.strip()[-400:])]
    result = oracle.run(root, command, oracle.parse_instant(as_of), oracle.parse_settle(settle))
    # manifest.json writes the as-of as tally renders it: RFC 3339, fraction only when set
    shown = compare.csv_cell(oracle.parse_instant(as_of), "ts")
    return compare.compare_run(root, out, command, shown, result)


def run_seed(tally, extra, seed, commands, work, shards=0):
    """-> {command: disagreements} (and {command sharded: ...} with `shards`); a generator,
    oracle or reader failure counts as one."""
    def error(e):
        return [("error", None, type(e).__name__, str(e)[-400:], None)]
    try:
        as_ofs = generate(seed, work)
    except Exception as e:
        return {c: error(e) for c in commands}
    found = {}
    for c in commands:
        try:
            got = run_one(tally, extra, seed, c, work, *as_ofs[c], shards=shards)
            found.update(got if shards else {c: got})
        except Exception as e:
            found[c] = error(e)
    return found


# ------------------------------------------------------------------------------ history

def tally_close(tally, extra, root, as_of, settle, out, history=None):
    cmd = [tally, "close", "--data", root, "--as-of", as_of, "--settle", settle, "--out", out,
           "--log-format", "json", *(["--history", history] if history else []), *extra]
    return run_tally(cmd), cmd


def check_close(tally, extra, root, as_of, settle, out, history=None):
    """One close run by tally and by the oracle (with `--history` when given);
    -> (diffs, tally's exit code)."""
    p, cmd = tally_close(tally, extra, root, as_of, settle, out, history)
    if p.returncode != 0:
        return [("tally", None, f"exit {p.returncode}: {' '.join(cmd)}", 0,
                 p.stderr.strip()[-400:])], p.returncode
    result = oracle.run(root, "close", oracle.parse_instant(as_of), oracle.parse_settle(settle),
                        history=history, own_out=out)
    shown = compare.csv_cell(oracle.parse_instant(as_of), "ts")
    return compare.compare_run(root, out, "close", shown, result, history), 0


def expect_exit(tally, extra, root, as_of, settle, out, history, code, unchanged=None):
    """A no-op or refused close: exit `code`, and `unchanged` (a folder) not rewritten (no
    file of it added, removed or changed); -> (diffs, tally's exit code)."""
    before = unchanged and compare.tree(unchanged)
    existed = os.path.exists(out)
    p, cmd = tally_close(tally, extra, root, as_of, settle, out, history)
    diffs = []
    if p.returncode != code:
        diffs.append(("exit", None, " ".join(cmd), code,
                      f"{p.returncode}: {p.stderr.strip()[-300:]}"))
    if unchanged and compare.tree(unchanged) != before:
        diffs.append(("exit", None, f"{unchanged} rewritten", "unchanged", "rewritten"))
    if code != 0 and not existed and os.path.exists(out):
        diffs.append(("exit", None, f"{out} written by a refused run", "absent", "present"))
    return diffs, p.returncode


def run_history_seed(tally, extra, seed, work, shards=0):
    """A sequence of closes over one root (gen.gen_history); -> {label: disagreements}.

    With `shards`, the same sequence is also made with every tally run as that many shards
    + merge, in a history folder of its own (`shist`, holding merged closes and their
    `.shards` folders), each step right after the one-machine step over the same root, and
    compared with it (`{label} sharded`: exit code, and every file when both published)."""
    base = os.path.join(work, f"seed-{seed}")
    shutil.rmtree(base, ignore_errors=True)
    try:
        plan = gen.gen_history(seed, base)
    except Exception as e:
        return {"history gen": [("error", None, type(e).__name__, str(e)[-400:], None)]}
    root, hist, settle = os.path.join(base, "data"), os.path.join(base, "hist"), plan["settle"]
    shist = os.path.join(base, "shist")
    with open(os.path.join(base, "as_of.toml"), "w") as f:
        f.write(f'settle = "{settle}"\ncloses = {plan["closes"]}\n'.replace("'", '"'))
    found = {}

    def check(label, fn, *args, **kw):
        """found[label] = fn's disagreements; -> tally's exit code (None: fn failed)."""
        try:
            found[label], code = fn(tally, extra, *args, **kw)
            return code
        except Exception as e:
            found[label] = [("error", None, type(e).__name__, str(e)[-400:], None)]
            return None

    def sharded(label, code, command, as_of, out, history, one_out, unchanged=False):
        """The step `label` (exit `code` on one machine, output `one_out`) again as shards
        + merge into `out`, with `--history shist` when the one-machine step had one."""
        if not shards or code is None:
            return
        flags = ["--data", root, "--as-of", as_of, "--settle", settle, "--log-format", "json",
                 *(["--history", shist] if history else [])]
        try:
            found[label + SHARDED] = check_sharded(tally, extra, shards, command, flags, out,
                                                   one_out, code, unchanged)
        except Exception as e:
            found[label + SHARDED] = [("error", None, type(e).__name__, str(e)[-400:], None)]

    runs = []   # (out name, as_of, history) of every close made, for the refusals
    for k, as_of in enumerate(plan["closes"]):
        stage = os.path.join(base, f"stage-{k}")
        if os.path.isdir(stage):   # the rows that arrived since the last close
            shutil.copytree(stage, root, dirs_exist_ok=True)
        history = hist if k or plan["first_history"] else None
        n = k + 1
        if k in plan["futures"]:    # a `_`/`.` folder holding a later close: never read
            later = oracle.from_us(oracle.parse_instant(as_of) + 60 * 86400 * 10**6)
            later = later.strftime("%Y-%m-%dT%H:%M:%SZ")
            name = f"{plan['futures'][k]}future-{n}"
            code = check(f"close-{n} _future", check_close, root, later, settle,
                         os.path.join(hist, name))
            sharded(f"close-{n} _future", code, "close", later, os.path.join(shist, name), None,
                    os.path.join(hist, name))
        if k in plan["recons"]:     # a reconcile's folder: not a close, not read
            name = f"recon-{n}"
            p = run_tally([tally, "reconcile", "--data", root, "--as-of", as_of,
                           "--settle", settle, "--out", os.path.join(hist, name),
                           "--log-format", "json", *extra])
            found[f"recon-{n}"] = [("tally", None, f"reconcile exit {p.returncode}", 0,
                                    p.stderr.strip()[-300:])] if p.returncode else []
            sharded(f"recon-{n}", p.returncode, "reconcile", as_of, os.path.join(shist, name),
                    None, os.path.join(hist, name))
        # README: Late events — --out directly inside DIR "after folding . and ..".
        name = plan["out_forms"][k] + f"close-{n}"
        code = check(f"close-{n}", check_close, root, as_of, settle, os.path.join(hist, name),
                     history)
        sharded(f"close-{n}", code, "close", as_of, os.path.join(shist, name), history,
                os.path.join(hist, name))
        if k in plan["backups"] and code == 0 and history:
            # README: Late events — a backup copy of the close kept beside it: read by the
            # later closes (another as-of), skipped by a rerun at its own; and a second close
            # at this as-of into another folder is refused (exit 3), nothing written
            backup = f"backup-{n}"
            for folder in [hist] + ([shist] if shards else []):
                if os.path.isdir(os.path.join(folder, name)):
                    shutil.copytree(os.path.join(folder, name), os.path.join(folder, backup),
                                    copy_function=shutil.copy2)
            second = f"second-{n}"
            code2 = check(f"close-{n} second", expect_exit, root, as_of, settle,
                          os.path.join(hist, second), hist, 3)
            sharded(f"close-{n} second", code2, "close", as_of, os.path.join(shist, second),
                    hist, None)
        runs.append((name, as_of, history))
    if plan["refusals"]:
        last_name, last_as_of, last_hist = runs[-1]
        last_out = os.path.join(hist, last_name)
        # the same close again: "already closed with the same inputs", exit 0, nothing written
        code = check("no-op", expect_exit, root, last_as_of, settle, last_out, last_hist, 0,
                     unchanged=last_out)
        sharded("no-op", code, "close", last_as_of, os.path.join(shist, last_name), last_hist,
                last_out, unchanged=True)
        if len(runs) > 1:   # the first close again, its inputs (data, history) changed: exit 3
            first = os.path.join(hist, runs[0][0])
            code = check("re-close-1", expect_exit, root, runs[0][1], settle, first, runs[0][2],
                         3, unchanged=first)
            sharded("re-close-1", code, "close", runs[0][1], os.path.join(shist, runs[0][0]),
                    runs[0][2], first, unchanged=True)
        # --out not directly inside the history folder: exit 2
        code = check("out-nested", expect_exit, root, last_as_of, settle,
                     os.path.join(hist, "sub", "close-x"), hist, 2)
        sharded("out-nested", code, "close", last_as_of, os.path.join(shist, "sub", "close-x"),
                hist, None)
        code = check("out-outside", expect_exit, root, last_as_of, settle,
                     os.path.join(base, "close-x"), hist, 2)
        sharded("out-outside", code, "close", last_as_of, os.path.join(base, "sclose-x"), hist,
                None)
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
    ap.add_argument("--shards", type=int, default=0, metavar="N",
                    help="also make every tally run as N shards (--shard I/N) + `tally merge` "
                         "into a folder of its own; the merged folder must be byte-identical "
                         "to the one-machine run's, with the same exit code (N >= 2)")
    ap.add_argument("--keep", help="keep every data root and output under this folder")
    ap.add_argument("--text-ids", action="store_true",
                    help="accounts, grant ids, products, actions and models starting with = + - "
                         "@ tab CR or holding , \" and line breaks (the CSV exports' prefix and "
                         "quoting), instead of the generator's plain ones")
    a = ap.parse_args()
    if a.text_ids:
        use_text_ids()
    if a.shards and a.shards < 2:
        ap.error(f"--shards {a.shards}: at least 2 (without the flag: no sharded runs)")
    binary, chosen = binary_and_seeds(ap, a)
    commands = {"both": ["reconcile", "close"], "history": ["history"]}.get(a.command,
                                                                             [a.command])
    start = time.monotonic()
    golden = golden_self_check()
    work = a.keep or tempfile.mkdtemp(prefix="tally-oracle-")
    os.makedirs(work, exist_ok=True)
    runs = bad_runs = disagreements = sharded_runs = 0
    for seed in chosen:
        seed_bad = False
        if a.command == "history":
            found = run_history_seed(binary, shlex.split(a.tally_args), seed,
                                     work, a.shards)
        else:
            found = run_seed(binary, shlex.split(a.tally_args), seed,
                             commands, work, a.shards)
        for command, diffs in found.items():
            runs += 1
            sharded_runs += command.endswith(SHARDED)
            if diffs:
                seed_bad = True
                bad_runs += 1
                disagreements += len(diffs)
                print(f"seed {seed} {command}: {len(diffs)} disagreement(s)"
                      f" (data root: {os.path.join(work, f'seed-{seed}', 'data')})")
                if a.command == "history":
                    print(f"  (history: {os.path.join(work, f'seed-{seed}', 'hist')}"
                          + (f", sharded: {os.path.join(work, f'seed-{seed}', 'shist')}"
                             if a.shards else "")
                          + "; the root holds the last close's rows: stage-K/ are the rows"
                            " added before close K+1)")
                elif command.endswith(SHARDED):
                    print(f"  (one machine: {os.path.join(work, f'seed-{seed}', command.split()[0])}"
                          f", merged: {os.path.join(work, f'seed-{seed}', 'sharded', command.split()[0])})")
                if command.endswith(SHARDED):
                    report(f"seed {seed} {command}", diffs, other=f"{a.shards} shards",
                           want_name="one machine")
                else:
                    report(f"seed {seed} {command}", diffs)
        if not a.keep and not seed_bad:
            shutil.rmtree(os.path.join(work, f"seed-{seed}"), ignore_errors=True)
    if not a.keep and not bad_runs:
        shutil.rmtree(work, ignore_errors=True)
    what = "history sequences" if a.command == "history" else "+".join(commands)
    if a.shards:
        what += f"; {sharded_runs} of the runs {a.shards} shards + merge against one machine"
    what += "; --text-ids" if a.text_ids else ""
    print(f"oracle: {runs} runs ({len(chosen)} seeds x {what}), "
          f"{disagreements} disagreement(s) in {bad_runs} run(s); golden self-check: "
          f"{golden} disagreement(s); {time.monotonic() - start:.0f}s")
    sys.exit(1 if disagreements or golden else 0)


if __name__ == "__main__":
    main()
