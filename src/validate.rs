//! Stage 2: the checks that need more than one row: unknown plans, overlapping periods,
//! repeated ids, and usage dedup. Every rejected row gets the contract's reason.

use crate::dict::{Dicts, Ids};
use crate::load::InputFile;
use crate::model::*;
use crate::pricebook::PriceBook;
use rayon::prelude::*;

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

/// The valid allocations of a run, by account: the accounts sorted by bytes (an account's
/// position is its code in the run's [`Dicts`]), each one's periods sorted by start.
#[derive(Clone, Debug, Default)]
pub struct Allocations {
    /// Each account's id: the one string its allocation rows, its grants, the run's
    /// dictionary and the rows made from its allocations share.
    pub accounts: Vec<Shared>,
    pub periods: Vec<Vec<AllocationRow>>,
    /// Every account's periods as (start, end), account after account: what placing an
    /// event reads (`spans[first[code]..first[code + 1]]`).
    spans: Vec<(crate::time::Micros, crate::time::Micros)>,
    first: Vec<u32>,
}

impl Allocations {
    fn new(accounts: Vec<Shared>, periods: Vec<Vec<AllocationRow>>) -> Allocations {
        let mut first = Vec::with_capacity(periods.len() + 1);
        let mut spans = Vec::new();
        for allocs in &periods {
            first.push(spans.len() as u32);
            spans.extend(allocs.iter().map(|a| (a.period_start, a.period_end)));
        }
        first.push(spans.len() as u32);
        Allocations {
            accounts,
            periods,
            spans,
            first,
        }
    }

    /// The index among an account's periods of the one containing `t` (none for an
    /// account without allocations).
    pub fn containing(&self, account: u32, t: crate::time::Micros) -> Option<usize> {
        let code = account as usize;
        if code + 1 >= self.first.len() {
            return None;
        }
        let spans = &self.spans[self.first[code] as usize..self.first[code + 1] as usize];
        let i = spans.partition_point(|s| s.0 <= t).checked_sub(1)?;
        (t < spans[i].1).then_some(i)
    }

    /// The code of an account with valid allocations.
    pub fn code(&self, account_id: &str) -> Option<u32> {
        self.accounts
            .binary_search_by(|a| a.as_bytes().cmp(account_id.as_bytes()))
            .ok()
            .map(|i| i as u32)
    }

    /// The periods of an account, by id.
    pub fn get(&self, account_id: &str) -> Option<&Vec<AllocationRow>> {
        self.code(account_id).map(|c| &self.periods[c as usize])
    }

    /// The periods of an account, by code (none for an account without allocations).
    pub fn of(&self, account: u32) -> &[AllocationRow] {
        self.periods
            .get(account as usize)
            .map_or(&[], Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}

/// A rejected allocation row's account-period, for telling whether a run covers it: every
/// row [`allocations`] rejects (unknown_plan, overlapping_period), and a row the parse
/// rejected whose account and period can be read ([`crate::load::read_allocation`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedPeriod {
    pub at: RowRef,
    /// `None`: the row's account is null or not valid (no earlier close closed its period).
    pub account_id: Option<String>,
    pub period_start: crate::time::Micros,
    pub period_end: crate::time::Micros,
}

impl RejectedPeriod {
    fn of(row: &AllocationRow) -> RejectedPeriod {
        RejectedPeriod {
            at: row.at,
            account_id: Some(row.account_id.to_string()),
            period_start: row.period_start,
            period_end: row.period_end,
        }
    }
}

/// allocations: unknown_plan, then overlapping_period among the rows that passed every
/// earlier check (both rows of an overlap are rejected). Returns valid allocations grouped
/// by account, each sorted by `period_start`; each row it rejects is also in `rejected`,
/// with its period.
pub fn allocations(
    rows: Vec<AllocationRow>,
    book: &PriceBook,
    files: &[InputFile],
    rejects: &mut Vec<Reject>,
    rejected: &mut Vec<RejectedPeriod>,
) -> Allocations {
    let mut known = Vec::with_capacity(rows.len());
    for mut row in rows {
        let Some(plan) = book.plans.get(&*row.plan_id) else {
            rejects.push(reject(
                Dataset::Allocations,
                row.at,
                Reason::UnknownPlan,
                format!(
                    "plan_id {} is not a plan of the price book",
                    quoted(&row.plan_id)
                ),
            ));
            rejected.push(RejectedPeriod::of(&row));
            continue;
        };
        // A plan's allocations share the price book's string for its id (each row was
        // read with its own).
        row.plan_id = plan.plan_id.clone();
        known.push(row);
    }
    // One sort puts each account's periods together, by start (then end, then place),
    // and the accounts in the order of their codes: no map of accounts and no allocation
    // per account but its periods (a 100M-event month has 1.4M allocations and grants).
    known.par_sort_unstable_by(|a, b| {
        a.account_id
            .as_bytes()
            .cmp(b.account_id.as_bytes())
            .then_with(|| {
                (a.period_start, a.period_end, a.at).cmp(&(b.period_start, b.period_end, b.at))
            })
    });
    let mut accounts = Vec::new();
    let mut periods = Vec::new();
    let mut rows = known.into_iter().peekable();
    let mut run = Vec::new();
    while let Some(first) = rows.next() {
        run.clear();
        run.push(first);
        // An account's allocations share its first row's string for its id; the run's
        // dictionary, the account's grants and every row made from its allocations share
        // it in turn (`Allocations::accounts`).
        while let Some(mut next) = rows.next_if(|r| r.account_id == run[0].account_id) {
            next.account_id = run[0].account_id.clone();
            run.push(next);
        }
        let kept = without_overlaps(&mut run, files, rejects, rejected);
        if !kept.is_empty() {
            accounts.push(kept[0].account_id.clone());
            periods.push(kept);
        }
    }
    Allocations::new(accounts, periods)
}

/// One account's periods (sorted by start; `periods` is left empty, its room reused for
/// the next account) less those that overlap another, which are rejected naming the first
/// period they overlap.
fn without_overlaps(
    periods: &mut Vec<AllocationRow>,
    files: &[InputFile],
    rejects: &mut Vec<Reject>,
    rejected: &mut Vec<RejectedPeriod>,
) -> Vec<AllocationRow> {
    // Sized exactly: an account's periods are kept for the whole run (a vector grown by
    // push would hold room for 4 rows, which raised the 100M-event peak; measured:
    // benches/README.md, "2026-12-03, morning, later: allocations validated by one sort").
    if periods.len() == 1 {
        return vec![periods.pop().expect("one period")];
    }
    // Each period's first overlap: the earliest (in start order) earlier period that ends
    // after it starts, else the next one if it starts before this one ends. Sorted by start,
    // a period overlaps a later one exactly when that one starts before it ends; and once a
    // period ends before some start, it ends before every later start, so the earlier
    // periods still open are a queue: linear, where comparing every pair of an account's
    // overlapping periods was quadratic (100,000 copies of one allocation row took 8.3 s).
    let mut overlapping = vec![None::<RowRef>; periods.len()];
    let mut open = std::collections::VecDeque::new();
    for j in 0..periods.len() {
        while open
            .front()
            .is_some_and(|&i: &usize| periods[i].period_end <= periods[j].period_start)
        {
            open.pop_front();
        }
        overlapping[j] = match open.front() {
            Some(&i) => Some(periods[i].at),
            None => (periods.get(j + 1))
                .filter(|next| next.period_start < periods[j].period_end)
                .map(|next| next.at),
        };
        open.push_back(j);
    }
    let mut kept = Vec::with_capacity(periods.len());
    for (period, other) in periods.drain(..).zip(overlapping) {
        match other {
            Some(other) => {
                rejects.push(reject(
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
                ));
                rejected.push(RejectedPeriod::of(&period));
            }
            None => kept.push(period),
        }
    }
    kept
}

/// Every row whose id repeats an earlier row's, as (row, first row with that id), by row.
fn repeats<'a, T: Sync>(
    rows: &'a [T],
    hash_of: impl Fn(&T) -> u64 + Sync,
    id_of: impl Fn(&'a T) -> &'a [u8] + Sync,
) -> Vec<(u32, u32)> {
    let index = HashIndex::of(rows, HashIndex::bits_for(rows.len()), |r| Some(hash_of(r)));
    let mut found: Vec<(u32, u32)> = index
        .copies(rows, id_of)
        .into_iter()
        .flat_map(|group| {
            let first = group[0];
            group.into_iter().skip(1).map(move |row| (row, first))
        })
        .collect();
    found.sort_unstable();
    found
}

/// 64-bit hash of an id for the hash joins (equal ids are always compared as strings).
/// Dedup files the events by it and the window's ledger join looks entries up by it: both
/// must use this one function.
pub fn id_hash(id: &str) -> u64 {
    id_hash_of_bytes(id.as_bytes())
}

/// [`id_hash`] of an id's bytes (as an id chunk holds them).
pub fn id_hash_of_bytes(id: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id)
}

/// (hash, row) pairs of a set of rows, filed into partitions by the hash's top bits: the
/// rows that share an id are in one partition, and a partition (a few thousand pairs)
/// is matched in cache, all partitions in parallel. Within a partition pairs are in row
/// order.
pub struct HashIndex {
    bits: u32,
    pairs: Vec<(u64, u32)>,
    /// Partition `p` is `pairs[starts[p]..starts[p + 1]]`.
    starts: Vec<usize>,
}

/// Marks a forgotten pair's row (rows stay below it, so a partition stays in row order).
const FORGOTTEN: u32 = 1 << 31;

/// Pairs a partition holds on average (about 128 KB: a partition's hash table stays in
/// the core's cache).
const PAIRS_PER_PARTITION: usize = 8 * 1024;

impl HashIndex {
    /// The partition bits for `rows` rows (two indexes matched against each other must use
    /// the same).
    pub fn bits_for(rows: usize) -> u32 {
        (rows / PAIRS_PER_PARTITION).max(1).ilog2().clamp(4, 16)
    }

    /// The index of `rows` (`hash_of`: `None` leaves a row out).
    pub fn of<T: Sync>(
        rows: &[T],
        bits: u32,
        hash_of: impl Fn(&T) -> Option<u64> + Sync,
    ) -> HashIndex {
        assert!(
            rows.len() < FORGOTTEN as usize,
            "row numbers fit in 31 bits (groups are far smaller)"
        );
        let filed = crate::partition::file(rows.len(), 1 << bits, |row| {
            let hash = hash_of(&rows[row])?;
            Some(((hash >> (64 - bits)) as usize, (hash, row as u32)))
        });
        HashIndex {
            bits,
            pairs: filed.items,
            starts: filed.starts,
        }
    }

    /// The partition bits of this index.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    fn partition(&self, p: usize) -> &[(u64, u32)] {
        &self.pairs[self.starts[p]..self.starts[p + 1]]
    }

    fn partitions(&self) -> usize {
        self.starts.len() - 1
    }

    /// Leave row `row` (filed under `hash`) out of [`HashIndex::matches`]: dedup forgets
    /// the losing copies (a row's partition is in row order: found by binary search).
    pub fn forget(&mut self, hash: u64, row: u32) {
        let p = (hash >> (64 - self.bits)) as usize;
        let partition = &mut self.pairs[self.starts[p]..self.starts[p + 1]];
        let at = partition
            .binary_search_by_key(&row, |pair| pair.1 & !FORGOTTEN)
            .expect("a forgotten row is in its hash's partition");
        partition[at].1 |= FORGOTTEN;
    }

    /// For each row of `other` (indexed with the same bits) whose hash is the hash of a
    /// row of this index: (other row, this row), by partition. When one row has the hash,
    /// it is paired unchecked (the caller compares the ids, in its own order: comparing
    /// here would read two rows at random per pair); when several do (a 64-bit collision),
    /// `same_id(this row, other row)` chooses among them. Forgotten rows are left out.
    /// The pairs stay in one small vector per partition: gathering them into one vector
    /// grew it into fresh memory every group (the faults counted by call site:
    /// benches/README.md, "Profiles and experiments (2026-12-04, morning: fresh pages)" and
    /// "Figures moved from source comments (2026-12-05)").
    pub fn matches(
        &self,
        other: &HashIndex,
        same_id: &(dyn Fn(u32, u32) -> bool + Sync),
    ) -> Vec<Vec<(u32, u32)>> {
        assert_eq!(
            self.bits, other.bits,
            "indexes matched with the same partitions"
        );
        const SEVERAL: u32 = u32::MAX;
        (0..self.partitions())
            .into_par_iter()
            .map(|p| {
                let mine = self.partition(p);
                let mut row_of: rustc_hash::FxHashMap<u64, u32> =
                    rustc_hash::FxHashMap::with_capacity_and_hasher(mine.len(), Default::default());
                let mut colliding: Vec<(u64, u32)> = Vec::new();
                for &(h, row) in mine.iter().filter(|(_, row)| row & FORGOTTEN == 0) {
                    match row_of.entry(h) {
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            slot.insert(row);
                        }
                        std::collections::hash_map::Entry::Occupied(mut slot) => {
                            if *slot.get() != SEVERAL {
                                colliding.push((h, *slot.get()));
                                slot.insert(SEVERAL);
                            }
                            colliding.push((h, row));
                        }
                    }
                }
                let mut found = Vec::with_capacity(other.partition(p).len());
                for &(h, theirs) in other.partition(p) {
                    match row_of.get(&h) {
                        None => {}
                        Some(&SEVERAL) => {
                            let candidates = colliding.iter().filter(|c| c.0 == h);
                            if let Some(&(_, row)) =
                                candidates.into_iter().find(|c| same_id(c.1, theirs))
                            {
                                found.push((theirs, row));
                            }
                        }
                        Some(&row) => found.push((theirs, row)),
                    }
                }
                found
            })
            .collect()
    }

    /// The rows of every id held by more than one row: each group by row number (its first
    /// is the id's first row), groups by their first row. Rows of one hash are compared as
    /// strings (distinct ids of one hash are told apart).
    pub fn copies<'a, T: Sync>(
        &self,
        rows: &'a [T],
        id_of: impl Fn(&'a T) -> &'a [u8] + Sync,
    ) -> Vec<Vec<u32>> {
        let mut groups: Vec<Vec<u32>> = (0..self.partitions())
            .into_par_iter()
            .flat_map_iter(|p| {
                let pairs = self.partition(p);
                // The first row of each hash; hashes seen again collect their rows.
                let mut first: rustc_hash::FxHashMap<u64, u32> =
                    rustc_hash::FxHashMap::with_capacity_and_hasher(
                        pairs.len(),
                        Default::default(),
                    );
                let mut repeated: Vec<(u64, u32)> = Vec::new();
                for &(h, row) in pairs {
                    match first.entry(h) {
                        std::collections::hash_map::Entry::Occupied(f) => {
                            repeated.push((h, *f.get()));
                            repeated.push((h, row));
                        }
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            slot.insert(row);
                        }
                    }
                }
                // A hash with three rows pushed its first row twice.
                repeated.sort_unstable();
                repeated.dedup();
                let mut groups = Vec::new();
                for run in repeated.chunk_by(|a, b| a.0 == b.0) {
                    groups.extend(copies_of_one_hash(run, rows, &id_of));
                }
                groups
            })
            .collect();
        groups.sort_unstable_by_key(|group| group[0]);
        groups
    }
}

/// The groups (two rows or more) of one id among rows sharing one hash, each by row.
fn copies_of_one_hash<'a, T>(
    run: &[(u64, u32)],
    rows: &'a [T],
    id_of: &impl Fn(&'a T) -> &'a [u8],
) -> Vec<Vec<u32>> {
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
    by_id.retain(|group| group.len() > 1);
    by_id
}

/// How rows of one dataset name their repeated ids in rejects.
struct IdRule<'a, T> {
    dataset: Dataset,
    id_column: &'a str,
    id_text: &'a dyn Fn(&T) -> String,
    at_of: &'a dyn Fn(&T) -> RowRef,
}

/// Keep the first row (by file, row) of every id; the later rows `found` ([`repeats`])
/// are `bad_value`.
fn first_of_each_id<T>(
    rows: Vec<T>,
    found: Vec<(u32, u32)>,
    rule: IdRule<'_, T>,
    files: &[InputFile],
    rejects: &mut Vec<Reject>,
) -> Vec<T> {
    if found.is_empty() {
        return rows;
    }
    let mut repeated = vec![false; rows.len()];
    for (index, first) in found {
        repeated[index as usize] = true;
        let (row, first) = (&rows[index as usize], &rows[first as usize]);
        rejects.push(reject(
            rule.dataset,
            (rule.at_of)(row),
            Reason::BadValue,
            format!(
                "{} {} repeats the row at {}",
                rule.id_column,
                quoted(&(rule.id_text)(row)),
                at_text(files, (rule.at_of)(first))
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
    let found = repeats(&rows, |g| id_hash(&g.grant_id), |g| g.grant_id.as_bytes());
    let rule = IdRule {
        dataset: Dataset::Grants,
        id_column: "grant_id",
        id_text: &|g: &GrantRow| g.grant_id.clone(),
        at_of: &|g: &GrantRow| g.at,
    };
    first_of_each_id(rows, found, rule, files, rejects)
}

/// debits: a repeated `entry_id` is `bad_value`; the first row by (file, row) is kept.
/// The rows stay where they are: later copies are flagged [`Debit::REPEATED`]. Returns
/// the rows kept.
pub fn debits(
    rows: &mut [Debit],
    ids: &Ids,
    files: &[InputFile],
    rejects: &mut Vec<Reject>,
) -> usize {
    let index = HashIndex::of(rows, HashIndex::bits_for(rows.len()), |d| {
        Some(d.entry_hash)
    });
    let groups = index.copies(rows, |d| ids.bytes(d.entry_id));
    drop(index);
    let mut repeated = 0;
    for mut group in groups {
        // The first row by (file, row) is kept (rows may not be in file order).
        group.sort_by_key(|&i| rows[i as usize].at);
        let first = rows[group[0] as usize];
        for &i in &group[1..] {
            let row = &mut rows[i as usize];
            row.flags |= Debit::REPEATED;
            repeated += 1;
            rejects.push(reject(
                Dataset::Debits,
                row.at.row_ref(),
                Reason::BadValue,
                format!(
                    "entry_id {} repeats the row at {}",
                    quoted(&String::from_utf8_lossy(ids.bytes(row.entry_id))),
                    at_text(files, first.at.row_ref())
                ),
            ));
        }
    }
    rows.len() - repeated
}

/// The order in which copies of an event compete; the least wins: the earliest
/// `ingested_at` (nulls last), then the first file path, then the first row.
pub fn winner_key(r: &UsageRow) -> (bool, Option<crate::time::Micros>, RowRef) {
    (r.ingested_at.is_none(), r.ingested_at, r.at)
}

/// [`winner_key`] of a compact row (a null `ingested_at` is `NO_INSTANT`, after every
/// instant).
pub fn winner_order(r: &Usage) -> (crate::time::Micros, At) {
    (r.ingested_at, r.at)
}

/// The columns (other than `ingested_at`) in which two copies of an event differ.
pub fn differing_fields(a: &Usage, b: &Usage, dicts: &Dicts) -> Vec<&'static str> {
    let words = |u: &Usage| dicts.skus[u.sku as usize];
    let (wa, wb) = (words(a), words(b));
    [
        ("account_id", a.account == b.account),
        ("product", wa[0] == wb[0]),
        ("action", wa[1] == wb[1]),
        ("model", wa[2] == wb[2]),
        ("quantity", a.quantity == b.quantity),
        ("status", a.status == b.status),
        ("occurred_at", a.occurred_at == b.occurred_at),
    ]
    .into_iter()
    .filter_map(|(name, equal)| (!equal).then_some(name))
    .collect()
}

/// Copies are one event when everything but `ingested_at` (and where they were read) is
/// equal (their ids are: they are copies).
pub fn same_event(a: &Usage, b: &Usage) -> bool {
    a.account == b.account
        && a.sku == b.sku
        && a.quantity == b.quantity
        && a.status == b.status
        && a.occurred_at == b.occurred_at
}

/// The result of usage dedup.
pub struct Deduped {
    /// Events: rows that are the winning copy of their event_id.
    pub events: usize,
    /// Losing copies equal to the winner: counted only.
    pub identical_copies: u64,
    /// The usage rows by [`id_hash`] of `event_id` (losing copies included, flagged): the
    /// window's join of ledger entries to events uses the index dedup made.
    pub index: HashIndex,
}

/// Dedup validated usage rows by `event_id`. The winner is the copy with the earliest
/// `ingested_at` (null last), then first file path, then row. Losing copies equal to the
/// winner are identical duplicates; losing copies that differ are rejected
/// `conflicting_duplicate`. Rows stay where they are: losers are flagged [`Usage::LOST`],
/// winners of differing copies [`Usage::CONFLICTING`].
pub fn dedup_usage(
    rows: &mut [Usage],
    ids: &Ids,
    dicts: &Dicts,
    files: &[InputFile],
    rejects: &mut Vec<Reject>,
) -> Deduped {
    let mut index = HashIndex::of(rows, HashIndex::bits_for(rows.len()), |r: &Usage| {
        Some(r.id_hash)
    });
    let groups = index.copies(rows, |r: &Usage| ids.bytes(r.id));
    // Decide every group with copies: the winner, identical losers, conflicting losers.
    let mut identical_copies = 0u64;
    let mut lost = 0usize;
    for mut group in groups {
        group.sort_by_key(|&i| winner_order(&rows[i as usize]));
        let winner_index = group[0] as usize;
        let winner = rows[winner_index];
        for &loser_index in &group[1..] {
            let loser = rows[loser_index as usize];
            rows[loser_index as usize].flags |= Usage::LOST;
            index.forget(loser.id_hash, loser_index);
            lost += 1;
            if same_event(&loser, &winner) {
                identical_copies += 1;
            } else {
                rows[winner_index].flags |= Usage::CONFLICTING;
                rejects.push(reject(
                    Dataset::Usage,
                    loser.at.row_ref(),
                    Reason::ConflictingDuplicate,
                    format!(
                        "event_id {} differs in {} from the copy kept at {}",
                        quoted(&String::from_utf8_lossy(ids.bytes(loser.id))),
                        differing_fields(&loser, &winner, dicts).join(", "),
                        at_text(files, winner.at.row_ref())
                    ),
                ));
            }
        }
    }
    Deduped {
        events: rows.len() - lost,
        identical_copies,
        index,
    }
}

/// A fast, stable hasher for hash maps keyed by ids.
pub type FastHash = rustc_hash::FxBuildHasher;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dict::DictBuilder;

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
                first_seen: None,
            })
            .to_vec()
    }

    fn at(file: u32, row: u64) -> RowRef {
        RowRef { file, row }
    }

    /// An allocation row at `row` of file 0, its period from day `start` to day `end`.
    fn allocation(row: u64, account: &str, plan: &str, start: i64, end: i64) -> AllocationRow {
        const DAY: i64 = 86_400_000_000;
        AllocationRow {
            at: at(0, row),
            account_id: account.into(),
            plan_id: plan.into(),
            period_start: start * DAY,
            period_end: end * DAY,
            included_credits: crate::amount::Milli::from_units(200),
            billing_anchor: None,
            status: AllocationStatus::Active,
        }
    }

    /// Allocations by account code (account ids in byte order), each account's periods by
    /// start. Contract: "Two rows of one account whose periods overlap are both rejected
    /// (`overlapping_period`)", and validation runs "unknown_plan → overlapping_period
    /// (only among rows that passed every earlier check)": a row of an unknown plan is
    /// rejected for that alone and rejects no period it overlaps. Each overlap reject
    /// names the first period it overlaps; an account left without periods has no code.
    #[test]
    fn allocations_are_sorted_by_account_and_overlaps_rejected() {
        let book = crate::pricebook::PriceBook::parse(
            "currency = \"USD\"\n[plans.pro]\nprice = \"9.99\"\nincluded_credits = \"200\"\n",
            "pricebook.toml",
        )
        .unwrap();
        let rows = vec![
            allocation(0, "b", "pro", 20, 30),
            allocation(1, "b", "pro", 5, 15),
            allocation(2, "a", "pro", 0, 30),
            allocation(3, "b", "pro", 0, 10),
            allocation(4, "c", "gold", 0, 30),
            allocation(5, "d", "pro", 0, 30),
            allocation(6, "d", "pro", 29, 40),
            allocation(7, "b", "pro", 30, 60),
            allocation(8, "a", "gold", 10, 20),
        ];
        let mut rejects = Vec::new();
        let mut rejected = Vec::new();
        let found = allocations(rows, &book, &files(), &mut rejects, &mut rejected);
        assert_eq!(found.len(), 2);
        assert_eq!(found.code("a"), Some(0));
        assert_eq!(found.code("b"), Some(1));
        assert_eq!(found.code("c"), None);
        assert_eq!(found.code("d"), None);
        let rows_of = |code: u32| found.of(code).iter().map(|p| p.at.row).collect::<Vec<_>>();
        assert_eq!(rows_of(0), [2]);
        assert_eq!(rows_of(1), [0, 7]);
        // Read with a string each, an account's rows now hold the one in `accounts`, and
        // a plan's rows the price book's for the plan.
        let [b0, b7] = found.of(1) else {
            panic!("two periods of b")
        };
        assert!(std::sync::Arc::ptr_eq(&b0.account_id, &found.accounts[1]));
        assert!(std::sync::Arc::ptr_eq(&b7.account_id, &found.accounts[1]));
        assert!(std::sync::Arc::ptr_eq(&b0.plan_id, &b7.plan_id));
        assert!(std::sync::Arc::ptr_eq(&b0.plan_id, &found.of(0)[0].plan_id));
        assert!(std::sync::Arc::ptr_eq(
            &b0.plan_id,
            &book.plans[&*b0.plan_id].plan_id
        ));
        rejects.sort_by_key(|r| r.at);
        // Every reject is in `rejected` too, with its account-period.
        rejected.sort_by_key(|p| p.at);
        let places = |at: &mut dyn Iterator<Item = RowRef>| at.collect::<Vec<_>>();
        assert_eq!(
            places(&mut rejected.iter().map(|p| p.at)),
            places(&mut rejects.iter().map(|r| r.at))
        );
        let day = 86_400_000_000;
        let first = &rejected[0];
        assert_eq!(
            (
                first.account_id.as_deref(),
                first.period_start,
                first.period_end
            ),
            (Some("b"), 5 * day, 15 * day)
        );
        let seen: Vec<(u64, Reason, &str)> = rejects
            .iter()
            .map(|r| (r.at.row, r.reason, r.detail.as_str()))
            .collect();
        let overlap = Reason::OverlappingPeriod;
        let unknown = Reason::UnknownPlan;
        assert_eq!(
            seen,
            [
                (1, overlap, "period 1970-01-06T00:00:00Z..1970-01-16T00:00:00Z of account \"b\" overlaps the allocation at usage/a.parquet row 3"),
                (3, overlap, "period 1970-01-01T00:00:00Z..1970-01-11T00:00:00Z of account \"b\" overlaps the allocation at usage/a.parquet row 1"),
                (4, unknown, "plan_id \"gold\" is not a plan of the price book"),
                (5, overlap, "period 1970-01-01T00:00:00Z..1970-01-31T00:00:00Z of account \"d\" overlaps the allocation at usage/a.parquet row 6"),
                (6, overlap, "period 1970-01-30T00:00:00Z..1970-02-10T00:00:00Z of account \"d\" overlaps the allocation at usage/a.parquet row 5"),
                (8, unknown, "plan_id \"gold\" is not a plan of the price book"),
            ]
        );
    }

    /// Each rejected period names its first overlap: the earliest earlier period (in start
    /// order) that ends after it starts, else the next one; held against every pair of
    /// periods compared (the contract's rule: "Two rows of one account whose periods
    /// overlap are both rejected (`overlapping_period`)"), on random sets of periods with
    /// ties and copies, and on 2,000 copies of one row (each names the first copy; the
    /// first names the second).
    #[test]
    fn each_overlap_names_its_first_overlapping_period() {
        use proptest::prelude::*;
        let by_pairs = |periods: &[AllocationRow]| -> Vec<Option<u64>> {
            (0..periods.len())
                .map(|j| {
                    let overlaps = |i: usize| {
                        i != j
                            && periods[i].period_start < periods[j].period_end
                            && periods[j].period_start < periods[i].period_end
                    };
                    let earlier = (0..j).find(|&i| overlaps(i));
                    earlier
                        .or_else(|| (j + 1..periods.len()).find(|&i| overlaps(i)))
                        .map(|i| periods[i].at.row)
                })
                .collect()
        };
        let named = |mut periods: Vec<AllocationRow>| -> Vec<Option<u64>> {
            let mut rejects = Vec::new();
            let kept: Vec<u64> = without_overlaps(
                &mut periods.clone(),
                &files(),
                &mut rejects,
                &mut Vec::new(),
            )
            .iter()
            .map(|p| p.at.row)
            .collect();
            periods.sort_by_key(|p| p.at.row);
            (periods.iter())
                .map(|p| {
                    let reject = rejects.iter().find(|r| r.at.row == p.at.row);
                    assert_eq!(kept.contains(&p.at.row), reject.is_none());
                    reject.map(|r| {
                        let row = r.detail.rsplit("row ").next().unwrap();
                        row.parse().unwrap()
                    })
                })
                .collect()
        };
        let sorted = |spans: &[(i64, i64)]| -> Vec<AllocationRow> {
            let mut spans = spans.to_vec();
            spans.sort_by_key(|&(start, _)| start);
            (spans.iter().enumerate())
                .map(|(row, &(start, end))| allocation(row as u64, "a", "pro", start, end))
                .collect()
        };
        proptest!(ProptestConfig::with_cases(300), |(spans in prop::collection::vec(
            (0i64..40, 1i64..12).prop_map(|(start, days)| (start, start + days)), 1..40))| {
            let periods = sorted(&spans);
            prop_assert_eq!(named(periods.clone()), by_pairs(&periods));
        });
        let copies = sorted(&vec![(0, 30); 2000]);
        let first = named(copies);
        assert_eq!(first[0], Some(1));
        assert!(first[1..].iter().all(|&row| row == Some(0)));
    }

    /// An account's kept periods are sized exactly (they live for the whole run) and the
    /// run's buffer keeps its room for the next account.
    #[test]
    fn kept_periods_are_sized_exactly() {
        let mut run = vec![allocation(0, "a", "pro", 0, 10)];
        run.reserve(3);
        let room = run.capacity();
        let kept = without_overlaps(&mut run, &files(), &mut Vec::new(), &mut Vec::new());
        assert_eq!((kept.len(), kept.capacity()), (1, 1));
        assert_eq!((run.len(), run.capacity()), (0, room));
    }

    /// Dedup of rows with strings: (kept rows by id and place, conflicting ids, identical
    /// copies, rejects).
    struct Outcome {
        kept: Vec<(String, RowRef)>,
        conflicting: Vec<String>,
        identical: u64,
        rejects: Vec<Reject>,
        deduped: Deduped,
        rows: Vec<Usage>,
        ids: Ids,
    }

    fn dedup(rows: &[UsageRow]) -> Outcome {
        let builder = DictBuilder::new(["acct-1"].into_iter());
        let (compact, ids, _, _) = compact_rows(rows, &[], &builder);
        let dicts = builder.freeze();
        let mut rejects = Vec::new();
        let mut compact = compact;
        let deduped = dedup_usage(&mut compact, &ids, &dicts, &files(), &mut rejects);
        let name = |u: &Usage| ids.str(u.id).unwrap().to_string();
        let events: Vec<Usage> = compact.into_iter().filter(|u| !u.lost()).collect();
        assert_eq!(events.len(), deduped.events);
        let mut kept: Vec<(String, RowRef)> =
            events.iter().map(|e| (name(e), e.at.row_ref())).collect();
        kept.sort();
        let mut conflicting: Vec<String> = events
            .iter()
            .filter(|e| e.conflicting())
            .map(name)
            .collect();
        conflicting.sort();
        Outcome {
            kept,
            conflicting,
            identical: deduped.identical_copies,
            rejects,
            deduped,
            rows: events,
            ids,
        }
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
        let out = dedup(&rows);
        assert_eq!(
            out.kept,
            [
                ("f".into(), at(0, 9)),
                ("n".into(), at(1, 0)),
                ("r".into(), at(0, 4))
            ]
        );
        let mut lost: Vec<(RowRef, Reason)> =
            out.rejects.iter().map(|r| (r.at, r.reason)).collect();
        lost.sort();
        assert_eq!(
            lost,
            [
                (at(0, 0), Reason::ConflictingDuplicate),
                (at(0, 5), Reason::ConflictingDuplicate),
                (at(1, 1), Reason::ConflictingDuplicate),
            ]
        );
        assert_eq!(out.identical, 1);
        assert_eq!(out.conflicting, ["f", "n", "r"]);
        let detail = &out
            .rejects
            .iter()
            .find(|r| r.at == at(1, 1))
            .unwrap()
            .detail;
        assert_eq!(
            detail,
            "event_id \"f\" differs in quantity from the copy kept at usage/a.parquet row 9"
        );
    }

    /// Copies that differ in their labels name each differing column.
    #[test]
    fn a_conflicting_copy_names_the_columns_it_differs_in() {
        let first = usage(0, "x", Some(1));
        let other = UsageRow {
            account_id: "acct-2".into(),
            model: Some("m".into()),
            occurred_at: 9,
            ..usage(1, "x", Some(2))
        };
        let out = dedup(&[first, other]);
        assert_eq!(
            out.rejects[0].detail,
            "event_id \"x\" differs in account_id, model, occurred_at from the copy kept at \
             usage/a.parquet row 0"
        );
    }

    /// Contract section 7: "debits: ... bad_value (... repeated entry_id). For a repeated
    /// id the first row by (file, row) is kept."
    #[test]
    fn a_repeated_entry_id_keeps_the_first_row_by_file_and_row() {
        let entry = |file: u32, row: u64, id: &str| DebitRow {
            at: at(file, row),
            entry_id: Id::new(id),
            ..DebitRow::sample(row, None)
        };
        let rows = vec![
            entry(0, 0, "x"),
            entry(0, 1, "y"),
            entry(0, 2, "x"),
            entry(1, 0, "x"),
        ];
        let builder = DictBuilder::new(["acct-1"].into_iter());
        let (_, _, mut compact, ids) = compact_rows(&[], &rows, &builder);
        let mut rejects = Vec::new();
        assert_eq!(debits(&mut compact, &ids, &files(), &mut rejects), 2);
        let kept: Vec<RowRef> = compact
            .iter()
            .filter(|d| !d.repeated())
            .map(|d| d.at.row_ref())
            .collect();
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

    /// The index files every kept row once, in its hash's partition, in row order within
    /// a partition, whatever the thread count; at many rows (many chunks) and at the
    /// lowest and highest hashes too.
    #[test]
    fn the_index_files_every_row_in_its_partition_in_row_order() {
        for n in [5_000u64, 300_000] {
            let mut hashes: Vec<u64> = (0..n).map(|i| id_hash(&format!("evt-{i}"))).collect();
            hashes[0] = 0;
            hashes[1] = u64::MAX;
            let index = HashIndex::of(&hashes, HashIndex::bits_for(hashes.len()), |h| {
                (*h % 7 != 3).then_some(*h)
            });
            let mut filed: Vec<(u64, u32)> = Vec::new();
            for p in 0..index.partitions() {
                let part = index.partition(p);
                assert!(part.windows(2).all(|w| w[0].1 < w[1].1));
                assert!(part
                    .iter()
                    .all(|(h, _)| (h >> (64 - index.bits())) as usize == p));
                filed.extend_from_slice(part);
            }
            filed.sort_unstable();
            let mut expected: Vec<(u64, u32)> = hashes
                .iter()
                .enumerate()
                .filter(|(_, h)| *h % 7 != 3)
                .map(|(row, h)| (*h, row as u32))
                .collect();
            expected.sort_unstable();
            assert_eq!(filed, expected);
        }
    }

    /// Equal hashes are not equal ids: the index is forged so that four rows of two ids,
    /// and a fifth id alone, share one hash.
    #[test]
    fn copies_are_told_apart_by_id_under_one_hash() {
        let ids = ["a", "b", "a", "b", "c", "d", "d"];
        let forged = [7u64, 7, 7, 7, 7, 9, 9];
        let index = HashIndex::of(&forged, 4, |h| Some(*h));
        let groups = index.copies(&ids, |id: &&str| id.as_bytes());
        assert_eq!(groups, vec![vec![0, 2], vec![1, 3], vec![5, 6]]);
        assert_eq!(
            repeats(&ids, |id| id_hash(id), |id: &&str| id.as_bytes()),
            vec![(2, 0), (3, 1), (6, 5)]
        );
    }

    /// A hash held by one row is paired unchecked; one held by several is decided by
    /// comparing ids; forgotten rows are not paired.
    #[test]
    fn matches_pair_rows_of_one_hash_and_tell_collisions_apart() {
        let mine = [5u64, 6, 6, 8];
        let theirs = [6u64, 5, 9, 8, 6];
        let my_ids = ["x", "y", "z", "w"];
        let their_ids = ["z", "q", "n", "w", "y"];
        let a = HashIndex::of(&mine, 4, |h| Some(*h));
        let b = HashIndex::of(&theirs, 4, |h| Some(*h));
        let same = |m: u32, t: u32| my_ids[m as usize] == their_ids[t as usize];
        let mut a = a;
        a.forget(8, 3);
        let mut found: Vec<(u32, u32)> = a.matches(&b, &same).concat();
        found.sort_unstable();
        // theirs 0 ("z", hash 6) finds mine 2 among two; 1 ("q", hash 5) is paired with
        // mine 0 unchecked; 4 ("y", hash 6) finds mine 1; 3 (hash 8): mine 3 is forgotten.
        assert_eq!(found, vec![(0, 2), (1, 0), (4, 1)]);
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
        let out = dedup(&rows);
        let kept: Vec<(&str, u64)> = out
            .rows
            .iter()
            .map(|e| (out.ids.str(e.id).unwrap(), e.at.row()))
            .collect();
        assert_eq!(kept, [("a", 0), ("c", 3), ("b", 4)]);
        assert_eq!(out.identical, 2);
        assert!(out.rejects.is_empty());
        // The index dedup hands to the window holds every row, the losers forgotten.
        assert_eq!(out.deduped.index.pairs.len(), rows.len());
        let forgotten = out
            .deduped
            .index
            .pairs
            .iter()
            .filter(|p| p.1 & FORGOTTEN != 0);
        assert_eq!(forgotten.count(), 2);
    }
}
