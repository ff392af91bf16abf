//! The encoding of every value stored in the metadata B-tree: a versioned, checksummed envelope
//! around a postcard-serialised record.
//!
//! ```text
//! byte 0        record version (u8), one sequence per record type
//! bytes 1..n-4  postcard payload
//! bytes n-4..n  CRC-32C of bytes 0..n-4, little-endian
//! ```
//!
//! Decoding never panics: a short value, a bad checksum, an unknown version or a payload that does
//! not parse is a `Corrupted` error naming the table and key.

use crate::error::{Error, Result};
use crate::types::{BlockNo, BlockRun, FileKind, InodeNo, Timespec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A record type stored in one table, with its current version.
pub(crate) trait Record: Serialize + DeserializeOwned {
    const TABLE: &'static str;
    const VERSION: u8;
    /// Decode a payload written by an older version of this record, if that version is known.
    fn decode_older(
        _version: u8,
        _payload: &[u8],
    ) -> Option<std::result::Result<Self, postcard::Error>> {
        None
    }
}

pub(crate) fn encode<R: Record>(r: &R) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(R::VERSION);
    // Serialising our own plain structs into a Vec cannot fail; keep the error path anyway.
    match postcard::to_extend(r, out) {
        Ok(mut out) => {
            let crc = crc32c::crc32c(&out);
            out.extend_from_slice(&crc.to_le_bytes());
            out
        }
        Err(_) => Vec::new(),
    }
}

pub(crate) fn decode<R: Record>(bytes: &[u8], key: &dyn std::fmt::Debug) -> Result<R> {
    let fail = |why: &str| {
        Error::corrupt(format!(
            "meta.redb: table {} key {:?}: {why}",
            R::TABLE,
            key
        ))
    };
    if bytes.len() < 5 {
        return Err(fail(&format!(
            "value of {} bytes is too short",
            bytes.len()
        )));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != stored {
        return Err(fail("checksum mismatch"));
    }
    if body[0] != R::VERSION {
        if let Some(old) = R::decode_older(body[0], &body[1..]) {
            return old.map_err(|e| fail(&format!("undecodable version {} record: {e}", body[0])));
        }
        return Err(fail(&format!(
            "record version {} is not understood (this build reads version {})",
            body[0],
            R::VERSION
        )));
    }
    let (rec, rest) = postcard::take_from_bytes::<R>(&body[1..])
        .map_err(|e| fail(&format!("undecodable: {e}")))?;
    if !rest.is_empty() {
        return Err(fail("trailing bytes"));
    }
    Ok(rec)
}

/// An inode: everything `stat` shows, plus the directory cookie counter and symlink target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InodeRecord {
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    pub rdev: u32,
    pub generation: u64,
    /// Directories: the next readdir cookie to hand out (cookies 1 and 2 are "." and "..").
    pub next_cookie: u64,
    /// Directories: the parent directory (for "..").
    pub parent: InodeNo,
    /// Symlinks: the target.
    pub target: Vec<u8>,
    /// Regular files: blocks mapped by the extent map, pool and lower (shared ones in full).
    pub blocks: u64,
    /// The `chattr` flags (`FS_*_FL` bits of [`InodeFlags`](crate::InodeFlags)); version 2.
    pub flags: u32,
}

/// Version 1 of [`InodeRecord`]: no inode flags.
#[derive(Deserialize)]
struct InodeRecordV1 {
    kind: FileKind,
    perm: u16,
    uid: u32,
    gid: u32,
    nlink: u32,
    size: u64,
    atime: Timespec,
    mtime: Timespec,
    ctime: Timespec,
    crtime: Timespec,
    rdev: u32,
    generation: u64,
    next_cookie: u64,
    parent: InodeNo,
    target: Vec<u8>,
    blocks: u64,
}

impl Record for InodeRecord {
    const TABLE: &'static str = "inodes";
    const VERSION: u8 = 2;
    fn decode_older(
        version: u8,
        payload: &[u8],
    ) -> Option<std::result::Result<Self, postcard::Error>> {
        (version == 1).then(|| {
            postcard::from_bytes::<InodeRecordV1>(payload).map(|v| InodeRecord {
                kind: v.kind,
                perm: v.perm,
                uid: v.uid,
                gid: v.gid,
                nlink: v.nlink,
                size: v.size,
                atime: v.atime,
                mtime: v.mtime,
                ctime: v.ctime,
                crtime: v.crtime,
                rdev: v.rdev,
                generation: v.generation,
                next_cookie: v.next_cookie,
                parent: v.parent,
                target: v.target,
                blocks: v.blocks,
                flags: 0,
            })
        })
    }
}

/// A directory entry, keyed by (parent, name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DirentRecord {
    pub ino: InodeNo,
    pub kind: FileKind,
    pub cookie: u64,
}

impl Record for DirentRecord {
    const TABLE: &'static str = "dirents";
    const VERSION: u8 = 1;
}

/// One extent of a file's map, keyed by (inode, first file block).
/// `lower == 0`: `phys` is a pool block. Otherwise `phys` is a block of lower file `lower` (the
/// overlay's read-only lower directory), which no refcount covers: it is never written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExtentRecord {
    pub phys: u64,
    pub len: u64,
    pub lower: u64,
}

/// Version 1 of [`ExtentRecord`]: pool extents only.
#[derive(Deserialize)]
struct ExtentRecordV1 {
    phys: u64,
    len: u64,
}

impl ExtentRecord {
    /// The pool blocks of a pool extent (`lower == 0`).
    pub fn pool_run(&self) -> BlockRun {
        BlockRun::new(BlockNo(self.phys), self.len)
    }
}

impl Record for ExtentRecord {
    const TABLE: &'static str = "extents";
    const VERSION: u8 = 2;
    fn decode_older(
        version: u8,
        payload: &[u8],
    ) -> Option<std::result::Result<Self, postcard::Error>> {
        (version == 1).then(|| {
            postcard::from_bytes::<ExtentRecordV1>(payload).map(|v| ExtentRecord {
                phys: v.phys,
                len: v.len,
                lower: 0,
            })
        })
    }
}

/// The overlay's lower directory, recorded once (key 0 of table `lower`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LowerRootRecord {
    /// Absolute, canonical path.
    pub path: Vec<u8>,
    pub dev: u64,
    pub ino: u64,
}

impl Record for LowerRootRecord {
    const TABLE: &'static str = "lower";
    const VERSION: u8 = 1;
}

/// A lower file some extents point into, as it was when imported; a lower file that no longer
/// matches is refused (EIO) rather than mixed with newer bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LowerFileRecord {
    /// Path relative to the lower root.
    pub path: Vec<u8>,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: Timespec,
}

impl Record for LowerFileRecord {
    const TABLE: &'static str = "lower_files";
    const VERSION: u8 = 1;
}

/// A directory whose lower entries are not imported yet (table `lower_pending`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LowerDirRecord {
    /// Path relative to the lower root ("" for the root).
    pub path: Vec<u8>,
}

impl Record for LowerDirRecord {
    const TABLE: &'static str = "lower_pending";
    const VERSION: u8 = 1;
}

/// A run of pool blocks referenced `count >= 2` times, keyed by its first block.
/// Blocks that are allocated and have no record are referenced once (the XFS model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RefcountRecord {
    pub len: u64,
    pub count: u64,
}

impl Record for RefcountRecord {
    const TABLE: &'static str = "refcounts";
    const VERSION: u8 = 1;
}

/// A run of free pool blocks, keyed by its first block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FreeRecord {
    pub len: u64,
}

impl Record for FreeRecord {
    const TABLE: &'static str = "free";
    const VERSION: u8 = 1;
}

/// An extended attribute value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct XattrRecord {
    pub value: Vec<u8>,
}

impl Record for XattrRecord {
    const TABLE: &'static str = "xattrs";
    const VERSION: u8 = 1;
}

/// Store-wide counters, one record under key 0 of the `state` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateRecord {
    /// Commit counter: incremented by every durable commit.
    pub generation: u64,
    pub next_ino: InodeNo,
    /// Pool blocks below this are either free or referenced; none above are used.
    pub pool_blocks: u64,
    /// Number of live inodes.
    pub inodes: u64,
    /// False while a process has the store open for writing.
    pub clean: bool,
    /// Records in the `images` table: pool blocks whose bytes this commit holds because the pool
    /// was not synced for it (version 2; version 1 records have none). A state with images is
    /// written as version 2, one without as version 1, so a build that predates images refuses
    /// only a store it would read wrongly.
    pub images: u64,
}

/// A version 1 state record: no images.
#[derive(Deserialize, Serialize)]
struct StateRecordV1 {
    generation: u64,
    next_ino: InodeNo,
    pool_blocks: u64,
    inodes: u64,
    clean: bool,
}

impl Record for StateRecord {
    const TABLE: &'static str = "state";
    const VERSION: u8 = 2;
    fn decode_older(
        version: u8,
        payload: &[u8],
    ) -> Option<std::result::Result<Self, postcard::Error>> {
        (version == 1).then(|| {
            let (v1, rest) = postcard::take_from_bytes::<StateRecordV1>(payload)?;
            if !rest.is_empty() {
                return Err(postcard::Error::DeserializeBadEncoding);
            }
            Ok(StateRecord {
                generation: v1.generation,
                next_ino: v1.next_ino,
                pool_blocks: v1.pool_blocks,
                inodes: v1.inodes,
                clean: v1.clean,
                images: 0,
            })
        })
    }
}

impl Record for StateRecordV1 {
    const TABLE: &'static str = "state";
    const VERSION: u8 = 1;
}

/// The state record as it is written: version 1 while the commit holds no images.
pub(crate) fn encode_state(st: &StateRecord) -> Vec<u8> {
    if st.images > 0 {
        return encode(st);
    }
    encode(&StateRecordV1 {
        generation: st.generation,
        next_ino: st.next_ino,
        pool_blocks: st.pool_blocks,
        inodes: st.inodes,
        clean: st.clean,
    })
}

/// The bytes of one pool block, carried by a commit (table `images`, key: the block).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub bytes: Vec<u8>,
}

impl Record for ImageRecord {
    const TABLE: &'static str = "images";
    const VERSION: u8 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let r = ExtentRecord {
            phys: 42,
            len: 7,
            lower: 3,
        };
        let bytes = encode(&r);
        assert_eq!(decode::<ExtentRecord>(&bytes, &1u64).ok(), Some(r));
    }

    #[test]
    fn typed_inode_numbers_are_the_bytes_of_a_u64() {
        #[derive(Serialize)]
        struct Plain {
            ino: u64,
            kind: FileKind,
            cookie: u64,
        }
        let typed = DirentRecord {
            ino: InodeNo(300),
            kind: FileKind::Directory,
            cookie: 7,
        };
        let plain = Plain {
            ino: 300,
            kind: FileKind::Directory,
            cookie: 7,
        };
        assert_eq!(
            postcard::to_stdvec(&typed).ok(),
            postcard::to_stdvec(&plain).ok()
        );
    }

    #[test]
    fn the_state_is_written_as_version_1_unless_it_holds_images() -> Result<()> {
        let mut st = StateRecord {
            generation: 7,
            next_ino: InodeNo(9),
            pool_blocks: 100,
            inodes: 3,
            clean: false,
            images: 0,
        };
        let v1 = encode_state(&st);
        assert_eq!(v1[0], 1, "a build without images reads it");
        assert_eq!(decode::<StateRecord>(&v1, &0u64)?, st);
        st.images = 5;
        let v2 = encode_state(&st);
        assert_eq!(v2[0], 2, "a build without images refuses it");
        assert_eq!(decode::<StateRecord>(&v2, &0u64)?, st);
        Ok(())
    }

    #[test]
    fn version_1_extents_still_decode() {
        #[derive(Serialize)]
        struct V1 {
            phys: u64,
            len: u64,
        }
        let mut out = vec![1u8];
        out = postcard::to_extend(&V1 { phys: 9, len: 4 }, out).unwrap_or_default();
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let e = decode::<ExtentRecord>(&out, &0u64).ok();
        assert_eq!(
            e,
            Some(ExtentRecord {
                phys: 9,
                len: 4,
                lower: 0
            })
        );
    }

    /// Version 1 inode records exactly as format version 1 builds wrote them (frozen bytes: a
    /// regular file and a symlink).
    const INODE_V1_REGULAR: [u8; 43] = [
        1, 0, 164, 3, 232, 7, 100, 1, 5, 130, 196, 159, 213, 12, 2, 134, 196, 159, 213, 12, 4, 138,
        196, 159, 213, 12, 6, 142, 196, 159, 213, 12, 8, 0, 9, 3, 1, 0, 1, 79, 195, 116, 244,
    ];
    const INODE_V1_SYMLINK: [u8; 47] = [
        1, 2, 255, 3, 232, 7, 100, 1, 4, 130, 196, 159, 213, 12, 2, 134, 196, 159, 213, 12, 4, 138,
        196, 159, 213, 12, 6, 142, 196, 159, 213, 12, 8, 0, 9, 3, 1, 4, 46, 46, 47, 116, 0, 110,
        36, 229, 136,
    ];

    #[test]
    fn version_1_inodes_still_decode() -> Result<()> {
        // Regression (issue 10, defect 23): InodeRecord v2 adds the chattr flags; stores written
        // before it hold v1 records, which must read as inodes without flags.
        let t = |sec: i64, nsec: u32| Timespec { sec, nsec };
        let reg = decode::<InodeRecord>(&INODE_V1_REGULAR, &2u64)?;
        let want = InodeRecord {
            kind: FileKind::Regular,
            perm: 0o644,
            uid: 1000,
            gid: 100,
            nlink: 1,
            size: 5,
            atime: t(1_700_000_001, 2),
            mtime: t(1_700_000_003, 4),
            ctime: t(1_700_000_005, 6),
            crtime: t(1_700_000_007, 8),
            rdev: 0,
            generation: 9,
            next_cookie: 3,
            parent: InodeNo(1),
            target: Vec::new(),
            blocks: 1,
            flags: 0,
        };
        assert_eq!(reg, want);
        let sym = decode::<InodeRecord>(&INODE_V1_SYMLINK, &3u64)?;
        assert_eq!(sym.kind, FileKind::Symlink);
        assert_eq!(
            (sym.target.as_slice(), sym.size, sym.flags),
            (&b"../t"[..], 4, 0)
        );
        // What this build writes is version 2 and keeps the flags.
        let v2 = encode(&InodeRecord {
            flags: 0x30,
            ..want
        });
        assert_eq!(v2[0], 2);
        assert_eq!(decode::<InodeRecord>(&v2, &2u64)?.flags, 0x30);
        Ok(())
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode(&RefcountRecord { len: 9, count: 3 });
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(
                decode::<RefcountRecord>(&b, &0u64).is_err(),
                "flip of bit {i} went unnoticed"
            );
        }
    }

    #[test]
    fn unknown_version_is_named() {
        let mut bytes = encode(&FreeRecord { len: 1 });
        bytes[0] = 9;
        let body_len = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..body_len]);
        bytes[body_len..].copy_from_slice(&crc.to_le_bytes());
        let err = decode::<FreeRecord>(&bytes, &5u64)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("version 9"), "{err}");
        assert!(err.contains("free"), "{err}");
    }

    #[test]
    fn short_and_garbage_values_are_errors() {
        for len in 0..12 {
            let junk = vec![0xA5u8; len];
            assert!(decode::<InodeRecord>(&junk, &len).is_err());
        }
    }
}
