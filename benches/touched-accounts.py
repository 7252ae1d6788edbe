"""How much of a data root a split run would have to hold back if, instead of the light id
pass, it deferred every account touched by an id that crosses accounts to a last group.

    $BENCH_DIR/venv/bin/python benches/touched-accounts.py DATA_ROOT

An event id crosses when its usage rows and its ledger entries (by `event_id`) name more
than one account; an entry id crosses when its copies do. An account is touched when one
of its usage or ledger rows carries a crossing id. Accounts stand in for tally's 4,096
partitions (two accounts share a partition with odds of 1 in 4,096, so the figures are an
upper bound by a hair). Prints the touched accounts, their usage and ledger rows, and the
crossing ids, against the totals. Needs DuckDB (the bench's venv has it).
"""

import sys

import duckdb


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: touched-accounts.py DATA_ROOT")
    root = sys.argv[1]
    con = duckdb.connect()
    con.execute(
        f"create view u as select event_id, account_id "
        f"from read_parquet('{root}/usage/**/*.parquet')"
    )
    con.execute(
        f"create view l as select entry_id, event_id, account_id "
        f"from read_parquet('{root}/debits/**/*.parquet')"
    )
    (accounts, touched, rows, touched_rows, events, entries) = con.execute(
        """
        with ev as (select event_id, account_id from u
                    union select event_id, account_id from l where event_id is not null),
        cross_e as (select event_id from ev group by event_id
                    having count(distinct account_id) > 1),
        cross_l as (select entry_id from l group by entry_id
                    having count(distinct account_id) > 1),
        touched as (
            select account_id from u where event_id in (select event_id from cross_e)
            union select account_id from l where event_id in (select event_id from cross_e)
            union select account_id from l where entry_id in (select entry_id from cross_l))
        select
            (select count(distinct account_id) from u),
            (select count(*) from touched),
            (select count(*) from u) + (select count(*) from l),
            (select count(*) from u where account_id in (select account_id from touched))
              + (select count(*) from l where account_id in (select account_id from touched)),
            (select count(*) from cross_e),
            (select count(*) from cross_l)
        """
    ).fetchone()
    print(f"accounts touched: {touched} of {accounts} ({100 * touched / accounts:.1f} %)")
    print(
        f"their usage and ledger rows: {touched_rows} of {rows} "
        f"({100 * touched_rows / rows:.1f} %)"
    )
    print(f"crossing event ids: {events}; crossing entry ids: {entries}")


if __name__ == "__main__":
    main()
