//! The read-only consistency check of a store (fsck is built on it): walks the last commit
//! through the metadata seam (`Inner::read_committed`, the same typed tables every operation
//! uses) and verifies every invariant of the format, one pass per family of invariants. It never
//! writes. It holds one small record per inode, link counts per inode, and one reference per
//! extent (for the refcount and free-space passes); every table is streamed.

use super::runs::{coverage, pieces_where, unaccounted, value_at, Runs};
use crate::codec::{
    decode, DirentRecord, ExtentRecord, FreeRecord, ImageRecord, InodeRecord, LowerFileRecord,
    RefcountRecord, StateRecord,
};
use crate::error::{Error, Result};
use crate::store::ctx::Ctx;
use crate::store::Store;
use crate::types::{BlockNo, BlockRun, FileKind, InodeNo, SpaceStats};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// What kind of inconsistency a [`Problem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// Progress of a long check: (phase name, items done, items expected).
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

impl Store {
    /// Check every invariant of the last committed state. Never writes.
    pub fn check(&self) -> Result<CheckReport> {
        self.check_with_progress(&mut |_, _, _| {})
    }

    pub fn check_with_progress(&self, progress: Progress<'_>) -> Result<CheckReport> {
        let lower_changes = self.lower_changes()?;
        let mut started = false;
        let checked = self.inner().read_committed(|cx| {
            started = true;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_commit(cx, progress)))
                .unwrap_or_else(|_| {
                    Err(Error::Corrupted(
                        "meta.redb: the B-tree is damaged (reading it failed internally)".into(),
                    ))
                })
        });
        let (mut report, lower_used) = match checked {
            Ok(r) => r,
            // The commit's state record is missing or does not decode: that is the finding.
            Err(Error::Corrupted(m)) if !started => (
                CheckReport {
                    problems: vec![Problem {
                        kind: ProblemKind::Corrupt,
                        ino: None,
                        blocks: None,
                        message: m,
                    }],
                    ..Default::default()
                },
                HashSet::new(),
            ),
            Err(e) => return Err(e),
        };
        // A lower file no extent maps any more (its file was deleted or fully rewritten in the
        // store) can change below as it likes.
        for (_, path, what) in lower_changes
            .into_iter()
            .filter(|(id, ..)| lower_used.contains(id))
        {
            report.problems.push(Problem {
                kind: ProblemKind::LowerChanged,
                ino: None,
                blocks: None,
                message: format!("lower file {path} changed since it was imported: {what}"),
            });
        }
        Ok(report)
    }

    /// Space accounting of the current (including uncommitted) state.
    pub fn stats(&self) -> Result<SpaceStats> {
        self.inner().read(|cx| cx.space_stats())
    }
}

/// The problems found so far, and where to report progress.
struct Checker<'p> {
    report: CheckReport,
    progress: Progress<'p>,
    /// Lower files some extent still maps (only those can have "changed" in a way that matters).
    lower_used: HashSet<u64>,
}

impl Checker<'_> {
    fn problem(
        &mut self,
        kind: ProblemKind,
        ino: Option<InodeNo>,
        blocks: Option<BlockRun>,
        message: String,
    ) {
        // A badly damaged store could yield millions of problems; the first ones tell the story.
        if self.report.problems.len() < 100_000 {
            self.report.problems.push(Problem {
                kind,
                ino: ino.map(InodeNo::get),
                blocks: blocks.map(|r| (r.start.0, r.len)),
                message,
            });
        }
    }
}

/// What the later passes need of an inode record.
struct InodeInfo {
    kind: FileKind,
    nlink: u32,
    size: u64,
    blocks: u64,
    parent: InodeNo,
}

/// The inode table as the inode pass found it.
struct Inodes {
    /// Records that decode.
    info: HashMap<InodeNo, InodeInfo>,
    /// Inode numbers whose record is there but does not decode.
    damaged: HashSet<InodeNo>,
}

impl Inodes {
    fn is_dir(&self, ino: InodeNo) -> bool {
        self.info
            .get(&ino)
            .is_some_and(|i| i.kind == FileKind::Directory)
    }

    /// Whether `ino`'s link count counts the entries naming it (directories: their
    /// subdirectories too), the root's aside.
    fn expected_links(&self, ino: InodeNo, links: &Links) -> Option<(u32, u32)> {
        let i = self.info.get(&ino)?;
        let found = links.names.get(&ino).copied().unwrap_or(0);
        let expected = if i.kind == FileKind::Directory {
            if found == 0 && ino != InodeNo::ROOT {
                0
            } else {
                2 + links.subdirs.get(&ino).copied().unwrap_or(0)
            }
        } else {
            found
        };
        Some((found, expected))
    }

    /// An inode with no links or no names: it must be on the orphan list.
    fn unlinked(&self, ino: InodeNo, links: &Links) -> bool {
        let found = links.names.get(&ino).copied().unwrap_or(0);
        self.info
            .get(&ino)
            .is_some_and(|i| i.nlink == 0 || (found == 0 && ino != InodeNo::ROOT))
    }
}

/// What the directory entries say about the namespace.
#[derive(Default)]
struct Links {
    /// Entries naming each inode.
    names: HashMap<InodeNo, u32>,
    /// Subdirectory entries of each directory.
    subdirs: HashMap<InodeNo, u32>,
    /// Each directory's subdirectories (with a readable record).
    children: HashMap<InodeNo, Vec<InodeNo>>,
}

/// Every pass in order, over one commit.
fn check_commit(cx: &Ctx<'_>, progress: Progress<'_>) -> Result<(CheckReport, HashSet<u64>)> {
    let mut c = Checker {
        report: CheckReport::default(),
        progress,
        lower_used: HashSet::new(),
    };
    let state = check_state(cx, &mut c);
    let inodes = check_inodes(cx, &mut c, &state)?;
    let links = check_dirents(cx, &mut c, &inodes)?;
    let orphans = orphan_list(cx)?;
    check_connectivity(cx, &mut c, &inodes, &links, &orphans)?;
    check_link_counts(&mut c, &inodes, &links);
    check_orphans(&mut c, &inodes, &links, &orphans);
    let lower_ids = check_lower_files(cx, &mut c)?;
    let refs = check_extents(cx, &mut c, &inodes, &lower_ids, &state)?;
    (c.progress)("refcounts", 0, 1);
    let cover = coverage(refs);
    check_refcounts(cx, &mut c, &cover)?;
    (c.progress)("free space", 0, 1);
    check_free_space(cx, &mut c, &cover, state.pool_blocks)?;
    check_images(cx, &mut c, &cover, &state)?;
    (c.progress)("done", 1, 1);
    Ok((c.report, c.lower_used))
}

/// The state record (`read_committed` decoded it; a damaged one never gets here).
fn check_state(cx: &Ctx<'_>, c: &mut Checker<'_>) -> StateRecord {
    c.report.generation = cx.mem.state.generation;
    cx.mem.state
}

/// Inode records: they decode, their numbers are below `next_ino`, the state counts them all,
/// the root is a directory.
fn check_inodes(cx: &Ctx<'_>, c: &mut Checker<'_>, state: &StateRecord) -> Result<Inodes> {
    let mut inodes = Inodes {
        info: HashMap::new(),
        damaged: HashSet::new(),
    };
    let mut records = 0u64;
    for item in cx.inodes.iter()? {
        let (ino, v) = item?;
        if records % 4096 == 0 {
            (c.progress)("inodes", records, state.inodes);
        }
        records += 1;
        match decode::<InodeRecord>(&v, &ino) {
            Ok(r) => {
                if ino >= state.next_ino {
                    c.problem(
                        ProblemKind::State,
                        Some(ino),
                        None,
                        format!("inode number not below next_ino {}", state.next_ino.0),
                    );
                }
                inodes.info.insert(
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
            Err(e) => {
                inodes.damaged.insert(ino);
                c.problem(ProblemKind::Corrupt, Some(ino), None, e.to_string());
            }
        }
    }
    c.report.inodes = inodes.info.len() as u64;
    c.report.directories = inodes
        .info
        .values()
        .filter(|i| i.kind == FileKind::Directory)
        .count() as u64;
    if state.inodes != records {
        c.problem(
            ProblemKind::State,
            None,
            None,
            format!(
                "state counts {} inodes, table holds {records}",
                state.inodes
            ),
        );
    }
    match inodes.info.get(&InodeNo::ROOT) {
        Some(r) if r.kind == FileKind::Directory => {}
        Some(_) => c.problem(
            ProblemKind::Corrupt,
            Some(InodeNo::ROOT),
            None,
            "root inode is not a directory".into(),
        ),
        None => c.problem(
            ProblemKind::Corrupt,
            Some(InodeNo::ROOT),
            None,
            "root inode missing".into(),
        ),
    }
    Ok(inodes)
}

/// Directory entries and their readdir cookies: each entry decodes, sits in a directory, names
/// an existing inode of its kind, and has the cookie that names it; no cookie names nothing.
/// Counts the links the later passes compare.
fn check_dirents(cx: &Ctx<'_>, c: &mut Checker<'_>, inodes: &Inodes) -> Result<Links> {
    let mut links = Links::default();
    let mut cookies_seen = 0u64;
    for item in cx.dirents.iter()? {
        let ((parent, name), v) = item?;
        let shown = String::from_utf8_lossy(&name).into_owned();
        let d = match decode::<DirentRecord>(&v, &(parent, &shown)) {
            Ok(d) => d,
            Err(e) => {
                c.problem(ProblemKind::Corrupt, Some(parent), None, e.to_string());
                continue;
            }
        };
        if inodes.damaged.contains(&parent) {
            c.problem(
                ProblemKind::DanglingDirent,
                Some(parent),
                None,
                format!(
                    "entry {shown:?} is in inode {parent}, whose record does not decode",
                    parent = parent.0
                ),
            );
        } else if !inodes.is_dir(parent) {
            c.problem(
                ProblemKind::DanglingDirent,
                Some(parent),
                None,
                format!("entry {shown:?} is in a missing or non-directory inode"),
            );
        }
        match cx.cookies.get((parent, d.cookie))? {
            Some(n) if n == name => cookies_seen += 1,
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
        match inodes.info.get(&d.ino) {
            None if inodes.damaged.contains(&d.ino) => {
                // The entry is real even if its inode is unreadable: it still counts, so the
                // parent's link count is judged by what the entries say.
                c.problem(
                    ProblemKind::DanglingDirent,
                    Some(parent),
                    None,
                    format!(
                        "entry {shown:?} names inode {}, whose record does not decode",
                        d.ino.0
                    ),
                );
                *links.names.entry(d.ino).or_default() += 1;
                if d.kind == FileKind::Directory {
                    *links.subdirs.entry(parent).or_default() += 1;
                }
                continue;
            }
            None => {
                c.problem(
                    ProblemKind::DanglingDirent,
                    Some(parent),
                    None,
                    format!("entry {shown:?} names missing inode {}", d.ino.0),
                );
                continue;
            }
            Some(t) if t.kind != d.kind => c.problem(
                ProblemKind::DanglingDirent,
                Some(parent),
                None,
                format!(
                    "entry {shown:?} says {:?}, inode {} is {:?}",
                    d.kind, d.ino.0, t.kind
                ),
            ),
            Some(t) if t.kind == FileKind::Directory && t.parent != parent => c.problem(
                ProblemKind::LinkCount,
                Some(d.ino),
                None,
                format!(
                    "directory is entry {shown:?} of {parent} but its parent says {}",
                    t.parent.0,
                    parent = parent.0
                ),
            ),
            _ => {}
        }
        *links.names.entry(d.ino).or_default() += 1;
        if d.kind == FileKind::Directory {
            *links.subdirs.entry(parent).or_default() += 1;
            links.children.entry(parent).or_default().push(d.ino);
        }
    }
    let cookie_total = cx.cookies.len()?;
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
    Ok(links)
}

/// The orphan list (inodes unlinked while open).
fn orphan_list(cx: &Ctx<'_>) -> Result<HashSet<InodeNo>> {
    let mut orphans = HashSet::new();
    for item in cx.orphans.iter()? {
        orphans.insert(item?.0);
    }
    Ok(orphans)
}

/// Reachability from the root: directories form a tree, and every linked inode that is not an
/// orphan has an entry in a reachable directory.
fn check_connectivity(
    cx: &Ctx<'_>,
    c: &mut Checker<'_>,
    inodes: &Inodes,
    links: &Links,
    orphans: &HashSet<InodeNo>,
) -> Result<()> {
    let mut reachable: HashSet<InodeNo> = HashSet::new();
    // An orphan directory is the root of a detached tree (a snapshot being built, a tree
    // being removed: ns::rmtree), whose entries count as reachable.
    let mut stack = vec![InodeNo::ROOT];
    let mut detached: Vec<InodeNo> = orphans
        .iter()
        .copied()
        .filter(|&o| inodes.is_dir(o))
        .collect();
    detached.sort_unstable();
    stack.extend(detached);
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
        if let Some(kids) = links.children.get(&d) {
            stack.extend(kids.iter().copied());
        }
    }
    let mut named_in_reachable: HashSet<InodeNo> = HashSet::new();
    for item in cx.dirents.iter()? {
        let ((parent, _), v) = item?;
        if reachable.contains(&parent) {
            if let Ok(d) = decode::<DirentRecord>(&v, &parent) {
                named_in_reachable.insert(d.ino);
            }
        }
    }
    let mut inos: Vec<InodeNo> = inodes.info.keys().copied().collect();
    inos.sort_unstable();
    for ino in inos {
        if ino != InodeNo::ROOT
            && !inodes.unlinked(ino, links)
            && !orphans.contains(&ino)
            && !named_in_reachable.contains(&ino)
        {
            c.problem(
                ProblemKind::Disconnected,
                Some(ino),
                None,
                "not reachable from the root directory".into(),
            );
        }
    }
    Ok(())
}

/// Link counts: files count their entries, directories 2 plus their subdirectories.
fn check_link_counts(c: &mut Checker<'_>, inodes: &Inodes, links: &Links) {
    let mut inos: Vec<InodeNo> = inodes.info.keys().copied().collect();
    inos.sort_unstable();
    for ino in inos {
        let (Some(i), Some((_, expected))) =
            (inodes.info.get(&ino), inodes.expected_links(ino, links))
        else {
            continue;
        };
        if i.nlink != expected {
            c.problem(
                ProblemKind::LinkCount,
                Some(ino),
                None,
                format!("link count {} but {expected} found", i.nlink),
            );
        }
    }
}

/// The orphan list holds exactly the inodes with no links, and only inodes that exist.
fn check_orphans(c: &mut Checker<'_>, inodes: &Inodes, links: &Links, orphans: &HashSet<InodeNo>) {
    let mut inos: Vec<InodeNo> = inodes.info.keys().copied().collect();
    inos.sort_unstable();
    for ino in inos {
        let Some(i) = inodes.info.get(&ino) else {
            continue;
        };
        if inodes.unlinked(ino, links) {
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
        }
    }
    let mut listed: Vec<InodeNo> = orphans.iter().copied().collect();
    listed.sort_unstable();
    for o in listed {
        if !inodes.info.contains_key(&o) && !inodes.damaged.contains(&o) {
            c.problem(
                ProblemKind::Orphan,
                Some(o),
                None,
                "orphan list names a missing inode".into(),
            );
        }
    }
}

/// Lower files of the overlay: their records decode. Returns the known lower file ids.
fn check_lower_files(cx: &Ctx<'_>, c: &mut Checker<'_>) -> Result<HashSet<u64>> {
    let mut lower_ids = HashSet::new();
    for item in cx.lower_files.iter()? {
        let (id, v) = item?;
        match decode::<LowerFileRecord>(&v, &id) {
            Ok(_) => {
                lower_ids.insert(id);
            }
            Err(e) => c.problem(ProblemKind::Corrupt, None, None, e.to_string()),
        }
    }
    Ok(lower_ids)
}

/// Extents: of regular files only, non-empty, inside the file and the pool (or a known lower
/// file), not overlapping within a file; per-inode block counters. Returns every pool reference.
fn check_extents(
    cx: &Ctx<'_>,
    c: &mut Checker<'_>,
    inodes: &Inodes,
    lower_ids: &HashSet<u64>,
    state: &StateRecord,
) -> Result<Vec<BlockRun>> {
    let bs = cx.bs;
    // Progress in blocks: the inodes' block counters say how many to expect.
    let expected_blocks: u64 = inodes.info.values().map(|i| i.blocks).sum();
    let mut blocks_seen = 0u64;
    let mut refs: Vec<BlockRun> = Vec::new();
    let mut per_inode_blocks: HashMap<InodeNo, u64> = HashMap::new();
    let mut last: Option<(InodeNo, u64)> = None; // (ino, end block)
    for (n, item) in cx.extents.iter()?.enumerate() {
        if n % 16384 == 0 {
            (c.progress)("extents", blocks_seen, expected_blocks);
        }
        let ((ino, fb), v) = item?;
        let e = match decode::<ExtentRecord>(&v, &(ino, fb)) {
            Ok(e) => e,
            Err(err) => {
                c.problem(ProblemKind::Corrupt, Some(ino), None, err.to_string());
                continue;
            }
        };
        c.report.extents += 1;
        blocks_seen = blocks_seen.saturating_add(e.len);
        if e.len == 0 {
            c.problem(
                ProblemKind::ExtentBounds,
                Some(ino),
                Some(e.pool_run()),
                format!("empty extent at file block {fb}"),
            );
            continue;
        }
        match inodes.info.get(&ino) {
            Some(i) if i.kind == FileKind::Regular => {
                let max_blocks = i.size.div_ceil(bs);
                if fb + e.len > max_blocks {
                    c.problem(
                        ProblemKind::ExtentBounds,
                        Some(ino),
                        Some(e.pool_run()),
                        format!("extent at file block {fb} (+{}) is past the end of the file ({} bytes)", e.len, i.size),
                    );
                }
            }
            None if inodes.damaged.contains(&ino) => c.problem(
                ProblemKind::ExtentBounds,
                Some(ino),
                Some(e.pool_run()),
                "extent of an inode whose record does not decode".into(),
            ),
            _ => c.problem(
                ProblemKind::ExtentBounds,
                Some(ino),
                Some(e.pool_run()),
                "extent of a missing or non-regular inode".into(),
            ),
        }
        if let Some((pino, pend)) = last {
            if pino == ino && fb < pend {
                c.problem(
                    ProblemKind::ExtentBounds,
                    Some(ino),
                    Some(e.pool_run()),
                    format!("extent at file block {fb} overlaps the previous one"),
                );
            }
        }
        last = Some((ino, fb + e.len));
        if e.lower != 0 {
            c.lower_used.insert(e.lower);
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
                Some(e.pool_run()),
                format!(
                    "extent at file block {fb} lies outside the pool ({} blocks)",
                    state.pool_blocks
                ),
            );
            continue;
        }
        *per_inode_blocks.entry(ino).or_default() += e.len;
        refs.push(e.pool_run());
    }
    let mut inos: Vec<InodeNo> = inodes.info.keys().copied().collect();
    inos.sort_unstable();
    for ino in inos {
        let Some(i) = inodes.info.get(&ino) else {
            continue;
        };
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
    Ok(refs)
}

/// Refcount records: well-formed, not overlapping, and equal to the references found (blocks
/// referenced once have none).
fn check_refcounts(cx: &Ctx<'_>, c: &mut Checker<'_>, cover: &Runs) -> Result<()> {
    let mut recorded: Runs = Vec::new();
    for item in cx.refcounts.iter()? {
        let (start, v) = item?;
        match decode::<RefcountRecord>(&v, &start) {
            Ok(r) => {
                if r.count < 2 || r.len == 0 {
                    c.problem(
                        ProblemKind::Refcount,
                        None,
                        Some(BlockRun::new(start, r.len)),
                        format!(
                            "refcount record with count {} (records hold counts >= 2)",
                            r.count
                        ),
                    );
                }
                if let Some(&(p, _)) = recorded.last() {
                    if p.end() > start {
                        c.problem(
                            ProblemKind::Refcount,
                            None,
                            Some(BlockRun::new(start, r.len)),
                            "refcount records overlap".into(),
                        );
                        continue;
                    }
                }
                recorded.push((BlockRun::new(start, r.len), r.count));
            }
            Err(e) => c.problem(
                ProblemKind::Corrupt,
                None,
                Some(BlockRun::new(start, 0)),
                e.to_string(),
            ),
        }
    }
    let expected: Runs = cover.iter().filter(|r| r.1 >= 2).copied().collect();
    for (run, want, have) in pieces_where(&expected, &recorded, |want, have| want != have) {
        let refs_found = if want == 0 {
            value_at(cover, run.start)
        } else {
            want
        };
        if want >= 2 && have == 0 {
            c.problem(
                ProblemKind::DoubleReference,
                None,
                Some(run),
                format!("referenced {want} times without a refcount record"),
            );
        } else {
            c.problem(
                ProblemKind::Refcount,
                None,
                Some(run),
                format!("refcount {have} but {refs_found} references found"),
            );
        }
    }
    Ok(())
}

/// Free space is exactly the complement of the referenced blocks: runs inside the pool, not
/// overlapping each other or a reference, and no block left out (leaked).
/// Block images a commit carried (`ImagePlan::Images`; an open writes them back, so only the
/// last commit of a live store has any): each decodes, is one block of a referenced pool block,
/// and the state counts them.
fn check_images(
    cx: &Ctx<'_>,
    c: &mut Checker<'_>,
    cover: &Runs,
    state: &StateRecord,
) -> Result<()> {
    let mut n = 0u64;
    for item in cx.images.iter()? {
        let (b, v) = item?;
        n += 1;
        let at = Some(BlockRun::new(b, 1));
        match decode::<ImageRecord>(&v, &b) {
            Ok(r) if r.bytes.len() as u64 != cx.bs => c.problem(
                ProblemKind::Corrupt,
                None,
                at,
                format!("image of {} bytes, blocks are {}", r.bytes.len(), cx.bs),
            ),
            Ok(_) if value_at(cover, b) == 0 => c.problem(
                ProblemKind::State,
                None,
                at,
                "image of a block no file references".into(),
            ),
            Ok(_) => {}
            Err(e) => c.problem(ProblemKind::Corrupt, None, at, e.to_string()),
        }
    }
    if n != state.images {
        c.problem(
            ProblemKind::State,
            None,
            None,
            format!(
                "the state counts {} block images, the table holds {n}",
                state.images
            ),
        );
    }
    Ok(())
}

fn check_free_space(
    cx: &Ctx<'_>,
    c: &mut Checker<'_>,
    cover: &Runs,
    pool_blocks: u64,
) -> Result<()> {
    let mut free: Runs = Vec::new();
    for item in cx.free.iter()? {
        let (start, v) = item?;
        match decode::<FreeRecord>(&v, &start) {
            Ok(r) => {
                if let Some(&(p, _)) = free.last() {
                    if p.end() > start {
                        c.problem(
                            ProblemKind::FreeOverlap,
                            None,
                            Some(BlockRun::new(start, r.len)),
                            "free runs overlap".into(),
                        );
                        continue;
                    }
                }
                if start + r.len > BlockNo(pool_blocks) {
                    c.problem(
                        ProblemKind::FreeOverlap,
                        None,
                        Some(BlockRun::new(start, r.len)),
                        format!("free run past the pool's end ({pool_blocks} blocks)"),
                    );
                }
                free.push((BlockRun::new(start, r.len), 1));
            }
            Err(e) => c.problem(
                ProblemKind::Corrupt,
                None,
                Some(BlockRun::new(start, 0)),
                e.to_string(),
            ),
        }
    }
    let used: Runs = cover.iter().map(|&(r, _)| (r, 1)).collect();
    for (run, _, _) in pieces_where(&used, &free, |u, f| u == 1 && f == 1) {
        c.problem(
            ProblemKind::FreeOverlap,
            None,
            Some(run),
            "blocks are both free and referenced".into(),
        );
    }
    for run in unaccounted(&used, &free, pool_blocks) {
        c.problem(
            ProblemKind::LeakedBlock,
            None,
            Some(run),
            "blocks are neither free nor referenced".into(),
        );
    }
    Ok(())
}
