//! A set of block ranges kept merged, used for the in-memory per-transaction sets
//! (blocks allocated in the open transaction, blocks freed by it).

use crate::types::{BlockNo, BlockRun};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    /// start -> len, non-overlapping and non-adjacent.
    map: BTreeMap<BlockNo, u64>,
    /// The sum of the lengths.
    blocks: u64,
}

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    /// Add `run`; returns the run of the set that holds it now (merged with its neighbours).
    pub fn insert(&mut self, run: BlockRun) -> BlockRun {
        if run.is_empty() {
            return run;
        }
        let (mut start, mut end) = (run.start, run.end());
        if let Some((&s, &l)) = self.map.range(..=start).next_back() {
            if s + l >= start {
                start = s;
                end = end.max(s + l);
                self.map.remove(&s);
                self.blocks -= l;
            }
        }
        let overlapping: Vec<(BlockNo, u64)> =
            self.map.range(start..=end).map(|(&s, &l)| (s, l)).collect();
        for (s, l) in overlapping {
            end = end.max(s + l);
            self.map.remove(&s);
            self.blocks -= l;
        }
        self.map.insert(start, end - start);
        self.blocks += end - start;
        BlockRun::new(start, end - start)
    }

    pub fn remove(&mut self, run: BlockRun) {
        if run.is_empty() {
            return;
        }
        let (start, end) = (run.start, run.end());
        let mut hits: Vec<(BlockNo, u64)> =
            self.map.range(start..end).map(|(&s, &l)| (s, l)).collect();
        if let Some((&s, &l)) = self.map.range(..start).next_back() {
            if s + l > start {
                hits.push((s, l));
            }
        }
        for (s, l) in hits {
            self.map.remove(&s);
            self.blocks -= l;
            if s < start {
                self.map.insert(s, start - s);
                self.blocks += start - s;
            }
            if s + l > end {
                self.map.insert(end, s + l - end);
                self.blocks += s + l - end;
            }
        }
    }

    /// True when every block of the run is in the set.
    pub fn contains_all(&self, run: BlockRun) -> bool {
        if run.is_empty() {
            return true;
        }
        match self.map.range(..=run.start).next_back() {
            Some((&s, &l)) => s + l >= run.end(),
            None => false,
        }
    }

    /// The parts of `run` that are in the set.
    pub fn intersect(&self, run: BlockRun) -> Vec<BlockRun> {
        let (start, end) = (run.start, run.end());
        let mut out = Vec::new();
        if let Some((&s, &l)) = self.map.range(..start).next_back() {
            if s + l > start {
                out.push(BlockRun::between(start, (s + l).min(end)));
            }
        }
        for (&s, &l) in self.map.range(start..end) {
            out.push(BlockRun::between(s, (s + l).min(end)));
        }
        out
    }

    /// The parts of `run` that are not in the set.
    pub fn gaps(&self, run: BlockRun) -> Vec<BlockRun> {
        let mut out = Vec::new();
        let mut pos = run.start;
        for r in self.intersect(run) {
            if r.start > pos {
                out.push(BlockRun::between(pos, r.start));
            }
            pos = r.end();
        }
        if pos < run.end() {
            out.push(BlockRun::between(pos, run.end()));
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = BlockRun> + '_ {
        self.map.iter().map(|(&s, &l)| BlockRun::new(s, l))
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn total(&self) -> u64 {
        self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, len: u64) -> BlockRun {
        BlockRun::new(BlockNo(start), len)
    }

    #[test]
    fn insert_merges_adjacent_and_overlapping() {
        let mut s = RangeSet::new();
        s.insert(r(10, 5));
        s.insert(r(15, 5));
        s.insert(r(0, 3));
        s.insert(r(2, 9));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![r(0, 20)]);
    }

    #[test]
    fn remove_splits() {
        let mut s = RangeSet::new();
        s.insert(r(0, 100));
        s.remove(r(10, 10));
        s.remove(r(95, 10));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![r(0, 10), r(20, 75)]);
        assert!(s.contains_all(r(20, 75)));
        assert!(!s.contains_all(r(5, 10)));
        assert_eq!(s.intersect(r(5, 20)), vec![r(5, 5), r(20, 5)]);
        assert_eq!(s.total(), 85);
        assert_eq!(s.gaps(r(5, 20)), vec![r(10, 10)]);
        assert_eq!(s.gaps(r(90, 20)), vec![r(95, 15)]);
        assert_eq!(s.gaps(r(200, 3)), vec![r(200, 3)]);
    }
}
