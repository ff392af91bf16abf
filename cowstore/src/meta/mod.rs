//! Metadata: the ordered key-value seam every table goes through, the embedded engine behind it,
//! and the typed tables the filesystem logic uses.
//!
//! ```text
//! Ctx tables (typed)  ->  an operation's own changes          (kept or dropped with the operation)
//!                     ->  the store's uncommitted changes     (one Delta, committed as a batch)
//!                     ->  Snapshot of the last commit         (Engine: redb)
//! ```

mod engine;
#[cfg(feature = "testing")]
mod mem;
mod redb;
mod schema;
mod table;

pub(crate) use self::redb::RedbEngine;
pub(crate) use engine::{Delta, Engine, Layers, Snapshot};
#[cfg(feature = "testing")]
pub(crate) use mem::{MemEngine, MEM_META_FILE};
pub(crate) use schema::{key, BytesValue, IntKey, IntValue, NamedKey, PairKey, TableId, UnitValue};
pub(crate) use table::Table;
