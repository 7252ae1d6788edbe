//! Stage 2b: place every event and ledger entry: in the run's window (attached to its
//! account-period), outside it, or rejected `no_allocation` (contract section 7, "Window").
//! The result is one `AccountWork` per account with a covered period.

use crate::history::History;
use crate::model::*;
use crate::time::{format_instant, Micros};
use crate::validate::{id_hash, Allocations, Deduped, FastHash};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

/// The ledger entries of one event.
pub type Entries = smallvec::SmallVec<[DebitRow; 1]>;

/// An event of the window with its ledger entries.
#[derive(Clone, Debug)]
pub struct EventWork {
    pub usage: UsageRow,
    /// Most events have exactly one entry: keep it inline (no allocation per event).
    pub entries: Entries,
    /// Its copies differed (reported `conflicting_duplicate`).
    pub conflicting: bool,
    /// Set for a late event: the start of the earlier-closed period it occurred in. It is
    /// reported `late_event` and billed in this (the account's next) period.
    pub late_from: Option<Micros>,
}

/// A covered account-period and what happened in it.
#[derive(Clone, Debug)]
pub struct PeriodWork {
    pub allocation: AllocationRow,
    pub events: Vec<EventWork>,
    /// Entries attached to no event, placed here by their own account and `recorded_at`.
    pub unattached: Vec<DebitRow>,
}

/// Everything one account contributes to a run; accounts are independent of each other.
#[derive(Clone, Debug)]
pub struct AccountWork {
    pub account_id: String,
    /// Covered periods, by `period_start`.
    pub periods: Vec<PeriodWork>,
    /// Valid grants of the account, in input order.
    pub grants: Vec<GrantRow>,
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
#[derive(Copy, Clone)]
enum Placement {
    /// (account index, period index)
    InWindow(usize, usize),
    /// A late event: billed in (account index, period index); it occurred in the
    /// earlier-closed period starting at the given instant.
    Late(usize, usize, Micros),
    NoAllocation,
    Outside,
}

/// Where a ledger entry goes.
enum EntryTarget {
    /// Attached to the event with this index in the deduped event list.
    Event(usize),
    /// Unattached, in (account index, period index).
    Unattached(usize, usize),
    Rejected(Reject),
    Outside,
    /// Unattached, of an account processed elsewhere (a routing bug).
    Misrouted,
}

/// The allocation of `allocs` (sorted, non-overlapping) containing `t`.
fn containing(allocs: &[AllocationRow], t: Micros) -> Option<usize> {
    let i = allocs
        .partition_point(|a| a.period_start <= t)
        .checked_sub(1)?;
    (t < allocs[i].period_end).then_some(i)
}

/// What the window knows of an account of this group: its valid allocations and, when it
/// has covered periods, its index in the account list and the period index of each of its
/// allocations (`None`: not covered).
struct AccountSlot<'a> {
    allocs: &'a [AllocationRow],
    covered: Option<(usize, Vec<Option<usize>>)>,
}

/// The group's accounts with allocations, by id: a map of one group's accounts (small
/// enough to stay in cache), looked up once per event and entry, instead of the run's
/// allocation map (a million accounts at 100M events) and a second map of covered ones.
type Covered<'a> = HashMap<&'a str, AccountSlot<'a>, FastHash>;

fn covered_periods<'a>(
    mode: Mode,
    as_of: Micros,
    allocations: &'a Allocations,
    history: &History,
    group_accounts: &[&'a str],
) -> (Vec<AccountWork>, Covered<'a>) {
    let mut accounts: Vec<AccountWork> = Vec::new();
    let mut covered: Covered<'a> =
        HashMap::with_capacity_and_hasher(group_accounts.len(), FastHash::default());
    for &account_id in group_accounts {
        let allocs = &allocations[account_id];
        let mut period_of: Vec<Option<usize>> = vec![None; allocs.len()];
        let mut periods = Vec::new();
        for (i, a) in allocs.iter().enumerate() {
            let closed_before = history.is_closed(account_id, a.period_start);
            if mode.covers(a.period_start, a.period_end, as_of) && !closed_before {
                period_of[i] = Some(periods.len());
                periods.push(PeriodWork {
                    allocation: a.clone(),
                    events: Vec::new(),
                    unattached: Vec::new(),
                });
            }
        }
        let mut slot = AccountSlot {
            allocs,
            covered: None,
        };
        if !periods.is_empty() {
            slot.covered = Some((accounts.len(), period_of));
            accounts.push(AccountWork {
                account_id: account_id.to_string(),
                periods,
                grants: Vec::new(),
            });
        }
        covered.insert(account_id, slot);
    }
    (accounts, covered)
}

/// Place an instant of an account of this group: in a covered period, in no allocation,
/// or elsewhere. (An account of another group reads as having no allocation: the caller
/// counts such rows as misrouted.)
fn place_instant(covered: &Covered<'_>, account_id: &str, t: Micros) -> Placement {
    let Some((slot, alloc)) = covered
        .get(account_id)
        .and_then(|slot| Some((slot, containing(slot.allocs, t)?)))
    else {
        return Placement::NoAllocation;
    };
    match &slot.covered {
        Some((account, period_of)) => period_of[alloc].map_or(Placement::Outside, |period| {
            Placement::InWindow(*account, period)
        }),
        None => Placement::Outside,
    }
}

/// An event outside the run's periods that occurred in a period an earlier close already
/// closed, and was not billed there: billed in the account's first covered period that
/// starts at or after that period's end (if this run covers one).
fn place_late(
    allocations: &Allocations,
    covered: &Covered<'_>,
    accounts: &[AccountWork],
    history: &History,
    billed: &HashSet<String, FastHash>,
    usage: &UsageRow,
) -> Option<Placement> {
    if billed.contains(usage.event_id.as_str()) {
        return None;
    }
    let closed = closed_period(allocations, history, &usage.account_id, usage.occurred_at)?;
    let (account, _) = covered.get(&*usage.account_id)?.covered.as_ref()?;
    let period = accounts[*account]
        .periods
        .iter()
        .position(|p| p.allocation.period_start >= closed.period_end)?;
    Some(Placement::Late(*account, period, closed.period_start))
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

/// Which periods a run covers: its mode, as-of, and the periods earlier closes closed.
pub struct RunWindow<'a> {
    pub mode: Mode,
    pub as_of: Micros,
    pub history: &'a History,
    /// Events an earlier close billed, among those this run may find late.
    pub billed: &'a HashSet<String, FastHash>,
    /// Whether an account is processed here (its bucket is in this group and shard).
    pub owns: &'a (dyn Fn(&str) -> bool + Sync),
    /// The accounts with valid allocations processed here, sorted (`accounts_by_group`).
    pub group_accounts: &'a [&'a str],
}

/// The accounts with valid allocations of each group, each list sorted: made once per run
/// (sorting every account name again for each group cost about 5% of a 100M run).
pub fn accounts_by_group<'a>(
    allocations: &'a Allocations,
    groups: usize,
    group_of: &dyn Fn(&str) -> Option<usize>,
) -> Vec<Vec<&'a str>> {
    let mut names: Vec<&str> = allocations.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut by_group: Vec<Vec<&str>> = vec![Vec::new(); groups];
    for name in names {
        if let Some(group) = group_of(name) {
            by_group[group].push(name);
        }
    }
    by_group
}

const NO_EVENT: u32 = u32::MAX;

/// For every entry, the index of the event its `event_id` names (`NO_EVENT` if none).
/// A merge join of the events' sorted (id hash, index) pairs (from dedup) with the
/// entries' (sorted here).
///
/// Equal hashes must still be compared as strings, but comparing them in hash order
/// reads two rows at random per entry (a cache miss each: half the window's time at
/// 10M). So the merge records, for an entry whose hash names a single event, that event
/// unchecked, and the ids are compared afterwards in entry order: the entries are read in
/// sequence and their events, logged in about the same order, nearly so. Only a hash that
/// names two or more events (a 64-bit collision) is resolved by comparing strings in the merge.
fn join_on_event_id(
    events: &[UsageRow],
    by_id_hash: &[(u64, u32)],
    debits: &[DebitRow],
) -> Vec<u32> {
    let left = by_id_hash;
    let mut right: Vec<(u64, u32)> = debits
        .par_iter()
        .enumerate()
        .filter_map(|(i, d)| d.event_id.as_deref().map(|id| (id_hash(id), i as u32)))
        .collect();
    // Stable by hash over pairs made in entry order: (hash, entry) order.
    radsort::sort_by_key(&mut right, |pair| pair.0);
    // Merge the two sorted sides in parallel: each chunk of entries finds its start in the
    // events by binary search, then walks forward.
    let chunk = right
        .len()
        .div_ceil(rayon::current_num_threads() * 4)
        .max(1);
    let event_id_of = |entry: u32| {
        debits[entry as usize]
            .event_id
            .as_deref()
            .unwrap_or_default()
    };
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
                let same_hash = &left[l..l + run];
                match same_hash {
                    [] => None,
                    // Checked below, in entry order.
                    [(_, event)] => Some((entry, *event)),
                    colliding => colliding
                        .iter()
                        .map(|&(_, e)| e)
                        .find(|&e| events[e as usize].event_id == event_id_of(entry))
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
        if *event != NO_EVENT && events[*event as usize].event_id != event_id_of(entry as u32) {
            *event = NO_EVENT;
        }
    });
    found
}

pub fn place(
    window: RunWindow<'_>,
    allocations: &Allocations,
    deduped: Deduped,
    debits: Vec<DebitRow>,
    grants: &[GrantRow],
    rejects: &mut Vec<Reject>,
) -> (Vec<AccountWork>, Outside) {
    let RunWindow {
        mode,
        as_of,
        history,
        billed,
        owns,
        group_accounts,
    } = window;
    let (mut accounts, covered) =
        covered_periods(mode, as_of, allocations, history, group_accounts);
    let events = deduped.events;
    let mut outside = Outside::default();

    let placements: Vec<Placement> = events
        .par_iter()
        .map(|usage| {
            if usage.occurred_at >= as_of {
                return Placement::Outside;
            }
            let placement = place_instant(&covered, &usage.account_id, usage.occurred_at);
            if matches!(placement, Placement::Outside) {
                if let Some(late) =
                    place_late(allocations, &covered, &accounts, history, billed, usage)
                {
                    return late;
                }
            }
            placement
        })
        .collect();
    for (usage, placement) in events.iter().zip(&placements) {
        if matches!(placement, Placement::NoAllocation) {
            rejects.push(Reject {
                dataset: Dataset::Usage,
                at: usage.at,
                reason: Reason::NoAllocation,
                detail: format!(
                    "no allocation of account {} contains occurred_at {}",
                    quoted(&usage.account_id),
                    format_instant(usage.occurred_at)
                ),
            });
        }
    }
    outside.usage_rows = placements
        .iter()
        .filter(|p| matches!(p, Placement::Outside))
        .count() as u64;
    // Accounts processed here all have covered periods; an event of another account that
    // reached this group would look "outside" or "no allocation": count it instead.
    outside.misrouted = events
        .iter()
        .zip(&placements)
        .filter(|(u, p)| {
            matches!(p, Placement::Outside | Placement::NoAllocation) && !owns(&u.account_id)
        })
        .count() as u64;

    // Attach entries by event_id: a merge join of the two sides sorted by id hash (linear,
    // cache-friendly; a hash map or binary search per entry is cache-miss bound at 10M+).
    let event_of_entry = join_on_event_id(&events, &deduped.by_id_hash, &debits);
    let targets: Vec<EntryTarget> = debits
        .par_iter()
        .zip(event_of_entry.par_iter())
        .map(|(entry, &event)| {
            if entry.recorded_at >= as_of {
                return EntryTarget::Outside;
            }
            let event = (event != NO_EVENT).then_some(event as usize);
            match event.map(|i| (i, placements[i])) {
                Some((i, Placement::InWindow(..) | Placement::Late(..))) => EntryTarget::Event(i),
                Some((_, Placement::Outside)) => EntryTarget::Outside,
                Some((_, Placement::NoAllocation)) => EntryTarget::Rejected(Reject {
                    dataset: Dataset::Debits,
                    at: entry.at,
                    reason: Reason::NoAllocation,
                    detail: format!(
                        "its event {} was rejected no_allocation",
                        quoted(entry.event_id.as_deref().unwrap_or_default())
                    ),
                }),
                None if !owns(&entry.account_id) => EntryTarget::Misrouted,
                None => match place_instant(&covered, &entry.account_id, entry.recorded_at) {
                    Placement::InWindow(a, p) => EntryTarget::Unattached(a, p),
                    Placement::Outside | Placement::Late(..) => EntryTarget::Outside,
                    Placement::NoAllocation => EntryTarget::Rejected(Reject {
                        dataset: Dataset::Debits,
                        at: entry.at,
                        reason: Reason::NoAllocation,
                        detail: format!(
                            "no allocation of account {} contains recorded_at {} and no \
                             usage event matches its event_id",
                            quoted(&entry.account_id),
                            format_instant(entry.recorded_at)
                        ),
                    }),
                },
            }
        })
        .collect();
    drop(covered);

    // The attached entries of each event, in entry order, as index ranges (no vector of
    // per-event lists: each entry moves once, from `debits` into its event's work).
    let mut debits: Vec<Option<DebitRow>> = debits.into_iter().map(Some).collect();
    let mut first_entry = vec![0u32; events.len() + 1];
    for target in &targets {
        if let EntryTarget::Event(i) = target {
            first_entry[i + 1] += 1;
        }
    }
    for i in 0..events.len() {
        first_entry[i + 1] += first_entry[i];
    }
    let mut attached = vec![0u32; first_entry[events.len()] as usize];
    let mut next = first_entry.clone();
    for (index, target) in targets.into_iter().enumerate() {
        match target {
            EntryTarget::Event(i) => {
                attached[next[i] as usize] = index as u32;
                next[i] += 1;
            }
            EntryTarget::Unattached(a, p) => {
                let entry = debits[index].take().expect("each entry is placed once");
                accounts[a].periods[p].unattached.push(entry);
            }
            // Not used by this run: dropped here, so that every entry is accounted for.
            EntryTarget::Rejected(r) => {
                debits[index] = None;
                rejects.push(r);
            }
            EntryTarget::Outside => {
                debits[index] = None;
                outside.ledger_entries += 1;
            }
            EntryTarget::Misrouted => {
                debits[index] = None;
                outside.misrouted += 1;
            }
        }
    }
    drop(next);
    // Size every period's event list first: no reallocation while moving events in.
    let mut counts: Vec<Vec<usize>> = accounts.iter().map(|a| vec![0; a.periods.len()]).collect();
    for placement in &placements {
        if let Placement::InWindow(a, p) | Placement::Late(a, p, _) = placement {
            counts[*a][*p] += 1;
        }
    }
    for (account, counts) in accounts.iter_mut().zip(counts) {
        for (period, n) in account.periods.iter_mut().zip(counts) {
            period.events.reserve_exact(n);
        }
    }
    for (i, (usage, placement)) in events.into_iter().zip(placements).enumerate() {
        let (a, p, late_from) = match placement {
            Placement::InWindow(a, p) => (a, p, None),
            Placement::Late(a, p, from) => (a, p, Some(from)),
            Placement::NoAllocation | Placement::Outside => continue,
        };
        let range = first_entry[i] as usize..first_entry[i + 1] as usize;
        let entries: Entries = attached[range]
            .iter()
            .map(|&e| {
                debits[e as usize]
                    .take()
                    .expect("each entry is placed once")
            })
            .collect();
        let conflicting =
            !deduped.conflicting.is_empty() && deduped.conflicting.contains(&usage.event_id);
        accounts[a].periods[p].events.push(EventWork {
            usage,
            entries,
            conflicting,
            late_from,
        });
    }

    assert!(
        debits.iter().all(Option::is_none),
        "every ledger entry is placed exactly once"
    );
    drop(debits);

    let index: HashMap<String, usize, FastHash> = accounts
        .iter()
        .enumerate()
        .map(|(i, a)| (a.account_id.clone(), i))
        .collect();
    for grant in grants {
        if let Some(&i) = index.get(&grant.account_id) {
            accounts[i].grants.push(grant.clone());
        }
    }
    (accounts, outside)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(row: u64, id: &str) -> UsageRow {
        UsageRow::sample(row, id)
    }

    fn entry(row: u64, event_id: Option<&str>) -> DebitRow {
        DebitRow::sample(row, event_id)
    }

    fn sorted_hashes(events: &[UsageRow]) -> Vec<(u64, u32)> {
        crate::validate::id_hashes(events, &|e: &UsageRow| e.event_id.as_str())
    }

    #[test]
    fn entries_join_the_event_their_event_id_names() {
        let events = vec![event(0, "evt-a"), event(1, "evt-b"), event(2, "evt-c")];
        let debits = vec![
            entry(0, Some("evt-c")),
            entry(1, None),
            entry(2, Some("evt-missing")),
            entry(3, Some("evt-a")),
            entry(4, Some("evt-c")),
        ];
        let found = join_on_event_id(&events, &sorted_hashes(&events), &debits);
        assert_eq!(found, vec![2, NO_EVENT, NO_EVENT, 0, 2]);
    }

    /// Equal 64-bit hashes are not equal ids. No two short ids are known to collide, so the
    /// events' hash index is forged: event 0 ("evt-x") is filed under the hash of "evt-y".
    #[test]
    fn an_id_that_only_shares_a_hash_names_no_event() {
        let events = vec![event(0, "evt-x"), event(1, "evt-y")];
        let y = id_hash("evt-y");
        // One event under the hash: the unchecked match is refused by the check.
        let lone = vec![(y, 0)];
        let debits = vec![entry(0, Some("evt-y"))];
        assert_eq!(join_on_event_id(&events, &lone, &debits), vec![NO_EVENT]);
        // Two events under it: the merge compares strings and finds the right one.
        let mut colliding = vec![(y, 0), (y, 1)];
        colliding.sort_unstable();
        let debits = vec![entry(0, Some("evt-y")), entry(1, Some("evt-z"))];
        assert_eq!(
            join_on_event_id(&events, &colliding, &debits),
            vec![1, NO_EVENT]
        );
    }
}
