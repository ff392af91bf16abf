//! The overlay: the read-only lower directory, its files opened and verified, and their import
//! into the store's own metadata.

mod lower;

pub(crate) use lower::*;
