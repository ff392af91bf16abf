//! Removing a whole tree in the store (`cowfs snapshot --delete DIR`): the permission walk of
//! `rm -r`, then one operation that detaches DIR (its entry goes, it joins the orphan list with
//! link count 0, so the tree leaves the namespace at once), then bounded batches that unlink
//! the detached tree from its leaves up. A crash in between leaves an orphan directory with
//! entries, which the next open frees the same way ([`Inner::reclaim_orphan`]); fsck counts an
//! orphan directory's entries as reachable.

use crate::error::{Error, Result};
use crate::ns::acl::{Capability, Cred};
use crate::ns::snapshot::{
    require, require_reachable, TreePhase, TreeProgress, MAY_EXEC, MAY_READ, MAY_WRITE,
};
use crate::ns::{check_flags, Change};
use crate::store::ctx::Ctx;
use crate::store::txn::Inner;
use crate::store::Store;
use crate::types::{FileKind, InodeFlags, InodeNo, Timespec};

/// Entries removed (or checked) per store operation.
pub const REMOVE_BATCH: usize = 4096;

const S_ISVTX: u16 = 0o1000;

/// A directory of the tree being removed: its entry name in its parent, and the cookie after
/// which its next entry is looked for (entries are visited by cookie, never by rescanning the
/// names already removed).
struct Frame {
    ino: InodeNo,
    name: Vec<u8>,
    after: u64,
}

/// A removal in progress, between its batches.
struct Remover {
    root: InodeNo,
    /// The removal holds the root open (so no release frees it under the batches).
    held: bool,
    path: Vec<Frame>,
    removed: u64,
}

impl Remover {
    /// One batch: unlink up to `budget` entries; true once the whole tree is gone.
    fn batch(&mut self, cx: &mut Ctx<'_>, budget: usize) -> Result<bool> {
        let now = Timespec::now();
        let mut left = budget;
        while left > 0 {
            let Some(top) = self.path.last_mut() else {
                return Ok(true);
            };
            let dir = top.ino;
            if top.after == 0 {
                cx.ensure_imported(dir)?;
            }
            let next = cx
                .cookies
                .range((dir, top.after + 1)..(dir, u64::MAX))?
                .next()
                .transpose()?;
            if let Some((k, name)) = next {
                top.after = k.1;
                let Some(d) = cx.get_dirent(dir, &name)? else {
                    continue;
                };
                if d.kind == FileKind::Directory {
                    self.path.push(Frame {
                        ino: d.ino,
                        name,
                        after: 0,
                    });
                    continue;
                }
                cx.remove_dirent(dir, &name)?;
                if let Some(mut rec) = cx.try_inode(d.ino)? {
                    cx.drop_link(d.ino, &mut rec, now)?;
                }
                self.removed += 1;
                left -= 1;
                continue;
            }
            // Every entry of `dir` visited and removed.
            if !cx.dir_is_empty(dir)? {
                return Err(Error::corrupt(format!(
                    "directory {dir} has entries without readdir cookies"
                )));
            }
            let done = self.path.pop();
            let Some(done) = done else { continue };
            self.removed += 1;
            left -= 1;
            let Some(parent) = self.path.last() else {
                // The root: free it, or leave it an orphan while someone else has it open.
                let open = cx.mem.open_counts.get(&dir).copied().unwrap_or(0);
                let others = open.saturating_sub(u32::from(self.held));
                if self.held {
                    match others {
                        0 => {
                            cx.mem.open_counts.remove(&dir);
                        }
                        n => {
                            cx.mem.open_counts.insert(dir, n);
                        }
                    }
                }
                if others == 0 {
                    if let Some(mut rec) = cx.try_inode(dir)? {
                        cx.destroy_inode(dir, &mut rec)?;
                    } else {
                        cx.orphans.remove(dir)?;
                    }
                }
                return Ok(true);
            };
            let pdir = parent.ino;
            cx.remove_dirent(pdir, &done.name)?;
            if let Some(mut rec) = cx.try_inode(dir)? {
                cx.drop_link(dir, &mut rec, now)?;
            }
            if pdir != self.root {
                let mut prec = cx.get_inode(pdir)?;
                prec.nlink = prec.nlink.saturating_sub(1).max(2);
                cx.put_inode(pdir, &prec)?;
            }
        }
        Ok(self.path.is_empty())
    }
}

impl Inner {
    /// Free the detached tree under orphan directory `root` in batches; `held`: the caller
    /// counted it open (and this drops that count). Returns the entries removed.
    pub(crate) fn free_tree(
        &self,
        root: InodeNo,
        held: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let mut r = Remover {
            root,
            held,
            path: vec![Frame {
                ino: root,
                name: Vec::new(),
                after: 0,
            }],
            removed: 0,
        };
        loop {
            let done = self.write(|cx| r.batch(cx, REMOVE_BATCH))?;
            progress(r.removed);
            if done {
                return Ok(r.removed);
            }
            // Commit between batches: the removed records are tombstones over the last commit
            // until then, and every lookup of a neighbouring key (the refcount covering a block,
            // the first entry of a directory) would step over all of them, making a large
            // removal quadratic. It also makes the progress durable.
            self.commit(false)?;
        }
    }

    /// Recovery at open: free an orphan, a directory with its whole detached tree (a snapshot
    /// that was being built, or a tree being removed, when the last process stopped).
    /// One held open (a snapshot's tree being built, a file opened again by handle) is left.
    pub(crate) fn reclaim_orphan(&self, ino: InodeNo) -> Result<()> {
        let dir = self.write(|cx| match cx.try_inode(ino)? {
            _ if cx.mem.open_counts.contains_key(&ino) => Ok(false),
            Some(rec) if rec.kind == FileKind::Directory => Ok(true),
            Some(mut rec) => {
                cx.destroy_inode(ino, &mut rec)?;
                Ok(false)
            }
            None => {
                cx.orphans.remove(ino)?;
                Ok(false)
            }
        })?;
        if dir {
            self.free_tree(ino, false, &mut |_| {})?;
        }
        Ok(())
    }

    /// Free the orphans nothing holds open any more: those whose last release came while the
    /// store was read-only (`Store::set_read_only`), which could not free them then.
    pub(crate) fn reclaim_released_orphans(&self) -> Result<()> {
        let released: Vec<InodeNo> = self.read(|cx| {
            let mut v = Vec::new();
            for item in cx.orphans.iter()? {
                v.push(item?.0);
            }
            Ok(v)
        })?;
        for ino in released {
            self.reclaim_orphan(ino)?;
        }
        Ok(())
    }
}

/// EPERM for an inode `rm` could not remove: immutable or append-only (a read-only snapshot's
/// own flag does not count: removing the whole tree is what it allows).
fn removable(rec: &crate::codec::InodeRecord) -> Result<()> {
    let flags = InodeFlags(rec.flags);
    if flags.intersects(InodeFlags::PRIVILEGED) {
        return Err(Error::NotPermitted);
    }
    Ok(())
}

/// The sticky-bit rule: in a sticky directory only the owner of the entry, the owner of the
/// directory or CAP_FOWNER may remove it.
fn sticky_allows(
    drec: &crate::codec::InodeRecord,
    rec: &crate::codec::InodeRecord,
    cred: &dyn Cred,
) -> bool {
    let uid = cred.caller().uid;
    drec.perm & S_ISVTX == 0
        || uid == rec.uid
        || uid == drec.uid
        || cred.capable(Capability::Fowner)
}

impl Store {
    /// `rm -r parent/name` done in the store: refused (and nothing removed) unless `cred` could
    /// remove every entry of the tree; then the tree leaves the namespace in one operation and is
    /// freed in batches. Returns the entries removed.
    pub fn remove_tree(&self, parent: InodeNo, name: &[u8], cred: &dyn Cred) -> Result<u64> {
        self.remove_tree_with_progress(parent, name, cred, &mut |_| {})
    }

    /// [`Store::remove_tree`], calling `progress` after each batch: the names below DIR
    /// checked ([`TreePhase::Checking`]), then removed ([`TreePhase::Removing`], DIR itself
    /// included, so its total is the count checked plus one).
    pub fn remove_tree_with_progress(
        &self,
        parent: InodeNo,
        name: &[u8],
        cred: &dyn Cred,
        progress: &mut dyn FnMut(TreeProgress),
    ) -> Result<u64> {
        if name == b"." || name == b".." || name.is_empty() {
            return Err(Error::Invalid("cannot remove . or .."));
        }
        let inner = self.inner();
        let (root, kind) = inner.read(|cx| {
            let prec = cx.get_dir(parent)?;
            let d = cx.get_dirent(parent, name)?.ok_or(Error::NotFound)?;
            let rec = cx.get_inode(d.ino)?;
            check_flags(&prec, Change::RemoveEntry)?;
            removable(&rec)?;
            require_reachable(cx, parent, cred)?;
            require(cx, parent, &prec, MAY_WRITE | MAY_EXEC, cred)?;
            if !sticky_allows(&prec, &rec, cred) {
                return Err(Error::NotPermitted);
            }
            Ok((d.ino, d.kind))
        })?;
        if kind != FileKind::Directory {
            self.unlink(parent, name)?;
            progress(TreeProgress {
                phase: TreePhase::Removing,
                done: 1,
                total: Some(1),
            });
            return Ok(1);
        }
        // The walk of rm -r, in read batches: read, write and search on every directory, and
        // every entry removable.
        let mut todo = vec![(root, 0u64)];
        let mut checked = 0u64;
        while !todo.is_empty() {
            inner.read(|cx| {
                let mut left = REMOVE_BATCH;
                while let Some((dir, after)) = todo.pop() {
                    let drec = cx.get_dir(dir)?;
                    if after == 0 {
                        require(cx, dir, &drec, MAY_READ | MAY_WRITE | MAY_EXEC, cred)?;
                    }
                    let mut last = after;
                    let mut full = false;
                    for item in cx.cookies.range((dir, after + 1)..(dir, u64::MAX))? {
                        let (k, n) = item?;
                        last = k.1;
                        let Some(d) = cx.get_dirent(dir, &n)? else {
                            continue;
                        };
                        if let Some(rec) = cx.try_inode(d.ino)? {
                            removable(&rec)?;
                            if !sticky_allows(&drec, &rec, cred) {
                                return Err(Error::NotPermitted);
                            }
                        }
                        if d.kind == FileKind::Directory {
                            todo.push((d.ino, 0));
                        }
                        checked += 1;
                        left -= 1;
                        if left == 0 {
                            full = true;
                            break;
                        }
                    }
                    if full {
                        todo.push((dir, last));
                        break;
                    }
                }
                Ok(())
            })?;
            progress(TreeProgress {
                phase: TreePhase::Checking,
                done: checked,
                total: None,
            });
        }
        // Detach: the tree is gone from the namespace from here on.
        inner.write(|cx| {
            let mut prec = cx.get_dir(parent)?;
            let d = cx.get_dirent(parent, name)?.ok_or(Error::NotFound)?;
            if d.ino != root {
                return Err(Error::NotFound);
            }
            check_flags(&prec, Change::RemoveEntry)?;
            cx.remove_dirent(parent, name)?;
            let now = Timespec::now();
            prec.nlink = prec.nlink.saturating_sub(1).max(2);
            prec.mtime = now;
            prec.ctime = now;
            cx.put_inode(parent, &prec)?;
            let mut rec = cx.get_inode(root)?;
            rec.nlink = 0;
            rec.ctime = now;
            cx.put_inode(root, &rec)?;
            cx.orphans.insert(root, ())?;
            *cx.mem.open_counts.entry(root).or_insert(0) += 1;
            Ok(())
        })?;
        let total = Some(checked + 1);
        inner.free_tree(root, true, &mut |done| {
            progress(TreeProgress {
                phase: TreePhase::Removing,
                done,
                total,
            })
        })
    }
}
