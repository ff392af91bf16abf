//! Where the commands write: stdout through [`out!`], stderr through [`err!`] (each a
//! `println!` that cannot panic). A reader that has gone away (`cowfs stats MNT | head -1`) ends
//! the command as it ends coreutils' commands: killed by SIGPIPE, quietly (status 141 in a
//! shell). Any other write error (a full disk behind `>`) is said on stderr and exits 1.
//!
//! Why not restore SIGPIPE's default at start instead: it would leave `println!` panicking on
//! every other write error, and it would let the daemon (`cowfs mount`, which shares `main`) die
//! of a closed pipe on stderr, taking the mount with it: `cowfs mount -f ... 2>&1 | tee LOG` with
//! tee gone. So SIGPIPE stays ignored, as Rust sets it up, until a write of ours to stdout or
//! stderr fails with EPIPE; only then is its default restored and raised. (Sockets are safe
//! either way: std sends with MSG_NOSIGNAL.)

use std::fmt;
use std::io::{self, Write};

/// `println!` through [`print_out`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::print_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` through [`print_err`].
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::output::print_err(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Write to stdout; see the module's comment for what a failure does.
pub fn print_out(args: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        write_failed(&e);
    }
}

/// Write to stderr; see the module's comment for what a failure does.
pub fn print_err(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    if let Err(e) = err.write_fmt(args).and_then(|()| err.flush()) {
        write_failed(&e);
    }
}

/// End the process after a failed write to stdout or stderr: by SIGPIPE if the reader has gone,
/// else with status 1 after saying why (if stderr still takes it).
pub fn write_failed(e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        crate::sys::die_of_sigpipe();
    }
    let _ = writeln!(io::stderr(), "cowfs: write error: {e}");
    std::process::exit(1)
}
