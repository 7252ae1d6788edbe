//! Earlier closes, read back from their output folders: which account-periods are already
//! closed (never closed or renewed twice) and which events were billed (so that an event
//! that arrives after its period was closed is reported `late_event`, not lost).

use crate::error::{Result, TallyError};
use crate::time::Micros;
use crate::validate::FastHash;
use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMicrosecondType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What earlier closes under a history folder did.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// account_id → period_start of every closed account-period.
    pub closed: HashMap<String, Vec<Micros>, FastHash>,
    /// The `billed_events.parquet` of every earlier close. They are read for the events a
    /// run may find late only ([`History::billed_among`]): a month of billed events would
    /// not fit a memory budget.
    pub billed_files: Vec<PathBuf>,
    /// The earlier closes read, as the run's inputs: each one's manifest.json.
    pub manifests: Vec<crate::report::FileEntry>,
}

impl History {
    pub fn is_closed(&self, account_id: &str, period_start: Micros) -> bool {
        !self.closed.is_empty()
            && self
                .closed
                .get(account_id)
                .is_some_and(|starts| starts.contains(&period_start))
    }

    /// The ids among `wanted` that an earlier close billed.
    pub fn billed_among(
        &self,
        wanted: &HashSet<String, FastHash>,
    ) -> Result<HashSet<String, FastHash>> {
        let mut billed = HashSet::default();
        if wanted.is_empty() {
            return Ok(billed);
        }
        for file in &self.billed_files {
            read_columns(file, &mut |batch| {
                let events = typed_column(batch, "event_id", file, |a| a.as_string_opt::<i32>())?;
                for i in 0..batch.num_rows() {
                    let id = events.value(i);
                    if wanted.contains(id) {
                        billed.insert(id.to_string());
                    }
                }
                Ok(())
            })?;
        }
        Ok(billed)
    }
}

fn read_columns(
    path: &Path,
    each: &mut dyn FnMut(&arrow::record_batch::RecordBatch) -> Result<()>,
) -> Result<()> {
    let file = crate::write::open_regular(path).map_err(|e| TallyError::io(path, e))?;
    read_columns_of(file, path, each)
}

/// [`read_columns`] of `source`, the contents of the file at `path`.
fn read_columns_of<T: parquet::file::reader::ChunkReader + 'static>(
    source: T,
    path: &Path,
    each: &mut dyn FnMut(&arrow::record_batch::RecordBatch) -> Result<()>,
) -> Result<()> {
    let name = path.display().to_string();
    // The Parquet library panics on some damaged footers (a negative chunk size).
    crate::load::guard_decoding_of(&name, RESTORE_CLOSE, || {
        let reader = ParquetRecordBatchReaderBuilder::try_new(source)
            .and_then(|b| b.build())
            .map_err(|e| {
                TallyError::input(&name, format!("not a readable earlier close output: {e}"))
            })?;
        for batch in reader {
            let batch = batch.map_err(|e| TallyError::input(&name, format!("cannot read: {e}")))?;
            each(&batch)?;
        }
        Ok(())
    })
}

/// What to do about an earlier close's damaged output.
const RESTORE_CLOSE: &str = "; restore the close's folder from a backup";

/// An earlier close's `billed_events.parquet`, checked to be a readable Parquet file with
/// an `event_id` column: its rows.
fn check_billed(path: &Path) -> Result<u64> {
    let name = path.display().to_string();
    let file = crate::write::open_regular(path).map_err(|e| TallyError::io(path, e))?;
    let builder = crate::load::guard_decoding_of(&name, RESTORE_CLOSE, || {
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
            TallyError::input(&name, format!("not a readable earlier close output: {e}"))
        })
    })?;
    let schema = builder.schema();
    let Ok(event_id) = schema.field_with_name("event_id") else {
        return Err(TallyError::input(name, "missing column `event_id`"));
    };
    if event_id.data_type() != &arrow::datatypes::DataType::Utf8 {
        return Err(of_another_type(path, "event_id", event_id.data_type()));
    }
    Ok(builder.metadata().file_metadata().num_rows() as u64)
}

/// An earlier close's `name` (in `folder`) as its `manifest` lists it; a file it does not
/// list is refused as changed since that close was published.
fn listed<'a>(
    manifest: &'a crate::report::Manifest,
    folder: &Path,
    name: &str,
) -> Result<&'a crate::report::FileEntry> {
    (manifest.outputs.iter().find(|entry| entry.path == name))
        .ok_or_else(|| changed(folder, name, "is not listed in its close's manifest.json"))
}

/// Refuse an earlier close's `name` (in `folder`) whose `rows` are not those its
/// `manifest.json` lists. A run fingerprints an earlier close by its manifest, which holds
/// the checksum of every file it wrote, but reads its invoices and billed events: a file
/// edited since would change what this close bills, unseen by the fingerprint. The billed
/// events (a month of events, read only in part) are checked by their rows, where the file
/// is opened anyway; the invoices (read whole) by their bytes ([`check_listed_bytes`]);
/// `tally verify` of the earlier close checks every byte of every file.
fn check_listed_rows(
    manifest: &crate::report::Manifest,
    folder: &Path,
    name: &str,
    rows: u64,
) -> Result<()> {
    let entry = listed(manifest, folder, name)?;
    if entry.rows == Some(rows) {
        return Ok(());
    }
    let listed = entry
        .rows
        .map_or("no row count".to_string(), |n| format!("{n} rows"));
    Err(changed(
        folder,
        name,
        &format!("holds {rows} rows where its close's manifest.json lists {listed}"),
    ))
}

/// Refuse an earlier close's `name` (in `folder`) whose bytes are not those its
/// `manifest.json` lists (their sha256 is `sha256`).
fn check_listed_bytes(
    manifest: &crate::report::Manifest,
    folder: &Path,
    name: &str,
    sha256: &str,
) -> Result<()> {
    if listed(manifest, folder, name)?.sha256 == sha256 {
        return Ok(());
    }
    Err(changed(
        folder,
        name,
        "differs from the sha256 its close's manifest.json lists",
    ))
}

/// The error of an earlier close's file `name` (in `folder`) that changed since that close
/// was published: `what` is wrong with it.
fn changed(folder: &Path, name: &str, what: &str) -> TallyError {
    TallyError::input(
        folder.join(name).display().to_string(),
        format!(
            "{what}: it changed since that close was published; restore the folder from a \
             backup (`tally verify {}` checks every file)",
            folder.display()
        ),
    )
}

fn column<'a>(
    batch: &'a arrow::record_batch::RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| {
            TallyError::input(
                path.display().to_string(),
                format!("missing column `{name}`"),
            )
        })
}

/// A column of the type tally writes there (`typed`: the array as that type, `None` of
/// another), without nulls (the columns read here, ids and period starts, never hold one);
/// of another type (a file another tool wrote again, which would panic when read as
/// tally's) or with nulls (read as "" or 1970-01-01: the close's periods would not count
/// as closed) an error naming the file and the column.
fn typed_column<'a, T: ?Sized>(
    batch: &'a arrow::record_batch::RecordBatch,
    name: &str,
    path: &Path,
    typed: impl FnOnce(&'a dyn Array) -> Option<&'a T>,
) -> Result<&'a T> {
    let array = column(batch, name, path)?;
    if array.null_count() > 0 {
        let why = format!(
            "column `{name}` holds {} null(s), which tally never writes there",
            array.null_count()
        );
        return Err(not_as_written(path, &why));
    }
    typed(array).ok_or_else(|| of_another_type(path, name, array.data_type()))
}

/// An earlier close's file that is not as tally wrote it, saying `why`.
fn not_as_written(path: &Path, why: &str) -> TallyError {
    TallyError::input(
        path.display().to_string(),
        format!(
            "{why}: not an earlier close output as tally wrote it (was it written again by \
             another tool?)"
        ),
    )
}

/// [`not_as_written`]: column `name` is of type `found`.
fn of_another_type(path: &Path, name: &str, found: &arrow::datatypes::DataType) -> TallyError {
    not_as_written(
        path,
        &format!("column `{name}` is {found}, not what tally writes there"),
    )
}

/// Refuse a close whose output folder is not directly inside its history folder: the next
/// close, reading that history, would not see this one and would close its periods again.
/// Paths are compared where the kernel takes them (`crate::placed`, `crate::resolved`:
/// made absolute, links followed as far as they exist, `.` and `..` folded after them;
/// neither folder need exist yet), since that is where the close publishes and where the
/// next close reads: folded as text, `link/../closes/x` passed for `closes/x` and was
/// published beside the link's target, outside the history.
pub fn check_layout(dir: &Path, out: &Path) -> Result<()> {
    refuse_an_output_folder_as_history(dir)?;
    let (dir_real, out_real) = (crate::resolved(dir), crate::placed(out));
    if out_real.parent() == Some(dir_real.as_path()) {
        return Ok(());
    }
    // Through a link, the text does not show where the folders are: say it.
    let as_text = crate::normalised(dir) == dir_real && crate::normalised(out) == out_real;
    let through_links = match as_text {
        true => String::new(),
        false => format!(
            " (with their links followed, the output folder is {} and the history folder {})",
            out_real.display(),
            dir_real.display()
        ),
    };
    Err(TallyError::config(
        dir.display().to_string(),
        format!(
            "the close's output folder {} is not directly inside this history folder{through_links}, so the next close would not read it and would close its periods again: write closes to {}/<name>",
            out.display(),
            dir.display()
        ),
    ))
}

/// Refuse a history folder that is not a folder, or that is itself an output folder: an
/// earlier close named where the folder holding the closes was meant. Its periods would
/// not count as closed, and a close would publish inside it.
pub fn refuse_an_output_folder_as_history(dir: &Path) -> Result<()> {
    // Something else than a folder (a file, a FIFO): nothing could be read as closed, and
    // a close could not make its lock or output inside it (it failed as a write, exit 4).
    if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
        return Err(TallyError::config(
            dir.display().to_string(),
            "is not a folder: --history names the folder holding the earlier closes (it may \
             not exist yet before the first close)",
        ));
    }
    if dir.join("manifest.json").is_file() {
        // As given where that names the folder above (`closes/2026-11`), else from the
        // folded absolute path (`..`, `.`, `x/..` have no useful parent as written).
        let holder = match dir.parent() {
            Some(parent)
                if !parent.as_os_str().is_empty()
                    && dir
                        .file_name()
                        .is_some_and(|name| name != "." && name != "..") =>
            {
                parent.display().to_string()
            }
            _ => crate::normalised(dir)
                .parent()
                .map_or_else(|| "/".to_string(), |p| p.display().to_string()),
        };
        return Err(TallyError::config(
            dir.display().to_string(),
            format!(
                "this history folder is itself a tally output folder (it holds manifest.json); \
                 --history names the folder holding the earlier closes, such as {holder}"
            ),
        ));
    }
    Ok(())
}

/// An earlier close under a history folder.
pub struct EarlierClose {
    /// The folder's name under the history folder.
    pub name: String,
    pub folder: PathBuf,
    /// Its manifest's as-of (earlier or later than the run's).
    pub as_of: Micros,
    /// Its `manifest.json`, parsed once (the files a run reads are checked against it).
    manifest: crate::report::Manifest,
    /// The sha256 of its `manifest.json`, of the bytes parsed.
    manifest_sha256: crate::write::Sha256Hex,
}

impl EarlierClose {
    /// The close as a run's input: its manifest, which lists the checksum of every file it
    /// wrote, by its path under the history folder.
    pub fn input_entry(&self) -> crate::report::FileEntry {
        crate::report::FileEntry {
            path: format!("history/{}/manifest.json", self.name),
            rows: None,
            sha256: self.manifest_sha256.clone(),
        }
    }
}

/// The closes under `dir` that a run at `as_of` writing `exclude` reads (see [`load`]), in
/// name order.
pub fn earlier_closes(
    dir: &Path,
    exclude: Option<&Path>,
    as_of: Micros,
) -> Result<Vec<EarlierClose>> {
    Ok(read_at(closes_under(dir, exclude)?, as_of))
}

/// Of `closes` (see [`closes_under`]), those a run at `as_of` reads: all but the ones made
/// at its own as-of.
pub fn read_at(mut closes: Vec<EarlierClose>, as_of: Micros) -> Vec<EarlierClose> {
    closes.retain(|close| {
        let other = close.as_of != as_of;
        if !other {
            tracing::info!(
                folder = %close.folder.display(),
                "history: skipped a close made at this run's as-of (a copy of this close)"
            );
        }
        other
    });
    closes
}

/// Refuse a close into `out` while another folder of its history `dir` holds a close made
/// at the same `as_of`, unless `out` itself holds one (a rerun of that close, `--force` or
/// not, beside a backup copy of it). A second close at one as-of would close and invoice
/// every one of its account-periods again, into a second folder that later closes read as
/// well: a typo in `--out`, or a `-rerun` suffix, bills a month twice. `closes`: the
/// closes under `dir` but `out` ([`closes_under`]).
pub fn refuse_a_second_close(
    closes: &[EarlierClose],
    dir: &Path,
    out: &Path,
    as_of: Micros,
) -> Result<()> {
    // Where the kernel takes it (`closes/x/../2026-12-01` is `closes/2026-12-01` when `x`
    // is a folder or not there; through a link, where the link goes).
    let manifest = crate::placed(out).join("manifest.json");
    let rerun = manifest.is_file()
        && close_as_of(&read_manifest(&manifest)?.0, &manifest)?.is_some_and(|made| made == as_of);
    if rerun {
        return Ok(());
    }
    let Some(close) = closes.iter().find(|close| close.as_of == as_of) else {
        return Ok(());
    };
    Err(TallyError::Refused(format!(
        "{} would be a second close at this as-of ({}): {} holds one, whose account-periods \
         it would invoice again; rerun into {} (a no-op; --force to redo it), or, to close \
         again on purpose, move it out of {} or give it a name starting with `_`",
        out.display(),
        crate::time::format_instant(as_of),
        close.folder.display(),
        close.folder.display(),
        dir.display(),
    )))
}

/// The as-of of the close whose `manifest.json` (read from `path`) is `manifest` (`None`:
/// another tally output, or not tally's).
fn close_as_of(manifest: &serde_json::Value, path: &Path) -> Result<Option<Micros>> {
    if manifest["tool"] != "tally" || manifest["command"] != "close" {
        return Ok(None);
    }
    let as_of = manifest["as_of"]
        .as_str()
        .and_then(crate::time::parse_instant)
        .ok_or_else(|| {
            TallyError::input(
                path.display().to_string(),
                "unreadable manifest: `as_of` is not an instant",
            )
        })?;
    Ok(Some(as_of))
}

/// An earlier output's `manifest.json` at `path`, parsed, and the sha256 of its bytes.
fn read_manifest(path: &Path) -> Result<(serde_json::Value, crate::write::Sha256Hex)> {
    let bytes = crate::write::read_regular(path).map_err(|e| TallyError::io(path, e))?;
    let manifest = serde_json::from_slice(&bytes).map_err(|e| unreadable_manifest(path, e))?;
    Ok((manifest, crate::write::sha256_hex(&bytes)))
}

fn unreadable_manifest(path: &Path, e: serde_json::Error) -> TallyError {
    TallyError::input(
        path.display().to_string(),
        format!("unreadable manifest: {e}"),
    )
}

/// Refuse a close under a history holding another close that a publish swapped out and
/// never replaced (its folder missing, the close only in the hidden `-old` folder beside
/// it): closes skip hidden folders, so its periods would be closed and billed again. The
/// close writing `out` is not refused for its own (it puts it back under the output's
/// lock, `write::restore_stranded_output`). Closes hold the history's lock, so no other
/// close can be between its two renames here.
pub fn refuse_a_stranded_close(dir: &Path, out: &Path) -> Result<()> {
    let Some((old, target, as_of)) = stranded_close_beside(dir, out) else {
        return Ok(());
    };
    let copies = crate::write::stranded_of(&target);
    if copies.len() > 1 {
        // Which one belongs there is for a person to say: naming one would put back a
        // close, and the next close bill the periods of another again.
        return Err(crate::write::several_stranded(&target, &copies));
    }
    Err(TallyError::Refused(format!(
        "{}: the close that belongs at {} is only there: a publish swapped it out and was \
         stopped before its new output took the place (killed between its two renames); \
         closes under this history would bill its periods again. Rerun that close (its \
         --out {} and --as-of {}, with --history {} and its --data), which puts it back \
         first, or rename it back by hand (mv {} {}, whatever is at {} removed first), then \
         rerun",
        old.display(),
        target.display(),
        target.display(),
        crate::time::format_instant(as_of),
        crate::shard::shell_word(&dir.display().to_string()),
        old.display(),
        target.display(),
        target.display()
    )))
}

/// A folder of the history with a `manifest.json` entry that is not a regular file (a
/// folder, a FIFO, a broken link): exit 2, naming it. It may be an earlier close: skipping
/// it would bill its periods again (and a FIFO would block its read).
fn refuse_a_manifest_not_a_file(manifest: &Path) -> Result<()> {
    match crate::write::is_regular_file(manifest) {
        true => Ok(()),
        false => Err(TallyError::input(
            manifest.display().to_string(),
            "is not a regular file (a folder, a pipe, a socket, a device or a broken link): \
             if its folder is an earlier close, its manifest is one; restore the close from a \
             backup, or move the folder out of the history folder",
        )),
    }
}

/// An earlier close whose folder name is not UTF-8: exit 2, naming it. A close's manifest
/// names the earlier closes it read as text (`history/{folder}`), where two such names
/// could be one.
fn refuse_a_close_not_named_in_utf8(folder: &Path) -> Result<()> {
    match folder.file_name().and_then(|n| n.to_str()) {
        Some(_) => Ok(()),
        None => Err(TallyError::input(
            folder.display().to_string(),
            "the name is not UTF-8: rename it (a close's manifest names the earlier closes \
             it read by their folder as text)",
        )),
    }
}

/// Warn of a close run without `--history` whose `--out` is beside earlier closes: it does
/// not read them, so the periods they closed are closed and invoiced again (the usual
/// cause: `--history` left out of a close run by hand). A warning, not a refusal: closes of
/// another data root may share the folder, and a first close has no history to give. A
/// folder this cannot read is not this warning's to report (the close itself does not read
/// it).
pub fn warn_of_closes_not_read(out: &Path, as_of: Micros) {
    let dir = crate::write::folder_of(out);
    warn_of_stranded_closes_not_read(&dir, out);
    let Ok(mut closes) = closes_under(&dir, Some(out)) else {
        return;
    };
    // The closes `--history` would have this close read ([`read_at`]): not one at its own
    // as-of (a backup copy beside it), but a later one too (a backfill bills again what a
    // later close billed).
    closes.retain(|c| c.as_of != as_of);
    let Some(latest) = closes.iter().max_by_key(|c| (c.as_of, &c.name)) else {
        return;
    };
    let (held, they, of_this_root) = match closes.len() {
        1 => ("another close".to_string(), "it", "it is a close"),
        n => (format!("{n} other closes"), "they", "they are closes"),
    };
    // Absolute: `--out x` is in `.`, which says nothing in a log.
    let dir = crate::normalised(&dir);
    tracing::warn!(
        closes = closes.len(),
        latest = latest.name.as_str(),
        folder = %dir.display(),
        "the folder of --out, {}, holds {held} (the latest: {}, as of {}) that this close does \
         not read, as it runs without --history: periods {they} closed are closed and invoiced \
         again. If {of_this_root} of this data root, rerun with --history {} --force (which \
         replaces this close)",
        dir.display(),
        latest.name,
        crate::time::format_instant(latest.as_of),
        crate::shard::shell_word(&dir.display().to_string()),
    );
}

/// Warn, for a close without `--history`, of a close beside its `--out` that a stopped
/// publish stranded (only in its hidden `-old` folder, which [`warn_of_closes_not_read`]
/// does not see): its periods are closed and invoiced again.
fn warn_of_stranded_closes_not_read(dir: &Path, out: &Path) {
    let Some((old, target, as_of)) = stranded_close_beside(dir, out) else {
        return;
    };
    tracing::warn!(
        folder = %old.display(),
        "the close that belongs at {} (as of {}) is only in {}, swapped out by a publish that \
         was stopped before its new output took the place, and this close does not read it, \
         as it runs without --history: periods it closed are closed and invoiced again. If it \
         is a close of this data root, put it back (rerun it with --history {}) and rerun this \
         close with --history {} --force",
        target.display(),
        crate::time::format_instant(as_of),
        old.display(),
        crate::shard::shell_word(&dir.display().to_string()),
        crate::shard::shell_word(&dir.display().to_string()),
    );
}

/// The first close under `dir` that a stopped publish stranded
/// (`write::stranded_previous_outputs`), other than `out`'s own and of a folder a history
/// reads (not hidden): its `-old` folder, the folder it belongs at, and its as-of.
fn stranded_close_beside(dir: &Path, out: &Path) -> Option<(PathBuf, PathBuf, Micros)> {
    let own = crate::placed(out);
    crate::write::stranded_previous_outputs(dir)
        .into_iter()
        .find_map(|(old, target)| {
            let name = target.file_name()?.to_string_lossy().into_owned();
            if crate::load::is_hidden(&name) || target.file_name() == own.file_name() {
                return None;
            }
            let path = old.join("manifest.json");
            let (manifest, _) = read_manifest(&path).ok()?;
            let as_of = close_as_of(&manifest, &path).ok().flatten()?;
            Some((old, target, as_of))
        })
}

/// Every close directly under `dir` but `exclude` (where the kernel takes it; `None`: none
/// excluded) and hidden folders (see [`load`]), with its as-of and manifest, in name order.
pub fn closes_under(dir: &Path, exclude: Option<&Path>) -> Result<Vec<EarlierClose>> {
    let mut closes = Vec::new();
    if !dir.is_dir() {
        return Ok(closes);
    }
    let mut folders: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| TallyError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| crate::load::is_hidden(&n.to_string_lossy()))
        })
        .filter(|p| std::fs::symlink_metadata(p.join("manifest.json")).is_ok())
        .collect();
    folders.sort();
    // An excluded folder that does not exist yet (a first run) excludes nothing.
    let exclude = exclude.and_then(|out| crate::placed(out).canonicalize().ok());
    for folder in folders {
        if exclude.is_some() && folder.canonicalize().ok() == exclude {
            continue;
        }
        let path = folder.join("manifest.json");
        refuse_a_manifest_not_a_file(&path)?;
        let (manifest, manifest_sha256) = read_manifest(&path)?;
        let Some(close_as_of) = close_as_of(&manifest, &path)? else {
            continue;
        };
        refuse_a_close_not_named_in_utf8(&folder)?;
        // Another tool's manifest is skipped above; a close's is one of tally's.
        let manifest =
            serde_json::from_value(manifest).map_err(|e| unreadable_manifest(&path, e))?;
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        closes.push(EarlierClose {
            name,
            folder,
            as_of: close_as_of,
            manifest,
            manifest_sha256,
        });
    }
    Ok(closes)
}

/// Read every earlier close under `dir`: each folder directly under it whose manifest.json
/// says `"command": "close"`, except `exclude` (the run's own output folder). Skipped as
/// well: folders whose names start with `.` or `_` (a run's staging folder, left behind
/// when a run is killed while publishing, or a hidden backup) and closes made at this
/// run's own as-of (a backup copy of this very close kept beside it before a `--force`
/// rerun): reading them would leave this run nothing to close. Closes at a later as-of are
/// read: their periods are closed, whichever month is re-run. A `dir` that does not exist
/// yet holds no closes (the first close; [`check_layout`] has put its output inside it).
pub fn load(dir: &Path, exclude: Option<&Path>, as_of: Micros) -> Result<History> {
    load_closes(closes_under(dir, exclude)?, as_of)
}

/// [`load`] of `closes`, listed by [`closes_under`] (a close lists them once, before its
/// output's lock, to refuse a second close, and reads them after it).
pub fn load_closes(closes: Vec<EarlierClose>, as_of: Micros) -> Result<History> {
    let mut history = History::default();
    for close in read_at(closes, as_of) {
        history.manifests.push(close.input_entry());
        let EarlierClose {
            folder, manifest, ..
        } = close;
        let invoices = folder.join("invoices.parquet");
        // Read whole, so checked by its bytes (a few rows per account).
        let invoice_bytes = bytes::Bytes::from(
            crate::write::read_regular(&invoices).map_err(|e| TallyError::io(&invoices, e))?,
        );
        let invoice_sha256 = crate::write::sha256_hex(&invoice_bytes);
        check_listed_bytes(&manifest, &folder, "invoices.parquet", &invoice_sha256)?;
        read_columns_of(invoice_bytes, &invoices, &mut |batch| {
            let accounts =
                typed_column(batch, "account_id", &invoices, |a| a.as_string_opt::<i32>())?;
            let starts = typed_column(batch, "period_start", &invoices, |a| {
                a.as_primitive_opt::<TimestampMicrosecondType>()
            })?;
            for i in 0..batch.num_rows() {
                history
                    .closed
                    .entry(accounts.value(i).to_string())
                    .or_default()
                    .push(starts.value(i));
            }
            Ok(())
        })?;
        // Checked now (a missing or unreadable file is named before the run starts), read
        // later for the ids that need it.
        let billed = folder.join("billed_events.parquet");
        let billed_rows = check_billed(&billed)?;
        check_listed_rows(&manifest, &folder, "billed_events.parquet", billed_rows)?;
        history.billed_files.push(billed);
    }
    Ok(history)
}
