//! Stage 3: price every event from the rate card (contract section 3), exactly.

use crate::amount::Milli;
use crate::error::{Result, TallyError};
use crate::model::{EventStatus, Usage, UsageRow};
use crate::pricebook::{PriceBook, Rate};
use num_bigint::{BigInt, Sign};
use num_integer::Integer;
use rust_decimal::Decimal;

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

    /// The credits charged (`None` for an event not charged or unpriced).
    pub fn charged(self) -> Option<Milli> {
        match self {
            Price::Charged(c) => Some(c),
            Price::NotChargeable | Price::Unpriced => None,
        }
    }
}

/// The price book's rates by the skus of a run (a sku is a (product, action, model) of
/// the run's dictionaries): an event's rate is found by its sku code, not by hashing its
/// strings, and each rate carries its formula in integers.
pub struct RateTable {
    by_sku: Vec<SkuRates>,
    /// The usage files' paths (relative to the data root), by file index: an event whose
    /// charge overflows is named by its file and row ([`RateTable::naming_files`]).
    usage_files: Vec<String>,
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
    /// Its unit as a bit of [`unit_bit`] (0 for a rate without a unit).
    unit_bit: u64,
}

impl Version {
    fn of(rate: &Rate, units: &[&str]) -> Version {
        Version {
            rate: rate.clone(),
            fast: IntegerRate::of(rate),
            unit_bit: unit_bit(units, &rate.unit),
        }
    }
}

/// The bit that stands for `unit` among `units` (the price book's units, sorted:
/// [`PriceBook::all_units`]) in a breakdown line's set of units: bit i for the i-th unit,
/// the last bit for the 64th unit and every one after it (a price book with that many
/// units lists them all on such a line). 0 for no unit.
pub fn unit_bit(units: &[&str], unit: &str) -> u64 {
    match units.binary_search(&unit) {
        Ok(i) if !unit.is_empty() => 1 << i.min(63),
        _ => 0,
    }
}

/// The units of the bits of `set` ([`unit_bit`]), in the price book's order.
pub fn unit_names<'a>(units: &[&'a str], set: u64) -> Vec<&'a str> {
    (units.iter().enumerate())
        .filter(|(i, _)| set & (1 << (*i).min(63)) != 0)
        .map(|(_, unit)| *unit)
        .collect()
}

impl RateTable {
    pub fn new(book: &PriceBook, dicts: &crate::dict::Dicts) -> RateTable {
        let units = book.all_units();
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
                        .map(|rate| Version::of(rate, &units))
                        .collect(),
                    generic: generic
                        .iter()
                        .map(|rate| Version::of(rate, &units))
                        .collect(),
                }
            })
            .collect();
        RateTable {
            by_sku,
            usage_files: Vec::new(),
        }
    }

    /// The rate version that prices `event` (the contract's lookup: the model's own
    /// version in effect at `occurred_at`, else the generic one).
    fn version_for(&self, event: &Usage) -> Option<&Version> {
        let rates = &self.by_sku[event.sku as usize];
        let t = event.occurred_at;
        version_at(&rates.by_model, t).or_else(|| version_at(&rates.generic, t))
    }

    /// Name the usage files (by file index) in overflow errors.
    pub fn naming_files(mut self, usage_files: &[crate::load::InputFile]) -> RateTable {
        self.usage_files = usage_files.iter().map(|f| f.rel_path.clone()).collect();
        self
    }

    /// What an event should have cost (the contract's section 3): what [`price_event`], the
    /// reference without the per-sku table and the integer fast path, gives (a proptest
    /// compares them).
    pub fn price(&self, event: &Usage, ids: &crate::dict::Ids) -> Result<Price> {
        self.price_and_unit(event, ids).map(|(price, _)| price)
    }

    /// [`Self::price`], and the [`unit_bit`] of the rate that priced the event (0 when it
    /// is not charged or has no rate): the report says in which units a line's quantities
    /// are, from the same lookup that priced them.
    pub fn price_and_unit(&self, event: &Usage, ids: &crate::dict::Ids) -> Result<(Price, u64)> {
        if event.status() != EventStatus::Succeeded {
            return Ok((Price::NotChargeable, 0));
        }
        let Some(version) = self.version_for(event) else {
            return Ok((Price::Unpriced, 0));
        };
        let quantity = event.quantity();
        let credits = match &version.fast {
            Some(fast) => fast.credits(quantity),
            None => None,
        };
        credits
            .or_else(|| arithmetic(&version.rate, quantity).map(|a| a.credits))
            .map(|credits| (Price::Charged(credits), version.unit_bit))
            .ok_or_else(|| {
                let (file, row) = (event.at.file() as usize, event.at.row());
                let place = match self.usage_files.get(file) {
                    Some(path) => format!("{path} row {row}"),
                    None => format!("usage file #{file} row {row}"),
                };
                overflow(
                    &place,
                    &String::from_utf8_lossy(ids.bytes(event.id)),
                    quantity,
                    &version.rate,
                )
            })
    }
}

/// A charge of 10^15 credits or more: the run stops (exit 4) naming the row, since the
/// row is valid input (|quantity| < 10^15) and rejecting it would change the dedup and
/// window outcomes the contract fixes for valid rows (README, "Choices where the contract
/// is silent").
fn overflow(place: &str, event_id: &str, quantity: Milli, rate: &Rate) -> TallyError {
    let unit = match rate.unit.as_str() {
        "" => "unit",
        unit => unit,
    };
    TallyError::Overflow(format!(
        "{place}: event \"{event_id}\" costs 10^15 credits or more (quantity {quantity} at {} \
         credits per {unit}), past what a credit amount holds (DECIMAL(18,3)); correct the \
         row's quantity or remove the row, then rerun",
        rate.credits_per_unit.normalize()
    ))
}

/// The version in effect at `t`: the greatest `effective_from` ≤ t.
fn version_at(versions: &[Version], t: crate::time::Micros) -> Option<&Version> {
    let after = versions.partition_point(|v| v.rate.effective_from <= t);
    after.checked_sub(1).map(|i| &versions[i])
}

/// A rate's formula in 128-bit integers: credits = max(minimum, ceil(q / increment) ×
/// increment × credits_per_unit), rounded half-even to thousandths, with each decimal as
/// (mantissa, scale) and the powers of ten worked out once per rate. Exact wherever no
/// step overflows 128 bits, which it checks; elsewhere the unbounded [`arithmetic`]
/// decides (a property test holds the two equal).
#[derive(Clone, Copy, Debug)]
struct IntegerRate {
    /// 10^(increment's scale): the quantity in the increment's scale, times 1000.
    quantity_factor: u128,
    /// The increment's mantissa × 1000 (quantities are thousandths).
    denominator: u128,
    increment: u128,
    per_unit: u128,
    /// 10^(scale − scale of increment × credits_per_unit), where `scale` is the larger of
    /// that and the minimum's.
    raw_factor: u128,
    /// The minimum at `scale`.
    minimum: u128,
    /// From `scale` to thousandths.
    to_millis: ToMillis,
}

#[derive(Clone, Copy, Debug)]
enum ToMillis {
    Times(u128),
    /// Divided, rounding half to even.
    Over(u128),
}

impl IntegerRate {
    fn of(rate: &Rate) -> Option<IntegerRate> {
        let raw_scale = rate.increment.scale() + rate.credits_per_unit.scale();
        let minimum_scale = rate.minimum.scale();
        let unsigned = |d: rust_decimal::Decimal| u128::try_from(d.mantissa()).ok();
        if rate.increment.mantissa() <= 0 {
            return None;
        }
        let scale = raw_scale.max(minimum_scale);
        Some(IntegerRate {
            quantity_factor: 10u128.checked_pow(rate.increment.scale())?,
            denominator: unsigned(rate.increment)?.checked_mul(1_000)?,
            increment: unsigned(rate.increment)?,
            per_unit: unsigned(rate.credits_per_unit)?,
            raw_factor: 10u128.checked_pow(scale - raw_scale)?,
            minimum: unsigned(rate.minimum)?
                .checked_mul(10u128.checked_pow(scale - minimum_scale)?)?,
            to_millis: match scale <= 3 {
                true => ToMillis::Times(10u128.pow(3 - scale)),
                false => ToMillis::Over(10u128.checked_pow(scale - 3)?),
            },
        })
    }

    /// The credits for `quantity`, or `None` where the integer form does not apply.
    fn credits(&self, quantity: Milli) -> Option<Milli> {
        // ceil(q / increment) = ceil(q × 10^s / (m × 10^3)) for q in thousandths.
        let numerator = u128::try_from(quantity.0)
            .ok()?
            .checked_mul(self.quantity_factor)?;
        let (quotient, remainder) = divide(numerator, self.denominator);
        let increments = quotient + u128::from(remainder != 0);
        let raw = (increments.checked_mul(self.increment)?).checked_mul(self.per_unit)?;
        // max(minimum, raw) at the larger of the two scales.
        let charged = raw.checked_mul(self.raw_factor)?.max(self.minimum);
        let millis = match self.to_millis {
            ToMillis::Times(factor) => charged.checked_mul(factor)?,
            ToMillis::Over(divisor) => {
                let (quotient, remainder) = divide(charged, divisor);
                match (2 * remainder).cmp(&divisor) {
                    std::cmp::Ordering::Less => quotient,
                    std::cmp::Ordering::Greater => quotient + 1,
                    std::cmp::Ordering::Equal => quotient + (quotient & 1),
                }
            }
        };
        (millis < crate::amount::INPUT_LIMIT_MILLIS as u128)
            .then_some(Milli(i64::try_from(millis).ok()?))
    }
}

/// (quotient, remainder), in 64 bits when both fit (a 128-bit division is several times
/// slower).
fn divide(n: u128, d: u128) -> (u128, u128) {
    match (u64::try_from(n), u64::try_from(d)) {
        (Ok(n), Ok(d)) => (u128::from(n / d), u128::from(n % d)),
        _ => (n / d, n % d),
    }
}

/// What an event should have cost, straight from the contract's section 3: the price book's
/// lookup and the decimal arithmetic. The reference the run's [`RateTable::price`] is held
/// to (a proptest), and what a reader checks the contract against.
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
        Some(rate) => arithmetic(rate, event.quantity)
            .map(|a| Price::Charged(a.credits))
            .ok_or_else(|| {
                let place = format!("usage file #{} row {}", event.at.file, event.at.row);
                overflow(&place, &event.event_id, event.quantity, rate)
            }),
    }
}

/// credits = max(minimum, ceil(quantity / increment) × increment × credits_per_unit),
/// rounded half-even to 0.001 (in 128 bits where they suffice, else unbounded). `None` on
/// overflow.
pub fn credits_for(rate: &Rate, quantity: Milli) -> Option<Milli> {
    IntegerRate::of(rate)
        .and_then(|fast| fast.credits(quantity))
        .or_else(|| arithmetic(rate, quantity).map(|a| a.credits))
}

/// An exact decimal, `mantissa` × 10^−`scale`: a pricing step's value. The product of an
/// increment and a price can need more digits than `Decimal`'s 28 (two rates with 15
/// decimals each), and `Decimal` rounds such a product to fit, which the contract's
/// "exact decimal" arithmetic does not allow: a price that rounds twice can be a
/// thousandth off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exact {
    mantissa: BigInt,
    scale: u32,
}

impl Exact {
    pub fn of(value: Decimal) -> Exact {
        Exact {
            mantissa: BigInt::from(value.mantissa()),
            scale: value.scale(),
        }
    }

    fn integer(value: BigInt) -> Exact {
        Exact {
            mantissa: value,
            scale: 0,
        }
    }

    pub fn times(&self, other: &Exact) -> Exact {
        Exact {
            mantissa: &self.mantissa * &other.mantissa,
            scale: self.scale + other.scale,
        }
    }

    /// The mantissa at a scale at least `self.scale`.
    fn at_scale(&self, scale: u32) -> BigInt {
        &self.mantissa * BigInt::from(10u32).pow(scale - self.scale)
    }

    fn less_than(&self, other: &Exact) -> bool {
        let scale = self.scale.max(other.scale);
        self.at_scale(scale) < other.at_scale(scale)
    }

    /// Rounded half to even at thousandths, in thousandths.
    fn millis(&self) -> BigInt {
        self.half_even_at(3)
    }

    /// Rounded half to even at `places` decimals, in units of 10^−`places` (money in minor
    /// units: `places` is the currency's exponent).
    pub fn half_even_at(&self, places: u32) -> BigInt {
        if self.scale <= places {
            return self.at_scale(places);
        }
        let divisor = BigInt::from(10u32).pow(self.scale - places);
        let (quotient, remainder) = self.mantissa.div_mod_floor(&divisor);
        // Floor division: 0 <= remainder < divisor, also for a negative mantissa.
        match (remainder * 2u32).cmp(&divisor) {
            std::cmp::Ordering::Less => quotient,
            std::cmp::Ordering::Greater => quotient + 1u32,
            std::cmp::Ordering::Equal if quotient.is_odd() => quotient + 1u32,
            std::cmp::Ordering::Equal => quotient,
        }
    }
}

/// The value without trailing zeros after the point, as `Decimal::normalize` writes it
/// (`40`, `0.0015`, `-2.5`).
impl std::fmt::Display for Exact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.mantissa.magnitude().to_string();
        let scale = self.scale as usize;
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (whole, fraction) = padded.split_at(padded.len() - scale);
        let fraction = fraction.trim_end_matches('0');
        let sign = match self.mantissa.sign() {
            Sign::Minus => "-",
            Sign::NoSign | Sign::Plus => "",
        };
        match fraction.is_empty() {
            true => write!(f, "{sign}{whole}"),
            false => write!(f, "{sign}{whole}.{fraction}"),
        }
    }
}

/// The steps of pricing one quantity, as `tally explain` shows them, each exact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arithmetic {
    /// ceil(quantity / increment).
    pub increments: BigInt,
    /// increments × increment: the quantity billed.
    pub billed_quantity: Exact,
    /// billed_quantity × credits_per_unit.
    pub raw_credits: Exact,
    /// The minimum decided the charge (raw < minimum).
    pub minimum_applied: bool,
    /// max(minimum, raw) rounded half-even to 0.001.
    pub credits: Milli,
}

/// Price `quantity` at `rate`, keeping every step, in exact (unbounded) integers. `None`
/// when the charge is 10^15 credits or more (or the increment is not positive, which the
/// price book refuses).
pub fn arithmetic(rate: &Rate, quantity: Milli) -> Option<Arithmetic> {
    let increments = increments_ceil(quantity, rate.increment)?;
    let billed_quantity = Exact::integer(increments.clone()).times(&Exact::of(rate.increment));
    let raw_credits = billed_quantity.times(&Exact::of(rate.credits_per_unit));
    let minimum = Exact::of(rate.minimum);
    let minimum_applied = raw_credits.less_than(&minimum);
    let charged = if minimum_applied {
        &minimum
    } else {
        &raw_credits
    };
    let millis = i64::try_from(charged.millis()).ok()?;
    let credits =
        (i128::from(millis).abs() < crate::amount::INPUT_LIMIT_MILLIS).then_some(Milli(millis))?;
    Some(Arithmetic {
        increments,
        billed_quantity,
        raw_credits,
        minimum_applied,
        credits,
    })
}

/// ceil(quantity / increment) in exact integer arithmetic: quantity = q/10^3 and
/// increment = m/10^s, so the quotient is (q × 10^s) / (m × 10^3).
fn increments_ceil(quantity: Milli, increment: Decimal) -> Option<BigInt> {
    let numerator = BigInt::from(quantity.0) * BigInt::from(10u32).pow(increment.scale());
    let denominator = BigInt::from(increment.mantissa()) * 1_000u32;
    if denominator.sign() != Sign::Plus {
        return None;
    }
    let (quotient, remainder) = numerator.div_mod_floor(&denominator);
    Some(match remainder.sign() {
        Sign::NoSign => quotient,
        Sign::Minus | Sign::Plus => quotient + 1u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each unit its own bit in the book's order; the 64th and later share the last; no
    /// unit, no bit; names come back in the book's order.
    #[test]
    fn unit_bits_name_units_in_the_books_order() {
        let units = ["clip", "image", "second"];
        assert_eq!(unit_bit(&units, "clip"), 1);
        assert_eq!(unit_bit(&units, "second"), 4);
        assert_eq!(unit_bit(&units, ""), 0);
        assert_eq!(unit_bit(&units, "other"), 0);
        assert_eq!(unit_names(&units, 0b101), ["clip", "second"]);
        assert_eq!(unit_names(&units, 0), Vec::<&str>::new());
        let many: Vec<String> = (0..70).map(|i| format!("u{i:02}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(unit_bit(&many, "u62"), 1 << 62);
        assert_eq!(unit_bit(&many, "u63"), 1 << 63);
        assert_eq!(unit_bit(&many, "u69"), 1 << 63);
        assert_eq!(unit_names(&many, 1 << 63), many[63..]);
        // At 64 units the last bit is the 64th's alone; one unit more shares it.
        assert_eq!(unit_names(&many[..64], 1 << 63), ["u63"]);
        assert_eq!(unit_names(&many[..65], 1 << 63), ["u63", "u64"]);
        assert_eq!(unit_bit(&many[..65], "u64"), 1 << 63);
    }
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

    /// The integer formula and the exact one give the same credits wherever the integer one
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
            assert_eq!(fast, arithmetic(&r, Milli(q)).map(|a| a.credits));
        }
    }

    /// Scales that add past `Decimal`'s 28 digits: the product is kept whole, so it rounds
    /// once (0.1 × 0.0149999999999999999999999995 = 0.00149999999999999999999999995 is
    /// 0.001; rounded to 28 digits first, it became 0.0015 and then 0.002).
    #[test]
    fn a_product_past_28_digits_rounds_once() {
        let r = rate("0.0149999999999999999999999995", "0.1", "0");
        let a = arithmetic(&r, Milli(100)).unwrap();
        assert_eq!(a.raw_credits.to_string(), "0.00149999999999999999999999995");
        assert_eq!(a.billed_quantity.to_string(), "0.1");
        assert_eq!(a.credits, Milli(1));
        assert_eq!(credits_for(&r, Milli(100)), Some(Milli(1)));
        // The same price at increment 1: 0.0149999999999999999999999995 → 0.015.
        assert_eq!(
            credits_for(
                &rate("0.0149999999999999999999999995", "1", "0"),
                Milli(1000)
            ),
            Some(Milli(15))
        );
        // A minimum with 28 decimals that wins by less than Decimal could tell apart.
        let r = rate(
            "0.0000000000000000000000000001",
            "0.0000000000000000000000000001",
            "0.0015",
        );
        let a = arithmetic(&r, Milli(1000)).unwrap();
        assert!(a.minimum_applied);
        assert_eq!(a.credits, Milli(2));
    }

    /// Contract 3: "rounded to the thousandth of a credit, ties to even", in the exact
    /// arithmetic too (the steps kept whole, rounded once).
    #[test]
    fn the_exact_arithmetic_rounds_ties_to_even() {
        let tie = |cpu: &str, q: i64| arithmetic(&rate(cpu, "1", "0"), Milli(q)).unwrap().credits;
        assert_eq!(tie("0.0005", 1000), Milli(0));
        assert_eq!(tie("0.0005", 3000), Milli(2));
        assert_eq!(tie("0.0005", 5000), Milli(2));
        assert_eq!(tie("0.0005", 7000), Milli(4));
        // One part in 10^28 past the tie rounds up; below it, down.
        assert_eq!(tie("0.0005000000000000000000000001", 1000), Milli(1));
        assert_eq!(tie("0.0014999999999999999999999999", 1000), Milli(1));
    }

    /// An increment with 28 decimals divides a large quantity into more increments than
    /// 128 bits hold: still priced (it used to be called an overflow).
    #[test]
    fn more_increments_than_128_bits_hold_are_priced() {
        let r = rate(
            "0.0000000000000000000000000001",
            "0.0000000000000000000000000001",
            "0",
        );
        let a = arithmetic(&r, Milli(999_999_999_999_999_999)).unwrap();
        assert_eq!(
            a.increments.to_string(),
            "9999999999999999990000000000000000000000000"
        );
        assert_eq!(a.billed_quantity.to_string(), "999999999999999.999");
        assert_eq!(
            a.raw_credits.to_string(),
            "0.0000000000000999999999999999999"
        );
        assert_eq!(a.credits, Milli(0));
    }

    #[test]
    fn a_charge_of_10_to_the_15_credits_is_an_overflow() {
        // The largest charge: 999999999999999.999 credits; one thousandth more is 10^15.
        let r = rate("1", "0.001", "0");
        assert_eq!(
            credits_for(&r, Milli(999_999_999_999_999_999)),
            Some(Milli(999_999_999_999_999_999))
        );
        // Whole increments: 999999999999999.999 s bills 10^15 s.
        assert_eq!(
            credits_for(&rate("1", "1", "0"), Milli(999_999_999_999_999_999)),
            None
        );
        assert_eq!(
            arithmetic(&rate("1.5", "1", "0"), Milli(999_999_999_999_999_000)),
            None
        );
        assert_eq!(
            credits_for(&rate("1.5", "1", "0"), Milli(999_999_999_999_999_000)),
            None
        );
    }

    #[test]
    fn exact_values_are_written_as_normalized_decimals_are() {
        let written = |mantissa: i64, scale: u32| {
            let exact = Exact {
                mantissa: BigInt::from(mantissa),
                scale,
            };
            assert_eq!(
                exact.to_string(),
                Decimal::new(mantissa, scale).normalize().to_string()
            );
            exact.to_string()
        };
        assert_eq!(written(40_000, 3), "40");
        assert_eq!(written(15, 4), "0.0015");
        assert_eq!(written(-25, 1), "-2.5");
        assert_eq!(written(0, 5), "0");
        assert_eq!(written(7, 0), "7");
        assert_eq!(written(1_230, 2), "12.3");
    }

    /// A price book decimal's mantissa, of a bit length drawn evenly up to `Decimal`'s 96:
    /// drawn evenly from the range, nearly every mantissa would be 90-odd bits long, and the
    /// integer formula (whose steps must fit 128 bits) would seldom be compared.
    fn mantissa() -> impl proptest::strategy::Strategy<Value = u128> {
        use proptest::strategy::Strategy;
        (0u32..=96, proptest::num::u128::ANY).prop_map(|(bits, v)| match bits {
            0 => 0,
            bits => v >> (128 - bits),
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Every price book decimal: mantissas to `Decimal`'s 96 bits, scales to its 28.
        #[test]
        fn the_integer_formula_agrees_with_the_exact_one_on_any_decimals(
            cpu in mantissa(), cpu_scale in 0u32..=28,
            inc in mantissa(), inc_scale in 0u32..=28,
            min in mantissa(), min_scale in 0u32..=28,
            q in proptest::prop_oneof![0i64..100_000, 0i64..i64::MAX],
        ) {
            let decimal = |m: u128, s: u32| Decimal::from_i128_with_scale(m as i128, s);
            let r = Rate {
                unit: "second".into(),
                credits_per_unit: decimal(cpu, cpu_scale),
                // An increment is positive (the price book refuses 0).
                increment: decimal(inc.max(1), inc_scale),
                minimum: decimal(min, min_scale),
                effective_from: 0,
            };
            let exact = arithmetic(&r, Milli(q)).map(|a| a.credits);
            if let Some(fast) = IntegerRate::of(&r).and_then(|f| f.credits(Milli(q))) {
                proptest::prop_assert_eq!(Some(fast), exact);
            }
            proptest::prop_assert_eq!(credits_for(&r, Milli(q)), exact);
        }

        #[test]
        fn the_integer_formula_agrees_with_the_exact_one_on_ordinary_rates(
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
            let slow = arithmetic(&r, Milli(q)).map(|a| a.credits);
            if let Some(fast) = IntegerRate::of(&r).and_then(|f| f.credits(Milli(q))) {
                proptest::prop_assert_eq!(Some(fast), slow);
            }
        }
    }

    /// A price book with what the fast path must get right: model rates that beat the
    /// generic one, effective-dated rows (a model rate that starts later than the generic
    /// one), fractional increments and prices, minimums, a rate whose integer form overflows.
    const EQUIVALENCE_BOOK: &str = r#"
currency = "USD"
[plans.pro]
price = "9.99"
included_credits = "200"
[[rates]]
product = "studio"
action = "prompt_to_video"
unit = "second"
credits_per_unit = "8"
effective_from = 2026-01-01T00:00:00Z
[[rates]]
product = "studio"
action = "prompt_to_video"
unit = "second"
credits_per_unit = "9.5"
increment = "0.5"
minimum = "3"
effective_from = 2026-11-15T00:00:00Z
[[rates]]
product = "studio"
action = "prompt_to_video"
model = "veo-3"
unit = "second"
credits_per_unit = "12.125"
increment = "2"
effective_from = 2026-11-10T00:00:00Z
[[rates]]
product = "studio"
action = "genai_image"
model = "flux"
unit = "image"
credits_per_unit = "0.333"
increment = "0.001"
minimum = "0.5"
effective_from = 2026-01-01T00:00:00Z
[[rates]]
product = "captions"
action = "chat_edit"
unit = "message"
credits_per_unit = "123456789.987"
increment = "0.3"
effective_from = 2026-01-01T00:00:00Z
"#;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// The run's pricing (`RateTable::price`: per-sku versions and an integer fast path)
        /// gives what the reference (`price_event`: the price book's lookup and decimal
        /// arithmetic, the unoptimised path) gives, for any event.
        #[test]
        fn the_rate_table_prices_like_the_reference(
            sku in 0usize..6,
            quantity in proptest::prop_oneof![0i64..50_000, 0i64..i64::MAX / 2],
            status in 0usize..3,
            // 2025-12-01 .. 2026-12-01, so that every effective date is crossed.
            occurred_at in 1_764_547_200_000_000i64..1_796_083_200_000_000,
        ) {
            use crate::model::{RowRef, UsageRow};
            let book = PriceBook::parse(EQUIVALENCE_BOOK, "test").unwrap();
            let (product, action, model) = [
                ("studio", "prompt_to_video", None),
                ("studio", "prompt_to_video", Some("veo-3")),
                // No model rate: the generic one.
                ("studio", "prompt_to_video", Some("hailuo")),
                ("studio", "genai_image", Some("flux")),
                // No rate at all: unpriced.
                ("studio", "genai_image", Some("dall-e")),
                ("captions", "chat_edit", None),
            ][sku];
            let row = UsageRow {
                at: RowRef { file: 0, row: 0 },
                event_id: "evt-1".into(),
                account_id: "acct".into(),
                product: product.into(),
                action: action.into(),
                model: model.map(Into::into),
                quantity: Milli(quantity),
                status: [
                    EventStatus::Succeeded,
                    EventStatus::Failed,
                    EventStatus::Cancelled,
                ][status],
                occurred_at,
                ingested_at: None,
            };
            let builder = crate::dict::DictBuilder::new(["acct"].into_iter());
            let mut chunk = crate::dict::IdChunk::default();
            let usage = Usage::from_row(&row, &builder, &mut chunk, 0);
            let mut ids = crate::dict::Ids::default();
            proptest::prop_assert_eq!(ids.push(chunk), 0);
            let table = RateTable::new(&book, &builder.freeze());
            let reference = price_event(&book, &row);
            let fast = table.price(&usage, &ids);
            proptest::prop_assert_eq!(fast.as_ref().ok(), reference.as_ref().ok());
            proptest::prop_assert_eq!(fast.is_err(), reference.is_err());
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
