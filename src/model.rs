//! Plain data types passed between the stages of the pipeline.

use crate::amount::Milli;
use crate::time::Micros;

/// The four input datasets, in the order rejects are written.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Dataset {
    Usage,
    Allocations,
    Grants,
    Debits,
}

impl Dataset {
    pub const ALL: [Dataset; 4] = [
        Dataset::Usage,
        Dataset::Allocations,
        Dataset::Grants,
        Dataset::Debits,
    ];

    /// Whether a data root must hold the dataset's folder (it may be empty): all but
    /// grants, which many products never give beyond their plans.
    pub fn required(self) -> bool {
        self != Dataset::Grants
    }

    pub fn name(self) -> &'static str {
        match self {
            Dataset::Usage => "usage",
            Dataset::Allocations => "allocations",
            Dataset::Grants => "grants",
            Dataset::Debits => "debits",
        }
    }
}

/// Why a row was not used. The names are the contract's `rejects.reason` values.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Reason {
    NullRequired,
    BadValue,
    NegativeQuantity,
    UnknownStatus,
    NoAllocation,
    OverlappingPeriod,
    UnknownPlan,
    ConflictingDuplicate,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::NullRequired => "null_required",
            Reason::BadValue => "bad_value",
            Reason::NegativeQuantity => "negative_quantity",
            Reason::UnknownStatus => "unknown_status",
            Reason::NoAllocation => "no_allocation",
            Reason::OverlappingPeriod => "overlapping_period",
            Reason::UnknownPlan => "unknown_plan",
            Reason::ConflictingDuplicate => "conflicting_duplicate",
        }
    }
}

/// A value quoted in a reject detail, cut to 64 characters so that a huge bad value does
/// not bloat `rejects` (the byte length tells how long it was).
pub fn quoted(value: &str) -> String {
    const SHOWN: usize = 64;
    if value.chars().count() <= SHOWN {
        return format!("\"{value}\"");
    }
    let head: String = value.chars().take(SHOWN).collect();
    format!("\"{head}…\" ({} bytes)", value.len())
}

/// Where a row came from: the index of its file in the dataset's sorted file list, and
/// its 0-based row in that file. Ordering by `RowRef` is ordering by (file path, row).
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct RowRef {
    pub file: u32,
    pub row: u64,
}

/// A row that was not used, with the contract's reason and a detail naming column and value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reject {
    pub dataset: Dataset,
    pub at: RowRef,
    pub reason: Reason,
    pub detail: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventStatus {
    Succeeded,
    Failed,
    Cancelled,
}

impl EventStatus {
    /// The inverse of `status as u8` (spill files).
    pub fn from_code(code: u8) -> Option<Self> {
        [Self::Succeeded, Self::Failed, Self::Cancelled]
            .into_iter()
            .find(|s| *s as u8 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            EventStatus::Succeeded => "succeeded",
            EventStatus::Failed => "failed",
            EventStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Succeeded, Self::Failed, Self::Cancelled]
            .into_iter()
            .find(|status| status.name() == s)
    }
}

/// A string shared by many rows (account, product, action, model): interned per batch
/// when a whole run reads them, per spill frame when a split run reads its rows back, so
/// the events of one account in a batch or frame hold one copy of its id.
pub type Shared = std::sync::Arc<str>;

/// An event or entry id: kept inline up to 24 bytes (no heap allocation per row for
/// typical ids), on the heap past that.
pub type Id = compact_str::CompactString;

/// A row's place packed in 64 bits: the file's index in its dataset (top 24 bits) and the
/// 0-based row in the file (low 40 bits). Ordering by `At` is ordering by (file, row).
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, bytemuck::Pod, bytemuck::Zeroable,
)]
#[repr(transparent)]
pub struct At(pub u64);

/// The most files a dataset may have, and rows a file may have (the bits of [`At`]).
pub const MAX_FILES: u64 = 1 << 24;
pub const MAX_ROWS_PER_FILE: u64 = 1 << 40;

impl At {
    pub fn new(file: u32, row: u64) -> At {
        assert!(
            u64::from(file) < MAX_FILES && row < MAX_ROWS_PER_FILE,
            "file and row counts are checked against MAX_FILES and MAX_ROWS_PER_FILE on load"
        );
        At((u64::from(file) << 40) | row)
    }

    pub fn file(self) -> u32 {
        (self.0 >> 40) as u32
    }

    pub fn row(self) -> u64 {
        self.0 & (MAX_ROWS_PER_FILE - 1)
    }

    pub fn row_ref(self) -> RowRef {
        RowRef {
            file: self.file(),
            row: self.row(),
        }
    }
}

impl From<RowRef> for At {
    fn from(r: RowRef) -> At {
        At::new(r.file, r.row)
    }
}

/// No instant (a null `ingested_at`); sorts after every real instant (years ≤ 9999).
pub const NO_INSTANT: Micros = Micros::MAX;

/// A valid usage row as the pipeline carries it: 64 bytes, strings as codes of the run's
/// [`crate::dict::Dicts`] and its id in an [`crate::dict::Ids`] arena.
#[derive(Copy, Clone, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Usage {
    pub at: At,
    /// [`crate::validate::id_hash`] of the event id.
    pub id_hash: u64,
    pub id: crate::dict::IdRef,
    pub occurred_at: Micros,
    /// [`NO_INSTANT`] when null.
    pub ingested_at: Micros,
    /// Thousandths.
    pub quantity: i64,
    pub account: u32,
    /// (product, action, model).
    pub sku: u32,
    /// `EventStatus as u8`.
    pub status: u8,
    /// [`Usage::CONFLICTING`] and [`Usage::LOST`], set by dedup.
    pub flags: u8,
    pub _pad: [u8; 6],
}

impl Usage {
    /// Its copies differed (reported `conflicting_duplicate`).
    pub const CONFLICTING: u8 = 1;
    /// A losing copy of an event (not used: rejected or counted by dedup).
    pub const LOST: u8 = 2;

    pub fn lost(&self) -> bool {
        self.flags & Usage::LOST != 0
    }

    pub fn status(&self) -> EventStatus {
        EventStatus::from_code(self.status).unwrap_or(EventStatus::Cancelled)
    }

    pub fn quantity(&self) -> Milli {
        Milli(self.quantity)
    }

    pub fn ingested(&self) -> Option<Micros> {
        (self.ingested_at != NO_INSTANT).then_some(self.ingested_at)
    }

    pub fn conflicting(&self) -> bool {
        self.flags & Usage::CONFLICTING != 0
    }
}

/// A valid ledger row as the pipeline carries it: 64 bytes (see [`Usage`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Debit {
    pub at: At,
    pub entry_hash: u64,
    /// 0 without an event id.
    pub event_hash: u64,
    pub entry_id: crate::dict::IdRef,
    /// `IdRef::NONE` without an event id.
    pub event_id: crate::dict::IdRef,
    /// Thousandths.
    pub credits: i64,
    pub recorded_at: Micros,
    pub account: u32,
    /// `EntryKind as u8`.
    pub kind: u8,
    /// [`Debit::REPEATED`], set by validation.
    pub flags: u8,
    pub _pad: [u8; 2],
}

impl Debit {
    /// A later row of a repeated `entry_id` (rejected, not used).
    pub const REPEATED: u8 = 1;

    pub fn repeated(&self) -> bool {
        self.flags & Debit::REPEATED != 0
    }

    pub fn kind(&self) -> EntryKind {
        EntryKind::from_code(self.kind).unwrap_or(EntryKind::Debit)
    }

    pub fn has_event(&self) -> bool {
        !self.event_id.is_none()
    }

    pub fn credits(&self) -> Milli {
        Milli(self.credits)
    }

    /// The entry's signed effect on the recorded net: debits and adjustments add, refunds subtract.
    pub fn signed_credits(&self) -> Milli {
        match self.kind() {
            EntryKind::Refund => Milli(-self.credits),
            EntryKind::Debit | EntryKind::Adjustment => Milli(self.credits),
        }
    }
}

/// A compact row ([`Usage`], [`Debit`]): plain bytes in memory, its ids in a chunk of an
/// [`crate::dict::Ids`]; written to a spill file field by field ([`CompactRow::encode`]).
///
/// The spill form of a row is its fields as postcard varints, each instant as a step from
/// the previous row of its frame (a frame holds one batch's rows in file order, so steps
/// are small), without what reading back re-derives: the id offsets (a frame's ids are
/// stored in row order) and the id hashes (recomputed from the ids). The frame's ids are
/// written as they are in memory. On the bench data a spilled row with its ids takes fewer
/// bytes than the row alone in memory, 64 bytes before its ids (the spill folder's largest
/// size, `benches/spill-size.sh`: benches/README.md, "Profiles and experiments (2026-12-04,
/// night: the read-back's own thread, spill ids as they are, CSVs in pieces)").
pub trait CompactRow: bytemuck::Pod + Send + Sync {
    fn at(&self) -> At;
    /// The row with its ids copied from `from` to `to` (chunk number `chunk` of its new
    /// [`crate::dict::Ids`]).
    fn move_ids(self, from: &crate::dict::Ids, to: &mut crate::dict::IdChunk, chunk: u32) -> Self;
    /// Append the row's spill form to `out`, `prev` being the frame's previous row (the
    /// first row's: a zeroed row). Its ids must be the next ones of its chunk `ids` (at
    /// `next_id`, advanced past them): a frame's ids are written in row order.
    fn encode(&self, prev: &Self, ids: &[u8], next_id: &mut u32, out: &mut Vec<u8>);
    /// The next row of a frame from its spill form at the start of `bytes`, and the bytes
    /// after it; its ids are the next ones of `ids` (at `next_id`, advanced past them),
    /// which becomes chunk number `chunk`. `None` when the bytes or ids do not hold a
    /// whole, sound row (a damaged spill file must fail, not panic later).
    fn decode<'a>(
        bytes: &'a [u8],
        prev: &Self,
        ids: &[u8],
        next_id: &mut u32,
        chunk: u32,
    ) -> Option<(Self, &'a [u8])>;
    /// Whether the row's dictionary codes are codes of the run's dictionaries (a row read
    /// back with others would panic later, on lookup).
    fn codes_within(&self, limits: &CodeLimits) -> bool;
}

/// How many codes the run's dictionaries hold: a row read back from a spill file must
/// stay below them.
#[derive(Copy, Clone, Debug)]
pub struct CodeLimits {
    pub accounts: u32,
    pub skus: u32,
}

impl CodeLimits {
    /// No limit (tests of the spill form alone).
    #[cfg(test)]
    pub const ANY: CodeLimits = CodeLimits {
        accounts: u32::MAX,
        skus: u32::MAX,
    };

    pub fn of(dicts: &crate::dict::Dicts) -> CodeLimits {
        let count = |n: usize| u32::try_from(n).expect("fewer than 2^32 codes");
        CodeLimits {
            accounts: count(dicts.accounts.len()),
            skus: count(dicts.skus.len()),
        }
    }
}

/// The next id of a chunk at `next` (its 2-byte length and its bytes): its offset and
/// bytes; `next` moves past it. `None` when the chunk does not hold a whole id there, or
/// one longer than an input's ids may be ([`crate::dict::MAX_ID_BYTES`]: a spill frame
/// that passes its checksum still cannot give an id no input has).
pub(crate) fn take_id<'a>(ids: &'a [u8], next: &mut u32) -> Option<(u32, &'a [u8])> {
    let at = *next as usize;
    let len = u16::from_le_bytes(ids.get(at..at + 2)?.try_into().ok()?) as usize;
    if len > crate::dict::MAX_ID_BYTES {
        return None;
    }
    let bytes = ids.get(at + 2..at + 2 + len)?;
    let offset = *next;
    *next = u32::try_from(at + 2 + len).ok()?;
    Some((offset, bytes))
}

/// Move `next` past `id`, which must be the next id of `ids`: the reader re-derives the
/// offsets from the order of the ids.
fn pass_id(id: crate::dict::IdRef, ids: &[u8], next: &mut u32) {
    assert_eq!(id.offset(), *next, "a spill frame's ids are in row order");
    let (_, _) = take_id(ids, next).expect("a row's id is in its chunk");
}

/// Spill form of a [`Usage`] (see [`CompactRow`]).
#[derive(Debug, PartialEq)]
#[cfg_attr(test, derive(serde::Serialize, serde::Deserialize))]
struct UsageSpill {
    /// `at` less the previous row's.
    at_step: u64,
    /// `occurred_at` less the previous row's (wrapping, as every step).
    occurred_step: i64,
    /// `ingested_at` less `occurred_at` (0 when null, see [`SPILL_NULL`]).
    ingested_after: i64,
    quantity: i64,
    account: u32,
    sku: u32,
    status: u8,
    /// The row's flags, and [`SPILL_NULL`] for a null `ingested_at`.
    flags: u8,
}

/// Spill form of a [`Debit`] (see [`CompactRow`]).
#[derive(Debug, PartialEq)]
#[cfg_attr(test, derive(serde::Serialize, serde::Deserialize))]
struct DebitSpill {
    /// `at` less the previous row's.
    at_step: u64,
    /// `recorded_at` less the previous row's (wrapping).
    recorded_step: i64,
    credits: i64,
    account: u32,
    kind: u8,
    /// The row's flags, and [`SPILL_NULL`] for no event id.
    flags: u8,
}

/// A flag bit of a spill form (no row flag uses it): the optional field is null.
const SPILL_NULL: u8 = 0x80;

/// A row's flags in its spill form, with [`SPILL_NULL`] when its optional field is null.
fn spill_flags(flags: u8, null: bool) -> u8 {
    assert!(
        flags & SPILL_NULL == 0,
        "row flags leave the spill's null bit free"
    );
    flags | if null { SPILL_NULL } else { 0 }
}

/// A spill form's flags: the row's flags, and whether its optional field is null.
fn row_flags(spilled: u8) -> (u8, bool) {
    (spilled & !SPILL_NULL, spilled & SPILL_NULL != 0)
}

/// A row's spill form being written, in postcard's encoding of its wire struct (fields in
/// order; integers wider than a byte as LEB128 varints, signed ones zigzagged first; a byte
/// as itself), which `decode` reads by hand too ([`SpillReader`]). Written by hand into a
/// buffer on the stack and appended to the frame at once: postcard's serializer appended
/// each field with a call to `memcpy`, a visible share of the spill pass's samples, and
/// writing by hand is several times faster in a micro-benchmark, though whole 100M runs
/// cannot show it past their noise (measured: benches/README.md, "Profiles and experiments
/// (2026-12-03, late morning)"; the `perf` share: "Figures moved from source comments
/// (2026-12-05)"). A property test holds the two encodings equal. The close's run files
/// write each record's head with it too (`runs::write_run`).
pub(crate) struct SpillBytes {
    bytes: [u8; SpillBytes::MAX],
    len: usize,
}

impl SpillBytes {
    /// The largest form, a usage row's: four 10-byte varints, two 5-byte ones, two bytes.
    const MAX: usize = 4 * 10 + 2 * 5 + 2;

    pub(crate) fn new() -> SpillBytes {
        SpillBytes {
            bytes: [0; SpillBytes::MAX],
            len: 0,
        }
    }

    pub(crate) fn unsigned(&mut self, value: u64) -> &mut SpillBytes {
        push_varint(value, |byte| {
            self.byte(byte);
        });
        self
    }

    fn signed(&mut self, value: i64) -> &mut SpillBytes {
        self.unsigned(zigzag(value))
    }

    fn byte(&mut self, value: u8) -> &mut SpillBytes {
        self.bytes[self.len] = value;
        self.len += 1;
        self
    }

    pub(crate) fn append_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// `value` as a LEB128 varint, a byte at a time to `push`: how postcard writes an unsigned
/// integer (the spill forms, [`SpillBytes`], and the run files' records, `runs`).
#[inline(always)]
pub(crate) fn push_varint(mut value: u64, mut push: impl FnMut(u8)) {
    while value >= 0x80 {
        push(value as u8 | 0x80);
        value >>= 7;
    }
    push(value as u8);
}

/// The unsigned integer postcard writes for a signed one (zigzag: small magnitudes of
/// either sign stay small); [`SpillReader::signed`] undoes it.
#[inline(always)]
pub(crate) fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// A spill form being read: postcard's decoding of [`SpillBytes`]' encoding, by hand.
/// `postcard::take_from_bytes` went through serde's visitors with a bounds-checked pop per
/// byte, on the read-back that runs beside each group (its `perf` share: benches/README.md,
/// "Figures moved from source comments (2026-12-05)"; the hand reader's gain: "Profiles
/// and experiments (2026-12-04, after midnight: per-row work, ids as views)", bdce7e2).
/// It takes what postcard takes and refuses what it refuses (a varint past its type's
/// bytes or bits, bytes that end inside a form): a property test holds the two equal over
/// any bytes. The run files' records are read with it too (`runs::RecordReader`, held to
/// postcard by a property test of its own).
pub(crate) struct SpillReader<'a> {
    /// What is left to read.
    pub(crate) bytes: &'a [u8],
}

impl<'a> SpillReader<'a> {
    /// A varint of at most `max_bytes` bytes whose last byte is at most `max_last`.
    #[inline(always)]
    fn varint(&mut self, max_bytes: usize, max_last: u8) -> Option<u64> {
        let mut value = 0u64;
        for (i, &byte) in self.bytes.iter().take(max_bytes).enumerate() {
            value |= u64::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                if i == max_bytes - 1 && byte > max_last {
                    return None;
                }
                self.bytes = &self.bytes[i + 1..];
                return Some(value);
            }
        }
        None
    }

    #[inline(always)]
    pub(crate) fn unsigned(&mut self) -> Option<u64> {
        self.varint(10, 1)
    }

    #[inline(always)]
    fn unsigned32(&mut self) -> Option<u32> {
        self.varint(5, 0x0F).map(|value| value as u32)
    }

    #[inline(always)]
    pub(crate) fn signed(&mut self) -> Option<i64> {
        let zigzag = self.unsigned()?;
        Some((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64))
    }

    #[inline(always)]
    pub(crate) fn byte(&mut self) -> Option<u8> {
        let (&byte, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(byte)
    }

    /// The next `len` bytes (`None`: fewer are left).
    #[inline(always)]
    pub(crate) fn take(&mut self, len: u64) -> Option<&'a [u8]> {
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.bytes.len())?;
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(taken)
    }
}

/// The u32 varint that is the whole of `bytes`, as postcard reads one (at most five bytes,
/// the fifth at most 0x0F); `None` when `bytes` is not exactly one.
pub(crate) fn whole_u32_varint(bytes: &[u8]) -> Option<u32> {
    let mut r = SpillReader { bytes };
    let value = r.unsigned32()?;
    r.bytes.is_empty().then_some(value)
}

impl UsageSpill {
    /// The form at the start of `bytes`, and the bytes after it.
    fn take_from(bytes: &[u8]) -> Option<(UsageSpill, &[u8])> {
        let mut r = SpillReader { bytes };
        let wire = UsageSpill {
            at_step: r.unsigned()?,
            occurred_step: r.signed()?,
            ingested_after: r.signed()?,
            quantity: r.signed()?,
            account: r.unsigned32()?,
            sku: r.unsigned32()?,
            status: r.byte()?,
            flags: r.byte()?,
        };
        Some((wire, r.bytes))
    }

    fn append_to(&self, out: &mut Vec<u8>) {
        SpillBytes::new()
            .unsigned(self.at_step)
            .signed(self.occurred_step)
            .signed(self.ingested_after)
            .signed(self.quantity)
            .unsigned(u64::from(self.account))
            .unsigned(u64::from(self.sku))
            .byte(self.status)
            .byte(self.flags)
            .append_to(out);
    }
}

impl DebitSpill {
    /// The form at the start of `bytes`, and the bytes after it.
    fn take_from(bytes: &[u8]) -> Option<(DebitSpill, &[u8])> {
        let mut r = SpillReader { bytes };
        let wire = DebitSpill {
            at_step: r.unsigned()?,
            recorded_step: r.signed()?,
            credits: r.signed()?,
            account: r.unsigned32()?,
            kind: r.byte()?,
            flags: r.byte()?,
        };
        Some((wire, r.bytes))
    }

    fn append_to(&self, out: &mut Vec<u8>) {
        SpillBytes::new()
            .unsigned(self.at_step)
            .signed(self.recorded_step)
            .signed(self.credits)
            .unsigned(u64::from(self.account))
            .byte(self.kind)
            .byte(self.flags)
            .append_to(out);
    }
}

impl CompactRow for Usage {
    fn at(&self) -> At {
        self.at
    }
    fn move_ids(self, from: &crate::dict::Ids, to: &mut crate::dict::IdChunk, chunk: u32) -> Usage {
        let offset = to.push_bytes(from.bytes(self.id));
        Usage {
            id: crate::dict::IdRef::new(chunk, offset),
            ..self
        }
    }
    fn encode(&self, prev: &Usage, ids: &[u8], next_id: &mut u32, out: &mut Vec<u8>) {
        let null = self.ingested_at == NO_INSTANT;
        let wire = UsageSpill {
            at_step: self.at.0.wrapping_sub(prev.at.0),
            occurred_step: self.occurred_at.wrapping_sub(prev.occurred_at),
            ingested_after: match null {
                true => 0,
                false => self.ingested_at.wrapping_sub(self.occurred_at),
            },
            quantity: self.quantity,
            account: self.account,
            sku: self.sku,
            status: self.status,
            flags: spill_flags(self.flags, null),
        };
        wire.append_to(out);
        pass_id(self.id, ids, next_id);
    }
    fn decode<'a>(
        bytes: &'a [u8],
        prev: &Usage,
        ids: &[u8],
        next_id: &mut u32,
        chunk: u32,
    ) -> Option<(Usage, &'a [u8])> {
        let (wire, rest) = UsageSpill::take_from(bytes)?;
        EventStatus::from_code(wire.status)?;
        let (offset, id) = take_id(ids, next_id)?;
        let occurred_at = prev.occurred_at.wrapping_add(wire.occurred_step);
        let (flags, null) = row_flags(wire.flags);
        let row = Usage {
            at: At(prev.at.0.wrapping_add(wire.at_step)),
            id_hash: crate::validate::id_hash_of_bytes(id),
            id: crate::dict::IdRef::new(chunk, offset),
            occurred_at,
            ingested_at: match null {
                true => NO_INSTANT,
                false => occurred_at.wrapping_add(wire.ingested_after),
            },
            quantity: wire.quantity,
            account: wire.account,
            sku: wire.sku,
            status: wire.status,
            flags,
            _pad: [0; 6],
        };
        Some((row, rest))
    }
    fn codes_within(&self, limits: &CodeLimits) -> bool {
        self.account < limits.accounts && self.sku < limits.skus
    }
}

impl CompactRow for Debit {
    fn at(&self) -> At {
        self.at
    }
    fn move_ids(self, from: &crate::dict::Ids, to: &mut crate::dict::IdChunk, chunk: u32) -> Debit {
        let entry = to.push_bytes(from.bytes(self.entry_id));
        let event = match self.event_id.is_none() {
            true => self.event_id,
            false => crate::dict::IdRef::new(chunk, to.push_bytes(from.bytes(self.event_id))),
        };
        Debit {
            entry_id: crate::dict::IdRef::new(chunk, entry),
            event_id: event,
            ..self
        }
    }
    fn encode(&self, prev: &Debit, ids: &[u8], next_id: &mut u32, out: &mut Vec<u8>) {
        let wire = DebitSpill {
            at_step: self.at.0.wrapping_sub(prev.at.0),
            recorded_step: self.recorded_at.wrapping_sub(prev.recorded_at),
            credits: self.credits,
            account: self.account,
            kind: self.kind,
            flags: spill_flags(self.flags, !self.has_event()),
        };
        wire.append_to(out);
        pass_id(self.entry_id, ids, next_id);
        if self.has_event() {
            pass_id(self.event_id, ids, next_id);
        }
    }
    fn decode<'a>(
        bytes: &'a [u8],
        prev: &Debit,
        ids: &[u8],
        next_id: &mut u32,
        chunk: u32,
    ) -> Option<(Debit, &'a [u8])> {
        let (wire, rest) = DebitSpill::take_from(bytes)?;
        EntryKind::from_code(wire.kind)?;
        let (entry_offset, entry) = take_id(ids, next_id)?;
        let (flags, no_event) = row_flags(wire.flags);
        let (event_id, event_hash) = match no_event {
            true => (crate::dict::IdRef::NONE, 0),
            false => {
                let (offset, event) = take_id(ids, next_id)?;
                (
                    crate::dict::IdRef::new(chunk, offset),
                    crate::validate::id_hash_of_bytes(event),
                )
            }
        };
        let row = Debit {
            at: At(prev.at.0.wrapping_add(wire.at_step)),
            entry_hash: crate::validate::id_hash_of_bytes(entry),
            event_hash,
            entry_id: crate::dict::IdRef::new(chunk, entry_offset),
            event_id,
            credits: wire.credits,
            recorded_at: prev.recorded_at.wrapping_add(wire.recorded_step),
            account: wire.account,
            kind: wire.kind,
            flags,
            _pad: [0; 2],
        };
        Some((row, rest))
    }
    fn codes_within(&self, limits: &CodeLimits) -> bool {
        self.account < limits.accounts
    }
}

/// A validated usage row (one copy of an event).
#[derive(Clone, Debug)]
pub struct UsageRow {
    pub at: RowRef,
    pub event_id: Id,
    pub account_id: Shared,
    pub product: Shared,
    pub action: Shared,
    /// `None` for a null or empty model.
    pub model: Option<Shared>,
    pub quantity: Milli,
    pub status: EventStatus,
    pub occurred_at: Micros,
    pub ingested_at: Option<Micros>,
}

impl UsageRow {
    /// The columns (other than `ingested_at`) in which two copies of an event differ.
    pub fn differing_fields(&self, other: &UsageRow) -> Vec<&'static str> {
        [
            ("event_id", self.event_id == other.event_id),
            ("account_id", self.account_id == other.account_id),
            ("product", self.product == other.product),
            ("action", self.action == other.action),
            ("model", self.model == other.model),
            ("quantity", self.quantity == other.quantity),
            ("status", self.status == other.status),
            ("occurred_at", self.occurred_at == other.occurred_at),
        ]
        .into_iter()
        .filter_map(|(name, equal)| (!equal).then_some(name))
        .collect()
    }

    /// Copies are one event when everything but `ingested_at` (and where they were read) is equal.
    pub fn same_event_as(&self, other: &UsageRow) -> bool {
        self.differing_fields(other).is_empty()
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AllocationStatus {
    Active,
    Cancelled,
}

impl AllocationStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(AllocationStatus::Active),
            "cancelled" => Some(AllocationStatus::Cancelled),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AllocationStatus::Active => "active",
            AllocationStatus::Cancelled => "cancelled",
        }
    }
}

/// An allocation row. Its account and plan are shared strings: the rows a period's close
/// makes from it (balances, invoice, renewal, next allocation, rollover grant) hold the
/// same two strings, not copies (a split run holds every account's rows to the end).
/// Read with strings of their own, an account's allocations are given one string by
/// `validate::allocations` (which its grants, the run's dictionary and its result then
/// share) and a plan's allocations the price book's string for the plan.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AllocationRow {
    pub at: RowRef,
    pub account_id: Shared,
    pub plan_id: Shared,
    pub period_start: Micros,
    pub period_end: Micros,
    pub included_credits: Milli,
    pub billing_anchor: Option<Micros>,
    pub status: AllocationStatus,
}

/// Grant kinds, in the order of the `balances` columns. `Plan` is the allocation's credits.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum GrantKind {
    Rollover,
    Plan,
    Promo,
    Compensation,
    TopUp,
}

impl GrantKind {
    pub const ALL: [GrantKind; 5] = [
        GrantKind::Rollover,
        GrantKind::Plan,
        GrantKind::Promo,
        GrantKind::Compensation,
        GrantKind::TopUp,
    ];

    /// Kinds a `grants` row may have (`plan` comes only from allocations).
    pub fn parse_grant(s: &str) -> Option<Self> {
        match s {
            "rollover" => Some(GrantKind::Rollover),
            "promo" => Some(GrantKind::Promo),
            "compensation" => Some(GrantKind::Compensation),
            "top_up" => Some(GrantKind::TopUp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GrantKind::Rollover => "rollover",
            GrantKind::Plan => "plan",
            GrantKind::Promo => "promo",
            GrantKind::Compensation => "compensation",
            GrantKind::TopUp => "top_up",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The contract's default consumption priority (smaller first).
    pub fn default_priority(self) -> i64 {
        match self {
            GrantKind::Rollover => 0,
            GrantKind::Plan => 1,
            GrantKind::Promo | GrantKind::Compensation => 2,
            GrantKind::TopUp => 3,
        }
    }
}

/// A grant row; its account is a shared string (see [`AllocationRow`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GrantRow {
    pub at: RowRef,
    pub grant_id: String,
    pub account_id: Shared,
    pub kind: GrantKind,
    pub credits: Milli,
    pub effective_at: Micros,
    pub expires_at: Option<Micros>,
    /// As given in the input (null = the kind's default).
    pub priority: Option<i64>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Debit,
    Refund,
    Adjustment,
}

impl EntryKind {
    /// The inverse of `kind as u8` (spill files).
    pub fn from_code(code: u8) -> Option<Self> {
        [Self::Debit, Self::Refund, Self::Adjustment]
            .into_iter()
            .find(|k| *k as u8 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Debit => "debit",
            EntryKind::Refund => "refund",
            EntryKind::Adjustment => "adjustment",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Debit, Self::Refund, Self::Adjustment]
            .into_iter()
            .find(|kind| kind.name() == s)
    }
}

/// A ledger entry recorded by the online system.
#[derive(Clone, Debug)]
pub struct DebitRow {
    pub at: RowRef,
    pub entry_id: Id,
    pub account_id: Shared,
    pub event_id: Option<Id>,
    pub kind: EntryKind,
    pub credits: Milli,
    pub recorded_at: Micros,
}

impl DebitRow {
    /// The entry's signed effect on the recorded net: debits and adjustments add, refunds subtract.
    pub fn signed_credits(&self) -> Milli {
        match self.kind {
            EntryKind::Refund => Milli(-self.credits.0),
            EntryKind::Debit | EntryKind::Adjustment => self.credits,
        }
    }
}

/// Which periods a run covers.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The period containing as-of, up to as-of.
    Reconcile,
    /// Every period with `period_end` ≤ as-of.
    Close,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Reconcile => "reconcile",
            Mode::Close => "close",
        }
    }

    /// Whether the allocation period [start, end) is covered by a run at `as_of`.
    pub fn covers(self, period_start: Micros, period_end: Micros, as_of: Micros) -> bool {
        match self {
            Mode::Reconcile => period_start <= as_of && as_of < period_end,
            Mode::Close => period_end <= as_of,
        }
    }
}

impl UsageRow {
    /// The row with its strings, from a compact row (what `tally explain` shows).
    pub fn from_compact(
        u: &Usage,
        dicts: &crate::dict::Dicts,
        ids: &crate::dict::Ids,
    ) -> crate::error::Result<UsageRow> {
        Ok(UsageRow {
            at: u.at.row_ref(),
            event_id: ids.id(u.id)?,
            account_id: dicts.account(u.account).clone(),
            product: dicts.product(u.sku).clone(),
            action: dicts.action(u.sku).clone(),
            model: dicts.model(u.sku).cloned(),
            quantity: u.quantity(),
            status: u.status(),
            occurred_at: u.occurred_at,
            ingested_at: u.ingested(),
        })
    }
}

impl Usage {
    /// The compact form of a row with strings: its labels coded in `dicts`, its id
    /// written to `ids` (chunk number `chunk`). For building rows by hand, as tests do.
    pub fn from_row(
        row: &UsageRow,
        dicts: &crate::dict::DictBuilder,
        ids: &mut crate::dict::IdChunk,
        chunk: u32,
    ) -> Usage {
        Usage {
            at: At::from(row.at),
            id_hash: crate::validate::id_hash(&row.event_id),
            id: crate::dict::IdRef::new(chunk, ids.push(&row.event_id)),
            occurred_at: row.occurred_at,
            ingested_at: row.ingested_at.unwrap_or(NO_INSTANT),
            quantity: row.quantity.0,
            account: dicts.accounts.code(&row.account_id),
            sku: dicts.sku(&row.product, &row.action, row.model.as_deref()),
            status: row.status as u8,
            flags: 0,
            _pad: [0; 6],
        }
    }
}

impl Debit {
    /// The compact form of a row with strings (see [`Usage::from_row`]).
    pub fn from_row(
        row: &DebitRow,
        dicts: &crate::dict::DictBuilder,
        ids: &mut crate::dict::IdChunk,
        chunk: u32,
    ) -> Debit {
        Debit {
            at: At::from(row.at),
            entry_hash: crate::validate::id_hash(&row.entry_id),
            event_hash: row.event_id.as_deref().map_or(0, crate::validate::id_hash),
            entry_id: crate::dict::IdRef::new(chunk, ids.push(&row.entry_id)),
            event_id: match &row.event_id {
                Some(e) => crate::dict::IdRef::new(chunk, ids.push(e)),
                None => crate::dict::IdRef::NONE,
            },
            credits: row.credits.0,
            recorded_at: row.recorded_at,
            account: dicts.accounts.code(&row.account_id),
            kind: row.kind as u8,
            flags: 0,
            _pad: [0; 2],
        }
    }
}

/// Rows with strings made compact, all in chunk 0 of their ids (tests and examples).
pub fn compact_rows(
    usage: &[UsageRow],
    debits: &[DebitRow],
    dicts: &crate::dict::DictBuilder,
) -> (Vec<Usage>, crate::dict::Ids, Vec<Debit>, crate::dict::Ids) {
    let mut usage_chunk = crate::dict::IdChunk::default();
    let usage: Vec<Usage> = usage
        .iter()
        .map(|u| Usage::from_row(u, dicts, &mut usage_chunk, 0))
        .collect();
    let mut debit_chunk = crate::dict::IdChunk::default();
    let debits: Vec<Debit> = debits
        .iter()
        .map(|d| Debit::from_row(d, dicts, &mut debit_chunk, 0))
        .collect();
    let mut usage_ids = crate::dict::Ids::default();
    usage_ids.push(usage_chunk);
    let mut debit_ids = crate::dict::Ids::default();
    debit_ids.push(debit_chunk);
    (usage, usage_ids, debits, debit_ids)
}

impl DebitRow {
    /// The row with its strings, from a compact row (what `tally explain` shows).
    pub fn from_compact(
        d: &Debit,
        dicts: &crate::dict::Dicts,
        ids: &crate::dict::Ids,
    ) -> crate::error::Result<DebitRow> {
        Ok(DebitRow {
            at: d.at.row_ref(),
            entry_id: ids.id(d.entry_id)?,
            account_id: dicts.account(d.account).clone(),
            event_id: match d.has_event() {
                true => Some(ids.id(d.event_id)?),
                false => None,
            },
            kind: d.kind(),
            credits: d.credits(),
            recorded_at: d.recorded_at,
        })
    }
}

/// Valid rows for unit tests: one account, product and action, no model; a test changes
/// what it looks at with struct update syntax (`UsageRow { quantity, ..UsageRow::sample(..) }`).
#[cfg(test)]
impl UsageRow {
    pub fn sample(row: u64, event_id: &str) -> UsageRow {
        UsageRow {
            at: RowRef { file: 0, row },
            event_id: Id::new(event_id),
            account_id: "acct-1".into(),
            product: "video".into(),
            action: "generate".into(),
            model: None,
            quantity: Milli(1000),
            status: EventStatus::Succeeded,
            occurred_at: 1_000,
            ingested_at: None,
        }
    }
}

#[cfg(test)]
impl DebitRow {
    /// A debit of 1 credit (entry id `entry-ROW`) naming `event_id`.
    pub fn sample(row: u64, event_id: Option<&str>) -> DebitRow {
        DebitRow {
            at: RowRef { file: 0, row },
            entry_id: Id::new(format!("entry-{row}")),
            account_id: "acct-1".into(),
            event_id: event_id.map(Id::new),
            kind: EntryKind::Debit,
            credits: Milli(1000),
            recorded_at: 1_000,
        }
    }
}

#[cfg(test)]
mod detail_tests {
    use super::*;

    /// A reject detail quotes a value whole up to 64 characters (not bytes: a cut never
    /// splits one); one character more is cut to 64, with the value's length in bytes.
    #[test]
    fn a_quoted_value_is_whole_up_to_64_characters_and_cut_past_them() {
        let whole = "é".repeat(64);
        assert_eq!(quoted(&whole), format!("\"{whole}\""));
        let past = "é".repeat(65);
        assert_eq!(quoted(&past), format!("\"{whole}…\" (130 bytes)"));
        assert_eq!(quoted(""), "\"\"");
    }
}

#[cfg(test)]
mod spill_form_tests {
    use super::*;
    use proptest::prelude::*;

    /// A spill frame's id may be as long as an input's ids may be (4096 bytes): read, and
    /// the next one starts after it; one byte longer, or one whose bytes the chunk does not
    /// hold whole, is no id (the frame is refused, not read past).
    #[test]
    fn a_spilled_id_is_read_up_to_the_id_limit_and_one_byte_more_is_none() {
        let chunk = |len: usize| {
            let mut bytes = (len as u16).to_le_bytes().to_vec();
            bytes.extend(std::iter::repeat_n(b'i', len));
            bytes
        };
        let at_limit = chunk(crate::dict::MAX_ID_BYTES);
        let mut next = 0;
        let (offset, id) = take_id(&at_limit, &mut next).unwrap();
        assert_eq!((offset, id.len()), (0, crate::dict::MAX_ID_BYTES));
        assert_eq!(next as usize, 2 + crate::dict::MAX_ID_BYTES);
        let mut next = 0;
        assert_eq!(
            take_id(&chunk(crate::dict::MAX_ID_BYTES + 1), &mut next),
            None
        );
        assert_eq!(next, 0);
        let short = &at_limit[..at_limit.len() - 1];
        assert_eq!(take_id(short, &mut 0), None);
        assert_eq!(take_id(&at_limit[..1], &mut 0), None);
    }

    fn any_usage_spill() -> impl Strategy<Value = UsageSpill> {
        (any::<(u64, i64, i64, i64)>(), any::<(u32, u32, u8, u8)>()).prop_map(
            |(
                (at_step, occurred_step, ingested_after, quantity),
                (account, sku, status, flags),
            )| {
                UsageSpill {
                    at_step,
                    occurred_step,
                    ingested_after,
                    quantity,
                    account,
                    sku,
                    status,
                    flags,
                }
            },
        )
    }

    fn any_debit_spill() -> impl Strategy<Value = DebitSpill> {
        any::<(u64, i64, i64, u32, u8, u8)>().prop_map(
            |(at_step, recorded_step, credits, account, kind, flags)| DebitSpill {
                at_step,
                recorded_step,
                credits,
                account,
                kind,
                flags,
            },
        )
    }

    fn by_hand(append: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = vec![0xAB];
        append(&mut out);
        assert_eq!(out[0], 0xAB, "appended after what the frame holds");
        out.split_off(1)
    }

    #[test]
    fn spill_bytes_at_the_limits() {
        let most = UsageSpill {
            at_step: u64::MAX,
            occurred_step: i64::MIN,
            ingested_after: i64::MAX,
            quantity: i64::MIN,
            account: u32::MAX,
            sku: u32::MAX,
            status: u8::MAX,
            flags: u8::MAX,
        };
        let bytes = by_hand(|out| most.append_to(out));
        assert_eq!(bytes.len(), SpillBytes::MAX, "the largest form");
        assert_eq!(bytes, postcard::to_allocvec(&most).unwrap());
        assert_eq!(UsageSpill::take_from(&bytes), Some((most, &[][..])));
        // One past the limits: a u32 of 33 bits (the sku's last byte), a u64 of 65 bits
        // (at_step's), an eleventh byte of a u64, a form cut short.
        let mut sku_past = bytes.clone();
        sku_past[SpillBytes::MAX - 3] = 0x10;
        assert_eq!(UsageSpill::take_from(&sku_past), None);
        let mut at_past = bytes.clone();
        at_past[9] = 0x02;
        assert_eq!(UsageSpill::take_from(&at_past), None);
        let eleven = [[0xFF; 10].as_slice(), &[0x00]].concat();
        assert_eq!(UsageSpill::take_from(&eleven), None);
        assert_eq!(UsageSpill::take_from(&bytes[..bytes.len() - 1]), None);
        // A u32 of six bytes (the account's: five continued).
        let mut six = bytes[..40].to_vec();
        six.extend_from_slice(&[0xFF; 5]);
        six.extend_from_slice(&[0x00; 8]);
        assert_eq!(UsageSpill::take_from(&six), None);
        // The ledger's form at its limits, and one past the account's.
        let most = DebitSpill {
            at_step: u64::MAX,
            recorded_step: i64::MIN,
            credits: i64::MAX,
            account: u32::MAX,
            kind: u8::MAX,
            flags: u8::MAX,
        };
        let bytes = by_hand(|out| most.append_to(out));
        assert_eq!(bytes, postcard::to_allocvec(&most).unwrap());
        assert_eq!(DebitSpill::take_from(&bytes), Some((most, &[][..])));
        let mut account_past = bytes.clone();
        account_past[34] = 0x10;
        assert_eq!(DebitSpill::take_from(&account_past), None);
        let least = UsageSpill {
            at_step: 0,
            occurred_step: 0,
            ingested_after: -1,
            quantity: 1,
            account: 0,
            sku: 127,
            status: 0,
            flags: 0,
        };
        assert_eq!(
            by_hand(|out| least.append_to(out)),
            [0, 0, 1, 2, 0, 127, 0, 0]
        );
    }

    proptest! {
        #[test]
        fn usage_spill_bytes_are_postcards(wire in any_usage_spill()) {
            prop_assert_eq!(by_hand(|out| wire.append_to(out)), postcard::to_allocvec(&wire).unwrap());
        }

        #[test]
        fn debit_spill_bytes_are_postcards(wire in any_debit_spill()) {
            prop_assert_eq!(by_hand(|out| wire.append_to(out)), postcard::to_allocvec(&wire).unwrap());
        }

        /// The hand reader takes what postcard takes from any bytes of varint shapes (runs
        /// of 0 to 11 continued bytes, each ended by a byte at or past a type's last-byte
        /// limit, or not ended) and refuses the rest.
        #[test]
        fn spill_reader_reads_as_postcard(
            varints in proptest::collection::vec(
                (
                    proptest::collection::vec(0x80u8..=0xFF, 0..=11),
                    proptest::option::of(proptest::prop_oneof![
                        proptest::strategy::Just(0x00u8),
                        proptest::strategy::Just(0x01u8),
                        proptest::strategy::Just(0x02u8),
                        proptest::strategy::Just(0x0Fu8),
                        proptest::strategy::Just(0x10u8),
                        proptest::strategy::Just(0x7Fu8),
                    ]),
                ),
                0..10,
            ),
        ) {
            let bytes: Vec<u8> = varints
                .iter()
                .flat_map(|(continued, last)| continued.iter().copied().chain(*last))
                .collect();
            prop_assert_eq!(UsageSpill::take_from(&bytes), postcard::take_from_bytes(&bytes).ok());
            prop_assert_eq!(DebitSpill::take_from(&bytes), postcard::take_from_bytes(&bytes).ok());
        }

        /// Written forms (with bytes after them) are read back whole by postcard and by
        /// the hand reader.
        #[test]
        fn spill_forms_read_back(
            usage in any_usage_spill(),
            debit in any_debit_spill(),
            after in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let mut bytes = by_hand(|out| usage.append_to(out));
            bytes.extend_from_slice(&after);
            prop_assert_eq!(UsageSpill::take_from(&bytes), postcard::take_from_bytes(&bytes).ok());
            prop_assert_eq!(postcard::take_from_bytes(&bytes).ok(), Some((usage, &after[..])));
            let mut bytes = by_hand(|out| debit.append_to(out));
            bytes.extend_from_slice(&after);
            prop_assert_eq!(DebitSpill::take_from(&bytes), postcard::take_from_bytes(&bytes).ok());
            prop_assert_eq!(postcard::take_from_bytes(&bytes).ok(), Some((debit, &after[..])));
        }
    }
}
