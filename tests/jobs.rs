//! The job definitions in `jobs/` as the schedulers run them: each crontab line, systemd
//! `ExecStart` and Kubernetes container command, with the scheduler's escapes undone and its
//! install paths (`/etc/tally`, `/var/lib/tally/out`, the pods' mounts) mapped into a
//! temporary folder, runs the repository's job files on the bundled fixtures and publishes.
//! A job line that quotes wrongly, names a job file or flag that does not exist, or points
//! its `--out` outside the close's `history` fails here, not on the first night in
//! production. The sharded reconcile's Indexed Job and merge Job run too, every index as
//! Kubernetes starts it, and must publish what one run publishes. The schedulers themselves
//! (cron's clock, systemd, a cluster, the sharded driver's kubectl) are not run.

use crate::common::repo;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An installation of the job files in a temporary folder, as `jobs/README.md` describes
/// (absolute `data`, `out` and `history`), with `tally` and a `logger` that appends to a file
/// on its PATH.
struct Installed {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Installed {
    fn new() -> Installed {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        copy_tree(&repo().join("fixtures/demo"), &root.join("data"));
        let etc = root.join("etc/tally");
        std::fs::create_dir_all(&etc).unwrap();
        for job in ["nightly-reconcile.toml", "period-close.toml"] {
            let text = std::fs::read_to_string(repo().join("jobs").join(job)).unwrap();
            let data = root.join("data");
            let out = root.join("out");
            let installed = text
                .replace(
                    "\"../fixtures/demo\"",
                    &format!("{:?}", data.display().to_string()),
                )
                .replace("\"../out/", &format!("\"{}/", out.display()));
            assert_ne!(
                installed, text,
                "{job}: its data and out paths were not found"
            );
            std::fs::write(etc.join(job), installed).unwrap();
        }
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tally"), bin.join("tally")).unwrap();
        let logger = bin.join("logger");
        let log = root.join("syslog");
        std::fs::write(
            &logger,
            format!("#!/bin/sh\ncat >> {:?}\n", log.display().to_string()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&logger, std::fs::Permissions::from_mode(0o755)).unwrap();
        Installed { _tmp: tmp, root }
    }

    /// `command` with the production paths mapped into this installation.
    fn localise(&self, command: &str) -> String {
        let root = self.root.display();
        command
            .replace("/usr/local/bin/tally", &format!("{root}/bin/tally"))
            .replace("/etc/tally/", &format!("{root}/etc/tally/"))
            .replace("/var/lib/tally/out", &format!("{root}/out"))
    }

    /// Run `command` with `shell -c`, in an environment holding only `env` (PATH gets this
    /// installation's bin folder first), from the installation's folder.
    fn run(&self, shell: &str, command: &str, env: &[(String, String)]) -> std::process::Output {
        let mut run = Command::new(shell);
        run.arg("-c")
            .arg(command)
            .env_clear()
            .current_dir(&self.root);
        let mut path = format!("{}", self.root.join("bin").display());
        for (name, value) in env {
            match name.as_str() {
                "PATH" => path = format!("{path}:{value}"),
                _ => {
                    run.env(name, value);
                }
            }
        }
        run.env("PATH", path).env("HOME", &self.root);
        run.output().unwrap()
    }

    fn out(&self) -> PathBuf {
        self.root.join("out")
    }

    /// A ConfigMap's job file installed where the pods mount it (`/etc/tally`), its
    /// claims' paths (`/data`, `/out`) mapped as the containers' are.
    fn install_config_map(&self, job: &str, text: &str) {
        let root = self.root.display();
        let text = text
            .replace("\"/data\"", &format!("\"{root}/data\""))
            .replace("\"/out/", &format!("\"{root}/out/"));
        std::fs::write(self.root.join("etc/tally").join(job), text).unwrap();
    }

    /// A container's program and its arguments, with the pods' mounts (`/etc/tally`,
    /// `/out`, `/scratch`) mapped into this installation.
    fn container(&self, manifest: &Manifest) -> (String, Vec<String>) {
        let mut words: Vec<String> = (manifest.command.iter())
            .chain(&manifest.args)
            .map(|word| self.mount(word))
            .collect();
        let program = words.remove(0);
        (program, words)
    }

    fn mount(&self, word: &str) -> String {
        let root = self.root.display();
        let word = word
            .replace("/usr/local/bin/tally", &format!("{root}/bin/tally"))
            .replace("/etc/tally/", &format!("{root}/etc/tally/"))
            .replace("\"/out/", &format!("\"{root}/out/"));
        // A whole argument naming a mount (an args item, not inside a shell line).
        for mount in ["/out/", "/scratch"] {
            if word.starts_with(mount) {
                return format!("{root}{word}");
            }
        }
        word
    }

    fn syslog(&self) -> String {
        std::fs::read_to_string(self.root.join("syslog")).unwrap_or_default()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        match entry.file_type().unwrap().is_dir() {
            true => copy_tree(&entry.path(), &target),
            false => {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
}

/// Where a job writes: the reconcile's folder, or the close's `closes/YYYY-MM-01` of the
/// UTC month the job line's `date -u` saw.
enum Writes {
    Reconcile,
    Close,
}

impl Writes {
    /// The folders the job may have written, given the UTC months before and after it ran
    /// (one, unless the run crossed a month's end).
    fn folders(&self, out: &Path, months: [&str; 2]) -> Vec<PathBuf> {
        match self {
            Writes::Reconcile => vec![out.join("nightly-reconcile")],
            Writes::Close => months.iter().map(|m| out.join("closes").join(m)).collect(),
        }
    }
}

fn utc_month() -> String {
    chrono::Utc::now().format("%Y-%m-01").to_string()
}

/// Run `job`, then assert that it published its output (an alert, exit 1, publishes too).
fn published_by(
    installed: &Installed,
    writes: Writes,
    what: &str,
    job: impl FnOnce() -> std::process::Output,
) -> std::process::Output {
    let before = utc_month();
    let ran = job();
    let after = utc_month();
    let folders = writes.folders(&installed.out(), [&before, &after]);
    assert!(
        folders.iter().any(|f| f.join("manifest.json").is_file()),
        "{what}: nothing published at {folders:?}: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    ran
}

/// Every line of `crontab` that sets a variable, and every job line's command (the text
/// after the five time fields), with cron's escape undone: `\%` is a literal `%`.
fn crontab(text: &str) -> (Vec<(String, String)>, Vec<String>) {
    let (mut env, mut jobs) = (Vec::new(), Vec::new());
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap();
        match first.split_once('=') {
            Some((name, value)) if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') => {
                env.push((name.to_string(), value.to_string()));
            }
            _ => {
                let mut rest = line;
                for _ in 0..5 {
                    let field = rest.split_whitespace().next().unwrap();
                    assert!(
                        field
                            .chars()
                            .all(|c| c.is_ascii_digit() || "*/,-".contains(c)),
                        "not a time field: {field} in {line}"
                    );
                    rest = rest.trim_start()[field.len()..].trim_start();
                }
                assert!(
                    !rest.replace("\\%", "").contains('%'),
                    "an unescaped % (cron's newline): {line}"
                );
                jobs.push(rest.replace("\\%", "%"));
            }
        }
    }
    (env, jobs)
}

/// The crontab's two job lines, run by the crontab's SHELL with the crontab's variables as
/// cron would: both publish, the syslog gets the JSON log, and what cron would mail is
/// nothing or the documented two lines (tally's own, and the exit code with the runbook).
#[test]
fn the_crontab_lines_run_the_installed_jobs() {
    let installed = Installed::new();
    let text = std::fs::read_to_string(repo().join("jobs/crontab")).unwrap();
    let (env, jobs) = crontab(&text);
    let shell = env
        .iter()
        .find(|(name, _)| name == "SHELL")
        .map(|(_, value)| value.clone())
        .expect("the crontab sets SHELL");
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for (job, (command, writes)) in jobs
        .iter()
        .zip([("reconcile", Writes::Reconcile), ("close", Writes::Close)])
    {
        assert!(job.contains(&format!("tally {command} ")), "{job}");
        let ran = published_by(&installed, writes, command, || {
            installed.run(&shell, &installed.localise(job), &env)
        });
        let mail = String::from_utf8_lossy(&ran.stdout);
        assert!(
            ran.status.success(),
            "{command}: {mail}{}",
            String::from_utf8_lossy(&ran.stderr)
        );
        // Exit 0 mails nothing; an alert (exit 1: the fixtures' month may be past) mails
        // tally's line and the exit code. Exit 2, 3 or 4 would be a broken job definition.
        if !mail.is_empty() {
            assert!(mail.contains("tally: alert: "), "{command}: {mail}");
            assert!(
                mail.contains("exited 1 on ") && mail.contains("runbook"),
                "{command}: {mail}"
            );
        }
    }
    let syslog = installed.syslog();
    assert!(
        syslog.lines().any(|l| l.contains("\"run done\"")),
        "the JSON log reaches logger: {syslog}"
    );
}

/// `ExecStart=` of a systemd unit with systemd's escapes undone (`%%` is `%`, `$$` is `$`).
/// A single `%` or `$` would be systemd's own (a specifier, a variable of the unit's
/// environment), which these units never mean: refused.
fn exec_start(unit: &str) -> String {
    let text = std::fs::read_to_string(repo().join("jobs/systemd").join(unit)).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{unit} has no ExecStart"));
    let unescaped = line.replace("%%", "").replace("$$", "");
    assert!(
        !unescaped.contains('%') && !unescaped.contains('$'),
        "{unit}: a % or $ systemd would expand: {line}"
    );
    line.replace("%%", "%").replace("$$", "$")
}

/// The systemd services' `ExecStart` commands, run by a shell (systemd runs the first word
/// with the rest as arguments; the close's is itself `/bin/sh -c '...'`), publish.
#[test]
fn the_systemd_services_run_the_installed_jobs() {
    let installed = Installed::new();
    // systemd's PATH for system services, and the unit's own Environment= (TALLY_LOG;
    // warn here to keep the test's output short).
    let env = [
        (
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
        ("TALLY_LOG".to_string(), "warn".to_string()),
    ];
    for (unit, writes) in [
        ("tally-reconcile.service", Writes::Reconcile),
        ("tally-close.service", Writes::Close),
    ] {
        let command = installed.localise(&exec_start(unit));
        let ran = published_by(&installed, writes, unit, || {
            installed.run("/bin/sh", &format!("exec {command}"), &env)
        });
        let code = ran.status.code();
        assert!(
            matches!(code, Some(0 | 1)),
            "{unit}: exit {code:?}: {}",
            String::from_utf8_lossy(&ran.stderr)
        );
    }
}

/// The YAML documents of a Kubernetes manifest: the ConfigMap's job file (the block under
/// `NAME.toml: |`) and the container's `command` and `args` as the container would get
/// them (`$$` is Kubernetes' escape for `$`; a `>-` item is folded into one line).
struct Manifest {
    /// The ConfigMap's job file, if the manifest has one.
    job_file: Option<String>,
    command: Vec<String>,
    args: Vec<String>,
    /// The container's `env` (name, value).
    env: Vec<(String, String)>,
    /// `completions` of an Indexed Job.
    completions: Option<u32>,
}

fn manifest(file: &str) -> Manifest {
    let text = std::fs::read_to_string(repo().join("jobs/kubernetes").join(file)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let block = |at: usize| -> Vec<&str> {
        let depth = indent(lines[at]);
        (lines[at + 1..].iter())
            .take_while(|l| l.trim().is_empty() || indent(l) > depth)
            .copied()
            .collect()
    };
    let find = |key: &str| {
        (lines.iter())
            .position(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("{file}: no {key}"))
    };
    let job_file = (lines.iter())
        .position(|l| l.trim_end().ends_with(".toml: |"))
        .map(|at| {
            let job_lines = block(at);
            let depth = (job_lines.iter())
                .filter(|l| !l.trim().is_empty())
                .map(|l| indent(l))
                .min()
                .unwrap();
            (job_lines.iter())
                .map(|l| format!("{}\n", l.get(depth..).unwrap_or("")))
                .collect::<String>()
        });
    let command_line = lines[find("command: [")].trim_start();
    let command: Vec<String> = command_line["command: [".len()..]
        .trim_end_matches(']')
        .split(',')
        .map(|word| word.trim().trim_matches('"').to_string())
        .collect();
    let mut args = Vec::new();
    let not_comment = |l: &&str| !l.trim().is_empty() && !l.trim_start().starts_with('#');
    let mut items = block(find("args:"))
        .into_iter()
        .filter(not_comment)
        .peekable();
    while let Some(line) = items.next() {
        let item = line.trim_start().strip_prefix("- ").expect("an args item");
        let text = match item {
            ">-" => {
                let depth = indent(line);
                let mut folded = Vec::new();
                while let Some(next) = items.next_if(|l| indent(l) > depth) {
                    folded.push(next.trim());
                }
                folded.join(" ")
            }
            // A double-quoted scalar (`"__AS_OF__"`) is its text without the quotes.
            plain => match plain.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
                Some(quoted) => quoted.to_string(),
                None => plain.to_string(),
            },
        };
        args.push(text.replace("$$", "$"));
    }
    // `- name: X` then `value: Y` (or `value: "Y"`), each pair an item of `env:`.
    let mut env = Vec::new();
    if let Some(at) = lines.iter().position(|l| l.trim() == "env:") {
        let items: Vec<&str> = block(at).into_iter().filter(not_comment).collect();
        let value_of = |l: &str, key: &str| {
            let l = l.trim().trim_start_matches("- ");
            l.strip_prefix(key)
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        for pair in items.windows(2) {
            if let (Some(name), Some(value)) =
                (value_of(pair[0], "name:"), value_of(pair[1], "value:"))
            {
                env.push((name, value));
            }
        }
    }
    let completions = (lines.iter())
        .find_map(|l| l.trim().strip_prefix("completions:"))
        .map(|v| v.split('#').next().unwrap().trim().parse().unwrap());
    Manifest {
        job_file,
        command,
        args,
        env,
        completions,
    }
}

/// The job file's settings other than its paths (`data`, `out`, `history`), with the
/// default memory budget spelled out.
fn settings(text: &str) -> toml::Table {
    let mut table: toml::Table = toml::from_str(text).unwrap();
    for path in ["data", "out", "history"] {
        table.remove(path);
    }
    table
        .entry("memory_budget")
        .or_insert_with(|| toml::Value::String("3GiB".into()));
    table
}

/// The CronJobs' ConfigMaps hold the repository's job files with the pods' paths (same
/// command, settle, as-of, budget and `[alert]`: "keep [alert] in step"), each a valid job
/// file; and each container's command, run with the mounts mapped into an installation of
/// those job files, publishes.
#[test]
fn the_kubernetes_cronjobs_hold_and_run_the_repository_jobs() {
    for (file, job) in [
        ("cronjob-reconcile.yaml", "nightly-reconcile.toml"),
        ("cronjob-close.yaml", "period-close.toml"),
    ] {
        let manifest = manifest(file);
        let job_file = manifest
            .job_file
            .clone()
            .expect("a ConfigMap with the job file");
        toml::from_str::<tally::job::JobFile>(&job_file)
            .unwrap_or_else(|e| panic!("{file}: not a job file: {e}"));
        let repo_job = std::fs::read_to_string(repo().join("jobs").join(job)).unwrap();
        assert_eq!(settings(&job_file), settings(&repo_job), "{file}");

        let installed = Installed::new();
        installed.install_config_map(job, &job_file);
        let root = installed.root.display().to_string();
        let (program, words) = installed.container(&manifest);
        let writes = match job {
            "nightly-reconcile.toml" => Writes::Reconcile,
            _ => Writes::Close,
        };
        let ran = published_by(&installed, writes, file, || {
            Command::new(&program)
                .args(&words)
                .env_clear()
                .env("PATH", format!("{root}/bin:/usr/bin:/bin"))
                .env("TALLY_LOG", "warn")
                .output()
                .unwrap()
        });
        let code = ran.status.code();
        assert!(
            matches!(code, Some(0 | 1)),
            "{file}: {program} {words:?}: exit {code:?}: {}",
            String::from_utf8_lossy(&ran.stderr)
        );
    }
}

/// The sharded reconcile's Indexed Job, every index run as Kubernetes starts it (its
/// `JOB_COMPLETION_INDEX`, the Job's `TALLY_SHARDS`, `TMPDIR` and the driver's `__AS_OF__`
/// filled in), then its merge Job: the merge publishes what one run of the same job file
/// publishes, byte for byte. The driver itself (`run.sh`, kubectl) is not run.
#[test]
fn the_kubernetes_sharded_jobs_publish_what_one_run_does() {
    let shards = manifest("sharded/shards-job.yaml");
    let merge = manifest("sharded/merge-job.yaml");
    let config = manifest("cronjob-reconcile.yaml").job_file.unwrap();
    let installed = Installed::new();
    installed.install_config_map("nightly-reconcile.toml", &config);
    std::fs::create_dir_all(installed.root.join("scratch")).unwrap();
    let completions = shards.completions.expect("an Indexed Job's completions");
    let tally_shards = (shards.env.iter())
        .find(|(name, _)| name == "TALLY_SHARDS")
        .map(|(_, value)| value.parse::<u32>().unwrap());
    assert_eq!(
        tally_shards,
        Some(completions),
        "TALLY_SHARDS is the completions"
    );
    let as_of = "2026-11-20T00:00:00Z";
    let run_container = |manifest: &Manifest, index: Option<u32>| {
        let (program, words) = installed.container(manifest);
        let words: Vec<String> = (words.iter())
            .map(|word| word.replace("__AS_OF__", as_of))
            .collect();
        let mut command = Command::new(&program);
        command
            .args(&words)
            .env_clear()
            .env("PATH", "/usr/bin:/bin");
        for (name, value) in &manifest.env {
            command.env(name, installed.mount(value));
        }
        command.env("TALLY_LOG", "warn");
        if let Some(index) = index {
            command.env("JOB_COMPLETION_INDEX", index.to_string());
        }
        let ran = command.output().unwrap();
        assert!(
            ran.status.success(),
            "{program} {words:?} (index {index:?}): {}",
            String::from_utf8_lossy(&ran.stderr)
        );
    };
    for index in 0..completions {
        run_container(&shards, Some(index));
    }
    run_container(&merge, None);

    let single = installed.root.join("single");
    let job = installed.root.join("etc/tally/nightly-reconcile.toml");
    crate::common::tally_ok(&[
        "reconcile",
        "--job",
        job.to_str().unwrap(),
        "--as-of",
        as_of,
        "--out",
        single.to_str().unwrap(),
    ]);
    let merged = installed.out().join("nightly-reconcile");
    assert!(
        crate::common::folder_bytes(&merged) == crate::common::folder_bytes(&single),
        "the merged sharded run differs from one run"
    );
}
