//! `report.html` and the CSV exports: the report rendered in headless Chromium shows the
//! figures of `summary.json`; every link in it names a file of the run folder whose rows
//! count (or sum to) the linked figure; the file is self-contained; ids are escaped; the
//! spreadsheet CSVs follow the export rules.
//!
//! Chromium comes from Debian's packages: when `chromium` is not on PATH, the test
//! installs it (`apt-get install -y --no-install-recommends chromium`, once, under a lock)
//! and fails with a one-line message when it cannot.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const AS_OF: &str = "2026-11-20T00:00:00Z";
const CLOSE_AS_OF: &str = "2026-12-01T00:00:00Z";
const INSTALL_HINT: &str =
    "install it with `apt-get update && apt-get install -y --no-install-recommends chromium` (Debian 12) and rerun";

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn find_chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"]
        .iter()
        .find_map(|n| on_path(n))
}

/// Install Chromium from Debian's packages (once per test binary, and under a file lock
/// across processes), or explain in one line why it cannot be.
fn install_chromium() -> Result<PathBuf, String> {
    let lock_path = std::env::temp_dir().join("tally-test-chromium-install.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| format!("{e}"))?;
    lock.lock().map_err(|e| format!("lock: {e}"))?;
    if let Some(found) = find_chromium() {
        return Ok(found);
    }
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| format!("apt-get: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty());
            Err(format!(
                "apt-get {} failed: {}",
                args.join(" "),
                last.unwrap_or("")
            ))
        }
    };
    run(&["update"])?;
    run(&["install", "-y", "--no-install-recommends", "chromium"])?;
    find_chromium().ok_or_else(|| "apt-get installed no `chromium` on PATH".to_string())
}

fn chromium() -> PathBuf {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match FOUND.get_or_init(|| find_chromium().map(Ok).unwrap_or_else(install_chromium)) {
        Ok(path) => path.clone(),
        Err(why) => panic!("headless Chromium is needed to render report.html and is not installed ({why}): {INSTALL_HINT}"),
    }
}

/// The DOM of `file` after Chromium parsed and rendered it.
fn rendered_dom(file: &Path) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", file.display()))
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8(out.stdout).unwrap();
    assert!(dom.contains("</html>"), "no DOM dumped: {dom}");
    dom
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Attribute `name` of a start tag (its text between `<` and `>`).
fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let end = start + tag[start..].find('"')?;
    Some(unescape(&tag[start..end]))
}

/// Every element with a `data-figure`: (key, start tag, text content up to the next tag).
fn figures(html: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find("data-figure=\"") {
        let open = rest[..at].rfind('<').unwrap();
        let close = at + rest[at..].find('>').unwrap();
        let tag = &rest[open..close];
        let text_end = close + 1 + rest[close + 1..].find('<').unwrap();
        let text = unescape(&rest[close + 1..text_end]);
        found.push((attr(tag, "data-figure").unwrap(), tag.to_string(), text));
        rest = &rest[close..];
    }
    found
}

/// Every `href` in the page.
fn hrefs(html: &str) -> Vec<String> {
    html.match_indices(" href=\"")
        .map(|(i, m)| {
            let start = i + m.len();
            unescape(&html[start..start + html[start..].find('"').unwrap()])
        })
        .collect()
}

/// The figures summary.json holds, under the keys report.html gives them.
fn summary_figures(summary: &serde_json::Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for section in ["usage", "events", "credits", "close"] {
        if let Some(fields) = summary[section].as_object() {
            for (k, v) in fields {
                out.insert(format!("{section}.{k}"), text(v));
            }
        }
    }
    // The same figure as usage.events_in_window, which the page shows.
    assert_eq!(
        out.remove("events.in_window"),
        out.get("usage.events_in_window").cloned()
    );
    out.insert(
        "ledger.entries_in_window".into(),
        text(&summary["ledger"]["entries_in_window"]),
    );
    out.insert(
        "discrepancies.total".into(),
        text(&summary["discrepancies"]["total"]),
    );
    out.insert(
        "discrepancies.abs_delta_credits".into(),
        text(&summary["discrepancies"]["abs_delta_credits"]),
    );
    for k in summary["discrepancies"]["by_kind"].as_array().unwrap() {
        let kind = k["kind"].as_str().unwrap();
        out.insert(
            format!("discrepancies.by_kind.{kind}.count"),
            text(&k["count"]),
        );
        out.insert(
            format!("discrepancies.by_kind.{kind}.delta_credits"),
            text(&k["delta_credits"]),
        );
    }
    let mut rejected = 0;
    for (name, d) in summary["datasets"].as_object().unwrap() {
        for field in ["files", "rows_read", "rejected"] {
            out.insert(format!("datasets.{name}.{field}"), text(&d[field]));
        }
        rejected += d["rejected"].as_u64().unwrap();
    }
    out.insert("rejected_rows".into(), rejected.to_string());
    out.insert(
        "conservation.account_periods_checked".into(),
        text(&summary["conservation"]["account_periods_checked"]),
    );
    out.insert("as_of".into(), text(&summary["as_of"]));
    out.insert("currency".into(), text(&summary["currency"]));
    if summary["close"].is_object() {
        let exponent =
            tally::pricebook::currency_exponent(summary["currency"].as_str().unwrap()).unwrap();
        for (field, minor) in [
            ("close.total", "total_minor"),
            ("close.overage_amount", "overage_amount_minor"),
        ] {
            let minor = summary["close"][minor].as_i64().unwrap();
            out.insert(field.into(), tally::export::format_minor(minor, exponent));
        }
        // Shown as `close.total` / `close.overage_amount` (formatted) and the minor units.
        out.remove("close.overage_amount_minor");
    }
    out
}

/// A decimal cell as thousandths ("12.345", "-0.05", "7", "" = 0).
fn thousandths(text: &str) -> i128 {
    let text = text.trim();
    if text.is_empty() {
        return 0;
    }
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    assert!(frac.len() <= 3, "more than 3 decimals: {text}");
    let frac = format!("{frac:0<3}");
    sign * (int.parse::<i128>().unwrap() * 1000 + frac.parse::<i128>().unwrap())
}

fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::ReaderBuilder::new()
        .from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

/// Check the page of a run folder: self-contained, every figure of summary.json shown in
/// the DOM Chromium rendered, every link to an existing file that counts or sums to its
/// figure.
fn check_report(out: &Path) {
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    // Self-contained: no script, no external stylesheet, image, font or URL.
    for banned in [
        "<script",
        "<link",
        "<img",
        "<iframe",
        "<object",
        "<embed",
        "@import",
        "url(",
        " src=",
        "xlink:href",
        "://",
    ] {
        assert!(!html.contains(banned), "report.html contains {banned}");
    }
    let summary = json(&out.join("summary.json"));
    let expected = summary_figures(&summary);
    let dom = rendered_dom(&out.join("report.html"));
    let shown: BTreeMap<String, String> = figures(&dom)
        .into_iter()
        .map(|(key, _, text)| (key, text))
        .collect();
    for (key, value) in &expected {
        let Some(text) = shown.get(key) else {
            panic!("report.html does not show {key} ({value})");
        };
        assert_eq!(text, value, "{key} in report.html vs summary.json");
    }
    let holds = summary["conservation"]["holds"].as_bool().unwrap();
    assert_eq!(
        shown["conservation.holds"],
        if holds {
            "conservation holds"
        } else {
            "conservation BROKEN"
        }
    );

    // Every link: a file of the run folder (relative, no id in its name); a counted figure
    // is the CSV's data rows, a summed one the sum of the named column.
    let links = hrefs(&html);
    assert!(links.len() > 20, "{links:?}");
    for href in &links {
        if href.starts_with('#') {
            continue;
        }
        assert!(
            !href.contains(':') && !href.starts_with('/') && !href.contains(".."),
            "{href} is not a relative link into the run folder"
        );
        assert!(out.join(href).is_file(), "{href} does not exist");
    }
    let mut counted = 0;
    for (key, tag, text) in figures(&html) {
        let Some(href) = attr(&tag, "href") else {
            continue;
        };
        if href.ends_with(".csv") {
            let (header, rows) = read_csv(&out.join(&href));
            assert!(!header.is_empty(), "{href} has a header row");
            if attr(&tag, "data-count").is_some() {
                assert_eq!(
                    rows.len().to_string(),
                    text,
                    "{key}: rows of {href} vs the figure"
                );
                counted += 1;
            }
            if let Some(column) = attr(&tag, "data-sum") {
                let i = header
                    .iter()
                    .position(|h| *h == column)
                    .unwrap_or_else(|| panic!("{href} has no column {column}"));
                let sum: i128 = rows.iter().map(|r| thousandths(&r[i])).sum();
                assert_eq!(
                    sum,
                    thousandths(&text),
                    "{key}: Σ {column} of {href} vs the figure {text}"
                );
                counted += 1;
            }
        }
    }
    assert!(
        counted > 20,
        "only {counted} figures checked against their rows"
    );

    // At close, a top account's unreconciled credits are its invoices' Σ unreconciled.
    if summary["close"].is_object() {
        let (header, invoices) = read_csv(&out.join("invoices.csv"));
        let col = |name: &str| header.iter().position(|h| h == name).unwrap();
        let mut checked = 0;
        for rank in 1..=tally::breakdown::TOP_ACCOUNTS {
            let Some(figure) = shown.get(&format!("accounts.{rank}.unreconciled_credits")) else {
                break;
            };
            let file = out.join(format!("report/account-{rank:02}.csv"));
            if !file.is_file() {
                continue;
            }
            let (h, rows) = read_csv(&file);
            let account = &rows[0][h.iter().position(|c| c == "account_id").unwrap()];
            let sum: i128 = invoices
                .iter()
                .filter(|r| &r[col("account_id")] == account)
                .map(|r| thousandths(&r[col("unreconciled_credits")]))
                .sum();
            assert_eq!(sum, thousandths(figure), "account {account}");
            checked += 1;
        }
        assert!(checked > 0);
    }

    // That every report/ file is in the manifest with its rows is held, with every other
    // output, by `operations::the_manifest_lists_every_input_and_output_with_rows_and_sha256`.
}

fn generated(dir: &Path) -> PathBuf {
    generated_data(dir, 60, 8000, 23, "0.05")
}

#[test]
fn report_html_renders_the_summary_figures_and_links_to_their_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path());
    let reconcile = tmp.path().join("reconcile");
    run_command_ok("reconcile", &data, AS_OF, &reconcile);
    check_report(&reconcile);
    let close = tmp.path().join("close");
    run_command_ok("close", &data, CLOSE_AS_OF, &close);
    check_report(&close);
    // The close figures are there (and non-trivial on generated data).
    let summary = json(&close.join("summary.json"));
    assert!(summary["close"]["invoices"].as_u64().unwrap() > 0);
    let html = std::fs::read_to_string(close.join("report.html")).unwrap();
    assert!(html.contains("data-figure=\"close.total\""));
    // The reconcile's discrepancies are spread over days and kinds, all linked.
    let files: Vec<String> = folder_bytes(&reconcile)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(files
        .iter()
        .any(|f| f.starts_with("report/discrepancies-day-2026-11-")));
    assert!(files.contains(&"report/discrepancies-day-none.csv".to_string()));
    assert!(files.contains(&"report/discrepancies-kind-missing_debit.csv".to_string()));
    assert!(files.contains(&"report/account-01.csv".to_string()));
    assert!(files.contains(&"report/credits-by-product.csv".to_string()));
}

/// summary.md and report.html say alike what a kind's Σ delta leaves out (both write
/// summary.json's figure, then the same words); an empty month still has
/// `report/credits-by-product.csv` (its header), which its event figures link to.
#[test]
fn report_html_says_what_sums_leave_out_and_an_empty_month_keeps_its_product_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let close = tmp.path().join("close");
    run_command_ok("close", &data, CLOSE_AS_OF, &close);
    let md = std::fs::read_to_string(close.join("summary.md")).unwrap();
    let html = std::fs::read_to_string(close.join("report.html")).unwrap();
    assert!(
        md.contains("| unpriced_event | 8 | 0.000 (no row has a delta) |"),
        "{md}"
    );
    assert!(
        md.contains("| account_mismatch | 8 | 38.000 (4 rows without a delta) |"),
        "{md}"
    );
    let cell = |kind: &str| {
        let key = format!("data-figure=\"discrepancies.by_kind.{kind}.delta_credits\"");
        let at = html.find(&key).unwrap_or_else(|| panic!("{kind}: {html}"));
        let end = at + html[at..].find("</td>").unwrap();
        html[at..end].to_string()
    };
    // The figure is summary.json's, the words after it.
    let summary = json(&close.join("summary.json"));
    let sum_of = |kind: &str| {
        let kinds = summary["discrepancies"]["by_kind"].as_array().unwrap();
        let line = kinds.iter().find(|k| k["kind"] == kind).unwrap();
        line["delta_credits"].as_str().unwrap().to_string()
    };
    assert_eq!(sum_of("unpriced_event"), "0.000");
    assert!(
        cell("unpriced_event").ends_with(&format!(
            ">{}</a> (no row has a delta)",
            sum_of("unpriced_event")
        )),
        "{}",
        cell("unpriced_event")
    );
    assert!(
        cell("account_mismatch").ends_with(&format!(
            ">{}</a> (4 rows without a delta)",
            sum_of("account_mismatch")
        )),
        "{}",
        cell("account_mismatch")
    );
    assert!(
        !cell("missing_debit").contains("without"),
        "{}",
        cell("missing_debit")
    );

    // A month without usage or ledger entries.
    for dataset in ["usage", "debits"] {
        for file in walk_parquet(&data.join(dataset)) {
            std::fs::remove_file(file).unwrap();
        }
    }
    let empty = tmp.path().join("empty");
    run_command_ok("close", &data, CLOSE_AS_OF, &empty);
    assert_eq!(
        std::fs::read_to_string(empty.join("report/credits-by-product.csv")).unwrap(),
        "product,action,model,events,priced_events,quantity,unit,expected_credits,recorded_credits\n"
    );
    let html = std::fs::read_to_string(empty.join("report.html")).unwrap();
    assert!(
        html.contains("href=\"report/credits-by-product.csv\""),
        "{html}"
    );
}

/// summary.md for a person: money formatted in its currency beside the minor units, the
/// overage amount, each kind's meaning, a kind without deltas shown as such, and the note
/// that says why the deltas do not add up to recorded − expected, with its figures, all
/// from the published tables.
#[test]
fn summary_md_says_money_and_deltas_as_a_reader_needs_them() {
    let tmp = tempfile::tempdir().unwrap();
    let close = tmp.path().join("close");
    run_command_ok("close", &repo().join("fixtures/demo"), CLOSE_AS_OF, &close);
    let md = std::fs::read_to_string(close.join("summary.md")).unwrap();
    let summary = json(&close.join("summary.json"));
    let money = |minor: i64| {
        format!(
            "{}.{:02} USD ({minor} minor units)",
            minor / 100,
            minor % 100
        )
    };
    let total = summary["close"]["total_minor"].as_i64().unwrap();
    let overage = summary["close"]["overage_amount_minor"].as_i64().unwrap();
    assert!(
        md.contains(&format!("| invoiced total | {} |\n", money(total))),
        "{md}"
    );
    assert!(
        md.contains(&format!("| of which overage | {} |\n", money(overage))),
        "{md}"
    );
    // What a total includes, where a reader could take it for something else.
    assert!(md.contains(&format!(
        "| overage credits (billed only on plans with an overage price) | {} |\n",
        summary["credits"]["overage"].as_str().unwrap()
    )));
    assert!(md.contains(&format!(
        "| credits remaining (unconsumed, grants past their expiry included) | {} |\n",
        summary["credits"]["remaining"].as_str().unwrap()
    )));

    let rows = read_parquet(&close.join("discrepancies.parquet"));
    let column = |name: &str| rows.column_by_name(name).unwrap().clone();
    let kinds = column("kind");
    let kinds = kinds
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    let delta = column("delta_credits");
    let without = |kind: &str| {
        (0..rows.num_rows())
            .filter(|&i| kinds.value(i) == kind && delta.is_null(i))
            .count()
    };
    let count = |kind: &str| {
        (0..rows.num_rows())
            .filter(|&i| kinds.value(i) == kind)
            .count()
    };
    assert!(count("unpriced_event") > 0 && without("unpriced_event") == count("unpriced_event"));
    assert!(
        md.contains(&format!(
            "| unpriced_event | {} | 0.000 (no row has a delta) | the price book has no rate for the event",
            count("unpriced_event")
        )),
        "{md}"
    );
    let mismatched = without("account_mismatch");
    assert!(mismatched > 1 && mismatched < count("account_mismatch"));
    assert!(
        md.contains(&format!(
            "({mismatched} rows without a delta) | an entry (a debit, adjustment or refund) \
             on another account than its event's"
        )),
        "{md}"
    );
    let no_delta = (0..rows.num_rows()).filter(|&i| delta.is_null(i)).count();
    let expected = thousandths(summary["credits"]["expected"].as_str().unwrap());
    let recorded_total = thousandths(summary["credits"]["recorded"].as_str().unwrap());
    // Signed thousandths as the outputs write credits.
    let credits = |t: i128| {
        let sign = if t < 0 { "-" } else { "" };
        format!("{sign}{}.{:03}", t.abs() / 1000, t.abs() % 1000)
    };
    assert!(
        md.contains(&format!(
            "It is not a reconciliation of credits recorded − expected ({}): rows of events \
             without a rate have no delta ({no_delta} rows);",
            credits(recorded_total - expected)
        )),
        "{md}"
    );
}

/// The report's discrepancy CSVs add `entry_account_ids` after the contract's columns: on
/// an `account_mismatch` row, the accounts its entries were charged to (from the ledger),
/// which the contract's columns do not name; empty on rows of events with no such entry.
#[test]
fn report_csvs_name_the_account_an_account_mismatch_charged() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = repo().join("fixtures/demo");
    let out = tmp.path().join("reconcile");
    run_command_ok("reconcile", &demo, AS_OF, &out);
    // entry_id -> account_id, from the ledger itself.
    let mut entry_account = BTreeMap::new();
    for entry in std::fs::read_dir(demo.join("debits")).unwrap() {
        let batch = read_parquet(&entry.unwrap().path().join("part-0.parquet"));
        let column = |name: &str| {
            let c = batch.column_by_name(name).unwrap();
            arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).unwrap()
        };
        let (ids, accounts) = (column("entry_id"), column("account_id"));
        let ids = ids
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        let accounts = accounts
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        for i in 0..batch.num_rows() {
            entry_account.insert(ids.value(i).to_string(), accounts.value(i).to_string());
        }
    }
    let (header, rows) = read_csv(&out.join("report/discrepancies.csv"));
    let (contract_header, contract_rows) = read_csv(&out.join("discrepancies.csv"));
    assert_eq!(header[..header.len() - 1], contract_header[..]);
    assert_eq!(header.last().unwrap(), "entry_account_ids");
    assert_eq!(rows.len(), contract_rows.len());
    let at = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (kind, account, event, entries, others) = (
        at("kind"),
        at("account_id"),
        at("event_id"),
        at("entry_ids"),
        at("entry_account_ids"),
    );
    let mismatched: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r[kind] == "account_mismatch")
        .collect();
    assert!(mismatched.len() > 1);
    for row in &mismatched {
        let mut charged: Vec<String> = (row[entries].split(';'))
            .map(|e| entry_account[e].clone())
            .filter(|a| *a != row[account])
            .collect();
        charged.sort();
        charged.dedup();
        assert!(!charged.is_empty());
        assert_eq!(row[others], charged.join(";"), "{row:?}");
    }
    let mismatched_events: Vec<&str> = mismatched.iter().map(|r| r[event].as_str()).collect();
    for row in rows
        .iter()
        .filter(|r| !mismatched_events.contains(&r[event].as_str()))
    {
        assert_eq!(row[others], "", "{row:?}");
    }
}

/// `report/credits-by-product.csv` says the unit of each line's quantity: the units of
/// the rates that priced the line's events. A model's own rate from mid-month in another
/// unit: its line is in both (the generic rate priced the earlier events); the same rate
/// dated after every event: the generic unit only; an unpriced line has none.
#[test]
fn credits_by_product_says_the_units_its_rates_priced_in() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let book = std::fs::read_to_string(data.join("pricebook.toml")).unwrap();
    let unit_of = |from: &str, name: &str| {
        std::fs::write(
            data.join("pricebook.toml"),
            format!(
                "{book}\n[[rates]]\nproduct = \"studio\"\naction = \"prompt_to_video\"\nmodel = \
                 \"hailuo-02\"\nunit = \"clip\"\ncredits_per_unit = \"40\"\neffective_from = {from}\n"
            ),
        )
        .unwrap();
        let out = tmp.path().join(name);
        run_command_ok("reconcile", &data, AS_OF, &out);
        let (header, lines) = read_csv(&out.join("report/credits-by-product.csv"));
        assert_eq!(header[5..8], ["quantity", "unit", "expected_credits"]);
        let unit = |product: &str, action: &str, model: &str| {
            let line = lines
                .iter()
                .find(|l| l[0] == product && l[1] == action && l[2] == model);
            line.unwrap_or_else(|| panic!("no line {product} {action} {model}"))[6].clone()
        };
        (
            unit("studio", "prompt_to_video", "hailuo-02"),
            unit("studio", "prompt_to_video", "veo-3"),
            unit("captions", "ai_dubbing", ""),
        )
    };
    // hailuo-02's events run from 2026-11-01 to 2026-11-19.
    assert_eq!(
        unit_of("2026-11-10T00:00:00Z", "mid-month"),
        ("clip;second".into(), "second".into(), String::new())
    );
    assert_eq!(
        unit_of("2026-12-15T00:00:00Z", "in-advance"),
        ("second".into(), "second".into(), String::new())
    );
}

#[test]
fn spreadsheet_csvs_hold_the_parquet_rows_with_formatted_money() {
    let tmp = tempfile::tempdir().unwrap();
    for (scenario, exponent) in [("close_invoice_overage", 2), ("close_jpy", 0)] {
        let dir = repo().join("fixtures/golden").join(scenario);
        let args: toml::Table =
            toml::from_str(&std::fs::read_to_string(dir.join("args.toml")).unwrap()).unwrap();
        let out = tmp.path().join(scenario);
        run_command_ok(
            args["command"].as_str().unwrap(),
            &dir.join("data"),
            args["as_of"].as_str().unwrap(),
            &out,
        );
        for table in [
            "rejects",
            "invoices",
            "invoice_lines",
            "renewals",
            "allocations_next",
            "grants_next",
        ] {
            let parquet = read_parquet(&out.join(format!("{table}.parquet")));
            let (header, rows) = read_csv(&out.join(format!("{table}.csv")));
            assert_eq!(
                rows.len(),
                parquet.num_rows(),
                "{scenario} {table}.csv rows"
            );
            // The Parquet's columns in order, each `X_minor` followed by `X`.
            let mut want = Vec::new();
            for f in parquet.schema().fields() {
                want.push(f.name().clone());
                if let Some(base) = f.name().strip_suffix("_minor") {
                    want.push(base.to_string());
                }
            }
            assert_eq!(header, want, "{scenario} {table}.csv header");
        }
        let (header, rows) = read_csv(&out.join("invoices.csv"));
        let col = |name: &str| header.iter().position(|h| h == name).unwrap();
        assert!(!rows.is_empty());
        for r in &rows {
            for money in ["plan_price", "overage_amount", "total"] {
                let minor: i64 = r[col(&format!("{money}_minor"))].parse().unwrap();
                assert_eq!(
                    r[col(money)],
                    tally::export::format_minor(minor, exponent),
                    "{scenario}: {money}"
                );
                if exponent == 2 {
                    assert_eq!(r[col(money)].split('.').nth(1).map(str::len), Some(2));
                } else {
                    assert!(!r[col(money)].contains('.'));
                }
            }
            for credits in ["included_credits", "credits_used", "unreconciled_credits"] {
                let text = &r[col(credits)];
                assert_eq!(text.split('.').nth(1).map(str::len), Some(3), "{text}");
            }
            for instant in ["period_start", "period_end"] {
                let text = &r[col(instant)];
                assert!(
                    tally::time::parse_instant(text).is_some() && text.ends_with('Z'),
                    "{text}"
                );
            }
        }
    }
}

// ---- hostile ids -----------------------------------------------------------------------

const HOSTILE_ACCOUNT: &str = "<b>acct&\"1'</b>";
const HOSTILE_EVENT: &str = "=HYPERLINK(\"http://evil.example\",\"x\")";
const HOSTILE_MODEL: &str = "<script>alert(1)</script>";

fn t(text: &str) -> i64 {
    tally::time::parse_instant(text).unwrap()
}

/// A data root whose ids are markup and spreadsheet formulas: a missing debit, an amount
/// mismatch and an orphan debit whose event id starts with `-`.
fn hostile_root(root: &Path) {
    use tally::amount::Milli;
    use tally::write::{write_parquet, Table};
    std::fs::create_dir_all(root).unwrap();
    std::fs::copy(
        repo().join("fixtures/pricebook.toml"),
        root.join("pricebook.toml"),
    )
    .unwrap();
    for d in ["usage", "allocations", "debits"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let accounts = [HOSTILE_ACCOUNT, "plain"];
    let allocations = Table::default()
        .str("account_id", accounts)
        .str("plan_id", ["pro", "pro"])
        .ts("period_start", [t("2026-11-01"); 2])
        .ts("period_end", [t("2026-12-01"); 2])
        .credits("included_credits", [Milli::from_units(200); 2])
        .opt_ts("billing_anchor", [None, None])
        .str("status", ["active", "active"])
        .finish();
    write_parquet(&root.join("allocations/a.parquet"), &allocations).unwrap();
    let usage = Table::default()
        .str("event_id", [HOSTILE_EVENT, "+evt-2", "evt-3"])
        .str("account_id", [HOSTILE_ACCOUNT, HOSTILE_ACCOUNT, "plain"])
        .str("product", ["studio", "studio", "@studio"])
        .str("action", ["prompt_to_video"; 3])
        .opt_str("model", [Some(HOSTILE_MODEL), None, None])
        .credits("quantity", [Milli::from_units(2); 3])
        .str("status", ["succeeded"; 3])
        .ts(
            "occurred_at",
            [
                t("2026-11-03T10:00:00Z"),
                t("2026-11-04T10:00:00Z"),
                t("2026-11-05T10:00:00Z"),
            ],
        )
        .opt_ts("ingested_at", [None, None, None])
        .finish();
    write_parquet(&root.join("usage/u.parquet"), &usage).unwrap();
    let debits = Table::default()
        .str("entry_id", ["e-1", "-e2"])
        .str("account_id", [HOSTILE_ACCOUNT, HOSTILE_ACCOUNT])
        .opt_str("event_id", [Some("+evt-2"), Some("-no-such-event")])
        .str("kind", ["debit", "debit"])
        .credits("credits", [Milli::from_units(3), Milli::from_units(5)])
        .ts(
            "recorded_at",
            [t("2026-11-04T10:00:01Z"), t("2026-11-06T00:00:00Z")],
        )
        .finish();
    write_parquet(&root.join("debits/d.parquet"), &debits).unwrap();
}

#[test]
fn ids_are_escaped_in_the_report_and_neutralised_in_spreadsheet_csvs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    hostile_root(&data);
    let out = tmp.path().join("out");
    run_command_ok("reconcile", &data, AS_OF, &out);
    check_report(&out);

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(!html.contains(HOSTILE_ACCOUNT) && !html.contains("<b>"));
    assert!(html.contains("&lt;b&gt;acct&amp;&quot;1&#39;&lt;/b&gt;"));
    // Chromium reads the escaped id back as text, and builds no element from it.
    let dom = rendered_dom(&out.join("report.html"));
    assert!(!dom.contains("<b>") && !dom.contains("<script"));
    assert!(dom.contains("&lt;b&gt;acct&amp;\"1'&lt;/b&gt;"), "{dom}");

    // discrepancies.csv keeps the Parquet's exact values (the contract's file)...
    let exact = std::fs::read_to_string(out.join("discrepancies.csv")).unwrap();
    assert_eq!(exact, render(&out.join("discrepancies.parquet"), &[]));
    assert!(exact.contains(",\"=HYPERLINK(") && exact.contains(",-no-such-event,"));
    // ...the report/ files of the same rows are spreadsheet-safe.
    let (header, rows) = read_csv(&out.join("report/account-01.csv"));
    let event = header.iter().position(|h| h == "event_id").unwrap();
    let entries = header.iter().position(|h| h == "entry_ids").unwrap();
    let account = header.iter().position(|h| h == "account_id").unwrap();
    let events: Vec<&str> = rows.iter().map(|r| r[event].as_str()).collect();
    assert!(
        events.contains(&"'=HYPERLINK(\"http://evil.example\",\"x\")"),
        "{events:?}"
    );
    assert!(events.contains(&"'+evt-2") && events.contains(&"'-no-such-event"));
    assert!(rows.iter().any(|r| r[entries] == "'-e2"));
    assert!(rows.iter().all(|r| r[account] == HOSTILE_ACCOUNT));
    // The report links its discrepancy total to the neutralised copy, never to the raw file.
    let links = hrefs(&html);
    assert!(links.iter().any(|h| h == "report/discrepancies.csv"));
    assert!(!links.iter().any(|h| h == "discrepancies.csv"), "{links:?}");
    let all = std::fs::read_to_string(out.join("report/discrepancies.csv")).unwrap();
    assert!(all.contains(",\"'=HYPERLINK(") && !all.contains(",\"=HYPERLINK("));
    let (_, products) = read_csv(&out.join("report/credits-by-product.csv"));
    assert!(products.iter().any(|r| r[0] == "'@studio"), "{products:?}");
    assert!(products.iter().any(|r| r[2] == HOSTILE_MODEL));
    // No file is named after an id.
    for (name, _) in folder_bytes(&out) {
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b)),
            "{name}"
        );
    }
}
