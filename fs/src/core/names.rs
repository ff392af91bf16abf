//! Names: lookup, creating each kind of inode, link, unlink, rmdir and rename, with the
//! argument checks the kernel leaves to the filesystem (mknod's file type, rename's flags).

use super::filesystem::Core;
use crate::error::FsError;
use cowstore::{Caller, FileKind, InodeAttr, InodeNo, NewInode, RenameFlags};

/// What a rename request asks for, from its `renameat2` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rename {
    Plain(RenameFlags),
    /// RENAME_WHITEOUT: leave a whiteout (a 0/0 character device owned by the caller) where
    /// the source was.
    Whiteout(RenameFlags),
}

impl Rename {
    /// EINVAL for unknown bits, and for RENAME_EXCHANGE with any other flag (as the VFS).
    pub(crate) fn decode(raw: u32) -> Result<Rename, FsError> {
        const NOREPLACE: u32 = libc::RENAME_NOREPLACE;
        const EXCHANGE: u32 = libc::RENAME_EXCHANGE;
        const WHITEOUT: u32 = libc::RENAME_WHITEOUT;
        if raw & !(NOREPLACE | EXCHANGE | WHITEOUT) != 0 || (raw & EXCHANGE != 0 && raw != EXCHANGE)
        {
            return Err(FsError::refused(libc::EINVAL, "rename: unsupported flags"));
        }
        let flags = RenameFlags {
            noreplace: raw & NOREPLACE != 0,
            exchange: raw & EXCHANGE != 0,
        };
        Ok(if raw & WHITEOUT != 0 {
            Rename::Whiteout(flags)
        } else {
            Rename::Plain(flags)
        })
    }
}

/// The inode `mode` asks for: its permission bits (with setuid, setgid, sticky) and `kind`.
pub(crate) fn new_inode(kind: FileKind, mode: u32, rdev: u32) -> NewInode {
    NewInode::new(kind, mode & 0o7777, rdev)
}

/// The file type of a mknod: anything but a directory or a symlink (they have their own
/// requests); EINVAL otherwise.
pub(crate) fn mknod_kind(mode: u32) -> Result<FileKind, FsError> {
    FileKind::from_mode(mode)
        .filter(|k| !matches!(k, FileKind::Directory | FileKind::Symlink))
        .ok_or(FsError::refused(libc::EINVAL, "mknod: bad file type"))
}

impl Core {
    /// The entry `name` in `parent`, or `None` when there is none: an answer, not an error, that
    /// the kernel may cache as a negative entry (every change to the namespace goes through this
    /// mount, and the kernel drops a negative entry when it creates the name).
    pub fn lookup(&self, parent: InodeNo, name: &[u8]) -> Result<Option<InodeAttr>, FsError> {
        match self.store()?.lookup(parent, name) {
            Ok(a) => Ok(Some(a)),
            Err(cowstore::Error::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// `mode` and `umask` as the kernel sends them (FUSE_DONT_MASK): the store applies the
    /// umask only where no default ACL is inherited.
    pub fn mknod(
        &self,
        parent: InodeNo,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
        caller: Caller,
    ) -> Result<InodeAttr, FsError> {
        let new = new_inode(mknod_kind(mode)?, mode, rdev);
        let s = self.store()?;
        Ok(s.create_unmasked(parent, name, &new, caller, umask, false)?)
    }

    pub fn mkdir(
        &self,
        parent: InodeNo,
        name: &[u8],
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<InodeAttr, FsError> {
        let new = new_inode(FileKind::Directory, mode, 0);
        let s = self.store()?;
        Ok(s.create_unmasked(parent, name, &new, caller, umask, false)?)
    }

    pub fn symlink(
        &self,
        parent: InodeNo,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<InodeAttr, FsError> {
        Ok(self.store()?.symlink(parent, name, target, caller)?)
    }

    pub fn link(
        &self,
        ino: InodeNo,
        newparent: InodeNo,
        newname: &[u8],
    ) -> Result<InodeAttr, FsError> {
        Ok(self.store()?.link(ino, newparent, newname)?)
    }

    pub fn unlink(&self, parent: InodeNo, name: &[u8]) -> Result<(), FsError> {
        Ok(self.store()?.unlink(parent, name)?)
    }

    pub fn rmdir(&self, parent: InodeNo, name: &[u8]) -> Result<(), FsError> {
        Ok(self.store()?.rmdir(parent, name)?)
    }

    /// `flags`: the raw `renameat2` flags.
    pub fn rename(
        &self,
        parent: InodeNo,
        name: &[u8],
        newparent: InodeNo,
        newname: &[u8],
        flags: u32,
        caller: Caller,
    ) -> Result<(), FsError> {
        let s = self.store()?;
        match Rename::decode(flags)? {
            Rename::Plain(f) => Ok(s.rename(parent, name, newparent, newname, f)?),
            // The kernel has checked CAP_MKNOD; the whiteout belongs to the caller.
            Rename::Whiteout(f) => {
                Ok(s.rename_whiteout(parent, name, newparent, newname, f, caller)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ToErrno;

    fn errno<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
        r.expect_err("refused").to_errno()
    }

    #[test]
    fn a_missing_name_is_an_absent_entry_not_an_error() {
        // Regression (issue 12): a lookup miss was an ENOENT error, which the kernel does not
        // cache, so every stat or create of an absent name cost a round trip (and counted as an
        // error). It is now an answer the adapter sends as a negative entry.
        let f = super::super::testing::fixture(crate::core::FsConfig::default());
        let c = &f.core;
        assert!(c
            .lookup(InodeNo::ROOT, b"absent")
            .expect("lookup")
            .is_none());
        assert_eq!(c.counters.snapshot().errors, 0, "not counted as an error");
        let made = c
            .mknod(
                InodeNo::ROOT,
                b"here",
                libc::S_IFREG | 0o644,
                0,
                0,
                Caller::ROOT,
            )
            .expect("mknod");
        let found = c.lookup(InodeNo::ROOT, b"here").expect("lookup");
        assert_eq!(found.map(|a| a.ino), Some(made.ino));
    }

    #[test]
    fn rename_flags_decode_as_renameat2_allows() {
        let f = |noreplace, exchange| RenameFlags {
            noreplace,
            exchange,
        };
        assert_eq!(Rename::decode(0).ok(), Some(Rename::Plain(f(false, false))));
        let noreplace = libc::RENAME_NOREPLACE;
        let exchange = libc::RENAME_EXCHANGE;
        let whiteout = libc::RENAME_WHITEOUT;
        assert_eq!(
            Rename::decode(noreplace).ok(),
            Some(Rename::Plain(f(true, false)))
        );
        assert_eq!(
            Rename::decode(exchange).ok(),
            Some(Rename::Plain(f(false, true)))
        );
        assert_eq!(
            Rename::decode(whiteout | noreplace).ok(),
            Some(Rename::Whiteout(f(true, false)))
        );
        assert_eq!(errno(Rename::decode(exchange | noreplace)), libc::EINVAL);
        assert_eq!(errno(Rename::decode(exchange | whiteout)), libc::EINVAL);
        assert_eq!(errno(Rename::decode(1 << 7)), libc::EINVAL);
    }

    #[test]
    fn mknod_takes_every_kind_but_directories_and_symlinks() {
        assert_eq!(mknod_kind(libc::S_IFIFO | 0o600).ok(), Some(FileKind::Fifo));
        assert_eq!(mknod_kind(libc::S_IFREG).ok(), Some(FileKind::Regular));
        assert_eq!(mknod_kind(libc::S_IFCHR).ok(), Some(FileKind::CharDevice));
        assert_eq!(errno(mknod_kind(libc::S_IFDIR | 0o755)), libc::EINVAL);
        assert_eq!(errno(mknod_kind(libc::S_IFLNK | 0o777)), libc::EINVAL);
        assert_eq!(errno(mknod_kind(0o644)), libc::EINVAL);
        let n = new_inode(FileKind::Fifo, libc::S_IFIFO | 0o4755, 7);
        assert_eq!(
            (n.perm, n.rdev),
            (0o4755, 7),
            "type bits are not permission bits"
        );
    }
}
