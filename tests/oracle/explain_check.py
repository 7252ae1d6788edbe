"""Check `tally explain --json` against the tables the published run wrote.

    python tests/oracle/explain_check.py --tally PATH [--seeds 0..100]
                                         [--command reconcile|close|both|history]
                                         [--sample N | --all] [--jobs J] [--keep DIR]

For every seed, gen.py writes the same data root (and as-of and settle) run.py uses; tally
runs `reconcile` and `close` into folders of their own (or, with `history`, the sequence of
closes with `--history` that run.py makes), then `tally explain ... --json` is run for every
account, for every event and ledger entry that a discrepancy or reject row names, and for a
sample of the others (all of them with `--all`), and each figure of its answer is held to
the published tables (README.md, "Explaining a charge: `tally explain`"; the mapping is in
tests/oracle/README.md, "Explain against the published run"). Also: an id of no row is
exit 2 with one line naming it. Prints each disagreement (seed, command, the explain
target, what, published value | explain value) and one summary line; exits 1 on any.
"""
import argparse
import concurrent.futures as cf
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
import gen  # noqa: E402
import oracle  # noqa: E402

SHOWN_PER_RUN = 20
GRANT_KINDS = oracle.GRANT_KINDS
UNATTACHED_KINDS = ("orphan_debit", "manual_adjustment")
# kinds reported in addition to an event's verdict (contract section 5; README: Late events)
EXTRA_KINDS = ("conflicting_duplicate", "over_limit_usage", "late_event")
CREDITS_TEXT = re.compile(r"-?\d+\.\d{3}\Z")
SEEN = Counter()   # what the explained targets were (placements, verdicts): coverage


# ------------------------------------------------------------------------------ inputs

def raw_column(table, name):
    if name not in table.column_names:
        return [None] * table.num_rows
    col = table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col.to_pylist()


def input_ids(root):
    """-> {dataset: {id column value: [(file, row), ...]}} with the raw strings of the
    files (ids over 4096 bytes too), and the set of account ids per dataset."""
    ids = {"usage": defaultdict(list), "debits": defaultdict(list)}
    accounts, rows_of = {}, {}
    for ds, id_col in [("usage", "event_id"), ("debits", "entry_id"), ("allocations", None),
                       ("grants", None)]:
        accounts[ds], rows_of[ds] = set(), defaultdict(list)
        if not os.path.isdir(os.path.join(root, ds)):
            continue
        for rel in oracle.list_files(root, ds):
            t = pq.read_table(os.path.join(root, rel))
            for i, a in enumerate(raw_column(t, "account_id")):
                if isinstance(a, str):
                    accounts[ds].add(a)
                    rows_of[ds][a].append((rel, i))
            if id_col:
                for i, v in enumerate(raw_column(t, id_col)):
                    if isinstance(v, str):
                        ids[ds][v].append((rel, i))
    return ids, accounts, rows_of


def read_table(out, name):
    path = os.path.join(out, name + ".parquet")
    return pq.read_table(path).to_pylist() if os.path.exists(path) else []


def published(out, command):
    p = {t: read_table(out, t) for t in oracle.TABLES[command]}
    if command == "reconcile":
        p["invoices"] = p["invoice_lines"] = p["renewals"] = p["billed_events"] = []
    else:
        p["balances"] = []
    return p


# ------------------------------------------------------------------------------ values

def us(v):
    """An instant from a table (datetime) or from explain (RFC 3339 text) -> microseconds."""
    if v is None:
        return None
    if isinstance(v, str):
        return oracle.parse_instant(v)
    return oracle.to_us(v)


def dec(v):
    return None if v is None else Decimal(v)


def pub_row(r):
    """A published discrepancy row, in the fields explain prints."""
    return (r["kind"], r["account_id"], r["event_id"], tuple(r["entry_ids"]),
            us(r["occurred_at"]), dec(r["expected_credits"]), dec(r["recorded_credits"]),
            dec(r["delta_credits"]))


def exp_row(r):
    return (r["kind"], r["account_id"], r["event_id"], tuple(r["entry_ids"]),
            us(r["occurred_at"]), dec(r["expected_credits"]), dec(r["recorded_credits"]),
            dec(r["delta_credits"]))


def show_row(t):
    kind, acct, eid, entries, occ, e, r, d = t
    return (f"{kind} {acct!r} event={eid!r} entries={list(entries)} "
            f"occurred={'-' if occ is None else compare.ts_text(occ)} "
            f"expected={e} recorded={r} delta={d}")


class Checker:
    """Collects disagreements of one explain target: (what, published, explain)."""

    def __init__(self):
        self.diffs, self.notes, self.compared = [], [], 0

    def eq(self, what, want, got):
        self.compared += 1
        if want != got:
            self.diffs.append((what, want, got))

    def bad(self, what, want, got):
        self.diffs.append((what, want, got))

    def rows(self, what, want, got):
        """Discrepancy rows: the same multiset, then the same order."""
        cw, cg = Counter(want), Counter(got)
        for t in sorted(cw - cg, key=repr):
            self.bad(f"{what}: row missing from explain", show_row(t), "(absent)")
        for t in sorted(cg - cw, key=repr):
            self.bad(f"{what}: row not in discrepancies.parquet", "(absent)", show_row(t))
        self.compared += 1
        if cw == cg and list(want) != list(got):
            # the same rows in another order: tally's README ("Explaining a charge") says
            # `--account` lists them in the order of discrepancies.parquet (since 2a89537;
            # a note before it)
            self.bad(f"{what}: row order",
                     [t[0] + " " + str(list(t[3])) for t in want],
                     [t[0] + " " + str(list(t[3])) for t in got])


def credits_texts(node, where, ck):
    """README: `--json` prints credits and quantities as decimal strings with three decimals."""
    keys = ("credits", "_credits", "quantity", "taken", "left", "balance_after")
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, str) and k not in ("raw_credits", "billed_quantity") and \
                    (k in keys or k.endswith(keys)) and not CREDITS_TEXT.match(v):
                ck.bad(f"{where}.{k} text", "3 decimals", v)
            credits_texts(v, f"{where}.{k}", ck)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            credits_texts(v, f"{where}[{i}]", ck)


# ------------------------------------------------------------------------------ context

class Run:
    """One published run and what explain needs to reproduce it."""

    def __init__(self, tally, root, command, as_of, settle, out, history=None):
        self.tally, self.root, self.command = tally, root, command
        self.as_of, self.settle, self.out, self.history = as_of, settle, out, history
        self.as_of_us, self.settle_us = oracle.parse_instant(as_of), oracle.parse_settle(settle)
        self.pub = published(out, command)
        self.ids, self.accounts, self.rows_of = input_ids(root)
        _, _, self.rates = oracle.load_pricebook(root)
        d = self.pub["discrepancies"]
        self.by_account, self.by_event, self.by_entry = (defaultdict(list) for _ in range(3))
        for r in d:
            self.by_account[r["account_id"]].append(pub_row(r))
            if r["kind"] not in UNATTACHED_KINDS:
                self.by_event[r["event_id"]].append(pub_row(r))
            for e in r["entry_ids"]:
                self.by_entry[e].append(pub_row(r))
        self.rejects = {(r["dataset"], r["file"], r["row"]): r["reason"]
                        for r in self.pub["rejects"]}
        self.billed = {r["event_id"]: r for r in self.pub["billed_events"]}
        self.cache = {}

    def flags(self):
        f = ["--data", self.root, "--as-of", self.as_of, "--settle", self.settle]
        if self.command == "close":
            f.append("--close")
        if self.history:
            f += ["--history", self.history, "--out", self.out]
        return f

    def explain(self, kind, ident, extra=()):
        key = (kind, ident, tuple(extra))
        if key not in self.cache:
            cmd = [self.tally, "explain", *self.flags(), f"--{kind}", ident, "--json", *extra]
            p = subprocess.run(cmd, capture_output=True, text=True,
                               env=dict(os.environ, TALLY_LOG="error"))
            doc = None
            if p.returncode == 0:
                try:
                    doc = json.loads(p.stdout)
                except ValueError as e:
                    doc = e
            self.cache[key] = (p.returncode, doc, p.stderr)
        return self.cache[key]

    def periods(self, account):
        """The published rows of the account's periods in this run, in order."""
        t = self.pub["balances"] if self.command == "reconcile" else self.pub["invoices"]
        return [r for r in t if r["account_id"] == account]


# ------------------------------------------------------------------------------ accounts

def check_account(run, account, ck):
    code, doc, err = run.explain("account", account)
    in_periods = bool(run.accounts["allocations"] | run.accounts["grants"]) and \
        account in run.accounts["allocations"] | run.accounts["grants"]
    if not in_periods:
        # Only usage or ledger rows name it: tally answers exit 2, pointing at --event/--entry
        # (see README.md of this folder, "What explain's README leaves open").
        if code != 2 or err.count("\n") != 1 or json.dumps(account)[1:-1][:40] not in err:
            ck.bad("account of no allocation or grant row", "exit 2, one line naming it",
                   f"exit {code}: {err.strip()[:200]}")
        return
    if code != 0 or not isinstance(doc, dict):
        ck.bad("exit", 0, f"{code}: {err.strip()[:300]}")
        return
    credits_texts(doc, "account", ck)
    a = doc["account"]
    ck.eq("target", ["account", account], [doc["target"]["kind"], doc["target"]["id"]])
    # its allocation rows (README: "its allocations (which are in this run)") and its rejected
    # allocation and grant rows ("with the reason"), against the inputs and rejects
    listed = [(x["file"], x["row"]) for x in a["allocations"]]
    rejected = [x for x in a["rejected_rows"]]
    ck.eq("allocations + rejected allocation rows = the account's allocation rows",
          sorted(run.rows_of["allocations"][account]),
          sorted(listed + [(x["file"], x["row"]) for x in rejected
                           if x["file"].startswith("allocations/")]))
    want_rej = sorted((f, i, run.rejects[(ds, f, i)]) for ds in ("allocations", "grants")
                      for f, i in run.rows_of[ds][account] if (ds, f, i) in run.rejects)
    ck.eq("rejected_rows = rejects rows (allocations, grants) of the account", want_rej,
          sorted((x["file"], x["row"], x["reason"]) for x in rejected))
    for f, i in listed:
        if ("allocations", f, i) in run.rejects:
            ck.bad(f"allocation {f}:{i} listed as valid", run.rejects[("allocations", f, i)],
                   "(listed)")
    rows = run.periods(account)
    ck.eq("covered allocations = published periods",
          sorted((r["plan_id"], us(r["period_start"]), us(r["period_end"])) for r in rows),
          sorted((x["period"]["plan_id"], us(x["period"]["period_start"]),
                  us(x["period"]["period_end"])) for x in a["allocations"] if x["covered"]))
    periods = a["periods"]
    ck.eq("periods (plan, start, end)",
          [(r["plan_id"], us(r["period_start"]), us(r["period_end"])) for r in rows],
          [(p["period"]["plan_id"], us(p["period"]["period_start"]),
            us(p["period"]["period_end"])) for p in periods])
    for r, p in zip(rows, periods):
        at = f"period {compare.ts_text(us(r['period_start']))}"
        per_kind = {k: [Decimal(0), Decimal(0)] for k in GRANT_KINDS}   # start, left
        for g in p["grants"]:
            per_kind[g["kind"]][0] += Decimal(g["start_credits"])
            per_kind[g["kind"]][1] += Decimal(g["left_credits"])
        drawn = defaultdict(Decimal)            # by grant
        drawn_kind = defaultdict(Decimal)
        overage = expected = Decimal(0)
        start = {(g["kind"], g["grant_id"]): Decimal(g["start_credits"]) for g in p["grants"]}
        total = sum(start.values(), Decimal(0))
        for ev in p["timeline"]:
            for dr in ev["draws"]:
                key = (dr["kind"], dr["grant_id"])
                drawn[key] += Decimal(dr["taken"])
                drawn_kind[dr["kind"]] += Decimal(dr["taken"])
                total -= Decimal(dr["taken"])
                # explain against itself: what the grant had left after the draw
                ck.eq(f"{at} event {ev['event_id']!r} draw {key[0]} {key[1]!r} left = start - "
                      f"draws so far", start.get(key, Decimal(0)) - drawn[key],
                      Decimal(dr["left"]))
            ck.eq(f"{at} event {ev['event_id']!r} balance_after = Σ grants start - draws so far",
                  total, Decimal(ev["balance_after"]))
            overage += Decimal(ev["overage_credits"])
            if ev["expected_credits"] is not None and ev["status"] == "succeeded":
                expected += Decimal(ev["expected_credits"])
        for g in p["grants"]:       # explain against itself: a grant's left = start - drawn
            ck.eq(f"{at} grant {g['kind']} {g['grant_id']!r} left_credits = start - Σ draws",
                  Decimal(g["start_credits"]) - drawn[(g["kind"], g["grant_id"])],
                  Decimal(g["left_credits"]))
        if run.command == "close":
            ck.eq(f"{at} period.included_credits", r["included_credits"],
                  Decimal(p["period"]["included_credits"]))
        if run.command == "reconcile":
            b = p["balance"] or {}
            for f in ("granted_credits", "used_credits", "overage_credits", "remaining_credits"):
                ck.eq(f"{at} balance.{f}", r[f], dec(b.get(f)))
            for k in GRANT_KINDS:
                start, left = per_kind[k]
                ck.eq(f"{at} Σ grants[{k}].start_credits = {k}_granted_credits",
                      r[f"{k}_granted_credits"], start)
                ck.eq(f"{at} Σ grants[{k}] start - left = {k}_used_credits",
                      r[f"{k}_used_credits"], start - left)
                ck.eq(f"{at} Σ grants[{k}].left_credits = {k}_remaining_credits",
                      r[f"{k}_remaining_credits"], left)
                ck.eq(f"{at} Σ timeline draws[{k}] = {k}_used_credits",
                      r[f"{k}_used_credits"], drawn_kind[k])
            ck.eq(f"{at} Σ timeline overage_credits = overage_credits", r["overage_credits"],
                  overage)
            ck.eq(f"{at} Σ timeline expected (succeeded) = used_credits", r["used_credits"],
                  expected)
            if p["timeline"]:
                ck.eq(f"{at} last balance_after = remaining_credits", r["remaining_credits"],
                      Decimal(p["timeline"][-1]["balance_after"]))
        else:
            check_invoice(run, r, p, per_kind, drawn_kind, overage, expected, at, ck)
    ck.rows("discrepancies of the account", run.by_account.get(account, []),
            [exp_row(x) for x in a["discrepancies"]])


def check_invoice(run, r, p, per_kind, drawn_kind, overage, expected, at, ck):
    inv = p["invoice"]
    if not inv:
        ck.bad(f"{at} invoice", r["invoice_id"], None)
        return
    for f in ("invoice_id", "currency", "plan_price_minor", "overage_amount_minor",
              "total_minor"):
        ck.eq(f"{at} invoice.{f}", r[f], inv[f])
    for f in ("credits_used", "overage_credits", "recorded_credits", "unreconciled_credits"):
        ck.eq(f"{at} invoice.{f}", r[f], dec(inv[f]))
    exp = compare.EXPONENT.get(r["currency"], 2)
    for f in ("plan_price", "overage_amount", "total"):
        ck.eq(f"{at} invoice.{f} (= {f}_minor with the currency's exponent)",
              compare.money_text(r[f + "_minor"], exp), inv[f])
    for k in GRANT_KINDS:
        start, left = per_kind[k]
        ck.eq(f"{at} Σ grants[{k}] start - left = credits_from_{k}", r[f"credits_from_{k}"],
              start - left)
        ck.eq(f"{at} Σ timeline draws[{k}] = credits_from_{k}", r[f"credits_from_{k}"],
              drawn_kind[k])
    ck.eq(f"{at} Σ timeline overage_credits = overage_credits", r["overage_credits"], overage)
    ck.eq(f"{at} Σ timeline expected (succeeded) = credits_used", r["credits_used"], expected)
    lines = [(x["product"], x["action"], x["model"], x["event_count"], x["quantity"],
              x["credits"]) for x in run.pub["invoice_lines"] if x["invoice_id"] == r["invoice_id"]]
    ck.eq(f"{at} invoice.lines", lines,
          [(x["product"], x["action"], x["model"], x["event_count"], dec(x["quantity"]),
            dec(x["credits"])) for x in inv["lines"]])
    ck.eq(f"{at} invoice.lines[].invoice_id", [r["invoice_id"]] * len(inv["lines"]),
          [x["invoice_id"] for x in inv["lines"]])
    ren = [x for x in run.pub["renewals"] if x["account_id"] == r["account_id"]
           and us(x["period_end"]) == us(r["period_end"])]
    if len(ren) != 1:
        ck.bad(f"{at} renewals rows", 1, len(ren))
    else:
        n = ren[0]
        for f in ("rollover_credits", "expired_credits", "carried_grant_credits"):
            ck.eq(f"{at} invoice.{f}", n[f], dec(inv[f]))
        nxt = None if n["next_period_start"] is None else (
            f"[{compare.ts_text(us(n['next_period_start']))}, "
            f"{compare.ts_text(us(n['next_period_end']))})")
        ck.eq(f"{at} invoice.next_period", nxt, inv["next_period"])
        ck.eq(f"{at} Σ grants[plan].left_credits = renewals.plan_credits_unused",
              n["plan_credits_unused"], per_kind["plan"][1])
    # billed_events: every event of the invoice's period, in the timeline
    billed = [(x["event_id"], x["credits"]) for x in run.pub["billed_events"]
              if x["invoice_id"] == r["invoice_id"]]
    timeline = [(ev["event_id"], dec(ev["expected_credits"])
                 if ev["status"] == "succeeded" else None) for ev in p["timeline"]]
    if sorted(billed, key=repr) != sorted(timeline, key=repr):
        ck.eq(f"{at} timeline (event, credits) = billed_events", billed, timeline)
    elif billed != timeline:
        ck.bad(f"{at} timeline order = billed_events order", [x[0] for x in billed],
               [x[0] for x in timeline])


# ------------------------------------------------------------------------------ events

def check_rows(run, ds, found, rows_json, ck, what):
    """The rows explain lists for an id against the input rows carrying it and rejects."""
    listed = [(x["file"], x["row"]) for x in rows_json]
    ck.eq(f"{what} rows (file, row)", sorted(found), sorted(listed))
    for x in rows_json:
        reason = run.rejects.get((ds, x["file"], x["row"]))
        if x["fate"] == "rejected":
            ck.eq(f"{what} row {x['file']}:{x['row']} rejects.reason", reason, x["reason"])
        elif reason is not None:
            ck.bad(f"{what} row {x['file']}:{x['row']} fate", f"rejected ({reason})",
                   x["fate"])


def published_period(run, ev):
    """(plan_id, start, end) of the published period holding the event, or None."""
    t, acct = us(ev["occurred_at"]), ev["account_id"]
    if run.command == "close":
        b = run.billed.get(ev["event_id"])
        if not b:
            return None
        inv = [r for r in run.pub["invoices"] if r["invoice_id"] == b["invoice_id"]]
        return inv and (inv[0]["plan_id"], us(inv[0]["period_start"]), us(inv[0]["period_end"]))
    for r in run.pub["balances"]:
        if r["account_id"] == acct and us(r["period_start"]) <= t < us(r["period_end"]) \
                and t < run.as_of_us:
            return (r["plan_id"], us(r["period_start"]), us(r["period_end"]))
    return None


def check_event_body(run, ev, ck, account_doc=None):
    """An `event` object (from --event, or from --entry when attached)."""
    eid = ev["event_id"]
    SEEN[f"event {ev['placement']}" + (f" {ev['verdict']}" if ev["verdict"] else "")
         + (" late" if ev["late_from"] else "")] += 1
    want = run.by_event.get(eid, [])
    got = [exp_row(x) for x in ev["discrepancies"]]
    ck.rows("discrepancies of the event", want, got)
    place = published_period(run, ev)
    in_window = ev["placement"] == "in_window"
    ck.eq("placement in_window (= a published period holds it)", place is not None, in_window)
    if in_window and place:
        p = ev["period"]
        ck.eq("period", place, (p["plan_id"], us(p["period_start"]), us(p["period_end"])))
    kinds = [t[0] for t in want]
    if not in_window:
        ck.eq("verdict outside the window", None, ev["verdict"])
        return
    primary = [k for k in kinds if k not in EXTRA_KINDS]
    verdict = ev["verdict"]
    if verdict in ("matched", "pending"):
        ck.eq(f"verdict {verdict}: rows other than {'/'.join(EXTRA_KINDS)}", [], primary)
    else:
        ck.eq("verdict = the row's kind", primary, [verdict])
    if verdict == "pending":
        occ = us(ev["occurred_at"])
        ok = not ev["entries"] and run.as_of_us - run.settle_us <= occ < run.as_of_us
        ck.eq("pending: no entries and as-of - settle <= occurred_at < as-of", True, ok)
    ck.eq("conflicting_copies = a conflicting_duplicate row", "conflicting_duplicate" in kinds,
          ev["conflicting_copies"])
    ck.eq("late_from set = a late_event row", "late_event" in kinds, ev["late_from"] is not None)
    block = ev["period"]["overage_price_per_credit"] is None
    ck.eq("over_limit_usage row = overage > 0 under a block plan", "over_limit_usage" in kinds,
          block and Decimal(ev["overage_credits"]) > 0)
    expected = dec(ev["expected_credits"])
    recorded = dec(ev["recorded_credits"])
    entries = sorted(x["entry_id"] for x in ev["entries"])
    for t in want:
        kind, acct, _, ids, occ, e, r, d = t
        ck.eq(f"{kind} row expected_credits", e, expected)
        ck.eq(f"{kind} row recorded_credits", r, recorded)
        ck.eq(f"{kind} row entry_ids", list(ids), entries)
        ck.eq(f"{kind} row account_id", acct, ev["account_id"])
        ck.eq(f"{kind} row occurred_at", occ, us(ev["occurred_at"]))
    for r in run.pub["discrepancies"]:
        if r["event_id"] == eid and r["kind"] not in UNATTACHED_KINDS:
            ck.eq(f"{r['kind']} row (product, action, model)",
                  (r["product"], r["action"], r["model"]),
                  (ev["product"], ev["action"], ev["model"]))
    # the price: billed_events (close), the arithmetic, and the contract's own formula
    succeeded = ev["status"] == "succeeded"
    if run.command == "close":
        b = run.billed.get(eid)
        ck.eq("billed_events.credits", b and b["credits"],
              expected if succeeded and ev["rate"] else None)
    if succeeded and ev["rate"]:
        ck.eq("arithmetic.credits = expected_credits", expected, dec(ev["arithmetic"]["credits"]))
        q = Decimal(ev["quantity"])
        # the rate in effect at the event's own occurred_at (a late one too: README)
        want_price = oracle.price(run.rates, ev["product"], ev["action"], ev["model"], q,
                                  us(ev["occurred_at"]))
        ck.eq("expected_credits = contract section 3 on the event's values", want_price, expected)
        drawn = sum((Decimal(g["taken"]) for g in ev["grants"]), Decimal(0))
        ck.eq("Σ grants taken + overage = expected_credits", expected,
              drawn + Decimal(ev["overage_credits"]))
    elif succeeded:
        ck.eq("unpriced: expected_credits", None, expected)
    net = Decimal(0)
    for x in ev["entries"]:
        net += -Decimal(x["credits"]) if x["kind"] == "refund" else Decimal(x["credits"])
    ck.eq("recorded_credits = Σ debit + adjustment - refund of entries", net, recorded)
    if account_doc is not None:
        same = [t for p in account_doc["account"]["periods"] for t in p["timeline"]
                if t["event_id"] == eid]
        if len(same) != 1:
            ck.bad("--account timeline rows of the event", 1, len(same))
        else:
            t = same[0]
            ck.eq("--account timeline draws = --event grants",
                  [(g["kind"], g["grant_id"], g["taken"]) for g in t["draws"]],
                  [(g["kind"], g["grant_id"], g["taken"]) for g in ev["grants"]])
            ck.eq("--account timeline (expected, overage)",
                  (t["expected_credits"], t["overage_credits"]),
                  (ev["expected_credits"], ev["overage_credits"]))


def explained(run, kind, the_id, dataset, rows_key, ck):
    """`explain --{kind} the_id`: its JSON document after the checks every target shares
    (exit 0, credits as texts, the target, its input rows), or None after a bad exit."""
    code, doc, err = run.explain(kind, the_id)
    if code != 0 or not isinstance(doc, dict):
        ck.bad("exit", 0, f"{code}: {err.strip()[:300]}")
        return None
    credits_texts(doc, kind, ck)
    ck.eq("target", [kind, the_id], [doc["target"]["kind"], doc["target"]["id"]])
    check_rows(run, dataset, run.ids[dataset][the_id], doc[rows_key], ck, dataset)
    return doc


def check_event(run, eid, ck):
    doc = explained(run, "event", eid, "usage", "usage_rows", ck)
    if doc is None:
        return
    ev = doc["event"]
    if ev is None:
        # every row rejected at validation: no event, and no discrepancy row for it
        ck.eq("event null: every usage row rejected", True,
              all(x["fate"] == "rejected" for x in doc["usage_rows"]))
        ck.rows("discrepancies of the event", run.by_event.get(eid, []), [])
        return
    ck.eq("event.event_id", eid, ev["event_id"])
    code, adoc, _ = run.explain("account", ev["account_id"])
    check_event_body(run, ev, ck, adoc if code == 0 and ev["placement"] == "in_window" else None)


# ------------------------------------------------------------------------------ entries

def check_entry(run, entry_id, ck):
    doc = explained(run, "entry", entry_id, "debits", "entry_rows", ck)
    if doc is None:
        return
    en, ev = doc["entry"], doc["event"]
    want = run.by_entry.get(entry_id, [])
    if en is None:
        ck.eq("entry null: every debits row rejected", True,
              all(x["fate"] == "rejected" for x in doc["entry_rows"]))
        ck.rows("discrepancies naming the entry", want, [])
        return
    got = [exp_row(x) for x in en["discrepancies"]]
    if en["placement"] == "attached":
        if ev is None or entry_id not in [x["entry_id"] for x in ev["entries"]]:
            ck.bad("attached: the event lists the entry", True, False)
        else:
            got += [exp_row(x) for x in ev["discrepancies"] if entry_id in x["entry_ids"]]
            check_event_body(run, ev, ck)
    ck.rows("discrepancies naming the entry", want, got)
    place, verdict = en["placement"], en["verdict"]
    SEEN[f"entry {place}" + (f" {verdict}" if verdict else "")] += 1
    kinds = [t[0] for t in want]
    e = en["entry"]
    if place == "unattached" and verdict in UNATTACHED_KINDS:
        ck.eq(f"unattached {verdict}: the rows naming it", [verdict], kinds)
        for t in want:
            ck.eq(f"{verdict} row recorded_credits = the entry's credits", t[6],
                  Decimal(e["credits"]))
    elif place == "unattached":
        ck.eq(f"unattached {verdict}: rows naming it", [], kinds)
    elif place != "attached":
        ck.eq(f"{place}: rows naming it", [], kinds)
    if place == "after_as_of":
        ck.eq("after_as_of: recorded_at >= as-of", True, us(e["recorded_at"]) >= run.as_of_us)
    if place == "no_allocation":
        kept = [(x["file"], x["row"]) for x in doc["entry_rows"]
                if x["fate"] == "rejected" and x["reason"] == "no_allocation"]
        ck.eq("no_allocation: a rejects row (debits, no_allocation)", True, bool(kept))


# ------------------------------------------------------------------------------ a run

def check_missing(run, seed, ck):
    """An id of no row: exit 2, nothing on stdout, one line naming the id (README)."""
    for kind in ("event", "entry", "account"):
        ident = f"zz-no-such-{kind}-{seed}"
        code, _, err = run.explain(kind, ident)
        if code != 2 or err.count("\n") != 1 or f'"{ident}"' not in err:
            ck.bad(f"--{kind} {ident} (in no row)", "exit 2, one line naming the id",
                   f"exit {code}: {err.strip()[:200]}")


def choose(run, seed, sample, everything):
    """-> [(kind, id)]: every account; events and entries that discrepancy or rejects rows
    name, and `sample` others of each (all with `everything`)."""
    R = random.Random(seed * 7 + len(run.command))
    accounts = sorted(set().union(*run.accounts.values()))
    named_ev = set(run.by_event) | {r["event_id"] for r in run.pub["discrepancies"]
                                     if r["event_id"]}
    named_en = set(run.by_entry)
    for ds, named in (("usage", named_ev), ("debits", named_en)):
        for ident, rows in run.ids[ds].items():
            if any((ds, f, i) in run.rejects for f, i in rows):
                named.add(ident)
    targets = [("account", a) for a in accounts]
    for kind, ds, named in (("event", "usage", named_ev), ("entry", "debits", named_en)):
        every = sorted(run.ids[ds])
        picked = [i for i in every if i in named]
        others = [i for i in every if i not in named]
        picked += others if everything else R.sample(others, min(sample, len(others)))
        targets += [(kind, i) for i in picked]
    return targets


def check_run(run, seed, sample, everything, jobs):
    """-> Result: disagreements and notes [(target label, what, published, explain)],
    explain calls and comparisons made."""
    targets = choose(run, seed, sample, everything)
    # explain every account first (the event checks compare with its timeline)
    with cf.ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda t: run.explain(*t), [t for t in targets if t[0] == "account"]))
        list(pool.map(lambda t: run.explain(*t), [t for t in targets if t[0] != "account"]))
    res = Result()
    fns = {"account": check_account, "event": check_event, "entry": check_entry}
    for kind, ident in targets:
        ck = Checker()
        try:
            fns[kind](run, ident, ck)
        except Exception as e:   # a checker or JSON shape failure counts as one
            ck.bad("error", "", f"{type(e).__name__}: {str(e)[-300:]}")
        res.add(f"--{kind} {ident[:60]!r}", ck)
    ck = Checker()
    check_missing(run, seed, ck)
    res.add("missing id", ck)
    res.calls = len(run.cache)
    return res


class Result:
    def __init__(self, diffs=()):
        self.diffs, self.notes, self.calls, self.compared = list(diffs), [], 0, 0

    def add(self, label, ck):
        self.diffs += [(label, *d) for d in ck.diffs]
        self.notes += [(label, *d) for d in ck.notes]
        self.compared += ck.compared


def tally_run(tally, command, root, as_of, settle, out, history=None):
    cmd = [tally, command, "--data", root, "--as-of", as_of, "--settle", settle, "--out", out,
           "--log-format", "json", *(["--history", history] if history else [])]
    return subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, TALLY_LOG="error"))


def run_seed(tally, seed, commands, work, sample, everything, jobs):
    """-> {label: Result}"""
    base = os.path.join(work, f"seed-{seed}")
    root = os.path.join(base, "data")
    as_ofs = gen.gen(seed, root)
    with open(os.path.join(base, "as_of.toml"), "w") as f:
        f.write("".join(f'{c} = ["{a}", "{s}"]\n' for c, (a, s) in as_ofs.items()))
    found = {}
    for c in commands:
        as_of, settle = as_ofs[c]
        out = os.path.join(base, c)
        shutil.rmtree(out, ignore_errors=True)
        p = tally_run(tally, c, root, as_of, settle, out)
        if p.returncode != 0:
            found[c] = Result([("tally " + c, "exit", 0, p.stderr.strip()[-300:])])
            continue
        found[c] = check_run(Run(tally, root, c, as_of, settle, out), seed, sample, everything,
                             jobs)
    return found


def check_job(run, base, n, res):
    """README: a `--job` file's command, data, as_of, settle, history and out serve explain
    (a `close` job implies --close): the same JSON as the flags give, for the first account;
    a reconcile job with `history` is exit 2 (as the run refuses it)."""
    ck = Checker()
    accounts = sorted(run.accounts["allocations"])
    if not accounts:
        return ck
    toml = lambda v: json.dumps(os.path.abspath(v) if os.sep in v else v)  # noqa: E731
    keys = {"data": run.root, "as_of": run.as_of, "settle": run.settle, "out": run.out}
    if run.history:
        keys["history"] = run.history
    for command in ("close", "reconcile") if run.history else ("close",):
        job = os.path.join(base, f"explain-job-{n}-{command}.toml")
        with open(job, "w") as f:
            f.write(f'command = "{command}"\n' + "".join(f"{k} = {toml(v)}\n"
                                                       for k, v in keys.items()))
        p = subprocess.run([run.tally, "explain", "--job", job, "--account", accounts[0],
                            "--json"], capture_output=True, text=True,
                           env=dict(os.environ, TALLY_LOG="error"))
        res.calls += 1
        ck.compared += 1
        if command == "reconcile":
            if p.returncode != 2 or p.stderr.count("\n") != 1:
                ck.bad("reconcile job file with history", "exit 2, one line",
                       f"exit {p.returncode}: {p.stderr.strip()[:200]}")
            continue
        code, doc, err = run.explain("account", accounts[0])
        got = json.loads(p.stdout) if p.returncode == 0 else f"exit {p.returncode}: {p.stderr}"
        if got != doc:
            ck.bad(f"--job {job} --account {accounts[0]!r}: the flags' JSON",
                   json.dumps(doc)[:200], json.dumps(got)[:200])
    return ck


def run_history_seed(tally, seed, work, sample, everything, jobs):
    """run.py's sequence of closes (backup copies, `_future`/`.future`, reconciles in the history
    folder, out spelled with ./ and zz/..), each close-K explained right after it is made,
    over the root as it read it; -> {label: Result}."""
    base = os.path.join(work, f"seed-{seed}")
    shutil.rmtree(base, ignore_errors=True)
    plan = gen.gen_history(seed, base)
    root, hist, settle = os.path.join(base, "data"), os.path.join(base, "hist"), plan["settle"]
    with open(os.path.join(base, "as_of.toml"), "w") as f:
        f.write(f'settle = "{settle}"\ncloses = {plan["closes"]}\n'.replace("'", '"'))
    found = {}
    for k, as_of in enumerate(plan["closes"]):
        stage = os.path.join(base, f"stage-{k}")
        if os.path.isdir(stage):
            shutil.copytree(stage, root, dirs_exist_ok=True)
        history = hist if k or plan["first_history"] else None
        n = k + 1
        if k in plan["futures"]:
            later = oracle.from_us(oracle.parse_instant(as_of) + 60 * 86400 * 10**6)
            tally_run(tally, "close", root, later.strftime("%Y-%m-%dT%H:%M:%SZ"), settle,
                      os.path.join(hist, f"{plan['futures'][k]}future-{n}"))
        if k in plan["recons"]:
            tally_run(tally, "reconcile", root, as_of, settle, os.path.join(hist, f"recon-{n}"))
        out = os.path.join(hist, plan["out_forms"][k] + f"close-{n}")
        p = tally_run(tally, "close", root, as_of, settle, out, history)
        label = f"close-{n}"
        if p.returncode != 0:
            found[label] = Result([("tally close", "exit", 0, p.stderr.strip()[-300:])])
            continue
        if k in plan["backups"] and history:   # run.py's copy of the close beside it
            shutil.copytree(out, os.path.join(hist, f"backup-{n}"), copy_function=shutil.copy2)
        run = Run(tally, root, "close", as_of, settle, out, history)
        found[label] = res = check_run(run, seed, sample, everything, jobs)
        res.add("job file", check_job(run, base, n, res))
        if history and n == 1 + (len(plan["closes"]) > 1):
            # README: --history without --close, or without the close's --out, is exit 2
            ck = Checker()
            base_flags = ["--data", root, "--as-of", as_of, "--settle", settle, "--json"]
            acct = next(iter(sorted(run.accounts["allocations"])), "x")
            for what, flags in [("--history without --out",
                                 ["--close", "--history", history]),
                                ("--history without --close",
                                 ["--history", history, "--out", out])]:
                q = subprocess.run([tally, "explain", *base_flags, *flags, "--account", acct],
                                   capture_output=True, text=True)
                res.calls += 1
                ck.compared += 1
                if q.returncode != 2 or q.stderr.count("\n") != 1:
                    ck.bad(what, "exit 2, one line", f"exit {q.returncode}: {q.stderr[:200]}")
            res.add("flags", ck)
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tally", required=True)
    ap.add_argument("--seeds", default="0..100", help="A..B (B excluded), N or N,M,...")
    ap.add_argument("--command", default="both",
                    choices=["reconcile", "close", "both", "history"])
    ap.add_argument("--sample", type=int, default=6,
                    help="events and entries no discrepancy or reject names, per run (default 6)")
    ap.add_argument("--all", action="store_true", help="explain every event and entry")
    ap.add_argument("--jobs", type=int, default=2, help="explain runs at a time (default 2)")
    ap.add_argument("--keep", help="keep roots and outputs under this folder (DIR/seed-N/)")
    ap.add_argument("--text-ids", action="store_true",
                    help="run.py's --text-ids ids (=acc, -5, a line break, ...)")
    a = ap.parse_args()
    if a.text_ids:
        import run as runner   # run.py's use_text_ids: gen.py with other ids, nothing else
        runner.use_text_ids()
    import run as runner
    tally, chosen = runner.binary_and_seeds(ap, a)
    commands = {"both": ["reconcile", "close"]}.get(a.command, [a.command])
    start = time.monotonic()
    work = a.keep or tempfile.mkdtemp(prefix="tally-explain-")
    os.makedirs(work, exist_ok=True)
    runs = bad_runs = disagreements = calls = compared = noted = 0
    note_kinds = Counter()
    for seed in chosen:
        try:
            if a.command == "history":
                found = run_history_seed(tally, seed, work, a.sample, a.all, a.jobs)
            else:
                found = run_seed(tally, seed, commands, work, a.sample, a.all, a.jobs)
        except Exception as e:
            found = {"seed": Result([("generator", "error", "", f"{type(e).__name__}: {e}")])}
        seed_bad = False
        for label, res in found.items():
            runs += 1
            calls += res.calls
            compared += res.compared
            for target, what, want, got in res.notes:
                noted += 1
                if not note_kinds[what]:
                    print(f"  note: seed {seed} {label} {target}: {what}: published "
                          f"{compare.show(want)} | explain {compare.show(got)}")
                note_kinds[what] += 1
            if not res.diffs:
                continue
            seed_bad = True
            bad_runs += 1
            disagreements += len(res.diffs)
            print(f"seed {seed} {label}: {len(res.diffs)} disagreement(s) (data root: "
                  f"{os.path.join(work, f'seed-{seed}', 'data')})")
            for target, what, want, got in res.diffs[:SHOWN_PER_RUN]:
                print(f"  seed {seed} {label} {target}: {what}: published "
                      f"{compare.show(want)} | explain {compare.show(got)}")
            if len(res.diffs) > SHOWN_PER_RUN:
                print(f"  seed {seed} {label}: ... and {len(res.diffs) - SHOWN_PER_RUN} more")
        if not a.keep and not seed_bad:
            shutil.rmtree(os.path.join(work, f"seed-{seed}"), ignore_errors=True)
    if not a.keep and not bad_runs:
        shutil.rmtree(work, ignore_errors=True)
    what = "history sequences" if a.command == "history" else "+".join(commands)
    how = ("all ids" if a.all else f"sample {a.sample}") + ("; --text-ids" if a.text_ids else "")
    notes = "; ".join(f"{n} x {w}" for w, n in note_kinds.most_common()) or "none"
    print("explained: " + ", ".join(f"{w} {n}" for w, n in sorted(SEEN.items())))
    print(f"explain: {runs} runs ({len(chosen)} seeds x {what}; {how}), {calls} explain "
          f"calls, {compared} comparisons, {disagreements} disagreement(s) in {bad_runs} "
          f"run(s); notes: {notes}; {time.monotonic() - start:.0f}s")
    sys.exit(1 if disagreements else 0)


if __name__ == "__main__":
    main()
