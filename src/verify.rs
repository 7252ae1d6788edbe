//! `tally verify`: whether a published output folder is still what the run wrote, and
//! (with `--data`, `--history`) whether its inputs are still what the run read, by the
//! sha256 of every file its `manifest.json` lists. For finance handing a month's folder to
//! an auditor ("are these the job's files?") and for on-call before re-using a night's
//! figures ("did an export land after the run?").

use crate::error::{Result, TallyError};
use crate::model::Dataset;
use crate::report::{FileEntry, Manifest};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The manifest of an output folder.
const MANIFEST: &str = "manifest.json";

/// What to verify: an output folder, and the inputs to hold against its manifest.
pub struct VerifyRequest {
    pub out: PathBuf,
    /// The data root the run read (its price book and datasets).
    pub data: Option<PathBuf>,
    /// The folder of earlier closes a close read (`--history`).
    pub history: Option<PathBuf>,
    /// The sha256 the run logged of the `manifest.json` it published (its `manifest` log
    /// line), lowercase hex: the manifest cannot vouch for itself, and one edited with the
    /// outputs it lists passes every other check.
    pub manifest_sha256: Option<String>,
}

/// One way a file differs from the manifest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Difference {
    /// `manifest.json` whose sha256 is not the one the run logged (`--manifest-sha256`).
    ManifestChanged,
    /// An output whose bytes are not the ones written (its sha256 differs).
    OutputChanged(String),
    /// An output that is now a folder, a link or a special file (the run writes files).
    OutputNotAFile(String),
    /// An output the manifest lists that is not in the folder.
    OutputMissing(String),
    /// A file in the folder that the manifest does not list: added after the run, or its
    /// entry was taken out of `manifest.json` (the manifest cannot vouch for itself).
    OutputNotListed(String),
    /// An input whose bytes are not the ones read.
    InputChanged(String),
    /// An input the run read that is gone.
    InputGone(String),
    /// A file the run would read now that it did not read (an export that landed later; for
    /// a close, an earlier close made since).
    InputNew(String),
}

impl Difference {
    pub fn is_output(&self) -> bool {
        matches!(
            self,
            Difference::ManifestChanged
                | Difference::OutputChanged(_)
                | Difference::OutputNotAFile(_)
                | Difference::OutputMissing(_)
                | Difference::OutputNotListed(_)
        )
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, path, why): (&str, &str, &str) = match self {
            Difference::ManifestChanged => (
                "manifest changed",
                MANIFEST,
                " (its sha256 is not the one given with --manifest-sha256, which the run \
                 logged: it was edited or replaced since)",
            ),
            Difference::OutputChanged(p) => {
                ("output changed", p, " (its sha256 is not the manifest's)")
            }
            Difference::OutputNotAFile(p) => (
                "output changed",
                p,
                " (not a regular file: the run writes only files)",
            ),
            Difference::OutputMissing(p) => ("output missing", p, ""),
            Difference::OutputNotListed(p) => (
                "output not in the manifest",
                p,
                " (added after the run, or its manifest entry was removed)",
            ),
            Difference::InputChanged(p) => {
                ("input changed", p, " (its sha256 is not the one read)")
            }
            Difference::InputGone(p) => ("input gone", p, ""),
            Difference::InputNew(p) => ("input new", p, " (the run did not read it)"),
        };
        // A file named with a newline must not print a line that reads as another finding.
        write!(f, "{what}: {}{why}", crate::error::controls_escaped(path))
    }
}

/// What `verify` found.
#[derive(Debug)]
pub struct Verification {
    /// The manifest's command and as-of (`reconcile`, `2026-11-20T00:00:00Z`).
    pub command: String,
    pub as_of: String,
    /// Outputs the manifest lists.
    pub outputs: usize,
    /// Inputs the manifest lists that were held against `--data` / `--history`.
    pub inputs_checked: usize,
    /// Inputs the manifest lists that no flag given covers (earlier closes without
    /// `--history`, everything without `--data`).
    pub inputs_not_checked: usize,
    /// Closes under `--history` at a later as-of than this close: built on it, not read by
    /// it (not differences).
    pub later_closes: usize,
    /// Whether `manifest.json` is the one the run logged (`None`: no `--manifest-sha256`).
    pub manifest_as_logged: Option<bool>,
    /// Every difference, outputs first, each kind in path order.
    pub differences: Vec<Difference>,
}

/// Check `req.out` against its manifest (and the inputs given). An unreadable folder or
/// manifest is an error (exit 2); differences are findings, not errors.
pub fn verify(req: &VerifyRequest) -> Result<Verification> {
    let (manifest, as_of, manifest_sha256) = read_manifest(&req.out)?;
    let mut differences = Vec::new();
    let manifest_as_logged =
        (req.manifest_sha256.as_ref()).map(|logged| *logged == manifest_sha256);
    if manifest_as_logged == Some(false) {
        differences.push(Difference::ManifestChanged);
    }
    differences.extend(output_differences(&req.out, &manifest.outputs)?);
    let (history_inputs, data_inputs): (Vec<FileEntry>, Vec<FileEntry>) = (manifest.inputs)
        .iter()
        .cloned()
        .partition(|f| f.path.starts_with("history/"));
    let mut inputs_checked = 0;
    if let Some(data) = &req.data {
        check_data_root(data)?;
        // The inputs as a run of the data root would fingerprint them now: its listing and
        // its manifest entries.
        let census = crate::census::Census::take(data)?;
        let now = crate::fingerprint_files(data, &census, true)?;
        differences.extend(input_differences(&data_inputs, &now));
        inputs_checked += data_inputs.len();
    }
    let mut later_closes = 0;
    if let Some(history) = &req.history {
        check_history(history, &req.out, &manifest)?;
        // A close at a later as-of is built on this one (a rerun would refuse over it), not
        // an input it lacks: counted apart, never a difference.
        let (later, earlier): (Vec<_>, Vec<_>) =
            (crate::history::earlier_closes(history, Some(&req.out), as_of)?.into_iter())
                .partition(|close| close.as_of > as_of);
        later_closes = later.len();
        let now: Vec<_> = earlier.iter().map(|close| close.input_entry()).collect();
        differences.extend(input_differences(&history_inputs, &now));
        inputs_checked += history_inputs.len();
    }
    differences.sort();
    Ok(Verification {
        command: manifest.command,
        as_of: manifest.as_of,
        outputs: manifest.outputs.len(),
        inputs_checked,
        inputs_not_checked: manifest.inputs.len() - inputs_checked,
        later_closes,
        manifest_as_logged,
        differences,
    })
}

fn manifest_path(out: &Path) -> PathBuf {
    out.join(MANIFEST)
}

/// A data root a run would read (a folder with the price book and the required dataset
/// folders), else exit 2: a mistyped `--data` would otherwise list every input as gone.
fn check_data_root(data: &Path) -> Result<()> {
    crate::census::check_data_root(data)?;
    let datasets = (Dataset::ALL.into_iter())
        .filter(|dataset| dataset.required())
        .map(Dataset::name);
    let required: Vec<&str> = std::iter::once("pricebook.toml").chain(datasets).collect();
    if let Some(missing) = required.iter().find(|name| !data.join(name).exists()) {
        return Err(TallyError::config(
            data.display().to_string(),
            format!("is not a data root (no {missing}): give --data the data root the run read"),
        ));
    }
    Ok(())
}

/// `--history` is a close's, and an existing folder (a mistyped one would list every earlier
/// close as gone).
fn check_history(history: &Path, out: &Path, manifest: &Manifest) -> Result<()> {
    if manifest.command != "close" {
        return Err(TallyError::config(
            "command line",
            format!(
                "--history applies to a close's folder; {} holds a {}",
                out.display(),
                manifest.command
            ),
        ));
    }
    if !history.is_dir() {
        return Err(TallyError::config(
            history.display().to_string(),
            "is not a folder: give --history the folder of earlier closes the close read",
        ));
    }
    // A close folder given as the history (an earlier month's): the close's exit 2, not a
    // list of inputs "gone". (The folder verified need not be inside the history: a copy
    // handed to an auditor is verified against the history it was made with.)
    crate::history::refuse_an_output_folder_as_history(history)
}

/// The folder's `manifest.json`, its as-of and its sha256, refused with what the folder is
/// instead.
fn read_manifest(out: &Path) -> Result<(Manifest, crate::time::Micros, crate::write::Sha256Hex)> {
    let path = manifest_path(out);
    let why = match std::fs::metadata(out) {
        Ok(meta) if meta.is_dir() => None,
        Ok(_) => Some("is not a folder"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("does not exist"),
        Err(e) => return Err(TallyError::io(out, e)),
    };
    if let Some(why) = why {
        if let Some(old) = crate::write::stranded_of(out).first() {
            return Err(TallyError::config(
                out.display().to_string(),
                format!(
                    "{why}; its previous output is in {}, swapped out by a publish that was \
                     stopped before the new output took its place: rename it back (mv {} {})",
                    old.display(),
                    old.display(),
                    out.display()
                ),
            ));
        }
        return Err(TallyError::config(
            out.display().to_string(),
            format!("{why}: give `tally verify` the folder a run published (its --out)"),
        ));
    }
    if out.join(crate::shard::SHARD_MANIFEST).is_file() {
        return Err(TallyError::config(
            out.display().to_string(),
            "is a shard's part of a sharded run (it holds shard.json): `tally merge` checks \
             its files; verify the merged folder",
        ));
    }
    if !path.exists() {
        let hint = match crate::write::stranded_of(out).first() {
            Some(old) => format!(
                "; its previous output is in {}, swapped out by a publish that was stopped \
                 before the new output took its place: remove this folder and rename it back \
                 (mv {} {})",
                old.display(),
                old.display(),
                out.display()
            ),
            None => String::new(),
        };
        return Err(TallyError::config(
            out.display().to_string(),
            format!("holds no manifest.json: not a folder a tally run published{hint}"),
        ));
    }
    let (manifest, manifest_sha256) = Manifest::read(&path)?;
    if let Some(bad) =
        (manifest.outputs.iter().chain(&manifest.inputs)).find(|f| !is_plain_relative(&f.path))
    {
        return Err(TallyError::input(
            path.display().to_string(),
            format!(
                "unreadable manifest: {:?} is not a path inside the folder (absolute, or \
                 with `.` or `..`)",
                bad.path
            ),
        ));
    }
    // A path listed twice would be counted, and compared, twice: no run lists one so.
    for listed in [&manifest.outputs, &manifest.inputs] {
        let mut seen = std::collections::HashSet::new();
        if let Some(again) = listed.iter().find(|f| !seen.insert(f.path.as_str())) {
            return Err(TallyError::input(
                path.display().to_string(),
                format!("unreadable manifest: {:?} is listed twice", again.path),
            ));
        }
    }
    if manifest.tool != "tally" {
        return Err(TallyError::input(
            path.display().to_string(),
            format!("not a tally manifest (its tool is {:?})", manifest.tool),
        ));
    }
    // Both go into verify's last line: only what a run writes (a newline in either could
    // forge a finding's line).
    if !matches!(manifest.command.as_str(), "reconcile" | "close") {
        return Err(TallyError::input(
            path.display().to_string(),
            format!(
                "unreadable manifest: `command` is {:?}, not reconcile or close",
                manifest.command
            ),
        ));
    }
    let Some(as_of) = crate::time::parse_instant(&manifest.as_of) else {
        return Err(TallyError::input(
            path.display().to_string(),
            "unreadable manifest: `as_of` is not an instant",
        ));
    };
    Ok((manifest, as_of, manifest_sha256))
}

/// A `/`-separated relative path of plain names, as a run writes them: no root, no `.`,
/// `..` or empty part (a hand-edited manifest must not make verify read outside OUT).
fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\0'))
}

/// The outputs that differ from `listed`: changed, missing, and files the manifest does
/// not list (`manifest.json` itself is the list, not on it).
fn output_differences(out: &Path, listed: &[FileEntry]) -> Result<Vec<Difference>> {
    let mut differences: Vec<Difference> = listed
        .par_iter()
        .map(|entry| {
            let path = out.join(&entry.path);
            // Not following links: the run writes files only, and a link (or a pipe, which
            // would never end a read) in its place is not what it wrote.
            match std::fs::symlink_metadata(&path) {
                // A folder on its path replaced by a file: missing as well.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
                {
                    Ok(Some(Difference::OutputMissing(entry.path.clone())))
                }
                Err(e) => Err(TallyError::io(&path, e)),
                Ok(meta) if !meta.file_type().is_file() => {
                    Ok(Some(Difference::OutputNotAFile(entry.path.clone())))
                }
                Ok(_) => Ok((crate::write::sha256_file(&path)? != entry.sha256)
                    .then(|| Difference::OutputChanged(entry.path.clone()))),
            }
        })
        .filter_map(Result::transpose)
        .collect::<Result<_>>()?;
    let listed: std::collections::HashSet<&str> = listed.iter().map(|f| f.path.as_str()).collect();
    for path in files_under(out, "")? {
        if path != MANIFEST && !listed.contains(path.as_str()) {
            differences.push(Difference::OutputNotListed(path));
        }
    }
    Ok(differences)
}

/// Every file under `dir`, as `/`-separated paths relative to it (links not followed:
/// the run writes none), hidden names included.
fn files_under(dir: &Path, rel: &str) -> Result<Vec<String>> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| TallyError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TallyError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = match rel {
            "" => name,
            _ => format!("{rel}/{name}"),
        };
        let kind = entry
            .file_type()
            .map_err(|e| TallyError::io(entry.path(), e))?;
        match kind.is_dir() {
            true => files.extend(files_under(&entry.path(), &path)?),
            false => files.push(path),
        }
    }
    Ok(files)
}

/// How the inputs found `now` differ from those the manifest lists (`listed`): the run's
/// own comparison (a close's rerun refuses on the same changes).
fn input_differences(listed: &[FileEntry], now: &[FileEntry]) -> Vec<Difference> {
    (crate::input_changes(listed, now).into_iter())
        .map(|change| match change {
            crate::InputChange::Changed(path) => Difference::InputChanged(path.to_string()),
            crate::InputChange::Gone(path) => Difference::InputGone(path.to_string()),
            crate::InputChange::New(path) => Difference::InputNew(path.to_string()),
        })
        .collect()
}
