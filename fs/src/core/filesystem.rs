//! [`Core`]: the filesystem the mount serves, as plain calls that take and return Rust and
//! cowstore types. The fuser adapter (`crate::fuse`) only converts a request's arguments, calls
//! one method here and converts the answer; tests call these methods directly, with no mount.
//! Requests are grouped by topic in the sibling modules (`names`, `attr`, `open`, `dir`, `read`,
//! `xattr`), each an `impl Core` block with the decisions it makes and their unit tests.

use super::config::{CopyMode, FsConfig};
use super::dir::DirStreams;
use crate::error::{FsError, ToErrno};
use crate::handles::Handles;
use crate::progress::TreeOps;
use crate::splice;
use crate::stats::Counters;
use cowstore::io::FileIo;
use cowstore::{InodeNo, StatFs, Store};
use log::{debug, error, info, warn};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

/// What the core needs of the kernel connection beyond replies: the device spliced replies are
/// written to, and a way to drop attributes the kernel caches.
pub trait Kernel: Send + Sync {
    /// The /dev/fuse descriptor the session reads requests from (replies must go to the
    /// descriptor the request came from); `None` until the session runs, or never.
    fn device(&self) -> Option<BorrowedFd<'_>>;

    /// The attributes of `ino` changed in a request whose reply carries none (a write or
    /// fallocate dropped setuid/setgid): the kernel's cached copy must go, so that stat and exec
    /// see the new mode.
    fn attrs_changed(&self, ino: InodeNo);

    /// Entry `name` of `parent` changed behind the kernel's back (a snapshot made or removed by
    /// the snapshot ioctl): its cached dentry, positive or negative, must go.
    fn entry_changed(&self, _parent: InodeNo, _name: &[u8]) {}

    /// Make the kernel write back the dirty pages it caches of `ino` from byte `from` on, and
    /// return once they reached the store (their WRITE requests were answered); the kernel
    /// drops its page cache of that range on the way (`notify_inval_inode` launders each dirty
    /// page before it drops it). The WRITEs come as requests, so this must never run on a
    /// request-serving thread: with every such thread waiting here, nobody would serve them.
    fn write_back(&self, _ino: InodeNo, _from: u64) -> std::io::Result<()> {
        Ok(())
    }
}

/// The filesystem behind the mount: a [`Store`], the adapter's settings, its counters and open
/// handles.
pub struct Core {
    store: Option<Arc<Store>>,
    pub(super) pool: Arc<dyn FileIo>,
    pub(super) block_size: u64,
    pub(super) cfg: FsConfig,
    pub(super) counters: Arc<Counters>,
    pub(super) kernel: Arc<dyn Kernel>,
    pub(super) handles: Handles,
    pub(super) dirs: DirStreams,
    /// Which inodes are open in which I/O mode (FUSE passthrough, writers under the writeback
    /// cache); shared with the daemon's `cowfs sync` handler.
    pub(super) io: Arc<super::open::IoModes>,
    /// The kernel agreed to FUSE_HANDLE_KILLPRIV_V2 at INIT: it leaves clearing setuid/setgid
    /// and file capabilities on write, truncate and chown to us (see [`Core::write`]).
    pub(super) killpriv_v2: bool,
    /// Progress of running snapshot ioctls, for the control socket.
    pub(super) tree_ops: Arc<TreeOps>,
}

/// [`Core::fail`] for work that finishes away from the core (a deferred reply).
pub(crate) fn report(counters: &Counters, op: &'static str, e: FsError) -> i32 {
    Counters::add(&counters.errors, 1);
    if e.is_fault() {
        Counters::add(&counters.io_errors, 1);
        error!("{op}: {e}");
    } else {
        debug!("{op}: {e}");
    }
    e.to_errno()
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("store", &self.store)
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl Core {
    pub fn new(
        store: Arc<Store>,
        cfg: FsConfig,
        counters: Arc<Counters>,
        kernel: Arc<dyn Kernel>,
    ) -> Core {
        Core {
            pool: store.pool(),
            block_size: u64::from(store.block_size()),
            store: Some(store),
            cfg,
            counters,
            kernel,
            handles: Handles::default(),
            dirs: DirStreams::default(),
            io: Arc::default(),
            killpriv_v2: false,
            tree_ops: Arc::default(),
        }
    }

    /// Where the snapshot ioctls that asked for it are (see [`crate::progress`]).
    pub fn tree_ops(&self) -> Arc<TreeOps> {
        self.tree_ops.clone()
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    /// The open-mode table, for work of the daemon outside requests (`cowfs sync`).
    pub fn io_modes(&self) -> Arc<super::open::IoModes> {
        self.io.clone()
    }

    /// What INIT agreed that changes how requests are served: FUSE_HANDLE_KILLPRIV_V2,
    /// whether the kernel caches writes (FUSE_WRITEBACK_CACHE) and FUSE_PASSTHROUGH.
    pub fn negotiated(&mut self, killpriv_v2: bool, writeback_cache: bool, passthrough: bool) {
        self.killpriv_v2 = killpriv_v2;
        self.cfg.writeback_cache = writeback_cache;
        self.io.enable(passthrough && self.cfg.passthrough);
    }

    /// The store, until [`Core::close`].
    pub(super) fn store(&self) -> Result<&Store, FsError> {
        self.store.as_deref().ok_or(FsError::Closed)
    }

    /// The store, for work that outlives the request (a deferred reply).
    pub(super) fn store_arc(&self) -> Result<Arc<Store>, FsError> {
        self.store.clone().ok_or(FsError::Closed)
    }

    /// The one place a failed request becomes an errno: log (loudly for faults), count, map.
    pub fn fail(&self, op: &'static str, e: FsError) -> i32 {
        report(&self.counters, op, e)
    }

    /// Commit and close the store (unmount). Requests after this fail with [`FsError::Closed`].
    pub fn close(&mut self) {
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

    /// The largest write to ask the kernel for at INIT. The kernel's largest read is max_pages
    /// pages, derived from max_write: when reads are spliced, keep it within what one splice
    /// pipe holds, so that every read reply can be spliced.
    pub fn max_write(&self) -> u32 {
        let want = self.cfg.max_write;
        if self.cfg.copy_mode != CopyMode::Splice {
            return want;
        }
        match splice::max_reply_data() {
            Ok(n) => want.min(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => {
                warn!("cannot size a splice pipe: {e}");
                want
            }
        }
    }

    /// A read or listing of `ino` happened: update its access time as the mount's policy says.
    /// A failure fails nothing (the access itself succeeded); it is logged.
    pub(super) fn accessed(&self, s: &Store, ino: InodeNo) {
        if let Err(e) = s.touch_atime(ino, self.cfg.atime) {
            if e.is_fault() {
                warn!("atime of inode {}: {e}", ino.0);
            } else {
                debug!("atime of inode {}: {e}", ino.0);
            }
        }
    }

    /// The attributes changed behind a reply that carries none (see [`Kernel::attrs_changed`]).
    pub(super) fn attrs_changed(&self, ino: InodeNo, changed: bool) {
        if changed {
            self.kernel.attrs_changed(ino);
        }
    }

    pub fn statfs(&self) -> Result<StatFs, FsError> {
        Ok(self.store()?.statfs()?)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A core over a fresh store in a temporary directory, with no kernel behind it.

    use super::*;
    use cowstore::{EngineKind, MkfsOptions, OpenOptions};
    use parking_lot::Mutex;

    /// No device (reads take the buffered path); records the attribute invalidations and the
    /// writebacks asked for.
    #[derive(Debug, Default)]
    pub struct NoKernel {
        pub invalidated: Mutex<Vec<InodeNo>>,
        pub written_back: Mutex<Vec<(InodeNo, u64)>>,
    }

    impl Kernel for NoKernel {
        fn device(&self) -> Option<BorrowedFd<'_>> {
            None
        }
        fn attrs_changed(&self, ino: InodeNo) {
            self.invalidated.lock().push(ino);
        }
        fn write_back(&self, ino: InodeNo, from: u64) -> std::io::Result<()> {
            self.written_back.lock().push((ino, from));
            Ok(())
        }
    }

    pub struct Fixture {
        pub core: Core,
        pub kernel: Arc<NoKernel>,
        pub store: Arc<Store>,
        _dir: tempfile::TempDir,
    }

    pub fn fixture(cfg: FsConfig) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let mkfs = MkfsOptions {
            engine: EngineKind::Mem,
            ..MkfsOptions::default()
        };
        Store::mkfs(&path, &mkfs).expect("mkfs");
        let opts = OpenOptions {
            commit_interval: None,
            ..OpenOptions::default()
        };
        let store = Arc::new(Store::open(&path, &opts).expect("open"));
        let kernel = Arc::new(NoKernel::default());
        let core = Core::new(
            store.clone(),
            cfg,
            Arc::new(Counters::default()),
            kernel.clone(),
        );
        Fixture {
            core,
            kernel,
            store,
            _dir: dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::fixture;
    use super::*;

    #[test]
    fn fail_counts_every_error_and_faults_apart() {
        let f = fixture(FsConfig::default());
        let c = &f.core;
        assert_eq!(c.fail("t", cowstore::Error::NotFound.into()), libc::ENOENT);
        assert_eq!(c.fail("t", FsError::Closed), libc::EIO);
        let snap = c.counters.snapshot();
        assert_eq!((snap.errors, snap.io_errors), (2, 1));
    }

    #[test]
    fn a_closed_core_refuses_requests() {
        let mut f = fixture(FsConfig::default());
        drop(f.store);
        f.core.close();
        let e = f.core.getattr(InodeNo::ROOT).expect_err("closed");
        assert!(matches!(e, FsError::Closed), "{e:?}");
        f.core.close();
    }

    #[test]
    fn buffered_mode_asks_for_the_configured_max_write() {
        let cfg = FsConfig {
            copy_mode: CopyMode::Buffered,
            max_write: 12345,
            ..FsConfig::default()
        };
        assert_eq!(fixture(cfg).core.max_write(), 12345);
        let spliced = fixture(FsConfig::default()).core.max_write();
        assert!(spliced > 0 && spliced <= FsConfig::default().max_write);
    }
}
