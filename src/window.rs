//! Stage 2b: place every event and ledger entry: in the run's window (attached to its
//! account-period), outside it, or rejected `no_allocation` (contract section 7, "Window").
//! The result is one `AccountWork` per account with a covered period.

use crate::model::*;
use crate::time::{format_instant, Micros};
use crate::validate::Deduped;
use std::collections::HashMap;

/// An event of the window with its ledger entries.
#[derive(Clone, Debug)]
pub struct EventWork {
    pub usage: UsageRow,
    pub entries: Vec<DebitRow>,
    /// Its copies differed (reported `conflicting_duplicate`).
    pub conflicting: bool,
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
}

#[derive(Copy, Clone)]
enum Placement {
    InWindow {
        account: usize,
        period: usize,
        event: usize,
    },
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

pub fn place(
    mode: Mode,
    as_of: Micros,
    allocations: &HashMap<String, Vec<AllocationRow>>,
    deduped: Deduped,
    debits: Vec<DebitRow>,
    grants: Vec<GrantRow>,
    rejects: &mut Vec<Reject>,
) -> (Vec<AccountWork>, Outside) {
    let mut accounts: Vec<AccountWork> = Vec::new();
    // account_id → (index in `accounts`, allocation index → period index)
    let mut covered: HashMap<&str, (usize, HashMap<usize, usize>)> = HashMap::new();
    let mut names: Vec<&String> = allocations.keys().collect();
    names.sort();
    for account_id in names {
        let allocs = &allocations[account_id];
        let mut period_of = HashMap::new();
        let mut periods = Vec::new();
        for (i, a) in allocs.iter().enumerate() {
            if mode.covers(a.period_start, a.period_end, as_of) {
                period_of.insert(i, periods.len());
                periods.push(PeriodWork {
                    allocation: a.clone(),
                    events: Vec::new(),
                    unattached: Vec::new(),
                });
            }
        }
        if !periods.is_empty() {
            covered.insert(account_id, (accounts.len(), period_of));
            accounts.push(AccountWork {
                account_id: account_id.clone(),
                periods,
                grants: Vec::new(),
            });
        }
    }

    let mut outside = Outside::default();
    let mut placements: HashMap<String, Placement> = HashMap::with_capacity(deduped.events.len());
    for usage in deduped.events {
        let placement = if usage.occurred_at >= as_of {
            Placement::Outside
        } else {
            let found = allocations
                .get(&usage.account_id)
                .and_then(|allocs| containing(allocs, usage.occurred_at));
            match found {
                None => {
                    rejects.push(Reject {
                        dataset: Dataset::Usage,
                        at: usage.at,
                        reason: Reason::NoAllocation,
                        detail: format!(
                            "no allocation of account \"{}\" contains occurred_at {}",
                            usage.account_id,
                            format_instant(usage.occurred_at)
                        ),
                    });
                    Placement::NoAllocation
                }
                Some(alloc) => match covered
                    .get(usage.account_id.as_str())
                    .and_then(|(account, period_of)| period_of.get(&alloc).map(|p| (*account, *p)))
                {
                    Some((account, period)) => {
                        let events = &mut accounts[account].periods[period].events;
                        let event = events.len();
                        let conflicting = deduped.conflicting.contains(&usage.event_id);
                        placements.insert(
                            usage.event_id.clone(),
                            Placement::InWindow {
                                account,
                                period,
                                event,
                            },
                        );
                        events.push(EventWork {
                            usage,
                            entries: Vec::new(),
                            conflicting,
                        });
                        continue;
                    }
                    None => Placement::Outside,
                },
            }
        };
        if matches!(placement, Placement::Outside) {
            outside.usage_rows += 1;
        }
        placements.insert(usage.event_id, placement);
    }

    for entry in debits {
        if entry.recorded_at >= as_of {
            outside.ledger_entries += 1;
            continue;
        }
        let attached = entry
            .event_id
            .as_ref()
            .and_then(|id| placements.get(id))
            .copied();
        match attached {
            Some(Placement::InWindow {
                account,
                period,
                event,
            }) => accounts[account].periods[period].events[event]
                .entries
                .push(entry),
            Some(Placement::NoAllocation) => rejects.push(Reject {
                dataset: Dataset::Debits,
                at: entry.at,
                reason: Reason::NoAllocation,
                detail: format!(
                    "its event \"{}\" was rejected no_allocation",
                    entry.event_id.as_deref().unwrap_or_default()
                ),
            }),
            Some(Placement::Outside) => outside.ledger_entries += 1,
            None => {
                let found = allocations
                    .get(&entry.account_id)
                    .and_then(|allocs| containing(allocs, entry.recorded_at));
                match found {
                    None => rejects.push(Reject {
                        dataset: Dataset::Debits,
                        at: entry.at,
                        reason: Reason::NoAllocation,
                        detail: format!(
                            "no allocation of account \"{}\" contains recorded_at {} and no \
                             usage event matches its event_id",
                            entry.account_id,
                            format_instant(entry.recorded_at)
                        ),
                    }),
                    Some(alloc) => match covered.get(entry.account_id.as_str()).and_then(
                        |(account, period_of)| period_of.get(&alloc).map(|p| (*account, *p)),
                    ) {
                        Some((account, period)) => {
                            accounts[account].periods[period].unattached.push(entry)
                        }
                        None => outside.ledger_entries += 1,
                    },
                }
            }
        }
    }

    let index: HashMap<String, usize> = accounts
        .iter()
        .enumerate()
        .map(|(i, a)| (a.account_id.clone(), i))
        .collect();
    for grant in grants {
        if let Some(&i) = index.get(&grant.account_id) {
            accounts[i].grants.push(grant);
        }
    }
    (accounts, outside)
}
