//! The store's operations: namespace, data, xattrs and space, each one atomic operation in the
//! open transaction (see `txn`).

use super::txn::Inner;
use crate::codec::{decode, InodeRecord};
use crate::error::{Error, Result};
use crate::file::{require_regular, touch_data, Source, WritePlan, MAX_FILE_SIZE};
use crate::io::FileIo;
use crate::ns::acl::{self, Cred};
use crate::ns::{check_flags, Change, NAME_MAX};
use crate::overlay::{LowerFile, LowerHold, IMPORT_BATCH};
use crate::store::ctx::Ctx;
use crate::superblock::Superblock;
use crate::types::*;
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

/// The segments of a read, with the pool blocks they name held against reuse until dropped.
#[derive(Debug)]
pub struct PinnedRead {
    segments: Vec<Segment>,
    lower: Vec<(u64, Arc<LowerFile>)>,
    _pin: crate::store::ctx::Pin,
}

impl PinnedRead {
    /// The open lower file a `Segment::Lower` of this read names.
    pub fn lower_file(&self, id: u64) -> Option<&std::fs::File> {
        self.lower
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, f)| &f.file)
    }
}

impl std::ops::Deref for PinnedRead {
    type Target = [Segment];
    fn deref(&self) -> &[Segment] {
        &self.segments
    }
}

/// An open store. All methods take `&self` and may be called from many threads.
pub struct Store {
    pub(super) inner: Arc<Inner>,
    pub(super) committer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.env.path())
            .field("block_size", &self.inner.bs)
            .finish()
    }
}

impl Store {
    pub fn block_size(&self) -> u32 {
        self.inner.sb.block_size
    }

    pub fn superblock(&self) -> &Superblock {
        &self.inner.sb
    }

    /// Whether the store refuses changes: opened read-only, or made read-only since
    /// ([`Store::set_read_only`]).
    pub fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }

    /// Make an open store read-only, or writable again (`mount -o remount,ro` and `rw`).
    ///
    /// Going read-only refuses every change from here on with [`Error::ReadOnly`] (an operation
    /// already running finishes first), records no access time, and commits what was changed
    /// before, once: after it returns `Ok` no commit changes the store until it is writable
    /// again (or closed, which marks it cleanly closed). If that commit fails, the error is
    /// returned and the store stays read-only; its commits keep trying (the periodic one, sync)
    /// until one succeeds. A lower directory's entries still come in as directories are first
    /// listed, into memory only; they are committed once the store is writable.
    ///
    /// Going writable again frees what was released meanwhile (files unlinked while open and
    /// closed while read-only, which stay orphans then). A store opened read-only cannot become
    /// writable ([`Error::ReadOnly`]).
    pub fn set_read_only(&self, read_only: bool) -> Result<()> {
        let inner = &self.inner;
        if inner.read_only {
            return if read_only {
                Ok(())
            } else {
                Err(Error::ReadOnly)
            };
        }
        if read_only {
            {
                // Under the state lock: every operation checks it there (`Inner::write`).
                let _st = inner.state.lock();
                if inner.frozen.swap(true, Ordering::SeqCst) {
                    return Ok(());
                }
                inner.freeze_pending.store(true, Ordering::SeqCst);
            }
            return inner.commit(false);
        }
        if !inner.frozen.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        inner.freeze_pending.store(false, Ordering::SeqCst);
        // Writable either way; what cannot be freed now stays an orphan for the next open.
        if let Err(e) = inner.reclaim_released_orphans() {
            log::warn!("orphans released while read-only stay until the next open: {e}");
        }
        Ok(())
    }

    /// The pool file, for callers that move its bytes with splice or copy_file_range.
    pub fn pool(&self) -> Arc<dyn FileIo> {
        self.inner.pool.clone()
    }

    /// Commits made by this process so far.
    pub fn commit_count(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Make every change so far durable (group commit: concurrent callers share one commit).
    ///
    /// A commit that fails leaves every change in memory, to be committed by the next try; the
    /// failure is counted in [`Store::error_seq`], and each later call fails too until a commit
    /// succeeds. Nothing is ever reported durable that is not.
    pub fn commit(&self) -> Result<()> {
        self.inner.commit(false)
    }

    /// How many commits have failed so far. An fsync that sampled a smaller number when its
    /// file was opened (or at its last fsync) must report an error: data written through it
    /// may be lost (the errseq semantics of Linux writeback errors).
    pub fn error_seq(&self) -> u64 {
        self.inner.failed_commits.load(Ordering::SeqCst)
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    // ------------------------------------------------------------------ namespace

    pub fn getattr(&self, ino: InodeNo) -> Result<InodeAttr> {
        // A directory's link count is only right once its lower entries are in. A directory
        // that cannot be imported (unreadable below) is still shown, with the link count it has
        // so far: listing its parent stats it, and one unreadable entry must not make the
        // parent unlistable. Looking into it gets the error.
        if let Err(e) = self.import(ino) {
            log::debug!("getattr of {}: lower entries not imported: {e}", ino.0);
        }
        self.inner
            .read(|cx| Ok(self.attr(ino, &cx.get_inode(ino)?)))
    }

    /// The attributes of entry `name` of `parent` (which is imported first; the entry itself
    /// is not: see [`Store::readdir_plus`] for the link count of a directory still pending).
    pub fn lookup(&self, parent: InodeNo, name: &[u8]) -> Result<InodeAttr> {
        self.import(parent)?;
        self.inner.read(|cx| {
            let ino = cx.lookup(parent, name)?;
            self.listed_attr(cx, ino, &cx.get_inode(ino)?)
        })
    }

    pub fn create(
        &self,
        parent: InodeNo,
        name: &[u8],
        new: &NewInode,
        caller: Caller,
    ) -> Result<InodeAttr> {
        self.import(parent)?;
        self.inner.write(|cx| {
            let (ino, rec) = cx.create(parent, name, new, caller, 0)?;
            Ok(self.attr(ino, &rec))
        })
    }

    /// Create as FUSE asks (create, mknod, mkdir): `new.perm` is the mode before the caller's
    /// `umask`, which applies unless `parent` has a default ACL, inherited instead, as on ext4.
    /// `open`: count the new inode open (FUSE create).
    pub fn create_unmasked(
        &self,
        parent: InodeNo,
        name: &[u8],
        new: &NewInode,
        caller: Caller,
        umask: u32,
        open: bool,
    ) -> Result<InodeAttr> {
        self.inner.write(|cx| {
            let umask = (umask & 0o777) as u16;
            let (ino, rec) = cx.create(parent, name, new, caller, umask)?;
            if open {
                *cx.mem.open_counts.entry(ino).or_insert(0) += 1;
            }
            Ok(self.attr(ino, &rec))
        })
    }

    /// Create a regular file and count it open (for FUSE `create`).
    pub fn create_open(
        &self,
        parent: InodeNo,
        name: &[u8],
        perm: u32,
        caller: Caller,
    ) -> Result<InodeAttr> {
        self.import(parent)?;
        self.inner.write(|cx| {
            let new = NewInode::regular(perm);
            let (ino, rec) = cx.create(parent, name, &new, caller, 0)?;
            *cx.mem.open_counts.entry(ino).or_insert(0) += 1;
            Ok(self.attr(ino, &rec))
        })
    }

    pub fn mkdir(
        &self,
        parent: InodeNo,
        name: &[u8],
        perm: u32,
        caller: Caller,
    ) -> Result<InodeAttr> {
        self.create(
            parent,
            name,
            &NewInode::new(FileKind::Directory, perm, 0),
            caller,
        )
    }

    pub fn symlink(
        &self,
        parent: InodeNo,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<InodeAttr> {
        let new = NewInode {
            kind: FileKind::Symlink,
            perm: 0o777,
            rdev: 0,
            symlink_target: Some(target.to_vec()),
        };
        self.create(parent, name, &new, caller)
    }

    pub fn readlink(&self, ino: InodeNo) -> Result<Vec<u8>> {
        self.inner.read(|cx| {
            let rec = cx.get_inode(ino)?;
            if rec.kind != FileKind::Symlink {
                return Err(Error::Invalid("not a symlink"));
            }
            Ok(rec.target)
        })
    }

    pub fn link(&self, ino: InodeNo, newparent: InodeNo, newname: &[u8]) -> Result<InodeAttr> {
        self.import(newparent)?;
        self.inner.write(|cx| {
            let rec = cx.link(ino, newparent, newname)?;
            Ok(self.attr(ino, &rec))
        })
    }

    pub fn unlink(&self, parent: InodeNo, name: &[u8]) -> Result<()> {
        self.import(parent)?;
        self.inner.write(|cx| cx.unlink(parent, name))
    }

    pub fn rmdir(&self, parent: InodeNo, name: &[u8]) -> Result<()> {
        self.import(parent)?;
        self.import_child(parent, name)?;
        self.inner.write(|cx| cx.rmdir(parent, name))
    }

    pub fn rename(
        &self,
        parent: InodeNo,
        name: &[u8],
        newparent: InodeNo,
        newname: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.import(parent)?;
        self.import(newparent)?;
        self.import_child(newparent, newname)?;
        self.inner
            .write(|cx| cx.rename(parent, name, newparent, newname, flags, None))
    }

    /// `renameat2(RENAME_WHITEOUT)`: rename, and leave a whiteout (a character device 0:0,
    /// mode 0, owned by `owner`) under the source name, in one atomic operation.
    pub fn rename_whiteout(
        &self,
        parent: InodeNo,
        name: &[u8],
        newparent: InodeNo,
        newname: &[u8],
        flags: RenameFlags,
        owner: Caller,
    ) -> Result<()> {
        self.inner
            .write(|cx| cx.rename(parent, name, newparent, newname, flags, Some(owner)))
    }

    /// Up to `limit` entries after cookie `offset` (0 = from the start, with "." and ".."),
    /// whenever they were added.
    pub fn readdir(&self, dir: InodeNo, offset: u64, limit: usize) -> Result<Vec<DirEntry>> {
        self.readdir_until(dir, offset, u64::MAX, limit)
    }

    /// Up to `limit` entries after cookie `offset` and before cookie `end`: the listing of a
    /// directory stream that began (opendir or rewind) when [`Store::dir_end`] said `end`.
    /// Entries created or renamed into the directory since then have cookies at or past `end`,
    /// so the stream never returns an entry twice, however the directory changes under it.
    pub fn readdir_until(
        &self,
        dir: InodeNo,
        offset: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<DirEntry>> {
        self.import(dir)?;
        self.inner.read(|cx| cx.readdir(dir, offset, end, limit))
    }

    /// [`Store::readdir_until`] with each entry's attributes, read in the same store operation
    /// (FUSE readdirplus: one call per batch instead of a getattr per entry).
    ///
    /// Only `dir` is imported, never its subdirectories. A subdirectory still pending import
    /// has none of its own subdirectories counted yet, so its link count is not known without
    /// reading its lower directory: it is reported as 1, as [`Store::lookup`] reports it, the
    /// convention for "subdirectories not counted" (btrfs reports 1 for every directory), which
    /// tools that infer the number of subdirectories from the link count (`nlink - 2`, the
    /// "leaf optimization" of find and fts) take as "unknown" rather than as "none". Its exact
    /// count comes with [`Store::getattr`], which imports it: the kernel asks for that once the
    /// attributes it was given expire, and on any look into the directory.
    ///
    /// An entry whose inode is gone is left out: ".." of a removed directory still open whose
    /// parent was freed since, or a dangling entry (corruption, logged, which `check` reports),
    /// so that one bad entry does not make the whole directory unlistable.
    pub fn readdir_plus(
        &self,
        dir: InodeNo,
        offset: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<(DirEntry, InodeAttr)>> {
        self.import(dir)?;
        self.inner.read(|cx| {
            let entries = cx.readdir(dir, offset, end, limit)?;
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                match cx.try_inode(e.ino)? {
                    Some(rec) => {
                        let a = self.listed_attr(cx, e.ino, &rec)?;
                        out.push((e, a));
                    }
                    None if e.name == b".." => {}
                    None => log::warn!(
                        "directory {}: entry {:?} names inode {}, which does not exist",
                        dir.0,
                        String::from_utf8_lossy(&e.name),
                        e.ino.0
                    ),
                }
            }
            Ok(out)
        })
    }

    /// Where a directory stream that begins now ends: the cookie the directory's next entry
    /// will get.
    pub fn dir_end(&self, dir: InodeNo) -> Result<u64> {
        self.import(dir)?;
        self.inner.read(|cx| Ok(cx.get_dir(dir)?.next_cookie))
    }

    /// Open a directory stream: the directory is counted open like a file (removed while open,
    /// it stays an orphan answering getattr until [`Store::releasedir`]); returns where the
    /// stream ends (see [`Store::readdir_until`]) and the directory's attributes.
    pub fn opendir(&self, dir: InodeNo) -> Result<(u64, InodeAttr)> {
        self.import(dir)?;
        self.inner.write_unchecked(|cx| {
            let rec = cx.get_dir(dir)?;
            *cx.mem.open_counts.entry(dir).or_insert(0) += 1;
            Ok((rec.next_cookie, self.attr(dir, &rec)))
        })
    }

    /// Close a directory stream; the last close of a removed directory frees it.
    pub fn releasedir(&self, dir: InodeNo) -> Result<()> {
        self.release(dir)
    }

    /// Record an access (a read, a listing) under `policy`: the access time becomes now when
    /// the policy and the inode's `noatime` flag say so. The change rides the next commit;
    /// nothing is committed here, and a read-only store records nothing.
    pub fn touch_atime(&self, ino: InodeNo, policy: AtimePolicy) -> Result<()> {
        if self.inner.is_read_only() || policy.mode == AtimeMode::Never {
            return Ok(());
        }
        let now = Timespec::now();
        let due = |rec: &InodeRecord| {
            policy.due_for(
                rec.kind,
                InodeFlags(rec.flags),
                rec.atime,
                rec.mtime,
                rec.ctime,
                now,
            )
        };
        // Most accesses change nothing (relatime): find out under the shared path first.
        if !self.inner.read(|cx| Ok(due(&cx.get_inode(ino)?)))? {
            return Ok(());
        }
        let touched = self.inner.write(|cx| {
            let mut rec = cx.get_inode(ino)?;
            if due(&rec) {
                rec.atime = now;
                cx.put_inode(ino, &rec)?;
            }
            Ok(())
        });
        match touched {
            // Made read-only since the check above: the access is not recorded.
            Err(Error::ReadOnly) => Ok(()),
            r => r,
        }
    }

    /// FS_IOC_SETFLAGS by `caller` (see [`InodeFlags`] for what each flag forbids).
    pub fn set_flags(&self, ino: InodeNo, flags: InodeFlags, caller: Caller) -> Result<InodeAttr> {
        self.inner.write(|cx| {
            let rec = cx.set_flags(ino, flags, caller)?;
            Ok(self.attr(ino, &rec))
        })
    }

    /// Overlay: import a directory's lower entries before it is first looked into.
    ///
    /// The lower directory is listed and its entries examined with no store lock held (a lower
    /// filesystem may be slow, or hung); the entries are imported in batches of
    /// [`IMPORT_BATCH`], each its own store operation, so memory and the open transaction stay
    /// bounded and other operations run between batches. A batch imports only names the
    /// directory does not have yet: nothing but an import changes a directory that is still
    /// pending (every other operation imports it first), so those are exactly the names earlier
    /// batches (or an earlier, failed or interrupted import) brought in, and an import that
    /// stopped halfway — an error, a crash — resumes where it stopped. The last batch marks the
    /// directory imported.
    pub(crate) fn import(&self, dir: InodeNo) -> Result<()> {
        let Some(tree) = self.inner.lower.as_deref() else {
            return Ok(());
        };
        let Some(rel) = self.inner.read(|cx| cx.import_pending(dir))? else {
            return Ok(());
        };
        let ldir = tree.dir(&rel)?;
        let names = ldir.names()?;
        let batches = names.len().div_ceil(IMPORT_BATCH).max(1);
        for (i, chunk) in (0..batches).map(|i| {
            let end = names.len().min((i + 1) * IMPORT_BATCH);
            (i, &names[(i * IMPORT_BATCH).min(end)..end])
        }) {
            let todo = self.inner.read(|cx| match cx.import_pending(dir)? {
                Some(_) => cx.not_imported(dir, chunk).map(Some),
                None => Ok(None),
            })?;
            // None: another thread finished the import meanwhile.
            let Some(todo) = todo else { return Ok(()) };
            let last = i + 1 == batches;
            if todo.is_empty() && !last {
                continue;
            }
            let entries = ldir.entries(i, &todo)?;
            // Also into a read-only store: a store opened read-only imports into its scratch
            // transaction, never committed; one made read-only keeps it for its next commit
            // once writable.
            self.inner
                .write_unchecked(|cx| cx.import_entries(dir, &entries, last))?;
        }
        Ok(())
    }

    /// Overlay: import entry `name` of `parent` if it is a directory still pending (before an
    /// operation that needs to know whether it is empty).
    fn import_child(&self, parent: InodeNo, name: &[u8]) -> Result<()> {
        if self.inner.lower.is_none() {
            return Ok(());
        }
        let child = self.inner.read(|cx| {
            Ok(cx
                .get_dirent(parent, name)?
                .filter(|d| d.kind == FileKind::Directory)
                .map(|d| d.ino))
        })?;
        match child {
            Some(c) => self.import(c),
            None => Ok(()),
        }
    }

    /// Overlay: open and verify, before the operation takes the store lock, the lower files
    /// that blocks `ranges` (first block, count) of `ino` map, and hold them for it: a write's
    /// copy-up then finds them open (see docs/design.md §4.1 for the lower I/O that remains
    /// under the lock).
    fn hold_lower(&self, ino: InodeNo, ranges: &[(u64, u64)]) -> Result<Option<LowerHold>> {
        let Some(tree) = self.inner.lower.as_ref() else {
            return Ok(None);
        };
        let files = self.inner.read(|cx| {
            let mut v: Vec<(u64, crate::codec::LowerFileRecord)> = Vec::new();
            for &(fb, n) in ranges {
                for f in cx.lower_files_in(ino, fb, n)? {
                    if !v.iter().any(|(id, _)| *id == f.0) {
                        v.push(f);
                    }
                }
            }
            Ok(v)
        })?;
        if files.is_empty() {
            return Ok(None);
        }
        tree.hold(&files).map(Some)
    }

    /// The first and the last block of bytes `[off, off+len)`: where a write carries old bytes
    /// over into a new block.
    fn edge_blocks(&self, off: u64, len: u64) -> [(u64, u64); 2] {
        let bs = self.inner.bs;
        let last = off.saturating_add(len.max(1) - 1) / bs;
        [(off / bs, 1), (last, 1)]
    }

    /// The overlay's lower directory, if the store has one.
    pub fn lower_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.lower.as_ref().map(|l| l.path.clone())
    }

    /// Overlay: lower files that changed since they were imported (lower file id, path, what
    /// changed). The records are read a batch at a time and the lower files examined with no
    /// lock held.
    pub fn lower_changes(&self) -> Result<Vec<(u64, String, String)>> {
        let Some(tree) = self.inner.lower.clone() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut from = 0u64;
        loop {
            let batch = self.inner.read(|cx| {
                let mut v = Vec::new();
                for item in cx.lower_files.range(from..)? {
                    let (k, val) = item?;
                    v.push((k, decode::<crate::codec::LowerFileRecord>(&val, &k)?));
                    if v.len() >= IMPORT_BATCH {
                        break;
                    }
                }
                Ok(v)
            })?;
            for (id, rec) in &batch {
                if let Some(what) = tree.changed(rec) {
                    out.push((*id, String::from_utf8_lossy(&rec.path).into_owned(), what));
                }
            }
            match batch.last() {
                Some(&(last, _)) if batch.len() >= IMPORT_BATCH && last < u64::MAX => {
                    from = last + 1
                }
                _ => return Ok(out),
            }
        }
    }

    /// Count an open handle of a file opened for writing (`write`) and with `O_APPEND`
    /// (`append`): refused with EPERM for writing to an immutable file, or to an append-only
    /// one without `O_APPEND`.
    pub fn open_file(&self, ino: InodeNo, write: bool, append: bool) -> Result<InodeAttr> {
        if write {
            self.inner
                .read(|cx| check_flags(&cx.get_inode(ino)?, Change::Write { at_eof: append }))?;
        }
        self.open_inode(ino)
    }

    /// Count an open handle: an inode unlinked while open lives until its last `release`.
    pub fn open_inode(&self, ino: InodeNo) -> Result<InodeAttr> {
        self.inner.write_unchecked(|cx| {
            let rec = cx.get_inode(ino)?;
            *cx.mem.open_counts.entry(ino).or_insert(0) += 1;
            Ok(self.attr(ino, &rec))
        })
    }

    /// Drop an open handle; the last one of an unlinked inode frees it.
    pub fn release(&self, ino: InodeNo) -> Result<()> {
        let reclaim = {
            let mut st = self.inner.state.lock();
            let n = st.mem.open_counts.entry(ino).or_insert(0);
            *n = n.saturating_sub(1);
            let last = *n == 0;
            if last {
                st.mem.open_counts.remove(&ino);
            }
            last
        };
        if reclaim && !self.inner.is_read_only() {
            let freed = self.inner.write(|cx| match cx.try_inode(ino)? {
                Some(mut rec) if rec.nlink == 0 => cx.destroy_inode(ino, &mut rec),
                _ => Ok(()),
            });
            match freed {
                // Made read-only meanwhile: an unlinked inode stays an orphan until the store is
                // writable again (`set_read_only`) or next opened.
                Ok(()) | Err(Error::ReadOnly) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Set attributes as given, and nothing else (tools and tests; see [`Store::setattr_as`]).
    pub fn setattr(&self, ino: InodeNo, set: &SetAttr) -> Result<InodeAttr> {
        self.setattr_inner(ino, set, None)
    }

    /// setattr as truncate(2) or chown(2) by `cred` do it: a size change or a change of owner or
    /// group of a non-directory removes file capabilities and the setuid/setgid bits
    /// [`acl::modified_perm`] (truncate) or [`acl::chowned_perm`] (chown) say go, unless `set`
    /// gives the mode itself.
    pub fn setattr_as(&self, ino: InodeNo, set: &SetAttr, cred: &dyn Cred) -> Result<InodeAttr> {
        self.setattr_inner(ino, set, Some(cred))
    }

    fn setattr_inner(
        &self,
        ino: InodeNo,
        set: &SetAttr,
        cred: Option<&dyn Cred>,
    ) -> Result<InodeAttr> {
        let _lower = match set.size {
            Some(size) => self.hold_lower(ino, &self.edge_blocks(size, 1))?,
            None => None,
        };
        self.inner.write(|cx| {
            let mut rec = cx.get_inode(ino)?;
            check_flags(&rec, setattr_change(set))?;
            let now = Timespec::now();
            if let Some(cred) = cred {
                let chown =
                    (set.uid.is_some() || set.gid.is_some()) && rec.kind != FileKind::Directory;
                if chown || set.size.is_some() {
                    remove_capability(cx, ino)?;
                }
                if set.mode.is_none() && chown {
                    rec.perm = acl::chowned_perm(rec.perm, rec.gid, cred);
                } else if set.mode.is_none() && set.size.is_some() {
                    drop_privs(&mut rec, cred);
                }
            }
            if let Some(size) = set.size {
                require_regular(&rec)?;
                if size != rec.size {
                    cx.truncate(ino, &mut rec, size)?;
                }
                rec.mtime = now;
            }
            if let Some(mode) = set.mode {
                rec.perm = (mode & 0o7777) as u16;
                cx.chmod_acl(ino, rec.perm)?;
            }
            if let Some(uid) = set.uid {
                rec.uid = uid;
            }
            if let Some(gid) = set.gid {
                rec.gid = gid;
            }
            let pick = |t: TimeSet| match t {
                TimeSet::Now => now,
                TimeSet::At(t) => t,
            };
            if let Some(t) = set.atime {
                rec.atime = pick(t);
            }
            if let Some(t) = set.mtime {
                rec.mtime = pick(t);
            }
            rec.ctime = set.ctime.unwrap_or(now);
            cx.put_inode(ino, &rec)?;
            Ok(self.attr(ino, &rec))
        })
    }

    // ------------------------------------------------------------------ data

    /// Where the bytes `[off, off+len)` of a file are (clipped at its end).
    /// The result pins the pool blocks: keep it until the bytes have been copied out.
    ///
    /// The segments are resolved under the store lock; lower files they name are opened and
    /// verified after it is released (a lower filesystem may be slow or hung; the pin keeps the
    /// pool blocks meanwhile).
    pub fn read(&self, ino: InodeNo, off: u64, len: u64) -> Result<PinnedRead> {
        let (segments, files, pin) = self.inner.read(|cx| {
            let rec = cx.get_inode(ino)?;
            require_regular(&rec)?;
            let segments = cx.read_segments(ino, &rec, off, len)?;
            let mut files: Vec<(u64, crate::codec::LowerFileRecord)> = Vec::new();
            for s in &segments {
                if let Segment::Lower { file, .. } = *s {
                    if !files.iter().any(|(id, _)| *id == file) {
                        files.push((file, cx.lower_file_record(file)?));
                    }
                }
            }
            let bs = cx.bs;
            let runs = segments
                .iter()
                .filter_map(|s| match *s {
                    Segment::Pool { pos, len } => Some(BlockRun::between(
                        BlockNo(pos / bs),
                        BlockNo((pos + len).div_ceil(bs)),
                    )),
                    _ => None,
                })
                .collect();
            Ok((segments, files, cx.mem.pins.pin(runs)))
        })?;
        let mut lower = Vec::with_capacity(files.len());
        if !files.is_empty() {
            let tree = self.inner.lower.as_ref().ok_or_else(|| {
                Error::corrupt("a file maps lower data, but the store has no lower directory")
            })?;
            for (id, rec) in files {
                lower.push((id, tree.file(id, &rec)?));
            }
        }
        Ok(PinnedRead {
            segments,
            lower,
            _pin: pin,
        })
    }

    /// The lower file that backs all of regular file `ino` at identical offsets, if one does:
    /// every block `n` of the file maps block `n` of one lower file, no block is a hole, and the
    /// file's size is the lower file's. Such a file's bytes are exactly that lower file's, so
    /// the kernel may read them from it directly (FUSE passthrough). The answer is a duplicate
    /// of the store's own open descriptor, verified against the import record (EIO if the lower
    /// file changed under the store); never a new open by path. `None` for anything else: a
    /// store without a lower directory, another kind of inode, an empty file, a file written to.
    pub fn whole_lower_file(&self, ino: InodeNo) -> Result<Option<std::fs::File>> {
        let Some(tree) = self.inner.lower.as_ref() else {
            return Ok(None);
        };
        let found = self.inner.read(|cx| {
            let rec = cx.get_inode(ino)?;
            if rec.kind != FileKind::Regular || rec.size == 0 {
                return Ok(None);
            }
            let blocks = rec.size.div_ceil(cx.bs);
            let mut lower = None;
            let mut next = 0;
            for m in cx.mappings(ino, 0, blocks)? {
                let same_file = m.lower != 0 && *lower.get_or_insert(m.lower) == m.lower;
                if !same_file || m.fb != next || m.phys != m.fb {
                    return Ok(None);
                }
                next = m.fb + m.len;
            }
            let Some(id) = lower.filter(|_| next == blocks) else {
                return Ok(None);
            };
            let lrec = cx.lower_file_record(id)?;
            Ok((lrec.size == rec.size).then_some((id, lrec)))
        })?;
        let Some((id, lrec)) = found else {
            return Ok(None);
        };
        // Opened (or taken from the cache) and verified with no store lock held.
        Ok(Some(tree.file(id, &lrec)?.file.try_clone()?))
    }

    /// Read into a buffer (tests and tools; the mount splices segments instead).
    pub fn read_to_vec(&self, ino: InodeNo, off: u64, len: u64) -> Result<Vec<u8>> {
        let segs = self.read(ino, off, len)?;
        let total: u64 = segs.iter().map(|s| s.len()).sum();
        let mut out = vec![0u8; total as usize];
        let mut at = 0usize;
        for s in segs.iter() {
            let n = s.len() as usize;
            match *s {
                Segment::Pool { pos, .. } => self.inner.pool.read_at(&mut out[at..at + n], pos)?,
                Segment::Lower { file, pos, .. } => {
                    use std::os::unix::fs::FileExt;
                    let f = segs
                        .lower_file(file)
                        .ok_or_else(|| Error::corrupt("lower file not pinned"))?;
                    f.read_exact_at(&mut out[at..at + n], pos)?;
                }
                Segment::Hole { .. } => {}
            }
            at += n;
        }
        Ok(out)
    }

    /// Write `data` at `off` as root (tools and tests); returns the bytes written.
    pub fn write(&self, ino: InodeNo, off: u64, data: &[u8]) -> Result<usize> {
        self.write_as(ino, off, data, &Caller::ROOT).map(|(n, _)| n)
    }

    /// Write `data` at `off` as `cred`; returns the bytes written, and whether setuid/setgid
    /// bits were dropped (see [`acl::modified_perm`]; the kernel drops setuid and
    /// group-executable setgid itself before the write, but not the setgid bit of a file the
    /// writer's groups do not include).
    pub fn write_as(
        &self,
        ino: InodeNo,
        off: u64,
        data: &[u8],
        cred: &dyn Cred,
    ) -> Result<(usize, bool)> {
        self.write_with(ino, off, data, Privs::KilledBy(cred))
    }

    /// Write `data` at `off`, doing to the file's privileges what `privs` says; returns the
    /// bytes written and whether setuid/setgid bits were dropped.
    pub fn write_with(
        &self,
        ino: InodeNo,
        off: u64,
        data: &[u8],
        privs: Privs<'_>,
    ) -> Result<(usize, bool)> {
        let _lower = self.hold_lower(ino, &self.edge_blocks(off, data.len() as u64))?;
        let (bs, len) = (self.inner.bs, data.len() as u64);
        if len >= SPLIT_WRITE_MIN && off % bs == 0 && len % bs == 0 {
            return self.write_split(ino, off, data, privs);
        }
        self.inner.write(|cx| {
            let rec = writable(cx, ino, off)?;
            write_whole(cx, ino, rec, off, data, privs)
        })
    }

    /// A write of whole blocks that all need new ones (past the end of the file, over committed
    /// or shared blocks, into a hole), with its bytes written to the pool while the store lock
    /// is let go: other operations, and other such writes, go on meanwhile (a 1 MiB `pwrite`
    /// is most of the time a write holds the lock). Three steps: the blocks are allocated
    /// (`Ctx::plan_write`), the bytes written to them, and they are mapped
    /// (`Ctx::map_planned`), each step an operation of its own. Nothing maps the blocks before
    /// the last step, so nothing reads them half written, and `inflight` keeps commits out
    /// until it is done, so no commit holds them allocated and unmapped. If the bytes or the
    /// mapping fail, the blocks go back and the file is unchanged.
    ///
    /// A write with a block in its range that may be rewritten in place (cheaper under the
    /// lock) is done whole by the first operation.
    fn write_split(
        &self,
        ino: InodeNo,
        off: u64,
        data: &[u8],
        privs: Privs<'_>,
    ) -> Result<(usize, bool)> {
        let bs = self.inner.bs;
        let inflight = self.inner.inflight.read();
        let (planned, mut commit_due) = self.inner.op_deferring_commit(true, |cx| {
            let rec = writable(cx, ino, off)?;
            match cx.plan_write(ino, off, data.len() as u64)? {
                Some(plan) => Ok(FirstHalf::Planned(plan)),
                None => write_whole(cx, ino, rec, off, data, privs).map(FirstHalf::Done),
            }
        });
        let result = match planned {
            Ok(FirstHalf::Planned(plan)) => {
                let wrote = self
                    .inner
                    .pool
                    .write_at(data, plan.pos(bs))
                    .map_err(Error::from_io);
                let (mapped, due) = match wrote {
                    Ok(()) => self.inner.op_deferring_commit(false, |cx| {
                        let mut rec = writable(cx, ino, off)?;
                        cx.map_planned(ino, &mut rec, &plan)?;
                        let dropped = written(cx, ino, &mut rec, privs)?;
                        Ok((data.len(), dropped))
                    }),
                    Err(e) => (Err(e), false),
                };
                commit_due |= due;
                if mapped.is_err() {
                    // Nothing maps the new blocks: give them back.
                    let (r, due) = self
                        .inner
                        .op_deferring_commit(false, |cx| cx.release_blocks(plan.run));
                    commit_due |= due;
                    if let Err(e) = r {
                        log::error!(
                            "pool blocks {} of a failed write stay allocated (fsck --repair \
                             frees them): {e}",
                            plan.run
                        );
                    }
                }
                mapped
            }
            Ok(FirstHalf::Done(done)) => Ok(done),
            Err(e) => Err(e),
        };
        drop(inflight);
        self.inner.commit_if_due(commit_due);
        result
    }

    /// fallocate(2) by root (tools and tests).
    pub fn fallocate(&self, ino: InodeNo, off: u64, len: u64, mode: FallocMode) -> Result<()> {
        self.fallocate_as(ino, off, len, mode, &Caller::ROOT)
            .map(|_| ())
    }

    /// fallocate(2) by `cred`; like a write, it drops the setuid and setgid bits an
    /// unprivileged modifier may not keep (and file capabilities), and says whether it did.
    pub fn fallocate_as(
        &self,
        ino: InodeNo,
        off: u64,
        len: u64,
        mode: FallocMode,
        cred: &dyn Cred,
    ) -> Result<bool> {
        if len == 0 {
            return Err(Error::Invalid("zero length"));
        }
        let end = off
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::FileTooBig)?;
        let _lower = self.hold_lower(ino, &self.edge_blocks(off, len))?;
        self.inner.write(|cx| {
            let mut rec = cx.get_inode(ino)?;
            require_regular(&rec)?;
            let change = match mode {
                // Allocating changes no data, and an append-only file may grow (vfs_fallocate).
                FallocMode::Allocate { .. } => Change::Write { at_eof: true },
                FallocMode::PunchHole | FallocMode::ZeroRange { .. } => Change::Resize,
            };
            check_flags(&rec, change)?;
            let keep = match mode {
                FallocMode::Allocate { keep_size } => {
                    // Extents never reach past the block holding EOF (check() holds us to it), so
                    // KEEP_SIZE preallocates only up to there: a CoW store could not keep the
                    // promise of ENOSPC-free writes into committed blocks anyway.
                    let alloc_end = if keep_size {
                        end.min(rec.size.div_ceil(self.inner.bs) * self.inner.bs)
                    } else {
                        end
                    };
                    if off < alloc_end {
                        cx.allocate(ino, &mut rec, off, alloc_end - off)?;
                    }
                    keep_size
                }
                FallocMode::PunchHole => {
                    cx.punch_hole(ino, &mut rec, off, len)?;
                    true
                }
                FallocMode::ZeroRange { keep_size } => {
                    cx.punch_hole(ino, &mut rec, off, len)?;
                    keep_size
                }
            };
            if !keep && end > rec.size {
                rec.size = end;
            }
            if !matches!(mode, FallocMode::Allocate { .. }) {
                touch_data(&mut rec);
            } else {
                rec.ctime = Timespec::now();
            }
            let dropped = kill_privs(cx, ino, &mut rec, cred)?;
            cx.put_inode(ino, &rec)?;
            Ok(dropped)
        })
    }

    pub fn seek(&self, ino: InodeNo, off: u64, whence: SeekWhence) -> Result<u64> {
        self.inner.read(|cx| {
            let rec = cx.get_inode(ino)?;
            require_regular(&rec)?;
            cx.seek(ino, &rec, off, whence)
        })
    }

    /// The reflink: `dst[dst_off..]` gets `src[src_off..src_off+len]`, sharing blocks where they
    /// line up. Returns the bytes cloned (fewer at the source's end; 0 past it).
    pub fn clone_range(
        &self,
        src: InodeNo,
        src_off: u64,
        dst: InodeNo,
        dst_off: u64,
        len: u64,
    ) -> Result<u64> {
        self.clone_range_as(src, src_off, dst, dst_off, len, &Caller::ROOT)
            .map(|(n, _)| n)
    }

    /// [`Store::clone_range`] by `cred` (copy_file_range(2)): like a write, a clone that
    /// changes the destination drops the privileges `cred` may not keep there; returns the
    /// bytes cloned and whether setuid/setgid bits were dropped.
    pub fn clone_range_as(
        &self,
        src: InodeNo,
        src_off: u64,
        dst: InodeNo,
        dst_off: u64,
        len: u64,
        cred: &dyn Cred,
    ) -> Result<(u64, bool)> {
        // Where source and destination blocks do not line up the whole range is copied.
        let bs = self.inner.bs;
        let src_blocks = (src_off / bs, len.div_ceil(bs).saturating_add(1));
        let _src_lower = self.hold_lower(src, &[src_blocks])?;
        let _dst_lower = self.hold_lower(dst, &self.edge_blocks(dst_off, len))?;
        self.inner.write(|cx| {
            let src_rec = cx.get_inode(src)?;
            require_regular(&src_rec)?;
            let mut dst_rec = if src == dst {
                src_rec.clone()
            } else {
                cx.get_inode(dst)?
            };
            require_regular(&dst_rec)?;
            check_flags(
                &dst_rec,
                Change::Write {
                    at_eof: dst_off == dst_rec.size,
                },
            )?;
            let n = cx.clone_range((src, &src_rec, src_off), (dst, &mut dst_rec, dst_off), len)?;
            let mut dropped = false;
            if n > 0 {
                touch_data(&mut dst_rec);
                dropped = kill_privs(cx, dst, &mut dst_rec, cred)?;
                cx.put_inode(dst, &dst_rec)?;
            }
            Ok((n, dropped))
        })
    }

    /// Dedupe `ino` against the blocks `index` has seen (see [`DedupeIndex`]): its blocks are
    /// hashed and remembered; when `replace`, blocks whose bytes equal an earlier one's (compared
    /// under the store lock, so no write slips between comparison and remap) are remapped to
    /// share it and their own blocks are released. `replace` needs `cred` to own the file, be
    /// allowed to write it, or have CAP_SYS_ADMIN (FIDEDUPERANGE's rule), else `Denied`.
    /// Nothing is committed here.
    pub fn dedupe_file(
        &self,
        index: &mut crate::file::DedupeIndex,
        ino: InodeNo,
        replace: bool,
        cred: &dyn Cred,
    ) -> Result<crate::file::DedupeStats> {
        crate::file::dedupe_file(self, index, ino, replace, cred)
    }

    // ------------------------------------------------------------------ xattrs

    pub fn getxattr(&self, ino: InodeNo, name: &[u8]) -> Result<Vec<u8>> {
        self.inner.read(|cx| cx.get_xattr(ino, name))
    }

    /// setxattr(2) by root (tools and tests). `flags`: `XATTR_CREATE` / `XATTR_REPLACE`.
    pub fn setxattr(&self, ino: InodeNo, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        self.setxattr_as(ino, name, value, flags, &Caller::ROOT)
    }

    /// setxattr(2) by `cred`, which matters when it sets an access ACL (see `Ctx::set_xattr`).
    pub fn setxattr_as(
        &self,
        ino: InodeNo,
        name: &[u8],
        value: &[u8],
        flags: i32,
        cred: &dyn Cred,
    ) -> Result<()> {
        self.inner
            .write(|cx| cx.set_xattr(ino, name, value, flags, cred))
    }

    /// listxattr(2) by root: every name.
    pub fn listxattr(&self, ino: InodeNo) -> Result<Vec<Vec<u8>>> {
        self.listxattr_as(ino, &Caller::ROOT)
    }

    /// listxattr(2) by `cred`: trusted.* names only for CAP_SYS_ADMIN.
    pub fn listxattr_as(&self, ino: InodeNo, cred: &dyn Cred) -> Result<Vec<Vec<u8>>> {
        self.inner.read(|cx| {
            cx.get_inode(ino)?;
            let mut names = cx.xattr_names(ino)?;
            names.retain(|n| acl::listed(n, cred));
            Ok(names)
        })
    }

    pub fn removexattr(&self, ino: InodeNo, name: &[u8]) -> Result<()> {
        self.inner.write(|cx| cx.remove_xattr(ino, name))
    }

    // ------------------------------------------------------------------ space

    /// Space as `df` shows it. The store grows inside its host filesystem, so its size and free
    /// space are the host's: free pool runs are punched out and already count as free there; only
    /// blocks freed by the open transaction (released at the next commit) are added.
    pub fn statfs(&self) -> Result<StatFs> {
        // Free runs of the pool are punched out and already free on the host, except blocks
        // freed since the last commit and short runs kept unpunched for reuse.
        let (pool_blocks, pending, inodes) = self.inner.read(|cx| {
            Ok((
                cx.mem.state.pool_blocks,
                cx.mem.pending_free().total() + cx.mem.unpunched.total(),
                cx.mem.state.inodes,
            ))
        })?;
        let bs = self.inner.bs;
        let (total, avail) = match self.inner.pool.host_space() {
            Ok(Some((total, avail))) => (total / bs, (avail / bs + pending).min(total / bs)),
            // No host filesystem (an in-memory store): report the pool with room to grow.
            _ => (pool_blocks * 2 + (1 << 20), pool_blocks + (1 << 20)),
        };
        Ok(StatFs {
            block_size: bs as u32,
            total_blocks: total,
            free_blocks: avail,
            avail_blocks: avail,
            files: inodes + (1 << 32),
            free_files: 1 << 32,
            name_max: NAME_MAX as u32,
        })
    }

    /// Fill in the attributes of an inode record.
    /// [`Store::attr`] for an inode reached without importing it (lookup, readdirplus): a
    /// directory whose lower entries are still pending reports link count 1, "subdirectories
    /// not counted" (see [`Store::readdir_plus`]).
    fn listed_attr(&self, cx: &Ctx<'_>, ino: InodeNo, rec: &InodeRecord) -> Result<InodeAttr> {
        let mut a = self.attr(ino, rec);
        if rec.kind == FileKind::Directory && cx.import_pending(ino)?.is_some() {
            a.nlink = 1;
        }
        Ok(a)
    }

    fn attr(&self, ino: InodeNo, rec: &InodeRecord) -> InodeAttr {
        InodeAttr {
            ino,
            kind: rec.kind,
            perm: rec.perm,
            uid: rec.uid,
            gid: rec.gid,
            nlink: rec.nlink,
            size: rec.size,
            allocated: rec.blocks * self.inner.bs,
            atime: rec.atime,
            mtime: rec.mtime,
            ctime: rec.ctime,
            crtime: rec.crtime,
            rdev: rec.rdev,
            // The root is never deleted, so its handles never go stale: generation 0, what the
            // kernel (FUSE, NFS export) expects of a root.
            generation: if ino == InodeNo::ROOT {
                0
            } else {
                rec.generation
            },
            block_size: self.inner.sb.block_size,
            flags: InodeFlags(rec.flags),
        }
    }
}

/// What a setattr does, for the `chattr` flags: a size change drops data; mode, owner and
/// explicit times are attributes; times set to now only touch (allowed on append-only files).
fn setattr_change(set: &SetAttr) -> Change {
    let explicit = |t: Option<TimeSet>| matches!(t, Some(TimeSet::At(_)));
    if set.size.is_some() {
        Change::Resize
    } else if set.mode.is_some()
        || set.uid.is_some()
        || set.gid.is_some()
        || explicit(set.atime)
        || explicit(set.mtime)
    {
        Change::Attrs
    } else {
        Change::TouchTimes
    }
}

/// The shortest write `Store::write_with` splits so that its bytes reach the pool without the
/// store lock. Below it the second operation (taking the lock again, finding the extents again)
/// costs more than the `pwrite` it takes out of the lock: fio 4 KiB random writes, 1 / 4 jobs,
/// ran 20% / 13% slower split. Split 1 MiB writes leave the lock to others: `stat` latency
/// beside two 1 MiB writers fell from 755 µs-8.7 ms to ~290 µs (median; docs/bench/README.md).
const SPLIT_WRITE_MIN: u64 = 64 << 10;

/// The inode of a file about to be written at `off`, if it may be.
fn writable(cx: &mut Ctx<'_>, ino: InodeNo, off: u64) -> Result<InodeRecord> {
    let rec = cx.get_inode(ino)?;
    require_regular(&rec)?;
    check_flags(
        &rec,
        Change::Write {
            at_eof: off == rec.size,
        },
    )?;
    Ok(rec)
}

/// What the first operation of `Store::write_split` did.
enum FirstHalf {
    /// Allocated the blocks for the bytes to go to.
    Planned(WritePlan),
    /// The whole write (bytes written, whether privileges were dropped).
    Done((usize, bool)),
}

/// A write in one operation (`rec`: the file's record, checked by [`writable`]): the bytes go to
/// the pool under the store lock.
fn write_whole(
    cx: &mut Ctx<'_>,
    ino: InodeNo,
    mut rec: InodeRecord,
    off: u64,
    data: &[u8],
    privs: Privs<'_>,
) -> Result<(usize, bool)> {
    cx.write_data(ino, &mut rec, off, data.len() as u64, &Source::Bytes(data))?;
    let dropped = written(cx, ino, &mut rec, privs)?;
    Ok((data.len(), dropped))
}

/// After a write's bytes are in the file: its times and privileges as `privs` says, and the
/// record stored. Returns whether setuid/setgid bits were dropped.
fn written(
    cx: &mut Ctx<'_>,
    ino: InodeNo,
    rec: &mut InodeRecord,
    privs: Privs<'_>,
) -> Result<bool> {
    let dropped = match privs {
        Privs::KilledBy(cred) => {
            touch_data(rec);
            kill_privs(cx, ino, rec, cred)?
        }
        Privs::Writeback => false,
    };
    cx.put_inode(ino, rec)?;
    Ok(dropped)
}

/// What a write does to the written file's privileges.
#[derive(Clone, Copy)]
pub enum Privs<'a> {
    /// What write(2) by this modifier does (`file_remove_privs`): setuid/setgid bits go as
    /// [`acl::modified_perm`] says, file capabilities go.
    KilledBy(&'a dyn Cred),
    /// Nothing: the writeback of pages the kernel cached. It stripped the privileges when
    /// write(2) put the bytes there (pages dirtied through a shared mapping keep them, as on
    /// ext4), and it keeps the file's mtime and ctime itself and sends them with a setattr of
    /// their own, before or after this write: the write stamps neither (a stamp of its own,
    /// arriving after the kernel's, would leave the store with a later mtime than the file has).
    Writeback,
}

/// Drop the setuid/setgid bits `cred` may not keep when it modifies a file's data; true if
/// any went (the kernel's cached mode is then stale).
fn drop_privs(rec: &mut InodeRecord, cred: &dyn Cred) -> bool {
    let perm = acl::modified_perm(rec.perm, rec.gid, cred);
    let dropped = perm != rec.perm;
    rec.perm = perm;
    dropped
}

/// Everything a modification of a regular file's data by `cred` takes away: the setuid/setgid
/// bits it may not keep ([`drop_privs`]) and file capabilities. True if the mode changed.
fn kill_privs(
    cx: &mut Ctx<'_>,
    ino: InodeNo,
    rec: &mut InodeRecord,
    cred: &dyn Cred,
) -> Result<bool> {
    remove_capability(cx, ino)?;
    Ok(drop_privs(rec, cred))
}

/// Remove `security.capability` if the inode has it (looked up first: a removal of a missing
/// key would still be recorded as a change).
fn remove_capability(cx: &mut Ctx<'_>, ino: InodeNo) -> Result<()> {
    if cx.xattrs.contains((ino, acl::CAPABILITY_XATTR))? {
        cx.xattrs.remove((ino, acl::CAPABILITY_XATTR))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{Env, MemEnv};
    use crate::store::{MkfsOptions, OpenOptions, POOL_FILE};
    use std::time::Duration;

    fn opts() -> OpenOptions {
        OpenOptions {
            commit_interval: None,
            cache_bytes: 1 << 20,
            ..Default::default()
        }
    }

    fn regular() -> NewInode {
        NewInode::regular(0o644)
    }

    #[test]
    fn a_commit_of_metadata_alone_does_not_sync_the_pool() -> Result<()> {
        // Regression (issue 12): every commit synced the pool file, so an fsync after a create
        // or a chmod cost two flushes of the host's disk, though no pool byte had changed.
        let env = MemEnv::new();
        Store::mkfs_env(Arc::new(env.clone()), &MkfsOptions::default())?;
        let s = Store::open_env(Arc::new(env.clone()), &opts())?;
        let pool_syncs = |env: &MemEnv| {
            env.log()
                .iter()
                .filter(|op| matches!(op, crate::io::MemOp::Sync { file } if file == POOL_FILE))
                .count()
        };
        let f = s.create(InodeNo::ROOT, b"f", &regular(), Caller::ROOT)?.ino;
        s.write(f, 0, &[1; 4096])?;
        s.commit()?;
        env.set_recording(true);
        s.create(InodeNo::ROOT, b"g", &regular(), Caller::ROOT)?;
        s.commit()?;
        assert_eq!(pool_syncs(&env), 0, "metadata alone: no pool flush");
        // A small data write: the commit carries its block (one flush, the engine's).
        s.write(f, 0, &[2; 4096])?;
        s.commit()?;
        assert_eq!(pool_syncs(&env), 0, "a small write rides in the commit");
        // A large one is flushed before its commit, which drops the images.
        s.write(f, 0, &vec![3; 2 << 20])?;
        s.commit()?;
        assert_eq!(
            pool_syncs(&env),
            1,
            "a large data write is flushed before its commit"
        );
        assert_eq!(s.read_to_vec(f, 0, 4096)?, vec![3; 4096]);
        assert_eq!(s.inner.state.lock().mem.state.images, 0);
        Ok(())
    }

    #[test]
    fn a_commit_that_carried_its_blocks_survives_losing_the_pools_unsynced_writes() -> Result<()> {
        // Regression (issue 12, fsync latency): the data of a small fsync'd write rides in the
        // metadata commit instead of a pool flush; after a crash that lost the pool's unsynced
        // writes, the open writes the blocks back from the commit before anything reads them.
        let env = MemEnv::new();
        Store::mkfs_env(Arc::new(env.clone()), &MkfsOptions::default())?;
        let s = Store::open_env(Arc::new(env.clone()), &opts())?;
        let f = s.create(InodeNo::ROOT, b"f", &regular(), Caller::ROOT)?.ino;
        s.write(f, 0, &[1; 8192])?;
        s.commit()?;
        s.write(f, 4096, &[2; 100])?;
        s.commit()?;
        assert!(s.inner.state.lock().mem.state.images >= 2);
        // The crash: the store is never closed, and the pool's bytes since its last sync (mkfs)
        // are gone.
        let mut files = env.files();
        std::mem::forget(s);
        if let Some(pool) = files.get_mut(POOL_FILE) {
            pool.clear();
        }
        let env2 = MemEnv::from_files(files);
        let s = Store::open_env(Arc::new(env2.clone()), &opts())?;
        let mut want = vec![1; 8192];
        want[4096..4196].fill(2);
        assert_eq!(s.read_to_vec(f, 0, 8192)?, want);
        assert!(
            s.check()?.problems.is_empty(),
            "fsck clean after the replay"
        );
        s.commit()?;
        assert_eq!(
            s.inner.state.lock().mem.state.images,
            0,
            "the replay drops them"
        );
        drop(s);
        let s = Store::open_env(Arc::new(env2), &opts())?;
        assert_eq!(s.read_to_vec(f, 0, 8192)?, want);
        assert!(s.check()?.problems.is_empty());
        Ok(())
    }

    type Hook = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

    /// A store directory whose pool runs a hook (once) at its next punch.
    #[derive(Clone)]
    struct PunchHookEnv {
        mem: MemEnv,
        hook: Hook,
    }

    impl std::fmt::Debug for PunchHookEnv {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("PunchHookEnv")
        }
    }

    struct PunchHookFile {
        file: Arc<dyn FileIo>,
        hook: Hook,
    }

    impl std::fmt::Debug for PunchHookFile {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("PunchHookFile")
        }
    }

    impl FileIo for PunchHookFile {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.file.set_len(len)
        }
        fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
            self.file.read_at(buf, off)
        }
        fn write_at(&self, data: &[u8], off: u64) -> std::io::Result<()> {
            self.file.write_at(data, off)
        }
        fn sync(&self) -> std::io::Result<()> {
            self.file.sync()
        }
        fn copy_within(&self, src: u64, dst: u64, len: u64) -> std::io::Result<()> {
            self.file.copy_within(src, dst, len)
        }
        fn punch(&self, off: u64, len: u64) -> std::io::Result<()> {
            let hook = self.hook.lock().take();
            if let Some(h) = hook {
                h();
            }
            self.file.punch(off, len)
        }
    }

    impl Env for PunchHookEnv {
        fn open(&self, name: &str, create: bool) -> Result<Arc<dyn FileIo>> {
            let file = self.mem.open(name, create)?;
            if name != POOL_FILE {
                return Ok(file);
            }
            Ok(Arc::new(PunchHookFile {
                file,
                hook: self.hook.clone(),
            }))
        }
        fn exists(&self, name: &str) -> bool {
            self.mem.exists(name)
        }
        fn lock(&self) -> Result<Box<dyn Send + Sync + std::fmt::Debug>> {
            self.mem.lock()
        }
        fn path(&self) -> std::path::PathBuf {
            self.mem.path()
        }
    }

    #[test]
    fn freed_blocks_are_punched_before_another_writer_can_reuse_them() -> Result<()> {
        // Regression: commit() punched the blocks it freed after letting go of the state lock,
        // when they were already in the free table; a write in between (another FUSE thread)
        // could allocate such a block and then lose its data to the late punch.
        let env = PunchHookEnv {
            mem: MemEnv::new(),
            hook: Arc::new(Mutex::new(None)),
        };
        Store::mkfs_env(Arc::new(env.clone()), &MkfsOptions::default())?;
        let store = Arc::new(Store::open_env(Arc::new(env.clone()), &opts())?);
        let a = store
            .create(InodeNo::ROOT, b"a", &regular(), Caller::ROOT)?
            .ino;
        let b = store
            .create(InodeNo::ROOT, b"b", &regular(), Caller::ROOT)?
            .ino;
        // A run long enough to be punched at the commit that frees it (short ones are kept).
        let long = 1 << 20;
        store.write(a, 0, &vec![1u8; long])?;
        store.commit()?;
        // Redirect a's blocks: the old ones are freed by the next commit.
        store.write(a, 0, &vec![2u8; long])?;
        let s2 = store.clone();
        let writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::new(Mutex::new(None));
        let slot = writer.clone();
        *env.hook.lock() = Some(Box::new(move || {
            // At the commit's first punch of the pool another thread writes; give it the time
            // to finish if nothing holds it back.
            let (tx, rx) = std::sync::mpsc::channel();
            let h = std::thread::spawn(move || {
                let _ = s2.write(b, 0, &[3u8; 4096]);
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_millis(500));
            *slot.lock() = Some(h);
        }));
        store.commit()?;
        let h = writer.lock().take();
        assert!(h.is_some(), "the commit punched nothing");
        if let Some(h) = h {
            let _ = h.join();
        }
        assert!(
            store.read_to_vec(b, 0, 4096)?.iter().all(|&x| x == 3),
            "the late punch zeroed a block written after the commit freed it"
        );
        assert!(store
            .read_to_vec(a, 0, long as u64)?
            .iter()
            .all(|&x| x == 2));
        store.commit()?;
        assert!(store.check()?.is_clean());
        Ok(())
    }
}
