//! The store's syscalls that std does not offer, over rustix's safe wrappers: each one adds the
//! errno conventions the store relies on (EINTR retried, offsets past `i64::MAX` refused with
//! EFBIG). Its one `unsafe` block is `mount_setattr(2)`, which rustix does not wrap.

use rustix::fs::{FallocateFlags, FlockOperation, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// `fallocate(2)` on a file descriptor; retried on EINTR.
pub fn fallocate(fd: impl AsFd, mode: FallocateFlags, off: u64, len: u64) -> io::Result<()> {
    let (off, len) = (to_off(off)?, to_off(len)?);
    loop {
        match rustix::fs::fallocate(&fd, mode, off, len) {
            Err(Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// One `copy_file_range(2)` call; returns the bytes copied (0 at the source's end).
pub fn copy_file_range(
    src: impl AsFd,
    src_off: u64,
    dst: impl AsFd,
    dst_off: u64,
    len: usize,
) -> io::Result<usize> {
    let mut so = to_off(src_off)?;
    let mut doff = to_off(dst_off)?;
    Ok(rustix::fs::copy_file_range(
        src,
        Some(&mut so),
        dst,
        Some(&mut doff),
        len,
    )?)
}

/// `flock(LOCK_EX | LOCK_NB)`: true when taken, false when another holder has it.
pub fn try_lock_exclusive(fd: impl AsFd) -> io::Result<bool> {
    match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `statvfs(2)` of the filesystem holding `fd`: (fragment size, blocks, available blocks).
pub fn fs_space(fd: impl AsFd) -> io::Result<(u64, u64, u64)> {
    let st = rustix::fs::fstatvfs(fd)?;
    Ok((st.f_frsize, st.f_blocks, st.f_bavail))
}

/// An offset the kernel takes as a signed `loff_t`: EFBIG past `i64::MAX`.
fn to_off(v: u64) -> io::Result<u64> {
    if i64::try_from(v).is_ok() {
        Ok(v)
    } else {
        Err(io::Error::from_raw_os_error(libc::EFBIG))
    }
}

/// `openat2(2)` of `path` relative to `dir` (`O_CLOEXEC` added), refusing to leave `dir` or to
/// follow any symlink; retried on EINTR.
pub fn openat_beneath(dir: impl AsFd, path: &CStr, flags: OFlags) -> io::Result<std::fs::File> {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    loop {
        match rustix::fs::openat2(&dir, path, flags | OFlags::CLOEXEC, Mode::empty(), resolve) {
            Ok(fd) => return Ok(fd.into()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A private view of the directory tree at `path`: a detached clone of its mounts
/// (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`) made read-only and `noatime`
/// (`mount_setattr`), returned as an `O_PATH` descriptor. Nothing reached through it can be
/// written or have its access time updated (directory listings and `readlink` update atime even
/// on files opened with `O_NOATIME`); the clone disappears with its last descriptor. Needs
/// CAP_SYS_ADMIN.
pub fn private_readonly_view(path: &CStr) -> io::Result<std::fs::File> {
    use rustix::mount::OpenTreeFlags;
    /// `struct mount_attr` of `<linux/mount.h>` (MOUNT_ATTR_SIZE_VER0).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOATIME: u64 = 0x10;
    const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
    let view = std::fs::File::from(rustix::mount::open_tree(
        rustix::fs::CWD,
        path,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )?);
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOATIME,
        attr_clr: MOUNT_ATTR_ATIME_MASK,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: rustix has no mount_setattr (its `not_implemented` list names it), so this is the
    // raw syscall. Every pointer passed is valid for the whole call and only read by the kernel:
    // `view` is a live descriptor we own; the path is a NUL-terminated empty string (with
    // AT_EMPTY_PATH: the descriptor itself); `attr` is a `#[repr(C)]` mount_attr of exactly the
    // size passed (MOUNT_ATTR_SIZE_VER0). The kernel returns no descriptor or memory to us.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            view.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(view)
}

/// Names of the extended attributes of `path` (not following a final symlink).
pub fn llistxattr(path: &CStr) -> io::Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf
                    .split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            Err(Errno::RANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The value of extended attribute `name` of `path` (not following a final symlink).
pub fn lgetxattr(path: &CStr, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// 16 random bytes from the kernel (a store's id); time and pid only if getrandom fails.
pub fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if !matches!(
        rustix::rand::getrandom(&mut id[..], rustix::rand::GetRandomFlags::empty()),
        Ok(16)
    ) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        id = (now ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn offsets_past_i64_max_are_efbig() {
        let f = tempfile::tempfile().expect("tempfile");
        let e = fallocate(&f, FallocateFlags::empty(), 1 << 63, 1).expect_err("EFBIG");
        assert_eq!(e.raw_os_error(), Some(libc::EFBIG));
        let e = copy_file_range(&f, 1 << 63, &f, 0, 1).expect_err("EFBIG");
        assert_eq!(e.raw_os_error(), Some(libc::EFBIG));
    }

    #[test]
    fn copy_file_range_copies_at_offsets() {
        let mut src = tempfile::tempfile().expect("tempfile");
        src.write_all(b"0123456789").expect("write");
        let dst = tempfile::tempfile().expect("tempfile");
        // Fallbacks in DiskFile key on these errnos; here the copy itself works or says why.
        match copy_file_range(&src, 3, &dst, 5, 4) {
            Ok(n) => {
                assert_eq!(n, 4);
                let mut buf = [0u8; 9];
                std::os::unix::fs::FileExt::read_exact_at(&dst, &mut buf, 0).expect("read");
                assert_eq!(&buf, b"\x00\x00\x00\x00\x003456");
            }
            Err(e) => assert!(
                matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
                ),
                "{e}"
            ),
        }
        assert_eq!(copy_file_range(&src, 10, &dst, 0, 4).expect("at end"), 0);
    }

    #[test]
    fn flock_is_a_try_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lock");
        let a = std::fs::File::create(&path).expect("create");
        let b = std::fs::File::open(&path).expect("open");
        assert!(try_lock_exclusive(&a).expect("first"));
        assert!(!try_lock_exclusive(&b).expect("second is refused, not an error"));
        drop(a);
        assert!(try_lock_exclusive(&b).expect("after release"));
    }

    #[test]
    fn openat_beneath_refuses_symlinks_and_escapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), b"x").expect("write");
        std::os::unix::fs::symlink("f", dir.path().join("l")).expect("symlink");
        let root = std::fs::File::open(dir.path()).expect("open dir");
        let f = openat_beneath(&root, c"f", OFlags::RDONLY).expect("plain file");
        let fl = rustix::io::fcntl_getfd(&f).expect("getfd");
        assert!(fl.contains(rustix::io::FdFlags::CLOEXEC));
        let e = openat_beneath(&root, c"l", OFlags::RDONLY).expect_err("symlink");
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        let e = openat_beneath(&root, c"../x", OFlags::RDONLY).expect_err("escape");
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
    }

    #[test]
    fn xattrs_of_a_path_without_following() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").expect("write");
        let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("cstr");
        let big = vec![7u8; 5000];
        if rustix::fs::lsetxattr(&path, "user.big", &big, rustix::fs::XattrFlags::empty()).is_err()
        {
            return; // tmpfs without user xattrs: nothing to list
        }
        let names = llistxattr(&cpath).expect("list");
        assert!(names.contains(&b"user.big".to_vec()), "{names:?}");
        // Larger than the first 4 KiB buffer: grown on ERANGE.
        assert_eq!(lgetxattr(&cpath, c"user.big").expect("get"), big);
        let e = lgetxattr(&cpath, c"user.none").expect_err("absent");
        assert_eq!(e.raw_os_error(), Some(libc::ENODATA));
    }

    #[test]
    fn private_view_is_read_only_and_noatime() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), b"x").expect("write");
        let cpath =
            std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("cstr");
        let view = match private_readonly_view(&cpath) {
            Ok(v) => v,
            // Without CAP_SYS_ADMIN there is no view to test.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => return,
            Err(e) => panic!("open_tree/mount_setattr: {e}"),
        };
        let f = openat_beneath(&view, c"f", OFlags::RDONLY).expect("read through the view");
        assert_eq!(
            std::fs::read(format!("/proc/self/fd/{}", f.as_raw_fd())).expect("read"),
            b"x"
        );
        let e = openat_beneath(&view, c"new", OFlags::WRONLY | OFlags::CREATE).expect_err("write");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        let flags = rustix::fs::fstatvfs(&view).expect("statvfs").f_flag;
        assert!(
            flags.contains(rustix::fs::StatVfsMountFlags::RDONLY),
            "{flags:?}"
        );
        assert!(
            flags.contains(rustix::fs::StatVfsMountFlags::NOATIME),
            "{flags:?}"
        );
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(random_id(), random_id());
    }
}
