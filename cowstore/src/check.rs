//! The read-only consistency check of a store (fsck is built on it): walks the committed state and
//! verifies every invariant of the format. It never writes.

use serde::Serialize;

/// What kind of inconsistency a [`Problem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ProblemKind {
    /// A value or record that does not decode (checksum, version, layout).
    Corrupt,
    /// Superblock/state disagree (e.g. counters).
    State,
    /// An extent outside the pool, past the file's end, or overlapping another of the same file.
    ExtentBounds,
    /// A refcount record whose count differs from the references found.
    Refcount,
    /// A block referenced more than once without a refcount record.
    DoubleReference,
    /// A block neither free nor referenced.
    LeakedBlock,
    /// A block both free and referenced, or free twice.
    FreeOverlap,
    /// A directory entry naming a missing inode, or whose kind disagrees with the inode.
    DanglingDirent,
    /// An inode whose link count differs from the entries naming it.
    LinkCount,
    /// An inode with no links that is not on the orphan list, or an orphan that has links.
    Orphan,
    /// An inode not reachable from the root directory.
    Disconnected,
    /// The per-inode block counter differs from its extent map.
    BlockCount,
    /// readdir cookie index disagrees with the directory entries.
    Cookie,
    /// Overlay: a lower file changed since it was imported (reads of it fail with EIO).
    LowerChanged,
}

/// One inconsistency, precise enough to act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The inode concerned, if any.
    pub ino: Option<u64>,
    /// The pool block range concerned (first block, block count), if any.
    pub blocks: Option<(u64, u64)>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.kind)?;
        if let Some(ino) = self.ino {
            write!(f, " inode {ino}")?;
        }
        if let Some((s, n)) = self.blocks {
            write!(f, " blocks {s}..{}", s + n)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The outcome of [`crate::Store::check`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub problems: Vec<Problem>,
    pub inodes: u64,
    pub directories: u64,
    pub extents: u64,
    /// The commit generation that was checked.
    pub generation: u64,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

use crate::codec::LowerFileRecord;
use crate::codec::{
    decode, DirentRecord, ExtentRecord, FreeRecord, InodeRecord, RefcountRecord, StateRecord,
};
use crate::error::Result;
use crate::store::Store;
use crate::tables::{
    COOKIES, DIRENTS, EXTENTS, FREE, INODES, LOWER_FILES, ORPHANS, REFCOUNTS, STATE, STATE_KEY,
};
use crate::types::{FileKind, InodeNo, SpaceStats};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use std::collections::{HashMap, HashSet};

/// Progress of a long check: (phase name, items done, items expected).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

struct Checker {
    report: CheckReport,
    bs: u64,
}

impl Checker {
    fn problem(
        &mut self,
        kind: ProblemKind,
        ino: Option<u64>,
        blocks: Option<(u64, u64)>,
        message: String,
    ) {
        // A badly damaged store could yield millions of problems; the first ones tell the story.
        if self.report.problems.len() < 100_000 {
            self.report.problems.push(Problem {
                kind,
                ino,
                blocks,
                message,
            });
        }
    }
}

struct InodeInfo {
    kind: FileKind,
    nlink: u32,
    size: u64,
    blocks: u64,
    parent: u64,
}

/// A piecewise-constant function over block numbers, as sorted disjoint runs (start, len, value).
type Runs = Vec<(u64, u64, u64)>;

/// Turn possibly overlapping references (start, len) into runs with their reference counts.
pub(crate) fn coverage_of(refs: Vec<(u64, u64)>) -> Vec<(u64, u64, u64)> {
    coverage(refs)
}

fn coverage(mut refs: Vec<(u64, u64)>) -> Runs {
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
fn zip_runs(a: &Runs, b: &Runs, mut f: impl FnMut(u64, u64, u64, u64)) {
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

/// Merge adjacent pieces that report the same thing, so a bad range is one line, not thousands.
fn merge_pieces(pieces: Vec<(u64, u64, u64, u64)>) -> Vec<(u64, u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64, u64)> = Vec::new();
    for p in pieces {
        match out.last_mut() {
            Some(l) if l.0 + l.1 == p.0 && l.2 == p.2 && l.3 == p.3 => l.1 += p.1,
            _ => out.push(p),
        }
    }
    out
}

impl Store {
    /// Check every invariant of the last committed state. Never writes.
    pub fn check(&self) -> Result<CheckReport> {
        self.check_with_progress(&mut |_, _, _| {})
    }

    pub fn check_with_progress(&self, progress: Progress<'_>) -> Result<CheckReport> {
        let rtx = self.inner().db()?.begin_read()?;
        let bs = u64::from(self.block_size());
        let lower_changes = self.lower_changes()?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_txn(&rtx, bs, progress)
        }))
        .unwrap_or_else(|_| {
            Err(crate::error::Error::Corrupted(
                "meta.redb: the B-tree is damaged (reading it failed internally)".into(),
            ))
        })
        .map(|mut report| {
            for (path, what) in lower_changes {
                report.problems.push(Problem {
                    kind: ProblemKind::LowerChanged,
                    ino: None,
                    blocks: None,
                    message: format!("lower file {path} changed since it was imported: {what}"),
                });
            }
            report
        })
    }

    /// Space accounting of the current (including uncommitted) state.
    pub fn stats(&self) -> Result<SpaceStats> {
        let bs = u64::from(self.block_size());
        self.inner().read(|cx| {
            let mut free = 0u64;
            for item in cx.free.iter()? {
                let (k, v) = item?;
                free += decode::<FreeRecord>(&v, &k)?.len;
            }
            free += cx.mem.pending_free().total();
            let (mut shared, mut extra_refs) = (0u64, 0u64);
            for item in cx.refcounts.iter()? {
                let (k, v) = item?;
                let r = decode::<RefcountRecord>(&v, &k)?;
                shared += r.len;
                extra_refs += r.len * (r.count.saturating_sub(1));
            }
            let st = cx.mem.state;
            let referenced = st.pool_blocks.saturating_sub(free);
            Ok(SpaceStats {
                block_size: bs,
                referenced_bytes: referenced * bs,
                exclusive_bytes: referenced.saturating_sub(shared) * bs,
                shared_bytes: shared * bs,
                logical_bytes: (referenced + extra_refs) * bs,
                free_bytes: free * bs,
                pool_bytes: st.pool_blocks * bs,
                inodes: st.inodes,
                generation: st.generation,
            })
        })
    }
}

fn check_txn(rtx: &ReadTransaction, bs: u64, progress: Progress<'_>) -> Result<CheckReport> {
    let mut c = Checker {
        report: CheckReport::default(),
        bs,
    };
    let state_t = rtx.open_table(STATE)?;
    let state = match state_t.get(STATE_KEY)? {
        Some(v) => match decode::<StateRecord>(v.value(), &STATE_KEY) {
            Ok(s) => s,
            Err(e) => {
                c.problem(ProblemKind::Corrupt, None, None, e.to_string());
                return Ok(c.report);
            }
        },
        None => {
            c.problem(
                ProblemKind::Corrupt,
                None,
                None,
                "state record missing".into(),
            );
            return Ok(c.report);
        }
    };
    c.report.generation = state.generation;

    // Inodes.
    let inodes_t = rtx.open_table(INODES)?;
    let total_inodes = inodes_t.len()?;
    let mut inodes: HashMap<u64, InodeInfo> = HashMap::new();
    for (n, item) in inodes_t.iter()?.enumerate() {
        let (k, v) = item?;
        let ino = k.value();
        if n % 4096 == 0 {
            progress("inodes", n as u64, total_inodes);
        }
        match decode::<InodeRecord>(v.value(), &ino) {
            Ok(r) => {
                if ino >= state.next_ino {
                    c.problem(
                        ProblemKind::State,
                        Some(ino),
                        None,
                        format!("inode number not below next_ino {}", state.next_ino),
                    );
                }
                inodes.insert(
                    ino,
                    InodeInfo {
                        kind: r.kind,
                        nlink: r.nlink,
                        size: r.size,
                        blocks: r.blocks,
                        parent: r.parent,
                    },
                );
            }
            Err(e) => c.problem(ProblemKind::Corrupt, Some(ino), None, e.to_string()),
        }
    }
    c.report.inodes = inodes.len() as u64;
    c.report.directories = inodes
        .values()
        .filter(|i| i.kind == FileKind::Directory)
        .count() as u64;
    if state.inodes != total_inodes {
        c.problem(
            ProblemKind::State,
            None,
            None,
            format!(
                "state counts {} inodes, table holds {total_inodes}",
                state.inodes
            ),
        );
    }
    match inodes.get(&InodeNo::ROOT.0) {
        Some(r) if r.kind == FileKind::Directory => {}
        Some(_) => c.problem(
            ProblemKind::Corrupt,
            Some(1),
            None,
            "root inode is not a directory".into(),
        ),
        None => c.problem(
            ProblemKind::Corrupt,
            Some(1),
            None,
            "root inode missing".into(),
        ),
    }

    // Directory entries and their readdir cookies.
    let dirents_t = rtx.open_table(DIRENTS)?;
    let cookies_t = rtx.open_table(COOKIES)?;
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut cookies_seen = 0u64;
    for item in dirents_t.iter()? {
        let (k, v) = item?;
        let (parent, name) = k.value();
        let shown = String::from_utf8_lossy(name).into_owned();
        let d = match decode::<DirentRecord>(v.value(), &(parent, &shown)) {
            Ok(d) => d,
            Err(e) => {
                c.problem(ProblemKind::Corrupt, Some(parent), None, e.to_string());
                continue;
            }
        };
        match inodes.get(&parent) {
            Some(p) if p.kind == FileKind::Directory => {}
            _ => c.problem(
                ProblemKind::DanglingDirent,
                Some(parent),
                None,
                format!("entry {shown:?} is in a missing or non-directory inode"),
            ),
        }
        match cookies_t.get((parent, d.cookie))? {
            Some(n) if n.value() == name => cookies_seen += 1,
            _ => c.problem(
                ProblemKind::Cookie,
                Some(parent),
                None,
                format!(
                    "entry {shown:?}: readdir cookie {} does not name it",
                    d.cookie
                ),
            ),
        }
        match inodes.get(&d.ino) {
            None => {
                c.problem(
                    ProblemKind::DanglingDirent,
                    Some(parent),
                    None,
                    format!("entry {shown:?} names missing inode {}", d.ino),
                );
                continue;
            }
            Some(t) if t.kind != d.kind => c.problem(
                ProblemKind::DanglingDirent,
                Some(parent),
                None,
                format!(
                    "entry {shown:?} says {:?}, inode {} is {:?}",
                    d.kind, d.ino, t.kind
                ),
            ),
            Some(t) if t.kind == FileKind::Directory && t.parent != parent => c.problem(
                ProblemKind::LinkCount,
                Some(d.ino),
                None,
                format!(
                    "directory is entry {shown:?} of {parent} but its parent says {}",
                    t.parent
                ),
            ),
            _ => {}
        }
        *links.entry(d.ino).or_default() += 1;
        if d.kind == FileKind::Directory {
            *subdirs.entry(parent).or_default() += 1;
            children.entry(parent).or_default().push(d.ino);
        }
    }
    let cookie_total = cookies_t.len()?;
    if cookie_total != cookies_seen {
        c.problem(
            ProblemKind::Cookie,
            None,
            None,
            format!(
                "{} readdir cookies name no entry",
                cookie_total.saturating_sub(cookies_seen)
            ),
        );
    }

    // Reachability from the root (directories form a tree; files hang off reachable directories).
    let mut reachable: HashSet<u64> = HashSet::new();
    let mut stack = vec![InodeNo::ROOT.0];
    while let Some(d) = stack.pop() {
        if !reachable.insert(d) {
            c.problem(
                ProblemKind::Disconnected,
                Some(d),
                None,
                "directory reached twice (cycle or extra link)".into(),
            );
            continue;
        }
        if let Some(kids) = children.get(&d) {
            stack.extend(kids.iter().copied());
        }
    }
    let orphans_t = rtx.open_table(ORPHANS)?;
    let mut orphans: HashSet<u64> = HashSet::new();
    for item in orphans_t.iter()? {
        orphans.insert(item?.0.value());
    }
    let mut with_links_in_reachable: HashSet<u64> = HashSet::new();
    for item in dirents_t.iter()? {
        let (k, v) = item?;
        let (parent, _) = k.value();
        if reachable.contains(&parent) {
            if let Ok(d) = decode::<DirentRecord>(v.value(), &parent) {
                with_links_in_reachable.insert(d.ino);
            }
        }
    }
    let mut inos: Vec<u64> = inodes.keys().copied().collect();
    inos.sort_unstable();
    for ino in inos {
        let Some(i) = inodes.get(&ino) else { continue };
        let found = links.get(&ino).copied().unwrap_or(0);
        let expected = if i.kind == FileKind::Directory {
            if found == 0 && ino != InodeNo::ROOT.0 {
                0
            } else {
                2 + subdirs.get(&ino).copied().unwrap_or(0)
            }
        } else {
            found
        };
        if i.nlink != expected {
            c.problem(
                ProblemKind::LinkCount,
                Some(ino),
                None,
                format!("link count {} but {expected} found", i.nlink),
            );
        }
        if i.nlink == 0 || (found == 0 && ino != InodeNo::ROOT.0) {
            if !orphans.contains(&ino) {
                c.problem(
                    ProblemKind::Orphan,
                    Some(ino),
                    None,
                    "no links and not on the orphan list".into(),
                );
            }
        } else if orphans.contains(&ino) {
            c.problem(
                ProblemKind::Orphan,
                Some(ino),
                None,
                format!("on the orphan list with {} links", i.nlink),
            );
        } else if ino != InodeNo::ROOT.0 && !with_links_in_reachable.contains(&ino) {
            c.problem(
                ProblemKind::Disconnected,
                Some(ino),
                None,
                "not reachable from the root directory".into(),
            );
        }
    }
    for &o in &orphans {
        if !inodes.contains_key(&o) {
            c.problem(
                ProblemKind::Orphan,
                Some(o),
                None,
                "orphan list names a missing inode".into(),
            );
        }
    }

    // Lower files of the overlay.
    let mut lower_ids: HashSet<u64> = HashSet::new();
    for item in rtx.open_table(LOWER_FILES)?.iter()? {
        let (k, v) = item?;
        match decode::<LowerFileRecord>(v.value(), &k.value()) {
            Ok(_) => {
                lower_ids.insert(k.value());
            }
            Err(e) => c.problem(ProblemKind::Corrupt, None, None, e.to_string()),
        }
    }

    // Extents: bounds, overlap within a file, block counters; gather every reference.
    let extents_t = rtx.open_table(EXTENTS)?;
    let total_extents = extents_t.len()?;
    let mut refs: Vec<(u64, u64)> = Vec::with_capacity(total_extents as usize);
    let mut per_inode_blocks: HashMap<u64, u64> = HashMap::new();
    let mut last: Option<(u64, u64)> = None; // (ino, end block)
    for (n, item) in extents_t.iter()?.enumerate() {
        if n % 16384 == 0 {
            progress("extents", n as u64, total_extents);
        }
        let (k, v) = item?;
        let (ino, fb) = k.value();
        let e = match decode::<ExtentRecord>(v.value(), &(ino, fb)) {
            Ok(e) => e,
            Err(err) => {
                c.problem(ProblemKind::Corrupt, Some(ino), None, err.to_string());
                continue;
            }
        };
        c.report.extents += 1;
        if e.len == 0 {
            c.problem(
                ProblemKind::ExtentBounds,
                Some(ino),
                Some((e.phys, 0)),
                format!("empty extent at file block {fb}"),
            );
            continue;
        }
        match inodes.get(&ino) {
            Some(i) if i.kind == FileKind::Regular => {
                let max_blocks = i.size.div_ceil(c.bs);
                if fb + e.len > max_blocks {
                    c.problem(
                        ProblemKind::ExtentBounds,
                        Some(ino),
                        Some((e.phys, e.len)),
                        format!("extent at file block {fb} (+{}) is past the end of the file ({} bytes)", e.len, i.size),
                    );
                }
            }
            _ => c.problem(
                ProblemKind::ExtentBounds,
                Some(ino),
                Some((e.phys, e.len)),
                "extent of a missing or non-regular inode".into(),
            ),
        }
        if let Some((pino, pend)) = last {
            if pino == ino && fb < pend {
                c.problem(
                    ProblemKind::ExtentBounds,
                    Some(ino),
                    Some((e.phys, e.len)),
                    format!("extent at file block {fb} overlaps the previous one"),
                );
            }
        }
        last = Some((ino, fb + e.len));
        if e.lower != 0 {
            *per_inode_blocks.entry(ino).or_default() += e.len;
            // Lower extents point into the overlay's read-only lower files: no pool space, no
            // refcounts; the lower file must be known.
            if !lower_ids.contains(&e.lower) {
                c.problem(
                    ProblemKind::ExtentBounds,
                    Some(ino),
                    None,
                    format!(
                        "extent at file block {fb} names unknown lower file {}",
                        e.lower
                    ),
                );
            }
            continue;
        }
        if e.phys
            .checked_add(e.len)
            .is_none_or(|end| end > state.pool_blocks)
        {
            c.problem(
                ProblemKind::ExtentBounds,
                Some(ino),
                Some((e.phys, e.len)),
                format!(
                    "extent at file block {fb} lies outside the pool ({} blocks)",
                    state.pool_blocks
                ),
            );
            continue;
        }
        *per_inode_blocks.entry(ino).or_default() += e.len;
        refs.push((e.phys, e.len));
    }
    for (&ino, i) in &inodes {
        let found = per_inode_blocks.get(&ino).copied().unwrap_or(0);
        if i.kind == FileKind::Regular && i.blocks != found {
            c.problem(
                ProblemKind::BlockCount,
                Some(ino),
                None,
                format!("block counter {} but extents hold {found}", i.blocks),
            );
        }
    }

    // Refcounts against the references found.
    progress("refcounts", 0, 1);
    let cover = coverage(refs);
    let refcounts_t = rtx.open_table(REFCOUNTS)?;
    let mut recorded: Runs = Vec::new();
    for item in refcounts_t.iter()? {
        let (k, v) = item?;
        let start = k.value();
        match decode::<RefcountRecord>(v.value(), &start) {
            Ok(r) => {
                if r.count < 2 || r.len == 0 {
                    c.problem(
                        ProblemKind::Refcount,
                        None,
                        Some((start, r.len)),
                        format!(
                            "refcount record with count {} (records hold counts >= 2)",
                            r.count
                        ),
                    );
                }
                if let Some(&(ps, pl, _)) = recorded.last() {
                    if ps + pl > start {
                        c.problem(
                            ProblemKind::Refcount,
                            None,
                            Some((start, r.len)),
                            "refcount records overlap".into(),
                        );
                        continue;
                    }
                }
                recorded.push((start, r.len, r.count));
            }
            Err(e) => c.problem(ProblemKind::Corrupt, None, Some((start, 0)), e.to_string()),
        }
    }
    let expected: Runs = cover.iter().filter(|r| r.2 >= 2).copied().collect();
    let mut pieces = Vec::new();
    zip_runs(&expected, &recorded, |s, l, want, have| {
        if want != have {
            pieces.push((s, l, want, have));
        }
    });
    for (s, l, want, have) in merge_pieces(pieces) {
        let refs_found = if want == 0 { cover_at(&cover, s) } else { want };
        if want >= 2 && have == 0 {
            c.problem(
                ProblemKind::DoubleReference,
                None,
                Some((s, l)),
                format!("referenced {want} times without a refcount record"),
            );
        } else {
            c.problem(
                ProblemKind::Refcount,
                None,
                Some((s, l)),
                format!("refcount {have} but {refs_found} references found"),
            );
        }
    }

    // Free space must be exactly the complement of the referenced blocks.
    progress("free space", 0, 1);
    let free_t = rtx.open_table(FREE)?;
    let mut free: Runs = Vec::new();
    for item in free_t.iter()? {
        let (k, v) = item?;
        let start = k.value();
        match decode::<FreeRecord>(v.value(), &start) {
            Ok(r) => {
                if let Some(&(ps, pl, _)) = free.last() {
                    if ps + pl > start {
                        c.problem(
                            ProblemKind::FreeOverlap,
                            None,
                            Some((start, r.len)),
                            "free runs overlap".into(),
                        );
                        continue;
                    }
                }
                if start + r.len > state.pool_blocks {
                    c.problem(
                        ProblemKind::FreeOverlap,
                        None,
                        Some((start, r.len)),
                        format!(
                            "free run past the pool's end ({} blocks)",
                            state.pool_blocks
                        ),
                    );
                }
                free.push((start, r.len, 1));
            }
            Err(e) => c.problem(ProblemKind::Corrupt, None, Some((start, 0)), e.to_string()),
        }
    }
    let used: Runs = cover.iter().map(|&(s, l, _)| (s, l, 1)).collect();
    let mut pieces = Vec::new();
    zip_runs(&used, &free, |s, l, u, f| {
        if u == 1 && f == 1 {
            pieces.push((s, l, 1, 1));
        }
    });
    for (s, l, _, _) in merge_pieces(pieces) {
        c.problem(
            ProblemKind::FreeOverlap,
            None,
            Some((s, l)),
            "blocks are both free and referenced".into(),
        );
    }
    let everything: Runs = if state.pool_blocks > 0 {
        vec![(0, state.pool_blocks, 1)]
    } else {
        Vec::new()
    };
    let mut accounted = used;
    accounted.extend(free.iter().copied());
    accounted.sort_unstable();
    let accounted = coverage(accounted.into_iter().map(|(s, l, _)| (s, l)).collect());
    let mut pieces = Vec::new();
    zip_runs(&everything, &accounted, |s, l, all, acc| {
        if all == 1 && acc == 0 {
            pieces.push((s, l, 1, 0));
        }
    });
    for (s, l, _, _) in merge_pieces(pieces) {
        c.problem(
            ProblemKind::LeakedBlock,
            None,
            Some((s, l)),
            "blocks are neither free nor referenced".into(),
        );
    }
    progress("done", 1, 1);
    Ok(c.report)
}

fn cover_at(cover: &Runs, block: u64) -> u64 {
    match cover.binary_search_by(|r| {
        if r.0 + r.1 <= block {
            std::cmp::Ordering::Less
        } else if r.0 > block {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }) {
        Ok(i) => cover[i].2,
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
}
