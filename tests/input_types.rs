//! Other physical encodings of the same values are read like the fixtures' own (contract
//! section 2: amounts as INT32/INT64, DECIMAL(p, s) or DOUBLE, timestamps of any unit,
//! any Parquet writer): golden scenarios whose inputs are rewritten with every amount as a
//! wide DECIMAL(76, 38) (BigQuery's BIGNUMERIC: 2.5 is stored as 25 × 10^37, past 128
//! bits), as DECIMAL(9, 3) and DECIMAL(18, 3) in the Arrow schema a writer stores as
//! `Decimal32`/`Decimal64`, or with amounts, instants and priorities dictionary-encoded
//! (amounts also as dictionaries of DECIMAL(38, 3), stored as fixed-length bytes),
//! give the same outputs as the scenario's own inputs; so do inputs with every string as
//! LARGE UTF8, as string views or as a dictionary with 16-bit keys (contract section 2:
//! "Strings: UTF8 (dictionary-encoded or not)"), whole and split in two groups (the light
//! pass and the spill read ids and accounts by other paths).

use crate::common::*;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use std::path::Path;
use std::sync::Arc;

/// The columns the contract reads as credit amounts or quantities.
const AMOUNTS: [&str; 3] = ["quantity", "included_credits", "credits"];

#[derive(Clone, Copy, Debug)]
enum Encoding {
    /// Amounts as DECIMAL(76, 38).
    WideDecimal,
    /// Amounts as Arrow Decimal32(9, 3).
    Decimal32,
    /// Amounts as Arrow Decimal64(18, 3).
    Decimal64,
    /// Amounts, instants and priorities as dictionaries of their values.
    Dictionary,
    /// Amounts as dictionaries of DECIMAL(38, 3), which a writer stores as fixed-length
    /// bytes (pyarrow's `dictionary_encode()` of a DECIMAL column): the reader has no
    /// dictionary decoder for those, so tally asks for the values. Contract section 2:
    /// "Credit amounts and quantities: INT32/INT64, DECIMAL(p, s) or DOUBLE".
    DecimalDictionary,
    /// Every string as LARGE UTF8.
    LargeStrings,
    /// Every string as string views.
    StringViews,
    /// Every string as a dictionary with 16-bit keys.
    StringDictionaries,
}

impl Encoding {
    /// Whether it re-encodes strings (run split too: the light pass reads them).
    fn of_strings(self) -> bool {
        matches!(
            self,
            Encoding::LargeStrings | Encoding::StringViews | Encoding::StringDictionaries
        )
    }
}

/// The type a column takes in `encoding` (`None`: left as it is).
fn encoded_type(encoding: Encoding, name: &str, dt: &DataType) -> Option<DataType> {
    let amount = AMOUNTS.contains(&name);
    let string = *dt == DataType::Utf8;
    let dictionary = || DataType::Dictionary(Box::new(DataType::Int32), Box::new(dt.clone()));
    match encoding {
        Encoding::WideDecimal if amount => Some(DataType::Decimal256(76, 38)),
        Encoding::Decimal32 if amount => Some(DataType::Decimal32(9, 3)),
        Encoding::Decimal64 if amount => Some(DataType::Decimal64(18, 3)),
        Encoding::Dictionary
            if amount || name == "priority" || matches!(dt, DataType::Timestamp(..)) =>
        {
            Some(dictionary())
        }
        Encoding::DecimalDictionary if amount => Some(DataType::Dictionary(
            Box::new(DataType::Int32),
            Box::new(DataType::Decimal128(38, 3)),
        )),
        Encoding::LargeStrings if string => Some(DataType::LargeUtf8),
        Encoding::StringViews if string => Some(DataType::Utf8View),
        Encoding::StringDictionaries if string => Some(DataType::Dictionary(
            Box::new(DataType::Int16),
            Box::new(DataType::Utf8),
        )),
        _ => None,
    }
}

/// The batch in `encoding`, and how many of its columns that changed.
fn encode(batch: &RecordBatch, encoding: Encoding) -> (RecordBatch, usize) {
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    let mut changed = 0;
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match encoded_type(encoding, field.name(), field.data_type()) {
            Some(to) => {
                changed += 1;
                let cast = arrow::compute::cast(column, &to)
                    .unwrap_or_else(|e| panic!("{} as {to}: {e}", field.name()));
                fields.push(Field::new(field.name(), to, field.is_nullable()));
                columns.push(cast);
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    (batch, changed)
}

/// Copy a data root with every Parquet file rewritten in `encoding` (with its Arrow
/// schema stored in the file, as pyarrow and arrow-rs writers do).
fn rewrite_root(from: &Path, to: &Path, encoding: Encoding) {
    copy_dir(from, to);
    let mut changed = 0;
    for (rel, _) in folder_bytes(to) {
        if !rel.ends_with(".parquet") {
            continue;
        }
        let path = to.join(&rel);
        let (batch, columns) = encode(&read_parquet(&path), encoding);
        changed += columns;
        let file = std::fs::File::create(&path).unwrap();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }
    assert!(
        changed > 0,
        "{encoding:?} changed no column of {}",
        from.display()
    );
}

/// Every output but the manifest (which holds the inputs' sha256), as text.
fn outputs(out: &Path) -> Vec<(String, String)> {
    folder_bytes(out)
        .into_iter()
        .filter(|(name, _)| name != "manifest.json")
        .map(|(name, bytes)| {
            let text = if name.ends_with(".parquet") {
                render(&out.join(&name), &[])
            } else {
                String::from_utf8(bytes).unwrap()
            };
            (name, text)
        })
        .collect()
}

/// The outputs of a run (with `extra` arguments), or why it failed.
fn run(
    command: &str,
    data: &Path,
    as_of: &str,
    out: &Path,
    extra: &[&str],
) -> Result<Vec<(String, String)>, String> {
    let run = run_command(command, data, as_of, out)
        .args(extra)
        .output()
        .unwrap();
    match run.status.code() {
        Some(0) => Ok(outputs(out)),
        code => Err(format!("exit {code:?}: {}", stderr(&run))),
    }
}

fn same_outputs_in_every_encoding(scenario: &str, command: &str, as_of: &str) {
    let data = repo().join("fixtures/golden").join(scenario).join("data");
    let tmp = tempfile::tempdir().unwrap();
    let reference = run(command, &data, as_of, &tmp.path().join("reference"), &[]).unwrap();
    let mut failures = Vec::new();
    for encoding in [
        Encoding::WideDecimal,
        Encoding::Decimal32,
        Encoding::Decimal64,
        Encoding::Dictionary,
        Encoding::DecimalDictionary,
        Encoding::LargeStrings,
        Encoding::StringViews,
        Encoding::StringDictionaries,
    ] {
        let root = tmp.path().join(format!("{encoding:?}"));
        rewrite_root(&data, &root, encoding);
        let splits: &[&[&str]] = match encoding.of_strings() {
            true => &[&[], &["--groups", "2"]],
            false => &[&[]],
        };
        for (i, extra) in splits.iter().enumerate() {
            let label = format!("{encoding:?} {extra:?}");
            let out = tmp.path().join(format!("{encoding:?}-out-{i}"));
            match run(command, &root, as_of, &out, extra) {
                Err(why) => failures.push(format!("{label}: {why}")),
                Ok(actual) if actual != reference => {
                    let differing: Vec<&str> = reference
                        .iter()
                        .filter(|file| !actual.contains(file))
                        .map(|(name, _)| name.as_str())
                        .collect();
                    failures.push(format!("{label}: {differing:?} differ"));
                }
                Ok(_) => {}
            }
        }
    }
    assert!(failures.is_empty(), "{scenario}: {failures:#?}");
}

#[test]
fn reconcile_reads_wide_narrow_and_dictionary_encoded_numbers_and_strings_alike() {
    same_outputs_in_every_encoding("pricing_and_kinds", "reconcile", "2026-11-20T12:00:00Z");
}

#[test]
fn close_reads_wide_narrow_and_dictionary_encoded_numbers_and_strings_alike() {
    same_outputs_in_every_encoding("close_renewal_grants", "close", "2026-12-01T06:00:00Z");
}
