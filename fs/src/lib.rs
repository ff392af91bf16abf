//! cowfs-fs: serves a cowstore [`Store`](cowstore::Store) through the kernel with fuser. The
//! filesystem logic is a fuser-free core (`core`) that tests drive directly; the adapter
//! (`fuse`) only converts fuser's types to the core's and back, and maps errors in one place;
//! reads are answered by splicing pool bytes straight into /dev/fuse (`splice`).

#![deny(clippy::unwrap_used)]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod control;
pub mod core;
pub mod cred;
mod deferred;
pub mod error;
pub mod fuse;
mod handles;
pub mod live;
pub mod probe;
pub mod progress;
pub mod session;
mod splice;
pub mod stats;
#[allow(unsafe_code)]
mod sys;

pub use error::{FsError, ToErrno};
pub use fuse::{CopyMode, CowFs, FsConfig, KernelInfo, Shared};
pub use fuser::{MountOption, SessionACL};
pub use session::{mount, MountError, MountSpec, Mounted};
pub use stats::{CounterSnapshot, Counters, Stats};
