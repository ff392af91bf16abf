//! cowstore: a copy-on-write extent store. Files are maps of extents into a pool file of
//! refcounted blocks; metadata lives in a copy-on-write B-tree (redb). Writes never overwrite
//! committed blocks, copies share extents, and one atomic B-tree commit makes a state durable.
//! It knows nothing of FUSE: the `fs` crate serves it through the kernel.

#![deny(clippy::unwrap_used)]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod codec;
pub mod error;
mod file;
pub mod fsck;
pub mod io;
mod meta;
pub mod ns;
mod overlay;
mod space;
mod store;
pub mod superblock;
#[allow(unsafe_code)]
mod sys;
#[cfg(feature = "testing")]
pub mod testing;
pub mod types;

pub use error::{Error, Result};
pub use file::{DedupeIndex, DedupeStats, DEDUPE_BATCH_BYTES, MAX_FILE_SIZE};
pub use fsck::{At, DuRow, ExtentInfo, InodeReport, Summary, Usage};
pub use fsck::{CheckReport, Problem, ProblemKind, RepairSummary};
pub use ns::acl;
pub use ns::{
    SnapshotOptions, TreePhase, TreeProgress, LINK_MAX, NAME_MAX, REMOVE_BATCH, SNAPSHOT_BATCH,
};
pub use store::{
    EngineKind, MkfsOptions, OpenOptions, PinnedRead, Privs, Store, META_FILE, POOL_FILE,
};
pub use types::*;
