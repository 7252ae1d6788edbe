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

/// Write `usage/part-0.parquet` under `root` with `occurred_at` as legacy INT96 (Spark,
/// Hive, Impala; arrow's writer does not write it): rows of (event_id, Julian day,
/// nanoseconds of the day), each one AI twin of `acct`. With `stored`, the file also
/// stores an Arrow schema giving `occurred_at` that type (as pyarrow does).
fn write_int96_usage(root: &Path, acct: &str, rows: &[(&str, i32, i64)], stored: Option<DataType>) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type, Int96, Int96Type};
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let mut properties = WriterProperties::builder();
    if let Some(occurred_at) = stored {
        let text = |name: &str| Field::new(name, DataType::Utf8, false);
        let arrow_schema = Schema::new(vec![
            text("event_id"),
            text("account_id"),
            text("product"),
            text("action"),
            Field::new("quantity", DataType::Int64, false),
            text("status"),
            Field::new("occurred_at", occurred_at, false),
        ]);
        properties = properties.set_key_value_metadata(Some(vec![KeyValue::new(
            parquet::arrow::ARROW_SCHEMA_META_KEY.to_string(),
            parquet::arrow::encode_arrow_schema(&arrow_schema),
        )]));
    }
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message usage {
                required binary event_id (UTF8); required binary account_id (UTF8);
                required binary product (UTF8); required binary action (UTF8);
                required int64 quantity; required binary status (UTF8);
                required int96 occurred_at;
            }",
        )
        .unwrap(),
    );
    std::fs::create_dir_all(root.join("usage")).unwrap();
    let file = std::fs::File::create(root.join("usage/part-0.parquet")).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, Arc::new(properties.build())).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let text =
        |values: Vec<&str>| -> Vec<ByteArray> { values.into_iter().map(ByteArray::from).collect() };
    let n = rows.len();
    let strings = [
        text(rows.iter().map(|r| r.0).collect()),
        text(vec![acct; n]),
        text(vec!["captions"; n]),
        text(vec!["ai_twin_creation"; n]),
    ];
    for values in &strings {
        let mut column = group.next_column().unwrap().unwrap();
        column
            .typed::<ByteArrayType>()
            .write_batch(values, None, None)
            .unwrap();
        column.close().unwrap();
    }
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<Int64Type>()
        .write_batch(&vec![1i64; n], None, None)
        .unwrap();
    column.close().unwrap();
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<ByteArrayType>()
        .write_batch(&text(vec!["succeeded"; n]), None, None)
        .unwrap();
    column.close().unwrap();
    let instants: Vec<Int96> = rows
        .iter()
        .map(|&(_, day, nanos)| {
            let mut v = Int96::new();
            v.set_data(nanos as u32, (nanos >> 32) as u32, day as u32);
            v
        })
        .collect();
    let mut column = group.next_column().unwrap().unwrap();
    column
        .typed::<Int96Type>()
        .write_batch(&instants, None, None)
        .unwrap();
    column.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
}

/// INT96 instants are the instants they say (contract section 2: timestamps of any unit),
/// also outside the years 1677-2262 that nanoseconds hold: read as nanoseconds, one in
/// 2611 wrapped around 2^64 ns onto 2026-11-05T12:00:00Z and was billed as a November
/// event (missing_debit), and one in the year 10000 was read as 1816 (no_allocation), not
/// rejected as bad_value (a Parquet audit's finding). So also when the file's stored
/// Arrow schema calls the column microseconds with a time zone, or dictionary-encoded
/// (the reader has no dictionary of INT96: it panicked, and the file was "corrupt").
#[test]
fn int96_instants_outside_the_nanosecond_years_are_read_as_themselves() {
    let utc = Some("UTC".into());
    let micros = DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, utc);
    let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(micros.clone()));
    for stored in [None, Some(micros), Some(dictionary)] {
        int96_instants_are_read_as_themselves(stored);
    }
}

fn int96_instants_are_read_as_themselves(stored: Option<DataType>) {
    use tally::write::{write_parquet, Table};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    root_with_pricebook(&root);
    let t = |s: &str| tally::time::parse_instant(s).unwrap();
    let allocations = Table::default()
        .str("account_id", ["acct_pro"])
        .str("plan_id", ["pro"])
        .ts("period_start", [t("2026-11-01T00:00:00Z")])
        .ts("period_end", [t("2026-12-01T00:00:00Z")])
        .credits("included_credits", [tally::amount::Milli::from_units(200)])
        .opt_ts("billing_anchor", [None])
        .str("status", ["active"])
        .finish();
    write_parquet(&root.join("allocations/part-0.parquet"), &allocations).unwrap();
    // Julian day and nanoseconds of the day of an instant `ns` nanoseconds from 1970.
    const EPOCH_JULIAN_DAY: i128 = 2_440_588;
    const DAY_NS: i128 = 86_400_000_000_000;
    let int96 = |ns: i128| {
        let day = EPOCH_JULIAN_DAY + ns.div_euclid(DAY_NS);
        (i32::try_from(day).unwrap(), ns.rem_euclid(DAY_NS) as i64)
    };
    let november = i128::from(t("2026-11-05T12:00:00Z")) * 1000;
    let (day, nanos) = int96(november);
    let (far_day, far_nanos) = int96(november + (1i128 << 64));
    write_int96_usage(
        &root,
        "acct_pro",
        &[
            ("in-november", day, nanos),
            // 2611-05-27T11:34:33.709551616Z: after the as-of, outside the window.
            ("in-2611", far_day, far_nanos),
            // 10000-01-01T00:00:00Z: past the years 0001-9999 an instant may be.
            ("in-10000", 5_373_485, 0),
        ],
        stored.clone(),
    );
    std::fs::create_dir_all(root.join("debits")).unwrap();
    let out = tmp.path().join("out");
    let ran = run_command("reconcile", &root, "2026-11-20T00:00:00Z", &out)
        .output()
        .unwrap();
    assert!(ran.status.success(), "{stored:?}: {}", stderr(&ran));
    let column = |table: &str, name: &str| {
        let batch = read_parquet(&out.join(table));
        let values =
            arrow::compute::cast(batch.column_by_name(name).unwrap(), &DataType::Utf8).unwrap();
        let values = values
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        values
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(column("discrepancies.parquet", "event_id"), ["in-november"]);
    assert_eq!(column("rejects.parquet", "reason"), ["bad_value"]);
    assert_eq!(column("rejects.parquet", "row"), ["2"]);
}

/// Rewrite the Parquet file `path` with its column `from` named `to` (`None`: dropped).
fn rename_column(path: &Path, from: &str, to: Option<&str>) {
    let batch = read_parquet(path);
    let (fields, columns): (Vec<Field>, Vec<_>) = (batch.schema().fields().iter())
        .zip(batch.columns())
        .filter_map(|(f, column)| match (f.name() == from, to) {
            (true, None) => None,
            (true, Some(to)) => Some((f.as_ref().clone().with_name(to), column.clone())),
            (false, _) => Some((f.as_ref().clone(), column.clone())),
        })
        .unzip();
    let renamed = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, renamed.schema(), None).unwrap();
    writer.write(&renamed).unwrap();
    writer.close().unwrap();
}

/// A nullable column under another spelling (`expiresAt`, `Billing_Anchor`) is not read,
/// so the contract's column reads as null, as a missing nullable column does: the run goes
/// on (valid input), but warns once a column, naming the file, the name it found and the
/// fix (a misspelt required column is exit 2, tested in bad_data.rs).
#[test]
fn a_nullable_column_under_another_spelling_is_warned_of() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let warnings = |out: &str| {
        let output = succeeded(&mut run_command(
            "reconcile",
            &data,
            "2026-11-20T00:00:00Z",
            &tmp.path().join(out),
        ));
        (json_log(&output).into_iter())
            .filter(|line| line["fields"]["files_misnamed"].is_number())
            .map(|line| line["fields"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(warnings("as-is"), Vec::<serde_json::Value>::new());
    rename_column(
        &data.join("grants/part-0.parquet"),
        "expires_at",
        Some("expiresAt"),
    );
    rename_column(
        &data.join("allocations/part-0.parquet"),
        "billing_anchor",
        Some("Billing_Anchor"),
    );
    let warned = warnings("renamed");
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert_eq!(
        warned[0]["message"],
        "allocations/part-0.parquet holds a column \"Billing_Anchor\" and no `billing_anchor`: \
         column names must match exactly (case, `_` and all), so \"Billing_Anchor\" is not \
         read and `billing_anchor` is read as null in it; if it is `billing_anchor`, rename it \
         and rerun"
    );
    assert_eq!(
        (
            &warned[1]["dataset"],
            &warned[1]["column"],
            &warned[1]["found"]
        ),
        (&"grants".into(), &"expires_at".into(), &"expiresAt".into())
    );
    assert_eq!(warned[1]["files_misnamed"], 1);
    // The contract: extra columns are ignored, and a nullable column absent from a file
    // reads as null. A close (whose renewals the anchor decides) of the renamed files gives
    // the outputs of the files without the two columns, and the columns, read, give others.
    let closed = |root: &Path, name: &str| {
        let out = tmp.path().join("closes").join(name);
        succeeded(&mut run_command(
            "close",
            root,
            "2026-12-01T00:00:00Z",
            &out,
        ));
        outputs(&out)
    };
    let dropped = demo_copy(&tmp.path().join("dropped"));
    rename_column(&dropped.join("grants/part-0.parquet"), "expires_at", None);
    rename_column(
        &dropped.join("allocations/part-0.parquet"),
        "billing_anchor",
        None,
    );
    let without = closed(&dropped, "without");
    assert_eq!(closed(&data, "renamed"), without);
    let original = demo_copy(&tmp.path().join("original"));
    assert_ne!(closed(&original, "original"), without);
}
