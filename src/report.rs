//! `summary.json`, `summary.md` and `manifest.json`.

use crate::amount::Milli;
use crate::close::InvoiceRow;
use crate::error::{Result, TallyError};
use crate::model::{Dataset, Mode};
use crate::reconcile::Kind;
use crate::run::{DatasetCounts, RunOutput, UsageCounts};
use crate::summary;
use crate::time::format_instant;
use crate::write::VERSION;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Serialize)]
pub struct KindLine {
    pub kind: &'static str,
    pub count: u64,
    pub delta_credits: Milli,
    /// Its rows without a delta (events without a rate), which `delta_credits` leaves out:
    /// for summary.md's and report.html's words, not a figure of summary.json.
    #[serde(skip)]
    pub rows_without_delta: u64,
}

#[derive(Serialize)]
pub struct Summary {
    pub tool: &'static str,
    pub version: &'static str,
    pub command: &'static str,
    pub as_of: String,
    pub settle_seconds: i64,
    pub currency: String,
    pub datasets: BTreeMap<&'static str, DatasetCounts>,
    /// Rejected allocation rows of account-periods this run covers (what `[alert]
    /// max_rejected_allocations` counts; `datasets.allocations.rejected` counts them all).
    pub allocations_rejected_covered: u64,
    pub usage: UsageCounts,
    pub ledger: LedgerCounts,
    pub events: EventCounts,
    pub discrepancies: DiscrepancyCounts,
    pub credits: CreditTotals,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close: Option<CloseTotals>,
    pub conservation: Conservation,
}

#[derive(Serialize)]
pub struct LedgerCounts {
    pub rows_read: u64,
    pub entries_in_window: u64,
    pub outside_window: u64,
    pub rejected: u64,
}

#[derive(Serialize)]
pub struct EventCounts {
    pub in_window: u64,
    pub matched: u64,
    pub pending: u64,
    pub with_discrepancy: u64,
}

#[derive(Serialize)]
pub struct DiscrepancyCounts {
    pub total: u64,
    /// Σ |delta_credits| over all rows (unpriced rows count 0).
    pub abs_delta_credits: Milli,
    pub by_kind: Vec<KindLine>,
}

/// Σ |delta_credits| over discrepancy rows (saturating: a summary figure, not an amount).
pub fn abs_delta(rows: &[crate::reconcile::DiscrepancyRow]) -> Milli {
    Milli(
        rows.iter()
            .map(|d| d.delta_credits.unwrap_or_default().0.saturating_abs())
            .fold(0i64, i64::saturating_add),
    )
}

#[derive(Serialize)]
pub struct CreditTotals {
    pub expected: Milli,
    pub recorded: Milli,
    pub granted: Milli,
    pub consumed: Milli,
    pub overage: Milli,
    pub remaining: Milli,
}

#[derive(Serialize)]
pub struct CloseTotals {
    pub invoices: u64,
    pub total_minor: i64,
    pub overage_amount_minor: i64,
    pub expired_credits: Milli,
    pub rollover_credits: Milli,
    pub carried_credits: Milli,
    pub renewed_periods: u64,
}

#[derive(Serialize)]
pub struct Conservation {
    /// usage rows read = events in window + identical duplicates + rejected + outside.
    pub usage_rows: bool,
    pub account_periods_checked: u64,
    /// used = consumed + overage and granted = consumed + remaining, every account-period.
    pub account_periods: bool,
    /// remaining = expired + rolled over + carried, every closed period (true in reconcile).
    pub close: bool,
    pub holds: bool,
}

pub fn summary(out: &RunOutput) -> Result<Summary> {
    let figures = summary::by_kind(&out.discrepancies)?;
    let by_kind: Vec<KindLine> = Kind::ALL
        .iter()
        .map(|&kind| {
            let f = figures.iter().find(|f| f.kind == kind);
            KindLine {
                kind: kind.name(),
                count: f.map_or(0, |f| f.count),
                delta_credits: f.map_or(Milli::ZERO, |f| f.delta),
                rows_without_delta: f.map_or(0, |f| f.rows_without_delta),
            }
        })
        .collect();
    let t = &out.totals;
    let events_with_discrepancy = {
        let mut ids: Vec<&str> = out
            .discrepancies
            .iter()
            .filter(|d| d.occurred_at.is_some())
            .filter_map(|d| d.event_id.as_deref())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len() as u64
    };
    let mut datasets = BTreeMap::new();
    for d in Dataset::ALL {
        datasets.insert(d.name(), out.counts[d as usize].clone());
    }
    let close = match out.settings.mode {
        Mode::Reconcile => None,
        Mode::Close => Some(CloseTotals {
            invoices: out.invoices.len() as u64,
            total_minor: invoiced_sum(out, "invoiced total", |i| i.total_minor)?,
            overage_amount_minor: invoiced_sum(out, "overage amount", |i| i.overage_amount_minor)?,
            expired_credits: t.expired_credits,
            rollover_credits: t.rollover_credits,
            carried_credits: t.carried_credits,
            renewed_periods: out.allocations_next.len() as u64,
        }),
    };
    Ok(Summary {
        tool: "tally",
        version: VERSION,
        command: out.settings.mode.name(),
        as_of: format_instant(out.settings.as_of),
        settle_seconds: out.settings.settle_micros / 1_000_000,
        currency: out.book.currency.clone(),
        datasets,
        allocations_rejected_covered: crate::rejected_allocations_covered(out),
        usage: out.usage.clone(),
        ledger: LedgerCounts {
            rows_read: out.counts[Dataset::Debits as usize].rows_read,
            entries_in_window: t.entries_in_window,
            outside_window: out.ledger_entries_outside,
            rejected: out.counts[Dataset::Debits as usize].rejected,
        },
        events: EventCounts {
            in_window: t.events_in_window,
            matched: t.matched_events,
            pending: t.pending_events,
            with_discrepancy: events_with_discrepancy,
        },
        discrepancies: DiscrepancyCounts {
            total: out.discrepancies.len() as u64,
            abs_delta_credits: abs_delta(&out.discrepancies),
            by_kind,
        },
        credits: CreditTotals {
            expected: t.expected_credits,
            recorded: t.recorded_credits,
            granted: t.granted_credits,
            consumed: t.consumed_credits,
            overage: t.overage_credits,
            remaining: t.remaining_credits,
        },
        close,
        conservation: conservation(out),
    })
}

/// A money figure summed over the close's invoices, in minor units. Each invoice fits i64;
/// their sum may not, with a price book's price mistyped by some digits: named, with its
/// two amounts, rather than a panic.
fn invoiced_sum(out: &RunOutput, what: &str, minor: impl Fn(&InvoiceRow) -> i64) -> Result<i64> {
    out.invoices.iter().try_fold(0i64, |sum, invoice| {
        let amount = minor(invoice);
        sum.checked_add(amount).ok_or_else(|| {
            TallyError::Overflow(format!(
                "the close's {what} over every invoice passes the largest amount in minor units \
                 ({}): {sum} + {amount} minor units of {}; check the plans' prices and overage prices in the \
                 price book, then rerun",
                i64::MAX,
                out.book.currency
            ))
        })
    })
}

/// What a kind's Σ delta leaves out, in the words summary.md and report.html both write
/// after summary.json's figure (`None`: every row has a delta).
pub(crate) fn without_delta_words(k: &KindLine) -> Option<String> {
    match (k.count, k.rows_without_delta) {
        (_, 0) => None,
        (count, none) if count == none => Some("no row has a delta".to_string()),
        (_, 1) => Some("1 row without a delta".to_string()),
        (_, none) => Some(format!("{none} rows without a delta")),
    }
}

/// A note under the totals of a close in which some account closed more than one period
/// (empty otherwise): the credit totals are sums over account-periods, so a grant that lasts
/// over two of them (a top-up, a promo) counts in both periods' granted, remaining and
/// carried credits, and the totals are more than what the account holds. The conservation
/// equations hold period by period, which is why the figures are summed so.
/// `accounts`: the invoices' account ids, in the invoices' (account_id, period_start) order,
/// so that an account's invoices are adjacent. `code` renders a file or table name (Markdown's
/// backticks, HTML's `<code>`); the rest of the note is plain words and numbers, the same in
/// summary.md and report.html.
pub(crate) fn several_periods_note<'a>(
    accounts: impl Iterator<Item = &'a str> + Clone,
    code: impl Fn(&str) -> String,
) -> Option<String> {
    let invoices = accounts.clone().count();
    let repeated = (accounts.clone().zip(accounts.skip(1)))
        .filter(|(a, b)| a == b)
        .count();
    if repeated == 0 {
        return None;
    }
    let are = if repeated == 1 { "is" } else { "are" };
    Some(format!(
        "{repeated} of the {invoices} invoices {are} of an account with an earlier period in \
         this close. Credits granted, remaining and carried are summed over account-periods, \
         so a grant that lasts over several of one account's periods (a top-up, a promo) \
         counts in each; credits rolled over count every period's rollover, of which only \
         each account's last becomes a grant in {}. Each period's own figures are in {}.",
        code("grants_next"),
        code("renewals.csv"),
    ))
}

/// The conservation equations, recomputed on the run's totals. Each was also asserted per
/// account-period during the run (a broken one stops it before publishing), so in a
/// published summary they hold; computing them here keeps the file honest on its own.
fn conservation(out: &RunOutput) -> Conservation {
    let u = &out.usage;
    let t = &out.totals;
    let usage_rows = u.add_up();
    let consumed_plus = |x: Milli| t.consumed_credits.checked_add(x).ok();
    let used: Option<Milli> = out
        .invoices
        .iter()
        .try_fold(Milli::ZERO, |acc, i| acc.checked_add(i.credits_used).ok());
    let account_periods = consumed_plus(t.remaining_credits) == Some(t.granted_credits)
        && (out.settings.mode == Mode::Reconcile || used == consumed_plus(t.overage_credits));
    let close = out.settings.mode == Mode::Reconcile
        || Milli::sum([t.expired_credits, t.rollover_credits, t.carried_credits]).ok()
            == Some(t.remaining_credits);
    Conservation {
        usage_rows,
        account_periods_checked: t.account_periods,
        account_periods,
        close,
        holds: usage_rows && account_periods && close,
    }
}

/// An id as the text of a Markdown table cell: the characters that would end the cell,
/// start markup or raw HTML are backslash-escaped, control characters (a newline would
/// end the table) and invisible ones that reorder or hide text
/// ([`crate::error::hides_or_reorders_text`]) written as `\u{..}`, and so are spaces at
/// either end (which a table cell drops), so that `summary.md` shows every id as it is.
fn md_text(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    let after_leading = id.trim_start_matches(' ');
    let inner = after_leading.trim_end_matches(' ');
    let (leading, trailing) = (
        id.len() - after_leading.len(),
        after_leading.len() - inner.len(),
    );
    out.push_str(&"\\u{20}".repeat(leading));
    for c in inner.chars() {
        match c {
            '\\' | '|' | '<' | '>' | '&' | '[' | ']' | '`' | '*' => {
                out.push('\\');
                out.push(c);
            }
            c if crate::error::escaped_when_shown(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out.push_str(&"\\u{20}".repeat(trailing));
    out
}

pub fn summary_markdown(out: &RunOutput, s: &Summary) -> Result<String> {
    let mut md = String::new();
    let _ = writeln!(md, "# tally {} — as of {}\n", s.command, s.as_of);
    md_figures(&mut md, s);
    if let Some(c) = &s.close {
        md_close_figures(&mut md, out, s, c);
    }
    md_by_kind(&mut md, s);
    md_top_accounts(&mut md, out)?;
    md_conservation(&mut md, s);
    Ok(md)
}

/// The run's figures, one table row each.
fn md_figures(md: &mut String, s: &Summary) {
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| usage rows read | {} |", s.usage.rows_read);
    let _ = writeln!(md, "| events in window | {} |", s.usage.events_in_window);
    let _ = writeln!(
        md,
        "| identical duplicates | {} |",
        s.usage.identical_duplicates
    );
    let _ = writeln!(md, "| usage rows rejected | {} |", s.usage.rejected);
    let _ = writeln!(
        md,
        "| usage rows outside the window | {} |",
        s.usage.outside_window
    );
    let _ = writeln!(md, "| matched events | {} |", s.events.matched);
    let _ = writeln!(
        md,
        "| pending events (within settle) | {} |",
        s.events.pending
    );
    let _ = writeln!(
        md,
        "| account-periods | {} |",
        s.conservation.account_periods_checked
    );
    let _ = writeln!(md, "| credits expected | {} |", s.credits.expected);
    let _ = writeln!(md, "| credits recorded | {} |", s.credits.recorded);
    let _ = writeln!(md, "| credits granted | {} |", s.credits.granted);
    let _ = writeln!(
        md,
        "| credits consumed from grants | {} |",
        s.credits.consumed
    );
    let _ = writeln!(
        md,
        "| overage credits (billed only on plans with an overage price) | {} |",
        s.credits.overage
    );
    let _ = writeln!(
        md,
        "| credits remaining (unconsumed, grants past their expiry included) | {} |",
        s.credits.remaining
    );
    let rejected: u64 = s.datasets.values().map(|d| d.rejected).sum();
    let _ = writeln!(md, "| rows rejected (all datasets) | {rejected} |");
}

/// A close's figures, in the same table: invoices, money, rollover and expiry; then, under
/// the table, the note on accounts closed for several periods.
fn md_close_figures(md: &mut String, out: &RunOutput, s: &Summary, c: &CloseTotals) {
    let _ = writeln!(md, "| invoices | {} |", c.invoices);
    // Money as a reader writes it, the minor units (the files' INT64) beside it.
    let money = |minor: i64| {
        format!(
            "{} {} ({minor} minor units)",
            crate::export::format_minor(minor, out.book.exponent),
            s.currency
        )
    };
    let _ = writeln!(md, "| invoiced total | {} |", money(c.total_minor));
    let _ = writeln!(
        md,
        "| of which overage | {} |",
        money(c.overage_amount_minor)
    );
    let _ = writeln!(
        md,
        "| credits rolled over / expired / carried | {} / {} / {} |",
        c.rollover_credits, c.expired_credits, c.carried_credits
    );
    let accounts = out.invoices.iter().map(|i| &*i.account_id);
    if let Some(note) = several_periods_note(accounts, |name| format!("`{name}`")) {
        let _ = writeln!(md, "\n{note}");
    }
}

/// Each kind's rows, Σ delta and meaning, and what the deltas add up to.
fn md_by_kind(md: &mut String, s: &Summary) {
    let _ = writeln!(
        md,
        "\n## Discrepancies by kind ({} rows)\n",
        s.discrepancies.total
    );
    let _ = writeln!(
        md,
        "| kind | rows | Σ delta credits | what it means |\n|---|---:|---:|---|"
    );
    for k in &s.discrepancies.by_kind {
        let kind = Kind::parse(k.kind).expect("by_kind lists Kind::ALL's names");
        let delta = match without_delta_words(k) {
            Some(words) => format!("{} ({words})", k.delta_credits),
            None => k.delta_credits.to_string(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {delta} | {} |",
            k.kind,
            k.count,
            kind.meaning()
        );
    }
    let without_delta = s.discrepancies.by_kind.iter().map(|k| k.rows_without_delta);
    let _ = writeln!(md, "\n{}", delta_note(without_delta.sum(), s));
}

/// The ten accounts with the largest Σ |delta|.
fn md_top_accounts(md: &mut String, out: &RunOutput) -> Result<()> {
    let top = summary::top_accounts(&out.discrepancies, 10)?;
    let _ = writeln!(md, "\n## Top accounts by Σ |delta|\n");
    let _ = writeln!(
        md,
        "Ranked by the sum of |delta| over each account's rows (`report.html` ranks accounts \
         by unreconciled credits, recorded − expected, instead).\n"
    );
    if top.is_empty() {
        let _ = writeln!(md, "No discrepancies.");
    } else {
        let _ = writeln!(
            md,
            "| account | rows | Σ abs(delta) credits |\n|---|---:|---:|"
        );
        for a in top {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                md_text(&a.account_id),
                a.count,
                a.abs_delta
            );
        }
    }
    Ok(())
}

/// The conservation checks and whether they hold.
fn md_conservation(md: &mut String, s: &Summary) {
    let _ = writeln!(
        md,
        "\n## Conservation\n\nusage rows read {} = in window {} + identical duplicates {} + rejected {} + outside {}; \
         every account-period: used = consumed + overage, granted = consumed + remaining{}. Holds: {}.",
        s.usage.rows_read,
        s.usage.events_in_window,
        s.usage.identical_duplicates,
        s.usage.rejected,
        s.usage.outside_window,
        if s.close.is_some() { ", remaining = expired + rolled over + carried" } else { "" },
        if s.conservation.holds { "yes" } else { "NO" }
    );
}

/// What the by-kind deltas are, and why they do not add up to recorded − expected.
fn delta_note(without: u64, s: &Summary) -> String {
    let difference = Milli(s.credits.recorded.0.saturating_sub(s.credits.expected.0));
    format!(
        "Σ delta sums each row's recorded − expected where the row has one. It is not a \
         reconciliation of credits recorded − expected ({difference}): rows of events without \
         a rate have no delta ({without} rows); `conflicting_duplicate`, `over_limit_usage` \
         and `late_event` rows carry their event's whole delta, which the event's own row, \
         if it has one, carries too; matched events, pending events (expected, not yet \
         debited) and refunds attached to no event have no row."
    )
}

/// One input or output file in the manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rows: Option<u64>,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestSettings {
    pub settle_seconds: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub tool: String,
    pub version: String,
    pub command: String,
    pub as_of: String,
    pub settings: ManifestSettings,
    pub inputs: Vec<FileEntry>,
    pub outputs: Vec<FileEntry>,
}

impl Manifest {
    /// A published folder's manifest.json (`path`), read and parsed; an unreadable one is
    /// exit 2 naming it.
    /// The manifest at `path` and the sha256 of the bytes it was read from (one read: the
    /// figure a run logs and `tally verify --manifest-sha256` holds the file to).
    pub fn read(path: &std::path::Path) -> Result<(Manifest, crate::write::Sha256Hex)> {
        let text =
            crate::write::read_regular_to_string(path).map_err(|e| TallyError::io(path, e))?;
        let manifest = serde_json::from_str(&text).map_err(|e| {
            TallyError::input(
                path.display().to_string(),
                format!("unreadable manifest: {e}"),
            )
        })?;
        Ok((manifest, crate::write::sha256_hex(text.as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_markdown_cells_cannot_end_the_cell_or_the_table() {
        assert_eq!(md_text("acct_pro-1"), "acct_pro-1");
        assert_eq!(md_text("a|b"), "a\\|b");
        assert_eq!(md_text("<script>&"), "\\<script\\>\\&");
        assert_eq!(md_text("x\ny\r"), "x\\u{a}y\\u{d}");
        assert_eq!(
            md_text("[l](u) `c` *e* \\"),
            "\\[l\\](u) \\`c\\` \\*e\\* \\\\"
        );
        assert_eq!(md_text("ünï 名"), "ünï 名");
        // Text that would show as another id: reordered, hidden, or trimmed by the table.
        assert_eq!(md_text("acct-\u{202e}cba"), "acct-\\u{202e}cba");
        assert_eq!(md_text("a\u{200b}b\u{2028}"), "a\\u{200b}b\\u{2028}");
        assert_eq!(md_text("  lead x "), "\\u{20}\\u{20}lead x\\u{20}");
        assert_eq!(md_text("   "), "\\u{20}\\u{20}\\u{20}");
    }

    /// The note on totals summed over account-periods appears only when an account has
    /// more than one invoice in the close, and counts the invoices after an account's first.
    #[test]
    fn a_close_of_several_periods_of_an_account_says_its_totals_are_sums() {
        let note = |accounts: &[&str]| {
            several_periods_note(accounts.iter().copied(), |name| format!("`{name}`"))
        };
        assert_eq!(note(&[]), None);
        assert_eq!(note(&["a", "b", "c"]), None);
        assert_eq!(
            note(&["a", "a", "b", "c", "c", "c"]).as_deref(),
            Some(
                "3 of the 6 invoices are of an account with an earlier period in this close. \
             Credits granted, remaining and carried are summed over account-periods, so a \
             grant that lasts over several of one account's periods (a top-up, a promo) counts \
             in each; credits rolled over count every period's rollover, of which only each \
             account's last becomes a grant in `grants_next`. Each period's own figures are in \
             `renewals.csv`."
            )
        );
        assert!(note(&["a", "a", "b"])
            .is_some_and(|n| n.starts_with("1 of the 3 invoices is of an account")));
        // report.html's rendering of the names.
        let html = several_periods_note(["a", "a"].into_iter(), |name| {
            format!("<code>{name}</code>")
        });
        assert!(html.is_some_and(|n| n.contains(
            "a grant in <code>grants_next</code>. Each \
             period's own figures are in <code>renewals.csv</code>."
        )));
    }
}
