//! Scale-out: `--out OUT --shard I/N` computes the accounts of shard I (partitions
//! `p mod N = I`) and writes its part to `OUT.shards/shard=I/`; `tally merge --out OUT`
//! finishes the parts of all N shards into OUT, byte-identical to a run on one machine.
//! Shards are given the final folder as `--out` (like a single run), so that a close's
//! `--history` skips the run's own output the same way whether it is sharded or not.
//!
//! A shard folder holds `partial.bin` (the shard's rows before output ordering, postcard),
//! a close shard's run files (`billed-K.bin`, `lines-K.bin`: its billed events and invoice
//! lines in order) and `shard.json` (what it was made from: command, as-of, settle,
//! buckets, N, I and the input fingerprint, plus the checksums of `partial.bin` and of each
//! run file). It is published atomically like
//! any output folder, so a killed shard leaves either its previous part or nothing.

use crate::error::{Result, TallyError};
use crate::pipeline;
use crate::report::FileEntry;
use crate::run::{self, Partial, RunSettings};
use crate::runs::Run;
use crate::time::Micros;
use crate::{census, collect};
use crate::{prepare, publish_run, write, JobOutcome, JobRequest};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const SHARD_MANIFEST: &str = "shard.json";
pub const PARTIAL: &str = "partial.bin";

/// The layout of `partial.bin` this build writes and reads. 2: discrepancy rows carry
/// `entry_account_ids`; 3: breakdown lines carry their units.
pub const PARTIAL_FORMAT: u32 = 3;

fn first_partial_format() -> u32 {
    1
}

impl ShardManifest {
    /// The settle the shard ran with (`settle_seconds` is checked to be one a shard runs
    /// with when the file is read, [`read_manifest`], so this cannot overflow).
    fn settle_micros(&self) -> i64 {
        self.settle_seconds * 1_000_000
    }
}

/// `shard.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardManifest {
    pub tool: String,
    pub version: String,
    pub command: String,
    pub as_of: String,
    pub settle_seconds: i64,
    pub buckets: u32,
    pub shard: u32,
    pub shards: u32,
    /// The data root, made absolute against the folder the shard ran in (the merge reads
    /// the price book and the file list from it, wherever it runs).
    pub data: PathBuf,
    pub inputs: Vec<FileEntry>,
    pub partial_sha256: String,
    /// The layout of `partial.bin` ([`PARTIAL_FORMAT`]; 1 in shard.json files written
    /// before the field was). postcard is not self-describing: a partial of another layout
    /// could decode into wrong rows, so a merge refuses it by this number first.
    #[serde(default = "first_partial_format")]
    pub partial_format: u32,
    /// The shard's run files (close: billed events, invoice lines), beside `partial.bin`.
    #[serde(default)]
    pub runs: Vec<FileEntry>,
    pub accounts: u64,
    /// Whether the shard ran with `--history` (a close): its merge then publishes into that
    /// history and takes its lock, also when it held no earlier close (no `history/` input).
    #[serde(default)]
    pub read_history: bool,
    /// The history folder the shard read, recorded as the data root is
    /// (`recorded_folder`); `None` without `--history`, and in shards of a build before
    /// the field. A merge publishes only directly inside it: a close published elsewhere is
    /// not seen by the next close under the history, which would close and invoice its
    /// periods again.
    #[serde(default)]
    pub history: Option<PathBuf>,
    /// The build that computed the shard ([`this_build`]); empty in shards of a build
    /// before the field.
    #[serde(default)]
    pub build: String,
}

impl ShardManifest {
    /// Whether the shards ran with `--history`: said by `read_history`, and by the earlier
    /// closes listed as `history/...` inputs in shards of a build before that field.
    fn reads_history(&self) -> bool {
        self.read_history || (self.inputs.iter()).any(|f| f.path.starts_with("history/"))
    }
}

/// This build of tally: the sha256 of the source, toolchain and build settings it was built
/// from (`build.rs`). Every build says version 0.1.0 until a release, and two builds of one version may write
/// different outputs (a fix between them): shards of two builds merged would mix both (an
/// Indexed Job whose nodes hold two images under one tag). A shard records it, and a merge
/// refuses shards of another build than its own. Builds of one source for two
/// architectures, stripped or not, are one build.
pub fn this_build() -> &'static str {
    env!("TALLY_BUILD_ID")
}

/// A build as messages show it: the sha256's first 12 digits.
fn short_build(build: &str) -> &str {
    build.get(..12).unwrap_or(build)
}

/// Where the shards of the run publishing `out` go: `OUT.shards` beside it.
pub fn shards_root(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "out".into());
    name.push(".shards");
    out.with_file_name(name)
}

/// The folder of shard `shard` of the run publishing `out`.
pub fn shard_folder(out: &Path, shard: u32) -> PathBuf {
    shards_root(out).join(format!("shard={shard}"))
}

/// `I/N` → (I, N), with 0 ≤ I < N ≤ the number of account partitions.
pub fn parse_shard(text: &str) -> std::result::Result<(u32, u32), String> {
    let (i, n) = text
        .split_once('/')
        .ok_or_else(|| format!("--shard {text} is not of the form I/N, e.g. 0/4"))?;
    let i: u32 = i
        .trim()
        .parse()
        .map_err(|_| format!("--shard {text}: {i} is not a number"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("--shard {text}: {n} is not a number"))?;
    check_shard(i, n, "I", "N").map_err(|why| format!("--shard {text}: {why}"))?;
    Ok((i, n))
}

/// Shard `i` of `n` is one: 0 ≤ i < n ≤ the number of account partitions. The reason it is
/// not names the two numbers as the caller calls them (`I`/`N` of `--shard I/N`, or the
/// environment variables of a Kubernetes Indexed Job).
pub fn check_shard(i: u32, n: u32, i_name: &str, n_name: &str) -> std::result::Result<(), String> {
    if n == 0 || i >= n {
        return Err(format!(
            "{i_name} must be in 0..{n_name} and {n_name} at least 1"
        ));
    }
    let most = crate::route::PARTITIONS;
    if n > most {
        return Err(format!("at most {most} shards (the account partitions)"));
    }
    Ok(())
}

/// A folder (the data root, the history folder) as a shard records it: absolute, as
/// written where that is the folder the shard read (a mount path such as `/data` stays as
/// it is, whatever it links to on this machine: another machine's shards may name the
/// same root so), else where the kernel took it (`link/../data` folded as text is another
/// folder, or none).
fn recorded_folder(folder: &Path) -> PathBuf {
    let written = crate::normalised(folder);
    let real = crate::resolved(folder);
    match written.canonicalize().ok() == real.canonicalize().ok() {
        true => written,
        false => real,
    }
}

/// Compute shard `shard` of `shards` and publish it under `req.out/shard=I/`.
pub fn run_shard(req: &JobRequest, shard: u32, shards: u32) -> Result<JobOutcome> {
    let folder = shard_folder(&req.out, shard);
    // What the merge would refuse of `--out`, refused before the shard computes, and
    // before its lock makes the shards' folder beside `--out`.
    crate::check_replaceable_before_lock(&req.out)?;
    write::refuse_a_stranded_output(&req.out)?;
    let prepared = prepare(req, &folder)?;
    let settings = req.settings(prepared.history.clone());
    let census = census::Census::take(&req.data)?.with_pricebook(prepared.pricebook.clone());
    let compute = || {
        let inputs = census::inputs_listed(&settings.data, &census)?;
        let layout = pipeline::layout(&settings, &census, shard, shards)?;
        pipeline::compute(&settings, &inputs, &layout, &req.progress)
    };
    let refused = refuse_a_close_over_other_inputs(req, &prepared, &census)?;
    let (mut partial, fingerprint) = match refused {
        Some(inputs) => (compute()?, inputs),
        None => crate::beside_fingerprint(req, &prepared.history, &census, compute)?,
    };
    drop(census);
    let accounts = partial.results.len() as u64;

    let stage = req.progress.stage("write");
    let staging = write::create_staging(&folder)?;
    let written = write_shard(
        &staging,
        &settings,
        &mut partial,
        fingerprint,
        (shard, shards),
        req.history.as_deref(),
    );
    if let Err(e) = written {
        write::discard_staging(&staging);
        return Err(e);
    }
    write::publish(&staging, &folder)?;
    stage.done(accounts, accounts);
    Ok(JobOutcome::ShardWritten {
        folder,
        accounts,
        forced: req.force,
    })
}

/// A close shard whose `--out` already holds a close: the inputs fingerprinted first, and
/// a close of other inputs refused (exit 3, without `--force`) before the shard computes,
/// as a run on one machine is; the merge would refuse it too, but only after every shard
/// had computed the whole close. So replacing a sharded close takes `--force` on every
/// shard and on the merge, as the refusal says. A close of the same inputs is computed
/// all the same: the merge then finds nothing to do, and needs the shard folders to find
/// it. `None` (not fingerprinted) for a reconcile or an `--out` without a close.
fn refuse_a_close_over_other_inputs(
    req: &JobRequest,
    prepared: &crate::Prepared,
    census: &census::Census,
) -> Result<Option<Vec<FileEntry>>> {
    if req.mode != crate::model::Mode::Close || !req.out.join("manifest.json").exists() {
        return Ok(None);
    }
    let inputs = crate::fingerprint(req, &prepared.history, census, true)?;
    crate::check_earlier_close_advising(req, &inputs, "rerun every shard and then the merge")?;
    Ok(Some(inputs))
}

fn write_shard(
    dir: &Path,
    settings: &RunSettings,
    partial: &mut Partial,
    inputs: Vec<FileEntry>,
    (shard, shards): (u32, u32),
    history: Option<&Path>,
) -> Result<()> {
    // Run files (billed events, invoice lines) become files of the shard folder, named
    // relative to it.
    let mut runs = Vec::new();
    let billed = std::mem::take(&mut partial.billed);
    partial.billed = keep_runs(dir, "billed", billed, &mut runs)?;
    let lines = std::mem::take(&mut partial.lines);
    partial.lines = keep_runs(dir, "lines", lines, &mut runs)?;
    let partial_sha256 = write::write_through(&dir.join(PARTIAL), |w| serialize_to(&*partial, w))?;
    let manifest = ShardManifest {
        tool: "tally".into(),
        version: write::VERSION.into(),
        command: settings.mode.name().into(),
        as_of: crate::time::format_instant(settings.as_of),
        settle_seconds: settings.settle_micros / 1_000_000,
        buckets: settings.buckets,
        shard,
        shards,
        // Absolute: a relative --data named a folder relative to where the shard ran,
        // which the merge (often run elsewhere) is not.
        data: recorded_folder(&settings.data),
        inputs,
        partial_sha256,
        partial_format: PARTIAL_FORMAT,
        runs,
        accounts: partial.results.len() as u64,
        read_history: history.is_some(),
        history: history.map(recorded_folder),
        build: this_build().to_string(),
    };
    let json = serde_json::to_string_pretty(&manifest)
        .map_err(|e| TallyError::output(SHARD_MANIFEST, e))?;
    write::write_bytes(&dir.join(SHARD_MANIFEST), format!("{json}\n").as_bytes())?;
    Ok(())
}

/// Serialize `value` with postcard into `out`; a failed write is reported as itself.
/// (postcard's `to_io` reports any failed write as "SerializeBufferFull", which would hide
/// a full disk: the writer in between keeps the real error.)
fn serialize_to(
    value: &impl Serialize,
    out: impl std::io::Write,
) -> std::result::Result<(), String> {
    let mut failed = None;
    let serialized = postcard::to_io(
        value,
        KeepIoError {
            inner: out,
            failed: &mut failed,
        },
    )
    .map(drop);
    match (failed, serialized) {
        (Some(e), _) => Err(e.to_string()),
        (None, serialized) => serialized.map_err(|e| e.to_string()),
    }
}

/// A writer that keeps the first error of `inner` in `failed` (and reports a stand-in).
struct KeepIoError<'a, W> {
    inner: W,
    failed: &'a mut Option<std::io::Error>,
}

impl<W: std::io::Write> std::io::Write for KeepIoError<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf).map_err(|e| self.keep(e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().map_err(|e| self.keep(e))
    }
}

impl<W> KeepIoError<'_, W> {
    fn keep(&mut self, e: std::io::Error) -> std::io::Error {
        let stand_in = std::io::Error::new(e.kind(), "kept by KeepIoError");
        self.failed.get_or_insert(e);
        stand_in
    }
}

/// Write `runs` into the shard folder as `{kind}-{k}.bin`, listing them in `listed`; the
/// returned runs name the files relative to the folder.
fn keep_runs<T: crate::runs::Keyed>(
    dir: &Path,
    kind: &str,
    runs: Vec<Run<T>>,
    listed: &mut Vec<FileEntry>,
) -> Result<Vec<Run<T>>> {
    let mut kept = Vec::with_capacity(runs.len());
    for (k, run) in runs.into_iter().enumerate() {
        let name = format!("{kind}-{k}.bin");
        let target = dir.join(&name);
        let rows = run.rows();
        match run {
            Run::Memory(accounts) => {
                crate::runs::write_run::<T, _>(&target, accounts.iter().flatten())?;
            }
            Run::File(path, _) => {
                std::fs::copy(&path, &target).map_err(|e| TallyError::write(&target, e))?;
            }
        }
        // On disk before the shard is published: `write::publish` syncs the folder.
        listed.push(FileEntry {
            sha256: write::sha256_file(&target)?,
            path: name.clone(),
            rows: Some(rows),
        });
        kept.push(Run::File(PathBuf::from(name), rows));
    }
    Ok(kept)
}

/// Point a shard's runs at its folder, checking each file against `shard.json`: a run is
/// a file of the shard's own folder (a plain name) that `shard.json` lists, with its rows
/// and checksum, and no two runs are one file (`used`: the names taken so far).
fn locate_runs<T>(
    folder: &Path,
    m: &ShardManifest,
    runs: &mut [Run<T>],
    used: &mut std::collections::BTreeSet<PathBuf>,
    refuse: &dyn Fn(String) -> TallyError,
) -> Result<()> {
    for run in runs {
        let Run::File(name, rows) = run else {
            return Err(refuse("it holds rows outside run files".into()));
        };
        let mut parts = name.components();
        let plain = matches!(
            (parts.next(), parts.next()),
            (Some(std::path::Component::Normal(_)), None)
        );
        if !plain {
            return Err(refuse(format!(
                "{} is not a file of the shard's folder",
                name.display()
            )));
        }
        let listed = m
            .runs
            .iter()
            .find(|f| Path::new(&f.path) == name.as_path() && f.rows == Some(*rows))
            .ok_or_else(|| {
                refuse(format!(
                    "{} is not listed in {SHARD_MANIFEST}",
                    name.display()
                ))
            })?;
        if !used.insert(name.clone()) {
            return Err(refuse(format!("{} is named twice", name.display())));
        }
        let file = folder.join(name.as_path());
        // Hashed as `open_regular` opens it: anything but a regular file is refused unread.
        let sha = write::sha256_file(&file).map_err(|e| {
            let why = match e {
                TallyError::Io { source, .. } if write::is_not_a_regular_file(&source) => {
                    "is not a regular file"
                }
                _ => "cannot be read",
            };
            refuse(format!("{} {why}", name.display()))
        })?;
        if sha != listed.sha256 {
            return Err(refuse(format!(
                "{} does not match its checksum in {SHARD_MANIFEST}",
                name.display()
            )));
        }
        // Checked before the merge starts writing: a shard of a build whose run files had
        // another format (its checksum matches: it is that build's file).
        let ours = crate::runs::is_run_file(&file)
            .map_err(|_| refuse(format!("{} cannot be read", name.display())))?;
        if !ours {
            return Err(refuse(format!(
                "{} is not a run file of this tally build (written by another version?); compute the shard again with this binary",
                name.display()
            )));
        }
        *name = file;
    }
    Ok(())
}

/// The shard folders named by `sources`: each is a shard folder (with `shard.json`) or a
/// folder holding `shard=I/` folders.
fn shard_folders(sources: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for source in sources {
        if source.join(SHARD_MANIFEST).is_file() {
            found.push(source.clone());
            continue;
        }
        let entries = std::fs::read_dir(source).map_err(|e| TallyError::io(source, e))?;
        let mut here: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("shard="))
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        if here.is_empty() {
            return Err(TallyError::Refused(format!(
                "{} holds no shard folders (shard=I/ with {SHARD_MANIFEST}); run the shards first",
                source.display()
            )));
        }
        here.sort();
        found.extend(here);
    }
    Ok(found)
}

fn read_manifest(folder: &Path) -> Result<ShardManifest> {
    let path = folder.join(SHARD_MANIFEST);
    // A regular file only: a FIFO would block the read forever, `/dev/zero` fill memory.
    let text = write::read_regular_to_string(&path).map_err(|e| {
        TallyError::Refused(match write::is_not_a_regular_file(&e) {
            true => format!(
                "{}: {}: it was replaced since the shard wrote it; rerun the shard",
                path.display(),
                write::NOT_A_REGULAR_FILE
            ),
            false => format!(
                "{} has no readable {SHARD_MANIFEST}: the shard did not finish; rerun it",
                folder.display()
            ),
        })
    })?;
    let manifest: ShardManifest = serde_json::from_str(&text).map_err(|e| {
        TallyError::Refused(format!(
            "{} is not a tally shard manifest ({e}); rerun the shard",
            path.display()
        ))
    })?;
    // A shard ran with a settle its flags allowed; any other value (it is multiplied into
    // microseconds for the merge) is a damaged file.
    let most = run::MAX_SETTLE_MICROS / 1_000_000;
    if !(0..=most).contains(&manifest.settle_seconds) {
        return Err(TallyError::Refused(format!(
            "{} holds settle_seconds {}, not a settle a shard runs with (0 to {most}); the \
             file is damaged: rerun the shard",
            path.display(),
            manifest.settle_seconds
        )));
    }
    Ok(manifest)
}

/// What makes two shards parts of the same run (everything but the shard's own fields;
/// the data root as the folder it is here, so that two spellings of it (the folder, a link
/// to it) are one root; none when the merge is given `--data`, which it reads instead, the
/// shards' inputs compared by their sha256 all the same: shards on machines whose links
/// lead one path to different mounts are one run).
fn run_identity(m: &ShardManifest, (data_given, history_given): (bool, bool)) -> ShardManifest {
    // Two spellings of one folder (a link to it) are one where it exists here.
    let one_spelling = |folder: &PathBuf| folder.canonicalize().unwrap_or_else(|_| folder.clone());
    ShardManifest {
        data: match data_given {
            true => PathBuf::new(),
            false => one_spelling(&m.data),
        },
        // A merge given --history (mounted elsewhere here) compares the closes the shards
        // read instead.
        history: match history_given {
            true => None,
            false => m.history.as_ref().map(one_spelling),
        },
        shard: 0,
        partial_sha256: String::new(),
        runs: Vec::new(),
        accounts: 0,
        ..m.clone()
    }
}

/// The shards are shards of one run, else exit 3 naming one that is not: the run most of
/// them belong to names the odd one out (shard 0 too, when it is the odd one); without a
/// majority (two shards, or as many runs as shards), the first two that differ are named
/// and the message says to rerun whichever is not of the run meant.
fn check_one_run(
    folders: &[PathBuf],
    manifests: &[ShardManifest],
    given: (bool, bool),
) -> Result<()> {
    let identities: Vec<ShardManifest> =
        (manifests.iter()).map(|m| run_identity(m, given)).collect();
    let members = |identity: &ShardManifest| identities.iter().filter(|i| *i == identity).count();
    let majority = identities
        .iter()
        .position(|i| members(i) * 2 > identities.len());
    // The odd one out is judged against the majority's run, else against shard 0's.
    let reference = majority.unwrap_or(0);
    let Some(odd) = identities.iter().position(|i| *i != identities[reference]) else {
        return Ok(());
    };
    let (odd_folder, reference_folder) = (folders[odd].display(), folders[reference].display());
    let differences = differences(&identities[reference], &identities[odd]);
    Err(TallyError::Refused(match majority {
        // The majority may be the stale ones: after the inputs changed, a shard rerun
        // alone is the odd one out.
        Some(_) if manifests[odd].inputs != manifests[reference].inputs => format!(
            "{odd_folder} is a shard of another run than {reference_folder} ({differences}); \
             rerun it with the same inputs and settings, or, if the data root changed since \
             the shards ran, rerun all {} shards",
            manifests.len()
        ),
        Some(_) => format!(
            "{odd_folder} is a shard of another run than {reference_folder} ({differences}); \
             rerun it with the same inputs and settings"
        ),
        None => format!(
            "{odd_folder} and {reference_folder} are shards of different runs ({differences}); \
             rerun the one not made from the inputs and settings of the run you mean"
        ),
    }))
}

/// Describe how shard `b` differs from shard `a` (for the refusal message).
fn differences(a: &ShardManifest, b: &ShardManifest) -> String {
    // Every field of a run's identity (`run_identity`) is named below: a field added to
    // `ShardManifest` does not compile here until it is (the refusal once read "shards of
    // different runs ()").
    let ShardManifest {
        tool: _,
        version: _,
        command: _,
        as_of: _,
        settle_seconds: _,
        buckets: _,
        shard: _,
        shards: _,
        data: _,
        inputs: _,
        partial_sha256: _,
        partial_format: _,
        runs: _,
        accounts: _,
        read_history: _,
        history: _,
        build: _,
    } = a;
    let mut what = Vec::new();
    if a.command != b.command {
        what.push(format!("command {} vs {}", b.command, a.command));
    }
    if a.as_of != b.as_of {
        what.push(format!("as-of {} vs {}", b.as_of, a.as_of));
    }
    if a.settle_seconds != b.settle_seconds {
        what.push(format!(
            "settle {}s vs {}s",
            b.settle_seconds, a.settle_seconds
        ));
    }
    if a.buckets != b.buckets {
        // 0 is no --buckets (the run chose), not a bucket count.
        let buckets = |m: &ShardManifest| match m.buckets {
            crate::run::AUTOMATIC_BUCKETS => "automatic".to_string(),
            n => n.to_string(),
        };
        what.push(format!("buckets {} vs {}", buckets(b), buckets(a)));
    }
    if a.shards != b.shards {
        what.push(format!("{} shards vs {}", b.shards, a.shards));
    }
    if a.version != b.version {
        what.push(format!("tally {} vs {}", b.version, a.version));
    }
    if a.build != b.build {
        let build = |m: &ShardManifest| match m.build.is_empty() {
            true => "none recorded".to_string(),
            false => short_build(&m.build).to_string(),
        };
        what.push(format!("build {} vs {}", build(b), build(a)));
    }
    if a.tool != b.tool {
        what.push(format!("tool {:?} vs {:?}", b.tool, a.tool));
    }
    if a.partial_format != b.partial_format {
        what.push(format!(
            "partial.bin layout {} vs {}",
            b.partial_format, a.partial_format
        ));
    }
    if a.read_history != b.read_history {
        let read = |m: &ShardManifest| match m.read_history {
            true => "--history",
            false => "no --history",
        };
        what.push(format!("{} vs {}", read(b), read(a)));
    }
    if a.history != b.history {
        let folder = |m: &ShardManifest| match &m.history {
            Some(folder) => folder.display().to_string(),
            None => "none recorded".to_string(),
        };
        what.push(format!(
            "history folder {} vs {}: if they are one folder mounted at two paths, give the \
             merge --history with its path here",
            folder(b),
            folder(a)
        ));
    }
    // Two spellings of one folder are equal here ([`run_identity`]).
    if a.data != b.data {
        what.push(format!(
            "data root {} vs {}: if both hold the same files, give the merge --data",
            b.data.display(),
            a.data.display()
        ));
    }
    if a.inputs != b.inputs {
        what.push(format!(
            "inputs differ: {}",
            crate::listed_briefly(
                &(crate::input_changes(&a.inputs, &b.inputs).iter())
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            )
        ));
    }
    what.join("; ")
}

/// The refusal of a merge missing shards `missing` (their indices): where it looked (a shard
/// written elsewhere, another --out or a folder not yet copied, is then easy to tell from
/// one never run) and the command that writes the first missing one, with the settings
/// the others recorded.
fn missing_shards(
    req: &MergeRequest,
    sources: &[PathBuf],
    first: &ShardManifest,
    missing: &[usize],
) -> TallyError {
    const SHOWN: usize = 3;
    let mut looked_in: Vec<String> = (sources.iter().take(SHOWN))
        .map(|s| s.display().to_string())
        .collect();
    if sources.len() > SHOWN {
        looked_in.push(format!("{} more", sources.len() - SHOWN));
    }
    let n = first.shards;
    let index = missing[0];
    let folder = |i: &usize| format!("shard={i}");
    // The settings shard.json records that are not the defaults (another --settle or
    // --buckets is a shard of another run, which the merge refuses).
    let mut settings = String::new();
    if first.settle_micros() != run::DEFAULT_SETTLE_MICROS {
        settings.push_str(&format!(" --settle {}s", first.settle_seconds));
    }
    if first.buckets != run::AUTOMATIC_BUCKETS {
        settings.push_str(&format!(" --buckets {}", first.buckets));
    }
    // Its history folder is the one its output is directly inside (the close checks that).
    if first.reads_history() {
        // `--out c2` is inside the working folder: its history folder is `.`.
        let history = crate::write::folder_of(&req.out).display().to_string();
        settings.push_str(&format!(" --history {}", shell_word(&history)));
    }
    let command = format!(
        "tally {} --data {} --as-of {}{settings} --shard {index}/{n} --out {}",
        first.command,
        shell_word(&first.data.display().to_string()),
        first.as_of,
        shell_word(&req.out.display().to_string())
    );
    // Shards listed from elsewhere: the new shard's folder must be listed too.
    let written_to = shards_root(&req.out);
    let reads_it = (sources.iter()).any(|s| crate::resolved(s) == crate::resolved(&written_to));
    let then = match reads_it {
        true => "then merge again".to_string(),
        false => format!(
            "then merge again listing its folder {} too",
            shell_word(&written_to.join(folder(&missing[0])).display().to_string())
        ),
    };
    TallyError::Refused(format!(
        "missing {} of {n} shards in {}: {}; run them as the others ran (e.g. `{command}`, \
         or with the same --job), {then}",
        missing.len(),
        looked_in.join(", "),
        // A merge of one shard of 1,024 would otherwise name 1,023 folders on one line.
        crate::listed_briefly(&missing.iter().map(folder).collect::<Vec<_>>()),
    ))
}

/// `text` as one word of a POSIX shell command line: as it is when it holds nothing a
/// shell would split or expand, else in single quotes.
pub(crate) fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c);
    match !text.is_empty() && text.chars().all(plain) {
        true => text.to_string(),
        false => format!("'{}'", text.replace('\'', "'\\''")),
    }
}

/// What `tally merge` needs besides the shard folders.
pub struct MergeRequest {
    /// Shard folders or folders holding them (empty: `OUT.shards`).
    pub sources: Vec<PathBuf>,
    pub out: PathBuf,
    /// Overrides the data root recorded by the shards.
    pub data: Option<PathBuf>,
    /// Overrides the history folder recorded by the shards (a close's, mounted elsewhere
    /// here).
    pub history: Option<PathBuf>,
    pub force: bool,
    pub alert: crate::Alert,
    pub progress: crate::Progress,
}

/// Check that the shard folders are exactly shards 0..N of one run, then finish and
/// publish the run's outputs to `req.out`.
pub fn merge(req: &MergeRequest) -> Result<JobOutcome> {
    let sources = merge_sources(req)?;
    let folders = shard_folders(&sources)?;
    let stage = req.progress.stage("merge");
    let manifests = folders
        .iter()
        .map(|f| read_manifest(f))
        .collect::<Result<Vec<_>>>()?;
    check_builds(&folders, &manifests)?;
    check_one_run(
        &folders,
        &manifests,
        (req.data.is_some(), req.history.is_some()),
    )?;
    let first = &manifests[0];
    check_one_build(&folders, &manifests)?;
    check_every_shard_once(req, &sources, &folders, &manifests)?;
    let job = merge_job(req, &folders, first)?;
    // As a run's: published inside a dataset folder, the outputs would be the next run's
    // input.
    crate::refuse_out_inside_a_dataset(&job.data, &req.out)?;
    crate::refuse_an_unusable_out(&req.out)?;
    // Before the locks: a merge refused here leaves no lock file where it does not belong.
    refuse_out_outside_the_shards_history(first, &req.out, req.history.as_deref())?;
    // Before the lock too (see `prepare`).
    crate::check_replaceable_before_lock(&req.out)?;
    let _lock = crate::lock_output(&req.out)?;
    // A close whose shards read a history: its folder is the one `--out` is directly
    // inside (the shards checked that). The merge publishes into it, so it takes the
    // history's lock as a close on one machine does.
    let history = first.reads_history().then(|| write::folder_of(&req.out));
    let _history_lock = match &history {
        Some(dir) => Some(crate::lock_history(dir, false)?),
        None => None,
    };
    crate::check_replaceable(&req.out)?;
    crate::refuse_reconcile_over_close(&job)?;
    if let Some(done) = crate::check_earlier_close(&job, &first.inputs)? {
        return Ok(done);
    }
    if let Some(dir) = &history {
        check_history_unchanged(dir, &req.out, job.as_of, &first.inputs)?;
    }

    let inputs = census::inputs(&job.data)?;
    check_inputs_unchanged(&job.data, &inputs, first)?;
    let listed = listed_rows(&inputs, first, &folders[0])?;
    let mut partials = Vec::with_capacity(folders.len());
    for (folder, m) in folders.iter().zip(&manifests) {
        partials.push(read_partial(folder, m, &listed)?);
    }
    stage.done(first.shards.into(), partials.len() as u64);
    let settings = job.settings(crate::history::History::default());
    let output = collect::finish(settings, inputs, partials)?;
    publish_run(&job, &output, first.inputs.clone())
}

/// The folders a merge reads shards from (`--out`'s shards folder unless given), each
/// checked to be there.
fn merge_sources(req: &MergeRequest) -> Result<Vec<PathBuf>> {
    let sources = if req.sources.is_empty() {
        vec![shards_root(&req.out)]
    } else {
        req.sources.clone()
    };
    if let Some(missing) = sources.iter().find(|s| !s.is_dir()) {
        return Err(TallyError::Refused(format!(
            "{} does not exist: run the shards first (--out {} --shard I/N)",
            missing.display(),
            req.out.display()
        )));
    }
    Ok(sources)
}

/// Refuse shards of another tally version or build. Partial files and run files are read
/// as this binary writes them: shards of another tally version (a deploy between the
/// shards and their merge) are refused by name rather than decoded.
fn check_one_build(folders: &[PathBuf], manifests: &[ShardManifest]) -> Result<()> {
    let first = &manifests[0];
    if first.version != write::VERSION {
        return Err(TallyError::Refused(format!(
            "{} was computed by tally {}, and this is tally {}; merge with the version that ran the shards, or rerun them with this one",
            folders[0].display(),
            first.version,
            write::VERSION
        )));
    }
    if let Some((folder, m)) =
        (folders.iter().zip(manifests)).find(|(_, m)| m.partial_format != PARTIAL_FORMAT)
    {
        return Err(TallyError::Refused(format!(
            "{} was written by another build of tally {} (its partial.bin has layout {}, this \
             build reads {PARTIAL_FORMAT}); merge with the build that ran the shards, or rerun \
             them with this one",
            folder.display(),
            m.version,
            m.partial_format
        )));
    }
    Ok(())
}

/// Refuse the shards another build computed than this merge's (every build says 0.1.0
/// until a release: `this_build`), naming them all: only this build's shards merge here,
/// whatever build most of them are of (the run's majority named the one shard of this
/// build as the one to rerun).
fn check_builds(folders: &[PathBuf], manifests: &[ShardManifest]) -> Result<()> {
    let others: Vec<(&PathBuf, &ShardManifest)> = (folders.iter().zip(manifests))
        .filter(|(_, m)| m.build != this_build())
        .collect();
    let Some((_, other)) = others.first() else {
        return Ok(());
    };
    let theirs = match other.build.is_empty() {
        true => "records no build: a build before shards recorded theirs".to_string(),
        false => format!("build {}…", short_build(&other.build)),
    };
    let ours = short_build(this_build());
    let version = &other.version;
    Err(TallyError::Refused(match others.as_slice() {
        [(folder, _)] => format!(
            "{} was computed by another build of tally {version} ({theirs}; this one is \
             {ours}…); rerun it with this build, or merge with the build that ran it",
            folder.display()
        ),
        many => format!(
            "{} shards ({}) were computed by another build of tally {version} (the first: \
             {theirs}; this one is {ours}…); rerun them with this build, or merge with the \
             build that ran them",
            many.len(),
            crate::listed_briefly(
                &(many.iter())
                    .map(|(folder, _)| folder.display().to_string())
                    .collect::<Vec<_>>()
            )
        ),
    }))
}

/// Refuse a merge unless every shard of the run is given exactly once.
fn check_every_shard_once(
    req: &MergeRequest,
    sources: &[PathBuf],
    folders: &[PathBuf],
    manifests: &[ShardManifest],
) -> Result<()> {
    let first = &manifests[0];
    let n = first.shards;
    if n == 0 || n > crate::route::PARTITIONS {
        return Err(TallyError::Refused(format!(
            "{} claims {n} shards; a run has 1 to {}",
            folders[0].display(),
            crate::route::PARTITIONS
        )));
    }
    let mut seen: Vec<Option<&PathBuf>> = vec![None; n as usize];
    for (folder, m) in folders.iter().zip(manifests) {
        let slot = seen.get_mut(m.shard as usize).ok_or_else(|| {
            TallyError::Refused(format!(
                "{} claims shard {} of {n}",
                folder.display(),
                m.shard
            ))
        })?;
        if let Some(other) = slot {
            return Err(TallyError::Refused(format!(
                "shard {} of {n} is given twice: {} and {}",
                m.shard,
                other.display(),
                folder.display()
            )));
        }
        *slot = Some(folder);
    }
    let missing: Vec<usize> = (seen.iter().enumerate())
        .filter(|(_, s)| s.is_none())
        .map(|(i, _)| i)
        .collect();
    if !missing.is_empty() {
        return Err(missing_shards(req, sources, first, &missing));
    }

    Ok(())
}

/// The job the shards ran, as the merge publishes it: its command, as-of, settings and
/// data root (`--data`, or the shards' when it is a folder here).
fn merge_job(req: &MergeRequest, folders: &[PathBuf], first: &ShardManifest) -> Result<JobRequest> {
    let mode = match first.command.as_str() {
        "reconcile" => crate::model::Mode::Reconcile,
        "close" => crate::model::Mode::Close,
        other => {
            return Err(TallyError::Refused(format!(
                "{} holds shards of an unknown command `{other}`",
                folders[0].display()
            )))
        }
    };
    let as_of = crate::time::parse_instant(&first.as_of).ok_or_else(|| {
        TallyError::Refused(format!("{} has an unreadable as-of", folders[0].display()))
    })?;
    // In the years a shard's `--as-of` takes: the merged manifest records it for later
    // runs to read back.
    if !crate::time::in_instant_years(as_of) {
        return Err(TallyError::Refused(format!(
            "{} holds the as-of {}, outside the years 0001 to 9999, which no shard runs \
             with; the file is damaged: rerun the shards",
            folders[0].join(SHARD_MANIFEST).display(),
            first.as_of
        )));
    }
    let data = req.data.clone().unwrap_or_else(|| first.data.clone());
    // The shards' data root may not be mounted where the merge runs (another machine).
    if req.data.is_none() && !data.is_dir() {
        return Err(TallyError::config(
            data.display().to_string(),
            format!(
                "the data root recorded by the shards ({}) is not a folder here; give the \
                 merge --data with the data root as this machine sees it",
                folders[0].join(SHARD_MANIFEST).display()
            ),
        ));
    }
    Ok(JobRequest {
        data,
        out: req.out.clone(),
        mode,
        as_of,
        settle_micros: first.settle_micros(),
        force: req.force,
        buckets: first.buckets,
        groups: None,
        memory_budget_bytes: run::DEFAULT_MEMORY_BUDGET_BYTES,
        shard: None,
        alert: req.alert.clone(),
        progress: req.progress,
        history: None,
    })
}

/// Refuse a merge whose data root no longer holds the files the shards read, or whose
/// price book changed since.
fn check_inputs_unchanged(
    data: &Path,
    inputs: &census::Inputs,
    first: &ShardManifest,
) -> Result<()> {
    let listed: Vec<&str> = inputs
        .files
        .iter()
        .flatten()
        .map(|f| f.rel_path.as_str())
        .collect();
    let fingerprinted: Vec<&str> = first
        .inputs
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| *p != "pricebook.toml" && !p.starts_with("history/"))
        .collect();
    if listed != fingerprinted {
        return Err(TallyError::Refused(format!(
            "the data root {} no longer holds the files the shards read; merge where the shards ran, or rerun them",
            data.display()
        )));
    }
    // The price book is read again here (currency, file names): the bytes the merge
    // parsed must be the ones the shards priced with.
    let book_now = &inputs.pricebook_sha256;
    let book_then = first.inputs.iter().find(|f| f.path == "pricebook.toml");
    if book_then.map(|f| &f.sha256) != Some(book_now) {
        return Err(TallyError::Refused(format!(
            "{} changed since the shards ran; rerun them",
            inputs.pricebook_path.display()
        )));
    }
    Ok(())
}

/// Refuse a close merge whose `--out` is not directly inside the history folder its shards
/// read. A close published elsewhere is not seen by the next close under the shards'
/// history, which closes and invoices its periods again. The folder must exist (the shards
/// made it: their lock file is in it), so a merge never makes a history (a volume not
/// mounted, a path mistyped). Where the folder the shards recorded is a folder on this
/// machine, `--out` must be in it, whatever `--history` says; only where it is not (the
/// history mounted at another path here) does `--history` name it, and the closes the
/// shards read are then compared by checksum ([`check_history_unchanged`]). Two spellings
/// of one folder (a link, `..`) are one. `--history` for shards that read none is exit 2.
fn refuse_out_outside_the_shards_history(
    first: &ShardManifest,
    out: &Path,
    given: Option<&Path>,
) -> Result<()> {
    if !first.reads_history() {
        return match given {
            Some(given) => Err(TallyError::config(
                given.display().to_string(),
                "--history is for the merge of a close whose shards read a history folder, \
                 and these shards read none: leave it out",
            )),
            None => Ok(()),
        };
    }
    let here = write::folder_of(out);
    if !here.is_dir() {
        let recorded = match (given, &first.history) {
            (Some(given), _) => format!(" (given with --history: {})", given.display()),
            (None, Some(read)) => format!(" ({})", read.display()),
            (None, None) => String::new(),
        };
        return Err(TallyError::Refused(format!(
            "the merge's --out {} is in {}, which does not exist: a close's merge publishes \
             directly inside the history folder its shards read{recorded}, which they made \
             (their lock file is in it); mount it here, or give the merge the shards' --out",
            out.display(),
            here.display()
        )));
    }
    // One folder where the kernel takes both paths (links followed, `..` after them).
    let same = |folder: &Path| crate::resolved(&here) == crate::resolved(folder);
    let outside = |history: &Path, whose: &str, advice: &str| {
        Err(TallyError::Refused(format!(
            "the merge's --out {} is not in the history folder {whose} ({}): a close publishes \
             directly inside its history, and the next close there would not see this one \
             and would close and invoice its periods again; {advice}",
            out.display(),
            history.display()
        )))
    };
    let (read_by_shards, given_here) = ("its shards read", "given with --history");
    let read_here = first.history.as_deref().filter(|read| read.is_dir());
    match (read_here, given, first.history.as_deref()) {
        // The folder the shards read is a folder here: that one, whatever --history says.
        (Some(read), Some(_), _) if !same(read) => outside(
            read,
            read_by_shards,
            "it is a folder on this machine too: give the merge the shards' --out, and leave \
             --history out",
        ),
        (Some(read), Some(given), _) if !same(given) => Err(TallyError::Refused(format!(
            "--history {} is not the history folder the shards read ({}), which is a folder \
             on this machine and holds --out: leave --history out",
            given.display(),
            read.display()
        ))),
        (Some(read), None, _) if !same(read) => {
            outside(read, read_by_shards, "give the merge the shards' --out")
        }
        (None, Some(given), _) if !same(given) => {
            outside(given, given_here, "give an --out directly inside it")
        }
        // The shards took the history's lock in the folder they read, so it holds the lock
        // file: a folder without one (new, empty, another) is not theirs, whatever its path.
        (None, Some(given), _) if !given.join(crate::HISTORY_LOCK).exists() => {
            Err(TallyError::Refused(format!(
                "--history {0} holds no {1}, which the shards of a close leave in the history \
                 folder they read: give that folder's path on this machine (if it is this one, \
                 copied without its hidden files, create {0}/{1} and rerun the merge)",
                given.display(),
                crate::HISTORY_LOCK
            )))
        }
        (None, None, Some(read)) if !same(read) => outside(
            read,
            read_by_shards,
            "give the merge the shards' --out, or, where this machine mounts that folder at \
             another path, --history with its path here",
        ),
        _ => Ok(()),
    }
}

/// Refuse a merge when the closes under the history folder `dir` are no longer those the
/// shards read (`inputs`' `history/` entries, by name and checksum): a close published
/// there since (one at another as-of, run between the shards and the merge) was not seen
/// by the shards, which may have closed its periods again; a second close at this as-of
/// would bill them twice.
fn check_history_unchanged(
    dir: &Path,
    out: &Path,
    as_of: Micros,
    inputs: &[FileEntry],
) -> Result<()> {
    crate::history::refuse_a_stranded_close(dir, out)?;
    let closes = crate::history::closes_under(dir, Some(out))?;
    crate::history::refuse_a_second_close(&closes, dir, out, as_of)?;
    let key = |f: &FileEntry| (f.path.clone(), f.sha256.clone());
    let mut now: Vec<_> = (crate::history::read_at(closes, as_of).iter())
        .map(|c| key(&c.input_entry()))
        .collect();
    let mut then: Vec<_> = (inputs.iter())
        .filter(|f| f.path.starts_with("history/"))
        .map(key)
        .collect();
    now.sort();
    then.sort();
    if now == then {
        return Ok(());
    }
    Err(TallyError::Refused(format!(
        "the closes under the history folder {} are not those the shards read: a close was \
         published, replaced or removed there since (rerun every shard and then the merge), \
         or the merge's --out is not in the history folder the shards read (a close \
         publishes directly inside its history: give the merge the shards' --out)",
        dir.display()
    )))
}

/// The rows of each dataset's files, as `shard.json` lists them (index = `Dataset as
/// usize`), in the order of the data root's listing (the merge checked that the shards
/// list the same files in that order). A file listed with more rows than a file may hold is
/// refused: the counts a shard's partial holds are bounded by these, and each at most
/// `MAX_ROWS_PER_FILE - 1` (of at most `MAX_FILES` files) keeps their sums within a u64.
fn listed_rows(inputs: &census::Inputs, m: &ShardManifest, folder: &Path) -> Result<[Vec<u64>; 4]> {
    // A run reads at most MAX_FILES files of a dataset (a shard refuses more).
    if let Some(d) = (crate::model::Dataset::ALL.into_iter())
        .find(|&d| inputs.files[d as usize].len() as u64 > crate::model::MAX_FILES)
    {
        return Err(TallyError::Refused(format!(
            "the data root holds {} {} files, more than a run reads ({}); no shard ran over \
             them",
            inputs.files[d as usize].len(),
            d.name(),
            crate::model::MAX_FILES
        )));
    }
    let most = crate::model::MAX_ROWS_PER_FILE - 1;
    if let Some(f) = m.inputs.iter().find(|f| f.rows.unwrap_or(0) > most) {
        return Err(TallyError::Refused(format!(
            "{} lists {} with {} rows, more than a file may hold ({most}); the file is \
             damaged: rerun the shards",
            folder.join(SHARD_MANIFEST).display(),
            f.path,
            f.rows.unwrap_or(0)
        )));
    }
    let rows: std::collections::HashMap<&str, u64> = (m.inputs.iter())
        .map(|f| (f.path.as_str(), f.rows.unwrap_or(0)))
        .collect();
    Ok(std::array::from_fn(|d| {
        (inputs.files[d].iter())
            .map(|f| rows.get(f.rel_path.as_str()).copied().unwrap_or(0))
            .collect()
    }))
}

/// "it counts `n` `what`, more than the `most` `of`" when `n` (`None`: a sum past a u64)
/// is more than `most`.
fn at_most(what: &str, n: Option<u64>, most: u64, of: &str) -> std::result::Result<(), String> {
    match n {
        Some(n) if n <= most => Ok(()),
        Some(n) => Err(format!("it counts {n} {what}, more than the {most} {of}")),
        None => Err(format!("its {what} add up past what a count holds")),
    }
}

/// The sum of `counts`, `None` past a u64.
fn checked_sum(counts: impl IntoIterator<Item = u64>) -> Option<u64> {
    counts.into_iter().try_fold(0u64, u64::checked_add)
}

/// A partial's figures against what its shard read (`listed`: [`listed_rows`]), before any
/// of them is added up or used as an index. A partial tally wrote always passes: every count
/// counts rows the shard read, every reject names a row of a listed file, a balance's
/// figures fit DECIMAL(18,3) (its amounts each do: decoding refuses one past). One forged
/// to match its checksum is refused naming the file, where a sum would overflow, a file
/// index point past the list or an output hold what its column cannot.
fn check_partial(p: &Partial, listed: &[Vec<u64>; 4]) -> std::result::Result<(), String> {
    use crate::model::Dataset;
    // At most MAX_FILES files of fewer than MAX_ROWS_PER_FILE rows (`listed_rows`): the
    // sum fits a u64.
    let total = |d: Dataset| listed[d as usize].iter().sum::<u64>();
    let read = |d: Dataset| p.rows_read[d as usize];
    for d in Dataset::ALL {
        let name = d.name();
        let files_hold = format!("rows its {name} files hold");
        at_most(
            &format!("{name} rows read"),
            Some(read(d)),
            total(d),
            &files_hold,
        )?;
        let rejected = p.rejects.iter().filter(|r| r.dataset == d).count() as u64;
        at_most(
            &format!("rejected {name} rows"),
            Some(rejected),
            total(d),
            &files_hold,
        )?;
    }
    let in_a_listed_file = |d: Dataset, at: &crate::model::RowRef| {
        (listed[d as usize].get(at.file as usize)).is_some_and(|&rows| at.row < rows)
    };
    let not_covered =
        (p.rejected_allocations_not_covered.iter()).map(|at| (Dataset::Allocations, at));
    let rejects = p.rejects.iter().map(|r| (r.dataset, &r.at));
    if let Some((d, at)) = rejects
        .chain(not_covered)
        .find(|(d, at)| !in_a_listed_file(*d, at))
    {
        return Err(format!(
            "it rejects {} row {} of file {}, which no listed file holds",
            d.name(),
            at.row,
            at.file
        ));
    }
    // A row "not covered" is one of its own allocation rejects, each once: the covered
    // count is the rejects less these (a forged list made it negative, a panic).
    let mut allocation_rejects: Vec<&crate::model::RowRef> = (p.rejects.iter())
        .filter(|r| r.dataset == Dataset::Allocations)
        .map(|r| &r.at)
        .collect();
    allocation_rejects.sort_unstable();
    let mut not_covered: Vec<&crate::model::RowRef> =
        p.rejected_allocations_not_covered.iter().collect();
    not_covered.sort_unstable();
    if let Some(at) = (not_covered.iter().enumerate()).find_map(|(i, at)| {
        let repeated = i > 0 && not_covered[i - 1] == *at;
        (repeated || allocation_rejects.binary_search(at).is_err()).then_some(at)
    }) {
        return Err(format!(
            "it lists allocations row {} of file {} as of a period the run does not cover, \
             but does not reject it once",
            at.row, at.file
        ));
    }
    let (usage, debits) = (read(Dataset::Usage), read(Dataset::Debits));
    let totals = || p.results.iter().map(|(_, r)| &r.totals);
    let usage_read = "usage rows it read";
    for (what, n, most, of) in [
        (
            "identical duplicates",
            Some(p.identical_duplicates),
            usage,
            usage_read,
        ),
        (
            "usage rows outside",
            Some(p.outside_usage),
            usage,
            usage_read,
        ),
        (
            "entries outside",
            Some(p.outside_entries),
            debits,
            "debits rows it read",
        ),
        (
            "events",
            checked_sum(totals().map(|t| t.events_in_window)),
            usage,
            usage_read,
        ),
        (
            "matched events",
            checked_sum(totals().map(|t| t.matched_events)),
            usage,
            usage_read,
        ),
        (
            "pending events",
            checked_sum(totals().map(|t| t.pending_events)),
            usage,
            usage_read,
        ),
        (
            "entries",
            checked_sum(totals().map(|t| t.entries_in_window)),
            debits,
            "debits rows it read",
        ),
        // Every shard reads the plans; one of them counts their rows as read.
        (
            "account periods",
            checked_sum(totals().map(|t| t.account_periods)),
            total(Dataset::Allocations),
            "rows its allocations files hold",
        ),
        (
            "events in the report's mix",
            checked_sum(p.mix.lines.values().map(|f| f.events)),
            usage,
            usage_read,
        ),
    ] {
        at_most(what, n, most, of)?;
    }
    if p.mix.lines.values().any(|f| !f.is_possible()) {
        return Err(
            "a line of its report's mix holds more priced events or quantity than \
                    its events can"
                .into(),
        );
    }
    let balances = p.results.iter().flat_map(|(_, r)| &r.balances);
    if let Some(b) = balances.into_iter().find(|b| !b.figures_fit()) {
        return Err(format!(
            "the balance of {} from {} holds figures past DECIMAL(18,3)",
            b.account_id,
            crate::time::format_instant(b.period_start)
        ));
    }
    Ok(())
}

/// The first kind of row only a close writes that a partial holds, if any.
fn close_rows(p: &Partial) -> Option<&'static str> {
    if !p.billed.is_empty() || !p.lines.is_empty() {
        return Some("run files of billed events or invoice lines");
    }
    p.results.iter().find_map(|(_, r)| {
        [
            (r.invoices.is_empty(), "invoices"),
            (r.invoice_lines.is_empty(), "invoice lines"),
            (r.renewals.is_empty(), "renewals"),
            (r.allocations_next.is_empty(), "next allocations"),
            (r.grants_next.is_empty(), "next grants"),
            (r.billed_events.is_empty(), "billed events"),
        ]
        .into_iter()
        .find_map(|(empty, what)| (!empty).then_some(what))
    })
}

/// Billed events and invoice lines come from usage rows: a shard's runs hold at most as
/// many rows as it read (a run file forged to hold millions of copies of a record, its
/// count and checksums made to agree, would be merged into one account's batch).
fn check_run_rows(p: &Partial) -> std::result::Result<(), String> {
    let usage = p.rows_read[crate::model::Dataset::Usage as usize];
    let usage_read = "usage rows it read";
    at_most(
        "billed events",
        checked_sum(p.billed.iter().map(Run::rows)),
        usage,
        usage_read,
    )?;
    at_most(
        "invoice lines",
        checked_sum(p.lines.iter().map(Run::rows)),
        usage,
        usage_read,
    )
}

fn read_partial(folder: &Path, m: &ShardManifest, listed: &[Vec<u64>; 4]) -> Result<Partial> {
    let path = folder.join(PARTIAL);
    let refuse = |why: String| {
        TallyError::Refused(format!(
            "{}: {why}; rerun shard {} of {} (--shard {}/{})",
            path.display(),
            m.shard,
            m.shards,
            m.shard,
            m.shards
        ))
    };
    let bytes = write::read_regular(&path).map_err(|e| {
        refuse(match write::is_not_a_regular_file(&e) {
            true => "it is not a regular file".into(),
            false => format!("cannot read it ({e})"),
        })
    })?;
    if crate::write::sha256_hex(&bytes) != m.partial_sha256 {
        return Err(refuse(format!(
            "its checksum does not match {SHARD_MANIFEST}"
        )));
    }
    let mut partial: Partial = postcard::from_bytes(&bytes).map_err(|e| {
        // postcard keeps no text of a custom error: `Milli`'s (an amount past DECIMAL(18,3))
        // or serde's own (a variant that is no enum's).
        refuse(match e {
            postcard::Error::SerdeDeCustom => {
                "cannot be decoded (it holds a value tally never writes: an amount past \
                 DECIMAL(18,3), or a variant no field has)"
                    .to_string()
            }
            e => format!("cannot be decoded ({e})"),
        })
    })?;
    check_partial(&partial, listed).map_err(refuse)?;
    // Shards relabelled in their shard.json (which no checksum covers) would publish one
    // command's outputs from the other's figures.
    if let Some(what) = (m.command == "reconcile")
        .then(|| close_rows(&partial))
        .flatten()
    {
        return Err(refuse(format!(
            "it holds {what}, which only a close writes, but {SHARD_MANIFEST} says reconcile"
        )));
    }
    let balances = || partial.results.iter().any(|(_, r)| !r.balances.is_empty());
    if m.command == "close" && balances() {
        return Err(refuse(format!(
            "it holds balances, which only a reconcile writes, but {SHARD_MANIFEST} says close"
        )));
    }
    // Billed events and invoice lines are in a close's run files only (a reconcile's
    // partial holding them was refused above, by its command): rows of them in an
    // account's result would never be written (the gathering stops on them as a broken
    // invariant; a forged partial is refused here instead, by its file).
    let rows_outside_runs = (partial.results.iter())
        .any(|(_, r)| !r.billed_events.is_empty() || !r.invoice_lines.is_empty());
    if rows_outside_runs {
        return Err(refuse(
            "it holds billed events or invoice lines in an account's result, outside its run \
             files (a close's shard writes them only to run files)"
                .into(),
        ));
    }
    let mut used = std::collections::BTreeSet::new();
    locate_runs(folder, m, &mut partial.billed, &mut used, &refuse)?;
    locate_runs(folder, m, &mut partial.lines, &mut used, &refuse)?;
    if used.len() != m.runs.len() {
        return Err(refuse(format!(
            "it names {} of the {} run files {SHARD_MANIFEST} lists",
            used.len(),
            m.runs.len()
        )));
    }
    check_run_rows(&partial).map_err(refuse)?;
    Ok(partial)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `partial.bin`'s form of an account's result is what it was when its tables were
    /// `Vec`s and a discrepancy row's strings and ids were `String`s (`PARTIAL_FORMAT` 3):
    /// a `ThinVec`, an `Arc<str>` and a `CompactString` serialize as a `Vec` and a `String`
    /// do, byte for byte.
    #[test]
    fn an_account_result_serializes_as_it_did_with_vecs_and_strings() {
        use crate::amount::Milli;
        use crate::engine::{AccountResult, Totals};
        use crate::reconcile::{DiscrepancyRow, Kind};
        #[derive(Clone, serde::Serialize)]
        struct StringRow {
            kind: Kind,
            account_id: String,
            event_id: Option<String>,
            entry_ids: Vec<String>,
            occurred_at: Option<i64>,
            product: Option<String>,
            action: Option<String>,
            model: Option<String>,
            expected_credits: Option<Milli>,
            recorded_credits: Milli,
            delta_credits: Option<Milli>,
            entry_account_ids: Vec<String>,
        }
        #[derive(serde::Serialize)]
        struct VecResult {
            discrepancies: Vec<StringRow>,
            balances: Vec<crate::engine::BalanceRow>,
            invoices: Vec<crate::close::InvoiceRow>,
            invoice_lines: Vec<crate::close::InvoiceLineRow>,
            renewals: Vec<crate::close::RenewalRow>,
            allocations_next: Vec<crate::model::AllocationRow>,
            grants_next: Vec<crate::model::GrantRow>,
            billed_events: Vec<crate::engine::BilledEventRow>,
            totals: Totals,
        }
        let row = DiscrepancyRow {
            kind: Kind::AccountMismatch,
            account_id: "acct-1".into(),
            event_id: Some("evt-0123456789abcdef0123456789".into()),
            entry_ids: vec!["d-2".into(), "d-1".into()],
            occurred_at: Some(1_700_000_000_000_000),
            product: Some("video".into()),
            action: Some("generate".into()),
            model: None,
            expected_credits: Some(Milli(1500)),
            recorded_credits: Milli(-7),
            delta_credits: None,
            entry_account_ids: vec!["acct-2".into()],
        };
        // The same values as Strings and Vecs.
        let text = |s: &Option<crate::model::Shared>| s.as_deref().map(String::from);
        let string_row = StringRow {
            kind: row.kind,
            account_id: row.account_id.to_string(),
            event_id: row.event_id.as_deref().map(String::from),
            entry_ids: row.entry_ids.iter().map(|id| id.to_string()).collect(),
            occurred_at: row.occurred_at,
            product: text(&row.product),
            action: text(&row.action),
            model: text(&row.model),
            expected_credits: row.expected_credits,
            recorded_credits: row.recorded_credits,
            delta_credits: row.delta_credits,
            entry_account_ids: row
                .entry_account_ids
                .iter()
                .map(|a| a.to_string())
                .collect(),
        };
        let totals = Totals {
            events_in_window: 3,
            recorded_credits: Milli(-7),
            ..Totals::default()
        };
        let mut result = AccountResult {
            totals: totals.clone(),
            ..AccountResult::default()
        };
        result.discrepancies.push(row.clone());
        result.discrepancies.push(row);
        let vec_result = VecResult {
            discrepancies: vec![string_row.clone(), string_row],
            balances: Vec::new(),
            invoices: Vec::new(),
            invoice_lines: Vec::new(),
            renewals: Vec::new(),
            allocations_next: Vec::new(),
            grants_next: Vec::new(),
            billed_events: Vec::new(),
            totals,
        };
        let result_bytes = postcard::to_allocvec(&result).unwrap();
        assert_eq!(result_bytes, postcard::to_allocvec(&vec_result).unwrap());
        // And it reads back as it was written.
        let back: AccountResult = postcard::from_bytes(&result_bytes).unwrap();
        assert_eq!(postcard::to_allocvec(&back).unwrap(), result_bytes);
    }

    /// What only a close writes, in a partial or any account's result, is named; a
    /// reconcile's partial holds none of it.
    #[test]
    fn close_rows_are_found_in_runs_and_results() {
        let mut p = Partial::default();
        let mut result = crate::engine::AccountResult::default();
        p.results.push(("a".into(), result.clone()));
        assert_eq!(close_rows(&p), None);
        result.billed_events.push(crate::engine::BilledEventRow {
            invoice_id: "INV-b".into(),
            event_id: "e".into(),
            account_id: "b".into(),
            occurred_at: 0,
            credits: None,
        });
        p.results.push(("b".into(), result));
        assert_eq!(close_rows(&p), Some("billed events"));
        p.lines.push(Run::Memory(Vec::new()));
        assert_eq!(
            close_rows(&p),
            Some("run files of billed events or invoice lines")
        );
    }

    /// A forged partial listing an allocation row as not covered that it does not reject
    /// (or twice) is refused: the covered count subtracted them from the rejects and
    /// panicked below zero (exit 4; found by a source review).
    #[test]
    fn a_not_covered_allocation_row_must_be_one_of_its_rejects() {
        use crate::model::{Dataset, Reason, Reject, RowRef};
        let listed: [Vec<u64>; 4] = [vec![], vec![5], vec![], vec![]];
        let mut p = Partial::default();
        p.rows_read[Dataset::Allocations as usize] = 5;
        let at = RowRef { file: 0, row: 3 };
        p.rejected_allocations_not_covered.push(at);
        let refusal = "it lists allocations row 3 of file 0 as of a period the run does not \
                       cover, but does not reject it once";
        assert_eq!(check_partial(&p, &listed), Err(refusal.to_string()));
        p.rejects.push(Reject {
            dataset: Dataset::Allocations,
            at,
            reason: Reason::UnknownPlan,
            detail: String::new(),
        });
        assert_eq!(check_partial(&p, &listed), Ok(()));
        p.rejected_allocations_not_covered.push(at);
        assert_eq!(check_partial(&p, &listed), Err(refusal.to_string()));
    }

    /// `--shard I/N` takes N up to the 4096 account partitions (each shard then holds
    /// one) and I up to N - 1; one past either, N = 0 and text that is not I/N are refused
    /// with the flag's value and the rule.
    #[test]
    fn shards_go_up_to_the_partitions_and_one_past_is_refused() {
        assert_eq!(parse_shard("4095/4096"), Ok((4095, 4096)));
        assert_eq!(parse_shard("0/1"), Ok((0, 1)));
        assert_eq!(
            parse_shard("0/4097"),
            Err("--shard 0/4097: at most 4096 shards (the account partitions)".into())
        );
        assert_eq!(
            parse_shard("4096/4096"),
            Err("--shard 4096/4096: I must be in 0..N and N at least 1".into())
        );
        assert_eq!(
            parse_shard("0/0"),
            Err("--shard 0/0: I must be in 0..N and N at least 1".into())
        );
        assert_eq!(
            parse_shard("3"),
            Err("--shard 3 is not of the form I/N, e.g. 0/4".into())
        );
        assert_eq!(
            parse_shard("0/x"),
            Err("--shard 0/x: x is not a number".into())
        );
        assert_eq!(
            check_shard(0, 4097, "JOB_COMPLETION_INDEX", "TALLY_SHARDS"),
            Err("at most 4096 shards (the account partitions)".into())
        );
        assert_eq!(
            check_shard(4095, 4096, "JOB_COMPLETION_INDEX", "TALLY_SHARDS"),
            Ok(())
        );
    }

    /// Paths in the advice a refusal gives are one shell word each.
    #[test]
    fn shell_words_quote_only_what_a_shell_would_split_or_expand() {
        assert_eq!(shell_word("/data/out.shards"), "/data/out.shards");
        assert_eq!(shell_word("out/shard=1"), "out/shard=1");
        assert_eq!(shell_word("my data"), "'my data'");
        assert_eq!(shell_word("a$b"), "'a$b'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }

    /// A writer that takes `room` bytes, then fails as a full disk does.
    #[derive(Debug)]
    struct FullAfter {
        room: usize,
        taken: Vec<u8>,
    }

    impl std::io::Write for FullAfter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A partial written whole has postcard's bytes; a full disk is named as itself, not
    /// as postcard's "SerializeBufferFull".
    #[test]
    fn a_failed_write_of_a_serialized_value_is_reported_as_itself() {
        let value: Vec<String> = (0..100).map(|i| format!("account-{i}")).collect();
        let expected = postcard::to_allocvec(&value).unwrap();
        let mut whole = FullAfter {
            room: usize::MAX,
            taken: Vec::new(),
        };
        serialize_to(&value, &mut whole).unwrap();
        assert_eq!(whole.taken, expected);

        let full = FullAfter {
            room: 10,
            taken: Vec::new(),
        };
        let error = serialize_to(&value, full).unwrap_err();
        let disk_full = std::io::Error::from_raw_os_error(libc::ENOSPC).to_string();
        assert_eq!(error, disk_full);
        // Without the writer in between, postcard says something else.
        let bare = postcard::to_io(
            &value,
            FullAfter {
                room: 10,
                taken: Vec::new(),
            },
        );
        assert_ne!(bare.unwrap_err().to_string(), disk_full);
    }
}
