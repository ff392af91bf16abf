//! The `cowfs` command. Each subcommand lives in its own module with an `Args` (clap) and a
//! `run(Args) -> CmdResult`; adding one is a `mod`, an enum variant and a match arm.

#![deny(clippy::unwrap_used)]

mod capabilities;
mod du;
mod fsck;
mod human;
mod inspect;
mod logger;
mod mkfs;
mod mount;
mod options;
mod snapshot;
mod stats;
mod sync;
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
    after_help = "Exit status: 0 on success, 1 on failure, 2 on a usage error."
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
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(mount::helper_args(std::env::args_os().collect()));
    let name = cli.cmd.name();
    let result = match cli.cmd {
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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cowfs {name}: {e}");
            ExitCode::FAILURE
        }
    }
}
