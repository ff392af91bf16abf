//! All disk I/O of the store goes through [`FileIo`] (one file) and [`Env`] (the store's directory).
//! The real implementation is [`DirEnv`]; `MemEnv` (module `mem`, with the `testing` feature only)
//! keeps files in memory and records every write and sync so that crash tests can build the image
//! a power cut would leave.

use crate::error::{Error, Result};
use crate::sys;
use parking_lot::{Mutex, MutexGuard};
use rustix::fs::{AtFlags, FallocateFlags, Mode, OFlags};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(feature = "testing")]
mod mem;
#[cfg(feature = "testing")]
pub use mem::{DeviceModel, Fault, MemEnv, MemOp, Persist, SECTOR};

/// Random-access I/O on one file of the store. (`len` is a file length, not a collection size.)
#[allow(clippy::len_without_is_empty)]
pub trait FileIo: Send + Sync + Debug {
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Fill `buf` from `off`; bytes past the end of the file read as zeros.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    fn write_at(&self, data: &[u8], off: u64) -> io::Result<()>;
    /// Make every completed write durable.
    fn sync(&self) -> io::Result<()>;
    /// Copy `len` bytes from `src` to `dst` inside this file (kernel-side where possible).
    /// The ranges never overlap.
    fn copy_within(&self, src: u64, dst: u64, len: u64) -> io::Result<()>;
    /// Make the range read as zeros and give its space back to the host.
    fn punch(&self, off: u64, len: u64) -> io::Result<()>;
    /// Copy `len` bytes from another file at `src_off` to `dst_off` of this one (bytes past the
    /// source's end are zeros).
    fn copy_from(&self, src: &File, src_off: u64, dst_off: u64, len: u64) -> io::Result<()> {
        copy_buffered(src, src_off, self, dst_off, len)
    }
    /// Reserve host space for `[off, off+len)` (the bytes read as zeros where not yet written).
    fn allocate(&self, off: u64, len: u64) -> io::Result<()> {
        let end = off + len;
        // Without a way to reserve, writing zeros past the end is the honest fallback.
        let mut pos = self.len()?.max(off);
        while pos < end {
            let n = (end - pos).min(ZEROS.len() as u64);
            self.write_at(&ZEROS[..n as usize], pos)?;
            pos += n;
        }
        Ok(())
    }
    /// The descriptor, for callers that move data with splice or passthrough; borrowed for as
    /// long as the file object is, which owns it and keeps it open.
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// [`FileIo::fd`] as a raw number (for `/proc/self/fd` paths).
    fn raw_fd(&self) -> Option<RawFd> {
        self.fd().map(|fd| fd.as_raw_fd())
    }
    /// Total and available bytes of the host filesystem holding this file, if it has one.
    fn host_space(&self) -> io::Result<Option<(u64, u64)>> {
        Ok(None)
    }
}

/// A file whose `sync` is a no-op when nothing was written since the last successful one: a
/// commit of metadata alone (a create, a chmod, a rename and their fsync) then costs the metadata
/// engine's flush only, not also the pool's. Every call that changes the file's bytes or length
/// marks it; a failed sync leaves it marked, so the next commit syncs again.
#[derive(Debug)]
pub struct SyncTracked {
    inner: Arc<dyn FileIo>,
    unsynced: std::sync::atomic::AtomicBool,
}

impl SyncTracked {
    pub fn new(inner: Arc<dyn FileIo>) -> SyncTracked {
        SyncTracked {
            inner,
            unsynced: std::sync::atomic::AtomicBool::new(true),
        }
    }

    fn mark(&self) {
        self.unsynced
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl FileIo for SyncTracked {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.mark();
        self.inner.set_len(len)
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.inner.read_at(buf, off)
    }
    fn write_at(&self, data: &[u8], off: u64) -> io::Result<()> {
        self.mark();
        self.inner.write_at(data, off)
    }
    fn sync(&self) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        // Taken before the sync: a write racing with it marks the file again.
        if !self.unsynced.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let r = self.inner.sync();
        if r.is_err() {
            self.mark();
        }
        r
    }
    fn copy_within(&self, src: u64, dst: u64, len: u64) -> io::Result<()> {
        self.mark();
        self.inner.copy_within(src, dst, len)
    }
    fn punch(&self, off: u64, len: u64) -> io::Result<()> {
        // Freed blocks only: whether a punch is durable changes nothing anyone reads.
        self.inner.punch(off, len)
    }
    fn copy_from(&self, src: &File, src_off: u64, dst_off: u64, len: u64) -> io::Result<()> {
        self.mark();
        self.inner.copy_from(src, src_off, dst_off, len)
    }
    fn allocate(&self, off: u64, len: u64) -> io::Result<()> {
        self.mark();
        self.inner.allocate(off, len)
    }
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.fd()
    }
    fn raw_fd(&self) -> Option<RawFd> {
        self.inner.raw_fd()
    }
    fn host_space(&self) -> io::Result<Option<(u64, u64)>> {
        self.inner.host_space()
    }
}

/// The store's directory: named files and the exclusive lock.
pub trait Env: Send + Sync + Debug {
    /// Open a file of the store, creating it (empty) if `create`.
    fn open(&self, name: &str, create: bool) -> Result<Arc<dyn FileIo>>;
    fn exists(&self, name: &str) -> bool;
    /// Take the store's exclusive lock; the guard releases it when dropped.
    fn lock(&self) -> Result<Box<dyn Send + Sync + Debug>>;
    /// Where the store is, for messages.
    fn path(&self) -> PathBuf;
}

// ---------------------------------------------------------------------------------------------
// Real files

#[derive(Debug)]
pub struct DiskFile {
    file: File,
}

impl DiskFile {
    pub fn new(file: File) -> DiskFile {
        DiskFile { file }
    }
}

impl FileIo for DiskFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_at(&self, data: &[u8], off: u64) -> io::Result<()> {
        self.file.write_all_at(data, off)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn copy_within(&self, src: u64, dst: u64, len: u64) -> io::Result<()> {
        self.copy_from(&self.file, src, dst, len)
    }

    fn punch(&self, off: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        match sys::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            off,
            len,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => zero_range(self, off, len),
            other => other,
        }
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.file.as_fd())
    }

    fn allocate(&self, off: u64, len: u64) -> io::Result<()> {
        sys::fallocate(&self.file, FallocateFlags::empty(), off, len)
    }

    fn copy_from(&self, src: &File, src_off: u64, dst_off: u64, len: u64) -> io::Result<()> {
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(1 << 30) as usize;
            match sys::copy_file_range(src, src_off + done, &self.file, dst_off + done, chunk) {
                Ok(0) => return zero_range(self, dst_off + done, len - done),
                Ok(n) => done += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
                    ) =>
                {
                    return copy_buffered(src, src_off + done, self, dst_off + done, len - done);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn host_space(&self) -> io::Result<Option<(u64, u64)>> {
        let (frsize, blocks, avail) = sys::fs_space(&self.file)?;
        Ok(Some((blocks * frsize, avail * frsize)))
    }
}

/// Copy through a bounded buffer (bytes past the source's end are zeros): the fallback where the
/// kernel cannot copy between these files.
fn copy_buffered(
    src: &File,
    src_off: u64,
    dst: &(impl FileIo + ?Sized),
    dst_off: u64,
    len: u64,
) -> io::Result<()> {
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        let got = read_full_at(src, &mut buf[..n], src_off + done)?;
        buf[got..n].fill(0);
        dst.write_at(&buf[..n], dst_off + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Read as much of `buf` as the file has from `off`; returns the bytes read (short only at EOF).
fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Fallback for hosts without `copy_file_range` between these ranges.
fn copy_through_buffer(f: &dyn FileIo, src: u64, dst: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        f.read_at(&mut buf[..n], src + done)?;
        f.write_at(&buf[..n], dst + done)?;
        done += n as u64;
    }
    Ok(())
}

pub(crate) static ZEROS: [u8; 65536] = [0u8; 65536];

/// Write zeros over a range (used for partial blocks, at most a block at a time in practice).
pub(crate) fn zero_range(f: &dyn FileIo, off: u64, len: u64) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZEROS.len() as u64) as usize;
        f.write_at(&ZEROS[..n], off + done)?;
        done += n as u64;
    }
    Ok(())
}

/// The store as a directory on the host, held open: every file is opened relative to this
/// descriptor with `O_NOFOLLOW`, and checked after opening (a regular file with one link, owned
/// by the effective user). A directory that another user owns or may write is refused, since
/// whoever can write it can plant a symlink or hard link that makes us truncate or write a file
/// of their choosing. Modes that let others read the store are tightened (0700, 0600) with a
/// warning: the pool holds every file's bytes, whatever their modes inside the mount.
#[derive(Debug, Clone)]
pub struct DirEnv {
    dir: PathBuf,
    fd: Arc<OwnedFd>,
}

pub const LOCK_FILE: &str = "lock";
/// The mount daemon's log (not part of the format).
pub const LOG_FILE: &str = "cowfs.log";

/// Modes of the store directory and of every file in it.
pub const STORE_DIR_MODE: u32 = 0o700;
pub const STORE_FILE_MODE: u32 = 0o600;

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

impl DirEnv {
    /// Open the existing store directory `dir` (see the type for what is refused and fixed).
    pub fn open(dir: impl AsRef<Path>) -> Result<DirEnv> {
        DirEnv::open_dir(dir.as_ref(), false)
    }

    /// For mkfs: create `dir` (mode 0700; missing parents as usual) or take an existing empty
    /// one, and set its mode to 0700.
    pub fn create(dir: impl AsRef<Path>) -> Result<DirEnv> {
        let dir = dir.as_ref();
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::Io(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", parent.display()),
                ))
            })?;
        }
        match rustix::fs::mkdir(dir, Mode::from_raw_mode(STORE_DIR_MODE)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io_at(dir, e.into())),
        }
        DirEnv::open_dir(dir, true)
    }

    fn open_dir(dir: &Path, mkfs: bool) -> Result<DirEnv> {
        let unsafe_store = |reason: String| Error::UnsafeStore {
            path: dir.to_path_buf(),
            reason,
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::open(dir, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                return Err(Error::NotAStore {
                    path: dir.to_path_buf(),
                    reason: "no such directory".into(),
                })
            }
            Err(e @ (rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)) => {
                return Err(if dir.is_symlink() {
                    unsafe_store("is a symbolic link; give the directory's real path".into())
                } else if e == rustix::io::Errno::NOTDIR {
                    Error::NotAStore {
                        path: dir.to_path_buf(),
                        reason: "not a directory".into(),
                    }
                } else {
                    io_at(dir, e.into())
                })
            }
            Err(e) => return Err(io_at(dir, e.into())),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_at(dir, e.into()))?;
        let me = euid();
        if st.st_uid != me {
            return Err(unsafe_store(format!(
                "the directory is owned by uid {}, not by uid {me} who opens it",
                st.st_uid
            )));
        }
        let mode = st.st_mode & 0o7777;
        if !mkfs && mode & 0o022 != 0 {
            return Err(unsafe_store(format!(
                "the directory is writable by {} (mode {mode:04o}); check its files, then \
                 chmod 700 it",
                if mode & 0o002 != 0 {
                    "others"
                } else {
                    "its group"
                }
            )));
        }
        if mode != STORE_DIR_MODE {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(STORE_DIR_MODE))
                .map_err(|e| io_at(dir, e.into()))?;
            if !mkfs {
                log::warn!(
                    "{}: store directory was mode {mode:04o}, now {STORE_DIR_MODE:04o}",
                    dir.display()
                );
            }
        }
        Ok(DirEnv {
            dir: dir.to_path_buf(),
            fd: Arc::new(fd),
        })
    }

    /// Open (or create, mode 0600) file `name` of the store with `flags`, refusing a symlink,
    /// anything but a regular file with one link, or a file another user owns; a file others
    /// may read or write is set to 0600 (warning).
    fn open_file(&self, name: &str, flags: OFlags, create: bool) -> Result<File> {
        let path = self.dir.join(name);
        let unsafe_store = |reason: String| Error::UnsafeStore {
            path: self.dir.clone(),
            reason: format!("{name}: {reason}"),
        };
        let mut flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if create {
            flags |= OFlags::CREATE;
        }
        let fd = rustix::fs::openat(&*self.fd, name, flags, Mode::from_raw_mode(STORE_FILE_MODE))
            .map_err(|e| match e {
            rustix::io::Errno::NOENT => Error::NotAStore {
                path: self.dir.clone(),
                reason: format!("{name} is missing"),
            },
            rustix::io::Errno::LOOP => {
                unsafe_store("is a symbolic link; refusing to follow it".into())
            }
            e => io_at(&path, e.into()),
        })?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io_at(&path, e.into()))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(unsafe_store("not a regular file".into()));
        }
        if st.st_uid != euid() {
            return Err(unsafe_store(format!(
                "owned by uid {}, not by uid {}",
                st.st_uid,
                euid()
            )));
        }
        if st.st_nlink != 1 {
            return Err(unsafe_store(format!(
                "has {} hard links; a store file has one",
                st.st_nlink
            )));
        }
        let mode = st.st_mode & 0o7777;
        if mode != STORE_FILE_MODE {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(STORE_FILE_MODE))
                .map_err(|e| io_at(&path, e.into()))?;
            if !create || mode & 0o077 != 0 {
                log::warn!(
                    "{}: was mode {mode:04o}, now {STORE_FILE_MODE:04o}",
                    path.display()
                );
            }
        }
        Ok(File::from(fd))
    }

    /// The daemon's log file in the store, opened for appending (created 0600), with the same
    /// checks as every store file.
    pub fn open_log(&self) -> Result<File> {
        self.open_file(LOG_FILE, OFlags::WRONLY | OFlags::APPEND, true)
    }
}

fn io_at(path: &Path, e: io::Error) -> Error {
    Error::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

#[derive(Debug)]
struct LockGuard {
    _file: File,
}

impl Env for DirEnv {
    fn open(&self, name: &str, create: bool) -> Result<Arc<dyn FileIo>> {
        let file = self.open_file(name, OFlags::RDWR, create)?;
        Ok(Arc::new(DiskFile::new(file)))
    }

    fn exists(&self, name: &str) -> bool {
        // Whatever is there, a symlink included: opening it then says what is wrong.
        rustix::fs::statat(&*self.fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    fn lock(&self) -> Result<Box<dyn Send + Sync + Debug>> {
        let mut file = self.open_file(LOCK_FILE, OFlags::RDWR, true)?;
        // The lock can be held a moment longer than its holder holds it: a process that just
        // released it may have forked a child that inherited the descriptor and keeps it (and
        // the flock) until its exec closes it. So when the recorded holder is this process, or
        // no longer has the lock file open at all, wait that out briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !sys::try_lock_exclusive(&file)? {
            let mut s = String::new();
            file.rewind()?;
            let holder: Option<u32> = file
                .read_to_string(&mut s)
                .ok()
                .and_then(|_| s.trim().parse().ok());
            let transient = holder.is_some_and(|pid| {
                pid == std::process::id() || !holds_open(pid, &self.dir.join(LOCK_FILE))
            });
            if !transient || std::time::Instant::now() > deadline {
                return Err(Error::InUse {
                    path: self.dir.clone(),
                    holder,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Box::new(LockGuard { _file: file }))
    }

    fn path(&self) -> PathBuf {
        self.dir.clone()
    }
}

/// Whether process `pid` has `path` open (by its /proc fd links). A process that is gone does
/// not; one that cannot be examined counts as holding it, so that its lock is reported, never
/// waited on.
fn holds_open(pid: u32, path: &Path) -> bool {
    let fds = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(fds) => fds,
        Err(e) => return e.kind() != io::ErrorKind::NotFound,
    };
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == want))
}

// ---------------------------------------------------------------------------------------------
// A scratch overlay: reads fall through to a file, writes stay in memory

const SCRATCH_PAGE: u64 = 4096;

/// Lets a read-only check open a store whose B-tree needs crash recovery (which writes) without
/// writing a byte to the real file.
#[derive(Debug)]
pub struct ScratchFile {
    base: Arc<dyn FileIo>,
    state: Mutex<ScratchState>,
}

#[derive(Debug)]
struct ScratchState {
    pages: BTreeMap<u64, Vec<u8>>,
    len: u64,
    /// Bytes of `base` still visible (a shrink hides the rest for good).
    base_visible: u64,
}

impl ScratchFile {
    pub fn new(base: Arc<dyn FileIo>) -> io::Result<ScratchFile> {
        let len = base.len()?;
        Ok(ScratchFile {
            base,
            state: Mutex::new(ScratchState {
                pages: BTreeMap::new(),
                len,
                base_visible: len,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ScratchState> {
        self.state.lock()
    }

    fn read_page(&self, st: &ScratchState, page: u64, out: &mut [u8]) -> io::Result<()> {
        if let Some(p) = st.pages.get(&page) {
            out.copy_from_slice(p);
            return Ok(());
        }
        let off = page * SCRATCH_PAGE;
        out.fill(0);
        if off < st.base_visible {
            let n = (st.base_visible - off).min(SCRATCH_PAGE) as usize;
            self.base.read_at(&mut out[..n], off)?;
        }
        Ok(())
    }
}

impl FileIo for ScratchFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.lock();
        if len < st.len {
            st.base_visible = st.base_visible.min(len);
            let first_dead = len.div_ceil(SCRATCH_PAGE);
            st.pages.retain(|&p, _| p < first_dead);
            if len % SCRATCH_PAGE != 0 {
                let page = len / SCRATCH_PAGE;
                let mut buf = vec![0u8; SCRATCH_PAGE as usize];
                self.read_page(&st, page, &mut buf)?;
                buf[(len % SCRATCH_PAGE) as usize..].fill(0);
                st.pages.insert(page, buf);
            }
        }
        st.len = len;
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let st = self.lock();
        let mut page_buf = vec![0u8; SCRATCH_PAGE as usize];
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let page = pos / SCRATCH_PAGE;
            let inner = (pos % SCRATCH_PAGE) as usize;
            let n = (SCRATCH_PAGE as usize - inner).min(buf.len() - done);
            if pos >= st.len {
                buf[done..].fill(0);
                break;
            }
            self.read_page(&st, page, &mut page_buf)?;
            buf[done..done + n].copy_from_slice(&page_buf[inner..inner + n]);
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, data: &[u8], off: u64) -> io::Result<()> {
        let mut st = self.lock();
        let mut done = 0usize;
        while done < data.len() {
            let pos = off + done as u64;
            let page = pos / SCRATCH_PAGE;
            let inner = (pos % SCRATCH_PAGE) as usize;
            let n = (SCRATCH_PAGE as usize - inner).min(data.len() - done);
            let mut buf = vec![0u8; SCRATCH_PAGE as usize];
            self.read_page(&st, page, &mut buf)?;
            buf[inner..inner + n].copy_from_slice(&data[done..done + n]);
            st.pages.insert(page, buf);
            done += n;
        }
        st.len = st.len.max(off + data.len() as u64);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn copy_within(&self, src: u64, dst: u64, len: u64) -> io::Result<()> {
        copy_through_buffer(self, src, dst, len)
    }

    fn punch(&self, off: u64, len: u64) -> io::Result<()> {
        zero_range(self, off, len)
    }
}

// ---------------------------------------------------------------------------------------------
// redb's storage backend over a FileIo

/// Space held back on the host so that metadata can always be committed, even when data writes
/// have filled the disk: the B-tree backend releases it on ENOSPC and retries. While it is
/// released the store refuses new data blocks (ENOSPC) but deletions still commit, and it is taken
/// again once a commit has freed space.
#[derive(Debug)]
pub struct SpaceReserve {
    file: Arc<dyn FileIo>,
    bytes: u64,
    held: std::sync::atomic::AtomicBool,
}

pub const RESERVE_FILE: &str = "reserve";

impl SpaceReserve {
    /// Size for a host filesystem of `host_total` bytes: 2% of it, from 2 MiB to 64 MiB.
    pub fn size_for(host_total: Option<u64>) -> u64 {
        let mib = 1 << 20;
        host_total.map_or(64 * mib, |t| (t / 50).clamp(2 * mib, 64 * mib) / mib * mib)
    }

    pub fn new(file: Arc<dyn FileIo>, bytes: u64) -> SpaceReserve {
        let held = file.len().map(|l| l >= bytes).unwrap_or(false);
        SpaceReserve {
            file,
            bytes,
            held: std::sync::atomic::AtomicBool::new(held),
        }
    }

    pub fn is_held(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Take the space (again); false if the host has not got it.
    pub fn fill(&self) -> bool {
        if self.is_held() {
            return true;
        }
        match self.file.allocate(0, self.bytes) {
            Ok(()) => {
                self.held.store(true, std::sync::atomic::Ordering::SeqCst);
                true
            }
            Err(_) => {
                let _ = self.file.set_len(0);
                false
            }
        }
    }

    /// Give the space back to the host; true if it was held.
    pub fn release(&self) -> bool {
        if !self.held.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        if let Err(e) = self.file.set_len(0) {
            log::error!("releasing the space reserve: {e}");
        }
        log::warn!("host filesystem full: released the metadata space reserve; new data is refused until space is freed");
        true
    }
}

#[derive(Debug)]
pub(crate) struct RedbFile {
    pub file: Arc<dyn FileIo>,
    pub reserve: Option<Arc<SpaceReserve>>,
}

/// Run a metadata write; on a full host release the reserve and retry it once. Only for
/// writes and truncates, whose retry does the same thing again: never for a sync.
pub(crate) fn with_room(
    reserve: Option<&SpaceReserve>,
    op: impl Fn() -> io::Result<()>,
) -> io::Result<()> {
    match op() {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) => match reserve {
            Some(r) if r.release() => op(),
            _ => Err(e),
        },
        other => other,
    }
}

impl RedbFile {
    fn with_room(&self, op: impl Fn() -> io::Result<()>) -> io::Result<()> {
        with_room(self.reserve.as_deref(), op)
    }
}

impl redb::StorageBackend for RedbFile {
    fn len(&self) -> std::result::Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::result::Result<(), io::Error> {
        let len = self.file.len()?;
        if offset + out.len() as u64 > len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of meta.redb",
            ));
        }
        self.file.read_at(out, offset)
    }

    fn set_len(&self, len: u64) -> std::result::Result<(), io::Error> {
        self.with_room(|| self.file.set_len(len))
    }

    /// Never retried: after a failed fdatasync Linux may have dropped the dirty pages and would
    /// report success to a second call, so this commit fails (the store keeps its changes for
    /// the next one). On a full host the reserve is released so that the next one has room.
    fn sync_data(&self) -> std::result::Result<(), io::Error> {
        let r = self.file.sync();
        if let Err(e) = &r {
            if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
                if let Some(res) = &self.reserve {
                    res.release();
                }
            }
        }
        r
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), io::Error> {
        self.with_room(|| self.file.write_at(data, offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_overlay_never_writes_through() -> io::Result<()> {
        let env = MemEnv::new();
        let base = env.open("f", true).map_err(io::Error::other)?;
        base.write_at(&[7u8; 10000], 0)?;
        let s = ScratchFile::new(base.clone())?;
        s.write_at(&[1u8; 100], 4090)?;
        s.set_len(5000)?;
        s.set_len(9000)?;
        let mut buf = vec![0u8; 9000];
        s.read_at(&mut buf, 0)?;
        assert!(buf[..4090].iter().all(|&b| b == 7));
        assert!(buf[4090..4190].iter().all(|&b| b == 1));
        assert!(buf[4190..5000].iter().all(|&b| b == 7));
        assert!(
            buf[5000..].iter().all(|&b| b == 0),
            "bytes past a shrink must read as zero"
        );
        let mut orig = vec![0u8; 10000];
        base.read_at(&mut orig, 0)?;
        assert!(orig.iter().all(|&b| b == 7));
        Ok(())
    }

    #[test]
    fn disk_file_copy_within_and_punch() -> io::Result<()> {
        let dir = std::env::temp_dir().join(format!("cowstore-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("pool");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let f = DiskFile::new(file);
        f.write_at(&[9u8; 8192], 0)?;
        f.copy_within(0, 65536, 8192)?;
        f.punch(4096, 4096)?;
        let mut buf = vec![0u8; 8192];
        f.read_at(&mut buf, 65536)?;
        assert!(buf.iter().all(|&b| b == 9));
        f.read_at(&mut buf, 0)?;
        assert!(buf[..4096].iter().all(|&b| b == 9) && buf[4096..].iter().all(|&b| b == 0));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn a_lock_holder_is_known_by_its_open_descriptors() -> Result<()> {
        // Regression (flaky fsck tests): a lock released by its recorded holder but still held
        // through a descriptor a forked child inherited made fsck report "in use".
        let dir = tempfile::tempdir()?;
        let env = DirEnv::create(dir.path())?;
        let _held = env.lock()?;
        let lock = dir.path().join(LOCK_FILE);
        assert!(holds_open(std::process::id(), &lock));
        assert!(
            !holds_open(u32::MAX - 1, &lock),
            "a process that is gone holds nothing"
        );
        Ok(())
    }

    #[test]
    fn second_lock_reports_in_use() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("cowstore-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let env = DirEnv::open(&dir)?;
        let _held = env.lock()?;
        match env.lock() {
            Err(Error::InUse { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("expected InUse, got {other:?}"),
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    fn mode_of(p: &Path) -> io::Result<u32> {
        use std::os::unix::fs::PermissionsExt;
        Ok(std::fs::symlink_metadata(p)?.permissions().mode() & 0o7777)
    }

    fn unsafe_reason(r: Result<impl Debug>) -> String {
        match r {
            Err(Error::UnsafeStore { reason, .. }) => reason,
            other => panic!("expected UnsafeStore, got {other:?}"),
        }
    }

    #[test]
    fn dir_env_refuses_symlinked_store_files() -> Result<()> {
        // Regression (issue 10, defect 8): store files were opened through symlinks, so whoever
        // could write the store directory made its user truncate any file.
        let tmp = tempfile::tempdir()?;
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"precious")?;
        let dir = tmp.path().join("store");
        let env = DirEnv::create(&dir)?;
        for name in [LOCK_FILE, RESERVE_FILE, LOG_FILE, "pool"] {
            std::os::unix::fs::symlink(&victim, dir.join(name))?;
        }
        let reason = unsafe_reason(env.lock());
        assert!(
            reason.contains("lock") && reason.contains("symbolic link"),
            "{reason}"
        );
        let reason = unsafe_reason(env.open(RESERVE_FILE, true));
        assert!(reason.contains("reserve"), "{reason}");
        let reason = unsafe_reason(env.open("pool", false));
        assert!(reason.contains("pool"), "{reason}");
        let reason = unsafe_reason(env.open_log());
        assert!(reason.contains(LOG_FILE), "{reason}");
        assert!(
            env.exists("pool"),
            "a planted symlink counts as present, to be refused"
        );
        assert_eq!(std::fs::read(&victim)?, b"precious");
        // A hard link to a file elsewhere is refused as well.
        std::fs::remove_file(dir.join(LOCK_FILE))?;
        std::fs::hard_link(&victim, dir.join(LOCK_FILE))?;
        let reason = unsafe_reason(env.lock());
        assert!(reason.contains("hard links"), "{reason}");
        assert_eq!(std::fs::read(&victim)?, b"precious");
        Ok(())
    }

    #[test]
    fn dir_env_modes_and_untrusted_directories() -> Result<()> {
        // Regression (issue 10, defect 7): the store was world-readable under umask 022; a store
        // directory others may write is refused, one others may read is tightened.
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("store");
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let env = DirEnv::create(&dir)?;
        assert_eq!(mode_of(&dir)?, 0o700, "mkfs makes the directory 0700");
        drop(env.open("pool", true)?);
        assert_eq!(mode_of(&dir.join("pool"))?, 0o600);

        std::fs::set_permissions(dir.join("pool"), std::fs::Permissions::from_mode(0o644))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let env = DirEnv::open(&dir)?;
        drop(env.open("pool", false)?);
        assert_eq!(mode_of(&dir)?, 0o700, "open tightens a readable directory");
        assert_eq!(
            mode_of(&dir.join("pool"))?,
            0o600,
            "open tightens a readable file"
        );

        for mode in [0o770, 0o707, 0o777] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))?;
            let reason = unsafe_reason(DirEnv::open(&dir));
            assert!(reason.contains("writable"), "{reason}");
            assert_eq!(mode_of(&dir)?, mode, "a refused directory is left alone");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link)?;
        let reason = unsafe_reason(DirEnv::open(&link));
        assert!(reason.contains("symbolic link"), "{reason}");

        if euid() == 0 {
            // Owned by another user: refused even for root.
            rustix::fs::chown(&dir, Some(rustix::fs::Uid::from_raw(65534)), None)
                .map_err(io::Error::from)?;
            let reason = unsafe_reason(DirEnv::open(&dir));
            assert!(reason.contains("owned by uid 65534"), "{reason}");
            rustix::fs::chown(&dir, Some(rustix::fs::Uid::ROOT), None).map_err(io::Error::from)?;
            // A file owned by another user, likewise.
            rustix::fs::chown(
                dir.join("pool"),
                Some(rustix::fs::Uid::from_raw(65534)),
                None,
            )
            .map_err(io::Error::from)?;
            let reason = unsafe_reason(DirEnv::open(&dir)?.open("pool", false));
            assert!(reason.contains("owned by uid 65534"), "{reason}");
        }
        Ok(())
    }
}
