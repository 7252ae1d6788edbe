//! The close outputs that grow with the month — `billed_events` (one row per event of an
//! invoice's period) and `invoice_lines` (one per account and priced product/action/model)
//! — are not held
//! whole by a split run: each group writes its rows, in account order, to a run file; the
//! writer merges the runs by account (an account's rows are all in one run) and streams
//! them to Parquet (and, for the invoice lines, from the same merge to their CSV). A whole
//! run keeps its single run in memory.
//!
//! Run file: [`RUN_MAGIC`], then one record per row: the postcard bytes of the row,
//! front-coded against the record before it (two varints: how many leading bytes it
//! shares with the previous record, how many bytes follow; then those bytes). A row's
//! account comes first in its bytes, then its invoice, so consecutive rows of an invoice
//! write only what differs: a billed event takes about a third of the bytes it took
//! whole, and a close's run files, written and read back through the kernel, shrink alike
//! (measured with `benches/run-file-size.sh`: benches/README.md, "Profiles and experiments
//! (2026-12-03, evening: the close's run files)").
//!
//! A run file is written and read back past the page cache ([`crate::direct`]: written with
//! `O_DIRECT` by a writer thread; read with `O_DIRECT` a chunk at a time, the next chunk of
//! every file read ahead by one I/O thread while the merge decodes the current one). At
//! 100M events the run files are gigabytes (benches/README.md, "Figures moved from source
//! comments (2026-12-05)"): copying them into fresh page-cache pages made the groups'
//! "billed events and invoice lines" stage much slower than writing them unbuffered, and
//! read back through the page cache from the disk, the merge's write stage was slower
//! than with the read-ahead (one close each, by hand: benches/README.md, "Profiles and
//! experiments (2026-12-04, evening: the spill past the page cache)", 7f12f4b and 29cf7c6).

use crate::close::InvoiceLineRow;
use crate::engine::BilledEventRow;
use crate::error::{Result, TallyError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use thin_vec::ThinVec;

/// A row of a streamed table, ordered by its account.
pub trait Keyed: Serialize + DeserializeOwned + Clone + Send + Sync {
    fn account(&self) -> &str;

    /// What decoding keeps from one record to the next of a run: the strings the next
    /// row may share (rows of an account are adjacent).
    type Kept: Default + Send;

    /// Append the row's record, the bytes postcard writes for it (written by hand: through
    /// postcard's serializer a billed event took about 200 instructions, "Profiles and
    /// experiments (2026-12-06, afternoon: the close's run files read back)").
    fn encode(&self, out: &mut Vec<u8>);

    /// Decode a record written by [`write_run`], sharing what equals a kept string. Its
    /// first `shared` bytes are those of the record read before it, from which `kept` was
    /// kept.
    fn decode(bytes: &[u8], shared: usize, kept: &mut Self::Kept) -> postcard::Result<Self>;

    /// About the bytes the row takes in a chunk of [`for_each_chunk`]: its strings' bytes
    /// (which the chunk's Arrow batch copies) and [`ROW_BYTES`] for the rest. Chunks are
    /// bounded by them as well as by rows, so that ids of kilobytes do not make a chunk of
    /// gigabytes.
    fn chunk_bytes(&self) -> usize;
}

/// What [`Keyed::chunk_bytes`] counts for a row besides its strings: a fixed figure (about
/// a row's struct), not `size_of`, so that where a chunk ends, and so the bytes of an
/// output whose chunks reach their byte limit, do not change with the struct's layout.
pub const ROW_BYTES: usize = 64;

/// A record being read, field by field, by hand as postcard writes one (a string as its
/// length, a varint, then its bytes; an integer as a zigzag varint; an option as a 0 or 1
/// byte, then its value), accepting what postcard accepts (a property test holds the two
/// to the same rows and the same refusals over any bytes; a refused record's error may be
/// named differently) (`model::SpillReader`; through
/// postcard's serde decoder a billed event's last three fields alone took about 320
/// instructions: "Profiles and experiments (2026-12-06, afternoon: the close's run files
/// read back)" in benches/README.md). A string that lies within the bytes the record shares
/// with the record before it is that record's string, so the kept one is taken as it is,
/// neither compared nor checked as UTF-8 again: for most billed events their account and
/// invoice, for most invoice lines their account, invoice and product.
struct RecordReader<'a> {
    whole: &'a [u8],
    /// From the next field on.
    fields: crate::model::SpillReader<'a>,
    /// How many leading bytes equal the previous record's.
    shared: usize,
}

impl<'a> RecordReader<'a> {
    fn new(bytes: &'a [u8], shared: usize) -> RecordReader<'a> {
        RecordReader {
            whole: bytes,
            fields: crate::model::SpillReader { bytes },
            shared,
        }
    }

    /// The next string's bytes, and whether the previous record holds them too.
    fn string_bytes(&mut self) -> postcard::Result<(&'a [u8], bool)> {
        let len = (self.fields.unsigned()).ok_or(postcard::Error::DeserializeBadVarint)?;
        let bytes = (self.fields.take(len)).ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
        let end = self.whole.len() - self.fields.bytes.len();
        Ok((bytes, end <= self.shared))
    }

    /// The next string: the kept one when the previous record holds the same bytes here,
    /// else the string read (`kept` when equal), kept for the record after.
    fn shared_string(
        &mut self,
        kept: &mut Option<crate::model::Shared>,
    ) -> postcard::Result<crate::model::Shared> {
        let (bytes, in_previous) = self.string_bytes()?;
        match kept {
            Some(same) if in_previous => Ok(same.clone()),
            _ => Ok(shared(utf8(bytes)?, kept)),
        }
    }

    /// The next string, borrowed.
    fn str(&mut self) -> postcard::Result<&'a str> {
        utf8(self.string_bytes()?.0)
    }

    fn i64(&mut self) -> postcard::Result<i64> {
        self.fields
            .signed()
            .ok_or(postcard::Error::DeserializeBadVarint)
    }

    /// An amount, refused past DECIMAL(18,3) as `Milli`'s serde decoder refuses one.
    fn milli(&mut self) -> postcard::Result<crate::amount::Milli> {
        crate::amount::Milli::within_output_limit(self.i64()?).ok_or(postcard::Error::SerdeDeCustom)
    }

    /// Whether an option's value follows (its tag byte).
    fn some(&mut self) -> postcard::Result<bool> {
        match self.fields.byte() {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            Some(_) => Err(postcard::Error::DeserializeBadOption),
            None => Err(postcard::Error::DeserializeUnexpectedEnd),
        }
    }

    fn option<T>(
        &mut self,
        value: impl FnOnce(&mut Self) -> postcard::Result<T>,
    ) -> postcard::Result<Option<T>> {
        match self.some()? {
            true => value(self).map(Some),
            false => Ok(None),
        }
    }
}

fn utf8(bytes: &[u8]) -> postcard::Result<&str> {
    std::str::from_utf8(bytes).map_err(|_| postcard::Error::DeserializeBadUtf8)
}

/// A record's fields appended as postcard writes them: what [`RecordReader`] reads.
struct RecordWriter<'a>(&'a mut Vec<u8>);

impl RecordWriter<'_> {
    fn varint(&mut self, value: u64) -> &mut Self {
        crate::model::push_varint(value, |byte| self.0.push(byte));
        self
    }

    fn str(&mut self, text: &str) -> &mut Self {
        self.varint(text.len() as u64);
        self.0.extend_from_slice(text.as_bytes());
        self
    }

    fn i64(&mut self, value: i64) -> &mut Self {
        self.varint(crate::model::zigzag(value))
    }

    fn option<T>(&mut self, value: Option<T>, some: impl FnOnce(&mut Self, T)) -> &mut Self {
        match value {
            None => self.0.push(0),
            Some(value) => {
                self.0.push(1);
                some(self, value);
            }
        }
        self
    }
}

/// A row as [`write_run`] takes it: a row of a run, or a borrowed form that writes the
/// same record (a group's rows are written straight from its account results, not copied
/// into one vector first).
pub trait RunRecord<T: Keyed> {
    fn encode(&self, out: &mut Vec<u8>);
}

impl<T: Keyed> RunRecord<T> for &T {
    fn encode(&self, out: &mut Vec<u8>) {
        Keyed::encode(*self, out)
    }
}

impl Keyed for BilledEventRow {
    fn account(&self) -> &str {
        &self.account_id
    }

    /// The account and invoice of the row before.
    type Kept = [Option<crate::model::Shared>; 2];

    fn encode(&self, out: &mut Vec<u8>) {
        RecordWriter(out)
            .str(&self.account_id)
            .str(&self.invoice_id)
            .str(&self.event_id)
            .i64(self.occurred_at)
            .option(self.credits, |w, credits| {
                w.i64(credits.0);
            });
    }

    /// The invoice and account of the previous row are shared when equal (one copy per
    /// account, not two strings allocated per billed event).
    fn decode(bytes: &[u8], shared_bytes: usize, kept: &mut Self::Kept) -> postcard::Result<Self> {
        let [account, invoice] = kept;
        let mut r = RecordReader::new(bytes, shared_bytes);
        Ok(BilledEventRow {
            account_id: r.shared_string(account)?,
            invoice_id: r.shared_string(invoice)?,
            event_id: crate::model::Id::new(r.str()?),
            occurred_at: r.i64()?,
            credits: r.option(RecordReader::milli)?,
        })
    }

    fn chunk_bytes(&self) -> usize {
        ROW_BYTES + self.account_id.len() + self.invoice_id.len() + self.event_id.len()
    }
}

/// An invoice line and its account (the line itself names only its invoice).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountLine {
    pub account_id: crate::model::Shared,
    pub line: InvoiceLineRow,
}

/// An invoice line and its account, borrowed: written as the record of an
/// [`AccountLine`], so a group's lines are written without a shared account string each.
pub struct AccountLineRef<'a> {
    pub account_id: &'a str,
    pub line: &'a InvoiceLineRow,
}

impl RunRecord<AccountLine> for AccountLineRef<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        encode_line(self.account_id, self.line, out);
    }
}

/// An invoice line's record: its account, then the line's fields in order (as postcard
/// writes an [`AccountLine`]).
fn encode_line(account_id: &str, line: &InvoiceLineRow, out: &mut Vec<u8>) {
    RecordWriter(out)
        .str(account_id)
        .str(&line.invoice_id)
        .str(&line.product)
        .str(&line.action)
        .option(line.model.as_deref(), |w, model| {
            w.str(model);
        })
        .i64(line.event_count)
        .i64(line.quantity.0)
        .i64(line.credits.0);
}

/// `text` as the kept string when they are equal (one copy shared), else a new string,
/// kept for the rows after.
fn shared(text: &str, kept: &mut Option<crate::model::Shared>) -> crate::model::Shared {
    match kept {
        Some(k) if &**k == text => k.clone(),
        _ => kept.insert(crate::model::Shared::from(text)).clone(),
    }
}

impl Keyed for AccountLine {
    fn account(&self) -> &str {
        &self.account_id
    }

    /// The account, invoice, product, action and model last read.
    type Kept = [Option<crate::model::Shared>; 5];

    fn encode(&self, out: &mut Vec<u8>) {
        encode_line(&self.account_id, &self.line, out);
    }

    /// The account, invoice and labels of the previous line are shared when equal: an
    /// invoice's lines are adjacent and ordered by product, so most lines allocate only
    /// their action (a 100M-event close merges 19M lines).
    fn decode(bytes: &[u8], shared_bytes: usize, kept: &mut Self::Kept) -> postcard::Result<Self> {
        let [account, invoice, product, action, model] = kept;
        let mut r = RecordReader::new(bytes, shared_bytes);
        Ok(AccountLine {
            account_id: r.shared_string(account)?,
            line: InvoiceLineRow {
                invoice_id: r.shared_string(invoice)?,
                product: r.shared_string(product)?,
                action: r.shared_string(action)?,
                model: r.option(|r| r.shared_string(model))?,
                event_count: r.i64()?,
                quantity: r.milli()?,
                credits: r.milli()?,
            },
        })
    }

    fn chunk_bytes(&self) -> usize {
        let line = &self.line;
        let model = line.model.as_ref().map_or(0, |model| model.len());
        ROW_BYTES
            + self.account_id.len()
            + line.invoice_id.len()
            + line.product.len()
            + line.action.len()
            + model
    }
}

/// Rows of some accounts, in output order (accounts by id bytes).
#[derive(Serialize, Deserialize)]
#[serde(bound = "T: Keyed")]
pub enum Run<T> {
    /// In memory: each account's rows, moved out of its result (not copied into one
    /// vector, all of it fresh memory; measured: benches/README.md, "Profiles and
    /// experiments (2026-12-03, evening: the close's run files)", f434bb5).
    Memory(Vec<ThinVec<T>>),
    /// A run file and its row count.
    File(PathBuf, u64),
}

pub type BilledRun = Run<BilledEventRow>;
pub type LineRun = Run<AccountLine>;

impl<T> Run<T> {
    pub fn rows(&self) -> u64 {
        match self {
            Run::Memory(accounts) => accounts.iter().map(|rows| rows.len() as u64).sum(),
            Run::File(_, rows) => *rows,
        }
    }
}

/// The first bytes of a run file: a file of another format (another tally's) is refused
/// when read back, not misread.
pub const RUN_MAGIC: &[u8; 8] = b"TALLYRN3";

/// Whether the file at `path` starts as a run file of this format does.
pub fn is_run_file(path: &Path) -> std::io::Result<bool> {
    starts_with_magic(&mut File::open(path)?)
}

/// Read a run file's first bytes: whether they are [`RUN_MAGIC`] (a file too short to
/// hold them is not a run file).
fn starts_with_magic(r: &mut impl Read) -> std::io::Result<bool> {
    let mut magic = [0u8; 8];
    match r.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == RUN_MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The most bytes a record may have (checked when written and when read back: a damaged
/// length must not allocate without bound). The largest a row can be is an invoice line
/// of about 20.6 KB: five strings of at most [`crate::load::MAX_STRING_BYTES`] (the
/// invoice id and a prior-period product a few bytes more) and numbers.
const MAX_RECORD_BYTES: usize = 16 * crate::load::MAX_STRING_BYTES;

/// What comes before a record's bytes: how many leading bytes it shares with the record
/// before it and how many follow, each a LEB128 varint as postcard writes a u32.
#[derive(Debug, PartialEq, Eq)]
struct RecordHead {
    shared: u32,
    rest: u32,
}

/// Why a record's head could not be read.
#[derive(Debug)]
enum HeadError {
    /// The file ends before the head's first byte.
    EndBeforeRecord,
    /// The file ends inside the head.
    EndInsideHead,
    /// A varint longer than a u32's five bytes, or past `u32::MAX`.
    BadLength,
    /// Reading the file failed.
    Io(std::io::Error),
}

impl RecordHead {
    /// Read a head, byte by byte as postcard's reader did, taking what postcard takes and
    /// refusing what it refuses; unlike postcard's `from_io`, which reported any failed read
    /// as "unexpected end", a failed read is reported as itself. (Byte by byte, as postcard
    /// read: decoding a whole head in place from the read-ahead's buffer was no faster;
    /// benches/README.md, "Profiles and experiments (2026-12-04, late evening: where the
    /// split's time goes, CRC-32 spill frames)". Each byte is taken from the reader's
    /// buffer, not copied out by a `read` call: "Profiles and experiments (2026-12-06,
    /// afternoon: the close's run files read back)".)
    fn read(r: &mut impl BufRead) -> std::result::Result<RecordHead, HeadError> {
        // The file may end only before a record's first byte.
        let first = Self::byte(r)
            .map_err(HeadError::Io)?
            .ok_or(HeadError::EndBeforeRecord)?;
        let shared = Self::varint(first, r)?;
        let rest = Self::varint(Self::byte_inside(r)?, r)?;
        Ok(RecordHead { shared, rest })
    }

    /// The next byte (`None`: the end of the file). An error of the reader's own kind
    /// "unexpected end" (the read-ahead's for a file that shrank while read: "N bytes where
    /// M were written") is passed on as it is, not taken for the end of the file.
    fn byte(r: &mut impl BufRead) -> std::io::Result<Option<u8>> {
        loop {
            match r.fill_buf() {
                Ok(buffered) => {
                    let Some(&byte) = buffered.first() else {
                        return Ok(None);
                    };
                    r.consume(1);
                    return Ok(Some(byte));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A byte after a head's first: the file ending here cuts the head.
    fn byte_inside(r: &mut impl BufRead) -> std::result::Result<u8, HeadError> {
        Self::byte(r)
            .map_err(HeadError::Io)?
            .ok_or(HeadError::EndInsideHead)
    }

    /// A varint whose first byte is `first`: its bytes are read up to the one that ends it
    /// (or five, a u32's most) and decoded as the spill forms' are
    /// ([`crate::model::whole_u32_varint`]).
    fn varint(first: u8, r: &mut impl BufRead) -> std::result::Result<u32, HeadError> {
        let mut bytes = [first, 0, 0, 0, 0];
        let mut len = 1;
        while bytes[len - 1] & 0x80 != 0 && len < bytes.len() {
            bytes[len] = Self::byte_inside(r)?;
            len += 1;
        }
        crate::model::whole_u32_varint(&bytes[..len]).ok_or(HeadError::BadLength)
    }
}

/// Write `rows` as a run file at `path`: rows of a `T`, or borrowed forms of them
/// ([`RunRecord`]).
pub fn write_run<T: Keyed, R: RunRecord<T>>(
    path: &Path,
    rows: impl IntoIterator<Item = R>,
) -> Result<Run<T>> {
    let out = crate::direct::AppendFiles::create(vec![path.to_path_buf()], 1 << 20)
        .map_err(|(path, e)| TallyError::write(path, e))?;
    let mut w = out.writer(0);
    w.write_all(RUN_MAGIC)
        .map_err(|e| TallyError::write(path, e))?;
    let (mut record, mut previous) = (Vec::new(), Vec::new());
    let mut count = 0u64;
    for row in rows {
        record.clear();
        row.encode(&mut record);
        if record.len() > MAX_RECORD_BYTES {
            return Err(TallyError::Invariant(format!(
                "a row of {} bytes for run file {}, past the {MAX_RECORD_BYTES} a record may have",
                record.len(),
                path.display()
            )));
        }
        let shared = common_prefix(&record, &previous);
        // The head in postcard's encoding of a `RecordHead`, written by hand as the spill
        // rows are (through postcard's serializer it took more of the stage; measured:
        // benches/README.md, "Figures moved from source comments (2026-12-05)").
        let mut head = crate::model::SpillBytes::new();
        head.unsigned(shared as u64)
            .unsigned((record.len() - shared) as u64);
        w.write_all(head.as_bytes())
            .and_then(|_| w.write_all(&record[shared..]))
            .map_err(|e| TallyError::write(path, e))?;
        std::mem::swap(&mut record, &mut previous);
        count += 1;
    }
    // Not synced: a run file in the spill folder lives only as long as the run; the run
    // files a shard keeps are synced with its folder (`write::publish`).
    drop(w);
    out.finish()
        .map_err(|(path, e)| TallyError::write(path, e))?;
    Ok(Run::File(path.to_path_buf(), count))
}

/// How many leading bytes `a` and `b` share: compared 8 at a time, the first differing
/// byte found from the lowest set bit of the two words' difference (the bytes are read
/// as little-endian words, so the first byte is the lowest).
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let mut at = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let word = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        let difference = word(x) ^ word(y);
        if difference != 0 {
            return at + (difference.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at + (a[at..].iter())
        .zip(&b[at..])
        .take_while(|(x, y)| x == y)
        .count()
}

/// How much of a run file is read at a time (twice this per file while a merge reads it:
/// the chunk being decoded and the next, read ahead; about a hundred files at 100M events).
const READ_CHUNK_BYTES: usize = 256 << 10;

/// Reads one run file record by record.
struct RunReader<T: Keyed> {
    path: PathBuf,
    reader: crate::direct::AheadReader,
    left: u64,
    /// The rows the file was written with.
    rows: u64,
    /// The record read last, whole (the next one starts with a prefix of it).
    buf: Vec<u8>,
    /// What decoding keeps for the next record.
    kept: T::Kept,
    /// The file was found to end after its last record.
    ended: bool,
}

impl<T: Keyed> RunReader<T> {
    fn open(path: &Path, rows: u64, ahead: &crate::direct::ReadAhead) -> Result<RunReader<T>> {
        let reader = ahead
            .open(path, READ_CHUNK_BYTES)
            .map_err(|e| TallyError::io(path, e))?;
        let mut reader = RunReader {
            path: path.to_path_buf(),
            reader,
            left: rows,
            rows,
            buf: Vec::new(),
            kept: T::Kept::default(),
            ended: false,
        };
        let ours = starts_with_magic(&mut reader.reader).map_err(|e| reader.broken(&e))?;
        if !ours {
            return Err(reader.broken(&format!(
                "it does not start with {:?} (written by another tally?)",
                String::from_utf8_lossy(RUN_MAGIC)
            )));
        }
        Ok(reader)
    }

    fn broken(&self, e: &dyn std::fmt::Display) -> TallyError {
        TallyError::Invariant(format!(
            "run file {} cannot be read back: {e}",
            self.path.display()
        ))
    }

    fn next_row(&mut self) -> Result<Option<T>> {
        if self.left == 0 {
            // A byte past the last record counted: the file holds more records than its
            // count says (a shard's run file and count forged to agree with their
            // checksums), which would be left out of the output unseen.
            if !self.ended {
                let past_end = match self.reader.fill_buf() {
                    Ok(bytes) => !bytes.is_empty(),
                    Err(e) => return Err(self.broken(&e)),
                };
                if past_end {
                    return Err(self.broken(&format!(
                        "it holds more than the {} records written",
                        self.rows
                    )));
                }
                self.ended = true;
            }
            return Ok(None);
        }
        self.left -= 1;
        let head = RecordHead::read(&mut self.reader).map_err(|e| match e {
            HeadError::EndBeforeRecord => self.broken(&format!(
                "the file ends after {} of the {} records written",
                self.rows - (self.left + 1),
                self.rows
            )),
            HeadError::EndInsideHead => self.broken(&"the file ends inside a record's head"),
            HeadError::BadLength => self.broken(&"a record's head holds a damaged length"),
            HeadError::Io(e) => self.broken(&e),
        })?;
        let (shared, rest) = (head.shared as usize, head.rest as usize);
        if rest > MAX_RECORD_BYTES {
            return Err(self.broken(&format!("a record's length of {rest} bytes")));
        }
        if shared > self.buf.len() {
            return Err(self.broken(&format!(
                "a record shares {shared} bytes with a previous one of {}",
                self.buf.len()
            )));
        }
        if shared + rest > MAX_RECORD_BYTES {
            return Err(self.broken(&format!(
                "a record of {} bytes, past the {MAX_RECORD_BYTES} a record may have",
                shared + rest
            )));
        }
        self.buf.resize(shared + rest, 0);
        let (reader, tail) = (&mut self.reader, &mut self.buf[shared..]);
        if let Err(e) = reader.read_exact(tail) {
            return Err(self.broken(&e));
        }
        let row = T::decode(&self.buf, shared, &mut self.kept).map_err(|e| match e {
            // The one custom error of a record (`RecordReader::milli`).
            postcard::Error::SerdeDeCustom => {
                self.broken(&"a record holds an amount past DECIMAL(18,3)")
            }
            e => self.broken(&e),
        })?;
        Ok(Some(row))
    }
}

enum Source<'a, T: Keyed> {
    Memory(std::iter::Flatten<std::slice::Iter<'a, ThinVec<T>>>),
    File(RunReader<T>),
}

impl<T: Keyed> Source<'_, T> {
    fn next_row(&mut self) -> Result<Option<T>> {
        match self {
            Source::Memory(rows) => Ok(rows.next().cloned()),
            Source::File(reader) => reader.next_row(),
        }
    }

    /// `account`, read from this source after `last`, is not after it in id order.
    fn out_of_order(&self, last: &str, account: &str) -> TallyError {
        let why = match last == account {
            true => format!(
                "its account {account:?} is in another run too, or apart in this one: runs \
                 hold accounts in id order, each account in one run"
            ),
            false => format!(
                "its account {account:?} comes after {last:?}: runs hold accounts in id \
                 order, each account in one run"
            ),
        };
        match self {
            Source::Memory(_) => TallyError::Invariant(format!("a group's run: {why}")),
            Source::File(reader) => reader.broken(&why),
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

/// How large a chunk of [`for_each_chunk`] grows.
#[derive(Copy, Clone, Debug)]
pub struct ChunkLimit {
    /// A chunk closes at the end of the account that brings it to this many rows (an
    /// account is not split for it, so chunks, and the Parquet pages cut from them, are
    /// as they always were where the next limit is not reached).
    pub rows: usize,
    /// A chunk closes at the row that brings it to this many bytes ([`Keyed::chunk_bytes`]),
    /// within an account if need be: an account of millions of rows, or rows with ids of
    /// kilobytes, take no more memory than this a chunk.
    pub bytes: usize,
}

/// Stream the rows of all runs in output order, a chunk at a time (`limit`).
pub fn for_each_chunk<T: Keyed>(
    runs: &[Run<T>],
    limit: ChunkLimit,
    mut each: impl FnMut(&[T]) -> Result<()>,
) -> Result<u64> {
    // Declared before the sources: dropped after them (its thread ends with their readers).
    // Started only for run files: runs all in memory (a run in one group) read nothing.
    let ahead = match runs.iter().any(|run| matches!(run, Run::File(..))) {
        true => Some(
            crate::direct::ReadAhead::start()
                .map_err(|e| TallyError::Invariant(format!("run files cannot be read: {e}")))?,
        ),
        false => None,
    };
    let mut sources = Vec::with_capacity(runs.len());
    for run in runs {
        sources.push(match (run, &ahead) {
            (Run::Memory(accounts), _) => Source::Memory(accounts.iter().flatten()),
            (Run::File(path, rows), Some(ahead)) => {
                Source::File(RunReader::open(path, *rows, ahead)?)
            }
            (Run::File(..), None) => unreachable!("a run file starts the read-ahead"),
        });
    }
    // One run (a whole run): its rows are already in order.
    let mut heap = BinaryHeap::with_capacity(sources.len());
    for (i, source) in sources.iter_mut().enumerate() {
        if let Some(row) = source.next_row()? {
            heap.push(Head { row, source: i });
        }
    }
    assert!(
        limit.rows > 0 && limit.bytes > 0,
        "a chunk holds a row at least"
    );
    let mut batch = Vec::with_capacity(limit.rows);
    let mut batch_bytes = 0usize;
    let mut written = 0u64;
    let mut last_account: Option<String> = None;
    let mut flush = |batch: &mut Vec<T>, batch_bytes: &mut usize, written: &mut u64| {
        *written += batch.len() as u64;
        each(batch)?;
        batch.clear();
        *batch_bytes = 0;
        Result::Ok(())
    };
    while let Some(Head { row, source }) = heap.pop() {
        let account = row.account().to_string();
        // Each account once, in id order: a run out of order, or two runs holding one
        // account (a shard's run file forged with its checksum), would publish rows out of
        // the contract's order. One comparison an account, not a row.
        if let Some(last) = last_account.as_deref() {
            if last.as_bytes() >= account.as_bytes() {
                return Err(sources[source].out_of_order(last, &account));
            }
        }
        // The rest of this account comes from the same source: take it in one go.
        let mut next = Some(row);
        while let Some(row) = next.take() {
            batch_bytes += row.chunk_bytes();
            batch.push(row);
            if batch_bytes >= limit.bytes {
                flush(&mut batch, &mut batch_bytes, &mut written)?;
            }
            match sources[source].next_row()? {
                Some(row) if row.account() == account => next = Some(row),
                Some(row) => heap.push(Head { row, source }),
                None => {}
            }
        }
        last_account = Some(account);
        if batch.len() >= limit.rows {
            flush(&mut batch, &mut batch_bytes, &mut written)?;
        }
    }
    if !batch.is_empty() || written == 0 {
        flush(&mut batch, &mut batch_bytes, &mut written)?;
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
            credits: Some(Milli(1000)),
        }
    }

    /// Chunks of `rows` rows (to the end of an account), whatever their bytes.
    fn by_rows(rows: usize) -> ChunkLimit {
        ChunkLimit {
            rows,
            bytes: usize::MAX,
        }
    }

    /// A chunk ends at the row that brings it to the byte limit, within an account if need
    /// be, and every row comes once, in order; the row limit still waits for the end of
    /// an account.
    #[test]
    fn chunks_end_at_the_byte_limit_even_within_an_account() {
        let dir = tempfile::tempdir().unwrap();
        let long =
            |account: &str, event: &str| row(account, &format!("{event}{}", "x".repeat(999)));
        let a: Vec<_> = (1..=5).map(|i| long("a", &i.to_string())).collect();
        let b = vec![long("b", "6"), long("b", "7")];
        let one = a[0].chunk_bytes();
        assert!(one > 1000, "the row's bytes count its id");
        let runs = vec![
            write_run(&dir.path().join("a.bin"), &a).unwrap(),
            Run::Memory(vec![b.into()]),
        ];
        let chunks_of = |limit| {
            let mut chunks: Vec<Vec<String>> = Vec::new();
            let rows = for_each_chunk(&runs, limit, |rows: &[BilledEventRow]| {
                chunks.push(rows.iter().map(|r| r.event_id[..1].to_string()).collect());
                Ok(())
            })
            .unwrap();
            assert_eq!(rows, 7);
            chunks
        };
        // Two rows' bytes: account a is cut after its 2nd and 4th rows.
        let limit = ChunkLimit {
            rows: 100,
            bytes: 2 * one,
        };
        assert_eq!(
            chunks_of(limit),
            [vec!["1", "2"], vec!["3", "4"], vec!["5", "6"], vec!["7"]]
        );
        // One byte over two rows: each cut one row later.
        let limit = ChunkLimit {
            rows: 100,
            bytes: 2 * one + 1,
        };
        assert_eq!(
            chunks_of(limit),
            [vec!["1", "2", "3"], vec!["4", "5", "6"], vec!["7"]]
        );
        // Rows alone: at the end of the account that reaches them.
        assert_eq!(
            chunks_of(by_rows(3)),
            [vec!["1", "2", "3", "4", "5"], vec!["6", "7"]]
        );
    }

    /// The chunks follow the merged rows alone: the same accounts in one run in memory, in
    /// one run file or spread over several runs give the same chunks, under a byte limit
    /// that cuts accounts too (a split, sharded or one-group close writes the same bytes).
    #[test]
    fn chunks_do_not_depend_on_how_the_rows_are_split_into_runs() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<BilledEventRow> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .flat_map(|account| {
                (0..7).map(move |i| row(account, &format!("{account}{i}{}", "x".repeat(i * 90))))
            })
            .collect();
        let of = |account: &str| -> Vec<BilledEventRow> {
            rows.iter()
                .filter(|r| &*r.account_id == account)
                .cloned()
                .collect()
        };
        let file = |name: &str, accounts: &[&str]| {
            let rows: Vec<_> = accounts.iter().flat_map(|a| of(a)).collect();
            write_run(&dir.path().join(name), &rows).unwrap()
        };
        let memory =
            |accounts: &[&str]| Run::Memory(accounts.iter().map(|a| of(a).into()).collect());
        let limit = ChunkLimit {
            rows: 10,
            bytes: 1500,
        };
        let chunks_of = |runs: &[BilledRun]| {
            let mut chunks: Vec<Vec<String>> = Vec::new();
            for_each_chunk(runs, limit, |chunk: &[BilledEventRow]| {
                chunks.push(chunk.iter().map(|r| r.event_id.to_string()).collect());
                Ok(())
            })
            .unwrap();
            chunks
        };
        let whole = chunks_of(&[memory(&["a", "b", "c", "d", "e", "f"])]);
        assert!(whole.len() > 4, "the limit cuts: {whole:?}");
        let cut_within_an_account = whole
            .windows(2)
            .any(|pair| pair[0].last().unwrap()[..1] == pair[1][0][..1]);
        assert!(cut_within_an_account, "{whole:?}");
        assert_eq!(
            chunks_of(&[file("all.bin", &["a", "b", "c", "d", "e", "f"])]),
            whole
        );
        let spread = [
            file("1.bin", &["a", "d"]),
            memory(&["b", "f"]),
            file("2.bin", &["c", "e"]),
        ];
        assert_eq!(chunks_of(&spread), whole);
    }

    #[test]
    fn runs_merge_by_account_and_chunks_end_at_account_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        // An event of the period that was not billed round-trips its null credits.
        let unbilled = BilledEventRow {
            credits: None,
            ..row("c", "5")
        };
        let a = vec![row("a", "1"), row("a", "2"), unbilled];
        let b = vec![row("b", "3"), row("b", "4"), row("d", "6")];
        let runs = vec![
            write_run(&dir.path().join("a.bin"), &a).unwrap(),
            Run::Memory(vec![b.into()]),
        ];
        let mut chunks: Vec<Vec<String>> = Vec::new();
        let rows = for_each_chunk(&runs, by_rows(2), |rows| {
            chunks.push(rows.iter().map(|r| r.event_id.to_string()).collect());
            Ok(())
        })
        .unwrap();
        assert_eq!(rows, 6);
        // Accounts a, b, c, d in order; a chunk closes once it holds ≥ 2 rows, never
        // splitting an account.
        assert_eq!(chunks, vec![vec!["1", "2"], vec!["3", "4"], vec!["5", "6"]]);
    }

    /// Rows out of account order, an account split within a run or held by two runs are
    /// refused, naming the run file (a shard's run file forged with its checksum), not
    /// published out of the contract's order: "close tables by (account_id, period_start)"
    /// (section 7; a run's rows of an account are in the order the engine wrote them).
    #[test]
    fn runs_out_of_account_order_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let merged = |runs: &[Run<BilledEventRow>]| {
            for_each_chunk(runs, by_rows(2), |_| Ok(()))
                .map_err(|e| e.to_string())
                .map(|_| ())
        };
        let path = dir.path().join("run.bin");
        let in_file = |rows: &[BilledEventRow]| vec![write_run(&path, rows).unwrap()];
        let cannot = |why: &str| {
            format!(
                "invariant broken: run file {} cannot be read back: its account {why}: runs \
                 hold accounts in id order, each account in one run",
                path.display()
            )
        };
        assert_eq!(merged(&in_file(&[row("a", "1"), row("b", "2")])), Ok(()));
        assert_eq!(
            merged(&in_file(&[row("b", "1"), row("a", "2")])),
            Err(cannot("\"a\" comes after \"b\""))
        );
        assert_eq!(
            merged(&in_file(&[row("a", "1"), row("b", "2"), row("a", "3")])),
            Err(cannot("\"a\" comes after \"b\""))
        );
        // One account in two runs: the second run's is refused (ties go to the lower run).
        let mut runs = vec![Run::Memory(vec![vec![row("a", "1")].into()])];
        runs.extend(in_file(&[row("a", "2")]));
        let again = "\"a\" is in another run too, or apart in this one";
        assert_eq!(merged(&runs), Err(cannot(again)));
        assert_eq!(
            merged(&in_file(&[
                row("a", "1"),
                row("b", "2"),
                row("c", "3"),
                row("a", "4")
            ])),
            Err(cannot("\"a\" comes after \"c\""))
        );
        assert_eq!(
            merged(&[Run::Memory(vec![
                vec![row("b", "1")].into(),
                vec![row("a", "2")].into(),
            ])]),
            Err(
                "invariant broken: a group's run: its account \"a\" comes after \"b\": runs \
                 hold accounts in id order, each account in one run"
                    .to_string()
            )
        );
    }

    /// `rows` written to a run file and read back.
    fn through_a_run_file<T: Keyed>(rows: &[T]) -> Vec<T> {
        let dir = tempfile::tempdir().unwrap();
        let runs = vec![write_run(&dir.path().join("run.bin"), rows).unwrap()];
        let mut back = Vec::new();
        for_each_chunk(&runs, by_rows(10), |chunk: &[T]| {
            back.extend_from_slice(chunk);
            Ok(())
        })
        .unwrap();
        back
    }

    /// `rows` written to a run file and read back record by record (not through the
    /// merge, which takes accounts in order only).
    fn record_by_record<T: Keyed>(rows: &[T]) -> Vec<T> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.bin");
        write_run(&path, rows).unwrap();
        let ahead = crate::direct::ReadAhead::start().unwrap();
        let mut reader = RunReader::<T>::open(&path, rows.len() as u64, &ahead).unwrap();
        let mut back = Vec::new();
        while let Some(row) = reader.next_row().unwrap() {
            back.push(row);
        }
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

    /// A string is taken from the record before only when the bytes shared with it hold
    /// the whole string: accounts and invoices of one length that differ in their last
    /// byte (shared up to it) come back as themselves; a string wholly shared comes back
    /// as the same string.
    #[test]
    fn a_string_shared_but_for_its_last_byte_is_read_as_itself() {
        let rows = vec![
            row("acct-1", "evt-1"),
            row("acct-2", "evt-2"),
            row("acct-2", "evt-3"),
        ];
        let back = through_a_run_file(&rows);
        assert_eq!(back, rows);
        assert!(!shared(&back[0].account_id, &back[1].account_id));
        assert!(shared(&back[1].account_id, &back[2].account_id));
        assert!(shared(&back[1].invoice_id, &back[2].invoice_id));
        let lines = vec![
            line("a", "video", "generate", None),
            line("a", "videp", "generate", None),
            line("a", "videp", "generatf", None),
        ];
        let back = through_a_run_file(&lines);
        assert_eq!(back, lines);
        assert!(!shared(&back[0].line.product, &back[1].line.product));
        assert!(shared(&back[1].line.product, &back[2].line.product));
        assert!(!shared(&back[1].line.action, &back[2].line.action));
    }

    /// An invoice line's model is kept only when it has one: a line without a model
    /// between two lines with one, everything else equal, leaves the kept model as it
    /// was, and the line after takes it only when its bytes are the same.
    #[test]
    fn a_kept_model_survives_a_line_without_one() {
        let lines = vec![
            line("a", "video", "generate", Some("m1")),
            line("a", "video", "generate", None),
            line("a", "video", "generate", Some("m1")),
            line("a", "video", "generate", None),
            line("a", "video", "generate", Some("m2")),
            line("a", "video", "generate", Some("m2")),
        ];
        let back = through_a_run_file(&lines);
        assert_eq!(back, lines);
        let model = |i: usize| back[i].line.model.as_ref().unwrap();
        assert!(shared(model(0), model(2)));
        assert!(!shared(model(2), model(4)));
        assert!(shared(model(4), model(5)));
    }

    /// Bytes a record could hold: any bytes, or a record postcard wrote with one byte
    /// changed or its end cut off.
    fn record_bytes<T: Keyed + std::fmt::Debug + 'static>(
        row: impl proptest::strategy::Strategy<Value = T> + 'static,
    ) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::strategy::Strategy;
        proptest::prop_oneof![
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..48),
            (
                row,
                proptest::prelude::any::<(usize, bool)>(),
                // Bytes that change a tag, a varint's end or a UTF-8 sequence.
                proptest::prop_oneof![
                    proptest::strategy::Just(2u8),
                    proptest::strategy::Just(0x80),
                    proptest::strategy::Just(0xff),
                    proptest::prelude::any::<u8>(),
                ],
            )
                .prop_map(|(row, (at, cut), byte)| {
                    let mut bytes = postcard::to_allocvec(&row).unwrap();
                    let at = at % (bytes.len() + 1);
                    if cut {
                        bytes.truncate(at);
                    } else if at < bytes.len() {
                        bytes[at] = byte;
                    }
                    bytes
                }),
        ]
    }

    /// Integers at the edges of a varint's bytes and of i64, and any.
    fn int() -> impl proptest::strategy::Strategy<Value = i64> {
        proptest::prop_oneof![
            proptest::strategy::Just(i64::MIN),
            proptest::strategy::Just(i64::MAX),
            -200i64..200,
            proptest::prelude::any::<i64>(),
        ]
    }

    /// Amounts at the edges of what an output holds (as every amount tally holds), and any
    /// between.
    fn amount() -> impl proptest::strategy::Strategy<Value = Milli> {
        use crate::amount::OUTPUT_LIMIT_MILLIS as LIMIT;
        use proptest::strategy::Strategy;
        proptest::prop_oneof![
            proptest::strategy::Just(LIMIT),
            proptest::strategy::Just(-LIMIT),
            -200i64..200,
            -LIMIT..=LIMIT,
        ]
        .prop_map(Milli)
    }

    fn billed_row() -> impl proptest::strategy::Strategy<Value = BilledEventRow> {
        use proptest::strategy::Strategy;
        (
            text(),
            text(),
            text(),
            int(),
            proptest::option::of(amount()),
        )
            .prop_map(
                |(account, invoice, event, occurred_at, credits)| BilledEventRow {
                    account_id: account.into(),
                    invoice_id: invoice.into(),
                    event_id: event.into(),
                    occurred_at,
                    credits,
                },
            )
    }

    fn any_line() -> impl proptest::strategy::Strategy<Value = AccountLine> {
        use proptest::strategy::Strategy;
        (
            (text(), text(), text(), text()),
            proptest::option::of(text()),
            (int(), amount(), amount()),
        )
            .prop_map(
                |((account, invoice, product, action), model, (count, quantity, credits))| {
                    AccountLine {
                        account_id: account.into(),
                        line: InvoiceLineRow {
                            invoice_id: invoice.into(),
                            product: product.into(),
                            action: action.into(),
                            model: model.map(Into::into),
                            event_count: count,
                            quantity,
                            credits,
                        },
                    }
                },
            )
    }

    /// An amount in a record is read up to what an output holds, as `Milli`'s serde decoder
    /// reads it; one past (a run file forged with its checksum) is refused by both.
    #[test]
    fn a_records_amount_is_read_up_to_the_output_limit_and_refused_one_past() {
        use crate::amount::OUTPUT_LIMIT_MILLIS as LIMIT;
        let billed = |credits: i64| BilledEventRow {
            account_id: "a".into(),
            invoice_id: "INV-a".into(),
            event_id: "e".into(),
            occurred_at: 0,
            credits: Some(Milli(credits)),
        };
        for credits in [LIMIT, -LIMIT, LIMIT + 1, -LIMIT - 1, i64::MAX, i64::MIN] {
            let mut bytes = Vec::new();
            billed(credits).encode(&mut bytes);
            let ours = BilledEventRow::decode(&bytes, 0, &mut Default::default()).ok();
            let theirs = postcard::from_bytes::<BilledEventRow>(&bytes).ok();
            assert_eq!(ours, theirs, "{credits}");
            let fits = credits.checked_abs().is_some_and(|a| a <= LIMIT);
            assert_eq!(ours.is_some(), fits, "{credits}");
        }
    }

    /// Strings that repeat, share prefixes, hold multi-byte characters or need a
    /// two-byte length.
    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::prop_oneof!["[aé]{0,3}", "a{126,130}"]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        /// The hand encoder writes the bytes postcard writes for any row.
        #[test]
        fn records_encode_as_postcard_encodes_them(
            billed in billed_row(),
            line in any_line(),
        ) {
            let mut ours = Vec::new();
            billed.encode(&mut ours);
            proptest::prop_assert_eq!(ours, postcard::to_allocvec(&billed).unwrap());
            let mut ours = Vec::new();
            line.encode(&mut ours);
            proptest::prop_assert_eq!(ours, postcard::to_allocvec(&line).unwrap());
        }

        /// The hand decoder reads a record as postcard's serde decoder does: the same row
        /// where postcard reads one, a refusal where postcard refuses (a bad option tag,
        /// bytes that are not UTF-8, a string or varint cut short, a length past the end).
        #[test]
        fn records_decode_as_postcard_decodes_them(
            billed in record_bytes(billed_row()),
            line in record_bytes(any_line()),
        ) {
            let ours = BilledEventRow::decode(&billed, 0, &mut Default::default()).ok();
            proptest::prop_assert_eq!(ours, postcard::from_bytes::<BilledEventRow>(&billed).ok());
            let ours = AccountLine::decode(&line, 0, &mut Default::default()).ok();
            proptest::prop_assert_eq!(ours, postcard::from_bytes::<AccountLine>(&line).ok());
        }
    }

    proptest::proptest! {
        /// The word-wise prefix is the byte-wise one, for any two records (short, equal,
        /// one a prefix of the other, differing at any byte).
        #[test]
        fn common_prefix_counts_what_a_byte_by_byte_comparison_counts(
            a in proptest::collection::vec(0u8..3, 0..40),
            b in proptest::collection::vec(0u8..3, 0..40),
            cut in 0usize..40,
        ) {
            let b = [&a[..cut.min(a.len())], &b[..]].concat();
            for (x, y) in [(&a, &b), (&b, &a), (&a, &a)] {
                let bytewise = x.iter().zip(y.iter()).take_while(|(p, q)| p == q).count();
                proptest::prop_assert_eq!(common_prefix(x, y), bytewise);
            }
        }
    }

    proptest::proptest! {
        /// Any rows come back as written: the hand reader takes the bytes the hand writer
        /// writes, field for field (each held to postcard's above), and a string is taken
        /// from the record before only when it is the same. Read record by record, in any
        /// order (a forged file may hold any), and through the merge in account order, the
        /// only order it takes.
        #[test]
        fn any_rows_read_back_as_written(
            mut billed in proptest::collection::vec(billed_row(), 0..30),
            mut lines in proptest::collection::vec(any_line(), 0..30),
        ) {
            proptest::prop_assert_eq!(record_by_record(&billed), billed.clone());
            proptest::prop_assert_eq!(record_by_record(&lines), lines.clone());
            billed.sort_by(|x, y| x.account().as_bytes().cmp(y.account().as_bytes()));
            lines.sort_by(|x, y| x.account().as_bytes().cmp(y.account().as_bytes()));
            proptest::prop_assert_eq!(through_a_run_file(&billed), billed);
            proptest::prop_assert_eq!(through_a_run_file(&lines), lines);
        }
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
                credits: Milli(crate::amount::OUTPUT_LIMIT_MILLIS),
            },
        }
    }

    /// Invoice lines come back equal, sharing what equals the previous line's (the hand
    /// decoder must read the fields in the order `AccountLine` writes them).
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
            by_rows(4),
            |rows: &[BilledEventRow]| {
                assert!(rows.is_empty());
                calls += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!((rows, calls), (0, 1));
    }

    /// A record is written as what differs from the record before it: consecutive billed
    /// events of one invoice share their account, their invoice and the start of their
    /// event ids.
    #[test]
    fn a_record_writes_only_what_differs_from_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.bin");
        let rows = [row("acct-1", "evt-0001"), row("acct-1", "evt-0002")];
        let _: BilledRun = write_run(&path, &rows).unwrap();
        let (first, second) = (
            postcard::to_allocvec(&rows[0]).unwrap(),
            postcard::to_allocvec(&rows[1]).unwrap(),
        );
        // Each string is its length byte and bytes: "acct-1", "INV-acct-1", "evt-000".
        let shared = (1 + 6) + (1 + 10) + (1 + 7);
        assert_eq!(first[..shared], second[..shared]);
        assert_ne!(first[shared], second[shared]);
        let mut expected = RUN_MAGIC.to_vec();
        expected.extend([0, first.len() as u8]);
        expected.extend(&first);
        expected.extend([shared as u8, (second.len() - shared) as u8]);
        expected.extend(&second[shared..]);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(through_a_run_file(&rows), rows);
    }

    /// A record of `MAX_RECORD_BYTES` is written and read back; one byte more is refused
    /// when written (an invariant: no input row can be that large), naming the file.
    #[test]
    fn a_record_of_the_limit_is_written_and_read_back_and_one_byte_more_is_refused() {
        // A billed event whose event id makes its record exactly `bytes` long.
        let sized = |bytes: usize| {
            (bytes.saturating_sub(64)..=bytes)
                .map(|n| row("a", &"e".repeat(n)))
                .find(|r| {
                    let mut record = Vec::new();
                    Keyed::encode(r, &mut record);
                    record.len() == bytes
                })
                .expect("an event id length gives the record's length")
        };
        let at_limit = [sized(MAX_RECORD_BYTES), row("a", "2")];
        assert_eq!(through_a_run_file(&at_limit), at_limit);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.bin");
        let too_long = sized(MAX_RECORD_BYTES + 1);
        let refused = match write_run::<BilledEventRow, _>(&path, [&too_long]) {
            Ok(_) => panic!("a record past the limit was written"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            refused,
            format!(
                "invariant broken: a row of 65537 bytes for run file {}, past the \
                 65536 a record may have",
                path.display()
            )
        );
    }

    /// A run file that is not what this tally writes (another format, cut short, a
    /// damaged length) stops the run with the file named, without reading past what it
    /// holds or allocating what a damaged length asks.
    #[test]
    fn a_damaged_run_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.bin");
        let rows = [row("a", "1"), row("a", "2")];
        let _: BilledRun = write_run(&path, &rows).unwrap();
        let good = std::fs::read(&path).unwrap();
        let read = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            let runs = [BilledRun::File(path.clone(), 2)];
            for_each_chunk(&runs, by_rows(10), |_: &[BilledEventRow]| Ok(()))
                .unwrap_err()
                .to_string()
        };
        let named = format!("run file {} cannot be read back: ", path.display());
        let mut other = good.clone();
        other[7] = b'1';
        assert!(read(&other).contains(&format!(
            "{named}it does not start with \"TALLYRN3\" (written by another tally?)"
        )));
        assert!(read(&good[..good.len() - 1]).contains(&format!("{named}failed to fill")));
        // Cut before the second record, and inside its head (its `shared` byte only).
        let first_end = 8 + 2 + usize::from(good[9]);
        assert!(read(&good[..first_end]).contains(&format!(
            "{named}the file ends after 1 of the 2 records written"
        )));
        assert!(read(&good[..first_end + 1])
            .contains(&format!("{named}the file ends inside a record's head")));
        // A sixth byte of a varint, and a fifth past a u32.
        let mut six = good[..8].to_vec();
        six.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x00]);
        assert!(read(&six).contains(&format!("{named}a record's head holds a damaged length")));
        let mut wide = good[..8].to_vec();
        wide.extend([0x80, 0x80, 0x80, 0x80, 0x10]);
        assert!(read(&wide).contains(&format!("{named}a record's head holds a damaged length")));
        let mut long = good[..8].to_vec();
        long.extend([0, 0xff, 0xff, 0x7f]);
        assert!(read(&long).contains(&format!("{named}a record's length of 2097151 bytes")));
        // A second record whose length passes the limit (the first is under 128 bytes).
        let mut past = good[..first_end].to_vec();
        past.extend([good[9], 0x80, 0x80, 0x04]);
        let whole = usize::from(good[9]) + 65536;
        assert!(read(&past).contains(&format!(
            "{named}a record of {whole} bytes, past the 65536 a record may have"
        )));
        let mut shares = good.clone();
        shares[8] = 5;
        assert!(read(&shares).contains(&format!(
            "{named}a record shares 5 bytes with a previous one of 0"
        )));
    }

    /// A record head is read as postcard reads two u32 varints (every length at the edges
    /// of one to five bytes), and a failed read is reported as itself, not as an end.
    #[test]
    fn record_heads_read_as_postcard_reads_them_and_name_a_failed_read() {
        for value in [
            0u32,
            127,
            128,
            16_383,
            16_384,
            (1 << 28) - 1,
            1 << 28,
            u32::MAX,
        ] {
            let bytes = postcard::to_allocvec(&(value, 7u32)).unwrap();
            let head = RecordHead::read(&mut &bytes[..]).unwrap();
            assert_eq!(
                head,
                RecordHead {
                    shared: value,
                    rest: 7
                }
            );
        }
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("the disk went away"))
            }
        }
        match RecordHead::read(&mut std::io::BufReader::new(Failing)) {
            Err(HeadError::Io(e)) => assert_eq!(e.to_string(), "the disk went away"),
            other => panic!("{other:?}"),
        }
        // The read-ahead reports a file that shrank as an "unexpected end" error of its
        // own: passed on as it is, not taken for the file's end.
        struct Shrunk;
        impl Read for Shrunk {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "10 bytes where 20 were written",
                ))
            }
        }
        match RecordHead::read(&mut std::io::BufReader::new(Shrunk)) {
            Err(HeadError::Io(e)) => assert_eq!(e.to_string(), "10 bytes where 20 were written"),
            other => panic!("{other:?}"),
        }
    }

    /// Bytes postcard refuses as a head, or finds too short, are refused or found short
    /// alike (a varint past five bytes, a fifth byte past a u32, every cut).
    #[test]
    fn record_heads_refuse_what_postcard_refuses() {
        let cases: [&[u8]; 9] = [
            &[0x80, 0x80, 0x80, 0x80, 0x10, 0],
            &[0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0],
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0],
            &[0, 0x80, 0x80, 0x80, 0x80, 0x1F],
            &[0, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F],
            &[0x80],
            &[0x05, 0x80, 0x80],
            &[],
            &[0x7F],
        ];
        for bytes in cases {
            let ours = RecordHead::read(&mut &bytes[..]);
            let theirs = postcard::take_from_bytes::<(u32, u32)>(bytes);
            match (&ours, &theirs) {
                (Ok(head), Ok(((shared, rest), _))) => {
                    assert_eq!((head.shared, head.rest), (*shared, *rest), "{bytes:x?}")
                }
                (Err(HeadError::BadLength), Err(postcard::Error::DeserializeBadVarint))
                | (
                    Err(HeadError::EndBeforeRecord | HeadError::EndInsideHead),
                    Err(postcard::Error::DeserializeUnexpectedEnd),
                ) => {}
                _ => panic!("{bytes:x?}: ours {ours:?}, postcard's {theirs:?}"),
            }
        }
    }

    /// The borrowed form a group writes its invoice lines in is byte for byte the owned
    /// form's (what a shard or a whole run writes, and what the reader expects).
    #[test]
    fn a_borrowed_invoice_line_writes_the_owned_ones_record() {
        for model in [Some("m1"), None] {
            let owned = line("acct-1", "video", "generate", model);
            let borrowed = AccountLineRef {
                account_id: &owned.account_id,
                line: &owned.line,
            };
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            RunRecord::encode(&borrowed, &mut ours);
            RunRecord::encode(&&owned, &mut theirs);
            assert_eq!(ours, postcard::to_allocvec(&owned).unwrap());
            assert_eq!(theirs, ours);
        }
    }

    /// Rows at the string limit: records of thousands of bytes (lengths and shared
    /// prefixes of two and three varint bytes) come back whole.
    #[test]
    fn rows_at_the_string_limit_read_back_whole() {
        let limit = crate::load::MAX_STRING_BYTES;
        let long = |c: char, n: usize| c.to_string().repeat(n);
        let billed = vec![
            row(&long('a', limit), &long('e', limit)),
            row(&long('a', limit), &format!("{}x", long('e', limit - 1))),
            row("b", &long('e', 127)),
            row("b", &long('e', 128)),
        ];
        assert_eq!(through_a_run_file(&billed), billed);
        let prior = format!("{}{}", crate::engine::PRIOR_PERIOD_PREFIX, long('p', limit));
        let mut widest = line(&long('a', limit), &prior, &long('c', limit), None);
        widest.line.model = Some(long('m', limit).into());
        let lines = vec![widest.clone(), widest];
        assert!(postcard::to_allocvec(&lines[0]).unwrap().len() > 5 * limit);
        assert_eq!(through_a_run_file(&lines), lines);
    }
}
