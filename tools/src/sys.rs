//! The command's `unsafe` blocks: putting SIGPIPE back to its default action, so that a command
//! whose reader has gone dies of it as coreutils' commands do (see `output`), and the ioctls
//! cowfs's own commands send to a mounted daemon.

use nix::sys::signal::{raise, signal, SigHandler, Signal};

/// Die of SIGPIPE now (status 141 in a shell).
pub fn die_of_sigpipe() -> ! {
    // SAFETY: SIG_DFL installs no handler, so no code of ours can run in a signal context; the
    // process ends right after, so nothing else relies on SIGPIPE staying ignored.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let _ = raise(Signal::SIGPIPE);
    // Only reached if SIGPIPE is blocked: exit with the status a shell would show for it.
    std::process::exit(128 + libc::SIGPIPE)
}

/// Send ioctl `OP`, an `_IOWR` whose argument is exactly `N` bytes, on `fd`: the kernel copies
/// `buf` to the daemon and the daemon's answer back into it.
pub fn ioctl_inout<const OP: rustix::ioctl::Opcode, const N: usize>(
    fd: impl std::os::fd::AsFd,
    buf: &mut [u8; N],
) -> std::io::Result<()> {
    // SAFETY: callers name an _IOWR opcode of exactly N bytes (the type of `buf`), which the
    // kernel copies in and back out; `fd` is borrowed for the whole call.
    let updater = unsafe { rustix::ioctl::Updater::<OP, [u8; N]>::new(buf) };
    // SAFETY: the opcode and its argument agree (above).
    unsafe { rustix::ioctl::ioctl(fd, updater) }.map_err(std::io::Error::from)
}
