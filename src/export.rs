//! CSV exports for spreadsheets, and the `report/` files `report.html` links to.
//!
//! Every spreadsheet CSV follows the same rules (README, "CSV exports"): a header row;
//! RFC 3339 UTC instants; credits as text with exactly three decimals; a money column
//! `X_minor` (integer minor units, as in the Parquet) followed by `X`, the same amount
//! formatted with the currency's exponent (`-12.34`, JPY `1234`, BHD `1.234`); lists joined
//! with `;`; null as an empty cell; and text cells that a spreadsheet would read as a
//! formula (starting with `=`, `+`, `-`, `@`, tab or carriage return) prefixed with `'`.
//!
//! `discrepancies.csv` is not one of these: it keeps the contract's exact form (every value
//! equal to the Parquet's, see [`crate::write::table_csv`]).

use crate::amount::Milli;
use crate::breakdown::{MixFigures, MixKey};
use crate::error::{Result, TallyError};
use crate::model::{Dataset, Reason};
use crate::reconcile::Kind;
use crate::run::RunOutput;
use crate::write::{push_cell, HashedFile};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type, Schema};
use arrow::record_batch::RecordBatch;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

/// The folder (inside the run folder) of the CSV files `report.html` links to.
pub const REPORT_DIR: &str = "report";

/// A text cell a spreadsheet would read as a formula gets a leading apostrophe (OWASP's
/// advice for CSV injection); any other text is unchanged.
pub fn safe_text(text: &str) -> Cow<'_, str> {
    match text.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => Cow::Owned(format!("'{text}")),
        _ => Cow::Borrowed(text),
    }
}

/// An amount of minor units as a decimal string with the currency's exponent: `-1234`
/// USD (2) is `-12.34`, JPY (0) `-1234`, BHD (3) `-1.234`. Exact integer arithmetic.
pub fn format_minor(minor: i64, exponent: u32) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = u128::from(minor.unsigned_abs());
    if exponent == 0 {
        return format!("{sign}{abs}");
    }
    let scale = 10u128.pow(exponent);
    let width = exponent as usize;
    format!("{sign}{}.{:0width$}", abs / scale, abs % scale)
}

/// The column holding minor units of money: `X_minor` (INT64), followed in a spreadsheet
/// CSV by `X`, the formatted amount.
fn money_column(name: &str, data_type: &DataType) -> Option<String> {
    let base = name.strip_suffix("_minor")?;
    (*data_type == DataType::Int64).then(|| base.to_string())
}

fn header(schema: &Schema) -> Vec<String> {
    let mut names = Vec::new();
    for f in schema.fields() {
        names.push(f.name().clone());
        if let Some(formatted) = money_column(f.name(), f.data_type()) {
            names.push(formatted);
        }
    }
    names
}

/// Which money columns a table has (`X_minor` followed by `X`), by column index.
fn money_flags(schema: &Schema) -> Vec<bool> {
    schema
        .fields()
        .iter()
        .map(|f| money_column(f.name(), f.data_type()).is_some())
        .collect()
}

/// Write one row: text neutralised, credits with 3 decimals, instants RFC 3339, money
/// followed by its formatted amount. Common types are written without a string per cell
/// (`invoice_lines.csv` can hold tens of millions of rows).
fn write_row<W: Write>(
    w: &mut csv::Writer<W>,
    batch: &RecordBatch,
    row: usize,
    money: &[bool],
    exponent: u32,
    buf: &mut String,
) -> std::result::Result<(), csv::Error> {
    for (column, &is_money) in batch.columns().iter().zip(money) {
        buf.clear();
        if column.is_null(row) {
            w.write_field("")?;
            if is_money {
                w.write_field("")?;
            }
            continue;
        }
        match column.data_type() {
            DataType::Utf8 => {
                let text = column.as_string::<i32>().value(row);
                w.write_field(safe_text(text).as_bytes())?;
            }
            DataType::Int64 => {
                let v = column.as_primitive::<Int64Type>().value(row);
                w.write_field(itoa::Buffer::new().format(v))?;
                if is_money {
                    w.write_field(format_minor(v, exponent))?;
                }
            }
            DataType::List(_) => {
                push_cell(buf, column, row);
                w.write_field(safe_text(buf).as_bytes())?;
            }
            _ => {
                push_cell(buf, column, row);
                w.write_field(buf.as_bytes())?;
            }
        }
    }
    w.write_record(None::<&[u8]>)
}

fn csv_err(e: csv::Error) -> TallyError {
    TallyError::output("csv", e)
}

/// A CSV writer of this project's form (`\n` line ends, quoting only where needed).
pub(crate) fn csv_writer<W: Write>(w: W) -> csv::Writer<W> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(w)
}

/// The header line of a CSV with these column names.
pub(crate) fn header_line<I: IntoIterator<Item = T>, T: AsRef<[u8]>>(
    names: I,
) -> csv::Result<Vec<u8>> {
    let mut w = csv_writer(Vec::new());
    w.write_record(names)?;
    w.into_inner().map_err(|e| e.into_error().into())
}

/// Rows one thread renders at a time when a CSV is rendered in parallel: a piece is worth
/// a task, and a window of pieces in memory stays small (see [`write_lines`]).
const PIECE_ROWS: usize = 8192;

/// The CSV lines of some consecutive rows, and (when asked for) where each line ends in
/// `bytes`.
struct Piece {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

/// Writes one row's CSV line (a scratch string given for cells rendered as text).
type LineFn<'a> =
    dyn Fn(&mut csv::Writer<Vec<u8>>, usize, &mut String) -> csv::Result<()> + Sync + 'a;

/// The CSV lines of `rows`, each written by `line`, as one piece; with `line_ends`, where
/// each ends (the writer is flushed after every line for it: a file written whole needs no
/// ends, and its writer flushes only when its buffer fills).
fn render_piece(
    rows: std::ops::Range<usize>,
    line: &LineFn<'_>,
    line_ends: bool,
) -> csv::Result<Piece> {
    let mut w = csv_writer(Vec::new());
    let mut ends = Vec::with_capacity(if line_ends { rows.len() } else { 0 });
    let mut buf = String::new();
    for row in rows {
        line(&mut w, row, &mut buf)?;
        if line_ends {
            w.flush()?;
            ends.push(w.get_ref().len());
        }
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(Piece { bytes, ends })
}

/// The CSV lines of `rows`, each written by `line`, in pieces of [`PIECE_ROWS`] rows
/// rendered on the pool's threads; the pieces in row order. Rendering a row is what
/// writing a CSV costs (one large CSV rendered on one thread took a good part of a
/// reconcile's write stage; measured: benches/README.md, "Profiles and experiments
/// (2026-12-04, night: the read-back's own thread, spill ids as they are, CSVs in
/// pieces)"); a CSV writer holds no state from one record to the next, so the pieces put
/// together are the file one writer would have written.
///
/// Only a worker of the pool hands pieces to the pool; any other thread renders them
/// itself, one after another. A thread outside the pool may be one that a worker waits for
/// (a streamed table's CSV thread, [`StreamedCsv`]): asking the pool from there deadlocked a
/// close at one thread, whose only worker was the one waiting. A worker that waits on its
/// own pieces renders them itself meanwhile, so from a worker the pool always gets on.
fn render_lines(
    rows: std::ops::Range<usize>,
    line: &LineFn<'_>,
    line_ends: bool,
) -> csv::Result<Vec<Piece>> {
    use rayon::prelude::*;
    let pieces = rows.clone().step_by(PIECE_ROWS);
    let piece =
        |start: usize| render_piece(start..(start + PIECE_ROWS).min(rows.end), line, line_ends);
    match rayon::current_thread_index() {
        Some(_) => pieces
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(piece)
            .collect(),
        None => pieces.map(piece).collect(),
    }
}

/// Write the CSV lines of rows `0..rows` (each written by `line`) to `out`, rendered in
/// parallel (from a worker of the pool, see [`render_lines`]) a window of pieces at a
/// time: memory holds a window (four pieces a thread), not the file.
pub(crate) fn write_lines<W: Write>(
    out: &mut W,
    rows: usize,
    line: &LineFn<'_>,
) -> csv::Result<()> {
    let window = PIECE_ROWS * 4 * rayon::current_num_threads().max(1);
    for start in (0..rows).step_by(window) {
        for piece in render_lines(start..(start + window).min(rows), line, false)? {
            out.write_all(&piece.bytes)?;
        }
    }
    Ok(())
}

/// A spreadsheet CSV of some rows of a table (in the given order).
pub fn sheet_csv_rows(
    batch: &RecordBatch,
    rows: impl IntoIterator<Item = usize>,
    exponent: u32,
) -> Result<Vec<u8>> {
    let mut w = csv_writer(Vec::new());
    w.write_record(header(&batch.schema())).map_err(csv_err)?;
    let money = money_flags(&batch.schema());
    let mut buf = String::new();
    for row in rows {
        write_row(&mut w, batch, row, &money, exponent, &mut buf).map_err(csv_err)?;
    }
    w.into_inner()
        .map_err(|e| TallyError::output("csv", e.to_string()))
}

/// A spreadsheet CSV of a whole table.
pub fn sheet_csv(batch: &RecordBatch, exponent: u32) -> Result<Vec<u8>> {
    sheet_csv_rows(batch, 0..batch.num_rows(), exponent)
}

/// [`sheet_csv`], written to `path` as it is made (not gathered in memory first), its rows
/// rendered in parallel (`write_lines`: from a worker of the pool, a write job).
pub fn write_sheet_csv(
    path: &Path,
    batch: &RecordBatch,
    exponent: u32,
) -> Result<crate::write::Sha256Hex> {
    let schema = batch.schema();
    let money = money_flags(&schema);
    crate::write::write_through(path, |out| {
        out.write_all(&header_line(header(&schema))?)?;
        write_lines(out, batch.num_rows(), &|w, row, buf| {
            write_row(w, batch, row, &money, exponent, buf)
        })
    })
}

/// A spreadsheet CSV written a batch at a time (a table streamed from its runs beside its
/// Parquet file: [`crate::write::write_streamed`]), row by row on the thread that calls
/// it: a thread of its own, which a worker of the pool waits for (so it renders its rows
/// itself, as `render_lines` would on such a thread).
pub struct StreamedCsv<'a> {
    path: &'a Path,
    w: csv::Writer<BufWriter<HashedFile>>,
    money: Vec<bool>,
    exponent: u32,
    buf: String,
}

impl<'a> StreamedCsv<'a> {
    /// Create the file and write the header of `schema` (into the buffer: a file that
    /// cannot be written fails at a later write, named).
    pub fn create(path: &'a Path, schema: &Schema, exponent: u32) -> Result<StreamedCsv<'a>> {
        let file = HashedFile::create(path)?;
        let mut w = csv_writer(BufWriter::with_capacity(1 << 20, file));
        w.write_record(header(schema))
            .map_err(|e| failed_writing(path, e))?;
        Ok(StreamedCsv {
            path,
            w,
            money: money_flags(schema),
            exponent,
            buf: String::new(),
        })
    }

    pub fn write(&mut self, chunk: &RecordBatch) -> Result<()> {
        for row in 0..chunk.num_rows() {
            write_row(
                &mut self.w,
                chunk,
                row,
                &self.money,
                self.exponent,
                &mut self.buf,
            )
            .map_err(|e| failed_writing(self.path, e))?;
        }
        Ok(())
    }

    /// Flush the file (synced when its folder is published); its sha256.
    pub fn finish(self) -> Result<crate::write::Sha256Hex> {
        let path = self.path;
        let buffered = self.w.into_inner().map_err(|e| failed_writing(path, e))?;
        HashedFile::finish_buffered(buffered, path)
    }
}

/// Writing the CSV at `path` failed: named, so that a full disk says which file it
/// stopped.
fn failed_writing(path: &Path, e: impl ToString) -> TallyError {
    TallyError::output(path.display().to_string(), e)
}

// ---- the report/ files ------------------------------------------------------------------

/// Days since 1970-01-01 of an instant (its UTC date).
pub fn utc_day(t: crate::time::Micros) -> i64 {
    t.div_euclid(86_400 * crate::time::MICROS_PER_SECOND)
}

/// `YYYY-MM-DD` of a day number.
pub fn day_label(day: i64) -> String {
    let t = day.saturating_mul(86_400 * crate::time::MICROS_PER_SECOND);
    let stamp = crate::time::format_instant(t);
    stamp.split('T').next().unwrap_or(&stamp).to_string()
}

/// A CSV file `report.html` links to, and how many data rows it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Linked {
    /// Relative to the run folder, `/`-separated.
    pub path: String,
    pub rows: u64,
    /// The file's sha256, for the manifest.
    pub sha256: crate::write::Sha256Hex,
}

/// Discrepancy rows of one UTC day of `occurred_at` (or of none: orphan and manual entries).
pub struct DayGroup {
    /// `None`: rows without an event date.
    pub day: Option<i64>,
    pub rows: u64,
    pub delta: Milli,
    pub file: Linked,
}

pub struct RejectGroup {
    pub dataset: Dataset,
    pub reason: Reason,
    pub file: Linked,
}

/// The lines of one (product, action), summed.
pub struct ProductGroup {
    pub product: String,
    pub action: String,
    pub figures: MixFigures,
    /// Its (product, action, model) lines, in `file`.
    pub file: Linked,
}

/// The most product/action rows `report.html` shows (all are in `credits-by-product.csv`).
pub const SHOWN_PRODUCTS: usize = 50;

/// Everything under `report/`, by the figure that links to it.
#[derive(Default)]
pub struct ReportFiles {
    /// Every discrepancy row, neutralised for spreadsheets (the contract's
    /// `discrepancies.csv` keeps raw values for diffing and joins).
    pub discrepancies: Linked,
    pub kinds: BTreeMap<Kind, Linked>,
    pub days: Vec<DayGroup>,
    pub rejects: Vec<RejectGroup>,
    /// Aligned with `breakdown.top_accounts`; `None` for an account without discrepancy rows.
    pub accounts: Vec<Option<Linked>>,
    /// Every (product, action, model) line.
    pub products: Option<Linked>,
    /// The [`SHOWN_PRODUCTS`] product/actions with the most expected credits (then bytes).
    pub product_groups: Vec<ProductGroup>,
    /// Product/actions beyond those shown.
    pub more_product_groups: usize,
}

impl ReportFiles {
    /// Every file, for the manifest.
    pub fn all(&self) -> Vec<&Linked> {
        let mut all: Vec<&Linked> = vec![&self.discrepancies];
        all.extend(self.kinds.values());
        all.extend(self.days.iter().map(|d| &d.file));
        all.extend(self.rejects.iter().map(|r| &r.file));
        all.extend(self.accounts.iter().flatten());
        all.extend(&self.products);
        all.extend(self.product_groups.iter().map(|g| &g.file));
        all
    }
}

/// A table's spreadsheet CSV rendered once, row by row: the files of `report/` that hold
/// some of its rows copy their bytes (the discrepancy rows go to four files).
pub struct Rendered {
    header: Vec<u8>,
    bytes: Vec<u8>,
    /// Where each row's line ends in `bytes`.
    ends: Vec<usize>,
}

impl Rendered {
    pub fn of(batch: &RecordBatch, exponent: u32) -> Result<Rendered> {
        let schema = batch.schema();
        let header = header_line(header(&schema)).map_err(csv_err)?;
        let money = money_flags(&schema);
        let pieces = render_lines(
            0..batch.num_rows(),
            &|w, row, buf| write_row(w, batch, row, &money, exponent, buf),
            true,
        )
        .map_err(csv_err)?;
        let mut bytes = Vec::with_capacity(pieces.iter().map(|p| p.bytes.len()).sum());
        let mut ends = Vec::with_capacity(batch.num_rows());
        for piece in pieces {
            let base = bytes.len();
            ends.extend(piece.ends.iter().map(|end| base + end));
            bytes.extend_from_slice(&piece.bytes);
        }
        Ok(Rendered {
            header,
            bytes,
            ends,
        })
    }

    /// The CSV line of `row`.
    fn line(&self, row: usize) -> &[u8] {
        let start = if row == 0 { 0 } else { self.ends[row - 1] };
        &self.bytes[start..self.ends[row]]
    }

    /// The CSV file of some of the rows (in the given order).
    #[cfg(test)]
    fn file(&self, rows: &[usize]) -> Vec<u8> {
        let mut out = self.header.clone();
        for &row in rows {
            out.extend_from_slice(self.line(row));
        }
        out
    }
}

/// Where the link to a file of rows goes in [`ReportFiles`].
#[derive(Clone, Copy)]
enum Slot {
    Discrepancies,
    Kind(Kind),
    /// Index into `days`.
    Day(usize),
    /// Index into `rejects`.
    Reject(usize),
    /// Rank (from 0) of a top account.
    Account(usize),
}

fn write_rows(dir: &Path, name: String, rendered: &Rendered, rows: &[usize]) -> Result<Linked> {
    let path = format!("{REPORT_DIR}/{name}");
    // Line by line through the file's buffer: no copy of the file's rows in memory (the
    // report's files are written in parallel, each beside the others).
    let sha256 = crate::write::write_through(&dir.join(&path), |out| {
        out.write_all(&rendered.header)?;
        rows.iter()
            .try_for_each(|&row| out.write_all(rendered.line(row)))
    })?;
    Ok(Linked {
        path,
        rows: rows.len() as u64,
        sha256,
    })
}

/// Write `report/` under `dir`: the discrepancy rows of each kind, of each day and of each
/// top account, the rejects of each (dataset, reason), and credits by product/action/model.
/// File names never hold an id: kinds, dates, datasets and reasons are fixed vocabularies,
/// accounts and product/actions are numbered by rank. Only non-empty files are written.
pub fn write_report_files(
    dir: &Path,
    out: &RunOutput,
    discrepancies: &RecordBatch,
    rejects: &RecordBatch,
) -> Result<ReportFiles> {
    make_report_dir(&dir.join(REPORT_DIR))?;
    let exponent = out.book.exponent;
    let rejects = Rendered::of(rejects, exponent)?;
    let discrepancies = crate::write::report_discrepancies_table(discrepancies, out);
    let discrepancies = Rendered::of(&discrepancies, exponent)?;
    let groups = RowGroups::of(out);
    let mut files = write_row_files(dir, &discrepancies, &rejects, &groups)?;
    write_product_files(dir, out, &mut files)?;
    Ok(files)
}

/// Make the report folder. Not `create_dir_all`: a staging folder an interrupt has just
/// removed must stay gone, not be made again (with what the writers put in it before the
/// process ends).
fn make_report_dir(report_dir: &Path) -> Result<()> {
    match std::fs::create_dir(report_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(TallyError::write(report_dir, e))
        }
        _ => Ok(()),
    }
}

/// The rows of each file of rows the report links to (besides all discrepancies), by
/// index in the run's discrepancies or rejects.
struct RowGroups {
    by_kind: BTreeMap<Kind, Vec<usize>>,
    /// (no date, day): dated rows by day, then the rows without a date; with their Σ delta.
    by_day: BTreeMap<(bool, i64), (Vec<usize>, Milli)>,
    by_reason: BTreeMap<(Dataset, Reason), Vec<usize>>,
    /// The discrepancies of each top account, by rank.
    by_account: Vec<Vec<usize>>,
}

impl RowGroups {
    fn of(out: &RunOutput) -> RowGroups {
        let mut by_kind: BTreeMap<Kind, Vec<usize>> = BTreeMap::new();
        // (no date, day): dated rows by day, then the rows without a date.
        let mut by_day: BTreeMap<(bool, i64), (Vec<usize>, Milli)> = BTreeMap::new();
        for (i, d) in out.discrepancies.iter().enumerate() {
            by_kind.entry(d.kind).or_default().push(i);
            let key = match d.occurred_at {
                Some(t) => (false, utc_day(t)),
                None => (true, 0),
            };
            let day = by_day.entry(key).or_default();
            day.0.push(i);
            // A summary figure, like summary.json's: saturating, unpriced rows count 0.
            day.1 = Milli(
                day.1
                     .0
                    .saturating_add(d.delta_credits.unwrap_or_default().0),
            );
        }
        let mut by_reason: BTreeMap<(Dataset, Reason), Vec<usize>> = BTreeMap::new();
        for (i, r) in out.rejects.iter().enumerate() {
            by_reason.entry((r.dataset, r.reason)).or_default().push(i);
        }
        // Discrepancies are in account order: an account's rows are one range.
        let by_account: Vec<Vec<usize>> = (out.breakdown.top_accounts.iter())
            .map(|account| {
                let id = account.account_id.as_bytes();
                let start = out
                    .discrepancies
                    .partition_point(|d| d.account_id.as_bytes() < id);
                let end = out
                    .discrepancies
                    .partition_point(|d| d.account_id.as_bytes() <= id);
                (start..end).collect()
            })
            .collect();
        RowGroups {
            by_kind,
            by_day,
            by_reason,
            by_account,
        }
    }
}

/// Write every file of rows, in the order the report lists them, each with the place in
/// the returned files its link goes to.
fn write_row_files(
    dir: &Path,
    discrepancies: &Rendered,
    rejects: &Rendered,
    groups: &RowGroups,
) -> Result<ReportFiles> {
    let all: Vec<usize> = (0..discrepancies.ends.len()).collect();
    let RowGroups {
        by_kind,
        by_day,
        by_reason,
        by_account,
    } = groups;
    let mut files = ReportFiles {
        accounts: vec![None; by_account.len()],
        ..ReportFiles::default()
    };
    let mut wanted: Vec<(Slot, String, &Rendered, &[usize])> = vec![(
        Slot::Discrepancies,
        "discrepancies.csv".into(),
        discrepancies,
        &all,
    )];
    for (&kind, rows) in by_kind {
        let name = format!("discrepancies-kind-{}.csv", kind.name());
        wanted.push((Slot::Kind(kind), name, discrepancies, rows));
    }
    for (&(no_date, day), (rows, delta)) in by_day {
        let label = if no_date {
            "none".to_string()
        } else {
            day_label(day)
        };
        let name = format!("discrepancies-day-{label}.csv");
        wanted.push((Slot::Day(files.days.len()), name, discrepancies, rows));
        files.days.push(DayGroup {
            day: (!no_date).then_some(day),
            rows: rows.len() as u64,
            delta: *delta,
            file: Linked::default(),
        });
    }
    for (&(dataset, reason), rows) in by_reason {
        let name = format!("rejects-{}-{}.csv", dataset.name(), reason.name());
        wanted.push((Slot::Reject(files.rejects.len()), name, rejects, rows));
        files.rejects.push(RejectGroup {
            dataset,
            reason,
            file: Linked::default(),
        });
    }
    for (rank, rows) in by_account.iter().enumerate() {
        if !rows.is_empty() {
            let name = format!("account-{:02}.csv", rank + 1);
            wanted.push((Slot::Account(rank), name, discrepancies, rows));
        }
    }
    // The files are written in parallel (each copies its rows' lines; they are synced
    // together when the folder is published).
    let written: Vec<Result<(Slot, Linked)>> = {
        use rayon::prelude::*;
        wanted
            .into_par_iter()
            .map(|(slot, name, rendered, rows)| Ok((slot, write_rows(dir, name, rendered, rows)?)))
            .collect()
    };
    // The first failure in the report's order, whichever failed first in time.
    for file in written {
        let (slot, linked) = file?;
        match slot {
            Slot::Discrepancies => files.discrepancies = linked,
            Slot::Kind(kind) => {
                files.kinds.insert(kind, linked);
            }
            Slot::Day(i) => files.days[i].file = linked,
            Slot::Reject(i) => files.rejects[i].file = linked,
            Slot::Account(rank) => files.accounts[rank] = Some(linked),
        }
    }

    Ok(files)
}

/// The first [`SHOWN_PRODUCTS`] of the ranked product/actions (each gets a file and a row
/// of `report.html`), and how many more there are (named in the report's note).
fn shown_products<T>(mut ranked: Vec<T>) -> (Vec<T>, usize) {
    let more = ranked.len().saturating_sub(SHOWN_PRODUCTS);
    ranked.truncate(SHOWN_PRODUCTS);
    (ranked, more)
}

/// Write the credits-by-product breakdown and the files of its top (product, action)
/// groups.
fn write_product_files(dir: &Path, out: &RunOutput, files: &mut ReportFiles) -> Result<()> {
    let mix = &out.breakdown.mix;
    let units = out.book.all_units();
    let lines: Vec<(&MixKey, &MixFigures)> = mix.lines.iter().collect();
    // Written also without a line (its header only), as the run's tables are: the events
    // and expected credits of an empty month link to it, and an auditor's script that
    // opens it finds it.
    files.products = Some(write_mix(
        dir,
        &units,
        "credits-by-product.csv".into(),
        &lines,
    )?);
    if !mix.is_empty() {
        let mut groups: BTreeMap<(&str, &str), Vec<(&MixKey, &MixFigures)>> = BTreeMap::new();
        for (key, figures) in &lines {
            groups
                .entry((&*key.0, &*key.1))
                .or_default()
                .push((key, figures));
        }
        let mut ranked: Vec<(ProductKey<'_>, MixFigures, MixLines<'_>)> =
            Vec::with_capacity(groups.len());
        for (key, lines) in groups {
            let mut sum = MixFigures::default();
            for (_, f) in &lines {
                sum.add(f)?;
            }
            ranked.push((key, sum, lines));
        }
        ranked.sort_by(|a, b| {
            b.1.expected_credits
                .cmp(&a.1.expected_credits)
                .then_with(|| b.1.events.cmp(&a.1.events))
                .then_with(|| {
                    (a.0 .0.as_bytes(), a.0 .1.as_bytes())
                        .cmp(&(b.0 .0.as_bytes(), b.0 .1.as_bytes()))
                })
        });
        let (shown, more) = shown_products(ranked);
        files.more_product_groups = more;
        for (rank, ((product, action), figures, lines)) in shown.into_iter().enumerate() {
            let name = format!("product-{:02}.csv", rank + 1);
            files.product_groups.push(ProductGroup {
                product: product.to_string(),
                action: action.to_string(),
                figures,
                file: write_mix(dir, &units, name, &lines)?,
            });
        }
    }
    Ok(())
}

/// (product, action) of a group of lines.
type ProductKey<'a> = (&'a str, &'a str);
/// Lines of the credits-by-product breakdown, borrowed.
type MixLines<'a> = Vec<(&'a MixKey, &'a MixFigures)>;

/// The columns of `credits-by-product.csv` and `product-NN.csv`.
pub const MIX_COLUMNS: [&str; 9] = [
    "product",
    "action",
    "model",
    "events",
    "priced_events",
    "quantity",
    "unit",
    "expected_credits",
    "recorded_credits",
];

/// The unit(s) a breakdown line's quantity is in, `;`-joined in the price book's order:
/// the units of the rates that priced its events (several where a key's rate versions, or
/// the models a line merges, use different units; empty when none was priced or the rates
/// have no unit).
fn line_unit(units: &[&str], figures: &MixFigures) -> String {
    crate::price::unit_names(units, figures.units).join(";")
}

/// Write breakdown `lines` to `report/{name}`; `units`: the price book's units
/// ([`crate::pricebook::PriceBook::all_units`]), which the lines' unit bits index.
fn write_mix(
    dir: &Path,
    units: &[&str],
    name: String,
    lines: &[(&MixKey, &MixFigures)],
) -> Result<Linked> {
    let path = format!("{REPORT_DIR}/{name}");
    let mut w = csv_writer(Vec::new());
    w.write_record(MIX_COLUMNS).map_err(csv_err)?;
    for ((product, action, _, model), f) in lines {
        w.write_record([
            safe_text(product).into_owned(),
            safe_text(action).into_owned(),
            model
                .as_deref()
                .map(safe_text)
                .unwrap_or_default()
                .into_owned(),
            f.events.to_string(),
            f.priced_events.to_string(),
            f.quantity.to_string(),
            safe_text(&line_unit(units, f)).into_owned(),
            f.expected_credits.to_string(),
            f.recorded_credits.to_string(),
        ])
        .map_err(csv_err)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| TallyError::output("csv", e.to_string()))?;
    let sha256 = crate::write::write_bytes(&dir.join(&path), &bytes)?;
    Ok(Linked {
        path,
        rows: lines.len() as u64,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::Table;

    /// 50 product/actions are all shown; one more is counted, not shown.
    #[test]
    fn product_actions_are_shown_up_to_the_limit_and_counted_past_it() {
        let ranked = |n: usize| (0..n).collect::<Vec<usize>>();
        let (shown, more) = shown_products(ranked(SHOWN_PRODUCTS));
        assert_eq!((shown, more), (ranked(SHOWN_PRODUCTS), 0));
        let (shown, more) = shown_products(ranked(SHOWN_PRODUCTS + 1));
        assert_eq!((shown, more), (ranked(SHOWN_PRODUCTS), 1));
        assert_eq!(shown_products(ranked(0)), (vec![], 0));
    }

    #[test]
    fn money_is_formatted_with_the_currency_exponent() {
        assert_eq!(format_minor(1234, 2), "12.34");
        assert_eq!(format_minor(-1234, 2), "-12.34");
        assert_eq!(format_minor(-5, 2), "-0.05");
        assert_eq!(format_minor(0, 2), "0.00");
        assert_eq!(format_minor(7, 2), "0.07");
        assert_eq!(format_minor(1234, 0), "1234");
        assert_eq!(format_minor(-1234, 0), "-1234");
        assert_eq!(format_minor(0, 0), "0");
        assert_eq!(format_minor(1234, 3), "1.234");
        assert_eq!(format_minor(-1, 3), "-0.001");
        assert_eq!(format_minor(10_000, 4), "1.0000");
        assert_eq!(format_minor(i64::MIN, 2), "-92233720368547758.08");
        assert_eq!(format_minor(i64::MAX, 0), "9223372036854775807");
    }

    #[test]
    fn credits_keep_three_decimals() {
        assert_eq!(Milli(-5).to_string(), "-0.005");
        assert_eq!(Milli(0).to_string(), "0.000");
        assert_eq!(Milli(1500).to_string(), "1.500");
        assert_eq!(Milli(-40_000).to_string(), "-40.000");
    }

    #[test]
    fn formula_like_text_is_neutralised_and_nothing_else() {
        for bad in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(safe_text(bad), format!("'{bad}"));
        }
        for good in ["acct-1", "", "a=b", "'quoted", "1.5", " =x"] {
            assert_eq!(safe_text(good), good);
        }
    }

    #[test]
    fn a_sheet_csv_adds_formatted_money_after_minor_units() {
        let batch = Table::default()
            .str("invoice_id", ["=HYPERLINK(\"x\")", "INV-b"])
            .ts("period_start", [0, 1_500_000])
            .i64("total_minor", [-1234, 5])
            .credits("credits_used", [Milli(-5), Milli(12_000)])
            .opt_str("model", [None, Some("-m")])
            .i64("event_count", [3, 4])
            .finish();
        let usd = String::from_utf8(sheet_csv(&batch, 2).unwrap()).unwrap();
        assert_eq!(
            usd,
            "invoice_id,period_start,total_minor,total,credits_used,model,event_count\n\
             \"'=HYPERLINK(\"\"x\"\")\",1970-01-01T00:00:00Z,-1234,-12.34,-0.005,,3\n\
             INV-b,1970-01-01T00:00:01.500Z,5,0.05,12.000,'-m,4\n"
        );
        let jpy = String::from_utf8(sheet_csv(&batch, 0).unwrap()).unwrap();
        assert!(
            jpy.contains(",-1234,-1234,") && jpy.contains(",5,5,"),
            "{jpy}"
        );
        let bhd = String::from_utf8(sheet_csv(&batch, 3).unwrap()).unwrap();
        assert!(
            bhd.contains(",-1234,-1.234,") && bhd.contains(",5,0.005,"),
            "{bhd}"
        );
    }

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(day_label(0), "1970-01-01");
        let t = crate::time::parse_instant("2026-11-03T23:59:59.999999Z").unwrap();
        assert_eq!(day_label(utc_day(t)), "2026-11-03");
        let t = crate::time::parse_instant("1969-12-31T23:00:00Z").unwrap();
        assert_eq!(day_label(utc_day(t)), "1969-12-31");
    }

    /// A table of `rows` rows whose cells need quoting, neutralising and money formatting.
    fn varied_table(rows: usize) -> RecordBatch {
        let text: Vec<Option<String>> = (0..rows)
            .map(|i| match i % 5 {
                0 => None,
                1 => Some(format!("=cmd{i}")),
                2 => Some(format!("a,\"b\"\n{i}")),
                _ => Some(format!("plain-{i}")),
            })
            .collect();
        let minor: Vec<Option<i64>> = (0..rows)
            .map(|i| (i % 7 != 0).then_some(i as i64 * 37 - 5_000))
            .collect();
        RecordBatch::try_from_iter([
            (
                "note",
                std::sync::Arc::new(arrow::array::StringArray::from(text))
                    as arrow::array::ArrayRef,
            ),
            (
                "total_minor",
                std::sync::Arc::new(arrow::array::Int64Array::from(minor))
                    as arrow::array::ArrayRef,
            ),
        ])
        .unwrap()
    }

    /// The CSVs rendered in parallel pieces (`write_lines`, `Rendered`) are byte for byte
    /// the ones a single writer makes, at the piece and window sizes and one past them.
    #[test]
    fn csv_rendered_in_pieces_is_the_one_writer_csv() {
        // On this thread (outside the pool: pieces one after another) and on a worker of
        // a pool of two (pieces in parallel).
        csv_in_pieces_is_the_one_writer_csv();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(csv_in_pieces_is_the_one_writer_csv);
    }

    fn csv_in_pieces_is_the_one_writer_csv() {
        let window = PIECE_ROWS * 4 * rayon::current_num_threads();
        let dir = tempfile::tempdir().unwrap();
        for rows in [
            0,
            1,
            PIECE_ROWS - 1,
            PIECE_ROWS,
            PIECE_ROWS + 1,
            window,
            window + 1,
        ] {
            let batch = varied_table(rows);
            let one_writer = sheet_csv(&batch, 2).unwrap();
            let path = dir.path().join("sheet.csv");
            write_sheet_csv(&path, &batch, 2).unwrap();
            assert!(std::fs::read(&path).unwrap() == one_writer, "{rows} rows");
            // Streamed in two chunks, each rendered piece by piece on this thread.
            let streamed = dir.path().join("streamed.csv");
            let mut csv = StreamedCsv::create(&streamed, &batch.schema(), 2).unwrap();
            let half = rows / 2;
            csv.write(&batch.slice(0, half)).unwrap();
            csv.write(&batch.slice(half, rows - half)).unwrap();
            csv.finish().unwrap();
            assert!(
                std::fs::read(&streamed).unwrap() == one_writer,
                "{rows} rows, streamed"
            );
            let rendered = Rendered::of(&batch, 2).unwrap();
            let all: Vec<usize> = (0..rows).collect();
            assert!(rendered.file(&all) == one_writer, "{rows} rows, rendered");
            let last_two: Vec<usize> = (rows.saturating_sub(2)..rows).collect();
            let some = sheet_csv_rows(&batch, last_two.iter().copied(), 2).unwrap();
            assert!(
                rendered.file(&last_two) == some,
                "{rows} rows, the last two"
            );
            // The contract's CSV (discrepancies.csv), against one writer of raw cells.
            let mut w = csv_writer(Vec::new());
            w.write_record(["note", "total_minor"]).unwrap();
            let mut text = String::new();
            for row in 0..rows {
                for column in batch.columns() {
                    text.clear();
                    push_cell(&mut text, column, row);
                    w.write_field(&text).unwrap();
                }
                w.write_record(None::<&[u8]>).unwrap();
            }
            let contract = crate::write::table_csv(&batch).unwrap();
            assert!(
                contract == w.into_inner().unwrap(),
                "{rows} rows, contract CSV"
            );
        }
    }

    /// A streamed CSV that cannot be written (a full disk: `/dev/full`) names its file.
    #[test]
    fn a_streamed_csv_names_its_file_when_it_cannot_be_written() {
        let path = Path::new("/dev/full");
        if !path.exists() {
            return;
        }
        let text = "x".repeat(1000);
        let column = arrow::array::StringArray::from(vec![text.as_str(); 2000]);
        let batch = RecordBatch::try_from_iter([(
            "event_id",
            std::sync::Arc::new(column) as arrow::array::ArrayRef,
        )])
        .unwrap();
        let mut csv = StreamedCsv::create(path, &batch.schema(), 2).unwrap();
        // 2 MB of rows: past the 1 MiB buffer, so the write itself reaches the device.
        let e = csv.write(&batch).unwrap_err().to_string();
        assert!(
            e.starts_with("writing /dev/full: ") && e.contains("No space left on device"),
            "{e}"
        );
    }
}
