//! Corrupt inputs: every file under `tests/bad_data/` has a test asserting tally's exact
//! one-line message and exit code 2.

use crate::common::*;

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
        format!("tally: {}: data root is not a folder\n", missing.display())
    );
}
