//! The end of the computation: the partials of every shard (one for a whole run) put in
//! output order, and the run's invariants checked on them (every row accounted for once,
//! one invoice and renewal per closed period, unique next-period grant ids), before
//! anything is written.

use crate::census::Inputs;
use crate::close::{InvoiceRow, RenewalRow};
use crate::engine::{AccountResult, BalanceRow, Totals};
use crate::error::{Result, TallyError};
use crate::load::InputFile;
use crate::model::*;
use crate::reconcile::DiscrepancyRow;
use crate::run::{DatasetCounts, Partial, RunOutput, RunSettings, UsageCounts};
use crate::spill;
use crate::time::Micros;
use rayon::prelude::*;
use std::sync::Arc;

/// The run's tables gathered from its accounts' results, in output order (but for
/// discrepancies, sorted after), before they are moved into the [`RunOutput`].
struct Tables {
    discrepancies: Vec<DiscrepancyRow>,
    balances: Vec<BalanceRow>,
    invoices: Vec<InvoiceRow>,
    renewals: Vec<RenewalRow>,
    allocations_next: Vec<AllocationRow>,
    grants_next: Vec<GrantRow>,
    totals: Totals,
}

impl Tables {
    /// Empty tables with room for the rows of `results` (so that absorbing them never
    /// grows a table, which would copy it into fresh memory).
    fn with_room_for<'r>(results: impl Iterator<Item = &'r AccountResult>) -> Tables {
        let mut rows = [0usize; 6];
        for r in results {
            let lens = [
                r.discrepancies.len(),
                r.balances.len(),
                r.invoices.len(),
                r.renewals.len(),
                r.allocations_next.len(),
                r.grants_next.len(),
            ];
            for (total, n) in rows.iter_mut().zip(lens) {
                *total += n;
            }
        }
        Tables {
            discrepancies: Vec::with_capacity(rows[0]),
            balances: Vec::with_capacity(rows[1]),
            invoices: Vec::with_capacity(rows[2]),
            renewals: Vec::with_capacity(rows[3]),
            allocations_next: Vec::with_capacity(rows[4]),
            grants_next: Vec::with_capacity(rows[5]),
            totals: Totals::default(),
        }
    }

    /// Append another account's rows (accounts are absorbed in account order, so every
    /// table stays in its documented order except discrepancies, which are sorted after).
    /// Its billed events and invoice lines were taken out by its group (`runs`): any left
    /// would never be written, so they stop the run.
    fn absorb(&mut self, account_id: &str, r: AccountResult) -> Result<()> {
        if !(r.billed_events.is_empty() && r.invoice_lines.is_empty()) {
            return Err(TallyError::Invariant(format!(
                "account \"{account_id}\" still holds {} billed events and {} invoice lines \
                 when the tables are gathered (its group should have taken them for writing)",
                r.billed_events.len(),
                r.invoice_lines.len()
            )));
        }
        self.discrepancies.extend(r.discrepancies);
        self.balances.extend(r.balances);
        self.invoices.extend(r.invoices);
        self.renewals.extend(r.renewals);
        self.allocations_next.extend(r.allocations_next);
        let mut grants_next = r.grants_next;
        grants_next.sort_by(|a, b| a.grant_id.as_bytes().cmp(b.grant_id.as_bytes()));
        self.grants_next.extend(grants_next);
        self.totals.add(&r.totals)
    }
}

/// Warn of rejected allocation rows, by reason, naming the first: an account-period whose
/// only allocation row is rejected is billed by no run (no balances, no invoice at close,
/// its usage rejected `no_allocation`). A plan missing from the price book (a typo, a plan
/// added to the export before the book) rejects every allocation of that plan, and those
/// rows are few beside a noisy usage export's rejects: without this line the run's summary
/// says only "N rejected rows". A job alerts on them with `[alert]
/// max_rejected_allocations`. Called once per published run, where its outputs are put in
/// order (a run on one machine, a merge: the process whose exit code alerts), not by the
/// shards or by `explain`.
fn warn_of_rejected_allocations(rejects: &[Reject], not_covered: &[RowRef], files: &[InputFile]) {
    if let Some((rows, reasons, message)) = rejected_allocations(rejects, not_covered, files) {
        tracing::warn!(
            dataset = "allocations",
            rejected_allocations = rows,
            reasons = %reasons,
            "{message}"
        );
    }
}

/// The rejected allocation rows of periods the run covers, all but `not_covered` (sorted),
/// (none: `None`): how many, their count by reason (`reason N, ...` in name order), and
/// the warning's words, which name the first row by its place and count the others apart.
fn rejected_allocations(
    rejects: &[Reject],
    not_covered: &[RowRef],
    files: &[InputFile],
) -> Option<(u64, String, String)> {
    let rejected = || {
        (rejects.iter())
            .filter(|r| r.dataset == Dataset::Allocations)
            .filter(|r| not_covered.binary_search(&r.at).is_err())
    };
    let first = rejected().min_by_key(|r| (r.at.file, r.at.row))?;
    let mut by_reason: std::collections::BTreeMap<&str, u64> = Default::default();
    for r in rejected() {
        *by_reason.entry(r.reason.name()).or_default() += 1;
    }
    let rows: u64 = by_reason.values().sum();
    let reasons = (by_reason.iter())
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let file = files
        .get(first.at.file as usize)
        .map_or("?", |f| f.rel_path.as_str());
    let rows_are = match rows {
        1 => "1 allocation row is".to_string(),
        _ => format!("{rows} allocation rows are"),
    };
    let others = match not_covered.len() {
        0 => String::new(),
        1 => " (1 more, of a period this run does not cover, is in rejects.csv too)".into(),
        n => format!(" ({n} more, of periods this run does not cover, are in rejects.csv too)"),
    };
    // The detail quotes the row's values: a plan id holding a line break must not start a
    // line of its own in the human log.
    let message = format!(
        "{rows_are} rejected ({reasons}) in periods this run covers: an account-period whose \
         only allocation row is rejected is not billed (no balances, no invoice at close, \
         its usage rejected no_allocation). The first: {} row {}: {}{others}. See \
         rejects.csv; fix the price book or the export and rerun",
        crate::error::controls_escaped(file),
        first.at.row,
        crate::error::controls_escaped(&first.detail)
    );
    Some((rows, reasons, message))
}

/// Put the partials of every shard (one for a whole run) in output order, check the
/// run's invariants and return what `write` needs. Its sums are the run's totals
/// ([`TallyError::in_run_totals`]), for a run and a merge alike.
pub fn finish(settings: RunSettings, inputs: Inputs, partials: Vec<Partial>) -> Result<RunOutput> {
    order_outputs(settings, inputs, partials).map_err(TallyError::in_run_totals)
}

/// [`finish`]'s work.
fn order_outputs(
    settings: RunSettings,
    inputs: Inputs,
    partials: Vec<Partial>,
) -> Result<RunOutput> {
    let Inputs {
        book,
        pricebook_path,
        // In the manifest already (the fingerprint's) or checked against it (a merge's).
        pricebook_sha256: _,
        files,
    } = inputs;
    let (all, scratch) = gathered(partials)?;
    let Partial {
        mut results,
        mut rejects,
        rejected_allocations_not_covered: mut not_covered,
        rows_read,
        identical_duplicates: identical,
        outside_usage,
        outside_entries,
        billed,
        lines,
        mix,
        ..
    } = all;
    // Collect in output order: accounts by id (bytes), periods already in order; the
    // tables are sized once before the results are appended in that order.
    let order = account_order(&results)?;
    let mut breakdown = crate::breakdown::Breakdown {
        mix,
        ..Default::default()
    };
    (breakdown.top_accounts, breakdown.unreconciled_accounts) =
        crate::breakdown::top_accounts(&results)?;
    breakdown.accounts = results.len() as u64;
    let mut out = Tables::with_room_for(results.iter().map(|(_, r)| r));
    for i in order {
        let (account_id, r) = std::mem::take(&mut results[i]);
        out.absorb(&account_id, r)?;
    }
    drop(results);
    out.discrepancies
        .par_sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    rejects.par_sort_by_key(|r| (r.dataset, r.at));
    not_covered.sort_unstable();
    warn_of_rejected_allocations(
        &rejects,
        &not_covered,
        &files[Dataset::Allocations as usize],
    );
    check_each_row_rejected_once(&rejects)?;
    let counts = dataset_counts(&rows_read, &files, &rejects);
    let usage = UsageCounts {
        rows_read: rows_read[Dataset::Usage as usize],
        events_in_window: out.totals.events_in_window,
        identical_duplicates: identical,
        rejected: counts[0].rejected,
        outside_window: outside_usage,
    };
    if settings.mode == Mode::Close {
        check_one_invoice_and_renewal_per_period(&out)?;
        check_grants_next_ids_are_unique(&out.grants_next)?;
        if let Some((renewals, message)) = short_next_periods(&out.renewals) {
            tracing::warn!(renewals, "{message}");
        }
    }
    check_every_usage_row_accounted(&usage)?;
    Ok(RunOutput {
        settings,
        book,
        files,
        pricebook_path,
        counts,
        usage,
        ledger_entries_outside: outside_entries,
        discrepancies: out.discrepancies,
        rejects,
        rejected_allocations_not_covered: not_covered,
        balances: out.balances,
        invoices: out.invoices,
        renewals: out.renewals,
        allocations_next: out.allocations_next,
        grants_next: out.grants_next,
        billed,
        lines,
        scratch,
        totals: out.totals,
        breakdown,
    })
}

/// The partials of a run's shards put together into one, in shard order (not yet in
/// output order), and the folders of their run files (each partial holds one at most).
fn gathered(partials: Vec<Partial>) -> Result<(Partial, Vec<Arc<spill::SpillDir>>)> {
    let mut all = Partial::default();
    let mut scratch = Vec::new();
    for p in partials {
        all.mix.merge(p.mix)?;
        gather(&mut all.billed, p.billed);
        gather(&mut all.lines, p.lines);
        scratch.extend(p.scratch);
        gather(&mut all.results, p.results);
        gather(&mut all.rejects, p.rejects);
        gather(
            &mut all.rejected_allocations_not_covered,
            p.rejected_allocations_not_covered,
        );
        let count = TallyError::count_sum;
        for (total, n) in all.rows_read.iter_mut().zip(p.rows_read) {
            *total = count(*total, n, "rows read")?;
        }
        all.identical_duplicates = count(
            all.identical_duplicates,
            p.identical_duplicates,
            "identical duplicates",
        )?;
        all.outside_usage = count(all.outside_usage, p.outside_usage, "usage rows outside")?;
        all.outside_entries = count(all.outside_entries, p.outside_entries, "entries outside")?;
    }
    Ok((all, scratch))
}

/// A row rejected twice is a bug: every row is accounted for exactly once (`rejects`:
/// sorted by dataset and place).
fn check_each_row_rejected_once(rejects: &[Reject]) -> Result<()> {
    match rejects
        .windows(2)
        .find(|w| (w[0].dataset, w[0].at) == (w[1].dataset, w[1].at))
    {
        Some(pair) => Err(TallyError::Invariant(format!(
            "{} row {} was rejected twice",
            pair[0].dataset.name(),
            pair[0].at.row
        ))),
        None => Ok(()),
    }
}

/// Files, rows read and rows rejected of each dataset.
fn dataset_counts(
    rows_read: &[u64; 4],
    files: &[Vec<InputFile>; 4],
    rejects: &[Reject],
) -> [DatasetCounts; 4] {
    let mut counts: [DatasetCounts; 4] = Default::default();
    for (i, &read) in rows_read.iter().enumerate() {
        counts[i].files = files[i].len() as u64;
        counts[i].rows_read = read;
    }
    for r in rejects {
        counts[r.dataset as usize].rejected += 1;
    }
    counts
}

/// Every usage row read is in the window, an identical duplicate, rejected or outside.
fn check_every_usage_row_accounted(usage: &UsageCounts) -> Result<()> {
    if !usage.add_up() {
        return Err(TallyError::Invariant(format!(
            "usage rows read {} ≠ in window {} + identical duplicates {} + rejected {} + outside {}",
            usage.rows_read,
            usage.events_in_window,
            usage.identical_duplicates,
            usage.rejected,
            usage.outside_window
        )));
    }
    Ok(())
}

/// Renewals whose next period is shorter than 28 days (none: `None`): how many, and a warning
/// naming the first. A monthly period is at least 28 days, so a shorter one means the closed
/// period did not end on an anniversary of its `billing_anchor` (or of `period_start`
/// without one): an anchor at 08:00 on periods ending at midnight renews to an 8-hour
/// period, a stub period without an anchor to a period ending on the stub's day. The
/// contract's rule gives that next period, and it is invoiced in full (plan price, all
/// its credits), so the data is more likely wrong than the customer meant to pay twice.
fn short_next_periods(renewals: &[RenewalRow]) -> Option<(u64, String)> {
    const SHORTEST_MONTH_MICROS: i64 = 28 * 86_400 * 1_000_000;
    let is_short = |r: &RenewalRow| match (r.next_period_start, r.next_period_end) {
        (Some(start), Some(end)) => end.saturating_sub(start) < SHORTEST_MONTH_MICROS,
        _ => false,
    };
    // Only an account's last renewal of the run is a next period (`allocations_next` is fed
    // back from it): an earlier one's next period is a period this close also closed, from
    // its own allocation row. Renewals are in (account_id, period_start) order.
    let is_last = |i: usize| {
        (renewals.get(i + 1)).is_none_or(|next| next.account_id != renewals[i].account_id)
    };
    let short = || {
        (renewals.iter().enumerate())
            .filter(move |&(i, r)| is_last(i) && is_short(r))
            .map(|(_, r)| r)
    };
    let first = short().next()?;
    let count = short().count() as u64;
    let instant = |t: Option<Micros>| t.map_or_else(String::new, crate::time::format_instant);
    let renewals_are = match count {
        1 => "1 renewal's next period is".to_string(),
        n => format!("{n} renewals' next periods are"),
    };
    Some((
        count,
        format!(
            "{renewals_are} shorter than 28 days (the first: account {}, period ending {}, \
             next period to {}): a closed period that does not end on an anniversary of its \
             billing_anchor (or of its period_start without one) renews to the next \
             anniversary, and that period is invoiced in full; check the allocation rows' \
             billing_anchor (its day and time of day should be period_end's)",
            crate::error::controls_escaped(&first.account_id),
            crate::time::format_instant(first.period_end),
            instant(first.next_period_end),
        ),
    ))
}

/// The accounts' results in output order (account ids by bytes), as indices: a result is a
/// few hundred bytes, and at 100M events a stable sort of the results themselves moved
/// about 200 MB per pass. Account ids are distinct (an account processed twice is an
/// internal error), so an unstable sort gives the one order.
fn account_order(results: &[(Shared, AccountResult)]) -> Result<Vec<usize>> {
    let mut order: Vec<usize> = (0..results.len()).collect();
    order.par_sort_unstable_by(|&a, &b| results[a].0.as_bytes().cmp(results[b].0.as_bytes()));
    match order
        .windows(2)
        .find(|w| results[w[0]].0 == results[w[1]].0)
    {
        Some(pair) => Err(TallyError::Invariant(format!(
            "account {} was processed twice",
            quoted(&results[pair[0]].0)
        ))),
        None => Ok(order),
    }
}

/// Add a partial's rows to the ones gathered so far: the first partial's vector is taken
/// as it is (a run that is not sharded has one partial), not copied.
fn gather<T>(gathered: &mut Vec<T>, more: Vec<T>) {
    match gathered.is_empty() {
        true => *gathered = more,
        false => gathered.extend(more),
    }
}

/// `grants_next` is the next period's grants input, where `grant_id` is unique: an input
/// grant named like the rollover a close writes (`rollover-{account}-{stamp}`), of that
/// account or of another, is exit 2 naming both (a fed-back rollover of the close itself
/// is replaced, not kept: `close::grants_next`).
fn check_grants_next_ids_are_unique(grants: &[GrantRow]) -> Result<()> {
    let mut ids: Vec<&GrantRow> = grants.iter().collect();
    ids.par_sort_unstable_by(|a, b| a.grant_id.as_bytes().cmp(b.grant_id.as_bytes()));
    let Some(pair) = ids.windows(2).find(|w| w[0].grant_id == w[1].grant_id) else {
        return Ok(());
    };
    let (written, taken) = match crate::close::is_written_rollover(pair[1]) {
        true => (pair[1], pair[0]),
        false => (pair[0], pair[1]),
    };
    Err(TallyError::Input {
        file: "grants".into(),
        message: format!(
            "grant \"{}\" of account \"{}\" ({}, effective {}) has the id of the {} grant \
             this close writes for account \"{}\", and grants_next cannot hold two grants with \
             one id; give that grant another id and rerun",
            taken.grant_id,
            taken.account_id,
            taken.kind.name(),
            crate::time::format_instant(taken.effective_at),
            written.kind.name(),
            written.account_id,
        ),
    })
}

/// The distinct (account, period start) pairs of `rows`, sorted.
fn distinct_periods<'a>(rows: impl Iterator<Item = (&'a str, Micros)>) -> Vec<(&'a str, Micros)> {
    let mut periods: Vec<_> = rows.collect();
    periods.sort_unstable();
    periods.dedup();
    periods
}

/// Every closed account-period has exactly one invoice and one renewal.
fn check_one_invoice_and_renewal_per_period(out: &Tables) -> Result<()> {
    let periods = out.totals.account_periods as usize;
    let invoiced =
        distinct_periods((out.invoices.iter()).map(|i| (&*i.account_id, i.period_start)));
    let renewed = distinct_periods((out.renewals.iter()).map(|r| (&*r.account_id, r.period_start)));
    let holds = out.invoices.len() == periods
        && out.renewals.len() == periods
        && invoiced.len() == periods
        && renewed == invoiced;
    if holds {
        Ok(())
    } else {
        Err(TallyError::Invariant(format!(
            "{periods} closed account-periods but {} invoices ({} distinct) and {} renewals ({} distinct)",
            out.invoices.len(),
            invoiced.len(),
            out.renewals.len(),
            renewed.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amount::Milli;

    fn grant(id: &str, account: &str, kind: GrantKind, effective_at: Micros) -> GrantRow {
        GrantRow {
            at: RowRef { file: 0, row: 0 },
            grant_id: id.into(),
            account_id: account.into(),
            kind,
            credits: crate::amount::Milli::from_units(5),
            effective_at,
            expires_at: None,
            priority: None,
        }
    }

    /// A renewal of `account`'s period `[start, end)` to `next` (`None`: not renewed), its
    /// plan "pro" and its credits zero: what the run's checks of renewals look at.
    fn renewal(
        account: &str,
        (start, end): (Micros, Micros),
        next: Option<(Micros, Micros)>,
    ) -> RenewalRow {
        RenewalRow {
            account_id: account.into(),
            period_start: start,
            period_end: end,
            next_period_start: next.map(|(start, _)| start),
            next_period_end: next.map(|(_, end)| end),
            plan_id: "pro".into(),
            plan_credits_unused: Milli::ZERO,
            rollover_credits: Milli::ZERO,
            expired_credits: Milli::ZERO,
            next_included_credits: None,
            carried_grant_credits: Milli::ZERO,
        }
    }

    /// An account's result is 176 bytes (its eight tables a pointer each), and gathering
    /// appends its rows after the accounts gathered before it; billed events or invoice
    /// lines still in it (its group should have taken them for writing) stop the run
    /// rather than vanish.
    #[test]
    fn accounts_are_gathered_whole_and_none_with_rows_left_unwritten() {
        use crate::engine::BilledEventRow;
        assert!(std::mem::size_of::<AccountResult>() <= 176);
        let mut out = Tables::with_room_for(std::iter::empty());
        let mut a = AccountResult::default();
        a.renewals.push(renewal("a", (1, 2), None));
        a.grants_next.push(grant("g2", "a", GrantKind::Promo, 1));
        a.grants_next.push(grant("g1", "a", GrantKind::Promo, 1));
        a.totals.account_periods = 1;
        out.absorb("a", a).unwrap();
        let ids: Vec<&str> = out.grants_next.iter().map(|g| &*g.grant_id).collect();
        assert_eq!(ids, ["g1", "g2"]);
        assert_eq!((out.renewals.len(), out.totals.account_periods), (1, 1));
        let mut b = AccountResult::default();
        b.billed_events.push(BilledEventRow {
            account_id: "b".into(),
            invoice_id: "inv".into(),
            event_id: "e".into(),
            occurred_at: 1,
            credits: None,
        });
        let err = out.absorb("b", b).unwrap_err().to_string();
        assert!(
            err.contains("account \"b\" still holds 1 billed events and 0 invoice lines"),
            "{err}"
        );
        let mut c = AccountResult::default();
        c.invoice_lines.push(crate::close::InvoiceLineRow {
            invoice_id: "inv".into(),
            product: "video".into(),
            action: "generate".into(),
            model: None,
            event_count: 1,
            quantity: Milli::ZERO,
            credits: Milli::ZERO,
        });
        let err = out.absorb("c", c).unwrap_err().to_string();
        assert!(
            err.contains("account \"c\" still holds 0 billed events and 1 invoice lines"),
            "{err}"
        );
        // A second account's rows follow the first's, and the totals add up.
        let mut d = AccountResult::default();
        d.renewals.push(renewal("d", (1, 2), None));
        d.totals.account_periods = 1;
        out.absorb("d", d).unwrap();
        let accounts: Vec<&str> = out.renewals.iter().map(|r| &*r.account_id).collect();
        assert_eq!(accounts, ["a", "d"]);
        assert_eq!(out.totals.account_periods, 2);
    }

    /// The close's invariant: every closed account-period has exactly one invoice and one
    /// renewal. A second invoice for a period, a renewal of another period, or a period
    /// counted but not invoiced stops the run (exit 4) with the counts.
    #[test]
    fn each_closed_period_has_one_invoice_and_one_renewal() {
        use crate::close::InvoiceRow;
        let invoice = |account: &str, start: Micros| InvoiceRow {
            invoice_id: format!("inv-{account}-{start}"),
            account_id: account.into(),
            plan_id: "pro".into(),
            period_start: start,
            period_end: start + 1,
            currency: "USD".into(),
            plan_price_minor: 0,
            included_credits: Milli::ZERO,
            credits_used: Milli::ZERO,
            credits_from: [Milli::ZERO; 5],
            overage_credits: Milli::ZERO,
            overage_amount_minor: 0,
            total_minor: 0,
            recorded_credits: Milli::ZERO,
            unreconciled_credits: Milli::ZERO,
        };
        let closed = |invoices: Vec<InvoiceRow>, renewals: Vec<RenewalRow>, periods: u64| {
            let mut out = Tables::with_room_for(std::iter::empty());
            out.invoices = invoices;
            out.renewals = renewals;
            out.totals.account_periods = periods;
            check_one_invoice_and_renewal_per_period(&out)
        };
        let both = |account: &str, start: Micros| {
            (
                invoice(account, start),
                renewal(account, (start, start + 1), None),
            )
        };
        let ((a1, ra1), (a2, ra2), (b1, rb1)) = (both("a", 1), both("a", 2), both("b", 1));
        assert!(closed(
            vec![a1.clone(), a2.clone(), b1.clone()],
            vec![ra1.clone(), ra2.clone(), rb1.clone()],
            3
        )
        .is_ok());
        let refused = |invoices, renewals, periods| match closed(invoices, renewals, periods) {
            Err(TallyError::Invariant(message)) => message,
            other => panic!("{other:?}"),
        };
        // One period invoiced twice, another not at all.
        assert_eq!(
            refused(
                vec![a1.clone(), a1.clone(), b1.clone()],
                vec![ra1.clone(), ra2.clone(), rb1.clone()],
                3
            ),
            "3 closed account-periods but 3 invoices (2 distinct) and 3 renewals (3 distinct)"
        );
        // A renewal of another period than the invoice's.
        assert_eq!(
            refused(
                vec![a1.clone(), b1.clone()],
                vec![ra1.clone(), ra2.clone()],
                2
            ),
            "2 closed account-periods but 2 invoices (2 distinct) and 2 renewals (2 distinct)"
        );
        // A period counted but neither invoiced nor renewed.
        assert_eq!(
            refused(vec![a1, b1], vec![ra1, rb1], 3),
            "3 closed account-periods but 2 invoices (2 distinct) and 2 renewals (2 distinct)"
        );
    }

    /// The warning of rejected allocations counts them by reason (in name order), names
    /// the first by its place in the file order (not the order checks found them in), and
    /// is absent when no allocation row is rejected (other datasets' rejects do not count).
    #[test]
    fn rejected_allocations_are_counted_by_reason_and_the_first_named() {
        let file = |name: &str| InputFile {
            rel_path: name.into(),
            abs_path: name.into(),
            first_seen: None,
        };
        let files = [file("allocations/a.parquet"), file("allocations/b.parquet")];
        let reject = |dataset, file, row, reason, detail: &str| Reject {
            dataset,
            at: RowRef { file, row },
            reason,
            detail: detail.into(),
        };
        let usage = reject(Dataset::Usage, 0, 0, Reason::NullRequired, "usage");
        assert_eq!(
            rejected_allocations(std::slice::from_ref(&usage), &[], &files),
            None
        );
        let typo = "plan_id \"gold\" is not a plan of the price book";
        let rejects = [
            usage,
            reject(Dataset::Allocations, 1, 7, Reason::UnknownPlan, typo),
            reject(Dataset::Allocations, 1, 2, Reason::UnknownPlan, typo),
            reject(
                Dataset::Allocations,
                0,
                9,
                Reason::OverlappingPeriod,
                "overlap",
            ),
        ];
        let (rows, reasons, message) = rejected_allocations(&rejects, &[], &files).unwrap();
        assert_eq!(
            (rows, reasons.as_str()),
            (3, "overlapping_period 1, unknown_plan 2")
        );
        assert_eq!(
            message,
            "3 allocation rows are rejected (overlapping_period 1, unknown_plan 2) in periods \
             this run covers: an account-period whose only allocation row is rejected is not \
             billed (no balances, no invoice at close, its usage rejected no_allocation). The \
             first: allocations/a.parquet row 9: overlap. See rejects.csv; fix the price book \
             or the export and rerun"
        );
        // Rows of periods the run does not cover are counted apart, and named by no line
        // when they are all there is.
        let not_covered = [RowRef { file: 0, row: 9 }];
        let (rows, reasons, message) =
            rejected_allocations(&rejects, &not_covered, &files).unwrap();
        assert_eq!((rows, reasons.as_str()), (2, "unknown_plan 2"));
        assert!(
            message.contains(
                "The first: allocations/b.parquet row 2: plan_id \"gold\" is not a plan of the \
                 price book (1 more, of a period this run does not cover, is in rejects.csv \
                 too). See"
            ),
            "{message}"
        );
        let none = rejected_allocations(&rejects[3..], &not_covered, &files);
        assert_eq!(none, None);
        let (rows, _, message) = rejected_allocations(&rejects[1..2], &[], &files).unwrap();
        assert_eq!(rows, 1);
        assert!(
            message.starts_with("1 allocation row is rejected (unknown_plan 1) in periods "),
            "{message}"
        );
        assert!(message.contains(&format!("allocations/b.parquet row 7: {typo}.")));
        // A value holding a line break cannot start a log line of its own.
        let broken = reject(
            Dataset::Allocations,
            0,
            1,
            Reason::UnknownPlan,
            "plan_id \"a\nb\"",
        );
        let (_, _, message) = rejected_allocations(&[broken], &[], &files).unwrap();
        assert!(
            message.contains(r#"row 1: plan_id "a\u{a}b"."#),
            "{message}"
        );
    }

    /// A renewal whose next period is shorter than the shortest month is warned of (the
    /// first named, all counted); a full month, February's 28 days included, a period that
    /// does not renew and an account's renewal before its last in the run are not. The
    /// contract's rule the warning is about: "The next period ends at the first anniversary
    /// of `billing_anchor` (or period_start) strictly after period_end, the day clamped to
    /// the month, the time of day kept" — so a monthly period is at least 28 days, and one
    /// shorter comes from a period_end that is not an anniversary.
    #[test]
    fn next_periods_shorter_than_a_month_are_warned_of() {
        let t = |s: &str| crate::time::parse_instant(s).unwrap();
        let renewal = |account: &str, end: &str, next_end: Option<&str>| {
            let next = next_end.map(|next_end| (t(end), t(next_end)));
            renewal(account, (t("2026-11-01T00:00:00Z"), t(end)), next)
        };
        let month = renewal("a", "2027-02-01T00:00:00Z", Some("2027-03-01T00:00:00Z"));
        let cancelled = renewal("b", "2026-12-01T00:00:00Z", None);
        assert_eq!(
            short_next_periods(&[month.clone(), cancelled.clone()]),
            None
        );
        let hours = renewal("c", "2026-12-01T00:00:00Z", Some("2026-12-01T08:00:00Z"));
        let stub = renewal("d", "2026-12-01T00:00:00Z", Some("2026-12-15T00:00:00Z"));
        // An account's earlier renewal in the run renews to a period the close also closed
        // (a stub closed with the month after it): only its last renewal is a next period.
        let stub_then_month = [
            renewal("e", "2026-11-01T00:00:00Z", Some("2026-11-15T00:00:00Z")),
            renewal("e", "2026-12-01T00:00:00Z", Some("2027-01-01T00:00:00Z")),
        ];
        let renewals = [[month, cancelled, hours, stub].as_slice(), &stub_then_month].concat();
        let (count, message) = short_next_periods(&renewals).unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            message,
            "2 renewals' next periods are shorter than 28 days (the first: account c, period \
             ending 2026-12-01T00:00:00Z, next period to 2026-12-01T08:00:00Z): a closed \
             period that does not end on an anniversary of its billing_anchor (or of its \
             period_start without one) renews to the next anniversary, and that period is \
             invoiced in full; check the allocation rows' billing_anchor (its day and time of \
             day should be period_end's)"
        );
        // The limit is 28 days exactly (February's, not warned above): a microsecond less is
        // short.
        let just_short = renewal(
            "f",
            "2027-02-01T00:00:00Z",
            Some("2027-02-28T23:59:59.999999Z"),
        );
        assert_eq!(short_next_periods(&[just_short]).map(|(n, _)| n), Some(1));
    }

    /// One grant_id twice in grants_next, whoever's grants they are, is exit 2 naming the
    /// input grant and the rollover written under its id (in either order of the two).
    #[test]
    fn grants_next_ids_are_unique_across_accounts() {
        const DEC: Micros = 1_764_547_200_000_000; // 2025-12-01T00:00:00Z
        let id = crate::close::rollover_grant_id("a", DEC);
        let rollover = grant(&id, "a", GrantKind::Rollover, DEC);
        let promo = grant(&id, "b", GrantKind::Promo, DEC - 86_400_000_000);
        let other = grant("topup-1", "b", GrantKind::TopUp, DEC);
        assert!(check_grants_next_ids_are_unique(&[rollover.clone(), other.clone()]).is_ok());
        for rows in [
            [rollover.clone(), promo.clone(), other.clone()],
            [promo.clone(), other.clone(), rollover.clone()],
        ] {
            let err = check_grants_next_ids_are_unique(&rows).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert_eq!(
                err.to_string(),
                "grants: grant \"rollover-a-20251201T000000Z\" of account \"b\" (promo, effective \
                 2025-11-30T00:00:00Z) has the id of the rollover grant this close writes for \
                 account \"a\", and grants_next cannot hold two grants with one id; give that \
                 grant another id and rerun"
            );
        }
    }

    #[test]
    fn accounts_come_in_byte_order_and_one_processed_twice_stops_the_run() {
        let results = |ids: &[&str]| -> Vec<(Shared, AccountResult)> {
            ids.iter()
                .map(|id| (Shared::from(*id), AccountResult::default()))
                .collect()
        };
        // Bytes, not characters or case: "B" < "a" < "é".
        let order = account_order(&results(&["é", "a", "B", "ab"])).unwrap();
        assert_eq!(order, [2, 1, 3, 0]);
        let Err(e) = account_order(&results(&["a", "b", "a"])) else {
            panic!("an account processed twice was accepted");
        };
        assert!(
            e.to_string().contains("account \"a\" was processed twice"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 4);
    }
}
