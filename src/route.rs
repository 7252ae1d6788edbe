//! Routing rows to account partitions when a run is split: into groups that run one after
//! another (memory bounded by a group, not by the month) and into shards on other machines.
//!
//! Accounts are spread over [`PARTITIONS`] fixed partitions by a seeded hash of their id,
//! independent of `--buckets` (which only spreads work over threads): a shard and a group
//! are sets of partitions, so their size does not depend on the bucket count a job picks.
//!
//! The contract's work is local to an account except for three joins on ids: usage dedup
//! (by `event_id`; copies may name different accounts), attaching ledger entries to events
//! (by `event_id`; an entry may name another account than its event) and repeated
//! `entry_id`s. A row normally goes to its own account's partition. The rows those joins could
//! send elsewhere are found by a light pass over the id columns ([`find_cross_bucket`]):
//! ids whose rows fall in more than one partition. Those rows ("candidates", few in real data)
//! are kept whole and routed exactly, with the contract's rules, by [`resolve`]: all copies
//! of an event go with the winning copy's account, an entry goes with its event (else its
//! own account), and every copy of an `entry_id` goes with the first copy.

use crate::dict::Ids;
use crate::error::{Result, TallyError};
use crate::load::{self, Batch, ColSpec, ColType, Column, InputFile};
use crate::model::{Debit, Usage};
use crate::validate::{winner_order, FastHash};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The most `--buckets` a run may use.
pub const MAX_BUCKETS: u32 = 65_536;

/// Fixed account partitions: the units of shards and groups (at most this many shards).
pub const PARTITIONS: u32 = 4096;
/// The most groups a run uses: each keeps two spill files open while loading, and a group
/// of 1/256 of the month is small enough for any budget we expect.
pub const MAX_GROUPS: u32 = 256;
/// Seed of the partition hash (not 0: partitions must not line up with work buckets).
const PARTITION_SEED: u64 = 0x7461_6c6c_7970_6172;

/// The partition of an account.
pub fn partition_of(account_id: &str) -> u32 {
    (xxhash_rust::xxh3::xxh3_64_with_seed(account_id.as_bytes(), PARTITION_SEED)
        % u64::from(PARTITIONS)) as u32
}

/// How a run is split: `shards` machines (this one is `shard`) and, on each, `groups`
/// groups of partitions processed one after another. Partition `p` belongs to shard
/// `p mod shards` and, there, to group `(p div shards) mod groups`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub shard: u32,
    pub shards: u32,
    pub groups: u32,
}

impl Layout {
    /// More than one group or shard: rows must be routed.
    pub fn is_split(&self) -> bool {
        self.shards > 1 || self.groups > 1
    }

    pub fn owns(&self, partition: u32) -> bool {
        partition % self.shards == self.shard
    }

    pub fn group_of(&self, partition: u32) -> usize {
        ((partition / self.shards) % self.groups) as usize
    }

    pub fn partition(&self, account_id: &str) -> u32 {
        partition_of(account_id)
    }

    /// The group of this shard that processes an account (`None`: another shard's). A run
    /// that is not split is one group.
    pub fn group_of_account(&self, account_id: &str) -> Option<usize> {
        if !self.is_split() {
            return Some(0);
        }
        let partition = self.partition(account_id);
        self.owns(partition).then(|| self.group_of(partition))
    }
}

/// Each partition's group on this shard, looked up instead of computed: [`Layout::owns`]
/// and [`Layout::group_of`] divide by run-time counts, and the light and spill passes ask
/// for every row (the spill pass counting each batch's rows by group that way cost more
/// than the frames' regrowth the counts spared; the `perf` counts are in benches/README.md,
/// "Profiles and experiments (2026-12-04, late evening: where the split's time goes, CRC-32
/// spill frames)"). It knows how many groups there are, so the two travel together.
pub struct GroupTable {
    group_of_partition: Vec<u16>,
    groups: usize,
}

impl GroupTable {
    /// A partition of another shard.
    const OTHER_SHARD: u16 = u16::MAX;

    pub fn new(layout: &Layout) -> GroupTable {
        const _: () = assert!(MAX_GROUPS < GroupTable::OTHER_SHARD as u32);
        GroupTable {
            group_of_partition: (0..PARTITIONS)
                .map(|p| match layout.owns(p) {
                    true => layout.group_of(p) as u16,
                    false => GroupTable::OTHER_SHARD,
                })
                .collect(),
            groups: layout.groups as usize,
        }
    }

    /// How many groups this shard has.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The group of this shard that a partition belongs to (`None`: another shard's).
    #[inline]
    pub fn group(&self, partition: u32) -> Option<usize> {
        match self.group_of_partition[partition as usize] {
            GroupTable::OTHER_SHARD => None,
            group => Some(usize::from(group)),
        }
    }
}

/// The partition of a row without an `account_id` (never a real partition).
pub const NO_ACCOUNT: u32 = u32::MAX;

/// Each row's partition by its raw `account_id` cell. A dictionary column's distinct
/// values are hashed once per dictionary (a row group's batches share one, unless its
/// pages fall back to plain encoding), not once per row: the light and spill passes each
/// hashed every row's account, besides the light pass decoding each row's account as a
/// string (the `perf` shares: benches/README.md, "Figures moved from source comments
/// (2026-12-05)"; the change's gain: "Profiles and experiments (2026-12-04, after
/// midnight: per-row work, ids as views)", f8ec1d7).
#[derive(Default)]
pub struct AccountPartitions(crate::rows::DictMemo);

impl AccountPartitions {
    /// The partition of each of the `rows` rows of an `account_id` column ([`NO_ACCOUNT`]
    /// for a null, and for a key past the dictionary, which the Parquet reader refuses
    /// before this sees it).
    pub fn of_rows(&mut self, column: &Column, rows: usize) -> Vec<u32> {
        match column {
            Column::Dict(keys, values) => self.0.key_codes(
                keys,
                values,
                &|value| value.map_or(NO_ACCOUNT, partition_of),
                NO_ACCOUNT,
                NO_ACCOUNT,
            ),
            _ => (0..rows)
                .map(|row| column.str(row).map_or(NO_ACCOUNT, partition_of))
                .collect(),
        }
    }
}

const LOW: u64 = 0xFFFF;
/// Marks a ledger row whose event is a cross-partition event (never a real partition).
const TIED_TO_EVENT: u64 = LOW;

/// The 48 high bits of an id's hash ([`crate::validate::id_hash`], which parsed rows
/// carry). Two ids sharing them are both treated as candidates (harmless: candidates are
/// routed exactly, by their full ids).
fn id_key(id: &str) -> u64 {
    key_of_hash(crate::validate::id_hash(id))
}

fn key_of_hash(hash: u64) -> u64 {
    hash & !LOW
}

/// Ids (by `id_key`) whose rows fall in more than one partition.
#[derive(Default)]
pub struct CrossBucket {
    events: KeySet,
    entries: KeySet,
}

/// The largest [`KeySet`] filter: 4 MiB.
const MAX_FILTER_BITS: usize = 1 << 25;

/// A set of keys ([`id_key`]s) asked about once per row, almost always for a key it does not
/// hold: a bit per slot of a small filter (8-16 bits a key, small enough for the core's
/// cache when few ids cross, as on generated data) answers most of those without touching
/// the hash table, whose lookups miss the cache (measured: benches/README.md, "Profiles
/// and experiments (2026-12-04, late evening: where the split's time goes, CRC-32 spill
/// frames)"). The filter stops at [`MAX_FILTER_BITS`]: past it (a data root where millions
/// of ids cross) it no longer stays in cache and only thins the lookups.
#[derive(Default)]
struct KeySet {
    keys: HashSet<u64, FastHash>,
    /// Bit `(key >> 16) & mask` set for every key (empty when `keys` is).
    filter: Vec<u64>,
    mask: u64,
}

impl KeySet {
    fn new(keys: HashSet<u64, FastHash>) -> KeySet {
        if keys.is_empty() {
            return KeySet::default();
        }
        let bits = (keys.len() * 8)
            .next_power_of_two()
            .clamp(64, MAX_FILTER_BITS);
        let mut set = KeySet {
            keys: HashSet::default(),
            filter: vec![0u64; bits / 64],
            mask: (bits - 1) as u64,
        };
        for &key in &keys {
            let (word, bit) = set.filter_bit(key);
            set.filter[word] |= bit;
        }
        set.keys = keys;
        set
    }

    /// The filter's word and bit for `key`: from the key's bits above the 16 a key clears,
    /// which are uniform (an `id_key` is xxh3 output).
    #[inline]
    fn filter_bit(&self, key: u64) -> (usize, u64) {
        let bit = (key >> 16) & self.mask;
        ((bit / 64) as usize, 1 << (bit % 64))
    }

    /// Whether `key`'s filter bit is set (a member's always is).
    #[inline]
    fn passes_filter(&self, key: u64) -> bool {
        if self.filter.is_empty() {
            return false;
        }
        let (word, bit) = self.filter_bit(key);
        self.filter[word] & bit != 0
    }

    #[inline]
    fn contains(&self, key: u64) -> bool {
        self.passes_filter(key) && self.keys.contains(&key)
    }

    fn len(&self) -> usize {
        self.keys.len()
    }
}

impl CrossBucket {
    pub fn event(&self, event_id: &str) -> bool {
        self.event_by_hash(crate::validate::id_hash(event_id))
    }

    /// [`CrossBucket::event`] by the id's `validate::id_hash` (parsed rows carry it).
    #[inline]
    pub fn event_by_hash(&self, hash: u64) -> bool {
        self.events.contains(key_of_hash(hash))
    }

    #[inline]
    fn entry_by_hash(&self, hash: u64) -> bool {
        self.entries.contains(key_of_hash(hash))
    }

    /// Whether a ledger row is a candidate (routed by [`resolve`]): its entry id crosses,
    /// or the event it names does. By raw cells (another shard's rows).
    pub fn ledger_row(&self, entry_id: Option<&str>, event_id: Option<&str>) -> bool {
        self.ledger_row_by_hash(
            entry_id.map(crate::validate::id_hash),
            event_id.map(crate::validate::id_hash),
        )
    }

    /// [`CrossBucket::ledger_row`] by the ids' `validate::id_hash` (parsed rows carry them).
    pub fn ledger_row_by_hash(&self, entry_hash: Option<u64>, event_hash: Option<u64>) -> bool {
        entry_hash.is_some_and(|h| self.entry_by_hash(h))
            || event_hash.is_some_and(|h| self.event_by_hash(h))
    }

    pub fn counts(&self) -> (usize, usize) {
        (self.events.len(), self.entries.len())
    }
}

const fn light(name: &'static str, required: bool) -> ColSpec {
    load::col(name, ColType::Str, required)
}
/// Accounts as labels: read as dictionaries, whose values [`AccountPartitions`] hashes once.
const ACCOUNT: ColSpec = load::col("account_id", ColType::Label, true);
const USAGE_IDS: [ColSpec; 2] = [light("event_id", true), ACCOUNT];
/// With `occurred_at`, when a close reads earlier closes (late events).
const USAGE_IDS_AT: [ColSpec; 3] = [
    light("event_id", true),
    ACCOUNT,
    load::col("occurred_at", ColType::Timestamp, true),
];
const DEBIT_IDS: [ColSpec; 3] = [light("entry_id", true), ACCOUNT, light("event_id", false)];

/// Key buckets of [`mixed_ids`], by the top bits of a key.
const KEY_BUCKET_BITS: u32 = 8;
// `BucketedKeys` files keys by their top byte, entry hashes by a part of it.
const _: () = assert!(KEY_BUCKET_BITS == 8 && ENTRY_HASH_FILE_BITS <= 8);

/// One batch's keys, by bucket: the light pass files every key in its bucket as it reads,
/// so that no pass over all keys is needed to group them and the keys are held once (at
/// 100M events + 100M ledger rows: 1.6 GB). One vector in bucket order and the buckets'
/// bounds (a vector per bucket took 256 allocations a batch and a `push` per key that
/// loaded its bucket's vector; measured in benches/README.md, "Profiles and experiments
/// (2026-12-04, late evening: where the split's time goes, CRC-32 spill frames)").
pub struct BucketedKeys {
    keys: Vec<u64>,
    /// Bucket `b` is `keys[starts[b]..starts[b + 1]]`.
    starts: Vec<usize>,
}

impl BucketedKeys {
    fn new(keys: &[u64]) -> BucketedKeys {
        let (keys, starts) = by_next_byte(keys, 0);
        BucketedKeys { keys, starts }
    }

    fn bucket(&self, bucket: usize) -> &[u64] {
        &self.keys[self.starts[bucket]..self.starts[bucket + 1]]
    }
}

/// Keys of all row groups → the ids (high bits) that occur with more than one low value.
/// An id's keys all share one bucket (their top [`KEY_BUCKET_BITS`] bits): the buckets are
/// put together and searched one by one, in parallel (only a bucket's keys are copied at a
/// time).
fn mixed_ids(parts: impl IntoIterator<Item = BucketedKeys>) -> HashSet<u64, FastHash> {
    let parts: Vec<BucketedKeys> = parts.into_iter().filter(|p| !p.keys.is_empty()).collect();
    let mixed: Vec<Vec<u64>> = (0..1usize << KEY_BUCKET_BITS)
        .into_par_iter()
        .map(|bucket| {
            let mut keys = Vec::with_capacity(parts.iter().map(|p| p.bucket(bucket).len()).sum());
            for part in &parts {
                keys.extend_from_slice(part.bucket(bucket));
            }
            mixed_in_bucket(&keys)
        })
        .collect();
    mixed.into_iter().flatten().collect()
}

/// The ids among one key bucket's keys that occur with more than one low value. The keys
/// are filed by their next 8 bits into sub-buckets small enough (about 3K keys at 100M
/// rows) that a hash table of each stays in the core's cache: a radix sort of the whole
/// bucket, what this replaced, took a large share of the light pass (`perf`, 10M events;
/// benches/README.md, "Figures moved from source comments (2026-12-05)").
fn mixed_in_bucket(keys: &[u64]) -> Vec<u64> {
    let (filed, starts) = by_next_byte(keys, KEY_BUCKET_BITS);
    let mut table = Vec::new();
    let mut mixed = Vec::new();
    for sub in starts.windows(2) {
        mixed_among(&filed[sub[0]..sub[1]], &mut table, &mut mixed);
    }
    mixed
}

/// `keys` that share their top `shared_bits` bits, filed by the 8 bits below those (a
/// counting sort): the filed keys and the 257 bounds of the sub-buckets.
fn by_next_byte(keys: &[u64], shared_bits: u32) -> (Vec<u64>, Vec<usize>) {
    let sub_of = |key: u64| ((key >> (56 - shared_bits)) & 0xFF) as usize;
    let mut starts = vec![0usize; 257];
    keys.iter().for_each(|&k| starts[sub_of(k) + 1] += 1);
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut filed = vec![0u64; keys.len()];
    let mut next = starts.clone();
    for &key in keys {
        let sub = sub_of(key);
        filed[next[sub]] = key;
        next[sub] += 1;
    }
    (filed, starts)
}

/// Whether two of `hashes` (sharing their top `shared_bits` bits) are equal: filed by
/// their next 8 bits, each sub-bucket into a cache-sized hash table (0 marks an empty
/// slot, so zero hashes are counted apart).
fn any_equal(hashes: &[u64], shared_bits: u32) -> bool {
    let (filed, starts) = by_next_byte(hashes, shared_bits);
    let mut table: Vec<u64> = Vec::new();
    let mut zeros = 0;
    for sub in starts.windows(2) {
        let keys = &filed[sub[0]..sub[1]];
        let slots = (keys.len() * 2).next_power_of_two().max(16);
        table.clear();
        table.resize(slots, 0);
        let mask = slots - 1;
        for &hash in keys {
            if hash == 0 {
                zeros += 1;
                if zeros > 1 {
                    return true;
                }
                continue;
            }
            // The bits below the 16 that pick bucket and sub-bucket: still uniform.
            let mut at = (hash >> 8) as usize & mask;
            loop {
                match table[at] {
                    0 => {
                        table[at] = hash;
                        break;
                    }
                    slot if slot == hash => return true,
                    _ => at = (at + 1) & mask,
                }
            }
        }
    }
    false
}

/// Push to `mixed` each id (`key & !LOW`) among `keys` seen with more than one low value,
/// once. `keys` share their top 16 bits, so a slot holds a key's lower 48 bits with bit 63
/// set (an empty slot is 0) and bit 62 once its id is pushed; the slot is picked by the
/// id's hash bits (an `id_key` is xxh3 output) and probed linearly.
fn mixed_among(keys: &[u64], table: &mut Vec<u64>, mixed: &mut Vec<u64>) {
    const USED: u64 = 1 << 63;
    const PUSHED: u64 = 1 << 62;
    const LOWER_48: u64 = (1 << 48) - 1;
    let slots = (keys.len() * 2).next_power_of_two().max(16);
    table.clear();
    table.resize(slots, 0);
    let mask = slots - 1;
    for &key in keys {
        let mut at = (key >> 16) as usize & mask;
        loop {
            let slot = table[at];
            if slot == 0 {
                table[at] = (key & LOWER_48) | USED;
                break;
            }
            if (slot ^ key) & LOWER_48 & !LOW == 0 {
                // The same id: a second low value makes it mixed.
                if slot & PUSHED == 0 && (slot ^ key) & LOW != 0 {
                    table[at] = slot | PUSHED;
                    mixed.push(key & !LOW);
                }
                break;
            }
            at = (at + 1) & mask;
        }
    }
}

/// Scratch files of [`EntryHashes`], by the top bits of a hash: few, so that a small run
/// does not pay for creating and reading many files (256 cost a 1M-event run noticeable
/// kernel time, timed by hand: benches/README.md, "2026-11-25: a 2 GiB budget, 524,288
/// rows per group (before)", its profiles' third pass); at 100M rows a file holds 50 MB,
/// sorted two at a time.
const ENTRY_HASH_FILE_BITS: u32 = 4;

/// The 64-bit hashes of the ledger's entry ids, written while round 1 reads the ledger,
/// filed by their top bits into 16 scratch files: enough to tell whether any
/// `entry_id` repeats (equal ids have equal hashes) without holding 8 bytes per ledger row
/// in memory (0.8 GB at 100M rows, past the light pass's peak) or reading the ledger's id
/// columns a second time.
struct EntryHashes {
    dir: crate::spill::SpillDir,
    files: Vec<Mutex<BufWriter<File>>>,
    /// The first write error (reported once the pass is done).
    failed: Mutex<Option<TallyError>>,
}

impl EntryHashes {
    fn create() -> Result<EntryHashes> {
        let dir = crate::spill::spill_dir()?;
        let files = (0..1 << ENTRY_HASH_FILE_BITS)
            .map(|bucket| {
                let path = Self::path(dir.path(), bucket);
                let file = File::create(&path).map_err(|e| TallyError::write(&path, e))?;
                Ok(Mutex::new(BufWriter::with_capacity(64 << 10, file)))
            })
            .collect::<Result<_>>()?;
        Ok(EntryHashes {
            dir,
            files,
            failed: Mutex::new(None),
        })
    }

    fn path(dir: &Path, bucket: usize) -> PathBuf {
        dir.join(format!("entry-hashes-{bucket}.bin"))
    }

    /// File one batch's hashes.
    fn add(&self, hashes: &[u64]) {
        // Filed by their top byte: a file's bucket (its top bits) is a run of those.
        let (filed, starts) = by_next_byte(hashes, 0);
        let per_file = 1 << (KEY_BUCKET_BITS - ENTRY_HASH_FILE_BITS);
        for bucket in 0..1usize << ENTRY_HASH_FILE_BITS {
            let hashes = &filed[starts[bucket * per_file]..starts[(bucket + 1) * per_file]];
            if hashes.is_empty() {
                continue;
            }
            let bytes: Vec<u8> = hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
            let mut file = self.files[bucket].lock().expect("entry hash file lock");
            if let Err(e) = file.write_all(&bytes) {
                let path = Self::path(self.dir.path(), bucket);
                self.failed
                    .lock()
                    .expect("entry hash error lock")
                    .get_or_insert(TallyError::write(&path, e));
            }
        }
    }

    /// Whether two entry ids share a hash (a repeated `entry_id`, or a 64-bit collision,
    /// which only costs the second round). Buckets are read back and sorted two at a time
    /// whatever the core count (at 100M rows a bucket is 50 MB, plus the sort's scratch).
    fn any_repeat(self) -> Result<bool> {
        if let Some(e) = self.failed.into_inner().expect("entry hash error lock") {
            return Err(e);
        }
        let dir = self.dir;
        for (bucket, file) in self.files.into_iter().enumerate() {
            let path = Self::path(dir.path(), bucket);
            file.into_inner()
                .expect("entry hash file lock")
                .flush()
                .map_err(|e| TallyError::write(&path, e))?;
        }
        let has_repeat = |bucket: usize| -> Result<bool> {
            let path = Self::path(dir.path(), bucket);
            let bytes = std::fs::read(&path).map_err(|e| TallyError::scratch(&path, e))?;
            let hashes: Vec<u64> = bytes
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect();
            drop(bytes);
            Ok(any_equal(&hashes, ENTRY_HASH_FILE_BITS))
        };
        let buckets: Vec<usize> = (0..1usize << ENTRY_HASH_FILE_BITS).collect();
        for pair in buckets.chunks(2) {
            let (first, second) = rayon::join(
                || has_repeat(pair[0]),
                || pair.get(1).map_or(Ok(false), |&b| has_repeat(b)),
            );
            if first? || second? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Tells whether an event of an account at an instant may be late (in a closed period).
pub type LateCheck<'a> = &'a (dyn Fn(&str, crate::time::Micros) -> bool + Sync);

/// What the light pass finds.
pub struct LightPass {
    pub cross: CrossBucket,
    /// The ids of events that may be late (with `late`; else empty).
    pub late_ids: HashSet<String, FastHash>,
    /// Rows by group of this shard, usage then ledger.
    pub counts: [GroupCounts; 2],
}

/// How many groups of a split run the spill pass keeps in memory instead of spilling: the
/// first two. While a group is processed the next one's rows are in memory (read back
/// meanwhile, or kept), so the groups' stages hold two groups' rows at their peak anyway
/// ([`groups_for`] sizes groups for that) and the spill pass, holding two groups' rows
/// and no group's working set, stays below it. The second group kept is a group's spill
/// bytes not written and read back (at 20M events in 4 groups a third of them).
pub const HELD_GROUPS: usize = 2;

/// A dataset's rows by group of this shard, counted by the light pass from their
/// `account_id` cells: at least the rows each group's spill gets (rejected rows and
/// candidates are counted in their own account's group too). The spill pass keeps the
/// first [`HELD_GROUPS`] groups' rows in memory, each row group's in a place of its own,
/// by these counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupCounts {
    /// Rows of each held group (the first [`HELD_GROUPS`]; 0 for a group the run does not
    /// have), per row group of the dataset (files in order, row groups in order: a
    /// [`load::Plan`]'s units).
    pub held_by_unit: Vec<[u64; HELD_GROUPS]>,
    /// Rows by group.
    pub by_group: Vec<u64>,
}

impl GroupCounts {
    /// Rows of the largest group (a held group's vector is reused for later groups).
    pub fn largest_group(&self) -> u64 {
        self.by_group.iter().copied().max().unwrap_or(0)
    }

    fn of(parts: &[Vec<LightOut>], groups: usize) -> GroupCounts {
        let mut by_group = vec![0u64; groups];
        let held_by_unit = parts
            .iter()
            .map(|unit| {
                let mut held = [0u64; HELD_GROUPS];
                for out in unit {
                    for (total, n) in by_group.iter_mut().zip(&out.by_group) {
                        *total += n;
                    }
                    for (total, n) in held.iter_mut().zip(&out.by_group) {
                        *total += n;
                    }
                }
                held
            })
            .collect();
        GroupCounts {
            held_by_unit,
            by_group,
        }
    }
}

/// What the light pass keeps of one batch.
struct LightOut {
    keys: BucketedKeys,
    /// Rows by group of this shard (rows of other shards and without an account are not
    /// counted).
    by_group: Vec<u64>,
}

/// What the light pass keeps of one row group: what each batch gave, and the partitions
/// of its account dictionary.
struct LightUnit<T> {
    outs: Vec<T>,
    accounts: AccountPartitions,
}

/// Read `files`' `specs` columns, every row group in parallel with a [`LightUnit`] of its
/// own; the units' outputs in (file, row group) order.
fn light_read<T: Send>(
    files: &[InputFile],
    specs: &[ColSpec],
    each_batch: &(dyn Fn(&Batch, &mut LightUnit<T>) + Sync),
) -> Result<Vec<Vec<T>>> {
    // The spill pass after it reads every column and warns of strings that are not UTF-8.
    let plan = load::Plan::open(files, specs).without_utf8_warnings();
    let states = (plan.units.iter())
        .map(|_| LightUnit {
            outs: Vec::new(),
            accounts: AccountPartitions::default(),
        })
        .collect();
    // A unit's partitions memo is freed as soon as its rows are read.
    plan.decode(
        files,
        states,
        &|_, unit, batch| each_batch(batch, unit),
        &|_, unit| unit.outs,
    )
}

/// The light pass: read only the id and account columns (8 bytes kept per row). With
/// `late`, also `occurred_at`, returning the ids of events that may be late.
pub fn find_cross_bucket(
    usage: &[InputFile],
    debits: &[InputFile],
    layout: &Layout,
    late: Option<LateCheck<'_>>,
) -> Result<LightPass> {
    let late_ids = std::sync::Mutex::new(HashSet::<String, FastHash>::default());
    let groups = GroupTable::new(layout);
    // Round 1: event ids over usage and ledger rows, with the row's own partition.
    let usage_specs: &[ColSpec] = if late.is_some() {
        &USAGE_IDS_AT
    } else {
        &USAGE_IDS
    };
    let usage_parts = light_read(usage, usage_specs, &|batch, unit| {
        key_events_and_count_groups(batch, 0, unit, &groups);
        if let Some(late) = late {
            add_late_ids(batch, late, &late_ids);
        }
    })?;
    let entry_hashes = EntryHashes::create()?;
    let debit_parts = light_read(debits, &DEBIT_IDS, &|batch, unit| {
        let partitions = key_events_and_count_groups(batch, 2, unit, &groups);
        // The rows round 2 would key: an entry id and an account.
        let hashes: Vec<u64> = (partitions.iter().enumerate())
            .filter(|&(_, &partition)| partition != NO_ACCOUNT)
            .filter_map(|(row, _)| batch.columns[0].str(row).map(crate::validate::id_hash))
            .collect();
        entry_hashes.add(&hashes);
    })?;
    let counts = [
        GroupCounts::of(&usage_parts, groups.groups()),
        GroupCounts::of(&debit_parts, groups.groups()),
    ];
    let keys = usage_parts
        .into_iter()
        .chain(debit_parts)
        .flatten()
        .map(|out| out.keys);
    let events = mixed_ids(keys);

    // Round 2: entry ids, with the row's partition, or a mark when its event crosses
    // (so that every copy of such an entry is a candidate too). It is skipped when no two
    // entry ids share a 64-bit hash (the common case: no repeated entry_id). What round 2
    // would then still find are distinct ids whose 48-bit keys (`id_key`) collide across
    // partitions (about 18 pairs at 100M rows); leaving them out changes no destination:
    // an entry of one row goes with its event's winner, which is in its own partition
    // unless the event crosses, and then the entry is a candidate by its event anyway.
    let found = CrossBucket {
        events: KeySet::new(events),
        entries: KeySet::default(),
    };
    let late_ids = late_ids.into_inner().expect("late ids lock");
    if !entry_hashes.any_repeat()? {
        return Ok(LightPass {
            cross: found,
            late_ids,
            counts,
        });
    }
    let entries = cross_entries(debits, &found)?;
    Ok(LightPass {
        cross: CrossBucket {
            events: found.events,
            entries,
        },
        late_ids,
        counts,
    })
}

/// Round 1 of the light pass over a batch: key each row's event id (column `id_col`)
/// with the row's own partition and count the rows of each group. Returns the rows'
/// partitions, for what else the pass reads of the batch.
fn key_events_and_count_groups(
    batch: &Batch,
    id_col: usize,
    unit: &mut LightUnit<LightOut>,
    groups: &GroupTable,
) -> Vec<u32> {
    let partitions = unit.accounts.of_rows(&batch.columns[1], batch.len);
    let mut keys = Vec::with_capacity(batch.len);
    let mut by_group = vec![0u64; groups.groups()];
    for (row, &partition) in partitions.iter().enumerate() {
        if partition == NO_ACCOUNT {
            continue;
        }
        if let Some(group) = groups.group(partition) {
            by_group[group] += 1;
        }
        if let Some(id) = batch.columns[id_col].str(row) {
            keys.push(id_key(id) | u64::from(partition));
        }
    }
    unit.outs.push(LightOut {
        keys: BucketedKeys::new(&keys),
        by_group,
    });
    partitions
}

/// Add the ids of a usage batch's events that may be late (`late`) to `late_ids`.
fn add_late_ids(
    batch: &Batch,
    late: LateCheck<'_>,
    late_ids: &std::sync::Mutex<HashSet<String, FastHash>>,
) {
    for row in 0..batch.len {
        let (Some(id), Some(account), Some(Ok(t))) = (
            batch.columns[0].str(row),
            batch.columns[1].str(row),
            batch.columns[2].micros(row),
        ) else {
            continue;
        };
        if late(account, t) {
            late_ids
                .lock()
                .expect("late ids lock")
                .insert(id.to_string());
        }
    }
}

/// Round 2 of the light pass: the entry ids whose rows fall in more than one partition,
/// an entry whose event crosses (in `found`) counted as crossing.
fn cross_entries(debits: &[InputFile], found: &CrossBucket) -> Result<KeySet> {
    let parts = light_read(debits, &DEBIT_IDS, &|batch, unit| {
        let partitions = unit.accounts.of_rows(&batch.columns[1], batch.len);
        let mut keys = Vec::with_capacity(batch.len);
        for (row, &partition) in partitions.iter().enumerate() {
            let Some(entry) = batch.columns[0].str(row) else {
                continue;
            };
            if partition == NO_ACCOUNT {
                continue;
            }
            let tied = batch.columns[2].str(row).is_some_and(|e| found.event(e));
            let low = if tied {
                TIED_TO_EVENT
            } else {
                u64::from(partition)
            };
            keys.push(id_key(entry) | low);
        }
        unit.outs.push(BucketedKeys::new(&keys));
    })?;
    Ok(KeySet::new(mixed_ids(parts.into_iter().flatten())))
}

/// Where each candidate goes: the destination partition of every candidate row (same order
/// as the inputs). Every shard computes the same answer from the same candidates.
/// `partition_of` gives the partition of an account code.
pub fn resolve(
    usage: &[Usage],
    usage_ids: &Ids,
    debits: &[Debit],
    debit_ids: &Ids,
    partition_of: &dyn Fn(u32) -> u32,
) -> (Vec<u32>, Vec<u32>) {
    // Events: the winner by the rule of `validate::dedup_usage`.
    let mut winner: HashMap<&[u8], &Usage, FastHash> = HashMap::default();
    for u in usage {
        winner
            .entry(usage_ids.bytes(u.id))
            .and_modify(|w| {
                if winner_order(u) < winner_order(w) {
                    *w = u;
                }
            })
            .or_insert(u);
    }
    let event_partition: HashMap<&[u8], u32, FastHash> = winner
        .iter()
        .map(|(id, w)| (*id, partition_of(w.account)))
        .collect();
    let usage_dest = usage
        .iter()
        .map(|u| event_partition[usage_ids.bytes(u.id)])
        .collect();

    // Entries: the first copy (by file, row) goes with its event if it has one, else with
    // its own account; every later copy follows the first.
    let mut first: HashMap<&[u8], &Debit, FastHash> = HashMap::default();
    for d in debits {
        first
            .entry(debit_ids.bytes(d.entry_id))
            .and_modify(|f| {
                if d.at < f.at {
                    *f = d;
                }
            })
            .or_insert(d);
    }
    let debit_dest = debits
        .iter()
        .map(|d| {
            let f = first[debit_ids.bytes(d.entry_id)];
            let event = f
                .has_event()
                .then(|| event_partition.get(debit_ids.bytes(f.event_id)).copied())
                .flatten();
            event.unwrap_or_else(|| partition_of(f.account))
        })
        .collect();
    (usage_dest, debit_dest)
}

/// Working memory per usage or ledger row and per plan row, measured by peak RSS on the
/// bench data (`tally generate`, 1% discrepancies), by command and by whether the run is
/// split.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RowCosts {
    /// All rows in memory at once (one group): rows, ids, dedup index, placed events and
    /// results; a close also holds the billed events. From the peak RSS of the 10M-event
    /// bench data's 20.1M rows in one group, by hand, per row (benches/README.md, "Figures
    /// moved from source comments (2026-12-05)").
    pub one_group: u64,
    /// Per row of one group of a split run: its working set, the next group's rows (held
    /// by the spill pass or read back meanwhile) and what the allocator has freed but not
    /// yet returned. From the
    /// peak RSS of split runs by hand (reconcile at 100M events in 16 groups, less what it
    /// held before the groups, and at 10M in 2; close at 10M in 4), per row of a group
    /// (benches/README.md, "Figures moved from source comments (2026-12-05)").
    pub split: u64,
    /// Per allocation or grant row, held for the whole run whatever the groups: the plans,
    /// the account dictionaries and each account's results, which gather over the groups
    /// of a split run (its peak comes at the last group). A close's results are larger
    /// (invoices, renewals, next-period rows): at the 3 GiB default on the 100M-event bench
    /// data (1.42M plan rows), a close counted at 600 bytes a plan row (37 groups) peaked
    /// above the reconcile, its results climbing over the groups; at 1,100 (53 groups) it
    /// peaks within the reconcile's range (`benches/bench.sh 100m`: benches/README.md,
    /// "2026-12-02/03: the 3 GiB whole-run budget (before the compact spill)" and "The
    /// README's performance text of 2026-12-03").
    pub plan_row: u64,
}

/// Reconcile's [`RowCosts`].
pub const RECONCILE_ROW_COSTS: RowCosts = RowCosts {
    one_group: 140,
    split: 300,
    plan_row: 600,
};

/// Close's [`RowCosts`].
pub const CLOSE_ROW_COSTS: RowCosts = RowCosts {
    one_group: 260,
    split: 430,
    plan_row: 1100,
};

/// How many groups a run uses, from the row counts in the Parquet footers: one if all its
/// usage and ledger rows fit the budget (less what the plans hold) at once, else enough
/// groups that one group's rows, at the split cost per row, do. Fewer, larger groups are
/// faster (each group is a pass of its own with sequential steps), so a run splits only
/// as far as memory asks.
pub fn groups_for(
    rows: u64,
    id_bytes: u64,
    plan_rows: u64,
    costs: RowCosts,
    budget_bytes: u64,
    shards: u32,
) -> u32 {
    let shards_n = u64::from(shards.max(1));
    let per_shard = rows.div_ceil(shards_n);
    let ids_per_shard = extra_id_cost(rows, id_bytes).div_ceil(shards_n);
    let for_rows = bytes_for_rows(plan_rows, costs, budget_bytes);
    let one_group = per_shard.saturating_mul(costs.one_group);
    if one_group.saturating_add(ids_per_shard) <= for_rows {
        return 1;
    }
    // A group of a split run also holds the next group's rows, held or read back meanwhile (the
    // split cost per row is about twice the one-group cost): their ids too.
    let split = per_shard.saturating_mul(costs.split);
    let split_ids = ids_per_shard.saturating_mul(SPLIT_ID_FACTOR);
    let groups = split.saturating_add(split_ids).div_ceil(for_rows);
    groups.max(2).min(u64::from(max_groups(shards))) as u32
}

/// The id bytes a usage or ledger row of the bench data has in its files (uncompressed:
/// 25 a usage row, 50 a ledger row, 37.6 on average in the 1m data), rounded up: the row
/// costs above were measured with them, and include them.
pub const BENCH_ID_BYTES_PER_ROW: u64 = 40;

/// Working memory per id byte past the bench data's: an id is held with its row and again
/// where it is written or indexed (measured: 188K usage and 188K ledger rows with ids of
/// 1-4 KiB, about 1.4 GB of them, peaked at 2.5-3.0 GiB in one group, reconcile and close;
/// a memory audit of 2026-12-07, by hand).
pub const ID_BYTE_COST: u64 = 2;

/// How many times a split run's group holds ids past the bench data's, against a one-group
/// run: its own and the next group's, held or read back meanwhile.
pub const SPLIT_ID_FACTOR: u64 = 2;

/// What ids longer than the bench data's add to a run's working memory: nothing for ids
/// of their size or shorter (the per-row costs hold them), else the bytes past them at
/// [`ID_BYTE_COST`]. Saturating: footers may be hostile.
pub fn extra_id_cost(rows: u64, id_bytes: u64) -> u64 {
    let bench = rows.saturating_mul(BENCH_ID_BYTES_PER_ROW);
    id_bytes.saturating_sub(bench).saturating_mul(ID_BYTE_COST)
}

/// What the usage and ledger rows may use of the budget: the budget less what the plans
/// hold, at least a quarter of the budget (a budget the plans alone fill still gets
/// groups, not a division by zero).
fn bytes_for_rows(plan_rows: u64, costs: RowCosts, budget_bytes: u64) -> u64 {
    // Saturating: row counts come from files' footers, which may be corrupt or hostile.
    let plans = plan_rows.saturating_mul(costs.plan_row);
    budget_bytes
        .saturating_sub(plans)
        .max(budget_bytes / 4)
        .max(1)
}

/// How many of a split run's usage and ledger rows one group can hold within the budget
/// (at the split cost per row).
pub fn rows_per_group(plan_rows: u64, costs: RowCosts, budget_bytes: u64) -> u64 {
    (bytes_for_rows(plan_rows, costs, budget_bytes) / costs.split).max(1)
}

/// The group of a split run (its number, its usage and ledger rows) holding more rows
/// than `factor` times what the budget plans for a group, if any: the largest. Groups are
/// sets of account partitions, so a group is larger than the average when its accounts
/// hold a large share of the month, and an account's rows are never split over groups.
pub fn oversized_group(
    usage: &GroupCounts,
    debits: &GroupCounts,
    fit_rows: u64,
    factor: u64,
) -> Option<(usize, u64)> {
    let rows =
        |g: usize| usage.by_group.get(g).unwrap_or(&0) + debits.by_group.get(g).unwrap_or(&0);
    (0..usage.by_group.len().max(debits.by_group.len()))
        .map(|g| (g, rows(g)))
        .max_by_key(|&(g, rows)| (rows, std::cmp::Reverse(g)))
        .filter(|&(_, rows)| rows > fit_rows.saturating_mul(factor))
}

/// The most groups a shard of `shards` can have (each holds at least one partition).
pub fn max_groups(shards: u32) -> u32 {
    PARTITIONS.div_ceil(shards.max(1)).min(MAX_GROUPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// `i`'s bits spread over the whole word (Fibonacci hashing): distinct for distinct
    /// `i`, and every bucket of the top bits filled.
    fn spread(i: u64) -> u64 {
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// `n` spread keys, then `edges` (keys at the ends of buckets).
    fn spread_keys(n: u64, edges: &[u64]) -> Vec<u64> {
        (0..n).map(spread).chain(edges.iter().copied()).collect()
    }

    /// Each row's partition as `partition_of` gives it from the row's cell, for a
    /// dictionary column (null keys and a null value among them), a plain one and an
    /// absent one; a batch with the same dictionary reuses the hashed values, one with
    /// another dictionary hashes its own.
    #[test]
    fn account_partitions_are_each_cells_partition() {
        use arrow::array::{Int32Array, StringArray};
        let cells = |column: &Column, rows: usize| -> Vec<u32> {
            (0..rows)
                .map(|row| column.str(row).map_or(NO_ACCOUNT, partition_of))
                .collect()
        };
        let values = StringArray::from(vec![Some("acct-1"), None, Some("acct-3")]);
        let keys = Int32Array::from(vec![Some(2), Some(0), None, Some(1), Some(2)]);
        let dict = Column::Dict(keys, values.clone());
        let mut memo = AccountPartitions::default();
        let first = memo.of_rows(&dict, 5);
        assert_eq!(first, cells(&dict, 5));
        assert_eq!(
            first[2..4],
            [NO_ACCOUNT, NO_ACCOUNT],
            "a null key, a null value"
        );
        assert_ne!(first[0], first[1], "two accounts (in 4096 partitions)");
        let same = Column::Dict(Int32Array::from(vec![0, 0]), values);
        assert_eq!(memo.of_rows(&same, 2), cells(&same, 2));
        // As many values as the first dictionary, in another order: a memo that compared
        // only lengths would answer with the first one's partitions.
        let other = Column::Dict(
            Int32Array::from(vec![0, 1, 2]),
            StringArray::from(vec![Some("acct-3"), Some("acct-1"), None]),
        );
        assert_eq!(memo.of_rows(&other, 3), [first[0], first[1], NO_ACCOUNT]);
        let plain = Column::Str(StringArray::from(vec![Some("acct-1"), None]));
        assert_eq!(memo.of_rows(&plain, 2), [first[1], NO_ACCOUNT]);
        assert_eq!(memo.of_rows(&Column::Absent, 3), [NO_ACCOUNT; 3]);
    }

    /// The filtered set holds exactly its keys: every key in, and keys out of it (among
    /// them keys sharing a member's filter bit) out; an empty set holds nothing.
    #[test]
    fn a_key_set_holds_exactly_its_keys() {
        let key = |i: u64| key_of_hash(spread(i));
        let members: HashSet<u64, FastHash> = (0..3_000).map(key).collect();
        let set = KeySet::new(members.clone());
        assert_eq!(set.len(), 3_000);
        assert!(members.iter().all(|&k| set.contains(k)));
        let mut sharing_a_bit = 0;
        for k in (3_000..200_000).map(key) {
            assert!(!set.contains(k), "{k:#x} is not a member");
            sharing_a_bit += usize::from(set.passes_filter(k));
        }
        assert!(
            sharing_a_bit > 0,
            "some outsiders pass the filter and meet the table"
        );
        let empty = KeySet::new(HashSet::default());
        assert!(!empty.contains(key(1)) && !empty.contains(0) && empty.len() == 0);
        // At the filter's cap and past it: the filter stops growing, members still found.
        let at_cap = MAX_FILTER_BITS / 8;
        for n in [at_cap, at_cap + 1] {
            let members: HashSet<u64, FastHash> = (0..n as u64).map(key).collect();
            let set = KeySet::new(members.clone());
            assert_eq!(set.filter.len() * 64, MAX_FILTER_BITS, "{n} keys");
            assert!(members.iter().all(|&k| set.contains(k)), "{n} keys");
        }
    }

    /// The table gives every partition the group `Layout` computes, or none for another
    /// shard's, at one group, at the most groups, and across shards.
    #[test]
    fn the_group_table_is_the_layouts_groups() {
        for (shard, shards, groups) in [
            (0, 1, 1),
            (0, 1, 4),
            (0, 1, MAX_GROUPS),
            (2, 3, 5),
            (7, 8, 2),
        ] {
            let layout = Layout {
                shard,
                shards,
                groups,
            };
            let table = GroupTable::new(&layout);
            assert_eq!(table.groups(), groups as usize);
            for p in 0..PARTITIONS {
                let expected = layout.owns(p).then(|| layout.group_of(p));
                assert_eq!(table.group(p), expected, "partition {p} of {layout:?}");
            }
        }
    }

    /// A batch's bucket holds the batch's keys with that top byte, in the batch's order.
    #[test]
    fn bucketed_keys_hold_each_key_in_its_top_bytes_bucket_in_order() {
        let keys = spread_keys(5_000, &[0, u64::MAX, 1 << 56, (1 << 56) - 1]);
        let filed = BucketedKeys::new(&keys);
        for bucket in 0..256usize {
            let expected: Vec<u64> = (keys.iter().copied())
                .filter(|k| (k >> 56) as usize == bucket)
                .collect();
            assert_eq!(filed.bucket(bucket), expected, "bucket {bucket}");
        }
    }

    #[test]
    fn mixed_ids_are_ids_seen_with_two_low_values_across_parts() {
        let (a, b, c) = (id_key("evt-a"), id_key("evt-b"), id_key("evt-c"));
        // An id in the highest and one in the lowest key bucket too.
        let (high, low) = (!LOW, 1u64 << 16);
        let parts: Vec<BucketedKeys> = [
            vec![a | 3, b | 7, high | 2, low | 9],
            vec![c | 5, a | 3],
            vec![],
            vec![b | 8, c | 5, high | 4, low | 9],
        ]
        .into_iter()
        .map(|keys| BucketedKeys::new(&keys))
        .collect();
        let mut mixed: Vec<u64> = mixed_ids(parts).into_iter().collect();
        mixed.sort_unstable();
        let mut expected = vec![b, high];
        expected.sort_unstable();
        assert_eq!(mixed, expected);
        assert!(mixed_ids(Vec::new()).is_empty());
        assert!(mixed_ids(vec![BucketedKeys::new(&[])]).is_empty());
    }

    /// Keys of one bucket from `ids` (few, so that they repeat) and `lows`, with the top
    /// 8 bits of the bucket.
    fn bucket_keys(pairs: &[(u64, u16)]) -> Vec<u64> {
        pairs
            .iter()
            .map(|&(id, low)| {
                let id = (0x5Au64 << 56) | (spread(id) >> 8);
                (id & !LOW) | u64::from(low)
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// The hash tables find the ids a sort and scan finds (many keys an id, ids in
        /// one sub-bucket and across them, the low value 0 and the largest).
        #[test]
        fn mixed_ids_of_a_bucket_are_those_a_sort_finds(
            pairs in proptest::collection::vec(
                (0u64..3000, proptest::prop_oneof![0u16..3, proptest::strategy::Just(0xFFFFu16)]),
                0..6000,
            ),
        ) {
            let keys = bucket_keys(&pairs);
            let mut expected = keys.clone();
            expected.sort_unstable();
            let mut expected: Vec<u64> = expected
                .chunk_by(|a, b| a & !LOW == b & !LOW)
                .filter(|run| run.iter().any(|k| k & LOW != run[0] & LOW))
                .map(|run| run[0] & !LOW)
                .collect();
            let mut found = mixed_in_bucket(&keys);
            found.sort_unstable();
            expected.sort_unstable();
            proptest::prop_assert_eq!(found, expected);
        }

        /// `any_equal` agrees with a sort and scan, zero hashes included.
        #[test]
        fn any_equal_finds_exactly_the_repeats(
            values in proptest::collection::vec(0u64..100_000, 0..3000),
            zeros in 0usize..3,
        ) {
            let mut hashes: Vec<u64> = values
                .iter()
                .map(|v| (0x3u64 << 60) | (spread(*v) >> 4))
                .collect();
            hashes.extend(std::iter::repeat_n(0, zeros));
            let mut sorted = hashes.clone();
            sorted.sort_unstable();
            let expected = sorted.windows(2).any(|w| w[0] == w[1]);
            proptest::prop_assert_eq!(any_equal(&hashes, ENTRY_HASH_FILE_BITS), expected);
        }
    }

    /// Each scratch file holds exactly the hashes with its top 4 bits, whichever batch
    /// brought them (a repeat split across two files would go unseen).
    #[test]
    fn each_entry_hash_file_holds_the_hashes_of_its_top_bits() {
        let hashes = spread_keys(20_000, &[0, u64::MAX, 1 << 60, (1 << 60) - 1]);
        let entry_hashes = EntryHashes::create().unwrap();
        entry_hashes.add(&hashes[..7_000]);
        entry_hashes.add(&hashes[7_000..]);
        for file in &entry_hashes.files {
            file.lock().unwrap().flush().unwrap();
        }
        for bucket in 0..16usize {
            let bytes = std::fs::read(EntryHashes::path(entry_hashes.dir.path(), bucket)).unwrap();
            let mut held: Vec<u64> = (bytes.chunks_exact(8))
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let mut expected: Vec<u64> = (hashes.iter().copied())
                .filter(|h| (h >> 60) as usize == bucket)
                .collect();
            held.sort_unstable();
            expected.sort_unstable();
            assert_eq!(held, expected, "file {bucket}");
        }
    }

    /// A repeat is found across batches and buckets; distinct hashes are no repeat.
    #[test]
    fn entry_hashes_tell_whether_any_entry_id_repeats() {
        let distinct: Vec<u64> = (0..10_000u64).map(spread).collect();
        let hashes = EntryHashes::create().unwrap();
        hashes.add(&distinct[..5_000]);
        hashes.add(&distinct[5_000..]);
        assert!(!hashes.any_repeat().unwrap());

        let hashes = EntryHashes::create().unwrap();
        hashes.add(&distinct[..5_000]);
        hashes.add(&distinct[5_000..]);
        hashes.add(&[distinct[1234]]);
        assert!(hashes.any_repeat().unwrap());
    }

    const R: RowCosts = RECONCILE_ROW_COSTS;

    #[test]
    fn a_run_that_fits_its_budget_is_one_group() {
        assert_eq!(groups_for(0, 0, 0, R, 3 * GIB, 1), 1);
        // The 10M-event bench data: 20.1M usage and ledger rows, 142K plan rows.
        assert_eq!(groups_for(20_100_000, 0, 142_000, R, 3 * GIB, 1), 1);
        // At the limit and one row past it.
        let fit = (3 * GIB) / R.one_group;
        assert_eq!(groups_for(fit, 0, 0, R, 3 * GIB, 1), 1);
        // Past it, groups at the split cost: 300 / 140 of the budget, 3 groups.
        assert_eq!(groups_for(fit + 1, 0, 0, R, 3 * GIB, 1), 3);
    }

    /// Ids longer than the bench data's count against the budget: 376K rows with 1.4 GB
    /// of ids (a memory audit's data, which ran in one group at 2.8 GiB under a 256 MiB
    /// budget) split; ids of the bench data's size change nothing, at the bench's
    /// average per row and one byte past it.
    #[test]
    fn long_ids_count_against_the_budget() {
        let (rows, ids) = (376_000, 1_400_000_000);
        assert_eq!(extra_id_cost(rows, ids), 2 * (ids - rows * 40));
        assert_eq!(groups_for(rows, 0, 0, R, 256 << 20, 1), 1);
        // (112.8 MB of rows at the split cost, 5.5 GB of ids: each group's and the next's.)
        assert_eq!(groups_for(rows, ids, 0, R, 256 << 20, 1), 22);
        assert_eq!(groups_for(rows, ids, 0, R, 3 * GIB, 1), 1);
        // At the limit (the budget's last bytes taken by ids past the bench's) and one
        // id byte past it.
        let fit = (3 * GIB) / R.one_group;
        let bench_ids = fit * BENCH_ID_BYTES_PER_ROW;
        let past = (3 * GIB - fit * R.one_group) / ID_BYTE_COST;
        assert_eq!(groups_for(fit, bench_ids, 0, R, 3 * GIB, 1), 1);
        assert_eq!(groups_for(fit, bench_ids + past, 0, R, 3 * GIB, 1), 1);
        assert_eq!(groups_for(fit, bench_ids + past + 1, 0, R, 3 * GIB, 1), 3);
        assert_eq!(extra_id_cost(u64::MAX, u64::MAX), 0);
        assert_eq!(extra_id_cost(1, u64::MAX), u64::MAX);
    }

    #[test]
    fn a_split_run_has_groups_that_fit_the_budget_less_the_plans() {
        // 100M-event bench data: 200.9M rows, 1.42M plan rows (reconcile 0.85 GB; a close
        // also counts its larger per-account results against them).
        for (costs, expected) in [(R, 26), (CLOSE_ROW_COSTS, 53)] {
            let for_rows = 3 * GIB - 1_420_000 * costs.plan_row;
            let groups = groups_for(200_900_000, 0, 1_420_000, costs, 3 * GIB, 1);
            assert_eq!(
                u64::from(groups),
                (200_900_000 * costs.split).div_ceil(for_rows)
            );
            assert_eq!(groups, expected, "{costs:?}");
        }
        // Close costs more per row: the 10M-event close is split.
        assert_eq!(
            groups_for(20_100_000, 0, 142_000, CLOSE_ROW_COSTS, 3 * GIB, 1),
            3
        );
        // Shards split the rows first.
        assert_eq!(groups_for(200_900_000, 0, 1_420_000, R, 3 * GIB, 4), 7);
    }

    #[test]
    fn plans_that_fill_the_budget_leave_a_quarter_of_it_to_the_rows() {
        let groups = groups_for(10_000_000, 0, 100_000_000, R, GIB, 1);
        assert_eq!(u64::from(groups), (10_000_000 * R.split).div_ceil(GIB / 4));
    }

    fn counts(by_group: &[u64]) -> GroupCounts {
        GroupCounts {
            held_by_unit: Vec::new(),
            by_group: by_group.to_vec(),
        }
    }

    #[test]
    fn a_group_is_oversized_one_row_past_the_factor() {
        // The 100M bench data's groups: 26 of about 7.7M rows, within the budget's 7.9M.
        let fit = rows_per_group(1_420_000, R, 3 * GIB);
        assert_eq!(fit, (3 * GIB - 1_420_000 * R.plan_row) / R.split);
        let usage = counts(&[10, 30, 5]);
        // Usage and ledger rows of a group add up: group 2 holds 30 + 11 = 41.
        let debits = counts(&[10, 11, 30]);
        assert_eq!(oversized_group(&usage, &debits, 20, 2), Some((1, 41)));
        assert_eq!(oversized_group(&usage, &debits, 20, 3), None);
        // At the limit: 40 rows is not past 2 × 20; one row more is.
        let at_limit = counts(&[10, 29, 5]);
        assert_eq!(oversized_group(&at_limit, &debits, 20, 2), None);
        assert_eq!(oversized_group(&usage, &counts(&[0, 10, 0]), 20, 2), None);
        // Equal groups: the first is named.
        assert_eq!(
            oversized_group(&counts(&[50, 50]), &counts(&[]), 20, 2),
            Some((0, 50))
        );
        // No rows, or a budget that holds no row: never a division by zero.
        assert_eq!(oversized_group(&counts(&[]), &counts(&[]), 20, 2), None);
        assert_eq!(rows_per_group(0, R, 1), 1);
    }

    #[test]
    fn groups_stop_at_the_limit_and_at_one_partition_each() {
        assert_eq!(groups_for(2_000_000_000, 0, 0, R, 2 * GIB, 1), MAX_GROUPS);
        assert_eq!(groups_for(u64::from(u32::MAX), 0, 0, R, 1, 1), MAX_GROUPS);
        assert_eq!(groups_for(u64::MAX, 0, u64::MAX, R, 2 * GIB, 1), MAX_GROUPS);
        assert_eq!(groups_for(u64::MAX, 0, 0, R, 0, 1), MAX_GROUPS);
        // 4096 partitions over 1024 shards: 4 partitions, so at most 4 groups a shard.
        assert_eq!(groups_for(200_000_000_000, 0, 0, R, 2 * GIB, 1024), 4);
        // 4096 shards: one partition each, one group, however large.
        assert_eq!(groups_for(20_000_000_000, 0, 0, R, 2 * GIB, 4096), 1);
        // The shard cap at its limit and one past: 16 shards of 256 partitions keep the
        // 256 groups; 17 shards hold 241 partitions, so 241 groups at most.
        assert_eq!(max_groups(16), MAX_GROUPS);
        assert_eq!(groups_for(u64::MAX, 0, 0, R, 2 * GIB, 16), MAX_GROUPS);
        assert_eq!(max_groups(17), 241);
        assert_eq!(groups_for(u64::MAX, 0, 0, R, 2 * GIB, 17), 241);
        assert_eq!(max_groups(4096), 1);
        assert_eq!(max_groups(0), MAX_GROUPS);
    }
}
