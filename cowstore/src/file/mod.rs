//! File data: extent maps, redirect-on-write writes, reads as segments, reflink clones,
//! truncate, hole punching, preallocation and SEEK_DATA/SEEK_HOLE.

mod data;

pub use data::MAX_FILE_SIZE;
pub(crate) use data::{require_regular, touch_data, Source};
