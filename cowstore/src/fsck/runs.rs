//! Piecewise-constant functions over pool block numbers, as sorted disjoint runs: how check and
//! repair compare the references found in the extent maps with the refcount and free tables.

use crate::types::{BlockNo, BlockRun};

/// Sorted, disjoint runs with their values; blocks outside every run have value 0.
pub(super) type Runs = Vec<(BlockRun, u64)>;

/// Turn possibly overlapping references into runs with their reference counts.
pub(super) fn coverage(mut refs: Vec<BlockRun>) -> Runs {
    let mut events: Vec<(BlockNo, i64)> = Vec::with_capacity(refs.len() * 2);
    for r in refs.drain(..) {
        events.push((r.start, 1));
        events.push((r.end(), -1));
    }
    events.sort_unstable();
    let mut out: Runs = Vec::new();
    let mut depth: i64 = 0;
    let mut prev = BlockNo::ZERO;
    for (pos, d) in events {
        if pos > prev && depth > 0 {
            match out.last_mut() {
                Some(last) if last.0.end() == prev && last.1 == depth as u64 => {
                    last.0.len += pos - prev
                }
                _ => out.push((BlockRun::between(prev, pos), depth as u64)),
            }
        }
        depth += d;
        prev = pos;
    }
    out
}

/// Walk two piecewise functions together, calling `f(run, a, b)` on each piece where either is
/// non-zero.
pub(super) fn zip_runs(a: &Runs, b: &Runs, mut f: impl FnMut(BlockRun, u64, u64)) {
    let mut bounds: Vec<BlockNo> = Vec::with_capacity((a.len() + b.len()) * 2);
    for &(r, _) in a.iter().chain(b.iter()) {
        bounds.push(r.start);
        bounds.push(r.end());
    }
    bounds.sort_unstable();
    bounds.dedup();
    let (mut i, mut j) = (0usize, 0usize);
    for w in bounds.windows(2) {
        let (s, e) = (w[0], w[1]);
        while i < a.len() && a[i].0.end() <= s {
            i += 1;
        }
        while j < b.len() && b[j].0.end() <= s {
            j += 1;
        }
        let va = if i < a.len() && a[i].0.start <= s {
            a[i].1
        } else {
            0
        };
        let vb = if j < b.len() && b[j].0.start <= s {
            b[j].1
        } else {
            0
        };
        if va != 0 || vb != 0 {
            f(BlockRun::between(s, e), va, vb);
        }
    }
}

/// The pieces where `f(a, b)` holds, adjacent ones with the same values merged, so a bad range
/// is one line, not thousands: `(run, a, b)`.
pub(super) fn pieces_where(
    a: &Runs,
    b: &Runs,
    f: impl Fn(u64, u64) -> bool,
) -> Vec<(BlockRun, u64, u64)> {
    let mut out: Vec<(BlockRun, u64, u64)> = Vec::new();
    zip_runs(a, b, |r, va, vb| {
        if !f(va, vb) {
            return;
        }
        match out.last_mut() {
            Some(p) if p.0.end() == r.start && p.1 == va && p.2 == vb => p.0.len += r.len,
            _ => out.push((r, va, vb)),
        }
    });
    out
}

/// Blocks `[0, pool_blocks)` covered by neither `used` nor `free`.
pub(super) fn unaccounted(used: &Runs, free: &Runs, pool_blocks: u64) -> Vec<BlockRun> {
    let everything: Runs = if pool_blocks > 0 {
        vec![(BlockRun::new(BlockNo::ZERO, pool_blocks), 1)]
    } else {
        Vec::new()
    };
    let accounted = coverage(used.iter().chain(free.iter()).map(|&(r, _)| r).collect());
    pieces_where(&everything, &accounted, |all, acc| all == 1 && acc == 0)
        .into_iter()
        .map(|(r, _, _)| r)
        .collect()
}

/// The value of `runs` at `block`.
pub(super) fn value_at(runs: &Runs, block: BlockNo) -> u64 {
    match runs.binary_search_by(|(r, _)| {
        if r.end() <= block {
            std::cmp::Ordering::Less
        } else if r.start > block {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }) {
        Ok(i) => runs[i].1,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, len: u64) -> BlockRun {
        BlockRun::new(BlockNo(start), len)
    }

    #[test]
    fn coverage_counts_overlaps() {
        let c = coverage(vec![r(0, 10), r(5, 10), r(20, 2)]);
        assert_eq!(
            c,
            vec![(r(0, 5), 1), (r(5, 5), 2), (r(10, 5), 1), (r(20, 2), 1)]
        );
    }

    #[test]
    fn zip_runs_reports_differences() {
        let a: Runs = vec![(r(0, 10), 2)];
        let b: Runs = vec![(r(0, 5), 2), (r(5, 5), 3)];
        let mut diffs = Vec::new();
        zip_runs(&a, &b, |run, x, y| {
            if x != y {
                diffs.push((run, x, y))
            }
        });
        assert_eq!(diffs, vec![(r(5, 5), 2, 3)]);
    }

    #[test]
    fn pieces_merge_and_gaps_are_found() {
        let a: Runs = vec![(r(0, 4), 1), (r(4, 4), 1), (r(10, 2), 1)];
        let b: Runs = vec![(r(2, 4), 1)];
        assert_eq!(
            pieces_where(&a, &b, |x, y| x == 1 && y == 0),
            vec![(r(0, 2), 1, 0), (r(6, 2), 1, 0), (r(10, 2), 1, 0)]
        );
        assert_eq!(unaccounted(&a, &b, 14), vec![r(8, 2), r(12, 2)]);
        assert_eq!(value_at(&a, BlockNo(5)), 1);
        assert_eq!(value_at(&a, BlockNo(9)), 0);
    }
}
