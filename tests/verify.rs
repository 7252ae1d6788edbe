//! `tally verify`: a published folder held against its manifest.json (every output's
//! sha256), and with `--data` / `--history` the inputs the run read. Exit 0 when all match,
//! 1 with one line per difference, 2 when the folder is not one a run published.

use crate::common::{demo_copy, json, read_parquet, run_command_ok, stderr, tally, tally_command};
use std::path::{Path, PathBuf};

const AS_OF: &str = "2026-11-20T00:00:00Z";

/// `tally verify OUT extra...`: its exit code and stdout.
fn verify(out: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let ran = tally_command(&["verify", out.to_str().unwrap()])
        .args(extra)
        .output()
        .expect("tally runs");
    assert!(
        ran.status.code() != Some(2) || !ran.stderr.is_empty(),
        "exit 2 without a message"
    );
    (
        ran.status.code(),
        String::from_utf8_lossy(&ran.stdout).into_owned(),
    )
}

/// The number of outputs and inputs `out`'s manifest lists.
fn listed(out: &Path) -> (usize, usize) {
    let manifest = json(&out.join("manifest.json"));
    let count = |key: &str| manifest[key].as_array().unwrap().len();
    (count("outputs"), count("inputs"))
}

/// The line of a folder `out` (a `command` at `as_of`) whose every output and input is as
/// the run left them.
fn as_written_and_read(out: &Path, command: &str, as_of: &str) -> String {
    let (outputs, inputs) = listed(out);
    format!(
        "{}: {command} as of {as_of}: {outputs} outputs as written; {inputs} inputs as read\n",
        out.display()
    )
}

/// A reconcile of a copy of the bundled data root (`TMP/data`) published in `TMP/out`.
fn published_reconcile() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let out = tmp.path().join("out");
    run_command_ok("reconcile", &data, AS_OF, &out);
    (tmp, data, out)
}

/// `tally verify args...` refused: exit 2, `message` its one stderr line, nothing on stdout.
fn assert_refused(args: &[&Path], message: String) {
    let ran = tally_command(&["verify"])
        .args(args)
        .output()
        .expect("tally runs");
    assert_eq!(ran.status.code(), Some(2), "{}", stderr(&ran));
    assert_eq!(stderr(&ran), format!("tally: {message}\n"));
    assert!(ran.stdout.is_empty());
}

/// A reconcile of a copy of the bundled data root, untouched since: every output as
/// written, every input as read; without `--data` the inputs are counted as not checked.
#[test]
fn a_published_folder_verifies_as_written_and_read() {
    let (_tmp, data, out) = published_reconcile();
    let (outputs, inputs) = listed(&out);
    assert!(
        outputs > 30 && inputs > 30,
        "{outputs} outputs, {inputs} inputs"
    );
    let (code, stdout) = verify(&out, &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(
        stdout,
        format!(
            "{}: reconcile as of {AS_OF}: {outputs} outputs as written; {inputs} inputs not \
             checked (--data checks the data root's, --history the earlier closes')\n",
            out.display()
        )
    );
    let (code, stdout) = verify(&out, &["--data", data.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(stdout, as_written_and_read(&out, "reconcile", AS_OF));
}

/// An output folder altered after the run: a byte changed (same size), a file removed, a
/// file added at the top and one in `report/`: each named, outputs in path order by kind,
/// exit 1. The same folder restored verifies again.
#[test]
fn altered_outputs_are_each_named_and_exit_1() {
    let (_tmp, _, out) = published_reconcile();
    let (outputs, _) = listed(&out);
    let balances = out.join("balances.csv");
    let original = std::fs::read(&balances).unwrap();
    let mut altered = original.clone();
    let last = altered.len() - 2;
    altered[last] = if altered[last] == b'1' { b'2' } else { b'1' };
    std::fs::write(&balances, &altered).unwrap();
    let summary = std::fs::read(out.join("summary.md")).unwrap();
    std::fs::remove_file(out.join("summary.md")).unwrap();
    std::fs::write(out.join("notes.txt"), "finance's notes").unwrap();
    std::fs::write(out.join("report/extra.csv"), "a,b\n").unwrap();

    let (code, stdout) = verify(&out, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    let (_, inputs) = listed(&out);
    assert_eq!(
        stdout,
        format!(
            "output changed: balances.csv (its sha256 is not the manifest's)\n\
             output missing: summary.md\n\
             output not in the manifest: notes.txt (added after the run, or its manifest entry was removed)\n\
             output not in the manifest: report/extra.csv (added after the run, or its manifest entry was removed)\n\
             {}: reconcile as of {AS_OF}: 4 output differences (the folder is not as the run \
             wrote it; the manifest lists {outputs} outputs); {inputs} inputs not checked \
             (--data checks the data root's, --history the earlier closes')\n",
            out.display()
        )
    );

    std::fs::write(&balances, &original).unwrap();
    std::fs::write(out.join("summary.md"), summary).unwrap();
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    std::fs::remove_file(out.join("report/extra.csv")).unwrap();
    assert_eq!(verify(&out, &[]).0, Some(0));

    // An output's entry taken out of the manifest: the file is then one the manifest does
    // not list, and verify cannot tell that from a file added later (the manifest cannot
    // vouch for itself), so its line names both.
    let manifest_path = out.join("manifest.json");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    let mut edited = json(&manifest_path);
    edited["outputs"]
        .as_array_mut()
        .unwrap()
        .retain(|entry| entry["path"] != "balances.csv");
    std::fs::write(&manifest_path, edited.to_string()).unwrap();
    let (outputs_listed, inputs) = listed(&out);
    assert_eq!(outputs_listed, outputs - 1);
    let (code, stdout) = verify(&out, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        stdout,
        format!(
            "output not in the manifest: balances.csv (added after the run, or its manifest \
             entry was removed)\n\
             {}: reconcile as of {AS_OF}: 1 output difference (the folder is not as the run \
             wrote it; the manifest lists {outputs_listed} outputs); {inputs} inputs not \
             checked (--data checks the data root's, --history the earlier closes')\n",
            out.display()
        )
    );
    std::fs::write(&manifest_path, manifest).unwrap();
    assert_eq!(verify(&out, &[]).0, Some(0));
}

/// The data root after the run: a usage file changed, another gone, a usage file and a
/// price book edit that landed later: each named, exit 1. Files a run would not read (a
/// `.csv`, a hidden staging file) are not inputs and not named.
#[test]
fn inputs_changed_since_the_run_are_each_named_and_exit_1() {
    let (_tmp, data, out) = published_reconcile();
    let (outputs, inputs) = listed(&out);
    let usage = data.join("usage");
    let mut appended = std::fs::read(usage.join("bucket=1/part-0.parquet")).unwrap();
    appended.push(0);
    std::fs::write(usage.join("bucket=1/part-0.parquet"), appended).unwrap();
    std::fs::remove_file(usage.join("bucket=2/part-0.parquet")).unwrap();
    std::fs::copy(
        usage.join("bucket=3/part-0.parquet"),
        usage.join("bucket=3/part-1.parquet"),
    )
    .unwrap();
    std::fs::write(usage.join("bucket=3/export.csv"), "not an input").unwrap();
    std::fs::write(usage.join("bucket=3/.part-2.parquet.tmp"), "a writer's").unwrap();
    let pricebook = data.join("pricebook.toml");
    let text = std::fs::read_to_string(&pricebook).unwrap();
    std::fs::write(&pricebook, format!("{text}\n# edited after the run\n")).unwrap();

    let (code, stdout) = verify(&out, &["--data", data.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        stdout,
        format!(
            "input changed: pricebook.toml (its sha256 is not the one read)\n\
             input changed: usage/bucket=1/part-0.parquet (its sha256 is not the one read)\n\
             input gone: usage/bucket=2/part-0.parquet\n\
             input new: usage/bucket=3/part-1.parquet (the run did not read it)\n\
             {}: reconcile as of {AS_OF}: {outputs} outputs as written; 4 input differences \
             (the run read other files: its figures are not those of the inputs as they are \
             now)\n",
            out.display()
        )
    );
    assert!(inputs > 4);
}

/// A close that read an earlier close (`--history`): its manifest lists that close's
/// manifest.json as an input, checked with `--history` (a later close added beside it
/// afterwards is new; the earlier close's manifest altered is changed) and counted as not
/// checked without it.
#[test]
fn a_close_verifies_the_earlier_closes_it_read_with_history() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let closes = tmp.path().join("closes");
    let close = |as_of: &str, name: &str| {
        let out = closes.join(name);
        let ran = crate::common::run_command("close", &data, as_of, &out)
            .args(["--history", closes.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(ran.status.success(), "{}", stderr(&ran));
        out
    };
    close("2026-12-01T00:00:00Z", "2026-11");
    let december = close("2027-01-01T00:00:00Z", "2026-12");
    let manifest = json(&december.join("manifest.json"));
    let history: Vec<&str> = (manifest["inputs"].as_array().unwrap().iter())
        .filter_map(|f| f["path"].as_str())
        .filter(|p| p.starts_with("history/"))
        .collect();
    assert_eq!(history, ["history/2026-11/manifest.json"]);
    let (outputs, inputs) = listed(&december);
    let closes_arg = closes.to_str().unwrap();
    let data_arg = data.to_str().unwrap();

    let (code, stdout) = verify(&december, &["--data", data_arg]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(
        stdout,
        format!(
            "{}: close as of 2027-01-01T00:00:00Z: {outputs} outputs as written; {} inputs as \
             read; 1 input not checked (--data checks the data root's, --history the earlier \
             closes')\n",
            december.display(),
            inputs - 1
        )
    );
    let both = ["--data", data_arg, "--history", closes_arg];
    let (code, stdout) = verify(&december, &both);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.ends_with(&format!("{inputs} inputs as read\n")),
        "{stdout}"
    );
    // A copy of the folder handed to an auditor, outside the history: verified against the
    // history it was made with all the same.
    let audit = tmp.path().join("audit/2026-12");
    crate::common::copy_dir(&december, &audit);
    let (code, stdout) = verify(&audit, &both);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.ends_with(&format!("{inputs} inputs as read\n")),
        "{stdout}"
    );

    // A close at a later as-of made beside them is built on this one, not an input it
    // lacks: counted apart, exit 0.
    close("2027-02-01T00:00:00Z", "2027-01");
    let (code, stdout) = verify(&december, &both);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.ends_with(&format!(
            "{inputs} inputs as read; 1 later close under --history, built on this one (not \
             its inputs)\n"
        )),
        "{stdout}"
    );
    // An earlier close made since (a rerun of December would read it), and the November
    // close's manifest altered: both differences.
    close("2026-11-01T00:00:00Z", "2026-10");
    let earlier = closes.join("2026-11/manifest.json");
    let text = std::fs::read_to_string(&earlier).unwrap();
    std::fs::write(&earlier, text.replace("\"tool\"", " \"tool\"")).unwrap();
    let (code, stdout) = verify(&december, &both);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        stdout.lines().take(2).collect::<Vec<_>>(),
        [
            "input changed: history/2026-11/manifest.json (its sha256 is not the one read)",
            "input new: history/2026-10/manifest.json (the run did not read it)",
        ],
        "{stdout}"
    );

    // --history given to a reconcile's folder, or naming no folder: exit 2 (a mistyped
    // folder would list every earlier close as gone).
    let reconcile = tmp.path().join("reconcile");
    run_command_ok("reconcile", &data, AS_OF, &reconcile);
    assert_refused(
        &[&reconcile, Path::new("--history"), &closes],
        format!(
            "command line: --history applies to a close's folder; {} holds a reconcile",
            reconcile.display()
        ),
    );
    let nope = tmp.path().join("nope");
    assert_refused(
        &[&december, Path::new("--history"), &nope],
        format!(
            "{}: is not a folder: give --history the folder of earlier closes the close read",
            nope.display()
        ),
    );
    // An earlier close's folder given as the history (its parent was meant): the close's
    // own refusal, exit 2 (it listed that close's manifest as an input gone, exit 1).
    let november = closes.join("2026-11");
    assert_refused(
        &[&december, Path::new("--history"), &november],
        format!(
            "{}: this history folder is itself a tally output folder (it holds \
             manifest.json); --history names the folder holding the earlier closes, such as \
             {}",
            november.display(),
            closes.display()
        ),
    );
}

/// A run fingerprints an earlier close by its manifest but reads its invoices and billed
/// events: one of those files edited since is refused where it is opened, by a later close
/// and by its no-op rerun, naming the file and `tally verify`. The billed events are checked
/// by their rows (a row dropped), the invoices, read whole, by their bytes (a row dropped,
/// or a value changed with the rows kept); so is a manifest entry that lists no row count
/// for the billed events, or no entry at all.
#[test]
fn an_earlier_close_whose_billed_events_changed_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let closes = tmp.path().join("closes");
    let close = |as_of: &str, name: &str| {
        crate::common::run_command("close", &data, as_of, &closes.join(name))
            .args(["--history", closes.to_str().unwrap()])
            .output()
            .unwrap()
    };
    assert!(close("2026-12-01T00:00:00Z", "2026-11").status.success());
    assert!(close("2027-01-01T00:00:00Z", "2026-12").status.success());
    let november = closes.join("2026-11");
    let refusal = |path: &Path, what: &str| {
        format!(
            "tally: {}: {what}: it changed since that close was published; restore the folder \
             from a backup (`tally verify {}` checks every file)\n",
            path.display(),
            november.display()
        )
    };
    let refused_by_later_closes = |path: &Path, expected: &str| {
        for rerun in [
            close("2027-01-01T00:00:00Z", "2026-12"),
            close("2027-02-01T00:00:00Z", "2027-01"),
        ] {
            assert_eq!(rerun.status.code(), Some(2), "{}", stderr(&rerun));
            assert_eq!(stderr(&rerun), expected, "{}", path.display());
        }
    };
    let differs = "differs from the sha256 its close's manifest.json lists";
    let billed = november.join("billed_events.parquet");
    let invoices = november.join("invoices.parquet");
    // A row dropped.
    for (path, what) in [(&billed, None), (&invoices, Some(differs))] {
        let original = std::fs::read(path).unwrap();
        let batch = read_parquet(path);
        let rows = batch.num_rows();
        assert!(rows > 1, "{}", path.display());
        tally::write::write_parquet(path, &batch.slice(1, rows - 1)).unwrap();
        let counted = format!(
            "holds {} rows where its close's manifest.json lists {rows} rows",
            rows - 1
        );
        refused_by_later_closes(path, &refusal(path, what.unwrap_or(&counted)));
        std::fs::write(path, original).unwrap();
    }
    // An invoice's period moved, its rows kept: the bytes differ, the row count does not.
    let original = std::fs::read(&invoices).unwrap();
    let batch = read_parquet(&invoices);
    let mut columns = batch.columns().to_vec();
    let start = batch.schema().index_of("period_start").unwrap();
    let starts = arrow::array::AsArray::as_primitive::<arrow::datatypes::TimestampMicrosecondType>(
        &columns[start],
    );
    let later: arrow::array::TimestampMicrosecondArray = starts.unary(|micros| micros + 1);
    columns[start] = std::sync::Arc::new(later.with_data_type(columns[start].data_type().clone()));
    let moved = arrow::record_batch::RecordBatch::try_new(batch.schema(), columns).unwrap();
    tally::write::write_parquet(&invoices, &moved).unwrap();
    assert_eq!(read_parquet(&invoices).num_rows(), batch.num_rows());
    refused_by_later_closes(&invoices, &refusal(&invoices, differs));
    std::fs::write(&invoices, original).unwrap();
    // The manifest's entry for the billed events without its row count, then without the
    // invoices' entry: a later close refuses rather than trusting a file it cannot check.
    let manifest_path = november.join("manifest.json");
    let edit_manifest = |edit: &dyn Fn(&mut Vec<serde_json::Value>)| {
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
        edit(manifest["outputs"].as_array_mut().unwrap());
        std::fs::write(
            &manifest_path,
            serde_json::to_vec_pretty(&manifest).unwrap(),
        )
        .unwrap();
    };
    edit_manifest(&|outputs| {
        let entry = (outputs.iter_mut())
            .find(|f| f["path"] == "billed_events.parquet")
            .unwrap();
        entry.as_object_mut().unwrap().remove("rows").unwrap();
    });
    let rows = read_parquet(&billed).num_rows();
    let later = close("2027-02-01T00:00:00Z", "2027-01");
    assert_eq!(later.status.code(), Some(2), "{}", stderr(&later));
    assert_eq!(
        stderr(&later),
        refusal(
            &billed,
            &format!("holds {rows} rows where its close's manifest.json lists no row count")
        )
    );
    edit_manifest(&|outputs| outputs.retain(|f| f["path"] != "invoices.parquet"));
    let later = close("2027-02-01T00:00:00Z", "2027-01");
    assert_eq!(later.status.code(), Some(2), "{}", stderr(&later));
    assert_eq!(
        stderr(&later),
        refusal(&invoices, "is not listed in its close's manifest.json")
    );
}

/// A listed output that is now a folder or a link (the run writes files only; a link may
/// point anywhere, a pipe would never end a read) is changed; a file named with a newline
/// is shown with `\u{a}`, so that no line reads as another finding.
#[test]
fn what_the_run_never_writes_is_a_difference_shown_on_its_line() {
    let (tmp, _, out) = published_reconcile();
    let copy = tmp.path().join("rejects-copy.csv");
    std::fs::rename(out.join("rejects.csv"), &copy).unwrap();
    std::os::unix::fs::symlink(&copy, out.join("rejects.csv")).unwrap();
    std::fs::remove_file(out.join("summary.md")).unwrap();
    std::fs::create_dir(out.join("summary.md")).unwrap();
    std::fs::write(out.join("x\noutput changed: invoices.csv"), "").unwrap();
    let (code, stdout) = verify(&out, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        stdout.lines().take(3).collect::<Vec<_>>(),
        [
            "output changed: rejects.csv (not a regular file: the run writes only files)",
            "output changed: summary.md (not a regular file: the run writes only files)",
            "output not in the manifest: x\\u{a}output changed: invoices.csv (added after the \
             run, or its manifest entry was removed)",
        ],
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
}

/// Verify answers on stdout; at its default log level (warnings, as explain's) its stderr
/// holds nothing when nothing is wrong (it logged its census's `open inputs` stage).
#[test]
fn verify_logs_nothing_at_its_default_level() {
    let (_tmp, data, out) = published_reconcile();
    let ran = tally_command(&[
        "verify",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ])
    .env_remove("TALLY_LOG")
    .args(["--log-format", "json"])
    .output()
    .unwrap();
    assert_eq!(ran.status.code(), Some(0), "{}", stderr(&ran));
    assert_eq!(stderr(&ran), "");
    assert!(String::from_utf8_lossy(&ran.stdout).contains("inputs as read"));
}

/// What is not a published folder is exit 2 with one line naming it: a path that does not
/// exist, a file, a folder without a manifest, a shard's part, an unreadable manifest, one
/// written by another tool, one listing a path outside the folder; and a `--data` that is
/// not a data root.
#[test]
fn a_folder_a_run_did_not_publish_is_exit_2() {
    let (tmp, data, out) = published_reconcile();
    let path = |name: &str| tmp.path().join(name);
    let refused = |target: &Path, why: &str| {
        assert_refused(&[target], format!("{}: {why}", target.display()));
    };
    let publish_it = "give `tally verify` the folder a run published (its --out)";
    refused(&path("nope"), &format!("does not exist: {publish_it}"));
    std::fs::write(path("a-file"), "x").unwrap();
    refused(&path("a-file"), &format!("is not a folder: {publish_it}"));
    std::fs::create_dir(path("empty")).unwrap();
    refused(
        &path("empty"),
        "holds no manifest.json: not a folder a tally run published",
    );
    std::fs::create_dir(path("shard=0")).unwrap();
    std::fs::write(path("shard=0/shard.json"), "{}").unwrap();
    refused(
        &path("shard=0"),
        "is a shard's part of a sharded run (it holds shard.json): `tally merge` checks its \
         files; verify the merged folder",
    );
    std::fs::create_dir(path("garbled")).unwrap();
    std::fs::write(path("garbled/manifest.json"), "{\"tool\": ").unwrap();
    let ran = tally(&["verify", path("garbled").to_str().unwrap()]);
    assert_eq!(ran.status.code(), Some(2));
    assert!(
        stderr(&ran).starts_with(&format!(
            "tally: {}: unreadable manifest: ",
            path("garbled/manifest.json").display()
        )),
        "{}",
        stderr(&ran)
    );

    let manifest_path = out.join("manifest.json");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    let with_manifest = |text: String, why: &str| {
        std::fs::write(&manifest_path, text).unwrap();
        assert_refused(&[&out], format!("{}: {why}", manifest_path.display()));
    };
    with_manifest(
        manifest.replace("\"tool\": \"tally\"", "\"tool\": \"other\""),
        "not a tally manifest (its tool is \"other\")",
    );
    // A listed path outside the folder (a hand-edited manifest): never read.
    with_manifest(
        manifest.replace(
            "\"path\": \"balances.csv\"",
            "\"path\": \"../data/pricebook.toml\"",
        ),
        "unreadable manifest: \"../data/pricebook.toml\" is not a path inside the folder \
         (absolute, or with `.` or `..`)",
    );
    // A path listed twice (as outputs, as inputs): counted and compared twice before.
    with_manifest(
        manifest.replace("\"path\": \"rejects.csv\"", "\"path\": \"balances.csv\""),
        "unreadable manifest: \"balances.csv\" is listed twice",
    );
    with_manifest(
        manifest.replace(
            "\"path\": \"usage/bucket=1/part-0.parquet\"",
            "\"path\": \"usage/bucket=0/part-0.parquet\"",
        ),
        "unreadable manifest: \"usage/bucket=0/part-0.parquet\" is listed twice",
    );
    // The command and as-of go into verify's last line: a newline there forged a finding's
    // line (exit 0), any other command or as-of passed as it was.
    with_manifest(
        manifest.replace(
            "\"command\": \"reconcile\"",
            "\"command\": \"reconcile\\noutput changed: x\"",
        ),
        "unreadable manifest: `command` is \"reconcile\\noutput changed: x\", not reconcile \
         or close",
    );
    with_manifest(
        manifest.replace(
            &format!("\"as_of\": \"{AS_OF}\""),
            "\"as_of\": \"yesterday\"",
        ),
        "unreadable manifest: `as_of` is not an instant",
    );
    // A FIFO in its place: refused, not read (the read waited for a writer forever).
    std::fs::remove_file(&manifest_path).unwrap();
    let fifo = crate::common::Fifo::at(&manifest_path);
    assert_refused(
        &[&out],
        format!(
            "{}: not a regular file (a folder, a pipe, a socket or a device)",
            manifest_path.display()
        ),
    );
    drop(fifo);
    std::fs::remove_file(&manifest_path).unwrap();
    std::fs::write(&manifest_path, &manifest).unwrap();
    // A folder of outputs replaced by a file: its outputs are missing (it was exit 2,
    // "Not a directory"), the file one the manifest does not list.
    let report = out.join("report");
    let report_files = std::fs::read_dir(&report).unwrap().count();
    std::fs::rename(&report, tmp.path().join("report-moved")).unwrap();
    std::fs::write(&report, "x").unwrap();
    let (code, stdout) = verify(&out, &[]);
    assert_eq!(code, Some(1), "{stdout}");
    let missing = stdout
        .lines()
        .filter(|l| l.starts_with("output missing: report/"))
        .count();
    assert_eq!(missing, report_files, "{stdout}");
    assert!(
        stdout.contains("output not in the manifest: report (added after the run"),
        "{stdout}"
    );
    std::fs::remove_file(&report).unwrap();
    std::fs::rename(tmp.path().join("report-moved"), &report).unwrap();

    // A --data that is not a data root (a dataset folder given for the root).
    let usage = data.join("usage");
    assert_refused(
        &[&out, Path::new("--data"), &usage],
        format!(
            "{}: is not a data root (no pricebook.toml): give --data the data root the run \
             read",
            usage.display()
        ),
    );
    assert_eq!(verify(&out, &["--data", data.to_str().unwrap()]).0, Some(0));
}

/// `--job`: the folder, the data root and (a close's) history come from the job file, as
/// the run took them; a job's out of one folder per as-of needs `--as-of` to name the
/// folder, and `--as-of` where it names nothing, or neither OUT nor a job, is exit 2.
#[test]
fn a_job_file_names_the_folder_its_data_and_its_history() {
    let tmp = tempfile::tempdir().unwrap();
    demo_copy(tmp.path());
    let job = |name: &str, text: &str| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let nightly = job(
        "nightly.toml",
        "command = \"reconcile\"\ndata = \"data\"\nout = \"out/nightly\"\n",
    );
    let monthly = job(
        "close.toml",
        "command = \"close\"\ndata = \"data\"\nout = \"out/closes/{as_of_date}\"\n\
         history = \"out/closes\"\n",
    );
    let ran = tally_command(&["reconcile", "--job", nightly.to_str().unwrap()])
        .args(["--as-of", AS_OF])
        .output()
        .unwrap();
    assert!(ran.status.success(), "{}", stderr(&ran));
    let close_as_of = "2026-12-01T00:00:00Z";
    let ran = tally_command(&["close", "--job", monthly.to_str().unwrap()])
        .args(["--as-of", close_as_of])
        .output()
        .unwrap();
    assert!(ran.status.success(), "{}", stderr(&ran));

    let verify_job = |job: &Path, extra: &[&str]| {
        let ran = tally_command(&["verify", "--job", job.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&ran.stdout).into_owned();
        (ran.status.code(), stdout, stderr(&ran))
    };
    let out = tmp.path().join("out/nightly");
    let (code, stdout, _) = verify_job(&nightly, &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(stdout, as_written_and_read(&out, "reconcile", AS_OF));
    // The close's folder named by its as-of, its history checked too (nothing unchecked).
    let november = tmp.path().join("out/closes/2026-12-01");
    let (code, stdout, _) = verify_job(&monthly, &["--as-of", "2026-12-01"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(stdout, as_written_and_read(&november, "close", close_as_of));

    let (code, _, message) = verify_job(&monthly, &[]);
    assert_eq!(code, Some(2));
    assert_eq!(
        message,
        format!(
            "tally: command line: the --job file's out \"{}\" is one folder per as-of: give \
             --as-of (the run's, e.g. 2026-12-01 for a November close) or the folder (OUT)\n",
            tmp.path().join("out/closes/{as_of_date}").display()
        )
    );
    let (code, _, message) = verify_job(&nightly, &["--as-of", AS_OF]);
    assert_eq!(code, Some(2));
    assert_eq!(
        message,
        "tally: command line: --as-of names the folder of a --job file whose out holds \
         {as_of} or {as_of_date}; give the folder (OUT) alone otherwise\n"
    );
    let ran = tally(&["verify"]);
    assert_eq!(ran.status.code(), Some(2));
    assert_eq!(
        stderr(&ran),
        "tally: command line: give the folder to verify (OUT), or a --job file whose out names \
         it\n"
    );
}

/// The sha256 of the manifest a run published or found, from its `manifest` log line
/// (which a log store keeps apart from the folder), and whether the run published it.
fn logged_manifest_sha256(ran: &std::process::Output) -> (String, bool) {
    let line = (crate::common::json_log(ran).into_iter())
        .find(|v| v["fields"]["message"] == "manifest")
        .expect("a manifest log line");
    (
        line["fields"]["manifest_sha256"]
            .as_str()
            .unwrap()
            .to_string(),
        line["fields"]["published"].as_bool().unwrap(),
    )
}

/// An output edited together with its manifest entry passes the manifest's own check; held
/// to the manifest sha256 the run logged (`--manifest-sha256`, any case), the edit is found
/// (exit 1). The run's log line gives the sha256 of the file it published; a close rerun
/// as a no-op logs the same; a value that is no sha256 is exit 2.
#[test]
fn a_manifest_edited_with_its_outputs_is_found_by_the_logged_sha256() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let out = tmp.path().join("close");
    let close = || {
        crate::common::run_command("close", &data, "2026-12-01T00:00:00Z", &out)
            .args(["--log-format", "json"])
            .env("TALLY_LOG", "info")
            .output()
            .unwrap()
    };
    let ran = close();
    assert!(ran.status.success(), "{}", stderr(&ran));
    let (logged, published) = logged_manifest_sha256(&ran);
    assert!(published);
    let manifest_bytes = std::fs::read(out.join("manifest.json")).unwrap();
    assert_eq!(logged, tally::write::sha256_hex(&manifest_bytes));
    let again = close();
    assert!(again.status.success(), "{}", stderr(&again));
    // The no-op rerun logs the manifest it found, not published by it.
    assert_eq!(logged_manifest_sha256(&again), (logged.clone(), false));

    let (outputs, inputs) = listed(&out);
    let not_checked = format!(
        "{inputs} inputs not checked (--data checks the data root's, --history the earlier \
         closes')"
    );
    let as_logged = format!(
        "{}: close as of 2026-12-01T00:00:00Z: {outputs} outputs as written, the manifest as \
         logged; {not_checked}\n",
        out.display()
    );
    assert_eq!(
        verify(&out, &["--manifest-sha256", &logged]),
        (Some(0), as_logged.clone())
    );
    let upper = logged.to_ascii_uppercase();
    assert_eq!(
        verify(&out, &["--manifest-sha256", &upper]),
        (Some(0), as_logged)
    );

    // invoices.csv edited, and its manifest entry made to agree.
    let invoices = out.join("invoices.csv");
    let edited = std::fs::read_to_string(&invoices)
        .unwrap()
        .replacen('1', "2", 1);
    std::fs::write(&invoices, &edited).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    for entry in manifest["outputs"].as_array_mut().unwrap() {
        if entry["path"] == "invoices.csv" {
            entry["sha256"] = tally::write::sha256_hex(edited.as_bytes()).into();
        }
    }
    let text = serde_json::to_string_pretty(&manifest).unwrap() + "\n";
    std::fs::write(out.join("manifest.json"), text).unwrap();
    let (code, said) = verify(&out, &[]);
    assert_eq!(
        code,
        Some(0),
        "the manifest alone vouches for the edit: {said}"
    );
    assert_eq!(
        verify(&out, &["--manifest-sha256", &logged]),
        (
            Some(1),
            format!(
                "manifest changed: manifest.json (its sha256 is not the one given with \
                 --manifest-sha256, which the run logged: it was edited or replaced since)\n\
                 {}: close as of 2026-12-01T00:00:00Z: 1 output difference (the folder is not \
                 as the run wrote it; the manifest lists {outputs} outputs); {not_checked}\n",
                out.display()
            )
        )
    );

    let refused = tally_command(&["verify", out.to_str().unwrap(), "--manifest-sha256", "abc"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        stderr(&refused),
        "tally: command line: --manifest-sha256 \"abc\" is not a sha256 (64 hexadecimal \
         digits, as the run's `manifest` log line gives it)\n"
    );
}
