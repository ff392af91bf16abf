//! fsck's repair: fixes what can be fixed without guessing, in one transaction, committed
//! atomically. Namespace damage is fixed first (dangling entries, link counts, disconnected inodes
//! into /lost+found, orphans reclaimed), then extent maps are trimmed to what is valid, and last
//! the allocation metadata (refcounts and free space) is rebuilt from the extent maps, which fixes
//! leaks, wrong refcounts, double references and free/used overlaps in one general step.
//! Records that fail their checksum are reported, not guessed at.

use super::runs::coverage;
use crate::codec::{
    decode, encode, DirentRecord, ExtentRecord, FreeRecord, InodeRecord, RefcountRecord,
};
use crate::error::{Error, Result};
use crate::ns::new_inode_record;
use crate::store::Store;
use crate::tables::Ctx;
use crate::types::{Caller, FileKind, InodeNo};
use std::collections::{BTreeMap, HashMap, HashSet};

pub const LOST_FOUND: &[u8] = b"lost+found";

/// What a repair did, one line per action.
#[derive(Clone, Debug, Default)]
pub struct RepairSummary {
    pub actions: Vec<String>,
    /// Problems left alone (records that do not decode).
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
        let free: Vec<(u64, u64)> = self.inner().read(|cx| {
            let mut v = Vec::new();
            for item in cx.free.iter()? {
                let (k, val) = item?;
                v.push((k, decode::<FreeRecord>(&val, &k)?.len));
            }
            Ok(v)
        })?;
        for (s, l) in free {
            self.pool().punch(s * bs, l * bs)?;
        }
        Ok(sum)
    }
}

fn repair_txn(cx: &mut Ctx<'_>, sum: &mut RepairSummary) -> Result<()> {
    let bs = cx.bs;
    // Inodes that decode.
    let mut inodes: BTreeMap<u64, InodeRecord> = BTreeMap::new();
    for item in cx.inodes.iter()? {
        let (k, v) = item?;
        match decode::<InodeRecord>(&v, &k) {
            Ok(r) => {
                inodes.insert(k, r);
            }
            Err(e) => sum.unfixable.push(e.to_string()),
        }
    }
    if !inodes.contains_key(&InodeNo::ROOT.0) {
        return Err(Error::corrupt(
            "the root inode is missing or unreadable; the store cannot be repaired",
        ));
    }

    // Directory entries: drop those naming missing inodes, fix kinds.
    let mut dirents: Vec<(u64, Vec<u8>, DirentRecord)> = Vec::new();
    for item in cx.dirents.iter()? {
        let (k, v) = item?;
        let (parent, name) = k;
        match decode::<DirentRecord>(&v, &parent) {
            Ok(d) => dirents.push((parent, name.to_vec(), d)),
            Err(e) => {
                sum.unfixable.push(e.to_string());
            }
        }
    }
    let mut kept: Vec<(u64, Vec<u8>, DirentRecord)> = Vec::new();
    for (parent, name, mut d) in dirents {
        let shown = String::from_utf8_lossy(&name).into_owned();
        let parent_ok = inodes
            .get(&parent)
            .is_some_and(|p| p.kind == FileKind::Directory);
        match inodes.get(&d.ino) {
            Some(t) if parent_ok => {
                if t.kind != d.kind {
                    sum.actions.push(format!(
                        "entry {shown:?} in directory {parent}: kind {:?} corrected to {:?}",
                        d.kind, t.kind
                    ));
                    d.kind = t.kind;
                    cx.dirents
                        .insert((parent, name.as_slice()), encode(&d).as_slice())?;
                }
                kept.push((parent, name, d));
            }
            _ => {
                sum.actions.push(format!(
                    "removed entry {shown:?} in directory {parent}: it names missing inode {}",
                    d.ino
                ));
                cx.dirents.remove((parent, name.as_slice()))?;
            }
        }
    }

    // readdir cookies: exactly one per entry.
    let mut cookies: Vec<((u64, u64), Vec<u8>)> = Vec::new();
    for item in cx.cookies.iter()? {
        let (k, v) = item?;
        cookies.push((k, v));
    }
    let wanted: HashSet<(u64, u64, Vec<u8>)> = kept
        .iter()
        .map(|(p, n, d)| (*p, d.cookie, n.clone()))
        .collect();
    let mut present: HashSet<(u64, u64)> = HashSet::new();
    for ((p, c), name) in cookies {
        if wanted.contains(&(p, c, name.clone())) {
            present.insert((p, c));
        } else {
            cx.cookies.remove((p, c))?;
            sum.actions
                .push(format!("removed stale readdir cookie {c} of directory {p}"));
        }
    }
    for (p, name, d) in kept.iter_mut() {
        if !present.contains(&(*p, d.cookie)) {
            let dir = inodes
                .get_mut(p)
                .ok_or_else(|| Error::corrupt("directory vanished during repair"))?;
            d.cookie = dir.next_cookie;
            dir.next_cookie += 1;
            cx.dirents
                .insert((*p, name.as_slice()), encode(&*d).as_slice())?;
            cx.cookies.insert((*p, d.cookie), name.as_slice())?;
            present.insert((*p, d.cookie));
            sum.actions.push(format!(
                "entry {:?} in directory {p}: readdir cookie rebuilt",
                String::from_utf8_lossy(name)
            ));
        }
    }

    // Directory tree: each directory keeps one parent entry; reachability from the root.
    let mut dir_entries: HashMap<u64, Vec<(u64, Vec<u8>)>> = HashMap::new();
    for (p, n, d) in &kept {
        if d.kind == FileKind::Directory {
            dir_entries.entry(d.ino).or_default().push((*p, n.clone()));
        }
    }
    // Extra entries for a directory (a directory may have only one name) are removed.
    for (dino, names) in &dir_entries {
        for (p, n) in names.iter().skip(1) {
            cx.dirents.remove((*p, n.as_slice()))?;
            if let Some(c) = kept
                .iter()
                .find(|(kp, kn, _)| kp == p && kn == n)
                .map(|(_, _, d)| d.cookie)
            {
                cx.cookies.remove((*p, c))?;
            }
            kept.retain(|(kp, kn, _)| !(kp == p && kn == n));
            sum.actions.push(format!(
                "removed extra entry {:?} in {p} for directory {dino}",
                String::from_utf8_lossy(n)
            ));
        }
    }

    // Inodes that still have links but cannot be reached from the root go to /lost+found: each
    // round links the tops of the disconnected subtrees (or, in a cycle, its lowest directory).
    for _round in 0..64 {
        let reachable = reachable_from_root(&inodes, &kept);
        let named: HashSet<u64> = kept.iter().map(|(_, _, d)| d.ino).collect();
        let lost: Vec<u64> = inodes
            .iter()
            .filter(|(&i, r)| {
                i != InodeNo::ROOT.0
                    && !reachable.contains(&i)
                    && (r.nlink > 0 || named.contains(&i))
            })
            .map(|(&i, _)| i)
            .collect();
        if lost.is_empty() {
            break;
        }
        let lost_set: HashSet<u64> = lost.iter().copied().collect();
        let mut tops: Vec<u64> = lost
            .iter()
            .copied()
            .filter(|i| {
                !kept
                    .iter()
                    .any(|(p, _, d)| d.ino == *i && lost_set.contains(p))
            })
            .collect();
        if tops.is_empty() {
            tops.push(lost[0]);
        }
        let lf = ensure_lost_found(cx, &mut inodes, &mut kept, sum)?;
        for ino in tops {
            let name = format!("#{ino}").into_bytes();
            let kind = inodes
                .get(&ino)
                .map(|r| r.kind)
                .ok_or_else(|| Error::corrupt("inode vanished"))?;
            if kind == FileKind::Directory {
                // A directory has one name: its entry in an unreachable directory goes.
                let old: Vec<(u64, Vec<u8>, u64)> = kept
                    .iter()
                    .filter(|(_, _, d)| d.ino == ino)
                    .map(|(p, n, d)| (*p, n.clone(), d.cookie))
                    .collect();
                for (p, n, c) in old {
                    cx.dirents.remove((p, n.as_slice()))?;
                    cx.cookies.remove((p, c))?;
                    kept.retain(|(kp, kn, _)| !(*kp == p && *kn == n));
                }
            }
            let dir = inodes
                .get_mut(&lf)
                .ok_or_else(|| Error::corrupt("lost+found vanished"))?;
            let cookie = dir.next_cookie;
            dir.next_cookie += 1;
            let d = DirentRecord { ino, kind, cookie };
            cx.dirents
                .insert((lf, name.as_slice()), encode(&d).as_slice())?;
            cx.cookies.insert((lf, cookie), name.as_slice())?;
            kept.push((lf, name, d));
            sum.actions.push(format!(
                "inode {ino} was disconnected: linked as /lost+found/#{ino}"
            ));
        }
    }

    // Link counts and parents from the entries.
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    for (p, _, d) in &kept {
        *links.entry(d.ino).or_default() += 1;
        if d.kind == FileKind::Directory {
            *subdirs.entry(*p).or_default() += 1;
            if let Some(r) = inodes.get_mut(&d.ino) {
                r.parent = *p;
            }
        }
    }
    let mut orphans: HashSet<u64> = HashSet::new();
    for item in cx.orphans.iter()? {
        orphans.insert(item?.0);
    }
    let mut doomed: Vec<u64> = Vec::new();
    for (&ino, r) in inodes.iter_mut() {
        let found = links.get(&ino).copied().unwrap_or(0);
        let want = if r.kind == FileKind::Directory {
            if found == 0 && ino != InodeNo::ROOT.0 {
                0
            } else {
                2 + subdirs.get(&ino).copied().unwrap_or(0)
            }
        } else {
            found
        };
        if want == 0 && ino != InodeNo::ROOT.0 {
            doomed.push(ino);
            continue;
        }
        if r.nlink != want {
            sum.actions.push(format!(
                "inode {ino}: link count {} corrected to {want}",
                r.nlink
            ));
            r.nlink = want;
        }
        if orphans.contains(&ino) {
            cx.orphans.remove(ino)?;
            sum.actions
                .push(format!("inode {ino} has links: taken off the orphan list"));
        }
    }
    for ino in doomed {
        inodes.remove(&ino);
        cx.inodes.remove(ino)?;
        cx.orphans.remove(ino)?;
        let names: Vec<Vec<u8>> = cx.xattr_names(ino)?;
        for n in names {
            cx.xattrs.remove((ino, n.as_slice()))?;
        }
        sum.actions
            .push(format!("inode {ino} had no links: reclaimed"));
    }
    for o in orphans {
        if !inodes.contains_key(&o) && cx.orphans.remove(o)? {
            sum.actions
                .push(format!("orphan list entry for missing inode {o} removed"));
        }
    }

    // Extent maps: keep what lies inside the pool, inside the file, and does not overlap.
    let pool_blocks = cx.mem.state.pool_blocks;
    let mut all_extents: Vec<((u64, u64), Option<ExtentRecord>)> = Vec::new();
    for item in cx.extents.iter()? {
        let (k, v) = item?;
        let rec = decode::<ExtentRecord>(&v, &k).ok();
        all_extents.push((k, rec));
    }
    let mut refs: Vec<(u64, u64)> = Vec::new();
    let mut blocks: HashMap<u64, u64> = HashMap::new();
    let mut last_end: Option<(u64, u64)> = None;
    for ((ino, fb), rec) in all_extents {
        let Some(e) = rec else {
            cx.extents.remove((ino, fb))?;
            sum.actions.push(format!("inode {ino}: unreadable extent at file block {fb} removed (that range now reads as zeros)"));
            continue;
        };
        let file = inodes.get(&ino).filter(|r| r.kind == FileKind::Regular);
        let Some(file) = file else {
            cx.extents.remove((ino, fb))?;
            sum.actions.push(format!(
                "extent of missing or non-regular inode {ino} removed"
            ));
            continue;
        };
        let known_lower = e.lower == 0 || cx.lower_files.get(e.lower)?.is_some();
        let in_pool = e.len > 0
            && if e.lower == 0 {
                e.phys
                    .checked_add(e.len)
                    .is_some_and(|end| end <= pool_blocks)
            } else {
                known_lower
            };
        let overlaps = matches!(last_end, Some((li, le)) if li == ino && fb < le);
        if !in_pool || overlaps {
            cx.extents.remove((ino, fb))?;
            sum.actions.push(format!(
                "inode {ino}: extent at file block {fb} removed ({})",
                if overlaps {
                    "overlaps the previous extent"
                } else {
                    "outside the pool"
                }
            ));
            continue;
        }
        let max = file.size.div_ceil(bs);
        let mut len = e.len;
        if fb >= max {
            cx.extents.remove((ino, fb))?;
            sum.actions.push(format!(
                "inode {ino}: extent past the end of the file removed"
            ));
            continue;
        }
        if fb + len > max {
            len = max - fb;
            cx.extents.insert(
                (ino, fb),
                encode(&ExtentRecord {
                    phys: e.phys,
                    len,
                    lower: e.lower,
                })
                .as_slice(),
            )?;
            sum.actions.push(format!(
                "inode {ino}: extent at file block {fb} trimmed to the end of the file"
            ));
        }
        last_end = Some((ino, fb + len));
        *blocks.entry(ino).or_default() += len;
        if e.lower == 0 {
            refs.push((e.phys, len));
        }
    }
    for (&ino, r) in inodes.iter_mut() {
        if r.kind == FileKind::Regular {
            let b = blocks.get(&ino).copied().unwrap_or(0);
            if r.blocks != b {
                sum.actions.push(format!(
                    "inode {ino}: block counter {} corrected to {b}",
                    r.blocks
                ));
                r.blocks = b;
            }
        }
    }
    for (&ino, r) in &inodes {
        cx.inodes.insert(ino, encode(r).as_slice())?;
    }

    // Allocation metadata, rebuilt from the references.
    let before_ref = table_fingerprint_refcounts(cx)?;
    let before_free = table_fingerprint_free(cx)?;
    let cover = coverage(refs);
    let mut new_ref: Vec<(u64, RefcountRecord)> = Vec::new();
    let mut new_free: Vec<(u64, FreeRecord)> = Vec::new();
    let mut pos = 0u64;
    for &(s, l, c) in &cover {
        if s > pos {
            new_free.push((pos, FreeRecord { len: s - pos }));
        }
        if c >= 2 {
            new_ref.push((s, RefcountRecord { len: l, count: c }));
        }
        pos = s + l;
    }
    if pos < pool_blocks {
        new_free.push((
            pos,
            FreeRecord {
                len: pool_blocks - pos,
            },
        ));
    }
    let new_ref = merge_refs(new_ref);
    if before_ref != new_ref {
        let keys: Vec<u64> = before_ref.iter().map(|(k, _)| *k).collect();
        for k in keys {
            cx.refcounts.remove(k)?;
        }
        for (k, r) in &new_ref {
            cx.refcounts.insert(*k, encode(r).as_slice())?;
        }
        sum.actions.push(format!(
            "refcounts rebuilt from the extent maps ({} records)",
            new_ref.len()
        ));
    }
    if before_free != new_free {
        let keys: Vec<u64> = before_free.iter().map(|(k, _)| *k).collect();
        for k in keys {
            cx.free.remove(k)?;
        }
        for (k, r) in &new_free {
            cx.free.insert(*k, encode(r).as_slice())?;
        }
        sum.actions.push(format!(
            "free space rebuilt as the complement of referenced blocks ({} runs)",
            new_free.len()
        ));
    }
    cx.mem.clear_block_sets();

    let count = inodes.len() as u64;
    let max_ino = inodes.keys().next_back().copied().unwrap_or(1);
    if cx.mem.state.inodes != count {
        sum.actions.push(format!(
            "inode count {} corrected to {count}",
            cx.mem.state.inodes
        ));
        cx.mem.state.inodes = count;
    }
    if cx.mem.state.next_ino <= max_ino {
        cx.mem.state.next_ino = max_ino + 1;
        sum.actions.push("next inode number corrected".into());
    }
    cx.mem.dirty = true;
    Ok(())
}

fn reachable_from_root(
    inodes: &BTreeMap<u64, InodeRecord>,
    kept: &[(u64, Vec<u8>, DirentRecord)],
) -> HashSet<u64> {
    let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
    for (p, _, d) in kept {
        children.entry(*p).or_default().push(d.ino);
    }
    let mut reachable = HashSet::new();
    let mut stack = vec![InodeNo::ROOT.0];
    while let Some(i) = stack.pop() {
        if !reachable.insert(i) {
            continue;
        }
        if inodes
            .get(&i)
            .is_some_and(|r| r.kind == FileKind::Directory)
        {
            stack.extend(children.get(&i).into_iter().flatten().copied());
        }
    }
    reachable
}

fn ensure_lost_found(
    cx: &mut Ctx<'_>,
    inodes: &mut BTreeMap<u64, InodeRecord>,
    kept: &mut Vec<(u64, Vec<u8>, DirentRecord)>,
    sum: &mut RepairSummary,
) -> Result<u64> {
    let root = InodeNo::ROOT.0;
    if let Some((_, _, d)) = kept
        .iter()
        .find(|(p, n, d)| *p == root && n == LOST_FOUND && d.kind == FileKind::Directory)
    {
        return Ok(d.ino);
    }
    if kept.iter().any(|(p, n, _)| *p == root && n == LOST_FOUND) {
        return Err(Error::corrupt(
            "/lost+found exists and is not a directory; move it away and repair again",
        ));
    }
    let ino = cx
        .mem
        .state
        .next_ino
        .max(inodes.keys().next_back().copied().unwrap_or(1) + 1);
    cx.mem.state.next_ino = ino + 1;
    let rec = new_inode_record(FileKind::Directory, 0o700, Caller::ROOT, 0, root);
    let r = inodes
        .get_mut(&root)
        .ok_or_else(|| Error::corrupt("root vanished"))?;
    let cookie = r.next_cookie;
    r.next_cookie += 1;
    let d = DirentRecord {
        ino,
        kind: FileKind::Directory,
        cookie,
    };
    cx.dirents
        .insert((root, LOST_FOUND), encode(&d).as_slice())?;
    cx.cookies.insert((root, cookie), LOST_FOUND)?;
    inodes.insert(ino, rec);
    kept.push((root, LOST_FOUND.to_vec(), d));
    sum.actions.push("created /lost+found".into());
    Ok(ino)
}

fn merge_refs(v: Vec<(u64, RefcountRecord)>) -> Vec<(u64, RefcountRecord)> {
    let mut out: Vec<(u64, RefcountRecord)> = Vec::new();
    for (s, r) in v {
        match out.last_mut() {
            Some((ls, lr)) if *ls + lr.len == s && lr.count == r.count => lr.len += r.len,
            _ => out.push((s, r)),
        }
    }
    out
}

fn table_fingerprint_refcounts(cx: &Ctx<'_>) -> Result<Vec<(u64, RefcountRecord)>> {
    let mut v = Vec::new();
    for item in cx.refcounts.iter()? {
        let (k, val) = item?;
        match decode::<RefcountRecord>(&val, &k) {
            Ok(r) => v.push((k, r)),
            Err(_) => v.push((k, RefcountRecord { len: 0, count: 0 })),
        }
    }
    Ok(merge_refs(v))
}

fn table_fingerprint_free(cx: &Ctx<'_>) -> Result<Vec<(u64, FreeRecord)>> {
    let mut v = Vec::new();
    for item in cx.free.iter()? {
        let (k, val) = item?;
        match decode::<FreeRecord>(&val, &k) {
            Ok(r) => v.push((k, r)),
            Err(_) => v.push((k, FreeRecord { len: 0 })),
        }
    }
    Ok(v)
}
