//! The adapter's settings: the mount options that reach the filesystem core.

use cowstore::AtimePolicy;
use std::time::Duration;

/// How read replies carry file bytes to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    /// Splice from the pool file through a pipe into /dev/fuse (no userspace copy).
    Splice,
    /// `pread` into a buffer and write it (for comparison).
    Buffered,
}

impl CopyMode {
    pub fn name(self) -> &'static str {
        match self {
            CopyMode::Splice => "splice",
            CopyMode::Buffered => "buffered",
        }
    }
}

/// Settings of the adapter (the mount options that reach it).
#[derive(Clone, Debug)]
pub struct FsConfig {
    pub copy_mode: CopyMode,
    /// How long the kernel may cache attributes and directory entries. Every change goes through
    /// this mount, and the kernel invalidates what its own operations change, so long is safe.
    pub ttl: Duration,
    /// Let the kernel cache writes and send them in large batches (`FUSE_WRITEBACK_CACHE`).
    pub writeback_cache: bool,
    /// Largest write request to ask the kernel for.
    pub max_write: u32,
    /// When reads and listings update access times (`relatime`, `strictatime`, `noatime`,
    /// `nodiratime`).
    pub atime: AtimePolicy,
    /// Serve read-only opens of unmodified lower files by FUSE passthrough when the kernel
    /// offers it (`-o passthrough=off` turns it off).
    pub passthrough: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            copy_mode: CopyMode::Splice,
            ttl: Duration::from_secs(10),
            writeback_cache: false,
            max_write: 1 << 20,
            atime: AtimePolicy::default(),
            passthrough: true,
        }
    }
}
