//! The store: opening and creating, the transaction every operation runs in, and the commit
//! protocol (sync the pool, flip the B-tree's commit slot, then release the blocks it freed).

use crate::acl::{self, Cred};
use crate::codec::{decode, encode, InodeRecord, StateRecord};
use crate::data::{require_regular, touch_data, Source, MAX_FILE_SIZE};
use crate::error::{Error, Result};
use crate::io::{DirEnv, Env, FileIo, ScratchFile, SpaceReserve, RESERVE_FILE};
use crate::lower::{LowerFile, LowerHold, LowerTree, IMPORT_BATCH};
use crate::meta::{
    key, Delta, Engine, IntKey, Layers, MemEngine, RedbEngine, Snapshot, TableId, MEM_META_FILE,
};
use crate::ns::{check_flags, new_inode_record, Change, NAME_MAX};
use crate::superblock::{Superblock, SUPERBLOCK_FILE, SUPERBLOCK_LEN};
use crate::tables::{state_delta, Ctx, TxnMem, STATE_KEY};
use crate::types::*;
use parking_lot::{Condvar, Mutex};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

pub const META_FILE: &str = "meta.redb";
/// Mutations per commit while the host is full (see `Inner::write`).
const LOW_SPACE_COMMIT_EVERY: u64 = 64;
/// Uncommitted metadata held in memory before an operation triggers a commit.
const DEFAULT_MAX_DIRTY_BYTES: usize = 64 << 20;
pub const POOL_FILE: &str = "pool";

/// The segments of a read, with the pool blocks they name held against reuse until dropped.
#[derive(Debug)]
pub struct PinnedRead {
    segments: Vec<Segment>,
    lower: Vec<(u64, Arc<LowerFile>)>,
    _pin: crate::tables::Pin,
}

impl PinnedRead {
    /// The open lower file a `Segment::Lower` of this read names.
    pub fn lower_file(&self, id: u64) -> Option<&std::fs::File> {
        self.lower
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, f)| &f.file)
    }
}

impl std::ops::Deref for PinnedRead {
    type Target = [Segment];
    fn deref(&self) -> &[Segment] {
        &self.segments
    }
}

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
    /// of the seam, which the test suite runs the store on as well.
    Mem,
}

impl EngineKind {
    /// The file of the store that holds this engine's metadata.
    pub fn meta_file(self) -> &'static str {
        match self {
            EngineKind::Redb => META_FILE,
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

/// The open transaction: every change since the last durable commit, over a view of it.
pub(crate) struct TxnState {
    /// The last durable commit.
    pub snap: Arc<dyn Snapshot>,
    /// The changes of every operation that succeeded since then (the next commit's batch).
    pub delta: Delta,
    pub mem: TxnMem,
    /// A commit whose batch the engine failed to make durable, but may have written: until we
    /// know whether it landed, nothing may read or change the tables (see `resolve_doubt`).
    pub in_doubt: Option<StateRecord>,
}

impl TxnState {
    /// The layers an operation reads through.
    fn layers<'a>(snap: &'a Arc<dyn Snapshot>, deltas: &'a [&'a Delta]) -> Layers<'a> {
        Layers {
            deltas,
            base: snap.as_ref(),
        }
    }
}

pub(crate) struct Inner {
    pub env: Arc<dyn Env>,
    pub sb: Superblock,
    pub bs: u64,
    pub(crate) engine: Arc<dyn Engine>,
    pub reserve: Option<Arc<SpaceReserve>>,
    pub(crate) lower: Option<Arc<LowerTree>>,
    pub pool: Arc<dyn FileIo>,
    pub state: Mutex<TxnState>,
    commit_lock: Mutex<()>,
    pub read_only: bool,
    pub commits: AtomicU64,
    /// Failed commits so far (the error sequence that fsync reports against).
    failed_commits: AtomicU64,
    max_dirty_bytes: usize,
    closed: AtomicBool,
    stop: (Mutex<bool>, Condvar),
    _lock: Box<dyn Send + Sync + std::fmt::Debug>,
}

/// An open store. All methods take `&self` and may be called from many threads.
pub struct Store {
    inner: Arc<Inner>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.env.path())
            .field("block_size", &self.inner.bs)
            .finish()
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
            next_ino: 2,
            pool_blocks: 0,
            inodes: 1,
            clean: true,
        };
        let mut root =
            new_inode_record(FileKind::Directory, 0o755, Caller::ROOT, 0, InodeNo::ROOT.0);
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
        let pool = env.open(POOL_FILE, false)?;
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
            read_only: opts.read_only,
            commits: AtomicU64::new(0),
            failed_commits: AtomicU64::new(0),
            max_dirty_bytes: opts.max_dirty_bytes.max(1 << 20),
            closed: AtomicBool::new(false),
            stop: (Mutex::new(false), Condvar::new()),
            _lock: guard,
        });
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

    pub fn block_size(&self) -> u32 {
        self.inner.sb.block_size
    }

    pub fn superblock(&self) -> &Superblock {
        &self.inner.sb
    }

    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// The pool file, for callers that move its bytes with splice or copy_file_range.
    pub fn pool(&self) -> Arc<dyn FileIo> {
        self.inner.pool.clone()
    }

    /// Commits made by this process so far.
    pub fn commit_count(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Make every change so far durable (group commit: concurrent callers share one commit).
    ///
    /// A commit that fails leaves every change in memory, to be committed by the next try; the
    /// failure is counted in [`Store::error_seq`], and each later call fails too until a commit
    /// succeeds. Nothing is ever reported durable that is not.
    pub fn commit(&self) -> Result<()> {
        self.inner.commit(false)
    }

    /// How many commits have failed so far. An fsync that sampled a smaller number when its
    /// file was opened (or at its last fsync) must report an error: data written through it
    /// may be lost (the errseq semantics of Linux writeback errors).
    pub fn error_seq(&self) -> u64 {
        self.inner.failed_commits.load(Ordering::SeqCst)
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

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    // ------------------------------------------------------------------ namespace

    pub fn getattr(&self, ino: InodeNo) -> Result<InodeAttr> {
        // A directory's link count is only right once its lower entries are in. A directory
        // that cannot be imported (unreadable below) is still shown, with the link count it has
        // so far: listing its parent stats it, and one unreadable entry must not make the
        // parent unlistable. Looking into it gets the error.
        if let Err(e) = self.import(ino) {
            log::debug!("getattr of {}: lower entries not imported: {e}", ino.0);
        }
        self.inner
            .read(|cx| Ok(self.attr(ino.0, &cx.get_inode(ino.0)?)))
    }

    pub fn lookup(&self, parent: InodeNo, name: &[u8]) -> Result<InodeAttr> {
        self.import(parent)?;
        self.inner.read(|cx| {
            let ino = cx.lookup(parent.0, name)?;
            Ok(self.attr(ino, &cx.get_inode(ino)?))
        })
    }

    pub fn create(
        &self,
        parent: InodeNo,
        name: &[u8],
        new: &NewInode,
        caller: Caller,
    ) -> Result<InodeAttr> {
        self.import(parent)?;
        self.inner.write(|cx| {
            let (ino, rec) = cx.create(parent.0, name, new, caller, 0)?;
            Ok(self.attr(ino, &rec))
        })
    }

    /// Create as FUSE asks (create, mknod, mkdir): `new.perm` is the mode before the caller's
    /// `umask`, which applies unless `parent` has a default ACL, inherited instead, as on ext4.
    /// `open`: count the new inode open (FUSE create).
    pub fn create_unmasked(
        &self,
        parent: InodeNo,
        name: &[u8],
        new: &NewInode,
        caller: Caller,
        umask: u32,
        open: bool,
    ) -> Result<InodeAttr> {
        self.inner.write(|cx| {
            let umask = (umask & 0o777) as u16;
            let (ino, rec) = cx.create(parent.0, name, new, caller, umask)?;
            if open {
                *cx.mem.open_counts.entry(ino).or_insert(0) += 1;
            }
            Ok(self.attr(ino, &rec))
        })
    }

    /// Create a regular file and count it open (for FUSE `create`).
    pub fn create_open(
        &self,
        parent: InodeNo,
        name: &[u8],
        perm: u32,
        caller: Caller,
    ) -> Result<InodeAttr> {
        self.import(parent)?;
        self.inner.write(|cx| {
            let new = NewInode {
                kind: FileKind::Regular,
                perm,
                rdev: 0,
                symlink_target: None,
            };
            let (ino, rec) = cx.create(parent.0, name, &new, caller, 0)?;
            *cx.mem.open_counts.entry(ino).or_insert(0) += 1;
            Ok(self.attr(ino, &rec))
        })
    }

    pub fn mkdir(
        &self,
        parent: InodeNo,
        name: &[u8],
        perm: u32,
        caller: Caller,
    ) -> Result<InodeAttr> {
        self.create(
            parent,
            name,
            &NewInode {
                kind: FileKind::Directory,
                perm,
                rdev: 0,
                symlink_target: None,
            },
            caller,
        )
    }

    pub fn symlink(
        &self,
        parent: InodeNo,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<InodeAttr> {
        let new = NewInode {
            kind: FileKind::Symlink,
            perm: 0o777,
            rdev: 0,
            symlink_target: Some(target.to_vec()),
        };
        self.create(parent, name, &new, caller)
    }

    pub fn readlink(&self, ino: InodeNo) -> Result<Vec<u8>> {
        self.inner.read(|cx| {
            let rec = cx.get_inode(ino.0)?;
            if rec.kind != FileKind::Symlink {
                return Err(Error::Invalid("not a symlink"));
            }
            Ok(rec.target)
        })
    }

    pub fn link(&self, ino: InodeNo, newparent: InodeNo, newname: &[u8]) -> Result<InodeAttr> {
        self.import(newparent)?;
        self.inner.write(|cx| {
            let rec = cx.link(ino.0, newparent.0, newname)?;
            Ok(self.attr(ino.0, &rec))
        })
    }

    pub fn unlink(&self, parent: InodeNo, name: &[u8]) -> Result<()> {
        self.import(parent)?;
        self.inner.write(|cx| cx.unlink(parent.0, name))
    }

    pub fn rmdir(&self, parent: InodeNo, name: &[u8]) -> Result<()> {
        self.import(parent)?;
        self.import_child(parent, name)?;
        self.inner.write(|cx| cx.rmdir(parent.0, name))
    }

    pub fn rename(
        &self,
        parent: InodeNo,
        name: &[u8],
        newparent: InodeNo,
        newname: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.import(parent)?;
        self.import(newparent)?;
        self.import_child(newparent, newname)?;
        self.inner
            .write(|cx| cx.rename(parent.0, name, newparent.0, newname, flags, None))
    }

    /// `renameat2(RENAME_WHITEOUT)`: rename, and leave a whiteout (a character device 0:0,
    /// mode 0, owned by `owner`) under the source name, in one atomic operation.
    pub fn rename_whiteout(
        &self,
        parent: InodeNo,
        name: &[u8],
        newparent: InodeNo,
        newname: &[u8],
        flags: RenameFlags,
        owner: Caller,
    ) -> Result<()> {
        self.inner
            .write(|cx| cx.rename(parent.0, name, newparent.0, newname, flags, Some(owner)))
    }

    /// Up to `limit` entries after cookie `offset` (0 = from the start, with "." and ".."),
    /// whenever they were added.
    pub fn readdir(&self, dir: InodeNo, offset: u64, limit: usize) -> Result<Vec<DirEntry>> {
        self.readdir_until(dir, offset, u64::MAX, limit)
    }

    /// Up to `limit` entries after cookie `offset` and before cookie `end`: the listing of a
    /// directory stream that began (opendir or rewind) when [`Store::dir_end`] said `end`.
    /// Entries created or renamed into the directory since then have cookies at or past `end`,
    /// so the stream never returns an entry twice, however the directory changes under it.
    pub fn readdir_until(
        &self,
        dir: InodeNo,
        offset: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<DirEntry>> {
        self.import(dir)?;
        self.inner.read(|cx| cx.readdir(dir.0, offset, end, limit))
    }

    /// Where a directory stream that begins now ends: the cookie the directory's next entry
    /// will get.
    pub fn dir_end(&self, dir: InodeNo) -> Result<u64> {
        self.import(dir)?;
        self.inner.read(|cx| Ok(cx.get_dir(dir.0)?.next_cookie))
    }

    /// Open a directory stream: the directory is counted open like a file (removed while open,
    /// it stays an orphan answering getattr until [`Store::releasedir`]); returns where the
    /// stream ends (see [`Store::readdir_until`]) and the directory's attributes.
    pub fn opendir(&self, dir: InodeNo) -> Result<(u64, InodeAttr)> {
        self.import(dir)?;
        self.inner.write_unchecked(|cx| {
            let rec = cx.get_dir(dir.0)?;
            *cx.mem.open_counts.entry(dir.0).or_insert(0) += 1;
            Ok((rec.next_cookie, self.attr(dir.0, &rec)))
        })
    }

    /// Close a directory stream; the last close of a removed directory frees it.
    pub fn releasedir(&self, dir: InodeNo) -> Result<()> {
        self.release(dir)
    }

    /// Record an access (a read, a listing) under `policy`: the access time becomes now when
    /// the policy and the inode's `noatime` flag say so. The change rides the next commit;
    /// nothing is committed here, and a read-only store records nothing.
    pub fn touch_atime(&self, ino: InodeNo, policy: AtimePolicy) -> Result<()> {
        if self.inner.read_only || policy.mode == AtimeMode::Never {
            return Ok(());
        }
        let now = Timespec::now();
        let due = |rec: &InodeRecord| {
            policy.due_for(
                rec.kind,
                InodeFlags(rec.flags),
                rec.atime,
                rec.mtime,
                rec.ctime,
                now,
            )
        };
        // Most accesses change nothing (relatime): find out under the shared path first.
        if !self.inner.read(|cx| Ok(due(&cx.get_inode(ino.0)?)))? {
            return Ok(());
        }
        self.inner.write(|cx| {
            let mut rec = cx.get_inode(ino.0)?;
            if due(&rec) {
                rec.atime = now;
                cx.put_inode(ino.0, &rec)?;
            }
            Ok(())
        })
    }

    /// FS_IOC_SETFLAGS by `caller` (see [`InodeFlags`] for what each flag forbids).
    pub fn set_flags(&self, ino: InodeNo, flags: InodeFlags, caller: Caller) -> Result<InodeAttr> {
        self.inner.write(|cx| {
            let rec = cx.set_flags(ino.0, flags, caller)?;
            Ok(self.attr(ino.0, &rec))
        })
    }

    /// Overlay: import a directory's lower entries before it is first looked into.
    ///
    /// The lower directory is listed and its entries examined with no store lock held (a lower
    /// filesystem may be slow, or hung); the entries are imported in batches of
    /// [`IMPORT_BATCH`], each its own store operation, so memory and the open transaction stay
    /// bounded and other operations run between batches. A batch imports only names the
    /// directory does not have yet: nothing but an import changes a directory that is still
    /// pending (every other operation imports it first), so those are exactly the names earlier
    /// batches (or an earlier, failed or interrupted import) brought in, and an import that
    /// stopped halfway — an error, a crash — resumes where it stopped. The last batch marks the
    /// directory imported.
    fn import(&self, dir: InodeNo) -> Result<()> {
        let Some(tree) = self.inner.lower.as_deref() else {
            return Ok(());
        };
        let Some(rel) = self.inner.read(|cx| cx.import_pending(dir.0))? else {
            return Ok(());
        };
        let ldir = tree.dir(&rel)?;
        let names = ldir.names()?;
        let batches = names.len().div_ceil(IMPORT_BATCH).max(1);
        for (i, chunk) in (0..batches).map(|i| {
            let end = names.len().min((i + 1) * IMPORT_BATCH);
            (i, &names[(i * IMPORT_BATCH).min(end)..end])
        }) {
            let todo = self.inner.read(|cx| match cx.import_pending(dir.0)? {
                Some(_) => cx.not_imported(dir.0, chunk).map(Some),
                None => Ok(None),
            })?;
            // None: another thread finished the import meanwhile.
            let Some(todo) = todo else { return Ok(()) };
            let last = i + 1 == batches;
            if todo.is_empty() && !last {
                continue;
            }
            let entries = ldir.entries(i, &todo)?;
            let apply = |cx: &mut Ctx<'_>| cx.import_entries(dir.0, &entries, last);
            if self.inner.read_only {
                // A read-only open imports into its scratch transaction, never into the store.
                self.inner.write_unchecked(apply)?;
            } else {
                self.inner.write(apply)?;
            }
        }
        Ok(())
    }

    /// Overlay: import entry `name` of `parent` if it is a directory still pending (before an
    /// operation that needs to know whether it is empty).
    fn import_child(&self, parent: InodeNo, name: &[u8]) -> Result<()> {
        if self.inner.lower.is_none() {
            return Ok(());
        }
        let child = self.inner.read(|cx| {
            Ok(cx
                .get_dirent(parent.0, name)?
                .filter(|d| d.kind == FileKind::Directory)
                .map(|d| d.ino))
        })?;
        match child {
            Some(c) => self.import(InodeNo(c)),
            None => Ok(()),
        }
    }

    /// Overlay: open and verify, before the operation takes the store lock, the lower files
    /// that blocks `ranges` (first block, count) of `ino` map, and hold them for it: a write's
    /// copy-up then finds them open (see docs/design.md §4.1 for the lower I/O that remains
    /// under the lock).
    fn hold_lower(&self, ino: InodeNo, ranges: &[(u64, u64)]) -> Result<Option<LowerHold>> {
        let Some(tree) = self.inner.lower.as_ref() else {
            return Ok(None);
        };
        let files = self.inner.read(|cx| {
            let mut v: Vec<(u64, crate::codec::LowerFileRecord)> = Vec::new();
            for &(fb, n) in ranges {
                for f in cx.lower_files_in(ino.0, fb, n)? {
                    if !v.iter().any(|(id, _)| *id == f.0) {
                        v.push(f);
                    }
                }
            }
            Ok(v)
        })?;
        if files.is_empty() {
            return Ok(None);
        }
        tree.hold(&files).map(Some)
    }

    /// The first and the last block of bytes `[off, off+len)`: where a write carries old bytes
    /// over into a new block.
    fn edge_blocks(&self, off: u64, len: u64) -> [(u64, u64); 2] {
        let bs = self.inner.bs;
        let last = off.saturating_add(len.max(1) - 1) / bs;
        [(off / bs, 1), (last, 1)]
    }

    /// The overlay's lower directory, if the store has one.
    pub fn lower_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.lower.as_ref().map(|l| l.path.clone())
    }

    /// Overlay: lower files that changed since they were imported (path, what changed). The
    /// records are read a batch at a time and the lower files examined with no lock held.
    pub fn lower_changes(&self) -> Result<Vec<(String, String)>> {
        let Some(tree) = self.inner.lower.clone() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut from = 0u64;
        loop {
            let batch = self.inner.read(|cx| {
                let mut v = Vec::new();
                for item in cx.lower_files.range(from..)? {
                    let (k, val) = item?;
                    v.push((k, decode::<crate::codec::LowerFileRecord>(&val, &k)?));
                    if v.len() >= IMPORT_BATCH {
                        break;
                    }
                }
                Ok(v)
            })?;
            for (_, rec) in &batch {
                if let Some(what) = tree.changed(rec) {
                    out.push((String::from_utf8_lossy(&rec.path).into_owned(), what));
                }
            }
            match batch.last() {
                Some(&(last, _)) if batch.len() >= IMPORT_BATCH && last < u64::MAX => {
                    from = last + 1
                }
                _ => return Ok(out),
            }
        }
    }

    /// Count an open handle of a file opened for writing (`write`) and with `O_APPEND`
    /// (`append`): refused with EPERM for writing to an immutable file, or to an append-only
    /// one without `O_APPEND`.
    pub fn open_file(&self, ino: InodeNo, write: bool, append: bool) -> Result<InodeAttr> {
        if write {
            self.inner
                .read(|cx| check_flags(&cx.get_inode(ino.0)?, Change::Write { at_eof: append }))?;
        }
        self.open_inode(ino)
    }

    /// Count an open handle: an inode unlinked while open lives until its last `release`.
    pub fn open_inode(&self, ino: InodeNo) -> Result<InodeAttr> {
        self.inner.write_unchecked(|cx| {
            let rec = cx.get_inode(ino.0)?;
            *cx.mem.open_counts.entry(ino.0).or_insert(0) += 1;
            Ok(self.attr(ino.0, &rec))
        })
    }

    /// Drop an open handle; the last one of an unlinked inode frees it.
    pub fn release(&self, ino: InodeNo) -> Result<()> {
        let reclaim = {
            let mut st = self.inner.state.lock();
            let n = st.mem.open_counts.entry(ino.0).or_insert(0);
            *n = n.saturating_sub(1);
            let last = *n == 0;
            if last {
                st.mem.open_counts.remove(&ino.0);
            }
            last
        };
        if reclaim && !self.inner.read_only {
            self.inner.write(|cx| match cx.try_inode(ino.0)? {
                Some(mut rec) if rec.nlink == 0 => cx.destroy_inode(ino.0, &mut rec),
                _ => Ok(()),
            })?;
        }
        Ok(())
    }

    pub fn setattr(&self, ino: InodeNo, set: &SetAttr) -> Result<InodeAttr> {
        let _lower = match set.size {
            Some(size) => self.hold_lower(ino, &self.edge_blocks(size, 1))?,
            None => None,
        };
        self.inner.write(|cx| {
            let mut rec = cx.get_inode(ino.0)?;
            check_flags(&rec, setattr_change(set))?;
            let now = Timespec::now();
            if let Some(size) = set.size {
                require_regular(&rec)?;
                if size != rec.size {
                    cx.truncate(ino.0, &mut rec, size)?;
                }
                rec.mtime = now;
            }
            if let Some(mode) = set.mode {
                rec.perm = (mode & 0o7777) as u16;
                cx.chmod_acl(ino.0, rec.perm)?;
            }
            if let Some(uid) = set.uid {
                rec.uid = uid;
            }
            if let Some(gid) = set.gid {
                rec.gid = gid;
            }
            let pick = |t: TimeSet| match t {
                TimeSet::Now => now,
                TimeSet::At(t) => t,
            };
            if let Some(t) = set.atime {
                rec.atime = pick(t);
            }
            if let Some(t) = set.mtime {
                rec.mtime = pick(t);
            }
            rec.ctime = set.ctime.unwrap_or(now);
            cx.put_inode(ino.0, &rec)?;
            Ok(self.attr(ino.0, &rec))
        })
    }

    // ------------------------------------------------------------------ data

    /// Where the bytes `[off, off+len)` of a file are (clipped at its end).
    /// The result pins the pool blocks: keep it until the bytes have been copied out.
    ///
    /// The segments are resolved under the store lock; lower files they name are opened and
    /// verified after it is released (a lower filesystem may be slow or hung; the pin keeps the
    /// pool blocks meanwhile).
    pub fn read(&self, ino: InodeNo, off: u64, len: u64) -> Result<PinnedRead> {
        let (segments, files, pin) = self.inner.read(|cx| {
            let rec = cx.get_inode(ino.0)?;
            require_regular(&rec)?;
            let segments = cx.read_segments(ino.0, &rec, off, len)?;
            let mut files: Vec<(u64, crate::codec::LowerFileRecord)> = Vec::new();
            for s in &segments {
                if let Segment::Lower { file, .. } = *s {
                    if !files.iter().any(|(id, _)| *id == file) {
                        files.push((file, cx.lower_file_record(file)?));
                    }
                }
            }
            let bs = cx.bs;
            let runs = segments
                .iter()
                .filter_map(|s| match *s {
                    Segment::Pool { pos, len } => {
                        Some((pos / bs, (pos + len).div_ceil(bs) - pos / bs))
                    }
                    _ => None,
                })
                .collect();
            Ok((segments, files, cx.mem.pins.pin(runs)))
        })?;
        let mut lower = Vec::with_capacity(files.len());
        if !files.is_empty() {
            let tree = self.inner.lower.as_ref().ok_or_else(|| {
                Error::corrupt("a file maps lower data, but the store has no lower directory")
            })?;
            for (id, rec) in files {
                lower.push((id, tree.file(id, &rec)?));
            }
        }
        Ok(PinnedRead {
            segments,
            lower,
            _pin: pin,
        })
    }

    /// Read into a buffer (tests and tools; the mount splices segments instead).
    pub fn read_to_vec(&self, ino: InodeNo, off: u64, len: u64) -> Result<Vec<u8>> {
        let segs = self.read(ino, off, len)?;
        let total: u64 = segs.iter().map(|s| s.len()).sum();
        let mut out = vec![0u8; total as usize];
        let mut at = 0usize;
        for s in segs.iter() {
            let n = s.len() as usize;
            match *s {
                Segment::Pool { pos, .. } => self.inner.pool.read_at(&mut out[at..at + n], pos)?,
                Segment::Lower { file, pos, .. } => {
                    use std::os::unix::fs::FileExt;
                    let f = segs
                        .lower_file(file)
                        .ok_or_else(|| Error::corrupt("lower file not pinned"))?;
                    f.read_exact_at(&mut out[at..at + n], pos)?;
                }
                Segment::Hole { .. } => {}
            }
            at += n;
        }
        Ok(out)
    }

    /// Write `data` at `off` as root (tools and tests); returns the bytes written.
    pub fn write(&self, ino: InodeNo, off: u64, data: &[u8]) -> Result<usize> {
        self.write_as(ino, off, data, &Caller::ROOT).map(|(n, _)| n)
    }

    /// Write `data` at `off` as `cred`; returns the bytes written, and whether setuid/setgid
    /// bits were dropped (see [`acl::modified_perm`]; the kernel drops setuid and
    /// group-executable setgid itself before the write, but not the setgid bit of a file the
    /// writer's groups do not include).
    pub fn write_as(
        &self,
        ino: InodeNo,
        off: u64,
        data: &[u8],
        cred: &dyn Cred,
    ) -> Result<(usize, bool)> {
        let _lower = self.hold_lower(ino, &self.edge_blocks(off, data.len() as u64))?;
        self.inner.write(|cx| {
            let mut rec = cx.get_inode(ino.0)?;
            require_regular(&rec)?;
            check_flags(
                &rec,
                Change::Write {
                    at_eof: off == rec.size,
                },
            )?;
            cx.write_data(
                ino.0,
                &mut rec,
                off,
                data.len() as u64,
                &Source::Bytes(data),
            )?;
            touch_data(&mut rec);
            let dropped = drop_privs(&mut rec, cred);
            cx.put_inode(ino.0, &rec)?;
            Ok((data.len(), dropped))
        })
    }

    /// fallocate(2) by root (tools and tests).
    pub fn fallocate(&self, ino: InodeNo, off: u64, len: u64, mode: FallocMode) -> Result<()> {
        self.fallocate_as(ino, off, len, mode, &Caller::ROOT)
            .map(|_| ())
    }

    /// fallocate(2) by `cred`; like a write, it drops the setuid and setgid bits an
    /// unprivileged modifier may not keep, and says whether it did.
    pub fn fallocate_as(
        &self,
        ino: InodeNo,
        off: u64,
        len: u64,
        mode: FallocMode,
        cred: &dyn Cred,
    ) -> Result<bool> {
        if len == 0 {
            return Err(Error::Invalid("zero length"));
        }
        let end = off
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::FileTooBig)?;
        let _lower = self.hold_lower(ino, &self.edge_blocks(off, len))?;
        self.inner.write(|cx| {
            let mut rec = cx.get_inode(ino.0)?;
            require_regular(&rec)?;
            let change = match mode {
                // Allocating changes no data, and an append-only file may grow (vfs_fallocate).
                FallocMode::Allocate { .. } => Change::Write { at_eof: true },
                FallocMode::PunchHole | FallocMode::ZeroRange { .. } => Change::Resize,
            };
            check_flags(&rec, change)?;
            let keep = match mode {
                FallocMode::Allocate { keep_size } => {
                    // Extents never reach past the block holding EOF (check() holds us to it), so
                    // KEEP_SIZE preallocates only up to there: a CoW store could not keep the
                    // promise of ENOSPC-free writes into committed blocks anyway.
                    let alloc_end = if keep_size {
                        end.min(rec.size.div_ceil(self.inner.bs) * self.inner.bs)
                    } else {
                        end
                    };
                    if off < alloc_end {
                        cx.allocate(ino.0, &mut rec, off, alloc_end - off)?;
                    }
                    keep_size
                }
                FallocMode::PunchHole => {
                    cx.punch_hole(ino.0, &mut rec, off, len)?;
                    true
                }
                FallocMode::ZeroRange { keep_size } => {
                    cx.punch_hole(ino.0, &mut rec, off, len)?;
                    keep_size
                }
            };
            if !keep && end > rec.size {
                rec.size = end;
            }
            if !matches!(mode, FallocMode::Allocate { .. }) {
                touch_data(&mut rec);
            } else {
                rec.ctime = Timespec::now();
            }
            let dropped = drop_privs(&mut rec, cred);
            cx.put_inode(ino.0, &rec)?;
            Ok(dropped)
        })
    }

    pub fn seek(&self, ino: InodeNo, off: u64, whence: SeekWhence) -> Result<u64> {
        self.inner.read(|cx| {
            let rec = cx.get_inode(ino.0)?;
            require_regular(&rec)?;
            cx.seek(ino.0, &rec, off, whence)
        })
    }

    /// The reflink: `dst[dst_off..]` gets `src[src_off..src_off+len]`, sharing blocks where they
    /// line up. Returns the bytes cloned (fewer at the source's end; 0 past it).
    pub fn clone_range(
        &self,
        src: InodeNo,
        src_off: u64,
        dst: InodeNo,
        dst_off: u64,
        len: u64,
    ) -> Result<u64> {
        // Where source and destination blocks do not line up the whole range is copied.
        let bs = self.inner.bs;
        let src_blocks = (src_off / bs, len.div_ceil(bs).saturating_add(1));
        let _src_lower = self.hold_lower(src, &[src_blocks])?;
        let _dst_lower = self.hold_lower(dst, &self.edge_blocks(dst_off, len))?;
        self.inner.write(|cx| {
            let src_rec = cx.get_inode(src.0)?;
            require_regular(&src_rec)?;
            let mut dst_rec = if src == dst {
                src_rec.clone()
            } else {
                cx.get_inode(dst.0)?
            };
            require_regular(&dst_rec)?;
            check_flags(
                &dst_rec,
                Change::Write {
                    at_eof: dst_off == dst_rec.size,
                },
            )?;
            let n = cx.clone_range(
                (src.0, &src_rec, src_off),
                (dst.0, &mut dst_rec, dst_off),
                len,
            )?;
            if n > 0 {
                touch_data(&mut dst_rec);
                cx.put_inode(dst.0, &dst_rec)?;
            }
            Ok(n)
        })
    }

    // ------------------------------------------------------------------ xattrs

    pub fn getxattr(&self, ino: InodeNo, name: &[u8]) -> Result<Vec<u8>> {
        self.inner.read(|cx| cx.get_xattr(ino.0, name))
    }

    /// setxattr(2) by root (tools and tests). `flags`: `XATTR_CREATE` / `XATTR_REPLACE`.
    pub fn setxattr(&self, ino: InodeNo, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        self.setxattr_as(ino, name, value, flags, &Caller::ROOT)
    }

    /// setxattr(2) by `cred`, which matters when it sets an access ACL (see `Ctx::set_xattr`).
    pub fn setxattr_as(
        &self,
        ino: InodeNo,
        name: &[u8],
        value: &[u8],
        flags: i32,
        cred: &dyn Cred,
    ) -> Result<()> {
        self.inner
            .write(|cx| cx.set_xattr(ino.0, name, value, flags, cred))
    }

    /// listxattr(2) by root: every name.
    pub fn listxattr(&self, ino: InodeNo) -> Result<Vec<Vec<u8>>> {
        self.listxattr_as(ino, &Caller::ROOT)
    }

    /// listxattr(2) by `cred`: trusted.* names only for CAP_SYS_ADMIN.
    pub fn listxattr_as(&self, ino: InodeNo, cred: &dyn Cred) -> Result<Vec<Vec<u8>>> {
        self.inner.read(|cx| {
            cx.get_inode(ino.0)?;
            let mut names = cx.xattr_names(ino.0)?;
            names.retain(|n| acl::listed(n, cred));
            Ok(names)
        })
    }

    pub fn removexattr(&self, ino: InodeNo, name: &[u8]) -> Result<()> {
        self.inner.write(|cx| cx.remove_xattr(ino.0, name))
    }

    // ------------------------------------------------------------------ space

    /// Space as `df` shows it. The store grows inside its host filesystem, so its size and free
    /// space are the host's: free pool runs are punched out and already count as free there; only
    /// blocks freed by the open transaction (released at the next commit) are added.
    pub fn statfs(&self) -> Result<StatFs> {
        let (pool_blocks, pending, inodes) = self.inner.read(|cx| {
            Ok((
                cx.mem.state.pool_blocks,
                cx.mem.pending_free().total(),
                cx.mem.state.inodes,
            ))
        })?;
        let bs = self.inner.bs;
        let (total, avail) = match self.inner.pool.host_space() {
            Ok(Some((total, avail))) => (total / bs, (avail / bs + pending).min(total / bs)),
            // No host filesystem (an in-memory store): report the pool with room to grow.
            _ => (pool_blocks * 2 + (1 << 20), pool_blocks + (1 << 20)),
        };
        Ok(StatFs {
            block_size: bs as u32,
            total_blocks: total,
            free_blocks: avail,
            avail_blocks: avail,
            files: inodes + (1 << 32),
            free_files: 1 << 32,
            name_max: NAME_MAX as u32,
        })
    }

    /// Fill in the attributes of an inode record.
    fn attr(&self, ino: u64, rec: &InodeRecord) -> InodeAttr {
        InodeAttr {
            ino: InodeNo(ino),
            kind: rec.kind,
            perm: rec.perm,
            uid: rec.uid,
            gid: rec.gid,
            nlink: rec.nlink,
            size: rec.size,
            allocated: rec.blocks * self.inner.bs,
            atime: rec.atime,
            mtime: rec.mtime,
            ctime: rec.ctime,
            crtime: rec.crtime,
            rdev: rec.rdev,
            // The root is never deleted, so its handles never go stale: generation 0, what the
            // kernel (FUSE, NFS export) expects of a root.
            generation: if ino == InodeNo::ROOT.0 {
                0
            } else {
                rec.generation
            },
            block_size: self.inner.sb.block_size,
            flags: InodeFlags(rec.flags),
        }
    }
}

/// What a setattr does, for the `chattr` flags: a size change drops data; mode, owner and
/// explicit times are attributes; times set to now only touch (allowed on append-only files).
fn setattr_change(set: &SetAttr) -> Change {
    let explicit = |t: Option<TimeSet>| matches!(t, Some(TimeSet::At(_)));
    if set.size.is_some() {
        Change::Resize
    } else if set.mode.is_some()
        || set.uid.is_some()
        || set.gid.is_some()
        || explicit(set.atime)
        || explicit(set.mtime)
    {
        Change::Attrs
    } else {
        Change::TouchTimes
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
    /// Run a read-only closure against the open transaction (it sees uncommitted changes).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Ctx<'_>) -> Result<T>) -> Result<T> {
        let mut st = self.state.lock();
        self.resolve_doubt(&mut st)?;
        let TxnState {
            snap, delta, mem, ..
        } = &mut *st;
        let deltas = [&*delta];
        let mut cx = Ctx::open(
            TxnState::layers(snap, &deltas),
            mem,
            self.pool.as_ref(),
            self.bs,
        );
        cx.lower = self.lower.as_deref();
        let cx = cx;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&cx)))
            .unwrap_or_else(|p| Err(panic_error(p)))
    }

    /// Run a mutation as one atomic operation inside the open transaction: if it succeeds its
    /// changes join the transaction; if it fails (with any error, at any point) they are dropped
    /// and its changes to the in-memory allocation state are undone, so it leaves no trace and
    /// every other operation's changes stay as they were.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut Ctx<'_>) -> Result<T>) -> Result<T> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.write_unchecked(f)
    }

    /// `write` without the read-only check: for read-only opens, whose changes are never
    /// committed (the overlay import of `Store::import`, open counts).
    pub(crate) fn write_unchecked<T>(
        &self,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut st = self.state.lock();
        self.resolve_doubt(&mut st)?;
        let TxnState {
            snap, delta, mem, ..
        } = &mut *st;
        let mark = mem.begin_op();
        let (result, changes) = {
            let deltas = [&*delta];
            let mut cx = Ctx::open(
                TxnState::layers(snap, &deltas),
                mem,
                self.pool.as_ref(),
                self.bs,
            );
            cx.lower = self.lower.as_deref();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut cx)))
                .unwrap_or_else(|p| Err(panic_error(p)));
            (r, cx.into_delta())
        };
        match &result {
            Ok(_) => {
                delta.absorb(changes);
                for (s, l) in mem.end_op() {
                    // Only to give the host its space back: nothing reads free blocks (allocation
                    // zeroes or overwrites what it hands out), so a failed punch fails nothing.
                    if let Err(e) = self.pool.punch(s * self.bs, l * self.bs) {
                        log::warn!("punching freed pool blocks {s}..{}: {e}", s + l);
                    }
                }
            }
            Err(e) => {
                mem.undo_op(mark);
                if e.is_fault() {
                    log::warn!("operation failed and left no change: {e}");
                }
            }
        }
        // On a full host, commit in small steps: a big transaction of deletions needs new B-tree
        // pages for everything it touches before the commit frees the old ones. And keep the
        // uncommitted changes held in memory bounded.
        mem.ops_since_commit += 1;
        let commit_now = (mem.low_space && mem.ops_since_commit >= LOW_SPACE_COMMIT_EVERY)
            || delta.bytes() > self.max_dirty_bytes;
        drop(st);
        if commit_now && !self.read_only {
            if let Err(e) = self.commit(false) {
                log::warn!("commit of a full transaction failed: {e}");
            }
        }
        result
    }

    /// This store's registry of blocks being punched (tests hold blocks in it).
    #[cfg(test)]
    pub(crate) fn state_punching(&self) -> Arc<crate::alloc::PunchRegistry> {
        self.state.lock().mem.punching.clone()
    }

    /// Run a read-only closure against the last committed state alone (no uncommitted change is
    /// visible), through the same typed tables as every operation: what fsck and live tools
    /// read. Takes no store lock beyond getting the snapshot.
    pub(crate) fn read_committed<T>(&self, f: impl FnOnce(&Ctx<'_>) -> Result<T>) -> Result<T> {
        let snap = self.engine.snapshot()?;
        let state = match snap.get(TableId::State, &key::<IntKey>(STATE_KEY))? {
            Some(v) => decode::<StateRecord>(&v, &STATE_KEY)?,
            None => return Err(Error::corrupt("meta.redb: state record missing")),
        };
        let mut mem = TxnMem::new(state);
        let mut cx = Ctx::open(
            TxnState::layers(&snap, &[]),
            &mut mem,
            self.pool.as_ref(),
            self.bs,
        );
        cx.lower = self.lower.as_deref();
        let cx = cx;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&cx)))
            .unwrap_or_else(|p| Err(panic_error(p)))
    }

    /// After the engine failed a commit, learn whether the batch landed anyway (redb, say,
    /// failing the sync after writing its commit slot), from a fresh view of the engine:
    /// - it did not: the next commit sends the same changes again (nothing was lost);
    /// - it did: that state is the base from now on; its frees are held back from allocation and
    ///   its fresh blocks are no longer rewritten in place, until a later commit makes it durable
    ///   for sure (a crash before then may still find the previous commit).
    ///
    /// Until this succeeds every operation fails with the engine's error: operations computed
    /// over the wrong base would not apply cleanly to the right one.
    fn resolve_doubt(&self, st: &mut TxnState) -> Result<()> {
        let Some(attempted) = st.in_doubt else {
            return Ok(());
        };
        let fresh = self.engine.snapshot()?;
        let found = match fresh.get(TableId::State, &key::<IntKey>(STATE_KEY))? {
            Some(v) => decode::<StateRecord>(&v, &STATE_KEY)?,
            None => return Err(Error::corrupt("meta.redb: state record missing")),
        };
        if found.generation == attempted.generation {
            log::warn!(
                "the failed commit of generation {} reached the B-tree; continuing from it",
                attempted.generation
            );
            st.delta = Delta::default();
            st.mem.state = attempted;
            st.mem.landed_in_doubt();
        }
        st.snap = fresh;
        st.in_doubt = None;
        Ok(())
    }

    /// The commit protocol: (1) make pool data durable, (2) commit the metadata batch (for redb,
    /// its commit-slot flip is the atomic point), (3) return the blocks this commit freed to the
    /// allocator.
    ///
    /// A failure at (1) or (2) leaves the store at the previous commit and keeps every change in
    /// memory for the next try; it is counted (`failed_commits`) and returned. The pool's sync is
    /// never retried within a commit: after a failed fdatasync the kernel may have dropped the
    /// dirty pages and would report success to a second call.
    pub(crate) fn commit(&self, closing: bool) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let _one_at_a_time = self.commit_lock.lock();
        let mut st = self.state.lock();
        if !st.mem.dirty && !closing {
            return Ok(());
        }
        self.resolve_doubt(&mut st)?;
        let TxnState {
            snap, delta, mem, ..
        } = &mut *st;
        // Freed blocks join the free table with this commit; those an active read is still
        // copying from are held back from allocation until a later commit finds them unread
        // (never waiting for the read under the lock). See `TxnMem::committed`.
        let releasable: Vec<(u64, u64)> = mem.pending_free().iter().collect();
        let mut next = mem.state;
        next.generation += 1;
        next.clean = closing;
        let frees = {
            let deltas = [&*delta];
            let mut cx = Ctx::open(
                TxnState::layers(snap, &deltas),
                mem,
                self.pool.as_ref(),
                self.bs,
            );
            let mut r = Ok(());
            for &(s, l) in &releasable {
                r = cx.insert_free(s, l);
                if r.is_err() {
                    break;
                }
            }
            let changes = cx.into_delta();
            r.map(|()| changes)
        };
        let mut engine_failed = false;
        let done = frees.and_then(|mut frees| {
            frees.absorb(state_delta(&next));
            self.pool.sync().map_err(Error::from_io)?;
            engine_failed = true;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.engine.commit(&[&*delta, &frees])
            }))
            .unwrap_or_else(|p| Err(panic_error(p)))?;
            Ok(frees)
        });
        let frees = match done {
            Ok(f) => f,
            Err(e) => {
                self.failed_commits.fetch_add(1, Ordering::SeqCst);
                log::error!("commit failed; every change stays in memory for the next try: {e}");
                if engine_failed {
                    // The batch may have reached the disk before the error: find out before
                    // anything reads or changes the tables again.
                    st.in_doubt = Some(next);
                    if let Err(e2) = self.resolve_doubt(&mut st) {
                        log::error!("the outcome of the failed commit is not known yet: {e2}");
                    }
                }
                return Err(e);
            }
        };
        let TxnState {
            snap, delta, mem, ..
        } = &mut *st;
        self.commits.fetch_add(1, Ordering::Relaxed);
        mem.state = next;
        match self.engine.snapshot() {
            Ok(fresh) => {
                *snap = fresh;
                *delta = Delta::default();
            }
            Err(e) => {
                // Durable, but no view of it yet: keep reading the old view with the committed
                // changes over it (the same state); the next commit writes them again.
                log::warn!("cannot read the new commit yet: {e}");
                delta.absorb(frees);
            }
        }
        let done_runs = mem.committed();
        mem.dirty = !mem.held().is_empty();
        mem.ops_since_commit = 0;
        // The released blocks are in the free table now. Punch them after letting go of the
        // state lock (a punch can cost tens of microseconds of synchronous discard, and there
        // may be thousands), but registered as being punched first: the allocator skips them
        // until the punch is done, so no write can lose its bytes to a late punch.
        let punching = mem.punching.start(&done_runs);
        drop(st);
        for &(s, l) in punching.runs() {
            if let Err(e) = self.pool.punch(s * self.bs, l * self.bs) {
                log::warn!("punching freed pool blocks {s}..{}: {e}", s + l);
            }
        }
        drop(punching);
        // Space may have come back: take the metadata reserve again.
        let mut st = self.state.lock();
        if let Some(r) = &self.reserve {
            if !r.is_held() && r.fill() {
                log::info!("host space available again: metadata reserve restored");
            }
        }
        st.mem.low_space = self.reserve.as_ref().is_some_and(|r| !r.is_held());
        Ok(())
    }

    /// After open: reclaim orphans (inodes unlinked while open when the last process stopped);
    /// after an unclean stop also give the host back space of blocks freed by the last commits.
    fn recover(&self, unclean: bool) -> Result<()> {
        let orphans: Vec<u64> = self.read(|cx| {
            let mut v = Vec::new();
            for item in cx.orphans.iter()? {
                v.push(item?.0);
            }
            Ok(v)
        })?;
        if !orphans.is_empty() {
            log::info!("reclaiming {} orphaned inodes", orphans.len());
        }
        self.write(|cx| {
            for ino in orphans {
                match cx.try_inode(ino)? {
                    Some(mut rec) => cx.destroy_inode(ino, &mut rec)?,
                    None => {
                        cx.orphans.remove(ino)?;
                    }
                }
            }
            cx.mem.dirty = true;
            Ok(())
        })?;
        if unclean {
            let (free, end): (Vec<(u64, u64)>, u64) = self.read(|cx| {
                let mut v = Vec::new();
                for item in cx.free.iter()? {
                    let (k, val) = item?;
                    v.push((k, decode::<crate::codec::FreeRecord>(&val, &k)?.len));
                }
                Ok((v, cx.mem.state.pool_blocks))
            })?;
            // Only to give the host its space back (free blocks are never read): a full or
            // failing host must not keep the store from opening.
            for (s, l) in free {
                if let Err(e) = self.pool.punch(s * self.bs, l * self.bs) {
                    log::warn!("punching free pool blocks {s}..{}: {e}", s + l);
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

/// A panic below us (redb trusting a damaged page) becomes a corruption error for this one call.
fn panic_error(p: Box<dyn std::any::Any + Send>) -> Error {
    let what = p
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
        .unwrap_or("unknown");
    Error::Corrupted(format!(
        "meta.redb: internal error while reading metadata ({what}); run cowfs fsck"
    ))
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

/// Drop the setuid/setgid bits `cred` may not keep when it modifies a file's data; true if
/// any went (the kernel's cached mode is then stale).
fn drop_privs(rec: &mut InodeRecord, cred: &dyn Cred) -> bool {
    let perm = acl::modified_perm(rec.perm, rec.gid, cred);
    let dropped = perm != rec.perm;
    rec.perm = perm;
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemEnv;

    fn opts() -> OpenOptions {
        OpenOptions {
            commit_interval: None,
            cache_bytes: 1 << 20,
            ..Default::default()
        }
    }

    fn regular() -> NewInode {
        NewInode {
            kind: FileKind::Regular,
            perm: 0o644,
            rdev: 0,
            symlink_target: None,
        }
    }

    type Hook = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

    /// A store directory whose pool runs a hook (once) at its next punch.
    #[derive(Clone)]
    struct PunchHookEnv {
        mem: MemEnv,
        hook: Hook,
    }

    impl std::fmt::Debug for PunchHookEnv {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("PunchHookEnv")
        }
    }

    struct PunchHookFile {
        file: Arc<dyn FileIo>,
        hook: Hook,
    }

    impl std::fmt::Debug for PunchHookFile {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("PunchHookFile")
        }
    }

    impl FileIo for PunchHookFile {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.file.set_len(len)
        }
        fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
            self.file.read_at(buf, off)
        }
        fn write_at(&self, data: &[u8], off: u64) -> std::io::Result<()> {
            self.file.write_at(data, off)
        }
        fn sync(&self) -> std::io::Result<()> {
            self.file.sync()
        }
        fn copy_within(&self, src: u64, dst: u64, len: u64) -> std::io::Result<()> {
            self.file.copy_within(src, dst, len)
        }
        fn punch(&self, off: u64, len: u64) -> std::io::Result<()> {
            let hook = self.hook.lock().take();
            if let Some(h) = hook {
                h();
            }
            self.file.punch(off, len)
        }
    }

    impl Env for PunchHookEnv {
        fn open(&self, name: &str, create: bool) -> Result<Arc<dyn FileIo>> {
            let file = self.mem.open(name, create)?;
            if name != POOL_FILE {
                return Ok(file);
            }
            Ok(Arc::new(PunchHookFile {
                file,
                hook: self.hook.clone(),
            }))
        }
        fn exists(&self, name: &str) -> bool {
            self.mem.exists(name)
        }
        fn lock(&self) -> Result<Box<dyn Send + Sync + std::fmt::Debug>> {
            self.mem.lock()
        }
        fn path(&self) -> std::path::PathBuf {
            self.mem.path()
        }
    }

    #[test]
    fn freed_blocks_are_punched_before_another_writer_can_reuse_them() -> Result<()> {
        // Regression: commit() punched the blocks it freed after letting go of the state lock,
        // when they were already in the free table; a write in between (another FUSE thread)
        // could allocate such a block and then lose its data to the late punch.
        let env = PunchHookEnv {
            mem: MemEnv::new(),
            hook: Arc::new(Mutex::new(None)),
        };
        Store::mkfs_env(Arc::new(env.clone()), &MkfsOptions::default())?;
        let store = Arc::new(Store::open_env(Arc::new(env.clone()), &opts())?);
        let a = store
            .create(InodeNo::ROOT, b"a", &regular(), Caller::ROOT)?
            .ino;
        let b = store
            .create(InodeNo::ROOT, b"b", &regular(), Caller::ROOT)?
            .ino;
        store.write(a, 0, &[1u8; 4096])?;
        store.commit()?;
        // Redirect a's block: the old one is freed by the next commit.
        store.write(a, 0, &[2u8; 4096])?;
        let s2 = store.clone();
        let writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::new(Mutex::new(None));
        let slot = writer.clone();
        *env.hook.lock() = Some(Box::new(move || {
            // At the commit's first punch of the pool another thread writes; give it the time
            // to finish if nothing holds it back.
            let (tx, rx) = std::sync::mpsc::channel();
            let h = std::thread::spawn(move || {
                let _ = s2.write(b, 0, &[3u8; 4096]);
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_millis(500));
            *slot.lock() = Some(h);
        }));
        store.commit()?;
        let h = writer.lock().take();
        assert!(h.is_some(), "the commit punched nothing");
        if let Some(h) = h {
            let _ = h.join();
        }
        assert!(
            store.read_to_vec(b, 0, 4096)?.iter().all(|&x| x == 3),
            "the late punch zeroed a block written after the commit freed it"
        );
        assert!(store.read_to_vec(a, 0, 4096)?.iter().all(|&x| x == 2));
        store.commit()?;
        assert!(store.check()?.is_clean());
        Ok(())
    }
}
