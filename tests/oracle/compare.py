"""Compare a tally output folder (or a golden fixture's expected CSVs) with the oracle.

Every function returns a list of disagreements (table, row, column, oracle value, tally
value); row is None for a table-level one (columns, types, row count).
"""
import csv
import hashlib
import json
import os
import tomllib
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq

from oracle import NO_CSV, SCHEMAS, TABLES, from_us, list_files

ARROW = {"str": pa.string(), "ts": pa.timestamp("us", tz="UTC"), "int64": pa.int64(),
         "int32": pa.int32(), "credits": pa.decimal128(18, 3)}


def type_ok(code, t):
    if code == "list":
        return pa.types.is_list(t) and t.value_type == pa.string()
    return t.equals(ARROW[code])


def show(v):
    """A value for a person: instants in RFC 3339, long strings cut."""
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, int) and abs(v) > 10**14:
        try:
            return from_us(v).isoformat().replace("+00:00", "Z")
        except OverflowError:
            return str(v)
    if isinstance(v, str) and len(v) > 60:
        return repr(v[:40]) + f"...({len(v)} chars)"
    return str(v) if isinstance(v, Decimal) else repr(v)


def compare_rows(table, oracle_rows, tally_rows, columns):
    diffs = []
    if len(oracle_rows) != len(tally_rows):
        diffs.append((table, None, "(row count)", len(oracle_rows), len(tally_rows)))
    for i, (o, t) in enumerate(zip(oracle_rows, tally_rows)):
        diffs += [(table, i, c, o[c], t[c]) for c in columns if o[c] != t[c]]
    n = min(len(oracle_rows), len(tally_rows))
    diffs += [(table, i, "(whole row)", o, None) for i, o in enumerate(oracle_rows[n:], n)]
    diffs += [(table, i, "(whole row)", None, t) for i, t in enumerate(tally_rows[n:], n)]
    return diffs


def compare_parquet(out, table, oracle_rows):
    """Column names, order and Arrow types, then every value in row order."""
    schema = SCHEMAS[table]
    t = pq.read_table(os.path.join(out, table + ".parquet"))
    names = [c for c, _ in schema]
    if t.column_names != names:
        return [(table, None, "(columns)", names, t.column_names)]
    diffs = [(table, None, f"{c} (type)", str(ARROW.get(code, "list<string>")),
              str(t.schema.field(c).type)) for c, code in schema
             if not type_ok(code, t.schema.field(c).type)]
    cols = {}
    for c, code in schema:
        col = t.column(c)
        cols[c] = col.cast(pa.int64()).to_pylist() if code == "ts" else col.to_pylist()
    rows = [{c: cols[c][i] for c in names} for i in range(t.num_rows)]
    # rejects.detail is free text (the column and value): only checked to be non-empty.
    compared = [c for c in names if c != "detail"]
    diffs += [(table, i, "detail", "(non-empty)", r["detail"]) for i, r in enumerate(rows)
              if table == "rejects" and not r["detail"]]
    return diffs + compare_rows(table, oracle_rows, rows, compared)


def summary_value(s, key):
    """`datasets.usage.rows_read` -> s["datasets"]["usage"]["rows_read"]; `by_kind.K.count`
    from the list s["discrepancies"]["by_kind"]."""
    if key.startswith("by_kind."):
        _, kind, field = key.split(".")
        return next((x[field] for x in s["discrepancies"]["by_kind"] if x["kind"] == kind), None)
    for part in key.split("."):
        s = s.get(part) if isinstance(s, dict) else None
    return s


def compare_summary(out, oracle_summary):
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    diffs = []
    for key, want in oracle_summary.items():
        got = summary_value(s, key)
        if isinstance(want, Decimal) and isinstance(got, str):
            got = Decimal(got)   # amounts are decimal strings, never JSON floats
        if got != want:
            diffs.append(("summary.json", None, key, want, got))
    if not s.get("conservation", {}).get("holds"):
        diffs.append(("summary.json", None, "conservation.holds", True, s.get("conservation")))
    return diffs


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def compare_manifest(root, out, command, as_of, history=None, history_read=()):
    """Every input read (with rows and sha256) and every output listed, whole. With
    `--history DIR`, each earlier close read is an input `history/{folder}/manifest.json`
    with its sha256 (README: Late events)."""
    with open(os.path.join(out, "manifest.json")) as f:
        m = json.load(f)
    diffs = [("manifest.json", None, k, want, m.get(k))
             for k, want in [("command", command), ("as_of", as_of)] if m.get(k) != want]
    want_inputs = [("pricebook.toml", None)] + [
        (rel, pq.ParquetFile(os.path.join(root, rel)).metadata.num_rows)
        for ds in ("usage", "allocations", "grants", "debits") for rel in list_files(root, ds)]
    want_inputs += [(f"history/{name}/manifest.json", None) for name in history_read]
    got_inputs = {i["path"]: i for i in m["inputs"]}
    if sorted(got_inputs) != sorted(p for p, _ in want_inputs):
        diffs.append(("manifest.json", None, "inputs", sorted(p for p, _ in want_inputs),
                      sorted(got_inputs)))
    for path, rows in want_inputs:
        i = got_inputs.get(path, {})
        file = os.path.join(history, path[len("history/"):]) if path.startswith("history/") \
            else os.path.join(root, path)
        if path in got_inputs and (i.get("sha256") != sha256(file) or i.get("rows") != rows):
            diffs.append(("manifest.json", None, f"inputs {path}", rows, i))
    listed = {o["path"] for o in m["outputs"]}
    for t in TABLES[command] + ["summary.json", "summary.md", "discrepancies.csv"]:
        name = t if "." in t else t + ".parquet"
        if name not in listed:
            diffs.append(("manifest.json", None, "outputs", name, "(not listed)"))
    for o in m["outputs"]:
        path = os.path.join(out, o["path"])
        rows = pq.ParquetFile(path).metadata.num_rows if path.endswith(".parquet") and \
            os.path.isfile(path) else o.get("rows")
        if not os.path.isfile(path) or o["sha256"] != sha256(path) or o.get("rows") != rows:
            diffs.append(("manifest.json", None, f"outputs {o['path']}", "(as listed)", o))
    return diffs


def compare_run(root, out, command, as_of_text, result, history=None):
    diffs = []
    for table in TABLES[command]:
        diffs += compare_parquet(out, table, result[table])
    return diffs + compare_summary(out, result["summary"]) + compare_manifest(
        root, out, command, as_of_text, history, result.get("history_read", ()))


# ------------------------------------------------------------------------------ golden

def csv_cell(v, code):
    """The golden fixtures' CSV rendering (fixtures/golden/README.md)."""
    if v is None:
        return ""
    if code == "list":
        return ";".join(v)
    if code == "credits":
        return f"{v:.3f}"
    if code == "ts":
        d = from_us(v)
        frac = "" if not d.microsecond else f".{d.microsecond // 1000:03d}" \
            if d.microsecond % 1000 == 0 else f".{d.microsecond:06d}"
        return d.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"
    return str(v)


COUNTS = {"usage_rows_read": "usage.rows_read", "events_in_window": "usage.events_in_window",
          "identical_duplicates": "usage.identical_duplicates",
          "usage_rows_rejected": "usage.rejected",
          "usage_rows_outside_window": "usage.outside_window",
          "pending_events": "events.pending", "matched_events": "events.matched"}


def compare_golden(expected_dir, command, result):
    """The oracle's tables rendered as the fixture's CSVs, and its counts.toml."""
    diffs = []
    for table in [t for t in TABLES[command] if t not in NO_CSV]:
        schema = [(c, code) for c, code in SCHEMAS[table] if c != "detail"]
        with open(os.path.join(expected_dir, table + ".csv"), newline="", encoding="utf-8") as f:
            header, *rows = list(csv.reader(f))
        if header != [c for c, _ in schema]:
            diffs.append((table, None, "(columns)", [c for c, _ in schema], header))
            continue
        mine = [{c: csv_cell(r[c], code) for c, code in schema} for r in result[table]]
        diffs += compare_rows(table, mine, [dict(zip(header, r)) for r in rows], header)
    with open(os.path.join(expected_dir, "counts.toml"), "rb") as f:
        counts = tomllib.load(f)
    diffs += [("counts.toml", None, k, result["summary"][COUNTS[k]], v)
              for k, v in counts.items() if result["summary"][COUNTS[k]] != v]
    return diffs


# ------------------------------------------------------------------------------ shards

def tree(folder):
    """{relative path: sha256} of every file under folder, hidden ones included."""
    files = {}
    for d, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(d, n)
            files[os.path.relpath(p, folder)] = sha256(p)
    return files


def _flat(v, at=""):
    """A JSON value as {path: leaf}, for naming the keys two summaries differ at."""
    if isinstance(v, dict):
        return {k: x for key, val in v.items() for k, x in _flat(val, f"{at}.{key}").items()}
    if isinstance(v, list):
        return {k: x for i, val in enumerate(v) for k, x in _flat(val, f"{at}[{i}]").items()}
    return {at or ".": v}


def _file_diffs(name, a, b):
    """Where two files that hash differently differ: rows and columns of a Parquet file,
    keys of a JSON file, the first line of a text file."""
    if name.endswith(".parquet"):
        ta, tb = pq.read_table(a), pq.read_table(b)
        if ta.schema != tb.schema:
            return [(name, None, "(schema)", str(ta.schema), str(tb.schema))]
        ra, rb = ta.to_pylist(), tb.to_pylist()
        diffs = compare_rows(name, ra, rb, ta.column_names)
        if diffs:
            return diffs
        ma, mb = pq.ParquetFile(a).metadata, pq.ParquetFile(b).metadata
        return [(name, None, "(bytes: same rows and values; row groups, encoding or metadata)",
                 f"{ma.num_row_groups} row group(s), {os.path.getsize(a)} bytes",
                 f"{mb.num_row_groups} row group(s), {os.path.getsize(b)} bytes")]
    if name.endswith(".json"):
        with open(a) as f:
            ja = _flat(json.load(f))
        with open(b) as f:
            jb = _flat(json.load(f))
        diffs = [(name, None, k, ja.get(k, "(absent)"), jb.get(k, "(absent)"))
                 for k in sorted(set(ja) | set(jb)) if ja.get(k, "(absent)") != jb.get(k, "(absent)")]
        return diffs or [(name, None, "(bytes: same JSON values)", sha256(a), sha256(b))]
    with open(a, "rb") as f:
        la = f.read().split(b"\n")
    with open(b, "rb") as f:
        lb = f.read().split(b"\n")
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            return [(name, i + 1, "(line)", x.decode(errors="replace"), y.decode(errors="replace"))]
    return [(name, None, "(line count)", len(la), len(lb))]


def compare_trees(one, merged):
    """A merged sharded output folder against the one-machine run's: the same files (every
    file, hidden ones and subfolders included), each byte-identical; for a file that is not,
    where it differs. -> disagreements (file, row, column, one-machine value, merged value)."""
    ta, tb = tree(one), tree(merged)
    diffs = [(p, None, "(file)", "present" if p in ta else "(absent)",
              "present" if p in tb else "(absent)") for p in sorted(set(ta) ^ set(tb))]
    for p in sorted(set(ta) & set(tb)):
        if ta[p] != tb[p]:
            diffs += _file_diffs(p, os.path.join(one, p), os.path.join(merged, p))
    return diffs
