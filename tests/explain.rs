//! `tally explain` agrees with what `reconcile` and `close` wrote: every discrepancy row of
//! the bundled generated data root is explained with the same figures and verdict, every
//! account's balance, invoice and lines match the run's tables, and the plain-words form of
//! hand-worked scenarios is held to golden files.

use crate::common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const AS_OF: &str = "2026-11-20T00:00:00Z";
const CLOSE_AS_OF: &str = "2026-12-01T00:00:00Z";

fn demo() -> std::path::PathBuf {
    repo().join("fixtures/demo")
}

/// The rows of an output table in their golden CSV form, as column → value maps.
fn table(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = render(path, &[]);
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// A JSON value in the golden CSV form (null → "", lists joined with `;`).
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(";"),
        other => other.to_string(),
    }
}

/// A discrepancy of explain's JSON in the table's columns (product/action/model are not
/// repeated in explain's rows: the event carries them).
fn as_row(d: &Value) -> BTreeMap<String, String> {
    [
        "kind",
        "account_id",
        "event_id",
        "entry_ids",
        "occurred_at",
        "expected_credits",
        "recorded_credits",
        "delta_credits",
    ]
    .iter()
    .map(|k| (k.to_string(), cell(&d[k])))
    .collect()
}

fn without_event_columns(row: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    row.iter()
        .filter(|(k, _)| !["product", "action", "model"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

const PRIMARY: [&str; 8] = [
    "orphan_debit",
    "manual_adjustment",
    "account_mismatch",
    "unpriced_event",
    "charged_failed_event",
    "missing_debit",
    "duplicate_debit",
    "amount_mismatch",
];

/// Explain every discrepancy row of a run and check explain shows that very row, with the
/// verdict its kind implies; the rows explain shows for all of them are exactly the file's.
fn check_every_discrepancy(data: &Path, as_of: &str, out: &Path, mode: &[&str]) {
    let rows = table(&out.join("discrepancies.parquet"));
    assert!(
        rows.len() >= 50,
        "the demo root has discrepancies of every kind"
    );
    let mut shown: BTreeSet<BTreeMap<String, String>> = BTreeSet::new();
    let mut explained_events = BTreeMap::new();
    let mut arithmetic_checked = 0;
    for row in &rows {
        let kind = row["kind"].as_str();
        let wanted = without_event_columns(row);
        if kind == "orphan_debit" || kind == "manual_adjustment" {
            let entry_id = &row["entry_ids"];
            let mut args = mode.to_vec();
            args.extend(["--entry", entry_id.as_str()]);
            let x = explain_json(data, as_of, &args);
            let entry = &x["entry"];
            assert_eq!(entry["placement"], "unattached", "{entry_id}: {entry}");
            assert_eq!(entry["verdict"], kind, "{entry_id}");
            let rows: Vec<_> = entry["discrepancies"]
                .as_array()
                .unwrap()
                .iter()
                .map(as_row)
                .collect();
            assert_eq!(rows, vec![wanted.clone()], "{entry_id}");
            shown.extend(rows);
            continue;
        }
        let event_id = row["event_id"].clone();
        let x = explained_events.entry(event_id.clone()).or_insert_with(|| {
            let mut args = mode.to_vec();
            args.extend(["--event", event_id.as_str()]);
            explain_json(data, as_of, &args)
        });
        let event = &x["event"];
        assert_eq!(event["placement"], "in_window", "{event_id}: {event}");
        for column in ["product", "action", "model"] {
            assert_eq!(cell(&event[column]), row[column], "{event_id} {column}");
        }
        let rows: Vec<_> = event["discrepancies"]
            .as_array()
            .unwrap()
            .iter()
            .map(as_row)
            .collect();
        assert!(
            rows.contains(&wanted),
            "{event_id}: explain shows {rows:?}, the run wrote {wanted:?}"
        );
        shown.extend(rows);
        match kind {
            k if PRIMARY.contains(&k) => assert_eq!(event["verdict"], k, "{event_id}"),
            "conflicting_duplicate" => {
                assert_eq!(event["conflicting_copies"], true, "{event_id}");
                let losers = x["usage_rows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["reason"] == "conflicting_duplicate")
                    .count();
                assert!(losers >= 1, "{event_id}: the losing copy is shown");
            }
            "over_limit_usage" => {
                assert_ne!(event["overage_credits"], "0.000", "{event_id}");
            }
            "late_event" => assert!(!event["late_from"].is_null(), "{event_id}"),
            other => panic!("unexpected kind {other}"),
        }
        // The arithmetic explain shows is what the run expected; the draws and the
        // overage add up to it.
        if let Some(a) = event["arithmetic"].as_object() {
            assert_eq!(a["credits"], event["expected_credits"], "{event_id}");
            let drawn: i64 = event["grants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| milli(&g["taken"]))
                .sum::<i64>()
                + milli(&event["overage_credits"]);
            assert_eq!(drawn, milli(&event["expected_credits"]), "{event_id}");
            arithmetic_checked += 1;
        }
    }
    // Most discrepancy events are priced: their arithmetic was held to the run's figure.
    assert!(
        arithmetic_checked >= 30,
        "{arithmetic_checked} priced events checked"
    );
    let written: BTreeSet<_> = rows.iter().map(without_event_columns).collect();
    assert_eq!(
        shown, written,
        "explain shows exactly the rows the run wrote"
    );
}

/// "12.345" → 12345.
/// `x` (explain `--account` of `account`) shows the account's rows of `discrepancies`
/// (the published table), in the table's order; their count.
fn account_rows_in_published_order(
    x: &Value,
    discrepancies: &[BTreeMap<String, String>],
    account: &str,
) -> usize {
    let published: Vec<_> = discrepancies
        .iter()
        .filter(|d| d["account_id"] == account)
        .map(without_event_columns)
        .collect();
    let shown: Vec<_> = x["account"]["discrepancies"]
        .as_array()
        .unwrap()
        .iter()
        .map(as_row)
        .collect();
    assert_eq!(
        shown, published,
        "{account}: the rows, in the published order"
    );
    published.len()
}

fn milli(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a credit amount: {v}"));
    let (units, frac) = s.split_once('.').unwrap();
    let negative = units.starts_with('-');
    let magnitude =
        units.trim_start_matches('-').parse::<i64>().unwrap() * 1000 + frac.parse::<i64>().unwrap();
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

#[test]
fn explain_agrees_with_every_discrepancy_row_of_a_generated_reconcile() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    run_command_ok("reconcile", &demo(), AS_OF, &out);
    check_every_discrepancy(&demo(), AS_OF, &out, &[]);

    // Every account's balance timeline ends where balances.parquet says, and its
    // discrepancy rows are the file's rows of the account, in the file's order.
    let balances = table(&out.join("balances.parquet"));
    let discrepancies = table(&out.join("discrepancies.parquet"));
    assert!(!balances.is_empty());
    let mut accounts_with_rows = 0;
    for b in &balances {
        let x = explain_json(&demo(), AS_OF, &["--account", &b["account_id"]]);
        let rows = account_rows_in_published_order(&x, &discrepancies, &b["account_id"]);
        accounts_with_rows += usize::from(rows > 1);
        let periods = x["account"]["periods"].as_array().unwrap();
        assert_eq!(periods.len(), 1, "{}", b["account_id"]);
        let p = &periods[0];
        assert_eq!(p["period"]["period_start"], b["period_start"].as_str());
        let balance = &p["balance"];
        for column in [
            "granted_credits",
            "used_credits",
            "overage_credits",
            "remaining_credits",
        ] {
            assert_eq!(
                cell(&balance[column]),
                b[column],
                "{} {column}",
                b["account_id"]
            );
        }
        let left: i64 = p["grants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| milli(&g["left_credits"]))
            .sum();
        assert_eq!(left, milli(&balance["remaining_credits"].clone()));
        if let Some(last) = p["timeline"].as_array().unwrap().last() {
            assert_eq!(milli(&last["balance_after"]), left, "{}", b["account_id"]);
        }
    }
    assert!(accounts_with_rows > 10, "accounts with rows to order");
}

#[test]
fn explain_agrees_with_every_discrepancy_row_and_invoice_of_a_generated_close() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    run_command_ok("close", &demo(), CLOSE_AS_OF, &out);
    check_every_discrepancy(&demo(), CLOSE_AS_OF, &out, &["--close"]);

    let invoices = table(&out.join("invoices.parquet"));
    let lines = table(&out.join("invoice_lines.parquet"));
    let discrepancies = table(&out.join("discrepancies.parquet"));
    assert!(!invoices.is_empty());
    let mut accounts_with_rows = 0;
    for inv in &invoices {
        let x = explain_json(
            &demo(),
            CLOSE_AS_OF,
            &["--close", "--account", &inv["account_id"]],
        );
        let rows = account_rows_in_published_order(&x, &discrepancies, &inv["account_id"]);
        accounts_with_rows += usize::from(rows > 1);
        let periods = x["account"]["periods"].as_array().unwrap();
        let p = periods
            .iter()
            .find(|p| p["period"]["period_start"] == inv["period_start"].as_str())
            .unwrap_or_else(|| panic!("{}: no period", inv["invoice_id"]));
        let i = &p["invoice"];
        for column in [
            "invoice_id",
            "plan_price_minor",
            "credits_used",
            "overage_credits",
            "overage_amount_minor",
            "total_minor",
            "recorded_credits",
            "unreconciled_credits",
        ] {
            assert_eq!(
                cell(&i[column]),
                inv[column],
                "{} {column}",
                inv["invoice_id"]
            );
        }
        const LINE_COLUMNS: [&str; 6] = [
            "product",
            "action",
            "model",
            "event_count",
            "quantity",
            "credits",
        ];
        let wanted: Vec<Vec<String>> = lines
            .iter()
            .filter(|l| l["invoice_id"] == inv["invoice_id"])
            .map(|l| LINE_COLUMNS.iter().map(|c| l[*c].clone()).collect())
            .collect();
        let shown: Vec<Vec<String>> = i["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| LINE_COLUMNS.iter().map(|c| cell(&l[*c])).collect())
            .collect();
        assert_eq!(shown, wanted, "{}", inv["invoice_id"]);
    }
    assert!(accounts_with_rows > 10, "accounts with rows to order");
}

/// An account's rows as `discrepancies.parquet` orders them, not as the engine made them
/// (period by period, entry by entry): `fixtures/explain-order/NOTES.md`. The contract
/// (section 7, "Row order"): "discrepancies by (account_id, occurred_at nulls last,
/// event_id, kind in the order of the table in section 5, entry_ids)", so the event's row
/// first, then `orphan_debit` before `manual_adjustment`.
#[test]
fn explain_of_an_account_lists_its_rows_in_the_published_order() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo().join("fixtures/explain-order");
    let out = tmp.path().join("out");
    run_command_ok("close", &data, CLOSE_AS_OF, &out);
    let discrepancies = table(&out.join("discrepancies.parquet"));
    let kinds: Vec<&str> = discrepancies.iter().map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["amount_mismatch", "orphan_debit", "manual_adjustment"]
    );
    let x = explain_json(&data, CLOSE_AS_OF, &["--close", "--account", "A"]);
    assert_eq!(account_rows_in_published_order(&x, &discrepancies, "A"), 3);
}

#[test]
fn explain_says_why_an_event_is_outside_the_window_and_where_to_look() {
    // The demo's events are in November: reconcile as of December 2 covers the December
    // period, so a November event is the close's work.
    let x = explain_json(
        &demo(),
        "2026-12-02T00:00:00Z",
        &["--event", "evt-d029801d427f8bbf"],
    );
    let event = &x["event"];
    assert_eq!(event["placement"], "outside_window");
    assert!(
        event["placement_detail"]
            .as_str()
            .unwrap()
            .contains("explain with --close"),
        "{event}"
    );
    // As of before it occurred: at or after as-of.
    let x = explain_json(
        &demo(),
        "2026-11-02T00:00:00Z",
        &["--event", "evt-d029801d427f8bbf"],
    );
    assert!(x["event"]["placement_detail"]
        .as_str()
        .unwrap()
        .contains("at or after as-of"));
}

/// Explain's text writes every id quoted and escaped, also in its discrepancy lines (an
/// entry id with a comma and a newline is one id on one line), and plan ids quoted (names
/// with a control character: `explain::tests`): a line is never broken by a value.
#[test]
fn explain_text_quotes_and_escapes_ids_and_names_on_every_line() {
    use tally::time::parse_instant;
    use tally::write::{write_parquet, Table};
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let (entry, account) = ("d,1\nx", "acct-000001");
    // The entry, and a second row repeating its id (rejected, its detail quoting the id).
    let recorded = parse_instant("2026-11-10T00:00:00Z").unwrap();
    let orphan = Table::default()
        .str("entry_id", [entry, entry])
        .str("account_id", [account, account])
        .opt_str("event_id", [None, None])
        .str("kind", ["debit", "debit"])
        .credits("credits", [tally::amount::Milli::from_units(3); 2])
        .ts("recorded_at", [recorded, recorded])
        .finish();
    write_parquet(&data.join("debits/zz-odd.parquet"), &orphan).unwrap();
    let text = |args: &[&str]| explain_text(&data, AS_OF, args);
    let by_entry = text(&["--entry", entry]);
    assert!(
        by_entry.contains(
            "orphan_debit: expected 0.000, recorded 3.000, delta 3.000, entries \"d,1\\nx\""
        ),
        "{by_entry}"
    );
    assert!(
        by_entry.contains("entry_id \"d,1\\u{a}x\" repeats the row at debits/zz-odd.parquet row 0"),
        "{by_entry}"
    );
    let by_account = text(&["--account", account]);
    // No line begins with what follows the id's newline: the id stayed on its line.
    for page in [&by_entry, &by_account] {
        assert!(!page.lines().any(|line| line.starts_with('x')), "{page}");
    }
    assert!(by_account.contains("plan \"max\""), "{by_account}");
    assert!(
        by_account.contains("entry \"d,1\\nx\" debit 3.000"),
        "{by_account}"
    );
}

#[test]
fn explain_of_an_unknown_id_is_a_one_line_error_with_exit_2() {
    // Each message counts the files it looked in (the account's: allocations and grants).
    // Ids may start with '-', but not be one of explain's flags: that is a missing value.
    for (flag, id, message) in [
        (
            "--event",
            "evt-nope",
            "--event evt-nope: no row of usage (16 files) has event_id \"evt-nope\"; check \
             the id and --data",
        ),
        (
            "--entry",
            "led-nope",
            "--entry led-nope: no row of debits (16 files) has entry_id \"led-nope\"; check \
             the id and --data",
        ),
        (
            "--account",
            "acct-nope",
            "--account acct-nope: no row of allocations or grants (2 files) has account_id \
             \"acct-nope\"; check the id and --data",
        ),
        (
            "--entry",
            "--json",
            "command line: --entry needs an id: --json is one of explain's flags (put the id \
             right after --entry)",
        ),
    ] {
        let out = tally(&[
            "explain",
            "--data",
            demo().to_str().unwrap(),
            "--as-of",
            AS_OF,
            flag,
            id,
        ]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert_eq!(stderr(&out), format!("tally: {message}\n"));
    }
    // Exactly one target.
    let out = tally(&["explain", "--data", "x", "--as-of", AS_OF]);
    assert_eq!(out.status.code(), Some(2));
}

/// A `--history` that does not exist (a first close explained before it runs, or a wrong
/// path) is explained as a first close, with a warning that says so: a wrong path would
/// otherwise explain a later close's late events as on time, silently.
#[test]
fn explain_warns_of_a_history_folder_that_does_not_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-closes");
    let out = tally(&[
        "explain",
        "--data",
        demo().to_str().unwrap(),
        "--as-of",
        "2026-12-01T00:00:00Z",
        "--close",
        "--history",
        missing.to_str().unwrap(),
        "--out",
        missing.join("2026-12-01").to_str().unwrap(),
        "--account",
        "acct-000001",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "the history folder does not exist, so no earlier close is read: explained as a \
             first close; if this close had earlier ones, check --history"
        ),
        "{}",
        stderr(&out)
    );
    assert!(!missing.exists(), "explain writes nothing");
}

/// An account with usage rows but no allocation or grant rows is a real id: explain says
/// its rows are in no period (and how to explain them) rather than "check the id".
#[test]
fn explain_of_an_account_with_usage_but_no_plan_names_its_rows() {
    use tally::amount::Milli;
    use tally::time::parse_instant;
    use tally::write::{write_parquet, Table};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    copy_dir(&demo(), &root);
    let t = |s: &str| parse_instant(s).unwrap();
    let usage = Table::default()
        .str("event_id", ["evt-unplanned-1", "evt-unplanned-2"])
        .str("account_id", ["acct-unplanned", "acct-unplanned"])
        .str("product", ["studio", "studio"])
        .str("action", ["prompt_to_video", "prompt_to_video"])
        .opt_str("model", [None, None])
        .credits("quantity", [Milli(4_000), Milli(2_000)])
        .str("status", ["succeeded", "succeeded"])
        .ts(
            "occurred_at",
            [t("2026-11-10T00:00:00Z"), t("2026-11-11T00:00:00Z")],
        )
        .opt_ts("ingested_at", [None, None])
        .finish();
    write_parquet(&root.join("usage/unplanned.parquet"), &usage).unwrap();
    let explain = || {
        let root = root.to_str().unwrap();
        tally(&[
            "explain",
            "--data",
            root,
            "--as-of",
            AS_OF,
            "--account",
            "acct-unplanned",
        ])
    };
    let out = explain();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "tally: --account acct-unplanned: account_id \"acct-unplanned\" has no allocation or \
         grant rows, so its 2 usage and 0 ledger rows are in no period; explain each with \
         --event or --entry\n"
    );
    // With a grant row too: the grant is counted (it said "no row of allocations or
    // grants has account_id ...; check the id").
    let grants = Table::default()
        .str("grant_id", ["g-unplanned"])
        .str("account_id", ["acct-unplanned"])
        .str("kind", ["promo"])
        .credits("credits", [Milli::from_units(50)])
        .ts("effective_at", [t("2026-11-01T00:00:00Z")])
        .opt_ts("expires_at", [None])
        .opt_i32("priority", [None])
        .finish();
    write_parquet(&root.join("grants/unplanned.parquet"), &grants).unwrap();
    let out = explain();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "tally: --account acct-unplanned: account_id \"acct-unplanned\" has no allocation \
         rows, so its 1 grant, 2 usage and 0 ledger rows are in no period (a grant counts only \
         in its account's periods); explain usage and ledger rows with --event or --entry\n"
    );
}

/// `fixtures/golden/<scenario>/explain/<kind>-<id>.txt`: explain's plain words for the
/// scenario's run, reviewed by hand against the scenario's NOTES.md.
/// `UPDATE_GOLDEN=1` rewrites them (review the diff).
#[test]
fn explain_plain_words_match_the_golden_files() {
    let golden = repo().join("fixtures/golden");
    let mut checked = 0;
    let mut failures = Vec::new();
    for scenario in std::fs::read_dir(&golden).unwrap() {
        let dir = scenario.unwrap().path();
        let explain_dir = dir.join("explain");
        if !explain_dir.is_dir() {
            continue;
        }
        let args: toml::Table =
            toml::from_str(&std::fs::read_to_string(dir.join("args.toml")).unwrap()).unwrap();
        for file in std::fs::read_dir(&explain_dir).unwrap() {
            let path = file.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_string();
            let (kind, id) = name.split_once('-').unwrap();
            let mut command = vec![
                "explain".to_string(),
                "--data".into(),
                dir.join("data").to_str().unwrap().into(),
                "--as-of".into(),
                args["as_of"].as_str().unwrap().into(),
                format!("--{kind}"),
                id.into(),
            ];
            if args["command"].as_str() == Some("close") {
                command.push("--close".into());
            }
            let command: Vec<&str> = command.iter().map(String::as_str).collect();
            let text = String::from_utf8(tally_ok(&command).stdout).unwrap();
            // The data root's absolute path does not appear: explain names files
            // relative to it.
            if crate::golden::update_golden() {
                std::fs::write(&path, &text).unwrap();
            } else if std::fs::read_to_string(&path).unwrap() != text {
                failures.push(format!("{} differs; actual:\n{text}", path.display()));
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "golden explain files: {checked}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn explain_refuses_history_it_cannot_read_as_the_close_did() {
    let demo = demo();
    let base = [
        "explain",
        "--data",
        demo.to_str().unwrap(),
        "--as-of",
        CLOSE_AS_OF,
    ];
    let cases: [(&[&str], &str); 2] = [
        (
            &["--history", "/tmp", "--event", "evt-d029801d427f8bbf"],
            "tally: command line: --history is read by a close: add --close",
        ),
        (
            &[
                "--close",
                "--history",
                "/tmp",
                "--event",
                "evt-d029801d427f8bbf",
            ],
            "tally: command line: --history needs the close's --out",
        ),
    ];
    for (extra, message) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = tally(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).starts_with(message), "{}", stderr(&out));
    }
}

/// docs/explain-json.md read as the test holds it: each object's fields in order with
/// their value column (from the `| \`field\` | value |` rows of its table) and each
/// place's object (from its `At:` line; the top level is the place "").
struct JsonDoc {
    fields: BTreeMap<String, Vec<(String, String)>>,
    places: BTreeMap<String, String>,
}

/// The names in backticks of a line of the page.
fn ticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn explain_json_doc() -> JsonDoc {
    let text = std::fs::read_to_string(repo().join("docs/explain-json.md")).unwrap();
    let mut doc = JsonDoc {
        fields: BTreeMap::new(),
        places: BTreeMap::new(),
    };
    let mut object: Option<String> = None;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            let name = ticked(heading).into_iter().next().expect("## `Object`");
            assert!(
                doc.fields.insert(name.clone(), Vec::new()).is_none(),
                "{name} twice"
            );
            object = Some(name);
        } else if let (Some(at), Some(name)) = (line.strip_prefix("At: "), &object) {
            let mut places = ticked(at);
            if at.starts_with("the top level") {
                places.push(String::new());
            }
            assert!(!places.is_empty(), "{name}: an At: line without places");
            for place in places {
                let earlier = doc.places.insert(place.clone(), name.clone());
                assert!(earlier.is_none(), "place {place:?} listed twice");
            }
        } else if let (Some(row), Some(name)) = (line.strip_prefix("| `"), &object) {
            let cells: Vec<&str> = row.split(" | ").collect();
            assert!(
                cells.len() >= 3,
                "{name}: a field row without a value: {line}"
            );
            let field = cells[0].trim_end_matches('`').to_string();
            doc.fields
                .get_mut(name)
                .unwrap()
                .push((field, cells[1].to_string()));
        }
    }
    for name in doc.fields.keys() {
        assert!(
            doc.places.values().any(|o| o == name),
            "table {name} has no At: place"
        );
    }
    doc
}

/// What a value column promises, checked against the page itself: a field whose value is
/// an object or a list of objects has that object's table at its place.
fn check_nested_places(doc: &JsonDoc) {
    for (place, object) in &doc.places {
        for (field, value) in &doc.fields[object] {
            let value = value.trim_end_matches(" or null");
            let nested = match value.strip_prefix("list of ") {
                Some(items) if items.starts_with('`') => Some(("[]".to_string(), items)),
                Some(_) => None,
                None if value.starts_with('`') => Some((String::new(), value)),
                None => None,
            };
            let Some((suffix, named)) = nested else {
                continue;
            };
            let inner = match place.as_str() {
                "" => format!("{field}{suffix}"),
                _ => format!("{place}.{field}{suffix}"),
            };
            let named = named.trim_matches('`');
            assert_eq!(
                doc.places.get(&inner).map(String::as_str),
                Some(named),
                "{object}.{field} is {value}, but {inner:?} is not listed at {named}"
            );
        }
    }
}

/// A JSON value with each object's keys in the order printed (serde_json's `Value` sorts
/// them), for the test of the documented fields.
enum Ordered {
    Object(Vec<(String, Ordered)>),
    Array(Vec<Ordered>),
    Str(String),
    Int,
    Float,
    Bool,
    Null,
}

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ordered, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Ordered, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = a.next_entry::<String, Ordered>()? {
                    fields.push(entry);
                }
                Ok(Ordered::Object(fields))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Ordered, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element::<Ordered>()? {
                    items.push(item);
                }
                Ok(Ordered::Array(items))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Ordered, E> {
                Ok(Ordered::Bool)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Ordered, E> {
                Ok(Ordered::Int)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Ordered, E> {
                Ok(Ordered::Int)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Ordered, E> {
                Ok(Ordered::Float)
            }
            fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
                Ok(Ordered::Str(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Null)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Every object of `value` with its place (`event.rate`, lists as `[]`: `event.grants[]`)
/// and its fields in order.
fn json_objects<'v>(
    value: &'v Ordered,
    place: &str,
    out: &mut Vec<(String, &'v [(String, Ordered)])>,
) {
    match value {
        Ordered::Object(fields) => {
            out.push((place.to_string(), fields));
            for (key, v) in fields {
                let inner = match place {
                    "" => key.clone(),
                    _ => format!("{place}.{key}"),
                };
                json_objects(v, &inner, out);
            }
        }
        Ordered::Array(items) => {
            for item in items {
                json_objects(item, &format!("{place}[]"), out);
            }
        }
        _ => {}
    }
}

/// Digits, at least one.
fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `v` is of the form the page's value column `value` names (`credits or null`,
/// `instant`, `list of ids`, `` `Rate` `` ...).
fn has_documented_form(value: &str, v: &Ordered) -> bool {
    let (value, nullable) = match value.strip_suffix(" or null") {
        Some(base) => (base, true),
        None => (value, false),
    };
    let unsigned = |s: &str| s.strip_prefix('-').unwrap_or(s).to_string();
    let text = |check: &dyn Fn(&str) -> bool| matches!(v, Ordered::Str(s) if check(s));
    match (value, v) {
        (_, Ordered::Null) => nullable,
        ("credits" | "quantity", _) => text(&|s| {
            let s = unsigned(s);
            matches!(s.split_once('.'), Some((whole, frac)) if digits(whole) && frac.len() == 3 && digits(frac))
        }),
        // Exact, without trailing zeros ("8", "0.0125").
        ("decimal", _) => text(&|s| match unsigned(s).split_once('.') {
            Some((whole, frac)) => digits(whole) && digits(frac) && !frac.ends_with('0'),
            None => digits(&unsigned(s)),
        }),
        ("money", _) => text(&|s| match unsigned(s).split_once('.') {
            Some((whole, frac)) => digits(whole) && digits(frac),
            None => digits(&unsigned(s)),
        }),
        // RFC 3339 in UTC, no fraction or 3 or 6 digits of one.
        ("instant", _) => text(&|s| {
            let (seconds, fraction) = match s.strip_suffix('Z').and_then(|t| t.split_once('.')) {
                Some((seconds, fraction)) => (seconds.to_string(), fraction.len()),
                None => (s.strip_suffix('Z').unwrap_or("").to_string(), 0),
            };
            [0, 3, 6].contains(&fraction)
                && chrono::NaiveDateTime::parse_from_str(&seconds, "%Y-%m-%dT%H:%M:%S").is_ok()
        }),
        ("id" | "string", _) => text(&|_| true),
        ("integer" | "minor", Ordered::Int) => true,
        ("boolean", Ordered::Bool) => true,
        ("list of ids", Ordered::Array(items)) => {
            items.iter().all(|i| matches!(i, Ordered::Str(_)))
        }
        // Objects and lists of them: their own tables hold them at their places.
        (list, Ordered::Array(_)) if list.starts_with("list of `") => true,
        (object, Ordered::Object(_)) if object.starts_with('`') => true,
        _ => false,
    }
}

/// The first row of each discrepancy kind of a run's table, explained (its event, or its
/// entry for an unattached entry's row), with an attached entry and the rows' accounts.
fn explain_a_row_of_each_kind(data: &Path, as_of: &str, out: &Path, mode: &[&str]) -> Vec<Ordered> {
    let rows = table(&out.join("discrepancies.parquet"));
    let mut kinds = BTreeSet::new();
    let mut accounts = BTreeSet::new();
    let mut targets = Vec::new();
    for row in &rows {
        if !kinds.insert(row["kind"].clone()) {
            continue;
        }
        accounts.insert(row["account_id"].clone());
        let entry = row["entry_ids"].split(';').next().unwrap_or("").to_string();
        // As check_every_discrepancy: these rows' event ids name no usage row.
        if ["orphan_debit", "manual_adjustment"].contains(&row["kind"].as_str()) {
            targets.push(("--entry", entry));
        } else {
            targets.push(("--event", row["event_id"].clone()));
            if !entry.is_empty() {
                targets.push(("--entry", entry));
            }
        }
    }
    targets.extend(accounts.into_iter().map(|a| ("--account", a)));
    targets
        .iter()
        .map(|(flag, id)| {
            let mut args = mode.to_vec();
            args.extend([*flag, id.as_str()]);
            explain_json_as::<Ordered>(data, as_of, &args)
        })
        .collect()
}

/// The `--json` output is the documented one: explanations of events, entries and
/// accounts at reconcile and at close (the demo root's rows of every discrepancy kind,
/// and the accounts of a root whose allocation and grant rows are rejected) hold, at
/// every place, the fields docs/explain-json.md lists for the object found there, in
/// its order; every place the page lists is seen.
#[test]
fn explain_json_fields_are_the_documented_ones() {
    let doc = explain_json_doc();
    for (place, object) in &doc.places {
        assert!(
            doc.fields.contains_key(object),
            "{place}: no table {object}"
        );
    }
    check_nested_places(&doc);
    let tmp = tempfile::tempdir().unwrap();
    let mut explained = Vec::new();
    for (command, as_of, mode) in [
        ("reconcile", AS_OF, &[][..]),
        ("close", CLOSE_AS_OF, &["--close"][..]),
    ] {
        let out = tmp.path().join(command);
        run_command_ok(command, &demo(), as_of, &out);
        explained.extend(explain_a_row_of_each_kind(&demo(), as_of, &out, mode));
    }
    let rejects = repo().join("fixtures/golden/rejects_and_types/data");
    let rejects_as_of = "2026-11-20T12:00:00Z";
    let mut plan_accounts = BTreeSet::new();
    for file in ["allocations/part-0.parquet", "grants/part-0.parquet"] {
        for row in table(&rejects.join(file)) {
            plan_accounts.insert(row["account_id"].clone());
        }
    }
    plan_accounts.remove("");
    for account in &plan_accounts {
        explained.push(explain_json_as::<Ordered>(
            &rejects,
            rejects_as_of,
            &["--account", account],
        ));
    }

    let mut seen = BTreeSet::new();
    for x in &explained {
        let mut objects = Vec::new();
        json_objects(x, "", &mut objects);
        for (place, fields) in objects {
            let object = doc
                .places
                .get(&place)
                .unwrap_or_else(|| panic!("an object at {place:?} is not in docs/explain-json.md"));
            let keys: Vec<&String> = fields.iter().map(|(k, _)| k).collect();
            let documented: Vec<&String> = doc.fields[object].iter().map(|(f, _)| f).collect();
            assert_eq!(keys, documented, "the fields of {object} at {place:?}");
            for ((field, v), (_, value)) in fields.iter().zip(&doc.fields[object]) {
                assert!(
                    has_documented_form(value, v),
                    "{place:?}.{field}: not of the form {value:?}"
                );
            }
            seen.insert(place);
        }
    }
    let unseen: Vec<&String> = doc.places.keys().filter(|p| !seen.contains(*p)).collect();
    assert!(
        unseen.is_empty(),
        "places documented but never seen: {unseen:?}"
    );
}
