//! The `cowfs` command. Each subcommand lives in its own module with an `Args` (clap) and a
//! `run(Args) -> CmdResult`; adding one is a `mod`, an enum variant and a match arm.

#![deny(clippy::unwrap_used)]
// Every line goes through `out!`/`err!` (module `output`), which never panic.
#![deny(clippy::print_stdout, clippy::print_stderr)]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[macro_use]
mod output;
mod bug;
mod capabilities;
mod dedupe;
mod du;
mod fsck;
mod human;
mod inspect;
mod logger;
mod mkfs;
mod mount;
mod mountinfo;
mod options;
mod snapshot;
mod stats;
mod sync;
#[allow(unsafe_code)]
mod sys;
mod umount;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// What every subcommand returns: an exit code, or an error that `main` prints as one line
/// (`cowfs SUBCOMMAND: message`) with exit code 1.
pub type CmdResult = Result<ExitCode, Box<dyn std::error::Error>>;

#[derive(Debug, Parser)]
#[command(
    name = "cowfs",
    version,
    about = "cowfs: a copy-on-write FUSE filesystem where copies share blocks",
    after_help = "Exit status: 0 on success, 1 on failure, 2 on a usage error, 70 on an internal \
                  error (a bug in cowfs); fsck exits as e2fsck does (see its --help). \
                  A command whose output pipe is closed ends quietly, killed by SIGPIPE, as \
                  coreutils do."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Mkfs(mkfs::Args),
    Mount(mount::Args),
    Umount(umount::Args),
    Stats(stats::Args),
    Sync(sync::Args),
    /// Copy a tree or file as `cp -a` would, sharing every block (or --delete a tree).
    Snapshot(snapshot::Args),
    Capabilities(capabilities::Args),
    /// Check a store's consistency (exit codes as e2fsck: 0 clean, 1 corrected, 4 uncorrected, 8 error).
    Fsck(fsck::FsckArgs),
    /// Show a store's summary, or one inode and its extent map.
    Inspect(inspect::InspectArgs),
    /// Show total, exclusive and shared space per file and directory.
    Du(du::DuArgs),
    /// Share the data blocks of identical content across files (like duperemove).
    Dedupe(dedupe::Args),
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Mkfs(_) => "mkfs",
            Command::Mount(_) => "mount",
            Command::Umount(_) => "umount",
            Command::Stats(_) => "stats",
            Command::Sync(_) => "sync",
            Command::Snapshot(_) => "snapshot",
            Command::Capabilities(_) => "capabilities",
            Command::Fsck(_) => "fsck",
            Command::Inspect(_) => "inspect",
            Command::Du(_) => "du",
            Command::Dedupe(_) => "dedupe",
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn main() -> ExitCode {
    bug::install();
    let args = mount::helper_args(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // --help and --version (to stdout, status 0) or a usage error (to stderr, status 2).
        Err(e) => {
            if let Err(io) = e.print() {
                output::write_failed(&io);
            }
            return exit(e.exit_code());
        }
    };
    let name = cli.cmd.name();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli.cmd)));
    match outcome {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            err!("cowfs {name}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            let report = bug::take();
            let what = report.as_ref().map_or("(no message)", |r| r.what.as_str());
            err!("cowfs {name}: internal error (a bug in cowfs): {what}");
            if let Some(bt) = report.and_then(|r| r.backtrace) {
                err!("{bt}");
            }
            ExitCode::from(bug::EXIT_BUG)
        }
    }
}

fn run(cmd: Command) -> CmdResult {
    // For the tests of the panic report: there is no other way to make a command panic.
    if std::env::var_os("COWFS_TEST_PANIC").is_some() {
        panic!("COWFS_TEST_PANIC is set");
    }
    match cmd {
        Command::Mkfs(a) => mkfs::run(a),
        Command::Mount(a) => mount::run(a),
        Command::Umount(a) => umount::run(a),
        Command::Stats(a) => stats::run(a),
        Command::Sync(a) => sync::run(a),
        Command::Snapshot(a) => snapshot::run(a),
        Command::Capabilities(a) => capabilities::run(a),
        Command::Fsck(a) => Ok(exit(fsck::run(&a))),
        Command::Inspect(a) => Ok(exit(inspect::run(&a))),
        Command::Du(a) => Ok(exit(du::run(&a))),
        Command::Dedupe(a) => dedupe::run(a),
    }
}
