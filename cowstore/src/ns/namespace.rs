//! The namespace: inodes, directory entries (keyed by parent and name, with stable readdir
//! cookies), hard links, rename (with whiteouts), xattrs, the orphan list, and what the
//! `chattr` flags (immutable, append-only) forbid.

use crate::codec::{
    decode, encode, DirentRecord, ExtentRecord, InodeRecord, LowerDirRecord, LowerFileRecord,
    XattrRecord,
};
use crate::error::{Error, Result};
use crate::ns::acl::{self, Acl, Cred, Namespace, ACL_ACCESS, ACL_DEFAULT};
use crate::overlay::{join, LowerEntry};
use crate::store::ctx::Ctx;
use crate::types::{
    Caller, DirEntry, FileKind, InodeFlags, InodeNo, NewInode, RenameFlags, Timespec,
};

pub const NAME_MAX: usize = 255;
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_SIZE_MAX: usize = 65536;
/// Bytes of xattr names and stored values one inode may hold (ENOSPC past it): room for a
/// few maximal values, and a bound on what one inode costs the metadata tree.
pub const XATTR_INODE_MAX: usize = 256 * 1024;
/// Bytes of one inode's listxattr(2) answer (names, each NUL-terminated): the kernel's
/// XATTR_LIST_MAX, so that every inode's names can be listed (ENOSPC past it).
pub const XATTR_LIST_MAX: usize = 65536;
pub const LINK_MAX: u32 = 65000;
/// Readdir cookies 1 and 2 are "." and ".."; entries start at 3.
pub const FIRST_COOKIE: u64 = 3;

pub(crate) fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Error::Invalid("bad file name"));
    }
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong);
    }
    Ok(())
}

/// What an operation is about to do to an inode, for the checks its `chattr` flags impose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Write data (or allocate space); `at_eof`: only adding at the end.
    Write { at_eof: bool },
    /// Truncate, punch a hole, zero a range: existing data goes.
    Resize,
    /// chmod, chown, explicit times, extended attributes.
    Attrs,
    /// Set the times to now (`touch` without a time).
    TouchTimes,
    /// Give the inode another name (link) or take one away (unlink, rename, rename over it).
    Relink,
    /// Add an entry to this directory.
    AddEntry,
    /// Remove an entry from this directory (unlink, rmdir, rename out of it, rename over one).
    RemoveEntry,
}

/// Refuse a change the inode's flags forbid, with EPERM whoever asks (ext4's rules): an
/// immutable inode allows nothing; an append-only one allows adding data at the end, touching
/// its times and adding entries (a directory), nothing else. Only the flags themselves may still
/// be changed ([`Ctx::set_flags`]).
///
/// An inode of a read-only snapshot ([`InodeFlags::READONLY`]) refuses every change with
/// EROFS; only `Store::remove_tree` removes it, and it does not ask here.
pub(crate) fn check_flags(rec: &InodeRecord, change: Change) -> Result<()> {
    let flags = InodeFlags(rec.flags);
    if flags.contains(InodeFlags::READONLY) {
        return Err(Error::ReadOnly);
    }
    if flags.contains(InodeFlags::IMMUTABLE) {
        return Err(Error::NotPermitted);
    }
    if flags.contains(InodeFlags::APPEND) {
        match change {
            Change::Write { at_eof: true } | Change::TouchTimes | Change::AddEntry => {}
            _ => return Err(Error::NotPermitted),
        }
    }
    Ok(())
}

pub(crate) fn new_inode_record(
    kind: FileKind,
    perm: u16,
    caller: Caller,
    rdev: u32,
    parent: InodeNo,
) -> InodeRecord {
    let now = Timespec::now();
    InodeRecord {
        kind,
        perm,
        uid: caller.uid,
        gid: caller.gid,
        nlink: if kind == FileKind::Directory { 2 } else { 1 },
        size: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        rdev,
        generation: 0,
        next_cookie: FIRST_COOKIE,
        parent,
        target: Vec::new(),
        blocks: 0,
        flags: 0,
    }
}

impl Ctx<'_> {
    /// With the host full and the metadata reserve spent, only operations that free space are
    /// allowed, so that the reserve is enough to commit them.
    fn refuse_growth_when_full(&self) -> Result<()> {
        if self.mem.low_space {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    pub fn get_dirent(&self, parent: InodeNo, name: &[u8]) -> Result<Option<DirentRecord>> {
        match self.dirents.get((parent, name))? {
            Some(v) => Ok(Some(decode(&v, &(parent, String::from_utf8_lossy(name)))?)),
            None => Ok(None),
        }
    }

    pub fn get_dir(&self, ino: InodeNo) -> Result<InodeRecord> {
        let rec = self.get_inode(ino)?;
        if rec.kind != FileKind::Directory {
            return Err(Error::NotDir);
        }
        Ok(rec)
    }

    pub fn lookup(&self, parent: InodeNo, name: &[u8]) -> Result<InodeNo> {
        if name == b"." {
            // Of any kind: the kernel looks up "." of a bare node id to open a file handle
            // (FUSE export support, open_by_handle_at), and ENOENT makes that handle stale.
            self.get_inode(parent)?;
            return Ok(parent);
        }
        self.get_dir(parent)?;
        if name == b".." {
            return Ok(self.get_inode(parent)?.parent);
        }
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong);
        }
        Ok(self.get_dirent(parent, name)?.ok_or(Error::NotFound)?.ino)
    }

    pub(crate) fn add_dirent(
        &mut self,
        parent: InodeNo,
        prec: &mut InodeRecord,
        name: &[u8],
        ino: InodeNo,
        kind: FileKind,
    ) -> Result<()> {
        let cookie = prec.next_cookie;
        prec.next_cookie += 1;
        self.dirents.insert(
            (parent, name),
            encode(&DirentRecord { ino, kind, cookie }).as_slice(),
        )?;
        self.cookies.insert((parent, cookie), name)?;
        Ok(())
    }

    pub(crate) fn remove_dirent(&mut self, parent: InodeNo, name: &[u8]) -> Result<DirentRecord> {
        let d = self.get_dirent(parent, name)?.ok_or(Error::NotFound)?;
        self.dirents.remove((parent, name))?;
        self.cookies.remove((parent, d.cookie))?;
        Ok(d)
    }

    pub(crate) fn dir_is_empty(&mut self, ino: InodeNo) -> Result<bool> {
        self.ensure_imported(ino)?;
        Ok(self.dirents.of_ino(ino)?.next().transpose()?.is_none())
    }

    pub(crate) fn alloc_ino(&mut self) -> InodeNo {
        let ino = self.mem.state.next_ino;
        self.mem.state.next_ino.0 += 1;
        ino
    }

    /// Create an inode of any kind under `parent`.
    /// `umask` applies to `new.perm` unless `parent` has a default ACL, which the new inode
    /// inherits instead (see [`acl::inherit`]); pass 0 for a mode already masked.
    pub fn create(
        &mut self,
        parent: InodeNo,
        name: &[u8],
        new: &NewInode,
        caller: Caller,
        umask: u16,
    ) -> Result<(InodeNo, InodeRecord)> {
        self.refuse_growth_when_full()?;
        check_name(name)?;
        self.ensure_imported(parent)?;
        let mut prec = self.get_dir(parent)?;
        if prec.nlink == 0 {
            return Err(Error::NotFound);
        }
        check_flags(&prec, Change::AddEntry)?;
        if name == b"." || name == b".." || self.get_dirent(parent, name)?.is_some() {
            return Err(Error::Exists);
        }
        if new.kind == FileKind::Directory && prec.nlink >= LINK_MAX {
            return Err(Error::TooManyLinks);
        }
        let mut perm = (new.perm & 0o7777) as u16;
        let mut owner = caller;
        if prec.perm & libc::S_ISGID as u16 != 0 {
            owner.gid = prec.gid;
            if new.kind == FileKind::Directory {
                perm |= libc::S_ISGID as u16;
            }
        }
        let dir_default = match new.kind {
            FileKind::Symlink => None,
            _ => self.stored_acl(parent, ACL_DEFAULT)?,
        };
        let inherited = acl::inherit(dir_default.as_ref(), new.kind, perm, umask);
        perm = inherited.perm;
        let ino = self.alloc_ino();
        let mut rec = new_inode_record(new.kind, perm, owner, new.rdev, parent);
        rec.generation = self.mem.state.generation;
        if matches!(new.kind, FileKind::Regular | FileKind::Directory) {
            rec.flags = prec.flags & InodeFlags::INHERITED.0;
        }
        if new.kind == FileKind::Symlink {
            let target = new.symlink_target.clone().unwrap_or_default();
            if target.is_empty() {
                return Err(Error::NotFound);
            }
            if target.len() >= libc::PATH_MAX as usize {
                return Err(Error::NameTooLong);
            }
            rec.size = target.len() as u64;
            rec.target = target;
        }
        self.add_dirent(parent, &mut prec, name, ino, new.kind)?;
        if new.kind == FileKind::Directory {
            prec.nlink += 1;
        }
        prec.mtime = rec.ctime;
        prec.ctime = rec.ctime;
        self.put_inode(parent, &prec)?;
        self.put_inode(ino, &rec)?;
        for (xname, inherited_acl) in [
            (ACL_ACCESS, &inherited.access),
            (ACL_DEFAULT, &inherited.default),
        ] {
            if let Some(a) = inherited_acl {
                self.put_xattr(ino, xname, &a.to_xattr())?;
            }
        }
        self.mem.state.inodes += 1;
        Ok((ino, rec))
    }

    pub fn link(
        &mut self,
        ino: InodeNo,
        newparent: InodeNo,
        newname: &[u8],
    ) -> Result<InodeRecord> {
        self.refuse_growth_when_full()?;
        self.ensure_imported(newparent)?;
        check_name(newname)?;
        let mut rec = self.get_inode(ino)?;
        if rec.kind == FileKind::Directory {
            return Err(Error::NotPermitted);
        }
        check_flags(&rec, Change::Relink)?;
        if rec.nlink >= LINK_MAX {
            return Err(Error::TooManyLinks);
        }
        let mut prec = self.get_dir(newparent)?;
        if prec.nlink == 0 {
            return Err(Error::NotFound);
        }
        check_flags(&prec, Change::AddEntry)?;
        if newname == b"." || newname == b".." || self.get_dirent(newparent, newname)?.is_some() {
            return Err(Error::Exists);
        }
        self.add_dirent(newparent, &mut prec, newname, ino, rec.kind)?;
        let now = Timespec::now();
        if rec.nlink == 0 {
            // Linking an open, unlinked file (linkat of an O_TMPFILE-like inode) revives it.
            self.orphans.remove(ino)?;
        }
        rec.nlink += 1;
        rec.ctime = now;
        prec.mtime = now;
        prec.ctime = now;
        self.put_inode(newparent, &prec)?;
        self.put_inode(ino, &rec)?;
        Ok(rec)
    }

    /// Drop one link of `ino`; with none left it is freed, or made an orphan while open.
    pub(crate) fn drop_link(
        &mut self,
        ino: InodeNo,
        rec: &mut InodeRecord,
        now: Timespec,
    ) -> Result<()> {
        let last = if rec.kind == FileKind::Directory {
            true
        } else {
            rec.nlink = rec.nlink.saturating_sub(1);
            rec.nlink == 0
        };
        rec.ctime = now;
        if last {
            rec.nlink = 0;
            if self.mem.open_counts.get(&ino).copied().unwrap_or(0) > 0 {
                self.orphans.insert(ino, ())?;
                self.put_inode(ino, rec)?;
            } else {
                self.destroy_inode(ino, rec)?;
            }
        } else {
            self.put_inode(ino, rec)?;
        }
        Ok(())
    }

    /// Free an inode with no links: its data, xattrs and record.
    pub fn destroy_inode(&mut self, ino: InodeNo, rec: &mut InodeRecord) -> Result<()> {
        if rec.kind == FileKind::Regular {
            self.free_all_data(ino, rec)?;
        }
        let names: Vec<Vec<u8>> = self.xattr_names(ino)?;
        for n in names {
            self.xattrs.remove((ino, n.as_slice()))?;
        }
        self.orphans.remove(ino)?;
        self.inodes.remove(ino)?;
        self.mem.state.inodes = self.mem.state.inodes.saturating_sub(1);
        self.mem.dirty = true;
        Ok(())
    }

    pub fn unlink(&mut self, parent: InodeNo, name: &[u8]) -> Result<()> {
        self.ensure_imported(parent)?;
        let mut prec = self.get_dir(parent)?;
        let d = self.get_dirent(parent, name)?.ok_or(Error::NotFound)?;
        let mut rec = self.get_inode(d.ino)?;
        if rec.kind == FileKind::Directory {
            return Err(Error::IsDir);
        }
        check_flags(&prec, Change::RemoveEntry)?;
        check_flags(&rec, Change::Relink)?;
        self.remove_dirent(parent, name)?;
        let now = Timespec::now();
        prec.mtime = now;
        prec.ctime = now;
        self.put_inode(parent, &prec)?;
        self.drop_link(d.ino, &mut rec, now)
    }

    pub fn rmdir(&mut self, parent: InodeNo, name: &[u8]) -> Result<()> {
        if name == b"." {
            return Err(Error::Invalid("rmdir of ."));
        }
        if name == b".." {
            return Err(Error::NotEmpty);
        }
        self.ensure_imported(parent)?;
        let mut prec = self.get_dir(parent)?;
        let d = self.get_dirent(parent, name)?.ok_or(Error::NotFound)?;
        let mut rec = self.get_inode(d.ino)?;
        if rec.kind != FileKind::Directory {
            return Err(Error::NotDir);
        }
        check_flags(&prec, Change::RemoveEntry)?;
        check_flags(&rec, Change::Relink)?;
        if !self.dir_is_empty(d.ino)? {
            return Err(Error::NotEmpty);
        }
        self.remove_dirent(parent, name)?;
        let now = Timespec::now();
        prec.nlink = prec.nlink.saturating_sub(1);
        prec.mtime = now;
        prec.ctime = now;
        self.put_inode(parent, &prec)?;
        self.drop_link(d.ino, &mut rec, now)
    }

    /// True if `ino` is `dir` or one of its ancestors.
    pub(crate) fn is_ancestor(&self, ino: InodeNo, dir: InodeNo) -> Result<bool> {
        let mut cur = dir;
        for _ in 0..100_000 {
            if cur == ino {
                return Ok(true);
            }
            if cur == InodeNo::ROOT {
                return Ok(false);
            }
            cur = self.get_inode(cur)?.parent;
        }
        Err(Error::corrupt(format!(
            "directory {dir} has a parent cycle",
            dir = dir.0
        )))
    }

    /// rename(2)/renameat2(2). With `whiteout` (`RENAME_WHITEOUT`) the source name is left
    /// holding a whiteout owned by that caller, in the same operation.
    pub fn rename(
        &mut self,
        parent: InodeNo,
        name: &[u8],
        newparent: InodeNo,
        newname: &[u8],
        flags: RenameFlags,
        whiteout: Option<Caller>,
    ) -> Result<()> {
        check_name(newname)?;
        if flags.exchange && flags.noreplace {
            return Err(Error::Invalid("RENAME_EXCHANGE with RENAME_NOREPLACE"));
        }
        if flags.exchange && whiteout.is_some() {
            return Err(Error::Invalid("RENAME_EXCHANGE with RENAME_WHITEOUT"));
        }
        for n in [name, newname] {
            if n == b"." || n == b".." {
                return Err(Error::Invalid("rename of . or .."));
            }
        }
        let prec = self.get_dir(parent)?;
        let nprec = self.get_dir(newparent)?;
        self.ensure_imported(parent)?;
        self.ensure_imported(newparent)?;
        let src = self.get_dirent(parent, name)?.ok_or(Error::NotFound)?;
        let dst = self.get_dirent(newparent, newname)?;
        let now = Timespec::now();
        // Two names of one inode: nothing moves (POSIX), so the flags forbid nothing.
        if dst.is_none_or(|d| d.ino != src.ino) {
            check_flags(&prec, Change::RemoveEntry)?;
            check_flags(&nprec, Change::AddEntry)?;
            check_flags(&self.get_inode(src.ino)?, Change::Relink)?;
            if let Some(d) = dst {
                check_flags(&nprec, Change::RemoveEntry)?;
                check_flags(&self.get_inode(d.ino)?, Change::Relink)?;
            }
        }

        if flags.exchange {
            let dst = dst.ok_or(Error::NotFound)?;
            if parent == newparent && name == newname {
                return Ok(());
            }
            if src.kind == FileKind::Directory && self.is_ancestor(src.ino, newparent)? {
                return Err(Error::Invalid("directory into itself"));
            }
            if dst.kind == FileKind::Directory && self.is_ancestor(dst.ino, parent)? {
                return Err(Error::Invalid("directory into itself"));
            }
            self.dirents.insert(
                (parent, name),
                encode(&DirentRecord {
                    ino: dst.ino,
                    kind: dst.kind,
                    cookie: src.cookie,
                })
                .as_slice(),
            )?;
            self.dirents.insert(
                (newparent, newname),
                encode(&DirentRecord {
                    ino: src.ino,
                    kind: src.kind,
                    cookie: dst.cookie,
                })
                .as_slice(),
            )?;
            for (moved, kind, to) in [(src.ino, src.kind, newparent), (dst.ino, dst.kind, parent)] {
                let mut r = self.get_inode(moved)?;
                r.ctime = now;
                if kind == FileKind::Directory {
                    r.parent = to;
                }
                self.put_inode(moved, &r)?;
            }
            if parent != newparent {
                let delta = i64::from(src.kind == FileKind::Directory)
                    - i64::from(dst.kind == FileKind::Directory);
                self.adjust_dir(parent, -delta, now)?;
                self.adjust_dir(newparent, delta, now)?;
            } else {
                self.adjust_dir(parent, 0, now)?;
            }
            return Ok(());
        }

        if let Some(d) = dst {
            if flags.noreplace {
                return Err(Error::Exists);
            }
            if d.ino == src.ino {
                // Both names are links to one inode: POSIX says do nothing.
                return Ok(());
            }
            match (
                src.kind == FileKind::Directory,
                d.kind == FileKind::Directory,
            ) {
                (true, false) => return Err(Error::NotDir),
                (false, true) => return Err(Error::IsDir),
                (true, true) if !self.dir_is_empty(d.ino)? => return Err(Error::NotEmpty),
                _ => {}
            }
        }
        if src.kind == FileKind::Directory && self.is_ancestor(src.ino, newparent)? {
            return Err(Error::Invalid("directory into itself"));
        }
        // Replace the target, if any.
        if let Some(d) = self.get_dirent(newparent, newname)? {
            self.remove_dirent(newparent, newname)?;
            let mut victim = self.get_inode(d.ino)?;
            if victim.kind == FileKind::Directory {
                self.adjust_dir(newparent, -1, now)?;
            }
            self.drop_link(d.ino, &mut victim, now)?;
        }
        self.remove_dirent(parent, name)?;
        let mut nprec = self.get_dir(newparent)?;
        self.add_dirent(newparent, &mut nprec, newname, src.ino, src.kind)?;
        self.put_inode(newparent, &nprec)?;
        let mut r = self.get_inode(src.ino)?;
        r.ctime = now;
        if src.kind == FileKind::Directory {
            r.parent = newparent;
        }
        self.put_inode(src.ino, &r)?;
        let is_dir = i64::from(src.kind == FileKind::Directory);
        if parent != newparent {
            self.adjust_dir(parent, -is_dir, now)?;
            self.adjust_dir(newparent, is_dir, now)?;
        } else {
            self.adjust_dir(parent, 0, now)?;
        }
        if let Some(owner) = whiteout {
            self.add_whiteout(parent, name, owner, now)?;
        }
        Ok(())
    }

    /// A whiteout under `parent/name`: a character device 0:0 with mode 0, which overlayfs
    /// reads as "deleted in this layer" (ext4, XFS and tmpfs make the same for RENAME_WHITEOUT).
    fn add_whiteout(
        &mut self,
        parent: InodeNo,
        name: &[u8],
        owner: Caller,
        now: Timespec,
    ) -> Result<()> {
        self.refuse_growth_when_full()?;
        let mut prec = self.get_dir(parent)?;
        let ino = self.alloc_ino();
        let mut rec = new_inode_record(FileKind::CharDevice, 0, owner, 0, parent);
        rec.generation = self.mem.state.generation;
        (rec.atime, rec.mtime, rec.ctime, rec.crtime) = (now, now, now, now);
        self.add_dirent(parent, &mut prec, name, ino, FileKind::CharDevice)?;
        self.put_inode(parent, &prec)?;
        self.put_inode(ino, &rec)?;
        self.mem.state.inodes += 1;
        Ok(())
    }

    /// FS_IOC_SETFLAGS: the owner (or root) sets the inode's `chattr` flags; immutable and
    /// append-only may be set or cleared only by root (`CAP_LINUX_IMMUTABLE`), and while an
    /// inode stays immutable nothing else about its flags may change (ext4's rules).
    pub fn set_flags(
        &mut self,
        ino: InodeNo,
        flags: InodeFlags,
        caller: Caller,
    ) -> Result<InodeRecord> {
        let mut rec = self.get_inode(ino)?;
        if InodeFlags(rec.flags).contains(InodeFlags::READONLY) {
            return Err(Error::ReadOnly);
        }
        if !matches!(rec.kind, FileKind::Regular | FileKind::Directory) {
            return Err(Error::Unsupported);
        }
        if flags.0 & !InodeFlags::SUPPORTED.0 != 0 {
            return Err(Error::Unsupported);
        }
        if caller.uid != 0 && caller.uid != rec.uid {
            return Err(Error::NotPermitted);
        }
        let old = InodeFlags(rec.flags);
        let changed = InodeFlags(old.0 ^ flags.0);
        if changed.intersects(InodeFlags::PRIVILEGED) && caller.uid != 0 {
            return Err(Error::NotPermitted);
        }
        if old.contains(InodeFlags::IMMUTABLE)
            && flags.contains(InodeFlags::IMMUTABLE)
            && changed != InodeFlags::NONE
        {
            return Err(Error::NotPermitted);
        }
        rec.flags = flags.0;
        rec.ctime = Timespec::now();
        self.put_inode(ino, &rec)?;
        Ok(rec)
    }

    /// Change a directory's link count by `delta` and stamp its mtime/ctime.
    fn adjust_dir(&mut self, dir: InodeNo, delta: i64, now: Timespec) -> Result<()> {
        let mut r = self.get_inode(dir)?;
        r.nlink = (i64::from(r.nlink) + delta).max(0) as u32;
        r.mtime = now;
        r.ctime = now;
        self.put_inode(dir, &r)
    }

    /// Entries of a directory after cookie `offset` (0 starts at the beginning, with "." and
    /// "..") and before cookie `end`. Every entry created in or renamed into a directory gets a
    /// new cookie from its `next_cookie`, so a stream that stops at the `next_cookie` it saw when
    /// it was opened or rewound never meets an entry a second time (and always ends).
    pub fn readdir(
        &self,
        ino: InodeNo,
        offset: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<DirEntry>> {
        let rec = self.get_dir(ino)?;
        let mut out = Vec::new();
        if offset < 1 {
            out.push(DirEntry {
                name: b".".to_vec(),
                ino,
                kind: FileKind::Directory,
                cookie: 1,
            });
        }
        if offset < 2 {
            out.push(DirEntry {
                name: b"..".to_vec(),
                ino: rec.parent,
                kind: FileKind::Directory,
                cookie: 2,
            });
        }
        let from = offset.max(2) + 1;
        if from >= end {
            return Ok(out);
        }
        for item in self.cookies.range((ino, from)..(ino, end))? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let name = v;
            let d = self.get_dirent(ino, &name)?.ok_or_else(|| {
                Error::corrupt(format!(
                    "directory {ino}: cookie {} names a missing entry",
                    k.1,
                    ino = ino.0
                ))
            })?;
            out.push(DirEntry {
                name,
                ino: d.ino,
                kind: d.kind,
                cookie: k.1,
            });
        }
        Ok(out)
    }

    // ------------------------------------------------------------------ overlay import

    /// The lower path of directory `dir` if it still has lower entries to import.
    pub fn import_pending(&self, dir: InodeNo) -> Result<Option<Vec<u8>>> {
        if self.lower.is_none() {
            return Ok(None);
        }
        match self.lower_pending.get(dir)? {
            Some(v) => Ok(Some(decode::<LowerDirRecord>(&v, &dir)?.path)),
            None => Ok(None),
        }
    }

    /// Which of the lower `names` directory `dir` has no entry for yet: the ones an import
    /// still has to bring in (see `import_entries`).
    pub fn not_imported(&self, dir: InodeNo, names: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for n in names {
            if n.len() <= NAME_MAX && self.get_dirent(dir, n)?.is_none() {
                out.push(n.clone());
            }
        }
        Ok(out)
    }

    /// Import the lower directory of `dir` under the store lock, all at once. Only for a
    /// mutation that reaches a directory its `Store` method did not import first (the store
    /// imports outside the lock, in batches: `Store::import`).
    pub fn ensure_imported(&mut self, dir: InodeNo) -> Result<()> {
        let Some(lower) = self.lower else {
            return Ok(());
        };
        let Some(rel) = self.import_pending(dir)? else {
            return Ok(());
        };
        log::debug!("importing lower directory {} under the store lock", dir.0);
        let ldir = lower.dir(&rel)?;
        let names = self.not_imported(dir, &ldir.names()?)?;
        let entries = ldir.entries(0, &names)?;
        self.import_entries(dir, &entries, true)
    }

    /// Import lower `entries` of directory `dir` (one batch): each becomes an inode of the store
    /// with the lower entry's attributes, xattrs and symlink target; regular files get one
    /// extent that points into the lower file, subdirectories are themselves marked pending.
    /// Names the directory already has are left alone: the store's own names win over lower
    /// ones, and a name an earlier batch imported is not imported twice. `last`: the directory
    /// is complete after this batch (no longer pending).
    ///
    /// Hard links (same lower inode) share one store inode, whose link count is the number of
    /// its names imported so far (so `check()` holds at every commit). A name met after every
    /// imported name of its inode was removed and the inode freed is imported as a new inode
    /// with the lower file's bytes; one met while the inode is unlinked but still open revives
    /// it (off the orphan list, or the next open of the store would free it).
    pub fn import_entries(
        &mut self,
        dir: InodeNo,
        entries: &[LowerEntry],
        last: bool,
    ) -> Result<()> {
        let Some(rel) = self.import_pending(dir)? else {
            // Imported meanwhile (another thread got there first).
            return Ok(());
        };
        let mut drec = self.get_dir(dir)?;
        let bs = self.bs;
        for e in entries {
            if e.name.len() > NAME_MAX || self.get_dirent(dir, &e.name)?.is_some() {
                continue;
            }
            let rel = join(&rel, &e.name);
            if e.kind != FileKind::Directory {
                let linked = self.lower_inodes.get((e.dev, e.ino))?;
                if let Some(existing) = linked {
                    if let Some(mut r) = self.try_inode(existing)? {
                        if r.nlink == 0 {
                            self.orphans.remove(existing)?;
                        }
                        r.nlink += 1;
                        self.put_inode(existing, &r)?;
                        self.add_dirent(dir, &mut drec, &e.name, existing, r.kind)?;
                        continue;
                    }
                }
            }
            let ino = self.alloc_ino();
            let owner = Caller {
                uid: e.uid,
                gid: e.gid,
            };
            let mut rec = new_inode_record(e.kind, e.perm, owner, e.rdev, dir);
            rec.atime = e.atime;
            rec.mtime = e.mtime;
            rec.ctime = e.ctime;
            rec.crtime = e.ctime;
            rec.generation = self.mem.state.generation;
            match e.kind {
                FileKind::Symlink => {
                    rec.size = e.target.len() as u64;
                    rec.target = e.target.clone();
                }
                FileKind::Regular => {
                    rec.size = e.size;
                    let lf = LowerFileRecord {
                        path: rel.clone(),
                        dev: e.dev,
                        ino: e.ino,
                        size: e.size,
                        mtime: e.mtime,
                    };
                    self.lower_files.insert(ino.0, encode(&lf).as_slice())?;
                    if e.size > 0 {
                        let ext = ExtentRecord {
                            phys: 0,
                            len: e.size.div_ceil(bs),
                            lower: ino.0,
                        };
                        self.extents.insert((ino, 0), encode(&ext).as_slice())?;
                        rec.blocks = ext.len;
                    }
                }
                FileKind::Directory => {
                    self.lower_pending.insert(
                        ino,
                        encode(&LowerDirRecord { path: rel.clone() }).as_slice(),
                    )?;
                    drec.nlink += 1;
                }
                _ => {}
            }
            for (name, value) in &e.xattrs {
                if name.len() <= XATTR_NAME_MAX && value.len() <= XATTR_SIZE_MAX {
                    self.xattrs.insert(
                        (ino, name.as_slice()),
                        encode(&XattrRecord {
                            value: value.clone(),
                        })
                        .as_slice(),
                    )?;
                }
            }
            if e.kind != FileKind::Directory {
                self.lower_inodes.insert((e.dev, e.ino), ino)?;
            }
            self.add_dirent(dir, &mut drec, &e.name, ino, e.kind)?;
            self.put_inode(ino, &rec)?;
            self.mem.state.inodes += 1;
        }
        if last {
            self.lower_pending.remove(dir)?;
        }
        self.put_inode(dir, &drec)?;
        self.mem.dirty = true;
        Ok(())
    }

    // ------------------------------------------------------------------ xattrs

    pub fn xattr_names(&self, ino: InodeNo) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for item in self.xattrs.of_ino(ino)? {
            out.push(item?.0);
        }
        Ok(out)
    }

    /// The value of `name` (any namespace the store supports; the kernel keeps trusted.* from
    /// the unprivileged before asking).
    pub fn get_xattr(&self, ino: InodeNo, name: &[u8]) -> Result<Vec<u8>> {
        acl::namespace(name)?;
        self.get_inode(ino)?;
        match self.xattrs.get((ino, name))? {
            Some(v) => Ok(decode::<XattrRecord>(&v, &(ino, String::from_utf8_lossy(name)))?.value),
            None => Err(Error::NoAttr),
        }
    }

    /// The ACL stored under `name` (`ACL_ACCESS` or `ACL_DEFAULT`) of `ino`, if any.
    pub(crate) fn stored_acl(&self, ino: InodeNo, name: &[u8]) -> Result<Option<Acl>> {
        let key = (ino, String::from_utf8_lossy(name));
        let value = match self.xattrs.get((ino, name))? {
            Some(v) => decode::<XattrRecord>(&v, &key)?.value,
            None => return Ok(None),
        };
        Acl::from_xattr(&value)
            .map_err(|e| Error::corrupt(format!("meta.redb: table xattrs key {key:?}: {e}")))
    }

    fn put_xattr(&mut self, ino: InodeNo, name: &[u8], value: &[u8]) -> Result<()> {
        let rec = XattrRecord {
            value: value.to_vec(),
        };
        self.xattrs.insert((ino, name), encode(&rec).as_slice())?;
        Ok(())
    }

    /// ENOSPC if `name` with a value of `len` bytes would take `ino` past its xattr bounds.
    fn check_xattr_room(&self, ino: InodeNo, name: &[u8], len: usize) -> Result<()> {
        let mut stored = name.len() + len;
        let mut listed = name.len() + 1;
        for item in self.xattrs.of_ino(ino)? {
            let (n, v) = item?;
            if n != name {
                stored += n.len() + v.len();
                listed += n.len() + 1;
            }
        }
        if stored > XATTR_INODE_MAX || listed > XATTR_LIST_MAX {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// setxattr(2) as ext4 answers it once the kernel has checked the caller (namespace
    /// privileges, ACL ownership, ACL validity): other `system.*` names are not supported, an
    /// access ACL sets the mode it implies (and is stored only if it says more; setgid dropped
    /// for a setter outside the file's group), a default ACL only on directories.
    pub fn set_xattr(
        &mut self,
        ino: InodeNo,
        name: &[u8],
        value: &[u8],
        flags: i32,
        cred: &dyn Cred,
    ) -> Result<()> {
        self.refuse_growth_when_full()?;
        if name.is_empty() {
            return Err(Error::Invalid("empty attribute name"));
        }
        if name.len() > XATTR_NAME_MAX {
            return Err(Error::Range);
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(Error::TooBig);
        }
        let ns = acl::namespace(name)?;
        let mut rec = self.get_inode(ino)?;
        check_flags(&rec, Change::Attrs)?;
        let exists = self.xattrs.contains((ino, name))?;
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(Error::Exists);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(Error::NoAttr);
        }
        let mut store = Some(value.to_vec());
        if matches!(ns, Namespace::AclAccess | Namespace::AclDefault) {
            if rec.kind == FileKind::Symlink {
                return Err(Error::Unsupported);
            }
            if ns == Namespace::AclDefault && rec.kind != FileKind::Directory {
                return Err(Error::Denied);
            }
            store = match Acl::from_xattr(value)? {
                None => None,
                Some(a) if ns == Namespace::AclAccess => {
                    let (perm, keep) = acl::perm_after_set(&a, rec.perm, rec.gid, cred);
                    rec.perm = perm;
                    keep.then(|| a.to_xattr())
                }
                Some(a) => Some(a.to_xattr()),
            };
        }
        match store {
            Some(v) => {
                self.check_xattr_room(ino, name, v.len())?;
                self.put_xattr(ino, name, &v)?;
            }
            None => {
                self.xattrs.remove((ino, name))?;
            }
        }
        rec.ctime = Timespec::now();
        self.put_inode(ino, &rec)
    }

    pub fn remove_xattr(&mut self, ino: InodeNo, name: &[u8]) -> Result<()> {
        acl::namespace(name)?;
        let mut rec = self.get_inode(ino)?;
        check_flags(&rec, Change::Attrs)?;
        if !self.xattrs.remove_found((ino, name))? {
            return Err(Error::NoAttr);
        }
        rec.ctime = Timespec::now();
        self.put_inode(ino, &rec)
    }

    /// After a chmod to `perm`, an access ACL carries the new owner, mask (or group) and other
    /// bits, as ext4's `posix_acl_chmod`.
    pub fn chmod_acl(&mut self, ino: InodeNo, perm: u16) -> Result<()> {
        if let Some(mut a) = self.stored_acl(ino, ACL_ACCESS)? {
            a.chmod(perm);
            self.put_xattr(ino, ACL_ACCESS, &a.to_xattr())?;
        }
        Ok(())
    }
}
