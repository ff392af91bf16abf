//! The read-only consistency check of a store (fsck is built on it): walks the committed state and
//! verifies every invariant of the format. It never writes.

use serde::Serialize;

/// What kind of inconsistency a [`Problem`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ProblemKind {
    /// A value or record that does not decode (checksum, version, layout).
    Corrupt,
    /// Superblock/state disagree (e.g. counters).
    State,
    /// An extent outside the pool, past the file's end, or overlapping another of the same file.
    ExtentBounds,
    /// A refcount record whose count differs from the references found.
    Refcount,
    /// A block referenced more than once without a refcount record.
    DoubleReference,
    /// A block neither free nor referenced.
    LeakedBlock,
    /// A block both free and referenced, or free twice.
    FreeOverlap,
    /// A directory entry naming a missing inode, or whose kind disagrees with the inode.
    DanglingDirent,
    /// An inode whose link count differs from the entries naming it.
    LinkCount,
    /// An inode with no links that is not on the orphan list, or an orphan that has links.
    Orphan,
    /// An inode not reachable from the root directory.
    Disconnected,
    /// The per-inode block counter differs from its extent map.
    BlockCount,
    /// readdir cookie index disagrees with the directory entries.
    Cookie,
}

/// One inconsistency, precise enough to act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The inode concerned, if any.
    pub ino: Option<u64>,
    /// The pool block range concerned (first block, block count), if any.
    pub blocks: Option<(u64, u64)>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.kind)?;
        if let Some(ino) = self.ino {
            write!(f, " inode {ino}")?;
        }
        if let Some((s, n)) = self.blocks {
            write!(f, " blocks {s}..{}", s + n)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The outcome of [`crate::Store::check`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub problems: Vec<Problem>,
    pub inodes: u64,
    pub directories: u64,
    pub extents: u64,
    /// The commit generation that was checked.
    pub generation: u64,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}
