//! End-to-end on generated data: `tally generate` + `tally reconcile` find exactly the
//! injected discrepancies, and runs are byte-for-byte deterministic.

use crate::common::*;
use arrow::array::AsArray;
use std::collections::BTreeSet;
use std::path::Path;

fn reconcile(data: &Path, out: &Path, extra: &[&str]) {
    succeeded(run_command("reconcile", data, AS_OF, out).args(extra));
}

const AS_OF: &str = "2026-11-20T00:00:00Z";

/// (id, kind): the event id, or the entry id for orphan/manual rows.
fn found(out: &Path) -> BTreeSet<(String, String)> {
    let batch = read_parquet(&out.join("discrepancies.parquet"));
    let kinds = batch.column_by_name("kind").unwrap().as_string::<i32>();
    let events = batch.column_by_name("event_id").unwrap().as_string::<i32>();
    let entries = batch.column_by_name("entry_ids").unwrap().as_list::<i32>();
    (0..batch.num_rows())
        .map(|i| {
            let kind = kinds.value(i).to_string();
            let id = if kind == "orphan_debit" || kind == "manual_adjustment" {
                entries.value(i).as_string::<i32>().value(0).to_string()
            } else {
                events.value(i).to_string()
            };
            (id, kind)
        })
        .collect()
}

fn truth(data: &Path) -> BTreeSet<(String, String)> {
    let batch = read_parquet(&data.join("truth.parquet"));
    let ids = batch.column_by_name("id").unwrap().as_string::<i32>();
    let kinds = batch.column_by_name("kind").unwrap().as_string::<i32>();
    (0..batch.num_rows())
        .map(|i| (ids.value(i).to_string(), kinds.value(i).to_string()))
        .collect()
}

#[test]
fn reconcile_finds_every_injected_discrepancy_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated_data(tmp.path(), 300, 60_000, 11, "0.03");
    let out = tmp.path().join("out");
    reconcile(&data, &out, &[]);
    let expected = truth(&data);
    let actual = found(&out);
    let kinds: BTreeSet<&str> = expected.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(
        kinds.len(),
        10,
        "the generator injects every kind: {kinds:?}"
    );
    let missed: Vec<_> = expected.difference(&actual).take(10).collect();
    let false_ones: Vec<_> = actual.difference(&expected).take(10).collect();
    assert!(
        missed.is_empty() && false_ones.is_empty(),
        "missed {missed:?}\nfalse {false_ones:?}"
    );
    let summary = json(&out.join("summary.json"));
    assert_eq!(summary["conservation"]["holds"], true);
    let u = &summary["usage"];
    let sum = [
        "events_in_window",
        "identical_duplicates",
        "rejected",
        "outside_window",
    ]
    .iter()
    .map(|k| u[k].as_u64().unwrap())
    .sum::<u64>();
    assert_eq!(sum, u["rows_read"].as_u64().unwrap());
}

#[test]
fn same_inputs_give_byte_identical_outputs_whatever_the_threads_and_buckets() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated_data(tmp.path(), 120, 20_000, 5, "0.05");
    let first = tmp.path().join("first");
    reconcile(&data, &first, &[]);
    let second = tmp.path().join("second");
    reconcile(&data, &second, &["--buckets", "7"]);
    let third = tmp.path().join("third");
    succeeded(run_command("reconcile", &data, AS_OF, &third).env("RAYON_NUM_THREADS", "1"));
    let a = folder_bytes(&first);
    assert!(
        a.len() >= 7,
        "all outputs written: {:?}",
        a.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(a == folder_bytes(&second), "bucket count changed the bytes");
    assert!(a == folder_bytes(&third), "thread count changed the bytes");
    // Re-running into an existing folder replaces it with the same bytes.
    reconcile(&data, &first, &[]);
    assert!(a == folder_bytes(&first));
}

#[test]
fn generate_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    generate(&tmp.path().join("a"), 50, 5000, 3, "0.05");
    generate(&tmp.path().join("b"), 50, 5000, 3, "0.05");
    let a = folder_bytes(&tmp.path().join("a"));
    assert!(a.len() >= 5, "{} files", a.len());
    assert!(a == folder_bytes(&tmp.path().join("b")));
}

/// `tally generate` exits as every command does (README "Exit codes"): a folder that holds
/// data already is configuration (2); a data root that cannot be written (here: under a
/// file) is an output that could not be written (4), naming the path.
#[test]
fn generate_exit_codes_are_the_documented_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("old.parquet"), "x").unwrap();
    let into_full = || {
        tally(&[
            "generate",
            "--out",
            full.to_str().unwrap(),
            "--events",
            "100",
        ])
    };
    let out = into_full();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "tally: generate: output folder {} exists and is not empty\n",
            full.display()
        )
    );
    // A generate killed part way through left its spool folder: the refusal says so.
    std::fs::create_dir(full.join("_generate_tmp")).unwrap();
    let out = into_full();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "tally: generate: output folder {} exists and is not empty (it holds \
             _generate_tmp/: a generate stopped part way through wrote it; remove the folder \
             and run again)\n",
            full.display()
        )
    );
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let under_a_file = file.join("data");
    let out = tally(&[
        "generate",
        "--out",
        under_a_file.to_str().unwrap(),
        "--events",
        "100",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with(&format!("tally: writing {}: ", under_a_file.display())),
        "{}",
        stderr(&out)
    );
    // An option out of range is configuration (2), named by the flag the user typed.
    let fresh = tmp.path().join("fresh");
    let out = tally(&[
        "generate",
        "--out",
        fresh.to_str().unwrap(),
        "--discrepancy-rate",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "tally: generate: invalid options: --discrepancy-rate must be within 0.0..=1.0, got 2\n"
    );
    assert!(!fresh.exists(), "nothing written for invalid options");
}

/// One `discrepancies.csv` cell against its Parquet value, by the rendering the README
/// documents (credits with 3 decimals, instants RFC 3339 UTC, `entry_ids` joined with `;`,
/// nulls empty): read with arrow and the csv crate, not with tally's own CSV writer.
fn cell_matches(column: &arrow::array::ArrayRef, row: usize, cell: &str) -> Result<(), String> {
    use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
    if column.is_null(row) {
        return match cell {
            "" => Ok(()),
            _ => Err(format!("null rendered as {cell:?}")),
        };
    }
    let expected = match column.data_type() {
        DataType::Utf8 => column.as_string::<i32>().value(row).to_string(),
        DataType::List(_) => {
            let ids = column.as_list::<i32>().value(row);
            let ids = ids.as_string::<i32>();
            ids.iter()
                .map(|id| id.unwrap_or(""))
                .collect::<Vec<_>>()
                .join(";")
        }
        DataType::Decimal128(18, 3) => {
            let value = column
                .as_primitive::<arrow::datatypes::Decimal128Type>()
                .value(row);
            let (units, thousandths) = (value.abs() / 1000, value.abs() % 1000);
            let sign = if value < 0 { "-" } else { "" };
            format!("{sign}{units}.{thousandths:03}")
        }
        DataType::Timestamp(TimeUnit::Microsecond, Some(zone)) if zone.as_ref() == "UTC" => {
            let micros = column.as_primitive::<TimestampMicrosecondType>().value(row);
            let parsed = chrono::DateTime::parse_from_rfc3339(cell)
                .map_err(|e| format!("instant {cell:?}: {e}"))?;
            return match parsed.timestamp_micros() == micros && cell.ends_with('Z') {
                true => Ok(()),
                false => Err(format!("instant {cell:?} is not {micros} µs UTC")),
            };
        }
        other => return Err(format!("a column of unexpected type {other}")),
    };
    match cell == expected {
        true => Ok(()),
        false => Err(format!("{cell:?}, expected {expected:?}")),
    }
}

/// Contract section 6: `discrepancies.csv` holds the same rows as `discrepancies.parquet`,
/// cell by cell, on more rows than the CSV writer keeps in flight (it renders pieces of
/// 8,192 rows on the pool, a window of 4 pieces per thread: 65,536 rows at 2 threads), so
/// that rows split across pieces and windows are checked end to end. The golden test holds
/// the CSV to tally's own rendering of the Parquet; this one renders nothing with tally.
#[test]
fn discrepancies_csv_holds_the_parquet_rows_cell_by_cell_past_the_csv_window() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated_data(tmp.path(), 1_000, 150_000, 7, "0.5");
    let out = tmp.path().join("out");
    succeeded(run_command("reconcile", &data, AS_OF, &out).env("RAYON_NUM_THREADS", "2"));
    let batch = read_parquet(&out.join("discrepancies.parquet"));
    assert!(
        batch.num_rows() > 65_536,
        "{} discrepancy rows: not past the CSV writer's window",
        batch.num_rows()
    );
    let mut csv = csv::Reader::from_path(out.join("discrepancies.csv")).unwrap();
    let header: Vec<String> = csv.headers().unwrap().iter().map(str::to_string).collect();
    let names: Vec<String> = (batch.schema().fields().iter())
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(header, names, "the CSV's header is the Parquet's columns");
    let mut rows = 0;
    for (row, record) in csv.records().enumerate() {
        let record = record.unwrap_or_else(|e| panic!("CSV row {row}: {e}"));
        assert!(row < batch.num_rows(), "more CSV rows than Parquet rows");
        assert_eq!(record.len(), names.len(), "CSV row {row}: cell count");
        for (column, (name, cell)) in names.iter().zip(&record).enumerate() {
            if let Err(why) = cell_matches(batch.column(column), row, cell) {
                panic!("discrepancies.csv row {row}, column {name}: {why}");
            }
        }
        rows += 1;
    }
    assert_eq!(rows, batch.num_rows(), "CSV rows against Parquet rows");
}
