//! The strings a run's rows share, kept once: accounts, products/actions/models and their
//! (product, action, model) combinations ("skus") get integer codes, and event and entry
//! ids live in byte arenas. Rows then hold codes and references (`model::Usage`,
//! `model::Debit`): no string is allocated, hashed or compared per row in the hot loops.
//!
//! Codes are made while the input is decoded in parallel, so their order is the order in
//! which threads met the strings, except for the accounts with allocations: they are
//! coded first, in byte order, so that sorting by their code sorts by account id. Nothing
//! that reaches an output is ordered by any other code (outputs are ordered by strings).

use crate::error::{Result, TallyError};
use crate::model::Shared;
use rustc_hash::FxHashMap;
use std::sync::RwLock;

/// A code for "no model" in a sku.
pub const NO_WORD: u32 = u32::MAX;

/// Strings to codes, shared by the threads that decode the input.
#[derive(Default)]
pub struct Interner {
    inner: RwLock<InternerInner>,
}

#[derive(Default)]
struct InternerInner {
    codes: FxHashMap<Shared, u32>,
    strings: Vec<Shared>,
}

impl Interner {
    /// An interner whose first codes are `strings`, in their order (0, 1, ...). A
    /// [`Shared`] given is kept as it is, not copied (the plans' account ids).
    pub fn seeded<S: AsRef<str> + Into<Shared>>(strings: impl IntoIterator<Item = S>) -> Interner {
        let mut inner = InternerInner::default();
        for s in strings {
            inner.insert(s);
        }
        Interner {
            inner: RwLock::new(inner),
        }
    }

    /// The code of `s`, made if it is new.
    pub fn code(&self, s: &str) -> u32 {
        if let Some(&code) = self.read().codes.get(s) {
            return code;
        }
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(s)
    }

    /// The code of `s` if it has one.
    pub fn get(&self, s: &str) -> Option<u32> {
        self.read().codes.get(s).copied()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, InternerInner> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The strings by code, once no more codes will be made.
    pub fn freeze(self) -> Vec<Shared> {
        self.inner
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .strings
    }
}

impl InternerInner {
    fn insert<S: AsRef<str> + Into<Shared>>(&mut self, s: S) -> u32 {
        if let Some(&code) = self.codes.get(s.as_ref()) {
            return code;
        }
        let code = u32::try_from(self.strings.len()).expect("fewer than 2^32 distinct strings");
        // The two highest values mark a missing or bad label while rows are read.
        assert!(code < u32::MAX - 1, "fewer than 2^32 - 2 distinct strings");
        let shared: Shared = s.into();
        self.strings.push(shared.clone());
        self.codes.insert(shared, code);
        code
    }
}

/// Word codes of a sku: product, action, model (`NO_WORD`: none).
pub type SkuWords = [u32; 3];

/// (product, action, model) word codes to sku codes, shared by the decoding threads.
#[derive(Default)]
pub struct SkuInterner {
    inner: RwLock<(FxHashMap<SkuWords, u32>, Vec<SkuWords>)>,
}

impl SkuInterner {
    pub fn code(&self, key: [u32; 3]) -> u32 {
        let found = self
            .inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
            .get(&key)
            .copied();
        if let Some(code) = found {
            return code;
        }
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (codes, keys) = &mut *inner;
        *codes.entry(key).or_insert_with(|| {
            keys.push(key);
            u32::try_from(keys.len() - 1).expect("fewer than 2^32 skus")
        })
    }

    fn freeze(self) -> Vec<[u32; 3]> {
        self.inner
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .1
    }
}

/// The codes made while a run decodes its input.
pub struct DictBuilder {
    /// Accounts: those with valid allocations first, sorted by bytes (codes
    /// `0..known_accounts`), then any other account met in usage or ledger rows.
    pub accounts: Interner,
    pub known_accounts: u32,
    /// Products, actions and models.
    pub words: Interner,
    pub skus: SkuInterner,
}

impl DictBuilder {
    /// `known` must be sorted by bytes, without repeats; a [`Shared`] given is the
    /// dictionary's string for that account, not copied.
    pub fn new<S: AsRef<str> + Into<Shared>>(
        known: impl ExactSizeIterator<Item = S>,
    ) -> DictBuilder {
        let known_accounts = u32::try_from(known.len()).expect("fewer than 2^32 accounts");
        DictBuilder {
            accounts: Interner::seeded(known),
            known_accounts,
            words: Interner::default(),
            skus: SkuInterner::default(),
        }
    }

    /// The sku of a (product, action, model) triple of strings.
    pub fn sku(&self, product: &str, action: &str, model: Option<&str>) -> u32 {
        let model = model.map_or(NO_WORD, |m| self.words.code(m));
        self.skus
            .code([self.words.code(product), self.words.code(action), model])
    }

    pub fn freeze(self) -> Dicts {
        Dicts {
            accounts: self.accounts.freeze(),
            known_accounts: self.known_accounts,
            words: self.words.freeze(),
            skus: self.skus.freeze(),
        }
    }
}

/// The codes of a run, read-only once its input is decoded.
#[derive(Clone, Debug, Default)]
pub struct Dicts {
    pub accounts: Vec<Shared>,
    /// Codes below this are the accounts with valid allocations, in byte order.
    pub known_accounts: u32,
    pub words: Vec<Shared>,
    /// Word codes of each sku: product, action, model (`NO_WORD`: none).
    pub skus: Vec<[u32; 3]>,
}

impl Dicts {
    pub fn account(&self, code: u32) -> &Shared {
        &self.accounts[code as usize]
    }

    pub fn is_known(&self, account: u32) -> bool {
        account < self.known_accounts
    }

    pub fn product(&self, sku: u32) -> &Shared {
        &self.words[self.skus[sku as usize][0] as usize]
    }

    pub fn action(&self, sku: u32) -> &Shared {
        &self.words[self.skus[sku as usize][1] as usize]
    }

    pub fn model(&self, sku: u32) -> Option<&Shared> {
        match self.skus[sku as usize][2] {
            NO_WORD => None,
            word => Some(&self.words[word as usize]),
        }
    }
}

/// Where an id's bytes are: a chunk of an [`Ids`] and an offset in it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
pub struct IdRef(u64);

impl IdRef {
    /// No id (a ledger entry without `event_id`).
    pub const NONE: IdRef = IdRef(u64::MAX);

    pub fn new(chunk: u32, offset: u32) -> IdRef {
        IdRef((u64::from(chunk) << 32) | u64::from(offset))
    }

    pub fn chunk(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn offset(self) -> u32 {
        self.0 as u32
    }

    pub fn is_none(self) -> bool {
        self == IdRef::NONE
    }

    /// The same offset in another chunk.
    pub fn in_chunk(self, chunk: u32) -> IdRef {
        IdRef::new(chunk, self.offset())
    }
}

/// The most bytes an id may have (longer ones are rejected `bad_value`): its length is
/// stored in 2 bytes.
pub const MAX_ID_BYTES: usize = crate::load::MAX_STRING_BYTES;

/// One chunk of ids being written: each id is its length (u16 LE) and its bytes.
#[derive(Default, Debug, Clone)]
pub struct IdChunk {
    pub bytes: Vec<u8>,
}

impl IdChunk {
    pub fn with_capacity(bytes: usize) -> IdChunk {
        IdChunk {
            bytes: Vec::with_capacity(bytes),
        }
    }

    /// [`IdChunk::with_capacity`], `None` when the allocation fails (a size from a
    /// footer, which may lie).
    pub fn try_with_capacity(bytes: usize) -> Option<IdChunk> {
        let mut chunk = IdChunk::default();
        chunk.bytes.try_reserve_exact(bytes).ok()?;
        Some(chunk)
    }

    /// The most bytes a chunk may hold before a row's ids are appended: a row's two ids of
    /// at most [`MAX_ID_BYTES`] each (and their lengths) then still start at offsets that
    /// fit a u32.
    pub const ROOM_FOR_A_ROW: usize = u32::MAX as usize - 2 * (2 + MAX_ID_BYTES);

    /// Whether a row's ids may be appended (a row group of 2^20 rows with ids of 4 KiB
    /// would pass 4 GiB: the loaders refuse its file instead of overflowing the offsets).
    pub fn has_room_for_a_row(&self) -> bool {
        IdChunk::room_for_a_row_at(self.bytes.len())
    }

    /// Whether a chunk of `len` bytes has room for a row's ids.
    fn room_for_a_row_at(len: usize) -> bool {
        len <= IdChunk::ROOM_FOR_A_ROW
    }

    /// Append an id; its offset in the chunk.
    pub fn push(&mut self, id: &str) -> u32 {
        self.push_bytes(id.as_bytes())
    }

    /// Append an id's bytes (UTF-8, from another chunk); its offset in the chunk.
    pub fn push_bytes(&mut self, id: &[u8]) -> u32 {
        assert!(id.len() <= MAX_ID_BYTES, "ids are checked for length first");
        let offset = u32::try_from(self.bytes.len()).expect("an id chunk holds under 4 GiB");
        self.bytes
            .extend_from_slice(&(id.len() as u16).to_le_bytes());
        self.bytes.extend_from_slice(id);
        offset
    }
}

/// A row group whose ids do not fit one chunk ([`IdChunk::has_room_for_a_row`]).
pub fn ids_past_a_chunk(file: &str, row_group: usize) -> crate::error::TallyError {
    crate::error::TallyError::input(
        file,
        format!(
            "row group {row_group} holds more than 4 GiB of ids, more than tally holds for \
             one row group; write the file in smaller row groups"
        ),
    )
}

/// The ids of a set of rows, in chunks (one per decoded row group or spill frame).
#[derive(Default, Debug)]
pub struct Ids {
    chunks: Vec<Vec<u8>>,
}

impl Ids {
    /// Add a chunk; its number.
    pub fn push(&mut self, chunk: IdChunk) -> u32 {
        self.chunks.push(chunk.bytes);
        u32::try_from(self.chunks.len() - 1).expect("fewer than 2^32 id chunks")
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// The bytes of an id. Panics on a reference that is not in these chunks (ids are only
    /// referred to by the rows they were written with).
    pub fn bytes(&self, id: IdRef) -> &[u8] {
        let chunk = &self.chunks[id.chunk() as usize];
        let at = id.offset() as usize;
        let len = u16::from_le_bytes([chunk[at], chunk[at + 1]]) as usize;
        &chunk[at + 2..at + 2 + len]
    }

    /// The id as text. Ids are written from UTF-8 strings; bytes read back from a spill
    /// file that are not UTF-8 mean the file was damaged.
    pub fn str(&self, id: IdRef) -> Result<&str> {
        std::str::from_utf8(self.bytes(id)).map_err(|_| {
            TallyError::Invariant("an id read back from a spill file is not UTF-8".into())
        })
    }

    /// The id as an owned inline id.
    pub fn id(&self, id: IdRef) -> Result<crate::model::Id> {
        self.str(id).map(crate::model::Id::new)
    }

    /// Take every chunk of `other`; the number of the first (references into `other`
    /// move by it).
    pub fn append(&mut self, other: Ids) -> u32 {
        let first = u32::try_from(self.chunks.len()).expect("fewer than 2^32 id chunks");
        self.chunks.extend(other.chunks);
        first
    }

    /// Bytes held (for logs).
    pub fn byte_len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row's ids may be appended up to [`IdChunk::ROOM_FOR_A_ROW`] bytes: then its two
    /// longest ids still start at offsets that fit a u32; one byte more, none may.
    #[test]
    fn a_chunk_has_room_for_a_row_up_to_the_last_offset_a_u32_holds() {
        let at_limit = IdChunk::ROOM_FOR_A_ROW;
        // The second id of a row starts after the first (its 2-byte length and bytes).
        let second_id_start = at_limit + 2 + MAX_ID_BYTES;
        assert!(u32::try_from(second_id_start).is_ok());
        assert_eq!(second_id_start + 2 + MAX_ID_BYTES, u32::MAX as usize);
        assert!(IdChunk::room_for_a_row_at(at_limit));
        assert!(!IdChunk::room_for_a_row_at(at_limit + 1));
        assert!(IdChunk::default().has_room_for_a_row());
    }

    #[test]
    fn known_accounts_are_coded_first_in_order() {
        let dicts = DictBuilder::new(["a", "b", "c"].into_iter());
        assert_eq!(dicts.accounts.code("b"), 1);
        assert_eq!(dicts.accounts.code("zz"), 3);
        assert_eq!(dicts.accounts.code("a"), 0);
        let frozen = dicts.freeze();
        assert!(frozen.is_known(2));
        assert!(!frozen.is_known(3));
        assert_eq!(&**frozen.account(3), "zz");
    }

    #[test]
    fn skus_decompose_into_their_words() {
        let dicts = DictBuilder::new(std::iter::empty::<&str>());
        let with_model = dicts.sku("studio", "video", Some("veo-3"));
        let without = dicts.sku("studio", "video", None);
        assert_ne!(with_model, without);
        assert_eq!(dicts.sku("studio", "video", Some("veo-3")), with_model);
        let frozen = dicts.freeze();
        assert_eq!(&**frozen.product(with_model), "studio");
        assert_eq!(&**frozen.action(with_model), "video");
        assert_eq!(frozen.model(with_model).map(|m| &**m), Some("veo-3"));
        assert_eq!(frozen.model(without), None);
    }

    #[test]
    fn ids_come_back_from_their_chunks() {
        let mut ids = Ids::default();
        let mut first = IdChunk::default();
        let a = first.push("evt-a");
        let empty = first.push("");
        let mut second = IdChunk::default();
        let long = "x".repeat(MAX_ID_BYTES);
        let b = second.push(&long);
        assert_eq!(ids.push(first), 0);
        assert_eq!(ids.push(second), 1);
        assert_eq!(ids.str(IdRef::new(0, a)).unwrap(), "evt-a");
        assert_eq!(ids.str(IdRef::new(0, empty)).unwrap(), "");
        assert_eq!(ids.str(IdRef::new(1, b)).unwrap(), long);
        let mut more = Ids::default();
        let mut chunk = IdChunk::default();
        let c = chunk.push("evt-c");
        more.push(chunk);
        let moved = ids.append(more);
        assert_eq!(ids.str(IdRef::new(moved, c)).unwrap(), "evt-c");
    }
}
