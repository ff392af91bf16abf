//! Attributes: getattr, setattr, readlink, and the inode-flag ioctls of `lsattr`/`chattr`.

use super::filesystem::Core;
use super::snapshot::COWFS_IOC_SNAPSHOT;
use crate::error::FsError;
use crate::stats::Counters;
use cowstore::acl::Cred;
use cowstore::{FileKind, InodeAttr, InodeFlags, InodeNo, SetAttr, TimeSet};
use log::debug;

/// `FS_IOC_GETFLAGS`/`FS_IOC_SETFLAGS` (`lsattr`/`chattr`): the kernel sends them (as
/// FUSE_IOCTL, with a 4-byte argument) for its `fileattr_get`/`fileattr_set`.
const FS_IOC_GETFLAGS: u32 = libc::FS_IOC_GETFLAGS as u32;
const FS_IOC_SETFLAGS: u32 = libc::FS_IOC_SETFLAGS as u32;
/// `FS_IOC_FSGETXATTR` (`_IOR('X', 31, struct fsxattr)`, 28 bytes): the kernel asks it for the
/// current flags before every FS_IOC_SETFLAGS.
const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
const FSXATTR_LEN: usize = 28;
/// `FS_XFLAG_*` bits of `struct fsxattr` and the `FS_*_FL` flags they stand for.
const XFLAGS: [(u32, InodeFlags); 4] = [
    (0x08, InodeFlags::IMMUTABLE),
    (0x10, InodeFlags::APPEND),
    (0x40, InodeFlags::NOATIME),
    (0x80, InodeFlags::NODUMP),
];

/// `struct fsxattr` for `flags`: `fsx_xflags` first, every other field 0.
fn fsxattr(flags: InodeFlags) -> Vec<u8> {
    let xflags = XFLAGS
        .iter()
        .filter(|(_, f)| flags.contains(*f))
        .fold(0u32, |x, (bit, _)| x | bit);
    let mut out = vec![0u8; FSXATTR_LEN];
    out[..4].copy_from_slice(&xflags.to_ne_bytes());
    out
}

/// Whether `set` is the kernel's flush of the times it keeps under the writeback cache: an
/// mtime and a ctime, nothing else.
fn times_only(set: &SetAttr) -> bool {
    let SetAttr {
        mode,
        uid,
        gid,
        size,
        atime,
        mtime,
        ctime,
    } = set;
    mode.is_none()
        && uid.is_none()
        && gid.is_none()
        && size.is_none()
        && atime.is_none()
        && matches!(mtime, Some(TimeSet::At(_)))
        && ctime.is_some()
}

impl Core {
    pub fn getattr(&self, ino: InodeNo) -> Result<InodeAttr, FsError> {
        Ok(self.store()?.getattr(ino)?)
    }

    /// `set.mode` may carry the file type bits the kernel sends; only the permission bits
    /// (with setuid, setgid, sticky) are set.
    ///
    /// A truncate or chown by `cred` clears setuid/setgid and file capabilities as ext4 does
    /// (`Store::setattr_as`). Under FUSE_HANDLE_KILLPRIV_V2 the kernel leaves that to us and
    /// says so with FATTR_KILL_SUIDGID, which fuser 0.18 does not pass on; the rule it stands
    /// for is the one applied: set for a truncate by a caller without CAP_FSETID (read from
    /// /proc, only when the file has a bit to lose) and for every chown of a non-directory.
    /// Without V2 the kernel sends the cleared mode with the same request, and an explicit
    /// mode is kept as sent.
    pub fn setattr(
        &self,
        ino: InodeNo,
        mut set: SetAttr,
        cred: &dyn Cred,
    ) -> Result<InodeAttr, FsError> {
        Counters::add(&self.counters.setattrs, 1);
        set.mode = set.mode.map(|m| m & 0o7777);
        let s = self.store()?;
        if set.size.is_some() {
            // A truncate changes bytes a passthrough reader would read from the lower file.
            return self.io.writing(ino, || Ok(s.setattr_as(ino, &set, cred)?));
        }
        match s.setattr_as(ino, &set, cred) {
            // Under the writeback cache the kernel keeps a regular file's mtime and ctime, and
            // sends them in a SETATTR of those two alone (fuse_flush_times); it does so at
            // once after an unlink or a rename over the file, which changed its ctime, when the
            // store has already freed an inode nobody had open. ENOENT would be latched as a
            // writeback error of the mount (every later syncfs(2) failed):
            // the times of a file that no longer exists are set as far as anyone can tell.
            Err(cowstore::Error::NotFound) if self.cfg.writeback_cache && times_only(&set) => {
                debug!("setattr: times of freed inode {} dropped", ino.0);
                Ok(self.freed(ino, &set))
            }
            r => Ok(r?),
        }
    }

    /// What a setattr of the times of freed inode `ino` answers: no links, no bytes.
    fn freed(&self, ino: InodeNo, set: &SetAttr) -> InodeAttr {
        let ctime = set.ctime.unwrap_or_default();
        let mtime = match set.mtime {
            Some(TimeSet::At(t)) => t,
            _ => ctime,
        };
        InodeAttr {
            ino,
            kind: FileKind::Regular,
            perm: 0,
            uid: 0,
            gid: 0,
            nlink: 0,
            size: 0,
            allocated: 0,
            atime: ctime,
            mtime,
            ctime,
            crtime: ctime,
            rdev: 0,
            generation: 0,
            block_size: u32::try_from(self.block_size).unwrap_or(u32::MAX),
            flags: InodeFlags::default(),
        }
    }

    pub fn readlink(&self, ino: InodeNo) -> Result<Vec<u8>, FsError> {
        Ok(self.store()?.readlink(ino)?)
    }

    /// FS_IOC_GETFLAGS, SETFLAGS and FSGETXATTR, and cowfs's own snapshot ioctl (see
    /// `super::snapshot`); ENOTTY for any other command. The answer is exactly `out_size`
    /// bytes, as the kernel expects. GETFLAGS shows only `chattr` flags (not the read-only
    /// snapshot mark).
    pub fn ioctl(
        &self,
        ino: InodeNo,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        cred: &dyn Cred,
    ) -> Result<Vec<u8>, FsError> {
        let s = self.store()?;
        let mut out = match cmd {
            FS_IOC_GETFLAGS => (s.getattr(ino)?.flags.0 & InodeFlags::SUPPORTED.0)
                .to_ne_bytes()
                .to_vec(),
            FS_IOC_SETFLAGS => {
                let arg = in_data
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .ok_or(FsError::refused(
                        libc::EINVAL,
                        "FS_IOC_SETFLAGS: no argument",
                    ))?;
                let a = s.set_flags(ino, InodeFlags(u32::from_ne_bytes(arg)), cred.caller())?;
                (a.flags.0 & InodeFlags::SUPPORTED.0).to_ne_bytes().to_vec()
            }
            FS_IOC_FSGETXATTR => fsxattr(s.getattr(ino)?.flags),
            COWFS_IOC_SNAPSHOT => self.snapshot_ioctl(ino, in_data, cred)?,
            super::dedupe::COWFS_IOC_DEDUPE => self.dedupe_ioctl(ino, in_data, cred)?,
            _ => return Err(FsError::refused(libc::ENOTTY, "ioctl: not supported")),
        };
        out.resize(out_size as usize, 0);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::fixture;
    use super::*;
    use crate::core::FsConfig;
    use crate::error::ToErrno;
    use cowstore::Caller;

    const ROOT: Caller = Caller { uid: 0, gid: 0 };

    // Regression (issue 12, writeback_cache): the kernel flushes a regular file's times with a
    // SETATTR right after an unlink of it, when the store has already freed it; the ENOENT was
    // latched as a writeback error of the mount and failed every later syncfs(2).
    #[test]
    fn the_kernels_flush_of_times_of_a_freed_inode_succeeds_under_the_writeback_cache() {
        let t = cowstore::Timespec { sec: 5, nsec: 6 };
        let flush = SetAttr {
            mtime: Some(TimeSet::At(t)),
            ctime: Some(t),
            ..SetAttr::default()
        };
        let chmod = SetAttr {
            mode: Some(0o600),
            ctime: Some(t),
            ..SetAttr::default()
        };
        for writeback in [false, true] {
            let mut f = fixture(FsConfig::default());
            f.core.negotiated(false, writeback, false);
            let (a, o) = f
                .core
                .create(InodeNo::ROOT, b"f", 0o644, 0, ROOT)
                .expect("create");
            f.core.release(a.ino, o.fh).expect("release");
            f.core.unlink(InodeNo::ROOT, b"f").expect("unlink");
            let r = f.core.setattr(a.ino, flush.clone(), &ROOT);
            if writeback {
                let got = r.expect("times of a freed inode");
                assert_eq!((got.ino, got.nlink, got.mtime), (a.ino, 0, t));
            } else {
                assert_eq!(r.expect_err("freed").to_errno(), libc::ENOENT);
            }
            let e = f
                .core
                .setattr(a.ino, chmod.clone(), &ROOT)
                .expect_err("freed");
            assert_eq!(e.to_errno(), libc::ENOENT, "only the flush of times");
        }
    }

    #[test]
    fn fsxattr_carries_the_xflag_of_each_inode_flag() {
        let x = fsxattr(InodeFlags(InodeFlags::APPEND.0 | InodeFlags::NODUMP.0));
        assert_eq!(x.len(), FSXATTR_LEN);
        assert_eq!(x[..4], (0x10u32 | 0x80).to_ne_bytes());
        assert!(x[4..].iter().all(|b| *b == 0));
        assert_eq!(fsxattr(InodeFlags(0))[..4], [0; 4]);
    }

    #[test]
    fn flag_ioctls_answer_out_size_bytes_and_refuse_the_rest() {
        let f = fixture(FsConfig::default());
        let c = &f.core;
        let root = InodeNo::ROOT;
        let nodump = InodeFlags::NODUMP.0.to_ne_bytes();
        let set = c.ioctl(root, FS_IOC_SETFLAGS, &nodump, 4, &ROOT);
        assert_eq!(set.expect("setflags"), nodump);
        let got = c
            .ioctl(root, FS_IOC_GETFLAGS, &[], 8, &ROOT)
            .expect("getflags");
        assert_eq!(got[..4], nodump);
        assert_eq!(got.len(), 8, "resized to what the kernel asked for");
        let x = c
            .ioctl(root, FS_IOC_FSGETXATTR, &[], 28, &ROOT)
            .expect("fsx");
        assert_eq!(x[..4], 0x80u32.to_ne_bytes());
        let short = c.ioctl(root, FS_IOC_SETFLAGS, &[1, 0], 4, &ROOT);
        assert_eq!(short.expect_err("short").to_errno(), libc::EINVAL);
        let other = c.ioctl(root, 0x5401, &[], 0, &ROOT);
        assert_eq!(other.expect_err("TCGETS").to_errno(), libc::ENOTTY);
    }

    // Regression (issue 12, killpriv): with FUSE_HANDLE_KILLPRIV_V2 the kernel leaves the
    // setuid/setgid bits and file capabilities of truncate and chown to the daemon.
    #[test]
    fn truncate_and_chown_kill_privileges_as_ext4() {
        let f = fixture(FsConfig::default());
        let nobody = Caller {
            uid: 65534,
            gid: 65534,
        };
        let (a, _) = f
            .core
            .create(InodeNo::ROOT, b"f", 0o6755, 0, nobody)
            .expect("create");
        let cap = cowstore::acl::CAPABILITY_XATTR;
        f.store.setxattr(a.ino, cap, b"\x01", 0).expect("setcap");
        let size = |n| SetAttr {
            size: Some(n),
            ..SetAttr::default()
        };
        // Root (CAP_FSETID) truncates: the bits stay, the capability goes.
        let got = f.core.setattr(a.ino, size(10), &ROOT).expect("truncate");
        assert_eq!(got.perm, 0o6755);
        assert!(matches!(
            f.store.getxattr(a.ino, cap),
            Err(cowstore::Error::NoAttr)
        ));
        // An unprivileged truncate drops setuid and group-executable setgid.
        let got = f.core.setattr(a.ino, size(5), &nobody).expect("truncate");
        assert_eq!(got.perm, 0o0755);
        // chown drops setuid whoever asks; root keeps a setgid that is not group-executable.
        let set = SetAttr {
            mode: Some(0o6745),
            ..SetAttr::default()
        };
        f.core.setattr(a.ino, set, &ROOT).expect("chmod");
        let chown = SetAttr {
            uid: Some(0),
            ..SetAttr::default()
        };
        let got = f.core.setattr(a.ino, chown, &ROOT).expect("chown");
        assert_eq!(got.perm, 0o2745);
        // An explicit mode in the same request (the kernel's own clearing, without V2) wins.
        let both = SetAttr {
            uid: Some(0),
            mode: Some(0o6745),
            ..SetAttr::default()
        };
        assert_eq!(
            f.core.setattr(a.ino, both, &ROOT).expect("both").perm,
            0o6745
        );
    }

    #[test]
    fn setattr_keeps_only_permission_bits_of_the_mode() {
        let f = fixture(FsConfig::default());
        let set = SetAttr {
            mode: Some(libc::S_IFDIR | 0o1750),
            ..SetAttr::default()
        };
        let a = f.core.setattr(InodeNo::ROOT, set, &ROOT).expect("setattr");
        assert_eq!(a.perm, 0o1750);
    }
}
