//! What a run is given and what it yields, the plain data between the stages: the
//! settings ([`RunSettings`]), the rows one shard computed ([`Partial`], from
//! [`crate::pipeline::compute`]) and everything ready to be written ([`RunOutput`], from
//! [`crate::collect::finish`]). Kept apart so that data flows one way: pipeline → collect →
//! write, each depending on this module, none on the stage after it.

use crate::close::{InvoiceRow, RenewalRow};
use crate::engine::{AccountResult, BalanceRow, Totals};
use crate::load::InputFile;
use crate::model::*;
use crate::pricebook::PriceBook;
use crate::reconcile::DiscrepancyRow;
use crate::runs::{BilledRun, LineRun};
use crate::spill;
use crate::time::Micros;
use std::path::PathBuf;
use std::sync::Arc;

/// `buckets` of a run that sizes its account buckets itself: a group's accounts are split
/// into buckets of consecutive accounts holding about 32K rows each (see `window`).
pub const AUTOMATIC_BUCKETS: u32 = 0;

/// `settle` of a run given none (no `--settle`, no job key): 15 minutes.
pub const DEFAULT_SETTLE_MICROS: i64 = 15 * 60 * 1_000_000;

/// The longest `--settle`: 7 days. Settle holds back events whose debit may still be on
/// its way; a longer one would report a week's missing debits as merely pending, and is
/// more likely a slip of the unit (`15M` is 15 months, `15m` 15 minutes).
pub const MAX_SETTLE_MICROS: i64 = 7 * 24 * 3600 * 1_000_000;

/// Default working-memory budget: 3 GiB (`route::groups_for` picks the group count from
/// it). The 10M-event bench reconcile fits in one group; a 100M-event month is split (26
/// groups reconcile, 53 close) and peaks under 4 GiB, not under the budget itself
/// (`benches/bench.sh 100m` and runs by hand: benches/README.md, "The README's performance
/// text of 2026-12-03", and the later benches under "Figures").
pub const DEFAULT_MEMORY_BUDGET_BYTES: u64 = 3 << 30;

#[derive(Clone, Debug)]
pub struct RunSettings {
    pub data: PathBuf,
    pub mode: Mode,
    pub as_of: Micros,
    pub settle_micros: i64,
    /// Account buckets of a group, the units of parallel work; [`AUTOMATIC_BUCKETS`]: sized
    /// from the group's rows.
    pub buckets: u32,
    /// Number of account groups processed one after another (None: sized from
    /// `memory_budget_bytes`).
    pub groups: Option<u32>,
    /// Working memory a run aims to stay within (it picks the group count from it).
    pub memory_budget_bytes: u64,
    /// Earlier closes (their closed periods and billed events); empty without `--history`.
    pub history: std::sync::Arc<crate::history::History>,
    /// `tally explain`: keep what the window gave this account (`Partial::traced`).
    pub trace_account: Option<String>,
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

impl UsageCounts {
    /// The contract's first conservation equation: usage rows read = events in the window
    /// + identical duplicates + rejected rows + rows outside the window.
    pub fn add_up(&self) -> bool {
        // In 128 bits: a merge's counts come from shards' files, and four of them may add
        // up past a u64 there.
        let parts = [
            self.events_in_window,
            self.identical_duplicates,
            self.rejected,
            self.outside_window,
        ];
        u128::from(self.rows_read) == parts.into_iter().map(u128::from).sum::<u128>()
    }
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
    /// The rejected allocation rows whose account-period the run does not cover, sorted
    /// (see [`crate::window::covers`]).
    pub rejected_allocations_not_covered: Vec<RowRef>,
    pub balances: Vec<BalanceRow>,
    pub invoices: Vec<InvoiceRow>,
    pub renewals: Vec<RenewalRow>,
    pub allocations_next: Vec<AllocationRow>,
    pub grants_next: Vec<GrantRow>,
    /// `billed_events` (close), as runs merged by account when written.
    pub billed: Vec<BilledRun>,
    /// `invoice_lines` (close), likewise.
    pub lines: Vec<LineRun>,
    /// Folders of run files, removed once the run output is dropped.
    pub scratch: Vec<Arc<spill::SpillDir>>,
    pub totals: Totals,
    /// Figures only `report.html` shows (credits by product, top accounts).
    pub breakdown: crate::breakdown::Breakdown,
}

/// The rows one shard computed, before they are put in output order. A whole run is
/// one partial; `tally merge` finishes the partials of every shard the same way.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Partial {
    /// Per account, in no particular order.
    pub results: Vec<(Shared, AccountResult)>,
    pub rejects: Vec<Reject>,
    /// Rows of each dataset this shard accounts for (each row is accounted for by exactly
    /// one shard: the one that processed or rejected it).
    pub rows_read: [u64; 4],
    pub identical_duplicates: u64,
    pub outside_usage: u64,
    pub outside_entries: u64,
    /// `billed_events` (close), one run per group, each in account order.
    pub billed: Vec<BilledRun>,
    /// `invoice_lines` (close), likewise.
    pub lines: Vec<LineRun>,
    /// Credits by product/action/model over this shard's accounts (for `report.html`).
    #[serde(default)]
    pub mix: crate::breakdown::Mix,
    /// Rejected allocation rows whose account-period the run does not cover (see
    /// [`crate::window::covers`]), in the order they were rejected (sorted when the partials
    /// are put in order): not counted by the warning and the alert.
    #[serde(default)]
    pub rejected_allocations_not_covered: Vec<RowRef>,
    /// Late events no close will bill (their accounts have no later period), for this
    /// shard's warning ([`crate::window::UnbillableLate`]; a log line, not an output).
    #[serde(skip)]
    pub unbillable_late: crate::window::UnbillableLate,
    /// The folder holding this partial's run files, kept until the outputs are written.
    #[serde(skip)]
    pub scratch: Option<Arc<spill::SpillDir>>,
    /// With `RunSettings::trace_account`: that account's inputs and what the run did.
    #[serde(skip)]
    pub traced: Option<Traced>,
}

/// One account's valid plan rows and grants, and what the engine did with it, for
/// `tally explain`.
#[derive(Default)]
pub struct Traced {
    /// Every allocation and grant reject of the run.
    pub plan_rejects: Vec<Reject>,
    pub allocations: Vec<AllocationRow>,
    pub grants: Vec<GrantRow>,
    /// The account's result and its periods' traces (none without a covered period).
    pub result: Option<AccountResult>,
    pub periods: Vec<crate::engine::PeriodTrace>,
}
