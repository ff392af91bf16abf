//! Pool space: the allocator over the free table, refcounts of shared blocks, the registry of
//! blocks being punched, and the range sets the open transaction keeps.

mod alloc;
mod rangeset;

pub(crate) use alloc::PunchRegistry;
pub(crate) use rangeset::RangeSet;
