//! Job files (`jobs/*.toml`): what cron runs, so the crontab line stays short.
//!
//! ```toml
//! command = "reconcile"          # or "close"
//! data = "../fixtures/demo"      # relative paths are relative to the job file's folder
//! out = "../out/nightly"
//! settle = "15m"                 # at most "7d" (events this recent without a debit are pending)
//! as_of = "now"                  # optional if --as-of is given; an RFC 3339 instant or "now"
//! [alert]
//! max_discrepancies = 100
//! max_abs_delta_credits = "500"    # a decimal string or a whole number (not a float)
//! min_events_in_window = 1          # alert on an empty or stale export
//! max_rejected_rows = 1000
//! max_rejected_allocations = 0      # a rejected allocation is a period not billed
//! min_invoices = 1                  # (close) alert on a close that closed nothing
//! ```
//!
//! `out` may contain `{as_of}` (e.g. `20261201T000000Z`) or `{as_of_date}` (`2026-12-01`),
//! replaced with the run's as-of, so that each close gets its own folder.

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
    /// Any TOML integer, held to 1..=65536 where it is used (so that -1 and 2^32 are
    /// refused in those words).
    pub buckets: Option<i64>,
    /// Working memory the run sizes its groups by, e.g. "3GiB" (default 3 GiB).
    pub memory_budget: Option<String>,
    /// (close) the folder of earlier close outputs, for late events and never closing a
    /// period twice.
    pub history: Option<PathBuf>,
    #[serde(default)]
    pub alert: AlertConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    pub max_discrepancies: Option<u64>,
    /// A decimal string ("500.5") or a TOML integer.
    pub max_abs_delta_credits: Option<toml::Value>,
    pub min_events_in_window: Option<u64>,
    pub max_rejected_rows: Option<u64>,
    /// More rejected allocation rows than this alerts.
    pub max_rejected_allocations: Option<u64>,
    /// (close) fewer invoices than this alerts.
    pub min_invoices: Option<u64>,
}

/// A job file's parse error as one line: its place (`line N, column M`), and the parser's
/// words with Rust's type names said as a job file's reader would (`u64` is a whole
/// number), plus how to write what was most likely meant.
fn job_error(text: &str, e: &toml::de::Error) -> String {
    let message = crate::pricebook::toml_error(text, e)
        .replace("expected u64", "expected a whole number of 0 or more")
        .replace("expected i64", "expected a whole number")
        // A path key's (`data = 5`): a string all the same, and the hint below applies.
        .replace("expected path string", "expected a string (a path)")
        .replace(
            "invalid type: map, expected a string",
            "a TOML date-time, expected a string",
        );
    let how = if message.contains("date-time, expected a string") {
        "; write an instant in quotes: as_of = \"2026-11-20T00:00:00Z\"".to_string()
    } else if message.contains("to fit in target type") {
        // TOML's integers are 64-bit: a larger one ("too large", "too small") is a parse
        // error, before any range check could name the key's range.
        past_64_bits_hint(text, e.span().map_or(0, |span| span.start))
    } else if message.contains("missing field") {
        "; a job file needs data and out (paths relative to the job file's folder)".to_string()
    } else if message.contains("expected a string") {
        let key = e.span().and_then(|span| key_of_line(text, span.start));
        key.and_then(quoting_hint)
            .unwrap_or_else(|| "; write the value in quotes".to_string())
    } else {
        String::new()
    };
    format!("{message}{how}")
}

/// How to write a number past TOML's 64 bits at byte `at`, by the key it is the value of.
fn past_64_bits_hint(text: &str, at: usize) -> String {
    const ALERT_COUNTS: [&str; 5] = [
        "max_discrepancies",
        "min_events_in_window",
        "max_rejected_rows",
        "max_rejected_allocations",
        "min_invoices",
    ];
    let (table, key) = (table_of(text, at), key_of_line(text, at));
    if let (None, Some(hint)) = (table, key.and_then(quoting_hint)) {
        return hint;
    }
    match (table, key) {
        (None, Some("buckets")) => {
            format!("; buckets must be in 1..={}", crate::route::MAX_BUCKETS)
        }
        (Some("alert"), Some("max_abs_delta_credits")) => {
            "; alert.max_abs_delta_credits must be below 10^15".to_string()
        }
        (Some("alert"), Some(key)) if ALERT_COUNTS.contains(&key) => {
            format!(
                "; alert.{key} must be a whole number from 0 to {}",
                i64::MAX
            )
        }
        _ => format!("; a TOML whole number is from {} to {}", i64::MIN, i64::MAX),
    }
}

/// The key a job file's line sets with the value at byte `at` (`settle` of `settle = 15`,
/// `min_invoices` of `alert = { min_invoices = 5 }`), if it sets one; at a byte before the
/// line's first `=`, the line's first key.
fn key_of_line(text: &str, at: usize) -> Option<&str> {
    let (line, column) = line_at(text, at)?;
    let before_value = match line.get(..column).and_then(|head| head.rfind('=')) {
        Some(eq) => &line[..eq],
        None => line.split_once('=')?.0,
    };
    let key = before_value.rsplit(['{', ',']).next()?.trim();
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some(key)
}

/// The table byte `at` is in: the inline table its line opens before it (`alert` of
/// `alert = { min_invoices = 5 }`), else the last `[table]` header above its line; `None`
/// at the top level.
fn table_of(text: &str, at: usize) -> Option<&str> {
    let (line, column) = line_at(text, at)?;
    if let Some(brace) = line.get(..column).and_then(|head| head.rfind('{')) {
        return key_of_line(text, at - column + brace);
    }
    let above = &text[..at - column];
    let header = above
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))?;
    header
        .trim_start_matches('[')
        .split(']')
        .next()
        .map(str::trim)
}

/// The line holding byte `at` of `text` (without its newline), and `at`'s byte in it.
fn line_at(text: &str, at: usize) -> Option<(&str, usize)> {
    let start = text.get(..at)?.rfind('\n').map_or(0, |n| n + 1);
    let line = text[start..].lines().next().unwrap_or("");
    Some((line, at - start))
}

/// How to write the value of the job file's string key `key`: in quotes, with an example
/// (`None` for a key that takes no string).
fn quoting_hint(key: &str) -> Option<String> {
    let example = quoted_example(key)?;
    Some(format!(
        "; write the value in quotes: {key} = \"{example}\""
    ))
}

/// A value of the job file's string key `key`, as its hint shows it.
fn quoted_example(key: &str) -> Option<&'static str> {
    Some(match key {
        "command" => "reconcile",
        "data" => "../data",
        "out" => "../out/nightly",
        "history" => "../out/closes",
        "settle" => "15m",
        "as_of" => "now",
        "memory_budget" => "3GiB",
        _ => return None,
    })
}

/// The placeholders an output path may hold.
pub const OUT_PLACEHOLDERS: [&str; 2] = ["{as_of}", "{as_of_date}"];

/// Refuse an output path with a brace that is not one of [`OUT_PLACEHOLDERS`]: a misspelt
/// placeholder would otherwise be a literal folder name, and every run (every month's close)
/// would write to that one folder. `name` is how the message names the setting (`out`,
/// `--out`).
pub fn check_placeholders(name: &str, out: &Path) -> std::result::Result<(), String> {
    let text = out.to_string_lossy();
    let mut stripped = text.to_string();
    for known in OUT_PLACEHOLDERS {
        stripped = stripped.replace(known, "");
    }
    match stripped.find(['{', '}']) {
        None => Ok(()),
        Some(at) => {
            let unknown: String = stripped[at..]
                .chars()
                .take_while(|c| *c != '/')
                .take(40)
                .collect();
            Err(format!(
                "{name} \"{text}\" holds \"{unknown}\", which is not a placeholder: use {{as_of}} \
                 (e.g. 20261201T000000Z) or {{as_of_date}} (2026-12-01), and no other braces"
            ))
        }
    }
}

/// Whether an output path names one folder per as-of (holds a placeholder: the job file's
/// `out` is checked to hold no other braces).
pub fn is_per_as_of(out: &Path) -> bool {
    out.to_string_lossy().contains('{')
}

/// The output folder `out` names, as it is published: without a `.` after its first part
/// (`out/.` and `out/` are `out`). The checks before a run look at the path given, and the
/// publish renames to it: with a trailing `.` they disagreed (a folder checked as missing
/// was published over, a rename onto `out/.` failed after the whole run).
pub fn output_folder(out: &Path) -> std::path::PathBuf {
    out.components().collect()
}

/// Replace `{as_of}` and `{as_of_date}` in an output path.
pub fn expand_out(out: &Path, as_of: crate::time::Micros) -> std::path::PathBuf {
    if !is_per_as_of(out) {
        return out.to_path_buf();
    }
    // An as-of with a fraction of a second keeps it (`20261120T000000.5Z`): two as-ofs
    // named alike would share one folder, and a close at the second would be refused as
    // one of other inputs. Whole seconds, every scheduled run's, read as they always did.
    let stamp = crate::close::compact_stamp(as_of);
    let date = crate::time::format_instant(as_of)
        .get(..10)
        .unwrap_or_default()
        .to_string();
    // On the path's bytes: a name that is not UTF-8 keeps its bytes (as text, they were
    // replaced by U+FFFD and the run published into another folder).
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let bytes = replace_bytes(out.as_os_str().as_bytes(), b"{as_of}", stamp.as_bytes());
    let bytes = replace_bytes(&bytes, b"{as_of_date}", date.as_bytes());
    std::path::PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

/// `haystack` with every `needle` in it replaced by `with`.
fn replace_bytes(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// The largest job file read: 1 MiB (a job file is a few hundred bytes).
pub const MAX_JOB_FILE_BYTES: u64 = 1 << 20;

impl JobFile {
    /// Read a job file; relative `data`/`out` paths are resolved against its folder.
    pub fn load(path: &Path) -> Result<JobFile> {
        let name = path.display().to_string();
        // Read as given, a pipe too: the operator names it (`--job <(envsubst < job.toml)`,
        // a here-document), unlike the files tally finds in folders; but no more than a job
        // file could be (`/dev/zero` named by mistake was read until memory ran out).
        // The size first: the cut may fall inside a character.
        let bytes = crate::write::read_at_most(path, MAX_JOB_FILE_BYTES)
            .map_err(|e| {
                let hint = crate::error::read_hint(e.kind());
                TallyError::config(&name, format!("cannot read job file: {e}{hint}"))
            })?
            .ok_or_else(|| {
                TallyError::config(
                    &name,
                    "is larger than 1 MiB: not a job file (a job file is a few lines of TOML)",
                )
            })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            TallyError::config(
                &name,
                format!("cannot read job file: {}", crate::pricebook::NOT_UTF8_TOML),
            )
        })?;
        // The error's line and column and the parser's words, on one line (its own text
        // draws the line with a caret over several lines, which a one-line error folds).
        let mut job: JobFile = toml::from_str(&text).map_err(|e| {
            TallyError::config(
                &name,
                format!("not a valid job file: {}", job_error(&text, &e)),
            )
        })?;
        // An empty path would be the job file's own folder (or nothing at all, for a job
        // file named without a folder): a slip, not a folder meant.
        let empty = [
            ("data", Some(&job.data)),
            ("out", Some(&job.out)),
            ("history", job.history.as_ref()),
        ]
        .into_iter()
        .find(|(_, path)| path.is_some_and(|p| p.as_os_str().is_empty()));
        if let Some((key, _)) = empty {
            return Err(TallyError::config(
                &name,
                format!(
                    "{key} = \"\" is empty: give a folder (a relative path is taken from the \
                     job file's folder)"
                ),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        if job.data.is_relative() {
            job.data = base.join(&job.data);
        }
        if let Some(c) = job
            .command
            .as_ref()
            .filter(|c| !["reconcile", "close"].contains(&c.as_str()))
        {
            return Err(TallyError::config(
                &name,
                format!("command = \"{c}\" is not a command: use \"reconcile\" or \"close\""),
            ));
        }
        check_placeholders("out", &job.out).map_err(|e| TallyError::config(&name, e))?;
        if job.out.is_relative() {
            job.out = base.join(&job.out);
        }
        if let Some(h) = job.history.as_mut().filter(|h| h.is_relative()) {
            *h = base.join(&*h);
        }
        Ok(job)
    }
}

/// A size such as `2GiB`, `512MiB`, `1.5GB` or `4000000` (bytes), from 1 byte to
/// 2^64 - 1 (a fraction of a byte is dropped); `None` for anything else.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    // Checked: `*` panics past 96 bits (`79228162514264337593543950335TiB`).
    let value = rust_decimal::Decimal::from_str_exact(number)
        .ok()?
        .checked_mul(rust_decimal::Decimal::from(scale))?;
    let bytes = u64::try_from(value.trunc()).ok()?;
    (bytes > 0).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes go from 1 byte to 2^64 - 1 bytes; 0, one byte past and a number too large to
    /// multiply by its unit are not sizes (and do not panic).
    #[test]
    fn sizes_go_from_one_byte_to_the_largest_u64_and_one_past_is_none() {
        assert_eq!(parse_bytes("1"), Some(1));
        assert_eq!(parse_bytes("1B"), Some(1));
        assert_eq!(parse_bytes("1.9"), Some(1));
        assert_eq!(parse_bytes("0.9"), None);
        assert_eq!(parse_bytes("0GiB"), None);
        assert_eq!(parse_bytes("3GiB"), Some(3 << 30));
        assert_eq!(parse_bytes("1.5GB"), Some(1_500_000_000));
        assert_eq!(parse_bytes("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_bytes("18446744073709551616"), None);
        assert_eq!(parse_bytes("16777215TiB"), Some(16_777_215 << 40));
        assert_eq!(parse_bytes("16777216TiB"), None);
        assert_eq!(parse_bytes("79228162514264337593543950335TiB"), None);
        assert_eq!(parse_bytes("79228162514264337593543950336"), None);
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("3 GiB"), Some(3 << 30));
        assert_eq!(parse_bytes("3gib"), None);
    }

    /// A job file that cannot be read as a job file is refused on one line with the place,
    /// the parser's words in a job file's terms and the usual fix.
    #[test]
    fn a_job_file_parse_error_is_one_line_with_the_fix() {
        let refused = |text: &str| {
            let e = toml::from_str::<JobFile>(text).err().unwrap();
            job_error(text, &e)
        };
        assert_eq!(
            refused("command = \"reconcile\"\nout = \"o\"\n"),
            "line 1, column 1: missing field `data`; a job file needs data and out (paths \
             relative to the job file's folder)"
        );
        assert_eq!(
            refused("data = \"d\"\nout = \"o\"\nbuckets = \"4\"\n"),
            "line 3, column 11: invalid type: string \"4\", expected a whole number"
        );
        // The hint names the key the line sets, with a value of its kind.
        assert_eq!(
            refused("data = \"d\"\nout = \"o\"\nmemory_budget = 3000000000\n"),
            "line 3, column 17: invalid type: integer `3000000000`, expected a string; write \
             the value in quotes: memory_budget = \"3GiB\""
        );
        assert_eq!(
            refused("data = \"d\"\nout = \"o\"\n  settle=15\n"),
            "line 3, column 10: invalid type: integer `15`, expected a string; write the value \
             in quotes: settle = \"15m\""
        );
        assert_eq!(
            refused("data = \"d\"\nout = \"o\"\ncommand = 1\n"),
            "line 3, column 11: invalid type: integer `1`, expected a string; write the value \
             in quotes: command = \"reconcile\""
        );
        assert_eq!(
            refused("data = 5\nout = \"o\"\n"),
            "line 1, column 8: invalid type: integer `5`, expected a string (a path); write \
             the value in quotes: data = \"../data\""
        );
        // A whole number past TOML's 64 bits names the range the key holds, either way...
        let past = |key: &str, number: &str| {
            refused(&format!("data = \"d\"\nout = \"o\"\n{key} = {number}\n"))
        };
        assert_eq!(
            past("buckets", "99999999999999999999"),
            "line 3, column 11: number too large to fit in target type; buckets must be in \
             1..=65536"
        );
        assert_eq!(
            past("buckets", "-99999999999999999999"),
            "line 3, column 11: number too small to fit in target type; buckets must be in \
             1..=65536"
        );
        assert_eq!(
            past("[alert]\nmin_invoices", "9223372036854775808"),
            "line 4, column 16: number too large to fit in target type; alert.min_invoices \
             must be a whole number from 0 to 9223372036854775807"
        );
        assert_eq!(
            past("alert = { min_invoices", "9223372036854775808 }"),
            "line 3, column 26: number too large to fit in target type; alert.min_invoices \
             must be a whole number from 0 to 9223372036854775807"
        );
        assert_eq!(
            past("[alert]\nmax_abs_delta_credits", "99999999999999999999"),
            "line 4, column 25: number too large to fit in target type; \
             alert.max_abs_delta_credits must be below 10^15"
        );
        // ...for a key that takes a string, how to write one...
        assert_eq!(
            past("settle", "-99999999999999999999"),
            "line 3, column 10: number too small to fit in target type; write the value in \
             quotes: settle = \"15m\""
        );
        // ...and for a key of no such range (misspelt, or in another table) TOML's own.
        for (key, column) in [("bucket", 10), ("[alert]\nbuckets", 11)] {
            let line = 3 + key.matches('\n').count();
            assert_eq!(
                past(key, "99999999999999999999"),
                format!(
                    "line {line}, column {column}: number too large to fit in target type; a \
                     TOML whole number is from -9223372036854775808 to 9223372036854775807"
                )
            );
        }
        // A table is named as a job file's reader knows it, not by its Rust type.
        assert_eq!(
            refused("data = \"d\"\nout = \"o\"\nalert = 5\n"),
            "line 3, column 9: invalid type: integer `5`, expected a table: write [alert] on a \
             line of its own, its keys on the lines below"
        );
    }

    /// The key a line sets: bare keys only, wherever the error's byte is on the line.
    #[test]
    fn the_key_of_a_line_is_its_bare_key() {
        let text = "a = 1\n  settle=15\n[alert]\n\"quoted\" = 2\n";
        assert_eq!(key_of_line(text, 0), Some("a"));
        assert_eq!(key_of_line(text, 4), Some("a"));
        assert_eq!(key_of_line(text, 6), Some("settle"));
        assert_eq!(key_of_line(text, 15), Some("settle"));
        assert_eq!(key_of_line(text, 18), None);
        assert_eq!(key_of_line(text, 27), None);
        assert_eq!(key_of_line(text, text.len()), None);
        assert_eq!(key_of_line(text, text.len() + 1), None);
        // In an inline table, the key whose value is at the byte.
        let inline = "alert = { max_rejected_rows = 1, min_invoices = 2 }\n";
        assert_eq!(key_of_line(inline, 30), Some("max_rejected_rows"));
        assert_eq!(key_of_line(inline, 49), Some("min_invoices"));
        assert_eq!(key_of_line(inline, 0), Some("alert"));
    }

    /// The table of a byte: an inline table opened before it on its line, else the last
    /// header above its line.
    #[test]
    fn the_table_of_a_byte_is_its_inline_table_or_the_header_above() {
        let text = "a = 1\n[alert] # thresholds\nmin_invoices = 2\nb = { c = 3 }\n";
        assert_eq!(table_of(text, 4), None);
        assert_eq!(table_of(text, text.find('2').unwrap()), Some("alert"));
        assert_eq!(table_of(text, text.find('3').unwrap()), Some("b"));
        assert_eq!(table_of(text, text.find("b =").unwrap()), Some("alert"));
    }

    /// `{as_of}` names the instant to the second, and keeps a fraction of one when the
    /// as-of has it; `{as_of_date}` names its UTC date.
    #[test]
    fn out_placeholders_name_the_as_of() {
        let at = |text: &str| crate::time::parse_instant(text).unwrap();
        let out = Path::new("closes/{as_of}-{as_of_date}");
        let expanded = |text: &str| expand_out(out, at(text)).display().to_string();
        assert_eq!(
            expanded("2026-11-20T00:00:00Z"),
            "closes/20261120T000000Z-2026-11-20"
        );
        assert_eq!(
            expanded("2026-11-20T00:00:00.5Z"),
            "closes/20261120T000000.5Z-2026-11-20"
        );
        assert_eq!(
            expanded("2026-11-20T23:59:59.000001Z"),
            "closes/20261120T235959.000001Z-2026-11-20"
        );
        assert_eq!(
            expand_out(Path::new("plain"), at("2026-11-20T00:00:00.5Z")),
            Path::new("plain")
        );
    }
}
