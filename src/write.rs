//! Stage 7: turn the run's rows into output files (Parquet, CSV, JSON, Markdown) in a
//! staging folder beside the target, then publish it with a rename, so that the output
//! folder appears whole or not at all.

use crate::amount::Milli;
use crate::error::{Result, TallyError};
use crate::model::{GrantKind, Mode};
use crate::run::RunOutput;
use crate::time::Micros;
use arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Int32Array, Int64Array, ListBuilder, StringArray,
    StringBuilder, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds one output table column by column.
#[derive(Default)]
pub struct Table {
    fields: Vec<Field>,
    columns: Vec<ArrayRef>,
}

fn utc() -> Option<Arc<str>> {
    Some("UTC".into())
}

impl Table {
    fn push(mut self, name: &str, nullable: bool, array: ArrayRef) -> Self {
        self.fields
            .push(Field::new(name, array.data_type().clone(), nullable));
        self.columns.push(array);
        self
    }

    pub fn str<'a>(self, name: &str, values: impl IntoIterator<Item = &'a str>) -> Self {
        let a: StringArray = values.into_iter().map(Some).collect();
        self.push(name, false, Arc::new(a))
    }

    pub fn opt_str<'a>(
        self,
        name: &str,
        values: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Self {
        let a: StringArray = values.into_iter().collect();
        self.push(name, true, Arc::new(a))
    }

    pub fn credits(self, name: &str, values: impl IntoIterator<Item = Milli>) -> Self {
        self.opt_credits_inner(name, false, values.into_iter().map(Some))
    }

    pub fn opt_credits(self, name: &str, values: impl IntoIterator<Item = Option<Milli>>) -> Self {
        self.opt_credits_inner(name, true, values)
    }

    fn opt_credits_inner(
        self,
        name: &str,
        nullable: bool,
        values: impl IntoIterator<Item = Option<Milli>>,
    ) -> Self {
        let a: Decimal128Array = values
            .into_iter()
            .map(|v| v.map(|m| i128::from(m.0)))
            .collect::<Decimal128Array>()
            .with_precision_and_scale(18, 3)
            .expect("18,3 is a valid decimal type");
        self.push(name, nullable, Arc::new(a))
    }

    pub fn ts(self, name: &str, values: impl IntoIterator<Item = Micros>) -> Self {
        let a = TimestampMicrosecondArray::from_iter_values(values).with_timezone_opt(utc());
        self.push(name, false, Arc::new(a))
    }

    pub fn opt_ts(self, name: &str, values: impl IntoIterator<Item = Option<Micros>>) -> Self {
        let a: TimestampMicrosecondArray = values.into_iter().collect();
        self.push(name, true, Arc::new(a.with_timezone_opt(utc())))
    }

    pub fn i64(self, name: &str, values: impl IntoIterator<Item = i64>) -> Self {
        self.push(name, false, Arc::new(Int64Array::from_iter_values(values)))
    }

    pub fn opt_i32(self, name: &str, values: impl IntoIterator<Item = Option<i32>>) -> Self {
        let a: Int32Array = values.into_iter().collect();
        self.push(name, true, Arc::new(a))
    }

    pub fn str_lists<'a, S: AsRef<str> + 'a>(
        self,
        name: &str,
        values: impl IntoIterator<Item = &'a [S]>,
    ) -> Self {
        let mut builder = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
            "item",
            DataType::Utf8,
            false,
        )));
        for list in values {
            for s in list {
                builder.values().append_value(s.as_ref());
            }
            builder.append(true);
        }
        self.push(name, false, Arc::new(builder.finish()))
    }

    pub fn finish(self) -> RecordBatch {
        RecordBatch::try_new(Arc::new(Schema::new(self.fields)), self.columns)
            .expect("columns match their fields")
    }
}

/// Render a table as CSV (also the golden-file form): RFC 4180 quoting when needed, null →
/// empty, credits with 3 decimals, instants RFC 3339 UTC, lists joined with `;`.
pub fn table_csv(batch: &RecordBatch) -> Result<Vec<u8>> {
    table_csv_into(Vec::new(), batch).map_err(|e| TallyError::output("csv", e))
}

/// [`table_csv`], written to `path` as it is made (not gathered in memory first); its
/// sha256.
pub fn write_table_csv(path: &Path, batch: &RecordBatch) -> Result<Sha256Hex> {
    write_through(path, |out| table_csv_into(out, batch).map(drop))
}

fn table_csv_into<W: Write>(mut out: W, batch: &RecordBatch) -> std::result::Result<W, csv::Error> {
    let schema = batch.schema();
    let names = schema.fields().iter().map(|f| f.name().as_str());
    out.write_all(&crate::export::header_line(names)?)?;
    crate::export::write_lines(&mut out, batch.num_rows(), &|w, row, text| {
        for column in batch.columns() {
            text.clear();
            push_cell(text, column, row);
            w.write_field(text.as_bytes())?;
        }
        w.write_record(None::<&[u8]>)
    })?;
    Ok(out)
}

/// One value rendered as text.
pub fn cell(array: &ArrayRef, row: usize) -> String {
    let mut text = String::new();
    push_cell(&mut text, array, row);
    text
}

/// [`cell`] appended to `out` (nothing for a null): no string per cell.
pub fn push_cell(out: &mut String, array: &ArrayRef, row: usize) {
    if array.is_null(row) {
        return;
    }
    match array.data_type() {
        DataType::Utf8 => out.push_str(array.as_string::<i32>().value(row)),
        DataType::Decimal128(_, 3) => Milli(
            array
                .as_primitive::<arrow::datatypes::Decimal128Type>()
                .value(row) as i64,
        )
        .push_to(out),
        DataType::Timestamp(TimeUnit::Microsecond, _) => crate::time::push_instant(
            out,
            array
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(row),
        ),
        DataType::Int64 => out.push_str(
            itoa::Buffer::new().format(
                array
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .value(row),
            ),
        ),
        DataType::Int32 => out.push_str(
            itoa::Buffer::new().format(
                array
                    .as_primitive::<arrow::datatypes::Int32Type>()
                    .value(row),
            ),
        ),
        DataType::Boolean => out.push_str(if array.as_boolean().value(row) {
            "true"
        } else {
            "false"
        }),
        DataType::List(_) => {
            let list = array.as_list::<i32>().value(row);
            for i in 0..list.len() {
                if i > 0 {
                    out.push(';');
                }
                push_cell(out, &list, i);
            }
        }
        other => out.push_str(&format!("<{other}>")),
    }
}

// ---- the tables ------------------------------------------------------------------------

pub fn discrepancies_table(out: &RunOutput) -> RecordBatch {
    let rows = &out.discrepancies;
    Table::default()
        .str("kind", rows.iter().map(|r| r.kind.name()))
        .str("account_id", rows.iter().map(|r| &*r.account_id))
        .opt_str("event_id", rows.iter().map(|r| r.event_id.as_deref()))
        .str_lists("entry_ids", rows.iter().map(|r| r.entry_ids.as_slice()))
        .opt_ts("occurred_at", rows.iter().map(|r| r.occurred_at))
        .opt_str("product", rows.iter().map(|r| r.product.as_deref()))
        .opt_str("action", rows.iter().map(|r| r.action.as_deref()))
        .opt_str("model", rows.iter().map(|r| r.model.as_deref()))
        .opt_credits("expected_credits", rows.iter().map(|r| r.expected_credits))
        .credits("recorded_credits", rows.iter().map(|r| r.recorded_credits))
        .opt_credits("delta_credits", rows.iter().map(|r| r.delta_credits))
        .finish()
}

/// The report's discrepancy rows (`report/discrepancies*.csv`, `report/account-*.csv`):
/// `contract`, the run's `discrepancies` table, with one more column, `entry_account_ids`,
/// the other accounts an `account_mismatch` row's entries are on (the customer wrongly
/// debited, whom the contract's columns do not name). The contract's columns are shared,
/// not built again.
pub fn report_discrepancies_table(contract: &RecordBatch, out: &RunOutput) -> RecordBatch {
    let rows = &out.discrepancies;
    let extra = Table::default()
        .str_lists(
            "entry_account_ids",
            rows.iter().map(|r| r.entry_account_ids.as_slice()),
        )
        .finish();
    let fields: Vec<FieldRef> = (contract.schema().fields().iter())
        .chain(extra.schema().fields())
        .cloned()
        .collect();
    let columns: Vec<ArrayRef> = (contract.columns().iter())
        .chain(extra.columns())
        .cloned()
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .expect("one more column of the same rows")
}

pub fn rejects_table(out: &RunOutput) -> RecordBatch {
    let rows = &out.rejects;
    let file = |r: &crate::model::Reject| {
        out.files[r.dataset as usize][r.at.file as usize]
            .rel_path
            .as_str()
    };
    Table::default()
        .str("dataset", rows.iter().map(|r| r.dataset.name()))
        .str("file", rows.iter().map(file))
        .i64("row", rows.iter().map(|r| r.at.row as i64))
        .str("reason", rows.iter().map(|r| r.reason.name()))
        .str("detail", rows.iter().map(|r| r.detail.as_str()))
        .finish()
}

pub fn balances_table(out: &RunOutput) -> RecordBatch {
    let rows = &out.balances;
    let mut t = Table::default()
        .str("account_id", rows.iter().map(|r| &*r.account_id))
        .str("plan_id", rows.iter().map(|r| &*r.plan_id))
        .ts("period_start", rows.iter().map(|r| r.period_start))
        .ts("period_end", rows.iter().map(|r| r.period_end))
        .credits("granted_credits", rows.iter().map(|r| r.granted_credits()))
        .credits("used_credits", rows.iter().map(|r| r.used_credits()))
        .credits("overage_credits", rows.iter().map(|r| r.overage))
        .credits(
            "remaining_credits",
            rows.iter().map(|r| r.remaining_credits()),
        );
    for kind in GrantKind::ALL {
        let k = kind.index();
        let name = kind.name();
        t = t
            .credits(
                &format!("{name}_granted_credits"),
                rows.iter().map(|r| r.granted[k]),
            )
            .credits(
                &format!("{name}_used_credits"),
                rows.iter().map(|r| r.used[k]),
            )
            .credits(
                &format!("{name}_remaining_credits"),
                rows.iter().map(|r| Milli(r.granted[k].0 - r.used[k].0)),
            );
    }
    t.finish()
}

pub fn invoices_table(out: &RunOutput) -> RecordBatch {
    let rows = &out.invoices;
    let from = |k: GrantKind| rows.iter().map(move |r| r.credits_from[k.index()]);
    Table::default()
        .str("invoice_id", rows.iter().map(|r| r.invoice_id.as_str()))
        .str("account_id", rows.iter().map(|r| &*r.account_id))
        .str("plan_id", rows.iter().map(|r| &*r.plan_id))
        .ts("period_start", rows.iter().map(|r| r.period_start))
        .ts("period_end", rows.iter().map(|r| r.period_end))
        .str("currency", rows.iter().map(|r| r.currency.as_str()))
        .i64("plan_price_minor", rows.iter().map(|r| r.plan_price_minor))
        .credits("included_credits", rows.iter().map(|r| r.included_credits))
        .credits("credits_used", rows.iter().map(|r| r.credits_used))
        .credits("credits_from_rollover", from(GrantKind::Rollover))
        .credits("credits_from_plan", from(GrantKind::Plan))
        .credits("credits_from_promo", from(GrantKind::Promo))
        .credits("credits_from_compensation", from(GrantKind::Compensation))
        .credits("credits_from_top_up", from(GrantKind::TopUp))
        .credits("overage_credits", rows.iter().map(|r| r.overage_credits))
        .i64(
            "overage_amount_minor",
            rows.iter().map(|r| r.overage_amount_minor),
        )
        .i64("total_minor", rows.iter().map(|r| r.total_minor))
        .credits("recorded_credits", rows.iter().map(|r| r.recorded_credits))
        .credits(
            "unreconciled_credits",
            rows.iter().map(|r| r.unreconciled_credits),
        )
        .finish()
}

pub fn invoice_lines_batch(rows: &[crate::runs::AccountLine]) -> RecordBatch {
    Table::default()
        .str("invoice_id", rows.iter().map(|r| &*r.line.invoice_id))
        .str("product", rows.iter().map(|r| &*r.line.product))
        .str("action", rows.iter().map(|r| &*r.line.action))
        .opt_str("model", rows.iter().map(|r| r.line.model.as_deref()))
        .i64("event_count", rows.iter().map(|r| r.line.event_count))
        .credits("quantity", rows.iter().map(|r| r.line.quantity))
        .credits("credits", rows.iter().map(|r| r.line.credits))
        .finish()
}

pub fn renewals_table(out: &RunOutput) -> RecordBatch {
    let rows = &out.renewals;
    Table::default()
        .str("account_id", rows.iter().map(|r| &*r.account_id))
        .ts("period_end", rows.iter().map(|r| r.period_end))
        .opt_ts(
            "next_period_start",
            rows.iter().map(|r| r.next_period_start),
        )
        .opt_ts("next_period_end", rows.iter().map(|r| r.next_period_end))
        .str("plan_id", rows.iter().map(|r| &*r.plan_id))
        .credits(
            "plan_credits_unused",
            rows.iter().map(|r| r.plan_credits_unused),
        )
        .credits("rollover_credits", rows.iter().map(|r| r.rollover_credits))
        .credits("expired_credits", rows.iter().map(|r| r.expired_credits))
        .opt_credits(
            "next_included_credits",
            rows.iter().map(|r| r.next_included_credits),
        )
        .credits(
            "carried_grant_credits",
            rows.iter().map(|r| r.carried_grant_credits),
        )
        .finish()
}

/// In the `allocations` input schema.
pub fn allocations_next_table(out: &RunOutput) -> RecordBatch {
    let rows = &out.allocations_next;
    Table::default()
        .str("account_id", rows.iter().map(|r| &*r.account_id))
        .str("plan_id", rows.iter().map(|r| &*r.plan_id))
        .ts("period_start", rows.iter().map(|r| r.period_start))
        .ts("period_end", rows.iter().map(|r| r.period_end))
        .credits("included_credits", rows.iter().map(|r| r.included_credits))
        .opt_ts("billing_anchor", rows.iter().map(|r| r.billing_anchor))
        .str("status", rows.iter().map(|r| r.status.name()))
        .finish()
}

/// In the `grants` input schema. Priorities are validated to fit its INT32 (`load`); one
/// that does not (a shard partial of an older build, merged) stops the run.
pub fn grants_next_table(out: &RunOutput) -> Result<RecordBatch> {
    let rows = &out.grants_next;
    let priorities = rows
        .iter()
        .map(|r| {
            r.priority
                .map(|p| {
                    i32::try_from(p).map_err(|_| {
                        TallyError::Invariant(format!(
                            "grant {} has priority {p}, past the 32 bits grants_next.parquet holds",
                            r.grant_id
                        ))
                    })
                })
                .transpose()
        })
        .collect::<Result<Vec<Option<i32>>>>()?;
    Ok(Table::default()
        .str("grant_id", rows.iter().map(|r| r.grant_id.as_str()))
        .str("account_id", rows.iter().map(|r| &*r.account_id))
        .str("kind", rows.iter().map(|r| r.kind.name()))
        .credits("credits", rows.iter().map(|r| r.credits))
        .ts("effective_at", rows.iter().map(|r| r.effective_at))
        .opt_ts("expires_at", rows.iter().map(|r| r.expires_at))
        .opt_i32("priority", priorities)
        .finish())
}

/// The events of each invoice's period (close), with the credits billed for them (null
/// for those that cost nothing to bill): what a later close reads to find late events.
pub fn billed_events_batch(rows: &[crate::engine::BilledEventRow]) -> RecordBatch {
    Table::default()
        .str("invoice_id", rows.iter().map(|r| &*r.invoice_id))
        .str("event_id", rows.iter().map(|r| r.event_id.as_str()))
        .str("account_id", rows.iter().map(|r| &*r.account_id))
        .ts("occurred_at", rows.iter().map(|r| r.occurred_at))
        .opt_credits("credits", rows.iter().map(|r| r.credits))
        .finish()
}

/// The batches handed to the Parquet writer when streaming a table: 65,536 rows (to the
/// end of an account), or 16 MiB ([`crate::runs::Keyed::chunk_bytes`]), whichever comes
/// first. A stream holds a chunk's rows and up to four Arrow batches (one being built, two
/// queued, one being written; its CSV shares their buffers), and a close streams its two
/// tables at once. Ids of 4,000 bytes made a batch of 65,536 billed events 256 MiB in its
/// rows and as much again in Arrow: a close with such ids peaked at five times a 256 MiB
/// budget in its write stage, whatever the groups (`benches/memory-costs.sh`:
/// benches/README.md, "Profiles and experiments (2026-12-07, 10:31: the planned memory
/// costs measured)"). A billed event of the bench data counts about 130 bytes and an
/// invoice line about 170 (about 8 and 11 MiB a batch), so their batches end at the rows.
const STREAM_CHUNK: crate::runs::ChunkLimit = crate::runs::ChunkLimit {
    rows: 1 << 16,
    bytes: 16 << 20,
};

/// The most bytes a streamed table's row group holds (by the writer's estimate of its
/// encoded size; at most 1,048,576 rows besides): the writer keeps a row group in memory
/// until it is whole. The writer learns a row's size from the batches before, so a table
/// written in one batch ([`write_parquet`]: its batch holds that memory anyway) ends its
/// row groups at the rows alone. The bench data's largest row groups (a 20M-event close's
/// `billed_events`) are about 33 MiB before compression, so they end at the rows.
const ROW_GROUP_BYTES: usize = 64 << 20;

/// What [`write_streamed`] wrote: the table's rows, and the sha256 of its Parquet file and
/// of its CSV (when asked for one).
#[derive(Debug)]
pub struct Streamed {
    pub rows: u64,
    pub sha256: Sha256Hex,
    pub csv_sha256: Option<Sha256Hex>,
}

/// Stream a table from its runs (merged in account order), never holding more than a
/// chunk and a row group. `batch` builds a chunk's Arrow batch.
/// With `csv`, the same batches also go to its spreadsheet CSV (the runs are merged once
/// for both files).
///
/// Threads: one merges the runs and builds Arrow batches, one encodes and compresses them
/// into Parquet (each about half of the work), one writes the CSV.
pub fn write_streamed<T: crate::runs::Keyed>(
    path: &Path,
    runs: &[crate::runs::Run<T>],
    batch: fn(&[T]) -> RecordBatch,
    csv: Option<crate::export::StreamedCsv<'_>>,
) -> Result<Streamed> {
    let mut out = ParquetOut::create(path, batch(&[]).schema())?;
    let (send, receive) = std::sync::mpsc::sync_channel::<RecordBatch>(2);
    let rows = std::thread::scope(|scope| {
        let (csv_send, csv_writer) = match csv {
            Some(mut csv) => {
                let (csv_send, csv_receive) = std::sync::mpsc::sync_channel::<RecordBatch>(2);
                let writer = scope.spawn(move || {
                    write_each(csv_receive, |chunk| csv.write(chunk)).and_then(|()| csv.finish())
                });
                (Some(csv_send), Some(writer))
            }
            None => (None, None),
        };
        let producer = scope.spawn(move || {
            crate::runs::for_each_chunk(runs, STREAM_CHUNK, |rows| {
                let chunk = batch(rows);
                // A closed channel means that writer failed; it reports why.
                if let Some(csv_send) = &csv_send {
                    let _ = csv_send.send(chunk.clone());
                }
                let _ = send.send(chunk);
                Ok(())
            })
        });
        let written = write_each(receive, |chunk| out.write(chunk));
        // A thread that panicked has had its message printed by the panic hook: carry its
        // panic on unchanged (main maps it to exit 4) instead of panicking a second time.
        let rows = producer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let csv_written =
            csv_writer.map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        // The first failure in file order (the Parquet file, then its CSV), as the write
        // jobs report theirs.
        let rows = rows?;
        written?;
        let csv_sha256 = csv_written.transpose()?;
        Ok((rows, csv_sha256))
    })?;
    let (rows, csv_sha256) = rows;
    Ok(Streamed {
        rows,
        sha256: out.finish()?,
        csv_sha256,
    })
}

/// Write every chunk received; after a failure, keep draining the channel (so that the
/// producer is not blocked) and return the first error.
fn write_each(
    chunks: std::sync::mpsc::Receiver<RecordBatch>,
    mut write: impl FnMut(&RecordBatch) -> Result<()>,
) -> Result<()> {
    let mut written = Ok(());
    for chunk in chunks {
        if written.is_ok() {
            written = write(&chunk);
        }
    }
    written
}

// ---- files -----------------------------------------------------------------------------

/// A failure reading a file for its sha256 (an input, an earlier close's manifest, a
/// shard's run file read back or checked at a merge): [`TallyError::io`], exit 2 whatever
/// its kind.
fn io_err(path: &Path) -> impl Fn(std::io::Error) -> TallyError + '_ {
    move |e| TallyError::io(path, e)
}

/// A failure writing an output (disk full, no permission on the output root): exit 4.
fn write_err(path: &Path) -> impl Fn(std::io::Error) -> TallyError + '_ {
    move |e| TallyError::write(path, e)
}

/// zstd level of every Parquet output. Level 1, not 3: with [`UNIQUE_ID_COLUMNS`] written
/// plain, a 10M-event close's write stage took less CPU (medians of alternating runs by
/// hand, the stage's `cpu_ms` in the JSON log) and its Parquet outputs were barely larger
/// (ids, the bulk of them, are random: a stronger level gains little on them); at 100M the
/// bench's close write was level within its noise (benches/README.md, "Figures moved from
/// source comments (2026-12-05)").
const ZSTD_LEVEL: i32 = 1;

/// Columns whose values are (nearly) all distinct, ids and instants: written plain, because a
/// dictionary of them only fills up and falls back (the writer's interning of
/// `billed_events.event_id` was a visible share of a 10M close's write stage:
/// benches/README.md, "Figures moved from source comments (2026-12-05)"). Other columns
/// keep the writer's dictionaries.
const UNIQUE_ID_COLUMNS: [&str; 3] = ["event_id", "entry_ids.list.item", "occurred_at"];

/// A Parquet file being written with fixed settings (same rows → same bytes).
pub struct ParquetOut<'a> {
    path: &'a Path,
    writer: ArrowWriter<BufWriter<HashedFile>>,
}

impl<'a> ParquetOut<'a> {
    pub fn create(path: &'a Path, schema: arrow::datatypes::SchemaRef) -> Result<ParquetOut<'a>> {
        let file = HashedFile::create(path)?;
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(ZSTD_LEVEL).expect("valid level"),
            ))
            .set_created_by(format!("tally {VERSION}"))
            .set_max_row_group_row_count(Some(1 << 20))
            .set_max_row_group_bytes(Some(ROW_GROUP_BYTES));
        for column in UNIQUE_ID_COLUMNS {
            let path = ColumnPath::new(column.split('.').map(str::to_string).collect());
            props = props.set_column_dictionary_enabled(path, false);
        }
        let props = props.build();
        let writer = ArrowWriter::try_new(BufWriter::new(file), schema, Some(props))
            .map_err(|e| TallyError::output(path.display().to_string(), e))?;
        Ok(ParquetOut { path, writer })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer
            .write(batch)
            .map_err(|e| TallyError::output(self.path.display().to_string(), e))
    }

    /// Finish the footer and start the file's writing to disk (it is synced when its folder
    /// is published, [`publish`]); the file's sha256.
    pub fn finish(self) -> Result<Sha256Hex> {
        let path = self.path;
        let inner = self
            .writer
            .into_inner()
            .map_err(|e| TallyError::output(path.display().to_string(), e))?;
        HashedFile::finish_buffered(inner, path)
    }
}

/// Write a table as Parquet with fixed settings (same rows → same bytes); its sha256. The
/// file is on disk once its folder is published ([`publish`]).
pub fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<Sha256Hex> {
    let mut out = ParquetOut::create(path, batch.schema())?;
    out.write(batch)?;
    out.finish()
}

/// The sha256 of a file's bytes, as lowercase hex (the manifest's form).
pub type Sha256Hex = String;

/// Why [`open_regular`] refuses a file.
pub const NOT_A_REGULAR_FILE: &str = "not a regular file (a folder, a pipe, a socket or a device)";

/// [`open_regular`]'s refusal, inside its `io::Error` (shown as [`NOT_A_REGULAR_FILE`]).
#[derive(Debug)]
struct NotARegularFile;

impl std::fmt::Display for NotARegularFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(NOT_A_REGULAR_FILE)
    }
}

impl std::error::Error for NotARegularFile {}

/// Whether an error is [`open_regular`]'s refusal of something that is not a regular file
/// (not another error of the same kind, such as a path holding a NUL byte).
pub fn is_not_a_regular_file(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<NotARegularFile>())
}

/// Whether `path` is (or links to) a regular file.
pub fn is_regular_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Open a file tally reads whole or hashes (an input for its fingerprint, a manifest or
/// summary, an earlier close's file, a shard's file) for reading, refusing anything but a
/// regular file (links followed) as [`NOT_A_REGULAR_FILE`]: opening and reading a FIFO
/// waits for a writer, maybe forever, and a device such as `/dev/zero` never ends. What the
/// path names is looked at before it is opened (opening a device can act on it), and the
/// file opened is looked at again (the path may have been replaced in between; a FIFO put
/// there in that moment would still block the open). Not `O_NONBLOCK`: on some file
/// systems (leases, offline files) it makes an ordinary file's open or read fail.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    let not_regular = || std::io::Error::new(std::io::ErrorKind::InvalidInput, NotARegularFile);
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let file = File::open(path)?;
    match file.metadata()?.is_file() {
        true => Ok(file),
        false => Err(not_regular()),
    }
}

/// The file at `path` (opened as given: a pipe too), read up to `most` bytes; `None` when it
/// holds more (one byte more is read to know): a configuration file named by mistake
/// (`/dev/zero`, a log) is not read until memory runs out.
pub fn read_at_most(path: &Path, most: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(most.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= most).then_some(bytes))
}

/// [`open_regular`]'s file, read whole.
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// [`open_regular`]'s file, read whole as text.
pub fn read_regular_to_string(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    open_regular(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// An output file being written: every byte that reaches the file also goes through
/// sha256, so that the manifest's checksum of an output is made as it is written instead
/// of by reading the file again afterwards (at a 100M-event close, about 4 GB read back).
/// The file is created empty, and only the bytes the file took are hashed (a short write
/// hashes its prefix), so the checksum is the file's on disk.
pub type HashedFile = Hashed<File>;

/// A writer that hashes (sha256) the bytes each write to `inner` took: [`HashedFile`].
pub struct Hashed<W> {
    inner: W,
    hasher: Sha256,
}

impl HashedFile {
    /// Create (or truncate) `path`.
    pub fn create(path: &Path) -> Result<HashedFile> {
        Ok(Hashed {
            inner: File::create(path).map_err(write_err(path))?,
            hasher: Sha256::new(),
        })
    }

    /// Start writing the file to disk (not waiting for it); the sha256 of everything
    /// written to it. The file is made durable by [`publish`], which syncs every file of
    /// the staging folder before the folder is renamed into place (a file's own sync here
    /// cost each of a run's 40-80 output files a journal commit in turn: about a twentieth
    /// of a 1M-event reconcile, benches/README.md, "Profiles and experiments (2026-12-07:
    /// the outputs synced together)").
    ///
    /// The file is closed here and the close's result checked: on a network or FUSE file
    /// system a failed write may be reported only by the close, and the later sync opens
    /// the file again (a sync of the new handle would not see it).
    pub fn finish(self, path: &Path) -> Result<Sha256Hex> {
        start_writeback(&self.inner).map_err(write_err(path))?;
        close_checked(self.inner).map_err(write_err(path))?;
        Ok(hex::encode(self.hasher.finalize()))
    }

    /// Flush `buffered` into its file, then [`HashedFile::finish`] it.
    pub fn finish_buffered(buffered: BufWriter<HashedFile>, path: &Path) -> Result<Sha256Hex> {
        buffered
            .into_inner()
            .map_err(|e| TallyError::write(path, e.into_error()))?
            .finish(path)
    }
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Create `path`, write it through a 1 MiB buffer with `fill` (a write larger than the
/// buffer goes straight to the file), then flush it and start its writing to disk; its
/// sha256 ([`HashedFile`]). [`publish`] syncs it.
/// A large CSV made this way is not first gathered into one vector, which grows into fresh
/// memory as it doubles, and is copied (`benches/ab.sh` counts a run's faults; measured:
/// benches/README.md, "Profiles and experiments (2026-12-04, morning: fresh pages)" and
/// "Figures moved from source comments (2026-12-05)").
pub fn write_through<E: std::fmt::Display>(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<HashedFile>) -> std::result::Result<(), E>,
) -> Result<Sha256Hex> {
    let mut out = BufWriter::with_capacity(1 << 20, HashedFile::create(path)?);
    fill(&mut out).map_err(|e| TallyError::output(path.display().to_string(), e))?;
    HashedFile::finish_buffered(out, path)
}

/// Write `bytes` as the file `path`; its sha256. The file is on disk once its folder is
/// published ([`publish`]).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<Sha256Hex> {
    write_through(path, |out| out.write_all(bytes))
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    Ok(sha256_file_as_read(path)?.0)
}

/// [`sha256_file`], with the bytes hashed and the file's modification time after the
/// last read (so that the caller can tell whether it hashed the file another reading saw:
/// one written during the hashing has another time, or another size).
pub fn sha256_file_as_read(path: &Path) -> Result<(String, u64, crate::load::Modified)> {
    let mut file = open_regular(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut hasher = Sha256::new();
    // A buffer about the file's size: a fresh 1 MiB buffer is zeroed for each file, which
    // for a month of small input files (160,000 of 4 KiB) was about a third of the
    // fingerprint's samples (benches/README.md, "Profiles and experiments (2026-12-05,
    // afternoon: small files read by position)"). At least 8 KiB: a file whose size reads 0
    // may still hold bytes (a file system that does not know sizes, such as /proc), read
    // 8 KiB a call rather than 1 byte.
    let mut buf = vec![0u8; len.clamp(8 << 10, 1 << 20) as usize];
    let mut hashed = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        hashed += n as u64;
    }
    let modified = crate::load::Modified::of(&file.metadata().map_err(io_err(path))?);
    Ok((hex::encode(hasher.finalize()), hashed, modified))
}

/// sha256 of bytes in memory.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// [`sha256`] as the manifest writes it (lower-case hex).
pub fn sha256_hex(bytes: &[u8]) -> Sha256Hex {
    hex::encode(sha256(bytes))
}

/// What builds an output table's Arrow batch from a run's results.
pub type BuildTable = fn(&RunOutput) -> Result<RecordBatch>;

/// The tables the report reads besides its own files, `discrepancies` and `rejects`, built
/// before the writing starts (the caller builds the summary beside them: each is a pass
/// over its rows, and tables built one after the other left the other core idle:
/// benches/README.md, "Figures moved from source comments (2026-12-05)").
pub fn report_tables(out: &RunOutput) -> (RecordBatch, RecordBatch) {
    rayon::join(|| discrepancies_table(out), || rejects_table(out))
}

/// The mode's other tables, each built by the job that writes it and dropped once written
/// (the manifest lists every file by path): built all at once before the writing, a close
/// of many accounts held its invoices, renewals and next-period tables together, beside
/// the results they were built from (`benches/memory-costs.sh`). `invoice_lines` and
/// `billed_events` are streamed ([`write_streamed`]).
pub fn other_tables(mode: Mode) -> Vec<(&'static str, BuildTable)> {
    match mode {
        Mode::Reconcile => vec![("balances.parquet", |o| Ok(balances_table(o)))],
        Mode::Close => vec![
            ("invoices.parquet", |o| Ok(invoices_table(o))),
            ("renewals.parquet", |o| Ok(renewals_table(o))),
            ("allocations_next.parquet", |o| {
                Ok(allocations_next_table(o))
            }),
            ("grants_next.parquet", grants_next_table),
        ],
    }
}

// ---- atomic publish ----------------------------------------------------------------------

/// The folder holding `path` (`.` for a bare name, whose parent is empty).
pub fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn staging_prefix(target: &Path) -> Result<(PathBuf, String)> {
    let parent = folder_of(target);
    let name = target
        .file_name()
        .ok_or_else(|| {
            TallyError::config(
                target.display().to_string(),
                "output path has no folder name",
            )
        })?
        .to_string_lossy()
        .into_owned();
    Ok((parent, format!(".{name}{STAGING_INFIX}")))
}

/// What a staging folder's name holds between `.NAME` and the run's PID.
const STAGING_INFIX: &str = ".tally-staging-";

/// The most bytes an output folder's name may have: tally writes `.NAME.tally-staging-PID-old`
/// beside it (a PID of up to 7 digits, Linux's most, 4194304), and a name in a file system
/// holds 255 bytes. Longer, the run would compute and then fail to write (exit 4).
pub const MAX_OUT_NAME_BYTES: usize =
    255 - ".".len() - STAGING_INFIX.len() - "4194304".len() - PREVIOUS_SUFFIX.len();

/// Whether the staging entry `entry`, whose name ends in `pid` (after [`STAGING_INFIX`]),
/// is a previous output swapped out by the two-rename publish that no output took the
/// place of: a folder, and its `target` no tally output (missing, or an empty folder, a
/// file or a link put there since, say by a script's `mkdir -p`). The new output never took
/// its place (both renames failed, or the run was killed between them), and it is the only
/// copy of the output. Beside a tally output it is one a finished publish could not
/// remove.
fn stranded(entry: &Path, pid: &str, target: &Path) -> bool {
    pid.ends_with(PREVIOUS_SUFFIX)
        && std::fs::symlink_metadata(entry).is_ok_and(|m| m.is_dir())
        && !is_tally_output(target)
}

/// Whether `dir` is a folder (not a link) holding a tally `manifest.json` or `shard.json`.
pub fn is_tally_output(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) && holds_tally_manifest(dir)
}

/// Whether the folder `dir` holds a `manifest.json` or `shard.json` a tally run wrote.
pub fn holds_tally_manifest(dir: &Path) -> bool {
    ["manifest.json", crate::shard::SHARD_MANIFEST]
        .iter()
        .any(|name| {
            read_regular_to_string(&dir.join(name))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["tool"] == "tally")
        })
}

/// What stands at an output's path that is not a tally output, in words (for a refusal).
fn not_an_output(target: &Path) -> &'static str {
    match std::fs::symlink_metadata(target) {
        Err(_) => "missing",
        Ok(m) if m.is_symlink() => "a symbolic link",
        Ok(m) if m.is_dir() => "a folder without a tally manifest.json",
        Ok(_) => "a file",
    }
}

/// The end of the staging name of a previous output swapped out by the two-rename publish.
const PREVIOUS_SUFFIX: &str = "-old";

/// Whether `pid` is what follows [`STAGING_INFIX`] in a staging folder's name: a process
/// id, and [`PREVIOUS_SUFFIX`] after it for a previous output.
fn is_staging_pid(pid: &str) -> bool {
    let digits = pid.strip_suffix(PREVIOUS_SUFFIX).unwrap_or(pid);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The previous outputs in `folder` that a two-rename publish swapped out and that nothing
/// took the place of (the run was killed between its renames, or both failed): each
/// `.NAME.tally-staging-PID-old` folder whose `NAME` is missing, with that `NAME`'s path,
/// in name order. Each is the only copy of its output.
pub fn stranded_previous_outputs(folder: &Path) -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut stranded: Vec<(PathBuf, PathBuf)> = (entries.flatten())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let (target, pid) = name.strip_prefix('.')?.rsplit_once(STAGING_INFIX)?;
            if !is_staging_pid(pid) {
                return None;
            }
            let target = folder.join(target);
            stranded(&entry.path(), pid, &target).then(|| (entry.path(), target))
        })
        .collect();
    stranded.sort();
    stranded
}

/// The previous outputs of `target` stranded beside it ([`stranded_previous_outputs`]), in
/// name order.
pub fn stranded_of(target: &Path) -> Vec<PathBuf> {
    stranded_previous_outputs(&folder_of(target))
        .into_iter()
        .filter(|(_, of)| of.file_name() == target.file_name())
        .map(|(old, _)| old)
        .collect()
}

/// Put back the previous output of `target` that a two-rename publish swapped out and that
/// nothing took the place of (the run was killed between its renames): `target` no tally
/// output, its `.NAME.tally-staging-PID-old` beside it. `target` missing or an empty
/// folder, it is put back; anything else there is refused (exit 3), saying where the
/// output is. Called under the output's lock, so no run
/// is between its renames; after it, the run's checks see the output as it was (a
/// reconcile is refused over a close, a close's rerun is one). Several such folders of one
/// output (which no publish makes) are refused (exit 3): which one belongs there is for a
/// person to say.
pub fn restore_stranded_output(target: &Path) -> Result<()> {
    let stranded = stranded_of(target);
    match stranded.as_slice() {
        [] => Ok(()),
        [old] => {
            // Only an empty folder is taken away (made since, by a script's `mkdir -p`):
            // anything else there is for a person to look at.
            let cleared = match std::fs::symlink_metadata(target) {
                Err(_) => true,
                Ok(m) => m.is_dir() && std::fs::remove_dir(target).is_ok(),
            };
            if !cleared {
                return Err(TallyError::Refused(format!(
                    "{} is {}, and the output that belongs there is in {}, swapped out by a \
                     publish that was stopped before its new output took the place: remove {} \
                     and rename it back (mv {} {}), then rerun",
                    target.display(),
                    not_an_output(target),
                    old.display(),
                    target.display(),
                    old.display(),
                    target.display()
                )));
            }
            std::fs::rename(old, target).map_err(write_err(target))?;
            tracing::warn!(
                folder = %target.display(),
                from = %old.display(),
                "put back the previous output, which a publish swapped out and was stopped \
                 before its new output took the place (killed between its two renames)"
            );
            sync_holder_or_warn(target)
        }
        many => Err(several_stranded(target, many)),
    }
}

/// Refuse (exit 3) a shard of a run writing `target` when `target`'s previous output is
/// stranded beside it ([`restore_stranded_output`]): a shard locks only its own folder,
/// so it cannot put the output back, and its checks (a reconcile over a close) would not
/// see it.
pub fn refuse_a_stranded_output(target: &Path) -> Result<()> {
    let stranded = stranded_of(target);
    match stranded.as_slice() {
        [] => Ok(()),
        [old] => Err(TallyError::Refused(format!(
            "{}: the output that belongs at {} is only there, swapped out by a publish that \
             was stopped before its new output took the place; a shard cannot put it back: \
             rerun the run that wrote it on one machine (its command without --shard, with \
             its --history if it had one; or its merge, if its shard folders are still there), \
             which puts it back first, or rename it back \
             by hand (mv {} {}, whatever is at {} removed first), then run the shards",
            old.display(),
            target.display(),
            old.display(),
            target.display(),
            target.display()
        ))),
        many => Err(several_stranded(target, many)),
    }
}

/// The refusal of an output with several stranded previous outputs beside it: which one
/// belongs there is for a person to say.
pub fn several_stranded(target: &Path, stranded: &[PathBuf]) -> TallyError {
    TallyError::Refused(format!(
        "{} is {}, and {} previous outputs of it are beside it ({}), swapped out by publishes \
         that did not finish: remove whatever is at {} and rename the one that belongs there \
         back to it, remove the others, then rerun",
        target.display(),
        not_an_output(target),
        stranded.len(),
        (stranded.iter())
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        target.display()
    ))
}

/// Remove the staging folders of `target` that earlier runs left (killed, or their
/// previous output not removed), but not a previous output that is the only copy of the
/// output (its target is missing). The caller holds the output's lock, which every run
/// writing `target` takes before its staging folder: none of them is a live run's (a
/// process id, which another machine's run or a reused id would fool, is not asked).
pub fn clean_stale_staging(target: &Path) -> Result<()> {
    let (parent, prefix) = staging_prefix(target)?;
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Not another output's (`NAME.tally-staging-5` has staging folders that start
        // with this one's prefix too).
        let Some(pid) = name.strip_prefix(&prefix).filter(|pid| is_staging_pid(pid)) else {
            continue;
        };
        if stranded(&entry.path(), pid, target) {
            tracing::warn!(
                folder = %entry.path().display(),
                target = %target.display(),
                "a previous output, swapped out by a publish that did not finish, is kept: \
                 rename it to the output folder by hand if it should be there again"
            );
            continue;
        }
        tracing::warn!(folder = %entry.path().display(), "removing a staging folder left by an earlier run");
        if let Err(e) = std::fs::remove_dir_all(entry.path()) {
            tracing::warn!(
                folder = %entry.path().display(),
                error = %e,
                "cannot remove it: remove it by hand (as the user that owns its files)"
            );
        }
    }
    Ok(())
}

/// Create a fresh staging folder beside `target`.
pub fn create_staging(target: &Path) -> Result<PathBuf> {
    let (parent, prefix) = staging_prefix(target)?;
    create_folder_all(&parent)?;
    clean_stale_staging(target)?;
    let staging = parent.join(format!("{prefix}{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(write_err(&staging))?;
    }
    // Remembered before it is made: an interrupt then either removes it or stops us first.
    if !crate::interrupt::remember(staging.clone()) {
        return Err(crate::interrupt::interrupted());
    }
    std::fs::create_dir(&staging).map_err(write_err(&staging))?;
    Ok(staging)
}

/// Move the finished staging folder to `target`. An existing output folder is swapped out
/// in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`), so that at every instant the
/// target path holds either the old complete folder or the new one; the old one is then
/// removed. Where the exchange is not available it falls back to two renames.
pub fn publish(staging: &Path, target: &Path) -> Result<()> {
    let published = publish_staging(staging, target);
    if published.is_err() && staging.exists() {
        // Nothing was published: the staging folder holds the new output, which no one
        // will rename now (a failed run leaves no folder behind).
        discard_staging(staging);
    }
    published
}

/// Remove a staging folder that will not be published (its writing or its publish failed),
/// and stop watching it for an interrupt.
pub fn discard_staging(staging: &Path) {
    let _ = std::fs::remove_dir_all(staging);
    crate::interrupt::forget(staging);
}

/// [`publish`], leaving the staging folder in place when it fails.
fn publish_staging(staging: &Path, target: &Path) -> Result<()> {
    publish_staging_by(staging, target, exchange)
}

/// [`publish_staging`] with the atomic exchange given (a test's stands for a kernel or
/// file system without one).
fn publish_staging_by(
    staging: &Path,
    target: &Path,
    exchange: fn(&Path, &Path) -> std::io::Result<()>,
) -> Result<()> {
    let (parent, prefix) = staging_prefix(target)?;
    sync_folder(staging)?;
    // An interrupt waits for the rename instead of removing a folder being renamed.
    let mut published = crate::interrupt::publishing();
    if target.exists() {
        match exchange(staging, target) {
            // `staging` now holds the previous output.
            Ok(()) => remove_previous_output(staging),
            // Any other failure (a disk error, the output a mount point) would fail the
            // renames too, after the output had been moved aside: nothing is published.
            Err(e) if !cannot_exchange(&e) => return Err(exchange_failed(target, e)),
            Err(_) => {
                let old = parent.join(format!("{prefix}{}{PREVIOUS_SUFFIX}", std::process::id()));
                std::fs::rename(target, &old).map_err(write_err(target))?;
                if let Err(e) = std::fs::rename(staging, target) {
                    // The previous output back in its place: a failed run replaces nothing.
                    if let Err(back) = std::fs::rename(&old, target) {
                        return Err(TallyError::Output {
                            file: target.display().to_string(),
                            message: format!(
                                "{e}; the previous output is in {} ({back} putting it back): \
                                 rename it to {} by hand",
                                old.display(),
                                target.display()
                            ),
                        });
                    }
                    return Err(write_err(target)(e));
                }
                remove_previous_output(&old);
            }
        }
    } else {
        std::fs::rename(staging, target).map_err(write_err(target))?;
    }
    published.push(target.to_path_buf());
    drop(published);
    crate::interrupt::forget(staging);
    tracing::debug!(staging = %staging.display(), target = %target.display(), "published");
    // Published: a failure here is a warning, since an error would say nothing was.
    if let Err(e) = sync_as_named(&parent) {
        tracing::warn!(
            folder = %parent.display(),
            error = %e,
            "published, but the folder holding the output cannot be synced to disk: after a \
             crash before the system writes it, the previous output may be back; check the \
             disk, and rerun if the machine goes down before then"
        );
    }
    Ok(())
}

/// Remove the previous output, swapped out to `old` once the new one is in place. The run
/// has published by then: a failure (files of another user, left by a run by hand as root)
/// is a warning, not an error, since an error would say that nothing was published. The
/// folder keeps its staging name, so the next run tries again and says so.
fn remove_previous_output(old: &Path) {
    if let Err(e) = std::fs::remove_dir_all(old) {
        tracing::warn!(
            folder = %old.display(),
            error = %e,
            "published; the previous output, swapped out to this folder, cannot be removed: \
             remove it by hand (as the user that owns its files)"
        );
    }
}

/// Create `folder` and the folders above it that are missing, each made durable (the
/// folder holding it synced), so that an output later published in a new folder is not
/// lost with its folder after a crash (the publish syncs only the folder it renames into).
pub fn create_folder_all(folder: &Path) -> Result<()> {
    let missing: Vec<&Path> = folder.ancestors().take_while(|a| !a.exists()).collect();
    std::fs::create_dir_all(folder).map_err(write_err(folder))?;
    missing
        .iter()
        .rev()
        .try_for_each(|made| sync_holder_or_warn(made))
}

/// How many files [`sync_folder`] syncs at once: a sync mostly waits for the disk, and
/// syncs waiting together share the file system's journal commits.
pub const SYNCS_AT_ONCE: usize = 8;

/// Sync `folder` to disk: every file and folder under it (the files first, in
/// [`SYNCS_AT_ONCE`] threads), then the folder itself, so that a folder renamed into place
/// afterwards holds every byte written to it even after a crash. A failure is the first
/// failing file's in path order (stopping there), whatever thread met it.
pub fn sync_folder(folder: &Path) -> Result<()> {
    let (files, folders) = files_and_folders_under(folder)?;
    sync_each(&files, &|path: &Path| sync_path(path))?;
    // The innermost folders first, the folder itself last.
    folders
        .iter()
        .rev()
        .try_for_each(|path| sync_path(path).map_err(write_err(path)))
}

/// The regular files under `folder` and the folders (`folder` first, each before what it
/// holds), both in path order. Links are not followed and neither is listed, nor is
/// anything else that is not a file or a folder (opening a FIFO to sync it would wait for
/// a writer forever).
fn files_and_folders_under(folder: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut files = Vec::new();
    let mut folders = vec![folder.to_path_buf()];
    let mut k = 0;
    while k < folders.len() {
        let listed = std::fs::read_dir(&folders[k]).map_err(write_err(&folders[k]))?;
        for entry in listed {
            let entry = entry.map_err(write_err(&folders[k]))?;
            let kind = entry.file_type().map_err(write_err(&entry.path()))?;
            match kind.is_dir() {
                true => folders.push(entry.path()),
                false if kind.is_file() => files.push(entry.path()),
                false => {}
            }
        }
        k += 1;
    }
    // A folder's path sorts before the paths under it.
    files.sort();
    folders.sort();
    Ok((files, folders))
}

/// Sync the folder holding `path` (which tally made or renamed there). A folder tally may
/// not read (a write-only drop folder) cannot be opened to sync: a warning, since what was
/// asked of it is done and only its durability is not sure. Any other failure (a failing
/// disk) is an error.
fn sync_holder_or_warn(path: &Path) -> Result<()> {
    let holder = folder_of(path);
    match sync_as_named(&holder) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            tracing::warn!(
                folder = %holder.display(),
                made = %path.display(),
                error = %e,
                "cannot open this folder to sync it to disk after making or renaming an entry \
                 in it: after a crash before the system writes it, the entry may be lost; let \
                 the user running tally read the folder"
            );
            Ok(())
        }
        Err(e) => Err(TallyError::write(&holder, e)),
    }
}

/// Sync the folder `path` names, a link followed (a folder above an output may be a link
/// to a mounted volume): the folders holding what tally made or renamed.
fn sync_as_named(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// Sync `path` (a file or a folder) through a handle of its own, not following a link.
fn sync_path(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?
        .sync_all()
}

/// `sync` every file of `files` (in path order), [`SYNCS_AT_ONCE`] at a time: on threads
/// of their own and on the calling thread (which syncs alone where no thread can be
/// started). The first failing file in `files`' order is reported (the files are taken in
/// order, so every file before a failing one was taken and finished); once one fails, no
/// file is taken.
fn sync_each(
    files: &[PathBuf],
    sync: &(dyn Fn(&Path) -> std::io::Result<()> + Sync),
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failed = std::sync::Mutex::new(None::<(usize, std::io::Error)>);
    let work = || {
        while !stop.load(Ordering::Relaxed) {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let Some(path) = files.get(k) else { break };
            if let Err(e) = sync(path) {
                stop.store(true, Ordering::Relaxed);
                let mut failed = failed.lock().unwrap_or_else(|p| p.into_inner());
                if failed.as_ref().is_none_or(|(first, _)| k < *first) {
                    *failed = Some((k, e));
                }
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..SYNCS_AT_ONCE.min(files.len()) {
            // A thread that cannot be started (a container's limit) is one fewer.
            let _ = std::thread::Builder::new().spawn_scoped(scope, work);
        }
        work();
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some((k, e)) => Err(TallyError::write(&files[k], e)),
        None => Ok(()),
    }
}

/// Ask the kernel to start writing `file`'s dirty pages to disk, without waiting, so that
/// the sync of [`sync_folder`] later mostly finds them written. A file system without the
/// call is not an error (the sync writes them); any other failure is (an earlier
/// writeback of the file that failed).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call; the call only reads it.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    match rc == 0 {
        true => Ok(()),
        false => match std::io::Error::last_os_error() {
            e if matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::EINVAL | libc::ESPIPE | libc::EOPNOTSUPP)
            ) =>
            {
                Ok(())
            }
            e => Err(e),
        },
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File) -> std::io::Result<()> {
    Ok(())
}

/// Close `file`, returning the close's error (which `File`'s drop ignores). Not retried:
/// on Linux the descriptor is gone whatever `close` returns.
fn close_checked(file: File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just released by `file`, so nothing else owns or closes it.
    match unsafe { libc::close(fd) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Whether an exchange failed because the kernel or the file system has none (not because
/// of the folders): the publish then swaps by two renames.
fn cannot_exchange(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported
        || matches!(
            e.raw_os_error(),
            // EPERM: a seccomp filter (some container profiles) refusing the call.
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::EPERM)
        )
}

/// The error of an exchange that failed for another reason than [`cannot_exchange`].
fn exchange_failed(target: &Path, e: std::io::Error) -> TallyError {
    let message = match e.raw_os_error() {
        Some(libc::EBUSY | libc::EXDEV) => format!(
            "{e}: the output folder cannot be replaced by a rename (it is a mount point, in \
             use, or on a file system that cannot rename it in place, such as an image's \
             lower layer under overlayfs); give a folder inside it, or elsewhere, as --out \
             (or `out` in the job file)"
        ),
        _ => format!("{e}; the previous output is as it was"),
    };
    TallyError::Output {
        file: target.display().to_string(),
        message,
    }
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::basic::Encoding;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    /// What `sync_folder` syncs: the files under a folder, nested and hidden ones too, and
    /// the folders, each before what it holds, in path order; not a FIFO (opening it to
    /// sync it would wait for a writer forever) nor a link (to a file or a folder outside).
    #[test]
    fn sync_folder_lists_files_and_folders_but_no_fifo_or_link() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("staging");
        let nested = root.join("report").join("deeper");
        std::fs::create_dir_all(&nested).unwrap();
        for file in [
            root.join("b.csv"),
            root.join(".hidden"),
            nested.join("a.csv"),
        ] {
            std::fs::write(file, b"a,b\n").unwrap();
        }
        let fifo = std::ffi::CString::new(nested.join("pipe").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("x"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("linked-folder")).unwrap();
        std::os::unix::fs::symlink(outside.join("x"), root.join("linked-file")).unwrap();
        let (files, folders) = files_and_folders_under(&root).unwrap();
        assert_eq!(
            files,
            [
                root.join(".hidden"),
                root.join("b.csv"),
                nested.join("a.csv")
            ]
        );
        assert_eq!(folders, [root.clone(), root.join("report"), nested]);
        sync_folder(&root).unwrap();
    }

    /// A failing sync is reported as the first failing file in path order, whichever
    /// thread met it first, with its path; every file before it was synced.
    #[test]
    fn sync_each_reports_the_first_failing_file_in_order() {
        let files: Vec<PathBuf> = (0..SYNCS_AT_ONCE * 4)
            .map(|k| PathBuf::from(format!("/staging/f{k:03}")))
            .collect();
        for _ in 0..20 {
            let synced = std::sync::Mutex::new(Vec::new());
            let sync = |path: &Path| {
                let k: usize = path.to_str().unwrap()[10..].parse().unwrap();
                if k == 5 || k == 9 {
                    // The later failing file tends to finish first.
                    std::thread::sleep(std::time::Duration::from_millis((9 - k as u64) * 2));
                    return Err(std::io::Error::other(format!("failed {k}")));
                }
                synced.lock().unwrap().push(k);
                Ok(())
            };
            let message = sync_each(&files, &sync).unwrap_err().to_string();
            assert!(
                message.contains("/staging/f005") && message.contains("failed 5"),
                "{message}"
            );
            let synced = synced.into_inner().unwrap();
            assert!((0..5).all(|k| synced.contains(&k)), "{synced:?}");
        }
        let all = sync_each(&files, &|_: &Path| Ok(()));
        assert!(all.is_ok());
    }

    /// `create_folder_all` makes every missing folder (syncing the folder holding each),
    /// is a no-op where the folder is there, and names the path it cannot make.
    #[test]
    fn create_folder_all_makes_the_missing_folders() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a").join("b").join("c");
        create_folder_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_folder_all(&deep).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let message = create_folder_all(&file.join("d")).unwrap_err().to_string();
        assert!(
            message.contains(&file.join("d").display().to_string()),
            "{message}"
        );
    }

    /// Only a kernel or file system without the exchange makes the publish swap by two
    /// renames (which leave the output missing for a moment); any other failure of the
    /// exchange fails the publish, and a mount point says so.
    #[test]
    fn only_a_missing_exchange_falls_back_to_two_renames() {
        let os = std::io::Error::from_raw_os_error;
        for errno in [libc::EINVAL, libc::ENOSYS, libc::EOPNOTSUPP, libc::EPERM] {
            assert!(cannot_exchange(&os(errno)), "{errno}");
        }
        assert!(cannot_exchange(&std::io::Error::from(
            std::io::ErrorKind::Unsupported
        )));
        for errno in [
            libc::EIO,
            libc::EBUSY,
            libc::EXDEV,
            libc::ENOSPC,
            libc::EACCES,
        ] {
            assert!(!cannot_exchange(&os(errno)), "{errno}");
        }
        let busy = exchange_failed(Path::new("/mnt/out"), os(libc::EBUSY)).to_string();
        assert!(
            busy.contains("/mnt/out") && busy.contains("mount point"),
            "{busy}"
        );
        let io = exchange_failed(Path::new("/x/out"), os(libc::EIO)).to_string();
        assert!(io.contains("the previous output is as it was"), "{io}");
    }

    /// Contract, section 6: "The output folder appears whole or not at all (write beside
    /// it, then rename)." Without the exchange (EINVAL, as from a file system that has
    /// none) the publish swaps by two renames: the new output in place, the previous one removed, no staging or
    /// `-old` folder left. Any other failure of the exchange publishes nothing and keeps
    /// the previous output; `publish` then removes the staging folder.
    #[test]
    fn without_the_exchange_two_renames_publish_and_other_failures_do_not() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out");
        let output = |folder: &Path, text: &str| {
            std::fs::create_dir(folder).unwrap();
            std::fs::write(folder.join("a.txt"), text).unwrap();
        };
        let staging_of = |pid: u32| {
            let (parent, prefix) = staging_prefix(&target).unwrap();
            parent.join(format!("{prefix}{pid}"))
        };
        let names = || {
            let mut names: Vec<String> = std::fs::read_dir(root.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        output(&target, "old");
        let staging = staging_of(std::process::id());
        output(&staging, "new");
        let missing = |_: &Path, _: &Path| Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        publish_staging_by(&staging, &target, missing).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("a.txt")).unwrap(),
            "new"
        );
        assert_eq!(names(), ["out"], "no staging or -old folder left");

        output(&staging, "newer");
        let failing = |_: &Path, _: &Path| Err(std::io::Error::from_raw_os_error(libc::EIO));
        let error = publish_staging_by(&staging, &target, failing)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("the previous output is as it was"),
            "{error}"
        );
        assert_eq!(
            std::fs::read_to_string(target.join("a.txt")).unwrap(),
            "new"
        );
        assert!(
            staging.exists(),
            "publish_staging leaves it to publish to remove"
        );
    }

    /// A folder that is not there is reported with its path.
    #[test]
    fn sync_folder_names_a_missing_folder() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let message = sync_folder(&gone).unwrap_err().to_string();
        assert!(message.contains(&gone.display().to_string()), "{message}");
    }

    /// A publish that fails (here a staging folder on another file system than its target:
    /// every rename is EXDEV) removes its staging folder, and leaves the previous output at
    /// the target, as it was; a new target is not made.
    #[test]
    fn a_failed_publish_removes_its_staging_and_keeps_the_previous_output() {
        use std::os::unix::fs::MetadataExt;
        let shm = Path::new("/dev/shm");
        let here = tempfile::tempdir().unwrap();
        let elsewhere = match tempfile::tempdir_in(shm) {
            Ok(dir) if shm.metadata().unwrap().dev() != here.path().metadata().unwrap().dev() => {
                dir
            }
            _ => {
                eprintln!("skipped: /dev/shm is not another file system to publish across");
                return;
            }
        };
        let staging = |name: &str| {
            let staging = elsewhere.path().join(name);
            std::fs::create_dir(&staging).unwrap();
            std::fs::write(staging.join("new.txt"), "new").unwrap();
            staging
        };
        // Over a previous output: the exchange and the second rename fail; it is put back.
        let target = here.path().join("out");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("old.txt"), "old").unwrap();
        let first = staging("first");
        assert!(publish(&first, &target).is_err());
        assert!(!first.exists(), "staging removed");
        assert_eq!(
            std::fs::read_to_string(target.join("old.txt")).unwrap(),
            "old"
        );
        assert!(!target.join("new.txt").exists());
        let left: Vec<_> = std::fs::read_dir(here.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the previous output: {left:?}");
        // A new target: nothing is made.
        let new_target = here.path().join("new");
        let second = staging("second");
        assert!(publish(&second, &new_target).is_err());
        assert!(!second.exists() && !new_target.exists());
    }

    /// A staging folder a dead run left is removed; a previous output it swapped out is
    /// kept while the target is missing or no tally output (the next run removed the only
    /// copy of the output the failed publish's message said to rename back by hand), and
    /// removed once a tally output is at the target again.
    #[test]
    fn a_swapped_out_previous_output_is_kept_while_the_target_is_missing() {
        let here = tempfile::tempdir().unwrap();
        let target = here.path().join("out");
        let (_, prefix) = staging_prefix(&target).unwrap();
        // No process has a pid this large (pid_max is at most 2^22).
        let dead = here.path().join(format!("{prefix}99999999"));
        let previous = here
            .path()
            .join(format!("{prefix}99999999{PREVIOUS_SUFFIX}"));
        for folder in [&dead, &previous] {
            std::fs::create_dir(folder).unwrap();
            std::fs::write(folder.join("summary.json"), "{}").unwrap();
        }
        clean_stale_staging(&target).unwrap();
        assert!(!dead.exists(), "a dead run's staging folder is removed");
        assert!(
            previous.join("summary.json").exists(),
            "the only copy is kept"
        );
        // An empty folder at the target (a script's `mkdir -p`) is no output.
        std::fs::create_dir(&target).unwrap();
        clean_stale_staging(&target).unwrap();
        assert!(previous.exists(), "kept beside an empty folder");
        std::fs::write(target.join("manifest.json"), r#"{"tool": "tally"}"#).unwrap();
        clean_stale_staging(&target).unwrap();
        assert!(!previous.exists(), "removed once the target is there again");
    }

    /// The staging folders of an output whose name holds the staging infix
    /// (`out.tally-staging-5`) are its own, not those of `out`, whose cleaning leaves them.
    #[test]
    fn another_outputs_staging_folders_are_not_cleaned() {
        let here = tempfile::tempdir().unwrap();
        let target = here.path().join("out");
        let other = here.path().join("out.tally-staging-5");
        let (_, other_prefix) = staging_prefix(&other).unwrap();
        let others = [
            here.path().join(format!("{other_prefix}123")),
            here.path()
                .join(format!("{other_prefix}123{PREVIOUS_SUFFIX}")),
        ];
        for folder in &others {
            std::fs::create_dir(folder).unwrap();
        }
        clean_stale_staging(&target).unwrap();
        assert!(others.iter().all(|f| f.is_dir()));
        let stranded = stranded_previous_outputs(here.path());
        assert_eq!(stranded, [(others[1].clone(), other.clone())]);
        assert!(is_staging_pid("12") && is_staging_pid("12-old"));
        assert!(!is_staging_pid("") && !is_staging_pid("-old") && !is_staging_pid("5.x"));
    }

    /// A writer that takes at most 3 bytes a call (as a file may take part of a write).
    struct Short(Vec<u8>);

    impl Write for Short {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Only `open_regular`'s own refusal is told apart as "not a regular file", not any
    /// error of the same kind.
    #[test]
    fn only_open_regulars_refusal_counts_as_not_a_regular_file() {
        let folder = std::env::temp_dir();
        let refused = open_regular(&folder).expect_err("a folder is refused");
        assert!(is_not_a_regular_file(&refused));
        let nul = open_regular(Path::new("a\0b")).expect_err("a NUL byte in a path");
        assert_eq!(nul.kind(), std::io::ErrorKind::InvalidInput);
        assert!(!is_not_a_regular_file(&nul));
    }

    /// Short writes hash only what the writer took: the hash is that of the bytes it holds
    /// (through a buffer, and with writes larger than the buffer going straight through).
    #[test]
    fn short_writes_hash_only_the_bytes_taken() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let hashed = Hashed {
            inner: Short(Vec::new()),
            hasher: Sha256::new(),
        };
        let mut out = BufWriter::with_capacity(64, hashed);
        out.write_all(&data[..10]).unwrap();
        out.write_all(&data[10..5_000]).unwrap();
        out.write_all(&data[5_000..]).unwrap();
        let hashed = out.into_inner().map_err(|e| e.into_error()).unwrap();
        assert_eq!(hashed.inner.0, data);
        assert_eq!(
            hex::encode(hashed.hasher.finalize()),
            hex::encode(Sha256::digest(&data))
        );
    }

    /// The sha256 made while writing is the file's: for writes that stay in the buffer,
    /// one larger than the buffer (it goes straight to the file) and an empty file; a
    /// file written over is hashed from empty; `sha256_file` of a file larger than its
    /// 1 MiB read buffer, of an empty one and of a 5-byte one.
    #[test]
    fn a_file_written_through_is_hashed_as_it_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let large: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, b"older, longer content that must not count").unwrap();
        let sha256 = write_through(&path, |out| {
            out.write_all(b"head,")?;
            out.write_all(&large)?;
            out.write_all(b"tail\n")
        })
        .unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3_000_010);
        assert_eq!(sha256, sha256_file(&path).unwrap());
        assert_eq!(
            write_bytes(&path, b"").unwrap(),
            sha256_file(&path).unwrap()
        );
        assert_eq!(
            sha256_file(&path).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // A file smaller than the smallest read buffer, hashed whole.
        write_bytes(&path, b"hello").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }

    /// A row group ends at [`ROW_GROUP_BYTES`] of encoded data (the writer holds a row
    /// group in memory until it is whole): 24,000 rows of 4 KiB ids that hardly compress,
    /// 94 MiB streamed in batches of 16 MiB (as [`STREAM_CHUNK`] cuts them), make two row
    /// groups of at most the limit (and a page), not one. (The writer learns a row's size
    /// from the batches before: one batch of 80 MiB would be one row group, but then the
    /// batch itself holds that memory.)
    #[test]
    fn row_groups_end_at_their_byte_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let mut rng = crate::generate::Rng::new(1, 0, 0);
        // Random printable ASCII: ids zstd barely shortens.
        let mut random_id = || {
            (0..4096)
                .map(|_| char::from(b'!' + (rng.next_u64() >> 57) as u8 % 94))
                .collect::<String>()
        };
        let ids: Vec<String> = (0..24_000).map(|_| random_id()).collect();
        assert_eq!(ids[0].len(), 4096);
        assert!(ids[0].bytes().all(|b| b.is_ascii_graphic()));
        let batch = |ids: &[String]| {
            Table::default()
                .str("event_id", ids.iter().map(String::as_str))
                .finish()
        };
        let mut out = ParquetOut::create(&path, batch(&[]).schema()).unwrap();
        for chunk in ids.chunks(4096) {
            out.write(&batch(chunk)).unwrap();
        }
        out.finish().unwrap();
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let groups = reader.metadata().row_groups();
        assert_eq!(groups.len(), 2, "94 MiB of ids in row groups of 64 MiB");
        let rows: i64 = groups.iter().map(|g| g.num_rows()).sum();
        assert_eq!(rows, 24_000);
        for group in groups {
            assert!(group.compressed_size() <= (ROW_GROUP_BYTES + (2 << 20)) as i64);
        }
    }

    /// Id columns are written plain (no dictionary to fill and drop); others keep theirs.
    #[test]
    fn unique_id_columns_are_written_without_a_dictionary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let ids: Vec<String> = (0..1000).map(|i| format!("evt-{i:016x}")).collect();
        let lists: Vec<Vec<String>> = ids
            .iter()
            .map(|id| vec![id.replace("evt", "led")])
            .collect();
        let batch = Table::default()
            .str("account_id", ids.iter().map(|_| "acct-1"))
            .str("event_id", ids.iter().map(String::as_str))
            .str_lists("entry_ids", lists.iter().map(Vec::as_slice))
            .ts(
                "occurred_at",
                (0..1000).map(|i| 1_700_000_000_000_000 + i * 1_000),
            )
            .finish();
        write_parquet(&path, &batch).unwrap();
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let group = reader.metadata().row_group(0);
        let dictionary = |column: usize| {
            group
                .column(column)
                .encodings()
                .any(|e| e == Encoding::RLE_DICTIONARY)
        };
        assert!(dictionary(0), "account_id keeps its dictionary");
        assert!(!dictionary(1), "event_id is written plain");
        assert!(!dictionary(2), "entry_ids items are written plain");
        assert!(!dictionary(3), "occurred_at is written plain");
    }

    /// A panic while a streamed table is built reaches the caller as the same panic, its
    /// own message, not a second one naming the thread (stderr would show two).
    #[test]
    fn a_panic_in_the_stream_producer_reaches_the_caller_unchanged() {
        use crate::engine::BilledEventRow;
        fn batch(rows: &[BilledEventRow]) -> RecordBatch {
            if !rows.is_empty() {
                panic!("building a chunk failed");
            }
            billed_events_batch(rows)
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("billed_events.parquet");
        let row = BilledEventRow {
            account_id: "acct-1".into(),
            invoice_id: "INV-acct-1".into(),
            event_id: "evt-1".into(),
            occurred_at: 0,
            credits: Some(crate::amount::Milli(1000)),
        };
        let runs = [crate::runs::Run::Memory(vec![vec![row].into()])];
        let caught = std::panic::catch_unwind(|| write_streamed(&path, &runs, batch, None));
        let payload = caught.expect_err("the producer's panic reaches the caller");
        assert_eq!(
            payload.downcast_ref::<&str>(),
            Some(&"building a chunk failed")
        );
    }
}
