//! Stage 2b: place every event and ledger entry: in the run's window (attached to its
//! account-period), outside it, or rejected `no_allocation` (contract section 7, "Window").
//!
//! A group's accounts are split into buckets of consecutive accounts (by code, which is
//! by account id). Each bucket gathers its events and entries from the group's rows
//! (which stay where they were loaded) into a small flat [`BucketWork`]: every covered
//! account-period's events together in consumption order ((occurred_at, event_id)), each
//! event's ledger entries after it in that order, and each period's unattached entries.
//! Buckets are placed and processed independently, in parallel, each in cache.

use crate::dict::{Dicts, Ids};
use crate::history::History;
use crate::model::*;
use crate::time::{format_instant, Micros};
use crate::validate::{Allocations, FastHash, HashIndex};
use rayon::prelude::*;
use std::collections::HashSet;
use std::ops::Range;

/// An event of the window, with where its ledger entries are.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct EventWork {
    pub usage: Usage,
    /// Its entries: `BucketWork::entries[first_entry..first_entry + entry_count]`.
    pub first_entry: u32,
    pub entry_count: u32,
    /// For a late event, the start of the earlier-closed period it occurred in
    /// ([`NO_INSTANT`] otherwise). It is reported `late_event` and billed in this period.
    pub late_from: Micros,
}

impl EventWork {
    pub fn late_from(&self) -> Option<Micros> {
        (self.late_from != NO_INSTANT).then_some(self.late_from)
    }

    pub fn entries(&self) -> Range<usize> {
        let first = self.first_entry as usize;
        first..first + self.entry_count as usize
    }
}

/// A covered account-period and where its rows are in its bucket's work.
#[derive(Clone, Debug)]
pub struct PeriodWork<'a> {
    pub allocation: &'a AllocationRow,
    /// Its events: `BucketWork::events[events]`, by (occurred_at, event_id).
    pub events: Range<usize>,
    /// Entries attached to no event, placed here by their own account and `recorded_at`:
    /// `BucketWork::unattached[unattached]`, by (file, row).
    pub unattached: Range<usize>,
}

/// Everything one account contributes to a run; accounts are independent of each other.
#[derive(Clone, Debug)]
pub struct AccountWork<'a> {
    /// Its code in the run's dictionaries.
    pub account: u32,
    /// Covered periods, by `period_start`.
    pub periods: Vec<PeriodWork<'a>>,
    /// Valid grants of the account, in input order.
    pub grants: &'a [GrantRow],
}

/// A bucket's work, ready for the engine.
pub struct BucketWork<'a> {
    /// Accounts with covered periods, by code (= by account id).
    pub accounts: Vec<AccountWork<'a>>,
    pub events: Vec<EventWork>,
    pub entries: Vec<Debit>,
    pub unattached: Vec<Debit>,
    /// The ids of `events` (usage) and of `entries` and `unattached` (ledger).
    pub usage_ids: &'a Ids,
    pub debit_ids: &'a Ids,
}

/// Counts of rows that were read but not used by this run.
#[derive(Clone, Debug, Default)]
pub struct Outside {
    pub usage_rows: u64,
    pub ledger_entries: u64,
    /// Events or unattached entries of an account another group owns: a routing bug,
    /// checked by the pipeline (always 0).
    pub misrouted: u64,
    /// Late events (among `usage_rows`) that no close will bill: see [`UnbillableLate`].
    pub unbillable_late: UnbillableLate,
}

impl Outside {
    pub fn add(&mut self, o: &Outside) {
        self.usage_rows += o.usage_rows;
        self.ledger_entries += o.ledger_entries;
        self.misrouted += o.misrouted;
        self.unbillable_late.add(&o.unbillable_late);
    }
}

/// Events that occurred in a closed period and no earlier close billed, of accounts with
/// no allocation period in the data root that starts at or after that period's end and is
/// not closed itself (an account that does not renew, a cancelled one, or one whose next
/// allocation is not in the data root yet): a late event is billed on the account's next
/// invoice, and such an account has none, so no close bills them. Counted for the run's
/// warning, with the least (account, event) of them as its example, so that the line is
/// the same every run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnbillableLate {
    pub events: u64,
    pub first: Option<(String, String)>,
}

impl UnbillableLate {
    fn record(&mut self, account_id: &str, event_id: &str) {
        self.events += 1;
        self.keep_the_least(account_id, event_id);
    }

    pub fn add(&mut self, other: &UnbillableLate) {
        self.events += other.events;
        if let Some((account_id, event_id)) = &other.first {
            self.keep_the_least(account_id, event_id);
        }
    }

    /// `(account_id, event_id)` as the example if it is less than the one kept (copied
    /// only then).
    fn keep_the_least(&mut self, account_id: &str, event_id: &str) {
        let less = |(a, e): &(String, String)| (account_id, event_id) < (a.as_str(), e.as_str());
        if self.first.as_ref().is_none_or(less) {
            self.first = Some((account_id.to_string(), event_id.to_string()));
        }
    }
}

/// Where an event goes.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Placement {
    /// The covered account-period (its slot: the bucket's periods numbered in order).
    InWindow(u32),
    /// A late event: billed in this slot; it occurred in the earlier-closed period
    /// starting at the given instant.
    Late(u32, Micros),
    NoAllocation,
    Outside,
}

/// The allocation of `allocs` (sorted, non-overlapping) containing `t`.
fn containing(allocs: &[AllocationRow], t: Micros) -> Option<usize> {
    let i = allocs
        .partition_point(|a| a.period_start <= t)
        .checked_sub(1)?;
    (t < allocs[i].period_end).then_some(i)
}

const NONE: u32 = u32::MAX;

/// Which periods a run covers: its mode, as-of, and the periods earlier closes closed.
pub struct RunWindow<'a> {
    pub mode: Mode,
    pub as_of: Micros,
    pub history: &'a History,
    /// Events an earlier close billed, among those this run may find late.
    pub billed: &'a HashSet<String, FastHash>,
    /// Events of the group an earlier close saw that have a valid copy in a closed period
    /// (see [`seen_in_closed_periods`]).
    pub seen: &'a HashSet<String, FastHash>,
    /// Whether an account (by code) is processed here (its partition is in this group
    /// and shard).
    pub owns: &'a (dyn Fn(u32) -> bool + Sync),
    pub dicts: &'a Dicts,
}

/// The codes of the accounts with valid allocations of each group, each list in order:
/// made once per run.
pub fn accounts_by_group(
    allocations: &Allocations,
    groups: usize,
    group_of: &dyn Fn(&str) -> Option<usize>,
) -> Vec<Vec<u32>> {
    let mut by_group: Vec<Vec<u32>> = vec![Vec::new(); groups];
    for (code, name) in allocations.accounts.iter().enumerate() {
        if let Some(group) = group_of(name) {
            by_group[group].push(code as u32);
        }
    }
    by_group
}

/// The allocation containing `t`, if an earlier close closed it.
fn closed_period<'a>(
    allocations: &'a Allocations,
    history: &History,
    account_id: &str,
    t: Micros,
) -> Option<&'a AllocationRow> {
    if history.closed.is_empty() {
        return None;
    }
    let allocs = allocations.get(account_id)?;
    let alloc = &allocs[containing(allocs, t)?];
    history
        .is_closed(account_id, alloc.period_start)
        .then_some(alloc)
}

/// Whether a run (`mode` at `as_of`, the earlier closes in `history`) covers an
/// account-period: the mode's rule ([`Mode::covers`]), less the periods an earlier close
/// closed. The one rule for the periods a run computes and for the rejected allocation rows
/// it warns and alerts of (`pipeline`).
pub fn covers(
    mode: Mode,
    as_of: Micros,
    history: &History,
    account_id: &str,
    period_start: Micros,
    period_end: Micros,
) -> bool {
    mode.covers(period_start, period_end, as_of) && !history.is_closed(account_id, period_start)
}

/// Whether `t` falls in an account-period an earlier close closed: an event there may be
/// late (a superset: the run decides with the winning copy's account).
pub fn in_closed_period(
    allocations: &Allocations,
    history: &History,
    account_id: &str,
    t: Micros,
) -> bool {
    closed_period(allocations, history, account_id, t).is_some()
}

/// The events among `usage` (a group's valid rows, every copy of its events, after dedup)
/// that an earlier close saw (`billed`) and that have a copy in a closed period: what
/// [`RunWindow::seen`] holds. Decided from the valid copies only, so that a run in one
/// group and a split run (whose light pass also sees rows rejected later) agree. Only the
/// losing copies are looked at: the set is asked about winners in covered periods, which
/// are not closed, so their copy in a closed period is another row, a loser (looking up
/// every row's period would cost each group a pass over all its rows when a closed month
/// is among the inputs).
pub fn seen_in_closed_periods(
    usage: &[Usage],
    usage_ids: &Ids,
    dicts: &Dicts,
    allocations: &Allocations,
    history: &History,
    billed: &HashSet<String, FastHash>,
) -> HashSet<String, FastHash> {
    if billed.is_empty() {
        return HashSet::default();
    }
    usage
        .iter()
        .filter(|u| u.lost())
        .filter(|u| {
            in_closed_period(
                allocations,
                history,
                dicts.account(u.account),
                u.occurred_at,
            )
        })
        .filter_map(|u| usage_ids.str(u.id).ok())
        .filter(|event_id| billed.contains(*event_id))
        .map(str::to_string)
        .collect()
}

const NO_EVENT: u32 = u32::MAX;

/// For every entry, the row of the event its `event_id` names (`NO_EVENT` if none): the
/// entries' event id hashes matched with dedup's index of the usage rows (winning copies
/// only). Repeated entries name no event.
///
/// Equal hashes must still be compared as strings, but comparing them as they are matched
/// reads two rows at random per entry (a cache miss each). So an entry whose hash names a
/// single event is matched unchecked, and the ids are compared afterwards in entry order:
/// the entries are read in sequence and their events, logged in about the same order,
/// nearly so. Only a hash that names two or more events (a 64-bit collision) is resolved
/// by comparing strings while matching.
fn join_on_event_id(
    events: &[Usage],
    usage_ids: &Ids,
    index: &HashIndex,
    debits: &[Debit],
    debit_ids: &Ids,
) -> Vec<u32> {
    let entries = HashIndex::of(debits, index.bits(), |d| {
        (d.has_event() && !d.repeated()).then_some(d.event_hash)
    });
    let event_id_of = |entry: u32| debit_ids.bytes(debits[entry as usize].event_id);
    let same_id =
        |event: u32, entry: u32| usage_ids.bytes(events[event as usize].id) == event_id_of(entry);
    let matches = index.matches(&entries, &same_id);
    drop(entries);
    let mut found = vec![NO_EVENT; debits.len()];
    for &(entry, event) in matches.iter().flatten() {
        found[entry as usize] = event;
    }
    // The check of single-event matches: an entry whose id only shares the hash of an
    // event names no event.
    found.par_iter_mut().enumerate().for_each(|(entry, event)| {
        if *event != NO_EVENT && !same_id(*event, entry as u32) {
            *event = NO_EVENT;
        }
    });
    found
}

/// A group's rows after validation, and what its buckets share.
pub struct Group<'a> {
    pub window: RunWindow<'a>,
    pub allocations: &'a Allocations,
    /// Valid grants by account code.
    pub grants: &'a [Vec<GrantRow>],
    /// The group's accounts with valid allocations, by code.
    pub accounts: &'a [u32],
    pub usage: &'a [Usage],
    pub usage_ids: &'a Ids,
    pub debits: &'a [Debit],
    pub debit_ids: &'a Ids,
    /// For each known account code, its bucket (`NONE`: not one of the group's).
    bucket_of_code: Vec<u32>,
    /// For each known account code of the group, its index among its bucket's accounts.
    index_in_bucket: Vec<u32>,
    buckets: usize,
    /// For each ledger row, the row of the event it is attached to (`NO_EVENT`: none).
    event_of_entry: Vec<u32>,
}

/// Rows a bucket holds on average: small enough that a bucket's work stays in cache.
const ROWS_PER_BUCKET: usize = 32 * 1024;

/// The rows of each bucket: indices into the group's usage and ledger rows.
pub struct BucketRows {
    pub usage: crate::partition::Filed<u32>,
    pub debits: crate::partition::Filed<u32>,
    /// For each usage row, its index among its bucket's (`u32::MAX` for a lost copy).
    pub local_of_row: Vec<u32>,
}

/// An account's covered periods (`slots[i]` is allocation `i`'s slot, `NONE` if it is not
/// covered; `covered` of them are), in a vector of their number: a reconcile covers one of
/// an account's months of allocations, and a vector grown by `push` keeps room for 4.
fn covered_periods<'a>(
    allocs: &'a [AllocationRow],
    slots: &[u32],
    covered: usize,
) -> Vec<PeriodWork<'a>> {
    let mut periods = Vec::with_capacity(covered);
    periods.extend(
        (allocs.iter().zip(slots))
            .filter(|(_, &slot)| slot != NONE)
            .map(|(allocation, _)| PeriodWork {
                allocation,
                events: 0..0,
                unattached: 0..0,
            }),
    );
    assert_eq!(periods.len(), covered, "covered periods miscounted");
    periods
}

impl<'a> Group<'a> {
    /// Join the group's entries to its events and split its accounts into buckets
    /// (`buckets`: how many; `None`: about one per `ROWS_PER_BUCKET` rows).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        window: RunWindow<'a>,
        allocations: &'a Allocations,
        grants: &'a [Vec<GrantRow>],
        accounts: &'a [u32],
        (usage, usage_ids): (&'a [Usage], &'a Ids),
        (debits, debit_ids): (&'a [Debit], &'a Ids),
        index: &HashIndex,
        buckets: Option<usize>,
    ) -> Group<'a> {
        let event_of_entry = join_on_event_id(usage, usage_ids, index, debits, debit_ids);
        let buckets = buckets
            .unwrap_or((usage.len() + debits.len()) / ROWS_PER_BUCKET)
            .clamp(1, accounts.len().max(1));
        let mut bucket_of_code = vec![NONE; allocations.len()];
        let mut index_in_bucket = vec![NONE; allocations.len()];
        let first = |b: usize| (b * accounts.len()).div_ceil(buckets);
        for (i, &code) in accounts.iter().enumerate() {
            let bucket = i * buckets / accounts.len();
            bucket_of_code[code as usize] = bucket as u32;
            index_in_bucket[code as usize] = (i - first(bucket)) as u32;
        }
        Group {
            window,
            allocations,
            grants,
            accounts,
            usage,
            usage_ids,
            debits,
            debit_ids,
            bucket_of_code,
            index_in_bucket,
            buckets,
            event_of_entry,
        }
    }

    /// Buckets of accounts: `0..buckets()`, and one more for the rows of accounts the
    /// group does not have (accounts without allocations, or another group's).
    pub fn buckets(&self) -> usize {
        self.buckets
    }

    /// The bucket of an account code (the last one for an account not of the group).
    fn bucket_of(&self, account: u32) -> usize {
        match self.bucket_of_code.get(account as usize) {
            Some(&b) if b != NONE => b as usize,
            _ => self.buckets,
        }
    }

    /// The accounts of bucket `b` (none for the last).
    fn accounts_of(&self, b: usize) -> &'a [u32] {
        let n = self.accounts.len();
        if b >= self.buckets {
            return &[];
        }
        // The inverse of `i * buckets / n`: the first index of each bucket.
        let first = |b: usize| (b * n).div_ceil(self.buckets);
        &self.accounts[first(b)..first(b + 1)]
    }

    /// The rows of every bucket: events by their account's bucket, entries by their
    /// event's (attached) or their own account's (unattached). Lost copies and repeated
    /// entries are left out.
    pub fn bucket_rows(&self) -> BucketRows {
        let buckets = self.buckets + 1;
        let usage_bucket: Vec<u32> = self
            .usage
            .par_iter()
            .map(|u| match u.lost() {
                true => NONE,
                false => self.bucket_of(u.account) as u32,
            })
            .collect();
        let usage = split_by(buckets, &usage_bucket);
        // An attached entry's bucket is its event's (looked up in the events' buckets,
        // 4 bytes a row, not in the rows themselves).
        let debit_bucket: Vec<u32> = self
            .debits
            .par_iter()
            .zip(self.event_of_entry.par_iter())
            .map(|(d, &event)| match (d.repeated(), event) {
                (true, _) => NONE,
                (false, NO_EVENT) => self.bucket_of(d.account) as u32,
                (false, event) => usage_bucket[event as usize],
            })
            .collect();
        drop(usage_bucket);
        let debits = split_by(buckets, &debit_bucket);
        drop(debit_bucket);
        let mut local_of_row = vec![NONE; self.usage.len()];
        for b in 0..usage.partitions() {
            for (k, &row) in usage.partition(b).iter().enumerate() {
                local_of_row[row as usize] = k as u32;
            }
        }
        BucketRows {
            usage,
            debits,
            local_of_row,
        }
    }
}

/// Row indices `0..rows` by bucket (in row order within a bucket); `None`: left out.
/// Row indices by bucket (in row order within a bucket), from each row's bucket (`NONE`:
/// left out).
fn split_by(buckets: usize, bucket_of_row: &[u32]) -> crate::partition::Filed<u32> {
    crate::partition::file(bucket_of_row.len(), buckets, |row| {
        let bucket = bucket_of_row[row];
        (bucket != NONE).then_some((bucket as usize, row as u32))
    })
}

/// A bucket placed: its work, the rows it rejected and those outside the window.
pub struct Placed<'a> {
    pub work: BucketWork<'a>,
    pub rejects: Vec<Reject>,
    pub outside: Outside,
}

/// The bucket's accounts with covered periods, and the slot of each of their
/// allocations (`NONE`: not covered).
struct Slots {
    /// Per account of the bucket (its place in `Group::accounts_of`): its first entry in
    /// `slot_of_alloc`, or `NONE` without a covered period.
    first_alloc: Vec<u32>,
    slot_of_alloc: Vec<u32>,
    /// Per account of the bucket: its index in `BucketWork::accounts`.
    work_of: Vec<u32>,
}

impl<'a> Group<'a> {
    /// The bucket's covered periods (their slots numbered account by account, period by
    /// period).
    fn covered(&self, bucket_accounts: &[u32]) -> (Vec<AccountWork<'a>>, Slots) {
        let window = &self.window;
        // Room for every account of the bucket up front (most are covered): grown by
        // doubling, the vector was copied again and again and kept up to twice the room.
        let mut accounts = Vec::with_capacity(bucket_accounts.len());
        let mut slots = Slots {
            first_alloc: Vec::with_capacity(bucket_accounts.len()),
            slot_of_alloc: Vec::new(),
            work_of: Vec::with_capacity(bucket_accounts.len()),
        };
        let mut next_slot = 0u32;
        for &code in bucket_accounts {
            let allocs = self.allocations.of(code);
            let account_id = &self.allocations.accounts[code as usize];
            let first = slots.slot_of_alloc.len();
            let first_slot = next_slot;
            for a in allocs {
                let (start, end) = (a.period_start, a.period_end);
                if covers(
                    window.mode,
                    window.as_of,
                    window.history,
                    account_id,
                    start,
                    end,
                ) {
                    slots.slot_of_alloc.push(next_slot);
                    next_slot += 1;
                } else {
                    slots.slot_of_alloc.push(NONE);
                }
            }
            let periods = covered_periods(
                allocs,
                &slots.slot_of_alloc[first..],
                (next_slot - first_slot) as usize,
            );
            if periods.is_empty() {
                slots.slot_of_alloc.truncate(first);
                slots.first_alloc.push(NONE);
                slots.work_of.push(NONE);
                continue;
            }
            slots.first_alloc.push(first as u32);
            slots.work_of.push(accounts.len() as u32);
            accounts.push(AccountWork {
                account: code,
                periods,
                grants: self.grants.get(code as usize).map_or(&[], Vec::as_slice),
            });
        }
        (accounts, slots)
    }

    /// Place an instant of an account: in a covered period (its slot), in no allocation,
    /// or elsewhere. An account that is not the bucket's reads as having no allocation
    /// (the caller counts such rows as misrouted when another group owns them).
    fn place_instant(&self, bucket: usize, slots: &Slots, account: u32, t: Micros) -> Placement {
        if self.bucket_of(account) != bucket || bucket == self.buckets {
            return Placement::NoAllocation;
        }
        let Some(alloc) = self.allocations.containing(account, t) else {
            return Placement::NoAllocation;
        };
        let index = self.index_in_bucket[account as usize] as usize;
        match slots.first_alloc[index] {
            NONE => Placement::Outside,
            first => match slots.slot_of_alloc[first as usize + alloc] {
                NONE => Placement::Outside,
                slot => Placement::InWindow(slot),
            },
        }
    }

    /// An event outside the run's periods that occurred in a period an earlier close
    /// already closed, and was not billed there: billed in the account's first covered
    /// period that starts at or after that period's end (if this run covers one).
    fn place_late(
        &self,
        bucket: usize,
        slots: &Slots,
        accounts: &[AccountWork<'_>],
        usage: &Usage,
        unbillable: &mut UnbillableLate,
    ) -> Option<Placement> {
        let window = &self.window;
        let account_id = window.dicts.account(usage.account);
        let closed = closed_period(
            self.allocations,
            window.history,
            account_id,
            usage.occurred_at,
        )?;
        let event_id = self.usage_ids.str(usage.id).ok()?;
        if window.billed.contains(event_id) {
            return None;
        }
        if self.bucket_of(usage.account) != bucket {
            return None;
        }
        // A period after the closed one that a close has closed too bills nothing more.
        let later = |allocs: &Vec<AllocationRow>| {
            (allocs.iter()).any(|a| {
                a.period_start >= closed.period_end
                    && !window.history.is_closed(account_id, a.period_start)
            })
        };
        if !self.allocations.get(account_id).is_some_and(later) {
            if (window.owns)(usage.account) {
                unbillable.record(account_id, event_id);
            }
            return None;
        }
        let index = self.index_in_bucket[usage.account as usize] as usize;
        let work = slots.work_of[index];
        if work == NONE {
            return None;
        }
        let first_slot = slots.slot_of_alloc[slots.first_alloc[index] as usize..]
            .iter()
            .copied()
            .find(|&s| s != NONE)?;
        let position = accounts[work as usize]
            .periods
            .iter()
            .position(|p| p.allocation.period_start >= closed.period_end)?;
        Some(Placement::Late(
            first_slot + position as u32,
            closed.period_start,
        ))
    }

    /// An event an earlier close saw (its `billed_events.parquet` lists the id) belongs to
    /// that close: a copy that won the dedup since and names an instant in a period this
    /// run covers is not billed again (it stays outside, its entries with it), while a
    /// valid copy of it in a closed period is among the inputs.
    fn seen_by_an_earlier_close(&self, usage: &Usage) -> bool {
        let seen = self.window.seen;
        !seen.is_empty()
            && self
                .usage_ids
                .str(usage.id)
                .is_ok_and(|event_id| seen.contains(event_id))
    }

    /// Place bucket `bucket`'s events and entries (`usage_rows`, `debit_rows`: its rows from
    /// [`Group::bucket_rows`]; `local_of_row`: each usage row's index in its bucket).
    pub fn place(
        &self,
        bucket: usize,
        usage_rows: &[u32],
        debit_rows: &[u32],
        local_of_row: &[u32],
    ) -> Placed<'a> {
        let bucket_accounts = self.accounts_of(bucket);
        let (mut accounts, slots) = self.covered(bucket_accounts);
        let slot_count = slots.slot_of_alloc.iter().filter(|&&s| s != NONE).count();
        let mut left = LeftOut::default();
        // The bucket's rows, gathered once (the group's rows are read in row order).
        let rows = GatheredRows {
            usage: usage_rows.iter().map(|&r| self.usage[r as usize]).collect(),
            debits: debit_rows
                .iter()
                .map(|&r| self.debits[r as usize])
                .collect(),
            debit_rows,
            local_of_row,
        };
        let placements = self.place_events(
            bucket,
            &slots,
            &accounts,
            &rows.usage,
            &mut left.outside.unbillable_late,
        );
        self.leave_out_unplaced_events(&rows.usage, &placements, &mut left);
        let order = EventOrder::new(&placements, slot_count, &rows.usage, self.usage_ids);
        let targets = self.target_entries(bucket, &slots, &rows, &placements, &order, &mut left);
        let (events, entries, unattached) = gather_work(&rows, &placements, &order, &targets);

        // Ranges of every period (slots are numbered account by account, period by period).
        let mut slot = 0;
        for period in accounts.iter_mut().flat_map(|a| a.periods.iter_mut()) {
            period.events = order.event_start[slot]..order.event_start[slot + 1];
            period.unattached = targets.unattached_start[slot]..targets.unattached_start[slot + 1];
            slot += 1;
        }
        assert_eq!(slot, slot_count, "one slot per covered period");
        Placed {
            work: BucketWork {
                accounts,
                events,
                entries,
                unattached,
                usage_ids: self.usage_ids,
                debit_ids: self.debit_ids,
            },
            rejects: left.rejects,
            outside: left.outside,
        }
    }

    /// Where each of the bucket's events goes: a covered period (late or not), no
    /// allocation, or outside the run.
    fn place_events(
        &self,
        bucket: usize,
        slots: &Slots,
        accounts: &[AccountWork<'_>],
        usage: &[Usage],
        unbillable: &mut UnbillableLate,
    ) -> Vec<Placement> {
        let as_of = self.window.as_of;
        let may_be_late = !self.window.history.closed.is_empty();
        usage
            .iter()
            .map(|usage| {
                if usage.occurred_at >= as_of {
                    return Placement::Outside;
                }
                let placement = self.place_instant(bucket, slots, usage.account, usage.occurred_at);
                match placement {
                    Placement::Outside if may_be_late => self
                        .place_late(bucket, slots, accounts, usage, unbillable)
                        .unwrap_or(placement),
                    Placement::InWindow(_) if self.seen_by_an_earlier_close(usage) => {
                        Placement::Outside
                    }
                    _ => placement,
                }
            })
            .collect()
    }

    /// Reject the events in no allocation and count those outside the run.
    fn leave_out_unplaced_events(
        &self,
        usage: &[Usage],
        placements: &[Placement],
        left: &mut LeftOut,
    ) {
        let window = &self.window;
        for (usage, placement) in usage.iter().zip(placements) {
            match placement {
                Placement::NoAllocation => {
                    left.rejects.push(Reject {
                        dataset: Dataset::Usage,
                        at: usage.at.row_ref(),
                        reason: Reason::NoAllocation,
                        detail: format!(
                            "no allocation of account {} contains occurred_at {}",
                            quoted(window.dicts.account(usage.account)),
                            format_instant(usage.occurred_at)
                        ),
                    });
                    if !(window.owns)(usage.account) {
                        left.outside.misrouted += 1;
                    }
                }
                Placement::Outside => {
                    left.outside.usage_rows += 1;
                    // An event of another group's account that reached this one would
                    // look "outside" or "no allocation": count it instead.
                    if !(window.owns)(usage.account) {
                        left.outside.misrouted += 1;
                    }
                }
                Placement::InWindow(_) | Placement::Late(..) => {}
            }
        }
    }

    /// Where each of the bucket's entries goes: attached to a placed event, unattached in a
    /// covered period, outside, or rejected. An entry's event is in this bucket
    /// (`Group::bucket_rows`).
    fn target_entries(
        &self,
        bucket: usize,
        slots: &Slots,
        rows: &GatheredRows<'_>,
        placements: &[Placement],
        order: &EventOrder,
        left: &mut LeftOut,
    ) -> EntryTargets {
        let slot_count = order.slot_count();
        let mut entries_per_event = vec![0u32; order.order.len()];
        let mut unattached_start = vec![0usize; slot_count + 1];
        let mut targets: Vec<EntryTarget> = Vec::with_capacity(rows.debits.len());
        for (entry, &row) in rows.debits.iter().zip(rows.debit_rows) {
            let event = self.event_of_entry[row as usize];
            let local = match event {
                NO_EVENT => NONE,
                event => rows.local_of_row[event as usize],
            };
            let target = self.entry_target(bucket, slots, entry, local, placements);
            match target {
                EntryTarget::Event(k) => {
                    entries_per_event[order.position[k as usize] as usize] += 1
                }
                EntryTarget::Unattached(slot) => unattached_start[slot as usize + 1] += 1,
                EntryTarget::NoAllocation => {
                    left.rejects.push(self.entry_in_no_allocation(entry, event))
                }
                EntryTarget::Outside => left.outside.ledger_entries += 1,
                EntryTarget::Misrouted => left.outside.misrouted += 1,
            }
            targets.push(target);
        }
        prefix_sums(&mut unattached_start);
        EntryTargets {
            targets,
            entries_per_event,
            unattached_start,
        }
    }

    /// The reject of an entry in no allocation (`event`: its event's row, or `NO_EVENT`).
    fn entry_in_no_allocation(&self, entry: &Debit, event: u32) -> Reject {
        Reject {
            dataset: Dataset::Debits,
            at: entry.at.row_ref(),
            reason: Reason::NoAllocation,
            detail: match event {
                NO_EVENT => format!(
                    "no allocation of account {} contains recorded_at {} and no \
                     usage event matches its event_id",
                    quoted(self.window.dicts.account(entry.account)),
                    format_instant(entry.recorded_at)
                ),
                _ => format!(
                    "its event {} was rejected no_allocation",
                    quoted(&String::from_utf8_lossy(
                        self.debit_ids.bytes(entry.event_id)
                    ))
                ),
            },
        }
    }

    /// Where a ledger entry of this bucket goes (`event`: the bucket-local index of its
    /// event, `NONE` without one).
    fn entry_target(
        &self,
        bucket: usize,
        slots: &Slots,
        entry: &Debit,
        event: u32,
        placements: &[Placement],
    ) -> EntryTarget {
        if entry.recorded_at >= self.window.as_of {
            return EntryTarget::Outside;
        }
        if event != NONE {
            let k = event;
            return match placements[k as usize] {
                Placement::InWindow(_) | Placement::Late(..) => EntryTarget::Event(k),
                Placement::Outside => EntryTarget::Outside,
                Placement::NoAllocation => EntryTarget::NoAllocation,
            };
        }
        if !(self.window.owns)(entry.account) {
            return EntryTarget::Misrouted;
        }
        match self.place_instant(bucket, slots, entry.account, entry.recorded_at) {
            Placement::InWindow(slot) => EntryTarget::Unattached(slot),
            Placement::Outside | Placement::Late(..) => EntryTarget::Outside,
            Placement::NoAllocation => EntryTarget::NoAllocation,
        }
    }
}

/// Where a ledger entry goes.
#[derive(Copy, Clone)]
enum EntryTarget {
    /// Attached to this bucket-local event.
    Event(u32),
    /// Unattached, in this slot.
    Unattached(u32),
    NoAllocation,
    Outside,
    /// Unattached, of an account processed elsewhere (a routing bug).
    Misrouted,
}

/// A bucket's rows, gathered once from the group's, as `Group::place` reads them.
struct GatheredRows<'r> {
    usage: Vec<Usage>,
    debits: Vec<Debit>,
    /// The group's row of each of `debits`.
    debit_rows: &'r [u32],
    /// Each usage row's index in its bucket, by the group's row.
    local_of_row: &'r [u32],
}

/// What a bucket leaves out of its work: rejected rows and rows outside the run.
#[derive(Default)]
struct LeftOut {
    rejects: Vec<Reject>,
    outside: Outside,
}

/// The placed events of a bucket in the order of its work: by slot, then (occurred_at,
/// event_id).
struct EventOrder {
    /// The first position of each slot's events (and, last, the count of placed events).
    event_start: Vec<usize>,
    /// The bucket-local index of the event at each position.
    order: Vec<u32>,
    /// The position of each bucket-local event (`NONE`: not placed).
    position: Vec<u32>,
}

impl EventOrder {
    /// The bucket's covered periods.
    fn slot_count(&self) -> usize {
        self.event_start.len() - 1
    }

    fn new(placements: &[Placement], slot_count: usize, usage: &[Usage], ids: &Ids) -> EventOrder {
        let slot_of = |p: &Placement| match *p {
            Placement::InWindow(slot) | Placement::Late(slot, _) => Some(slot as usize),
            Placement::NoAllocation | Placement::Outside => None,
        };
        let mut event_start = vec![0usize; slot_count + 1];
        for p in placements {
            if let Some(slot) = slot_of(p) {
                event_start[slot + 1] += 1;
            }
        }
        prefix_sums(&mut event_start);
        let placed_count = event_start[slot_count];
        // (bucket-local event index) in slot order, each slot then ordered.
        let mut order = vec![0u32; placed_count];
        let mut next = event_start.clone();
        for (k, p) in placements.iter().enumerate() {
            if let Some(slot) = slot_of(p) {
                order[next[slot]] = k as u32;
                next[slot] += 1;
            }
        }
        let usage_at = |k: u32| &usage[k as usize];
        let mut keys: Vec<(Micros, u32)> = Vec::new();
        for w in event_start.windows(2) {
            let period = &mut order[w[0]..w[1]];
            keys.clear();
            keys.extend(period.iter().map(|&k| (usage_at(k).occurred_at, k)));
            sort_by_time_then_id(&mut keys, &|k| ids.bytes(usage_at(k).id));
            period
                .iter_mut()
                .zip(&keys)
                .for_each(|(slot, &(_, k))| *slot = k);
        }
        let mut position = vec![NONE; usage.len()];
        for (at, &k) in order.iter().enumerate() {
            position[k as usize] = at as u32;
        }
        EventOrder {
            event_start,
            order,
            position,
        }
    }
}

/// Where each of a bucket's entries goes, and how many go to each event and slot.
struct EntryTargets {
    targets: Vec<EntryTarget>,
    /// By position in [`EventOrder`].
    entries_per_event: Vec<u32>,
    /// The first unattached entry of each slot (and, last, their count).
    unattached_start: Vec<usize>,
}

/// The bucket's events in order, each with the range of its entries, its entries by event,
/// and its unattached entries by slot.
fn gather_work(
    rows: &GatheredRows<'_>,
    placements: &[Placement],
    order: &EventOrder,
    targets: &EntryTargets,
) -> (Vec<EventWork>, Vec<Debit>, Vec<Debit>) {
    let mut events: Vec<EventWork> = Vec::with_capacity(order.order.len());
    let mut first = 0u32;
    for (at, &k) in order.order.iter().enumerate() {
        let count = targets.entries_per_event[at];
        events.push(EventWork {
            usage: rows.usage[k as usize],
            first_entry: first,
            entry_count: count,
            late_from: match placements[k as usize] {
                Placement::Late(_, from) => from,
                _ => NO_INSTANT,
            },
        });
        first += count;
    }
    let zero: Debit = bytemuck::Zeroable::zeroed();
    let mut entries = vec![zero; first as usize];
    let mut filled: Vec<u32> = events.iter().map(|e| e.first_entry).collect();
    let mut unattached = vec![zero; targets.unattached_start[order.slot_count()]];
    let mut next_unattached = targets.unattached_start.clone();
    for (&entry, target) in rows.debits.iter().zip(&targets.targets) {
        match *target {
            EntryTarget::Event(k) => {
                let at = order.position[k as usize] as usize;
                entries[filled[at] as usize] = entry;
                filled[at] += 1;
            }
            EntryTarget::Unattached(slot) => {
                unattached[next_unattached[slot as usize]] = entry;
                next_unattached[slot as usize] += 1;
            }
            EntryTarget::NoAllocation | EntryTarget::Outside | EntryTarget::Misrouted => {}
        }
    }
    debug_assert!(filled
        .iter()
        .zip(events.iter().skip(1))
        .all(|(f, e)| *f == e.first_entry));
    (events, entries, unattached)
}

fn prefix_sums(counts: &mut [usize]) {
    for i in 1..counts.len() {
        counts[i] += counts[i - 1];
    }
}

/// Order (occurred_at, event) keys by occurred_at, then event id bytes (ties are rare:
/// the keys are sorted as plain numbers, then each run of one instant by id).
fn sort_by_time_then_id<'i>(keys: &mut [(Micros, u32)], id_of: &dyn Fn(u32) -> &'i [u8]) {
    if keys.windows(2).any(|w| w[0] > w[1]) {
        keys.sort_unstable();
    }
    let mut start = 0;
    while start < keys.len() {
        let t = keys[start].0;
        let end = start + keys[start..].iter().take_while(|k| k.0 == t).count();
        if end - start > 1 {
            keys[start..end].sort_unstable_by(|a, b| id_of(a.1).cmp(id_of(b.1)));
        }
        start = end;
    }
}

/// Order one period's events by (occurred_at, event_id bytes).
pub fn sort_events(events: &mut [EventWork], ids: &Ids) {
    let ordered = |a: &EventWork, b: &EventWork| {
        a.usage
            .occurred_at
            .cmp(&b.usage.occurred_at)
            .then_with(|| ids.bytes(a.usage.id).cmp(ids.bytes(b.usage.id)))
    };
    if events
        .windows(2)
        .all(|w| ordered(&w[0], &w[1]) != std::cmp::Ordering::Greater)
    {
        return;
    }
    events.sort_unstable_by(ordered);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dict::DictBuilder;
    use crate::model::{compact_rows, DebitRow, UsageRow};

    /// Events and entries made compact: (events, their ids, entries, their ids).
    fn rows(events: &[&str], entries: &[Option<&str>]) -> (Vec<Usage>, Ids, Vec<Debit>, Ids) {
        let events: Vec<UsageRow> = events
            .iter()
            .enumerate()
            .map(|(row, id)| UsageRow::sample(row as u64, id))
            .collect();
        let entries: Vec<DebitRow> = entries
            .iter()
            .enumerate()
            .map(|(row, id)| DebitRow::sample(row as u64, *id))
            .collect();
        compact_rows(&events, &entries, &DictBuilder::new(["acct-1"].into_iter()))
    }

    fn index_of(events: &[Usage]) -> HashIndex {
        HashIndex::of(events, 4, |e: &Usage| Some(e.id_hash))
    }

    /// An index forged to file every row of `events` under one hash.
    fn forged(events: &[Usage], hash: u64) -> HashIndex {
        HashIndex::of(events, 4, |_| Some(hash))
    }

    #[test]
    fn entries_join_the_event_their_event_id_names() {
        let (events, usage_ids, debits, debit_ids) = rows(
            &["evt-a", "evt-b", "evt-c"],
            &[
                Some("evt-c"),
                None,
                Some("evt-missing"),
                Some("evt-a"),
                Some("evt-c"),
            ],
        );
        let found = join_on_event_id(&events, &usage_ids, &index_of(&events), &debits, &debit_ids);
        assert_eq!(found, vec![2, NO_EVENT, NO_EVENT, 0, 2]);
    }

    /// Equal 64-bit hashes are not equal ids. No two short ids are known to collide, so the
    /// events' index is forged: events are filed under the hash of "evt-y".
    #[test]
    fn an_id_that_only_shares_a_hash_names_no_event() {
        let y = crate::validate::id_hash("evt-y");
        // One event under the hash ("evt-x"): the unchecked match is refused by the check.
        let (events, usage_ids, debits, debit_ids) = rows(&["evt-x"], &[Some("evt-y")]);
        assert_eq!(
            join_on_event_id(
                &events,
                &usage_ids,
                &forged(&events, y),
                &debits,
                &debit_ids
            ),
            vec![NO_EVENT]
        );
        // Two events under it: the match compares strings and finds the right one.
        let (events, usage_ids, mut debits, debit_ids) =
            rows(&["evt-x", "evt-y"], &[Some("evt-y"), Some("evt-z")]);
        debits[1].event_hash = y;
        assert_eq!(
            join_on_event_id(
                &events,
                &usage_ids,
                &forged(&events, y),
                &debits,
                &debit_ids
            ),
            vec![1, NO_EVENT]
        );
    }

    /// Only the covered periods are held, in a vector of their number: an account with a
    /// year of allocations has one covered in a reconcile, and kept room for all twelve.
    #[test]
    fn an_accounts_covered_periods_take_no_spare_room() {
        let allocs: Vec<AllocationRow> = (0..12)
            .map(|month| AllocationRow {
                at: RowRef {
                    file: 0,
                    row: month,
                },
                account_id: "acct-1".into(),
                plan_id: "plan".into(),
                period_start: month as Micros * 1_000,
                period_end: (month as Micros + 1) * 1_000,
                included_credits: crate::amount::Milli(0),
                billing_anchor: None,
                status: AllocationStatus::Active,
            })
            .collect();
        let mut slots = vec![NONE; 12];
        slots[11] = 7;
        let periods = covered_periods(&allocs, &slots, 1);
        assert_eq!(periods.len(), 1);
        assert_eq!(periods.capacity(), 1);
        assert!(std::ptr::eq(periods[0].allocation, &allocs[11]));
        slots[3] = 8;
        let periods = covered_periods(&allocs, &slots, 2);
        let months: Vec<u64> = periods.iter().map(|p| p.allocation.at.row).collect();
        assert_eq!((months, periods.capacity()), (vec![3, 11], 2));
        assert_eq!(covered_periods(&allocs, &[NONE; 12], 0).capacity(), 0);
    }

    /// Contract: "Chargeable events consume, in order of (`occurred_at`, `event_id`)";
    /// section 7: "id tie-breaks compare bytes".
    #[test]
    fn period_events_are_ordered_by_occurred_at_then_event_id_bytes() {
        let ids = ["b", "a", "Z", "z", "é"];
        let times = [20, 20, 20, 10, 20];
        let (events, usage_ids, _, _) = rows(&ids, &[]);
        let mut work: Vec<EventWork> = events
            .iter()
            .zip(times)
            .map(|(u, t)| EventWork {
                usage: Usage {
                    occurred_at: t,
                    ..*u
                },
                first_entry: 0,
                entry_count: 0,
                late_from: NO_INSTANT,
            })
            .collect();
        sort_events(&mut work, &usage_ids);
        let order: Vec<&str> = work
            .iter()
            .map(|e| usage_ids.str(e.usage.id).unwrap())
            .collect();
        assert_eq!(order, ["z", "Z", "a", "b", "é"]);
    }
}
