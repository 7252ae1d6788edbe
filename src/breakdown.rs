//! The figures `report.html` needs that the run's tables do not hold, collected cheaply:
//! credits by product/action/model over the events in the window (a small map, folded per
//! account-period, per account, per group and per shard — never per event), and the
//! accounts with the most unreconciled credits (recorded − expected, from each account's
//! totals). Memory is bounded by [`MAX_MIX_LINES`] and [`TOP_ACCOUNTS`], whatever the run's
//! size.

use crate::amount::Milli;
use crate::dict::Dicts;
use crate::engine::AccountResult;
use crate::error::{Result, TallyError};
use crate::model::{Shared, Usage};
use crate::price::Price;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The most (product, action, model) lines kept. Past it the model is dropped from the key
/// (one line per product/action), and past it again everything is one line. Which of the
/// three forms a run ends in depends only on how many distinct keys the run has, never on
/// the order accounts, groups or shards are folded in, so outputs stay byte-identical.
pub const MAX_MIX_LINES: usize = 10_000;

/// How many accounts the report ranks by unreconciled credits.
pub const TOP_ACCOUNTS: usize = 20;

/// What the events of one (product, action, model) line add up to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixFigures {
    /// Events in the window, any status.
    pub events: u64,
    /// `succeeded` events with a rate (the ones that cost credits, possibly 0).
    pub priced_events: u64,
    /// Σ quantity of the priced events (in the rate's unit).
    pub quantity: QuantitySum,
    /// Σ expected credits (= Σ over priced events; other events expect 0).
    pub expected_credits: Milli,
    /// Σ net recorded on these events (entries attached to them), any status.
    pub recorded_credits: Milli,
    /// The units of the rates that priced these events, as [`crate::price::unit_bit`]s:
    /// a line's quantity is in these (several when rate versions changed unit).
    pub units: u64,
}

/// A sum of event quantities in thousandths, for the report's CSV files (text, not a
/// DECIMAL(18,3) column): it has no output limit, so that two valid events of 6 × 10^14
/// seconds do not stop a run. 128 bits cannot overflow: each quantity is below 10^18
/// thousandths and a run has fewer than 2^64 events (below 2 × 10^37 in all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantitySum(i128);

impl QuantitySum {
    pub fn of(quantity: Milli) -> QuantitySum {
        QuantitySum(i128::from(quantity.0))
    }

    /// Checked all the same: a shard's `partial.bin` could hold any value.
    fn plus(self, other: QuantitySum) -> Result<QuantitySum> {
        self.0.checked_add(other.0).map(QuantitySum).ok_or_else(|| {
            TallyError::Invariant(format!(
                "quantities {self} + {other} are past what a quantity sum holds"
            ))
        })
    }
}

/// As [`Milli`] writes amounts: three decimals (`1200000000000000.000`).
impl std::fmt::Display for QuantitySum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:03}", abs / 1000, abs % 1000)
    }
}

impl MixFigures {
    /// Whether these figures could come from their events: priced events among them, each
    /// a quantity below 10^18 thousandths. The engine's always can; a line decoded from a
    /// shard's `partial.bin` is checked before it is added up.
    pub fn is_possible(&self) -> bool {
        let most = u128::from(self.priced_events) * crate::amount::OUTPUT_LIMIT_MILLIS as u128;
        self.priced_events <= self.events && self.quantity.0.unsigned_abs() <= most
    }

    pub fn add(&mut self, o: &MixFigures) -> Result<()> {
        self.events = TallyError::count_sum(self.events, o.events, "events")?;
        self.priced_events =
            TallyError::count_sum(self.priced_events, o.priced_events, "priced events")?;
        self.quantity = self.quantity.plus(o.quantity)?;
        self.expected_credits = self.expected_credits.checked_add(o.expected_credits)?;
        self.recorded_credits = self.recorded_credits.checked_add(o.recorded_credits)?;
        self.units |= o.units;
        Ok(())
    }
}

/// (product, action, model is null, model): ordered by product, action, then model with a
/// null model last, comparing bytes — the order of `invoice_lines`. The strings are the
/// run's shared ones: a key costs no string allocation.
pub type MixKey = (Shared, Shared, bool, Option<Shared>);

/// Credits by sku over a bucket's events: the engine adds every event of the window here
/// (a sku is a run's (product, action, model) code), and the bucket's lines become string
/// keys once, in [`SkuMix::finish`].
#[derive(Default)]
pub struct SkuMix {
    lines: rustc_hash::FxHashMap<u32, MixFigures>,
}

impl SkuMix {
    /// Count one event of the window (`unit_bit`: its rate's unit, as
    /// [`crate::price::RateTable::price_and_unit`] gives it).
    pub fn add(&mut self, u: &Usage, price: Price, recorded: Milli, unit_bit: u64) -> Result<()> {
        let mut one = MixFigures {
            events: 1,
            recorded_credits: recorded,
            ..MixFigures::default()
        };
        if let Price::Charged(credits) = price {
            one.priced_events = 1;
            one.quantity = QuantitySum::of(u.quantity());
            one.expected_credits = credits;
            one.units = unit_bit;
        }
        self.lines.entry(u.sku).or_default().add(&one)
    }

    /// The lines by (product, action, model), bounded like every [`Mix`].
    pub fn finish(self, dicts: &Dicts) -> Result<Mix> {
        let mut mix = Mix::default();
        for (sku, figures) in self.lines {
            let model = dicts.model(sku).cloned();
            let key = (
                dicts.product(sku).clone(),
                dicts.action(sku).clone(),
                model.is_none(),
                model,
            );
            mix.add_line(key, &figures)?;
        }
        Ok(mix)
    }
}

/// Credits by (product, action, model), bounded to [`MAX_MIX_LINES`] lines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix {
    /// 0: by product, action and model; 1: models merged; 2: one line for everything.
    pub level: u8,
    pub lines: BTreeMap<MixKey, MixFigures>,
}

/// The key of a line at a level of detail.
fn coarsen(key: MixKey, level: u8) -> MixKey {
    match level {
        0 => key,
        1 => (key.0, key.1, true, None),
        _ => (Shared::from(""), Shared::from(""), true, None),
    }
}

impl Mix {
    pub fn add_line(&mut self, key: MixKey, figures: &MixFigures) -> Result<()> {
        let key = coarsen(key, self.level);
        self.lines.entry(key).or_default().add(figures)?;
        while self.lines.len() > MAX_MIX_LINES && self.level < 2 {
            self.coarsen_to(self.level + 1)?;
        }
        Ok(())
    }

    fn coarsen_to(&mut self, level: u8) -> Result<()> {
        self.level = level;
        let old = std::mem::take(&mut self.lines);
        for (key, figures) in old {
            self.lines
                .entry(coarsen(key, level))
                .or_default()
                .add(&figures)?;
        }
        Ok(())
    }

    /// Fold another account's, group's or shard's lines into these.
    pub fn merge(&mut self, other: Mix) -> Result<()> {
        if other.level > self.level {
            self.coarsen_to(other.level)?;
        }
        for (key, figures) in other.lines {
            self.add_line(key, &figures)?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// One account's reconciliation figures over the run's window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountFigures {
    pub account_id: String,
    pub events_in_window: u64,
    pub expected_credits: Milli,
    pub recorded_credits: Milli,
    /// recorded − expected (at close, Σ of the account's invoices' `unreconciled_credits`).
    pub unreconciled_credits: Milli,
    pub discrepancy_rows: u64,
}

/// What the report adds to a run's outputs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Breakdown {
    pub mix: Mix,
    /// The [`TOP_ACCOUNTS`] accounts with the largest |unreconciled credits| (then account
    /// id, bytes); accounts with 0 are never listed.
    pub top_accounts: Vec<AccountFigures>,
    /// Accounts processed in the run.
    pub accounts: u64,
    /// Accounts whose unreconciled credits are not 0.
    pub unreconciled_accounts: u64,
}

/// Rank accounts by |recorded − expected| (largest first, then account id bytes), keeping
/// the first [`TOP_ACCOUNTS`] with a non-zero figure.
pub fn top_accounts(results: &[(Shared, AccountResult)]) -> Result<(Vec<AccountFigures>, u64)> {
    let mut ranked: Vec<(u64, &str, &AccountResult, Milli)> = Vec::new();
    let mut unreconciled_accounts = 0u64;
    for (id, r) in results {
        let t = &r.totals;
        let unreconciled = t
            .recorded_credits
            .checked_sub(t.expected_credits)
            .map_err(|e| {
                e.sum_of(
                    || format!("account \"{id}\" over the run's periods"),
                    "check its usage quantities and ledger credits, then rerun",
                )
            })?;
        if unreconciled == Milli::ZERO {
            continue;
        }
        unreconciled_accounts += 1;
        ranked.push((unreconciled.0.unsigned_abs(), &**id, r, unreconciled));
        if ranked.len() > 4 * TOP_ACCOUNTS {
            keep_top(&mut ranked);
        }
    }
    keep_top(&mut ranked);
    let top = ranked
        .into_iter()
        .map(|(_, id, r, unreconciled)| AccountFigures {
            account_id: id.to_string(),
            events_in_window: r.totals.events_in_window,
            expected_credits: r.totals.expected_credits,
            recorded_credits: r.totals.recorded_credits,
            unreconciled_credits: unreconciled,
            discrepancy_rows: r.discrepancies.len() as u64,
        })
        .collect();
    Ok((top, unreconciled_accounts))
}

fn keep_top<T>(ranked: &mut Vec<(u64, &str, T, Milli)>) {
    ranked.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.1.as_bytes().cmp(b.1.as_bytes()))
    });
    ranked.truncate(TOP_ACCOUNTS);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str, a: &str, m: Option<&str>) -> MixKey {
        (p.into(), a.into(), m.is_none(), m.map(Shared::from))
    }

    /// Quantities past what an output amount holds still add up (the report's CSV is
    /// text): a run of two valid events of 6 × 10^14 seconds each is not stopped.
    #[test]
    fn quantities_add_past_the_output_limit() {
        let big = MixFigures {
            events: 1,
            priced_events: 1,
            quantity: QuantitySum::of(Milli(600_000_000_000_000_000)),
            ..MixFigures::default()
        };
        let mut sum = big;
        sum.add(&big).unwrap();
        assert_eq!(sum.quantity.to_string(), "1200000000000000.000");
        let most = QuantitySum::of(Milli(-999_999_999_999_999_999));
        assert_eq!(most.to_string(), "-999999999999999.999");
        assert_eq!(QuantitySum::of(Milli(5)).to_string(), "0.005");
    }

    /// A line's figures are possible when its priced events are among its events and its
    /// quantity is at most each of them at the largest quantity, either sign; one past
    /// either is not (a forged shard's line), also at the ends of i128, and adding up past
    /// them is an error, never a panic.
    #[test]
    fn a_lines_figures_are_possible_up_to_its_events_and_one_past_is_not() {
        use crate::amount::OUTPUT_LIMIT_MILLIS as LIMIT;
        let line = |events: u64, priced_events: u64, quantity: i128| MixFigures {
            events,
            priced_events,
            quantity: QuantitySum(quantity),
            ..MixFigures::default()
        };
        let most = 3 * i128::from(LIMIT);
        assert!(line(3, 3, most).is_possible());
        assert!(line(3, 3, -most).is_possible());
        assert!(line(0, 0, 0).is_possible());
        for impossible in [
            line(3, 3, most + 1),
            line(3, 3, -most - 1),
            line(2, 3, 0),
            line(3, 3, i128::MIN),
            line(3, 3, i128::MAX),
        ] {
            assert!(!impossible.is_possible(), "{impossible:?}");
        }
        let mut sum = line(1, 1, i128::MAX);
        assert!(sum.add(&line(1, 1, 1)).is_err());
        let mut sum = line(u64::MAX, 0, 0);
        assert!(sum.add(&line(1, 0, 0)).is_err());
    }

    fn one(credits: i64) -> MixFigures {
        MixFigures {
            events: 1,
            priced_events: 1,
            quantity: QuantitySum::of(Milli(1000)),
            expected_credits: Milli(credits),
            recorded_credits: Milli(credits),
            units: 1 << (credits.unsigned_abs() % 3),
        }
    }

    #[test]
    fn top_accounts_rank_by_absolute_unreconciled_credits_then_id() {
        let account = |id: &str, expected: i64, recorded: i64| {
            let mut r = AccountResult::default();
            r.totals.expected_credits = Milli(expected);
            r.totals.recorded_credits = Milli(recorded);
            (Shared::from(id), r)
        };
        let mut results = vec![
            account("b", 100, 100),
            account("c", 100, 40),
            account("a", 10, 70),
            account("d", 0, 5),
        ];
        for i in 0..30 {
            results.push(account(&format!("z{i:02}"), 0, 1));
        }
        let (top, unreconciled) = top_accounts(&results).unwrap();
        assert_eq!(unreconciled, 33);
        assert_eq!(top.len(), TOP_ACCOUNTS);
        let ids: Vec<&str> = top.iter().take(5).map(|a| a.account_id.as_str()).collect();
        // |60| ties: "a" before "c"; "b" (0) is never listed.
        assert_eq!(ids, ["a", "c", "d", "z00", "z01"]);
        assert_eq!(top[0].unreconciled_credits, Milli(60));
        assert_eq!(top[1].unreconciled_credits, Milli(-60));
        assert_eq!(top[19].account_id, "z16");
    }

    /// `TOP_ACCOUNTS` unreconciled accounts are all listed; one more drops the smallest;
    /// past the pruning bound (4 × `TOP_ACCOUNTS` ranked at once) the largest are still
    /// the ones kept, whatever their place in the results.
    #[test]
    fn top_accounts_list_up_to_the_limit_and_drop_the_smallest_past_it() {
        let account = |i: usize| {
            let mut r = AccountResult::default();
            r.totals.recorded_credits = Milli(i as i64 + 1);
            (Shared::from(format!("acct-{i:03}")), r)
        };
        let listed = |n: usize| {
            let results: Vec<_> = (0..n).map(account).collect();
            let (top, unreconciled) = top_accounts(&results).unwrap();
            assert_eq!(unreconciled, n as u64);
            let ids: Vec<String> = top.into_iter().map(|a| a.account_id).collect();
            ids
        };
        let most = TOP_ACCOUNTS;
        let all = listed(most);
        assert_eq!(all.len(), most);
        assert_eq!(
            (all[0].as_str(), all[most - 1].as_str()),
            ("acct-019", "acct-000")
        );
        let past = listed(most + 1);
        assert_eq!(past.len(), most);
        assert_eq!(
            (past[0].as_str(), past[most - 1].as_str()),
            ("acct-020", "acct-001")
        );
        for n in [4 * most, 4 * most + 1, 4 * most + 2, 10 * most] {
            let top = listed(n);
            let expected: Vec<String> = (n - most..n)
                .rev()
                .map(|i| account(i).0.to_string())
                .collect();
            assert_eq!(top, expected, "{n} accounts");
        }
    }

    #[test]
    fn lines_sort_by_product_action_then_null_model_last() {
        let mut mix = Mix::default();
        mix.add_line(key("b", "x", None), &one(1)).unwrap();
        mix.add_line(key("a", "y", Some("m")), &one(1)).unwrap();
        mix.add_line(key("a", "y", None), &one(1)).unwrap();
        mix.add_line(key("a", "y", Some("l")), &one(1)).unwrap();
        let keys: Vec<_> = mix.lines.keys().cloned().collect();
        assert_eq!(
            keys,
            vec![
                key("a", "y", Some("l")),
                key("a", "y", Some("m")),
                key("a", "y", None),
                key("b", "x", None)
            ]
        );
    }

    #[test]
    fn too_many_lines_coarsen_the_same_way_in_any_merge_order() {
        let lines: Vec<MixKey> = (0..MAX_MIX_LINES + 5)
            .map(|i| key(&format!("p{}", i % 3), "act", Some(&format!("m{i}"))))
            .collect();
        // Each line's figures (and its rate's unit) from its place in the list.
        let figures = |i: usize| one(i as i64 % 4 + 1);
        let mut forward = Mix::default();
        for (i, k) in lines.iter().enumerate() {
            forward.add_line(k.clone(), &figures(i)).unwrap();
        }
        // Two halves folded separately, then merged the other way round.
        let half = lines.len() / 2;
        let mut left = Mix::default();
        let mut right = Mix::default();
        for (i, k) in lines.iter().enumerate().take(half) {
            left.add_line(k.clone(), &figures(i)).unwrap();
        }
        for (i, k) in lines.iter().enumerate().skip(half).rev() {
            right.add_line(k.clone(), &figures(i)).unwrap();
        }
        right.merge(left).unwrap();
        assert_eq!(forward, right);
        assert_eq!(forward.level, 1);
        assert_eq!(forward.lines.len(), 3);
        let total: u64 = forward.lines.values().map(|f| f.events).sum();
        assert_eq!(total, lines.len() as u64);
        // A merged line is in every unit its models' events were priced in.
        assert!(forward.lines.values().all(|f| f.units == 0b111));
    }

    /// `MAX_MIX_LINES` lines are kept as they are; one more drops the model (one line per
    /// product/action); `MAX_MIX_LINES` product/actions are kept so, and one more makes
    /// everything one line. Events are never lost on the way.
    #[test]
    fn the_mix_keeps_its_line_limit_and_coarsens_one_past_it() {
        let models = |n: usize| -> Vec<MixKey> {
            (0..n)
                .map(|i| key(&format!("p{}", i % 2), "act", Some(&format!("m{i}"))))
                .collect()
        };
        // Two models each: past the limit as models from 5,001 product/actions on.
        let actions = |n: usize| -> Vec<MixKey> {
            (0..2 * n)
                .map(|i| key("p", &format!("a{}", i / 2), Some(&format!("m{}", i % 2))))
                .collect()
        };
        let mix_of = |keys: Vec<MixKey>| {
            let mut mix = Mix::default();
            for k in keys {
                mix.add_line(k, &one(1)).unwrap();
            }
            let events: u64 = mix.lines.values().map(|f| f.events).sum();
            (mix.level, mix.lines.len(), events)
        };
        let most = MAX_MIX_LINES;
        assert_eq!(mix_of(models(most)), (0, most, most as u64));
        assert_eq!(mix_of(models(most + 1)), (1, 2, most as u64 + 1));
        assert_eq!(mix_of(actions(most)), (1, most, 2 * most as u64));
        assert_eq!(mix_of(actions(most + 1)), (2, 1, 2 * (most as u64 + 1)));
    }
}
