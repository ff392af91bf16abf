//! Opening files and directories: the open flags decoded, the store's open count, the handle
//! and what the kernel may cache (page cache, cached listings), which depends on whether the
//! next access must update the access time. Also release and fsync.

use super::filesystem::Core;
use crate::error::FsError;
use crate::stats::Counters;
use cowstore::{Caller, FileKind, InodeAttr, InodeFlags, InodeNo, Timespec};

/// The flags of an `open(2)` that reach the daemon. The kernel keeps O_CREAT, O_EXCL and
/// O_NOCTTY to itself, and O_TRUNC too (cowfs does not ask for FUSE_ATOMIC_O_TRUNC: the kernel
/// truncates with a setattr before the open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFlags(pub i32);

/// The access mode (`O_ACCMODE` bits) of an open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    /// `O_ACCMODE` itself (3): neither reads nor writes, but needs the permission to do both
    /// (Linux's mode for ioctl-only opens of devices).
    Neither,
}

impl OpenFlags {
    pub fn access(self) -> Access {
        match self.0 & libc::O_ACCMODE {
            libc::O_RDONLY => Access::Read,
            libc::O_WRONLY => Access::Write,
            libc::O_RDWR => Access::ReadWrite,
            _ => Access::Neither,
        }
    }

    /// Whether the open must pass the checks of a writer (immutable and append-only files):
    /// every mode but read-only, as the VFS asks write permission for all of them.
    pub fn checks_as_writer(self) -> bool {
        self.access() != Access::Read
    }

    /// Whether reads go through this handle.
    pub fn reads(self) -> bool {
        matches!(self.access(), Access::Read | Access::ReadWrite)
    }

    pub fn append(self) -> bool {
        self.0 & libc::O_APPEND != 0
    }
}

/// The answer to an open: the handle and what the kernel may keep cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// FOPEN_KEEP_CACHE: the page cache (or a directory's cached listing) stays valid.
    pub keep_cache: bool,
    /// FOPEN_CACHE_DIR: the kernel may keep the listing in its page cache.
    pub cache_dir: bool,
    /// FOPEN_NOFLUSH: close need not send FLUSH (writes reach the store as they arrive).
    pub noflush: bool,
    /// FOPEN_DIRECT_IO: reads and writes through this handle bypass the page cache.
    pub direct_io: bool,
}

impl Opened {
    /// A file: nothing changes a file's bytes behind the kernel's back, so its page cache stays
    /// valid across opens. Except when a read through this handle must update the access time
    /// (`atime_due`: relatime's first read since the file changed): reads from the page cache
    /// never reach the daemon, so such an open drops it.
    pub fn file(fh: u64, flags: OpenFlags, atime_due: bool) -> Opened {
        Opened {
            fh,
            keep_cache: !(flags.reads() && atime_due),
            cache_dir: false,
            noflush: true,
            direct_io: false,
        }
    }

    /// A directory: the kernel keeps listings in its page cache and drops them itself when an
    /// operation through this mount changes the directory; but a listing served from that cache
    /// never reaches the daemon, so not when it should update the access time.
    pub fn dir(fh: u64, atime_due: bool) -> Opened {
        Opened {
            fh,
            keep_cache: !atime_due,
            cache_dir: !atime_due,
            noflush: false,
            direct_io: false,
        }
    }
}

impl Core {
    /// Whether an access of `a` now would update its access time.
    fn atime_due(&self, a: &InodeAttr) -> bool {
        self.cfg.atime.due(a, Timespec::now())
    }

    /// `flags`: the raw open flags. Counted open in the store (an unlinked file lives until
    /// its last release); EPERM for writing to an immutable file, or to an append-only one
    /// without O_APPEND.
    pub fn open(&self, ino: InodeNo, flags: i32) -> Result<Opened, FsError> {
        let flags = OpenFlags(flags);
        let s = self.store()?;
        let a = s.open_file(ino, flags.checks_as_writer(), flags.append())?;
        let fh = self.handles.open(s.error_seq());
        let mut opened = Opened::file(fh, flags, self.atime_due(&a));
        // The writeback cache writes back whole pages, so an append to an append-only file
        // would reach the store as a rewrite of its last page, which the flag refuses: such a
        // file's writers write through, at the end of file as the kernel sees it.
        opened.direct_io = self.cfg.writeback_cache
            && flags.checks_as_writer()
            && a.flags.contains(InodeFlags::APPEND);
        Ok(opened)
    }

    /// FUSE create: a new regular file, counted open, and its handle.
    pub fn create(
        &self,
        parent: InodeNo,
        name: &[u8],
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<(InodeAttr, Opened), FsError> {
        let new = super::names::new_inode(FileKind::Regular, mode, 0);
        let s = self.store()?;
        let a = s.create_unmasked(parent, name, &new, caller, umask, true)?;
        // The file is new and empty: there is no page cache to keep or drop yet.
        let opened = Opened {
            fh: self.handles.open(s.error_seq()),
            keep_cache: true,
            cache_dir: false,
            noflush: true,
            direct_io: false,
        };
        Ok((a, opened))
    }

    pub fn release(&self, ino: InodeNo, fh: u64) -> Result<(), FsError> {
        self.handles.close(fh);
        Ok(self.store()?.release(ino)?)
    }

    /// fsync and fsyncdir: commit, and fail if this commit or any since the handle last
    /// reported failed (data written through it may be lost; see `handles`).
    pub fn fsync(&self, fh: u64) -> Result<(), FsError> {
        Counters::add(&self.counters.fsyncs, 1);
        let s = self.store()?;
        let committed = s.commit();
        if self.handles.take_error(fh, s.error_seq()) && committed.is_ok() {
            return Err(FsError::refused(
                libc::EIO,
                "fsync: an earlier commit failed while this file was open; its data may be lost",
            ));
        }
        Ok(committed?)
    }

    /// Counted open like a file: removed while open, the directory keeps answering getattr
    /// (nlink 0) until releasedir. The handle remembers where its stream ends.
    pub fn opendir(&self, ino: InodeNo) -> Result<Opened, FsError> {
        let (end, a) = self.store()?.opendir(ino)?;
        Ok(Opened::dir(self.dirs.open(end), self.atime_due(&a)))
    }

    pub fn releasedir(&self, ino: InodeNo, fh: u64) -> Result<(), FsError> {
        self.dirs.close(fh);
        Ok(self.store()?.releasedir(ino)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::fixture;
    use super::*;
    use crate::core::FsConfig;
    use crate::error::ToErrno;
    use cowstore::{AtimeMode, AtimePolicy, InodeFlags};

    const ROOT: Caller = Caller { uid: 0, gid: 0 };

    #[test]
    fn access_modes_decode_from_the_accmode_bits() {
        let cases = [
            (libc::O_RDONLY, Access::Read, false, true),
            (libc::O_WRONLY, Access::Write, true, false),
            (libc::O_RDWR, Access::ReadWrite, true, true),
            (libc::O_ACCMODE, Access::Neither, true, false),
            (libc::O_RDONLY | libc::O_NONBLOCK, Access::Read, false, true),
        ];
        for (raw, access, writer, reads) in cases {
            let f = OpenFlags(raw | libc::O_LARGEFILE);
            assert_eq!(f.access(), access, "{raw:#o}");
            assert_eq!(f.checks_as_writer(), writer, "{raw:#o}");
            assert_eq!(f.reads(), reads, "{raw:#o}");
        }
        assert!(OpenFlags(libc::O_WRONLY | libc::O_APPEND).append());
        assert!(!OpenFlags(libc::O_WRONLY | libc::O_TRUNC).append());
    }

    #[test]
    fn the_page_cache_is_dropped_only_when_a_read_must_update_the_atime() {
        let ro = OpenFlags(libc::O_RDONLY);
        let wo = OpenFlags(libc::O_WRONLY);
        assert!(Opened::file(1, ro, false).keep_cache);
        assert!(!Opened::file(1, ro, true).keep_cache);
        assert!(!Opened::file(1, OpenFlags(libc::O_RDWR), true).keep_cache);
        assert!(Opened::file(1, wo, true).keep_cache, "no read through it");
        assert!(Opened::file(1, ro, true).noflush);
        let d = Opened::dir(2, false);
        assert!(d.keep_cache && d.cache_dir && !d.noflush);
        let d = Opened::dir(2, true);
        assert!(!d.keep_cache && !d.cache_dir);
    }

    #[test]
    fn open_decides_from_the_stored_atime_and_the_mount_policy() {
        let f = fixture(FsConfig::default());
        let (a, created) = f
            .core
            .create(InodeNo::ROOT, b"f", 0o644, 0o022, ROOT)
            .expect("create");
        assert!(created.keep_cache && created.noflush);
        f.core.release(a.ino, created.fh).expect("release");
        // A new file's atime is not after its mtime: relatime updates it on the first read.
        let o = f.core.open(a.ino, libc::O_RDONLY).expect("open");
        assert!(!o.keep_cache);
        assert_ne!(o.fh, created.fh, "handles are never reused");
        let w = f.core.open(a.ino, libc::O_WRONLY).expect("open");
        assert!(w.keep_cache);
        let never = FsConfig {
            atime: AtimePolicy {
                mode: AtimeMode::Never,
                nodiratime: false,
            },
            ..FsConfig::default()
        };
        let f = fixture(never);
        let (a, _) = f
            .core
            .create(InodeNo::ROOT, b"f", 0o644, 0, ROOT)
            .expect("create");
        assert!(f.core.open(a.ino, libc::O_RDONLY).expect("open").keep_cache);
        assert!(f.core.opendir(InodeNo::ROOT).expect("opendir").cache_dir);
    }

    #[test]
    fn append_only_files_open_for_writing_only_with_o_append() {
        let f = fixture(FsConfig::default());
        let (a, _) = f
            .core
            .create(InodeNo::ROOT, b"log", 0o644, 0, ROOT)
            .expect("create");
        f.store
            .set_flags(a.ino, InodeFlags::APPEND, ROOT)
            .expect("chattr +a");
        let e = f
            .core
            .open(a.ino, libc::O_WRONLY)
            .expect_err("not appending");
        assert_eq!(e.to_errno(), libc::EPERM);
        f.core
            .open(a.ino, libc::O_WRONLY | libc::O_APPEND)
            .expect("appending");
        f.core.open(a.ino, libc::O_RDONLY).expect("reading");
    }
}
