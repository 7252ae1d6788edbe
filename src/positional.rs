//! An input Parquet file read by position (`pread`), or read whole when small, for the
//! Parquet reader.
//!
//! The reader asks its file for the footer, and for each page of a row group's columns,
//! one range at a time (a page's header through `get_read`, its data through
//! `get_bytes`). arrow-rs's own `ChunkReader` for `File` answers each ask with four system
//! calls (a duplicate handle, a seek, the read, a close) and a fifth for the file's length.
//! For an ordinary file of large row groups that is little; for a month of small files (a
//! streaming sink flushing every few rows) it was most of the load's kernel time. A
//! positional read is one call, shares no file position with any other reader of the
//! handle, and needs no handle of its own: the load opens a file once for its magic-byte
//! check and footer, and once for each row group it decodes.
//!
//! A file of at most [`WHOLE_FILE_BYTES`] is read whole when it is opened (one positional
//! read of its size) and its handle closed at once; every range is then a
//! slice of those bytes, without a system call. A 4 KiB file of one row group was about
//! 40 positional reads over a run (the footer, each column's page header and data, the
//! footer again for the layout, the fingerprint and a re-check).

use crate::error::{Result, TallyError};
use crate::load::InputFile;
use bytes::{Buf, Bytes};
use parquet::file::reader::{ChunkReader, Length};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Files up to this size are read whole at open. Each open of a file reads all of it (the
/// load opens a file once for its footer and once for each row group), so the limit is
/// where copying a whole file a few times still costs less than the positional reads of
/// its ranges: small (a streaming sink's files are a few KiB), and far below the row
/// groups of ordinary files.
pub const WHOLE_FILE_BYTES: u64 = 64 * 1024;

/// An open input file and its length (read once, at open: every range `get_bytes` and
/// `read_exact_at` are asked for is checked against the same length; a `get_read` reader
/// reads on to the file's end), read by position or held whole.
#[derive(Clone)]
pub struct PositionalFile {
    contents: Contents,
    len: u64,
    /// The file's modification time at open (its handle's, before a small file's is closed).
    modified: crate::load::Modified,
}

#[derive(Clone)]
enum Contents {
    /// The file's bytes (a small file, read whole at open).
    Whole(Bytes),
    /// The open file, read by position.
    Handle(Arc<File>),
}

impl PositionalFile {
    /// Open `file` for reading (an error names it).
    pub fn open(file: &InputFile) -> Result<PositionalFile> {
        PositionalFile::open_path(&file.abs_path)
            .map_err(|e| TallyError::input(&file.rel_path, format!("cannot open: {e}")))
    }

    /// Open a file by its path (the caller names it in an error); a file of at most
    /// [`WHOLE_FILE_BYTES`] is read whole.
    pub fn open_path(path: &std::path::Path) -> std::io::Result<PositionalFile> {
        let handle = File::open(path)?;
        let meta = handle.metadata()?;
        let len = meta.len();
        let modified = crate::load::Modified::of(&meta);
        // Not a size of 0: a file whose size reads 0 may still hold bytes (a file system
        // that does not know sizes), which reads by position find.
        if (1..=WHOLE_FILE_BYTES).contains(&len) {
            let bytes = read_whole(len, |part, offset| handle.read_at(part, offset))?;
            return Ok(PositionalFile {
                len: bytes.len() as u64,
                contents: Contents::Whole(bytes.into()),
                modified,
            });
        }
        Ok(PositionalFile {
            contents: Contents::Handle(Arc::new(handle)),
            len,
            modified,
        })
    }

    /// When the file was last written, at open (see [`crate::load::Modified`]).
    pub fn modified(&self) -> crate::load::Modified {
        self.modified
    }

    /// The file's bytes when it was read whole at open.
    pub fn whole(&self) -> Option<&Bytes> {
        match &self.contents {
            Contents::Whole(bytes) => Some(bytes),
            Contents::Handle(_) => None,
        }
    }

    /// A reader of the file from `start` to its end (past the end: nothing to read, as a
    /// file gives).
    pub fn read_from(&self, start: u64) -> RangeRead {
        match &self.contents {
            Contents::Whole(bytes) => {
                let from = usize::try_from(start).map_or(bytes.len(), |s| s.min(bytes.len()));
                RangeRead::Whole(bytes.slice(from..).reader())
            }
            Contents::Handle(file) => RangeRead::Handle(std::io::BufReader::new(PositionalRead {
                file: Arc::clone(file),
                offset: start,
            })),
        }
    }

    /// `buf.len()` bytes at `offset` within the length read at open, whole or an error
    /// (`UnexpectedEof` past that length, in both modes).
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let range = in_bounds(offset, buf.len(), self.len)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        match &self.contents {
            Contents::Whole(bytes) => {
                buf.copy_from_slice(&bytes[range]);
                Ok(())
            }
            Contents::Handle(file) => file.read_exact_at(buf, offset),
        }
    }
}

/// `offset..offset + length` when it lies within `0..len`.
fn in_bounds(offset: u64, length: usize, len: u64) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(length)?;
    (end as u64 <= len).then_some(start..end)
}

/// A small file's bytes, read whole by `read_at` (a positional read): its size's bytes,
/// as the length of a file read by position is its size at open; fewer if it was cut
/// short since (the magic-byte check then says so).
fn read_whole(
    len: u64,
    read_at: impl FnMut(&mut [u8], u64) -> std::io::Result<usize>,
) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; len as usize];
    let read = fill_at(&mut bytes, 0, read_at)?;
    bytes.truncate(read);
    Ok(bytes)
}

impl Length for PositionalFile {
    fn len(&self) -> u64 {
        self.len
    }
}

/// A [`Read`] from an offset of a [`PositionalFile`], advancing by positional reads.
pub struct PositionalRead {
    file: Arc<File>,
    offset: u64,
}

impl Read for PositionalRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.file.read_at(buf, self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

/// A [`Read`] from an offset of a [`PositionalFile`]: buffered positional reads, or the
/// bytes of a file held whole.
pub enum RangeRead {
    Handle(std::io::BufReader<PositionalRead>),
    Whole(bytes::buf::Reader<Bytes>),
}

impl Read for RangeRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            RangeRead::Handle(read) => read.read(buf),
            RangeRead::Whole(read) => read.read(buf),
        }
    }
}

/// Fill `buffer` from `start` by calls of `read_at(part, offset)` (one positional read,
/// which may return fewer bytes than asked: a short read asks again for the rest, an
/// interrupted one again for the same part). Returns how many bytes were read: fewer than
/// `buffer.len()` only when `read_at` returned 0, the end of the file.
fn fill_at(
    buffer: &mut [u8],
    start: u64,
    mut read_at: impl FnMut(&mut [u8], u64) -> std::io::Result<usize>,
) -> std::io::Result<usize> {
    let mut read = 0;
    while read < buffer.len() {
        match read_at(&mut buffer[read..], start + read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(read)
}

impl ChunkReader for PositionalFile {
    // Buffered, as arrow-rs's own: its callers read a few bytes at a time (page headers).
    type T = RangeRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(self.read_from(start))
    }

    /// A range within the length read at open (whether the file has grown since or not):
    /// a slice of a file held whole, else positional reads into a zeroed buffer (safe code;
    /// the 20M bench data reads level with arrow-rs's reads into unzeroed buffers:
    /// benches/README.md, "Profiles and experiments (2026-12-05, afternoon: small files
    /// read by position)").
    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        // Nothing at any offset, as a positional read of nothing gives.
        if length == 0 {
            return Ok(Bytes::new());
        }
        let Some(range) = in_bounds(start, length, self.len) else {
            let available = self.len.saturating_sub(start).min(length as u64);
            return Err(short_read(length, available as usize));
        };
        let file = match &self.contents {
            Contents::Whole(bytes) => return Ok(bytes.slice(range)),
            Contents::Handle(file) => file,
        };
        let mut buffer = vec![0u8; length];
        let read = fill_at(&mut buffer, start, |part, offset| {
            file.read_at(part, offset)
        })?;
        if read != length {
            return Err(short_read(length, read));
        }
        Ok(buffer.into())
    }
}

/// The error of a range that runs past the end of the file.
fn short_read(length: usize, read: usize) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::EOF(format!("Expected to read {length} bytes, read only {read}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` bytes (`data-{len}.bin`), byte `i` being `i % 251` (so a range read
    /// from the wrong offset shows), opened.
    fn file_of(dir: &std::path::Path, len: usize) -> PositionalFile {
        let path = dir.join(format!("data-{len}.bin"));
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        PositionalFile::open_path(&path).unwrap()
    }

    fn expected(start: usize, length: usize) -> Vec<u8> {
        (start..start + length).map(|i| (i % 251) as u8).collect()
    }

    /// A range gives the file's bytes at its offset: empty, one byte, small and large
    /// (a few MiB, as a large page), from the start, the middle and up to the end; of a
    /// file held whole (at the limit) and of one read by position.
    #[test]
    fn a_range_is_the_files_bytes_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        for len in [WHOLE_FILE_BYTES as usize, 5 << 20] {
            let file = file_of(dir.path(), len);
            assert_eq!(file.len(), len as u64);
            for length in [0, 1, 4096, 3 << 20].map(|l: usize| l.min(len)) {
                for start in [0, 7.min(len - length), len - length] {
                    let got = file.get_bytes(start as u64, length).unwrap();
                    assert_eq!(
                        &got[..],
                        &expected(start, length)[..],
                        "{len}: {start}+{length}"
                    );
                    let mut buf = vec![0u8; length];
                    file.read_exact_at(&mut buf, start as u64).unwrap();
                    assert_eq!(buf, expected(start, length), "{len}: {start}+{length}");
                }
            }
        }
    }

    /// A range past the end is an error saying how much was read (a truncated file must
    /// fail, not decode zeros), the same for a file held whole and one read by position.
    #[test]
    fn a_range_past_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for len in [WHOLE_FILE_BYTES as usize, 1 << 20] {
            let file = file_of(dir.path(), len);
            for length in [16, 40 << 10] {
                let start = len - length + 5;
                let error = file.get_bytes(start as u64, length).unwrap_err();
                assert_eq!(
                    error.to_string(),
                    format!(
                        "EOF: Expected to read {length} bytes, read only {}",
                        length - 5
                    ),
                    "{len}"
                );
                let mut buf = vec![0u8; length];
                assert!(file.read_exact_at(&mut buf, start as u64).is_err(), "{len}");
            }
            for start in [len as u64 + 10, u64::MAX] {
                let error = file.get_bytes(start, 1).unwrap_err();
                assert_eq!(
                    error.to_string(),
                    "EOF: Expected to read 1 bytes, read only 0",
                    "{len}"
                );
                // Nothing is nothing, wherever it is asked for.
                assert!(file.get_bytes(start, 0).unwrap().is_empty(), "{len}");
                let error = file.read_exact_at(&mut [0u8; 1], start).unwrap_err();
                assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{len}");
            }
        }
    }

    /// A file read whole is its size's bytes, or the bytes there were when it was cut
    /// short after its size was read (its length then is theirs).
    #[test]
    fn a_file_read_whole_is_what_was_there() {
        let source: Vec<u8> = (0..100u8).collect();
        let from = |available: usize| {
            let source = &source;
            move |part: &mut [u8], offset: u64| {
                let from = (offset as usize).min(available);
                let n = part.len().min(available - from).min(30);
                part[..n].copy_from_slice(&source[from..from + n]);
                Ok(n)
            }
        };
        assert_eq!(read_whole(100, from(100)).unwrap(), source);
        assert_eq!(read_whole(100, from(64)).unwrap(), source[..64]);
        assert!(read_whole(100, from(0)).unwrap().is_empty());
    }

    /// Files of at most WHOLE_FILE_BYTES are read whole at open (one byte past it is read
    /// by position); a file whose size reads 0 is read by position (its bytes, if any,
    /// are found by reading).
    #[test]
    fn files_up_to_the_limit_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let limit = WHOLE_FILE_BYTES as usize;
        for (len, whole) in [(0, false), (1, true), (limit, true), (limit + 1, false)] {
            let file = file_of(dir.path(), len);
            assert_eq!(file.whole().is_some(), whole, "{len} bytes");
            if let Some(bytes) = file.whole() {
                assert_eq!(&bytes[..], &expected(0, len)[..]);
            }
            let mut all = Vec::new();
            file.read_from(0).read_to_end(&mut all).unwrap();
            assert_eq!(all, expected(0, len), "{len} bytes");
        }
    }

    /// The fill loop asks again for the rest after a short read, again for the same part
    /// after an interrupted one, stops at the end of the file (a 0), and passes any other
    /// error on.
    #[test]
    fn the_fill_loop_takes_short_and_interrupted_reads_and_stops_at_the_end() {
        use std::io::{Error, ErrorKind};
        let source: Vec<u8> = (0..100u8).collect();
        // Each call: interrupted every third time, else at most 7 bytes.
        let mut calls = 0;
        let mut short_reads = |part: &mut [u8], offset: u64| {
            calls += 1;
            if calls % 3 == 0 {
                return Err(Error::from(ErrorKind::Interrupted));
            }
            let from = (offset as usize).min(source.len());
            let n = part.len().min(7).min(source.len() - from);
            part[..n].copy_from_slice(&source[from..from + n]);
            Ok(n)
        };
        let mut buffer = vec![0u8; 50];
        assert_eq!(fill_at(&mut buffer, 30, &mut short_reads).unwrap(), 50);
        assert_eq!(buffer, source[30..80]);
        // Past the end: the bytes there, then a 0.
        let mut buffer = vec![0u8; 50];
        assert_eq!(fill_at(&mut buffer, 80, &mut short_reads).unwrap(), 20);
        assert_eq!(buffer[..20], source[80..]);
        let failing = |_: &mut [u8], _: u64| Err(Error::from(ErrorKind::PermissionDenied));
        let error = fill_at(&mut [0u8; 4], 0, failing).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::PermissionDenied);
    }

    /// Readers share no file position: `get_read` readers each read on from their own
    /// offset (of a file held whole too, and to its end), and threads reading ranges of
    /// clones of one handle at once each get their own range (a reader that sought a
    /// shared handle would read at another's offset).
    #[test]
    fn readers_and_threads_read_at_their_own_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let small = file_of(dir.path(), 50_000);
        assert!(small.whole().is_some());
        let mut tail = Vec::new();
        small
            .get_read(49_990)
            .unwrap()
            .read_to_end(&mut tail)
            .unwrap();
        assert_eq!(tail, expected(49_990, 10));
        let mut past = Vec::new();
        small
            .get_read(60_000)
            .unwrap()
            .read_to_end(&mut past)
            .unwrap();
        assert!(past.is_empty());
        let large = file_of(dir.path(), 4 << 20);
        for file in [&small, &large] {
            let mut first = file.get_read(10).unwrap();
            let mut second = file.get_read(30_000).unwrap();
            let mut a = vec![0u8; 15_000];
            let mut b = vec![0u8; 10_000];
            first.read_exact(&mut a).unwrap();
            second.read_exact(&mut b).unwrap();
            assert_eq!(a, expected(10, 15_000));
            assert_eq!(b, expected(30_000, 10_000));
            let mut c = [0u8; 3];
            first.read_exact(&mut c).unwrap();
            assert_eq!(c[..], expected(15_010, 3)[..]);
        }
        let file = large;
        std::thread::scope(|scope| {
            for t in 0..4usize {
                let file = file.clone();
                scope.spawn(move || {
                    for i in 0..50usize {
                        let start = (t * 997 + i * 65_537) % (3 << 20);
                        let got = file.get_bytes(start as u64, 300 << 10).unwrap();
                        assert_eq!(&got[..], &expected(start, 300 << 10)[..], "{t} {i}");
                    }
                });
            }
        });
    }

    /// The length is the file's at open: a file appended to later keeps its first length
    /// (the footer and every range are read against one length), held whole or not.
    #[test]
    fn the_length_is_read_once_at_open() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        for len in [1000, 100_000] {
            let file = file_of(dir.path(), len);
            let mut more = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.path().join(format!("data-{len}.bin")))
                .unwrap();
            more.write_all(&[1; 500]).unwrap();
            assert_eq!(file.len(), len as u64);
            assert!(file.get_bytes(len as u64, 1).is_err(), "{len}");
        }
    }
}
