//! What a run does when it is told to stop (SIGINT from a terminal, SIGTERM from cron's
//! timeout, systemd or Kubernetes, SIGHUP from a closed session): remove what it was
//! making, say so on one line and exit 128 + the signal's number, as a shell reports it.
//!
//! The default action of these signals kills the process at once: nothing says why on
//! stderr, and the spill folder under `$TMPDIR` (gigabytes at 100M events) and the output's
//! staging folder stay behind until a later run happens to clean them. The published
//! output is never at risk either way: it appears by one rename ([`crate::write::publish`]),
//! which the watcher waits for ([`publishing`]) rather than removing a staging folder that
//! is being renamed.
//!
//! SIGKILL cannot be caught: what it leaves, the next run removes (`spill::sweep_orphans`,
//! `write::create_staging`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The watcher thread's name: a panic there must not wait for the watcher.
const WATCHER: &str = "tally-signals";

/// Set once the watcher holds the publish lock and is removing the run's folders: no folder
/// may be remembered any more ([`remember`]), and a thread panicking meanwhile (its spill
/// folder gone) waits instead of printing ([`wait_if_stopping`]). The main thread's own
/// exit goes through [`claim_exit`].
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Folders this process is making that an interrupted run must not leave behind (spill
/// folders, staging folders), forgotten once removed or published as the run goes on.
static SCRATCH: Mutex<Remembered> = Mutex::new(Remembered::new());

/// Held while an output is published, and by the watcher while it cleans up: a staging
/// folder is either removed before its rename or renamed whole, never both at once. Holds
/// the outputs this process published.
static PUBLISHING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The most folders remembered; a process runs one job, which makes a few. Past this the
/// oldest are forgotten (the next run's sweep still removes them).
const MAX_SCRATCH: usize = 1024;

/// A bounded list of folders to remove (at most [`MAX_SCRATCH`], oldest dropped first).
struct Remembered {
    folders: Vec<PathBuf>,
}

impl Remembered {
    const fn new() -> Remembered {
        Remembered {
            folders: Vec::new(),
        }
    }

    fn add(&mut self, folder: PathBuf) {
        if self.folders.len() == MAX_SCRATCH {
            self.folders.remove(0);
        }
        self.folders.push(folder);
    }

    fn forget(&mut self, folder: &Path) {
        self.folders.retain(|f| f != folder);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Remember `folder` for removal if the run is interrupted; false once an interrupt is
/// being handled (the watcher's list is final then): the caller must not make the folder,
/// or remove it if made, and stop (its error is never printed: the watcher ends the run).
#[must_use]
pub fn remember(folder: PathBuf) -> bool {
    let mut scratch = lock(&SCRATCH);
    if STOPPING.load(Ordering::SeqCst) {
        return false;
    }
    scratch.add(folder);
    true
}

/// Forget `folder`: it was removed or published as the run went on.
pub fn forget(folder: &Path) {
    lock(&SCRATCH).forget(folder);
}

/// The error of work refused because an interrupt is being handled (never printed: the
/// watcher ends the process with its own line).
pub fn interrupted() -> crate::error::TallyError {
    crate::error::TallyError::Invariant("the run is being interrupted".into())
}

/// If a signal is being handled, never return: the watcher ends the process with its one
/// line and exit code. The panic hook calls this (a worker's panic must not print first).
pub fn wait_if_stopping() {
    if std::thread::current().name() == Some(WATCHER) {
        return;
    }
    while STOPPING.load(Ordering::SeqCst) {
        std::thread::park_timeout(std::time::Duration::from_secs(1));
    }
}

/// Called by the binary before it says how it ended (its `run done` line, its error line)
/// and exits on its own: a signal that comes after this waits for good (the process is
/// ending), and one that came before has the watcher's line and exit code, never both the
/// run's and the watcher's. Later calls return at once.
pub fn claim_exit() {
    static CLAIMED: std::sync::Once = std::sync::Once::new();
    CLAIMED.call_once(|| std::mem::forget(publishing()));
}

/// Hold this while renaming a staging folder into place; push the target once it is there.
pub fn publishing() -> MutexGuard<'static, Vec<PathBuf>> {
    lock(&PUBLISHING)
}

/// The one line an interrupted run prints: whether an output was published before the
/// signal came (then it is whole and the run had only its report left to print).
pub fn message(signal_name: &str, published: &[PathBuf], removed: usize) -> String {
    match published {
        [] => format!(
            "tally: interrupted by {signal_name}: nothing published (an output appears whole \
             or not at all); removed {removed} scratch or staging folder(s); run the same \
             command again"
        ),
        [.., last] => format!(
            "tally: interrupted by {signal_name} after publishing {}: that output is whole; \
             removed {removed} scratch folder(s)",
            last.display()
        ),
    }
}

/// Whether `signal` was ignored when the process started (`nohup` ignores SIGHUP, a
/// shell's background job SIGINT): a handler would undo what the caller asked for.
fn ignored_at_start(signal: i32) -> bool {
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null new action only reads the current one into `old`.
    let rc = unsafe { libc::sigaction(signal, std::ptr::null(), old.as_mut_ptr()) };
    // SAFETY: sigaction filled `old` when it returned 0.
    rc == 0 && unsafe { old.assume_init() }.sa_sigaction == libc::SIG_IGN
}

/// Watch for SIGINT, SIGTERM and SIGHUP (those not ignored at start) on a thread of its
/// own; the binary calls this once, before any work. On one: wait for a publish in
/// progress, remove the folders remembered, print [`message`] (a closed stderr is not an
/// error here) and exit 128 + the signal. A second signal while that runs ends the process
/// at once by the signal's default action: cleaning up never keeps a run from stopping.
pub fn watch() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let watched: Vec<i32> = [SIGINT, SIGTERM, SIGHUP]
        .into_iter()
        .filter(|&s| !ignored_at_start(s))
        .collect();
    let second_ends = Arc::new(AtomicBool::new(false));
    for &signal in &watched {
        signal_hook::flag::register_conditional_default(signal, Arc::clone(&second_ends))?;
    }
    let mut signals = signal_hook::iterator::Signals::new(&watched)?;
    std::thread::Builder::new()
        .name(WATCHER.into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                second_ends.store(true, Ordering::SeqCst);
                let name = match signal {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "SIGHUP",
                };
                // First the publish lock: a publish in progress ends, and a run that has
                // claimed its own exit ([`claim_exit`]) keeps it. Never released: the process
                // ends below, and no publish may start.
                let published = publishing();
                // Then no folder may be remembered (or made) any more: the list is final.
                let folders = {
                    let scratch = lock(&SCRATCH);
                    STOPPING.store(true, Ordering::SeqCst);
                    scratch.folders.clone()
                };
                let removed = remove_all(&folders);
                let _ = writeln!(std::io::stderr(), "{}", message(name, &published, removed));
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// Remove `folders`; how many existed and are gone at the end.
fn remove_all(folders: &[PathBuf]) -> usize {
    folders
        .iter()
        .filter(|f| remove_while_written(f) == Some(true))
        .count()
}

/// Remove `folder`, which other threads may still be writing into, or be about to make (it
/// is remembered before it is made). Three rounds a moment apart: each renames the folder
/// first, so that writes meet a missing path instead of filling a half-removed folder, then
/// removes the renamed one. `None` if it never existed; else whether it is gone (what is
/// left the next run removes: a renamed folder keeps its prefix and pid).
fn remove_while_written(folder: &Path) -> Option<bool> {
    let mut renamed = folder.as_os_str().to_owned();
    renamed.push(".removing");
    let renamed = PathBuf::from(renamed);
    let mut existed = false;
    for round in 0..3 {
        if folder.exists() {
            existed = true;
            let doomed = match std::fs::rename(folder, &renamed) {
                Ok(()) => renamed.as_path(),
                Err(_) => folder,
            };
            crate::spill::remove_lock_last(doomed);
        }
        if round < 2 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    crate::spill::remove_lock_last(&renamed);
    existed.then(|| !folder.exists() && !renamed.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The tests work on lists of their own: the process's list holds the live folders of
    // other tests running beside them (spill folders), which they must not remove.

    #[test]
    fn folders_are_removed_and_never_made_ones_not_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let kept = tmp.path().join("kept");
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir_all(scratch.join("inner")).unwrap();
        std::fs::write(scratch.join("inner/file"), b"x").unwrap();
        std::fs::create_dir(&kept).unwrap();
        let removed = remove_all(&[scratch.clone(), tmp.path().join("never-made")]);
        assert_eq!(removed, 1);
        assert!(!scratch.exists());
        assert!(!tmp.path().join("scratch.removing").exists());
        assert!(kept.exists());
    }

    #[test]
    fn the_message_says_whether_an_output_was_published() {
        assert_eq!(
            message("SIGTERM", &[], 2),
            "tally: interrupted by SIGTERM: nothing published (an output appears whole or not \
             at all); removed 2 scratch or staging folder(s); run the same command again"
        );
        assert_eq!(
            message("SIGINT", &[PathBuf::from("out/nightly")], 1),
            "tally: interrupted by SIGINT after publishing out/nightly: that output is whole; \
             removed 1 scratch folder(s)"
        );
    }

    #[test]
    fn the_list_keeps_at_most_its_limit_and_forgets_on_request() {
        let mut list = Remembered::new();
        for i in 0..MAX_SCRATCH + 1 {
            list.add(PathBuf::from(format!("/nonexistent/tally-limit-{i}")));
        }
        assert_eq!(list.folders.len(), MAX_SCRATCH);
        assert_eq!(list.folders[0], PathBuf::from("/nonexistent/tally-limit-1"));
        let last = PathBuf::from(format!("/nonexistent/tally-limit-{MAX_SCRATCH}"));
        assert_eq!(list.folders.last(), Some(&last));
        list.forget(&last);
        assert_eq!(list.folders.len(), MAX_SCRATCH - 1);
        assert!(!list.folders.contains(&last));
    }
}
