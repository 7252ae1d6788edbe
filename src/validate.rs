//! Stage 2: the checks that need more than one row: unknown plans, overlapping periods,
//! repeated ids, and usage dedup. Every rejected row gets the contract's reason.

use crate::load::InputFile;
use crate::model::*;
use crate::pricebook::PriceBook;
use std::collections::HashMap;

/// "usage/part-0.parquet row 3": where a row is, for reject details.
fn at_text(files: &[InputFile], at: RowRef) -> String {
    let file = files
        .get(at.file as usize)
        .map_or("?", |f| f.rel_path.as_str());
    format!("{file} row {}", at.row)
}

fn reject(dataset: Dataset, at: RowRef, reason: Reason, detail: String) -> Reject {
    Reject {
        dataset,
        at,
        reason,
        detail,
    }
}

/// Valid allocations by account, each list sorted by `period_start`.
pub type Allocations = HashMap<String, Vec<AllocationRow>, FastHash>;

/// allocations: unknown_plan, then overlapping_period among the rows that passed every
/// earlier check (both rows of an overlap are rejected). Returns valid allocations grouped
/// by account, each sorted by `period_start`.
pub fn allocations(
    rows: Vec<AllocationRow>,
    book: &PriceBook,
    files: &[InputFile],
    rejects: &mut Vec<Reject>,
) -> Allocations {
    let mut by_account: Allocations = HashMap::default();
    for row in rows {
        if !book.plans.contains_key(&row.plan_id) {
            rejects.push(reject(
                Dataset::Allocations,
                row.at,
                Reason::UnknownPlan,
                format!(
                    "plan_id {} is not a plan of the price book",
                    quoted(&row.plan_id)
                ),
            ));
            continue;
        }
        by_account
            .entry(row.account_id.clone())
            .or_default()
            .push(row);
    }
    for periods in by_account.values_mut() {
        periods.sort_by_key(|p| (p.period_start, p.period_end, p.at));
        let mut overlapping = vec![None::<RowRef>; periods.len()];
        // Sorted by start: row i overlaps a later row j while j starts before i ends.
        for i in 0..periods.len() {
            for j in i + 1..periods.len() {
                if periods[j].period_start >= periods[i].period_end {
                    break;
                }
                overlapping[i].get_or_insert(periods[j].at);
                overlapping[j].get_or_insert(periods[i].at);
            }
        }
        let mut kept = Vec::with_capacity(periods.len());
        for (period, other) in periods.drain(..).zip(overlapping) {
            match other {
                Some(other) => rejects.push(reject(
                    Dataset::Allocations,
                    period.at,
                    Reason::OverlappingPeriod,
                    format!(
                        "period {}..{} of account {} overlaps the allocation at {}",
                        crate::time::format_instant(period.period_start),
                        crate::time::format_instant(period.period_end),
                        quoted(&period.account_id),
                        at_text(files, other)
                    ),
                )),
                None => kept.push(period),
            }
        }
        *periods = kept;
    }
    by_account.retain(|_, periods| !periods.is_empty());
    by_account
}

/// Every row whose id repeats an earlier row's, as (row, first row with that id), by row.
fn repeats<T: Sync>(rows: &[T], id_of: impl Fn(&T) -> &str + Sync) -> Vec<(u32, u32)> {
    let mut found: Vec<(u32, u32)> = copies_in(&id_hashes(rows, &id_of), rows, id_of)
        .into_iter()
        .flat_map(|group| {
            let first = group[0];
            group.into_iter().skip(1).map(move |row| (row, first))
        })
        .collect();
    found.sort_unstable();
    found
}

/// 64-bit hash of an id for sorted-index joins (equal ids are always compared as
/// strings). Dedup sorts the events by it and the window's ledger join looks entries up
/// in that order: both must use this one function.
pub fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// ([`id_hash`] of the id, row) of every row, sorted.
pub fn id_hashes<T: Sync>(rows: &[T], id_of: &(impl Fn(&T) -> &str + Sync)) -> Vec<(u64, u32)> {
    use rayon::prelude::*;
    assert!(rows.len() < u32::MAX as usize, "row numbers fit in u32");
    let mut keyed: Vec<(u64, u32)> = rows
        .par_iter()
        .enumerate()
        .map(|(i, row)| (id_hash(id_of(row)), i as u32))
        .collect();
    // A stable radix sort by hash of pairs made in row order is the order of (hash, row)
    // (the 10M validate stage, mostly these sorts, took 0.81 s with a parallel comparison
    // sort and 0.43 s with this one in the bench runs before and after; benches/README).
    radsort::sort_by_key(&mut keyed, |pair| pair.0);
    keyed
}

/// The rows of every id held by more than one row, from the rows' sorted id hashes
/// ([`id_hashes`]): each group by row number (its first is the id's first row), groups by
/// their first row. Ids are hashed and sorted with their row numbers in parallel, and only
/// rows of equal hash are compared as strings: cache-friendly at millions of rows, where a
/// hash map of borrowed ids is bound by cache misses into the rows.
fn copies_in<T>(keyed: &[(u64, u32)], rows: &[T], id_of: impl Fn(&T) -> &str) -> Vec<Vec<u32>> {
    let mut groups: Vec<Vec<u32>> = Vec::new();
    for run in keyed
        .chunk_by(|a, b| a.0 == b.0)
        .filter(|run| run.len() > 1)
    {
        // Rows of one hash, by row number; distinct ids of one hash are told apart.
        let mut by_id: Vec<Vec<u32>> = Vec::new();
        for &(_, row) in run {
            let id = id_of(&rows[row as usize]);
            match by_id
                .iter_mut()
                .find(|group| id_of(&rows[group[0] as usize]) == id)
            {
                Some(group) => group.push(row),
                None => by_id.push(vec![row]),
            }
        }
        groups.extend(by_id.into_iter().filter(|group| group.len() > 1));
    }
    groups.sort_unstable_by_key(|group| group[0]);
    groups
}

/// Keep the first row (by file, row) of every id; later rows are `bad_value`.
fn first_of_each_id<T: Sync>(
    rows: Vec<T>,
    dataset: Dataset,
    id_column: &str,
    id_of: impl Fn(&T) -> &str + Sync,
    at_of: impl Fn(&T) -> RowRef,
    files: &[InputFile],
    rejects: &mut Vec<Reject>,
) -> Vec<T> {
    let mut repeated = vec![false; rows.len()];
    for (index, first) in repeats(&rows, &id_of) {
        repeated[index as usize] = true;
        let (row, first) = (&rows[index as usize], &rows[first as usize]);
        rejects.push(reject(
            dataset,
            at_of(row),
            Reason::BadValue,
            format!(
                "{id_column} {} repeats the row at {}",
                quoted(id_of(row)),
                at_text(files, at_of(first))
            ),
        ));
    }
    let mut rows = rows;
    let mut index = 0;
    rows.retain(|_| {
        let r = repeated[index];
        index += 1;
        !r
    });
    rows
}

/// grants: a repeated `grant_id` is `bad_value`; the first row by (file, row) is kept.
pub fn grants(
    rows: Vec<GrantRow>,
    files: &[InputFile],
    rejects: &mut Vec<Reject>,
) -> Vec<GrantRow> {
    first_of_each_id(
        rows,
        Dataset::Grants,
        "grant_id",
        |g| &g.grant_id,
        |g| g.at,
        files,
        rejects,
    )
}

/// debits: a repeated `entry_id` is `bad_value`; the first row by (file, row) is kept.
pub fn debits(
    rows: Vec<DebitRow>,
    files: &[InputFile],
    rejects: &mut Vec<Reject>,
) -> Vec<DebitRow> {
    first_of_each_id(
        rows,
        Dataset::Debits,
        "entry_id",
        |d| &d.entry_id,
        |d| d.at,
        files,
        rejects,
    )
}

/// The order in which copies of an event compete; the least wins: the earliest
/// `ingested_at` (nulls last), then the first file path, then the first row.
pub fn winner_key(r: &UsageRow) -> (bool, Option<crate::time::Micros>, RowRef) {
    (r.ingested_at.is_none(), r.ingested_at, r.at)
}

/// The result of usage dedup.
pub struct Deduped {
    /// One row per event_id: the winning copy.
    pub events: Vec<UsageRow>,
    /// event_ids whose copies differed (reported `conflicting_duplicate`).
    pub conflicting: std::collections::HashSet<Id, FastHash>,
    /// Losing copies equal to the winner: counted only.
    pub identical_copies: u64,
    /// ([`id_hash`] of `event_id`, index in `events`) of every event, sorted: the window's join
    /// of ledger entries to events uses the hashes dedup computed.
    pub by_id_hash: Vec<(u64, u32)>,
}

/// Dedup validated usage rows by `event_id`. The winner is the copy with the earliest
/// `ingested_at` (null last), then first file path, then row. Losing copies equal to the
/// winner are identical duplicates; losing copies that differ are rejected
/// `conflicting_duplicate`.
pub fn dedup_usage(rows: Vec<UsageRow>, files: &[InputFile], rejects: &mut Vec<Reject>) -> Deduped {
    // The copies of each repeated event_id: its first row, then the others by row.
    fn event_id(r: &UsageRow) -> &str {
        &r.event_id
    }
    let mut by_id_hash = id_hashes(&rows, &event_id);
    let groups = copies_in(&by_id_hash, &rows, event_id);
    // Decide every group with copies: the winner, identical losers, conflicting losers.
    let mut losing = vec![false; rows.len()];
    let mut conflicting = std::collections::HashSet::default();
    let mut identical_copies = 0u64;
    for mut group in groups {
        group.sort_by_key(|&i| winner_key(&rows[i as usize]));
        let winner = &rows[group[0] as usize];
        for &loser_index in &group[1..] {
            let loser = &rows[loser_index as usize];
            losing[loser_index as usize] = true;
            if loser.same_event_as(winner) {
                identical_copies += 1;
            } else {
                conflicting.insert(winner.event_id.clone());
                rejects.push(reject(
                    Dataset::Usage,
                    loser.at,
                    Reason::ConflictingDuplicate,
                    format!(
                        "event_id {} differs in {} from the copy kept at {}",
                        quoted(&loser.event_id),
                        loser.differing_fields(winner).join(", "),
                        at_text(files, winner.at)
                    ),
                ));
            }
        }
    }
    // In place: no second multi-GB vector (and no fresh pages to fault in).
    let mut rows = rows;
    let mut index = 0;
    rows.retain(|_| {
        let lost = losing[index];
        index += 1;
        !lost
    });
    // The kept rows' hashes, renumbered to their places after the retain (an increasing
    // renumbering: the pairs stay sorted).
    let mut kept_before = Vec::with_capacity(losing.len());
    let mut kept = 0u32;
    for &lost in &losing {
        kept_before.push(kept);
        kept += u32::from(!lost);
    }
    by_id_hash.retain(|&(_, i)| !losing[i as usize]);
    by_id_hash
        .iter_mut()
        .for_each(|(_, i)| *i = kept_before[*i as usize]);
    Deduped {
        events: rows,
        conflicting,
        identical_copies,
        by_id_hash,
    }
}

/// A fast, stable hasher for hash maps keyed by ids.
pub type FastHash = rustc_hash::FxBuildHasher;

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(row: u64, event: &str, ingested_at: Option<i64>) -> UsageRow {
        UsageRow {
            occurred_at: 5,
            ingested_at,
            ..UsageRow::sample(row, event)
        }
    }

    fn files() -> Vec<InputFile> {
        ["usage/a.parquet", "usage/b.parquet"]
            .map(|p| InputFile {
                rel_path: p.into(),
                abs_path: p.into(),
            })
            .to_vec()
    }

    fn at(file: u32, row: u64) -> RowRef {
        RowRef { file, row }
    }

    /// Contract, usage: "Copies that differ: the one with the earliest `ingested_at` (then
    /// first file path, then row) is the event; the event is also reported as a
    /// `conflicting_duplicate`"; section 7: "a null `ingested_at` sorts last", "extra
    /// identical copies are only counted".
    #[test]
    fn dedup_follows_the_contracts_winner_rule() {
        let copy = |file: u32, row: u64, id: &str, ingested: Option<i64>, quantity: i64| UsageRow {
            at: at(file, row),
            quantity: crate::amount::Milli(quantity),
            ..usage(row, id, ingested)
        };
        let rows = vec![
            // "n": the null ingested_at sorts last, so the later-file copy wins.
            copy(0, 0, "n", None, 1000),
            copy(1, 0, "n", Some(7), 2000),
            // "f": equal ingested_at: the first file path wins, whatever the row.
            copy(1, 1, "f", Some(3), 1000),
            copy(0, 9, "f", Some(3), 2000),
            // "r": same file and ingested_at: the first row wins; an identical copy counts.
            copy(0, 5, "r", Some(3), 1000),
            copy(0, 4, "r", Some(3), 2000),
            copy(0, 6, "r", Some(3), 2000),
        ];
        let mut rejects = Vec::new();
        let deduped = dedup_usage(rows, &files(), &mut rejects);
        let mut kept: Vec<(String, RowRef)> = deduped
            .events
            .iter()
            .map(|e| (e.event_id.to_string(), e.at))
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            [
                ("f".into(), at(0, 9)),
                ("n".into(), at(1, 0)),
                ("r".into(), at(0, 4))
            ]
        );
        let mut lost: Vec<(RowRef, Reason)> = rejects.iter().map(|r| (r.at, r.reason)).collect();
        lost.sort();
        assert_eq!(
            lost,
            [
                (at(0, 0), Reason::ConflictingDuplicate),
                (at(0, 5), Reason::ConflictingDuplicate),
                (at(1, 1), Reason::ConflictingDuplicate),
            ]
        );
        assert_eq!(deduped.identical_copies, 1);
        let mut conflicting: Vec<&str> = deduped.conflicting.iter().map(Id::as_str).collect();
        conflicting.sort();
        assert_eq!(conflicting, ["f", "n", "r"]);
    }

    /// Contract section 7: "debits: ... bad_value (... repeated entry_id). For a repeated
    /// id the first row by (file, row) is kept."
    #[test]
    fn a_repeated_entry_id_keeps_the_first_row_by_file_and_row() {
        let entry = |file: u32, row: u64, id: &str| DebitRow {
            at: at(file, row),
            entry_id: Id::new(id),
            account_id: "acct-1".into(),
            event_id: None,
            kind: EntryKind::Debit,
            credits: crate::amount::Milli(1000),
            recorded_at: 5,
        };
        let rows = vec![
            entry(0, 0, "x"),
            entry(0, 1, "y"),
            entry(0, 2, "x"),
            entry(1, 0, "x"),
        ];
        let mut rejects = Vec::new();
        let kept = debits(rows, &files(), &mut rejects);
        let kept: Vec<RowRef> = kept.iter().map(|d| d.at).collect();
        assert_eq!(kept, [at(0, 0), at(0, 1)]);
        let lost: Vec<(RowRef, Reason, &str)> = rejects
            .iter()
            .map(|r| (r.at, r.reason, r.detail.as_str()))
            .collect();
        assert_eq!(
            lost,
            [
                (
                    at(0, 2),
                    Reason::BadValue,
                    "entry_id \"x\" repeats the row at usage/a.parquet row 0"
                ),
                (
                    at(1, 0),
                    Reason::BadValue,
                    "entry_id \"x\" repeats the row at usage/a.parquet row 0"
                ),
            ]
        );
    }

    /// The radix sort by hash alone must give the (hash, row) order the joins rely on,
    /// also for repeated ids (equal hashes) and many rows.
    #[test]
    fn id_hashes_are_sorted_by_hash_then_row() {
        let ids: Vec<String> = (0..5_000u64)
            .map(|i| format!("evt-{}", (i * 7919) % 1_300))
            .collect();
        let keyed = id_hashes(&ids, &|id: &String| id.as_str());
        let mut expected: Vec<(u64, u32)> = ids
            .iter()
            .enumerate()
            .map(|(row, id)| (id_hash(id), row as u32))
            .collect();
        expected.sort_unstable();
        assert_eq!(keyed, expected);
    }

    /// Equal hashes are not equal ids: the hash index is forged so that four rows of two
    /// ids, and a fifth id alone, share one hash.
    #[test]
    fn copies_are_told_apart_by_id_under_one_hash() {
        let ids = ["a", "b", "a", "b", "c", "d", "d"];
        let keyed: Vec<(u64, u32)> = vec![(7, 0), (7, 1), (7, 2), (7, 3), (7, 4), (9, 5), (9, 6)];
        let groups = copies_in(&keyed, &ids, |id: &&str| id);
        assert_eq!(groups, vec![vec![0, 2], vec![1, 3], vec![5, 6]]);
        assert_eq!(repeats(&ids, |id: &&str| id), vec![(2, 0), (3, 1), (6, 5)]);
    }

    #[test]
    fn dedup_keeps_the_winners_and_their_sorted_id_hashes() {
        // "b" has an earlier-ingested copy later in the file: that copy wins.
        let rows = vec![
            usage(0, "a", Some(1)),
            usage(1, "b", Some(9)),
            usage(2, "a", Some(1)),
            usage(3, "c", None),
            usage(4, "b", Some(2)),
        ];
        let mut rejects = Vec::new();
        let deduped = dedup_usage(rows, &[], &mut rejects);
        let kept: Vec<(&str, u64)> = deduped
            .events
            .iter()
            .map(|e| (e.event_id.as_str(), e.at.row))
            .collect();
        assert_eq!(kept, [("a", 0), ("c", 3), ("b", 4)]);
        assert_eq!(deduped.identical_copies, 2);
        assert!(rejects.is_empty());
        // The hashes dedup hands to the window: the kept events', renumbered, sorted.
        assert_eq!(
            deduped.by_id_hash,
            id_hashes(&deduped.events, &|r: &UsageRow| r.event_id.as_str())
        );
    }
}
