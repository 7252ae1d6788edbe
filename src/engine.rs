//! One account, start to finish: price its events, consume its grants period by period,
//! reconcile every event and entry, and (at close) bill and renew. Accounts are independent,
//! so the pipeline runs this in parallel; inside an account the work is sequential.

use crate::amount::Milli;
use crate::close::{self, ClosedPeriod, InvoiceLineRow, InvoiceRow, PeriodFigures, RenewalRow};
use crate::consume::{self, ByKind, GrantBalance};
use crate::error::{Result, TallyError};
use crate::model::*;
use crate::price::{Price, RateTable};
use crate::pricebook::{Overage, PriceBook};
use crate::reconcile::{self, DiscrepancyRow, Kind};
use crate::time::Micros;
use crate::window::{AccountWork, BucketWork, PeriodWork};
use std::collections::BTreeMap;

/// Settings shared by every account of a run.
pub struct RunContext<'a> {
    pub book: &'a PriceBook,
    /// The price book's rates by the run's skus.
    pub rates: &'a RateTable,
    pub dicts: &'a crate::dict::Dicts,
    pub mode: Mode,
    /// as-of − settle.
    pub settle_from: Micros,
}

/// One row of `balances`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalanceRow {
    pub account_id: String,
    pub plan_id: String,
    pub period_start: Micros,
    pub period_end: Micros,
    pub granted: ByKind,
    pub used: ByKind,
    pub overage: Milli,
}

impl BalanceRow {
    /// `granted_credits`: Σ over kinds of the credits at the start of the period.
    pub fn granted_credits(&self) -> Milli {
        Milli(self.granted.iter().map(|m| m.0).sum())
    }

    /// `used_credits`: consumed from grants + overage.
    pub fn used_credits(&self) -> Milli {
        Milli(self.consumed_credits().0 + self.overage.0)
    }

    /// `remaining_credits`: granted − consumed.
    pub fn remaining_credits(&self) -> Milli {
        Milli(self.granted_credits().0 - self.consumed_credits().0)
    }

    fn consumed_credits(&self) -> Milli {
        Milli(self.used.iter().map(|m| m.0).sum())
    }
}

/// Counters summed over accounts for `summary.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub account_periods: u64,
    pub events_in_window: u64,
    pub matched_events: u64,
    pub pending_events: u64,
    pub entries_in_window: u64,
    pub expected_credits: Milli,
    pub recorded_credits: Milli,
    pub granted_credits: Milli,
    pub consumed_credits: Milli,
    pub overage_credits: Milli,
    pub remaining_credits: Milli,
    pub expired_credits: Milli,
    pub rollover_credits: Milli,
    pub carried_credits: Milli,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) -> Result<()> {
        self.account_periods += o.account_periods;
        self.events_in_window += o.events_in_window;
        self.matched_events += o.matched_events;
        self.pending_events += o.pending_events;
        self.entries_in_window += o.entries_in_window;
        self.expected_credits = self.expected_credits.checked_add(o.expected_credits)?;
        self.recorded_credits = self.recorded_credits.checked_add(o.recorded_credits)?;
        self.granted_credits = self.granted_credits.checked_add(o.granted_credits)?;
        self.consumed_credits = self.consumed_credits.checked_add(o.consumed_credits)?;
        self.overage_credits = self.overage_credits.checked_add(o.overage_credits)?;
        self.remaining_credits = self.remaining_credits.checked_add(o.remaining_credits)?;
        self.expired_credits = self.expired_credits.checked_add(o.expired_credits)?;
        self.rollover_credits = self.rollover_credits.checked_add(o.rollover_credits)?;
        self.carried_credits = self.carried_credits.checked_add(o.carried_credits)?;
        Ok(())
    }
}

/// Invoice lines of late events carry this prefix on their product.
pub const PRIOR_PERIOD_PREFIX: &str = "prior_period:";

/// One row of `billed_events` (close): an event of an invoice's period, billed or not.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BilledEventRow {
    /// Shared by the rows of one account (and `invoice_id` by the rows of one invoice): no
    /// string allocated per billed event. Account and invoice come first so that a run
    /// file's record shares them with the record before it (`runs::write_run`).
    pub account_id: crate::model::Shared,
    pub invoice_id: crate::model::Shared,
    pub event_id: crate::model::Id,
    pub occurred_at: Micros,
    /// What the invoice billed for it; `None` for an event that costs nothing to bill (not
    /// `succeeded`, or without a rate). Those are listed too, so that a later close knows
    /// this one saw them and does not take them for late events.
    pub credits: Option<Milli>,
}

/// Everything one account contributes to the outputs.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AccountResult {
    pub discrepancies: Vec<DiscrepancyRow>,
    pub balances: Vec<BalanceRow>,
    pub invoices: Vec<InvoiceRow>,
    pub invoice_lines: Vec<InvoiceLineRow>,
    pub renewals: Vec<RenewalRow>,
    pub allocations_next: Vec<AllocationRow>,
    pub grants_next: Vec<GrantRow>,
    pub billed_events: Vec<BilledEventRow>,
    pub totals: Totals,
}

impl AccountResult {
    /// Drop spare capacity: a split run holds every account's result until the end, and
    /// a vector grown by `push` keeps room for 4 rows (at 100M events a million accounts'
    /// spare balance and discrepancy rows add up: benches/README.md, "Figures moved from
    /// source comments (2026-12-05)"; the peak it saved: "2026-11-25: a 2 GiB budget,
    /// 524,288 rows per group (before)", its profiles).
    pub fn shrink(&mut self) {
        self.discrepancies.shrink_to_fit();
        self.balances.shrink_to_fit();
        self.invoices.shrink_to_fit();
        self.invoice_lines.shrink_to_fit();
        self.renewals.shrink_to_fit();
        self.allocations_next.shrink_to_fit();
        self.grants_next.shrink_to_fit();
        self.billed_events.shrink_to_fit();
    }

    /// An empty result with room for the rows of `results` in every table (so that
    /// absorbing them never grows a table, which would copy it into fresh memory).
    pub fn with_room_for<'r>(results: impl Iterator<Item = &'r AccountResult>) -> AccountResult {
        let mut rows = [0usize; 8];
        for r in results {
            let lens = [
                r.discrepancies.len(),
                r.balances.len(),
                r.invoices.len(),
                r.invoice_lines.len(),
                r.renewals.len(),
                r.allocations_next.len(),
                r.grants_next.len(),
                r.billed_events.len(),
            ];
            for (total, n) in rows.iter_mut().zip(lens) {
                *total += n;
            }
        }
        AccountResult {
            discrepancies: Vec::with_capacity(rows[0]),
            balances: Vec::with_capacity(rows[1]),
            invoices: Vec::with_capacity(rows[2]),
            invoice_lines: Vec::with_capacity(rows[3]),
            renewals: Vec::with_capacity(rows[4]),
            allocations_next: Vec::with_capacity(rows[5]),
            grants_next: Vec::with_capacity(rows[6]),
            billed_events: Vec::with_capacity(rows[7]),
            totals: Totals::default(),
        }
    }

    /// Append another account's rows (accounts are absorbed in account order, so every
    /// table stays in its documented order except discrepancies, which are sorted after).
    pub fn absorb(&mut self, mut r: AccountResult) -> Result<()> {
        self.discrepancies.append(&mut r.discrepancies);
        self.balances.append(&mut r.balances);
        self.invoices.append(&mut r.invoices);
        self.invoice_lines.append(&mut r.invoice_lines);
        self.renewals.append(&mut r.renewals);
        self.allocations_next.append(&mut r.allocations_next);
        r.grants_next
            .sort_by(|a, b| a.grant_id.as_bytes().cmp(b.grant_id.as_bytes()));
        self.grants_next.append(&mut r.grants_next);
        self.billed_events.append(&mut r.billed_events);
        self.totals.add(&r.totals)
    }
}

fn invariant(holds: bool, what: impl FnOnce() -> String) -> Result<()> {
    if holds {
        Ok(())
    } else {
        Err(TallyError::Invariant(what()))
    }
}

/// What `tally explain` shows of one account-period: the values the run computed, kept
/// as the run computed them.
#[derive(Clone, Debug)]
pub struct PeriodTrace {
    pub allocation: AllocationRow,
    /// The period's grants (the plan included) in consumption order, each with its
    /// credits at the start of the period and what it had left at the end.
    pub grants: Vec<(GrantBalance, Milli)>,
    /// Every event of the period in (occurred_at, event_id) order.
    pub events: Vec<EventTrace>,
    /// Entries attached to no event, with their discrepancy kind (`None`: a refund).
    pub unattached: Vec<(DebitRow, Option<Kind>)>,
}

/// An event of the window as `tally explain` shows it (its rows with their strings).
#[derive(Clone, Debug)]
pub struct TracedWork {
    pub usage: UsageRow,
    pub entries: Vec<DebitRow>,
    /// Its copies differed (reported `conflicting_duplicate`).
    pub conflicting: bool,
    /// Set for a late event: the start of the earlier-closed period it occurred in.
    pub late_from: Option<Micros>,
}

/// One event as the run saw it.
#[derive(Clone, Debug)]
pub struct EventTrace {
    pub work: TracedWork,
    pub price: Price,
    /// Credits taken from the period's grants (`grant` indexes `PeriodTrace::grants`).
    pub draws: Vec<consume::Draw>,
    pub overage: Milli,
    pub verdict: reconcile::EventVerdict,
    /// The discrepancy rows written for it, in the order written.
    pub kinds: Vec<Kind>,
}

/// Process one account of a bucket's work (`trace`: also record every period's trace),
/// adding its events' credits by product to `mix`.
pub fn process_account(
    ctx: &RunContext<'_>,
    group: &BucketWork<'_>,
    work: &AccountWork<'_>,
    mix: &mut crate::breakdown::SkuMix,
    mut trace: Option<&mut Vec<PeriodTrace>>,
) -> Result<AccountResult> {
    let mut result = AccountResult::default();
    // Grant balances persist across the account's periods of this run.
    let mut state = AccountState {
        account: work.account,
        balances: work.grants.iter().map(GrantBalance::from_row).collect(),
        slot: work
            .grants
            .iter()
            .enumerate()
            .map(|(i, g)| (g.grant_id.as_str(), i))
            .collect(),
    };
    let mut last_rollover = None;
    let mut last_period_end = None;
    for period in &work.periods {
        let closed = process_period(
            ctx,
            group,
            period,
            &mut state,
            &mut result,
            mix,
            trace.as_deref_mut(),
        )
        .map_err(|e| {
            e.sum_of(
                || period_place(period.allocation),
                "check the usage quantities, ledger credits and grants of that account-period, \
                 then rerun",
            )
        })?;
        if let Some(closed) = closed {
            last_period_end = Some(closed.renewal.period_end);
            last_rollover = closed.rollover_grant;
            result.invoices.push(closed.invoice);
            result.invoice_lines.extend(closed.lines);
            result.renewals.push(closed.renewal);
            result.allocations_next.extend(closed.next_allocation);
        }
    }
    if let Some(end) = last_period_end {
        result.grants_next = close::grants_next(&state.balances, end, last_rollover);
    }
    Ok(result)
}

/// A (product, action, model) as messages name it: `studio/prompt_to_video/veo-3`.
fn sku_place(dicts: &crate::dict::Dicts, sku: u32) -> String {
    let model = dicts.model(sku).map_or("(no model)", |m| m.as_ref());
    format!("{}/{}/{model}", dicts.product(sku), dicts.action(sku))
}

/// An account-period as messages name it.
fn period_place(alloc: &AllocationRow) -> String {
    format!(
        "account \"{}\" period starting {}",
        alloc.account_id,
        crate::time::format_instant(alloc.period_start)
    )
}

/// The invoice line of an event: its sku, and whether it is a late event's line.
type LineOf = (u32, bool);

/// A period's account and its grants' balances, which its periods share.
struct AccountState<'w> {
    account: u32,
    balances: Vec<GrantBalance>,
    /// The index in `balances` of each grant id (accounts with grants only).
    slot: rustc_hash::FxHashMap<&'w str, usize>,
}

fn process_period(
    ctx: &RunContext<'_>,
    group: &BucketWork<'_>,
    period: &PeriodWork<'_>,
    state: &mut AccountState<'_>,
    result: &mut AccountResult,
    mix: &mut crate::breakdown::SkuMix,
    trace: Option<&mut Vec<PeriodTrace>>,
) -> Result<Option<ClosedPeriod>> {
    let account = state.account;
    let balances = &mut state.balances;
    let alloc = period.allocation;
    let plan = &ctx.book.plans[&alloc.plan_id];
    let events = &group.events[period.events.clone()];
    let unattached = &group.unattached[period.unattached.clone()];
    let dicts = ctx.dicts;
    // Each event's price and its rate's unit bit, from one rate lookup.
    let (prices, unit_bits): (Vec<Price>, Vec<u64>) = events
        .iter()
        .map(|e| ctx.rates.price_and_unit(&e.usage, group.usage_ids))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();

    // Consume: the plan plus every grant effective at some instant of the whole period.
    let mut pool = vec![GrantBalance::plan(
        alloc.included_credits,
        alloc.period_start,
        alloc.period_end,
    )];
    pool.extend(
        balances
            .iter()
            .filter(|g| g.overlaps(alloc.period_start, alloc.period_end))
            .cloned(),
    );
    let charged: Vec<(usize, Micros, Milli)> = prices
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p {
            Price::Charged(c) if c.is_positive() => {
                let event = &events[i];
                // A late event is billed in this period: it draws on this period's grants
                // as if it occurred at the period start (it sorts first: it occurred
                // before the start).
                let at = match event.late_from() {
                    Some(_) => alloc.period_start,
                    None => event.usage.occurred_at,
                };
                Some((i, at, *c))
            }
            _ => None,
        })
        .collect();
    let charges: Vec<(Micros, Milli)> = charged.iter().map(|&(_, t, c)| (t, c)).collect();
    let mut draws: Vec<consume::Draw> = Vec::new();
    let consumption = if trace.is_some() {
        consume::consume_traced(pool, &charges, |d| draws.push(d))?
    } else {
        consume::consume(pool, &charges)?
    };
    let mut event_traces: Vec<EventTrace> = Vec::new();
    let mut draws_by_event: Vec<Vec<consume::Draw>> = match trace {
        Some(_) => vec![Vec::new(); events.len()],
        None => Vec::new(),
    };
    for d in &draws {
        draws_by_event[charged[d.charge].0].push(*d);
    }
    for g in &consumption.grants_after {
        if let Some(id) = &g.grant_id {
            balances[state.slot[id.as_str()]].remaining = g.remaining;
        }
    }
    let mut overage_of = vec![Milli::ZERO; events.len()];
    for (&(i, _, _), &overage) in charged.iter().zip(&consumption.overage_of) {
        overage_of[i] = overage;
    }

    // Reconcile every event, then every unattached entry.
    let mut totals = Totals {
        account_periods: 1,
        events_in_window: events.len() as u64,
        ..Totals::default()
    };
    let mut recorded_period = Milli::ZERO;
    let mut credits_used = Milli::ZERO;
    let mut line_totals: rustc_hash::FxHashMap<LineOf, close::LineTotals> =
        rustc_hash::FxHashMap::default();
    // Billed events of one invoice share its id.
    let billed_invoice_id: Option<crate::model::Shared> = (ctx.mode == Mode::Close)
        .then(|| close::invoice_id(&alloc.account_id, alloc.period_start).into());
    let account_shared = dicts.account(account);
    if billed_invoice_id.is_some() {
        // Sized for the period at once: grown row by row, the vectors of a 100M-event
        // close copied their billed events about twice over into fresh memory. (Not
        // `reserve_exact`: an account's later periods then grow it geometrically.)
        result.billed_events.reserve(events.len());
    }
    for (i, event) in events.iter().enumerate() {
        let u = &event.usage;
        let price = prices[i];
        let entries = &group.entries[event.entries()];
        let verdict = reconcile::classify(u, price, entries, ctx.settle_from)?;
        totals.entries_in_window += entries.len() as u64;
        recorded_period = recorded_period.checked_add(verdict.recorded)?;
        // The mix sums a bucket's accounts together: past the range, that is the run's
        // totals, not this account-period's.
        mix.add(u, price, verdict.recorded, unit_bits[i])
            .map_err(TallyError::in_run_totals)?;
        if let Some(expected) = price.expected() {
            totals.expected_credits = totals.expected_credits.checked_add(expected)?;
        }
        if let Price::Charged(credits) = price {
            credits_used = credits_used.checked_add(credits)?;
        }
        if let Some(invoice_id) = &billed_invoice_id {
            // Every event of the period is listed, the unbilled with no credits; the billed
            // ones also make the invoice lines (a late event a prior-period line).
            let billed = match price {
                Price::Charged(credits) => Some(credits),
                Price::NotChargeable | Price::Unpriced => None,
            };
            result.billed_events.push(BilledEventRow {
                invoice_id: invoice_id.clone(),
                event_id: group.usage_ids.id(u.id)?,
                account_id: account_shared.clone(),
                occurred_at: u.occurred_at,
                credits: billed,
            });
            if let Some(credits) = billed {
                let line = line_totals
                    .entry((u.sku, event.late_from().is_some()))
                    .or_insert((0, Milli::ZERO, Milli::ZERO));
                line.0 += 1;
                // A quantity, not credits: named as such, not as the period's credits sum.
                line.1 = line.1.checked_add(u.quantity()).map_err(|_| {
                    TallyError::Overflow(format!(
                        "{}: the quantities of its {} events sum past what \
                         invoice_lines.quantity holds (999999999999999.999, DECIMAL(18,3)): \
                         {} + {}; check those events' quantities, then rerun",
                        period_place(alloc),
                        sku_place(ctx.dicts, u.sku),
                        line.1,
                        u.quantity()
                    ))
                })?;
                line.2 = line.2.checked_add(credits)?;
            }
        }
        if verdict.pending {
            totals.pending_events += 1;
        } else if verdict.primary.is_none() {
            totals.matched_events += 1;
        }
        let mut kinds: smallvec::SmallVec<[Kind; 4]> = verdict.primary.into_iter().collect();
        if u.conflicting() {
            kinds.push(Kind::ConflictingDuplicate);
        }
        if plan.overage == Overage::Block && overage_of[i].is_positive() {
            kinds.push(Kind::OverLimitUsage);
        }
        if event.late_from().is_some() {
            kinds.push(Kind::LateEvent);
        }
        if trace.is_some() {
            let draws_of_event = std::mem::take(&mut draws_by_event[i]);
            event_traces.push(EventTrace {
                work: TracedWork {
                    usage: UsageRow::from_compact(u, dicts, group.usage_ids)?,
                    entries: entries
                        .iter()
                        .map(|d| DebitRow::from_compact(d, dicts, group.debit_ids))
                        .collect::<Result<_>>()?,
                    conflicting: u.conflicting(),
                    late_from: event.late_from(),
                },
                price,
                draws: draws_of_event,
                overage: overage_of[i],
                verdict: verdict.clone(),
                kinds: kinds.to_vec(),
            });
        }
        for kind in kinds {
            result.discrepancies.push(reconcile::event_row(
                kind,
                u,
                price,
                entries,
                verdict.recorded,
                dicts,
                (group.usage_ids, group.debit_ids),
            )?);
        }
    }
    for entry in unattached {
        totals.entries_in_window += 1;
        recorded_period = recorded_period.checked_add(entry.signed_credits())?;
        if let Some(kind) = reconcile::unattached_kind(entry) {
            result
                .discrepancies
                .push(reconcile::entry_row(kind, entry, dicts, group.debit_ids)?);
        }
    }
    totals.recorded_credits = recorded_period;

    // Conservation, checked on independent sums before anything is published.
    let granted = consume::sum_kinds(&consumption.granted)?;
    let consumed = consume::sum_kinds(&consumption.consumed)?;
    let remaining = Milli::sum(consumption.grants_after.iter().map(|g| g.remaining))?;
    let place = || period_place(alloc);
    invariant(
        credits_used == consumed.checked_add(consumption.overage)?,
        || format!("{}: credits used ≠ consumed + overage", place()),
    )?;
    invariant(granted == consumed.checked_add(remaining)?, || {
        format!("{}: granted ≠ consumed + remaining", place())
    })?;
    if let Some(trace) = trace {
        let mut grants: Vec<(GrantBalance, Milli)> = consumption
            .grants_after
            .iter()
            .map(|g| (g.clone(), g.remaining))
            .collect();
        for d in &draws {
            grants[d.grant].1 = grants[d.grant].1.checked_add(d.taken)?;
        }
        trace.push(PeriodTrace {
            allocation: alloc.clone(),
            grants,
            events: event_traces,
            unattached: unattached
                .iter()
                .map(|e| {
                    Ok((
                        DebitRow::from_compact(e, dicts, group.debit_ids)?,
                        reconcile::unattached_kind(e),
                    ))
                })
                .collect::<Result<_>>()?,
        });
    }
    totals.granted_credits = granted;
    totals.consumed_credits = consumed;
    totals.overage_credits = consumption.overage;
    totals.remaining_credits = remaining;

    // Lines by (product, action, model with null last) as strings: the order of
    // `invoice_lines`.
    let mut lines: BTreeMap<close::LineKey, close::LineTotals> = BTreeMap::new();
    for ((sku, late), figures) in line_totals {
        let product = match late {
            true => {
                crate::model::Shared::from(format!("{PRIOR_PERIOD_PREFIX}{}", dicts.product(sku)))
            }
            false => dicts.product(sku).clone(),
        };
        let model = dicts.model(sku).cloned();
        lines.insert(
            (product, dicts.action(sku).clone(), (model.is_none(), model)),
            figures,
        );
    }
    let closed = match ctx.mode {
        Mode::Reconcile => {
            result.balances.push(BalanceRow {
                account_id: alloc.account_id.clone(),
                plan_id: alloc.plan_id.clone(),
                period_start: alloc.period_start,
                period_end: alloc.period_end,
                granted: consumption.granted,
                used: consumption.consumed,
                overage: consumption.overage,
            });
            None
        }
        Mode::Close => {
            let closed = close::close_period(
                ctx.book,
                alloc,
                PeriodFigures {
                    consumption: &consumption,
                    lines,
                    credits_used,
                    recorded: recorded_period,
                },
            )?;
            let r = &closed.renewal;
            let accounted = Milli::sum([
                r.expired_credits,
                r.rollover_credits,
                r.carried_grant_credits,
            ])?;
            invariant(remaining == accounted, || {
                format!("{}: remaining ≠ expired + rolled over + carried", place())
            })?;
            totals.expired_credits = r.expired_credits;
            totals.rollover_credits = r.rollover_credits;
            totals.carried_credits = r.carried_grant_credits;
            Some(closed)
        }
    };
    result.totals.add(&totals)?;
    Ok(closed)
}
