//! The metadata seam: an ordered key-value engine with snapshot reads and atomic, durable batch
//! commits. Everything above it (the write buffer, the typed tables, the filesystem logic)
//! works on bytes under `(table, key)` and never names the engine.
//!
//! An engine offers exactly two things:
//! - [`Engine::snapshot`]: a read view of the last durable commit, which does not change while
//!   it is held (redb: a read transaction; TiKV/FoundationDB: a read at a timestamp/version);
//! - [`Engine::commit`]: apply a [`Delta`] atomically and durably — when it returns `Ok`, a crash
//!   keeps all of it, and when it returns an error, the engine is at the previous commit, and
//!   the same delta may be offered again.

use super::schema::{TableId, N_TABLES, TABLES};
use crate::error::Result;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// One key and value of a table.
pub(crate) type Entry = (Vec<u8>, Vec<u8>);

/// Entries of a range, ascending (or descending for a reversed range).
pub(crate) type EntryIter<'a> = Box<dyn Iterator<Item = Result<Entry>> + 'a>;

/// A read view of one committed state.
pub(crate) trait Snapshot: Send + Sync {
    fn get(&self, table: TableId, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// The entries with keys inside the bounds, ascending, or descending when `rev`.
    fn range<'a>(
        &'a self,
        table: TableId,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        rev: bool,
    ) -> Result<EntryIter<'a>>;
}

/// A metadata engine (redb on disk; an in-memory one for tests).
pub(crate) trait Engine: Send + Sync {
    /// A view of the last durable commit.
    fn snapshot(&self) -> Result<Arc<dyn Snapshot>>;
    /// Make every change of `deltas` (applied in order: later ones win) durable, all or nothing.
    fn commit(&self, deltas: &[&Delta]) -> Result<()>;
}

/// Changes to the tables not yet committed: per table, key → new value, or `None` for a
/// deleted key (a tombstone hiding the key in the layers below).
#[derive(Clone, Debug, Default)]
pub(crate) struct Delta {
    tables: [BTreeMap<Vec<u8>, Option<Vec<u8>>>; N_TABLES],
    /// Bytes of keys and values held, to bound memory.
    bytes: usize,
}

impl Delta {
    pub fn table(&self, t: TableId) -> &BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        &self.tables[t.index()]
    }

    pub fn is_empty(&self) -> bool {
        self.tables.iter().all(BTreeMap::is_empty)
    }

    /// Approximate memory held by the changes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn set(&mut self, t: TableId, key: Vec<u8>, value: Option<Vec<u8>>) {
        let (klen, vlen) = (key.len(), value.as_ref().map_or(0, Vec::len));
        match self.tables[t.index()].insert(key, value) {
            Some(old) => {
                self.bytes = self.bytes.saturating_sub(old.map_or(0, |v| v.len())) + vlen;
            }
            None => self.bytes += klen + vlen + ENTRY_OVERHEAD,
        }
    }

    /// A delta holding one table's changes.
    pub fn of_table(t: TableId, changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Delta {
        let mut d = Delta {
            bytes: map_bytes(&changes),
            ..Default::default()
        };
        d.tables[t.index()] = changes;
        d
    }

    /// Put the changes of `newer` over ours (they win where both have a key).
    pub fn absorb(&mut self, newer: Delta) {
        for (t, changes) in TABLES.into_iter().zip(newer.tables) {
            if self.tables[t.index()].is_empty() {
                self.bytes += map_bytes(&changes);
                self.tables[t.index()] = changes;
            } else {
                for (k, v) in changes {
                    self.set(t, k, v);
                }
            }
        }
    }
}

/// What one entry of a delta costs beyond its bytes (the map's node share, the two vectors).
const ENTRY_OVERHEAD: usize = 64;

fn map_bytes(m: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> usize {
    m.iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD)
        .sum()
}

/// Reads through a stack of deltas (newest first) down to a snapshot.
#[derive(Clone, Copy)]
pub(crate) struct Layers<'a> {
    /// Newest first.
    pub deltas: &'a [&'a Delta],
    pub base: &'a dyn Snapshot,
}

/// A change of some layer: the key, and the value or a tombstone.
pub(crate) type Change = (Vec<u8>, Option<Vec<u8>>);

impl<'a> Layers<'a> {
    pub fn get(&self, t: TableId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        for d in self.deltas {
            if let Some(v) = d.table(t).get(key) {
                return Ok(v.clone());
            }
        }
        self.base.get(t, key)
    }

    pub fn range(
        &self,
        t: TableId,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        rev: bool,
    ) -> Result<EntryIter<'a>> {
        let mut it = self.base.range(t, lo, hi, rev)?;
        for d in self.deltas.iter().rev() {
            it = Box::new(Merge::new(changes_in(d.table(t), lo, hi, rev), it, rev));
        }
        Ok(it)
    }
}

/// The changes of one table's map inside the bounds, in the requested order.
pub(crate) fn changes_in<'a>(
    map: &'a BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    lo: Bound<&[u8]>,
    hi: Bound<&[u8]>,
    rev: bool,
) -> Box<dyn Iterator<Item = Change> + 'a> {
    if map.is_empty() || bounds_empty(lo, hi) {
        return Box::new(std::iter::empty());
    }
    let r = map
        .range::<[u8], _>((lo, hi))
        .map(|(k, v)| (k.clone(), v.clone()));
    if rev {
        Box::new(r.rev())
    } else {
        Box::new(r)
    }
}

/// BTreeMap::range panics on inverted or empty-exclusive bounds; such a range is just empty.
pub(crate) fn bounds_empty(lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> bool {
    use Bound::*;
    match (lo, hi) {
        (Included(a), Included(b)) => a > b,
        (Included(a), Excluded(b)) | (Excluded(a), Included(b)) => a >= b,
        (Excluded(a), Excluded(b)) => a >= b,
        _ => false,
    }
}

/// A newer layer's changes merged over an older layer's entries: the newer value wins, a
/// tombstone hides the key.
pub(crate) struct Merge<'a> {
    top: std::iter::Peekable<Box<dyn Iterator<Item = Change> + 'a>>,
    bottom: std::iter::Peekable<EntryIter<'a>>,
    rev: bool,
}

impl<'a> Merge<'a> {
    pub fn new(
        top: Box<dyn Iterator<Item = Change> + 'a>,
        bottom: EntryIter<'a>,
        rev: bool,
    ) -> Merge<'a> {
        Merge {
            top: top.peekable(),
            bottom: bottom.peekable(),
            rev,
        }
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        use std::cmp::Ordering::*;
        loop {
            let order = match (self.top.peek(), self.bottom.peek()) {
                (None, None) => return None,
                (Some(_), None) => Less,
                (None, Some(_)) | (Some(_), Some(Err(_))) => Greater,
                (Some((tk, _)), Some(Ok((bk, _)))) => {
                    let o = tk.cmp(bk);
                    if self.rev {
                        o.reverse()
                    } else {
                        o
                    }
                }
            };
            if order == Greater {
                return self.bottom.next();
            }
            if order == Equal {
                // The newer layer shadows this key.
                self.bottom.next();
            }
            match self.top.next() {
                Some((k, Some(v))) => return Some(Ok((k, v))),
                Some((_, None)) => continue,
                None => return None,
            }
        }
    }
}
