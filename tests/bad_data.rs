//! Corrupt inputs: every file under `tests/bad_data/` has a test asserting tally's exact
//! one-line message and exit code 2, or, for a bad row rather than a bad file (a string
//! that is not UTF-8), the exact reject.
//!
//! The corpus is built by `tests/bad_data/make_corpus.py` (pyarrow) from the good data root
//! `fixtures/golden/pricing_and_kinds/data`; the files are committed, so these tests never
//! need Python. Each test copies the good root into a temporary folder, puts one corrupt
//! file in the place of its good twin, runs `tally reconcile` and checks the exit code, the
//! whole stderr and that no output folder (nor a staging folder) was left behind.
//! `every_corpus_file_has_a_test` fails when a corpus file is not named by any test here.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use tempfile::TempDir;

const AS_OF: &str = "2026-11-20T12:00:00Z";
/// Where a corrupt usage file goes: in place of a good one, beside another good one.
const USAGE: &str = "usage/date=2026-11-01/part-0.parquet";
const ALLOCATIONS: &str = "allocations/part-0.parquet";
const DEBITS: &str = "debits/date=2026-11/part-0.parquet";
const PRICEBOOK: &str = "pricebook.toml";
/// Files of `tests/bad_data/` that are not corpus entries.
const NOT_CORPUS: [&str; 2] = ["make_corpus.py", "README.md"];

fn corpus_dir() -> PathBuf {
    repo().join("tests").join("bad_data")
}

fn good_root() -> PathBuf {
    repo().join("fixtures/golden/pricing_and_kinds/data")
}

/// A copy of the good data root in a temporary folder.
fn good_copy() -> TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&good_root(), tmp.path());
    tmp
}

/// A copy of the good data root where the corpus file `name` replaces the good file `at`.
fn data_with(name: &str, at: &str) -> TempDir {
    let tmp = good_copy();
    let target = tmp.path().join(at);
    assert!(target.is_file(), "{at} is not a file of the good data root");
    std::fs::copy(corpus_dir().join(name), &target)
        .unwrap_or_else(|e| panic!("corpus file {name}: {e}"));
    tmp
}

/// `tally reconcile --data <tmp> --as-of .. --out <tmp>/out`.
fn reconcile(tmp: &TempDir) -> Output {
    let data = tmp.path();
    run_command("reconcile", data, AS_OF, &data.join("out"))
        .output()
        .expect("tally runs")
}

/// Exit code 2, exactly `expected` on stderr (one line), nothing on stdout, no output folder
/// and no staging folder left beside it.
fn assert_refused(tmp: &TempDir, out: &Output, expected: &str) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
    assert_eq!(stderr(out), format!("{expected}\n"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert!(
        !tmp.path().join("out").exists(),
        "an output folder appeared"
    );
    let leftovers: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("staging"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
}

/// Put corpus file `name` at `at`, run, and expect exit 2 with `tally: <at>: <problem>`.
fn assert_input_refused(name: &str, at: &str, problem: &str) {
    let tmp = data_with(name, at);
    let out = reconcile(&tmp);
    assert_refused(&tmp, &out, &format!("tally: {at}: {problem}"));
}

/// Price books are named by their full path (it contains the temporary folder). Refused
/// before the output's lock: an output folder whose parents are missing leaves none made.
fn assert_pricebook_refused(name: &str, problem: &str) {
    let tmp = data_with(name, PRICEBOOK);
    let out = reconcile(&tmp);
    let path = tmp.path().join(PRICEBOOK);
    assert_refused(&tmp, &out, &format!("tally: {}: {problem}", path.display()));
    let nested = tmp.path().join("nested");
    let run = run_command("reconcile", tmp.path(), AS_OF, &nested.join("a/out"))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    assert!(!nested.exists(), "folders made for a refused run");
}

/// A price book that is a pipe is exit 2 before anything reads it (reading waited for a
/// writer forever: the run hung); one that is not UTF-8 says so and what to do. The run is
/// bounded by `timeout` so that a hang fails the test instead of stalling it.
#[test]
fn a_pricebook_pipe_or_non_utf8_pricebook_is_exit_2() {
    let tmp = good_copy();
    let book = tmp.path().join(PRICEBOOK);
    std::fs::remove_file(&book).unwrap();
    let made = Command::new("mkfifo").arg(&book).status().unwrap();
    assert!(made.success());
    let out = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_tally"))
        .args([
            "reconcile",
            "--data",
            tmp.path().to_str().unwrap(),
            "--as-of",
            AS_OF,
        ])
        .arg("--out")
        .arg(tmp.path().join("out"))
        .env("TALLY_LOG", "off")
        .output()
        .unwrap();
    let not_a_file = format!(
        "tally: {}: is not a regular file (a folder, a pipe, a socket or a device): the price \
         book is a TOML file",
        book.display()
    );
    assert_refused(&tmp, &out, &not_a_file);
    std::fs::remove_file(&book).unwrap();
    // A folder of that name: the same refusal.
    std::fs::create_dir(&book).unwrap();
    assert_refused(&tmp, &reconcile(&tmp), &not_a_file);
    std::fs::remove_dir(&book).unwrap();
    std::fs::write(&book, b"currency = \"US\xff\"\n").unwrap();
    let out = reconcile(&tmp);
    assert_refused(
        &tmp,
        &out,
        &format!(
            "tally: {}: cannot read: it is not UTF-8 text (TOML is UTF-8); save it as UTF-8",
            book.display()
        ),
    );
}

#[test]
fn missing_data_root_is_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let out = tally(&[
        "reconcile",
        "--data",
        missing.to_str().unwrap(),
        "--as-of",
        "2026-11-20T00:00:00Z",
        "--out",
        tmp.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "tally: {}: data root does not exist (a relative --data is taken from the working \
             folder, a job file's data from the job file's folder)\n",
            missing.display()
        )
    );
    // A file where the data root should be; a file where a dataset folder should be.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let out = reconcile_data(&file, tmp.path());
    assert_eq!(
        stderr(&out),
        format!("tally: {}: data root is not a folder\n", file.display())
    );
    let root = good_copy();
    let usage = root.path().join("usage");
    std::fs::remove_dir_all(&usage).unwrap();
    std::fs::write(&usage, "a file").unwrap();
    let out = reconcile_data(root.path(), tmp.path());
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "tally: {}: is not a folder: a data root holds the usage Parquet files in a `usage/` \
             folder\n",
            usage.display()
        )
    );
}

/// `tally reconcile` of `data` into a fresh folder under `tmp`.
fn reconcile_data(data: &Path, tmp: &Path) -> std::process::Output {
    tally(&[
        "reconcile",
        "--data",
        data.to_str().unwrap(),
        "--as-of",
        "2026-11-20T00:00:00Z",
        "--out",
        tmp.join("out-of-data").to_str().unwrap(),
    ])
}

/// `grants/` may be missing (no grants), but a `grants` that is there and is not a folder
/// that can be read is exit 2: taken for "no grants", a file or a broken link put there by
/// a failed export dropped every grant from the run and from `grants_next`, exit 0.
#[test]
fn a_grants_entry_that_is_not_a_readable_folder_is_exit_2() {
    let tmp = good_copy();
    let grants = tmp.path().join("grants");
    assert!(!grants.exists(), "the good data root has no grants");
    let out = reconcile(&tmp);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::remove_dir_all(tmp.path().join("out")).unwrap();

    std::fs::write(&grants, "a file").unwrap();
    let out = reconcile(&tmp);
    assert_refused(
        &tmp,
        &out,
        &format!(
            "tally: {}: is not a folder: a data root holds the grants Parquet files in a \
             `grants/` folder",
            grants.display()
        ),
    );
    std::fs::remove_file(&grants).unwrap();
    for (target, error) in [
        (
            "/nonexistent-tally-test",
            "No such file or directory (os error 2)",
        ),
        ("grants", "Too many levels of symbolic links (os error 40)"),
    ] {
        std::os::unix::fs::symlink(target, &grants).unwrap();
        let out = reconcile(&tmp);
        assert_refused(
            &tmp,
            &out,
            &format!(
                "tally: {}: a symbolic link that cannot be followed ({error}): fix or remove it",
                grants.display()
            ),
        );
        std::fs::remove_file(&grants).unwrap();
    }
}

/// Each invoice's total fits its i64 of minor units, their sum over the close does not (a
/// price typed with some digits too many): exit 4 and one line with the two amounts and
/// where to look, not a panic, and no output folder.
#[test]
fn invoiced_totals_past_i64_minor_units_are_named_not_a_panic() {
    let tmp = good_copy();
    let book = tmp.path().join("pricebook.toml");
    let text = std::fs::read_to_string(&book).unwrap();
    let huge = (text.replace("price = \"9.99\"", "price = \"50000000000000000\""))
        .replace("price = \"24.99\"", "price = \"50000000000000000\"");
    std::fs::write(&book, huge).unwrap();
    let out = run_command(
        "close",
        tmp.path(),
        "2026-12-01T00:00:00Z",
        &tmp.path().join("out"),
    )
    .output()
    .expect("tally runs");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "tally: amount overflow: the close's invoiced total over every invoice passes the \
         largest amount in minor units (9223372036854775807): 5000000000000000000 + \
         5000000000000000000 minor units of USD; check the plans' prices and overage prices in \
         the price book, then rerun\n"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("out"))
        .collect();
    assert_eq!(left, [".out.tally-lock"], "no output or staging folder");
}

#[test]
fn missing_debits_folder_is_exit_2() {
    let tmp = good_copy();
    std::fs::remove_dir_all(tmp.path().join("debits")).unwrap();
    let out = reconcile(&tmp);
    let folder = tmp.path().join("debits");
    assert_refused(
        &tmp,
        &out,
        &format!(
            "tally: {}: missing dataset folder `debits/` (it may be empty, but must exist)",
            folder.display()
        ),
    );
}

// ---- Parquet files that are not (whole) Parquet ----

#[test]
fn usage_truncated_footer_is_exit_2() {
    assert_input_refused(
        "usage_truncated_footer.parquet",
        USAGE,
        "truncated Parquet file (it does not end with PAR1); restore the complete file",
    );
}

/// The Parquet reader checks only the footer's magic; tally checks the leading one too.
#[test]
fn usage_bad_magic_is_exit_2() {
    assert_input_refused(
        "usage_bad_magic.parquet",
        USAGE,
        "not a Parquet file (it does not start with PAR1); remove it or restore the original",
    );
}

/// A file that starts as Parquet but is shorter than the smallest one is named as cut
/// short (it read "does not start with PAR1", though it does), and one whose footer is
/// encrypted (Parquet modular encryption: `PARE` at both ends, as pyarrow writes it) as
/// encrypted (it read "not a Parquet file").
#[test]
fn usage_too_short_or_encrypted_is_named_as_such() {
    for (bytes, problem) in [
        (
            b"PAR1PAR1".to_vec(),
            "truncated Parquet file (8 bytes: it starts with PAR1 but has no footer); restore \
             the complete file",
        ),
        (
            b"PAR1".to_vec(),
            "truncated Parquet file (4 bytes: it starts with PAR1 but has no footer); restore \
             the complete file",
        ),
        (
            b"PARE encrypted pages, an encrypted footer, its length, PARE".to_vec(),
            "encrypted Parquet file (it starts with PARE: its footer is encrypted); tally reads \
             no encrypted files: export it without Parquet encryption",
        ),
        (
            b"PAR".to_vec(),
            "not a Parquet file (it does not start with PAR1); remove it or restore the original",
        ),
    ] {
        let tmp = good_copy();
        std::fs::write(tmp.path().join(USAGE), bytes).unwrap();
        let out = reconcile(&tmp);
        assert_refused(&tmp, &out, &format!("tally: {USAGE}: {problem}"));
    }
}

#[test]
fn usage_empty_file_is_exit_2() {
    assert_input_refused(
        "usage_empty.parquet",
        USAGE,
        "empty file (0 bytes), not Parquet; remove it or restore the original",
    );
}

/// A string that is not UTF-8 is a bad row, not a bad file: contract section 2, "A bad
/// *row* is never a reason to stop: it goes to `rejects` with a reason" ("Strings: UTF8").
/// Each dataset's corpus file (one value with a 0xff byte) publishes, the row rejected
/// `bad_value` with its bytes shown, and the rest of its file read (before 2026-12-06 the
/// reader's refusal of the row group stopped the run: exit 2).
#[test]
fn a_non_utf8_string_rejects_its_row_in_every_dataset() {
    let cases = [
        (
            "usage_non_utf8_account.parquet",
            USAGE,
            "usage",
            "account_id",
            "byte 22 of 23 is 0xff: \"acct_adjustment_linked\\xff\"",
        ),
        (
            "debits_non_utf8_entry_id.parquet",
            DEBITS,
            "debits",
            "entry_id",
            "byte 15 of 16 is 0xff: \"d_adj_dup_debit\\xff\"",
        ),
        (
            "allocations_non_utf8_plan_id.parquet",
            ALLOCATIONS,
            "allocations",
            "plan_id",
            "byte 3 of 4 is 0xff: \"pro\\xff\"",
        ),
        // The good data root has no grants: the file is added, not swapped in.
        (
            "grants_non_utf8_grant_id.parquet",
            "grants/part-0.parquet",
            "grants",
            "grant_id",
            "byte 3 of 4 is 0xff: \"g-1\\xff\"",
        ),
    ];
    for (name, at, dataset, column, shown) in cases {
        let tmp = good_copy();
        let target = tmp.path().join(at);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(corpus_dir().join(name), &target).unwrap();
        let out = reconcile(&tmp);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!(
                "{at}: row group 0 holds 1 string(s) that are not UTF-8 (from row 0 on, read \
                 with its strings as bytes); each row holding one is rejected bad_value"
            )),
            "{name}: {}",
            stderr(&out)
        );
        let rejects = read_parquet(&tmp.path().join("out/rejects.parquet"));
        let text = |name: &str, i: usize| {
            let column = rejects.column_by_name(name).unwrap();
            arrow::array::AsArray::as_string::<i32>(column)
                .value(i)
                .to_string()
        };
        let rows = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(
            rejects.column_by_name("row").unwrap(),
        );
        let not_utf8: Vec<(String, String, i64, String, String)> = (0..rejects.num_rows())
            .filter(|&i| text("detail", i).contains("UTF-8"))
            .map(|i| {
                (
                    text("dataset", i),
                    text("file", i),
                    rows.value(i),
                    text("reason", i),
                    text("detail", i),
                )
            })
            .collect();
        assert_eq!(
            not_utf8,
            [(
                dataset.to_string(),
                at.to_string(),
                0,
                "bad_value".to_string(),
                format!("{column} is not UTF-8: {shown}; the contract's strings are UTF-8"),
            )],
            "{name}"
        );
    }
}

/// The Arrow reader checks a string for UTF-8 only in a column the Parquet schema annotates
/// UTF8: a JSON-annotated `event_id` or `model` took a bad byte unchecked (the id as it
/// was; the dictionary-read `model` as null, a valid row). tally checks such columns
/// itself: each row holding one is rejected `bad_value`, the others read as they are.
#[test]
fn a_non_utf8_string_in_a_json_column_rejects_its_row() {
    let tmp = good_copy();
    let (good, good_rejects) = good_usage_and_rejects(&tmp);
    write_with_json_strings(
        &good,
        &tmp.path().join(USAGE),
        &|name, row, value| match (name, row) {
            ("event_id", 0) => value.map(|mut v| {
                v.push(0xff);
                v
            }),
            ("model", 1) => Some(b"veo-3\xff".to_vec()),
            _ => value,
        },
    );
    let out = reconcile(&tmp);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut expected = vec![
        (
            0,
            "event_id is not UTF-8: byte 10 of 11 is 0xff: \"ev_adj_dup\\xff\"; the contract's \
             strings are UTF-8"
                .to_string(),
        ),
        (
            1,
            "model is not UTF-8: byte 5 of 6 is 0xff: \"veo-3\\xff\"; the contract's strings \
             are UTF-8"
                .to_string(),
        ),
    ];
    expected.extend(good_rejects.into_iter().filter(|(row, _)| *row > 1));
    assert_eq!(rejects_of(&tmp.path().join("out"), USAGE), expected);
}

/// A string that is not UTF-8 is a `bad_value` check, in the contract's order (section 7:
/// null_required → bad_value → negative_quantity → unknown_status): a null required column
/// names the row first; a bad byte names it before a negative quantity or an unknown
/// status; in an optional column (`model`) too.
#[test]
fn a_non_utf8_string_is_checked_in_the_contracts_order() {
    use arrow::array::{Array, AsArray};
    let tmp = good_copy();
    let good = read_parquet(&tmp.path().join(USAGE));
    let strings = |name: &str| -> Vec<Option<Vec<u8>>> {
        let column = good.column_by_name(name).unwrap().as_string::<i32>();
        (column.iter())
            .map(|v| v.map(|v| v.as_bytes().to_vec()))
            .collect()
    };
    let (mut accounts, mut products, mut models, mut statuses) = (
        strings("account_id"),
        strings("product"),
        strings("model"),
        strings("status"),
    );
    // Row 0: a bad product and a null account; row 1: a bad product and a negative
    // quantity; row 2: a bad model and an unknown status.
    products[0].as_mut().unwrap().push(0xff);
    accounts[0] = None;
    products[1].as_mut().unwrap().push(0xff);
    models[2] = Some(b"veo-3\xff".to_vec());
    statuses[2] = Some(b"bogus".to_vec());
    let quantities = good
        .column_by_name("quantity")
        .unwrap()
        .as_primitive::<arrow::datatypes::Float64Type>();
    let mut quantities: Vec<Option<f64>> = quantities.iter().collect();
    quantities[1] = Some(-1.0);
    let mut columns = good.columns().to_vec();
    let schema = good.schema();
    for (name, cells) in [
        ("account_id", accounts),
        ("product", products),
        ("model", models),
        ("status", statuses),
    ] {
        columns[schema.index_of(name).unwrap()] = Arc::new(strings_unchecked(cells));
    }
    columns[schema.index_of("quantity").unwrap()] =
        Arc::new(arrow::array::Float64Array::from(quantities));
    let edited = arrow::record_batch::RecordBatch::try_new(schema, columns).unwrap();
    assert!(edited.column_by_name("account_id").unwrap().is_null(0));
    tally::write::write_parquet(&tmp.path().join(USAGE), &edited).unwrap();
    let out = reconcile(&tmp);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rejects: Vec<(i64, String)> = rejects_of(&tmp.path().join("out"), USAGE)
        .into_iter()
        .filter(|(row, _)| *row < 3)
        .collect();
    assert_eq!(
        rejects,
        [
            (0, "account_id is null but required".to_string()),
            (
                1,
                "product is not UTF-8: byte 6 of 7 is 0xff: \"studio\\xff\"; the contract's \
                 strings are UTF-8"
                    .to_string()
            ),
            (
                2,
                "model is not UTF-8: byte 5 of 6 is 0xff: \"veo-3\\xff\"; the contract's \
                 strings are UTF-8"
                    .to_string()
            ),
        ]
    );
    let reasons = read_parquet(&tmp.path().join("out/rejects.parquet"));
    let reason = reasons.column_by_name("reason").unwrap().as_string::<i32>();
    let file = reasons.column_by_name("file").unwrap().as_string::<i32>();
    let row = reasons
        .column_by_name("row")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>();
    let first_three: Vec<&str> = (0..reasons.num_rows())
        .filter(|&i| file.value(i) == USAGE && row.value(i) < 3)
        .map(|i| reason.value(i))
        .collect();
    assert_eq!(first_three, ["null_required", "bad_value", "bad_value"]);
}

/// The good usage file of a copy of the good data root, and the rejects of its rows in a
/// run of that root (whose output is removed again).
fn good_usage_and_rejects(tmp: &TempDir) -> (arrow::record_batch::RecordBatch, Vec<(i64, String)>) {
    good_file_and_rejects(tmp, USAGE)
}

/// [`good_usage_and_rejects`] of the input file `at`.
fn good_file_and_rejects(
    tmp: &TempDir,
    at: &str,
) -> (arrow::record_batch::RecordBatch, Vec<(i64, String)>) {
    let good = read_parquet(&tmp.path().join(at));
    let good_run = reconcile(tmp);
    assert_eq!(good_run.status.code(), Some(0), "{}", stderr(&good_run));
    let good_rejects = rejects_of(&tmp.path().join("out"), at);
    std::fs::remove_dir_all(tmp.path().join("out")).unwrap();
    (good, good_rejects)
}

/// Cells of `column` at the string length limit (row `row`, bytes `fill`) and one byte past
/// it (row `row + 1`, bytes `fill + 1`), for [`with_strings`].
fn at_and_past_the_limit(column: &str, row: usize, fill: u8) -> [(&str, usize, Vec<u8>); 2] {
    [
        (column, row, vec![fill; 4096]),
        (column, row + 1, vec![fill + 1; 4097]),
    ]
}

/// The reject of row `row`, whose `column` is one byte past the length limit.
fn past_the_limit(row: i64, column: &str) -> (i64, String) {
    (
        row,
        format!("{column} is 4097 bytes long; the limit is 4096"),
    )
}

/// The rejects of the usage file `at` in the run published in `out`: (row, detail).
fn rejects_of(out: &Path, at: &str) -> Vec<(i64, String)> {
    use arrow::array::AsArray;
    let rejects = read_parquet(&out.join("rejects.parquet"));
    let text = |name: &str| {
        rejects
            .column_by_name(name)
            .unwrap()
            .as_string::<i32>()
            .clone()
    };
    let (files, details) = (text("file"), text("detail"));
    let rows = rejects
        .column_by_name("row")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>()
        .clone();
    (0..rejects.num_rows())
        .filter(|&i| files.value(i) == at)
        .map(|i| (rows.value(i), details.value(i).to_string()))
        .collect()
}

/// A string cell's new bytes from its column name, row and bytes (`None`: null).
type CellEdit = dyn Fn(&str, usize, Option<Vec<u8>>) -> Option<Vec<u8>>;

/// `batch` (the good usage file's columns) written to `path` by Parquet's own writer, with
/// `event_id` and `model` annotated JSON instead of UTF8, each string cell through `edit`
/// (column name, row, bytes).
fn write_with_json_strings(batch: &arrow::record_batch::RecordBatch, path: &Path, edit: &CellEdit) {
    use arrow::array::{Array, AsArray};
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
    let schema = parquet::schema::parser::parse_message_type(
        "message usage {
            optional binary event_id (JSON);
            optional binary account_id (UTF8);
            optional binary product (UTF8);
            optional binary action (UTF8);
            optional binary model (JSON);
            optional double quantity;
            optional binary status (UTF8);
            optional int64 occurred_at (TIMESTAMP(MICROS,true));
            optional int64 ingested_at (TIMESTAMP(MICROS,true));
        }",
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = parquet::file::writer::SerializedFileWriter::new(
        file,
        Arc::new(schema),
        Default::default(),
    )
    .unwrap();
    let mut row_group = writer.next_row_group().unwrap();
    for field in batch.schema().fields() {
        let array = batch.column_by_name(field.name()).unwrap();
        let defs: Vec<i16> = (0..array.len())
            .map(|i| i16::from(array.is_valid(i)))
            .collect();
        let mut column = row_group.next_column().unwrap().unwrap();
        match array.data_type() {
            arrow::datatypes::DataType::Utf8 => {
                let strings = array.as_string::<i32>();
                let cells: Vec<Option<Vec<u8>>> = (0..array.len())
                    .map(|i| {
                        let value = strings
                            .is_valid(i)
                            .then(|| strings.value(i).as_bytes().to_vec());
                        edit(field.name(), i, value)
                    })
                    .collect();
                let defs: Vec<i16> = cells.iter().map(|c| i16::from(c.is_some())).collect();
                let values: Vec<ByteArray> =
                    cells.into_iter().flatten().map(ByteArray::from).collect();
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&values, Some(&defs), None)
                    .unwrap();
            }
            arrow::datatypes::DataType::Float64 => {
                let values: Vec<f64> = array
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .iter()
                    .flatten()
                    .collect();
                column
                    .typed::<DoubleType>()
                    .write_batch(&values, Some(&defs), None)
                    .unwrap();
            }
            arrow::datatypes::DataType::Timestamp(..) => {
                let values: Vec<i64> = array
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .iter()
                    .flatten()
                    .collect();
                column
                    .typed::<Int64Type>()
                    .write_batch(&values, Some(&defs), None)
                    .unwrap();
            }
            other => panic!("{}: {other}", field.name()),
        }
        column.close().unwrap();
    }
    row_group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn usage_text_file_named_parquet_is_exit_2() {
    assert_input_refused(
        "usage_text.parquet",
        USAGE,
        "not a Parquet file (it does not start with PAR1); remove it or restore the original",
    );
}

#[test]
fn usage_corrupt_page_is_exit_2() {
    assert_input_refused(
        "usage_corrupt_page.parquet",
        USAGE,
        "row group 0 is corrupt or truncated: Data corruption detected; restore the file from \
         its source or export it again",
    );
}

/// Several files that cannot be read are named in one run: the first in the load's words,
/// the others by name (at most three, then how many more), so that one fix-and-rerun fixes
/// them all; it stopped at the first, and each took a rerun of its own. The corpus files
/// are added beside the good root's files.
#[test]
fn several_unreadable_files_are_named_in_one_run() {
    let tmp = good_copy();
    let put = |name: &str, at: &str| {
        std::fs::copy(corpus_dir().join(name), tmp.path().join(at)).unwrap();
    };
    put("usage_text.parquet", "usage/date=2026-11-01/x1.parquet");
    put(
        "usage_no_event_id.parquet",
        "usage/date=2026-11-01/x2.parquet",
    );
    put("usage_truncated_footer.parquet", "usage/x3.parquet");
    put("usage_empty.parquet", "debits/x4.parquet");
    put("usage_bad_magic.parquet", "debits/x5.parquet");
    let out = reconcile(&tmp);
    assert_refused(
        &tmp,
        &out,
        "tally: usage/date=2026-11-01/x1.parquet: not a Parquet file (it does not start with \
         PAR1); remove it or restore the original; 4 more input files cannot be read either \
         (usage/date=2026-11-01/x2.parquet, usage/x3.parquet, debits/x4.parquet, and 1 more): \
         fix every one before rerunning",
    );
    // Two: the other is named.
    std::fs::remove_file(tmp.path().join("usage/date=2026-11-01/x2.parquet")).unwrap();
    std::fs::remove_file(tmp.path().join("usage/x3.parquet")).unwrap();
    std::fs::remove_file(tmp.path().join("debits/x5.parquet")).unwrap();
    let out = reconcile(&tmp);
    assert_refused(
        &tmp,
        &out,
        "tally: usage/date=2026-11-01/x1.parquet: not a Parquet file (it does not start with \
         PAR1); remove it or restore the original; 1 more input file cannot be read either \
         (debits/x4.parquet): fix every one before rerunning",
    );
}

/// A footer that cannot be decoded (magic and length intact) names the file and says how
/// to fix it, as a damaged row group does.
#[test]
fn usage_undecodable_footer_is_exit_2() {
    assert_input_refused(
        "usage_undecodable_footer.parquet",
        USAGE,
        "not a readable Parquet file: Unexpected struct field type 15; restore the file from \
         its source or export it again",
    );
}

/// A page whose checksum does not match its bytes is refused, though it decodes (one bit
/// of an account id flipped: unchecked, the row was read with another account).
#[test]
fn usage_page_checksum_mismatch_is_exit_2() {
    assert_input_refused(
        "usage_page_checksum.parquet",
        USAGE,
        "row group 0 is corrupt or truncated: Page CRC checksum mismatch; restore the file from \
         its source or export it again (or without page checksums, if its writer stores wrong \
         ones)",
    );
}

/// A footer whose column chunk has a negative `total_compressed_size` makes the Parquet
/// reader panic; tally catches it and reports the file (exit 2, one line, no panic text).
#[test]
fn usage_negative_chunk_size_is_exit_2() {
    assert_input_refused(
        "usage_negative_chunk_size.parquet",
        USAGE,
        "corrupt Parquet file: column start and length should not be negative; restore the \
         file from its source or export it again",
    );
}

// ---- Wrong schema ----

#[test]
fn usage_without_event_id_is_exit_2() {
    assert_input_refused(
        "usage_no_event_id.parquet",
        USAGE,
        "missing required column `event_id` (a UTF8 string); the file's columns are \
         `account_id`, `product`, `action`, `model`, `quantity`, `status`, `occurred_at`, \
         `ingested_at` (names are case-sensitive)",
    );
}

#[test]
fn usage_with_two_event_id_columns_is_exit_2() {
    assert_input_refused(
        "usage_two_event_id_columns.parquet",
        USAGE,
        "2 columns are named `event_id`; a file must have one column of each name",
    );
}

#[test]
fn usage_quantity_float32_is_exit_2() {
    assert_input_refused(
        "usage_quantity_float32.parquet",
        USAGE,
        "column `quantity` has type Float32; expected INT32/INT64, DECIMAL(p, s) or DOUBLE",
    );
}

#[test]
fn usage_occurred_at_string_is_exit_2() {
    assert_input_refused(
        "usage_occurred_at_string.parquet",
        USAGE,
        "column `occurred_at` has type Utf8; expected a TIMESTAMP",
    );
}

#[test]
fn usage_quantity_string_is_exit_2() {
    assert_input_refused(
        "usage_quantity_string.parquet",
        USAGE,
        "column `quantity` has type Utf8; expected INT32/INT64, DECIMAL(p, s) or DOUBLE",
    );
}

#[test]
fn allocations_included_credits_date_is_exit_2() {
    assert_input_refused(
        "allocations_included_credits_date.parquet",
        ALLOCATIONS,
        "column `included_credits` has type Date32; expected INT32/INT64, DECIMAL(p, s) or DOUBLE",
    );
}

/// Positive control: a nullable column may be absent from a file (section 7).
#[test]
fn usage_without_model_column_succeeds() {
    let tmp = data_with("usage_without_model_ok.parquet", USAGE);
    let out = reconcile(&tmp);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let summary = json(&tmp.path().join("out").join("summary.json"));
    assert_eq!(summary["usage"]["rows_read"], 35, "{summary:#}");
    assert_eq!(summary["usage"]["rejected"], 0, "{summary:#}");
    assert_eq!(summary["usage"]["events_in_window"], 35, "{summary:#}");
}

// ---- Price books ----

#[test]
fn pricebook_without_currency_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_no_currency.toml",
        "`currency` is required (an ISO 4217 code such as \"USD\")",
    );
}

#[test]
fn pricebook_lowercase_currency_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_currency_lowercase.toml",
        "currency = \"usd\" is not an ISO 4217 code (three capital letters, such as \"USD\", \
         \"EUR\" or \"JPY\")",
    );
}

#[test]
fn pricebook_currency_not_in_iso_4217_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_currency_unknown.toml",
        "currency = \"UDS\" is not in ISO 4217's list of currency codes (a typo? such as \
         \"USD\", \"EUR\" or \"JPY\")",
    );
}

#[test]
fn pricebook_currency_without_a_minor_unit_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_currency_no_minor_unit.toml",
        "currency = \"XAU\" has no minor unit in ISO 4217 (a precious metal, a unit of \
         account or a test code), so prices cannot be written in minor units: use the currency \
         the plans are billed in",
    );
}

#[test]
fn pricebook_duplicate_rate_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_duplicate_rate.toml",
        "[[rates]] #14 repeats #3 (product = \"studio\", action = \"prompt_to_video\", \
         model = \"veo-3\", effective_from = 2026-01-01T00:00:00Z); remove one",
    );
}

#[test]
fn pricebook_zero_increment_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_increment_zero.toml",
        "[[rates]] #3: increment = 0 must be > 0",
    );
}

/// A rate that would price every event past what a credit amount holds is refused when
/// the price book is read (it stopped the run at the first such event with exit 4, telling
/// the operator to correct that event's row).
#[test]
fn pricebook_minimum_past_credits_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_minimum_past_credits.toml",
        "[[rates]] #8: minimum = 999999999999999999 is 10^15 credits or more, past what a \
         credit amount holds (DECIMAL(18,3)): every event this rate prices would overflow; \
         correct the rate's minimum",
    );
}

#[test]
fn pricebook_increment_past_credits_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_increment_past_credits.toml",
        "[[rates]] #3: increment × credits_per_unit = 1000000000000000 × 8 is 10^15 credits or \
         more, past what a credit amount holds (DECIMAL(18,3)): every event of this rate with \
         a quantity above 0 would overflow; correct the rate's increment or credits_per_unit",
    );
}

#[test]
fn pricebook_price_with_too_many_decimals_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_price_too_precise.toml",
        "plans.pro.price = 9.999 cannot be written in minor units of USD (2 decimals)",
    );
}

#[test]
fn pricebook_rate_with_too_many_digits_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_rate_too_many_digits.toml",
        "[[rates]] #2: credits_per_unit = \"0.00000000000000000000000000001\" has more \
         digits than tally holds: at most 28 after the point, and at most \
         79228162514264337593543950335 with the point removed (trailing zeros after the point \
         do not count); write it with fewer digits",
    );
}

/// The positive twin: trailing zeros past the 28 places are no digits (the decimal is 8).
#[test]
fn pricebook_rate_with_trailing_zeros_past_28_places_prices_as_written() {
    let plain = good_copy();
    let zeros = good_copy();
    let book = zeros.path().join(PRICEBOOK);
    let text = std::fs::read_to_string(&book).unwrap();
    let written = text.replacen(
        "credits_per_unit = \"8\"",
        "credits_per_unit = \"8.0000000000000000000000000000\"",
        2,
    );
    assert_ne!(written, text);
    std::fs::write(&book, written).unwrap();
    for tmp in [&plain, &zeros] {
        let out = reconcile(tmp);
        assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    }
    for table in [
        "discrepancies.parquet",
        "balances.parquet",
        "rejects.parquet",
    ] {
        assert_eq!(
            std::fs::read(plain.path().join("out").join(table)).unwrap(),
            std::fs::read(zeros.path().join("out").join(table)).unwrap(),
            "{table}"
        );
    }
}

#[test]
fn pricebook_syntax_error_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_syntax_error.toml",
        "line 12, column 12: invalid basic string; a string is not closed on this line (a \
         missing quote)",
    );
}

#[test]
fn pricebook_rates_in_single_brackets_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_rates_single_brackets.toml",
        "line 33, column 1: invalid table header duplicate key `rates` in document root; each \
         rate is a table of its own, headed [[rates]] (two brackets), but line 26 has [rates]",
    );
}

#[test]
fn pricebook_rate_without_a_required_key_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_rate_missing_key.toml",
        "line 42, column 1: [[rates]] #3 has no `credits_per_unit`, which every rate needs",
    );
}

#[test]
fn pricebook_unknown_overage_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_unknown_overage.toml",
        "plans.pro.overage = \"charge\" is not valid; \
         use \"block\" or { price_per_credit = \"0.05\" }",
    );
}

#[test]
fn pricebook_overage_table_wrong_key_is_exit_2() {
    assert_pricebook_refused(
        "pricebook_overage_table_wrong_key.toml",
        "plans.max.overage = { price = \"0.05\" } is not valid; \
         use \"block\" or { price_per_credit = \"0.05\" }",
    );
}

// ---- The guard ----

/// Every corpus file is named, in quotes, by a test in this file.
#[test]
fn every_corpus_file_has_a_test() {
    let source = include_str!("bad_data.rs");
    let mut names: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !NOT_CORPUS.contains(&name.as_str()))
        .collect();
    names.sort();
    assert!(
        !names.is_empty(),
        "no corpus files in {}",
        corpus_dir().display()
    );
    // The lines of test functions (`#[test]`, not `#[ignore]`d), comments left out: a name
    // in a comment, in NOT_CORPUS or in a helper does not count as a test of the file.
    let mut tested_lines = Vec::new();
    let (mut attribute, mut ignored, mut in_test) = (false, false, false);
    for line in source.lines().map(str::trim) {
        if line == "#[test]" {
            attribute = true;
        } else if line.starts_with("#[ignore") {
            ignored = true;
        } else if line.starts_with("fn ") || line.starts_with("const ") {
            // A function's lines run to the next item (tests and helpers are all `fn`s).
            in_test = attribute && !ignored && line.starts_with("fn ");
            (attribute, ignored) = (false, false);
        }
        if in_test && !line.starts_with("//") {
            tested_lines.push(line);
        }
    }
    let untested: Vec<&String> = names
        .iter()
        .filter(|name| {
            let quoted = format!("\"{name}\"");
            !tested_lines.iter().any(|line| line.contains(&quoted))
        })
        .collect();
    assert!(
        untested.is_empty(),
        "corpus files of tests/bad_data/ with no test in tests/bad_data.rs: {untested:?}"
    );
}

/// A string may be 4096 bytes long (`MAX_STRING_BYTES`); one byte more rejects its row
/// `bad_value`, naming the column and both lengths: an id (read as a view), a label (read
/// through its dictionary) and an account id (the account of 4096 bytes, which has no
/// allocation, is named cut to 64 characters), in a run of one group and in a split run
/// (whose light pass reads the ids too); and the ledger's `entry_id` and `event_id`.
#[test]
fn a_string_of_the_length_limit_is_read_and_one_byte_more_rejects_its_row() {
    let tmp = good_copy();
    let (_, good_rejects) = good_usage_and_rejects(&tmp);
    assert!(
        good_rejects.iter().all(|(row, _)| *row > 5),
        "rows 0-5 of the good file are valid: {good_rejects:?}"
    );
    // Rows 0 and 1: an event id at the limit and one byte past it; rows 2 and 3: a
    // product likewise; rows 4 and 5: an account id likewise (one of 4096 bytes is an
    // account without allocations).
    let cells = [
        at_and_past_the_limit("event_id", 0, b'e'),
        at_and_past_the_limit("product", 2, b'p'),
        at_and_past_the_limit("account_id", 4, b'a'),
    ];
    with_strings(&tmp, USAGE, &cells.concat());
    let mut expected = vec![
        past_the_limit(1, "event_id"),
        past_the_limit(3, "product"),
        (
            4,
            format!(
                "no allocation of account \"{}…\" (4096 bytes) contains occurred_at \
                 2026-11-05T12:00:00Z",
                "a".repeat(64)
            ),
        ),
        past_the_limit(5, "account_id"),
    ];
    expected.extend(good_rejects);
    assert_rejects_in_one_group_and_split(&tmp, USAGE, &expected);
}

/// The Parquet file `at` of `tmp` written again with string cells replaced: (column, row,
/// the cell's bytes, UTF-8 or not).
fn with_strings(tmp: &TempDir, at: &str, cells: &[(&str, usize, Vec<u8>)]) {
    use arrow::array::AsArray;
    let path = tmp.path().join(at);
    let good = read_parquet(&path);
    let schema = good.schema();
    let mut columns = good.columns().to_vec();
    for (name, row, bytes) in cells {
        let index = schema.index_of(name).unwrap();
        let column = columns[index].as_string::<i32>();
        let mut values: Vec<Option<Vec<u8>>> = (column.iter())
            .map(|v| v.map(|v| v.as_bytes().to_vec()))
            .collect();
        values[*row] = Some(bytes.clone());
        columns[index] = Arc::new(strings_unchecked(values));
    }
    let edited = arrow::record_batch::RecordBatch::try_new(schema, columns).unwrap();
    assert_eq!(edited.num_rows(), good.num_rows());
    tally::write::write_parquet(&path, &edited).unwrap();
}

/// The reconcile of `tmp`, in one group and in two, publishes (exit 0) with exactly
/// `expected` as the rejected rows of its file `at`: (row, detail).
fn assert_rejects_in_one_group_and_split(tmp: &TempDir, at: &str, expected: &[(i64, String)]) {
    for groups in [None, Some("2")] {
        let data = tmp.path();
        let out_dir = data.join("out");
        let mut command = run_command("reconcile", data, AS_OF, &out_dir);
        if let Some(groups) = groups {
            command.args(["--groups", groups]);
        }
        let out = command.output().expect("tally runs");
        assert_eq!(out.status.code(), Some(0), "{groups:?}: {}", stderr(&out));
        assert_eq!(rejects_of(&out_dir, at), expected, "{groups:?}");
        std::fs::remove_dir_all(&out_dir).unwrap();
    }
}

/// The ledger's ids at the length limit and one byte past: `entry_id` and `event_id` of
/// 4096 bytes are read (an event id that names no event is an orphan debit), 4097 bytes
/// reject the row `bad_value` naming the column, in a run of one group and a split run.
#[test]
fn a_ledger_id_of_the_length_limit_is_read_and_one_byte_more_rejects_its_row() {
    let tmp = good_copy();
    let (good, good_rejects) = good_file_and_rejects(&tmp, DEBITS);
    assert!(
        good_rejects.iter().all(|(row, _)| *row > 3),
        "rows 0-3 of the good ledger are valid: {good_rejects:?}"
    );
    assert!(good.num_rows() > 3);
    let cells = [
        at_and_past_the_limit("entry_id", 0, b'e'),
        at_and_past_the_limit("event_id", 2, b'v'),
    ];
    with_strings(&tmp, DEBITS, &cells.concat());
    let mut expected = vec![past_the_limit(1, "entry_id"), past_the_limit(3, "event_id")];
    expected.extend(good_rejects);
    assert_rejects_in_one_group_and_split(&tmp, DEBITS, &expected);
}

/// An input instant may be any microsecond of the years 0001 to 9999: the first and the
/// last are read (the first is before every allocation: `no_allocation`; the last is after
/// the as-of: outside the window, not rejected); one microsecond before the first or past
/// the last rejects its row `bad_value`.
#[test]
fn an_instant_at_either_end_of_the_years_is_read_and_one_microsecond_past_rejects_its_row() {
    use arrow::array::Array;
    let tmp = good_copy();
    let (good, good_rejects) = good_usage_and_rejects(&tmp);
    assert!(
        good_rejects.iter().all(|(row, _)| *row > 3),
        "rows 0-3 of the good file are valid: {good_rejects:?}"
    );
    let schema = good.schema();
    let at = schema.index_of("occurred_at").unwrap();
    let arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, zone) =
        schema.field(at).data_type().clone()
    else {
        panic!("the good file's occurred_at is in microseconds");
    };
    let mut values: Vec<Option<i64>> = good
        .column(at)
        .as_any()
        .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
        .unwrap()
        .iter()
        .collect();
    let first = tally::time::FIRST_INSTANT;
    let end = tally::time::END_OF_INSTANTS;
    values[0] = Some(first);
    values[1] = Some(first - 1);
    values[2] = Some(end - 1);
    values[3] = Some(end);
    let edited_at = arrow::array::TimestampMicrosecondArray::from(values).with_timezone_opt(zone);
    assert_eq!(edited_at.len(), good.num_rows());
    let mut columns = good.columns().to_vec();
    columns[at] = Arc::new(edited_at);
    let edited = arrow::record_batch::RecordBatch::try_new(schema, columns).unwrap();
    tally::write::write_parquet(&tmp.path().join(USAGE), &edited).unwrap();
    let out = reconcile(&tmp);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
    let account = {
        use arrow::array::AsArray;
        let accounts = good
            .column_by_name("account_id")
            .unwrap()
            .as_string::<i32>();
        accounts.value(0).to_string()
    };
    let outside = |micros: i64| {
        format!("occurred_at: {micros} Microseconds since the epoch is outside years 0001..=9999")
    };
    let mut expected = vec![
        (
            0,
            format!(
                "no allocation of account \"{account}\" contains occurred_at 0001-01-01T00:00:00Z"
            ),
        ),
        (1, outside(first - 1)),
        (3, outside(end)),
    ];
    expected.extend(good_rejects);
    assert_eq!(rejects_of(&tmp.path().join("out"), USAGE), expected);
}

/// The Parquet file at `path` rewritten with its footer saying `rows` for each row group
/// (and their sum for the file), its pages as they were.
fn with_row_group_rows(path: &Path, rows: i64) {
    crate::common::rewrite_footer(path, |rg| {
        rg.clone()
            .into_builder()
            .set_num_rows(rows)
            .build()
            .unwrap()
    });
}

/// A footer whose row count is not what the file holds, however large, is exit 2 naming
/// the file, never an abort (an allocation sized from it failed and ended the process,
/// exit 134) nor a run that publishes the footer's count as the manifest's rows: refused
/// when its row group is decoded, in a run of one group and a split run, in usage and in
/// the plans. A one-group run allocates its rows from the footers first: where the machine
/// cannot reserve them (this VM reserves 64 TiB it never touches) that is the refusal.
#[test]
fn a_footer_that_lies_about_its_rows_is_refused_not_an_abort() {
    let restore = "; restore the file from its source or export it again";
    let holds = |at: &str, said: i64| {
        let rows = read_parquet(&good_root().join(at)).num_rows();
        format!(
            "row group 0 holds {rows} rows, not the {said} its footer says; the file is \
             corrupt{restore}"
        )
    };
    let most = (1i64 << 40) - 1;
    let cannot_allocate = format!(
        "its footer says {most} rows ({most} in the dataset, 64 bytes each), more than this \
         machine can allocate: if the file holds fewer, its footer is corrupt (restore or \
         export it again); else give the run more memory or more groups (--groups)"
    );
    for (at, rows, groups, refusals) in [
        (USAGE, 63, None, vec![holds(USAGE, 63)]),
        (USAGE, 63, Some("2"), vec![holds(USAGE, 63)]),
        (USAGE, most, None, vec![holds(USAGE, most)]),
        (
            USAGE,
            most,
            Some("1"),
            vec![holds(USAGE, most), cannot_allocate],
        ),
        (ALLOCATIONS, most, None, vec![holds(ALLOCATIONS, most)]),
    ] {
        let tmp = good_copy();
        with_row_group_rows(&tmp.path().join(at), rows);
        let data = tmp.path();
        let mut command = run_command("reconcile", data, AS_OF, &data.join("out"));
        if let Some(groups) = groups {
            command.args(["--groups", groups]);
        }
        let out = command.output().expect("tally runs");
        let said = stderr(&out);
        // 2^40 plan rows by the footer pass the budget at 600 bytes each: the run warns of
        // them first (it cannot know the footer lies until it decodes the row group).
        let plans_warning = |line: &str| {
            line.contains(&format!("allocations and grants are {}", most / 1000))
                && line.contains("more than the memory budget")
        };
        let (warned, said) = match said.split_once('\n') {
            Some((first, rest)) if plans_warning(first) => (true, rest.to_string()),
            _ => (false, said),
        };
        assert_eq!(warned, at == ALLOCATIONS && rows == most, "{said}");
        let refusal = (refusals.iter())
            .find(|r| said == format!("tally: {at}: {r}\n"))
            .unwrap_or_else(|| panic!("{at} at {rows} rows, groups {groups:?}: {said}"));
        match warned {
            false => assert_refused(&tmp, &out, &format!("tally: {at}: {refusal}")),
            true => assert!(out.status.code() == Some(2) && !data.join("out").exists()),
        }
    }
}

/// A footer whose own total is not the sum of its row groups' (some writers left it at a
/// first write's count) is read by its row groups, which decoding holds to what they
/// hold: the run goes on and the manifest lists the rows read.
#[test]
fn a_footer_whose_total_is_not_its_row_groups_sum_is_read_by_its_row_groups() {
    use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
    let footer_of = |bytes: &[u8]| {
        ParquetMetaDataReader::new()
            .with_page_index_policy(PageIndexPolicy::Skip)
            .parse_and_finish(&bytes::Bytes::from(bytes.to_vec()))
            .unwrap()
    };
    let tmp = good_copy();
    let path = tmp.path().join(USAGE);
    let mut bytes = std::fs::read(&path).unwrap();
    let rows = footer_of(&bytes).file_metadata().num_rows();
    assert!((1..64).contains(&rows), "a one-byte varint");
    // The file's `num_rows` (field 3, an i64: 0x16, then its zigzag varint) comes before
    // its row groups' in the footer; made one more.
    let footer_len =
        u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap());
    let footer_start = bytes.len() - 8 - footer_len as usize;
    let field = [0x16, (rows * 2) as u8];
    let first = (footer_start..bytes.len() - 9)
        .find(|&i| bytes[i..i + 2] == field)
        .unwrap();
    bytes[first + 1] = ((rows + 1) * 2) as u8;
    let footer = footer_of(&bytes);
    assert_eq!(footer.file_metadata().num_rows(), rows + 1);
    assert_eq!(
        footer
            .row_groups()
            .iter()
            .map(|rg| rg.num_rows())
            .sum::<i64>(),
        rows
    );
    std::fs::write(&path, bytes).unwrap();
    let out = reconcile(&tmp);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("out/manifest.json")).unwrap(),
    )
    .unwrap();
    let listed = (manifest["inputs"].as_array().unwrap().iter())
        .find(|f| f["path"] == USAGE)
        .unwrap();
    assert_eq!(listed["rows"], rows);
}

/// Footers saying 2^63 - 1 rows each add up past a u64 while the run sizes its groups:
/// that sum saturates (it overflowed: exit 4, a panic) and the files are refused, the
/// first named.
#[test]
fn footers_saying_the_most_rows_are_refused_not_a_panic() {
    let tmp = good_copy();
    let first = tmp.path().join(USAGE);
    with_row_group_rows(&first, i64::MAX);
    for copy in ["part-1.parquet", "part-2.parquet"] {
        std::fs::copy(&first, first.with_file_name(copy)).unwrap();
    }
    let out = reconcile(&tmp);
    assert_refused(
        &tmp,
        &out,
        &format!(
            "tally: {USAGE}: 9223372036854775807 rows is more than a file may hold \
             (1099511627775); split the file"
        ),
    );
}

/// A row group whose ids pass what tally holds for one (4 GiB: 2^20 rows with event
/// ids of 4 KiB) is refused naming its file and row group (exit 2); the offsets into its
/// id chunk overflowed (a panic, exit 4). Ignored by default: it writes and reads 4 GiB of
/// ids, about 5 GiB of memory and a minute; run it with `cargo test --release --test cli
/// -- --ignored a_row_group_of_more_than_4_gib`.
#[test]
#[ignore = "reads 4 GiB of ids (about 5 GiB of memory): run by hand with --ignored"]
fn a_row_group_of_more_than_4_gib_of_ids_is_refused() {
    let tmp = good_copy();
    let good = read_parquet(&tmp.path().join(USAGE));
    // 4 batches of 2^18 copies of the first row (one row group of 2^20 rows, the writer's
    // most), each with an event id of 4096 bytes.
    let rows = 1usize << 18;
    let first = arrow::array::UInt32Array::from(vec![0u32; rows]);
    let mut columns: Vec<arrow::array::ArrayRef> = (good.columns().iter())
        .map(|c| arrow::compute::take(c, &first, None).unwrap())
        .collect();
    let id = "e".repeat(4096);
    let ids = arrow::array::StringArray::from_iter_values(std::iter::repeat_n(id.as_str(), rows));
    columns[good.schema().index_of("event_id").unwrap()] = Arc::new(ids);
    let batch = arrow::record_batch::RecordBatch::try_new(good.schema(), columns).unwrap();
    let path = tmp.path().join(USAGE);
    let mut out = tally::write::ParquetOut::create(&path, batch.schema()).unwrap();
    for _ in 0..4 {
        out.write(&batch).unwrap();
    }
    out.finish().unwrap();
    let refusal = format!(
        "tally: {USAGE}: row group 0 holds more than 4 GiB of ids, more than tally holds for \
         one row group; write the file in smaller row groups"
    );
    assert_refused(&tmp, &reconcile(&tmp), &refusal);
    // Split in three groups: the rows go to one account's group. Held in memory (the
    // first two groups' places) they are refused alike; spilled (the third), a frame holds
    // one batch (64K rows) and the run goes on. Either way, no panic.
    let data = tmp.path();
    let split = run_command("reconcile", data, AS_OF, &data.join("out"))
        .args(["--groups", "3"])
        .output()
        .unwrap();
    match split.status.code() {
        Some(2) => assert_eq!(stderr(&split), format!("{refusal}\n")),
        code => assert!(matches!(code, Some(0 | 1)), "{code:?}: {}", stderr(&split)),
    }
}
