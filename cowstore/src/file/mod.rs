//! File data: extent maps, redirect-on-write writes, reads as segments, reflink clones,
//! truncate, hole punching, preallocation and SEEK_DATA/SEEK_HOLE; dedupe of identical blocks.

mod data;
mod dedupe;

pub use data::MAX_FILE_SIZE;
pub(crate) use data::{require_regular, touch_data, Source, WritePlan};
pub(crate) use dedupe::dedupe_file;
pub use dedupe::{DedupeIndex, DedupeStats, BATCH_BYTES as DEDUPE_BATCH_BYTES};
