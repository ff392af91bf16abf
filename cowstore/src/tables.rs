//! The tables of the metadata B-tree and the transaction context that every mutation runs in.
//!
//! | table      | key                   | value (codec envelope)       |
//! |------------|-----------------------|------------------------------|
//! | state      | 0u64                  | StateRecord                  |
//! | inodes     | ino                   | InodeRecord                  |
//! | dirents    | (parent ino, name)    | DirentRecord                 |
//! | cookies    | (parent ino, cookie)  | name bytes (raw)             |
//! | xattrs     | (ino, name)           | XattrRecord                  |
//! | extents    | (ino, file block)     | ExtentRecord                 |
//! | refcounts  | first pool block      | RefcountRecord (count >= 2)  |
//! | free       | first pool block      | FreeRecord                   |
//! | orphans    | ino                   | () (unlinked, still open)    |
//! | lower      | 0u64                  | LowerRootRecord (overlay)    |
//! | lower_files| lower file id         | LowerFileRecord              |
//! | lower_pending | directory ino      | LowerDirRecord (not imported yet) |
//! | lower_inodes | (lower dev, lower ino) | store ino (hard links)    |

use crate::codec::{decode, encode, InodeRecord, StateRecord};
use crate::error::{Error, Result};
use crate::io::FileIo;
use crate::rangeset::RangeSet;
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

pub(crate) type Bytes = &'static [u8];

pub(crate) const STATE: TableDefinition<u64, Bytes> = TableDefinition::new("state");
pub(crate) const INODES: TableDefinition<u64, Bytes> = TableDefinition::new("inodes");
pub(crate) const DIRENTS: TableDefinition<(u64, Bytes), Bytes> = TableDefinition::new("dirents");
pub(crate) const COOKIES: TableDefinition<(u64, u64), Bytes> = TableDefinition::new("cookies");
pub(crate) const XATTRS: TableDefinition<(u64, Bytes), Bytes> = TableDefinition::new("xattrs");
pub(crate) const EXTENTS: TableDefinition<(u64, u64), Bytes> = TableDefinition::new("extents");
pub(crate) const REFCOUNTS: TableDefinition<u64, Bytes> = TableDefinition::new("refcounts");
pub(crate) const FREE: TableDefinition<u64, Bytes> = TableDefinition::new("free");
pub(crate) const ORPHANS: TableDefinition<u64, ()> = TableDefinition::new("orphans");
pub(crate) const LOWER: TableDefinition<u64, Bytes> = TableDefinition::new("lower");
pub(crate) const LOWER_FILES: TableDefinition<u64, Bytes> = TableDefinition::new("lower_files");
pub(crate) const LOWER_PENDING: TableDefinition<u64, Bytes> = TableDefinition::new("lower_pending");
pub(crate) const LOWER_INODES: TableDefinition<(u64, u64), u64> =
    TableDefinition::new("lower_inodes");

pub(crate) const STATE_KEY: u64 = 0;

/// In-memory state that belongs to the open transaction (or to the process).
#[derive(Debug)]
pub(crate) struct TxnMem {
    pub state: StateRecord,
    /// Pool blocks allocated since the last commit: these may be rewritten in place.
    pub txn_alloc: RangeSet,
    /// Committed blocks freed since the last commit: allocatable once the commit is durable.
    pub pending_free: RangeSet,
    pub dirty: bool,
    /// Next-fit allocation cursor.
    pub cursor: u64,
    /// Open handles per inode (process state, survives commits).
    pub open_counts: HashMap<u64, u32>,
    /// The host is full and the metadata reserve is spent: refuse new data blocks.
    pub low_space: bool,
    /// Mutations since the last commit.
    pub ops_since_commit: u64,
    /// Reads copying pool bytes right now (their blocks must not be reused meanwhile).
    pub pins: Arc<ReadPins>,
}

/// Counts reads that hold pool positions outside the store lock. Freed blocks become
/// allocatable only when none is active, so a read never returns another file's bytes.
#[derive(Debug, Default)]
pub struct ReadPins {
    active: Mutex<u64>,
    idle: Condvar,
}

impl ReadPins {
    pub fn pin(self: &Arc<Self>) -> Pin {
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Pin(self.clone())
    }

    pub fn any(&self) -> bool {
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) > 0
    }

    /// Wait until no read is active. Callers hold the store lock, so no new one can start.
    pub fn wait_idle(&self) {
        let mut n = self.active.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            n = self.idle.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One active read; dropping it ends the read.
#[derive(Debug)]
pub struct Pin(Arc<ReadPins>);

impl Drop for Pin {
    fn drop(&mut self) {
        let mut n = self.0.active.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl TxnMem {
    pub fn new(state: StateRecord) -> TxnMem {
        TxnMem {
            state,
            txn_alloc: RangeSet::new(),
            pending_free: RangeSet::new(),
            dirty: false,
            cursor: 0,
            open_counts: HashMap::new(),
            low_space: false,
            ops_since_commit: 0,
            pins: Arc::new(ReadPins::default()),
        }
    }
}

/// Every table of the B-tree, opened in one write transaction, plus what a mutation needs.
pub(crate) struct Ctx<'t> {
    pub inodes: Table<'t, u64, Bytes>,
    pub dirents: Table<'t, (u64, Bytes), Bytes>,
    pub cookies: Table<'t, (u64, u64), Bytes>,
    pub xattrs: Table<'t, (u64, Bytes), Bytes>,
    pub extents: Table<'t, (u64, u64), Bytes>,
    pub refcounts: Table<'t, u64, Bytes>,
    pub free: Table<'t, u64, Bytes>,
    pub orphans: Table<'t, u64, ()>,
    pub state: Table<'t, u64, Bytes>,
    pub lower_files: Table<'t, u64, Bytes>,
    pub lower_pending: Table<'t, u64, Bytes>,
    pub lower_inodes: Table<'t, (u64, u64), u64>,
    /// The overlay's lower tree, when the store has one.
    pub lower: Option<&'t crate::lower::LowerTree>,
    pub mem: &'t mut TxnMem,
    pub pool: &'t dyn FileIo,
    /// Block size in bytes.
    pub bs: u64,
}

impl<'t> Ctx<'t> {
    pub fn open(
        wtx: &'t WriteTransaction,
        mem: &'t mut TxnMem,
        pool: &'t dyn FileIo,
        bs: u64,
    ) -> Result<Ctx<'t>> {
        Ok(Ctx {
            inodes: wtx.open_table(INODES)?,
            dirents: wtx.open_table(DIRENTS)?,
            cookies: wtx.open_table(COOKIES)?,
            xattrs: wtx.open_table(XATTRS)?,
            extents: wtx.open_table(EXTENTS)?,
            refcounts: wtx.open_table(REFCOUNTS)?,
            free: wtx.open_table(FREE)?,
            orphans: wtx.open_table(ORPHANS)?,
            state: wtx.open_table(STATE)?,
            lower_files: wtx.open_table(LOWER_FILES)?,
            lower_pending: wtx.open_table(LOWER_PENDING)?,
            lower_inodes: wtx.open_table(LOWER_INODES)?,
            lower: None,
            mem,
            pool,
            bs,
        })
    }

    pub fn get_inode(&self, ino: u64) -> Result<InodeRecord> {
        self.try_inode(ino)?.ok_or(Error::NotFound)
    }

    pub fn try_inode(&self, ino: u64) -> Result<Option<InodeRecord>> {
        match self.inodes.get(ino)? {
            Some(v) => Ok(Some(decode(v.value(), &ino)?)),
            None => Ok(None),
        }
    }

    pub fn put_inode(&mut self, ino: u64, rec: &InodeRecord) -> Result<()> {
        self.inodes.insert(ino, encode(rec).as_slice())?;
        self.mem.dirty = true;
        Ok(())
    }

    pub fn put_state(&mut self) -> Result<()> {
        let st = self.mem.state;
        self.state.insert(STATE_KEY, encode(&st).as_slice())?;
        Ok(())
    }
}
