//! cowstore: a copy-on-write extent store. Files are maps of extents into a pool file of
//! refcounted blocks; metadata lives in a copy-on-write B-tree (redb). Writes never overwrite
//! committed blocks, copies share extents, and one atomic B-tree commit makes a state durable.
//! It knows nothing of FUSE: the `fs` crate serves it through the kernel.

#![deny(clippy::unwrap_used)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod acl;
mod alloc;
mod codec;
mod data;
pub mod error;
pub mod fsck;
pub mod io;
mod lower;
mod meta;
mod ns;
mod rangeset;
mod store;
pub mod superblock;
mod sys;
mod tables;
pub mod testing;
pub mod types;
pub mod usage;

pub use data::MAX_FILE_SIZE;
pub use error::{Error, Result};
pub use fsck::{CheckReport, Problem, ProblemKind, RepairSummary};
pub use ns::{LINK_MAX, NAME_MAX};
pub use store::{EngineKind, MkfsOptions, OpenOptions, PinnedRead, Store, META_FILE, POOL_FILE};
pub use types::*;
pub use usage::{ExtentInfo, Summary, Usage};
