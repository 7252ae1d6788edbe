//! Helpers shared by the integration tests.

use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root: `cargo test` names it at run time. The compile-time value is only
/// the fallback, because a test binary can be reused from another clone that shares the
/// target folder (CI keeps one outside the clone) and that clone may be gone.
pub fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// The real binary with `args`, quiet logs; callers may add environment before running.
pub fn tally_command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
    c.args(args).env("TALLY_LOG", "warn");
    c
}

/// `tally COMMAND --data DATA --as-of AS_OF --out OUT`, not yet run.
pub fn run_command(command: &str, data: &Path, as_of: &str, out: &Path) -> Command {
    tally_command(&[
        command,
        "--data",
        data.to_str().unwrap(),
        "--as-of",
        as_of,
        "--out",
        out.to_str().unwrap(),
    ])
}

/// `tally explain --data data --as-of as_of extra... --json`, which must succeed, parsed.
pub fn explain_json(data: &Path, as_of: &str, extra: &[&str]) -> serde_json::Value {
    explain_json_as(data, as_of, extra)
}

/// [`explain_json`] parsed as a `T`.
pub fn explain_json_as<T: serde::de::DeserializeOwned>(
    data: &Path,
    as_of: &str,
    extra: &[&str],
) -> T {
    let mut args = explain_args(data, as_of, extra);
    args.push("--json");
    let out = tally_ok(&args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// `tally explain` of `data` as of `as_of` with `extra`: its text (exit 0 asserted).
pub fn explain_text(data: &Path, as_of: &str, extra: &[&str]) -> String {
    let out = tally_ok(&explain_args(data, as_of, extra));
    String::from_utf8(out.stdout).unwrap()
}

fn explain_args<'a>(data: &'a Path, as_of: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "explain",
        "--data",
        data.to_str().unwrap(),
        "--as-of",
        as_of,
    ];
    args.extend_from_slice(extra);
    args
}

/// Run the real binary.
pub fn tally(args: &[&str]) -> Output {
    tally_command(args).output().expect("tally runs")
}

pub fn tally_ok(args: &[&str]) -> Output {
    let out = tally(args);
    assert!(
        out.status.success(),
        "tally {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `tally generate` into `dir`: a deterministic data root with injected discrepancies.
pub fn generate(dir: &Path, accounts: u64, events: u64, seed: u64, discrepancy_rate: &str) {
    tally_ok(&[
        "generate",
        "--out",
        dir.to_str().unwrap(),
        "--accounts",
        &accounts.to_string(),
        "--events",
        &events.to_string(),
        "--seed",
        &seed.to_string(),
        "--discrepancy-rate",
        discrepancy_rate,
    ]);
}

/// Run `command` to its end and assert that it succeeded (its stderr in the message).
pub fn succeeded(command: &mut Command) -> Output {
    let output = command.output().expect("tally runs");
    assert!(output.status.success(), "{}", stderr(&output));
    output
}

/// [`run_command`] run to its end, asserting that it succeeded (its stderr in the message).
pub fn run_command_ok(command: &str, data: &Path, as_of: &str, out: &Path) -> Output {
    succeeded(&mut run_command(command, data, as_of, out))
}

/// Rows of a table file as the manifest counts them: a Parquet file's rows, a CSV's
/// records after its header.
pub fn table_rows(path: &Path) -> u64 {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => read_parquet(path).num_rows() as u64,
        Some("csv") => csv::Reader::from_path(path).unwrap().records().count() as u64,
        _ => panic!("{} is not a table", path.display()),
    }
}

/// [`generate`] into `dir/data`, the data root returned.
pub fn generated_data(
    dir: &Path,
    accounts: u64,
    events: u64,
    seed: u64,
    discrepancy_rate: &str,
) -> PathBuf {
    let data = dir.join("data");
    generate(&data, accounts, events, seed, discrepancy_rate);
    data
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON log lines of a run's stderr (`--log-format json`, or not a terminal), parsed;
/// other lines (a last line, a panic) are left out.
pub fn json_log(out: &Output) -> Vec<serde_json::Value> {
    stderr(out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

/// The messages of the `WARN` lines (JSON logs) that name a dataset: a dataset folder's
/// files not read, a required dataset with no Parquet file, or a nullable column held under
/// another spelling.
pub fn dataset_warnings(out: &Output) -> Vec<String> {
    (json_log(out).into_iter())
        .filter(|v| v["level"] == "WARN" && v["fields"]["dataset"].is_string())
        .map(|v| v["fields"]["message"].as_str().unwrap().to_string())
        .collect()
}

/// stderr without the [`dataset_warnings`] lines: a test whose data root holds only what
/// it tests (no ledger entries, say) sees them before the line it asserts.
pub fn stderr_past_dataset_warnings(out: &Output) -> String {
    let is_dataset_warning = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line)
            .is_ok_and(|v| v["level"] == "WARN" && v["fields"]["dataset"].is_string())
    };
    stderr(out)
        .lines()
        .filter(|l| !is_dataset_warning(l))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Every `*.parquet` file under `dir`, in the order the folders list them.
pub fn walk_parquet(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk_parquet(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            found.push(path);
        }
    }
    found
}

/// Read a whole Parquet file as one batch.
pub fn read_parquet(path: &Path) -> RecordBatch {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let schema = batches.first().map(|b| b.schema()).unwrap_or_else(|| {
        let file = std::fs::File::open(path).unwrap();
        ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .schema()
            .clone()
    });
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

/// A Parquet output rendered as CSV (the golden form), optionally without some columns.
pub fn render(path: &Path, drop_columns: &[&str]) -> String {
    let batch = read_parquet(path);
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| !drop_columns.contains(&batch.schema().field(i).name().as_str()))
        .collect();
    let projected = batch.project(&keep).unwrap();
    String::from_utf8(tally::write::table_csv(&projected).unwrap()).unwrap()
}

/// Every file of a folder and its subfolders (`report/`) with its bytes, sorted by path
/// relative to the folder (`/`-separated).
pub fn folder_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for e in std::fs::read_dir(&folder).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap();
                let name = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                files.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A data root at `root` holding only the fixtures' price book and an empty
/// `allocations/` (the test writes the rest).
pub fn root_with_pricebook(root: &Path) {
    std::fs::create_dir_all(root.join("allocations")).unwrap();
    std::fs::copy(
        repo().join("fixtures/pricebook.toml"),
        root.join("pricebook.toml"),
    )
    .unwrap();
}

/// A copy of the bundled fixtures' data root (`fixtures/demo`) at `dir/data`, for a test
/// that changes it.
pub fn demo_copy(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    copy_dir(&repo().join("fixtures/demo"), &data);
    data
}

/// Copy a folder and everything under it.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `allocations/part-0.parquet` under `root`: each of `accounts` active on `plan_id` for
/// November 2026 with `included` credits, no billing anchor.
pub fn write_november_allocations(
    root: &Path,
    accounts: &[&str],
    plan_id: &str,
    included: tally::amount::Milli,
) {
    let t = |s: &str| tally::time::parse_instant(s).unwrap();
    std::fs::create_dir_all(root.join("allocations")).unwrap();
    let allocations = tally::write::Table::default()
        .str("account_id", accounts.iter().copied())
        .str("plan_id", accounts.iter().map(|_| plan_id))
        .ts(
            "period_start",
            accounts.iter().map(|_| t("2026-11-01T00:00:00Z")),
        )
        .ts(
            "period_end",
            accounts.iter().map(|_| t("2026-12-01T00:00:00Z")),
        )
        .credits("included_credits", accounts.iter().map(|_| included))
        .opt_ts("billing_anchor", accounts.iter().map(|_| None))
        .str("status", accounts.iter().map(|_| "active"))
        .finish();
    tally::write::write_parquet(&root.join("allocations/part-0.parquet"), &allocations).unwrap();
}

/// A string column of `cells` as they are, bytes that are not UTF-8 included (as an
/// exporter that does not check writes them), for a Parquet file written from it: the
/// writer copies the bytes, and nothing reads the array as text.
pub fn strings_unchecked(cells: Vec<Option<Vec<u8>>>) -> arrow::array::StringArray {
    use arrow::array::Array;
    let bytes = arrow::array::BinaryArray::from_iter(cells);
    // SAFETY: the array only goes to a Parquet writer, which copies its bytes; nothing
    // reads it as text.
    arrow::array::StringArray::from(unsafe {
        bytes
            .into_data()
            .into_builder()
            .data_type(arrow::datatypes::DataType::Utf8)
            .build_unchecked()
    })
}

/// The Parquet file at `path` rewritten with the row groups `edit` makes of its footer's,
/// its pages as they were (a footer that lies, as damage or another writer leaves one).
pub fn rewrite_footer(
    path: &Path,
    edit: impl Fn(
        &parquet::file::metadata::RowGroupMetaData,
    ) -> parquet::file::metadata::RowGroupMetaData,
) {
    use parquet::file::metadata::{
        PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader, ParquetMetaDataWriter,
    };
    let bytes = std::fs::read(path).unwrap();
    let footer_len =
        u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
    let data_end = bytes.len() - 8 - footer_len as usize;
    let metadata = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Skip)
        .parse_and_finish(&bytes::Bytes::from(bytes.clone()))
        .unwrap();
    let row_groups = metadata.row_groups().iter().map(edit).collect();
    let edited = ParquetMetaData::new(metadata.file_metadata().clone(), row_groups);
    let mut out = bytes[..data_end].to_vec();
    ParquetMetaDataWriter::new(&mut out, &edited)
        .finish()
        .unwrap();
    std::fs::write(path, out).unwrap();
}

/// A FIFO made at `path` in place of a file tally reads, which tally must refuse without
/// opening it for reading. Should it open it (the refusal regressed), a watcher opens the
/// write end as soon as a reader waits and closes it: the reader's open returns and its
/// read ends (EOF), so the test does not hang, and dropping this fails the test (a reader
/// opened it), whatever tally said then. Dropping it stops the watcher.
pub struct Fifo {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    opened: std::sync::Arc<std::sync::atomic::AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Fifo {
    pub fn at(path: &Path) -> Fifo {
        use std::os::unix::fs::OpenOptionsExt;
        let made = Command::new("mkfifo").arg(path).status().unwrap();
        assert!(made.success(), "mkfifo {}", path.display());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opened = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (watched, stopped, seen) = (path.to_path_buf(), stop.clone(), opened.clone());
        let watcher = std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                // Without a reader, a non-blocking open of the write end fails (ENXIO).
                let writer = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&watched);
                if writer.is_ok() {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                drop(writer);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        Fifo {
            stop,
            opened,
            watcher: Some(watcher),
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        if !std::thread::panicking() {
            assert!(
                !self.opened.load(std::sync::atomic::Ordering::Relaxed),
                "tally opened the FIFO {} for reading",
                self.path.display()
            );
        }
    }
}
