//! Typed errors of the library. The binary maps each to an exit code (see `ExitCode`).

use std::path::PathBuf;

/// Everything that stops a run. Row-level problems are never errors: they become rejects.
#[derive(Debug, thiserror::Error)]
pub enum TallyError {
    /// A configuration problem: bad price book, bad job file, bad flag value.
    #[error("{file}: {message}")]
    Config { file: String, message: String },

    /// An input file that cannot be used as it is: unreadable, not Parquet, wrong schema.
    #[error("{file}: {message}")]
    Input { file: String, message: String },

    /// An I/O failure while reading an input, with the path involved.
    #[error("{path}: {source}{}", read_hint(source.kind()))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The run was refused on purpose (e.g. re-closing a period with different inputs).
    #[error("refused: {0}")]
    Refused(String),

    /// A fixed-point amount would overflow its range; nothing is published.
    #[error("amount overflow: {0}")]
    Overflow(String),

    /// A sum of amounts passed what DECIMAL(18,3) holds (its two operands): the stage that
    /// summed names whose sum it was ([`TallyError::sum_of`]); nothing is published.
    #[error("amount overflow: {0}")]
    SumOverflow(String),

    /// An invariant (conservation, one invoice per account-period, ...) does not hold;
    /// the run stops before anything is published.
    #[error("invariant broken: {0}")]
    Invariant(String),

    /// Writing an output or scratch file failed (in our code or inside a library we call).
    #[error("writing {file}: {message}")]
    Output { file: String, message: String },
}

impl TallyError {
    pub fn config(file: impl Into<String>, message: impl Into<String>) -> Self {
        TallyError::Config {
            file: file.into(),
            message: message.into(),
        }
    }

    pub fn input(file: impl Into<String>, message: impl Into<String>) -> Self {
        TallyError::Input {
            file: file.into(),
            message: message.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TallyError::Io {
            path: path.into(),
            source,
        }
    }

    /// Writing (or making a folder for) an output, the output lock or a scratch file
    /// failed: exit 4 whatever the cause (disk full, permissions of the output root or
    /// of `$TMPDIR`), never the exit 2 of an unreadable input.
    pub fn write(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        let hint = write_hint(source.kind(), Disk::of(path.as_ref()));
        TallyError::output_with(path, source, hint)
    }

    /// An [`TallyError::Output`] of `path` saying `source`, then `hint`.
    fn output_with(path: impl AsRef<std::path::Path>, source: std::io::Error, hint: &str) -> Self {
        TallyError::Output {
            file: path.as_ref().display().to_string(),
            message: format!("{source}{hint}"),
        }
    }

    /// The temporary folder (`$TMPDIR`) could not take a split or sharded run's spill folder: exit
    /// 4, and for a folder that is not there (or is a file), a hint that it is the
    /// temporary folder (the operating system's words name only the path).
    pub fn temp_folder(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        use std::io::ErrorKind;
        let hint = match source.kind() {
            ErrorKind::NotFound | ErrorKind::NotADirectory => {
                "; it is the temporary folder ($TMPDIR) a split or sharded run spills to: \
                 create it, or point TMPDIR at a folder that exists"
            }
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
                "; it is the temporary folder ($TMPDIR) a split or sharded run spills to: make \
                 it writable for the user running tally, or point TMPDIR at a folder that is"
            }
            kind => write_hint(kind, Disk::Spill),
        };
        TallyError::output_with(path, source, hint)
    }

    /// Reading back a scratch file this run wrote (spill, key scratch) failed: exit 4, an
    /// internal failure, never the exit 2 of an unreadable input.
    pub fn scratch(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        TallyError::Invariant(format!(
            "scratch file {} cannot be read back: {source}",
            path.as_ref().display()
        ))
    }

    /// `a + b` of a count of rows, refused past u64 (no run reads 2^64 rows: counts
    /// that large come from a damaged or forged shard's `partial.bin`, which a merge adds up).
    pub fn count_sum(a: u64, b: u64, what: &str) -> Result<u64> {
        a.checked_add(b).ok_or_else(|| {
            TallyError::Invariant(format!("{what}: {a} + {b} is past what a count holds"))
        })
    }

    /// A [`TallyError::SumOverflow`] named by whose sum it was (`whose`, e.g. an
    /// account-period) and what to check; any other error as it is. The sum's operands alone
    /// tell an on-call engineer nothing about where to look.
    pub fn sum_of(self, whose: impl FnOnce() -> String, check: &str) -> Self {
        match self {
            TallyError::SumOverflow(sum) => TallyError::Overflow(format!(
                "{}: credits sum past the largest amount an output holds \
                 (999999999999999.999, DECIMAL(18,3)): {sum}; {check}",
                whose()
            )),
            other => other,
        }
    }

    /// A [`TallyError::SumOverflow`] outside every account-period (which the engine names)
    /// is one of the run's totals over all accounts.
    pub fn in_run_totals(self) -> Self {
        self.sum_of(
            || "the run's totals over every account".to_string(),
            "each data root's totals are summed on their own: run the accounts in several data \
             roots",
        )
    }

    /// A failed write reported by a library (the Parquet or CSV writer) in its own words:
    /// the operating system's error inside them gets the same hint as one of ours
    /// ([`TallyError::write`]); a full disk said nothing more 1 time in 8, when the Parquet
    /// writer met it first.
    pub fn output(file: impl Into<String>, message: impl ToString) -> Self {
        let message = without_library_prefixes(&message.to_string());
        let file = file.into();
        let disk = Disk::of(std::path::Path::new(&file));
        let hint = os_error_in(&message).map_or("", |kind| write_hint(kind, disk));
        TallyError::Output {
            file,
            message: format!("{message}{hint}"),
        }
    }

    /// The process exit code this error maps to (the documented contract of the binary).
    pub fn exit_code(&self) -> i32 {
        match self {
            TallyError::Config { .. } | TallyError::Input { .. } => 2,
            // Reads of inputs (data root, price book, job file, earlier closes): whatever
            // the cause (a link loop, a name too long, a device), the input is unusable.
            // Writes are `Output` and scratch reads `Invariant`: exit 4.
            TallyError::Io { .. } => 2,
            TallyError::Refused(_) => 3,
            TallyError::Overflow(_)
            | TallyError::SumOverflow(_)
            | TallyError::Invariant(_)
            | TallyError::Output { .. } => 4,
        }
    }
}

pub type Result<T> = std::result::Result<T, TallyError>;

/// `text` with control characters written `\u{..}` (a newline too), and the invisible ones
/// of [`hides_or_reorders_text`], so that a name or a library's message quoting bytes prints
/// as one line of plain text, shown as it is.
pub fn controls_escaped(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        match escaped_when_shown(c) {
            true => line.extend(c.escape_unicode()),
            false => line.push(c),
        }
    }
    line
}

/// Whether a character is written `\u{..}` where tally shows text to a person (messages,
/// `summary.md`, explain's text): a control character (a newline would break the line or the
/// table) or one of [`hides_or_reorders_text`].
pub fn escaped_when_shown(c: char) -> bool {
    c.is_control() || hides_or_reorders_text(c)
}

/// An invisible character that changes how the text around it shows: bidirectional marks,
/// embeddings, overrides and isolates (`U+202E` shows `abc` as `cba`), zero-width
/// characters, line and paragraph separators, the byte-order mark, the soft hyphen, fillers
/// that show as nothing and tag characters. Shown to a person as it is, an id holding one
/// could pass for another, so where tally shows ids (messages, `summary.md`, `report.html`,
/// explain's text) it writes them `\u{..}`.
pub fn hides_or_reorders_text(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{61c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            // Invisible fillers and joiners that show as nothing.
            | '\u{34f}'
            | '\u{115f}'
            | '\u{1160}'
            | '\u{17b4}'
            | '\u{17b5}'
            | '\u{3164}'
            | '\u{ffa0}'
            | '\u{1d173}'..='\u{1d17a}'
            // Tag characters: invisible text that can ride along an id.
            | '\u{e0000}'..='\u{e007f}'
    )
}

/// What to do about an input that cannot be read, for the causes the operating system's
/// own words leave open (appended to its message).
pub(crate) fn read_hint(kind: std::io::ErrorKind) -> &'static str {
    match kind {
        std::io::ErrorKind::PermissionDenied => {
            "; the user running tally cannot read it: check its owner and mode, and its folders'"
        }
        _ => "",
    }
}

/// The kind of the operating-system error a library's message quotes (`... (os error
/// 28)`), if any.
fn os_error_in(message: &str) -> Option<std::io::ErrorKind> {
    let at = message.rfind("(os error ")?;
    let code = message[at + "(os error ".len()..].split(')').next()?;
    Some(std::io::Error::from_raw_os_error(code.parse().ok()?).kind())
}

/// A library's error text without the prefixes it names itself by (`Parquet error: `,
/// `External: ` ...), which say nothing to the reader of a tally message.
pub(crate) fn without_library_prefixes(text: &str) -> String {
    let mut text = text;
    'strip: loop {
        for prefix in [
            "Parquet error: ",
            "Parquet argument error: ",
            "External: ",
            "EOF: ",
            "Arrow: ",
        ] {
            if let Some(rest) = text.strip_prefix(prefix) {
                text = rest;
                continue 'strip;
            }
        }
        return text.to_string();
    }
}

/// Whose disk a file that cannot be written is on: what a full disk's hint tells the
/// operator to free or move.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Disk {
    /// An output, or an output folder's lock: `--out`'s.
    Output,
    /// A split run's spill folder (`$TMPDIR/tally-spill-*`): the temporary folder's.
    Spill,
    /// In a close's history folder (its lock, [`crate::HISTORY_LOCK`], is beside the file
    /// or up to three folders above it: the close's output lock, its staging folder and its
    /// `report/`): the history folder's, which the close's `--out` must be inside.
    History,
}

impl Disk {
    /// The disk of `path`: the spill's only directly under `$TMPDIR` (an output may be
    /// named anything, `tally-spill-` too).
    fn of(path: &std::path::Path) -> Disk {
        let under_tmp = path.strip_prefix(crate::spill::temp_dir()).ok();
        let first = under_tmp.and_then(|rest| rest.components().next());
        let spill = first.is_some_and(|c| {
            (c.as_os_str().to_str())
                .is_some_and(|name| name.starts_with(crate::spill::SPILL_PREFIX))
        });
        let in_a_history = || {
            (path.ancestors().skip(1).take(4))
                .any(|folder| folder.join(crate::HISTORY_LOCK).is_file())
        };
        match spill {
            true => Disk::Spill,
            false if path.file_name() == Some(std::ffi::OsStr::new(crate::HISTORY_LOCK)) => {
                Disk::History
            }
            false if in_a_history() => Disk::History,
            false => Disk::Output,
        }
    }
}

/// What to do about an output, lock or scratch file that cannot be written (appended to
/// the operating system's message), by the disk it is on (a full disk in the temporary
/// folder is not the output's).
fn write_hint(kind: std::io::ErrorKind, disk: Disk) -> &'static str {
    use std::io::ErrorKind;
    match kind {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            "; the user running tally cannot write there: check the folder's owner and mode \
             (a run by hand as another user, such as root, leaves files this user cannot \
             replace) and that the file system is writable"
        }
        ErrorKind::AlreadyExists | ErrorKind::NotADirectory => {
            "; a part of the path is a file, not a folder: choose another output path or move \
             the file"
        }
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded if disk == Disk::Spill => {
            "; it is the spill of a split run under the temporary folder ($TMPDIR), about 50 \
             bytes a usage or ledger row: free space there or point TMPDIR at a larger disk; if \
             `df -h` shows space, the file system is out of inodes (`df -i`)"
        }
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded if disk == Disk::History => {
            "; it is in a close history folder (one holding .tally-history.lock), where the \
             closes' outputs are: free space on its disk (a run writes its outputs beside the \
             ones it replaces, so it needs room for both) or move the history folder to a \
             larger disk; if `df -h` shows space, the file system is out of inodes (`df -i`)"
        }
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            "; free space on the output's disk (a run writes its outputs beside the ones it \
             replaces, so it needs room for both) or choose an --out on a larger disk; if \
             `df -h` shows space, the file system is out of inodes (`df -i`)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The temporary folder's errors say it is `$TMPDIR` and what to do, for a folder that
    /// is missing, a file, or not writable (runs as root, as CI's, cannot see the last).
    #[test]
    fn a_temporary_folder_error_names_tmpdir_and_the_fix() {
        let said = |code: i32| {
            TallyError::temp_folder("/t", std::io::Error::from_raw_os_error(code)).to_string()
        };
        for (code, fix) in [
            (
                libc::ENOENT,
                "create it, or point TMPDIR at a folder that exists",
            ),
            (
                libc::ENOTDIR,
                "create it, or point TMPDIR at a folder that exists",
            ),
            (
                libc::EACCES,
                "make it writable for the user running tally, or point TMPDIR at a folder that is",
            ),
        ] {
            let message = said(code);
            assert!(
                message.contains("it is the temporary folder ($TMPDIR)") && message.ends_with(fix),
                "{message}"
            );
        }
        // Other causes get the hint of any write (a full disk).
        assert!(said(libc::ENOSPC).contains("free space there"));
    }

    /// A library's words around an OS error get the hint an error of ours would.
    #[test]
    fn a_full_disk_inside_a_parquet_error_says_where_the_space_goes() {
        let e = TallyError::output(
            "out/.x.tally-staging-1/balances.parquet",
            "Parquet error: fail to get inner writer: \"No space left on device (os error 28)\"",
        );
        assert_eq!(e.exit_code(), 4);
        assert!(
            e.to_string().ends_with(
                "(os error 28)\"; free space on the output's disk (a run writes its outputs \
                 beside the ones it replaces, so it needs room for both) or choose an --out on a \
                 larger disk; if `df -h` shows space, the file system is out of inodes (`df -i`)"
            ),
            "{e}"
        );
        // The same in a spill folder names the temporary folder instead; an output folder
        // named like one is an output.
        let spilled = crate::spill::temp_dir().join("tally-spill-7-0/group-1/usage.bin");
        let spill = TallyError::output(
            spilled.display().to_string(),
            "Parquet error: \"No space left on device (os error 28)\"",
        );
        let named_like_one = TallyError::write(
            "/srv/reports/tally-spill-reports/.nov.tally-staging-1/balances.parquet",
            std::io::Error::from_raw_os_error(28),
        );
        assert!(
            named_like_one
                .to_string()
                .contains("; free space on the output's disk"),
            "{named_like_one}"
        );
        // A history folder's lock names the history folder, not an --out to move.
        let history_lock = TallyError::write(
            format!("/srv/closes/{}", crate::HISTORY_LOCK),
            std::io::Error::from_raw_os_error(28),
        );
        let history_hint = "; it is in a close history folder (one holding \
                            .tally-history.lock), where the closes' outputs are: free space on \
                            its disk (a run writes its outputs beside the ones it replaces, so \
                            it needs room for both) or move the history folder to a larger \
                            disk; if `df -h` shows space, the file system is out of inodes \
                            (`df -i`)";
        assert!(
            history_lock.to_string().ends_with(history_hint),
            "{history_lock}"
        );
        // A close's output lock and staged files, in a history folder (its lock there),
        // get the history's hint too: the close cannot choose an --out elsewhere.
        let history = tempfile::tempdir().unwrap();
        std::fs::write(history.path().join(crate::HISTORY_LOCK), "").unwrap();
        for inside in [
            ".2026-12-01.tally-lock",
            ".2026-12-01.tally-staging-7/report/rejects.csv",
        ] {
            let e = TallyError::write(
                history.path().join(inside),
                std::io::Error::from_raw_os_error(28),
            );
            assert!(e.to_string().ends_with(history_hint), "{e}");
        }
        let elsewhere = TallyError::write(
            history.path().join("a/b/c/d/e.csv"),
            std::io::Error::from_raw_os_error(28),
        );
        assert!(elsewhere
            .to_string()
            .contains("free space on the output's disk"));
        assert!(
            spill.to_string().ends_with(
                "(os error 28)\"; it is the spill of a split run under the temporary folder \
                 ($TMPDIR), about 50 bytes a usage or ledger row: free space there or point \
                 TMPDIR at a larger disk; if `df -h` shows space, the file system is out of \
                 inodes (`df -i`)"
            ),
            "{spill}"
        );
        // The library's own names for its errors are not the reader's.
        assert!(
            e.to_string().starts_with(
                "writing out/.x.tally-staging-1/balances.parquet: fail to get inner writer"
            ),
            "{e}"
        );
        let external = TallyError::output(
            "o/b.parquet",
            "External: No space left on device (os error 28)",
        );
        assert!(
            external
                .to_string()
                .starts_with("writing o/b.parquet: No space left"),
            "{external}"
        );
        let denied = TallyError::output("x", "IO error: Permission denied (os error 13)");
        assert!(denied
            .to_string()
            .contains("; the user running tally cannot write there"));
        // Our own write errors carry the hint once.
        let ours = TallyError::write("x", std::io::Error::from_raw_os_error(28));
        assert_eq!(
            ours.to_string()
                .matches("free space on the output's disk")
                .count(),
            1,
            "{ours}"
        );
        // Words without an OS error, or with a code that is not a number, are left as they are.
        assert_eq!(TallyError::output("x", "bad").to_string(), "writing x: bad");
        assert_eq!(
            TallyError::output("x", "(os error x)").to_string(),
            "writing x: (os error x)"
        );
    }

    /// A message shows what it quotes as it is: a control character or an invisible one
    /// that would reorder or hide the text is written `\u{..}`, other text untouched.
    #[test]
    fn messages_escape_controls_and_text_that_reorders_or_hides() {
        assert_eq!(controls_escaped("a\nb\u{7}"), "a\\u{a}b\\u{7}");
        assert_eq!(controls_escaped("acct-\u{202e}cba"), "acct-\\u{202e}cba");
        assert_eq!(
            controls_escaped("x\u{200b}\u{feff}\u{ad}"),
            "x\\u{200b}\\u{feff}\\u{ad}"
        );
        assert_eq!(
            controls_escaped("a\u{e0041}\u{3164}"),
            "a\\u{e0041}\\u{3164}"
        );
        assert_eq!(
            controls_escaped("ünï 名 -é ✔\u{fe0f}"),
            "ünï 名 -é ✔\u{fe0f}"
        );
    }
}
