//! Stage progress: a progress bar (or a spinner where the amount of work is unknown) on a
//! terminal, nothing under cron, and one structured log line per stage everywhere
//! (`stage`, `rows_in`, `rows_out`, `duration_ms`), so cron logs show where time went.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Draw bars and spinners (only when stderr is a terminal).
    pub interactive: bool,
}

pub struct Stage {
    name: &'static str,
    started: Instant,
    bar: Option<ProgressBar>,
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
            bar
        });
        Stage {
            name,
            started: Instant::now(),
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

    /// Finish the stage, logging rows in and out and how long it took.
    pub fn done(self, rows_in: u64, rows_out: u64) {
        let took = self.started.elapsed();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        log_stage(self.name, rows_in, rows_out, took);
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
