//! Property tests: for random grants, usage and ledger entries, no credit is created or
//! lost, and every event is reported as the contract's table says.

use proptest::prelude::*;
use tally::amount::Milli;
use tally::dict::DictBuilder;
use tally::engine::{process_account, AccountResult, RunContext};
use tally::model::*;
use tally::price::RateTable;
use tally::pricebook::PriceBook;
use tally::window::{sort_events, AccountWork, BucketWork, EventWork, PeriodWork};

const DAY: i64 = 86_400_000_000;
const START: i64 = 1_793_491_200_000_000; // 2026-11-01T00:00:00Z

fn book(overage: &str, cap: &str) -> PriceBook {
    let text = format!(
        r#"currency = "USD"
[plans.p]
price = "9.99"
included_credits = "50"
rollover_cap = "{cap}"
overage = {overage}
[[rates]]
product = "studio"
action = "video"
credits_per_unit = "1.5"
increment = "0.5"
effective_from = 2026-01-01T00:00:00Z
[[rates]]
product = "studio"
action = "image"
credits_per_unit = "2"
increment = "1"
effective_from = 2026-01-01T00:00:00Z
[[rates]]
product = "studio"
action = "image"
model = "flux"
credits_per_unit = "2.5"
increment = "1"
minimum = "3"
effective_from = 2026-01-01T00:00:00Z
[[rates]]
product = "studio"
action = "image"
model = "flux"
credits_per_unit = "3"
increment = "1"
minimum = "3"
effective_from = 2026-11-16T00:00:00Z
"#
    );
    PriceBook::parse(&text, "test").unwrap()
}

fn at() -> RowRef {
    RowRef { file: 0, row: 0 }
}

prop_compose! {
    fn grant_strategy(i: usize)(kind in 0usize..4, credits in 1i64..80_000, eff_day in -10i64..70,
        len_days in prop::option::of(1i64..60), priority in prop::option::of(0i64..4))
        -> GrantRow {
        let kinds = [GrantKind::Rollover, GrantKind::Promo, GrantKind::Compensation, GrantKind::TopUp];
        let effective_at = START + eff_day * DAY;
        GrantRow {
            at: at(),
            grant_id: format!("g{i:02}"),
            account_id: "a".into(),
            kind: kinds[kind],
            credits: Milli(credits),
            effective_at,
            expires_at: len_days.map(|d| effective_at + d * DAY),
            priority,
        }
    }
}

/// The skus an event may have: a rate without a model; a model without a rate of its
/// own, priced by its action's (section 3.2's fallback); a model whose rate beats its
/// action's and changes mid-period; the action alone; and a model of an action without any
/// rate (unpriced).
const SKUS: [(&str, Option<&str>); 5] = [
    ("video", None),
    ("video", Some("veo")),
    ("image", Some("flux")),
    ("image", None),
    ("twin", Some("sdxl")),
];

/// The settle window of every run here: 15 minutes.
const SETTLE: i64 = 15 * 60_000_000;

/// An event's ledger entries, most of them debits: (kind, how its credits are chosen,
/// random credits). See [`entry_credits`].
fn entries_strategy() -> impl Strategy<Value = Vec<(EntryKind, u8, i64)>> {
    prop::collection::vec(
        (0u8..6, 0u8..4, 0i64..30_000).prop_map(|(kind, how, credits)| {
            let kind = match kind {
                4 => EntryKind::Refund,
                5 => EntryKind::Adjustment,
                _ => EntryKind::Debit,
            };
            (kind, how, credits)
        }),
        0..4,
    )
}

/// The entries' credits: random (0), the event's price (1), or a share of its price (2,
/// 3: the shares add up to the price), so that entries that match their event, alone or
/// split, are common and not only random amounts that rarely do.
fn entry_credits(price: i64, entries: Vec<(EntryKind, u8, i64)>) -> Vec<(EntryKind, Milli)> {
    let shares = entries.iter().filter(|&&(_, how, _)| how >= 2).count() as i64;
    let mut first_share = true;
    entries
        .into_iter()
        .map(|(kind, how, random)| {
            let credits = match how {
                0 => random,
                1 => price,
                _ => {
                    let share = price / shares;
                    let rest = if first_share {
                        price - share * shares
                    } else {
                        0
                    };
                    first_share = false;
                    share + rest
                }
            };
            (kind, Milli(credits))
        })
        .collect()
}

/// An event and its entries.
type Event = (UsageRow, Vec<(EntryKind, Milli)>);

/// An event's minute from START, before `end_minute`: a quarter of them in the last 30
/// minutes (where an as-of at `end_minute` makes the last 15 pending, or not, by the
/// settle window's edge), the rest anywhere.
fn minutes_before(end_minute: i64) -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => 0..end_minute,
        1 => (end_minute - 30)..end_minute,
    ]
}

prop_compose! {
    fn event_strategy(i: usize, end_minute: i64)(minute in minutes_before(end_minute), qty in 0i64..20_000,
        status in 0u8..10, sku in 0usize..SKUS.len(), entries in entries_strategy())
        -> Event {
        let status = match status { 0 => EventStatus::Failed, 1 => EventStatus::Cancelled, _ => EventStatus::Succeeded };
        let (action, model) = SKUS[sku];
        let usage = UsageRow {
            at: at(),
            event_id: format!("e{i:03}").into(),
            account_id: "a".into(),
            product: "studio".into(),
            action: action.into(),
            model: model.map(Into::into),
            quantity: Milli(qty),
            status,
            occurred_at: START + minute * 60_000_000,
            ingested_at: None,
        };
        let price = independent_price(&usage).unwrap_or(0);
        let entries = entry_credits(price, entries);
        (usage, entries)
    }
}

/// What an event should cost, priced here from the book's rates independently of the
/// engine, by section 3 of the contract: "Rate: the row of key (product, action, model) in
/// effect at `occurred_at`; if the event has a model and no such row is in effect, the row
/// of (product, action, no model)" and "credits = max(minimum, ceil(quantity / increment) ×
/// increment × credits_per_unit)". `None` when it has no rate. The rates' amounts are
/// whole thousandths, so no rounding is involved.
fn independent_price(usage: &UsageRow) -> Option<i64> {
    let q = usage.quantity.0;
    let whole_units = (q + 999) / 1000;
    match (&*usage.action, usage.model.as_deref()) {
        // 1.5 credits per unit, in whole 0.5 increments rounded up; "veo" has no rate of
        // its own and falls back to its action's.
        ("video", None | Some("veo")) => Some((q + 499) / 500 * 750),
        // 2.5 credits per unit, then 3 from 2026-11-16, whole units rounded up, at least 3
        // credits: the model's rate, not its action's.
        ("image", Some("flux")) => {
            let per_unit = if usage.occurred_at < START + 15 * DAY {
                2500
            } else {
                3000
            };
            Some((whole_units * per_unit).max(3000))
        }
        // 2 credits per unit, whole units rounded up.
        ("image", None) => Some(whole_units * 2000),
        _ => None,
    }
}

fn allocations(periods: usize) -> Vec<AllocationRow> {
    (0..periods)
        .map(|p| AllocationRow {
            at: at(),
            account_id: "a".into(),
            plan_id: "p".into(),
            period_start: START + p as i64 * 30 * DAY,
            period_end: START + (p as i64 + 1) * 30 * DAY,
            included_credits: Milli::from_units(50),
            billing_anchor: None,
            status: AllocationStatus::Active,
        })
        .collect()
}

/// Account "a"'s work as the window would place it: its events by period, in consumption
/// order, each with its entries.
fn work<'a>(
    allocations: &'a [AllocationRow],
    grants: &'a [GrantRow],
    events: Vec<Event>,
    dicts: &DictBuilder,
    ids: &'a mut (tally::dict::Ids, tally::dict::Ids),
) -> BucketWork<'a> {
    let mut by_period: Vec<Vec<(UsageRow, Vec<DebitRow>)>> = vec![Vec::new(); allocations.len()];
    let mut entry = 0;
    for (usage, recorded) in events {
        let p = ((usage.occurred_at - START) / (30 * DAY)) as usize;
        let entries = recorded
            .into_iter()
            .map(|(kind, credits)| {
                entry += 1;
                DebitRow {
                    at: at(),
                    entry_id: format!("d{entry:03}").into(),
                    account_id: "a".into(),
                    event_id: Some(usage.event_id.clone()),
                    kind,
                    credits,
                    recorded_at: usage.occurred_at,
                }
            })
            .collect();
        by_period[p].push((usage, entries));
    }
    let usage: Vec<UsageRow> = by_period.iter().flatten().map(|(u, _)| u.clone()).collect();
    let entries: Vec<DebitRow> = by_period
        .iter()
        .flatten()
        .flat_map(|(_, e)| e.clone())
        .collect();
    let counts: Vec<u32> = by_period
        .iter()
        .flatten()
        .map(|(_, e)| e.len() as u32)
        .collect();
    let (usage, usage_ids, entries, debit_ids) = compact_rows(&usage, &entries, dicts);
    *ids = (usage_ids, debit_ids);
    let (usage_ids, debit_ids) = (&ids.0, &ids.1);
    let mut first_entry = 0;
    let mut events: Vec<EventWork> = usage
        .iter()
        .zip(counts)
        .map(|(u, entry_count)| {
            let event = EventWork {
                usage: *u,
                first_entry,
                entry_count,
                late_from: NO_INSTANT,
            };
            first_entry += entry_count;
            event
        })
        .collect();
    let mut periods = Vec::new();
    let mut first = 0;
    for (allocation, rows) in allocations.iter().zip(&by_period) {
        let range = first..first + rows.len();
        sort_events(&mut events[range.clone()], usage_ids);
        periods.push(PeriodWork {
            allocation,
            events: range,
            unattached: 0..0,
        });
        first += rows.len();
    }
    BucketWork {
        accounts: vec![AccountWork {
            account: 0,
            periods,
            grants,
        }],
        events,
        entries,
        unattached: Vec::new(),
        usage_ids,
        debit_ids,
    }
}

/// Process account "a" in `mode`.
fn process(
    book: &PriceBook,
    mode: Mode,
    as_of: i64,
    periods: usize,
    grants: &[GrantRow],
    events: Vec<Event>,
) -> AccountResult {
    let builder = DictBuilder::new(["a"].into_iter());
    let allocations = allocations(periods);
    // The skus are made while the rows are made compact: the rates come after.
    let mut ids = Default::default();
    let group = work(&allocations, grants, events, &builder, &mut ids);
    let dicts = builder.freeze();
    let rates = RateTable::new(book, &dicts);
    let ctx = RunContext {
        book,
        rates: &rates,
        dicts: &dicts,
        mode,
        settle_from: as_of - SETTLE,
    };
    let mut mix = tally::breakdown::SkuMix::default();
    process_account(&ctx, &group, &group.accounts[0], &mut mix, None).unwrap()
}

/// Up to 40 events before `end_minute`.
fn events_strategy(end_minute: i64) -> impl Strategy<Value = Vec<Event>> {
    (0usize..40).prop_flat_map(move |n| {
        (0..n)
            .map(|i| event_strategy(i, end_minute))
            .collect::<Vec<_>>()
    })
}

/// A reconcile's as-of, in minutes from START: day 29 of the first period.
const RECONCILE_AS_OF_MINUTE: i64 = 29 * 1440;

/// Grants, events before the as-of of a reconcile of one period, and whether the plan
/// blocks overage.
fn reconcile_scenario() -> impl Strategy<Value = (Vec<GrantRow>, Vec<Event>, bool)> {
    let grants = (0usize..6).prop_flat_map(|n| (0..n).map(grant_strategy).collect::<Vec<_>>());
    (
        grants,
        events_strategy(RECONCILE_AS_OF_MINUTE),
        any::<bool>(),
    )
}

fn scenario() -> impl Strategy<Value = (usize, Vec<GrantRow>, Vec<Event>, bool, u8)> {
    (1usize..4).prop_flat_map(|periods| {
        let grants = (0usize..6).prop_flat_map(|n| (0..n).map(grant_strategy).collect::<Vec<_>>());
        let events = events_strategy(periods as i64 * 30 * 1440);
        (Just(periods), grants, events, any::<bool>(), 0u8..3)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn close_conserves_every_credit((periods, grants, events, block, cap) in scenario()) {
        let overage = if block { "\"block\"".to_string() } else { "{ price_per_credit = \"0.05\" }".to_string() };
        let book = book(&overage, ["0", "20", "1000"][cap as usize]);
        let as_of = START + periods as i64 * 30 * DAY;
        let granted_at_start: i64 = grants.iter().map(|g| g.credits.0).sum();
        // What each period's succeeded events cost, priced here independently of the
        // engine: no credit may be dropped or made before consumption either.
        let mut priced = vec![0i64; periods];
        for (usage, _) in events.iter().filter(|(u, _)| u.status == EventStatus::Succeeded) {
            let period = ((usage.occurred_at - START) / (30 * DAY)) as usize;
            priced[period] += independent_price(usage).unwrap_or(0);
        }
        let result = process(&book, Mode::Close, as_of, periods, &grants, events);
        prop_assert_eq!(result.invoices.len(), periods);
        prop_assert_eq!(result.renewals.len(), periods);
        let mut consumed_total = 0i64;
        for (p, (inv, ren)) in result.invoices.iter().zip(&result.renewals).enumerate() {
            prop_assert_eq!(inv.period_start, START + p as i64 * 30 * DAY);
            prop_assert_eq!(inv.credits_used.0, priced[p]);
            let from: i64 = inv.credits_from.iter().map(|m| m.0).sum();
            // credits used = consumed from grants + overage
            prop_assert_eq!(inv.credits_used.0, from + inv.overage_credits.0);
            // invoice total = sum of its lines
            let lines: i64 = result.invoice_lines.iter().filter(|l| *l.invoice_id == *inv.invoice_id).map(|l| l.credits.0).sum();
            prop_assert_eq!(lines, inv.credits_used.0);
            prop_assert_eq!(inv.total_minor, inv.plan_price_minor + inv.overage_amount_minor);
            if block { prop_assert_eq!(inv.overage_amount_minor, 0); }
            prop_assert!(ren.rollover_credits <= ren.plan_credits_unused);
            consumed_total += from;
        }
        // Chaining: what the account held (grants + every period's plan credits) is either
        // consumed, expired, or still held in grants_next (unconsumed grants + last rollover).
        let plan_total = 50_000 * periods as i64;
        let expired: i64 = result.renewals.iter().map(|r| r.expired_credits.0).sum();
        let rolled_not_last: i64 = result.renewals[..periods - 1].iter().map(|r| r.rollover_credits.0).sum();
        let next: i64 = result.grants_next.iter().map(|g| g.credits.0).sum();
        // Grants that never overlapped a closed period and are dropped (expired before) are
        // the only credits that leave without being counted as expired by a renewal.
        let end = START + periods as i64 * 30 * DAY;
        let untouched_dead: i64 = grants.iter().filter(|g| {
            let overlaps = (0..periods).any(|p| {
                let (s, e) = (START + p as i64 * 30 * DAY, START + (p as i64 + 1) * 30 * DAY);
                g.effective_at < e && g.expires_at.is_none_or(|x| x > s)
            });
            !overlaps && g.expires_at.is_some_and(|x| x <= end)
        }).map(|g| g.credits.0).sum();
        prop_assert_eq!(
            granted_at_start + plan_total,
            consumed_total + expired + rolled_not_last + next + untouched_dead
        );
    }

    #[test]
    fn reconcile_balances_conserve(( _periods, grants, events, block, _cap) in scenario()) {
        let overage = if block { "\"block\"".to_string() } else { "{ price_per_credit = \"0.05\" }".to_string() };
        let book = book(&overage, "0");
        let as_of = START + 29 * DAY;
        let events: Vec<_> = events.into_iter().filter(|(u, _)| u.occurred_at < as_of).collect();
        let result = process(&book, Mode::Reconcile, as_of, 1, &grants, events);
        prop_assert_eq!(result.balances.len(), 1);
        let b = &result.balances[0];
        for k in 0..5 { prop_assert!(b.used[k] <= b.granted[k]); }
        let t = &result.totals;
        prop_assert_eq!(t.granted_credits.0, t.consumed_credits.0 + t.remaining_credits.0);
        let over_limit = result.discrepancies.iter().filter(|d| d.kind.name() == "over_limit_usage").count();
        if !block || t.overage_credits.0 == 0 { prop_assert_eq!(over_limit, 0); } else { prop_assert!(over_limit > 0); }
    }

    #[test]
    fn reconcile_reports_each_event_as_the_contract_says((grants, events, block) in reconcile_scenario()) {
        let overage = if block { "\"block\"".to_string() } else { "{ price_per_credit = \"0.05\" }".to_string() };
        let book = book(&overage, "0");
        let as_of = START + RECONCILE_AS_OF_MINUTE * 60_000_000;
        let settle_from = as_of - SETTLE;
        // Section 5's table, first kind that applies (one account: no account_mismatch),
        // read here independently of the engine; pending events are not reported.
        let mut wanted: Vec<(String, &str)> = Vec::new();
        let (mut expected_total, mut recorded_total) = (0i64, 0i64);
        for (usage, entries) in &events {
            let succeeded = usage.status == EventStatus::Succeeded;
            let price = independent_price(usage);
            let expected = if succeeded { price } else { Some(0) };
            let net: i64 = entries.iter().map(|&(kind, c)| if kind == EntryKind::Refund { -c.0 } else { c.0 }).sum();
            // "An event-linked `adjustment` counts as a debit in the "≥ 2 debit entries" test."
            let debits = entries.iter().filter(|(kind, _)| *kind != EntryKind::Refund).count();
            // "Pending: expected > 0, no entries recorded before as-of, and as-of − settle ≤
            // occurred_at < as-of." (Every entry here is recorded before as-of.)
            let pending = expected.is_some_and(|e| e > 0) && entries.is_empty() && usage.occurred_at >= settle_from;
            let kind = if succeeded && price.is_none() {
                Some("unpriced_event")
            } else if !succeeded && net > 0 {
                Some("charged_failed_event")
            } else if pending {
                None
            } else if expected.unwrap() > 0 && entries.is_empty() {
                Some("missing_debit")
            } else if debits >= 2 && net > expected.unwrap() {
                Some("duplicate_debit")
            } else if net != expected.unwrap() {
                Some("amount_mismatch")
            } else {
                None
            };
            if let Some(kind) = kind {
                wanted.push((usage.event_id.to_string(), kind));
            }
            expected_total += expected.unwrap_or(0);
            recorded_total += net;
        }
        wanted.sort();
        let result = process(&book, Mode::Reconcile, as_of, 1, &grants, events);
        let mut reported: Vec<(String, &str)> = result
            .discrepancies
            .iter()
            .filter(|d| d.kind.name() != "over_limit_usage")
            .map(|d| (d.event_id.as_deref().unwrap_or_default().to_string(), d.kind.name()))
            .collect();
        reported.sort();
        prop_assert_eq!(reported, wanted);
        prop_assert_eq!(result.totals.expected_credits.0, expected_total);
        prop_assert_eq!(result.totals.recorded_credits.0, recorded_total);
    }
}
