//! Stage 2b: place every event and ledger entry: in the run's window (attached to its
//! account-period), outside it, or rejected `no_allocation` (contract section 7, "Window").
//!
//! The result is one flat [`GroupWork`] per group: the events of every covered
//! account-period, each period's events together and in consumption order
//! ((occurred_at, event_id)), every event's ledger entries, and the unattached entries of
//! each period. Accounts and periods refer to their rows by ranges: nothing is allocated
//! per event or per account-period, and the engine reads each period's rows in sequence.

use crate::dict::{Dicts, Ids};
use crate::history::History;
use crate::model::*;
use crate::time::{format_instant, Micros};
use crate::validate::{hash_pairs, Allocations, Deduped, FastHash};
use rayon::prelude::*;
use std::collections::HashSet;
use std::ops::Range;

/// An event of the window, with where its ledger entries are.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct EventWork {
    pub usage: Usage,
    /// Its entries: `GroupWork::entries[first_entry..first_entry + entry_count]`.
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

/// A covered account-period and where its rows are in the group's work.
#[derive(Clone, Debug)]
pub struct PeriodWork<'a> {
    pub allocation: &'a AllocationRow,
    /// Its events: `GroupWork::events[events]`, by (occurred_at, event_id).
    pub events: Range<usize>,
    /// Entries attached to no event, placed here by their own account and `recorded_at`:
    /// `GroupWork::unattached[unattached]`, by (file, row).
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

/// A group's work, ready for the engine.
pub struct GroupWork<'a> {
    /// Accounts with covered periods, by code (= by account id).
    pub accounts: Vec<AccountWork<'a>>,
    pub events: Vec<EventWork>,
    pub entries: Vec<Debit>,
    pub unattached: Vec<Debit>,
    /// The ids of `events` (usage) and of `entries` and `unattached` (ledger).
    pub usage_ids: Ids,
    pub debit_ids: Ids,
}

/// Counts of rows that were read but not used by this run.
#[derive(Clone, Debug, Default)]
pub struct Outside {
    pub usage_rows: u64,
    pub ledger_entries: u64,
    /// Events or unattached entries of an account another group owns: a routing bug,
    /// checked by the pipeline (always 0).
    pub misrouted: u64,
}

/// Where an event goes.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Placement {
    /// The covered account-period (its slot: the group's periods numbered in order).
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

/// What the window knows of the group's accounts: for each known account code, the
/// account's index in the group (`NONE`: another group's); for each account of the
/// group, the slot of each of its allocations (`NONE`: not covered).
struct Slots {
    index_of: Vec<u32>,
    /// Per account of the group: its first entry in `slot_of_alloc`.
    first_alloc: Vec<u32>,
    slot_of_alloc: Vec<u32>,
    /// The account of each slot (index into the group's accounts).
    account_of_slot: Vec<u32>,
}

impl Slots {
    /// The group's index of an account with covered periods.
    fn account(&self, code: u32) -> Option<usize> {
        match self.index_of.get(code as usize) {
            Some(&i) if i != NONE && i != UNCOVERED => Some(i as usize),
            _ => None,
        }
    }
}

/// Which periods a run covers: its mode, as-of, and the periods earlier closes closed.
pub struct RunWindow<'a> {
    pub mode: Mode,
    pub as_of: Micros,
    pub history: &'a History,
    /// Events an earlier close billed, among those this run may find late.
    pub billed: &'a HashSet<String, FastHash>,
    /// Whether an account (by code) is processed here (its partition is in this group
    /// and shard).
    pub owns: &'a (dyn Fn(u32) -> bool + Sync),
    /// The codes of the accounts with valid allocations processed here, in order
    /// (`accounts_by_group`).
    pub group_accounts: &'a [u32],
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

/// The covered periods of the group's accounts, and their slots.
fn covered_periods<'a>(
    window: &RunWindow<'_>,
    allocations: &'a Allocations,
    grants: &'a [Vec<GrantRow>],
) -> (Vec<AccountWork<'a>>, Slots) {
    let mut accounts: Vec<AccountWork<'a>> = Vec::new();
    let mut slots = Slots {
        index_of: vec![NONE; allocations.len()],
        first_alloc: Vec::with_capacity(window.group_accounts.len()),
        slot_of_alloc: Vec::new(),
        account_of_slot: Vec::new(),
    };
    for &code in window.group_accounts {
        let allocs = allocations.of(code);
        let account_id = &allocations.accounts[code as usize];
        let first = slots.slot_of_alloc.len() as u32;
        let mut periods = Vec::new();
        for a in allocs {
            let closed_before = window.history.is_closed(account_id, a.period_start);
            if window
                .mode
                .covers(a.period_start, a.period_end, window.as_of)
                && !closed_before
            {
                slots.slot_of_alloc.push(slots.account_of_slot.len() as u32);
                slots.account_of_slot.push(accounts.len() as u32);
                periods.push(PeriodWork {
                    allocation: a,
                    events: 0..0,
                    unattached: 0..0,
                });
            } else {
                slots.slot_of_alloc.push(NONE);
            }
        }
        if periods.is_empty() {
            // Allocations, but none covered: its rows are outside (or no_allocation).
            slots.slot_of_alloc.truncate(first as usize);
            slots.index_of[code as usize] = UNCOVERED;
            continue;
        }
        slots.index_of[code as usize] = slots.first_alloc.len() as u32;
        slots.first_alloc.push(first);
        accounts.push(AccountWork {
            account: code,
            periods,
            grants: grants.get(code as usize).map_or(&[], Vec::as_slice),
        });
    }
    (accounts, slots)
}

/// Marks, in `Slots::index_of`, an account of the group with no covered period.
const UNCOVERED: u32 = NONE - 1;

/// Place an instant of an account: in a covered period (its slot), in no allocation, or
/// elsewhere. (An account of another group reads as having no allocation: the caller
/// counts such rows as misrouted.)
fn place_instant(slots: &Slots, allocations: &Allocations, account: u32, t: Micros) -> Placement {
    let index = match slots.index_of.get(account as usize) {
        Some(&i) if i != NONE => i,
        _ => return Placement::NoAllocation,
    };
    let Some(alloc) = containing(allocations.of(account), t) else {
        return Placement::NoAllocation;
    };
    if index == UNCOVERED {
        return Placement::Outside;
    }
    match slots.slot_of_alloc[(slots.first_alloc[index as usize] as usize) + alloc] {
        NONE => Placement::Outside,
        slot => Placement::InWindow(slot),
    }
}

/// An event outside the run's periods that occurred in a period an earlier close already
/// closed, and was not billed there: billed in the account's first covered period that
/// starts at or after that period's end (if this run covers one).
fn place_late(
    slots: &Slots,
    accounts: &[AccountWork<'_>],
    allocations: &Allocations,
    window: &RunWindow<'_>,
    usage: &Usage,
    ids: &Ids,
) -> Option<Placement> {
    let account_id = window.dicts.account(usage.account);
    let closed = closed_period(allocations, window.history, account_id, usage.occurred_at)?;
    let event_id = std::str::from_utf8(ids.bytes(usage.id)).ok()?;
    if window.billed.contains(event_id) {
        return None;
    }
    let index = slots.account(usage.account)?;
    let first_slot = slots.first_slot_of(index)?;
    let position = accounts[index]
        .periods
        .iter()
        .position(|p| p.allocation.period_start >= closed.period_end)?;
    Some(Placement::Late(
        first_slot + position as u32,
        closed.period_start,
    ))
}

impl Slots {
    /// The slot of an account's first covered period.
    fn first_slot_of(&self, index: usize) -> Option<u32> {
        let first = self.first_alloc[index] as usize;
        let end = self
            .first_alloc
            .get(index + 1)
            .map_or(self.slot_of_alloc.len(), |&e| e as usize);
        self.slot_of_alloc[first..end]
            .iter()
            .copied()
            .find(|&s| s != NONE)
    }
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

const NO_EVENT: u32 = u32::MAX;

/// For every entry, the index of the event its `event_id` names (`NO_EVENT` if none).
/// A merge join of the events' sorted (id hash, index) pairs (from dedup) with the
/// entries' (sorted here).
///
/// Equal hashes must still be compared as strings, but comparing them in hash order
/// reads two rows at random per entry (a cache miss each). So the merge records, for an
/// entry whose hash names a single event, that event unchecked, and the ids are compared
/// afterwards in entry order: the entries are read in sequence and their events, logged
/// in about the same order, nearly so. Only a hash that names two or more events (a
/// 64-bit collision) is resolved by comparing strings in the merge.
fn join_on_event_id(
    events: &[Usage],
    usage_ids: &Ids,
    by_id_hash: &[(u64, u32)],
    debits: &[Debit],
    debit_ids: &Ids,
) -> Vec<u32> {
    let left = by_id_hash;
    let attached: Vec<u32> = (0..debits.len() as u32)
        .filter(|&i| debits[i as usize].has_event())
        .collect();
    let right: Vec<(u64, u32)> = hash_pairs(&attached, |&i| debits[i as usize].event_hash)
        .into_iter()
        .map(|(hash, k)| (hash, attached[k as usize]))
        .collect();
    drop(attached);
    // Merge the two sorted sides in parallel: each chunk of entries finds its start in the
    // events by binary search, then walks forward.
    let chunk = right
        .len()
        .div_ceil(rayon::current_num_threads() * 4)
        .max(1);
    let event_id_of = |entry: u32| debit_ids.bytes(debits[entry as usize].event_id);
    let matches: Vec<(u32, u32)> = right
        .par_chunks(chunk)
        .flat_map_iter(|part| {
            let mut l = left.partition_point(|x| x.0 < part[0].0);
            part.iter().filter_map(move |&(hash, entry)| {
                while l < left.len() && left[l].0 < hash {
                    l += 1;
                }
                // Usually none or one: walked, not searched.
                let run = left[l..].iter().take_while(|x| x.0 == hash).count();
                match &left[l..l + run] {
                    [] => None,
                    // Checked below, in entry order.
                    [(_, event)] => Some((entry, *event)),
                    colliding => colliding
                        .iter()
                        .map(|&(_, e)| e)
                        .find(|&e| usage_ids.bytes(events[e as usize].id) == event_id_of(entry))
                        .map(|e| (entry, e)),
                }
            })
        })
        .collect();
    let mut found = vec![NO_EVENT; debits.len()];
    for (entry, event) in matches {
        found[entry as usize] = event;
    }
    // The check of single-event matches: an entry whose id only shares the hash of an
    // event names no event.
    found.par_iter_mut().enumerate().for_each(|(entry, event)| {
        if *event != NO_EVENT
            && usage_ids.bytes(events[*event as usize].id) != event_id_of(entry as u32)
        {
            *event = NO_EVENT;
        }
    });
    found
}

/// Where a ledger entry goes.
#[derive(Copy, Clone)]
enum EntryTarget {
    /// Attached to the event with this index in the deduped event list.
    Event(u32),
    /// Unattached, in this slot.
    Unattached(u32),
    NoAllocation,
    Outside,
    /// Unattached, of an account processed elsewhere (a routing bug).
    Misrouted,
}

/// Place a group's events and entries (both in (file, row) order).
#[allow(clippy::too_many_arguments)]
pub fn place<'a>(
    window: RunWindow<'_>,
    allocations: &'a Allocations,
    grants: &'a [Vec<GrantRow>],
    deduped: Deduped,
    usage_ids: Ids,
    debits: Vec<Debit>,
    debit_ids: Ids,
    rejects: &mut Vec<Reject>,
) -> (GroupWork<'a>, Outside) {
    let (mut accounts, slots) = covered_periods(&window, allocations, grants);
    let events = deduped.events;
    let mut outside = Outside::default();
    let as_of = window.as_of;
    let may_be_late = !window.history.closed.is_empty();

    let placements: Vec<Placement> = events
        .par_iter()
        .map(|usage| {
            if usage.occurred_at >= as_of {
                return Placement::Outside;
            }
            let placement = place_instant(&slots, allocations, usage.account, usage.occurred_at);
            if may_be_late && placement == Placement::Outside {
                if let Some(late) =
                    place_late(&slots, &accounts, allocations, &window, usage, &usage_ids)
                {
                    return late;
                }
            }
            placement
        })
        .collect();
    for (usage, placement) in events.iter().zip(&placements) {
        match placement {
            Placement::NoAllocation => {
                rejects.push(Reject {
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
                    outside.misrouted += 1;
                }
            }
            Placement::Outside => {
                outside.usage_rows += 1;
                // Accounts processed here all have covered periods or allocations; an
                // event of another account that reached this group would look "outside"
                // or "no allocation": count it instead.
                if !(window.owns)(usage.account) {
                    outside.misrouted += 1;
                }
            }
            Placement::InWindow(_) | Placement::Late(..) => {}
        }
    }

    // Attach entries by event_id: a merge join of the two sides sorted by id hash (linear,
    // cache-friendly; a hash map or binary search per entry is cache-miss bound at 10M+).
    let event_of_entry = join_on_event_id(
        &events,
        &usage_ids,
        &deduped.by_id_hash,
        &debits,
        &debit_ids,
    );
    drop(deduped.by_id_hash);
    let targets: Vec<EntryTarget> = debits
        .par_iter()
        .zip(event_of_entry.par_iter())
        .map(|(entry, &event)| {
            if entry.recorded_at >= as_of {
                return EntryTarget::Outside;
            }
            if event != NO_EVENT {
                return match placements[event as usize] {
                    Placement::InWindow(_) | Placement::Late(..) => EntryTarget::Event(event),
                    Placement::Outside => EntryTarget::Outside,
                    Placement::NoAllocation => EntryTarget::NoAllocation,
                };
            }
            if !(window.owns)(entry.account) {
                return EntryTarget::Misrouted;
            }
            match place_instant(&slots, allocations, entry.account, entry.recorded_at) {
                Placement::InWindow(slot) => EntryTarget::Unattached(slot),
                Placement::Outside | Placement::Late(..) => EntryTarget::Outside,
                Placement::NoAllocation => EntryTarget::NoAllocation,
            }
        })
        .collect();
    drop(event_of_entry);

    // Events by slot (counting sort, stable: (file, row) order within a slot), and
    // where each event's entries will be.
    let slot_count = slots.account_of_slot.len();
    let slot_of = |p: &Placement| match *p {
        Placement::InWindow(slot) | Placement::Late(slot, _) => Some(slot as usize),
        Placement::NoAllocation | Placement::Outside => None,
    };
    let mut event_start = vec![0usize; slot_count + 1];
    for p in &placements {
        if let Some(slot) = slot_of(p) {
            event_start[slot + 1] += 1;
        }
    }
    prefix_sums(&mut event_start);
    let mut entries_per_event = vec![0u32; events.len()];
    let mut unattached_start = vec![0usize; slot_count + 1];
    for (entry, target) in debits.iter().zip(&targets) {
        match *target {
            EntryTarget::Event(e) => entries_per_event[e as usize] += 1,
            EntryTarget::Unattached(slot) => unattached_start[slot as usize + 1] += 1,
            EntryTarget::NoAllocation => {
                let detail = match event_of_entry_id(entry, &debit_ids) {
                    Some(event_id) => {
                        format!("its event {} was rejected no_allocation", quoted(&event_id))
                    }
                    None => format!(
                        "no allocation of account {} contains recorded_at {} and no \
                         usage event matches its event_id",
                        quoted(window.dicts.account(entry.account)),
                        format_instant(entry.recorded_at)
                    ),
                };
                rejects.push(Reject {
                    dataset: Dataset::Debits,
                    at: entry.at.row_ref(),
                    reason: Reason::NoAllocation,
                    detail,
                });
            }
            EntryTarget::Outside => outside.ledger_entries += 1,
            EntryTarget::Misrouted => outside.misrouted += 1,
        }
    }
    prefix_sums(&mut unattached_start);

    // Each placed event's entries go together, in (file, row) order, in the order the
    // events will have.
    let mut placed: Vec<EventWork> = vec![
        EventWork {
            usage: bytemuck::Zeroable::zeroed(),
            first_entry: 0,
            entry_count: 0,
            late_from: NO_INSTANT,
        };
        event_start[slot_count]
    ];
    let mut next_event = event_start.clone();
    let mut position_of_event = vec![NO_EVENT; events.len()];
    for (i, (usage, p)) in events.iter().zip(&placements).enumerate() {
        let Some(slot) = slot_of(p) else { continue };
        let at = next_event[slot];
        next_event[slot] += 1;
        position_of_event[i] = at as u32;
        placed[at] = EventWork {
            usage: *usage,
            first_entry: 0,
            entry_count: entries_per_event[i],
            late_from: match *p {
                Placement::Late(_, from) => from,
                _ => NO_INSTANT,
            },
        };
    }
    drop(events);
    drop(placements);
    let mut first = 0u32;
    for event in placed.iter_mut() {
        event.first_entry = first;
        first += event.entry_count;
    }
    let mut entries: Vec<Debit> = vec![bytemuck::Zeroable::zeroed(); first as usize];
    let mut filled: Vec<u32> = placed.iter().map(|e| e.first_entry).collect();
    let mut unattached: Vec<Debit> =
        vec![bytemuck::Zeroable::zeroed(); unattached_start[slot_count]];
    let mut next_unattached = unattached_start.clone();
    let mut moved = 0usize;
    for (entry, target) in debits.iter().zip(&targets) {
        match *target {
            EntryTarget::Event(e) => {
                let position = position_of_event[e as usize] as usize;
                entries[filled[position] as usize] = *entry;
                filled[position] += 1;
                moved += 1;
            }
            EntryTarget::Unattached(slot) => {
                unattached[next_unattached[slot as usize]] = *entry;
                next_unattached[slot as usize] += 1;
                moved += 1;
            }
            EntryTarget::NoAllocation | EntryTarget::Outside | EntryTarget::Misrouted => {}
        }
    }
    assert_eq!(
        moved,
        entries.len() + unattached.len(),
        "every attached or unattached ledger entry is placed exactly once"
    );
    drop(debits);
    drop(targets);

    // Ranges of every period (slots are numbered account by account, period by period),
    // then its events in consumption order.
    let mut slot = 0;
    for period in accounts.iter_mut().flat_map(|a| a.periods.iter_mut()) {
        period.events = event_start[slot]..event_start[slot + 1];
        period.unattached = unattached_start[slot]..unattached_start[slot + 1];
        slot += 1;
    }
    assert_eq!(slot, slot_count, "one slot per covered period");
    sort_periods(&mut placed, &event_start, &usage_ids);
    (
        GroupWork {
            accounts,
            events: placed,
            entries,
            unattached,
            usage_ids,
            debit_ids,
        },
        outside,
    )
}

fn prefix_sums(counts: &mut [usize]) {
    for i in 1..counts.len() {
        counts[i] += counts[i - 1];
    }
}

/// The event id an entry names, if any (for its reject detail).
fn event_of_entry_id(entry: &Debit, ids: &Ids) -> Option<String> {
    entry
        .has_event()
        .then(|| String::from_utf8_lossy(ids.bytes(entry.event_id)).into_owned())
}

/// Order every period's events by (occurred_at, event_id) (ids are unique after dedup,
/// so the order is total; id ties compare bytes), the periods in parallel.
fn sort_periods(events: &mut [EventWork], starts: &[usize], ids: &Ids) {
    let mut periods: Vec<&mut [EventWork]> = Vec::with_capacity(starts.len());
    let mut rest = events;
    for w in starts.windows(2) {
        let (here, after) = rest.split_at_mut(w[1] - w[0]);
        periods.push(here);
        rest = after;
    }
    periods.into_par_iter().for_each(|period| {
        sort_events(period, ids);
    });
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

    fn sorted_hashes(events: &[Usage]) -> Vec<(u64, u32)> {
        hash_pairs(events, |e: &Usage| e.id_hash)
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
        let found = join_on_event_id(
            &events,
            &usage_ids,
            &sorted_hashes(&events),
            &debits,
            &debit_ids,
        );
        assert_eq!(found, vec![2, NO_EVENT, NO_EVENT, 0, 2]);
    }

    /// Equal 64-bit hashes are not equal ids. No two short ids are known to collide, so the
    /// events' hash index is forged: event 0 ("evt-x") is filed under the hash of "evt-y".
    #[test]
    fn an_id_that_only_shares_a_hash_names_no_event() {
        let y = crate::validate::id_hash("evt-y");
        // One event under the hash: the unchecked match is refused by the check.
        let (events, usage_ids, debits, debit_ids) = rows(&["evt-x", "evt-y"], &[Some("evt-y")]);
        let lone = vec![(y, 0)];
        assert_eq!(
            join_on_event_id(&events, &usage_ids, &lone, &debits, &debit_ids),
            vec![NO_EVENT]
        );
        // Two events under it: the merge compares strings and finds the right one.
        let (events, usage_ids, mut debits, debit_ids) =
            rows(&["evt-x", "evt-y"], &[Some("evt-y"), Some("evt-z")]);
        debits[1].event_hash = y;
        let colliding = vec![(y, 0), (y, 1)];
        assert_eq!(
            join_on_event_id(&events, &usage_ids, &colliding, &debits, &debit_ids),
            vec![1, NO_EVENT]
        );
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
