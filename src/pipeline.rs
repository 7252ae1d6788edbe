//! The whole run, data flowing one way: load → validate → place in window → (per account,
//! in parallel by bucket) price → consume → reconcile → close → collect. Writing is `write`.

use crate::census::{inputs_listed, Census, Inputs};
use crate::collect::finish;
use crate::dict::{DictBuilder, Dicts, Ids};
use crate::direct::AlignedBuf;
use crate::engine::{process_account, AccountResult, RunContext};
use crate::error::{Result, TallyError};
use crate::load::{self, InputFile};
use crate::model::*;
use crate::price::RateTable;
use crate::pricebook::PriceBook;
use crate::route::Layout;
use crate::rows::{self, DebitSource, UsageSource};
use crate::run::{Partial, RunOutput, RunSettings, Traced, AUTOMATIC_BUCKETS};
use crate::runs::{AccountLine, AccountLineRef, BilledRun, LineRun, Run};
use crate::spill::{self, Routed, SpillFile, SpillFiles};
use crate::time::Micros;
use crate::window;
use crate::{validate, Progress};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use thin_vec::ThinVec;

/// A whole run on this machine: one shard of one.
pub fn run(settings: RunSettings, census: &Census, progress: &Progress) -> Result<RunOutput> {
    let inputs = inputs_listed(&settings.data, census)?;
    let layout = layout(&settings, census, 0, 1)?;
    let partial = compute(&settings, &inputs, &layout, progress)?;
    finish(settings, inputs, vec![partial])
}

/// What a usage or ledger file costs a run beyond its rows: its name (twice: the census's
/// and the load's), its row-group table and the per-row-group work of its reading, about 3
/// KiB (`benches/odd-shapes.sh`, "files": 2.8 KiB more peak a file over 40,000 one-row
/// usage and 40,000 one-row ledger files, against the same rows in two files; 2.7 before
/// the census). Its footer (about 12 KiB) is kept only for
/// a dataset's first `load::MAX_KEPT_FOOTERS` files. The budget counts rows, not files.
const BYTES_PER_FILE: u64 = 3 * 1024;

/// Warn when the usage and ledger files are so many that what they cost beyond their rows
/// takes more than a quarter of the memory budget (at the 3 GiB default: past 262,144
/// files): a writer that flushes a file every few rows (a streaming sink) makes a month of
/// small files, and the run's peak then passes the budget however its groups are sized.
fn warn_of_many_files(settings: &RunSettings, census: &Census) {
    let files = census.file_count(&[Dataset::Usage, Dataset::Debits]);
    let file_bytes = files.saturating_mul(BYTES_PER_FILE);
    if file_bytes > settings.memory_budget_bytes / 4 {
        tracing::warn!(
            files,
            file_bytes,
            memory_budget_bytes = settings.memory_budget_bytes,
            "usage and debits are {files} files: reading them takes about {} beyond \
             their rows (about 3 KiB a file), more than a quarter of the memory budget; \
             compact them into fewer, larger files (a day's rows a file) before the run, or \
             give the job more memory and a larger --memory-budget",
            size_in_words(file_bytes)
        );
    }
}

/// `bytes` for a warning: in MiB to a tenth, rounded (`1.1 MiB`), or in bytes below a
/// tenth of a MiB (`7200 bytes`: a budget may be as small as a byte, and "0.0 MiB, more
/// than the budget" read as a contradiction).
fn size_in_words(bytes: u64) -> String {
    if bytes < (1 << 20) / 10 {
        return format!("{bytes} bytes");
    }
    let tenths = (bytes.saturating_mul(10).saturating_add(1 << 19)) >> 20;
    format!("{}.{} MiB", tenths / 10, tenths % 10)
}

/// Warn when the plans (allocation and grant rows, held for the whole run whatever the
/// groups) alone take more than the memory budget at their cost per row: the groups can
/// only split the usage and ledger rows, so the run's peak passes the budget (1M accounts
/// at a 256 MiB budget peaked at 1.1 GiB reconciling and 2.3 GiB closing, and nothing said
/// why; a memory audit of 2026-12-07).
fn warn_of_plans_past_the_budget(settings: &RunSettings, census: &Census) {
    let plan_rows = census.rows(&[Dataset::Allocations, Dataset::Grants]);
    let per_row = row_costs(settings.mode).plan_row;
    let plan_bytes = plan_rows.saturating_mul(per_row);
    if plan_bytes > settings.memory_budget_bytes {
        tracing::warn!(
            plan_rows,
            plan_bytes,
            memory_budget_bytes = settings.memory_budget_bytes,
            "allocations and grants are {plan_rows} rows: at about {per_row} bytes each they \
             alone take {}, more than the memory budget, and the run holds them \
             whatever its groups, so its peak will pass the budget; give the job more memory \
             and a larger --memory-budget",
            size_in_words(plan_bytes)
        );
    }
}

/// How this run is split: the shard, and groups sized to the memory budget (or forced).
pub fn layout(settings: &RunSettings, census: &Census, shard: u32, shards: u32) -> Result<Layout> {
    warn_of_many_files(settings, census);
    warn_of_plans_past_the_budget(settings, census);
    let groups = match settings.groups {
        Some(g) => g,
        None => crate::route::groups_for(
            census.rows(&[Dataset::Usage, Dataset::Debits]),
            census.id_bytes(&[Dataset::Usage, Dataset::Debits]),
            census.rows(&[Dataset::Allocations, Dataset::Grants]),
            row_costs(settings.mode),
            settings.memory_budget_bytes,
            shards,
        ),
    };
    let layout = Layout {
        shard,
        shards,
        groups: groups.clamp(1, crate::route::max_groups(shards)),
    };
    if layout.groups != groups {
        tracing::warn!(
            asked = groups,
            groups = layout.groups,
            shards,
            "the group count is limited by the shard count: each group needs a partition of \
             this shard's"
        );
    }
    tracing::debug!(
        groups = layout.groups,
        forced = settings.groups.is_some(),
        shard,
        shards,
        memory_budget_bytes = settings.memory_budget_bytes,
        "layout"
    );
    Ok(layout)
}

/// The working memory per row the budget counts for a run of `mode`.
fn row_costs(mode: Mode) -> crate::route::RowCosts {
    match mode {
        Mode::Reconcile => crate::route::RECONCILE_ROW_COSTS,
        Mode::Close => crate::route::CLOSE_ROW_COSTS,
    }
}

/// How many times the rows the budget plans for a group a group may hold before a split
/// run warns: groups vary a little around the average (their partitions are hashed), and
/// the budget is not a hard cap (README, "Scaling").
const OVERSIZED_GROUP_FACTOR: u64 = 2;

/// Warn when a group of a split run holds far more rows than the budget plans for one:
/// its accounts hold a large share of the month (an account's rows are never split), so
/// the run's peak will pass the budget. An on-call engineer reading a memory kill in the
/// log should find why, and the fix (a larger budget), before it happens. Returns the
/// group when it is its accounts' size (not too few groups) that makes it large: the
/// group then names its largest account when it runs ([`warn_of_the_largest_account`]).
fn warn_of_an_oversized_group(
    settings: &RunSettings,
    fit_rows: u64,
    layout: &Layout,
    usage: &crate::route::GroupCounts,
    debits: &crate::route::GroupCounts,
) -> Option<usize> {
    let oversized = crate::route::oversized_group(usage, debits, fit_rows, OVERSIZED_GROUP_FACTOR);
    let mut skewed = None;
    if let Some((group, rows)) = oversized {
        let tenths = rows.saturating_mul(10) / fit_rows;
        // Groups near their average are too few for the budget (forced by --groups, or at
        // the most a shard allows); one far past it holds accounts with much of the month.
        let all_rows: u64 = usage.by_group.iter().chain(&debits.by_group).sum();
        let average = all_rows / u64::from(layout.groups.max(1));
        let why = match rows > average.saturating_mul(OVERSIZED_GROUP_FACTOR) {
            true => {
                skewed = Some(group);
                "its accounts hold a large share of the month, and an account's rows are never \
                 split over groups"
            }
            false => "the run has too few groups for the budget (forced by --groups, or the most groups the shard allows)",
        };
        tracing::warn!(
            group = group + 1,
            groups = layout.groups,
            rows,
            rows_per_group = fit_rows,
            memory_budget_bytes = settings.memory_budget_bytes,
            "group {} of {} holds {rows} usage and ledger rows, {}.{} times the {fit_rows} the \
             memory budget plans for a group: {why}, so the run's peak will pass the budget; \
             give the job more memory and a larger --memory-budget",
            group + 1,
            layout.groups,
            tenths / 10,
            tenths % 10,
        );
    }
    skewed
}

/// Name the account with the most usage and ledger rows of a group that the light pass
/// found far past the budget by its accounts' size: the account whose month the operator
/// asks about (its product's traffic, a runaway client) before giving the job more memory.
/// Counted only for that group, from the rows it holds.
fn warn_of_the_largest_account(group: usize, (usage, debits): (&[Usage], &[Debit]), dicts: &Dicts) {
    let Some((account, rows)) = largest_account((usage, debits), dicts) else {
        return;
    };
    let group_rows = (usage.len() + debits.len()) as u64;
    let account_text: &str = dicts.account(account).as_ref();
    // Quoted (and cut, its length in bytes) as it is, then escaped for the log line.
    let account_id = crate::error::controls_escaped(&quoted(account_text));
    tracing::warn!(
        group = group + 1,
        account = account_text,
        rows,
        group_rows,
        "group {}'s largest account is {account_id}, with {rows} of its {group_rows} usage and \
         ledger rows",
        group + 1,
    );
}

/// The account (code) with the most usage and ledger rows, and its rows; of equal counts
/// the least account id (not code: codes of accounts without allocations follow the
/// order rows were read in), so that the warning is the same every run.
fn largest_account((usage, debits): (&[Usage], &[Debit]), dicts: &Dicts) -> Option<(u32, u64)> {
    let mut rows_by_account: HashMap<u32, u64> = HashMap::new();
    let accounts = (usage.iter().map(|u| u.account)).chain(debits.iter().map(|d| d.account));
    for account in accounts {
        *rows_by_account.entry(account).or_default() += 1;
    }
    (rows_by_account.into_iter()).max_by(|&(a, a_rows), &(b, b_rows)| {
        (a_rows.cmp(&b_rows)).then_with(|| dicts.account(b).cmp(dicts.account(a)))
    })
}

/// Warn when the rows whose group an id join decides (an entry charging another account's
/// event, an event id used by several accounts) outnumber what the budget plans for a
/// group: the spill pass keeps them all in memory until their groups run, on top of the
/// groups' own rows (1M such ledger rows took a run to 1.13 GB at a 128 MiB budget).
fn warn_of_many_joined_rows(settings: &RunSettings, fit_rows: u64, joined_rows: u64) {
    if let Some(message) = many_joined_rows(fit_rows, joined_rows) {
        tracing::warn!(
            rows = joined_rows,
            rows_per_group = fit_rows,
            memory_budget_bytes = settings.memory_budget_bytes,
            "{message}"
        );
    }
}

/// The warning of [`warn_of_many_joined_rows`]: only past a group's planned rows.
fn many_joined_rows(fit_rows: u64, joined_rows: u64) -> Option<String> {
    (joined_rows > fit_rows).then(|| {
        format!(
            "{joined_rows} usage and ledger rows join ids across accounts (ledger entries \
             naming another account's event, event ids used by several accounts), more than \
             the {fit_rows} rows the memory budget plans for a group: they stay in memory \
             until their groups run, so the run's peak will pass the budget; give the job \
             more memory and a larger --memory-budget"
        )
    })
}

/// The valid allocations and grants of a run, and the rejects of both datasets.
pub struct Plans {
    pub allocations: validate::Allocations,
    /// Valid grants of the accounts with allocations, by account code (input order).
    pub grants: Vec<Vec<GrantRow>>,
    pub rejects: Vec<Reject>,
    /// The rejected allocation rows whose period can be read, with their account-periods
    /// (every row validation rejected, unknown_plan or overlapping_period, and the rows the
    /// parse rejected with a readable period: [`load::read_allocation`]).
    pub rejected_periods: Vec<validate::RejectedPeriod>,
    /// Rows read: allocations, grants.
    pub rows_read: [u64; 2],
}

/// Read and validate the allocations and grants.
pub fn load_plans(inputs: &Inputs, progress: &Progress) -> Result<Plans> {
    let files = &inputs.files;
    let stage = progress.counted("load plans", (files[1].len() + files[2].len()) as u64);
    let (alloc_reads, mut rejects, alloc_read) = load::read_dataset(
        &files[1],
        &load::ALLOCATION_COLUMNS,
        &load::read_allocation,
        &|| stage.tick(),
    )?;
    let mut rejected_periods = Vec::new();
    let mut alloc_rows = Vec::with_capacity(alloc_reads.len());
    for read in alloc_reads {
        match read {
            load::AllocationRead::Valid(row) => alloc_rows.push(row),
            load::AllocationRead::RejectedIn(reject, period) => {
                rejects.push(reject);
                rejected_periods.push(period);
            }
        }
    }
    let (grant_rows, r, grant_read) =
        load::read_dataset(&files[2], &load::GRANT_COLUMNS, &load::parse_grant, &|| {
            stage.tick()
        })?;
    rejects.extend(r);
    let allocations = validate::allocations(
        alloc_rows,
        &inputs.book,
        &files[1],
        &mut rejects,
        &mut rejected_periods,
    );
    let valid_grants = validate::grants(grant_rows, &files[2], &mut rejects);
    let valid = valid_grants.len();
    let grants = grants_by_account(valid_grants, &allocations);
    stage.done(alloc_read + grant_read, (allocations.len() + valid) as u64);
    Ok(Plans {
        allocations,
        grants,
        rejects,
        rejected_periods,
        rows_read: [alloc_read, grant_read],
    })
}

/// Each account's grants (by account code; grants of accounts without allocations are
/// dropped), each holding its account's one string (`Allocations::accounts`), not the
/// copy it was read with. Each account's grants in a vector of their number: pushed one by
/// one, a vector keeps room for 4 (an account with one grant held 480 bytes of them, not
/// 120; every account of the month holds them for the whole run:
/// `benches/memory-costs.sh`).
fn grants_by_account(
    valid_grants: Vec<GrantRow>,
    allocations: &validate::Allocations,
) -> Vec<Vec<GrantRow>> {
    let codes: Vec<Option<u32>> = (valid_grants.iter())
        .map(|grant| allocations.code(&grant.account_id))
        .collect();
    let mut counts = vec![0usize; allocations.len()];
    for code in codes.iter().flatten() {
        counts[*code as usize] += 1;
    }
    let mut grants: Vec<Vec<GrantRow>> = counts.into_iter().map(Vec::with_capacity).collect();
    for (mut grant, code) in valid_grants.into_iter().zip(codes) {
        if let Some(code) = code {
            grant.account_id = allocations.accounts[code as usize].clone();
            grants[code as usize].push(grant);
        }
    }
    grants
}

/// A group's valid usage and ledger rows in (file, row) order, and their ids.
pub struct GroupRows {
    pub usage: Vec<Usage>,
    pub usage_ids: Ids,
    pub debits: Vec<Debit>,
    pub debit_ids: Ids,
}

/// Load, validate, place and process the accounts of one shard, group by group. A sum that
/// overflows outside every account-period is named as the run's totals
/// ([`TallyError::in_run_totals`]), here for every caller (a run, a shard, explain).
pub fn compute(
    settings: &RunSettings,
    inputs: &Inputs,
    layout: &Layout,
    progress: &Progress,
) -> Result<Partial> {
    compute_groups(settings, inputs, layout, progress).map_err(TallyError::in_run_totals)
}

fn compute_groups(
    settings: &RunSettings,
    inputs: &Inputs,
    layout: &Layout,
    progress: &Progress,
) -> Result<Partial> {
    let mut partial = Partial::default();
    // Allocations and grants are small: every shard reads and validates all of them;
    // shard 0 reports their rejects and counts.
    let Plans {
        allocations,
        grants,
        rejects: plan_rows_rejected,
        rejected_periods,
        rows_read: plan_rows_read,
    } = load_plans(inputs, progress)?;
    // `tally explain` shows the traced account's rejected plan rows: keep them all (rejects
    // carry no account id; explain finds the account's rows by their place).
    let plan_rejects = match settings.trace_account {
        Some(_) => plan_rows_rejected.clone(),
        None => Vec::new(),
    };
    if layout.shard == 0 {
        record_plan_rows(
            &mut partial,
            settings,
            plan_rows_rejected,
            plan_rows_read,
            &rejected_periods,
        );
    }
    let accounts_by_group =
        window::accounts_by_group(&allocations, layout.groups as usize, &|account| {
            layout.group_of_account(account)
        });
    // At most one result per account the groups process (a bucket's results are those of
    // its accounts with covered periods), gathered over the groups: room for all of them
    // at once, so that the vector is never grown (each growth copied every result so far
    // into fresh memory; the faults counted by call site: benches/README.md, "Profiles and
    // experiments (2026-12-04, morning: fresh pages)" and "Figures moved from source
    // comments (2026-12-05)").
    partial
        .results
        .reserve_exact(accounts_by_group.iter().map(Vec::len).sum());
    let builder = DictBuilder::new(allocations.accounts.iter().cloned());
    let context = Context {
        settings,
        layout,
        allocations: &allocations,
        grants: &grants,
        plan_rejects: &plan_rejects,
        accounts_by_group,
        files: &inputs.files,
        book: &inputs.book,
        scratch: None,
    };
    let may_be_late = |account: &str, t: Micros| {
        window::in_closed_period(&allocations, &settings.history, account, t)
    };
    match layout.is_split() {
        false => compute_one_group(&context, builder, &may_be_late, &mut partial, progress)?,
        true => {
            let plan_rows = plan_rows_read.iter().sum();
            compute_split(
                context,
                builder,
                &may_be_late,
                plan_rows,
                &mut partial,
                progress,
            )?
        }
    }
    if settings.trace_account.is_none() {
        warn_of_unbillable_late_events(&partial.unbillable_late);
    }
    Ok(partial)
}

/// Warn of late events no close will bill: counted outside the window, they are in no
/// output row, and finance should hear of them (an event that arrived after its period
/// was closed, of an account that does not renew, was cancelled, or whose next allocation
/// is not in the data root yet).
fn warn_of_unbillable_late_events(late: &window::UnbillableLate) {
    let Some((account, event)) = &late.first else {
        return;
    };
    let shown = |id: &str| crate::error::controls_escaped(&quoted(id));
    let events = match late.events {
        1 => "1 late event (an event of a period an earlier close closed, arrived after it) is"
            .to_string(),
        n => format!(
            "{n} late events (events of periods earlier closes closed, arrived after them) are"
        ),
    };
    tracing::warn!(
        events = late.events,
        account = account.as_str(),
        event_id = event.as_str(),
        "{events} billed by no close and in no output row (counted outside the window \
         only): a late event is billed on its account's next invoice, and the account has \
         no allocation period after the closed one in the data root that is not closed too \
         (it does not renew, was cancelled, or its allocations_next row was not added). The \
         first is event {} of account {}: add the account's next allocation, whose close \
         bills them, or bill and reconcile them by hand from the usage and ledger files",
        shown(event),
        shown(account),
    );
}

/// Whether an account's event at an instant may be a late event (it falls in a period an
/// earlier close closed).
type MayBeLate<'a> = dyn Fn(&str, Micros) -> bool + Sync + 'a;

/// Shard 0's part of the plan rows: their rejects and counts.
fn record_plan_rows(
    partial: &mut Partial,
    settings: &RunSettings,
    rejects: Vec<Reject>,
    [alloc_read, grant_read]: [u64; 2],
    rejected_periods: &[validate::RejectedPeriod],
) {
    partial.rejects = rejects;
    partial.rows_read[Dataset::Allocations as usize] = alloc_read;
    partial.rows_read[Dataset::Grants as usize] = grant_read;
    // A rejected row of a period the run would not cover had it been valid (closed long
    // ago, or not yet due) leaves nothing of this run unbilled: it is in `rejects`, but
    // the warning and `[alert] max_rejected_allocations` do not count it, or a row of a
    // month closed long ago would alert every night.
    let (mode, as_of, history) = (settings.mode, settings.as_of, &settings.history);
    partial.rejected_allocations_not_covered = (rejected_periods.iter())
        .filter(|p| {
            let (start, end) = (p.period_start, p.period_end);
            !match &p.account_id {
                Some(account_id) => window::covers(mode, as_of, history, account_id, start, end),
                // No account: judged by its period. No close can bill that period for no
                // account, so, as a named account's period no close billed, it is counted
                // by every close that covers it until the row is mended.
                None => mode.covers(start, end, as_of),
            }
        })
        .map(|p| p.at)
        .collect();
}

/// A run in one group: every usage and ledger row in memory at once.
fn compute_one_group(
    context: &Context<'_>,
    builder: DictBuilder,
    may_be_late: &MayBeLate<'_>,
    partial: &mut Partial,
    progress: &Progress,
) -> Result<()> {
    // What its stages free, the next ones reuse.
    let _kept = crate::memory::KeepFreed::start();
    let files = context.files;
    let stage = progress.counted(
        "load usage and ledger",
        (files[0].len() + files[3].len()) as u64,
    );
    let usage_source = UsageSource { dicts: &builder };
    let debit_source = DebitSource { dicts: &builder };
    // Both datasets at once: their row groups share the cores (one dataset's last row
    // groups alone would leave a core idle).
    let (usage, debits) = rayon::join(
        || rows::load(&usage_source, &files[0], &|| stage.tick()),
        || rows::load(&debit_source, &files[3], &|| stage.tick()),
    );
    let (usage, debits) = (usage?, debits?);
    stage.done(
        usage.read + debits.read,
        (usage.rows.len() + debits.rows.len()) as u64,
    );
    partial.rejects.extend(usage.rejects);
    partial.rejects.extend(debits.rejects);
    partial.rows_read[Dataset::Usage as usize] = usage.read;
    partial.rows_read[Dataset::Debits as usize] = debits.read;
    let dicts = builder.freeze();
    let history = &context.settings.history;
    let wanted = match history.closed.is_empty() {
        true => HashSet::default(),
        false => usage
            .rows
            .iter()
            .filter(|u| may_be_late(dicts.account(u.account), u.occurred_at))
            .map(|u| String::from_utf8_lossy(usage.ids.bytes(u.id)).into_owned())
            .collect(),
    };
    let billed = history.billed_among(&wanted)?;
    let rates = RateTable::new(context.book, &dicts).naming_files(&files[0]);
    let run = RunState::new(context, &dicts, &rates, &billed, Vec::new());
    let rows = GroupRows {
        usage: usage.rows,
        usage_ids: usage.ids,
        debits: debits.rows,
        debit_ids: debits.ids,
    };
    let _ = run.process_group(0, rows, partial, progress)?;
    Ok(())
}

/// A split run: find the rows whose partition an id join decides; keep the first two
/// groups' other rows in memory and spill the rest by group; then process the groups one
/// after another.
fn compute_split(
    mut context: Context<'_>,
    builder: DictBuilder,
    may_be_late: &MayBeLate<'_>,
    plan_rows: u64,
    partial: &mut Partial,
    progress: &Progress,
) -> Result<()> {
    let (settings, layout, files) = (context.settings, context.layout, context.files);
    let stage = progress.stage("route");
    let history = &settings.history;
    let late_check: Option<crate::route::LateCheck<'_>> =
        (!history.closed.is_empty()).then_some(may_be_late);
    let crate::route::LightPass {
        cross,
        late_ids: wanted,
        counts: [usage_counts, debit_counts],
    } = crate::route::find_cross_bucket(&files[0], &files[3], layout, late_check)?;
    let billed = history.billed_among(&wanted)?;
    let (cross_events, cross_entries) = cross.counts();
    stage.done(cross_events as u64, cross_entries as u64);
    // What one group may hold at the budget, for the warnings of a run past it.
    let fit_rows = crate::route::rows_per_group(
        plan_rows,
        row_costs(settings.mode),
        settings.memory_budget_bytes,
    );
    let skewed_group =
        warn_of_an_oversized_group(settings, fit_rows, layout, &usage_counts, &debit_counts);

    let spill_dir = Arc::new(spill::spill_dir()?);
    partial.scratch = Some(spill_dir.clone());
    context.scratch = Some(spill_dir.clone());
    let stage = progress.counted("load and spill", (files[0].len() + files[3].len()) as u64);
    let usage_spill = SpillFiles::create(spill_dir.path(), Dataset::Usage, layout.groups)?;
    let usage = spill::route_dataset(
        &UsageSource { dicts: &builder },
        &files[0],
        layout,
        &cross,
        &usage_counts,
        &usage_spill,
        &|| stage.tick(),
    )?;
    // Done with the usage spill's writers (and their buffers) before the ledger's.
    let usage_files = usage_spill.finish()?;
    let debit_spill = SpillFiles::create(spill_dir.path(), Dataset::Debits, layout.groups)?;
    let debits = spill::route_dataset(
        &DebitSource { dicts: &builder },
        &files[3],
        layout,
        &cross,
        &debit_counts,
        &debit_spill,
        &|| stage.tick(),
    )?;
    let debit_files = debit_spill.finish()?;
    stage.done(
        usage.grouped + debits.grouped,
        (usage.candidates.len() + debits.candidates.len()) as u64,
    );
    warn_of_many_joined_rows(
        settings,
        fit_rows,
        (usage.candidates.len() + debits.candidates.len()) as u64,
    );
    let dicts = builder.freeze();
    let partitions = account_partitions(&dicts);
    let limits = crate::model::CodeLimits::of(&dicts);
    let spilled = ready_groups(
        (usage, debits),
        (usage_files, debit_files),
        &partitions,
        limits,
        layout,
        partial,
    );
    let rates = RateTable::new(context.book, &dicts).naming_files(&files[0]);
    let mut run = RunState::new(&context, &dicts, &rates, &billed, partitions);
    run.skewed_group = skewed_group;
    process_spilled_groups(&run, spilled, partial, progress)
}

/// A split run's rows after the spill pass: the held groups' in memory, the other groups'
/// in spill files, and the candidates (rows an id join placed) by group.
struct Spilled {
    /// The held groups' rows without their candidates (as many as the run has groups, at
    /// most [`crate::route::HELD_GROUPS`]).
    held: Vec<GroupRows>,
    usage_extra: Vec<Vec<Usage>>,
    debit_extra: Vec<Vec<Debit>>,
    read_back: ReadBack,
}

/// Make what the spill pass left ready for the groups: each candidate (a row whose
/// partition an id join decides) in its group, the rejects and the rows read counted into
/// `partial`, and the read-back of the spilled groups set up.
fn ready_groups(
    (usage, debits): (Routed<Usage>, Routed<Debit>),
    (usage_files, debit_files): (Vec<SpillFile>, Vec<SpillFile>),
    partitions: &[u32],
    limits: CodeLimits,
    layout: &Layout,
    partial: &mut Partial,
) -> Spilled {
    let (usage_dest, debit_dest) = crate::route::resolve(
        &usage.candidates,
        &usage.candidate_ids,
        &debits.candidates,
        &debits.candidate_ids,
        &|account| partitions[account as usize],
    );
    let usage_extra = by_group(usage.candidates, &usage_dest, layout);
    let debit_extra = by_group(debits.candidates, &debit_dest, layout);
    partial.rejects.extend(usage.rejects);
    partial.rejects.extend(debits.rejects);
    for r in &partial.rejects {
        if matches!(r.dataset, Dataset::Usage | Dataset::Debits) {
            partial.rows_read[r.dataset as usize] += 1;
        }
    }
    partial.rows_read[Dataset::Usage as usize] +=
        usage.grouped + usage_extra.iter().map(|v| v.len() as u64).sum::<u64>();
    partial.rows_read[Dataset::Debits as usize] +=
        debits.grouped + debit_extra.iter().map(|v| v.len() as u64).sum::<u64>();
    let read_back = ReadBack::new(
        (usage_files, debit_files),
        (&usage_extra, &debit_extra),
        (usage.candidate_ids, debits.candidate_ids),
        limits,
    );
    let held = (usage.held.into_iter().zip(debits.held))
        .take(layout.groups as usize)
        .map(|(usage, debits)| GroupRows {
            usage: usage.rows,
            usage_ids: usage.ids,
            debits: debits.rows,
            debit_ids: debits.ids,
        })
        .collect();
    Spilled {
        held,
        usage_extra,
        debit_extra,
        read_back,
    }
}

/// Reads a group's rows back from its spill files, its candidates appended.
struct ReadBack {
    usage_files: Vec<SpillFile>,
    debit_files: Vec<SpillFile>,
    usage_candidate_ids: Ids,
    debit_candidate_ids: Ids,
    limits: CodeLimits,
    /// The rows of group g + 2 go into group g's vectors, sized once for the largest group.
    most_usage: usize,
    most_debits: usize,
    /// The spill files' bytes go into one buffer, reused file after file, sized once for
    /// the largest.
    most_bytes: usize,
}

impl ReadBack {
    fn new(
        (usage_files, debit_files): (Vec<SpillFile>, Vec<SpillFile>),
        (usage_extra, debit_extra): (&[Vec<Usage>], &[Vec<Debit>]),
        (usage_candidate_ids, debit_candidate_ids): (Ids, Ids),
        limits: CodeLimits,
    ) -> ReadBack {
        ReadBack {
            most_usage: most_rows(&usage_files, usage_extra),
            most_debits: most_rows(&debit_files, debit_extra),
            most_bytes: (usage_files.iter().chain(&debit_files))
                .map(|f| usize::try_from(f.bytes).expect("a spill file fits in memory"))
                .max()
                .unwrap_or(0),
            usage_files,
            debit_files,
            usage_candidate_ids,
            debit_candidate_ids,
            limits,
        }
    }

    /// Group `group`'s rows, read into `buffers` and through `bytes` when given (a
    /// previous group's, to reuse), and how long that took.
    fn read(
        &self,
        group: usize,
        (u_extra, d_extra): (Vec<Usage>, Vec<Debit>),
        buffers: Option<(Vec<Usage>, Vec<Debit>)>,
        bytes: Option<AlignedBuf>,
    ) -> Result<(GroupRows, AlignedBuf, std::time::Duration)> {
        let started = std::time::Instant::now();
        let (usage_buffer, debit_buffer) = buffers.unwrap_or_else(|| {
            (
                Vec::with_capacity(self.most_usage),
                Vec::with_capacity(self.most_debits),
            )
        });
        let mut bytes = bytes.unwrap_or_else(|| AlignedBuf::new(self.most_bytes));
        let (usage, usage_ids) = spill::read_group(
            &self.usage_files[group],
            u_extra,
            &self.usage_candidate_ids,
            &self.limits,
            usage_buffer,
            &mut bytes,
        )?;
        let (debits, debit_ids) = spill::read_group(
            &self.debit_files[group],
            d_extra,
            &self.debit_candidate_ids,
            &self.limits,
            debit_buffer,
            &mut bytes,
        )?;
        let rows = GroupRows {
            usage,
            usage_ids,
            debits,
            debit_ids,
        };
        Ok((rows, bytes, started.elapsed()))
    }

    /// A held group's rows (kept in memory by the spill pass) with its candidates
    /// appended.
    fn with_candidates(
        &self,
        mut rows: GroupRows,
        (u_extra, d_extra): (Vec<Usage>, Vec<Debit>),
    ) -> GroupRows {
        let GroupRows {
            usage,
            usage_ids,
            debits,
            debit_ids,
        } = &mut rows;
        // Nothing else runs now: both datasets at once.
        rayon::join(
            || append_candidates(usage, usage_ids, u_extra, &self.usage_candidate_ids),
            || append_candidates(debits, debit_ids, d_extra, &self.debit_candidate_ids),
        );
        rows
    }
}

/// Process a split run's groups one after another, reading group g + 1 back while group g
/// is processed when it was spilled (a held group's rows are in memory already).
fn process_spilled_groups(
    run: &RunState<'_>,
    spilled: Spilled,
    partial: &mut Partial,
    progress: &Progress,
) -> Result<()> {
    let Spilled {
        held,
        usage_extra,
        debit_extra,
        read_back,
    } = spilled;
    // The held groups' rows are in memory (the spill pass kept them); read a spilled group
    // g + 1 back while group g is processed: processing leaves a core idle in its sequential
    // steps (placing events, collecting results) and reading the spill fills it. The
    // read-back runs on a thread of its own, not on a worker of the pool: its unbuffered
    // reads wait on the disk, and a worker waiting there is a core lost to processing (a
    // 20M-event reconcile's groups then fell short of two cores: benches/README.md,
    // "Profiles and experiments (2026-12-04, night: the read-back's own thread, spill ids
    // as they are, CSVs in pieces)"; its frames are still decoded by the pool). At most
    // two groups' rows are in memory at once, the group processed and the next one, held or
    // read back (`route::groups_for` sizes groups for that). The read-back draws no bar and
    // its stage line is logged after the group's stages (see `progress::log_stage`).
    //
    // Freed memory goes back to the OS after the purge delay here (3 s, no `KeepFreed`): a
    // group's buffers are mostly reused by the next group within it, and never returning
    // them let the allocator's holdings grow group after group (a higher peak at 100M events
    // than with a 1 s delay; measured: benches/README.md, "Figures moved from source
    // comments (2026-12-05)").
    crate::memory::hand_back_freed();
    let groups = run.context.layout.groups as usize;
    let mut extras = usage_extra.into_iter().zip(debit_extra);
    let mut held = held.into_iter();
    let mut next = None;
    let mut spare = None;
    let mut spare_bytes = None;
    // The read-back thread asks the pool to decode its frames while this thread waits for
    // it: were this a worker of the pool, a pool of one worker would never decode them.
    assert!(
        rayon::current_thread_index().is_none(),
        "a split run's groups are driven from outside the thread pool"
    );
    for group in 0..groups {
        // A held group's candidates are appended now, with nothing else running.
        let rows = match held.next() {
            Some(rows) => {
                let candidates = extras.next().expect("each group has its candidates");
                assert!(next.is_none(), "a held group is not read back");
                read_back.with_candidates(rows, candidates)
            }
            None => next
                .take()
                .expect("a spilled group's rows are read before it is processed"),
        };
        // The next group's candidates when it was spilled: it is read back meanwhile.
        let following = match held.len() {
            0 => extras.next(),
            _ => None,
        };
        // A group with no spilled group after it keeps no spare vectors (nor the read
        // buffer): they are freed now, not kept through the group (where a split run peaks).
        let buffers = spare.take().filter(|_| following.is_some());
        let bytes = spare_bytes.take().filter(|_| following.is_some());
        let (processed, read) = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                following
                    .map(|e| read_back.read(group + 1, e, buffers, bytes))
                    .transpose()
            });
            let processed = run.process_group(group, rows, partial, progress);
            let read = reader
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (processed, read)
        });
        spare = Some(processed?);
        next = read?.map(|(rows, bytes, took)| {
            spare_bytes = Some(bytes);
            let count = (rows.usage.len() + rows.debits.len()) as u64;
            crate::progress::log_stage("read spill", count, count, took);
            rows
        });
    }
    assert!(
        next.is_none() && extras.next().is_none() && held.next().is_none(),
        "every group is processed once"
    );
    Ok(())
}

/// The partition of every account code of a run.
fn account_partitions(dicts: &Dicts) -> Vec<u32> {
    dicts
        .accounts
        .par_iter()
        .map(|a| crate::route::partition_of(a))
        .collect()
}

/// The most rows a group of one dataset has: its spilled rows and its candidates.
fn most_rows<R>(files: &[spill::SpillFile], candidates: &[Vec<R>]) -> usize {
    files
        .iter()
        .zip(candidates)
        .map(|(file, extra)| file.rows as usize + extra.len())
        .max()
        .unwrap_or(0)
}

/// This shard's candidates by group, from their destination partitions.
fn by_group<T>(rows: Vec<T>, partitions: &[u32], layout: &Layout) -> Vec<Vec<T>> {
    let mut groups: Vec<Vec<T>> = (0..layout.groups).map(|_| Vec::new()).collect();
    for (row, &partition) in rows.into_iter().zip(partitions) {
        if layout.owns(partition) {
            groups[layout.group_of(partition)].push(row);
        }
    }
    groups
}

/// Add a group's candidates (their ids in `from`) to its rows, which are in (file, row)
/// order, keeping the order. The candidates' ids become a chunk of the group's.
fn append_candidates<R: CompactRow>(rows: &mut Vec<R>, ids: &mut Ids, extra: Vec<R>, from: &Ids) {
    if extra.is_empty() {
        return;
    }
    let (extra, chunks) = spill::candidates_of(extra, from, ids.len() as u32);
    for chunk in chunks {
        ids.push(chunk);
    }
    merge_in(rows, &extra);
}

/// Merge `extra` into `rows`, both in (file, row) order and no place in both, in place:
/// each row of `rows` is moved at most once, in blocks, and nothing else is allocated (a
/// stable sort of the appended rows, what this replaced, took a scratch buffer of half a
/// group's rows, fresh memory that the kernel zeroes, for every group and dataset).
fn merge_in<R: CompactRow>(rows: &mut Vec<R>, extra: &[R]) {
    let mut unplaced = rows.len();
    rows.extend_from_slice(extra);
    for (k, item) in extra.iter().enumerate().rev() {
        // Rows from `at` to `unplaced` come after `item` and before the later extra rows,
        // already placed: they move up by the extra rows from `item` on.
        let at = rows[..unplaced].partition_point(|r| r.at() < item.at());
        rows.copy_within(at..unplaced, at + k + 1);
        rows[at + k] = *item;
        unplaced = at;
    }
    assert!(
        rows.windows(2).all(|w| w[0].at() < w[1].at()),
        "a group's rows are in strict (file, row) order once its candidates are merged in"
    );
}

/// What every group of a run shares.
struct Context<'a> {
    settings: &'a RunSettings,
    layout: &'a Layout,
    allocations: &'a validate::Allocations,
    grants: &'a [Vec<GrantRow>],
    /// Every allocation and grant reject (kept only for `RunSettings::trace_account`).
    plan_rejects: &'a [Reject],
    /// The codes of the accounts with valid allocations of each of this shard's groups.
    accounts_by_group: Vec<Vec<u32>>,
    files: &'a [Vec<InputFile>; 4],
    book: &'a PriceBook,
    /// Where a split run writes its billed-event runs (None: a whole run keeps them).
    scratch: Option<Arc<spill::SpillDir>>,
}

/// What every group shares once the input is decoded: the run's codes and rates.
struct RunState<'a> {
    context: &'a Context<'a>,
    dicts: &'a Dicts,
    ctx: RunContext<'a>,
    /// Events earlier closes billed, among those this run may find late.
    billed: &'a HashSet<String, crate::validate::FastHash>,
    /// The partition of every account code (empty for a run in one group).
    partitions: Vec<u32>,
    /// The group the light pass found far past the budget by its accounts' size, which
    /// names its largest account when it runs.
    skewed_group: Option<usize>,
}

impl<'a> RunState<'a> {
    fn new(
        context: &'a Context<'a>,
        dicts: &'a Dicts,
        rates: &'a RateTable,
        billed: &'a HashSet<String, crate::validate::FastHash>,
        partitions: Vec<u32>,
    ) -> RunState<'a> {
        let settings = context.settings;
        RunState {
            context,
            dicts,
            ctx: RunContext {
                book: context.book,
                rates,
                dicts,
                mode: settings.mode,
                settle_from: settings.as_of.saturating_sub(settings.settle_micros),
            },
            billed,
            partitions,
            skewed_group: None,
        }
    }

    /// Whether group `group` of this shard processes an account (by code).
    fn owns(&self, group: usize, account: u32) -> bool {
        let layout = self.context.layout;
        if !layout.is_split() {
            return true;
        }
        let partition = self.partitions[account as usize];
        layout.owns(partition) && layout.group_of(partition) == group
    }

    /// Validate, place and process the usage and ledger rows of one group (rows in
    /// (file, row) order). Returns the group's row vectors, emptied, for a later group.
    fn process_group(
        &self,
        group: usize,
        rows: GroupRows,
        partial: &mut Partial,
        progress: &Progress,
    ) -> Result<(Vec<Usage>, Vec<Debit>)> {
        let context = self.context;
        let layout = context.layout;
        let settings = context.settings;
        if layout.groups > 1 {
            tracing::info!(group = group + 1, groups = layout.groups, "group");
        }
        let rows_in = (rows.usage.len() + rows.debits.len()) as u64;
        if self.skewed_group == Some(group) {
            warn_of_the_largest_account(group, (&rows.usage, &rows.debits), self.dicts);
        }
        let GroupRows {
            mut usage,
            usage_ids,
            mut debits,
            debit_ids,
        } = rows;
        let (deduped, seen) = self.validate_group(
            (&mut usage, &usage_ids),
            (&mut debits, &debit_ids),
            rows_in,
            partial,
            progress,
        );

        let stage = progress.stage("join ledger to events");
        let owns_here = |account: u32| self.owns(group, account);
        let work = window::Group::new(
            window::RunWindow {
                mode: settings.mode,
                as_of: settings.as_of,
                history: &settings.history,
                billed: self.billed,
                seen: &seen,
                owns: &owns_here,
                dicts: self.dicts,
            },
            context.allocations,
            context.grants,
            &context.accounts_by_group[group],
            (&usage, &usage_ids),
            (&debits, &debit_ids),
            &deduped.index,
            (settings.buckets != AUTOMATIC_BUCKETS).then_some(settings.buckets as usize),
        );
        drop(deduped);
        let bucket_rows = work.bucket_rows();
        stage.done(debits.len() as u64, (work.buckets() + 1) as u64);
        // The group's results go straight into the run's (reserved for every account).
        let first_result = partial.results.len();
        self.process_buckets(group, &work, &bucket_rows, rows_in, partial, progress)?;
        if let Some(account) = &settings.trace_account {
            if partial.traced.is_none() && self.owns_account(group, account) {
                partial.traced = Some(self.untraced(account));
            }
        }
        drop(work);
        if settings.mode == Mode::Close {
            let stage = progress.stage("billed events and invoice lines");
            let (billed, lines) = close_runs(
                context.scratch.as_deref().map(spill::SpillDir::path),
                group,
                &mut partial.results[first_result..],
            )?;
            stage.done(billed.rows(), lines.rows());
            partial.billed.push(billed);
            partial.lines.push(lines);
        }
        usage.clear();
        debits.clear();
        Ok((usage, debits))
    }

    /// Validate a group's rows: repeated entry ids, and usage dedup (its index is what the
    /// ledger join looks events up in). Also returns, with --history, the events an
    /// earlier close saw that dedup has just moved (`rows_in`: the rows, for the stage log).
    fn validate_group(
        &self,
        (usage, usage_ids): (&mut [Usage], &Ids),
        (debits, debit_ids): (&mut [Debit], &Ids),
        rows_in: u64,
        partial: &mut Partial,
        progress: &Progress,
    ) -> (validate::Deduped, HashSet<String, validate::FastHash>) {
        let stage = progress.stage("validate");
        let (mut debit_rejects, mut usage_rejects) = (Vec::new(), Vec::new());
        let files = &self.context.files;
        let (entries, deduped) = rayon::join(
            || validate::debits(debits, debit_ids, &files[3], &mut debit_rejects),
            || validate::dedup_usage(usage, usage_ids, self.dicts, &files[0], &mut usage_rejects),
        );
        partial.rejects.extend(debit_rejects);
        partial.rejects.extend(usage_rejects);
        partial.identical_duplicates += deduped.identical_copies;
        let seen = window::seen_in_closed_periods(
            usage,
            usage_ids,
            self.dicts,
            self.context.allocations,
            &self.context.settings.history,
            self.billed,
        );
        stage.done(rows_in, (deduped.events + entries) as u64);
        (deduped, seen)
    }

    /// Place and process a group's buckets in parallel, gathering their results, rejects
    /// and counts into `partial` in bucket order.
    fn process_buckets(
        &self,
        group: usize,
        work: &window::Group<'_>,
        bucket_rows: &window::BucketRows,
        rows_in: u64,
        partial: &mut Partial,
        progress: &Progress,
    ) -> Result<()> {
        let buckets = work.buckets() + 1;
        let trace_account = self.context.settings.trace_account.as_deref();
        let stage = progress.counted("window, price, consume, reconcile", buckets as u64);
        let done: Vec<Result<BucketDone>> = (0..buckets)
            .into_par_iter()
            .map(|b| {
                let placed = work.place(
                    b,
                    bucket_rows.usage.partition(b),
                    bucket_rows.debits.partition(b),
                    &bucket_rows.local_of_row,
                );
                let done = self.process_bucket(placed, trace_account);
                stage.tick();
                done
            })
            .collect();
        let mut discrepancy_rows = 0usize;
        let mut outside = window::Outside::default();
        for bucket in done {
            let bucket = bucket?;
            outside.add(&bucket.outside);
            partial.rejects.extend(bucket.rejects);
            discrepancy_rows += bucket
                .results
                .iter()
                .map(|(_, r)| r.discrepancies.len())
                .sum::<usize>();
            partial.results.extend(bucket.results);
            partial.mix.merge(bucket.mix)?;
            if let Some(traced) = bucket.traced {
                partial.traced = Some(traced);
            }
        }
        stage.done(rows_in, discrepancy_rows as u64);
        if outside.misrouted > 0 {
            return Err(TallyError::Invariant(format!(
                "{} events or entries reached group {group} of shard {} but belong to another",
                outside.misrouted, self.context.layout.shard
            )));
        }
        partial.outside_usage += outside.usage_rows;
        partial.outside_entries += outside.ledger_entries;
        partial.unbillable_late.add(&outside.unbillable_late);
        Ok(())
    }

    /// Process a placed bucket's accounts one after another (`trace`: the account
    /// `tally explain` asks about, traced if it is one of them).
    fn process_bucket(
        &self,
        placed: window::Placed<'_>,
        trace: Option<&str>,
    ) -> Result<BucketDone> {
        let work = &placed.work;
        let mut mix = crate::breakdown::SkuMix::default();
        let mut results = Vec::with_capacity(work.accounts.len());
        let mut traced = None;
        for account in &work.accounts {
            let id = self.dicts.account(account.account);
            let mut r = match trace {
                Some(t) if t == &**id => {
                    let mut periods = Vec::new();
                    let r =
                        process_account(&self.ctx, work, account, &mut mix, Some(&mut periods))?;
                    let mut t = self.untraced(id);
                    t.result = Some(r.clone());
                    t.periods = periods;
                    traced = Some(t);
                    r
                }
                _ => process_account(&self.ctx, work, account, &mut mix, None)?,
            };
            r.shrink();
            results.push((id.clone(), r));
        }
        Ok(BucketDone {
            results,
            mix: mix.finish(self.dicts)?,
            rejects: placed.rejects,
            outside: placed.outside,
            traced,
        })
    }

    /// Whether group `group` processes the account `account_id`.
    fn owns_account(&self, group: usize, account_id: &str) -> bool {
        match self.context.allocations.code(account_id) {
            Some(code) => self.owns(group, code),
            None => self.context.layout.group_of_account(account_id) == Some(group),
        }
    }

    /// The traced account's plan rows, before the engine's part.
    fn untraced(&self, account: &str) -> Traced {
        let context = self.context;
        let code = context.allocations.code(account);
        Traced {
            plan_rejects: context.plan_rejects.to_vec(),
            allocations: context
                .allocations
                .get(account)
                .cloned()
                .unwrap_or_default(),
            grants: code
                .map(|c| context.grants[c as usize].clone())
                .unwrap_or_default(),
            result: None,
            periods: Vec::new(),
        }
    }
}

/// What processing one bucket gives.
struct BucketDone {
    results: Vec<(Shared, AccountResult)>,
    mix: crate::breakdown::Mix,
    rejects: Vec<Reject>,
    outside: window::Outside,
    traced: Option<Traced>,
}

/// Take the group's billed events and invoice lines out of its results, in account
/// order: kept in memory for a whole run, written to run files for a split one (straight
/// from each account's rows: a copy of the group's billed events into one vector first
/// was a few hundred MB of fresh memory a group).
fn close_runs(
    scratch: Option<&Path>,
    group: usize,
    results: &mut [(Shared, AccountResult)],
) -> Result<(BilledRun, LineRun)> {
    results.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let runs = match scratch {
        None => {
            // Each account's rows moved, not copied (see `Run::Memory`).
            let billed = results
                .iter_mut()
                .map(|(_, r)| std::mem::take(&mut r.billed_events))
                .collect();
            let lines = results
                .iter_mut()
                .map(|(account, r)| {
                    let account_id = account.clone();
                    let lines = std::mem::take(&mut r.invoice_lines).into_iter();
                    lines
                        .map(|line| AccountLine {
                            account_id: account_id.clone(),
                            line,
                        })
                        .collect()
                })
                .collect();
            (Run::Memory(billed), Run::Memory(lines))
        }
        Some(dir) => {
            let written: &[(Shared, AccountResult)] = results;
            // Two files: one core each (the next group's read-back is beside this).
            let (billed, lines) = rayon::join(
                || {
                    crate::runs::write_run(
                        &dir.join(format!("billed-{group}.bin")),
                        written.iter().flat_map(|(_, r)| &r.billed_events),
                    )
                },
                || {
                    crate::runs::write_run(
                        &dir.join(format!("lines-{group}.bin")),
                        written.iter().flat_map(|(account, r)| {
                            r.invoice_lines.iter().map(|line| AccountLineRef {
                                account_id: account,
                                line,
                            })
                        }),
                    )
                },
            );
            // Written: the accounts' rows are freed now, not kept with their results.
            for (_, r) in results.iter_mut() {
                r.billed_events = ThinVec::new();
                r.invoice_lines = ThinVec::new();
            }
            (billed?, lines?)
        }
    };
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::At;
    use proptest::prelude::*;

    /// The largest account is the one with the most usage and ledger rows; of equal
    /// counts the least id, also when its code is the greater (an account without
    /// allocations, coded after the plans' accounts).
    #[test]
    fn the_largest_account_is_the_most_rows_then_the_least_id() {
        let builder = DictBuilder::new(["b", "c"].into_iter());
        let a = builder.accounts.code("a");
        let dicts = builder.freeze();
        let (b, c) = (0, 1);
        assert!(a > c);
        let usage_of = |accounts: &[u32]| -> Vec<Usage> {
            (accounts.iter())
                .map(|&account| Usage {
                    account,
                    ..bytemuck::Zeroable::zeroed()
                })
                .collect()
        };
        let debit_of = |accounts: &[u32]| -> Vec<Debit> {
            (accounts.iter())
                .map(|&account| Debit {
                    account,
                    ..bytemuck::Zeroable::zeroed()
                })
                .collect()
        };
        // c: 3 rows (usage and ledger together) against b's and a's 2.
        let (usage, debits) = (usage_of(&[c, b, a, c]), debit_of(&[a, b, c]));
        assert_eq!(largest_account((&usage, &debits), &dicts), Some((c, 3)));
        // a and b tie at 2: a, the least id, though b's code is the less.
        let (usage, debits) = (usage_of(&[b, a, c]), debit_of(&[a, b]));
        assert_eq!(largest_account((&usage, &debits), &dicts), Some((a, 2)));
        assert_eq!(largest_account((&[], &[]), &dicts), None);
    }

    /// Sizes in warnings: bytes below a tenth of a MiB, then MiB to a tenth.
    #[test]
    fn sizes_are_said_in_bytes_below_a_tenth_of_a_mib() {
        assert_eq!(size_in_words(7_200), "7200 bytes");
        assert_eq!(size_in_words(104_856), "104856 bytes");
        assert_eq!(size_in_words(104_857), "0.1 MiB");
        assert_eq!(size_in_words(1_153_434), "1.1 MiB");
        assert_eq!(size_in_words(u64::MAX), "1759218604441.5 MiB");
    }

    /// Rows joined across accounts as many as a group's planned rows pass; one more warns.
    #[test]
    fn joined_rows_warn_one_past_a_groups_planned_rows() {
        assert_eq!(many_joined_rows(1_000, 1_000), None);
        assert_eq!(many_joined_rows(1_000, 0), None);
        let warned = many_joined_rows(1_000, 1_001).unwrap();
        assert!(
            warned.starts_with(
                "1001 usage and ledger rows join ids across accounts (ledger entries naming \
                 another account's event, event ids used by several accounts), more than the \
                 1000 rows the memory budget plans for a group"
            ),
            "{warned}"
        );
    }

    fn usage_at(places: &[u64]) -> Vec<Usage> {
        places
            .iter()
            .map(|&p| Usage {
                at: At(p),
                ..bytemuck::Zeroable::zeroed()
            })
            .collect()
    }

    fn places(rows: &[Usage]) -> Vec<u64> {
        rows.iter().map(|r| r.at.0).collect()
    }

    /// The run loads the files of its census's listing, which the manifest lists: a usage
    /// file added after the census is not loaded (its rows are not read); a census taken
    /// after it lists and loads it.
    #[test]
    fn a_run_loads_the_files_its_census_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        crate::generate::small_root(&root);
        let settings = RunSettings {
            data: root.clone(),
            mode: Mode::Reconcile,
            as_of: crate::time::parse_instant("2026-11-20T00:00:00Z").unwrap(),
            settle_micros: crate::run::DEFAULT_SETTLE_MICROS,
            buckets: AUTOMATIC_BUCKETS,
            groups: None,
            memory_budget_bytes: crate::run::DEFAULT_MEMORY_BUDGET_BYTES,
            history: Default::default(),
            trace_account: None,
        };
        let quiet = Progress { interactive: false };
        let usage_rows = |census: &Census| census.rows(&[Dataset::Usage]);
        let usage_read = |output: &RunOutput| {
            let counts = &output.counts[Dataset::Usage as usize];
            (counts.files, counts.rows_read)
        };

        let reading = || {
            let book = root.join("pricebook.toml");
            crate::pricebook::PriceBook::read(&book, "pricebook.toml").unwrap()
        };
        let census = Census::take(&root).unwrap().with_pricebook(reading());
        let usage = census.files[Dataset::Usage as usize].as_ref().unwrap();
        let (files, rows) = (usage.len() as u64, usage_rows(&census));
        let late = root.join("usage/late-arrival.parquet");
        std::fs::copy(&usage[0].file.abs_path, &late).unwrap();
        let output = run(settings.clone(), &census, &quiet).unwrap();
        assert_eq!(usage_read(&output), (files, rows));

        let again = Census::take(&root).unwrap().with_pricebook(reading());
        let added = again
            .all()
            .filter(|listed| listed.file.abs_path == late)
            .count();
        assert_eq!(added, 1);
        let output = run(settings, &again, &quiet).unwrap();
        assert_eq!(usage_read(&output), (files + 1, usage_rows(&again)));
        assert!(usage_rows(&again) > rows);
    }

    /// The plans of `generate::small_root`, loaded as a run loads them.
    fn small_root_plans() -> Plans {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        crate::generate::small_root(&root);
        let inputs = crate::census::inputs(&root).unwrap();
        load_plans(&inputs, &Progress { interactive: false }).unwrap()
    }

    /// Every account's grants are held in a vector of their number, for the whole run (a
    /// vector grown by `push` keeps room for 4 rows).
    #[test]
    fn each_accounts_grants_take_no_spare_room() {
        let plans = small_root_plans();
        let held: usize = plans.grants.iter().map(Vec::len).sum();
        assert!(held > 0 && plans.grants.iter().any(|g| g.len() == 1));
        for grants in &plans.grants {
            assert_eq!(grants.capacity(), grants.len());
        }
    }

    /// One string for an account's id, held by its allocation rows, its grants, the
    /// validated allocations' account list and the run's dictionary; one for a plan's id,
    /// held by its allocations and the price book (`Arc::ptr_eq`: each row was read with
    /// its own copy).
    #[test]
    fn an_accounts_rows_and_the_dictionary_share_one_string_and_a_plans_rows_one() {
        let plans = small_root_plans();
        let accounts = &plans.allocations.accounts;
        let dicts = DictBuilder::new(accounts.iter().cloned()).freeze();
        let mut plan_ids: HashMap<&str, &Shared> = HashMap::new();
        let (mut allocation_rows, mut grant_rows) = (0, 0);
        for (code, account) in accounts.iter().enumerate() {
            assert!(Arc::ptr_eq(dicts.account(code as u32), account));
            for allocation in plans.allocations.of(code as u32) {
                assert!(Arc::ptr_eq(&allocation.account_id, account));
                let plan = *plan_ids
                    .entry(&allocation.plan_id)
                    .or_insert(&allocation.plan_id);
                assert!(Arc::ptr_eq(&allocation.plan_id, plan));
                allocation_rows += 1;
            }
            for grant in &plans.grants[code] {
                assert!(Arc::ptr_eq(&grant.account_id, account));
                grant_rows += 1;
            }
        }
        // Rows enough that a copy would show (one allocation an account here: an
        // account's several allocations are `validate`'s unit test).
        assert!(allocation_rows > plan_ids.len() && grant_rows > 0);
    }

    #[test]
    fn merge_in_places_rows_before_between_and_after() {
        let mut rows = usage_at(&[10, 20, 30]);
        merge_in(&mut rows, &usage_at(&[5, 15, 16, 40]));
        assert_eq!(places(&rows), [5, 10, 15, 16, 20, 30, 40]);
        let mut empty = Vec::new();
        merge_in(&mut empty, &usage_at(&[1, 2]));
        assert_eq!(places(&empty), [1, 2]);
    }

    #[test]
    #[should_panic(expected = "strict (file, row) order")]
    fn merge_in_refuses_a_place_in_both() {
        let mut rows = usage_at(&[10, 20]);
        merge_in(&mut rows, &usage_at(&[20]));
    }

    proptest! {
        /// Merging equals sorting the union (what the stable sort it replaced did).
        #[test]
        fn merge_in_is_a_sort_of_the_union(
            all in proptest::collection::btree_set(0u64..10_000, 0..400),
            picks in proptest::collection::vec(any::<bool>(), 400),
        ) {
            let (mut rows, mut extra) = (Vec::new(), Vec::new());
            for (&place, &pick) in all.iter().zip(&picks) {
                match pick {
                    true => extra.push(place),
                    false => rows.push(place),
                }
            }
            let mut merged = usage_at(&rows);
            merge_in(&mut merged, &usage_at(&extra));
            prop_assert_eq!(places(&merged), all.into_iter().collect::<Vec<_>>());
        }
    }
}
