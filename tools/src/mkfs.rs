//! `cowfs mkfs`: create an empty store in a directory.

use crate::CmdResult;
use cowstore::{MkfsOptions, Store};
use std::path::PathBuf;
use std::process::ExitCode;

/// Create an empty cowfs store in directory STORE (created if missing). The directory is made
/// 0700 and its files 0600: the pool holds every file's bytes.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to hold the store (superblock, metadata B-tree, block pool).
    pub store: PathBuf,
    /// Block size in bytes: a power of two from 4096 to 65536. Copies share whole blocks.
    #[arg(long, short = 'b', default_value_t = 4096)]
    pub block_size: u32,
}

pub fn run(a: Args) -> CmdResult {
    // Before mkfs creates the directory.
    cowstore::superblock::validate_block_size(a.block_size)?;
    match Store::mkfs(
        &a.store,
        &MkfsOptions {
            block_size: a.block_size,
            ..Default::default()
        },
    ) {
        Ok(()) => {
            out!(
                "created cowfs store {} (block size {})",
                a.store.display(),
                a.block_size
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(cowstore::Error::Exists) => {
            Err(format!("{} already holds a cowfs store", a.store.display()).into())
        }
        // These name the store themselves.
        Err(
            e @ (cowstore::Error::InUse { .. }
            | cowstore::Error::NotAStore { .. }
            | cowstore::Error::UnsafeStore { .. }),
        ) => Err(e.into()),
        Err(e) => Err(format!("{}: {e}", a.store.display()).into()),
    }
}
