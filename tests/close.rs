//! `tally close`: chaining periods through allocations_next/grants_next, and idempotency.

use crate::common::*;
use arrow::array::AsArray;
use std::path::{Path, PathBuf};
use tally::amount::Milli;
use tally::time::parse_instant;
use tally::write::{write_parquet, Table};

fn t(s: &str) -> i64 {
    parse_instant(s).unwrap()
}

fn write_usage(path: &Path, rows: &[(&str, &str, &str, i64, &str)]) {
    // (event_id, account_id, action, quantity units, occurred_at)
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let batch = Table::default()
        .str("event_id", rows.iter().map(|r| r.0))
        .str("account_id", rows.iter().map(|r| r.1))
        .str("product", rows.iter().map(|_| "captions"))
        .str("action", rows.iter().map(|r| r.2))
        .opt_str("model", rows.iter().map(|_| None))
        .credits("quantity", rows.iter().map(|r| Milli::from_units(r.3)))
        .str("status", rows.iter().map(|_| "succeeded"))
        .ts("occurred_at", rows.iter().map(|r| t(r.4)))
        .finish();
    write_parquet(path, &batch).unwrap();
}

fn write_debits(path: &Path, rows: &[(&str, &str, &str, i64, &str)]) {
    // (entry_id, account_id, event_id, credits units, recorded_at)
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let batch = Table::default()
        .str("entry_id", rows.iter().map(|r| r.0))
        .str("account_id", rows.iter().map(|r| r.1))
        .opt_str("event_id", rows.iter().map(|r| Some(r.2)))
        .str("kind", rows.iter().map(|_| "debit"))
        .credits("credits", rows.iter().map(|r| Milli::from_units(r.3)))
        .ts("recorded_at", rows.iter().map(|r| t(r.4)))
        .finish();
    write_parquet(path, &batch).unwrap();
}

fn first_root(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::copy(
        repo().join("fixtures/pricebook.toml"),
        root.join("pricebook.toml"),
    )
    .unwrap();
    let allocations = Table::default()
        .str("account_id", ["acct_pro", "acct_free"])
        .str("plan_id", ["pro", "free"])
        .ts("period_start", [t("2026-11-01T00:00:00Z"); 2])
        .ts("period_end", [t("2026-12-01T00:00:00Z"); 2])
        .credits("included_credits", [Milli::from_units(200); 2])
        .opt_ts("billing_anchor", [Some(t("2026-10-31T08:00:00Z")), None])
        .str("status", ["active", "active"])
        .finish();
    std::fs::create_dir_all(root.join("allocations")).unwrap();
    write_parquet(&root.join("allocations/part-0.parquet"), &allocations).unwrap();
    let grants = Table::default()
        .str("grant_id", ["topup-1"])
        .str("account_id", ["acct_pro"])
        .str("kind", ["top_up"])
        .credits("credits", [Milli::from_units(100)])
        .ts("effective_at", [t("2026-11-10T00:00:00Z")])
        .opt_ts("expires_at", [None])
        .opt_i32("priority", [None])
        .finish();
    std::fs::create_dir_all(root.join("grants")).unwrap();
    write_parquet(&root.join("grants/part-0.parquet"), &grants).unwrap();
    // pro: 3 AI twins = 144 (plan 200 → 56 unused; rollover cap 100 → 56 rolls)
    write_usage(
        &root.join("usage/part-0.parquet"),
        &[
            (
                "e1",
                "acct_pro",
                "ai_twin_creation",
                3,
                "2026-11-05T10:00:00Z",
            ),
            ("e2", "acct_free", "chat_edit", 10, "2026-11-06T10:00:00Z"),
        ],
    );
    write_debits(
        &root.join("debits/part-0.parquet"),
        &[
            ("d1", "acct_pro", "e1", 144, "2026-11-05T10:00:01Z"),
            ("d2", "acct_free", "e2", 20, "2026-11-06T10:00:01Z"),
        ],
    );
}

/// [`first_root`] made in `dir/data`, the data root returned.
fn first_data(dir: &Path) -> PathBuf {
    let root = dir.join("data");
    first_root(&root);
    root
}

/// The next period's data root: the price book, the previous close's allocations_next and
/// grants_next as they are, and the new period's usage and debits.
fn next_root(
    prev_root: &Path,
    prev_out: &Path,
    root: &Path,
    usage: &[(&str, &str, &str, i64, &str)],
    debits: &[(&str, &str, &str, i64, &str)],
) {
    std::fs::create_dir_all(root.join("allocations")).unwrap();
    std::fs::create_dir_all(root.join("grants")).unwrap();
    std::fs::copy(
        prev_root.join("pricebook.toml"),
        root.join("pricebook.toml"),
    )
    .unwrap();
    std::fs::copy(
        prev_out.join("allocations_next.parquet"),
        root.join("allocations/part-0.parquet"),
    )
    .unwrap();
    std::fs::copy(
        prev_out.join("grants_next.parquet"),
        root.join("grants/part-0.parquet"),
    )
    .unwrap();
    write_usage(&root.join("usage/part-0.parquet"), usage);
    write_debits(&root.join("debits/part-0.parquet"), debits);
}

fn run(cmd: &str, data: &Path, as_of: &str, out: &Path) -> std::process::Output {
    run_command(cmd, data, as_of, out)
        .output()
        .expect("tally runs")
}

/// `tally close --force` of `data` at `as_of` into `out`.
fn close_forced(data: &Path, as_of: &str, out: &Path) -> std::process::Output {
    run_command("close", data, as_of, out)
        .arg("--force")
        .output()
        .expect("tally runs")
}

/// A run refused with exit 3 and exactly `message` (after `tally: refused: OUT `) on
/// stderr, its output folder as it was (`before`).
fn assert_refused(
    ran: &std::process::Output,
    out: &Path,
    message: &str,
    before: &[(String, Vec<u8>)],
) {
    assert_eq!(ran.status.code(), Some(3), "{}", stderr(ran));
    assert_eq!(
        stderr(ran),
        format!("tally: refused: {} {message}\n", out.display())
    );
    assert!(
        before == folder_bytes(out),
        "a refused run leaves {out:?} untouched"
    );
}

#[test]
fn three_periods_chain_through_the_next_inputs_without_hand_edits() {
    let tmp = tempfile::tempdir().unwrap();
    let p1 = tmp.path().join("p1");
    first_root(&p1);
    let out1 = tmp.path().join("close1");
    run_command_ok("close", &p1, "2026-12-01T00:00:00Z", &out1);
    assert_eq!(
        render(&out1.join("renewals.parquet"), &[]),
        "account_id,period_end,next_period_start,next_period_end,plan_id,plan_credits_unused,rollover_credits,expired_credits,next_included_credits,carried_grant_credits\n\
         acct_free,2026-12-01T00:00:00Z,,,free,180.000,0.000,180.000,,0.000\n\
         acct_pro,2026-12-01T00:00:00Z,2026-12-01T00:00:00Z,2026-12-31T08:00:00Z,pro,56.000,56.000,0.000,200.000,100.000\n"
    );
    assert_eq!(
        render(&out1.join("grants_next.parquet"), &[]),
        "grant_id,account_id,kind,credits,effective_at,expires_at,priority\n\
         rollover-acct_pro-20261201T000000Z,acct_pro,rollover,56.000,2026-12-01T00:00:00Z,2026-12-31T08:00:00Z,\n\
         topup-1,acct_pro,top_up,100.000,2026-11-10T00:00:00Z,,\n"
    );

    // Period 2: 5 twins = 240 = 56 rollover + 184 plan; reconcile mid-period, then close.
    let p2 = tmp.path().join("p2");
    next_root(
        &p1,
        &out1,
        &p2,
        &[(
            "e3",
            "acct_pro",
            "ai_twin_creation",
            5,
            "2026-12-10T10:00:00Z",
        )],
        &[("d3", "acct_pro", "e3", 240, "2026-12-10T10:00:01Z")],
    );
    let mid = tmp.path().join("reconcile2");
    run_command_ok("reconcile", &p2, "2026-12-20T00:00:00Z", &mid);
    assert_eq!(
        render(&mid.join("balances.parquet"), &[]).lines().nth(1).unwrap(),
        "acct_pro,pro,2026-12-01T00:00:00Z,2026-12-31T08:00:00Z,356.000,240.000,0.000,116.000,\
         56.000,56.000,0.000,200.000,184.000,16.000,0.000,0.000,0.000,0.000,0.000,0.000,100.000,0.000,100.000"
    );
    let out2 = tmp.path().join("close2");
    run_command_ok("close", &p2, "2026-12-31T08:00:00Z", &out2);
    let inv = read_parquet(&out2.join("invoices.parquet"));
    assert_eq!(inv.num_rows(), 1);

    // Period 3: 7 twins = 336 = 16 rollover + 200 plan + 100 top-up + 20 blocked overage.
    let p3 = tmp.path().join("p3");
    next_root(
        &p2,
        &out2,
        &p3,
        &[(
            "e4",
            "acct_pro",
            "ai_twin_creation",
            7,
            "2027-01-05T10:00:00Z",
        )],
        &[("d4", "acct_pro", "e4", 336, "2027-01-05T10:00:01Z")],
    );
    let out3 = tmp.path().join("close3");
    run_command_ok("close", &p3, "2027-01-31T08:00:00Z", &out3);
    let invoices = render(&out3.join("invoices.parquet"), &[]);
    assert!(
        invoices.contains(",USD,999,200.000,336.000,16.000,200.000,0.000,0.000,100.000,20.000,0,999,336.000,0.000\n"),
        "{invoices}"
    );
    let discrepancies = std::fs::read_to_string(out3.join("discrepancies.csv")).unwrap();
    assert!(
        discrepancies.contains("over_limit_usage,acct_pro,e4,d4,"),
        "{discrepancies}"
    );
    // The top-up is used up and the February rollover is 0 (plan fully used): nothing carries.
    assert_eq!(
        render(&out3.join("grants_next.parquet"), &[]),
        "grant_id,account_id,kind,credits,effective_at,expires_at,priority\n"
    );
    let next = render(&out3.join("allocations_next.parquet"), &[]);
    assert!(next.contains("acct_pro,pro,2027-01-31T08:00:00Z,2027-02-28T08:00:00Z,200.000,2026-10-31T08:00:00Z,active"), "{next}");
}

/// A catch-up close (November missed, closed with December) bills each period on its own
/// invoice; summary.md and report.html both say under the credit totals that they are sums
/// over account-periods, since the November top-up counts in both of acct_pro's periods.
#[test]
fn a_catch_up_close_says_its_credit_totals_are_sums_over_account_periods() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_with_december(tmp.path());
    let out = tmp.path().join("close");
    run_command_ok("close", &data, "2027-01-01T00:00:00Z", &out);
    let invoices_file = out.join("invoices.parquet");
    let schema = read_parquet(&invoices_file).schema();
    let others: Vec<&str> = (schema.fields().iter())
        .map(|f| f.name().as_str())
        .filter(|name| !["account_id", "period_start"].contains(name))
        .collect();
    let invoices = render(&invoices_file, &others);
    assert_eq!(
        invoices,
        "account_id,period_start\n\
         acct_free,2026-11-01T00:00:00Z\n\
         acct_pro,2026-11-01T00:00:00Z\n\
         acct_pro,2026-12-01T00:00:00Z\n"
    );
    let said = "1 of the 3 invoices is of an account with an earlier period in this close. \
                Credits granted, remaining and carried are summed over account-periods";
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains(said), "{summary}");
    assert!(
        summary
            .contains("a grant in `grants_next`. Each period's own figures are in `renewals.csv`."),
        "{summary}"
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains(&format!("<p class=\"note\">{said}")),
        "{html}"
    );
    assert!(
        html.contains(
            "a grant in <code>grants_next</code>. Each period's own figures are in \
                       <code>renewals.csv</code>.</p>"
        ),
        "{html}"
    );

    // A close of one period per account says nothing of the kind.
    let monthly = tmp.path().join("monthly");
    std::fs::remove_file(data.join("allocations/part-1.parquet")).unwrap();
    run_command_ok("close", &data, "2026-12-01T00:00:00Z", &monthly);
    for file in ["summary.md", "report.html"] {
        let text = std::fs::read_to_string(monthly.join(file)).unwrap();
        assert!(
            !text.contains("earlier period in this close"),
            "{file}: {text}"
        );
    }
}

/// A close run without `--history` beside earlier closes (the history left out by hand)
/// does not read them, so it closes and invoices their periods again: it warns, naming the
/// latest and the `--history` to give. A first close, a close's own rerun and a close with
/// its history do not warn.
#[test]
fn a_close_without_history_beside_earlier_closes_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo().join("fixtures/demo");
    let closes = tmp.path().join("closes");
    let close = |as_of: &str, out: &Path, extra: &[&str]| {
        let output = succeeded(run_command("close", &data, as_of, out).args(extra));
        (json_log(&output).into_iter())
            .filter(|line| line["fields"]["latest"].is_string())
            .collect::<Vec<_>>()
    };
    let december = closes.join("2026-12-01");
    assert!(close("2026-12-01T00:00:00Z", &december, &[]).is_empty());
    assert!(
        close("2026-12-01T00:00:00Z", &december, &[]).is_empty(),
        "its own rerun"
    );
    let warned = close("2027-01-01T00:00:00Z", &closes.join("2027-01-01"), &[]);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["level"], "WARN");
    assert_eq!(
        warned[0]["fields"]["message"],
        format!(
            "the folder of --out, {0}, holds another close (the latest: 2026-12-01, as of \
             2026-12-01T00:00:00Z) that this close does not read, as it runs without \
             --history: periods it closed are closed and invoiced again. If it is a close of \
             this data root, rerun with --history {0} --force (which replaces this close)",
            closes.display()
        )
    );
    assert_eq!(warned[0]["fields"]["closes"], 1);
    // Following the advice: without --force the refusal says what happened (it said "a
    // later close exists" of the earlier close it had not read); with it, the close reads
    // December and warns no more.
    let january = closes.join("2027-01-01");
    let with_history = ["--history", closes.to_str().unwrap()];
    let refused = run_command("close", &data, "2027-01-01T00:00:00Z", &january)
        .args(with_history)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).ends_with(
            "; it did not read the earlier closes under --history, so it closed and invoiced \
             their periods again: rerun with --force to replace it with a close that reads \
             them\n"
        ),
        "{}",
        stderr(&refused)
    );
    let forced = [with_history[0], with_history[1], "--force"];
    assert!(close("2027-01-01T00:00:00Z", &january, &forced).is_empty());
    // A backfill beside a later close bills what that close billed: it warns too.
    let later = tmp.path().join("later");
    let hl = ["--history", later.to_str().unwrap()];
    assert!(close("2027-01-01T00:00:00Z", &later.join("2027-01-01"), &hl).is_empty());
    let backfill = close("2026-12-01T00:00:00Z", &later.join("2026-12-01"), &[]);
    assert_eq!(backfill.len(), 1, "{backfill:?}");
    assert_eq!(backfill[0]["fields"]["latest"], "2027-01-01");
    // A copy of a close at this close's as-of is not one --history would read: no warning.
    let alone = tmp.path().join("alone");
    assert!(close("2026-12-01T00:00:00Z", &alone.join("2026-12-01"), &[]).is_empty());
    copy_dir(&alone.join("2026-12-01"), &alone.join("backup"));
    assert!(close("2026-12-01T00:00:00Z", &alone.join("2026-12-01"), &[]).is_empty());
    // With its history: no warning.
    let history = tmp.path().join("history");
    let h = ["--history", history.to_str().unwrap()];
    assert!(close("2026-12-01T00:00:00Z", &history.join("2026-12-01"), &h).is_empty());
    assert!(close("2027-01-01T00:00:00Z", &history.join("2027-01-01"), &h).is_empty());
}

#[test]
fn close_is_idempotent_and_refuses_changed_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = first_data(tmp.path());
    let out = tmp.path().join("close");
    run_command_ok("close", &root, "2026-12-01T00:00:00Z", &out);
    let before = folder_bytes(&out);

    let again = run("close", &root, "2026-12-01T00:00:00Z", &out);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        format!(
            "{}: already closed with the same inputs; nothing to do\n",
            out.display()
        )
    );
    assert!(
        before == folder_bytes(&out),
        "a no-op close leaves the folder untouched"
    );

    // A reconcile pointed at the close's folder: refused with exit 3, the close untouched.
    let reconcile = run("reconcile", &root, "2026-12-01T00:00:00Z", &out);
    assert_refused(
        &reconcile,
        &out,
        "holds a close; a reconcile does not replace a close: choose another --out folder",
        &before,
    );

    // One changed byte in one input: refused with exit 3, naming the file.
    std::fs::write(
        root.join("pricebook.toml"),
        std::fs::read_to_string(root.join("pricebook.toml")).unwrap() + "\n# edited\n",
    )
    .unwrap();
    let refused = run("close", &root, "2026-12-01T00:00:00Z", &out);
    assert_refused(
        &refused,
        &out,
        "already holds a close with other inputs (pricebook.toml changed); rerun with --force to replace it",
        &before,
    );

    // A different as-of is a different close too.
    let other = run("close", &root, "2026-12-02T00:00:00Z", &out);
    assert_eq!(other.status.code(), Some(3));

    // Many changes (a month re-exported, here 6 files more): the refusal stays one line,
    // naming the first five changes in path order and counting the rest.
    let usage = std::fs::read_dir(root.join("usage"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("a usage file at the top of usage/");
    for i in 0..6 {
        std::fs::copy(&usage, root.join(format!("usage/zz-{i}.parquet"))).unwrap();
    }
    let many = run("close", &root, "2026-12-01T00:00:00Z", &out);
    assert_refused(
        &many,
        &out,
        "already holds a close with other inputs (pricebook.toml changed, usage/zz-0.parquet \
         is new, usage/zz-1.parquet is new, usage/zz-2.parquet is new, usage/zz-3.parquet is \
         new and 2 more); rerun with --force to replace it",
        &before,
    );
    for i in 0..6 {
        std::fs::remove_file(root.join(format!("usage/zz-{i}.parquet"))).unwrap();
    }

    let forced = close_forced(&root, "2026-12-01T00:00:00Z", &out);
    assert_eq!(forced.status.code(), Some(0));
    let manifest = json(&out.join("manifest.json"));
    assert_eq!(manifest["command"], "close");
    // The forced close recorded the edited price book: the same run again is a no-op.
    let after_force = run("close", &root, "2026-12-01T00:00:00Z", &out);
    assert_eq!(after_force.status.code(), Some(0));
}

/// A close pointed at a reconcile's folder is refused (exit 3) saying what the folder
/// holds (it said "already holds a close" before), the folder untouched; with --force
/// the close replaces it and is the same close as one into an empty folder.
#[test]
fn a_close_over_a_reconcile_folder_is_refused_naming_what_it_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let root = first_data(tmp.path());
    let out = tmp.path().join("out");
    run_command_ok("reconcile", &root, "2026-11-20T00:00:00Z", &out);
    let before = folder_bytes(&out);
    let refused = run("close", &root, "2026-12-01T00:00:00Z", &out);
    assert_refused(
        &refused,
        &out,
        "holds the output of a reconcile (as-of 2026-11-20T00:00:00Z), not a close; rerun with --force to replace it with this close",
        &before,
    );

    let forced = close_forced(&root, "2026-12-01T00:00:00Z", &out);
    assert_eq!(forced.status.code(), Some(0), "{}", stderr(&forced));
    let fresh = tmp.path().join("fresh");
    run_command_ok("close", &root, "2026-12-01T00:00:00Z", &fresh);
    assert!(
        folder_bytes(&out) == folder_bytes(&fresh),
        "the forced close is the close of the same inputs"
    );
}

/// A grants file as a close's grants_next writes it: one grant of `account`, expiring at
/// the end of acct_pro's December period.
fn write_one_grant(
    path: &Path,
    account: &str,
    grant_id: &str,
    kind: &str,
    units: i64,
    effective_at: &str,
) {
    let grants = Table::default()
        .str("grant_id", [grant_id])
        .str("account_id", [account])
        .str("kind", [kind])
        .credits("credits", [Milli::from_units(units)])
        .ts("effective_at", [t(effective_at)])
        .opt_ts("expires_at", [Some(t("2026-12-31T08:00:00Z"))])
        .opt_i32("priority", [None])
        .finish();
    write_parquet(path, &grants).unwrap();
}

/// The close's own rollover fed back into its inputs (an operator put grants_next in
/// grants/ and then closed the period again): written once, worked out again, not copied
/// beside the new one (grants_next would hold one grant_id twice, and the next run would
/// reject one of the two). Another grant of the account with the rollover's id is exit 2.
#[test]
fn a_close_over_its_own_fed_back_rollover_writes_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = first_data(tmp.path());
    let first = tmp.path().join("close1");
    run_command_ok("close", &root, "2026-12-01T00:00:00Z", &first);

    // A stale amount (40, not 56): the rollover is worked out again, not copied.
    let fed_back = root.join("grants/from-close1.parquet");
    let rollover = "rollover-acct_pro-20261201T000000Z";
    write_one_grant(
        &fed_back,
        "acct_pro",
        rollover,
        "rollover",
        40,
        "2026-12-01T00:00:00Z",
    );
    let again = tmp.path().join("close2");
    run_command_ok("close", &root, "2026-12-01T00:00:00Z", &again);
    for table in [
        "grants_next",
        "renewals",
        "invoices",
        "allocations_next",
        "rejects",
    ] {
        let file = format!("{table}.parquet");
        assert!(
            std::fs::read(first.join(&file)).unwrap() == std::fs::read(again.join(&file)).unwrap(),
            "{table} differs"
        );
    }

    // A promo named like the rollover, of the account (found with its carried grants) or of
    // another account (found across accounts): exit 2 naming it.
    let refused_with = |account: &str, out: &str| {
        write_one_grant(
            &fed_back,
            account,
            rollover,
            "promo",
            40,
            "2026-11-05T00:00:00Z",
        );
        // In a folder of its own: beside the first close it would warn of it.
        let refused = run(
            "close",
            &root,
            "2026-12-01T00:00:00Z",
            &tmp.path().join(out).join("close"),
        );
        assert_eq!(refused.status.code(), Some(2));
        stderr(&refused)
    };
    assert_eq!(
        refused_with("acct_pro", "close3"),
        "tally: grants: grant \"rollover-acct_pro-20261201T000000Z\" of account \"acct_pro\" \
         (promo, effective 2026-11-05T00:00:00Z) has the id of the rollover grant this close \
         writes for account \"acct_pro\", and grants_next cannot hold two grants with one id; \
         give that grant another id and rerun\n"
    );
    assert_eq!(
        refused_with("acct_free", "close4"),
        "tally: grants: grant \"rollover-acct_pro-20261201T000000Z\" of account \"acct_free\" \
         (promo, effective 2026-11-05T00:00:00Z) has the id of the rollover grant this close \
         writes for account \"acct_pro\", and grants_next cannot hold two grants with one id; \
         give that grant another id and rerun\n"
    );
}

/// A renewal whose next period would end past year 9999 (which no input can hold, so the
/// next close could not read it back) is exit 2 naming the account-period; the period
/// before it renews.
#[test]
fn a_renewal_past_year_9999_is_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    root_with_pricebook(&root);
    let write_period = |start: &str, end: &str| {
        let allocations = Table::default()
            .str("account_id", ["acct_pro"])
            .str("plan_id", ["pro"])
            .ts("period_start", [t(start)])
            .ts("period_end", [t(end)])
            .credits("included_credits", [Milli::from_units(200)])
            .opt_ts("billing_anchor", [None])
            .str("status", ["active"])
            .finish();
        write_parquet(&root.join("allocations/part-0.parquet"), &allocations).unwrap();
    };
    write_usage(&root.join("usage/part-0.parquet"), &[]);
    write_debits(&root.join("debits/part-0.parquet"), &[]);
    write_period("9999-10-01T00:00:00Z", "9999-11-01T00:00:00Z");
    let out = tmp.path().join("out");
    run_command_ok("close", &root, "9999-12-01T00:00:00Z", &out);
    let next = render(&out.join("allocations_next.parquet"), &[]);
    assert!(
        next.contains(",9999-11-01T00:00:00Z,9999-12-01T00:00:00Z,"),
        "{next}"
    );

    write_period("9999-11-01T00:00:00Z", "9999-12-01T00:00:00Z");
    // In a folder of its own: beside the first close it would warn of it.
    let refused = run(
        "close",
        &root,
        "9999-12-01T00:00:00Z",
        &tmp.path().join("second").join("out"),
    );
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        stderr(&refused),
        "tally: allocations: account \"acct_pro\" period starting 9999-11-01T00:00:00Z: its \
         next period would end past year 9999, which an input cannot hold; check its \
         period_end and billing_anchor, then rerun\n"
    );
}

/// Two valid events whose quantities sum past what `invoice_lines.quantity` holds: the
/// reconcile (no such column) publishes, the close stops with exit 4 naming the sum as the
/// quantity it is, not as credits.
#[test]
fn an_invoice_lines_quantity_past_its_column_is_named_as_a_quantity() {
    let tmp = tempfile::tempdir().unwrap();
    let root = first_data(tmp.path());
    let book = std::fs::read_to_string(root.join("pricebook.toml")).unwrap();
    let tiny = "\n[[rates]]\nproduct = \"captions\"\naction = \"tiny\"\nunit = \"second\"\n\
                credits_per_unit = \"0.000001\"\neffective_from = 2026-01-01T00:00:00Z\n";
    std::fs::write(root.join("pricebook.toml"), book + tiny).unwrap();
    write_usage(
        &root.join("usage/part-big.parquet"),
        &[
            (
                "big1",
                "acct_pro",
                "tiny",
                600_000_000_000_000,
                "2026-11-07T10:00:00Z",
            ),
            (
                "big2",
                "acct_pro",
                "tiny",
                600_000_000_000_000,
                "2026-11-08T10:00:00Z",
            ),
        ],
    );
    run_command_ok(
        "reconcile",
        &root,
        "2026-11-20T00:00:00Z",
        &tmp.path().join("rec"),
    );
    let close = run(
        "close",
        &root,
        "2026-12-01T00:00:00Z",
        &tmp.path().join("close"),
    );
    assert_eq!(close.status.code(), Some(4), "{}", stderr(&close));
    assert_eq!(
        stderr(&close),
        "tally: amount overflow: account \"acct_pro\" period starting 2026-11-01T00:00:00Z: the \
         quantities of its captions/tiny/(no model) events sum past what invoice_lines.quantity \
         holds (999999999999999.999, DECIMAL(18,3)): 600000000000000.000 + \
         600000000000000.000; check those events' quantities, then rerun\n"
    );
}

/// Two periods of one account starting within one second get two invoice ids (the
/// stamp keeps the fraction): both once read `INV-acct_pro-20261101T000000Z`, and their
/// invoice lines and billed events could not be told apart (a calendar audit's finding).
#[test]
fn periods_starting_within_one_second_have_their_own_invoice_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let root = first_data(tmp.path());
    let (start, split, end) = (
        t("2026-11-01T00:00:00Z"),
        t("2026-11-01T00:00:00.5Z"),
        t("2026-12-01T00:00:00Z"),
    );
    let allocations = Table::default()
        .str("account_id", ["acct_pro", "acct_pro"])
        .str("plan_id", ["pro", "pro"])
        .ts("period_start", [start, split])
        .ts("period_end", [split, end])
        .credits("included_credits", [Milli::from_units(200); 2])
        .opt_ts("billing_anchor", [None, None])
        .str("status", ["active", "active"])
        .finish();
    write_parquet(&root.join("allocations/part-0.parquet"), &allocations).unwrap();
    write_usage(
        &root.join("usage/part-0.parquet"),
        &[
            (
                "e1",
                "acct_pro",
                "ai_twin_creation",
                1,
                "2026-11-01T00:00:00.25Z",
            ),
            (
                "e2",
                "acct_pro",
                "ai_twin_creation",
                2,
                "2026-11-05T10:00:00Z",
            ),
        ],
    );
    write_debits(&root.join("debits/part-0.parquet"), &[]);
    let out = tmp.path().join("out");
    let ran = run("close", &root, "2026-12-01T00:00:00Z", &out);
    assert!(ran.status.success(), "{}", stderr(&ran));
    let ids = |table: &str| {
        let batch = read_parquet(&out.join(table));
        let column = batch
            .column_by_name("invoice_id")
            .unwrap()
            .as_string::<i32>();
        column
            .iter()
            .map(|id| id.unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let invoices = ids("invoices.parquet");
    assert_eq!(
        invoices,
        [
            "INV-acct_pro-20261101T000000Z",
            "INV-acct_pro-20261101T000000.5Z"
        ]
    );
    // One line each (one model), each under its own invoice.
    let (mut lines, mut invoices) = (ids("invoice_lines.parquet"), invoices);
    lines.sort();
    invoices.sort();
    assert_eq!(lines, invoices);
}

#[test]
fn close_outputs_are_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let root = first_data(tmp.path());
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    run_command_ok("close", &root, "2026-12-01T00:00:00Z", &a);
    run_command_ok("close", &root, "2026-12-01T00:00:00Z", &b);
    assert!(folder_bytes(&a) == folder_bytes(&b));
    let lines = read_parquet(&a.join("invoice_lines.parquet"));
    let actions = lines.column_by_name("action").unwrap().as_string::<i32>();
    assert_eq!(actions.value(0), "chat_edit");
}

/// [`first_data`] with acct_pro's December allocation already in the data root (the
/// export keeps history).
fn data_with_december(dir: &Path) -> PathBuf {
    let root = first_data(dir);
    let dec = Table::default()
        .str("account_id", ["acct_pro"])
        .str("plan_id", ["pro"])
        .ts("period_start", [t("2026-12-01T00:00:00Z")])
        .ts("period_end", [t("2026-12-31T08:00:00Z")])
        .credits("included_credits", [Milli::from_units(200)])
        .opt_ts("billing_anchor", [Some(t("2026-10-31T08:00:00Z"))])
        .str("status", ["active"])
        .finish();
    write_parquet(&root.join("allocations/part-1.parquet"), &dec).unwrap();
    root
}

/// A close of `root` at `as_of` into `closes/name` with `--history closes` (and `extra`
/// flags).
fn history_close(
    root: &Path,
    closes: &Path,
    as_of: &str,
    name: &str,
    extra: &[&str],
) -> std::process::Output {
    run_command("close", root, as_of, &closes.join(name))
        .args(["--history", closes.to_str().unwrap()])
        .args(extra)
        .output()
        .expect("tally runs")
}

/// [`history_close`], which must succeed; its output folder returned.
fn close_into(root: &Path, closes: &Path, as_of: &str, name: &str, extra: &[&str]) -> PathBuf {
    let done = history_close(root, closes, as_of, name, extra);
    assert!(done.status.success(), "{}", stderr(&done));
    closes.join(name)
}

/// `tally explain --close --json` of event `event_id`, given the close's data root, as-of,
/// `--history` and `--out`: the explanation's `event` object.
fn explain_event_of_close(
    root: &Path,
    closes: &Path,
    out: &Path,
    as_of: &str,
    event_id: &str,
) -> serde_json::Value {
    let (closes, out) = (closes.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "--close",
        "--history",
        closes,
        "--out",
        out,
        "--event",
        event_id,
    ];
    explain_json(root, as_of, &args)["event"].clone()
}

/// A usage event that arrives after its period was closed: the next close (with
/// `--history`) does not close that period again; it reports the event `late_event` and
/// bills it on the account's next invoice as a prior-period line.
#[test]
fn late_events_are_reported_and_billed_on_the_next_invoice() {
    late_events(&[]);
}

/// The same in a split run (2 groups: the light pass finds the events that may be late and
/// reads the earlier closes' billed events for those only).
#[test]
fn late_events_are_found_the_same_way_in_a_split_run() {
    late_events(&["--groups", "2"]);
}

fn late_events(extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let root = data_with_december(tmp.path());
    // November events the November close sees but bills nothing for: a failed event that
    // was charged anyway, and an event without a rate. Later closes must not take them for
    // late events (nor count the failed event's debit on a later invoice).
    let unbilled = Table::default()
        .str("event_id", ["e_failed", "e_unpriced"])
        .str("account_id", ["acct_pro"; 2])
        .str("product", ["captions"; 2])
        .str("action", ["chat_edit", "no_such_action"])
        .opt_str("model", [None, None])
        .credits("quantity", [Milli::from_units(1); 2])
        .str("status", ["failed", "succeeded"])
        .ts(
            "occurred_at",
            [t("2026-11-20T10:00:00Z"), t("2026-11-21T10:00:00Z")],
        )
        .finish();
    write_parquet(&root.join("usage/part-unbilled.parquet"), &unbilled).unwrap();
    write_debits(
        &root.join("debits/part-unbilled.parquet"),
        &[(
            "d_failed",
            "acct_pro",
            "e_failed",
            2,
            "2026-11-20T10:00:01Z",
        )],
    );
    let closes = tmp.path().join("closes");
    let close = |as_of: &str, name: &str| history_close(&root, &closes, as_of, name, extra);
    assert!(close("2026-12-01T00:00:00Z", "2026-12-01").status.success());
    let first_discrepancies =
        std::fs::read_to_string(closes.join("2026-12-01/discrepancies.csv")).unwrap();
    assert!(
        first_discrepancies.contains("\ncharged_failed_event,acct_pro,e_failed,d_failed,")
            && first_discrepancies.contains("\nunpriced_event,acct_pro,e_unpriced,,"),
        "{first_discrepancies}"
    );
    // The November close lists every event of its invoices' periods, the unbilled ones
    // with null credits: the next close knows it saw them.
    let billed = render(
        &closes.join("2026-12-01/billed_events.parquet"),
        &["occurred_at"],
    );
    assert!(
        billed.contains("\nINV-acct_pro-20261101T000000Z,e_failed,acct_pro,\n")
            && billed.contains("\nINV-acct_pro-20261101T000000Z,e_unpriced,acct_pro,\n")
            && billed.contains("\nINV-acct_pro-20261101T000000Z,e1,acct_pro,144.000\n"),
        "{billed}"
    );

    // After the November close, a November event shows up, and December usage; and a
    // November event of acct_free, whose plan does not renew: no close can bill it.
    write_usage(
        &root.join("usage/part-late.parquet"),
        &[
            ("e_late", "acct_pro", "chat_edit", 3, "2026-11-29T10:00:00Z"),
            ("e_dec", "acct_pro", "chat_edit", 1, "2026-12-02T10:00:00Z"),
            (
                "e_free_late",
                "acct_free",
                "chat_edit",
                1,
                "2026-11-25T10:00:00Z",
            ),
        ],
    );
    write_debits(
        &root.join("debits/part-late.parquet"),
        &[
            ("d_late", "acct_pro", "e_late", 6, "2026-12-02T09:00:00Z"),
            ("d_dec", "acct_pro", "e_dec", 2, "2026-12-02T10:00:01Z"),
        ],
    );
    let second = close("2026-12-31T08:00:00Z", "2026-12-31");
    assert!(second.status.success(), "{}", stderr(&second));
    // The late event no close bills is warned of (in no output row), named; the billed one
    // is not counted.
    let unbillable: Vec<String> = (stderr(&second).lines())
        .filter(|l| l.contains("billed by no close"))
        .map(String::from)
        .collect();
    assert_eq!(unbillable.len(), 1, "{}", stderr(&second));
    assert!(
        unbillable[0].contains(
            "1 late event (an event of a period an earlier close closed, arrived after it) is \
             billed by no close and in no output row (counted outside the window only): a late \
             event is billed on its account's next invoice, and the account has no allocation \
             period after the closed one in the data root that is not closed too (it does not \
             renew, was cancelled, or its allocations_next row was not added). The first is \
             event \\\"e_free_late\\\" of account \\\"acct_free\\\": add the account's next \
             allocation, whose close bills them, or bill and reconcile them by hand from the \
             usage and ledger files"
        ),
        "{}",
        unbillable[0]
    );
    let out = closes.join("2026-12-31");
    // November is not invoiced or renewed again; December is, with the late event on it.
    let invoices = render(&out.join("invoices.parquet"), &[]);
    assert_eq!(invoices.lines().count(), 2, "{invoices}");
    // The late event draws on December's plan as if it occurred on December 1 (not on the
    // top-up that was usable on November 29): rollover 0, plan 8, promo 0, compensation 0,
    // top_up 0.
    // Recorded: the late event's 6 and December's 2, not November's failed event's 2 again.
    assert!(invoices.contains("INV-acct_pro-20261201T000000Z,acct_pro,pro,2026-12-01T00:00:00Z,2026-12-31T08:00:00Z,USD,999,200.000,8.000,0.000,8.000,0.000,0.000,0.000,0.000,0,999,8.000,0.000\n"), "{invoices}");
    let lines = render(&out.join("invoice_lines.parquet"), &[]);
    assert_eq!(
        lines,
        "invoice_id,product,action,model,event_count,quantity,credits\n\
         INV-acct_pro-20261201T000000Z,captions,chat_edit,,1,1.000,2.000\n\
         INV-acct_pro-20261201T000000Z,prior_period:captions,chat_edit,,1,3.000,6.000\n"
    );
    let discrepancies = std::fs::read_to_string(out.join("discrepancies.csv")).unwrap();
    assert_eq!(
        discrepancies,
        "kind,account_id,event_id,entry_ids,occurred_at,product,action,model,expected_credits,recorded_credits,delta_credits\n\
         late_event,acct_pro,e_late,d_late,2026-11-29T10:00:00Z,captions,chat_edit,,6.000,6.000,0.000\n"
    );
    // explain, given the close's --history and --out, tells the same story.
    let event = explain_event_of_close(&root, &closes, &out, "2026-12-31T08:00:00Z", "e_late");
    assert_eq!(event["placement"], "in_window", "{event}");
    assert_eq!(event["period"]["period_start"], "2026-12-01T00:00:00Z");
    assert!(event["late_from"].is_string(), "{event}");
    assert_eq!(event["verdict"], "matched");
    assert_eq!(event["discrepancies"][0]["kind"], "late_event");
    let renewals = render(&out.join("renewals.parquet"), &[]);
    assert_eq!(
        renewals.lines().count(),
        2,
        "only December renews: {renewals}"
    );
    // A November event of acct_pro arrives after December's close too: December, its
    // only later period, is closed itself, so no close bills it either; with acct_free's,
    // two such events, the least account's named.
    write_usage(
        &root.join("usage/part-later.parquet"),
        &[(
            "e_pro_later",
            "acct_pro",
            "chat_edit",
            1,
            "2026-11-28T10:00:00Z",
        )],
    );
    // A third close finds both periods closed and the late event billed: nothing new.
    let third = close("2027-01-01T00:00:00Z", "2027-01-01");
    assert!(third.status.success());
    let warned = stderr(&third);
    assert!(
        warned.contains(
            "2 late events (events of periods earlier closes closed, arrived after them) are \
             billed by no close"
        ) && warned.contains("The first is event \\\"e_free_late\\\" of account"),
        "{warned}"
    );
    let third_out = closes.join("2027-01-01");
    assert_eq!(
        read_parquet(&third_out.join("invoices.parquet")).num_rows(),
        0
    );
    assert_eq!(
        std::fs::read_to_string(third_out.join("discrepancies.csv"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    // Earlier closes are inputs: the same third close again is a no-op, but re-running the
    // second one now that a later close exists is refused (its coverage would change).
    let again = close("2027-01-01T00:00:00Z", "2027-01-01");
    assert!(String::from_utf8_lossy(&again.stdout).contains("already closed"));
    let redo = close("2026-12-31T08:00:00Z", "2026-12-31");
    assert_eq!(redo.status.code(), Some(3));
    assert!(
        stderr(&redo).contains("history/2027-01-01/manifest.json is new, usage/part-later.parquet is new); a later close exists and was built on this one: check this month with `tally explain`, and rerun with --force only to redo the later closes too\n"),
        "{}",
        stderr(&redo)
    );
}

/// An event an earlier close saw belongs to that close. A copy of it that arrives later,
/// wins the contract's dedup (it has an `ingested_at`, the copy the November close billed
/// had none: null sorts last) and names an instant in a period the next close covers is
/// not billed again there: the event stays outside with its entry, in one group and split;
/// also when the copy names another account (e2, billed to acct_free, moved to acct_pro:
/// its copies cross account partitions and are routed together).
#[test]
fn an_event_an_earlier_close_saw_is_not_billed_again_when_a_copy_moves_it() {
    for extra in [&[][..], &["--groups", "2"][..], &["--groups", "3"][..]] {
        let tmp = tempfile::tempdir().unwrap();
        let root = data_with_december(tmp.path());
        let closes = tmp.path().join("closes");
        let close = |as_of: &str, name: &str| close_into(&root, &closes, as_of, name, extra);
        let first = close("2026-12-01T00:00:00Z", "2026-12-01");
        let billed = render(&first.join("billed_events.parquet"), &["occurred_at"]);
        assert!(
            billed.contains("\nINV-acct_pro-20261101T000000Z,e1,acct_pro,144.000\n")
                && billed.contains("\nINV-acct_free-20261101T000000Z,e2,acct_free,"),
            "{billed}"
        );

        // After the November close: a copy of e1 naming December 2 (one AI twin, not
        // three), a copy of e2 naming acct_pro on December 2, and a December event with
        // its debit.
        let copy = Table::default()
            .str("event_id", ["e1", "e_dec", "e2"])
            .str("account_id", ["acct_pro"; 3])
            .str("product", ["captions"; 3])
            .str("action", ["ai_twin_creation", "chat_edit", "chat_edit"])
            .opt_str("model", [None; 3])
            .credits("quantity", [Milli::from_units(1); 3])
            .str("status", ["succeeded"; 3])
            .ts(
                "occurred_at",
                [
                    t("2026-12-02T09:00:00Z"),
                    t("2026-12-02T10:00:00Z"),
                    t("2026-12-02T11:00:00Z"),
                ],
            )
            .opt_ts(
                "ingested_at",
                [
                    Some(t("2026-12-02T09:00:05Z")),
                    Some(t("2026-12-02T10:00:05Z")),
                    Some(t("2026-12-02T11:00:05Z")),
                ],
            )
            .finish();
        write_parquet(&root.join("usage/part-dec.parquet"), &copy).unwrap();
        write_debits(
            &root.join("debits/part-dec.parquet"),
            &[("d_dec", "acct_pro", "e_dec", 2, "2026-12-02T10:00:01Z")],
        );
        let second = close("2026-12-31T08:00:00Z", "2026-12-31");
        let lines = render(&second.join("invoice_lines.parquet"), &[]);
        assert_eq!(
            lines,
            "invoice_id,product,action,model,event_count,quantity,credits\n\
             INV-acct_pro-20261201T000000Z,captions,chat_edit,,1,1.000,2.000\n",
            "{extra:?}"
        );
        let billed = render(&second.join("billed_events.parquet"), &["occurred_at"]);
        assert_eq!(
            billed,
            "invoice_id,event_id,account_id,credits\n\
             INV-acct_pro-20261201T000000Z,e_dec,acct_pro,2.000\n",
            "{extra:?}"
        );
        let discrepancies = std::fs::read_to_string(second.join("discrepancies.csv")).unwrap();
        assert_eq!(
            discrepancies.lines().count(),
            1,
            "{extra:?}: {discrepancies}"
        );
        // e1 and e2 outside, their November copies rejected as conflicting duplicates;
        // their entries d1 and d2 outside.
        let summary = json(&second.join("summary.json"));
        assert_eq!(summary["conservation"]["holds"], true, "{summary}");
        assert_eq!(
            (
                &summary["usage"]["rows_read"],
                &summary["usage"]["events_in_window"]
            ),
            (&serde_json::json!(5), &serde_json::json!(1)),
            "{summary}"
        );
        assert_eq!(summary["usage"]["rejected"], 2, "{summary}");
        assert_eq!(summary["usage"]["outside_window"], 2, "{summary}");
        assert_eq!(summary["ledger"]["outside_window"], 2, "{summary}");
        // explain, given the close's --history and --out, says why.
        let event = explain_event_of_close(&root, &closes, &second, "2026-12-31T08:00:00Z", "e1");
        assert_eq!(event["placement"], "outside_window", "{event}");
        assert_eq!(
            event["placement_detail"],
            "an earlier close (--history) saw this event (its billed_events.parquet lists it): \
             it belongs to that close and is not billed again in its period \
             [2026-12-01T00:00:00Z, 2026-12-31T08:00:00Z)",
            "{event}"
        );
    }
}

/// The other side of the rule above: a copy that moves an event into a covered period is
/// billed there as an ordinary event when no earlier close saw the event (its other copy
/// arrived in a closed period after that period's close), and when the only copy left in
/// a closed period is a rejected row (the rule needs a valid one); one group and split
/// runs agree.
#[test]
fn a_moved_copy_is_billed_when_no_earlier_close_saw_its_event_or_no_valid_copy_is_closed() {
    for extra in [&[][..], &["--groups", "2"][..]] {
        let tmp = tempfile::tempdir().unwrap();
        let root = data_with_december(tmp.path());
        let closes = tmp.path().join("closes");
        let close = |as_of: &str, name: &str| close_into(&root, &closes, as_of, name, extra);
        close("2026-12-01T00:00:00Z", "2026-12-01");
        // After the November close: e1's copy the close saw is gone from the export, and
        // only a rejected copy of it (an unknown status) is left in November; e_new, which
        // no close saw, has a November copy and a December copy; the December copies win
        // the dedup (they have an ingested_at, the November ones none).
        std::fs::remove_file(root.join("usage/part-0.parquet")).unwrap();
        let copies = Table::default()
            .str("event_id", ["e1", "e_new", "e1", "e_new"])
            .str("account_id", ["acct_pro"; 4])
            .str("product", ["captions"; 4])
            .str(
                "action",
                [
                    "ai_twin_creation",
                    "chat_edit",
                    "ai_twin_creation",
                    "chat_edit",
                ],
            )
            .opt_str("model", [None; 4])
            .credits("quantity", [Milli::from_units(1); 4])
            .str("status", ["bogus", "succeeded", "succeeded", "succeeded"])
            .ts(
                "occurred_at",
                [
                    t("2026-11-05T10:00:00Z"),
                    t("2026-11-20T10:00:00Z"),
                    t("2026-12-02T09:00:00Z"),
                    t("2026-12-03T09:00:00Z"),
                ],
            )
            .opt_ts(
                "ingested_at",
                [
                    None,
                    None,
                    Some(t("2026-12-02T09:00:05Z")),
                    Some(t("2026-12-03T09:00:05Z")),
                ],
            )
            .finish();
        write_parquet(&root.join("usage/part-dec.parquet"), &copies).unwrap();
        let second = close("2026-12-31T08:00:00Z", "2026-12-31");
        let billed = render(&second.join("billed_events.parquet"), &["occurred_at"]);
        assert_eq!(
            billed,
            "invoice_id,event_id,account_id,credits\n\
             INV-acct_pro-20261201T000000Z,e1,acct_pro,48.000\n\
             INV-acct_pro-20261201T000000Z,e_new,acct_pro,2.000\n",
            "{extra:?}"
        );
    }
}

/// What a close reads from its history folder: not a backup copy of this very close kept
/// beside it before a `--force` rerun, nor a folder named `.*` (a staging folder a killed
/// run left there) or `_*`, even when they hold an earlier close (each made the forced
/// close invoice nothing). A close whose output is not directly inside its history folder
/// is refused: the next close would not see it and would close its periods again.
#[test]
fn history_skips_copies_of_this_close_and_hidden_folders_and_refuses_an_output_outside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = first_data(tmp.path());
    let closes = tmp.path().join("closes");
    // The close at 2026-12-01 into `out` with `history`.
    let close_command = |out: &Path, history: &Path, extra: &[&str]| {
        let mut args = vec![
            "close",
            "--data",
            root.to_str().unwrap(),
            "--as-of",
            "2026-12-01T00:00:00Z",
            "--out",
            out.to_str().unwrap(),
            "--history",
            history.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tally_command(&args)
    };
    let close_into = |out: &Path, history: &Path, extra: &[&str]| {
        close_command(out, history, extra).output().unwrap()
    };
    let close = |extra: &[&str]| close_into(&closes.join("2026-12-01"), &closes, extra);
    // The first close: `closes/` does not exist yet, and the output goes inside it.
    let first = close(&[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let invoices = read_parquet(&closes.join("2026-12-01/invoices.parquet")).num_rows();
    assert!(invoices > 0);
    copy_dir(&closes.join("2026-12-01"), &closes.join("2026-12-01.bak"));
    // Hidden copies with an earlier as-of: only their names keep them out.
    for hidden in [".2026-12-01.tally-staging-99999", "_2026-12-01.partial"] {
        let copy = closes.join(hidden);
        copy_dir(&closes.join("2026-12-01"), &copy);
        let manifest = std::fs::read_to_string(copy.join("manifest.json")).unwrap();
        let earlier = manifest.replace(
            "\"as_of\": \"2026-12-01T00:00:00Z\"",
            "\"as_of\": \"2026-11-30T00:00:00Z\"",
        );
        assert_ne!(manifest, earlier);
        std::fs::write(copy.join("manifest.json"), earlier).unwrap();
    }
    write_usage(
        &root.join("usage/part-extra.parquet"),
        &[(
            "e_extra",
            "acct_pro",
            "chat_edit",
            1,
            "2026-11-20T10:00:00Z",
        )],
    );
    assert_eq!(close(&[]).status.code(), Some(3), "changed inputs");
    let forced = close(&["--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_eq!(
        read_parquet(&closes.join("2026-12-01/invoices.parquet")).num_rows(),
        invoices,
        "the forced close invoices the same periods again"
    );
    let manifest = std::fs::read_to_string(closes.join("2026-12-01/manifest.json")).unwrap();
    assert!(
        !manifest.contains(".bak") && !manifest.contains("staging") && !manifest.contains("_2026"),
        "{manifest}"
    );
    // A close at the same as-of into another folder of the history (a typo, a `-rerun`
    // suffix) would invoice the month a second time: refused, nothing written; `--force`
    // does not change that (it replaces the output folder, not another close).
    let second = closes.join("2026-12-01-rerun");
    for extra in [&[][..], &["--force"][..]] {
        let refused = close_into(&second, &closes, extra);
        assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
        assert_eq!(
            stderr(&refused),
            format!(
                "tally: refused: {} would be a second close at this as-of \
                 (2026-12-01T00:00:00Z): {} holds one, whose account-periods it would invoice \
                 again; rerun into {} (a no-op; --force to redo it), or, to close again on \
                 purpose, move it out of {} or give it a name starting with `_`\n",
                second.display(),
                closes.join("2026-12-01").display(),
                closes.join("2026-12-01").display(),
                closes.display()
            )
        );
        assert!(!second.exists());
    }
    // The folder named first holds it: `2026-12-01.bak` is a copy, the same close.
    let original = closes.join("2026-12-01");
    let moved = tmp.path().join("2026-12-01.moved");
    std::fs::rename(&original, &moved).unwrap();
    let refused = close_into(&second, &closes, &[]);
    assert_eq!(refused.status.code(), Some(3));
    assert!(
        stderr(&refused).contains(&format!(
            "{} holds one",
            closes.join("2026-12-01.bak").display()
        )),
        "{}",
        stderr(&refused)
    );
    // Under a `_` name, the copy is not read: the close runs (on purpose, as the message says).
    std::fs::rename(
        closes.join("2026-12-01.bak"),
        closes.join("_2026-12-01.bak"),
    )
    .unwrap();
    let again = close_into(&second, &closes, &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    std::fs::remove_dir_all(&second).unwrap();
    std::fs::rename(
        closes.join("_2026-12-01.bak"),
        closes.join("2026-12-01.bak"),
    )
    .unwrap();
    std::fs::rename(&moved, &original).unwrap();

    let elsewhere = tmp.path().join("elsewhere/2026-12-01");
    let missing = tmp.path().join("no-such-closes");
    let out = close_into(&elsewhere, &missing, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "tally: {}: the close's output folder {} is not directly inside this history folder, so the next close would not read it and would close its periods again: write closes to {}/<name>\n",
            missing.display(),
            elsewhere.display(),
            missing.display()
        )
    );
    assert!(!elsewhere.exists() && !missing.exists());
    // An earlier close given as the history folder (its parent was meant) is refused, and
    // nothing is written inside it.
    let earlier = closes.join("2026-12-01");
    let before = folder_bytes(&earlier);
    let inside = close_into(&earlier.join("next"), &earlier, &[]);
    assert_eq!(inside.status.code(), Some(2));
    assert_eq!(
        stderr(&inside),
        format!(
            "tally: {}: this history folder is itself a tally output folder (it holds \
             manifest.json); --history names the folder holding the earlier closes, such as \
             {}\n",
            earlier.display(),
            closes.display()
        )
    );
    assert_eq!(folder_bytes(&earlier), before);
    // Given as `..` from a folder inside it, the folder to name instead is still the one
    // above it.
    let inner = earlier.join("report");
    let from_inside = close_command(Path::new("../next"), Path::new(".."), &[])
        .current_dir(&inner)
        .output()
        .unwrap();
    assert_eq!(from_inside.status.code(), Some(2));
    assert_eq!(
        stderr(&from_inside),
        format!(
            "tally: ..: this history folder is itself a tally output folder (it holds \
             manifest.json); --history names the folder holding the earlier closes, such as \
             {}\n",
            closes.display()
        )
    );
    assert_eq!(folder_bytes(&earlier), before);
    // `..` is folded: an output that is inside the history folder after all is accepted.
    let roundabout = closes.join("x/../2026-12-01");
    let again = close_into(&roundabout, &closes, &[]);
    assert!(again.status.success(), "{}", stderr(&again));
}

/// A close swapped out by the two-rename publish and never replaced (a `--force` close
/// killed between its renames on a file system without the atomic exchange) is only in
/// the hidden `.NAME.tally-staging-PID-old` folder, which history skips: a later close
/// under that history is refused (exit 3), saying how to put it back, instead of billing
/// its periods again; `verify` of the missing folder says where it is. A run writing the
/// stranded close's own folder puts it back under its lock before its checks, with a
/// warning: a reconcile given it as `--out` is then refused over the close (exit 3; it had
/// published over the missing folder, and the run after it removed the `-old` folder, the
/// only copy of the close and its invoices), and the close's rerun is a no-op; the next
/// close goes on. A staging folder a killed run left beside a close goes on its no-op
/// rerun.
#[test]
fn a_close_stranded_by_a_stopped_publish_is_refused_not_billed_again() {
    let tmp = tempfile::tempdir().unwrap();
    let root = data_with_december(tmp.path());
    let closes = tmp.path().join("closes");
    let november = close_into(&root, &closes, "2026-12-01T00:00:00Z", "2026-12-01", &[]);

    // The no-op rerun sweeps a dead run's staging folder (no process has PID 4294967).
    let leftover = closes.join(".2026-12-01.tally-staging-4294967");
    std::fs::create_dir(&leftover).unwrap();
    std::fs::write(leftover.join("invoices.parquet"), b"half").unwrap();
    let rerun = history_close(&root, &closes, "2026-12-01T00:00:00Z", "2026-12-01", &[]);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    assert!(String::from_utf8_lossy(&rerun.stdout).contains("nothing to do"));
    assert!(!leftover.exists(), "{}", stderr(&rerun));

    let old = closes.join(".2026-12-01.tally-staging-4294967-old");
    std::fs::rename(&november, &old).unwrap();
    // A close beside it without --history, which bills its periods again, warns of it.
    let beside = closes.join("2027-01-01");
    let unread = run_command("close", &root, "2027-01-01T00:00:00Z", &beside)
        .output()
        .unwrap();
    assert!(
        stderr(&unread).contains(&format!("is only in {}", old.display())),
        "{}",
        stderr(&unread)
    );
    std::fs::remove_dir_all(&beside).unwrap();
    let december = history_close(&root, &closes, "2027-01-01T00:00:00Z", "2027-01-01", &[]);
    assert_eq!(december.status.code(), Some(3), "{}", stderr(&december));
    assert_eq!(
        stderr(&december),
        format!(
            "tally: refused: {old}: the close that belongs at {target} is only there: a \
             publish swapped it out and was stopped before its new output took the place \
             (killed between its two renames); closes under this history would bill its \
             periods again. Rerun that close (its --out {target} and --as-of \
             2026-12-01T00:00:00Z, with --history {closes} and its --data), which puts it back \
             first, or rename it back by hand (mv {old} {target}, whatever is at {target} \
             removed first), then rerun\n",
            old = old.display(),
            target = november.display(),
            closes = closes.display()
        )
    );
    assert!(!closes.join("2027-01-01").exists());
    let verify = tally(&["verify", november.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(2), "{}", stderr(&verify));
    assert!(
        stderr(&verify).contains(&format!(
            "does not exist; its previous output is in {}, swapped out by a publish that was \
             stopped before the new output took its place: rename it back (mv {} {})",
            old.display(),
            old.display(),
            november.display()
        )),
        "{}",
        stderr(&verify)
    );
    // An empty folder made in its place since (a script's `mkdir -p`) is no close: the
    // next close is still refused, and verify says where the close is.
    std::fs::create_dir(&november).unwrap();
    let december = history_close(&root, &closes, "2027-01-01T00:00:00Z", "2027-01-01", &[]);
    assert_eq!(december.status.code(), Some(3), "{}", stderr(&december));
    assert!(
        stderr(&december).contains(&format!("the close that belongs at {}", november.display())),
        "{}",
        stderr(&december)
    );
    let verify = tally(&["verify", november.to_str().unwrap()]);
    assert!(
        stderr(&verify).contains(&format!("its previous output is in {}", old.display())),
        "{}",
        stderr(&verify)
    );
    // Two stranded copies: no one of them is named to put back (the next close would bill
    // the other's periods again).
    let other = closes.join(".2026-12-01.tally-staging-4294968-old");
    std::fs::create_dir(&other).unwrap();
    let december = history_close(&root, &closes, "2027-01-01T00:00:00Z", "2027-01-01", &[]);
    assert_eq!(december.status.code(), Some(3), "{}", stderr(&december));
    assert!(
        stderr(&december).contains("2 previous outputs of it are beside it")
            && !stderr(&december).contains("mv "),
        "{}",
        stderr(&december)
    );
    std::fs::remove_dir(&other).unwrap();
    // A file there: a run writing it is refused, saying where the close is, which stays.
    std::fs::remove_dir(&november).unwrap();
    std::fs::write(&november, b"x").unwrap();
    let reconcile_into_november = || {
        tally(&[
            "reconcile",
            "--data",
            root.to_str().unwrap(),
            "--as-of",
            "2026-12-01T00:00:00Z",
            "--out",
            november.to_str().unwrap(),
        ])
    };
    let over_a_file = reconcile_into_november();
    assert_eq!(
        over_a_file.status.code(),
        Some(3),
        "{}",
        stderr(&over_a_file)
    );
    assert!(
        stderr(&over_a_file).contains(&format!(
            "the output that belongs there is in {}",
            old.display()
        )),
        "{}",
        stderr(&over_a_file)
    );
    assert!(old.is_dir());
    std::fs::remove_file(&november).unwrap();
    std::fs::create_dir(&november).unwrap();
    // A reconcile into the close's folder (an empty folder again) puts the close back, then
    // is refused over it.
    let reconcile = reconcile_into_november();
    assert_eq!(reconcile.status.code(), Some(3), "{}", stderr(&reconcile));
    assert!(
        stderr(&reconcile).contains("put back the previous output"),
        "{}",
        stderr(&reconcile)
    );
    assert!(!old.exists());
    let manifest = std::fs::read_to_string(november.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"command\": \"close\""), "{manifest}");
    // Stranded again: its own rerun puts it back too, and is a no-op.
    std::fs::rename(&november, &old).unwrap();
    let again = history_close(&root, &closes, "2026-12-01T00:00:00Z", "2026-12-01", &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("put back the previous output"),
        "{}",
        stderr(&again)
    );
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));
    assert!(!old.exists());
    let next = close_into(&root, &closes, "2027-01-01T00:00:00Z", "2027-01-01", &[]);
    // December's invoice only: November's periods are the earlier close's.
    let invoices = read_parquet(&next.join("invoices.parquet"));
    assert_eq!(invoices.num_rows(), 1);
}

/// Grant priorities at the limit of 32 bits carry into `grants_next` unchanged (it writes
/// the input schema's INT32); one past the limit is `bad_value` (it could not be carried).
#[test]
fn grant_priorities_carry_at_the_32_bit_limit_and_one_past_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let root = first_data(tmp.path());
    let max = i64::from(i32::MAX);
    let min = i64::from(i32::MIN);
    // Effective after the period: copied unchanged, not consumed.
    let grants = Table::default()
        .str("grant_id", ["g-max", "g-min", "g-past-max", "g-past-min"])
        .str("account_id", ["acct_pro"; 4])
        .str("kind", ["promo"; 4])
        .credits("credits", [Milli::from_units(10); 4])
        .ts("effective_at", [t("2026-12-05T00:00:00Z"); 4])
        .opt_ts("expires_at", [None; 4])
        .i64("priority", [max, min, max + 1, min - 1])
        .finish();
    write_parquet(&root.join("grants/part-0.parquet"), &grants).unwrap();
    let out = tmp.path().join("close");
    run_command_ok("close", &root, "2026-12-01T00:00:00Z", &out);
    let next = render(&out.join("grants_next.parquet"), &[]);
    assert!(
        next.contains("\ng-max,acct_pro,promo,10.000,2026-12-05T00:00:00Z,,2147483647\n"),
        "{next}"
    );
    assert!(
        next.contains("\ng-min,acct_pro,promo,10.000,2026-12-05T00:00:00Z,,-2147483648\n"),
        "{next}"
    );
    assert!(!next.contains("g-past"), "{next}");
    let rejects = render(&out.join("rejects.parquet"), &[]);
    assert!(
        rejects.contains(
            "\ngrants,grants/part-0.parquet,2,bad_value,priority: 2147483648 does not fit a 32-bit integer\n\
             grants,grants/part-0.parquet,3,bad_value,priority: -2147483649 does not fit a 32-bit integer\n"
        ),
        "{rejects}"
    );
    // An unsigned 64-bit priority past the signed range: said so, not "a 64-bit integer".
    let unsigned = Table::default()
        .str("grant_id", ["g-u64"])
        .str("account_id", ["acct_pro"])
        .str("kind", ["promo"])
        .credits("credits", [Milli::from_units(10)])
        .ts("effective_at", [t("2026-12-05T00:00:00Z")])
        .opt_ts("expires_at", [None])
        .finish();
    let priority = std::sync::Arc::new(arrow::array::UInt64Array::from(vec![u64::MAX]));
    let mut columns = unsigned.columns().to_vec();
    columns.push(priority);
    let mut fields: Vec<arrow::datatypes::Field> = (unsigned.schema().fields().iter())
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(arrow::datatypes::Field::new(
        "priority",
        arrow::datatypes::DataType::UInt64,
        true,
    ));
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
    let batch = arrow::record_batch::RecordBatch::try_new(schema, columns).unwrap();
    write_parquet(&root.join("grants/part-1.parquet"), &batch).unwrap();
    let out = tmp.path().join("close-u64");
    run_command_ok("close", &root, "2026-12-01T00:00:00Z", &out);
    let rejects = render(&out.join("rejects.parquet"), &[]);
    assert!(
        rejects.contains(
            "\ngrants,grants/part-1.parquet,0,bad_value,priority: 18446744073709551615 does not \
             fit a signed 64-bit integer\n"
        ),
        "{rejects}"
    );
}

/// An earlier close's `billed_events.parquet` or `invoices.parquet` written again by
/// another tool, with the rows the manifest lists but a column of another type (an id as a
/// number, instants in milliseconds), is exit 2 naming the file and the column: it was a
/// panic (exit 4) when read as tally's strings or microseconds.
#[test]
fn an_earlier_close_with_a_column_of_another_type_is_refused_not_a_panic() {
    use arrow::array::Array;
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let root = data_with_december(tmp.path());
    let closes = tmp.path().join("closes");
    let first = close_into(&root, &closes, "2026-12-01T00:00:00Z", "2026-12-01", &[]);
    let retyped = |file: &str, column: &str, array: arrow::array::ArrayRef| {
        let path = first.join(file);
        let batch = read_parquet(&path);
        let schema = batch.schema();
        let index = schema.index_of(column).unwrap();
        let mut fields: Vec<arrow::datatypes::Field> =
            schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields[index] = arrow::datatypes::Field::new(column, array.data_type().clone(), true);
        let mut columns = batch.columns().to_vec();
        columns[index] = array;
        let batch = arrow::record_batch::RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(fields)),
            columns,
        )
        .unwrap();
        tally::write::write_parquet(&path, &batch).unwrap();
        batch.num_rows()
    };
    let rows = read_parquet(&first.join("billed_events.parquet")).num_rows();
    let ids = arrow::array::Int64Array::from_iter_values(0..rows as i64);
    assert_eq!(
        retyped("billed_events.parquet", "event_id", Arc::new(ids)),
        rows
    );
    // The next close refused, naming the earlier close's `file` and `why`.
    let refused_as_not_written = |file: &Path, why: &str| {
        let second = history_close(&root, &closes, "2026-12-31T08:00:00Z", "2026-12-31", &[]);
        assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
        assert_eq!(
            stderr(&second),
            format!(
                "tally: {}: {why}: not an earlier close output as tally wrote it (was it \
                 written again by another tool?)\n",
                file.display()
            )
        );
    };
    refused_as_not_written(
        &first.join("billed_events.parquet"),
        "column `event_id` is Int64, not what tally writes there",
    );

    // The invoices, read whole, are checked by their sha256: the manifest made to agree.
    std::fs::remove_dir_all(&first).unwrap();
    let first = close_into(&root, &closes, "2026-12-01T00:00:00Z", "2026-12-01", &[]);
    let invoices = read_parquet(&first.join("invoices.parquet"));
    let starts = invoices.column_by_name("period_start").unwrap();
    let micros = starts.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    let millis = arrow::array::TimestampMillisecondArray::from_iter(
        (0..micros.len()).map(|i| micros.is_valid(i).then(|| micros.value(i) / 1000)),
    )
    .with_timezone("UTC");
    retyped("invoices.parquet", "period_start", Arc::new(millis));
    let relist_invoices = |first: &Path| {
        let path = first.join("manifest.json");
        let mut manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let sha256 =
            tally::write::sha256_hex(&std::fs::read(first.join("invoices.parquet")).unwrap())
                .to_string();
        for entry in manifest["outputs"].as_array_mut().unwrap() {
            if entry["path"] == "invoices.parquet" {
                entry["sha256"] = serde_json::Value::String(sha256.clone());
            }
        }
        std::fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    };
    relist_invoices(&first);
    refused_as_not_written(
        &first.join("invoices.parquet"),
        "column `period_start` is Timestamp(ms, \"UTC\"), not what tally writes there",
    );

    // Nulls where tally never writes one: read as "", the close's periods would not count
    // as closed and were invoiced again (exit 0).
    std::fs::remove_dir_all(&first).unwrap();
    let first = close_into(&root, &closes, "2026-12-01T00:00:00Z", "2026-12-01", &[]);
    let rows = read_parquet(&first.join("invoices.parquet")).num_rows();
    let nulls = arrow::array::StringArray::from(vec![None::<&str>; rows]);
    retyped("invoices.parquet", "account_id", Arc::new(nulls));
    relist_invoices(&first);
    refused_as_not_written(
        &first.join("invoices.parquet"),
        &format!("column `account_id` holds {rows} null(s), which tally never writes there"),
    );
}

/// `path`, a file, replaced by a FIFO (a read of it waits for a writer forever; see
/// [`Fifo`]).
fn fifo_in_place_of(path: &Path) -> Fifo {
    std::fs::remove_file(path).unwrap();
    Fifo::at(path)
}

/// The Parquet file at `path` rewritten with its first column chunk's compressed size
/// negative in the footer (the Parquet library panics on it), its pages as they were.
fn with_a_negative_chunk_size(path: &Path) {
    rewrite_footer(path, |rg| {
        let mut columns = rg.columns().to_vec();
        columns[0] = columns[0]
            .clone()
            .into_builder()
            .set_total_compressed_size(-1)
            .build()
            .unwrap();
        rg.clone()
            .into_builder()
            .set_column_metadata(columns)
            .build()
            .unwrap()
    });
}

/// An earlier close that cannot be read as tally wrote it is exit 2 naming what to
/// restore, never skipped (its periods were billed again, exit 0, when its manifest.json
/// was a FIFO, a folder or a broken link), never a hang (a FIFO in place of its invoices
/// or billed events, or of the close's own summary.json on a no-op rerun, blocked the
/// read forever while holding the history's lock) and never a panic (a damaged footer in
/// its billed events, exit 4); a close under a folder name that is not UTF-8 (two such
/// names could be one in the manifest) is refused, and so is a --history naming a file.
#[test]
fn an_earlier_close_that_cannot_be_read_as_written_is_exit_2_never_skipped_nor_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let root = data_with_december(tmp.path());
    let closes = tmp.path().join("closes");
    let (first_as_of, second_as_of) = ("2026-12-01T00:00:00Z", "2026-12-31T08:00:00Z");
    let fresh_first = || {
        let _ = std::fs::remove_dir_all(closes.join("2026-12-01"));
        close_into(&root, &closes, first_as_of, "2026-12-01", &[])
    };
    let second_refused = |expected: String| {
        let second = history_close(&root, &closes, second_as_of, "2026-12-31", &[]);
        assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
        assert_eq!(stderr(&second), expected);
        assert!(!closes.join("2026-12-31").exists(), "nothing is published");
    };
    let not_a_manifest = |manifest: &Path| {
        format!(
            "tally: {}: is not a regular file (a folder, a pipe, a socket, a device or a \
             broken link): if its folder is an earlier close, its manifest is one; restore \
             the close from a backup, or move the folder out of the history folder\n",
            manifest.display()
        )
    };
    let first = fresh_first();
    let manifest = first.join("manifest.json");
    let fifo = fifo_in_place_of(&manifest);
    second_refused(not_a_manifest(&manifest));
    std::fs::remove_file(&manifest).unwrap();
    drop(fifo);
    std::fs::create_dir(&manifest).unwrap();
    second_refused(not_a_manifest(&manifest));
    std::fs::remove_dir(&manifest).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("gone.json"), &manifest).unwrap();
    second_refused(not_a_manifest(&manifest));

    let not_regular = "not a regular file (a folder, a pipe, a socket or a device)";
    for file in ["invoices.parquet", "billed_events.parquet"] {
        let first = fresh_first();
        let path = first.join(file);
        let fifo = fifo_in_place_of(&path);
        second_refused(format!("tally: {}: {not_regular}\n", path.display()));
        drop(fifo);
    }

    let first = fresh_first();
    let billed = first.join("billed_events.parquet");
    with_a_negative_chunk_size(&billed);
    let second = history_close(&root, &closes, second_as_of, "2026-12-31", &[]);
    assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
    let said = stderr(&second);
    assert!(
        said.starts_with(&format!(
            "tally: {}: corrupt Parquet file: ",
            billed.display()
        )) && said.ends_with("; restore the close's folder from a backup\n"),
        "{said}"
    );

    // The close rerun over its own folder, a no-op, reads its summary.json.
    let first = fresh_first();
    let summary = first.join("summary.json");
    let fifo = fifo_in_place_of(&summary);
    let rerun = history_close(&root, &closes, first_as_of, "2026-12-01", &[]);
    assert_eq!(rerun.status.code(), Some(2), "{}", stderr(&rerun));
    assert_eq!(
        stderr(&rerun),
        format!("tally: {}: {not_regular}\n", summary.display())
    );
    drop(fifo);

    // --history naming a file: exit 2 for the close (it failed making its lock inside it,
    // exit 4) and for explain (it explained a first close).
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let not_a_folder = format!(
        "tally: {}: is not a folder: --history names the folder holding the earlier closes \
         (it may not exist yet before the first close)\n",
        file.display()
    );
    let close = history_close(&root, &file, second_as_of, "new", &[]);
    assert_eq!(close.status.code(), Some(2), "{}", stderr(&close));
    assert_eq!(stderr(&close), not_a_folder);
    let explain = tally(&[
        "explain",
        "--data",
        root.to_str().unwrap(),
        "--as-of",
        second_as_of,
        "--close",
        "--history",
        file.to_str().unwrap(),
        "--out",
        file.join("new").to_str().unwrap(),
        "--account",
        "acct_pro",
    ]);
    assert_eq!(explain.status.code(), Some(2), "{}", stderr(&explain));
    assert_eq!(stderr(&explain), not_a_folder);

    // A close under a name that is not UTF-8 (two such names could be one in a manifest).
    let first = fresh_first();
    use std::os::unix::ffi::OsStrExt;
    let odd = closes.join(std::ffi::OsStr::from_bytes(b"copy-\xff"));
    std::fs::rename(&first, &odd).unwrap();
    second_refused(format!(
        "tally: {}: the name is not UTF-8: rename it (a close's manifest names the earlier \
         closes it read by their folder as text)\n",
        odd.display()
    ));
}

/// Accounts whose ids are near the input limit on strings (4096 bytes) renew into
/// grants_next with rollover grant ids within it (one past 4070 bytes, the account id is
/// written as its sha256), so that the next period, reading grants_next as its grants,
/// takes every rollover: no grant rejected, each account's 100 credits rolled over.
#[test]
fn rollovers_of_the_longest_account_ids_are_read_back_next_period() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(
        repo().join("fixtures/pricebook.toml"),
        root.join("pricebook.toml"),
    )
    .unwrap();
    let accounts: Vec<String> = [4070, 4071, 4096]
        .iter()
        .map(|&len| format!("{len}-{}", "a".repeat(len - 5)))
        .collect();
    let names: Vec<&str> = accounts.iter().map(String::as_str).collect();
    write_november_allocations(&root, &names, "pro", Milli::from_units(200));
    write_usage(&root.join("usage/part-0.parquet"), &[]);
    write_debits(&root.join("debits/part-0.parquet"), &[]);
    let november = tmp.path().join("nov");
    run_command_ok("close", &root, "2026-12-01T00:00:00Z", &november);
    let grants = read_parquet(&november.join("grants_next.parquet"));
    let ids = grants
        .column_by_name("grant_id")
        .unwrap()
        .as_string::<i32>();
    let lengths: Vec<usize> = ids.iter().map(|id| id.unwrap().len()).collect();
    assert_eq!(lengths.len(), 3);
    assert!(lengths.contains(&4096), "{lengths:?}");
    assert!(lengths.iter().all(|&len| len <= 4096), "{lengths:?}");

    // One AI twin each in December (48 credits), drawn from the rollover first (priority 0).
    let next = tmp.path().join("next");
    let events: Vec<String> = (0..3).map(|i| format!("dec-{i}")).collect();
    let usage: Vec<_> = (names.iter().zip(&events))
        .map(|(account, event)| {
            let row = (
                event.as_str(),
                *account,
                "ai_twin_creation",
                1,
                "2026-12-05T10:00:00Z",
            );
            row
        })
        .collect();
    next_root(&root, &november, &next, &usage, &[]);
    let december = tmp.path().join("dec");
    let out = run_command_ok("close", &next, "2027-01-01T00:00:00Z", &december);
    assert!(!stderr(&out).contains("bad_value"), "{}", stderr(&out));
    assert_eq!(table_rows(&december.join("rejects.parquet")), 0);
    let invoices = read_parquet(&december.join("invoices.parquet"));
    let rolled = render(&december.join("invoices.parquet"), &[]);
    assert_eq!(invoices.num_rows(), 3, "{rolled}");
    let from_rollover = invoices
        .column_by_name("credits_from_rollover")
        .unwrap()
        .as_primitive::<arrow::datatypes::Decimal128Type>();
    assert!(
        from_rollover.iter().all(|credits| credits == Some(48_000)),
        "{rolled}"
    );
}

/// A close's place in its history is judged where the kernel takes the paths, as its
/// writes and the next close's reads go: `link/../closes/x`, with `link` pointing into
/// another folder, publishes beside the link's target, outside `closes/`, and is refused
/// (folded as text it passed, and the next close into `closes/` invoiced the month again);
/// a history given as `link/../closes2` that is the output's folder is accepted, and its
/// rerun is a no-op.
#[test]
fn a_close_through_a_link_is_judged_where_the_link_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = first_data(tmp.path());
    let base = tmp.path();
    std::fs::create_dir_all(base.join("elsewhere/sub")).unwrap();
    std::os::unix::fs::symlink(base.join("elsewhere/sub"), base.join("link")).unwrap();
    let close = |out: &str, history: &str| {
        let mut command = tally_command(&[
            "close",
            "--data",
            root.to_str().unwrap(),
            "--as-of",
            "2026-12-01T00:00:00Z",
            "--out",
            out,
            "--history",
            history,
        ]);
        command.current_dir(base).output().unwrap()
    };
    let outside = close("link/../closes/2026-12-01", "closes");
    assert_eq!(outside.status.code(), Some(2), "{}", stderr(&outside));
    let real_base = base.canonicalize().unwrap();
    assert_eq!(
        stderr(&outside),
        format!(
            "tally: closes: the close's output folder link/../closes/2026-12-01 is not \
             directly inside this history folder (with their links followed, the output \
             folder is {}/elsewhere/closes/2026-12-01 and the history folder {}/closes), so \
             the next close would not read it and would close its periods again: write \
             closes to closes/<name>\n",
            real_base.display(),
            real_base.display()
        )
    );
    assert!(!base.join("elsewhere/closes").exists());

    std::fs::create_dir_all(base.join("elsewhere/closes2")).unwrap();
    for run in ["first", "rerun"] {
        let inside = close("elsewhere/closes2/2026-12-01", "link/../closes2");
        assert_eq!(inside.status.code(), Some(0), "{run}: {}", stderr(&inside));
    }
    let invoices = base.join("elsewhere/closes2/2026-12-01/invoices.parquet");
    assert!(table_rows(&invoices) > 0);
}
