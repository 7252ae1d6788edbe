//! One account, start to finish: price its events, consume its grants period by period,
//! reconcile every event and entry, and (at close) bill and renew. Accounts are independent,
//! so the pipeline runs this in parallel; inside an account the work is sequential.

use crate::amount::Milli;
use crate::close::{self, ClosedPeriod, InvoiceLineRow, InvoiceRow, PeriodFigures, RenewalRow};
use crate::consume::{self, ByKind, GrantBalance};
use crate::error::{Result, TallyError};
use crate::model::*;
use crate::price::{price_event, Price};
use crate::pricebook::{Overage, PriceBook};
use crate::reconcile::{self, DiscrepancyRow, Kind};
use crate::time::Micros;
use crate::window::{AccountWork, PeriodWork};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

/// Settings shared by every account of a run.
pub struct RunContext<'a> {
    pub book: &'a PriceBook,
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

/// One row of `billed_events` (close): an event billed on an invoice.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BilledEventRow {
    /// Shared by the rows of one invoice (and `account_id` by the rows of one account):
    /// no string allocated per billed event.
    pub invoice_id: crate::model::Shared,
    pub event_id: crate::model::Id,
    pub account_id: crate::model::Shared,
    pub occurred_at: Micros,
    pub credits: Milli,
}

/// Everything one account contributes to the outputs.
#[derive(Default, serde::Serialize, serde::Deserialize)]
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
    /// Credits by product/action/model (for `report.html`; the pipeline takes it per bucket).
    #[serde(default)]
    pub mix: crate::breakdown::AccountMix,
}

impl AccountResult {
    /// Drop spare capacity: a split run holds every account's result until the end, and
    /// a vector grown by `push` keeps room for 4 rows (a million accounts × a few spare
    /// balance and discrepancy rows was over a GB at 100M events).
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
        self.mix.append(&mut r.mix);
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

/// One event as the run saw it.
#[derive(Clone, Debug)]
pub struct EventTrace {
    pub work: crate::window::EventWork,
    pub price: Price,
    /// Credits taken from the period's grants (`grant` indexes `PeriodTrace::grants`).
    pub draws: Vec<consume::Draw>,
    pub overage: Milli,
    pub verdict: reconcile::EventVerdict,
    /// The discrepancy rows written for it, in the order written.
    pub kinds: Vec<Kind>,
}

pub fn process_account(ctx: &RunContext<'_>, work: AccountWork) -> Result<AccountResult> {
    process_account_traced(ctx, work, None)
}

/// [`process_account`], also recording every period's trace when `trace` is given.
pub fn process_account_traced(
    ctx: &RunContext<'_>,
    work: AccountWork,
    mut trace: Option<&mut Vec<PeriodTrace>>,
) -> Result<AccountResult> {
    let mut result = AccountResult::default();
    // Grant balances persist across the account's periods of this run.
    let mut balances: Vec<GrantBalance> = work.grants.iter().map(GrantBalance::from_row).collect();
    let slot: HashMap<String, usize, crate::validate::FastHash> = balances
        .iter()
        .enumerate()
        .map(|(i, g)| (g.grant_id.clone().unwrap_or_default(), i))
        .collect();
    let mut last_rollover = None;
    let mut last_period_end = None;
    for period in work.periods {
        let closed = process_period(
            ctx,
            period,
            &mut balances,
            &slot,
            &mut result,
            trace.as_deref_mut(),
        )?;
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
        result.grants_next = close::grants_next(&balances, end, last_rollover);
    }
    Ok(result)
}

/// Order a period's events by (occurred_at, event_id) (ids are unique after dedup, so
/// the order is total). The ~300-byte works are not sorted themselves: (occurred_at, row)
/// pairs are, and the works move once, only when they were out of order.
fn sort_events(events: &mut Vec<crate::window::EventWork>) {
    let id = |i: u32| events[i as usize].usage.event_id.as_bytes();
    let mut order: Vec<(Micros, u32)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.usage.occurred_at, i as u32))
        .collect();
    order.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| id(a.1).cmp(id(b.1))));
    if order
        .iter()
        .enumerate()
        .all(|(at, &(_, i))| at == i as usize)
    {
        return;
    }
    let mut works: Vec<Option<crate::window::EventWork>> = events.drain(..).map(Some).collect();
    events.extend(
        order
            .iter()
            .map(|&(_, i)| works[i as usize].take().expect("each event once")),
    );
}

fn process_period(
    ctx: &RunContext<'_>,
    mut period: PeriodWork,
    balances: &mut [GrantBalance],
    slot: &HashMap<String, usize, crate::validate::FastHash>,
    result: &mut AccountResult,
    trace: Option<&mut Vec<PeriodTrace>>,
) -> Result<Option<ClosedPeriod>> {
    let alloc = &period.allocation;
    let plan = &ctx.book.plans[&alloc.plan_id];
    sort_events(&mut period.events);
    let prices: Vec<Price> = period
        .events
        .iter()
        .map(|e| price_event(ctx.book, &e.usage))
        .collect::<Result<_>>()?;

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
                let event = &period.events[i];
                // A late event is billed in this period: it draws on this period's grants
                // as if it occurred at the period start (it sorts first: it occurred
                // before the start).
                let at = match event.late_from {
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
        Some(_) => vec![Vec::new(); period.events.len()],
        None => Vec::new(),
    };
    for d in &draws {
        draws_by_event[charged[d.charge].0].push(*d);
    }
    for g in &consumption.grants_after {
        if let Some(id) = &g.grant_id {
            balances[slot[id]].remaining = g.remaining;
        }
    }
    let mut overage_of = vec![Milli::ZERO; period.events.len()];
    for (&(i, _, _), cov) in charged.iter().zip(&consumption.coverage) {
        overage_of[i] = cov.overage;
    }

    // Reconcile every event, then every unattached entry.
    let mut totals = Totals {
        account_periods: 1,
        events_in_window: period.events.len() as u64,
        ..Totals::default()
    };
    let mut recorded_period = Milli::ZERO;
    let mut credits_used = Milli::ZERO;
    // Keys borrow the events' strings (a late event's product gets its prefix): no
    // allocation per event; owned once per line below.
    type BorrowedKey<'e> = (Cow<'e, str>, &'e str, (bool, Option<&'e str>));
    let mut borrowed_lines: BTreeMap<BorrowedKey<'_>, close::LineTotals> = BTreeMap::new();
    let invoice_id =
        (ctx.mode == Mode::Close).then(|| close::invoice_id(&alloc.account_id, alloc.period_start));
    let billed_invoice_id: crate::model::Shared = invoice_id.as_deref().unwrap_or_default().into();
    let mut mix = crate::breakdown::PeriodMix::default();
    for (i, event) in period.events.iter().enumerate() {
        let price = prices[i];
        let verdict = reconcile::classify(&event.usage, price, &event.entries, ctx.settle_from)?;
        totals.entries_in_window += event.entries.len() as u64;
        recorded_period = recorded_period.checked_add(verdict.recorded)?;
        mix.add(&event.usage, price, verdict.recorded)?;
        if let Some(expected) = price.expected() {
            totals.expected_credits = totals.expected_credits.checked_add(expected)?;
        }
        if let Price::Charged(credits) = price {
            credits_used = credits_used.checked_add(credits)?;
        }
        if let (Price::Charged(credits), Mode::Close) = (price, ctx.mode) {
            let u = &event.usage;
            result.billed_events.push(BilledEventRow {
                invoice_id: billed_invoice_id.clone(),
                event_id: u.event_id.clone(),
                account_id: u.account_id.clone(),
                occurred_at: u.occurred_at,
                credits,
            });
            // A late event is billed as a prior-period adjustment line.
            let product: Cow<'_, str> = match event.late_from {
                Some(_) => Cow::Owned(format!("{PRIOR_PERIOD_PREFIX}{}", u.product)),
                None => Cow::Borrowed(&u.product),
            };
            let key = (product, &*u.action, (u.model.is_none(), u.model.as_deref()));
            let line = borrowed_lines
                .entry(key)
                .or_insert((0, Milli::ZERO, Milli::ZERO));
            line.0 += 1;
            line.1 = line.1.checked_add(u.quantity)?;
            line.2 = line.2.checked_add(credits)?;
        }
        if verdict.pending {
            totals.pending_events += 1;
        } else if verdict.primary.is_none() {
            totals.matched_events += 1;
        }
        let mut kinds: Vec<Kind> = verdict.primary.into_iter().collect();
        if event.conflicting {
            kinds.push(Kind::ConflictingDuplicate);
        }
        if plan.overage == Overage::Block && overage_of[i].is_positive() {
            kinds.push(Kind::OverLimitUsage);
        }
        if event.late_from.is_some() {
            kinds.push(Kind::LateEvent);
        }
        if trace.is_some() {
            let draws_of_event = std::mem::take(&mut draws_by_event[i]);
            event_traces.push(EventTrace {
                work: event.clone(),
                price,
                draws: draws_of_event,
                overage: overage_of[i],
                verdict: verdict.clone(),
                kinds: kinds.clone(),
            });
        }
        for kind in kinds {
            result.discrepancies.push(reconcile::event_row(
                kind,
                &event.usage,
                price,
                &event.entries,
                verdict.recorded,
            )?);
        }
    }
    for entry in &period.unattached {
        totals.entries_in_window += 1;
        recorded_period = recorded_period.checked_add(entry.signed_credits())?;
        if let Some(kind) = reconcile::unattached_kind(entry) {
            result.discrepancies.push(reconcile::entry_row(kind, entry));
        }
    }
    totals.recorded_credits = recorded_period;
    mix.fold_into(&mut result.mix);

    // Conservation, checked on independent sums before anything is published.
    let granted = consume::sum_kinds(&consumption.granted)?;
    let consumed = consume::sum_kinds(&consumption.consumed)?;
    let remaining = Milli::sum(consumption.grants_after.iter().map(|g| g.remaining))?;
    let place = || {
        format!(
            "account \"{}\" period starting {}",
            alloc.account_id,
            crate::time::format_instant(alloc.period_start)
        )
    };
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
            unattached: period
                .unattached
                .iter()
                .map(|e| (e.clone(), reconcile::unattached_kind(e)))
                .collect(),
        });
    }
    totals.granted_credits = granted;
    totals.consumed_credits = consumed;
    totals.overage_credits = consumption.overage;
    totals.remaining_credits = remaining;

    // Same order: the owned keys compare as the borrowed ones did.
    let lines: BTreeMap<close::LineKey, close::LineTotals> = borrowed_lines
        .into_iter()
        .map(|((product, action, (no_model, model)), totals)| {
            (
                (
                    product.into_owned(),
                    action.to_string(),
                    (no_model, model.map(str::to_string)),
                ),
                totals,
            )
        })
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UsageRow;
    use crate::window::{Entries, EventWork};

    fn work(row: u64, id: &str, occurred_at: Micros) -> EventWork {
        EventWork {
            usage: UsageRow {
                occurred_at,
                ..UsageRow::sample(row, id)
            },
            entries: Entries::new(),
            conflicting: false,
            late_from: None,
        }
    }

    /// Contract: "Chargeable events consume, in order of (`occurred_at`, `event_id`)";
    /// section 7: "id tie-breaks compare bytes".
    #[test]
    fn period_events_are_ordered_by_occurred_at_then_event_id_bytes() {
        let mut events = vec![
            work(0, "b", 20),
            work(1, "a", 20),
            work(2, "Z", 20),
            work(3, "z", 10),
            work(4, "é", 20),
        ];
        sort_events(&mut events);
        let order: Vec<&str> = events.iter().map(|e| e.usage.event_id.as_str()).collect();
        assert_eq!(order, ["z", "Z", "a", "b", "é"]);
        // Already in order: unchanged.
        sort_events(&mut events);
        let rows: Vec<u64> = events.iter().map(|e| e.usage.at.row).collect();
        assert_eq!(rows, [3, 2, 1, 0, 4]);
    }
}
