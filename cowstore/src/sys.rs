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
