//! The namespace: inodes, directory entries, hard links, rename, xattrs and their namespace
//! rules, inode flags, the orphan list, and POSIX ACLs (`acl`).

pub mod acl;
mod namespace;

pub(crate) use namespace::{check_flags, new_inode_record, Change};
pub use namespace::{
    LINK_MAX, NAME_MAX, XATTR_INODE_MAX, XATTR_LIST_MAX, XATTR_NAME_MAX, XATTR_SIZE_MAX,
};
