//! The command's one `unsafe` block: putting SIGPIPE back to its default action, so that a
//! command whose reader has gone dies of it as coreutils' commands do (see `output`).

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
