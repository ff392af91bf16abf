//! Mounting a store: open it, mount it with fuser, keep a duplicate of the session's /dev/fuse
//! descriptor for spliced replies, and publish the control socket. [`Mounted::run`] serves
//! until the filesystem is unmounted; the store is committed and closed before it returns.

use crate::control::{self, ControlServer};
use crate::core::Kernel;
use crate::fuse::{CowFs, FsConfig, Shared};
use crate::stats::Stats;
use cowstore::{OpenOptions, Store};
use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use log::info;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Default readahead of a mount, KiB. With a window of one read request (about 1 MiB) the
/// kernel has one request in flight; a wider one lets it send several, which the request threads
/// serve in parallel. Cold 256 MiB sequential reads, 1 job, 2 CPUs, virtio disk (alternating
/// runs): 1020 KiB 655-721 MiB/s, 8 MiB 785-895 MiB/s; 2 and 4 MiB were between, 16 MiB
/// within a few percent of 8.
pub const DEFAULT_READAHEAD_KB: u32 = 8192;

/// Default share, in percent of the global dirty limit, that a mount with the writeback cache
/// may hold in dirty pages (its bdi's `max_ratio`; the kernel gives a FUSE mount 1, with
/// `strict_limit`). See [`MountSpec::wb_max_ratio`].
pub const DEFAULT_WB_MAX_RATIO: u32 = 20;

/// Everything a mount needs.
#[derive(Clone, Debug)]
pub struct MountSpec {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    pub open: OpenOptions,
    pub fs: FsConfig,
    /// Kernel mount options (ro, suid, dev, default_permissions, ...).
    pub options: Vec<MountOption>,
    pub acl: SessionACL,
    /// Request-serving threads.
    pub threads: usize,
    /// Kernel readahead for the mount in KiB (the bdi's read_ahead_kb). `None`:
    /// [`DEFAULT_READAHEAD_KB`], and at least the largest read request, so sequential reads
    /// arrive as several full-size requests in flight instead of the kernel default's 128 KiB
    /// one at a time; `Some(0)` keeps the kernel default.
    pub readahead_kb: Option<u32>,
    /// Under the writeback cache: the mount's bdi `max_ratio` (percent of the global dirty
    /// limit its dirty pages may take; `strict_limit` stays on); 0 keeps the kernel's 1 %.
    /// The daemon's threads are made IO flushers first where they may be
    /// ([`become_io_flusher`]); see `raise_dirty_share` for why the share is safe without.
    pub wb_max_ratio: u32,
}

/// Why a mount failed, each a one-line message for the user.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mountpoint {0}: {1}")]
    Mountpoint(PathBuf, String),
    #[error("/dev/fuse is missing (load the fuse module: modprobe fuse)")]
    NoFuseDevice,
    #[error("{0}")]
    Store(#[from] cowstore::Error),
    #[error("mounting {0}: {1}")]
    Mount(PathBuf, io::Error),
}

/// A live mount, not yet serving.
pub struct Mounted {
    session: Session<CowFs>,
    control: Option<ControlServer>,
    shared: Arc<Shared>,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

fn check_mountpoint(p: &Path) -> Result<PathBuf, MountError> {
    let err = |m: String| MountError::Mountpoint(p.to_path_buf(), m);
    match std::fs::metadata(p) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => return Err(err("not a directory".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(err("no such directory".into()))
        }
        Err(e) => return Err(err(e.to_string())),
    }
    p.canonicalize().map_err(|e| err(e.to_string()))
}

/// Open the store and mount it. On return the kernel has completed INIT and the mount is live
/// (requests queue until [`Mounted::run`]).
pub fn mount(spec: &MountSpec) -> Result<Mounted, MountError> {
    let mountpoint = check_mountpoint(&spec.mountpoint)?;
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::NoFuseDevice);
    }
    let store_path = spec
        .store
        .canonicalize()
        .unwrap_or_else(|_| spec.store.clone());
    // Before any daemon thread starts (the store's committer, fuser's request threads): they
    // inherit the flag from this one.
    let io_flusher = spec.fs.writeback_cache && become_io_flusher();
    let store = Arc::new(Store::open(&store_path, &spec.open)?);
    let shared = Arc::new(Shared::default());
    let fs = CowFs::new(store.clone(), spec.fs.clone(), shared.clone());
    let tree_ops = fs.tree_ops();
    let io = fs.io_modes();

    let mut options = spec.options.clone();
    options.push(MountOption::FSName(
        store_path.to_string_lossy().into_owned(),
    ));
    options.push(MountOption::CUSTOM("subtype=cowfs".into()));
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = spec.acl;
    config.n_threads = Some(spec.threads.max(1));
    // Replies must go to the descriptor their request came from, which spliced replies write to
    // directly: every thread shares the one descriptor.
    config.clone_fd = false;
    let session = Session::new(fs, &mountpoint, &config)
        .map_err(|e| MountError::Mount(mountpoint.clone(), e))?;
    let dev = session
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| MountError::Mount(mountpoint.clone(), e))?;
    let _ = shared.dev.set(dev);
    let _ = shared.notifier.set(session.notifier());

    let control = match control::mount_dev(&mountpoint) {
        Ok(devno) => {
            let max_read = shared.kernel.lock().max_write;
            let kb = spec
                .readahead_kb
                .unwrap_or(DEFAULT_READAHEAD_KB.max(max_read / 1024));
            set_readahead(devno, kb);
            let writeback_cache = shared.kernel.lock().writeback_cache;
            if writeback_cache && spec.wb_max_ratio > 0 {
                raise_dirty_share(devno, spec.wb_max_ratio, io_flusher);
            }
            let handlers = control::Handlers {
                stats: Box::new(stats_source(
                    &shared,
                    Arc::downgrade(&store),
                    &store_path,
                    &mountpoint,
                    spec,
                )),
                sync: Box::new(sync_source(Arc::downgrade(&store), &shared, io)),
                report: Box::new(crate::live::report_source(Arc::downgrade(&store))),
                set_read_only: Box::new(read_only_source(Arc::downgrade(&store))),
                progress: Box::new(move |id| tree_ops.get(id)),
            };
            match ControlServer::start(devno, handlers) {
                Ok(c) => Some(c),
                Err(e) => {
                    log::warn!(
                        "no control socket (cowfs stats/umount will not find this mount): {e}"
                    );
                    None
                }
            }
        }
        Err(e) => {
            log::warn!("cannot find the mount's device number: {e}");
            None
        }
    };
    drop(store);
    info!(
        "mounted {} at {}",
        store_path.display(),
        mountpoint.display()
    );
    Ok(Mounted {
        session,
        control,
        shared,
        mountpoint,
    })
}

/// Set the mount's readahead (root only; others keep the default, which is only slower).
fn set_readahead((major, minor): (u32, u32), kb: u32) {
    if kb == 0 {
        return;
    }
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, kb.to_string()) {
        log::info!("keeping the default readahead ({path}: {e})");
    }
}

/// Make the calling thread, and every thread it starts from now on, an IO flusher
/// (`PR_SET_IO_FLUSHER`: `PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE`; a thread's `PF_` flags are
/// copied to the threads it clones). Under the writeback cache the mount's dirty pages can be
/// cleaned only by this daemon, which writes them to the pool, a file on another filesystem. A
/// normal writer is throttled against the global dirty limit, which those pages help fill: the
/// daemon could wait for its own writeback. An IO flusher is throttled only against the bdi it
/// writes to (the pool's), and its allocations do not recurse into I/O. Needs
/// `CAP_SYS_RESOURCE`; without it (logged once), false.
pub fn become_io_flusher() -> bool {
    if rustix::process::is_io_flusher().unwrap_or(false) {
        return true;
    }
    match rustix::process::configure_io_flusher_behavior(true) {
        Ok(()) => {
            info!("the daemon's threads are IO flushers (PR_SET_IO_FLUSHER)");
            true
        }
        Err(e) => {
            log::warn!(
                "cannot make the daemon an IO flusher (PR_SET_IO_FLUSHER: {e}; needs \
                 CAP_SYS_RESOURCE): it is throttled with every other writer"
            );
            false
        }
    }
}

/// Let the mount's bdi hold up to `ratio` percent of the global dirty limit (its `max_ratio`;
/// root only: otherwise, or on a kernel without the file, the default stays, which is only
/// slower). The kernel gives a FUSE bdi 1 % with `strict_limit`, so that a daemon cannot pin
/// much memory nor be starved by its own dirty pages: 48 MB on a 24 GiB machine, which
/// throttles a random writer to the daemon's writeback speed. `strict_limit` stays: it keeps
/// the mount's dirty pages within its share even while the machine is below the global
/// threshold, and with it the share's gain was steady (4 KiB random writes, 256 MiB, fsync at
/// the end: 0.21x -> 0.39x of ext4, 8 alternating runs), where without it runs swung between
/// 0.1x and 0.9x (median 0.25x), and in one run each under a 64 MiB dirty limit
/// (scripts/wb-pressure) a random writer made 30 MiB/s against 97 with it (docs/bench). The rest of
/// the budget, at least 80 % at the default 20, stays with the other bdis, the pool's included.
///
/// That is also why the share is raised when the daemon could not become an IO flusher
/// (`io_flusher` false: no `CAP_SYS_RESOURCE`, as on this project's CI machine): a writer is
/// throttled only while all dirty pages together pass the global limit, and with the mount's
/// held within its share by `strict_limit`, the pool's filesystem keeps the rest and is cleaned
/// by its own writeback, which never waits for the daemon: the daemon's pool writes always
/// make progress, at 20 % as at the kernel's 1 %. Only a share without `strict_limit`, which
/// could fill the whole limit, would need the flag, so the share is raised only where
/// `strict_limit` is on.
fn raise_dirty_share((major, minor): (u32, u32), ratio: u32, io_flusher: bool) {
    let dir = format!("/sys/class/bdi/{major}:{minor}");
    let strict = std::fs::read_to_string(format!("{dir}/strict_limit"));
    if !strict.is_ok_and(|s| s.trim() == "1") && !io_flusher {
        info!("keeping the kernel's dirty limit for the mount: its strict_limit is off");
        return;
    }
    let path = format!("{dir}/max_ratio");
    let old = std::fs::read_to_string(&path).map_or_else(|_| "?".into(), |s| s.trim().to_string());
    match std::fs::write(&path, ratio.min(100).to_string()) {
        Ok(()) => info!(
            "dirty pages of the mount: max_ratio {old} -> {ratio} % of the dirty limit ({path})"
        ),
        Err(e) => log::warn!("keeping the kernel's dirty limit for the mount ({path}: {e})"),
    }
}

fn stats_source(
    shared: &Arc<Shared>,
    store: std::sync::Weak<Store>,
    store_path: &Path,
    mountpoint: &Path,
    spec: &MountSpec,
) -> impl Fn() -> Stats + Send + Sync + 'static {
    let shared = shared.clone();
    let store_s = store_path.to_string_lossy().into_owned();
    let mp = mountpoint.to_string_lossy().into_owned();
    let mode = spec.fs.copy_mode.name().to_string();
    move || {
        let k = shared.kernel.lock().clone();
        Stats {
            pid: std::process::id(),
            store: store_s.clone(),
            mountpoint: mp.clone(),
            fuse_protocol: format!("{}.{}", k.protocol.0, k.protocol.1),
            copy_mode: mode.clone(),
            max_write: k.max_write,
            writeback_cache: k.writeback_cache,
            commits: store.upgrade().map(|s| s.commit_count()).unwrap_or(0),
            read_only: store.upgrade().is_some_and(|s| s.is_read_only()),
            counters: shared.snapshot(),
        }
    }
}

/// `cowfs sync`: write back what the kernel caches, then commit (`sync(1)` and `syncfs(2)`
/// never ask a FUSE daemon to commit). The commit's own result is the answer, so a failure, or
/// an earlier failed commit still latched, is reported.
///
/// Under the writeback cache, only files open for writing can have dirty pages in the kernel;
/// each is written back (`Kernel::write_back`, which waits for the WRITEs: this runs on a
/// control-socket thread, not a request thread). syncfs(2) would not do: the kernel does not
/// wait for a FUSE mount's writeback there. Writes of cached pages that failed since the last
/// `cowfs sync` (their files' fsync and close report them) fail this one, once.
fn sync_source(
    store: std::sync::Weak<Store>,
    shared: &Arc<Shared>,
    io: Arc<crate::core::IoModes>,
) -> impl Fn() -> Result<(), String> + Send + Sync {
    let shared = shared.clone();
    let reported = std::sync::atomic::AtomicU64::new(0);
    move || {
        // The store was closed by the unmount, which committed it.
        let s = store
            .upgrade()
            .ok_or_else(|| "the store is closed (unmounted)".to_string())?;
        for ino in io.writable_inodes() {
            shared
                .write_back(ino, 0)
                .map_err(|e| format!("writing back inode {}: {e}", ino.0))?;
        }
        s.commit().map_err(|e| format!("commit failed: {e}"))?;
        let failed = shared.counters.writeback_errors.load(Ordering::Relaxed);
        let before = reported.swap(failed, Ordering::Relaxed);
        if failed > before {
            return Err(format!(
                "{} writes of cached pages failed since the last sync (ENOSPC or I/O errors; \
                 the fsync and close of their files report them)",
                failed - before
            ));
        }
        Ok(())
    }
}

/// `mount -o remount,ro` / `rw`, after the kernel's remount: make the store read-only (no
/// change, no access time, no commit from here on, once what was written before is committed)
/// or writable again, with the mount's own atime policy.
fn read_only_source(
    store: std::sync::Weak<Store>,
) -> impl Fn(bool) -> Result<(), String> + Send + Sync {
    move |read_only| {
        let Some(s) = store.upgrade() else {
            return Err("the store is closed (unmounted)".into());
        };
        match s.set_read_only(read_only) {
            Ok(()) => {
                info!(
                    "remounted {}",
                    if read_only {
                        "read-only: the store is committed and does not change"
                    } else {
                        "read-write"
                    }
                );
                Ok(())
            }
            Err(cowstore::Error::ReadOnly) => Err(
                "the daemon opened the store read-only (mounted with -o ro); unmount it and \
                 mount it again without ro to write"
                    .into(),
            ),
            Err(e) if read_only => Err(format!(
                "read-only now, but committing what was written before failed: {e}"
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Mounted {
    /// Something another thread can use to unmount (e.g. on SIGTERM).
    pub fn unmounter(&mut self) -> SessionUnmounter {
        self.session.unmount_callable()
    }

    pub fn control_socket(&self) -> Option<&Path> {
        self.control.as_ref().map(|c| c.path())
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serve requests until the filesystem is unmounted; the store is committed and closed
    /// (fuser calls `destroy`) before this returns.
    pub fn run(self) -> io::Result<()> {
        let Mounted {
            session,
            control,
            mountpoint,
            ..
        } = self;
        let r = session.run();
        drop(control);
        info!("{} unmounted", mountpoint.display());
        r
    }
}

/// Whether process `pid`, which holds the lock of the store at `store`, is letting it go: a
/// cowfs mount daemon (or an exiting process) with no mount of this store left in its mount
/// namespace. After a plain `umount MOUNTPOINT` the kernel returns before the daemon has
/// committed and closed the store, so a mount that follows at once finds it still locked; such
/// a holder is worth waiting for. One that still has the store mounted, or that is another kind
/// of user (fsck, inspect), is not.
pub fn holder_is_releasing(pid: u32, store: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        // Gone: its lock is free, or about to be.
        return true;
    };
    // An exiting process has given up its memory (an empty command line) before its files.
    let mut args = cmdline.split(|&b| b == 0);
    let is_daemon = args.nth(1).is_some_and(|a| a == b"mount");
    if !cmdline.is_empty() && !is_daemon {
        return false;
    }
    let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")) else {
        return true;
    };
    let want = store
        .canonicalize()
        .unwrap_or_else(|_| store.to_path_buf())
        .to_string_lossy()
        .into_owned();
    !info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        match (fields.get(sep + 1), fields.get(sep + 2)) {
            (Some(fstype), Some(source)) => {
                fstype.starts_with("fuse") && control::unescape(source) == want
            }
            _ => false,
        }
    })
}
