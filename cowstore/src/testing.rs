//! Fault injection for tests of `check`, `repair` and fsck: each function breaks exactly one
//! invariant of a store the way a bug or a bad disk could, inside a normal transaction, and commits.
//! Never used by the filesystem itself.

use crate::codec::{decode, encode, DirentRecord, ExtentRecord, RefcountRecord};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::types::{BlockRun, FileKind, InodeNo};

/// One way to break a store.
#[derive(Clone, Debug)]
pub enum Damage {
    /// Give the first extent of the file a refcount record of 3.
    WrongRefcount(InodeNo),
    /// Take one block off the free list (or past the end of the pool) without referencing it.
    LeakedBlock,
    /// Copy the extent map of `src` into `dst` without counting the new references.
    DoubleReference { src: InodeNo, dst: InodeNo },
    /// Set a wrong link count.
    WrongLinkCount(InodeNo, u32),
    /// Add an entry naming an inode that does not exist.
    DanglingDirent { parent: InodeNo, name: Vec<u8> },
    /// Remove every entry of a file and set its links to 0, without putting it on the orphan list.
    Orphan { parent: InodeNo, name: Vec<u8> },
    /// Remove the entry of a file but keep its link count (unreachable from the root).
    Disconnect { parent: InodeNo, name: Vec<u8> },
    /// Flip a byte of the inode's record, as a bad disk could: it fails its checksum.
    CorruptInode(InodeNo),
    /// Flip a byte of the file's first extent record: it fails its checksum.
    CorruptExtent(InodeNo),
    /// Delete the inode's record, leaving its entries and extents (a lost B-tree update).
    MissingInode(InodeNo),
    /// Put the file's first block in the free table while its extent still references it.
    FreeReferencedBlock(InodeNo),
}

/// Flip one payload byte of an envelope (byte 0 is the version): the checksum no longer matches.
fn flip_payload_byte(value: &mut [u8]) -> Result<()> {
    let b = value
        .get_mut(1)
        .ok_or(Error::Invalid("record too short to damage"))?;
    *b ^= 0xFF;
    Ok(())
}

impl Store {
    #[doc(hidden)]
    pub fn inject_damage(&self, damage: &Damage) -> Result<()> {
        self.inner().write(|cx| {
            match damage {
                Damage::WrongRefcount(ino) => {
                    let m = *cx
                        .mappings(*ino, 0, u64::MAX)?
                        .first()
                        .ok_or(Error::Invalid("file has no extents"))?;
                    cx.refcounts.insert(
                        m.pool_run().start,
                        encode(&RefcountRecord { len: 1, count: 3 }).as_slice(),
                    )?;
                }
                Damage::LeakedBlock => {
                    cx.alloc(1, None)?;
                }
                Damage::DoubleReference { src, dst } => {
                    let mut dst_rec = cx.get_inode(*dst)?;
                    let src_rec = cx.get_inode(*src)?;
                    for m in cx.mappings(*src, 0, u64::MAX)? {
                        cx.extents.insert(
                            (*dst, m.fb),
                            encode(&ExtentRecord {
                                phys: m.phys,
                                len: m.len,
                                lower: m.lower,
                            })
                            .as_slice(),
                        )?;
                        dst_rec.blocks += m.len;
                    }
                    dst_rec.size = dst_rec.size.max(src_rec.size);
                    cx.put_inode(*dst, &dst_rec)?;
                }
                Damage::WrongLinkCount(ino, n) => {
                    let mut r = cx.get_inode(*ino)?;
                    r.nlink = *n;
                    cx.put_inode(*ino, &r)?;
                }
                Damage::DanglingDirent { parent, name } => {
                    let mut p = cx.get_dir(*parent)?;
                    let cookie = p.next_cookie;
                    p.next_cookie += 1;
                    let d = DirentRecord {
                        ino: InodeNo(999_999_999),
                        kind: FileKind::Regular,
                        cookie,
                    };
                    cx.dirents
                        .insert((*parent, name.as_slice()), encode(&d).as_slice())?;
                    cx.cookies.insert((*parent, cookie), name.as_slice())?;
                    cx.put_inode(*parent, &p)?;
                }
                Damage::Orphan { parent, name } | Damage::Disconnect { parent, name } => {
                    let v = cx
                        .dirents
                        .get((*parent, name.as_slice()))?
                        .ok_or(Error::NotFound)?;
                    let d: DirentRecord = decode(&v, parent)?;
                    cx.dirents.remove((*parent, name.as_slice()))?;
                    cx.cookies.remove((*parent, d.cookie))?;
                    if matches!(damage, Damage::Orphan { .. }) {
                        let mut r = cx.get_inode(d.ino)?;
                        r.nlink = 0;
                        cx.put_inode(d.ino, &r)?;
                    }
                }
                Damage::CorruptInode(ino) => {
                    let mut v = cx.inodes.get(*ino)?.ok_or(Error::NotFound)?;
                    flip_payload_byte(&mut v)?;
                    cx.inodes.insert(*ino, v.as_slice())?;
                }
                Damage::CorruptExtent(ino) => {
                    let (key, mut v) = cx
                        .extents
                        .range((*ino, 0)..=(*ino, u64::MAX))?
                        .next()
                        .ok_or(Error::Invalid("file has no extents"))??;
                    flip_payload_byte(&mut v)?;
                    cx.extents.insert(key, v.as_slice())?;
                }
                Damage::FreeReferencedBlock(ino) => {
                    let m = *cx
                        .mappings(*ino, 0, u64::MAX)?
                        .first()
                        .ok_or(Error::Invalid("file has no extents"))?;
                    cx.insert_free(BlockRun::new(m.pool_run().start, 1))?;
                }
                Damage::MissingInode(ino) => {
                    if !cx.inodes.remove_found(*ino)? {
                        return Err(Error::NotFound);
                    }
                }
            }
            cx.mem.dirty = true;
            Ok(())
        })?;
        self.commit()
    }
}

/// Feed arbitrary bytes to every on-disk decoder (superblock, every record type). Used by fuzz and
/// property tests: it must return, never panic, whatever the bytes. Returns how many decoders
/// accepted the bytes.
#[doc(hidden)]
pub fn decode_everything(bytes: &[u8]) -> usize {
    use crate::codec::{FreeRecord, InodeRecord, StateRecord, XattrRecord};
    let key = &0u64;
    [
        crate::superblock::Superblock::from_bytes(bytes).is_ok(),
        decode::<InodeRecord>(bytes, key).is_ok(),
        decode::<DirentRecord>(bytes, key).is_ok(),
        decode::<ExtentRecord>(bytes, key).is_ok(),
        decode::<RefcountRecord>(bytes, key).is_ok(),
        decode::<FreeRecord>(bytes, key).is_ok(),
        decode::<XattrRecord>(bytes, key).is_ok(),
        decode::<StateRecord>(bytes, key).is_ok(),
    ]
    .iter()
    .filter(|ok| **ok)
    .count()
}

/// A fresh store in memory (default block size, no periodic commits, a small B-tree cache), for
/// the unit tests of the layers.
pub fn mem_store() -> Result<(crate::io::MemEnv, Store)> {
    let env = crate::io::MemEnv::new();
    let fresh = std::sync::Arc::new(env.clone());
    Store::mkfs_env(fresh.clone(), &crate::store::MkfsOptions::default())?;
    let opts = crate::store::OpenOptions {
        commit_interval: None,
        cache_bytes: 1 << 20,
        ..Default::default()
    };
    let s = Store::open_env(fresh, &opts)?;
    Ok((env, s))
}
