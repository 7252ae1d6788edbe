//! Bad input at scale: corrupt a generated data root and check that tally rejects exactly
//! the bad rows with the contract's reasons (section 7, validation order), leaves every good
//! row alone, and stops with exit 2 on a bad file.
//!
//! `bad_rows_are_rejected_exactly_and_good_rows_are_untouched` adds dozens of Parquet files
//! of seeded random bad rows (≥ 10,000) to a generated root, in varied physical encodings
//! (DECIMAL(18,3), DECIMAL(38,6), DOUBLE, INT64 amounts; ms/µs/ns timestamps with and
//! without zones; UTF8, LargeUTF8 and dictionary strings; several row groups; nullable
//! columns left out; extra columns; reordered columns). A small model of the contract's
//! checks, dedup and window computes what each row must become; the test compares it with
//! `rejects.parquet`, `summary.json`, `balances.parquet` and `discrepancies.parquet`.
//! Set `CORRUPT_SEED=N` to try another seed.
//!
//! `each_bad_file_alone_stops_the_run_with_exit_2_naming_it` puts one bad file at a time
//! (zero bytes, truncated, broken footer, not Parquet, missing or mistyped column) into a
//! good root and expects exit 2, one stderr line naming the file, and nothing published.
//! `flipped_bytes_never_crash_the_run` flips single bytes of a good file: tally may read
//! it (exit 0) or refuse it (exit 2 naming it), but never crashes.

use crate::common::*;
use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    DictionaryArray, Float32Array, Float64Array, Int32Array, Int64Array, LargeStringArray,
    ListArray, NullArray, StringArray, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, UInt64Array,
};
use arrow::datatypes::{
    DataType, Decimal128Type, Field, Int32Type, Schema, TimeUnit, TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use tally::amount::Milli;
use tally::time::{format_instant, parse_instant};

const AS_OF: &str = "2026-11-20T00:00:00Z";
/// 0001-01-01T00:00:00Z and 10000-01-01T00:00:00Z in µs: valid instants are in [MIN, MAX).
const MIN_US: i64 = -62_135_596_800_000_000;
const MAX_US: i64 = 253_402_300_800_000_000;
const DAY_US: i64 = 86_400_000_000;
/// Amounts at or beyond 10^15 units are `bad_value`, in thousandths.
const AMOUNT_LIMIT: i128 = 1_000_000_000_000_000_000;

fn t(s: &str) -> i64 {
    parse_instant(s).unwrap()
}

/// Keep a shifted instant inside years 0001..=9999 (ms-aligned).
fn valid_at(x: i64) -> Ts {
    Ts::At(x.clamp(MIN_US, MAX_US - 1000))
}

// ---- a tiny seeded PRNG ----------------------------------------------------------------

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Uniform in lo..=hi.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }
}

// ---- cells: what a test writes, independent of the physical type ------------------------

/// An amount as written.
#[derive(Clone, Debug, PartialEq)]
enum Num {
    /// Exact thousandths (encodable in every amount type that can hold it).
    Milli(i64),
    /// A DOUBLE, with the thousandths it must read as (None: `bad_value`).
    F64(f64, Option<i64>),
    /// A DECIMAL(38, 6) unscaled value.
    Dec6(i128),
    /// An INT64 of whole units.
    Int(i64),
}

/// An instant as written.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ts {
    /// A valid instant, µs.
    At(i64),
    /// An instant outside years 0001..=9999, µs (multiple of 1000).
    Range(i64),
    /// A raw value whose conversion to µs overflows (or lands outside the range).
    Overflow(bool),
}

#[derive(Clone, Debug, PartialEq)]
enum Cell {
    Null,
    S(String),
    N(Num),
    T(Ts),
    I(i128),
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Str,
    Num,
    Ts,
    Int,
}

#[derive(Clone, Copy)]
struct Spec {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn sp(name: &'static str, kind: Kind, required: bool) -> Spec {
    Spec {
        name,
        kind,
        required,
    }
}

const USAGE: [Spec; 9] = [
    sp("event_id", Kind::Str, true),
    sp("account_id", Kind::Str, true),
    sp("product", Kind::Str, true),
    sp("action", Kind::Str, true),
    sp("model", Kind::Str, false),
    sp("quantity", Kind::Num, true),
    sp("status", Kind::Str, true),
    sp("occurred_at", Kind::Ts, true),
    sp("ingested_at", Kind::Ts, false),
];
const ALLOCATIONS: [Spec; 7] = [
    sp("account_id", Kind::Str, true),
    sp("plan_id", Kind::Str, true),
    sp("period_start", Kind::Ts, true),
    sp("period_end", Kind::Ts, true),
    sp("included_credits", Kind::Num, true),
    sp("billing_anchor", Kind::Ts, false),
    sp("status", Kind::Str, true),
];
const GRANTS: [Spec; 7] = [
    sp("grant_id", Kind::Str, true),
    sp("account_id", Kind::Str, true),
    sp("kind", Kind::Str, true),
    sp("credits", Kind::Num, true),
    sp("effective_at", Kind::Ts, true),
    sp("expires_at", Kind::Ts, false),
    sp("priority", Kind::Int, false),
];
const DEBITS: [Spec; 6] = [
    sp("entry_id", Kind::Str, true),
    sp("account_id", Kind::Str, true),
    sp("event_id", Kind::Str, false),
    sp("kind", Kind::Str, true),
    sp("credits", Kind::Num, true),
    sp("recorded_at", Kind::Ts, true),
];

// Column indices.
const U_EVENT: usize = 0;
const U_ACCOUNT: usize = 1;
const U_PRODUCT: usize = 2;
const U_ACTION: usize = 3;
const U_MODEL: usize = 4;
const U_QTY: usize = 5;
const U_STATUS: usize = 6;
const U_OCC: usize = 7;
const U_ING: usize = 8;
const A_ACCOUNT: usize = 0;
const A_PLAN: usize = 1;
const A_START: usize = 2;
const A_END: usize = 3;
const A_CREDITS: usize = 4;
const A_ANCHOR: usize = 5;
const A_STATUS: usize = 6;
const G_ID: usize = 0;
const G_ACCOUNT: usize = 1;
const G_KIND: usize = 2;
const G_CREDITS: usize = 3;
const G_EFF: usize = 4;
const G_EXP: usize = 5;
const G_PRIO: usize = 6;
const D_ID: usize = 0;
const D_ACCOUNT: usize = 1;
const D_EVENT: usize = 2;
const D_KIND: usize = 3;
const D_CREDITS: usize = 4;
const D_REC: usize = 5;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Ds {
    Usage,
    Allocations,
    Grants,
    Debits,
}

impl Ds {
    const ALL: [Ds; 4] = [Ds::Usage, Ds::Allocations, Ds::Grants, Ds::Debits];
    fn name(self) -> &'static str {
        match self {
            Ds::Usage => "usage",
            Ds::Allocations => "allocations",
            Ds::Grants => "grants",
            Ds::Debits => "debits",
        }
    }
    fn specs(self) -> &'static [Spec] {
        match self {
            Ds::Usage => &USAGE,
            Ds::Allocations => &ALLOCATIONS,
            Ds::Grants => &GRANTS,
            Ds::Debits => &DEBITS,
        }
    }
}

// ---- physical encodings ----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum NumType {
    Dec18s3,
    Dec38s6,
    F64,
    I64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum StrType {
    Utf8,
    Large,
    Dict,
}

#[derive(Clone, Debug)]
struct Profile {
    num: NumType,
    unit: TimeUnit,
    tz: Option<&'static str>,
    strings: StrType,
    /// priority as Int32 (false) or UInt64 (true)
    unsigned: bool,
    /// nullable columns left out of the file
    omit: Vec<&'static str>,
    extra: bool,
    reverse: bool,
    row_group: usize,
    compression: Compression,
    dictionary: bool,
}

fn random_profile(rng: &mut SplitMix, ds: Ds) -> Profile {
    let omit = ds
        .specs()
        .iter()
        .filter(|s| !s.required)
        .filter(|_| rng.chance(15))
        .map(|s| s.name)
        .collect();
    Profile {
        num: rng.pick(&[
            NumType::Dec18s3,
            NumType::Dec38s6,
            NumType::F64,
            NumType::F64,
            NumType::I64,
        ]),
        unit: rng.pick(&[
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
            TimeUnit::Microsecond,
            TimeUnit::Nanosecond,
        ]),
        tz: rng.pick(&[None, Some("UTC"), Some("+05:30"), Some("-08:00")]),
        strings: rng.pick(&[StrType::Utf8, StrType::Large, StrType::Dict]),
        unsigned: rng.chance(40),
        omit,
        extra: rng.chance(30),
        reverse: rng.chance(30),
        row_group: rng.pick(&[37, 100, 256, 1 << 20]),
        compression: rng.pick(&[
            Compression::UNCOMPRESSED,
            Compression::SNAPPY,
            Compression::ZSTD(ZstdLevel::default()),
            Compression::GZIP(GzipLevel::default()),
            Compression::LZ4_RAW,
            Compression::BROTLI(BrotliLevel::default()),
        ]),
        dictionary: rng.chance(50),
    }
}

enum RawNum {
    Dec(i128),
    F(f64),
    I(i64),
}

fn num_raw(n: &Num, ty: NumType) -> Option<RawNum> {
    match (n, ty) {
        (Num::Milli(m), NumType::Dec18s3) => Some(RawNum::Dec(i128::from(*m))),
        (Num::Milli(m), NumType::Dec38s6) => Some(RawNum::Dec(i128::from(*m) * 1000)),
        (Num::Milli(m), NumType::F64) if m.abs() < 1 << 50 => Some(RawNum::F(*m as f64 / 1e3)),
        (Num::Milli(m), NumType::I64) if m % 1000 == 0 => Some(RawNum::I(m / 1000)),
        (Num::F64(x, _), NumType::F64) => Some(RawNum::F(*x)),
        (Num::Dec6(u), NumType::Dec38s6) => Some(RawNum::Dec(*u)),
        (Num::Int(v), NumType::I64) => Some(RawNum::I(*v)),
        _ => None,
    }
}

/// The sub-µs part written into a nanosecond timestamp (floored away by tally).
fn noise(row: usize, col: usize) -> i64 {
    ((row * 7919 + col * 131) % 1000) as i64
}

fn ts_raw(ts: Ts, unit: TimeUnit, noise: i64) -> Option<i64> {
    match (ts, unit) {
        (Ts::At(v) | Ts::Range(v), TimeUnit::Millisecond) => (v % 1000 == 0).then_some(v / 1000),
        (Ts::At(v) | Ts::Range(v), TimeUnit::Microsecond) => Some(v),
        (Ts::At(v), TimeUnit::Nanosecond) => v.checked_mul(1000)?.checked_add(noise),
        (Ts::Overflow(negative), TimeUnit::Millisecond | TimeUnit::Microsecond) => {
            Some(if negative { i64::MIN } else { i64::MAX })
        }
        _ => None,
    }
}

fn int_fits(v: i128, unsigned: bool) -> bool {
    if unsigned {
        u64::try_from(v).is_ok()
    } else {
        i32::try_from(v).is_ok()
    }
}

fn encodable(row: &[Cell], ds: Ds, p: &Profile, index: usize) -> bool {
    ds.specs()
        .iter()
        .zip(row)
        .enumerate()
        .all(|(col, (spec, cell))| match (spec.kind, cell) {
            (_, Cell::Null) => true,
            (Kind::Str, Cell::S(_)) => true,
            (Kind::Num, Cell::N(n)) => num_raw(n, p.num).is_some(),
            (Kind::Ts, Cell::T(ts)) => ts_raw(*ts, p.unit, noise(index, col)).is_some(),
            (Kind::Int, Cell::I(v)) => int_fits(*v, p.unsigned),
            _ => panic!("cell {cell:?} in a {:?} column", spec.kind),
        })
}

fn column(kind: Kind, cells: &[&Cell], p: &Profile, col: usize) -> ArrayRef {
    match kind {
        Kind::Str => {
            let v: Vec<Option<&str>> = cells
                .iter()
                .map(|c| match c {
                    Cell::S(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect();
            match p.strings {
                StrType::Utf8 => Arc::new(StringArray::from(v)),
                StrType::Large => Arc::new(LargeStringArray::from(v)),
                StrType::Dict => Arc::new(v.into_iter().collect::<DictionaryArray<Int32Type>>()),
            }
        }
        Kind::Num => {
            let raw: Vec<Option<RawNum>> = cells
                .iter()
                .map(|c| match c {
                    Cell::N(n) => Some(num_raw(n, p.num).unwrap()),
                    _ => None,
                })
                .collect();
            let dec = |v: &Option<RawNum>| match v {
                Some(RawNum::Dec(d)) => Some(*d),
                _ => None,
            };
            match p.num {
                NumType::Dec18s3 => Arc::new(
                    raw.iter()
                        .map(dec)
                        .collect::<Decimal128Array>()
                        .with_precision_and_scale(18, 3)
                        .unwrap(),
                ),
                NumType::Dec38s6 => Arc::new(
                    raw.iter()
                        .map(dec)
                        .collect::<Decimal128Array>()
                        .with_precision_and_scale(38, 6)
                        .unwrap(),
                ),
                NumType::F64 => Arc::new(
                    raw.iter()
                        .map(|v| match v {
                            Some(RawNum::F(f)) => Some(*f),
                            _ => None,
                        })
                        .collect::<Float64Array>(),
                ),
                NumType::I64 => Arc::new(
                    raw.iter()
                        .map(|v| match v {
                            Some(RawNum::I(i)) => Some(*i),
                            _ => None,
                        })
                        .collect::<Int64Array>(),
                ),
            }
        }
        Kind::Ts => {
            let v: Vec<Option<i64>> = cells
                .iter()
                .enumerate()
                .map(|(row, c)| match c {
                    Cell::T(ts) => Some(ts_raw(*ts, p.unit, noise(row, col)).unwrap()),
                    _ => None,
                })
                .collect();
            match p.unit {
                TimeUnit::Millisecond => {
                    Arc::new(TimestampMillisecondArray::from(v).with_timezone_opt(p.tz))
                }
                TimeUnit::Microsecond => {
                    Arc::new(TimestampMicrosecondArray::from(v).with_timezone_opt(p.tz))
                }
                _ => Arc::new(TimestampNanosecondArray::from(v).with_timezone_opt(p.tz)),
            }
        }
        Kind::Int => {
            let v = cells.iter().map(|c| match c {
                Cell::I(i) => Some(*i),
                _ => None,
            });
            if p.unsigned {
                Arc::new(
                    v.map(|i| i.map(|i| u64::try_from(i).unwrap()))
                        .collect::<UInt64Array>(),
                )
            } else {
                Arc::new(
                    v.map(|i| i.map(|i| i32::try_from(i).unwrap()))
                        .collect::<Int32Array>(),
                )
            }
        }
    }
}

fn encode(rows: &[Vec<Cell>], ds: Ds, p: &Profile) -> RecordBatch {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (col, spec) in ds.specs().iter().enumerate() {
        if p.omit.contains(&spec.name) {
            continue;
        }
        let cells: Vec<&Cell> = rows.iter().map(|r| &r[col]).collect();
        let array = column(spec.kind, &cells, p, col);
        fields.push(Field::new(spec.name, array.data_type().clone(), true));
        columns.push(array);
    }
    if p.extra {
        // Extra columns are ignored, also one named like a contract column in other case.
        let upper = ds.specs()[0].name.to_uppercase();
        for name in ["note", upper.as_str()] {
            let junk: StringArray = (0..rows.len()).map(|i| Some(format!("x{i}"))).collect();
            fields.push(Field::new(name, DataType::Utf8, true));
            columns.push(Arc::new(junk));
        }
    }
    if p.reverse {
        fields.reverse();
        columns.reverse();
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

fn parquet_bytes(batch: &RecordBatch, p: Option<&Profile>) -> Vec<u8> {
    let mut props = WriterProperties::builder();
    if let Some(p) = p {
        props = props
            .set_compression(p.compression)
            .set_max_row_group_row_count(Some(p.row_group))
            .set_dictionary_enabled(p.dictionary);
    }
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props.build())).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
    out
}

fn write_file(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

// ---- what tally must see in a cell -------------------------------------------------------

enum Seen<T> {
    Null,
    Bad,
    Ok(T),
}

fn half_even(num: i128, den: i128) -> i128 {
    let (q, r) = (num.div_euclid(den), num.rem_euclid(den));
    if 2 * r > den || (2 * r == den && q % 2 != 0) {
        q + 1
    } else {
        q
    }
}

fn seen(cell: &Cell) -> Seen<i128> {
    let ok_amount = |m: i128| {
        if m.abs() < AMOUNT_LIMIT {
            Seen::Ok(m)
        } else {
            Seen::Bad
        }
    };
    match cell {
        Cell::Null => Seen::Null,
        Cell::S(s) if s.len() > 4096 => Seen::Bad,
        Cell::S(_) => Seen::Ok(0),
        Cell::N(Num::Milli(m)) => ok_amount(i128::from(*m)),
        Cell::N(Num::F64(_, m)) => m.map_or(Seen::Bad, |m| Seen::Ok(i128::from(m))),
        Cell::N(Num::Dec6(u)) => ok_amount(half_even(*u, 1000)),
        Cell::N(Num::Int(v)) => ok_amount(i128::from(*v) * 1000),
        Cell::T(Ts::At(v)) => {
            assert!((MIN_US..MAX_US).contains(v));
            Seen::Ok(i128::from(*v))
        }
        Cell::T(_) => Seen::Bad,
        // Integer cells are grant priorities: they must fit 32 bits (grants_next's INT32).
        Cell::I(v) if i32::try_from(*v).is_ok() => Seen::Ok(*v),
        Cell::I(_) => Seen::Bad,
    }
}

fn s(row: &[Cell], i: usize) -> Option<String> {
    match &row[i] {
        Cell::S(s) => Some(s.clone()),
        _ => None,
    }
}

/// The value of a valid amount, instant or integer cell.
fn v(row: &[Cell], i: usize) -> Option<i64> {
    match seen(&row[i]) {
        Seen::Ok(v) => Some(i64::try_from(v).unwrap()),
        _ => None,
    }
}

/// (reason, a word the reject's detail must contain)
type Why = (&'static str, &'static str);

/// null_required, then bad_value, in column order.
fn row_level(row: &[Cell], ds: Ds) -> Result<(), Why> {
    for (spec, cell) in ds.specs().iter().zip(row) {
        if spec.required && matches!(cell, Cell::Null) {
            return Err(("null_required", spec.name));
        }
    }
    for (spec, cell) in ds.specs().iter().zip(row) {
        if matches!(seen(cell), Seen::Bad) {
            return Err(("bad_value", spec.name));
        }
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq)]
struct UsageView {
    event_id: String,
    account: String,
    product: String,
    action: String,
    model: Option<String>,
    qty: i64,
    status: String,
    occurred: i64,
    ingested: Option<i64>,
}

impl UsageView {
    fn same_event(&self, other: &UsageView) -> bool {
        let strip = |u: &UsageView| UsageView {
            ingested: None,
            ..u.clone()
        };
        strip(self) == strip(other)
    }
}

fn check_usage(row: &[Cell]) -> Result<UsageView, Why> {
    row_level(row, Ds::Usage)?;
    let qty = v(row, U_QTY).unwrap();
    if qty < 0 {
        return Err(("negative_quantity", "quantity"));
    }
    let status = s(row, U_STATUS).unwrap();
    if !["succeeded", "failed", "cancelled"].contains(&status.as_str()) {
        return Err(("unknown_status", "status"));
    }
    Ok(UsageView {
        event_id: s(row, U_EVENT).unwrap(),
        account: s(row, U_ACCOUNT).unwrap(),
        product: s(row, U_PRODUCT).unwrap(),
        action: s(row, U_ACTION).unwrap(),
        model: s(row, U_MODEL).filter(|m| !m.is_empty()),
        qty,
        status,
        occurred: v(row, U_OCC).unwrap(),
        ingested: v(row, U_ING),
    })
}

const PLANS: [&str; 6] = ["free", "pro", "max", "scale", "scale_2x", "scale_4x"];

/// Allocation row checks up to unknown_plan: (account, start, end).
fn check_allocation(row: &[Cell]) -> Result<(String, i64, i64), Why> {
    row_level(row, Ds::Allocations)?;
    if v(row, A_CREDITS).unwrap() < 0 {
        return Err(("bad_value", "included_credits"));
    }
    let (start, end) = (v(row, A_START).unwrap(), v(row, A_END).unwrap());
    if end <= start {
        return Err(("bad_value", "period_end"));
    }
    if !["active", "cancelled"].contains(&s(row, A_STATUS).unwrap().as_str()) {
        return Err(("unknown_status", "status"));
    }
    if !PLANS.contains(&s(row, A_PLAN).unwrap().as_str()) {
        return Err(("unknown_plan", "plan_id"));
    }
    Ok((s(row, A_ACCOUNT).unwrap(), start, end))
}

/// Grant row checks before the repeated-id check: (grant_id, account).
fn check_grant(row: &[Cell]) -> Result<(String, String), Why> {
    row_level(row, Ds::Grants)?;
    let kinds = ["rollover", "promo", "compensation", "top_up"];
    if !kinds.contains(&s(row, G_KIND).unwrap().as_str()) {
        return Err(("bad_value", "kind"));
    }
    if v(row, G_CREDITS).unwrap() <= 0 {
        return Err(("bad_value", "credits"));
    }
    if let Some(expires) = v(row, G_EXP) {
        if expires <= v(row, G_EFF).unwrap() {
            return Err(("bad_value", "expires_at"));
        }
    }
    Ok((s(row, G_ID).unwrap(), s(row, G_ACCOUNT).unwrap()))
}

struct DebitView {
    entry_id: String,
    account: String,
    event_id: Option<String>,
    recorded: i64,
}

fn check_debit(row: &[Cell]) -> Result<DebitView, Why> {
    row_level(row, Ds::Debits)?;
    if !["debit", "refund", "adjustment"].contains(&s(row, D_KIND).unwrap().as_str()) {
        return Err(("bad_value", "kind"));
    }
    if v(row, D_CREDITS).unwrap() < 0 {
        return Err(("bad_value", "credits"));
    }
    Ok(DebitView {
        entry_id: s(row, D_ID).unwrap(),
        account: s(row, D_ACCOUNT).unwrap(),
        event_id: s(row, D_EVENT),
        recorded: v(row, D_REC).unwrap(),
    })
}

// ---- the generated data root -------------------------------------------------------------

/// The winning copy of a generated event.
#[derive(Clone)]
struct Event {
    id: String,
    account: String,
    product: String,
    action: String,
    model: Option<String>,
    qty: i64,
    status: String,
    occurred: i64,
    ingested: Option<i64>,
}

struct Original {
    events: Vec<Event>,
    by_id: HashMap<String, usize>,
    accounts: Vec<String>,
    /// (account, start, end) of every allocation
    allocations: Vec<(String, i64, i64)>,
    grants: Vec<Vec<Cell>>,
    grant_ids: HashSet<String>,
    debits: Vec<Vec<Cell>>,
    entry_ids: HashSet<String>,
    /// event_id → (sorted entry ids, net recorded)
    entries_of: HashMap<String, (Vec<String>, i64)>,
    usage_rows: u64,
}

fn dataset_files(root: &Path, dataset: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dataset.to_string()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let child = format!("{rel}/{name}");
            if e.file_type().unwrap().is_dir() {
                stack.push(child);
            } else if name.ends_with(".parquet") {
                out.push(child);
            }
        }
    }
    out.sort();
    out
}

fn strs(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let a = b.column_by_name(name).unwrap().as_string::<i32>();
    (0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
        .collect()
}

fn millis(b: &RecordBatch, name: &str) -> Vec<i64> {
    let col = b.column_by_name(name).unwrap();
    assert_eq!(col.data_type(), &DataType::Decimal128(18, 3));
    let a = col.as_primitive::<Decimal128Type>();
    (0..a.len()).map(|i| a.value(i) as i64).collect()
}

fn instants(b: &RecordBatch, name: &str) -> Vec<Option<i64>> {
    let a = b
        .column_by_name(name)
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    (0..a.len())
        .map(|i| a.is_valid(i).then(|| a.value(i)))
        .collect()
}

impl Original {
    fn read(root: &Path) -> Original {
        // usage: the winner of each event_id is the earliest ingested_at (null last), then
        // the first file path, then row.
        type Key = (bool, Option<i64>, String, usize);
        let mut winners: BTreeMap<String, (Key, Event)> = BTreeMap::new();
        let mut usage_rows = 0;
        for rel in dataset_files(root, "usage") {
            let b = read_parquet(&root.join(&rel));
            let (ids, accounts, products, actions, models, statuses) = (
                strs(&b, "event_id"),
                strs(&b, "account_id"),
                strs(&b, "product"),
                strs(&b, "action"),
                strs(&b, "model"),
                strs(&b, "status"),
            );
            let (qty, occurred, ingested) = (
                millis(&b, "quantity"),
                instants(&b, "occurred_at"),
                instants(&b, "ingested_at"),
            );
            for i in 0..b.num_rows() {
                usage_rows += 1;
                let e = Event {
                    id: ids[i].clone().unwrap(),
                    account: accounts[i].clone().unwrap(),
                    product: products[i].clone().unwrap(),
                    action: actions[i].clone().unwrap(),
                    model: models[i].clone(),
                    qty: qty[i],
                    status: statuses[i].clone().unwrap(),
                    occurred: occurred[i].unwrap(),
                    ingested: ingested[i],
                };
                let key = (e.ingested.is_none(), e.ingested, rel.clone(), i);
                match winners.get(&e.id) {
                    Some((k, _)) if *k <= key => {}
                    _ => {
                        winners.insert(e.id.clone(), (key, e));
                    }
                }
            }
        }
        let events: Vec<Event> = winners.into_values().map(|(_, e)| e).collect();
        let by_id = events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.clone(), i))
            .collect();

        let mut allocations = Vec::new();
        for rel in dataset_files(root, "allocations") {
            let b = read_parquet(&root.join(&rel));
            let (a, st, en) = (
                strs(&b, "account_id"),
                instants(&b, "period_start"),
                instants(&b, "period_end"),
            );
            for i in 0..b.num_rows() {
                allocations.push((a[i].clone().unwrap(), st[i].unwrap(), en[i].unwrap()));
            }
        }
        let mut accounts: Vec<String> = allocations.iter().map(|a| a.0.clone()).collect();
        accounts.sort();
        accounts.dedup();

        let mut grants = Vec::new();
        for rel in dataset_files(root, "grants") {
            let b = read_parquet(&root.join(&rel));
            let prio = b
                .column_by_name("priority")
                .unwrap()
                .as_primitive::<Int32Type>();
            let (ids, acc, kind, cr, eff, exp) = (
                strs(&b, "grant_id"),
                strs(&b, "account_id"),
                strs(&b, "kind"),
                millis(&b, "credits"),
                instants(&b, "effective_at"),
                instants(&b, "expires_at"),
            );
            for i in 0..b.num_rows() {
                grants.push(vec![
                    Cell::S(ids[i].clone().unwrap()),
                    Cell::S(acc[i].clone().unwrap()),
                    Cell::S(kind[i].clone().unwrap()),
                    Cell::N(Num::Milli(cr[i])),
                    Cell::T(Ts::At(eff[i].unwrap())),
                    exp[i].map_or(Cell::Null, |x| Cell::T(Ts::At(x))),
                    if prio.is_valid(i) {
                        Cell::I(i128::from(prio.value(i)))
                    } else {
                        Cell::Null
                    },
                ]);
            }
        }
        let grant_ids = grants.iter().map(|g| s(g, G_ID).unwrap()).collect();

        let mut debits = Vec::new();
        let mut entries_of: HashMap<String, (Vec<String>, i64)> = HashMap::new();
        for rel in dataset_files(root, "debits") {
            let b = read_parquet(&root.join(&rel));
            let (ids, acc, ev, kind, cr, rec) = (
                strs(&b, "entry_id"),
                strs(&b, "account_id"),
                strs(&b, "event_id"),
                strs(&b, "kind"),
                millis(&b, "credits"),
                instants(&b, "recorded_at"),
            );
            for i in 0..b.num_rows() {
                let kind_i = kind[i].clone().unwrap();
                if let Some(event) = &ev[i] {
                    let e = entries_of.entry(event.clone()).or_default();
                    e.0.push(ids[i].clone().unwrap());
                    e.1 += if kind_i == "refund" { -cr[i] } else { cr[i] };
                }
                debits.push(vec![
                    Cell::S(ids[i].clone().unwrap()),
                    Cell::S(acc[i].clone().unwrap()),
                    ev[i].clone().map_or(Cell::Null, Cell::S),
                    Cell::S(kind_i),
                    Cell::N(Num::Milli(cr[i])),
                    Cell::T(Ts::At(rec[i].unwrap())),
                ]);
            }
        }
        for e in entries_of.values_mut() {
            e.0.sort();
        }
        let entry_ids = debits.iter().map(|d| s(d, D_ID).unwrap()).collect();
        Original {
            events,
            by_id,
            accounts,
            allocations,
            grants,
            grant_ids,
            debits,
            entry_ids,
            entries_of,
            usage_rows,
        }
    }
}

// ---- the corruption: files of bad rows and what each row must become ----------------------

#[derive(Clone, Copy, PartialEq, Debug)]
enum Place {
    Window,
    NoAllocation,
    Outside,
}

struct BadFile {
    ds: Ds,
    rel: String,
    profile: Profile,
    rows: Vec<Vec<Cell>>,
}

/// Rejects of the added files: (dataset, file, row) → (reason, detail word).
type Rejects = BTreeMap<(String, String, u64), (String, String)>;

#[derive(Default)]
struct Expected {
    rejects: Rejects,
    usage_rows: u64,
    usage_rejected: u64,
    identical: u64,
    usage_outside: u64,
    /// original event ids that got a conflicting copy
    conflicted: BTreeSet<String>,
    debit_rows: u64,
    debit_rejected: u64,
    ledger_outside: u64,
    rows: BTreeMap<&'static str, (u64, u64)>,
}

struct Gen<'a> {
    rng: SplitMix,
    orig: &'a Original,
    as_of: i64,
    period_start: i64,
    /// valid allocations: account → [(start, end)]
    valid: HashMap<String, Vec<(i64, i64)>>,
    /// fresh (not generated) event winners and where they went
    fresh_events: HashMap<String, Place>,
    ghosts: Vec<String>,
}

const UNKNOWN_STATUSES: [&str; 6] = ["SUCCEEDED", "success", "", " succeeded", "pending", "ok"];
const COMBOS: [(&str, &str, Option<&str>); 6] = [
    ("studio", "prompt_to_video", Some("veo-3")),
    ("studio", "genai_image", Some("imagen-3")),
    ("captions", "chat_edit", None),
    ("captions", "ai_edit", Some("")),
    ("studio", "teleport", None),
    ("studio", "prompt_to_video", Some("no-such-model")),
];

impl Gen<'_> {
    fn place(&self, account: &str, at: i64) -> Place {
        if at >= self.as_of {
            return Place::Outside;
        }
        let found = self
            .valid
            .get(account)
            .and_then(|ps| ps.iter().find(|(s, e)| *s <= at && at < *e));
        match found {
            None => Place::NoAllocation,
            Some((s, e)) if *s <= self.as_of && self.as_of < *e => Place::Window,
            Some(_) => Place::Outside,
        }
    }

    /// Where a valid ledger entry goes (contract section 7, "Window").
    fn place_entry(&self, d: &DebitView) -> Place {
        if d.recorded >= self.as_of {
            return Place::Outside;
        }
        if let Some(id) = &d.event_id {
            if self.orig.by_id.contains_key(id) {
                return Place::Window;
            }
            if let Some(p) = self.fresh_events.get(id) {
                return *p;
            }
        }
        self.place(&d.account, d.recorded)
    }

    fn account(&mut self) -> String {
        if self.rng.chance(50) {
            self.rng.pick(&self.orig.accounts)
        } else {
            self.rng.pick(&self.ghosts)
        }
    }

    /// An instant that is never in the window for a generated account (except choice 8).
    fn far_time(&mut self) -> i64 {
        let ms = |rng: &mut SplitMix, days: i64| rng.range(0, days * 86_400_000) * 1000;
        match self.rng.below(10) {
            0 => t("1900-01-01T00:00:00Z") + ms(&mut self.rng, 365),
            1 => t("2999-01-01T00:00:00Z") + ms(&mut self.rng, 365),
            2 => MIN_US,
            3 => MAX_US - 1000,
            4 => self.as_of,
            5 => self.as_of + ms(&mut self.rng, 40),
            6 => self.period_start - 1000,
            7 => t("2025-01-01T00:00:00Z") + ms(&mut self.rng, 365),
            8 => self.period_start + ms(&mut self.rng, 18),
            _ => 0,
        }
    }

    fn huge_string(&mut self) -> String {
        let extra = self.rng.range(0, 3000) as usize;
        match self.rng.below(3) {
            0 => "x".repeat(4097 + extra),
            1 => "€".repeat(1366 + extra / 3), // 3 bytes each: > 4096 bytes, < 4096 chars
            _ => "é".repeat(2049 + extra / 2),
        }
    }

    /// Exactly 4096 bytes: still a valid identifier.
    fn limit_string(&mut self, prefix: &str) -> String {
        let mut s = format!("{prefix}-{}-", self.rng.below(1_000_000));
        while s.len() + 3 <= 4096 && self.rng.chance(90) {
            s.push('€');
        }
        while s.len() < 4096 {
            s.push('y');
        }
        s
    }

    fn plain_num(&mut self, ty: NumType, lo: i64, hi: i64) -> Num {
        let m = self.rng.range(lo, hi);
        match ty {
            NumType::I64 => Num::Milli(m / 1000 * 1000),
            NumType::F64 if self.rng.chance(30) => {
                let off = self.rng.pick(&[-0.0003, 0.0003, 0.0001]);
                Num::F64(m as f64 / 1e3 + off, Some(m))
            }
            NumType::Dec38s6 if self.rng.chance(30) => {
                Num::Dec6(i128::from(m) * 1000 + i128::from(self.rng.range(-499, 499)))
            }
            _ => Num::Milli(m),
        }
    }

    /// A value that is `bad_value` in this amount type, if the type can hold one.
    fn bad_num(&mut self, ty: NumType) -> Option<Num> {
        let e21 = 1_000_000_000_000_000_000_000i128;
        Some(match ty {
            NumType::F64 => Num::F64(
                self.rng.pick(&[
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    1e15,
                    -1e15,
                    1e300,
                    -f64::MAX,
                ]),
                None,
            ),
            // 999999999999999.9995 rounds (half-even) up to the limit.
            NumType::Dec38s6 => Num::Dec6(self.rng.pick(&[e21, -e21, e21 - 500, 10i128.pow(37)])),
            NumType::I64 => Num::Int(self.rng.pick(&[
                1_000_000_000_000_000,
                -1_000_000_000_000_000,
                i64::MAX,
                i64::MIN,
            ])),
            NumType::Dec18s3 => return None,
        })
    }

    /// A value that reads as < 0.
    fn negative_num(&mut self, ty: NumType) -> Num {
        let k = self.rng.range(1, 99_999);
        match (ty, self.rng.below(3)) {
            (NumType::F64, 0) => Num::F64(-0.0005, Some(-1)), // binary value beyond the tie
            (NumType::F64, 1) => {
                let n = 2 * self.rng.range(0, 50) + 1; // -n/16: an exact tie, half-even
                Num::F64(
                    -(n as f64) / 16.0,
                    Some(-(half_even(i128::from(n) * 125, 2) as i64)),
                )
            }
            (NumType::Dec38s6, 0) => Num::Dec6(-501),
            (NumType::Dec38s6, 1) => Num::Dec6(-1500),
            (NumType::I64, _) => Num::Int(-k),
            _ => Num::Milli(-k),
        }
    }

    /// A value that is negative or zero as written but reads as 0.
    fn zeroish_num(&mut self, ty: NumType) -> Num {
        match ty {
            NumType::F64 => {
                let x = self.rng.pick(&[-0.0004, -0.0, 0.0004, -1e-300, 0.00025]);
                Num::F64(x, Some(0))
            }
            NumType::Dec38s6 => Num::Dec6(self.rng.pick(&[-500, -499, 500, -1, 0])),
            _ => Num::Milli(0),
        }
    }

    /// An instant outside years 0001..=9999 (or one that overflows), if the unit holds one.
    fn bad_ts(&mut self, unit: TimeUnit) -> Option<Ts> {
        if unit == TimeUnit::Nanosecond {
            return None;
        }
        let k = self.rng.range(1, 1_000_000_000) * 1000;
        Some(match self.rng.below(5) {
            0 => Ts::Range(MIN_US - 1000),
            1 => Ts::Range(MAX_US),
            2 => Ts::Range(MIN_US - k * 1000),
            3 => Ts::Range(MAX_US + k),
            _ => Ts::Overflow(self.rng.chance(50)),
        })
    }

    /// Some value that is `bad_value` in a row of this profile.
    fn some_bad(
        &mut self,
        row: &mut [Cell],
        p: &Profile,
        num: usize,
        ts: &[usize],
        strs: &[usize],
    ) {
        if self.rng.chance(50) {
            if let Some(n) = self.bad_num(p.num) {
                row[num] = Cell::N(n);
                return;
            }
        }
        if let Some(bad) = self.bad_ts(p.unit) {
            let c = self.rng.pick(ts);
            row[c] = Cell::T(bad);
            return;
        }
        let c = self.rng.pick(strs);
        row[c] = Cell::S(self.huge_string());
    }

    fn nullify(&mut self, row: &mut [Cell], ds: Ds) {
        let required: Vec<usize> = (0..row.len()).filter(|&i| ds.specs()[i].required).collect();
        for _ in 0..self.rng.range(1, 3) {
            let c = self.rng.pick(&required);
            row[c] = Cell::Null;
        }
    }

    /// Generate rows until one is encodable in `p` and harmless to good rows.
    fn row(&mut self, ds: Ds, p: &Profile, index: usize) -> Vec<Cell> {
        for _ in 0..100_000 {
            let mut row = match ds {
                Ds::Usage => self.usage_row(p),
                Ds::Allocations => self.allocation_row(p),
                Ds::Grants => self.grant_row(p),
                Ds::Debits => self.debit_row(p),
            };
            for (cell, spec) in row.iter_mut().zip(ds.specs()) {
                if p.omit.contains(&spec.name) {
                    *cell = Cell::Null;
                }
            }
            if encodable(&row, ds, p, index) && self.harmless(ds, &row) {
                return row;
            }
        }
        panic!("no {ds:?} row fits profile {p:?}");
    }

    /// A row that passes every check must not touch the good rows: a usage copy of a
    /// generated event must lose dedup; any other valid row must land outside the window.
    fn harmless(&self, ds: Ds, row: &[Cell]) -> bool {
        match ds {
            Ds::Usage => match check_usage(row) {
                Err(_) => true,
                Ok(u) => match self.orig.by_id.get(&u.event_id) {
                    Some(&i) => {
                        let w = self.orig.events[i].ingested;
                        (u.ingested.is_none(), u.ingested) >= (w.is_none(), w)
                    }
                    None => self.place(&u.account, u.occurred) != Place::Window,
                },
            },
            // Valid allocation rows are only written by `allocation_groups`.
            Ds::Allocations => check_allocation(row).is_err(),
            Ds::Grants => match check_grant(row) {
                Err(_) => true,
                Ok((id, account)) => {
                    let covered = self.orig.accounts.contains(&account)
                        || self.valid.get(&account).is_some_and(|ps| {
                            ps.iter().any(|(s, e)| *s <= self.as_of && self.as_of < *e)
                        });
                    self.orig.grant_ids.contains(&id) || !covered
                }
            },
            Ds::Debits => match check_debit(row) {
                Err(_) => true,
                Ok(d) => {
                    self.orig.entry_ids.contains(&d.entry_id)
                        || self.place_entry(&d) != Place::Window
                }
            },
        }
    }

    fn usage_row(&mut self, p: &Profile) -> Vec<Cell> {
        let mut row = if self.rng.chance(50) {
            // a copy of a generated event, ingested no earlier than its winner
            let e = self.rng.pick(&self.orig.events);
            let model = match &e.model {
                Some(m) if !m.is_empty() => Cell::S(m.clone()),
                _ => self.rng.pick(&[Cell::Null, Cell::S(String::new())]),
            };
            let qty = match p.num {
                NumType::F64 if self.rng.chance(30) => {
                    Num::F64(e.qty as f64 / 1e3 + 0.0003, Some(e.qty))
                }
                NumType::Dec38s6 if self.rng.chance(30) => {
                    Num::Dec6(i128::from(e.qty) * 1000 - 400)
                }
                _ => Num::Milli(e.qty),
            };
            let ingested = match e.ingested {
                None => Cell::Null,
                Some(w) => match self.rng.below(3) {
                    0 => Cell::Null,
                    1 => Cell::T(Ts::At(w)), // a tie: the first file path wins
                    _ => Cell::T(Ts::At(w + self.rng.range(1, 864_000_000) * 1000)),
                },
            };
            vec![
                Cell::S(e.id.clone()),
                Cell::S(e.account.clone()),
                Cell::S(e.product.clone()),
                Cell::S(e.action.clone()),
                model,
                Cell::N(qty),
                Cell::S(e.status.clone()),
                Cell::T(Ts::At(e.occurred)),
                ingested,
            ]
        } else {
            let (product, action, model) = self.rng.pick(&COMBOS);
            let qty = if self.rng.chance(3) {
                // huge but valid: never summed, the row is not in the window
                Num::Milli(999_999_999_999_999_999 / 1000 * 1000)
            } else {
                self.plain_num(p.num, 0, 50_000)
            };
            let ingested = if self.rng.chance(30) {
                Cell::Null
            } else {
                Cell::T(Ts::At(self.far_time()))
            };
            vec![
                Cell::S(format!("ghost-evt-{:04}", self.rng.below(4000))),
                Cell::S(self.account()),
                Cell::S(product.into()),
                Cell::S(action.into()),
                model.map_or(Cell::Null, |m| Cell::S(m.into())),
                Cell::N(qty),
                Cell::S(self.rng.pick(&["succeeded", "failed", "cancelled"]).into()),
                Cell::T(Ts::At(self.far_time())),
                ingested,
            ]
        };
        let defects = if self.rng.chance(15) { 2 } else { 1 };
        for _ in 0..defects {
            match self.rng.below(100) {
                0..=11 => {} // as it is: an identical copy, or a fresh event outside the window
                12..=27 => match self.rng.below(7) {
                    0 => row[U_ACCOUNT] = Cell::S(self.rng.pick(&self.orig.accounts)),
                    1 => row[U_PRODUCT] = Cell::S("captions".into()),
                    2 => row[U_ACTION] = Cell::S("ai_edit".into()),
                    3 => {
                        row[U_MODEL] = self.rng.pick(&[
                            Cell::Null,
                            Cell::S("veo-3".into()),
                            Cell::S("new".into()),
                        ])
                    }
                    4 => row[U_QTY] = Cell::N(Num::Milli(self.rng.range(0, 90_000))),
                    5 => {
                        row[U_STATUS] =
                            Cell::S(self.rng.pick(&["succeeded", "failed", "cancelled"]).into())
                    }
                    _ => {
                        if let Cell::T(Ts::At(x)) = row[U_OCC] {
                            let shifted = if self.rng.chance(50) {
                                x + self.rng.range(-86_400, 86_400) * 1000
                            } else {
                                self.far_time()
                            };
                            row[U_OCC] = Cell::T(valid_at(shifted));
                        }
                    }
                },
                28..=41 => self.nullify(&mut row, Ds::Usage),
                42..=47 => {
                    let c = self
                        .rng
                        .pick(&[U_EVENT, U_ACCOUNT, U_PRODUCT, U_ACTION, U_MODEL, U_STATUS]);
                    row[c] = Cell::S(self.huge_string());
                }
                48..=65 => self.some_bad(&mut row, p, U_QTY, &[U_OCC, U_ING], &[U_EVENT, U_MODEL]),
                66..=77 => row[U_QTY] = Cell::N(self.negative_num(p.num)),
                78..=81 => row[U_QTY] = Cell::N(self.zeroish_num(p.num)),
                82..=95 => row[U_STATUS] = Cell::S(self.rng.pick(&UNKNOWN_STATUSES).into()),
                _ => {
                    let c = self.rng.pick(&[U_EVENT, U_ACCOUNT]);
                    row[c] = Cell::S(self.limit_string("ghost-evt"));
                }
            }
        }
        row
    }

    fn allocation_row(&mut self, p: &Profile) -> Vec<Cell> {
        let (start, end) = if self.rng.chance(50) {
            (self.period_start, t("2026-12-01T00:00:00Z"))
        } else {
            let s = self.far_time();
            (s, s.saturating_add(self.rng.range(1, 40) * DAY_US))
        };
        let mut row = vec![
            Cell::S(self.account()),
            Cell::S(self.rng.pick(&PLANS).into()),
            Cell::T(Ts::At(start)),
            Cell::T(Ts::At(end.min(MAX_US - 1000))),
            Cell::N(self.plain_num(p.num, 0, 5_000_000)),
            self.rng.pick(&[Cell::Null, Cell::T(Ts::At(start))]),
            Cell::S(self.rng.pick(&["active", "cancelled"]).into()),
        ];
        let defects = if self.rng.chance(15) { 2 } else { 1 };
        for _ in 0..defects {
            match self.rng.below(9) {
                0 => self.nullify(&mut row, Ds::Allocations),
                1 => {
                    let c = self.rng.pick(&[A_ACCOUNT, A_PLAN, A_STATUS]);
                    row[c] = Cell::S(self.huge_string());
                }
                2 => self.some_bad(
                    &mut row,
                    p,
                    A_CREDITS,
                    &[A_START, A_END, A_ANCHOR],
                    &[A_PLAN],
                ),
                3 => row[A_CREDITS] = Cell::N(self.negative_num(p.num)),
                4 => row[A_END] = row[A_START].clone(),
                5 => {
                    if let Cell::T(Ts::At(x)) = row[A_START] {
                        row[A_END] = Cell::T(valid_at(x - self.rng.range(1, 1000) * 1000));
                    }
                }
                6 => {
                    let status = self.rng.pick(&["Active", "paused", "", "canceled"]);
                    row[A_STATUS] = Cell::S(status.into());
                }
                _ => {
                    let plan = match self.rng.below(4) {
                        0 => self.limit_string("plan"),
                        1 => "Pro".into(),
                        2 => String::new(),
                        _ => "enterprise".into(),
                    };
                    row[A_PLAN] = Cell::S(plan);
                }
            }
        }
        row
    }

    fn grant_row(&mut self, p: &Profile) -> Vec<Cell> {
        let mut row = if self.rng.chance(30) {
            let mut g = self.rng.pick(&self.orig.grants);
            if self.rng.chance(50) {
                g[G_CREDITS] = Cell::N(Num::Milli(self.rng.range(1, 9_000_000)));
            }
            g
        } else {
            let eff = self.far_time().min(MAX_US - 61 * DAY_US);
            let expires = Cell::T(Ts::At(eff + self.rng.range(1, 60) * DAY_US));
            let expires = self.rng.pick(&[Cell::Null, expires]);
            let priority = Cell::I(i128::from(self.rng.range(-5, 10)));
            let priority = self.rng.pick(&[Cell::Null, priority]);
            vec![
                Cell::S(format!("ghost-grt-{:04}", self.rng.below(1500))),
                Cell::S(self.account()),
                Cell::S(
                    self.rng
                        .pick(&["rollover", "promo", "compensation", "top_up"])
                        .into(),
                ),
                Cell::N(self.plain_num(p.num, 1000, 9_000_000)),
                Cell::T(Ts::At(eff)),
                expires,
                priority,
            ]
        };
        match self.rng.below(11) {
            0 => {}
            1 => self.nullify(&mut row, Ds::Grants),
            2 => {
                let c = self.rng.pick(&[G_ID, G_ACCOUNT, G_KIND]);
                row[c] = Cell::S(self.huge_string());
            }
            3 => {
                let kind = self.rng.pick(&["plan", "TOP_UP", "bonus", ""]);
                row[G_KIND] = Cell::S(kind.into());
            }
            4 => {
                let n = match self.rng.below(3) {
                    0 => self.zeroish_num(p.num),
                    1 => self.negative_num(p.num),
                    _ => Num::Milli(0),
                };
                row[G_CREDITS] = Cell::N(n);
            }
            5 => {
                // rounds half-even up to 0.001 or more: valid
                let n =
                    self.rng
                        .pick(&[Num::F64(0.0005, Some(1)), Num::Dec6(501), Num::Dec6(1500)]);
                row[G_CREDITS] = Cell::N(n);
            }
            6 => self.some_bad(&mut row, p, G_CREDITS, &[G_EFF, G_EXP], &[G_ID, G_KIND]),
            7 => {
                if let Cell::T(Ts::At(x)) = row[G_EFF] {
                    let back = self.rng.pick(&[0, 1000, DAY_US]);
                    row[G_EXP] = Cell::T(valid_at(x - back));
                }
            }
            8 => {
                let big = i128::from(i64::MAX);
                let prio = self.rng.pick(&[
                    big + 1,
                    i128::from(u64::MAX),
                    big,
                    i128::from(i32::MIN),
                    i128::from(i32::MAX),
                ]);
                row[G_PRIO] = Cell::I(prio);
            }
            _ => {
                let c = self.rng.pick(&[G_ID, G_ACCOUNT]);
                row[c] = Cell::S(self.limit_string("ghost-grt"));
            }
        }
        row
    }

    fn debit_row(&mut self, p: &Profile) -> Vec<Cell> {
        let mut row = if self.rng.chance(35) {
            let mut d = self.rng.pick(&self.orig.debits);
            if self.rng.chance(50) {
                d[D_CREDITS] = Cell::N(Num::Milli(self.rng.range(0, 900_000)));
            }
            d
        } else {
            let event = match self.rng.below(4) {
                0 => Cell::Null,
                1 => Cell::S(format!("ghost-evt-{:04}", self.rng.below(4000))),
                2 => Cell::S(self.rng.pick(&self.orig.events).id.clone()),
                _ => Cell::S(format!("no-such-event-{}", self.rng.below(100))),
            };
            let credits = if self.rng.chance(3) {
                Num::Milli(999_999_999_999_999_000)
            } else {
                self.plain_num(p.num, 0, 900_000)
            };
            vec![
                Cell::S(format!("ghost-led-{:04}", self.rng.below(2500))),
                Cell::S(self.account()),
                event,
                Cell::S(self.rng.pick(&["debit", "refund", "adjustment"]).into()),
                Cell::N(credits),
                Cell::T(Ts::At(self.far_time())),
            ]
        };
        let defects = if self.rng.chance(15) { 2 } else { 1 };
        for _ in 0..defects {
            match self.rng.below(10) {
                0 | 1 => {}
                2 => self.nullify(&mut row, Ds::Debits),
                3 => {
                    let c = self.rng.pick(&[D_ID, D_ACCOUNT, D_EVENT, D_KIND]);
                    row[c] = Cell::S(self.huge_string());
                }
                4 => {
                    let kind = self.rng.pick(&["DEBIT", "credit", "", "chargeback"]);
                    row[D_KIND] = Cell::S(kind.into());
                }
                5 => row[D_CREDITS] = Cell::N(self.negative_num(p.num)),
                6 => row[D_CREDITS] = Cell::N(self.zeroish_num(p.num)),
                7 => self.some_bad(&mut row, p, D_CREDITS, &[D_REC], &[D_ID, D_EVENT]),
                8 => row[D_REC] = Cell::T(Ts::At(self.as_of + self.rng.range(0, 1000) * 1000)),
                _ => row[D_ID] = Cell::S(self.limit_string("ghost-led")),
            }
        }
        row
    }

    /// Valid-looking allocations of fresh accounts: groups that all share an instant (every
    /// row overlaps: all rejected), and lone or adjacent periods in 2025 (kept, not covered).
    fn allocation_groups(&mut self) -> Vec<Vec<Cell>> {
        let mut rows = Vec::new();
        let mut push = |rng: &mut SplitMix, account: &str, start: i64, end: i64| {
            rows.push(vec![
                Cell::S(account.into()),
                Cell::S(rng.pick(&PLANS).into()),
                Cell::T(Ts::At(start)),
                Cell::T(Ts::At(end)),
                Cell::N(Num::Milli(rng.range(0, 5000) * 1000)),
                rng.pick(&[Cell::Null, Cell::T(Ts::At(start - 7 * DAY_US))]),
                Cell::S(rng.pick(&["active", "cancelled"]).into()),
            ]);
        };
        for n in 0..40 {
            let account = format!("ghost-ovl-{n:02}");
            let shared = self.rng.pick(&[
                self.as_of,
                t("2026-06-15T12:00:00Z"),
                t("2025-03-03T00:00:00Z"),
            ]);
            for _ in 0..self.rng.range(2, 4) {
                let start = shared - self.rng.range(0, 60 * 86_400) * 1_000_000;
                let end = shared + self.rng.range(1, 60 * 86_400_000) * 1000;
                push(&mut self.rng, &account, start, end);
            }
        }
        for n in 0..30 {
            let account = format!("ghost-past-{n:02}");
            let month = self.rng.range(1, 9);
            let start = t(&format!("2025-{month:02}-01T00:00:00Z"));
            let end = start + self.rng.range(28, 31) * DAY_US;
            push(&mut self.rng, &account, start, end);
            if self.rng.chance(50) {
                // adjacent, not overlapping
                push(&mut self.rng, &account, end, end + 30 * DAY_US);
            }
        }
        rows
    }
}

fn file_rel(ds: Ds, k: usize) -> String {
    // "zbad=" sorts after the generated "bucket=" and "part-0" files: on repeated ids the
    // generated row stays the first one.
    if k % 4 == 3 {
        format!("{}/zbad={k:02}/nested/deeper/part-{k}.parquet", ds.name())
    } else {
        format!("{}/zbad={k:02}/part-0.parquet", ds.name())
    }
}

/// Build the bad files and, with a model of the contract, what tally must do with each row.
fn corrupt(orig: &Original, seed: u64) -> (Vec<BadFile>, Expected) {
    let as_of = t(AS_OF);
    let mut ghosts: Vec<String> = Vec::new();
    for (prefix, n) in [
        ("ghost-usage", 60),
        ("ghost-ovl", 40),
        ("ghost-past", 30),
        ("ghost-bad", 30),
    ] {
        ghosts.extend((0..n).map(|i| format!("{prefix}-{i:02}")));
    }
    let mut g = Gen {
        rng: SplitMix(seed),
        orig,
        as_of,
        period_start: t("2026-11-01T00:00:00Z"),
        valid: HashMap::new(),
        fresh_events: HashMap::new(),
        ghosts,
    };
    let mut ex = Expected::default();
    let reject = |ex: &mut Expected, f: &BadFile, row: usize, why: Why| {
        let key = (f.ds.name().to_string(), f.rel.clone(), row as u64);
        let old = ex
            .rejects
            .insert(key, (why.0.to_string(), why.1.to_string()));
        assert!(old.is_none());
    };
    let mut files = Vec::new();
    let new_file = |g: &mut Gen, ds: Ds, k: usize| BadFile {
        ds,
        rel: file_rel(ds, k),
        profile: random_profile(&mut g.rng, ds),
        rows: Vec::new(),
    };

    // Allocations first: which allocations are valid decides where usage rows go.
    let mut alloc_files: Vec<BadFile> = (0..8)
        .map(|k| new_file(&mut g, Ds::Allocations, k))
        .collect();
    let groups = g.allocation_groups();
    for f in alloc_files.iter_mut() {
        for i in 0..g.rng.range(100, 250) as usize {
            let row = g.row(Ds::Allocations, &f.profile, i);
            f.rows.push(row);
        }
    }
    for row in groups {
        let k = g.rng.below(alloc_files.len());
        let f = &mut alloc_files[k];
        let at = g.rng.below(f.rows.len() + 1);
        f.rows.insert(at, row);
    }
    alloc_files.sort_by(|a, b| a.rel.cmp(&b.rel));
    {
        // unknown plan, then overlaps among the rows that passed everything else
        // account → (Some((file, row)) of an added row or None for a generated one, start, end)
        type Periods = Vec<(Option<(usize, usize)>, i64, i64)>;
        let mut candidates: HashMap<String, Periods> = HashMap::new();
        for (account, s, e) in &orig.allocations {
            candidates
                .entry(account.clone())
                .or_default()
                .push((None, *s, *e));
        }
        for (fi, f) in alloc_files.iter().enumerate() {
            for (ri, row) in f.rows.iter().enumerate() {
                match check_allocation(row) {
                    Err(why) => reject(&mut ex, f, ri, why),
                    Ok((account, s, e)) => {
                        candidates
                            .entry(account)
                            .or_default()
                            .push((Some((fi, ri)), s, e))
                    }
                }
            }
        }
        for (account, rows) in candidates {
            for (i, (at, s, e)) in rows.iter().enumerate() {
                let overlaps = rows
                    .iter()
                    .enumerate()
                    .any(|(j, (_, s2, e2))| j != i && s < e2 && s2 < e);
                match (overlaps, at) {
                    (true, Some((fi, ri))) => reject(
                        &mut ex,
                        &alloc_files[*fi],
                        *ri,
                        ("overlapping_period", "overlaps"),
                    ),
                    (true, None) => {
                        panic!("test bug: a generated allocation of {account} overlaps")
                    }
                    (false, _) => {
                        assert!(
                            at.is_none() || !(*s <= as_of && as_of < *e),
                            "test bug: a new allocation of {account} covers as-of"
                        );
                        g.valid.entry(account.clone()).or_default().push((*s, *e));
                    }
                }
            }
        }
    }
    files.extend(alloc_files);

    // Usage.
    let mut usage_files: Vec<BadFile> = (0..20).map(|k| new_file(&mut g, Ds::Usage, k)).collect();
    for f in usage_files.iter_mut() {
        for i in 0..g.rng.range(250, 550) as usize {
            let row = g.row(Ds::Usage, &f.profile, i);
            f.rows.push(row);
        }
    }
    usage_files.sort_by(|a, b| a.rel.cmp(&b.rel));
    {
        type Key = (bool, Option<i64>, String, usize);
        let mut fresh: BTreeMap<String, Vec<(Key, UsageView, usize, usize)>> = BTreeMap::new();
        for (fi, f) in usage_files.iter().enumerate() {
            for (ri, row) in f.rows.iter().enumerate() {
                ex.usage_rows += 1;
                let u = match check_usage(row) {
                    Err(why) => {
                        reject(&mut ex, f, ri, why);
                        continue;
                    }
                    Ok(u) => u,
                };
                if let Some(&i) = orig.by_id.get(&u.event_id) {
                    let e = &orig.events[i];
                    let winner = UsageView {
                        event_id: e.id.clone(),
                        account: e.account.clone(),
                        product: e.product.clone(),
                        action: e.action.clone(),
                        model: e.model.clone().filter(|m| !m.is_empty()),
                        qty: e.qty,
                        status: e.status.clone(),
                        occurred: e.occurred,
                        ingested: e.ingested,
                    };
                    if u.same_event(&winner) {
                        ex.identical += 1;
                    } else {
                        reject(&mut ex, f, ri, ("conflicting_duplicate", "event_id"));
                        ex.conflicted.insert(u.event_id.clone());
                    }
                } else {
                    let key = (u.ingested.is_none(), u.ingested, f.rel.clone(), ri);
                    fresh
                        .entry(u.event_id.clone())
                        .or_default()
                        .push((key, u, fi, ri));
                }
            }
        }
        for (id, mut copies) in fresh {
            copies.sort_by(|a, b| a.0.cmp(&b.0));
            let (_, winner, fi, ri) = &copies[0];
            match g.place(&winner.account, winner.occurred) {
                Place::Window => panic!("test bug: fresh event {id} in the window"),
                Place::NoAllocation => reject(
                    &mut ex,
                    &usage_files[*fi],
                    *ri,
                    ("no_allocation", "allocation"),
                ),
                Place::Outside => ex.usage_outside += 1,
            }
            let place = g.place(&winner.account, winner.occurred);
            g.fresh_events.insert(id, place);
            for (_, u, fi, ri) in &copies[1..] {
                if u.same_event(winner) {
                    ex.identical += 1;
                } else {
                    let why = ("conflicting_duplicate", "event_id");
                    reject(&mut ex, &usage_files[*fi], *ri, why);
                }
            }
        }
    }
    files.extend(usage_files);

    // Grants and debits.
    let mut grant_files: Vec<BadFile> = (0..8).map(|k| new_file(&mut g, Ds::Grants, k)).collect();
    let mut debit_files: Vec<BadFile> = (0..12).map(|k| new_file(&mut g, Ds::Debits, k)).collect();
    for f in grant_files.iter_mut().chain(debit_files.iter_mut()) {
        let n = if f.ds == Ds::Grants {
            (150, 300)
        } else {
            (200, 400)
        };
        for i in 0..g.rng.range(n.0, n.1) as usize {
            let row = g.row(f.ds, &f.profile, i);
            f.rows.push(row);
        }
    }
    grant_files.sort_by(|a, b| a.rel.cmp(&b.rel));
    debit_files.sort_by(|a, b| a.rel.cmp(&b.rel));
    let mut seen_ids: HashSet<String> = orig.grant_ids.clone();
    for f in &grant_files {
        for (ri, row) in f.rows.iter().enumerate() {
            match check_grant(row) {
                Err(why) => reject(&mut ex, f, ri, why),
                Ok((id, _)) => {
                    if !seen_ids.insert(id) {
                        reject(&mut ex, f, ri, ("bad_value", "grant_id"));
                    }
                }
            }
        }
    }
    let mut seen_ids: HashSet<String> = orig.entry_ids.clone();
    for f in &debit_files {
        for (ri, row) in f.rows.iter().enumerate() {
            ex.debit_rows += 1;
            let d = match check_debit(row) {
                Err(why) => {
                    reject(&mut ex, f, ri, why);
                    continue;
                }
                Ok(d) => d,
            };
            if !seen_ids.insert(d.entry_id.clone()) {
                reject(&mut ex, f, ri, ("bad_value", "entry_id"));
                continue;
            }
            match g.place_entry(&d) {
                Place::Window => panic!("test bug: entry {} in the window", d.entry_id),
                Place::NoAllocation => reject(&mut ex, f, ri, ("no_allocation", "allocation")),
                Place::Outside => ex.ledger_outside += 1,
            }
        }
    }
    files.extend(grant_files);
    files.extend(debit_files);

    for f in &files {
        let counts = ex.rows.entry(f.ds.name()).or_default();
        counts.0 += f.rows.len() as u64;
    }
    for (ds, _, _) in ex.rejects.keys() {
        ex.rows.get_mut(ds.as_str()).unwrap().1 += 1;
    }
    ex.usage_rejected = ex.rows["usage"].1;
    ex.debit_rejected = ex.rows["debits"].1;
    (files, ex)
}

// ---- running tally ------------------------------------------------------------------------

fn reconcile(data: &Path, out: &Path) -> Output {
    run_command("reconcile", data, AS_OF, out)
        .output()
        .expect("tally runs")
}

fn seed() -> u64 {
    std::env::var("CORRUPT_SEED")
        .ok()
        .map(|s| s.parse().expect("CORRUPT_SEED is a number"))
        .unwrap_or(20_261_120)
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    )
}

type RejectRow = (String, String, i64, String, String);

fn rejects(out: &Path) -> Vec<RejectRow> {
    let b = read_parquet(&out.join("rejects.parquet"));
    let col = |n: &str| strs(&b, n);
    let (ds, file, reason, detail) = (col("dataset"), col("file"), col("reason"), col("detail"));
    let row = b
        .column_by_name("row")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>();
    (0..b.num_rows())
        .map(|i| {
            (
                ds[i].clone().unwrap(),
                file[i].clone().unwrap(),
                row.value(i),
                reason[i].clone().unwrap(),
                detail[i].clone().unwrap(),
            )
        })
        .collect()
}

#[test]
fn bad_rows_are_rejected_exactly_and_good_rows_are_untouched() {
    let seed = seed();
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    generate(&clean, 200, 50_000, seed, "0");
    let base = tmp.path().join("base");
    let out = reconcile(&clean, &base);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let orig = Original::read(&clean);
    let (files, ex) = corrupt(&orig, seed);
    let dirty = tmp.path().join("dirty");
    copy_dir(&clean, &dirty);
    let mut added = BTreeSet::new();
    for f in &files {
        let bytes = parquet_bytes(&encode(&f.rows, f.ds, &f.profile), Some(&f.profile));
        write_file(&dirty, &f.rel, &bytes);
        added.insert(f.rel.clone());
    }
    // Names starting with `.` or `_` and files not named *.parquet are never read.
    let junk = parquet_bytes(
        &encode(&files[0].rows, files[0].ds, &files[0].profile),
        None,
    );
    for rel in [
        "allocations/zbad=00/_skipped.parquet",
        "allocations/.hidden/part-0.parquet",
        "allocations/_tmp/part-0.parquet",
        "allocations/zbad=00/part-0.parquet.bak",
    ] {
        write_file(&dirty, rel, &junk);
    }
    let total_rows: usize = files.iter().map(|f| f.rows.len()).sum();
    assert!(files.len() >= 40, "dozens of files");
    assert!(
        ex.rejects.len() >= 10_000,
        "at least 10,000 bad rows: {} of {total_rows}",
        ex.rejects.len()
    );

    let dirty_out = tmp.path().join("dirty-out");
    let started = std::time::Instant::now();
    let run = reconcile(&dirty, &dirty_out);
    let took = started.elapsed();
    assert_eq!(
        run.status.code(),
        Some(0),
        "seed {seed}: {}",
        describe(&run)
    );
    assert!(!stderr(&run).contains("panicked"), "{}", stderr(&run));

    // rejects: exactly the expected (dataset, file, row, reason) for the added files, the
    // baseline's for the generated ones, in the contract's order.
    let base_rejects = rejects(&base);
    let got = rejects(&dirty_out);
    let order = |r: &RejectRow| {
        let ds = Ds::ALL.iter().position(|d| d.name() == r.0).unwrap();
        (ds, r.1.clone(), r.2)
    };
    assert!(
        got.windows(2).all(|w| order(&w[0]) < order(&w[1])),
        "rejects are not in (dataset, file, row) order"
    );
    let (ours, theirs): (Vec<RejectRow>, Vec<RejectRow>) =
        got.into_iter().partition(|r| added.contains(&r.1));
    assert_eq!(
        theirs, base_rejects,
        "rejects of the generated files changed"
    );
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut actual: BTreeMap<(String, String, u64), (String, String)> = BTreeMap::new();
    for (ds, file, row, reason, detail) in ours {
        actual.insert((ds, file, row as u64), (reason, detail));
    }
    for (key, (reason, word)) in &ex.rejects {
        match actual.get(key) {
            None => missing.push(format!("{key:?} expected {reason}")),
            Some((r, detail)) if r != reason || !detail.contains(word.as_str()) => {
                let detail: String = detail.chars().take(160).collect();
                wrong.push(format!(
                    "{key:?}: expected {reason} naming {word:?}, got {r}: {detail}"
                ))
            }
            Some(_) => {}
        }
    }
    let unexpected: Vec<String> = actual
        .iter()
        .filter(|(k, _)| !ex.rejects.contains_key(*k))
        .map(|(k, v)| {
            format!(
                "{k:?}: {} {}",
                v.0,
                v.1.chars().take(160).collect::<String>()
            )
        })
        .collect();
    let show = |v: &[String]| v.iter().take(8).cloned().collect::<Vec<_>>().join("\n  ");
    assert!(
        missing.is_empty() && wrong.is_empty() && unexpected.is_empty(),
        "seed {seed}: {} missing, {} wrong, {} unexpected rejects\nmissing:\n  {}\nwrong:\n  {}\nunexpected:\n  {}",
        missing.len(),
        wrong.len(),
        unexpected.len(),
        show(&missing),
        show(&wrong),
        show(&unexpected)
    );

    // summary: conservation and every count
    let b = json(&base.join("summary.json"));
    let d = json(&dirty_out.join("summary.json"));
    let n = |j: &serde_json::Value, path: &[&str]| {
        path.iter()
            .fold(j, |j, k| &j[*k])
            .as_u64()
            .unwrap_or_else(|| panic!("{path:?} in summary.json"))
    };
    assert_eq!(d["conservation"]["holds"], true);
    let u = |k: &str| n(&d, &["usage", k]);
    assert_eq!(
        u("rows_read"),
        u("events_in_window") + u("identical_duplicates") + u("rejected") + u("outside_window")
    );
    assert_eq!(u("rows_read"), orig.usage_rows + ex.usage_rows);
    assert_eq!(
        u("rows_read"),
        n(&b, &["usage", "rows_read"]) + ex.usage_rows
    );
    assert_eq!(u("events_in_window"), n(&b, &["usage", "events_in_window"]));
    assert_eq!(
        u("identical_duplicates"),
        n(&b, &["usage", "identical_duplicates"]) + ex.identical
    );
    assert_eq!(u("rejected"), ex.usage_rejected);
    assert_eq!(
        u("outside_window"),
        n(&b, &["usage", "outside_window"]) + ex.usage_outside
    );
    for ds in Ds::ALL {
        let (rows, rejected) = ex.rows[ds.name()];
        for (k, added) in [("rows_read", rows), ("rejected", rejected)] {
            let path = ["datasets", ds.name(), k];
            assert_eq!(n(&d, &path), n(&b, &path) + added, "{ds:?} {k}");
        }
    }
    let l = |j: &serde_json::Value, k: &str| n(j, &["ledger", k]);
    assert_eq!(l(&d, "rows_read"), l(&b, "rows_read") + ex.debit_rows);
    assert_eq!(l(&d, "rejected"), l(&b, "rejected") + ex.debit_rejected);
    assert_eq!(l(&d, "entries_in_window"), l(&b, "entries_in_window"));
    assert_eq!(
        l(&d, "outside_window"),
        l(&b, "outside_window") + ex.ledger_outside
    );
    assert_eq!(d["credits"], b["credits"], "credit totals changed");
    for k in ["in_window", "pending"] {
        assert_eq!(d["events"][k], b["events"][k], "events.{k}");
    }
    let conflicted = ex.conflicted.len() as u64;
    assert_eq!(
        n(&d, &["events", "with_discrepancy"]),
        n(&b, &["events", "with_discrepancy"]) + conflicted
    );
    assert_eq!(
        n(&d, &["discrepancies", "total"]),
        n(&b, &["discrepancies", "total"]) + conflicted
    );

    // good rows unaffected: balances identical; discrepancies = baseline + one
    // conflicting_duplicate row per generated event that got a conflicting copy.
    assert_eq!(
        render(&dirty_out.join("balances.parquet"), &[]),
        render(&base.join("balances.parquet"), &[]),
        "balances changed"
    );
    let lines =
        |p: &Path| -> BTreeSet<String> { render(p, &[]).lines().map(str::to_string).collect() };
    let mut want = lines(&base.join("discrepancies.parquet"));
    for id in &ex.conflicted {
        let e = &orig.events[orig.by_id[id]];
        let (entries, net) = orig.entries_of.get(id).cloned().unwrap_or_default();
        let credits = Milli(net).to_string();
        want.insert(format!(
            "conflicting_duplicate,{},{},{},{},{},{},{},{credits},{credits},0.000",
            e.account,
            e.id,
            entries.join(";"),
            format_instant(e.occurred),
            e.product,
            e.action,
            e.model.clone().unwrap_or_default(),
        ));
    }
    let got = lines(&dirty_out.join("discrepancies.parquet"));
    let extra: Vec<_> = got.difference(&want).take(5).collect();
    let lost: Vec<_> = want.difference(&got).take(5).collect();
    assert!(
        extra.is_empty() && lost.is_empty(),
        "discrepancies: unexpected {extra:?}\nmissing {lost:?}"
    );
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for ((ds, _, _), (reason, _)) in &ex.rejects {
        *by_reason.entry(format!("{ds}/{reason}")).or_default() += 1;
    }
    eprintln!(
        "corrupt_at_scale seed {seed}: {} files, {total_rows} rows added, {} rejected \
         {by_reason:?}, {} identical copies, {} usage rows outside, {} ledger entries outside, \
         {} conflicted events; reconcile took {took:?}",
        files.len(),
        ex.rejects.len(),
        ex.identical,
        ex.usage_outside,
        ex.ledger_outside,
        ex.conflicted.len()
    );
}

// ---- bad files ---------------------------------------------------------------------------

/// One stderr line `tally: <rel>: …`, exit 2, no output folder and no staging folder.
fn assert_refused(root: &Path, out: &Path, run: &Output, rel: &str, word: Option<&str>) {
    let err = stderr(run);
    let what = format!("{rel}: {}", describe(run));
    assert_eq!(run.status.code(), Some(2), "{what}");
    assert_eq!(err.matches('\n').count(), 1, "{what}");
    assert!(err.ends_with('\n'), "{what}");
    assert!(err.starts_with(&format!("tally: {rel}: ")), "{what}");
    if let Some(word) = word {
        assert!(err.contains(word), "{what}: should name {word}");
    }
    assert!(!out.exists(), "{what}: an output folder appeared");
    let leftovers: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("staging"))
        .collect();
    assert!(leftovers.is_empty(), "{what}: staging left: {leftovers:?}");
}

struct Sample {
    ds: Ds,
    rel: String,
    bytes: Vec<u8>,
    batch: RecordBatch,
}

fn samples(data: &Path) -> Vec<Sample> {
    Ds::ALL
        .iter()
        .map(|&ds| {
            let rel = dataset_files(data, ds.name()).remove(0);
            Sample {
                ds,
                bytes: std::fs::read(data.join(&rel)).unwrap(),
                batch: read_parquet(&data.join(&rel)),
                rel,
            }
        })
        .collect()
}

fn with_column(b: &RecordBatch, name: &str, array: Option<ArrayRef>) -> RecordBatch {
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
        if f.name() != name {
            fields.push(f.as_ref().clone());
            columns.push(c.clone());
        } else if let Some(a) = &array {
            fields.push(Field::new(name, a.data_type().clone(), true));
            columns.push(a.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

/// Mistyped columns of each dataset: (column, array of a type the contract does not allow).
fn mistyped(s: &Sample) -> Vec<(&'static str, ArrayRef)> {
    let b = &s.batch;
    let n = b.num_rows();
    let cast = |name: &str, to: &DataType| {
        arrow::compute::cast(b.column_by_name(name).unwrap(), to).unwrap()
    };
    let ints: ArrayRef = Arc::new(Int64Array::from_iter_values(0..n as i64));
    let texts: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..n).map(|i| format!("{i}")),
    ));
    let nulls: ArrayRef = Arc::new(NullArray::new(n));
    let bools: ArrayRef = Arc::new(BooleanArray::from(vec![true; n]));
    let binary: ArrayRef = Arc::new(BinaryArray::from_iter_values((0..n).map(|i| vec![i as u8])));
    let dates: ArrayRef = Arc::new(Date32Array::from_iter_values(0..n as i32));
    let list: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(
        (0..n).map(|i| Some(vec![Some(i as i32)])),
    ));
    let floats = |name: &str| -> ArrayRef {
        let a = cast(name, &DataType::Float64);
        let a = a.as_primitive::<arrow::datatypes::Float64Type>();
        Arc::new(
            a.iter()
                .map(|v| v.map(|v| v as f32))
                .collect::<Float32Array>(),
        )
    };
    match s.ds {
        Ds::Usage => vec![
            ("quantity", floats("quantity")),
            ("quantity", cast("quantity", &DataType::Utf8)),
            ("occurred_at", cast("occurred_at", &DataType::Int64)),
            ("occurred_at", texts.clone()),
            ("occurred_at", dates.clone()),
            ("event_id", ints.clone()),
            ("event_id", binary),
            ("status", bools),
            ("model", Arc::new(Int32Array::from_iter_values(0..n as i32))),
            ("ingested_at", texts.clone()),
            ("account_id", list),
            ("product", nulls.clone()),
        ],
        Ds::Allocations => vec![
            ("included_credits", floats("included_credits")),
            ("period_start", dates),
            ("period_end", ints.clone()),
            ("billing_anchor", ints.clone()),
            ("plan_id", nulls.clone()),
        ],
        Ds::Grants => vec![
            ("credits", floats("credits")),
            ("credits", texts.clone()),
            ("priority", cast("credits", &DataType::Float64)),
            ("priority", texts.clone()),
            ("expires_at", texts.clone()),
            ("kind", ints.clone()),
        ],
        Ds::Debits => vec![
            ("credits", floats("credits")),
            ("credits", texts.clone()),
            ("event_id", ints.clone()),
            ("recorded_at", cast("recorded_at", &DataType::Int64)),
            ("entry_id", nulls),
        ],
    }
}

/// Ways to break a Parquet file's bytes.
fn broken_bytes(b: &[u8], rng: &mut SplitMix) -> Vec<(&'static str, Vec<u8>)> {
    let len = b.len();
    let footer_len = u32::from_le_bytes(b[len - 8..len - 4].try_into().unwrap()) as usize;
    let footer_start = len - 8 - footer_len;
    let with_len = |l: u32| [&b[..len - 8], &l.to_le_bytes()[..], b"PAR1"].concat();
    let mut garbage = b"PAR1".to_vec();
    garbage.extend((0..600).map(|_| rng.next() as u8));
    garbage.extend_from_slice(b"PAR1");
    let mut cases: Vec<(&'static str, Vec<u8>)> = vec![
        ("zero bytes", Vec::new()),
        ("text", b"event_id,account_id\ne1,a1\n".to_vec()),
        ("garbage between magics", garbage),
        ("footer length huge", with_len(u32::MAX)),
        ("footer length beyond the file", with_len(len as u32)),
        ("footer length zero", with_len(0)),
        (
            "footer zeroed",
            [
                &b[..footer_start],
                &vec![0u8; footer_len][..],
                &b[len - 8..],
            ]
            .concat(),
        ),
        (
            "middle cut, footer kept",
            [&b[..footer_start / 2], &b[footer_start..]].concat(),
        ),
        ("bad head magic", [b"PAR2", &b[4..]].concat()),
    ];
    for (what, cut) in [
        ("truncated to 1 byte", 1),
        ("truncated to the magic", 4),
        ("truncated to 11 bytes", 11),
        ("truncated to 12 bytes", 12),
        ("truncated to a third", len / 3),
        ("truncated in the middle", len / 2),
        ("truncated inside the footer", footer_start + footer_len / 2),
        ("truncated before the footer length", len - 8),
        ("truncated before the last magic", len - 4),
        ("truncated by one byte", len - 1),
    ] {
        cases.push((what, b[..cut].to_vec()));
    }
    cases
}

#[test]
fn each_bad_file_alone_stops_the_run_with_exit_2_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated_data(tmp.path(), 60, 6000, seed(), "0");
    let out = tmp.path().join("out");
    let good = reconcile(&data, &out);
    assert_eq!(good.status.code(), Some(0), "{}", describe(&good));
    let baseline = folder_bytes(&out);
    std::fs::remove_dir_all(&out).unwrap();

    let mut rng = SplitMix(seed() ^ 0xBAD_F11E);
    // (rel path, bytes, a word stderr must name, refused: false for files never read)
    let mut cases: Vec<(String, Vec<u8>, Option<String>, bool)> = Vec::new();
    for (k, sample) in samples(&data).iter().enumerate() {
        let mut next = 0;
        let mut at = |replace: bool| {
            next += 1;
            if replace {
                sample.rel.clone()
            } else {
                format!("{}/zbad={k}{next:02}/part-0.parquet", sample.ds.name())
            }
        };
        for (i, (_, bytes)) in broken_bytes(&sample.bytes, &mut rng)
            .into_iter()
            .enumerate()
        {
            cases.push((at(i % 2 == 0), bytes, None, true));
        }
        for (i, spec) in sample.ds.specs().iter().enumerate() {
            if spec.required {
                let b = with_column(&sample.batch, spec.name, None);
                let bytes = parquet_bytes(&b, None);
                cases.push((at(i % 2 == 1), bytes, Some(spec.name.to_string()), true));
            }
        }
        for (i, (name, array)) in mistyped(sample).into_iter().enumerate() {
            let b = with_column(&sample.batch, name, Some(array));
            let bytes = parquet_bytes(&b, None);
            cases.push((at(i % 2 == 0), bytes, Some(name.to_string()), true));
        }
        // never read: names starting with `.` or `_`, other extensions
        let ds = sample.ds.name();
        for rel in [
            format!("{ds}/_bad.parquet"),
            format!("{ds}/.bad.parquet"),
            format!("{ds}/_tmp/part-0.parquet"),
            format!("{ds}/zbad=9/part-0.parquet.tmp"),
        ] {
            cases.push((rel, b"not parquet".to_vec(), None, false));
        }
    }
    // The counts the README's Tests section gives: a case added or lost shows here.
    let refused = cases.iter().filter(|case| case.3).count();
    assert_eq!(
        (refused, cases.len() - refused),
        (127, 16),
        "refused and skipped files"
    );

    for (rel, bytes, word, refused) in &cases {
        let path = data.join(rel);
        let backup = std::fs::read(&path).ok();
        write_file(&data, rel, bytes);
        let run = reconcile(&data, &out);
        if *refused {
            assert_refused(tmp.path(), &out, &run, rel, word.as_deref());
        } else {
            assert_eq!(run.status.code(), Some(0), "{rel}: {}", describe(&run));
            assert!(folder_bytes(&out) == baseline, "{rel}: outputs changed");
            std::fs::remove_dir_all(&out).unwrap();
        }
        match backup {
            Some(original) => std::fs::write(&path, original).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
    }
    let again = reconcile(&data, &out);
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
    assert!(folder_bytes(&out) == baseline);
}

#[test]
fn flipped_bytes_never_crash_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated_data(tmp.path(), 40, 4000, seed(), "0");
    let out = tmp.path().join("out");
    let mut rng = SplitMix(seed() ^ 0xF11B);
    let mut outcomes = BTreeMap::new();
    for sample in samples(&data) {
        let b = &sample.bytes;
        let len = b.len();
        let footer_len = u32::from_le_bytes(b[len - 8..len - 4].try_into().unwrap()) as usize;
        for i in 0..16 {
            let pos = if i % 2 == 0 {
                len - 8 - footer_len + rng.below(footer_len)
            } else {
                4 + rng.below(len - 8 - footer_len - 4)
            };
            let mut bytes = b.clone();
            bytes[pos] ^= 1 + rng.below(255) as u8;
            std::fs::write(data.join(&sample.rel), &bytes).unwrap();
            let run = reconcile(&data, &out);
            let what = format!("{} byte {pos}: {}", sample.rel, describe(&run));
            match run.status.code() {
                Some(0) => {
                    let summary = json(&out.join("summary.json"));
                    assert_eq!(summary["conservation"]["holds"], true, "{what}");
                    std::fs::remove_dir_all(&out).unwrap();
                }
                Some(2) => assert_refused(tmp.path(), &out, &run, &sample.rel, None),
                _ => panic!("{what}"),
            }
            *outcomes.entry(run.status.code()).or_insert(0) += 1;
        }
        std::fs::write(data.join(&sample.rel), b).unwrap();
    }
    eprintln!("flipped bytes: exit codes {outcomes:?}");
}

// ---- strings that are not UTF-8 ------------------------------------------------------------

/// Every usage file of a generated root as one file of one row group (over two reader
/// batches of 65,536 rows), `edit` applied to its rows, written with the writer's default
/// encodings: dictionary pages for the labels, and for `event_id` a dictionary that
/// overflows into plain pages well before row 100,000.
fn one_usage_file(data: &Path, edit: &dyn Fn(&RecordBatch) -> RecordBatch) {
    let files = dataset_files(data, "usage");
    let batches: Vec<RecordBatch> = (files.iter())
        .map(|f| read_parquet(&data.join(f)))
        .collect();
    let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    assert!(all.num_rows() > 100_002, "{} usage rows", all.num_rows());
    std::fs::remove_dir_all(data.join("usage")).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(1 << 20))
        .build();
    let mut bytes = Vec::new();
    let edited = edit(&all);
    let mut writer = ArrowWriter::try_new(&mut bytes, edited.schema(), Some(props)).unwrap();
    writer.write(&edited).unwrap();
    writer.close().unwrap();
    write_file(data, "usage/all.parquet", &bytes);
}

/// `batch` with the value of string column `name` at `row` given a 0xff byte (written as a
/// string all the same, as an exporter that does not check would).
fn with_byte_ff(batch: &RecordBatch, name: &str, row: usize) -> RecordBatch {
    let column = batch.column_by_name(name).unwrap().as_string::<i32>();
    let mut values: Vec<Option<Vec<u8>>> = (column.iter())
        .map(|v| v.map(|v| v.as_bytes().to_vec()))
        .collect();
    values[row].as_mut().unwrap().push(0xff);
    with_column(batch, name, Some(Arc::new(strings_unchecked(values))))
}

/// `batch` with the quantity of `row` negative (a row rejected `negative_quantity`).
fn with_negative_quantity(batch: &RecordBatch, row: usize) -> RecordBatch {
    let column = batch
        .column_by_name("quantity")
        .unwrap()
        .as_primitive::<Decimal128Type>();
    let mut values: Vec<Option<i128>> = column.iter().collect();
    values[row] = Some(-1000);
    let quantities = Decimal128Array::from(values).with_data_type(column.data_type().clone());
    with_column(batch, "quantity", Some(Arc::new(quantities)))
}

/// A string that is not UTF-8 is a bad row (contract section 2: "A bad *row* is never a
/// reason to stop"), wherever it falls in a large row group: in a plain-encoded `event_id`
/// past the reader's first batch (the row group is refused mid-way: read again from the
/// first row not passed on, never twice), or in a dictionary-encoded `account_id` (refused
/// at its first batch). The row is rejected `bad_value`; the run's other outputs are those
/// of a run in which that row is rejected for another reason; a split run (3 groups: the
/// light pass and the spill pass meet it too) publishes the same bytes and warns once.
#[test]
fn a_non_utf8_string_rejects_its_row_wherever_it_falls_in_a_row_group() {
    let tmp = tempfile::tempdir().unwrap();
    let generated = generated_data(tmp.path(), 200, 110_000, 7, "0.01");
    let variant = |name: &str, edit: &dyn Fn(&RecordBatch) -> RecordBatch| {
        let data = tmp.path().join(name);
        copy_dir(&generated, &data);
        one_usage_file(&data, edit);
        data
    };
    let bad_id = variant("bad-id", &|b| with_byte_ff(b, "event_id", 100_000));
    let bad_account = variant("bad-account", &|b| with_byte_ff(b, "account_id", 100_001));
    // The id's row with its product bad too: a column only a split run's spill pass reads.
    let bad_id_and_product = variant("bad-id-and-product", &|b| {
        with_byte_ff(&with_byte_ff(b, "event_id", 100_000), "product", 100_000)
    });
    let negative = variant("negative", &|b| with_negative_quantity(b, 100_000));
    // An extra nested column first (extra columns are ignored): Parquet's columns are then
    // not numbered as the top-level fields are.
    let nested_first = variant("nested-first", &|b| {
        with_nested_column_first(&with_byte_ff(b, "account_id", 100_001))
    });
    let run = |data: &Path, out: &str, extra: &[&str]| {
        let out = tmp.path().join(out);
        let run = run_command("reconcile", data, AS_OF, &out)
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(0), "{}", describe(&run));
        (out, stderr(&run))
    };
    let not_utf8 = |rejects: &[RejectRow]| -> Vec<RejectRow> {
        (rejects.iter())
            .filter(|r| r.4.contains("UTF-8"))
            .cloned()
            .collect()
    };
    let reread_strings = |strings: u64, from: u64| {
        format!(
            "usage/all.parquet: row group 0 holds {strings} string(s) that are not UTF-8 (from \
             row {from} on, read with its strings as bytes)"
        )
    };
    let reread = |from: u64| reread_strings(1, from);

    // The tables `tables` of two runs' outputs hold the same bytes.
    let assert_same_tables = |a: &Path, b: &Path, tables: &[&str]| {
        for table in tables {
            assert!(
                std::fs::read(a.join(table)).unwrap() == std::fs::read(b.join(table)).unwrap(),
                "{table}"
            );
        }
    };
    let computed_tables = ["balances.parquet", "discrepancies.parquet"];
    let all_tables = [computed_tables.as_slice(), &["rejects.parquet"]].concat();

    let (id_out, id_log) = run(&bad_id, "bad-id-out", &[]);
    assert!(id_log.contains(&reread(65_536)), "{id_log}");
    let id_rejects = rejects(&id_out);
    let [(dataset, file, row, reason, detail)] = &not_utf8(&id_rejects)[..] else {
        panic!("{id_rejects:?}");
    };
    assert_eq!(
        (dataset.as_str(), file.as_str(), *row),
        ("usage", "usage/all.parquet", 100_000)
    );
    assert_eq!(reason, "bad_value");
    assert!(
        detail.starts_with("event_id is not UTF-8: byte 20 of 21 is 0xff: \"evt-"),
        "{detail}"
    );
    assert!(
        detail.ends_with("\\xff\"; the contract's strings are UTF-8"),
        "{detail}"
    );

    // The same row rejected for a negative quantity: every other output is the same.
    let (negative_out, _) = run(&negative, "negative-out", &[]);
    assert_same_tables(&id_out, &negative_out, &computed_tables);
    let others = |rejects: Vec<RejectRow>| -> Vec<RejectRow> {
        (rejects.into_iter())
            .filter(|r| r.2 != 100_000 || r.1 != "usage/all.parquet")
            .collect()
    };
    assert_eq!(others(id_rejects.clone()), others(rejects(&negative_out)));

    // Split into 3 groups: the light pass reads the ids, the spill pass every column.
    let (split_out, _) = run(&bad_id, "bad-id-split", &["--groups", "3"]);
    assert_same_tables(&id_out, &split_out, &all_tables);
    // Warned of once, by the spill pass, not by the light pass: with the row's product
    // bad too, the one warning counts both strings (the light pass reads only the id).
    let (two_out, two_log) = run(&bad_id_and_product, "bad-two-out", &[]);
    let two_warning = reread_strings(2, 0);
    assert!(two_log.contains(&two_warning), "{two_log}");
    let (two_split_out, two_split_log) =
        run(&bad_id_and_product, "bad-two-split", &["--groups", "3"]);
    assert_eq!(
        two_split_log.matches(&two_warning).count(),
        1,
        "{two_split_log}"
    );
    assert_eq!(
        two_split_log.matches("not UTF-8 (from row").count(),
        1,
        "{two_split_log}"
    );
    assert_same_tables(&two_out, &two_split_out, &all_tables);

    let (account_out, account_log) = run(&bad_account, "bad-account-out", &[]);
    assert!(account_log.contains(&reread(0)), "{account_log}");
    let account_rejects = rejects(&account_out);
    let [(_, _, row, reason, detail)] = &not_utf8(&account_rejects)[..] else {
        panic!("{account_rejects:?}");
    };
    assert_eq!((*row, reason.as_str()), (100_001, "bad_value"));
    assert!(
        detail.starts_with("account_id is not UTF-8: byte 11 of 12 is 0xff: \"acct-"),
        "{detail}"
    );
    let (nested_out, _) = run(&nested_first, "nested-first-out", &[]);
    assert_eq!(not_utf8(&rejects(&nested_out)), not_utf8(&account_rejects));
    assert_same_tables(&account_out, &nested_out, &all_tables);
}

/// `batch` with a struct column of two integers before its columns.
fn with_nested_column_first(batch: &RecordBatch) -> RecordBatch {
    let n = batch.num_rows() as i64;
    let inner: Vec<(Arc<Field>, ArrayRef)> = ["a", "b"]
        .iter()
        .map(|name| {
            let field = Arc::new(Field::new(*name, DataType::Int64, false));
            let values: ArrayRef = Arc::new(Int64Array::from_iter_values(0..n));
            (field, values)
        })
        .collect();
    let nested = arrow::array::StructArray::from(inner);
    let mut fields = vec![Arc::new(Field::new(
        "extra",
        nested.data_type().clone(),
        false,
    ))];
    fields.extend(batch.schema().fields().iter().cloned());
    let mut columns: Vec<ArrayRef> = vec![Arc::new(nested)];
    columns.extend(batch.columns().iter().cloned());
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}
