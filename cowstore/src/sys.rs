//! The store's only `unsafe`: thin wrappers over Linux syscalls that std does not offer.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `fallocate(2)` on a file descriptor.
pub fn fallocate(fd: &impl AsRawFd, mode: libc::c_int, off: u64, len: u64) -> io::Result<()> {
    let (off, len) = (to_off(off)?, to_off(len)?);
    loop {
        // SAFETY: plain syscall on a valid, borrowed descriptor; no memory is passed.
        let r = unsafe { libc::fallocate(fd.as_raw_fd(), mode, off, len) };
        match cvt(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(|_| ()),
        }
    }
}

/// One `copy_file_range(2)` call; returns the bytes copied (0 at the source's end).
pub fn copy_file_range(
    src: RawFd,
    src_off: u64,
    dst: RawFd,
    dst_off: u64,
    len: usize,
) -> io::Result<usize> {
    let mut so = to_off(src_off)?;
    let mut doff = to_off(dst_off)?;
    // SAFETY: the offsets point at locals that outlive the call; the descriptors are valid for
    // the caller's borrow.
    let r = unsafe { libc::copy_file_range(src, &mut so, dst, &mut doff, len, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: true when taken, false when another holder has it.
pub fn try_lock_exclusive(fd: &impl AsRawFd) -> io::Result<bool> {
    // SAFETY: plain syscall on a valid descriptor.
    let r = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    match cvt(r) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `statvfs(2)` of the filesystem holding `fd`: (fragment size, blocks, available blocks).
pub fn fs_space(fd: &impl AsRawFd) -> io::Result<(u64, u64, u64)> {
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable statvfs for the duration of the call.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok((st.f_frsize, st.f_blocks, st.f_bavail))
}

fn to_off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
}

/// `openat2(2)` of `path` relative to `dir`, refusing to leave `dir` or to follow any symlink.
pub fn openat_beneath(
    dir: &impl AsRawFd,
    path: &std::ffi::CStr,
    flags: libc::c_int,
) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: an all-zero open_how is valid (no flags, no mode, no resolve restrictions).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: `path` is NUL-terminated and `how` is a valid open_how of the size passed; both
        // outlive the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
            return Ok(unsafe { std::fs::File::from_raw_fd(fd as libc::c_int) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A private view of the directory tree at `path`: a detached clone of its mounts
/// (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`) made read-only and `noatime`
/// (`mount_setattr`), returned as an `O_PATH` descriptor. Nothing reached through it can be
/// written or have its access time updated (directory listings and `readlink` update atime even
/// on files opened with `O_NOATIME`); the clone disappears with its last descriptor. Needs
/// CAP_SYS_ADMIN.
pub fn private_readonly_view(path: &std::ffi::CStr) -> io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    /// `struct mount_attr` of `<linux/mount.h>` (MOUNT_ATTR_SIZE_VER0).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOATIME: u64 = 0x10;
    const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
    // SAFETY: `path` is NUL-terminated and outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let view = unsafe { std::fs::File::from_raw_fd(fd as libc::c_int) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOATIME,
        attr_clr: MOUNT_ATTR_ATIME_MASK,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `view` is a live descriptor, the path is an empty NUL-terminated string (with
    // AT_EMPTY_PATH: the descriptor itself), and `attr` is a valid mount_attr of the size passed.
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
pub fn llistxattr(path: &std::ffi::CStr) -> io::Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for its whole length; `path` is NUL-terminated.
        let n = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(<[u8]>::to_vec)
                .collect());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    }
}

/// The value of extended attribute `name` of `path` (not following a final symlink).
pub fn lgetxattr(path: &std::ffi::CStr, name: &std::ffi::CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for its whole length; both strings are NUL-terminated.
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            _ => return Err(e),
        }
    }
}

/// 16 random bytes from the kernel (a store's id); time and pid only if getrandom fails.
pub fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    // SAFETY: `id` is writable for its 16 bytes for the duration of the call.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != id.len() as isize {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        id = (now ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    id
}
