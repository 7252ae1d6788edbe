//! Scratch files written and read past the page cache (`O_DIRECT`), through buffers that
//! are reused.
//!
//! A split run writes its spill once and reads it back once, soon after. Through the page
//! cache, each written byte is first copied into a fresh page-cache page (the kernel zeroes
//! and maps it) and each read byte is mapped from it again: at 100M events the copy into
//! fresh pages alone was a large share of the spill pass's CPU, and a nightly run pays it
//! in full (back-to-back runs reuse the pages the previous run's spill freed, which is why
//! benches hide it). Written with `O_DIRECT`, and read back with `O_DIRECT` into one reused
//! buffer, the same bytes cost a small fraction of that CPU (measured: benches/README.md,
//! "Profiles and experiments (2026-12-04, morning: fresh pages)").
//!
//! Unbuffered I/O needs aligned buffers, offsets and lengths ([`ALIGN`]): a file's last
//! block is written padded and the file then cut to its length. A file system that refuses
//! `O_DIRECT` (at open, or with `EINVAL` on a write or read: tmpfs before Linux 6.6, some
//! network and FUSE file systems) gets the same calls through its page cache instead: the
//! flag only changes where the bytes go, never which bytes. (tmpfs since 6.6 accepts the
//! flag and keeps the bytes in memory, as it always does.)
//!
//! [`AppendFiles`] overlaps the device time of writes with the work that makes the bytes:
//! appenders fill per-file buffers and hand full ones to one writer thread. [`ReadAhead`]
//! does the same for many files read from start to end at once (the close's run files,
//! merged): one I/O thread reads each file's next chunk while its current one is used.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

/// Alignment of unbuffered buffers, file offsets and lengths: the largest logical block
/// size of common devices (512 and 4096 bytes).
pub const ALIGN: usize = 4096;

/// `n` rounded up to a multiple of [`ALIGN`].
pub fn aligned(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// A byte buffer whose first byte is [`ALIGN`]-aligned: a vector over-allocated by `ALIGN`
/// bytes and used from its first aligned byte (moving the vector does not move its bytes).
/// A large buffer's pages are the kernel's zeroed ones, touched when first written.
#[derive(Default)]
pub struct AlignedBuf {
    bytes: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    /// A buffer of at least `len` bytes (rounded up to a multiple of [`ALIGN`]).
    pub fn new(len: usize) -> AlignedBuf {
        let bytes = vec![0u8; aligned(len) + ALIGN];
        let start = bytes.as_ptr().align_offset(ALIGN);
        assert!(start < ALIGN, "a byte buffer can be aligned");
        AlignedBuf { bytes, start }
    }

    /// Its bytes (a multiple of [`ALIGN`]).
    pub fn len(&self) -> usize {
        (self.bytes.len().saturating_sub(ALIGN)) / ALIGN * ALIGN
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len()]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len();
        &mut self.bytes[self.start..self.start + len]
    }
}

/// An error like `e` (same OS code, or same kind and message): `io::Error` is not `Clone`.
fn copy_of(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Whether `file` is open with `O_DIRECT`.
fn is_direct(file: &File) -> bool {
    // SAFETY: F_GETFL on an open descriptor only reads its flags.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && flags & libc::O_DIRECT != 0
}

/// Go on through the page cache: the file system refused an unbuffered call.
fn stop_direct(file: &File) -> io::Result<()> {
    // SAFETY: F_GETFL / F_SETFL on an open descriptor only change its status flags.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_DIRECT) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `EINVAL` from an unbuffered call: alignment or a file system without `O_DIRECT`.
fn refused(e: &io::Error, file: &File) -> bool {
    e.raw_os_error() == Some(libc::EINVAL) && is_direct(file)
}

/// Open `path` with `options` and `O_DIRECT`, or without it where the file system refuses
/// the flag.
fn open_direct(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    match options.clone().custom_flags(libc::O_DIRECT).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => options.open(path),
        opened => opened,
    }
}

/// Create (or truncate) the file at `path` for writing, unbuffered where allowed.
fn create_direct(path: &Path) -> io::Result<File> {
    open_direct(
        path,
        OpenOptions::new().write(true).create(true).truncate(true),
    )
}

/// Open the file at `path` for reading, unbuffered where allowed.
fn open_direct_to_read(path: &Path) -> io::Result<File> {
    open_direct(path, OpenOptions::new().read(true))
}

/// Write `bytes` at `offset` (both aligned when the file is unbuffered).
fn write_at(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    match file.write_all_at(bytes, offset) {
        // A partial write before the refusal is written again, whole.
        Err(e) if refused(&e, file) => {
            stop_direct(file)?;
            file.write_all_at(bytes, offset)
        }
        written => written,
    }
}

/// Read the file at `path`, `len` bytes long, into `buffer` (replaced by a larger one when
/// it is too small): its bytes, the first `len` of the buffer.
pub fn read_into<'b>(path: &Path, len: usize, buffer: &'b mut AlignedBuf) -> io::Result<&'b [u8]> {
    if buffer.len() < len {
        // Freed first, not grown: growing would copy the old bytes into fresh pages.
        *buffer = AlignedBuf::default();
        *buffer = AlignedBuf::new(len);
    }
    let file = open_direct_to_read(path)?;
    read_whole(&file, 0, len, &mut buffer.as_mut_slice()[..aligned(len)])?;
    Ok(&buffer.as_slice()[..len])
}

/// Read the `len` bytes of `file` from `offset` (a multiple of [`ALIGN`]) into `into` (at
/// least `len` bytes rounded up to [`ALIGN`]; aligned when the file is unbuffered, else the
/// file system refuses and the read goes through the page cache).
fn read_whole(file: &File, offset: u64, len: usize, into: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        // An unbuffered read must be of whole blocks: ask for the rest rounded up (the
        // file ends before the buffer does).
        match file.read_at(&mut into[done..], offset + done as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} bytes where {} were written",
                        offset + done as u64,
                        offset + len as u64
                    ),
                ))
            }
            Ok(n) => {
                done += n;
                // A short read inside the file leaves the next read unaligned.
                if done < len && done % ALIGN != 0 && is_direct(file) {
                    stop_direct(file)?;
                }
            }
            Err(e) if refused(&e, file) => stop_direct(file)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A chunk to read ahead, and where its buffer goes back.
struct ReadRequest {
    file: Arc<File>,
    offset: u64,
    len: usize,
    buffer: AlignedBuf,
    reply: SyncSender<(AlignedBuf, io::Result<usize>)>,
}

/// Sequential readers of many files at once ([`AheadReader`]), unbuffered where the file
/// system allows, each with its next chunk read by one shared I/O thread while the reader
/// consumes the current one: the device's time stays off the thread that reads. Drop the
/// readers first: dropping this waits for its thread, which ends with the last reader.
pub struct ReadAhead {
    requests: Option<std::sync::mpsc::Sender<ReadRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReadAhead {
    pub fn start() -> io::Result<ReadAhead> {
        let (requests, queue) = std::sync::mpsc::channel::<ReadRequest>();
        let thread = std::thread::Builder::new()
            .name("tally-read-ahead".into())
            .spawn(move || {
                for mut request in queue {
                    let into = &mut request.buffer.as_mut_slice()[..aligned(request.len)];
                    let read = read_whole(&request.file, request.offset, request.len, into)
                        .map(|()| request.len);
                    // A reader dropped early no longer waits for its chunk.
                    let _ = request.reply.send((request.buffer, read));
                }
            })
            .map_err(|e| io::Error::new(e.kind(), format!("no read-ahead thread: {e}")))?;
        Ok(ReadAhead {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// A reader of the file at `path`, `chunk` bytes (rounded up to [`ALIGN`]) at a time.
    pub fn open(&self, path: &Path, chunk: usize) -> io::Result<AheadReader> {
        let file = open_direct_to_read(path)?;
        let length = file.metadata()?.len();
        let chunk = aligned(chunk.max(1));
        let mut reader = AheadReader {
            file: Arc::new(file),
            length,
            next_offset: 0,
            chunk,
            current: AlignedBuf::new(chunk),
            pos: 0,
            end: 0,
            pending: None,
            requests: self
                .requests
                .clone()
                .expect("the I/O thread runs until dropped"),
            failed: false,
        };
        reader.ask_for_next(AlignedBuf::new(chunk))?;
        Ok(reader)
    }
}

impl Drop for ReadAhead {
    /// Waits for the I/O thread, which ends once every reader is dropped too.
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the read-ahead thread does not panic");
        }
    }
}

/// One file read from start to end through a [`ReadAhead`].
pub struct AheadReader {
    file: Arc<File>,
    length: u64,
    /// Where the next chunk to ask for starts.
    next_offset: u64,
    chunk: usize,
    current: AlignedBuf,
    pos: usize,
    end: usize,
    /// The chunk being read ahead, when there is one.
    pending: Option<Receiver<(AlignedBuf, io::Result<usize>)>>,
    requests: std::sync::mpsc::Sender<ReadRequest>,
    /// A read failed: every later one fails too (not a false end of file).
    failed: bool,
}

impl AheadReader {
    /// Ask the I/O thread for the next chunk into `buffer` (none past the end).
    fn ask_for_next(&mut self, buffer: AlignedBuf) -> io::Result<()> {
        if self.next_offset >= self.length {
            return Ok(());
        }
        let len = (self.length - self.next_offset).min(self.chunk as u64) as usize;
        let (reply, pending) = sync_channel(1);
        let request = ReadRequest {
            file: self.file.clone(),
            offset: self.next_offset,
            len,
            buffer,
            reply,
        };
        self.requests
            .send(request)
            .map_err(|_| io::Error::other("the read-ahead thread stopped"))?;
        self.next_offset += len as u64;
        self.pending = Some(pending);
        Ok(())
    }

    /// Make the next chunk the current one and ask for the one after it (`false`: the
    /// file is read to its end).
    fn next_chunk(&mut self) -> io::Result<bool> {
        let Some(pending) = self.pending.take() else {
            return Ok(false);
        };
        let (buffer, read) = pending
            .recv()
            .map_err(|_| io::Error::other("the read-ahead thread stopped"))?;
        let len = read?;
        let used = std::mem::replace(&mut self.current, buffer);
        (self.pos, self.end) = (0, len);
        self.ask_for_next(used)?;
        Ok(true)
    }
}

impl io::Read for AheadReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let buffered = io::BufRead::fill_buf(self)?;
        let n = out.len().min(buffered.len());
        out[..n].copy_from_slice(&buffered[..n]);
        io::BufRead::consume(self, n);
        Ok(n)
    }
}

/// The current chunk's unread bytes, so that a record's head is read a byte at a time
/// without a `read` call per byte.
impl io::BufRead for AheadReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        // Checked before the current chunk's bytes are given: `next_chunk` may fail after
        // making the next chunk current (asking for the one after it).
        if self.failed {
            return Err(io::Error::other("an earlier read of this file failed"));
        }
        while self.pos == self.end {
            match self.next_chunk() {
                Ok(true) => {}
                Ok(false) => return Ok(&[]),
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
        Ok(&self.current.as_slice()[self.pos..self.end])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.end);
    }
}

/// One file of an [`AppendFiles`] written through [`io::Write`] ([`AppendFiles::writer`]).
pub struct FileWriter<'a> {
    files: &'a AppendFiles,
    file: usize,
    tail: std::sync::MutexGuard<'a, Tail>,
}

impl io::Write for FileWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let (files, file) = (self.files, self.file);
        files
            .copy_in(file, &mut self.tail, bytes)
            .map_err(|(_, e)| e)?;
        Ok(bytes.len())
    }

    /// Buffers are written when full or at [`AppendFiles::finish`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A full buffer on its way to the writer thread.
struct Block {
    file: usize,
    buffer: AlignedBuf,
    offset: u64,
    /// Bytes to write from the buffer's start (a multiple of [`ALIGN`]).
    len: usize,
}

/// The buffer being filled for one file.
struct Tail {
    buffer: AlignedBuf,
    filled: usize,
    /// Bytes of the file handed to the writer so far (where `buffer` goes).
    offset: u64,
}

/// The first failed write: the file's index and the error (kept: every appender that
/// finds the writer stopped reports it, whichever file it was appending to).
type Failure = Arc<Mutex<Option<(usize, Arc<io::Error>)>>>;

/// Files appended to by many threads and written by one writer thread, unbuffered where
/// the file system allows. Each file has a buffer being filled; a full one goes to the
/// writer and a free one takes its place (appenders wait when every spare buffer is being
/// written: memory is bounded by `files + SPARE_BUFFERS` buffers).
pub struct AppendFiles {
    paths: Vec<PathBuf>,
    files: Arc<Vec<File>>,
    tails: Vec<Mutex<Tail>>,
    full: Option<SyncSender<Block>>,
    free: Mutex<Receiver<AlignedBuf>>,
    failed: Failure,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// Buffers beyond one a file: those being written or waiting for the writer.
const SPARE_BUFFERS: usize = 4;

/// Why an append or the finish failed: the file's path and the error.
pub type AppendError = (PathBuf, io::Error);

impl AppendFiles {
    /// Create (truncate) the files at `paths`, each with a buffer of `buffer_bytes`
    /// (rounded up to a multiple of [`ALIGN`]).
    pub fn create(paths: Vec<PathBuf>, buffer_bytes: usize) -> Result<AppendFiles, AppendError> {
        let mut files = Vec::with_capacity(paths.len());
        for path in &paths {
            files.push(create_direct(path).map_err(|e| (path.clone(), e))?);
        }
        Self::over(paths, files, buffer_bytes)
    }

    /// Appends to `files` (opened, at `paths`), and their writer thread.
    fn over(
        paths: Vec<PathBuf>,
        files: Vec<File>,
        buffer_bytes: usize,
    ) -> Result<AppendFiles, AppendError> {
        let files = Arc::new(files);
        let tails = paths
            .iter()
            .map(|_| {
                Mutex::new(Tail {
                    buffer: AlignedBuf::new(buffer_bytes),
                    filled: 0,
                    offset: 0,
                })
            })
            .collect();
        let (full_tx, full_rx) = sync_channel::<Block>(SPARE_BUFFERS);
        let (free_tx, free_rx) = sync_channel::<AlignedBuf>(SPARE_BUFFERS);
        for _ in 0..SPARE_BUFFERS {
            free_tx
                .send(AlignedBuf::new(buffer_bytes))
                .expect("the pool has room for its buffers");
        }
        let failed = Failure::default();
        let writer = {
            let (files, failed) = (files.clone(), failed.clone());
            std::thread::Builder::new()
                .name("tally-scratch-writer".into())
                .spawn(move || write_blocks(&files, full_rx, free_tx, &failed))
                .map_err(|e| {
                    let path = paths.first().cloned().unwrap_or_default();
                    (
                        path,
                        io::Error::new(e.kind(), format!("no scratch writer thread: {e}")),
                    )
                })?
        };
        Ok(AppendFiles {
            paths,
            files,
            tails,
            full: Some(full_tx),
            free: Mutex::new(free_rx),
            failed,
            writer: Some(writer),
        })
    }

    /// Append `parts`, one after another, to file `file`; with other appends to the same
    /// file, whole and in some order.
    pub fn append(&self, file: usize, parts: &[&[u8]]) -> Result<(), AppendError> {
        let mut tail = self.tails[file].lock().expect("append buffer lock");
        for part in parts {
            self.copy_in(file, &mut tail, part)?;
        }
        Ok(())
    }

    /// File `file` written by one thread through [`io::Write`]: the writer holds the file's
    /// buffer, so its many small writes (a run file's records) are copied straight into it,
    /// without a lock or a buffer of their own each.
    pub fn writer(&self, file: usize) -> FileWriter<'_> {
        FileWriter {
            files: self,
            file,
            tail: self.tails[file].lock().expect("append buffer lock"),
        }
    }

    /// Copy `bytes` into a file's buffer, handing each full buffer to the writer.
    fn copy_in(&self, file: usize, tail: &mut Tail, mut bytes: &[u8]) -> Result<(), AppendError> {
        while !bytes.is_empty() {
            let n = (tail.buffer.len() - tail.filled).min(bytes.len());
            let filled = tail.filled;
            tail.buffer.as_mut_slice()[filled..filled + n].copy_from_slice(&bytes[..n]);
            tail.filled += n;
            bytes = &bytes[n..];
            if tail.filled == tail.buffer.len() {
                self.hand_over(file, tail)?;
            }
        }
        Ok(())
    }

    /// Send a file's full buffer to the writer and take a free one.
    fn hand_over(&self, file: usize, tail: &mut Tail) -> Result<(), AppendError> {
        let free = self
            .free
            .lock()
            .expect("free buffer lock")
            .recv()
            .map_err(|_| self.failure(file))?;
        let buffer = std::mem::replace(&mut tail.buffer, free);
        let len = tail.filled;
        let block = Block {
            file,
            buffer,
            offset: tail.offset,
            len,
        };
        tail.offset += len as u64;
        tail.filled = 0;
        let full = self.full.as_ref().expect("the writer runs until finish");
        full.send(block).map_err(|_| self.failure(file))
    }

    /// The writer thread's error (it stopped at its first), with its file's path.
    fn recorded_failure(&self) -> Option<AppendError> {
        let failed = self.failed.lock().expect("failure lock");
        failed
            .as_ref()
            .map(|(at, e)| (self.paths[*at].clone(), copy_of(e)))
    }

    /// Why file `file` cannot go on: the writer thread's error, else that it stopped.
    fn failure(&self, file: usize) -> AppendError {
        self.recorded_failure().unwrap_or_else(|| {
            (
                self.paths[file].clone(),
                io::Error::other("the scratch writer thread stopped"),
            )
        })
    }

    /// Write every buffer's rest (its last block padded), wait for the writer and cut each
    /// file to its length: the files and their lengths.
    pub fn finish(mut self) -> Result<Vec<(PathBuf, u64)>, AppendError> {
        let mut lengths = Vec::with_capacity(self.tails.len());
        for file in 0..self.tails.len() {
            let mut tail = self.tails[file].lock().expect("append buffer lock");
            let length = tail.offset + tail.filled as u64;
            if tail.filled > 0 {
                tail.filled = aligned(tail.filled);
                // The free buffer this takes is not used again, but taking it keeps the
                // pool drained: the writer hands every written buffer back into a pool
                // of SPARE_BUFFERS places, and with the pool full it would wait there,
                // not take the next block, and this send would wait for it.
                self.hand_over(file, &mut tail)?;
            }
            lengths.push(length);
        }
        self.stop_writer();
        if let Some(failure) = self.recorded_failure() {
            return Err(failure);
        }
        for ((file, path), &length) in self.files.iter().zip(&self.paths).zip(&lengths) {
            file.set_len(length).map_err(|e| (path.clone(), e))?;
        }
        Ok(self.paths.drain(..).zip(lengths).collect())
    }

    /// Close the writer's queue and wait until it has written what it holds.
    fn stop_writer(&mut self) {
        self.full = None;
        if let Some(writer) = self.writer.take() {
            writer
                .join()
                .expect("the scratch writer thread does not panic");
        }
    }
}

impl Drop for AppendFiles {
    /// A failed run's files are not finished: the writer still stops before the files (and
    /// their folder) go.
    fn drop(&mut self) {
        self.stop_writer();
    }
}

/// The writer thread: write each block where it goes and hand its buffer back; stop at
/// the first error (recorded in `failed`) or when the queue closes.
fn write_blocks(
    files: &[File],
    full: Receiver<Block>,
    free: SyncSender<AlignedBuf>,
    failed: &Mutex<Option<(usize, Arc<io::Error>)>>,
) {
    for block in full {
        let bytes = &block.buffer.as_slice()[..block.len];
        if let Err(e) = write_at(&files[block.file], bytes, block.offset) {
            *failed.lock().expect("failure lock") = Some((block.file, Arc::new(e)));
            return;
        }
        // The pool is closed only when the appenders are gone.
        let _ = free.send(block.buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` bytes that do not repeat with any period a chunk or block size divides (so that
    /// a chunk read from the wrong offset shows).
    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n as u64)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ seed)
            .collect()
    }

    /// Parts smaller than, equal to and larger than a buffer, over two files, come back
    /// whole and in order, the files cut to their lengths; also read into a buffer that is
    /// too small (replaced) and one that is large enough (kept).
    #[test]
    fn appended_parts_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let paths = vec![dir.path().join("a"), dir.path().join("b")];
        let files = AppendFiles::create(paths.clone(), ALIGN).unwrap();
        let parts = [
            bytes(1, 1),
            bytes(ALIGN, 2),
            bytes(3 * ALIGN + 17, 3),
            bytes(5, 4),
        ];
        let mut expected = [Vec::new(), Vec::new()];
        for (i, part) in parts.iter().enumerate() {
            files.append(i % 2, &[part, part]).unwrap();
            expected[i % 2].extend_from_slice(part);
            expected[i % 2].extend_from_slice(part);
        }
        let written = files.finish().unwrap();
        // The first file is the longer: the one-block buffer is replaced for it, and kept
        // for the second.
        assert!(expected[0].len() > ALIGN && expected[1].len() < expected[0].len());
        let mut buffer = AlignedBuf::new(1);
        let mut starts = Vec::new();
        for ((path, length), expected) in written.iter().zip(&expected) {
            assert_eq!(*length as usize, expected.len());
            assert_eq!(std::fs::metadata(path).unwrap().len(), *length);
            let read = read_into(path, *length as usize, &mut buffer).unwrap();
            assert_eq!(read, &expected[..]);
            starts.push(read.as_ptr());
        }
        assert_eq!(starts[0], starts[1], "a buffer large enough is kept");
    }

    #[test]
    fn an_empty_file_stays_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        let written = AppendFiles::create(vec![path.clone()], 1)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(written, vec![(path.clone(), 0)]);
        let mut buffer = AlignedBuf::default();
        assert!(read_into(&path, 0, &mut buffer).unwrap().is_empty());
    }

    /// A file shorter than the length it should have fails the read.
    #[test]
    fn a_short_file_fails_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, bytes(100, 0)).unwrap();
        let e = read_into(&path, 101, &mut AlignedBuf::default()).unwrap_err();
        assert_eq!(e.to_string(), "100 bytes where 101 were written");
    }

    /// An unaligned write and read on a file opened for unbuffered I/O: a file system that
    /// checks alignment (ext4, xfs) refuses them with `EINVAL` and they go through the page
    /// cache, the file staying buffered; one that does not (tmpfs since Linux 6.6) takes
    /// them as they are. The bytes are the same either way.
    #[test]
    fn refused_unaligned_calls_go_through_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unaligned");
        let file = create_direct(&path).unwrap();
        write_at(&file, b"abc", 1).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0abc");

        let file = open_direct_to_read(&path).unwrap();
        let mut buffer = AlignedBuf::new(2 * ALIGN);
        // One byte past an aligned start: unaligned for an unbuffered read.
        let into = &mut buffer.as_mut_slice()[1..];
        read_whole(&file, 0, 4, into).unwrap();
        assert_eq!(&into[..4], b"\0abc");
    }

    /// Files of every length around the chunk size come back whole through read-ahead
    /// readers open at once, read in pieces of odd sizes.
    #[test]
    fn read_ahead_readers_give_back_each_file_whole() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let lengths = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, 2 * ALIGN, 3 * ALIGN + 17];
        let contents: Vec<Vec<u8>> = (lengths.iter().enumerate())
            .map(|(i, &n)| bytes(n, i as u8))
            .collect();
        let ahead = ReadAhead::start().unwrap();
        let mut readers: Vec<AheadReader> = (contents.iter().enumerate())
            .map(|(i, content)| {
                let path = dir.path().join(format!("f{i}"));
                std::fs::write(&path, content).unwrap();
                ahead.open(&path, ALIGN).unwrap()
            })
            .collect();
        let mut read: Vec<Vec<u8>> = vec![Vec::new(); readers.len()];
        // Round robin, 1000 bytes at a time: every reader has a chunk in flight.
        let mut piece = [0u8; 1000];
        loop {
            let mut any = false;
            for (reader, got) in readers.iter_mut().zip(&mut read) {
                let n = reader.read(&mut piece).unwrap();
                got.extend_from_slice(&piece[..n]);
                any |= n > 0;
            }
            if !any {
                break;
            }
        }
        assert_eq!(read, contents);
    }

    /// A file cut short while it is read fails the read that reaches the cut, naming where,
    /// and every read after it (not a false end of file).
    #[test]
    fn a_file_cut_short_while_read_fails_every_later_read() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut");
        let content = bytes(3 * ALIGN, 7);
        std::fs::write(&path, &content).unwrap();
        let ahead = ReadAhead::start().unwrap();
        let mut reader = ahead.open(&path, ALIGN).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(ALIGN as u64).unwrap();
        let mut got = Vec::new();
        let e = reader.read_to_end(&mut got).unwrap_err();
        let expected = format!("{ALIGN} bytes where {} were written", 2 * ALIGN);
        assert_eq!(e.to_string(), expected);
        assert_eq!(got, &content[..ALIGN]);
        let again = reader.read(&mut [0u8; 10]).unwrap_err();
        assert_eq!(again.to_string(), "an earlier read of this file failed");
    }

    /// A read that fails asking for the chunk after the one it received (the I/O thread
    /// gone) fails every later read too, though that chunk is already the current one.
    #[test]
    fn a_failed_request_for_the_next_chunk_fails_every_later_read() {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes(3 * ALIGN, 7)).unwrap();
        let (requests, queue) = std::sync::mpsc::channel::<ReadRequest>();
        drop(queue);
        let (reply, pending) = sync_channel(1);
        reply.send((AlignedBuf::new(ALIGN), Ok(ALIGN))).unwrap();
        let mut reader = AheadReader {
            file: Arc::new(File::open(&path).unwrap()),
            length: 3 * ALIGN as u64,
            next_offset: ALIGN as u64,
            chunk: ALIGN,
            current: AlignedBuf::new(ALIGN),
            pos: 0,
            end: 0,
            pending: Some(pending),
            requests,
            failed: false,
        };
        let first = reader.fill_buf().unwrap_err();
        assert_eq!(first.to_string(), "the read-ahead thread stopped");
        let again = reader.fill_buf().unwrap_err();
        assert_eq!(again.to_string(), "an earlier read of this file failed");
    }

    /// The appended files are opened unbuffered wherever the file system allows it.
    #[test]
    fn appended_files_are_unbuffered_where_the_file_system_allows() {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        let allowed = is_direct(&create_direct(&probe).unwrap());
        let files = AppendFiles::create(vec![dir.path().join("a")], ALIGN).unwrap();
        assert_eq!(is_direct(&files.files[0]), allowed);
    }

    /// Appends from many threads to one file each come back whole.
    #[test]
    fn parallel_appends_stay_whole() {
        use rayon::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("many");
        let files = AppendFiles::create(vec![path.clone()], 2 * ALIGN).unwrap();
        (0u8..64).into_par_iter().for_each(|i| {
            let part = vec![i; 1000 + usize::from(i) * 97];
            files.append(0, &[&part]).unwrap();
        });
        let (_, length) = files.finish().unwrap().pop().unwrap();
        let mut buffer = AlignedBuf::default();
        let mut read = read_into(&path, length as usize, &mut buffer).unwrap();
        let mut seen = [false; 64];
        while let Some(&i) = read.first() {
            let n = 1000 + usize::from(i) * 97;
            assert!(read[..n].iter().all(|&b| b == i), "part {i} is whole");
            assert!(!std::mem::replace(&mut seen[usize::from(i)], true));
            read = &read[n..];
        }
        assert!(seen.iter().all(|&s| s));
    }

    /// A failed write (here: a descriptor open for reading only) stops the writer, and every
    /// append and the finish after it report that error with its file's path, also appends
    /// to another file.
    #[test]
    fn a_failed_write_is_reported_with_its_file_by_every_later_call() {
        let dir = tempfile::tempdir().unwrap();
        let (bad, good) = (dir.path().join("bad"), dir.path().join("good"));
        std::fs::write(&bad, b"").unwrap();
        let read_only = File::open(&bad).unwrap();
        let writable = File::create(&good).unwrap();
        let paths = vec![bad.clone(), good.clone()];
        let files = AppendFiles::over(paths, vec![read_only, writable], ALIGN).unwrap();
        let block = bytes(ALIGN, 5);
        files.append(0, &[&block]).unwrap();
        // Once the writer has stopped, the spare buffers run out and the next hand-over
        // fails: within the spares and one more.
        let mut errors = Vec::new();
        for _ in 0..3 * SPARE_BUFFERS {
            if let Err(e) = files.append(1, &[&block]) {
                errors.push(e);
            }
        }
        assert!(errors.len() >= SPARE_BUFFERS, "{} errors", errors.len());
        let (at, e) = files.finish().map(|_| ()).unwrap_err();
        errors.push((at, e));
        for (at, e) in errors {
            assert_eq!(at, bad);
            assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        }
    }

    /// A single failed write is reported with its file's path.
    #[test]
    fn a_failed_write_is_reported_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full");
        std::fs::write(&path, b"").unwrap();
        // A descriptor open for reading only: its writes fail (EBADF).
        let read_only = File::open(&path).unwrap();
        let files = AppendFiles::over(vec![path.clone()], vec![read_only], ALIGN).unwrap();
        let part = bytes(3 * ALIGN, 9);
        let appended = files.append(0, &[&part]);
        let result = appended.and_then(|_| files.finish().map(|_| ()));
        let (at, e) = result.unwrap_err();
        assert_eq!(at, path);
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
    }
}
