//! Stage progress: a progress bar (or a spinner where the amount of work is unknown) on a
//! terminal, nothing under cron, and one structured log line per stage everywhere
//! (`stage`, `rows_in`, `rows_out`, `duration_ms`), so cron logs show where time went.

use indicatif::{ProgressBar, ProgressStyle, WeakProgressBar};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The bar or spinner on the terminal now (at most one: a stage run in the background draws
/// none). Weak: a stage dropped on an error takes its bar off the terminal.
static DRAWN: Mutex<Option<WeakProgressBar>> = Mutex::new(None);

fn drawn() -> Option<ProgressBar> {
    DRAWN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .as_ref()
        .and_then(WeakProgressBar::upgrade)
}

/// Where log lines go: stderr, with the bar on the terminal (if any) lifted while a line is
/// written, so that a line logged during a stage (a group starting, a warning) does not
/// land at the end of the bar's line. The log writes each line whole in one call.
pub struct LogWriter;

/// The [`LogWriter`] (the binary's log subscriber makes one a line).
pub fn log_writer() -> LogWriter {
    LogWriter
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match drawn() {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Draw bars and spinners (only when stderr is a terminal).
    pub interactive: bool,
}

pub struct Stage {
    name: &'static str,
    started: Instant,
    /// The process's CPU time (user + system, all threads) when the stage started.
    cpu_started: Duration,
    bar: Option<ProgressBar>,
}

/// CPU time the process has used so far (user + system, all threads).
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

impl Progress {
    /// A stage of unknown length: a spinner.
    pub fn stage(&self, name: &'static str) -> Stage {
        self.start(name, None)
    }

    /// A stage of `len` steps: a bar advanced with [`Stage::tick`].
    pub fn counted(&self, name: &'static str, len: u64) -> Stage {
        self.start(name, Some(len))
    }

    fn start(&self, name: &'static str, len: Option<u64>) -> Stage {
        let bar = self.interactive.then(|| {
            let (bar, template) = match len {
                Some(n) => (
                    ProgressBar::new(n),
                    "{msg:28} [{bar:30}] {pos}/{len} [{elapsed}]",
                ),
                None => (ProgressBar::new_spinner(), "{spinner} {msg} [{elapsed}]"),
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message(name);
            bar.enable_steady_tick(Duration::from_millis(120));
            *DRAWN
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(bar.downgrade());
            bar
        });
        Stage {
            name,
            started: Instant::now(),
            cpu_started: cpu_time(),
            bar,
        }
    }
}

impl Stage {
    /// One step of a counted stage done (callable from any thread).
    pub fn tick(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// Finish the stage, logging rows in and out, how long it took and the CPU time the
    /// process used meanwhile (`cpu_ms` / `duration_ms` tells how parallel it ran).
    pub fn done(self, rows_in: u64, rows_out: u64) {
        let took = self.started.elapsed();
        let cpu = cpu_time().saturating_sub(self.cpu_started);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        tracing::info!(
            stage = self.name,
            rows_in,
            rows_out,
            duration_ms = took.as_millis() as u64,
            cpu_ms = cpu.as_millis() as u64,
            "stage done"
        );
    }
}

/// The log line of a finished stage. A stage run in the background, beside one that draws
/// a bar, is timed by its caller and logged with this once the bar is gone (a line written
/// while a bar is drawn would break the terminal's line).
pub fn log_stage(name: &'static str, rows_in: u64, rows_out: u64, took: Duration) {
    tracing::info!(
        stage = name,
        rows_in,
        rows_out,
        duration_ms = took.as_millis() as u64,
        "stage done"
    );
}
