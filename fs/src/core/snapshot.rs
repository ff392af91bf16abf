//! The snapshot ioctl (`cowfs snapshot`, `cowfs snapshot --delete`): a request on a file
//! descriptor of the mount, so that it carries the caller's uid, gid and pid, which decide what
//! it may copy or remove (a control socket would trust whoever connects).
//!
//! FUSE passes ioctls of a filesystem that is not CUSE "restricted": the argument's size and
//! direction come from the command number, with no retry, so the argument is one fixed-size
//! struct ([`SnapshotArg`], `_IOWR(0xC0, 1, 272 bytes)`), in and out:
//!
//! ```text
//! offset  size  field
//!      0     8  other     in: the inode (st_ino) of DST's parent (snapshot) or of DIR's
//!                             parent (delete); out: the inode of the snapshot, or the
//!                             entries removed
//!      8     4  flags     SNAP_READONLY (1), SNAP_DELETE (2)
//!     12     4  progress  in: an id (not 0) under which the daemon publishes the operation's
//!                             progress for the control socket's `progress ID`
//!                             (`crate::progress`); 0: none
//!     16   256  name      DST's or DIR's name in that parent, NUL-padded (at most 255 bytes)
//! ```
//!
//! `progress` was a zero field before it meant anything, which older daemons ignore: an older
//! command asks for no progress, and a newer command asking an older daemon finds no operation
//! under its id (and shows a spinner).
//!
//! A snapshot is asked on a descriptor of SRC (a directory or a file: opening it took read
//! permission); a removal on a descriptor of DIR. The parent is named by inode number, so the
//! store checks that the caller may reach it (search permission on its ancestors). With a
//! progress id, a snapshot of a directory counts SRC's names first (metadata only), so that
//! its copying has a total.

use super::filesystem::{report, Core, Kernel};
use crate::error::FsError;
use crate::progress::TreeOps;
use crate::stats::Counters;
use cowstore::acl::Cred;
use cowstore::{InodeNo, SnapshotOptions, Store};
use std::sync::Arc;

/// `_IOWR(0xC0, 1, struct cowfs_snapshot)`.
pub const COWFS_IOC_SNAPSHOT: u32 = (3 << 30) | ((SNAPSHOT_ARG_LEN as u32) << 16) | (0xC0 << 8) | 1;
pub const SNAPSHOT_ARG_LEN: usize = 272;
const PROGRESS_OFF: usize = 12;
const NAME_OFF: usize = 16;
pub const SNAP_READONLY: u32 = 1;
pub const SNAP_DELETE: u32 = 2;

/// The argument of [`COWFS_IOC_SNAPSHOT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotArg {
    pub other: u64,
    pub flags: u32,
    /// The id to publish progress under (`crate::progress::TreeOps`); 0: none.
    pub progress: u32,
    pub name: Vec<u8>,
}

impl SnapshotArg {
    pub fn encode(&self) -> [u8; SNAPSHOT_ARG_LEN] {
        let mut out = [0u8; SNAPSHOT_ARG_LEN];
        out[..8].copy_from_slice(&self.other.to_ne_bytes());
        out[8..12].copy_from_slice(&self.flags.to_ne_bytes());
        out[PROGRESS_OFF..NAME_OFF].copy_from_slice(&self.progress.to_ne_bytes());
        let n = self.name.len().min(SNAPSHOT_ARG_LEN - NAME_OFF - 1);
        out[NAME_OFF..NAME_OFF + n].copy_from_slice(&self.name[..n]);
        out
    }

    /// EINVAL for a short argument, unknown flags, or a name that is empty or not NUL-ended.
    pub fn decode(b: &[u8]) -> Result<SnapshotArg, FsError> {
        let bad = |what| FsError::refused(libc::EINVAL, what);
        if b.len() < SNAPSHOT_ARG_LEN {
            return Err(bad("snapshot ioctl: short argument"));
        }
        let mut other = [0u8; 8];
        other.copy_from_slice(&b[..8]);
        let mut flags = [0u8; 4];
        flags.copy_from_slice(&b[8..12]);
        let flags = u32::from_ne_bytes(flags);
        let mut progress = [0u8; 4];
        progress.copy_from_slice(&b[PROGRESS_OFF..NAME_OFF]);
        if flags & !(SNAP_READONLY | SNAP_DELETE) != 0 {
            return Err(bad("snapshot ioctl: unknown flags"));
        }
        let field = &b[NAME_OFF..SNAPSHOT_ARG_LEN];
        let len = field
            .iter()
            .position(|&c| c == 0)
            .ok_or(bad("snapshot ioctl: name not NUL-terminated"))?;
        if len == 0 {
            return Err(bad("snapshot ioctl: empty name"));
        }
        Ok(SnapshotArg {
            other: u64::from_ne_bytes(other),
            flags,
            progress: u32::from_ne_bytes(progress),
            name: field[..len].to_vec(),
        })
    }
}

impl Core {
    /// Serve [`COWFS_IOC_SNAPSHOT`] on inode `ino` for `cred`; the answer is the argument with
    /// `other` set to the result.
    pub fn snapshot_ioctl(
        &self,
        ino: InodeNo,
        in_data: &[u8],
        cred: &dyn Cred,
    ) -> Result<Vec<u8>, FsError> {
        snapshot_request(
            self.store()?,
            &*self.kernel,
            &self.tree_ops,
            ino,
            in_data,
            cred,
        )
    }

    /// A snapshot (not a removal) on a mount whose kernel may cache writes the store has not
    /// seen (writeback cache, files open for writing) must have them written back first, and
    /// that waits for WRITEs the request threads serve: it becomes a [`SnapshotJob`], to run
    /// off them. `None`: serve it with [`Core::ioctl`] as usual.
    pub fn snapshot_job(
        &self,
        ino: InodeNo,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        cred: impl Cred + Send + 'static,
    ) -> Option<SnapshotJob> {
        if cmd != COWFS_IOC_SNAPSHOT || !self.cfg.writeback_cache {
            return None;
        }
        let arg = SnapshotArg::decode(in_data).ok()?;
        let dirty = self.io.writable_inodes();
        if arg.flags & SNAP_DELETE != 0 || dirty.is_empty() {
            return None;
        }
        Some(SnapshotJob {
            store: self.store_arc().ok()?,
            kernel: self.kernel.clone(),
            tree_ops: self.tree_ops.clone(),
            counters: self.counters.clone(),
            dirty,
            ino,
            in_data: in_data.to_vec(),
            out_size,
            cred: Box::new(cred),
        })
    }
}

/// A snapshot that first has the kernel write back what it caches of every file open for
/// writing (a file open for writing may be anywhere in the tree). syncfs(2) would not do: the
/// kernel does not wait for a FUSE mount's writeback in it.
pub struct SnapshotJob {
    store: Arc<Store>,
    kernel: Arc<dyn Kernel>,
    tree_ops: Arc<TreeOps>,
    counters: Arc<Counters>,
    dirty: Vec<InodeNo>,
    ino: InodeNo,
    in_data: Vec<u8>,
    out_size: u32,
    cred: Box<dyn Cred + Send>,
}

impl std::fmt::Debug for SnapshotJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotJob")
            .field("ino", &self.ino)
            .field("dirty", &self.dirty)
            .finish()
    }
}

impl SnapshotJob {
    /// Write back, then snapshot; the ioctl's answer, `out_size` bytes, or the errno (logged
    /// and counted like every failed request's).
    pub fn run(self) -> Result<Vec<u8>, i32> {
        let r = self
            .dirty
            .iter()
            .try_for_each(|&ino| self.kernel.write_back(ino, 0))
            .map_err(FsError::Kernel)
            .and_then(|()| {
                snapshot_request(
                    &self.store,
                    &*self.kernel,
                    &self.tree_ops,
                    self.ino,
                    &self.in_data,
                    &*self.cred,
                )
            });
        match r {
            Ok(mut out) => {
                out.resize(self.out_size as usize, 0);
                Ok(out)
            }
            Err(e) => Err(report(&self.counters, "ioctl", e)),
        }
    }
}

/// [`COWFS_IOC_SNAPSHOT`] on inode `ino` for `cred`, in store `s`; progress is published in
/// `tree_ops` under the id the request carries.
fn snapshot_request(
    s: &Store,
    kernel: &dyn Kernel,
    tree_ops: &TreeOps,
    ino: InodeNo,
    in_data: &[u8],
    cred: &dyn Cred,
) -> Result<Vec<u8>, FsError> {
    let mut arg = SnapshotArg::decode(in_data)?;
    let parent = InodeNo(arg.other);
    if arg.flags & SNAP_DELETE != 0 {
        // The descriptor is DIR's: the entry must name it.
        if s.lookup(parent, &arg.name)?.ino != ino {
            return Err(FsError::refused(
                libc::ENOENT,
                "snapshot --delete: the name does not name the directory",
            ));
        }
        // Published until the answer: the guard marks it finished once committed.
        let running = tree_ops.start(arg.progress, "delete");
        let n = match &running {
            Some(op) => {
                s.remove_tree_with_progress(parent, &arg.name, cred, &mut |p| op.report(p))?
            }
            None => s.remove_tree(parent, &arg.name, cred)?,
        };
        if let Some(op) = &running {
            op.committing();
        }
        s.commit()?;
        kernel.entry_changed(parent, &arg.name);
        kernel.attrs_changed(parent);
        arg.other = n;
    } else {
        let opts = SnapshotOptions {
            readonly: arg.flags & SNAP_READONLY != 0,
        };
        // Published until the answer: the guard marks it finished once committed.
        let running = tree_ops.start(arg.progress, "snapshot");
        let a = match &running {
            Some(op) => {
                s.snapshot_with_progress(ino, parent, &arg.name, &opts, cred, &mut |p| {
                    op.report(p)
                })?
            }
            None => s.snapshot(ino, parent, &arg.name, &opts, cred)?,
        };
        if let Some(op) = &running {
            op.committing();
        }
        // Durable when the command returns.
        s.commit()?;
        // The command looked the name up first: the kernel holds a negative entry for it.
        kernel.entry_changed(parent, &arg.name);
        kernel.attrs_changed(parent);
        arg.other = a.ino.0;
    }
    Ok(arg.encode().to_vec())
}

#[cfg(test)]
mod tests {
    use super::super::testing::fixture;
    use super::*;
    use crate::core::FsConfig;
    use crate::error::ToErrno;
    use cowstore::{Caller, NewInode};

    #[test]
    fn the_command_is_iowr_of_the_argument_size() {
        assert_eq!(COWFS_IOC_SNAPSHOT >> 30, 3, "read and write");
        assert_eq!((COWFS_IOC_SNAPSHOT >> 16) & 0x3fff, SNAPSHOT_ARG_LEN as u32);
        let a = SnapshotArg {
            other: 42,
            flags: SNAP_READONLY,
            progress: 0xdead_beef,
            name: b"snap".to_vec(),
        };
        assert_eq!(SnapshotArg::decode(&a.encode()).ok(), Some(a));
        let mut unterminated = [b'x'; SNAPSHOT_ARG_LEN];
        unterminated[..12].fill(0);
        assert_eq!(
            SnapshotArg::decode(&unterminated).map_err(|e| e.to_errno()),
            Err(libc::EINVAL)
        );
        assert!(SnapshotArg::decode(&[0u8; 10]).is_err());
    }

    // Regression (issue 12, writeback_cache): a snapshot cloned what the store held while the
    // kernel still cached writes to files open for writing (syncfs in the command did not
    // help: the kernel does not wait for a FUSE mount's writeback there): the copy missed them.
    #[test]
    fn a_snapshot_beside_a_file_open_for_writing_waits_for_its_writeback() {
        let mut f = fixture(FsConfig::default());
        f.core.negotiated(false, true, false);
        let root = InodeNo::ROOT;
        let d = f
            .store
            .mkdir(root, b"d", 0o755, Caller::ROOT)
            .expect("mkdir");
        let arg = |name: &[u8], flags| {
            SnapshotArg {
                other: root.0,
                flags,
                progress: 0,
                name: name.to_vec(),
            }
            .encode()
        };
        let job = |a: &[u8]| {
            f.core
                .snapshot_job(d.ino, COWFS_IOC_SNAPSHOT, a, 272, Caller::ROOT)
        };
        assert!(job(&arg(b"s1", 0)).is_none(), "nothing open for writing");
        let (w, o) = f
            .core
            .create(d.ino, b"w", 0o644, 0, Caller::ROOT)
            .expect("create");
        assert!(
            job(&arg(b"s1", SNAP_DELETE)).is_none(),
            "a removal clones nothing"
        );
        let j = job(&arg(b"s1", SNAP_READONLY)).expect("deferred");
        assert!(
            f.kernel.written_back.lock().is_empty(),
            "not on the request thread"
        );
        let out = j.run().expect("snapshot");
        assert_eq!(out.len(), 272);
        assert_eq!(*f.kernel.written_back.lock(), vec![(w.ino, 0)]);
        let snap = SnapshotArg::decode(&out).expect("answer").other;
        assert_eq!(f.store.lookup(root, b"s1").expect("lookup").ino.0, snap);
        f.core.release(w.ino, o.fh).expect("release");
        assert!(
            job(&arg(b"s2", 0)).is_none(),
            "closed: written back at its close"
        );
        let mut plain = fixture(FsConfig::default());
        plain.core.negotiated(false, false, false);
        plain
            .core
            .create(root, b"w", 0o644, 0, Caller::ROOT)
            .expect("create");
        let a = arg(b"s", 0);
        let none = plain
            .core
            .snapshot_job(root, COWFS_IOC_SNAPSHOT, &a, 272, Caller::ROOT);
        assert!(none.is_none(), "no writeback cache, nothing cached");
    }

    #[test]
    fn snapshot_and_delete_through_the_ioctl() {
        let f = fixture(FsConfig::default());
        let root = InodeNo::ROOT;
        let d = f
            .store
            .mkdir(root, b"d", 0o755, Caller::ROOT)
            .expect("mkdir");
        f.store
            .create(d.ino, b"f", &NewInode::regular(0o644), Caller::ROOT)
            .expect("create");
        let arg = SnapshotArg {
            other: root.0,
            flags: SNAP_READONLY,
            progress: 0,
            name: b"snap".to_vec(),
        };
        let out = f
            .core
            .ioctl(d.ino, COWFS_IOC_SNAPSHOT, &arg.encode(), 272, &Caller::ROOT)
            .expect("snapshot");
        let snap = SnapshotArg::decode(&out).expect("answer").other;
        assert_eq!(f.store.lookup(root, b"snap").expect("lookup").ino.0, snap);
        let del = SnapshotArg {
            other: root.0,
            flags: SNAP_DELETE,
            progress: 0,
            name: b"snap".to_vec(),
        };
        // On another directory's descriptor the name must not be taken for it.
        let wrong = f
            .core
            .ioctl(d.ino, COWFS_IOC_SNAPSHOT, &del.encode(), 272, &Caller::ROOT);
        assert_eq!(wrong.map_err(|e| e.to_errno()), Err(libc::ENOENT));
        f.core
            .ioctl(
                InodeNo(snap),
                COWFS_IOC_SNAPSHOT,
                &del.encode(),
                272,
                &Caller::ROOT,
            )
            .expect("delete");
        assert!(f.store.lookup(root, b"snap").is_err());
    }

    #[test]
    fn an_operation_with_a_progress_id_publishes_its_phases_and_its_end() {
        // Issue 13 (progress of `cowfs snapshot`): the ioctl publishes where it is under the
        // caller's id, ends at the total it counted, and stays readable once finished.
        let f = fixture(FsConfig::default());
        let root = InodeNo::ROOT;
        let d = f
            .store
            .mkdir(root, b"d", 0o755, Caller::ROOT)
            .expect("mkdir");
        for i in 0..3000 {
            f.store
                .create(
                    d.ino,
                    format!("{i}").as_bytes(),
                    &NewInode::regular(0o644),
                    Caller::ROOT,
                )
                .expect("create");
        }
        let ops = f.core.tree_ops();
        assert_eq!(ops.get(5), None);
        let arg = SnapshotArg {
            other: root.0,
            flags: 0,
            progress: 5,
            name: b"snap".to_vec(),
        };
        f.core
            .ioctl(d.ino, COWFS_IOC_SNAPSHOT, &arg.encode(), 272, &Caller::ROOT)
            .expect("snapshot");
        let p = ops.get(5).expect("published");
        assert_eq!(
            (p.op.as_str(), p.done, p.total, p.finished),
            ("snapshot", 3001, Some(3001), true),
            "{p:?}"
        );
        let snap = f.store.lookup(root, b"snap").expect("lookup").ino;
        let del = SnapshotArg {
            other: root.0,
            flags: SNAP_DELETE,
            progress: 6,
            name: b"snap".to_vec(),
        };
        f.core
            .ioctl(snap, COWFS_IOC_SNAPSHOT, &del.encode(), 272, &Caller::ROOT)
            .expect("delete");
        let p = ops.get(6).expect("published");
        assert_eq!(
            (p.op.as_str(), p.done, p.total, p.finished),
            ("delete", 3001, Some(3001), true),
            "{p:?}"
        );
        assert!(
            ops.get(5).is_some(),
            "the other operation's report is its own"
        );
    }
}
