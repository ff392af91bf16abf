//! A set of block ranges kept merged, used for the in-memory per-transaction sets
//! (blocks allocated in the open transaction, blocks freed by it).

use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    /// start -> len, non-overlapping and non-adjacent.
    map: BTreeMap<u64, u64>,
    /// The sum of the lengths.
    blocks: u64,
}

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    pub fn insert(&mut self, mut start: u64, mut len: u64) {
        if len == 0 {
            return;
        }
        let mut end = start + len;
        if let Some((&s, &l)) = self.map.range(..=start).next_back() {
            if s + l >= start {
                start = s;
                end = end.max(s + l);
                self.map.remove(&s);
                self.blocks -= l;
            }
        }
        let overlapping: Vec<(u64, u64)> =
            self.map.range(start..=end).map(|(&s, &l)| (s, l)).collect();
        for (s, l) in overlapping {
            end = end.max(s + l);
            self.map.remove(&s);
            self.blocks -= l;
        }
        len = end - start;
        self.map.insert(start, len);
        self.blocks += len;
    }

    pub fn remove(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = start + len;
        let mut hits: Vec<(u64, u64)> = self.map.range(start..end).map(|(&s, &l)| (s, l)).collect();
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

    /// True when every block of the range is in the set.
    pub fn contains_all(&self, start: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        match self.map.range(..=start).next_back() {
            Some((&s, &l)) => s + l >= start + len,
            None => false,
        }
    }

    /// The parts of `[start, start+len)` that are in the set.
    pub fn intersect(&self, start: u64, len: u64) -> Vec<(u64, u64)> {
        let end = start + len;
        let mut out = Vec::new();
        if let Some((&s, &l)) = self.map.range(..start).next_back() {
            if s + l > start {
                out.push((start, (s + l).min(end) - start));
            }
        }
        for (&s, &l) in self.map.range(start..end) {
            out.push((s, (s + l).min(end) - s));
        }
        out
    }

    /// The parts of `[start, start+len)` that are not in the set.
    pub fn gaps(&self, start: u64, len: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = start;
        for (s, l) in self.intersect(start, len) {
            if s > pos {
                out.push((pos, s - pos));
            }
            pos = s + l;
        }
        if pos < start + len {
            out.push((pos, start + len - pos));
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&s, &l)| (s, l))
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

    #[test]
    fn insert_merges_adjacent_and_overlapping() {
        let mut s = RangeSet::new();
        s.insert(10, 5);
        s.insert(15, 5);
        s.insert(0, 3);
        s.insert(2, 9);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(0, 20)]);
    }

    #[test]
    fn remove_splits() {
        let mut s = RangeSet::new();
        s.insert(0, 100);
        s.remove(10, 10);
        s.remove(95, 10);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(0, 10), (20, 75)]);
        assert!(s.contains_all(20, 75));
        assert!(!s.contains_all(5, 10));
        assert_eq!(s.intersect(5, 20), vec![(5, 5), (20, 5)]);
        assert_eq!(s.total(), 85);
        assert_eq!(s.gaps(5, 20), vec![(10, 10)]);
        assert_eq!(s.gaps(90, 20), vec![(95, 15)]);
        assert_eq!(s.gaps(200, 3), vec![(200, 3)]);
    }
}
