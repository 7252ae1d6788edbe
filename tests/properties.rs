//! Property tests: for random grants and usage, no credit is created or lost.

use proptest::prelude::*;
use tally::amount::Milli;
use tally::engine::{process_account, RunContext};
use tally::model::*;
use tally::pricebook::PriceBook;
use tally::window::{AccountWork, EventWork, PeriodWork};

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

fn work(periods: usize, grants: Vec<GrantRow>, events: Vec<(UsageRow, Milli)>) -> AccountWork {
    let mut ps: Vec<PeriodWork> = (0..periods)
        .map(|p| PeriodWork {
            allocation: AllocationRow {
                at: at(),
                account_id: "a".into(),
                plan_id: "p".into(),
                period_start: START + p as i64 * 30 * DAY,
                period_end: START + (p as i64 + 1) * 30 * DAY,
                included_credits: Milli::from_units(50),
                billing_anchor: None,
                status: AllocationStatus::Active,
            },
            events: Vec::new(),
            unattached: Vec::new(),
        })
        .collect();
    for (i, (usage, recorded)) in events.into_iter().enumerate() {
        let p = ((usage.occurred_at - START) / (30 * DAY)) as usize;
        let entries = smallvec::smallvec![DebitRow {
            at: at(),
            entry_id: format!("d{i:03}").into(),
            account_id: "a".into(),
            event_id: Some(usage.event_id.clone()),
            kind: EntryKind::Debit,
            credits: recorded,
            recorded_at: usage.occurred_at,
        }];
        ps[p].events.push(EventWork {
            usage,
            entries,
            conflicting: false,
            late_from: None,
        });
    }
    AccountWork {
        account_id: "a".into(),
        periods: ps,
        grants,
    }
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
        let ctx = RunContext { book: &book, mode: Mode::Close, settle_from: as_of - 900_000_000 };
        let granted_at_start: i64 = grants.iter().map(|g| g.credits.0).sum();
        let result = process_account(&ctx, work(periods, grants.clone(), events)).unwrap();
        prop_assert_eq!(result.invoices.len(), periods);
        prop_assert_eq!(result.renewals.len(), periods);
        let mut consumed_total = 0i64;
        for (inv, ren) in result.invoices.iter().zip(&result.renewals) {
            let from: i64 = inv.credits_from.iter().map(|m| m.0).sum();
            // credits used = consumed from grants + overage
            prop_assert_eq!(inv.credits_used.0, from + inv.overage_credits.0);
            // invoice total = sum of its lines
            let lines: i64 = result.invoice_lines.iter().filter(|l| l.invoice_id == inv.invoice_id).map(|l| l.credits.0).sum();
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
        let ctx = RunContext { book: &book, mode: Mode::Reconcile, settle_from: as_of - 900_000_000 };
        let events: Vec<_> = events.into_iter().filter(|(u, _)| u.occurred_at < as_of).collect();
        let result = process_account(&ctx, work(1, grants, events)).unwrap();
        prop_assert_eq!(result.balances.len(), 1);
        let b = &result.balances[0];
        for k in 0..5 { prop_assert!(b.used[k] <= b.granted[k]); }
        let t = &result.totals;
        prop_assert_eq!(t.granted_credits.0, t.consumed_credits.0 + t.remaining_credits.0);
        let over_limit = result.discrepancies.iter().filter(|d| d.kind.name() == "over_limit_usage").count();
        if !block || t.overage_credits.0 == 0 { prop_assert_eq!(over_limit, 0); } else { prop_assert!(over_limit > 0); }
    }
}
