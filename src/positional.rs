//! An input Parquet file read by position (`pread`), for the Parquet reader.
//!
//! The reader asks its file for every column chunk of a row group and for the footer one
//! range at a time. arrow-rs's own `ChunkReader` for `File` answers each ask with four
//! system calls (a duplicate handle, a seek, the read, a close) and a fifth for the file's
//! length. For an ordinary file of large row groups that is nothing; for a month of small
//! files (a streaming sink flushing every few rows) it is most of the load's kernel time.
//! A positional read needs one call and no handle of its own, so one open handle serves
//! the magic-byte check, the footer and every row group of a file.

use crate::error::{Result, TallyError};
use crate::load::InputFile;
use bytes::Bytes;
use parquet::file::reader::{ChunkReader, Length};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Ranges up to this size are read into a zeroed buffer by one positional read; larger
/// ones (the column chunks of ordinary files, megabytes each) as arrow-rs reads them, into
/// a buffer that is not zeroed first: zeroing them would cost more than the calls saved.
const POSITIONAL_READ_MAX_BYTES: usize = 256 * 1024;

/// An open input file and its length, read by position.
#[derive(Clone)]
pub struct PositionalFile {
    file: Arc<File>,
    len: u64,
}

impl PositionalFile {
    /// Open `file` for reading (an error names it).
    pub fn open(file: &InputFile) -> Result<PositionalFile> {
        let cannot_open =
            |e: std::io::Error| TallyError::input(&file.rel_path, format!("cannot open: {e}"));
        let handle = File::open(&file.abs_path).map_err(cannot_open)?;
        let len = handle.metadata().map_err(cannot_open)?.len();
        Ok(PositionalFile {
            file: Arc::new(handle),
            len,
        })
    }

    /// Open a file by path only (for callers that name it themselves).
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

impl ChunkReader for PositionalFile {
    // Buffered, as arrow-rs's own: its callers read a few bytes at a time (page headers).
    type T = std::io::BufReader<PositionalRead>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(std::io::BufReader::new(PositionalRead {
            file: Arc::clone(&self.file),
            offset: start,
        }))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let short = |read: usize| {
            parquet::errors::ParquetError::EOF(format!(
                "Expected to read {length} bytes, read only {read}"
            ))
        };
        if length <= POSITIONAL_READ_MAX_BYTES {
            let mut buffer = vec![0u8; length];
            let mut read = 0;
            while read < length {
                match self.file.read_at(&mut buffer[read..], start + read as u64) {
                    Ok(0) => return Err(short(read)),
                    Ok(n) => read += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(buffer.into());
        }
        // As arrow-rs's `ChunkReader for File`: a `File`'s `read_to_end` fills the
        // buffer's spare capacity without zeroing it (a `PositionalRead`'s would zero it).
        let mut buffer = Vec::with_capacity(length);
        let mut handle = self.file.try_clone()?;
        // A `File`'s own reading (seek and read), as arrow-rs does.
        handle.seek(SeekFrom::Start(start))?;
        let read = handle.take(length as u64).read_to_end(&mut buffer)?;
        if read != length {
            return Err(short(read));
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

    /// Both ways of reading a range (one positional read up to
    /// `POSITIONAL_READ_MAX_BYTES`, a `File`'s own reading past it) give the range's bytes,
    /// at the limit and one past it, from the start, the middle and up to the end.
    #[test]
    fn a_range_is_read_exactly_at_the_limit_and_one_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let len = 3 * POSITIONAL_READ_MAX_BYTES;
        let file = file_of(dir.path(), len);
        assert_eq!(file.len(), len as u64);
        for length in [
            0,
            1,
            POSITIONAL_READ_MAX_BYTES,
            POSITIONAL_READ_MAX_BYTES + 1,
        ] {
            for start in [0, 7, len - length] {
                let got = file.get_bytes(start as u64, length).unwrap();
                assert_eq!(&got[..], &expected(start, length)[..], "{start}+{length}");
            }
        }
    }

    /// A range past the end is an error saying how much was read, whichever way it is
    /// read (a truncated file must fail, not decode zeros).
    #[test]
    fn a_range_past_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let len = 2 * POSITIONAL_READ_MAX_BYTES;
        let file = file_of(dir.path(), len);
        for length in [16, POSITIONAL_READ_MAX_BYTES + 1] {
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
    }

    /// `get_read` reads on from its offset, each reader on its own (positional reads
    /// share no file position).
    #[test]
    fn readers_read_on_from_their_own_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_of(dir.path(), 100_000);
        let mut first = file.get_read(10).unwrap();
        let mut second = file.get_read(90_000).unwrap();
        let mut a = vec![0u8; 20_000];
        let mut b = Vec::new();
        first.read_exact(&mut a).unwrap();
        second.read_to_end(&mut b).unwrap();
        assert_eq!(a, expected(10, 20_000));
        assert_eq!(b, expected(90_000, 10_000));
        let mut c = [0u8; 3];
        first.read_exact(&mut c).unwrap();
        assert_eq!(c[..], expected(20_010, 3)[..]);
    }
}
