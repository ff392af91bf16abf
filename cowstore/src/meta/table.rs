//! A typed table of one operation: reads see the operation's own changes over the store's
//! uncommitted ones over the last commit; writes go to the operation's own changes only, which
//! the store keeps if the operation succeeds and drops if it fails (see `store::Inner::write`).

use super::engine::{changes_in, Layers, Merge};
use super::schema::{key, KeyCodec, NamedKey, TableId, U64Part, ValueCodec};
use crate::error::Result;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

pub(crate) struct Table<'t, K: KeyCodec, V: ValueCodec> {
    id: TableId,
    below: Layers<'t>,
    /// This operation's changes (None: deleted).
    own: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    _types: PhantomData<(K, V)>,
}

fn encode_bound<K: KeyCodec>(b: Bound<&K::In<'_>>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(key::<K>(*k)),
        Bound::Excluded(k) => Bound::Excluded(key::<K>(*k)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl<'t, K: KeyCodec, V: ValueCodec> Table<'t, K, V> {
    pub fn new(id: TableId, below: Layers<'t>) -> Self {
        Table {
            id,
            below,
            own: BTreeMap::new(),
            _types: PhantomData,
        }
    }

    pub fn id(&self) -> TableId {
        self.id
    }

    /// The operation's changes, for the store to keep.
    pub fn into_changes(self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.own
    }

    fn raw_get(&self, k: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.own.get(k) {
            Some(v) => Ok(v.clone()),
            None => self.below.get(self.id, k),
        }
    }

    pub fn get(&self, k: K::In<'_>) -> Result<Option<V::Out>> {
        match self.raw_get(&key::<K>(k))? {
            Some(v) => Ok(Some(V::decode(self.id, &v)?)),
            None => Ok(None),
        }
    }

    pub fn contains(&self, k: K::In<'_>) -> Result<bool> {
        Ok(self.raw_get(&key::<K>(k))?.is_some())
    }

    pub fn insert(&mut self, k: K::In<'_>, v: V::In<'_>) -> Result<()> {
        self.own.insert(key::<K>(k), Some(V::encode(v)));
        Ok(())
    }

    /// Delete a key, there or not: a tombstone, without reading the layers below (a tombstone
    /// over nothing hides nothing, and the engine's delete of an absent key does nothing).
    pub fn remove(&mut self, k: K::In<'_>) -> Result<()> {
        self.own.insert(key::<K>(k), None);
        Ok(())
    }

    /// Delete a key; returns whether it was there.
    pub fn remove_found(&mut self, k: K::In<'_>) -> Result<bool> {
        let k = key::<K>(k);
        let existed = self.raw_get(&k)?.is_some();
        self.own.insert(k, None);
        Ok(existed)
    }

    fn entries<'a>(
        &'a self,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        rev: bool,
    ) -> Result<impl Iterator<Item = Result<(K::Out, V::Out)>> + 'a> {
        let (l, h) = (as_slice(&lo), as_slice(&hi));
        let below = self.below.range(self.id, l, h, rev)?;
        let merged = Merge::new(changes_in(&self.own, l, h, rev), below, rev);
        let id = self.id;
        Ok(merged.map(move |item| {
            let (k, v) = item?;
            Ok((K::decode(id, &k)?, V::decode(id, &v)?))
        }))
    }

    /// Entries with keys in `r`, ascending.
    pub fn range<'k>(
        &self,
        r: impl RangeBounds<K::In<'k>>,
    ) -> Result<impl Iterator<Item = Result<(K::Out, V::Out)>> + '_> {
        self.entries(
            encode_bound::<K>(r.start_bound()),
            encode_bound::<K>(r.end_bound()),
            false,
        )
    }

    /// Entries with keys in `r`, descending.
    pub fn range_rev<'k>(
        &self,
        r: impl RangeBounds<K::In<'k>>,
    ) -> Result<impl Iterator<Item = Result<(K::Out, V::Out)>> + '_> {
        self.entries(
            encode_bound::<K>(r.start_bound()),
            encode_bound::<K>(r.end_bound()),
            true,
        )
    }

    /// Every entry, ascending.
    pub fn iter(&self) -> Result<impl Iterator<Item = Result<(K::Out, V::Out)>> + '_> {
        self.entries(Bound::Unbounded, Bound::Unbounded, false)
    }

    /// The number of entries (walks the table).
    pub fn len(&self) -> Result<u64> {
        let mut n = 0;
        for item in self.entries(Bound::Unbounded, Bound::Unbounded, false)? {
            item?;
            n += 1;
        }
        Ok(n)
    }
}

impl<A: U64Part, V: ValueCodec> Table<'_, NamedKey<A>, V> {
    /// The entries of inode `ino` (keys `(ino, name)`), ascending. Bounded on both sides: a scan
    /// that stopped only at the first key of another inode would first step over every removal
    /// the open transaction made past it (a tombstone is never returned, so never stops it).
    pub fn of_ino(&self, ino: A) -> Result<impl Iterator<Item = Result<(Vec<u8>, V::Out)>> + '_> {
        let empty: &[u8] = &[];
        let hi = match ino.to_u64().checked_add(1) {
            Some(next) => Bound::Excluded(key::<NamedKey<A>>((A::from_u64(next), empty))),
            None => Bound::Unbounded,
        };
        let lo = Bound::Included(key::<NamedKey<A>>((ino, empty)));
        let it = self.entries(lo, hi, false)?;
        Ok(it.map(|item| item.map(|((_, name), v)| (name, v))))
    }
}
