//! The filesystem core, free of fuser: every request of the mount as a method of [`Core`] that
//! takes and returns plain Rust and cowstore types, with the decisions the adapter used to make
//! inline (open flags and what the kernel may cache, the splice-or-buffer choice, directory
//! streams and readdir batching, the xattr size protocol, argument checks). `crate::fuse`
//! converts fuser's types to these and back; tests drive the core with no mount.

mod attr;
mod config;
mod dedupe;
mod dir;
mod filesystem;
mod names;
mod open;
mod read;
mod snapshot;
mod xattr;

pub use config::{CopyMode, FsConfig};
pub use dir::{DirSink, Listed, FIRST_BATCH, FIRST_BATCH_PLUS};
pub use filesystem::{Core, Kernel};
pub use open::{Access, Backing, IoModes, OpenFlags, Opened, RegisterBacking};
pub use read::{ReadReply, Seek, SeekJob, WriteKind};
pub use snapshot::{SnapshotArg, COWFS_IOC_SNAPSHOT, SNAPSHOT_ARG_LEN, SNAP_DELETE, SNAP_READONLY};
pub use xattr::{encode_names, XattrReply};

#[cfg(test)]
pub(crate) use filesystem::testing;
