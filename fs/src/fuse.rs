//! The fuser adapter. Every callback has one shape: convert fuser's arguments, call one
//! method of the fuser-free [`Core`] through [`CowFs::run`], reply on `Ok`; an `Err` goes
//! through [`Core::fail`], the one place that logs, counts and maps errors to an errno. What a
//! request means and every decision about it live in `crate::core`; here are only the
//! conversions between fuser's types and the core's.

use crate::core::{Backing, Core, DirSink, Kernel, Opened, ReadReply, Seek, WriteKind, XattrReply};
use crate::cred::RequestCred;
use crate::deferred::Deferred;
use crate::error::FsError;
use crate::stats::{CounterSnapshot, Counters};
use cowstore::{Caller, DirEntry, FileKind, InodeAttr, InodeNo, SetAttr, Store, TimeSet, Timespec};
use fuser::{
    BackingId, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use log::{debug, info};
use parking_lot::Mutex;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

pub use crate::core::{CopyMode, FsConfig};

/// What the kernel agreed to at INIT.
#[derive(Clone, Debug, Default)]
pub struct KernelInfo {
    pub protocol: (u32, u32),
    pub max_write: u32,
    pub capabilities: u64,
    /// FUSE_PASSTHROUGH asked for and offered (with a stack depth the kernel takes).
    pub passthrough: bool,
    /// FUSE_WRITEBACK_CACHE asked for and offered: the kernel caches writes.
    pub writeback_cache: bool,
}

/// State shared between the mounted filesystem and the daemon around it (control socket,
/// session setup).
#[derive(Debug, Default)]
pub struct Shared {
    pub counters: Arc<Counters>,
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

impl Kernel for Shared {
    fn device(&self) -> Option<BorrowedFd<'_>> {
        self.dev.get().map(AsFd::as_fd)
    }

    /// Only attributes (offset -1): no page-cache locks are taken, so this is safe while the
    /// request is being served.
    fn attrs_changed(&self, ino: InodeNo) {
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(INodeNo(ino.0), -1, 0) {
                debug!("invalidating the attributes of inode {}: {e}", ino.0);
            }
        }
    }

    /// An invalidation of the page cache from `from` on: the kernel launders (writes back and
    /// waits for) each dirty page before it drops it. An inode the kernel no longer knows has
    /// no pages (fuser takes that ENOENT for success).
    fn write_back(&self, ino: InodeNo, from: u64) -> std::io::Result<()> {
        let Some(n) = self.notifier.get() else {
            return Ok(());
        };
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        n.inval_inode(INodeNo(ino.0), from, 0)
    }

    fn entry_changed(&self, parent: InodeNo, name: &[u8]) {
        if let Some(n) = self.notifier.get() {
            let name = std::ffi::OsStr::from_bytes(name);
            if let Err(e) = n.inval_entry(INodeNo(parent.0), name) {
                debug!("invalidating entry {name:?} of inode {}: {e}", parent.0);
            }
        }
    }
}

/// The filesystem fuser serves: the [`Core`] and the state shared with the daemon.
#[derive(Debug)]
pub struct CowFs {
    core: Core,
    shared: Arc<Shared>,
    /// Replies that wait for the kernel's writeback (SEEK_DATA/SEEK_HOLE and snapshots under
    /// the writeback cache), off the request threads.
    deferred: Deferred,
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

/// The attributes of a negative entry: node id 0 is what tells the kernel the name is absent.
fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(Timespec::from(t)),
    }
}

fn fopen_flags(o: &Opened) -> FopenFlags {
    let mut f = FopenFlags::empty();
    for (on, flag) in [
        (o.keep_cache, FopenFlags::FOPEN_KEEP_CACHE),
        (o.cache_dir, FopenFlags::FOPEN_CACHE_DIR),
        (o.noflush, FopenFlags::FOPEN_NOFLUSH),
        (o.direct_io, FopenFlags::FOPEN_DIRECT_IO),
    ] {
        if on {
            f |= flag;
        }
    }
    f
}

/// What cowfs asks of the kernel at INIT. POSIX_ACL: the kernel enforces ACLs (and turns
/// default_permissions on); the store keeps modes and ACLs in step and inherits default ACLs.
/// DONT_MASK: create, mknod and mkdir carry the mode before the umask, which the store applies
/// only where no default ACL is inherited, as ext4 does. EXPORT_SUPPORT: file handles
/// (name_to_handle_at/open_by_handle_at, NFS export) are (node id, generation); the kernel
/// resolves one it no longer caches by looking up "." (and ".." for a parent) of the bare node
/// id. Inode numbers are never reused and the generation is the commit generation at creation,
/// so a stale handle gets ESTALE. HANDLE_KILLPRIV_V2: the kernel stops asking for
/// `security.capability` before every write (it may mark an inode S_NOSEC once it has checked
/// it) and leaves clearing setuid/setgid and file capabilities on write, truncate, chown,
/// fallocate and copy_file_range to the store (see `Core::write`, `Core::setattr`).
fn wanted_capabilities(cfg: &FsConfig) -> InitFlags {
    let mut want = InitFlags::FUSE_DO_READDIRPLUS
        | InitFlags::FUSE_READDIRPLUS_AUTO
        | InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_CACHE_SYMLINKS
        | InitFlags::FUSE_POSIX_ACL
        | InitFlags::FUSE_DONT_MASK
        | InitFlags::FUSE_EXPORT_SUPPORT
        | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
    if cfg.writeback_cache {
        want |= InitFlags::FUSE_WRITEBACK_CACHE;
    } else if cfg.passthrough {
        // The kernel turns passthrough off when the writeback cache is on.
        want |= InitFlags::FUSE_PASSTHROUGH;
    }
    want
}

/// INIT: ask for `want_write` (or the nearest the kernel takes) and the capabilities of
/// [`wanted_capabilities`]; log and return what was agreed.
fn negotiate(config: &mut KernelConfig, cfg: &FsConfig, want_write: u32) -> KernelInfo {
    let max_write = match config.set_max_write(want_write) {
        Ok(_) => want_write,
        Err(nearest) => {
            let _ = config.set_max_write(nearest);
            nearest
        }
    };
    let _ = config.set_max_background(64);
    let _ = config.set_congestion_threshold(48);
    for flag in wanted_capabilities(cfg).iter() {
        if let Err(missing) = config.add_capabilities(flag) {
            info!("kernel does not offer {missing:?}");
        }
    }
    // Backing files (lower files) may sit on any filesystem that is not itself stacked; and the
    // mount stays stackable once (e.g. under overlayfs).
    let passthrough = wanted_capabilities(cfg).contains(InitFlags::FUSE_PASSTHROUGH)
        && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
        && config.set_max_stack_depth(1).is_ok();
    let (abi, caps) = (config.kernel_abi(), config.capabilities());
    info!(
        "FUSE protocol {}.{}, max_write {max_write}, copy_mode {}, writeback_cache {}, \
         posix_acl {}, handle_killpriv_v2 {}, passthrough {}",
        abi.0,
        abi.1,
        cfg.copy_mode.name(),
        cfg.writeback_cache && caps.contains(InitFlags::FUSE_WRITEBACK_CACHE),
        caps.contains(InitFlags::FUSE_POSIX_ACL),
        caps.contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2),
        passthrough,
    );
    KernelInfo {
        protocol: (abi.0, abi.1),
        max_write,
        capabilities: caps.bits(),
        passthrough,
        writeback_cache: cfg.writeback_cache && caps.contains(InitFlags::FUSE_WRITEBACK_CACHE),
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

/// A readdir reply as the core's [`DirSink`].
struct Names<'a>(&'a mut ReplyDirectory);

impl DirSink<DirEntry> for Names<'_> {
    fn add(&mut self, e: &DirEntry) -> bool {
        let name = OsStr::from_bytes(&e.name);
        !self
            .0
            .add(INodeNo(e.ino.0), e.cookie, file_type(e.kind), name)
    }
}

/// A readdirplus reply as the core's [`DirSink`]; `ttl` covers the entry and its attributes.
struct NamesPlus<'a>(&'a mut ReplyDirectoryPlus, Duration);

impl DirSink<(DirEntry, InodeAttr)> for NamesPlus<'_> {
    fn add(&mut self, (e, a): &(DirEntry, InodeAttr)) -> bool {
        let (name, generation) = (OsStr::from_bytes(&e.name), Generation(a.generation));
        !self.0.add(
            INodeNo(e.ino.0),
            e.cookie,
            name,
            &self.1,
            &file_attr(a),
            generation,
        )
    }
}

impl CowFs {
    pub fn new(store: Arc<Store>, cfg: FsConfig, shared: Arc<Shared>) -> CowFs {
        let core = Core::new(store, cfg, shared.counters.clone(), shared.clone());
        CowFs {
            core,
            shared,
            deferred: Deferred::default(),
        }
    }

    /// Progress of the snapshot ioctls, for the control socket.
    pub fn tree_ops(&self) -> Arc<crate::progress::TreeOps> {
        self.core.tree_ops()
    }

    fn ttl(&self) -> Duration {
        self.core.config().ttl
    }

    /// Which inodes are open for writing, for `cowfs sync` (see `session`).
    pub fn io_modes(&self) -> Arc<crate::core::IoModes> {
        self.core.io_modes()
    }

    /// Run one request in the core; failures go through [`Core::fail`].
    fn run<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Core) -> Result<T, FsError>,
    ) -> Result<T, Errno> {
        f(&self.core).map_err(|e| Errno::from_i32(self.core.fail(op, e)))
    }

    fn entry(&self, reply: ReplyEntry, r: Result<InodeAttr, Errno>) {
        match r {
            Ok(a) => reply.entry(&self.ttl(), &file_attr(&a), Generation(a.generation)),
            Err(e) => reply.error(e),
        }
    }

    fn attr(&self, reply: ReplyAttr, r: Result<InodeAttr, Errno>) {
        match r {
            Ok(a) => reply.attr(&self.ttl(), &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opened(reply: ReplyOpen, r: Result<Opened, Errno>) {
        match r {
            Ok(o) => match o.passthrough.as_ref().and_then(Backing::get::<BackingId>) {
                Some(id) => reply.opened_passthrough(FileHandle(o.fh), fopen_flags(&o), id),
                None => reply.opened(FileHandle(o.fh), fopen_flags(&o)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn xattr(reply: ReplyXattr, r: Result<XattrReply, Errno>) {
        match r {
            Ok(XattrReply::Size(n)) => reply.size(n),
            Ok(XattrReply::Data(v)) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn written(reply: ReplyWrite, r: Result<u32, Errno>) {
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for CowFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let agreed = negotiate(config, self.core.config(), self.core.max_write());
        let caps = InitFlags::from_bits_retain(agreed.capabilities);
        self.core.negotiated(
            caps.contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2),
            agreed.writeback_cache,
            agreed.passthrough,
        );
        *self.shared.kernel.lock() = agreed;
        Ok(())
    }

    fn destroy(&mut self) {
        self.core.close();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // A missing name is answered with node id 0 and the entry TTL: the kernel keeps it as a
        // negative entry instead of asking again (a `create` or `stat` of a new name asks once).
        match self.run("lookup", |c| c.lookup(ino(parent), name.as_bytes())) {
            Ok(Some(a)) => reply.entry(&self.ttl(), &file_attr(&a), Generation(a.generation)),
            Ok(None) => reply.entry(&self.ttl(), &negative_entry(), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {
        // Inode lifetime is the store's business (links and open handles), not the kernel's
        // lookup count: nothing to do.
    }

    fn getattr(&self, _req: &Request, i: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.attr(reply, self.run("getattr", |c| c.getattr(ino(i))));
    }

    fn setattr(
        &self,
        req: &Request,
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
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(Timespec::from),
        };
        let who = cred(req);
        self.attr(reply, self.run("setattr", |c| c.setattr(ino(i), set, &who)));
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        match self.run("readlink", |c| c.readlink(ino(i))) {
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
        let (parent, name, who) = (ino(parent), name.as_bytes(), caller(req));
        let r = self.run("mknod", |c| c.mknod(parent, name, mode, umask, rdev, who));
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
        let (parent, name, who) = (ino(parent), name.as_bytes(), caller(req));
        let r = self.run("mkdir", |c| c.mkdir(parent, name, mode, umask, who));
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.run("unlink", |c| c.unlink(ino(parent), name.as_bytes()));
        Self::empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.run("rmdir", |c| c.rmdir(ino(parent), name.as_bytes()));
        Self::empty(reply, r);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (parent, name, who) = (ino(parent), link_name.as_bytes(), caller(req));
        let target = target.as_os_str().as_bytes();
        let r = self.run("symlink", |c| c.symlink(parent, name, target, who));
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
        let (from, to) = (name.as_bytes(), newname.as_bytes());
        let (flags, who) = (flags.bits(), caller(req));
        let r = self.run("rename", |c| {
            c.rename(ino(parent), from, ino(newparent), to, flags, who)
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
        let r = self.run("link", |c| {
            c.link(ino(i), ino(newparent), newname.as_bytes())
        });
        self.entry(reply, r);
    }

    fn open(&self, _req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut register = |fd: BorrowedFd<'_>| reply.open_backing(fd).map(Backing::new);
        let r = self.run("open", |c| c.open(ino(i), flags.0, &mut register));
        Self::opened(reply, r);
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
        let unique = req.unique().0;
        match self.run("read", |c| c.read(ino(i), offset, size, unique)) {
            Ok(ReadReply::Sent) => answered_by_splice(reply),
            Ok(ReadReply::Data(buf)) => reply.data(&buf),
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
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let who = cred(req);
        let kind = WriteKind {
            cache: write_flags.contains(WriteFlags::FUSE_WRITE_CACHE),
            kill_suidgid: write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID),
        };
        Self::written(
            reply,
            self.run("write", |c| c.write(ino(i), offset, data, &who, kind)),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at a close: writes reach the store as they arrive, and the kernel keeps
        // POSIX and flock locks itself (no lock requests are served). Without the writeback
        // cache every open asks for FOPEN_NOFLUSH; with it the kernel ignores that flag and
        // sends a FLUSH at every close(2), after writing the file's dirty pages back and
        // checking them for errors (which close still reports). ENOSYS makes it stop for good
        // (fc->no_flush): one round trip less per close.
        Counters::add(&self.shared.counters.flushes, 1);
        reply.error(Errno::ENOSYS);
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
        Self::empty(reply, self.run("release", |c| c.release(ino(i), fh.0)));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        Self::empty(reply, self.run("fsync", |c| c.fsync(fh.0)));
    }

    fn opendir(&self, _req: &Request, i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        Self::opened(reply, self.run("opendir", |c| c.opendir(ino(i))));
    }

    fn readdir(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut sink = Names(&mut reply);
        match self.run("readdir", |c| c.readdir(ino(i), fh.0, offset, &mut sink)) {
            Ok(()) => reply.ok(),
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
        let mut sink = NamesPlus(&mut reply, self.ttl());
        match self.run("readdirplus", |c| {
            c.readdirplus(ino(i), fh.0, offset, &mut sink)
        }) {
            Ok(()) => reply.ok(),
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
        Self::empty(
            reply,
            self.run("releasedir", |c| c.releasedir(ino(i), fh.0)),
        );
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        Self::empty(reply, self.run("fsyncdir", |c| c.fsync(fh.0)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.run("statfs", Core::statfs) {
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
        let (i, name, who) = (ino(i), name.as_bytes(), cred(req));
        let r = self.run("setxattr", |c| {
            c.setxattr(i, name, value, flags, position, &who)
        });
        Self::empty(reply, r);
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let r = self.run("getxattr", |c| c.getxattr(ino(i), name.as_bytes(), size));
        Self::xattr(reply, r);
    }

    fn listxattr(&self, req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        let who = cred(req);
        Self::xattr(
            reply,
            self.run("listxattr", |c| c.listxattr(ino(i), size, &who)),
        );
    }

    fn removexattr(&self, _req: &Request, i: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.run("removexattr", |c| c.removexattr(ino(i), name.as_bytes()));
        Self::empty(reply, r);
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
        let (parent, name, who) = (ino(parent), name.as_bytes(), caller(req));
        match self.run("create", |c| c.create(parent, name, mode, umask, who)) {
            Ok((a, o)) => reply.created(
                &self.ttl(),
                &file_attr(&a),
                Generation(a.generation),
                FileHandle(o.fh),
                fopen_flags(&o),
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
        let who = cred(req);
        let r = self.run("fallocate", |c| {
            c.fallocate(ino(i), offset, length, mode, &who)
        });
        Self::empty(reply, r);
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
        match self.run("lseek", |c| c.lseek(ino(i), offset, whence)) {
            Ok(Seek::At(o)) => reply.offset(o),
            Ok(Seek::AfterWriteback(job)) => self.deferred.run(move || match job.run() {
                Ok(o) => reply.offset(o),
                Err(errno) => reply.error(Errno::from_i32(errno)),
            }),
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
        if let Some(job) = self
            .core
            .snapshot_job(ino(i), cmd, in_data, out_size, cred(req))
        {
            self.deferred.run(move || match job.run() {
                Ok(out) => reply.ioctl(0, &out),
                Err(errno) => reply.error(Errno::from_i32(errno)),
            });
            return;
        }
        let who = cred(req);
        match self.run("ioctl", |c| c.ioctl(ino(i), cmd, in_data, out_size, &who)) {
            Ok(out) => reply.ioctl(0, &out),
            Err(e) => reply.error(e),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
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
        let (src, dst, flags, who) = (ino(ino_in), ino(ino_out), flags.bits(), cred(req));
        let r = self.run("copy_file_range", |c| {
            c.copy_file_range(src, offset_in, dst, offset_out, len, flags, &who)
        });
        Self::written(reply, r);
    }
}
