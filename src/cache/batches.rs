//! Which cached blocks came in one registry answer. When part of an answer
//! fails its check, the rest of it is no more trustworthy (a registry that
//! served another range's bytes, or flipped some, did so for all of it),
//! so the whole answer is forgotten at once, not one chunk per failed read.

use std::collections::BTreeMap;

/// Answers remembered at most; past this the oldest are let go (a bad
/// chunk among them then costs its own failed read, as it would anyway).
const MAX_BATCHES: usize = 4096;

/// Disjoint block ranges `[first, end)`, each fetched in one answer, by
/// first block.
#[derive(Debug, Default)]
pub struct Batches {
    ranges: BTreeMap<u64, u64>,
    /// First blocks, oldest first, for letting go past [`MAX_BATCHES`].
    order: std::collections::VecDeque<u64>,
}

impl Batches {
    /// Records blocks `[first, end)` as fetched together; older batches
    /// they overlap (partly fetched again) are forgotten as batches.
    pub fn add(&mut self, first: u64, end: u64) {
        if first >= end {
            return;
        }
        for k in self.overlapping(first, end) {
            self.ranges.remove(&k);
        }
        self.ranges.insert(first, end);
        self.order.push_back(first);
        while self.ranges.len() > MAX_BATCHES || self.order.len() > 2 * MAX_BATCHES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.order.contains(&old) {
                continue; // recorded again since: not the oldest
            }
            self.ranges.remove(&old);
        }
    }

    /// Blocks `[first, end)` widened to the batches they touch, which are
    /// dropped: the blocks to forget.
    pub fn take(&mut self, first: u64, end: u64) -> (u64, u64) {
        let (mut lo, mut hi) = (first, end);
        for k in self.overlapping(first, end) {
            if let Some(e) = self.ranges.remove(&k) {
                (lo, hi) = (lo.min(k), hi.max(e));
            }
        }
        (lo, hi)
    }

    /// Forgets every batch.
    pub fn clear(&mut self) {
        self.ranges.clear();
        self.order.clear();
    }

    fn overlapping(&self, first: u64, end: u64) -> Vec<u64> {
        self.ranges
            .range(..end)
            .rev()
            .take_while(|&(_, &e)| e > first)
            .map(|(&k, _)| k)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_block_takes_its_whole_batch_and_only_that() {
        let mut b = Batches::default();
        b.add(0, 4);
        b.add(4, 10);
        b.add(12, 13);
        assert_eq!(b.take(5, 6), (4, 10));
        assert_eq!(b.take(5, 6), (5, 6), "taken once");
        assert_eq!(b.take(3, 13), (0, 13));
        assert_eq!(b.take(11, 12), (11, 12), "between batches");
        // A refetch over part of a batch ends it as a batch.
        b.add(20, 30);
        b.add(25, 26);
        assert_eq!(b.take(21, 22), (21, 22));
        assert_eq!(b.take(25, 26), (25, 26));
    }

    #[test]
    fn batches_are_bounded() {
        let mut b = Batches::default();
        for i in 0..3 * MAX_BATCHES as u64 {
            b.add(2 * i, 2 * i + 1);
        }
        assert_eq!(b.ranges.len(), MAX_BATCHES);
        assert!(b.order.len() <= 2 * MAX_BATCHES);
        assert_eq!(b.take(0, 1), (0, 1), "the oldest were let go");
        let last = 2 * (3 * MAX_BATCHES as u64 - 1);
        assert!(b.ranges.contains_key(&last), "the newest are kept");
    }
}
