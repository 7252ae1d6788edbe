#!/usr/bin/env python3
"""Write the data roots of benches/odd-shapes.sh (pyarrow).

    odd_shapes.py grants ROOT EVENTS GRANTS   one account, EVENTS events on Nov 1-18 and
        GRANTS grants effective on Nov 19 (usable by no event: every event passes them)
    odd_shapes.py rowgroups ROOT ROWS         ROWS usage and ROWS ledger rows, one row a
        row group
    odd_shapes.py flat ROOT ROWS              the same rows in one row group (the baseline)
    odd_shapes.py files ROOT ROWS             ROWS usage and ROWS ledger rows, one row a
        file (as a streaming sink that flushes every row writes them)
    odd_shapes.py allocations ROOT COPIES     1,000 events, and the account's allocation
        written COPIES times (an export that repeats a row: every copy overlaps every other)
    odd_shapes.py ids ROOT ROWS ID_BYTES ACCOUNTS   ROWS usage and ROWS ledger rows over
        ACCOUNTS accounts (each with its November allocation), every event_id and entry_id
        ID_BYTES long (the row number, then seeded random hex), in row groups of 4,096
        rows, the id columns without a dictionary (their footers' uncompressed size is
        then the ids' bytes and lengths); prints the id columns' uncompressed bytes by the
        footers, which is what tally counts
    odd_shapes.py plans ROOT ACCOUNTS [MONTHS]   ACCOUNTS accounts, each with its November
        allocation and a promo grant, and 1,000 events of the first (allocations and grants
        without usage: what a plan row costs by itself); with MONTHS, an allocation for each
        of the MONTHS months up to November (a reconcile covers November's alone)

The price book is the fixtures' (fixtures/pricebook.toml); the account has one November
`max` allocation.
"""

import os
import random
import shutil
import sys
import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UTC = dt.timezone.utc
TS = pa.timestamp("us", tz="UTC")
CREDITS = pa.decimal128(18, 3)


def at(day, second=0):
    return dt.datetime(2026, 11, day, tzinfo=UTC) + dt.timedelta(seconds=second)


def root(path):
    shutil.rmtree(path, ignore_errors=True)
    for folder in ("usage", "debits", "allocations", "grants"):
        os.makedirs(os.path.join(path, folder))
    shutil.copy(os.path.join(REPO, "fixtures", "pricebook.toml"), path)
    allocations_of(path, ["a1"])


def events_and_debits(ids, entries, owners):
    """The usage table of `ids` (events of `owners`, 2 seconds of prompt_to_video each, over
    Nov 1-18) and the ledger table debiting each once with entry `entries`."""
    rows = len(ids)
    times = pa.array([at(i % 18 + 1, i // 18 % 86_400) for i in range(rows)], TS)
    usage = pa.table(
        {
            "event_id": ids,
            "account_id": owners,
            "product": ["studio"] * rows,
            "action": ["prompt_to_video"] * rows,
            "model": pa.array([None] * rows, pa.string()),
            "quantity": pa.array([Decimal("2")] * rows, CREDITS),
            "status": ["succeeded"] * rows,
            "occurred_at": times,
        }
    )
    debits = pa.table(
        {
            "entry_id": entries,
            "account_id": owners,
            "event_id": ids,
            "kind": ["debit"] * rows,
            "credits": pa.array([Decimal("16")] * rows, CREDITS),
            "recorded_at": times,
        }
    )
    return usage, debits


def usage_and_debits(path, rows, row_group_size, one_file_a_row=False):
    usage, debits = events_and_debits(
        [f"e{i:08d}" for i in range(rows)], [f"d{i:08d}" for i in range(rows)], ["a1"] * rows
    )
    if one_file_a_row:
        for i in range(rows):
            pq.write_table(usage.slice(i, 1), os.path.join(path, "usage", f"u{i:08d}.parquet"))
            pq.write_table(debits.slice(i, 1), os.path.join(path, "debits", f"d{i:08d}.parquet"))
        return
    pq.write_table(usage, os.path.join(path, "usage", "u.parquet"), row_group_size=row_group_size)
    pq.write_table(debits, os.path.join(path, "debits", "d.parquet"), row_group_size=row_group_size)


def allocation_copies(path, copies):
    """The root's one allocation row, `copies` times in all."""
    one = pq.read_table(os.path.join(path, "allocations", "a.parquet"))
    pq.write_table(pa.concat_tables([one] * copies), os.path.join(path, "allocations", "a.parquet"))


def grants_of(path, grant_ids, accounts, credits, day, priorities):
    """Promo grants `grant_ids` of `accounts` (one each), `credits` each, effective on
    November `day`, never expiring."""
    n = len(grant_ids)
    table = pa.table(
        {
            "grant_id": grant_ids,
            "account_id": accounts,
            "kind": ["promo"] * n,
            "credits": pa.array([Decimal(credits)] * n, CREDITS),
            "effective_at": pa.array([at(day)] * n, TS),
            "expires_at": pa.array([None] * n, TS),
            "priority": pa.array(priorities, pa.int32()),
        }
    )
    pq.write_table(table, os.path.join(path, "grants", "g.parquet"))


def grants(path, count):
    ids = [f"g{i:08d}" for i in range(count)]
    grants_of(path, ids, ["a1"] * count, "1000", 19, [i % 1000 for i in range(count)])


def month_start(months_before_november):
    """The first of the month that many months before November 2026."""
    index = 2026 * 12 + 10 - months_before_november
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def allocations_of(path, accounts, months=1):
    """A `max` allocation for each of the accounts for each of the `months` months up to
    November (November's alone by default), in place of the root's."""
    n = len(accounts)
    backs = range(months - 1, -1, -1)
    starts = [month_start(back) for back in backs for _ in range(n)]
    ends = [month_start(back - 1) for back in backs for _ in range(n)]
    table = pa.table(
        {
            "account_id": accounts * months,
            "plan_id": ["max"] * n * months,
            "period_start": pa.array(starts, TS),
            "period_end": pa.array(ends, TS),
            "included_credits": pa.array([Decimal("500")] * n * months, CREDITS),
            "billing_anchor": pa.array([None] * n * months, TS),
            "status": ["active"] * n * months,
        }
    )
    pq.write_table(table, os.path.join(path, "allocations", "a.parquet"))


def long_ids(path, rows, id_bytes, account_count):
    """ROWS events and their debits over the accounts, ids ID_BYTES long; returns the id
    columns' uncompressed bytes by the footers."""
    accounts = [f"a{i:06d}" for i in range(account_count)]
    allocations_of(path, accounts)
    # Random hex after the row number (seeded: the same data every time), so that the
    # outputs' ids do not compress to nothing, as real ids of that length would not.
    fill = random.Random(1)
    pad = max(id_bytes - 10, 0)

    def long_id(prefix, i):
        return f"{prefix}{i:09d}" + fill.randbytes((pad + 1) // 2).hex()[:pad]

    ids = [long_id("e", i) for i in range(rows)]
    entries = [long_id("d", i) for i in range(rows)]
    owners = [accounts[i % account_count] for i in range(rows)]
    usage, debits = events_and_debits(ids, entries, owners)
    id_bytes_in_footers = 0
    for table, name in ((usage, "usage/u.parquet"), (debits, "debits/d.parquet")):
        file = os.path.join(path, name)
        plain = [c for c in ("event_id", "entry_id") if c in table.column_names]
        dictionary = [c for c in table.column_names if c not in plain]
        pq.write_table(table, file, row_group_size=4096, use_dictionary=dictionary)
        meta = pq.ParquetFile(file).metadata
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                column = group.column(c)
                if column.path_in_schema in plain:
                    id_bytes_in_footers += column.total_uncompressed_size
    return id_bytes_in_footers


def plans(path, account_count, months=1):
    accounts = [f"a{i:07d}" for i in range(account_count)]
    accounts[0] = "a1"
    allocations_of(path, accounts, months)
    ids = [f"g{i:07d}" for i in range(account_count)]
    grants_of(path, ids, accounts, "100", 2, [None] * account_count)
    usage_and_debits(path, 1000, 1 << 20)


def main():
    shape, path = sys.argv[1], sys.argv[2]
    root(path)
    if shape == "grants":
        events, count = int(sys.argv[3]), int(sys.argv[4])
        usage_and_debits(path, events, 1 << 20)
        grants(path, count)
    elif shape == "rowgroups":
        usage_and_debits(path, int(sys.argv[3]), 1)
    elif shape == "flat":
        usage_and_debits(path, int(sys.argv[3]), 1 << 20)
    elif shape == "files":
        usage_and_debits(path, int(sys.argv[3]), 1, one_file_a_row=True)
    elif shape == "allocations":
        usage_and_debits(path, 1000, 1 << 20)
        allocation_copies(path, int(sys.argv[3]))
    elif shape == "ids":
        rows, id_bytes, accounts = (int(a) for a in sys.argv[3:6])
        print(long_ids(path, rows, id_bytes, accounts))
    elif shape == "plans":
        plans(path, *(int(a) for a in sys.argv[3:5]))
    else:
        sys.exit(f"odd_shapes.py: unknown shape {shape!r}")


if __name__ == "__main__":
    main()
