//! What the cowfs test suites and load tools share: deterministic byte patterns, a content hash,
//! a seeded generator, and helpers for host files and their extended attributes. It knows
//! nothing of cowstore or of mounts, so the store's own tests (`cowstore/tests`), the real-mount
//! tests (`tools/tests`) and the `cowfs-stress` workloads all build on the same pieces.

mod bytes;
mod hash;
mod host;
mod rng;
mod xattr;

pub use bytes::{first_difference, pattern, pattern_at, write_into};
pub use hash::{hash, ContentHash};
pub use host::{check_pattern, hash_file, mknod, path_str, write_pattern};
pub use rng::Rng;
pub use xattr::{getxattr, listxattr, removexattr, setxattr, xattrs};
