//! Split runs: bucket groups (memory-bounded) and shards + `tally merge` give the bytes of
//! a run on one machine in one piece.

use crate::common::*;
use std::path::{Path, PathBuf};

const AS_OF: &str = "2026-11-20T00:00:00Z";
const CLOSE_AS_OF: &str = "2026-12-01T00:00:00Z";

/// The generated root most tests here split, made in `dir/data` and returned.
fn generate_root(dir: &Path) -> PathBuf {
    generated_data(dir, 300, 30_000, 7, "0.05")
}

fn run_ok(command: &str, data: &Path, as_of: &str, out: &Path, extra: &[&str]) {
    let output = run_command(command, data, as_of, out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{command} {extra:?}: {}",
        stderr(&output)
    );
}

/// Run shards 0..n of the run publishing `out`, each with `extra` then `--shard i/n`.
fn run_shards(command: &str, data: &Path, as_of: &str, out: &Path, n: u32, extra: &[&str]) {
    for i in 0..n {
        let shard = format!("{i}/{n}");
        let args = [extra, &["--shard", &shard]].concat();
        run_ok(command, data, as_of, out, &args);
    }
}

/// Run shards 0..n of the run publishing `out` (they go to `out.shards/`), then merge
/// them into `out`: the same `--out` for every step, as in the job files.
fn shard_and_merge(command: &str, data: &Path, as_of: &str, out: &Path, n: u32) {
    run_shards(command, data, as_of, out, n, &[]);
    tally_ok(&["merge", "--out", out.to_str().unwrap()]);
}

/// `tally merge` of the shard folders of the run publishing `shards` into `merged`.
fn merge_shards_into(shards: &Path, merged: &Path) {
    tally_ok(&[
        "merge",
        "--out",
        merged.to_str().unwrap(),
        root(shards).to_str().unwrap(),
    ]);
}

/// The folder holding the shard folders of the run publishing `out`.
fn root(out: &Path) -> PathBuf {
    tally::shard::shards_root(out)
}

fn names(files: &[(String, Vec<u8>)]) -> Vec<&str> {
    files.iter().map(|f| f.0.as_str()).collect()
}

fn assert_same(single: &Path, other: &Path, what: &str) {
    let a = folder_bytes(single);
    let b = folder_bytes(other);
    assert_eq!(names(&a), names(&b), "{what}: same files");
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{what}: {name} differs from the single run");
    }
}

#[test]
fn shards_merged_equal_the_single_run_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let single = tmp.path().join("single");
    run_ok("reconcile", &data, AS_OF, &single, &[]);
    assert!(folder_bytes(&single).len() >= 7);
    for n in [1, 2, 3, 8] {
        let merged = tmp.path().join(format!("merged-{n}"));
        shard_and_merge("reconcile", &data, AS_OF, &merged, n);
        assert!(root(&merged).join(format!("shard={}", n - 1)).is_dir());
        assert_same(&single, &merged, &format!("{n} shards"));
    }
}

#[test]
fn close_shards_merged_equal_the_single_close() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let single = tmp.path().join("single");
    run_ok("close", &data, CLOSE_AS_OF, &single, &[]);
    let merged = tmp.path().join("merged");
    shard_and_merge("close", &data, CLOSE_AS_OF, &merged, 3);
    assert_same(&single, &merged, "close, 3 shards");
    // Merging again into the published close is the idempotent no-op of a close.
    let again = tally_ok(&["merge", "--out", merged.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already closed"));
    let refusal = |out: &Path| {
        format!(
            "tally: refused: {} holds a close; a reconcile does not replace a close: choose another --out folder\n",
            out.display()
        )
    };
    // A reconcile shard aimed at the published close: refused before it computes.
    let before = folder_bytes(&merged);
    let shard = run_command("reconcile", &data, AS_OF, &merged)
        .args(["--shard", "0/1"])
        .output()
        .unwrap();
    assert_eq!(shard.status.code(), Some(3), "{}", stderr(&shard));
    assert_eq!(stderr(&shard), refusal(&merged));
    // Reconcile shards made before a close was published there, merged after: refused.
    let later = tmp.path().join("later");
    run_ok("reconcile", &data, AS_OF, &later, &["--shard", "0/1"]);
    run_ok("close", &data, CLOSE_AS_OF, &later, &[]);
    let closed = folder_bytes(&later);
    let merge = tally(&["merge", "--out", later.to_str().unwrap()]);
    assert_eq!(merge.status.code(), Some(3), "{}", stderr(&merge));
    assert_eq!(stderr(&merge), refusal(&later));
    assert!(before == folder_bytes(&merged), "the close is untouched");
    assert!(
        closed == folder_bytes(&later),
        "the later close is untouched"
    );
}

/// Run `command --shard shard` publishing `out`: refused with exit 3; its stderr.
fn refused_shard(command: &str, data: &Path, as_of: &str, out: &Path, shard: &str) -> String {
    refused_by(run_command(command, data, as_of, out).args(["--shard", shard]))
}

/// Run `command`: refused with exit 3; its stderr.
fn refused_by(command: &mut std::process::Command) -> String {
    let output = command.output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(3),
        "{command:?}: {}",
        stderr(&output)
    );
    stderr(&output)
}

/// A close shard over a close of other inputs is refused before it computes (exit 3, the
/// one-machine message with the shards' advice; its shard folder untouched), as it would
/// be by the merge only after every shard had computed the whole close. With `--force` the
/// shards compute, and the merge needs `--force` too. Over a close of the same inputs a
/// shard computes as usual and the merge finds nothing to do. A shard whose `--out` is not
/// a tally output is refused as the merge and a run on one machine are.
#[test]
fn a_close_shard_over_a_close_of_other_inputs_is_refused_before_it_computes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let out = tmp.path().join("close");
    shard_and_merge("close", &data, CLOSE_AS_OF, &out, 2);
    let closed = folder_bytes(&out);
    let shards = folder_bytes(&root(&out));

    // Same inputs: the shards compute (their folders rewritten with the same rows), the
    // merge is the no-op of a close.
    run_shards("close", &data, CLOSE_AS_OF, &out, 2, &[]);
    let again = tally_ok(&["merge", "--out", out.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already closed"));
    assert!(closed == folder_bytes(&out), "the close is untouched");

    let book = data.join("pricebook.toml");
    let edited = std::fs::read_to_string(&book).unwrap() + "\n# edited\n";
    std::fs::write(&book, edited).unwrap();
    for i in 0..2 {
        assert_eq!(
            refused_shard("close", &data, CLOSE_AS_OF, &out, &format!("{i}/2")),
            format!(
                "tally: refused: {} already holds a close with other inputs (pricebook.toml \
                 changed); rerun every shard and then the merge with --force to replace it\n",
                out.display()
            )
        );
    }
    assert!(closed == folder_bytes(&out), "the close is untouched");
    assert!(
        shards == folder_bytes(&root(&out)),
        "the refused shards wrote nothing"
    );
    // `--force` on the merge alone (enough before the shards refused early): the shards in
    // place are the first close's, so the merge finds that close and replaces nothing.
    let merge = tally(&["merge", "--out", out.to_str().unwrap(), "--force"]);
    assert_eq!(merge.status.code(), Some(0), "{}", stderr(&merge));
    assert!(String::from_utf8_lossy(&merge.stdout).contains("already closed"));
    assert!(closed == folder_bytes(&out), "the close is untouched");

    run_shards("close", &data, CLOSE_AS_OF, &out, 2, &["--force"]);
    // A forced shard's last line says to merge with --force: the merge without it refuses.
    let shard = run_command("close", &data, CLOSE_AS_OF, &out)
        .args(["--force", "--shard", "1/2"])
        .output()
        .unwrap();
    assert_eq!(shard.status.code(), Some(0), "{}", stderr(&shard));
    let hint = format!("publish with `tally merge --out {} --force`", out.display());
    let said = String::from_utf8_lossy(&shard.stdout);
    assert!(said.trim_end().ends_with(&hint), "{said}");
    let merge = tally(&["merge", "--out", out.to_str().unwrap()]);
    assert_eq!(merge.status.code(), Some(3), "{}", stderr(&merge));
    tally_ok(&["merge", "--out", out.to_str().unwrap(), "--force"]);
    let single = tmp.path().join("single");
    run_ok("close", &data, CLOSE_AS_OF, &single, &[]);
    assert_same(&single, &out, "a forced sharded close of the edited inputs");

    // An --out holding files of someone else's (a manifest.json among them).
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("manifest.json"), "{}").unwrap();
    for command in ["close", "reconcile"] {
        let as_of = if command == "close" {
            CLOSE_AS_OF
        } else {
            AS_OF
        };
        assert_eq!(
            refused_shard(command, &data, as_of, &foreign, "0/2"),
            format!(
                "tally: refused: {} holds files but no tally manifest.json; tally replaces only \
                 its own output folders: choose a new or empty folder\n",
                foreign.display()
            )
        );
        // Refused before anything is made beside it (not even the shards' folder).
        assert!(!root(&foreign).exists(), "{command}");
    }
}

#[test]
fn bucket_groups_equal_the_single_run_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let single = tmp.path().join("single");
    run_ok("reconcile", &data, AS_OF, &single, &[]);
    for extra in [
        &["--groups", "2"][..],
        &["--groups", "5", "--buckets", "9"],
        // A budget far below the data: as many groups as buckets.
        &["--memory-budget", "64KiB"],
    ] {
        let out = tmp.path().join(format!("groups-{}", extra.join("-")));
        run_ok("reconcile", &data, AS_OF, &out, extra);
        assert_same(&single, &out, &format!("{extra:?}"));
    }
    let single_close = tmp.path().join("single-close");
    run_ok("close", &data, CLOSE_AS_OF, &single_close, &[]);
    let grouped_close = tmp.path().join("grouped-close");
    run_ok(
        "close",
        &data,
        CLOSE_AS_OF,
        &grouped_close,
        &["--groups", "4"],
    );
    assert_same(&single_close, &grouped_close, "close in 4 groups");
}

/// The hand-worked scenarios (dedup across accounts, entries naming other accounts,
/// repeated entry ids, rejects) give their golden bytes when split every way.
#[test]
fn golden_scenarios_split_into_groups_and_shards_give_the_same_bytes() {
    let golden = repo().join("fixtures/golden");
    let mut scenarios: Vec<PathBuf> = std::fs::read_dir(&golden)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("args.toml").is_file())
        .collect();
    scenarios.sort();
    assert!(scenarios.len() >= 9);
    for dir in scenarios {
        let args: toml::Table =
            toml::from_str(&std::fs::read_to_string(dir.join("args.toml")).unwrap()).unwrap();
        let command = args["command"].as_str().unwrap();
        let as_of = args["as_of"].as_str().unwrap();
        let settle = args.get("settle").and_then(|s| s.as_str()).unwrap_or("15m");
        let data = dir.join("data");
        let tmp = tempfile::tempdir().unwrap();
        // Few accounts, few work buckets; cross-account rows cross partitions.
        let base = ["--settle", settle, "--buckets", "4"];
        let single = tmp.path().join("single");
        run_ok(command, &data, as_of, &single, &base);
        let grouped = tmp.path().join("grouped");
        run_ok(
            command,
            &data,
            as_of,
            &grouped,
            &[&base[..], &["--groups", "4"]].concat(),
        );
        let what = dir.file_name().unwrap().to_string_lossy().to_string();
        assert_same(&single, &grouped, &format!("{what} in 4 groups"));
        for n in [2, 4] {
            let shards = tmp.path().join(format!("shards-{n}"));
            run_shards(command, &data, as_of, &shards, n, &base);
            let merged = tmp.path().join(format!("merged-{n}"));
            merge_shards_into(&shards, &merged);
            assert_same(&single, &merged, &format!("{what} in {n} shards"));
        }
    }
}

#[test]
fn a_killed_shard_rerun_alone_gives_the_same_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let single = tmp.path().join("single");
    run_ok("reconcile", &data, AS_OF, &single, &[]);
    let shards = tmp.path().join("shards");
    run_shards("reconcile", &data, AS_OF, &shards, 3, &["--groups", "3"]);
    // Kill a rerun of shard 1 (in 3 groups, so that it spills) as each stage named below is
    // logged done, before it writes: after the light pass and after the spill pass. The
    // kill must land mid-run (the run ends by the signal, not exit 0): the rest of this
    // run takes a few milliseconds, so a run that ended first is tried again. The spill
    // folder a killed run leaves is removed by the next run.
    let spill_tmp = tmp.path().join("tmp");
    std::fs::create_dir_all(&spill_tmp).unwrap();
    let killed_after = |stage: &str| {
        let mut child = run_command("reconcile", &data, AS_OF, &shards)
            .args(["--shard", "1/3", "--groups", "3", "--log-format", "json"])
            .env("TMPDIR", &spill_tmp)
            .env("TALLY_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let logged = format!(r#""message":"stage done","stage":"{stage}""#);
        // The log is read until the line, and kept open until the run is killed.
        let log = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut lines = std::io::BufRead::lines(log);
        let seen = lines.any(|line| line.unwrap().contains(&logged));
        assert!(seen, "the run never logged {stage} done");
        child.kill().unwrap();
        let status = child.wait().unwrap();
        drop(lines);
        !status.success()
    };
    for stage in ["route", "load and spill"] {
        let landed = (0..10).any(|_| killed_after(stage));
        assert!(landed, "every kill after {stage} came after the run ended");
    }
    let left: Vec<_> = std::fs::read_dir(&spill_tmp).unwrap().collect();
    assert!(
        !left.is_empty(),
        "a run killed after its spill pass left no spill folder"
    );
    succeeded(
        run_command("reconcile", &data, AS_OF, &shards)
            .args(["--shard", "1/3", "--groups", "3"])
            .env("TMPDIR", &spill_tmp),
    );
    let left: Vec<_> = std::fs::read_dir(&spill_tmp).unwrap().collect();
    assert!(left.is_empty(), "spill folders left behind: {left:?}");
    let merged = tmp.path().join("merged");
    merge_shards_into(&shards, &merged);
    assert_same(&single, &merged, "after a killed shard was rerun");
}

fn refused(args: &[&str]) -> String {
    refused_by(&mut tally_command(args))
}

/// The run-level warnings come from the process that publishes: a sharded close's merge,
/// not its shards, warns once of rejected allocation rows and of a next period shorter than
/// a month (an anchor at 08:00 on a period ending at midnight renews to 8 hours), and its
/// `--job`'s `max_rejected_allocations` alerts (exit 1) on the merged count.
#[test]
fn a_sharded_close_warns_and_alerts_from_its_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let data = demo_copy(tmp.path());
    let t = |s: &str| tally::time::parse_instant(s).unwrap();
    let rows = [("acct-anchor", "pro"), ("acct-typo", "gold-typo")];
    let allocations = tally::write::Table::default()
        .str("account_id", rows.iter().map(|r| r.0))
        .str("plan_id", rows.iter().map(|r| r.1))
        .ts(
            "period_start",
            rows.iter().map(|_| t("2026-11-01T00:00:00Z")),
        )
        .ts("period_end", rows.iter().map(|_| t("2026-12-01T00:00:00Z")))
        .credits(
            "included_credits",
            rows.iter().map(|_| tally::amount::Milli::from_units(200)),
        )
        .opt_ts(
            "billing_anchor",
            rows.iter().map(|_| Some(t("2026-10-01T08:00:00Z"))),
        )
        .str("status", rows.iter().map(|_| "active"))
        .finish();
    tally::write::write_parquet(&data.join("allocations/extra.parquet"), &allocations).unwrap();
    let out = tmp.path().join("close");
    let close_as_of = "2026-12-01T00:00:00Z";
    let warnings = |output: &std::process::Output| -> Vec<String> {
        (json_log(output).into_iter())
            .filter(|v| v["level"] == "WARN")
            .map(|v| v["fields"]["message"].as_str().unwrap().to_string())
            .collect()
    };
    for i in 0..2 {
        let shard = run_command("close", &data, close_as_of, &out)
            .args(["--shard", &format!("{i}/2")])
            .output()
            .unwrap();
        assert!(shard.status.success(), "{}", stderr(&shard));
        assert_eq!(warnings(&shard), Vec::<String>::new(), "shard {i}");
    }
    let job = tmp.path().join("close.toml");
    std::fs::write(
        &job,
        "command = \"close\"\ndata = \"data\"\nout = \"close\"\n[alert]\nmax_rejected_allocations = 0\n",
    )
    .unwrap();
    // At `info`, for its `run start` and `run done` lines.
    let merge = tally_command(&[
        "merge",
        "--out",
        out.to_str().unwrap(),
        "--job",
        job.to_str().unwrap(),
    ])
    .env("TALLY_LOG", "info")
    .output()
    .unwrap();
    assert_eq!(merge.status.code(), Some(1), "{}", stderr(&merge));
    let warned = warnings(&merge);
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert!(
        warned[0].starts_with(
            "1 allocation row is rejected (unknown_plan 1) in periods this run covers: "
        ),
        "{warned:?}"
    );
    assert!(
        warned[1].starts_with(
            "1 renewal's next period is shorter than 28 days (the first: account \
             acct-anchor, period ending 2026-12-01T00:00:00Z, next period to \
             2026-12-01T08:00:00Z): "
        ),
        "{warned:?}"
    );
    // The alert's line, then `run done` (at `info`).
    assert!(
        stderr(&merge).lines().any(|line| line
            == "tally: alert: 1 rejected allocation row exceeds the alert threshold of 0 (an \
                account-period whose only allocation row is rejected is not billed: see \
                rejects.csv)"),
        "{}",
        stderr(&merge)
    );
    // One `run start` naming the merge and one `run done` with the alert's exit code.
    let logged = |message: &str, field: &str, value: serde_json::Value| {
        (json_log(&merge).into_iter())
            .filter(|v| v["fields"]["message"] == message)
            .map(|v| v["fields"][field].clone())
            .collect::<Vec<_>>()
            == [value]
    };
    assert!(
        logged("run start", "command", "merge".into()) && logged("run done", "exit_code", 1.into()),
        "{}",
        stderr(&merge)
    );
}

#[test]
fn merge_refuses_missing_duplicated_foreign_and_altered_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let shards = tmp.path().join("shards");
    for i in [0, 2] {
        run_ok(
            "reconcile",
            &data,
            AS_OF,
            &shards,
            &["--shard", &format!("{i}/3")],
        );
    }
    let out = tmp.path().join("out");
    let out_s = out.to_str().unwrap();
    let shard = |i: u32| root(&shards).join(format!("shard={i}"));
    let shards_s = root(&shards);
    let shards_s = shards_s.to_str().unwrap();

    let e = refused(&["merge", "--out", out_s, shards_s]);
    assert_eq!(
        e,
        format!(
            "tally: refused: missing 1 of 3 shards in {shards_s}: shard=1; run them as the \
             others ran (e.g. `tally reconcile --data {} --as-of {AS_OF} --shard 1/3 --out \
             {out_s}`, or with the same --job), then merge again listing its folder \
             {out_s}.shards/shard=1 too\n",
            data.display()
        )
    );

    // Many missing: the first five named, the rest counted (a merge of one shard of 1,024
    // named 1,023 folders on its one line).
    let many = tmp.path().join("many");
    run_ok("reconcile", &data, AS_OF, &many, &["--shard", "3/9"]);
    let many_s = root(&many);
    let e = refused(&["merge", "--out", out_s, many_s.to_str().unwrap()]);
    assert!(
        e.starts_with(&format!(
            "tally: refused: missing 8 of 9 shards in {}: shard=0, shard=1, shard=2, \
             shard=4, shard=5 and 3 more; run them as the others ran (e.g. `tally reconcile \
             --data {} --as-of {AS_OF} --shard 0/9 --out {out_s}`",
            many_s.display(),
            data.display()
        )),
        "{e}"
    );

    let e = refused(&[
        "merge",
        "--out",
        out_s,
        shard(0).to_str().unwrap(),
        shard(0).to_str().unwrap(),
        shard(2).to_str().unwrap(),
    ]);
    assert!(e.contains("shard 0 of 3 is given twice"), "{e}");

    // Shard 1 of another as-of.
    let other = tmp.path().join("other");
    run_ok(
        "reconcile",
        &data,
        "2026-11-19T00:00:00Z",
        &other,
        &["--shard", "1/3"],
    );
    let e = refused(&[
        "merge",
        "--out",
        out_s,
        shards_s,
        root(&other).join("shard=1").to_str().unwrap(),
    ]);
    assert_eq!(
        e,
        format!(
            "tally: refused: {} is a shard of another run than {} (as-of 2026-11-19T00:00:00Z vs {AS_OF}); rerun it with the same inputs and settings\n",
            root(&other).join("shard=1").display(),
            shard(0).display()
        )
    );
    // Shard 0 the odd one of three: named (not a good shard), against the other two.
    run_ok(
        "reconcile",
        &data,
        "2026-11-19T00:00:00Z",
        &other,
        &["--shard", "0/3"],
    );
    run_ok("reconcile", &data, AS_OF, &shards, &["--shard", "1/3"]);
    let merge_of = |shards: &[PathBuf]| {
        let mut args = vec!["merge", "--out", out_s];
        args.extend(shards.iter().map(|s| s.to_str().unwrap()));
        refused(&args)
    };
    let e = merge_of(&[root(&other).join("shard=0"), shard(1), shard(2)]);
    assert_eq!(
        e,
        format!(
            "tally: refused: {} is a shard of another run than {} (as-of 2026-11-19T00:00:00Z vs {AS_OF}); rerun it with the same inputs and settings\n",
            root(&other).join("shard=0").display(),
            shard(1).display()
        )
    );
    // Two shards of two runs: no majority, both named.
    let e = merge_of(&[root(&other).join("shard=0"), shard(1)]);
    assert!(
        e.contains("are shards of different runs") && e.contains("rerun the one not made"),
        "{e}"
    );

    // Shard 1 of the same run, then an altered partial.
    run_ok("reconcile", &data, AS_OF, &shards, &["--shard", "1/3"]);
    let partial = shard(1).join("partial.bin");
    let mut bytes = std::fs::read(&partial).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&partial, bytes).unwrap();
    let e = refused(&["merge", "--out", out_s, shards_s]);
    assert!(e.contains("checksum does not match shard.json"), "{e}");
    assert!(!out.exists(), "nothing published by a refused merge");
}

/// Shards made from other inputs than the rest: the majority names the odd one, and since
/// the majority may be the stale ones (the inputs changed and only that shard ran again),
/// the refusal also says to rerun them all when the data root changed.
#[test]
fn a_shard_of_other_inputs_is_named_and_rerunning_all_is_offered() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let shards = tmp.path().join("shards");
    run_shards("reconcile", &data, AS_OF, &shards, 3, &[]);
    let listing = root(&shards).join("shard=2/shard.json");
    edit_listing(&listing, |m| {
        m["inputs"][0]["sha256"] = "0".repeat(64).into()
    });
    let e = refused_merge(tmp.path(), &shards);
    assert!(
        e.contains(&format!(
            "{} is a shard of another run than {} (inputs differ: ",
            root(&shards).join("shard=2").display(),
            root(&shards).join("shard=0").display()
        )) && e.ends_with(
            "; rerun it with the same inputs and settings, or, if the data root changed \
             since the shards ran, rerun all 3 shards\n"
        ),
        "{e}"
    );
}

/// A merge whose `--out` is inside a dataset folder of the shards' data root is refused
/// as a run's is (exit 2, nothing made): the next run would read its outputs as input.
#[test]
fn merge_refuses_an_output_inside_a_dataset_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = two_shards(tmp.path(), "reconcile", AS_OF);
    let data = tmp.path().join("data");
    let inside = data.join("usage/merged");
    let ran = tally_command(&[
        "merge",
        "--out",
        inside.to_str().unwrap(),
        root(&shards).to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(ran.status.code(), Some(2), "{}", stderr(&ran));
    assert_eq!(
        stderr(&ran),
        format!(
            "tally: {}: the output folder is inside the data root's usage/ folder, so the \
             next run would read this run's outputs as usage input: write outputs outside the \
             dataset folders\n",
            inside.display()
        )
    );
    let usage: Vec<_> = std::fs::read_dir(data.join("usage"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        usage
            .iter()
            .all(|name| !name.to_string_lossy().contains("merged")),
        "nothing made: {usage:?}"
    );
}

/// Two shards of `command` on the generated root, in `tmp/shards.shards/`; the run's
/// `--out` (`tmp/shards`).
fn two_shards(tmp: &Path, command: &str, as_of: &str) -> PathBuf {
    let data = generate_root(tmp);
    let shards = tmp.join("shards");
    run_shards(command, &data, as_of, &shards, 2, &[]);
    shards
}

/// Rewrite a shard's `shard.json` through `edit`.
fn edit_listing(listing: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(listing).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(listing, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

/// `tally merge` of the shards into `tmp/out`, refused: its stderr.
fn refused_merge(tmp: &Path, shards: &Path) -> String {
    let out = tmp.join("out");
    let e = refused(&[
        "merge",
        "--out",
        out.to_str().unwrap(),
        root(shards).to_str().unwrap(),
    ]);
    assert!(!out.exists(), "nothing is published");
    e
}

/// A merge missing a shard gives the command that writes it with the settings the other
/// shards recorded (`--settle`, `--buckets`), and following it publishes what one run does.
#[test]
fn a_missing_shards_advice_when_followed_publishes_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let shards = tmp.path().join("shards");
    let settings = ["--settle", "1h", "--buckets", "7"];
    for i in [0, 2] {
        let shard = format!("{i}/3");
        run_ok(
            "reconcile",
            &data,
            AS_OF,
            &shards,
            &[&settings[..], &["--shard", &shard]].concat(),
        );
    }
    let out = tmp.path().join("out");
    let listed = root(&shards);
    let merge = |extra: &[&Path]| {
        let mut c = tally_command(&["merge", "--out", out.to_str().unwrap()]);
        c.arg(&listed).args(extra);
        c
    };
    let e = refused_by(&mut merge(&[]));
    let (advice, words) = advised(&e);
    assert_eq!(
        advice,
        format!(
            "tally reconcile --data {} --as-of {AS_OF} --settle 3600s --buckets 7 --shard 1/3 \
             --out {}",
            data.display(),
            out.display()
        )
    );
    succeeded(&mut tally_command(&words));
    let written = root(&out).join("shard=1");
    assert!(
        e.ends_with(&format!("listing its folder {} too\n", written.display())),
        "{e}"
    );
    succeeded(&mut merge(&[&written]));
    let single = tmp.path().join("single");
    run_ok("reconcile", &data, AS_OF, &single, &settings);
    assert_eq!(folder_bytes(&out), folder_bytes(&single));
}

/// The command a refusal advises (between its backquotes) and its arguments after
/// `tally`, split as a shell splits words without quotes (the tests' paths have none).
fn advised(refusal: &str) -> (&str, Vec<&str>) {
    let advice = (refusal.split('`').nth(1)).expect("a command in backquotes");
    let args = (advice.strip_prefix("tally ")).expect("a tally command");
    (advice, args.split(' ').collect())
}

/// A close that read earlier closes: the advice carries its `--history` (the folder its
/// output is directly inside), and followed, the merge publishes.
#[test]
fn a_missing_close_shards_advice_carries_its_history() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let history = tmp.path().join("closes");
    let history_s = history.to_str().unwrap();
    run_ok(
        "close",
        &data,
        "2026-12-01T00:00:00Z",
        &history.join("c1"),
        &["--history", history_s],
    );
    let out = history.join("c2");
    for i in [0, 2] {
        let shard = format!("{i}/3");
        run_ok(
            "close",
            &data,
            "2026-12-02T00:00:00Z",
            &out,
            &["--history", history_s, "--shard", &shard],
        );
    }
    let merge = || tally_command(&["merge", "--out", out.to_str().unwrap()]);
    let e = refused_by(&mut merge());
    let (advice, words) = advised(&e);
    assert_eq!(
        advice,
        format!(
            "tally close --data {} --as-of 2026-12-02T00:00:00Z --history {history_s} --shard \
             1/3 --out {}",
            data.display(),
            out.display()
        )
    );
    succeeded(&mut tally_command(&words));
    assert!(e.ends_with("then merge again\n"), "{e}");
    succeeded(&mut merge());
    assert!(out.join("manifest.json").is_file());

    // From inside the history folder, `--out c3 --history .`: the advice says `.`.
    let in_history = |args: &[&str]| {
        let mut c = tally_command(args);
        c.current_dir(&history);
        c
    };
    let data_s = data.to_str().unwrap();
    let as_of = "2026-12-03T00:00:00Z";
    for i in [0, 2] {
        let shard = format!("{i}/3");
        let args = [
            "close",
            "--data",
            data_s,
            "--as-of",
            as_of,
            "--history",
            ".",
            "--shard",
            &shard,
            "--out",
            "c3",
        ];
        succeeded(&mut in_history(&args));
    }
    let e = refused_by(&mut in_history(&["merge", "--out", "c3"]));
    let (advice, words) = advised(&e);
    assert_eq!(
        advice,
        format!("tally close --data {data_s} --as-of {as_of} --history . --shard 1/3 --out c3")
    );
    succeeded(&mut in_history(&words));
    succeeded(&mut in_history(&["merge", "--out", "c3"]));
    assert!(history.join("c3/manifest.json").is_file());

    // The first close under a history (no earlier close, no `history/` input): the advice
    // still carries --history (shard.json says the shards read one).
    let fresh = tmp.path().join("fresh");
    let fresh_s = fresh.to_str().unwrap();
    let first = fresh.join("c1");
    for i in [0, 2] {
        let shard = format!("{i}/3");
        run_ok(
            "close",
            &data,
            "2026-12-01T00:00:00Z",
            &first,
            &["--history", fresh_s, "--shard", &shard],
        );
    }
    let e = refused_by(&mut tally_command(&[
        "merge",
        "--out",
        first.to_str().unwrap(),
    ]));
    let (advice, _) = advised(&e);
    assert_eq!(
        advice,
        format!(
            "tally close --data {} --as-of 2026-12-01T00:00:00Z --history {fresh_s} --shard \
             1/3 --out {}",
            data.display(),
            first.display()
        )
    );
}

/// Shards that another tally version listed are refused before their files are decoded,
/// naming both versions and what to do.
#[test]
fn merge_refuses_shards_of_another_tally_version() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = two_shards(tmp.path(), "reconcile", AS_OF);
    for i in 0..2 {
        // Both shards as an earlier release would have listed them.
        let listing = root(&shards).join(format!("shard={i}")).join("shard.json");
        edit_listing(&listing, |m| m["version"] = "0.0.1".into());
    }
    let e = refused_merge(tmp.path(), &shards);
    assert!(
        e.contains(&format!(
            "shard=0 was computed by tally 0.0.1, and this is tally {}; merge with the version \
             that ran the shards, or rerun them with this one",
            env!("CARGO_PKG_VERSION")
        )),
        "{e}"
    );
}

/// A shard records its build (the sha256 of its source, toolchain and settings, which
/// `tally --version` prints):
/// shards of two builds of one version (every build says 0.1.0 until a release) are shards
/// of different runs, and shards of another build than the merge's, or of a build before
/// the record, are refused naming both builds. Once restored, they merge.
#[test]
fn merge_refuses_shards_of_another_build() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = two_shards(tmp.path(), "reconcile", AS_OF);
    let version = String::from_utf8(tally_ok(&["--version"]).stdout).unwrap();
    let this_build = (version
        .strip_prefix(&format!("tally {}\nbuild: ", env!("CARGO_PKG_VERSION"))))
    .and_then(|rest| rest.strip_suffix(" (the sha256 of its source, toolchain and settings)\n"))
    .unwrap_or_else(|| panic!("{version}"))
    .to_string();
    assert_eq!(this_build.len(), 64, "{this_build}");
    assert!(this_build.bytes().all(|b| b.is_ascii_hexdigit()));
    let listing = |i: u32| root(&shards).join(format!("shard={i}")).join("shard.json");
    for i in 0..2 {
        assert_eq!(json(&listing(i))["build"], this_build.as_str());
    }
    let short = &this_build[..12];
    let other = "0".repeat(64);
    let (shard0, shard1) = (root(&shards).join("shard=0"), root(&shards).join("shard=1"));
    let version = env!("CARGO_PKG_VERSION");
    // One shard of another build: it is the one named, whichever the others are.
    edit_listing(&listing(1), |m| m["build"] = other.as_str().into());
    assert_eq!(
        refused_merge(tmp.path(), &shards),
        format!(
            "tally: refused: {} was computed by another build of tally {version} (build \
             000000000000…; this one is {short}…); rerun it with this build, or merge with the \
             build that ran it\n",
            shard1.display()
        )
    );
    // Both: named together.
    let both = |theirs: &str| {
        format!(
            "tally: refused: 2 shards ({}, {}) were computed by another build of tally \
             {version} (the first: {theirs}; this one is {short}…); rerun them with this \
             build, or merge with the build that ran them\n",
            shard0.display(),
            shard1.display()
        )
    };
    edit_listing(&listing(0), |m| m["build"] = other.as_str().into());
    assert_eq!(
        refused_merge(tmp.path(), &shards),
        both("build 000000000000…")
    );
    for i in 0..2 {
        edit_listing(&listing(i), |m| {
            m.as_object_mut().unwrap().remove("build");
        });
    }
    assert_eq!(
        refused_merge(tmp.path(), &shards),
        both("records no build: a build before shards recorded theirs")
    );
    for i in 0..2 {
        edit_listing(&listing(i), |m| m["build"] = this_build.as_str().into());
    }
    merge_shards_into(&shards, &tmp.path().join("out"));
}

/// Shards an earlier build of the same version wrote (their shard.json has no
/// `partial_format`: `partial.bin` without the report's `entry_account_ids`) are refused
/// before `partial.bin` is decoded (postcard could decode another layout into wrong rows).
#[test]
fn merge_refuses_partials_of_another_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = two_shards(tmp.path(), "reconcile", AS_OF);
    for i in 0..2 {
        let listing = root(&shards).join(format!("shard={i}")).join("shard.json");
        edit_listing(&listing, |m| {
            assert_eq!(m["partial_format"], 3);
            m.as_object_mut().unwrap().remove("partial_format");
        });
    }
    let e = refused_merge(tmp.path(), &shards);
    let shard0 = root(&shards).join("shard=0");
    assert_eq!(
        e,
        format!(
            "tally: refused: {} was written by another build of tally {} (its partial.bin has \
             layout 1, this build reads 3); merge with the build that ran the shards, or rerun \
             them with this one\n",
            shard0.display(),
            env!("CARGO_PKG_VERSION")
        )
    );
}

/// A `shard.json` whose `settle_seconds` no shard runs with (it was multiplied into
/// microseconds unchecked: a panic, exit 4, past 2^63 microseconds) is refused, naming the
/// file; 7 days, the longest settle, passes that check (and the run's other check then
/// finds the two shards' settles differ).
#[test]
fn merge_refuses_a_settle_no_shard_runs_with() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = two_shards(tmp.path(), "reconcile", AS_OF);
    let listing = root(&shards).join("shard=0/shard.json");
    for settle in [i64::MAX, 604_801, -1] {
        edit_listing(&listing, |m| m["settle_seconds"] = settle.into());
        let e = refused_merge(tmp.path(), &shards);
        assert!(
            e.contains(&format!(
                "{} holds settle_seconds {settle}, not a settle a shard runs with (0 to \
                 604800); the file is damaged: rerun the shard",
                listing.display()
            )),
            "{e}"
        );
    }
    edit_listing(&listing, |m| m["settle_seconds"] = 604_800.into());
    let e = refused_merge(tmp.path(), &shards);
    assert!(!e.contains("holds settle_seconds"), "{e}");
    assert!(
        e.contains("are shards of different runs (settle 900s vs 604800s)"),
        "{e}"
    );

    // An as-of outside the years a shard's --as-of takes, in both shards: the merged
    // manifest could not be read back by a later run.
    let other = root(&shards).join("shard=1/shard.json");
    edit_listing(&listing, |m| m["settle_seconds"] = 900.into());
    // Both parse as instants (the years 0 and 10000).
    for as_of in ["0000-06-01T00:00:00Z", "+10000-01-01T00:00:00"] {
        for shard in [&listing, &other] {
            edit_listing(shard, |m| m["as_of"] = as_of.into());
        }
        let e = refused_merge(tmp.path(), &shards);
        assert_eq!(
            e,
            format!(
                "tally: refused: {} holds the as-of {as_of}, outside the years 0001 to 9999, \
                 which no shard runs with; the file is damaged: rerun the shards\n",
                listing.display()
            ),
            "{as_of}"
        );
    }
}

/// A shard whose run file has another format (a shard computed by an earlier tally build:
/// the checksum in its shard.json matches the file) is refused before anything is written,
/// naming the file and what to do.
#[test]
fn merge_refuses_a_run_file_of_another_format() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = two_shards(tmp.path(), "close", CLOSE_AS_OF);
    let shard = root(&shards).join("shard=0");
    let run = shard.join("billed-0.bin");
    // The same records without the format mark, listed with their own checksum.
    let other = std::fs::read(&run).unwrap()[8..].to_vec();
    std::fs::write(&run, &other).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&other))
    };
    edit_listing(&shard.join("shard.json"), |m| {
        let runs = m["runs"].as_array_mut().unwrap();
        let entry = runs
            .iter_mut()
            .find(|f| f["path"] == "billed-0.bin")
            .unwrap();
        entry["sha256"] = sha.into();
    });
    let e = refused_merge(tmp.path(), &shards);
    assert!(
        e.contains(
            "billed-0.bin is not a run file of this tally build (written by another version?); \
             compute the shard again with this binary; rerun shard 0 of 2 (--shard 0/2)"
        ),
        "{e}"
    );
}

#[test]
fn a_kubernetes_completion_index_selects_the_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let shards = tmp.path().join("shards");
    succeeded(
        run_command("reconcile", &data, AS_OF, &shards)
            .env("JOB_COMPLETION_INDEX", "1")
            .env("TALLY_SHARDS", "2"),
    );
    assert!(root(&shards).join("shard=1/shard.json").is_file());
    assert!(!root(&shards).join("shard=0").exists());

    let out = run_command("reconcile", &data, AS_OF, &shards)
        .env("JOB_COMPLETION_INDEX", "0")
        .env_remove("TALLY_SHARDS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("TALLY_SHARDS is not"),
        "{}",
        stderr(&out)
    );

    // Both set, but not a shard: the refusal names the variables, not a flag never given.
    let refusals = [
        (
            "5",
            "3",
            "JOB_COMPLETION_INDEX=5 and TALLY_SHARDS=3: JOB_COMPLETION_INDEX must be in \
             0..TALLY_SHARDS and TALLY_SHARDS at least 1; set TALLY_SHARDS to the Job's \
             completions",
        ),
        (
            "0",
            "5000",
            "JOB_COMPLETION_INDEX=0 and TALLY_SHARDS=5000: at most 4096 shards (the account \
             partitions)",
        ),
        (
            "1",
            "two",
            "TALLY_SHARDS=two is not a number (JOB_COMPLETION_INDEX and TALLY_SHARDS select \
             the shard)",
        ),
    ];
    for (index, shard_count, message) in refusals {
        let out = run_command("reconcile", &data, AS_OF, &shards)
            .env("JOB_COMPLETION_INDEX", index)
            .env("TALLY_SHARDS", shard_count)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(stderr(&out), format!("tally: environment: {message}\n"));
    }
    // A value that is not UTF-8 is no number (both such: it was taken for unset, and the
    // run published whole, unsharded).
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"\xff");
        let out = run_command("reconcile", &data, AS_OF, &shards)
            .env("JOB_COMPLETION_INDEX", odd)
            .env("TALLY_SHARDS", odd)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert_eq!(
            stderr(&out),
            "tally: environment: JOB_COMPLETION_INDEX=\u{fffd} is not a number \
             (JOB_COMPLETION_INDEX and TALLY_SHARDS select the shard)\n"
        );
        assert!(!shards.exists(), "nothing published");
    }

    // At the limit, the last of 4096 shards (one account partition) runs; a shard past
    // its count, and one shard more than the partitions, are refused before anything is
    // read.
    succeeded(run_command("reconcile", &data, AS_OF, &shards).args(["--shard", "4095/4096"]));
    assert!(root(&shards).join("shard=4095/shard.json").is_file());
    for (shard, why) in [
        ("3/3", "I must be in 0..N and N at least 1"),
        ("0/4097", "at most 4096 shards (the account partitions)"),
    ] {
        let out = run_command("reconcile", &data, AS_OF, &shards)
            .args(["--shard", shard])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(
            stderr(&out),
            format!("tally: command line: --shard {shard}: {why}\n")
        );
    }
}

fn t(s: &str) -> i64 {
    tally::time::parse_instant(s).unwrap()
}

/// (event_id, account_id, quantity units, occurred_at, ingested_at)
type Usage<'a> = (&'a str, &'a str, i64, &'a str, Option<&'a str>);
/// (entry_id, account_id, event_id, credits units, recorded_at)
type Debit<'a> = (&'a str, &'a str, Option<&'a str>, i64, &'a str);

fn write_usage(path: &Path, rows: &[Usage<'_>]) {
    use tally::amount::Milli;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let batch = tally::write::Table::default()
        .str("event_id", rows.iter().map(|r| r.0))
        .str("account_id", rows.iter().map(|r| r.1))
        .str("product", rows.iter().map(|_| "studio"))
        .str("action", rows.iter().map(|_| "prompt_to_video"))
        .opt_str("model", rows.iter().map(|_| None))
        .credits("quantity", rows.iter().map(|r| Milli::from_units(r.2)))
        .str("status", rows.iter().map(|_| "succeeded"))
        .ts("occurred_at", rows.iter().map(|r| t(r.3)))
        .opt_ts("ingested_at", rows.iter().map(|r| r.4.map(t)))
        .finish();
    tally::write::write_parquet(path, &batch).unwrap();
}

fn write_debits(path: &Path, rows: &[Debit<'_>]) {
    use tally::amount::Milli;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let batch = tally::write::Table::default()
        .str("entry_id", rows.iter().map(|r| r.0))
        .str("account_id", rows.iter().map(|r| r.1))
        .opt_str("event_id", rows.iter().map(|r| r.2))
        .str("kind", rows.iter().map(|_| "debit"))
        .credits("credits", rows.iter().map(|r| Milli::from_units(r.3)))
        .ts("recorded_at", rows.iter().map(|r| t(r.4)))
        .finish();
    tally::write::write_parquet(path, &batch).unwrap();
}

/// A data root with the fixtures' price book and a November `pro` allocation for each of
/// `acct_0`..`acct_{n-1}`; returns the account ids.
fn november_root(root: &Path, n: usize) -> Vec<String> {
    std::fs::create_dir_all(root).unwrap();
    std::fs::copy(
        repo().join("fixtures/pricebook.toml"),
        root.join("pricebook.toml"),
    )
    .unwrap();
    let accounts: Vec<String> = (0..n).map(|i| format!("acct_{i}")).collect();
    let ids: Vec<&str> = accounts.iter().map(String::as_str).collect();
    write_november_allocations(root, &ids, "pro", tally::amount::Milli::from_units(200));
    accounts
}

/// Rows whose id joins cross accounts: event copies naming different accounts (the winner
/// in another file and account), entries naming another account than their event,
/// repeated entry ids across accounts, an entry whose first copy follows an event of a
/// third account, an invalid copy that must not win.
fn cross_account_root(root: &Path) {
    let accounts = november_root(root, 12);
    let day = "2026-11-10T00:00:00Z";
    let mut usage0: Vec<Usage<'_>> = vec![
        // x1: the copy of acct_0 is ingested later than acct_5's (in part-1): acct_5 wins.
        ("x1", "acct_0", 2, day, Some("2026-11-10T00:05:00Z")),
        // x2: acct_1's copy has no ingested_at (last); acct_2's wins.
        ("x2", "acct_1", 3, day, None),
        // x3: acct_11's copy is invalid (negative) and never competes.
        ("x3", "acct_10", 1, day, Some("2026-11-10T00:01:00Z")),
        ("x3", "acct_11", -1, day, Some("2026-11-10T00:00:30Z")),
        ("e9", "acct_9", 1, day, None),
    ];
    let usage1: Vec<Usage<'_>> = vec![
        ("x1", "acct_5", 2, day, Some("2026-11-10T00:01:00Z")),
        ("x2", "acct_2", 3, day, Some("2026-11-10T00:02:00Z")),
        ("x2", "acct_2", 3, day, Some("2026-11-10T00:02:00Z")),
    ];
    let names: Vec<String> = (0..12).map(|i| format!("plain_{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        usage0.push((name, &accounts[i], 1, day, None));
    }
    write_usage(&root.join("usage/part-0.parquet"), &usage0);
    write_usage(&root.join("usage/part-1.parquet"), &usage1);
    let mut debits0: Vec<Debit<'_>> = vec![
        // x1 charged on the losing copy's account: attaches to x1 (acct_5), account_mismatch.
        ("d-x1", "acct_0", Some("x1"), 16, day),
        ("d-x2", "acct_2", Some("x2"), 24, day),
        // Repeated entry id across accounts: the second copy is rejected bad_value.
        ("d-rep", "acct_3", Some("plain_3"), 8, day),
        // First copy names acct_4 but charges e9 of acct_9; its repeat names acct_6.
        ("d-cross", "acct_4", Some("e9"), 8, day),
        // An event that does not exist: orphan on acct_8.
        ("d-orphan", "acct_8", Some("nope"), 8, day),
        // x3 charged on the invalid copy's account.
        ("d-x3", "acct_11", Some("x3"), 8, day),
    ];
    for (i, name) in names.iter().enumerate().filter(|(i, _)| *i != 3) {
        debits0.push((name, &accounts[i], Some(name), 8, day));
    }
    let debits1: Vec<Debit<'_>> = vec![
        ("d-rep", "acct_7", Some("plain_7"), 8, day),
        ("d-cross", "acct_6", None, 8, day),
    ];
    write_debits(&root.join("debits/part-0.parquet"), &debits0);
    write_debits(&root.join("debits/part-1.parquet"), &debits1);
}

/// A split run whose ledger charges other accounts' events warns that those rows, held in
/// memory until their groups run, pass what the budget plans for a group; the same rows
/// charging their own accounts do not.
#[test]
fn many_rows_joined_across_accounts_are_warned_of() {
    let tmp = tempfile::tempdir().unwrap();
    for (across, warns) in [(1, true), (0, false)] {
        let root = tmp.path().join(format!("data-{across}"));
        let accounts = november_root(&root, 100);
        let day = "2026-11-10T00:00:00Z";
        let events: Vec<String> = (0..3_000).map(|i| format!("e{i}")).collect();
        let entries: Vec<String> = (0..3_000).map(|i| format!("d{i}")).collect();
        let usage: Vec<Usage<'_>> = (events.iter().enumerate())
            .map(|(i, e)| (e.as_str(), accounts[i % 100].as_str(), 1, day, None))
            .collect();
        let debits: Vec<Debit<'_>> = (entries.iter().zip(&events).enumerate())
            .map(|(i, (d, e))| {
                (
                    d.as_str(),
                    accounts[(i + across) % 100].as_str(),
                    Some(e.as_str()),
                    8,
                    day,
                )
            })
            .collect();
        write_usage(&root.join("usage/part-0.parquet"), &usage);
        write_debits(&root.join("debits/part-0.parquet"), &debits);
        let out = run_command(
            "reconcile",
            &root,
            AS_OF,
            &tmp.path().join(format!("out-{across}")),
        )
        .args(["--memory-budget", "256KiB", "--log-format", "json"])
        .output()
        .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let log = stderr(&out);
        let warning = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| {
                v["level"] == "WARN"
                    && v["fields"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("join ids across accounts")
            });
        assert_eq!(warning.is_some(), warns, "{log}");
        if let Some(w) = warning {
            let fields = &w["fields"];
            // Every usage and ledger row: each entry names another account's event.
            assert_eq!(fields["rows"], 6_000, "{log}");
            let fit = fields["rows_per_group"].as_u64().unwrap();
            assert_eq!(
                fields["message"].as_str().unwrap(),
                format!(
                    "6000 usage and ledger rows join ids across accounts (ledger entries naming \
                     another account's event, event ids used by several accounts), more than the \
                     {fit} rows the memory budget plans for a group: they stay in memory until \
                     their groups run, so the run's peak will pass the budget; give the job more \
                     memory and a larger --memory-budget"
                )
            );
        }
    }
}

#[test]
fn rows_joined_across_accounts_are_routed_exactly_when_split() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    cross_account_root(&data);
    let single = tmp.path().join("single");
    run_ok("reconcile", &data, AS_OF, &single, &["--buckets", "12"]);
    let rejects = render(&single.join("rejects.parquet"), &[]);
    assert!(rejects.contains("conflicting_duplicate"), "{rejects}");
    assert!(
        rejects.contains("entry_id \"\"d-rep\"\" repeats"),
        "{rejects}"
    );
    assert!(
        rejects.contains("entry_id \"\"d-cross\"\" repeats"),
        "{rejects}"
    );
    let found = render(&single.join("discrepancies.parquet"), &[]);
    assert!(found.contains("account_mismatch,acct_5,x1"), "{found}");
    assert!(found.contains("orphan_debit,acct_8"), "{found}");
    for buckets in ["3", "5", "12"] {
        for groups in ["2", "3"] {
            let out = tmp.path().join(format!("g-{buckets}-{groups}"));
            run_ok(
                "reconcile",
                &data,
                AS_OF,
                &out,
                &["--buckets", buckets, "--groups", groups],
            );
            // Bucket counts give the same bytes; compare with the single run.
            assert_same(
                &single,
                &out,
                &format!("{buckets} buckets in {groups} groups"),
            );
        }
        for n in [2, 3] {
            let n_text = n.to_string();
            if n > buckets.parse().unwrap() {
                continue;
            }
            let shards = tmp.path().join(format!("s-{buckets}-{n_text}"));
            run_shards(
                "reconcile",
                &data,
                AS_OF,
                &shards,
                n,
                &["--buckets", buckets],
            );
            let merged = tmp.path().join(format!("m-{buckets}-{n_text}"));
            merge_shards_into(&shards, &merged);
            assert_same(
                &single,
                &merged,
                &format!("{buckets} buckets in {n} shards"),
            );
        }
    }
}

/// More billed events than one streamed chunk (65,536 rows), from several groups' runs
/// and from shard folders: the same billed_events.parquet bytes as a whole close.
#[test]
fn billed_events_stream_past_one_chunk_from_group_runs_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generated_data(tmp.path(), 900, 150_000, 3, "0.01");
    let single = tmp.path().join("single");
    run_ok("close", &data, CLOSE_AS_OF, &single, &[]);
    let billed = read_parquet(&single.join("billed_events.parquet"));
    assert!(
        billed.num_rows() > 1 << 16,
        "{} billed rows",
        billed.num_rows()
    );
    let grouped = tmp.path().join("grouped");
    run_ok("close", &data, CLOSE_AS_OF, &grouped, &["--groups", "7"]);
    assert_same(&single, &grouped, "close in 7 groups");
    let merged = tmp.path().join("merged");
    shard_and_merge("close", &data, CLOSE_AS_OF, &merged, 2);
    assert_same(&single, &merged, "close in 2 shards");
}

/// A sharded close with `--history` skips its own final output like a single close does:
/// closing the same period again is the no-op of a close, not a refusal, and the next
/// period's sharded close sees the first as history.
#[test]
fn sharded_closes_with_history_behave_like_single_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let closes = tmp.path().join("closes");
    let single_closes = tmp.path().join("single-closes");
    let history = |dir: &Path| ["--history".to_string(), dir.to_str().unwrap().to_string()];
    let single = single_closes.join("2026-12-01");
    let h = history(&single_closes);
    run_ok("close", &data, CLOSE_AS_OF, &single, &[&h[0], &h[1]]);
    let merged = closes.join("2026-12-01");
    let h = history(&closes);
    run_shards("close", &data, CLOSE_AS_OF, &merged, 2, &[&h[0], &h[1]]);
    tally_ok(&["merge", "--out", merged.to_str().unwrap()]);
    assert_same(&single, &merged, "sharded close with history");
    // The same close again, sharded: each shard skips the published close (its own
    // output), so the merge finds the same inputs and does nothing.
    run_shards("close", &data, CLOSE_AS_OF, &merged, 2, &[&h[0], &h[1]]);
    let again = tally_ok(&["merge", "--out", merged.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already closed"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_same(&single, &merged, "unchanged by the repeated close");
}

/// The first close of a history, sharded: its merge given another `--out` (and the shard
/// folders by name) is refused before it takes a lock, naming the history the shards read.
/// Published there, the next close under the history would not see it and would close
/// and invoice the same periods again (the closes under both folders were none, so
/// comparing them could not tell). Through a link to the history the merge publishes.
#[test]
fn a_first_sharded_close_merged_outside_its_history_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let closes = tmp.path().join("closes");
    let december = closes.join("2026-12-01");
    let h = ["--history", closes.to_str().unwrap()];
    run_shards("close", &data, CLOSE_AS_OF, &december, 2, &h);
    let elsewhere = tmp.path().join("elsewhere").join("2026-12-01");
    let shards = root(&december);
    let merge_into = |out: &Path, extra: &[&str]| {
        let mut c = tally_command(&[
            "merge",
            "--out",
            out.to_str().unwrap(),
            shards.to_str().unwrap(),
        ]);
        c.args(extra);
        c
    };
    // A folder that does not exist is no history the shards read: never made by a merge.
    assert_eq!(
        refused_by(&mut merge_into(&elsewhere, &[])),
        format!(
            "tally: refused: the merge's --out {} is in {}, which does not exist: a close's \
             merge publishes directly inside the history folder its shards read ({}), which \
             they made (their lock file is in it); mount it here, or give the merge the shards' \
             --out\n",
            elsewhere.display(),
            elsewhere.parent().unwrap().display(),
            closes.display()
        )
    );
    // Refused before its locks: nothing made beside the wrong --out.
    assert!(!tmp.path().join("elsewhere").exists());
    // Another folder, also named with --history: the shards' history is a folder here.
    std::fs::create_dir_all(elsewhere.parent().unwrap()).unwrap();
    let outside = |advice: &str| {
        format!(
            "tally: refused: the merge's --out {} is not in the history folder its shards read \
             ({}): a close publishes directly inside its history, and the next close there \
             would not see this one and would close and invoice its periods again; {advice}\n",
            elsewhere.display(),
            closes.display()
        )
    };
    assert_eq!(
        refused_by(&mut merge_into(&elsewhere, &[])),
        outside("give the merge the shards' --out")
    );
    let given = elsewhere.parent().unwrap().to_str().unwrap();
    assert_eq!(
        refused_by(&mut merge_into(&elsewhere, &["--history", given])),
        outside(
            "it is a folder on this machine too: give the merge the shards' --out, and leave \
             --history out"
        )
    );
    assert_eq!(
        std::fs::read_dir(elsewhere.parent().unwrap())
            .unwrap()
            .count(),
        0
    );
    // The shards' --out, another --history: the --history is what is wrong.
    assert_eq!(
        refused_by(&mut merge_into(&december, &["--history", given])),
        format!(
            "tally: refused: --history {given} is not the history folder the shards read ({}), \
             which is a folder on this machine and holds --out: leave --history out\n",
            closes.display()
        )
    );
    // The history through a link is the history.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&closes, &link).unwrap();
    tally_ok(&[
        "merge",
        "--out",
        link.join("2026-12-01").to_str().unwrap(),
        shards.to_str().unwrap(),
    ]);
    assert!(december.join("manifest.json").exists());
}

/// A history folder mounted at another path on the merge's machine (here: moved): the
/// recorded path leads nowhere, so the merge is refused and says to give `--history`; with
/// it, `--out` must be directly inside it, and the merge publishes. Shards that name their
/// history by two paths (two machines' mounts) are shards of different runs unless the
/// merge is given `--history`. A reconcile's merge given `--history` is exit 2.
#[test]
fn a_history_mounted_elsewhere_is_given_to_the_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let (first, second) = (tmp.path().join("m1/h"), tmp.path().join("m2/h"));
    std::fs::create_dir_all(first.parent().unwrap()).unwrap();
    std::fs::create_dir_all(second.parent().unwrap()).unwrap();
    let shard = |history: &Path, i: &str| {
        let out = history.join("2026-12-01");
        let h = ["--history", history.to_str().unwrap(), "--shard", i];
        run_ok("close", &data, CLOSE_AS_OF, &out, &h);
    };
    shard(&first, "0/2");
    std::fs::rename(&first, &second).unwrap();
    shard(&second, "1/2");
    let out = second.join("2026-12-01");
    let merge = |extra: &[&str]| {
        let mut c = tally_command(&["merge", "--out", out.to_str().unwrap()]);
        c.args(extra);
        c
    };
    let shard0 = root(&out).join("shard=0");
    let shard1 = root(&out).join("shard=1");
    assert_eq!(
        refused_by(&mut merge(&[])),
        format!(
            "tally: refused: {} and {} are shards of different runs (history folder {} vs {}: \
             if they are one folder mounted at two paths, give the merge --history with its \
             path here); rerun the one not made from the inputs and settings of the run you \
             mean\n",
            shard1.display(),
            shard0.display(),
            second.display(),
            first.display()
        )
    );
    let elsewhere = tmp.path().join("elsewhere");
    assert_eq!(
        refused_by(&mut merge(&["--history", elsewhere.to_str().unwrap()])),
        format!(
            "tally: refused: the merge's --out {} is not in the history folder given with \
             --history ({}): a close publishes directly inside its history, and the next close \
             there would not see this one and would close and invoice its periods again; give \
             an --out directly inside it\n",
            out.display(),
            elsewhere.display()
        )
    );
    // A new, empty folder given as --history is not the shards' history (no lock file of
    // theirs in it): refused, nothing made there.
    let empty = tmp.path().join("m3/h");
    std::fs::create_dir_all(&empty).unwrap();
    let into_empty = empty.join("2026-12-01");
    let shards = root(&out);
    assert_eq!(
        refused_by(&mut tally_command(&[
            "merge",
            "--out",
            into_empty.to_str().unwrap(),
            "--history",
            empty.to_str().unwrap(),
            shards.to_str().unwrap(),
        ])),
        format!(
            "tally: refused: --history {0} holds no .tally-history.lock, which the shards of a \
             close leave in the history folder they read: give that folder's path on this \
             machine (if it is this one, copied without its hidden files, create \
             {0}/.tally-history.lock and rerun the merge)\n",
            empty.display()
        )
    );
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    succeeded(&mut merge(&["--history", second.to_str().unwrap()]));
    assert!(out.join("manifest.json").exists());

    // A reconcile's shards read no history.
    let reconcile = tmp.path().join("reconcile");
    run_shards("reconcile", &data, AS_OF, &reconcile, 2, &[]);
    let given = tally(&[
        "merge",
        "--out",
        reconcile.to_str().unwrap(),
        "--history",
        second.to_str().unwrap(),
    ]);
    assert_eq!(given.status.code(), Some(2), "{}", stderr(&given));
    assert_eq!(
        stderr(&given),
        format!(
            "tally: {}: --history is for the merge of a close whose shards read a history \
             folder, and these shards read none: leave it out\n",
            second.display()
        )
    );
}

/// Closes under one history folder run one at a time (each reads the closes before it): a
/// close holds the history's lock, which the shards of a sharded close share. A merge whose
/// shards read a history refuses when a close was published there since they ran (they did
/// not see it), as it refuses a data root that changed.
#[test]
fn closes_under_one_history_run_one_at_a_time_and_a_merge_sees_what_its_shards_saw() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let closes = tmp.path().join("closes");
    let h = ["--history", closes.to_str().unwrap()];
    run_ok("close", &data, CLOSE_AS_OF, &closes.join("2026-12-01"), &h);
    let lock_path = closes.join(".tally-history.lock");
    let lock = std::fs::File::open(&lock_path).unwrap();
    let busy = format!(
        "tally: refused: another tally close is running under the history folder {} right now \
         (closes of one history run one at a time, each reading the closes before it); wait \
         for it to finish (held by pid {})\n",
        closes.display(),
        std::process::id()
    );
    let later = closes.join("2027-01-01");
    let close_later = |extra: &[&str]| {
        let mut c = run_command("close", &data, "2027-01-01T00:00:00Z", &later);
        c.args(h).args(extra);
        c
    };
    // Another close holds it: a close, and a shard, are refused before they compute.
    lock.try_lock().unwrap();
    assert_eq!(refused_by(&mut close_later(&[])), busy);
    assert_eq!(refused_by(&mut close_later(&["--shard", "0/2"])), busy);
    // Refused before the shard's folder is made: nothing left beside the output.
    assert!(!root(&later).exists());
    lock.unlock().unwrap();
    // Shards of a close hold it shared: another shard runs beside them, a close does not.
    lock.try_lock_shared().unwrap();
    assert_eq!(refused_by(&mut close_later(&[])), busy);
    run_shards("close", &data, "2027-01-01T00:00:00Z", &later, 2, &h);
    lock.unlock().unwrap();
    assert!(!later.exists());

    // A close published under the history between the shards and their merge.
    run_ok(
        "close",
        &data,
        "2026-12-15T00:00:00Z",
        &closes.join("2026-12-15"),
        &h,
    );
    let merge = || tally_command(&["merge", "--out", later.to_str().unwrap()]);
    assert_eq!(
        refused_by(&mut merge()),
        format!(
            "tally: refused: the closes under the history folder {} are not those the shards \
             read: a close was published, replaced or removed there since (rerun every shard \
             and then the merge), or the merge's --out is not in the history folder the shards \
             read (a close publishes directly inside its history: give the merge the shards' \
             --out)\n",
            closes.display()
        )
    );
    assert!(!later.exists());
    // Rerun, the shards see it, and the merge publishes; not while another close holds
    // the history's lock (the merge takes it as a close does).
    run_shards("close", &data, "2027-01-01T00:00:00Z", &later, 2, &h);
    lock.try_lock().unwrap();
    assert_eq!(refused_by(&mut merge()), busy);
    lock.unlock().unwrap();
    let merged = merge().output().unwrap();
    assert!(merged.status.success(), "{}", stderr(&merged));
    let manifest = std::fs::read_to_string(later.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("history/2026-12-15/manifest.json"),
        "{manifest}"
    );
}

mod random_roots {
    //! Random small data roots whose ids collide across accounts in every way: split runs
    //! (groups, shards) must give the bytes of the whole run.
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    struct Root {
        accounts: usize,
        /// (event, account, quantity units (negative = invalid), day, ingested minute, file)
        usage: Vec<(usize, usize, i64, i64, Option<i64>, usize)>,
        /// (entry, account, event (≥ pool: none), credits units, day, file)
        debits: Vec<(usize, usize, usize, i64, i64, usize)>,
    }

    fn root() -> impl Strategy<Value = Root> {
        (2usize..8).prop_flat_map(|accounts| {
            let usage = prop::collection::vec(
                (
                    0usize..12,
                    0..accounts,
                    -1i64..5,
                    1i64..19,
                    prop::option::of(0i64..50),
                    0usize..3,
                ),
                1..30,
            );
            let debits = prop::collection::vec(
                (
                    0usize..14,
                    0..accounts,
                    0usize..14,
                    0i64..60,
                    1i64..19,
                    0usize..2,
                ),
                0..30,
            );
            (usage, debits).prop_map(move |(usage, debits)| Root {
                accounts,
                usage,
                debits,
            })
        })
    }

    fn write(dir: &Path, r: &Root) {
        let accounts = november_root(dir, r.accounts);
        let at = |day: i64, minute: i64| format!("2026-11-{:02}T00:{minute:02}:00Z", day + 1);
        for file in 0..3 {
            let rows: Vec<_> = r.usage.iter().filter(|u| u.5 == file).collect();
            if rows.is_empty() {
                continue;
            }
            let text: Vec<(String, String, Option<String>)> = rows
                .iter()
                .map(|u| (format!("e{}", u.0), at(u.3, 0), u.4.map(|m| at(u.3, m))))
                .collect();
            let usage: Vec<Usage<'_>> = rows
                .iter()
                .zip(&text)
                .map(|(u, (id, occurred, ingested))| {
                    (
                        id.as_str(),
                        accounts[u.1].as_str(),
                        u.2,
                        occurred.as_str(),
                        ingested.as_deref(),
                    )
                })
                .collect();
            write_usage(&dir.join(format!("usage/part-{file}.parquet")), &usage);
        }
        for file in 0..2 {
            let rows: Vec<_> = r.debits.iter().filter(|d| d.5 == file).collect();
            // Event numbers past the usage pool name no event.
            let text: Vec<(String, Option<String>, String)> = rows
                .iter()
                .map(|d| {
                    (
                        format!("d{}", d.0),
                        (d.2 < 13).then(|| format!("e{}", d.2)),
                        at(d.4, 0),
                    )
                })
                .collect();
            let debits: Vec<Debit<'_>> = rows
                .iter()
                .zip(&text)
                .map(|(d, (id, event, recorded))| {
                    (
                        id.as_str(),
                        accounts[d.1].as_str(),
                        event.as_deref(),
                        d.3,
                        recorded.as_str(),
                    )
                })
                .collect();
            write_debits(&dir.join(format!("debits/part-{file}.parquet")), &debits);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn split_runs_equal_the_whole_run(r in root()) {
            let tmp = tempfile::tempdir().unwrap();
            let data = tmp.path().join("data");
            write(&data, &r);
            for command in ["reconcile", "close"] {
                let as_of = if command == "close" { CLOSE_AS_OF } else { AS_OF };
                let whole = tmp.path().join(format!("{command}-whole"));
                run_ok(command, &data, as_of, &whole, &[]);
                let grouped = tmp.path().join(format!("{command}-groups"));
                run_ok(command, &data, as_of, &grouped, &["--groups", "3"]);
                assert_same(&whole, &grouped, &format!("{command} in 3 groups: {r:?}"));
                let merged = tmp.path().join(format!("{command}-shards"));
                shard_and_merge(command, &data, as_of, &merged, 2);
                assert_same(&whole, &merged, &format!("{command} in 2 shards: {r:?}"));
            }
        }
    }
}

fn strings(batch: &arrow::record_batch::RecordBatch, name: &str) -> Vec<String> {
    use arrow::array::{Array, AsArray};
    let a = batch.column_by_name(name).unwrap().as_string::<i32>();
    (0..a.len()).map(|i| a.value(i).to_string()).collect()
}

/// Each row's (account_id, period instant) of a table, the instant from `period`.
fn account_periods(batch: &arrow::record_batch::RecordBatch, period: &str) -> Vec<(String, i64)> {
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampMicrosecondType;
    let instants = batch
        .column_by_name(period)
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    strings(batch, "account_id")
        .into_iter()
        .enumerate()
        .map(|(i, account)| (account, instants.value(i)))
        .collect()
}

/// The contract's row order (section 7): "close tables by (account_id, period_start)".
/// Invoices and next allocations are in that order, renewals by (account_id, period_end)
/// (they name the closed period by its end) and next grants by account_id; invoice lines
/// and billed events, which name their invoice, follow their invoices' order (billed
/// events also by their own account_id).
fn assert_close_row_order(out: &Path, what: &str) {
    let invoices = read_parquet(&out.join("invoices.parquet"));
    let keys = account_periods(&invoices, "period_start");
    assert!(keys.len() > 100, "{what}: enough invoices to show an order");
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "{what}: invoices by (account_id, period_start)"
    );
    for (table, period) in [
        ("renewals.parquet", "period_end"),
        ("allocations_next.parquet", "period_start"),
    ] {
        let rows = account_periods(&read_parquet(&out.join(table)), period);
        assert!(rows.len() > 100, "{what}: {table} has rows");
        assert!(
            rows.windows(2).all(|w| w[0] < w[1]),
            "{what}: {table} by (account_id, {period})"
        );
    }
    let grant_accounts = strings(
        &read_parquet(&out.join("grants_next.parquet")),
        "account_id",
    );
    assert!(!grant_accounts.is_empty(), "{what}: grants_next has rows");
    assert!(
        grant_accounts.windows(2).all(|w| w[0] <= w[1]),
        "{what}: grants_next by account_id"
    );
    let place: std::collections::HashMap<String, usize> = strings(&invoices, "invoice_id")
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect();
    for table in ["invoice_lines.parquet", "billed_events.parquet"] {
        let batch = read_parquet(&out.join(table));
        let places: Vec<usize> = strings(&batch, "invoice_id")
            .iter()
            .map(|id| place[id])
            .collect();
        assert!(places.len() > keys.len(), "{what}: {table} has rows");
        assert!(
            places.windows(2).all(|w| w[0] <= w[1]),
            "{what}: {table} in its invoices' (account_id, period_start) order"
        );
    }
    let billed = read_parquet(&out.join("billed_events.parquet"));
    let billed_accounts = strings(&billed, "account_id");
    assert!(
        billed_accounts.windows(2).all(|w| w[0] <= w[1]),
        "{what}: billed events by account_id"
    );
}

/// A close split into groups (its billed events and invoice lines go through run files
/// and are merged by account) and one sharded and merged keep the contract's row order.
#[test]
fn split_and_sharded_closes_keep_the_contract_row_order() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let single = tmp.path().join("single");
    run_ok("close", &data, CLOSE_AS_OF, &single, &[]);
    assert_close_row_order(&single, "one group");
    let grouped = tmp.path().join("grouped");
    run_ok("close", &data, CLOSE_AS_OF, &grouped, &["--groups", "4"]);
    assert_close_row_order(&grouped, "4 groups");
    let sharded = tmp.path().join("sharded");
    shard_and_merge("close", &data, CLOSE_AS_OF, &sharded, 3);
    assert_close_row_order(&sharded, "3 shards merged");
}

/// Shards given a relative --data record it made absolute: a merge run from another
/// folder finds it and publishes the one-machine bytes. A data root that is not there
/// where the merge runs (moved, or mounted elsewhere on another machine) is exit 2 naming
/// the shard manifest and saying to give --data; `merge --data` then merges them.
#[test]
fn a_merge_elsewhere_finds_the_shards_data_root_or_says_how_to() {
    let tmp = tempfile::tempdir().unwrap();
    let here = tmp.path().join("here");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let data = generate_root(&here);
    let relative = data.strip_prefix(&here).unwrap();
    let single = tmp.path().join("single");
    run_ok("reconcile", &data, AS_OF, &single, &[]);
    let out = tmp.path().join("out");
    let shards = || {
        for i in 0..2 {
            let ran = run_command("reconcile", relative, AS_OF, &out)
                .args(["--shard", &format!("{i}/2")])
                .current_dir(&here)
                .output()
                .unwrap();
            assert!(ran.status.success(), "{}", stderr(&ran));
        }
    };
    let merge = |extra: &[&str]| {
        let mut args = vec!["merge", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        tally_command(&args)
            .current_dir(&elsewhere)
            .output()
            .unwrap()
    };
    shards();
    let found = merge(&[]);
    assert!(found.status.success(), "{}", stderr(&found));
    assert_same(&single, &out, "merged from another folder");

    // The data root moved away: named, with what to do.
    std::fs::remove_dir_all(&out).unwrap();
    let moved = tmp.path().join("moved");
    std::fs::rename(&data, &moved).unwrap();
    let lost = merge(&[]);
    assert_eq!(lost.status.code(), Some(2));
    assert_eq!(
        stderr(&lost),
        format!(
            "tally: {}: the data root recorded by the shards ({}) is not a folder here; give the merge --data with the data root as this machine sees it\n",
            data.display(),
            root(&out).join("shard=0").join("shard.json").display()
        )
    );
    assert!(!out.exists(), "nothing published");
    let given = merge(&["--data", moved.to_str().unwrap()]);
    assert!(given.status.success(), "{}", stderr(&given));
    assert_same(&single, &out, "merged with --data");
}

/// A shard's groups are capped by its partitions (4096 over the shards): at 17 shards a
/// shard holds 241, so `--groups 241` is taken as asked and `--groups 242` is lowered to
/// 241 with a warning saying why; the shard is written either way.
#[test]
fn a_shard_takes_at_most_a_group_per_partition() {
    let data = repo().join("fixtures/golden/pricing_and_kinds/data");
    let tmp = tempfile::tempdir().unwrap();
    let shard = |groups: &str| {
        let out = tmp.path().join(format!("out-{groups}"));
        let output = run_command("reconcile", &data, AS_OF, &out)
            .args(["--shard", "0/17", "--groups", groups])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "--groups {groups}: {}",
            stderr(&output)
        );
        stderr(&output)
    };
    let limited = "the group count is limited by the shard count";
    let at_the_limit = shard("241");
    assert!(!at_the_limit.contains(limited), "{at_the_limit}");
    let past_it = shard("242");
    assert!(past_it.contains(limited), "{past_it}");
    assert!(
        past_it.contains(r#""asked":242,"groups":241,"shards":17"#),
        "{past_it}"
    );
}

/// Rewrite a shard's `partial.bin` through `edit` (decoded as the merge decodes it) and
/// list the new bytes' checksum in its `shard.json`: a forgery the checksum does not catch.
fn forge_partial(shard: &Path, edit: impl FnOnce(&mut tally::run::Partial)) {
    let path = shard.join("partial.bin");
    let mut partial: tally::run::Partial =
        postcard::from_bytes(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut partial);
    let bytes = postcard::to_allocvec(&partial).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    edit_listing(&shard.join("shard.json"), |m| {
        m["partial_sha256"] = sha.into()
    });
}

/// Copy a folder's files (one level: a shard folder) into `to`, replacing what is there.
fn copy_shard(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Two shards of one run, shard 0 also kept as it was written (`pristine`), for forging
/// its files: each forgery starts from the shard as written.
struct Forgery {
    tmp: tempfile::TempDir,
    shards: PathBuf,
    shard: PathBuf,
    pristine: PathBuf,
}

impl Forgery {
    fn new(command: &str, as_of: &str) -> Forgery {
        let tmp = tempfile::tempdir().unwrap();
        let shards = two_shards(tmp.path(), command, as_of);
        let shard = root(&shards).join("shard=0");
        let pristine = tmp.path().join("pristine");
        copy_shard(&shard, &pristine);
        Forgery {
            tmp,
            shards,
            shard,
            pristine,
        }
    }

    /// Shard 0's `partial.bin` as written, decoded.
    fn partial(&self) -> tally::run::Partial {
        postcard::from_bytes(&std::fs::read(self.pristine.join("partial.bin")).unwrap()).unwrap()
    }

    /// The merge's refusal of shard 0's `partial.bin`, saying `why`.
    fn refusal(&self, why: &str) -> String {
        format!(
            "tally: refused: {}: {why}; rerun shard 0 of 2 (--shard 0/2)\n",
            self.shard.join("partial.bin").display()
        )
    }

    /// Shard 0 as written again.
    fn restore(&self) {
        copy_shard(&self.pristine, &self.shard);
    }

    /// Shard 0 as written with its partial forged by `edit`, and the merge refused: its
    /// stderr.
    fn forged(&self, edit: &dyn Fn(&mut tally::run::Partial)) -> String {
        self.restore();
        forge_partial(&self.shard, edit);
        refused_merge(self.tmp.path(), &self.shards)
    }
}

/// A `partial.bin` forged to match its checksum, with figures no shard computes, is
/// refused naming it (exit 3, the shard to rerun), before any figure is added up: the
/// counts and the amount past DECIMAL(18,3) used to overflow a sum (a panic, exit 4), the
/// reject indexed past the input files (a panic), and the balance's granted credits
/// (twice the limit) were written into a DECIMAL(18,3) column that cannot hold them.
#[test]
fn merge_refuses_a_partial_forged_with_impossible_figures() {
    use tally::amount::{Milli, OUTPUT_LIMIT_MILLIS};
    let forgery = Forgery::new("reconcile", AS_OF);
    let (tmp, shards, shard) = (&forgery.tmp, &forgery.shards, &forgery.shard);
    let listing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(shard.join("shard.json")).unwrap()).unwrap();
    let listed_rows = |dataset: &str| -> u64 {
        (listing["inputs"].as_array().unwrap().iter())
            .filter(|f| {
                f["path"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{dataset}/"))
            })
            .map(|f| f["rows"].as_u64().unwrap())
            .sum()
    };
    let refusal = |why: &str| forgery.refusal(why);
    let forged = |edit: &dyn Fn(&mut tally::run::Partial)| forgery.forged(edit);
    let usage_read = |p: &tally::run::Partial| p.rows_read[0];
    let usage = {
        let p = forgery.partial();
        assert!(
            !p.rejects.is_empty() && !p.mix.lines.is_empty(),
            "rows to forge"
        );
        usage_read(&p)
    };

    // Counts: at most the rows they count, and one past refused.
    let e = forged(&|p| p.rows_read[0] = u64::MAX);
    let why = format!(
        "it counts {} usage rows read, more than the {} rows its usage files hold",
        u64::MAX,
        listed_rows("usage")
    );
    assert_eq!(e, refusal(&why));
    let e = forged(&|p| p.identical_duplicates = usage + 1);
    let why = format!(
        "it counts {} identical duplicates, more than the {usage} usage rows it read",
        usage + 1
    );
    assert_eq!(e, refusal(&why));
    let e = forged(&|p| p.results[0].1.totals.events_in_window = u64::MAX);
    assert_eq!(e, refusal("its events add up past what a count holds"));
    let e = forged(&|p| p.mix.lines.values_mut().next().unwrap().events = usage + 1);
    let mix_events = {
        let p = forgery.partial();
        let first = p.mix.lines.values().next().unwrap().events;
        p.mix.lines.values().map(|f| f.events).sum::<u64>() - first + usage + 1
    };
    let why = format!(
        "it counts {mix_events} events in the report's mix, more than the {usage} usage rows \
         it read"
    );
    assert_eq!(e, refusal(&why));
    // A reject of a file the data root does not hold (it indexed past the file list).
    let e = forged(&|p| p.rejects[0].at.file = 999);
    let row = {
        let p = forgery.partial();
        (p.rejects[0].dataset.name(), p.rejects[0].at.row)
    };
    let why = format!(
        "it rejects {} row {} of file 999, which no listed file holds",
        row.0, row.1
    );
    assert_eq!(e, refusal(&why));
    // Amounts: decoding refuses one past DECIMAL(18,3); a balance whose figures pass it
    // (2 × 10^18 thousandths granted) is refused by its figures.
    let e = forged(&|p| p.results[0].1.totals.expected_credits = Milli(i64::MAX));
    let decode = format!(
        "tally: refused: {}: cannot be decoded (",
        shard.join("partial.bin").display()
    );
    assert!(e.starts_with(&decode), "{e}");
    assert!(e.ends_with("); rerun shard 0 of 2 (--shard 0/2)\n"), "{e}");
    let balance = |p: &mut tally::run::Partial| {
        let (_, result) = (p.results.iter_mut())
            .find(|(_, r)| !r.balances.is_empty())
            .expect("an account with a balance");
        result.balances[0].granted[0] = Milli(OUTPUT_LIMIT_MILLIS);
        result.balances[0].granted[1] = Milli(OUTPUT_LIMIT_MILLIS);
        (
            result.balances[0].account_id.clone(),
            result.balances[0].period_start,
        )
    };
    let e = forged(&|p| {
        balance(p);
    });
    let (account, start) = {
        let mut p = forgery.partial();
        balance(&mut p)
    };
    let why = format!(
        "the balance of {account} from {} holds figures past DECIMAL(18,3)",
        tally::time::format_instant(start)
    );
    assert_eq!(e, refusal(&why));
    // A reconcile's shards relabelled close in their shard.json (no checksum covers it):
    // refused, not published as a close of a reconcile's figures.
    forgery.restore();
    let relabel = |command: &str| {
        for i in 0..2 {
            edit_listing(&root(shards).join(format!("shard={i}/shard.json")), |m| {
                m["command"] = command.into()
            });
        }
    };
    relabel("close");
    let e = refused_merge(tmp.path(), shards);
    relabel("reconcile");
    assert_eq!(
        e,
        refusal("it holds balances, which only a reconcile writes, but shard.json says close")
    );
    // A file listed with more rows than a file may hold, in both shards alike (their
    // partials' counts are bounded by these rows, so they must be bounded too).
    forgery.restore();
    let other = root(shards).join("shard=1/shard.json");
    let other_pristine = std::fs::read(&other).unwrap();
    let mut first_usage = String::new();
    for listing in [shard.join("shard.json"), other.clone()] {
        edit_listing(&listing, |m| {
            let inputs = m["inputs"].as_array_mut().unwrap();
            let entry = (inputs.iter_mut())
                .find(|f| f["path"].as_str().unwrap().starts_with("usage/"))
                .unwrap();
            first_usage = entry["path"].as_str().unwrap().to_string();
            entry["rows"] = (1u64 << 40).into();
        });
    }
    let e = refused_merge(tmp.path(), shards);
    assert_eq!(
        e,
        format!(
            "tally: refused: {} lists {first_usage} with {} rows, more than a file may hold \
             ({}); the file is damaged: rerun the shards\n",
            shard.join("shard.json").display(),
            1u64 << 40,
            (1u64 << 40) - 1
        )
    );
    std::fs::write(&other, other_pristine).unwrap();

    // The pristine shard still merges.
    forgery.restore();
    merge_shards_into(shards, &tmp.path().join("merged"));
}

/// A close shard's run files are those `shard.json` lists, each named once by
/// `partial.bin`, each a file of the shard's own folder: a forged partial naming a run
/// twice (its rows merged twice: a huge allocation at thousands of names), a file of
/// another folder, or fewer runs than listed is refused naming it (exit 3). A run file
/// holding more records than its count (both forged to agree) stops the merge (exit 4)
/// where the extra records used to be left out unseen; and a FIFO in place of a shard's
/// file is refused where its read used to block forever.
#[test]
fn merge_refuses_run_files_a_forged_partial_names_wrongly() {
    use tally::runs::Run;
    let forgery = Forgery::new("close", CLOSE_AS_OF);
    let (tmp, shards, shard, pristine) = (
        &forgery.tmp,
        &forgery.shards,
        &forgery.shard,
        &forgery.pristine,
    );
    let refusal = |why: &str| forgery.refusal(why);
    let forged = |edit: &dyn Fn(&mut tally::run::Partial)| forgery.forged(edit);
    let first_run = |p: &tally::run::Partial| match &p.billed[0] {
        Run::File(name, rows) => (name.clone(), *rows),
        Run::Memory(_) => panic!("a shard's runs are files"),
    };
    let e = forged(&|p| {
        let (name, rows) = first_run(p);
        p.billed.push(Run::File(name, rows));
    });
    assert_eq!(e, refusal("billed-0.bin is named twice"));
    // An account's result holding billed events or invoice lines (a close's shard writes
    // them to run files only): refused by the file, not dropped nor stopped on later.
    let outside = "it holds billed events or invoice lines in an account's result, outside \
                   its run files (a close's shard writes them only to run files)";
    let e = forged(&|p| {
        let row = tally::engine::BilledEventRow {
            account_id: p.results[0].0.clone(),
            invoice_id: "INV-forged".into(),
            event_id: "e-forged".into(),
            occurred_at: 0,
            credits: None,
        };
        p.results[0].1.billed_events.push(row);
    });
    assert_eq!(e, refusal(outside));
    let e = forged(&|p| {
        p.results[0]
            .1
            .invoice_lines
            .push(tally::close::InvoiceLineRow {
                invoice_id: "INV-forged".into(),
                product: "video".into(),
                action: "generate".into(),
                model: None,
                event_count: 1,
                quantity: tally::amount::Milli(1000),
                credits: tally::amount::Milli(1000),
            });
    });
    assert_eq!(e, refusal(outside));
    let e = forged(&|p| {
        let (_, rows) = first_run(p);
        p.billed[0] = Run::File("../shard=1/billed-0.bin".into(), rows);
    });
    assert_eq!(
        e,
        refusal("../shard=1/billed-0.bin is not a file of the shard's folder")
    );
    let listed = |shard: &Path| -> usize {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(shard.join("shard.json")).unwrap()).unwrap();
        m["runs"].as_array().unwrap().len()
    };
    let runs = listed(pristine);
    let e = forged(&|p| {
        p.lines.clear();
    });
    let lines = {
        let p = forgery.partial();
        p.lines.len()
    };
    assert!(lines > 0);
    let why = format!(
        "it names {} of the {runs} run files shard.json lists",
        runs - lines
    );
    assert_eq!(e, refusal(&why));

    // Runs holding more rows than the usage rows the shard read (every other count made to
    // agree with none read): billed events and invoice lines come from usage rows.
    let e = forged(&|p| {
        p.rows_read[0] = 0;
        p.identical_duplicates = 0;
        p.outside_usage = 0;
        for (_, result) in p.results.iter_mut() {
            let totals = &mut result.totals;
            (
                totals.events_in_window,
                totals.matched_events,
                totals.pending_events,
            ) = (0, 0, 0);
        }
        for line in p.mix.lines.values_mut() {
            *line = Default::default();
        }
    });
    let billed: u64 = {
        let p = forgery.partial();
        p.billed.iter().map(Run::rows).sum()
    };
    assert!(billed > 0);
    let why = format!("it counts {billed} billed events, more than the 0 usage rows it read");
    assert_eq!(e, refusal(&why));

    // One record fewer counted, in partial.bin and shard.json alike: exit 4 at its end.
    forgery.restore();
    let (name, rows) = first_run(&forgery.partial());
    let run = shard.join(&name);
    // shard.json's entry of the run file, edited.
    let edit_run_entry = |edit: &dyn Fn(&mut serde_json::Value)| {
        edit_listing(&shard.join("shard.json"), |m| {
            let runs = m["runs"].as_array_mut().unwrap();
            edit(
                (runs.iter_mut())
                    .find(|f| f["path"] == name.to_str().unwrap())
                    .unwrap(),
            )
        })
    };
    // The merge stopped at the run file (exit 4), nothing published: its stderr.
    let out = tmp.path().join("out");
    let stopped = || {
        let output = tally_command(&[
            "merge",
            "--out",
            out.to_str().unwrap(),
            root(shards).to_str().unwrap(),
        ])
        .output()
        .unwrap();
        assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
        assert!(!out.exists(), "nothing is published");
        stderr(&output)
    };
    forge_partial(shard, |p| p.billed[0] = Run::File(name.clone(), rows - 1));
    edit_run_entry(&|entry| entry["rows"] = (rows - 1).into());
    assert_eq!(
        stopped(),
        format!(
            "tally: invariant broken: run file {} cannot be read back: it holds more than the \
             {} records written\n",
            run.display(),
            rows - 1
        )
    );

    // The run file's records forged out of account order (its first account moved to its
    // end), listed with their own checksum: exit 4 naming it, not a billed_events table
    // out of the contract's order.
    forgery.restore();
    let mut records: Vec<tally::engine::BilledEventRow> = Vec::new();
    let pristine_run = vec![Run::File(run.clone(), rows)];
    let whole = tally::runs::ChunkLimit {
        rows: 1 << 20,
        bytes: usize::MAX,
    };
    tally::runs::for_each_chunk(&pristine_run, whole, |chunk| {
        records.extend_from_slice(chunk);
        Ok(())
    })
    .unwrap();
    let first_account = records[0].account_id.clone();
    let (first, rest): (Vec<_>, Vec<_>) =
        (records.into_iter()).partition(|r| r.account_id == first_account);
    let last_account = rest.last().unwrap().account_id.clone();
    assert_ne!(last_account, first_account);
    tally::runs::write_run::<tally::engine::BilledEventRow, _>(&run, rest.iter().chain(&first))
        .unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&run).unwrap()))
    };
    edit_run_entry(&|entry| entry["sha256"] = sha.clone().into());
    assert_eq!(
        stopped(),
        format!(
            "tally: invariant broken: run file {} cannot be read back: its account \
             {first_account:?} comes after {last_account:?}: runs hold accounts in id order, \
             each account in one run\n",
            run.display(),
        )
    );

    // A close's shards relabelled reconcile in their shard.json (which no checksum
    // covers): refused, not published as a reconcile of a close's figures.
    forgery.restore();
    for i in 0..2 {
        edit_listing(&root(shards).join(format!("shard={i}/shard.json")), |m| {
            m["command"] = "reconcile".into()
        });
    }
    let e = refused_merge(tmp.path(), shards);
    assert_eq!(
        e,
        refusal(
            "it holds run files of billed events or invoice lines, which only a close writes, \
             but shard.json says reconcile"
        )
    );
    for i in 0..2 {
        edit_listing(&root(shards).join(format!("shard={i}/shard.json")), |m| {
            m["command"] = "close".into()
        });
    }

    // A FIFO in place of partial.bin, a run file and shard.json: refused, not read.
    for file in ["partial.bin", "billed-0.bin", "shard.json"] {
        forgery.restore();
        let path = shard.join(file);
        std::fs::remove_file(&path).unwrap();
        let fifo = Fifo::at(&path);
        let e = refused_merge(tmp.path(), shards);
        drop(fifo);
        let expected = match file {
            "partial.bin" => refusal("it is not a regular file"),
            "billed-0.bin" => refusal("billed-0.bin is not a regular file"),
            _ => format!(
                "tally: refused: {}: not a regular file (a folder, a pipe, a socket or a \
                 device): it was replaced since the shard wrote it; rerun the shard\n",
                path.display()
            ),
        };
        assert_eq!(e, expected);
    }
    forgery.restore();
    merge_shards_into(shards, &tmp.path().join("merged"));
}

/// Shards that differ in a field of `shard.json` the refusal did not name (the tool, the
/// partial layout, whether they read a history) are refused saying which (it read "shards
/// of different runs ()").
#[test]
fn shards_of_different_runs_are_refused_naming_every_kind_of_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = two_shards(tmp.path(), "reconcile", AS_OF);
    let listing = root(&shards).join("shard=1/shard.json");
    let pristine = std::fs::read(&listing).unwrap();
    let layout = tally::shard::PARTIAL_FORMAT;
    for (edit, named) in [
        (
            ("tool", serde_json::Value::from("other")),
            "tool \"other\" vs \"tally\"".to_string(),
        ),
        (
            ("partial_format", serde_json::Value::from(layout + 1)),
            format!("partial.bin layout {} vs {layout}", layout + 1),
        ),
        (
            ("read_history", serde_json::Value::from(true)),
            "--history vs no --history".to_string(),
        ),
        // 0 is no --buckets: the run chose (it read "buckets 7 vs 0").
        (
            ("buckets", serde_json::Value::from(7)),
            "buckets 7 vs automatic".to_string(),
        ),
    ] {
        std::fs::write(&listing, &pristine).unwrap();
        edit_listing(&listing, |m| m[edit.0] = edit.1.clone());
        let e = refused_merge(tmp.path(), &shards);
        assert!(
            e.contains(&format!("are shards of different runs ({named});")),
            "{e}"
        );
    }
}

/// Shards that name one data root two ways (the folder, a link to it) are one run: the
/// merge publishes the single run's bytes. A data root given as `link/../..`, a `..` after
/// a link, is recorded where the kernel took it (folded as text it named another folder),
/// and the merge finds it there.
#[test]
fn shards_naming_one_data_root_through_links_merge() {
    let tmp = tempfile::tempdir().unwrap();
    let data = generate_root(tmp.path());
    let single = tmp.path().join("single");
    run_ok("reconcile", &data, AS_OF, &single, &[]);
    let base = tmp.path().canonicalize().unwrap();
    std::os::unix::fs::symlink(&data, base.join("datalink")).unwrap();
    std::fs::create_dir_all(base.join("deep/a/b")).unwrap();
    std::os::unix::fs::symlink(base.join("deep/a/b"), base.join("lnk")).unwrap();

    let two_ways = base.join("two-ways");
    run_ok("reconcile", &data, AS_OF, &two_ways, &["--shard", "0/2"]);
    run_ok(
        "reconcile",
        &base.join("datalink"),
        AS_OF,
        &two_ways,
        &["--shard", "1/2"],
    );
    tally_ok(&["merge", "--out", two_ways.to_str().unwrap()]);
    assert_same(&single, &two_ways, "one root named two ways");

    // `lnk/../../data` from `base`: by the link, `deep/a/b/../../data`, which is
    // `deep/data` (made the root here); folded as text, `base/../data`.
    copy_dir(&data, &base.join("deep/data"));
    let through = base.join("through");
    for i in 0..2 {
        let mut command = tally_command(&[
            "reconcile",
            "--data",
            "lnk/../../data",
            "--as-of",
            AS_OF,
            "--out",
            through.to_str().unwrap(),
            "--shard",
            &format!("{i}/2"),
        ]);
        succeeded(command.current_dir(&base));
    }
    let recorded = json(&root(&through).join("shard=0/shard.json"));
    assert_eq!(
        recorded["data"].as_str().unwrap(),
        base.join("deep/data").to_str().unwrap()
    );
    tally_ok(&["merge", "--out", through.to_str().unwrap()]);
    assert_same(&single, &through, "a root through a link and ..");

    // Shards that recorded two folders of the same files (one path leading to different
    // mounts on two machines): other runs to a merge on its own, one run with `--data`.
    let copy = base.join("copy");
    copy_dir(&data, &copy);
    let mounts = base.join("mounts");
    run_ok("reconcile", &data, AS_OF, &mounts, &["--shard", "0/2"]);
    run_ok("reconcile", &copy, AS_OF, &mounts, &["--shard", "1/2"]);
    let refused = tally(&["merge", "--out", mounts.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(&format!(
            "(data root {} vs {}: if both hold the same files, give the merge --data)",
            copy.canonicalize().unwrap().display(),
            data.canonicalize().unwrap().display()
        )),
        "{}",
        stderr(&refused)
    );
    let data_flag = data.to_str().unwrap();
    tally_ok(&[
        "merge",
        "--out",
        mounts.to_str().unwrap(),
        "--data",
        data_flag,
    ]);
    assert_same(&single, &mounts, "shards of two copies merged with --data");
}

/// A shard of a run writing an output whose previous output a publish stranded (swapped
/// out to `.NAME.tally-staging-PID-old`, killed before the new one took its place) is
/// refused (exit 3), saying where it is: a shard locks only its folder, cannot put the
/// output back, and would not see that a reconcile is going over a close. The merge of
/// the close's own shards puts it back (and finds nothing to do).
#[test]
fn a_shard_over_a_stranded_output_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = repo().join("fixtures/demo");
    let out = tmp.path().join("nov");
    shard_and_merge("close", &data, CLOSE_AS_OF, &out, 2);
    let old = tmp.path().join(".nov.tally-staging-7-old");
    std::fs::rename(&out, &old).unwrap();
    let message = refused_shard("reconcile", &data, AS_OF, &out, "0/2");
    assert!(
        message.contains(&format!(
            "{}: the output that belongs at {} is only there",
            old.display(),
            out.display()
        )),
        "{message}"
    );
    assert!(old.is_dir() && !out.exists());
    let merged = tally(&["merge", "--out", out.to_str().unwrap()]);
    assert!(merged.status.success(), "{}", stderr(&merged));
    assert!(
        stderr(&merged).contains("put back the previous output"),
        "{}",
        stderr(&merged)
    );
    assert!(
        String::from_utf8_lossy(&merged.stdout).contains("nothing to do"),
        "{}",
        String::from_utf8_lossy(&merged.stdout)
    );
    assert!(out.join("manifest.json").is_file() && !old.exists());
}
