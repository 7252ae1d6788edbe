//! tally: batch reconciliation, period close and invoicing for AI credit billing.
//!
//! The pipeline, one module per stage, data flowing one way:
//! `census` (the data root's files, listed once) → `load` (Parquet → typed rows | rejects)
//! → `validate` (plans, overlaps, repeated ids, dedup) → `window` (place events and
//! entries) → per account, in parallel by bucket, `engine` running `price` → `consume` →
//! `reconcile` → `close` → `collect` (every shard's results in output order, the run's
//! invariants checked) → `write` (staging folder, then an atomic rename); `pipeline` runs
//! the stages from load to close, one group of accounts after another. The binary in
//! `main.rs` is a thin clap layer over [`run_job`].

pub mod amount;
pub mod breakdown;
pub mod census;
pub mod close;
pub mod collect;
pub mod consume;
pub mod dict;
pub mod direct;
pub mod engine;
pub mod error;
pub mod explain;
pub mod export;
pub mod generate;
pub mod history;
pub mod html;
pub mod interrupt;
pub mod job;
pub mod load;
pub mod memory;
pub mod model;
pub mod partition;
pub mod pipeline;
pub mod positional;
pub mod price;
pub mod pricebook;
pub mod progress;
pub mod reconcile;
pub mod report;
pub mod route;
pub mod rows;
pub mod run;
pub mod runs;
pub mod shard;
pub mod spill;
pub mod summary;
pub mod time;
pub mod validate;
pub mod verify;
pub mod window;
pub mod write;

pub use error::{Result, TallyError};
pub use progress::Progress;

use amount::Milli;
use model::{Dataset, Mode};
use rayon::prelude::*;
use report::{FileEntry, Manifest, ManifestSettings, Summary};
use run::{RunOutput, RunSettings};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Thresholds above which a finished run exits 1 so that a scheduler alerts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Alert {
    /// More discrepancy rows than this alerts.
    pub max_discrepancies: Option<u64>,
    /// A Σ |delta| over all discrepancy rows above this alerts.
    pub max_abs_delta_credits: Option<Milli>,
    /// Fewer events in the window than this alerts (a stale or empty export).
    pub min_events_in_window: Option<u64>,
    /// More rejected rows (all datasets) than this alerts.
    pub max_rejected_rows: Option<u64>,
    /// More rejected allocation rows than this alerts: each is an account-period the run
    /// cannot bill (no balances, no invoice at close, its usage rejected `no_allocation`),
    /// which a threshold on all rejected rows sized for noisy usage exports lets through.
    pub max_rejected_allocations: Option<u64>,
    /// (close) Fewer invoices than this alerts: a close that closed nothing (an as-of before
    /// every period's end, a data root without the month) otherwise exits 0.
    pub min_invoices: Option<u64>,
}

/// The figures of a run that alert thresholds look at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertFigures {
    pub discrepancies: u64,
    pub abs_delta: Milli,
    pub events_in_window: u64,
    pub rejected_rows: u64,
    pub rejected_allocations: u64,
    /// 0 for a reconcile.
    pub invoices: u64,
}

impl AlertFigures {
    fn of(output: &RunOutput) -> AlertFigures {
        AlertFigures {
            discrepancies: output.discrepancies.len() as u64,
            abs_delta: report::abs_delta(&output.discrepancies),
            events_in_window: output.usage.events_in_window,
            rejected_rows: output.rejects.len() as u64,
            rejected_allocations: rejected_allocations_covered(output),
            invoices: output.invoices.len() as u64,
        }
    }

    /// Read back from an earlier run's `summary.json` (for a no-op close).
    fn from_summary(path: &Path) -> Result<AlertFigures> {
        let text = write::read_regular_to_string(path).map_err(|e| TallyError::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            TallyError::input(
                path.display().to_string(),
                format!("unreadable summary: {e}"),
            )
        })?;
        // Σ |delta| may pass 10^15 credits (each delta is within it, their sum saturates
        // at i64's thousandths), past what `from_decimal` takes as an amount: it read as 0,
        // and the no-op rerun of a close that alerted on it exited 0. Past the range it is
        // past every threshold (`max_abs_delta_credits` is below 10^15).
        let abs = v["discrepancies"]["abs_delta_credits"]
            .as_str()
            .and_then(|t| rust_decimal::Decimal::from_str_exact(t).ok())
            .map(|d| match Milli::from_decimal(d) {
                Some(abs) => abs,
                None if d.is_sign_positive() => Milli(i64::MAX),
                None => Milli::default(),
            })
            .unwrap_or_default();
        let rejected = v["datasets"]
            .as_object()
            .map(|d| {
                // Saturating: the file is read back, not trusted.
                d.values()
                    .map(|c| c["rejected"].as_u64().unwrap_or(0))
                    .fold(0, u64::saturating_add)
            })
            .unwrap_or(0);
        Ok(AlertFigures {
            discrepancies: v["discrepancies"]["total"].as_u64().unwrap_or(0),
            abs_delta: abs,
            events_in_window: v["usage"]["events_in_window"].as_u64().unwrap_or(0),
            rejected_rows: rejected,
            rejected_allocations: v["allocations_rejected_covered"].as_u64().unwrap_or(0),
            invoices: v["close"]["invoices"].as_u64().unwrap_or(0),
        })
    }
}

/// The rejected allocation rows of account-periods the run covers (what `[alert]
/// max_rejected_allocations` counts): all of them but those of periods it does not cover.
pub(crate) fn rejected_allocations_covered(output: &RunOutput) -> u64 {
    let all = output.counts[Dataset::Allocations as usize].rejected;
    all - output.rejected_allocations_not_covered.len() as u64
}

/// What to run.
#[derive(Clone, Debug)]
pub struct JobRequest {
    pub data: PathBuf,
    pub out: PathBuf,
    pub mode: Mode,
    pub as_of: time::Micros,
    pub settle_micros: i64,
    pub force: bool,
    pub buckets: u32,
    /// Bucket groups processed one after another (None: sized from the memory budget).
    pub groups: Option<u32>,
    pub memory_budget_bytes: u64,
    /// `(I, N)`: compute only shard I of N and write it under `out.shards/shard=I/`.
    pub shard: Option<(u32, u32)>,
    pub alert: Alert,
    pub progress: Progress,
    /// A folder of earlier close outputs (`--history`): their periods are not closed again,
    /// and their unbilled events are `late_event`s billed on the next invoice.
    pub history: Option<PathBuf>,
}

/// How a job ended (errors aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Outputs published. `alert` is set when a threshold was crossed (exit 1).
    Published {
        discrepancies: u64,
        rejects: u64,
        alert: Option<String>,
        /// The sha256 of the `manifest.json` published, which the run logs: kept apart
        /// from the folder (a log store), it lets `tally verify --manifest-sha256` tell a
        /// manifest edited since (with the outputs it lists) from the one written.
        manifest_sha256: write::Sha256Hex,
    },
    /// `close` over a period already closed with the same inputs: nothing was written.
    /// The alert thresholds are checked again against the published summary.
    AlreadyClosed {
        alert: Option<String>,
        /// The sha256 of the close's `manifest.json` as it is (see `Published`).
        manifest_sha256: write::Sha256Hex,
    },
    /// One shard's part written (`tally merge` publishes the output). `forced`: the shard
    /// ran with `--force` (a close), so the merge needs it too.
    ShardWritten {
        folder: PathBuf,
        accounts: u64,
        forced: bool,
    },
}

/// Decode the needed columns of every input file and count the rows (the benchmark's bare
/// scan baseline: the same reader as a run, without validation or reconciliation).
pub fn scan(data: &Path) -> Result<u64> {
    let mut rows = 0;
    for d in Dataset::ALL {
        let files = load::find_files(data, d.name())?.unwrap_or_default();
        rows += load::scan_dataset(&files, load::contract_columns(d))?;
    }
    Ok(rows)
}

/// Fingerprint every input: the price book and every dataset file of `census`, with
/// sha256 and rows (files in parallel if `parallel`). A small file's checksum and every
/// file's rows come from the census; larger files are read and hashed here.
pub(crate) fn fingerprint_files(
    data: &Path,
    census: &census::Census,
    parallel: bool,
) -> Result<Vec<FileEntry>> {
    let pricebook = data.join("pricebook.toml");
    let pricebook_sha256 = match &census.pricebook {
        // The bytes the run parsed, not the file as it is now.
        Some(reading) => Ok(reading.sha256.clone()),
        None => write::sha256_file(&pricebook),
    };
    let pricebook_entry = match pricebook_sha256 {
        // The price book's own words (the load beside this reports the same).
        Err(TallyError::Io { source, .. }) => {
            return Err(pricebook::unreadable(
                &pricebook.display().to_string(),
                &source,
            ));
        }
        sha256 => FileEntry {
            path: "pricebook.toml".to_string(),
            rows: None,
            sha256: sha256?,
        },
    };
    let entry = |listed: &census::CensusFile| {
        let sha256 = match &listed.small_sha256 {
            Some(sha256) => hex::encode(sha256),
            None => {
                // The manifest's sha256 must be of the file the run read: the census's.
                let (sha256, bytes, modified) = write::sha256_file_as_read(&listed.file.abs_path)?;
                load::check_unchanged(&listed.file, bytes, None, modified)?;
                sha256
            }
        };
        Ok(FileEntry {
            path: listed.file.rel_path.clone(),
            rows: listed.rows(),
            sha256,
        })
    };
    let files: Vec<&census::CensusFile> = census.all().collect();
    let entries: Result<Vec<FileEntry>> = match parallel {
        true => files.into_par_iter().map(entry).collect(),
        false => files.into_iter().map(entry).collect(),
    };
    Ok(std::iter::once(pricebook_entry).chain(entries?).collect())
}

/// What changed between the inputs of an earlier run and now, or `None` when identical.
fn describe_changes(old: &Manifest, req: &JobRequest, inputs: &[FileEntry]) -> Option<String> {
    let mut changes = Vec::new();
    if old.command != req.mode.name() {
        changes.push(format!("command was {}", old.command));
    }
    let as_of = time::format_instant(req.as_of);
    if old.as_of != as_of {
        changes.push(format!("as-of was {}", old.as_of));
    }
    if old.settings.settle_seconds != req.settle_micros / 1_000_000 {
        changes.push(format!("settle was {}s", old.settings.settle_seconds));
    }
    // Earlier closes first: a later close among them decides the refusal's advice, and it
    // must not be among the changes only counted.
    let (history, files): (Vec<InputChange>, Vec<InputChange>) = input_changes(&old.inputs, inputs)
        .into_iter()
        .partition(|change| change.path().starts_with("history/"));
    changes.extend(history.iter().chain(&files).map(ToString::to_string));
    (!changes.is_empty()).then(|| listed_briefly(&changes))
}

/// How many changes a one-line refusal names before it counts the rest.
const CHANGES_NAMED: usize = 5;

/// `changes` joined with ", ", the first [`CHANGES_NAMED`] named and the rest counted (a
/// month re-exported whole changes every file: its refusal stays one readable line;
/// `tally verify` lists every file).
pub(crate) fn listed_briefly(changes: &[String]) -> String {
    let mut text = changes[..changes.len().min(CHANGES_NAMED)].join(", ");
    if changes.len() > CHANGES_NAMED {
        text += &format!(" and {} more", changes.len() - CHANGES_NAMED);
    }
    text
}

/// How one input file differs between an earlier run's manifest and now (by path; an
/// input is the same when its sha256 is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InputChange<'a> {
    Changed(&'a str),
    Gone(&'a str),
    New(&'a str),
}

impl InputChange<'_> {
    pub(crate) fn path(&self) -> &str {
        match *self {
            InputChange::Changed(path) | InputChange::Gone(path) | InputChange::New(path) => path,
        }
    }
}

impl std::fmt::Display for InputChange<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputChange::Changed(path) => write!(f, "{path} changed"),
            InputChange::Gone(path) => write!(f, "{path} is gone"),
            InputChange::New(path) => write!(f, "{path} is new"),
        }
    }
}

/// How the input files `new` differ from `old`: new and changed in `new`'s order, then gone
/// in `old`'s. By path through maps: a month of 80,000 small files each way was 6.4
/// billion path comparisons with a search of the other list per file.
pub(crate) fn input_changes<'a>(
    old: &'a [FileEntry],
    new: &'a [FileEntry],
) -> Vec<InputChange<'a>> {
    let (old_sha256, new_sha256) = (sha256_by_path(old), sha256_by_path(new));
    let mut changes = Vec::new();
    for f in new {
        match old_sha256.get(f.path.as_str()) {
            None => changes.push(InputChange::New(&f.path)),
            Some(&sha256) if sha256 != f.sha256 => changes.push(InputChange::Changed(&f.path)),
            Some(_) => {}
        }
    }
    for o in old {
        if !new_sha256.contains_key(o.path.as_str()) {
            changes.push(InputChange::Gone(&o.path));
        }
    }
    changes
}

/// Each file's sha256 by its path.
fn sha256_by_path(files: &[FileEntry]) -> HashMap<&str, &str> {
    (files.iter())
        .map(|f| (f.path.as_str(), f.sha256.as_str()))
        .collect()
}

/// Holds an exclusive lock beside the output folder for the whole run, so that two runs
/// on the same output path never publish over each other.
pub struct OutputLock {
    /// `None`: on a read-only file system, where no run can write (see `open_lock_file`).
    _file: Option<std::fs::File>,
}

/// Open (creating it if need be) the lock file at `path`. A lock file that is there but
/// cannot be opened for writing (made by a run as another user, or on a folder mounted
/// read-only) is opened for reading: a lock needs no more, and a close's no-op rerun on a
/// read-only folder then finds its answer instead of failing on the lock.
///
/// `None` when there is no lock file and the folder is on a read-only file system: no run
/// can write there, so there is nothing to lock out (a close's no-op rerun, or a close
/// reading a history folder mounted read-only, goes on; a run that would publish there
/// fails when it writes, as it always did).
///
/// Opened without waiting (`O_NONBLOCK`: a FIFO put at the path would otherwise block the
/// open until a reader came, forever), and refused (exit 3) unless a regular file.
fn open_lock_file(path: &Path) -> Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = || {
        TallyError::Refused(format!(
            "{} is not a regular file (a folder, a FIFO or a device), where tally keeps its \
             lock file: remove it and rerun",
            path.display()
        ))
    };
    // Looked at before it is opened too: opening a socket or a terminal fails (or acts on
    // it) before its type could be seen.
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(not_regular());
    }
    let open = |write: bool| {
        std::fs::OpenOptions::new()
            .create(write)
            .truncate(false)
            .write(write)
            .read(!write)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
    };
    let file = match open(true) {
        Ok(file) => file,
        Err(e) => match open(false) {
            Ok(file) => file,
            Err(_) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => return Ok(None),
            Err(_) => return Err(TallyError::write(path, e)),
        },
    };
    match file
        .metadata()
        .map_err(|e| TallyError::write(path, e))?
        .is_file()
    {
        true => Ok(Some(file)),
        false => Err(not_regular()),
    }
}

pub fn lock_output(out: &Path) -> Result<OutputLock> {
    refuse_an_out_under_a_file(out)?;
    let parent = write::folder_of(out);
    write::create_folder_all(&parent)?;
    let lock = take_lock(&lock_file_of(out), false, || {
        format!(
            "another tally run is writing {} right now; wait for it to finish",
            out.display()
        )
    })?;
    if lock._file.is_some() {
        write::restore_stranded_output(out)?;
    }
    Ok(lock)
}

/// The lock file of the output folder `out`: `.NAME.tally-lock` beside it.
fn lock_file_of(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    write::folder_of(out).join(format!(".{name}.tally-lock"))
}

/// [`check_replaceable`] before the output's lock, so that a refused run makes no lock
/// file beside a file or a folder tally did not write. A refusal is confirmed under the
/// lock when a lock file is there already (tally has run there): a run publishing `out`
/// right now shows it for a moment without its manifest on file systems that swap folders
/// by two renames, which is a busy output (refused as such), not a foreign one.
pub(crate) fn check_replaceable_before_lock(out: &Path) -> Result<()> {
    let Err(refused) = check_replaceable(out) else {
        return Ok(());
    };
    if std::fs::symlink_metadata(lock_file_of(out)).is_err() {
        return Err(refused);
    }
    let _lock = lock_output(out)?;
    check_replaceable(out)
}

/// Refuse an `--out` under a file (a path mistaken for a folder) as the setting it is
/// (exit 2, naming the file), rather than failing to make its lock with "Not a directory"
/// (exit 4). Checked at the lock, after a close's history checks: a `--history` that is a
/// file, with its `--out` inside it, is named as the history.
fn refuse_an_out_under_a_file(out: &Path) -> Result<()> {
    let file = (out.ancestors().skip(1))
        .filter(|a| !a.as_os_str().is_empty())
        .find(|a| std::fs::metadata(a).is_ok_and(|m| !m.is_dir()));
    match file {
        None => Ok(()),
        Some(file) => Err(TallyError::config(
            out.display().to_string(),
            format!(
                "{} is a file, so the output folder cannot be made under it: choose an \
                 --out (or `out` in the job file) whose folders are folders",
                file.display()
            ),
        )),
    }
}

/// Lock the file at `path` (created if need be), `shared` or exclusive, without waiting:
/// held by another run, refused with `busy`'s words and the processes holding it (exit 3).
fn take_lock(path: &Path, shared: bool, busy: impl FnOnce() -> String) -> Result<OutputLock> {
    let Some(file) = open_lock_file(path)? else {
        return Ok(OutputLock { _file: None });
    };
    let locked = match shared {
        true => file.try_lock_shared(),
        false => file.try_lock(),
    };
    match locked {
        Ok(()) => Ok(OutputLock { _file: Some(file) }),
        Err(std::fs::TryLockError::WouldBlock) => {
            let holders = match lock_holders(&file).as_slice() {
                [] => String::new(),
                [one] => format!(" (held by pid {one})"),
                many => format!(
                    " (held by pids {})",
                    many.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            Err(TallyError::Refused(format!("{}{holders}", busy())))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(TallyError::write(path, e)),
    }
}

/// The processes holding a lock on `file`, as `/proc/locks` lists them (by device and
/// inode), in order and once each: the on-call engineer's next question after "another
/// run holds the lock". Empty where it cannot tell (no /proc, or a holder in another pid
/// namespace, listed as pid 0 or not at all); the lock may also have been let go since.
fn lock_holders(file: &std::fs::File) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Ok(locks)) = (file.metadata(), std::fs::read_to_string("/proc/locks")) else {
        return Vec::new();
    };
    // The kernel lists a device as its major and minor number in hex (`fe:00`).
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let key = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let mut pids: Vec<u32> = (locks.lines())
        .filter_map(|line| {
            // "1: FLOCK  ADVISORY  WRITE 1954 fe:00:10117129 0 EOF"; a waiter's line has
            // "->" after the number and holds nothing.
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, kind, _, _, pid, at, ..] if *kind != "->" && *at == key => pid.parse().ok(),
                _ => None,
            }
        })
        .filter(|&pid| pid != 0 && pid != std::process::id())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The file name of a history folder's lock ([`lock_history`]).
pub(crate) const HISTORY_LOCK: &str = ".tally-history.lock";

/// The lock of a history folder, `DIR/.tally-history.lock` (hidden: a history never reads
/// it as a close; not ending in `.tally-lock`, so that no output folder's lock, `.NAME.tally-lock`,
/// can be the same file). A close reads the closes before it, so a close that starts while another
/// of the same history is running would not see that one's invoices and would close its
/// periods again (a backfill started while the timer's close runs): closes under one
/// history folder run one at a time. The shards of a sharded close run together, so they
/// share it (`shared`), and keep closes on one machine out while they run.
pub(crate) fn lock_history(dir: &Path, shared: bool) -> Result<OutputLock> {
    write::create_folder_all(dir)?;
    take_lock(&dir.join(HISTORY_LOCK), shared, || {
        format!(
            "another tally close is running under the history folder {} right now (closes of \
             one history run one at a time, each reading the closes before it); wait for it \
             to finish",
            dir.display()
        )
    })
}

/// What every run holds before it computes: the output lock, the history folder's lock
/// and earlier closes.
pub(crate) struct Prepared {
    pub _lock: OutputLock,
    pub _history_lock: Option<OutputLock>,
    pub history: history::History,
    /// The run's one reading of the price book, taken before the lock.
    pub pricebook: pricebook::PriceBookReading,
}

/// Refuse an `--out` no run could publish by its name, before the run takes a lock or
/// computes (exit 2): one that names no folder of its own (`.`, `..`, `/`: its lock and
/// staging folder would be named after nothing, and `.` was locked inside the working
/// folder, a published output among them, before being refused), and a name that leaves no
/// room for the names tally writes beside it ([`write::MAX_OUT_NAME_BYTES`]): past it, the
/// run failed only when it came to write, naming a staging folder the user never chose.
pub fn refuse_an_unusable_out(out: &Path) -> Result<()> {
    let Some(name) = out.file_name() else {
        return Err(TallyError::config(
            out.display().to_string(),
            "the output path names no folder of its own (it is ., .. or /, or ends in ..): \
             give the output folder by its name, such as --out \"$PWD\" for the working \
             folder (or `out` in the job file)",
        ));
    };
    // As the names beside it are made: a run of bytes that are not UTF-8 takes 3 there
    // (one U+FFFD).
    let written = name.to_string_lossy();
    let (bytes, most) = (written.len(), write::MAX_OUT_NAME_BYTES);
    if bytes <= most {
        return Ok(());
    }
    let as_written = match written.len() == name.len() {
        true => "",
        false => " as tally writes it (each run of bytes that are not UTF-8 as U+FFFD)",
    };
    Err(TallyError::config(
        out.display().to_string(),
        format!(
            "the output folder's name is {bytes} bytes{as_written}, longer than the {most} an output's name \
             may have (tally writes `.NAME.tally-staging-PID-old` beside it, and a file name \
             holds 255 bytes): choose a shorter --out (or `out` in the job file)"
        ),
    ))
}

/// `path` made absolute against the working folder, `.` and `..` folded lexically
/// (without following links: the path need not exist yet).
pub(crate) fn normalised(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Where the kernel puts an output folder `out`: its folder [`resolved`] (a `..` after a
/// link goes up from where the link points, as every write of the run goes), its own name
/// as written. A close's checks of its place in its history compare this, not the lexical
/// [`normalised`] path, which a link followed by `..` would put elsewhere.
pub(crate) fn placed(out: &Path) -> PathBuf {
    match (out.parent(), out.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = match parent.as_os_str().is_empty() {
                true => Path::new("."),
                false => parent,
            };
            resolved(parent).join(name)
        }
        // Ends in `..` (or is `/`): the folder it names, resolved.
        _ => resolved(out),
    }
}

/// `path` with its links resolved as the kernel resolves them, as far as it exists: its
/// longest existing prefix made canonical (which follows a link before a `..` after it),
/// the parts not there yet (a run's output before its first publish) folded lexically.
pub(crate) fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let parts: Vec<_> = absolute.components().collect();
    for kept in (1..=parts.len()).rev() {
        let prefix: PathBuf = parts[..kept].iter().collect();
        if let Ok(real) = prefix.canonicalize() {
            let rest: PathBuf = parts[kept..].iter().collect();
            return normalised(&real.join(rest));
        }
    }
    normalised(path)
}

/// Refuse an output folder inside one of the data root's dataset folders, where the next
/// run would read this run's outputs as input (unless a `.`/`_` folder on the way hides it).
/// Compared as written and with links resolved: an output reached through a link to a
/// dataset folder (or a data root given through a link) lands inside it all the same.
pub(crate) fn refuse_out_inside_a_dataset(data: &Path, out: &Path) -> Result<()> {
    let outs = [normalised(out), resolved(out)];
    let hidden = |inside: &Path| {
        (inside.components()).any(|c| load::is_hidden(&c.as_os_str().to_string_lossy()))
    };
    for dataset in ["usage", "allocations", "grants", "debits"] {
        let folder = data.join(dataset);
        let folders = [normalised(&folder), resolved(&folder)];
        // Inside and not hidden in any of the comparisons: a hidden name as written may
        // be a link to a folder that is not (`usage/.hide` -> `usage/real`).
        let read_as_input = (outs.iter())
            .flat_map(|out| folders.iter().map(move |folder| out.strip_prefix(folder)))
            .filter_map(std::result::Result::ok)
            .any(|inside| !hidden(inside));
        if read_as_input {
            return Err(TallyError::config(
                out.display().to_string(),
                format!(
                    "the output folder is inside the data root's {dataset}/ folder, so the next run would read this run's outputs as {dataset} input: write outputs outside the dataset folders"
                ),
            ));
        }
    }
    Ok(())
}

/// Check the data root, lock `out`, refuse a foreign folder and read the history.
pub(crate) fn prepare(req: &JobRequest, out: &Path) -> Result<Prepared> {
    census::check_data_root(&req.data)?;
    // The price book read before the output's lock makes any folder (a bad one is the most
    // common refusal of a run), and only then: the census carries this reading to the load
    // and the manifest.
    let book = req.data.join("pricebook.toml");
    let pricebook = pricebook::PriceBook::read(&book, &book.display().to_string())?;
    refuse_out_inside_a_dataset(&req.data, &req.out)?;
    refuse_an_unusable_out(&req.out)?;
    // The history's checks come before the output's lock, which makes the output's parent
    // folder (and a shard's `OUT.shards/`): a refused run leaves nothing behind.
    let (history_lock, closes) = match &req.history {
        Some(dir) => {
            history::check_layout(dir, &req.out)?;
            let history_lock = lock_history(dir, req.shard.is_some())?;
            history::refuse_a_stranded_close(dir, &req.out)?;
            let closes = history::closes_under(dir, Some(&req.out))?;
            history::refuse_a_second_close(&closes, dir, &req.out, req.as_of)?;
            (Some(history_lock), closes)
        }
        None => {
            if req.mode == Mode::Close {
                history::warn_of_closes_not_read(&req.out, req.as_of);
            }
            (None, Vec::new())
        }
    };
    // Checked before the lock too, so a refused run leaves no lock file beside a file or
    // a foreign folder; again under the lock, where no other run can change it.
    check_replaceable_before_lock(out)?;
    let lock = lock_output(out)?;
    check_replaceable(out)?;
    refuse_reconcile_over_close(req)?;
    let history = history::load_closes(closes, req.as_of)?;
    Ok(Prepared {
        _lock: lock,
        _history_lock: history_lock,
        history,
        pricebook,
    })
}

/// The fingerprint of a run's inputs: every input file (`parallel`: files in parallel),
/// and the earlier closes it reads, which change what a close covers (by their manifest,
/// which holds the checksums of everything they wrote).
pub(crate) fn fingerprint(
    req: &JobRequest,
    history: &history::History,
    census: &census::Census,
    parallel: bool,
) -> Result<Vec<FileEntry>> {
    let started = std::time::Instant::now();
    let mut inputs = fingerprint_files(&req.data, census, parallel)?;
    inputs.extend(history.manifests.iter().cloned());
    let files = inputs.len() as u64;
    progress::log_stage("fingerprint inputs", files, files, started.elapsed());
    Ok(inputs)
}

/// Run `work` while the inputs are fingerprinted on a thread of their own (sha256 of the
/// price book, of every input file the census did not hash (those over 64 KiB) and of the
/// earlier closes' manifests: it fills the time the pipeline leaves a core idle). A
/// fingerprint error is reported first, as if the inputs had been read before the run.
pub(crate) fn beside_fingerprint<T: Send>(
    req: &JobRequest,
    history: &history::History,
    census: &census::Census,
    work: impl FnOnce() -> Result<T> + Send,
) -> Result<(T, Vec<FileEntry>)> {
    std::thread::scope(|scope| {
        let fingerprinted = scope.spawn(|| fingerprint(req, history, census, false));
        let done = work();
        let inputs = fingerprinted
            .join()
            .unwrap_or_else(|_| Err(TallyError::Invariant("fingerprinting failed".into())))?;
        Ok((done?, inputs))
    })
}

/// A reconcile never replaces a close (its invoices and next-period inputs: finance's
/// record of a closed month), with or without `--force`: an `--out` that holds a close is
/// refused (exit 3) before anything is computed.
pub(crate) fn refuse_reconcile_over_close(req: &JobRequest) -> Result<()> {
    if req.mode != Mode::Reconcile {
        return Ok(());
    }
    let holds_close = write::read_regular_to_string(&req.out.join("manifest.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|manifest| manifest["command"] == "close");
    match holds_close {
        true => Err(TallyError::Refused(format!(
            "{} holds a close; a reconcile does not replace a close: choose another --out folder",
            req.out.display()
        ))),
        false => Ok(()),
    }
}

/// Whether the closes under `--history` that a close now reads and the earlier one in its
/// folder (`old`) did not include a later close, or only earlier ones.
enum CloseNotRead {
    None,
    Earlier,
    Later,
}

fn closes_not_read_before(
    req: &JobRequest,
    old: &report::Manifest,
    inputs: &[FileEntry],
) -> CloseNotRead {
    let new_closes: Vec<&FileEntry> = (inputs.iter())
        .filter(|f| f.path.starts_with("history/"))
        .filter(|f| !old.inputs.iter().any(|o| o.path == f.path))
        .collect();
    if new_closes.is_empty() {
        return CloseNotRead::None;
    }
    // `history/NAME/manifest.json` is NAME's manifest under the history folder; one that
    // cannot be read now counts as later, the cautious advice.
    let later = |f: &&FileEntry| {
        let as_of = (req.history.as_ref())
            .and_then(|dir| f.path.strip_prefix("history/").map(|p| dir.join(p)))
            .and_then(|path| Manifest::read(&path).ok())
            .and_then(|(manifest, _)| crate::time::parse_instant(&manifest.as_of));
        as_of.is_none_or(|as_of| as_of > req.as_of)
    };
    match new_closes.iter().any(later) {
        true => CloseNotRead::Later,
        false => CloseNotRead::Earlier,
    }
}

/// A close whose output folder already holds a close: `Some(outcome)` when it was made
/// from the same inputs (nothing to do), an error (exit 3) when from other inputs unless
/// `--force`, `None` when the close should run. A folder holding a reconcile's output is
/// refused the same way, saying so.
pub(crate) fn check_earlier_close(
    req: &JobRequest,
    inputs: &[FileEntry],
) -> Result<Option<JobOutcome>> {
    check_earlier_close_advising(req, inputs, "rerun")
}

/// [`check_earlier_close`], its refusal's advice starting with `rerun` (what to run again
/// with `--force`: a shard's says every shard and the merge).
pub(crate) fn check_earlier_close_advising(
    req: &JobRequest,
    inputs: &[FileEntry],
    rerun: &str,
) -> Result<Option<JobOutcome>> {
    let manifest_path = req.out.join("manifest.json");
    if req.mode != Mode::Close || !manifest_path.exists() {
        return Ok(None);
    }
    let (old, old_sha256) = Manifest::read(&manifest_path)?;
    let holds_a_close = old.command == Mode::Close.name();
    match describe_changes(&old, req, inputs) {
        None => {
            let figures = AlertFigures::from_summary(&req.out.join("summary.json"))?;
            Ok(Some(JobOutcome::AlreadyClosed {
                alert: check_alert(&req.alert, &figures),
                manifest_sha256: old_sha256,
            }))
        }
        // Not a close: a reconcile's folder (the job's `out` pointed at it by mistake, or
        // reused on purpose); replaced only with --force, as a close of other inputs is.
        Some(_) if !holds_a_close && !req.force => Err(TallyError::Refused(format!(
            "{} holds the output of a {} (as-of {}), not a close; {rerun} with --force \
                 to replace it with this close",
            req.out.display(),
            old.command,
            old.as_of
        ))),
        Some(changes) if !req.force => {
            let advice = match closes_not_read_before(req, &old, inputs) {
                // A later close under `history` that this one did not see was built on this
                // one's invoices and renewals.
                CloseNotRead::Later => format!(
                    "a later close exists and was built on this one: check this month with \
                     `tally explain`, and {rerun} with --force only to redo the later closes too"
                ),
                // Earlier closes it did not read (it ran without --history): their periods
                // were closed and invoiced again, and replacing it is the fix.
                CloseNotRead::Earlier => format!(
                    "it did not read the earlier closes under --history, so it closed and \
                     invoiced their periods again: {rerun} with --force to replace it with a \
                     close that reads them"
                ),
                CloseNotRead::None => format!("{rerun} with --force to replace it"),
            };
            Err(TallyError::Refused(format!(
                "{} already holds a close with other inputs ({changes}); {advice}",
                req.out.display()
            )))
        }
        Some(changes) => {
            match holds_a_close {
                true => tracing::warn!(%changes, "replacing an earlier close (--force)"),
                false => {
                    tracing::warn!(%changes, "replacing the output of a {} (--force)", old.command)
                }
            }
            Ok(None)
        }
    }
}

impl JobRequest {
    pub(crate) fn settings(&self, history: history::History) -> RunSettings {
        RunSettings {
            history: std::sync::Arc::new(history),
            data: self.data.clone(),
            mode: self.mode,
            as_of: self.as_of,
            settle_micros: self.settle_micros,
            buckets: self.buckets,
            groups: self.groups,
            memory_budget_bytes: self.memory_budget_bytes,
            trace_account: None,
        }
    }
}

/// Write a run's outputs to a staging folder and publish it as `req.out`.
pub(crate) fn publish_run(
    req: &JobRequest,
    output: &RunOutput,
    inputs: Vec<FileEntry>,
) -> Result<JobOutcome> {
    let stage = req.progress.stage("write");
    let rows_in = (output.discrepancies.len() + output.rejects.len()) as u64;
    let staging = write::create_staging(&req.out)?;
    let manifest_sha256 = match write_outputs(&staging, output, inputs) {
        Ok(sha256) => sha256,
        Err(e) => {
            write::discard_staging(&staging);
            return Err(e);
        }
    };
    write::publish(&staging, &req.out)?;
    stage.done(rows_in, rows_in);
    Ok(JobOutcome::Published {
        discrepancies: output.discrepancies.len() as u64,
        rejects: output.rejects.len() as u64,
        alert: check_alert(&req.alert, &AlertFigures::of(output)),
        manifest_sha256,
    })
}

/// Run `reconcile` or `close` end to end and publish the output folder (or, with a
/// shard, this shard's part under `out.shards/shard=I/`).
pub fn run_job(req: &JobRequest) -> Result<JobOutcome> {
    spill::sweep_orphans();
    if let Some((shard, shards)) = req.shard {
        return shard::run_shard(req, shard, shards);
    }
    let prepared = prepare(req, &req.out)?;
    let settings = req.settings(prepared.history.clone());
    let census = census::Census::take(&req.data)?.with_pricebook(prepared.pricebook.clone());
    if req.mode == Mode::Close && req.out.join("manifest.json").exists() {
        // The inputs decide whether this close was already made: fingerprint them first.
        let inputs = fingerprint(req, &prepared.history, &census, true)?;
        if let Some(done) = check_earlier_close(req, &inputs)? {
            // Nothing to write, but a staging folder a killed run left beside the output
            // (a `--force` close killed while writing) goes now, as a writing run's would:
            // the close is rerun as a no-op, and no later run writes to this output.
            write::clean_stale_staging(&req.out)?;
            return Ok(done);
        }
        let output = pipeline::run(settings, &census, &req.progress)?;
        drop(census);
        return publish_run(req, &output, inputs);
    }
    let (output, inputs) = beside_fingerprint(req, &prepared.history, &census, || {
        pipeline::run(settings, &census, &req.progress)
    })?;
    // Its listing is in the manifest's entries now (with the load's own copy, about 0.1
    // KiB a file: benches/odd-shapes.sh, 2.8 against 2.7 KiB a file before the census),
    // and the writing is the run's last peak.
    drop(census);
    publish_run(req, &output, inputs)
}

/// Every [alert] threshold the run crossed, on one line (`; ` between them), or `None`.
fn check_alert(alert: &Alert, f: &AlertFigures) -> Option<String> {
    let mut crossed = Vec::new();
    if let Some(max) = alert.max_discrepancies.filter(|&m| f.discrepancies > m) {
        crossed.push(format!(
            "{} discrepancy rows exceed the alert threshold of {max}",
            f.discrepancies
        ));
    }
    if let Some(max) = alert.max_abs_delta_credits.filter(|&m| f.abs_delta > m) {
        crossed.push(format!(
            "Σ |delta| of {} credits exceeds the alert threshold of {max}",
            f.abs_delta
        ));
    }
    if let Some(min) = alert
        .min_events_in_window
        .filter(|&m| f.events_in_window < m)
    {
        crossed.push(format!(
            "only {} events in the window, fewer than the alert minimum of {min} (stale export?)",
            f.events_in_window
        ));
    }
    if let Some(max) = alert.max_rejected_rows.filter(|&m| f.rejected_rows > m) {
        crossed.push(format!(
            "{} rejected rows exceed the alert threshold of {max}",
            f.rejected_rows
        ));
    }
    if let Some(max) = alert
        .max_rejected_allocations
        .filter(|&m| f.rejected_allocations > m)
    {
        let rows_exceed = match f.rejected_allocations {
            1 => "1 rejected allocation row exceeds".to_string(),
            n => format!("{n} rejected allocation rows exceed"),
        };
        crossed.push(format!(
            "{rows_exceed} the alert threshold of {max} (an account-period whose only allocation row is rejected is not billed: see rejects.csv)"
        ));
    }
    if let Some(min) = alert.min_invoices.filter(|&m| f.invoices < m) {
        let why = match f.invoices {
            0 => " (an as-of before every period's end, or a data root without the month?)",
            _ => "",
        };
        crossed.push(format!(
            "only {} invoices, fewer than the alert minimum of {min}{why}",
            f.invoices
        ));
    }
    (!crossed.is_empty()).then(|| crossed.join("; "))
}

/// Where the output that belongs at `out` is, when a publish stranded it beside `out`
/// (`write::stranded_of`), for a refusal of what stands at `out`; empty
/// otherwise.
fn stranded_output_of(out: &Path) -> String {
    match write::stranded_of(out).first() {
        Some(old) => format!(
            " (the output that belongs there is in {}, swapped out by a publish that was \
             stopped before its new output took the place: rename it back once {} is out of \
             the way)",
            old.display(),
            out.display()
        ),
        None => String::new(),
    }
}

/// Refuse to replace a folder that is not a tally output: `--out` must never wipe other data.
pub(crate) fn check_replaceable(out: &Path) -> Result<()> {
    // A link is refused before anything else: publishing swaps folders by name, so the
    // link would be replaced by a folder (its target left as it was, stale), and locks
    // taken by the link's name and by its target's would not exclude each other.
    // Without a trailing `/` (`link/` names the link's target, which read_link does not see).
    let bare: PathBuf = out.components().collect();
    if let Ok(target) = std::fs::read_link(&bare) {
        return Err(TallyError::Refused(format!(
            "{} is a symbolic link (to {}); publishing would replace the link with a folder: \
             give the folder it points to as --out (or `out` in the job file)",
            out.display(),
            target.display()
        )));
    }
    if !out.exists() {
        return Ok(());
    }
    let refuse = |why: &str| {
        Err(TallyError::Refused(format!(
            "{} {why}; tally replaces only its own output folders: choose a new or empty folder{}",
            out.display(),
            stranded_output_of(out)
        )))
    };
    if !out.is_dir() {
        return refuse("exists and is not a folder");
    }
    let empty = std::fs::read_dir(out)
        .map_err(|e| TallyError::io(out, e))?
        .next()
        .is_none();
    if empty {
        return Ok(());
    }
    if write::holds_tally_manifest(out) {
        Ok(())
    } else {
        refuse("holds files but no tally manifest.json")
    }
}

/// The files one writing job made, as the manifest lists them: path under the output
/// folder, rows if a table, and the sha256 of the bytes written.
type Written = Vec<FileEntry>;

/// A file of a writing job, for the manifest.
fn written(path: &str, rows: Option<u64>, sha256: write::Sha256Hex) -> FileEntry {
    FileEntry {
        path: path.to_string(),
        rows,
        sha256,
    }
}

/// One independent part of the output (a table and its CSV, a close stream, report/...).
type WriteJob<'a> = Box<dyn Fn() -> Result<Written> + Send + Sync + 'a>;

/// Run writing jobs in parallel; the first failure in job order is the error reported
/// (the same whichever thread fails first).
fn run_write_jobs(jobs: Vec<WriteJob<'_>>) -> Result<Written> {
    let done: Vec<Result<Written>> = jobs.par_iter().map(|job| job()).collect();
    let mut written = Written::new();
    for files in done {
        written.extend(files?);
    }
    Ok(written)
}

/// Write every output of a run into `dir` (the staging folder), `manifest.json` last;
/// returns the manifest's sha256. Files that do not depend on each other are written in
/// parallel (the manifest lists them in path order whatever order they finished in); all
/// are synced to disk together when the folder is published ([`write::publish`]).
pub(crate) fn write_outputs(
    dir: &Path,
    output: &RunOutput,
    inputs: Vec<FileEntry>,
) -> Result<write::Sha256Hex> {
    // The summary beside the report's tables (each alone keeps a core idle for part of its
    // time).
    let ((discrepancies, rejects), summary) =
        rayon::join(|| write::report_tables(output), || report::summary(output));
    let summary = summary?;
    let mut jobs: Vec<WriteJob<'_>> = Vec::new();
    if output.settings.mode == Mode::Close {
        jobs.push(billed_events_job(dir, output));
        jobs.push(invoice_lines_job(dir, output));
    }
    for (name, batch) in [
        ("discrepancies.parquet", &discrepancies),
        ("rejects.parquet", &rejects),
    ] {
        jobs.extend(table_jobs(dir, name, batch, output.book.exponent));
    }
    for (name, build) in write::other_tables(output.settings.mode) {
        jobs.push(built_table_job(dir, output, name, build));
    }
    jobs.push(summary_job(dir, output, &summary));
    jobs.push(report_job(dir, output, &summary, &discrepancies, &rejects));
    // Every file's sha256 was made as it was written (`write::HashedFile`); listed by path.
    let mut outputs = run_write_jobs(jobs)?;
    outputs.sort_by(|a, b| a.path.cmp(&b.path));
    write_manifest(dir, output, inputs, outputs)
}

/// A close's billed events, merged from their runs as they are written.
fn billed_events_job<'a>(dir: &'a Path, output: &'a RunOutput) -> WriteJob<'a> {
    Box::new(move || {
        let name = "billed_events.parquet";
        let billed = write::write_streamed(
            &dir.join(name),
            &output.billed,
            write::billed_events_batch,
            None,
        )?;
        Ok(vec![written(name, Some(billed.rows), billed.sha256)])
    })
}

/// A close's invoice lines, merged from their runs once for the Parquet file and its CSV
/// copy.
fn invoice_lines_job<'a>(dir: &'a Path, output: &'a RunOutput) -> WriteJob<'a> {
    Box::new(move || {
        let (name, csv_name) = ("invoice_lines.parquet", "invoice_lines.csv");
        let csv_path = dir.join(csv_name);
        let schema = write::invoice_lines_batch(&[]).schema();
        let csv = export::StreamedCsv::create(&csv_path, &schema, output.book.exponent)?;
        let lines = write::write_streamed(
            &dir.join(name),
            &output.lines,
            write::invoice_lines_batch,
            Some(csv),
        )?;
        let csv_sha256 = lines
            .csv_sha256
            .ok_or_else(|| TallyError::Invariant(format!("{csv_name} was not written")))?;
        Ok(vec![
            written(name, Some(lines.rows), lines.sha256),
            written(csv_name, Some(lines.rows), csv_sha256),
        ])
    })
}

/// A table's Parquet file and its CSV copy, two jobs.
fn table_jobs<'a>(
    dir: &'a Path,
    name: &'a str,
    batch: &'a arrow::record_batch::RecordBatch,
    exponent: u32,
) -> [WriteJob<'a>; 2] {
    let rows = Some(batch.num_rows() as u64);
    [
        Box::new(move || {
            let sha256 = write::write_parquet(&dir.join(name), batch)?;
            Ok(vec![written(name, rows, sha256)])
        }),
        Box::new(move || {
            if name == "discrepancies.parquet" {
                let csv = "discrepancies.csv";
                let sha256 = write::write_table_csv(&dir.join(csv), batch)?;
                Ok(vec![written(csv, rows, sha256)])
            } else {
                // Every other table also as a spreadsheet CSV (see `export`).
                let csv = name.replace(".parquet", ".csv");
                let sha256 = export::write_sheet_csv(&dir.join(&csv), batch, exponent)?;
                Ok(vec![written(&csv, rows, sha256)])
            }
        }),
    ]
}

/// A table built in its job, then written (its Parquet file and its CSV copy side by
/// side) and dropped once both are: a table's batch is held while it is written, not from
/// the start of the write stage to its end. A failed build (an invariant) fails the run
/// when its job runs, before anything is published.
fn built_table_job<'a>(
    dir: &'a Path,
    output: &'a RunOutput,
    name: &'static str,
    build: write::BuildTable,
) -> WriteJob<'a> {
    Box::new(move || {
        let batch = build(output)?;
        let [parquet, csv] = table_jobs(dir, name, &batch, output.book.exponent);
        let (parquet, csv) = rayon::join(parquet, csv);
        let mut files = parquet?;
        files.extend(csv?);
        Ok(files)
    })
}

/// summary.json and summary.md.
fn summary_job<'a>(dir: &'a Path, output: &'a RunOutput, summary: &'a Summary) -> WriteJob<'a> {
    Box::new(move || {
        let json = serde_json::to_string_pretty(summary)
            .map_err(|e| TallyError::output("summary.json", e))?;
        let (json_name, md_name) = ("summary.json", "summary.md");
        let json_sha256 = write::write_bytes(&dir.join(json_name), format!("{json}\n").as_bytes())?;
        let md = report::summary_markdown(output, summary)?;
        let md_sha256 = write::write_bytes(&dir.join(md_name), md.as_bytes())?;
        Ok(vec![
            written(json_name, None, json_sha256),
            written(md_name, None, md_sha256),
        ])
    })
}

/// report/ and report.html, which links to its files.
fn report_job<'a>(
    dir: &'a Path,
    output: &'a RunOutput,
    summary: &'a Summary,
    discrepancies: &'a arrow::record_batch::RecordBatch,
    rejects: &'a arrow::record_batch::RecordBatch,
) -> WriteJob<'a> {
    Box::new(move || {
        let files = export::write_report_files(dir, output, discrepancies, rejects)?;
        let mut report: Written = (files.all().into_iter())
            .map(|f| written(&f.path, Some(f.rows), f.sha256.clone()))
            .collect();
        let html = html::render(output, summary, &files);
        let html_name = "report.html";
        let html_sha256 = write::write_bytes(&dir.join(html_name), html.as_bytes())?;
        report.push(written(html_name, None, html_sha256));
        Ok(report)
    })
}

/// manifest.json: the run, its inputs and every output with its sha256, written last.
/// Returns its own sha256.
fn write_manifest(
    dir: &Path,
    output: &RunOutput,
    inputs: Vec<FileEntry>,
    outputs: Vec<FileEntry>,
) -> Result<write::Sha256Hex> {
    let manifest = Manifest {
        tool: "tally".into(),
        version: write::VERSION.into(),
        command: output.settings.mode.name().into(),
        as_of: time::format_instant(output.settings.as_of),
        settings: ManifestSettings {
            settle_seconds: output.settings.settle_micros / 1_000_000,
        },
        inputs,
        outputs,
    };
    let json = serde_json::to_string_pretty(&manifest)
        .map_err(|e| TallyError::output("manifest.json", e))?;
    write::write_bytes(&dir.join("manifest.json"), format!("{json}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Σ |delta| past 10^15 credits in an earlier run's summary.json is past every
    /// threshold when a no-op rerun reads it back (it read as 0, and the rerun of a close
    /// that alerted exited 0; found by a source review).
    #[test]
    fn an_abs_delta_past_the_amount_range_reads_back_past_every_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let summary = dir.path().join("summary.json");
        let read = |abs: &str| {
            let text =
                format!(r#"{{"discrepancies": {{"total": 2, "abs_delta_credits": "{abs}"}}}}"#);
            std::fs::write(&summary, text).unwrap();
            AlertFigures::from_summary(&summary).unwrap().abs_delta
        };
        assert_eq!(read("1600000000000000.000"), Milli(i64::MAX));
        assert_eq!(read("999999999999999.999"), Milli(999_999_999_999_999_999));
        assert_eq!(read("12.500"), Milli(12_500));
    }

    /// A run's price book is read once: the load prices with that reading and the
    /// manifest lists the sha256 of its bytes, also when the file is written again during
    /// the run (the manifest named a book the run did not price with).
    #[test]
    fn the_price_book_is_priced_and_listed_as_one_reading() {
        let data = tempfile::tempdir().unwrap();
        let book = data.path().join("pricebook.toml");
        let usd = crate::generate::PRICEBOOK_TOML;
        std::fs::write(&book, usd).unwrap();
        let reading = pricebook::PriceBook::read(&book, "pricebook.toml").unwrap();
        assert_eq!(reading.sha256, write::sha256_hex(usd.as_bytes()));
        let census = census::Census::take(data.path())
            .unwrap()
            .with_pricebook(reading);
        let eur = usd.replace("currency = \"USD\"", "currency = \"EUR\"");
        assert_ne!(eur, usd);
        std::fs::write(&book, &eur).unwrap();
        let listed = fingerprint_files(data.path(), &census, false).unwrap();
        assert_eq!(listed[0].path, "pricebook.toml");
        assert_eq!(listed[0].sha256, write::sha256_hex(usd.as_bytes()));
        // The load's inputs (their required dataset folders made) price with the reading,
        // not the file as it is now.
        for dataset in ["usage", "allocations", "debits"] {
            std::fs::create_dir(data.path().join(dataset)).unwrap();
        }
        let census = census::Census::take(data.path())
            .unwrap()
            .with_pricebook(pricebook::PriceBook::read(&book, "pricebook.toml").unwrap());
        std::fs::write(&book, usd).unwrap();
        let inputs = census::inputs_listed(data.path(), &census).unwrap();
        assert_eq!(inputs.book.currency, "EUR");
        assert_eq!(inputs.pricebook_sha256, write::sha256_hex(eur.as_bytes()));
        // Without a reading (`verify`), the file as it is now; a run's inputs need one.
        let now = census::Census::take(data.path()).unwrap();
        let listed = fingerprint_files(data.path(), &now, false).unwrap();
        assert_eq!(listed[0].sha256, write::sha256_hex(usd.as_bytes()));
        assert!(census::inputs_listed(data.path(), &now).is_err());
        // Read now (the merge, explain): the book and the sha256 of the bytes parsed.
        let read_now = census::inputs(data.path()).unwrap();
        assert_eq!(read_now.book.currency, "USD");
        assert_eq!(read_now.pricebook_sha256, write::sha256_hex(usd.as_bytes()));
    }

    /// An earlier run's `summary.json` is read back, not trusted: rejected counts that add
    /// up past a u64 saturate (they overflowed: a panic, exit 4, on a no-op close).
    #[test]
    fn alert_figures_read_back_from_a_summary_saturate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        std::fs::write(
            &path,
            r#"{"discrepancies": {"total": 3, "abs_delta_credits": "1.500"},
                "datasets": {"usage": {"rejected": 18446744073709551615},
                             "debits": {"rejected": 2}}}"#,
        )
        .unwrap();
        let figures = AlertFigures::from_summary(&path).unwrap();
        assert_eq!(figures.rejected_rows, u64::MAX);
        assert_eq!(figures.discrepancies, 3);
        assert_eq!(figures.abs_delta, Milli(1_500));
    }

    /// Each [alert] threshold at its value passes and one past it alerts, with its own
    /// words; thresholds crossed together are named on one line, in order.
    #[test]
    fn each_alert_threshold_passes_at_its_value_and_alerts_one_past() {
        let alert = Alert {
            max_discrepancies: Some(100),
            max_abs_delta_credits: Some(Milli(50_000_000)),
            min_events_in_window: Some(10),
            max_rejected_rows: Some(5),
            max_rejected_allocations: Some(0),
            min_invoices: Some(3),
        };
        let at_limits = AlertFigures {
            discrepancies: 100,
            abs_delta: Milli(50_000_000),
            events_in_window: 10,
            rejected_rows: 5,
            rejected_allocations: 0,
            invoices: 3,
        };
        assert_eq!(check_alert(&alert, &at_limits), None);
        let past = |edit: &dyn Fn(&mut AlertFigures)| {
            let mut figures = at_limits.clone();
            edit(&mut figures);
            check_alert(&alert, &figures)
        };
        let crossed = [
            past(&|f| f.discrepancies = 101),
            past(&|f| f.abs_delta = Milli(50_000_001)),
            past(&|f| f.events_in_window = 9),
            past(&|f| f.rejected_rows = 6),
            past(&|f| f.rejected_allocations = 1),
            past(&|f| f.invoices = 2),
            past(&|f| f.invoices = 0),
        ];
        let said = [
            "101 discrepancy rows exceed the alert threshold of 100",
            "Σ |delta| of 50000.001 credits exceeds the alert threshold of 50000.000",
            "only 9 events in the window, fewer than the alert minimum of 10 (stale export?)",
            "6 rejected rows exceed the alert threshold of 5",
            "1 rejected allocation row exceeds the alert threshold of 0 (an account-period \
             whose only allocation row is rejected is not billed: see rejects.csv)",
            "only 2 invoices, fewer than the alert minimum of 3",
            "only 0 invoices, fewer than the alert minimum of 3 (an as-of before every \
             period's end, or a data root without the month?)",
        ];
        for (crossed, said) in crossed.into_iter().zip(said) {
            assert_eq!(crossed.as_deref(), Some(said));
        }
        let both = past(&|f| {
            f.discrepancies = 101;
            f.rejected_rows = 6;
        });
        assert_eq!(
            both.as_deref(),
            Some(
                "101 discrepancy rows exceed the alert threshold of 100; 6 rejected rows \
                 exceed the alert threshold of 5"
            )
        );
        assert_eq!(
            check_alert(&Alert::default(), &AlertFigures::default()),
            None
        );
    }
}
