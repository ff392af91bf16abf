//! The store: opening and creating, the transaction every operation runs in, and the commit
//! protocol (sync the pool, flip the B-tree's commit slot, then release the blocks it freed).

use crate::acl::{self, Cred};
use crate::codec::{decode, encode, InodeRecord, StateRecord};
use crate::data::{require_regular, touch_data, Source, MAX_FILE_SIZE};
use crate::error::{Error, Result};
use crate::io::{DirEnv, Env, FileIo, ScratchFile, SpaceReserve, RESERVE_FILE};
use crate::lower::{LowerFile, LowerTree};
use crate::meta::{key, Delta, Engine, IntKey, Layers, RedbEngine, Snapshot, TableId};
use crate::ns::{new_inode_record, NAME_MAX};
use crate::superblock::{Superblock, SUPERBLOCK_FILE, SUPERBLOCK_LEN};
use crate::tables::{state_delta, Ctx, TxnMem, STATE_KEY};
use crate::types::*;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
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
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions { block_size: 4096 }
    }
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
    pub(crate) engine: RedbEngine,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        let meta = env.open(META_FILE, true)?;
        meta.set_len(0)?;
        let pool = env.open(POOL_FILE, true)?;
        pool.set_len(0)?;
        let engine = RedbEngine::open(meta, None, 1 << 20, false)?;
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
        let meta = env.open(META_FILE, false)?;
        let pool = env.open(POOL_FILE, false)?;
        let backend: Arc<dyn FileIo> = if opts.read_only {
            Arc::new(ScratchFile::new(meta)?)
        } else {
            meta
        };
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
        let engine = RedbEngine::open(backend, reserve.clone(), opts.cache_bytes, opts.verify)?;
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
            *lock(m) = true;
            cv.notify_all();
        }
        if let Some(h) = lock(&self.committer).take() {
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
        // A directory's link count is only right once its lower entries are in.
        self.import(ino)?;
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
        self.inner.write(|cx| {
            let rec = cx.link(ino.0, newparent.0, newname)?;
            Ok(self.attr(ino.0, &rec))
        })
    }

    pub fn unlink(&self, parent: InodeNo, name: &[u8]) -> Result<()> {
        self.inner.write(|cx| cx.unlink(parent.0, name))
    }

    pub fn rmdir(&self, parent: InodeNo, name: &[u8]) -> Result<()> {
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
        self.inner
            .write(|cx| cx.rename(parent.0, name, newparent.0, newname, flags))
    }

    /// Up to `limit` entries after cookie `offset` (0 = from the start, with "." and "..").
    pub fn readdir(&self, dir: InodeNo, offset: u64, limit: usize) -> Result<Vec<DirEntry>> {
        self.import(dir)?;
        self.inner.read(|cx| cx.readdir(dir.0, offset, limit))
    }

    /// Overlay: import a directory's lower entries before it is first looked into.
    fn import(&self, dir: InodeNo) -> Result<()> {
        if self.inner.lower.is_none() || !self.inner.read(|cx| cx.import_pending(dir.0))? {
            return Ok(());
        }
        if self.inner.read_only {
            // A read-only open imports into its scratch transaction, never into the store.
            return self.inner.write_unchecked(|cx| cx.ensure_imported(dir.0));
        }
        self.inner.write(|cx| cx.ensure_imported(dir.0))
    }

    /// The overlay's lower directory, if the store has one.
    pub fn lower_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.lower.as_ref().map(|l| l.path.clone())
    }

    /// Overlay: lower files that changed since they were imported (path, what changed).
    pub fn lower_changes(&self) -> Result<Vec<(String, String)>> {
        let Some(tree) = self.inner.lower.clone() else {
            return Ok(Vec::new());
        };
        self.inner.read(|cx| {
            let mut out = Vec::new();
            for item in cx.lower_files.iter()? {
                let (k, v) = item?;
                let rec = decode::<crate::codec::LowerFileRecord>(&v, &k)?;
                if let Some(what) = tree.changed(&rec) {
                    out.push((String::from_utf8_lossy(&rec.path).into_owned(), what));
                }
            }
            Ok(out)
        })
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
            let mut st = lock(&self.inner.state);
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
        self.inner.write(|cx| {
            let mut rec = cx.get_inode(ino.0)?;
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
    pub fn read(&self, ino: InodeNo, off: u64, len: u64) -> Result<PinnedRead> {
        self.inner.read(|cx| {
            let rec = cx.get_inode(ino.0)?;
            require_regular(&rec)?;
            let segments = cx.read_segments(ino.0, &rec, off, len)?;
            let mut lower = Vec::new();
            for s in &segments {
                if let Segment::Lower { file, .. } = *s {
                    if !lower.iter().any(|(id, _)| *id == file) {
                        lower.push((file, cx.lower_file(file)?));
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
            Ok(PinnedRead {
                segments,
                lower,
                _pin: cx.mem.pins.pin(runs),
            })
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
        self.inner.write(|cx| {
            let mut rec = cx.get_inode(ino.0)?;
            require_regular(&rec)?;
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
        self.inner.write(|cx| {
            let mut rec = cx.get_inode(ino.0)?;
            require_regular(&rec)?;
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
        self.inner.write(|cx| {
            let src_rec = cx.get_inode(src.0)?;
            require_regular(&src_rec)?;
            let mut dst_rec = if src == dst {
                src_rec.clone()
            } else {
                cx.get_inode(dst.0)?
            };
            require_regular(&dst_rec)?;
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
            generation: rec.generation,
            block_size: self.inner.sb.block_size,
        }
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
        let mut st = lock(&self.state);
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
        let mut st = lock(&self.state);
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
        lock(&self.state).mem.punching.clone()
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
        let _one_at_a_time = lock(&self.commit_lock);
        let mut st = lock(&self.state);
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
        let mut st = lock(&self.state);
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
            for (s, l) in free {
                self.pool.punch(s * self.bs, l * self.bs)?;
            }
            if self.pool.len()? > end * self.bs {
                self.pool.set_len(end * self.bs)?;
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
                let stopped = lock(m);
                if *stopped {
                    return;
                }
                let (stopped, _) = cv
                    .wait_timeout(stopped, every)
                    .unwrap_or_else(|p| p.into_inner());
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
            let hook = lock(&self.hook).take();
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
        *lock(&env.hook) = Some(Box::new(move || {
            // At the commit's first punch of the pool another thread writes; give it the time
            // to finish if nothing holds it back.
            let (tx, rx) = std::sync::mpsc::channel();
            let h = std::thread::spawn(move || {
                let _ = s2.write(b, 0, &[3u8; 4096]);
                let _ = tx.send(());
            });
            let _ = rx.recv_timeout(Duration::from_millis(500));
            *lock(&slot) = Some(h);
        }));
        store.commit()?;
        let h = lock(&writer).take();
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
