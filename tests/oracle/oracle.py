"""Independent oracle of the data contract (../shared/CONTRACT.md) for `tally reconcile`
and `tally close`.

Written from the contract text alone; where the contract leaves a point open it follows a
choice documented in tally's README, and every such place carries a comment naming the
README section ("README: <section>"). Amounts are exact `Decimal`s (thousandths), instants
are integer microseconds since the epoch (UTC). Nothing here imports tally code.

    run(root, command, as_of_us, settle_us, history=None, own_out=None)
        -> {table name: [row dict], "summary": {...}, "history_read": [folder names]}

`history`/`own_out` model `tally close --history DIR --out OUT` (README: Late events).
"""
import calendar
import hashlib
import datetime as dt
import json
import math
import os
import tomllib
from decimal import Decimal, ROUND_HALF_EVEN, getcontext
from fractions import Fraction

import pyarrow as pa
import pyarrow.parquet as pq

getcontext().prec = 200
MILLI = Decimal("0.001")
ZERO = Decimal("0.000")
LIMIT = Decimal(10) ** 15
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# README: Inputs — instants outside years 0001-9999 are bad_value.
FIRST_US = -62_135_596_800 * 10**6          # 0001-01-01T00:00:00Z
END_US = 253_402_300_800 * 10**6            # 10000-01-01T00:00:00Z
MAX_ID_BYTES = 4096                         # README: Inputs — longer strings are bad_value
NEVER = 1 << 63                             # sorts after every instant (expires_at null)

KINDS = ["orphan_debit", "manual_adjustment", "account_mismatch", "unpriced_event",
         "charged_failed_event", "missing_debit", "duplicate_debit", "amount_mismatch",
         "conflicting_duplicate", "over_limit_usage",
         # README: Late events — `late_event` comes after over_limit_usage in the kind order.
         "late_event"]
GRANT_KINDS = ["rollover", "plan", "promo", "compensation", "top_up"]
DEFAULT_PRIORITY = {"rollover": 0, "plan": 1, "promo": 2, "compensation": 2, "top_up": 3}
DATASETS = ["usage", "allocations", "grants", "debits"]
# ISO 4217 minor-unit exponents other than 2 (README: Close — codes not listed use 2).
EXPONENT = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "UGX": 0, "XAF": 0, "XOF": 0,
            "PYG": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3, "LYD": 3, "IQD": 3}

# Input columns: (name, kind, required). Kinds: str, ts, num (amount), int (priority).
INPUTS = {
    "usage": [("event_id", "str", 1), ("account_id", "str", 1), ("product", "str", 1),
              ("action", "str", 1), ("model", "str", 0), ("quantity", "num", 1),
              ("status", "str", 1), ("occurred_at", "ts", 1), ("ingested_at", "ts", 0)],
    "allocations": [("account_id", "str", 1), ("plan_id", "str", 1), ("period_start", "ts", 1),
                    ("period_end", "ts", 1), ("included_credits", "num", 1),
                    ("billing_anchor", "ts", 0), ("status", "str", 1)],
    "grants": [("grant_id", "str", 1), ("account_id", "str", 1), ("kind", "str", 1),
               ("credits", "num", 1), ("effective_at", "ts", 1), ("expires_at", "ts", 0),
               ("priority", "int", 0)],
    "debits": [("entry_id", "str", 1), ("account_id", "str", 1), ("event_id", "str", 0),
               ("kind", "str", 1), ("credits", "num", 1), ("recorded_at", "ts", 1)],
}

# Output tables (section 6 / 7): column name and type code (see compare.ARROW).
_CR = "credits"
SCHEMAS = {
    "discrepancies": [("kind", "str"), ("account_id", "str"), ("event_id", "str"),
                      ("entry_ids", "list"), ("occurred_at", "ts"), ("product", "str"),
                      ("action", "str"), ("model", "str"), ("expected_credits", _CR),
                      ("recorded_credits", _CR), ("delta_credits", _CR)],
    "rejects": [("dataset", "str"), ("file", "str"), ("row", "int64"), ("reason", "str"),
                ("detail", "str")],
    "balances": [("account_id", "str"), ("plan_id", "str"), ("period_start", "ts"),
                 ("period_end", "ts"), ("granted_credits", _CR), ("used_credits", _CR),
                 ("overage_credits", _CR), ("remaining_credits", _CR)]
                + [(f"{k}_{x}_credits", _CR) for k in GRANT_KINDS
                   for x in ("granted", "used", "remaining")],
    "invoices": [("invoice_id", "str"), ("account_id", "str"), ("plan_id", "str"),
                 ("period_start", "ts"), ("period_end", "ts"), ("currency", "str"),
                 ("plan_price_minor", "int64"), ("included_credits", _CR), ("credits_used", _CR)]
                + [(f"credits_from_{k}", _CR) for k in GRANT_KINDS]
                + [("overage_credits", _CR), ("overage_amount_minor", "int64"),
                   ("total_minor", "int64"), ("recorded_credits", _CR),
                   ("unreconciled_credits", _CR)],
    "invoice_lines": [("invoice_id", "str"), ("product", "str"), ("action", "str"),
                      ("model", "str"), ("event_count", "int64"), ("quantity", _CR),
                      ("credits", _CR)],
    "renewals": [("account_id", "str"), ("period_end", "ts"), ("next_period_start", "ts"),
                 ("next_period_end", "ts"), ("plan_id", "str"), ("plan_credits_unused", _CR),
                 ("rollover_credits", _CR), ("expired_credits", _CR),
                 ("next_included_credits", _CR), ("carried_grant_credits", _CR)],
    "allocations_next": [("account_id", "str"), ("plan_id", "str"), ("period_start", "ts"),
                         ("period_end", "ts"), ("included_credits", _CR),
                         ("billing_anchor", "ts"), ("status", "str")],
    "grants_next": [("grant_id", "str"), ("account_id", "str"), ("kind", "str"),
                    ("credits", _CR), ("effective_at", "ts"), ("expires_at", "ts"),
                    ("priority", "int32")],
    # README: Outputs — billed_events.parquet (close; no CSV).
    "billed_events": [("invoice_id", "str"), ("event_id", "str"), ("account_id", "str"),
                      ("occurred_at", "ts"), ("credits", _CR)],
}
TABLES = {"reconcile": ["discrepancies", "rejects", "balances"],
          "close": ["discrepancies", "rejects", "invoices", "invoice_lines", "renewals",
                    "allocations_next", "grants_next", "billed_events"]}
NO_CSV = {"billed_events"}   # README: CSV exports — billed_events has no CSV (no golden CSV)


class _Bad:
    """A value that fails its type's checks (read as `bad_value`)."""


BAD = _Bad()


def q3(d):
    return d.quantize(MILLI, rounding=ROUND_HALF_EVEN)


def b(s):
    """Ids and paths compare as bytes (section 7)."""
    return s.encode()


def to_us(d):
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return (d - EPOCH) // dt.timedelta(microseconds=1)


def from_us(us):
    return EPOCH + dt.timedelta(microseconds=us)


def parse_instant(s):
    return to_us(dt.datetime.fromisoformat(s.replace("Z", "+00:00")))


def stamp(us):
    """README: Close — `YYYYMMDDTHHMMSSZ`, with the fraction of a second when there is one
    (`20261101T000000.5Z`)."""
    text = from_us(us).strftime("%Y%m%dT%H%M%S")
    fraction = us % 10**6
    if fraction:
        text += "." + f"{fraction:06d}".rstrip("0")
    return text + "Z"


def parse_settle(s):
    """`15m`, `900s`, `1h`, `2d` -> microseconds."""
    return int(s[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[s[-1]] * 10**6


# ------------------------------------------------------------------------------ reading

def list_files(root, ds):
    """Relative paths of the `*.parquet` files of a dataset, by bytes; `.`/`_` names skipped."""
    out = []
    for dirpath, dirs, files in os.walk(os.path.join(root, ds)):
        dirs[:] = [d for d in dirs if d[0] not in "._"]
        out += [os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
                for f in files if f[0] not in "._" and f.endswith(".parquet")]
    return sorted(out, key=b)


def _values(col, kind):
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    t = col.type
    if kind == "str":
        return [BAD if v is not None and len(b(v)) > MAX_ID_BYTES else v for v in col.to_pylist()]
    if kind == "ts":
        # README: Inputs — nanoseconds are floored to the microsecond.
        per_us = {"s": Fraction(10**6), "ms": Fraction(1000), "us": Fraction(1),
                  "ns": Fraction(1, 1000)}[t.unit]
        ints = col.cast(pa.int64()).to_pylist()
        us = [None if v is None else math.floor(v * per_us) for v in ints]
        return [v if v is None or FIRST_US <= v < END_US else BAD for v in us]
    if kind == "int":
        # README: Choices — a priority must fit 32 bits (grants_next carries it as INT32).
        return [v if v is None or -2**31 <= v < 2**31 else BAD for v in col.to_pylist()]
    out = []
    for v in col.to_pylist():
        if v is None:
            out.append(None)
        elif isinstance(v, float):
            # A DOUBLE converts from its exact binary value, half-even (section 7).
            bad = math.isnan(v) or math.isinf(v) or abs(v) >= 1e15
            out.append(BAD if bad else q3(Decimal(v)))
        else:
            # Integers and DECIMALs; README: Inputs — the range check is on the value
            # rounded to thousandths, and a DECIMAL quantity with more than 3 places is
            # rounded like a credit amount (README: Choices where the contract is silent).
            d = q3(Decimal(v))
            out.append(BAD if abs(d) >= LIMIT else d)
    return out


def read_dataset(root, ds):
    rows = []
    for rel in list_files(root, ds):
        table = pq.read_table(os.path.join(root, rel))
        cols = {name: _values(table.column(name), kind) if name in table.column_names
                else [None] * table.num_rows for name, kind, _ in INPUTS[ds]}
        for i in range(table.num_rows):
            row = {name: cols[name][i] for name in cols}
            row.update(_file=rel, _row=i)
            rows.append(row)
    return rows


def load_pricebook(root):
    with open(os.path.join(root, "pricebook.toml"), "rb") as f:
        pb = tomllib.load(f)
    plans = {}
    for pid, p in pb.get("plans", {}).items():
        overage = p.get("overage", "block")
        plans[pid] = dict(
            price=Decimal(str(p["price"])), included=q3(Decimal(str(p["included_credits"]))),
            refresh=p.get("refresh", True), cap=q3(Decimal(str(p.get("rollover_cap", "0")))),
            ppc=None if overage == "block" else Decimal(str(overage["price_per_credit"])))
    rates = {}
    for r in pb.get("rates", []):
        key = (r["product"], r["action"], r.get("model") or None)  # "" means no model
        rates.setdefault(key, []).append(dict(
            start=to_us(r["effective_from"]), cpu=Decimal(str(r["credits_per_unit"])),
            inc=Decimal(str(r.get("increment", "1"))), min=Decimal(str(r.get("minimum", "0")))))
    return pb["currency"], plans, rates


def price(rates, product, action, model, quantity, t):
    """Section 3: the credits of a succeeded event, or None when no rate is in effect."""
    def in_effect(key):
        rows = [r for r in rates.get(key, []) if r["start"] <= t]
        return max(rows, key=lambda r: r["start"]) if rows else None
    rate = (model is not None and in_effect((product, action, model))) \
        or in_effect((product, action, None))
    if not rate:
        return None
    units = math.ceil(Fraction(quantity) / Fraction(rate["inc"]))
    return q3(max(rate["min"], units * rate["inc"] * rate["cpu"]))


# ------------------------------------------------------------------------------ history

def read_history(history, own_out, as_of):
    """README: Late events — the earlier closes directly under `history`: every folder whose
    manifest.json says `"command": "close"`, except the run's own output folder (`own_out`,
    after folding `.` and `..`), names starting with `.` or `_`, and closes made at this
    run's own as-of. -> (closed {(account_id, period_start)}, seen {event_id}, [folder])."""
    closed, seen, read = set(), set(), []
    if history is None or not os.path.isdir(history):
        return closed, seen, read   # DIR may not exist yet (the first close creates it)
    own = os.path.normpath(os.path.abspath(own_out)) if own_out else None
    for name in sorted(os.listdir(history), key=b):
        path = os.path.join(history, name)
        if name[0] in "._" or not os.path.isdir(path) \
                or os.path.normpath(os.path.abspath(path)) == own:
            continue
        try:
            with open(os.path.join(path, "manifest.json")) as f:
                manifest = json.load(f)
        except FileNotFoundError:
            continue
        if manifest.get("command") != "close" or parse_instant(manifest["as_of"]) == as_of:
            continue
        inv = pq.read_table(os.path.join(path, "invoices.parquet"),
                            columns=["account_id", "period_start"])
        starts = inv.column("period_start").cast(pa.int64()).to_pylist()
        closed.update(zip(inv.column("account_id").to_pylist(), starts))
        seen.update(pq.read_table(os.path.join(path, "billed_events.parquet"),
                                  columns=["event_id"]).column("event_id").to_pylist())
        read.append(name)
    return closed, seen, read


# ------------------------------------------------------------------------------ the run

def run(root, command, as_of, settle, history=None, own_out=None):
    currency, plans, rates = load_pricebook(root)
    closed, seen, history_read = read_history(history, own_out, as_of)
    read = {ds: read_dataset(root, ds) for ds in DATASETS}
    rejects = []

    def reject(ds, row, reason):
        rejects.append(dict(dataset=ds, file=row["_file"], row=row["_row"], reason=reason))

    def check(ds, row, bad_value):
        """null_required, then bad_value (a bad read or `bad_value(row)`); True if passed."""
        if any(req and row[name] is None for name, _, req in INPUTS[ds]):
            reject(ds, row, "null_required")
        elif any(v is BAD for v in row.values()) or bad_value(row):
            reject(ds, row, "bad_value")
        else:
            return True
        return False

    def first_of_id(ds, rows, id_col):
        """For a repeated id the first row by (file, row) among the valid ones is kept
        (README: Inputs — "among the valid ones"); the others are bad_value."""
        seen, kept = set(), []
        for r in rows:
            if r[id_col] in seen:
                reject(ds, r, "bad_value")
            else:
                seen.add(r[id_col])
                kept.append(r)
        return kept

    # ---- allocations (section 7 order; overlap only among rows that passed the rest)
    cand = []
    for r in read["allocations"]:
        if not check("allocations", r, lambda r: r["included_credits"] < 0
                     or r["period_end"] <= r["period_start"]):
            continue
        if r["status"] not in ("active", "cancelled"):
            reject("allocations", r, "unknown_status")
        elif r["plan_id"] not in plans:
            reject("allocations", r, "unknown_plan")
        else:
            cand.append(r)
    allocs = {}
    for r in cand:
        if any(o is not r and o["account_id"] == r["account_id"] and o["period_start"] <
               r["period_end"] and r["period_start"] < o["period_end"] for o in cand):
            reject("allocations", r, "overlapping_period")
        else:
            allocs.setdefault(r["account_id"], []).append(r)
    for periods in allocs.values():
        periods.sort(key=lambda a: a["period_start"])

    def alloc_at(account, t):
        return next((a for a in allocs.get(account, [])
                     if a["period_start"] <= t < a["period_end"]), None)

    if command == "reconcile":   # the period containing as-of, from its start up to as-of
        def covered(a):
            return a["period_start"] <= as_of < a["period_end"]
    else:                        # every period with period_end <= as-of
        def covered(a):
            # README: Late events — a closed account-period is never closed again.
            return a["period_end"] <= as_of and (a["account_id"], a["period_start"]) not in closed

    # ---- grants
    grants = first_of_id("grants", [r for r in read["grants"] if check(
        "grants", r, lambda r: r["kind"] not in ("rollover", "promo", "compensation", "top_up")
        or r["credits"] <= 0 or (r["expires_at"] is not None
                                 and r["expires_at"] <= r["effective_at"]))], "grant_id")

    # ---- usage: validation, dedup, window
    usage_rows = read["usage"]
    passed = []
    for r in usage_rows:
        if not check("usage", r, lambda r: False):
            continue
        if r["quantity"] < 0:   # README: Choices — after rounding: -0.0004 is 0
            reject("usage", r, "negative_quantity")
        elif r["status"] not in ("succeeded", "failed", "cancelled"):
            reject("usage", r, "unknown_status")
        else:
            r["model"] = r["model"] or None   # an empty model is no model
            passed.append(r)
    copies = {}
    for r in passed:
        copies.setdefault(r["event_id"], []).append(r)
    same = ["account_id", "product", "action", "model", "quantity", "status", "occurred_at"]
    identical, conflicting, events = 0, set(), []
    for eid, rows in copies.items():
        rows.sort(key=lambda r: (r["ingested_at"] is None, r["ingested_at"] or 0,
                                 b(r["_file"]), r["_row"]))
        winner = rows[0]
        for c in rows[1:]:
            # README: Choices — a loser equal to the winner is an identical duplicate
            # even when other copies conflict.
            if all(c[k] == winner[k] for k in same):
                identical += 1
            else:
                conflicting.add(eid)
                reject("usage", c, "conflicting_duplicate")
        events.append(winner)

    # README: Late events — an event an earlier close saw belongs to it: a copy that wins
    # the dedup since and lies in a covered period is not billed again. tally finds such an
    # event by the ids of its valid copies (rows that pass row validation) in closed
    # periods, so only while such a copy is among the inputs.
    closed_copies = set()
    for r in passed:
        a = alloc_at(r["account_id"], r["occurred_at"])
        if a is not None and (a["account_id"], a["period_start"]) in closed:
            closed_copies.add(r["event_id"])

    valid_events, no_alloc_events, window, outside = {}, set(), [], 0
    for e in events:   # section 7 "Window of an event"
        a = alloc_at(e["account_id"], e["occurred_at"])
        if e["occurred_at"] < as_of and a is None:
            reject("usage", e, "no_allocation")
            no_alloc_events.add(e["event_id"])
            continue
        valid_events[e["event_id"]] = e
        if e["occurred_at"] >= as_of:
            outside += 1
            continue
        bill, late = (a if covered(a) else None), False
        if bill is not None and e["event_id"] in seen and e["event_id"] in closed_copies:
            bill = None
        elif bill is None and (a["account_id"], a["period_start"]) in closed \
                and e["event_id"] not in seen:
            # README: Late events — an event of a closed account-period that no earlier close
            # saw is billed on the account's first covered period starting at or after the
            # closed period's end; without one it stays outside (a later close bills it).
            bill = next((c for c in allocs[a["account_id"]] if covered(c)
                         and c["period_start"] >= a["period_end"]), None)
            late = bill is not None
        if bill is None:
            outside += 1
            continue
        e["alloc"], e["entries"], e["late"] = bill, [], late
        e["expected"] = ZERO if e["status"] != "succeeded" else price(
            rates, e["product"], e["action"], e["model"], e["quantity"], e["occurred_at"])
        window.append(e)

    # ---- debits
    entries = first_of_id("debits", [r for r in read["debits"] if check(
        "debits", r, lambda r: r["kind"] not in ("debit", "refund", "adjustment")
        or r["credits"] < 0)], "entry_id")
    unattached, ledger_in, ledger_out = [], 0, 0
    for en in entries:
        eid = en["event_id"]
        if en["recorded_at"] >= as_of:          # ignored, also for a no_allocation event
            ledger_out += 1
        elif eid in no_alloc_events:
            reject("debits", en, "no_allocation")
        elif eid in valid_events:               # follows its event, whatever its account
            e = valid_events[eid]
            if "entries" in e:   # the event is in the window
                e["entries"].append(en)
                ledger_in += 1
            else:
                ledger_out += 1
        else:
            # README: Choices — an entry naming a rejected usage row is unattached.
            a = alloc_at(en["account_id"], en["recorded_at"])
            if a is None:
                reject("debits", en, "no_allocation")
            elif covered(a):
                en["alloc"] = a
                unattached.append(en)
                ledger_in += 1
            else:
                ledger_out += 1

    # ---- consumption (section 4): an account's periods in order share grant balances.
    # README: Choices — a rollover made at one closed period is not a grant of a later
    # period closed in the same run (the input allocations and grants are taken as they are).
    left = {g["grant_id"]: g["credits"] for g in grants}
    by_alloc = {}
    for e in window:
        by_alloc.setdefault(id(e["alloc"]), []).append(e)
    periods = []
    for account in sorted(allocs, key=b):
        for a in filter(covered, allocs[account]):
            periods.append(_consume(a, plans[a["plan_id"]], grants, left,
                                    by_alloc.get(id(a), [])))

    # ---- reconciliation (section 5)
    disc, pending, matched = [], 0, 0
    for e in window:
        ens = e["entries"]
        recorded, expected = net(ens), e["expected"]
        kind = None
        is_pending = (expected is not None and expected > 0 and not ens
                      and as_of - settle <= e["occurred_at"])
        if any(en["account_id"] != e["account_id"] for en in ens):
            kind = "account_mismatch"
        elif expected is None:
            kind = "unpriced_event"
        elif e["status"] != "succeeded" and recorded > 0:
            kind = "charged_failed_event"
        elif is_pending:
            pass   # counted, not reported; it still consumes grants and can be over limit
        elif expected > 0 and not ens:
            kind = "missing_debit"
        elif sum(en["kind"] != "refund" for en in ens) >= 2 and recorded > expected:
            # an event-linked adjustment counts as a debit in the "2 debit entries" test
            kind = "duplicate_debit"
        elif recorded != expected:
            kind = "amount_mismatch"
        pending += is_pending
        matched += kind is None and not is_pending
        kinds = [kind] if kind else []
        if e["event_id"] in conflicting:
            kinds.append("conflicting_duplicate")
        if e["overage"] > 0 and plans[e["alloc"]["plan_id"]]["ppc"] is None:
            kinds.append("over_limit_usage")
        if e["late"]:   # README: Late events — an extra row, the event's own amounts
            kinds.append("late_event")
        for k in kinds:
            # README: Choices — an unpriced event's rows (account_mismatch too) have null
            # expected and delta.
            disc.append(dict(kind=k, account_id=e["account_id"], event_id=e["event_id"],
                             entry_ids=sorted((en["entry_id"] for en in ens), key=b),
                             occurred_at=e["occurred_at"], product=e["product"],
                             action=e["action"], model=e["model"], expected_credits=expected,
                             recorded_credits=recorded,
                             delta_credits=None if expected is None else recorded - expected))
    for en in unattached:
        if en["kind"] == "refund":   # counted in the totals only
            continue
        k = "manual_adjustment" if en["kind"] == "adjustment" and en["event_id"] is None \
            else "orphan_debit"
        disc.append(dict(kind=k, account_id=en["account_id"], event_id=en["event_id"],
                         entry_ids=[en["entry_id"]], occurred_at=None, product=None,
                         action=None, model=None, expected_credits=ZERO,
                         recorded_credits=en["credits"], delta_credits=en["credits"]))
    # README: Choices — a null event_id sorts last among an account's unattached rows.
    disc.sort(key=lambda d: (b(d["account_id"]), d["occurred_at"] is None,
                             d["occurred_at"] or 0, d["event_id"] is None,
                             b(d["event_id"] or ""), KINDS.index(d["kind"]),
                             [b(x) for x in d["entry_ids"]]))
    rejects.sort(key=lambda r: (DATASETS.index(r["dataset"]), b(r["file"]), r["row"]))

    out = dict(discrepancies=disc, rejects=rejects)
    if command == "reconcile":
        out["balances"] = [_balance_row(p) for p in periods]
    else:
        out.update(_close_tables(currency, periods, grants, left, window, unattached))

    # ---- summary.json figures and the conservation check (section 6)
    rejected = sum(r["dataset"] == "usage" for r in rejects)
    assert len(usage_rows) == len(window) + identical + rejected + outside
    def total(amounts):
        return q3(sum(amounts, ZERO))
    summary = {
        "usage.rows_read": len(usage_rows), "usage.events_in_window": len(window),
        "usage.identical_duplicates": identical, "usage.rejected": rejected,
        "usage.outside_window": outside, "events.in_window": len(window),
        "events.pending": pending, "events.matched": matched,
        # README: Outputs — distinct events named by a discrepancy row (not orphan entries)
        "events.with_discrepancy": len({d["event_id"] for d in disc
                                           if d["occurred_at"] is not None}),
        "ledger.rows_read": len(read["debits"]), "ledger.entries_in_window": ledger_in,
        "ledger.outside_window": ledger_out,
        "ledger.rejected": sum(r["dataset"] == "debits" for r in rejects),
        "credits.expected": total(e["expected"] or ZERO for e in window),
        "credits.recorded": total([net(e["entries"]) for e in window] + [net(unattached)]),
        "credits.granted": total(sum(p["granted"].values(), ZERO) for p in periods),
        "credits.consumed": total(sum(p["used"].values(), ZERO) for p in periods),
        "credits.overage": total(p["overage"] for p in periods),
        "discrepancies.total": len(disc),
        "discrepancies.abs_delta_credits": total(abs(d["delta_credits"] or ZERO) for d in disc),
    }
    for ds in DATASETS:
        summary.update({f"datasets.{ds}.files": len(list_files(root, ds)),
                        f"datasets.{ds}.rows_read": len(read[ds]),
                        f"datasets.{ds}.rejected": sum(r["dataset"] == ds for r in rejects)})
    summary["credits.remaining"] = summary["credits.granted"] - summary["credits.consumed"]
    for k in KINDS:
        rows = [d for d in disc if d["kind"] == k]
        summary[f"by_kind.{k}.count"] = len(rows)
        summary[f"by_kind.{k}.delta_credits"] = total(d["delta_credits"] or ZERO for d in rows)
    if command == "close":
        inv = out["invoices"]
        summary.update({
            "close.invoices": len(inv), "close.total_minor": sum(i["total_minor"] for i in inv),
            "close.overage_amount_minor": sum(i["overage_amount_minor"] for i in inv),
            "close.expired_credits": total(p["expired"] for p in periods),
            "close.rollover_credits": total(p["rollover"] for p in periods),
            "close.carried_credits": total(p["carried"] for p in periods),
            "close.renewed_periods": sum(p["renew"] for p in periods)})
    out["summary"] = summary
    out["history_read"] = history_read
    return out


def net(entries):
    """Σ debit + adjustment − refund."""
    return sum((-en["credits"] if en["kind"] == "refund" else en["credits"] for en in entries),
               ZERO)


def _consume(a, plan, grants, left, events):
    """Section 4 for one account-period; updates `left` (grant balances) in place."""
    start, end = a["period_start"], a["period_end"]
    usable = [g for g in grants if g["account_id"] == a["account_id"]
              and g["effective_at"] < end and (g["expires_at"] is None or g["expires_at"] > start)]
    left[None] = a["included_credits"]   # the plan's balance (grant ids are never null)
    plan_grant = dict(grant_id=None, kind="plan", effective_at=start, expires_at=end,
                      priority=None)
    granted = dict.fromkeys(GRANT_KINDS, ZERO)
    used = dict.fromkeys(GRANT_KINDS, ZERO)
    for g in [plan_grant] + usable:
        granted[g["kind"]] += left[g["grant_id"]]

    def order(g):   # the plan sorts before a grant tying on the first three keys (section 7)
        prio = DEFAULT_PRIORITY[g["kind"]] if g["priority"] is None else g["priority"]
        expiry = NEVER if g["expires_at"] is None else g["expires_at"]
        return (prio, expiry, g["effective_at"], g is not plan_grant, b(g["grant_id"] or ""))
    draw = sorted([plan_grant] + usable, key=order)
    overage = ZERO
    # README: Late events — late events draw first (before an on-time event at the period
    # start too), as if they occurred at the period start.
    for e in sorted(events, key=lambda e: (not e["late"], e["occurred_at"], b(e["event_id"]))):
        need = e["expected"] or ZERO   # failed, cancelled and unpriced events consume nothing
        t = start if e["late"] else e["occurred_at"]
        for g in draw:
            if need > 0 and g["effective_at"] <= t and (g["expires_at"] is None
                                                        or t < g["expires_at"]):
                take = min(need, left[g["grant_id"]])
                left[g["grant_id"]] -= take
                used[g["kind"]] += take
                need -= take
        e["overage"] = need
        overage += need
    plan_unused = left.pop(None)
    renew = a["status"] == "active" and plan["refresh"]
    rollover = min(plan_unused, plan["cap"]) if renew else ZERO
    expired, carried = plan_unused - rollover, ZERO
    for g in usable:
        if g["expires_at"] is not None and g["expires_at"] <= end:
            expired += left[g["grant_id"]]
        else:
            carried += left[g["grant_id"]]
    consumed = sum(used.values(), ZERO)
    assert sum(granted.values(), ZERO) - consumed == expired + rollover + carried
    return dict(alloc=a, plan=plan, events=events, granted=granted, used=used,
                overage=overage, plan_unused=plan_unused, renew=renew, rollover=rollover,
                expired=expired, carried=carried)


def _balance_row(p):
    a = p["alloc"]
    row = dict(account_id=a["account_id"], plan_id=a["plan_id"], period_start=a["period_start"],
               period_end=a["period_end"])
    granted, consumed = sum(p["granted"].values(), ZERO), sum(p["used"].values(), ZERO)
    row.update(granted_credits=granted, used_credits=consumed + p["overage"],
               overage_credits=p["overage"], remaining_credits=granted - consumed)
    for k in GRANT_KINDS:   # an expired, unused grant still counts as remaining here
        row.update({f"{k}_granted_credits": p["granted"][k], f"{k}_used_credits": p["used"][k],
                    f"{k}_remaining_credits": p["granted"][k] - p["used"][k]})
    return row


def add_months(d, k):
    """`d` k months later, the day clamped to the month (Jan 31 + 1 = Feb 28/29)."""
    y, m = divmod(d.month - 1 + k, 12)
    return d.replace(year=d.year + y, month=m + 1,
                     day=min(d.day, calendar.monthrange(d.year + y, m + 1)[1]))


def next_anniversary(anchor, after):
    """First monthly anniversary of `anchor` strictly after `after`, the time of day kept
    (README: Choices — an anchor later than period_end is itself the 0th anniversary).
    Past year 9999 `add_months` raises: tally exits 2 there (README: Exit codes)."""
    k = 0
    while to_us(add_months(from_us(anchor), k)) <= after:
        k += 1
    return to_us(add_months(from_us(anchor), k))


def _close_tables(currency, periods, grants, left, window, unattached):
    scale = Decimal(10) ** EXPONENT.get(currency, 2)
    entries_of = {}
    for en in unattached:
        entries_of.setdefault(id(en["alloc"]), []).append(en)
    invoices, lines, renewals, allocations_next, billed_events = [], [], [], [], []
    for p in periods:   # already by (account_id, period_start)
        a, plan = p["alloc"], p["plan"]
        invoice_id = f"INV-{a['account_id']}-{stamp(a['period_start'])}"  # README: Close
        billed = [e for e in p["events"]
                  if e["status"] == "succeeded" and e["expected"] is not None]
        used = sum((e["expected"] for e in billed), ZERO)
        recorded = net([en for e in p["events"] for en in e["entries"]]
                       + entries_of.get(id(a), []))
        price_minor = int(plan["price"] * scale)
        overage_minor = 0 if plan["ppc"] is None else int(
            (p["overage"] * plan["ppc"] * scale).quantize(Decimal(1), ROUND_HALF_EVEN))
        assert used == sum(p["used"].values(), ZERO) + p["overage"]
        invoices.append(dict(
            invoice_id=invoice_id, account_id=a["account_id"], plan_id=a["plan_id"],
            period_start=a["period_start"], period_end=a["period_end"], currency=currency,
            plan_price_minor=price_minor, included_credits=a["included_credits"],
            credits_used=used, **{f"credits_from_{k}": p["used"][k] for k in GRANT_KINDS},
            overage_credits=p["overage"], overage_amount_minor=overage_minor,
            total_minor=price_minor + overage_minor, recorded_credits=recorded,
            unreconciled_credits=recorded - used))
        groups = {}
        for e in billed:
            # README: Choices — the line's model is the event's own, also when the generic
            # rate priced it.
            # README: Late events — a late event's line is `prior_period:{product}`.
            product = "prior_period:" + e["product"] if e["late"] else e["product"]
            g = groups.setdefault((product, e["action"], e["model"]), [0, ZERO, ZERO])
            # README: Choices — the quantity is the logged one (4.2 s stays 4.2).
            g[0], g[1], g[2] = g[0] + 1, g[1] + e["quantity"], g[2] + e["expected"]
        for (product, action, model), (n, qty, credits) in sorted(
                groups.items(), key=lambda kv: (b(kv[0][0]), b(kv[0][1]), kv[0][2] is None,
                                                b(kv[0][2] or ""))):
            lines.append(dict(invoice_id=invoice_id, product=product, action=action,
                              model=model, event_count=n, quantity=qty, credits=credits))
        # README: Outputs — billed_events: every event of the invoice's period (late ones
        # included) by (occurred_at, event_id), credits null when not succeeded or unpriced.
        for e in sorted(p["events"], key=lambda e: (e["occurred_at"], b(e["event_id"]))):
            billed_events.append(dict(
                invoice_id=invoice_id, event_id=e["event_id"], account_id=e["account_id"],
                occurred_at=e["occurred_at"],
                credits=e["expected"] if e["status"] == "succeeded" else None))
        anchor = a["billing_anchor"] if a["billing_anchor"] is not None else a["period_start"]
        p["next_end"] = next_anniversary(anchor, a["period_end"]) if p["renew"] else None
        renewals.append(dict(
            account_id=a["account_id"], period_end=a["period_end"],
            next_period_start=a["period_end"] if p["renew"] else None,
            next_period_end=p["next_end"], plan_id=a["plan_id"],
            plan_credits_unused=p["plan_unused"], rollover_credits=p["rollover"],
            expired_credits=p["expired"],
            next_included_credits=plan["included"] if p["renew"] else None,
            carried_grant_credits=p["carried"]))
        if p["renew"]:
            # README: Choices — every closed period's renewal is written, also the first of
            # several closed periods of one account.
            allocations_next.append(dict(
                account_id=a["account_id"], plan_id=a["plan_id"], period_start=a["period_end"],
                period_end=p["next_end"], included_credits=plan["included"],
                billing_anchor=anchor, status="active"))

    grants_next = []
    last = {p["alloc"]["account_id"]: p for p in periods}   # grants carry from the last one
    for account, p in last.items():
        end = p["alloc"]["period_end"]
        # README: Close — the rollover id is `rollover-{account_id}-{next_period_start}`;
        # an input grant that is this very rollover (same id, kind rollover, effective at
        # period_end: a close's own grants_next fed back) is not copied but worked out again.
        rollover_id = f"rollover-{account}-{stamp(end)}"
        if len(rollover_id.encode()) > 4096 or account.startswith("sha256:"):
            # README: past the input limit on strings (or an account id starting
            # `sha256:`), the account id as its sha256.
            digest = hashlib.sha256(account.encode()).hexdigest()
            rollover_id = f"rollover-sha256:{digest}-{stamp(end)}"
        for g in grants:
            if g["account_id"] != account or (g["grant_id"] == rollover_id and g["kind"] ==
                                              "rollover" and g["effective_at"] == end):
                continue
            if g["effective_at"] >= end:   # not usable yet: copied unchanged
                grants_next.append({k: g[k] for k in dict(SCHEMAS["grants_next"])})
            elif left[g["grant_id"]] > 0 and (g["expires_at"] is None or g["expires_at"] > end):
                grants_next.append({**{k: g[k] for k in dict(SCHEMAS["grants_next"])},
                                    "credits": left[g["grant_id"]]})
        if p["renew"] and p["rollover"] > 0:
            grants_next.append(dict(grant_id=rollover_id, account_id=account, kind="rollover",
                                    credits=p["rollover"], effective_at=end,
                                    expires_at=p["next_end"], priority=None))
    grants_next.sort(key=lambda g: (b(g["account_id"]), b(g["grant_id"])))
    return dict(invoices=invoices, invoice_lines=lines, renewals=renewals,
                allocations_next=allocations_next, grants_next=grants_next,
                billed_events=billed_events)
