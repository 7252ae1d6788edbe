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
    remove_orphans(&tmp);
    tempfile::Builder::new()
        .prefix(&format!("{SPILL_PREFIX}{}-", std::process::id()))
        .tempdir_in(&tmp)
        .map_err(|e| TallyError::io(&tmp, e))
}

/// Remove `tally-spill-PID-*` folders whose process no longer exists (best effort).
fn remove_orphans(tmp: &Path) {
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
        // Our own pid is not yet in use by a spill folder: one named so is a dead
        // process's (pids are reused, e.g. pid 1 in containers).
        if pid == std::process::id() as i32 || !process_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// A row that can be written to a spill file and read back.
pub trait Spillable: Sized + Send {
    fn account(&self) -> &str;
    fn at(&self) -> RowRef;
    fn is_candidate(&self, cross: &CrossBucket) -> bool;
    /// Whether the raw row could be a candidate (checked before parsing, so that a shard
    /// parses only its own rows and possible candidates).
    fn raw_candidate(batch: &Batch, row: usize, cross: &CrossBucket) -> bool;
    fn encode(&self, out: &mut Vec<u8>);
    /// Decode every record of a spill file's bytes.
    fn decode_all(bytes: &[u8], file: &Path, rows: usize) -> Result<Vec<Self>>;
}

#[derive(Serialize, Deserialize)]
struct UsageRecord<'a> {
    file: u32,
    row: u64,
    event_id: &'a str,
    account_id: &'a str,
    product: &'a str,
    action: &'a str,
    #[serde(borrow)]
    model: Option<&'a str>,
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
    account_id: &'a str,
    #[serde(borrow)]
    event_id: Option<&'a str>,
    kind: u8,
    credits: i64,
    recorded_at: i64,
}

/// One shared copy of each repeated string of a spill file (accounts, products, ...).
#[derive(Default)]
struct Interner<'a>(HashMap<&'a str, Shared, FastHash>);

impl<'a> Interner<'a> {
    fn get(&mut self, s: &'a str) -> Shared {
        self.0.entry(s).or_insert_with(|| s.into()).clone()
    }
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
    fn account(&self) -> &str {
        &self.account_id
    }
    fn at(&self) -> RowRef {
        self.at
    }
    fn is_candidate(&self, cross: &CrossBucket) -> bool {
        cross.usage_candidate(self)
    }
    fn raw_candidate(batch: &Batch, row: usize, cross: &CrossBucket) -> bool {
        batch.columns[0].str(row).is_some_and(|e| cross.event(e))
    }
    fn encode(&self, out: &mut Vec<u8>) {
        push_record(
            out,
            &UsageRecord {
                file: self.at.file,
                row: self.at.row,
                event_id: &self.event_id,
                account_id: &self.account_id,
                product: &self.product,
                action: &self.action,
                model: self.model.as_deref(),
                quantity: self.quantity.0,
                status: self.status as u8,
                occurred_at: self.occurred_at,
                ingested_at: self.ingested_at,
            },
        );
    }
    fn decode_all(mut bytes: &[u8], file: &Path, count: usize) -> Result<Vec<Self>> {
        let mut strings = Interner::default();
        let mut rows = Vec::with_capacity(count);
        while !bytes.is_empty() {
            let (r, rest): (UsageRecord<'_>, _) =
                postcard::take_from_bytes(bytes).map_err(|e| corrupt(file, e))?;
            bytes = rest;
            rows.push(UsageRow {
                at: RowRef {
                    file: r.file,
                    row: r.row,
                },
                event_id: r.event_id.to_string(),
                account_id: strings.get(r.account_id),
                product: strings.get(r.product),
                action: strings.get(r.action),
                model: r.model.map(|m| strings.get(m)),
                quantity: crate::amount::Milli(r.quantity),
                status: EventStatus::from_code(r.status).ok_or_else(|| corrupt(file, "status"))?,
                occurred_at: r.occurred_at,
                ingested_at: r.ingested_at,
            });
        }
        Ok(rows)
    }
}

impl Spillable for DebitRow {
    fn account(&self) -> &str {
        &self.account_id
    }
    fn at(&self) -> RowRef {
        self.at
    }
    fn is_candidate(&self, cross: &CrossBucket) -> bool {
        cross.debit_candidate(self)
    }
    fn raw_candidate(batch: &Batch, row: usize, cross: &CrossBucket) -> bool {
        batch.columns[0].str(row).is_some_and(|e| cross.entry(e))
            || batch.columns[2].str(row).is_some_and(|e| cross.event(e))
    }
    fn encode(&self, out: &mut Vec<u8>) {
        push_record(
            out,
            &DebitRecord {
                file: self.at.file,
                row: self.at.row,
                entry_id: &self.entry_id,
                account_id: &self.account_id,
                event_id: self.event_id.as_deref(),
                kind: self.kind as u8,
                credits: self.credits.0,
                recorded_at: self.recorded_at,
            },
        );
    }
    fn decode_all(mut bytes: &[u8], file: &Path, count: usize) -> Result<Vec<Self>> {
        let mut strings = Interner::default();
        let mut rows = Vec::with_capacity(count);
        while !bytes.is_empty() {
            let (r, rest): (DebitRecord<'_>, _) =
                postcard::take_from_bytes(bytes).map_err(|e| corrupt(file, e))?;
            bytes = rest;
            rows.push(DebitRow {
                at: RowRef {
                    file: r.file,
                    row: r.row,
                },
                entry_id: r.entry_id.to_string(),
                account_id: strings.get(r.account_id),
                event_id: r.event_id.map(str::to_string),
                kind: EntryKind::from_code(r.kind).ok_or_else(|| corrupt(file, "kind"))?,
                credits: crate::amount::Milli(r.credits),
                recorded_at: r.recorded_at,
            });
        }
        Ok(rows)
    }
}

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
            writers.push(Mutex::new(BufWriter::with_capacity(1 << 20, file)));
            paths.push(path);
        }
        let rows = (0..groups).map(|_| AtomicU64::new(0)).collect();
        Ok(SpillFiles {
            paths,
            writers,
            rows,
        })
    }

    /// Append one frame: `rows` (u32 LE), byte length (u32 LE), then the records. Frames
    /// let a group be decoded in parallel.
    fn append(&self, group: usize, bytes: &[u8], rows: u64) -> Result<()> {
        self.rows[group].fetch_add(rows, Ordering::Relaxed);
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&(rows as u32).to_le_bytes());
        header[4..].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        let mut w = self.writers[group].lock().expect("spill writer lock");
        w.write_all(&header)
            .and_then(|_| w.write_all(bytes))
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
/// parallel. `extra` rows will be
/// added by the caller: room is made for them too. The file is removed once read.
pub fn read_group<T: Spillable>(file: &SpillFile, extra: usize) -> Result<Vec<T>> {
    use rayon::prelude::*;
    let path = &file.path;
    let bytes = std::fs::read(path).map_err(|e| TallyError::io(path, e))?;
    std::fs::remove_file(path).map_err(|e| TallyError::io(path, e))?;
    let mut frames = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let header = bytes
            .get(at..at + 8)
            .ok_or_else(|| corrupt(path, "truncated frame header"))?;
        let rows = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let len = u32::from_le_bytes(header[4..].try_into().expect("4 bytes")) as usize;
        let body = bytes
            .get(at + 8..at + 8 + len)
            .ok_or_else(|| corrupt(path, "truncated frame"))?;
        frames.push((body, rows));
        at += 8 + len;
    }
    let decoded: Vec<Result<Vec<T>>> = frames
        .par_iter()
        .map(|(body, rows)| T::decode_all(body, path, *rows))
        .collect();
    let mut parts = decoded.into_iter().collect::<Result<Vec<_>>>()?;
    // A frame holds rows of one batch, in row order, and batches cover disjoint row
    // ranges: ordering the frames by their first row orders every row.
    parts.retain(|p| !p.is_empty());
    parts.sort_unstable_by_key(|p| p[0].at());
    let mut all = Vec::with_capacity(file.rows as usize + extra);
    for part in parts {
        all.extend(part);
    }
    if all.len() as u64 != file.rows {
        return Err(corrupt(
            path,
            format!("{} rows read, {} written", all.len(), file.rows),
        ));
    }
    Ok(all)
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
    parse_row: &(dyn Fn(&Batch, usize, RowRef) -> Parsed<T> + Sync),
    layout: &Layout,
    cross: &CrossBucket,
    spill: &SpillFiles,
    file_done: &(dyn Fn() + Sync),
) -> Result<Routed<T>> {
    let groups = layout.groups as usize;
    let per_file = load::map_files(files, specs, &|index, batch, out: &mut Vec<Item<T>>| {
        let mut encoded: Vec<Vec<u8>> = vec![Vec::new(); groups];
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
            match parse_row(batch, i, at) {
                Parsed::Row(row) if row.is_candidate(cross) => out.push(Item::Candidate(row)),
                Parsed::Row(row) => {
                    debug_assert_eq!(partition, layout.partition(row.account()));
                    if layout.owns(partition) {
                        let group = layout.group_of(partition);
                        row.encode(&mut encoded[group]);
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
                if let Err(e) = spill.append(group, bytes, counts[group]) {
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
