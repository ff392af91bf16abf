//! fsck's two halves: the read-only check of the last commit and the repair, both over the
//! metadata seam (the typed tables of `store::ctx::Ctx`), one function per pass.

mod check;
mod repair;
mod runs;
mod usage;

pub use check::{CheckReport, Problem, ProblemKind, Progress};
pub use repair::{RepairSummary, LOST_FOUND};
pub use usage::{At, DuRow, ExtentInfo, InodeReport, Summary, Usage};
