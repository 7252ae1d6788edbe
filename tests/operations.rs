//! Running from cron for real: exit codes, the output lock, faults (SIGKILL at random
//! moments, read-only and full disks), determinism across threads and file order.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const AS_OF: &str = "2026-11-20T00:00:00Z";
const CLOSE_AS_OF: &str = "2026-12-01T00:00:00Z";

fn generated(dir: &Path, events: u64) -> PathBuf {
    generated_data(dir, 400, events, 9, "0.02")
}

fn cmd(command: &str, data: &Path, out: &Path) -> Command {
    let as_of = if command == "close" {
        CLOSE_AS_OF
    } else {
        AS_OF
    };
    run_command(command, data, as_of, out)
}

fn leftovers(parent: &Path) -> Vec<String> {
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tally-staging"))
        .collect()
}

/// The refusal of a run whose output folder `out` this test process holds the lock of.
fn writing_right_now(out: &Path) -> String {
    format!(
        "tally: refused: another tally run is writing {} right now; wait for it to finish (held \
         by pid {})\n",
        out.display(),
        std::process::id()
    )
}

/// `max_abs_delta_credits` is a decimal string or a TOML integer, as the price book's
/// amounts are: both alert alike past it (exit 1), and neither below it.
#[test]
fn the_delta_threshold_is_a_decimal_string_or_a_whole_number() {
    let tmp = tempfile::tempdir().unwrap();
    let _data = generated(tmp.path(), 5_000);
    let run = |threshold: &str| {
        let text = format!(
            "command = \"reconcile\"\ndata = \"data\"\nout = \"out\"\nas_of = \
             \"2026-11-20T00:00:00Z\"\n[alert]\nmax_abs_delta_credits = {threshold}\n"
        );
        let job = write_job(tmp.path(), "job.toml", &text);
        tally(&["reconcile", "--job", job.to_str().unwrap()])
    };
    let (number, string) = (run("1"), run("\"1\""));
    assert_eq!(number.status.code(), Some(1), "{}", stderr(&number));
    assert!(
        stderr(&number).contains("credits exceeds the alert threshold of 1"),
        "{}",
        stderr(&number)
    );
    assert_eq!(stderr(&number), stderr(&string));
    assert_eq!(string.status.code(), Some(1));
    let under = run("999999999");
    assert_eq!(under.status.code(), Some(0), "{}", stderr(&under));
}

#[test]
fn discrepancies_above_the_job_threshold_exit_1_after_publishing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 5_000);
    let job = write_job(tmp.path(), "job.toml", "command = \"reconcile\"\ndata = \"data\"\nout = \"out\"\nas_of = \"2026-11-20T00:00:00Z\"\n[alert]\nmax_discrepancies = 10\n");
    let out = tally(&["reconcile", "--job", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .starts_with("tally: alert: 100 discrepancy rows exceed the alert threshold of 10"),
        "{}",
        stderr(&out)
    );
    assert!(
        tmp.path().join("out/summary.json").exists(),
        "outputs are published before alerting"
    );
    // Under the threshold: exit 0.
    std::fs::write(
        &job,
        std::fs::read_to_string(&job)
            .unwrap()
            .replace("= 10\n", "= 100\n"),
    )
    .unwrap();
    assert_eq!(
        tally(&["reconcile", "--job", job.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    let _ = data;
}

/// --groups and --buckets at their limits give the default run's bytes; one past (and 0)
/// is exit 2 naming the range (TigerBeetle's rule: test at the limit and one past it).
#[test]
fn groups_and_buckets_at_their_limits_and_one_past() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = repo().join("fixtures/demo");
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let ran = run_command("reconcile", &demo, AS_OF, &out)
            .args(extra)
            .output()
            .unwrap();
        (ran, out)
    };
    let (plain, plain_out) = run("plain", &[]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let outputs = |out: &Path| {
        (folder_bytes(out).into_iter())
            .filter(|(name, _)| name != "manifest.json")
            .collect::<Vec<_>>()
    };
    for (flag, most) in [("--groups", "256"), ("--buckets", "65536")] {
        let (ran, out) = run(&format!("at-{flag}"), &[flag, most]);
        assert!(ran.status.success(), "{flag} {most}: {}", stderr(&ran));
        assert!(
            outputs(&out) == outputs(&plain_out),
            "{flag} {most}: other bytes"
        );
        let past = (most.parse::<u32>().unwrap() + 1).to_string();
        // Below 0 and one past u32 or i64 too: refused in the same words, not clap's.
        let too_large = [
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
        ];
        for bad in ["0", past.as_str(), "4294967296", "-1"]
            .into_iter()
            .chain(too_large)
        {
            let (ran, out) = run(&format!("past-{flag}-{bad}"), &[flag, bad]);
            assert_eq!(ran.status.code(), Some(2), "{flag} {bad}");
            assert_eq!(
                stderr(&ran),
                format!("tally: command line: {flag} {bad} must be in 1..={most}\n")
            );
            assert!(!out.exists());
        }
    }
}

/// A bad value in a job file names the job file and its key, not the command line (cron
/// passes no such flag); the same value as a flag names the flag.
#[test]
fn a_bad_setting_names_the_job_file_key_or_the_flag_it_came_from() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job.toml");
    let job_text = |extra: &str| {
        format!("command = \"reconcile\"\ndata = \"data\"\nout = \"out\"\nas_of = \"2026-11-20T00:00:00Z\"\n{extra}")
    };
    let cases = [
        (
            "settle = \"soon\"\n",
            "settle = \"soon\" is not a duration such as 15m, 900s or 1h",
        ),
        // The TOML parser's refusals: one line with the place, plain words, the fix.
        (
            "settel = \"1h\"\n",
            "not a valid job file: line 5, column 1: unknown field `settel`, expected one of \
             `command`, `data`, `out`, `settle`, `as_of`, `buckets`, `memory_budget`, \
             `history`, `alert`",
        ),
        (
            "settle = 15\n",
            "not a valid job file: line 5, column 10: invalid type: integer `15`, expected a \
             string; write the value in quotes: settle = \"15m\"",
        ),
        (
            "as_of = 2026-11-20T00:00:00Z\n",
            "not a valid job file: line 4, column 9: a TOML date-time, expected a string; write \
             an instant in quotes: as_of = \"2026-11-20T00:00:00Z\"",
        ),
        (
            "[alert]\nmax_discrepancies = -1\n",
            "not a valid job file: line 6, column 21: invalid value: integer `-1`, expected a \
             whole number of 0 or more",
        ),
        (
            "as_of = \"tomorrow\"\n",
            "as_of = \"tomorrow\" is not an RFC 3339 instant such as 2026-11-20T00:00:00Z, a date \
             such as 2026-11-20 (its midnight, UTC) or `now`",
        ),
        (
            // A year RFC 3339 cannot write: the manifest could not be read back.
            "as_of = \"+10000-01-01\"\n",
            "as_of = \"+10000-01-01\" is outside the years 0001 to 9999",
        ),
        (
            "memory_budget = \"lots\"\n",
            "memory_budget = \"lots\" is not a size of at least 1 byte and below 2^64 bytes, \
             such as 3GiB, 512MiB or 4GB",
        ),
        (
            // Too large to multiply by its unit: refused, not a panic (exit 4).
            "memory_budget = \"79228162514264337593543950335TiB\"\n",
            "memory_budget = \"79228162514264337593543950335TiB\" is not a size of at least 1 \
             byte and below 2^64 bytes, such as 3GiB, 512MiB or 4GB",
        ),
        (
            "memory_budget = \"0GiB\"\n",
            "memory_budget = \"0GiB\" is not a size of at least 1 byte and below 2^64 bytes, \
             such as 3GiB, 512MiB or 4GB",
        ),
        ("buckets = 0\n", "buckets = 0 must be in 1..=65536"),
        ("buckets = 65537\n", "buckets = 65537 must be in 1..=65536"),
        ("buckets = -1\n", "buckets = -1 must be in 1..=65536"),
        (
            "buckets = 4294967296\n",
            "buckets = 4294967296 must be in 1..=65536",
        ),
        (
            "memory_budget = 3000000000\n",
            "not a valid job file: line 5, column 17: invalid type: integer `3000000000`, \
             expected a string; write the value in quotes: memory_budget = \"3GiB\"",
        ),
        (
            "alert = 5\n",
            "not a valid job file: line 5, column 9: invalid type: integer `5`, expected a \
             table: write [alert] on a line of its own, its keys on the lines below",
        ),
        (
            "command = \"reconcil\"\n",
            "command = \"reconcil\" is not a command: use \"reconcile\" or \"close\"",
        ),
        (
            "[alert]\nmax_abs_delta_credits = \"many\"\n",
            "alert.max_abs_delta_credits = \"many\" is not a decimal",
        ),
        (
            "[alert]\nmax_abs_delta_credits = \"0.00000000000000000000000000001\"\n",
            "alert.max_abs_delta_credits = \"0.00000000000000000000000000001\" has more digits \
             than tally holds: at most 28 after the point, and at most \
             79228162514264337593543950335 with the point removed (trailing zeros after the \
             point do not count); write it with fewer digits",
        ),
        (
            "[alert]\nmax_abs_delta_credits = 50.5\n",
            "alert.max_abs_delta_credits = 50.5 is not a decimal: write it as a string such as \
             \"500.5\" or as a whole number",
        ),
        (
            "[alert]\nmax_abs_delta_credits = -5\n",
            "alert.max_abs_delta_credits = -5 must not be negative (it bounds |delta|)",
        ),
        (
            "[alert]\nmax_abs_delta_credits = \"-5\"\n",
            "alert.max_abs_delta_credits = \"-5\" must not be negative (it bounds |delta|)",
        ),
        (
            "[alert]\nmax_abs_delta_credits = \"1000000000000000\"\n",
            "alert.max_abs_delta_credits = \"1000000000000000\" is out of range (|x| must be \
             < 10^15)",
        ),
        (
            "settle = \"1500ms\"\n",
            "settle = \"1500ms\" is not a whole number of seconds (a run records its settle in \
             seconds)",
        ),
        (
            // Past what i64 microseconds hold: too long, not "not a duration".
            "settle = \"9223372036854775807s\"\n",
            "settle = \"9223372036854775807s\" is longer than 7 days: events that old without \
             a debit are missing it, not pending",
        ),
        (
            "settle = \"8d\"\n",
            "settle = \"8d\" is longer than 7 days: events that old without a debit are missing \
             it, not pending",
        ),
        // An empty path is the job file's folder, or nothing: a slip.
        (
            "data = \"\"\n",
            "data = \"\" is empty: give a folder (a relative path is taken from the job file's \
             folder)",
        ),
        (
            "out = \"\"\n",
            "out = \"\" is empty: give a folder (a relative path is taken from the job file's \
             folder)",
        ),
        (
            "history = \"\"\n",
            "history = \"\" is empty: give a folder (a relative path is taken from the job file's \
             folder)",
        ),
    ];
    for (extra, message) in cases {
        // A repeated key is a TOML error: the case's `as_of` (or `command`, `data`, `out`)
        // replaces the default one.
        let text = if extra.starts_with("as_of") {
            job_text("").replace("as_of = \"2026-11-20T00:00:00Z\"\n", extra)
        } else if extra.starts_with("command") {
            job_text("").replace("command = \"reconcile\"\n", extra)
        } else if extra.starts_with("data") {
            job_text("").replace("data = \"data\"\n", extra)
        } else if extra.starts_with("out") {
            job_text("").replace("out = \"out\"\n", extra)
        } else {
            job_text(extra)
        };
        std::fs::write(&job, text).unwrap();
        let out = tally(&["reconcile", "--job", job.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{extra}: {}", stderr(&out));
        assert_eq!(
            stderr(&out),
            format!("tally: {}: {message}\n", job.display())
        );
    }
    std::fs::write(&job, job_text("")).unwrap();
    // A settle flag's refusals: not a duration (a negative window too, not taken for an
    // unknown flag `-5`), and longer than the 7-day limit (one second past it; `15M`, 15
    // months). At the limit the run goes on, to the data root this job's folder lacks.
    let not_a_duration = "is not a duration such as 15m, 900s or 1h";
    let too_long = "is longer than 7 days: events that old without a debit are missing it, not \
                    pending";
    let months = format!("{too_long} (`M` is months; minutes are `m`)");
    let settle_cases = [
        ("soon", not_a_duration),
        ("-5m", not_a_duration),
        ("604801s", too_long),
        ("15M", months.as_str()),
        // u64::MAX seconds and a carried 10^9 ns panicked inside humantime (exit 4).
        ("18446744073709551615s 1000000000ns", too_long),
    ];
    let settle_run = |settle: &str| {
        tally(&[
            "reconcile",
            "--job",
            job.to_str().unwrap(),
            "--settle",
            settle,
        ])
    };
    for (settle, why) in settle_cases {
        let out = settle_run(settle);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(
            stderr(&out),
            format!("tally: command line: --settle {settle} {why}\n")
        );
    }
    // `explain` reads the settle the same way (one flag, one job key, one parser).
    let explain_settle = tally(&[
        "explain",
        "--job",
        job.to_str().unwrap(),
        "--account",
        "a",
        "--settle",
        "15M",
    ]);
    assert_eq!(explain_settle.status.code(), Some(2));
    assert_eq!(
        stderr(&explain_settle),
        format!("tally: command line: --settle 15M {months}\n")
    );
    let at_limit = settle_run("7d");
    assert!(
        stderr(&at_limit).ends_with(
            "data: data root does not exist (a relative --data is taken from the working \
             folder, a job file's data from the job file's folder)\n"
        ),
        "{}",
        stderr(&at_limit)
    );
    // `history` belongs to a close: a reconcile job holding it is refused, not obeyed, by
    // the run and by `explain` of that job alike.
    std::fs::write(&job, job_text("history = \"closes\"\n")).unwrap();
    let refusal = format!(
        "tally: {}: history = {:?} is a close setting; a reconcile does not read earlier closes: remove it from this job file\n",
        job.display(),
        // Relative paths in a job file are resolved against its folder.
        tmp.path().join("closes").display().to_string()
    );
    let out = tally(&["reconcile", "--job", job.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out), refusal);
    let explain = ["explain", "--job", job.to_str().unwrap(), "--account", "a"];
    let out = tally(&explain);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out), refusal);
}

/// Data roots whose file system is odd stop the run with exit 2 and one line naming the
/// path, instead of reading files twice, walking a link loop forever, blocking on a pipe,
/// dropping a partition behind a broken link or mangling a name; and an output folder
/// inside a dataset folder is refused (the next run would read it as input).
#[test]
fn odd_data_root_file_systems_are_refused_with_exit_2() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let usage = data.join("usage");
    let refused = |made: &Path, message: &str| {
        let out = tmp.path().join("out");
        let run = run_command("reconcile", &data, AS_OF, &out)
            .output()
            .unwrap();
        assert_eq!(
            run.status.code(),
            Some(2),
            "{}: {}",
            made.display(),
            stderr(&run)
        );
        assert!(
            stderr(&run).starts_with(message) && stderr(&run).lines().count() == 1,
            "{}: {}",
            made.display(),
            stderr(&run)
        );
        assert!(!out.exists());
        let _ = std::fs::remove_file(made);
    };
    let lp = usage.join("loop");
    symlink(".", &lp).unwrap();
    refused(
        &lp,
        "tally: usage/loop: this folder is reached a second time through a symbolic link",
    );
    let fifo = usage.join("fifo.parquet");
    let watched = crate::common::Fifo::at(&fifo);
    refused(
        &fifo,
        "tally: usage/fifo.parquet: not a regular file (a pipe, socket or device)",
    );
    drop(watched);
    let broken = usage.join("date=2026-11-30");
    symlink("/nonexistent/partition", &broken).unwrap();
    refused(&broken, "tally: usage/date=2026-11-30: a symbolic link that cannot be followed (No such file or directory");
    let looping = usage.join("a.parquet");
    symlink("a.parquet", &looping).unwrap();
    refused(
        &looping,
        "tally: usage/a.parquet: a symbolic link that cannot be followed (Too many levels of symbolic links",
    );
    let not_utf8 = usage.join(std::ffi::OsStr::from_bytes(b"\xff.parquet"));
    // A valid usage file: only its name is wrong.
    std::fs::copy(usage.join("bucket=9/part-0.parquet"), &not_utf8).unwrap();
    refused(
        &not_utf8,
        "tally: usage/\u{fffd}.parquet: the name is not UTF-8",
    );

    // Outputs inside a dataset folder: refused, unless a `_`/`.` folder hides them. The
    // same through a link to the dataset folder, or a data root given through a link
    // (compared as written, both published inside usage/, and the next run read them).
    let inside = usage.join("run");
    let link_to_usage = tmp.path().join("usage-link");
    symlink(&usage, &link_to_usage).unwrap();
    let link_to_data = tmp.path().join("data-link");
    symlink(&data, &link_to_data).unwrap();
    // A hidden name that is a link to a folder that is not hidden, and a `..` after a link
    // (the kernel follows the link first: `lk/../x` is `usage/x`).
    std::fs::create_dir_all(usage.join("real")).unwrap();
    symlink(usage.join("real"), usage.join(".hide")).unwrap();
    let lk = tmp.path().join("lk");
    symlink(usage.join("real"), &lk).unwrap();
    for (root, out) in [
        (data.clone(), inside.clone()),
        (data.clone(), link_to_usage.join("run")),
        (link_to_data.clone(), usage.join("run")),
        (data.clone(), usage.join(".hide/run")),
        (data.clone(), lk.join("../run")),
    ] {
        let run = run_command("reconcile", &root, AS_OF, &out)
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
        assert!(
            stderr(&run).contains("the output folder is inside the data root's usage/ folder"),
            "{}",
            stderr(&run)
        );
        assert!(!inside.exists() && !usage.join("real/run").exists());
    }
    std::fs::remove_file(usage.join(".hide")).unwrap();
    std::fs::remove_dir(usage.join("real")).unwrap();
    let hidden = usage.join("_runs/nightly");
    let run = run_command("reconcile", &data, AS_OF, &hidden)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
}

/// A run whose working folder was deleted while the shell was in it says so, beside the
/// failed write of its relative `--out` (it said only "No such file or directory"); a run
/// with absolute paths does not need the folder and publishes.
#[test]
fn a_deleted_working_folder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("gone");
    let demo = repo().join("fixtures/demo");
    let in_gone_folder = |out: &str| {
        std::fs::create_dir(&gone).unwrap();
        // The shell enters the folder and removes it, then becomes tally there.
        Command::new("sh")
            .arg("-c")
            .arg(r#"cd "$1" && rmdir "$1" && shift && exec "$@""#)
            .arg("sh")
            .arg(&gone)
            .arg(env!("CARGO_BIN_EXE_tally"))
            .args([
                "reconcile",
                "--data",
                demo.to_str().unwrap(),
                "--as-of",
                AS_OF,
            ])
            .args(["--out", out])
            .env("TALLY_LOG", "warn")
            .output()
            .unwrap()
    };
    let relative = in_gone_folder("out");
    assert_eq!(relative.status.code(), Some(4), "{}", stderr(&relative));
    assert_eq!(
        stderr(&relative),
        "tally: writing ./.out.tally-lock: No such file or directory (os error 2); note: the \
         working folder no longer exists (deleted while the shell was in it), so relative \
         paths name nothing: cd to a folder that exists, or give absolute paths\n"
    );
    let out = tmp.path().join("out");
    let absolute = in_gone_folder(out.to_str().unwrap());
    assert_eq!(absolute.status.code(), Some(0), "{}", stderr(&absolute));
    assert!(out.join("manifest.json").is_file());
}

/// A reader that went away (stdout and stderr pipes closed before tally writes to them:
/// `| head`, a dead logger) changes nothing: the run publishes and exits 0 (it aborted
/// with 134 on a failed log line, and a failed summary line made it exit 4).
#[test]
fn closed_stdout_and_stderr_do_not_change_the_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut child = run_command("reconcile", &repo().join("fixtures/demo"), AS_OF, &out)
        .env("TALLY_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(out.join("manifest.json").is_file());
}

/// Flags the parser refuses fail like everything else: one `tally:` line, exit 2.
#[test]
fn unknown_or_malformed_flags_are_one_line_and_exit_2() {
    for (args, message) in [
        (
            &["reconcile", "--bogus"][..],
            "tally: command line: unexpected argument '--bogus' found",
        ),
        (
            &["reconcile", "--buckets", "abc"][..],
            "tally: command line: invalid value 'abc' for '--buckets <BUCKETS>'",
        ),
        (
            &["reconcile", "--groups", "12x"][..],
            "tally: command line: invalid value '12x' for '--groups <GROUPS>': invalid digit found in string",
        ),
        (
            &["--log-format", "xml", "scan", "--data", "x"][..],
            "tally: command line: invalid value 'xml' for '--log-format <LOG_FORMAT>'",
        ),
        (
            &["recocile"][..],
            "tally: command line: unrecognized subcommand 'recocile' (a similar subcommand exists: 'reconcile')",
        ),
        // The flag that is missing is named (clap puts it on the line after).
        (
            &["merge"][..],
            "tally: command line: the following required arguments were not provided: --out \
             <OUT>; `tally merge --help` lists its flags",
        ),
        // A flag of other commands says whose it is.
        (
            &["reconcile", "--force", "--data", "x"][..],
            "tally: command line: unexpected argument '--force' found; --force is a flag of \
             close and merge; `tally reconcile --help` lists its flags",
        ),
        (
            &["generate", "--history=h"][..],
            "tally: command line: unexpected argument '--history' found; --history is a flag \
             of close, merge, explain and verify; `tally generate --help` lists its flags",
        ),
        // A command's flag before the command's name.
        (
            &["--data", "x", "reconcile"][..],
            "tally: command line: unexpected argument '--data' found; put --data after \
             `reconcile`; `tally reconcile --help` lists its flags",
        ),
        // ...not the flag's own value, even when it names a command.
        (
            &["--out", "merge", "reconcile", "--data", "x"][..],
            "tally: command line: unexpected argument '--out' found; put --out after \
             `reconcile`; `tally reconcile --help` lists its flags",
        ),
        (
            &["--data", "x", "--out", "close", "reconcile"][..],
            "tally: command line: unexpected argument '--data' found; put --data after \
             `reconcile`; `tally reconcile --help` lists its flags",
        ),
        // clap's guess at a similar flag (`--job` for `--json`) is left out when the flag
        // is another command's: it would point away from the command that takes it.
        (
            &["close", "--json"][..],
            "tally: command line: unexpected argument '--json' found; --json is a flag of \
             explain; `tally close --help` lists its flags",
        ),
        (
            &["--json", "close"][..],
            "tally: command line: unexpected argument '--json' found; --json is a flag of \
             explain; `tally --help` lists the commands and flags",
        ),
        // ...and kept for a flag no command takes.
        (
            &["close", "--jobs", "j.toml"][..],
            "tally: command line: unexpected argument '--jobs' found (a similar argument \
             exists: '--job'); `tally close --help` lists its flags",
        ),
        // Before a command that does not take it: whose flag it is.
        (
            &["--force", "reconcile"][..],
            "tally: command line: unexpected argument '--force' found; --force is a flag of \
             close and merge; `tally --help` lists the commands and flags",
        ),
        // A command's name given as a flag's value is not taken for the command.
        (
            &["reconcil", "--data", "close"][..],
            "tally: command line: unrecognized subcommand 'reconcil' (a similar subcommand \
             exists: 'reconcile'); `tally --help` lists the commands and flags",
        ),
    ] {
        let out = tally(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let text = stderr(&out);
        assert!(
            text.starts_with(message) && text.lines().count() == 1,
            "{args:?}: {text}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // An argument that is not UTF-8 is refused in the same one line, never a panic.
    {
        use std::os::unix::ffi::OsStrExt;
        let out = tally_command(&["reconcil", "--data"])
            .arg(std::ffi::OsStr::from_bytes(b"\xff"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert_eq!(
            stderr(&out),
            "tally: command line: unrecognized subcommand 'reconcil' (a similar subcommand \
             exists: 'reconcile'); `tally --help` lists the commands and flags\n"
        );
    }
    let help = tally(&["reconcile", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--as-of"));
}

#[test]
fn a_job_file_for_the_other_command_is_refused_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let job = write_job(
        tmp.path(),
        "job.toml",
        "command = \"close\"\ndata = \"data\"\nout = \"out\"\n",
    );
    let out = with_job("reconcile", &job, AS_OF);
    assert_refused_naming(&out, &job, "this job file is for `close`, not `reconcile`");
}

#[test]
fn two_closes_at_once_on_one_output_path_publish_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 300_000);
    let out = tmp.path().join("close");
    let a = cmd("close", &data, &out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b = cmd("close", &data, &out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (a_pid, b_pid) = (a.id(), b.id());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let published = [&a, &b]
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stdout).contains("close published"))
        .count();
    assert_eq!(published, 1, "a: {a:?}\nb: {b:?}");
    let loser =
        if a.status.code() == Some(0) && String::from_utf8_lossy(&a.stdout).contains("published") {
            &b
        } else {
            &a
        };
    assert_eq!(loser.status.code(), Some(3), "{loser:?}");
    // The holder is named unless it let the lock go before the loser looked.
    let winner = if std::ptr::eq(loser, &a) {
        b_pid
    } else {
        a_pid
    };
    let busy = format!(
        "tally: refused: another tally run is writing {} right now; wait for it to finish",
        out.display()
    );
    assert!(
        [
            format!("{busy}\n"),
            format!("{busy} (held by pid {winner})\n")
        ]
        .contains(&stderr(loser)),
        "{}",
        stderr(loser)
    );
    // Afterwards the same close is a no-op.
    let again = cmd("close", &data, &out).output().unwrap();
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already closed"));
}

/// The output lock's refusal names the process holding it (here the test itself), from
/// /proc/locks: the on-call engineer's next question.
#[test]
fn a_held_output_lock_is_refused_naming_its_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 2_000);
    let out = tmp.path().join("out");
    let lock = std::fs::File::create(tmp.path().join(".out.tally-lock")).unwrap();
    lock.try_lock().unwrap();
    let refused = cmd("reconcile", &data, &out).output().unwrap();
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert_eq!(stderr(&refused), writing_right_now(&out));
    lock.unlock().unwrap();
    assert!(cmd("reconcile", &data, &out)
        .output()
        .unwrap()
        .status
        .success());
}

/// splitmix64: a tiny seeded generator for kill delays (the test is repeatable).
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A close that closes no period (its as-of before every period's end) publishes and, with
/// `min_invoices`, alerts (exit 1) instead of passing as a good month; a reconcile job with
/// that close-only key is refused (exit 2) before it runs.
#[test]
fn a_close_that_closes_nothing_alerts_with_min_invoices() {
    let tmp = tempfile::tempdir().unwrap();
    let _data = generated(tmp.path(), 2_000);
    let job = write_job(tmp.path(), "close.toml", "command = \"close\"\ndata = \"data\"\nout = \"closes/{as_of_date}\"\n[alert]\nmin_invoices = 1\n");
    let early = with_job("close", &job, AS_OF);
    assert_eq!(early.status.code(), Some(1), "{}", stderr(&early));
    assert_eq!(
        stderr(&early),
        "tally: alert: only 0 invoices, fewer than the alert minimum of 1 (an as-of before every \
         period's end, or a data root without the month?)\n"
    );
    let due = with_job("close", &job, CLOSE_AS_OF);
    assert_eq!(due.status.code(), Some(0), "{}", stderr(&due));
    // Every threshold crossed is named, on the one line.
    let both = write_job(tmp.path(), "both.toml", "command = \"close\"\ndata = \"data\"\nout = \"both/{as_of_date}\"\n[alert]\nmin_invoices = 1\nmin_events_in_window = 1\n");
    let early = with_job("close", &both, AS_OF);
    assert_eq!(early.status.code(), Some(1), "{}", stderr(&early));
    assert_eq!(
        stderr(&early),
        "tally: alert: only 0 events in the window, fewer than the alert minimum of 1 (stale \
         export?); only 0 invoices, fewer than the alert minimum of 1 (an as-of before every \
         period's end, or a data root without the month?)\n"
    );

    let nightly = write_job(
        tmp.path(),
        "nightly.toml",
        "command = \"reconcile\"\ndata = \"data\"\nout = \"nightly\"\n[alert]\nmin_invoices = 1\n",
    );
    assert_refused_naming(
        &with_job("reconcile", &nightly, AS_OF),
        &nightly,
        "alert.min_invoices = 1 is a close setting; a reconcile writes no invoices: \
         remove it from this job file",
    );
    assert!(!tmp.path().join("nightly").exists());
}

/// An allocation row whose plan the price book lacks is an account-period not billed: the
/// run logs a `WARN` line naming it, and a job with `max_rejected_allocations = 0` alerts
/// (exit 1) where `max_rejected_rows` sized for usage lets it through; a no-op close reads
/// the count back from its `summary.json` and alerts again.
#[test]
fn a_rejected_allocation_warns_and_alerts_with_max_rejected_allocations() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let extra = tmp.path().join("extra");
    let credits = tally::amount::Milli::from_units(100);
    write_november_allocations(
        &extra,
        &["acct-typo-1", "acct-typo-2"],
        "gold-typo",
        credits,
    );
    std::fs::rename(
        extra.join("allocations/part-0.parquet"),
        data.join("allocations/typo.parquet"),
    )
    .unwrap();
    let thresholds = "[alert]\nmax_rejected_rows = 1000\nmax_rejected_allocations = 0\n";
    let nightly = write_job(
        tmp.path(),
        "nightly.toml",
        &format!("command = \"reconcile\"\ndata = \"data\"\nout = \"nightly\"\n{thresholds}"),
    );
    let run = with_job("reconcile", &nightly, AS_OF);
    assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
    let warning = "2 allocation rows are rejected (unknown_plan 2) in periods this run \
                   covers: an account-period whose only allocation row is rejected is not \
                   billed (no balances, no invoice at close, its usage rejected \
                   no_allocation). The first: allocations/typo.parquet row 0: plan_id \
                   \"gold-typo\" is not a plan of the price book. See rejects.csv; fix the \
                   price book or the export and rerun";
    assert_eq!(dataset_warnings(&run), [warning]);
    let alert = "tally: alert: 2 rejected allocation rows exceed the alert threshold of 0 (an \
                 account-period whose only allocation row is rejected is not billed: see \
                 rejects.csv)\n";
    assert!(stderr(&run).ends_with(alert), "{}", stderr(&run));
    assert!(
        tmp.path().join("nightly/summary.json").exists(),
        "published"
    );

    let close = write_job(
        tmp.path(),
        "close.toml",
        &format!(
            "command = \"close\"\ndata = \"data\"\nout = \"closes/{{as_of_date}}\"\n{thresholds}"
        ),
    );
    for rerun in [false, true] {
        let run = with_job("close", &close, CLOSE_AS_OF);
        assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
        assert!(stderr(&run).ends_with(alert), "{}", stderr(&run));
        // The rerun alerts from the published summary.json, without computing (and so
        // without the warning).
        let no_op = String::from_utf8_lossy(&run.stdout).contains("already closed");
        assert_eq!(no_op, rerun, "{}", String::from_utf8_lossy(&run.stdout));
        assert_eq!(dataset_warnings(&run).len(), usize::from(!rerun));
    }
    // The bundled fixtures reject no allocation: the shipped jobs, which set the key to 0,
    // pass on them (`the_shipped_jobs_run_and_the_close_alerts_before_the_usage_lands`).
    let summary = json(&tmp.path().join("closes/2026-12-01/summary.json"));
    assert_eq!(summary["datasets"]["allocations"]["rejected"], 2);
    assert_eq!(summary["allocations_rejected_covered"], 2);

    // A run that does not cover the rows' period (a reconcile in December; a close under
    // the history of the November close) lists them in rejects but neither warns nor
    // alerts: a row of a month closed long ago must not alert every night.
    let december = with_job("reconcile", &nightly, "2026-12-05T00:00:00Z");
    assert_eq!(dataset_warnings(&december), Vec::<String>::new());
    assert!(
        !stderr(&december).contains("rejected allocation"),
        "{}",
        stderr(&december)
    );
    let summary = json(&tmp.path().join("nightly/summary.json"));
    assert_eq!(summary["datasets"]["allocations"]["rejected"], 2);
    assert_eq!(summary["allocations_rejected_covered"], 0);
    // A close covers every period ending by its as-of that no earlier close closed: the
    // November rows, rejected by the November close too, are still unbilled, so a January
    // close under that history warns of them again.
    let later = write_job(
        tmp.path(),
        "later.toml",
        &format!("command = \"close\"\ndata = \"data\"\nout = \"closes/{{as_of_date}}\"\nhistory = \"closes\"\n{thresholds}"),
    );
    let january = with_job("close", &later, "2027-01-01T00:00:00Z");
    assert_eq!(january.status.code(), Some(1), "{}", stderr(&january));
    assert!(stderr(&january).ends_with(alert), "{}", stderr(&january));

    // A plan retired from the price book after the close that billed its allocations: the
    // rows are rejected from then on, but their period is closed under --history, so the
    // next close neither warns nor alerts.
    let second = tmp.path().join("second");
    let data = demo_copy(&second);
    write_november_allocations(&second.join("extra"), &["acct-retired"], "retired", credits);
    std::fs::rename(
        second.join("extra/allocations/part-0.parquet"),
        data.join("allocations/retired.parquet"),
    )
    .unwrap();
    let book = std::fs::read_to_string(data.join("pricebook.toml")).unwrap();
    let retired =
        "\n[plans.retired]\nname = \"Retired\"\nprice = \"1\"\nincluded_credits = \"10\"\n";
    std::fs::write(data.join("pricebook.toml"), format!("{book}{retired}")).unwrap();
    let closes = write_job(
        &second,
        "close.toml",
        &format!("command = \"close\"\ndata = \"data\"\nout = \"closes/{{as_of_date}}\"\nhistory = \"closes\"\n{thresholds}"),
    );
    let november = with_job("close", &closes, CLOSE_AS_OF);
    assert_eq!(november.status.code(), Some(0), "{}", stderr(&november));
    std::fs::write(data.join("pricebook.toml"), book).unwrap();
    let january = with_job("close", &closes, "2027-01-01T00:00:00Z");
    assert_eq!(january.status.code(), Some(0), "{}", stderr(&january));
    assert!(
        !stderr(&january).contains("rejected allocation"),
        "{}",
        stderr(&january)
    );
    let summary = json(&second.join("closes/2027-01-01/summary.json"));
    assert_eq!(summary["datasets"]["allocations"]["rejected"], 1);
    assert_eq!(summary["allocations_rejected_covered"], 0);
}

/// A row rejected before its plan is looked at (a null plan, a negative credit, an unknown
/// status) counts towards `allocations_rejected_covered` by its period as a row of an
/// unknown plan does: not when its period is one the run does not cover (a typo in an old
/// month must not alert every night), also without a readable account; a row whose
/// period cannot be read (null, or ending before it starts) counts in every run.
#[test]
fn rows_rejected_before_the_plan_check_count_by_their_period_too() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let t = |s: &str| Some(tally::time::parse_instant(s).unwrap());
    let (may, june) = (t("2026-05-01T00:00:00Z"), t("2026-06-01T00:00:00Z"));
    let (nov, dec) = (t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z"));
    let credits = |units: i64| Some(tally::amount::Milli::from_units(units));
    // (account, plan, start, end, credits, status): rows 0-3 of May, each rejected; rows 4
    // and 5 of no readable period; rows 6 and 7 of November, the run's month (row 7 with
    // no account: judged by its period alone).
    let rows = [
        (Some("acct-may-1"), None, may, june, credits(10), "active"),
        (
            Some("acct-may-2"),
            Some("pro"),
            may,
            june,
            credits(-1),
            "active",
        ),
        (
            Some("acct-may-3"),
            Some("pro"),
            may,
            june,
            credits(10),
            "paused",
        ),
        (None, Some("pro"), may, june, credits(10), "active"),
        (
            Some("acct-none"),
            Some("pro"),
            None,
            june,
            credits(10),
            "active",
        ),
        (
            Some("acct-backwards"),
            Some("pro"),
            june,
            may,
            credits(10),
            "active",
        ),
        (
            Some("acct-nov"),
            Some("pro"),
            nov,
            dec,
            credits(10),
            "paused",
        ),
        (None, Some("pro"), nov, dec, credits(10), "active"),
    ];
    let allocations = tally::write::Table::default()
        .opt_str("account_id", rows.iter().map(|r| r.0))
        .opt_str("plan_id", rows.iter().map(|r| r.1))
        .opt_ts("period_start", rows.iter().map(|r| r.2))
        .opt_ts("period_end", rows.iter().map(|r| r.3))
        .opt_credits("included_credits", rows.iter().map(|r| r.4))
        .opt_ts("billing_anchor", rows.iter().map(|_| None))
        .str("status", rows.iter().map(|r| r.5))
        .finish();
    let path = data.join("allocations/rejected.parquet");
    tally::write::write_parquet(&path, &allocations).unwrap();
    let out = tmp.path().join("out");
    let run = run_command("reconcile", &data, AS_OF, &out)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let summary = json(&out.join("summary.json"));
    assert_eq!(summary["datasets"]["allocations"]["rejected"], 8);
    assert_eq!(summary["allocations_rejected_covered"], 4);
    let warning = "4 allocation rows are rejected (bad_value 1, null_required 2, \
                   unknown_status 1) in periods this run covers: an account-period whose \
                   only allocation row is rejected is not billed (no balances, no invoice at \
                   close, its usage rejected no_allocation). The first: \
                   allocations/rejected.parquet row 4: period_start is null but required (4 \
                   more, of periods this run does not cover, are in rejects.csv too). See \
                   rejects.csv; fix the price book or the export and rerun";
    assert_eq!(dataset_warnings(&run), [warning]);
    // A close covers every period ending by its as-of that no earlier close closed: May
    // too, so all eight count. A later close under its history counts them again, as it
    // counts any account-period no close billed (the null account's too): the rows are
    // unmended.
    let closes = tmp.path().join("closes");
    for as_of in ["2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"] {
        let out = closes.join(&as_of[..10]);
        let run = run_command("close", &data, as_of, &out)
            .args(["--history", closes.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
        assert_eq!(
            json(&out.join("summary.json"))["allocations_rejected_covered"],
            8
        );
    }
}

/// The job files cron runs (jobs/), on the bundled fixtures: both publish with exit 0; the
/// close alerts (exit 1, published) on a data root whose month has no usage yet (the export
/// late at 00:30 on the 1st), which it would otherwise invoice as a month without usage.
#[test]
fn the_shipped_jobs_run_and_the_close_alerts_before_the_usage_lands() {
    let tmp = tempfile::tempdir().unwrap();
    let job = |name: &str| repo().join("jobs").join(name);
    let run_job = |command: &str, job: &Path, data: &Path, as_of: &str, out: &str| {
        let closes = tmp.path().join(out).join("closes");
        let mut c = tally_command(&[command, "--job", job.to_str().unwrap(), "--as-of", as_of]);
        c.arg("--data").arg(data);
        match command {
            "close" => c
                .arg("--history")
                .arg(&closes)
                .arg("--out")
                .arg(closes.join("2026-12-01")),
            _ => c.arg("--out").arg(tmp.path().join(out)),
        };
        c.output().unwrap()
    };
    let demo = repo().join("fixtures/demo");
    let nightly = run_job(
        "reconcile",
        &job("nightly-reconcile.toml"),
        &demo,
        AS_OF,
        "nightly",
    );
    assert_eq!(nightly.status.code(), Some(0), "{}", stderr(&nightly));
    let close = run_job(
        "close",
        &job("period-close.toml"),
        &demo,
        CLOSE_AS_OF,
        "close",
    );
    assert_eq!(close.status.code(), Some(0), "{}", stderr(&close));

    let early = tmp.path().join("early");
    copy_dir(&demo, &early);
    for dataset in ["usage", "debits"] {
        std::fs::remove_dir_all(early.join(dataset)).unwrap();
        std::fs::create_dir(early.join(dataset)).unwrap();
    }
    let close = run_job(
        "close",
        &job("period-close.toml"),
        &early,
        CLOSE_AS_OF,
        "early-close",
    );
    assert_eq!(close.status.code(), Some(1), "{}", stderr(&close));
    // The log says why before the alert does: nothing to read yet.
    assert_eq!(
        dataset_warnings(&close),
        [
            "usage/ holds no *.parquet file, so the run reads no usage events; if an export \
             has not arrived yet, rerun once it has",
            "debits/ holds no *.parquet file, so the run reads no ledger entries; if an export \
             has not arrived yet, rerun once it has",
        ]
    );
    assert_eq!(
        stderr_past_dataset_warnings(&close),
        "tally: alert: only 0 events in the window, fewer than the alert minimum of 1 (stale \
         export?)\n"
    );
    let published = tmp
        .path()
        .join("early-close/closes/2026-12-01/invoices.parquet");
    assert!(published.exists(), "an alert comes after publishing");
}

/// On a terminal (a pseudo-terminal made by util-linux `script`), progress bars are drawn
/// for the human log and not into a JSON log (`--log-format json` on a terminal, as under
/// `docker run -t`): there every line stays one JSON object, and stdout's summary line.
#[test]
fn progress_bars_stay_out_of_a_json_log_on_a_terminal() {
    if !Path::new("/usr/bin/script").exists() {
        assert_ne!(
            unsafe_uid(),
            0,
            "root (as CI runs) without util-linux script"
        );
        eprintln!("skipped: needs util-linux script for a pseudo-terminal");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let demo = repo().join("fixtures/demo");
    let on_a_terminal = |format: &str, out: &str| {
        let command = format!(
            "{} reconcile --data {} --as-of {AS_OF} --out {} --log-format {format}",
            env!("CARGO_BIN_EXE_tally"),
            demo.display(),
            tmp.path().join(out).display()
        );
        let ran = Command::new("/usr/bin/script")
            .args(["-qec", &command, "/dev/null"])
            .env_remove("TALLY_LOG")
            .output()
            .unwrap();
        assert!(ran.status.success(), "{}", stderr(&ran));
        String::from_utf8_lossy(&ran.stdout).replace('\r', "")
    };
    let human = on_a_terminal("human", "human");
    assert!(human.contains("load usage and ledger        ["), "{human}");
    let json = on_a_terminal("json", "json");
    let published = format!("{}: reconcile published", tmp.path().join("json").display());
    for line in json.lines() {
        assert!(
            line.starts_with('{') && line.ends_with('}') || line.starts_with(&published),
            "not a JSON line: {line:?}"
        );
    }
    assert!(json.contains("\"message\":\"run done\""), "{json}");
}

/// jobs/sharded-local.sh: N shard processes and the merge publish the single run's
/// outputs wherever the job file and its `out` are (JOB and OUT together); a bad N, or a
/// JOB without its OUT, is exit 2 before any shard starts.
#[test]
fn the_local_sharded_job_publishes_the_single_runs_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = repo().join("fixtures/demo");
    // No `command`: a reconcile's job file, as tally reads it.
    let job = write_job(
        tmp.path(),
        "nightly.toml",
        &format!("data = {:?}\nout = \"ignored\"\n", demo.to_str().unwrap()),
    );
    let script = |n: &str, job: Option<&Path>, out: Option<&Path>| {
        let mut c = Command::new("bash");
        c.arg(repo().join("jobs/sharded-local.sh")).arg(n);
        c.env("TALLY", env!("CARGO_BIN_EXE_tally"))
            .env("AS_OF", AS_OF)
            .env("TALLY_LOG", "warn");
        c.env_remove("JOB").env_remove("OUT");
        if let Some(job) = job {
            c.env("JOB", job);
        }
        if let Some(out) = out {
            c.env("OUT", out);
        }
        c.output().unwrap()
    };
    let sharded = tmp.path().join("deployed/out/nightly");
    let out = script("3", Some(&job), Some(&sharded));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let single = tmp.path().join("single");
    let run = tally_command(&[
        "reconcile",
        "--job",
        job.to_str().unwrap(),
        "--as-of",
        AS_OF,
    ])
    .arg("--out")
    .arg(&single)
    .output()
    .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    for table in [
        "discrepancies.parquet",
        "balances.parquet",
        "rejects.parquet",
    ] {
        assert!(
            std::fs::read(sharded.join(table)).unwrap()
                == std::fs::read(single.join(table)).unwrap(),
            "{table} differs"
        );
    }

    // Again with fewer shards: the merge reads this run's 2, not the third left by the 3.
    let again = script("2", Some(&job), Some(&sharded));
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(sharded.with_extension("shards").join("shard=2").is_dir());
    // A close job: the script runs its command (in single quotes, TOML's literal string).
    let close_job = write_job(
        tmp.path(),
        "close.toml",
        &format!(
            "command = 'close'\ndata = {:?}\nout = \"ignored\"\n",
            demo.to_str().unwrap()
        ),
    );
    let closed = tmp.path().join("deployed/closes/2026-12-01");
    let mut close = Command::new("bash");
    close.arg(repo().join("jobs/sharded-local.sh")).arg("2");
    close.env("TALLY", env!("CARGO_BIN_EXE_tally"));
    close.env("AS_OF", CLOSE_AS_OF).env("TALLY_LOG", "warn");
    close.env("JOB", &close_job).env("OUT", &closed);
    let ran = close.output().unwrap();
    assert_eq!(ran.status.code(), Some(0), "{}", stderr(&ran));
    assert!(closed.join("invoices.parquet").is_file());
    // A job file's command that is neither (tally would refuse it too).
    let odd = write_job(
        tmp.path(),
        "odd.toml",
        "command = \"merge\"\ndata = \"x\"\n",
    );
    let odd_job = script("2", Some(&odd), Some(&sharded));
    assert_eq!(odd_job.status.code(), Some(2));
    assert_eq!(
        stderr(&odd_job),
        format!(
            "sharded-local.sh: {}: command = \"merge\" is not reconcile or close\n",
            odd.display()
        )
    );

    let bad_n = script("zero", None, None);
    assert_eq!(bad_n.status.code(), Some(2));
    assert_eq!(
        stderr(&bad_n),
        "sharded-local.sh: usage: sharded-local.sh N (N shards, a positive count)\n"
    );
    let job_alone = script("2", Some(&job), None);
    assert_eq!(job_alone.status.code(), Some(2));
    assert!(stderr(&job_alone).starts_with("sharded-local.sh: set JOB and OUT together"));
    // An OUT with a placeholder (as a close job's `out` holds one) is refused before any
    // shard runs: the merge cannot fill it in, and refuses it too.
    let templated = tmp.path().join("closes/{as_of_date}");
    let early = script("2", Some(&close_job), Some(&templated));
    assert_eq!(early.status.code(), Some(2), "{}", stderr(&early));
    assert!(
        stderr(&early).contains("give the folder with the as-of filled in"),
        "{}",
        stderr(&early)
    );
    assert!(!tmp.path().join("closes").exists());
    let merge = tally(&["merge", "--out", templated.to_str().unwrap()]);
    assert_eq!(merge.status.code(), Some(2));
    assert_eq!(
        stderr(&merge),
        format!(
            "tally: command line: --out {} holds {{as_of_date}}, which the shards filled in \
             with their as-of: give the merge the folder as they did (e.g. closes/2026-12-01 \
             for closes/{{as_of_date}}), the path before `.shards` of the shard folders\n",
            templated.display()
        )
    );
}

/// A misspelt placeholder in a job's `out` (or in `--out`) is refused (exit 2) before the
/// run: as a literal folder name it would send every month's close to one folder.
#[test]
fn an_unknown_placeholder_in_out_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 2_000);
    let job = write_job(
        tmp.path(),
        "close.toml",
        "command = \"close\"\ndata = \"data\"\nout = \"closes/{asof}\"\n",
    );
    assert_refused_naming(
        &with_job("close", &job, CLOSE_AS_OF),
        &job,
        "out \"closes/{asof}\" holds \"{asof}\", which is not a placeholder: use {as_of} (e.g. \
         20261201T000000Z) or {as_of_date} (2026-12-01), and no other braces",
    );
    let flag_out = tmp.path().join("x-{as_of_dat}");
    let out = cmd("reconcile", &data, &flag_out).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with(&format!(
            "tally: command line: --out \"{}\" holds \"{{as_of_dat}}\"",
            flag_out.display()
        )),
        "{}",
        stderr(&out)
    );
    let listed: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(
        listed.len(),
        2,
        "only the data root and the job file: {listed:?}"
    );
    // The known placeholders still expand.
    let dated = tmp.path().join("x-{as_of_date}");
    succeeded(&mut cmd("reconcile", &data, &dated));
    assert!(tmp
        .path()
        .join("x-2026-11-20")
        .join("manifest.json")
        .exists());
}

/// A human log written to a file or a pipe (not a terminal) is plain text: no colour
/// codes, which a log file or a collector would keep as escape characters.
#[test]
fn a_human_log_to_a_pipe_has_no_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 2_000);
    let out = cmd("reconcile", &data, &tmp.path().join("out"))
        .env("TALLY_LOG", "info")
        .env_remove("NO_COLOR")
        .args(["--log-format", "human"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("run done"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log:?}"
    );
}

/// `TALLY_LOG` that is neither a level nor target=level directives would silence every log
/// line (tracing takes a bare word for a target name): the run warns once and logs at the
/// default level instead; an empty value is the default. Directives without a bare level
/// keep the default level for the other targets (tracing alone would log nothing else:
/// `tally::spill=debug` would drop every stage line and `loud=info` the whole log).
#[test]
fn a_tally_log_that_is_not_a_level_warns_and_keeps_the_default() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 2_000);
    for (value, warns) in [
        ("loud", true),
        ("", false),
        ("debug", false),
        ("tally=warn", false),
        ("tally::spill=debug", false),
        ("loud=info", false),
        ("warn,tally::progress=info", false),
    ] {
        let out = cmd("reconcile", &data, &tmp.path().join("out"))
            .env("TALLY_LOG", value)
            .args(["--log-format", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let log = stderr(&out);
        assert_eq!(
            log.contains("TALLY_LOG is not a log level"),
            warns,
            "{value}: {log}"
        );
        let stage_lines = log.lines().filter(|l| l.contains("stage done")).count();
        assert_eq!(stage_lines > 0, value != "tally=warn", "{value}: {log}");
        // At info and below: the run's settings as resolved, and how it ended.
        let line = |message: &str| {
            log.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .find(|v| v["fields"]["message"] == message)
        };
        // A bare level is the level of every target without a directive of its own.
        let run_lines = value != "tally=warn" && !value.starts_with("warn,");
        assert_eq!(line("run start").is_some(), run_lines, "{value}: {log}");
        if run_lines {
            let start = line("run start").expect("a run start line");
            assert_eq!(start["fields"]["command"], "reconcile");
            assert_eq!(start["fields"]["as_of"], AS_OF);
            assert_eq!(
                line("run done").expect("a run done line")["fields"]["exit_code"],
                0
            );
        }
        assert_eq!(line("layout").is_some(), value == "debug", "{value}: {log}");
    }
}

/// A root of `accounts` accounts with `events` usage rows and a debit each, every id
/// `id_bytes` long (the contract takes ids up to 4 KiB).
fn long_id_root(root: &Path, accounts: usize, events: usize, id_bytes: usize) {
    use tally::amount::Milli;
    use tally::time::parse_instant;
    use tally::write::{write_parquet, Table};
    let t = |s: &str| parse_instant(s).unwrap();
    root_with_pricebook(root);
    for dataset in ["usage", "debits", "grants"] {
        std::fs::create_dir_all(root.join(dataset)).unwrap();
    }
    let account = |i: usize| format!("acct-{}", i % accounts);
    let long = |prefix: &str, i: usize| format!("{prefix}-{i:08}-{}", "x".repeat(id_bytes - 13));
    let names: Vec<String> = (0..accounts).map(account).collect();
    let allocations = Table::default()
        .str("account_id", names.iter().map(String::as_str))
        .str("plan_id", names.iter().map(|_| "pro"))
        .ts(
            "period_start",
            names.iter().map(|_| t("2026-11-01T00:00:00Z")),
        )
        .ts(
            "period_end",
            names.iter().map(|_| t("2026-12-01T00:00:00Z")),
        )
        .credits(
            "included_credits",
            names.iter().map(|_| Milli::from_units(1_000_000)),
        )
        .opt_ts("billing_anchor", names.iter().map(|_| None))
        .str("status", names.iter().map(|_| "active"))
        .finish();
    write_parquet(&root.join("allocations/part-0.parquet"), &allocations).unwrap();
    let events: Vec<String> = (0..events).map(|i| long("e", i)).collect();
    let entries: Vec<String> = (0..events.len()).map(|i| long("d", i)).collect();
    let owners: Vec<String> = (0..events.len()).map(account).collect();
    let at = t("2026-11-05T10:00:00Z");
    let usage = Table::default()
        .str("event_id", events.iter().map(String::as_str))
        .str("account_id", owners.iter().map(String::as_str))
        .str("product", events.iter().map(|_| "captions"))
        .str("action", events.iter().map(|_| "ai_twin_creation"))
        .opt_str("model", events.iter().map(|_| None))
        .credits("quantity", events.iter().map(|_| Milli::from_units(1)))
        .str("status", events.iter().map(|_| "succeeded"))
        .ts("occurred_at", events.iter().map(|_| at))
        .finish();
    write_parquet(&root.join("usage/part-0.parquet"), &usage).unwrap();
    let debits = Table::default()
        .str("entry_id", entries.iter().map(String::as_str))
        .str("account_id", owners.iter().map(String::as_str))
        .opt_str("event_id", events.iter().map(|e| Some(e.as_str())))
        .str("kind", entries.iter().map(|_| "debit"))
        .credits("credits", entries.iter().map(|_| Milli::from_units(47)))
        .ts("recorded_at", entries.iter().map(|_| at + 1_000_000))
        .finish();
    write_parquet(&root.join("debits/part-0.parquet"), &debits).unwrap();
}

/// The layout line of a `--log-format json` run at debug: its group count.
fn groups_logged(out: &Output) -> u64 {
    (json_log(out).into_iter())
        .find(|v| v["fields"]["message"] == "layout")
        .and_then(|v| v["fields"]["groups"].as_u64())
        .unwrap_or_else(|| panic!("no layout line: {}", stderr(out)))
}

/// Ids longer than the bench data's count against the memory budget: 600 events and 600
/// debits with ids of 4 KiB (about 7 MiB of ids, 1,200 rows) split in 4 under an 8 MiB budget
/// (each group holds its ids and the next group's),
/// where by their row count alone they ran in one group (a memory audit's data peaked at
/// 11 times a 256 MiB budget so); the outputs are those of an unsplit run. Ids of 20
/// bytes, the same rows, stay in one group.
#[test]
fn long_ids_split_a_run_that_their_rows_alone_would_not() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |data: &Path, out: &str, budget: &str| {
        let out = tmp.path().join(out);
        let ran = cmd("reconcile", data, &out)
            .env("TALLY_LOG", "debug")
            .args(["--log-format", "json", "--memory-budget", budget])
            .output()
            .unwrap();
        assert!(ran.status.success(), "{}", stderr(&ran));
        (groups_logged(&ran), folder_bytes(&out))
    };
    let long = tmp.path().join("long");
    long_id_root(&long, 8, 600, 4096);
    let (groups, split) = run(&long, "split", "8MiB");
    assert_eq!(groups, 4);
    let (groups, whole) = run(&long, "whole", "1GiB");
    assert_eq!(groups, 1);
    assert!(
        split == whole,
        "a split run's outputs are the unsplit run's"
    );
    let short = tmp.path().join("short");
    long_id_root(&short, 8, 600, 20);
    assert_eq!(run(&short, "short-out", "8MiB").0, 1);
}

/// Contract, section 6: "Rows are in a fixed documented order, so that the same inputs and
/// settings give byte-identical files." A close streams `billed_events` in batches that
/// also end at 16 MiB, within an account if need be: two accounts of 5,000 events with
/// ids of 4 KiB (20 MiB of event ids each) cut each account's rows where their bytes say,
/// and the files are the same run after run and whatever the groups.
#[test]
fn a_close_whose_accounts_pass_a_batchs_bytes_writes_the_same_bytes_every_time() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (accounts, events, id_bytes) = (2, 10_000, 4096);
    long_id_root(&data, accounts, events, id_bytes);
    assert!(
        events / accounts * id_bytes > 16 << 20,
        "an account's ids pass 16 MiB"
    );
    let close = |out: &str, groups: &str| {
        let out = tmp.path().join(out);
        succeeded(cmd("close", &data, &out).args(["--groups", groups]));
        folder_bytes(&out)
    };
    let first = close("first", "1");
    assert!(first == close("again", "1"), "a rerun wrote other bytes");
    assert!(first == close("split", "2"), "two groups wrote other bytes");
}

/// Allocations and grants whose cost alone passes the budget warn (the groups split only
/// the usage and ledger rows): 2,000 accounts at 600 bytes a plan row are 1.1 MiB, past a
/// 1 MiB budget; at 2 MiB no warning.
#[test]
fn plans_past_the_budget_warn() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    long_id_root(&data, 2_000, 2_000, 20);
    for (budget, warns) in [("1MiB", true), ("2MiB", false)] {
        let ran = cmd("reconcile", &data, &tmp.path().join(budget))
            .args(["--memory-budget", budget])
            .output()
            .unwrap();
        assert!(ran.status.success(), "{}", stderr(&ran));
        assert_eq!(
            stderr(&ran).contains(
                "allocations and grants are 2000 rows: at about 600 bytes each they alone take \
                 1.1 MiB, more than the memory budget"
            ),
            warns,
            "{budget}: {}",
            stderr(&ran)
        );
    }
}

/// A split run whose accounts are few and large warns that a group passes the budget (an
/// account's rows are never split), naming the group and the figures; the same budget over
/// many small accounts, whose groups are near the average, does not warn.
#[test]
fn a_group_far_past_the_budget_is_warned_of() {
    let tmp = tempfile::tempdir().unwrap();
    let skew = "its accounts hold a large share of the month, and an account's rows are never \
                split over groups";
    let too_few = "the run has too few groups for the budget (forced by --groups, or the most \
                   groups the shard allows)";
    for (accounts, groups, why) in [
        (2, None, Some(skew)),
        (1_000, None, None),
        (1_000, Some("2"), Some(too_few)),
    ] {
        let data = tmp.path().join(format!("data-{accounts}"));
        if !data.exists() {
            generate(&data, accounts, 20_000, 7, "0.01");
        }
        let mut command = cmd("reconcile", &data, &tmp.path().join("out"));
        command.args(["--memory-budget", "1MiB", "--log-format", "json"]);
        if let Some(groups) = groups {
            command.args(["--groups", groups]);
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let log = stderr(&out);
        // The group warning (and, for a group of large accounts, its largest account when
        // it runs), and no other warns.
        let warnings: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["level"] == "WARN")
            .collect();
        let expected = match why {
            Some(why) if why == skew => 2,
            Some(_) => 1,
            None => 0,
        };
        assert_eq!(warnings.len(), expected, "{log}");
        if why == Some(skew) {
            the_largest_account_is_named(&data, &warnings[0]["fields"], &warnings[1]["fields"]);
        }
        let warning = warnings.first().cloned();
        assert_eq!(
            warning.is_some(),
            why.is_some(),
            "{accounts} accounts: {log}"
        );
        if let (Some(w), Some(why)) = (warning, why) {
            let fields = &w["fields"];
            // At most what 1 MiB holds at 300 bytes a row of a split reconcile (less plans).
            let fit = fields["rows_per_group"].as_u64().unwrap();
            assert!((1..=3_495).contains(&fit), "{log}");
            let rows = fields["rows"].as_u64().unwrap();
            assert!(rows > 2 * fit, "{log}");
            let tenths = rows * 10 / fit;
            assert_eq!(
                fields["message"].as_str().unwrap(),
                format!(
                    "group {} of {} holds {rows} usage and ledger rows, {}.{} times the {fit} \
                     the memory budget plans for a group: {why}, so the run's peak will pass \
                     the budget; give the job more memory and a larger --memory-budget",
                    fields["group"],
                    fields["groups"],
                    tenths / 10,
                    tenths % 10
                ),
                "{log}"
            );
        }
    }
}

/// The second warning of a group of large accounts: the account with the most usage and
/// ledger rows in the data (counted here from the files), its rows and the group's.
fn the_largest_account_is_named(
    data: &Path,
    group_warning: &serde_json::Value,
    fields: &serde_json::Value,
) {
    use arrow::array::AsArray;
    let mut rows_by_account = std::collections::BTreeMap::<String, u64>::new();
    for dataset in ["usage", "debits"] {
        for file in walk_parquet(&data.join(dataset)) {
            let batch = read_parquet(&file);
            let accounts = batch.column_by_name("account_id").unwrap();
            let accounts =
                arrow::compute::cast(accounts, &arrow::datatypes::DataType::Utf8).unwrap();
            for account in accounts.as_string::<i32>().iter().flatten() {
                *rows_by_account.entry(account.to_string()).or_default() += 1;
            }
        }
    }
    // The most rows; of equal counts the least id, as the warning picks.
    let (largest, most) = (rows_by_account.iter())
        .max_by(|(a, a_rows), (b, b_rows)| a_rows.cmp(b_rows).then_with(|| b.cmp(a)))
        .unwrap();
    assert_eq!(fields["group"], group_warning["group"]);
    assert_eq!(fields["account"], largest.as_str());
    let (rows, group_rows) = (
        fields["rows"].as_u64().unwrap(),
        fields["group_rows"].as_u64().unwrap(),
    );
    // Its valid rows (the rejected ones are not the group's).
    assert!(rows <= *most && rows * 10 > *most * 9, "{rows} of {most}");
    assert!(group_rows >= rows);
    assert_eq!(
        fields["message"].as_str().unwrap(),
        format!(
            "group {}'s largest account is \"{largest}\", with {rows} of its {group_rows} usage \
             and ledger rows",
            fields["group"]
        )
    );
}

/// More usage files than a run keeps footers of from its start-of-run check
/// (`load::MAX_KEPT_FOOTERS`, and one past it): the later files' footers are read again when
/// their rows are, and a run of the same rows in the generator's files or in those gives
/// the same discrepancies and balances, in one group and split (the light and spill passes
/// read the files too).
#[test]
fn more_files_than_the_kept_footers_give_the_same_results() {
    use tally::load::MAX_KEPT_FOOTERS;
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 2_000);
    // The usage rows in the dataset's order (files by relative path, bytewise).
    let mut usage: Vec<PathBuf> = walk_parquet(&data.join("usage"));
    usage.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    let batches: Vec<_> = usage.iter().map(|p| read_parquet(p)).collect();
    let rows = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let files = MAX_KEPT_FOOTERS + 1;
    assert!(rows.num_rows() > files, "a row or more a file");
    let many = tmp.path().join("many");
    copy_dir(&data, &many);
    std::fs::remove_dir_all(many.join("usage")).unwrap();
    std::fs::create_dir(many.join("usage")).unwrap();
    for f in 0..files {
        let (from, to) = (
            f * rows.num_rows() / files,
            (f + 1) * rows.num_rows() / files,
        );
        let path = many.join("usage").join(format!("part-{f:05}.parquet"));
        tally::write::write_parquet(&path, &rows.slice(from, to - from)).unwrap();
    }
    for groups in ["1", "3"] {
        let run = |root: &Path, out: &str| {
            let out = tmp.path().join(out);
            succeeded(cmd("reconcile", root, &out).args(["--groups", groups]));
            out
        };
        let (few, split) = (run(&data, "out-few"), run(&many, "out-many"));
        for table in ["discrepancies.parquet", "balances.parquet"] {
            assert!(
                std::fs::read(few.join(table)).unwrap()
                    == std::fs::read(split.join(table)).unwrap(),
                "{table}, --groups {groups}"
            );
        }
        let files_read = json(&split.join("summary.json"))["datasets"]["usage"]["files"].clone();
        assert_eq!(files_read, serde_json::json!(files), "--groups {groups}");
        std::fs::remove_dir_all(few).unwrap();
        std::fs::remove_dir_all(split).unwrap();
    }
}

/// Usage and ledger files so many that what they cost beyond their rows (about 3 KiB a
/// file) passes a quarter of the memory budget are warned of, with what to do; at exactly a
/// quarter they are not.
#[test]
fn many_small_files_warn_past_a_quarter_of_the_budget() {
    const BYTES_PER_FILE: u64 = 3 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 2_000);
    let parquet_files = |dataset: &str| walk_parquet(&data.join(dataset));
    // More files of the same rows: their events are identical copies, counted, not used.
    let usage = parquet_files("usage");
    for i in 0..40 {
        std::fs::copy(
            &usage[0],
            data.join("usage").join(format!("copy-{i}.parquet")),
        )
        .unwrap();
    }
    let files = (parquet_files("usage").len() + parquet_files("debits").len()) as u64;
    let warnings = |budget_bytes: u64| {
        let mut command = cmd("reconcile", &data, &tmp.path().join("out"));
        command.args([
            "--memory-budget",
            &budget_bytes.to_string(),
            "--log-format",
            "json",
        ]);
        let out = command.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        std::fs::remove_dir_all(tmp.path().join("out")).unwrap();
        stderr(&out)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["level"] == "WARN" && v["fields"]["file_bytes"].is_u64())
            .collect::<Vec<_>>()
    };
    let at_limit = files * BYTES_PER_FILE * 4;
    assert_eq!(warnings(at_limit), Vec::<serde_json::Value>::new());
    let past = warnings(at_limit - 4);
    assert_eq!(past.len(), 1, "{past:?}");
    let file_bytes = files * BYTES_PER_FILE;
    // Rounded to the nearest tenth of a MiB.
    let tenths = (file_bytes * 10 + (1 << 19)) >> 20;
    assert_eq!(
        past[0]["fields"]["message"].as_str().unwrap(),
        format!(
            "usage and debits are {files} files: reading them takes about {}.{} MiB beyond \
             their rows (about 3 KiB a file), more than a quarter of the memory budget; \
             compact them into fewer, larger files (a day's rows a file) before the run, or \
             give the job more memory and a larger --memory-budget",
            tenths / 10,
            tenths % 10
        )
    );
}

/// The warnings a run with JSON logs wrote, by their `dataset` field.
fn warnings_by_dataset(out: &Output) -> Vec<(String, String)> {
    stderr(out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["level"] == "WARN" && v["fields"]["dataset"].is_string())
        .map(|v| {
            let fields = &v["fields"];
            let field = |name: &str| fields[name].as_str().unwrap().to_string();
            // The fields the README documents, as the message says them.
            if let Some(count) = fields["files_not_read"].as_u64() {
                let first = field("first");
                assert!(
                    field("message").starts_with(&format!("{count} file"))
                        && field("message").contains(&format!("(the first: {first})")),
                    "{v}"
                );
            }
            (field("dataset"), field("message"))
        })
        .collect()
}

/// Files in a dataset folder that are not read (an upper-case `.PARQUET`, a `.csv`) and a
/// required dataset with no Parquet file are warned of, naming the folder and the first
/// such file by path; hidden names are not, nor is an empty `grants/`; the run still
/// publishes (an empty folder is valid input). Contract section 7: "Only `*.parquet` files
/// are read; names starting with `.` or `_` are skipped" — the skipped names are the
/// contract's, the warned-of ones the rest.
#[test]
fn files_not_read_and_empty_datasets_are_warned_of() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let run = |name: &str| {
        let mut command = cmd("reconcile", &data, &tmp.path().join(name));
        command.args(["--log-format", "json"]);
        succeeded(&mut command)
    };
    assert_eq!(warnings_by_dataset(&run("clean")), vec![]);

    for file in walk_parquet(&data.join("usage")) {
        std::fs::rename(&file, file.with_extension("PARQUET")).unwrap();
    }
    let usage_files = walk_parquet(&data.join("usage")).len();
    assert_eq!(usage_files, 0);
    std::fs::write(data.join("usage/_SUCCESS"), "").unwrap();
    std::fs::write(data.join("usage/.part-9.parquet.crc"), "").unwrap();
    std::fs::write(data.join("debits/entries.csv"), "entry_id\n").unwrap();
    std::fs::create_dir_all(data.join("grants")).unwrap();
    for file in walk_parquet(&data.join("grants")) {
        std::fs::remove_file(file).unwrap();
    }
    assert_eq!(
        warnings_by_dataset(&run("renamed")),
        [
            (
                "usage",
                "16 files are not read under usage/ (the first: usage/bucket=0/part-0.PARQUET): \
                 only names ending in .parquet are, case-sensitively; rename them if they are \
                 input, else move them out of the data root or under a name starting with . or _",
            ),
            (
                "usage",
                "usage/ holds no *.parquet file, so the run reads no usage events; if an \
                 export has not arrived yet, rerun once it has",
            ),
            (
                "debits",
                "1 file is not read under debits/ (the first: debits/entries.csv): only names \
                 ending in .parquet are, case-sensitively; rename them if they are input, else \
                 move them out of the data root or under a name starting with . or _",
            ),
        ]
        .map(|(d, m)| (d.to_string(), m.to_string()))
    );
    // explain lists the data root as a run does, and warns the same.
    let explain = tally_command(&[
        "explain",
        "--data",
        data.to_str().unwrap(),
        "--as-of",
        AS_OF,
        "--account",
        "acct-000001",
        "--log-format",
        "json",
    ])
    .output()
    .unwrap();
    let kinds: Vec<(String, String)> = warnings_by_dataset(&explain);
    assert_eq!(
        kinds.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(),
        ["usage", "usage", "debits"],
        "{}",
        stderr(&explain)
    );

    // Allocations without a Parquet file: warned of too (every account then lacks a plan).
    for file in walk_parquet(&data.join("allocations")) {
        std::fs::remove_file(file).unwrap();
    }
    let messages: Vec<String> = warnings_by_dataset(&run("no-plans"))
        .into_iter()
        .filter(|(d, _)| d == "allocations")
        .map(|(_, m)| m)
        .collect();
    assert_eq!(
        messages,
        [
            "allocations/ holds no *.parquet file, so the run reads no plan allocations; if an \
          export has not arrived yet, rerun once it has"
        ]
    );

    // A misspelt dataset folder (`Grants/`: no grants are read) is warned of, naming it; a
    // hidden folder and files beside the datasets are not.
    let folders_not_read = |out: &Output| -> Vec<String> {
        (stderr(out).lines())
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["level"] == "WARN" && v["fields"]["folders_not_read"].is_u64())
            .map(|v| v["fields"]["message"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        folders_not_read(&run("no-plans-again")),
        Vec::<String>::new()
    );
    // A dataset linked to a folder beside it: that folder is read, not warned of.
    std::fs::rename(data.join("debits"), data.join("debits-2026-11")).unwrap();
    std::os::unix::fs::symlink("debits-2026-11", data.join("debits")).unwrap();
    assert_eq!(folders_not_read(&run("linked")), Vec::<String>::new());
    std::fs::rename(data.join("grants"), data.join("Grants")).unwrap();
    std::fs::create_dir_all(data.join("_old")).unwrap();
    std::fs::write(data.join("README.txt"), "the export's notes").unwrap();
    assert_eq!(
        folders_not_read(&run("misspelt")),
        [
            "1 folder is not read in the data root (the first: Grants/): a data root's datasets \
          are the folders usage/, allocations/, grants/ and debits/, named case-sensitively; \
          rename it if it is one of them, else move it out of the data root or under a name \
          starting with . or _"
        ]
    );
}

/// A price book in a currency ISO 4217 has withdrawn is billed as written (a rerun of an
/// old month), with one warning naming the code that replaced it.
#[test]
fn a_withdrawn_currency_is_billed_as_written_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let book = std::fs::read_to_string(data.join("pricebook.toml")).unwrap();
    let book = book.replacen("currency = \"USD\"", "currency = \"HRK\"", 1);
    std::fs::write(data.join("pricebook.toml"), book).unwrap();
    let mut command = cmd("close", &data, &tmp.path().join("out"));
    command.args(["--log-format", "json"]);
    let out = succeeded(&mut command);
    let warnings: Vec<String> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["level"] == "WARN")
        .map(|v| v["fields"]["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        warnings,
        [
            "the price book's currency HRK has been replaced by EUR in ISO 4217; invoices are \
          written in HRK as the price book says"
        ]
    );
    let invoices = render(&tmp.path().join("out/invoices.parquet"), &[]);
    assert!(
        invoices.contains(",HRK,") && !invoices.contains(",USD,"),
        "{invoices}"
    );
}

/// Failures whose operating-system words leave the fix open say it: a data root without its
/// price book (exit 2) asks whether `--data` is the data root, and an output path through a
/// file (exit 4) says that a part of it is a file.
#[test]
fn io_failures_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 2_000);
    let no_book = tmp.path().join("no-book");
    copy_dir(&data, &no_book);
    std::fs::remove_file(no_book.join("pricebook.toml")).unwrap();
    let out = cmd("reconcile", &no_book, &tmp.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "tally: {}: cannot read: No such file or directory (os error 2); a data root holds \
             its pricebook.toml beside the usage/, allocations/, grants/ and debits/ folders: is \
             --data (or the job's `data`) the data root?\n",
            no_book.join("pricebook.toml").display()
        )
    );
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    // An --out under a file is a bad setting (exit 2), named before its lock is made.
    let out = cmd("reconcile", &data, &file.join("out")).output().unwrap();
    assert_eq!(
        stderr(&out),
        format!(
            "tally: {}: {} is a file, so the output folder cannot be made under it: choose an \
             --out (or `out` in the job file) whose folders are folders\n",
            file.join("out").display(),
            file.display()
        )
    );
    assert_eq!(out.status.code(), Some(2));
}

/// A failed run logs `run done` too, with its exit code and the error stderr's last line
/// gives (a log collector sees how every started run ended); a successful one has no error.
#[test]
fn a_failed_run_logs_how_it_ended() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 2_000);
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let run_done = |out: &Path| {
        let output = cmd("reconcile", &data, out)
            .env("TALLY_LOG", "info")
            .args(["--log-format", "json"])
            .output()
            .unwrap();
        let log = stderr(&output);
        let done = (json_log(&output).into_iter())
            .find(|v| v["fields"]["message"] == "run done")
            .unwrap_or_else(|| panic!("no run done line: {log}"));
        (output, log, done["fields"].clone())
    };
    let (output, log, done) = run_done(&file.join("out"));
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(done["exit_code"], 2);
    let last = log.lines().last().unwrap();
    assert_eq!(format!("tally: {}", done["error"].as_str().unwrap()), last);
    assert!(
        last.contains("is a file, so the output folder cannot"),
        "{log}"
    );

    let (output, _, done) = run_done(&tmp.path().join("out"));
    assert!(output.status.success());
    assert_eq!(done["exit_code"], 0);
    assert!(done.get("error").is_none(), "{done}");
}

/// A job file without `as_of` run without `--as-of` (the shipped close job has none: cron
/// gives it) says both ways to give it.
#[test]
fn a_missing_as_of_names_the_flag_and_the_job_key() {
    let tmp = tempfile::tempdir().unwrap();
    let job = write_job(
        tmp.path(),
        "close.toml",
        "command = \"close\"\ndata = \"d\"\nout = \"o\"\n",
    );
    let ran = tally(&["close", "--job", job.to_str().unwrap()]);
    assert_eq!(ran.status.code(), Some(2), "{}", stderr(&ran));
    assert_eq!(
        stderr(&ran),
        "tally: command line: --as-of (or a --job file with `as_of`) is required (an RFC 3339 \
         instant, a date or `now`)\n"
    );
}

/// A job file `name` in `dir` holding `text`; its path.
fn write_job(dir: &Path, name: &str, text: &str) -> PathBuf {
    let job = dir.join(name);
    std::fs::write(&job, text).unwrap();
    job
}

/// A run refused as bad configuration (exit 2) with one line naming `file` and saying
/// `message`.
fn assert_refused_naming(out: &Output, file: &Path, message: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    assert_eq!(
        stderr(out),
        format!("tally: {}: {message}\n", file.display())
    );
}

/// `tally COMMAND --job JOB --as-of AS_OF`, run.
fn with_job(command: &str, job: &Path, as_of: &str) -> Output {
    tally(&[command, "--job", job.to_str().unwrap(), "--as-of", as_of])
}

/// A split run whose temporary folder is missing, or is a file, fails (exit 4, nothing
/// published) with one line naming the path and saying it is `$TMPDIR`, the spill's folder:
/// the operating system's words name only the path.
#[test]
fn a_missing_temporary_folder_is_named_as_the_spill_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 2_000);
    let a_file = tmp.path().join("a-file");
    std::fs::write(&a_file, "not a folder").unwrap();
    let missing = tmp.path().join("missing");
    for (tmpdir, why) in [
        (&missing, "No such file or directory (os error 2)"),
        (&a_file, "Not a directory (os error 20)"),
    ] {
        let out = tmp.path().join("out");
        let ended = cmd("reconcile", &data, &out)
            .args(["--groups", "2"])
            .env("TMPDIR", tmpdir)
            .output()
            .unwrap();
        assert_eq!(ended.status.code(), Some(4), "{}", stderr(&ended));
        assert_eq!(
            stderr(&ended),
            format!(
                "tally: writing {}: {why}; it is the temporary folder ($TMPDIR) a split or \
                 sharded run spills to: create it, or point TMPDIR at a folder that exists\n",
                tmpdir.display()
            )
        );
        assert!(!out.exists(), "nothing published");
    }
}

/// The `tally-spill-*` folders in `tmpdir`.
fn spill_folders(tmpdir: &Path) -> Vec<String> {
    std::fs::read_dir(tmpdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tally-spill-"))
        .collect()
}

/// Send `signal` to `child` once it has a spill folder in `tmpdir` (past its light pass).
fn signal_when_spilling(child: &Child, tmpdir: &Path, signal: i32) {
    let started = Instant::now();
    while spill_folders(tmpdir).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no spill folder appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: the pid is our own child's, not yet waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// A reconcile of `data` into `out` in 4 groups, spilling into `tmpdir`: a run that spills
/// (where the signal tests stop it).
fn split_reconcile(data: &Path, out: &Path, tmpdir: &Path) -> Command {
    let mut command = cmd("reconcile", data, out);
    command.args(["--groups", "4"]).env("TMPDIR", tmpdir);
    command
}

/// `command` started, its stdout discarded and its stderr piped (for its one line).
fn spawn_piped(command: &mut Command) -> Child {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` for at most `limit`; past it, kills it and fails the test with
/// `hang`: a run that never ends must fail its test, not hang the suite.
fn wait_or_kill(child: &mut Child, limit: Duration, hang: &str) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{hang}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `attempt` (a run signalled while it spills, returning its exit code) until the signal
/// stops it, at most 5 times. On a loaded machine the signal can come after the run has
/// claimed its own exit (`interrupt::claim_exit`, once its work is done): it then ends as it
/// would have, exit 0 with `out` published, and is tried again (`out` removed). A run that
/// never stops for the signal is returned after the last try, for its caller's assert.
fn until_interrupted<T>(out: &Path, mut attempt: impl FnMut() -> (Option<i32>, T)) -> T {
    for _ in 1..5 {
        match attempt() {
            (Some(0), _) => {
                assert!(
                    out.join("manifest.json").exists(),
                    "exit 0 without its output"
                );
                std::fs::remove_dir_all(out).unwrap();
            }
            (_, ended) => return ended,
        }
    }
    attempt().1
}

/// SIGTERM and SIGINT while a split run spills: the run removes its spill folder, publishes
/// nothing, says so on one line and exits 128 + the signal (143, 130), as cron and
/// Kubernetes report a stopped job; the next run publishes the undisturbed bytes.
#[test]
fn an_interrupted_run_removes_its_spill_says_so_and_exits_128_plus_the_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 300_000);
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    let reference = tmp.path().join("reference");
    succeeded(cmd("reconcile", &data, &reference).args(["--groups", "4"]));
    for (signal, name, code) in [
        (libc::SIGTERM, "SIGTERM", 143),
        (libc::SIGINT, "SIGINT", 130),
    ] {
        let out = tmp.path().join(format!("out-{name}"));
        let ended = until_interrupted(&out, || {
            let child = spawn_piped(&mut split_reconcile(&data, &out, &tmpdir));
            // Signal once the spill folder exists: the run is past its light pass.
            signal_when_spilling(&child, &tmpdir, signal);
            let ended = child.wait_with_output().unwrap();
            (ended.status.code(), ended)
        });
        let message = stderr(&ended);
        assert_eq!(ended.status.code(), Some(code), "{message}");
        assert!(
            message.starts_with(&format!(
                "tally: interrupted by {name}: nothing published (an output appears whole or not \
                 at all); removed "
            )) && message.lines().count() == 1,
            "{message}"
        );
        assert!(
            spill_folders(&tmpdir).is_empty(),
            "{:?}",
            spill_folders(&tmpdir)
        );
        assert!(!out.exists());
        assert!(leftovers(tmp.path()).is_empty());
        succeeded(&mut split_reconcile(&data, &out, &tmpdir));
        assert!(folder_bytes(&out) == folder_bytes(&reference));
    }
}

/// A spill folder left by a killed run is removed by the next run of any kind, also one
/// that does not split. A run holds its folder's `owner.lock` locked, so liveness does not
/// rest on the pid in the name (runs in other pid namespaces sharing `$TMPDIR` see each
/// other's pids as gone): a folder whose lock is held stays, whatever its pid says. A
/// folder without the lock file goes by its pid: at once if it is empty or holds only an
/// `owner.lock.new` no one holds (a run killed while making or removing it), else once a
/// minute old (an older tally's).
#[test]
fn every_run_removes_the_spill_folders_of_killed_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 2_000);
    let tmpdir = tmp.path().join("tmp");
    // Pids from 0x7fff_ff00 are above Linux's pid limit: no process here has them.
    let folder = |pid: u32, with_lock: bool| {
        let path = tmpdir.join(format!("tally-spill-{pid}-AbCdEf"));
        std::fs::create_dir_all(path.join("usage")).unwrap();
        std::fs::write(path.join("usage/group-1.bin"), vec![0u8; 4096]).unwrap();
        let lock = with_lock.then(|| std::fs::File::create(path.join("owner.lock")).unwrap());
        (path, lock)
    };
    let (dead, _) = folder(2_147_483_392, true);
    // Locked as a live run in another pid namespace holds it: its pid is gone here.
    let (elsewhere, held) = folder(2_147_483_393, true);
    held.as_ref().unwrap().lock().unwrap();
    let (old_lockless, _) = folder(2_147_483_394, false);
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::open(&old_lockless)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    let (new_lockless, _) = folder(2_147_483_395, false);
    let unmade = |pid: u32, making: bool| {
        let path = tmpdir.join(format!("tally-spill-{pid}-AbCdEf"));
        std::fs::create_dir_all(&path).unwrap();
        let file = making.then(|| std::fs::File::create(path.join("owner.lock.new")).unwrap());
        (path, file)
    };
    let (empty, _) = unmade(2_147_483_396, false);
    let (killed_making, _) = unmade(2_147_483_397, true);
    // Being made by a live run in another pid namespace: it holds the lock.
    let (being_made, making) = unmade(2_147_483_398, true);
    making.as_ref().unwrap().lock().unwrap();
    succeeded(cmd("reconcile", &data, &tmp.path().join("out")).env("TMPDIR", &tmpdir));
    assert!(!empty.exists(), "an empty folder of a gone run was kept");
    assert!(
        !killed_making.exists(),
        "a folder whose making was killed was kept"
    );
    assert!(being_made.exists(), "a folder being made was removed");
    drop(making);
    assert!(!dead.exists());
    assert!(
        elsewhere.exists(),
        "a folder whose lock is held was removed"
    );
    assert!(!old_lockless.exists());
    assert!(
        new_lockless.exists(),
        "a folder still being made may not have its lock yet"
    );
    drop(held);
}

/// A run started with SIGHUP ignored (`nohup`) keeps it ignored: a hang-up does not stop
/// it, and it publishes as usual.
#[test]
fn a_signal_ignored_at_start_stays_ignored() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 300_000);
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    let out = tmp.path().join("out");
    let mut command = split_reconcile(&data, &out, &tmpdir);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let child = spawn_piped(&mut command);
    signal_when_spilling(&child, &tmpdir, libc::SIGHUP);
    let ended = child.wait_with_output().unwrap();
    assert!(ended.status.success(), "{}", stderr(&ended));
    assert!(out.join("manifest.json").exists());
}

/// An interrupted run whose stderr reader is gone (a dead `logger`) still ends, with the
/// signal's exit code: its one line cannot be written, and that is no reason to hang.
#[test]
fn an_interrupted_run_without_stderr_still_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 300_000);
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    let out = tmp.path().join("out");
    let status = until_interrupted(&out, || {
        let mut child = spawn_piped(&mut split_reconcile(&data, &out, &tmpdir));
        drop(child.stderr.take()); // the reader goes away
        signal_when_spilling(&child, &tmpdir, libc::SIGTERM);
        let status = wait_or_kill(
            &mut child,
            Duration::from_secs(60),
            "the interrupted run did not end within 60 s",
        );
        (status.code(), status)
    });
    assert_eq!(status.code(), Some(143));
    assert!(spill_folders(&tmpdir).is_empty());
}

/// SIGKILL at random moments across 50 runs (25 reconcile, 25 close): the target path never
/// holds a partial folder, a leftover staging folder is cleaned by the next run, and the
/// rerun's output is byte-identical to an undisturbed run. `TALLY_KILL_EVENTS` sets the
/// data size (default 200,000 events; the README's figures used 2,000,000).
#[test]
fn sigkill_at_random_moments_never_leaves_a_partial_output() {
    let events: u64 = std::env::var("TALLY_KILL_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), events);
    let mut state = 20_261_125u64;
    for command in ["reconcile", "close"] {
        let reference_dir = tmp.path().join(format!("{command}-reference"));
        let started = Instant::now();
        succeeded(&mut cmd(command, &data, &reference_dir));
        let runtime = started.elapsed();
        let reference = folder_bytes(&reference_dir);
        let out = tmp.path().join(format!("{command}-out"));
        for _ in 0..25 {
            let delay = Duration::from_micros(
                next(&mut state) % (runtime.as_micros() as u64 * 11 / 10 + 1),
            );
            let mut child = cmd(command, &data, &out)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(delay);
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
            if out.exists() {
                assert!(
                    folder_bytes(&out) == reference,
                    "{command}: a partial output folder is visible after a kill at {delay:?}"
                );
            }
            // The rerun cleans up and publishes the same bytes (or, for close, finds it done).
            let rerun = cmd(command, &data, &out).output().unwrap();
            assert!(
                rerun.status.success(),
                "{command} rerun: {}",
                stderr(&rerun)
            );
            assert!(
                folder_bytes(&out) == reference,
                "{command}: rerun differs from an undisturbed run"
            );
            assert!(
                leftovers(tmp.path()).is_empty(),
                "staging left: {:?}",
                leftovers(tmp.path())
            );
        }
    }
}

#[test]
fn outputs_are_identical_across_thread_counts_and_file_order() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 20_000);
    // The same files copied in the opposite order (directory order differs).
    let shuffled = tmp.path().join("shuffled");
    let mut files = Vec::new();
    let mut stack = vec![data.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p)
            } else {
                files.push(p)
            }
        }
    }
    files.sort();
    files.reverse();
    for f in &files {
        let target = shuffled.join(f.strip_prefix(&data).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(f, &target).unwrap();
    }
    let mut outputs = Vec::new();
    for (threads, root) in [("1", &data), ("2", &data), ("8", &data), ("2", &shuffled)] {
        let out = tmp.path().join(format!("out-{threads}-{}", outputs.len()));
        succeeded(cmd("reconcile", root, &out).env("RAYON_NUM_THREADS", threads));
        outputs.push(folder_bytes(&out));
    }
    for o in &outputs[1..] {
        assert!(o == &outputs[0]);
    }
}

/// Contract section 6: the manifest lists "every input and output with rows and sha256".
/// Every file of a published folder but the manifest itself is listed once, with the
/// sha256 of its bytes on disk and, for a table (Parquet or CSV, `report/` included), its
/// rows as read back here; every input listed has the sha256 of its file and, for a
/// Parquet file, its rows (files held whole and files read by position among them). For a reconcile and for a close, whose largest files
/// (`billed_events`, `invoice_lines` and its CSV) are streamed past one chunk (65,536
/// rows), merged from runs in memory (one group) and from run files (`--groups 2`).
#[test]
fn the_manifest_lists_every_input_and_output_with_rows_and_sha256() {
    use sha2::Digest;
    let sha256 = |path: &Path| hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()));
    let is_table = |path: &str| path.ends_with(".parquet") || path.ends_with(".csv");
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 80_000);
    let runs = [
        ("reconcile", AS_OF, "1"),
        ("close", CLOSE_AS_OF, "1"),
        ("close", CLOSE_AS_OF, "2"),
    ];
    for (command, as_of, groups) in runs {
        let out = tmp.path().join(format!("{command}-{groups}"));
        succeeded(run_command(command, &data, as_of, &out).args(["--groups", groups]));
        let manifest = json(&out.join("manifest.json"));
        let entries = |key: &str| -> Vec<(String, Option<u64>, String)> {
            (manifest[key].as_array().unwrap().iter())
                .map(|e| {
                    let path = e["path"].as_str().unwrap().to_string();
                    (
                        path,
                        e["rows"].as_u64(),
                        e["sha256"].as_str().unwrap().into(),
                    )
                })
                .collect()
        };
        let on_disk: Vec<(String, Option<u64>, String)> = folder_bytes(&out)
            .into_iter()
            .filter(|(name, _)| name != "manifest.json")
            .map(|(name, bytes)| {
                let rows = is_table(&name).then(|| table_rows(&out.join(&name)));
                let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
                (name, rows, sha256)
            })
            .collect();
        // Both in path order: the manifest lists its outputs sorted by path.
        let outputs = entries("outputs");
        assert_eq!(outputs, on_disk, "{command} in {groups} groups");
        // Every input, in order: the price book, then each dataset's Parquet files (usage,
        // allocations, grants, debits) by path.
        let listed: Vec<String> = entries("inputs").into_iter().map(|e| e.0).collect();
        let mut expected = vec!["pricebook.toml".to_string()];
        for dataset in ["usage", "allocations", "grants", "debits"] {
            expected.extend(parquet_files_under(&data, dataset));
        }
        assert_eq!(listed, expected, "{command} in {groups} groups");
        // Inputs small enough to be read whole and larger ones read by position (the
        // fingerprint reads them two ways): both are listed as the files are.
        let (mut whole, mut by_position) = (0, 0);
        for (path, rows, listed) in entries("inputs") {
            let file = data.join(&path);
            assert_eq!(listed, sha256(&file), "input {path}");
            let parquet = path.ends_with(".parquet");
            assert_eq!(rows, parquet.then(|| table_rows(&file)), "input {path}");
            if parquet {
                let size = std::fs::metadata(&file).unwrap().len();
                match size <= tally::positional::WHOLE_FILE_BYTES {
                    true => whole += 1,
                    false => by_position += 1,
                }
            }
        }
        assert!(
            whole > 0 && by_position > 0,
            "{whole} small and {by_position} large inputs"
        );
        if command == "close" {
            let rows = |wanted: &str| {
                let found = outputs.iter().find(|(path, _, _)| path == wanted);
                found.and_then(|(_, rows, _)| *rows).unwrap()
            };
            assert!(rows("invoice_lines.csv") > 0);
            let billed = rows("billed_events.parquet");
            assert!(
                billed > 65_536,
                "only {billed} billed events: one streamed chunk"
            );
        }
    }
}

/// The `*.parquet` files under `root/dataset`, as paths relative to `root` (`/`-separated),
/// sorted by their bytes: contract section 7, "Only `*.parquet` files are read; names
/// starting with `.` or `_` are skipped", walked here independently of tally's listing.
fn parquet_files_under(root: &Path, dataset: &str) -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            let child = format!("{rel}/{name}");
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &child, out);
            } else if name.ends_with(".parquet") {
                out.push(child);
            }
        }
    }
    let mut files = Vec::new();
    if root.join(dataset).is_dir() {
        walk(&root.join(dataset), dataset, &mut files);
    }
    files.sort();
    files
}

/// A close at one thread finishes, with the bytes of a close at two, on data with more
/// invoice lines than one CSV piece (8,192 rows): a streamed CSV whose writer thread asked
/// the pool to render its rows deadlocked at one thread, whose only worker was waiting for
/// that very thread (caught by review, reproduced at 100,000 events).
#[test]
fn a_close_at_one_thread_finishes_with_the_bytes_of_two() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated_data(tmp.path(), 2_000, 100_000, 3, "0.02");
    let mut outputs = Vec::new();
    for threads in ["1", "2"] {
        let out = tmp.path().join(format!("out-{threads}"));
        let mut child = cmd("close", &data, &out)
            .env("RAYON_NUM_THREADS", threads)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let status = wait_or_kill(
            &mut child,
            Duration::from_secs(120),
            &format!("a close at {threads} thread(s) still runs after 120 s (deadlocked?)"),
        );
        assert!(status.success(), "close at {threads} thread(s): {status}");
        outputs.push(folder_bytes(&out));
    }
    assert!(outputs[0] == outputs[1], "1 and 2 threads differ");
    let csv = std::fs::read_to_string(tmp.path().join("out-1/invoice_lines.csv")).unwrap();
    let lines = csv.lines().count() - 1;
    assert!(
        lines > 8_192,
        "{lines} invoice lines: not more than one CSV piece"
    );
}

fn mount_tmpfs(dir: &Path, options: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            options,
            "tally-test",
            dir.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success())
}

fn umount(dir: &Path) {
    let _ = Command::new("umount").arg(dir).status();
}

/// Read-only and full output file systems (tmpfs mounts; these need root, as CI is).
#[test]
fn read_only_and_full_disks_give_a_clear_line_and_nothing_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 20_000);
    let ro = tmp.path().join("ro");
    if !mount_tmpfs(&ro, "ro,size=1m") {
        assert_ne!(unsafe_uid(), 0, "root could not mount a tmpfs");
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let out = cmd("reconcile", &data, &ro.join("out")).output().unwrap();
    umount(&ro);
    // An output that cannot be written is exit 4 (README), whatever the cause.
    let read_only = format!("tally: writing {}", ro.display());
    assert_write_failed(&out, &read_only, "Read-only file system", "reconcile");

    // A reconcile, and a close (whose invoice lines stream to Parquet and CSV at once),
    // each on a disk too small for its outputs.
    for command in ["reconcile", "close"] {
        let full = tmp.path().join(format!("full-{command}"));
        assert!(mount_tmpfs(&full, "size=96k"));
        let out = cmd(command, &data, &full.join("out")).output().unwrap();
        let left = std::fs::read_dir(&full)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        umount(&full);
        // Exit 4 whichever writer fills the disk first (it was 2 or 4 by that race), and
        // the line names the file it stopped.
        let in_full = format!("tally: writing {}/", full.display());
        assert_write_failed(&out, &in_full, "No space left on device", command);
        assert!(
            stderr(&out).contains("; free space on the output's disk"),
            "{command}: {}",
            stderr(&out)
        );
        assert!(
            left.iter().all(|n| !n.contains("staging") && n != "out"),
            "{command}: left behind: {left:?}"
        );
    }

    // A split run whose temporary folder fills: the hint names $TMPDIR, not the output.
    let full = tmp.path().join("full-tmpdir");
    assert!(mount_tmpfs(&full, "size=96k"));
    let out_dir = tmp.path().join("out-of-a-full-spill");
    let out = cmd("reconcile", &data, &out_dir)
        .args(["--groups", "3"])
        .env("TMPDIR", &full)
        .output()
        .unwrap();
    umount(&full);
    let in_full = format!("tally: writing {}/tally-spill-", full.display());
    assert_write_failed(&out, &in_full, "No space left on device", "split run");
    assert!(
        stderr(&out).contains("; it is the spill of a split run under the temporary folder"),
        "{}",
        stderr(&out)
    );
    assert!(!out_dir.exists(), "nothing published");

    // A generate onto a full disk leaves no partial data root (the next generate refused
    // it as not empty, and a run could read it).
    let full = tmp.path().join("full-generate");
    assert!(mount_tmpfs(&full, "size=96k"));
    let out = tally(&[
        "generate",
        "--out",
        full.join("data").to_str().unwrap(),
        "--events",
        "20000",
    ]);
    let left = std::fs::read_dir(&full).unwrap().count();
    umount(&full);
    let in_full = format!("tally: writing {}/data/", full.display());
    assert_write_failed(&out, &in_full, "No space left on device", "generate");
    assert_eq!(left, 0, "generate left its partial folder behind");
}

/// A close (with `--history`) run again on a folder mounted read-only since it published:
/// the no-op ("already closed ...; nothing to do", exit 0) needs no write; the locks open
/// their lock files for reading (it failed with exit 4 on opening them for writing), or,
/// without lock files, lock nothing where no run can write.
#[test]
fn a_close_rerun_on_a_read_only_folder_is_the_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 2_000);
    let mounted = tmp.path().join("closes");
    if !mount_tmpfs(&mounted, "size=8m") {
        assert_ne!(unsafe_uid(), 0, "root could not mount a tmpfs");
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let out = mounted.join("2026-12-01");
    let close = || {
        let mut c = cmd("close", &data, &out);
        c.arg("--history").arg(&mounted);
        c.output().unwrap()
    };
    let first = close();
    let remount = |mode: &str| {
        Command::new("mount")
            .args(["-o", &format!("remount,{mode}"), mounted.to_str().unwrap()])
            .status()
            .is_ok_and(|s| s.success())
    };
    let read_only = remount("ro");
    let again = close();
    // Without lock files (a history an older tally wrote): none can be made, and none is
    // needed where no run can write.
    let rw = remount("rw");
    let mut removed = Vec::new();
    for lock in [".2026-12-01.tally-lock", ".tally-history.lock"] {
        removed.push(std::fs::remove_file(mounted.join(lock)).is_ok());
    }
    let read_only_again = remount("ro");
    let without_locks = close();
    umount(&mounted);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(read_only && rw && read_only_again);
    assert_eq!(
        removed,
        [true, true],
        "both lock files were there to remove"
    );
    for rerun in [again, without_locks] {
        assert_eq!(rerun.status.code(), Some(0), "{}", stderr(&rerun));
        assert!(
            String::from_utf8_lossy(&rerun.stdout).contains("already closed with the same inputs"),
            "{}",
            String::from_utf8_lossy(&rerun.stdout)
        );
    }
}

/// A previous output the run cannot remove (made by a run by hand as root; the job runs as
/// another user, in a folder it may write): the run swaps it out, publishes, and exits 0
/// with a warning naming the folder to remove by hand (it said exit 4, "nothing was
/// published", over a published folder). The next run warns again, and exits 0.
#[test]
fn a_previous_output_that_cannot_be_removed_is_warned_of_after_publishing() {
    if unsafe_uid() != 0 || !Path::new("/usr/bin/setpriv").exists() {
        // CI runs as root on Linux with util-linux: a skip there is a failure.
        assert_ne!(unsafe_uid(), 0, "root without /usr/bin/setpriv");
        eprintln!("skipped: needs root and setpriv to run tally as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = generated(tmp.path(), 2_000);
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = shared.join("nightly");
    let by_root = cmd("reconcile", &data, &out).output().unwrap();
    assert!(by_root.status.success(), "{}", stderr(&by_root));
    let as_nobody = |as_of: &str| {
        Command::new("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_tally"))
            .args([
                "reconcile",
                "--data",
                data.to_str().unwrap(),
                "--as-of",
                as_of,
            ])
            .args(["--out", out.to_str().unwrap()])
            .env("TALLY_LOG", "warn")
            .output()
            .unwrap()
    };
    let ran = as_nobody("2026-11-21T00:00:00Z");
    let err = stderr(&ran);
    assert_eq!(ran.status.code(), Some(0), "{err}");
    assert!(
        err.contains("published; the previous output, swapped out to this folder, cannot be removed: remove it by hand (as the user that owns its files)"),
        "{err}"
    );
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("\"as_of\": \"2026-11-21T00:00:00Z\""),
        "{manifest}"
    );
    let next = as_nobody("2026-11-22T00:00:00Z");
    let err = stderr(&next);
    assert_eq!(next.status.code(), Some(0), "{err}");
    assert!(
        err.contains("removing a staging folder left by an earlier run"),
        "{err}"
    );
    assert!(
        err.contains("cannot remove it: remove it by hand (as the user that owns its files)"),
        "{err}"
    );
}

/// A run that could not write its outputs: exit 4 and one stderr line starting with
/// `line_start` and naming the `cause`.
fn assert_write_failed(out: &std::process::Output, line_start: &str, cause: &str, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(4), "{what}: {err}");
    assert!(
        err.starts_with(line_start) && err.contains(cause) && err.lines().count() == 1,
        "{what}: {err}"
    );
}

fn unsafe_uid() -> u32 {
    // The effective uid from /proc (no libc call needed in tests).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

#[test]
fn out_never_replaces_a_folder_that_is_not_a_tally_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated(tmp.path(), 2_000);
    let precious = tmp.path().join("precious");
    std::fs::create_dir_all(&precious).unwrap();
    std::fs::write(precious.join("ledger.xlsx"), b"finance's file").unwrap();
    let out = cmd("reconcile", &data, &precious).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        stderr(&out),
        format!(
            "tally: refused: {} holds files but no tally manifest.json; tally replaces only its own output folders: choose a new or empty folder\n",
            precious.display()
        )
    );
    assert_eq!(
        std::fs::read(precious.join("ledger.xlsx")).unwrap(),
        b"finance's file"
    );
    // An empty folder is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    succeeded(&mut cmd("reconcile", &data, &empty));
    // A link to a tally output is refused (publishing would replace the link with a
    // folder, its target left stale), by a run and by a shard (so no merge has shards to
    // publish through it; the merge's own check, the same function, is not run here); the
    // link and its target are left as they were.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink("empty", &link).unwrap();
    let before = folder_bytes(&empty);
    let refusal = format!(
        "tally: refused: {} is a symbolic link (to empty); publishing would replace the link \
         with a folder: give the folder it points to as --out (or `out` in the job file)\n",
        link.display()
    );
    for extra in [&[][..], &["--shard", "0/2"][..]] {
        let out = cmd("reconcile", &data, &link).args(extra).output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert_eq!(stderr(&out), refusal);
    }
    // Written with a trailing `/` (which names the link's target) too.
    let slash = tmp.path().join("link/");
    let out = cmd("reconcile", &data, &slash).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is a symbolic link (to empty)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("empty"));
    assert_eq!(folder_bytes(&empty), before);
}

#[test]
fn job_out_placeholders_and_alerts_on_a_no_op_close_and_an_empty_window() {
    let tmp = tempfile::tempdir().unwrap();
    let _data = generated(tmp.path(), 5_000);
    let job = write_job(tmp.path(), "close.toml", "command = \"close\"\ndata = \"data\"\nout = \"closes/{as_of_date}\"\n[alert]\nmax_discrepancies = 10\n");
    let run = || with_job("close", &job, CLOSE_AS_OF);
    let first = run();
    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
    assert!(tmp
        .path()
        .join("closes/2026-12-01/invoices.parquet")
        .exists());
    // A retry finds the close done, but must not hide the alert.
    let retry = run();
    assert_eq!(retry.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&retry.stdout).contains("already closed"));
    assert_eq!(
        stderr(&retry),
        "tally: alert: 100 discrepancy rows exceed the alert threshold of 10\n"
    );

    let nightly = write_job(tmp.path(), "nightly.toml", "command = \"reconcile\"\ndata = \"data\"\nout = \"nightly\"\n[alert]\nmin_events_in_window = 1\n");
    // Past the period: no allocation covers as-of, nothing in the window.
    let empty = with_job("reconcile", &nightly, "2026-12-05T00:00:00Z");
    assert_eq!(empty.status.code(), Some(1));
    assert_eq!(
        stderr(&empty),
        "tally: alert: only 0 events in the window, fewer than the alert minimum of 1 (stale export?)\n"
    );
}

/// A data root at `root` with `book` as its price book and one allocation: account "a" on
/// plan "max" for November 2026 with `included` credits (no usage, grants or ledger rows).
fn account_a_in_november(root: &Path, book: &str, included: tally::amount::Milli) {
    accounts_in_november(root, book, &["a"], included);
}

/// A data root of `accounts`, each with November 2026 on plan "max" with `included` credits.
fn accounts_in_november(
    root: &Path,
    book: &str,
    accounts: &[&str],
    included: tally::amount::Milli,
) {
    for d in ["usage", "allocations", "grants", "debits"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("pricebook.toml"), book).unwrap();
    write_november_allocations(root, accounts, "max", included);
}

/// The one line a run stopped by a sum past DECIMAL(18,3) prints, naming whose sum it was
/// (`whose`) before the sum itself and ending with what to do.
fn assert_sum_overflow(out: &std::process::Output, whose: &str) {
    assert_eq!(out.status.code(), Some(4), "{}", stderr(out));
    let message = stderr_past_dataset_warnings(out);
    let expected = format!(
        "tally: amount overflow: {whose}: credits sum past the largest amount an output holds \
         (999999999999999.999, DECIMAL(18,3)): "
    );
    assert!(
        message.starts_with(&expected) && message.lines().count() == 1,
        "{message}"
    );
}

/// Amounts near the fixed-point limit: a typed error (exit 4, one line), never a silent
/// wrap, and nothing published.
#[test]
fn credits_near_the_fixed_point_limit_stop_the_run_before_publishing() {
    use tally::amount::Milli;
    use tally::time::parse_instant;
    use tally::write::{write_parquet, Table};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let book = std::fs::read_to_string(repo().join("fixtures/pricebook.toml")).unwrap();
    let huge = Milli(999_999_999_999_999_000); // 999,999,999,999,999 credits: a valid input
    account_a_in_november(&root, &book, huge);
    let t = |s: &str| parse_instant(s).unwrap();
    let ids: Vec<String> = (0..20).map(|i| format!("g{i}")).collect();
    let grants = Table::default()
        .str("grant_id", ids.iter().map(String::as_str))
        .str("account_id", ids.iter().map(|_| "a"))
        .str("kind", ids.iter().map(|_| "promo"))
        .credits("credits", ids.iter().map(|_| huge))
        .ts(
            "effective_at",
            ids.iter().map(|_| t("2026-11-01T00:00:00Z")),
        )
        .opt_ts("expires_at", ids.iter().map(|_| None))
        .opt_i32("priority", ids.iter().map(|_| None))
        .finish();
    write_parquet(&root.join("grants/part-0.parquet"), &grants).unwrap();
    let out_dir = tmp.path().join("out");
    let out = cmd("reconcile", &root, &out_dir).output().unwrap();
    assert_sum_overflow(&out, "account \"a\" period starting 2026-11-01T00:00:00Z");
    assert!(stderr(&out).trim_end().ends_with(
        "; check the usage quantities, ledger credits and grants of that account-period, then \
         rerun"
    ));
    assert!(!out_dir.exists());
    assert!(leftovers(tmp.path()).is_empty());
}

/// Sums that fit every account-period but not the run's totals over all accounts stop the
/// run the same way, named as the run's totals (no account is to blame), reconcile and
/// close alike.
#[test]
fn the_run_totals_past_the_fixed_point_limit_stop_the_run_named_as_such() {
    use tally::amount::Milli;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let book = std::fs::read_to_string(repo().join("fixtures/pricebook.toml")).unwrap();
    // 600,000,000,000,000 credits each: every account's figures fit, their sum does not.
    let large = Milli(600_000_000_000_000_000);
    accounts_in_november(&root, &book, &["a", "b"], large);
    for command in ["reconcile", "close"] {
        let out_dir = tmp.path().join(command);
        let out = cmd(command, &root, &out_dir).output().unwrap();
        assert_sum_overflow(&out, "the run's totals over every account");
        assert!(!out_dir.exists());
    }
    assert!(leftovers(tmp.path()).is_empty());
    // One account alone is within range: the same figures publish.
    let one = tmp.path().join("one");
    accounts_in_november(&one, &book, &["a"], large);
    succeeded(&mut cmd("reconcile", &one, &tmp.path().join("one-out")));
}

/// A price book of one plan, `max` (500 credits, overage at `price_per_credit`), and one
/// rate: studio prompt-to-video at 8 credits a second.
fn studio_book(price_per_credit: &str) -> String {
    format!(
        "currency = \"USD\"\n\
         [plans.max]\nprice = \"24.99\"\nincluded_credits = \"500\"\n\
         overage = {{ price_per_credit = \"{price_per_credit}\" }}\n\
         [[rates]]\nproduct = \"studio\"\naction = \"prompt_to_video\"\nunit = \"second\"\n\
         credits_per_unit = \"8\"\neffective_from = 2026-01-01T00:00:00Z\n"
    )
}

/// Succeeded studio prompt-to-video events of `seconds` each on 2026-11-10, one for each
/// (event_id, account_id) of `rows`.
fn studio_usage(
    rows: &[(&str, &str)],
    seconds: tally::amount::Milli,
) -> arrow::record_batch::RecordBatch {
    let t = |s: &str| tally::time::parse_instant(s).unwrap();
    tally::write::Table::default()
        .str("event_id", rows.iter().map(|r| r.0))
        .str("account_id", rows.iter().map(|r| r.1))
        .str("product", rows.iter().map(|_| "studio"))
        .str("action", rows.iter().map(|_| "prompt_to_video"))
        .opt_str("model", rows.iter().map(|_| None))
        .credits("quantity", rows.iter().map(|_| seconds))
        .str("status", rows.iter().map(|_| "succeeded"))
        .ts(
            "occurred_at",
            rows.iter().map(|_| t("2026-11-10T00:00:00Z")),
        )
        .opt_ts("ingested_at", rows.iter().map(|_| None))
        .finish()
}

/// Which sum an overflow names: two accounts' charges that fit each account but not their
/// bucket's credits by product are the run's totals (not the account whose event came
/// second); one account whose recorded credits minus expected ones pass the range is that
/// account, not the run.
#[test]
fn an_overflow_names_the_sum_it_happened_in() {
    use tally::amount::Milli;
    use tally::time::parse_instant;
    use tally::write::{write_parquet, Table};
    let tmp = tempfile::tempdir().unwrap();
    let t = |s: &str| parse_instant(s).unwrap();
    let book = &studio_book("0.05");
    // 75,000,000,000,000 s at 8 credits: 6 × 10^14 credits, within range alone.
    let seconds = Milli(75_000_000_000_000_000);
    let usage = |rows: &[(&str, &str)]| studio_usage(rows, seconds);
    let two = tmp.path().join("two");
    accounts_in_november(&two, book, &["a", "b"], Milli(500_000));
    write_parquet(
        &two.join("usage/part-0.parquet"),
        &usage(&[("e-a", "a"), ("e-b", "b")]),
    )
    .unwrap();
    let out = cmd("reconcile", &two, &tmp.path().join("two-out"))
        .output()
        .unwrap();
    assert_sum_overflow(&out, "the run's totals over every account");

    // One account: a 6 × 10^14 charge and a refund of as much, so that recorded − expected
    // is −1.2 × 10^15.
    let one = tmp.path().join("one");
    accounts_in_november(&one, book, &["a"], Milli(500_000));
    write_parquet(&one.join("usage/part-0.parquet"), &usage(&[("e-a", "a")])).unwrap();
    let refund = Table::default()
        .str("entry_id", ["r-1"])
        .str("account_id", ["a"])
        .opt_str("event_id", [None])
        .str("kind", ["refund"])
        .credits("credits", [Milli(600_000_000_000_000_000)])
        .ts("recorded_at", [t("2026-11-11T00:00:00Z")])
        .finish();
    write_parquet(&one.join("debits/part-0.parquet"), &refund).unwrap();
    let out = cmd("reconcile", &one, &tmp.path().join("one-out"))
        .output()
        .unwrap();
    assert_sum_overflow(&out, "account \"a\" over the run's periods");
}

/// A usage row whose quantity costs 10^15 credits or more at its rate is valid input
/// (|quantity| < 10^15): outside the window it is not priced and the run goes on; in the
/// window its charge cannot be written, and the run stops (exit 4, nothing published)
/// with one line naming the file, the row and how to fix it. The largest quantity that
/// prices within range is charged.
#[test]
fn a_charge_past_the_credit_range_stops_the_run_naming_the_row() {
    use tally::amount::Milli;
    use tally::time::parse_instant;
    use tally::write::{write_parquet, Table};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    // 8 credits per second (written 8.000; the message shows 8) in whole seconds:
    // 124,999,999,999,999 s cost 999,999,999,999,992 credits; 0.001 s more bills one more
    // second, 10^15 credits.
    let book = "currency = \"USD\"\n\
         [plans.max]\nprice = \"24.99\"\nincluded_credits = \"500\"\n\
         overage = { price_per_credit = \"0.05\" }\n\
         [[rates]]\nproduct = \"studio\"\naction = \"prompt_to_video\"\nunit = \"second\"\n\
         credits_per_unit = \"8.000\"\neffective_from = 2026-01-01T00:00:00Z\n";
    account_a_in_november(&root, book, Milli(500_000));
    let t = |s: &str| parse_instant(s).unwrap();
    let limit = Milli(124_999_999_999_999_000);
    let usage = |rows: &[(&str, Milli, &str)]| {
        Table::default()
            .str("event_id", rows.iter().map(|r| r.0))
            .str("account_id", rows.iter().map(|_| "a"))
            .str("product", rows.iter().map(|_| "studio"))
            .str("action", rows.iter().map(|_| "prompt_to_video"))
            .opt_str("model", rows.iter().map(|_| None))
            .credits("quantity", rows.iter().map(|r| r.1))
            .str("status", rows.iter().map(|_| "succeeded"))
            .ts("occurred_at", rows.iter().map(|r| t(r.2)))
            .opt_ts("ingested_at", rows.iter().map(|_| None))
            .finish()
    };
    let past = Milli(limit.0 + 1);
    let file = root.join("usage/part-0.parquet");
    // At the limit in the window; past it after as-of and in no allocation.
    write_parquet(
        &file,
        &usage(&[
            ("e-limit", limit, "2026-11-10T00:00:00Z"),
            ("e-later", past, "2026-11-25T00:00:00Z"),
            ("e-before", past, "2026-10-10T00:00:00Z"),
        ]),
    )
    .unwrap();
    let out_dir = tmp.path().join("out");
    let out = cmd("reconcile", &root, &out_dir).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let discrepancies = render(
        &out_dir.join("discrepancies.parquet"),
        &["entry_ids", "occurred_at", "product", "action", "model"],
    );
    assert_eq!(
        discrepancies,
        "kind,account_id,event_id,expected_credits,recorded_credits,delta_credits\n\
         missing_debit,a,e-limit,999999999999992.000,0.000,-999999999999992.000\n"
    );
    assert_eq!(
        render(&out_dir.join("rejects.parquet"), &["detail"]),
        "dataset,file,row,reason\nusage,usage/part-0.parquet,2,no_allocation\n"
    );

    // One past the limit, in the window.
    write_parquet(
        &file,
        &usage(&[
            ("e-limit", limit, "2026-11-10T00:00:00Z"),
            ("e-past", past, "2026-11-11T00:00:00Z"),
        ]),
    )
    .unwrap();
    let out_dir = tmp.path().join("stopped");
    let out = cmd("reconcile", &root, &out_dir).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(
        stderr_past_dataset_warnings(&out),
        "tally: amount overflow: usage/part-0.parquet row 1: event \"e-past\" costs 10^15 \
         credits or more (quantity 124999999999999.001 at 8 credits per second), past what a \
         credit amount holds (DECIMAL(18,3)); correct the row's quantity or remove the row, \
         then rerun\n"
    );
    assert!(!out_dir.exists());
    // A split run (rows read back from the spill: account `a` is in the third of 3
    // groups, the first spilled one) names the same row.
    let out = run_command("reconcile", &root, AS_OF, &out_dir)
        .args(["--groups", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("usage/part-0.parquet row 1: event \"e-past\""),
        "{}",
        stderr(&out)
    );
}

/// An `--out` no run could publish is exit 2 before the run takes a lock: one naming no
/// folder of its own (`.` was locked inside the working folder first, so a published close
/// run into from inside failed `tally verify` afterwards for its `..tally-lock`), and one
/// under a file (exit 4 at the lock before). A file, or a folder tally did not write, is
/// refused (exit 3) as before, but now before its lock: no `.NAME.tally-lock` is left.
#[test]
fn an_out_no_run_could_publish_is_refused_before_its_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let published = tmp.path().join("published");
    run_command_ok("close", &data, "2026-12-01T00:00:00Z", &published);
    let in_published = |out: &str| {
        run_command("close", &data, "2026-12-01T00:00:00Z", Path::new(out))
            .current_dir(&published)
            .output()
            .unwrap()
    };
    let no_name = |out: &str| {
        format!(
            "tally: {out}: the output path names no folder of its own (it is ., .. or /, or \
             ends in ..): give the output folder by its name, such as --out \"$PWD\" for the \
             working folder (or `out` in the job file)\n"
        )
    };
    for out in [".", "..", "/", "x/.."] {
        let run = in_published(out);
        assert_eq!(run.status.code(), Some(2), "{out}: {}", stderr(&run));
        assert_eq!(stderr(&run), no_name(out));
    }
    std::fs::write(published.join("a-file"), "x").unwrap();
    let run = in_published("a-file/sub");
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    assert_eq!(
        stderr(&run),
        "tally: a-file/sub: a-file is a file, so the output folder cannot be made under it: \
         choose an --out (or `out` in the job file) whose folders are folders\n"
    );
    let run = in_published("a-file");
    assert_eq!(run.status.code(), Some(3), "{}", stderr(&run));
    std::fs::remove_file(published.join("a-file")).unwrap();
    // Nothing was made inside the published close: it verifies as written.
    let verified = tally(&["verify", published.to_str().unwrap()]);
    assert_eq!(verified.status.code(), Some(0), "{}", stderr(&verified));
    // A foreign folder: refused, no lock file beside it.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "x").unwrap();
    let run = run_command("reconcile", &data, AS_OF, &foreign)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(3), "{}", stderr(&run));
    assert!(!tmp.path().join(".foreign.tally-lock").exists());
}

/// Output paths as an operator may type them publish where they name, or are refused
/// before anything is computed, and a failed publish leaves no folder behind: `out/.`
/// publishes `out` (it was checked as given and then renamed onto `out/.`, exit 4 after
/// the whole run, its staging folder left holding the output); `file/` is refused as the
/// file it names; a name that is not UTF-8 keeps its bytes when `{as_of_date}` is
/// filled in (it published into a folder with U+FFFD in its name).
#[test]
fn odd_output_paths_publish_where_they_name_and_leave_no_staging() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let outs = tmp.path().join("outs");
    std::fs::create_dir_all(&outs).unwrap();
    let reconcile = |out: &Path| {
        run_command("reconcile", &data, AS_OF, out)
            .output()
            .unwrap()
    };

    // A new folder, and an existing output, named with a trailing `.`.
    for _ in 0..2 {
        let run = reconcile(&outs.join("new").join("."));
        assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
        assert!(outs.join("new/manifest.json").is_file());
        assert!(leftovers(&outs).is_empty(), "{:?}", leftovers(&outs));
    }
    // A file named with a trailing `/`: refused as the file it is.
    std::fs::write(outs.join("a-file"), "x").unwrap();
    let run = reconcile(Path::new(&format!("{}/", outs.join("a-file").display())));
    assert_eq!(run.status.code(), Some(3), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("a-file exists and is not a folder"),
        "{}",
        stderr(&run)
    );
    assert!(leftovers(&outs).is_empty(), "{:?}", leftovers(&outs));
    // A name that is not UTF-8, with a placeholder.
    let mut odd = outs.as_os_str().as_bytes().to_vec();
    odd.extend_from_slice(b"/bad\xffname-{as_of_date}");
    let run = reconcile_into(&data, std::ffi::OsStr::from_bytes(&odd));
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let mut published = outs.as_os_str().as_bytes().to_vec();
    published.extend_from_slice(b"/bad\xffname-2026-11-20");
    let published = Path::new(std::ffi::OsStr::from_bytes(&published));
    assert!(
        published.join("manifest.json").is_file(),
        "published where it names"
    );
}

/// An empty `$TMPDIR` is the default, `/tmp` (the standard library's "" put a split run's
/// spill folders in the working folder, and a read-only one failed naming "").
#[test]
fn an_empty_tmpdir_spills_under_tmp() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let run = run_command("reconcile", &data, AS_OF, &tmp.path().join("out"))
        // 3 groups: the first two are held in memory, the third spilled.
        .args(["--groups", "3", "--log-format", "json"])
        .env("TMPDIR", "")
        .env("TALLY_LOG", "tally::spill=debug")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let read_back: Vec<String> = (stderr(&run).lines())
        .filter(|l| l.contains("spill file read back"))
        .map(|l| {
            let line: serde_json::Value = serde_json::from_str(l).unwrap();
            line["fields"]["file"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(!read_back.is_empty(), "{}", stderr(&run));
    for file in read_back {
        assert!(file.starts_with("/tmp/tally-spill-"), "{file}");
    }
}

/// A job file is read up to 1 MiB, the limit, and one byte more is refused (`--job
/// /dev/zero` was read until memory ran out).
#[test]
fn a_job_file_is_read_up_to_1_mib_and_one_byte_more_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let job = tmp.path().join("job.toml");
    let text = format!(
        "command = \"reconcile\"\ndata = {:?}\nout = {:?}\n",
        data.display().to_string(),
        tmp.path().join("out").display().to_string()
    );
    let limit = tally::job::MAX_JOB_FILE_BYTES as usize;
    let run_job = |job: &Path| {
        tally(&[
            "reconcile",
            "--job",
            job.to_str().unwrap(),
            "--as-of",
            AS_OF,
        ])
    };
    let padded = |size: usize| {
        let comment = size - text.len() - 2;
        format!("{text}#{}\n", "x".repeat(comment))
    };
    std::fs::write(&job, padded(limit)).unwrap();
    assert_eq!(std::fs::metadata(&job).unwrap().len() as usize, limit);
    let run = run_job(&job);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    std::fs::write(&job, padded(limit + 1)).unwrap();
    let run = run_job(&job);
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    assert_eq!(
        stderr(&run),
        format!(
            "tally: {}: is larger than 1 MiB: not a job file (a job file is a few lines of \
             TOML)\n",
            job.display()
        )
    );
    // A byte that is not UTF-8, within the limit.
    std::fs::write(&job, [text.as_bytes(), b"# \xff\n"].concat()).unwrap();
    let run = run_job(&job);
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    assert_eq!(
        stderr(&run),
        format!(
            "tally: {}: cannot read job file: it is not UTF-8 text (TOML is UTF-8); save it \
             as UTF-8\n",
            job.display()
        )
    );
    // Past the limit in characters of two bytes: cut inside one, still "larger".
    std::fs::write(&job, format!("{text}#{}\n", "\u{e9}".repeat(limit / 2))).unwrap();
    let run = run_job(&job);
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("is larger than 1 MiB"),
        "{}",
        stderr(&run)
    );
    let run = run_job(Path::new("/dev/zero"));
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    assert_eq!(
        stderr(&run),
        "tally: /dev/zero: is larger than 1 MiB: not a job file (a job file is a few lines of \
         TOML)\n"
    );
}

/// `tally reconcile` of `data` at [`AS_OF`] into `out`, a path that need not be UTF-8.
fn reconcile_into(data: &Path, out: &std::ffi::OsStr) -> Output {
    tally_command(&[
        "reconcile",
        "--data",
        data.to_str().unwrap(),
        "--as-of",
        AS_OF,
    ])
    .arg("--out")
    .arg(out)
    .output()
    .unwrap()
}

/// An output folder's name may have `write::MAX_OUT_NAME_BYTES` bytes (228: tally writes
/// `.NAME.tally-staging-PID-old` beside it, and a name holds 255 bytes); one byte more is
/// refused before the run locks, computes or writes anything (it failed at the write,
/// exit 4, naming a staging folder).
#[test]
fn an_output_name_at_the_limit_runs_and_one_past_is_refused_first() {
    use tally::write::MAX_OUT_NAME_BYTES;
    assert_eq!(MAX_OUT_NAME_BYTES, 228);
    let tmp = tempfile::tempdir().unwrap();
    let data = repo().join("fixtures/demo");
    let at_limit = tmp.path().join("o".repeat(MAX_OUT_NAME_BYTES));
    let ran = cmd("reconcile", &data, &at_limit).output().unwrap();
    assert!(ran.status.success(), "{}", stderr(&ran));
    assert!(at_limit.join("manifest.json").is_file());

    let past = tmp.path().join("p".repeat(MAX_OUT_NAME_BYTES + 1));
    let refused = cmd("reconcile", &data, &past).output().unwrap();
    // Refused as a bad setting is, before the run starts: no `run start` in the log.
    let logged = cmd("reconcile", &data, &past)
        .args(["--log-format", "json"])
        .env("TALLY_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(logged.status.code(), Some(2));
    assert!(
        !stderr(&logged).contains("run start"),
        "{}",
        stderr(&logged)
    );
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert_eq!(
        stderr_past_dataset_warnings(&refused),
        format!(
            "tally: {}: the output folder's name is 229 bytes, longer than the 228 an \
             output's name may have (tally writes `.NAME.tally-staging-PID-old` beside it, and \
             a file name holds 255 bytes): choose a shorter --out (or `out` in the job \
             file)\n",
            past.display()
        )
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("pp"))
        .collect();
    assert!(left.is_empty(), "nothing of the refused run is left");

    // A name that is not UTF-8 counts as tally writes it beside: each of these 0xFF bytes
    // is a U+FFFD of 3 bytes there, so 76 of them fit (228 bytes) and 77 do not.
    use std::os::unix::ffi::OsStrExt;
    let not_utf8 = |n: usize| tmp.path().join(std::ffi::OsStr::from_bytes(&vec![0xFF; n]));
    let into = |out: &Path| reconcile_into(&data, out.as_os_str());
    let fits = into(&not_utf8(76));
    assert!(fits.status.success(), "{}", stderr(&fits));
    let refused = into(&not_utf8(77));
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr_past_dataset_warnings(&refused).ends_with(
            ": the output folder's name is 231 bytes as tally writes it (each run of bytes \
             that are not UTF-8 as U+FFFD), longer than the 228 an output's name may have \
             (tally writes `.NAME.tally-staging-PID-old` beside it, and a file name holds 255 \
             bytes): choose a shorter --out (or `out` in the job file)\n"
        ),
        "{}",
        stderr(&refused)
    );
}

/// An overage whose money passes i64 minor units stops the close (exit 4, nothing
/// published) with the line naming the invoice, the figures and the plan to check, as the
/// invoice total's overflow does (it said only "overage ... does not fit minor units").
#[test]
fn an_overage_past_minor_units_names_its_invoice_and_plan() {
    use tally::amount::Milli;
    use tally::write::write_parquet;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    accounts_in_november(&root, &studio_book("1000000000000"), &["a"], Milli(500_000));
    // 75,000,000,000,000 s at 8 credits: 6 × 10^14 credits, all but 500 of them overage.
    let usage = studio_usage(&[("e-a", "a")], Milli(75_000_000_000_000_000));
    write_parquet(&root.join("usage/part-0.parquet"), &usage).unwrap();
    let out_dir = tmp.path().join("close");
    let out = cmd("close", &root, &out_dir).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(
        stderr_past_dataset_warnings(&out),
        "tally: amount overflow: invoice INV-a-20261101T000000Z: its overage of \
         599999999999500.000 credits at 1000000000000 USD a credit passes the largest amount in \
         minor units (9223372036854775807); check plan max's overage price_per_credit in the \
         price book (and the account's usage), then rerun\n"
    );
    assert!(!out_dir.exists());
}

/// A folder that looks foreign for the moment another run publishes into it (a two-rename
/// swap on a file system without an atomic one shows it without its manifest) is refused
/// as busy while that run holds the lock, not as a folder tally did not write; once the
/// lock is free, as foreign. A foreign folder with no lock file beside it is refused
/// without one being made.
#[test]
fn an_output_seen_mid_publish_is_busy_not_foreign() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("discrepancies.csv"), "being swapped in\n").unwrap();
    let run = || {
        run_command("reconcile", &data, AS_OF, &out)
            .output()
            .unwrap()
    };
    let foreign = format!(
        "tally: refused: {} holds files but no tally manifest.json; tally replaces only its own \
         output folders: choose a new or empty folder\n",
        out.display()
    );
    let lock_path = tmp.path().join(".out.tally-lock");
    let refused = run();
    assert_eq!(refused.status.code(), Some(3));
    assert_eq!(stderr(&refused), foreign);
    assert!(!lock_path.exists(), "no lock file made for a refused run");

    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.try_lock().unwrap();
    let busy = run();
    assert_eq!(busy.status.code(), Some(3));
    assert_eq!(stderr(&busy), writing_right_now(&out));
    lock.unlock().unwrap();
    assert_eq!(stderr(&run()), foreign);
}

/// Odd things where tally keeps its own files beside an output: a FIFO (or a folder) at
/// the lock file's path is refused (exit 3, naming it) instead of blocking the open for
/// ever; a staging folder named for a process that is alive (PID 1) is still removed,
/// since the run holds the output's lock, which every run writing the output takes first.
#[test]
fn a_fifo_at_the_lock_path_is_refused_and_a_live_pids_staging_removed() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let demo = repo().join("fixtures/demo");
    let out = tmp.path().join("out");
    let lock = tmp.path().join(".out.tally-lock");
    let fifo = std::ffi::CString::new(lock.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let mut child = run_command("reconcile", &demo, AS_OF, &out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_or_kill(
        &mut child,
        Duration::from_secs(60),
        "a FIFO at the lock path blocked the run",
    );
    let refused = child.wait_with_output().unwrap();
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert_eq!(
        stderr(&refused),
        format!(
            "tally: refused: {} is not a regular file (a folder, a FIFO or a device), where \
             tally keeps its lock file: remove it and rerun\n",
            lock.display()
        )
    );
    assert!(!out.exists());
    std::fs::remove_file(&lock).unwrap();
    std::fs::create_dir(&lock).unwrap();
    let refused = run_command("reconcile", &demo, AS_OF, &out)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    std::fs::remove_dir(&lock).unwrap();

    let live = tmp.path().join(".out.tally-staging-1");
    std::fs::create_dir(&live).unwrap();
    std::fs::write(live.join("discrepancies.csv"), b"half").unwrap();
    let ran = run_command("reconcile", &demo, AS_OF, &out)
        .output()
        .unwrap();
    assert!(
        ran.status.code().is_some_and(|c| c <= 1),
        "{}",
        stderr(&ran)
    );
    assert!(!live.exists(), "{}", stderr(&ran));
    assert!(
        stderr(&ran).contains("removing a staging folder left by an earlier run"),
        "{}",
        stderr(&ran)
    );
}
