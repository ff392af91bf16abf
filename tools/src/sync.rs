//! `cowfs sync`: commit a mounted store now. `sync(1)` and `syncfs(2)` write the kernel's cached
//! pages back to the daemon but never ask it to commit (the kernel sends FUSE_SYNCFS only to
//! virtiofs), so this is how to make everything written so far durable without an fsync per
//! file, like `btrfs filesystem sync`.

use crate::CmdResult;
use cowfs_fs::control;
use std::path::PathBuf;
use std::process::ExitCode;

/// Commit the store mounted at MOUNTPOINT; returns once the commit is durable (exit 0), or
/// prints why it failed (exit 1), an earlier failed commit included.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "sync(1) and syncfs(2) do not commit a cowfs mount: the kernel never passes them \
                  to a FUSE daemon. fsync(2) of a file, this command, the periodic commit \
                  (-o commit=SECONDS) and unmounting do."
)]
pub struct Args {
    pub mountpoint: PathBuf,
}

pub fn run(a: Args) -> CmdResult {
    // The daemon has the kernel write back what it caches of files open for writing first.
    let mp = std::path::absolute(&a.mountpoint)?;
    control::sync(&mp)?;
    Ok(ExitCode::SUCCESS)
}
