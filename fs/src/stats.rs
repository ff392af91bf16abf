//! Counters of the mount, by path the bytes took (spliced, passthrough, through a userspace
//! buffer, shared by reflink), so tests and benchmarks can check the zero-copy claims.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters, updated by the request threads.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one instant.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct CounterSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters!(
    /// Read bytes moved from the pool to /dev/fuse with splice (no userspace copy).
    read_bytes_spliced,
    /// Opens served by FUSE passthrough: the kernel reads (and maps) such a file straight from
    /// its lower file, so those bytes never reach the daemon and are not counted here.
    passthrough_opens,
    /// Read bytes copied through a userspace buffer.
    read_bytes_buffered,
    /// Read requests that wanted splice but took the buffered path (reply too fragmented for
    /// the pipe, or a splice error before anything was sent).
    splice_fallbacks,
    /// Bytes handed to the store by copy_file_range (shared extents, not copied data).
    reflink_bytes,
    /// copy_file_range requests.
    reflinks,
    /// Bytes written.
    write_bytes,
    /// Read requests.
    reads,
    /// Write requests.
    writes,
    /// GETXATTR requests (the kernel asks for `security.capability` before a write unless
    /// FUSE_HANDLE_KILLPRIV_V2 lets it remember that a file has none).
    getxattrs,
    /// SETATTR requests.
    setattrs,
    /// FLUSH requests: only the writeback cache sends them (at a close), and only until the
    /// first has been answered ENOSYS.
    flushes,
    /// fsync and fsyncdir requests (each a commit).
    fsyncs,
    /// SEEK_DATA/SEEK_HOLE requests that had the kernel write the file's cached writes back
    /// first (writeback cache, the file open for writing).
    seek_writebacks,
    /// Writes of pages the kernel cached that failed (ENOSPC, EIO): the kernel reports each to
    /// the file's next fsync and close, and `cowfs sync` fails once for them.
    writeback_errors,
    /// Requests answered with an error.
    errors,
    /// Requests answered with an I/O or corruption error (logged at error level).
    io_errors,
);

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Take back what [`Counters::add`] counted ahead of an outcome that did not happen.
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// What `cowfs stats` shows: the daemon, its store and the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub pid: u32,
    pub store: String,
    pub mountpoint: String,
    /// FUSE protocol version the kernel offered at INIT, "major.minor".
    pub fuse_protocol: String,
    pub copy_mode: String,
    pub max_write: u32,
    /// The kernel caches writes (FUSE_WRITEBACK_CACHE agreed at INIT).
    #[serde(default)]
    pub writeback_cache: bool,
    /// Commits the store made since the mount (periodic, fsync, explicit).
    pub commits: u64,
    /// The store refuses changes: mounted `-o ro`, or remounted read-only.
    #[serde(default)]
    pub read_only: bool,
    #[serde(flatten)]
    pub counters: CounterSnapshot,
}
