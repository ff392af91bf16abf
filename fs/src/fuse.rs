//! The fuser adapter: each FUSE callback decodes its arguments, calls the store, replies on
//! `Ok` and sends `Err` through [`CowFs::fail`], the one place that logs, counts and maps errors
//! to an errno. Filesystem logic lives in cowstore; nothing here decides semantics.

use crate::cred::RequestCred;
use crate::error::{FsError, ToErrno};
use crate::handles::Handles;
use crate::splice::{self, SpliceError};
use crate::stats::{CounterSnapshot, Counters};
use crate::sys;
use cowstore::io::FileIo;
use cowstore::{
    AtimePolicy, Caller, DirEntry, FallocMode, FileKind, InodeAttr, InodeFlags, InodeNo, NewInode,
    RenameFlags as StoreRenameFlags, SeekWhence, Segment, SetAttr, Store, TimeSet, Timespec,
};
use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::{debug, error, info, warn};
use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// `FS_IOC_GETFLAGS`/`FS_IOC_SETFLAGS` (`lsattr`/`chattr`): the kernel sends them (as
/// FUSE_IOCTL, with a 4-byte argument) for its `fileattr_get`/`fileattr_set`.
const FS_IOC_GETFLAGS: u32 = libc::FS_IOC_GETFLAGS as u32;
const FS_IOC_SETFLAGS: u32 = libc::FS_IOC_SETFLAGS as u32;
/// `FS_IOC_FSGETXATTR` (`_IOR('X', 31, struct fsxattr)`, 28 bytes): the kernel asks it for the
/// current flags before every FS_IOC_SETFLAGS.
const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
const FSXATTR_LEN: usize = 28;
/// `FS_XFLAG_*` bits of `struct fsxattr` and the `FS_*_FL` flags they stand for.
const XFLAGS: [(u32, InodeFlags); 4] = [
    (0x08, InodeFlags::IMMUTABLE),
    (0x10, InodeFlags::APPEND),
    (0x40, InodeFlags::NOATIME),
    (0x80, InodeFlags::NODUMP),
];

/// How read replies carry file bytes to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    /// Splice from the pool file through a pipe into /dev/fuse (no userspace copy).
    Splice,
    /// `pread` into a buffer and write it (for comparison).
    Buffered,
}

impl CopyMode {
    pub fn name(self) -> &'static str {
        match self {
            CopyMode::Splice => "splice",
            CopyMode::Buffered => "buffered",
        }
    }
}

/// Settings of the adapter (the mount options that reach it).
#[derive(Clone, Debug)]
pub struct FsConfig {
    pub copy_mode: CopyMode,
    /// How long the kernel may cache attributes and directory entries. Every change goes through
    /// this mount, and the kernel invalidates what its own operations change, so long is safe.
    pub ttl: Duration,
    /// Let the kernel cache writes and send them in large batches (`FUSE_WRITEBACK_CACHE`).
    pub writeback_cache: bool,
    /// Largest write request to ask the kernel for.
    pub max_write: u32,
    /// When reads and listings update access times (`relatime`, `strictatime`, `noatime`,
    /// `nodiratime`).
    pub atime: AtimePolicy,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            copy_mode: CopyMode::Splice,
            ttl: Duration::from_secs(10),
            writeback_cache: false,
            max_write: 1 << 20,
            atime: AtimePolicy::default(),
        }
    }
}

/// What the kernel agreed to at INIT.
#[derive(Clone, Debug, Default)]
pub struct KernelInfo {
    pub protocol: (u32, u32),
    pub max_write: u32,
    pub capabilities: u64,
}

/// State shared between the mounted filesystem and the daemon around it (control socket,
/// session setup).
#[derive(Debug, Default)]
pub struct Shared {
    pub counters: Counters,
    /// A duplicate of the session's /dev/fuse descriptor, for spliced replies. Set before the
    /// session runs; replies must go to the descriptor the request came from (no clone_fd).
    pub dev: OnceLock<OwnedFd>,
    pub kernel: Mutex<KernelInfo>,
    /// For telling the kernel that attributes it caches changed behind a reply that carries
    /// none (setuid/setgid dropped by a write or fallocate). Set before the session runs.
    pub notifier: OnceLock<fuser::Notifier>,
}

impl Shared {
    pub fn snapshot(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }
}

/// The open directory streams, by file handle: the cookie each one ends at (see
/// `Store::readdir_until`), taken at opendir and again at every rewind (offset 0).
#[derive(Debug, Default)]
struct DirStreams {
    next: AtomicU64,
    ends: Mutex<HashMap<u64, u64>>,
}

impl DirStreams {
    fn ends(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        self.ends.lock()
    }

    fn open(&self, end: u64) -> FileHandle {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.ends().insert(fh, end);
        FileHandle(fh)
    }

    /// Where the stream `fh` ends; unknown handles list everything.
    fn end(&self, fh: FileHandle) -> u64 {
        self.ends().get(&fh.0).copied().unwrap_or(u64::MAX)
    }

    fn rewound(&self, fh: FileHandle, end: u64) {
        if let Some(e) = self.ends().get_mut(&fh.0) {
            *e = end;
        }
    }

    fn close(&self, fh: FileHandle) {
        self.ends().remove(&fh.0);
    }
}

/// The filesystem fuser serves: a [`Store`] plus the adapter's settings and counters.
pub struct CowFs {
    store: Option<Arc<Store>>,
    pool: Arc<dyn FileIo>,
    block_size: u64,
    cfg: FsConfig,
    shared: Arc<Shared>,
    handles: Handles,
    dirs: DirStreams,
}

impl std::fmt::Debug for CowFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CowFs")
            .field("store", &self.store)
            .field("cfg", &self.cfg)
            .finish()
    }
}

fn ino(i: INodeNo) -> InodeNo {
    InodeNo(i.0)
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// The caller with what the store may ask of it beyond uid and gid (supplementary groups,
/// capabilities), for the rules the kernel leaves to the filesystem.
fn cred(req: &Request) -> RequestCred {
    RequestCred::new(caller(req), req.pid())
}

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn file_attr(a: &InodeAttr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.allocated.div_ceil(512),
        atime: a.atime.into(),
        mtime: a.mtime.into(),
        ctime: a.ctime.into(),
        crtime: a.crtime.into(),
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.block_size,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(Timespec::from(t)),
    }
}

/// A read reply was written to /dev/fuse by splice, so fuser's `ReplyData` must not answer the
/// request again. Dropping it would: `ReplyRaw::drop` sends EIO for an unanswered reply. It holds
/// only the request id and a clone of the session channel's `Arc`, so forgetting it allocates
/// nothing and frees nothing: the one cost is that shared `Arc`'s count never returns to zero,
/// so the /dev/fuse descriptor is closed at process exit rather than when the session ends.
fn answered_by_splice(reply: ReplyData) {
    std::mem::forget(reply);
}

impl CowFs {
    pub fn new(store: Arc<Store>, cfg: FsConfig, shared: Arc<Shared>) -> CowFs {
        CowFs {
            pool: store.pool(),
            block_size: u64::from(store.block_size()),
            store: Some(store),
            cfg,
            shared,
            handles: Handles::default(),
            dirs: DirStreams::default(),
        }
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// A read or listing of `i` happened: update its access time as the mount's policy says.
    /// A failure fails nothing (the access itself succeeded); it is logged.
    fn accessed(&self, s: &Store, i: INodeNo) {
        if let Err(e) = s.touch_atime(ino(i), self.cfg.atime) {
            if e.is_fault() {
                warn!("atime of inode {}: {e}", i.0);
            } else {
                debug!("atime of inode {}: {e}", i.0);
            }
        }
    }

    /// The entries of directory stream `fh` after `offset` (0: a rewind, which moves where
    /// the stream ends to the directory's current end).
    fn listing(
        &self,
        s: &Store,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<DirEntry>, FsError> {
        let end = if offset == 0 {
            let end = s.dir_end(ino(i))?;
            self.dirs.rewound(fh, end);
            end
        } else {
            self.dirs.end(fh)
        };
        let entries = s.readdir_until(ino(i), offset, end, limit)?;
        self.accessed(s, i);
        Ok(entries)
    }

    /// The reply to FS_IOC_GETFLAGS, SETFLAGS and FSGETXATTR; `None`: not one of ours.
    fn flags_ioctl(
        s: &Store,
        req: &Request,
        i: INodeNo,
        cmd: u32,
        in_data: &[u8],
    ) -> Option<Result<Vec<u8>, FsError>> {
        let r = match cmd {
            FS_IOC_GETFLAGS => s
                .getattr(ino(i))
                .map(|a| a.flags.0.to_ne_bytes().to_vec())
                .map_err(FsError::from),
            FS_IOC_SETFLAGS => match in_data.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
                Some(b) => s
                    .set_flags(ino(i), InodeFlags(u32::from_ne_bytes(b)), caller(req))
                    .map(|a| a.flags.0.to_ne_bytes().to_vec())
                    .map_err(FsError::from),
                None => Err(FsError::refused(
                    libc::EINVAL,
                    "FS_IOC_SETFLAGS: no argument",
                )),
            },
            FS_IOC_FSGETXATTR => s.getattr(ino(i)).map_err(FsError::from).map(|a| {
                let xflags = XFLAGS
                    .iter()
                    .filter(|(_, f)| a.flags.contains(*f))
                    .fold(0u32, |x, (bit, _)| x | bit);
                let mut out = vec![0u8; FSXATTR_LEN];
                out[..4].copy_from_slice(&xflags.to_ne_bytes());
                out
            }),
            _ => return None,
        };
        Some(r)
    }

    /// Run one request against the store; failures go through [`CowFs::fail`].
    fn run<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Store) -> Result<T, FsError>,
    ) -> Result<T, Errno> {
        let store = self.store.as_deref().ok_or(FsError::Closed);
        store.and_then(f).map_err(|e| self.fail(op, e))
    }

    /// fsync: commit, and fail if this commit or any since the handle last reported failed
    /// (data written through it may be lost; see `handles`).
    fn sync_handle(&self, s: &Store, fh: FileHandle) -> Result<(), FsError> {
        let committed = s.commit();
        if self.handles.take_error(fh.0, s.error_seq()) && committed.is_ok() {
            return Err(FsError::refused(
                libc::EIO,
                "fsync: an earlier commit failed while this file was open; its data may be lost",
            ));
        }
        Ok(committed?)
    }

    fn store_error_seq(&self) -> u64 {
        self.store.as_deref().map_or(0, Store::error_seq)
    }

    /// The one place errors become errnos: log (loudly for faults), count, map.
    fn fail(&self, op: &'static str, e: FsError) -> Errno {
        Counters::add(&self.counters().errors, 1);
        if e.is_fault() {
            Counters::add(&self.counters().io_errors, 1);
            error!("{op}: {e}");
        } else {
            debug!("{op}: {e}");
        }
        Errno::from_i32(e.to_errno())
    }

    /// The store changed the attributes of `i` (its mode) in a request whose reply carries no
    /// attributes: drop the kernel's cached copy, so that stat and exec see the new mode. Only
    /// attributes (offset -1): no page-cache locks are taken, so this is safe while the
    /// request is being served.
    fn attrs_changed(&self, i: INodeNo) {
        if let Some(n) = self.shared.notifier.get() {
            if let Err(e) = n.inval_inode(i, -1, 0) {
                debug!("invalidating the attributes of inode {}: {e}", i.0);
            }
        }
    }

    fn entry(&self, reply: ReplyEntry, r: Result<InodeAttr, Errno>) {
        match r {
            Ok(a) => reply.entry(&self.cfg.ttl, &file_attr(&a), Generation(a.generation)),
            Err(e) => reply.error(e),
        }
    }

    fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn xattr_reply(reply: ReplyXattr, size: u32, value: Result<Vec<u8>, Errno>) {
        match value {
            Ok(v) if size == 0 => match u32::try_from(v.len()) {
                Ok(n) => reply.size(n),
                Err(_) => reply.error(Errno::E2BIG),
            },
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    /// The buffered read path: the bytes pass through a userspace buffer.
    fn read_buffered(&self, segs: &cowstore::PinnedRead) -> Result<Vec<u8>, FsError> {
        let total: u64 = segs.iter().map(Segment::len).sum();
        let mut buf = vec![0u8; total as usize];
        let mut at = 0usize;
        for s in segs.iter() {
            let n = s.len() as usize;
            match *s {
                Segment::Pool { pos, .. } => self
                    .pool
                    .read_at(&mut buf[at..at + n], pos)
                    .map_err(cowstore::Error::Io)?,
                Segment::Lower { file, pos, .. } => {
                    use std::os::unix::fs::FileExt;
                    let f = segs.lower_file(file).ok_or_else(|| {
                        cowstore::Error::Io(std::io::Error::other(
                            "lower file of a read is not open",
                        ))
                    })?;
                    f.read_exact_at(&mut buf[at..at + n], pos)
                        .map_err(cowstore::Error::Io)?;
                }
                Segment::Hole { .. } => {}
            }
            at += n;
        }
        Ok(buf)
    }

    /// Try the zero-copy reply. `Ok(None)`: answered; `Ok(Some(reply))`: not sent, answer
    /// another way.
    fn read_spliced(
        &self,
        req: &Request,
        segs: &cowstore::PinnedRead,
        reply: ReplyData,
    ) -> Option<ReplyData> {
        let (Some(dev), Some(pool)) = (self.shared.dev.get(), sys::file_fd(self.pool.as_ref()))
        else {
            return Some(reply);
        };
        match splice::fits(segs) {
            Ok(true) => {}
            Ok(false) => {
                Counters::add(&self.counters().splice_fallbacks, 1);
                return Some(reply);
            }
            Err(e) => {
                warn!("read: no splice pipe: {e}");
                Counters::add(&self.counters().splice_fallbacks, 1);
                return Some(reply);
            }
        }
        match splice::reply(dev.as_fd(), req.unique().0, pool, segs) {
            Ok(n) => {
                Counters::add(&self.counters().read_bytes_spliced, n);
                answered_by_splice(reply);
                None
            }
            Err(SpliceError::NotSent(e)) => {
                warn!("read: splice failed, answering from a buffer: {e}");
                Counters::add(&self.counters().splice_fallbacks, 1);
                Some(reply)
            }
            Err(SpliceError::Device(e)) => {
                Counters::add(&self.counters().errors, 1);
                if e.raw_os_error() == Some(libc::ENOENT) {
                    // The request is gone (interrupted); there is nobody left to answer.
                    debug!("read: request {} gone before its reply", req.unique().0);
                    answered_by_splice(reply);
                } else {
                    error!("read: /dev/fuse refused a spliced reply: {e}");
                    reply.error(Errno::EIO);
                }
                None
            }
        }
    }
}

impl Filesystem for CowFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let abi = config.kernel_abi();
        // The kernel's largest read is max_pages pages, derived from max_write: keep it within
        // what one splice pipe holds, so every read reply can be spliced.
        let mut want_write = self.cfg.max_write;
        if self.cfg.copy_mode == CopyMode::Splice {
            match splice::max_reply_data() {
                Ok(n) => want_write = want_write.min(u32::try_from(n).unwrap_or(u32::MAX)),
                Err(e) => warn!("cannot size a splice pipe: {e}"),
            }
        }
        let max_write = match config.set_max_write(want_write) {
            Ok(_) => want_write,
            Err(nearest) => {
                let _ = config.set_max_write(nearest);
                nearest
            }
        };
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        // POSIX_ACL: the kernel enforces ACLs (and turns default_permissions on); the store
        // keeps modes and ACLs in step and inherits default ACLs. DONT_MASK: create, mknod and
        // mkdir carry the mode before the umask, which the store applies only where no default
        // ACL is inherited, as ext4 does.
        // EXPORT_SUPPORT: file handles (name_to_handle_at/open_by_handle_at, NFS export) are
        // (node id, generation); the kernel resolves one it no longer caches by looking up "."
        // (and ".." for a parent) of the bare node id. Inode numbers are never reused and the
        // generation is the commit generation at creation, so a stale handle gets ESTALE.
        let mut want = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DONT_MASK
            | InitFlags::FUSE_EXPORT_SUPPORT;
        if self.cfg.writeback_cache {
            want |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        for flag in want.iter() {
            if let Err(missing) = config.add_capabilities(flag) {
                info!("kernel does not offer {missing:?}");
            }
        }
        let caps = config.capabilities();
        info!(
            "FUSE protocol {}.{}, max_write {max_write}, copy_mode {}, writeback_cache {}, \
             posix_acl {}",
            abi.0,
            abi.1,
            self.cfg.copy_mode.name(),
            self.cfg.writeback_cache && caps.contains(InitFlags::FUSE_WRITEBACK_CACHE),
            caps.contains(InitFlags::FUSE_POSIX_ACL),
        );
        *self.shared.kernel.lock() = KernelInfo {
            protocol: (abi.0, abi.1),
            max_write,
            capabilities: caps.bits(),
        };
        Ok(())
    }

    fn destroy(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        let result = match Arc::try_unwrap(store) {
            Ok(store) => store.close(),
            // Someone (a stats request) holds the store for a moment: commit now; the last
            // holder's drop closes it cleanly.
            Err(store) => store.commit(),
        };
        match result {
            Ok(()) => info!("store committed and closed"),
            Err(e) => error!("closing the store: {e}"),
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.run("lookup", |s| Ok(s.lookup(ino(parent), name.as_bytes())?));
        self.entry(reply, r);
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {
        // Inode lifetime is the store's business (links and open handles), not the kernel's
        // lookup count: nothing to do.
    }

    fn getattr(&self, _req: &Request, i: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.run("getattr", |s| Ok(s.getattr(ino(i))?)) {
            Ok(a) => reply.attr(&self.cfg.ttl, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(Timespec::from),
        };
        match self.run("setattr", |s| Ok(s.setattr(ino(i), &set)?)) {
            Ok(a) => reply.attr(&self.cfg.ttl, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        match self.run("readlink", |s| Ok(s.readlink(ino(i))?)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self.run("mknod", |s| {
            let kind = FileKind::from_mode(mode)
                .filter(|k| !matches!(k, FileKind::Directory | FileKind::Symlink))
                .ok_or(FsError::refused(libc::EINVAL, "mknod: bad file type"))?;
            let new = NewInode {
                kind,
                perm: mode & 0o7777,
                rdev,
                symlink_target: None,
            };
            Ok(s.create_unmasked(
                ino(parent),
                name.as_bytes(),
                &new,
                caller(req),
                umask,
                false,
            )?)
        });
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.run("mkdir", |s| {
            let new = NewInode {
                kind: FileKind::Directory,
                perm: mode & 0o7777,
                rdev: 0,
                symlink_target: None,
            };
            Ok(s.create_unmasked(
                ino(parent),
                name.as_bytes(),
                &new,
                caller(req),
                umask,
                false,
            )?)
        });
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(
            reply,
            self.run("unlink", |s| Ok(s.unlink(ino(parent), name.as_bytes())?)),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(
            reply,
            self.run("rmdir", |s| Ok(s.rmdir(ino(parent), name.as_bytes())?)),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.run("symlink", |s| {
            Ok(s.symlink(
                ino(parent),
                link_name.as_bytes(),
                target.as_os_str().as_bytes(),
                caller(req),
            )?)
        });
        self.entry(reply, r);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.run("rename", |s| {
            let known = RenameFlags::RENAME_NOREPLACE
                | RenameFlags::RENAME_EXCHANGE
                | RenameFlags::RENAME_WHITEOUT;
            let exchange = RenameFlags::RENAME_EXCHANGE;
            if !known.contains(flags) || (flags.contains(exchange) && flags != exchange) {
                return Err(FsError::refused(libc::EINVAL, "rename: unsupported flags"));
            }
            let f = StoreRenameFlags {
                noreplace: flags.contains(RenameFlags::RENAME_NOREPLACE),
                exchange: flags.contains(exchange),
            };
            let (from, to) = (name.as_bytes(), newname.as_bytes());
            if flags.contains(RenameFlags::RENAME_WHITEOUT) {
                // The kernel has checked CAP_MKNOD; the whiteout belongs to the caller.
                return Ok(s.rename_whiteout(
                    ino(parent),
                    from,
                    ino(newparent),
                    to,
                    f,
                    caller(req),
                )?);
            }
            Ok(s.rename(ino(parent), from, ino(newparent), to, f)?)
        });
        Self::empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        i: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.run("link", |s| {
            Ok(s.link(ino(i), ino(newparent), newname.as_bytes())?)
        });
        self.entry(reply, r);
    }

    fn open(&self, _req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let access = flags.0 & libc::O_ACCMODE;
        let write = access != libc::O_RDONLY;
        let append = flags.0 & libc::O_APPEND != 0;
        match self.run("open", |s| {
            Ok((s.open_file(ino(i), write, append)?, s.error_seq()))
        }) {
            Ok((a, seq)) => {
                // KEEP_CACHE: nothing changes a file's bytes behind the kernel's back, so the
                // page cache stays valid across opens. Except when the next read must update
                // the access time (relatime: the first read since the file changed): reads
                // from the page cache never reach us, so this open drops it.
                // NOFLUSH: flush has nothing to do.
                let mut f = FopenFlags::FOPEN_NOFLUSH;
                if access == libc::O_WRONLY || !self.cfg.atime.due(&a, Timespec::now()) {
                    f |= FopenFlags::FOPEN_KEEP_CACHE;
                }
                reply.opened(FileHandle(self.handles.open(seq)), f)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        Counters::add(&self.counters().reads, 1);
        let segs = match self.run("read", |s| {
            let segs = s.read(ino(i), offset, u64::from(size))?;
            // Before the reply: a stat that follows the read must see the new atime.
            self.accessed(s, i);
            Ok(segs)
        }) {
            Ok(segs) => segs,
            Err(e) => return reply.error(e),
        };
        let reply = if self.cfg.copy_mode == CopyMode::Splice {
            match self.read_spliced(req, &segs, reply) {
                None => return,
                Some(reply) => reply,
            }
        } else {
            reply
        };
        match self.run("read", |_| self.read_buffered(&segs)) {
            Ok(buf) => {
                Counters::add(&self.counters().read_bytes_buffered, buf.len() as u64);
                reply.data(&buf);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        Counters::add(&self.counters().writes, 1);
        let r = self.run("write", |s| {
            let (n, dropped) = s.write_as(ino(i), offset, data, &cred(req))?;
            let n =
                u32::try_from(n).map_err(|_| FsError::refused(libc::EINVAL, "write: too large"))?;
            Ok((n, dropped))
        });
        match r {
            Ok((n, dropped)) => {
                if dropped {
                    self.attrs_changed(i);
                }
                Counters::add(&self.counters().write_bytes, u64::from(n));
                reply.written(n);
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes reach the store as they arrive; nothing is buffered here.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.close(fh.0);
        Self::empty(reply, self.run("release", |s| Ok(s.release(ino(i))?)));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        Counters::add(&self.counters().fsyncs, 1);
        Self::empty(reply, self.run("fsync", |s| self.sync_handle(s, fh)));
    }

    fn opendir(&self, _req: &Request, i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Counted open like a file: removed while open, the directory keeps answering getattr
        // (nlink 0) until releasedir.
        match self.run("opendir", |s| Ok(s.opendir(ino(i))?)) {
            Ok((end, a)) => {
                // CACHE_DIR: the kernel keeps listings in its page cache and drops them itself
                // when an operation through this mount changes the directory; but a listing
                // served from that cache never reaches us, so not when it should update the
                // access time.
                let flags = if self.cfg.atime.due(&a, Timespec::now()) {
                    FopenFlags::empty()
                } else {
                    FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
                };
                reply.opened(self.dirs.open(end), flags);
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.run("readdir", |s| self.listing(s, i, fh, offset, 256)) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(
                        INodeNo(e.ino.0),
                        e.cookie,
                        file_type(e.kind),
                        OsStr::from_bytes(&e.name),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let r = self.run("readdirplus", |s| {
            let entries = self.listing(s, i, fh, offset, 128)?;
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                match s.getattr(e.ino) {
                    Ok(a) => out.push((e, a)),
                    // Removed since the listing was taken: leave it out.
                    Err(cowstore::Error::NotFound) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            Ok(out)
        });
        match r {
            Ok(entries) => {
                for (e, a) in entries {
                    let full = reply.add(
                        INodeNo(e.ino.0),
                        e.cookie,
                        OsStr::from_bytes(&e.name),
                        &self.cfg.ttl,
                        &file_attr(&a),
                        Generation(a.generation),
                    );
                    if full {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.close(fh);
        Self::empty(reply, self.run("releasedir", |s| Ok(s.releasedir(ino(i))?)));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        Counters::add(&self.counters().fsyncs, 1);
        Self::empty(reply, self.run("fsyncdir", |s| self.sync_handle(s, fh)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.run("statfs", |s| Ok(s.statfs()?)) {
            Ok(st) => reply.statfs(
                st.total_blocks,
                st.free_blocks,
                st.avail_blocks,
                st.files,
                st.free_files,
                st.block_size,
                st.name_max,
                st.block_size,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        i: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let r = self.run("setxattr", |s| {
            if position != 0 {
                return Err(FsError::refused(
                    libc::EINVAL,
                    "setxattr: position is macOS-only",
                ));
            }
            Ok(s.setxattr_as(ino(i), name.as_bytes(), value, flags, &cred(req))?)
        });
        Self::empty(reply, r);
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let v = self.run("getxattr", |s| Ok(s.getxattr(ino(i), name.as_bytes())?));
        Self::xattr_reply(reply, size, v);
    }

    fn listxattr(&self, req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        let v = self.run("listxattr", |s| {
            let mut out = Vec::new();
            for n in s.listxattr_as(ino(i), &cred(req))? {
                out.extend_from_slice(&n);
                out.push(0);
            }
            Ok(out)
        });
        Self::xattr_reply(reply, size, v);
    }

    fn removexattr(&self, _req: &Request, i: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(
            reply,
            self.run("removexattr", |s| {
                Ok(s.removexattr(ino(i), name.as_bytes())?)
            }),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.run("create", |s| {
            let new = NewInode {
                kind: FileKind::Regular,
                perm: mode & 0o7777,
                rdev: 0,
                symlink_target: None,
            };
            Ok(s.create_unmasked(ino(parent), name.as_bytes(), &new, caller(req), umask, true)?)
        });
        match r {
            Ok(a) => reply.created(
                &self.cfg.ttl,
                &file_attr(&a),
                Generation(a.generation),
                FileHandle(self.handles.open(self.store_error_seq())),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self.run("fallocate", |s| {
            const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
            const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
            const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
            let m = match mode {
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
            };
            Ok(s.fallocate_as(ino(i), offset, length, m, &cred(req))?)
        });
        if r == Ok(true) {
            self.attrs_changed(i);
        }
        Self::empty(reply, r.map(|_| ()));
    }

    fn lseek(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let r = self.run("lseek", |s| {
            let w = match whence {
                libc::SEEK_DATA => SeekWhence::Data,
                libc::SEEK_HOLE => SeekWhence::Hole,
                // The kernel answers SEEK_SET/CUR/END itself.
                _ => {
                    return Err(FsError::refused(
                        libc::EINVAL,
                        "lseek: only SEEK_DATA/SEEK_HOLE",
                    ))
                }
            };
            let off = u64::try_from(offset)
                .map_err(|_| FsError::refused(libc::ENXIO, "lseek: negative offset"))?;
            let at = s.seek(ino(i), off, w)?;
            i64::try_from(at)
                .map_err(|_| FsError::refused(libc::EOVERFLOW, "lseek: offset too large"))
        });
        match r {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e),
        }
    }

    fn ioctl(
        &self,
        req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        let r = self.run("ioctl", |s| {
            Self::flags_ioctl(s, req, i, cmd, in_data)
                .unwrap_or(Err(FsError::refused(libc::ENOTTY, "ioctl: not supported")))
        });
        match r {
            // The kernel expects exactly out_size bytes back.
            Ok(mut out) => {
                out.resize(out_size as usize, 0);
                reply.ioctl(0, &out);
            }
            Err(e) => reply.error(e),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let r = self.run("copy_file_range", |s| {
            if !flags.is_empty() {
                return Err(FsError::refused(libc::EINVAL, "copy_file_range: flags"));
            }
            // The reply carries a u32 byte count; stay block-aligned so the next call of a
            // long copy starts on a block boundary and keeps sharing blocks.
            let max = u64::from(u32::MAX) / self.block_size * self.block_size;
            let n = s.clone_range(
                ino(ino_in),
                offset_in,
                ino(ino_out),
                offset_out,
                len.min(max),
            )?;
            u32::try_from(n)
                .map_err(|_| FsError::refused(libc::EOVERFLOW, "copy_file_range: count"))
        });
        match r {
            Ok(n) => {
                Counters::add(&self.counters().reflinks, 1);
                Counters::add(&self.counters().reflink_bytes, u64::from(n));
                reply.written(n);
            }
            Err(e) => reply.error(e),
        }
    }
}
