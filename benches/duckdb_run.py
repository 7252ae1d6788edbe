"""The bench's DuckDB runner: reconcile.sql on one data set, in one connection.

    python duckdb_run.py SQL DATA RATES_CSV PLANS_CSV OUT AS_OF SETTLE_SECONDS

The parameters become SQL variables. DuckDB's temporary files (it spills past its memory
limit: up to 36.4 GB for the 100m data set, `benches/duckdb-temp-size.sh`) go to OUT.tmp,
beside the outputs, not into the caller's folder (DuckDB's default, `.tmp/`).

With DUCKDB_SECONDS_FILE set, the seconds from the connection to the end of the SQL are
written there: DuckDB's own time, without Python's start-up and `import duckdb` (0.13 s of
DuckDB's 1.91 s process at 1m in the bench of 2026-12-07, 06:22), which a user of DuckDB's own
command line would not pay. The bench compares that time.
"""
import os
import sys
import time

import duckdb

started = time.monotonic()
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
c.close()
seconds_file = os.environ.get("DUCKDB_SECONDS_FILE")
if seconds_file:
    with open(seconds_file, "w") as f:
        f.write(f"{time.monotonic() - started:.3f}\n")
