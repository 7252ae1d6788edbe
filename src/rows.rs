//! Stage 1, usage and ledger: every row of a decoded batch becomes a compact row
//! ([`Usage`], [`Debit`]: codes and id references, no owned string) or a reject.
//!
//! A row is first tried on a fast path that accepts only rows with nothing wrong: labels
//! (accounts, products, statuses...) are looked up once per distinct value of the batch,
//! not once per row. Anything the fast path does not accept goes through the contract's
//! checks in `load` (`check_usage`, `check_debit`), which name the reject exactly; so the
//! fast path decides nothing on its own but "this row is valid".

use crate::dict::{DictBuilder, IdChunk, IdRef, Ids, NO_WORD};
use crate::error::{Result, TallyError};
use crate::load::{self, Batch, Column, InputFile, Parsed, Plan, Unit, MAX_STRING_BYTES};
use crate::model::*;
use crate::route::CrossBucket;
use crate::validate::id_hash;
use arrow::array::{Array, Int32Array, StringArray};
use rustc_hash::FxHashMap;

/// A label value with no code: null.
const NULL: u32 = u32::MAX;
/// A label value with no code: too long, or not a value the column allows (an unknown
/// status). (Codes of the run's dictionaries stay below both.)
const BAD: u32 = u32::MAX - 1;

/// Codes of the last dictionary seen in a column: the batches of a row group share one.
/// The values are kept (not only their address), so that the address cannot be reused by
/// another dictionary while it is remembered.
#[derive(Default)]
pub struct DictMemo {
    values: Option<(StringArray, Vec<u32>)>,
}

/// The same dictionary values (the same buffers), not merely equal ones.
fn same_values(a: &StringArray, b: &StringArray) -> bool {
    a.len() == b.len()
        && a.values().as_ptr() == b.values().as_ptr()
        && a.value_offsets().as_ptr() == b.value_offsets().as_ptr()
}

impl DictMemo {
    /// The code of every row of a dictionary column (`keys` into `values`): `f` of its
    /// value (`None`: a null value), computed once per dictionary (again only when
    /// `values` are not the dictionary seen last); `null` for a null key and `past` for a
    /// key past the dictionary (which the Parquet reader refuses first).
    pub fn key_codes(
        &mut self,
        keys: &Int32Array,
        values: &StringArray,
        f: &dyn Fn(Option<&str>) -> u32,
        null: u32,
        past: u32,
    ) -> Vec<u32> {
        let same = self
            .values
            .as_ref()
            .is_some_and(|(seen, _)| same_values(seen, values));
        if !same {
            let mapped: Vec<u32> = (0..values.len())
                .map(|i| f((!values.is_null(i)).then(|| values.value(i))))
                .collect();
            self.values = Some((values.clone(), mapped));
        }
        let by_value = &self.values.as_ref().expect("set above").1;
        // A null row's key may be any value: it is overwritten below.
        let mut codes: Vec<u32> = (keys.values().iter())
            .map(|&key| by_value.get(key as usize).copied().unwrap_or(past))
            .collect();
        if let Some(nulls) = keys.nulls() {
            for (code, valid) in codes.iter_mut().zip(nulls.iter()) {
                if !valid {
                    *code = null;
                }
            }
        }
        codes
    }
}

/// The code of every row of a label column (`NULL`, `BAD` or a code). A dictionary
/// column's distinct values are coded once (and again only when a batch brings another
/// dictionary); a plain column's through a cache of the batch.
fn label_codes(column: &Column, memo: &mut DictMemo, code: &dyn Fn(&str) -> u32) -> Vec<u32> {
    let value_code = |value: Option<&str>| match value {
        // A null dictionary value: the contract's checks decide the row.
        None => BAD,
        Some(value) => checked(value, code),
    };
    match column {
        Column::Dict(keys, values) => memo.key_codes(keys, values, &value_code, NULL, BAD),
        Column::Str(values) => plain_label_codes(values.len(), |i| column.str(i), code),
        // Labels are asked for as dictionaries; a file whose hint the reader refused may
        // still hold views.
        Column::View(values) => plain_label_codes(values.len(), |i| column.str(i), code),
        // Absent (all null); a label column is never anything else.
        _ => vec![NULL; 0],
    }
}

/// The codes of a plain (not dictionary) label column's `rows` values, through a cache of
/// the batch.
fn plain_label_codes<'a>(
    rows: usize,
    value: impl Fn(usize) -> Option<&'a str>,
    code: &dyn Fn(&str) -> u32,
) -> Vec<u32> {
    let mut cache: FxHashMap<&str, u32> = FxHashMap::default();
    (0..rows)
        .map(|i| match value(i) {
            None => NULL,
            Some(value) => *cache.entry(value).or_insert_with(|| checked(value, code)),
        })
        .collect()
}

/// `code(value)`, or `BAD` when the value is longer than the limit.
fn checked(value: &str, code: &dyn Fn(&str) -> u32) -> u32 {
    match value.len() > MAX_STRING_BYTES {
        true => BAD,
        false => code(value),
    }
}

/// A label's code at `row` (an absent column is all null).
fn at(codes: &[u32], row: usize) -> u32 {
    codes.get(row).copied().unwrap_or(NULL)
}

fn status_code(s: &str) -> u32 {
    EventStatus::parse(s).map_or(BAD, |status| status as u32)
}

fn kind_code(s: &str) -> u32 {
    EntryKind::parse(s).map_or(BAD, |kind| kind as u32)
}

/// A number that is not a valid amount here (null, out of range, or negative: the
/// contract's checks decide).
const NOT_AN_AMOUNT: i64 = -1;

/// Every row's amount in thousandths, when valid and ≥ 0 (else [`NOT_AN_AMOUNT`]).
fn amounts(column: &Column, rows: usize) -> Vec<i64> {
    const LIMIT: i128 = crate::amount::INPUT_LIMIT_MILLIS;
    let valid = |v: i128| {
        if (0..LIMIT).contains(&v) {
            v as i64
        } else {
            NOT_AN_AMOUNT
        }
    };
    let mut out: Vec<i64> = match column {
        // Scale 3 (DECIMAL(p, 3)): the unscaled value is the amount in thousandths.
        Column::Dec128(a, 3) => a.values().iter().map(|&v| valid(v)).collect(),
        Column::Int(a) => a
            .values()
            .iter()
            .map(|&v| valid(i128::from(v) * 1000))
            .collect(),
        _ => (0..rows)
            .map(|i| match column.milli(i) {
                Some(Ok(m)) if m.0 >= 0 => m.0,
                _ => NOT_AN_AMOUNT,
            })
            .collect(),
    };
    if let Some(nulls) = column_nulls(column) {
        for i in nulls
            .iter()
            .enumerate()
            .filter_map(|(i, v)| (!v).then_some(i))
        {
            out[i] = NOT_AN_AMOUNT;
        }
    }
    out
}

/// A timestamp that is not a valid instant (out of range; or null where one is required).
const NOT_AN_INSTANT: i64 = i64::MIN;

/// Every row's instant in microseconds; `null` for a null cell, [`NOT_AN_INSTANT`] for one
/// out of range.
fn instants(column: &Column, rows: usize, null: i64) -> Vec<i64> {
    match column {
        Column::Ts(a, arrow::datatypes::TimeUnit::Microsecond) => {
            const MIN: i64 = -62_135_596_800 * 1_000_000;
            const MAX: i64 = 253_402_300_800 * 1_000_000;
            let mut out: Vec<i64> = a
                .values()
                .iter()
                .map(|&v| {
                    if (MIN..MAX).contains(&v) {
                        v
                    } else {
                        NOT_AN_INSTANT
                    }
                })
                .collect();
            if let Some(nulls) = a.nulls() {
                for i in nulls
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| (!v).then_some(i))
                {
                    out[i] = null;
                }
            }
            out
        }
        _ => (0..rows)
            .map(|i| match column.micros(i) {
                None => null,
                Some(Ok(t)) => t,
                Some(Err(_)) => NOT_AN_INSTANT,
            })
            .collect(),
    }
}

/// The null buffer of a number column.
fn column_nulls(column: &Column) -> Option<&arrow::buffer::NullBuffer> {
    match column {
        Column::Int(a) => a.nulls(),
        Column::UInt(a) => a.nulls(),
        Column::Dec128(a, _) => a.nulls(),
        Column::Dec256(a, _) => a.nulls(),
        Column::Double(a) => a.nulls(),
        _ => None,
    }
}

/// What a row group's reader keeps between batches.
#[derive(Default)]
pub struct Memos {
    labels: [DictMemo; 5],
    skus: SkuCache,
}

/// Recently seen (product, action, model) words and their skus: a direct-mapped cache in
/// front of the run's sku dictionary (most batches have few skus). Its 16 KB are taken at
/// its first use: every row group of a load has its `Memos` from the start, and a file of
/// 100,000 one-row row groups took 1.6 GB of empty caches (an audit's repro).
#[derive(Default)]
struct SkuCache {
    slots: Vec<([u32; 3], u32)>,
}

impl SkuCache {
    const SLOTS: usize = 1 << 10;

    fn sku(&mut self, key: [u32; 3], dicts: &DictBuilder) -> u32 {
        if self.slots.is_empty() {
            self.slots = vec![([NULL; 3], 0); Self::SLOTS];
        }
        let h = key[0]
            .wrapping_mul(0x9E37_79B9)
            .wrapping_add(key[1].wrapping_mul(0x85EB_CA6B))
            .wrapping_add(key[2].wrapping_mul(0xC2B2_AE35));
        let slot = &mut self.slots[(h >> 22) as usize];
        if slot.0 != key {
            *slot = (key, dicts.skus.code(key));
        }
        slot.1
    }
}

/// A required id within the length limit, else `None`.
fn id_of(column: &Column, row: usize) -> Option<&str> {
    column.str(row).filter(|s| s.len() <= MAX_STRING_BYTES)
}

/// A valid usage row of a batch, its id still in the batch.
pub struct UsageFields<'b> {
    pub usage: Usage,
    pub event_id: &'b str,
}

/// Parses the usage rows of one batch: each column is converted for every row first
/// (codes, amounts, instants), then rows are made from the converted columns.
pub struct UsageParser<'b> {
    batch: &'b Batch,
    file: u32,
    dicts: &'b DictBuilder,
    account: Vec<u32>,
    sku: Vec<u32>,
    status: Vec<u32>,
    quantity: Vec<i64>,
    occurred_at: Vec<i64>,
    ingested_at: Vec<i64>,
}

impl<'b> UsageParser<'b> {
    pub fn new(batch: &'b Batch, file: u32, dicts: &'b DictBuilder, memos: &mut Memos) -> Self {
        let c = &batch.columns;
        let n = batch.len;
        let [m0, m1, m2, m3, m4] = &mut memos.labels;
        let account = label_codes(&c[1], m0, &|s| dicts.accounts.code(s));
        let product = label_codes(&c[2], m1, &|s| dicts.words.code(s));
        let action = label_codes(&c[3], m2, &|s| dicts.words.code(s));
        let model = label_codes(&c[4], m3, &|s| model_word(dicts, s));
        let sku = (0..n)
            .map(|i| {
                let (p, a) = (at(&product, i), at(&action, i));
                let m = match at(&model, i) {
                    NULL => NO_WORD,
                    m => m,
                };
                match p >= BAD || a >= BAD || m == BAD {
                    true => BAD,
                    false => memos.skus.sku([p, a, m], dicts),
                }
            })
            .collect();
        UsageParser {
            batch,
            file,
            dicts,
            account,
            sku,
            status: label_codes(&c[6], m4, &status_code),
            quantity: amounts(&c[5], n),
            occurred_at: instants(&c[7], n, NOT_AN_INSTANT),
            ingested_at: instants(&c[8], n, NO_INSTANT),
        }
    }

    /// Row `i` of the batch: a valid row, or its reject.
    pub fn parse(&mut self, i: usize) -> Parsed<UsageFields<'b>> {
        if let Some(fields) = self.fast(i) {
            return Parsed::Row(fields);
        }
        let at = RowRef {
            file: self.file,
            row: self.batch.first_row + i as u64,
        };
        match load::check_usage(self.batch, i, at) {
            Parsed::Rejected(r) => Parsed::Rejected(r),
            // Valid, but not the fast path's usual shape: coded from its strings.
            Parsed::Row(r) => Parsed::Row(UsageFields {
                usage: Usage {
                    at: At::new(self.file, at.row),
                    id_hash: id_hash(r.event_id),
                    id: IdRef::NONE,
                    occurred_at: r.occurred_at,
                    ingested_at: r.ingested_at.unwrap_or(NO_INSTANT),
                    quantity: r.quantity.0,
                    account: self.dicts.accounts.code(r.account_id),
                    sku: self.dicts.sku(r.product, r.action, r.model),
                    status: r.status as u8,
                    flags: 0,
                    _pad: [0; 6],
                },
                event_id: r.event_id,
            }),
        }
    }

    fn fast(&self, i: usize) -> Option<UsageFields<'b>> {
        // A value that is not UTF-8 is coded from its replacement: the checks reject it.
        if self.batch.row_not_utf8(i) {
            return None;
        }
        let event_id = id_of(&self.batch.columns[0], i)?;
        let (account, sku, status) = (at(&self.account, i), self.sku[i], at(&self.status, i));
        let (quantity, occurred_at, ingested_at) =
            (self.quantity[i], self.occurred_at[i], self.ingested_at[i]);
        let valid = account < BAD
            && sku < BAD
            && status < BAD
            && quantity >= 0
            && occurred_at != NOT_AN_INSTANT
            && ingested_at != NOT_AN_INSTANT;
        valid.then(|| UsageFields {
            usage: Usage {
                at: At::new(self.file, self.batch.first_row + i as u64),
                id_hash: id_hash(event_id),
                id: IdRef::NONE,
                occurred_at,
                ingested_at,
                quantity,
                account,
                sku,
                status: status as u8,
                flags: 0,
                _pad: [0; 6],
            },
            event_id,
        })
    }
}

/// The word of a model; an empty model is no model.
fn model_word(dicts: &DictBuilder, s: &str) -> u32 {
    match s.is_empty() {
        true => NO_WORD,
        false => dicts.words.code(s),
    }
}

/// A valid ledger row of a batch, its ids still in the batch.
pub struct DebitFields<'b> {
    pub debit: Debit,
    pub entry_id: &'b str,
    pub event_id: Option<&'b str>,
}

/// Parses the ledger rows of one batch (column by column, as [`UsageParser`]).
pub struct DebitParser<'b> {
    batch: &'b Batch,
    file: u32,
    dicts: &'b DictBuilder,
    account: Vec<u32>,
    kind: Vec<u32>,
    credits: Vec<i64>,
    recorded_at: Vec<i64>,
}

impl<'b> DebitParser<'b> {
    pub fn new(batch: &'b Batch, file: u32, dicts: &'b DictBuilder, memos: &mut Memos) -> Self {
        let c = &batch.columns;
        let n = batch.len;
        let [m0, m1, ..] = &mut memos.labels;
        DebitParser {
            batch,
            file,
            dicts,
            account: label_codes(&c[1], m0, &|s| dicts.accounts.code(s)),
            kind: label_codes(&c[3], m1, &kind_code),
            credits: amounts(&c[4], n),
            recorded_at: instants(&c[5], n, NOT_AN_INSTANT),
        }
    }

    pub fn parse(&mut self, i: usize) -> Parsed<DebitFields<'b>> {
        if let Some(fields) = self.fast(i) {
            return Parsed::Row(fields);
        }
        let at = RowRef {
            file: self.file,
            row: self.batch.first_row + i as u64,
        };
        match load::check_debit(self.batch, i, at) {
            Parsed::Rejected(r) => Parsed::Rejected(r),
            Parsed::Row(r) => Parsed::Row(DebitFields {
                debit: Debit {
                    at: At::new(self.file, at.row),
                    entry_hash: id_hash(r.entry_id),
                    event_hash: r.event_id.map_or(0, id_hash),
                    entry_id: IdRef::NONE,
                    event_id: IdRef::NONE,
                    credits: r.credits.0,
                    recorded_at: r.recorded_at,
                    account: self.dicts.accounts.code(r.account_id),
                    kind: r.kind as u8,
                    flags: 0,
                    _pad: [0; 2],
                },
                entry_id: r.entry_id,
                event_id: r.event_id,
            }),
        }
    }

    fn fast(&self, i: usize) -> Option<DebitFields<'b>> {
        // A value that is not UTF-8 is coded from its replacement: the checks reject it.
        if self.batch.row_not_utf8(i) {
            return None;
        }
        let c = &self.batch.columns;
        let entry_id = id_of(&c[0], i)?;
        let event_id = match c[2].is_null(i) {
            true => None,
            false => Some(id_of(&c[2], i)?),
        };
        let (account, kind) = (at(&self.account, i), at(&self.kind, i));
        let (credits, recorded_at) = (self.credits[i], self.recorded_at[i]);
        let valid = account < BAD && kind < BAD && credits >= 0 && recorded_at != NOT_AN_INSTANT;
        valid.then(|| DebitFields {
            debit: Debit {
                at: At::new(self.file, self.batch.first_row + i as u64),
                entry_hash: id_hash(entry_id),
                event_hash: event_id.map_or(0, id_hash),
                entry_id: IdRef::NONE,
                event_id: IdRef::NONE,
                credits,
                recorded_at,
                account,
                kind: kind as u8,
                flags: 0,
                _pad: [0; 2],
            },
            entry_id,
            event_id,
        })
    }
}

/// A valid row of a batch, its ids still in the batch.
pub trait RowFields {
    type Row: CompactRow;
    /// The row, its ids written to `chunk` (number `chunk_no` of its [`Ids`]).
    fn store(self, chunk: &mut IdChunk, chunk_no: u32) -> Self::Row;
    /// Whether the row's partition is decided by `route::resolve` (its ids join rows
    /// of other partitions).
    fn is_candidate(&self, cross: &CrossBucket) -> bool;
}

impl RowFields for UsageFields<'_> {
    type Row = Usage;
    fn store(self, chunk: &mut IdChunk, chunk_no: u32) -> Usage {
        Usage {
            id: IdRef::new(chunk_no, chunk.push(self.event_id)),
            ..self.usage
        }
    }
    fn is_candidate(&self, cross: &CrossBucket) -> bool {
        cross.event_by_hash(self.usage.id_hash)
    }
}

impl RowFields for DebitFields<'_> {
    type Row = Debit;
    fn store(self, chunk: &mut IdChunk, chunk_no: u32) -> Debit {
        Debit {
            entry_id: IdRef::new(chunk_no, chunk.push(self.entry_id)),
            event_id: match self.event_id {
                Some(e) => IdRef::new(chunk_no, chunk.push(e)),
                None => IdRef::NONE,
            },
            ..self.debit
        }
    }
    fn is_candidate(&self, cross: &CrossBucket) -> bool {
        cross.ledger_row_by_hash(
            Some(self.debit.entry_hash),
            self.event_id.map(|_| self.debit.event_hash),
        )
    }
}

/// Parses the rows of one batch.
pub trait RowParser {
    type Fields: RowFields;
    fn parse(&mut self, i: usize) -> Parsed<Self::Fields>;
}

impl<'b> RowParser for UsageParser<'b> {
    type Fields = UsageFields<'b>;
    fn parse(&mut self, i: usize) -> Parsed<UsageFields<'b>> {
        UsageParser::parse(self, i)
    }
}

impl<'b> RowParser for DebitParser<'b> {
    type Fields = DebitFields<'b>;
    fn parse(&mut self, i: usize) -> Parsed<DebitFields<'b>> {
        DebitParser::parse(self, i)
    }
}

/// A dataset read into compact rows: its columns and how its batches are parsed.
pub trait Source: Sync {
    type Row: CompactRow;
    type Parser<'b>: RowParser<Fields: RowFields<Row = Self::Row>>
    where
        Self: 'b;
    fn specs(&self) -> &'static [load::ColSpec];
    /// About the bytes a row's ids take in an id chunk (for sizing chunks up front).
    fn id_bytes_per_row(&self) -> usize;
    fn parser<'b>(&'b self, batch: &'b Batch, file: u32, memos: &mut Memos) -> Self::Parser<'b>;
    /// Whether a row could be a candidate, from its raw cells (so that a shard parses
    /// only its own rows and possible candidates).
    fn raw_candidate(&self, batch: &Batch, row: usize, cross: &CrossBucket) -> bool;
}

/// The usage dataset, its labels coded in `dicts`.
pub struct UsageSource<'d> {
    pub dicts: &'d DictBuilder,
}

impl Source for UsageSource<'_> {
    type Row = Usage;
    type Parser<'b>
        = UsageParser<'b>
    where
        Self: 'b;
    fn specs(&self) -> &'static [load::ColSpec] {
        &load::USAGE_COLUMNS
    }
    fn id_bytes_per_row(&self) -> usize {
        24
    }
    fn parser<'b>(&'b self, batch: &'b Batch, file: u32, memos: &mut Memos) -> UsageParser<'b> {
        UsageParser::new(batch, file, self.dicts, memos)
    }
    fn raw_candidate(&self, batch: &Batch, row: usize, cross: &CrossBucket) -> bool {
        batch.columns[0].str(row).is_some_and(|e| cross.event(e))
    }
}

/// The ledger dataset, its labels coded in `dicts`.
pub struct DebitSource<'d> {
    pub dicts: &'d DictBuilder,
}

impl Source for DebitSource<'_> {
    type Row = Debit;
    type Parser<'b>
        = DebitParser<'b>
    where
        Self: 'b;
    fn specs(&self) -> &'static [load::ColSpec] {
        &load::DEBIT_COLUMNS
    }
    fn id_bytes_per_row(&self) -> usize {
        48
    }
    fn parser<'b>(&'b self, batch: &'b Batch, file: u32, memos: &mut Memos) -> DebitParser<'b> {
        DebitParser::new(batch, file, self.dicts, memos)
    }
    fn raw_candidate(&self, batch: &Batch, row: usize, cross: &CrossBucket) -> bool {
        cross.ledger_row(batch.columns[0].str(row), batch.columns[2].str(row))
    }
}

/// A dataset's valid rows in (file, row) order, their ids, and its rejects.
pub struct Loaded<R> {
    pub rows: Vec<R>,
    /// Chunk `k` holds the ids of the `k`-th row group.
    pub ids: Ids,
    pub rejects: Vec<Reject>,
    /// Rows read.
    pub read: u64,
}

/// What decoding one row group leaves.
struct Part<'a, R> {
    /// The row group's share of the output: valid rows are written from its start.
    slots: &'a mut [R],
    written: usize,
    ids: IdChunk,
    rejects: Vec<Reject>,
    read: u64,
    memos: Memos,
    /// The row group's ids passed what one chunk holds (its file is refused).
    ids_past_a_chunk: bool,
}

/// Read a whole dataset into one vector of compact rows. Row groups are decoded in
/// parallel straight into their places (one allocation sized from the footers, no
/// per-row-group vectors copied together); rejects leave gaps, closed afterwards.
pub fn load<S: Source>(
    source: &S,
    files: &[InputFile],
    file_done: &(dyn Fn() + Sync),
) -> Result<Loaded<S::Row>> {
    let specs = source.specs();
    let plan = Plan::open(files, specs);
    let units = plan.units.clone();
    let total = usize::try_from(plan.rows()).map_err(|_| {
        TallyError::input(
            files.first().map_or("", |f| f.rel_path.as_str()),
            "more rows than this machine can address",
        )
    })?;
    // Sized from the footers, which decoding checks only afterwards: an allocation that
    // fails (a footer that lies, or a group too large for the machine) is an error naming
    // the largest file, not an abort.
    let mut rows: Vec<S::Row> = bytemuck::allocation::try_zeroed_vec(total)
        .map_err(|()| cannot_allocate(files, &units, total, std::mem::size_of::<S::Row>()))?;
    let mut parts: Vec<Part<'_, S::Row>> = Vec::with_capacity(units.len());
    let mut rest: &mut [S::Row] = &mut rows;
    for unit in &units {
        let (here, after) = rest.split_at_mut(unit.rows as usize);
        let id_bytes = (unit.rows as usize).saturating_mul(source.id_bytes_per_row());
        parts.push(Part {
            slots: here,
            written: 0,
            ids: IdChunk::try_with_capacity(id_bytes)
                .ok_or_else(|| cannot_allocate(files, &units, total, source.id_bytes_per_row()))?,
            rejects: Vec::new(),
            read: 0,
            memos: Memos::default(),
            ids_past_a_chunk: false,
        });
        rest = after;
    }
    let done = FilesDone::new(files.len(), &units, file_done);
    let parts = plan.decode(
        files,
        parts,
        &|unit, part, batch| {
            part.read += batch.len as u64;
            if part.ids_past_a_chunk {
                // The file is refused once decoding ends: its remaining rows are not parsed.
                return;
            }
            let mut parser = source.parser(batch, unit.file as u32, &mut part.memos);
            for i in 0..batch.len {
                match parser.parse(i) {
                    Parsed::Row(_) if !part.ids.has_room_for_a_row() => {
                        part.ids_past_a_chunk = true;
                        part.written += 1;
                    }
                    Parsed::Row(fields) => {
                        let row = fields.store(&mut part.ids, unit.index as u32);
                        // Past the footer's count the row is dropped and counted: checked
                        // below.
                        if let Some(slot) = part.slots.get_mut(part.written) {
                            *slot = row;
                        }
                        part.written += 1;
                    }
                    Parsed::Rejected(r) => part.rejects.push(r),
                }
            }
        },
        &|unit, mut part| {
            done.unit_done(unit);
            // The row group's dictionaries and caches are done with: freed now, not held
            // until every row group is read.
            part.memos = Memos::default();
            part
        },
    )?;
    let mut ids = Ids::default();
    let mut rejects = Vec::new();
    let mut read = 0u64;
    let mut written = Vec::with_capacity(parts.len());
    for (unit, part) in units.iter().zip(parts) {
        if part.ids_past_a_chunk {
            return Err(crate::dict::ids_past_a_chunk(
                &files[unit.file].rel_path,
                unit.row_group,
            ));
        }
        // The decoding refuses a row group of another count than its footer's (the slots
        // were cut by those counts): another count here is a broken invariant.
        if part.written > part.slots.len() || part.read != unit.rows {
            return Err(TallyError::Invariant(format!(
                "{}: row group {} gave {} rows after decoding checked its {}",
                files[unit.file].rel_path, unit.row_group, part.read, unit.rows
            )));
        }
        ids.push(part.ids);
        rejects.extend(part.rejects);
        read += part.read;
        written.push(part.written);
    }
    // Close the gaps the rejects left, keeping the order.
    let mut kept = 0usize;
    for (unit, &n) in units.iter().zip(&written) {
        let from = unit.offset as usize;
        if from != kept {
            rows.copy_within(from..from + n, kept);
        }
        kept += n;
    }
    rows.truncate(kept);
    Ok(Loaded {
        rows,
        ids,
        rejects,
        read,
    })
}

/// The rows the footers of a dataset's files say, or their ids, could not be allocated
/// (`bytes_per_row` for each row): names the file saying the most rows.
fn cannot_allocate(
    files: &[InputFile],
    units: &[Unit],
    total: usize,
    bytes_per_row: usize,
) -> TallyError {
    let mut by_file = vec![0u64; files.len()];
    for unit in units {
        by_file[unit.file] = by_file[unit.file].saturating_add(unit.rows);
    }
    let largest = (0..files.len()).max_by_key(|&f| (by_file[f], std::cmp::Reverse(f)));
    let (path, rows) = largest.map_or(("", 0), |f| (files[f].rel_path.as_str(), by_file[f]));
    TallyError::input(
        path,
        format!(
            "its footer says {rows} rows ({total} in the dataset, {bytes_per_row} bytes each), \
             more than this machine can allocate: if the file holds fewer, its footer is \
             corrupt (restore or export it again); else give the run more memory or more \
             groups (--groups)"
        ),
    )
}

/// Calls `file_done` once all the row groups of a file are read.
pub struct FilesDone<'a> {
    remaining: Vec<std::sync::atomic::AtomicUsize>,
    file_done: &'a (dyn Fn() + Sync),
}

impl<'a> FilesDone<'a> {
    pub fn new(files: usize, units: &[Unit], file_done: &'a (dyn Fn() + Sync)) -> Self {
        let mut remaining = vec![0usize; files];
        units.iter().for_each(|u| remaining[u.file] += 1);
        FilesDone {
            remaining: remaining
                .into_iter()
                .map(std::sync::atomic::AtomicUsize::new)
                .collect(),
            file_done,
        }
    }

    pub fn unit_done(&self, unit: &Unit) {
        let left = &self.remaining[unit.file];
        if left.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            (self.file_done)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An allocation the footers size that fails names the file saying the most rows
    /// (the first of two saying as many), with the dataset's total.
    #[test]
    fn a_failed_allocation_names_the_file_saying_the_most_rows() {
        let file = |name: &str| InputFile {
            rel_path: name.into(),
            abs_path: name.into(),
            first_seen: None,
        };
        let files = [
            file("usage/a.parquet"),
            file("usage/b.parquet"),
            file("usage/c.parquet"),
        ];
        let unit = |index, file, rows, offset| Unit {
            index,
            file,
            row_group: 0,
            rows,
            offset,
        };
        let units = [
            unit(0, 0, 5, 0),
            unit(1, 1, 1 << 40, 5),
            unit(2, 2, 1 << 40, 5 + (1 << 40)),
        ];
        let e = cannot_allocate(&files, &units, usize::MAX, 64);
        assert_eq!(
            e.to_string(),
            format!(
                "usage/b.parquet: its footer says 1099511627776 rows ({} in the dataset, 64 \
                 bytes each), more than this machine can allocate: if the file holds fewer, \
                 its footer is corrupt (restore or export it again); else give the run more \
                 memory or more groups (--groups)",
                usize::MAX
            )
        );
    }

    /// Every row group of a load has its `Memos` from the start: a fresh one holds no
    /// cache, which is taken at its first use (the same sku as an uncached lookup).
    #[test]
    fn the_sku_cache_is_taken_at_its_first_use() {
        let memos = Memos::default();
        assert_eq!(memos.skus.slots.capacity(), 0);
        let dicts = DictBuilder::new(std::iter::empty::<&str>());
        let mut cache = SkuCache::default();
        let key = [1, 2, NULL];
        let sku = cache.sku(key, &dicts);
        assert_eq!(cache.slots.len(), SkuCache::SLOTS);
        assert_eq!(sku, dicts.skus.code(key));
        assert_eq!(cache.sku(key, &dicts), sku);
    }
}
