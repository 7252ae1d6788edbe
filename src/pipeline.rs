//! The whole run, data flowing one way: load → validate → place in window → (per account,
//! in parallel by bucket) price → consume → reconcile → close → collect. Writing is `write`.

use crate::close::{InvoiceLineRow, InvoiceRow, RenewalRow};
use crate::engine::{
    process_account, AccountResult, BalanceRow, BilledEventRow, RunContext, Totals,
};
use crate::error::{Result, TallyError};
use crate::load::{self, InputFile};
use crate::model::*;
use crate::pricebook::PriceBook;
use crate::reconcile::DiscrepancyRow;
use crate::time::Micros;
use crate::window::{self, AccountWork};
use crate::{validate, Progress};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Default number of account buckets. Work is grouped by `hash(account_id) mod buckets`;
/// a bucket is the unit of parallel work (and later of sharding).
pub const DEFAULT_BUCKETS: u32 = 64;

#[derive(Clone, Debug)]
pub struct RunSettings {
    pub data: PathBuf,
    pub mode: Mode,
    pub as_of: Micros,
    pub settle_micros: i64,
    pub buckets: u32,
    /// Earlier closes (their closed periods and billed events); empty without `--history`.
    pub history: std::sync::Arc<crate::history::History>,
}

/// The bucket of an account: a stable hash (xxh3, seed 0) of its id, modulo `buckets`.
pub fn bucket_of(account_id: &str, buckets: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(account_id.as_bytes()) % u64::from(buckets.max(1))) as u32
}

/// Per-dataset row counts for the conservation check.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DatasetCounts {
    pub files: u64,
    pub rows_read: u64,
    pub rejected: u64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct UsageCounts {
    pub rows_read: u64,
    pub events_in_window: u64,
    pub identical_duplicates: u64,
    pub rejected: u64,
    pub outside_window: u64,
}

/// Everything a run computed, in output order, ready to be written.
pub struct RunOutput {
    pub settings: RunSettings,
    pub book: PriceBook,
    /// Input files of each dataset (index = `Dataset as usize`).
    pub files: [Vec<InputFile>; 4],
    pub pricebook_path: PathBuf,
    pub counts: [DatasetCounts; 4],
    pub usage: UsageCounts,
    pub ledger_entries_outside: u64,
    pub discrepancies: Vec<DiscrepancyRow>,
    pub rejects: Vec<Reject>,
    pub balances: Vec<BalanceRow>,
    pub invoices: Vec<InvoiceRow>,
    pub invoice_lines: Vec<InvoiceLineRow>,
    pub renewals: Vec<RenewalRow>,
    pub allocations_next: Vec<AllocationRow>,
    pub grants_next: Vec<GrantRow>,
    pub billed_events: Vec<BilledEventRow>,
    pub totals: Totals,
}

fn dataset_files(root: &Path, dataset: Dataset, required: bool) -> Result<Vec<InputFile>> {
    match load::find_files(root, dataset.name())? {
        Some(files) => Ok(files),
        None if !required => Ok(Vec::new()),
        None => Err(TallyError::input(
            root.join(dataset.name()).display().to_string(),
            format!(
                "missing dataset folder `{}/` (it may be empty, but must exist)",
                dataset.name()
            ),
        )),
    }
}

pub fn run(settings: RunSettings, progress: &Progress) -> Result<RunOutput> {
    let root = &settings.data;
    if !root.is_dir() {
        return Err(TallyError::config(
            root.display().to_string(),
            "data root is not a folder",
        ));
    }
    let pricebook_path = root.join("pricebook.toml");
    let book = PriceBook::load(&pricebook_path, &pricebook_path.display().to_string())?;
    let files = [
        dataset_files(root, Dataset::Usage, true)?,
        dataset_files(root, Dataset::Allocations, true)?,
        dataset_files(root, Dataset::Grants, false)?,
        dataset_files(root, Dataset::Debits, true)?,
    ];

    let file_count = files.iter().map(|f| f.len() as u64).sum();
    let stage = progress.counted("load", file_count);
    let (usage_rows, mut rejects, usage_read) =
        load::read_dataset(&files[0], &load::USAGE_COLUMNS, &load::parse_usage, &|| {
            stage.tick()
        })?;
    let (alloc_rows, r, alloc_read) = load::read_dataset(
        &files[1],
        &load::ALLOCATION_COLUMNS,
        &load::parse_allocation,
        &|| stage.tick(),
    )?;
    rejects.extend(r);
    let (grant_rows, r, grant_read) =
        load::read_dataset(&files[2], &load::GRANT_COLUMNS, &load::parse_grant, &|| {
            stage.tick()
        })?;
    rejects.extend(r);
    let (debit_rows, r, debit_read) =
        load::read_dataset(&files[3], &load::DEBIT_COLUMNS, &load::parse_debit, &|| {
            stage.tick()
        })?;
    rejects.extend(r);
    let rows_read = usage_read + alloc_read + grant_read + debit_read;
    let rows_parsed =
        (usage_rows.len() + alloc_rows.len() + grant_rows.len() + debit_rows.len()) as u64;
    stage.done(rows_read, rows_parsed);

    let stage = progress.stage("validate");
    let allocations = validate::allocations(alloc_rows, &book, &files[1], &mut rejects);
    let grants = validate::grants(grant_rows, &files[2], &mut rejects);
    let debits = validate::debits(debit_rows, &files[3], &mut rejects);
    let deduped = validate::dedup_usage(usage_rows, &files[0], &mut rejects);
    let identical = deduped.identical_copies;
    let kept = allocations.values().map(|a| a.len()).sum::<usize>() + grants.len() + debits.len();
    stage.done(rows_parsed, (kept + deduped.events.len()) as u64);
    let stage = progress.stage("window");
    let events_total = deduped.events.len() as u64;
    let (accounts, outside) = window::place(
        window::RunWindow {
            mode: settings.mode,
            as_of: settings.as_of,
            history: &settings.history,
        },
        &allocations,
        deduped,
        debits,
        grants,
        &mut rejects,
    );
    let in_window: u64 = accounts
        .iter()
        .flat_map(|a| &a.periods)
        .map(|p| p.events.len() as u64)
        .sum();
    stage.done(events_total, in_window);

    let stage = progress.counted(
        "price, consume, reconcile",
        u64::from(settings.buckets.max(1)),
    );
    let ctx = RunContext {
        book: &book,
        mode: settings.mode,
        settle_from: settings.as_of.saturating_sub(settings.settle_micros),
    };
    let mut results = process_buckets(&ctx, accounts, settings.buckets, &stage)?;
    let discrepancy_rows: usize = results.iter().map(|(_, r)| r.discrepancies.len()).sum();
    stage.done(in_window, discrepancy_rows as u64);

    // Collect in output order: accounts by id (bytes), periods already in order.
    results.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = AccountResult::default();
    for (_, result) in results {
        out.absorb(result)?;
    }
    out.discrepancies
        .sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    rejects.sort_by_key(|r| (r.dataset, r.at));

    let mut counts: [DatasetCounts; 4] = Default::default();
    for (i, read) in [usage_read, alloc_read, grant_read, debit_read]
        .into_iter()
        .enumerate()
    {
        counts[i].files = files[i].len() as u64;
        counts[i].rows_read = read;
    }
    for r in &rejects {
        counts[r.dataset as usize].rejected += 1;
    }
    let usage = UsageCounts {
        rows_read: usage_read,
        events_in_window: out.totals.events_in_window,
        identical_duplicates: identical,
        rejected: counts[0].rejected,
        outside_window: outside.usage_rows,
    };
    if settings.mode == Mode::Close {
        check_one_invoice_and_renewal_per_period(&out)?;
    }
    let accounted =
        usage.events_in_window + usage.identical_duplicates + usage.rejected + usage.outside_window;
    if accounted != usage.rows_read {
        return Err(TallyError::Invariant(format!(
            "usage rows read {} ≠ in window {} + identical duplicates {} + rejected {} + outside {}",
            usage.rows_read,
            usage.events_in_window,
            usage.identical_duplicates,
            usage.rejected,
            usage.outside_window
        )));
    }
    Ok(RunOutput {
        settings,
        book,
        files,
        pricebook_path,
        counts,
        usage,
        ledger_entries_outside: outside.ledger_entries,
        discrepancies: out.discrepancies,
        rejects,
        balances: out.balances,
        invoices: out.invoices,
        invoice_lines: out.invoice_lines,
        renewals: out.renewals,
        allocations_next: out.allocations_next,
        grants_next: out.grants_next,
        billed_events: out.billed_events,
        totals: out.totals,
    })
}

/// Every closed account-period has exactly one invoice and one renewal.
fn check_one_invoice_and_renewal_per_period(out: &AccountResult) -> Result<()> {
    let periods = out.totals.account_periods as usize;
    let mut invoiced: Vec<(&str, Micros)> = out
        .invoices
        .iter()
        .map(|i| (i.account_id.as_str(), i.period_start))
        .collect();
    invoiced.sort_unstable();
    invoiced.dedup();
    let mut renewed: Vec<(&str, Micros)> = out
        .renewals
        .iter()
        .map(|r| (r.account_id.as_str(), r.period_start))
        .collect();
    renewed.sort_unstable();
    renewed.dedup();
    let holds = out.invoices.len() == periods
        && out.renewals.len() == periods
        && invoiced.len() == periods
        && renewed == invoiced;
    if holds {
        Ok(())
    } else {
        Err(TallyError::Invariant(format!(
            "{periods} closed account-periods but {} invoices ({} distinct) and {} renewals ({} distinct)",
            out.invoices.len(),
            invoiced.len(),
            out.renewals.len(),
            renewed.len()
        )))
    }
}

/// Group accounts into buckets and process the buckets in parallel; each bucket's accounts
/// run one after another. The result does not depend on the bucket count or thread count.
fn process_buckets(
    ctx: &RunContext<'_>,
    accounts: Vec<AccountWork>,
    buckets: u32,
    stage: &crate::progress::Stage,
) -> Result<Vec<(String, AccountResult)>> {
    let mut grouped: Vec<Vec<AccountWork>> = (0..buckets.max(1)).map(|_| Vec::new()).collect();
    for account in accounts {
        grouped[bucket_of(&account.account_id, buckets) as usize].push(account);
    }
    let per_bucket: Vec<Result<Vec<(String, AccountResult)>>> = grouped
        .into_par_iter()
        .map(|bucket| {
            let done = bucket
                .into_iter()
                .map(|work| {
                    let id = work.account_id.clone();
                    process_account(ctx, work).map(|r| (id, r))
                })
                .collect();
            stage.tick();
            done
        })
        .collect();
    let mut all = Vec::new();
    for bucket in per_bucket {
        all.extend(bucket?);
    }
    Ok(all)
}
