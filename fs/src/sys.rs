//! Every `unsafe` call of the adapter: pipes, `splice`, `vmsplice` and `write` on raw
//! descriptors for the zero-copy read path. Each wrapper is safe to call; the blocks say why.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The page size the pipe and the zero page are built around.
pub const PAGE: usize = 4096;

/// Zeros that holes are answered from: `vmsplice` hands references to these pages to the
/// pipe, so they must never change. They are immutable, so they never do.
#[repr(C, align(4096))]
pub struct ZeroPages(pub [u8; 16 * PAGE]);

pub static ZEROS: ZeroPages = ZeroPages([0u8; 16 * PAGE]);

fn check(rc: libc::ssize_t) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// A pipe, `O_CLOEXEC`: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: `fds` is a valid, writable array of two ints, as pipe2(2) requires.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Set a pipe's capacity (`F_SETPIPE_SZ`); returns the capacity the kernel granted.
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let want =
        libc::c_int::try_from(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory of ours.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
    check(rc as libc::ssize_t)
}

/// `write(2)` once; may be short.
pub fn write(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a live slice of `data.len()` readable bytes for the whole call.
    check(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })
}

/// Move up to `len` bytes from file `src` at `*off` into pipe `dst` (`splice(2)`); advances
/// `*off`. Returns 0 at the file's end.
pub fn splice_from_file(
    src: BorrowedFd<'_>,
    off: &mut u64,
    dst: BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    let mut o =
        libc::loff_t::try_from(*off).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `o` is a valid loff_t the kernel may update; no other memory is passed.
    let n = check(unsafe {
        libc::splice(
            src.as_raw_fd(),
            &mut o,
            dst.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            0,
        )
    })?;
    *off = o as u64;
    Ok(n)
}

/// Move exactly `len` bytes from pipe `src` to `dst` in one `splice(2)` (the FUSE device takes a
/// whole reply per call and fails otherwise).
pub fn splice_from_pipe(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both offsets are null (neither end is seekable); no memory of ours is passed.
    check(unsafe {
        libc::splice(
            src.as_raw_fd(),
            std::ptr::null_mut(),
            dst.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            0,
        )
    })
}

/// Reference up to `len` bytes of [`ZEROS`] into pipe `dst` (`vmsplice(2)`); may be short.
pub fn vmsplice_zeros(dst: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: ZEROS.0.as_ptr() as *mut libc::c_void,
        iov_len: len.min(ZEROS.0.len()),
    };
    // SAFETY: the iovec points into `ZEROS`, a 'static immutable buffer: the pipe keeps
    // references to its pages after the call returns, which is sound only because those pages
    // live forever and are never written. No flag (no SPLICE_F_GIFT) gives the pages away.
    check(unsafe { libc::vmsplice(dst.as_raw_fd(), &iov, 1, 0) })
}

/// The descriptor of a store file, borrowed for as long as the file is.
pub fn file_fd(f: &dyn cowstore::io::FileIo) -> Option<BorrowedFd<'_>> {
    let fd = f.raw_fd()?;
    // SAFETY: `FileIo::raw_fd` is the descriptor the file object owns and keeps open for its
    // whole life; the returned borrow cannot outlive `f`.
    Some(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// The effective user id.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
