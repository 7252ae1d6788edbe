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
use bytemuck::Zeroable;
use rustc_hash::FxHashMap;

/// The code of one row's label, or why it has none.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Label {
    Null,
    /// Too long, or not a value the column allows (an unknown status).
    Bad,
    Code(u32),
}

/// A label value's code, or `BAD`.
const BAD: u32 = u32::MAX - 1;

/// The codes of a label column's values for one batch. A dictionary column's values are
/// coded once (and reused while the next batches of the row group share them); a plain
/// column's values through a small cache of the batch.
enum LabelCodes<'b> {
    Absent,
    Dict {
        keys: &'b Int32Array,
        codes: std::sync::Arc<Vec<u32>>,
    },
    Plain {
        values: &'b StringArray,
        cache: FxHashMap<&'b str, u32>,
    },
}

/// Codes of the last dictionary seen in a column: the batches of a row group share one.
/// The values are kept (not only their address), so that the address cannot be reused by
/// another dictionary while it is remembered.
#[derive(Default)]
pub struct DictMemo {
    values: Option<(StringArray, std::sync::Arc<Vec<u32>>)>,
}

/// The same dictionary values (the same buffers), not merely equal ones.
fn same_values(a: &StringArray, b: &StringArray) -> bool {
    a.len() == b.len()
        && a.values().as_ptr() == b.values().as_ptr()
        && a.value_offsets().as_ptr() == b.value_offsets().as_ptr()
}

impl<'b> LabelCodes<'b> {
    fn new(column: &'b Column, memo: &mut DictMemo, code: &dyn Fn(&str) -> u32) -> Self {
        match column {
            Column::Absent => LabelCodes::Absent,
            Column::Dict(keys, values) => {
                let same = memo
                    .values
                    .as_ref()
                    .is_some_and(|(seen, _)| same_values(seen, values));
                if !same {
                    let codes: Vec<u32> = (0..values.len())
                        .map(|i| match values.is_null(i) {
                            true => BAD,
                            false => checked(values.value(i), code),
                        })
                        .collect();
                    memo.values = Some((values.clone(), std::sync::Arc::new(codes)));
                }
                let codes = memo.values.as_ref().expect("set above").1.clone();
                LabelCodes::Dict { keys, codes }
            }
            Column::Str(values) => LabelCodes::Plain {
                values,
                cache: FxHashMap::default(),
            },
            // Not a string column: `Column::from_array` never makes one for a label.
            _ => LabelCodes::Absent,
        }
    }

    fn get(&mut self, row: usize, code: &dyn Fn(&str) -> u32) -> Label {
        let c = match self {
            LabelCodes::Absent => return Label::Null,
            LabelCodes::Dict { keys, codes } => {
                if keys.is_null(row) {
                    return Label::Null;
                }
                // A null dictionary value is `BAD`: the contract's checks decide the row.
                codes[keys.value(row) as usize]
            }
            LabelCodes::Plain { values, cache } => {
                if values.is_null(row) {
                    return Label::Null;
                }
                let value = values.value(row);
                *cache.entry(value).or_insert_with(|| checked(value, code))
            }
        };
        match c {
            BAD => Label::Bad,
            c => Label::Code(c),
        }
    }
}

/// `code(value)`, or `BAD` when the value is longer than the limit.
fn checked(value: &str, code: &dyn Fn(&str) -> u32) -> u32 {
    match value.len() > MAX_STRING_BYTES {
        true => BAD,
        false => code(value),
    }
}

fn status_code(s: &str) -> u32 {
    EventStatus::parse(s).map_or(BAD, |status| status as u32)
}

fn kind_code(s: &str) -> u32 {
    EntryKind::parse(s).map_or(BAD, |kind| kind as u32)
}

/// What a row group's reader keeps between batches.
#[derive(Default)]
pub struct Memos {
    labels: [DictMemo; 5],
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

/// Parses the usage rows of one batch.
pub struct UsageParser<'b> {
    batch: &'b Batch,
    file: u32,
    dicts: &'b DictBuilder,
    account: LabelCodes<'b>,
    product: LabelCodes<'b>,
    action: LabelCodes<'b>,
    model: LabelCodes<'b>,
    status: LabelCodes<'b>,
    skus: FxHashMap<[u32; 3], u32>,
}

impl<'b> UsageParser<'b> {
    pub fn new(batch: &'b Batch, file: u32, dicts: &'b DictBuilder, memos: &mut Memos) -> Self {
        let c = &batch.columns;
        let [m0, m1, m2, m3, m4] = &mut memos.labels;
        UsageParser {
            batch,
            file,
            dicts,
            account: LabelCodes::new(&c[1], m0, &|s| dicts.accounts.code(s)),
            product: LabelCodes::new(&c[2], m1, &|s| dicts.words.code(s)),
            action: LabelCodes::new(&c[3], m2, &|s| dicts.words.code(s)),
            model: LabelCodes::new(&c[4], m3, &|s| model_word(dicts, s)),
            status: LabelCodes::new(&c[6], m4, &status_code),
            skus: FxHashMap::default(),
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

    fn fast(&mut self, i: usize) -> Option<UsageFields<'b>> {
        let c = &self.batch.columns;
        let dicts = self.dicts;
        let event_id = id_of(&c[0], i)?;
        let Label::Code(account) = self.account.get(i, &|s| dicts.accounts.code(s)) else {
            return None;
        };
        let Label::Code(product) = self.product.get(i, &|s| dicts.words.code(s)) else {
            return None;
        };
        let Label::Code(action) = self.action.get(i, &|s| dicts.words.code(s)) else {
            return None;
        };
        let model = match self.model.get(i, &|s| model_word(dicts, s)) {
            Label::Null => NO_WORD,
            Label::Code(word) => word,
            Label::Bad => return None,
        };
        let quantity = match c[5].milli(i) {
            Some(Ok(q)) if q.0 >= 0 => q,
            _ => return None,
        };
        let Label::Code(status) = self.status.get(i, &status_code) else {
            return None;
        };
        let occurred_at = match c[7].micros(i) {
            Some(Ok(t)) => t,
            _ => return None,
        };
        let ingested_at = match c[8].micros(i) {
            None => NO_INSTANT,
            Some(Ok(t)) => t,
            Some(Err(_)) => return None,
        };
        let key = [product, action, model];
        let sku = *self.skus.entry(key).or_insert_with(|| dicts.skus.code(key));
        Some(UsageFields {
            usage: Usage {
                at: At::new(self.file, self.batch.first_row + i as u64),
                id_hash: id_hash(event_id),
                id: IdRef::NONE,
                occurred_at,
                ingested_at,
                quantity: quantity.0,
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

/// Parses the ledger rows of one batch.
pub struct DebitParser<'b> {
    batch: &'b Batch,
    file: u32,
    dicts: &'b DictBuilder,
    account: LabelCodes<'b>,
    kind: LabelCodes<'b>,
}

impl<'b> DebitParser<'b> {
    pub fn new(batch: &'b Batch, file: u32, dicts: &'b DictBuilder, memos: &mut Memos) -> Self {
        let c = &batch.columns;
        let [m0, m1, ..] = &mut memos.labels;
        DebitParser {
            batch,
            file,
            dicts,
            account: LabelCodes::new(&c[1], m0, &|s| dicts.accounts.code(s)),
            kind: LabelCodes::new(&c[3], m1, &kind_code),
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

    fn fast(&mut self, i: usize) -> Option<DebitFields<'b>> {
        let c = &self.batch.columns;
        let dicts = self.dicts;
        let entry_id = id_of(&c[0], i)?;
        let Label::Code(account) = self.account.get(i, &|s| dicts.accounts.code(s)) else {
            return None;
        };
        let event_id = match c[2].is_null(i) {
            true => None,
            false => Some(id_of(&c[2], i)?),
        };
        let Label::Code(kind) = self.kind.get(i, &kind_code) else {
            return None;
        };
        let credits = match c[4].milli(i) {
            Some(Ok(v)) if v.0 >= 0 => v,
            _ => return None,
        };
        let recorded_at = match c[5].micros(i) {
            Some(Ok(t)) => t,
            _ => return None,
        };
        Some(DebitFields {
            debit: Debit {
                at: At::new(self.file, self.batch.first_row + i as u64),
                entry_hash: id_hash(entry_id),
                event_hash: event_id.map_or(0, id_hash),
                entry_id: IdRef::NONE,
                event_id: IdRef::NONE,
                credits: credits.0,
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
        cross.event(self.event_id)
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
        cross.ledger_row(Some(self.entry_id), self.event_id)
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
    let mut rows: Vec<S::Row> = vec![S::Row::zeroed(); total];
    let mut parts: Vec<Part<'_, S::Row>> = Vec::with_capacity(units.len());
    let mut rest: &mut [S::Row] = &mut rows;
    for unit in &units {
        let (here, after) = rest.split_at_mut(unit.rows as usize);
        parts.push(Part {
            slots: here,
            written: 0,
            ids: IdChunk::with_capacity(unit.rows as usize * 24),
            rejects: Vec::new(),
            read: 0,
            memos: Memos::default(),
        });
        rest = after;
    }
    let done = FilesDone::new(files.len(), &units, file_done);
    let parts = plan.decode(
        files,
        specs,
        parts,
        &|unit, part, batch| {
            part.read += batch.len as u64;
            let mut parser = source.parser(batch, unit.file as u32, &mut part.memos);
            for i in 0..batch.len {
                match parser.parse(i) {
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
        &|unit| done.unit_done(unit),
    )?;
    let mut ids = Ids::default();
    let mut rejects = Vec::new();
    let mut read = 0u64;
    let mut written = Vec::with_capacity(parts.len());
    for (unit, part) in units.iter().zip(parts) {
        if part.written > part.slots.len() || part.read != unit.rows {
            return Err(footer_mismatch(files, unit, part.read));
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

/// A row group that decoded to another row count than its footer says.
pub fn footer_mismatch(files: &[InputFile], unit: &Unit, read: u64) -> TallyError {
    TallyError::input(
        files[unit.file].rel_path.clone(),
        format!(
            "row group {} holds {read} rows, not the {} its footer says; the file is corrupt",
            unit.row_group, unit.rows
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
