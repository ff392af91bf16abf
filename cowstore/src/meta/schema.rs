//! The tables of the metadata store and how their keys and values become bytes.
//!
//! The engine seam ([`super::Engine`]) stores bytes under `(table, key)`. Keys are encoded so
//! that byte order is key order: integers big-endian and fixed-width, a name as its raw bytes
//! after the integer in front of it. Values are the codec's envelopes as they are, `()` as no
//! bytes, and a `u64` value as 8 little-endian bytes. The redb engine turns them back into the
//! typed redb tables of format version 1, so the seam does not change the on-disk format.

use crate::error::{Error, Result};
use crate::types::{BlockNo, InodeNo};
use std::marker::PhantomData;

/// One table of the metadata store. The discriminants index arrays; the names are on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TableId {
    State = 0,
    Inodes = 1,
    Dirents = 2,
    Cookies = 3,
    Xattrs = 4,
    Extents = 5,
    Refcounts = 6,
    Free = 7,
    Orphans = 8,
    Lower = 9,
    LowerFiles = 10,
    LowerPending = 11,
    LowerInodes = 12,
    /// Pool blocks whose bytes a commit carried itself instead of syncing the pool (see
    /// `Inner::commit`): replayed into the pool when the store opens.
    Images = 13,
}

/// Every table, in discriminant order.
pub(crate) const TABLES: [TableId; 14] = [
    TableId::State,
    TableId::Inodes,
    TableId::Dirents,
    TableId::Cookies,
    TableId::Xattrs,
    TableId::Extents,
    TableId::Refcounts,
    TableId::Free,
    TableId::Orphans,
    TableId::Lower,
    TableId::LowerFiles,
    TableId::LowerPending,
    TableId::LowerInodes,
    TableId::Images,
];

pub(crate) const N_TABLES: usize = TABLES.len();

/// The shape of a table's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyShape {
    /// `u64`
    Int,
    /// `(u64, u64)`
    Pair,
    /// `(u64, name bytes)`
    Named,
}

/// The shape of a table's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ValueShape {
    /// A codec envelope (or, for `cookies`, a raw name).
    Bytes,
    /// `()`: the key is all there is.
    Unit,
    /// `u64`
    Int,
}

impl TableId {
    pub fn index(self) -> usize {
        self as usize
    }

    /// The table's name in the B-tree file (part of the format).
    pub fn name(self) -> &'static str {
        match self {
            TableId::State => "state",
            TableId::Inodes => "inodes",
            TableId::Dirents => "dirents",
            TableId::Cookies => "cookies",
            TableId::Xattrs => "xattrs",
            TableId::Extents => "extents",
            TableId::Refcounts => "refcounts",
            TableId::Free => "free",
            TableId::Orphans => "orphans",
            TableId::Lower => "lower",
            TableId::LowerFiles => "lower_files",
            TableId::LowerPending => "lower_pending",
            TableId::LowerInodes => "lower_inodes",
            TableId::Images => "images",
        }
    }

    pub fn key_shape(self) -> KeyShape {
        match self {
            TableId::Dirents | TableId::Xattrs => KeyShape::Named,
            TableId::Cookies | TableId::Extents | TableId::LowerInodes => KeyShape::Pair,
            _ => KeyShape::Int,
        }
    }

    pub fn value_shape(self) -> ValueShape {
        match self {
            TableId::Orphans => ValueShape::Unit,
            TableId::LowerInodes => ValueShape::Int,
            _ => ValueShape::Bytes,
        }
    }
}

/// A typed key: how it is written as bytes (order-preserving) and read back.
pub(crate) trait KeyCodec {
    /// The key as callers pass it (borrowing a name, for named keys).
    type In<'a>: Copy;
    /// The key as it comes back from a range.
    type Out;
    fn encode(k: Self::In<'_>, out: &mut Vec<u8>);
    fn decode(table: TableId, b: &[u8]) -> Result<Self::Out>;
}

/// A typed value.
pub(crate) trait ValueCodec {
    type In<'a>: Copy;
    type Out;
    fn encode(v: Self::In<'_>) -> Vec<u8>;
    fn decode(table: TableId, b: &[u8]) -> Result<Self::Out>;
}

/// A key or value part stored as one `u64`: plain integers and the newtypes over one. The bytes
/// are those of the `u64`, so typing a table does not change what is on disk.
pub(crate) trait U64Part: Copy {
    fn to_u64(self) -> u64;
    fn from_u64(v: u64) -> Self;
}

impl U64Part for u64 {
    fn to_u64(self) -> u64 {
        self
    }
    fn from_u64(v: u64) -> u64 {
        v
    }
}

impl U64Part for InodeNo {
    fn to_u64(self) -> u64 {
        self.0
    }
    fn from_u64(v: u64) -> InodeNo {
        InodeNo(v)
    }
}

impl U64Part for BlockNo {
    fn to_u64(self) -> u64 {
        self.0
    }
    fn from_u64(v: u64) -> BlockNo {
        BlockNo(v)
    }
}

/// `u64` keys (or a newtype over one).
pub(crate) struct IntKey<A = u64>(PhantomData<A>);
/// `(u64, u64)` keys.
pub(crate) struct PairKey<A = u64, B = u64>(PhantomData<(A, B)>);
/// `(u64, name)` keys.
pub(crate) struct NamedKey<A = u64>(PhantomData<A>);
/// Byte-string values (codec envelopes).
pub(crate) struct BytesValue;
/// `()` values.
pub(crate) struct UnitValue;
/// `u64` values.
pub(crate) struct IntValue<A = u64>(PhantomData<A>);

fn bad_key(table: TableId, b: &[u8]) -> Error {
    Error::corrupt(format!(
        "meta: table {}: key of {} bytes does not fit the table",
        table.name(),
        b.len()
    ))
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

impl<A: U64Part> KeyCodec for IntKey<A> {
    type In<'a> = A;
    type Out = A;
    fn encode(k: A, out: &mut Vec<u8>) {
        out.extend_from_slice(&k.to_u64().to_be_bytes());
    }
    fn decode(table: TableId, b: &[u8]) -> Result<A> {
        match b.len() {
            8 => be_u64(b).map(A::from_u64).ok_or_else(|| bad_key(table, b)),
            _ => Err(bad_key(table, b)),
        }
    }
}

impl<A: U64Part, B: U64Part> KeyCodec for PairKey<A, B> {
    type In<'a> = (A, B);
    type Out = (A, B);
    fn encode((a, b): (A, B), out: &mut Vec<u8>) {
        out.extend_from_slice(&a.to_u64().to_be_bytes());
        out.extend_from_slice(&b.to_u64().to_be_bytes());
    }
    fn decode(table: TableId, b: &[u8]) -> Result<(A, B)> {
        match (b.len(), be_u64(b), b.get(8..).and_then(be_u64)) {
            (16, Some(x), Some(y)) => Ok((A::from_u64(x), B::from_u64(y))),
            _ => Err(bad_key(table, b)),
        }
    }
}

impl<A: U64Part> KeyCodec for NamedKey<A> {
    type In<'a> = (A, &'a [u8]);
    type Out = (A, Vec<u8>);
    fn encode((a, name): (A, &[u8]), out: &mut Vec<u8>) {
        out.extend_from_slice(&a.to_u64().to_be_bytes());
        out.extend_from_slice(name);
    }
    fn decode(table: TableId, b: &[u8]) -> Result<(A, Vec<u8>)> {
        let a = be_u64(b).ok_or_else(|| bad_key(table, b))?;
        Ok((A::from_u64(a), b[8..].to_vec()))
    }
}

impl ValueCodec for BytesValue {
    type In<'a> = &'a [u8];
    type Out = Vec<u8>;
    fn encode(v: &[u8]) -> Vec<u8> {
        v.to_vec()
    }
    fn decode(_: TableId, b: &[u8]) -> Result<Vec<u8>> {
        Ok(b.to_vec())
    }
}

impl ValueCodec for UnitValue {
    type In<'a> = ();
    type Out = ();
    fn encode(_: ()) -> Vec<u8> {
        Vec::new()
    }
    fn decode(_: TableId, _: &[u8]) -> Result<()> {
        Ok(())
    }
}

impl<A: U64Part> ValueCodec for IntValue<A> {
    type In<'a> = A;
    type Out = A;
    fn encode(v: A) -> Vec<u8> {
        v.to_u64().to_le_bytes().to_vec()
    }
    fn decode(table: TableId, b: &[u8]) -> Result<A> {
        let arr: [u8; 8] = b.try_into().map_err(|_| {
            Error::corrupt(format!(
                "meta: table {}: value of {} bytes is not a u64",
                table.name(),
                b.len()
            ))
        })?;
        Ok(A::from_u64(u64::from_le_bytes(arr)))
    }
}

/// Encode a typed key.
pub(crate) fn key<K: KeyCodec>(k: K::In<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    K::encode(k, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bytes_sort_as_keys() {
        let pairs = [
            (0u64, 5u64),
            (1, 0),
            (1, 1),
            (1, u64::MAX),
            (256, 0),
            (u64::MAX, 0),
        ];
        for w in pairs.windows(2) {
            assert!(key::<PairKey>(w[0]) < key::<PairKey>(w[1]), "{w:?}");
        }
        let named: [(u64, &[u8]); 5] = [(1, b""), (1, b"a"), (1, b"ab"), (1, b"b"), (2, b"")];
        for w in named.windows(2) {
            assert!(key::<NamedKey>(w[0]) < key::<NamedKey>(w[1]), "{w:?}");
        }
        for t in TABLES {
            assert_eq!(TABLES[t.index()], t);
        }
    }

    #[test]
    fn table_names_and_shapes_are_the_format() {
        // The names are the redb table names of format 1 and the shapes their key and value
        // types: neither may follow a reordering of `TableId`.
        let want = [
            (TableId::State, "state", KeyShape::Int, ValueShape::Bytes),
            (TableId::Inodes, "inodes", KeyShape::Int, ValueShape::Bytes),
            (
                TableId::Dirents,
                "dirents",
                KeyShape::Named,
                ValueShape::Bytes,
            ),
            (
                TableId::Cookies,
                "cookies",
                KeyShape::Pair,
                ValueShape::Bytes,
            ),
            (
                TableId::Xattrs,
                "xattrs",
                KeyShape::Named,
                ValueShape::Bytes,
            ),
            (
                TableId::Extents,
                "extents",
                KeyShape::Pair,
                ValueShape::Bytes,
            ),
            (
                TableId::Refcounts,
                "refcounts",
                KeyShape::Int,
                ValueShape::Bytes,
            ),
            (TableId::Free, "free", KeyShape::Int, ValueShape::Bytes),
            (TableId::Orphans, "orphans", KeyShape::Int, ValueShape::Unit),
            (TableId::Lower, "lower", KeyShape::Int, ValueShape::Bytes),
            (
                TableId::LowerFiles,
                "lower_files",
                KeyShape::Int,
                ValueShape::Bytes,
            ),
            (
                TableId::LowerPending,
                "lower_pending",
                KeyShape::Int,
                ValueShape::Bytes,
            ),
            (
                TableId::LowerInodes,
                "lower_inodes",
                KeyShape::Pair,
                ValueShape::Int,
            ),
            (TableId::Images, "images", KeyShape::Int, ValueShape::Bytes),
        ];
        assert_eq!(want.len(), N_TABLES);
        for (t, name, k, v) in want {
            assert_eq!(
                (t.name(), t.key_shape(), t.value_shape()),
                (name, k, v),
                "{t:?}"
            );
        }
    }

    #[test]
    fn keys_round_trip_and_bad_lengths_are_errors() -> Result<()> {
        assert_eq!(
            IntKey::<u64>::decode(TableId::Inodes, &key::<IntKey>(77))?,
            77
        );
        assert_eq!(
            PairKey::<u64, u64>::decode(TableId::Extents, &key::<PairKey>((3, 9)))?,
            (3, 9)
        );
        assert_eq!(
            NamedKey::<u64>::decode(TableId::Dirents, &key::<NamedKey>((3, b"x")))?,
            (3, b"x".to_vec())
        );
        assert!(IntKey::<u64>::decode(TableId::Inodes, &[1, 2]).is_err());
        assert!(PairKey::<u64, u64>::decode(TableId::Extents, &[0; 15]).is_err());
        assert!(NamedKey::<u64>::decode(TableId::Dirents, &[0; 7]).is_err());
        assert!(IntValue::<u64>::decode(TableId::LowerInodes, &[0; 3]).is_err());
        Ok(())
    }

    #[test]
    fn typed_keys_and_values_are_the_bytes_of_their_u64() {
        assert_eq!(key::<IntKey<InodeNo>>(InodeNo(77)), key::<IntKey>(77));
        assert_eq!(key::<IntKey<BlockNo>>(BlockNo(9)), key::<IntKey>(9));
        assert_eq!(
            key::<PairKey<InodeNo, u64>>((InodeNo(3), 9)),
            key::<PairKey>((3, 9))
        );
        assert_eq!(
            key::<NamedKey<InodeNo>>((InodeNo(3), b"x")),
            key::<NamedKey>((3, b"x"))
        );
        assert_eq!(
            IntValue::<InodeNo>::encode(InodeNo(5)),
            IntValue::<u64>::encode(5)
        );
    }
}
