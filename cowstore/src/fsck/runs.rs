//! Piecewise-constant functions over pool block numbers, as sorted disjoint runs: how check and
//! repair compare the references found in the extent maps with the refcount and free tables.

/// Sorted, disjoint runs `(start, len, value)`; blocks outside every run have value 0.
pub(super) type Runs = Vec<(u64, u64, u64)>;

/// Turn possibly overlapping references `(start, len)` into runs with their reference counts.
pub(super) fn coverage(mut refs: Vec<(u64, u64)>) -> Runs {
    let mut events: Vec<(u64, i64)> = Vec::with_capacity(refs.len() * 2);
    for (s, l) in refs.drain(..) {
        events.push((s, 1));
        events.push((s + l, -1));
    }
    events.sort_unstable();
    let mut out: Runs = Vec::new();
    let mut depth: i64 = 0;
    let mut prev = 0u64;
    for (pos, d) in events {
        if pos > prev && depth > 0 {
            match out.last_mut() {
                Some(last) if last.0 + last.1 == prev && last.2 == depth as u64 => {
                    last.1 += pos - prev
                }
                _ => out.push((prev, pos - prev, depth as u64)),
            }
        }
        depth += d;
        prev = pos;
    }
    out
}

/// Walk two piecewise functions together, calling `f(start, len, a, b)` on each piece where
/// either is non-zero.
pub(super) fn zip_runs(a: &Runs, b: &Runs, mut f: impl FnMut(u64, u64, u64, u64)) {
    let mut bounds: Vec<u64> = Vec::with_capacity((a.len() + b.len()) * 2);
    for &(s, l, _) in a.iter().chain(b.iter()) {
        bounds.push(s);
        bounds.push(s + l);
    }
    bounds.sort_unstable();
    bounds.dedup();
    let (mut i, mut j) = (0usize, 0usize);
    for w in bounds.windows(2) {
        let (s, e) = (w[0], w[1]);
        while i < a.len() && a[i].0 + a[i].1 <= s {
            i += 1;
        }
        while j < b.len() && b[j].0 + b[j].1 <= s {
            j += 1;
        }
        let va = if i < a.len() && a[i].0 <= s {
            a[i].2
        } else {
            0
        };
        let vb = if j < b.len() && b[j].0 <= s {
            b[j].2
        } else {
            0
        };
        if va != 0 || vb != 0 {
            f(s, e - s, va, vb);
        }
    }
}

/// The pieces where `f(a, b)` holds, adjacent ones with the same values merged, so a bad range
/// is one line, not thousands: `(start, len, a, b)`.
pub(super) fn pieces_where(
    a: &Runs,
    b: &Runs,
    f: impl Fn(u64, u64) -> bool,
) -> Vec<(u64, u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64, u64)> = Vec::new();
    zip_runs(a, b, |s, l, va, vb| {
        if !f(va, vb) {
            return;
        }
        match out.last_mut() {
            Some(p) if p.0 + p.1 == s && p.2 == va && p.3 == vb => p.1 += l,
            _ => out.push((s, l, va, vb)),
        }
    });
    out
}

/// Blocks `[0, pool_blocks)` covered by neither `used` nor `free`, as `(start, len)`.
pub(super) fn unaccounted(used: &Runs, free: &Runs, pool_blocks: u64) -> Vec<(u64, u64)> {
    let everything: Runs = if pool_blocks > 0 {
        vec![(0, pool_blocks, 1)]
    } else {
        Vec::new()
    };
    let accounted = coverage(
        used.iter()
            .chain(free.iter())
            .map(|&(s, l, _)| (s, l))
            .collect(),
    );
    pieces_where(&everything, &accounted, |all, acc| all == 1 && acc == 0)
        .into_iter()
        .map(|(s, l, _, _)| (s, l))
        .collect()
}

/// The value of `runs` at `block`.
pub(super) fn value_at(runs: &Runs, block: u64) -> u64 {
    match runs.binary_search_by(|r| {
        if r.0 + r.1 <= block {
            std::cmp::Ordering::Less
        } else if r.0 > block {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }) {
        Ok(i) => runs[i].2,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_counts_overlaps() {
        let c = coverage(vec![(0, 10), (5, 10), (20, 2)]);
        assert_eq!(c, vec![(0, 5, 1), (5, 5, 2), (10, 5, 1), (20, 2, 1)]);
    }

    #[test]
    fn zip_runs_reports_differences() {
        let a: Runs = vec![(0, 10, 2)];
        let b: Runs = vec![(0, 5, 2), (5, 5, 3)];
        let mut diffs = Vec::new();
        zip_runs(&a, &b, |s, l, x, y| {
            if x != y {
                diffs.push((s, l, x, y))
            }
        });
        assert_eq!(diffs, vec![(5, 5, 2, 3)]);
    }

    #[test]
    fn pieces_merge_and_gaps_are_found() {
        let a: Runs = vec![(0, 4, 1), (4, 4, 1), (10, 2, 1)];
        let b: Runs = vec![(2, 4, 1)];
        assert_eq!(
            pieces_where(&a, &b, |x, y| x == 1 && y == 0),
            vec![(0, 2, 1, 0), (6, 2, 1, 0), (10, 2, 1, 0)]
        );
        assert_eq!(unaccounted(&a, &b, 14), vec![(8, 2), (12, 2)]);
        assert_eq!(value_at(&a, 5), 1);
        assert_eq!(value_at(&a, 9), 0);
    }
}
