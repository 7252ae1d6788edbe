//! Property tests: for random grants and usage, no credit is created or lost.

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

prop_compose! {
    fn event_strategy(i: usize, periods: usize)(minute in 0i64..(periods as i64 * 30 * 1440), qty in 0i64..20_000,
        status in 0u8..10, entry in 0i64..30_000)
        -> (UsageRow, Milli) {
        let status = match status { 0 => EventStatus::Failed, 1 => EventStatus::Cancelled, _ => EventStatus::Succeeded };
        (UsageRow {
            at: at(),
            event_id: format!("e{i:03}").into(),
            account_id: "a".into(),
            product: "studio".into(),
            action: "video".into(),
            model: None,
            quantity: Milli(qty),
            status,
            occurred_at: START + minute * 60_000_000,
            ingested_at: None,
        }, Milli(entry))
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
/// order, each with one debit of `recorded` credits.
fn work<'a>(
    allocations: &'a [AllocationRow],
    grants: &'a [GrantRow],
    events: Vec<(UsageRow, Milli)>,
    dicts: &DictBuilder,
    ids: &'a mut (tally::dict::Ids, tally::dict::Ids),
) -> BucketWork<'a> {
    let mut by_period: Vec<Vec<(UsageRow, DebitRow)>> = vec![Vec::new(); allocations.len()];
    for (i, (usage, recorded)) in events.into_iter().enumerate() {
        let p = ((usage.occurred_at - START) / (30 * DAY)) as usize;
        let entry = DebitRow {
            at: at(),
            entry_id: format!("d{i:03}").into(),
            account_id: "a".into(),
            event_id: Some(usage.event_id.clone()),
            kind: EntryKind::Debit,
            credits: recorded,
            recorded_at: usage.occurred_at,
        };
        by_period[p].push((usage, entry));
    }
    let (usage, entries): (Vec<UsageRow>, Vec<DebitRow>) =
        by_period.iter().flatten().cloned().unzip();
    let (usage, usage_ids, entries, debit_ids) = compact_rows(&usage, &entries, dicts);
    *ids = (usage_ids, debit_ids);
    let (usage_ids, debit_ids) = (&ids.0, &ids.1);
    let mut events: Vec<EventWork> = usage
        .iter()
        .enumerate()
        .map(|(i, u)| EventWork {
            usage: *u,
            first_entry: i as u32,
            entry_count: 1,
            late_from: NO_INSTANT,
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
    events: Vec<(UsageRow, Milli)>,
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
        settle_from: as_of - 900_000_000,
    };
    let mut mix = tally::breakdown::SkuMix::default();
    process_account(&ctx, &group, &group.accounts[0], &mut mix, None).unwrap()
}

fn scenario() -> impl Strategy<Value = (usize, Vec<GrantRow>, Vec<(UsageRow, Milli)>, bool, u8)> {
    (1usize..4).prop_flat_map(|periods| {
        let grants = (0usize..6).prop_flat_map(|n| (0..n).map(grant_strategy).collect::<Vec<_>>());
        let events = (0usize..40).prop_flat_map(move |n| {
            (0..n)
                .map(|i| event_strategy(i, periods))
                .collect::<Vec<_>>()
        });
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
        // What each period's succeeded events cost, priced here by the book's one rate (1.5
        // credits per unit in whole 0.5 increments, rounded up), independently of the
        // engine: no credit may be dropped or made before consumption either.
        let mut priced = vec![0i64; periods];
        for (usage, _) in events.iter().filter(|(u, _)| u.status == EventStatus::Succeeded) {
            let period = ((usage.occurred_at - START) / (30 * DAY)) as usize;
            let increments = (usage.quantity.0 + 499) / 500;
            priced[period] += increments * 500 * 3 / 2;
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
}
