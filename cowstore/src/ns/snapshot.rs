//! Snapshots of a tree: `Store::snapshot` makes DST a copy of SRC as `cp -a` would make it
//! (same kinds, modes, owners, times with ns, xattrs and ACLs, symlink targets, device numbers,
//! hard-link groups inside the tree, holes), but in metadata only: every extent is shared by a
//! refcount, no data block is copied.
//!
//! A directory is built detached, under a new directory that is on the orphan list (no name,
//! link count 0), in bounded batches (each one store operation), and attached under DST's
//! parent by the last batch. A crash before that leaves an orphan tree, which the next open
//! frees (`rmtree`); a failure frees it at once. So DST is either absent or complete.
//!
//! The caller's credentials decide, as they would for `cp -a`: read on every regular file,
//! read and search on every directory of SRC, search on the ancestors of DST's parent and
//! write and search on that parent; `mknod` rights for device nodes; owners kept only with
//! CAP_CHOWN (else the caller's, and setuid/setgid dropped, as cp does when chown fails).

use crate::codec::{decode, encode, DirentRecord, ExtentRecord, InodeRecord};
use crate::error::{Error, Result};
use crate::ns::acl::{Acl, Capability, Cred, Tag, ACL_ACCESS};
use crate::ns::{check_flags, check_name, Change, FIRST_COOKIE, LINK_MAX};
use crate::store::ctx::Ctx;
use crate::store::Store;
use crate::types::{FileKind, InodeAttr, InodeFlags, InodeNo, Timespec};
use std::collections::HashMap;
use std::ops::Bound;

/// Entries cloned per store operation: bounds how long one batch holds the store lock.
pub const SNAPSHOT_BATCH: usize = 2048;

/// Entries counted per read of [`Store::count_tree`].
const COUNT_BATCH: u64 = 8192;

/// How far a tree operation ([`Store::snapshot_with_progress`],
/// [`Store::remove_tree_with_progress`]) is, reported after each of its batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeProgress {
    pub phase: TreePhase,
    /// Entries (names) done in this phase so far.
    pub done: u64,
    /// Entries this phase does in all, once known: counting and checking find it out for the
    /// phase after them. It is exact unless the tree changes meanwhile.
    pub total: Option<u64>,
}

/// The phases of a tree operation, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreePhase {
    /// A snapshot counts the names of SRC first (metadata only: one scan of each directory's
    /// entries), so that copying has a total.
    Counting,
    /// A snapshot clones: SRC itself, then each name below it.
    Copying,
    /// A removal checks that every entry may be removed (`rm -r`'s rights), counting them.
    Checking,
    /// A removal unlinks each name, then DIR itself.
    Removing,
}

/// Bits of an access check (`MAY_READ`, `MAY_WRITE`, `MAY_EXEC`).
pub(crate) const MAY_READ: u16 = 4;
pub(crate) const MAY_WRITE: u16 = 2;
pub(crate) const MAY_EXEC: u16 = 1;

/// How to make a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// Every inode of the snapshot refuses every change with EROFS
    /// ([`InodeFlags::READONLY`]); only `Store::remove_tree` removes it.
    pub readonly: bool,
}

/// Whether `cred` may access `rec` (inode `ino`) for `want` (`MAY_*` bits), as the kernel's
/// `generic_permission` decides: CAP_DAC_OVERRIDE (execute only when some execute bit is set,
/// or a directory), CAP_DAC_READ_SEARCH for reading and searching, then the owner bits, the
/// access ACL if the inode has one, the group bits and the other bits.
pub(crate) fn may(
    cx: &Ctx<'_>,
    ino: InodeNo,
    rec: &InodeRecord,
    want: u16,
    cred: &dyn Cred,
) -> Result<bool> {
    let dir = rec.kind == FileKind::Directory;
    if cred.capable(Capability::DacOverride)
        && (want & MAY_EXEC == 0 || dir || rec.perm & 0o111 != 0)
    {
        return Ok(true);
    }
    if want & MAY_WRITE == 0
        && (want & MAY_EXEC == 0 || dir)
        && cred.capable(Capability::DacReadSearch)
    {
        return Ok(true);
    }
    let caller = cred.caller();
    let bits = |shift: u16| (rec.perm >> shift) & 7;
    if caller.uid == rec.uid {
        return Ok(bits(6) & want == want);
    }
    if let Some(acl) = cx.stored_acl(ino, ACL_ACCESS)? {
        return Ok(acl_permits(&acl, rec, want, cred));
    }
    if cred.in_group(rec.gid) {
        return Ok(bits(3) & want == want);
    }
    Ok(bits(0) & want == want)
}

/// The kernel's `posix_acl_permission` for a caller that does not own the inode.
fn acl_permits(acl: &Acl, rec: &InodeRecord, want: u16, cred: &dyn Cred) -> bool {
    let uid = cred.caller().uid;
    let mask = acl
        .entries()
        .iter()
        .find(|e| e.tag == Tag::Mask)
        .map_or(7, |e| e.perm);
    let mut group_found = false;
    for e in acl.entries() {
        match e.tag {
            Tag::User if e.id == uid => return e.perm & mask & want == want,
            Tag::GroupObj if cred.in_group(rec.gid) => {
                group_found = true;
                if e.perm & mask & want == want {
                    return true;
                }
            }
            Tag::Group if cred.in_group(e.id) => {
                group_found = true;
                if e.perm & mask & want == want {
                    return true;
                }
            }
            Tag::Other if !group_found => return e.perm & want == want,
            _ => {}
        }
    }
    false
}

/// EACCES unless `cred` may access `rec` for `want`.
pub(crate) fn require(
    cx: &Ctx<'_>,
    ino: InodeNo,
    rec: &InodeRecord,
    want: u16,
    cred: &dyn Cred,
) -> Result<()> {
    if may(cx, ino, rec, want, cred)? {
        Ok(())
    } else {
        Err(Error::Denied)
    }
}

/// Search permission on every directory from the root down to `dir`'s parent: `dir` was named
/// by inode number, so the caller must be able to reach it by a path.
pub(crate) fn require_reachable(cx: &Ctx<'_>, dir: InodeNo, cred: &dyn Cred) -> Result<()> {
    let mut cur = dir;
    for _ in 0..100_000 {
        if cur == InodeNo::ROOT {
            return Ok(());
        }
        let parent = cx.get_dir(cur)?.parent;
        let prec = cx.get_dir(parent)?;
        require(cx, parent, &prec, MAY_EXEC, cred)?;
        cur = parent;
    }
    Err(Error::corrupt(format!(
        "directory {dir} has a parent cycle"
    )))
}

/// A directory whose entries are still to be cloned: source, its copy, and the cookie after
/// which the next batch continues.
#[derive(Clone, Copy, Debug)]
struct Frame {
    src: InodeNo,
    dst: InodeNo,
    after: u64,
}

/// The state of one snapshot between its batches.
struct Build<'c> {
    cred: &'c dyn Cred,
    opts: SnapshotOptions,
    /// Source inode → its copy, for source inodes with more than one link (hard-link groups).
    links: HashMap<InodeNo, InodeNo>,
    todo: Vec<Frame>,
    /// The detached root of the copy, and its subdirectories so far (its link count stays 0
    /// until it is attached, as for every orphan).
    root: InodeNo,
    root_subdirs: u32,
    /// Entries cloned so far.
    done: u64,
    now: Timespec,
}

impl Build<'_> {
    /// The copy of `srec`: attributes as `cp -a` leaves them (times, mode, owner when allowed),
    /// a new ctime and birth time, no `chattr` flags but the snapshot's own.
    fn copy_record(
        &self,
        cx: &Ctx<'_>,
        srec: &InodeRecord,
        parent: InodeNo,
    ) -> Result<InodeRecord> {
        let mut rec = srec.clone();
        let caller = self.cred.caller();
        if !self.cred.capable(Capability::Chown) {
            let gid = if self.cred.in_group(srec.gid) {
                srec.gid
            } else {
                caller.gid
            };
            if caller.uid != srec.uid || gid != srec.gid {
                rec.perm &= !0o6000;
            }
            rec.uid = caller.uid;
            rec.gid = gid;
        }
        if matches!(srec.kind, FileKind::CharDevice | FileKind::BlockDevice)
            && !self.cred.capable(Capability::Mknod)
        {
            return Err(Error::NotPermitted);
        }
        rec.nlink = if srec.kind == FileKind::Directory {
            2
        } else {
            1
        };
        rec.ctime = self.now;
        rec.crtime = self.now;
        rec.generation = cx.mem.state.generation;
        rec.next_cookie = FIRST_COOKIE;
        rec.parent = parent;
        rec.flags = if self.opts.readonly {
            InodeFlags::READONLY.0
        } else {
            0
        };
        Ok(rec)
    }

    /// Share `src`'s extents with `dst` and copy the xattrs the caller could copy.
    fn copy_contents(
        &self,
        cx: &mut Ctx<'_>,
        src: InodeNo,
        srec: &InodeRecord,
        dst: InodeNo,
    ) -> Result<()> {
        if srec.kind == FileKind::Regular {
            let mut exts = Vec::new();
            for item in cx.extents.range((src, 0)..=(src, u64::MAX))? {
                let (k, v) = item?;
                exts.push((k.1, decode::<ExtentRecord>(&v, &k)?));
            }
            for (fb, e) in exts {
                // Lower data is immutable and uncounted: sharing it is copying the extent.
                if e.lower == 0 {
                    cx.incref(e.pool_run())?;
                }
                cx.extents.insert((dst, fb), encode(&e).as_slice())?;
            }
        }
        let empty: &[u8] = &[];
        let mut xattrs = Vec::new();
        for item in cx.xattrs.range((src, empty)..)? {
            let (k, v) = item?;
            if k.0 != src {
                break;
            }
            if self.copies_xattr(&k.1) {
                xattrs.push((k.1, v));
            }
        }
        for (name, v) in xattrs {
            cx.xattrs.insert((dst, name.as_slice()), v.as_slice())?;
        }
        Ok(())
    }

    /// cp -a copies every xattr it can read and set: user.* and ACLs always; trusted.* and
    /// security.* only with CAP_SYS_ADMIN (unreadable, or not settable, otherwise).
    fn copies_xattr(&self, name: &[u8]) -> bool {
        name.starts_with(b"user.")
            || name.starts_with(b"system.posix_acl_")
            || self.cred.capable(Capability::SysAdmin)
    }

    /// Clone one inode `src` (not yet cloned) under `parent`; returns the copy's number.
    fn clone_inode(
        &mut self,
        cx: &mut Ctx<'_>,
        src: InodeNo,
        srec: &InodeRecord,
        parent: InodeNo,
    ) -> Result<InodeNo> {
        let want = match srec.kind {
            FileKind::Directory => MAY_READ | MAY_EXEC,
            FileKind::Regular => MAY_READ,
            _ => 0,
        };
        if want != 0 {
            require(cx, src, srec, want, self.cred)?;
        }
        let rec = self.copy_record(cx, srec, parent)?;
        let ino = cx.alloc_ino();
        self.copy_contents(cx, src, srec, ino)?;
        cx.put_inode(ino, &rec)?;
        cx.mem.state.inodes += 1;
        if srec.kind != FileKind::Directory && srec.nlink > 1 {
            self.links.insert(src, ino);
        }
        self.done += 1;
        Ok(ino)
    }

    /// One batch: clone up to `budget` entries of the directories still to do.
    fn batch(&mut self, cx: &mut Ctx<'_>, budget: usize) -> Result<()> {
        let mut left = budget;
        while left > 0 {
            let Some(mut f) = self.todo.pop() else {
                return Ok(());
            };
            cx.ensure_imported(f.src)?;
            let mut names = Vec::new();
            for item in cx.cookies.range((f.src, f.after + 1)..(f.src, u64::MAX))? {
                let (k, name) = item?;
                names.push((k.1, name));
                if names.len() >= left {
                    break;
                }
            }
            let mut drec = cx.get_inode(f.dst)?;
            let full = names.len() >= left;
            for (cookie, name) in names {
                let d = cx.get_dirent(f.src, &name)?.ok_or_else(|| {
                    Error::corrupt(format!(
                        "directory {}: cookie {cookie} names a missing entry",
                        f.src
                    ))
                })?;
                let ino = match self.links.get(&d.ino).copied() {
                    Some(copy) => {
                        let mut r = cx.get_inode(copy)?;
                        if r.nlink >= LINK_MAX {
                            return Err(Error::TooManyLinks);
                        }
                        r.nlink += 1;
                        cx.put_inode(copy, &r)?;
                        self.done += 1;
                        copy
                    }
                    None => {
                        let srec = cx.get_inode(d.ino)?;
                        let copy = self.clone_inode(cx, d.ino, &srec, f.dst)?;
                        if srec.kind == FileKind::Directory {
                            if f.dst == self.root {
                                self.root_subdirs += 1;
                            } else {
                                drec.nlink += 1;
                            }
                            self.todo.push(Frame {
                                src: d.ino,
                                dst: copy,
                                after: 0,
                            });
                        }
                        copy
                    }
                };
                cx.add_dirent(f.dst, &mut drec, &name, ino, d.kind)?;
                f.after = cookie;
                left -= 1;
            }
            cx.put_inode(f.dst, &drec)?;
            if full {
                // The budget ran out inside this directory: continue it next batch.
                self.todo.push(f);
            }
        }
        Ok(())
    }
}

impl Ctx<'_> {
    /// Attach the detached root `root` as `parent/name` (the last batch of a snapshot).
    fn attach(&mut self, root: InodeNo, subdirs: u32, parent: InodeNo, name: &[u8]) -> Result<()> {
        let mut prec = self.get_dir(parent)?;
        if prec.nlink == 0 {
            return Err(Error::NotFound);
        }
        check_flags(&prec, Change::AddEntry)?;
        if self.get_dirent(parent, name)?.is_some() {
            return Err(Error::Exists);
        }
        if prec.nlink >= LINK_MAX {
            return Err(Error::TooManyLinks);
        }
        let mut rec = self.get_dir(root)?;
        rec.nlink = 2 + subdirs;
        rec.parent = parent;
        self.orphans.remove(root)?;
        *self.mem.open_counts.entry(root).or_insert(1) -= 1;
        if self.mem.open_counts.get(&root) == Some(&0) {
            self.mem.open_counts.remove(&root);
        }
        self.add_dirent(parent, &mut prec, name, root, FileKind::Directory)?;
        let now = Timespec::now();
        prec.nlink += 1;
        prec.mtime = now;
        prec.ctime = now;
        self.put_inode(parent, &prec)?;
        self.put_inode(root, &rec)
    }
}

impl Store {
    /// `cowfs snapshot SRC DST`: make `dst_parent/name` a copy of the tree (or single inode)
    /// `src` as `cp -a` would make it, sharing every extent; see the module documentation.
    pub fn snapshot(
        &self,
        src: InodeNo,
        dst_parent: InodeNo,
        name: &[u8],
        opts: &SnapshotOptions,
        cred: &dyn Cred,
    ) -> Result<InodeAttr> {
        self.snapshot_batches(src, dst_parent, name, opts, cred, &mut |_| {})
    }

    /// Entries (names) below directory `dir`, each name once (a hard link counts once per
    /// name), `dir` itself not counted; 0 for a file. Metadata only: a scan of each directory's
    /// entries, in reads of a bounded size (overlay: a directory's lower entries are imported
    /// first, as a snapshot would). `progress` gets the count so far after each read.
    pub fn count_tree(&self, dir: InodeNo, progress: &mut dyn FnMut(u64)) -> Result<u64> {
        let inner = self.inner();
        if inner.read(|cx| cx.get_inode(dir))?.kind != FileKind::Directory {
            return Ok(0);
        }
        let empty: &[u8] = &[];
        // (directory, the last name counted in it).
        let mut todo: Vec<(InodeNo, Option<Vec<u8>>)> = vec![(dir, None)];
        let mut n = 0u64;
        while let Some((d, after)) = todo.pop() {
            if after.is_none() {
                self.import(d)?;
            }
            let (subdirs, seen, resume) = inner.read(|cx| {
                let lo = match &after {
                    Some(name) => Bound::Excluded((d, name.as_slice())),
                    None => Bound::Included((d, empty)),
                };
                let hi = match d.0.checked_add(1) {
                    Some(next) => Bound::Excluded((InodeNo(next), empty)),
                    None => Bound::Unbounded,
                };
                let mut subdirs = Vec::new();
                let mut seen = 0u64;
                for item in cx.dirents.range((lo, hi))? {
                    let (k, v) = item?;
                    let rec: DirentRecord = decode(&v, &k)?;
                    if rec.kind == FileKind::Directory {
                        subdirs.push(rec.ino);
                    }
                    seen += 1;
                    if seen == COUNT_BATCH {
                        return Ok((subdirs, seen, Some(k.1)));
                    }
                }
                Ok((subdirs, seen, None))
            })?;
            n += seen;
            if let Some(last) = resume {
                todo.push((d, Some(last)));
            }
            todo.extend(subdirs.into_iter().map(|s| (s, None)));
            progress(n);
        }
        Ok(n)
    }

    /// [`Store::snapshot`], calling `progress` after each batch: a directory's names are
    /// counted first ([`TreePhase::Counting`], see [`Store::count_tree`]), then copied
    /// ([`TreePhase::Copying`], SRC itself included, so its total is the count plus one).
    pub fn snapshot_with_progress(
        &self,
        src: InodeNo,
        dst_parent: InodeNo,
        name: &[u8],
        opts: &SnapshotOptions,
        cred: &dyn Cred,
        progress: &mut dyn FnMut(TreeProgress),
    ) -> Result<InodeAttr> {
        check_name(name)?;
        let total = 1 + self.count_tree(src, &mut |done| {
            progress(TreeProgress {
                phase: TreePhase::Counting,
                done,
                total: None,
            })
        })?;
        self.snapshot_batches(src, dst_parent, name, opts, cred, &mut |done| {
            progress(TreeProgress {
                phase: TreePhase::Copying,
                done,
                total: Some(total),
            })
        })
    }

    /// The snapshot itself, calling `progress` with the entries cloned so far after each batch.
    fn snapshot_batches(
        &self,
        src: InodeNo,
        dst_parent: InodeNo,
        name: &[u8],
        opts: &SnapshotOptions,
        cred: &dyn Cred,
        progress: &mut dyn FnMut(u64),
    ) -> Result<InodeAttr> {
        check_name(name)?;
        if name == b"." || name == b".." {
            return Err(Error::Exists);
        }
        let mut b = Build {
            cred,
            opts: *opts,
            links: HashMap::new(),
            todo: Vec::new(),
            root: InodeNo(0),
            root_subdirs: 0,
            done: 0,
            now: Timespec::now(),
        };
        let inner = self.inner();
        // Batch 0: the checks that need no walk, and the copy of SRC itself. A non-directory is
        // done here, attached in the same operation.
        let attached = inner.write(|cx| {
            let (src, parent) = (src, dst_parent);
            let prec = cx.get_dir(parent)?;
            if prec.nlink == 0 {
                return Err(Error::NotFound);
            }
            require_reachable(cx, parent, cred)?;
            require(cx, parent, &prec, MAY_WRITE | MAY_EXEC, cred)?;
            check_flags(&prec, Change::AddEntry)?;
            if cx.get_dirent(parent, name)?.is_some() {
                return Err(Error::Exists);
            }
            let srec = cx.get_inode(src)?;
            if srec.nlink == 0 {
                return Err(Error::NotFound);
            }
            if srec.kind != FileKind::Directory {
                let mut prec = prec;
                let ino = b.clone_inode(cx, src, &srec, parent)?;
                cx.add_dirent(parent, &mut prec, name, ino, srec.kind)?;
                prec.mtime = b.now;
                prec.ctime = b.now;
                cx.put_inode(parent, &prec)?;
                return Ok(Some(ino));
            }
            if cx.is_ancestor(src, parent)? {
                return Err(Error::Invalid("snapshot of a directory into itself"));
            }
            let root = b.clone_inode(cx, src, &srec, parent)?;
            let mut rec = cx.get_inode(root)?;
            rec.nlink = 0;
            cx.put_inode(root, &rec)?;
            cx.orphans.insert(root, ())?;
            // Held open by the snapshot itself, so nothing frees it under the build.
            *cx.mem.open_counts.entry(root).or_insert(0) += 1;
            b.root = root;
            b.todo.push(Frame {
                src,
                dst: root,
                after: 0,
            });
            Ok(None)
        })?;
        if let Some(ino) = attached {
            progress(b.done);
            return self.getattr(ino);
        }
        let built = (|| {
            while !b.todo.is_empty() {
                inner.write(|cx| b.batch(cx, SNAPSHOT_BATCH))?;
                progress(b.done);
            }
            let (root, subdirs) = (b.root, b.root_subdirs);
            inner.write(|cx| cx.attach(root, subdirs, dst_parent, name))
        })();
        if let Err(e) = built {
            // Not attached: free what was built (a crash meanwhile leaves it to the next open).
            if let Err(e2) = inner.free_tree(b.root, true, &mut |_| {}) {
                log::warn!(
                    "snapshot: the partial copy {} stays an orphan: {e2}",
                    b.root
                );
            }
            return Err(e);
        }
        self.getattr(b.root)
    }
}
