"""The bench's DuckDB runner: reconcile.sql on one data set, in one connection.

    python duckdb_run.py SQL DATA RATES_CSV PLANS_CSV OUT AS_OF SETTLE_SECONDS

The parameters become SQL variables. DuckDB's temporary files (it spills past its memory
limit: up to 36.4 GB for the 100m data set, `benches/duckdb-temp-size.sh`) go to OUT.tmp,
beside the outputs, not into the caller's folder (DuckDB's default, `.tmp/`).
"""
import os
import sys

import duckdb

sql, data, rates, plans, out, as_of, settle = sys.argv[1:8]
os.makedirs(out, exist_ok=True)
c = duckdb.connect()
c.execute("PRAGMA threads=2")
c.execute("SET temp_directory = '" + (out + ".tmp").replace("'", "''") + "'")
c.execute("SET VARIABLE data = ?", [data])
c.execute("SET VARIABLE ratecard = ?", [rates])
c.execute("SET VARIABLE plans = ?", [plans])
c.execute("SET VARIABLE out = ?", [out])
c.execute("SET VARIABLE as_of = ?::TIMESTAMPTZ", [as_of])
c.execute("SET VARIABLE settle_seconds = ?", [int(settle)])
c.execute(open(sql).read())
