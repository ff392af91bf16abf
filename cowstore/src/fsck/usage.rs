//! Where space goes: per-file extent maps with their refcounts, and per-file/per-tree usage split
//! into exclusive and shared bytes (what `cowfs inspect` and `cowfs du` show). The reports of
//! the tools (`Store::du_report`, `Store::inode_report`, `Store::committed_summary`,
//! `Store::committed_paths_of`) read the last committed state through one snapshot, without the
//! store's state lock: the same functions answer for an unmounted store and, through a mount's
//! daemon, for a live one.

use crate::codec::{decode, FreeRecord, InodeRecord, RefcountRecord};
use crate::error::{Error, Result};
use crate::store::ctx::Ctx;
use crate::store::Store;
use crate::types::{BlockRun, DirEntry, FileKind, InodeAttr, InodeNo, SpaceStats};
use serde::{Deserialize, Serialize};

/// One piece of a file's extent map with a single refcount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentInfo {
    pub file_offset: u64,
    pub pool_offset: u64,
    pub len: u64,
    /// How many references the pool blocks have (1 = exclusive to this file; 0 for lower data).
    pub refcount: u64,
    /// Overlay: the lower file this piece reads from (0: the pool); `pool_offset` is then the
    /// offset in that lower file.
    pub lower_file: u64,
}

/// Space used by a file or a set of files, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Bytes of pool blocks referenced (shared ones counted in full).
    pub total: u64,
    /// Bytes referenced only once in the whole store.
    pub exclusive: u64,
    /// Bytes referenced more than once.
    pub shared: u64,
    /// For a set of files: the shared blocks counted once (btrfs "set shared").
    pub set_shared: u64,
}

/// A whole-store summary (`cowfs inspect` without a path).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub format_version: u32,
    pub block_size: u32,
    pub store_id: String,
    pub generation: u64,
    pub inodes: u64,
    pub extents: u64,
    pub pool_bytes: u64,
    pub referenced_bytes: u64,
    pub exclusive_bytes: u64,
    pub shared_bytes: u64,
    pub free_bytes: u64,
    /// Number of runs of free blocks below the pool's end.
    pub free_runs: u64,
    /// Regular files with at least one extent, and their average extents per file.
    pub files_with_data: u64,
    pub avg_extents_per_file: f64,
    /// Bytes the pool file takes on the host (sparse: freed blocks are punched out).
    pub pool_host_bytes: Option<u64>,
}

/// Where a report starts: a path from the store's root ("/" or "" is the root; no symlinks are
/// followed), or an inode number (what `stat` shows as st_ino inside a mount).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum At {
    Path(String),
    Inode(u64),
}

/// One line of `cowfs du`: a file or directory and the space it uses. `path` is relative to
/// where the report started ("" for that place itself, "/name/..." below it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DuRow {
    pub path: String,
    pub total: u64,
    pub exclusive: u64,
    /// Only for directories: shared blocks counted once.
    pub set_shared: Option<u64>,
}

/// One inode and its extent map (`cowfs inspect PATH`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeReport {
    pub ino: u64,
    pub kind: String,
    /// Octal, file type bits included.
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub allocated: u64,
    /// Regular files only (empty for others).
    pub extents: Vec<ExtentInfo>,
}

/// Iterator over a directory's entries (see [`Store::entries`]).
pub struct Entries<'a> {
    store: &'a Store,
    dir: InodeNo,
    cookie: u64,
    batch: std::collections::VecDeque<crate::types::DirEntry>,
    done: bool,
}

impl Iterator for Entries<'_> {
    type Item = Result<crate::types::DirEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.batch.pop_front() {
                self.cookie = e.cookie;
                if e.name == b"." || e.name == b".." {
                    continue;
                }
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            match self.store.readdir(self.dir, self.cookie, 1024) {
                Ok(b) if b.is_empty() => self.done = true,
                Ok(b) => self.batch.extend(b),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Ctx<'_> {
    /// The inode a report starts at.
    fn report_start(&self, at: &At) -> Result<(InodeNo, InodeRecord)> {
        let mut ino = InodeNo::ROOT;
        match at {
            At::Inode(n) => ino = InodeNo(*n),
            At::Path(p) => {
                for comp in p.as_bytes().split(|&b| b == b'/').filter(|c| !c.is_empty()) {
                    ino = self.lookup(ino, comp)?;
                }
            }
        }
        Ok((ino, self.get_inode(ino)?))
    }

    /// The entries of a directory other than "." and "..".
    fn entries_of(&self, dir: InodeNo) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        let mut cookie = 0;
        loop {
            let batch = self.readdir(dir, cookie, u64::MAX, 1024)?;
            let Some(last) = batch.last() else {
                return Ok(out);
            };
            cookie = last.cookie;
            out.extend(
                batch
                    .into_iter()
                    .filter(|e| e.name != b"." && e.name != b".."),
            );
        }
    }

    /// Every regular file under `dir` (recursively).
    fn files_below(&self, dir: InodeNo) -> Result<Vec<InodeNo>> {
        let mut out = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in self.entries_of(d)? {
                match e.kind {
                    FileKind::Directory => stack.push(e.ino),
                    FileKind::Regular => out.push(e.ino),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// Rows for `ino` (and, unless summarizing, everything under it), children before parents.
    fn du_walk(
        &self,
        ino: InodeNo,
        kind: FileKind,
        path: String,
        summarize: bool,
        top: bool,
        rows: &mut Vec<DuRow>,
    ) -> Result<()> {
        if kind != FileKind::Directory {
            let u = usage_of(&[ino], |i| self.extent_infos(i))?;
            if !summarize || top {
                rows.push(DuRow {
                    path,
                    total: u.total,
                    exclusive: u.exclusive,
                    set_shared: None,
                });
            }
            return Ok(());
        }
        if !summarize {
            for e in self.entries_of(ino)? {
                let child = format!("{path}/{}", String::from_utf8_lossy(&e.name));
                self.du_walk(e.ino, e.kind, child, false, false, rows)?;
            }
        }
        let files = self.files_below(ino)?;
        let u = usage_of(&files, |i| self.extent_infos(i))?;
        rows.push(DuRow {
            path,
            total: u.total,
            exclusive: u.exclusive,
            set_shared: Some(u.set_shared),
        });
        Ok(())
    }

    /// Space accounting of the state this context reads.
    pub(crate) fn space_stats(&self) -> Result<SpaceStats> {
        let bs = self.bs;
        let mut free = 0u64;
        for item in self.free.iter()? {
            let (k, v) = item?;
            free += decode::<FreeRecord>(&v, &k)?.len;
        }
        free += self.mem.pending_free().total();
        let (mut shared, mut extra_refs) = (0u64, 0u64);
        for item in self.refcounts.iter()? {
            let (k, v) = item?;
            let r = decode::<RefcountRecord>(&v, &k)?;
            shared += r.len;
            extra_refs += r.len * (r.count.saturating_sub(1));
        }
        let st = self.mem.state;
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
    }

    /// Number of extents, of free runs, and of files with data.
    fn table_counts(&self) -> Result<(u64, u64, u64)> {
        let extents = self.extents.len()?;
        let mut free_runs = 0u64;
        for item in self.free.iter()? {
            let (k, v) = item?;
            decode::<FreeRecord>(&v, &k)?;
            free_runs += 1;
        }
        let mut files = 0u64;
        let mut last = None;
        for item in self.extents.iter()? {
            let (k, _) = item?;
            let ino = k.0;
            if last != Some(ino) {
                files += 1;
                last = Some(ino);
            }
        }
        Ok((extents, free_runs, files))
    }

    /// Refcount runs overlapping `run`, clipped, with implied count 1 filled in.
    fn refcount_pieces(&self, run: BlockRun) -> Result<Vec<(BlockRun, u64)>> {
        let (start, end) = (run.start, run.end());
        let mut recs = Vec::new();
        if let Some(item) = self.refcounts.range_rev(..start)?.next() {
            let (k, v) = item?;
            let r: RefcountRecord = decode(&v, &k)?;
            if k + r.len > start {
                recs.push((k, r));
            }
        }
        for item in self.refcounts.range(start..end)? {
            let (k, v) = item?;
            recs.push((k, decode::<RefcountRecord>(&v, &k)?));
        }
        let mut out = Vec::new();
        let mut pos = start;
        for (s, r) in recs {
            let a = s.max(start);
            let b = (s + r.len).min(end);
            if a > pos {
                out.push((BlockRun::between(pos, a), 1));
            }
            out.push((BlockRun::between(a, b), r.count));
            pos = b;
        }
        if pos < end {
            out.push((BlockRun::between(pos, end), 1));
        }
        Ok(out)
    }

    pub(crate) fn extent_infos(&self, ino: InodeNo) -> Result<Vec<ExtentInfo>> {
        let bs = self.bs;
        let mut out = Vec::new();
        for m in self.mappings(ino, 0, u64::MAX)? {
            if m.lower != 0 {
                out.push(ExtentInfo {
                    file_offset: m.fb * bs,
                    pool_offset: m.phys * bs,
                    len: m.len * bs,
                    refcount: 0,
                    lower_file: m.lower,
                });
                continue;
            }
            for (p, count) in self.refcount_pieces(m.pool_run())? {
                out.push(ExtentInfo {
                    file_offset: (m.fb + (p.start.0 - m.phys)) * bs,
                    pool_offset: p.start.pos(bs),
                    len: p.len * bs,
                    refcount: count,
                    lower_file: 0,
                });
            }
        }
        Ok(out)
    }
}

impl Store {
    /// Resolve a path inside the store ("/" or "" is the root; no symlinks are followed).
    pub fn resolve(&self, path: &[u8]) -> Result<InodeAttr> {
        let mut cur = self.getattr(InodeNo::ROOT)?;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            if cur.kind != FileKind::Directory {
                return Err(Error::NotDir);
            }
            cur = self.lookup(cur.ino, comp)?;
        }
        Ok(cur)
    }

    /// The extent map of a file, split where refcounts change.
    pub fn extents(&self, ino: InodeNo) -> Result<Vec<ExtentInfo>> {
        self.inner().read(|cx| {
            cx.get_inode(ino)?;
            cx.extent_infos(ino)
        })
    }

    /// Usage of a set of inodes (a file, or every file under a directory). Hard-linked files
    /// are counted once.
    pub fn usage(&self, inos: &[InodeNo]) -> Result<Usage> {
        usage_of(inos, |ino| self.extents(ino))
    }

    /// The entries of a directory other than "." and "..", fetched in batches.
    pub fn entries(&self, dir: InodeNo) -> Entries<'_> {
        Entries {
            store: self,
            dir,
            cookie: 0,
            batch: std::collections::VecDeque::new(),
            done: false,
        }
    }

    /// Every regular file under `dir` (recursively), for `du`.
    pub fn files_under(&self, dir: InodeNo) -> Result<Vec<InodeNo>> {
        let mut out = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in self.entries(d) {
                let e = e?;
                match e.kind {
                    FileKind::Directory => stack.push(e.ino),
                    FileKind::Regular => out.push(e.ino),
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// Paths (from the root) of the given inodes, found by walking the tree; inodes that are not
    /// reachable are absent. Stops as soon as all are found.
    pub fn paths_of(
        &self,
        wanted: &std::collections::HashSet<u64>,
    ) -> Result<std::collections::HashMap<u64, String>> {
        find_paths(wanted, |d| self.entries(d).collect())
    }

    /// A summary of the whole store (its current state, uncommitted changes included).
    pub fn summary(&self) -> Result<Summary> {
        let (st, counts) = self
            .inner()
            .read(|cx| Ok((cx.space_stats()?, cx.table_counts()?)))?;
        Ok(self.summary_from(st, counts))
    }

    /// [`Store::summary`] of the last committed state.
    pub fn committed_summary(&self) -> Result<Summary> {
        let (st, counts) = self
            .inner()
            .read_committed(|cx| Ok((cx.space_stats()?, cx.table_counts()?)))?;
        Ok(self.summary_from(st, counts))
    }

    fn summary_from(
        &self,
        st: SpaceStats,
        (extents, free_runs, files_with_data): (u64, u64, u64),
    ) -> Summary {
        let sb = self.superblock().clone();
        let pool_host_bytes = self.pool().raw_fd().and_then(|fd| {
            std::fs::metadata(format!("/proc/self/fd/{fd}"))
                .ok()
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.blocks() * 512
                })
        });
        Summary {
            format_version: sb.version as u32,
            block_size: sb.block_size,
            store_id: sb.id_hex(),
            generation: st.generation,
            inodes: st.inodes,
            extents,
            pool_bytes: st.pool_bytes,
            referenced_bytes: st.referenced_bytes,
            exclusive_bytes: st.exclusive_bytes,
            shared_bytes: st.shared_bytes,
            free_bytes: st.free_bytes,
            free_runs,
            files_with_data,
            avg_extents_per_file: if files_with_data > 0 {
                extents as f64 / files_with_data as f64
            } else {
                0.0
            },
            pool_host_bytes,
        }
    }

    /// `cowfs du` of the last committed state: rows for `at` (with paths relative to it) and,
    /// unless `summarize`, for everything under it, children before parents.
    pub fn du_report(&self, at: &At, summarize: bool) -> Result<Vec<DuRow>> {
        self.inner().read_committed(|cx| {
            let (ino, rec) = cx.report_start(at)?;
            let mut rows = Vec::new();
            cx.du_walk(ino, rec.kind, String::new(), summarize, true, &mut rows)?;
            Ok(rows)
        })
    }

    /// `cowfs inspect PATH` of the last committed state: the inode at `at` and its extent map.
    pub fn inode_report(&self, at: &At) -> Result<InodeReport> {
        let bs = self.inner().bs;
        self.inner().read_committed(|cx| {
            let (ino, rec) = cx.report_start(at)?;
            let extents = if rec.kind == FileKind::Regular {
                cx.extent_infos(ino)?
            } else {
                Vec::new()
            };
            Ok(InodeReport {
                ino: ino.0,
                kind: format!("{:?}", rec.kind),
                mode: format!("{:o}", rec.kind.mode_bits() | u32::from(rec.perm)),
                uid: rec.uid,
                gid: rec.gid,
                nlink: rec.nlink,
                size: rec.size,
                allocated: rec.blocks * bs,
                extents,
            })
        })
    }

    /// [`Store::paths_of`] in the last committed state (what fsck checked).
    pub fn committed_paths_of(
        &self,
        wanted: &std::collections::HashSet<u64>,
    ) -> Result<std::collections::HashMap<u64, String>> {
        self.inner()
            .read_committed(|cx| find_paths(wanted, |d| cx.entries_of(d)))
    }
}

/// Usage of a set of inodes whose extent maps `extents` gives; hard links counted once.
fn usage_of(
    inos: &[InodeNo],
    mut extents: impl FnMut(InodeNo) -> Result<Vec<ExtentInfo>>,
) -> Result<Usage> {
    let mut seen = std::collections::HashSet::new();
    let mut shared_ranges = Vec::new();
    let mut u = Usage::default();
    for &ino in inos {
        if !seen.insert(ino) {
            continue;
        }
        // Lower data takes no space in the store.
        for e in extents(ino)?.into_iter().filter(|e| e.lower_file == 0) {
            u.total += e.len;
            if e.refcount > 1 {
                u.shared += e.len;
                shared_ranges.push((e.pool_offset, e.len));
            } else {
                u.exclusive += e.len;
            }
        }
    }
    shared_ranges.sort_unstable();
    let mut end = 0u64;
    for (s, l) in shared_ranges {
        let a = s.max(end);
        if s + l > a {
            u.set_shared += s + l - a;
        }
        end = end.max(s + l);
    }
    Ok(u)
}

/// Paths (from the root) of the `wanted` inodes, walking the tree with `entries` (a directory's
/// entries); inodes that are not reachable are absent. Stops as soon as all are found.
fn find_paths(
    wanted: &std::collections::HashSet<u64>,
    mut entries: impl FnMut(InodeNo) -> Result<Vec<DirEntry>>,
) -> Result<std::collections::HashMap<u64, String>> {
    let mut found = std::collections::HashMap::new();
    if wanted.contains(&InodeNo::ROOT.0) {
        found.insert(InodeNo::ROOT.0, "/".to_string());
    }
    let mut stack = vec![(InodeNo::ROOT, String::new())];
    let mut visited = std::collections::HashSet::new();
    while let Some((d, path)) = stack.pop() {
        if found.len() == wanted.len() || !visited.insert(d) {
            continue;
        }
        for e in entries(d)? {
            let p = format!("{path}/{}", String::from_utf8_lossy(&e.name));
            if wanted.contains(&e.ino.0) {
                found.entry(e.ino.0).or_insert_with(|| p.clone());
            }
            if e.kind == FileKind::Directory {
                stack.push((e.ino, p));
            }
        }
    }
    Ok(found)
}
