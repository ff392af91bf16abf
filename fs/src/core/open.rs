//! Opening files and directories: the open flags decoded, the store's open count, the handle
//! and what the kernel may cache (page cache, cached listings), which depends on whether the
//! next access must update the access time; FUSE passthrough for unmodified lower files opened
//! read-only ([`IoModes`]). Also release and fsync.

use super::filesystem::Core;
use crate::error::FsError;
use crate::stats::Counters;
use cowstore::{Caller, FileKind, InodeAttr, InodeFlags, InodeNo, Timespec};
use log::{debug, warn};
use parking_lot::{Condvar, Mutex};
use std::any::Any;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// A backing file registered with the kernel for FUSE passthrough, as the adapter made it (an
/// opaque fuser `BackingId`, which unregisters itself when dropped). The kernel takes its own
/// reference to the file at registration; the registration ends when the last clone goes.
#[derive(Clone)]
pub struct Backing(Arc<dyn Any + Send + Sync>);

impl Backing {
    pub fn new<T: Any + Send + Sync>(id: T) -> Backing {
        Backing(Arc::new(id))
    }

    /// The adapter's own value, if it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Backing")
    }
}

impl PartialEq for Backing {
    fn eq(&self, other: &Backing) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Backing {}

/// How an open may register a backing file with the kernel (the adapter's `open_backing`).
pub type RegisterBacking<'a> = &'a mut dyn FnMut(BorrowedFd<'_>) -> std::io::Result<Backing>;

/// How long a writer (a writable open, a truncate) waits for the passthrough opens of its inode
/// to be released before it is refused with ETXTBSY. The kernel drops its side of a passthrough
/// open at close(2) but tells the daemon with an asynchronous RELEASE, which may arrive after the
/// next open: this covers that gap, not a reader that keeps the file open.
const WRITER_WAIT: Duration = Duration::from_millis(500);

/// The opens of one inode the daemon has answered and not seen released, by I/O mode.
#[derive(Debug, Default)]
struct InodeIo {
    /// Opens served by the daemon (page cache or direct I/O), and writers at work (truncate).
    cached: u32,
    /// Opens the kernel serves from `backing`.
    passthrough: u32,
    backing: Option<Backing>,
    /// Opens that are asking the store whether the inode qualifies, with no lock held.
    probing: u32,
    /// Writers granted so far (while the entry exists): a probe that sees it change refrains.
    writers: u64,
    /// Daemon-served opens that may write, and writers at work: while there is one, the
    /// kernel's writeback cache may hold bytes of the file the store has not seen.
    writable: u32,
}

impl InodeIo {
    fn idle(&self) -> bool {
        self.cached == 0 && self.passthrough == 0 && self.probing == 0
    }
}

/// How a handle was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HandleMode {
    /// Served by the daemon; `writer`: it may change the file.
    Cached {
        writer: bool,
    },
    Passthrough,
}

#[derive(Debug, Default)]
struct IoTable {
    inodes: HashMap<InodeNo, InodeIo>,
    /// File handle → its inode and how it was opened.
    handles: HashMap<u64, (InodeNo, HandleMode)>,
}

impl IoTable {
    /// Forget `ino`'s entry once nothing refers to it (dropping its backing registration).
    fn tidy(&mut self, ino: InodeNo) {
        if self.inodes.get(&ino).is_some_and(InodeIo::idle) {
            self.inodes.remove(&ino);
        }
    }
}

/// FUSE passthrough bookkeeping: the kernel serves reads (and mmap) of a passthrough open from
/// its backing file, and refuses to mix I/O modes on one inode (fs/fuse/iomode.c, Linux 6.9+):
/// while an inode has a backing file every new open of it must be a passthrough open with that
/// same backing file, and a passthrough open of an inode with daemon-served opens fails; either
/// mistake fails the caller's open(2) with EIO. Hence, per inode, opens are all passthrough or
/// all not:
///
/// - passthrough: read-only opens of a regular file whose bytes are exactly one lower file's
///   (`Store::whole_lower_file`), when no other open of it exists; later read-only opens share
///   its backing file while one is open;
/// - a writer (writable open, truncate by path) of an inode with passthrough opens waits up to
///   [`WRITER_WAIT`] for them to be released, then fails with ETXTBSY: a passthrough reader must
///   never see the lower bytes after the store redirected them;
/// - the backing registration ends with the last passthrough open's release.
///
/// The daemon's counts run behind the kernel's (an open is counted before the kernel applies
/// it, a release after the kernel dropped it), so a mode the kernel has is always one the
/// daemon counts: the rules above never ask the kernel to mix.
#[derive(Debug, Default)]
pub struct IoModes {
    enabled: AtomicBool,
    table: Mutex<IoTable>,
    released: Condvar,
    /// A registration failed once (logged as a warning once, then at debug level).
    warned: AtomicBool,
}

impl IoModes {
    /// Passthrough on or off (the mount option and what the kernel agreed at INIT).
    pub fn enable(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Whether `ino` has passthrough opens now.
    pub fn passthrough_opens(&self, ino: InodeNo) -> u32 {
        self.table
            .lock()
            .inodes
            .get(&ino)
            .map_or(0, |e| e.passthrough)
    }

    /// How many opens of `ino` that may write the daemon has answered and not seen released
    /// (writers at work included). The kernel's writeback cache can hold dirty pages of a file
    /// only while one exists: it writes them back at every close (FLUSH) and before the
    /// RELEASE of the last one, and a shared writable mapping keeps its open alive.
    pub fn writable_opens(&self, ino: InodeNo) -> u32 {
        self.table.lock().inodes.get(&ino).map_or(0, |e| e.writable)
    }

    /// Every inode with an open that may write: under the writeback cache, the only ones the
    /// kernel may hold dirty pages of.
    pub fn writable_inodes(&self) -> Vec<InodeNo> {
        let t = self.table.lock();
        let mut v: Vec<InodeNo> = t
            .inodes
            .iter()
            .filter(|(_, e)| e.writable > 0)
            .map(|(ino, _)| *ino)
            .collect();
        v.sort_unstable();
        v
    }

    /// Wait (with the table locked) until `ino` has no passthrough opens, at most
    /// [`WRITER_WAIT`]; ETXTBSY if it still has.
    fn wait_for_readers(
        &self,
        t: &mut parking_lot::MutexGuard<'_, IoTable>,
        ino: InodeNo,
    ) -> Result<(), FsError> {
        let deadline = Instant::now() + WRITER_WAIT;
        while t.inodes.get(&ino).is_some_and(|e| e.passthrough > 0) {
            if self.released.wait_until(t, deadline).timed_out()
                && t.inodes.get(&ino).is_some_and(|e| e.passthrough > 0)
            {
                return Err(FsError::refused(
                    libc::ETXTBSY,
                    "the file is open read-only with FUSE passthrough: no writer until it closes",
                ));
            }
        }
        Ok(())
    }

    /// Count a daemon-served open `fh` of `ino` (`writer`: it may change the file).
    fn open_cached(&self, ino: InodeNo, fh: u64, writer: bool) -> Result<(), FsError> {
        let mut t = self.table.lock();
        if writer {
            self.wait_for_readers(&mut t, ino)?;
        } else if t.inodes.get(&ino).is_some_and(|e| e.passthrough > 0) {
            // Not reached: a read-only open of an inode with passthrough opens joins them.
            return Err(FsError::refused(libc::EIO, "open mixes I/O modes"));
        }
        let e = t.inodes.entry(ino).or_default();
        e.cached += 1;
        e.writers += u64::from(writer);
        e.writable += u32::from(writer);
        t.handles.insert(fh, (ino, HandleMode::Cached { writer }));
        Ok(())
    }

    /// Run `f`, a change to `ino`'s bytes that no handle carries (truncate by path), as a
    /// writer: not while passthrough opens exist, and no passthrough open starts meanwhile.
    pub fn writing<T>(
        &self,
        ino: InodeNo,
        f: impl FnOnce() -> Result<T, FsError>,
    ) -> Result<T, FsError> {
        {
            let mut t = self.table.lock();
            self.wait_for_readers(&mut t, ino)?;
            let e = t.inodes.entry(ino).or_default();
            e.cached += 1;
            e.writers += 1;
            e.writable += 1;
        }
        let r = f();
        let mut t = self.table.lock();
        if let Some(e) = t.inodes.get_mut(&ino) {
            e.cached = e.cached.saturating_sub(1);
            e.writable = e.writable.saturating_sub(1);
        }
        t.tidy(ino);
        r
    }

    /// Try to open `ino` read-only in passthrough as handle `fh`; `None` if it does not qualify
    /// now (another open exists, the file was written, its lower file changed under the store,
    /// registration failed): the caller opens it the ordinary way.
    fn open_passthrough(
        &self,
        ino: InodeNo,
        fh: u64,
        whole: impl FnOnce() -> Result<Option<std::fs::File>, FsError>,
        register: RegisterBacking<'_>,
    ) -> Result<Option<Backing>, FsError> {
        let writers = {
            let mut guard = self.table.lock();
            let t = &mut *guard;
            let e = t.inodes.entry(ino).or_default();
            if let Some(b) = e.backing.clone().filter(|_| e.passthrough > 0) {
                e.passthrough += 1;
                t.handles.insert(fh, (ino, HandleMode::Passthrough));
                return Ok(Some(b));
            }
            if e.cached > 0 {
                t.tidy(ino);
                return Ok(None);
            }
            e.probing += 1;
            e.writers
        };
        // Asking the store may open the lower file: not with the table locked.
        let found = whole();
        let mut guard = self.table.lock();
        let t = &mut *guard;
        let e = t.inodes.entry(ino).or_default();
        e.probing -= 1;
        let file = match found {
            Ok(Some(f)) if e.writers == writers && e.cached == 0 => f,
            Ok(_) => {
                t.tidy(ino);
                return Ok(None);
            }
            Err(err) => {
                // A lower file changed under the store (EIO, logged by the store): opened the
                // ordinary way, its reads fail as they would without passthrough.
                debug!("no passthrough for inode {}: {err}", ino.0);
                t.tidy(ino);
                return Ok(None);
            }
        };
        let backing = match e.backing.clone().filter(|_| e.passthrough > 0) {
            Some(b) => b,
            None => match register(file.as_fd()) {
                Ok(b) => b,
                Err(err) => {
                    if self.warned.swap(true, Ordering::Relaxed) {
                        debug!("FUSE passthrough of inode {}: {err}", ino.0);
                    } else {
                        warn!(
                            "FUSE passthrough of inode {}: the kernel refused the backing file \
                             ({err}); such files are served by the daemon",
                            ino.0
                        );
                    }
                    t.tidy(ino);
                    return Ok(None);
                }
            },
        };
        e.backing = Some(backing.clone());
        e.passthrough += 1;
        t.handles.insert(fh, (ino, HandleMode::Passthrough));
        Ok(Some(backing))
    }

    /// Handle `fh` is released; the last passthrough open of an inode ends its registration.
    fn release(&self, fh: u64) {
        let mut t = self.table.lock();
        let Some((ino, mode)) = t.handles.remove(&fh) else {
            return;
        };
        if let Some(e) = t.inodes.get_mut(&ino) {
            match mode {
                HandleMode::Passthrough => {
                    e.passthrough = e.passthrough.saturating_sub(1);
                    if e.passthrough == 0 {
                        e.backing = None;
                        self.released.notify_all();
                    }
                }
                HandleMode::Cached { writer } => {
                    e.cached = e.cached.saturating_sub(1);
                    e.writable = e.writable.saturating_sub(u32::from(writer));
                }
            }
        }
        t.tidy(ino);
    }
}

/// The answer to an open: the handle and what the kernel may keep cached.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// FOPEN_PASSTHROUGH with this backing file: the kernel reads from it directly.
    pub passthrough: Option<Backing>,
}

impl Opened {
    /// A file: nothing changes a file's bytes behind the kernel's back, so its page cache stays
    /// valid across opens, always. (Dropping it at an open races with a write in flight through
    /// another handle: the kernel copies a write-through write into its cached page and sends it
    /// afterwards, and a read between the drop and the write's arrival caches the old bytes for
    /// good, so the writer's own next read returns them. An access time that a cached read
    /// would not update is recorded at the open instead: see [`Core::open`].)
    pub fn file(fh: u64) -> Opened {
        Opened {
            fh,
            keep_cache: true,
            cache_dir: false,
            noflush: true,
            direct_io: false,
            passthrough: None,
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
            passthrough: None,
        }
    }

    /// A passthrough open: the kernel takes only FOPEN_NOFLUSH beside FOPEN_PASSTHROUGH (its
    /// FOPEN_PASSTHROUGH_MASK); the fuse page cache is not used.
    fn passthrough(fh: u64, backing: Backing) -> Opened {
        Opened {
            fh,
            keep_cache: false,
            cache_dir: false,
            noflush: true,
            direct_io: false,
            passthrough: Some(backing),
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
    /// without O_APPEND. A read-only open of an unmodified lower file is a passthrough open
    /// (see [`IoModes`]) when `register` makes the backing file; a writer of a file open in
    /// passthrough waits for it, or fails with ETXTBSY.
    pub fn open(
        &self,
        ino: InodeNo,
        flags: i32,
        register: RegisterBacking<'_>,
    ) -> Result<Opened, FsError> {
        let flags = OpenFlags(flags);
        let s = self.store()?;
        let a = s.open_file(ino, flags.checks_as_writer(), flags.append())?;
        let fh = self.handles.open(s.error_seq());
        match self.open_mode(ino, fh, flags, &a, register) {
            Ok(o) => Ok(o),
            Err(e) => {
                self.handles.close(fh);
                if let Err(undo) = s.release(ino) {
                    debug!("open of inode {}: undoing the open count: {undo}", ino.0);
                }
                Err(e)
            }
        }
    }

    fn open_mode(
        &self,
        ino: InodeNo,
        fh: u64,
        flags: OpenFlags,
        a: &InodeAttr,
        register: RegisterBacking<'_>,
    ) -> Result<Opened, FsError> {
        let s = self.store()?;
        if self.io.enabled() && flags.access() == Access::Read && a.kind == FileKind::Regular {
            let whole = || Ok(s.whole_lower_file(ino)?);
            if let Some(b) = self.io.open_passthrough(ino, fh, whole, register)? {
                // Reads through it never reach the daemon: the access is recorded now.
                if let Err(e) = s.touch_atime(ino, self.cfg.atime) {
                    self.io.release(fh);
                    return Err(e.into());
                }
                if self.atime_due(a) && !s.is_read_only() {
                    self.kernel.attrs_changed(ino);
                }
                Counters::add(&self.counters.passthrough_opens, 1);
                return Ok(Opened::passthrough(fh, b));
            }
        }
        self.io.open_cached(ino, fh, flags.checks_as_writer())?;
        // Reads through this handle may all come from the page cache and never reach the
        // daemon: an access that is due (relatime's first read since a change) is recorded now.
        // The kernel's cached attributes do not know it (no READ goes out to invalidate them).
        if flags.reads() && self.atime_due(a) && !s.is_read_only() {
            self.accessed(s, ino);
            self.kernel.attrs_changed(ino);
        }
        let mut opened = Opened::file(fh);
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
        let fh = self.handles.open(s.error_seq());
        // A writer whatever its access mode (the open flags of a create do not reach the core):
        // counting a reader as one costs at most a writeback before SEEK_DATA/SEEK_HOLE. A new
        // inode has no passthrough opens to wait for.
        if let Err(e) = self.io.open_cached(a.ino, fh, true) {
            self.handles.close(fh);
            if let Err(undo) = s.release(a.ino) {
                debug!(
                    "create of inode {}: undoing the open count: {undo}",
                    a.ino.0
                );
            }
            return Err(e);
        }
        // The file is new and empty: there is no page cache to keep or drop yet.
        let opened = Opened {
            fh,
            keep_cache: true,
            cache_dir: false,
            noflush: true,
            direct_io: false,
            passthrough: None,
        };
        Ok((a, opened))
    }

    pub fn release(&self, ino: InodeNo, fh: u64) -> Result<(), FsError> {
        self.handles.close(fh);
        self.io.release(fh);
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

    fn no_backing(_: BorrowedFd<'_>) -> std::io::Result<Backing> {
        Err(std::io::Error::from_raw_os_error(libc::ENOTSUP))
    }

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
    fn a_files_page_cache_is_kept_across_opens() {
        // Regression (issue 12 follow-up): an open with a due access time dropped the page
        // cache, racing with another handle's write in flight (the writer then read its own
        // write back stale; tools/tests/coherence.rs shows it on a mount).
        let o = Opened::file(1);
        assert!(o.keep_cache && o.noflush && !o.direct_io);
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
        // A new file's atime is not after its mtime: relatime updates it at the first open
        // for reading (its reads may all come from the page cache, which stays).
        let atime =
            |f: &crate::core::testing::Fixture| f.core.getattr(a.ino).expect("getattr").atime;
        let w = f
            .core
            .open(a.ino, libc::O_WRONLY, &mut no_backing)
            .expect("open");
        assert!(w.keep_cache);
        assert_eq!(atime(&f), a.atime, "no read through a write-only open");
        // The store's clock is the kernel's coarse one: let it tick past the creation.
        std::thread::sleep(std::time::Duration::from_millis(10));
        let o = f
            .core
            .open(a.ino, libc::O_RDONLY, &mut no_backing)
            .expect("open");
        assert!(o.keep_cache);
        assert_ne!(o.fh, created.fh, "handles are never reused");
        let touched = atime(&f);
        assert!(touched > a.atime, "the due access is recorded at the open");
        f.core
            .open(a.ino, libc::O_RDONLY, &mut no_backing)
            .expect("open");
        assert_eq!(atime(&f), touched, "relatime: once per change");
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
        assert!(
            f.core
                .open(a.ino, libc::O_RDONLY, &mut no_backing)
                .expect("open")
                .keep_cache
        );
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
            .open(a.ino, libc::O_WRONLY, &mut no_backing)
            .expect_err("not appending");
        assert_eq!(e.to_errno(), libc::EPERM);
        f.core
            .open(a.ino, libc::O_WRONLY | libc::O_APPEND, &mut no_backing)
            .expect("appending");
        f.core
            .open(a.ino, libc::O_RDONLY, &mut no_backing)
            .expect("reading");
    }

    mod passthrough {
        use super::super::super::filesystem::testing::NoKernel;
        use super::*;
        use cowstore::{MkfsOptions, OpenOptions, SetAttr, Store};
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::AtomicUsize;

        /// A registration the test can see: how many exist, and that each ends.
        struct Reg(Arc<AtomicUsize>);
        impl Drop for Reg {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }

        struct Lower {
            core: Core,
            store: Arc<Store>,
            live: Arc<AtomicUsize>,
            registered: Arc<AtomicUsize>,
            _dir: tempfile::TempDir,
        }

        impl Lower {
            fn new(cfg: FsConfig) -> Lower {
                let dir = tempfile::tempdir().expect("tempdir");
                let lower = dir.path().join("lower");
                std::fs::create_dir(&lower).expect("mkdir");
                std::fs::write(lower.join("f"), vec![5u8; 3 * 4096 + 7]).expect("write");
                let path = dir.path().join("store");
                Store::mkfs(&path, &MkfsOptions::default()).expect("mkfs");
                let opts = OpenOptions {
                    commit_interval: None,
                    lower: Some(lower),
                    ..OpenOptions::default()
                };
                let store = Arc::new(Store::open(&path, &opts).expect("open"));
                let counters = Arc::new(Counters::default());
                let mut core =
                    Core::new(store.clone(), cfg, counters, Arc::new(NoKernel::default()));
                core.negotiated(false, false, true);
                Lower {
                    core,
                    store,
                    live: Arc::default(),
                    registered: Arc::default(),
                    _dir: dir,
                }
            }

            fn ino(&self) -> InodeNo {
                self.store.lookup(InodeNo::ROOT, b"f").expect("lookup").ino
            }

            /// Open with a registration that reads the backing file (it must be the lower
            /// file's bytes) and counts itself.
            fn open(&self, flags: i32) -> Result<Opened, FsError> {
                let (live, registered) = (self.live.clone(), self.registered.clone());
                let mut register = move |fd: BorrowedFd<'_>| {
                    // Positional: the descriptor shares its offset with the store's own.
                    let f = std::fs::File::from(fd.try_clone_to_owned()?);
                    let mut bytes = vec![0u8; 3 * 4096 + 8];
                    let n = f.read_at(&mut bytes, 0)?;
                    assert!(n == 3 * 4096 + 7 && bytes[..n].iter().all(|&b| b == 5));
                    live.fetch_add(1, Ordering::SeqCst);
                    registered.fetch_add(1, Ordering::SeqCst);
                    Ok(Backing::new(Reg(live.clone())))
                };
                self.core.open(self.ino(), flags, &mut register)
            }

            fn truncate(&self, size: u64) -> Result<InodeAttr, FsError> {
                let set = SetAttr {
                    size: Some(size),
                    ..SetAttr::default()
                };
                self.core.setattr(self.ino(), set, &ROOT)
            }
        }

        #[test]
        fn read_only_opens_of_an_unmodified_lower_file_share_one_backing_file() {
            let l = Lower::new(FsConfig::default());
            let a = l.open(libc::O_RDONLY).expect("open");
            let b = l.open(libc::O_RDONLY | libc::O_NONBLOCK).expect("open");
            assert!(a.passthrough.is_some() && a.passthrough == b.passthrough);
            assert!(
                !a.keep_cache && !a.direct_io && a.noflush,
                "FOPEN_PASSTHROUGH_MASK"
            );
            assert_eq!(l.registered.load(Ordering::SeqCst), 1);
            assert_eq!(l.core.counters.snapshot().passthrough_opens, 2);
            // The adapter's reply consumes the answer; the table keeps the registration.
            let (fa, fb) = (a.fh, b.fh);
            drop((a, b));
            l.core.release(l.ino(), fa).expect("release");
            assert_eq!(
                l.live.load(Ordering::SeqCst),
                1,
                "one passthrough open is left"
            );
            l.core.release(l.ino(), fb).expect("release");
            assert_eq!(
                l.live.load(Ordering::SeqCst),
                0,
                "the last release unregisters"
            );
            // And a new one registers again.
            let c = l.open(libc::O_RDONLY).expect("open");
            assert!(c.passthrough.is_some());
            assert_eq!(l.registered.load(Ordering::SeqCst), 2);
        }

        #[test]
        fn a_writer_of_a_file_open_in_passthrough_waits_then_gets_etxtbsy() {
            let l = Lower::new(FsConfig::default());
            let r = l.open(libc::O_RDONLY).expect("open");
            assert!(r.passthrough.is_some());
            let started = Instant::now();
            let e = l
                .open(libc::O_RDWR)
                .expect_err("a writer beside passthrough");
            assert_eq!(e.to_errno(), libc::ETXTBSY);
            assert!(started.elapsed() >= WRITER_WAIT, "it waited first");
            let e = l.truncate(1).expect_err("a truncate beside passthrough");
            assert_eq!(e.to_errno(), libc::ETXTBSY);
            assert_eq!(
                l.store.getattr(l.ino()).expect("getattr").size,
                3 * 4096 + 7
            );
            // The refused open left no open count behind: the store still has one (the reader).
            l.core.release(l.ino(), r.fh).expect("release");
            let w = l.open(libc::O_WRONLY).expect("no reader now");
            assert!(w.passthrough.is_none());
            l.core.release(l.ino(), w.fh).expect("release");
        }

        #[test]
        fn a_writer_gets_in_when_the_reader_closes_within_the_wait() {
            let l = Lower::new(FsConfig::default());
            let r = l.open(libc::O_RDONLY).expect("open");
            std::thread::scope(|s| {
                s.spawn(|| {
                    std::thread::sleep(WRITER_WAIT / 5);
                    l.core.release(l.ino(), r.fh).expect("release");
                });
                let w = l
                    .open(libc::O_WRONLY)
                    .expect("the writer waited for the release");
                assert!(w.passthrough.is_none());
            });
        }

        #[test]
        fn no_passthrough_beside_a_writer_nor_once_the_file_was_changed() {
            let l = Lower::new(FsConfig::default());
            let w = l.open(libc::O_WRONLY).expect("open");
            let r = l.open(libc::O_RDONLY).expect("open");
            assert!(r.passthrough.is_none(), "a writable open exists");
            l.core.release(l.ino(), r.fh).expect("release");
            l.core.release(l.ino(), w.fh).expect("release");
            // Opened for writing but not written: still the lower file's bytes.
            let r = l.open(libc::O_RDONLY).expect("open");
            assert!(r.passthrough.is_some());
            l.core.release(l.ino(), r.fh).expect("release");
            l.store.write(l.ino(), 4096, b"new").expect("write");
            let r = l.open(libc::O_RDONLY).expect("open");
            assert!(r.passthrough.is_none(), "a block now lives in the pool");
            assert_eq!(l.registered.load(Ordering::SeqCst), 1);
        }

        #[test]
        fn a_truncated_file_is_not_passed_through() {
            let l = Lower::new(FsConfig::default());
            l.truncate(4096).expect("truncate");
            assert!(l.open(libc::O_RDONLY).expect("open").passthrough.is_none());
        }

        #[test]
        fn off_or_refused_by_the_kernel_the_open_is_served_by_the_daemon() {
            let off = FsConfig {
                passthrough: false,
                ..FsConfig::default()
            };
            let l = Lower::new(off);
            assert!(l.open(libc::O_RDONLY).expect("open").passthrough.is_none());
            assert_eq!(l.registered.load(Ordering::SeqCst), 0);
            let l = Lower::new(FsConfig::default());
            let o = l
                .core
                .open(l.ino(), libc::O_RDONLY, &mut no_backing)
                .expect("open");
            assert!(o.passthrough.is_none());
            // Its mode is the daemon's now: a writer needs no wait.
            let w = l.open(libc::O_WRONLY).expect("open");
            assert!(w.passthrough.is_none());
        }
    }
}
