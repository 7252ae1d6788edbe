//! Stage 3: price every event from the rate card (contract section 3), exactly.

use crate::amount::Milli;
use crate::error::{Result, TallyError};
use crate::model::{EventStatus, UsageRow};
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
    let billed_quantity =
        Decimal::from_i128_with_scale(increments, 0).checked_mul(rate.increment)?;
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
