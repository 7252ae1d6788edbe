-- benches/reconcile.sql — tally's nightly reconciliation written as plain DuckDB SQL.
--
-- The baseline for the performance benchmark (benches/bench.sh): the same work a finance
-- engineer would write by hand over the same Parquet files, so that tally's wall time and
-- memory can be judged against it. It follows ../shared/CONTRACT.md sections 3 and 5:
--   read usage and validate rows -> dedup by event_id (earliest ingested_at, nulls last, then
--   file path, then row; a copy that differs makes the event a conflicting_duplicate) ->
--   window (the account's allocation period containing as-of, up to as-of) -> price every
--   event from the rate card (effective-dated; model-specific row in effect, else the generic
--   one; DECIMAL arithmetic) -> FULL OUTER JOIN with the ledger aggregated per event_id ->
--   classify -> unattached entries (orphan_debit / manual_adjustment) -> per-account totals ->
--   COPY discrepancies and account totals to Parquet.
--
-- What it deliberately does NOT do (tally does, so tally does strictly more work):
--   * grant consumption (contract section 4): no balances, so no over_limit_usage rows and no
--     pending-vs-over-limit interplay; the ordered, per-instant draw from prioritised grants is
--     a sequential fold that has no natural set-based SQL form;
--   * rejects.parquet with reasons and details; invalid rows are simply filtered out;
--   * repeated entry_id detection in the ledger (a repeated entry is counted twice here; the
--     generated data has none);
--   * the CSV copy of discrepancies, summary.json/.md, manifest.json (sha256 of every input),
--     and the atomic staging-folder publish.
--
-- Parameters (set by the caller with SET VARIABLE before this script runs):
--   data            the data root (VARCHAR)
--   ratecard        a CSV derived from DATA/pricebook.toml by bench.sh (VARCHAR): columns
--                   product, action, model (empty = generic), credits_per_unit, increment,
--                   minimum, effective_from (RFC 3339)
--   plans           a CSV of the price book's plan ids (column plan_id), also from bench.sh
--   out             output folder, must exist (VARCHAR)
--   as_of           TIMESTAMPTZ, e.g. '2026-11-20 00:00:00+00'
--   settle_seconds  INTEGER, e.g. 900

SET VARIABLE settle_from = getvariable('as_of')::TIMESTAMPTZ
    - to_seconds(getvariable('settle_seconds')::BIGINT);

-- ---- rate card: a few dozen rows; each row is in effect until the next row of its key -----
CREATE OR REPLACE TEMP TABLE rates AS
SELECT product, action, model,
       credits_per_unit, increment, minimum,
       -- increment in thousandths, for the exact integer ceiling below
       CAST(increment * 1000 AS BIGINT) AS increment_milli,
       effective_from,
       coalesce(lead(effective_from) OVER (PARTITION BY product, action, model
                                           ORDER BY effective_from),
                TIMESTAMPTZ '9999-12-31 00:00:00+00') AS effective_to
FROM read_csv(getvariable('ratecard'), header = true, columns = {
       'product': 'VARCHAR', 'action': 'VARCHAR', 'model': 'VARCHAR',
       'credits_per_unit': 'DECIMAL(18,6)', 'increment': 'DECIMAL(18,6)',
       'minimum': 'DECIMAL(18,6)', 'effective_from': 'TIMESTAMPTZ'});

-- ---- open account-periods: the allocation period containing as-of (reconcile) -------------
-- Valid allocation rows (known status and plan, sane period) that overlap no other valid row of
-- their account (overlapping rows are all rejected), then the one containing as-of.
CREATE OR REPLACE TEMP TABLE open_periods AS
WITH valid AS (
    SELECT account_id, period_start::TIMESTAMPTZ AS period_start,
           period_end::TIMESTAMPTZ AS period_end, row_number() OVER () AS rid
    FROM read_parquet(getvariable('data') || '/allocations/**/*.parquet',
                      hive_partitioning = false, union_by_name = true)
    WHERE account_id IS NOT NULL AND plan_id IS NOT NULL AND period_start IS NOT NULL
      AND period_end IS NOT NULL AND status IS NOT NULL
      AND TRY_CAST(round_even(included_credits, 3) AS DECIMAL(18,3)) >= 0
      AND period_end > period_start
      AND status IN ('active', 'cancelled')
      AND plan_id IN (SELECT plan_id FROM read_csv(getvariable('plans'), header = true,
                                                   columns = {'plan_id': 'VARCHAR'}))
)
SELECT account_id, period_start, period_end
FROM valid a
WHERE period_start <= getvariable('as_of')::TIMESTAMPTZ
  AND getvariable('as_of')::TIMESTAMPTZ < period_end
  AND NOT EXISTS (SELECT 1 FROM valid b
                  WHERE b.account_id = a.account_id AND b.rid <> a.rid
                    AND b.period_start < a.period_end AND a.period_start < b.period_end);

-- ---- events: valid usage rows, deduplicated, windowed and priced ---------------------------
CREATE OR REPLACE TEMP VIEW usage_rows AS
SELECT event_id, account_id, product, action,
       nullif(model, '') AS model,
       -- to thousandths, half-even (DuckDB's plain cast rounds half away from zero);
       -- NaN, inf and out-of-range values become NULL and the row is dropped
       TRY_CAST(round_even(quantity, 3) AS DECIMAL(18,3)) AS quantity,
       status, occurred_at::TIMESTAMPTZ AS occurred_at,
       ingested_at::TIMESTAMPTZ AS ingested_at, filename, file_row_number
FROM read_parquet(getvariable('data') || '/usage/**/*.parquet',
                  hive_partitioning = false, union_by_name = true,
                  filename = true, file_row_number = true)
WHERE event_id IS NOT NULL AND account_id IS NOT NULL AND product IS NOT NULL
  AND action IS NOT NULL AND status IS NOT NULL AND occurred_at IS NOT NULL
  AND TRY_CAST(round_even(quantity, 3) AS DECIMAL(18,3)) >= 0
  AND status IN ('succeeded', 'failed', 'cancelled');

-- Dedup. Only the event_ids seen more than once (well under 1% of them) need resolving: find
-- them with one GROUP BY, pass every other row straight through (anti join), and pick the
-- winning copy of each repeated id by (ingested_at nulls last, file path, row). The copies
-- differ when min(hash) <> max(hash) over the compared columns (all but ingested_at, after
-- normalisation: model '' = null, quantity as DECIMAL(18,3), instants as TIMESTAMPTZ): the
-- event is then also a conflicting_duplicate.
-- (The one-pass forms, GROUP BY event_id with arg_min(struct of the columns, sort key) or
-- QUALIFY row_number() OVER (PARTITION BY event_id ...) = 1 over every row, gave the same
-- result about 2x slower at 10m events on this machine.)
CREATE OR REPLACE TEMP TABLE events AS
WITH repeated AS (
    SELECT event_id,
           min(hash(account_id, product, action, model, quantity, status, occurred_at))
             <> max(hash(account_id, product, action, model, quantity, status, occurred_at))
             AS conflicting
    FROM usage_rows
    GROUP BY event_id
    HAVING count(*) > 1
),
flat AS (
    SELECT u.event_id, u.account_id, u.product, u.action, u.model, u.quantity, u.status,
           u.occurred_at, false AS conflicting
    FROM usage_rows u ANTI JOIN repeated r ON r.event_id = u.event_id
    UNION ALL
    SELECT * FROM (
        SELECT u.event_id, u.account_id, u.product, u.action, u.model, u.quantity, u.status,
               u.occurred_at, r.conflicting
        FROM usage_rows u JOIN repeated r ON r.event_id = u.event_id
        QUALIFY row_number() OVER (PARTITION BY u.event_id
                                   ORDER BY u.ingested_at NULLS LAST, u.filename,
                                            u.file_row_number) = 1
    )
)
SELECT f.event_id, f.account_id, f.product, f.action, f.model, f.quantity, f.status,
       f.occurred_at, f.conflicting,
       p.account_id IS NOT NULL AS in_window,
       f.status = 'succeeded' AND coalesce(m.product, g.product) IS NULL AS unpriced,
       CASE
         WHEN f.status <> 'succeeded' THEN CAST(0 AS DECIMAL(18,3))
         WHEN coalesce(m.product, g.product) IS NULL THEN NULL
         -- credits = max(minimum, ceil(quantity / increment) * increment * credits_per_unit),
         -- rounded half-even to 0.001. The ceiling is an exact integer division on
         -- thousandths (DuckDB's DECIMAL / DECIMAL would go through DOUBLE).
         ELSE CAST(round_even(greatest(
                coalesce(m.minimum, g.minimum),
                ((CAST(f.quantity * 1000 AS BIGINT)
                    + coalesce(m.increment_milli, g.increment_milli) - 1)
                  // coalesce(m.increment_milli, g.increment_milli))
                  * coalesce(m.increment, g.increment)
                  * coalesce(m.credits_per_unit, g.credits_per_unit)), 3) AS DECIMAL(18,3))
       END AS expected
FROM flat f
LEFT JOIN open_periods p
       ON p.account_id = f.account_id
      AND f.occurred_at >= p.period_start AND f.occurred_at < p.period_end
      AND f.occurred_at < getvariable('as_of')::TIMESTAMPTZ
LEFT JOIN rates m
       ON m.product = f.product AND m.action = f.action AND m.model = f.model
      AND f.occurred_at >= m.effective_from AND f.occurred_at < m.effective_to
LEFT JOIN rates g
       ON g.product = f.product AND g.action = f.action AND g.model IS NULL
      AND f.occurred_at >= g.effective_from AND f.occurred_at < g.effective_to;

-- ---- ledger entries recorded before as-of ---------------------------------------------------
CREATE OR REPLACE TEMP TABLE entries AS
SELECT entry_id, account_id, event_id, kind,
       TRY_CAST(round_even(credits, 3) AS DECIMAL(18,3)) AS credits,
       CASE WHEN kind = 'refund' THEN -TRY_CAST(round_even(credits, 3) AS DECIMAL(18,3))
            ELSE TRY_CAST(round_even(credits, 3) AS DECIMAL(18,3)) END AS signed_credits,
       recorded_at::TIMESTAMPTZ AS recorded_at
FROM read_parquet(getvariable('data') || '/debits/**/*.parquet',
                  hive_partitioning = false, union_by_name = true)
WHERE entry_id IS NOT NULL AND account_id IS NOT NULL AND kind IS NOT NULL
  AND recorded_at IS NOT NULL
  AND kind IN ('debit', 'refund', 'adjustment') AND TRY_CAST(round_even(credits, 3) AS DECIMAL(18,3)) >= 0
  AND recorded_at < getvariable('as_of')::TIMESTAMPTZ;

-- ---- every event against its entries: FULL OUTER JOIN with the ledger per event_id ---------
CREATE OR REPLACE TEMP TABLE recon AS
WITH ledger AS (
    SELECT event_id,
           sum(signed_credits) AS net,
           count(*) AS n_entries,
           count(*) FILTER (WHERE kind IN ('debit', 'adjustment')) AS n_debits,
           min(account_id) AS min_account, max(account_id) AS max_account
    FROM entries
    WHERE event_id IS NOT NULL
    GROUP BY event_id
),
joined AS (
    SELECT e.*, l.event_id AS ledger_event_id,
           coalesce(l.net, 0) AS recorded,
           coalesce(l.n_entries, 0) AS n_entries,
           coalesce(l.n_debits, 0) AS n_debits,
           l.min_account, l.max_account,
           e.expected > 0 AND coalesce(l.n_entries, 0) = 0
             AND e.occurred_at >= getvariable('settle_from')::TIMESTAMPTZ AS pending
    FROM events e
    FULL OUTER JOIN ledger l ON l.event_id = e.event_id
)
SELECT *,
       CASE
         WHEN event_id IS NULL OR NOT in_window THEN NULL
         WHEN n_entries > 0 AND (min_account <> account_id OR max_account <> account_id)
           THEN 'account_mismatch'
         WHEN unpriced THEN 'unpriced_event'
         WHEN status <> 'succeeded' AND recorded > 0 THEN 'charged_failed_event'
         WHEN pending THEN NULL
         WHEN expected > 0 AND n_entries = 0 THEN 'missing_debit'
         WHEN n_debits >= 2 AND recorded > expected THEN 'duplicate_debit'
         WHEN recorded <> expected THEN 'amount_mismatch'
       END AS kind
FROM joined;

-- ---- unattached entries: naming no valid event, or no event at all --------------------------
-- Placed by their own account and recorded_at (inside the open period, before as-of).
CREATE OR REPLACE TEMP TABLE unattached AS
SELECT d.*,
       CASE WHEN d.kind = 'refund' THEN NULL               -- counted in the totals only
            WHEN d.kind = 'adjustment' AND d.event_id IS NULL THEN 'manual_adjustment'
            ELSE 'orphan_debit' END AS disc_kind
FROM entries d
JOIN open_periods p
  ON p.account_id = d.account_id
 AND d.recorded_at >= p.period_start AND d.recorded_at < p.period_end
WHERE d.event_id IS NULL
   OR d.event_id IN (SELECT ledger_event_id FROM recon WHERE event_id IS NULL);

-- ---- discrepancies ------------------------------------------------------------------------
CREATE OR REPLACE TEMP TABLE discrepancies AS
WITH event_rows AS (
    SELECT kind, account_id, event_id, occurred_at, product, action, model,
           expected, recorded
    FROM recon WHERE kind IS NOT NULL
    UNION ALL
    SELECT 'conflicting_duplicate', account_id, event_id, occurred_at, product, action, model,
           expected, recorded
    FROM recon WHERE conflicting AND in_window
),
event_entry_ids AS (   -- entry ids only for the (few) events that have a discrepancy
    SELECT event_id, list(entry_id ORDER BY entry_id) AS entry_ids
    FROM entries
    WHERE event_id IN (SELECT event_id FROM event_rows)
    GROUP BY event_id
)
SELECT r.kind, r.account_id, r.event_id,
       coalesce(x.entry_ids, []::VARCHAR[]) AS entry_ids,
       r.occurred_at, r.product, r.action, r.model,
       r.expected AS expected_credits,
       r.recorded AS recorded_credits,
       r.recorded - r.expected AS delta_credits
FROM event_rows r
LEFT JOIN event_entry_ids x USING (event_id)
UNION ALL
SELECT disc_kind, account_id, event_id, [entry_id], NULL, NULL, NULL, NULL,
       CAST(0 AS DECIMAL(18,3)), credits, credits
FROM unattached
WHERE disc_kind IS NOT NULL;

COPY (
    SELECT kind, account_id, event_id, entry_ids,
           occurred_at, product, action, model,
           CAST(expected_credits AS DECIMAL(18,3)) AS expected_credits,
           CAST(recorded_credits AS DECIMAL(18,3)) AS recorded_credits,
           CAST(delta_credits AS DECIMAL(18,3)) AS delta_credits
    FROM discrepancies
    ORDER BY account_id, occurred_at NULLS LAST, event_id NULLS LAST,
             list_position(['orphan_debit', 'manual_adjustment', 'account_mismatch',
                            'unpriced_event', 'charged_failed_event', 'missing_debit',
                            'duplicate_debit', 'amount_mismatch', 'conflicting_duplicate',
                            'over_limit_usage'], kind),
             entry_ids
) TO (getvariable('out') || '/discrepancies.parquet') (FORMAT parquet, COMPRESSION zstd);

-- ---- per-account totals ---------------------------------------------------------------------
-- recorded = net of every in-window entry of the account's period: the entries of its events
-- (whatever account they name) plus its unattached entries (refunds included).
COPY (
    WITH per_event AS (
        SELECT account_id,
               count(*) AS events_in_window,
               count(*) FILTER (WHERE status = 'succeeded' AND NOT unpriced) AS charged_events,
               count(*) FILTER (WHERE pending AND kind IS NULL) AS pending_events,
               coalesce(sum(expected), 0) AS expected_credits,
               sum(recorded) AS recorded_credits
        FROM recon
        WHERE in_window
        GROUP BY account_id
    ),
    per_unattached AS (
        SELECT account_id, sum(signed_credits) AS recorded_credits
        FROM unattached GROUP BY account_id
    ),
    per_disc AS (
        SELECT account_id, count(*) AS discrepancies,
               sum(abs(delta_credits)) AS abs_delta_credits
        FROM discrepancies GROUP BY account_id
    )
    SELECT account_id,
           coalesce(e.events_in_window, 0) AS events_in_window,
           coalesce(e.charged_events, 0) AS charged_events,
           coalesce(e.pending_events, 0) AS pending_events,
           CAST(coalesce(e.expected_credits, 0) AS DECIMAL(18,3)) AS expected_credits,
           CAST(coalesce(e.recorded_credits, 0) + coalesce(u.recorded_credits, 0)
                AS DECIMAL(18,3)) AS recorded_credits,
           CAST(coalesce(e.recorded_credits, 0) + coalesce(u.recorded_credits, 0)
                - coalesce(e.expected_credits, 0) AS DECIMAL(18,3)) AS unreconciled_credits,
           coalesce(x.discrepancies, 0) AS discrepancies,
           CAST(coalesce(x.abs_delta_credits, 0) AS DECIMAL(18,3)) AS abs_delta_credits
    FROM per_event e
    FULL OUTER JOIN per_unattached u USING (account_id)
    FULL OUTER JOIN per_disc x USING (account_id)
    ORDER BY account_id
) TO (getvariable('out') || '/account_totals.parquet') (FORMAT parquet, COMPRESSION zstd);
