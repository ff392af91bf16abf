//! `cowfs-stress`: the workloads that scripts/killtest, scripts/concurrency, scripts/enospc and
//! scripts/conformance run on a real cowfs mount. Each one checks the content it reads against
//! its own model and exits non-zero on the first surprise; see the scripts for how they are used.
//!
//! Exit codes: 0 success, 1 usage or setup error, 2 the daemon went away (ENOTCONN: expected
//! only when a test killed it), 3 content differs from the model, 4 any other I/O error.

#![deny(clippy::unwrap_used)]

mod cloner;
mod conc;
mod fill;
mod killload;
mod util;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "cowfs-stress",
    about = "cowfs crash/concurrency/ENOSPC workloads"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Writes, clones (cp), renames, unlinks and fsyncs forever, logging outside the mount.
    Killload(killload::LoadArgs),
    /// After a crash: every name not modified since the last logged fsync is exactly as logged.
    Killverify(killload::VerifyArgs),
    /// One of several concurrent workers on private and shared files.
    Conc(conc::WorkerArgs),
    /// Check the manifests the concurrent workers wrote.
    ConcCheck(conc::CheckArgs),
    /// Reflink-copies a file another process (fsx) changes, then writes and checks the copies.
    Cloner(cloner::Args),
    /// Fill the mount until ENOSPC in several ways; no other errno is accepted.
    Fill(fill::Args),
    /// Check the file `fill` left behind (after remount).
    FillCheck(fill::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Killload(a) => killload::load(&a),
        Cmd::Killverify(a) => killload::verify(&a),
        Cmd::Conc(a) => conc::worker(&a),
        Cmd::ConcCheck(a) => conc::check(&a),
        Cmd::Cloner(a) => cloner::run(&a),
        Cmd::Fill(a) => fill::run(&a),
        Cmd::FillCheck(a) => fill::check(&a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("cowfs-stress: {}", f.msg);
            ExitCode::from(f.code)
        }
    }
}
