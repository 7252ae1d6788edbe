//! The close outputs that grow with the month — `billed_events` (one row per billed event)
//! and `invoice_lines` (one per account and priced product/action/model) — are not held
//! whole by a split run: each group writes its rows, in account order, to a run file; the
//! writer merges the runs by account (an account's rows are all in one run) and streams
//! them to Parquet. A whole run keeps its single run in memory.
//!
//! Run file: records of `u32` little-endian length + postcard row.

use crate::close::InvoiceLineRow;
use crate::engine::BilledEventRow;
use crate::error::{Result, TallyError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// A row of a streamed table, ordered by its account.
pub trait Keyed: Serialize + DeserializeOwned + Clone + Send + Sync {
    fn account(&self) -> &str;

    /// Whether [`Keyed::decode`] uses the previous row (the reader then keeps a copy).
    const USES_PREVIOUS: bool = false;

    /// Decode a record written by [`write_run`]; `previous` is the record before it in
    /// the same run (rows of an account are adjacent: what they share can be reused).
    fn decode(bytes: &[u8], previous: Option<&Self>) -> postcard::Result<Self> {
        let _ = previous;
        postcard::from_bytes(bytes)
    }
}

/// A billed event as a run file holds it (the same bytes as `BilledEventRow`), borrowed.
#[derive(Deserialize)]
struct BilledRecord<'a> {
    invoice_id: &'a str,
    event_id: &'a str,
    account_id: &'a str,
    occurred_at: crate::time::Micros,
    credits: crate::amount::Milli,
}

impl Keyed for BilledEventRow {
    fn account(&self) -> &str {
        &self.account_id
    }

    const USES_PREVIOUS: bool = true;

    /// The invoice and account of the previous row are shared when equal (one copy per
    /// account, not two strings allocated per billed event).
    fn decode(bytes: &[u8], previous: Option<&Self>) -> postcard::Result<Self> {
        let r: BilledRecord<'_> = postcard::from_bytes(bytes)?;
        Ok(BilledEventRow {
            invoice_id: shared(r.invoice_id, previous.map(|p| &p.invoice_id)),
            event_id: crate::model::Id::new(r.event_id),
            account_id: shared(r.account_id, previous.map(|p| &p.account_id)),
            occurred_at: r.occurred_at,
            credits: r.credits,
        })
    }
}

/// An invoice line and its account (the line itself names only its invoice).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountLine {
    pub account_id: crate::model::Shared,
    pub line: InvoiceLineRow,
}

/// An invoice line and its account, borrowed: serializes to the bytes of an [`AccountLine`]
/// (postcard writes a string and a shared string alike, and a nested struct's fields in
/// order), so a group's lines are written without a shared account string each.
#[derive(Serialize)]
pub struct AccountLineRef<'a> {
    pub account_id: &'a str,
    pub line: &'a InvoiceLineRow,
}

/// An invoice line as a run file holds it (the same bytes as `AccountLine`: postcard
/// writes a nested struct's fields in order), borrowed.
#[derive(Deserialize)]
struct LineRecord<'a> {
    account_id: &'a str,
    invoice_id: &'a str,
    product: &'a str,
    action: &'a str,
    model: Option<&'a str>,
    event_count: i64,
    quantity: crate::amount::Milli,
    credits: crate::amount::Milli,
}

/// `text` as the previous row's string when they are equal (one copy shared), else new.
fn shared(text: &str, previous: Option<&crate::model::Shared>) -> crate::model::Shared {
    match previous {
        Some(p) if &**p == text => p.clone(),
        _ => crate::model::Shared::from(text),
    }
}

impl Keyed for AccountLine {
    fn account(&self) -> &str {
        &self.account_id
    }

    const USES_PREVIOUS: bool = true;

    /// The account, invoice and labels of the previous line are shared when equal: an
    /// invoice's lines are adjacent and ordered by product, so most lines allocate only
    /// their action (a 100M-event close merges 19M lines).
    fn decode(bytes: &[u8], previous: Option<&Self>) -> postcard::Result<Self> {
        let r: LineRecord<'_> = postcard::from_bytes(bytes)?;
        let prev = previous.map(|p| &p.line);
        Ok(AccountLine {
            account_id: shared(r.account_id, previous.map(|p| &p.account_id)),
            line: InvoiceLineRow {
                invoice_id: shared(r.invoice_id, prev.map(|p| &p.invoice_id)),
                product: shared(r.product, prev.map(|p| &p.product)),
                action: shared(r.action, prev.map(|p| &p.action)),
                model: r
                    .model
                    .map(|m| shared(m, prev.and_then(|p| p.model.as_ref()))),
                event_count: r.event_count,
                quantity: r.quantity,
                credits: r.credits,
            },
        })
    }
}

/// Rows of some accounts, in output order (accounts by id bytes).
#[derive(Serialize, Deserialize)]
#[serde(bound = "T: Keyed")]
pub enum Run<T> {
    Memory(Vec<T>),
    /// A run file and its row count.
    File(PathBuf, u64),
}

pub type BilledRun = Run<BilledEventRow>;
pub type LineRun = Run<AccountLine>;

impl<T> Run<T> {
    pub fn rows(&self) -> u64 {
        match self {
            Run::Memory(rows) => rows.len() as u64,
            Run::File(_, rows) => *rows,
        }
    }
}

/// Write `rows` as a run file at `path`. A row may be given as any value that serializes
/// to the bytes of a `T` (a borrowed form of it: a group's rows are written straight from
/// its account results, not copied into one vector first).
pub fn write_run<T: Keyed, R: Serialize>(
    path: &Path,
    rows: impl IntoIterator<Item = R>,
) -> Result<Run<T>> {
    let file = File::create(path).map_err(|e| TallyError::write(path, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut record = Vec::new();
    let mut count = 0u64;
    for row in rows {
        record.clear();
        record =
            postcard::to_extend(&row, record).map_err(|e| TallyError::output("billed run", e))?;
        w.write_all(&(record.len() as u32).to_le_bytes())
            .and_then(|_| w.write_all(&record))
            .map_err(|e| TallyError::write(path, e))?;
        count += 1;
    }
    // Not synced: a run file in the spill folder lives only as long as the run; a shard
    // syncs the run files it keeps (`shard::keep_runs`).
    w.into_inner()
        .map_err(|e| TallyError::write(path, e.into_error()))?;
    Ok(Run::File(path.to_path_buf(), count))
}

/// Reads one run file record by record.
struct RunReader<T> {
    path: PathBuf,
    reader: BufReader<File>,
    left: u64,
    buf: Vec<u8>,
    /// The row read last (for `Keyed::decode`).
    previous: Option<T>,
}

impl<T: Keyed> RunReader<T> {
    fn open(path: &Path, rows: u64) -> Result<RunReader<T>> {
        let file = File::open(path).map_err(|e| TallyError::io(path, e))?;
        Ok(RunReader {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            left: rows,
            buf: Vec::new(),
            previous: None,
        })
    }

    fn next_row(&mut self) -> Result<Option<T>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let broken = |e: &dyn std::fmt::Display| {
            TallyError::Invariant(format!(
                "run file {} cannot be read back: {e}",
                self.path.display()
            ))
        };
        let mut len = [0u8; 4];
        self.reader.read_exact(&mut len).map_err(|e| broken(&e))?;
        self.buf.resize(u32::from_le_bytes(len) as usize, 0);
        self.reader
            .read_exact(&mut self.buf)
            .map_err(|e| broken(&e))?;
        let row = T::decode(&self.buf, self.previous.as_ref()).map_err(|e| broken(&e))?;
        if T::USES_PREVIOUS {
            self.previous = Some(row.clone());
        }
        Ok(Some(row))
    }
}

enum Source<'a, T> {
    Memory(std::slice::Iter<'a, T>),
    File(RunReader<T>),
}

impl<T: Keyed> Source<'_, T> {
    fn next_row(&mut self) -> Result<Option<T>> {
        match self {
            Source::Memory(rows) => Ok(rows.next().cloned()),
            Source::File(reader) => reader.next_row(),
        }
    }
}

/// The head row of a source, ordered for a min-heap by account id (then source index, so
/// that the merge is deterministic; an account is never in two sources).
struct Head<T> {
    row: T,
    source: usize,
}

impl<T: Keyed> PartialEq for Head<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl<T: Keyed> Eq for Head<T> {}
impl<T: Keyed> PartialOrd for Head<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T: Keyed> Ord for Head<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.row.account().as_bytes(), other.source)
            .cmp(&(self.row.account().as_bytes(), self.source))
    }
}

/// Stream the rows of all runs in output order, `chunk` rows at a time.
pub fn for_each_chunk<T: Keyed>(
    runs: &[Run<T>],
    chunk: usize,
    mut each: impl FnMut(&[T]) -> Result<()>,
) -> Result<u64> {
    let mut sources = Vec::with_capacity(runs.len());
    for run in runs {
        sources.push(match run {
            Run::Memory(rows) => Source::Memory(rows.iter()),
            Run::File(path, rows) => Source::File(RunReader::open(path, *rows)?),
        });
    }
    // One run (a whole run): its rows are already in order.
    let mut heap = BinaryHeap::with_capacity(sources.len());
    for (i, source) in sources.iter_mut().enumerate() {
        if let Some(row) = source.next_row()? {
            heap.push(Head { row, source: i });
        }
    }
    let mut batch = Vec::with_capacity(chunk);
    let mut written = 0u64;
    while let Some(Head { row, source }) = heap.pop() {
        let account = row.account().to_string();
        batch.push(row);
        // The rest of this account comes from the same source: take it in one go.
        loop {
            match sources[source].next_row()? {
                Some(next) if next.account() == account => batch.push(next),
                Some(next) => {
                    heap.push(Head { row: next, source });
                    break;
                }
                None => break,
            }
        }
        if batch.len() >= chunk {
            written += batch.len() as u64;
            each(&batch)?;
            batch.clear();
        }
    }
    if !batch.is_empty() || written == 0 {
        written += batch.len() as u64;
        each(&batch)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amount::Milli;

    fn row(account: &str, event: &str) -> BilledEventRow {
        BilledEventRow {
            invoice_id: format!("INV-{account}").into(),
            event_id: event.into(),
            account_id: account.into(),
            occurred_at: 0,
            credits: Milli(1000),
        }
    }

    #[test]
    fn runs_merge_by_account_and_chunks_end_at_account_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let a = vec![row("a", "1"), row("a", "2"), row("c", "5")];
        let b = vec![row("b", "3"), row("b", "4"), row("d", "6")];
        let runs = vec![
            write_run(&dir.path().join("a.bin"), &a).unwrap(),
            Run::Memory(b),
        ];
        let mut chunks: Vec<Vec<String>> = Vec::new();
        let rows = for_each_chunk(&runs, 2, |rows| {
            chunks.push(rows.iter().map(|r| r.event_id.to_string()).collect());
            Ok(())
        })
        .unwrap();
        assert_eq!(rows, 6);
        // Accounts a, b, c, d in order; a chunk closes once it holds ≥ 2 rows, never
        // splitting an account.
        assert_eq!(chunks, vec![vec!["1", "2"], vec!["3", "4"], vec!["5", "6"]]);
    }

    /// `rows` written to a run file and read back.
    fn through_a_run_file<T: Keyed>(rows: &[T]) -> Vec<T> {
        let dir = tempfile::tempdir().unwrap();
        let runs = vec![write_run(&dir.path().join("run.bin"), rows).unwrap()];
        let mut back = Vec::new();
        for_each_chunk(&runs, 10, |chunk: &[T]| {
            back.extend_from_slice(chunk);
            Ok(())
        })
        .unwrap();
        back
    }

    /// The same string, not merely an equal one.
    fn shared(x: &crate::model::Shared, y: &crate::model::Shared) -> bool {
        std::sync::Arc::ptr_eq(x, y)
    }

    #[test]
    fn billed_rows_read_back_equal_and_share_their_account_and_invoice() {
        let rows = vec![row("a", "1"), row("a", "2"), row("b", "3")];
        let back = through_a_run_file(&rows);
        assert_eq!(back, rows);
        assert!(shared(&back[0].account_id, &back[1].account_id));
        assert!(shared(&back[0].invoice_id, &back[1].invoice_id));
        assert!(!shared(&back[1].account_id, &back[2].account_id));
    }

    fn line(account: &str, product: &str, action: &str, model: Option<&str>) -> AccountLine {
        AccountLine {
            account_id: account.into(),
            line: InvoiceLineRow {
                invoice_id: format!("INV-{account}").into(),
                product: product.into(),
                action: action.into(),
                model: model.map(Into::into),
                event_count: 3,
                quantity: Milli(-2500),
                credits: Milli(i64::MAX),
            },
        }
    }

    /// Invoice lines come back equal, sharing what equals the previous line's (the
    /// borrowed record must match the bytes `AccountLine` writes, field for field).
    #[test]
    fn invoice_lines_read_back_equal_and_share_what_repeats() {
        let rows = vec![
            line("a", "video", "generate", Some("m1")),
            line("a", "video", "upscale", Some("m1")),
            line("a", "video", "upscale", None),
            line("b", "image", "generate", None),
        ];
        let back = through_a_run_file(&rows);
        assert_eq!(back, rows);
        let (l0, l1, l2, l3) = (&back[0], &back[1], &back[2], &back[3]);
        assert!(shared(&l0.account_id, &l1.account_id));
        assert!(shared(&l0.line.invoice_id, &l1.line.invoice_id));
        assert!(shared(&l0.line.product, &l1.line.product));
        assert!(shared(&l1.line.action, &l2.line.action));
        assert!(shared(
            l0.line.model.as_ref().unwrap(),
            l1.line.model.as_ref().unwrap()
        ));
        assert!(!shared(&l2.line.invoice_id, &l3.line.invoice_id));
        assert!(!shared(&l2.line.product, &l3.line.product));
    }

    #[test]
    fn no_rows_still_give_one_empty_chunk() {
        let mut calls = 0;
        let rows = for_each_chunk(
            &[BilledRun::Memory(Vec::new())],
            4,
            |rows: &[BilledEventRow]| {
                assert!(rows.is_empty());
                calls += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!((rows, calls), (0, 1));
    }
}
