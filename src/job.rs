//! Job files (`jobs/*.toml`): what cron runs, so the crontab line stays short.
//!
//! ```toml
//! command = "reconcile"          # or "close"
//! data = "../fixtures/demo"      # relative paths are relative to the job file's folder
//! out = "../out/nightly"
//! settle = "15m"
//! as_of = "now"                  # optional; an RFC 3339 instant, or "now" (the default)
//! [alert]
//! max_discrepancies = 100
//! max_abs_delta_credits = "500"
//! ```

use crate::error::{Result, TallyError};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    pub command: Option<String>,
    pub data: PathBuf,
    pub out: PathBuf,
    pub settle: Option<String>,
    pub as_of: Option<String>,
    pub buckets: Option<u32>,
    #[serde(default)]
    pub alert: AlertConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    pub max_discrepancies: Option<u64>,
    pub max_abs_delta_credits: Option<String>,
}

impl JobFile {
    /// Read a job file; relative `data`/`out` paths are resolved against its folder.
    pub fn load(path: &Path) -> Result<JobFile> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| TallyError::config(&name, format!("cannot read job file: {e}")))?;
        let mut job: JobFile = toml::from_str(&text).map_err(|e| {
            TallyError::config(
                &name,
                format!(
                    "not a valid job file: {}",
                    e.to_string().replace('\n', " ").trim()
                ),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if job.data.is_relative() {
            job.data = base.join(&job.data);
        }
        if job.out.is_relative() {
            job.out = base.join(&job.out);
        }
        Ok(job)
    }
}
