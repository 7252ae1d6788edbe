"""Re-runs over an existing output folder and the refusals of `close`, against tally's README.

    python tests/oracle/rerun_check.py --tally PATH [--seeds 0..100]
                                       [--part plain|history|sharded|both|all] [--keep DIR]

For every seed, gen.py writes the same data root (and as-of and settle) run.py uses, and
tally is run over output folders that already hold something: the same close again (a
no-op), the close after its inputs changed (refused, exit 3, naming what changed), the
same with `--force` (the folder then byte-identical to a fresh close of the new inputs,
and the oracle's tables), `reconcile` over a close, `--out` naming a folder that is not a
tally output, a held output lock; with `--part history`, the same over a sequence of closes
with `--history` (gen.gen_history): the last close re-run, changed and forced with a backup
copy of it kept beside it, `--out` not directly inside the history folder, and the next
close, which must read the right earlier closes; with `--part sharded`, the close made as N
shards + `tally merge`: the same sharded close again, its shards after the inputs changed
(refused), `--force` on the merge alone, on the shards only, on both, reconcile shards and
merges over the close, a foreign `--out`, and merges given missing, duplicated, altered or
foreign shards. Expected exit codes and texts come from tally's README only ("Close", "Late
events", "Outputs", "Many machines", the `--force` and `--shard` rows and the exit codes;
jobs/README.md on shards); see tests/oracle/README.md, "Re-runs and refusals". Prints each
disagreement (seed, case, what, expected value | tally's value) and one summary line;
exits 1 on any.
"""
import argparse
import fcntl
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
import gen  # noqa: E402
import oracle  # noqa: E402

SHOWN_PER_RUN = 20
# README: Close — "prints ... and exits 0 without writing"
NOTHING_TO_DO = "already closed with the same inputs; nothing to do"
NOTES = Counter()   # outcomes of the cases the README leaves open (not disagreements)
FIRST_NOTE = {}     # note -> (seed, case) of its first occurrence


KINDS = Counter()   # cases made, by kind (close-2 counted as close-K): coverage
AT = ["", ""]       # the seed and part being run, for notes made without them


def note(seed, case, text, example=""):
    NOTES[text] += 1
    FIRST_NOTE.setdefault(text, (AT[0] if seed is None else seed,
                                 AT[1] if case is None else case, example))


# ------------------------------------------------------------------------------ running tally

class Ran:
    def __init__(self, cmd, p):
        self.cmd, self.code, self.out, self.err = cmd, p.returncode, p.stdout, p.stderr

    def shown(self):
        return " ".join(self.cmd)

    def said(self):
        return (self.err.strip() or self.out.strip())[-300:]


def tally(binary, command, root, as_of, settle, out, history=None, force=False, extra=()):
    """One tally run, logs off (TALLY_LOG=off): stdout and stderr hold only what tally
    prints for a person (README: Exit codes — "Every failure prints one line on stderr")."""
    cmd = [binary, command, "--data", root, "--as-of", as_of, "--settle", settle, "--out", out,
           *(["--history", history] if history else []), *(["--force"] if force else []),
           *extra]
    p = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, TALLY_LOG="off"))
    return Ran(cmd, p)


def snapshot(folder):
    """Everything a write would change: {path: (sha256, mtime_ns, inode)} of every file and
    {path: 'dir'} of every folder under `folder`, the folder's own inode; None if absent."""
    if not os.path.isdir(folder):
        return None
    snap = {".": ("dir", os.stat(folder).st_ino)}
    for d, dirs, names in os.walk(folder):
        for n in dirs:
            snap[os.path.relpath(os.path.join(d, n), folder)] = ("dir",)
        for n in names:
            p = os.path.join(d, n)
            st = os.stat(p)
            snap[os.path.relpath(p, folder)] = (compare.sha256(p), st.st_mtime_ns, st.st_ino)
    return snap


def snapshot_diffs(before, after, what, strict=True):
    """-> disagreements between two snapshots: files added, removed, changed; with `strict`
    (the README's "without writing") also rewritten with the same bytes or replaced."""
    if before is None or after is None:
        return [] if before == after else [
            (what, None, "(folder)", "present" if before else "(absent)",
             "present" if after else "(absent)")]
    diffs = [(what, None, p, "present" if p in before else "(absent)",
              "present" if p in after else "(absent)") for p in sorted(set(before) ^ set(after))]
    for p in sorted(set(before) & set(after)):
        a, b = before[p], after[p]
        if a == b:
            continue
        if a[0] != b[0]:
            diffs.append((what, None, p, f"sha256 {a[0][:12]}", f"sha256 {b[0][:12]}"))
        elif strict:
            diffs.append((what, None, f"{p} (same bytes)", "not rewritten",
                          "rewritten (mtime or inode changed)"))
    return diffs


# README: Late events — a close under --history DIR keeps the history's lock file in DIR
# (the parent of its OUT), as a run keeps its output's lock beside OUT
HISTORY_LOCK = ".tally-history.lock"


def beside(out):
    """The names beside `out` in its parent folder (the parent's listing), or None."""
    parent = os.path.dirname(os.path.abspath(out))
    return set(os.listdir(parent)) if os.path.isdir(parent) else None


def beside_diffs(before, after, out):
    """README: Outputs — a run builds its folder in a staging folder beside it
    (`.NAME.tally-staging-PID`, published by a rename; a killed run's removed by the next)
    and keeps a lock file `.NAME.tally-lock` beside it. Any other name left beside OUT (a
    backup of the replaced folder, a staging folder) is reported."""
    if before is None or after is None:
        return []
    name = os.path.basename(os.path.abspath(out))
    allowed = {name, f".{name}.tally-lock", HISTORY_LOCK}
    return [("beside OUT", None, n, "(absent)", "left by the run")
            for n in sorted(after - before - allowed)]


def one_line(ran):
    """README: Exit codes — "Every failure prints one line on stderr, `tally: <file or
    place>: <what is wrong>`"."""
    lines = ran.err.splitlines()
    if len(lines) != 1 or not lines[0].startswith("tally: "):
        return [("stderr", None, "(one line `tally: ...`)", "one line", ran.err.strip()[-300:]
                 or "(nothing)")]
    return []


# ------------------------------------------------------------------------------ inputs

def inputs_now(root, history, own_out, as_of):
    """What the manifest's inputs of this close would be now: {path: sha256} of
    pricebook.toml, every dataset file read (oracle.list_files: `.`/`_` names skipped) and
    `history/{folder}/manifest.json` of every earlier close read (oracle.read_history)."""
    files = {"pricebook.toml": compare.sha256(os.path.join(root, "pricebook.toml"))}
    for ds in oracle.DATASETS:
        for rel in oracle.list_files(root, ds):
            files[rel] = compare.sha256(os.path.join(root, rel))
    if history:
        _, _, read = oracle.read_history(history, own_out, oracle.parse_instant(as_of))
        for name in read:
            files[f"history/{name}/manifest.json"] = compare.sha256(
                os.path.join(history, name, "manifest.json"))
    return files


def inputs_then(out):
    """{path: sha256} of the inputs the close in `out` recorded."""
    with open(os.path.join(out, "manifest.json")) as f:
        return {i["path"]: i.get("sha256") for i in json.load(f)["inputs"]}


def inputs_command(out):
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f).get("command")


def changed_inputs(out, root, history, as_of):
    then, now = inputs_then(out), inputs_now(root, history, out, as_of)
    return sorted(p for p in set(then) | set(now) if then.get(p) != now.get(p))


# ------------------------------------------------------------------------------ changes

def _files(root, ds):
    return [os.path.join(root, rel) for rel in oracle.list_files(root, ds)]


def _write(t, path):
    pq.write_table(t, path)


def _with_column(t, name, values):
    i = t.column_names.index(name)
    return t.set_column(i, name, pa.array(values, t.schema.field(name).type))


def _bumped(v):
    if v is None:
        return 1
    if isinstance(v, Decimal):
        return v + 1 if v.is_finite() else Decimal(1)
    if isinstance(v, float):
        return v + 1.0 if v == v and abs(v) != float("inf") else 1.0
    return v + 1


def change_inputs(R, root, n, kinds=None):
    """Change the data root the way a new export would; -> what was done (text). Kinds:
    a new usage file holding a copy of one row under a new event_id, a usage row dropped, a
    grant's credits changed (or a grant added), a new debits file (a copied entry with a new
    entry_id and other credits), a dataset file removed, a comment added to pricebook.toml
    (no figure changes: only its sha256)."""
    kinds = kinds or ["add-usage", "drop-usage", "grant", "add-debit", "remove-file",
                      "pricebook"]
    kind = R.choice(kinds)
    usage, debits = _files(root, "usage"), _files(root, "debits")
    if kind == "drop-usage" and usage:
        f = R.choice(usage)
        t = pq.read_table(f)
        if t.num_rows > 1:
            i = R.randrange(t.num_rows)
            _write(pa.concat_tables([t.slice(0, i), t.slice(i + 1)]), f)
            return f"drop-usage: row {i} of {os.path.relpath(f, root)}"
        os.remove(f)
        return f"drop-usage: {os.path.relpath(f, root)} (its one row) removed"
    if kind == "grant":
        grants = _files(root, "grants") if os.path.isdir(os.path.join(root, "grants")) else []
        grants = [f for f in grants if pq.read_metadata(f).num_rows]
        if grants:
            f = R.choice(grants)
            t = pq.read_table(f)
            i = R.randrange(t.num_rows)
            vals = t.column("credits").to_pylist()
            vals[i] = _bumped(vals[i])
            _write(_with_column(t, "credits", vals), f)
            return f"grant: credits of row {i} of {os.path.relpath(f, root)} + 1"
        accts = pq.read_table(_files(root, "allocations")[0]).column("account_id").to_pylist()
        gen.write_dataset(R, root, "grants", [dict(
            grant_id=f"rerun-g{n}", account_id=accts[0], kind="promo", credits=Decimal(9),
            effective_at=oracle.parse_instant("2020-01-01T00:00:00Z"), expires_at=None,
            priority=None)], names=[f"rerun-{n}.parquet"])
        return f"grant: grants/rerun-{n}.parquet added"
    if kind == "add-debit" and debits:
        f = R.choice(debits)
        t = pq.read_table(f)
        if t.num_rows:
            i = R.randrange(t.num_rows)
            row = t.slice(i, 1)
            row = _with_column(row, "entry_id", [f"rerun-d{n}"])
            row = _with_column(row, "credits", [_bumped(row.column("credits")[0].as_py())])
            path = os.path.join(root, "debits", f"rerun-{n}.parquet")
            _write(row, path)
            return f"add-debit: debits/rerun-{n}.parquet (row {i} of {os.path.relpath(f, root)})"
    if kind == "remove-file" and usage + debits:
        f = R.choice(usage + debits)
        os.remove(f)
        return f"remove-file: {os.path.relpath(f, root)}"
    if kind == "pricebook" or not usage:
        with open(os.path.join(root, "pricebook.toml"), "a") as f:
            f.write(f"\n# re-exported {n}\n")
        return "pricebook: a comment appended"
    # add-usage (and the fallback of the kinds above when their dataset is empty)
    f = R.choice(usage)
    t = pq.read_table(f)
    i = R.randrange(t.num_rows)
    row = _with_column(t.slice(i, 1), "event_id", [f"rerun-e{n}"])
    path = os.path.join(root, "usage", f"rerun-{n}.parquet")
    _write(row, path)
    return f"add-usage: usage/rerun-{n}.parquet (row {i} of {os.path.relpath(f, root)})"


def unchanged_inputs(R, root):
    """Changes that are no change of the inputs (README: Inputs — `.`/`_` names are
    skipped, and Close — "any other input (per the manifest's sha256)"): a skipped file
    added, an input's modification time moved. -> what was done."""
    usage = _files(root, "usage")
    src = R.choice(usage)
    name = R.choice(["_partial.parquet", ".tmp.parquet", "_staging/x.parquet", "x.parquet.bak"])
    dst = os.path.join(root, "usage", name)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copy(src, dst)
    f = R.choice(usage)
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 3_600 * 10**9))
    return f"usage/{name} added, {os.path.relpath(f, root)} touched"


# ------------------------------------------------------------------------------ checks

class Case:
    """The disagreements of one case: (what, row, column, expected, tally's)."""
    def __init__(self, want_name="README", got_name="tally"):
        self.diffs, self.want_name, self.got_name = [], want_name, got_name


def exit_diff(ran, want):
    if ran.code in (want if isinstance(want, tuple) else (want,)):
        return []
    return [("exit", None, ran.shown(), want, f"{ran.code}: {ran.said()}")]


def oracle_diffs(root, out, command, as_of, settle, history=None):
    """The published folder against the oracle (compare.compare_run: every table, its CSV,
    summary.json, the manifest's inputs and listing, conservation)."""
    result = oracle.run(root, command, oracle.parse_instant(as_of), oracle.parse_settle(settle),
                        history=history, own_out=out)
    shown = compare.csv_cell(oracle.parse_instant(as_of), "ts")
    return compare.compare_run(root, out, command, shown, result, history)


def publish_case(binary, command, root, as_of, settle, out, history=None, force=False):
    """A run that must publish: exit 0, then the folder against the oracle, nothing but the
    lock left beside it. -> (Case, Ran)."""
    c = Case("oracle")
    side = beside(out)
    ran = tally(binary, command, root, as_of, settle, out, history, force)
    c.diffs += exit_diff(ran, 0)
    c.diffs += beside_diffs(side, beside(out), out)
    if ran.code == 0:
        c.diffs += oracle_diffs(root, out, command, as_of, settle, history)
    return c, ran


def noop_case(binary, root, as_of, settle, out, history=None, force=False):
    """README: Close — "Re-running `close` with the same inputs, as-of and settle over its
    output folder prints "already closed with the same inputs; nothing to do" and exits 0
    without writing"."""
    c = Case()
    before, side = snapshot(out), beside(out)
    ran = tally(binary, "close", root, as_of, settle, out, history, force)
    c.diffs += exit_diff(ran, 0)
    if NOTHING_TO_DO not in ran.out + ran.err:
        c.diffs.append(("message", None, "(stdout or stderr)", NOTHING_TO_DO,
                        ran.said() or "(nothing)"))
    c.diffs += snapshot_diffs(before, snapshot(out), "OUT")
    c.diffs += beside_diffs(side, beside(out), out)
    return c, ran


def refused_case(binary, command, root, as_of, settle, out, want, history=None, force=False,
                 names=(), extra=()):
    """A refused run: exit `want`, one stderr line `tally: ...`, the folder not written (or
    not created), nothing but the lock beside it; `names`: the changed inputs, at least one
    of which the line must name (README: Close — "refuses with exit 3 naming what
    changed")."""
    c = Case()
    before, side = snapshot(out), beside(out)
    parent = os.path.dirname(os.path.abspath(out))
    ran = tally(binary, command, root, as_of, settle, out, history, force, extra)
    c.diffs += exit_diff(ran, want)
    c.diffs += one_line(ran)
    c.diffs += snapshot_diffs(before, snapshot(out), "OUT")
    c.diffs += beside_diffs(side, beside(out), out)
    if side is None and os.path.exists(parent):
        c.diffs.append(("OUT's parent", None, parent, "(absent)", "created by a refused run"))
    if names and not any(named(p, ran.err) for p in names):
        c.diffs.append(("message", None, "(names what changed)", " or ".join(names),
                        ran.err.strip()[-300:] or "(nothing)"))
    elif names:
        k = sum(named(p, ran.err) for p in names)
        note(None, None, "the refusal names every changed input" if k == len(names) else
             "the refusal names some of the changed inputs", f"{k} of {len(names)}")
    return c, ran


def named(path, text):
    """An input named by its manifest path, or a history close by its folder's name."""
    if path in text:
        return True
    return path.startswith("history/") and path.split("/")[1] in text


def alert_case(R, binary, root, as_of, settle, out, seed):
    """README: Close — the no-op exits "1 if the published summary crosses the job's
    `[alert]` thresholds"; Jobs — "A close that finds its work already done (same inputs)
    still checks the thresholds against the published `summary.json`". A job file with the
    same data, out, as-of and settle and thresholds set from the published summary.json
    and invoices.parquet, crossed (max_discrepancies one below the count, min_invoices one
    above) or not (well clear of them, never at the boundary): exit 1 with a `tally: alert:`
    line, or 0 without one; "nothing to do"; the folder not written."""
    with open(os.path.join(out, "summary.json")) as f:
        count = json.load(f)["discrepancies"]["total"]
    invoices = pq.read_metadata(os.path.join(out, "invoices.parquet")).num_rows
    crossed = R.random() < 0.6
    KINDS["plain no-op, job file [alert] " + ("crossed" if crossed else "clear")] += 1
    alert = {}
    if crossed:
        if count > 0 and R.random() < 0.5:
            alert["max_discrepancies"] = count - 1
        else:
            alert["min_invoices"] = invoices + 1
    else:
        alert["max_discrepancies"] = count + 5
        if invoices > 1:
            alert["min_invoices"] = invoices - 1
    job = os.path.join(os.path.dirname(out), "close-job.toml")
    with open(job, "w") as f:
        f.write(f'command = "close"\ndata = {json.dumps(root)}\nout = {json.dumps(out)}\n'
                f'as_of = "{as_of}"\nsettle = "{settle}"\n[alert]\n'
                + "".join(f"{k} = {v}\n" for k, v in alert.items()))
    c = Case()
    before, side = snapshot(out), beside(out)
    cmd = [binary, "close", "--job", job]
    ran = Ran(cmd, subprocess.run(cmd, capture_output=True, text=True,
                                  env=dict(os.environ, TALLY_LOG="off")))
    c.diffs += exit_diff(ran, 1 if crossed else 0)
    if NOTHING_TO_DO not in ran.out + ran.err:
        c.diffs.append(("message", None, "(stdout or stderr)", NOTHING_TO_DO,
                        ran.said() or "(nothing)"))
    alerted = any(line.startswith("tally: alert:") for line in ran.err.splitlines())
    if alerted != crossed:
        c.diffs.append(("stderr", None, f"`tally: alert:` line ({alert})",
                        "present" if crossed else "(absent)", ran.err.strip()[-300:] or
                        "(nothing)"))
    c.diffs += snapshot_diffs(before, snapshot(out), "OUT")
    c.diffs += beside_diffs(side, beside(out), out)
    return c, ran


def rerun_case(binary, root, as_of, settle, out, history=None):
    """The close run again without --force after something may have changed: the no-op
    when the inputs the manifest recorded are the same (by sha256), else exit 3 naming one
    of the changed inputs. -> (Case, Ran, changed inputs)."""
    changed = changed_inputs(out, root, history, as_of)
    if not changed:
        c, ran = noop_case(binary, root, as_of, settle, out, history)
    else:
        c, ran = refused_case(binary, "close", root, as_of, settle, out, 3, history,
                              names=changed)
    return c, ran, changed


def close_made_at(folder, as_of):
    """Whether `folder` is a tally close made at `as_of` (its manifest.json says so)."""
    try:
        with open(os.path.join(folder, "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return (manifest.get("tool") == "tally" and manifest.get("command") == "close"
            and oracle.parse_instant(manifest.get("as_of", "")) == oracle.parse_instant(as_of))


def force_case(binary, root, as_of, settle, out, fresh, history=None):
    """README: the `--force` row — "replace an earlier close of the same output folder
    made from other inputs": exit 0, the folder against the oracle, and (README: Outputs,
    "Same inputs and settings give byte-identical files ... no absolute paths") every file
    byte-identical to a close of the same inputs into an empty folder `fresh`.
    -> (Case against the oracle, Case against the fresh close, Ran)."""
    c, ran = publish_case(binary, "close", root, as_of, settle, out, history, force=True)
    f = Case("fresh close", "forced close")
    if ran.code == 0:
        if history:
            # README: Late events — a second close at one as-of in a history folder is
            # refused (exit 3): the fresh close gets a copy of the history without the
            # closes made at this as-of (which the forced close skipped too), under the same
            # folder names, so that its manifest's history inputs are the same
            copy = fresh + ".history"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(history, copy, ignore=lambda d, names: [
                n for n in names if d == history and close_made_at(os.path.join(d, n), as_of)])
            history, fresh = copy, os.path.join(copy, os.path.basename(fresh))
        shutil.rmtree(fresh, ignore_errors=True)
        made = tally(binary, "close", root, as_of, settle, fresh, history)
        if made.code != 0:
            f.diffs += [("fresh close", None, made.shown(), 0, f"{made.code}: {made.said()}")]
        else:
            f.diffs += compare.compare_trees(fresh, out)
    return c, f, ran


def either_case(binary, command, root, as_of, settle, out, seed, label, history=None,
                force=False):
    """A case the README leaves open between refusing and replacing (see README.md,
    "Re-runs and refusals"): exit 3 with the folder untouched, or exit 0 with the folder
    the oracle's close or reconcile of these settings. Exit 0 with nothing written is a
    disagreement (the README's no-op is for the same inputs, as-of and settle only)."""
    c = Case()
    before, side = snapshot(out), beside(out)
    ran = tally(binary, command, root, as_of, settle, out, history, force)
    after = snapshot(out)
    c.diffs += beside_diffs(side, beside(out), out)
    if ran.code == 3:
        note(seed, label, f"{label}: exit 3", ran.err.strip().replace(out, "OUT"))
        c.diffs += one_line(ran) + snapshot_diffs(before, after, "OUT")
    elif ran.code == 0:
        if not snapshot_diffs(before, after, "OUT", strict=False):
            c.diffs.append(("exit", None, ran.shown(), "3, or 0 and published",
                            f"0 and nothing written: {ran.said()}"))
        else:
            note(seed, label, f"{label}: exit 0, replaced")
            c.want_name = "oracle"
            c.diffs += oracle_diffs(root, out, command, as_of, settle, history)
    else:
        c.diffs += exit_diff(ran, (0, 3))
    return c, ran


class Lock:
    """Hold `.NAME.tally-lock` beside `out` as another tally run would (README: Outputs —
    "A lock file `.NAME.tally-lock` beside the folder keeps two runs off the same output
    path (the second exits 3)"). The README does not say which kind of lock: both a BSD
    flock and a POSIX record lock are held."""
    def __init__(self, out):
        self.path = os.path.join(os.path.dirname(os.path.abspath(out)),
                                 f".{os.path.basename(os.path.abspath(out))}.tally-lock")

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def foreign_folder(R, path):
    """A non-empty folder that is not a tally output (README: Exit codes, 3 — "`--out`
    names a non-empty folder that is not a tally output (tally never wipes other data)").
    -> what it holds."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    kind = R.choice(["file", "subfolder", "hidden", "manifest"])
    if kind == "file":
        with open(os.path.join(path, "notes.txt"), "w") as f:
            f.write("quarterly notes\n")
    elif kind == "subfolder":
        os.makedirs(os.path.join(path, "exports"))
        with open(os.path.join(path, "exports", "x.csv"), "w") as f:
            f.write("a,b\n1,2\n")
    elif kind == "hidden":
        open(os.path.join(path, ".keep"), "w").close()
    else:   # another tool's manifest.json beside its data
        with open(os.path.join(path, "manifest.json"), "w") as f:
            f.write('{"tool": "other", "command": "close"}\n')
        with open(os.path.join(path, "data.csv"), "w") as f:
            f.write("x\n1\n")
    return kind


# ------------------------------------------------------------------------------ plain roots

def plain_seed(binary, seed, work):
    """Re-runs over one root's close (and reconcile) folders. -> {case: Case}."""
    base = os.path.join(work, f"seed-{seed}", "plain")
    shutil.rmtree(base, ignore_errors=True)
    root = os.path.join(base, "data")
    as_ofs = gen.gen(seed, root)
    (as_of, settle), (r_as_of, r_settle) = as_ofs["close"], as_ofs["reconcile"]
    with open(os.path.join(base, "as_of.toml"), "w") as f:
        f.write("".join(f'{c} = ["{a}", "{s}"]\n' for c, (a, s) in as_ofs.items()))
    R = random.Random(f"rerun-{seed}")
    out, found = os.path.join(base, "close"), {}
    with open(os.path.join(base, "cases.txt"), "w") as log:
        step = stepper(found, log)

        ran = step("close", publish_case(binary, "close", root, as_of, settle, out))
        if ran.code != 0:
            return found
        recon = os.path.join(base, "reconcile") if R.random() < 0.3 else None
        if recon:   # a reconcile folder, for reconcile over reconcile and close over reconcile
            step("reconcile", publish_case(binary, "reconcile", root, r_as_of, r_settle, recon))
        step("no-op", noop_case(binary, root, as_of, settle, out))
        if R.random() < 0.4:
            step("no-op, job file [alert]", alert_case(R, binary, root, as_of, settle, out, seed))
        if R.random() < 0.5:
            log.write(f"  (unchanged inputs: {unchanged_inputs(R, root)})\n")
            step("no-op skipped-file", rerun_case(binary, root, as_of, settle, out))
        for n in range(R.choice([1, 1, 2])):
            log.write(f"  (change: {change_inputs(R, root, n)})\n")
        c, ran, changed = rerun_case(binary, root, as_of, settle, out)
        step("changed" if changed else "changed (no input changed)", (c, ran))
        if R.random() < 0.3:
            with Lock(out):
                step("locked", refused_case(binary, "close", root, as_of, settle, out, 3,
                                            force=True))
        c, f, ran = force_case(binary, root, as_of, settle, out, os.path.join(base, "fresh"))
        step("force", (c, ran))
        found["force = fresh close"] = f
        step("force-same", force_same_case(binary, root, as_of, settle, out, seed, "force-same"))
        # reconcile over a close: exit 3; reconcile has no --force (README: Commands, the
        # synopsis and the `--force` row "(close)"): a flag the parser refuses is exit 2
        step("reconcile over close", refused_case(binary, "reconcile", root, r_as_of, r_settle,
                                                  out, 3))
        step("reconcile --force over close", refused_case(binary, "reconcile", root, r_as_of,
                                                          r_settle, out, 2, force=True))
        if R.random() < 0.5:   # the same inputs at another as-of or settle: left open
            if R.random() < 0.5:
                t = oracle.parse_instant(as_of) + R.choice([1, 10**6, 86_400 * 10**6])
                step("other as-of", either_case(binary, "close", root, gen.iso(t), settle, out,
                                                seed, "other as-of"))
            else:
                other = R.choice([s for s in ["15m", "1h", "0s", "5m", "30s"]
                                  if oracle.parse_settle(s) != oracle.parse_settle(settle)])
                step("other settle", either_case(binary, "close", root, as_of, other, out, seed,
                                                 "other settle"))
        foreign = os.path.join(base, "foreign")
        what = foreign_folder(R, foreign)
        for command, force in [("close", False), ("close", True), ("reconcile", False)]:
            step(f"foreign ({what}) {command}{' --force' if force else ''}",
                 refused_case(binary, command, root, as_of if command == "close" else r_as_of,
                              settle if command == "close" else r_settle, foreign, 3,
                              force=force))
        if R.random() < 0.3:
            new = os.path.join(base, "locked-new")
            with Lock(new):
                step("locked (new folder)", refused_case(binary, "close", root, as_of, settle,
                                                         new, 3))
        if R.random() < 0.3:   # an existing empty folder is not "non-empty"
            empty = os.path.join(base, "empty")
            os.makedirs(empty, exist_ok=True)
            step("empty folder", publish_case(binary, "close", root, as_of, settle, empty))
        if recon:
            # the nightly reconcile replaces its own folder (README: Jobs; a tally output is
            # not "a folder that is not a tally output")
            step("reconcile over reconcile", publish_case(binary, "reconcile", root, r_as_of,
                                                          r_settle, recon))
            step("close over reconcile", either_case(binary, "close", root, as_of, settle,
                                                     recon, seed, "close over reconcile"))
            if inputs_command(recon) == "reconcile":   # the close above refused
                step("close --force over reconcile", either_case(
                    binary, "close", root, as_of, settle, recon, seed,
                    "close --force over reconcile", force=True))
    return found


def force_same_case(binary, root, as_of, settle, out, seed, label, history=None):
    """`--force` with the inputs the folder was closed from: the README's no-op paragraph
    says "without writing" for a re-run with the same inputs and attaches "unless --force"
    to the refusal; the `--force` row says it replaces a close "made from other inputs".
    Checked: exit 0 and every file's bytes unchanged; noted: whether it said "nothing to do"
    and whether it rewrote the files."""
    c = Case()
    before = snapshot(out)
    ran = tally(binary, "close", root, as_of, settle, out, history, force=True)
    c.diffs += exit_diff(ran, 0)
    after = snapshot(out)
    c.diffs += snapshot_diffs(before, after, "OUT", strict=False)
    said = NOTHING_TO_DO in ran.out + ran.err
    rewrote = bool(snapshot_diffs(before, after, "OUT"))
    note(seed, label, f"--force, same inputs: {'nothing to do' if said else 'published'}, "
                      f"{'rewritten' if rewrote else 'not rewritten'}")
    return c, ran


# ------------------------------------------------------------------------------ history

def history_seed(binary, seed, work):
    """A sequence of closes with --history (gen.gen_history), then re-runs of its last
    close. -> {case: Case}."""
    base = os.path.join(work, f"seed-{seed}", "history")
    shutil.rmtree(base, ignore_errors=True)
    plan = gen.gen_history(seed, base)
    root, hist, settle = os.path.join(base, "data"), os.path.join(base, "hist"), plan["settle"]
    closes = plan["closes"]
    R = random.Random(f"rerun-history-{seed}")
    found = {}
    with open(os.path.join(base, "as_of.toml"), "w") as f:
        f.write(f'settle = "{settle}"\ncloses = {closes}\n'.replace("'", '"'))
    log = open(os.path.join(base, "cases.txt"), "w")

    step = stepper(found, log)

    def stage(k, only=None):
        src = os.path.join(base, f"stage-{k}")
        if os.path.isdir(src) and only is None:
            shutil.copytree(src, root, dirs_exist_ok=True)
        elif only:
            dst = os.path.join(root, os.path.relpath(only, src))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(only, dst)

    n = len(closes)
    runs = []
    try:
        # closes 1..n-1; the last one is then re-run, changed and forced, and close n follows
        for k in range(n - 1):
            stage(k)
            history = hist if k or plan["first_history"] else None
            name = f"close-{k + 1}"
            ran = step(name, publish_case(binary, "close", root, closes[k], settle,
                                          os.path.join(hist, name), history))
            if ran.code != 0:
                return found
            runs.append((name, closes[k], history))
        name, as_of, history = runs[-1]
        out = os.path.join(hist, name)
        step(f"{name} no-op", noop_case(binary, root, as_of, settle, out, history))
        if len(runs) > 1:   # close-1 again after close-2 exists: its history changed
            first, f_as_of, f_hist = runs[0]
            c, ran, changed = rerun_case(binary, root, f_as_of, settle,
                                         os.path.join(hist, first), f_hist)
            step(f"{first} again", (c, ran))
        # a backup copy of the close kept beside it before the --force rerun (README: Late
        # events): in the history folder (read by the next close, skipped by the rerun at
        # its own as-of), under a `_`/`.` name (never read), outside it, or none
        backup = R.choice([f"backup-{len(runs)}", f"_backup-{len(runs)}",
                           f".backup-{len(runs)}", f"../backup-{len(runs)}", None])
        if backup:
            shutil.copytree(out, os.path.join(hist, backup), copy_function=shutil.copy2)
        log.write(f"  (backup: {backup})\n")
        if backup and not backup.startswith(".."):
            # README: Late events — a close at this run's own as-of is not read: the backup
            # changes none of the rerun's inputs
            c, ran, changed = rerun_case(binary, root, as_of, settle, out, history)
            step(f"{name} no-op, {backup} beside it", (c, ran))
        # what changed: some of the rows the next close would get arrive now, or a change as
        # in the plain cases
        later = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(base, f"stage-{n - 1}"))
                 for f in fs]
        if later and R.random() < 0.6:
            f = R.choice(sorted(later))
            stage(n - 1, only=f)
            log.write(f"  (change: {os.path.relpath(f, base)} arrived early)\n")
        else:
            log.write(f"  (change: {change_inputs(R, root, 0)})\n")
        c, ran, changed = rerun_case(binary, root, as_of, settle, out, history)
        step(f"{name} changed", (c, ran))
        if history:   # README: Late events — --out not directly inside DIR: exit 2, also forced
            bad = R.choice([os.path.join(hist, "sub", name), os.path.join(base, name)])
            step(f"{name} --force, --out not in DIR", refused_case(
                binary, "close", root, as_of, settle, bad, 2, history, force=True))
        fresh = os.path.join(hist if history else base, f"fresh-{len(runs)}")
        c, f, ran = force_case(binary, root, as_of, settle, out, fresh, history)
        step(f"{name} --force", (c, ran))
        found[f"{name} --force = fresh close"] = f
        if os.path.isdir(fresh) and history:   # out of the history folder: not a close of it
            os.rename(fresh, os.path.join(base, os.path.basename(fresh)))
        if ran.code != 0:
            return found
        step(f"{name} --force again", force_same_case(binary, root, as_of, settle, out, seed,
                                                       "history --force again", history))
        # the next close reads the forced close (and the backup when it is read), not the
        # close it replaced: compared whole with the oracle reading the same folder
        stage(n - 1)
        nxt = f"close-{n}"
        step(nxt, publish_case(binary, "close", root, closes[-1], settle,
                               os.path.join(hist, nxt), hist))
        step(f"reconcile over {nxt}", refused_case(binary, "reconcile", root, closes[-1],
                                                   settle, os.path.join(hist, nxt), 3))
    finally:
        log.close()
    return found


# ------------------------------------------------------------------------------ sharded

# README: Many machines — a close shard refused for other inputs gets "the message of a run on
# one machine, advising `--force` on every shard and then the merge"
SHARD_LOCK = re.compile(r"^\.shard=\d+\.tally-lock$")


def shards_of(out):
    return out + ".shards"


def snapshot_shards(folder):
    """snapshot() of a shards folder (OUT.shards) without the shards' lock files
    (`.shard=I.tally-lock`, README: Outputs — a run's lock file stays; taking it is not a
    write of the shards)."""
    snap = snapshot(folder)
    return None if snap is None else {p: v for p, v in snap.items()
                                      if not SHARD_LOCK.match(os.path.basename(p))}


def merge_run(binary, out, shards=(), force=False, extra=()):
    """`tally merge --out OUT [--force] [SHARDS...]`, logs off."""
    cmd = [binary, "merge", "--out", out, *(["--force"] if force else []), *extra, *shards]
    return Ran(cmd, subprocess.run(cmd, capture_output=True, text=True,
                                   env=dict(os.environ, TALLY_LOG="off")))


def shard_case(binary, command, root, as_of, settle, out, i, n, want, force=False, names=(),
               advice=False, noted=None):
    """`COMMAND ... --out OUT --shard I/N` (README: the `--shard` row — "compute only shard I
    of N and write it to `OUT.shards/shard=I/`"). Always: OUT not written (a shard never
    publishes OUT), the other shards' folders not written, nothing left beside OUT but
    `OUT.shards` and lock files, nothing in `OUT.shards` but `shard=I` and its lock. Exit 0:
    `OUT.shards/shard=I/shard.json` there (README: Many machines). Otherwise one stderr line,
    `shard=I` not written and `OUT.shards` not created (refused "before it computes"); with
    `names` the line names every changed input (README: Close — "naming every input that
    changed"), with `advice` it advises `--force` and the merge. -> (Case, Ran)."""
    c = Case()
    sh = shards_of(out)
    mine = os.path.join(sh, f"shard={i}")
    o_before, s_before = snapshot(out), snapshot_shards(sh)
    side, s_side = beside(out), beside(mine)
    ran = tally(binary, command, root, as_of, settle, out, force=force,
                extra=("--shard", f"{i}/{n}"))
    c.diffs += exit_diff(ran, want)
    c.diffs += snapshot_diffs(o_before, snapshot(out), "OUT")
    s_after = snapshot_shards(sh)
    if isinstance(want, tuple):   # left open: noted
        note(None, None, f"{noted}: shard exit {ran.code}", ran.said().replace(out, "OUT"))
    if ran.code == 0 and (want == 0 or isinstance(want, tuple)):
        keep = lambda snap: None if snap is None else {   # noqa: E731
            p: v for p, v in snap.items() if p.split(os.sep)[0] != f"shard={i}"}
        c.diffs += snapshot_diffs(keep(s_before), keep(s_after) if s_before else None,
                                  "OUT.shards (other shards)")
        if not os.path.isfile(os.path.join(mine, "shard.json")):
            c.diffs.append(("OUT.shards", None, f"shard={i}/shard.json", "present",
                            "(absent)"))
    else:
        c.diffs += one_line(ran)
        c.diffs += snapshot_diffs(s_before, s_after, "OUT.shards")
    allowed = {os.path.basename(out), f".{os.path.basename(out)}.tally-lock",
               os.path.basename(sh), f".{os.path.basename(sh)}.tally-lock", HISTORY_LOCK}
    after = beside(out)
    if side is not None and after is not None:
        c.diffs += [("beside OUT", None, x, "(absent)", "left by the run")
                    for x in sorted(after - side - allowed)]
    got = beside(mine)
    if s_side is not None and got is not None:
        c.diffs += [("OUT.shards", None, x, "(absent)", "left by the run")
                    for x in sorted(got - s_side - {f"shard={i}", f".shard={i}.tally-lock"})]
    if names:
        missing = [p for p in names if not named(p, ran.err)]
        if missing:
            c.diffs.append(("message", None, "(names every changed input)", " and ".join(missing),
                            ran.err.strip()[-300:] or "(nothing)"))
    if advice and ran.code != 0 and not ("--force" in ran.err and "merge" in ran.err):
        c.diffs.append(("message", None, "(advises --force on every shard and the merge)",
                        "--force ... merge", ran.err.strip()[-300:] or "(nothing)"))
    return c, ran


def sharded_merge_case(binary, out, want, shards=(), force=False, noop=False, names=(),
                       shard_named=None, either=None):
    """`tally merge --out OUT [--force] [SHARDS]`. Always: the shard folders it read not
    written (README: Many machines — "The merge leaves `OUT.shards/` in place"), nothing left
    beside OUT but its lock. `noop`: exit 0, "nothing to do", OUT not written. Refused:
    one stderr line, OUT not written (not created when absent); `shard_named` (I, N, kind):
    the line names the shard (jobs/README: "the message
    names it and says which `--shard` to rerun", see shard_message). `either` (a label): exit 3 or the no-op,
    OUT not written either way; which one is noted. -> (Case, Ran)."""
    c = Case()
    sources = list(shards) or [shards_of(out)]
    s_before = {s: snapshot_shards(s) for s in sources}
    before, side = snapshot(out), beside(out)
    parent = os.path.dirname(os.path.abspath(out))
    ran = merge_run(binary, out, shards, force)
    if either:
        note(None, None, f"{either}: exit {ran.code}" + (
            ", nothing to do" if ran.code == 0 and NOTHING_TO_DO in ran.out + ran.err else ""),
            (ran.err.strip() or ran.out.strip())[-200:].replace(out, "OUT"))
        want, noop = (3, False) if ran.code == 3 else (0, True)
    c.diffs += exit_diff(ran, want)
    for s in sources:
        c.diffs += snapshot_diffs(s_before[s], snapshot_shards(s), f"shards {os.path.basename(s)}")
    allowed = {os.path.basename(out), f".{os.path.basename(out)}.tally-lock", HISTORY_LOCK} | {
        os.path.basename(s) for s in sources}
    after = beside(out)
    if side is not None and after is not None:
        c.diffs += [("beside OUT", None, x, "(absent)", "left by the run")
                    for x in sorted(after - side - allowed)]
    if noop:
        if NOTHING_TO_DO not in ran.out + ran.err:
            c.diffs.append(("message", None, "(stdout or stderr)", NOTHING_TO_DO,
                            ran.said() or "(nothing)"))
        c.diffs += snapshot_diffs(before, snapshot(out), "OUT")
    elif want != 0:
        c.diffs += one_line(ran)
        c.diffs += snapshot_diffs(before, snapshot(out), "OUT")
        if side is None and os.path.exists(parent):
            c.diffs.append(("OUT's parent", None, parent, "(absent)", "created by a refused run"))
        if names:
            k = sum(named(p, ran.err) for p in names)
            note(None, None, "merge without --force over a close of other inputs: names "
                 + ("every" if k == len(names) else "some" if k else "none")
                 + " of the changed inputs", f"{k} of {len(names)}")
        if shard_named is not None and ran.code != 0:
            c.diffs += shard_message(ran, *shard_named)
    return c, ran


def shard_message(ran, i, n, kind):
    """jobs/README: `tally merge` adds exit 3 for a missing, duplicated, altered or foreign
    shard, "the message names it and says which `--shard` to rerun". Missing and altered:
    the line names shard I (`shard=I`, `shard I`, `I/N`) and says to (re)run it. Duplicated
    (nothing to rerun: the list is wrong) and foreign (with two runs' shards the merge
    cannot tell which run is the odd one, and with N = 2 nothing says it): the line names a
    shard; whether it is I, and whether it says `--shard`, is noted."""
    err = ran.err
    me = re.compile(rf"shard[= ]{i}\b|\b{i}/{n}\b|\b{i} of {n}\b")
    first = re.search(rf"shard[= ](\d+)\b|\b(\d+)/{n}\b", err)
    if not first:
        return [("message", None, "(names the shard)", f"shard={i}" if kind == "strict" else
                 "a shard", err.strip()[-300:] or "(nothing)")]
    if kind == "strict":
        diffs = []
        if not me.search(err):
            diffs.append(("message", None, "(names the shard)", f"shard={i}",
                          err.strip()[-300:] or "(nothing)"))
        if not re.search(r"\b(re)?run\b", err):
            diffs.append(("message", None, "(says which --shard to rerun)", "(re)run ...",
                          err.strip()[-300:] or "(nothing)"))
        note(None, None, "merge refusal (missing, altered): the advice "
             + ("spells --shard I/N" if f"--shard {i}/{n}" in err else "does not spell --shard"))
        return diffs
    if kind == "dup":
        note(None, None, "merge refusal, duplicated shard: "
             + ("names it" if me.search(err) else "names another shard")
             + (", says --shard" if "--shard" in err else ", no --shard advice"))
    else:
        says = first.group(1) or first.group(2)
        note(None, None, f"merge refusal, foreign shard (N={n}): the first shard named "
             + ("is the foreign one" if says == str(i) else "is a good one"),
             err.strip().split(": ", 2)[-1][:160])
    return []


def copy_shards(src, dst, drop=()):
    """A copy of a shards folder (only its `shard=I` folders), without those in `drop`."""
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    for name in sorted(os.listdir(src)):
        if name.startswith("shard=") and int(name[6:]) not in drop:
            shutil.copytree(os.path.join(src, name), os.path.join(dst, name))
    return dst


def stepper(found, log):
    """A part's `step(label, (case, ran))`: the case recorded under its label in `found`,
    the command and its exit and output written to the part's cases.txt (`log`)."""
    def step(label, c_and_ran):
        c, ran = c_and_ran[0], c_and_ran[1]
        found[label] = c
        log.write(f"{label}: {ran.shown()}\n  exit {ran.code}: {ran.said()}\n")
        return ran
    return step


def alter_shard(R, folder):
    """Change one byte of a shard's file, or its shard.json's as-of. -> what was done."""
    files = sorted(f for f in os.listdir(folder) if not f.startswith("."))
    kind = R.choice(["partial.bin", "run file", "shard.json"])
    if kind == "shard.json":
        p = os.path.join(folder, "shard.json")
        with open(p) as f:
            text = f.read()
        new = re.sub(r'("as_of"\s*:\s*")(\d{4})', lambda m: m.group(1) + str(int(m.group(2)) - 1),
                     text, count=1)
        if new != text:
            with open(p, "w") as f:
                f.write(new)
            return "shard.json: as_of a year earlier"
        kind = "partial.bin"
    runs = [f for f in files if f.endswith(".bin") and f != "partial.bin"]
    name = R.choice(runs) if kind == "run file" and runs else "partial.bin"
    p = os.path.join(folder, name)
    with open(p, "r+b") as f:
        data = bytearray(f.read())
        if data:
            k = R.randrange(len(data))
            data[k] ^= 0x01
        else:
            data = bytearray(b"\0")
        f.seek(0)
        f.write(data)
    return f"{name}: one byte changed"


def sharded_seed(binary, seed, work):
    """Re-runs and refusals of a sharded close (README: the `--shard` and `--force` rows,
    "Many machines", Close's re-run paragraph, exit 3; jobs/README on shards) over one
    root's close made as N shards (N = 2 or 3) + `tally merge`. -> {case: Case}."""
    base = os.path.join(work, f"seed-{seed}", "sharded")
    shutil.rmtree(base, ignore_errors=True)
    root = os.path.join(base, "data")
    as_ofs = gen.gen(seed, root)
    (as_of, settle), (r_as_of, r_settle) = as_ofs["close"], as_ofs["reconcile"]
    R = random.Random(f"rerun-sharded-{seed}")
    n = R.choice([2, 3])
    with open(os.path.join(base, "as_of.toml"), "w") as f:
        f.write(f'close = ["{as_of}", "{settle}"]\nreconcile = ["{r_as_of}", "{r_settle}"]\n'
                f"shards = {n}\n")
    out, found = os.path.join(base, "close"), {}
    sh = shards_of(out)
    log = open(os.path.join(base, "cases.txt"), "w")

    step = stepper(found, log)

    def shards_all(label, want, **kw):
        """Every shard I of N; -> whether every one exited `want`."""
        ok = True
        for i in range(n):
            ran = step(f"{label}: shard {i}/N", shard_case(binary, "close", root, as_of, settle,
                                                         out, i, n, want, **kw))
            ok = ok and ran.code == want
        return ok

    def fresh_close(label, folder):
        """A one-machine close of the current inputs into an empty folder."""
        shutil.rmtree(folder, ignore_errors=True)
        made = tally(binary, "close", root, as_of, settle, folder)
        log.write(f"({label}): {made.shown()}\n  exit {made.code}: {made.said()}\n")
        return made

    def against_one(label, folder):
        f = Case("one machine", "merged")
        made = fresh_close(label, folder)
        if made.code != 0:
            f.diffs.append(("one-machine close", None, made.shown(), 0,
                            f"{made.code}: {made.said()}"))
        else:
            f.diffs += compare.compare_trees(folder, out)
        found[label] = f

    try:
        # 1. the sharded close: shards write OUT.shards/shard=I only, the merge publishes OUT
        if not shards_all("close", 0):
            return found
        if os.path.exists(out):
            c = Case()
            c.diffs.append(("OUT", None, "(after the shards, before the merge)", "(absent)",
                            "present"))
            found["close: OUT before the merge"] = c
        c = Case("oracle")
        side = beside(out)
        ran = merge_run(binary, out)
        c.diffs += exit_diff(ran, 0)
        c.diffs += beside_diffs(side, beside(out), out)
        if ran.code == 0:
            c.diffs += oracle_diffs(root, out, "close", as_of, settle)
            if not os.path.isdir(sh):   # README: "The merge leaves `OUT.shards/` in place"
                c.diffs.append(("OUT.shards", None, "(after the merge)", "present", "(absent)"))
        step("close: merge", (c, ran))
        if ran.code != 0:
            return found
        against_one("close = one machine", os.path.join(base, "one"))

        # 2. the same sharded close again: shards compute as usual, the merge is the no-op
        old = snapshot_shards(sh)
        shards_all("no-op", 0)
        new = snapshot_shards(sh)
        same = {p: v[0] for p, v in old.items() if v[0] != "dir" and "/" in p} == \
            {p: v[0] for p, v in new.items() if v[0] != "dir" and "/" in p}
        note(seed, "no-op", "no-op shards: shard files " + ("byte-identical to the first run's"
                                                            if same else "differ in bytes"))
        step("no-op: merge", sharded_merge_case(binary, out, 0, noop=True))
        if R.random() < 0.5:   # "a merge can be run again from it"
            step("no-op: merge again", sharded_merge_case(binary, out, 0, noop=True,
                                                          force=R.random() < 0.5))

        # 3. changed inputs: every shard refused before it computes; the merge then finds
        # the shards already there, which are of the close OUT holds
        kinds = ["add-usage", "drop-usage", "grant", "add-debit", "remove-file", "pricebook"]
        for k in range(R.choice([1, 1, 2])):
            log.write(f"  (change: {change_inputs(R, root, k, kinds)})\n")
        changed = changed_inputs(out, root, None, as_of)
        if not changed:
            log.write("  (no input changed)\n")
            return found
        book = "pricebook.toml" in changed
        shards_all("changed", 3, names=changed, advice=True)
        step("changed: one machine", refused_case(binary, "close", root, as_of, settle, out, 3,
                                                  names=changed))
        # README: Many machines — "the merge also refuses if `pricebook.toml` changed
        # since"; merged into a folder holding the same close is "the usual no-op": which
        # comes first is not said
        step("changed: merge", sharded_merge_case(
            binary, out, 0, noop=True,
            either="merge of the refused shards' predecessors, pricebook.toml changed"
            if book else None))
        # "`--force` on the merge alone merges the shards already there, if any"
        step("changed: merge --force alone", sharded_merge_case(
            binary, out, 0, force=True, noop=True,
            either="merge --force alone, pricebook.toml changed" if book else None))
        if R.random() < 0.3:   # no shards there at all: a missing shard (exit 3)
            aside = sh + "-aside"
            os.rename(sh, aside)
            try:
                step("changed: merge --force alone, no shards",
                     sharded_merge_case(binary, out, 3, force=True, shards=()))
            finally:
                shutil.rmtree(sh, ignore_errors=True)
                os.rename(aside, sh)
        old_shards = copy_shards(sh, os.path.join(base, "old.shards"))

        # 4. --force on every shard: each replaces shard=I; the merge without --force is the
        # close over a close of other inputs (exit 3), with --force it replaces the close
        if not shards_all("force", 0, force=True):
            return found
        if R.random() < 0.7:
            step("force: merge without --force", sharded_merge_case(binary, out, 3,
                                                                    names=changed))
        c = Case("oracle")
        side = beside(out)
        ran = merge_run(binary, out, force=True)
        c.diffs += exit_diff(ran, 0)
        c.diffs += beside_diffs(side, beside(out), out)
        if ran.code == 0:
            c.diffs += oracle_diffs(root, out, "close", as_of, settle)
        step("force: merge --force", (c, ran))
        if ran.code != 0:
            return found
        against_one("force = fresh one-machine close", os.path.join(base, "fresh"))
        if R.random() < 0.5:
            shards_all("no-op after force", 0)
            step("no-op after force: merge", sharded_merge_case(binary, out, 0, noop=True))

        # 5. reconcile shards and their merge over the close: exit 3 (README: exit 3 — "a
        # shard of one, or its `merge` ... a `merge` too, even with `--force`")
        i = R.randrange(n)
        step("reconcile shard over close", shard_case(binary, "reconcile", root, r_as_of,
                                                      r_settle, out, i, n, 3))
        recon = os.path.join(base, "reconcile")
        r_ok = True
        for i in range(n):
            ran = step(f"reconcile: shard {i}/N", shard_case(binary, "reconcile", root, r_as_of,
                                                             r_settle, recon, i, n, 0))
            r_ok = r_ok and ran.code == 0
        if r_ok:   # kept for a foreign shard below (the close over reconcile replaces them)
            recon_shards = copy_shards(shards_of(recon), os.path.join(base, "recon-kept.shards"))
            step("reconcile merge over close", sharded_merge_case(
                binary, out, 3, shards=[shards_of(recon)]))
            step("reconcile merge --force over close", sharded_merge_case(
                binary, out, 3, shards=[shards_of(recon)], force=True))

        if r_ok and R.random() < 0.4:
            # a close made as shards over a reconcile's (merged) folder: README Close — "A close
            # over a folder holding a reconcile's output is refused the same way (exit 3 ...),
            # and `--force` replaces it"; whether its shards refuse or only the merge is not
            # said (Many machines speaks of "a close of other inputs"): noted
            c = Case("oracle")
            ran = merge_run(binary, recon)
            c.diffs += exit_diff(ran, 0)
            if ran.code == 0:
                c.diffs += oracle_diffs(root, recon, "reconcile", r_as_of, r_settle)
            step("reconcile: merge", (c, ran))
            if ran.code == 0:
                codes = [step(f"close over reconcile: shard {i}/N", shard_case(
                    binary, "close", root, as_of, settle, recon, i, n, (0, 3),
                    noted="close shard over a reconcile folder")).code for i in range(n)]
                if all(code == 0 for code in codes):
                    step("close over reconcile: merge", sharded_merge_case(binary, recon, 3))
                for i in range(n):
                    step(f"close --force over reconcile: shard {i}/N", shard_case(
                        binary, "close", root, as_of, settle, recon, i, n, 0, force=True))
                c = Case("oracle")
                ran = merge_run(binary, recon, force=True)
                c.diffs += exit_diff(ran, 0)
                if ran.code == 0:
                    c.diffs += oracle_diffs(root, recon, "close", as_of, settle)
                step("close --force over reconcile: merge --force", (c, ran))

        # 6. --out a folder that is not a tally output: the shard refused as the merge would
        # be (exit 3, before it computes), with --force too; the merge too
        foreign = os.path.join(base, "foreign")
        what = foreign_folder(R, foreign)
        i = R.randrange(n)
        for force in (False, True):
            step(f"foreign ({what}) shard{' --force' if force else ''}", shard_case(
                binary, "close", root, as_of, settle, foreign, i, n, 3, force=force))
        for force in (False, True):
            step(f"foreign ({what}) merge{' --force' if force else ''}", sharded_merge_case(
                binary, foreign, 3, shards=[sh], force=force))

        # 7. merge given a missing, duplicated, altered or foreign shard: exit 3 naming it
        # (README: exit 3; jobs/README: "the message names it and says which `--shard` to
        # rerun"), into a new folder or over the close OUT holds (which the good shards are)
        bad = os.path.join(base, "bad")

        def bad_merge(label, srcs, i, kind="strict", over_close=None):
            if over_close is None:
                over_close = R.random() < 0.3
            target = out if over_close else os.path.join(base, "merged-new")
            shutil.rmtree(os.path.join(base, "merged-new"), ignore_errors=True)
            where = "over the close" if target == out else "new folder"
            step(f"merge {label} ({where})", sharded_merge_case(
                binary, target, 3, shards=srcs, shard_named=(i, n, kind)))

        i = R.randrange(n)
        if R.random() < 0.5:
            bad_merge(f"missing shard={i}", [copy_shards(sh, bad, drop=[i])], i)
        else:
            bad_merge(f"missing shard={i} (listed)",
                      [os.path.join(sh, f"shard={j}") for j in range(n) if j != i], i)
        i = R.randrange(n)
        v = R.choice(["listed twice", "in two folders"])
        if v == "listed twice":
            srcs = [os.path.join(sh, f"shard={j}") for j in range(n)] + \
                [os.path.join(sh, f"shard={i}")]
        else:
            dup = copy_shards(sh, os.path.join(base, "dup"), drop=[j for j in range(n) if j != i])
            srcs = [sh, dup]
        bad_merge(f"duplicated shard={i} ({v})", srcs, i, "dup")
        i = R.randrange(n)
        copy_shards(sh, bad)
        what = alter_shard(R, os.path.join(bad, f"shard={i}"))
        label = f"altered shard={i} ({what.split(':')[0]})"
        if what.startswith("shard.json"):
            bad_merge(label, [bad], i)
        elif R.random() >= 0.3:
            bad_merge(label, [bad], i, over_close=False)
        else:
            # README (merge): over a folder holding the same close the no-op is decided from
            # the shards' shard.json before their other files are read, so a damaged
            # partial.bin or run file is not found there (a new folder refuses it, above).
            step(f"merge {label} (over the close)",
                 sharded_merge_case(binary, out, 0, shards=[bad], noop=True))
        i = R.randrange(n)
        kind = R.choice(["old inputs", "reconcile", "other as-of", "other N"]
                        if r_ok else ["old inputs", "other as-of", "other N"])
        copy_shards(sh, bad, drop=[i])
        if kind == "old inputs":
            src = os.path.join(old_shards, f"shard={i}")
        elif kind == "reconcile":
            src = os.path.join(recon_shards, f"shard={i}")
        else:
            other = os.path.join(base, "other")
            shutil.rmtree(shards_of(other), ignore_errors=True)
            t = gen.iso(oracle.parse_instant(as_of) + R.choice([1, 10**6]))
            m = n + 1 if kind == "other N" else n
            ran = tally(binary, "close", root, as_of if kind == "other N" else t, settle, other,
                        extra=("--shard", f"{i}/{m}"))
            log.write(f"({kind} shard): {ran.shown()}\n  exit {ran.code}: {ran.said()}\n")
            src = os.path.join(shards_of(other), f"shard={i}")
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(bad, f"shard={i}"))
            bad_merge(f"foreign shard={i} ({kind})", [bad], i, "foreign")
    finally:
        log.close()
    return found


# ------------------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tally", required=True, help="the tally binary to test")
    ap.add_argument("--seeds", default="0..100", help="A..B (B excluded), N or N,M,...")
    ap.add_argument("--part", default="all",
                    choices=["plain", "history", "sharded", "both", "all"],
                    help="plain: re-runs over one root's close; history: over a sequence of "
                         "closes with --history; sharded: over a close made as N shards + "
                         "merge; both: plain+history; all: the three")
    ap.add_argument("--keep", help="keep every root and output under this folder")
    a = ap.parse_args()
    import run as runner
    binary, chosen = runner.binary_and_seeds(ap, a)
    parts = {"both": ["plain", "history"], "all": ["plain", "history", "sharded"]}.get(
        a.part, [a.part])
    start = time.monotonic()
    work = a.keep or tempfile.mkdtemp(prefix="tally-rerun-")
    os.makedirs(work, exist_ok=True)
    runs = bad_runs = disagreements = 0
    for seed in chosen:
        seed_bad = False
        for part in parts:
            AT[:] = [seed, part]
            try:
                found = {"plain": plain_seed, "history": history_seed,
                         "sharded": sharded_seed}[part](binary, seed, work)
            except Exception as e:
                c = Case()
                c.diffs.append(("error", None, type(e).__name__, str(e)[-400:], None))
                found = {"(checker)": c}
            for label, c in found.items():
                runs += 1
                KINDS[f"{part} " + re.sub(r"shard=\d", "shard=I", re.sub(
                    r"(close|backup|fresh)-\d", r"\1-K", label))] += 1
                if not c.diffs:
                    continue
                seed_bad = True
                bad_runs += 1
                disagreements += len(c.diffs)
                where = os.path.join(work, f"seed-{seed}", part)
                print(f"seed {seed} {part} {label}: {len(c.diffs)} disagreement(s) "
                      f"(folder: {where}; cases.txt has the commands)")
                for what, row, column, want, got in c.diffs[:SHOWN_PER_RUN]:
                    at = what + ("" if row is None else f" row {row}") + f" {column}"
                    print(f"  seed {seed} {part} {label}: {at}: {c.want_name} "
                          f"{compare.show(want)} | {c.got_name} {compare.show(got)}")
                if len(c.diffs) > SHOWN_PER_RUN:
                    print(f"  seed {seed} {part} {label}: ... and "
                          f"{len(c.diffs) - SHOWN_PER_RUN} more")
        if not a.keep and not seed_bad:
            shutil.rmtree(os.path.join(work, f"seed-{seed}"), ignore_errors=True)
    if not a.keep and not bad_runs:
        shutil.rmtree(work, ignore_errors=True)
    print("cases: " + ", ".join(f"{k} {n}" for k, n in sorted(KINDS.items())))
    for text, k in NOTES.most_common():
        s, case, example = FIRST_NOTE[text]
        print(f"  note: {k} x {text} (first: seed {s} {case}" + (f": {example}" if example
                                                                 else "") + ")")
    print(f"rerun: {runs} cases ({len(chosen)} seeds x {'+'.join(parts)}), {disagreements} "
          f"disagreement(s) in {bad_runs} case(s); {time.monotonic() - start:.0f}s")
    sys.exit(1 if disagreements else 0)


if __name__ == "__main__":
    main()
