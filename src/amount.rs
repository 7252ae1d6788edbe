//! Fixed-point amounts: credits and quantities are integers of thousandths (scale 3), the
//! scale of the contract's DECIMAL(18,3) outputs. No floating point ever holds an amount.

use crate::error::{Result, TallyError};
use arrow::datatypes::i256;
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

    /// `thousandths` as an amount when an output can hold it (|x| ≤
    /// [`OUTPUT_LIMIT_MILLIS`]): every amount tally holds is, its sums checked as they are
    /// made. A binary file tally wrote back (a shard's `partial.bin`, a run file) holding
    /// another was not written by tally, and would overflow the sums made of it.
    pub fn within_output_limit(thousandths: i64) -> Option<Milli> {
        (thousandths.checked_abs()? <= OUTPUT_LIMIT_MILLIS).then_some(Milli(thousandths))
    }

    pub fn checked_add(self, other: Milli) -> Result<Milli> {
        self.0
            .checked_add(other.0)
            .filter(|v| v.abs() <= OUTPUT_LIMIT_MILLIS)
            .map(Milli)
            .ok_or_else(|| TallyError::SumOverflow(format!("{self} + {other}")))
    }

    pub fn checked_sub(self, other: Milli) -> Result<Milli> {
        self.0
            .checked_sub(other.0)
            .filter(|v| v.abs() <= OUTPUT_LIMIT_MILLIS)
            .map(Milli)
            .ok_or_else(|| TallyError::SumOverflow(format!("{self} - {other}")))
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
            // Exactly as written: tally writes 3 places, so a 4th that is not 0 is not an
            // amount tally wrote (it is refused, not rounded).
            exact_decimal(&text)
                .ok()
                .filter(|value| value.normalize().scale() <= 3)
                .and_then(Milli::from_decimal)
                .ok_or_else(|| {
                    D::Error::custom(format!(
                        "{text} is not an amount with at most 3 decimals below 10^15"
                    ))
                })
        } else {
            let value = i64::deserialize(d)?;
            Milli::within_output_limit(value).ok_or_else(|| {
                D::Error::custom(format!(
                    "{value} thousandths is past what a DECIMAL(18,3) amount holds"
                ))
            })
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

/// Why a decimal string could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecimalTextError {
    /// Not a plain decimal (`-12.345`): letters, an exponent, two points, nothing.
    NotADecimal,
    /// A plain decimal with more than [`MAX_DECIMAL_PLACES`] after the point, or a value
    /// whose digits, without the point, pass [`MAX_DECIMAL_DIGITS`] (`rust_decimal`'s 96
    /// bits); trailing zeros after the point do not count.
    TooManyDigits,
}

/// The most digits after the point a decimal string may have once its trailing zeros are
/// dropped (`rust_decimal`'s largest scale).
pub const MAX_DECIMAL_PLACES: u32 = 28;

/// The largest digits a decimal string may have with its point removed (2^96 − 1).
pub const MAX_DECIMAL_DIGITS: &str = "79228162514264337593543950335";

/// A decimal string read exactly (never rounded). Trailing zeros after the point count
/// for nothing: `8.0000000000000000000000000000` is 8, though written with 29 digits, past
/// the 96 bits `rust_decimal` keeps (refused as "not a decimal" before 2026-12-05).
pub fn exact_decimal(text: &str) -> std::result::Result<Decimal, DecimalTextError> {
    // ASCII blanks only, and no `_` (rust_decimal reads `9_.9_9` as 9.99): a price is
    // written as plain digits.
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if !is_plain_decimal(text) {
        return Err(DecimalTextError::NotADecimal);
    }
    if let Ok(d) = Decimal::from_str_exact(text) {
        return Ok(d);
    }
    let without_trailing_zeros = match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.'),
        false => text,
    };
    // Leading zeros hold no digit either ("000…08"); one stays before a point.
    let (sign, digits) = match without_trailing_zeros.as_bytes().first() {
        Some(b'+' | b'-') => without_trailing_zeros.split_at(1),
        _ => ("", without_trailing_zeros),
    };
    let significant = digits.trim_start_matches('0');
    let shortened = match significant.as_bytes().first() {
        None => "0".to_string(),
        Some(b'.') => format!("{sign}0{significant}"),
        Some(_) => format!("{sign}{significant}"),
    };
    Decimal::from_str_exact(&shortened).map_err(|_| DecimalTextError::TooManyDigits)
}

/// What is wrong with the text, as a message goes on after `{key} = {value} `.
impl fmt::Display for DecimalTextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecimalTextError::NotADecimal => write!(f, "is not a decimal"),
            DecimalTextError::TooManyDigits => write!(
                f,
                "has more digits than tally holds: at most {MAX_DECIMAL_PLACES} after the \
                 point, and at most {MAX_DECIMAL_DIGITS} with the point removed (trailing \
                 zeros after the point do not count); write it with fewer digits"
            ),
        }
    }
}

/// An optional sign, then digits with at most one point among or around them (at least one
/// digit): the only form [`exact_decimal`] reads.
fn is_plain_decimal(text: &str) -> bool {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let mut points = 0;
    let mut digits = 0;
    for b in unsigned.bytes() {
        match b {
            b'0'..=b'9' => digits += 1,
            b'.' => points += 1,
            _ => return false,
        }
    }
    digits > 0 && points <= 1
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
            // Compared with what is left to the divisor, not doubled: 2 × remainder passes
            // i128 when 38 digits are dropped (a DECIMAL(76, 41) value that fits 128 bits).
            let rest = divisor - remainder;
            let away = remainder > rest || (remainder == rest && quotient % 2 != 0);
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

/// Convert an unscaled DECIMAL wider than 38 digits (Parquet DECIMAL(p > 38, s), e.g.
/// BigQuery's BIGNUMERIC) to thousandths, half-even. The digits past thousandths are
/// dropped in 256 bits first, so that an ordinary value of a wide type (1.5 stored as
/// 15 × 10^37) reads like any decimal instead of failing the 128-bit conversion.
pub fn milli_from_decimal256(unscaled: i256, scale: i8) -> std::result::Result<Milli, AmountError> {
    if let Some(narrow) = unscaled.to_i128() {
        return milli_from_decimal_parts(narrow, scale);
    }
    let out_of_range = || {
        let digits = unscaled.to_string();
        let (negative, digits) = match digits.strip_prefix('-') {
            Some(rest) => (true, rest.to_string()),
            None => (false, digits),
        };
        AmountError::OutOfRange(format_digits(negative, &digits, scale))
    };
    // Past 128 bits, a value with 3 decimals or fewer is far beyond 10^15.
    if scale <= 3 {
        return Err(out_of_range());
    }
    let drop = (i32::from(scale) - 3) as u32;
    // |unscaled| < 2^255 < 6 × 10^76: dropping 78 or more digits leaves less than 0.06 of
    // a thousandth, which rounds to 0.
    if drop > 77 {
        return Ok(Milli::ZERO);
    }
    // |i256::MIN| does not fit; MIN + 1 rounds the same (2^255 is no multiple of 5, so no
    // tie and no exact result changes by one unit).
    let magnitude = unscaled.checked_abs().unwrap_or(i256::MAX);
    // Drop all but the last digit (remembering whether anything non-zero went), then the
    // last digit decides the rounding: one exact half-even step without 10^drop (which
    // does not fit 256 bits at drop = 77).
    let ten = i256::from_i128(10);
    let divisor = ten.wrapping_pow(drop - 1);
    let (kept, rest) = magnitude.wrapping_div_rem(divisor);
    let (quotient, last) = kept.wrapping_div_rem(ten);
    let last = last.as_i128();
    let odd = quotient.wrapping_rem(i256::from_i128(2)) != i256::ZERO;
    let away = last > 5 || (last == 5 && (rest != i256::ZERO || odd));
    let rounded = if away {
        quotient.wrapping_add(i256::ONE)
    } else {
        quotient
    };
    match rounded.to_i128() {
        Some(millis) if millis < INPUT_LIMIT_MILLIS => {
            let millis = millis as i64;
            Ok(Milli(if unscaled.is_negative() {
                -millis
            } else {
                millis
            }))
        }
        _ => Err(out_of_range()),
    }
}

fn format_decimal(unscaled: i128, scale: i8) -> String {
    format_digits(unscaled < 0, &unscaled.unsigned_abs().to_string(), scale)
}

/// `digits` (of the magnitude) × 10^-scale as decimal text.
fn format_digits(negative: bool, digits: &str, scale: i8) -> String {
    let sign = if negative { "-" } else { "" };
    // An integer as it is (an INT64 quantity of 10^15 reads `1000000000000000`, not
    // `1000000000000000e0`); a negative scale, a power of ten past it.
    match scale {
        0 => return format!("{sign}{digits}"),
        ..0 => return format!("{sign}{digits}e{}", -scale),
        _ => {}
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An integer amount (an INT64 or UINT64 column, scale 0) at the input limit reads,
    /// and one past it is refused shown as the integer it is.
    #[test]
    fn an_integer_amount_past_the_limit_is_shown_as_an_integer() {
        assert_eq!(
            milli_from_decimal_parts(999_999_999_999_999, 0),
            Ok(Milli(999_999_999_999_999_000))
        );
        let past = milli_from_decimal_parts(1_000_000_000_000_000, 0).unwrap_err();
        assert_eq!(
            past.to_string(),
            "1000000000000000 is out of range (|x| must be < 10^15)"
        );
        assert_eq!(
            milli_from_decimal_parts(-(u64::MAX as i128), 0)
                .unwrap_err()
                .to_string(),
            "-18446744073709551615 is out of range (|x| must be < 10^15)"
        );
        // A negative scale keeps its power of ten.
        assert_eq!(format_decimal(12, -20), "12e20");
    }

    /// In a binary serde form (postcard: a shard's `partial.bin`) an amount is its integer
    /// of thousandths, up to what a DECIMAL(18,3) output holds either way (the contract:
    /// "Credits are written as DECIMAL(18,3)": 18 digits, 3 of them after the point); one
    /// past it (a forged partial, whose sums would overflow) is refused.
    #[test]
    fn a_binary_amount_is_read_up_to_the_output_limit_and_refused_one_past() {
        assert_eq!(OUTPUT_LIMIT_MILLIS, 10i64.pow(18) - 1);
        let read = |value: i64| {
            let bytes = postcard::to_allocvec(&value).unwrap();
            postcard::from_bytes::<Milli>(&bytes).map_err(|_| value)
        };
        for value in [0, 1_500, OUTPUT_LIMIT_MILLIS, -OUTPUT_LIMIT_MILLIS] {
            assert_eq!(read(value), Ok(Milli(value)));
            let bytes = postcard::to_allocvec(&Milli(value)).unwrap();
            assert_eq!(postcard::from_bytes::<Milli>(&bytes), Ok(Milli(value)));
        }
        for past in [
            OUTPUT_LIMIT_MILLIS + 1,
            -OUTPUT_LIMIT_MILLIS - 1,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(read(past), Err(past));
        }
    }

    /// An amount in a human-readable serde form (JSON; no file tally reads back holds one
    /// today: partials and run files are binary) is read
    /// exactly: up to 999999999999999.999 and 3 places; one past either is refused, not
    /// rounded.
    #[test]
    fn a_json_amount_is_read_exactly_up_to_the_limit_and_refused_one_past() {
        let read = |text: &str| {
            serde_json::from_str::<Milli>(&format!("\"{text}\"")).map_err(|e| e.to_string())
        };
        assert_eq!(
            read("999999999999999.999"),
            Ok(Milli(999_999_999_999_999_999))
        );
        assert_eq!(
            read("-999999999999999.999"),
            Ok(Milli(-999_999_999_999_999_999))
        );
        assert_eq!(read("1.5000"), Ok(Milli(1_500)));
        assert_eq!(read("7"), Ok(Milli(7_000)));
        for past in [
            "1000000000000000",
            "-1000000000000000",
            "1.0005",
            "0.0001",
            "x",
        ] {
            // serde_json adds the place ("at line 1 column 19").
            let refused = read(past).unwrap_err();
            let why = format!("{past} is not an amount with at most 3 decimals below 10^15");
            assert!(refused.starts_with(&why), "{refused}");
        }
        assert_eq!(serde_json::to_string(&Milli(1_500)).unwrap(), "\"1.500\"");
    }

    #[test]
    fn decimal_strings_are_read_exactly_whatever_their_zeros() {
        let d = |t: &str| exact_decimal(t).map(|d| d.normalize().to_string());
        // 29 digits written, 1 significant: 8 (past rust_decimal's 96 bits as written).
        assert_eq!(d("8.0000000000000000000000000000"), Ok("8".into()));
        assert_eq!(d("-0008.50000000000000000000000000000"), Ok("-8.5".into()));
        assert_eq!(d("0000000000000000000000000000000000.5"), Ok("0.5".into()));
        assert_eq!(d(" 9.99 "), Ok("9.99".into()));
        assert_eq!(d("0.000000000000000000000000000000"), Ok("0".into()));
        // At the limit of places and one past it.
        let at_limit = format!("0.{}1", "0".repeat(MAX_DECIMAL_PLACES as usize - 1));
        assert_eq!(d(&at_limit), Ok(at_limit.clone()));
        let past = format!("0.{}1", "0".repeat(MAX_DECIMAL_PLACES as usize));
        assert_eq!(d(&past), Err(DecimalTextError::TooManyDigits));
        // Digits in all: 2^96 - 1 fits (29 digits, with a point anywhere), 2^96 does not.
        assert!(d(MAX_DECIMAL_DIGITS).is_ok());
        assert!(d("7.9228162514264337593543950335").is_ok());
        assert!(d("7.92281625142643375935439503350000").is_ok());
        assert_eq!(
            d("79228162514264337593543950336"),
            Err(DecimalTextError::TooManyDigits)
        );
        assert_eq!(
            d("1.00000000000000000000000000001"),
            Err(DecimalTextError::TooManyDigits)
        );
        for bad in [
            "",
            "-",
            ".",
            "1e3",
            "1.2.3",
            "9,99",
            "ten",
            "0x10",
            "1 000",
            "9.9_9",
            "1_000",
            "9_.99",
            "9.99\u{a0}",
        ] {
            assert_eq!(d(bad), Err(DecimalTextError::NotADecimal), "{bad:?}");
        }
    }

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
        // 38 digits dropped: 0.0009 as 9 × 10^37 at scale 41 (a remainder twice of which
        // would not fit i128); ties and the digit above a tie.
        let nine = 9 * 10i128.pow(37);
        assert_eq!(milli_from_decimal_parts(nine, 41).unwrap(), Milli(1));
        assert_eq!(milli_from_decimal_parts(-nine, 41).unwrap(), Milli(-1));
        let tie = 5 * 10i128.pow(37);
        assert_eq!(milli_from_decimal_parts(tie, 41).unwrap(), Milli(0));
        assert_eq!(milli_from_decimal_parts(tie + 1, 41).unwrap(), Milli(1));
        assert_eq!(
            milli_from_decimal_parts(10i128.pow(38) + tie, 41).unwrap(),
            Milli(2)
        );
        assert_eq!(milli_from_decimal_parts(i128::MAX, 41).unwrap(), Milli(2));
        assert!(milli_from_decimal_parts(999_999_999_999_999, 0).is_ok());
    }

    fn wide(digits: &str) -> i256 {
        i256::from_string(digits).unwrap()
    }

    /// `digits` followed by `zeros` zeros.
    fn wide_shifted(digits: &str, zeros: usize) -> i256 {
        wide(&format!("{digits}{}", "0".repeat(zeros)))
    }

    #[test]
    fn wide_decimals_drop_digits_before_the_128_bit_conversion() {
        // 2.5 as DECIMAL(76, 38) is 25 × 10^37, past i128 (1.5 still fits).
        assert!(wide_shifted("25", 37).to_i128().is_none());
        assert_eq!(
            milli_from_decimal256(wide_shifted("25", 37), 38),
            Ok(Milli(2500))
        );
        assert_eq!(
            milli_from_decimal256(wide_shifted("-25", 37), 38),
            Ok(Milli(-2500))
        );
        // Ties to even at the thousandth, and a digit far below the tie breaks it.
        assert_eq!(
            milli_from_decimal256(wide_shifted("20005", 36), 40),
            Ok(Milli(2000))
        );
        assert_eq!(
            milli_from_decimal256(wide_shifted("20015", 36), 40),
            Ok(Milli(2002))
        );
        assert_eq!(
            milli_from_decimal256(wide_shifted("-20015", 36), 40),
            Ok(Milli(-2002))
        );
        let above_tie = wide(&format!("20005{}1", "0".repeat(35)));
        assert_eq!(milli_from_decimal256(above_tie, 40), Ok(Milli(2001)));
        // At the input limit and one past it.
        let largest = wide_shifted("999999999999999999", 35);
        assert_eq!(
            milli_from_decimal256(largest, 38),
            Ok(Milli(999_999_999_999_999_999))
        );
        assert_eq!(
            milli_from_decimal256(wide_shifted("1", 53), 38),
            Err(AmountError::OutOfRange(format!(
                "1000000000000000.{}",
                "0".repeat(38)
            )))
        );
        // Past 128 bits with 3 decimals or fewer: far out of range.
        assert_eq!(
            milli_from_decimal256(wide_shifted("1", 39), 3),
            Err(AmountError::OutOfRange(format!("1{}.000", "0".repeat(36))))
        );
        assert_eq!(
            milli_from_decimal256(wide_shifted("-1", 39), 0),
            Err(AmountError::OutOfRange(format!("-1{}", "0".repeat(39))))
        );
    }

    #[test]
    fn wide_decimals_with_77_or_more_digits_to_drop_are_thousandths_below_one() {
        // Dropping 77 digits: 5 × 10^76 is a tie to even (0), anything above rounds to 1.
        let tie = wide_shifted("5", 76);
        assert_eq!(milli_from_decimal256(tie, 80), Ok(Milli::ZERO));
        let above = tie.wrapping_add(i256::ONE);
        assert_eq!(milli_from_decimal256(above, 80), Ok(Milli(1)));
        assert_eq!(
            milli_from_decimal256(above.wrapping_neg(), 80),
            Ok(Milli(-1))
        );
        assert_eq!(milli_from_decimal256(i256::MIN, 80), Ok(Milli(-1)));
        // 78 or more: less than 0.06 of a thousandth.
        assert_eq!(milli_from_decimal256(i256::MAX, 81), Ok(Milli::ZERO));
        assert_eq!(milli_from_decimal256(i256::MIN, 127), Ok(Milli::ZERO));
    }

    proptest::proptest! {
        /// A value written with more digits (a wider type, a larger scale) reads the same.
        #[test]
        fn wide_decimals_read_like_narrow_ones(
            unscaled in proptest::prelude::any::<i64>(),
            scale in 0i8..=18,
            extra in 0u32..=57,
        ) {
            // |i64| × 10^57 < 10^76 fits 256 bits. Only the values compare: an error's
            // text shows the digits as written.
            let widened = i256::from_i128(i128::from(unscaled))
                .wrapping_mul(i256::from_i128(10).wrapping_pow(extra));
            proptest::prop_assert_eq!(
                milli_from_decimal256(widened, scale + extra as i8).ok(),
                milli_from_decimal_parts(i128::from(unscaled), scale).ok()
            );
        }
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
