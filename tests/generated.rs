//! End-to-end on generated data: `tally generate` + `tally reconcile` find exactly the
//! injected discrepancies, and runs are byte-for-byte deterministic.

use crate::common::*;
use arrow::array::AsArray;
use std::collections::BTreeSet;
use std::path::Path;

fn reconcile(data: &Path, out: &Path, extra: &[&str]) {
    let output = run_command("reconcile", data, AS_OF, out)
        .args(extra)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
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
    let data = tmp.path().join("data");
    generate(&data, 300, 60_000, 11, "0.03");
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
    let data = tmp.path().join("data");
    generate(&data, 120, 20_000, 5, "0.05");
    let first = tmp.path().join("first");
    reconcile(&data, &first, &[]);
    let second = tmp.path().join("second");
    reconcile(&data, &second, &["--buckets", "7"]);
    let third = tmp.path().join("third");
    let out = run_command("reconcile", &data, AS_OF, &third)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
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
