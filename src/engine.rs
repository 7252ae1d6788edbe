//! One account, start to finish: price its events, consume its grants period by period,
//! reconcile every event and entry, and (at close) bill and renew. Accounts are independent,
//! so the pipeline runs this in parallel; inside an account the work is sequential.

use crate::amount::Milli;
use crate::close::{self, ClosedPeriod, InvoiceLineRow, InvoiceRow, PeriodFigures, RenewalRow};
use crate::consume::{self, ByKind, GrantBalance, PeriodConsumption};
use crate::error::{Result, TallyError};
use crate::model::*;
use crate::price::{Price, RateTable};
use crate::pricebook::{Overage, Plan, PriceBook};
use crate::reconcile::{self, DiscrepancyRow, Kind};
use crate::time::Micros;
use crate::window::{AccountWork, BucketWork, EventWork, PeriodWork};
use std::collections::BTreeMap;
use thin_vec::ThinVec;

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

/// One row of `balances` (its account and plan shared with its allocation's).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalanceRow {
    pub account_id: crate::model::Shared,
    pub plan_id: crate::model::Shared,
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

    /// Whether every figure `balances` shows of this row fits DECIMAL(18,3) (worked out in
    /// 128 bits). The engine's rows always do (their sums are checked as they are made); a
    /// row decoded from a shard's `partial.bin` is checked, so that the merge never writes
    /// a figure its column cannot hold (each amount fits, but two granted kinds at the
    /// limit sum past it).
    pub fn figures_fit(&self) -> bool {
        let wide = |m: &Milli| i128::from(m.0);
        let granted: i128 = self.granted.iter().map(wide).sum();
        let consumed: i128 = self.used.iter().map(wide).sum();
        let remaining_by_kind =
            (self.granted.iter().zip(&self.used)).map(|(g, u)| wide(g) - wide(u));
        let limit = i128::from(crate::amount::OUTPUT_LIMIT_MILLIS);
        [granted, consumed + wide(&self.overage), granted - consumed]
            .into_iter()
            .chain(remaining_by_kind)
            .all(|figure| figure.abs() <= limit)
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
        let count = TallyError::count_sum;
        self.account_periods = count(self.account_periods, o.account_periods, "account periods")?;
        self.events_in_window = count(self.events_in_window, o.events_in_window, "events")?;
        self.matched_events = count(self.matched_events, o.matched_events, "matched events")?;
        self.pending_events = count(self.pending_events, o.pending_events, "pending events")?;
        self.entries_in_window = count(self.entries_in_window, o.entries_in_window, "entries")?;
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

/// Everything one account contributes to the outputs. Its tables are [`ThinVec`]s (one
/// pointer each, their length and room in a 16-byte header on the heap, nothing allocated
/// while empty): a split run holds every account's result until its end, and a reconcile
/// fills two of the eight tables, so 24-byte `Vec`s made 192 of an account's 320 bytes (a
/// million accounts at 100M events; a reconcile's account now takes about 100 bytes less,
/// a close's, which fills four to six tables, 30–60).
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AccountResult {
    pub discrepancies: ThinVec<DiscrepancyRow>,
    pub balances: ThinVec<BalanceRow>,
    pub invoices: ThinVec<InvoiceRow>,
    pub invoice_lines: ThinVec<InvoiceLineRow>,
    pub renewals: ThinVec<RenewalRow>,
    pub allocations_next: ThinVec<AllocationRow>,
    pub grants_next: ThinVec<GrantRow>,
    pub billed_events: ThinVec<BilledEventRow>,
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

impl AccountState<'_> {
    /// Keep what a period's consumption left of each grant for the account's later periods.
    fn keep_remaining(&mut self, grants_after: &[GrantBalance]) {
        for g in grants_after {
            if let Some(id) = &g.grant_id {
                self.balances[self.slot[id.as_str()]].remaining = g.remaining;
            }
        }
    }
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
    let alloc = period.allocation;
    let plan = &ctx.book.plans[&*alloc.plan_id];
    let events = &group.events[period.events.clone()];
    let unattached = &group.unattached[period.unattached.clone()];
    let priced = price_events(ctx, group, events)?;
    let consumed = consume_period(
        alloc,
        &state.balances,
        events,
        &priced.prices,
        trace.is_some(),
    )?;
    state.keep_remaining(&consumed.consumption.grants_after);

    let mut sums = PeriodSums::new(ctx, alloc, plan, state.account, events.len());
    if sums.billed_invoice_id.is_some() {
        // Sized for the period at once: grown row by row, the vectors of a 100M-event
        // close copied their billed events about twice over into fresh memory. (Not
        // `reserve_exact`: an account's later periods then grow it geometrically.)
        result.billed_events.reserve(events.len());
    }
    let mut event_traces: Vec<EventTrace> = Vec::new();
    let mut draws_by_event = match trace {
        Some(_) => consumed.draws_by_event(events.len()),
        None => Vec::new(),
    };
    for (i, event) in events.iter().enumerate() {
        let charge = EventCharge {
            price: priced.prices[i],
            unit_bit: priced.unit_bits[i],
            overage: consumed.overage_of[i],
        };
        let (verdict, kinds) = reconcile_event(ctx, group, event, charge, &mut sums, result, mix)?;
        if trace.is_some() {
            let draws = std::mem::take(&mut draws_by_event[i]);
            let traced = event_trace(ctx, group, event, charge, draws, &verdict, &kinds)?;
            event_traces.push(traced);
        }
        write_event_rows(ctx, group, event, charge.price, &verdict, &kinds, result)?;
    }
    reconcile_unattached(ctx, group, unattached, &mut sums, result)?;

    let conserved = check_conservation(alloc, &consumed.consumption, sums.credits_used)?;
    if let Some(trace) = trace {
        trace.push(period_trace(
            ctx,
            group,
            alloc,
            &consumed,
            event_traces,
            unattached,
        )?);
    }
    let mut totals = sums.totals;
    totals.recorded_credits = sums.recorded;
    totals.granted_credits = conserved.granted;
    totals.consumed_credits = conserved.consumed;
    totals.overage_credits = consumed.consumption.overage;
    totals.remaining_credits = conserved.remaining;
    let closed = match ctx.mode {
        Mode::Reconcile => {
            result
                .balances
                .push(balance_row(alloc, consumed.consumption));
            None
        }
        Mode::Close => {
            let figures = PeriodFigures {
                consumption: &consumed.consumption,
                lines: invoice_lines_by_key(ctx.dicts, sums.line_totals),
                credits_used: sums.credits_used,
                recorded: sums.recorded,
            };
            let closed = close::close_period(ctx.book, alloc, figures)?;
            check_renewal_accounts_for_remaining(alloc, &closed.renewal, conserved.remaining)?;
            totals.expired_credits = closed.renewal.expired_credits;
            totals.rollover_credits = closed.renewal.rollover_credits;
            totals.carried_credits = closed.renewal.carried_grant_credits;
            Some(closed)
        }
    };
    result.totals.add(&totals)?;
    Ok(closed)
}

/// Each event's price and its rate's unit bit (for the credits-by-product mix), from one
/// rate lookup per event.
struct PricedEvents {
    prices: Vec<Price>,
    unit_bits: Vec<u64>,
}

fn price_events(
    ctx: &RunContext<'_>,
    group: &BucketWork<'_>,
    events: &[EventWork],
) -> Result<PricedEvents> {
    let (prices, unit_bits) = events
        .iter()
        .map(|e| ctx.rates.price_and_unit(&e.usage, group.usage_ids))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    Ok(PricedEvents { prices, unit_bits })
}

/// What a price draws on the period's grants: its credits, when some are charged.
fn credits_drawn(price: &Price) -> Option<Milli> {
    price.charged().filter(|credits| credits.is_positive())
}

/// What consuming a period's charges left: the consumption, each event's overage, and
/// (when traced) every draw with the event it was for.
struct ConsumedPeriod {
    consumption: PeriodConsumption,
    /// By event (zero for an event that charged nothing).
    overage_of: Vec<Milli>,
    /// Every draw in consumption order (traced runs only).
    draws: Vec<consume::Draw>,
    /// The event of each charge: `charged_event[draw.charge]`.
    charged_event: Vec<usize>,
}

impl ConsumedPeriod {
    /// The draws of each of the period's `events` events (a traced run's).
    fn draws_by_event(&self, events: usize) -> Vec<Vec<consume::Draw>> {
        let mut by_event = vec![Vec::new(); events];
        for d in &self.draws {
            by_event[self.charged_event[d.charge]].push(*d);
        }
        by_event
    }
}

/// Consume the period's charges from the plan plus every grant effective at some instant of
/// the whole period.
fn consume_period(
    alloc: &AllocationRow,
    balances: &[GrantBalance],
    events: &[EventWork],
    prices: &[Price],
    traced: bool,
) -> Result<ConsumedPeriod> {
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
    let charges_count = prices.iter().filter_map(credits_drawn).count();
    let mut charged_event: Vec<usize> = Vec::with_capacity(charges_count);
    let mut charges: Vec<(Micros, Milli)> = Vec::with_capacity(charges_count);
    for (i, (event, price)) in events.iter().zip(prices).enumerate() {
        if let Some(credits) = credits_drawn(price) {
            // A late event is billed in this period: it draws on this period's grants as
            // if it occurred at the period start (it sorts first: it occurred before the
            // start).
            let at = match event.late_from() {
                Some(_) => alloc.period_start,
                None => event.usage.occurred_at,
            };
            charged_event.push(i);
            charges.push((at, credits));
        }
    }
    let mut draws: Vec<consume::Draw> = Vec::new();
    let consumption = if traced {
        consume::consume_traced(pool, &charges, |d| draws.push(d))?
    } else {
        consume::consume(pool, &charges)?
    };
    let mut overage_of = vec![Milli::ZERO; events.len()];
    for (&i, &overage) in charged_event.iter().zip(&consumption.overage_of) {
        overage_of[i] = overage;
    }
    Ok(ConsumedPeriod {
        consumption,
        overage_of,
        draws,
        charged_event,
    })
}

/// What an event brings to its period's reconciliation besides its rows.
#[derive(Clone, Copy)]
struct EventCharge {
    price: Price,
    /// Its rate's unit bit, for the credits-by-product mix.
    unit_bit: u64,
    /// Credits of it that no grant covered.
    overage: Milli,
}

/// What a period's events and entries add up to as they are reconciled one by one.
struct PeriodSums<'a> {
    alloc: &'a AllocationRow,
    /// The plan blocks usage past its credits (such events are reported `over_limit_usage`).
    blocks_overage: bool,
    totals: Totals,
    /// Net recorded credits of the period's events and unattached entries.
    recorded: Milli,
    /// Σ charged credits of its events.
    credits_used: Milli,
    /// Close only: the invoice lines' figures.
    line_totals: rustc_hash::FxHashMap<LineOf, close::LineTotals>,
    /// Close only: the invoice id, which billed events of one invoice share.
    billed_invoice_id: Option<crate::model::Shared>,
    account_id: crate::model::Shared,
}

impl<'a> PeriodSums<'a> {
    fn new(
        ctx: &RunContext<'_>,
        alloc: &'a AllocationRow,
        plan: &Plan,
        account: u32,
        events: usize,
    ) -> PeriodSums<'a> {
        PeriodSums {
            alloc,
            blocks_overage: plan.overage == Overage::Block,
            totals: Totals {
                account_periods: 1,
                events_in_window: events as u64,
                ..Totals::default()
            },
            recorded: Milli::ZERO,
            credits_used: Milli::ZERO,
            line_totals: rustc_hash::FxHashMap::default(),
            billed_invoice_id: (ctx.mode == Mode::Close)
                .then(|| close::invoice_id(&alloc.account_id, alloc.period_start).into()),
            account_id: ctx.dicts.account(account).clone(),
        }
    }

    /// Add a billed event to its invoice line (a late event to its prior-period line).
    fn add_to_line(
        &mut self,
        ctx: &RunContext<'_>,
        event: &EventWork,
        credits: Milli,
    ) -> Result<()> {
        let u = &event.usage;
        let line = self
            .line_totals
            .entry((u.sku, event.late_from().is_some()))
            .or_insert((0, Milli::ZERO, Milli::ZERO));
        line.0 += 1;
        // A quantity, not credits: named as such, not as the period's credits sum.
        line.1 = line.1.checked_add(u.quantity()).map_err(|_| {
            TallyError::Overflow(format!(
                "{}: the quantities of its {} events sum past what \
                 invoice_lines.quantity holds (999999999999999.999, DECIMAL(18,3)): \
                 {} + {}; check those events' quantities, then rerun",
                period_place(self.alloc),
                sku_place(ctx.dicts, u.sku),
                line.1,
                u.quantity()
            ))
        })?;
        line.2 = line.2.checked_add(credits)?;
        Ok(())
    }
}

/// Reconcile one event of the period: add it to the sums and the mix, and list it as billed
/// (close). Returns its verdict and discrepancy kinds (its rows are written by
/// [`write_event_rows`], after its trace: an event whose trace and rows both fail reports
/// the trace's error).
fn reconcile_event(
    ctx: &RunContext<'_>,
    group: &BucketWork<'_>,
    event: &EventWork,
    charge: EventCharge,
    sums: &mut PeriodSums<'_>,
    result: &mut AccountResult,
    mix: &mut crate::breakdown::SkuMix,
) -> Result<(reconcile::EventVerdict, Kinds)> {
    let u = &event.usage;
    let price = charge.price;
    let entries = &group.entries[event.entries()];
    let verdict = reconcile::classify(u, price, entries, ctx.settle_from)?;
    sums.totals.entries_in_window += entries.len() as u64;
    sums.recorded = sums.recorded.checked_add(verdict.recorded)?;
    // The mix sums a bucket's accounts together: past the range, that is the run's
    // totals, not this account-period's.
    mix.add(u, price, verdict.recorded, charge.unit_bit)
        .map_err(TallyError::in_run_totals)?;
    if let Some(expected) = price.expected() {
        sums.totals.expected_credits = sums.totals.expected_credits.checked_add(expected)?;
    }
    if let Some(credits) = price.charged() {
        sums.credits_used = sums.credits_used.checked_add(credits)?;
    }
    if let Some(invoice_id) = &sums.billed_invoice_id {
        // Every event of the period is listed, the unbilled with no credits; the billed
        // ones also make the invoice lines (a late event a prior-period line).
        let billed = price.charged();
        result.billed_events.push(BilledEventRow {
            invoice_id: invoice_id.clone(),
            event_id: group.usage_ids.id(u.id)?,
            account_id: sums.account_id.clone(),
            occurred_at: u.occurred_at,
            credits: billed,
        });
        if let Some(credits) = billed {
            sums.add_to_line(ctx, event, credits)?;
        }
    }
    if verdict.pending {
        sums.totals.pending_events += 1;
    } else if verdict.primary.is_none() {
        sums.totals.matched_events += 1;
    }
    let kinds = event_kinds(
        event,
        &verdict,
        sums.blocks_overage && charge.overage.is_positive(),
    );
    Ok((verdict, kinds))
}

/// Write an event's discrepancy rows, one for each of its kinds.
fn write_event_rows(
    ctx: &RunContext<'_>,
    group: &BucketWork<'_>,
    event: &EventWork,
    price: Price,
    verdict: &reconcile::EventVerdict,
    kinds: &Kinds,
    result: &mut AccountResult,
) -> Result<()> {
    let entries = &group.entries[event.entries()];
    for &kind in kinds {
        result.discrepancies.push(reconcile::event_row(
            kind,
            &event.usage,
            price,
            entries,
            verdict.recorded,
            ctx.dicts,
            (group.usage_ids, group.debit_ids),
        )?);
    }
    Ok(())
}

/// An event's discrepancy kinds, in the order its rows are written.
type Kinds = smallvec::SmallVec<[Kind; 4]>;

fn event_kinds(event: &EventWork, verdict: &reconcile::EventVerdict, over_limit: bool) -> Kinds {
    let mut kinds: Kinds = verdict.primary.into_iter().collect();
    if event.usage.conflicting() {
        kinds.push(Kind::ConflictingDuplicate);
    }
    if over_limit {
        kinds.push(Kind::OverLimitUsage);
    }
    if event.late_from().is_some() {
        kinds.push(Kind::LateEvent);
    }
    kinds
}

/// Reconcile the entries attached to no event.
fn reconcile_unattached(
    ctx: &RunContext<'_>,
    group: &BucketWork<'_>,
    unattached: &[Debit],
    sums: &mut PeriodSums<'_>,
    result: &mut AccountResult,
) -> Result<()> {
    for entry in unattached {
        sums.totals.entries_in_window += 1;
        sums.recorded = sums.recorded.checked_add(entry.signed_credits())?;
        if let Some(kind) = reconcile::unattached_kind(entry) {
            result.discrepancies.push(reconcile::entry_row(
                kind,
                entry,
                ctx.dicts,
                group.debit_ids,
            )?);
        }
    }
    Ok(())
}

/// A period's grant sums, checked to conserve credits.
struct Conserved {
    granted: Milli,
    consumed: Milli,
    remaining: Milli,
}

/// Conservation, checked on independent sums before anything is published.
fn check_conservation(
    alloc: &AllocationRow,
    consumption: &PeriodConsumption,
    credits_used: Milli,
) -> Result<Conserved> {
    let granted = consume::sum_kinds(&consumption.granted)?;
    let consumed = consume::sum_kinds(&consumption.consumed)?;
    let remaining = Milli::sum(consumption.grants_after.iter().map(|g| g.remaining))?;
    invariant(
        credits_used == consumed.checked_add(consumption.overage)?,
        || format!("{}: credits used ≠ consumed + overage", period_place(alloc)),
    )?;
    invariant(granted == consumed.checked_add(remaining)?, || {
        format!("{}: granted ≠ consumed + remaining", period_place(alloc))
    })?;
    Ok(Conserved {
        granted,
        consumed,
        remaining,
    })
}

/// A close's renewal accounts for every credit the period left.
fn check_renewal_accounts_for_remaining(
    alloc: &AllocationRow,
    renewal: &RenewalRow,
    remaining: Milli,
) -> Result<()> {
    let accounted = Milli::sum([
        renewal.expired_credits,
        renewal.rollover_credits,
        renewal.carried_grant_credits,
    ])?;
    invariant(remaining == accounted, || {
        format!(
            "{}: remaining ≠ expired + rolled over + carried",
            period_place(alloc)
        )
    })
}

/// One event as `tally explain` shows it.
fn event_trace(
    ctx: &RunContext<'_>,
    group: &BucketWork<'_>,
    event: &EventWork,
    charge: EventCharge,
    draws: Vec<consume::Draw>,
    verdict: &reconcile::EventVerdict,
    kinds: &Kinds,
) -> Result<EventTrace> {
    let u = &event.usage;
    Ok(EventTrace {
        work: TracedWork {
            usage: UsageRow::from_compact(u, ctx.dicts, group.usage_ids)?,
            entries: group.entries[event.entries()]
                .iter()
                .map(|d| DebitRow::from_compact(d, ctx.dicts, group.debit_ids))
                .collect::<Result<_>>()?,
            conflicting: u.conflicting(),
            late_from: event.late_from(),
        },
        price: charge.price,
        draws,
        overage: charge.overage,
        verdict: verdict.clone(),
        kinds: kinds.to_vec(),
    })
}

/// One account-period as `tally explain` shows it.
fn period_trace(
    ctx: &RunContext<'_>,
    group: &BucketWork<'_>,
    alloc: &AllocationRow,
    consumed: &ConsumedPeriod,
    events: Vec<EventTrace>,
    unattached: &[Debit],
) -> Result<PeriodTrace> {
    // Each grant with its credits at the start of the period: what it has left plus what
    // was drawn from it.
    let mut grants: Vec<(GrantBalance, Milli)> = consumed
        .consumption
        .grants_after
        .iter()
        .map(|g| (g.clone(), g.remaining))
        .collect();
    for d in &consumed.draws {
        grants[d.grant].1 = grants[d.grant].1.checked_add(d.taken)?;
    }
    Ok(PeriodTrace {
        allocation: alloc.clone(),
        grants,
        events,
        unattached: unattached
            .iter()
            .map(|e| {
                Ok((
                    DebitRow::from_compact(e, ctx.dicts, group.debit_ids)?,
                    reconcile::unattached_kind(e),
                ))
            })
            .collect::<Result<_>>()?,
    })
}

/// Lines by (product, action, model with null last) as strings: the order of
/// `invoice_lines`.
fn invoice_lines_by_key(
    dicts: &crate::dict::Dicts,
    line_totals: rustc_hash::FxHashMap<LineOf, close::LineTotals>,
) -> BTreeMap<close::LineKey, close::LineTotals> {
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
    lines
}

/// The `balances` row of a reconciled period.
fn balance_row(alloc: &AllocationRow, consumption: PeriodConsumption) -> BalanceRow {
    BalanceRow {
        account_id: alloc.account_id.clone(),
        plan_id: alloc.plan_id.clone(),
        period_start: alloc.period_start,
        period_end: alloc.period_end,
        granted: consumption.granted,
        used: consumption.consumed,
        overage: consumption.overage,
    }
}
