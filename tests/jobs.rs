//! The job definitions in `jobs/` as the schedulers run them: each crontab line, systemd
//! `ExecStart` and Kubernetes container command, with the scheduler's escapes undone and its
//! install paths (`/etc/tally`, `/var/lib/tally/out`, the pods' mounts) mapped into a
//! temporary folder, runs the repository's job files on the bundled fixtures and publishes.
//! A job line that quotes wrongly, names a job file or flag that does not exist, or points
//! its `--out` outside the close's `history` fails here, not on the first night in
//! production. The sharded reconcile's driver (`run.sh`) runs as its CronJob's pod runs it,
//! against a fake `kubectl` that answers with scripted Job conditions: it must create the
//! merge Job only after the shards Job completed, fail when either Job fails, and ride out a
//! passing API error. The Indexed Job and merge Job it created run too, every index as
//! Kubernetes starts it, and must publish what one run publishes. The schedulers themselves
//! (cron's clock, systemd, a real cluster) are not run.

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
        let log = root.join("syslog");
        write_script(
            &bin.join("logger"),
            &format!("#!/bin/sh\ncat >> {}\n", quoted(&log)),
        );
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
    /// `/out`, `/scratch`, the driver's `/manifests`) mapped into this installation.
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
        for mount in ["/out/", "/scratch", "/manifests/"] {
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

/// An executable shell script at `path`.
fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `path` as a double-quoted shell word.
fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
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
    manifest_text(file, &text)
}

/// [`manifest`] of a manifest's `text` (one the sharded driver created, say), `name` saying
/// which in the messages.
fn manifest_text(name: &str, text: &str) -> Manifest {
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
            .unwrap_or_else(|| panic!("{name}: no {key}"))
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
    // No `args:` (the driver's container): the command is the whole of it.
    let args_at = (lines.iter()).position(|l| l.trim_start().starts_with("args:"));
    let mut items = (args_at.map(&block).unwrap_or_default().into_iter())
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

/// `kubectl` as the sharded driver uses it, against a scripted cluster kept in the folder
/// `@STATE@`. `create -f FILE -o name` keeps FILE (`-`: stdin) as `created-N.yaml`, N
/// counting the Jobs created, and prints `job.batch/<its generateName>N`.
/// `get NAME --request-timeout=30s -o jsonpath=<the driver's>` of a Job it created prints the next line of
/// `answers` as the Job's True conditions, as that jsonpath prints them: `RUNNING` is none
/// yet (nothing printed), `ERR` an unreachable API (a message, exit 1). Each call is a line
/// of `calls`. Any other use exits 9 with a message and an `unexpected:` line in `calls`:
/// the driver takes a failed read for a passing API error, so only `calls` would show it.
const FAKE_KUBECTL: &str = r#"#!/bin/sh
k=@STATE@
unexpected() {
    echo "unexpected: kubectl $*" >> "$k/calls"
    echo "fake kubectl: not a use the driver makes: kubectl $*" >&2
    exit 9
}
case "$1" in
create)
    [ $# -eq 5 ] && [ "$2" = -f ] && [ "$4" = -o ] && [ "$5" = name ] || unexpected "$@"
    n=$(($(cat "$k/created") + 1))
    echo "$n" > "$k/created"
    cat -- "$3" > "$k/created-$n.yaml" || unexpected "$@"
    prefix=$(sed -n 's/^  generateName: //p' "$k/created-$n.yaml")
    [ -n "$prefix" ] || unexpected "$@" "(no metadata.generateName)"
    echo "job.batch/$prefix$n" >> "$k/names"
    echo "create job.batch/$prefix$n" >> "$k/calls"
    echo "job.batch/$prefix$n"
    ;;
get)
    conditions='jsonpath={range .status.conditions[?(@.status=="True")]}{.type} {end}'
    [ $# -eq 5 ] && [ "$3" = --request-timeout=30s ] && [ "$4" = -o ] && [ "$5" = "$conditions" ] \
        || unexpected "$@"
    grep -qxF -e "$2" "$k/names" || unexpected "$@" "(no such Job created)"
    n=$(($(cat "$k/got") + 1))
    [ "$n" -le "$(wc -l < "$k/answers")" ] || unexpected "$@" "(no answer left)"
    echo "$n" > "$k/got"
    answer=$(sed -n "${n}p" "$k/answers")
    echo "get $2 -> $answer" >> "$k/calls"
    case "$answer" in
    ERR) echo "Unable to connect to the server: dial tcp 10.96.0.1:443: i/o timeout" >&2; exit 1 ;;
    RUNNING) ;;
    *) printf '%s' "$answer" ;;
    esac
    ;;
*) unexpected "$@" ;;
esac
"#;

/// `sleep` that only writes its call to the fake cluster's `calls` (the driver's 15-second
/// polls take no time, and their place among kubectl's calls is seen).
const FAKE_SLEEP: &str = "#!/bin/sh\necho \"sleep $*\" >> @STATE@/calls\n";

/// The scripted answers of [`FAKE_KUBECTL`] to the driver's reads of a Job: its True
/// conditions as the driver's jsonpath prints them (Kubernetes 1.31 sets
/// `SuccessCriteriaMet` before `Complete`, `FailureTarget` before `Failed`), none while it
/// runs, or an API that does not answer.
const COMPLETE: &str = "SuccessCriteriaMet Complete ";
const FAILED: &str = "FailureTarget Failed ";
const RUNNING: &str = "RUNNING";
const API_ERROR: &str = "ERR";

/// The Jobs the fake cluster names, in the order the driver creates them.
const SHARDS_JOB: &str = "job.batch/tally-reconcile-shards-1";
const MERGE_JOB: &str = "job.batch/tally-reconcile-merge-2";

/// A line of the fake cluster's `calls`: `job` created.
fn created(job: &str) -> String {
    format!("create {job}")
}

/// A line of the fake cluster's `calls`: `job` read, and the scripted answer.
fn got(job: &str, answer: &str) -> String {
    format!("get {job} -> {answer}")
}

/// A line of the fake cluster's `calls`: the driver's wait before its next read.
const SLEPT: &str = "sleep 15";

/// `misses` reads of `job` the API did not answer, each followed by the driver's wait (the
/// caller drops the last wait where the driver gives up).
fn api_errors(job: &str, misses: usize) -> Vec<String> {
    (0..misses)
        .flat_map(|_| [got(job, API_ERROR), SLEPT.to_string()])
        .collect()
}

/// The calls of a night's end: the shards Job read Complete, the merge Job created and
/// read Complete.
fn then_merged() -> [String; 3] {
    [
        got(SHARDS_JOB, COMPLETE),
        created(MERGE_JOB),
        got(MERGE_JOB, COMPLETE),
    ]
}

/// One run of the sharded driver: its output, every kubectl and sleep call in order, and
/// the manifests it created (the first is `created-1.yaml`).
struct Driven {
    output: std::process::Output,
    calls: Vec<String>,
    created: Vec<String>,
}

impl Driven {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        crate::common::stderr(&self.output)
    }

    /// Everything the run did, for a failed assertion's message.
    fn story(&self) -> String {
        format!(
            "exit {:?}\ncalls: {:#?}\nstdout:\n{}stderr:\n{}",
            self.output.status.code(),
            self.calls,
            self.stdout(),
            self.stderr()
        )
    }
}

impl Installed {
    /// Run the sharded driver once as its CronJob's pod runs it: `run.sh` and the two Job
    /// manifests in `manifests/` (the ConfigMap's mount, `/manifests`), the CronJob's
    /// container command with the mount mapped, `AS_OF` only when given, and PATH the bin
    /// folder (a [`FAKE_KUBECTL`] answering `answers` in order, a [`FAKE_SLEEP`]) then
    /// `/usr/bin:/bin` (the real `sed` and `date`), and a local time 14 hours ahead of UTC
    /// (the driver image's zone may be anything; the as-of must be UTC). Once per
    /// installation.
    fn drive(&self, answers: &[&str], as_of: Option<&str>) -> Driven {
        let sharded = repo().join("jobs/kubernetes/sharded");
        let manifests = self.root.join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        let run_sh = std::fs::read_to_string(sharded.join("run.sh")).unwrap();
        let installed = run_sh.replace("/manifests/", &format!("{}/", manifests.display()));
        assert_ne!(
            installed, run_sh,
            "run.sh: its /manifests/ paths were not found"
        );
        std::fs::write(manifests.join("run.sh"), installed).unwrap();
        for job in ["shards-job.yaml", "merge-job.yaml"] {
            std::fs::copy(sharded.join(job), manifests.join(job)).unwrap();
        }

        let state = self.root.join("kubectl");
        std::fs::create_dir(&state).unwrap();
        for (file, text) in [("calls", ""), ("names", ""), ("created", "0"), ("got", "0")] {
            std::fs::write(state.join(file), text).unwrap();
        }
        assert!(answers.iter().all(|a| !a.contains('\n')), "{answers:?}");
        let answers: String = answers.iter().map(|a| format!("{a}\n")).collect();
        std::fs::write(state.join("answers"), answers).unwrap();
        let bin = self.root.join("bin");
        for (program, script) in [("kubectl", FAKE_KUBECTL), ("sleep", FAKE_SLEEP)] {
            write_script(
                &bin.join(program),
                &script.replace("@STATE@", &quoted(&state)),
            );
        }

        let driver = manifest("sharded/driver-cronjob.yaml");
        let (program, words) = self.container(&driver);
        let mut command = Command::new(&program);
        command
            .args(&words)
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("HOME", &self.root)
            .env("TZ", "LINT-14")
            .current_dir(&self.root);
        if let Some(as_of) = as_of {
            command.env("AS_OF", as_of);
        }
        let output = command.output().unwrap();
        let calls = std::fs::read_to_string(state.join("calls")).unwrap();
        let count: usize = (std::fs::read_to_string(state.join("created")).unwrap())
            .trim()
            .parse()
            .unwrap();
        Driven {
            output,
            calls: calls.lines().map(str::to_string).collect(),
            created: (1..=count)
                .map(|n| std::fs::read_to_string(state.join(format!("created-{n}.yaml"))))
                .collect::<Result<_, _>>()
                .unwrap(),
        }
    }
}

/// A sharded Job manifest of the repository, as `run.sh` ships in the ConfigMap.
fn sharded_manifest(job: &str) -> String {
    std::fs::read_to_string(repo().join("jobs/kubernetes/sharded").join(job)).unwrap()
}

/// What the driver prints on a night that published, as of `as_of`.
fn published_night(as_of: &str) -> String {
    format!(
        "sharded reconcile as of {as_of}\ncreated {SHARDS_JOB}\ncreated {MERGE_JOB}\n\
         published /out/nightly-reconcile as of {as_of}\n"
    )
}

/// The sharded reconcile as the CronJob runs it: its driver (`run.sh`, against the scripted
/// cluster of [`FAKE_KUBECTL`] answering that each Job completed) creates the Indexed Job
/// and the merge Job; then every index of the Job it created runs as Kubernetes starts it
/// (its `JOB_COMPLETION_INDEX`, the Job's `TALLY_SHARDS` and `TMPDIR`, the as-of the driver
/// wrote in), then the merge Job it created: the merge publishes what one run of the same
/// job file publishes, byte for byte. A real cluster (its scheduling, retries, the pods
/// running while the driver waits) is not run.
#[test]
fn the_kubernetes_sharded_jobs_publish_what_one_run_does() {
    let installed = Installed::new();
    let as_of = "2026-11-20T00:00:00Z";
    let driven = installed.drive(&[COMPLETE, COMPLETE], Some(as_of));
    assert!(driven.output.status.success(), "{}", driven.story());
    let [shards, merge] = &driven.created[..] else {
        panic!("not two Jobs created: {}", driven.story());
    };
    let shards = manifest_text("the driver's shards Job", shards);
    let merge = manifest_text("the driver's merge Job", merge);
    let config = manifest("cronjob-reconcile.yaml").job_file.unwrap();
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
    let run_container = |manifest: &Manifest, index: Option<u32>| {
        let (program, words) = installed.container(manifest);
        assert!(
            words.iter().all(|word| !word.contains("__AS_OF__")),
            "the driver left __AS_OF__ in {words:?}"
        );
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

/// A night that goes well: the driver creates the shards Job with the night's as-of in
/// place of `__AS_OF__` (one instant for every shard, or the merge refuses them), reads it
/// every 15 seconds while it runs, creates the merge Job only once the shards Job is
/// Complete (a merge started early refuses missing shards), waits for the merge and exits
/// 0 with the as-of it published.
#[test]
fn the_sharded_driver_merges_once_every_shard_finished() {
    let installed = Installed::new();
    let as_of = "2026-11-20T00:00:00Z";
    let driven = installed.drive(&[RUNNING, COMPLETE, COMPLETE], Some(as_of));
    let story = driven.story();
    assert!(driven.output.status.success(), "{story}");
    assert_eq!(
        driven.calls,
        [
            created(SHARDS_JOB),
            got(SHARDS_JOB, RUNNING),
            SLEPT.to_string(),
            got(SHARDS_JOB, COMPLETE),
            created(MERGE_JOB),
            got(MERGE_JOB, COMPLETE),
        ],
        "{story}"
    );
    let shards = sharded_manifest("shards-job.yaml");
    assert!(
        shards.contains("\"__AS_OF__\""),
        "shards-job.yaml: no __AS_OF__"
    );
    assert_eq!(driven.created.len(), 2, "{story}");
    assert_eq!(driven.created[0], shards.replace("__AS_OF__", as_of));
    assert!(!driven.created[0].contains("__AS_OF__"), "{story}");
    assert_eq!(driven.created[1], sharded_manifest("merge-job.yaml"));
    assert_eq!(driven.stdout(), published_night(as_of), "{story}");
    assert_eq!(driven.stderr(), "", "{story}");
}

/// A shard that failed for good fails the shards Job: the driver exits 1 (the CronJob's Job
/// fails and alerts) with the `kubectl describe` to run, and never creates the merge Job,
/// which would only refuse the missing shard.
#[test]
fn the_sharded_driver_fails_without_merging_when_the_shards_job_fails() {
    let installed = Installed::new();
    let driven = installed.drive(&[RUNNING, FAILED], Some("2026-11-20T00:00:00Z"));
    let story = driven.story();
    assert_eq!(driven.output.status.code(), Some(1), "{story}");
    assert_eq!(
        driven.calls,
        [
            created(SHARDS_JOB),
            got(SHARDS_JOB, RUNNING),
            SLEPT.to_string(),
            got(SHARDS_JOB, FAILED),
        ],
        "{story}"
    );
    assert_eq!(driven.created.len(), 1, "{story}");
    assert_eq!(
        driven.stderr(),
        format!("{SHARDS_JOB} failed: kubectl describe {SHARDS_JOB}\n"),
        "{story}"
    );
    assert_eq!(
        driven.stdout(),
        format!("sharded reconcile as of 2026-11-20T00:00:00Z\ncreated {SHARDS_JOB}\n"),
        "{story}"
    );
}

/// A merge that failed (a refused shard, an `[alert]` threshold crossed: exit 1 fails the
/// merge Job too) fails the driver: exit 1 with the `kubectl describe` to run, no
/// "published" line, and a last line saying that tally's exit 1 is a published night with an
/// alert and where to read which it was (the driver cannot tell them apart).
#[test]
fn the_sharded_driver_fails_when_the_merge_job_fails() {
    let installed = Installed::new();
    let driven = installed.drive(&[COMPLETE, FAILED], Some("2026-11-20T00:00:00Z"));
    let story = driven.story();
    assert_eq!(driven.output.status.code(), Some(1), "{story}");
    assert_eq!(
        driven.calls,
        [
            created(SHARDS_JOB),
            got(SHARDS_JOB, COMPLETE),
            created(MERGE_JOB),
            got(MERGE_JOB, FAILED),
        ],
        "{story}"
    );
    assert_eq!(
        driven.stderr(),
        format!(
            "{MERGE_JOB} failed: kubectl describe {MERGE_JOB}\n\
             tally merge exits 1 when it published but crossed an [alert] threshold (the \
             night's output is there), 2, 3 or 4 when nothing was published: kubectl logs \
             {MERGE_JOB} says which\n"
        ),
        "{story}"
    );
    assert!(!driven.stdout().contains("published"), "{story}");
    assert_eq!(
        driven.stdout(),
        format!(
            "sharded reconcile as of 2026-11-20T00:00:00Z\ncreated {SHARDS_JOB}\n\
             created {MERGE_JOB}\n"
        ),
        "{story}"
    );
}

/// An API server that does not answer for a while (an upgrade, a leader election) must not
/// end the driver while its shards run, or the merge would never start: 19 failed reads in
/// a row, each followed by the 15-second wait, and the driver goes on to the merge.
#[test]
fn the_sharded_driver_rides_out_19_failed_reads_of_a_job() {
    let installed = Installed::new();
    let answers: Vec<&str> = [[API_ERROR; 19].as_slice(), &[COMPLETE, COMPLETE]].concat();
    let as_of = "2026-11-20T00:00:00Z";
    let driven = installed.drive(&answers, Some(as_of));
    let story = driven.story();
    assert!(driven.output.status.success(), "{story}");
    let mut calls = vec![created(SHARDS_JOB)];
    calls.extend(api_errors(SHARDS_JOB, 19));
    calls.extend(then_merged());
    assert_eq!(driven.calls, calls, "{story}");
    assert_eq!(driven.stdout(), published_night(as_of), "{story}");
}

/// 20 failed reads in a row (5 minutes of 15-second waits) are an outage, not a passing
/// error: the driver exits 1 saying it cannot read the Job, and does not create the merge
/// Job blind (the shards may still be running).
#[test]
fn the_sharded_driver_fails_after_20_failed_reads_in_a_row() {
    let installed = Installed::new();
    let driven = installed.drive(&[API_ERROR; 20], Some("2026-11-20T00:00:00Z"));
    let story = driven.story();
    assert_eq!(driven.output.status.code(), Some(1), "{story}");
    let mut calls = vec![created(SHARDS_JOB)];
    calls.extend(api_errors(SHARDS_JOB, 20));
    assert_eq!(
        calls.pop().as_deref(),
        Some(SLEPT),
        "no wait after the 20th"
    );
    assert_eq!(driven.calls, calls, "{story}");
    assert_eq!(driven.created.len(), 1, "{story}");
    let stderr = driven.stderr();
    assert_eq!(
        stderr.lines().last(),
        Some(unreadable_job(SHARDS_JOB).as_str()),
        "{story}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("Unable to connect to the server"))
            .count(),
        20,
        "kubectl's own error reaches the log each time: {story}"
    );
    assert!(!driven.stdout().contains("published"), "{story}");
}

/// Only failed reads in a row count: one answer between two streaks of 19 resets the count,
/// so a flaky API over a long night of shards does not fail a run that is going well.
#[test]
fn the_sharded_driver_counts_only_failed_reads_in_a_row() {
    let installed = Installed::new();
    let answers: Vec<&str> = [
        [API_ERROR; 19].as_slice(),
        &[RUNNING],
        &[API_ERROR; 19],
        &[COMPLETE, COMPLETE],
    ]
    .concat();
    let as_of = "2026-11-20T00:00:00Z";
    let driven = installed.drive(&answers, Some(as_of));
    let story = driven.story();
    assert!(driven.output.status.success(), "{story}");
    let mut calls = vec![created(SHARDS_JOB)];
    calls.extend(api_errors(SHARDS_JOB, 19));
    calls.extend([got(SHARDS_JOB, RUNNING), SLEPT.to_string()]);
    calls.extend(api_errors(SHARDS_JOB, 19));
    calls.extend(then_merged());
    assert_eq!(driven.calls, calls, "{story}");
    assert_eq!(driven.stdout(), published_night(as_of), "{story}");
}

/// Without `AS_OF` (every scheduled night) the driver takes the UTC instant it starts, in
/// the form `--as-of` reads (`YYYY-MM-DDTHH:MM:SSZ`), prints it, and writes that same
/// instant into the shards Job and the "published" line: the night's as-of is in the log.
#[test]
fn the_sharded_driver_takes_the_utc_now_as_of_by_default() {
    let installed = Installed::new();
    let clock = || chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let before = clock();
    let driven = installed.drive(&[COMPLETE, COMPLETE], None);
    let after = clock();
    let story = driven.story();
    assert!(driven.output.status.success(), "{story}");
    let stdout = driven.stdout();
    let as_of = (stdout.lines().next())
        .and_then(|l| l.strip_prefix("sharded reconcile as of "))
        .unwrap_or_else(|| panic!("no as-of line: {story}"));
    let form = "0000-00-00T00:00:00Z";
    assert!(
        as_of.len() == form.len()
            && (as_of.chars().zip(form.chars())).all(|(c, f)| if f == '0' {
                c.is_ascii_digit()
            } else {
                c == f
            }),
        "not an as-of of the form {form}: {as_of:?}"
    );
    assert!(
        before.as_str() <= as_of && as_of <= after.as_str(),
        "{as_of} is not the UTC time of the run ({before} to {after})"
    );
    assert_eq!(
        driven.created.first(),
        Some(&sharded_manifest("shards-job.yaml").replace("__AS_OF__", as_of)),
        "{story}"
    );
    assert_eq!(stdout, published_night(as_of), "{story}");
}

/// A hand-set `AS_OF` goes into `sed`'s replacement text: one not of the form `--as-of`
/// reads (a date alone, a `/` or `&` that would break or mangle the replacement) is refused
/// with exit 2 before any Job is created, instead of shards of a mangled as-of.
#[test]
fn the_sharded_driver_refuses_a_hand_set_as_of_of_another_form() {
    for as_of in [
        "2026-11-20",
        "2026/11/20T00:00:00Z",
        "2026-11-20T00:00:00Z&x",
    ] {
        let installed = Installed::new();
        let driven = installed.drive(&[], Some(as_of));
        let story = driven.story();
        assert_eq!(driven.output.status.code(), Some(2), "{story}");
        assert_eq!(driven.calls, Vec::<String>::new(), "{story}");
        assert_eq!(
            driven.stderr(),
            format!("AS_OF={as_of} is not an instant of the form 2026-11-20T00:00:00Z (UTC)\n"),
            "{story}"
        );
        assert_eq!(driven.stdout(), "", "{story}");
    }
}

/// The driver's deadline leaves room past its two Jobs' own (the shards' and the merge's
/// `activeDeadlineSeconds`, added) for scheduling and its polls: a driver killed at its
/// deadline fails the night's CronJob Job while the merge it created may still publish.
#[test]
fn the_sharded_drivers_deadline_outlasts_its_jobs() {
    let deadline = |job: &str| -> u64 {
        let text = sharded_manifest(job);
        let found: Vec<u64> = (text.lines())
            .filter_map(|l| l.trim().strip_prefix("activeDeadlineSeconds:"))
            .map(|v| v.split('#').next().unwrap().trim().parse().unwrap())
            .collect();
        assert_eq!(found.len(), 1, "{job}: one activeDeadlineSeconds");
        found[0]
    };
    let jobs = deadline("shards-job.yaml") + deadline("merge-job.yaml");
    let driver = deadline("driver-cronjob.yaml");
    assert!(
        driver >= jobs + 15 * 60,
        "the driver's deadline ({driver} s) leaves less than 15 minutes past its Jobs' ({jobs} s)"
    );
}

/// The merge Job that cannot be read 20 times in a row: the driver exits 1 saying it cannot
/// read it, without the note on tally's exit codes (the Job's end is unknown, not Failed)
/// and without "published".
#[test]
fn the_sharded_driver_fails_without_the_exit_note_when_the_merge_cannot_be_read() {
    let installed = Installed::new();
    let answers: Vec<&str> = [[COMPLETE].as_slice(), &[API_ERROR; 20]].concat();
    let driven = installed.drive(&answers, Some("2026-11-20T00:00:00Z"));
    let story = driven.story();
    assert_eq!(driven.output.status.code(), Some(1), "{story}");
    let stderr = driven.stderr();
    assert_eq!(
        stderr.lines().last(),
        Some(unreadable_job(MERGE_JOB).as_str()),
        "{story}"
    );
    assert!(!stderr.contains("tally merge exits 1"), "{story}");
    assert!(!driven.stdout().contains("published"), "{story}");
}

/// The driver's last line when 20 reads in a row of `job` failed.
fn unreadable_job(job: &str) -> String {
    format!(
        "cannot read {job} from the API (20 reads in a row failed, 15 s apart): kubectl \
         describe {job}"
    )
}

/// A job file given as a pipe (`--job <(envsubst < job.toml)`, a here-document: the
/// operator names it) is read as given, unlike the files tally finds in folders, which must
/// be regular files; its `data` and `out` are absolute, as an installed job's are (a
/// relative one is taken from the job file's folder, which for a pipe is `/dev/fd`).
#[test]
fn a_job_file_given_as_a_pipe_is_read() {
    let installed = Installed::new();
    let job =
        std::fs::read_to_string(installed.root.join("etc/tally/nightly-reconcile.toml")).unwrap();
    let mut run = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["reconcile", "--job", "/dev/stdin", "--as-of", "2026-11-20"])
        .env("TALLY_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = run.stdin.take().unwrap();
        stdin.write_all(job.as_bytes()).unwrap();
    }
    let done = run.wait_with_output().unwrap();
    assert!(
        done.status.code().is_some_and(|c| c == 0 || c == 1),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let out: toml::Table = toml::from_str(&job).unwrap();
    let out = out["out"]
        .as_str()
        .unwrap()
        .replace("{as_of_date}", "2026-11-20");
    assert!(
        Path::new(&out).join("manifest.json").is_file(),
        "published into {out}"
    );
}
