//! `tally explain`: the audit trail of one event, ledger entry or account, in plain words
//! and as JSON. It runs the real pipeline for the one account partition involved (the
//! same routing as a sharded run, so the account's figures are the run's figures) and
//! asks the engine to keep its working: the rate it chose, the arithmetic, each grant
//! drawn, the verdict. Nothing here prices or classifies on its own.

use crate::amount::Milli;
use crate::census;
use crate::consume::{Draw, GrantBalance};
use crate::engine::{AccountResult, EventTrace, PeriodTrace};
use crate::error::{Result, TallyError};
use crate::history::History;
use crate::load::{self, Batch, ColSpec, InputFile, Parsed};
use crate::model::*;
use crate::pipeline;
use crate::price::{self, Price};
use crate::pricebook::{Overage, PriceBook};
use crate::reconcile::{DiscrepancyRow, Kind};
use crate::route::{self, Layout};
use crate::run::{self, RunSettings, Traced};
use crate::time::{format_instant, Micros};
use crate::Progress;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;

/// What to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Event(String),
    Entry(String),
    Account(String),
}

pub struct ExplainRequest {
    pub data: PathBuf,
    pub mode: Mode,
    pub as_of: Micros,
    pub settle_micros: i64,
    /// Earlier close outputs (close only), as the close was given them.
    pub history: Option<PathBuf>,
    /// The close's own output folder, skipped in `history` as the close skipped it.
    pub out: Option<PathBuf>,
    pub target: Target,
}

// ---- the explanation (serialized as the `--json` output) --------------------------------

#[derive(Serialize, Debug)]
pub struct Explanation {
    pub command: &'static str,
    pub as_of: String,
    pub settle_seconds: i64,
    pub target: TargetView,
    /// Every usage row carrying the event's id (the event's, or the entry's event's).
    pub usage_rows: Vec<SeenRow>,
    /// Every ledger row carrying the entry's id (`--entry`).
    pub entry_rows: Vec<SeenRow>,
    pub event: Option<EventExplanation>,
    pub entry: Option<EntryExplanation>,
    pub account: Option<AccountExplanation>,
}

#[derive(Serialize, Debug)]
pub struct TargetView {
    pub kind: &'static str,
    pub id: String,
}

/// One input row found for the target, and what the run did with it.
#[derive(Serialize, Debug)]
pub struct SeenRow {
    pub file: String,
    pub row: u64,
    /// `kept`, `identical_copy` (counted, not used) or `rejected`.
    pub fate: &'static str,
    pub reason: Option<&'static str>,
    pub detail: Option<String>,
    /// The row's `account_id` as read, also for a rejected row (absent when null).
    pub account_id: Option<String>,
    /// The row's values as read (absent for a row that failed to parse).
    pub values: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct PeriodView {
    pub plan_id: String,
    pub period_start: String,
    pub period_end: String,
    pub status: &'static str,
    pub included_credits: Milli,
    /// The plan's overage price per credit (major units); `None`: the plan blocks overage.
    pub overage_price_per_credit: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct RateView {
    pub product: String,
    pub action: String,
    /// `None`: the generic rate of the product and action.
    pub model: Option<String>,
    pub unit: String,
    pub credits_per_unit: String,
    pub increment: String,
    pub minimum: String,
    pub effective_from: String,
    /// Why this row: `model` (the model's own rate), `generic` (the event has no model)
    /// or `generic_fallback` (the model has no rate in effect).
    pub choice: &'static str,
}

#[derive(Serialize, Debug)]
pub struct ArithmeticView {
    pub quantity: Milli,
    pub increments: String,
    pub billed_quantity: String,
    pub raw_credits: String,
    pub minimum_applied: bool,
    pub credits: Milli,
}

#[derive(Serialize, Debug)]
pub struct DrawView {
    /// `None`: the allocation's plan credits.
    pub grant_id: Option<String>,
    pub kind: &'static str,
    pub taken: Milli,
    pub left: Milli,
}

#[derive(Serialize, Debug)]
pub struct EntryView {
    pub entry_id: String,
    pub account_id: String,
    pub event_id: Option<String>,
    pub kind: &'static str,
    pub credits: Milli,
    pub recorded_at: String,
    pub file: String,
    pub row: u64,
}

/// A discrepancy row with the values the run writes (its product, action and model are
/// the event's, shown once on the event).
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct DiscrepancyView {
    pub kind: &'static str,
    pub account_id: String,
    pub event_id: Option<String>,
    pub entry_ids: Vec<String>,
    pub occurred_at: Option<String>,
    pub expected_credits: Option<Milli>,
    pub recorded_credits: Milli,
    pub delta_credits: Option<Milli>,
}

#[derive(Serialize, Debug)]
pub struct EventExplanation {
    pub event_id: String,
    pub account_id: String,
    pub product: String,
    pub action: String,
    pub model: Option<String>,
    pub quantity: Milli,
    pub status: &'static str,
    pub occurred_at: String,
    /// `in_window`, `no_allocation` or `outside_window`.
    pub placement: &'static str,
    pub placement_detail: String,
    pub period: Option<PeriodView>,
    /// A late event: the start of the earlier-closed period it occurred in.
    pub late_from: Option<String>,
    pub conflicting_copies: bool,
    /// `succeeded`: only those are chargeable (contract section 3); a succeeded event
    /// without a rate is still unpriced.
    pub chargeable: bool,
    pub rate: Option<RateView>,
    pub arithmetic: Option<ArithmeticView>,
    /// `None` for an unpriced event (and outside the window).
    pub expected_credits: Option<Milli>,
    pub grants: Vec<DrawView>,
    pub overage_credits: Milli,
    pub entries: Vec<EntryView>,
    pub recorded_credits: Option<Milli>,
    /// `matched`, `pending`, or the first discrepancy kind that applies.
    pub verdict: Option<String>,
    /// The contract's rule behind the verdict, with this event's figures.
    pub verdict_reason: Option<String>,
    pub discrepancies: Vec<DiscrepancyView>,
}

#[derive(Serialize, Debug)]
pub struct EntryExplanation {
    pub entry: Option<EntryView>,
    /// `attached` (see `event`), `unattached`, `no_allocation`, `outside_window`,
    /// `after_as_of` or `rejected`.
    pub placement: &'static str,
    pub placement_detail: String,
    pub period: Option<PeriodView>,
    /// For an unattached entry: its discrepancy kind, or `counted` for a refund.
    pub verdict: Option<String>,
    pub discrepancies: Vec<DiscrepancyView>,
}

#[derive(Serialize, Debug)]
pub struct AllocationView {
    pub file: String,
    pub row: u64,
    pub period: PeriodView,
    /// Covered by this run (its events are in the window).
    pub covered: bool,
}

#[derive(Serialize, Debug)]
pub struct GrantView {
    pub grant_id: Option<String>,
    pub kind: &'static str,
    pub priority: i64,
    pub effective_at: String,
    pub expires_at: Option<String>,
    pub start_credits: Milli,
    pub left_credits: Milli,
}

#[derive(Serialize, Debug)]
pub struct TimelineRow {
    pub occurred_at: String,
    pub event_id: String,
    pub status: &'static str,
    pub expected_credits: Option<Milli>,
    pub draws: Vec<DrawView>,
    pub overage_credits: Milli,
    /// Credits left in all of the period's grants after this event.
    pub balance_after: Milli,
    pub verdict: String,
}

#[derive(Serialize, Debug)]
pub struct BalanceView {
    pub granted_credits: Milli,
    pub used_credits: Milli,
    pub overage_credits: Milli,
    pub remaining_credits: Milli,
}

#[derive(Serialize, Debug)]
pub struct InvoiceView {
    pub invoice_id: String,
    pub currency: String,
    /// Each `*_minor` amount formatted with the currency's exponent (as in the CSV files).
    pub plan_price: String,
    pub overage_amount: String,
    pub total: String,
    pub plan_price_minor: i64,
    pub credits_used: Milli,
    pub overage_credits: Milli,
    pub overage_amount_minor: i64,
    pub total_minor: i64,
    pub recorded_credits: Milli,
    pub unreconciled_credits: Milli,
    pub lines: Vec<crate::close::InvoiceLineRow>,
    pub rollover_credits: Milli,
    pub expired_credits: Milli,
    pub carried_grant_credits: Milli,
    pub next_period: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct PeriodExplanation {
    pub period: PeriodView,
    pub grants: Vec<GrantView>,
    pub timeline: Vec<TimelineRow>,
    pub unattached: Vec<EntryView>,
    /// Reconcile: the account-period's `balances` row.
    pub balance: Option<BalanceView>,
    /// Close: the invoice, its lines and the renewal.
    pub invoice: Option<InvoiceView>,
}

#[derive(Serialize, Debug)]
pub struct AccountExplanation {
    pub account_id: String,
    /// The account's valid allocations.
    pub allocations: Vec<AllocationView>,
    /// Its allocation and grant rows that were rejected, with the reason.
    pub rejected_rows: Vec<SeenRow>,
    pub periods: Vec<PeriodExplanation>,
    pub discrepancies: Vec<DiscrepancyView>,
}

/// An id as explain prints it: whole (however long) and escaped, so that two ids are never
/// shown alike and an id cannot start a line of its own.
fn q(id: &str) -> String {
    format!("{id:?}")
}

// ---- finding the rows -------------------------------------------------------------------

/// A row holding an id: its place, what parsing made of it, and its `account_id` cell as
/// read (also for a rejected row, so that explain names the account a rejected copy
/// was written for).
type IdRow<T> = (RowRef, Parsed<T>, Option<String>);

/// Every row of `files` whose column `id_col` equals `id`, parsed, in (file, row) order.
fn rows_with_id<T: Send>(
    files: &[InputFile],
    specs: &[ColSpec],
    id_col: usize,
    id: &str,
    parse: &(dyn Fn(&Batch, usize, RowRef) -> Parsed<T> + Sync),
) -> Result<Vec<IdRow<T>>> {
    let account_col = specs
        .iter()
        .position(|spec| spec.name == "account_id")
        .expect("every dataset has an account_id column");
    let per_file = load::map_files(files, specs, &|file, batch, out| {
        for row in 0..batch.len {
            if batch.text(id_col, row) == Some(id) {
                let at = RowRef {
                    file: file as u32,
                    row: batch.first_row + row as u64,
                };
                let account = batch.columns[account_col].str(row).map(str::to_string);
                out.push((at, parse(batch, row, at), account));
            }
        }
    })?;
    let mut rows: Vec<IdRow<T>> = per_file.into_iter().flatten().collect();
    rows.sort_by_key(|(at, _, _)| *at);
    Ok(rows)
}

/// The copies of one event and the winning one (the same winner rule as dedup).
struct Copies {
    rows: Vec<IdRow<UsageRow>>,
    winner: Option<UsageRow>,
}

fn copies_of(files: &[InputFile], event_id: &str) -> Result<Copies> {
    let rows = rows_with_id(files, &load::USAGE_COLUMNS, 0, event_id, &load::parse_usage)?;
    let winner = rows
        .iter()
        .filter_map(|(_, p, _)| match p {
            Parsed::Row(u) => Some(u),
            Parsed::Rejected(_) => None,
        })
        .min_by_key(|u| crate::validate::winner_key(u))
        .cloned();
    Ok(Copies { rows, winner })
}

// ---- running the account ----------------------------------------------------------------

/// The run's view of one account: its inputs as placed, the engine's result and trace.
struct AccountRun {
    /// The earlier closes the run read (empty without `--history`).
    history: std::sync::Arc<History>,
    traced: Traced,
    rejects: Vec<Reject>,
    result: AccountResult,
    periods: Vec<PeriodTrace>,
}

fn run_account(req: &ExplainRequest, inputs: &census::Inputs, account: &str) -> Result<AccountRun> {
    let history = match (&req.history, req.mode) {
        (Some(dir), Mode::Close) => {
            // The CLI asks for --out with --history; a caller without one reads every close
            // (an output folder given as the history is refused all the same).
            let exclude = req.out.as_deref();
            match exclude {
                Some(out) => crate::history::check_layout(dir, out)?,
                None => crate::history::refuse_an_output_folder_as_history(dir)?,
            }
            // A first close may be explained before it runs (the folder does not exist yet),
            // but a wrong path to a history that does exist explains a later close as a first
            // one, its late events as on time, with figures that look right: said.
            if !dir.exists() {
                tracing::warn!(
                    history = %dir.display(),
                    "the history folder does not exist, so no earlier close is read: explained \
                     as a first close; if this close had earlier ones, check --history (a \
                     relative path is taken from the working folder)"
                );
            }
            crate::history::load(dir, exclude, req.as_of)?
        }
        _ => History::default(),
    };
    let settings = RunSettings {
        data: req.data.clone(),
        mode: req.mode,
        as_of: req.as_of,
        settle_micros: req.settle_micros,
        buckets: 1,
        groups: Some(1),
        memory_budget_bytes: run::DEFAULT_MEMORY_BUDGET_BYTES,
        history: std::sync::Arc::new(history),
        trace_account: Some(account.to_string()),
    };
    let history = settings.history.clone();
    // Only the account's partition: rows reach it by the same routing as a sharded run.
    let layout = Layout {
        shard: route::partition_of(account),
        shards: route::PARTITIONS,
        groups: 1,
    };
    let quiet = Progress { interactive: false };
    let partial = pipeline::compute(&settings, inputs, &layout, &quiet)?;
    let mut traced = partial.traced.unwrap_or_default();
    let result = traced.result.take().unwrap_or_default();
    let periods = std::mem::take(&mut traced.periods);
    Ok(AccountRun {
        history,
        traced,
        rejects: partial.rejects,
        result,
        periods,
    })
}

// ---- the explanation --------------------------------------------------------------------

/// Explain one event, ledger entry or account (`req.target`): read the data root as the
/// run did, run the target's account traced, and say what happened to each of its rows.
pub fn explain(req: &ExplainRequest) -> Result<Explanation> {
    // It may split its run like `reconcile` does, into spill folders of its own.
    crate::spill::sweep_orphans();
    let inputs = census::inputs(&req.data)?;
    let mut explanation = empty_explanation(req);
    match &req.target {
        Target::Event(event_id) => explain_event_id(req, &inputs, event_id, &mut explanation)?,
        Target::Entry(entry_id) => explain_entry_id(req, &inputs, entry_id, &mut explanation)?,
        Target::Account(account_id) => {
            explanation.account = Some(explain_account_id(req, &inputs, account_id)?);
        }
    }
    Ok(explanation)
}

/// The explanation's command, as-of, settle and target, before anything is found.
fn empty_explanation(req: &ExplainRequest) -> Explanation {
    Explanation {
        command: req.mode.name(),
        as_of: format_instant(req.as_of),
        settle_seconds: req.settle_micros / 1_000_000,
        target: match &req.target {
            Target::Event(id) => TargetView {
                kind: "event",
                id: id.clone(),
            },
            Target::Entry(id) => TargetView {
                kind: "entry",
                id: id.clone(),
            },
            Target::Account(id) => TargetView {
                kind: "account",
                id: id.clone(),
            },
        },
        usage_rows: Vec::new(),
        entry_rows: Vec::new(),
        event: None,
        entry: None,
        account: None,
    }
}

/// `--event`: fills in the usage rows with the id and, when a copy was kept, the event.
fn explain_event_id(
    req: &ExplainRequest,
    inputs: &census::Inputs,
    event_id: &str,
    explanation: &mut Explanation,
) -> Result<()> {
    let copies = copies_of(&inputs.files[0], event_id)?;
    if copies.rows.is_empty() {
        return Err(not_found(
            "usage",
            "event_id",
            event_id,
            inputs.files[0].len(),
        ));
    }
    // Without a kept copy there is no event, and no account to run.
    let Some(winner) = &copies.winner else {
        explanation.usage_rows = seen_usage(inputs, &copies, None);
        return Ok(());
    };
    let run = run_account(req, inputs, &winner.account_id)?;
    explanation.usage_rows = seen_usage(inputs, &copies, Some(&run));
    explanation.event = Some(explain_event(req, inputs, &run, winner)?);
    Ok(())
}

/// `--entry`: fills in the ledger rows with the id, the usage rows of the kept row's event,
/// the entry and, when it is attached, its event.
fn explain_entry_id(
    req: &ExplainRequest,
    inputs: &census::Inputs,
    entry_id: &str,
    explanation: &mut Explanation,
) -> Result<()> {
    let rows = rows_with_id(
        &inputs.files[3],
        &load::DEBIT_COLUMNS,
        0,
        entry_id,
        &load::parse_debit,
    )?;
    if rows.is_empty() {
        return Err(not_found(
            "debits",
            "entry_id",
            entry_id,
            inputs.files[3].len(),
        ));
    }
    // For a repeated id the first valid row by (file, row) is kept.
    let kept: Option<DebitRow> = rows.iter().find_map(|(_, p, _)| match p {
        Parsed::Row(d) => Some(d.clone()),
        Parsed::Rejected(_) => None,
    });
    // A run needs an account, which comes from the kept row or its event (found through
    // the kept row): without a kept row there is neither.
    let Some(kept) = kept else {
        explanation.entry_rows = seen_entries(inputs, &rows, None);
        explanation.entry = Some(every_entry_row_rejected());
        return Ok(());
    };
    let copies = match kept.event_id.as_deref() {
        Some(event_id) => Some(copies_of(&inputs.files[0], event_id)?),
        None => None,
    };
    let winner = copies.as_ref().and_then(|c| c.winner.as_ref());
    // The account an entry is explained in: its event's (the kept copy's), else its own.
    let account: &str = match winner {
        Some(w) => &w.account_id,
        None => &kept.account_id,
    };
    let run = run_account(req, inputs, account)?;
    explanation.entry_rows = seen_entries(inputs, &rows, Some((&kept, &run)));
    if let Some(copies) = &copies {
        explanation.usage_rows = seen_usage(inputs, copies, Some(&run));
    }
    let entry = explain_entry(req, inputs, &run, &kept, winner);
    if entry.placement == "attached" {
        if let Some(w) = winner {
            explanation.event = Some(explain_event(req, inputs, &run, w)?);
        }
    }
    explanation.entry = Some(entry);
    Ok(())
}

/// The entry of an id none of whose rows is valid.
fn every_entry_row_rejected() -> EntryExplanation {
    EntryExplanation {
        entry: None,
        placement: "rejected",
        placement_detail: "every row with this entry_id was rejected".into(),
        period: None,
        verdict: None,
        discrepancies: Vec::new(),
    }
}

/// `--account`: the account's periods, with its rejected allocation and grant rows; an
/// account with none of those rows is an error saying what it has instead.
fn explain_account_id(
    req: &ExplainRequest,
    inputs: &census::Inputs,
    account_id: &str,
) -> Result<AccountExplanation> {
    let run = run_account(req, inputs, account_id)?;
    let PlanRows {
        rejected: rejected_rows,
        grant_rows,
    } = plan_rows(inputs, &run, account_id)?;
    if run.traced.allocations.is_empty() && run.traced.grants.is_empty() && rejected_rows.is_empty()
    {
        return Err(unplanned_account_error(inputs, account_id, grant_rows));
    }
    explain_account(inputs, &run, account_id, rejected_rows)
}

/// The error for an account without allocation or grant rows the run kept or rejected:
/// what rows it has in no period (`grant_rows`: its grant rows, all valid, for an account
/// without an allocation they count in no period), or, with none, that no row names it (or
/// the error of a row that could not be read while counting them).
fn unplanned_account_error(
    inputs: &census::Inputs,
    account_id: &str,
    grant_rows: usize,
) -> TallyError {
    let (usage_rows, ledger_rows) = match usage_and_ledger_rows_of(inputs, account_id) {
        Ok(counts) => counts,
        Err(e) => return e,
    };
    // Valid grant rows of an account without an allocation: in no period either, and
    // there (not "check the id").
    if grant_rows > 0 {
        return TallyError::config(
            format!("--account {account_id}"),
            format!(
                "account_id {} has no allocation rows, so its {grant_rows} grant, \
                 {usage_rows} usage and {ledger_rows} ledger rows are in no \
                 period (a grant counts only in its account's periods); explain \
                 usage and ledger rows with --event or --entry",
                q(account_id)
            ),
        );
    }
    if usage_rows + ledger_rows > 0 {
        // A real account, only not a planned one: say so, not "check the id".
        return TallyError::config(
            format!("--account {account_id}"),
            format!(
                "account_id {} has no allocation or grant rows, so its \
                 {usage_rows} usage and {ledger_rows} ledger rows are in no \
                 period; explain each with --event or --entry",
                q(account_id)
            ),
        );
    }
    not_found(
        "allocations or grants",
        "account_id",
        account_id,
        inputs.files[1].len() + inputs.files[2].len(),
    )
}

/// An account's plan rows as `--account` reads them.
struct PlanRows {
    /// Its allocation and grant rows that the run rejected, with its reasons.
    rejected: Vec<SeenRow>,
    /// How many grant rows name it, valid or not.
    grant_rows: usize,
}

/// The account's allocation and grant rows that the run rejected, and how many grant rows
/// name it (read once: the error for an account without a plan counts them).
fn plan_rows(inputs: &census::Inputs, run: &AccountRun, account_id: &str) -> Result<PlanRows> {
    let allocation_rows = rows_with_id(
        &inputs.files[1],
        &load::ALLOCATION_COLUMNS,
        0,
        account_id,
        &load::parse_allocation,
    )?;
    let grant_rows = rows_with_id(
        &inputs.files[2],
        &load::GRANT_COLUMNS,
        1,
        account_id,
        &load::parse_grant,
    )?;
    let ats = allocation_rows
        .iter()
        .map(|(at, _, _)| (Dataset::Allocations, *at))
        .chain(grant_rows.iter().map(|(at, _, _)| (Dataset::Grants, *at)));
    let rejected = ats
        .filter_map(|(dataset, at)| {
            let r = run
                .traced
                .plan_rejects
                .iter()
                .find(|r| r.dataset == dataset && r.at == at)?;
            Some(SeenRow {
                file: rel(inputs, dataset, at),
                row: at.row,
                fate: "rejected",
                reason: Some(r.reason.name()),
                detail: Some(r.detail.clone()),
                account_id: Some(account_id.to_string()),
                values: None,
            })
        })
        .collect();
    Ok(PlanRows {
        rejected,
        grant_rows: grant_rows.len(),
    })
}

fn not_found(dataset: &str, column: &str, id: &str, files: usize) -> TallyError {
    let flag = match column {
        "event_id" => "--event",
        "entry_id" => "--entry",
        _ => "--account",
    };
    TallyError::config(
        format!("{flag} {id}"),
        format!(
            "no row of {dataset} ({files} files) has {column} {}; check the id and --data",
            q(id)
        ),
    )
}

/// How many usage rows and ledger rows name `account_id` (an account without allocation or
/// grant rows may still have some: none of them is in a period).
fn usage_and_ledger_rows_of(inputs: &census::Inputs, account_id: &str) -> Result<(u64, u64)> {
    const ACCOUNT: [ColSpec; 1] = [load::col("account_id", load::ColType::Label, true)];
    let count = |files: &[InputFile]| -> Result<u64> {
        let per_file = load::map_files(files, &ACCOUNT, &|_, batch, out: &mut Vec<u64>| {
            let rows = (0..batch.len)
                .filter(|&row| batch.text(0, row) == Some(account_id))
                .count();
            out.push(rows as u64);
        })?;
        Ok(per_file.into_iter().flatten().sum())
    };
    Ok((count(&inputs.files[0])?, count(&inputs.files[3])?))
}

fn rel(inputs: &census::Inputs, dataset: Dataset, at: RowRef) -> String {
    inputs.files[dataset as usize]
        .get(at.file as usize)
        .map_or_else(|| "?".into(), |f| f.rel_path.clone())
}

fn find_reject(run: &AccountRun, dataset: Dataset, at: RowRef) -> Option<&Reject> {
    (run.rejects.iter()).find(|r| r.dataset == dataset && r.at == at)
}

fn usage_values(u: &UsageRow) -> String {
    format!(
        "{}, quantity {}, {}, occurred {}, ingested {}",
        sku_text(&u.product, &u.action, u.model.as_deref()),
        u.quantity,
        u.status.name(),
        format_instant(u.occurred_at),
        u.ingested_at.map_or_else(|| "null".into(), format_instant)
    )
}

fn seen_usage(inputs: &census::Inputs, copies: &Copies, run: Option<&AccountRun>) -> Vec<SeenRow> {
    copies
        .rows
        .iter()
        .map(|(at, parsed, account)| {
            let file = rel(inputs, Dataset::Usage, *at);
            let rejected = |r: &Reject| SeenRow {
                file: file.clone(),
                row: at.row,
                fate: "rejected",
                reason: Some(r.reason.name()),
                detail: Some(r.detail.clone()),
                account_id: account.clone(),
                values: None,
            };
            match parsed {
                Parsed::Rejected(r) => rejected(r),
                Parsed::Row(u) => {
                    let mut seen = match run.and_then(|run| find_reject(run, Dataset::Usage, *at)) {
                        Some(r) => rejected(r),
                        None => {
                            let is_winner = copies.winner.as_ref().is_some_and(|w| w.at == u.at);
                            SeenRow {
                                file: file.clone(),
                                row: at.row,
                                fate: if is_winner { "kept" } else { "identical_copy" },
                                reason: None,
                                detail: (!is_winner).then(|| {
                                    "equal to the kept copy in every column but ingested_at: counted, not used".into()
                                }),
                                account_id: None,
                                values: None,
                            }
                        }
                    };
                    seen.account_id = Some(u.account_id.to_string());
                    seen.values = Some(usage_values(u));
                    seen
                }
            }
        })
        .collect()
}

/// The ledger rows with an entry id, each with its fate: `kept` is the kept row and the run
/// of the account it is explained in (`None`: every row was rejected as it was read).
fn seen_entries(
    inputs: &census::Inputs,
    rows: &[IdRow<DebitRow>],
    kept: Option<(&DebitRow, &AccountRun)>,
) -> Vec<SeenRow> {
    rows.iter()
        .map(|(at, parsed, account)| {
            let file = rel(inputs, Dataset::Debits, *at);
            match parsed {
                Parsed::Rejected(r) => SeenRow {
                    file,
                    row: at.row,
                    fate: "rejected",
                    reason: Some(r.reason.name()),
                    detail: Some(r.detail.clone()),
                    account_id: account.clone(),
                    values: None,
                },
                Parsed::Row(d) => {
                    let (is_kept, reject) = match kept {
                        Some((k, run)) => (k.at == d.at, find_reject(run, Dataset::Debits, *at)),
                        None => (false, None),
                    };
                    let (fate, reason, detail) = match (reject, is_kept) {
                        (Some(r), _) => ("rejected", Some(r.reason.name()), Some(r.detail.clone())),
                        (None, true) => ("kept", None, None),
                        (None, false) => (
                            "rejected",
                            Some(Reason::BadValue.name()),
                            Some("repeated entry_id: the first row by (file, row) is kept".into()),
                        ),
                    };
                    SeenRow {
                        file,
                        row: at.row,
                        fate,
                        reason,
                        detail,
                        account_id: Some(d.account_id.to_string()),
                        values: Some(format!(
                            "{} {} for event {}, recorded {}",
                            d.kind.name(),
                            d.credits,
                            d.event_id.as_deref().map_or_else(|| "(none)".into(), q),
                            format_instant(d.recorded_at)
                        )),
                    }
                }
            }
        })
        .collect()
}

fn period_view(book: &PriceBook, a: &AllocationRow) -> PeriodView {
    PeriodView {
        plan_id: a.plan_id.to_string(),
        period_start: format_instant(a.period_start),
        period_end: format_instant(a.period_end),
        status: a.status.name(),
        included_credits: a.included_credits,
        overage_price_per_credit: match book.plans.get(&*a.plan_id).map(|p| &p.overage) {
            Some(Overage::PricePerCredit(price)) => Some(price.normalize().to_string()),
            _ => None,
        },
    }
}

fn entry_view(inputs: &census::Inputs, d: &DebitRow) -> EntryView {
    EntryView {
        entry_id: d.entry_id.to_string(),
        account_id: d.account_id.to_string(),
        event_id: d.event_id.as_ref().map(|id| id.to_string()),
        kind: d.kind.name(),
        credits: d.credits,
        recorded_at: format_instant(d.recorded_at),
        file: rel(inputs, Dataset::Debits, d.at),
        row: d.at.row,
    }
}

/// The views of `rows` in the order the run writes them ([`DiscrepancyRow::sort_key`], as
/// `discrepancies.parquet`), not the engine's order, so that an answer's rows can be read
/// against the published file line by line.
fn published_views<'a>(rows: impl Iterator<Item = &'a DiscrepancyRow>) -> Vec<DiscrepancyView> {
    let mut rows: Vec<&DiscrepancyRow> = rows.collect();
    rows.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    rows.into_iter().map(discrepancy_view).collect()
}

fn discrepancy_view(d: &DiscrepancyRow) -> DiscrepancyView {
    DiscrepancyView {
        kind: d.kind.name(),
        account_id: d.account_id.to_string(),
        event_id: d.event_id.as_ref().map(|id| id.to_string()),
        entry_ids: d.entry_ids.iter().map(|id| id.to_string()).collect(),
        occurred_at: d.occurred_at.map(format_instant),
        expected_credits: d.expected_credits,
        recorded_credits: d.recorded_credits,
        delta_credits: d.delta_credits,
    }
}

fn draw_views(grants: &[(GrantBalance, Milli)], draws: &[Draw]) -> Vec<DrawView> {
    draws
        .iter()
        .map(|d| DrawView {
            grant_id: grants[d.grant].0.grant_id.clone(),
            kind: grants[d.grant].0.kind.name(),
            taken: d.taken,
            left: d.left,
        })
        .collect()
}

/// The period trace and event trace of an event in the window.
fn find_event(run: &AccountRun, at: RowRef) -> Option<(&PeriodTrace, &EventTrace)> {
    run.periods.iter().find_map(|p| {
        p.events
            .iter()
            .find(|e| e.work.usage.at == at)
            .map(|e| (p, e))
    })
}

/// The allocation of the account containing `t`, if any.
fn allocation_at(run: &AccountRun, t: Micros) -> Option<&AllocationRow> {
    run.traced
        .allocations
        .iter()
        .find(|a| a.period_start <= t && t < a.period_end)
}

/// Why an event or entry of the account at `t` is outside this run's window.
fn outside_reason(req: &ExplainRequest, run: &AccountRun, t: Micros, what: &str) -> String {
    if t >= req.as_of {
        return format!("{what} at or after as-of {}", format_instant(req.as_of));
    }
    match allocation_at(run, t) {
        None => format!("{what} in no allocation of the account"),
        Some(a) => {
            let period = format!(
                "[{}, {})",
                format_instant(a.period_start),
                format_instant(a.period_end)
            );
            match req.mode {
                Mode::Reconcile => format!(
                    "its period {period} is not the one containing as-of (closed periods are close's work: explain with --close)"
                ),
                Mode::Close if a.period_end > req.as_of => format!(
                    "its period {period} has not ended by as-of (open periods are reconcile's work: explain without --close)"
                ),
                Mode::Close if run.history.is_closed(&a.account_id, a.period_start) => format!(
                    "its period {period} was closed by an earlier close (--history) and it is not a late event of this close"
                ),
                // A covered period: the event was seen by an earlier close (window.rs,
                // `seen_by_an_earlier_close`).
                Mode::Close => format!(
                    "an earlier close (--history) saw this event (its billed_events.parquet lists it): it belongs to that close and is not billed again in its period {period}"
                ),
            }
        }
    }
}

fn rate_and_arithmetic(
    book: &PriceBook,
    u: &UsageRow,
    price: Price,
) -> Result<(Option<RateView>, Option<ArithmeticView>)> {
    if u.status != EventStatus::Succeeded {
        return Ok((None, None));
    }
    let choice = book.choose(&u.product, &u.action, u.model.as_deref(), u.occurred_at);
    let Some(rate) = choice.rate else {
        return Ok((None, None));
    };
    // The run priced this event with the same rate (an overflow would have stopped it,
    // naming the row), so the steps cannot overflow here.
    let a = price::arithmetic(rate, u.quantity).ok_or_else(|| {
        TallyError::Invariant(format!(
            "explain: event {} was priced by the run but its arithmetic overflows",
            q(&u.event_id)
        ))
    })?;
    // The engine priced it with the same rate: the trace and the arithmetic must agree.
    if price != Price::Charged(a.credits) {
        return Err(TallyError::Invariant(format!(
            "explain: event {} priced {price:?} by the run but {} by its rate",
            q(&u.event_id),
            a.credits
        )));
    }
    let rate_view = RateView {
        product: u.product.to_string(),
        action: u.action.to_string(),
        model: if choice.model_specific {
            u.model.as_deref().map(str::to_string)
        } else {
            None
        },
        unit: rate.unit.clone(),
        credits_per_unit: rate.credits_per_unit.normalize().to_string(),
        increment: rate.increment.normalize().to_string(),
        minimum: rate.minimum.normalize().to_string(),
        effective_from: format_instant(rate.effective_from),
        choice: match (choice.model_specific, u.model.is_some()) {
            (true, _) => "model",
            (false, false) => "generic",
            (false, true) => "generic_fallback",
        },
    };
    let arithmetic = ArithmeticView {
        quantity: u.quantity,
        increments: a.increments.to_string(),
        billed_quantity: a.billed_quantity.to_string(),
        raw_credits: a.raw_credits.to_string(),
        minimum_applied: a.minimum_applied,
        credits: a.credits,
    };
    Ok((Some(rate_view), Some(arithmetic)))
}

fn verdict_name(e: &EventTrace) -> String {
    match (e.verdict.primary, e.verdict.pending) {
        (Some(kind), _) => kind.name().to_string(),
        (None, true) => "pending".into(),
        (None, false) => "matched".into(),
    }
}

/// Label for a timeline row: the verdict plus the extra kinds reported for the event.
fn verdict_label(e: &EventTrace) -> String {
    let mut label = verdict_name(e);
    for kind in &e.kinds {
        if Some(*kind) != e.verdict.primary {
            label.push_str(" + ");
            label.push_str(kind.name());
        }
    }
    label
}

/// The rule of contract section 5 that decided the verdict, with the event's figures.
fn verdict_reason(req: &ExplainRequest, e: &EventTrace) -> String {
    let u = &e.work.usage;
    let recorded = e.verdict.recorded;
    let expected = e.price.expected();
    let debits = e.verdict.debit_entries;
    let settle_from = format_instant(req.as_of.saturating_sub(req.settle_micros));
    match (e.verdict.primary, e.verdict.pending) {
        (Some(Kind::AccountMismatch), _) => {
            let others: Vec<String> = e
                .work
                .entries
                .iter()
                .filter(|d| d.account_id != u.account_id)
                .map(|d| format!("{} is recorded for account {}", q(&d.entry_id), q(&d.account_id)))
                .collect();
            format!("{}; the event belongs to account {}", others.join("; "), q(&u.account_id))
        }
        (Some(Kind::UnpricedEvent), _) => "no rate is in effect for it: expected is unknown".into(),
        (Some(Kind::ChargedFailedEvent), _) => format!(
            "the event {} (costs 0) but its net recorded is {recorded} > 0",
            u.status.name()
        ),
        (Some(Kind::MissingDebit), _) => format!(
            "expected {} > 0 and no ledger entry was recorded; it occurred before {settle_from} (as-of − settle), so it is not pending",
            opt_milli(expected)
        ),
        (Some(Kind::DuplicateDebit), _) => format!(
            "{debits} debit entries and net recorded {recorded} > expected {}",
            opt_milli(expected)
        ),
        (Some(Kind::AmountMismatch), _) => format!(
            "net recorded {recorded} ≠ expected {}",
            opt_milli(expected)
        ),
        (Some(kind), _) => kind.name().to_string(),
        (None, true) => format!(
            "no entry yet, and it occurred at or after {settle_from} (as-of − settle): pending, not missing"
        ),
        (None, false) => format!(
            "net recorded {recorded} = expected {}",
            opt_milli(expected)
        ),
    }
}

fn explain_event(
    req: &ExplainRequest,
    inputs: &census::Inputs,
    run: &AccountRun,
    winner: &UsageRow,
) -> Result<EventExplanation> {
    let mut x = event_as_read(winner);
    let Some((period, event)) = find_event(run, winner.at) else {
        if let Some(r) = find_reject(run, Dataset::Usage, winner.at) {
            x.placement = "no_allocation";
            x.placement_detail = r.detail.clone();
        } else {
            x.placement_detail = outside_reason(req, run, winner.occurred_at, "occurred");
        }
        return Ok(x);
    };
    x.placement = "in_window";
    x.period = Some(period_view(&inputs.book, &period.allocation));
    x.placement_detail = in_window_detail(req.mode, &period.allocation);
    x.late_from = event.work.late_from.map(format_instant);
    x.conflicting_copies = event.work.conflicting;
    let (rate, arithmetic) = rate_and_arithmetic(&inputs.book, winner, event.price)?;
    x.rate = rate;
    x.arithmetic = arithmetic;
    x.expected_credits = event.price.expected();
    x.grants = draw_views(&period.grants, &event.draws);
    x.overage_credits = event.overage;
    x.entries = event
        .work
        .entries
        .iter()
        .map(|d| entry_view(inputs, d))
        .collect();
    x.recorded_credits = Some(event.verdict.recorded);
    x.verdict = Some(verdict_name(event));
    x.verdict_reason = Some(verdict_reason(req, event));
    x.discrepancies =
        published_views(run.result.discrepancies.iter().filter(|d| {
            d.occurred_at.is_some() && d.event_id.as_deref() == Some(&winner.event_id)
        }));
    Ok(x)
}

/// The kept copy's own values, outside the window and unpriced until the run's trace
/// says otherwise.
fn event_as_read(winner: &UsageRow) -> EventExplanation {
    EventExplanation {
        event_id: winner.event_id.to_string(),
        account_id: winner.account_id.to_string(),
        product: winner.product.to_string(),
        action: winner.action.to_string(),
        model: winner.model.as_deref().map(str::to_string),
        quantity: winner.quantity,
        status: winner.status.name(),
        occurred_at: format_instant(winner.occurred_at),
        placement: "outside_window",
        placement_detail: String::new(),
        period: None,
        late_from: None,
        conflicting_copies: false,
        chargeable: winner.status == EventStatus::Succeeded,
        rate: None,
        arithmetic: None,
        expected_credits: None,
        grants: Vec::new(),
        overage_credits: Milli::ZERO,
        entries: Vec::new(),
        recorded_credits: None,
        verdict: None,
        verdict_reason: None,
        discrepancies: Vec::new(),
    }
}

/// Where an event in the window is: its period (closed for close, open for reconcile).
fn in_window_detail(mode: Mode, allocation: &AllocationRow) -> String {
    format!(
        "in the {} period [{}, {}) of plan {}",
        if mode == Mode::Close {
            "closed"
        } else {
            "open"
        },
        format_instant(allocation.period_start),
        format_instant(allocation.period_end),
        allocation.plan_id
    )
}

/// Where the kept row of an entry id went: attached to its event, unattached in a period (its
/// verdict), or outside every period (why).
fn explain_entry(
    req: &ExplainRequest,
    inputs: &census::Inputs,
    run: &AccountRun,
    kept: &DebitRow,
    winner: Option<&UsageRow>,
) -> EntryExplanation {
    let mut x = EntryExplanation {
        entry: Some(entry_view(inputs, kept)),
        placement: "rejected",
        placement_detail: String::new(),
        period: None,
        verdict: None,
        discrepancies: Vec::new(),
    };
    if let Some(p) = period_attached_in(run, kept) {
        x.placement = "attached";
        x.placement_detail =
            "attached to its event: it follows the event's window and verdict".into();
        x.period = Some(period_view(&inputs.book, &p.allocation));
        return x;
    }
    if let Some((p, kind)) = period_unattached_in(run, kept) {
        x.placement = "unattached";
        x.placement_detail = unattached_detail(kept);
        x.period = Some(period_view(&inputs.book, &p.allocation));
        x.verdict = Some(kind.map_or_else(|| "counted".into(), |k| k.name().to_string()));
        x.discrepancies = published_views(
            run.result
                .discrepancies
                .iter()
                .filter(|d| d.occurred_at.is_none() && d.entry_ids == [kept.entry_id.clone()]),
        );
        return x;
    }
    (x.placement, x.placement_detail) = placement_outside_periods(req, run, kept, winner);
    x
}

/// The period whose events the kept entry is attached to, if any.
fn period_attached_in<'a>(run: &'a AccountRun, kept: &DebitRow) -> Option<&'a PeriodTrace> {
    run.periods.iter().find(|p| {
        p.events
            .iter()
            .any(|e| e.work.entries.iter().any(|d| d.at == kept.at))
    })
}

/// The period holding the kept entry as attached to no event, with its discrepancy kind
/// (`None`: a refund).
fn period_unattached_in<'a>(
    run: &'a AccountRun,
    kept: &DebitRow,
) -> Option<(&'a PeriodTrace, Option<Kind>)> {
    run.periods.iter().find_map(|p| {
        p.unattached
            .iter()
            .find(|(d, _)| d.at == kept.at)
            .map(|(_, kind)| (p, *kind))
    })
}

/// Why an unattached entry is placed on its own: it names no event, or no valid one.
fn unattached_detail(kept: &DebitRow) -> String {
    match &kept.event_id {
        None => "no event_id: placed by its own account and recorded_at".into(),
        Some(e) => format!(
            "event_id {} is not a valid usage event: placed by its own account and recorded_at",
            q(e)
        ),
    }
}

/// The placement of a kept entry in none of the run's periods, and why: rejected by the
/// run, recorded after as-of, or outside the window (its event's, when it has one).
fn placement_outside_periods(
    req: &ExplainRequest,
    run: &AccountRun,
    kept: &DebitRow,
    winner: Option<&UsageRow>,
) -> (&'static str, String) {
    if let Some(r) = find_reject(run, Dataset::Debits, kept.at) {
        let placement = if r.reason == Reason::NoAllocation {
            "no_allocation"
        } else {
            "rejected"
        };
        return (placement, r.detail.clone());
    }
    if kept.recorded_at >= req.as_of {
        let detail = format!(
            "recorded at or after as-of {}: ignored by this run",
            format_instant(req.as_of)
        );
        return ("after_as_of", detail);
    }
    let detail = match winner {
        Some(w) => format!(
            "attached to event {}, which is outside the window: {}",
            q(&w.event_id),
            outside_reason(req, run, w.occurred_at, "it occurred")
        ),
        None => outside_reason(req, run, kept.recorded_at, "recorded"),
    };
    ("outside_window", detail)
}

fn explain_account(
    inputs: &census::Inputs,
    run: &AccountRun,
    account_id: &str,
    rejected_rows: Vec<SeenRow>,
) -> Result<AccountExplanation> {
    let allocations = allocation_views(inputs, run);
    let mut periods = Vec::new();
    for p in &run.periods {
        periods.push(explain_period(inputs, run, p)?);
    }
    Ok(AccountExplanation {
        account_id: account_id.to_string(),
        allocations,
        rejected_rows,
        periods,
        discrepancies: published_views(run.result.discrepancies.iter()),
    })
}

/// The account's valid allocations, each marked covered when the run has its period.
fn allocation_views(inputs: &census::Inputs, run: &AccountRun) -> Vec<AllocationView> {
    let covered = |a: &AllocationRow| {
        run.periods
            .iter()
            .any(|p| p.allocation.period_start == a.period_start)
    };
    run.traced
        .allocations
        .iter()
        .map(|a| AllocationView {
            file: rel(inputs, Dataset::Allocations, a.at),
            row: a.at.row,
            period: period_view(&inputs.book, a),
            covered: covered(a),
        })
        .collect()
}

/// One period of the account: its grants, event timeline, unattached entries, and its
/// balance row (reconcile) or invoice (close).
fn explain_period(
    inputs: &census::Inputs,
    run: &AccountRun,
    p: &PeriodTrace,
) -> Result<PeriodExplanation> {
    let start = p.allocation.period_start;
    let timeline = timeline_of(p)?;
    let balance = run
        .result
        .balances
        .iter()
        .find(|b| b.period_start == start)
        .map(|b| BalanceView {
            granted_credits: b.granted_credits(),
            used_credits: b.used_credits(),
            overage_credits: b.overage,
            remaining_credits: b.remaining_credits(),
        });
    let invoice = run
        .result
        .invoices
        .iter()
        .find(|i| i.period_start == start)
        .map(|i| invoice_view(inputs, run, i));
    Ok(PeriodExplanation {
        period: period_view(&inputs.book, &p.allocation),
        grants: p
            .grants
            .iter()
            .map(|(g, start_credits)| GrantView {
                grant_id: g.grant_id.clone(),
                kind: g.kind.name(),
                priority: g.priority,
                effective_at: format_instant(g.effective_at),
                expires_at: g.expires_at.map(format_instant),
                start_credits: *start_credits,
                left_credits: g.remaining,
            })
            .collect(),
        timeline,
        unattached: p
            .unattached
            .iter()
            .map(|(d, _)| entry_view(inputs, d))
            .collect(),
        balance,
        invoice,
    })
}

/// The period's events in order, each with its draws and the credits left in all of the
/// period's grants after it.
fn timeline_of(p: &PeriodTrace) -> Result<Vec<TimelineRow>> {
    let mut balance = Milli::sum(p.grants.iter().map(|(_, s)| *s))?;
    let mut timeline = Vec::with_capacity(p.events.len());
    for e in &p.events {
        for d in &e.draws {
            balance = balance.checked_sub(d.taken)?;
        }
        timeline.push(TimelineRow {
            occurred_at: format_instant(e.work.usage.occurred_at),
            event_id: e.work.usage.event_id.to_string(),
            status: e.work.usage.status.name(),
            expected_credits: e.price.expected(),
            draws: draw_views(&p.grants, &e.draws),
            overage_credits: e.overage,
            balance_after: balance,
            verdict: verdict_label(e),
        });
    }
    Ok(timeline)
}

/// A period's invoice as the close writes it, with its lines and its period's renewal.
fn invoice_view(
    inputs: &census::Inputs,
    run: &AccountRun,
    i: &crate::close::InvoiceRow,
) -> InvoiceView {
    let renewal = run
        .result
        .renewals
        .iter()
        .find(|r| r.period_start == i.period_start);
    let money = |minor| crate::export::format_minor(minor, inputs.book.exponent);
    InvoiceView {
        invoice_id: i.invoice_id.clone(),
        currency: i.currency.clone(),
        plan_price: money(i.plan_price_minor),
        overage_amount: money(i.overage_amount_minor),
        total: money(i.total_minor),
        plan_price_minor: i.plan_price_minor,
        credits_used: i.credits_used,
        overage_credits: i.overage_credits,
        overage_amount_minor: i.overage_amount_minor,
        total_minor: i.total_minor,
        recorded_credits: i.recorded_credits,
        unreconciled_credits: i.unreconciled_credits,
        lines: run
            .result
            .invoice_lines
            .iter()
            .filter(|l| *l.invoice_id == *i.invoice_id)
            .cloned()
            .collect(),
        rollover_credits: renewal.map_or(Milli::ZERO, |r| r.rollover_credits),
        expired_credits: renewal.map_or(Milli::ZERO, |r| r.expired_credits),
        carried_grant_credits: renewal.map_or(Milli::ZERO, |r| r.carried_grant_credits),
        next_period: renewal.and_then(|r| {
            Some(format!(
                "[{}, {})",
                format_instant(r.next_period_start?),
                format_instant(r.next_period_end?)
            ))
        }),
    }
}

// ---- plain words --------------------------------------------------------------------------

fn opt_milli(m: Option<Milli>) -> String {
    m.map_or_else(|| "none (unpriced)".into(), |m| m.to_string())
}

fn grant_name(grant_id: &Option<String>, kind: &str) -> String {
    match grant_id {
        None => "plan credits".into(),
        Some(id) => format!("{kind} grant {}", q(id)),
    }
}

/// The explanation as a person reads it.
pub fn render_text(x: &Explanation) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} {} — {} as of {} (settle {} s)",
        x.target.kind,
        q(&x.target.id),
        x.command,
        x.as_of,
        x.settle_seconds
    );
    if !x.entry_rows.is_empty() {
        let _ = writeln!(
            t,
            "\nLedger rows with this entry_id ({}):",
            x.entry_rows.len()
        );
        for r in &x.entry_rows {
            write_seen(&mut t, "  ", r);
        }
    }
    if let Some(e) = &x.entry {
        write_entry(&mut t, e);
    }
    if !x.usage_rows.is_empty() {
        let _ = writeln!(
            t,
            "\nUsage rows with this event_id ({}):",
            x.usage_rows.len()
        );
        for r in &x.usage_rows {
            write_seen(&mut t, "  ", r);
        }
    }
    if let Some(e) = &x.event {
        write_event(&mut t, e);
    } else if x.target.kind == "event" {
        let _ = writeln!(
            t,
            "\nEvery copy was rejected: the event is not in any window."
        );
    }
    if let Some(a) = &x.account {
        write_account(&mut t, a);
    }
    t
}

fn write_seen(t: &mut String, indent: &str, r: &SeenRow) {
    let _ = write!(
        t,
        "{indent}{} row {}: {}",
        r.file,
        r.row,
        r.fate.replace('_', " ")
    );
    if let Some(reason) = r.reason {
        let _ = write!(t, " ({reason})");
    }
    if let Some(a) = &r.account_id {
        let _ = write!(t, ", account {}", q(a));
    }
    let _ = writeln!(t);
    if let Some(v) = &r.values {
        let _ = writeln!(t, "{indent}    {v}");
    }
    if let Some(d) = &r.detail {
        // The run's words, whose quoted ids are not escaped: one line all the same.
        let _ = writeln!(t, "{indent}    {}", crate::error::controls_escaped(d));
    }
}

fn write_entry(t: &mut String, e: &EntryExplanation) {
    let _ = writeln!(
        t,
        "\nEntry: {} — {}",
        e.placement.replace('_', " "),
        crate::error::controls_escaped(&e.placement_detail)
    );
    if let Some(p) = &e.period {
        let _ = writeln!(
            t,
            "  period [{}, {}) of plan {}",
            p.period_start,
            p.period_end,
            q(&p.plan_id)
        );
    }
    if let Some(v) = &e.verdict {
        let _ = writeln!(t, "  verdict: {v}");
    }
    write_discrepancies(t, &e.discrepancies);
}

fn write_discrepancies(t: &mut String, rows: &[DiscrepancyView]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(t, "  discrepancy rows written ({}):", rows.len());
    for d in rows {
        let _ = writeln!(
            t,
            "    {}: expected {}, recorded {}, delta {}{}",
            d.kind,
            opt_milli(d.expected_credits),
            d.recorded_credits,
            d.delta_credits
                .map_or_else(|| "none".into(), |m| m.to_string()),
            if d.entry_ids.is_empty() {
                String::new()
            } else {
                let ids: Vec<String> = d.entry_ids.iter().map(|id| q(id)).collect();
                format!(", entries {}", ids.join(", "))
            }
        );
    }
}

fn write_event(t: &mut String, e: &EventExplanation) {
    let _ = writeln!(
        t,
        "\nEvent {} of account {}: {}, quantity {}, {}, occurred {}",
        q(&e.event_id),
        q(&e.account_id),
        sku_text(&e.product, &e.action, e.model.as_deref()),
        e.quantity,
        e.status,
        e.occurred_at
    );
    let _ = writeln!(
        t,
        "  window: {} — {}",
        e.placement.replace('_', " "),
        crate::error::controls_escaped(&e.placement_detail)
    );
    if e.placement != "in_window" {
        return;
    }
    if let Some(late) = &e.late_from {
        // Only a succeeded, priced event has an invoice line (contract section 6, Close).
        let billed = match e.chargeable && e.rate.is_some() {
            true => "billed on this invoice as a prior-period line",
            false => "reconciled with this invoice's period (it costs nothing, so no invoice line)",
        };
        let _ = writeln!(
            t,
            "  late: it occurred in the period starting {late}, closed earlier; {billed}"
        );
    }
    if e.conflicting_copies {
        let _ = writeln!(t, "  its copies differ: reported conflicting_duplicate");
    }
    write_price(t, e);
    write_consumed(t, e);
    write_ledger_entries(t, &e.entries);
    let _ = writeln!(
        t,
        "  expected {}, recorded {} (debits + adjustments − refunds)",
        opt_milli(e.expected_credits),
        e.recorded_credits.unwrap_or_default()
    );
    let _ = writeln!(
        t,
        "  verdict: {} — {}",
        e.verdict.as_deref().unwrap_or("not in this run"),
        crate::error::controls_escaped(e.verdict_reason.as_deref().unwrap_or(""))
    );
    write_discrepancies(t, &e.discrepancies);
}

/// The event's price: its rate and arithmetic, or why it has none (not chargeable, or no
/// rate in effect).
fn write_price(t: &mut String, e: &EventExplanation) {
    match (&e.rate, &e.arithmetic) {
        (Some(r), Some(a)) => write_rate_and_arithmetic(t, e, r, a),
        _ if !e.chargeable => {
            let _ = writeln!(t, "  price: not chargeable ({}): expected 0", e.status);
        }
        _ => {
            let _ = writeln!(
                t,
                "  price: no rate of {} is in effect at {}: unpriced, consumes nothing",
                sku_text(&e.product, &e.action, e.model.as_deref()),
                e.occurred_at
            );
        }
    }
}

/// The rate chosen for a priced event, why that one, and its arithmetic step by step.
fn write_rate_and_arithmetic(
    t: &mut String,
    e: &EventExplanation,
    r: &RateView,
    a: &ArithmeticView,
) {
    let _ = writeln!(
        t,
        "  rate: {}, effective from {}",
        rate_choice(e, r),
        r.effective_from
    );
    let _ = writeln!(
        t,
        "        {} credits per {}, increment {}, minimum {}",
        r.credits_per_unit, r.unit, r.increment, r.minimum
    );
    let _ = writeln!(
        t,
        "  arithmetic: ceil({} / {}) = {} increments × {} = {} {}(s) × {} = {} credits{}; rounded to the thousandth: {} credits",
        a.quantity,
        r.increment,
        a.increments,
        r.increment,
        a.billed_quantity,
        r.unit,
        r.credits_per_unit,
        a.raw_credits,
        if a.minimum_applied {
            format!(", below the minimum {}, so {}", r.minimum, r.minimum)
        } else {
            String::new()
        },
        a.credits
    );
}

/// Why the event was priced by this rate: the model's own, the generic one as a fallback
/// for its model, or the generic one of an event without a model.
fn rate_choice(e: &EventExplanation, r: &RateView) -> String {
    match r.choice {
        "model" => format!(
            "the model's own rate ({})",
            name_text(r.model.as_deref().unwrap_or(""))
        ),
        "generic_fallback" => format!(
            "no rate for model {} in effect then, so the generic rate of {} / {}",
            e.model.as_deref().map_or_else(String::new, q),
            name_text(&r.product),
            name_text(&r.action)
        ),
        _ => format!(
            "the generic rate of {} / {} (no model)",
            name_text(&r.product),
            name_text(&r.action)
        ),
    }
}

/// The credits the event took from each grant, and its overage (billed or blocked);
/// nothing when it consumed nothing.
fn write_consumed(t: &mut String, e: &EventExplanation) {
    if e.grants.is_empty() && !e.overage_credits.is_positive() {
        return;
    }
    let _ = writeln!(t, "  consumed:");
    for g in &e.grants {
        let _ = writeln!(
            t,
            "    {} from {} ({} left)",
            g.taken,
            grant_name(&g.grant_id, g.kind),
            g.left
        );
    }
    if e.overage_credits.is_positive() {
        let block = e
            .period
            .as_ref()
            .is_some_and(|p| p.overage_price_per_credit.is_none());
        let _ = writeln!(
            t,
            "    {} overage (no grant left){}",
            e.overage_credits,
            if block {
                ": the plan blocks overage, reported over_limit_usage, not billed"
            } else {
                ": billed at the plan's price per credit"
            }
        );
    }
}

/// The event's ledger entries, one a line, or that it has none.
fn write_ledger_entries(t: &mut String, entries: &[EntryView]) {
    if entries.is_empty() {
        let _ = writeln!(t, "  ledger entries: none");
        return;
    }
    let _ = writeln!(t, "  ledger entries ({}):", entries.len());
    for d in entries {
        let _ = writeln!(
            t,
            "    {} {} {} of account {}, recorded {} ({} row {})",
            q(&d.entry_id),
            d.kind,
            d.credits,
            q(&d.account_id),
            d.recorded_at,
            d.file,
            d.row
        );
    }
}

fn write_account(t: &mut String, a: &AccountExplanation) {
    let _ = writeln!(t, "\nAccount {}", q(&a.account_id));
    let _ = writeln!(t, "  allocations ({}):", a.allocations.len());
    for al in &a.allocations {
        let _ = writeln!(
            t,
            "    [{}, {}) plan {}, {} credits, {}{} ({} row {})",
            al.period.period_start,
            al.period.period_end,
            q(&al.period.plan_id),
            al.period.included_credits,
            al.period.status,
            if al.covered { ", in this run" } else { "" },
            al.file,
            al.row
        );
    }
    if !a.rejected_rows.is_empty() {
        let _ = writeln!(t, "  rejected plan rows ({}):", a.rejected_rows.len());
        for r in &a.rejected_rows {
            write_seen(t, "    ", r);
        }
    }
    for p in &a.periods {
        write_period(t, p);
    }
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "Discrepancies of the account ({}):",
        a.discrepancies.len()
    );
    for d in &a.discrepancies {
        let _ = writeln!(
            t,
            "  {} {} expected {}, recorded {}",
            d.kind,
            d.event_id.as_deref().map_or_else(|| "(no event)".into(), q),
            opt_milli(d.expected_credits),
            d.recorded_credits
        );
    }
}

/// One period of the account: its grants, its timeline of events and unattached entries,
/// and its balance or invoice.
fn write_period(t: &mut String, p: &PeriodExplanation) {
    let _ = writeln!(
        t,
        "\nPeriod [{}, {}) of plan {}",
        p.period.period_start,
        p.period.period_end,
        q(&p.period.plan_id)
    );
    let _ = writeln!(t, "  grants, in consumption order:");
    for g in &p.grants {
        let _ = writeln!(
            t,
            "    {} (priority {}, from {}{}): {} at start, {} left",
            grant_name(&g.grant_id, g.kind),
            g.priority,
            g.effective_at,
            g.expires_at
                .as_ref()
                .map_or_else(|| ", never expires".into(), |e| format!(" until {e}")),
            g.start_credits,
            g.left_credits
        );
    }
    let _ = writeln!(t, "  timeline ({} events):", p.timeline.len());
    for e in &p.timeline {
        write_timeline_row(t, e);
    }
    for d in &p.unattached {
        let _ = writeln!(
            t,
            "    entry {} {} {} recorded {} (no event)",
            q(&d.entry_id),
            d.kind,
            d.credits,
            d.recorded_at
        );
    }
    if let Some(b) = &p.balance {
        let _ = writeln!(
            t,
            "  balance: granted {}, used {} (overage {}), remaining {}",
            b.granted_credits, b.used_credits, b.overage_credits, b.remaining_credits
        );
    }
    if let Some(i) = &p.invoice {
        write_invoice(t, i, p.period.overage_price_per_credit.as_deref());
    }
}

/// One event of a period's timeline: what it cost, what it drew, the balance after it.
fn write_timeline_row(t: &mut String, e: &TimelineRow) {
    let draws: Vec<String> = e
        .draws
        .iter()
        .map(|d| format!("{} from {}", d.taken, grant_name(&d.grant_id, d.kind)))
        .collect();
    let _ = writeln!(
        t,
        "    {} {} {} expected {}{}{} → balance {} [{}]",
        e.occurred_at,
        q(&e.event_id),
        e.status,
        opt_milli(e.expected_credits),
        if draws.is_empty() {
            String::new()
        } else {
            format!(": {}", draws.join(", "))
        },
        if e.overage_credits.is_positive() {
            format!(", {} overage", e.overage_credits)
        } else {
            String::new()
        },
        e.balance_after,
        e.verdict
    );
}

/// A period's invoice: its sum (`overage_price_per_credit`: `None` when the plan blocks
/// overage), the credits behind it, its lines and the renewal.
fn write_invoice(t: &mut String, i: &InvoiceView, overage_price_per_credit: Option<&str>) {
    let overage = match overage_price_per_credit {
        Some(price_per_credit) => format!(
            "overage {} credits × {price_per_credit} = {} {} (rounded half-even once per invoice)",
            i.overage_credits, i.overage_amount, i.currency
        ),
        None => format!("overage {} (the plan blocks overage)", i.overage_amount),
    };
    let _ = writeln!(
        t,
        "  invoice {}: plan {} {} + {overage} = total {} {}",
        q(&i.invoice_id),
        i.plan_price,
        i.currency,
        i.total,
        i.currency
    );
    let _ = writeln!(
        t,
        "    credits used {}, recorded {}, unreconciled {}",
        i.credits_used, i.recorded_credits, i.unreconciled_credits
    );
    for l in &i.lines {
        let _ = writeln!(
            t,
            "    line {}: {} events, quantity {}, {} credits",
            sku_text(&l.product, &l.action, l.model.as_deref()),
            l.event_count,
            l.quantity,
            l.credits
        );
    }
    let _ = writeln!(
        t,
        "    renewal: rolled over {}, expired {}, carried {}, next period {}",
        i.rollover_credits,
        i.expired_credits,
        i.carried_grant_credits,
        i.next_period.as_deref().unwrap_or("none (no renewal)")
    );
}

/// An event's product, action and model as explain writes them: `studio / prompt_to_video
/// / veo-3`, or `(no model)`.
fn sku_text(
    product: &dyn std::fmt::Display,
    action: &dyn std::fmt::Display,
    model: Option<&str>,
) -> String {
    format!(
        "{} / {} / {}",
        name_text(&product.to_string()),
        name_text(&action.to_string()),
        model.map_or(std::borrow::Cow::Borrowed("(no model)"), name_text)
    )
}

/// A product, action or model name as explain's text writes it: as it is, unless a
/// control character (a newline) would break the line or an invisible one reorder it
/// ([`crate::error::hides_or_reorders_text`]), then quoted and escaped as ids are.
fn name_text(name: &str) -> std::borrow::Cow<'_, str> {
    match name.chars().any(crate::error::escaped_when_shown) {
        true => std::borrow::Cow::Owned(q(name)),
        false => std::borrow::Cow::Borrowed(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name is written as it is, unless a control character would break the line.
    #[test]
    fn a_name_with_a_control_character_is_quoted_and_escaped() {
        assert_eq!(
            sku_text(&"studio", &"prompt_to_video", Some("veo-3")),
            "studio / prompt_to_video / veo-3"
        );
        assert_eq!(
            sku_text(&"stu\ndio", &"a\tb", None),
            "\"stu\\ndio\" / \"a\\tb\" / (no model)"
        );
        assert_eq!(
            sku_text(&"=x,\"y\"", &"act", Some("m\r")),
            "=x,\"y\" / act / \"m\\r\""
        );
    }
}
