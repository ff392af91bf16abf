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
use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Lower files kept open at once.
const OPEN_FILES: usize = 256;

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

/// The open lower files by id, and their ids oldest first (a small LRU).
type OpenFiles = (HashMap<u64, Arc<LowerFile>>, VecDeque<u64>);

#[derive(Debug)]
pub(crate) struct LowerTree {
    pub path: PathBuf,
    root: File,
    pub dev: u64,
    pub ino: u64,
    open: Mutex<OpenFiles>,
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
                    .custom_flags_dir()
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
            open: Mutex::new((HashMap::new(), VecDeque::new())),
        })
    }

    /// Open a directory of the lower tree ("" is the root).
    fn open_dir(&self, rel: &[u8]) -> Result<File> {
        let rel = if rel.is_empty() { b".".as_slice() } else { rel };
        sys::openat_beneath(
            &self.root,
            &cstr(rel)?,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )
        .map_err(|e| lower_io(&self.path, rel, e))
    }

    /// Every entry of lower directory `rel`, with its attributes, symlink target and xattrs.
    pub fn list(&self, rel: &[u8]) -> Result<Vec<LowerEntry>> {
        let dir = self.open_dir(rel)?;
        let base = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let mut out = Vec::new();
        for item in std::fs::read_dir(&base).map_err(|e| lower_io(&self.path, rel, e))? {
            let item = item.map_err(|e| lower_io(&self.path, rel, e))?;
            let name = item.file_name().as_bytes().to_vec();
            let full = Path::new(&base).join(item.file_name());
            let md = match std::fs::symlink_metadata(&full) {
                Ok(m) => m,
                // Removed while we listed: it is simply not there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(lower_io(&self.path, &name, e)),
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
                    .map_err(|e| lower_io(&self.path, &name, e))?
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
                name,
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
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The lower file behind extents of lower id `id`, opened (or taken from the cache) and
    /// verified against its record.
    pub fn file(&self, id: u64, rec: &LowerFileRecord) -> Result<Arc<LowerFile>> {
        let cached = {
            let g = self.open.lock().unwrap_or_else(|p| p.into_inner());
            g.0.get(&id).cloned()
        };
        if let Some(f) = cached {
            // Verified again on every use (one fstat): a lower file rewritten while it is open
            // must not have its new bytes served as the old file's.
            let md = f.file.metadata()?;
            if let Err(e) = self.verify(rec, &md) {
                let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
                g.0.remove(&id);
                g.1.retain(|&i| i != id);
                return Err(e);
            }
            return Ok(f);
        }
        let name = cstr(&rec.path)?;
        let file = match sys::openat_beneath(
            &self.root,
            &name,
            libc::O_RDONLY | libc::O_NOATIME | libc::O_NOFOLLOW,
        ) {
            // O_NOATIME needs ownership of the file (or CAP_FOWNER).
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                sys::openat_beneath(&self.root, &name, libc::O_RDONLY | libc::O_NOFOLLOW)
            }
            other => other,
        }
        .map_err(|e| lower_io(&self.path, &rec.path, e))?;
        self.verify(rec, &file.metadata()?)?;
        let f = Arc::new(LowerFile { file });
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        g.0.insert(id, f.clone());
        g.1.push_back(id);
        while g.1.len() > OPEN_FILES {
            if let Some(old) = g.1.pop_front() {
                g.0.remove(&old);
            }
        }
        Ok(f)
    }

    /// EIO (and a log line) if the lower file `md` describes is not the one `rec` recorded.
    fn verify(&self, rec: &LowerFileRecord, md: &std::fs::Metadata) -> Result<()> {
        let mtime = ts(md.mtime(), md.mtime_nsec());
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
            return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EIO)));
        }
        Ok(())
    }

    /// How a recorded lower file differs from what is there now, if it does.
    pub fn changed(&self, rec: &LowerFileRecord) -> Option<String> {
        let name = cstr(&rec.path).ok()?;
        let file = match sys::openat_beneath(&self.root, &name, libc::O_PATH | libc::O_NOFOLLOW) {
            Ok(f) => f,
            Err(e) => return Some(format!("cannot be opened: {e}")),
        };
        let md = match file.metadata() {
            Ok(m) => m,
            Err(e) => return Some(format!("cannot be examined: {e}")),
        };
        let mtime = ts(md.mtime(), md.mtime_nsec());
        let mut what = Vec::new();
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

trait DirFlags {
    fn custom_flags_dir(&mut self) -> &mut Self;
}

impl DirFlags for std::fs::OpenOptions {
    fn custom_flags_dir(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_DIRECTORY)
    }
}

fn lower_io(root: &Path, rel: &[u8], e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(
        e.kind(),
        format!(
            "lower {}/{}: {e}",
            root.display(),
            String::from_utf8_lossy(rel)
        ),
    ))
}
