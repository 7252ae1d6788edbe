"""Random small data roots for the differential test (deterministic for a seed).

gen(seed, root) writes a data root and returns {"reconcile": (as_of, settle),
"close": (as_of, settle)}: one root serves both commands, with an as-of inside the open
periods for reconcile and one after some period ends for close. It mixes the edge cases of
the contract (see README.md, "What it covers") with the Parquet physical variety of real
exports (units, zones, decimal scales, doubles, dictionary encoding, several files,
Hive folders, skipped `.`/`_` files, absent nullable columns).
"""
import calendar
import datetime as dt
import math
import os
import random
import shutil
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq

from oracle import (END_US, FIRST_US, INPUTS, add_months, from_us, load_pricebook,
                    parse_settle, price, stamp, to_us)

MIN, HOUR, DAY = 60 * 10**6, 3600 * 10**6, 86400 * 10**6
CURRENCIES = {
    "USD": (["9.99", "0", "24.50", "0.01"], ["0.05", "0.045", "0.0125", "0.005", "0.015", "1"]),
    "JPY": (["1500", "980", "0", "1"], ["7.5", "0.5", "1.25", "2.5", "0.001", "3"]),
    "BHD": (["3.125", "0.5", "0", "12.001"], ["0.0005", "0.0125", "0.0015", "0.00005", "0.3"]),
}
ACCOUNTS = ["acc-A", "acc-b", "acc_c", "accZ", "acc-a", "b", "B1", "a\u00e9"]
GRANT_IDS = ["g1", "G2", "g_1", "g-1", "ga", "gB", "g10", "g2", "Ga", "g", "g\u00e9", "h"]
SKUS = [("s", "gen", None), ("s", "gen", "m1"), ("s", "gen", "m2"), ("s", "gen", "mX"),
        ("s", "img", "i1"), ("s", "img", "i2"), ("s", "img", None), ("s", "fx", "z"),
        ("s", "fx", None), ("c", "edit", None), ("c", "edit", ""), ("c", "tiny", None),
        ("c", "pp", None), ("c", "unknown", None)]
QUANTITIES = ["2.0625", "0.0005", "1.0005", "0.1235", "0", "1", "4.2", "2.5", "0.25", "7", "3",
              "1.05", "10", "0.001", "13.3335", "2.0015", "3.999", "1234.5678"]
DOUBLES = [0.1235, 4.2, 0.0005, 2.5, 1e-4, 0.0015, 1234.5678, 4.0000001, 0.9999999, 3.0005,
           7.9995, 2.0004999]


def pricebook(R, currency):
    prices, ppcs = CURRENCIES[currency]
    out = [f'currency = "{currency}"\n']
    for pid, refresh, overage in [("free", False, R.choice(["block", None, R.choice(ppcs)])),
                                  ("blk", R.choice([True, None]), R.choice(["block", None])),
                                  ("ovg", R.choice([True, None]), R.choice(ppcs)),
                                  ("ovg2", R.choice([True, False, None]), R.choice(ppcs))]:
        lines = [f"[plans.{pid}]", f'name = "{pid}"', f'price = "{R.choice(prices)}"',
                 f'included_credits = "{R.choice(["10", "25.5", "40", "0", "7.25", "200"])}"']
        if refresh is not None:
            lines.append(f"refresh = {str(refresh).lower()}")
        cap = R.choice([None, "0", "3", "15.5", "1000"])
        if cap is not None:
            lines.append(f'rollover_cap = "{cap}"')
        if overage == "block":
            lines.append('overage = "block"')
        elif overage is not None:
            lines.append(f'overage = {{ price_per_credit = "{overage}" }}')
        out.append("\n".join(lines) + "\n")
    change = R.choice(["2026-11-15T00:00:00Z", "2027-12-10T12:00:00Z", "2028-02-01T00:00:00Z",
                       "2027-01-15T00:00:00Z"])
    rates = [("s", "gen", None, "3", None, None, "2026-01-01T00:00:00Z"),
             ("s", "gen", "m1", "0.5", "0.5", "2", "2026-01-01T00:00:00Z"),
             ("s", "gen", "m2", "4", None, None, change),
             ("s", "img", "i1", "2.5", None, None, "2026-01-01T00:00:00Z"),
             ("s", "fx", None, "1", None, None, "2026-01-01T00:00:00Z"),
             ("s", "fx", "z", "0", None, None, "2026-01-01T00:00:00Z"),
             ("c", "edit", None, "1.2345", "0.1", None, "2026-01-01T00:00:00Z"),
             ("c", "edit", "", "2", None, None, change),   # model "" = the generic row
             ("c", "tiny", None, R.choice(["0.0005", "0.0015", "0.00025"]), None, None,
              "2026-01-01T00:00:00Z"),
             ("c", "pp", None, R.choice(["0.0149999999999999999999999995", "7.5", "0.333"]),
              R.choice(["0.3", "0.001", "3"]), R.choice(["0", "0.0015", "5"]),
              "2026-01-01T00:00:00Z")]
    for product, action, model, cpu, inc, minimum, start in rates:
        r = ["[[rates]]", f'product = "{product}"', f'action = "{action}"']
        r += [f'model = "{model}"'] if model is not None else []
        r += ['unit = "u"', f'credits_per_unit = "{cpu}"']
        r += [f'increment = "{inc}"'] if inc else []
        r += [f'minimum = "{minimum}"'] if minimum else []
        out.append("\n".join(r + [f"effective_from = {start}"]) + "\n")
    return "\n".join(out)


# ------------------------------------------------------------------------------ writing

def ts_array(R, vals):
    ok = [v for v in vals if v is not None]
    units = ["us", "us"]
    if all(FIRST_US <= v < END_US and -2**63 < v * 1000 < 2**63 - 10**6 for v in ok):
        units.append("ns")
    if all(v % 1000 == 0 for v in ok):
        units.append("ms")
    if all(v % 10**6 == 0 for v in ok):
        units.append("s")
    unit = R.choice(units)
    sub_us = 999 if R.random() < 0.3 else 0   # nanoseconds past the microsecond: floored
    ints = [None if v is None else v * 1000 + sub_us if unit == "ns"
            else v // {"s": 10**6, "ms": 1000, "us": 1}[unit] for v in vals]
    arr = pa.array(ints, pa.timestamp(unit, tz=R.choice([None, "UTC", "+02:00",
                                                            "America/New_York"])))
    return arr.dictionary_encode() if R.random() < 0.05 else arr


def num_array(R, vals):
    """Decimal / float / None -> a Parquet-able number column of a random exact-enough type."""
    floats = [v for v in vals if isinstance(v, float)]
    if floats and (R.random() < 0.5 or not all(math.isfinite(v) for v in floats)):
        return pa.array([None if v is None else float(v) for v in vals], pa.float64())
    vals = [Decimal(repr(v)) if isinstance(v, float) else v for v in vals]   # 0.1235 as written
    ok = [v for v in vals if v is not None]
    scale = max([max(0, -v.as_tuple().exponent) for v in ok], default=0)
    digits = max([len(str(abs(int(v)))) for v in ok], default=1)
    options = ["double", "dec"]
    if scale == 0 and all(abs(v) < 2**31 for v in ok):
        options += ["int32", "int64", "int16" if all(abs(v) < 2**15 for v in ok) else "int64"]
    kind = R.choice(options)
    if kind == "double":
        return pa.array([None if v is None else float(v) for v in vals], pa.float64())
    if kind.startswith("int"):
        return pa.array([None if v is None else int(v) for v in vals], getattr(pa, kind)())
    s = R.choice([scale, scale, max(scale, 3), scale + 2])
    p = R.choice([max(digits + s, 9), 38]) if digits + s <= 18 else 38
    return pa.array([None if v is None else v.quantize(Decimal(1).scaleb(-s)) for v in vals],
                    pa.decimal128(p, s))


def write_dataset(R, root, ds, rows, names=None):
    os.makedirs(os.path.join(root, ds), exist_ok=True)
    names = [f"{ds}/{n}" for n in names] if names else [
        f"{ds}/part-0.parquet", f"{ds}/date=2026-11-01/part-1.parquet", f"{ds}/b/x.parquet",
        f"{ds}/a.parquet", f"{ds}/A.parquet", f"{ds}/a-b/x.parquet", f"{ds}/a/x.parquet",
        f"{ds}/a.b/x.parquet"]
    R.shuffle(names)
    parts = [[] for _ in range(R.choice([1, 1, 2, 3]))]
    for r in rows:
        R.choice(parts).append(r)
    for name, part in zip(names, parts):
        if not part:
            continue
        cols = {}
        for col, kind, required in INPUTS[ds]:
            vals = [r.get(col) for r in part]
            if not required and all(v is None for v in vals) and R.random() < 0.5:
                continue   # a nullable column may be absent
            if kind == "str":
                cols[col] = pa.array(vals, R.choice([pa.string(), pa.string(), pa.large_string()]))
                if R.random() < 0.25:
                    cols[col] = cols[col].dictionary_encode()
            elif kind == "ts":
                cols[col] = ts_array(R, vals)
            elif kind == "num":
                cols[col] = num_array(R, vals)
            else:
                fits = [t for t, bits in [(pa.int16(), 15), (pa.int32(), 31), (pa.int64(), 63)]
                        if all(v is None or -2**bits <= v < 2**bits for v in vals)]
                cols[col] = pa.array(vals, R.choice(fits))
        if R.random() < 0.2:
            cols["extra_col"] = pa.array(["x"] * len(part))
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(pa.table(cols), path, row_group_size=R.choice([None, 1, 2, 3]),
                       compression=R.choice(["snappy", "zstd", "gzip", "none"]),
                       data_page_version=R.choice(["1.0", "2.0"]),
                       store_decimal_as_integer=R.random() < 0.5)
    if R.random() < 0.15 and os.path.exists(os.path.join(root, names[0])):
        hidden = R.choice(["_tmp.parquet", ".hidden.parquet", "_staging/x.parquet",
                           ".x/y.parquet", "x.parquet.bak"])   # never read
        os.makedirs(os.path.dirname(os.path.join(root, ds, hidden)), exist_ok=True)
        shutil.copy(os.path.join(root, names[0]), os.path.join(root, ds, hidden))


# ------------------------------------------------------------------------------ the root

def gen(seed, root, info=None):
    """`info` (a dict) asks for a first close of a history sequence (an as-of earlier in the
    periods, so that later periods remain to close) and receives the generator's state."""
    R = random.Random(seed)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    currency = R.choice(list(CURRENCIES))
    with open(os.path.join(root, "pricebook.toml"), "w") as f:
        f.write(pricebook(R, currency))
    _, plans, rates = load_pricebook(root)
    base = dt.datetime.fromisoformat(R.choice(["2026-10", "2027-01", "2027-11", "2028-01"])
                                     + "-01T00:00:00+00:00")

    # allocations: monthly periods from an anchor (days 29-31, times of day, mid-cycle
    # first periods, gaps, plan changes, cancelled, null anchors, overlaps, bad rows)
    accounts = R.sample(ACCOUNTS, R.randint(2, 6))
    allocations, periods, overlapped = [], {}, set()
    for acct in accounts:
        day = R.choice([1, 15, 28, 29, 30, 31, 31])
        month = add_months(base, R.randint(-1, 1))
        while calendar.monthrange(month.year, month.month)[1] < day:
            month = add_months(month, 1)
        anchor = month.replace(day=day) + R.choice(
            [dt.timedelta(0)] * 3 + [dt.timedelta(hours=18, minutes=30), dt.timedelta(hours=6)])
        null_anchor, midcycle = R.random() < 0.3, R.random() < 0.2
        plan, k, periods[acct] = R.choice(list(plans)), 0, []
        for i in range(R.randint(1, 5)):
            k += R.random() < 0.12 and i > 0   # a gap
            start, end = add_months(anchor, k), add_months(anchor, k + 1)
            if i == 0 and midcycle:
                start = min(start + dt.timedelta(days=R.randint(1, 20)), end - dt.timedelta(days=1))
            if R.random() < 0.2:
                plan = R.choice(list(plans))
            included = plans[plan]["included"] if R.random() < 0.6 else Decimal(
                R.choice(["5", "12.345", "0", "60", "3.5", "3.0005", "2.0015"]))
            if null_anchor:
                anc = None
            else:
                anc = to_us(anchor if R.random() < 0.7 else add_months(anchor, k)) + R.choice(
                    [0, 0, 0, 1, -5 * HOUR, 400 * DAY])   # also an anchor after period_end
            allocations.append(dict(account_id=acct, plan_id=plan, period_start=to_us(start),
                                    period_end=to_us(end), included_credits=included,
                                    billing_anchor=anc,
                                    status="cancelled" if R.random() < 0.15 else "active"))
            periods[acct].append((to_us(start), to_us(end)))
            k += 1
    if R.random() < 0.1:   # both rows of an overlap are rejected
        acct = R.choice(accounts)
        ps, pe = R.choice(periods[acct])
        overlapped.add(acct)
        allocations.append(dict(account_id=acct, plan_id="blk", period_start=ps + DAY,
                                period_end=pe + DAY, included_credits=Decimal(5),
                                billing_anchor=None, status="active"))
    if R.random() < 0.25:   # one row per allocation reject reason, far from the periods
        acct = R.choice(accounts)
        far = periods[acct][-1][1] + 400 * DAY
        for i, change in enumerate([dict(plan_id="nope"), dict(status="paused"),
                                    dict(period_end=far + 9 * DAY),
                                    dict(included_credits=Decimal(-1)),
                                    dict(plan_id=None), dict(included_credits=float("nan")),
                                    dict(period_start=END_US)]):
            row = dict(account_id=acct, plan_id="blk", period_start=far + i * 40 * DAY,
                       period_end=far + i * 40 * DAY + 30 * DAY, included_credits=Decimal(1),
                       billing_anchor=None, status="active")
            row.update(change)
            allocations.append(row)
    R.shuffle(allocations)

    ends = sorted(pe for v in periods.values() for _, pe in v)
    t_close = R.choice(ends[len(ends) // 3:] if info is None else ends[:max(1, len(ends) * 2 // 3)]) \
        + R.choice([0, 0, 5 * MIN, 20 * MIN, DAY, 3 * DAY, 1])
    ps, pe = R.choice(R.choice(list(periods.values())))
    t_rec = R.choice([ps + R.randint(0, (pe - ps) // MIN) * MIN, ps + R.randint(1, 20) * DAY
                      + R.randint(0, 10**6) * 1000 + R.choice([0, 1]), ps, pe - 1, pe])
    settle = R.choice(["15m"] * 4 + ["5m", "1h", "900s", "0s", "30s"])
    settle_us = parse_settle(settle)

    # grants: kinds, priorities (null, explicit, ties with the plan and with each other),
    # effective / expiring at period boundaries, before, inside, after; bad rows
    grants, gids = [], R.sample(GRANT_IDS, len(GRANT_IDS))
    for acct in accounts:
        for _ in range(R.randint(0, 4)):
            if not gids:
                break
            ps, pe = R.choice(periods[acct])
            eff = R.choice([ps, ps, ps - 10 * DAY, pe, t_close + DAY, ps + R.randint(1, 20) * DAY,
                            t_rec - R.randint(0, 3) * DAY])
            exp = R.choice([None, None, pe, pe + 1, pe + 40 * DAY, pe - DAY, ps + DAY, ps,
                            eff + R.choice([1, 2 * DAY, 35 * DAY])])
            if exp is not None and exp <= eff:
                exp = eff + DAY
            prio = None if R.random() < 0.5 else R.choice([0, 1, 1, 2, 3, -1, -2**31, 2**31 - 1])
            g = dict(grant_id=gids.pop(), account_id=acct, credits=Decimal(R.choice(
                ["5", "12.5", "0.001", "30", "100", "2.75", "0.0005", "4.0025"])),
                kind=R.choice(["rollover", "promo", "compensation", "top_up"]),
                effective_at=eff, expires_at=exp, priority=prio)
            grants.append(g)
            if R.random() < 0.2 and gids:   # a twin: only the id (or the plan-first rule) decides
                grants.append(dict(g, grant_id=gids.pop(), credits=Decimal(R.choice(["3", "4.5"])),
                                   kind=R.choice(["promo", "top_up", "compensation"]),
                                   priority=g["priority"] if g["priority"] is not None else 1))
        if R.random() < 0.2 and gids:   # ties with the plan on (priority, expiry, effective)
            ps, pe = R.choice(periods[acct])
            grants.append(dict(grant_id=gids.pop(), account_id=acct, kind=R.choice(
                ["promo", "top_up"]), credits=Decimal(6), effective_at=ps, expires_at=pe,
                priority=1))
    if R.random() < 0.15:   # this close's own rollover fed back: replaced, not copied
        acct = R.choice([a for a in accounts if a not in overlapped] or accounts)
        closed = [pe for _, pe in periods[acct] if pe <= t_close]
        if closed and acct not in overlapped:
            grants.append(dict(grant_id=f"rollover-{acct}-{stamp(closed[-1])}", account_id=acct,
                               kind="rollover", credits=Decimal("7"), effective_at=closed[-1],
                               expires_at=None, priority=None))
    if R.random() < 0.3:
        acct, t = R.choice(accounts), t_close - 40 * DAY
        ok = dict(account_id=acct, kind="promo", credits=Decimal(5), effective_at=t,
                  expires_at=None, priority=None)
        for gid, change in [("gb1", dict(kind="bonus")), ("gb2", dict(credits=Decimal(0))),
                            ("gb3", dict(expires_at=t)), ("gb4", dict(priority=2**31)),
                            ("gb5", dict(credits=Decimal("0.0004"))), ("gb6", dict(kind=None)),
                            ("x" * 4097, {}), ("gb7", dict(expires_at=END_US + DAY))]:
            grants.append(dict(ok, grant_id=gid, **change))
        if grants[0]["grant_id"] != "gb1":   # a repeated id: the first valid row is kept
            grants.append(dict(grants[0], credits=Decimal(77)))

    # usage: instants at period and grant boundaries, around both as-ofs and settle,
    # before every allocation; quantities with half-even ties, doubles, zero; duplicates
    def instant(acct):
        ps, pe = R.choice(periods[acct])
        bounds = [x for g in grants if g["account_id"] == acct
                  for x in (g["effective_at"], g["expires_at"]) if x is not None]
        r = R.random()
        if r < 0.08:
            return ps
        if r < 0.14:
            return pe - 1
        if r < 0.3:
            t = R.choice([t_close, t_rec])
            return t - R.choice([settle_us, settle_us + 1, settle_us - 1, 1, 0, MIN, 20 * MIN,
                                 -MIN, 14 * MIN, 16 * MIN])
        if r < 0.34:
            return periods[acct][0][0] - DAY
        if r < 0.38:
            return pe + 3 * DAY
        if r < 0.48 and bounds:
            return R.choice(bounds) + R.choice([0, 0, -1, 1])
        return ps + R.randint(0, (pe - ps) // 10**6 - 1) * 10**6

    events, times = [], []
    for acct in accounts + (["nobody"] if R.random() < 0.2 else []):
        for _ in range(R.randint(2, 14)):
            t = R.choice(times) if times and R.random() < 0.15 else instant(
                acct if acct in periods else accounts[0])
            times.append(t)
            product, action, model = R.choice(SKUS)
            qty = R.choice(DOUBLES) if R.random() < 0.12 else Decimal(R.choice(QUANTITIES))
            eid = f"e{len(events):02d}" if R.random() < 0.8 else R.choice(
                [f"E{len(events)}", f"e_{len(events)}", f"\u00e9{len(events)}", f"e {len(events)}"])
            status = R.choices(["succeeded", "failed", "cancelled"], [17, 2, 1])[0]
            ingested = None if R.random() < 0.1 else t + R.randint(1, 100) * 10**6
            events.append(dict(event_id=eid, account_id=acct, product=product, action=action,
                               model=model, quantity=qty, occurred_at=t, status=status,
                               ingested_at=ingested))
    copies = []
    for e in events:
        r = R.random()
        ing = R.choice([None, e["ingested_at"], (e["ingested_at"] or e["occurred_at"])
                        + R.choice([-5, 5, 0]) * 10**6])
        if r < 0.08:   # identical (numbers and models compared after normalisation)
            c = dict(e, ingested_at=ing)
            if isinstance(c["quantity"], Decimal) and R.random() < 0.5:
                c["quantity"] = float(c["quantity"])
            if c["model"] is None and R.random() < 0.3:
                c["model"] = ""
            copies.append(c)
        elif r < 0.14:   # conflicting
            field = R.choice(["account_id", "status", "quantity", "occurred_at", "model", "action"])
            change = dict(account_id=R.choice(accounts), status=R.choice(["failed", "succeeded"]),
                          quantity=Decimal("0.0004") + (e["quantity"] if isinstance(
                              e["quantity"], Decimal) else 1),
                          occurred_at=e["occurred_at"] + R.choice([1, MIN, -DAY]),
                          model=R.choice([None, "m1"]), action="img")[field]
            copies.append(dict(e, ingested_at=ing, **{field: change}))
    if R.random() < 0.35:   # one row per usage reject reason
        for change in [dict(quantity=Decimal(-1)), dict(status="weird"), dict(product=None),
                       dict(quantity=Decimal("-0.0004")), dict(quantity=float("nan")),
                       dict(quantity=1e15), dict(occurred_at=None), dict(quantity=-0.0005),
                       dict(event_id="e" * 4097), dict(event_id="f" * 4096),
                       dict(ingested_at=FIRST_US - 1), dict(status="SUCCEEDED")]:
            copies.append(dict(R.choice(events), **change))
    usage = events + copies
    R.shuffle(usage)

    # debits: exact, doubled, wrong, refunded, adjustment, another account, at/after as-of,
    # none; unattached entries of every kind; bad rows
    debits = []

    def entry(acct, eid, kind, credits, at):
        debits.append(dict(entry_id=f"d{len(debits):03d}", account_id=acct, event_id=eid,
                           kind=kind, credits=credits, recorded_at=at))
    for e in events:
        acct, eid, t = e["account_id"], e["event_id"], e["occurred_at"]
        qty = Decimal(e["quantity"]).quantize(Decimal("0.001"))
        exp = price(rates, e["product"], e["action"], e["model"] or None, qty, t) or Decimal(0)
        if e["status"] != "succeeded" and R.random() < 0.7:
            exp = Decimal(0)
        at = t + R.choice([5 * 10**6, 5 * 10**6, 40 * DAY, 10 * MIN, -2 * DAY])
        r = R.random()
        if r < 0.5:
            entry(acct, eid, "debit", exp, at)
        elif r < 0.57:
            entry(acct, eid, "debit", exp, at)
            entry(acct, eid, R.choice(["debit", "adjustment"]), exp, at + 1)
        elif r < 0.62:
            entry(acct, eid, "debit", exp + 1, at)
        elif r < 0.67:
            entry(acct, eid, "debit", exp, at)
            entry(acct, eid, "refund", exp, at + 7)
        elif r < 0.71:
            entry(acct, eid, "adjustment", exp, at)
        elif r < 0.75:
            entry(R.choice(accounts), eid, "debit", exp, at)
        elif r < 0.79:
            entry(acct, eid, "debit", exp, R.choice([t_close, t_rec]) + R.choice([0, -1, MIN]))
        elif r < 0.81:
            entry(acct, eid, "refund", exp, at)
    for acct in accounts + ["nobody"]:
        for _ in range(R.randint(0, 3)):
            ps, pe = R.choice(periods.get(acct, periods[accounts[0]]))
            entry(acct, R.choice([None, None, "nope", "e01", ""]),
                  R.choice(["debit", "adjustment", "refund"]),
                  Decimal(R.choice(["1", "2.5", "0", "7", "0.0015"])),
                  R.choice([ps, ps + 2 * DAY, pe - 1, pe, t_close - MIN, t_rec - 1, ps - 3 * DAY]))
    if R.random() < 0.3 and debits:
        d = debits[0]
        debits.append(dict(d, credits=Decimal(50)))   # a repeated entry_id
        for change in [dict(kind="chargeback"), dict(credits=Decimal(-5)), dict(recorded_at=None),
                       dict(credits=Decimal("999999999999999.9996")), dict(credits=-0.0004),
                       dict(account_id="y" * 4097)]:
            debits.append(dict(d, entry_id=f"d{len(debits):03d}", **change))
    R.shuffle(debits)

    write_dataset(R, root, "allocations", allocations)
    write_dataset(R, root, "usage", usage)
    write_dataset(R, root, "debits", debits)
    if grants or R.random() < 0.5:   # grants/ is optional
        write_dataset(R, root, "grants", grants)

    if info is not None:
        info.update(R=R, accounts=accounts, periods=periods, overlapped=overlapped,
                    events=events, grants=grants, rates=rates, t_close=t_close, settle=settle)
    return {"reconcile": (iso(t_rec), settle), "close": (iso(t_close), settle)}


def iso(us):
    return from_us(us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ------------------------------------------------------------------------------ history

def gen_history(seed, work):
    """A sequence of closes over one data root, for `close --history` (README: Late events).

    Writes `work/data` as gen() does (with a first as-of earlier in the periods) and, for
    every later close k, `work/stage-k/{usage,debits}/...`: the rows that arrive between
    close k-1 and close k, which the runner copies into the root before close k. Ledger
    entries recorded before the late event they name reached the log are written one stage
    earlier (an orphan in the earlier close, attached to the late event in the later one).
    With some seeds an account "short" of hour-long periods around the first as-of is added
    (late events that a close within --settle of them bills: pending).
    Returns a dict: settle, closes (as-ofs, increasing), first_history (whether the first
    close passes --history too), out_forms (how each later close spells its --out:
    "", "./" or "zz/../" before its name), backups (close indexes after which a copy of the
    close is put beside it in the history folder, and a second close at its as-of into
    another folder is tried: refused), futures / recons (close indexes before which a `_`- or
    `.`-named folder (futures: index -> prefix) holding a later close, or a reconcile
    output is put into the history folder), refusals (whether to try the no-op and refusal
    cases at the end).
    """
    info = {}
    root = os.path.join(work, "data")
    gen(seed, root, info)
    R, accounts, periods = info["R"], info["accounts"], info["periods"]
    rates, settle = info["rates"], info["settle"]
    t0 = info["t_close"]
    if R.random() < 0.4:
        # an account of short periods around the first as-of: its late events can be billed
        # by a close within --settle of them (pending late events)
        acct, plan = "short", R.choice(["blk", "ovg", "free", "ovg2"])
        cuts = [t0 - 3 * HOUR, t0 - R.choice([5 * MIN, 1, 2 * MIN, 40 * MIN]),
                t0 + R.choice([20 * MIN, 1, 3 * HOUR, 1])]
        cuts.append(cuts[-1] + DAY)
        periods[acct] = list(zip(cuts, cuts[1:]))
        accounts = accounts + [acct]
        write_dataset(R, root, "allocations", [
            dict(account_id=acct, plan_id=plan, period_start=ps, period_end=pe,
                 included_credits=Decimal(R.choice(["5", "40"])), billing_anchor=None,
                 status="active") for ps, pe in periods[acct]],
            names=["short.parquet", "short/x.parquet", "date=short/x.parquet"])
    ends = sorted({pe for v in periods.values() for _, pe in v})
    closes = [t0]
    for _ in range(R.choice([1, 1, 1, 2])):
        later = [e for e in ends if e > closes[-1]]
        if len(closes) == 1 and "short" in periods and R.random() < 0.7:
            t = periods["short"][1][1] + R.choice([0, 1])   # the close of short's 2nd period
        elif later and R.random() < 0.85:
            t = R.choice(later[:3]) + R.choice([0, 0, MIN, DAY, 1])
        else:
            t = closes[-1] + R.choice([DAY, 20 * DAY, 45 * DAY])
        closes.append(t)
    stages = {k: dict(usage=[], debits=[]) for k in range(len(closes))}
    used_ids = {e["event_id"] for e in info["events"]}

    def expected(e):
        qty = Decimal(e["quantity"]).quantize(Decimal("0.001"))
        return price(rates, e["product"], e["action"], e["model"] or None, qty,
                     e["occurred_at"]) or Decimal(0)

    def entry(k, acct, eid, kind, credits, at):
        # stage of an entry: the first close whose as-of is after it was recorded
        s = next((j for j, t in enumerate(closes) if at < t), len(closes) - 1)
        s = min(max(s, 0), k)
        stages[s]["debits"].append(dict(
            entry_id=f"L{k}d{sum(len(v['debits']) for v in stages.values()):03d}",
            account_id=acct, event_id=eid, kind=kind, credits=credits, recorded_at=at))

    for k in range(1, len(closes)):
        prev, now = closes[k - 1], closes[k]
        closed = [(a, ps, pe) for a in accounts for ps, pe in periods[a] if pe <= prev]
        if not closed:
            continue
        late = []
        for i in range(R.randint(2, 10)):
            short = [c for c in closed if c[0] == "short"]
            acct, ps, pe = R.choice(short if short and R.random() < 0.3 else closed)
            t = R.choice([ps, ps, pe - 1, ps + 1, pe - settle_us(settle), pe - 1 - R.randint(
                0, settle_us(settle)) if acct == "short" else pe - 1,
                          ps + R.randint(0, max(0, (pe - ps) // 10**6 - 1)) * 10**6])
            # rates that change (priced at occurred_at, not at the billing period's start)
            product, action, model = R.choice(SKUS if R.random() < 0.7 else [
                ("s", "gen", "m2"), ("c", "edit", ""), ("c", "edit", None)])
            eid = R.choice([f"L{k}-{i:02d}", f"L{k}-{i:02d}", f"e{i:02d}L{k}", f"\u00e9L{k}{i}"])
            if eid in used_ids:
                continue
            used_ids.add(eid)
            e = dict(event_id=eid, account_id=acct, product=product, action=action,
                     model=model, quantity=R.choice(DOUBLES) if R.random() < 0.1
                     else Decimal(R.choice(QUANTITIES + ["40", "150"])), occurred_at=t,
                     status=R.choices(["succeeded", "failed", "cancelled"], [6, 2, 1])[0],
                     ingested_at=None if R.random() < 0.15 else prev + R.randint(1, 10**4) * 10**6)
            late.append(e)
            if R.random() < 0.15:   # a copy of the late event: identical or conflicting
                late.append(dict(e, ingested_at=None) if R.random() < 0.6 else
                            dict(e, ingested_at=prev + 2 * 10**10, status="failed"))
            exp = expected(e) if e["status"] == "succeeded" or R.random() < 0.3 else Decimal(0)
            after = prev + R.randint(1, 200) * MIN   # recorded after the earlier close
            r = R.random()
            if r < 0.3:
                entry(k, acct, eid, "debit", exp, after)
            elif r < 0.42:   # recorded before the event reached the log
                entry(k, acct, eid, "debit", exp, t + 5 * 10**6)
            elif r < 0.5:
                entry(k, acct, eid, "debit", exp, after)
                entry(k, acct, eid, "refund", exp, after + 7)
            elif r < 0.56:
                entry(k, acct, eid, "debit", exp, after)
                entry(k, acct, eid, R.choice(["debit", "adjustment"]), exp, after + 1)
            elif r < 0.62:
                entry(k, acct, eid, "debit", exp + 1, after)
            elif r < 0.66:
                entry(k, R.choice(accounts), eid, "debit", exp, after)
            elif r < 0.7:
                entry(k, acct, eid, "adjustment", exp, after)
            elif r < 0.74:
                entry(k, acct, eid, "debit", exp, now + R.choice([0, -1]))
        stages[k]["usage"] += late
        # copies of events an earlier close saw: identical (counted) or conflicting (the
        # loser rejected); still seen, so outside
        old = [e for e in info["events"] if e["occurred_at"] < prev]
        for _ in range(R.randint(0, 3) if old else 0):
            e = R.choice(old)
            ing = prev + R.randint(1, 100) * 10**6
            nxt = [ps for ps, pe in periods.get(e["account_id"], []) if prev < pe <= now]
            r = R.random()
            if r < 0.45:
                stages[k]["usage"].append(dict(e, ingested_at=ing))
            elif nxt and r < 0.75:
                # a conflicting copy that wins (ingested first) and moves the seen event
                # into a period this close covers
                stages[k]["usage"].append(dict(e, ingested_at=e["occurred_at"] - 10**6,
                                               occurred_at=nxt[0] + HOUR))
            elif r < 0.85 and (others := [(a, ps) for a, spans in periods.items()
                                          if a != e["account_id"]
                                          for ps, pe in spans if prev < pe <= now]):
                # the same, onto another account's covered period (the copies cross
                # accounts: tally routes them together)
                a, ps = R.choice(others)
                stages[k]["usage"].append(dict(e, account_id=a,
                                               ingested_at=e["occurred_at"] - 10**6,
                                               occurred_at=ps + HOUR))
            else:
                q = e["quantity"] if isinstance(e["quantity"], Decimal) else Decimal(1)
                stages[k]["usage"].append(dict(e, ingested_at=ing, quantity=q + 1))
        # on-time events at the start of the periods this close covers, for accounts with
        # late events: late events draw before them
        for acct in dict.fromkeys(e["account_id"] for e in late):
            for ps, pe in periods[acct]:
                if prev < pe <= now and R.random() < 0.6:
                    eid = f"S{k}-{acct}-{ps % 997}"
                    if eid in used_ids:
                        continue
                    used_ids.add(eid)
                    product, action, model = R.choice(SKUS[:9])
                    e = dict(event_id=eid, account_id=acct, product=product, action=action,
                             model=model, quantity=Decimal(R.choice(["3", "10", "1"])),
                             occurred_at=ps, status="succeeded", ingested_at=ps + 10**6)
                    stages[k]["usage"].append(e)
                    entry(k, acct, eid, "debit", expected(e), ps + 5 * 10**6)
        # unattached entries recorded in closed periods (outside) and in the new ones
        for _ in range(R.randint(0, 3)):
            acct = R.choice(accounts)
            ps, pe = R.choice(periods[acct])
            entry(k, acct, R.choice([None, "nope", ""]), R.choice(["debit", "adjustment", "refund"]),
                  Decimal(R.choice(["1", "2.5", "7"])), R.choice([ps + DAY, pe - 1, prev + MIN]))

    # stage 0 rows go into the root itself (before the first close); later ones are staged
    for k, rows in stages.items():
        target = root if k == 0 else os.path.join(work, f"stage-{k}")
        for ds in ("usage", "debits"):
            if rows[ds]:
                R.shuffle(rows[ds])
                write_dataset(R, target, ds, rows[ds], names=[
                    f"late-{k}/part-0.parquet", f"date=late{k}/x.parquet", f"late{k}.parquet"])
    n = len(closes)
    return dict(settle=settle, closes=[iso(t) for t in closes],
                first_history=R.random() < 0.5,
                out_forms=[""] + [R.choice(["", "", "", "./", "zz/../"]) for _ in range(n - 1)],
                backups={k for k in range(1, n) if R.random() < 0.25},
                futures={k: R.choice(["_", "."]) for k in range(1, n) if R.random() < 0.15},
                recons={k for k in range(1, n) if R.random() < 0.15},
                refusals=R.random() < 0.5)


def settle_us(settle):
    return parse_settle(settle)
