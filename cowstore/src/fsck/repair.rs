//! fsck's repair: fixes what can be fixed without losing anything a read-only check can still
//! see, in one transaction, committed atomically. Namespace damage is fixed first (inodes whose
//! record is damaged or missing rebuilt from their extents, dangling entries, cookies, link
//! counts, disconnected inodes into /lost+found, unlinked inodes reclaimed), then extent maps are
//! trimmed to what is valid, and last the allocation metadata (refcounts and free space) is
//! corrected against the references the extent maps hold, through the space layer's own
//! functions.
//!
//! The rule throughout: blocks that any extent record points at stay referenced, whoever owns
//! it (an inode whose record does not decode, a missing one, a directory). Records that do not
//! decode are left as they are and reported; while an extent record does not decode, no block
//! is freed and no refcount lowered, since nobody can tell which blocks it names.

use super::runs::{coverage, pieces_where, unaccounted, value_at, Runs};
use crate::codec::{
    decode, encode, DirentRecord, ExtentRecord, FreeRecord, ImageRecord, InodeRecord,
    RefcountRecord,
};
use crate::error::{Error, Result};
use crate::ns::new_inode_record;
use crate::store::ctx::Ctx;
use crate::store::Store;
use crate::types::{BlockNo, BlockRun, Caller, FileKind, InodeNo};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub const LOST_FOUND: &[u8] = b"lost+found";

/// What a repair did, one line per action.
#[derive(Clone, Debug, Default)]
pub struct RepairSummary {
    pub actions: Vec<String>,
    /// Problems left alone (records that do not decode, and what they keep in place).
    pub unfixable: Vec<String>,
}

impl Store {
    /// Repair the store and commit. Call [`Store::check`] afterwards to confirm.
    pub fn repair(&self) -> Result<RepairSummary> {
        let mut sum = RepairSummary::default();
        self.inner().write(|cx| repair_txn(cx, &mut sum))?;
        self.commit()?;
        // Give the host back the space of whatever is free now.
        let bs = u64::from(self.block_size());
        let free: Vec<BlockRun> = self.inner().read(|cx| {
            let mut v = Vec::new();
            for item in cx.free.iter()? {
                let (k, val) = item?;
                v.push(BlockRun::new(k, decode::<FreeRecord>(&val, &k)?.len));
            }
            Ok(v)
        })?;
        for r in free {
            self.pool().punch(r.start.pos(bs), r.len * bs)?;
        }
        Ok(sum)
    }
}

/// A directory entry that decodes.
struct Entry {
    parent: InodeNo,
    name: Vec<u8>,
    d: DirentRecord,
}

impl Entry {
    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// The namespace as repair rebuilds it; inode records are written back at the end.
struct Ns {
    /// Records that decode, and those repair made.
    inodes: BTreeMap<InodeNo, InodeRecord>,
    /// Inodes whose record does not decode (with the decode error), left as they are.
    damaged: BTreeMap<InodeNo, String>,
    /// Inodes whose record repair remade from their extents.
    rebuilt: HashSet<InodeNo>,
    /// The entries that decode and stay.
    entries: Vec<Entry>,
    /// Inodes some entry named when repair began: never reclaimed as unlinked.
    named: HashSet<InodeNo>,
    /// Inodes reclaimed for having no links: their extents go with them.
    reclaimed: HashSet<InodeNo>,
    /// The highest inode number any inode or extent record uses: new inodes go above it.
    highest_ino: InodeNo,
}

/// Every extent record: its key, and the record if it decodes.
type Extents = Vec<((InodeNo, u64), Option<ExtentRecord>)>;

fn repair_txn(cx: &mut Ctx<'_>, sum: &mut RepairSummary) -> Result<()> {
    let mut ns = load_namespace(cx, sum)?;
    let extents = load_extents(cx, &mut ns)?;
    rebuild_inodes(cx, &mut ns, &extents, sum);
    repair_dirents(cx, &mut ns, sum)?;
    repair_cookies(cx, &mut ns, sum)?;
    repair_directory_names(cx, &mut ns, sum)?;
    reconnect(cx, &mut ns, sum)?;
    repair_link_counts(&mut ns, sum);
    repair_orphans(cx, &mut ns, sum)?;
    let (refs, unreadable) = repair_extents(cx, &mut ns, extents, sum)?;
    write_inodes(cx, &ns)?;
    let cover = coverage(refs);
    repair_refcounts(cx, &cover, unreadable, sum)?;
    repair_free_space(cx, &cover, unreadable, sum)?;
    // Allocation now follows the tables alone: forget the open transaction's block sets.
    cx.mem.clear_block_sets();
    repair_state(cx, &ns, sum);
    repair_images(cx, &cover, sum)?;
    cx.mem.dirty = true;
    Ok(())
}

/// Block images that are damaged (do not decode, are not one block, or name a block past the
/// pool's end or no file references): dropped. The state then counts those left.
fn repair_images(cx: &mut Ctx<'_>, cover: &Runs, sum: &mut RepairSummary) -> Result<()> {
    let mut bad = Vec::new();
    let mut good = 0u64;
    for item in cx.images.iter()? {
        let (b, v) = item?;
        let ok = decode::<ImageRecord>(&v, &b).is_ok_and(|r| r.bytes.len() as u64 == cx.bs)
            && b.0 < cx.mem.state.pool_blocks
            && value_at(cover, b) > 0;
        if ok {
            good += 1;
        } else {
            bad.push(b);
        }
    }
    for &b in &bad {
        cx.images.remove(b)?;
    }
    if !bad.is_empty() {
        sum.actions
            .push(format!("{} damaged block images dropped", bad.len()));
    }
    if cx.mem.state.images != good {
        sum.actions.push(format!(
            "block image count {} corrected to {good}",
            cx.mem.state.images
        ));
        cx.mem.state.images = good;
    }
    Ok(())
}

/// Inode records and directory entries, as far as they decode.
fn load_namespace(cx: &Ctx<'_>, sum: &mut RepairSummary) -> Result<Ns> {
    let mut ns = Ns {
        inodes: BTreeMap::new(),
        damaged: BTreeMap::new(),
        rebuilt: HashSet::new(),
        entries: Vec::new(),
        named: HashSet::new(),
        reclaimed: HashSet::new(),
        highest_ino: InodeNo::ROOT,
    };
    for item in cx.inodes.iter()? {
        let (ino, v) = item?;
        ns.highest_ino = ns.highest_ino.max(ino);
        match decode::<InodeRecord>(&v, &ino) {
            Ok(r) => {
                ns.inodes.insert(ino, r);
            }
            Err(e) => {
                ns.damaged.insert(ino, e.to_string());
            }
        }
    }
    if !ns.inodes.contains_key(&InodeNo::ROOT) {
        return Err(Error::corrupt(
            "the root inode is missing or unreadable; the store cannot be repaired",
        ));
    }
    for item in cx.dirents.iter()? {
        let ((parent, name), v) = item?;
        match decode::<DirentRecord>(&v, &(parent, String::from_utf8_lossy(&name))) {
            Ok(d) => {
                ns.named.insert(d.ino);
                ns.entries.push(Entry { parent, name, d });
            }
            Err(e) => sum
                .unfixable
                .push(format!("{e} (the entry is left as it is)")),
        }
    }
    Ok(ns)
}

/// Every extent record (the map is rewritten in place later).
fn load_extents(cx: &Ctx<'_>, ns: &mut Ns) -> Result<Extents> {
    let mut out = Vec::new();
    for item in cx.extents.iter()? {
        let (k, v) = item?;
        ns.highest_ino = ns.highest_ino.max(k.0);
        out.push((k, decode::<ExtentRecord>(&v, &k).ok()));
    }
    Ok(out)
}

/// An inode whose record is damaged or missing but whose extents exist is remade from them:
/// only regular files have extents, so a regular file of the size they cover, mode 0600, owned
/// by root, one link (`reconnect` links it as /lost+found/#ino). Not a damaged one that entries
/// sit under (a directory, then): it is left as it is and reported, like every damaged record
/// without extents.
fn rebuild_inodes(cx: &mut Ctx<'_>, ns: &mut Ns, extents: &Extents, sum: &mut RepairSummary) {
    let parents: HashSet<InodeNo> = ns.entries.iter().map(|e| e.parent).collect();
    // Per inode without a readable record: (readable extents, blocks, end in file blocks).
    let mut found: BTreeMap<InodeNo, (u64, u64, u64)> = BTreeMap::new();
    for ((ino, fb), rec) in extents {
        match rec {
            Some(e) if e.len > 0 && !ns.inodes.contains_key(ino) => {
                let f = found.entry(*ino).or_default();
                f.0 += 1;
                f.1 = f.1.saturating_add(e.len);
                f.2 = f.2.max(fb.saturating_add(e.len));
            }
            _ => {}
        }
    }
    for (&ino, &(count, blocks, end)) in &found {
        let damaged = ns.damaged.contains_key(&ino);
        if damaged && parents.contains(&ino) {
            continue;
        }
        let mut rec = new_inode_record(FileKind::Regular, 0o600, Caller::ROOT, 0, InodeNo::ROOT);
        rec.size = end.saturating_mul(cx.bs);
        rec.blocks = blocks;
        rec.generation = cx.mem.state.generation;
        sum.actions.push(format!(
            "inode {ino}: its record {}; rebuilt from its {count} extents as a regular file \
             of {} bytes (mode 0600, owner root)",
            if damaged {
                "does not decode"
            } else {
                "is missing"
            },
            rec.size,
            ino = ino.0
        ));
        ns.damaged.remove(&ino);
        ns.inodes.insert(ino, rec);
        ns.rebuilt.insert(ino);
    }
    for (ino, msg) in &ns.damaged {
        let why = if found.contains_key(ino) {
            "entries sit under it as well as extents, so it is no plain file"
        } else {
            "only a file's extents can rebuild a record, and it has none"
        };
        sum.unfixable.push(format!("{msg} (left as it is: {why})"));
    }
}

/// Directory entries: those in a missing or non-directory inode, and those naming a missing
/// inode, are removed; kinds follow the inode; an entry naming a rebuilt inode goes (the inode
/// is linked into /lost+found instead, its record being a guess). Entries in, or naming, an
/// inode whose record does not decode stay.
fn repair_dirents(cx: &mut Ctx<'_>, ns: &mut Ns, sum: &mut RepairSummary) -> Result<()> {
    for mut e in std::mem::take(&mut ns.entries) {
        let (parent, ino, shown) = (e.parent, e.d.ino, e.shown());
        let in_dir = ns.damaged.contains_key(&parent)
            || ns
                .inodes
                .get(&parent)
                .is_some_and(|p| p.kind == FileKind::Directory);
        let why = if !in_dir {
            format!("inode {parent} is not a directory", parent = parent.0)
        } else if ns.rebuilt.contains(&ino) {
            format!(
                "inode {ino} was rebuilt and goes to /lost+found/#{ino}",
                ino = ino.0
            )
        } else if !ns.inodes.contains_key(&ino) && !ns.damaged.contains_key(&ino) {
            format!("it names missing inode {ino}", ino = ino.0)
        } else {
            if let Some(t) = ns.inodes.get(&ino).filter(|t| t.kind != e.d.kind) {
                sum.actions.push(format!(
                    "entry {shown:?} in directory {parent}: kind {:?} corrected to {:?}",
                    e.d.kind,
                    t.kind,
                    parent = parent.0
                ));
                e.d.kind = t.kind;
                cx.dirents
                    .insert((parent, e.name.as_slice()), encode(&e.d).as_slice())?;
            }
            ns.entries.push(e);
            continue;
        };
        cx.dirents.remove((parent, e.name.as_slice()))?;
        if cx.cookies.get((parent, e.d.cookie))?.as_deref() == Some(e.name.as_slice()) {
            cx.cookies.remove((parent, e.d.cookie))?;
        }
        sum.actions.push(format!(
            "removed entry {shown:?} in directory {parent}: {why}",
            parent = parent.0
        ));
    }
    Ok(())
}

/// readdir cookies: exactly one per entry, naming it.
fn repair_cookies(cx: &mut Ctx<'_>, ns: &mut Ns, sum: &mut RepairSummary) -> Result<()> {
    let mut cookies: Vec<((InodeNo, u64), Vec<u8>)> = Vec::new();
    for item in cx.cookies.iter()? {
        cookies.push(item?);
    }
    let wanted: HashSet<(InodeNo, u64, &[u8])> = ns
        .entries
        .iter()
        .map(|e| (e.parent, e.d.cookie, e.name.as_slice()))
        .collect();
    let mut stale = Vec::new();
    let mut kept: HashMap<(InodeNo, u64), Vec<u8>> = HashMap::new();
    for ((p, c), name) in cookies {
        if wanted.contains(&(p, c, name.as_slice())) {
            kept.insert((p, c), name);
        } else {
            stale.push((p, c));
        }
    }
    for (p, c) in stale {
        cx.cookies.remove((p, c))?;
        sum.actions.push(format!(
            "removed stale readdir cookie {c} of directory {p}",
            p = p.0
        ));
    }
    for e in ns.entries.iter_mut() {
        if kept
            .get(&(e.parent, e.d.cookie))
            .is_some_and(|n| *n == e.name)
        {
            continue;
        }
        let Some(dir) = ns.inodes.get_mut(&e.parent) else {
            sum.unfixable.push(format!(
                "entry {:?} in inode {}: no readdir cookie, and none can be given while the \
                 directory's record does not decode",
                e.shown(),
                e.parent.0
            ));
            continue;
        };
        e.d.cookie = dir.next_cookie;
        dir.next_cookie += 1;
        cx.dirents
            .insert((e.parent, e.name.as_slice()), encode(&e.d).as_slice())?;
        cx.cookies
            .insert((e.parent, e.d.cookie), e.name.as_slice())?;
        kept.insert((e.parent, e.d.cookie), e.name.clone());
        sum.actions.push(format!(
            "entry {:?} in directory {}: readdir cookie rebuilt",
            e.shown(),
            e.parent.0
        ));
    }
    Ok(())
}

/// A directory has one name: extra entries for it are removed (the first one stays).
fn repair_directory_names(cx: &mut Ctx<'_>, ns: &mut Ns, sum: &mut RepairSummary) -> Result<()> {
    let mut names: BTreeMap<InodeNo, Vec<usize>> = BTreeMap::new();
    for (i, e) in ns.entries.iter().enumerate() {
        if e.d.kind == FileKind::Directory {
            names.entry(e.d.ino).or_default().push(i);
        }
    }
    let mut extra: Vec<usize> = Vec::new();
    for (dino, at) in names {
        for &i in at.iter().skip(1) {
            let e = &ns.entries[i];
            cx.dirents.remove((e.parent, e.name.as_slice()))?;
            cx.cookies.remove((e.parent, e.d.cookie))?;
            sum.actions.push(format!(
                "removed extra entry {:?} in {} for directory {dino}",
                e.shown(),
                e.parent.0,
                dino = dino.0
            ));
            extra.push(i);
        }
    }
    extra.sort_unstable();
    for i in extra.into_iter().rev() {
        ns.entries.swap_remove(i);
    }
    Ok(())
}

/// Inodes that still have links or names but cannot be reached from the root go to
/// /lost+found: each round links the tops of the disconnected subtrees (or, in a cycle, its
/// lowest directory).
fn reconnect(cx: &mut Ctx<'_>, ns: &mut Ns, sum: &mut RepairSummary) -> Result<()> {
    for _round in 0..64 {
        let reachable = reachable_from_root(ns);
        let lost: Vec<InodeNo> = ns
            .inodes
            .iter()
            .filter(|(&i, r)| {
                i != InodeNo::ROOT
                    && !reachable.contains(&i)
                    && (r.nlink > 0 || ns.named.contains(&i))
            })
            .map(|(&i, _)| i)
            .collect();
        if lost.is_empty() {
            break;
        }
        let lost_set: HashSet<InodeNo> = lost.iter().copied().collect();
        let mut tops: Vec<InodeNo> = lost
            .iter()
            .copied()
            .filter(|i| {
                !ns.entries
                    .iter()
                    .any(|e| e.d.ino == *i && lost_set.contains(&e.parent))
            })
            .collect();
        if tops.is_empty() {
            tops.push(lost[0]);
        }
        let lf = ensure_lost_found(cx, ns, sum)?;
        for ino in tops {
            link_into_lost_found(cx, ns, lf, ino)?;
            sum.actions.push(format!(
                "inode {ino} was disconnected: linked as /lost+found/#{ino}",
                ino = ino.0
            ));
        }
    }
    Ok(())
}

fn reachable_from_root(ns: &Ns) -> HashSet<InodeNo> {
    let mut children: HashMap<InodeNo, Vec<InodeNo>> = HashMap::new();
    for e in &ns.entries {
        children.entry(e.parent).or_default().push(e.d.ino);
    }
    let mut reachable = HashSet::new();
    let mut stack = vec![InodeNo::ROOT];
    while let Some(i) = stack.pop() {
        if !reachable.insert(i) {
            continue;
        }
        if ns
            .inodes
            .get(&i)
            .is_some_and(|r| r.kind == FileKind::Directory)
        {
            stack.extend(children.get(&i).into_iter().flatten().copied());
        }
    }
    reachable
}

/// Name `ino` `/lost+found/#ino`; a directory loses its old (unreachable) name, having one only.
fn link_into_lost_found(cx: &mut Ctx<'_>, ns: &mut Ns, lf: InodeNo, ino: InodeNo) -> Result<()> {
    let name = format!("#{ino}", ino = ino.0).into_bytes();
    let kind = ns
        .inodes
        .get(&ino)
        .map(|r| r.kind)
        .ok_or_else(|| Error::corrupt("inode vanished"))?;
    if kind == FileKind::Directory {
        for e in ns.entries.iter().filter(|e| e.d.ino == ino) {
            cx.dirents.remove((e.parent, e.name.as_slice()))?;
            cx.cookies.remove((e.parent, e.d.cookie))?;
        }
        ns.entries.retain(|e| e.d.ino != ino);
    } else if ns.entries.iter().any(|e| e.d.ino == ino) {
        // A file named in an unreachable (or unreadable) directory keeps that name too.
        if let Some(r) = ns.inodes.get_mut(&ino) {
            r.nlink += 1;
        }
    }
    let dir = ns
        .inodes
        .get_mut(&lf)
        .ok_or_else(|| Error::corrupt("lost+found vanished"))?;
    let cookie = dir.next_cookie;
    dir.next_cookie += 1;
    let d = DirentRecord { ino, kind, cookie };
    cx.dirents
        .insert((lf, name.as_slice()), encode(&d).as_slice())?;
    cx.cookies.insert((lf, cookie), name.as_slice())?;
    ns.entries.push(Entry {
        parent: lf,
        name,
        d,
    });
    Ok(())
}

/// The inode of /lost+found, made if there is none.
fn ensure_lost_found(cx: &mut Ctx<'_>, ns: &mut Ns, sum: &mut RepairSummary) -> Result<InodeNo> {
    let root = InodeNo::ROOT;
    if let Some(e) = ns
        .entries
        .iter()
        .find(|e| e.parent == root && e.name == LOST_FOUND)
    {
        return match ns.inodes.get(&e.d.ino) {
            Some(r) if r.kind == FileKind::Directory => Ok(e.d.ino),
            _ => Err(Error::corrupt(
                "/lost+found exists and is not a directory; move it away and repair again",
            )),
        };
    }
    let ino = cx.mem.state.next_ino.max(InodeNo(ns.highest_ino.0 + 1));
    ns.highest_ino = ino;
    cx.mem.state.next_ino = InodeNo(ino.0 + 1);
    let mut rec = new_inode_record(FileKind::Directory, 0o700, Caller::ROOT, 0, root);
    rec.generation = cx.mem.state.generation;
    let r = ns
        .inodes
        .get_mut(&root)
        .ok_or_else(|| Error::corrupt("root vanished"))?;
    let cookie = r.next_cookie;
    r.next_cookie += 1;
    // Counted as mkdir would: the root's new subdirectory, one more inode.
    r.nlink += 1;
    cx.mem.state.inodes += 1;
    let d = DirentRecord {
        ino,
        kind: FileKind::Directory,
        cookie,
    };
    cx.dirents
        .insert((root, LOST_FOUND), encode(&d).as_slice())?;
    cx.cookies.insert((root, cookie), LOST_FOUND)?;
    ns.inodes.insert(ino, rec);
    ns.entries.push(Entry {
        parent: root,
        name: LOST_FOUND.to_vec(),
        d,
    });
    sum.actions.push("created /lost+found".into());
    Ok(ino)
}

/// Entries naming each inode, and subdirectory entries of each directory.
fn count_links(entries: &[Entry]) -> (HashMap<InodeNo, u32>, HashMap<InodeNo, u32>) {
    let mut names: HashMap<InodeNo, u32> = HashMap::new();
    let mut subdirs: HashMap<InodeNo, u32> = HashMap::new();
    for e in entries {
        *names.entry(e.d.ino).or_default() += 1;
        if e.d.kind == FileKind::Directory {
            *subdirs.entry(e.parent).or_default() += 1;
        }
    }
    (names, subdirs)
}

/// Link counts and directories' parents from the entries (inodes with no entry are the orphan
/// pass's).
fn repair_link_counts(ns: &mut Ns, sum: &mut RepairSummary) {
    let (names, subdirs) = count_links(&ns.entries);
    for e in &ns.entries {
        if e.d.kind == FileKind::Directory {
            if let Some(r) = ns.inodes.get_mut(&e.d.ino) {
                r.parent = e.parent;
            }
        }
    }
    for (&ino, r) in ns.inodes.iter_mut() {
        let found = names.get(&ino).copied().unwrap_or(0);
        if found == 0 && ino != InodeNo::ROOT {
            continue;
        }
        let want = if r.kind == FileKind::Directory {
            2 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            found
        };
        if r.nlink != want {
            sum.actions.push(format!(
                "inode {ino}: link count {} corrected to {want}",
                r.nlink,
                ino = ino.0
            ));
            r.nlink = want;
        }
    }
}

/// Inodes no entry names (after `reconnect`, those without links or names from the start) are
/// reclaimed with their xattrs and extents; the orphan list keeps only inodes that exist and
/// have no links.
fn repair_orphans(cx: &mut Ctx<'_>, ns: &mut Ns, sum: &mut RepairSummary) -> Result<()> {
    let (names, _) = count_links(&ns.entries);
    let mut orphans: BTreeSet<InodeNo> = BTreeSet::new();
    for item in cx.orphans.iter()? {
        orphans.insert(item?.0);
    }
    let mut doomed = Vec::new();
    for &ino in ns.inodes.keys() {
        if ino != InodeNo::ROOT && !names.contains_key(&ino) {
            doomed.push(ino);
        } else if orphans.contains(&ino) {
            cx.orphans.remove(ino)?;
            sum.actions.push(format!(
                "inode {ino} has links: taken off the orphan list",
                ino = ino.0
            ));
        }
    }
    for ino in doomed {
        ns.inodes.remove(&ino);
        ns.reclaimed.insert(ino);
        cx.inodes.remove(ino)?;
        cx.mem.state.inodes = cx.mem.state.inodes.saturating_sub(1);
        cx.orphans.remove(ino)?;
        for n in cx.xattr_names(ino)? {
            cx.xattrs.remove((ino, n.as_slice()))?;
        }
        sum.actions
            .push(format!("inode {ino} had no links: reclaimed", ino = ino.0));
    }
    for o in orphans {
        let exists = ns.inodes.contains_key(&o) || ns.damaged.contains_key(&o);
        if !exists && !ns.reclaimed.contains(&o) && cx.orphans.remove_found(o)? {
            sum.actions.push(format!(
                "orphan list entry for missing inode {o} removed",
                o = o.0
            ));
        }
    }
    Ok(())
}

/// The pool blocks an extent references, if it is a pool extent inside the pool.
fn pool_ref(e: &ExtentRecord, pool_blocks: u64) -> Option<BlockRun> {
    let inside = e
        .phys
        .checked_add(e.len)
        .is_some_and(|end| end <= pool_blocks);
    (e.lower == 0 && e.len > 0 && inside).then_some(e.pool_run())
}

/// Extent maps of regular files: kept where they lie inside the pool (or a known lower file)
/// and the file and do not overlap, else removed or trimmed; block counters follow. Extents of
/// reclaimed inodes go with them. Every other extent record stays, and so do the blocks it
/// names: one that does not decode, and those of an inode whose record does not decode, of a
/// missing inode, or of a non-regular one. Returns the pool references found, and whether an
/// extent record that does not decode remains.
fn repair_extents(
    cx: &mut Ctx<'_>,
    ns: &mut Ns,
    extents: Extents,
    sum: &mut RepairSummary,
) -> Result<(Vec<BlockRun>, bool)> {
    let (bs, pool_blocks) = (cx.bs, cx.mem.state.pool_blocks);
    let mut refs: Vec<BlockRun> = Vec::new();
    let mut unreadable = false;
    let mut blocks: HashMap<InodeNo, u64> = HashMap::new();
    let mut foreign: BTreeMap<InodeNo, u64> = BTreeMap::new();
    let mut last_end: Option<(InodeNo, u64)> = None;
    for ((ino, fb), rec) in extents {
        if ns.reclaimed.contains(&ino) {
            cx.extents.remove((ino, fb))?;
            continue;
        }
        let Some(e) = rec else {
            unreadable = true;
            sum.unfixable.push(format!(
                "inode {ino}: the extent at file block {fb} does not decode; kept, and no block \
                 is freed while it is there",
                ino = ino.0
            ));
            continue;
        };
        let Some(file) = ns.inodes.get(&ino).filter(|r| r.kind == FileKind::Regular) else {
            *foreign.entry(ino).or_default() += 1;
            refs.extend(pool_ref(&e, pool_blocks));
            continue;
        };
        let known_lower = e.lower == 0 || cx.lower_files.get(e.lower)?.is_some();
        let in_pool = e.len > 0
            && if e.lower == 0 {
                pool_ref(&e, pool_blocks).is_some()
            } else {
                known_lower
            };
        let overlaps = matches!(last_end, Some((li, le)) if li == ino && fb < le);
        let max = file.size.div_ceil(bs);
        let why = if !in_pool {
            "outside the pool"
        } else if overlaps {
            "overlaps the previous extent"
        } else if fb >= max {
            "past the end of the file"
        } else {
            ""
        };
        if !why.is_empty() {
            cx.extents.remove((ino, fb))?;
            sum.actions.push(format!(
                "inode {ino}: extent at file block {fb} removed ({why})",
                ino = ino.0
            ));
            continue;
        }
        let mut len = e.len;
        if fb + len > max {
            len = max - fb;
            let trimmed = ExtentRecord {
                phys: e.phys,
                len,
                lower: e.lower,
            };
            cx.extents.insert((ino, fb), encode(&trimmed).as_slice())?;
            sum.actions.push(format!(
                "inode {ino}: extent at file block {fb} trimmed to the end of the file",
                ino = ino.0
            ));
        }
        last_end = Some((ino, fb + len));
        *blocks.entry(ino).or_default() += len;
        if e.lower == 0 {
            refs.push(BlockRun::new(BlockNo(e.phys), len));
        }
    }
    for (ino, n) in foreign {
        let owner = match ns.inodes.get(&ino) {
            Some(r) => format!("{:?} inode {ino}", r.kind, ino = ino.0),
            None if ns.damaged.contains_key(&ino) => {
                format!("inode {ino}, whose record does not decode", ino = ino.0)
            }
            None => format!("missing inode {ino}", ino = ino.0),
        };
        sum.unfixable.push(format!(
            "{n} extents of {owner} kept: the blocks they name stay allocated"
        ));
    }
    for (&ino, r) in ns.inodes.iter_mut() {
        if r.kind == FileKind::Regular {
            let b = blocks.get(&ino).copied().unwrap_or(0);
            if r.blocks != b {
                sum.actions.push(format!(
                    "inode {ino}: block counter {} corrected to {b}",
                    r.blocks,
                    ino = ino.0
                ));
                r.blocks = b;
            }
        }
    }
    Ok((refs, unreadable))
}

/// Write back the inode records that changed.
fn write_inodes(cx: &mut Ctx<'_>, ns: &Ns) -> Result<()> {
    for (&ino, r) in &ns.inodes {
        let bytes = encode(r);
        if cx.inodes.get(ino)?.as_deref() != Some(bytes.as_slice()) {
            cx.inodes.insert(ino, bytes.as_slice())?;
        }
    }
    Ok(())
}

/// Refcount records against the references found: malformed records go, and every run whose
/// count differs is set to the count found. While an extent record does not decode, a count
/// higher than the readable references is kept (the unreadable one may be among them).
fn repair_refcounts(
    cx: &mut Ctx<'_>,
    cover: &Runs,
    unreadable: bool,
    sum: &mut RepairSummary,
) -> Result<()> {
    let mut recorded: Runs = Vec::new();
    let mut bad: Vec<(BlockNo, String)> = Vec::new();
    for item in cx.refcounts.iter()? {
        let (start, v) = item?;
        match decode::<RefcountRecord>(&v, &start) {
            Ok(r) if r.count < 2 || r.len == 0 => {
                bad.push((start, format!("with count {} of {} blocks", r.count, r.len)))
            }
            Ok(_) if recorded.last().is_some_and(|&(p, _)| p.end() > start) => {
                bad.push((start, "overlapping the one before".into()))
            }
            Ok(r) => recorded.push((BlockRun::new(start, r.len), r.count)),
            Err(_) => bad.push((start, "that does not decode".into())),
        }
    }
    for (start, why) in bad {
        cx.refcounts.remove(start)?;
        sum.actions.push(format!(
            "removed the refcount record at block {start} {why}"
        ));
    }
    let expected: Runs = cover.iter().filter(|r| r.1 >= 2).copied().collect();
    for (run, want, have) in pieces_where(&expected, &recorded, |want, have| want != have) {
        let found = value_at(cover, run.start);
        if unreadable && have > want {
            sum.unfixable.push(format!(
                "blocks {run}: refcount {have} kept, though readable extents hold {found} \
                 references (an extent record that does not decode may hold the others)"
            ));
            continue;
        }
        cx.set_refcount(run, want)?;
        sum.actions.push(format!(
            "blocks {run}: refcount {have} corrected to the {found} references found"
        ));
    }
    Ok(())
}

/// Free space against the references found: malformed free records go (a run past the pool's
/// end is trimmed), referenced blocks are taken off the free list, and blocks neither free nor
/// referenced are freed, except while an extent record that does not decode may name them.
fn repair_free_space(
    cx: &mut Ctx<'_>,
    cover: &Runs,
    unreadable: bool,
    sum: &mut RepairSummary,
) -> Result<()> {
    let pool_blocks = cx.mem.state.pool_blocks;
    let mut free: Runs = Vec::new();
    let mut bad: Vec<(BlockNo, &str)> = Vec::new();
    let mut trimmed: Vec<BlockRun> = Vec::new();
    for item in cx.free.iter()? {
        let (start, v) = item?;
        match decode::<FreeRecord>(&v, &start) {
            Ok(_) if free.last().is_some_and(|&(p, _)| p.end() > start) => {
                bad.push((start, "overlapping the one before"))
            }
            Ok(r) if start.saturating_add(r.len) > BlockNo(pool_blocks) => {
                bad.push((start, "past the pool's end"));
                if start < BlockNo(pool_blocks) {
                    let kept = BlockRun::between(start, BlockNo(pool_blocks));
                    trimmed.push(kept);
                    free.push((kept, 1));
                }
            }
            Ok(r) => free.push((BlockRun::new(start, r.len), 1)),
            Err(_) => bad.push((start, "that does not decode")),
        }
    }
    for (start, why) in bad {
        cx.remove_free_record(start)?;
        sum.actions
            .push(format!("removed the free record at block {start} {why}"));
    }
    for r in trimmed {
        cx.insert_free(r)?;
    }
    let used: Runs = cover.iter().map(|&(r, _)| (r, 1)).collect();
    for (run, _, _) in pieces_where(&used, &free, |u, f| u == 1 && f == 1) {
        cx.remove_free(run)?;
        sum.actions.push(format!(
            "blocks {run} are referenced: taken off the free list"
        ));
    }
    for run in unaccounted(&used, &free, pool_blocks) {
        if unreadable {
            sum.unfixable.push(format!(
                "blocks {run} are neither free nor referenced by a readable extent: kept \
                 allocated (an extent record that does not decode may name them)"
            ));
            continue;
        }
        cx.insert_free(run)?;
        sum.actions.push(format!("blocks {run} were leaked: freed"));
    }
    Ok(())
}

/// The state record's inode count and next inode number.
fn repair_state(cx: &mut Ctx<'_>, ns: &Ns, sum: &mut RepairSummary) {
    let count = (ns.inodes.len() + ns.damaged.len()) as u64;
    if cx.mem.state.inodes != count {
        sum.actions.push(format!(
            "inode count {} corrected to {count}",
            cx.mem.state.inodes
        ));
        cx.mem.state.inodes = count;
    }
    if cx.mem.state.next_ino <= ns.highest_ino {
        cx.mem.state.next_ino = InodeNo(ns.highest_ino.0 + 1);
        sum.actions.push("next inode number corrected".into());
    }
}
