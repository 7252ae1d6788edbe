//! The spill form of a frame's ids: an [`crate::dict::IdChunk`] (each id as a 2-byte
//! length and its bytes) made smaller for the trip through the spill file.
//!
//! Event and ledger ids are mostly a short fixed prefix and lowercase hex digits
//! (`evt-14a8e8b38896c4e3`, `led-…`): written as the prefix (once per frame while the ids
//! share it) and the hex digits as bytes, a generated 20-byte id takes 9 bytes instead of
//! 22 (a UUID, whose prefix differs per id, 32 instead of 38), and the spill of the bench
//! data about 30 bytes a row instead of 49 (the largest size of a split run's spill folder,
//! `benches/spill-size.sh`). Ids of any other shape are copied as they are. What a split
//! run pays for the spill is mostly the kernel moving its bytes (into the page cache
//! and back, write-back to disk past the dirty limit), so fewer bytes is less time.
//!
//! An id is one of:
//! - `RAW` (a 0 byte), its length (u16 LE) and its bytes;
//! - a packed id: one byte `n << 2 | tag` (`n`: 1 to 63 bytes of hex digits, two digits a
//!   byte), then for `NEW_PREFIX` the prefix's length (one byte) and bytes, then the `n`
//!   bytes. Tags `PREFIX_0` and `PREFIX_1` reuse one of the two prefixes seen last (a ledger
//!   frame alternates between entry and event ids), so a prefix is written once per frame
//!   in the common case. Both sides update the two slots by the same rule.
//!
//! Unpacking checks every length against the input, [`MAX_ID_BYTES`] and the 4 GiB an id
//! chunk may hold, and returns `None` for bytes that are not a packed chunk (a damaged
//! frame fails its checksum; this keeps bytes that pass it from panicking or allocating
//! without bound).

use crate::dict::MAX_ID_BYTES;

const RAW: u8 = 0;
const NEW_PREFIX: u8 = 1;
const PREFIX_0: u8 = 2;
const PREFIX_1: u8 = 3;
// A slot's tag is `PREFIX_0 + slot`.
const _: () = assert!(PREFIX_1 == PREFIX_0 + 1);
/// Hex digits packed at most (63 bytes: what the header byte holds).
const MAX_PACKED_BYTES: usize = 63;
/// The most bytes an id chunk holds (its ids' offsets are u32): a packed id of 2 bytes may
/// stand for 259, so unpacking bounds what it writes by this, not by its input.
const MAX_CHUNK_BYTES: usize = u32::MAX as usize;
/// Fewer hex digits than this are not worth packing.
const MIN_HEX_DIGITS: usize = 8;

/// The two prefixes seen last, and which one was used last (the other is replaced next).
#[derive(Default)]
struct Prefixes<T> {
    slots: [Option<T>; 2],
    recent: usize,
}

impl<T: Copy> Prefixes<T> {
    /// Remember `prefix` as used: in the slot it was found in, or in place of the slot used
    /// less recently.
    fn use_slot(&mut self, found: Option<usize>, prefix: T) {
        let slot = found.unwrap_or(1 - self.recent);
        self.slots[slot] = Some(prefix);
        self.recent = slot;
    }
}

/// The value of each byte as a lowercase hex digit (`NOT_HEX`: not one). Packing and
/// unpacking by table rather than with the `hex` crate (which checks and reports each
/// digit): this runs for every id of a split run (300M at 100M events), and a
/// micro-benchmark of 2M generated ids (warm memory, by hand) took 84 ns an id to pack and
/// 17.5 to unpack with the crate, 11.7 and 14.0 with the tables.
const NOT_HEX: u8 = 0xFF;
const HEX_VALUE: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 16 {
        table[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    table
};
/// The two lowercase hex digits of each byte.
const HEX_PAIR: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [digits[i >> 4], digits[i & 15]];
        i += 1;
    }
    table
};

/// The split of an id into a prefix of at most 255 bytes and an even number of trailing
/// lowercase hex digits worth packing (at least [`MIN_HEX_DIGITS`], at most
/// [`MAX_PACKED_BYTES`] bytes' worth): the prefix's length.
fn hex_split(id: &[u8]) -> Option<usize> {
    let digits = id
        .iter()
        .rev()
        .take(2 * MAX_PACKED_BYTES)
        .take_while(|&&b| HEX_VALUE[b as usize] != NOT_HEX)
        .count()
        & !1;
    (digits >= MIN_HEX_DIGITS && id.len() - digits <= usize::from(u8::MAX))
        .then_some(id.len() - digits)
}

/// `digits` (an even number, at most [`MAX_PACKED_BYTES`] bytes' worth) as bytes, two
/// digits a byte, into `packed`; `false` if one is not a lowercase hex digit.
fn digits_to_bytes(digits: &[u8], packed: &mut [u8; MAX_PACKED_BYTES]) -> bool {
    let mut seen = 0u8;
    for (byte, pair) in packed.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (HEX_VALUE[pair[0] as usize], HEX_VALUE[pair[1] as usize]);
        seen |= high | low;
        *byte = (high << 4) | (low & 15);
    }
    // A digit's value is below 16; `NOT_HEX` is not.
    seen < 16
}

/// The prefix slot of `id` and its packed digits, when `id` is one of the slots' prefixes
/// then digits (most ids of a frame: a split other than [`hex_split`]'s unpacks the same).
fn in_a_slot(
    prefixes: &Prefixes<&[u8]>,
    id: &[u8],
    packed: &mut [u8; MAX_PACKED_BYTES],
) -> Option<(usize, usize)> {
    (0..2).find_map(|slot| {
        let prefix = prefixes.slots[slot]?;
        let digits = id.strip_prefix(prefix)?;
        let fits = digits.len() % 2 == 0
            && (MIN_HEX_DIGITS..=2 * MAX_PACKED_BYTES).contains(&digits.len());
        (fits && digits_to_bytes(digits, packed)).then_some((slot, digits.len() / 2))
    })
}

/// Append the spill form of `chunk` (an id chunk's bytes, whole ids) to `out`.
pub fn pack(chunk: &[u8], out: &mut Vec<u8>) {
    let mut prefixes = Prefixes::<&[u8]>::default();
    let mut packed = [0u8; MAX_PACKED_BYTES];
    let mut next = 0;
    while let Some((_, id)) = crate::model::take_id(chunk, &mut next) {
        if let Some((slot, bytes)) = in_a_slot(&prefixes, id, &mut packed) {
            let prefix = prefixes.slots[slot].expect("a slot in use");
            prefixes.use_slot(Some(slot), prefix);
            out.push(((bytes as u8) << 2) | (PREFIX_0 + slot as u8));
            out.extend_from_slice(&packed[..bytes]);
            continue;
        }
        let Some(split) = hex_split(id) else {
            out.push(RAW);
            out.extend_from_slice(&(id.len() as u16).to_le_bytes());
            out.extend_from_slice(id);
            continue;
        };
        let (prefix, digits) = id.split_at(split);
        let bytes = digits.len() / 2;
        assert!(
            digits_to_bytes(digits, &mut packed),
            "hex_split finds hex digits"
        );
        prefixes.use_slot(None, prefix);
        out.push(((bytes as u8) << 2) | NEW_PREFIX);
        out.push(prefix.len() as u8);
        out.extend_from_slice(prefix);
        out.extend_from_slice(&packed[..bytes]);
    }
}

/// Where an unpacked id's prefix comes from: new (its bytes in the packed chunk) or a
/// slot's (the range of the output it was written to).
enum Prefix<'a> {
    New(&'a [u8]),
    Seen(usize, usize),
}

/// Append the id chunk that `packed` is the spill form of to `out`, stopping after
/// `max_ids` ids; `None` when `packed` is not a packed chunk. Only whole ids are appended:
/// on `None`, `out` holds the ids before the first that does not unpack.
pub fn unpack(packed: &[u8], out: &mut Vec<u8>, max_ids: usize) -> Option<()> {
    // Prefixes as ranges of `out` (the ids they were written with).
    let mut prefixes = Prefixes::<(usize, usize)>::default();
    let mut at = 0;
    let mut ids = 0;
    while at < packed.len() && ids < max_ids {
        let header = packed[at];
        at += 1;
        ids += 1;
        let tag = header & 3;
        if tag == RAW {
            let len = u16::from_le_bytes(packed.get(at..at + 2)?.try_into().ok()?) as usize;
            let id = packed.get(at + 2..at + 2 + len)?;
            if header != RAW || len > MAX_ID_BYTES || out.len() + 2 + len > MAX_CHUNK_BYTES {
                return None;
            }
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(id);
            at += 2 + len;
            continue;
        }
        let (slot, prefix) = match tag {
            NEW_PREFIX => {
                let len = usize::from(*packed.get(at)?);
                let prefix = packed.get(at + 1..at + 1 + len)?;
                at += 1 + len;
                (None, Prefix::New(prefix))
            }
            _ => {
                let slot = usize::from(tag - PREFIX_0);
                let (start, len) = prefixes.slots[slot]?;
                (Some(slot), Prefix::Seen(start, len))
            }
        };
        let prefix_len = match prefix {
            Prefix::New(bytes) => bytes.len(),
            Prefix::Seen(_, len) => len,
        };
        let bytes = usize::from(header >> 2);
        let digits = packed.get(at..at + bytes)?;
        at += bytes;
        let len = prefix_len + 2 * bytes;
        if bytes == 0 || len > MAX_ID_BYTES || out.len() + 2 + len > MAX_CHUNK_BYTES {
            return None;
        }
        // Byte by byte and pair by pair into room reserved at once: the prefix and digits
        // of an id are a few bytes each, and a copy of a length known only at run time
        // is a call to `memcpy`. Those calls (two an id) took 18 % of a 20M-event split
        // reconcile's read-back samples (`perf`); this way the read-back of a group took
        // 488-558 ms against 539-594 (hand runs, alternating), for more instructions.
        out.reserve(2 + len);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        let prefix_at = out.len();
        match prefix {
            Prefix::New(bytes) => bytes.iter().for_each(|&b| out.push(b)),
            Prefix::Seen(start, len) => (start..start + len).for_each(|i| out.push(out[i])),
        }
        prefixes.use_slot(slot, (prefix_at, prefix_len));
        for &byte in digits {
            out.extend_from_slice(&HEX_PAIR[usize::from(byte)]);
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dict::IdChunk;
    use proptest::prelude::*;

    fn chunk_of(ids: &[&str]) -> Vec<u8> {
        let mut chunk = IdChunk::default();
        for id in ids {
            chunk.push(id);
        }
        chunk.bytes
    }

    fn packed(chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        pack(chunk, &mut out);
        out
    }

    fn unpacked(packed: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        unpack(packed, &mut out, usize::MAX).map(|()| out)
    }

    #[test]
    fn generated_ids_take_nine_bytes_after_the_first_of_a_prefix() {
        let ids = [
            "evt-14a8e8b38896c4e3",
            "led-762dbda55e415421",
            "evt-5a03daef623eb279",
            "led-7567daba43585491",
            "evt-95173057d4d5e64e",
        ];
        let chunk = chunk_of(&ids);
        let spill = packed(&chunk);
        // Two new prefixes (1 + 1 + 4 + 8 bytes), then three ids of 1 + 8 bytes.
        assert_eq!(spill.len(), 2 * 14 + 3 * 9);
        assert_eq!(spill[0], (8 << 2) | NEW_PREFIX);
        // The third id finds "evt-" where the first put it; the fourth "led-".
        assert_eq!(spill[28], (8 << 2) | PREFIX_1);
        assert_eq!(spill[37], (8 << 2) | PREFIX_0);
        assert_eq!(unpacked(&spill), Some(chunk));
    }

    #[test]
    fn other_ids_are_copied_or_packed_from_their_last_hex_digits() {
        let ids = [
            "",
            "E-ABCDEF0123456789",
            "order 7",
            "550e8400-e29b-41d4-a716-446655440000",
            "abcdef0123456789abcdef0123456789",
            "x9abcdef01",
            "é-ü",
        ];
        let chunk = chunk_of(&ids);
        let spill = packed(&chunk);
        assert_eq!(unpacked(&spill), Some(chunk));
        // The UUID keeps its last 12 digits as 6 bytes (an even count of trailing digits).
        assert_eq!(hex_split(ids[3].as_bytes()), Some(24));
        // An odd count of trailing digits leaves one in the prefix.
        assert_eq!(hex_split(b"x9abcdef01"), Some(2));
        assert_eq!(hex_split(b"E-ABCDEF0123456789"), Some(8));
        assert_eq!(hex_split(b"ABCDEFABCDEF"), None);
        assert_eq!(hex_split(b"abc1234"), None);
    }

    #[test]
    fn hex_runs_are_packed_up_to_the_header_limit_and_prefixes_up_to_255_bytes() {
        let longest = "a".repeat(2 * MAX_PACKED_BYTES);
        let past = "a".repeat(2 * MAX_PACKED_BYTES + 2);
        let long_prefix = format!("{}{}", "-".repeat(255), "0".repeat(16));
        let too_long_prefix = format!("{}{}", "-".repeat(256), "0".repeat(16));
        let max_id = "f".repeat(MAX_ID_BYTES);
        assert_eq!(hex_split(longest.as_bytes()), Some(0));
        assert_eq!(hex_split(past.as_bytes()), Some(2));
        assert_eq!(hex_split(long_prefix.as_bytes()), Some(255));
        assert_eq!(hex_split(too_long_prefix.as_bytes()), None);
        let chunk = chunk_of(&[&longest, &past, &long_prefix, &too_long_prefix, &max_id]);
        assert_eq!(unpacked(&packed(&chunk)), Some(chunk));
    }

    #[test]
    fn unpacking_stops_after_max_ids() {
        let chunk = chunk_of(&["evt-14a8e8b38896c4e3", "raw", "evt-5a03daef623eb279"]);
        let mut out = Vec::new();
        unpack(&packed(&chunk), &mut out, 2).unwrap();
        assert_eq!(out, chunk_of(&["evt-14a8e8b38896c4e3", "raw"]));
    }

    #[test]
    fn bytes_that_are_not_a_packed_chunk_are_refused() {
        let spill = packed(&chunk_of(&["evt-14a8e8b38896c4e3", "raw"]));
        // Cut anywhere inside an id: the ids before it come out whole.
        for cut in [1, 5, 13, 15, 16] {
            assert_eq!(unpacked(&spill[..cut]), None, "cut at {cut}");
            let mut out = Vec::new();
            assert_eq!(unpack(&spill[..cut], &mut out, usize::MAX), None);
            let whole = match cut < 14 {
                true => Vec::new(),
                false => chunk_of(&["evt-14a8e8b38896c4e3"]),
            };
            assert_eq!(out, whole, "cut at {cut}");
        }
        // A prefix slot never filled; a raw header with bits set; no hex bytes; a raw id
        // past the limit.
        assert_eq!(
            unpacked(&[(8 << 2) | PREFIX_0, 1, 2, 3, 4, 5, 6, 7, 8]),
            None
        );
        assert_eq!(unpacked(&[4, 0, 0]), None);
        assert_eq!(unpacked(&[NEW_PREFIX, 0]), None);
        let too_long = (MAX_ID_BYTES as u16 + 1).to_le_bytes();
        let mut raw = vec![RAW, too_long[0], too_long[1]];
        raw.resize(3 + MAX_ID_BYTES + 1, b'x');
        assert_eq!(unpacked(&raw), None);
    }

    #[test]
    fn a_slot_prefix_may_split_an_id_where_hex_split_would_not() {
        // The first id leaves "aa" as its prefix (126 digits at most are packed); the next
        // ones reuse it although `hex_split` would take all their digits.
        let ids = [
            "a".repeat(128),
            format!("aa{}", "0".repeat(20)),
            format!("aa{}", "0".repeat(126)),
        ];
        assert_eq!(hex_split(ids[1].as_bytes()), Some(0));
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let chunk = chunk_of(&refs);
        let spill = packed(&chunk);
        assert_eq!(spill[1 + 1 + 2 + 63], (10 << 2) | PREFIX_1);
        assert_eq!(unpacked(&spill), Some(chunk));
    }

    #[test]
    fn the_prefix_used_less_recently_is_replaced() {
        let id = |prefix: &str| format!("{prefix}-0123456789abcdef");
        let ids = [id("a"), id("b"), id("c"), id("a"), id("c"), id("b")];
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let chunk = chunk_of(&refs);
        let spill = packed(&chunk);
        let mut tags = Vec::new();
        let mut at = 0;
        while at < spill.len() {
            let tag = spill[at] & 3;
            tags.push(tag);
            at += 1 + 8 + if tag == NEW_PREFIX { 1 + 2 } else { 0 };
        }
        // a and b fill both slots; c replaces a (used before b); a replaces b; c is found;
        // b replaces a (used before c).
        assert_eq!(
            tags,
            [NEW_PREFIX, NEW_PREFIX, NEW_PREFIX, NEW_PREFIX, PREFIX_1, NEW_PREFIX]
        );
        assert_eq!(unpacked(&spill), Some(chunk));
    }

    #[test]
    fn unpacking_appends_after_what_the_output_holds() {
        let chunk = chunk_of(&["evt-14a8e8b38896c4e3", "evt-5a03daef623eb279"]);
        let mut out = chunk_of(&["earlier"]);
        unpack(&packed(&chunk), &mut out, usize::MAX).unwrap();
        let mut expected = chunk_of(&["earlier"]);
        expected.extend_from_slice(&chunk);
        assert_eq!(out, expected);
    }

    /// The ids of an id chunk's bytes, or `None` if they do not split into whole ids.
    fn whole_ids(chunk: &[u8]) -> Option<usize> {
        let (mut next, mut ids) = (0, 0);
        while (next as usize) < chunk.len() {
            crate::model::take_id(chunk, &mut next)?;
            ids += 1;
        }
        Some(ids)
    }

    proptest! {
        #[test]
        fn any_bytes_unpack_to_whole_ids_or_none(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            let _ = unpack(&bytes, &mut out, usize::MAX);
            prop_assert!(whole_ids(&out).is_some());
        }

        #[test]
        fn any_chunk_comes_back_as_it_was(
            ids in proptest::collection::vec(
                prop_oneof![
                    "[a-z]{0,5}-?[0-9a-f]{0,40}",
                    "[a-z-]{0,3}[0-9a-f]{100,140}",
                    "[a-z]{250,260}[0-9a-f]{6,20}",
                    "[0-9a-fA-F-]{0,40}",
                    ".{0,12}",
                ],
                0..40,
            )
        ) {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let chunk = chunk_of(&refs);
            let spill = packed(&chunk);
            prop_assert!(spill.len() <= chunk.len() + ids.len());
            prop_assert_eq!(unpacked(&spill), Some(chunk));
        }
    }
}
