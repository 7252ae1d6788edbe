//! An input Parquet file read by position (`pread`), for the Parquet reader.
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

use crate::error::{Result, TallyError};
use crate::load::InputFile;
use bytes::Bytes;
use parquet::file::reader::{ChunkReader, Length};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// An open input file and its length (read once, at open: every range of the file is
/// checked against the same length), read by position.
#[derive(Clone)]
pub struct PositionalFile {
    file: Arc<File>,
    len: u64,
}

impl PositionalFile {
    /// Open `file` for reading (an error names it).
    pub fn open(file: &InputFile) -> Result<PositionalFile> {
        PositionalFile::open_path(&file.abs_path)
            .map_err(|e| TallyError::input(&file.rel_path, format!("cannot open: {e}")))
    }

    /// Open a file by its path (the caller names it in an error).
    pub fn open_path(path: &std::path::Path) -> std::io::Result<PositionalFile> {
        let handle = File::open(path)?;
        let len = handle.metadata()?.len();
        Ok(PositionalFile {
            file: Arc::new(handle),
            len,
        })
    }

    /// `buf.len()` bytes at `offset`, whole or an error.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
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
    type T = std::io::BufReader<PositionalRead>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(std::io::BufReader::new(PositionalRead {
            file: Arc::clone(&self.file),
            offset: start,
        }))
    }

    /// Every range by positional reads into a zeroed buffer: safe code, and the 20M bench
    /// data reads level with arrow-rs's reads into unzeroed buffers (benches/README.md,
    /// "Profiles and experiments (2026-12-05, afternoon: small files read by position)").
    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let mut buffer = vec![0u8; length];
        let read = fill_at(&mut buffer, start, |part, offset| {
            self.file.read_at(part, offset)
        })?;
        if read != length {
            return Err(parquet::errors::ParquetError::EOF(format!(
                "Expected to read {length} bytes, read only {read}"
            )));
        }
        Ok(buffer.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` bytes, byte `i` being `i % 251` (so a range read from the wrong
    /// offset shows), opened for positional reads.
    fn file_of(dir: &std::path::Path, len: usize) -> PositionalFile {
        let path = dir.join("data.bin");
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        PositionalFile::open_path(&path).unwrap()
    }

    fn expected(start: usize, length: usize) -> Vec<u8> {
        (start..start + length).map(|i| (i % 251) as u8).collect()
    }

    /// A range gives the file's bytes at its offset: empty, one byte, small and large
    /// (a few MiB, as a large page), from the start, the middle and up to the end.
    #[test]
    fn a_range_is_the_files_bytes_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let len = 5 << 20;
        let file = file_of(dir.path(), len);
        assert_eq!(file.len(), len as u64);
        for length in [0, 1, 4096, 3 << 20] {
            for start in [0, 7, len - length] {
                let got = file.get_bytes(start as u64, length).unwrap();
                assert_eq!(&got[..], &expected(start, length)[..], "{start}+{length}");
            }
        }
    }

    /// A range past the end is an error saying how much was read (a truncated file must
    /// fail, not decode zeros).
    #[test]
    fn a_range_past_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let len = 1 << 20;
        let file = file_of(dir.path(), len);
        for length in [16, 300 << 10] {
            let start = len - length + 5;
            let error = file.get_bytes(start as u64, length).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "EOF: Expected to read {length} bytes, read only {}",
                    length - 5
                )
            );
        }
        let error = file.get_bytes(len as u64 + 10, 1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "EOF: Expected to read 1 bytes, read only 0"
        );
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
    /// offset, and threads reading ranges of clones of one handle at once each get their
    /// own range (a reader that sought a shared handle would read at another's offset).
    #[test]
    fn readers_and_threads_read_at_their_own_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_of(dir.path(), 4 << 20);
        let mut first = file.get_read(10).unwrap();
        let mut second = file.get_read(90_000).unwrap();
        let mut a = vec![0u8; 20_000];
        let mut b = vec![0u8; 10_000];
        first.read_exact(&mut a).unwrap();
        second.read_exact(&mut b).unwrap();
        assert_eq!(a, expected(10, 20_000));
        assert_eq!(b, expected(90_000, 10_000));
        let mut c = [0u8; 3];
        first.read_exact(&mut c).unwrap();
        assert_eq!(c[..], expected(20_010, 3)[..]);
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
    /// (the footer and every range are read against one length).
    #[test]
    fn the_length_is_read_once_at_open() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let file = file_of(dir.path(), 1000);
        let mut more = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("data.bin"))
            .unwrap();
        more.write_all(&[1; 500]).unwrap();
        assert_eq!(file.len(), 1000);
    }
}
