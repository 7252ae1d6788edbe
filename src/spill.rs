//! A split run's first full pass: parse every usage and ledger row once and write each
//! valid row to the spill file of its group (a compact binary record, postcard), so that
//! the groups can then be processed one after another with only one group in memory.
//! Rejected rows and candidates (rows whose partition `route::resolve` decides) stay in memory;
//! both are few.

use crate::error::{Result, TallyError};
use crate::load::{self, Batch, ColSpec, InputFile, Parsed};
use crate::model::*;
use crate::route::{CrossBucket, Layout};
use crate::validate::FastHash;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const SPILL_PREFIX: &str = "tally-spill-";

/// A fresh spill folder under the temporary folder (`$TMPDIR`), named with this process's
/// id and removed when dropped (also when the run fails). Folders left by a killed run
/// (their process is gone) are removed first.
pub fn spill_dir() -> Result<tempfile::TempDir> {
    let tmp = std::env::temp_dir();
    // A folder named with our own pid is stale only before our first spill folder: a run
    // makes more than one (the light pass's scratch files, then the spill), and a process
    // may run more than one job. Held while cleaning and creating, so that a first call's
    // cleaning cannot remove a folder another thread has just made.
    static MADE_ONE: Mutex<bool> = Mutex::new(false);
    let mut made_one = MADE_ONE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    remove_orphans(&tmp, !*made_one);
    *made_one = true;
    tempfile::Builder::new()
        .prefix(&format!("{SPILL_PREFIX}{}-", std::process::id()))
        .tempdir_in(&tmp)
        .map_err(|e| TallyError::io(&tmp, e))
}

/// Remove `tally-spill-PID-*` folders whose process no longer exists (best effort), and
/// with `own_pid_is_stale`, those named with this process's pid.
fn remove_orphans(tmp: &Path, own_pid_is_stale: bool) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(SPILL_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // Before our first spill folder, one named with our pid is a dead process's (pids
        // are reused, e.g. pid 1 in containers).
        let own = pid == std::process::id() as i32;
        if (own && own_pid_is_stale) || (!own && !process_alive(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// A row that can be written to a spill file and read back. The pass that writes the
/// spill checks rows as `Ref`s (strings borrowed from the batch) and builds an owned row
/// only for the few it keeps in memory (candidates).
pub trait Spillable: Sized + Send {
    /// The checked row, its strings still in the batch.
    type Ref<'a>;
    /// Check a row of a batch (the contract's validation of the dataset).
    fn check(batch: &Batch, row: usize, at: RowRef) -> Parsed<Self::Ref<'_>>;
    fn to_row(r: &Self::Ref<'_>, batch: &Batch) -> Self;
    fn is_candidate(r: &Self::Ref<'_>, cross: &CrossBucket) -> bool;
    /// Whether the raw row could be a candidate (checked before parsing, so that a shard
    /// parses only its own rows and possible candidates).
    fn raw_candidate(batch: &Batch, row: usize, cross: &CrossBucket) -> bool;
    /// Append the row's record to a frame (its repeated strings as codes of `strings`).
    fn encode<'a>(r: &Self::Ref<'a>, out: &mut Vec<u8>, strings: &mut FrameStrings<'a>);
    /// Decode the first record of `bytes` (string codes index `strings`); the rest of the
    /// bytes follow it.
    fn decode<'a>(bytes: &'a [u8], strings: &[Shared], file: &Path) -> Result<(Self, &'a [u8])>;
}

#[derive(Serialize, Deserialize)]
struct UsageRecord<'a> {
    file: u32,
    row: u64,
    event_id: &'a str,
    /// Codes in the frame's string table (also `product`, `action`, `model`).
    account_id: u32,
    product: u32,
    action: u32,
    model: Option<u32>,
    quantity: i64,
    status: u8,
    occurred_at: i64,
    ingested_at: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct DebitRecord<'a> {
    file: u32,
    row: u64,
    entry_id: &'a str,
    /// A code in the frame's string table.
    account_id: u32,
    #[serde(borrow)]
    event_id: Option<&'a str>,
    kind: u8,
    credits: i64,
    recorded_at: i64,
}

/// The string table of a frame being written: each repeated string (account, product,
/// action, model) is written once per frame and referred to by its code.
#[derive(Default)]
pub struct FrameStrings<'a> {
    codes: HashMap<&'a str, u32, FastHash>,
    strings: Vec<&'a str>,
}

impl<'a> FrameStrings<'a> {
    fn with_capacity(strings: usize) -> FrameStrings<'a> {
        FrameStrings {
            codes: HashMap::with_capacity_and_hasher(strings, FastHash::default()),
            strings: Vec::with_capacity(strings),
        }
    }

    fn code(&mut self, s: &'a str) -> u32 {
        *self.codes.entry(s).or_insert_with(|| {
            self.strings.push(s);
            (self.strings.len() - 1) as u32
        })
    }

    /// The table as a frame writes it: a postcard sequence of strings.
    fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(&self.strings).expect("postcard into a Vec")
    }
}

/// The shared string of a code.
fn string_of(strings: &[Shared], code: u32, file: &Path) -> Result<Shared> {
    strings.get(code as usize).cloned().ok_or_else(|| {
        corrupt(
            file,
            format!("string code {code} is not in its frame's table"),
        )
    })
}

fn corrupt(file: &Path, e: impl std::fmt::Display) -> TallyError {
    TallyError::Invariant(format!(
        "spill file {} cannot be read back: {e}",
        file.display()
    ))
}

fn push_record(out: &mut Vec<u8>, record: &impl Serialize) {
    // Serialising plain integers and strings into a Vec cannot fail.
    let bytes = postcard::to_extend(record, std::mem::take(out)).expect("postcard into a Vec");
    *out = bytes;
}

impl Spillable for UsageRow {
    type Ref<'a> = load::UsageRef<'a>;
    fn check(batch: &Batch, row: usize, at: RowRef) -> Parsed<Self::Ref<'_>> {
        load::check_usage(batch, row, at)
    }
    fn to_row(r: &Self::Ref<'_>, batch: &Batch) -> Self {
        r.to_row(batch)
    }
    fn is_candidate(r: &Self::Ref<'_>, cross: &CrossBucket) -> bool {
        cross.event(r.event_id)
    }
    fn raw_candidate(batch: &Batch, row: usize, cross: &CrossBucket) -> bool {
        batch.columns[0].str(row).is_some_and(|e| cross.event(e))
    }
    fn encode<'a>(r: &Self::Ref<'a>, out: &mut Vec<u8>, strings: &mut FrameStrings<'a>) {
        push_record(
            out,
            &UsageRecord {
                file: r.at.file,
                row: r.at.row,
                event_id: r.event_id,
                account_id: strings.code(r.account_id),
                product: strings.code(r.product),
                action: strings.code(r.action),
                model: r.model.map(|m| strings.code(m)),
                quantity: r.quantity.0,
                status: r.status as u8,
                occurred_at: r.occurred_at,
                ingested_at: r.ingested_at,
            },
        );
    }
    fn decode<'a>(bytes: &'a [u8], strings: &[Shared], file: &Path) -> Result<(Self, &'a [u8])> {
        let (r, rest): (UsageRecord<'a>, _) =
            postcard::take_from_bytes(bytes).map_err(|e| corrupt(file, e))?;
        let row = UsageRow {
            at: RowRef {
                file: r.file,
                row: r.row,
            },
            event_id: Id::new(r.event_id),
            account_id: string_of(strings, r.account_id, file)?,
            product: string_of(strings, r.product, file)?,
            action: string_of(strings, r.action, file)?,
            model: r.model.map(|m| string_of(strings, m, file)).transpose()?,
            quantity: crate::amount::Milli(r.quantity),
            status: EventStatus::from_code(r.status).ok_or_else(|| corrupt(file, "status"))?,
            occurred_at: r.occurred_at,
            ingested_at: r.ingested_at,
        };
        Ok((row, rest))
    }
}

impl Spillable for DebitRow {
    type Ref<'a> = load::DebitRef<'a>;
    fn check(batch: &Batch, row: usize, at: RowRef) -> Parsed<Self::Ref<'_>> {
        load::check_debit(batch, row, at)
    }
    fn to_row(r: &Self::Ref<'_>, batch: &Batch) -> Self {
        r.to_row(batch)
    }
    fn is_candidate(r: &Self::Ref<'_>, cross: &CrossBucket) -> bool {
        cross.ledger_row(Some(r.entry_id), r.event_id)
    }
    fn raw_candidate(batch: &Batch, row: usize, cross: &CrossBucket) -> bool {
        cross.ledger_row(batch.columns[0].str(row), batch.columns[2].str(row))
    }
    fn encode<'a>(r: &Self::Ref<'a>, out: &mut Vec<u8>, strings: &mut FrameStrings<'a>) {
        push_record(
            out,
            &DebitRecord {
                file: r.at.file,
                row: r.at.row,
                entry_id: r.entry_id,
                account_id: strings.code(r.account_id),
                event_id: r.event_id,
                kind: r.kind as u8,
                credits: r.credits.0,
                recorded_at: r.recorded_at,
            },
        );
    }
    fn decode<'a>(bytes: &'a [u8], strings: &[Shared], file: &Path) -> Result<(Self, &'a [u8])> {
        let (r, rest): (DebitRecord<'a>, _) =
            postcard::take_from_bytes(bytes).map_err(|e| corrupt(file, e))?;
        let row = DebitRow {
            at: RowRef {
                file: r.file,
                row: r.row,
            },
            entry_id: Id::new(r.entry_id),
            account_id: string_of(strings, r.account_id, file)?,
            event_id: r.event_id.map(Id::new),
            kind: EntryKind::from_code(r.kind).ok_or_else(|| corrupt(file, "kind"))?,
            credits: crate::amount::Milli(r.credits),
            recorded_at: r.recorded_at,
        };
        Ok((row, rest))
    }
}

/// Write buffer of each spill file: 64 MiB over all groups, from 64 KiB to 1 MiB each.
fn buffer_bytes(groups: u32) -> usize {
    ((64usize << 20) / groups.max(1) as usize).clamp(64 << 10, 1 << 20)
}

/// About the bytes of a spilled record (usage ~45, ledger ~60 at generated ids' lengths):
/// frame buffers start at this many per row.
const RECORD_BYTES_GUESS: usize = 64;

/// Bytes of a frame header: rows, string-table length, records length (u32 LE each).
const FRAME_HEADER_BYTES: usize = 12;

/// The spill files of one dataset: one per group, removed with the folder.
pub struct SpillFiles {
    paths: Vec<PathBuf>,
    writers: Vec<Mutex<BufWriter<File>>>,
    rows: Vec<AtomicU64>,
}

/// A written spill file and how many rows it holds.
pub struct SpillFile {
    pub path: PathBuf,
    pub rows: u64,
}

impl SpillFiles {
    pub fn create(dir: &Path, dataset: Dataset, groups: u32) -> Result<SpillFiles> {
        let mut paths = Vec::new();
        let mut writers = Vec::new();
        for g in 0..groups {
            let path = dir.join(format!("{}-{g}.bin", dataset.name()));
            let file = File::create(&path).map_err(|e| TallyError::io(&path, e))?;
            writers.push(Mutex::new(BufWriter::with_capacity(
                buffer_bytes(groups),
                file,
            )));
            paths.push(path);
        }
        let rows = (0..groups).map(|_| AtomicU64::new(0)).collect();
        Ok(SpillFiles {
            paths,
            writers,
            rows,
        })
    }

    /// Append one frame: `rows`, the string table's byte length and the records' byte
    /// length (u32 LE each), then the table, then the records. Frames let a group be
    /// decoded in parallel.
    fn append(
        &self,
        group: usize,
        strings: &FrameStrings,
        records: &[u8],
        rows: u64,
    ) -> Result<()> {
        self.rows[group].fetch_add(rows, Ordering::Relaxed);
        let table = strings.encode();
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header[..4].copy_from_slice(&(rows as u32).to_le_bytes());
        header[4..8].copy_from_slice(&(table.len() as u32).to_le_bytes());
        header[8..].copy_from_slice(&(records.len() as u32).to_le_bytes());
        let mut w = self.writers[group].lock().expect("spill writer lock");
        w.write_all(&header)
            .and_then(|_| w.write_all(&table))
            .and_then(|_| w.write_all(records))
            .map_err(|e| TallyError::io(&self.paths[group], e))
    }

    /// Flush every writer; after this the files can be read.
    pub fn finish(self) -> Result<Vec<SpillFile>> {
        for (w, path) in self.writers.into_iter().zip(&self.paths) {
            w.into_inner()
                .expect("spill writer lock")
                .flush()
                .map_err(|e| TallyError::io(path, e))?;
        }
        Ok(self
            .paths
            .into_iter()
            .zip(self.rows)
            .map(|(path, rows)| SpillFile {
                path,
                rows: rows.into_inner(),
            })
            .collect())
    }
}

/// Read one group's spill file back in (file, row) order, decoding its frames in
/// parallel straight into their places in one vector (no per-frame vectors copied
/// together: at 10M events that copy and its fresh pages cost about a second, timed by hand). `extra`
/// rows will be added by the caller: room is made for them too. The file is mapped, not
/// read into a buffer, and removed once mapped.
pub fn read_group<T: Spillable>(file: &SpillFile, extra: usize) -> Result<Vec<T>> {
    use rayon::prelude::*;
    let path = &file.path;
    let opened = File::open(path).map_err(|e| TallyError::io(path, e))?;
    let empty = opened
        .metadata()
        .map_err(|e| TallyError::io(path, e))?
        .len()
        == 0;
    // SAFETY: the spill file is private to this run (a fresh folder of this process) and
    // no one writes it after `SpillFiles::finish`; it is unlinked below, which keeps the
    // mapping valid until it is dropped.
    let map = match empty {
        true => None,
        false => Some(unsafe { memmap2::Mmap::map(&opened) }.map_err(|e| TallyError::io(path, e))?),
    };
    std::fs::remove_file(path).map_err(|e| TallyError::io(path, e))?;
    let bytes: &[u8] = map.as_deref().unwrap_or_default();
    let mut frames = frames_of(bytes, path)?;
    let total: usize = frames.iter().map(|f| f.rows).sum();
    if total as u64 != file.rows {
        return Err(corrupt(
            path,
            format!("{total} rows in its frames, {} written", file.rows),
        ));
    }
    // A frame holds rows of one batch, in row order, and batches cover disjoint row
    // ranges: ordering the frames by their first row orders every row.
    frames.sort_unstable_by_key(|f| f.first);
    let mut all: Vec<T> = Vec::with_capacity(total + extra);
    let mut slots = &mut all.spare_capacity_mut()[..total];
    let mut jobs = Vec::with_capacity(frames.len());
    for frame in &frames {
        let (here, rest) = slots.split_at_mut(frame.rows);
        jobs.push((frame, here));
        slots = rest;
    }
    let outcomes: Vec<Result<()>> = jobs
        .into_par_iter()
        .map(|(frame, slots)| decode_frame(frame, slots, path))
        .collect();
    if outcomes.iter().any(Result::is_err) {
        // A failed frame dropped what it had decoded; drop the whole frames' rows too.
        let mut at = 0;
        let mut failure = None;
        for (frame, outcome) in frames.iter().zip(outcomes) {
            let slots = &mut all.spare_capacity_mut()[at..at + frame.rows];
            match outcome {
                // SAFETY: this frame wrote every one of its slots.
                Ok(()) => unsafe { std::ptr::drop_in_place(slots as *mut [_] as *mut [T]) },
                Err(e) => failure = failure.or(Some(e)),
            }
            at += frame.rows;
        }
        return Err(failure.expect("a frame failed"));
    }
    // SAFETY: the frames' slots tile `0..total` and every frame wrote each of its slots.
    unsafe { all.set_len(total) };
    Ok(all)
}

/// One frame of a spill file: its string table, its records and their count, and its
/// first row.
struct Frame<'a> {
    strings: Vec<&'a str>,
    body: &'a [u8],
    rows: usize,
    first: RowRef,
}

/// Split a spill file into its frames (see `SpillFiles::append`).
fn frames_of<'a>(bytes: &'a [u8], path: &Path) -> Result<Vec<Frame<'a>>> {
    let mut frames = Vec::new();
    let mut at = 0usize;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    while at < bytes.len() {
        let header = bytes
            .get(at..at + FRAME_HEADER_BYTES)
            .ok_or_else(|| corrupt(path, "truncated frame header"))?;
        let rows = u32_at(header, 0) as usize;
        let table_len = u32_at(header, 4) as usize;
        let body_len = u32_at(header, 8) as usize;
        let table_at = at + FRAME_HEADER_BYTES;
        let body_at = table_at + table_len;
        let (Some(table), Some(body)) = (
            bytes.get(table_at..body_at),
            bytes.get(body_at..body_at + body_len),
        ) else {
            return Err(corrupt(path, "truncated frame"));
        };
        if rows == 0 {
            return Err(corrupt(path, "empty frame"));
        }
        let strings: Vec<&str> = postcard::from_bytes(table).map_err(|e| corrupt(path, e))?;
        // Every record starts with its (file, row).
        let ((file, row), _): ((u32, u64), _) =
            postcard::take_from_bytes(body).map_err(|e| corrupt(path, e))?;
        frames.push(Frame {
            strings,
            body,
            rows,
            first: RowRef { file, row },
        });
        at = body_at + body_len;
    }
    Ok(frames)
}

/// Decode exactly `slots.len()` records of `body` into `slots`. On an error, the rows
/// decoded so far are dropped and every slot is left unwritten.
fn decode_frame<T: Spillable>(
    frame: &Frame<'_>,
    slots: &mut [std::mem::MaybeUninit<T>],
    path: &Path,
) -> Result<()> {
    // One shared copy of each of the frame's strings, for all its rows.
    let strings: Vec<Shared> = frame.strings.iter().map(|&s| Shared::from(s)).collect();
    let mut rest = frame.body;
    let mut written = 0;
    let mut outcome = Ok(());
    for slot in slots.iter_mut() {
        match T::decode(rest, &strings, path) {
            Ok((row, after)) => {
                slot.write(row);
                written += 1;
                rest = after;
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if outcome.is_ok() && !rest.is_empty() {
        outcome = Err(corrupt(
            path,
            "frame holds more records than its header says",
        ));
    }
    if outcome.is_err() {
        // SAFETY: the first `written` slots were written above.
        unsafe { std::ptr::drop_in_place(&mut slots[..written] as *mut [_] as *mut [T]) };
    }
    outcome
}

/// What the pass keeps in memory for a dataset.
pub struct Routed<T> {
    /// Rejected rows whose account partition this shard owns.
    pub rejects: Vec<Reject>,
    /// Valid rows whose partition `route::resolve` decides (every shard keeps all of them).
    pub candidates: Vec<T>,
    /// Valid rows written to this shard's spill files.
    pub spilled: u64,
}

enum Item<T> {
    Reject(Reject),
    Candidate(T),
    Spilled(u64),
    Failed(TallyError),
}

/// Parse every row of a dataset; spill the valid rows of this shard's partitions by group,
/// keep rejects (of this shard) and candidates (all).
pub fn route_dataset<T: Spillable>(
    files: &[InputFile],
    specs: &[ColSpec],
    layout: &Layout,
    cross: &CrossBucket,
    spill: &SpillFiles,
    file_done: &(dyn Fn() + Sync),
) -> Result<Routed<T>> {
    let groups = layout.groups as usize;
    let per_file = load::map_files(files, specs, &|index, batch, out: &mut Vec<Item<T>>| {
        // Sized for an even share of the batch (no regrowth per frame in the common case);
        // a shard spills only its own partitions' rows.
        let share = batch.len / (groups * layout.shards.max(1) as usize) + 1;
        let mut encoded: Vec<Vec<u8>> = (0..groups)
            .map(|_| Vec::with_capacity(share * RECORD_BYTES_GUESS))
            .collect();
        let mut strings: Vec<FrameStrings> = (0..groups)
            .map(|_| FrameStrings::with_capacity(share + 8))
            .collect();
        let mut counts = vec![0u64; groups];
        let mut spilled = 0u64;
        for i in 0..batch.len {
            let at = RowRef {
                file: index as u32,
                row: batch.first_row + i as u64,
            };
            // A valid row's account is its raw `account_id` cell: one hash serves the skip,
            // the spill and the reject.
            let partition = layout.raw_partition(batch, i);
            // Another shard's row that cannot be a candidate: not even parsed here.
            if layout.shards > 1 && !layout.owns(partition) && !T::raw_candidate(batch, i, cross) {
                continue;
            }
            match T::check(batch, i, at) {
                Parsed::Row(row) if T::is_candidate(&row, cross) => {
                    out.push(Item::Candidate(T::to_row(&row, batch)))
                }
                Parsed::Row(row) => {
                    if layout.owns(partition) {
                        let group = layout.group_of(partition);
                        T::encode(&row, &mut encoded[group], &mut strings[group]);
                        counts[group] += 1;
                        spilled += 1;
                    }
                }
                Parsed::Rejected(reject) => {
                    if layout.owns(partition) {
                        out.push(Item::Reject(reject));
                    }
                }
            }
        }
        for (group, bytes) in encoded.iter().enumerate() {
            if !bytes.is_empty() {
                if let Err(e) = spill.append(group, &strings[group], bytes, counts[group]) {
                    out.push(Item::Failed(e));
                }
            }
        }
        out.push(Item::Spilled(spilled));
    })?;
    let mut routed = Routed {
        rejects: Vec::new(),
        candidates: Vec::new(),
        spilled: 0,
    };
    for items in per_file {
        file_done();
        for item in items {
            match item {
                Item::Reject(r) => routed.rejects.push(r),
                Item::Candidate(c) => routed.candidates.push(c),
                Item::Spilled(n) => routed.spilled += n,
                Item::Failed(e) => return Err(e),
            }
        }
    }
    Ok(routed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(file: u32, row: u64, event: &str) -> UsageRow {
        UsageRow {
            at: RowRef { file, row },
            model: Some("m1".into()),
            quantity: crate::amount::Milli(1500),
            ..UsageRow::sample(row, event)
        }
    }

    /// A spill file of one group holding `frames` (each encoded as one frame).
    fn spill_of(dir: &Path, frames: &[Vec<UsageRow>]) -> SpillFile {
        let files = SpillFiles::create(dir, Dataset::Usage, 1).unwrap();
        for rows in frames {
            let (mut bytes, mut strings) = (Vec::new(), FrameStrings::default());
            rows.iter()
                .for_each(|r| UsageRow::encode(&r.as_ref(), &mut bytes, &mut strings));
            files
                .append(0, &strings, &bytes, rows.len() as u64)
                .unwrap();
        }
        files.finish().unwrap().pop().unwrap()
    }

    /// Folders named with this process's pid are cleaned only before its first spill
    /// folder: later ones (a run makes two) leave the earlier in place.
    #[test]
    fn a_later_spill_folder_leaves_the_earlier_in_place() {
        let first = spill_dir().unwrap();
        let second = spill_dir().unwrap();
        assert!(first.path().is_dir());
        assert!(second.path().is_dir());
    }

    #[test]
    fn frames_come_back_in_row_order_with_room_for_extra_rows() {
        let dir = tempfile::tempdir().unwrap();
        // Frames written out of order (parallel readers append as they finish).
        let late = vec![usage(1, 0, "c"), usage(1, 1, "d")];
        let early = vec![usage(0, 5, "a"), usage(0, 6, "b")];
        let file = spill_of(dir.path(), &[late, early]);
        let rows: Vec<UsageRow> = read_group(&file, 3).unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        assert!(rows.capacity() >= 7);
        assert_eq!(rows[0].model.as_deref(), Some("m1"));
        assert!(!file.path.exists(), "the spill file is removed once read");
    }

    #[test]
    fn an_empty_spill_file_reads_as_no_rows() {
        let dir = tempfile::tempdir().unwrap();
        let file = spill_of(dir.path(), &[]);
        assert!(read_group::<UsageRow>(&file, 0).unwrap().is_empty());
    }

    /// Rewrite the file's first frame header to claim `rows` rows.
    fn claim_rows(file: &SpillFile, rows: u32) {
        let mut bytes = std::fs::read(&file.path).unwrap();
        bytes[..4].copy_from_slice(&rows.to_le_bytes());
        std::fs::write(&file.path, bytes).unwrap();
    }

    fn error_of(file: &SpillFile) -> String {
        match read_group::<UsageRow>(file, 0) {
            Ok(_) => panic!("a corrupt spill file was read"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_frame_with_fewer_records_than_its_header_fails() {
        let dir = tempfile::tempdir().unwrap();
        let good = vec![usage(0, 0, "a"), usage(0, 1, "b")];
        let short = vec![usage(1, 0, "c"), usage(1, 1, "d")];
        let mut file = spill_of(dir.path(), &[short, good]);
        claim_rows(&file, 3);
        file.rows = 5;
        let message = error_of(&file);
        assert!(message.contains("cannot be read back"), "{message}");
    }

    static LIVE_COUNTED: AtomicU64 = AtomicU64::new(0);

    /// A row that counts its live copies: read-back must drop every row it decoded when a
    /// frame fails, and nothing twice.
    struct Counted(u64);

    impl Counted {
        fn new(row: u64) -> Counted {
            LIVE_COUNTED.fetch_add(1, Ordering::SeqCst);
            Counted(row)
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            LIVE_COUNTED.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Spillable for Counted {
        type Ref<'a> = u64;
        fn check(batch: &Batch, row: usize, _: RowRef) -> Parsed<u64> {
            Parsed::Row(batch.first_row + row as u64)
        }
        fn to_row(r: &u64, _: &Batch) -> Self {
            Counted::new(*r)
        }
        fn is_candidate(_: &u64, _: &CrossBucket) -> bool {
            false
        }
        fn raw_candidate(_: &Batch, _: usize, _: &CrossBucket) -> bool {
            false
        }
        fn encode<'a>(r: &u64, out: &mut Vec<u8>, _: &mut FrameStrings<'a>) {
            push_record(out, &(0u32, *r));
        }
        fn decode<'a>(bytes: &'a [u8], _: &[Shared], file: &Path) -> Result<(Self, &'a [u8])> {
            let ((_, row), rest): ((u32, u64), _) =
                postcard::take_from_bytes(bytes).map_err(|e| corrupt(file, e))?;
            Ok((Counted::new(row), rest))
        }
    }

    #[test]
    fn read_back_drops_every_decoded_row_once_whether_it_succeeds_or_fails() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rows: &[&[u64]], claimed_first: Option<u32>| {
            let files = SpillFiles::create(dir.path(), Dataset::Usage, 1).unwrap();
            for frame in rows {
                let mut bytes = Vec::new();
                frame
                    .iter()
                    .for_each(|r| Counted::encode(r, &mut bytes, &mut FrameStrings::default()));
                files
                    .append(0, &FrameStrings::default(), &bytes, frame.len() as u64)
                    .unwrap();
            }
            let file = files.finish().unwrap().pop().unwrap();
            if let Some(rows) = claimed_first {
                claim_rows(&file, rows);
            }
            file
        };
        // Whole: five rows live, none once dropped.
        let file = write(&[&[10, 11, 12], &[0, 1]], None);
        let rows: Vec<Counted> = read_group(&file, 0).unwrap();
        let order: Vec<u64> = rows.iter().map(|c| c.0).collect();
        assert_eq!(order, [0, 1, 10, 11, 12]);
        assert_eq!(LIVE_COUNTED.load(Ordering::SeqCst), 5);
        drop(rows);
        assert_eq!(LIVE_COUNTED.load(Ordering::SeqCst), 0);
        // The first frame (rows 10..) claims a fourth row it does not hold: it fails after
        // decoding three, the other frame decodes whole; all five are dropped.
        let mut file = write(&[&[10, 11, 12], &[0, 1]], Some(4));
        file.rows = 6;
        assert!(read_group::<Counted>(&file, 0).is_err());
        assert_eq!(LIVE_COUNTED.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_frame_with_more_records_than_its_header_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = spill_of(dir.path(), &[vec![usage(0, 0, "a"), usage(0, 1, "b")]]);
        claim_rows(&file, 1);
        file.rows = 1;
        let message = error_of(&file);
        assert!(
            message.contains("more records than its header says"),
            "{message}"
        );
    }

    #[test]
    fn a_row_count_other_than_the_written_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = spill_of(dir.path(), &[vec![usage(0, 0, "a")]]);
        file.rows = 2;
        let message = error_of(&file);
        assert!(
            message.contains("1 rows in its frames, 2 written"),
            "{message}"
        );
    }

    #[test]
    fn a_string_code_outside_the_frame_table_fails() {
        let dir = tempfile::tempdir().unwrap();
        let files = SpillFiles::create(dir.path(), Dataset::Usage, 1).unwrap();
        let (mut bytes, mut strings) = (Vec::new(), FrameStrings::default());
        let row = usage(0, 0, "a");
        UsageRow::encode(&row.as_ref(), &mut bytes, &mut strings);
        // The records refer to four strings; the frame is written with an empty table.
        files
            .append(0, &FrameStrings::default(), &bytes, 1)
            .unwrap();
        let file = files.finish().unwrap().pop().unwrap();
        let message = error_of(&file);
        assert!(
            message.contains("string code 0 is not in its frame's table"),
            "{message}"
        );
    }

    #[test]
    fn repeated_strings_are_written_once_per_frame_and_shared_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let account: Shared = "acct-shared".into();
        let rows: Vec<UsageRow> = (0..3)
            .map(|i| UsageRow {
                account_id: account.clone(),
                ..usage(0, i, &format!("e{i}"))
            })
            .collect();
        let file = spill_of(dir.path(), &[rows]);
        let text = std::fs::read(&file.path).unwrap();
        let written = text.windows(11).filter(|w| w == b"acct-shared").count();
        assert_eq!(written, 1);
        let back: Vec<UsageRow> = read_group(&file, 0).unwrap();
        assert!(std::sync::Arc::ptr_eq(
            &back[0].account_id,
            &back[2].account_id
        ));
        assert_eq!(&*back[1].account_id, "acct-shared");
    }

    #[test]
    fn a_truncated_frame_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = spill_of(dir.path(), &[vec![usage(0, 0, "a")]]);
        let bytes = std::fs::read(&file.path).unwrap();
        std::fs::write(&file.path, &bytes[..bytes.len() - 3]).unwrap();
        let message = error_of(&file);
        assert!(message.contains("truncated frame"), "{message}");
    }
}
