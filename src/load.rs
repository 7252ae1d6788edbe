//! Stage 1: find and read the input Parquet files, convert every row to a typed record or
//! a reject. Files are read in parallel, one task per row group; results keep (file, row)
//! order. Schema problems (missing required column, type not allowed) stop the run (exit 2);
//! row problems never do.

use crate::amount::{
    milli_from_decimal256, milli_from_decimal_parts, milli_from_f64, AmountError, Milli,
};
use crate::error::{Result, TallyError};
use crate::model::Shared;
use crate::model::*;
use crate::positional::PositionalFile;
use crate::time::Micros;
use arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Decimal256Array, Float64Array, Int32Array,
    Int64Array, StringArray, StringViewArray, UInt64Array,
};
use arrow::datatypes::{DataType, Int32Type, TimeUnit};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Identifiers longer than this are rejected `bad_value` (a limit on everything).
pub const MAX_STRING_BYTES: usize = 4096;
/// Rows decoded per batch.
const BATCH_ROWS: usize = 64 * 1024;

/// One input Parquet file.
#[derive(Clone, Debug)]
pub struct InputFile {
    /// Path relative to the data root, `/`-separated (the `rejects.file` value).
    pub rel_path: String,
    pub abs_path: PathBuf,
    /// The file as the run's first reading saw it (`census::Census`, whose rows the
    /// manifest lists), which every later opening must see again; `None` when listed
    /// without a reading (`explain`, the merge's check) or its footer could not be read.
    pub first_seen: Option<Seen>,
}

/// A file's size, footer row count and modification time as a reading saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub bytes: u64,
    pub rows: u64,
    pub modified: Modified,
}

/// When a file was last written, to the nanosecond its file system keeps: a file replaced
/// under its name by a new copy (a writer's rename of a corrected export) or written again
/// in place moves it even when its size and row count stay the same. Not the inode: on
/// some mounts (FUSE without `use_ino`, such as S3 and sshfs mounts; CIFS with
/// `noserverino`) an unchanged file's inode number changes once the kernel forgets it,
/// which would refuse every run of a month of many files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modified {
    pub seconds: i64,
    pub nanos: u32,
}

impl Modified {
    pub fn of(meta: &std::fs::Metadata) -> Modified {
        use std::os::unix::fs::MetadataExt;
        Modified {
            seconds: meta.mtime(),
            nanos: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
        }
    }
}

/// Find `*.parquet` files under `root/dataset`, recursively, skipping names that start with
/// `.` or `_`; sorted by relative path (bytes). A missing folder is `None`.
///
/// Symbolic links are followed, but a folder reached a second time (a link loop, or two
/// links to one folder) is refused rather than read again or walked forever, and so are
/// names that are not UTF-8 (rejects and the dedup tie-break name files by their path as
/// text), broken links (a partition on an unmounted volume would otherwise vanish
/// silently) and `*.parquet` entries that are not regular files (a pipe or a device would
/// block the run). Each is exit 2 naming the path.
pub fn find_files(root: &Path, dataset: &str) -> Result<Option<Vec<InputFile>>> {
    Ok(list_dataset(root, dataset)?.map(|listing| listing.files))
}

/// A dataset folder as [`find_files`] lists it, with the files it holds that are not read.
#[derive(Debug)]
pub struct Listing {
    /// The `*.parquet` files, sorted by relative path (bytes).
    pub files: Vec<InputFile>,
    /// Visible files not named `*.parquet` (an upper-case `.PARQUET`, a `.csv`, a
    /// writer's `.tmp`): the run does not read them, and says so.
    pub not_read: NotRead,
}

/// The files of a dataset folder that are not read although their names are not hidden.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NotRead {
    pub count: u64,
    /// The first by relative path (bytes), so that the warning naming it is the same each
    /// run whatever order the folder lists its entries in.
    pub first: Option<String>,
}

impl NotRead {
    fn note(&mut self, rel_path: String) {
        self.count += 1;
        if self.first.as_ref().is_none_or(|first| rel_path < *first) {
            self.first = Some(rel_path);
        }
    }
}

/// [`find_files`], with the files not read.
/// `None` only when nothing has the dataset's name (not even a link): an optional dataset
/// (grants) is then empty. A name that is there but is not a folder that can be read (a
/// file, a broken or looping link, a pipe, a folder without permission) is an error: taken
/// for "no grants", it would drop every grant from the run and from `grants_next`.
pub fn list_dataset(root: &Path, dataset: &str) -> Result<Option<Listing>> {
    let dir = root.join(dataset);
    let link = match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(TallyError::io(&dir, e)),
        Ok(own) => own.file_type().is_symlink(),
    };
    let shown = dir.display().to_string();
    let meta = followed(&dir, &shown, link)?;
    if !meta.is_dir() {
        return Err(TallyError::input(
            &shown,
            format!(
                "is not a folder: a data root holds the {dataset} Parquet files in a \
                 `{dataset}/` folder"
            ),
        ));
    }
    let mut listing = Listing {
        files: Vec::new(),
        not_read: NotRead::default(),
    };
    let mut seen = std::collections::HashSet::new();
    walk(&dir, &meta, dataset, &mut seen, &mut listing)?;
    (listing.files).sort_by(|a, b| a.rel_path.as_bytes().cmp(b.rel_path.as_bytes()));
    Ok(Some(listing))
}

/// The metadata of `path` (shown as `shown`), through it if it is a `link`: an error there
/// is a broken or looping link, which the message says.
fn followed(path: &Path, shown: &str, link: bool) -> Result<std::fs::Metadata> {
    std::fs::metadata(path).map_err(|e| match link {
        true => TallyError::input(
            shown,
            format!("a symbolic link that cannot be followed ({e}): fix or remove it"),
        ),
        false => TallyError::io(path, e),
    })
}

/// Names the data root hides: a name starting with `.` or `_` is skipped, whatever it
/// holds (staging folders, `_SUCCESS`, `.crc` files); so are output folders under such a
/// name, and earlier closes in a history folder.
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_')
}

/// Walk folder `dir` (its metadata `meta`, links followed), `seen` holding the (device,
/// inode) of every folder walked so far.
fn walk(
    dir: &Path,
    meta: &std::fs::Metadata,
    rel: &str,
    seen: &mut std::collections::HashSet<(u64, u64)>,
    out: &mut Listing,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !seen.insert((meta.dev(), meta.ino())) {
        return Err(TallyError::input(
            rel,
            "this folder is reached a second time through a symbolic link (a link loop, or two links to one folder), so its files would be read twice: remove the extra link",
        ));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| TallyError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TallyError::io(dir, e))?;
        let raw_name = entry.file_name();
        let shown = raw_name.to_string_lossy();
        if is_hidden(&shown) {
            continue;
        }
        let child_rel = format!("{rel}/{shown}");
        let Some(name) = raw_name.to_str() else {
            return Err(TallyError::input(
                child_rel,
                "the name is not UTF-8: rename it (rejects and the manifest name files by their path as text)",
            ));
        };
        let path = entry.path();
        // What the entry is, through a link (an error there is a broken or looping link).
        let link = entry.file_type().is_ok_and(|t| t.is_symlink());
        let meta = followed(&path, &child_rel, link)?;
        if meta.is_dir() {
            walk(&path, &meta, &child_rel, seen, out)?;
        } else if name.ends_with(".parquet") {
            if !meta.is_file() {
                return Err(TallyError::input(
                    child_rel,
                    "not a regular file (a pipe, socket or device): only Parquet files belong in a dataset folder",
                ));
            }
            out.files.push(InputFile {
                rel_path: child_rel,
                abs_path: path,
                first_seen: None,
            });
        } else {
            out.not_read.note(child_rel);
        }
    }
    Ok(())
}

/// The logical type a contract column must have.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ColType {
    Str,
    /// A string whose values repeat (accounts, products, statuses...): read as a
    /// dictionary, so that each distinct value is decoded and looked up once per batch.
    Label,
    /// Credits or quantity: any integer, DECIMAL or DOUBLE.
    Number,
    Timestamp,
    Integer,
}

#[derive(Copy, Clone, Debug)]
pub struct ColSpec {
    pub name: &'static str,
    pub ty: ColType,
    pub required: bool,
}

pub const fn col(name: &'static str, ty: ColType, required: bool) -> ColSpec {
    ColSpec { name, ty, required }
}

pub const USAGE_COLUMNS: [ColSpec; 9] = [
    col("event_id", ColType::Str, true),
    col("account_id", ColType::Label, true),
    col("product", ColType::Label, true),
    col("action", ColType::Label, true),
    col("model", ColType::Label, false),
    col("quantity", ColType::Number, true),
    col("status", ColType::Label, true),
    col("occurred_at", ColType::Timestamp, true),
    col("ingested_at", ColType::Timestamp, false),
];

pub const ALLOCATION_COLUMNS: [ColSpec; 7] = [
    col("account_id", ColType::Str, true),
    col("plan_id", ColType::Label, true),
    col("period_start", ColType::Timestamp, true),
    col("period_end", ColType::Timestamp, true),
    col("included_credits", ColType::Number, true),
    col("billing_anchor", ColType::Timestamp, false),
    col("status", ColType::Label, true),
];

pub const GRANT_COLUMNS: [ColSpec; 7] = [
    col("grant_id", ColType::Str, true),
    col("account_id", ColType::Str, true),
    col("kind", ColType::Label, true),
    col("credits", ColType::Number, true),
    col("effective_at", ColType::Timestamp, true),
    col("expires_at", ColType::Timestamp, false),
    col("priority", ColType::Integer, false),
];

pub const DEBIT_COLUMNS: [ColSpec; 6] = [
    col("entry_id", ColType::Str, true),
    col("account_id", ColType::Label, true),
    col("event_id", ColType::Str, false),
    col("kind", ColType::Label, true),
    col("credits", ColType::Number, true),
    col("recorded_at", ColType::Timestamp, true),
];

/// The contract's columns of dataset `d`.
pub fn contract_columns(d: Dataset) -> &'static [ColSpec] {
    match d {
        Dataset::Usage => &USAGE_COLUMNS,
        Dataset::Allocations => &ALLOCATION_COLUMNS,
        Dataset::Grants => &GRANT_COLUMNS,
        Dataset::Debits => &DEBIT_COLUMNS,
    }
}

fn type_allowed(ty: ColType, dt: &DataType) -> bool {
    // A dictionary of allowed values is allowed: a writer may store any column that way
    // (numbers and instants are read through their values, see `Column::from_array`).
    if let (
        ColType::Number | ColType::Timestamp | ColType::Integer,
        DataType::Dictionary(_, value),
    ) = (ty, dt)
    {
        return type_allowed(ty, value);
    }
    match ty {
        ColType::Str | ColType::Label => is_string_type(dt),
        // Decimal32/Decimal64 are how a file's stored Arrow schema may name a Parquet
        // DECIMAL(p <= 18, s).
        ColType::Number => {
            dt.is_integer()
                || matches!(
                    dt,
                    DataType::Decimal32(..)
                        | DataType::Decimal64(..)
                        | DataType::Decimal128(..)
                        | DataType::Decimal256(..)
                        | DataType::Float64
                )
        }
        ColType::Timestamp => matches!(dt, DataType::Timestamp(..)),
        ColType::Integer => dt.is_integer(),
    }
}

fn expected_types(ty: ColType) -> &'static str {
    match ty {
        ColType::Str | ColType::Label => "a UTF8 string",
        ColType::Number => "INT32/INT64, DECIMAL(p, s) or DOUBLE",
        ColType::Timestamp => "a TIMESTAMP",
        ColType::Integer => "INT32/INT64",
    }
}

/// One decoded column of a batch, normalised to a few physical forms.
pub enum Column {
    Absent,
    Str(StringArray),
    /// A string column read as views into its decoded pages.
    View(StringViewArray),
    /// A string column read as a dictionary: a key per row into the distinct values.
    Dict(Int32Array, StringArray),
    Int(Int64Array),
    UInt(UInt64Array),
    Dec128(Decimal128Array, i8),
    Dec256(Decimal256Array, i8),
    Double(Float64Array),
    /// Raw timestamp values and the multiplier/divisor to microseconds.
    Ts(Int64Array, TimeUnit),
}

impl Column {
    fn from_array(array: &ArrayRef, ty: ColType, file: &str, name: &str) -> Result<Column> {
        let cast = |to: &DataType| {
            arrow::compute::cast(array, to).map_err(|e| {
                TallyError::input(file, format!("column `{name}` cannot be decoded: {e}"))
            })
        };
        Ok(match (ty, array.data_type()) {
            (_, DataType::Null) => Column::Absent,
            (ColType::Str | ColType::Label, DataType::Dictionary(..)) => {
                let dict = cast(&DataType::Dictionary(
                    Box::new(DataType::Int32),
                    Box::new(DataType::Utf8),
                ))?;
                let dict = dict.as_dictionary::<Int32Type>();
                Column::Dict(
                    dict.keys().clone(),
                    dict.values().as_string::<i32>().clone(),
                )
            }
            (ColType::Str | ColType::Label, DataType::Utf8) => {
                Column::Str(array.as_string::<i32>().clone())
            }
            (ColType::Str | ColType::Label, DataType::Utf8View) => {
                Column::View(array.as_string_view().clone())
            }
            (ColType::Str | ColType::Label, _) => {
                Column::Str(cast(&DataType::Utf8)?.as_string::<i32>().clone())
            }
            // Numbers and instants stored as a dictionary: read through their values.
            (_, DataType::Dictionary(_, value)) => {
                return Column::from_array(&cast(value)?, ty, file, name);
            }
            (ColType::Number, DataType::Decimal32(_, s) | DataType::Decimal64(_, s)) => {
                let wide = cast(&DataType::Decimal128(38, *s))?;
                Column::Dec128(wide.as_primitive().clone(), *s)
            }
            (ColType::Number | ColType::Integer, DataType::UInt64) => {
                Column::UInt(array.as_primitive().clone())
            }
            (ColType::Number | ColType::Integer, dt) if dt.is_integer() => {
                Column::Int(cast(&DataType::Int64)?.as_primitive().clone())
            }
            (ColType::Number, DataType::Decimal128(_, s)) => {
                Column::Dec128(array.as_primitive().clone(), *s)
            }
            (ColType::Number, DataType::Decimal256(_, s)) => {
                Column::Dec256(array.as_primitive().clone(), *s)
            }
            (ColType::Number, DataType::Float64) => Column::Double(array.as_primitive().clone()),
            (ColType::Timestamp, DataType::Timestamp(unit, _)) => {
                let raw = cast(&DataType::Int64)?;
                Column::Ts(raw.as_primitive().clone(), *unit)
            }
            (_, dt) => {
                return Err(TallyError::input(
                    file,
                    format!(
                        "column `{name}` has type {dt}; expected {}",
                        expected_types(ty)
                    ),
                ))
            }
        })
    }

    pub fn is_null(&self, i: usize) -> bool {
        match self {
            Column::Absent => true,
            Column::Str(a) => a.is_null(i),
            Column::View(a) => a.is_null(i),
            Column::Dict(keys, values) => keys.is_null(i) || values.is_null(keys.value(i) as usize),
            Column::Int(a) => a.is_null(i),
            Column::UInt(a) => a.is_null(i),
            Column::Dec128(a, _) => a.is_null(i),
            Column::Dec256(a, _) => a.is_null(i),
            Column::Double(a) => a.is_null(i),
            Column::Ts(a, _) => a.is_null(i),
        }
    }

    pub fn str(&self, i: usize) -> Option<&str> {
        match self {
            Column::Str(a) if !a.is_null(i) => Some(a.value(i)),
            Column::View(a) if !a.is_null(i) => Some(a.value(i)),
            Column::Dict(keys, values) if !keys.is_null(i) => {
                let key = keys.value(i) as usize;
                (!values.is_null(key)).then(|| values.value(key))
            }
            _ => None,
        }
    }

    /// The value as thousandths; `None` when null.
    pub fn milli(&self, i: usize) -> Option<std::result::Result<Milli, AmountError>> {
        if self.is_null(i) {
            return None;
        }
        Some(match self {
            Column::Int(a) => milli_from_decimal_parts(i128::from(a.value(i)), 0),
            Column::UInt(a) => milli_from_decimal_parts(i128::from(a.value(i)), 0),
            Column::Dec128(a, s) => milli_from_decimal_parts(a.value(i), *s),
            Column::Dec256(a, s) => milli_from_decimal256(a.value(i), *s),
            Column::Double(a) => milli_from_f64(a.value(i)),
            _ => return None,
        })
    }

    /// An integer value; `Err` when it does not fit an i64.
    pub fn int(&self, i: usize) -> Option<std::result::Result<i64, String>> {
        if self.is_null(i) {
            return None;
        }
        match self {
            Column::Int(a) => Some(Ok(a.value(i))),
            Column::UInt(a) => Some(i64::try_from(a.value(i)).map_err(|_| a.value(i).to_string())),
            _ => None,
        }
    }

    /// The instant in microseconds (nanoseconds floor to the microsecond); `Err` on overflow.
    pub fn micros(&self, i: usize) -> Option<std::result::Result<Micros, String>> {
        let Column::Ts(a, unit) = self else {
            return None;
        };
        if a.is_null(i) {
            return None;
        }
        let v = a.value(i);
        let converted = match unit {
            TimeUnit::Second => v.checked_mul(1_000_000),
            TimeUnit::Millisecond => v.checked_mul(1_000),
            TimeUnit::Microsecond => Some(v),
            TimeUnit::Nanosecond => Some(v.div_euclid(1_000)),
        };
        Some(
            converted
                .filter(|m| (crate::time::FIRST_INSTANT..crate::time::END_OF_INSTANTS).contains(m))
                .ok_or_else(|| format!("{v} {unit:?}s since the epoch")),
        )
    }
}

/// The columns of one batch, in the order of the dataset's `ColSpec`s.
pub struct Batch {
    pub columns: Vec<Column>,
    pub len: usize,
    /// Row number in the file of the batch's first row.
    pub first_row: u64,
    /// The string values that are not UTF-8, by row (empty but for a row group that held
    /// one: `decode_row_group`); their columns hold them with U+FFFD in place of the
    /// bad bytes, and their rows are rejected `bad_value`.
    pub not_utf8: Vec<NotUtf8>,
    /// Shared copies of repeated strings (accounts, products, actions, models).
    interned: std::cell::RefCell<std::collections::HashSet<Shared, crate::validate::FastHash>>,
}

/// A string value that is not UTF-8: its row in the batch, its column (index in the specs)
/// and its bytes as a message shows them.
#[derive(Debug)]
pub struct NotUtf8 {
    pub row: usize,
    pub column: usize,
    pub shown: String,
}

impl Batch {
    /// The values of `row` that are not UTF-8 (`not_utf8` is sorted by row).
    fn not_utf8_of(&self, row: usize) -> &[NotUtf8] {
        if self.not_utf8.is_empty() {
            return &[];
        }
        let from = self.not_utf8.partition_point(|bad| bad.row < row);
        let to = from + self.not_utf8[from..].partition_point(|bad| bad.row == row);
        &self.not_utf8[from..to]
    }

    /// The value of `column` in `row` that is not UTF-8, as a message shows it, if it is one.
    pub fn not_utf8(&self, row: usize, column: usize) -> Option<&str> {
        (self.not_utf8_of(row).iter())
            .find(|bad| bad.column == column)
            .map(|bad| bad.shown.as_str())
    }

    /// The string of `column` in `row` if it is one: `None` for a null and for a value
    /// that is not UTF-8 (kept with U+FFFD in place of its bad bytes, it equals no id).
    pub fn text(&self, column: usize, row: usize) -> Option<&str> {
        match self.not_utf8(row, column) {
            Some(_) => None,
            None => self.columns[column].str(row),
        }
    }

    /// Whether a string value of `row` is not UTF-8.
    pub fn row_not_utf8(&self, row: usize) -> bool {
        !self.not_utf8_of(row).is_empty()
    }

    /// One shared copy of `s` per batch.
    fn intern(&self, s: &str) -> Shared {
        let mut set = self.interned.borrow_mut();
        if let Some(shared) = set.get(s) {
            return shared.clone();
        }
        // The set holds the shared copy itself (no second boxed key per distinct string).
        let shared: Shared = s.into();
        set.insert(shared.clone());
        shared
    }
}

thread_local! {
    /// Set while this thread runs third-party decoding that may panic on corrupt input.
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread is decoding input under `guard_decoding` (the panic hook
/// stays quiet then: the panic becomes an input error).
pub fn decoding_input() -> bool {
    DECODING.with(|d| d.get())
}

/// Run `f`, a library call that may panic on input it should refuse, with the panic hook
/// quiet: `None` if it panicked. (humantime 2.4 panics in `Duration::new` on a duration of
/// exactly u64::MAX seconds and a carried 10^9 ns, as `--settle "18446744073709551615s
/// 1000000000ns"`.)
pub fn caught_quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    quietly(f).ok()
}

/// Run `f` catching a panic, with the panic hook quiet ([`decoding_input`]) meanwhile.
fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    let was = DECODING.with(|d| d.replace(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    DECODING.with(|d| d.set(was));
    outcome
}

/// Run `f`, turning a panic inside the Parquet/Arrow decoders (seen on corrupt footers)
/// into an input error naming the file: bad input never crashes the job.
fn guard_decoding<T>(file: &InputFile, f: impl FnOnce() -> Result<T>) -> Result<T> {
    guard_decoding_of(&file.rel_path, RESTORE, f)
}

/// `guard_decoding` of the file named `name` (as its error names it), with `restore`
/// saying what to do: also an earlier close's output, which no [`InputFile`] describes.
pub fn guard_decoding_of<T>(name: &str, restore: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    quietly(f).unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("decoder panic");
        Err(TallyError::input(
            name,
            format!("corrupt Parquet file: {why}{restore}"),
        ))
    })
}

/// What to do about a file whose bytes are damaged (the Parquet library's words say what
/// it found, not what to do).
const RESTORE: &str = "; restore the file from its source or export it again";

/// The names of a file's columns for a message, in file order: at most
/// [`LISTED_COLUMNS`], then how many more.
fn column_names(schema: &arrow::datatypes::Schema) -> String {
    let names: Vec<String> = (schema.fields().iter())
        .take(LISTED_COLUMNS)
        .map(|f| format!("`{}`", f.name()))
        .collect();
    let more = schema.fields().len().saturating_sub(LISTED_COLUMNS);
    match more {
        0 => names.join(", "),
        _ => format!("{} and {more} more", names.join(", ")),
    }
}

/// Columns a missing-column message lists (a wide export's are many).
const LISTED_COLUMNS: usize = 16;

/// Check the magic bytes at both ends: arrow-rs reads only the footer, and a file cut
/// short or a text file must be named as such.
fn check_magic(file: &InputFile, handle: &PositionalFile) -> Result<()> {
    use parquet::file::reader::Length;
    let fail = |why: &str| Err(TallyError::input(&file.rel_path, why.to_string()));
    let len = handle.len();
    if len == 0 {
        return fail("empty file (0 bytes), not Parquet; remove it or restore the original");
    }
    let mut head = [0u8; 4];
    if len >= 4 && handle.read_exact_at(&mut head, 0).is_ok() && &head == b"PARE" {
        // Parquet modular encryption with an encrypted footer: magic PARE at both ends.
        return fail(
            "encrypted Parquet file (it starts with PARE: its footer is encrypted); tally reads \
             no encrypted files: export it without Parquet encryption",
        );
    }
    if len < 4 || &head != b"PAR1" {
        return fail(
            "not a Parquet file (it does not start with PAR1); remove it or restore the original",
        );
    }
    // The smallest Parquet file is its two magics and a footer's length (12 bytes): one
    // that starts as Parquet but is shorter was cut short.
    if len < 12 {
        return Err(TallyError::input(
            &file.rel_path,
            format!(
                "truncated Parquet file ({len} bytes: it starts with PAR1 but has no footer); \
                 restore the complete file"
            ),
        ));
    }
    let mut tail = [0u8; 4];
    if handle.read_exact_at(&mut tail, len - 4).is_err() || &tail != b"PAR1" {
        return fail(
            "truncated Parquet file (it does not end with PAR1); restore the complete file",
        );
    }
    Ok(())
}

/// A decoder error without the library's prefixes ("Parquet error: ", "External: " ...).
fn plain(e: impl std::fmt::Display) -> String {
    crate::error::without_library_prefixes(&e.to_string()).replace('\n', " ")
}

/// Footers are read without their column chunks' statistics (min/max, null counts,
/// sizes): tally reads every row of every file and never looks at them, and a footer holds
/// them for every column of every row group (decoding them was a share of each footer's
/// parse, which a month of small files does several times a file).
const SKIP_STATISTICS: parquet::file::metadata::ParquetStatisticsPolicy =
    parquet::file::metadata::ParquetStatisticsPolicy::SkipAll;

/// Read one file's metadata (from `handle`, the file opened) and check its schema
/// against `specs`.
fn open_checked(
    file: &InputFile,
    handle: &PositionalFile,
    specs: &[ColSpec],
) -> Result<(ArrowReaderMetadata, Vec<Option<usize>>)> {
    let metadata = ArrowReaderMetadata::load(
        handle,
        ArrowReaderOptions::new()
            .with_skip_arrow_metadata(false)
            .with_column_stats_policy(SKIP_STATISTICS)
            .with_size_stats_policy(SKIP_STATISTICS),
    )
    .map_err(|e| {
        TallyError::input(
            &file.rel_path,
            // The footer (the file's schema and row groups) cannot be decoded: the bytes
            // are damaged or cut, whatever the library's words for it.
            format!(
                "not a readable Parquet file: {}; restore the file from its source or export \
                 it again",
                plain(e)
            ),
        )
    })?;
    let schema = metadata.schema().clone();
    let mut indices = Vec::with_capacity(specs.len());
    for spec in specs {
        // Two columns of the name: which one holds the data is anyone's guess.
        let named = schema
            .fields()
            .iter()
            .filter(|f| f.name() == spec.name)
            .count();
        if named > 1 {
            return Err(TallyError::input(
                &file.rel_path,
                format!(
                    "{named} columns are named `{}`; a file must have one column of each name",
                    spec.name
                ),
            ));
        }
        match schema.index_of(spec.name) {
            Ok(index) => {
                let dt = schema.field(index).data_type();
                let ok = type_allowed(spec.ty, dt) || (!spec.required && dt == &DataType::Null);
                if !ok {
                    return Err(TallyError::input(
                        &file.rel_path,
                        format!(
                            "column `{}` has type {dt}; expected {}",
                            spec.name,
                            expected_types(spec.ty)
                        ),
                    ));
                }
                indices.push(Some(index));
            }
            Err(_) if spec.required => {
                return Err(TallyError::input(
                    &file.rel_path,
                    format!(
                        "missing required column `{}` ({}); {}",
                        spec.name,
                        expected_types(spec.ty),
                        match column_names(&schema) {
                            none if none.is_empty() => "the file has no columns".to_string(),
                            names =>
                                format!("the file's columns are {names} (names are case-sensitive)"),
                        }
                    ),
                ))
            }
            Err(_) => indices.push(None),
        }
    }
    let Some(metadata) = with_read_hints(metadata, specs, &indices) else {
        return Err(TallyError::input(
            &file.rel_path,
            "the Parquet reader cannot read its INT96 timestamps as microseconds or its \
             dictionary of decimals as values, and read otherwise they would be wrong \
             (an INT96 instant outside 1677-2262 wraps); rewrite the file with plain \
             timestamp and decimal columns"
                .to_string(),
        ));
    };
    Ok((metadata, indices))
}

/// Ask the reader for the `Label` columns as dictionaries (a dictionary-encoded column
/// then decodes each distinct value once per row group, not once per row) and for plain
/// `Str` columns as string views. A file whose hints the reader refuses is read without the
/// speed hints (slower, never wrong, as every reader of a column takes each form) but with
/// the needed ones (INT96 as microseconds, decimals' dictionaries as values); `None` when
/// it refuses even those, and the file is refused rather than read wrong.
fn with_read_hints(
    metadata: ArrowReaderMetadata,
    specs: &[ColSpec],
    indices: &[Option<usize>],
) -> Option<ArrowReaderMetadata> {
    let schema = metadata.schema().clone();
    let mut fields: Vec<arrow::datatypes::FieldRef> = schema.fields().iter().cloned().collect();
    // The hints a file is not read right without (INT96, dictionaries of decimals), apart
    // from those that only make it faster: if the reader refuses the lot, these alone.
    let mut needed_fields = fields.clone();
    let (mut hinted, mut needed) = (false, false);
    // A legacy INT96 timestamp (Spark, Hive, Impala) whose column is a root field.
    let int96 = |index: usize| {
        let roots = metadata.parquet_schema().root_schema().get_fields();
        roots.get(index).is_some_and(|t| {
            t.is_primitive() && t.get_physical_type() == parquet::basic::Type::INT96
        })
    };
    for (spec, index) in specs.iter().zip(indices) {
        let Some(index) = *index else { continue };
        let field = &fields[index];
        let plain_string = matches!(
            field.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        );
        let wanted = match spec.ty {
            ColType::Label if plain_string => {
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
            }
            // Ids (and the plans' account ids): views into the decoded pages, not a copy
            // of every string into one buffer (the copy and its growth cost the load time;
            // measured: benches/README.md, "Profiles and experiments (2026-12-04, after
            // midnight: per-row work, ids as views)", and "Figures moved from source
            // comments (2026-12-05)").
            ColType::Str if plain_string => DataType::Utf8View,
            // INT96 is read as nanoseconds by default, which hold only the years 1677-2262:
            // an instant outside them (2611, a 9999-12-31 "never", the year 10000) wrapped
            // around into another instant, billed or rejected as the wrong one. As
            // microseconds it is the instant it says, and the years check sees it.
            // (The library still wraps a Julian day past about +-292,000 years.)
            // A file's stored Arrow schema may say dictionary-encoded: read as the values
            // (the reader has no dictionary of INT96, and panicked on the file).
            ColType::Timestamp if int96(index) => {
                let values = match field.data_type() {
                    DataType::Dictionary(_, value) => &**value,
                    plain => plain,
                };
                match values {
                    DataType::Timestamp(_, tz) => {
                        DataType::Timestamp(TimeUnit::Microsecond, tz.clone())
                    }
                    _ => continue,
                }
            }
            // A dictionary of decimals (pyarrow's `dictionary_encode()` of a DECIMAL column
            // keeps the dictionary type in the file's Arrow schema): the reader has no
            // dictionary decoder for the fixed-length bytes a decimal is stored as, and
            // refused the file. Read as its values, as every other number is.
            _ => match field.data_type() {
                DataType::Dictionary(_, value)
                    if matches!(**value, DataType::Decimal128(..) | DataType::Decimal256(..)) =>
                {
                    (**value).clone()
                }
                _ => continue,
            },
        };
        if *field.data_type() != wanted {
            let is_needed = !matches!(spec.ty, ColType::Label | ColType::Str);
            let hinted_field = std::sync::Arc::new(field.as_ref().clone().with_data_type(wanted));
            if is_needed {
                needed_fields[index] = hinted_field.clone();
                needed = true;
            }
            fields[index] = hinted_field;
            hinted = true;
        }
    }
    let with_fields = |fields: Vec<arrow::datatypes::FieldRef>| {
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new_with_metadata(
            fields,
            schema.metadata().clone(),
        ));
        ArrowReaderMetadata::try_new(
            metadata.metadata().clone(),
            ArrowReaderOptions::new().with_schema(schema),
        )
        .ok()
    };
    if !hinted {
        return Some(metadata);
    }
    if let Some(hinted) = with_fields(fields) {
        return Some(hinted);
    }
    // Without the needed hints the file would be read wrong (an INT96 instant past 2262
    // as another instant) or not at all: refused (`None`), not read as it is.
    match needed {
        true => with_fields(needed_fields),
        false => Some(metadata),
    }
}

/// Read every row group of `file`, calling `each_batch` for each decoded batch; returns the
/// per-row-group results in order. Row groups are decoded in parallel.
fn read_file<T: Send>(
    file: &InputFile,
    specs: &[ColSpec],
    each_batch: &(dyn Fn(&Batch, &mut Vec<T>) + Sync),
) -> Result<Vec<T>> {
    read_row_groups(file, specs, each_batch).map(concat)
}

/// Row-group outputs put together in order (one allocation of the final size).
fn concat<T>(parts: Vec<Vec<T>>) -> Vec<T> {
    let mut all = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for part in parts {
        all.extend(part);
    }
    all
}

/// A file whose footer was read and whose schema was checked: what decoding one of its
/// row groups needs.
pub struct OpenedFile {
    /// The footer as the reader holds it (about 12 KiB for the contract's columns), while
    /// kept: it is dropped once the file's last row group is decoded, and right after the
    /// start-of-run check for a dataset's files past the first [`MAX_KEPT_FOOTERS`];
    /// [`OpenedFile::footer`] reads a dropped one again.
    metadata: std::sync::Mutex<Option<ArrowReaderMetadata>>,
    mask: ProjectionMask,
    /// Rows of each row group, and the file row of each one's first row.
    row_group_rows: Vec<u64>,
    row_group_first: Vec<u64>,
    /// Some string column is not annotated UTF8 in the Parquet schema (JSON, or plain bytes
    /// that the file's stored Arrow schema calls strings): the Arrow reader checks only
    /// UTF8 columns for UTF-8, so every row group is read with its strings as bytes and
    /// checked ([`decode_strings_as_bytes`]).
    strings_unchecked: bool,
    /// Row groups not yet decoded (the footer is dropped when the last one is).
    row_groups_left: std::sync::atomic::AtomicUsize,
    /// Times the footer was read again (for the tests: once per file, however many of its
    /// row groups are decoded at once).
    footer_rereads: std::sync::atomic::AtomicUsize,
}

impl OpenedFile {
    fn kept(&self) -> std::sync::MutexGuard<'_, Option<ArrowReaderMetadata>> {
        // A panic while the lock was held left the footer or None: either is usable.
        self.metadata.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The footer: the one kept, else read again and checked against the first reading
    /// (the same columns at the same places, the same row groups of the same rows), then
    /// kept until the file is decoded. Decoding uses the first reading's projection, so a
    /// file rewritten with its columns moved would otherwise be read from the wrong ones.
    fn footer(
        &self,
        file: &InputFile,
        handle: &PositionalFile,
        specs: &[ColSpec],
    ) -> Result<ArrowReaderMetadata> {
        let mut kept = self.kept();
        if let Some(metadata) = &*kept {
            return Ok(metadata.clone());
        }
        self.footer_rereads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        check_magic(file, handle)?;
        let (metadata, indices) = guard_decoding(file, || open_checked(file, handle, specs))?;
        let same = projection(&metadata, &indices) == self.mask
            && row_group_rows(&metadata) == self.row_group_rows;
        if !same {
            return Err(TallyError::input(
                &file.rel_path,
                "the file changed while the run read it (its columns or row groups differ \
                 from the first reading of its footer); rerun once the file is complete",
            ));
        }
        *kept = Some(metadata.clone());
        Ok(metadata)
    }

    /// Drop the footer (read again by [`OpenedFile::footer`] if a row group still needs
    /// it).
    fn drop_footer(&self) {
        *self.kept() = None;
    }

    /// One of the file's row groups is decoded: after the last, the footer is dropped.
    fn row_group_done(&self) {
        use std::sync::atomic::Ordering;
        if self.row_groups_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drop_footer();
        }
    }

    #[cfg(test)]
    fn footer_kept(&self) -> bool {
        self.kept().is_some()
    }
}

/// A file's rows must fit the row bits of [`crate::model::At`]: at most
/// `MAX_ROWS_PER_FILE - 1` (a footer's counts are summed saturating, so any count past
/// that is refused too).
fn check_row_count(file: &InputFile, rows: u64) -> Result<()> {
    if rows < crate::model::MAX_ROWS_PER_FILE {
        return Ok(());
    }
    Err(TallyError::input(
        &file.rel_path,
        format!(
            "{rows} rows is more than a file may hold ({}); split the file",
            crate::model::MAX_ROWS_PER_FILE - 1
        ),
    ))
}

/// A file's rows by its footer: the sum of its row groups' counts, which decoding holds
/// each row group to ([`check_decoded_rows`]). Not the footer's own total: some writers
/// (fastparquet appending to a file, before 2022) left it at the first write's count.
fn footer_rows(metadata: &parquet::file::metadata::ParquetMetaData) -> u64 {
    (metadata.row_groups().iter())
        .map(rows_of)
        .fold(0, u64::saturating_add)
}

/// A row group's rows as its footer says them (a negative count, a corrupt footer, as
/// none: decoding then refuses the rows it holds).
fn rows_of(row_group: &parquet::file::metadata::RowGroupMetaData) -> u64 {
    u64::try_from(row_group.num_rows()).unwrap_or(0)
}

/// A dataset's files must fit the file bits of [`crate::model::At`]: at most
/// [`crate::model::MAX_FILES`]. The error names the first file (`first`).
fn check_file_count(first: &InputFile, files: u64) -> Result<()> {
    if files <= crate::model::MAX_FILES {
        return Ok(());
    }
    Err(TallyError::input(
        first.rel_path.clone(),
        format!(
            "the dataset has {files} files, more than {} (merge some)",
            crate::model::MAX_FILES
        ),
    ))
}

/// Check a file's magic bytes, read its footer and check its schema against `specs`.
pub fn open_file(file: &InputFile, specs: &[ColSpec]) -> Result<OpenedFile> {
    let handle = PositionalFile::open(file)?;
    check_magic(file, &handle)?;
    let (metadata, indices) = guard_decoding(file, || open_checked(file, &handle, specs))?;
    check_first_seen(file, &handle, &metadata)?;
    let row_group_rows = row_group_rows(&metadata);
    let mut row_group_first = Vec::with_capacity(row_group_rows.len());
    let mut acc = 0u64;
    for n in &row_group_rows {
        row_group_first.push(acc);
        acc = acc.saturating_add(*n);
    }
    check_row_count(file, acc)?;
    let mask = projection(&metadata, &indices);
    let strings_unchecked = strings_unchecked(&metadata, specs, &indices);
    // A file without row groups has none to decode: its footer goes now.
    let kept = (!row_group_rows.is_empty()).then_some(metadata);
    Ok(OpenedFile {
        metadata: std::sync::Mutex::new(kept),
        mask,
        strings_unchecked,
        row_groups_left: std::sync::atomic::AtomicUsize::new(row_group_rows.len()),
        row_group_rows,
        row_group_first,
        footer_rereads: std::sync::atomic::AtomicUsize::new(0),
    })
}

/// Whether a string column of `specs` (at `indices`) is one the Arrow reader does not check
/// for UTF-8: it checks a column only when the Parquet schema annotates it UTF8.
fn strings_unchecked(
    metadata: &ArrowReaderMetadata,
    specs: &[ColSpec],
    indices: &[Option<usize>],
) -> bool {
    let schema = metadata.parquet_schema();
    (specs.iter().zip(indices)).any(|(spec, index)| {
        let Some(index) = *index else {
            return false;
        };
        matches!(spec.ty, ColType::Str | ColType::Label)
            && is_string_type(metadata.schema().field(index).data_type())
            && leaf_of(schema, index).is_none_or(|leaf| {
                schema.column(leaf).converted_type() != parquet::basic::ConvertedType::UTF8
            })
    })
}

/// The Parquet column (leaf) of top-level field `index` (an extra nested column before it
/// has several leaves, so the numbers differ).
fn leaf_of(schema: &parquet::schema::types::SchemaDescriptor, index: usize) -> Option<usize> {
    (0..schema.num_columns()).find(|&leaf| schema.get_column_root_idx(leaf) == index)
}

/// Refuse a file that is not as the run's first reading saw it (another size or footer
/// row count, or another modification time): it changed since, and the manifest (whose
/// rows and sha256 come from that reading) would not describe what the run read.
fn check_first_seen(
    file: &InputFile,
    handle: &PositionalFile,
    metadata: &ArrowReaderMetadata,
) -> Result<()> {
    let rows = footer_rows(metadata.metadata());
    check_unchanged(
        file,
        parquet::file::reader::Length::len(handle),
        Some(rows),
        handle.modified(),
    )
}

/// [`check_first_seen`] of what a reading found now: `bytes`, `rows` (`None`: a reading
/// that does not parse the footer: a row group's opening, the inputs' sha256) and
/// `modified`.
pub(crate) fn check_unchanged(
    file: &InputFile,
    bytes: u64,
    rows: Option<u64>,
    modified: Modified,
) -> Result<()> {
    let Some(first) = file.first_seen else {
        return Ok(());
    };
    let rerun = "rerun once the file is complete";
    let changed = |what: String| {
        Err(TallyError::input(
            &file.rel_path,
            format!("the file changed while the run read it ({what}); {rerun}"),
        ))
    };
    match rows {
        Some(rows) if bytes != first.bytes || rows != first.rows => changed(format!(
            "{} bytes and {} rows at the run's first reading, {bytes} bytes and {rows} rows now",
            first.bytes, first.rows
        )),
        None if bytes != first.bytes => changed(format!(
            "{} bytes at the run's first reading, {bytes} bytes now",
            first.bytes
        )),
        _ if modified != first.modified => Err(TallyError::input(
            &file.rel_path,
            format!(
                "the file was replaced or written again while the run read it (the same size, \
                 {bytes} bytes, but another modification time than at the run's first \
                 reading); {rerun}"
            ),
        )),
        _ => Ok(()),
    }
}

/// Rows of each row group, as the footer gives them.
fn row_group_rows(metadata: &ArrowReaderMetadata) -> Vec<u64> {
    metadata
        .metadata()
        .row_groups()
        .iter()
        .map(rows_of)
        .collect()
}

/// The columns to decode: those `open_checked` found for the specs.
fn projection(metadata: &ArrowReaderMetadata, indices: &[Option<usize>]) -> ProjectionMask {
    let roots: Vec<usize> = indices.iter().flatten().copied().collect();
    ProjectionMask::roots(metadata.parquet_schema(), roots)
}

/// A row group the reader could not decode (a string that is not UTF-8 is a bad row, not
/// this: [`decode_row_group`]).
fn row_group_error(file: &InputFile, rg: usize, e: impl std::fmt::Display) -> TallyError {
    let problem = plain(e);
    // A checksum the writer stored wrong (some writers have) comes back with the file: an
    // export without page checksums is the way out then.
    let or_else = match problem.contains("CRC checksum") {
        true => " (or without page checksums, if its writer stores wrong ones)",
        false => "",
    };
    TallyError::input(
        &file.rel_path,
        format!("row group {rg} is corrupt or truncated: {problem}{RESTORE}{or_else}"),
    )
}

/// Decode one row group of an opened file, calling `each_batch` for each batch in order.
/// A string that is not UTF-8 makes the reader refuse the rest of the row group: its rows
/// from there are decoded again with the strings as bytes ([`decode_strings_as_bytes`]), so that
/// the row holding it is rejected `bad_value` and the others are read as they are (and,
/// with `warn`, the row group is warned of).
fn decode_row_group(
    file: &InputFile,
    opened: &OpenedFile,
    specs: &[ColSpec],
    rg: usize,
    warn: bool,
    each_batch: &mut dyn FnMut(&Batch),
) -> Result<()> {
    // One handle for the footer (when read again) and the row group's column chunks (a
    // re-read with the strings as bytes reads them through the same handle).
    let handle = open_unchanged(file)?;
    let metadata = opened.footer(file, &handle, specs)?;
    let at = RowGroupAt {
        index: rg,
        first_row: opened.row_group_first[rg],
        rows: opened.row_group_rows[rg],
    };
    // Every row the footer says the row group holds is passed on, no more and no fewer: a
    // footer's count sizes the run's vectors and is the manifest's, so one that lies is a
    // corrupt file, whichever pass reads it.
    let mut decoded = 0u64;
    let mut counted = |batch: &Batch| {
        decoded += batch.len as u64;
        each_batch(batch)
    };
    let outcome = guard_decoding(file, || {
        let reread_from = match opened.strings_unchecked {
            true => Some(0),
            false => decode_checked(
                file,
                opened,
                specs,
                at,
                handle.clone(),
                &metadata,
                &mut counted,
            )?,
        };
        if let Some(skip) = reread_from {
            let found =
                decode_strings_as_bytes(file, specs, &metadata, handle, at, skip, &mut counted)?;
            warn_of_strings_not_utf8(file, at, skip, found, warn);
        }
        Ok(())
    });
    opened.row_group_done();
    outcome?;
    check_decoded_rows(file, at, decoded)
}

/// A row group's decoded rows against its footer's count.
fn check_decoded_rows(file: &InputFile, at: RowGroupAt, decoded: u64) -> Result<()> {
    if decoded == at.rows {
        return Ok(());
    }
    Err(TallyError::input(
        &file.rel_path,
        format!(
            "row group {} holds {decoded} rows, not the {} its footer says; the file is \
             corrupt{RESTORE}",
            at.index, at.rows
        ),
    ))
}

/// Where a row group's rows are in its file (from its footer, checked against the footer
/// the decoding reads by [`OpenedFile::footer`]).
#[derive(Copy, Clone)]
struct RowGroupAt {
    index: usize,
    first_row: u64,
    rows: u64,
}

/// Decode row group `at` with the Arrow reader, passing each batch on. The reader refuses
/// the rest of a row group at a string that is not UTF-8: returns the row it had reached
/// then (`None`: it passed on every row).
fn decode_checked(
    file: &InputFile,
    opened: &OpenedFile,
    specs: &[ColSpec],
    at: RowGroupAt,
    handle: PositionalFile,
    metadata: &ArrowReaderMetadata,
    each_batch: &mut dyn FnMut(&Batch),
) -> Result<Option<u64>> {
    let reader = reader_of(file, opened, at.index, handle, metadata.clone())?;
    let mut passed = 0u64;
    for batch in reader {
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) if is_not_utf8(&e) => return Ok(Some(passed)),
            Err(e) => return Err(row_group_error(file, at.index, e)),
        };
        let columns = columns_of(file, specs, &batch)?;
        each_batch(&Batch {
            columns,
            len: batch.num_rows(),
            first_row: at.first_row + passed,
            not_utf8: Vec::new(),
            interned: Default::default(),
        });
        passed += batch.num_rows() as u64;
    }
    Ok(None)
}

/// A handle on `file`, checked to be the file its first opening's footer described (a
/// row group's ranges come from that footer).
fn open_unchanged(file: &InputFile) -> Result<PositionalFile> {
    let handle = PositionalFile::open(file)?;
    check_unchanged(
        file,
        parquet::file::reader::Length::len(&handle),
        None,
        handle.modified(),
    )?;
    Ok(handle)
}

/// The reader of row group `rg` of an opened file, its columns projected.
fn reader_of(
    file: &InputFile,
    opened: &OpenedFile,
    rg: usize,
    handle: PositionalFile,
    metadata: ArrowReaderMetadata,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    ParquetRecordBatchReaderBuilder::new_with_metadata(handle, metadata)
        .with_projection(opened.mask.clone())
        .with_row_groups(vec![rg])
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| TallyError::input(&file.rel_path, format!("cannot read: {}", plain(e))))
}

/// The columns of `specs` in a decoded batch (absent ones all null).
fn columns_of(
    file: &InputFile,
    specs: &[ColSpec],
    batch: &arrow::record_batch::RecordBatch,
) -> Result<Vec<Column>> {
    let schema = batch.schema();
    (specs.iter())
        .map(|spec| match schema.index_of(spec.name) {
            Ok(i) => Column::from_array(batch.column(i), spec.ty, &file.rel_path, spec.name),
            Err(_) => Ok(Column::Absent),
        })
        .collect()
}

/// Whether the reader refused a batch for a string that is not UTF-8 (its words: "non
/// UTF-8" from the page decoders, "invalid utf-8" from the checks of a dictionary).
fn is_not_utf8(e: &arrow::error::ArrowError) -> bool {
    let text = e.to_string();
    text.contains("non UTF-8") || text.contains("invalid utf-8")
}

/// A type a string column may have (plain, or a dictionary of plain strings).
fn is_string_type(dt: &DataType) -> bool {
    let plain = |dt: &DataType| {
        matches!(
            dt,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        )
    };
    match dt {
        DataType::Dictionary(_, value) => plain(value),
        dt => plain(dt),
    }
}

/// Row group `group` from its row `skip` on (the rows before were passed on already), its
/// string columns read as bytes by Parquet's column reader (the Arrow reader checks
/// strings for UTF-8 and refuses the batch, and takes no
/// hint to read a string column as bytes) and its other columns by the Arrow reader. A
/// value that is not UTF-8 is kept with U+FFFD in place of its bad bytes and listed in
/// the batch's `not_utf8`, which the row checks reject. Returns how many such values it
/// found.
fn decode_strings_as_bytes(
    file: &InputFile,
    specs: &[ColSpec],
    metadata: &ArrowReaderMetadata,
    handle: PositionalFile,
    group: RowGroupAt,
    skip: u64,
    each_batch: &mut dyn FnMut(&Batch),
) -> Result<usize> {
    let (rg, first_row, rows) = (group.index, group.first_row, group.rows);
    let corrupt = |e: &dyn std::fmt::Display| row_group_error(file, rg, e);
    let schema = metadata.schema();
    // (spec, column) of each string column read, and the other columns' indices.
    let (mut strings, mut others) = (Vec::new(), Vec::new());
    for (k, spec) in specs.iter().enumerate() {
        let Ok(i) = schema.index_of(spec.name) else {
            continue;
        };
        match matches!(spec.ty, ColType::Str | ColType::Label)
            && is_string_type(schema.field(i).data_type())
        {
            true => strings.push((k, i)),
            false => others.push(i),
        }
    }
    if skip > rows {
        return Err(corrupt(&"more rows than its footer says"));
    }
    let mut other_batches = match others.is_empty() {
        true => None,
        false => Some(
            ParquetRecordBatchReaderBuilder::new_with_metadata(handle.clone(), metadata.clone())
                .with_projection(ProjectionMask::roots(metadata.parquet_schema(), others))
                .with_row_groups(vec![rg])
                .with_row_selection(parquet::arrow::arrow_reader::RowSelection::from(vec![
                    parquet::arrow::arrow_reader::RowSelector::skip(skip as usize),
                    parquet::arrow::arrow_reader::RowSelector::select((rows - skip) as usize),
                ]))
                .with_batch_size(BATCH_ROWS)
                .build()
                .map_err(|e| corrupt(&e))?,
        ),
    };
    // The row group's column chunks, by the run's footer (not parsed again).
    let parquet_metadata = metadata.metadata();
    let row_group = parquet::file::serialized_reader::SerializedRowGroupReader::new(
        std::sync::Arc::new(handle),
        parquet_metadata.row_group(rg),
        parquet_metadata.page_index_for_row_group(rg),
        std::sync::Arc::new(parquet::file::properties::ReaderProperties::builder().build()),
    )
    .map_err(|e| corrupt(&e))?;
    let mut byte_columns = Vec::with_capacity(strings.len());
    for &(k, i) in &strings {
        let leaf = leaf_of(metadata.parquet_schema(), i)
            .ok_or_else(|| corrupt(&format!("no Parquet column for `{}`", specs[k].name)))?;
        let mut column = ByteColumn::open(&row_group, leaf).map_err(|e| corrupt(&e))?;
        column.skip(skip as usize).map_err(|e| corrupt(&e))?;
        byte_columns.push((k, column));
    }
    let (mut at, mut found) = (skip, 0usize);
    while at < rows {
        // The Arrow reader's batches set the size (it caps them at the file's row count).
        let other = match &mut other_batches {
            None => None,
            Some(reader) => match reader.next() {
                Some(Ok(batch)) => Some(batch),
                Some(Err(e)) => return Err(corrupt(&e)),
                None => break,
            },
        };
        let n = other.as_ref().map_or_else(
            || (rows - at).min(BATCH_ROWS as u64) as usize,
            |batch| batch.num_rows(),
        );
        let mut not_utf8 = Vec::new();
        // The string columns are not in `other`: absent there, filled in below.
        let mut columns = match &other {
            Some(batch) => columns_of(file, specs, batch)?,
            None => specs.iter().map(|_| Column::Absent).collect(),
        };
        for (k, column) in &mut byte_columns {
            let strings = column.read(n, *k, &mut not_utf8).map_err(|e| corrupt(&e))?;
            columns[*k] = Column::Str(strings);
        }
        not_utf8.sort_by_key(|bad| (bad.row, bad.column));
        found += not_utf8.len();
        each_batch(&Batch {
            columns,
            len: n,
            first_row: first_row + at,
            not_utf8,
            interned: Default::default(),
        });
        at += n as u64;
    }
    Ok(found)
}

/// Warn (with `warn`) of a row group read again with its strings as bytes that held
/// `found` strings that are not UTF-8 (`from`: its number, first row and the row the
/// re-read started at).
fn warn_of_strings_not_utf8(
    file: &InputFile,
    group: RowGroupAt,
    skip: u64,
    found: usize,
    warn: bool,
) {
    let (rg, first_row) = (group.index, group.first_row);
    if warn && found > 0 {
        tracing::warn!(
            file = %file.rel_path,
            row_group = rg,
            strings_not_utf8 = found,
            "{}: row group {rg} holds {found} string(s) that are not UTF-8 (from row {} on, read \
             with its strings as bytes); each row holding one is rejected bad_value: the \
             contract's strings are UTF-8, have the export write them as UTF-8",
            file.rel_path,
            first_row + skip
        );
    }
}

/// A string column of a row group read as bytes (Parquet's column reader checks no
/// encoding).
struct ByteColumn {
    reader: parquet::column::reader::ColumnReaderImpl<parquet::data_type::ByteArrayType>,
    /// 0: the column is required (no definition levels).
    max_def_level: i16,
}

impl ByteColumn {
    fn open(
        row_group: &dyn parquet::file::reader::RowGroupReader,
        column: usize,
    ) -> parquet::errors::Result<ByteColumn> {
        let max_def_level = row_group
            .metadata()
            .column(column)
            .column_descr()
            .max_def_level();
        let reader = parquet::column::reader::get_typed_column_reader::<
            parquet::data_type::ByteArrayType,
        >(row_group.get_column_reader(column)?);
        Ok(ByteColumn {
            reader,
            max_def_level,
        })
    }

    fn skip(&mut self, rows: usize) -> parquet::errors::Result<()> {
        let skipped = self.reader.skip_records(rows)?;
        match skipped == rows {
            true => Ok(()),
            false => Err(parquet::errors::ParquetError::General(format!(
                "{skipped} rows where {rows} were to be skipped"
            ))),
        }
    }

    /// The next `rows` values as strings: each value that is not UTF-8 (pushed to
    /// `not_utf8`, as column `column`) with U+FFFD in place of its bad bytes.
    fn read(
        &mut self,
        rows: usize,
        column: usize,
        not_utf8: &mut Vec<NotUtf8>,
    ) -> parquet::errors::Result<StringArray> {
        let (mut defs, mut values) = (Vec::new(), Vec::new());
        let mut read = 0;
        while read < rows {
            let (records, _, _) = self.reader.read_records(
                rows - read,
                (self.max_def_level > 0).then_some(&mut defs),
                None,
                &mut values,
            )?;
            if records == 0 {
                return Err(parquet::errors::ParquetError::General(format!(
                    "{read} rows where {rows} were to be read"
                )));
            }
            read += records;
        }
        let bytes: usize = values.iter().map(|v| v.len()).sum();
        let mut strings = arrow::array::StringBuilder::with_capacity(rows, bytes);
        let mut values = values.iter();
        for row in 0..rows {
            // Without definition levels every row has a value.
            if self.max_def_level > 0 && defs.get(row) != Some(&self.max_def_level) {
                strings.append_null();
                continue;
            }
            let Some(value) = values.next().map(|v| v.data()) else {
                return Err(parquet::errors::ParquetError::General(format!(
                    "fewer values than rows at row {row}"
                )));
            };
            match std::str::from_utf8(value) {
                Ok(text) => strings.append_value(text),
                Err(error) => {
                    not_utf8.push(NotUtf8 {
                        row,
                        column,
                        shown: shown_bytes(value, error),
                    });
                    strings.append_value(String::from_utf8_lossy(value));
                }
            }
        }
        Ok(strings.finish())
    }
}

/// Bytes that are not UTF-8 as a reject detail shows them: where the first bad byte is,
/// then the value, each bad byte written `\xNN`, cut past 64 characters.
fn shown_bytes(bytes: &[u8], error: std::str::Utf8Error) -> String {
    const SHOWN: usize = 64;
    let at = error.valid_up_to();
    let mut text = String::new();
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    let cut = match text.chars().count() > SHOWN {
        true => text.chars().take(SHOWN).collect::<String>() + "…",
        false => text,
    };
    format!(
        "byte {at} of {} is 0x{:02x}: \"{cut}\"",
        bytes.len(),
        bytes[at]
    )
}

/// Read one file (row groups in parallel), calling `each_batch(batch, out)` with one `out`
/// per row group; returns them in row-group order.
fn read_row_groups<T: Send>(
    file: &InputFile,
    specs: &[ColSpec],
    each_batch: &(dyn Fn(&Batch, &mut Vec<T>) + Sync),
) -> Result<Vec<Vec<T>>> {
    let opened = open_file(file, specs)?;
    let parts: Vec<Result<Vec<T>>> = (0..opened.row_group_rows.len())
        .into_par_iter()
        .map(|rg| {
            // The footer's count, up to a batch's worth: a footer may lie (decoding
            // refuses it after), and a vector that grows costs little for plan rows.
            let mut out =
                Vec::with_capacity(opened.row_group_rows[rg].min(BATCH_ROWS as u64) as usize);
            decode_row_group(file, &opened, specs, rg, true, &mut |batch| {
                each_batch(batch, &mut out)
            })?;
            Ok(out)
        })
        .collect();
    parts.into_iter().collect()
}

/// One row group of a dataset, in a [`Plan`].
#[derive(Clone, Copy, Debug)]
pub struct Unit {
    /// Its place in the plan's list (row groups of all files, in order).
    pub index: usize,
    /// Index of the file in the dataset's file list.
    pub file: usize,
    pub row_group: usize,
    pub rows: u64,
    /// Rows of the dataset before this row group (in file, row group order).
    pub offset: u64,
}

/// The most footers a [`Plan`] keeps from its start-of-run check until their files are
/// decoded (about 12 MiB of them: `benches/odd-shapes.sh`, "files", measured 11.7 and
/// 11.8 KiB a file held over 40,000 and 80,000 files). Keeping them spares an ordinary dataset of tens or hundreds of files a
/// second reading of each footer. The footers of a dataset's later files are dropped once
/// checked and read again when their rows are: a month of small files (a streaming sink
/// flushing every few rows) would otherwise hold every file's footer on top of the rows,
/// past any budget (40,000 one-row usage and 40,000 one-row ledger files: about 990 MiB
/// peak, now about 280 MiB); a second reading of a footer costs about as much as the
/// first.
pub const MAX_KEPT_FOOTERS: usize = 1024;

/// Every row group of a dataset's files, footers read and schemas checked before any row
/// is decoded: a reader can size its output, and number row groups, up front.
pub struct Plan {
    /// The columns the files were checked for (and a dropped footer is read again for).
    specs: Vec<ColSpec>,
    opened: Vec<OpenedFile>,
    pub units: Vec<Unit>,
    /// The first file that could not be opened (files after it are not read): reported
    /// unless a file before it fails while its rows are decoded.
    open_error: Option<TallyError>,
    /// Whether a row group holding strings that are not UTF-8 is warned of (see
    /// [`Plan::without_utf8_warnings`]).
    warn_not_utf8: bool,
}

impl Plan {
    /// Open every file (in parallel), keeping the footers of the first
    /// [`MAX_KEPT_FOOTERS`] files until they are decoded.
    pub fn open(files: &[InputFile], specs: &[ColSpec]) -> Plan {
        Plan::open_keeping(files, specs, MAX_KEPT_FOOTERS)
    }

    /// [`Plan::open`], keeping the footers of the first `keep` files.
    fn open_keeping(files: &[InputFile], specs: &[ColSpec], keep: usize) -> Plan {
        let too_many = match files.first() {
            Some(first) => check_file_count(first, files.len() as u64).err(),
            None => None,
        };
        let opened: Vec<Result<OpenedFile>> = if let Some(error) = too_many {
            vec![Err(error)]
        } else {
            files
                .par_iter()
                .enumerate()
                .map(|(index, f)| {
                    let opened = open_file(f, specs)?;
                    if index >= keep {
                        opened.drop_footer();
                    }
                    Ok(opened)
                })
                .collect()
        };
        let mut plan = Plan {
            specs: specs.to_vec(),
            opened: Vec::with_capacity(opened.len()),
            units: Vec::new(),
            open_error: None,
            warn_not_utf8: true,
        };
        let mut offset = 0u64;
        for (index, file) in opened.into_iter().enumerate() {
            match file {
                Ok(file) => {
                    for (rg, &rows) in file.row_group_rows.iter().enumerate() {
                        plan.units.push(Unit {
                            index: plan.units.len(),
                            file: index,
                            row_group: rg,
                            rows,
                            offset,
                        });
                        offset = offset.saturating_add(rows);
                    }
                    plan.opened.push(file);
                }
                Err(e) => {
                    plan.open_error = Some(e);
                    break;
                }
            }
        }
        plan
    }

    /// Do not warn of strings that are not UTF-8: for a pass that reads only some of the
    /// columns (the split run's light pass, over the ids) ahead of one that reads them all
    /// and warns with the count over every column, so that the log has one line a row
    /// group, not two with different counts.
    pub fn without_utf8_warnings(mut self) -> Plan {
        self.warn_not_utf8 = false;
        self
    }

    /// Rows in the row groups that will be decoded.
    pub fn rows(&self) -> u64 {
        self.units
            .last()
            .map_or(0, |u| u.offset.saturating_add(u.rows))
    }

    /// Decode every row group in parallel, each with its own state (`states`, one per
    /// unit); what `finish` makes of each unit's state once its rows are decoded comes
    /// back in unit order (a state may hold what only the decoding needs, freed then
    /// rather than when every unit is done). Of several failures, the first in
    /// (file, row group) order is reported.
    pub fn decode<S: Send, T: Send>(
        self,
        files: &[InputFile],
        states: Vec<S>,
        each_batch: &(dyn Fn(&Unit, &mut S, &Batch) + Sync),
        finish: &(dyn Fn(&Unit, S) -> T + Sync),
    ) -> Result<Vec<T>> {
        assert_eq!(states.len(), self.units.len(), "one state per row group");
        let (opened, specs) = (&self.opened, &self.specs);
        let warn = self.warn_not_utf8;
        let done: Vec<Result<T>> = self
            .units
            .par_iter()
            .zip(states)
            .map(|(unit, mut state)| {
                let file = &files[unit.file];
                decode_row_group(
                    file,
                    &opened[unit.file],
                    specs,
                    unit.row_group,
                    warn,
                    &mut |b| each_batch(unit, &mut state, b),
                )?;
                Ok(finish(unit, state))
            })
            .collect();
        let done = done.into_iter().collect::<Result<Vec<T>>>()?;
        match self.open_error {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }
}

/// What one open of an input Parquet file tells before a run: its size and the row count
/// in its footer (`None` if it cannot be read: the load then reports the file with its
/// exact problem), and the sha256 of a file held whole (at most
/// [`crate::positional::WHOLE_FILE_BYTES`], and not of a size that reads 0; `None` for
/// another file, whose bytes are hashed beside the run, and for a file that cannot be
/// opened: the fingerprint opens it again and reports why).
pub struct FooterRead {
    pub seen: Option<Seen>,
    pub small_sha256: Option<[u8; 32]>,
    /// The uncompressed bytes of its id columns (`event_id`, `entry_id`), as the footer
    /// gives them (`footer_id_bytes`); 0 when it cannot be read.
    pub id_bytes: u64,
    /// The names of its top-level columns, in the file's order (none when it cannot be
    /// read): the census warns of one that looks like a nullable column it lacks.
    pub columns: Vec<String>,
}

/// [`FooterRead`] of a file: one open, and a small file read once for both.
pub fn read_footer(path: &Path) -> FooterRead {
    let Ok(file) = PositionalFile::open_path(path) else {
        return FooterRead {
            seen: None,
            small_sha256: None,
            id_bytes: 0,
            columns: Vec::new(),
        };
    };
    let bytes = parquet::file::reader::Length::len(&file);
    let modified = file.modified();
    let small_sha256 = file.whole().map(|whole| crate::write::sha256(whole));
    let footer = rows_in_footer(file);
    let (seen, id_bytes, columns) = match footer {
        Some(footer) => (
            Some(Seen {
                bytes,
                rows: footer.rows,
                modified,
            }),
            footer.id_bytes,
            footer.columns,
        ),
        None => (None, 0, Vec::new()),
    };
    FooterRead {
        seen,
        small_sha256,
        id_bytes,
        columns,
    }
}

/// What [`rows_in_footer`] reads of a footer.
struct Footer {
    rows: u64,
    id_bytes: u64,
    columns: Vec<String>,
}

/// The uncompressed bytes of a file's id columns (`event_id`, `entry_id`) by its footer,
/// saturating: what its ids will take in memory, about (a length and the bytes each; less
/// for a dictionary-encoded column). Ids are the part of a row whose size the data decides,
/// up to 4 KiB each: the budget's per-row costs were measured with ids of about 20 bytes.
fn footer_id_bytes(metadata: &parquet::file::metadata::ParquetMetaData) -> u64 {
    (metadata.row_groups().iter())
        .flat_map(|row_group| row_group.columns())
        .filter(|column| matches!(column.column_path().parts(), [name] if name == "event_id" || name == "entry_id"))
        .map(|column| u64::try_from(column.uncompressed_size()).unwrap_or(0))
        .fold(0, u64::saturating_add)
}

/// The row count, id bytes ([`footer_id_bytes`]) and top-level column names in the footer
/// of an open file (`None` when it cannot be read; a decoder panic on a hostile footer is
/// one too).
fn rows_in_footer(file: PositionalFile) -> Option<Footer> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let read = move || {
        let options = parquet::file::serialized_reader::ReadOptionsBuilder::new()
            .with_column_stats_policy(SKIP_STATISTICS)
            .with_size_stats_policy(SKIP_STATISTICS)
            .build();
        let reader = SerializedFileReader::new_with_options(file, options).ok()?;
        let metadata = reader.metadata();
        let rows = footer_rows(metadata);
        // At most two ids of 4 KiB a row (a longer one is rejected): a hostile footer's
        // claim does not force a split, as its row count is checked when decoded.
        let most = rows.saturating_mul(2 * (MAX_STRING_BYTES as u64 + 4));
        let root = metadata.file_metadata().schema_descr().root_schema();
        Some(Footer {
            rows,
            id_bytes: footer_id_bytes(metadata).min(most),
            columns: (root.get_fields().iter())
                .map(|field| field.name().to_string())
                .collect(),
        })
    };
    caught_quietly(read).flatten()
}

/// Read every file with `specs` (files in parallel, row groups in parallel), calling
/// `each_batch(file index, batch, out)`; returns each file's `out`, in file order.
pub fn map_files<T: Send>(
    files: &[InputFile],
    specs: &[ColSpec],
    each_batch: &(dyn Fn(usize, &Batch, &mut Vec<T>) + Sync),
) -> Result<Vec<Vec<T>>> {
    Ok(row_groups_per_file(files, specs, each_batch)?
        .into_iter()
        .map(concat)
        .collect())
}

/// Every file's row-group outputs (files in parallel). Of several bad files, the error is
/// the first file's in file order (not whichever thread failed first).
fn row_groups_per_file<T: Send>(
    files: &[InputFile],
    specs: &[ColSpec],
    each_batch: &(dyn Fn(usize, &Batch, &mut Vec<T>) + Sync),
) -> Result<Vec<Vec<Vec<T>>>> {
    let per_file: Vec<Result<Vec<Vec<T>>>> = files
        .par_iter()
        .enumerate()
        .map(|(index, file)| {
            read_row_groups(file, specs, &|batch: &Batch, out: &mut Vec<T>| {
                each_batch(index, batch, out)
            })
        })
        .collect();
    per_file.into_iter().collect()
}

/// Decode the contract's columns of every file and count rows, doing nothing else: the
/// "bare scan" baseline of the benchmark.
pub fn scan_dataset(files: &[InputFile], specs: &[ColSpec]) -> Result<u64> {
    let per_file: Vec<Result<Vec<u64>>> = files
        .par_iter()
        .map(|file| {
            read_file(file, specs, &|batch: &Batch, out: &mut Vec<u64>| {
                out.push(batch.len as u64)
            })
        })
        .collect();
    let mut rows = 0;
    for counts in per_file {
        rows += counts?.iter().sum::<u64>();
    }
    Ok(rows)
}

/// Either a typed row or a reject, in file order.
pub enum Parsed<T> {
    Row(T),
    Rejected(Reject),
}

impl<T> Parsed<T> {
    /// The row made into another type; a reject stays as it is.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Parsed<U> {
        match self {
            Parsed::Row(r) => Parsed::Row(f(r)),
            Parsed::Rejected(r) => Parsed::Rejected(r),
        }
    }
}

/// Read all files of one dataset with `parse_row`, keeping (file, row) order.
pub fn read_dataset<T: Send>(
    files: &[InputFile],
    specs: &[ColSpec],
    parse_row: &(dyn Fn(&Batch, usize, RowRef) -> Parsed<T> + Sync),
    file_done: &(dyn Fn() + Sync),
) -> Result<(Vec<T>, Vec<Reject>, u64)> {
    let per_file: Vec<Result<Vec<Parsed<T>>>> = files
        .par_iter()
        .enumerate()
        .map(|(index, file)| {
            let parsed = read_file(file, specs, &|batch: &Batch, out: &mut Vec<Parsed<T>>| {
                for i in 0..batch.len {
                    let at = RowRef {
                        file: index as u32,
                        row: batch.first_row + i as u64,
                    };
                    out.push(parse_row(batch, i, at));
                }
            });
            file_done();
            parsed
        })
        .collect();
    let per_file = per_file.into_iter().collect::<Result<Vec<_>>>()?;
    // One allocation of the final size: growing a multi-GB vector by doubling costs copies
    // and page faults on fresh memory.
    let mut rows = Vec::with_capacity(per_file.iter().map(Vec::len).sum());
    let mut rejects = Vec::new();
    let mut read = 0u64;
    for file_rows in per_file {
        for parsed in file_rows {
            read += 1;
            match parsed {
                Parsed::Row(r) => rows.push(r),
                Parsed::Rejected(r) => rejects.push(r),
            }
        }
    }
    Ok((rows, rejects, read))
}

/// Builds rejects for one row; checks run in the contract's order.
struct RowCheck<'a> {
    dataset: Dataset,
    at: RowRef,
    batch: &'a Batch,
    row: usize,
    specs: &'a [ColSpec],
}

impl<'a> RowCheck<'a> {
    fn reject(&self, reason: Reason, detail: String) -> Reject {
        Reject {
            dataset: self.dataset,
            at: self.at,
            reason,
            detail,
        }
    }

    /// `null_required` for the first required column that is null.
    fn nulls(&self) -> Option<Reject> {
        self.specs
            .iter()
            .zip(&self.batch.columns)
            .find(|(spec, column)| spec.required && column.is_null(self.row))
            .map(|(spec, _)| {
                self.reject(
                    Reason::NullRequired,
                    format!("{} is null but required", spec.name),
                )
            })
    }

    /// The value within the length limit, borrowed from the batch; a value that is not
    /// UTF-8 is `bad_value` (a bad row, not a bad file: the contract's strings are UTF-8).
    fn checked_str(&self, index: usize) -> std::result::Result<Option<&'a str>, Reject> {
        if let Some(shown) = self.batch.not_utf8(self.row, index) {
            return Err(self.reject(
                Reason::BadValue,
                format!(
                    "{} is not UTF-8: {shown}; the contract's strings are UTF-8",
                    self.specs[index].name
                ),
            ));
        }
        match self.batch.columns[index].str(self.row) {
            None => Ok(None),
            Some(s) if s.len() > MAX_STRING_BYTES => Err(self.reject(
                Reason::BadValue,
                format!(
                    "{} is {} bytes long; the limit is {MAX_STRING_BYTES}",
                    self.specs[index].name,
                    s.len()
                ),
            )),
            Some(s) => Ok(Some(s)),
        }
    }

    /// A required value, owned (plan rows are few; usage and ledger rows borrow).
    fn required_str(&self, index: usize) -> std::result::Result<String, Reject> {
        self.required_ref(index).map(str::to_string)
    }

    /// A required value borrowed from the batch (checked non-null by `nulls` first).
    fn required_ref(&self, index: usize) -> std::result::Result<&'a str, Reject> {
        Ok(self.checked_str(index)?.unwrap_or_default())
    }

    fn milli(&self, index: usize) -> std::result::Result<Milli, Reject> {
        match self.batch.columns[index].milli(self.row) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => {
                Err(self.reject(Reason::BadValue, format!("{}: {e}", self.specs[index].name)))
            }
            None => Ok(Milli::ZERO),
        }
    }

    fn micros(&self, index: usize) -> std::result::Result<Option<Micros>, Reject> {
        match self.batch.columns[index].micros(self.row) {
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(e)) => Err(self.reject(
                Reason::BadValue,
                format!(
                    "{}: {e} is outside years 0001..=9999",
                    self.specs[index].name
                ),
            )),
            None => Ok(None),
        }
    }

    fn int(&self, index: usize) -> std::result::Result<Option<i64>, Reject> {
        match self.batch.columns[index].int(self.row) {
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(v)) => Err(self.reject(
                Reason::BadValue,
                format!(
                    "{}: {v} does not fit a signed 64-bit integer",
                    self.specs[index].name
                ),
            )),
            None => Ok(None),
        }
    }
}

fn checker<'a>(
    dataset: Dataset,
    specs: &'a [ColSpec],
    batch: &'a Batch,
    row: usize,
    at: RowRef,
) -> RowCheck<'a> {
    RowCheck {
        dataset,
        at,
        batch,
        row,
        specs,
    }
}

macro_rules! try_row {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reject) => return Parsed::Rejected(reject),
        }
    };
}

/// A valid usage row still borrowing its strings from the batch: what the spill pass
/// encodes without building (and dropping) a `UsageRow`.
#[derive(Clone, Copy, Debug)]
pub struct UsageRef<'a> {
    pub at: RowRef,
    pub event_id: &'a str,
    pub account_id: &'a str,
    pub product: &'a str,
    pub action: &'a str,
    /// `None` for a null or empty model.
    pub model: Option<&'a str>,
    pub quantity: Milli,
    pub status: EventStatus,
    pub occurred_at: Micros,
    pub ingested_at: Option<Micros>,
}

impl UsageRef<'_> {
    /// The owned row (repeated strings shared within the batch).
    pub fn to_row(&self, batch: &Batch) -> UsageRow {
        UsageRow {
            at: self.at,
            event_id: Id::new(self.event_id),
            account_id: batch.intern(self.account_id),
            product: batch.intern(self.product),
            action: batch.intern(self.action),
            model: self.model.map(|m| batch.intern(m)),
            quantity: self.quantity,
            status: self.status,
            occurred_at: self.occurred_at,
            ingested_at: self.ingested_at,
        }
    }
}

impl UsageRow {
    pub fn as_ref(&self) -> UsageRef<'_> {
        UsageRef {
            at: self.at,
            event_id: &self.event_id,
            account_id: &self.account_id,
            product: &self.product,
            action: &self.action,
            model: self.model.as_deref(),
            quantity: self.quantity,
            status: self.status,
            occurred_at: self.occurred_at,
            ingested_at: self.ingested_at,
        }
    }
}

/// usage: null_required → bad_value → negative_quantity → unknown_status.
pub fn parse_usage(batch: &Batch, row: usize, at: RowRef) -> Parsed<UsageRow> {
    check_usage(batch, row, at).map(|r| r.to_row(batch))
}

/// [`parse_usage`]'s checks, the strings left in the batch.
pub fn check_usage(batch: &Batch, row: usize, at: RowRef) -> Parsed<UsageRef<'_>> {
    let c = checker(Dataset::Usage, &USAGE_COLUMNS, batch, row, at);
    if let Some(r) = c.nulls() {
        return Parsed::Rejected(r);
    }
    let event_id = try_row!(c.required_ref(0));
    let account_id = try_row!(c.required_ref(1));
    let product = try_row!(c.required_ref(2));
    let action = try_row!(c.required_ref(3));
    let model = try_row!(c.checked_str(4)).filter(|m| !m.is_empty());
    let quantity = try_row!(c.milli(5));
    let status_text = try_row!(c.required_ref(6));
    let occurred_at = try_row!(c.micros(7)).unwrap_or_default();
    let ingested_at = try_row!(c.micros(8));
    if quantity.0 < 0 {
        return Parsed::Rejected(c.reject(
            Reason::NegativeQuantity,
            format!("quantity {quantity} is negative"),
        ));
    }
    let Some(status) = EventStatus::parse(status_text) else {
        return Parsed::Rejected(c.reject(
            Reason::UnknownStatus,
            format!(
                "status {} is not one of succeeded, failed, cancelled",
                quoted(status_text)
            ),
        ));
    };
    Parsed::Row(UsageRef {
        at,
        event_id,
        account_id,
        product,
        action,
        model,
        quantity,
        status,
        occurred_at,
        ingested_at,
    })
}

/// allocations: null_required → bad_value → unknown_status (plan and overlap checks follow
/// in `validate`).
pub fn parse_allocation(batch: &Batch, row: usize, at: RowRef) -> Parsed<AllocationRow> {
    let c = checker(Dataset::Allocations, &ALLOCATION_COLUMNS, batch, row, at);
    if let Some(r) = c.nulls() {
        return Parsed::Rejected(r);
    }
    let account_id = try_row!(c.required_str(0));
    let plan_id = try_row!(c.required_str(1));
    let period_start = try_row!(c.micros(2)).unwrap_or_default();
    let period_end = try_row!(c.micros(3)).unwrap_or_default();
    let included_credits = try_row!(c.milli(4));
    let billing_anchor = try_row!(c.micros(5));
    let status_text = try_row!(c.required_str(6));
    if included_credits.0 < 0 {
        return Parsed::Rejected(c.reject(
            Reason::BadValue,
            format!("included_credits {included_credits} is negative"),
        ));
    }
    if period_end <= period_start {
        return Parsed::Rejected(c.reject(
            Reason::BadValue,
            format!(
                "period_end {} is not after period_start {}",
                crate::time::format_instant(period_end),
                crate::time::format_instant(period_start)
            ),
        ));
    }
    let Some(status) = AllocationStatus::parse(&status_text) else {
        return Parsed::Rejected(c.reject(
            Reason::UnknownStatus,
            format!(
                "status {} is not one of active, cancelled",
                quoted(&status_text)
            ),
        ));
    };
    Parsed::Row(AllocationRow {
        at,
        account_id: account_id.into(),
        plan_id: plan_id.into(),
        period_start,
        period_end,
        included_credits,
        billing_anchor,
        status,
    })
}

/// An allocation row as a run reads it: valid, or rejected with its account-period.
pub enum AllocationRead {
    Valid(AllocationRow),
    /// Rejected by [`parse_allocation`], its account and period readable all the same: a
    /// run that does not cover that period does not count it as leaving one unbilled.
    RejectedIn(Reject, crate::validate::RejectedPeriod),
}

/// [`parse_allocation`], with the account-period of a rejected row whose account and
/// period can be read (a row whose period cannot be read is a plain reject: counted by
/// every run).
pub fn read_allocation(batch: &Batch, row: usize, at: RowRef) -> Parsed<AllocationRead> {
    match parse_allocation(batch, row, at) {
        Parsed::Row(valid) => Parsed::Row(AllocationRead::Valid(valid)),
        Parsed::Rejected(reject) => {
            let c = checker(Dataset::Allocations, &ALLOCATION_COLUMNS, batch, row, at);
            match readable_period(&c) {
                Some(period) => Parsed::Row(AllocationRead::RejectedIn(reject, period)),
                None => Parsed::Rejected(reject),
            }
        }
    }
}

/// An allocation row's period, with its account when that can be read, apart from its other
/// columns: `None` when a bound is null or not valid, or the period ends at or before its
/// start.
fn readable_period(c: &RowCheck<'_>) -> Option<crate::validate::RejectedPeriod> {
    let account_id = c.checked_str(0).ok().flatten().map(str::to_string);
    let period_start = c.micros(2).ok()??;
    let period_end = c.micros(3).ok()??;
    (period_end > period_start).then_some(crate::validate::RejectedPeriod {
        at: c.at,
        account_id,
        period_start,
        period_end,
    })
}

/// grants: null_required → bad_value (repeated ids are checked in `validate`).
pub fn parse_grant(batch: &Batch, row: usize, at: RowRef) -> Parsed<GrantRow> {
    let c = checker(Dataset::Grants, &GRANT_COLUMNS, batch, row, at);
    if let Some(r) = c.nulls() {
        return Parsed::Rejected(r);
    }
    let grant_id = try_row!(c.required_str(0));
    let account_id = try_row!(c.required_str(1));
    let kind_text = try_row!(c.required_str(2));
    let credits = try_row!(c.milli(3));
    let effective_at = try_row!(c.micros(4)).unwrap_or_default();
    let expires_at = try_row!(c.micros(5));
    let priority = try_row!(c.int(6));
    if let Some(p) = priority.filter(|&p| i32::try_from(p).is_err()) {
        // `grants_next.parquet` carries the priority on, in the INT32 of the input schema
        // (as `tally generate` writes it): a wider one could not be carried unchanged.
        return Parsed::Rejected(c.reject(
            Reason::BadValue,
            format!("priority: {p} does not fit a 32-bit integer"),
        ));
    }
    let Some(kind) = GrantKind::parse_grant(&kind_text) else {
        return Parsed::Rejected(c.reject(
            Reason::BadValue,
            format!(
                "kind {} is not one of rollover, promo, compensation, top_up",
                quoted(&kind_text)
            ),
        ));
    };
    if credits.0 <= 0 {
        return Parsed::Rejected(
            c.reject(Reason::BadValue, format!("credits {credits} must be > 0")),
        );
    }
    if let Some(expires) = expires_at {
        if expires <= effective_at {
            return Parsed::Rejected(c.reject(
                Reason::BadValue,
                format!(
                    "expires_at {} is not after effective_at {}",
                    crate::time::format_instant(expires),
                    crate::time::format_instant(effective_at)
                ),
            ));
        }
    }
    Parsed::Row(GrantRow {
        at,
        grant_id,
        account_id: account_id.into(),
        kind,
        credits,
        effective_at,
        expires_at,
        priority,
    })
}

/// A valid ledger row still borrowing its strings from the batch (see [`UsageRef`]).
#[derive(Clone, Copy, Debug)]
pub struct DebitRef<'a> {
    pub at: RowRef,
    pub entry_id: &'a str,
    pub account_id: &'a str,
    pub event_id: Option<&'a str>,
    pub kind: EntryKind,
    pub credits: Milli,
    pub recorded_at: Micros,
}

impl DebitRef<'_> {
    /// The owned row (the account shared within the batch).
    pub fn to_row(&self, batch: &Batch) -> DebitRow {
        DebitRow {
            at: self.at,
            entry_id: Id::new(self.entry_id),
            account_id: batch.intern(self.account_id),
            event_id: self.event_id.map(Id::new),
            kind: self.kind,
            credits: self.credits,
            recorded_at: self.recorded_at,
        }
    }
}

impl DebitRow {
    pub fn as_ref(&self) -> DebitRef<'_> {
        DebitRef {
            at: self.at,
            entry_id: &self.entry_id,
            account_id: &self.account_id,
            event_id: self.event_id.as_deref(),
            kind: self.kind,
            credits: self.credits,
            recorded_at: self.recorded_at,
        }
    }
}

/// debits: null_required → bad_value (repeated ids are checked in `validate`).
pub fn parse_debit(batch: &Batch, row: usize, at: RowRef) -> Parsed<DebitRow> {
    check_debit(batch, row, at).map(|r| r.to_row(batch))
}

/// [`parse_debit`]'s checks, the strings left in the batch.
pub fn check_debit(batch: &Batch, row: usize, at: RowRef) -> Parsed<DebitRef<'_>> {
    let c = checker(Dataset::Debits, &DEBIT_COLUMNS, batch, row, at);
    if let Some(r) = c.nulls() {
        return Parsed::Rejected(r);
    }
    let entry_id = try_row!(c.required_ref(0));
    let account_id = try_row!(c.required_ref(1));
    let event_id = try_row!(c.checked_str(2));
    let kind_text = try_row!(c.required_ref(3));
    let credits = try_row!(c.milli(4));
    let recorded_at = try_row!(c.micros(5)).unwrap_or_default();
    let Some(kind) = EntryKind::parse(kind_text) else {
        return Parsed::Rejected(c.reject(
            Reason::BadValue,
            format!(
                "kind {} is not one of debit, refund, adjustment",
                quoted(kind_text)
            ),
        ));
    };
    if credits.0 < 0 {
        return Parsed::Rejected(
            c.reject(Reason::BadValue, format!("credits {credits} is negative")),
        );
    }
    Parsed::Row(DebitRef {
        at,
        entry_id,
        account_id,
        event_id,
        kind,
        credits,
        recorded_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{LargeStringArray, RecordBatch};
    use std::fs::File;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    /// Plain string columns come back as views (`Str`: ids) or dictionaries (`Label`),
    /// whether the file stores UTF8 or LARGE UTF8, with nulls where the file has them.
    #[test]
    fn string_columns_are_read_as_views_and_labels_as_dictionaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.parquet");
        let long = "evt-0123456789abcdef0123"; // past a view's 12 inline bytes
        let ids: ArrayRef = Arc::new(StringArray::from(vec![Some(long), None, Some("e-1")]));
        let large: ArrayRef = Arc::new(LargeStringArray::from(vec![Some("a"), Some(long), None]));
        let labels: ArrayRef = Arc::new(StringArray::from(vec![Some("x"), Some("x"), None]));
        let batch =
            RecordBatch::try_from_iter([("id", ids), ("large", large), ("label", labels)]).unwrap();
        crate::write::write_parquet(&path, &batch).unwrap();
        let file = InputFile {
            rel_path: "ids.parquet".into(),
            abs_path: path,
            first_seen: None,
        };
        let specs = [
            col("id", ColType::Str, true),
            col("large", ColType::Str, true),
            col("label", ColType::Label, true),
        ];
        let seen = map_files(
            &[file],
            &specs,
            &|_, batch, out: &mut Vec<Vec<Option<String>>>| {
                assert!(matches!(batch.columns[0], Column::View(_)));
                assert!(matches!(batch.columns[1], Column::View(_)));
                assert!(matches!(batch.columns[2], Column::Dict(..)));
                for column in &batch.columns {
                    out.push(
                        (0..batch.len)
                            .map(|i| column.str(i).map(str::to_string))
                            .collect(),
                    );
                }
            },
        )
        .unwrap();
        let text = |v: [Option<&str>; 3]| v.map(|s| s.map(str::to_string)).to_vec();
        assert_eq!(
            seen[0],
            [
                text([Some(long), None, Some("e-1")]),
                text([Some("a"), Some(long), None]),
                text([Some("x"), Some("x"), None]),
            ]
        );
    }

    /// What one open of an input file tells (its size and footer's rows, the sha256 of a
    /// file held whole) is the file's own: for a file held whole (small), one read by
    /// position (past the limit: 20,000 distinct ids), a file that is not Parquet (no rows)
    /// and a missing file (nothing).
    #[test]
    fn footer_reads_and_sha256_are_the_files_own() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.parquet");
        write_ids(&small, &["a".to_string(), "b".to_string()]);
        let large = dir.path().join("large.parquet");
        let ids: Vec<String> = (0..20_000)
            .map(|i| format!("id-{i:08}-{}", i * 7919))
            .collect();
        write_ids(&large, &ids);
        let text = dir.path().join("text.parquet");
        std::fs::write(&text, "not parquet").unwrap();
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert!(size(&small) <= crate::positional::WHOLE_FILE_BYTES);
        assert!(size(&large) > crate::positional::WHOLE_FILE_BYTES);
        for (path, rows, held_whole) in [
            (&small, Some(2), true),
            (&large, Some(20_000), false),
            (&text, None, true),
        ] {
            let sha256 = crate::write::sha256_file(path).unwrap();
            let read = read_footer(path);
            let bytes = size(path);
            assert_eq!(
                read.seen.map(|s| (s.bytes, s.rows)),
                rows.map(|rows| (bytes, rows)),
                "{path:?}"
            );
            if let Some(seen) = read.seen {
                let modified = Modified::of(&std::fs::metadata(path).unwrap());
                assert_eq!(seen.modified, modified, "{path:?}");
            }
            let small_sha256 = read.small_sha256.map(hex::encode);
            assert_eq!(small_sha256, held_whole.then_some(sha256), "{path:?}");
        }
        let missing = dir.path().join("missing.parquet");
        let read = read_footer(&missing);
        assert_eq!((read.seen, read.small_sha256), (None, None));
    }

    /// A file listed with the run's first reading of it opens while it is as that reading
    /// saw it, and is refused (exit 2, naming both readings) once it holds other rows, or
    /// the same rows in another size: it changed during the run, and the manifest's rows
    /// would not be what the run read. A file listed without a reading is not checked.
    #[test]
    fn a_file_unlike_its_first_reading_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.parquet");
        write_ids(&path, &["a".to_string(), "b".to_string()]);
        let first = read_footer(&path).seen.unwrap();
        assert_eq!(first.rows, 2);
        let file = |first_seen| InputFile {
            rel_path: "ids.parquet".into(),
            abs_path: path.clone(),
            first_seen,
        };
        let specs = [col("id", ColType::Str, true)];
        assert!(open_file(&file(Some(first)), &specs).is_ok());
        write_ids(&path, &["a".to_string(), "b".to_string(), "c".to_string()]);
        let now = read_footer(&path).seen.unwrap();
        let refused = open_file(&file(Some(first)), &specs).err().unwrap();
        assert_eq!(
            refused.to_string(),
            format!(
                "ids.parquet: the file changed while the run read it ({} bytes and 2 rows at \
                 the run's first reading, {} bytes and 3 rows now); rerun once the file is \
                 complete",
                first.bytes, now.bytes
            )
        );
        let same_rows = Seen {
            bytes: now.bytes + 1,
            rows: 3,
            ..now
        };
        assert!(open_file(&file(Some(same_rows)), &specs).is_err());
        assert!(open_file(&file(Some(now)), &specs).is_ok());
        assert!(open_file(&file(None), &specs).is_ok());
    }

    /// A file replaced under its name by a copy of the same size and rows (a corrected
    /// export renamed into place), or written again in place (its modification time moved),
    /// is refused as well, at the footer's opening and at a row group's: the size and row
    /// count alone would not see it, and the manifest's sha256 would be of another file than
    /// the rows read.
    #[test]
    fn a_file_replaced_with_the_same_size_and_rows_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.parquet");
        write_ids(&path, &["a".to_string(), "b".to_string()]);
        let first = read_footer(&path).seen.unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(first.modified, Modified::of(&meta));
        let file = InputFile {
            rel_path: "ids.parquet".into(),
            abs_path: path.clone(),
            first_seen: Some(first),
        };
        let specs = [col("id", ColType::Str, true)];
        assert!(open_file(&file, &specs).is_ok());
        let replaced = format!(
            "ids.parquet: the file was replaced or written again while the run read it (the \
             same size, {} bytes, but another modification time than at the run's first \
             reading); rerun once the file is complete",
            first.bytes
        );
        // Another file renamed over it, byte for byte the same, written a second later (a
        // writer's copy is written after the file it replaces).
        let later = meta.modified().unwrap() + std::time::Duration::from_secs(1);
        let copy = dir.path().join("copy.parquet");
        std::fs::copy(&path, &copy).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_modified(later)
            .unwrap();
        std::fs::rename(&copy, &path).unwrap();
        let refused = open_file(&file, &specs).err().unwrap();
        assert_eq!(refused.to_string(), replaced);

        // The same at a row group's opening, after the footer's (a plan opens every file
        // first, then decodes its row groups).
        let file = InputFile {
            first_seen: read_footer(&path).seen,
            ..file
        };
        let plan = Plan::open_keeping(std::slice::from_ref(&file), &specs, 1);
        let handle = std::fs::File::options().write(true).open(&path).unwrap();
        handle
            .set_modified(later + std::time::Duration::from_secs(1))
            .unwrap();
        drop(handle);
        let refused = decode_ids(plan, std::slice::from_ref(&file)).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("ids.parquet: the file was replaced or written again"),
            "{refused}"
        );

        // The check the inputs' sha256 makes (no footer parsed: its message says bytes only).
        let again = read_footer(&path).seen.unwrap();
        assert!(check_unchanged(&file, again.bytes, None, again.modified).is_err());
        let file = InputFile {
            first_seen: Some(again),
            ..file
        };
        assert!(check_unchanged(&file, again.bytes, None, again.modified).is_ok());
        assert_eq!(
            check_unchanged(&file, again.bytes + 1, None, again.modified)
                .unwrap_err()
                .to_string(),
            format!(
                "ids.parquet: the file changed while the run read it ({} bytes at the run's \
                 first reading, {} bytes now); rerun once the file is complete",
                again.bytes,
                again.bytes + 1
            )
        );
    }

    /// A missing-column message lists the file's columns in order, at most
    /// `LISTED_COLUMNS` of them, then how many more: at the limit all, one past it one more.
    #[test]
    fn a_missing_column_message_lists_at_most_sixteen_columns() {
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = |n: usize| {
            Schema::new(
                (0..n)
                    .map(|i| Field::new(format!("c{i}"), DataType::Utf8, true))
                    .collect::<Vec<_>>(),
            )
        };
        let at_limit = column_names(&schema(LISTED_COLUMNS));
        assert!(at_limit.starts_with("`c0`, `c1`, ") && at_limit.ends_with("`c15`"));
        assert!(!at_limit.contains("more"));
        let past = column_names(&schema(LISTED_COLUMNS + 1));
        assert!(past.ends_with("`c15` and 1 more"), "{past}");
        assert_eq!(column_names(&schema(0)), "");
    }

    /// Footers are read without their column statistics (tally never uses them): a file
    /// written with min/max statistics opens with none in its metadata, and its rows read
    /// the same.
    #[test]
    fn footers_are_read_without_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.parquet");
        write_ids(&path, &["b".to_string(), "a".to_string()]);
        let written = {
            use parquet::file::reader::{FileReader, SerializedFileReader};
            let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
            reader
                .metadata()
                .row_group(0)
                .column(0)
                .statistics()
                .is_some()
        };
        assert!(written, "the writer writes statistics");
        let file = InputFile {
            rel_path: "ids.parquet".into(),
            abs_path: path.clone(),
            first_seen: None,
        };
        let handle = PositionalFile::open(&file).unwrap();
        let specs = [col("id", ColType::Str, true)];
        let (metadata, _) = open_checked(&file, &handle, &specs).unwrap();
        let column = metadata.metadata().row_group(0).column(0);
        assert!(column.statistics().is_none());
        assert_eq!(read_footer(&path).seen.map(|seen| seen.rows), Some(2));
    }

    /// `files` one-column Parquet files of ids in `dir`, file `f` holding `f + 1` rows.
    fn id_files(dir: &Path, files: usize) -> Vec<InputFile> {
        (0..files)
            .map(|f| {
                let path = dir.join(format!("ids-{f}.parquet"));
                write_ids(
                    &path,
                    &(0..=f).map(|r| format!("id-{f}-{r}")).collect::<Vec<_>>(),
                );
                InputFile {
                    rel_path: format!("ids-{f}.parquet"),
                    abs_path: path,
                    first_seen: None,
                }
            })
            .collect()
    }

    fn write_ids(path: &Path, ids: &[String]) {
        let ids: ArrayRef = Arc::new(StringArray::from(ids.to_vec()));
        let batch = RecordBatch::try_from_iter([("id", ids)]).unwrap();
        crate::write::write_parquet(path, &batch).unwrap();
    }

    /// `batch` written in row groups of `rows_per_group` rows.
    fn write_in_row_groups(path: &Path, batch: &RecordBatch, rows_per_group: usize) {
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(rows_per_group))
            .build();
        let file = File::create(path).unwrap();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
        writer.write(batch).unwrap();
        writer.close().unwrap();
    }

    /// Every id of a plan's files, in unit order; asserts each batch's id column is read
    /// as string views (the read hints hold for a footer read again too).
    fn decode_ids(plan: Plan, files: &[InputFile]) -> Result<Vec<String>> {
        let states = vec![Vec::new(); plan.units.len()];
        let per_unit = plan.decode(
            files,
            states,
            &|_, ids: &mut Vec<String>, batch| {
                assert!(matches!(batch.columns[0], Column::View(_)));
                ids.extend((0..batch.len).map(|i| batch.columns[0].str(i).unwrap().to_string()))
            },
            &|_, ids| ids,
        )?;
        Ok(per_unit.concat())
    }

    /// A plan keeps the footers of its first files only (at the limit: all of them; one
    /// past it: the last is read again when decoded), and reads the same rows either way.
    #[test]
    fn a_plan_keeps_its_first_footers_and_reads_the_others_again() {
        let dir = tempfile::tempdir().unwrap();
        let files = id_files(dir.path(), 3);
        let specs = [col("id", ColType::Str, true)];
        let expected: Vec<String> = (0..3)
            .flat_map(|f| (0..=f).map(move |r| format!("id-{f}-{r}")))
            .collect();
        for keep in [3, 2, 0] {
            let plan = Plan::open_keeping(&files, &specs, keep);
            let kept: Vec<bool> = plan.opened.iter().map(OpenedFile::footer_kept).collect();
            assert_eq!(
                kept,
                (0..3).map(|f| f < keep).collect::<Vec<_>>(),
                "keep {keep}"
            );
            assert_eq!(decode_ids(plan, &files).unwrap(), expected, "keep {keep}");
        }
    }

    /// `Plan::open` keeps the footers of a dataset's first `MAX_KEPT_FOOTERS` files (at the
    /// limit: kept; one past it: dropped), except a file without row groups, whose footer
    /// no row group will need.
    #[test]
    fn plan_open_keeps_the_first_max_kept_footers_files_footers() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.parquet");
        let column: ArrayRef = Arc::new(StringArray::from(Vec::<String>::new()));
        let batch = RecordBatch::try_from_iter([("id", column)]).unwrap();
        let writer = parquet::arrow::ArrowWriter::try_new(
            File::create(&empty).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        writer.close().unwrap();
        let mut files = vec![InputFile {
            rel_path: "empty.parquet".into(),
            abs_path: empty,
            first_seen: None,
        }];
        for f in 1..=MAX_KEPT_FOOTERS {
            let path = dir.path().join(format!("one-{f:04}.parquet"));
            write_ids(&path, &[format!("id-{f}")]);
            files.push(InputFile {
                rel_path: format!("one-{f:04}.parquet"),
                abs_path: path,
                first_seen: None,
            });
        }
        let specs = [col("id", ColType::Str, true)];
        let plan = Plan::open(&files, &specs);
        let kept: Vec<bool> = plan.opened.iter().map(OpenedFile::footer_kept).collect();
        assert!(
            plan.opened[0].row_group_rows.is_empty() && !kept[0],
            "no row groups"
        );
        assert!(
            kept[1..MAX_KEPT_FOOTERS].iter().all(|&k| k),
            "the first 1,024 files"
        );
        assert!(!kept[MAX_KEPT_FOOTERS], "the 1,025th file");
        assert_eq!(decode_ids(plan, &files).unwrap().len(), MAX_KEPT_FOOTERS);
    }

    /// A file of many row groups whose footer was dropped, decoded in parallel: its footer
    /// is read again once, kept while its row groups are decoded, and dropped after the
    /// last; a kept footer is dropped after the last row group too.
    #[test]
    fn a_footer_is_read_again_once_and_dropped_after_the_last_row_group() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..64).map(|r| format!("id-{r}")).collect();
        let column: ArrayRef = Arc::new(StringArray::from(ids.clone()));
        let batch = RecordBatch::try_from_iter([("id", column)]).unwrap();
        let files: Vec<InputFile> = (0..2)
            .map(|f| {
                let path = dir.path().join(format!("groups-{f}.parquet"));
                write_in_row_groups(&path, &batch, 4);
                InputFile {
                    rel_path: format!("groups-{f}.parquet"),
                    abs_path: path,
                    first_seen: None,
                }
            })
            .collect();
        let specs = [col("id", ColType::Str, true)];
        let plan = Plan::open_keeping(&files, &specs, 1);
        assert_eq!(plan.units.len(), 32, "16 row groups a file");
        let opened = &plan.opened;
        let decoded: Vec<usize> = plan
            .units
            .par_iter()
            .map(|unit| {
                let mut rows = 0;
                let file = &files[unit.file];
                decode_row_group(
                    file,
                    &opened[unit.file],
                    &specs,
                    unit.row_group,
                    true,
                    &mut |b| rows += b.len,
                )
                .unwrap();
                rows
            })
            .collect();
        assert_eq!(decoded, vec![4; 32]);
        let rereads = |f: usize| opened[f].footer_rereads.load(Ordering::Relaxed);
        assert_eq!((rereads(0), rereads(1)), (0, 1));
        assert!(opened.iter().all(|o| !o.footer_kept()));
        let plan = Plan::open_keeping(&files, &specs, 1);
        assert_eq!(
            decode_ids(plan, &files).unwrap(),
            [ids.clone(), ids].concat()
        );
    }

    /// A file whose footer was dropped and that changed before its rows were read (more
    /// rows; the same rows with its columns moved) is refused, naming it.
    #[test]
    fn a_file_changed_before_its_footer_is_read_again_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let refused = "ids-1.parquet: the file changed while the run read it (its columns or \
                       row groups differ from the first reading of its footer); rerun once the \
                       file is complete";
        let files = id_files(dir.path(), 2);
        let specs = [col("id", ColType::Str, true)];
        let plan = Plan::open_keeping(&files, &specs, 1);
        write_ids(&files[1].abs_path, &["a".into(), "b".into(), "c".into()]);
        let error = decode_ids(plan, &files).unwrap_err();
        assert_eq!(error.to_string(), refused);

        let two_columns = |first: &str, second: &str| {
            let ids: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
            let other: ArrayRef = Arc::new(StringArray::from(vec!["x", "y"]));
            let (first, second) = match first {
                "id" => ((first, ids), (second, other)),
                _ => ((first, other), (second, ids)),
            };
            let batch = RecordBatch::try_from_iter([first, second]).unwrap();
            crate::write::write_parquet(&files[1].abs_path, &batch).unwrap();
        };
        two_columns("id", "other");
        let plan = Plan::open_keeping(&files, &specs, 1);
        two_columns("other", "id");
        let error = decode_ids(plan, &files).unwrap_err();
        assert_eq!(error.to_string(), refused);
    }

    /// A file may hold `MAX_ROWS_PER_FILE - 1` rows (the last row's place still fits
    /// `At`'s 40 row bits); one more is refused, naming the file and what to do.
    #[test]
    fn a_file_may_hold_rows_up_to_the_row_bits_and_one_more_is_refused() {
        let file = InputFile {
            rel_path: "usage/big.parquet".into(),
            abs_path: PathBuf::from("/data/usage/big.parquet"),
            first_seen: None,
        };
        let most = crate::model::MAX_ROWS_PER_FILE - 1;
        assert!(check_row_count(&file, most).is_ok());
        let last = crate::model::At::new(0, most - 1);
        assert_eq!((last.file(), last.row()), (0, most - 1));
        let refused = check_row_count(&file, most + 1).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "usage/big.parquet: 1099511627776 rows is more than a file may hold \
             (1099511627775); split the file"
        );
        assert!(check_row_count(&file, u64::MAX).is_err());
    }

    /// A dataset may have `MAX_FILES` files (the last one's index still fits `At`'s 24
    /// file bits); one more is refused, naming the first file.
    #[test]
    fn a_dataset_may_have_files_up_to_the_file_bits_and_one_more_is_refused() {
        let first = InputFile {
            rel_path: "ledger/part-0.parquet".into(),
            abs_path: PathBuf::from("/data/ledger/part-0.parquet"),
            first_seen: None,
        };
        let most = crate::model::MAX_FILES;
        assert!(check_file_count(&first, most).is_ok());
        let last = crate::model::At::new((most - 1) as u32, crate::model::MAX_ROWS_PER_FILE - 2);
        assert_eq!(last.file() as u64, most - 1);
        let refused = check_file_count(&first, most + 1).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "ledger/part-0.parquet: the dataset has 16777217 files, more than 16777216 (merge \
             some)"
        );
    }
}
