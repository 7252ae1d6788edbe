//! `billed_events` of a close: one row per billed event, so the one output that grows with
//! the month. A split run does not hold it: each group writes its rows, in account order,
//! to a run file; the writer merges the runs by account (an account's rows are all in one
//! run) and streams them to Parquet. A whole run keeps its single run in memory.
//!
//! Run file: records of `u32` little-endian length + postcard `BilledEventRow`.

use crate::engine::BilledEventRow;
use crate::error::{Result, TallyError};
use serde::{Deserialize, Serialize};
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Rows of some accounts, in output order (accounts by id bytes).
#[derive(Serialize, Deserialize)]
pub enum BilledRun {
    Memory(Vec<BilledEventRow>),
    /// A run file and its row count.
    File(PathBuf, u64),
}

impl BilledRun {
    pub fn rows(&self) -> u64 {
        match self {
            BilledRun::Memory(rows) => rows.len() as u64,
            BilledRun::File(_, rows) => *rows,
        }
    }
}

/// Write `rows` as a run file at `path`.
pub fn write_run(path: &Path, rows: &[BilledEventRow]) -> Result<BilledRun> {
    let file = File::create(path).map_err(|e| TallyError::io(path, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut record = Vec::new();
    for row in rows {
        record.clear();
        record =
            postcard::to_extend(row, record).map_err(|e| TallyError::output("billed run", e))?;
        w.write_all(&(record.len() as u32).to_le_bytes())
            .and_then(|_| w.write_all(&record))
            .map_err(|e| TallyError::io(path, e))?;
    }
    w.flush().map_err(|e| TallyError::io(path, e))?;
    Ok(BilledRun::File(path.to_path_buf(), rows.len() as u64))
}

/// Reads one run file record by record.
struct RunReader {
    path: PathBuf,
    reader: BufReader<File>,
    left: u64,
    buf: Vec<u8>,
}

impl RunReader {
    fn open(path: &Path, rows: u64) -> Result<RunReader> {
        let file = File::open(path).map_err(|e| TallyError::io(path, e))?;
        Ok(RunReader {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            left: rows,
            buf: Vec::new(),
        })
    }

    fn next_row(&mut self) -> Result<Option<BilledEventRow>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let broken = |e: &dyn std::fmt::Display| {
            TallyError::Invariant(format!(
                "billed-events run {} cannot be read back: {e}",
                self.path.display()
            ))
        };
        let mut len = [0u8; 4];
        self.reader.read_exact(&mut len).map_err(|e| broken(&e))?;
        self.buf.resize(u32::from_le_bytes(len) as usize, 0);
        self.reader
            .read_exact(&mut self.buf)
            .map_err(|e| broken(&e))?;
        postcard::from_bytes(&self.buf)
            .map(Some)
            .map_err(|e| broken(&e))
    }
}

enum Source<'a> {
    Memory(std::slice::Iter<'a, BilledEventRow>),
    File(RunReader),
}

impl Source<'_> {
    fn next_row(&mut self) -> Result<Option<BilledEventRow>> {
        match self {
            Source::Memory(rows) => Ok(rows.next().cloned()),
            Source::File(reader) => reader.next_row(),
        }
    }
}

/// The head row of a source, ordered for a min-heap by account id (then source index, so
/// that the merge is deterministic; an account is never in two sources).
struct Head {
    row: BilledEventRow,
    source: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.row.account_id.as_bytes(), other.source)
            .cmp(&(self.row.account_id.as_bytes(), self.source))
    }
}

/// Stream the rows of all runs in output order, `chunk` rows at a time.
pub fn for_each_chunk(
    runs: &[BilledRun],
    chunk: usize,
    mut each: impl FnMut(&[BilledEventRow]) -> Result<()>,
) -> Result<u64> {
    let mut sources = Vec::with_capacity(runs.len());
    for run in runs {
        sources.push(match run {
            BilledRun::Memory(rows) => Source::Memory(rows.iter()),
            BilledRun::File(path, rows) => Source::File(RunReader::open(path, *rows)?),
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
        let account = row.account_id.clone();
        batch.push(row);
        // The rest of this account comes from the same source: take it in one go.
        loop {
            match sources[source].next_row()? {
                Some(next) if next.account_id == account => batch.push(next),
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
            invoice_id: format!("INV-{account}"),
            event_id: event.to_string(),
            account_id: account.to_string(),
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
            BilledRun::Memory(b),
        ];
        let mut chunks: Vec<Vec<String>> = Vec::new();
        let rows = for_each_chunk(&runs, 2, |rows| {
            chunks.push(rows.iter().map(|r| r.event_id.clone()).collect());
            Ok(())
        })
        .unwrap();
        assert_eq!(rows, 6);
        // Accounts a, b, c, d in order; a chunk closes once it holds ≥ 2 rows, never
        // splitting an account.
        assert_eq!(chunks, vec![vec!["1", "2"], vec!["3", "4"], vec!["5", "6"]]);
    }

    #[test]
    fn no_rows_still_give_one_empty_chunk() {
        let mut calls = 0;
        let rows = for_each_chunk(&[BilledRun::Memory(Vec::new())], 4, |rows| {
            assert!(rows.is_empty());
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((rows, calls), (0, 1));
    }
}
