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

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Set once a signal came: the watcher is removing the run's folders and will end the
/// process. Work failing meanwhile (its spill folder gone) must not print its own error or
/// exit first: [`wait_if_stopping`].
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Folders this process is making that an interrupted run must not leave behind (spill
/// folders, staging folders). Paths are never reused within a process, so one that is
/// already gone (finished, published or dropped) is simply skipped when removing.
static SCRATCH: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Held while an output is published, and by the watcher while it cleans up: a staging
/// folder is either removed before its rename or renamed whole, never both at once. Holds
/// the outputs this process published.
static PUBLISHING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The most folders remembered; a process runs one job, which makes a few. Past this the
/// oldest are forgotten (the next run's sweep still removes them).
const MAX_SCRATCH: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Remember `folder` for removal if the run is interrupted.
pub fn remember(folder: PathBuf) {
    let mut scratch = lock(&SCRATCH);
    if scratch.len() == MAX_SCRATCH {
        scratch.remove(0);
    }
    scratch.push(folder);
}

/// If a signal came, never return: the watcher ends the process with its one line and exit
/// code. Called where a failed run would print its error and exit.
pub fn wait_if_stopping() {
    while STOPPING.load(Ordering::SeqCst) {
        std::thread::park_timeout(std::time::Duration::from_secs(1));
    }
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

/// Watch for SIGINT, SIGTERM and SIGHUP on a thread of its own (the binary calls this
/// once, before any work). On one: wait for a publish in progress, remove the folders
/// remembered, print [`message`] and exit 128 + the signal.
pub fn watch() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("tally-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let name = match signal {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "SIGHUP",
                };
                STOPPING.store(true, Ordering::SeqCst);
                // Never released: the process ends below, and no publish may start.
                let published = publishing();
                let removed = remove_remembered();
                eprintln!("{}", message(name, &published, removed));
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// Remove every remembered folder that still exists; how many were removed. Other
/// threads may still be writing into them: a removal that meets a file made meanwhile is
/// tried again a few times, and what is left the next run removes.
fn remove_remembered() -> usize {
    let folders = lock(&SCRATCH).clone();
    let mut removed = 0;
    for folder in folders.iter().filter(|f| f.exists()) {
        for _ in 0..5 {
            if std::fs::remove_dir_all(folder).is_ok() || !folder.exists() {
                removed += 1;
                break;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_folders_are_removed_and_gone_ones_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let kept = tmp.path().join("kept");
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir_all(scratch.join("inner")).unwrap();
        std::fs::write(scratch.join("inner/file"), b"x").unwrap();
        std::fs::create_dir(&kept).unwrap();
        remember(scratch.clone());
        remember(tmp.path().join("never-made"));
        let removed = remove_remembered();
        assert!(removed >= 1);
        assert!(!scratch.exists());
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
    fn the_list_keeps_at_most_its_limit() {
        for i in 0..MAX_SCRATCH + 1 {
            remember(PathBuf::from(format!("/nonexistent/tally-limit-{i}")));
        }
        let scratch = lock(&SCRATCH);
        assert_eq!(scratch.len(), MAX_SCRATCH);
        assert!(!scratch.contains(&PathBuf::from("/nonexistent/tally-limit-0")));
        assert!(scratch.contains(&PathBuf::from(format!(
            "/nonexistent/tally-limit-{MAX_SCRATCH}"
        ))));
    }
}
