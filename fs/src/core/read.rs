//! File data: read (spliced from the pool, or through a buffer), write, fallocate, lseek
//! (SEEK_DATA/SEEK_HOLE) and copy_file_range (a reflink in the store).
//!
//! A read reply takes the zero-copy path when the mount splices, the session's device and the
//! pool's descriptor are at hand, and the reply fits this thread's pipe; otherwise, or when a
//! splice fails before anything reached the device, the bytes go through a buffer.

use super::config::CopyMode;
use super::filesystem::{report, Core, Kernel};
use crate::cred::KernelFsetid;
use crate::error::FsError;
use crate::splice::{self, SpliceError};
use crate::stats::Counters;
use crate::sys;
use cowstore::acl::Cred;
use cowstore::{FallocMode, InodeNo, PinnedRead, Privs, SeekWhence, Segment, Store};
use log::{debug, warn};
use std::io;
use std::sync::Arc;

/// The answer to a read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadReply {
    /// The reply went to the device by splice (or its request is gone): nothing more to send.
    Sent,
    /// The bytes, to send as an ordinary reply.
    Data(Vec<u8>),
}

/// What the kernel says of a WRITE in its `write_flags`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteKind {
    /// FUSE_WRITE_CACHE: writeback of pages the kernel cached, sent without the writer's
    /// credentials.
    pub cache: bool,
    /// FUSE_WRITE_KILL_SUIDGID (sent under FUSE_HANDLE_KILLPRIV_V2): the writer lacks
    /// CAP_FSETID, so setuid and setgid go as for any unprivileged writer.
    pub kill_suidgid: bool,
}

/// Which way a read reply goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadPath {
    Splice,
    /// `fallback`: splice was wanted and is not possible for this reply (counted).
    Buffered {
        fallback: bool,
    },
}

/// The splice-or-buffer choice: `mode` of the mount, whether the device and the pool's
/// descriptor are at hand, and (asked only when both are) whether the reply fits the pipe.
pub(crate) fn read_path(
    mode: CopyMode,
    have_fds: bool,
    fits: impl FnOnce() -> io::Result<bool>,
) -> ReadPath {
    if mode != CopyMode::Splice || !have_fds {
        return ReadPath::Buffered { fallback: false };
    }
    match fits() {
        Ok(true) => ReadPath::Splice,
        Ok(false) => ReadPath::Buffered { fallback: true },
        Err(e) => {
            warn!("read: no splice pipe: {e}");
            ReadPath::Buffered { fallback: true }
        }
    }
}

/// What became of a spliced reply.
#[derive(Debug)]
pub(crate) enum Spliced {
    /// Sent.
    Sent,
    /// The request was interrupted and is gone: there is nobody left to answer.
    Gone,
    /// Nothing reached the device: answer from a buffer instead.
    Fallback(io::Error),
    /// The device refused the reply; the request gets an error.
    Failed(io::Error),
}

impl Spliced {
    pub(crate) fn from_result(r: Result<u64, SpliceError>) -> Spliced {
        match r {
            Ok(_) => Spliced::Sent,
            Err(SpliceError::NotSent(e)) => Spliced::Fallback(e),
            Err(SpliceError::Device(e)) if e.raw_os_error() == Some(libc::ENOENT) => Spliced::Gone,
            Err(SpliceError::Device(e)) => Spliced::Failed(e),
        }
    }
}

/// The `fallocate(2)` modes the store implements; EOPNOTSUPP for the others.
pub(crate) fn falloc_mode(mode: i32) -> Result<FallocMode, FsError> {
    const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
    const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
    const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
    Ok(match mode {
        0 => FallocMode::Allocate { keep_size: false },
        KEEP => FallocMode::Allocate { keep_size: true },
        x if x == PUNCH | KEEP => FallocMode::PunchHole,
        ZERO => FallocMode::ZeroRange { keep_size: false },
        x if x == ZERO | KEEP => FallocMode::ZeroRange { keep_size: true },
        _ => {
            return Err(FsError::refused(
                libc::EOPNOTSUPP,
                "fallocate: unsupported mode",
            ))
        }
    })
}

/// The `lseek(2)` whences that reach the daemon: the kernel answers SEEK_SET/CUR/END itself.
pub(crate) fn seek_whence(whence: i32) -> Result<SeekWhence, FsError> {
    match whence {
        libc::SEEK_DATA => Ok(SeekWhence::Data),
        libc::SEEK_HOLE => Ok(SeekWhence::Hole),
        _ => Err(FsError::refused(
            libc::EINVAL,
            "lseek: only SEEK_DATA/SEEK_HOLE",
        )),
    }
}

/// The most one copy_file_range request moves: the reply carries a u32 byte count, and it
/// stays block-aligned so that the next request of a long copy starts on a block boundary and
/// keeps sharing blocks.
pub(crate) fn clone_len(len: u64, block_size: u64) -> u64 {
    len.min(u64::from(u32::MAX) / block_size * block_size)
}

impl Core {
    /// READ of `size` bytes at `offset`; `unique` is the request's id, which a spliced reply
    /// carries. The read counts as an access (atime), recorded before the reply so that a stat
    /// after the read sees it.
    pub fn read(
        &self,
        ino: InodeNo,
        offset: u64,
        size: u32,
        unique: u64,
    ) -> Result<ReadReply, FsError> {
        Counters::add(&self.counters.reads, 1);
        let s = self.store()?;
        let segs = s.read(ino, offset, u64::from(size))?;
        self.accessed(s, ino);
        let dev = self.kernel.device();
        let pool = sys::file_fd(self.pool.as_ref());
        let path = read_path(self.cfg.copy_mode, dev.is_some() && pool.is_some(), || {
            splice::fits(&segs)
        });
        if let (ReadPath::Splice, Some(dev), Some(pool)) = (path, dev, pool) {
            // Counted before the reply goes out, and taken back if it does not: a reader that
            // looks at the counters once its read returned must find it counted.
            let bytes: u64 = segs.iter().map(Segment::len).sum();
            Counters::add(&self.counters.read_bytes_spliced, bytes);
            let sent = Spliced::from_result(splice::reply(dev, unique, pool, &segs));
            if !matches!(sent, Spliced::Sent) {
                Counters::sub(&self.counters.read_bytes_spliced, bytes);
            }
            match sent {
                Spliced::Sent => return Ok(ReadReply::Sent),
                Spliced::Gone => {
                    Counters::add(&self.counters.errors, 1);
                    debug!("read: request {unique} gone before its reply");
                    return Ok(ReadReply::Sent);
                }
                Spliced::Failed(e) => return Err(FsError::Device(e)),
                Spliced::Fallback(e) => {
                    warn!("read: splice failed, answering from a buffer: {e}");
                    Counters::add(&self.counters.splice_fallbacks, 1);
                }
            }
        } else if path == (ReadPath::Buffered { fallback: true }) {
            Counters::add(&self.counters.splice_fallbacks, 1);
        }
        let buf = self.read_buffered(&segs)?;
        Counters::add(&self.counters.read_bytes_buffered, buf.len() as u64);
        Ok(ReadReply::Data(buf))
    }

    /// The buffered read path: the bytes pass through a userspace buffer.
    fn read_buffered(&self, segs: &PinnedRead) -> Result<Vec<u8>, FsError> {
        use std::os::unix::fs::FileExt;
        let total: u64 = segs.iter().map(Segment::len).sum();
        let mut buf = vec![0u8; total as usize];
        let mut at = 0usize;
        for s in segs.iter() {
            let n = s.len() as usize;
            let dst = &mut buf[at..at + n];
            match *s {
                Segment::Pool { pos, .. } => self.pool.read_at(dst, pos).map_err(io_error)?,
                Segment::Lower { file, pos, .. } => segs
                    .lower_file(file)
                    .ok_or_else(|| io_error(io::Error::other("lower file of a read is not open")))?
                    .read_exact_at(dst, pos)
                    .map_err(io_error)?,
                Segment::Hole { .. } => {}
            }
            at += n;
        }
        Ok(buf)
    }

    /// WRITE by `cred`; a write that drops setuid/setgid tells the kernel (see
    /// [`super::Kernel::attrs_changed`]).
    ///
    /// The kernel's own share of `file_remove_privs` depends on FUSE_HANDLE_KILLPRIV_V2. Without
    /// it the kernel clears setuid (and group-executable setgid) with a SETATTR before the
    /// write and removes file capabilities itself; the store adds what it leaves (setgid of a
    /// writer outside the group). With it the kernel leaves all of it to us and says, by
    /// `kill_suidgid`, whether the writer lacks CAP_FSETID; that answer, exact where ours
    /// (read from /proc) is racy, decides. Writeback of cached pages (`cache`) kills nothing:
    /// the kernel sends it with no credentials, and it stripped the privileges when write(2)
    /// put the bytes in its cache (a writeback-cache write to a file with bits to kill is sent
    /// through at once, with the flag, instead of being cached). Nor does it stamp mtime and
    /// ctime: the kernel keeps those under the writeback cache and sends them itself.
    pub fn write(
        &self,
        ino: InodeNo,
        offset: u64,
        data: &[u8],
        cred: &dyn Cred,
        kind: WriteKind,
    ) -> Result<u32, FsError> {
        Counters::add(&self.counters.writes, 1);
        let fsetid = KernelFsetid::new(cred, !kind.kill_suidgid);
        let privs = if kind.cache {
            Privs::Writeback
        } else if self.killpriv_v2 {
            Privs::KilledBy(&fsetid)
        } else {
            Privs::KilledBy(cred)
        };
        let (n, dropped) = self
            .store()?
            .write_with(ino, offset, data, privs)
            .inspect_err(|_| {
                if kind.cache {
                    Counters::add(&self.counters.writeback_errors, 1);
                }
            })?;
        let n = u32::try_from(n).map_err(|_| FsError::refused(libc::EINVAL, "write: too large"))?;
        self.attrs_changed(ino, dropped);
        Counters::add(&self.counters.write_bytes, u64::from(n));
        Ok(n)
    }

    pub fn fallocate(
        &self,
        ino: InodeNo,
        offset: u64,
        len: u64,
        mode: i32,
        cred: &dyn Cred,
    ) -> Result<(), FsError> {
        let m = falloc_mode(mode)?;
        let dropped = self.store()?.fallocate_as(ino, offset, len, m, cred)?;
        self.attrs_changed(ino, dropped);
        Ok(())
    }

    /// SEEK_DATA/SEEK_HOLE from `offset`; ENXIO for a negative offset, EOVERFLOW for an answer
    /// an `off_t` cannot hold.
    ///
    /// The kernel sends FUSE_LSEEK without writing back the dirty pages it caches (fuse_lseek,
    /// unlike fallocate and copy_file_range, does not): under the writeback cache the store may
    /// not yet have bytes that write(2) accepted, and an answer from it alone would call them
    /// a hole (GNU cp of a file that looks sparse then copies zeros). Dirty pages exist only
    /// while the inode has an open that may write ([`IoModes::writable_opens`]); then the answer
    /// is a [`SeekJob`] that has the kernel write them back first.
    ///
    /// [`IoModes::writable_opens`]: super::IoModes::writable_opens
    pub fn lseek(&self, ino: InodeNo, offset: i64, whence: i32) -> Result<Seek, FsError> {
        let whence = seek_whence(whence)?;
        let from = u64::try_from(offset)
            .map_err(|_| FsError::refused(libc::ENXIO, "lseek: negative offset"))?;
        if self.cfg.writeback_cache && self.io.writable_opens(ino) > 0 {
            Counters::add(&self.counters.seek_writebacks, 1);
            return Ok(Seek::AfterWriteback(SeekJob {
                store: self.store_arc()?,
                kernel: self.kernel.clone(),
                counters: self.counters.clone(),
                ino,
                from,
                whence,
            }));
        }
        Ok(Seek::At(seek_in(self.store()?, ino, from, whence)?))
    }

    /// copy_file_range: shares the blocks (a reflink) rather than copying them; no flags are
    /// defined (EINVAL for any).
    #[allow(clippy::too_many_arguments)]
    ///
    /// The kernel strips no privileges for it under FUSE_HANDLE_KILLPRIV_V2 (its
    /// `file_modified` leaves them to us and the request carries no flag), so the clone drops
    /// what `cred` may not keep, as a write would.
    pub fn copy_file_range(
        &self,
        ino_in: InodeNo,
        offset_in: u64,
        ino_out: InodeNo,
        offset_out: u64,
        len: u64,
        flags: u64,
        cred: &dyn Cred,
    ) -> Result<u32, FsError> {
        if flags != 0 {
            return Err(FsError::refused(libc::EINVAL, "copy_file_range: flags"));
        }
        let len = clone_len(len, self.block_size);
        let s = self.store()?;
        let (n, dropped) = s.clone_range_as(ino_in, offset_in, ino_out, offset_out, len, cred)?;
        self.attrs_changed(ino_out, dropped);
        let n = u32::try_from(n)
            .map_err(|_| FsError::refused(libc::EOVERFLOW, "copy_file_range: count"))?;
        Counters::add(&self.counters.reflinks, 1);
        Counters::add(&self.counters.reflink_bytes, u64::from(n));
        Ok(n)
    }
}

/// SEEK_DATA/SEEK_HOLE answered from the store.
fn seek_in(s: &Store, ino: InodeNo, from: u64, whence: SeekWhence) -> Result<i64, FsError> {
    let at = s.seek(ino, from, whence)?;
    i64::try_from(at).map_err(|_| FsError::refused(libc::EOVERFLOW, "lseek: offset too large"))
}

/// The answer to SEEK_DATA/SEEK_HOLE.
#[derive(Debug)]
pub enum Seek {
    /// The offset, from the store.
    At(i64),
    /// The kernel may cache bytes of the file that the store has not seen: [`SeekJob::run`]
    /// answers once they are written back. It must run away from the request threads, which
    /// serve the WRITEs it waits for.
    AfterWriteback(SeekJob),
}

/// A SEEK_DATA/SEEK_HOLE that waits for the kernel's writeback of the file (see
/// [`Core::lseek`]).
pub struct SeekJob {
    store: Arc<Store>,
    kernel: Arc<dyn Kernel>,
    counters: Arc<Counters>,
    ino: InodeNo,
    from: u64,
    whence: SeekWhence,
}

impl std::fmt::Debug for SeekJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeekJob")
            .field("ino", &self.ino)
            .field("from", &self.from)
            .field("whence", &self.whence)
            .finish()
    }
}

impl SeekJob {
    /// Have the kernel write back the file's dirty pages from the offset on (a seek from there
    /// looks at nothing before it, and the kernel's own size, which may run ahead of the store's
    /// by cached appends, is reached by a dirty page at or past the offset, or is at most the
    /// offset), then answer from the store. `Err` is the errno, logged and counted like every
    /// failed request's.
    pub fn run(self) -> Result<i64, i32> {
        let r = self
            .kernel
            .write_back(self.ino, self.from)
            .map_err(FsError::Kernel)
            .and_then(|()| seek_in(&self.store, self.ino, self.from, self.whence));
        r.map_err(|e| report(&self.counters, "lseek", e))
    }
}

fn io_error(e: io::Error) -> FsError {
    FsError::Store(cowstore::Error::Io(e))
}

#[cfg(test)]
mod tests {
    use super::super::testing::fixture;
    use super::*;
    use crate::core::FsConfig;
    use crate::error::ToErrno;
    use cowstore::Caller;

    const ROOT: Caller = Caller { uid: 0, gid: 0 };

    #[test]
    fn splice_is_chosen_only_when_the_mount_splices_and_the_reply_fits() {
        let never = || -> io::Result<bool> { panic!("fits asked although splice is out") };
        let buffered = ReadPath::Buffered { fallback: false };
        assert_eq!(read_path(CopyMode::Buffered, true, never), buffered);
        assert_eq!(read_path(CopyMode::Splice, false, never), buffered);
        assert_eq!(
            read_path(CopyMode::Splice, true, || Ok(true)),
            ReadPath::Splice
        );
        let fallback = ReadPath::Buffered { fallback: true };
        assert_eq!(read_path(CopyMode::Splice, true, || Ok(false)), fallback);
        let no_pipe = || Err(io::Error::from_raw_os_error(libc::EMFILE));
        assert_eq!(read_path(CopyMode::Splice, true, no_pipe), fallback);
    }

    #[test]
    fn a_failed_splice_falls_back_unless_the_device_refused_it() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert!(matches!(Spliced::from_result(Ok(7)), Spliced::Sent));
        let not_sent = Spliced::from_result(Err(SpliceError::NotSent(e(libc::EAGAIN))));
        assert!(matches!(not_sent, Spliced::Fallback(_)));
        let gone = Spliced::from_result(Err(SpliceError::Device(e(libc::ENOENT))));
        assert!(matches!(gone, Spliced::Gone));
        let refused = Spliced::from_result(Err(SpliceError::Device(e(libc::EINVAL))));
        assert!(matches!(refused, Spliced::Failed(_)));
        let err = FsError::Device(e(libc::EINVAL));
        assert_eq!(err.to_errno(), libc::EIO);
        assert!(err.is_fault());
    }

    #[test]
    fn without_a_device_reads_are_buffered_and_counted_so() {
        let f = fixture(FsConfig::default());
        let (a, o) = f
            .core
            .create(InodeNo::ROOT, b"f", 0o644, 0, ROOT)
            .expect("create");
        assert_eq!(
            f.core
                .write(a.ino, 4096, b"tail", &ROOT, WriteKind::default())
                .expect("write"),
            4
        );
        let r = f.core.read(a.ino, 4090, 100, 1).expect("read");
        let mut want = vec![0u8; 6];
        want.extend_from_slice(b"tail");
        assert_eq!(r, ReadReply::Data(want));
        let c = f.core.counters.snapshot();
        assert_eq!(
            (c.reads, c.read_bytes_buffered, c.read_bytes_spliced),
            (1, 10, 0)
        );
        assert_eq!(c.splice_fallbacks, 0, "no device is not a fallback");
        assert_eq!((c.writes, c.write_bytes), (1, 4));
        f.core.release(a.ino, o.fh).expect("release");
    }

    #[test]
    fn a_write_that_drops_setuid_invalidates_the_cached_mode() {
        let f = fixture(FsConfig::default());
        let owner = Caller {
            uid: 1000,
            gid: 1000,
        };
        let (a, _) = f
            .core
            .create(InodeNo::ROOT, b"suid", 0o4777, 0, owner)
            .expect("create");
        let plain = WriteKind::default();
        f.core
            .write(a.ino, 0, b"x", &ROOT, plain)
            .expect("root keeps it");
        assert!(f.kernel.invalidated.lock().is_empty());
        let other = Caller {
            uid: 2000,
            gid: 2000,
        };
        f.core.write(a.ino, 0, b"y", &other, plain).expect("write");
        assert_eq!(*f.kernel.invalidated.lock(), vec![a.ino]);
        assert_eq!(f.core.getattr(a.ino).expect("stat").perm & 0o4000, 0);
    }

    // Regression (issue 12, killpriv): under FUSE_HANDLE_KILLPRIV_V2 the kernel's
    // FUSE_WRITE_KILL_SUIDGID decides whether setuid goes, cached writeback kills nothing, and
    // every other write removes security.capability.
    #[test]
    fn under_killpriv_v2_the_write_flag_decides_and_capabilities_go() {
        let mut f = fixture(FsConfig::default());
        f.core.negotiated(true, false, false);
        let other = Caller {
            uid: 2000,
            gid: 2000,
        };
        let (a, _) = f
            .core
            .create(InodeNo::ROOT, b"suid", 0o6755, 0, other)
            .expect("create");
        let perm = |f: &crate::core::testing::Fixture| f.core.getattr(a.ino).expect("stat").perm;
        let cache = WriteKind {
            cache: true,
            kill_suidgid: false,
        };
        f.core
            .write(a.ino, 0, b"c", &other, cache)
            .expect("writeback");
        assert_eq!(perm(&f), 0o6755, "writeback of cached pages kills nothing");
        // No flag: the kernel found CAP_FSETID, whatever the uid says.
        f.core
            .write(a.ino, 0, b"x", &other, WriteKind::default())
            .expect("write");
        assert_eq!(perm(&f), 0o6755);
        let kill = WriteKind {
            cache: false,
            kill_suidgid: true,
        };
        f.store
            .setxattr(a.ino, cowstore::acl::CAPABILITY_XATTR, b"\x01", 0)
            .expect("setcap");
        f.core.write(a.ino, 0, b"y", &ROOT, kill).expect("write");
        assert_eq!(perm(&f), 0o0755, "setuid and group-executable setgid go");
        assert_eq!(*f.kernel.invalidated.lock(), vec![a.ino]);
        let cap = f.store.getxattr(a.ino, cowstore::acl::CAPABILITY_XATTR);
        assert!(matches!(cap, Err(cowstore::Error::NoAttr)), "{cap:?}");
    }

    // Regression (issue 12, writeback_cache, gap e): the writeback of cached pages stamped the
    // file's mtime and ctime with the daemon's clock; the kernel keeps those itself and sends
    // them with a setattr that background writeback may send before the pages, so the store
    // kept a later mtime than the file had (a snapshot copied it; the kernel showed its own).
    #[test]
    fn the_writeback_of_cached_pages_stamps_no_times() {
        let f = fixture(FsConfig::default());
        let (a, _) = f
            .core
            .create(InodeNo::ROOT, b"f", 0o644, 0, ROOT)
            .expect("create");
        let kernels = cowstore::Timespec { sec: 1000, nsec: 5 };
        let set = cowstore::SetAttr {
            mtime: Some(cowstore::TimeSet::At(kernels)),
            ctime: Some(kernels),
            ..cowstore::SetAttr::default()
        };
        f.core
            .setattr(a.ino, set, &ROOT)
            .expect("the kernel's times");
        let cache = WriteKind {
            cache: true,
            kill_suidgid: false,
        };
        f.core
            .write(a.ino, 0, b"cached", &ROOT, cache)
            .expect("writeback");
        let got = f.core.getattr(a.ino).expect("stat");
        assert_eq!((got.mtime, got.ctime, got.size), (kernels, kernels, 6));
        f.core
            .write(a.ino, 0, b"direct", &ROOT, WriteKind::default())
            .expect("write");
        let got = f.core.getattr(a.ino).expect("stat");
        assert!(
            got.mtime > kernels && got.ctime > kernels,
            "a write(2) stamps"
        );
    }

    #[test]
    fn fallocate_modes_and_seek_whences_decode_or_refuse() {
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        assert_eq!(
            falloc_mode(0).ok(),
            Some(FallocMode::Allocate { keep_size: false })
        );
        assert_eq!(
            falloc_mode(libc::FALLOC_FL_PUNCH_HOLE | keep).ok(),
            Some(FallocMode::PunchHole)
        );
        assert_eq!(
            falloc_mode(libc::FALLOC_FL_ZERO_RANGE | keep).ok(),
            Some(FallocMode::ZeroRange { keep_size: true })
        );
        let punch_alone = falloc_mode(libc::FALLOC_FL_PUNCH_HOLE);
        assert_eq!(punch_alone.expect_err("punch").to_errno(), libc::EOPNOTSUPP);
        let collapse = falloc_mode(libc::FALLOC_FL_COLLAPSE_RANGE);
        assert_eq!(collapse.expect_err("collapse").to_errno(), libc::EOPNOTSUPP);
        assert_eq!(seek_whence(libc::SEEK_DATA).ok(), Some(SeekWhence::Data));
        assert_eq!(seek_whence(libc::SEEK_HOLE).ok(), Some(SeekWhence::Hole));
        let set = seek_whence(libc::SEEK_SET);
        assert_eq!(set.expect_err("set").to_errno(), libc::EINVAL);
    }

    // Regression (issue 12, writeback_cache): the kernel sends FUSE_LSEEK without writing back
    // the pages it caches, and SEEK_DATA answered from the store alone called bytes that
    // write(2) had accepted a hole (ENXIO). While a file is open for writing under the
    // writeback cache, the seek has the kernel write it back from the offset on first.
    #[test]
    fn seeks_in_a_file_open_for_writing_wait_for_the_writeback_cache() {
        let seek = |f: &crate::core::testing::Fixture, ino, whence| {
            f.core.lseek(ino, 100, whence).expect("lseek")
        };
        let mut f = fixture(FsConfig::default());
        f.core.negotiated(false, true, false);
        let (a, created) = f
            .core
            .create(InodeNo::ROOT, b"f", 0o644, 0, ROOT)
            .expect("create");
        f.core
            .write(a.ino, 0, &[1u8; 8192], &ROOT, WriteKind::default())
            .expect("write");
        // The creating handle may write: deferred, and the job asks for the writeback first.
        let Seek::AfterWriteback(job) = seek(&f, a.ino, libc::SEEK_HOLE) else {
            panic!("a seek beside a writer must wait for the writeback");
        };
        assert!(
            f.kernel.written_back.lock().is_empty(),
            "not on the request thread"
        );
        assert_eq!(job.run(), Ok(8192));
        assert_eq!(*f.kernel.written_back.lock(), vec![(a.ino, 100)]);
        assert_eq!(f.core.counters.snapshot().seek_writebacks, 1);
        f.core.release(a.ino, created.fh).expect("release");
        // Read-only opens hold no dirty pages: answered at once, from the store.
        let r = f
            .core
            .open(a.ino, libc::O_RDONLY, &mut |_| {
                Err(std::io::ErrorKind::Other.into())
            })
            .expect("open");
        assert!(matches!(seek(&f, a.ino, libc::SEEK_DATA), Seek::At(100)));
        let w = f
            .core
            .open(a.ino, libc::O_WRONLY, &mut |_| {
                Err(std::io::ErrorKind::Other.into())
            })
            .expect("open");
        assert!(matches!(
            seek(&f, a.ino, libc::SEEK_DATA),
            Seek::AfterWriteback(_)
        ));
        f.core.release(a.ino, w.fh).expect("release");
        f.core.release(a.ino, r.fh).expect("release");
        assert!(matches!(seek(&f, a.ino, libc::SEEK_HOLE), Seek::At(8192)));
        // Without the writeback cache every write is in the store when write(2) returns.
        let f = fixture(FsConfig::default());
        let (b, _) = f
            .core
            .create(InodeNo::ROOT, b"g", 0o644, 0, ROOT)
            .expect("create");
        let e = f.core.lseek(b.ino, 0, libc::SEEK_DATA).expect_err("empty");
        assert_eq!(e.to_errno(), libc::ENXIO);
        assert!(f.kernel.written_back.lock().is_empty());
    }

    #[test]
    fn one_clone_request_stays_block_aligned_below_four_gib() {
        assert_eq!(clone_len(100, 4096), 100);
        let max = clone_len(u64::MAX, 4096);
        assert!(max <= u64::from(u32::MAX) && max % 4096 == 0);
        assert_eq!(max + 4096, (u64::from(u32::MAX) + 1));
        assert_eq!(clone_len(u64::MAX, 65536) % 65536, 0);
    }
}
