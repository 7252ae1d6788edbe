//! The price book: plans and the effective-dated rate card (`pricebook.toml`).

use crate::amount::{exact_decimal, DecimalTextError, Milli};
use crate::error::{Result, TallyError};
use crate::time::{parse_instant, Micros};
use crate::validate::FastHash;
use rust_decimal::prelude::*;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Why a price book amount of 10^15 credits or more is refused (a plan's credits, a rate's
/// minimum or one increment): the contract writes credits as DECIMAL(18,3).
const PAST_CREDITS: &str =
    "is 10^15 credits or more, past what a credit amount holds (DECIMAL(18,3))";

/// How usage beyond the period's grants is treated.
#[derive(Debug, Clone, PartialEq)]
pub enum Overage {
    /// The online system should have refused it: reported `over_limit_usage`, not billed.
    Block,
    /// Billed at this price per credit (in major currency units).
    PricePerCredit(Decimal),
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Shared with every allocation row of the plan (`validate::allocations`).
    pub plan_id: crate::model::Shared,
    pub name: String,
    pub price: Decimal,
    pub price_minor: i64,
    pub included_credits: Milli,
    pub refresh: bool,
    pub rollover_cap: Milli,
    pub overage: Overage,
}

/// One version of a rate, in effect from `effective_from` until the next version of its key.
#[derive(Debug, Clone)]
pub struct Rate {
    pub unit: String,
    pub credits_per_unit: Decimal,
    pub increment: Decimal,
    pub minimum: Decimal,
    pub effective_from: Micros,
}

/// The outcome of a rate lookup.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateChoice<'a> {
    /// The version in effect (`None`: the event is unpriced).
    pub rate: Option<&'a Rate>,
    /// The model's own rate (else the generic rate of the product and action).
    pub model_specific: bool,
    /// The event's model has rate rows of its own (none in effect, if not chosen).
    pub model_key_exists: bool,
}

/// (product, action, model); `None` is the generic rate of the action.
pub type RateKey = (String, String, Option<String>);

#[derive(Debug, Clone)]
pub struct PriceBook {
    pub currency: String,
    /// ISO 4217 minor-unit exponent (USD 2, JPY 0, BHD 3).
    pub exponent: u32,
    pub plans: BTreeMap<String, Plan>,
    /// The rate versions, product → action → generic / by model, each sorted by
    /// `effective_from` (lookups borrow the event's strings, no allocation).
    index: HashMap<String, HashMap<String, ActionRates, FastHash>, FastHash>,
}

/// The largest price book read: 64 MiB (a price book is a few hundred lines; a hundred
/// thousand rate versions would take about 15 MiB).
pub const MAX_PRICEBOOK_BYTES: u64 = 64 << 20;

/// A price book as a run read it: the book, and the sha256 of the bytes it was parsed from.
#[derive(Debug, Clone)]
pub struct PriceBookReading {
    pub book: PriceBook,
    pub sha256: String,
}

/// The rates of one (product, action): the generic versions and the model-specific ones.
#[derive(Debug, Clone, Default)]
struct ActionRates {
    generic: Vec<Rate>,
    by_model: HashMap<String, Vec<Rate>, FastHash>,
}

/// The version in effect at `t`: the greatest `effective_from` ≤ t.
fn in_effect(versions: &[Rate], t: Micros) -> Option<&Rate> {
    let after = versions.partition_point(|v| v.effective_from <= t);
    after.checked_sub(1).map(|i| &versions[i])
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBook {
    currency: Option<String>,
    #[serde(default)]
    plans: BTreeMap<String, RawPlan>,
    #[serde(default)]
    rates: Vec<RawRate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    name: Option<String>,
    price: toml::Value,
    included_credits: toml::Value,
    refresh: Option<bool>,
    rollover_cap: Option<toml::Value>,
    /// `"block"` or `{ price_per_credit = "0.05" }`, read by hand so that anything else is
    /// refused in those words (serde's untagged enums name only the Rust type).
    overage: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    product: String,
    action: String,
    model: Option<String>,
    unit: Option<String>,
    credits_per_unit: toml::Value,
    increment: Option<toml::Value>,
    minimum: Option<toml::Value>,
    effective_from: toml::Value,
}

/// Why a price book's `currency` cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum CurrencyError {
    /// Not three capital letters (`usd`, `US`).
    NotACode,
    /// Three capital letters, but not one of ISO 4217's codes (`UDS`: a typo).
    NotIso4217,
    /// An ISO 4217 code without a minor unit (gold, the SDR, the test code `XTS`): money
    /// in it cannot be written in minor units.
    NoMinorUnit,
}

/// The ISO 4217 minor-unit exponent of a currency code (USD 2, JPY 0, BHD 3), from the
/// `iso_currency` crate's copy of the standard's list rather than a table of our own.
pub fn currency_exponent(code: &str) -> std::result::Result<u32, CurrencyError> {
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(CurrencyError::NotACode);
    }
    let currency = iso_currency::Currency::from_code(code).ok_or(CurrencyError::NotIso4217)?;
    (currency.exponent())
        .map(u32::from)
        .ok_or(CurrencyError::NoMinorUnit)
}

/// The code that replaced `code` in ISO 4217 (HRK by EUR), if it was replaced.
pub fn superseded_by(code: &str) -> Option<&'static str> {
    let currency = iso_currency::Currency::from_code(code)?;
    currency.is_superseded().map(|newer| newer.code())
}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, message: impl Into<String>) -> TallyError {
        TallyError::config(self.file, message)
    }

    /// A decimal from a string ("9.99") or a TOML integer/float-free number.
    fn decimal(&self, what: &str, value: &toml::Value) -> Result<Decimal> {
        let parsed = match value {
            toml::Value::String(s) => exact_decimal(s),
            toml::Value::Integer(i) => Ok(Decimal::from(*i)),
            _ => Err(DecimalTextError::NotADecimal),
        };
        parsed.map_err(|e| {
            // A TOML float (`9.99` unquoted) is the usual slip: say how to write it. A
            // string already is one: say what it may hold (`"3,5"`, `"1.4e1"`, `"1_4"`).
            let how = match (e, value) {
                (DecimalTextError::NotADecimal, toml::Value::String(_)) => {
                    ": digits with an optional sign and one `.` before the fraction, such as \
                     \"9.99\" (no `,`, `_`, exponent or spaces inside)"
                }
                (DecimalTextError::NotADecimal, _) => "; write it as a string such as \"9.99\"",
                (DecimalTextError::TooManyDigits, _) => "",
            };
            self.err(format!("{what} = {value} {e}{how}"))
        })
    }

    fn non_negative(&self, what: &str, value: &toml::Value) -> Result<Decimal> {
        let d = self.decimal(what, value)?;
        if d.is_sign_negative() && !d.is_zero() {
            return Err(self.err(format!("{what} = {d} must not be negative")));
        }
        Ok(d)
    }

    /// A plan's credits: below 10^15 once rounded half-even to thousandths (DECIMAL(18,3)).
    fn credits(&self, what: &str, value: &toml::Value) -> Result<Milli> {
        let d = self.non_negative(what, value)?;
        Milli::from_decimal(d).ok_or_else(|| self.err(format!("{what} = {d} {PAST_CREDITS}")))
    }

    fn instant(&self, what: &str, value: &toml::Value) -> Result<Micros> {
        let text = match value {
            toml::Value::Datetime(dt) => dt.to_string(),
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let t = parse_instant(&text)
            .ok_or_else(|| self.err(format!("{what} = {text} is not a date-time (RFC 3339)")))?;
        // An input's instants are in these years; a rate from outside them could not be
        // written back in RFC 3339 (explain, messages) as the book has it.
        if !crate::time::in_instant_years(t) {
            return Err(self.err(format!(
                "{what} = {text} is outside the years 0001 to 9999 (in UTC: {})",
                crate::time::format_instant(t)
            )));
        }
        Ok(t)
    }
}

/// A price book that cannot be read (a configuration error): a missing one says where it
/// belongs, since a data root without one is usually the wrong folder.
/// Why a TOML file (a price book, a job file) whose bytes are not UTF-8 cannot be read, and
/// what to do.
pub const NOT_UTF8_TOML: &str = "it is not UTF-8 text (TOML is UTF-8); save it as UTF-8";

pub fn unreadable(display_name: &str, e: &std::io::Error) -> TallyError {
    let message = match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "cannot read: {e}; a data root holds its pricebook.toml beside the usage/, \
             allocations/, grants/ and debits/ folders: is --data (or the job's `data`) the \
             data root?"
        ),
        // What read_to_string says of bytes that are not UTF-8, without saying what to do.
        std::io::ErrorKind::InvalidData => format!("cannot read: {NOT_UTF8_TOML}"),
        kind => format!("cannot read: {e}{}", crate::error::read_hint(kind)),
    };
    TallyError::config(display_name, message)
}

/// Refuse a price book that is there but is not a regular file (a pipe, a socket, a device,
/// a folder): reading a pipe waits for a writer that may never come, and the run with it.
/// A missing one is left to the read, which says where it belongs.
pub fn check_is_a_file(path: &Path, display_name: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(TallyError::config(
            display_name,
            "is not a regular file (a folder, a pipe, a socket or a device): the price book is \
             a TOML file",
        )),
        _ => Ok(()),
    }
}

impl PriceBook {
    /// Read and validate the price book at `path`, once: parsed, and the sha256 of the bytes
    /// parsed (what a run's manifest lists, so that it names the book the run priced with
    /// even if the file is written again during the run). Every problem is a configuration
    /// error (exit 2).
    pub fn read(path: &Path, display_name: &str) -> Result<PriceBookReading> {
        // A regular file (the data root's check), but one written without bound (a log
        // written to the wrong name) would be read whole into memory.
        let bytes = crate::write::read_at_most(path, MAX_PRICEBOOK_BYTES)
            .map_err(|e| unreadable(display_name, &e))?
            .ok_or_else(|| {
                TallyError::config(
                    display_name,
                    "is larger than 64 MiB: not a price book (a price book is a TOML file of \
                     plans and rates, a few hundred lines)",
                )
            })?;
        let sha256 = crate::write::sha256_hex(&bytes);
        let text = String::from_utf8(bytes).map_err(|_| {
            unreadable(
                display_name,
                &std::io::Error::from(std::io::ErrorKind::InvalidData),
            )
        })?;
        let book = PriceBook::parse(&text, display_name)?;
        Ok(PriceBookReading { book, sha256 })
    }

    pub fn parse(text: &str, display_name: &str) -> Result<PriceBook> {
        let ctx = Ctx { file: display_name };
        let raw: RawBook = toml::from_str(text).map_err(|e| {
            let said = syntax_error(text, &e);
            // Without a place, the words alone would not say the price book is at fault.
            ctx.err(match e.span() {
                Some(_) => said,
                None => format!("not a valid price book: {said}"),
            })
        })?;
        let currency = raw
            .currency
            .ok_or_else(|| ctx.err("`currency` is required (an ISO 4217 code such as \"USD\")"))?;
        let exponent = currency_exponent(&currency).map_err(|e| {
            ctx.err(match e {
                CurrencyError::NotACode => format!(
                    "currency = \"{currency}\" is not an ISO 4217 code (three capital letters, \
                     such as \"USD\", \"EUR\" or \"JPY\")"
                ),
                CurrencyError::NotIso4217 => format!(
                    "currency = \"{currency}\" is not in ISO 4217's list of currency codes (a \
                     typo? such as \"USD\", \"EUR\" or \"JPY\")"
                ),
                CurrencyError::NoMinorUnit => format!(
                    "currency = \"{currency}\" has no minor unit in ISO 4217 (a precious metal, \
                     a unit of account or a test code), so prices cannot be written in minor \
                     units: use the currency the plans are billed in"
                ),
            })
        })?;
        if let Some(newer) = superseded_by(&currency) {
            // Kept as written (a rerun of an old month is billed as it was), but said once.
            tracing::warn!(
                currency = %currency,
                superseded_by = newer,
                "the price book's currency {currency} has been replaced by {newer} in ISO \
                 4217; invoices are written in {currency} as the price book says"
            );
        }
        let mut plans = BTreeMap::new();
        for (plan_id, raw_plan) in raw.plans {
            let plan = parse_plan(&ctx, &plan_id, raw_plan, (&currency, exponent))?;
            plans.insert(plan_id, plan);
        }
        let mut rates: HashMap<RateKey, Vec<Rate>> = HashMap::new();
        let mut first_of: HashMap<(RateKey, Micros), usize> = HashMap::new();
        for (index, raw_rate) in raw.rates.into_iter().enumerate() {
            let (key, rate) = parse_rate(&ctx, index, raw_rate)?;
            if let Some(earlier) = first_of.insert((key.clone(), rate.effective_from), index) {
                return Err(ctx.err(format!(
                    "[[rates]] #{} repeats #{} (product = \"{}\", action = \"{}\", model = {}, \
                     effective_from = {}); remove one",
                    index + 1,
                    earlier + 1,
                    key.0,
                    key.1,
                    key.2
                        .as_deref()
                        .map_or("(none)".to_string(), |m| format!("\"{m}\"")),
                    crate::time::format_instant(rate.effective_from)
                )));
            }
            rates.entry(key).or_default().push(rate);
        }
        let mut index: HashMap<String, HashMap<String, ActionRates, FastHash>, FastHash> =
            HashMap::default();
        for ((product, action, model), mut versions) in rates {
            versions.sort_by_key(|v| v.effective_from);
            let entry = index.entry(product).or_default().entry(action).or_default();
            match model {
                Some(m) => {
                    entry.by_model.insert(m, versions);
                }
                None => entry.generic = versions,
            }
        }
        Ok(PriceBook {
            currency,
            exponent,
            plans,
            index,
        })
    }

    /// The versions of a (product, action) rate: the model's own (`None` without a model
    /// or without rows for it) and the generic ones (empty without any).
    pub fn versions(
        &self,
        product: &str,
        action: &str,
        model: Option<&str>,
    ) -> (Option<&[Rate]>, &[Rate]) {
        let Some(rates) = self.index.get(product).and_then(|p| p.get(action)) else {
            return (None, &[]);
        };
        let by_model = model.and_then(|m| rates.by_model.get(m)).map(Vec::as_slice);
        (by_model, &rates.generic)
    }

    /// The rate for an event: model-specific if in effect, else the generic one.
    pub fn lookup(
        &self,
        product: &str,
        action: &str,
        model: Option<&str>,
        t: Micros,
    ) -> Option<&Rate> {
        self.choose(product, action, model, t).rate
    }

    /// Every unit of the price book (distinct, sorted, empty ones left out): the order of
    /// a breakdown line's unit bits ([`crate::price::unit_bit`]).
    pub fn all_units(&self) -> Vec<&str> {
        let mut units: Vec<&str> = (self.index.values())
            .flat_map(|actions| actions.values())
            .flat_map(|rates| {
                rates
                    .generic
                    .iter()
                    .chain(rates.by_model.values().flatten())
            })
            .map(|r| r.unit.as_str())
            .filter(|u| !u.is_empty())
            .collect();
        units.sort_unstable();
        units.dedup();
        units
    }

    /// The rate for an event and why it was chosen (the lookup `tally explain` reports).
    pub fn choose(
        &self,
        product: &str,
        action: &str,
        model: Option<&str>,
        t: Micros,
    ) -> RateChoice<'_> {
        let Some(rates) = self.index.get(product).and_then(|p| p.get(action)) else {
            return RateChoice::default();
        };
        let model_versions = model.and_then(|m| rates.by_model.get(m));
        if let Some(rate) = model_versions.and_then(|versions| in_effect(versions, t)) {
            return RateChoice {
                rate: Some(rate),
                model_specific: true,
                model_key_exists: true,
            };
        }
        RateChoice {
            rate: in_effect(&rates.generic, t),
            model_specific: false,
            model_key_exists: model_versions.is_some(),
        }
    }
}

/// A TOML error as one line: its line and column (when the parser gives a place) and the
/// parser's words. Shared by the price book and job files, each of which says whose it is.
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let mut message = e.message().replace('\n', " ");
    // serde names a table by its Rust type ("expected struct RawPlan"): say which table.
    for (rust, table) in [
        (
            "struct RawPlan",
            "a plan's table, [plans.<id>] with its keys on the lines below",
        ),
        (
            "struct RawRate",
            "a rate's table, headed [[rates]], with its keys on the lines below",
        ),
        (
            "struct AlertConfig",
            "a table: write [alert] on a line of its own, its keys on the lines below",
        ),
    ] {
        message = message.replace(rust, table);
    }
    match e.span() {
        Some(span) => {
            let (line, column) = line_and_column(text, span.start);
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// A price book's TOML error as one line, in the price book's own terms where the
/// parser's words are not: a missing key names its plan or rate, `[rates]` (one table)
/// written for `[[rates]]` (one of many) and a string left open say so.
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let said = toml_error(text, e);
    let message = e.message();
    let headers = headers(text);
    let at = e.span().map(|span| line_and_column(text, span.start));
    let header = at.and_then(|(line, _)| headers.iter().find(|h| h.line == line));
    if let (Some(key), Some(header)) = (missing_key(message), header) {
        let (table, needs) = match &header.kind {
            HeaderKind::Rate(n) => (format!("[[rates]] #{n}"), "every rate needs"),
            HeaderKind::Plan(plan) => (format!("[plans.{plan}]"), "every plan needs"),
            HeaderKind::SingleRates | HeaderKind::Other => return said,
        };
        let (line, column) = (header.line, header.column);
        return format!("line {line}, column {column}: {table} has no `{key}`, which {needs}");
    }
    let single_rates = headers.iter().find(|h| h.kind == HeaderKind::SingleRates);
    let about_rates =
        message.contains("duplicate key `rates`") || message.contains("expected a sequence");
    if let (true, Some(single)) = (about_rates, single_rates) {
        return format!(
            "{said}; each rate is a table of its own, headed [[rates]] (two brackets), but \
             line {} has [rates]",
            single.line
        );
    }
    if message.contains("invalid basic string") || message.contains("invalid literal string") {
        let line_text = at
            .and_then(|(line, _)| text.lines().nth(line - 1))
            .unwrap_or("");
        // The parser says the same of a closed string holding a control character.
        let why = match line_text
            .chars()
            .any(|c| c.is_control() && c != '\t' && c != '\r')
        {
            true => {
                "a string on this line holds a control character (pasted with the text?): remove it"
            }
            false => "a string is not closed on this line (a missing quote)",
        };
        return format!("{said}; {why}");
    }
    said
}

/// The 1-based line and column of byte `at` of `text`.
fn line_and_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The key of serde's "missing field `key`".
fn missing_key(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// A table header of a price book, where it is and what it heads.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    line: usize,
    column: usize,
    kind: HeaderKind,
}

#[derive(Debug, PartialEq, Eq)]
enum HeaderKind {
    /// `[[rates]]`, the Nth (from 1, as the price book's other messages count rates).
    Rate(usize),
    /// `[plans.ID]` or a table under it (`[plans.ID.overage]`).
    Plan(String),
    /// `[rates]`: one table where every rate is an `[[rates]]` of its own.
    SingleRates,
    Other,
}

/// The table headers of `text`, read line by line: enough to name a table in a message
/// (the TOML parser has checked the syntax, or says what is wrong with it). Whitespace and
/// quotes in a header's keys are allowed (`[[ rates ]]`, `[plans."pro"]`); lines inside a
/// multi-line string are not headers.
fn headers(text: &str) -> Vec<Header> {
    let mut headers = Vec::new();
    let mut rates = 0;
    let mut open_multiline: Option<&str> = None;
    for (index, line) in text.lines().enumerate() {
        if open_multiline.is_none() {
            if let Some(kind) = header_kind(line, rates + 1) {
                rates += usize::from(matches!(kind, HeaderKind::Rate(_)));
                let column = line.len() - line.trim_start().len() + 1;
                headers.push(Header {
                    line: index + 1,
                    column,
                    kind,
                });
            }
        }
        for quotes in ["\"\"\"", "\'\'\'"] {
            if open_multiline.is_none_or(|open| open == quotes)
                && line.matches(quotes).count() % 2 == 1
            {
                open_multiline = match open_multiline {
                    Some(_) => None,
                    None => Some(quotes),
                };
            }
        }
    }
    headers
}

/// What `line` heads, if it is a table header (`next_rate`: the number an `[[rates]]` here
/// would have).
fn header_kind(line: &str, next_rate: usize) -> Option<HeaderKind> {
    let line = line.trim();
    let (array, inner) = if let Some(inner) = line.strip_prefix("[[") {
        (true, inner.split("]]").next()?)
    } else {
        (false, line.strip_prefix('[')?.split(']').next()?)
    };
    let keys: Vec<String> = inner
        .split('.')
        .map(|k| k.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        .collect();
    Some(match (array, keys.as_slice()) {
        (true, [rates]) if rates == "rates" => HeaderKind::Rate(next_rate),
        (false, [rates]) if rates == "rates" => HeaderKind::SingleRates,
        (false, [plans, plan, ..]) if plans == "plans" => HeaderKind::Plan(plan.clone()),
        _ => HeaderKind::Other,
    })
}

/// Plan `plan_id` of a price book in `currency` (its code and ISO 4217 exponent).
fn parse_plan(
    ctx: &Ctx,
    plan_id: &str,
    raw: RawPlan,
    (currency, exponent): (&str, u32),
) -> Result<Plan> {
    let at = |field: &str| format!("plans.{plan_id}.{field}");
    let price = ctx.non_negative(&at("price"), &raw.price)?;
    let minor = price
        .checked_mul(Decimal::from(10i64.pow(exponent)))
        .filter(|m| m.fract().is_zero())
        .and_then(|m| m.to_i64())
        .ok_or_else(|| {
            ctx.err(format!(
                "{} = {price} cannot be written in minor units of {currency} ({exponent} \
                 decimals)",
                at("price")
            ))
        })?;
    let included_credits = ctx.credits(&at("included_credits"), &raw.included_credits)?;
    let rollover_cap = match &raw.rollover_cap {
        Some(v) => ctx.credits(&at("rollover_cap"), v)?,
        None => Milli::ZERO,
    };
    let overage = match raw.overage {
        None => Overage::Block,
        Some(toml::Value::String(w)) if w == "block" => Overage::Block,
        Some(toml::Value::Table(t)) if t.len() == 1 && t.contains_key("price_per_credit") => {
            Overage::PricePerCredit(
                ctx.non_negative(&at("overage.price_per_credit"), &t["price_per_credit"])?,
            )
        }
        Some(other) => {
            return Err(ctx.err(format!(
                "{} = {other} is not valid; use \"block\" or {{ price_per_credit = \"0.05\" }}",
                at("overage")
            )))
        }
    };
    Ok(Plan {
        plan_id: plan_id.into(),
        name: raw.name.unwrap_or_else(|| plan_id.to_string()),
        price,
        price_minor: minor,
        included_credits,
        refresh: raw.refresh.unwrap_or(true),
        rollover_cap,
        overage,
    })
}

fn parse_rate(ctx: &Ctx, index: usize, raw: RawRate) -> Result<(RateKey, Rate)> {
    let at = |field: &str| format!("[[rates]] #{}: {field}", index + 1);
    let credits_per_unit = ctx.non_negative(&at("credits_per_unit"), &raw.credits_per_unit)?;
    let increment = match &raw.increment {
        Some(v) => ctx.decimal(&at("increment"), v)?,
        None => Decimal::ONE,
    };
    if increment <= Decimal::ZERO {
        return Err(ctx.err(format!("{} = {increment} must be > 0", at("increment"))));
    }
    let minimum = match &raw.minimum {
        Some(v) => ctx.non_negative(&at("minimum"), v)?,
        None => Decimal::ZERO,
    };
    // A credit amount holds less than 10^15 (DECIMAL(18,3)). A rate whose minimum, or whose
    // one increment, costs that much prices no event (of a quantity above 0) within it: the
    // run would stop at the first such event, blaming the event's row for the rate's digits.
    let limit = Decimal::from(1_000_000_000_000_000_i64);
    if minimum >= limit {
        return Err(ctx.err(format!(
            "{} = {minimum} {PAST_CREDITS}: every event this rate prices would overflow; correct the \
             rate's minimum",
            at("minimum")
        )));
    }
    let one_increment = increment.checked_mul(credits_per_unit);
    if one_increment.is_none_or(|credits| credits >= limit) {
        return Err(ctx.err(format!(
            "{} × credits_per_unit = {increment} × {credits_per_unit} {PAST_CREDITS}: every event of \
             this rate with a quantity above 0 would overflow; correct the rate's increment or \
             credits_per_unit",
            at("increment")
        )));
    }
    let effective_from = ctx.instant(&at("effective_from"), &raw.effective_from)?;
    if let Some(unit) = raw.unit.as_ref().filter(|unit| unit.contains(';')) {
        // report/credits-by-product.csv joins a line's units with `;`.
        return Err(ctx.err(format!(
            "{} = {unit:?} holds `;`, which the report uses to join a line's units; name the \
             unit without it",
            at("unit")
        )));
    }
    let model = raw.model.filter(|m| !m.is_empty());
    Ok((
        (raw.product, raw.action, model),
        Rate {
            unit: raw.unit.unwrap_or_default(),
            credits_per_unit,
            increment,
            minimum,
            effective_from,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A price book the user running tally cannot read says so, with what to check (as an
    /// unreadable dataset file does); other causes keep the operating system's words.
    #[test]
    fn an_unreadable_price_book_says_what_to_check() {
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(
            unreadable("data/pricebook.toml", &denied).to_string(),
            "data/pricebook.toml: cannot read: Permission denied (os error 13); the user \
             running tally cannot read it: check its owner and mode, and its folders'"
        );
        let io = std::io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(
            unreadable("p.toml", &io).to_string(),
            "p.toml: cannot read: Input/output error (os error 5)"
        );
    }

    const BOOK: &str = r#"
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
model = "veo-3"
credits_per_unit = "8"
increment = "4"
effective_from = 2026-06-01T00:00:00Z
"#;

    #[test]
    fn plan_defaults_follow_the_contract() {
        let book = PriceBook::parse(BOOK, "pricebook.toml").unwrap();
        let pro = &book.plans["pro"];
        assert_eq!(pro.price_minor, 999);
        assert!(pro.refresh);
        assert_eq!(pro.rollover_cap, Milli::ZERO);
        assert_eq!(pro.overage, Overage::Block);
    }

    #[test]
    fn model_rate_falls_back_to_generic_before_it_is_effective() {
        let book = PriceBook::parse(BOOK, "pricebook.toml").unwrap();
        let may = parse_instant("2026-05-01T00:00:00Z").unwrap();
        let july = parse_instant("2026-07-01T00:00:00Z").unwrap();
        let r = book
            .lookup("studio", "prompt_to_video", Some("veo-3"), may)
            .unwrap();
        assert_eq!(r.increment, Decimal::ONE);
        let r = book
            .lookup("studio", "prompt_to_video", Some("veo-3"), july)
            .unwrap();
        assert_eq!(r.increment, Decimal::from(4));
        let dec_2025 = parse_instant("2025-12-31T23:59:59Z").unwrap();
        assert!(book
            .lookup("studio", "prompt_to_video", None, dec_2025)
            .is_none());
    }

    #[test]
    fn bad_books_name_the_problem() {
        let no_currency = BOOK.replace("currency = \"USD\"", "");
        let e = PriceBook::parse(&no_currency, "p.toml").unwrap_err();
        assert!(
            e.to_string().starts_with("p.toml: `currency` is required"),
            "{e}"
        );
        let dup = format!(
            "{BOOK}\n[[rates]]\nproduct = \"studio\"\naction = \"prompt_to_video\"\ncredits_per_unit = \"9\"\neffective_from = 2026-01-01T00:00:00Z\n"
        );
        let e = PriceBook::parse(&dup, "p.toml").unwrap_err();
        assert!(e.to_string().contains("[[rates]] #3 repeats #1"), "{e}");
        let jpy = BOOK.replace("USD", "JPY");
        let e = PriceBook::parse(&jpy, "p.toml").unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot be written in minor units of JPY (0 decimals)"),
            "{e}"
        );
    }

    /// A rate's minimum and one increment (increment × credits_per_unit) must stay below
    /// 10^15 credits, what a credit amount holds: at the limit's last thousandth they are
    /// read, at 10^15 refused. The contract: "credits = max(minimum, ceil(quantity /
    /// increment) × increment × credits_per_unit)" (section 3), and "Credits are written as
    /// DECIMAL(18,3)" (section 6): any quantity above 0 costs at least one increment, so a
    /// rate past either bound prices no such event within what can be written. (Stricter
    /// than the contract for quantity-0 events, which cost the minimum alone: README,
    /// "Inputs".)
    #[test]
    fn a_rates_minimum_and_one_increment_stay_below_10_to_the_15_credits() {
        let veo = |increment: &str, cpu: &str, minimum: &str| {
            let book = BOOK
                .replace(
                    "increment = \"4\"",
                    &format!("increment = \"{increment}\"\nminimum = \"{minimum}\""),
                )
                .replacen(
                    "model = \"veo-3\"\ncredits_per_unit = \"8\"",
                    &format!("model = \"veo-3\"\ncredits_per_unit = \"{cpu}\""),
                    1,
                );
            assert_ne!(book, BOOK);
            PriceBook::parse(&book, "p.toml")
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert_eq!(veo("4", "8", "999999999999999.999"), Ok(()));
        let minimum = veo("4", "8", "1000000000000000").unwrap_err();
        assert!(
            minimum.contains("[[rates]] #2: minimum = 1000000000000000 is 10^15 credits or more"),
            "{minimum}"
        );
        assert_eq!(veo("0.001", "999999999999999999", "0"), Ok(()));
        let increment = veo("0.001", "1000000000000000000", "0").unwrap_err();
        assert!(
            increment.contains("[[rates]] #2: increment × credits_per_unit = 0.001 × 1000000000000000000 is 10^15 credits or more"),
            "{increment}"
        );
    }

    /// A plan's `included_credits` and `rollover_cap` may be 999999999999999.999 credits;
    /// 10^15, or a value that rounds to it, is refused naming the key. The contract: "Credits
    /// are written as DECIMAL(18,3)" (section 6), whose largest value that is, and the
    /// included credits reach the outputs (`renewals.next_included_credits`).
    #[test]
    fn a_plans_credits_stay_below_10_to_the_15() {
        let plan = |included: &str, cap: &str| {
            let book = BOOK.replacen(
                "included_credits = \"200\"",
                &format!("included_credits = \"{included}\"\nrollover_cap = \"{cap}\""),
                1,
            );
            assert_ne!(book, BOOK);
            PriceBook::parse(&book, "p.toml")
                .map(|book| {
                    let pro = &book.plans["pro"];
                    (
                        pro.included_credits.to_string(),
                        pro.rollover_cap.to_string(),
                    )
                })
                .map_err(|e| e.to_string())
        };
        let most = "999999999999999.999";
        assert_eq!(plan(most, most), Ok((most.to_string(), most.to_string())));
        let past = PAST_CREDITS;
        assert_eq!(
            plan("1000000000000000", "0"),
            Err(format!(
                "p.toml: plans.pro.included_credits = 1000000000000000 {past}"
            ))
        );
        assert_eq!(
            plan("0", "999999999999999.9995"),
            Err(format!(
                "p.toml: plans.pro.rollover_cap = 999999999999999.9995 {past}"
            ))
        );
    }

    /// A decimal that is not one says how to write it: an unquoted TOML float as a string,
    /// a string by what it may hold (a comma, an exponent or `_` was told to write it as the
    /// string it already was).
    #[test]
    fn a_decimal_that_is_not_one_says_how_to_write_it() {
        let refused = |price: &str| {
            let book = BOOK.replacen("price = \"9.99\"", &format!("price = {price}"), 1);
            assert_ne!(book, BOOK);
            PriceBook::parse(&book, "p.toml").unwrap_err().to_string()
        };
        assert_eq!(
            refused("9.99"),
            "p.toml: plans.pro.price = 9.99 is not a decimal; write it as a string such as \
             \"9.99\""
        );
        for text in ["\"9,99\"", "\"9.9e1\"", "\"9_99\""] {
            assert_eq!(
                refused(text),
                format!(
                    "p.toml: plans.pro.price = {text} is not a decimal: digits with an optional \
                     sign and one `.` before the fraction, such as \"9.99\" (no `,`, `_`, \
                     exponent or spaces inside)"
                )
            );
        }
    }

    /// A missing key names its plan or rate (counted from 1, a comment after the header
    /// allowed); a rate's single-bracket header and an open string say so; other parser
    /// errors keep the parser's words.
    #[test]
    fn toml_errors_are_said_in_the_price_books_terms() {
        let refused = |text: String| PriceBook::parse(&text, "p.toml").unwrap_err().to_string();
        assert_eq!(
            refused(BOOK.replace("price = \"9.99\"\n", "")),
            "p.toml: line 3, column 1: [plans.pro] has no `price`, which every plan needs"
        );
        assert_eq!(
            refused(
                BOOK.replace("credits_per_unit = \"8\"\nincrement", "increment")
                    .replacen("[[rates]]", "[[rates]]  # generic", 1)
            ),
            "p.toml: line 12, column 1: [[rates]] #2 has no `credits_per_unit`, which every \
             rate needs"
        );
        assert_eq!(
            refused(BOOK.replacen("[[rates]]", "[rates]", 1)),
            "p.toml: line 12, column 1: invalid table header duplicate key `rates` in document \
             root; each rate is a table of its own, headed [[rates]] (two brackets), but line 6 \
             has [rates]"
        );
        assert_eq!(
            refused(BOOK.replace("\"9.99\"", "\"9.99")),
            "p.toml: line 4, column 14: invalid basic string; a string is not closed on this \
             line (a missing quote)"
        );
        // Rates counted whatever the header's spacing or quotes, not inside a multi-line
        // string; an indented header's own column.
        let spaced = BOOK
            .replacen("[[rates]]", "[[ \"rates\" ]]", 1)
            .replace(
                "[plans.pro]",
                "[plans.pro]\nname = \"\"\"\n[[rates]]\n\"\"\"",
            )
            .replace("credits_per_unit = \"8\"\nincrement", "increment")
            .replace(
                "[[rates]]\nproduct = \"studio\"\naction = \"prompt_to_video\"\nmodel",
                "  [[rates]]\nproduct = \"studio\"\naction = \"prompt_to_video\"\nmodel",
            );
        assert_eq!(
            refused(spaced),
            "p.toml: line 15, column 3: [[rates]] #2 has no `credits_per_unit`, which every \
             rate needs"
        );
        // A plan written only through a table under it is named as the plan.
        assert_eq!(
            refused(BOOK.replace(
                "[plans.pro]\nprice = \"9.99\"\nincluded_credits = \"200\"\n",
                "[plans.pro.overage]\nprice_per_credit = \"1\"\n"
            )),
            "p.toml: line 3, column 1: [plans.pro] has no `price`, which every plan needs"
        );
        // The [rates] hint only where the error is about rates; a control character in a
        // closed string is not called a missing quote.
        assert_eq!(
            refused(
                BOOK.replace("[plans.pro]", "[plans.pro]\nname = \"\"\"\n[rates]\n\"\"\"")
                    .replace("\"9.99\"", "\"9.99")
            ),
            "p.toml: line 7, column 14: invalid basic string; a string is not closed on this \
             line (a missing quote)"
        );
        assert_eq!(
            refused(BOOK.replace("\"9.99\"", "\"9.\u{1}99\"")),
            "p.toml: line 4, column 12: invalid basic string; a string on this line holds a \
             control character (pasted with the text?): remove it"
        );
        assert_eq!(
            refused(BOOK.replace("[plans.pro]", "[plans.pro]\nname = 3")),
            "p.toml: line 4, column 8: invalid type: integer `3`, expected a string"
        );
        // A table is named as the book's reader knows it, not by its Rust type.
        assert_eq!(
            refused(BOOK.replace("[plans.pro]", "[plans]\nfree = 0\n[plans.pro]")),
            "p.toml: line 4, column 8: invalid type: integer `0`, expected a plan's table, \
             [plans.<id>] with its keys on the lines below"
        );
        assert_eq!(
            refused(format!("rates = [1]\n{BOOK}").replace("[[rates]]", "[[more]]")),
            "p.toml: line 1, column 10: invalid type: integer `1`, expected a rate's table, \
             headed [[rates]], with its keys on the lines below"
        );
    }

    /// A price book of 64 MiB is read (here a valid book padded with a comment); one byte
    /// more is refused before it is parsed.
    #[test]
    fn a_price_book_is_read_up_to_64_mib_and_one_byte_more_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pricebook.toml");
        let padded = |bytes: u64| {
            let pad = bytes as usize - BOOK.len() - 2;
            format!("{BOOK}#{}\n", "x".repeat(pad))
        };
        let at_limit = padded(MAX_PRICEBOOK_BYTES);
        assert_eq!(at_limit.len() as u64, MAX_PRICEBOOK_BYTES);
        std::fs::write(&path, &at_limit).unwrap();
        let reading = PriceBook::read(&path, "p.toml").unwrap();
        assert_eq!(
            reading.sha256,
            crate::write::sha256_hex(at_limit.as_bytes())
        );
        std::fs::write(&path, padded(MAX_PRICEBOOK_BYTES + 1)).unwrap();
        assert_eq!(
            PriceBook::read(&path, "p.toml").unwrap_err().to_string(),
            "p.toml: is larger than 64 MiB: not a price book (a price book is a TOML file of \
             plans and rates, a few hundred lines)"
        );
    }

    /// A rate's `effective_from` is in the years an input's instants may hold, 0001 to
    /// 9999 (at both ends and one past); its unit holds no `;`, which the report's
    /// credits-by-product.csv uses to join a line's units.
    #[test]
    fn a_rates_effective_from_and_unit_are_what_outputs_can_write() {
        let with_from = |from: &str| {
            BOOK.replace(
                "effective_from = 2026-01-01T00:00:00Z",
                &format!("effective_from = {from}"),
            )
        };
        for within in ["0001-01-01T00:00:00Z", "\"9999-12-31T23:59:59.999999Z\""] {
            assert!(
                PriceBook::parse(&with_from(within), "p.toml").is_ok(),
                "{within}"
            );
        }
        for (past, shown, utc) in [
            (
                "0000-12-31T23:59:59Z",
                "0000-12-31T23:59:59Z",
                "0000-12-31T23:59:59Z",
            ),
            // In the years as written, not in UTC.
            (
                "0001-01-01T00:00:00+01:00",
                "0001-01-01T00:00:00+01:00",
                "0000-12-31T23:00:00Z",
            ),
            (
                "\"+10000-01-01T00:00:00\"",
                "+10000-01-01T00:00:00",
                "+10000-01-01T00:00:00Z",
            ),
            (
                "\"-0001-01-01T00:00:00\"",
                "-0001-01-01T00:00:00",
                "-0001-01-01T00:00:00Z",
            ),
        ] {
            assert_eq!(
                PriceBook::parse(&with_from(past), "p.toml")
                    .unwrap_err()
                    .to_string(),
                format!(
                    "p.toml: [[rates]] #1: effective_from = {shown} is outside the years 0001 \
                     to 9999 (in UTC: {utc})"
                ),
                "{past}"
            );
        }
        let with_unit = |unit: &str| BOOK.replace("unit = \"second\"", &format!("unit = {unit:?}"));
        assert!(PriceBook::parse(&with_unit("second, 720p"), "p.toml").is_ok());
        assert_eq!(
            PriceBook::parse(&with_unit("second;720p"), "p.toml")
                .unwrap_err()
                .to_string(),
            "p.toml: [[rates]] #1: unit = \"second;720p\" holds `;`, which the report uses to \
             join a line's units; name the unit without it"
        );
    }

    /// Every unit of the book, sorted and each once, empty ones left out (the order of a
    /// breakdown line's unit bits).
    #[test]
    fn all_units_are_sorted_and_distinct() {
        let book = BOOK.replace(
            "model = \"veo-3\"\ncredits_per_unit",
            "model = \"veo-3\"\nunit = \"clip\"\ncredits_per_unit",
        );
        assert_eq!(
            PriceBook::parse(&book, "p.toml").unwrap().all_units(),
            ["clip", "second"]
        );
        // The veo-3 rate of BOOK has no unit: it is left out.
        assert_eq!(
            PriceBook::parse(BOOK, "p.toml").unwrap().all_units(),
            ["second"]
        );
    }

    /// Exponents are ISO 4217's, including those that are not 2; a code outside the
    /// standard, or one without a minor unit, has none. Contract section 2: `currency =
    /// "USD"  # ISO 4217; money is written in minor units (cents)` — so a code is one of
    /// ISO 4217's, and one with no minor unit cannot be written.
    #[test]
    fn currency_exponents_are_iso_4217s() {
        let cases = [
            ("USD", Ok(2)),
            ("EUR", Ok(2)),
            ("JPY", Ok(0)),
            ("KRW", Ok(0)),
            ("BHD", Ok(3)),
            ("KWD", Ok(3)),
            ("CLF", Ok(4)),
            ("UYW", Ok(4)),
            ("UDS", Err(CurrencyError::NotIso4217)),
            ("ANG", Err(CurrencyError::NotIso4217)),
            ("usd", Err(CurrencyError::NotACode)),
            ("US", Err(CurrencyError::NotACode)),
            ("USDX", Err(CurrencyError::NotACode)),
            (" USD", Err(CurrencyError::NotACode)),
            ("", Err(CurrencyError::NotACode)),
            ("XAU", Err(CurrencyError::NoMinorUnit)),
            ("XDR", Err(CurrencyError::NoMinorUnit)),
            ("XTS", Err(CurrencyError::NoMinorUnit)),
            // Withdrawn codes are still codes (with a warning): a rerun of an old month.
            ("HRK", Ok(2)),
        ];
        for (code, exponent) in cases {
            assert_eq!(currency_exponent(code), exponent, "{code}");
        }
        assert_eq!(superseded_by("HRK"), Some("EUR"));
        assert_eq!(superseded_by("USD"), None);
        assert_eq!(superseded_by("UDS"), None);
    }
}
