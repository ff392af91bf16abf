//! A second metadata engine: ordered maps in memory, made durable by an append-only log of
//! committed batches in one file of the store's environment (`meta.log`). It exists to prove the
//! seam (the store's tests run on it as well as on redb) and is the shape a remote engine takes:
//! a snapshot is an immutable version, a commit applies one batch atomically.
//!
//! Log format: the file starts with an 8-byte magic `COWFSML1`; then one record per commit:
//!
//! ```text
//! offset size  field
//!      0    4  payload length n (u32 LE)
//!      4    n  payload: postcard of Vec<(table u8, key bytes, Option<value bytes>)>
//!    4+n    4  CRC-32C of the length and payload (u32 LE)
//! ```
//!
//! Opening replays every whole record whose checksum holds and stops at the first that does
//! not: a torn last record (a crash mid-append) is as if that commit never happened. A commit is
//! durable when its record is written and the file synced.

use super::engine::{bounds_empty, Delta, Engine, EntryIter, Snapshot};
use super::schema::{TableId, N_TABLES, TABLES};
use crate::error::{Error, Result};
use crate::io::{with_room, FileIo, SpaceReserve};
use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

pub const MEM_META_FILE: &str = "meta.log";
const MAGIC: &[u8; 8] = b"COWFSML1";

type Tables = [BTreeMap<Vec<u8>, Vec<u8>>; N_TABLES];

/// One committed version: never changed once published (a commit publishes a new one).
struct Version {
    tables: Tables,
}

impl Snapshot for Version {
    fn get(&self, t: TableId, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tables[t.index()].get(key).cloned())
    }

    fn range<'a>(
        &'a self,
        t: TableId,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        rev: bool,
    ) -> Result<EntryIter<'a>> {
        if bounds_empty(lo, hi) {
            return Ok(Box::new(std::iter::empty()));
        }
        let r = self.tables[t.index()]
            .range::<[u8], _>((lo, hi))
            .map(|(k, v)| Ok((k.clone(), v.clone())));
        Ok(if rev { Box::new(r.rev()) } else { Box::new(r) })
    }
}

/// The in-memory engine over its log file.
pub(crate) struct MemEngine {
    log: Arc<dyn FileIo>,
    /// Released (and the append retried) when the host is full, as for redb.
    reserve: Option<Arc<SpaceReserve>>,
    current: RwLock<Arc<Version>>,
    /// Where the next record goes; serialises commits.
    end: Mutex<u64>,
}

impl std::fmt::Debug for MemEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemEngine")
    }
}

fn corrupt(off: u64, what: &str) -> Error {
    Error::corrupt(format!("{MEM_META_FILE}: offset {off}: {what}"))
}

fn apply(
    tables: &mut Tables,
    changes: Vec<(u8, Vec<u8>, Option<Vec<u8>>)>,
    off: u64,
) -> Result<()> {
    for (t, k, v) in changes {
        let table = TABLES
            .get(usize::from(t))
            .ok_or_else(|| corrupt(off, &format!("unknown table {t}")))?;
        match v {
            Some(v) => {
                tables[table.index()].insert(k, v);
            }
            None => {
                tables[table.index()].remove(&k);
            }
        }
    }
    Ok(())
}

impl MemEngine {
    /// Open the log (an empty file becomes a new, empty engine).
    pub fn open(log: Arc<dyn FileIo>, reserve: Option<Arc<SpaceReserve>>) -> Result<MemEngine> {
        Self::replay(log, reserve).map_err(|e| match e {
            Error::Io(io) => Error::from_io(io),
            other => other,
        })
    }

    fn replay(log: Arc<dyn FileIo>, reserve: Option<Arc<SpaceReserve>>) -> Result<MemEngine> {
        let len = log.len()?;
        let mut tables: Tables = Default::default();
        let mut pos = MAGIC.len() as u64;
        if len == 0 {
            log.write_at(MAGIC, 0)?;
            log.sync()?;
        } else {
            let mut magic = [0u8; 8];
            log.read_at(&mut magic, 0)?;
            if &magic != MAGIC || len < 8 {
                return Err(corrupt(0, "not a cowfs metadata log (bad magic)"));
            }
            while pos + 8 <= len {
                let mut head = [0u8; 4];
                log.read_at(&mut head, pos)?;
                let n = u64::from(u32::from_le_bytes(head));
                if pos + 8 + n > len {
                    break; // a torn last record
                }
                let mut rec = vec![0u8; 4 + n as usize + 4];
                log.read_at(&mut rec, pos)?;
                let (body, crc) = rec.split_at(4 + n as usize);
                let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
                if crc32c::crc32c(body) != stored {
                    break; // a torn last record
                }
                let changes: Vec<(u8, Vec<u8>, Option<Vec<u8>>)> = postcard::from_bytes(&body[4..])
                    .map_err(|e| corrupt(pos, &format!("record does not parse: {e}")))?;
                apply(&mut tables, changes, pos)?;
                pos += 8 + n;
            }
            if len > pos {
                // Cut off a torn record (or anything after it) before appending after it: a new
                // record must never be followed by an older one that happens to be whole.
                log.set_len(pos)?;
                log.sync()?;
            }
        }
        Ok(MemEngine {
            log,
            reserve,
            current: RwLock::new(Arc::new(Version { tables })),
            end: Mutex::new(pos),
        })
    }
}

impl Engine for MemEngine {
    fn snapshot(&self) -> Result<Arc<dyn Snapshot>> {
        let v = self.current.read().clone();
        Ok(v)
    }

    fn commit(&self, deltas: &[&Delta]) -> Result<()> {
        let mut end = self.end.lock();
        let mut merged: BTreeMap<(u8, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
        for d in deltas {
            for t in TABLES {
                for (k, v) in d.table(t) {
                    merged.insert((t as u8, k.clone()), v.clone());
                }
            }
        }
        let changes: Vec<(u8, Vec<u8>, Option<Vec<u8>>)> =
            merged.into_iter().map(|((t, k), v)| (t, k, v)).collect();
        let payload = postcard::to_stdvec(&changes)
            .map_err(|e| Error::corrupt(format!("{MEM_META_FILE}: encoding a commit: {e}")))?;
        let n = u32::try_from(payload.len()).map_err(|_| Error::FileTooBig)?;
        let mut rec = Vec::with_capacity(payload.len() + 8);
        rec.extend_from_slice(&n.to_le_bytes());
        rec.extend_from_slice(&payload);
        let crc = crc32c::crc32c(&rec);
        rec.extend_from_slice(&crc.to_le_bytes());
        with_room(self.reserve.as_deref(), || self.log.write_at(&rec, *end))
            .map_err(Error::from_io)?;
        // Never retried: see RedbFile::sync_data.
        self.log.sync().map_err(Error::from_io)?;
        *end += rec.len() as u64;
        // Publish a new version: copy-on-write of the tables this commit touched.
        let mut guard = self.current.write();
        let mut tables: Tables = Default::default();
        for t in TABLES {
            tables[t.index()] = guard.tables[t.index()].clone();
        }
        apply(&mut tables, changes, 0)?;
        *guard = Arc::new(Version { tables });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{Env, MemEnv};

    type Change<'a> = (TableId, &'a [u8], Option<&'a [u8]>);

    fn delta(pairs: &[Change<'_>]) -> Delta {
        let mut d = Delta::default();
        for (t, k, v) in pairs {
            d.set(*t, k.to_vec(), v.map(<[u8]>::to_vec));
        }
        d
    }

    #[test]
    fn commits_replay_and_a_torn_tail_is_ignored() -> Result<()> {
        let env = MemEnv::new();
        let e = MemEngine::open(env.open(MEM_META_FILE, true)?, None)?;
        let old = e.snapshot()?;
        e.commit(&[&delta(&[
            (TableId::Inodes, b"a", Some(b"1")),
            (TableId::Inodes, b"b", Some(b"2")),
        ])])?;
        e.commit(&[&delta(&[(TableId::Inodes, b"a", None)])])?;
        assert_eq!(
            old.get(TableId::Inodes, b"b")?,
            None,
            "a snapshot never changes"
        );
        let keys = |s: &Arc<dyn Snapshot>| -> Result<Vec<Vec<u8>>> {
            s.range(TableId::Inodes, Bound::Unbounded, Bound::Unbounded, false)?
                .map(|r| r.map(|(k, _)| k))
                .collect()
        };
        assert_eq!(keys(&e.snapshot()?)?, vec![b"b".to_vec()]);
        let full = env.files()[MEM_META_FILE].clone();
        drop(e);
        let again = MemEngine::open(env.open(MEM_META_FILE, false)?, None)?;
        assert_eq!(keys(&again.snapshot()?)?, vec![b"b".to_vec()]);
        // Cut the last record anywhere: the engine opens at the commit before it.
        for cut in full.len() - 10..full.len() {
            let mut files = env.files();
            files.insert(MEM_META_FILE.into(), full[..cut].to_vec());
            let torn = MemEnv::from_files(files);
            let e = MemEngine::open(torn.open(MEM_META_FILE, false)?, None)?;
            assert_eq!(keys(&e.snapshot()?)?, vec![b"a".to_vec(), b"b".to_vec()]);
        }
        Ok(())
    }
}
