//! The namespace: inodes, directory entries, hard links, rename, xattrs and their namespace
//! rules, inode flags, the orphan list, POSIX ACLs (`acl`), snapshots of whole trees
//! (`snapshot`) and their removal in batches (`rmtree`).

pub mod acl;
mod namespace;
mod rmtree;
mod snapshot;

pub(crate) use namespace::{check_flags, check_name, new_inode_record, Change, FIRST_COOKIE};
pub use namespace::{
    LINK_MAX, NAME_MAX, XATTR_INODE_MAX, XATTR_LIST_MAX, XATTR_NAME_MAX, XATTR_SIZE_MAX,
};
pub use rmtree::REMOVE_BATCH;
pub use snapshot::{SnapshotOptions, TreePhase, TreeProgress, SNAPSHOT_BATCH};
