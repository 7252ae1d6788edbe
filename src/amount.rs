//! Fixed-point amounts: credits and quantities are integers of thousandths (scale 3), the
//! scale of the contract's DECIMAL(18,3) outputs. No floating point ever holds an amount.

use crate::error::{Result, TallyError};
use rust_decimal::{Decimal, RoundingStrategy};
use std::fmt;

/// Number of thousandths in one unit.
pub const SCALE: i64 = 1_000;
/// Inputs at or beyond 10^15 units are rejected as `bad_value` (the contract's DOUBLE limit,
/// applied to every numeric type so that sums stay far from the i64 range).
pub const INPUT_LIMIT_MILLIS: i128 = 1_000_000_000_000_000 * SCALE as i128;
/// The largest magnitude a DECIMAL(18,3) output can hold, in thousandths.
pub const OUTPUT_LIMIT_MILLIS: i64 = 999_999_999_999_999_999;

/// An amount in thousandths of a unit (credits or quantity).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Milli(pub i64);

impl Milli {
    pub const ZERO: Milli = Milli(0);

    pub fn from_units(units: i64) -> Milli {
        Milli(units * SCALE)
    }

    pub fn checked_add(self, other: Milli) -> Result<Milli> {
        self.0
            .checked_add(other.0)
            .filter(|v| v.abs() <= OUTPUT_LIMIT_MILLIS)
            .map(Milli)
            .ok_or_else(|| TallyError::Overflow(format!("{self} + {other}")))
    }

    pub fn checked_sub(self, other: Milli) -> Result<Milli> {
        self.0
            .checked_sub(other.0)
            .filter(|v| v.abs() <= OUTPUT_LIMIT_MILLIS)
            .map(Milli)
            .ok_or_else(|| TallyError::Overflow(format!("{self} - {other}")))
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    pub fn min(self, other: Milli) -> Milli {
        if self.0 <= other.0 {
            self
        } else {
            other
        }
    }

    /// Exact conversion to a decimal with scale 3.
    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.0, 3)
    }

    /// Round a decimal half-even to thousandths; `None` when out of range.
    pub fn from_decimal(value: Decimal) -> Option<Milli> {
        let rounded = value.round_dp_with_strategy(3, RoundingStrategy::MidpointNearestEven);
        let scaled = rounded.checked_mul(Decimal::from(SCALE))?;
        let millis = i64::try_from(scaled.mantissa() / 10i128.pow(scaled.scale())).ok()?;
        (i128::from(millis).abs() < INPUT_LIMIT_MILLIS).then_some(Milli(millis))
    }

    /// Sum amounts, failing on overflow.
    pub fn sum<I: IntoIterator<Item = Milli>>(items: I) -> Result<Milli> {
        items
            .into_iter()
            .try_fold(Milli::ZERO, |acc, x| acc.checked_add(x))
    }
}

impl Milli {
    /// The amount as `Display` writes it, appended to `out` (no formatting machinery:
    /// output files write millions of amounts).
    pub fn push_to(self, out: &mut String) {
        if self.0 < 0 {
            out.push('-');
        }
        let abs = self.0.unsigned_abs();
        out.push_str(itoa::Buffer::new().format(abs / SCALE as u64));
        let fraction = (abs % SCALE as u64) as u16;
        let digits = [
            b'.',
            b'0' + (fraction / 100) as u8,
            b'0' + (fraction / 10 % 10) as u8,
            b'0' + (fraction % 10) as u8,
        ];
        out.push_str(std::str::from_utf8(&digits).expect("ASCII digits"));
    }
}

impl fmt::Display for Milli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:03}", abs / SCALE as u64, abs % SCALE as u64)
    }
}

/// In JSON (read by people) a decimal string with 3 places; in binary formats (shard
/// partials) the integer number of thousandths.
impl serde::Serialize for Milli {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Milli {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Milli, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse::<Decimal>()
                .ok()
                .and_then(Milli::from_decimal)
                .ok_or_else(|| {
                    D::Error::custom(format!("{text} is not an amount with at most 3 decimals"))
                })
        } else {
            i64::deserialize(d).map(Milli)
        }
    }
}

/// Divide `numerator` by 2^`shift` rounding half to even (exact, integer only).
fn shift_right_half_even(numerator: i128, shift: u32) -> i128 {
    if shift == 0 {
        return numerator;
    }
    if shift >= 126 {
        return 0; // |numerator| < 2^64 here, so the quotient is below one half.
    }
    let negative = numerator < 0;
    let n = numerator.unsigned_abs();
    let quotient = n >> shift;
    let remainder = n & ((1u128 << shift) - 1);
    let half = 1u128 << (shift - 1);
    let rounded = if remainder > half || (remainder == half && quotient & 1 == 1) {
        quotient + 1
    } else {
        quotient
    };
    let r = rounded as i128;
    if negative {
        -r
    } else {
        r
    }
}

/// Why a number could not become an amount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmountError {
    NotFinite(String),
    OutOfRange(String),
}

impl fmt::Display for AmountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmountError::NotFinite(v) => write!(f, "{v} is not a finite number"),
            AmountError::OutOfRange(v) => write!(f, "{v} is out of range (|x| must be < 10^15)"),
        }
    }
}

/// Convert a DOUBLE to thousandths from its exact binary value, ties to even
/// (0.1235 is really 0.12349999… and becomes 0.123).
pub fn milli_from_f64(x: f64) -> std::result::Result<Milli, AmountError> {
    if !x.is_finite() {
        return Err(AmountError::NotFinite(format!("{x}")));
    }
    if x.abs() >= 1e15 {
        return Err(AmountError::OutOfRange(format!("{x}")));
    }
    if x == 0.0 {
        return Ok(Milli::ZERO);
    }
    let bits = x.to_bits();
    let negative = bits >> 63 == 1;
    let exponent = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1u64 << 52) - 1);
    // x = mantissa × 2^power, exactly.
    let (mantissa, power) = if exponent == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1u64 << 52), exponent - 1075)
    };
    let scaled = i128::from(mantissa) * i128::from(SCALE);
    let magnitude = if power >= 0 {
        scaled << power // |x| < 10^15 keeps this far below 2^127.
    } else {
        shift_right_half_even(scaled, (-power) as u32)
    };
    let millis = if negative { -magnitude } else { magnitude };
    Ok(Milli(millis as i64))
}

/// Convert an unscaled decimal (value = unscaled × 10^-scale) to thousandths, half-even.
pub fn milli_from_decimal_parts(
    unscaled: i128,
    scale: i8,
) -> std::result::Result<Milli, AmountError> {
    let shown = || format_decimal(unscaled, scale);
    let millis: i128 = if scale <= 3 {
        let factor = 10i128
            .checked_pow((3 - i32::from(scale)) as u32)
            .ok_or_else(|| AmountError::OutOfRange(shown()))?;
        unscaled
            .checked_mul(factor)
            .ok_or_else(|| AmountError::OutOfRange(shown()))?
    } else {
        let drop = (i32::from(scale) - 3) as u32;
        if drop > 38 {
            0
        } else {
            let divisor = 10i128.pow(drop);
            let quotient = unscaled / divisor;
            let remainder = (unscaled % divisor).abs();
            let twice = remainder * 2;
            let away = twice > divisor || (twice == divisor && quotient % 2 != 0);
            if away {
                quotient + unscaled.signum()
            } else {
                quotient
            }
        }
    };
    if millis.abs() >= INPUT_LIMIT_MILLIS {
        return Err(AmountError::OutOfRange(shown()));
    }
    Ok(Milli(millis as i64))
}

fn format_decimal(unscaled: i128, scale: i8) -> String {
    if scale <= 0 {
        return format!("{unscaled}e{}", -scale);
    }
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    let sign = if unscaled < 0 { "-" } else { "" };
    format!("{sign}{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_round_from_their_exact_binary_value() {
        assert_eq!(milli_from_f64(0.1235).unwrap(), Milli(123));
        assert_eq!(milli_from_f64(4.2).unwrap(), Milli(4200));
        assert_eq!(milli_from_f64(0.0005).unwrap(), Milli(1)); // 0.000500000000000000010…
        assert_eq!(milli_from_f64(0.0625).unwrap(), Milli(62)); // exact tie → even
        assert_eq!(milli_from_f64(0.0635).unwrap(), Milli(64)); // 0.06350000000000000088…
        assert_eq!(milli_from_f64(-2.5).unwrap(), Milli(-2500));
        assert_eq!(milli_from_f64(1e-300).unwrap(), Milli(0));
        assert!(milli_from_f64(f64::NAN).is_err());
        assert!(milli_from_f64(f64::INFINITY).is_err());
        assert!(milli_from_f64(1e15).is_err());
        assert_eq!(
            milli_from_f64(999_999_999_999_999.9).unwrap(),
            Milli(999_999_999_999_999_875)
        );
    }

    #[test]
    fn decimals_round_half_even_to_thousandths() {
        assert_eq!(milli_from_decimal_parts(12345, 4).unwrap(), Milli(1234));
        assert_eq!(milli_from_decimal_parts(12355, 4).unwrap(), Milli(1236));
        assert_eq!(milli_from_decimal_parts(-12345, 4).unwrap(), Milli(-1234));
        assert_eq!(milli_from_decimal_parts(-12355, 4).unwrap(), Milli(-1236));
        assert_eq!(milli_from_decimal_parts(5, 0).unwrap(), Milli(5000));
        assert_eq!(milli_from_decimal_parts(5, -2).unwrap(), Milli(500_000));
        assert!(milli_from_decimal_parts(1_000_000_000_000_000, 0).is_err());
        assert!(milli_from_decimal_parts(999_999_999_999_999, 0).is_ok());
    }

    #[test]
    fn display_has_three_decimals() {
        assert_eq!(Milli(40_000).to_string(), "40.000");
        assert_eq!(Milli(-8).to_string(), "-0.008");
        assert_eq!(Milli(0).to_string(), "0.000");
        for m in [
            0,
            1,
            -1,
            999,
            -1000,
            40_000,
            123_456_789,
            i64::MAX,
            i64::MIN,
            -8,
        ] {
            let mut pushed = String::new();
            Milli(m).push_to(&mut pushed);
            assert_eq!(pushed, Milli(m).to_string());
        }
    }

    #[test]
    fn sums_fail_instead_of_wrapping() {
        let big = Milli(OUTPUT_LIMIT_MILLIS);
        assert!(big.checked_add(Milli(1)).is_err());
        assert!(big.checked_add(Milli(0)).is_ok());
    }
}
