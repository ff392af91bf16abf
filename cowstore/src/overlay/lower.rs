//! The overlay's lower directory: a read-only tree whose entries are imported lazily as store
//! metadata, and whose regular files back extents until they are written.
//!
//! Everything is opened beneath the lower root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`,
//! so no symlink (or `..`) inside the lower tree is ever followed out of it; symlinks are imported
//! as symlinks. The lower tree is never written, not even its access times: it is reached through
//! a private read-only, `noatime` clone of its mounts when the process may make one (root), since
//! listing a directory or reading a symlink updates atime whatever the open flags; files are also
//! opened with `O_NOATIME` where permitted. A lower file whose inode, size or mtime differ from
//! what was recorded at import is refused with EIO instead of mixing versions.

use crate::codec::LowerFileRecord;
use crate::error::{Error, Result};
use crate::sys;
use crate::types::{FileKind, Timespec};
use lru::LruCache;
use parking_lot::Mutex;
use rustix::fs::OFlags;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Lower files kept open at once (least recently used ones are closed first).
const OPEN_FILES: NonZeroUsize = match NonZeroUsize::new(256) {
    Some(n) => n,
    None => panic!("OPEN_FILES must not be zero"),
};

/// Lower entries imported per store operation (see `Store::import`).
pub(crate) const IMPORT_BATCH: usize = 1024;

/// What the store is about to do to the lower tree (tests stand in for a slow or failing lower
/// filesystem at these points).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LowerIo<'a> {
    /// Listing the names of a lower directory.
    Names(&'a [u8]),
    /// Reading the attributes of batch `n` (from 0) of a directory's names.
    Entries(usize),
    /// Opening lower file `id`.
    Open(u64),
}

#[cfg(test)]
pub(crate) type LowerHook = Arc<dyn Fn(LowerIo<'_>) -> Result<()> + Send + Sync>;

/// Where a test puts its [`LowerHook`].
#[cfg(test)]
#[derive(Default)]
pub(crate) struct HookSlot(Mutex<Option<LowerHook>>);

#[cfg(test)]
impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookSlot")
    }
}

/// One entry of a lower directory, as imported.
#[derive(Clone, Debug)]
pub(crate) struct LowerEntry {
    pub name: Vec<u8>,
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub rdev: u32,
    pub dev: u64,
    pub ino: u64,
    pub target: Vec<u8>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// An open lower file, verified against its import record.
#[derive(Debug)]
pub struct LowerFile {
    pub file: File,
}

#[derive(Debug)]
pub(crate) struct LowerTree {
    pub path: PathBuf,
    root: File,
    pub dev: u64,
    pub ino: u64,
    /// Open lower files by id, least recently used closed first.
    open: Mutex<LruCache<u64, Arc<LowerFile>>>,
    /// Lower files opened and verified, before it took the store lock, by an operation that is
    /// still running (see [`LowerTree::hold`]), with the number of such operations.
    held: Mutex<HashMap<u64, (Arc<LowerFile>, usize)>>,
    #[cfg(test)]
    pub(crate) hook: HookSlot,
}

/// Lower files held open for one operation; dropping it lets them go.
#[derive(Debug)]
pub(crate) struct LowerHold {
    tree: Arc<LowerTree>,
    ids: Vec<u64>,
}

impl Drop for LowerHold {
    fn drop(&mut self) {
        let mut held = self.tree.held.lock();
        for id in &self.ids {
            if let Some(e) = held.get_mut(id) {
                e.1 -= 1;
                if e.1 == 0 {
                    held.remove(id);
                }
            }
        }
    }
}

/// A directory of the lower tree, open for listing (with no store lock held).
pub(crate) struct LowerDir<'a> {
    tree: &'a LowerTree,
    rel: Vec<u8>,
    file: File,
}

fn cstr(b: &[u8]) -> Result<CString> {
    CString::new(b).map_err(|_| Error::Invalid("NUL in a lower path"))
}

fn ts(sec: i64, nsec: i64) -> Timespec {
    Timespec {
        sec,
        nsec: nsec.clamp(0, 999_999_999) as u32,
    }
}

fn eio() -> Error {
    Error::Io(std::io::Error::from_raw_os_error(libc::EIO))
}

impl LowerTree {
    pub fn open(path: &Path) -> Result<LowerTree> {
        let path = std::fs::canonicalize(path).map_err(|e| Error::NotAStore {
            path: path.to_path_buf(),
            reason: format!("lower directory: {e}"),
        })?;
        // Through a private read-only, noatime view when we may make one: listing a directory or
        // reading a symlink would otherwise update its atime, which O_NOATIME cannot prevent.
        let root = match sys::private_readonly_view(&cstr(path.as_os_str().as_bytes())?) {
            Ok(view) => view,
            Err(e) => {
                log::warn!(
                    "lower {}: no private read-only view ({e}); directory and symlink atimes may change",
                    path.display()
                );
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK)
                    .open(&path)
                    .map_err(|e| Error::NotAStore {
                        path: path.clone(),
                        reason: format!("lower directory: {e}"),
                    })?
            }
        };
        let md = root.metadata()?;
        if !md.is_dir() {
            return Err(Error::NotAStore {
                path,
                reason: "the lower path is not a directory".into(),
            });
        }
        Ok(LowerTree {
            path,
            root,
            dev: md.dev(),
            ino: md.ino(),
            open: Mutex::new(LruCache::new(OPEN_FILES)),
            held: Mutex::new(HashMap::new()),
            #[cfg(test)]
            hook: HookSlot::default(),
        })
    }

    /// Where the store reaches the lower filesystem; a test may delay or fail it here.
    #[inline]
    fn io(&self, what: LowerIo<'_>) -> Result<()> {
        #[cfg(test)]
        if let Some(h) = self.hook.0.lock().clone() {
            return h(what);
        }
        let _ = what;
        Ok(())
    }

    /// Open directory `rel` of the lower tree ("" is the root) for listing. Never call this
    /// with the store lock held: a lower filesystem may be slow or hung.
    pub fn dir(&self, rel: &[u8]) -> Result<LowerDir<'_>> {
        let path = if rel.is_empty() { b".".as_slice() } else { rel };
        let file = sys::openat_beneath(
            &self.root,
            &cstr(path)?,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::NONBLOCK,
        )
        .map_err(|e| lower_io(&self.path, rel, e))?;
        Ok(LowerDir {
            tree: self,
            rel: rel.to_vec(),
            file,
        })
    }

    /// Hold the lower files `files` (id, record) open and verified for one operation about to
    /// take the store lock, so that under it [`LowerTree::file_in_op`] neither opens nor stats
    /// them. Call with no store lock held.
    pub fn hold(self: &Arc<Self>, files: &[(u64, LowerFileRecord)]) -> Result<LowerHold> {
        let mut opened = Vec::with_capacity(files.len());
        for (id, rec) in files {
            opened.push((*id, self.file(*id, rec)?));
        }
        let mut held = self.held.lock();
        for (id, f) in opened {
            held.entry(id).or_insert((f, 0)).1 += 1;
        }
        Ok(LowerHold {
            tree: self.clone(),
            ids: files.iter().map(|(id, _)| *id).collect(),
        })
    }

    /// The lower file `id` for an operation running under the store lock: one its caller holds
    /// (opened and verified just before), else — when the operation reaches a lower file its
    /// caller did not foresee — opened and verified here.
    pub fn file_in_op(&self, id: u64, rec: &LowerFileRecord) -> Result<Arc<LowerFile>> {
        if let Some((f, _)) = self.held.lock().get(&id) {
            return Ok(f.clone());
        }
        log::debug!(
            "lower {}: opened under the store lock",
            String::from_utf8_lossy(&rec.path)
        );
        self.file(id, rec)
    }

    /// The lower file behind extents of lower id `id`, opened (or taken from the cache) and
    /// verified against its record. Call with no store lock held.
    pub fn file(&self, id: u64, rec: &LowerFileRecord) -> Result<Arc<LowerFile>> {
        let cached = self.open.lock().get(&id).cloned();
        if let Some(f) = cached {
            // Verified again on every use (one fstat): a lower file rewritten while it is open
            // must not have its new bytes served as the old file's.
            let md = f
                .file
                .metadata()
                .map_err(|e| lower_io(&self.path, &rec.path, e))?;
            if let Err(e) = self.verify(rec, &md) {
                self.open.lock().pop(&id);
                return Err(e);
            }
            return Ok(f);
        }
        self.io(LowerIo::Open(id))?;
        let f = Arc::new(LowerFile {
            file: self.open_regular(rec)?,
        });
        self.open.lock().put(id, f.clone());
        Ok(f)
    }

    /// Open lower file `rec.path` for reading, refusing (EIO, logged) anything that is not the
    /// regular file recorded. It is looked at through an `O_PATH` descriptor first and opened
    /// only if it is a regular file: opening a FIFO would block until a writer came, a device
    /// might act on the open.
    fn open_regular(&self, rec: &LowerFileRecord) -> Result<File> {
        let at = |e| lower_io(&self.path, &rec.path, e);
        let path = sys::openat_beneath(
            &self.root,
            &cstr(&rec.path)?,
            OFlags::PATH | OFlags::NOFOLLOW,
        )
        .map_err(at)?;
        self.verify(rec, &path.metadata().map_err(at)?)?;
        // Reopen that very inode (the descriptor's magic link, not the path again), without
        // blocking and without touching its atime (O_NOATIME needs ownership or CAP_FOWNER).
        let proc = format!("/proc/self/fd/{}", path.as_raw_fd());
        let open = |noatime: bool| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(
                    libc::O_NONBLOCK | libc::O_NOCTTY | if noatime { libc::O_NOATIME } else { 0 },
                )
                .open(&proc)
        };
        let file = match open(true) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(false),
            other => other,
        }
        .map_err(at)?;
        self.verify(rec, &file.metadata().map_err(at)?)?;
        // Regular files ignore O_NONBLOCK; clear it anyway so whoever reads the descriptor
        // (splice, a passthrough backing file) sees an ordinary one.
        let mut fl = rustix::fs::fcntl_getfl(&file).map_err(|e| at(e.into()))?;
        fl.remove(OFlags::NONBLOCK);
        rustix::fs::fcntl_setfl(&file, fl).map_err(|e| at(e.into()))?;
        Ok(file)
    }

    /// EIO (and a log line) if the lower file `md` describes is not the regular file `rec`
    /// recorded.
    fn verify(&self, rec: &LowerFileRecord, md: &std::fs::Metadata) -> Result<()> {
        let mtime = ts(md.mtime(), md.mtime_nsec());
        if !md.file_type().is_file() {
            log::error!(
                "lower file {}/{} is no longer a regular file: refusing it",
                self.path.display(),
                String::from_utf8_lossy(&rec.path),
            );
            return Err(eio());
        }
        if md.ino() != rec.ino || md.dev() != rec.dev || md.size() != rec.size || mtime != rec.mtime
        {
            log::error!(
                "lower file {}/{} changed since it was imported (inode {}→{}, size {}→{}, mtime {:?}→{:?}): refusing to mix versions",
                self.path.display(),
                String::from_utf8_lossy(&rec.path),
                rec.ino,
                md.ino(),
                rec.size,
                md.size(),
                rec.mtime,
                mtime
            );
            return Err(eio());
        }
        Ok(())
    }

    /// How a recorded lower file differs from what is there now, if it does.
    pub fn changed(&self, rec: &LowerFileRecord) -> Option<String> {
        let name = cstr(&rec.path).ok()?;
        let file = match sys::openat_beneath(&self.root, &name, OFlags::PATH | OFlags::NOFOLLOW) {
            Ok(f) => f,
            Err(e) => return Some(format!("cannot be opened: {e}")),
        };
        let md = match file.metadata() {
            Ok(m) => m,
            Err(e) => return Some(format!("cannot be examined: {e}")),
        };
        let mtime = ts(md.mtime(), md.mtime_nsec());
        let mut what = Vec::new();
        if !md.file_type().is_file() {
            what.push("no longer a regular file".to_string());
        }
        if md.ino() != rec.ino || md.dev() != rec.dev {
            what.push(format!("inode {} is now {}", rec.ino, md.ino()));
        }
        if md.size() != rec.size {
            what.push(format!("size {} is now {}", rec.size, md.size()));
        }
        if mtime != rec.mtime {
            what.push("mtime changed".to_string());
        }
        (!what.is_empty()).then(|| what.join(", "))
    }
}

impl LowerDir<'_> {
    /// The names in this directory, sorted (bytes, no "." or "..").
    pub fn names(&self) -> Result<Vec<Vec<u8>>> {
        self.tree.io(LowerIo::Names(&self.rel))?;
        let at = |e| lower_io(&self.tree.path, &self.rel, e);
        let mut out = Vec::new();
        for item in std::fs::read_dir(self.proc_path()).map_err(at)? {
            out.push(item.map_err(at)?.file_name().as_bytes().to_vec());
        }
        out.sort_unstable();
        Ok(out)
    }

    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// The entries `names` of this directory (batch `batch` of them) with their attributes,
    /// symlink targets and xattrs. A name gone since it was listed is left out.
    pub fn entries(&self, batch: usize, names: &[Vec<u8>]) -> Result<Vec<LowerEntry>> {
        self.tree.io(LowerIo::Entries(batch))?;
        let base = self.proc_path();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let full = base.join(std::ffi::OsStr::from_bytes(name));
            let at = |e| lower_io(&self.tree.path, &join(&self.rel, name), e);
            let md = match std::fs::symlink_metadata(&full) {
                Ok(m) => m,
                // Removed while we listed: it is simply not there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(at(e)),
            };
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                FileKind::Directory
            } else if ft.is_file() {
                FileKind::Regular
            } else if ft.is_symlink() {
                FileKind::Symlink
            } else if ft.is_fifo() {
                FileKind::Fifo
            } else if ft.is_socket() {
                FileKind::Socket
            } else if ft.is_char_device() {
                FileKind::CharDevice
            } else {
                FileKind::BlockDevice
            };
            let target = if kind == FileKind::Symlink {
                std::fs::read_link(&full)
                    .map_err(at)?
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            } else {
                Vec::new()
            };
            let cpath = cstr(full.as_os_str().as_bytes())?;
            let mut xattrs = Vec::new();
            for xname in sys::llistxattr(&cpath).unwrap_or_default() {
                if let Ok(v) = sys::lgetxattr(&cpath, &cstr(&xname)?) {
                    xattrs.push((xname, v));
                }
            }
            out.push(LowerEntry {
                name: name.clone(),
                kind,
                perm: (md.mode() & 0o7777) as u16,
                uid: md.uid(),
                gid: md.gid(),
                size: if kind == FileKind::Symlink {
                    target.len() as u64
                } else {
                    md.size()
                },
                atime: ts(md.atime(), md.atime_nsec()),
                mtime: ts(md.mtime(), md.mtime_nsec()),
                ctime: ts(md.ctime(), md.ctime_nsec()),
                rdev: md.rdev() as u32,
                dev: md.dev(),
                ino: md.ino(),
                target,
                xattrs,
            });
        }
        Ok(out)
    }
}

/// `dir/name` relative to the lower root ("" is the root).
pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut rel = dir.to_vec();
    if !rel.is_empty() {
        rel.push(b'/');
    }
    rel.extend_from_slice(name);
    rel
}

/// An error of the lower tree at `rel`. The message names the path; the errno is the one the
/// lower filesystem gave (EACCES stays EACCES for the caller: see [`Error::errno`]).
fn lower_io(root: &Path, rel: &[u8], e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(
        e.kind(),
        LowerIoError {
            what: format!("lower {}/{}", root.display(), String::from_utf8_lossy(rel)),
            source: e,
        },
    ))
}

/// An I/O error of a path in the lower tree: the path, and the error with its errno.
#[derive(Debug)]
struct LowerIoError {
    what: String,
    source: std::io::Error,
}

impl std::fmt::Display for LowerIoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for LowerIoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MkfsOptions, OpenOptions, Store};
    use crate::types::{InodeNo, SetAttr};
    use std::sync::mpsc;
    use std::time::Duration;

    fn opts(lower: Option<&Path>) -> OpenOptions {
        OpenOptions {
            commit_interval: None,
            cache_bytes: 1 << 20,
            lower: lower.map(Path::to_path_buf),
            ..Default::default()
        }
    }

    /// A store over a lower tree: `small`, `other`, and `big/` with `n` empty files.
    fn setup(n: usize) -> Result<(tempfile::TempDir, PathBuf, PathBuf)> {
        let t = tempfile::tempdir()?;
        let lower = t.path().join("lower");
        let store = t.path().join("store");
        std::fs::create_dir_all(lower.join("big"))?;
        std::fs::write(lower.join("small"), b"hello lower")?;
        std::fs::write(lower.join("other"), vec![7u8; 10_000])?;
        for i in 0..n {
            File::create(lower.join(format!("big/f{i:05}")))?;
        }
        Store::mkfs(&store, &MkfsOptions::default())?;
        Ok((t, lower, store))
    }

    fn tree(s: &Store) -> Result<&LowerTree> {
        s.inner()
            .lower
            .as_deref()
            .ok_or(Error::Invalid("no lower tree"))
    }

    fn set_hook(s: &Store, hook: Option<LowerHook>) -> Result<()> {
        *tree(s)?.hook.0.lock() = hook;
        Ok(())
    }

    /// Run `op` with the lower filesystem stalled at the first lower I/O `at` picks, and while
    /// it is stalled run `probe` (another store operation) on a third thread. Returns whether
    /// the stall was reached and whether the probe finished while the lower I/O was still
    /// stalled, and `op`'s result.
    fn probe_while_stalled(
        s: &Store,
        at: fn(LowerIo<'_>) -> bool,
        op: impl FnOnce() -> Result<()> + Send,
        probe: impl FnOnce() -> Result<()> + Send,
    ) -> Result<(bool, bool, Result<()>)> {
        let (reached_tx, reached_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let stall = Mutex::new(Some((reached_tx, go_rx)));
        set_hook(
            s,
            Some(Arc::new(move |io| {
                if at(io) {
                    if let Some((reached, go)) = stall.lock().take() {
                        let _ = reached.send(());
                        let _ = go.recv_timeout(Duration::from_secs(20));
                    }
                }
                Ok(())
            })),
        )?;
        let out = std::thread::scope(|sc| {
            let op = sc.spawn(op);
            let reached = reached_rx.recv_timeout(Duration::from_secs(10)).is_ok();
            let (done_tx, done_rx) = mpsc::channel();
            let probe = sc.spawn(move || {
                let r = probe();
                let _ = done_tx.send(());
                r
            });
            let probed = reached && done_rx.recv_timeout(Duration::from_secs(5)).is_ok();
            let _ = go_tx.send(());
            let r = op.join().unwrap_or(Err(Error::Invalid("op panicked")));
            let pr = probe
                .join()
                .unwrap_or(Err(Error::Invalid("probe panicked")));
            (reached, probed && pr.is_ok(), r)
        });
        set_hook(s, None)?;
        Ok(out)
    }

    #[test]
    fn lower_io_never_happens_under_the_store_lock() -> Result<()> {
        // Regression (issue 10, defect 14): opening a lower file (a FIFO, a hung NFS server)
        // blocked while the store lock was held, so every other access to the mount hung too;
        // importing listed the lower directory under the lock as well. A stalled lower
        // filesystem must stall only the operation that needs it.
        let (_t, lower, store) = setup(1500)?;
        let s = Store::open(&store, &opts(Some(&lower)))?;
        let small = s.lookup(InodeNo::ROOT, b"small")?.ino;
        let other = s.lookup(InodeNo::ROOT, b"other")?.ino;
        let big = s.lookup(InodeNo::ROOT, b"big")?.ino;
        let probe = || s.getattr(small).map(|_| ());

        // Listing a lower directory to import it.
        let (reached, probed, r) = probe_while_stalled(
            &s,
            |io| matches!(io, LowerIo::Names(b"big")),
            || s.readdir(big, 0, 10).map(|_| ()),
            probe,
        )?;
        r?;
        assert!(reached, "the import did not list the lower directory");
        assert!(probed, "a getattr waited for a lower directory listing");
        // Examining a batch of its entries (the second: the first is imported by then).
        let (_t2, lower2, store2) = setup(1500)?;
        let s2 = Store::open(&store2, &opts(Some(&lower2)))?;
        let big2 = s2.lookup(InodeNo::ROOT, b"big")?.ino;
        let small2 = s2.lookup(InodeNo::ROOT, b"small")?.ino;
        let (reached, probed, r) = probe_while_stalled(
            &s2,
            |io| matches!(io, LowerIo::Entries(1)),
            || s2.readdir(big2, 0, 10).map(|_| ()),
            || s2.getattr(small2).map(|_| ()),
        )?;
        r?;
        assert!(reached && probed, "a getattr waited for an import batch");

        // Opening a lower file to read it.
        let (reached, probed, r) = probe_while_stalled(
            &s,
            |io| matches!(io, LowerIo::Open(_)),
            || {
                assert_eq!(s.read_to_vec(small, 0, 100)?, b"hello lower");
                Ok(())
            },
            probe,
        )?;
        r?;
        assert!(reached, "the read did not open the lower file");
        assert!(
            probed,
            "a getattr waited for a lower file being opened for a read"
        );

        // Opening a lower file to copy part of a block up for a write.
        let (reached, probed, r) = probe_while_stalled(
            &s,
            |io| matches!(io, LowerIo::Open(_)),
            || s.write(other, 100, b"new").map(|_| ()),
            probe,
        )?;
        r?;
        assert!(reached, "the write did not open the lower file");
        assert!(
            probed,
            "a getattr waited for a lower file being opened for a copy-up"
        );
        let mut want = vec![7u8; 10_000];
        want[100..103].copy_from_slice(b"new");
        assert_eq!(s.read_to_vec(other, 0, 20_000)?, want);
        s.commit()?;
        assert!(s.check()?.is_clean(), "{:#?}", s.check()?.problems);
        Ok(())
    }

    /// The entries directory `dir` has in the open transaction, without importing anything.
    fn entries_now(s: &Store, dir: InodeNo) -> Result<usize> {
        s.inner().read(|cx| {
            let mut n = 0;
            for item in cx.dirents.of_ino(dir)? {
                item?;
                n += 1;
            }
            Ok(n)
        })
    }

    fn all_names(s: &Store, dir: InodeNo) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut off = 0;
        loop {
            let page = s.readdir(dir, off, 500)?;
            let Some(last) = page.last() else {
                return Ok(out);
            };
            off = last.cookie;
            out.extend(
                page.into_iter()
                    .map(|e| e.name)
                    .filter(|n| n != b"." && n != b".."),
            );
        }
    }

    #[test]
    fn a_big_lower_directory_is_imported_in_batches_that_resume_after_a_failure() -> Result<()> {
        // Regression (issue 10, defect 16): a huge lower directory was imported in one store
        // operation, under the lock, with every entry in memory at once. Now it is imported
        // IMPORT_BATCH entries per operation; a failure in a middle batch keeps the batches
        // before it, and the next access imports the rest (after a reopen too).
        const N: usize = 5000;
        let (_t, lower, store) = setup(N)?;
        let batches: Arc<Mutex<Vec<usize>>> = Arc::default();
        let record = |fail_at: Option<usize>| -> LowerHook {
            let batches = batches.clone();
            Arc::new(move |io| {
                if let LowerIo::Entries(i) = io {
                    batches.lock().push(i);
                    if Some(i) == fail_at {
                        return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EIO)));
                    }
                }
                Ok(())
            })
        };
        let big = {
            let s = Store::open(&store, &opts(Some(&lower)))?;
            let big = s.lookup(InodeNo::ROOT, b"big")?.ino;
            set_hook(&s, Some(record(Some(2))))?;
            match s.readdir(big, 0, 10) {
                Err(e) => assert_eq!(e.errno(), libc::EIO, "{e}"),
                Ok(v) => panic!("the import did not fail: {} entries", v.len()),
            }
            assert_eq!(*batches.lock(), [0, 1, 2], "batches tried");
            assert_eq!(
                entries_now(&s, big)?,
                2 * IMPORT_BATCH,
                "earlier batches kept"
            );
            assert!(s.inner().read(|cx| cx.import_pending(big))?.is_some());
            s.commit()?;
            assert!(s.check()?.is_clean(), "{:#?}", s.check()?.problems);
            s.close()?;
            big
        };
        let s = Store::open(&store, &opts(None))?;
        assert_eq!(entries_now(&s, big)?, 2 * IMPORT_BATCH, "after reopening");
        batches.lock().clear();
        set_hook(&s, Some(record(None)))?;
        let names = all_names(&s, big)?;
        let want: Vec<Vec<u8>> = (0..N).map(|i| format!("f{i:05}").into_bytes()).collect();
        assert_eq!(names, want, "every lower entry, once, in order");
        assert_eq!(
            *batches.lock(),
            [2, 3, 4],
            "the import resumed at the failed batch, without redoing the others"
        );
        assert!(s.inner().read(|cx| cx.import_pending(big))?.is_none());
        assert_eq!(s.getattr(big)?.nlink, 2);
        s.commit()?;
        assert!(s.check()?.is_clean(), "{:#?}", s.check()?.problems);
        Ok(())
    }

    #[test]
    fn only_an_unmodified_lower_file_maps_whole_onto_its_lower_file() -> Result<()> {
        use std::io::Read;
        let (_t, lower, store) = setup(0)?;
        std::fs::write(lower.join("blocks"), vec![3u8; 3 * 4096 + 100])?;
        std::fs::write(lower.join("grown"), vec![4u8; 4096])?;
        let s = Store::open(&store, &opts(Some(&lower)))?;
        let whole = |name: &[u8]| -> Result<Option<File>> {
            s.whole_lower_file(s.lookup(InodeNo::ROOT, name)?.ino)
        };
        let mut f = whole(b"other")?.ok_or(Error::Invalid("other is not whole"))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        assert_eq!(
            bytes,
            vec![7u8; 10_000],
            "the descriptor reads the lower bytes"
        );
        assert!(whole(b"blocks")?.is_some());
        assert!(whole(b"big")?.is_none(), "a directory");
        // One block written: that block now lives in the pool.
        let blocks = s.lookup(InodeNo::ROOT, b"blocks")?.ino;
        s.write(blocks, 4096, b"x")?;
        assert!(s.whole_lower_file(blocks)?.is_none());
        // Grown past the lower file: the extents still match, the size does not.
        let grown = s.lookup(InodeNo::ROOT, b"grown")?.ino;
        s.setattr(
            grown,
            &SetAttr {
                size: Some(8192),
                ..Default::default()
            },
        )?;
        assert!(s.whole_lower_file(grown)?.is_none());
        // Shrunk: the size differs from the lower file's.
        let small = s.lookup(InodeNo::ROOT, b"small")?.ino;
        s.setattr(
            small,
            &SetAttr {
                size: Some(5),
                ..Default::default()
            },
        )?;
        assert!(s.whole_lower_file(small)?.is_none());
        // A store without a lower directory has none.
        let (_t2, _lower2, store2) = setup(0)?;
        let plain = Store::open(&store2, &opts(None))?;
        assert!(plain.whole_lower_file(InodeNo::ROOT)?.is_none());
        Ok(())
    }

    #[test]
    fn the_open_file_cache_keeps_recently_used_files() -> Result<()> {
        // Regression (issue 11): the open-lower-file cache was a FIFO with no refresh on hit, so
        // the most used file was closed as soon as OPEN_FILES others had been opened after it.
        let t = tempfile::tempdir()?;
        let n = OPEN_FILES.get() + 10;
        for i in 0..n {
            std::fs::write(t.path().join(format!("f{i}")), b"x")?;
        }
        let tree = LowerTree::open(t.path())?;
        let rec = |i: usize| -> Result<LowerFileRecord> {
            let md = std::fs::metadata(t.path().join(format!("f{i}")))?;
            Ok(LowerFileRecord {
                path: format!("f{i}").into_bytes(),
                dev: md.dev(),
                ino: md.ino(),
                size: md.size(),
                mtime: ts(md.mtime(), md.mtime_nsec()),
            })
        };
        let hot = tree.file(0, &rec(0)?)?;
        for i in 1..n {
            tree.file(i as u64, &rec(i)?)?;
            // File 0 is used all the time.
            let again = tree.file(0, &rec(0)?)?;
            assert!(
                Arc::ptr_eq(&hot, &again),
                "file 0 reopened after {i} others"
            );
        }
        assert_eq!(tree.open.lock().len(), OPEN_FILES.get(), "bounded");
        assert!(
            !tree.open.lock().contains(&1),
            "the least recently used file is the one closed"
        );
        Ok(())
    }
}
