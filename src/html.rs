//! `report.html`: the run for a person, in one self-contained file (inline CSS and SVG, no
//! script, no external asset). Every figure is printed from the run's integers (the same
//! values as `summary.json`); only the charts' bar lengths are computed in floating point.
//!
//! Each figure is an element with `data-figure="<key>"`: the figure's summary.json path
//! when it is one (`usage.rows_read`, `discrepancies.by_kind.missing_debit.count`...), else
//! a key of the report's own (`by_day.*`, `products.*`, `accounts.*`, `rejects.*`,
//! `rejected_rows`); a figure that links to the rows behind it says how they relate: `data-count` (the CSV's data rows are the
//! figure) or `data-sum="<column>"` (the column's sum is the figure). Tests check both.

use crate::amount::Milli;
use crate::breakdown::AccountFigures;
use crate::export::{day_label, format_minor, Linked, ReportFiles, SHOWN_PRODUCTS};
use crate::model::Mode;
use crate::reconcile::Kind;
use crate::report::Summary;
use crate::run::RunOutput;
use std::fmt::Write as _;

/// Escape text for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Shown as `\u{..}`: as a character (or a reference to one) it would reorder
            // or hide the text around it, and an id could pass for another; a control
            // character (a tab, a newline, a NUL) would show as a space or as nothing.
            c if crate::error::escaped_when_shown(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// How a link relates to the figure it is on.
#[derive(Clone, Copy)]
enum Rel<'a> {
    /// The file's data rows are what the figure counts.
    Count,
    /// The figure is the sum of this column of the file.
    Sum(&'a str),
    /// The file holds the rows behind the figure (no single column sums to it).
    Rows,
}

/// A figure: linked to `href` when given.
fn fig(key: &str, text: &str, link: Option<(&str, Rel<'_>)>) -> String {
    let key = esc(key);
    let text = esc(text);
    match link {
        None => format!("<span class=\"fig\" data-figure=\"{key}\">{text}</span>"),
        Some((href, rel)) => {
            let rel = match rel {
                Rel::Count => " data-count=\"rows\"".to_string(),
                Rel::Sum(column) => format!(" data-sum=\"{}\"", esc(column)),
                Rel::Rows => String::new(),
            };
            format!(
                "<a class=\"fig\" href=\"{}\" data-figure=\"{key}\"{rel}>{text}</a>",
                esc(href)
            )
        }
    }
}

/// A link to a `report/` file when it exists (only non-empty ones are written).
fn linked<'a>(file: Option<&'a Linked>, rel: Rel<'a>) -> Option<(&'a str, Rel<'a>)> {
    file.map(|f| (f.path.as_str(), rel))
}

const STYLE: &str = r#"
:root { --ink: #1d2430; --muted: #5b6472; --line: #d8dde5; --bar: #3b6fb6; --warn: #b4462f; --ok: #2f7d4a; --bg: #ffffff; --band: #f4f6f9; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; color: var(--ink); background: var(--bg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
p.meta, p.note { color: var(--muted); margin: 4px 0 8px; }
nav { margin: 12px 0 0; }
nav a { margin-right: 14px; }
a { color: #1f5fa8; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: var(--band); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.id { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12.5px; overflow-wrap: anywhere; max-width: 34em; white-space: pre-wrap; }
table.figures th { font-weight: normal; color: var(--muted); }
.status { display: inline-block; padding: 2px 10px; border-radius: 10px; font-weight: 600; color: #fff; }
.status.ok { background: var(--ok); }
.status.broken { background: var(--warn); }
.grid { display: flex; flex-wrap: wrap; gap: 24px 48px; align-items: flex-start; }
svg.chart { display: block; max-width: 100%; height: auto; margin: 8px 0; }
svg.chart text { font: 12px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: var(--ink); white-space: pre; }
svg.chart .bar { fill: var(--bar); }
svg.chart a:hover .bar { fill: #23508e; }
svg.chart .axis { stroke: var(--line); }
@media print { body { padding: 0; } a { color: inherit; text-decoration: none; } }
"#;

/// One bar of a chart.
struct Bar {
    label: String,
    /// Bar length relative to the largest (geometry only).
    magnitude: f64,
    value: String,
    href: Option<String>,
}

/// The opening of a chart's `<svg>`, titled for screen readers and tooltips.
fn svg_open(title: &str, width: f64, height: f64) -> String {
    format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"{t}\" viewBox=\"0 0 {width:.1} {height:.1}\" width=\"{width:.1}\" height=\"{height:.1}\"><title>{t}</title>",
        t = esc(title)
    )
}

/// A bar's length on a scale where `max` fills `full`; a non-zero bar stays visible.
fn bar_length(magnitude: f64, max: f64, full: f64) -> f64 {
    if max > 0.0 {
        (magnitude / max * full).max(if magnitude > 0.0 { 1.5 } else { 0.0 })
    } else {
        0.0
    }
}

/// A bar's shapes, inside a link to its rows when it has one.
fn push_bar(svg: &mut String, href: Option<&str>, body: &str) {
    let _ = match href {
        Some(href) => write!(svg, "<a href=\"{}\">{body}</a>", esc(href)),
        None => write!(svg, "<g>{body}</g>"),
    };
}

/// Horizontal bars, one per row (labels left, values right).
fn hbar_chart(title: &str, bars: &[Bar]) -> String {
    if bars.is_empty() {
        return String::new();
    }
    const LABEL_W: f64 = 210.0;
    const BAR_W: f64 = 380.0;
    const ROW_H: f64 = 22.0;
    let width = LABEL_W + BAR_W + 110.0;
    let height = ROW_H * bars.len() as f64 + 8.0;
    let max = bars.iter().map(|b| b.magnitude).fold(0.0, f64::max);
    let mut svg = svg_open(title, width, height);
    for (i, bar) in bars.iter().enumerate() {
        let y = 4.0 + ROW_H * i as f64;
        let len = bar_length(bar.magnitude, max, BAR_W);
        let label = shorten(&bar.label, 30);
        let tip = format!("{}: {}", bar.label, bar.value);
        let body = format!(
            "<title>{}</title><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect class=\"bar\" x=\"{LABEL_W}\" y=\"{:.1}\" width=\"{len:.1}\" height=\"{:.1}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            esc(&tip),
            LABEL_W - 8.0,
            y + 15.0,
            esc(&label),
            y + 3.0,
            ROW_H - 6.0,
            LABEL_W + len + 6.0,
            y + 15.0,
            esc(&bar.value)
        );
        push_bar(&mut svg, bar.href.as_deref(), &body);
    }
    svg.push_str("</svg>");
    svg
}

/// Vertical columns over consecutive categories (the days), labels below some of them.
fn column_chart(title: &str, bars: &[Bar]) -> String {
    if bars.is_empty() {
        return String::new();
    }
    const PLOT_H: f64 = 160.0;
    // Room for half a label each side.
    const LEFT: f64 = 44.0;
    const LABEL_W: f64 = 84.0;
    let n = bars.len() as f64;
    let step = (680.0 / n).clamp(4.0, 40.0);
    let width = LEFT * 2.0 + step * n;
    let height = PLOT_H + 44.0;
    let max = bars.iter().map(|b| b.magnitude).fold(0.0, f64::max);
    // Label every k-th column so that labels never overlap.
    let every = (LABEL_W / step).ceil().max(1.0) as usize;
    let last = bars.len() - 1;
    // The last column (often "no event date") is always labelled; the label before it is
    // dropped when too close.
    let labelled = |i: usize| {
        i == last || (i.is_multiple_of(every) && (last - i >= every || last.is_multiple_of(every)))
    };
    let mut svg = svg_open(title, width, height);
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"/>",
        PLOT_H + 10.0,
        width - LEFT,
        PLOT_H + 10.0
    );
    for (i, bar) in bars.iter().enumerate() {
        let x = LEFT + step * i as f64;
        let h = bar_length(bar.magnitude, max, PLOT_H);
        let tip = format!("{}: {}", bar.label, bar.value);
        let mut body = format!(
            "<title>{}</title><rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\"/>",
            esc(&tip),
            x + step * 0.1,
            PLOT_H + 10.0 - h,
            step * 0.8
        );
        if labelled(i) {
            let _ = write!(
                body,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x + step / 2.0,
                PLOT_H + 26.0,
                esc(&shorten(&bar.label, 12))
            );
        }
        push_bar(&mut svg, bar.href.as_deref(), &body);
    }
    svg.push_str("</svg>");
    svg
}

/// At most `max` characters, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let head: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{head}…")
}

/// A bar length for an amount (geometry only; the printed figure comes from the integer).
fn magnitude(m: Milli) -> f64 {
    m.0.unsigned_abs() as f64
}

/// The `report.html` of a run. `files` are the `report/` files written beside it.
pub fn render(out: &RunOutput, s: &Summary, files: &ReportFiles) -> String {
    let close = out.settings.mode == Mode::Close;
    let mut h = String::with_capacity(64 * 1024);
    let title = format!("tally {} — as of {}", s.command, s.as_of);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(&title)
    );
    let status = if s.conservation.holds {
        "<span class=\"status ok\" data-figure=\"conservation.holds\">conservation holds</span>"
    } else {
        "<span class=\"status broken\" data-figure=\"conservation.holds\">conservation BROKEN</span>"
    };
    let _ = write!(
        h,
        "<header>\n<h1>{}</h1>\n<p class=\"meta\">as of <span data-figure=\"as_of\">{}</span> · settle {} s · currency <span data-figure=\"currency\">{}</span> · tally {} · {status}</p>\n",
        esc(&format!("tally {} report", s.command)),
        esc(&s.as_of),
        s.settle_seconds,
        esc(&s.currency),
        esc(s.version)
    );
    h.push_str("<nav><a href=\"#totals\">Totals</a><a href=\"#by-kind\">Discrepancies by kind</a><a href=\"#by-day\">by day</a><a href=\"#products\">Credits by product</a><a href=\"#accounts\">Top accounts</a><a href=\"#rejects\">Rejected rows</a><a href=\"#conservation\">Conservation</a><a href=\"#files\">Files</a></nav>\n</header>\n");

    totals(&mut h, out, s, files, close);
    by_kind(&mut h, s, files);
    by_day(&mut h, files);
    products(&mut h, out, s, files);
    accounts(&mut h, out, files);
    rejects(&mut h, s, files);
    conservation(&mut h, s);
    file_list(&mut h, close, files);
    h.push_str("</body>\n</html>\n");
    h
}

/// One row of a figures table: what it is, its `data-figure` key, the figure, the rows
/// behind it, and a unit printed after it (money's currency).
struct FigureRow<'a> {
    label: &'a str,
    key: &'a str,
    value: String,
    link: Option<(&'a str, Rel<'a>)>,
    unit: &'a str,
}

fn figure_row<'a>(
    label: &'a str,
    key: &'a str,
    value: String,
    link: Option<(&'a str, Rel<'a>)>,
) -> FigureRow<'a> {
    FigureRow {
        label,
        key,
        value,
        link,
        unit: "",
    }
}

/// A table of figures under a heading.
fn figure_table(h: &mut String, heading: &str, rows: &[FigureRow<'_>]) {
    let _ = writeln!(
        h,
        "<table class=\"figures\">\n<thead><tr><th>{}</th><th class=\"num\"></th></tr></thead>\n<tbody>",
        esc(heading)
    );
    for r in rows {
        let unit = if r.unit.is_empty() {
            String::new()
        } else {
            format!(" {}", esc(r.unit))
        };
        let _ = writeln!(
            h,
            "<tr><th>{}</th><td class=\"num\">{}{unit}</td></tr>",
            esc(r.label),
            fig(r.key, &r.value, r.link)
        );
    }
    h.push_str("</tbody>\n</table>\n");
}

fn totals(h: &mut String, out: &RunOutput, s: &Summary, files: &ReportFiles, close: bool) {
    h.push_str("<section id=\"totals\">\n<h2>Totals</h2>\n<div class=\"grid\">\n");
    usage_figures(h, s, files, close);
    credit_figures(h, s, files, close);
    if let Some(cl) = &s.close {
        close_figures(h, out, s, cl);
    }
    h.push_str("</div>\n");
    let _ = writeln!(
        h,
        "<p class=\"note\">Every linked figure opens the CSV rows it counts or sums. Events are not exported one by one (a run may hold 100M): event figures link to the credits-by-product breakdown they sum. Credits have 3 decimals; money is in {} with {} decimals. Credits remaining are the grants' unconsumed credits, including those of grants already past their expiry (a close counts them as expired). Overage credits of a plan that blocks overage (<code>overage = \"block\"</code>) are not billed (they are reported as <code>over_limit_usage</code>), so overage credits can stand beside an overage amount of 0.</p>\n</section>",
        esc(&out.book.currency),
        out.book.exponent
    );
}

/// The CSV listing the run's account-periods: invoices.csv in a close, balances.csv in a
/// reconcile.
fn periods_csv(close: bool) -> &'static str {
    if close {
        "invoices.csv"
    } else {
        "balances.csv"
    }
}

/// The figures of the usage and ledger rows, events and discrepancies.
fn usage_figures(h: &mut String, s: &Summary, files: &ReportFiles, close: bool) {
    let periods_csv = periods_csv(close);
    let products = files.products.as_ref();
    let n = |v: u64| v.to_string();
    let rejected: u64 = s.datasets.values().map(|d| d.rejected).sum();
    let (u, e) = (&s.usage, &s.events);
    figure_table(
        h,
        "usage and ledger",
        &[
            figure_row("usage rows read", "usage.rows_read", n(u.rows_read), None),
            figure_row(
                "events in the window",
                "usage.events_in_window",
                n(u.events_in_window),
                linked(products, Rel::Sum("events")),
            ),
            figure_row(
                "identical duplicates",
                "usage.identical_duplicates",
                n(u.identical_duplicates),
                None,
            ),
            figure_row("usage rows rejected", "usage.rejected", n(u.rejected), None),
            figure_row(
                "usage rows outside the window",
                "usage.outside_window",
                n(u.outside_window),
                None,
            ),
            figure_row("matched events", "events.matched", n(e.matched), None),
            figure_row(
                "pending events (within settle)",
                "events.pending",
                n(e.pending),
                None,
            ),
            figure_row(
                "events with a discrepancy",
                "events.with_discrepancy",
                n(e.with_discrepancy),
                None,
            ),
            figure_row(
                "ledger entries in the window",
                "ledger.entries_in_window",
                n(s.ledger.entries_in_window),
                None,
            ),
            figure_row(
                "discrepancy rows",
                "discrepancies.total",
                n(s.discrepancies.total),
                Some((files.discrepancies.path.as_str(), Rel::Count)),
            ),
            figure_row(
                "Σ |delta| credits",
                "discrepancies.abs_delta_credits",
                s.discrepancies.abs_delta_credits.to_string(),
                None,
            ),
            figure_row(
                "rows rejected (all datasets)",
                "rejected_rows",
                n(rejected),
                Some(("rejects.csv", Rel::Count)),
            ),
            figure_row(
                "account-periods",
                "conservation.account_periods_checked",
                n(s.conservation.account_periods_checked),
                Some((periods_csv, Rel::Count)),
            ),
        ],
    );
}

/// The credits figures: expected, recorded, granted, consumed, overage, remaining.
fn credit_figures(h: &mut String, s: &Summary, files: &ReportFiles, close: bool) {
    let periods_csv = periods_csv(close);
    let products = files.products.as_ref();
    let c = &s.credits;
    figure_table(
        h,
        "credits",
        &[
            figure_row(
                "credits expected",
                "credits.expected",
                c.expected.to_string(),
                linked(products, Rel::Sum("expected_credits")),
            ),
            figure_row(
                "credits recorded",
                "credits.recorded",
                c.recorded.to_string(),
                close.then_some(("invoices.csv", Rel::Sum("recorded_credits"))),
            ),
            figure_row(
                "credits granted",
                "credits.granted",
                c.granted.to_string(),
                (!close).then_some(("balances.csv", Rel::Sum("granted_credits"))),
            ),
            figure_row(
                "credits consumed from grants",
                "credits.consumed",
                c.consumed.to_string(),
                Some((periods_csv, Rel::Rows)),
            ),
            figure_row(
                "overage credits",
                "credits.overage",
                c.overage.to_string(),
                Some((periods_csv, Rel::Sum("overage_credits"))),
            ),
            figure_row(
                "credits remaining",
                "credits.remaining",
                c.remaining.to_string(),
                Some(if close {
                    ("renewals.csv", Rel::Rows)
                } else {
                    ("balances.csv", Rel::Sum("remaining_credits"))
                }),
            ),
        ],
    );
}

/// A close's figures: invoices, their money, rollover, expiry and renewals.
fn close_figures(h: &mut String, out: &RunOutput, s: &Summary, cl: &crate::report::CloseTotals) {
    let exponent = out.book.exponent;
    let n = |v: u64| v.to_string();
    let money = |label, key, minor: i64, column| FigureRow {
        unit: &s.currency,
        ..figure_row(
            label,
            key,
            format_minor(minor, exponent),
            Some(("invoices.csv", Rel::Sum(column))),
        )
    };
    figure_table(
        h,
        "close",
        &[
            figure_row(
                "invoices",
                "close.invoices",
                n(cl.invoices),
                Some(("invoices.csv", Rel::Count)),
            ),
            money("invoiced total", "close.total", cl.total_minor, "total"),
            figure_row(
                "invoiced total, minor units",
                "close.total_minor",
                cl.total_minor.to_string(),
                Some(("invoices.csv", Rel::Sum("total_minor"))),
            ),
            money(
                "of which overage",
                "close.overage_amount",
                cl.overage_amount_minor,
                "overage_amount",
            ),
            figure_row(
                "credits rolled over",
                "close.rollover_credits",
                cl.rollover_credits.to_string(),
                Some(("renewals.csv", Rel::Sum("rollover_credits"))),
            ),
            figure_row(
                "credits expired",
                "close.expired_credits",
                cl.expired_credits.to_string(),
                Some(("renewals.csv", Rel::Sum("expired_credits"))),
            ),
            figure_row(
                "grant credits carried",
                "close.carried_credits",
                cl.carried_credits.to_string(),
                Some(("renewals.csv", Rel::Sum("carried_grant_credits"))),
            ),
            figure_row(
                "periods renewed",
                "close.renewed_periods",
                n(cl.renewed_periods),
                Some(("allocations_next.csv", Rel::Count)),
            ),
        ],
    );
    // summary.md's note, under the same figures: totals summed over account-periods.
    let accounts = out.invoices.iter().map(|i| &*i.account_id);
    let code = |name: &str| format!("<code>{}</code>", esc(name));
    if let Some(note) = crate::report::several_periods_note(accounts, code) {
        let _ = writeln!(h, "<p class=\"note\">{note}</p>");
    }
}

fn by_kind(h: &mut String, s: &Summary, files: &ReportFiles) {
    let _ = writeln!(
        h,
        "<section id=\"by-kind\">\n<h2>Discrepancies by kind ({} rows)</h2>",
        s.discrepancies.total
    );
    let mut bars = Vec::new();
    let mut table = String::from("<table>\n<thead><tr><th>kind</th><th class=\"num\">rows</th><th class=\"num\">Σ delta credits</th><th>what it means</th></tr></thead>\n<tbody>\n");
    for k in &s.discrepancies.by_kind {
        let kind = Kind::parse(k.kind);
        let file = kind.and_then(|kind| files.kinds.get(&kind));
        let meaning = kind.map_or("", Kind::meaning);
        let key = format!("discrepancies.by_kind.{}", k.kind);
        // The rows the sum leaves out, in summary.md's words (the figure is summary.json's).
        let without_delta = crate::report::without_delta_words(k)
            .map_or(String::new(), |words| format!(" ({words})"));
        let _ = writeln!(
            table,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(k.kind),
            fig(
                &format!("{key}.count"),
                &k.count.to_string(),
                linked(file, Rel::Count)
            ),
            fig(
                &format!("{key}.delta_credits"),
                &k.delta_credits.to_string(),
                linked(file, Rel::Sum("delta_credits"))
            ) + &without_delta,
            esc(meaning),
        );
        bars.push(Bar {
            label: k.kind.to_string(),
            magnitude: k.count as f64,
            value: k.count.to_string(),
            href: file.map(|f| f.path.clone()),
        });
    }
    table.push_str("</tbody>\n</table>\n");
    let _ = writeln!(
        h,
        "<div class=\"grid\">\n{table}{}\n</div>\n<p class=\"note\">Σ delta = recorded − expected over the kind's rows that have a delta (an unpriced event has no expected credits: its rows count 0 here, so the column does not add up to recorded − expected). An event can have more than one row: <code>conflicting_duplicate</code>, <code>over_limit_usage</code> and <code>late_event</code> rows come in addition to its own kind.</p>\n</section>",
        hbar_chart("discrepancy rows by kind", &bars)
    );
}

fn by_day(h: &mut String, files: &ReportFiles) {
    h.push_str("<section id=\"by-day\">\n<h2>Discrepancies by day</h2>\n");
    if files.days.is_empty() {
        h.push_str("<p>No discrepancies.</p>\n</section>\n");
        return;
    }
    let mut bars = Vec::new();
    let mut table = String::from("<table>\n<thead><tr><th>day (UTC, occurred_at)</th><th class=\"num\">rows</th><th class=\"num\">Σ delta credits</th></tr></thead>\n<tbody>\n");
    for d in &files.days {
        let label = match d.day {
            Some(day) => day_label(day),
            None => "no event date".to_string(),
        };
        let key = format!("by_day.{}", d.day.map_or("none".to_string(), day_label));
        let _ = writeln!(
            table,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&label),
            fig(
                &format!("{key}.count"),
                &d.rows.to_string(),
                Some((&d.file.path, Rel::Count))
            ),
            fig(
                &format!("{key}.delta_credits"),
                &d.delta.to_string(),
                Some((&d.file.path, Rel::Sum("delta_credits")))
            ),
        );
        bars.push(Bar {
            label,
            magnitude: d.rows as f64,
            value: format!("{} rows", d.rows),
            href: Some(d.file.path.clone()),
        });
    }
    table.push_str("</tbody>\n</table>\n");
    let _ = writeln!(
        h,
        "{}\n{table}<p class=\"note\">Rows by the UTC date of the event's <code>occurred_at</code>. Orphan debits and manual adjustments have no event, so no event date: they are counted under “no event date” (last).</p>\n</section>",
        column_chart("discrepancy rows by day", &bars)
    );
}

fn products(h: &mut String, out: &RunOutput, s: &Summary, files: &ReportFiles) {
    h.push_str("<section id=\"products\">\n<h2>Credits by product and action</h2>\n");
    let mix = &out.breakdown.mix;
    if files.product_groups.is_empty() {
        h.push_str("<p>No events in the window.</p>\n</section>\n");
        return;
    }
    let mut bars = Vec::new();
    let mut table = String::from("<table>\n<thead><tr><th>product</th><th>action</th><th class=\"num\">events</th><th class=\"num\">priced events</th><th class=\"num\">expected credits</th><th class=\"num\">recorded credits</th><th class=\"num\">lines</th></tr></thead>\n<tbody>\n");
    for (i, g) in files.product_groups.iter().enumerate() {
        let key = format!("products.{}", i + 1);
        let path = g.file.path.as_str();
        let (product, action) = if mix.level >= 2 {
            ("(all products)".to_string(), "(all actions)".to_string())
        } else {
            (g.product.clone(), g.action.clone())
        };
        let _ = writeln!(
            table,
            "<tr><td class=\"id\">{}</td><td class=\"id\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\"><a href=\"{}\">{}</a></td></tr>",
            esc(&product),
            esc(&action),
            fig(&format!("{key}.events"), &g.figures.events.to_string(), Some((path, Rel::Sum("events")))),
            fig(
                &format!("{key}.priced_events"),
                &g.figures.priced_events.to_string(),
                Some((path, Rel::Sum("priced_events")))
            ),
            fig(
                &format!("{key}.expected_credits"),
                &g.figures.expected_credits.to_string(),
                Some((path, Rel::Sum("expected_credits")))
            ),
            fig(
                &format!("{key}.recorded_credits"),
                &g.figures.recorded_credits.to_string(),
                Some((path, Rel::Sum("recorded_credits")))
            ),
            esc(path),
            g.file.rows
        );
        bars.push(Bar {
            label: format!("{product} / {action}"),
            magnitude: magnitude(g.figures.expected_credits),
            value: g.figures.expected_credits.to_string(),
            href: Some(g.file.path.clone()),
        });
    }
    table.push_str("</tbody>\n</table>\n");
    let _ = write!(
        h,
        "{}\n{table}",
        hbar_chart("expected credits by product and action", &bars)
    );
    let on_events = mix.lines.values().try_fold(Milli::ZERO, |acc, f| {
        acc.checked_add(f.recorded_credits).ok()
    });
    let unattached = on_events.and_then(|e| s.credits.recorded.checked_sub(e).ok());
    let mut note = format!(
        "Over the events in the window: events of any status; priced events (the CSV's <code>priced_events</code>) are the succeeded ones with a rate, whose expected credits these are; recorded credits are the net of the ledger entries attached to the events. Each row links to its lines by model (a null model is its own line); <a href=\"{}\">all lines</a>.",
        esc(files.products.as_ref().map_or("", |f| f.path.as_str()))
    );
    if let Some(u) = unattached {
        let _ = write!(
            note,
            " Entries attached to no event (orphans, manual adjustments, unattached refunds) recorded {u} credits, in no row."
        );
    }
    if files.more_product_groups > 0 {
        let _ = write!(
            note,
            " The {SHOWN_PRODUCTS} product/actions with the most expected credits are shown; {} more are in the file of all lines.",
            files.more_product_groups
        );
    }
    match mix.level {
        0 => {}
        1 => note.push_str(" The run has more distinct (product, action, model) keys than the report keeps: models are merged (empty model = all models)."),
        _ => note.push_str(" The run has more distinct (product, action) keys than the report keeps: everything is one line."),
    }
    let _ = writeln!(h, "<p class=\"note\">{note}</p>\n</section>");
}

fn accounts(h: &mut String, out: &RunOutput, files: &ReportFiles) {
    let b = &out.breakdown;
    let _ = writeln!(
        h,
        "<section id=\"accounts\">\n<h2>Top accounts by unreconciled credits</h2>\n<p class=\"note\"><span data-figure=\"accounts.unreconciled\">{}</span> of <span data-figure=\"accounts.total\">{}</span> accounts have unreconciled credits (recorded − expected ≠ 0); the {} largest in absolute value are shown (ties by account id). Positive: more was recorded than the events cost; negative: less (including pending events, not yet debited).</p>",
        b.unreconciled_accounts,
        b.accounts,
        crate::breakdown::TOP_ACCOUNTS
    );
    if b.top_accounts.is_empty() {
        h.push_str("<p>Every account is reconciled.</p>\n</section>\n");
        return;
    }
    h.push_str("<table>\n<thead><tr><th class=\"num\">#</th><th>account</th><th class=\"num\">events</th><th class=\"num\">expected credits</th><th class=\"num\">recorded credits</th><th class=\"num\">unreconciled credits</th><th class=\"num\">discrepancy rows</th></tr></thead>\n<tbody>\n");
    for (i, (a, file)) in b.top_accounts.iter().zip(&files.accounts).enumerate() {
        account_row(h, i + 1, a, file.as_ref());
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}

fn account_row(h: &mut String, rank: usize, a: &AccountFigures, file: Option<&Linked>) {
    let key = format!("accounts.{rank}");
    let id = match file {
        Some(f) => format!("<a href=\"{}\">{}</a>", esc(&f.path), esc(&a.account_id)),
        None => esc(&a.account_id),
    };
    let _ = writeln!(
        h,
        "<tr><td class=\"num\">{rank}</td><td class=\"id\">{id}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
        fig(&format!("{key}.events"), &a.events_in_window.to_string(), None),
        fig(&format!("{key}.expected_credits"), &a.expected_credits.to_string(), None),
        fig(&format!("{key}.recorded_credits"), &a.recorded_credits.to_string(), None),
        fig(
            &format!("{key}.unreconciled_credits"),
            &a.unreconciled_credits.to_string(),
            None
        ),
        fig(
            &format!("{key}.discrepancy_rows"),
            &a.discrepancy_rows.to_string(),
            linked(file, Rel::Count)
        ),
    );
}

fn rejects(h: &mut String, s: &Summary, files: &ReportFiles) {
    h.push_str("<section id=\"rejects\">\n<h2>Rejected rows</h2>\n");
    let _ = writeln!(h, "<table>\n<thead><tr><th>dataset</th><th class=\"num\">files</th><th class=\"num\">rows read</th><th class=\"num\">rejected</th></tr></thead>\n<tbody>");
    for d in crate::model::Dataset::ALL {
        let name = d.name();
        let Some(c) = s.datasets.get(name) else {
            continue;
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(name),
            fig(&format!("datasets.{name}.files"), &c.files.to_string(), None),
            fig(&format!("datasets.{name}.rows_read"), &c.rows_read.to_string(), None),
            fig(&format!("datasets.{name}.rejected"), &c.rejected.to_string(), None),
        );
    }
    h.push_str("</tbody>\n</table>\n");
    if files.rejects.is_empty() {
        h.push_str("<p>No rejected rows.</p>\n</section>\n");
        return;
    }
    h.push_str("<table>\n<thead><tr><th>dataset</th><th>reason</th><th class=\"num\">rows</th></tr></thead>\n<tbody>\n");
    for g in &files.rejects {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            g.dataset.name(),
            g.reason.name(),
            fig(
                &format!("rejects.{}.{}", g.dataset.name(), g.reason.name()),
                &g.file.rows.to_string(),
                Some((&g.file.path, Rel::Count))
            )
        );
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}

fn conservation(h: &mut String, s: &Summary) {
    let u = &s.usage;
    let c = &s.credits;
    let yes = |b: bool| if b { "holds" } else { "BROKEN" };
    let _ = writeln!(
        h,
        "<section id=\"conservation\">\n<h2>Conservation</h2>\n<table>\n<tbody>\n<tr><td>usage rows read {} = in window {} + identical duplicates {} + rejected {} + outside {}</td><td>{}</td></tr>\n<tr><td>every account-period ({}): used = consumed + overage; granted {} = consumed {} + remaining {}</td><td>{}</td></tr>",
        u.rows_read,
        u.events_in_window,
        u.identical_duplicates,
        u.rejected,
        u.outside_window,
        yes(s.conservation.usage_rows),
        s.conservation.account_periods_checked,
        c.granted,
        c.consumed,
        c.remaining,
        yes(s.conservation.account_periods)
    );
    if let Some(cl) = &s.close {
        let _ = writeln!(
            h,
            "<tr><td>remaining {} = expired {} + rolled over {} + carried {}</td><td>{}</td></tr>",
            c.remaining,
            cl.expired_credits,
            cl.rollover_credits,
            cl.carried_credits,
            yes(s.conservation.close)
        );
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}

fn file_list(h: &mut String, close: bool, files: &ReportFiles) {
    let mut names = vec![files.discrepancies.path.as_str(), "rejects.csv"];
    if close {
        names.extend([
            "invoices.csv",
            "invoice_lines.csv",
            "renewals.csv",
            "allocations_next.csv",
            "grants_next.csv",
        ]);
    } else {
        names.push("balances.csv");
    }
    h.push_str("<section id=\"files\">\n<h2>Files</h2>\n<p>");
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            h.push_str(" · ");
        }
        let _ = write!(h, "<a href=\"{name}\">{name}</a>");
    }
    if let Some(p) = &files.products {
        let _ = write!(h, " · <a href=\"{}\">{}</a>", esc(&p.path), esc(&p.path));
    }
    h.push_str(" · <a href=\"summary.json\">summary.json</a> · <a href=\"manifest.json\">manifest.json</a></p>\n<p class=\"note\">CSV files open in any spreadsheet: a header row, instants in RFC 3339 UTC, credits with three decimals, money as minor units followed by the formatted amount. <code>discrepancies.csv</code> holds exactly the Parquet's values (for diffs and joins); every other CSV file, <code>report/discrepancies.csv</code> with the same rows among them, prefixes a text cell that starts with = + - @ (a formula to a spreadsheet) with <code>'</code>. Spreadsheets still turn ids that look like numbers or dates (000123, 1E5, 2026-11-01) into numbers or dates when a CSV is opened directly: import with the id columns as text to keep them.</p>\n</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(esc("plain-id_1"), "plain-id_1");
        assert_eq!(
            esc("acct-\u{202e}cba\u{feff}"),
            "acct-\\u{202e}cba\\u{feff}"
        );
        // Controls too: `acct\t1` and `acct 1` (or `acct1` and `acct1` with a NUL) would
        // show alike.
        assert_eq!(esc("acct\t1\u{0}\n"), "acct\\u{9}1\\u{0}\\u{a}");
    }

    #[test]
    fn figures_carry_their_key_and_link() {
        assert_eq!(
            fig("a.b", "<1>", None),
            "<span class=\"fig\" data-figure=\"a.b\">&lt;1&gt;</span>"
        );
        assert_eq!(
            fig("k", "3", Some(("report/x.csv", Rel::Count))),
            "<a class=\"fig\" href=\"report/x.csv\" data-figure=\"k\" data-count=\"rows\">3</a>"
        );
    }

    #[test]
    fn charts_escape_labels_and_scale_to_the_largest() {
        let bars = [
            Bar {
                label: "<script>".into(),
                magnitude: 2.0,
                value: "2".into(),
                href: None,
            },
            Bar {
                label: "b".into(),
                magnitude: 1.0,
                value: "1".into(),
                href: Some("report/b.csv".into()),
            },
        ];
        let svg = hbar_chart("t", &bars);
        assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt;"));
        assert!(svg.contains("width=\"380.0\"") && svg.contains("width=\"190.0\""));
        assert!(svg.contains("<a href=\"report/b.csv\">"));
        let days = column_chart("d", &bars);
        assert!(days.contains("height=\"160.0\"") && days.contains("height=\"80.0\""));
    }
}
