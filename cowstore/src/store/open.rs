//! Making and opening a store: mkfs, the engine a store has, open (the lower tree, orphans,
//! an unclean stop), the periodic committer, and close.

use super::api::Store;
use super::txn::{Inner, TxnState};
use crate::codec::{decode, encode, ImageRecord, StateRecord};
use crate::error::{Error, Result};
use crate::io::{DirEnv, Env, FileIo, ScratchFile, SpaceReserve, SyncTracked, RESERVE_FILE};
use crate::meta::{key, Delta, Engine, IntKey, RedbEngine, Snapshot, TableId};
#[cfg(feature = "testing")]
use crate::meta::{MemEngine, MEM_META_FILE};
use crate::ns::new_inode_record;
use crate::overlay::LowerTree;
use crate::store::ctx::{state_delta, TxnMem, STATE_KEY};
use crate::superblock::{Superblock, SUPERBLOCK_FILE, SUPERBLOCK_LEN};
use crate::types::*;
use parking_lot::{Condvar, Mutex};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

pub const META_FILE: &str = "meta.redb";
/// Mutations per commit while the host is full (see `Inner::write`).
pub(super) const LOW_SPACE_COMMIT_EVERY: u64 = 64;
/// Uncommitted metadata held in memory before an operation triggers a commit.
const DEFAULT_MAX_DIRTY_BYTES: usize = 64 << 20;
pub const POOL_FILE: &str = "pool";

/// Options for [`Store::mkfs`].
#[derive(Clone, Debug)]
pub struct MkfsOptions {
    pub block_size: u32,
    /// Which metadata engine keeps the store's tables.
    pub engine: EngineKind,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions {
            block_size: 4096,
            engine: EngineKind::Redb,
        }
    }
}

/// The metadata engines behind the seam (`meta`). A store's engine is the one whose file it has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// redb in `meta.redb`: the embedded default.
    #[default]
    Redb,
    /// Ordered maps in memory over an append-only log, `meta.log`: the second implementation
    /// of the seam, which the test suite runs the store on as well (`testing` feature only).
    #[cfg(feature = "testing")]
    Mem,
}

impl EngineKind {
    /// The file of the store that holds this engine's metadata.
    pub fn meta_file(self) -> &'static str {
        match self {
            EngineKind::Redb => META_FILE,
            #[cfg(feature = "testing")]
            EngineKind::Mem => MEM_META_FILE,
        }
    }
}

/// Open the engine of the store in `env` (a new, empty one of kind `kind` when given).
fn open_engine(
    env: &dyn Env,
    kind: Option<EngineKind>,
    opts: &OpenOptions,
    reserve: Option<Arc<SpaceReserve>>,
) -> Result<Arc<dyn Engine>> {
    let create = kind.is_some();
    let kind = match kind {
        Some(k) => k,
        None if env.exists(META_FILE) => EngineKind::Redb,
        #[cfg(feature = "testing")]
        None if env.exists(MEM_META_FILE) => EngineKind::Mem,
        None => {
            return Err(Error::NotAStore {
                path: env.path(),
                reason: format!("{META_FILE} is missing"),
            })
        }
    };
    let file = |name: &str| -> Result<Arc<dyn FileIo>> {
        let f = env.open(name, create)?;
        if create {
            f.set_len(0)?;
        }
        Ok(if opts.read_only {
            Arc::new(ScratchFile::new(f)?)
        } else {
            f
        })
    };
    Ok(match kind {
        EngineKind::Redb => Arc::new(RedbEngine::open(
            file(META_FILE)?,
            reserve,
            opts.cache_bytes,
            opts.verify && !create,
        )?),
        #[cfg(feature = "testing")]
        EngineKind::Mem => Arc::new(MemEngine::open(file(MEM_META_FILE)?, reserve)?),
    })
}

/// Options for [`Store::open`].
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Refuse every change; nothing is written to the store's files.
    pub read_only: bool,
    /// Commit this often when there are changes; `None` commits only on demand.
    pub commit_interval: Option<Duration>,
    /// Bytes of B-tree pages cached in memory.
    pub cache_bytes: usize,
    /// Verify the checksum of every B-tree page before trusting the file (reads all metadata
    /// once). A damaged file is then refused at open with a message, instead of failing later.
    pub verify: bool,
    /// Overlay: the read-only lower directory. Recorded by the first open that names one; later
    /// opens may omit it, and a different one is refused.
    pub lower: Option<std::path::PathBuf>,
    /// Commit as soon as the uncommitted metadata held in memory passes this many bytes, so the
    /// open transaction stays bounded whatever the commit interval.
    pub max_dirty_bytes: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            commit_interval: Some(Duration::from_secs(5)),
            cache_bytes: 64 << 20,
            verify: true,
            lower: None,
            max_dirty_bytes: DEFAULT_MAX_DIRTY_BYTES,
        }
    }
}

fn read_superblock(env: &dyn Env) -> Result<Superblock> {
    if !env.exists(SUPERBLOCK_FILE) {
        return Err(Error::NotAStore {
            path: env.path(),
            reason: "no superblock file (run mkfs first)".into(),
        });
    }
    let f = env.open(SUPERBLOCK_FILE, false)?;
    let len = f.len()?;
    let mut buf = vec![0u8; (len as usize).min(SUPERBLOCK_LEN)];
    f.read_at(&mut buf, 0)?;
    Superblock::from_bytes(&buf)
}

impl Store {
    /// Create a new, empty store in directory `dir` (created if missing, must not hold a store).
    /// The directory is made 0700 and every file 0600 whatever the umask (see [`DirEnv`]).
    pub fn mkfs(dir: impl AsRef<Path>, opts: &MkfsOptions) -> Result<()> {
        Store::mkfs_env(Arc::new(DirEnv::create(dir)?), opts)
    }

    pub fn mkfs_env(env: Arc<dyn Env>, opts: &MkfsOptions) -> Result<()> {
        let sb = Superblock::new(opts.block_size)?;
        let _lock = env.lock()?;
        if env.exists(SUPERBLOCK_FILE) {
            return Err(Error::Exists);
        }
        let pool = env.open(POOL_FILE, true)?;
        pool.set_len(0)?;
        let mkfs_opts = OpenOptions {
            cache_bytes: 1 << 20,
            ..Default::default()
        };
        let engine = open_engine(env.as_ref(), Some(opts.engine), &mkfs_opts, None)?;
        let state = StateRecord {
            generation: 1,
            next_ino: InodeNo(2),
            pool_blocks: 0,
            inodes: 1,
            clean: true,
            images: 0,
        };
        let mut root = new_inode_record(FileKind::Directory, 0o755, Caller::ROOT, 0, InodeNo::ROOT);
        root.generation = 1;
        let mut first = state_delta(&state);
        first.set(
            TableId::Inodes,
            key::<IntKey>(InodeNo::ROOT.0),
            Some(encode(&root)),
        );
        engine.commit(&[&first])?;
        drop(engine);
        pool.sync()?;
        // The superblock goes last: a store without one is not a store, so a crashed mkfs is harmless.
        let sbf = env.open(SUPERBLOCK_FILE, true)?;
        sbf.write_at(&sb.to_bytes(), 0)?;
        sbf.sync()?;
        Ok(())
    }

    /// Open the store in directory `dir`. A directory another user owns or may write is refused
    /// ([`Error::UnsafeStore`]), so is a store file that is a symlink; modes that let others
    /// read the store are tightened (see [`DirEnv`]).
    pub fn open(dir: impl AsRef<Path>, opts: &OpenOptions) -> Result<Store> {
        Store::open_env(Arc::new(DirEnv::open(dir)?), opts)
    }

    pub fn open_env(env: Arc<dyn Env>, opts: &OpenOptions) -> Result<Store> {
        let sb = read_superblock(env.as_ref())?;
        let guard = env.lock()?;
        let bs = u64::from(sb.block_size);
        let pool: Arc<dyn FileIo> = Arc::new(SyncTracked::new(env.open(POOL_FILE, false)?));
        // Only a store on a real host filesystem can run out of host space.
        let reserve = match pool.host_space() {
            Ok(Some((total, _))) if !opts.read_only => {
                let f = env.open(RESERVE_FILE, true)?;
                let r = Arc::new(SpaceReserve::new(f, SpaceReserve::size_for(Some(total))));
                if !r.fill() {
                    log::warn!("could not reserve metadata space: the host filesystem is full");
                }
                Some(r)
            }
            _ => None,
        };
        let engine = open_engine(env.as_ref(), None, opts, reserve.clone())?;
        let snap = engine.snapshot()?;
        let state = match snap.get(TableId::State, &key::<IntKey>(STATE_KEY))? {
            Some(v) => decode::<StateRecord>(&v, &STATE_KEY)?,
            None => return Err(Error::corrupt("meta.redb: state record missing")),
        };
        let mut delta = Delta::default();
        let lower = reconcile_lower(snap.as_ref(), &mut delta, opts)?;
        let mut mem = TxnMem::new(state);
        mem.dirty = !delta.is_empty();
        let inner = Arc::new(Inner {
            env,
            sb,
            bs,
            engine,
            reserve,
            lower,
            pool,
            state: Mutex::new(TxnState {
                snap,
                delta,
                mem,
                in_doubt: None,
            }),
            commit_lock: Mutex::new(()),
            inflight: parking_lot::RwLock::new(()),
            read_only: opts.read_only,
            frozen: AtomicBool::new(false),
            freeze_pending: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            failed_commits: AtomicU64::new(0),
            max_dirty_bytes: opts.max_dirty_bytes.max(1 << 20),
            closed: AtomicBool::new(false),
            stop: (Mutex::new(false), Condvar::new()),
            _lock: guard,
        });
        inner.replay_images()?;
        if !opts.read_only {
            inner.recover(!state.clean)?;
        }
        let committer = match (opts.commit_interval, opts.read_only) {
            (Some(every), false) => Some(spawn_committer(Arc::downgrade(&inner), every)?),
            _ => None,
        };
        Ok(Store {
            inner,
            committer: Mutex::new(committer),
        })
    }

    /// Commit, mark the store cleanly closed, and release it.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        {
            let (m, cv) = &self.inner.stop;
            *m.lock() = true;
            cv.notify_all();
        }
        if let Some(h) = self.committer.lock().take() {
            let _ = h.join();
        }
        if self.inner.closed.swap(true, Ordering::SeqCst) || self.inner.read_only {
            return Ok(());
        }
        self.inner.commit(true)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::error!("closing store {}: {e}", self.inner.env.path().display());
        }
    }
}

impl Inner {
    /// Write the block images the last commit carried back into the pool and sync it, before
    /// anything reads the pool (see `ImagePlan` in txn.rs). A read-write open then drops them in
    /// the open transaction; a read-only one leaves them for the next (writing them again is
    /// harmless: an image is its block's committed content). An image that does not decode is
    /// left for fsck to report and repair to drop.
    fn replay_images(&self) -> Result<()> {
        let images: Vec<(BlockNo, Vec<u8>)> = self.read(|cx| {
            let mut v = Vec::new();
            for item in cx.images.iter()? {
                let (b, raw) = item?;
                match decode::<ImageRecord>(&raw, &b) {
                    Ok(r) if r.bytes.len() as u64 == cx.bs && b.0 < cx.mem.state.pool_blocks => {
                        v.push((b, r.bytes))
                    }
                    Ok(r) => log::error!(
                        "meta.redb: table images key {}: an image of {} bytes (blocks are {}) \
                         or past the pool's end: left for fsck",
                        b.0,
                        r.bytes.len(),
                        cx.bs
                    ),
                    Err(e) => log::error!("{e}: left for fsck"),
                }
            }
            Ok(v)
        })?;
        if images.is_empty() {
            return Ok(());
        }
        log::info!(
            "writing back {} pool blocks the last commit carried",
            images.len()
        );
        for (b, bytes) in &images {
            self.pool
                .write_at(bytes, b.pos(self.bs))
                .map_err(Error::from_io)?;
        }
        self.pool.sync().map_err(Error::from_io)?;
        if self.read_only {
            return Ok(());
        }
        self.write(|cx| {
            for (b, _) in &images {
                cx.images.remove(*b)?;
            }
            cx.mem.state.images = cx.mem.state.images.saturating_sub(images.len() as u64);
            cx.mem.dirty = true;
            Ok(())
        })
    }

    /// After open: reclaim orphans (inodes unlinked while open when the last process stopped);
    /// after an unclean stop also give the host back space of blocks freed by the last commits.
    fn recover(&self, unclean: bool) -> Result<()> {
        let orphans: Vec<InodeNo> = self.read(|cx| {
            let mut v = Vec::new();
            for item in cx.orphans.iter()? {
                v.push(item?.0);
            }
            Ok(v)
        })?;
        if !orphans.is_empty() {
            log::info!("reclaiming {} orphaned inodes", orphans.len());
        }
        // One operation per orphan: one whose record is damaged stays listed (its blocks stay
        // referenced) for fsck to report, and does not keep the store from opening.
        for ino in orphans {
            // A directory brings its detached tree (ns::rmtree).
            let reclaimed = self.reclaim_orphan(ino);
            if let Err(e) = reclaimed {
                log::error!("orphaned {ino} left in place (run cowfs fsck): {e}");
            }
        }
        // The commit below marks the store open (not clean) even when nothing was reclaimed.
        self.state.lock().mem.dirty = true;
        if unclean {
            let (free, end): (Vec<BlockRun>, u64) = self.read(|cx| {
                let mut v = Vec::new();
                for item in cx.free.iter()? {
                    let (k, val) = item?;
                    v.push(BlockRun::new(
                        k,
                        decode::<crate::codec::FreeRecord>(&val, &k)?.len,
                    ));
                }
                Ok((v, cx.mem.state.pool_blocks))
            })?;
            // Only to give the host its space back (free blocks are never read): a full or
            // failing host must not keep the store from opening.
            for r in free {
                if let Err(e) = self.pool.punch(r.start.pos(self.bs), r.len * self.bs) {
                    log::warn!("punching free pool blocks {r}: {e}");
                    break;
                }
            }
            if self.pool.len()? > end * self.bs {
                if let Err(e) = self.pool.set_len(end * self.bs) {
                    log::warn!("trimming the pool to its high-water mark: {e}");
                }
            }
        }
        // Mark the store open (not clean) durably, so a crash from here on is noticed.
        self.commit(false)
    }
}

/// Match the lower directory the caller names with the one the store recorded (recording it the
/// first time, into `delta`). Returns the opened lower tree.
fn reconcile_lower(
    snap: &dyn Snapshot,
    delta: &mut Delta,
    opts: &OpenOptions,
) -> Result<Option<Arc<LowerTree>>> {
    use crate::codec::{LowerDirRecord, LowerRootRecord};
    use std::os::unix::ffi::OsStrExt;
    let recorded: Option<LowerRootRecord> = match snap.get(TableId::Lower, &key::<IntKey>(0))? {
        Some(v) => Some(decode::<LowerRootRecord>(&v, &0u64)?),
        None => None,
    };
    match (recorded, &opts.lower) {
        (None, None) => Ok(None),
        (Some(r), given) => {
            let recorded_path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&r.path));
            let tree = LowerTree::open(given.as_deref().unwrap_or(&recorded_path))?;
            if tree.dev != r.dev || tree.ino != r.ino {
                return Err(Error::LowerMismatch {
                    recorded: recorded_path,
                    given: tree.path.clone(),
                });
            }
            Ok(Some(Arc::new(tree)))
        }
        (None, Some(p)) => {
            if opts.read_only {
                return Err(Error::ReadOnly);
            }
            let tree = LowerTree::open(p)?;
            let rec = LowerRootRecord {
                path: tree.path.as_os_str().as_bytes().to_vec(),
                dev: tree.dev,
                ino: tree.ino,
            };
            delta.set(TableId::Lower, key::<IntKey>(0), Some(encode(&rec)));
            delta.set(
                TableId::LowerPending,
                key::<IntKey>(InodeNo::ROOT.0),
                Some(encode(&LowerDirRecord { path: Vec::new() })),
            );
            Ok(Some(Arc::new(tree)))
        }
    }
}

fn spawn_committer(inner: Weak<Inner>, every: Duration) -> Result<JoinHandle<()>> {
    Ok(std::thread::Builder::new()
        .name("cowstore-commit".into())
        .spawn(move || loop {
            let Some(me) = inner.upgrade() else { return };
            {
                let (m, cv) = &me.stop;
                let mut stopped = m.lock();
                if *stopped {
                    return;
                }
                cv.wait_for(&mut stopped, every);
                if *stopped {
                    return;
                }
            }
            if let Err(e) = me.commit(false) {
                log::error!("periodic commit failed: {e}");
            }
        })?)
}
