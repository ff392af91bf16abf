//! The store: opening and creating, the transaction every operation runs in, and the commit
//! protocol (sync the pool, flip the B-tree's commit slot, then release the blocks it freed).

use crate::acl::{self, Cred};
use crate::codec::{decode, InodeRecord, StateRecord};
use crate::data::{require_regular, touch_data, Source, MAX_FILE_SIZE};
use crate::error::{Error, Result};
use crate::io::{DirEnv, Env, FileIo, RedbFile, ScratchFile, SpaceReserve, RESERVE_FILE};
use crate::lower::{LowerFile, LowerTree};
use crate::ns::{new_inode_record, NAME_MAX};
use crate::superblock::{Superblock, SUPERBLOCK_FILE, SUPERBLOCK_LEN};
use crate::tables::{Ctx, TxnMem, STATE, STATE_KEY};
use crate::types::*;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

pub const META_FILE: &str = "meta.redb";
/// Mutations per commit while the host is full (see `Inner::write`).
const LOW_SPACE_COMMIT_EVERY: u64 = 64;
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
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            commit_interval: Some(Duration::from_secs(5)),
            cache_bytes: 64 << 20,
            verify: true,
            lower: None,
        }
    }
}

pub(crate) struct TxnState {
    pub wtx: Option<WriteTransaction>,
    pub mem: TxnMem,
}

pub(crate) struct Inner {
    pub env: Arc<dyn Env>,
    pub sb: Superblock,
    pub bs: u64,
    db: std::sync::RwLock<Arc<Database>>,
    /// How to open the B-tree again after an I/O error it latched (see `reopen_db`).
    meta_backend: Arc<dyn FileIo>,
    cache_bytes: usize,
    pub reserve: Option<Arc<SpaceReserve>>,
    pub(crate) lower: Option<Arc<LowerTree>>,
    pub pool: Arc<dyn FileIo>,
    pub state: Mutex<TxnState>,
    commit_lock: Mutex<()>,
    pub read_only: bool,
    pub commits: AtomicU64,
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
    pub fn mkfs(dir: impl AsRef<Path>, opts: &MkfsOptions) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        Store::mkfs_env(Arc::new(DirEnv::new(dir)), opts)
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
        let db = redb::Builder::new().create_with_backend(RedbFile::new(meta.clone()))?;
        let mut wtx = db.begin_write()?;
        wtx.set_durability(Durability::Immediate)?;
        {
            let mut mem = TxnMem::new(StateRecord {
                generation: 1,
                next_ino: 2,
                pool_blocks: 0,
                inodes: 1,
                clean: true,
            });
            let mut cx = Ctx::open(&wtx, &mut mem, pool.as_ref(), u64::from(sb.block_size))?;
            let mut root =
                new_inode_record(FileKind::Directory, 0o755, Caller::ROOT, 0, InodeNo::ROOT.0);
            root.generation = 1;
            cx.put_inode(InodeNo::ROOT.0, &root)?;
            cx.put_state()?;
        }
        wtx.commit()?;
        drop(db);
        pool.sync()?;
        // The superblock goes last: a store without one is not a store, so a crashed mkfs is harmless.
        let sbf = env.open(SUPERBLOCK_FILE, true)?;
        sbf.write_at(&sb.to_bytes(), 0)?;
        sbf.sync()?;
        Ok(())
    }

    /// Open the store in directory `dir`.
    pub fn open(dir: impl AsRef<Path>, opts: &OpenOptions) -> Result<Store> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::NotAStore {
                path: dir.to_path_buf(),
                reason: "no such directory".into(),
            });
        }
        Store::open_env(Arc::new(DirEnv::new(dir)), opts)
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
        let db = open_db(
            backend.clone(),
            reserve.clone(),
            opts.cache_bytes,
            opts.verify,
        )?;
        let state = {
            let rtx = db.begin_read()?;
            let t = rtx
                .open_table(STATE)
                .map_err(|e| Error::corrupt(format!("meta.redb: state table: {e}")))?;
            let v = t
                .get(STATE_KEY)?
                .ok_or_else(|| Error::corrupt("meta.redb: state record missing"))?;
            decode::<StateRecord>(v.value(), &STATE_KEY)?
        };
        let mut wtx = db.begin_write()?;
        wtx.set_durability(Durability::Immediate)?;
        let (lower, newly_recorded) = reconcile_lower(&db, &wtx, opts)?;
        let inner = Arc::new(Inner {
            env,
            sb,
            bs,
            db: std::sync::RwLock::new(Arc::new(db)),
            meta_backend: backend,
            cache_bytes: opts.cache_bytes,
            reserve,
            lower,
            pool,
            state: Mutex::new(TxnState {
                wtx: Some(wtx),
                mem: TxnMem::new(state),
            }),
            commit_lock: Mutex::new(()),
            read_only: opts.read_only,
            commits: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            stop: (Mutex::new(false), Condvar::new()),
            _lock: guard,
        });
        if newly_recorded {
            lock(&inner.state).mem.dirty = true;
        }
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
    pub fn commit(&self) -> Result<()> {
        self.inner.commit(false)
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
                let rec = decode::<crate::codec::LowerFileRecord>(v.value(), &k.value())?;
                if let Some(what) = tree.changed(&rec) {
                    out.push((String::from_utf8_lossy(&rec.path).into_owned(), what));
                }
            }
            Ok(out)
        })
    }

    /// Count an open handle: an inode unlinked while open lives until its last `release`.
    pub fn open_inode(&self, ino: InodeNo) -> Result<InodeAttr> {
        let mut st = lock(&self.inner.state);
        self.inner.ensure_txn(&mut st);
        let rec = {
            let TxnState { wtx, mem } = &mut *st;
            let wtx = wtx.as_ref().ok_or_else(poisoned)?;
            let cx = Ctx::open(wtx, mem, self.inner.pool.as_ref(), self.inner.bs)?;
            cx.get_inode(ino.0)?
        };
        *st.mem.open_counts.entry(ino.0).or_insert(0) += 1;
        Ok(self.attr(ino.0, &rec))
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
            Ok(PinnedRead {
                segments,
                lower,
                _pin: cx.mem.pins.pin(),
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
                cx.mem.pending_free.total(),
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

fn poisoned() -> Error {
    Error::Io(std::io::Error::other(
        "the store's transaction failed earlier; reopen the store",
    ))
}

impl Inner {
    /// Run a read-only closure against the open transaction (it sees uncommitted changes).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Ctx<'_>) -> Result<T>) -> Result<T> {
        let mut st = lock(&self.state);
        self.ensure_txn(&mut st);
        let TxnState { wtx, mem } = &mut *st;
        let wtx = wtx.as_ref().ok_or_else(poisoned)?;
        let mut cx = Ctx::open(wtx, mem, self.pool.as_ref(), self.bs)?;
        cx.lower = self.lower.as_deref();
        let cx = cx;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&cx)))
            .unwrap_or_else(|p| Err(panic_error(p)))
    }

    /// Run a mutation in the open transaction. On error the mutation may have been applied in
    /// part, so the transaction is rolled back to the last commit (all operations check before
    /// they change anything, so this only happens on I/O errors or corruption).
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut Ctx<'_>) -> Result<T>) -> Result<T> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.write_unchecked(f)
    }

    /// `write` without the read-only check: for read-only opens, whose transaction lives on a
    /// scratch overlay and is never committed (the overlay import of `Store::import`).
    pub(crate) fn write_unchecked<T>(
        &self,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut st = lock(&self.state);
        self.ensure_txn(&mut st);
        let TxnState { wtx, mem } = &mut *st;
        let w = wtx.as_ref().ok_or_else(poisoned)?;
        let result = {
            let mut cx = Ctx::open(w, mem, self.pool.as_ref(), self.bs)?;
            cx.lower = self.lower.as_deref();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut cx)))
                .unwrap_or_else(|p| Err(panic_error(p)))
        };
        if let Err(e) = &result {
            if is_fatal(e) {
                self.rollback(&mut st, e);
            }
        }
        // On a full host, commit in small steps: a big transaction of deletions needs new B-tree
        // pages for everything it touches before the commit frees the old ones.
        st.mem.ops_since_commit += 1;
        let commit_now = st.mem.low_space && st.mem.ops_since_commit >= LOW_SPACE_COMMIT_EVERY;
        drop(st);
        if commit_now {
            if let Err(e) = self.commit(false) {
                log::warn!("commit on a full host failed: {e}");
            }
        }
        result
    }

    /// If an earlier failure left no open transaction (its recovery met the same fault), try the
    /// recovery again now, so that a transient fault does not leave the store refusing everything
    /// until it is reopened. A closed store stays closed.
    fn ensure_txn(&self, st: &mut TxnState) {
        if st.wtx.is_none() && !self.closed.load(Ordering::SeqCst) && !self.read_only {
            self.rollback(st, &poisoned());
        }
    }

    /// This store's registry of blocks being punched (tests hold blocks in it).
    #[cfg(test)]
    pub(crate) fn state_punching(&self) -> Arc<crate::alloc::PunchRegistry> {
        lock(&self.state).mem.punching.clone()
    }

    /// The B-tree database (replaced by `reopen_db` after a latched I/O error).
    pub(crate) fn db(&self) -> Arc<Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// redb refuses all work after an I/O error until it is opened again; do that, so that a
    /// transient failure (e.g. a full disk) does not leave the mount answering EIO until remounted.
    fn reopen_db(&self) -> Result<()> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        let fresh = open_db(
            self.meta_backend.clone(),
            self.reserve.clone(),
            self.cache_bytes,
            false,
        )?;
        *slot = Arc::new(fresh);
        log::warn!("metadata B-tree reopened after an I/O error");
        Ok(())
    }

    fn rollback(&self, st: &mut TxnState, why: &Error) {
        log::warn!("rolling back uncommitted changes after: {why}");
        if let Some(w) = st.wtx.take() {
            let _ = w.abort();
        }
        if self.db().begin_write().map(|w| w.abort()).is_err() {
            if let Err(e) = self.reopen_db() {
                log::error!("reopening the metadata B-tree failed: {e}");
            }
        }
        let committed = (|| -> Result<StateRecord> {
            let rtx = self.db().begin_read()?;
            let t = rtx.open_table(STATE)?;
            let v = t
                .get(STATE_KEY)?
                .ok_or_else(|| Error::corrupt("state record missing"))?;
            decode::<StateRecord>(v.value(), &STATE_KEY)
        })();
        // Process state survives a rollback: open handles, the reads still copying pool bytes (a
        // fresh pin registry would let the next commit free their blocks under them), and the
        // blocks a finished commit is still punching.
        let open = std::mem::take(&mut st.mem.open_counts);
        let pins = st.mem.pins.clone();
        let punching = st.mem.punching.clone();
        if let Ok(state) = committed {
            st.mem = TxnMem::new(state);
            st.mem.state.clean = false;
            st.mem.open_counts = open;
            st.mem.pins = pins;
            st.mem.punching = punching;
            st.mem.low_space = self.reserve.as_ref().is_some_and(|r| !r.is_held());
            if let Ok(mut w) = self.db().begin_write() {
                if w.set_durability(Durability::Immediate).is_ok() {
                    st.wtx = Some(w);
                }
            }
        }
    }

    /// The commit protocol: (1) make pool data durable, (2) commit the B-tree (its commit-slot
    /// flip is the atomic point), (3) return the blocks this commit freed to the allocator.
    pub(crate) fn commit(&self, closing: bool) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let _one_at_a_time = lock(&self.commit_lock);
        {
            let mut st = lock(&self.state);
            self.ensure_txn(&mut st);
            if !st.mem.dirty && !closing {
                return Ok(());
            }
            let TxnState { wtx, mem } = &mut *st;
            let w = wtx.take().ok_or_else(poisoned)?;
            // Freed blocks become allocatable with this commit: let reads still copying from
            // them finish first (none can start: we hold the state lock).
            if !mem.pending_free.is_empty() {
                mem.pins.wait_idle();
            }
            let prepared = (|| -> Result<()> {
                let mut cx = Ctx::open(&w, mem, self.pool.as_ref(), self.bs)?;
                let pending: Vec<(u64, u64)> = cx.mem.pending_free.iter().collect();
                for (s, l) in pending {
                    cx.insert_free(s, l)?;
                }
                cx.mem.state.generation += 1;
                cx.mem.state.clean = closing;
                cx.put_state()?;
                Ok(())
            })();
            let done = prepared
                .and_then(|_| self.pool.sync().map_err(Error::from_io))
                .and_then(|_| w.commit().map_err(Error::from));
            if let Err(e) = done {
                // The B-tree is still at the previous commit; start over from there.
                st.wtx = None;
                self.rollback(&mut st, &e);
                return Err(e);
            }
            self.commits.fetch_add(1, Ordering::Relaxed);
            let released = std::mem::take(&mut st.mem.pending_free);
            st.mem.txn_alloc = Default::default();
            st.mem.dirty = false;
            st.mem.ops_since_commit = 0;
            if !closing {
                let mut w = self.db().begin_write()?;
                w.set_durability(Durability::Immediate)?;
                st.wtx = Some(w);
            }
            // The released blocks are in the free table now. Punch them after letting go of the
            // state lock (a punch can cost tens of microseconds of synchronous discard, and there
            // may be thousands), but registered as being punched first: the allocator skips them
            // until the punch is done, so no write can lose its bytes to a late punch.
            let punching = st.mem.punching.start(&released);
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
        }
        Ok(())
    }

    /// After open: reclaim orphans (inodes unlinked while open when the last process stopped);
    /// after an unclean stop also give the host back space of blocks freed by the last commits.
    fn recover(&self, unclean: bool) -> Result<()> {
        let orphans: Vec<u64> = self.read(|cx| {
            let mut v = Vec::new();
            for item in cx.orphans.iter()? {
                v.push(item?.0.value());
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
                    v.push((
                        k.value(),
                        decode::<crate::codec::FreeRecord>(val.value(), &k.value())?.len,
                    ));
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
/// first time). Returns the opened lower tree and whether it was recorded just now.
fn reconcile_lower(
    db: &Database,
    wtx: &WriteTransaction,
    opts: &OpenOptions,
) -> Result<(Option<Arc<LowerTree>>, bool)> {
    use crate::codec::{encode, LowerDirRecord, LowerRootRecord};
    use crate::tables::{LOWER, LOWER_PENDING};
    use std::os::unix::ffi::OsStrExt;
    let recorded: Option<LowerRootRecord> = {
        let rtx = db.begin_read()?;
        match rtx.open_table(LOWER) {
            Ok(t) => match t.get(0)? {
                Some(v) => Some(decode::<LowerRootRecord>(v.value(), &0u64)?),
                None => None,
            },
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        }
    };
    match (recorded, &opts.lower) {
        (None, None) => Ok((None, false)),
        (Some(r), given) => {
            let recorded_path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&r.path));
            let tree = LowerTree::open(given.as_deref().unwrap_or(&recorded_path))?;
            if tree.dev != r.dev || tree.ino != r.ino {
                return Err(Error::LowerMismatch {
                    recorded: recorded_path,
                    given: tree.path.clone(),
                });
            }
            Ok((Some(Arc::new(tree)), false))
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
            wtx.open_table(LOWER)?.insert(0, encode(&rec).as_slice())?;
            wtx.open_table(LOWER_PENDING)?.insert(
                InodeNo::ROOT.0,
                encode(&LowerDirRecord { path: Vec::new() }).as_slice(),
            )?;
            Ok((Some(Arc::new(tree)), true))
        }
    }
}

fn open_db(
    backend: Arc<dyn FileIo>,
    reserve: Option<Arc<SpaceReserve>>,
    cache: usize,
    verify: bool,
) -> Result<Database> {
    redb::Builder::new()
        .set_cache_size(cache)
        .set_check_integrity_on_open(verify)
        .create_with_backend(RedbFile {
            file: backend,
            reserve,
        })
        .map_err(|e| match Error::from(e) {
            Error::Corrupted(m) => Error::Corrupted(format!(
                "{m} (the metadata B-tree failed verification at open)"
            )),
            other => other,
        })
}

fn is_fatal(e: &Error) -> bool {
    matches!(e, Error::Io(_) | Error::Corrupted(_))
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
