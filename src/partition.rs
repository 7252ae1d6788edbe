//! Filing items into numbered partitions in parallel: a counting sort that keeps the
//! items' order within a partition. The id joins file (hash, row) pairs by the hash's top
//! bits; the window files row numbers by account bucket.

use rayon::prelude::*;

/// Items filed by partition: partition `p` is `items[starts[p]..starts[p + 1]]`, its
/// items in the order of the rows they came from.
pub struct Filed<T> {
    pub items: Vec<T>,
    pub starts: Vec<usize>,
}

impl<T> Filed<T> {
    pub fn partition(&self, p: usize) -> &[T] {
        &self.items[self.starts[p]..self.starts[p + 1]]
    }

    pub fn partitions(&self) -> usize {
        self.starts.len() - 1
    }
}

/// File `item(row)` for every row of `0..rows` into `partitions` partitions (`item`:
/// `None` leaves a row out). Chunks of rows are counted, then filed, by one task each, into
/// ranges that depend only on the counts: the result is the same whatever the threads.
pub fn file<T: Copy + Default + Send + Sync>(
    rows: usize,
    partitions: usize,
    item: impl Fn(usize) -> Option<(usize, T)> + Sync,
) -> Filed<T> {
    let chunk = rows.div_ceil(64).max(1 << 14);
    let chunks: Vec<std::ops::Range<usize>> = (0..rows.div_ceil(chunk))
        .map(|c| c * chunk..((c + 1) * chunk).min(rows))
        .collect();
    let counts: Vec<Vec<usize>> = chunks
        .par_iter()
        .map(|range| {
            let mut count = vec![0usize; partitions];
            range
                .clone()
                .filter_map(&item)
                .for_each(|(p, _)| count[p] += 1);
            count
        })
        .collect();
    let mut starts = vec![0usize; partitions + 1];
    let mut at: Vec<Vec<usize>> = vec![vec![0; partitions]; counts.len()];
    let mut total = 0;
    for p in 0..partitions {
        starts[p] = total;
        for (c, count) in counts.iter().enumerate() {
            at[c][p] = total;
            total += count[p];
        }
    }
    starts[partitions] = total;
    let mut items = vec![T::default(); total];
    let out = SharedSlice::new(&mut items);
    chunks
        .into_par_iter()
        .zip(at.into_par_iter())
        .for_each(|(range, mut next)| {
            for (p, value) in range.filter_map(&item) {
                // SAFETY: this chunk writes only the positions it counted for each
                // partition, from `at[c][p]` on; no two chunks' ranges overlap.
                unsafe { out.write(next[p], value) };
                next[p] += 1;
            }
        });
    Filed { items, starts }
}

/// A slice written at disjoint positions from several threads.
struct SharedSlice<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: threads write disjoint positions only (see `write`), and the slice outlives them.
unsafe impl<T: Send> Sync for SharedSlice<T> {}

impl<T> SharedSlice<T> {
    fn new(slice: &mut [T]) -> SharedSlice<T> {
        SharedSlice {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
        }
    }

    /// # Safety
    /// No other thread writes or reads position `at` while the slice is shared.
    unsafe fn write(&self, at: usize, value: T) {
        assert!(at < self.len, "a position inside the slice");
        // SAFETY: in bounds (checked), and exclusive by the caller's contract.
        unsafe { self.ptr.add(at).write(value) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kept row once, in its partition, in row order, for sizes around the chunk
    /// size (one chunk, several, a last short one).
    #[test]
    fn rows_are_filed_in_order_within_their_partition() {
        for rows in [0usize, 1, 1000, (1 << 14) + 1, 3 * (1 << 14) + 7, 300_000] {
            let filed = file(rows, 7, |r| (r % 5 != 2).then_some((r * 31 % 7, r as u32)));
            let mut seen = 0;
            for p in 0..filed.partitions() {
                let part = filed.partition(p);
                assert!(part.windows(2).all(|w| w[0] < w[1]));
                assert!(part.iter().all(|&r| r as usize * 31 % 7 == p));
                seen += part.len();
            }
            assert_eq!(seen, (0..rows).filter(|r| r % 5 != 2).count());
        }
    }
}
