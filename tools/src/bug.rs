//! A panic is a bug in cowfs. It reaches the user as one line saying where it happened (with a
//! backtrace only if RUST_BACKTRACE asks for one), and the command exits with [`EXIT_BUG`].
//!
//! The hook only records a panic on the main thread: the store catches the panics of the B-tree
//! library on damaged pages and reports them as corruption, and the command then says what
//! happened; a panic that nobody catches reaches `main`, which prints the record. Other threads
//! (the daemon's request threads) have no one to report for them, so their panics are printed at
//! once, as one line (in the daemon, to its log).

use std::backtrace::{Backtrace, BacktraceStatus};
use std::io::Write;
use std::panic::PanicHookInfo;
use std::sync::Mutex;

/// Exit status of a command that panicked: EX_SOFTWARE, "internal software error" (sysexits.h).
pub const EXIT_BUG: u8 = 70;

/// What a panic left for `main` to report.
#[derive(Debug)]
pub struct Report {
    /// `message at file:line`.
    pub what: String,
    /// Only when RUST_BACKTRACE (or RUST_LIB_BACKTRACE) asks for one.
    pub backtrace: Option<String>,
}

static LAST: Mutex<Option<Report>> = Mutex::new(None);

/// Replace Rust's panic message (several lines and a note about RUST_BACKTRACE) with ours.
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        let what = describe(info);
        let bt = Backtrace::capture();
        let backtrace = (bt.status() == BacktraceStatus::Captured).then(|| bt.to_string());
        let thread = std::thread::current();
        if thread.name() != Some("main") {
            let name = thread.name().unwrap_or("unnamed");
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "cowfs: internal error in thread {name}: {what}");
            if let Some(bt) = &backtrace {
                let _ = write!(err, "{bt}");
            }
            return;
        }
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some(Report { what, backtrace });
    }));
}

/// The last panic recorded on the main thread, if any.
pub fn take() -> Option<Report> {
    LAST.lock().unwrap_or_else(|p| p.into_inner()).take()
}

fn describe(info: &PanicHookInfo<'_>) -> String {
    let p = info.payload();
    let msg = p
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    match info.location() {
        Some(l) => format!("{msg} at {}:{}", l.file(), l.line()),
        None => msg.to_string(),
    }
}
