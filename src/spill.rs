//! A split run's first full pass: parse every usage and ledger row once and write each
//! valid row of the groups after the held ones to the spill file of its group (its compact
//! row's spill form, see [`CompactRow`], and its ids), so that the groups can then be
//! processed one after another with at most two groups' rows in memory (the next one is
//! read back meanwhile). A spill row with its ids, which are written as they are in memory,
//! takes about half the bytes the in-memory rows did before the spill form
//! (benches/README.md, "2026-12-03: a compact spill form, lighter Parquet writing (an hour
//! earlier)"; now: "Profiles and experiments (2026-12-04, night: the read-back's own
//! thread, spill ids as they are, CSVs in pieces)"). Rejected rows and candidates (rows
//! whose partition `route::resolve` decides) stay in memory; both are few. So do the rows
//! of the first [`HELD_GROUPS`] groups. The first is processed as soon as the pass ends, so
//! its read-back would have nothing to overlap with (at 20M events in 4 groups it ran
//! alone, both cores idle but one: benches/README.md, "Profiles and experiments
//! (2026-12-03, late night: the first group in memory)"). The second is in memory while
//! the first is processed, as a spilled group's rows are while the group before it is
//! (read back meanwhile): the groups' peak is the same, and its spill bytes are neither
//! written nor read (on the VM of 2026-12-07 the host charges about 3 CPU-s a GB of them as
//! steal: benches/README.md, "Profiles and experiments (2026-12-07, 14:45–15:15: the
//! spill's disk I/O paid as steal)"). Each row group writes a held group's rows into a
//! place of its own in the group's vector, sized by the light pass's count of the row
//! group's rows of that group, and the places are closed up once the pass is done (each
//! row moved down once): no vector grows into fresh memory.

use crate::dict::{ids_past_a_chunk, IdChunk, Ids};
use crate::direct::{AlignedBuf, AppendFiles};
use crate::error::{Result, TallyError};
use crate::load::{Batch, InputFile, Parsed, Plan, Unit};
use crate::model::*;
use crate::route::{
    AccountPartitions, CrossBucket, GroupCounts, GroupTable, Layout, HELD_GROUPS, NO_ACCOUNT,
};
use crate::rows::{FilesDone, Memos, RowFields, RowParser, Source};
use std::fs::File;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub(crate) const SPILL_PREFIX: &str = "tally-spill-";

/// Whether this process has made a spill folder yet (see [`spill_dir`]).
static MADE_ONE: Mutex<bool> = Mutex::new(false);

/// The file in a spill folder that its run holds locked while the folder is in use.
const OWNER_LOCK: &str = "owner.lock";

/// A spill folder, and the lock on its `OWNER_LOCK` that tells other runs it is live
/// (removed with the folder when dropped).
pub struct SpillDir {
    path: PathBuf,
    /// `None` only while the folder is being made.
    owner: Option<File>,
}

impl SpillDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SpillDir {
    /// The folder goes, so an interrupt need not. Its lock file is removed last: a run
    /// killed while removing the folder leaves it with an `owner.lock` no one holds, or
    /// empty, both of which the next run's sweep removes at once (`remove_orphans`).
    fn drop(&mut self) {
        remove_lock_last(&self.path);
        drop(self.owner.take());
        crate::interrupt::forget(&self.path);
    }
}

/// Remove a folder (best effort), its `OWNER_LOCK` last: a process that dies while
/// removing it (SIGKILL, or the process exiting on a signal meanwhile) leaves a folder with
/// its lock file, which the next run's sweep takes as a dead run's, or an empty one, which
/// it removes at once (`remove_orphans`); never a lockless folder of spill files, which
/// only goes once a minute old. Every remover of spill folders goes through this: a run's
/// own, the sweep and the interrupt watcher.
pub fn remove_lock_last(folder: &Path) {
    if let Ok(entries) = std::fs::read_dir(folder) {
        for entry in entries.flatten().filter(|e| e.file_name() != OWNER_LOCK) {
            let _ = match entry.file_type().is_ok_and(|t| t.is_dir()) {
                true => std::fs::remove_dir_all(entry.path()),
                false => std::fs::remove_file(entry.path()),
            };
        }
    }
    let _ = std::fs::remove_file(folder.join(OWNER_LOCK));
    let _ = std::fs::remove_dir(folder);
}

/// [`MADE_ONE`], locked.
fn made_one() -> std::sync::MutexGuard<'static, bool> {
    MADE_ONE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fresh spill folder under the temporary folder (`$TMPDIR`), named with this process's
/// id and removed when dropped (also when the run fails). Folders left by killed runs are
/// removed once per command, at its start ([`sweep_orphans`]), not here: a run makes
/// several spill folders.
pub fn spill_dir() -> Result<SpillDir> {
    let tmp = temp_dir();
    // From now on a folder named with our own pid may be ours: a sweep (which holds the
    // flag's lock while it sweeps) no longer takes one for a dead process's.
    *made_one() = true;
    // Made again when its name is taken (a run of the same pid in another pid namespace
    // sharing `$TMPDIR`), or when such a run's sweep removes it in the moment before its
    // lock is in place (it sees our pid as gone, and an empty folder of a gone pid as a
    // killed run's).
    let mut attempts = 0;
    loop {
        attempts += 1;
        match make_spill_dir(&tmp) {
            Err(MakeError::Again(_)) if attempts < MAKE_ATTEMPTS => continue,
            Err(MakeError::Again(e) | MakeError::Failed(e)) => return Err(e),
            Ok(dir) => return Ok(dir),
        }
    }
}

/// How many times [`spill_dir`] makes a folder that other runs keep taking.
const MAKE_ATTEMPTS: u32 = 8;

enum MakeError {
    /// The folder's name was taken, or the folder removed while being made (by another
    /// run's sweep): make another.
    Again(TallyError),
    Failed(TallyError),
}

/// A name no earlier spill folder of this process had: the time and a count.
fn unique_suffix() -> String {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let count = MADE.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{nanos:08x}{count:x}")
}

fn make_spill_dir(tmp: &Path) -> std::result::Result<SpillDir, MakeError> {
    let path = tmp.join(format!(
        "{SPILL_PREFIX}{}-{}",
        std::process::id(),
        unique_suffix()
    ));
    // Remembered before it is made: an interrupt then either removes it (in rounds, for a
    // folder being made) or stops us first, and never ends the process with it half made.
    if !crate::interrupt::remember(path.clone()) {
        return Err(MakeError::Failed(crate::interrupt::interrupted()));
    }
    if let Err(e) = std::fs::create_dir(&path) {
        crate::interrupt::forget(&path);
        return Err(match e.kind() {
            std::io::ErrorKind::AlreadyExists => MakeError::Again(TallyError::write(&path, e)),
            _ => MakeError::Failed(TallyError::temp_folder(tmp, e)),
        });
    }
    // Dropped on any failure below: the folder goes with it.
    let mut dir = SpillDir { path, owner: None };
    let failed = |path: &Path, e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => MakeError::Again(TallyError::write(path, e)),
        _ => MakeError::Failed(TallyError::write(path, e)),
    };
    // Locked under another name, then renamed into place (the lock stays with the file):
    // another run's sweep must never find an `owner.lock` not yet locked, take its lock and
    // remove a live folder.
    let making = dir.path.join(format!("{OWNER_LOCK}.new"));
    let lock = dir.path.join(OWNER_LOCK);
    let owner = File::create(&making).map_err(|e| failed(&making, e))?;
    owner.try_lock().map_err(|e| match e {
        std::fs::TryLockError::Error(e) => failed(&making, e),
        // Another run's sweep holds it, and is removing the folder.
        std::fs::TryLockError::WouldBlock => MakeError::Again(TallyError::Invariant(format!(
            "{} is locked by another run as it is made",
            making.display()
        ))),
    })?;
    std::fs::rename(&making, &lock).map_err(|e| failed(&lock, e))?;
    dir.owner = Some(owner);
    Ok(dir)
}

/// Remove the spill folders of runs that were killed (their process is gone), at the start
/// of every command that may make spill folders (a run, `explain`): a run that does not
/// split makes no spill folder of its own, and would otherwise leave a killed split run's
/// gigabytes in `$TMPDIR` until a split run came. Before this process's first spill folder,
/// one named with its pid is a dead process's (pids are reused).
pub fn sweep_orphans() {
    let made_one = made_one();
    remove_orphans(&temp_dir(), !*made_one);
}

/// The temporary folder: `$TMPDIR`, or `/tmp` when it is unset or empty (the standard
/// library gives "" for an empty one, which put spill folders in the working folder).
pub fn temp_dir() -> std::path::PathBuf {
    match std::env::var_os("TMPDIR") {
        Some(dir) if !dir.is_empty() => std::path::PathBuf::from(dir),
        _ => std::path::PathBuf::from("/tmp"),
    }
}

/// Remove the `tally-spill-*` folders no live run holds (best effort). A folder's run holds
/// its [`OWNER_LOCK`] locked, so a lock that can be taken is a dead run's, whatever the pid
/// in the name says: runs in other pid namespaces (containers sharing `$TMPDIR`, each run
/// pid 1) see each other's pids as gone. A folder without the lock file falls back to the
/// pid (gone; with `own_pid_is_stale`, named with this process's pid, as pids are reused):
/// then it goes if it is older than a minute (an older tally's), or if it holds nothing but
/// an `owner.lock.new` no one holds ([`remove_unmade`]: a run killed while making or
/// removing it; a live run in another pid namespace caught making it, maybe with our very
/// pid (each container's run is pid 1), makes another, see [`spill_dir`]). A folder being
/// removed stays locked while anything but its lock is left in it ([`remove_lock_last`]).
fn remove_orphans(tmp: &Path, own_pid_is_stale: bool) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(SPILL_PREFIX)
            .and_then(|rest| rest.split(['-', '.']).next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let folder = entry.path();
        match File::open(folder.join(OWNER_LOCK)) {
            // Held while the folder is removed: another sweep leaves it alone meanwhile.
            Ok(lock) => {
                if lock.try_lock().is_ok() {
                    remove_lock_last(&folder);
                }
            }
            Err(_) => {
                let gone = match pid == std::process::id() as i32 {
                    true => own_pid_is_stale,
                    false => !process_alive(pid),
                };
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 60));
                match (gone, old) {
                    (true, true) => remove_lock_last(&folder),
                    (true, false) => remove_unmade(&folder),
                    (false, _) => {}
                }
            }
        }
    }
}

/// Remove a folder that holds nothing, or nothing but an `owner.lock.new` no one holds: its
/// run was killed before its lock was in place, or after it was removed (it goes last).
/// The `.new` file's lock is held while the folder is removed, and the folder is removed
/// only if empty, so that a run making it meanwhile fails to lock it or finds it gone, and
/// makes another, rather than losing a folder it uses.
fn remove_unmade(folder: &Path) {
    let making = folder.join(format!("{OWNER_LOCK}.new"));
    let _held = match File::open(&making) {
        Ok(file) => match file.try_lock() {
            Ok(()) => {
                let _ = std::fs::remove_file(&making);
                Some(file)
            }
            Err(_) => return,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(_) => return,
    };
    let _ = std::fs::remove_dir(folder);
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn corrupt(file: &Path, e: impl std::fmt::Display) -> TallyError {
    TallyError::Invariant(format!(
        "spill file {} cannot be read back: {e}",
        file.display()
    ))
}

/// Write buffer of each spill file: 64 MiB over all groups, from 64 KiB to 1 MiB each.
fn buffer_bytes(groups: u32) -> usize {
    ((64usize << 20) / groups.max(1) as usize).clamp(64 << 10, 1 << 20)
}

/// Bytes of a frame header: rows, bytes of their spill forms, bytes of their ids (the id
/// chunk as in memory; u32 LE each), and the frame's checksum ([`frame_checksum`], u64 LE).
const FRAME_HEADER_BYTES: usize = 20;

/// A frame header's fields (see `SpillFiles::append`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct FrameHeader {
    rows: u32,
    rows_bytes: u32,
    ids_bytes: u32,
    checksum: u64,
}

impl FrameHeader {
    /// Where the checksum starts in a header's bytes (after the three u32 counts).
    const CHECKSUM_AT: usize = 12;

    fn to_bytes(self) -> [u8; FRAME_HEADER_BYTES] {
        let mut bytes = [0u8; FRAME_HEADER_BYTES];
        bytes[..4].copy_from_slice(&self.rows.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.rows_bytes.to_le_bytes());
        bytes[8..Self::CHECKSUM_AT].copy_from_slice(&self.ids_bytes.to_le_bytes());
        bytes[Self::CHECKSUM_AT..].copy_from_slice(&self.checksum.to_le_bytes());
        bytes
    }

    /// The header at the start of `bytes` (`None`: fewer bytes than a header).
    fn read(bytes: &[u8]) -> Option<FrameHeader> {
        let bytes = bytes.get(..FRAME_HEADER_BYTES)?;
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        Some(FrameHeader {
            rows: u32_at(0),
            rows_bytes: u32_at(4),
            ids_bytes: u32_at(8),
            checksum: u64::from_le_bytes(bytes[Self::CHECKSUM_AT..].try_into().expect("8 bytes")),
        })
    }
}

/// CRC-32 of a frame's encoded rows and ids (widened to the header's 64 bits): a damaged
/// spill file fails the run when read back instead of decoding to other rows (a flipped
/// bit in a varint still decodes, and a wrong step would shift every later instant of its
/// frame). A CRC-32 finds every burst of up to 32 flipped bits; other damage (a whole
/// sector, say) passes it about once in 2^32 frames, against 2^64 for the 64-bit xxh3 it
/// replaced, and must then also decode to whole rows in order with the run's codes to go
/// unnoticed. The trade: `crc32fast` folds with the CPU's carry-less multiply, at about
/// half the CPU of xxh3's streaming hasher (`perf` counts in benches/README.md, "Profiles
/// and experiments (2026-12-04, late evening: where the split's time goes, CRC-32 spill
/// frames)").
fn frame_checksum(rows: &[u8], ids: &[u8]) -> u64 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(rows);
    hasher.update(ids);
    u64::from(hasher.finalize())
}

/// The spill files of one dataset: one per group, removed with the folder. Written past the
/// page cache where the file system allows ([`crate::direct`]).
pub struct SpillFiles {
    out: AppendFiles,
    rows: Vec<AtomicU64>,
}

/// A written spill file, how many rows and bytes it holds.
pub struct SpillFile {
    pub path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
}

impl SpillFiles {
    pub fn create(dir: &Path, dataset: Dataset, groups: u32) -> Result<SpillFiles> {
        let paths = (0..groups)
            .map(|g| dir.join(format!("{}-{g}.bin", dataset.name())))
            .collect();
        let out = AppendFiles::create(paths, buffer_bytes(groups))
            .map_err(|(path, e)| TallyError::write(path, e))?;
        let rows = (0..groups).map(|_| AtomicU64::new(0)).collect();
        Ok(SpillFiles { out, rows })
    }

    /// Append one frame: the row count, the length of the rows' spill forms and the length
    /// of the id chunk (u32 LE each), the CRC-32 of both (u64 LE), the
    /// rows' spill forms ([`CompactRow::encode`]), then the id chunk's bytes as they are
    /// in memory. A frame holds rows of one batch in row order (their ids in chunk
    /// 0 of the frame, in row order); frames let a group be read back in parallel. The rows are
    /// encoded before the file is locked, so that appends of other batches wait only for
    /// the copy into its buffer (and, when every spare buffer is being written, for the
    /// writer thread to hand one back).
    pub fn append<R: CompactRow>(&self, group: usize, rows: &[R], ids: &IdChunk) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let encoded = encode_rows(rows, &ids.bytes);
        self.rows[group].fetch_add(rows.len() as u64, Ordering::Relaxed);
        let header = FrameHeader {
            rows: frame_len(rows.len()),
            rows_bytes: frame_len(encoded.len()),
            ids_bytes: frame_len(ids.bytes.len()),
            checksum: frame_checksum(&encoded, &ids.bytes),
        }
        .to_bytes();
        self.out
            .append(group, &[&header, &encoded, &ids.bytes])
            .map_err(|(path, e)| TallyError::write(path, e))
    }

    /// Write out every buffer; after this the files can be read.
    pub fn finish(self) -> Result<Vec<SpillFile>> {
        let written = self
            .out
            .finish()
            .map_err(|(path, e)| TallyError::write(path, e))?;
        Ok(written
            .into_iter()
            .zip(self.rows)
            .map(|((path, bytes), rows)| SpillFile {
                path,
                rows: rows.into_inner(),
                bytes,
            })
            .collect())
    }
}

/// The spill forms of a frame's rows, each after the previous one (the first after a
/// zeroed row).
fn encode_rows<R: CompactRow>(rows: &[R], ids: &[u8]) -> Vec<u8> {
    // Most rows take 20-30 bytes; room for 32 avoids regrowth in the common case.
    let mut out = Vec::with_capacity(rows.len() * 32);
    let mut prev = R::zeroed();
    let mut next_id = 0u32;
    for row in rows {
        row.encode(&prev, ids, &mut next_id, &mut out);
        prev = *row;
    }
    assert_eq!(
        next_id as usize,
        ids.len(),
        "a frame's id chunk holds its rows' ids only"
    );
    out
}

/// A frame part's length as its header holds it: a batch is far below 4 GiB.
fn frame_len(bytes: usize) -> u32 {
    u32::try_from(bytes).expect("a spill frame part is under 4 GiB")
}

/// One frame of a spill file: its rows' spill forms, its ids, their count, its
/// first row and its checksum (checked when the frame is decoded, frames in parallel).
struct Frame<'a> {
    rows: &'a [u8],
    ids: &'a [u8],
    count: usize,
    first: At,
    checksum: u64,
}

const CHECKSUM_MISMATCH: &str = "a frame's checksum does not match its bytes";
const ROWS_DO_NOT_DECODE: &str =
    "a frame's rows do not decode to whole rows and ids (with codes of the run's dictionaries)";
const ROWS_OUT_OF_ORDER: &str = "rows out of (file, row) order";

/// Split a spill file into its frames (see `SpillFiles::append`).
fn frames_of<'a, R: CompactRow>(bytes: &'a [u8], path: &Path) -> Result<Vec<Frame<'a>>> {
    let mut frames = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let header = FrameHeader::read(&bytes[at..])
            .ok_or_else(|| corrupt(path, "truncated frame header"))?;
        let count = header.rows as usize;
        let rows_len = header.rows_bytes as usize;
        let ids_len = header.ids_bytes as usize;
        if count == 0 {
            return Err(corrupt(path, "empty frame"));
        }
        let rows_at = at + FRAME_HEADER_BYTES;
        let ids_at = rows_at + rows_len;
        let (Some(rows), Some(ids)) = (
            bytes.get(rows_at..ids_at),
            bytes.get(ids_at..ids_at + ids_len),
        ) else {
            return Err(corrupt(path, "truncated frame"));
        };
        let checksum = header.checksum;
        // Only the first row here (the frames' order); the checksum and the other rows are
        // checked by `decode_frame`, in parallel. A first row that does not decode names
        // the damage the checksum finds, if it finds one. The first row reads only its own
        // ids from the frame's chunk (a damaged later id is `decode_frame`'s to find).
        let Some((first, _)) = R::decode(rows, &R::zeroed(), ids, &mut 0, 0) else {
            return Err(corrupt(
                path,
                match frame_checksum(rows, ids) == checksum {
                    true => "a frame's first row cannot be decoded",
                    false => CHECKSUM_MISMATCH,
                },
            ));
        };
        frames.push(Frame {
            rows,
            ids,
            count,
            first: first.at(),
            checksum,
        });
        at = ids_at + ids_len;
    }
    Ok(frames)
}

/// Check a frame's checksum and decode its rows into `slots` (one per row and per row of
/// `extra`, which are merged in by place: rows in (file, row) order that belong before,
/// among or after the frame's), their ids becoming chunk `chunk`: the frame's ids, or why
/// the frame is refused (its rows must decode whole, in (file, row) order, use exactly its
/// ids and carry codes within `limits`).
fn decode_frame<R: CompactRow>(
    frame: &Frame,
    chunk: u32,
    limits: &CodeLimits,
    extra: &[R],
    slots: &mut [MaybeUninit<R>],
) -> std::result::Result<(IdChunk, At), &'static str> {
    assert_eq!(slots.len(), frame.count + extra.len());
    if frame_checksum(frame.rows, frame.ids) != frame.checksum {
        return Err(CHECKSUM_MISMATCH);
    }
    // The frame's ids are its chunk as in memory: each row's are checked as it decodes.
    let ids = frame.ids.to_vec();
    let mut bytes = frame.rows;
    let mut prev = R::zeroed();
    let mut next_id = 0u32;
    let (mut slot, mut extra) = (0, extra.iter().peekable());
    for i in 0..frame.count {
        let row = match R::decode(bytes, &prev, &ids, &mut next_id, chunk) {
            Some((row, rest)) if row.codes_within(limits) => {
                if i > 0 && row.at() <= prev.at() {
                    return Err(ROWS_OUT_OF_ORDER);
                }
                prev = row;
                bytes = rest;
                row
            }
            _ => return Err(ROWS_DO_NOT_DECODE),
        };
        while let Some(e) = extra.next_if(|e| e.at() < row.at()) {
            slots[slot].write(*e);
            slot += 1;
        }
        assert!(
            extra.peek().is_none_or(|e| e.at() != row.at()),
            "no place is both spilled and among the candidates"
        );
        slots[slot].write(row);
        slot += 1;
    }
    for e in extra {
        slots[slot].write(*e);
        slot += 1;
    }
    assert_eq!(slot, slots.len(), "a frame fills its every slot");
    match bytes.is_empty() && next_id as usize == ids.len() {
        true => Ok((IdChunk { bytes: ids }, prev.at())),
        false => Err(ROWS_DO_NOT_DECODE),
    }
}

/// Read one group's spill file back in (file, row) order, straight into one vector, with
/// the group's candidates `extra` (their ids in `extra_ids`) merged in by place as the
/// frames are decoded; its ids, one chunk per frame, then the candidates' chunk. The file
/// is read whole into `bytes` (unbuffered where the file system allows; a buffer reused
/// group after group, grown when a file is larger) and removed once read. The rows go into
/// `buffer` (cleared) when it has room for them: an earlier group's, whose memory is mapped
/// already (a fresh vector's pages are zeroed by the kernel as they are first touched,
/// seconds of CPU over the groups at 100M events: benches/README.md, "Figures moved from
/// source comments (2026-12-05)").
pub fn read_group<R: CompactRow>(
    file: &SpillFile,
    extra: Vec<R>,
    extra_ids: &Ids,
    limits: &CodeLimits,
    buffer: Vec<R>,
    bytes: &mut AlignedBuf,
) -> Result<(Vec<R>, Ids)> {
    use rayon::prelude::*;
    let path = &file.path;
    let length = usize::try_from(file.bytes).expect("a spill file fits in memory");
    let bytes =
        crate::direct::read_into(path, length, bytes).map_err(|e| TallyError::scratch(path, e))?;
    std::fs::remove_file(path).map_err(|e| TallyError::write(path, e))?;
    tracing::debug!(file = %path.display(), bytes = length, rows = file.rows, candidates = extra.len(), "spill file read back");
    let mut frames = frames_of::<R>(bytes, path)?;
    let total: usize = frames.iter().map(|f| f.count).sum();
    if total as u64 != file.rows {
        return Err(corrupt(
            path,
            format!("{total} rows in its frames, {} written", file.rows),
        ));
    }
    // A frame holds rows of one batch, in row order, and batches cover disjoint row
    // ranges: ordering the frames by their first row orders every row.
    frames.sort_unstable_by_key(|f| f.first);
    let (extra, extra_chunks) = candidates_of(extra, extra_ids, frames.len() as u32);
    // Each frame but the last has a next one, which its rows must all come before.
    let next_frames = &frames[1.min(frames.len())..];
    // The candidates each frame takes: those before the next frame's first row (the
    // first frame also those before its own, the last all after it).
    let mut ends: Vec<usize> = next_frames
        .iter()
        .map(|f| extra.partition_point(|e| e.at() < f.first))
        .collect();
    ends.push(extra.len());
    let mut rows = buffer;
    rows.clear();
    if rows.capacity() < total + extra.len() {
        // The old buffer is freed first, and not grown: growing copies its old bytes.
        rows = Vec::new();
        rows.reserve_exact(total + extra.len());
    }
    // The rows are written into the vector's spare room, not zero-filled first (a pass over
    // a group's rows of memory for nothing: 64 bytes for each of the 193M rows read back in
    // a 100M-event run, about 12 GB; measured: benches/README.md, "Profiles and experiments
    // (2026-12-03, late night: the first group in memory)", d10b024).
    let mut jobs = Vec::with_capacity(frames.len());
    let mut rest = &mut rows.spare_capacity_mut()[..total + extra.len()];
    let mut taken = 0;
    for (chunk, (frame, &end)) in frames.iter().zip(&ends).enumerate() {
        let (here, after) = rest.split_at_mut(frame.count + end - taken);
        jobs.push((chunk as u32, frame, &extra[taken..end], here));
        rest = after;
        taken = end;
    }
    if frames.is_empty() {
        for (slot, e) in rest.iter_mut().zip(&extra) {
            slot.write(*e);
        }
    }
    let decoded: Vec<std::result::Result<(IdChunk, At), &str>> = jobs
        .into_par_iter()
        .map(|(chunk, frame, extra, slots)| decode_frame(frame, chunk, limits, extra, slots))
        .collect();
    let mut ids = Ids::default();
    let mut last_rows = Vec::with_capacity(frames.len());
    for decoded in decoded {
        let (chunk, last) = decoded.map_err(|why| corrupt(path, why))?;
        ids.push(chunk);
        last_rows.push(last);
    }
    for chunk in extra_chunks {
        ids.push(chunk);
    }
    // Frames hold rows of disjoint batches: each frame's last row comes before the next
    // frame's first (a damaged file whose checksums hold would otherwise give rows out of
    // order, which the group's stages take for granted).
    if (last_rows.iter().zip(next_frames)).any(|(&last, next)| last >= next.first) {
        return Err(corrupt(path, ROWS_OUT_OF_ORDER));
    }
    // SAFETY: every frame decoded whole, so each job wrote every slot of its range
    // (`decode_frame` asserts it), and the ranges (with the candidates' when there are no
    // frames) cover the first `total + extra.len()` slots.
    unsafe { rows.set_len(total + extra.len()) };
    Ok((rows, ids))
}

/// A group's candidates in (file, row) order, their ids (in `from`) moved to chunks, which
/// are to be chunks number `first`, `first + 1`, ... of the group's ids: a new one begins
/// when one has no room for a row's ids (a group's candidates, from every file, may hold
/// more than the 4 GiB a chunk's offsets reach).
pub fn candidates_of<R: CompactRow>(
    extra: Vec<R>,
    from: &Ids,
    first: u32,
) -> (Vec<R>, Vec<IdChunk>) {
    candidates_in_chunks(extra, from, first, IdChunk::has_room_for_a_row)
}

/// [`candidates_of`], a chunk taking rows while `has_room` says so.
fn candidates_in_chunks<R: CompactRow>(
    extra: Vec<R>,
    from: &Ids,
    first: u32,
    has_room: impl Fn(&IdChunk) -> bool,
) -> (Vec<R>, Vec<IdChunk>) {
    let mut chunks = vec![IdChunk::default()];
    let mut extra: Vec<R> = (extra.into_iter())
        .map(|r| {
            if !chunks.last().is_some_and(&has_room) {
                chunks.push(IdChunk::default());
            }
            let number = first + (chunks.len() - 1) as u32;
            let ids = chunks.last_mut().expect("a chunk was pushed");
            r.move_ids(from, ids, number)
        })
        .collect();
    extra.sort_unstable_by_key(|r| r.at());
    (extra, chunks)
}

/// What the pass keeps in memory for a dataset.
pub struct Routed<R> {
    /// Rejected rows whose account partition this shard owns.
    pub rejects: Vec<Reject>,
    /// Valid rows whose partition `route::resolve` decides (every shard keeps all of
    /// them), and their ids (a chunk per batch).
    pub candidates: Vec<R>,
    pub candidate_ids: Ids,
    /// The rows of the first [`HELD_GROUPS`] groups, kept in memory rather than spilled
    /// (empty for a group the run does not have).
    pub held: [HeldRows<R>; HELD_GROUPS],
    /// Valid rows of this shard's groups that are not candidates (spilled, or held).
    pub grouped: u64,
}

/// A held group's valid rows (not candidates), in (file, row) order, and their ids (a
/// chunk per row group). The first group is processed as soon as the pass ends, so its
/// read-back would have nothing beside it to overlap with; the second is in memory while
/// the first is processed, as a spilled group is while the one before it is.
pub struct HeldRows<R> {
    pub rows: Vec<R>,
    pub ids: Ids,
}

/// What the pass keeps of one row group while it reads it.
struct RowGroupOut<'h, R> {
    /// The row group's place in each held group's vector (as many rows as the light pass
    /// counted), filled from its start; `done.held[g]` rows are written to group `g`'s.
    places: [&'h mut [MaybeUninit<R>]; HELD_GROUPS],
    /// The codes and partitions of the row group's dictionaries: freed once it is read.
    memos: Memos,
    accounts: AccountPartitions,
    done: RowGroupDone<R>,
}

/// What the pass keeps of one row group once it is read.
struct RowGroupDone<R> {
    rejects: Vec<Reject>,
    candidates: Vec<R>,
    candidate_ids: IdChunk,
    held: [usize; HELD_GROUPS],
    held_ids: [IdChunk; HELD_GROUPS],
    grouped: u64,
    failed: Option<TallyError>,
}

impl<R> RowGroupDone<R> {
    /// Whether a row's ids fit the row group's chunks. (A spill frame holds one batch's
    /// rows, at most 64K of them: its ids always fit.)
    fn ids_have_room(&self) -> bool {
        self.candidate_ids.has_room_for_a_row()
            && self.held_ids.iter().all(IdChunk::has_room_for_a_row)
    }
}

/// Parse every row of a dataset; keep the first [`HELD_GROUPS`] groups' valid rows in
/// memory (each row group's in a place of its own, sized by the light pass's `counts`),
/// spill the other groups' valid rows of this shard by group, keep rejects (of this shard)
/// and candidates (all).
pub fn route_dataset<S: Source>(
    source: &S,
    files: &[InputFile],
    layout: &Layout,
    cross: &CrossBucket,
    counts: &GroupCounts,
    spill: &SpillFiles,
    file_done: &(dyn Fn() + Sync),
) -> Result<Routed<S::Row>> {
    let plan = Plan::open(files, source.specs());
    let units = plan.units.clone();
    let places = held_places(counts, units.len());
    // Room for the largest group (the vector is reused for a later group's rows) and the
    // candidates routed to the group (about as many as leave it; a vector that grows
    // copies its rows into fresh memory). Room not written to takes no memory. None for a
    // group the run does not have.
    let mut held: [Vec<S::Row>; HELD_GROUPS] = std::array::from_fn(|g| {
        let room = match g < layout.groups as usize {
            true => {
                (places.iter().map(|p| p[g]).sum::<usize>()).max(counts.largest_group() as usize)
            }
            false => 0,
        };
        Vec::with_capacity(room + room / 64)
    });
    let states = row_group_outs(source, &mut held, &places);
    let router = BatchRouter {
        source,
        files,
        group_table: GroupTable::new(layout),
        cross,
        spill,
    };
    let done = FilesDone::new(files.len(), &units, file_done);
    let outs = plan.decode(
        files,
        states,
        &|unit, out, batch| router.route(unit, out, batch),
        &|unit, out| {
            done.unit_done(unit);
            out.done
        },
    )?;
    gather_routed(outs, held, &places)
}

/// The rows of each held group the light pass counted in each row group: the place each
/// gets in the group's vector. The light pass saw the same row groups, unless a file could
/// not be opened (the decode reports that) or changed since: then every row group gets no
/// place, and a held group's row fails as a changed file.
fn held_places(counts: &GroupCounts, units: usize) -> Vec<[usize; HELD_GROUPS]> {
    match counts.held_by_unit.len() == units {
        true => (counts.held_by_unit.iter())
            .map(|n| n.map(|n| usize::try_from(n).expect("a row group's rows fit in memory")))
            .collect(),
        false => vec![[0; HELD_GROUPS]; units],
    }
}

/// Each row group's state for the pass: its place (`places[i][g]` rows) in held group
/// `g`'s spare capacity, one after another.
fn row_group_outs<'h, S: Source>(
    source: &S,
    held: &'h mut [Vec<S::Row>; HELD_GROUPS],
    places: &[[usize; HELD_GROUPS]],
) -> Vec<RowGroupOut<'h, S::Row>> {
    let mut free = held.each_mut().map(|rows| rows.spare_capacity_mut());
    places
        .iter()
        .map(|rows| {
            let places = std::array::from_fn(|g| {
                let (place, rest) = std::mem::take(&mut free[g]).split_at_mut(rows[g]);
                free[g] = rest;
                place
            });
            RowGroupOut {
                places,
                memos: Memos::default(),
                accounts: AccountPartitions::default(),
                done: RowGroupDone {
                    rejects: Vec::new(),
                    candidates: Vec::new(),
                    candidate_ids: IdChunk::default(),
                    held: [0; HELD_GROUPS],
                    held_ids: rows.map(|n| IdChunk::with_capacity(n * source.id_bytes_per_row())),
                    grouped: 0,
                    failed: None,
                },
            }
        })
        .collect()
}

/// What the spill pass routes each batch of rows by.
struct BatchRouter<'a, S> {
    source: &'a S,
    files: &'a [InputFile],
    group_table: GroupTable,
    cross: &'a CrossBucket,
    spill: &'a SpillFiles,
}

impl<S: Source> BatchRouter<'_, S> {
    /// Parse a batch's rows of this shard (and its other rows that may be candidates) and
    /// route each: a candidate is kept, a row of a held group held in its row group's
    /// place, a row of a later group spilled in its group's frame, a reject kept.
    fn route(&self, unit: &Unit, out: &mut RowGroupOut<'_, S::Row>, batch: &Batch) {
        if out.done.failed.is_some() {
            // The run stops with that error once decoding ends: the rest is not parsed.
            return;
        }
        let (source, cross) = (self.source, self.cross);
        let mut parser = source.parser(batch, unit.file as u32, &mut out.memos);
        // A valid row's account is its raw `account_id` cell: one partition serves the
        // skip, the spill and the reject (a row without an account is reported with
        // partition 0's).
        let mut partitions = out.accounts.of_rows(&batch.columns[1], batch.len);
        for partition in &mut partitions {
            if *partition == NO_ACCOUNT {
                *partition = 0;
            }
        }
        let mut frames = self.frames_for(&partitions);
        let kept = &mut out.done;
        for (i, &partition) in partitions.iter().enumerate() {
            let group = self.group_table.group(partition);
            // Another shard's row that cannot be a candidate: not even parsed here.
            if group.is_none() && !source.raw_candidate(batch, i, cross) {
                continue;
            }
            match parser.parse(i) {
                Parsed::Row(_) if !kept.ids_have_room() => {
                    let file = &self.files[unit.file].rel_path;
                    kept.failed
                        .get_or_insert_with(|| ids_past_a_chunk(file, unit.row_group));
                }
                Parsed::Row(fields) if fields.is_candidate(cross) => {
                    let row = fields.store(&mut kept.candidate_ids, unit.index as u32);
                    kept.candidates.push(row);
                }
                Parsed::Row(fields) => {
                    let Some(group) = group else {
                        continue;
                    };
                    kept.grouped += 1;
                    if group >= HELD_GROUPS {
                        let (rows, ids) = &mut frames[group];
                        rows.push(fields.store(ids, 0));
                    } else if kept.held[group] < out.places[group].len() {
                        let row = fields.store(&mut kept.held_ids[group], unit.index as u32);
                        out.places[group][kept.held[group]].write(row);
                        kept.held[group] += 1;
                    } else {
                        kept.failed.get_or_insert_with(|| changed(self.files, unit));
                    }
                }
                Parsed::Rejected(reject) => {
                    if group.is_some() {
                        kept.rejects.push(reject);
                    }
                }
            }
        }
        for (group, (rows, ids)) in frames.iter().enumerate().skip(HELD_GROUPS) {
            if let Err(e) = self.spill.append(group, rows, ids) {
                kept.failed.get_or_insert(e);
            }
        }
    }

    /// A batch's spill frame of each group (none for a held group), each sized for the rows
    /// whose account is in it (an upper bound: rejects and candidates among them are not
    /// spilled), ids at the source's bytes a row. A batch holds a few accounts' rows, so a
    /// group's share of it is far from even, and a frame that outgrows its vectors copies
    /// them (as frames sized for an even share, and ids at 24 bytes a row for the ledger's
    /// 44, did).
    fn frames_for(&self, partitions: &[u32]) -> Vec<(Vec<S::Row>, IdChunk)> {
        let mut sizes = vec![0usize; self.group_table.groups()];
        for &partition in partitions {
            if let Some(group) = self.group_table.group(partition) {
                sizes[group] += 1;
            }
        }
        (sizes.iter().enumerate())
            .map(|(group, &rows)| match group < HELD_GROUPS {
                true => (Vec::new(), IdChunk::default()),
                false => (
                    Vec::with_capacity(rows),
                    IdChunk::with_capacity(rows * self.source.id_bytes_per_row()),
                ),
            })
            .collect()
    }
}

/// The pass's row groups gathered in (file, row group) order: the first failure, or the
/// rejects, candidates and held groups' rows (closed up from their places).
fn gather_routed<R: Copy>(
    outs: Vec<RowGroupDone<R>>,
    held: [Vec<R>; HELD_GROUPS],
    places: &[[usize; HELD_GROUPS]],
) -> Result<Routed<R>> {
    let mut routed = Routed {
        rejects: Vec::new(),
        candidates: Vec::new(),
        candidate_ids: Ids::default(),
        held: std::array::from_fn(|_| HeldRows {
            rows: Vec::new(),
            ids: Ids::default(),
        }),
        grouped: 0,
    };
    let mut written = Vec::with_capacity(outs.len());
    for out in outs {
        if let Some(e) = out.failed {
            return Err(e);
        }
        routed.rejects.extend(out.rejects);
        routed.candidates.extend(out.candidates);
        routed.candidate_ids.push(out.candidate_ids);
        for (group, ids) in routed.held.iter_mut().zip(out.held_ids) {
            group.ids.push(ids);
        }
        routed.grouped += out.grouped;
        written.push(out.held);
    }
    for (g, (group, mut rows)) in routed.held.iter_mut().zip(held).enumerate() {
        let places: Vec<usize> = places.iter().map(|p| p[g]).collect();
        let written: Vec<usize> = written.iter().map(|w| w[g]).collect();
        close_up(&mut rows, &places, &written);
        group.rows = rows;
    }
    Ok(routed)
}

/// A row group held more rows of a held group than the light pass counted in it.
fn changed(files: &[InputFile], unit: &Unit) -> TallyError {
    TallyError::input(
        files[unit.file].rel_path.clone(),
        format!(
            "row group {} changed while the run read it (more rows of one account group than \
             a first read counted); rerun once the file is complete",
            unit.row_group
        ),
    )
}

/// Move each place's `held[i]` written rows (places of `places[i]` rows, one after
/// another in `rows`' spare capacity) together, in order, and make them `rows`' contents.
fn close_up<R: Copy>(rows: &mut Vec<R>, places: &[usize], held: &[usize]) {
    assert!(rows.is_empty() && places.len() == held.len());
    let spare = rows.spare_capacity_mut();
    let (mut start, mut end) = (0, 0);
    for (&place, &written) in places.iter().zip(held) {
        assert!(written <= place, "a place holds at most its rows");
        spare.copy_within(start..start + written, end);
        start += place;
        end += written;
    }
    // SAFETY: each place's first `written` slots were written (`RowGroupOut::held`) and
    // are now copied, in place order, to slots `0..end`, which therefore hold
    // initialized rows.
    unsafe { rows.set_len(end) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dict::DictBuilder;

    #[test]
    fn close_up_keeps_the_written_rows_of_each_place_in_order() {
        // Places of 3, 0, 4 and 2 rows, of which 2, 0, 4 and 1 were written.
        let places = [3, 0, 4, 2];
        let held = [2, 0, 4, 1];
        let mut rows: Vec<u64> = Vec::with_capacity(9);
        let spare = rows.spare_capacity_mut();
        for (i, value) in [
            (0, 10),
            (1, 11),
            (3, 20),
            (4, 21),
            (5, 22),
            (6, 23),
            (7, 30),
        ] {
            spare[i].write(value);
        }
        close_up(&mut rows, &places, &held);
        assert_eq!(rows, [10, 11, 20, 21, 22, 23, 30]);
    }

    /// A generated data root (a few files of 300 events) and its usage files.
    fn generated(name: &str) -> (tempfile::TempDir, Vec<InputFile>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(name);
        crate::generate::small_root(&root);
        let files = crate::census::inputs(&root).unwrap().files;
        (dir, files[0].clone())
    }

    /// Route the usage files of a run in `groups` groups with the light pass's counts, less
    /// `fewer[g]` in each row group's count of held group `g`; the rows spilled by group,
    /// and the run's dictionaries (the rows' account codes).
    fn route_usage(
        files: &[InputFile],
        groups: u32,
        fewer: [u64; HELD_GROUPS],
    ) -> Result<(Routed<Usage>, Vec<u64>, crate::dict::Dicts)> {
        let layout = Layout {
            shard: 0,
            shards: 1,
            groups,
        };
        let light = crate::route::find_cross_bucket(files, &[], &layout, None).unwrap();
        let mut counts = light.counts[0].clone();
        for held in &mut counts.held_by_unit {
            for (n, fewer) in held.iter_mut().zip(fewer) {
                *n = n.saturating_sub(fewer);
            }
        }
        let builder = DictBuilder::new(std::iter::empty::<&str>());
        let dir = tempfile::tempdir().unwrap();
        let spill = SpillFiles::create(dir.path(), Dataset::Usage, groups).unwrap();
        let source = crate::rows::UsageSource { dicts: &builder };
        let routed = route_dataset(
            &source,
            files,
            &layout,
            &light.cross,
            &counts,
            &spill,
            &|| {},
        )?;
        let spilled_rows = spill.finish().unwrap().iter().map(|f| f.rows).collect();
        Ok((routed, spilled_rows, builder.freeze()))
    }

    /// Each row of a held group is of that group's accounts (by its parsed account code;
    /// the pass routed it by the raw `account_id` cell), in (file, row) order, its id its
    /// own event's (in the chunk of its row group).
    fn assert_held_in_order(routed: &Routed<Usage>, dicts: &crate::dict::Dicts, groups: u32) {
        let layout = Layout {
            shard: 0,
            shards: 1,
            groups,
        };
        for (group, held) in routed.held.iter().enumerate() {
            assert!(
                held.rows.windows(2).all(|w| w[0].at < w[1].at),
                "group {group} in (file, row) order"
            );
            for row in &held.rows {
                let id = held.ids.bytes(row.id);
                assert_eq!(crate::validate::id_hash_of_bytes(id), row.id_hash);
                let account = dicts.account(row.account);
                assert_eq!(layout.group_of_account(account), Some(group));
            }
        }
    }

    #[test]
    fn the_first_two_groups_are_kept_in_memory_in_row_order_and_the_others_spilled() {
        let (_dir, files) = generated("held");
        let (routed, spilled, dicts) = route_usage(&files, 4, [0, 0]).unwrap();
        let held: Vec<u64> = routed.held.iter().map(|h| h.rows.len() as u64).collect();
        assert!(held.iter().all(|&n| n > 0), "{held:?}");
        assert_eq!(spilled[..2], [0, 0], "a held group spills nothing");
        assert!(spilled[2..].iter().all(|&n| n > 0), "{spilled:?}");
        assert_eq!(
            routed.grouped,
            held.iter().sum::<u64>() + spilled.iter().sum::<u64>()
        );
        assert_held_in_order(&routed, &dicts, 4);
    }

    #[test]
    fn a_run_of_two_groups_holds_both_and_spills_nothing() {
        let (_dir, files) = generated("two");
        let (routed, spilled, dicts) = route_usage(&files, 2, [0, 0]).unwrap();
        assert_eq!(spilled, [0, 0]);
        assert!(routed.held.iter().all(|h| !h.rows.is_empty()));
        assert_eq!(
            routed.grouped,
            routed.held.iter().map(|h| h.rows.len() as u64).sum::<u64>()
        );
        assert_held_in_order(&routed, &dicts, 2);
    }

    #[test]
    fn a_row_group_with_more_held_rows_than_counted_fails_as_a_changed_file() {
        let (_dir, files) = generated("changed");
        for fewer in [[1, 0], [0, 1]] {
            let Err(e) = route_usage(&files, 3, fewer) else {
                panic!("a row group held more rows than its place ({fewer:?})");
            };
            let message = e.to_string();
            assert!(
                message.contains(
                    "row group 0 changed while the run read it (more rows of one \
                     account group than a first read counted); rerun once the file is \
                     complete"
                ),
                "{message}"
            );
            assert_eq!(e.exit_code(), 2, "{message}");
        }
    }

    fn usage(file: u32, row: u64, event: &str) -> UsageRow {
        UsageRow {
            at: RowRef { file, row },
            model: Some("m1".into()),
            quantity: crate::amount::Milli(1500),
            ..UsageRow::sample(row, event)
        }
    }

    /// Usage rows in compact form (labels of an empty dictionary), their ids in one chunk.
    fn compact(rows: &[UsageRow]) -> (Vec<Usage>, IdChunk) {
        let dicts = DictBuilder::new(std::iter::empty::<&str>());
        let mut ids = IdChunk::default();
        let rows = rows
            .iter()
            .map(|r| Usage::from_row(r, &dicts, &mut ids, 0))
            .collect();
        (rows, ids)
    }

    /// A spill file of one group holding `frames` of compact rows (each one frame).
    fn spill_frames<R: CompactRow>(
        dir: &Path,
        dataset: Dataset,
        frames: &[(Vec<R>, IdChunk)],
    ) -> SpillFile {
        let files = SpillFiles::create(dir, dataset, 1).unwrap();
        for (rows, ids) in frames {
            files.append(0, rows, ids).unwrap();
        }
        files.finish().unwrap().pop().unwrap()
    }

    /// A usage spill file's rows and ids read back with `candidates` merged in.
    fn read_with(file: &SpillFile, candidates: &[UsageRow]) -> Result<(Vec<Usage>, Ids)> {
        let (extra, extra_ids) = compact(candidates);
        let mut from = Ids::default();
        from.push(extra_ids);
        read_group::<Usage>(
            file,
            extra,
            &from,
            &CodeLimits::ANY,
            Vec::new(),
            &mut AlignedBuf::default(),
        )
    }

    /// A spill file's rows and ids, without candidates.
    fn read_back<R: CompactRow>(file: &SpillFile) -> Result<(Vec<R>, Ids)> {
        read_group::<R>(
            file,
            Vec::new(),
            &Ids::default(),
            &CodeLimits::ANY,
            Vec::new(),
            &mut AlignedBuf::default(),
        )
    }

    /// A spill file of one group holding `frames` of usage rows (each one frame).
    fn spill_of(dir: &Path, frames: &[Vec<UsageRow>]) -> SpillFile {
        let frames: Vec<_> = frames.iter().map(|rows| compact(rows)).collect();
        spill_frames(dir, Dataset::Usage, &frames)
    }

    fn error_of(file: &SpillFile) -> String {
        match read_back::<Usage>(file) {
            Ok(_) => panic!("a corrupt spill file was read"),
            Err(e) => e.to_string(),
        }
    }

    /// Another run's sweep beside folders being made (here a thread sweeping without the
    /// process's own guard, as another process would) never takes a live folder's lock or
    /// removes it: the lock file is locked before it has its name.
    #[test]
    fn a_sweep_beside_folders_being_made_never_takes_a_live_one() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let sweeping = Arc::clone(&stop);
        let sweeper = std::thread::spawn(move || {
            while !sweeping.load(Ordering::Relaxed) {
                remove_orphans(&temp_dir(), false);
            }
        });
        for _ in 0..5_000 {
            let dir = spill_dir().unwrap();
            assert!(dir.path().join(OWNER_LOCK).is_file());
        }
        stop.store(true, Ordering::Relaxed);
        sweeper.join().unwrap();
    }

    /// A spill folder goes whole when dropped, whatever it holds (its lock file last).
    #[test]
    fn a_dropped_spill_folder_is_removed_whole() {
        let dir = spill_dir().unwrap();
        let path = dir.path().to_path_buf();
        std::fs::create_dir(path.join("nested")).unwrap();
        std::fs::write(path.join("nested/a.bin"), b"a").unwrap();
        std::fs::write(path.join("b.bin"), b"b").unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    /// `folder`, made holding `files` (paths inside it, empty files) and their folders.
    fn folder_holding(folder: PathBuf, files: &[&str]) -> PathBuf {
        std::fs::create_dir_all(&folder).unwrap();
        for file in files {
            let path = folder.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"").unwrap();
        }
        folder
    }

    /// An unmade folder goes only when it is empty, or holds nothing but an
    /// `owner.lock.new` no one holds.
    #[test]
    fn only_unmade_folders_are_removed_as_unmade() {
        let tmp = tempfile::tempdir().unwrap();
        let making = |name: &str, files: &[&str]| folder_holding(tmp.path().join(name), files);
        let empty = making("empty", &[]);
        let unheld = making("unheld", &["owner.lock.new"]);
        let held = making("held", &["owner.lock.new"]);
        let lock = File::open(held.join("owner.lock.new")).unwrap();
        lock.lock().unwrap();
        let in_use = making("in-use", &["usage-1.bin"]);
        for folder in [&empty, &unheld, &held, &in_use] {
            remove_unmade(folder);
        }
        assert!(!empty.exists());
        assert!(!unheld.exists());
        assert!(held.join("owner.lock.new").exists());
        assert!(in_use.join("usage-1.bin").exists());
    }

    /// Before this process's first spill folder, a folder named with its pid is a dead
    /// run's only by its lock or, lockless, when empty or holding only an unheld
    /// `owner.lock.new`: a live run of the same pid in another pid namespace (each
    /// container's run is pid 1) may be making it, and keeps a young one with anything
    /// else in it. Removed folders go whole, `.removing` ones (an interrupted run's) too.
    #[test]
    fn own_pid_folders_go_by_their_lock_or_when_unmade() {
        let tmp = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let folder = |suffix: &str, files: &[&str]| {
            folder_holding(
                tmp.path().join(format!("{SPILL_PREFIX}{pid}-{suffix}")),
                files,
            )
        };
        let dead = folder("dead", &[OWNER_LOCK, "usage-1.bin", "nested/x.bin"]);
        let removing = folder(
            "gone.removing",
            &[OWNER_LOCK, "debits-1.bin", "nested/x.bin"],
        );
        let held = folder("held", &[OWNER_LOCK, "usage-1.bin", "nested/x.bin"]);
        let lock = File::open(held.join(OWNER_LOCK)).unwrap();
        lock.lock().unwrap();
        let being_made = folder("made", &["owner.lock.new", "nested/x.bin"]);
        let unmade = folder("unmade", &["owner.lock.new"]);
        remove_orphans(tmp.path(), true);
        assert!(!dead.exists());
        assert!(!removing.exists());
        assert!(held.join("usage-1.bin").exists());
        assert!(being_made.join("nested/x.bin").exists());
        assert!(!unmade.exists());
    }

    /// Folders named with this process's pid are taken for a dead process's only before its
    /// first spill folder: a sweep after it (a later run of the process) leaves a live one
    /// in place, whatever it holds.
    #[test]
    fn a_sweep_after_the_first_spill_folder_leaves_own_pid_folders_in_place() {
        let first = spill_dir().unwrap();
        // Lockless and two hours old: a dead process's, were it not named with our pid.
        let ours = temp_dir().join(format!(
            "{SPILL_PREFIX}{}-old-lockless-test",
            std::process::id()
        ));
        std::fs::create_dir_all(&ours).unwrap();
        std::fs::write(ours.join("usage-1.bin"), b"x").unwrap();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        File::open(&ours)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        sweep_orphans();
        let kept = ours.join("usage-1.bin").is_file();
        let _ = std::fs::remove_dir_all(&ours);
        assert!(
            kept,
            "a folder named with the live process's pid was removed"
        );
        assert!(first.path().join(OWNER_LOCK).is_file());
    }

    #[test]
    fn frames_come_back_in_row_order_with_the_candidates_merged_in() {
        let dir = tempfile::tempdir().unwrap();
        // Frames written out of order (parallel readers append as they finish).
        let late = vec![usage(1, 0, "c"), usage(1, 2, "d")];
        let early = vec![usage(0, 5, "a"), usage(0, 7, "b")];
        let file = spill_of(dir.path(), &[late, early]);
        // Candidates before, within and between the frames and after them, not in order.
        let candidates = [
            usage(1, 9, "z"),
            usage(0, 6, "ab"),
            usage(0, 1, "0"),
            usage(0, 9, "b2"),
            usage(1, 1, "cd"),
        ];
        let (rows, ids) = read_with(&file, &candidates).unwrap();
        let names: Vec<&str> = rows.iter().map(|r| ids.str(r.id).unwrap()).collect();
        assert_eq!(names, ["0", "a", "ab", "b", "b2", "c", "cd", "d", "z"]);
        assert_eq!(rows[1].quantity, 1500);
        assert_eq!(rows[1].at.row_ref(), RowRef { file: 0, row: 5 });
        assert!(!file.path.exists(), "the spill file is removed once read");
    }

    /// Frames whose rows overlap, and rows out of order within a frame, are refused.
    #[test]
    fn rows_out_of_order_fail() {
        for frames in [
            vec![
                vec![usage(0, 1, "a"), usage(0, 3, "b")],
                vec![usage(0, 2, "c")],
            ],
            vec![vec![usage(0, 3, "a"), usage(0, 2, "b")]],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let message = error_of(&spill_of(dir.path(), &frames));
            assert!(
                message.contains("rows out of (file, row) order"),
                "{message}"
            );
        }
    }

    /// A group's candidates take a new id chunk when one has no room for a row's ids (at 4
    /// GiB; here once it holds one): numbered on from the first, and each row's ids read
    /// back from the chunks as pushed, in (file, row) order.
    #[test]
    fn candidates_take_a_new_chunk_when_one_is_full() {
        let rows: Vec<UsageRow> = (0..5)
            .rev()
            .map(|row| usage(0, row, &format!("event-{row}")))
            .collect();
        let (extra, extra_ids) = compact(&rows);
        let mut from = Ids::default();
        from.push(extra_ids);
        let (moved, chunks) = candidates_in_chunks(extra, &from, 3, |chunk| chunk.bytes.is_empty());
        assert_eq!(chunks.len(), 5);
        let mut ids = Ids::default();
        for _ in 0..3 {
            ids.push(IdChunk::default());
        }
        for chunk in chunks {
            ids.push(chunk);
        }
        let back: Vec<(u64, u32, &str)> = (moved.iter())
            .map(|r| (r.at.row(), r.id.chunk(), ids.str(r.id).unwrap()))
            .collect();
        assert_eq!(
            back,
            [
                (0, 7, "event-0"),
                (1, 6, "event-1"),
                (2, 5, "event-2"),
                (3, 4, "event-3"),
                (4, 3, "event-4"),
            ]
        );
        // At a chunk's real room, one chunk.
        let (extra, extra_ids) = compact(&rows);
        let mut from = Ids::default();
        from.push(extra_ids);
        assert_eq!(candidates_of(extra, &from, 0).1.len(), 1);
    }

    #[test]
    fn candidates_alone_come_back_in_row_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = spill_of(dir.path(), &[]);
        let (rows, ids) = read_with(&file, &[usage(2, 0, "b"), usage(0, 3, "a")]).unwrap();
        let names: Vec<&str> = rows.iter().map(|r| ids.str(r.id).unwrap()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    #[should_panic(expected = "no place is both spilled and among the candidates")]
    fn a_candidate_in_a_spilled_rows_place_stops_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let file = spill_of(dir.path(), &[vec![usage(0, 1, "a"), usage(0, 2, "b")]]);
        let _ = read_with(&file, &[usage(0, 2, "c")]);
    }

    #[test]
    fn an_empty_spill_file_reads_as_no_rows() {
        let dir = tempfile::tempdir().unwrap();
        let file = spill_of(dir.path(), &[]);
        assert!(read_back::<Usage>(&file).unwrap().0.is_empty());
    }

    /// Rewrite the file's first frame header to claim `rows` rows.
    fn claim_rows(file: &SpillFile, rows: u32) {
        let mut bytes = std::fs::read(&file.path).unwrap();
        let header = FrameHeader::read(&bytes).unwrap();
        bytes[..FRAME_HEADER_BYTES].copy_from_slice(&FrameHeader { rows, ..header }.to_bytes());
        std::fs::write(&file.path, bytes).unwrap();
    }

    #[test]
    fn a_frame_that_claims_more_rows_than_it_holds_fails() {
        let dir = tempfile::tempdir().unwrap();
        let short = vec![usage(1, 0, "c"), usage(1, 1, "d")];
        let mut file = spill_of(dir.path(), &[short]);
        claim_rows(&file, 3);
        file.rows = 3;
        let message = error_of(&file);
        assert!(message.contains("cannot be read back"), "{message}");
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

    /// A header comes back as written, field for field; fewer bytes than a header are none.
    #[test]
    fn a_frame_header_round_trips() {
        let header = FrameHeader {
            rows: 3,
            rows_bytes: u32::MAX,
            ids_bytes: 1 << 20,
            checksum: u64::MAX - 1,
        };
        let bytes = header.to_bytes();
        assert_eq!(FrameHeader::read(&bytes), Some(header));
        assert_eq!(FrameHeader::read(&bytes[..FRAME_HEADER_BYTES - 1]), None);
    }

    /// Recompute the first frame's checksum after a test changed its bytes: what a writer
    /// bug (rather than a damaged disk) would leave, which the decoder must still refuse.
    fn reseal_first_frame(bytes: &mut [u8]) {
        let header = FrameHeader::read(bytes).unwrap();
        let ids_at = FRAME_HEADER_BYTES + header.rows_bytes as usize;
        let ids_end = ids_at + header.ids_bytes as usize;
        let checksum = frame_checksum(&bytes[FRAME_HEADER_BYTES..ids_at], &bytes[ids_at..ids_end]);
        bytes[..FRAME_HEADER_BYTES].copy_from_slice(&FrameHeader { checksum, ..header }.to_bytes());
    }

    /// Any flipped bit of a frame's rows or ids fails the checksum (in the first row or
    /// after it), whatever it does to decoding.
    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let file = spill_of(dir.path(), &[vec![usage(0, 0, "a"), usage(0, 1, "b")]]);
        let clean = std::fs::read(&file.path).unwrap();
        // From the checksum field on (its CRC-32 bytes and the four zero bytes above them).
        for at in FrameHeader::CHECKSUM_AT..clean.len() {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x10;
            // Reading a group removes its file: write it anew each time.
            std::fs::write(&file.path, &bytes).unwrap();
            let message = error_of(&file);
            assert!(
                message.contains("checksum does not match"),
                "byte {at}: {message}"
            );
        }
    }

    /// A frame whose header claims fewer rows than it holds leaves bytes undecoded: refused.
    #[test]
    fn rows_left_over_in_a_frame_fail() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = spill_of(dir.path(), &[vec![usage(0, 0, "a"), usage(0, 1, "b")]]);
        claim_rows(&file, 1);
        file.rows = 1;
        let message = error_of(&file);
        assert!(
            message.contains("rows do not decode to whole rows and ids"),
            "{message}"
        );
    }

    /// A status code no status has (a writer bug) is refused, first row or later.
    #[test]
    fn an_unknown_status_code_fails() {
        for bad_row in [0, 1] {
            let dir = tempfile::tempdir().unwrap();
            let (mut rows, ids) = compact(&[usage(0, 0, "a"), usage(0, 1, "b")]);
            rows[bad_row].status = 7;
            let file = spill_frames(dir.path(), Dataset::Usage, &[(rows, ids)]);
            let message = error_of(&file);
            let expected = match bad_row {
                0 => "first row cannot be decoded",
                _ => "rows do not decode to whole rows and ids",
            };
            assert!(message.contains(expected), "row {bad_row}: {message}");
        }
    }

    /// An account or sku code past the run's dictionaries (a writer bug) is refused when
    /// read back, not looked up later; the limit itself is a valid read.
    #[test]
    fn codes_past_the_dictionaries_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut rows, ids) = compact(&[usage(0, 0, "a")]);
        (rows[0].account, rows[0].sku) = (4, 2);
        let file = spill_frames(dir.path(), Dataset::Usage, &[(rows, ids)]);
        let copy = dir.path().join("copy.bin");
        let copied = |limits: CodeLimits| {
            std::fs::copy(&file.path, &copy).unwrap();
            let spilled = SpillFile {
                path: copy.clone(),
                rows: 1,
                bytes: file.bytes,
            };
            read_group::<Usage>(
                &spilled,
                Vec::new(),
                &Ids::default(),
                &limits,
                Vec::new(),
                &mut AlignedBuf::default(),
            )
            .map(|(rows, _)| rows.len())
        };
        let at_limit = CodeLimits {
            accounts: 5,
            skus: 3,
        };
        assert_eq!(copied(at_limit).unwrap(), 1);
        for limits in [
            CodeLimits {
                accounts: 4,
                ..at_limit
            },
            CodeLimits {
                skus: 2,
                ..at_limit
            },
        ] {
            let message = copied(limits).unwrap_err().to_string();
            assert!(
                message.contains("do not decode to whole rows"),
                "{limits:?}: {message}"
            );
        }
    }

    /// `bytes` (a damaged copy of `file`) with its first frame's checksum made to match
    /// again are refused as rows that do not decode: the checks past the checksum hold.
    fn assert_refused_resealed(file: &SpillFile, mut bytes: Vec<u8>) {
        reseal_first_frame(&mut bytes);
        // The frame may have grown or shrunk: the file is read at its new length.
        let file = SpillFile {
            path: file.path.clone(),
            rows: file.rows,
            bytes: bytes.len() as u64,
        };
        std::fs::write(&file.path, bytes).unwrap();
        let message = error_of(&file);
        assert!(
            message.contains("rows do not decode to whole rows and ids"),
            "{message}"
        );
    }

    /// A row whose id runs past its frame's ids is refused, not read.
    #[test]
    fn an_id_outside_the_frame_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = spill_of(dir.path(), &[vec![usage(0, 0, "a"), usage(0, 1, "b")]]);
        let mut bytes = std::fs::read(&file.path).unwrap();
        let rows_len = FrameHeader::read(&bytes).unwrap().rows_bytes as usize;
        // The ids: [1, 0, 'a', 1, 0, 'b'] (each a u16 LE length and its bytes); the second
        // now claims 1000 bytes.
        let second_len = FRAME_HEADER_BYTES + rows_len + 3;
        bytes[second_len..second_len + 2].copy_from_slice(&1000u16.to_le_bytes());
        assert_refused_resealed(&file, bytes);
    }

    /// Ids come back byte for byte, the longest an input may hold included; an id longer
    /// than that is refused, not read, even under a valid checksum.
    #[test]
    fn ids_come_back_and_one_longer_than_an_input_id_fails() {
        let dir = tempfile::tempdir().unwrap();
        let longest = "a".repeat(crate::dict::MAX_ID_BYTES);
        let events = ["evt-14a8e8b38896c4e3", longest.as_str()];
        let rows: Vec<UsageRow> = (0..2).map(|i| usage(0, i, events[i as usize])).collect();
        let file = spill_of(dir.path(), std::slice::from_ref(&rows));
        let clean = std::fs::read(&file.path).unwrap();
        let (back, ids) = read_back::<Usage>(&file).unwrap();
        let names: Vec<String> = back
            .iter()
            .map(|u| ids.id(u.id).unwrap().to_string())
            .collect();
        assert_eq!(names, events);

        // The second id one byte longer: its length, one more byte at the end of the ids
        // (the end of the file: one frame) and the frame's count of id bytes.
        let mut bytes = clean;
        let header = FrameHeader::read(&bytes).unwrap();
        let second = FRAME_HEADER_BYTES + header.rows_bytes as usize + 2 + events[0].len();
        let longer = (longest.len() + 1) as u16;
        bytes[second..second + 2].copy_from_slice(&longer.to_le_bytes());
        bytes.push(b'a');
        let header = FrameHeader {
            ids_bytes: header.ids_bytes + 1,
            ..header
        };
        bytes[..FRAME_HEADER_BYTES].copy_from_slice(&header.to_bytes());
        assert_refused_resealed(&file, bytes);
    }

    /// Every field comes back as written, nulls and extreme instants included (steps
    /// wrap), with the id hashes recomputed and the id offsets re-derived.
    #[test]
    fn rows_come_back_field_for_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut written = Vec::new();
        for (i, (occurred, ingested)) in [
            (1_700_000_000_000_000, Some(1_700_000_000_500_000)),
            (i64::MIN + 1, None),
            (i64::MAX - 1, Some(i64::MIN + 1)),
            (0, Some(0)),
        ]
        .into_iter()
        .enumerate()
        {
            written.push(UsageRow {
                occurred_at: occurred,
                ingested_at: ingested,
                ..usage(2, 10 + i as u64 * 7, &format!("evt-{i}"))
            });
        }
        let (mut rows, ids) = compact(&written);
        rows[2].flags = Usage::CONFLICTING;
        let file = spill_frames(dir.path(), Dataset::Usage, &[(rows.clone(), ids)]);
        let (back, back_ids) = read_back::<Usage>(&file).unwrap();
        assert_eq!(back.len(), rows.len());
        for (i, (got, want)) in back.iter().zip(&rows).enumerate() {
            // Chunk 0 in both: only the frame's chunk number could differ.
            assert_eq!(got, want, "row {i}");
            assert_eq!(back_ids.str(got.id).unwrap(), format!("evt-{i}"));
        }
    }

    #[test]
    fn a_truncated_frame_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = spill_of(dir.path(), &[vec![usage(0, 0, "a")]]);
        let bytes = std::fs::read(&file.path).unwrap();
        std::fs::write(&file.path, &bytes[..bytes.len() - 3]).unwrap();
        file.bytes -= 3;
        let message = error_of(&file);
        assert!(message.contains("truncated frame"), "{message}");
    }

    /// A spill file shorter than the bytes written to it fails the read, naming both.
    #[test]
    fn a_file_shorter_than_written_fails() {
        let dir = tempfile::tempdir().unwrap();
        let file = spill_of(dir.path(), &[vec![usage(0, 0, "a")]]);
        let bytes = std::fs::read(&file.path).unwrap();
        assert_eq!(bytes.len() as u64, file.bytes);
        std::fs::write(&file.path, &bytes[..bytes.len() - 3]).unwrap();
        let message = error_of(&file);
        let expected = format!(
            "invariant broken: scratch file {} cannot be read back: {} bytes where {} were written",
            file.path.display(),
            file.bytes - 3,
            file.bytes
        );
        assert_eq!(message, expected);
    }

    /// Ledger rows keep a missing event id missing when their ids move chunks.
    #[test]
    fn ledger_rows_come_back_with_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let dicts = DictBuilder::new(std::iter::empty::<&str>());
        let mut frames = Vec::new();
        for (row, event) in [(0, Some("evt-a")), (1, None)] {
            let mut ids = IdChunk::default();
            let debit = DebitRow {
                kind: EntryKind::Refund,
                credits: crate::amount::Milli(-7),
                recorded_at: -5 + row as i64,
                ..DebitRow::sample(row, event)
            };
            frames.push((vec![Debit::from_row(&debit, &dicts, &mut ids, 0)], ids));
        }
        let written: Vec<Debit> = frames.iter().map(|(rows, _)| rows[0]).collect();
        let file = spill_frames(dir.path(), Dataset::Debits, &frames);
        let (rows, ids) = read_back::<Debit>(&file).unwrap();
        // Each row was its own frame (chunk 0 when written): only the chunk differs.
        assert_eq!(rows[0], written[0]);
        assert_eq!(
            rows[1],
            Debit {
                entry_id: written[1].entry_id.in_chunk(1),
                ..written[1]
            }
        );
        assert_eq!(ids.str(rows[0].entry_id).unwrap(), "entry-0");
        assert_eq!(ids.str(rows[0].event_id).unwrap(), "evt-a");
        assert_eq!(ids.str(rows[1].entry_id).unwrap(), "entry-1");
        assert!(!rows[1].has_event());
    }

    /// A usage row with every field drawn freely (the instants anywhere in `i64`, a null
    /// `ingested_at` as often as not), its id pushed to `ids`.
    fn any_usage(
        (at, occurred, ingested, quantity, account, sku, status, flags, id): (
            u64,
            i64,
            Option<i64>,
            i64,
            u32,
            u32,
            u8,
            u8,
            String,
        ),
        ids: &mut IdChunk,
    ) -> Usage {
        Usage {
            at: At(at),
            id_hash: crate::validate::id_hash(&id),
            id: crate::dict::IdRef::new(0, ids.push(&id)),
            occurred_at: occurred,
            ingested_at: ingested.unwrap_or(NO_INSTANT),
            quantity,
            account,
            sku,
            status,
            flags,
            _pad: [0; 6],
        }
    }

    /// A ledger row drawn freely, with or without an event id.
    fn any_debit(
        (at, recorded, credits, account, kind, flags, entry, event): (
            u64,
            i64,
            i64,
            u32,
            u8,
            u8,
            String,
            Option<String>,
        ),
        ids: &mut IdChunk,
    ) -> Debit {
        Debit {
            at: At(at),
            entry_hash: crate::validate::id_hash(&entry),
            event_hash: event.as_deref().map_or(0, crate::validate::id_hash),
            entry_id: crate::dict::IdRef::new(0, ids.push(&entry)),
            event_id: match &event {
                Some(e) => crate::dict::IdRef::new(0, ids.push(e)),
                None => crate::dict::IdRef::NONE,
            },
            credits,
            recorded_at: recorded,
            account,
            kind,
            flags,
            _pad: [0; 2],
        }
    }

    /// Write `frames` (each row's ids in chunk 0 of its frame) to one spill file and read
    /// it back: the rows, their ids as strings (`None` for a missing event id).
    fn round_trip<R: CompactRow>(
        dataset: Dataset,
        frames: &[(Vec<R>, IdChunk)],
        ids_of: impl Fn(&R, &Ids) -> Vec<Option<String>>,
    ) -> (Vec<R>, Vec<Vec<Option<String>>>) {
        let dir = tempfile::tempdir().unwrap();
        let file = spill_frames(dir.path(), dataset, frames);
        let (rows, ids) = read_back::<R>(&file).unwrap();
        let names = rows.iter().map(|r| ids_of(r, &ids)).collect();
        (rows, names)
    }

    /// A row as compared after a round trip: its id references zeroed (their chunk is the
    /// frame's number once read back), its ids compared as strings beside it.
    fn without_refs_usage(r: &Usage) -> Usage {
        Usage {
            id: crate::dict::IdRef::new(0, 0),
            ..*r
        }
    }

    fn without_refs_debit(r: &Debit) -> Debit {
        Debit {
            entry_id: crate::dict::IdRef::new(0, 0),
            event_id: match r.has_event() {
                true => crate::dict::IdRef::new(0, 0),
                false => crate::dict::IdRef::NONE,
            },
            ..*r
        }
    }

    fn id_text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex("[a-z0-9-]{1,30}|é[a-z]{0,3}").unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Every field of every usage row comes back as written, whatever the values
        /// (steps wrap around `i64`; rows need not be in order within a frame).
        #[test]
        fn usage_rows_come_back_as_written(
            frames in proptest::collection::vec(
                proptest::collection::vec(
                    (
                        proptest::prelude::any::<u64>(),
                        proptest::prelude::any::<i64>(),
                        proptest::option::of(proptest::prelude::any::<i64>()),
                        proptest::prelude::any::<i64>(),
                        proptest::prelude::any::<u32>(),
                        proptest::prelude::any::<u32>(),
                        0u8..3,
                        0u8..4,
                        id_text(),
                    ),
                    1..20,
                ),
                0..4,
            ),
        ) {
            let mut frames = frames;
            in_row_order(&mut frames, |f| &mut f.0);
            let written: Vec<(Vec<Usage>, IdChunk)> = frames
                .into_iter()
                .map(|fields| {
                    let mut ids = IdChunk::default();
                    let rows = fields.into_iter().map(|f| any_usage(f, &mut ids)).collect();
                    (rows, ids)
                })
                .collect();
            let (back, names) = round_trip(Dataset::Usage, &written, |r: &Usage, ids| {
                vec![Some(ids.str(r.id).unwrap().to_string())]
            });
            // Frames come back ordered by their first row's `at` (distinct in real files:
            // frames hold disjoint rows).
            let mut expected: Vec<(At, &(Vec<Usage>, IdChunk))> =
                written.iter().map(|f| (f.0[0].at, f)).collect();
            expected.sort_by_key(|&(at, _)| at);
            proptest::prop_assume!(expected.windows(2).all(|w| w[0].0 != w[1].0));
            let mut want_rows = Vec::new();
            let mut want_names = Vec::new();
            for (_, (rows, ids)) in expected {
                for r in rows {
                    want_rows.push(without_refs_usage(r));
                    let id = ids_of_chunk(ids).str(r.id).unwrap().to_string();
                    want_names.push(vec![Some(id)]);
                }
            }
            let got: Vec<Usage> = back.iter().map(without_refs_usage).collect();
            proptest::prop_assert_eq!(got, want_rows);
            proptest::prop_assert_eq!(names, want_names);
        }

        /// The same for ledger rows, with and without event ids.
        #[test]
        fn ledger_rows_come_back_as_written(
            fields in proptest::collection::vec(
                (
                    proptest::prelude::any::<u64>(),
                    proptest::prelude::any::<i64>(),
                    proptest::prelude::any::<i64>(),
                    proptest::prelude::any::<u32>(),
                    0u8..3,
                    0u8..2,
                    id_text(),
                    proptest::option::of(id_text()),
                ),
                1..40,
            ),
        ) {
            let mut frames = vec![fields];
            in_row_order(&mut frames, |f| &mut f.0);
            let fields = frames.pop().unwrap();
            let mut ids = IdChunk::default();
            let rows: Vec<Debit> = fields.into_iter().map(|f| any_debit(f, &mut ids)).collect();
            let chunk = ids_of_chunk(&ids);
            let want_names: Vec<Vec<Option<String>>> = rows
                .iter()
                .map(|r| debit_names(r, &chunk))
                .collect();
            let want_rows: Vec<Debit> = rows.iter().map(without_refs_debit).collect();
            let (back, names) = round_trip(Dataset::Debits, &[(rows, ids)], debit_names);
            let got: Vec<Debit> = back.iter().map(without_refs_debit).collect();
            proptest::prop_assert_eq!(got, want_rows);
            proptest::prop_assert_eq!(names, want_names);
        }
    }

    /// Make generated frames what a spill file holds (the read-back refuses anything else):
    /// rows of a frame in strictly increasing `at` (the place, field `at` of each row's
    /// fields) and frames of disjoint places, frame k's in the k-th 2^56 of the places.
    fn in_row_order<T>(frames: &mut [Vec<T>], at: impl Fn(&mut T) -> &mut u64) {
        for (k, rows) in frames.iter_mut().enumerate() {
            let mut keyed: Vec<(u64, T)> = rows
                .drain(..)
                .map(|mut row| {
                    let place = at(&mut row);
                    *place = ((k as u64) << 56) | (*place >> 8);
                    (*place, row)
                })
                .collect();
            keyed.sort_by_key(|(place, _)| *place);
            keyed.dedup_by_key(|(place, _)| *place);
            rows.extend(keyed.into_iter().map(|(_, row)| row));
        }
    }

    /// One frame's id chunk as the `Ids` of its rows (chunk 0).
    fn ids_of_chunk(chunk: &IdChunk) -> Ids {
        let mut ids = Ids::default();
        ids.push(IdChunk {
            bytes: chunk.bytes.clone(),
        });
        ids
    }

    fn debit_names(r: &Debit, ids: &Ids) -> Vec<Option<String>> {
        vec![
            Some(ids.str(r.entry_id).unwrap().to_string()),
            r.has_event()
                .then(|| ids.str(r.event_id).unwrap().to_string()),
        ]
    }
}
