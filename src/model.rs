//! Plain data types passed between the stages of the pipeline.

use crate::amount::Milli;
use crate::time::Micros;

/// The four input datasets, in the order rejects are written.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Dataset {
    Usage,
    Allocations,
    Grants,
    Debits,
}

impl Dataset {
    pub const ALL: [Dataset; 4] = [
        Dataset::Usage,
        Dataset::Allocations,
        Dataset::Grants,
        Dataset::Debits,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dataset::Usage => "usage",
            Dataset::Allocations => "allocations",
            Dataset::Grants => "grants",
            Dataset::Debits => "debits",
        }
    }
}

/// Why a row was not used. The names are the contract's `rejects.reason` values.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Reason {
    NullRequired,
    BadValue,
    NegativeQuantity,
    UnknownStatus,
    NoAllocation,
    OverlappingPeriod,
    UnknownPlan,
    ConflictingDuplicate,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::NullRequired => "null_required",
            Reason::BadValue => "bad_value",
            Reason::NegativeQuantity => "negative_quantity",
            Reason::UnknownStatus => "unknown_status",
            Reason::NoAllocation => "no_allocation",
            Reason::OverlappingPeriod => "overlapping_period",
            Reason::UnknownPlan => "unknown_plan",
            Reason::ConflictingDuplicate => "conflicting_duplicate",
        }
    }
}

/// A value quoted in a reject detail, cut to 64 characters so that a huge bad value does
/// not bloat `rejects` (the byte length tells how long it was).
pub fn quoted(value: &str) -> String {
    const SHOWN: usize = 64;
    if value.chars().count() <= SHOWN {
        return format!("\"{value}\"");
    }
    let head: String = value.chars().take(SHOWN).collect();
    format!("\"{head}…\" ({} bytes)", value.len())
}

/// Where a row came from: the index of its file in the dataset's sorted file list, and
/// its 0-based row in that file. Ordering by `RowRef` is ordering by (file path, row).
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct RowRef {
    pub file: u32,
    pub row: u64,
}

/// A row that was not used, with the contract's reason and a detail naming column and value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reject {
    pub dataset: Dataset,
    pub at: RowRef,
    pub reason: Reason,
    pub detail: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventStatus {
    Succeeded,
    Failed,
    Cancelled,
}

impl EventStatus {
    /// The inverse of `status as u8` (spill files).
    pub fn from_code(code: u8) -> Option<Self> {
        [Self::Succeeded, Self::Failed, Self::Cancelled]
            .into_iter()
            .find(|s| *s as u8 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            EventStatus::Succeeded => "succeeded",
            EventStatus::Failed => "failed",
            EventStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Succeeded, Self::Failed, Self::Cancelled]
            .into_iter()
            .find(|status| status.name() == s)
    }
}

/// A string shared by many rows (account, product, action, model): interned per batch
/// when a whole run reads them, per spill frame when a split run reads its rows back, so
/// the events of one account in a batch or frame hold one copy of its id.
pub type Shared = std::sync::Arc<str>;

/// An event or entry id: kept inline up to 24 bytes (no heap allocation per row for
/// typical ids), on the heap past that.
pub type Id = compact_str::CompactString;

/// A validated usage row (one copy of an event).
#[derive(Clone, Debug)]
pub struct UsageRow {
    pub at: RowRef,
    pub event_id: Id,
    pub account_id: Shared,
    pub product: Shared,
    pub action: Shared,
    /// `None` for a null or empty model.
    pub model: Option<Shared>,
    pub quantity: Milli,
    pub status: EventStatus,
    pub occurred_at: Micros,
    pub ingested_at: Option<Micros>,
}

impl UsageRow {
    /// The columns (other than `ingested_at`) in which two copies of an event differ.
    pub fn differing_fields(&self, other: &UsageRow) -> Vec<&'static str> {
        [
            ("event_id", self.event_id == other.event_id),
            ("account_id", self.account_id == other.account_id),
            ("product", self.product == other.product),
            ("action", self.action == other.action),
            ("model", self.model == other.model),
            ("quantity", self.quantity == other.quantity),
            ("status", self.status == other.status),
            ("occurred_at", self.occurred_at == other.occurred_at),
        ]
        .into_iter()
        .filter_map(|(name, equal)| (!equal).then_some(name))
        .collect()
    }

    /// Copies are one event when everything but `ingested_at` (and where they were read) is equal.
    pub fn same_event_as(&self, other: &UsageRow) -> bool {
        self.differing_fields(other).is_empty()
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AllocationStatus {
    Active,
    Cancelled,
}

impl AllocationStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(AllocationStatus::Active),
            "cancelled" => Some(AllocationStatus::Cancelled),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AllocationStatus::Active => "active",
            AllocationStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AllocationRow {
    pub at: RowRef,
    pub account_id: String,
    pub plan_id: String,
    pub period_start: Micros,
    pub period_end: Micros,
    pub included_credits: Milli,
    pub billing_anchor: Option<Micros>,
    pub status: AllocationStatus,
}

/// Grant kinds, in the order of the `balances` columns. `Plan` is the allocation's credits.
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum GrantKind {
    Rollover,
    Plan,
    Promo,
    Compensation,
    TopUp,
}

impl GrantKind {
    pub const ALL: [GrantKind; 5] = [
        GrantKind::Rollover,
        GrantKind::Plan,
        GrantKind::Promo,
        GrantKind::Compensation,
        GrantKind::TopUp,
    ];

    /// Kinds a `grants` row may have (`plan` comes only from allocations).
    pub fn parse_grant(s: &str) -> Option<Self> {
        match s {
            "rollover" => Some(GrantKind::Rollover),
            "promo" => Some(GrantKind::Promo),
            "compensation" => Some(GrantKind::Compensation),
            "top_up" => Some(GrantKind::TopUp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GrantKind::Rollover => "rollover",
            GrantKind::Plan => "plan",
            GrantKind::Promo => "promo",
            GrantKind::Compensation => "compensation",
            GrantKind::TopUp => "top_up",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The contract's default consumption priority (smaller first).
    pub fn default_priority(self) -> i64 {
        match self {
            GrantKind::Rollover => 0,
            GrantKind::Plan => 1,
            GrantKind::Promo | GrantKind::Compensation => 2,
            GrantKind::TopUp => 3,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GrantRow {
    pub at: RowRef,
    pub grant_id: String,
    pub account_id: String,
    pub kind: GrantKind,
    pub credits: Milli,
    pub effective_at: Micros,
    pub expires_at: Option<Micros>,
    /// As given in the input (null = the kind's default).
    pub priority: Option<i64>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Debit,
    Refund,
    Adjustment,
}

impl EntryKind {
    /// The inverse of `kind as u8` (spill files).
    pub fn from_code(code: u8) -> Option<Self> {
        [Self::Debit, Self::Refund, Self::Adjustment]
            .into_iter()
            .find(|k| *k as u8 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Debit => "debit",
            EntryKind::Refund => "refund",
            EntryKind::Adjustment => "adjustment",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Debit, Self::Refund, Self::Adjustment]
            .into_iter()
            .find(|kind| kind.name() == s)
    }
}

/// A ledger entry recorded by the online system.
#[derive(Clone, Debug)]
pub struct DebitRow {
    pub at: RowRef,
    pub entry_id: Id,
    pub account_id: Shared,
    pub event_id: Option<Id>,
    pub kind: EntryKind,
    pub credits: Milli,
    pub recorded_at: Micros,
}

impl DebitRow {
    /// The entry's signed effect on the recorded net: debits and adjustments add, refunds subtract.
    pub fn signed_credits(&self) -> Milli {
        match self.kind {
            EntryKind::Refund => Milli(-self.credits.0),
            EntryKind::Debit | EntryKind::Adjustment => self.credits,
        }
    }
}

/// Which periods a run covers.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The period containing as-of, up to as-of.
    Reconcile,
    /// Every period with `period_end` ≤ as-of.
    Close,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Reconcile => "reconcile",
            Mode::Close => "close",
        }
    }

    /// Whether the allocation period [start, end) is covered by a run at `as_of`.
    pub fn covers(self, period_start: Micros, period_end: Micros, as_of: Micros) -> bool {
        match self {
            Mode::Reconcile => period_start <= as_of && as_of < period_end,
            Mode::Close => period_end <= as_of,
        }
    }
}

/// Valid rows for unit tests: one account, product and action, no model; a test changes
/// what it looks at with struct update syntax (`UsageRow { quantity, ..UsageRow::sample(..) }`).
#[cfg(test)]
impl UsageRow {
    pub fn sample(row: u64, event_id: &str) -> UsageRow {
        UsageRow {
            at: RowRef { file: 0, row },
            event_id: Id::new(event_id),
            account_id: "acct-1".into(),
            product: "video".into(),
            action: "generate".into(),
            model: None,
            quantity: Milli(1000),
            status: EventStatus::Succeeded,
            occurred_at: 1_000,
            ingested_at: None,
        }
    }
}

#[cfg(test)]
impl DebitRow {
    /// A debit of 1 credit (entry id `entry-ROW`) naming `event_id`.
    pub fn sample(row: u64, event_id: Option<&str>) -> DebitRow {
        DebitRow {
            at: RowRef { file: 0, row },
            entry_id: Id::new(format!("entry-{row}")),
            account_id: "acct-1".into(),
            event_id: event_id.map(Id::new),
            kind: EntryKind::Debit,
            credits: Milli(1000),
            recorded_at: 1_000,
        }
    }
}
