//! The adapter's syscalls for the zero-copy read path — pipes, `splice`, `vmsplice`, `write` on
//! descriptors — over rustix. Its one `unsafe` block is `vmsplice`, which lends our memory to
//! the kernel beyond the call; the block says why that is sound.

use rustix::pipe::{IoSliceRaw, PipeFlags, SpliceFlags};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// The page size the pipe and the zero page are built around.
pub const PAGE: usize = 4096;

/// Zeros that holes are answered from: `vmsplice` hands references to these pages to the
/// pipe, so they must never change. They are immutable, so they never do.
#[repr(C, align(4096))]
pub struct ZeroPages(pub [u8; 16 * PAGE]);

pub static ZEROS: ZeroPages = ZeroPages([0u8; 16 * PAGE]);

/// A pipe, `O_CLOEXEC`: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?)
}

/// Set a pipe's capacity (`F_SETPIPE_SZ`); returns the capacity the kernel granted. EINVAL
/// for a size past `c_int`.
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    if libc::c_int::try_from(bytes).is_err() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(rustix::pipe::fcntl_setpipe_size(fd, bytes)?)
}

/// `write(2)` once; may be short.
pub fn write(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    Ok(rustix::io::write(fd, data)?)
}

/// Move up to `len` bytes from file `src` at `*off` into pipe `dst` (`splice(2)`); advances
/// `*off`. Returns 0 at the file's end. EINVAL for an offset past `i64::MAX`.
pub fn splice_from_file(
    src: BorrowedFd<'_>,
    off: &mut u64,
    dst: BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    if i64::try_from(*off).is_err() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(rustix::pipe::splice(
        src,
        Some(off),
        dst,
        None,
        len,
        SpliceFlags::empty(),
    )?)
}

/// Move exactly `len` bytes from pipe `src` to `dst` in one `splice(2)` (the FUSE device takes a
/// whole reply per call and fails otherwise).
pub fn splice_from_pipe(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    Ok(rustix::pipe::splice(
        src,
        None,
        dst,
        None,
        len,
        SpliceFlags::empty(),
    )?)
}

/// Reference up to `len` bytes of [`ZEROS`] into pipe `dst` (`vmsplice(2)`); may be short.
pub fn vmsplice_zeros(dst: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    let iov = [IoSliceRaw::from_slice(&ZEROS.0[..len.min(ZEROS.0.len())])];
    // SAFETY: rustix's vmsplice is unsafe because the pipe keeps references to the pages after
    // the call returns, so they must not change while a reader may still see them. The iovec
    // points into `ZEROS`, a 'static immutable buffer: its pages live forever and are never
    // written. `dst` is a pipe's write end (vmsplice into it never writes our memory), and no
    // flag (no SPLICE_F_GIFT) gives the pages away.
    Ok(unsafe { rustix::pipe::vmsplice(dst, &iov, SpliceFlags::empty()) }?)
}

/// The descriptor of a store file, borrowed for as long as the file is.
pub fn file_fd(f: &dyn cowstore::io::FileIo) -> Option<BorrowedFd<'_>> {
    f.fd()
}

/// The effective user id.
pub fn geteuid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn pipe_is_cloexec_and_sizes_are_checked() -> io::Result<()> {
        let (rd, wr) = pipe()?;
        for fd in [rd.as_fd(), wr.as_fd()] {
            assert!(rustix::io::fcntl_getfd(fd)?.contains(rustix::io::FdFlags::CLOEXEC));
        }
        let granted = set_pipe_size(wr.as_fd(), 16 * PAGE)?;
        assert!(granted >= 16 * PAGE, "{granted}");
        let e = set_pipe_size(wr.as_fd(), 1 << 40).expect_err("past c_int");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        Ok(())
    }

    #[test]
    fn splice_advances_the_offset_and_refuses_huge_ones() -> io::Result<()> {
        let f = tempfile::tempfile()?;
        std::os::unix::fs::FileExt::write_all_at(&f, b"0123456789", 0)?;
        let (rd, wr) = pipe()?;
        let mut off = 4;
        assert_eq!(splice_from_file(f.as_fd(), &mut off, wr.as_fd(), 3)?, 3);
        assert_eq!(off, 7);
        assert_eq!(vmsplice_zeros(wr.as_fd(), 2)?, 2);
        assert_eq!(write(wr.as_fd(), b"!")?, 1);
        let mut buf = [0u8; 6];
        assert_eq!(rustix::io::read(&rd, &mut buf)?, 6);
        assert_eq!(&buf, b"456\x00\x00!");
        let mut huge = 1 << 63;
        let e = splice_from_file(f.as_fd(), &mut huge, wr.as_fd(), 1).expect_err("past i64");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        Ok(())
    }
}
