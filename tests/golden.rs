//! Hand-worked golden scenarios under `fixtures/golden/<name>/`: inputs in `data/`, the run's
//! settings in `args.toml`, and expected outputs in `expected/`, worked out by hand (see
//! each scenario's NOTES.md). `UPDATE_GOLDEN=1` rewrites the expected files from the actual
//! outputs, to be reviewed as a diff; it is never set in CI.

use crate::common::*;
use std::path::Path;

fn check_or_update(expected_path: &Path, actual: &str, failures: &mut Vec<String>) {
    if update_golden() {
        std::fs::write(expected_path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(expected_path)
        .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
    if expected != actual {
        failures.push(format!(
            "{} differs\n--- expected\n{expected}--- actual\n{actual}",
            expected_path.display()
        ));
    }
}

fn counts_toml(summary: &serde_json::Value) -> String {
    let u = &summary["usage"];
    let e = &summary["events"];
    format!(
        "usage_rows_read = {}\nevents_in_window = {}\nidentical_duplicates = {}\nusage_rows_rejected = {}\nusage_rows_outside_window = {}\npending_events = {}\nmatched_events = {}\n",
        u["rows_read"], u["events_in_window"], u["identical_duplicates"], u["rejected"],
        u["outside_window"], e["pending"], e["matched"]
    )
}

/// Run one scenario and compare every expected file that exists.
pub fn run_scenario(name: &str) {
    let dir = repo().join("fixtures/golden").join(name);
    let args: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("args.toml")).unwrap()).unwrap();
    let command = args["command"].as_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    tally_ok(&[
        command,
        "--data",
        dir.join("data").to_str().unwrap(),
        "--as-of",
        args["as_of"].as_str().unwrap(),
        "--settle",
        args.get("settle").and_then(|s| s.as_str()).unwrap_or("15m"),
        "--out",
        out.to_str().unwrap(),
    ]);
    let expected = dir.join("expected");
    let mut failures = Vec::new();
    // Contract section 6: "discrepancies.parquet and discrepancies.csv (same rows, for
    // finance)": the CSV as written (streamed to the file) against the Parquet's rows
    // rendered in memory, byte for byte.
    let csv = std::fs::read_to_string(out.join("discrepancies.csv")).unwrap();
    assert_eq!(
        csv,
        render(&out.join("discrepancies.parquet"), &[]),
        "discrepancies.csv and .parquet hold the same rows"
    );
    check_or_update(&expected.join("discrepancies.csv"), &csv, &mut failures);
    check_or_update(
        &expected.join("rejects.csv"),
        &render(&out.join("rejects.parquet"), &["detail"]),
        &mut failures,
    );
    // Every table of the command is compared: a scenario's expected file that went missing
    // must fail, not drop its comparison.
    let tables: &[&str] = match command {
        "close" => &[
            "invoices",
            "invoice_lines",
            "renewals",
            "allocations_next",
            "grants_next",
        ],
        _ => &["balances"],
    };
    for table in tables {
        check_or_update(
            &expected.join(format!("{table}.csv")),
            &render(&out.join(format!("{table}.parquet")), &[]),
            &mut failures,
        );
    }
    let summary = json(&out.join("summary.json"));
    check_or_update(
        &expected.join("counts.toml"),
        &counts_toml(&summary),
        &mut failures,
    );
    assert_eq!(summary["conservation"]["holds"], true);
    assert!(
        failures.is_empty(),
        "golden scenario {name}:\n{}",
        failures.join("\n")
    );
}

#[test]
fn golden_pricing_and_kinds() {
    run_scenario("pricing_and_kinds");
}

#[test]
fn golden_grant_consumption() {
    run_scenario("grant_consumption");
}

#[test]
fn golden_ledger_dedup_window() {
    run_scenario("ledger_dedup_window");
}

#[test]
fn golden_rejects_and_types() {
    run_scenario("rejects_and_types");
}

#[test]
fn golden_close_renewal_grants() {
    run_scenario("close_renewal_grants");
}

#[test]
fn golden_close_invoice_overage() {
    run_scenario("close_invoice_overage");
}

#[test]
fn golden_close_multi_period() {
    run_scenario("close_multi_period");
}

#[test]
fn golden_close_anchors() {
    run_scenario("close_anchors");
}

#[test]
fn golden_close_jpy() {
    run_scenario("close_jpy");
}

/// Every scenario folder has a test above (a new folder without one fails here).
#[test]
fn every_golden_scenario_has_a_test() {
    let source = include_str!("golden.rs");
    for entry in std::fs::read_dir(repo().join("fixtures/golden")).unwrap() {
        let entry = entry.unwrap();
        if entry.path().join("args.toml").exists() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                source.contains(&format!("run_scenario(\"{name}\")")),
                "fixtures/golden/{name} has no test in tests/golden.rs"
            );
        }
    }
}

/// `UPDATE_GOLDEN=1` (exactly) rewrites the expected files: `UPDATE_GOLDEN=0`, or set
/// empty, must not quietly rewrite them and pass.
pub fn update_golden() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1")
}
