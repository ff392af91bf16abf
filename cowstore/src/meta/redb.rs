//! The embedded engine: redb, a copy-on-write B-tree with two checksummed commit slots. Each
//! table of [`TableId`] is the typed redb table of format version 1 (`u64`, `(u64, u64)` or
//! `(u64, &[u8])` keys), so stores written before the seam existed open unchanged.
//!
//! redb refuses all work after an I/O error it latched until the database is opened again: a
//! failed commit marks the engine for reopening, and the next snapshot or commit reopens it
//! (the store above still holds every uncommitted change, so nothing is lost by that).

use super::engine::{Delta, Engine, EntryIter, Snapshot};
use super::schema::{KeyShape, TableId, ValueShape, N_TABLES, TABLES};
use crate::error::{Error, Result};
use crate::io::{FileIo, RedbFile, SpaceReserve};
use parking_lot::RwLock;
use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, TableDefinition,
    TableError, WriteTransaction,
};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

type Bytes = &'static [u8];

/// A redb key type and its seam bytes (see `schema`).
trait RedbKey: redb::Key + 'static {
    fn from_seam(t: TableId, b: &[u8]) -> Result<Self::SelfType<'_>>;
    fn to_seam(k: Self::SelfType<'_>) -> Vec<u8>;
}

/// A redb value type and its seam bytes.
trait RedbValue: redb::Value + 'static {
    fn from_seam(t: TableId, b: &[u8]) -> Result<Self::SelfType<'_>>;
    fn to_seam(v: Self::SelfType<'_>) -> Vec<u8>;
}

fn seam_error(t: TableId, what: &str) -> Error {
    Error::corrupt(format!("meta: table {}: {what}", t.name()))
}

fn be(t: TableId, b: &[u8]) -> Result<u64> {
    b.get(..8)
        .and_then(|x| x.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| seam_error(t, "short key"))
}

impl RedbKey for u64 {
    fn from_seam(t: TableId, b: &[u8]) -> Result<u64> {
        be(t, b)
    }
    fn to_seam(k: u64) -> Vec<u8> {
        k.to_be_bytes().to_vec()
    }
}

impl RedbKey for (u64, u64) {
    fn from_seam(t: TableId, b: &[u8]) -> Result<(u64, u64)> {
        Ok((be(t, b)?, be(t, b.get(8..).unwrap_or_default())?))
    }
    fn to_seam((a, b): (u64, u64)) -> Vec<u8> {
        let mut v = a.to_be_bytes().to_vec();
        v.extend_from_slice(&b.to_be_bytes());
        v
    }
}

impl RedbKey for (u64, Bytes) {
    fn from_seam(t: TableId, b: &[u8]) -> Result<(u64, &[u8])> {
        Ok((be(t, b)?, b.get(8..).unwrap_or_default()))
    }
    fn to_seam((a, name): (u64, &[u8])) -> Vec<u8> {
        let mut v = a.to_be_bytes().to_vec();
        v.extend_from_slice(name);
        v
    }
}

impl RedbValue for Bytes {
    fn from_seam(_: TableId, b: &[u8]) -> Result<&[u8]> {
        Ok(b)
    }
    fn to_seam(v: &[u8]) -> Vec<u8> {
        v.to_vec()
    }
}

impl RedbValue for () {
    fn from_seam(_: TableId, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn to_seam(_: ()) -> Vec<u8> {
        Vec::new()
    }
}

impl RedbValue for u64 {
    fn from_seam(t: TableId, b: &[u8]) -> Result<u64> {
        b.try_into()
            .map(u64::from_le_bytes)
            .map_err(|_| seam_error(t, "value is not a u64"))
    }
    fn to_seam(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }
}

/// One table of a read transaction, typed as it is on disk.
enum RoTable {
    IntBytes(ReadOnlyTable<u64, Bytes>),
    NamedBytes(ReadOnlyTable<(u64, Bytes), Bytes>),
    PairBytes(ReadOnlyTable<(u64, u64), Bytes>),
    IntUnit(ReadOnlyTable<u64, ()>),
    PairInt(ReadOnlyTable<(u64, u64), u64>),
}

/// Run `$body` with `$t` bound to the typed table inside `$table`.
macro_rules! typed {
    ($table:expr, $t:ident => $body:expr) => {
        match $table {
            RoTable::IntBytes($t) => $body,
            RoTable::NamedBytes($t) => $body,
            RoTable::PairBytes($t) => $body,
            RoTable::IntUnit($t) => $body,
            RoTable::PairInt($t) => $body,
        }
    };
}

fn open_ro<K: RedbKey, V: RedbValue>(
    rtx: &ReadTransaction,
    t: TableId,
) -> Result<Option<ReadOnlyTable<K, V>>> {
    match rtx.open_table(TableDefinition::<K, V>::new(t.name())) {
        Ok(table) => Ok(Some(table)),
        // Stores made before a table existed simply have none of its records.
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(Error::corrupt(format!(
            "meta.redb: opening table {}: {e}",
            t.name()
        ))),
    }
}

fn open_typed(rtx: &ReadTransaction, t: TableId) -> Result<Option<RoTable>> {
    Ok(match (t.key_shape(), t.value_shape()) {
        (KeyShape::Int, ValueShape::Bytes) => open_ro(rtx, t)?.map(RoTable::IntBytes),
        (KeyShape::Named, ValueShape::Bytes) => open_ro(rtx, t)?.map(RoTable::NamedBytes),
        (KeyShape::Pair, ValueShape::Bytes) => open_ro(rtx, t)?.map(RoTable::PairBytes),
        (KeyShape::Int, ValueShape::Unit) => open_ro(rtx, t)?.map(RoTable::IntUnit),
        (KeyShape::Pair, ValueShape::Int) => open_ro(rtx, t)?.map(RoTable::PairInt),
        (k, v) => {
            return Err(Error::corrupt(format!(
                "meta: table {} has no redb type for {k:?} keys and {v:?} values",
                t.name()
            )))
        }
    })
}

fn get_in<K: RedbKey, V: RedbValue>(
    table: &ReadOnlyTable<K, V>,
    t: TableId,
    key: &[u8],
) -> Result<Option<Vec<u8>>> {
    let k = K::from_seam(t, key)?;
    Ok(table.get(k)?.map(|g| V::to_seam(g.value())))
}

fn seam_bound<'a, K: RedbKey>(t: TableId, b: Bound<&'a [u8]>) -> Result<Bound<K::SelfType<'a>>> {
    Ok(match b {
        Bound::Included(k) => Bound::Included(K::from_seam(t, k)?),
        Bound::Excluded(k) => Bound::Excluded(K::from_seam(t, k)?),
        Bound::Unbounded => Bound::Unbounded,
    })
}

fn range_in<'a, K: RedbKey, V: RedbValue>(
    table: &ReadOnlyTable<K, V>,
    t: TableId,
    lo: Bound<&[u8]>,
    hi: Bound<&[u8]>,
    rev: bool,
) -> Result<EntryIter<'a>> {
    let bounds = (seam_bound::<K>(t, lo)?, seam_bound::<K>(t, hi)?);
    let range = table.range::<K::SelfType<'_>>(bounds)?;
    let entry = |item: std::result::Result<_, redb::StorageError>| {
        let (k, v): (redb::AccessGuard<'_, K>, redb::AccessGuard<'_, V>) = item?;
        Ok((K::to_seam(k.value()), V::to_seam(v.value())))
    };
    Ok(if rev {
        Box::new(range.rev().map(entry))
    } else {
        Box::new(range.map(entry))
    })
}

/// A redb read transaction with its tables opened on first use.
struct RedbSnapshot {
    rtx: ReadTransaction,
    tables: [OnceLock<Option<RoTable>>; N_TABLES],
}

impl RedbSnapshot {
    fn table(&self, t: TableId) -> Result<Option<&RoTable>> {
        let slot = &self.tables[t.index()];
        if let Some(opened) = slot.get() {
            return Ok(opened.as_ref());
        }
        let opened = open_typed(&self.rtx, t)?;
        Ok(slot.get_or_init(|| opened).as_ref())
    }
}

impl Snapshot for RedbSnapshot {
    fn get(&self, t: TableId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.table(t)? {
            Some(table) => typed!(table, x => get_in(x, t, key)),
            None => Ok(None),
        }
    }

    fn range<'a>(
        &'a self,
        t: TableId,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        rev: bool,
    ) -> Result<EntryIter<'a>> {
        if super::engine::bounds_empty(lo, hi) {
            return Ok(Box::new(std::iter::empty()));
        }
        match self.table(t)? {
            Some(table) => typed!(table, x => range_in(x, t, lo, hi, rev)),
            None => Ok(Box::new(std::iter::empty())),
        }
    }
}

fn apply_to<K: RedbKey, V: RedbValue>(
    wtx: &WriteTransaction,
    t: TableId,
    changes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> Result<()> {
    // Opening creates the table: every committed tree has all of them, for readers that open
    // tables by name (check, usage).
    let mut table = wtx.open_table(TableDefinition::<K, V>::new(t.name()))?;
    for (k, v) in changes {
        let key = K::from_seam(t, k)?;
        match v {
            Some(v) => {
                table.insert(key, V::from_seam(t, v)?)?;
            }
            None => {
                table.remove(key)?;
            }
        }
    }
    Ok(())
}

fn apply_table(
    wtx: &WriteTransaction,
    t: TableId,
    changes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> Result<()> {
    match (t.key_shape(), t.value_shape()) {
        (KeyShape::Int, ValueShape::Bytes) => apply_to::<u64, Bytes>(wtx, t, changes),
        (KeyShape::Named, ValueShape::Bytes) => apply_to::<(u64, Bytes), Bytes>(wtx, t, changes),
        (KeyShape::Pair, ValueShape::Bytes) => apply_to::<(u64, u64), Bytes>(wtx, t, changes),
        (KeyShape::Int, ValueShape::Unit) => apply_to::<u64, ()>(wtx, t, changes),
        (KeyShape::Pair, ValueShape::Int) => apply_to::<(u64, u64), u64>(wtx, t, changes),
        (k, v) => Err(Error::corrupt(format!(
            "meta: table {} has no redb type for {k:?} keys and {v:?} values",
            t.name()
        ))),
    }
}

/// The redb engine over the store's `meta.redb`.
pub(crate) struct RedbEngine {
    db: RwLock<Arc<Database>>,
    /// How to open the B-tree again after an error it latched.
    backend: Arc<dyn FileIo>,
    reserve: Option<Arc<SpaceReserve>>,
    cache_bytes: usize,
    /// A commit failed: redb may have latched the error; reopen before the next use.
    needs_reopen: AtomicBool,
}

impl std::fmt::Debug for RedbEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbEngine")
    }
}

/// Open (or create) the B-tree over `backend`.
pub(crate) fn open_db(
    backend: Arc<dyn FileIo>,
    reserve: Option<Arc<SpaceReserve>>,
    cache: usize,
    verify: bool,
) -> Result<Database> {
    redb::Builder::new()
        .set_cache_size(cache)
        .set_check_integrity_on_open(verify)
        .create_with_backend(RedbFile {
            file: backend,
            reserve,
        })
        .map_err(|e| match Error::from(e) {
            Error::Corrupted(m) => Error::Corrupted(format!(
                "{m} (the metadata B-tree failed verification at open)"
            )),
            // redb reports a damaged file header (magic, version, god byte) as invalid data.
            Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                Error::Corrupted(format!("meta.redb: offset 0: damaged file header: {e}"))
            }
            other => other,
        })
}

impl RedbEngine {
    pub fn open(
        backend: Arc<dyn FileIo>,
        reserve: Option<Arc<SpaceReserve>>,
        cache_bytes: usize,
        verify: bool,
    ) -> Result<RedbEngine> {
        let db = open_db(backend.clone(), reserve.clone(), cache_bytes, verify)?;
        Ok(RedbEngine {
            db: RwLock::new(Arc::new(db)),
            backend,
            reserve,
            cache_bytes,
            needs_reopen: AtomicBool::new(false),
        })
    }

    /// The database, reopened first if an earlier failure may have latched it.
    pub fn database(&self) -> Result<Arc<Database>> {
        if self.needs_reopen.load(Ordering::SeqCst) {
            self.reopen()?;
        }
        Ok(self.db.read().clone())
    }

    fn reopen(&self) -> Result<()> {
        let mut slot = self.db.write();
        if !self.needs_reopen.load(Ordering::SeqCst) {
            return Ok(());
        }
        // A database that still starts a write transaction has latched nothing.
        if slot.begin_write().map(|w| w.abort()).is_err() {
            let fresh = open_db(
                self.backend.clone(),
                self.reserve.clone(),
                self.cache_bytes,
                false,
            )?;
            *slot = Arc::new(fresh);
            log::warn!("metadata B-tree reopened after an I/O error");
        }
        self.needs_reopen.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn write_all(&self, deltas: &[&Delta]) -> Result<()> {
        let db = self.database()?;
        let mut wtx = db.begin_write()?;
        wtx.set_durability(Durability::Immediate)?;
        for t in TABLES {
            for d in deltas {
                apply_table(&wtx, t, d.table(t))?;
            }
        }
        wtx.commit()?;
        Ok(())
    }
}

impl Engine for RedbEngine {
    fn snapshot(&self) -> Result<Arc<dyn Snapshot>> {
        let rtx = self.database()?.begin_read()?;
        Ok(Arc::new(RedbSnapshot {
            rtx,
            tables: Default::default(),
        }))
    }

    fn commit(&self, deltas: &[&Delta]) -> Result<()> {
        let r = self.write_all(deltas);
        if r.is_err() {
            self.needs_reopen.store(true, Ordering::SeqCst);
        }
        r
    }
}
