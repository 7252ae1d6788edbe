//! Stage 3: price every event from the rate card (contract section 3), exactly.

use crate::amount::Milli;
use crate::error::{Result, TallyError};
use crate::model::{EventStatus, Usage, UsageRow};
use crate::pricebook::{PriceBook, Rate};
use rust_decimal::{Decimal, RoundingStrategy};

/// What an event should have cost.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Price {
    /// `failed` or `cancelled`: costs 0.
    NotChargeable,
    /// `succeeded` but no rate is in effect: unpriced, consumes nothing.
    Unpriced,
    /// `succeeded` and priced (possibly 0 credits).
    Charged(Milli),
}

impl Price {
    /// The expected credits (`None` for an unpriced event).
    pub fn expected(self) -> Option<Milli> {
        match self {
            Price::NotChargeable => Some(Milli::ZERO),
            Price::Unpriced => None,
            Price::Charged(c) => Some(c),
        }
    }
}

/// The price book's rates by the skus of a run (a sku is a (product, action, model) of
/// the run's dictionaries): an event's rate is found by its sku code, not by hashing its
/// strings, and each rate carries its formula in integers.
pub struct RateTable {
    by_sku: Vec<SkuRates>,
}

#[derive(Default)]
struct SkuRates {
    /// The model's own versions (none without a model or without rows for it).
    by_model: Vec<Version>,
    generic: Vec<Version>,
}

/// A rate version and its formula in integers.
struct Version {
    rate: Rate,
    fast: Option<IntegerRate>,
}

impl Version {
    fn of(rate: &Rate) -> Version {
        Version {
            rate: rate.clone(),
            fast: IntegerRate::of(rate),
        }
    }
}

impl RateTable {
    pub fn new(book: &PriceBook, dicts: &crate::dict::Dicts) -> RateTable {
        let by_sku = (0..dicts.skus.len() as u32)
            .map(|sku| {
                let (by_model, generic) = book.versions(
                    dicts.product(sku),
                    dicts.action(sku),
                    dicts.model(sku).map(|m| &**m),
                );
                SkuRates {
                    by_model: by_model
                        .unwrap_or_default()
                        .iter()
                        .map(Version::of)
                        .collect(),
                    generic: generic.iter().map(Version::of).collect(),
                }
            })
            .collect();
        RateTable { by_sku }
    }

    /// What an event should have cost (the contract's section 3, as [`price_event`]).
    pub fn price(&self, event: &Usage, ids: &crate::dict::Ids) -> Result<Price> {
        if event.status() != EventStatus::Succeeded {
            return Ok(Price::NotChargeable);
        }
        let rates = &self.by_sku[event.sku as usize];
        let t = event.occurred_at;
        let version = version_at(&rates.by_model, t).or_else(|| version_at(&rates.generic, t));
        let Some(version) = version else {
            return Ok(Price::Unpriced);
        };
        let quantity = event.quantity();
        let credits = match &version.fast {
            Some(fast) => fast.credits(quantity),
            None => None,
        };
        credits
            .or_else(|| credits_for(&version.rate, quantity))
            .map(Price::Charged)
            .ok_or_else(|| {
                TallyError::Overflow(format!(
                    "pricing event \"{}\" (quantity {quantity}) exceeds the credit range",
                    String::from_utf8_lossy(ids.bytes(event.id))
                ))
            })
    }
}

/// The version in effect at `t`: the greatest `effective_from` ≤ t.
fn version_at(versions: &[Version], t: crate::time::Micros) -> Option<&Version> {
    let after = versions.partition_point(|v| v.rate.effective_from <= t);
    after.checked_sub(1).map(|i| &versions[i])
}

/// A rate's formula in integers: credits = max(minimum, ceil(q / increment) × increment ×
/// credits_per_unit), rounded half-even to thousandths, with each decimal as (mantissa,
/// scale). It is used only where `Decimal` is exact too (every value below 2^96, scales
/// at most 28), so the two always agree; elsewhere `credits_for` decides.
#[derive(Clone, Copy, Debug)]
struct IntegerRate {
    increment: i128,
    increment_scale: u32,
    per_unit: i128,
    /// Scale of increment × credits_per_unit.
    raw_scale: u32,
    minimum: i128,
    minimum_scale: u32,
}

/// `Decimal` holds mantissas below 2^96.
const DECIMAL_LIMIT: i128 = 1 << 96;

impl IntegerRate {
    fn of(rate: &Rate) -> Option<IntegerRate> {
        let raw_scale = rate.increment.scale() + rate.credits_per_unit.scale();
        (raw_scale <= 28 && rate.increment.mantissa() > 0).then_some(IntegerRate {
            increment: rate.increment.mantissa(),
            increment_scale: rate.increment.scale(),
            per_unit: rate.credits_per_unit.mantissa(),
            raw_scale,
            minimum: rate.minimum.mantissa(),
            minimum_scale: rate.minimum.scale(),
        })
    }

    /// The credits for `quantity`, or `None` where the integer form does not apply.
    fn credits(&self, quantity: Milli) -> Option<Milli> {
        let small = |v: i128| (v.abs() < DECIMAL_LIMIT).then_some(v);
        // ceil(q / increment) = ceil(q × 10^s / (m × 10^3)) for q in thousandths.
        let numerator =
            i128::from(quantity.0).checked_mul(10i128.checked_pow(self.increment_scale)?)?;
        let denominator = self.increment.checked_mul(1_000)?;
        let increments = small(
            numerator.div_euclid(denominator) + i128::from(numerator.rem_euclid(denominator) != 0),
        )?;
        let billed = small(increments.checked_mul(self.increment)?)?;
        let raw = small(billed.checked_mul(self.per_unit)?)?;
        // max(minimum, raw) at the larger of the two scales.
        let scale = self.raw_scale.max(self.minimum_scale);
        let raw = raw.checked_mul(10i128.checked_pow(scale - self.raw_scale)?)?;
        let minimum = self
            .minimum
            .checked_mul(10i128.checked_pow(scale - self.minimum_scale)?)?;
        let charged = raw.max(minimum);
        let millis = if scale <= 3 {
            charged.checked_mul(10i128.pow(3 - scale))?
        } else {
            round_half_even(charged, 10i128.checked_pow(scale - 3)?)
        };
        (millis.abs() < crate::amount::INPUT_LIMIT_MILLIS)
            .then_some(Milli(i64::try_from(millis).ok()?))
    }
}

/// `value / divisor` rounded half to even (`divisor` > 0).
fn round_half_even(value: i128, divisor: i128) -> i128 {
    let quotient = value.div_euclid(divisor);
    let remainder = value.rem_euclid(divisor);
    match (2 * remainder).cmp(&divisor) {
        std::cmp::Ordering::Less => quotient,
        std::cmp::Ordering::Greater => quotient + 1,
        std::cmp::Ordering::Equal => quotient + (quotient & 1),
    }
}

pub fn price_event(book: &PriceBook, event: &UsageRow) -> Result<Price> {
    if event.status != EventStatus::Succeeded {
        return Ok(Price::NotChargeable);
    }
    match book.lookup(
        &event.product,
        &event.action,
        event.model.as_deref(),
        event.occurred_at,
    ) {
        None => Ok(Price::Unpriced),
        Some(rate) => credits_for(rate, event.quantity)
            .map(Price::Charged)
            .ok_or_else(|| {
                TallyError::Overflow(format!(
                    "pricing event \"{}\" (quantity {}) exceeds the credit range",
                    event.event_id, event.quantity
                ))
            }),
    }
}

/// credits = max(minimum, ceil(quantity / increment) × increment × credits_per_unit),
/// rounded half-even to 0.001. `None` on overflow.
pub fn credits_for(rate: &Rate, quantity: Milli) -> Option<Milli> {
    arithmetic(rate, quantity).map(|a| a.credits)
}

/// The steps of pricing one quantity, as `tally explain` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arithmetic {
    /// ceil(quantity / increment).
    pub increments: i128,
    /// increments × increment: the quantity billed.
    pub billed_quantity: Decimal,
    /// billed_quantity × credits_per_unit.
    pub raw_credits: Decimal,
    /// The minimum decided the charge (raw < minimum).
    pub minimum_applied: bool,
    /// max(minimum, raw) rounded half-even to 0.001.
    pub credits: Milli,
}

/// Price `quantity` at `rate`, keeping every step. `None` on overflow.
pub fn arithmetic(rate: &Rate, quantity: Milli) -> Option<Arithmetic> {
    let increments = increments_ceil(quantity, rate.increment)?;
    // (A quantity past Decimal's range is an overflow, not a panic.)
    let billed_quantity = Decimal::try_from_i128_with_scale(increments, 0)
        .ok()?
        .checked_mul(rate.increment)?;
    let raw_credits = billed_quantity.checked_mul(rate.credits_per_unit)?;
    let charged = raw_credits.max(rate.minimum);
    let rounded = charged.round_dp_with_strategy(3, RoundingStrategy::MidpointNearestEven);
    Some(Arithmetic {
        increments,
        billed_quantity,
        raw_credits,
        minimum_applied: raw_credits < rate.minimum,
        credits: Milli::from_decimal(rounded)?,
    })
}

/// ceil(quantity / increment) in exact integer arithmetic: quantity = q/10^3 and
/// increment = m/10^s, so the quotient is (q × 10^s) / (m × 10^3).
fn increments_ceil(quantity: Milli, increment: Decimal) -> Option<i128> {
    let q = i128::from(quantity.0);
    let numerator = q.checked_mul(10i128.checked_pow(increment.scale())?)?;
    let denominator = increment.mantissa().checked_mul(1_000)?;
    if denominator <= 0 {
        return None;
    }
    let quotient = numerator.div_euclid(denominator);
    let exact = numerator.rem_euclid(denominator) == 0;
    Some(if exact { quotient } else { quotient + 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn rate(cpu: &str, increment: &str, minimum: &str) -> Rate {
        Rate {
            unit: "second".into(),
            credits_per_unit: Decimal::from_str(cpu).unwrap(),
            increment: Decimal::from_str(increment).unwrap(),
            minimum: Decimal::from_str(minimum).unwrap(),
            effective_from: 0,
        }
    }

    #[test]
    fn contract_example_rounds_quantity_up_to_whole_increments() {
        // Veo 3 at 8 credits per second, increment 1, 4.2 s → ceil(4.2) = 5 → 40 credits.
        assert_eq!(
            credits_for(&rate("8", "1", "0"), Milli(4200)),
            Some(Milli(40_000))
        );
        // increment 4: 4.2 s → 2 increments → 8 s → 64 credits.
        assert_eq!(
            credits_for(&rate("8", "4", "0"), Milli(4200)),
            Some(Milli(64_000))
        );
        // exact multiples do not round up.
        assert_eq!(
            credits_for(&rate("8", "4", "0"), Milli(8000)),
            Some(Milli(64_000))
        );
        // fractional increments: 0.5 s increments, 1.2 s → 3 × 0.5 = 1.5 s.
        assert_eq!(
            credits_for(&rate("2", "0.5", "0"), Milli(1200)),
            Some(Milli(3_000))
        );
    }

    #[test]
    fn minimum_applies_and_zero_quantity_costs_the_minimum() {
        assert_eq!(
            credits_for(&rate("1", "1", "5"), Milli(2000)),
            Some(Milli(5_000))
        );
        assert_eq!(
            credits_for(&rate("8", "1", "3"), Milli(0)),
            Some(Milli(3_000))
        );
        assert_eq!(credits_for(&rate("8", "1", "0"), Milli(0)), Some(Milli(0)));
    }

    /// The integer formula and `Decimal` give the same credits wherever the integer one
    /// applies; it applies to ordinary rates (so this test compares something).
    #[test]
    fn the_integer_formula_applies_to_ordinary_rates() {
        for (cpu, inc, min, q) in [
            ("8", "1", "0", 4200),
            ("8", "4", "0", 4200),
            ("2", "0.5", "0", 1200),
            ("1", "1", "5", 2000),
            ("0.0125", "1", "0", 1000),
            ("0.0135", "1", "0", 1000),
            ("0.0001", "1", "0", 1000),
        ] {
            let r = rate(cpu, inc, min);
            let fast = IntegerRate::of(&r).and_then(|f| f.credits(Milli(q)));
            assert!(fast.is_some(), "{cpu} {inc} {min} {q}");
            assert_eq!(fast, credits_for(&r, Milli(q)));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn the_integer_formula_agrees_with_decimal(
            cpu in 0i64..100_000_000, cpu_scale in 0u32..12,
            inc in 1i64..1_000_000, inc_scale in 0u32..10,
            min in 0i64..10_000_000, min_scale in 0u32..10,
            q in proptest::prop_oneof![0i64..100_000, 0i64..i64::MAX],
        ) {
            let r = Rate {
                unit: "second".into(),
                credits_per_unit: Decimal::new(cpu, cpu_scale),
                increment: Decimal::new(inc, inc_scale),
                minimum: Decimal::new(min, min_scale),
                effective_from: 0,
            };
            let slow = credits_for(&r, Milli(q));
            if let Some(fast) = IntegerRate::of(&r).and_then(|f| f.credits(Milli(q))) {
                proptest::prop_assert_eq!(Some(fast), slow);
            }
        }
    }

    #[test]
    fn result_rounds_half_even_to_thousandths() {
        assert_eq!(
            credits_for(&rate("0.0125", "1", "0"), Milli(1000)),
            Some(Milli(12))
        );
        assert_eq!(
            credits_for(&rate("0.0135", "1", "0"), Milli(1000)),
            Some(Milli(14))
        );
        assert_eq!(
            credits_for(&rate("0.0001", "1", "0"), Milli(1000)),
            Some(Milli(0))
        );
    }
}
