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
//! | images     | pool block            | ImageRecord (bytes a commit carried, pool not synced) |

use crate::codec::{decode, encode, InodeRecord, StateRecord};
use crate::error::{Error, Result};
use crate::io::FileIo;
use crate::meta::{
    BytesValue, Delta, IntKey, IntValue, Layers, NamedKey, PairKey, Table, TableId, UnitValue,
};
use crate::space::RangeSet;
use crate::types::{BlockNo, BlockRun, InodeNo};
use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub(crate) const STATE_KEY: u64 = 0;

/// How to take back one change to the in-memory block sets of the open transaction.
#[derive(Debug)]
enum Undo {
    AllocRemove(BlockRun),
    AllocInsert(BlockRun),
    PendingRemove(BlockRun),
    PendingInsert(BlockRun),
    /// Put the free-index entry at this start back to this length (`None`: remove it).
    FreeIndex(BlockNo, Option<u64>),
    UnpunchedInsert(BlockRun),
}

/// What an operation may change besides the journaled block sets, saved when it starts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpMark {
    state: StateRecord,
    dirty: bool,
    cursor: BlockNo,
    /// Whether the free index existed when the operation started (one it loads is dropped if
    /// it fails: the index saw the operation's own, dropped, table changes).
    free_index: bool,
}

/// In-memory state that belongs to the open transaction (or to the process).
///
/// An operation's changes to it are undone when the operation fails, exactly like its table
/// changes are dropped: the scalars are saved at its start ([`TxnMem::begin_op`]) and every change
/// to the two block sets is journaled.
#[derive(Debug)]
pub(crate) struct TxnMem {
    pub state: StateRecord,
    /// Pool blocks allocated since the last commit: these may be rewritten in place.
    txn_alloc: RangeSet,
    /// Committed blocks freed since the last commit: allocatable once the commit is durable.
    pending_free: RangeSet,
    pub dirty: bool,
    /// Next-fit allocation cursor.
    pub cursor: BlockNo,
    /// Open handles per inode (process state, survives commits).
    pub open_counts: HashMap<InodeNo, u32>,
    /// The host is full and the metadata reserve is spent: refuse new data blocks.
    pub low_space: bool,
    /// Mutations since the last commit.
    pub ops_since_commit: u64,
    /// Reads copying pool bytes right now (their blocks must not be reused or rewritten).
    pub pins: Arc<ReadPins>,
    /// Blocks a finished commit is still punching (not to be allocated yet).
    pub punching: Arc<crate::space::PunchRegistry>,
    /// Blocks in the free table (freed by a durable commit) that a read was still copying from
    /// when they were released: not allocated and not punched until a commit finds them unpinned.
    held: RangeSet,
    /// The running operation's journal of block-set changes.
    undo: Vec<Undo>,
    /// Blocks of the open transaction that the running operation freed: they join `unpunched`
    /// only once the operation has succeeded (a failed one still references them).
    to_punch: RangeSet,
    /// The free table as the open transaction sees it (record start → length, one entry per
    /// record), loaded on first use and changed with the table. The allocator looks here instead
    /// of searching the layered table, where every record the open transaction took is a
    /// removal that a search would step over one by one.
    free_index: Option<BTreeMap<BlockNo, u64>>,
    /// Free blocks whose old bytes are still on the host, not punched yet (process state). Freed
    /// blocks are punched in long runs, off the request path; short runs are kept for reuse up to
    /// a bound, so a steady overwrite workload reuses blocks instead of punching each one (a
    /// synchronous discard on a host mounted with `discard`). See `Inner::commit`.
    pub unpunched: RangeSet,
    /// The longest run `unpunched` has had since the commit last looked for runs to punch
    /// (`TxnMem::add_unpunched`): that look is skipped while no run is long enough.
    pub longest_unpunched: u64,
    /// A commit failed or its outcome was in doubt: the next one syncs the pool and drops every
    /// image, whatever the engine kept (see `ImagePlan`).
    pub sync_pool_next: bool,
}

impl TxnMem {
    pub fn new(state: StateRecord) -> TxnMem {
        TxnMem {
            state,
            txn_alloc: RangeSet::new(),
            pending_free: RangeSet::new(),
            dirty: false,
            cursor: BlockNo::ZERO,
            open_counts: HashMap::new(),
            low_space: false,
            ops_since_commit: 0,
            pins: Arc::new(ReadPins::default()),
            punching: Arc::default(),
            held: RangeSet::new(),
            undo: Vec::new(),
            to_punch: RangeSet::new(),
            free_index: None,
            unpunched: RangeSet::new(),
            longest_unpunched: 0,
            sync_pool_next: false,
        }
    }

    pub fn free_index(&self) -> Option<&BTreeMap<BlockNo, u64>> {
        self.free_index.as_ref()
    }

    pub fn set_free_index(&mut self, index: BTreeMap<BlockNo, u64>) {
        self.free_index = Some(index);
    }

    /// The free table changed outside the allocator's record functions (a commit that failed or
    /// landed in doubt, repair): the index is loaded again on next use.
    pub fn forget_free_index(&mut self) {
        self.free_index = None;
    }

    /// The free record at `start` is now `len` long (`None`: gone), journaled.
    pub fn free_index_put(&mut self, start: BlockNo, len: Option<u64>) {
        let Some(index) = self.free_index.as_mut() else {
            return;
        };
        let old = match len {
            Some(l) => index.insert(start, l),
            None => index.remove(&start),
        };
        if old != len {
            self.undo.push(Undo::FreeIndex(start, old));
        }
    }

    /// Free blocks not punched yet (see `unpunched`).
    pub fn add_unpunched(&mut self, run: BlockRun) {
        let merged = self.unpunched.insert(run);
        self.longest_unpunched = self.longest_unpunched.max(merged.len);
    }

    /// Blocks that leave the free space: no longer unpunched free blocks.
    pub fn take_unpunched(&mut self, run: BlockRun) {
        for r in self.unpunched.intersect(run) {
            self.unpunched.remove(r);
            self.undo.push(Undo::UnpunchedInsert(r));
        }
    }

    pub fn txn_alloc(&self) -> &RangeSet {
        &self.txn_alloc
    }

    pub fn pending_free(&self) -> &RangeSet {
        &self.pending_free
    }

    /// Blocks allocated by the running operation.
    pub fn add_txn_alloc(&mut self, run: BlockRun) {
        for r in self.txn_alloc.gaps(run) {
            self.txn_alloc.insert(r);
            self.undo.push(Undo::AllocRemove(r));
        }
    }

    /// Blocks of the open transaction that are free again.
    pub fn drop_txn_alloc(&mut self, run: BlockRun) {
        for r in self.txn_alloc.intersect(run) {
            self.txn_alloc.remove(r);
            self.undo.push(Undo::AllocInsert(r));
        }
    }

    /// Committed blocks freed: allocatable after the next durable commit.
    pub fn add_pending_free(&mut self, run: BlockRun) {
        for r in self.pending_free.gaps(run) {
            self.pending_free.insert(r);
            self.undo.push(Undo::PendingRemove(r));
        }
    }

    /// Forget both block sets (repair rebuilds allocation from the extent maps).
    pub fn clear_block_sets(&mut self) {
        let alloc: Vec<BlockRun> = self.txn_alloc.iter().collect();
        let pending: Vec<BlockRun> = self.pending_free.iter().collect();
        for r in alloc {
            self.drop_txn_alloc(r);
        }
        for r in pending {
            self.pending_free.remove(r);
            self.undo.push(Undo::PendingInsert(r));
        }
        self.free_index = None;
    }

    /// These fresh blocks are free again: unpunched free blocks once the running operation has
    /// succeeded.
    pub fn unpunched_after_op(&mut self, run: BlockRun) {
        self.to_punch.insert(run);
    }

    /// The running operation allocated these blocks again: they are not free after it.
    pub fn reallocated_in_op(&mut self, run: BlockRun) {
        self.to_punch.remove(run);
        self.take_unpunched(run);
    }

    pub fn held(&self) -> &RangeSet {
        &self.held
    }

    /// A durable commit put every pending-free run into the free table: the block sets start
    /// over. Runs still read by an active read are held back; returns the runs that are free for
    /// good now (to be punched): the released ones no read uses, and held ones no longer read.
    pub fn committed(&mut self) -> RangeSet {
        self.txn_alloc = RangeSet::new();
        let released = std::mem::take(&mut self.pending_free);
        let before = std::mem::take(&mut self.held);
        let mut done = RangeSet::new();
        for r in before.iter().chain(released.iter()) {
            if self.pins.overlaps(r) {
                self.held.insert(r);
            } else {
                done.insert(r);
            }
        }
        done
    }

    /// A commit whose outcome was unknown turned out to have landed, though it may not be
    /// durable: its blocks are committed now (no more in-place rewrites), and the blocks it freed
    /// are in its free table but stay unallocatable until a commit succeeds.
    pub fn landed_in_doubt(&mut self) {
        self.txn_alloc = RangeSet::new();
        for r in std::mem::take(&mut self.pending_free).iter() {
            self.held.insert(r);
        }
        self.free_index = None;
    }

    /// An operation starts.
    pub fn begin_op(&mut self) -> OpMark {
        self.undo.clear();
        self.to_punch = RangeSet::new();
        OpMark {
            state: self.state,
            dirty: self.dirty,
            cursor: self.cursor,
            free_index: self.free_index.is_some(),
        }
    }

    /// The operation succeeded: keep its changes. The fresh blocks it freed are unpunched free
    /// blocks now.
    pub fn end_op(&mut self) {
        self.undo.clear();
        for r in std::mem::take(&mut self.to_punch).iter() {
            self.add_unpunched(r);
        }
    }

    /// The operation failed: take back everything it changed here.
    pub fn undo_op(&mut self, mark: OpMark) {
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::AllocRemove(r) => self.txn_alloc.remove(r),
                Undo::AllocInsert(r) => {
                    self.txn_alloc.insert(r);
                }
                Undo::PendingRemove(r) => self.pending_free.remove(r),
                Undo::PendingInsert(r) => {
                    self.pending_free.insert(r);
                }
                Undo::FreeIndex(start, len) => {
                    if let Some(index) = self.free_index.as_mut() {
                        match len {
                            Some(l) => index.insert(start, l),
                            None => index.remove(&start),
                        };
                    }
                }
                Undo::UnpunchedInsert(r) => self.add_unpunched(r),
            }
        }
        if !mark.free_index {
            self.free_index = None;
        }
        self.to_punch = RangeSet::new();
        self.state = mark.state;
        self.dirty = mark.dirty;
        self.cursor = mark.cursor;
    }
}

/// The reads that hold pool positions outside the store lock, with the pool blocks each one
/// reads. While one is active its blocks are neither reused once freed (frees wait for the
/// commit) nor rewritten in place, and a commit that would make freed blocks allocatable waits
/// for all of them: a read never returns another file's bytes or bytes written after it began.
#[derive(Debug, Default)]
pub struct ReadPins {
    active: Mutex<PinTable>,
}

#[derive(Debug, Default)]
struct PinTable {
    next_id: u64,
    /// Pin id → the pool block runs it reads.
    reads: HashMap<u64, Vec<BlockRun>>,
}

impl ReadPins {
    fn table(&self) -> MutexGuard<'_, PinTable> {
        self.active.lock()
    }

    /// Pin the pool block runs `runs` for one read.
    pub fn pin(self: &Arc<Self>, runs: Vec<BlockRun>) -> Pin {
        let mut t = self.table();
        let id = t.next_id;
        t.next_id += 1;
        t.reads.insert(id, runs);
        Pin {
            pins: self.clone(),
            id,
        }
    }

    /// Whether an active read reads any block of `run`.
    pub fn overlaps(&self, run: BlockRun) -> bool {
        let t = self.table();
        t.reads.values().flatten().any(|r| r.overlaps(run))
    }
}

/// One active read; dropping it ends the read.
#[derive(Debug)]
pub struct Pin {
    pins: Arc<ReadPins>,
    id: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.pins.table().reads.remove(&self.id);
    }
}

/// The tables one operation sees (through the layers below it) and changes (in its own changes,
/// which `Inner::write` keeps if it succeeds), plus what a mutation needs.
pub(crate) struct Ctx<'t> {
    pub inodes: Table<'t, IntKey<InodeNo>, BytesValue>,
    pub dirents: Table<'t, NamedKey<InodeNo>, BytesValue>,
    pub cookies: Table<'t, PairKey<InodeNo, u64>, BytesValue>,
    pub xattrs: Table<'t, NamedKey<InodeNo>, BytesValue>,
    pub extents: Table<'t, PairKey<InodeNo, u64>, BytesValue>,
    pub refcounts: Table<'t, IntKey<BlockNo>, BytesValue>,
    pub free: Table<'t, IntKey<BlockNo>, BytesValue>,
    pub orphans: Table<'t, IntKey<InodeNo>, UnitValue>,
    pub lower_root: Table<'t, IntKey, BytesValue>,
    pub lower_files: Table<'t, IntKey, BytesValue>,
    pub lower_pending: Table<'t, IntKey<InodeNo>, BytesValue>,
    pub lower_inodes: Table<'t, PairKey, IntValue<InodeNo>>,
    pub images: Table<'t, IntKey<BlockNo>, BytesValue>,
    /// The overlay's lower tree, when the store has one.
    pub lower: Option<&'t crate::overlay::LowerTree>,
    pub mem: &'t mut TxnMem,
    pub pool: &'t dyn FileIo,
    /// Block size in bytes.
    pub bs: u64,
}

impl<'t> Ctx<'t> {
    /// A context reading through `below` and collecting its own changes.
    pub fn open(below: Layers<'t>, mem: &'t mut TxnMem, pool: &'t dyn FileIo, bs: u64) -> Ctx<'t> {
        Ctx {
            inodes: Table::new(TableId::Inodes, below),
            dirents: Table::new(TableId::Dirents, below),
            cookies: Table::new(TableId::Cookies, below),
            xattrs: Table::new(TableId::Xattrs, below),
            extents: Table::new(TableId::Extents, below),
            refcounts: Table::new(TableId::Refcounts, below),
            free: Table::new(TableId::Free, below),
            orphans: Table::new(TableId::Orphans, below),
            lower_root: Table::new(TableId::Lower, below),
            lower_files: Table::new(TableId::LowerFiles, below),
            lower_pending: Table::new(TableId::LowerPending, below),
            lower_inodes: Table::new(TableId::LowerInodes, below),
            images: Table::new(TableId::Images, below),
            lower: None,
            mem,
            pool,
            bs,
        }
    }

    /// The operation's changes to every table (the state record is written by the commit).
    pub fn into_delta(self) -> Delta {
        let mut d = Delta::default();
        macro_rules! take {
            ($($t:ident),*) => {$(
                let id = self.$t.id();
                d.absorb(Delta::of_table(id, self.$t.into_changes()));
            )*};
        }
        take!(
            inodes,
            dirents,
            cookies,
            xattrs,
            extents,
            refcounts,
            free,
            orphans,
            lower_root,
            lower_files,
            lower_pending,
            lower_inodes,
            images
        );
        d
    }

    pub fn get_inode(&self, ino: InodeNo) -> Result<InodeRecord> {
        self.try_inode(ino)?.ok_or(Error::NotFound)
    }

    pub fn try_inode(&self, ino: InodeNo) -> Result<Option<InodeRecord>> {
        match self.inodes.get(ino)? {
            Some(v) => Ok(Some(decode(&v, &ino)?)),
            None => Ok(None),
        }
    }

    pub fn put_inode(&mut self, ino: InodeNo, rec: &InodeRecord) -> Result<()> {
        self.inodes.insert(ino, encode(rec).as_slice())?;
        self.mem.dirty = true;
        Ok(())
    }
}

/// The state record as the commit writes it.
pub(crate) fn state_delta(st: &StateRecord) -> Delta {
    let mut d = Delta::default();
    d.set(
        TableId::State,
        crate::meta::key::<IntKey>(STATE_KEY),
        Some(crate::codec::encode_state(st)),
    );
    d
}
