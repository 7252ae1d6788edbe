//! Stage progress: a spinner on a terminal, and one structured log line per stage
//! (`stage`, `rows`, `duration_ms`) everywhere, so cron logs show where time went.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Draw spinners (only when stderr is a terminal).
    pub interactive: bool,
}

pub struct Stage {
    name: &'static str,
    started: Instant,
    spinner: Option<ProgressBar>,
}

impl Progress {
    pub fn stage(&self, name: &'static str) -> Stage {
        let spinner = self.interactive.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(name);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Stage {
            name,
            started: Instant::now(),
            spinner,
        }
    }
}

impl Stage {
    /// Finish the stage, logging the rows it produced and how long it took.
    pub fn done(self, rows: u64) {
        let ms = self.started.elapsed().as_millis() as u64;
        if let Some(bar) = &self.spinner {
            bar.finish_and_clear();
        }
        tracing::info!(stage = self.name, rows, duration_ms = ms, "stage done");
    }
}
