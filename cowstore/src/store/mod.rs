//! The store: the public API (`api`), the transaction every operation runs in and the commit
//! protocol (`txn`), the context of one operation over the tables and the in-memory state of the
//! open transaction (`ctx`), and opening/closing (`open`).

mod api;
pub(crate) mod ctx;
mod open;
pub(crate) mod txn;

pub use api::{PinnedRead, Privs, Store};
pub use open::{EngineKind, MkfsOptions, OpenOptions, META_FILE, POOL_FILE};
