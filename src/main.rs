//! The `tally` binary: a thin clap layer over the library. Exit codes are a contract:
//! 0 ok · 1 finished and published, but a job `[alert]` threshold was crossed · 2 bad
//! configuration or unreadable input · 3 refused (close over a changed closed period, run
//! in progress, a folder that is not a tally output, a reconcile over a close, a bad shard
//! set) · 4 could not finish: an amount overflowed, an invariant broke, or an
//! output could not be written.

use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tally::amount::Milli;
use tally::job::JobFile;
use tally::model::Mode;
use tally::{Alert, JobOutcome, JobRequest, Progress, TallyError};

/// A line on stdout that never panics: a reader that went away (`| head`, a dead logger)
/// must not turn a published run into a crash or change its exit code.
macro_rules! out_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Text on stdout, as [`out_line!`] without the newline.
macro_rules! out_text {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// A line on stderr that never panics (see [`out_line!`]).
macro_rules! err_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Reconcile, close and invoice AI credit usage"
)]
struct Cli {
    /// Log format: `auto` (human on a terminal, JSON lines otherwise), `human` or `json`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, clap::ValueEnum)]
enum LogFormat {
    Auto,
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Nightly: reconcile the open period of every account up to --as-of.
    Reconcile(RunArgs),
    /// Period close: invoice and renew every period that ended by --as-of.
    Close(CloseArgs),
    /// Write a deterministic synthetic data root with injected discrepancies.
    Generate(GenerateArgs),
    /// Combine the shard folders of a sharded run into one output folder, identical to a
    /// run on one machine.
    Merge(MergeArgs),
    /// Audit trail of one event, ledger entry or account: the rows seen, the rate and
    /// arithmetic, the grants drawn, the entries and the verdict (as the run computes them).
    Explain(ExplainArgs),
    /// Check a published output folder against its manifest.json (every file's sha256), and
    /// with --data / --history the inputs the run read: exit 0 when all match, 1 when not.
    Verify(VerifyArgs),
    /// Benchmark baseline: decode the contract's columns of every input file, nothing else.
    Scan {
        #[arg(long)]
        data: PathBuf,
    },
}

/// What a run reads and when: shared by the runs and by `explain`.
#[derive(Args, Clone)]
struct SourceArgs {
    /// Job file holding command, data, out, as_of, settle, history, memory_budget, buckets
    /// and [alert] thresholds (flags override it).
    #[arg(long)]
    job: Option<PathBuf>,
    /// Data root: pricebook.toml, usage/, allocations/, grants/ (optional), debits/.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The run's instant: RFC 3339 (2026-11-20T00:00:00Z), a date (2026-11-20, its
    /// midnight UTC), or `now`.
    #[arg(long)]
    as_of: Option<String>,
    /// Events this recent without ledger entries are pending, not missing (15m, 900s, 1h;
    /// default 15m; at most 7 days).
    // A value may start with '-', so that `--settle -5m` is refused as a duration, not as
    // an unknown flag `-5`.
    #[arg(long, allow_hyphen_values = true)]
    settle: Option<String>,
}

/// `SourceArgs` with the job file applied.
struct Source {
    job: Option<JobFile>,
    /// The job file's path (named in errors about its settings).
    job_path: Option<PathBuf>,
    data: PathBuf,
    as_of: tally::time::Micros,
    settle_micros: i64,
}

impl SourceArgs {
    /// Load the job file (checking that it is for `mode`, when given), then take each
    /// setting from its flag, else from the job file.
    fn resolve(self, mode: Option<Mode>) -> anyhow::Result<Source> {
        let job = match &self.job {
            Some(path) => Some(JobFile::load(path)?),
            None => None,
        };
        if let (Some(j), Some(mode)) = (&job, mode) {
            if let Some(c) = j.command.as_ref().filter(|c| *c != mode.name()) {
                return Err(anyhow::Error::new(TallyError::config(
                    self.job
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    format!("this job file is for `{c}`, not `{}`", mode.name()),
                )));
            }
        }
        let data = self
            .data
            .or_else(|| job.as_ref().map(|j| j.data.clone()))
            .ok_or_else(|| {
                config_error("--data (or a --job file with `data`) is required".into())
            })?;
        let job_path = self.job.as_deref();
        let (as_of_text, as_of_origin) = setting(
            self.as_of,
            "--as-of",
            job.as_ref().and_then(|j| j.as_of.clone()),
            "as_of",
            job_path,
        )
        .ok_or_else(|| {
            config_error(
                "--as-of (or a --job file with `as_of`) is required (an RFC 3339 instant, a \
                 date or `now`)"
                    .into(),
            )
        })?;
        let as_of = parse_as_of(&as_of_text, &as_of_origin)?;
        let settle = setting(
            self.settle,
            "--settle",
            job.as_ref().and_then(|j| j.settle.clone()),
            "settle",
            job_path,
        );
        let settle_micros = parse_settle(settle)?;
        Ok(Source {
            job,
            job_path: self.job,
            data,
            as_of,
            settle_micros,
        })
    }
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Output folder; it appears whole or not at all.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Account buckets for parallel work, 1..=65536 (default: one per 32K rows of a group;
    /// output does not depend on it).
    // Read as a whole number so that -1 and one past u32 or i64 are refused in the same
    // words as 65537.
    #[arg(long, allow_negative_numbers = true, value_parser = whole_number)]
    buckets: Option<WholeNumber>,
    /// Working memory to stay within, e.g. 3GiB (default): past it the run processes its
    /// accounts in groups, one after another, spilling rows to a temporary folder.
    #[arg(long)]
    memory_budget: Option<String>,
    /// Process the accounts in this many groups, 1..=256 (default: the fewest that fit
    /// --memory-budget).
    #[arg(long, allow_negative_numbers = true, value_parser = whole_number)]
    groups: Option<WholeNumber>,
    /// Compute only shard I of N (of the 4096 account partitions, those p with p mod N = I)
    /// into OUT.shards/shard=I/;
    /// `tally merge` then publishes OUT. Under a Kubernetes Indexed Job the default is
    /// $JOB_COMPLETION_INDEX/$TALLY_SHARDS.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
}

#[derive(Args, Clone)]
struct CloseArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Replace an earlier close of the same output folder made from other inputs.
    #[arg(long)]
    force: bool,
    /// Folder of earlier close outputs: their periods are never closed again, and events
    /// that arrive late for them are reported `late_event` and billed on the next invoice.
    #[arg(long)]
    history: Option<PathBuf>,
}

#[derive(Args, Clone)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["event", "entry", "account"])))]
struct ExplainArgs {
    /// The run to explain: its job file, data root, as-of and settle (a `close` job file
    /// explains as the close).
    #[command(flatten)]
    source: SourceArgs,
    /// Explain as `close --as-of` computes it (default: as `reconcile`).
    #[arg(long)]
    close: bool,
    /// Close only: the --history folder the close read.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Close only: the close's output folder (skipped inside --history, as the close did).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A usage event_id.
    #[arg(long, allow_hyphen_values = true)]
    event: Option<String>,
    /// A ledger entry_id.
    #[arg(long, allow_hyphen_values = true)]
    entry: Option<String>,
    /// An account_id: its periods, grants, balance timeline and invoices.
    #[arg(long, allow_hyphen_values = true)]
    account: Option<String>,
    /// Print JSON instead of plain words.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct MergeArgs {
    /// Shard folders (shard=I/), or folders holding them (default: OUT.shards, where
    /// `--out OUT --shard I/N` writes them).
    #[arg(value_name = "SHARDS")]
    sources: Vec<PathBuf>,
    /// The output folder; it appears whole or not at all.
    #[arg(long)]
    out: PathBuf,
    /// Job file whose [alert] thresholds apply to the merged run.
    #[arg(long)]
    job: Option<PathBuf>,
    /// Data root, if it is mounted elsewhere than where the shards ran.
    #[arg(long)]
    data: Option<PathBuf>,
    /// (close) The history folder the shards read, if it is mounted elsewhere than where
    /// they ran: --out must be directly inside it.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Replace an earlier close in --out made from other inputs.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Clone)]
struct VerifyArgs {
    /// The output folder a reconcile, close or merge published (its --out; default: the
    /// --job file's out).
    #[arg(value_name = "OUT")]
    out: Option<PathBuf>,
    /// Job file: OUT, --data and --history from its out, data and history (flags override).
    #[arg(long)]
    job: Option<PathBuf>,
    /// The as-of that names the folder when the --job file's out holds {as_of} or
    /// {as_of_date} (a close's: 2026-12-01).
    #[arg(long)]
    as_of: Option<String>,
    /// Also hold the data root's files against the inputs the run read (changed, gone, new).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Also hold the earlier closes a close read (its --history folder) against the manifest.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Also hold manifest.json itself to the sha256 the run logged of it (its `manifest`
    /// log line): a manifest edited since, with the outputs it lists, is found.
    #[arg(long, value_name = "HEX")]
    manifest_sha256: Option<String>,
}

#[derive(Args, Clone)]
struct GenerateArgs {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1000)]
    accounts: u64,
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of events given an injected discrepancy (0..=1).
    #[arg(long, default_value_t = 0.01)]
    discrepancy_rate: f64,
}

/// Whether the log is JSON lines, set once by [`init_logging`].
static JSON_LOG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Progress bars for a person at a terminal: not into a JSON log (`--log-format json` on a
/// terminal, as under `docker run -t`), whose reader expects one JSON object a line, not
/// the bars' escape codes between them.
fn progress_bars() -> bool {
    std::io::stderr().is_terminal() && !JSON_LOG.load(std::sync::atomic::Ordering::Relaxed)
}

/// `default_level` applies without `TALLY_LOG` (explain logs warnings only: its output is
/// the answer on stdout).
fn init_logging(format: LogFormat, default_level: &str) {
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    JSON_LOG.store(json, std::sync::atomic::Ordering::Relaxed);
    let (filter, refused) = log_filter(std::env::var("TALLY_LOG").ok(), default_level);
    // A log line that cannot be written (stderr closed) is dropped: reporting it would
    // write to the same closed stderr, panic, and abort the run.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(tally::progress::log_writer)
        .log_internal_errors(false);
    if json {
        builder.json().with_current_span(false).init();
    } else {
        // Colour codes only for a person at a terminal: a human log written to a file or
        // a pipe (`--log-format human 2>run.log`) stays plain text. NO_COLOR (set and not
        // empty) turns them off at a terminal too.
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let ansi = std::io::stderr().is_terminal() && !no_color;
        builder.compact().with_ansi(ansi).init();
    }
    if let Some(value) = refused {
        tracing::warn!(
            TALLY_LOG = %value,
            using = default_level,
            "TALLY_LOG is not a log level (error, warn, info, debug, trace or off) nor a list of \
             target=level directives; logging at the default level"
        );
    }
}

/// The log filter `TALLY_LOG` asks for, or `default_level` (and the refused value) when it
/// is not a level or a directive list: a word tracing would take as a target name (`loud`)
/// would silence every line, and a nightly job's log with it. Unset or empty is the default.
/// Directives without a bare level (`tally::spill=debug`) keep `default_level` for every
/// other target: tracing alone would log nothing else, so that asking for one module's
/// detail would drop the run's warnings and its `run done` line.
fn log_filter(
    value: Option<String>,
    default_level: &str,
) -> (tracing_subscriber::EnvFilter, Option<String>) {
    let default = || tracing_subscriber::EnvFilter::new(default_level);
    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
        return (default(), None);
    };
    let is_level = |part: &str| {
        ["error", "warn", "info", "debug", "trace", "off"]
            .iter()
            .any(|l| part.trim().eq_ignore_ascii_case(l))
    };
    let level = is_level(&value);
    let directives = value.contains('=');
    let filter = match value.split(',').any(is_level) {
        true => value.trim().to_string(),
        false => format!("{default_level},{}", value.trim()),
    };
    match tracing_subscriber::EnvFilter::try_new(filter) {
        Ok(filter) if level || directives => (filter, None),
        _ => (default(), Some(value)),
    }
}

fn config_error(message: String) -> anyhow::Error {
    anyhow::Error::new(TallyError::config("command line", message))
}

/// A bad setting from the environment (a Kubernetes Indexed Job's variables).
fn environment_error(message: String) -> anyhow::Error {
    anyhow::Error::new(TallyError::config("environment", message))
}

/// Where a setting came from, for its error message: a flag on the command line, or a key
/// of the job file (so that on-call looks in the right place).
struct Origin {
    place: String,
    name: String,
    job_file: bool,
}

impl Origin {
    fn flag(flag: &str) -> Origin {
        Origin {
            place: "command line".into(),
            name: flag.into(),
            job_file: false,
        }
    }

    /// A key of the job file at `job_path`.
    fn job_key(job_path: Option<&std::path::Path>, key: &str) -> Origin {
        Origin {
            place: job_path
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            name: key.into(),
            job_file: true,
        }
    }

    /// A bad text value: `tally: command line: --flag VALUE WHY` or
    /// `tally: JOB: key = "VALUE" WHY`.
    fn bad(&self, value: &str, why: &str) -> anyhow::Error {
        let shown = if self.job_file {
            format!("{value:?}")
        } else {
            value.to_string()
        };
        self.bad_shown(&shown, why)
    }

    /// A bad number: as [`Origin::bad`], unquoted in the job file too.
    fn bad_number(&self, value: impl std::fmt::Display, why: &str) -> anyhow::Error {
        self.bad_shown(&value.to_string(), why)
    }

    fn bad_shown(&self, shown: &str, why: &str) -> anyhow::Error {
        let setting = if self.job_file {
            format!("{} = {shown}", self.name)
        } else {
            format!("{} {shown}", self.name)
        };
        anyhow::Error::new(TallyError::config(&self.place, format!("{setting} {why}")))
    }
}

/// A whole number as `--buckets` or `--groups` was given it: any digits with a sign are
/// taken, held at i64's bounds past them, so that a number too large for 64 bits is refused
/// in the words of the range that holds (and shown as written), as 65537 is.
#[derive(Clone, Debug)]
struct WholeNumber {
    value: i64,
    written: String,
}

impl From<i64> for WholeNumber {
    fn from(value: i64) -> Self {
        WholeNumber {
            value,
            written: value.to_string(),
        }
    }
}

impl std::fmt::Display for WholeNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.written)
    }
}

/// Parse a [`WholeNumber`]; what is not one keeps Rust's words ("invalid digit found in
/// string").
fn whole_number(text: &str) -> Result<WholeNumber, String> {
    let value = match text.parse::<i64>() {
        Ok(value) => value,
        Err(e) => {
            let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(e.to_string());
            }
            match text.starts_with('-') {
                true => i64::MIN,
                false => i64::MAX,
            }
        }
    };
    Ok(WholeNumber {
        value,
        written: text.to_string(),
    })
}

/// `number` if it is in 1..=`most`.
fn one_to(number: &WholeNumber, most: u32) -> Option<u32> {
    u32::try_from(number.value)
        .ok()
        .filter(|v| (1..=most).contains(v))
}

/// A setting from its flag, else from the job file's key, with where it came from.
fn setting<T>(
    flag_value: Option<T>,
    flag: &str,
    job_value: Option<T>,
    key: &str,
    job_path: Option<&std::path::Path>,
) -> Option<(T, Origin)> {
    match (flag_value, job_value) {
        (Some(v), _) => Some((v, Origin::flag(flag))),
        (None, Some(v)) => Some((v, Origin::job_key(job_path, key))),
        (None, None) => None,
    }
}

/// The alert thresholds of a job file (none without one).
fn alert_of(job: Option<&JobFile>, job_path: Option<&std::path::Path>) -> anyhow::Result<Alert> {
    let mut alert = Alert::default();
    if let Some(j) = job {
        alert.max_discrepancies = j.alert.max_discrepancies;
        alert.min_events_in_window = j.alert.min_events_in_window;
        alert.max_rejected_rows = j.alert.max_rejected_rows;
        alert.max_rejected_allocations = j.alert.max_rejected_allocations;
        alert.min_invoices = j.alert.min_invoices;
        if let Some(value) = &j.alert.max_abs_delta_credits {
            let origin = Origin::job_key(job_path, "alert.max_abs_delta_credits");
            // A decimal string ("500.5") or a TOML integer (500), as the price book's
            // amounts; a TOML float is refused: credits never pass through floating point.
            // A refusal shows the value as it was written (a string quoted, a number not).
            let bad = |why: &str| match value {
                toml::Value::String(s) => origin.bad(s, why),
                other => origin.bad_shown(&other.to_string(), why),
            };
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                _ => return Err(bad(
                    "is not a decimal: write it as a string such as \"500.5\" or as a whole number",
                )),
            };
            let d = tally::amount::exact_decimal(&text).map_err(|e| bad(&e.to_string()))?;
            if d.is_sign_negative() && !d.is_zero() {
                return Err(bad("must not be negative (it bounds |delta|)"));
            }
            let credits = Milli::from_decimal(d)
                .ok_or_else(|| bad("is out of range (|x| must be < 10^15)"))?;
            alert.max_abs_delta_credits = Some(credits);
        }
    }
    Ok(alert)
}

/// Under a Kubernetes Indexed Job: shard $JOB_COMPLETION_INDEX of $TALLY_SHARDS (the
/// Job's `completions`, which Kubernetes does not expose itself).
fn shard_from_env() -> anyhow::Result<Option<(u32, u32)>> {
    // Set but not UTF-8 is no number (it was taken for unset: a whole run, unsharded).
    let variable = |name: &str| match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(value)) => Err(environment_error(format!(
            "{name}={} is not a number (JOB_COMPLETION_INDEX and TALLY_SHARDS select the shard)",
            value.to_string_lossy()
        ))),
    };
    let (index, shards) = (variable("JOB_COMPLETION_INDEX")?, variable("TALLY_SHARDS")?);
    let Some(index) = index else {
        if let Some(n) = shards {
            return Err(environment_error(format!(
                "TALLY_SHARDS={n} is set but JOB_COMPLETION_INDEX is not: run it as an Indexed Job (or pass --shard I/N)"
            )));
        }
        return Ok(None);
    };
    let shards = shards.ok_or_else(|| {
        environment_error(format!(
            "JOB_COMPLETION_INDEX={index} is set but TALLY_SHARDS is not: set it to the Job's completions (or pass --shard I/N)"
        ))
    })?;
    let number = |name: &str, value: &str| {
        value.trim().parse::<u32>().map_err(|_| {
            environment_error(format!(
                "{name}={value} is not a number (JOB_COMPLETION_INDEX and TALLY_SHARDS select the shard)"
            ))
        })
    };
    let (i, n) = (
        number("JOB_COMPLETION_INDEX", &index)?,
        number("TALLY_SHARDS", &shards)?,
    );
    tally::shard::check_shard(i, n, "JOB_COMPLETION_INDEX", "TALLY_SHARDS")
        .map(|()| Some((i, n)))
        .map_err(|why| {
            // An index past the count: TALLY_SHARDS is not the Job's completions.
            let advice = match i >= n {
                true => "; set TALLY_SHARDS to the Job's completions",
                false => "",
            };
            environment_error(format!(
                "JOB_COMPLETION_INDEX={i} and TALLY_SHARDS={n}: {why}{advice}"
            ))
        })
}

/// `--as-of`: an RFC 3339 instant (without an offset: UTC), a date (its midnight, UTC) or
/// `now`.
fn parse_as_of(text: &str, origin: &Origin) -> anyhow::Result<tally::time::Micros> {
    if text == "now" {
        return Ok(chrono::Utc::now().timestamp() * 1_000_000);
    }
    let as_of = tally::time::parse_instant(text).ok_or_else(|| {
        origin.bad(
            text,
            "is not an RFC 3339 instant such as 2026-11-20T00:00:00Z, a date such as 2026-11-20 \
             (its midnight, UTC) or `now`",
        )
    })?;
    // The manifest writes the as-of in RFC 3339, four digits for the year, and a later run
    // (a rerun, a close with `--history`, `tally verify`) must read it back.
    if !tally::time::in_instant_years(as_of) {
        return Err(origin.bad(text, "is outside the years 0001 to 9999"));
    }
    Ok(as_of)
}

/// `--settle` (default 15m, at most 7 days, whole seconds).
fn parse_settle(setting: Option<(String, Origin)>) -> anyhow::Result<i64> {
    let Some((text, origin)) = setting else {
        return Ok(tally::run::DEFAULT_SETTLE_MICROS);
    };
    let settle = tally::time::parse_duration_micros(&text)
        .ok_or_else(|| origin.bad(&text, "is not a duration such as 15m, 900s or 1h"))?;
    if settle > tally::run::MAX_SETTLE_MICROS {
        let unit_hint = match text.contains('M') {
            true => " (`M` is months; minutes are `m`)",
            false => "",
        };
        return Err(origin.bad(
            &text,
            &format!(
                "is longer than 7 days: events that old without a debit are missing it, not \
                 pending{unit_hint}"
            ),
        ));
    }
    // The manifest, the summary and a shard's shard.json record it in seconds, and a rerun
    // or a merge compares those: 1.5s would pass for 1s.
    if settle % 1_000_000 != 0 {
        return Err(origin.bad(
            &text,
            "is not a whole number of seconds (a run records its settle in seconds)",
        ));
    }
    Ok(settle)
}

/// Whether `text` is one of `tally explain`'s long flags (its own or a global one), read
/// from the clap definition, so that a flag added later is covered too.
fn is_explain_flag(text: &str) -> bool {
    use clap::CommandFactory;
    let Some(name) = text.strip_prefix("--") else {
        return false;
    };
    let cli = Cli::command();
    let globals = cli.get_arguments().filter(|a| a.is_global_set());
    let own = cli
        .find_subcommand("explain")
        .into_iter()
        .flat_map(|explain| explain.get_arguments());
    // Bound before `cli`, which the iterators borrow, is dropped.
    let found = own.chain(globals).any(|a| a.get_long() == Some(name));
    found
}

fn explain(x: ExplainArgs) -> anyhow::Result<u8> {
    let Source {
        job,
        job_path,
        data,
        as_of,
        settle_micros,
    } = x.source.resolve(None)?;
    let close = x.close || job.as_ref().and_then(|j| j.command.as_deref()) == Some("close");
    let mode = if close { Mode::Close } else { Mode::Reconcile };
    refuse_close_settings(mode, job.as_ref(), job_path.as_deref())?;
    // Ids may start with '-' (the flags take hyphen values), so `--entry --json` would take
    // `--json` as the id: one of explain's own flags is refused as a missing value.
    for (flag, id) in [
        ("--event", &x.event),
        ("--entry", &x.entry),
        ("--account", &x.account),
    ] {
        if let Some(id) = id.as_deref().filter(|id| is_explain_flag(id)) {
            return Err(config_error(format!(
                "{flag} needs an id: {id} is one of explain's flags (put the id right after {flag})"
            )));
        }
    }
    let target = match (x.event, x.entry, x.account) {
        (Some(id), _, _) => tally::explain::Target::Event(id),
        (_, Some(id), _) => tally::explain::Target::Entry(id),
        (_, _, Some(id)) => tally::explain::Target::Account(id),
        _ => {
            return Err(config_error(
                "one of --event, --entry or --account is required".into(),
            ))
        }
    };
    if x.history.is_some() && !close {
        return Err(config_error(
            "--history is read by a close: add --close (or pass the close's --job)".into(),
        ));
    }
    let history = match close {
        true => x
            .history
            .or_else(|| job.as_ref().and_then(|j| j.history.clone())),
        false => None,
    };
    let out = x
        .out
        .or_else(|| job.as_ref().map(|j| tally::job::expand_out(&j.out, as_of)));
    if history.is_some() && out.is_none() {
        // The close was checked to write directly inside its history and skipped its own
        // folder there; explain does both the same way.
        return Err(config_error(
            "--history needs the close's --out (a close writes directly inside its history folder and skips its own folder there)"
                .into(),
        ));
    }
    let req = tally::explain::ExplainRequest {
        data,
        mode,
        as_of,
        settle_micros,
        history,
        out,
        target,
    };
    let explanation = tally::explain::explain(&req)?;
    if x.json {
        let json = serde_json::to_string_pretty(&explanation)?;
        out_line!("{json}");
    } else {
        out_text!("{}", tally::explain::render_text(&explanation));
    }
    Ok(0)
}

/// A reconcile job file with a close's setting is refused, by the run and by `explain`
/// alike: `history`, read by a reconcile, would move events of closed periods out of its
/// window, and `alert.min_invoices` would never be met; ignored, either would leave a job
/// file that says something the run does not do.
fn refuse_close_settings(
    mode: Mode,
    job: Option<&JobFile>,
    job_path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let (Mode::Reconcile, Some(job)) = (mode, job) else {
        return Ok(());
    };
    let why = |what: &str| {
        format!("is a close setting; a reconcile {what}: remove it from this job file")
    };
    if let Some(dir) = &job.history {
        let origin = Origin::job_key(job_path, "history");
        let why = why("does not read earlier closes");
        return Err(origin.bad(&dir.display().to_string(), &why));
    }
    if let Some(min) = job.alert.min_invoices {
        // A number, so unquoted, as the job file writes it.
        let origin = Origin::job_key(job_path, "alert.min_invoices");
        return Err(origin.bad_number(min, &why("writes no invoices")));
    }
    Ok(())
}

fn request(
    args: RunArgs,
    mode: Mode,
    force: bool,
    history: Option<PathBuf>,
) -> anyhow::Result<JobRequest> {
    let Source {
        job,
        job_path,
        data,
        as_of,
        settle_micros,
    } = args.source.resolve(Some(mode))?;
    let job_path = job_path.as_deref();
    if let Some(out) = &args.out {
        tally::job::check_placeholders("--out", out).map_err(config_error)?;
    }
    let out = args
        .out
        .or_else(|| job.as_ref().map(|j| j.out.clone()))
        .ok_or_else(|| config_error("--out (or a --job file with `out`) is required".into()))?;
    // The flag is read as any whole number (held at i64's bounds) and the key as any i64
    // (TOML's integers), both held to 1..=MAX_BUCKETS here, so that every refusal names the
    // range that holds.
    let buckets = match setting(
        args.buckets,
        "--buckets",
        job.as_ref().and_then(|j| j.buckets).map(WholeNumber::from),
        "buckets",
        job_path,
    ) {
        None => tally::run::AUTOMATIC_BUCKETS,
        Some((b, origin)) => one_to(&b, tally::route::MAX_BUCKETS).ok_or_else(|| {
            origin.bad_number(b, &format!("must be in 1..={}", tally::route::MAX_BUCKETS))
        })?,
    };
    let budget = setting(
        args.memory_budget,
        "--memory-budget",
        job.as_ref().and_then(|j| j.memory_budget.clone()),
        "memory_budget",
        job_path,
    );
    let memory_budget_bytes = match budget {
        None => tally::run::DEFAULT_MEMORY_BUDGET_BYTES,
        Some((text, origin)) => tally::job::parse_bytes(&text).ok_or_else(|| {
            origin.bad(
                &text,
                "is not a size of at least 1 byte and below 2^64 bytes, such as 3GiB, 512MiB or 4GB",
            )
        })?,
    };
    let groups = match args.groups {
        None => None,
        Some(g) => Some(one_to(&g, tally::route::MAX_GROUPS).ok_or_else(|| {
            config_error(format!(
                "--groups {g} must be in 1..={}",
                tally::route::MAX_GROUPS
            ))
        })?),
    };
    let alert = alert_of(job.as_ref(), job_path)?;
    let shard = match args.shard {
        Some(text) => Some(tally::shard::parse_shard(&text).map_err(config_error)?),
        None => shard_from_env()?,
    };
    refuse_close_settings(mode, job.as_ref(), job_path)?;
    let job_history = job.as_ref().and_then(|j| j.history.clone());
    let history = history.or(job_history);
    Ok(JobRequest {
        history,
        data,
        out: tally::job::output_folder(&tally::job::expand_out(&out, as_of)),
        mode,
        as_of,
        settle_micros,
        force,
        buckets,
        groups,
        memory_budget_bytes,
        shard,
        alert,
        progress: Progress {
            interactive: progress_bars(),
        },
    })
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let (args, mode, force, history) = match cli.command {
        Command::Reconcile(a) => (a, Mode::Reconcile, false, None),
        Command::Close(c) => (c.run, Mode::Close, c.force, c.history),
        Command::Generate(g) => return generate(g),
        Command::Merge(m) => return merge(m),
        Command::Explain(x) => return explain(x),
        Command::Verify(v) => return verify(v),
        Command::Scan { data } => {
            let started = std::time::Instant::now();
            let rows = tally::scan(&data)?;
            out_line!(
                "{}: scanned {rows} rows in {:.3} s",
                data.display(),
                started.elapsed().as_secs_f64()
            );
            return Ok(0);
        }
    };
    let req = request(args, mode, force, history)?;
    // A setting refused before `run start`, as a bad flag is (the run would not start);
    // `run_job` checks it again, for any other caller of the library.
    tally::refuse_an_unusable_out(&req.out)?;
    let out = req.out.display().to_string();
    // The settings as resolved (an `as_of = "now"` becomes an instant only here): what an
    // on-call engineer needs to rerun a failed night exactly.
    tracing::info!(
        command = mode.name(),
        version = env!("CARGO_PKG_VERSION"),
        as_of = %tally::time::format_instant(req.as_of),
        settle_seconds = req.settle_micros / 1_000_000,
        data = %req.data.display(),
        out = %out,
        history = %req.history.as_ref().map_or(String::new(), |h| h.display().to_string()),
        memory_budget_bytes = req.memory_budget_bytes,
        groups = %req.groups.map_or("from the budget".to_string(), |g| g.to_string()),
        shard = %req.shard.map_or(String::new(), |(i, n)| format!("{i}/{n}")),
        "run start"
    );
    let started = std::time::Instant::now();
    let ended = tally::run_job(&req)
        .map_err(anyhow::Error::from)
        .and_then(|outcome| report(&out, &format!("{} published", mode.name()), mode, outcome));
    log_run_done(&ended, started.elapsed());
    ended
}

/// The `run done` log line, for a failed run too (with its error, as stderr's last line
/// says it), so that a log collector sees how every started run ended. Not when a signal
/// is ending the run: the watcher's line says that (the exit is claimed first, so that a
/// signal is either handled before, and this never returns, or waits for good).
fn log_run_done(ended: &anyhow::Result<u8>, took: std::time::Duration) {
    tally::interrupt::claim_exit();
    let duration_ms = took.as_millis() as u64;
    match ended {
        Ok(code) => tracing::info!(exit_code = code, duration_ms, "run done"),
        Err(e) => tracing::info!(
            exit_code = exit_code_of(e),
            duration_ms,
            error = %one_line(e),
            "run done"
        ),
    }
}

/// `tally verify`: every difference on a line of its own, then one line of what was
/// checked; exit 1 when anything differs (as `cmp` and `diff` do), 0 when all match.
fn verify(args: VerifyArgs) -> anyhow::Result<u8> {
    let request = verify_request(args)?;
    let found = tally::verify::verify(&request)?;
    for difference in &found.differences {
        out_line!("{difference}");
    }
    out_line!("{}", verify_summary(&request.out, &found));
    Ok(u8::from(!found.differences.is_empty()))
}

/// What `tally verify` checks: OUT, --data and --history, each from its flag, else from the
/// --job file (its out, data and history, relative to the job file's folder). A job's out
/// of one folder per as-of (`closes/{as_of_date}`) needs --as-of to name the folder, and
/// --as-of is refused where it names nothing.
fn verify_request(args: VerifyArgs) -> anyhow::Result<tally::verify::VerifyRequest> {
    let job = args.job.as_deref().map(JobFile::load).transpose()?;
    let as_of = (args.as_of.as_deref())
        .map(|text| parse_as_of(text, &Origin::flag("--as-of")))
        .transpose()?;
    let job_out = job
        .as_ref()
        .map(|j| j.out.clone())
        .filter(|_| args.out.is_none());
    let templated = tally::job::is_per_as_of;
    if as_of.is_some() && !job_out.as_deref().is_some_and(templated) {
        return Err(config_error(
            "--as-of names the folder of a --job file whose out holds {as_of} or {as_of_date}; \
             give the folder (OUT) alone otherwise"
                .into(),
        ));
    }
    let out = match (args.out, job_out, as_of) {
        (Some(out), _, _) => out,
        (None, Some(out), Some(as_of)) => tally::job::expand_out(&out, as_of),
        (None, Some(out), None) if templated(&out) => {
            return Err(config_error(format!(
                "the --job file's out \"{}\" is one folder per as-of: give --as-of (the \
                 run's, e.g. 2026-12-01 for a November close) or the folder (OUT)",
                out.display()
            )))
        }
        (None, Some(out), None) => out,
        (None, None, _) => {
            return Err(config_error(
                "give the folder to verify (OUT), or a --job file whose out names it".into(),
            ))
        }
    };
    let manifest_sha256 = (args.manifest_sha256.as_deref())
        .map(|given| {
            let hex = given.trim().to_ascii_lowercase();
            match hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                true => Ok(hex),
                false => Err(config_error(format!(
                    "--manifest-sha256 {given:?} is not a sha256 (64 hexadecimal digits, as \
                     the run's `manifest` log line gives it)"
                ))),
            }
        })
        .transpose()?;
    Ok(tally::verify::VerifyRequest {
        manifest_sha256,
        out,
        data: args.data.or_else(|| job.as_ref().map(|j| j.data.clone())),
        history: args
            .history
            .or_else(|| job.as_ref().and_then(|j| j.history.clone())),
    })
}

/// The last line of `tally verify`: the run, the outputs, the inputs (and those not
/// checked, and later closes under `--history`).
fn verify_summary(out: &std::path::Path, found: &tally::verify::Verification) -> String {
    let outputs = found.differences.iter().filter(|d| d.is_output()).count();
    let inputs = found.differences.len() - outputs;
    let plural = |n: usize, word: &str| match n {
        1 => format!("1 {word}"),
        _ => format!("{n} {word}s"),
    };
    let mut line = format!(
        "{}: {} as of {}: ",
        out.display(),
        found.command,
        found.as_of
    );
    line += &match outputs {
        0 if found.manifest_as_logged == Some(true) => format!(
            "{} as written, the manifest as logged",
            plural(found.outputs, "output")
        ),
        0 => format!("{} as written", plural(found.outputs, "output")),
        n => format!(
            "{} (the folder is not as the run wrote it; the manifest lists {})",
            plural(n, "output difference"),
            plural(found.outputs, "output")
        ),
    };
    if found.inputs_checked > 0 || inputs > 0 {
        line += &match inputs {
            0 => format!("; {} as read", plural(found.inputs_checked, "input")),
            n => format!(
                "; {} (the run read other files: its figures are not those of the inputs as \
                 they are now)",
                plural(n, "input difference")
            ),
        };
    }
    if found.inputs_not_checked > 0 {
        line += &format!(
            "; {} not checked (--data checks the data root's, --history the earlier closes')",
            plural(found.inputs_not_checked, "input")
        );
    }
    if found.later_closes > 0 {
        line += &format!(
            "; {} under --history, built on this one (not its inputs)",
            plural(found.later_closes, "later close")
        );
    }
    line
}

/// The exit code of a failed command (README, "Exit codes"): its [`TallyError`]'s, else 4.
fn exit_code_of(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<TallyError>()
        .map_or(4, |t| t.exit_code() as u8)
}

/// One line on stdout for how a run ended; the exit code (1 when an alert fired).
fn report(out: &str, published: &str, mode: Mode, outcome: JobOutcome) -> anyhow::Result<u8> {
    match outcome {
        JobOutcome::AlreadyClosed {
            alert,
            manifest_sha256,
        } => {
            log_manifest(out, &manifest_sha256, false);
            out_line!("{out}: already closed with the same inputs; nothing to do");
            alert_exit(alert)
        }
        JobOutcome::Published {
            discrepancies,
            rejects,
            alert,
            manifest_sha256,
        } => {
            log_manifest(out, &manifest_sha256, true);
            out_line!("{out}: {published}: {discrepancies} discrepancies, {rejects} rejected rows");
            alert_exit(alert)
        }
        JobOutcome::ShardWritten {
            folder,
            accounts,
            forced,
        } => {
            // Shards run with --force replace a close of other inputs: the merge needs the
            // flag too, or it refuses that close.
            let force = if forced { " --force" } else { "" };
            out_line!(
                "{}: {} shard written: {accounts} accounts; when all shards are written, publish with `tally merge --out {out}{force}`",
                folder.display(),
                mode.name()
            );
            Ok(0)
        }
    }
}

/// The published folder's `manifest.json` sha256 in the log (`manifest` line): kept in the
/// log store, apart from the folder, it is what `tally verify --manifest-sha256` holds the
/// manifest to, so that one edited since, with the outputs it lists, is found. `published`:
/// this run wrote it; a close's no-op rerun logs the manifest as it found it, which
/// vouches only for the folder as it was then.
fn log_manifest(out: &str, manifest_sha256: &str, published: bool) {
    tracing::info!(out, manifest_sha256, published, "manifest");
}

fn merge(m: MergeArgs) -> anyhow::Result<u8> {
    // The shards filled the as-of into their `--out`; the merge has no as-of until it reads
    // them, and a placeholder here would name a folder no shard wrote.
    let out_text = m.out.to_string_lossy();
    if let Some(placeholder) =
        (tally::job::OUT_PLACEHOLDERS.iter()).find(|p| out_text.contains(**p))
    {
        return Err(config_error(format!(
            "--out {out_text} holds {placeholder}, which the shards filled in with their \
             as-of: give the merge the folder as they did (e.g. closes/2026-12-01 for \
             closes/{{as_of_date}}), the path before `.shards` of the shard folders"
        )));
    }
    let job = match &m.job {
        Some(path) => Some(JobFile::load(path)?),
        None => None,
    };
    let req = tally::shard::MergeRequest {
        sources: m.sources,
        out: tally::job::output_folder(&m.out),
        data: m.data,
        history: m.history,
        force: m.force,
        alert: alert_of(job.as_ref(), m.job.as_deref())?,
        progress: Progress {
            interactive: progress_bars(),
        },
    };
    // Before `run start`, as for a run (`shard::merge` checks it again).
    tally::refuse_an_unusable_out(&req.out)?;
    let out = req.out.display().to_string();
    // A sharded night ends in its merge: a log collector keyed on `run start` and `run
    // done` must see it start and end as it sees a run on one machine.
    // The folders it reads, as resolved (none given: OUT.shards).
    let shards = match req.sources.is_empty() {
        true => tally::shard::shards_root(&req.out).display().to_string(),
        false => (req.sources.iter())
            .map(|s| s.display().to_string())
            .collect::<Vec<_>>()
            .join(" "),
    };
    tracing::info!(
        command = "merge",
        version = env!("CARGO_PKG_VERSION"),
        out = %out,
        shards = %shards,
        data = %req.data.as_ref().map_or(String::new(), |d| d.display().to_string()),
        history = %req.history.as_ref().map_or(String::new(), |h| h.display().to_string()),
        force = req.force,
        "run start"
    );
    let started = std::time::Instant::now();
    let ended = tally::shard::merge(&req)
        .map_err(anyhow::Error::from)
        .and_then(|outcome| report(&out, "merged and published", Mode::Close, outcome));
    log_run_done(&ended, started.elapsed());
    ended
}

/// Exit 1 with the alert's line when a threshold was crossed.
fn alert_exit(alert: Option<String>) -> anyhow::Result<u8> {
    match alert {
        Some(why) => {
            err_line!("tally: alert: {why}");
            Ok(1)
        }
        None => Ok(0),
    }
}

/// `tally generate`'s error with the exit code of README "Exit codes": bad options or a
/// non-empty output folder are configuration (2); a data root that could not be written
/// (disk full, no permission) is an output (4), as in every run; the embedded price book
/// or a batch that cannot be built is a bug (4).
fn generate_error(e: tally::generate::GenerateError) -> TallyError {
    use tally::generate::GenerateError as G;
    let output = |path: &std::path::Path, source: &dyn std::fmt::Display| TallyError::Output {
        file: path.display().to_string(),
        message: source.to_string(),
    };
    match &e {
        G::InvalidOptions(_) | G::OutputNotEmpty { .. } => {
            TallyError::config("generate", e.to_string())
        }
        G::Io { path, source } => output(path, source),
        G::Parquet { path, source } => output(path, source),
        G::Json { path, source } => output(path, source),
        G::Arrow { .. } | G::PriceBook(_) => TallyError::Invariant(e.to_string()),
    }
}

fn generate(g: GenerateArgs) -> anyhow::Result<u8> {
    let opts = tally::generate::GenerateOptions {
        out: g.out.clone(),
        accounts: g.accounts,
        events: g.events,
        seed: g.seed,
        discrepancy_rate: g.discrepancy_rate,
    };
    let report =
        tally::generate::generate(&opts).map_err(|e| anyhow::Error::new(generate_error(e)))?;
    out_line!(
        "{}: {} usage rows, {} debit rows, {} allocations, {} grants, {} injected discrepancies; reconcile with --as-of {}",
        g.out.display(),
        report.usage_rows,
        report.debit_rows,
        report.allocation_rows,
        report.grant_rows,
        report.truth_rows,
        report.as_of
    );
    Ok(0)
}

fn main() -> ExitCode {
    tally::memory::tune();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayVersion => {
            // Every build says its version until a release: the sha256 of its source,
            // toolchain and settings (what a shard records) tells two builds apart.
            println!(
                "tally {}\nbuild: {} (the sha256 of its source, toolchain and settings)",
                tally::write::VERSION,
                tally::shard::this_build()
            );
            return ExitCode::from(0);
        }
        Err(e) if !e.use_stderr() => {
            // --help and --version: clap's own text on stdout.
            let _ = e.print();
            return ExitCode::from(0);
        }
        Err(e) => {
            err_line!("tally: command line: {}", clap_error_line(&e));
            return ExitCode::from(2);
        }
    };
    // explain and verify answer on stdout: their logs are for warnings only (verify's
    // census logged its `open inputs` stage under every verdict).
    let level = match cli.command {
        Command::Explain(_) | Command::Verify(_) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, level);
    // The commands that make spill and staging folders; `generate` writes its data root in
    // place and `scan` nothing, so a signal ends them as it ends any program.
    let makes_scratch = !matches!(
        cli.command,
        Command::Generate(_) | Command::Scan { .. } | Command::Verify(_)
    );
    if makes_scratch {
        if let Err(e) = tally::interrupt::watch() {
            tracing::warn!(error = %e, "cannot watch for SIGINT/SIGTERM: an interrupted run will leave its scratch folders to the next run");
        }
    }
    std::panic::set_hook(Box::new(|info| {
        // A decoder panic on corrupt input is caught and reported as an input error.
        tally::interrupt::wait_if_stopping();
        if !tally::load::decoding_input() {
            err_line!(
                "tally: internal error: {}",
                info.to_string().replace('\n', " ")
            );
        }
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli)));
    // A signal that came as the command finished (or made it fail, removing its folders):
    // the watcher's line and exit code, not both.
    tally::interrupt::claim_exit();
    let Ok(outcome) = outcome else {
        return ExitCode::from(4);
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = exit_code_of(&e);
            err_line!("tally: {}", one_line(&e));
            ExitCode::from(code)
        }
    }
}

/// A flag-parsing error on one line, like every other failure: clap's first line without
/// its `error: ` prefix, its tip when it has one, and where to look.
fn clap_error_line(e: &clap::Error) -> String {
    if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "a command is required (reconcile, close, merge, explain, verify, generate or scan); `tally --help` lists them".into();
    }
    let text = e.render().to_string();
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .peekable();
    let first = lines.next().unwrap_or("cannot read the flags");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // A first line ending in ':' is followed by what it is about (the missing flags).
    let mut first = first.to_string();
    if first.ends_with(':') {
        let mut named = Vec::new();
        while let Some(l) = lines.next_if(|l| !l.starts_with("Usage:") && !l.starts_with("tip: ")) {
            named.push(l);
        }
        first = format!("{first} {}", named.join(", "));
    }
    // clap's tip ("a similar argument exists") and the values a flag takes. A flag that
    // some other command takes is named as such below, and clap's guess at a similar flag
    // of this command (`close --json`: `--job`) would point away from it.
    let flag_of_another_command = unknown_long_flag(e).is_some_and(|flag| {
        use clap::CommandFactory;
        Cli::command()
            .get_subcommands()
            .any(|c| takes_flag(c, flag))
    });
    let extra: Vec<&str> = lines
        .filter_map(|l| {
            let tip = l.strip_prefix("tip: ").filter(|_| !flag_of_another_command);
            tip.or_else(|| l.starts_with("[possible values").then_some(l))
        })
        .collect();
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" ({})", extra.join("; "))
    };
    format!("{first}{extra}{}", where_to_look(e))
}

/// The long flag an unknown-argument error is about, without its dashes (`--force=x`:
/// `force`).
fn unknown_long_flag(e: &clap::Error) -> Option<&str> {
    use clap::error::{ContextKind, ContextValue};
    match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) if e.kind() == clap::error::ErrorKind::UnknownArgument => {
            arg.split('=').next().and_then(|a| a.strip_prefix("--"))
        }
        _ => None,
    }
}

/// Whether command `c` takes the long flag `--flag`.
fn takes_flag(c: &clap::Command, flag: &str) -> bool {
    c.get_arguments().any(|a| a.get_long() == Some(flag))
}

/// The end of a flag-parsing error: for a flag the command does not take but others do
/// (`reconcile --force`), which ones; and the help that lists the command's flags.
fn where_to_look(e: &clap::Error) -> String {
    use clap::CommandFactory;
    let cli = Cli::command();
    let unknown = unknown_long_flag(e);
    // clap's error does not say which command it was parsing: parse again, errors ignored
    // (the arguments as the OS gave them: a name that is not UTF-8 must not panic here).
    let parsed = (cli.clone().ignore_errors(true))
        .try_get_matches_from(std::env::args_os())
        .ok()
        .and_then(|m| m.subcommand_name().map(str::to_string));
    let flag_of = |flag: &str| {
        let others: Vec<&str> = (cli.get_subcommands())
            .filter(|c| takes_flag(c, flag))
            .map(|c| c.get_name())
            .collect();
        match others.as_slice() {
            [] => String::new(),
            [one] => format!("; --{flag} is a flag of {one}"),
            [rest @ .., last] => format!("; --{flag} is a flag of {} and {last}", rest.join(", ")),
        }
    };
    let Some(command) = parsed else {
        // A command's flag given before the command's name stops the parse before it: the
        // first argument naming a command that takes the flag is the command meant (not
        // the flag's own value, `--out merge reconcile`).
        let Some(flag) = unknown else {
            return "; `tally --help` lists the commands and flags".into();
        };
        // Every long flag that takes a value (`--out merge`: `merge` is a value).
        let takes_value = |arg: &str| {
            let name = arg.strip_prefix("--").filter(|n| !n.contains('='));
            (cli.get_arguments())
                .chain(cli.get_subcommands().flat_map(|c| c.get_arguments()))
                .any(|a| name.is_some() && a.get_long() == name && a.get_action().takes_values())
        };
        let args: Vec<String> = std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let meant = (0..args.len()).find_map(|i| {
            let value_of_a_flag = i > 0 && takes_value(&args[i - 1]);
            let c = cli.find_subcommand(&args[i]).filter(|_| !value_of_a_flag)?;
            takes_flag(c, flag).then(|| c.get_name().to_string())
        });
        return match meant {
            Some(command) => {
                format!(
                    "; put --{flag} after `{command}`; `tally {command} --help` lists its flags"
                )
            }
            None => format!(
                "{}; `tally --help` lists the commands and flags",
                flag_of(flag)
            ),
        };
    };
    let flag_of = unknown.map(flag_of).unwrap_or_default();
    format!("{flag_of}; `tally {command} --help` lists its flags")
}

/// The error on one line (our errors' messages already name their cause).
/// Control characters (a corrupt file's bytes quoted in a library's message: NUL, form
/// feed, a bare CR) are written `\u{..}`, so that the line stays one line of text.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string().replace('\n', " ");
    // A relative path of a run whose working folder was deleted fails as a missing file
    // ("writing ./.out.tally-lock: No such file or directory"): say why. (A folder renamed
    // while the shell was in it still works; only a deleted one is NotFound.)
    let gone = std::env::current_dir().is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
    if gone {
        line += "; note: the working folder no longer exists (deleted while the shell was in \
                 it), so relative paths name nothing: cd to a folder that exists, or give \
                 absolute paths";
    }
    tally::error::controls_escaped(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A corrupt file's bytes quoted in a library's message (a byte-flip fuzz of the
    /// fixtures found one in a debits footer) stay on the one line: control characters are
    /// written `\u{..}`, a newline becomes a space.
    #[test]
    fn an_error_line_holds_no_control_characters() {
        let e = anyhow::anyhow!(
            "debits/part-0.parquet: not a readable Parquet file: incompatible arrow schema, \
             expected field named account_id got \u{8}\0\u{c}\r\nnext"
        );
        assert_eq!(
            one_line(&e),
            "debits/part-0.parquet: not a readable Parquet file: incompatible arrow schema, \
             expected field named account_id got \\u{8}\\u{0}\\u{c}\\u{d} next"
        );
        assert_eq!(one_line(&anyhow::anyhow!("plain ünï 名")), "plain ünï 名");
    }

    /// The contract (section 7): "`--settle` takes durations like `15m`, `900s`, `1h`
    /// (default 15m)". Those are taken, and so is the limit, 7 days; a settle past it, or
    /// not a whole number of seconds (tally records settles in seconds), is refused.
    #[test]
    fn settle_takes_the_contracts_durations_and_refuses_past_its_limits() {
        let settle = |text: Option<&str>| {
            parse_settle(text.map(|t| (t.to_string(), Origin::flag("--settle"))))
                .map_err(|e| one_line(&e))
        };
        let minutes = |m: i64| m * 60 * 1_000_000;
        assert_eq!(settle(None), Ok(minutes(15)));
        assert_eq!(settle(Some("15m")), Ok(minutes(15)));
        assert_eq!(settle(Some("900s")), Ok(minutes(15)));
        assert_eq!(settle(Some("1h")), Ok(minutes(60)));
        assert_eq!(settle(Some("7d")), Ok(tally::run::MAX_SETTLE_MICROS));
        let refused = |text: &str| settle(Some(text)).unwrap_err();
        assert!(refused("604801s").contains("is longer than 7 days"));
        assert!(refused("99999999999999999999d").contains("is longer than 7 days"));
        assert!(refused("1500ms").contains("is not a whole number of seconds"));
        assert!(refused("soon").contains("is not a duration such as 15m, 900s or 1h"));
    }

    /// `--as-of` takes the years an input's instants may hold, 0001 to 9999 (RFC 3339's
    /// four digits, in which the manifest records it for later runs to read back), up to
    /// the last microsecond; one past either end is refused.
    #[test]
    fn as_of_takes_the_years_0001_to_9999_and_one_past_is_refused() {
        let as_of =
            |text: &str| parse_as_of(text, &Origin::flag("--as-of")).map_err(|e| one_line(&e));
        assert_eq!(as_of("0001-01-01"), Ok(tally::time::FIRST_INSTANT));
        assert_eq!(
            as_of("9999-12-31T23:59:59.999999Z"),
            Ok(tally::time::END_OF_INSTANTS - 1)
        );
        for past in ["0000-12-31T23:59:59.999999Z", "+10000-01-01"] {
            assert_eq!(
                as_of(past),
                Err(format!(
                    "command line: --as-of {past} is outside the years 0001 to 9999"
                ))
            );
        }
    }

    /// `alert.max_abs_delta_credits` goes up to the largest amount an output holds
    /// (999999999999999.999); 10^15, or a value that rounds to it, is refused.
    #[test]
    fn a_delta_threshold_goes_up_to_the_largest_amount_and_one_past_is_refused() {
        let threshold = |value: &str| {
            let text =
                format!("data = \"d\"\nout = \"o\"\n[alert]\nmax_abs_delta_credits = {value}\n");
            let job: JobFile = toml::from_str(&text).unwrap();
            alert_of(Some(&job), None)
                .map(|a| a.max_abs_delta_credits.map(|c| c.to_string()))
                .map_err(|e| one_line(&e))
        };
        let most = "999999999999999.999";
        assert_eq!(
            threshold(&format!("\"{most}\"")),
            Ok(Some(most.to_string()))
        );
        assert_eq!(
            threshold("999999999999999"),
            Ok(Some("999999999999999.000".to_string()))
        );
        for past in [
            "\"1000000000000000\"",
            "\"999999999999999.9995\"",
            "1000000000000000",
        ] {
            let refused = threshold(past).unwrap_err();
            assert!(
                refused.ends_with("is out of range (|x| must be < 10^15)"),
                "{past}: {refused}"
            );
        }
    }
}
