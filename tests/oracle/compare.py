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

from oracle import DATASETS, EXPONENT, GRANT_KINDS, KINDS, NO_CSV, SCHEMAS, TABLES, from_us, \
    list_files

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
    return diffs + compare_listing(out, m)


def manifest_rows(path):
    """What the manifest's `rows` of an output is: a Parquet file's row count, a CSV's data
    rows (records after the header, as the csv module parses them: a quoted line break is
    one record); None for the other files (summary.json, summary.md, report.html), which
    carry no `rows`."""
    if path.endswith(".parquet"):
        return pq.ParquetFile(path).metadata.num_rows
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            return max(0, sum(1 for _ in csv.reader(f)) - 1)
    return None


def compare_listing(out, m):
    """Every file of the output folder (recursively, hidden ones included) except
    `manifest.json` itself is listed once in `outputs`, with the sha256 of its bytes and its
    rows (manifest_rows); no listed file is missing; paths relative, `/`-separated."""
    diffs = []
    paths = [o.get("path") for o in m.get("outputs", [])]
    diffs += [("manifest.json", None, f"outputs {p}", "listed once", f"listed {paths.count(p)}"
               " times") for p in sorted(set(p for p in paths if paths.count(p) > 1))]
    present = set()
    for d, _, names in os.walk(out):
        for n in names:
            rel = os.path.relpath(os.path.join(d, n), out).replace(os.sep, "/")
            if rel != "manifest.json":
                present.add(rel)
    diffs += [("manifest.json", None, f"outputs {p}", "(listed)", "(not listed; in the folder)")
              for p in sorted(present - set(paths))]
    for o in m.get("outputs", []):
        rel = o.get("path")
        path = os.path.join(out, *str(rel).split("/"))
        if rel not in present:
            diffs.append(("manifest.json", None, f"outputs {rel}", "(in the folder)",
                          "(listed; no such file)"))
            continue
        if o.get("sha256") != sha256(path):
            diffs.append(("manifest.json", None, f"outputs {rel} sha256", sha256(path),
                          o.get("sha256")))
        try:
            rows = manifest_rows(path)
        except (UnicodeDecodeError, csv.Error) as e:
            diffs.append(("manifest.json", None, f"outputs {rel} rows", f"({e})", o.get("rows")))
            continue
        if o.get("rows") != rows:
            diffs.append(("manifest.json", None, f"outputs {rel} rows", rows, o.get("rows")))
    return diffs


def compare_run(root, out, command, as_of_text, result, history=None):
    diffs = []
    for table in TABLES[command]:
        diffs += compare_parquet(out, table, result[table])
    for table in TABLES[command]:
        if table not in NO_CSV:
            diffs += compare_csv(out, table, result[table])
    return diffs + compare_summary(out, result["summary"]) + compare_manifest(
        root, out, command, as_of_text, history, result.get("history_read", ())) + \
        check_conservation(out, command)


# ------------------------------------------------------------------------------ CSV exports

FORMULA = ("=", "+", "-", "@", "\t", "\r")   # README: CSV exports — formula injection


def ts_text(us):
    """README: CSV exports — RFC 3339 UTC, fractional seconds only when non-zero (.mmm when
    whole milliseconds, else .uuuuuu: the golden fixtures' rule; tally's README does not say
    how many digits)."""
    return csv_cell(us, "ts")


def credits_text(v):
    """`40.000`, `-0.005`; a zero is `0.000` whatever its sign (a DECIMAL(18,3) has no
    negative zero: the oracle's Decimal arithmetic can make one, e.g. an entry of -0.0004
    credits rounded to thousandths, left unattached)."""
    return f"{(abs(v) if not v else v):.3f}"


def money_text(minor, exponent):
    """`1234` -> `12.34` (2), `1234` (0), `1.234` (3), `-5` -> `-0.05`."""
    if exponent == 0:
        return str(minor)
    sign, a = ("-" if minor < 0 else ""), abs(minor)
    return f"{sign}{a // 10**exponent}.{a % 10**exponent:0{exponent}d}"


def csv_columns(table):
    """The CSV's header: the Parquet's columns, each `X_minor` money column followed by `X`
    (discrepancies.csv: the contract's columns only)."""
    cols = []
    for c, code in SCHEMAS[table]:
        cols.append((c, code))
        if table != "discrepancies" and code == "int64" and c.endswith("_minor"):
            cols.append((c[:-len("_minor")], "money"))
    return cols


def export_cell(row, c, code, neutralise):
    """One cell as tally's README renders it: credits and quantities with exactly 3
    decimals, instants RFC 3339 UTC, lists joined with `;`, null empty, money with the
    currency's exponent; with `neutralise` (every CSV but discrepancies.csv) a text cell
    starting with = + - @ tab CR gets a leading `'`, numbers never."""
    if code == "money":
        v = row[c + "_minor"]
        return "" if v is None else money_text(v, EXPONENT.get(row["currency"], 2))
    v = row[c]
    if v is None:
        return ""
    if code == "credits":
        return credits_text(v)
    if code == "ts":
        return ts_text(v)
    if code in ("int64", "int32"):
        return str(v)
    text = ";".join(v) if code == "list" else v
    return "'" + text if neutralise and text.startswith(FORMULA) else text


def csv_bytes(header, rows):
    """The minimal RFC 4180 rendering (quotes only when a cell holds `,` `"` CR or LF),
    `\n` after every row, UTF-8: for telling a quoting or line-end difference."""
    def q(x):
        return '"' + x.replace('"', '""') + '"' if any(ch in x for ch in ',"\r\n') else x
    return "".join(",".join(q(x) for x in r) + "\n" for r in [header, *rows]).encode()


def compare_csv(out, table, oracle_rows):
    """`TABLE.csv` against the oracle's rows rendered by README's rules (section "CSV
    exports"; discrepancies.csv: the contract's columns, no prefix): it parses (csv module,
    strict, UTF-8), the header, the row count and order, every cell; then the bytes against
    the minimal-quoting rendering with `\n` line ends. `rejects.detail` is free text: the
    CSV must hold tally's own Parquet value of it (neutralised)."""
    name = table + ".csv"
    path = os.path.join(out, name)
    if not os.path.isfile(path):
        return [(name, None, "(file)", "present", "(absent)")]
    try:
        with open(path, newline="", encoding="utf-8") as f:
            parsed = list(csv.reader(f, strict=True))
    except (UnicodeDecodeError, csv.Error) as e:
        return [(name, None, "(parse)", "RFC 4180 CSV, UTF-8", f"{type(e).__name__}: {e}")]
    cols = csv_columns(table)
    header = [c for c, _ in cols]
    if not parsed or parsed[0] != header:
        return [(name, None, "(header)", header, parsed[0] if parsed else "(empty file)")]
    got = parsed[1:]
    neutralise = table != "discrepancies"
    rows = oracle_rows
    if table == "rejects":
        details = pq.read_table(os.path.join(out, "rejects.parquet"),
                                columns=["detail"]).column("detail").to_pylist()
        rows = [dict(r, detail=details[i] if i < len(details) else None)
                for i, r in enumerate(oracle_rows)]
    want = [[export_cell(r, c, code, neutralise) for c, code in cols] for r in rows]
    diffs = [(name, i, "(cells)", len(header), len(r)) for i, r in enumerate(got)
             if len(r) != len(header)]
    if diffs:
        return diffs
    diffs = compare_rows(name, [dict(zip(header, r)) for r in want],
                         [dict(zip(header, r)) for r in got], header)
    if not diffs:
        with open(path, "rb") as f:
            raw = f.read()
        mine = csv_bytes(header, want)
        if raw != mine:
            at = next((i for i, (x, y) in enumerate(zip(raw, mine)) if x != y),
                      min(len(raw), len(mine)))
            line = raw[:at].count(b"\n") + 1
            diffs.append((name, None, f"(bytes, line {line}: same cells; quoting or line ends)",
                          mine[max(0, at - 30):at + 30], raw[max(0, at - 30):at + 30]))
    return diffs


# ------------------------------------------------------------------------------ conservation

def _dec(x):
    return Decimal(x) if isinstance(x, str) else x


def check_conservation(out, command):
    """The contract's conservation identities (section 6) in tally's own summary.json and
    tables, independent of the oracle's figures: usage rows read = events in the window +
    identical duplicates + rejected + outside; per account-period (balances, invoices) used
    = consumed from grants + overage, granted = consumed + remaining (per kind too); at
    close remaining = expired + rolled over + carried; and summary.json's figures equal the
    sums of the tables README's report links them to (report.html table), its conservation
    flags true. -> disagreements (`summary.json (conservation)` or `TABLE (conservation)`,
    row, the identity, its right-hand side, its left-hand side: both from tally's files)."""
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    with open(os.path.join(out, "manifest.json")) as f:
        m = json.load(f)
    T = "summary.json (conservation)"
    diffs = []

    def eq(what, lhs, rhs, row=None, table=T):
        if lhs != rhs:
            diffs.append((table if table == T else f"{table} (conservation)", row, what, rhs,
                          lhs))

    def g(key):
        return _dec(summary_value(s, key))

    def rows(table):
        return pq.read_table(os.path.join(out, table + ".parquet")).to_pylist()

    def total(rs, col):
        return sum((r[col] for r in rs if r[col] is not None), Decimal("0.000"))

    u = "usage."
    eq("usage.rows_read = events_in_window + identical_duplicates + rejected + outside_window",
       g(u + "rows_read"), sum(g(u + k) for k in ("events_in_window", "identical_duplicates",
                                                  "rejected", "outside_window")))
    rejects = rows("rejects")
    for ds in DATASETS:
        files = [i for i in m["inputs"] if i["path"].startswith(ds + "/")]
        eq(f"datasets.{ds}.rows_read = Σ manifest input rows", g(f"datasets.{ds}.rows_read"),
           sum(i.get("rows") or 0 for i in files))
        eq(f"datasets.{ds}.files = manifest input files", g(f"datasets.{ds}.files"), len(files))
        eq(f"datasets.{ds}.rejected = rejects rows", g(f"datasets.{ds}.rejected"),
           sum(r["dataset"] == ds for r in rejects))
    eq("usage.rows_read = datasets.usage.rows_read", g(u + "rows_read"),
       g("datasets.usage.rows_read"))
    eq("usage.rejected = datasets.usage.rejected", g(u + "rejected"), g("datasets.usage.rejected"))
    eq("events.in_window = usage.events_in_window", g("events.in_window"),
       g(u + "events_in_window"))
    disc = rows("discrepancies")
    eq("discrepancies.total = discrepancies rows", g("discrepancies.total"), len(disc))
    eq("discrepancies.abs_delta_credits = Σ |delta_credits|", g("discrepancies.abs_delta_credits"),
       sum((abs(d["delta_credits"]) for d in disc if d["delta_credits"] is not None),
           Decimal("0.000")))
    for k in KINDS:
        of = [d for d in disc if d["kind"] == k]
        eq(f"by_kind.{k}.count = its rows", g(f"by_kind.{k}.count"), len(of))
        eq(f"by_kind.{k}.delta_credits = Σ its delta", g(f"by_kind.{k}.delta_credits"),
           total(of, "delta_credits"))
    eq("credits.granted = consumed + remaining", g("credits.granted"),
       g("credits.consumed") + g("credits.remaining"))
    if command == "reconcile":
        bal = rows("balances")
        for i, r in enumerate(bal):
            used = sum(r[f"{k}_used_credits"] for k in GRANT_KINDS)
            eq("used_credits = Σ {kind}_used_credits + overage_credits", r["used_credits"],
               used + r["overage_credits"], i, "balances")
            eq("granted_credits = Σ {kind}_used_credits + remaining_credits",
               r["granted_credits"], used + r["remaining_credits"], i, "balances")
            eq("granted_credits = Σ {kind}_granted_credits", r["granted_credits"],
               sum(r[f"{k}_granted_credits"] for k in GRANT_KINDS), i, "balances")
            for k in GRANT_KINDS:
                eq(f"{k}_granted_credits = {k}_used_credits + {k}_remaining_credits",
                   r[f"{k}_granted_credits"], r[f"{k}_used_credits"] + r[f"{k}_remaining_credits"],
                   i, "balances")
        eq("credits.granted = Σ balances.granted_credits", g("credits.granted"),
           total(bal, "granted_credits"))
        eq("credits.consumed = Σ balances.{kind}_used_credits", g("credits.consumed"),
           sum((total(bal, f"{k}_used_credits") for k in GRANT_KINDS), Decimal("0.000")))
        eq("credits.overage = Σ balances.overage_credits", g("credits.overage"),
           total(bal, "overage_credits"))
        eq("credits.remaining = Σ balances.remaining_credits", g("credits.remaining"),
           total(bal, "remaining_credits"))
        eq("conservation.account_periods_checked = balances rows",
           s["conservation"].get("account_periods_checked"), len(bal))
    else:
        inv, ren = rows("invoices"), rows("renewals")
        for i, r in enumerate(inv):
            eq("credits_used = Σ credits_from_{kind} + overage_credits", r["credits_used"],
               sum(r[f"credits_from_{k}"] for k in GRANT_KINDS) + r["overage_credits"], i,
               "invoices")
            eq("total_minor = plan_price_minor + overage_amount_minor", r["total_minor"],
               r["plan_price_minor"] + r["overage_amount_minor"], i, "invoices")
            eq("unreconciled_credits = recorded_credits - credits_used",
               r["unreconciled_credits"], r["recorded_credits"] - r["credits_used"], i, "invoices")
        eq("credits.remaining = close.expired_credits + rollover_credits + carried_credits",
           g("credits.remaining"), g("close.expired_credits") + g("close.rollover_credits")
           + g("close.carried_credits"))
        eq("credits.consumed = Σ invoices.credits_from_{kind}", g("credits.consumed"),
           sum((total(inv, f"credits_from_{k}") for k in GRANT_KINDS), Decimal("0.000")))
        eq("credits.overage = Σ invoices.overage_credits", g("credits.overage"),
           total(inv, "overage_credits"))
        eq("credits.recorded = Σ invoices.recorded_credits", g("credits.recorded"),
           total(inv, "recorded_credits"))
        eq("close.invoices = invoices rows", g("close.invoices"), len(inv))
        eq("close.total_minor = Σ invoices.total_minor", g("close.total_minor"),
           sum(r["total_minor"] for r in inv))
        eq("close.overage_amount_minor = Σ invoices.overage_amount_minor",
           g("close.overage_amount_minor"), sum(r["overage_amount_minor"] for r in inv))
        for col, key in [("rollover_credits", "rollover_credits"),
                         ("expired_credits", "expired_credits"),
                         ("carried_grant_credits", "carried_credits")]:
            eq(f"close.{key} = Σ renewals.{col}", g(f"close.{key}"), total(ren, col))
        eq("close.renewed_periods = allocations_next rows", g("close.renewed_periods"),
           len(rows("allocations_next")))
        eq("conservation.account_periods_checked = invoices rows",
           s["conservation"].get("account_periods_checked"), len(inv))
    flags = ["usage_rows", "account_periods", "holds"] + (["close"] if command == "close" else [])
    for k in flags:
        eq(f"conservation.{k}", s.get("conservation", {}).get(k), True)
    return diffs


# ------------------------------------------------------------------------------ golden

def csv_cell(v, code):
    """The golden fixtures' CSV rendering (fixtures/golden/README.md)."""
    if v is None:
        return ""
    if code == "list":
        return ";".join(v)
    if code == "credits":
        return credits_text(v)
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
