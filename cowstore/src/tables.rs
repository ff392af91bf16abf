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
use redb::{Key, ReadableTable, Table, TableDefinition, Value, WriteTransaction};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
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
    /// Blocks a finished commit is still punching (not to be allocated yet).
    pub punching: Arc<crate::alloc::PunchRegistry>,
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
            punching: Arc::default(),
        }
    }
}

/// A table of the open write transaction, opened on first use.
///
/// Opening a redb table is a lookup in the transaction's table directory, and closing it writes
/// its root back: about 1.5 µs each, which for a context holding every table cost far more than
/// the B-tree work of a small operation (measured: getattr 19.5 µs with all tables opened up
/// front). Most operations touch two or three tables, so a context opens only those.
///
/// `Deref` cannot return an error: a failure to open (an I/O error or damage in the table
/// directory) panics, and `Inner::read`/`Inner::write` turn the panic into an error of that one
/// call (rolling the transaction back), as they do for panics inside redb itself.
pub(crate) struct LazyTable<'t, K: Key + 'static, V: Value + 'static> {
    wtx: &'t WriteTransaction,
    def: TableDefinition<'static, K, V>,
    table: OnceCell<Table<'t, K, V>>,
}

impl<'t, K: Key + 'static, V: Value + 'static> LazyTable<'t, K, V> {
    fn new(wtx: &'t WriteTransaction, def: TableDefinition<'static, K, V>) -> Self {
        LazyTable {
            wtx,
            def,
            table: OnceCell::new(),
        }
    }

    /// Open the table now, returning the error instead of panicking later.
    fn open_now(self) -> Result<Self> {
        let t = self.wtx.open_table(self.def)?;
        let _ = self.table.set(t);
        Ok(self)
    }
}

impl<'t, K: Key + 'static, V: Value + 'static> Deref for LazyTable<'t, K, V> {
    type Target = Table<'t, K, V>;

    fn deref(&self) -> &Table<'t, K, V> {
        self.table.get_or_init(|| {
            self.wtx
                .open_table(self.def)
                .unwrap_or_else(|e| panic!("meta.redb: opening table {}: {e}", self.def))
        })
    }
}

impl<K: Key + 'static, V: Value + 'static> DerefMut for LazyTable<'_, K, V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        let _ = Deref::deref(self);
        match self.table.get_mut() {
            Some(t) => t,
            None => unreachable!("the table was opened just above"),
        }
    }
}

/// Every table of the B-tree in one write transaction (each opened on first use, see
/// [`LazyTable`]), plus what a mutation needs.
pub(crate) struct Ctx<'t> {
    pub inodes: LazyTable<'t, u64, Bytes>,
    pub dirents: LazyTable<'t, (u64, Bytes), Bytes>,
    pub cookies: LazyTable<'t, (u64, u64), Bytes>,
    pub xattrs: LazyTable<'t, (u64, Bytes), Bytes>,
    pub extents: LazyTable<'t, (u64, u64), Bytes>,
    pub refcounts: LazyTable<'t, u64, Bytes>,
    pub free: LazyTable<'t, u64, Bytes>,
    pub orphans: LazyTable<'t, u64, ()>,
    pub state: LazyTable<'t, u64, Bytes>,
    pub lower_files: LazyTable<'t, u64, Bytes>,
    pub lower_pending: LazyTable<'t, u64, Bytes>,
    pub lower_inodes: LazyTable<'t, (u64, u64), u64>,
    /// The overlay's lower tree, when the store has one.
    pub lower: Option<&'t crate::lower::LowerTree>,
    pub mem: &'t mut TxnMem,
    pub pool: &'t dyn FileIo,
    /// Block size in bytes.
    pub bs: u64,
}

impl<'t> Ctx<'t> {
    /// A context over `wtx`. Only `inodes`, which nearly every operation reads, is opened here
    /// (so that an error opening it is returned, not raised); the others on first use.
    pub fn open(
        wtx: &'t WriteTransaction,
        mem: &'t mut TxnMem,
        pool: &'t dyn FileIo,
        bs: u64,
    ) -> Result<Ctx<'t>> {
        Ok(Ctx {
            inodes: LazyTable::new(wtx, INODES).open_now()?,
            dirents: LazyTable::new(wtx, DIRENTS),
            cookies: LazyTable::new(wtx, COOKIES),
            xattrs: LazyTable::new(wtx, XATTRS),
            extents: LazyTable::new(wtx, EXTENTS),
            refcounts: LazyTable::new(wtx, REFCOUNTS),
            free: LazyTable::new(wtx, FREE),
            orphans: LazyTable::new(wtx, ORPHANS),
            state: LazyTable::new(wtx, STATE),
            lower_files: LazyTable::new(wtx, LOWER_FILES),
            lower_pending: LazyTable::new(wtx, LOWER_PENDING),
            lower_inodes: LazyTable::new(wtx, LOWER_INODES),
            lower: None,
            mem,
            pool,
            bs,
        })
    }

    fn open_all(&mut self) -> Result<()> {
        fn open<K: Key + 'static, V: Value + 'static>(t: &mut LazyTable<'_, K, V>) -> Result<()> {
            if t.table.get().is_none() {
                let _ = t.table.set(t.wtx.open_table(t.def)?);
            }
            Ok(())
        }
        open(&mut self.inodes)?;
        open(&mut self.dirents)?;
        open(&mut self.cookies)?;
        open(&mut self.xattrs)?;
        open(&mut self.extents)?;
        open(&mut self.refcounts)?;
        open(&mut self.free)?;
        open(&mut self.orphans)?;
        open(&mut self.state)?;
        open(&mut self.lower_files)?;
        open(&mut self.lower_pending)?;
        open(&mut self.lower_inodes)
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
        // Tables open on first use, and redb creates a table when it is first opened: open every
        // one here (mkfs and every commit write the state record), so that each exists in every
        // committed B-tree for readers that open tables by name (check, usage, fsck).
        self.open_all()?;
        let st = self.mem.state;
        self.state.insert(STATE_KEY, encode(&st).as_slice())?;
        Ok(())
    }
}
