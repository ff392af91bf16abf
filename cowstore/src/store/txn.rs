//! The transaction every operation runs in and the commit protocol: an operation is atomic
//! (its changes kept or dropped whole), a commit syncs the pool, then makes the batch of
//! uncommitted changes durable in the engine, then releases the blocks it freed.

use super::open::LOW_SPACE_COMMIT_EVERY;
use crate::codec::{decode, encode, ImageRecord, StateRecord};
use crate::error::{Error, Result};
use crate::io::{Env, FileIo, SpaceReserve};
use crate::meta::{key, Delta, Engine, IntKey, Layers, Snapshot, TableId};
use crate::overlay::LowerTree;
use crate::space::RangeSet;
use crate::store::ctx::{state_delta, Ctx, TxnMem, STATE_KEY};
use crate::superblock::Superblock;
use crate::types::{BlockNo, BlockRun};
use parking_lot::{Condvar, Mutex, RwLock};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The open transaction: every change since the last durable commit, over a view of it.
pub(crate) struct TxnState {
    /// The last durable commit.
    pub snap: Arc<dyn Snapshot>,
    /// The changes of every operation that succeeded since then (the next commit's batch).
    pub delta: Delta,
    pub mem: TxnMem,
    /// A commit whose batch the engine failed to make durable, but may have written: until we
    /// know whether it landed, nothing may read or change the tables (see `resolve_doubt`).
    pub in_doubt: Option<StateRecord>,
}

impl TxnState {
    /// The layers an operation reads through.
    fn layers<'a>(snap: &'a Arc<dyn Snapshot>, deltas: &'a [&'a Delta]) -> Layers<'a> {
        Layers {
            deltas,
            base: snap.as_ref(),
        }
    }
}

pub(crate) struct Inner {
    pub env: Arc<dyn Env>,
    pub sb: Superblock,
    pub bs: u64,
    pub(crate) engine: Arc<dyn Engine>,
    pub reserve: Option<Arc<SpaceReserve>>,
    pub(crate) lower: Option<Arc<LowerTree>>,
    pub pool: Arc<dyn FileIo>,
    pub state: Mutex<TxnState>,
    pub(super) commit_lock: Mutex<()>,
    /// Held shared by every write whose bytes go to the pool with the state lock released
    /// (`Store::write_with`): from the allocation of its blocks until they are mapped. A
    /// commit takes it exclusively, so it never makes durable blocks that are allocated but
    /// not yet written or mapped (they would be neither free nor referenced).
    pub(super) inflight: RwLock<()>,
    /// Opened read-only: nothing is ever written to the store's files.
    pub read_only: bool,
    /// Made read-only while open (`Store::set_read_only`, a `mount -o remount,ro`): every
    /// change is refused and nothing is committed, until it is made writable again.
    pub(super) frozen: AtomicBool,
    /// The commit that going read-only makes has not succeeded yet: commits still run (they
    /// only make durable what was changed before), until one does.
    pub(super) freeze_pending: AtomicBool,
    pub commits: AtomicU64,
    /// Failed commits so far (the error sequence that fsync reports against).
    pub(super) failed_commits: AtomicU64,
    pub(super) max_dirty_bytes: usize,
    pub(super) closed: AtomicBool,
    /// Set (and signalled) when the store closes: the periodic committer stops.
    pub(super) stop: (Mutex<bool>, Condvar),
    /// The store's exclusive lock, held while it is open.
    pub(super) _lock: Box<dyn Send + Sync + std::fmt::Debug>,
}

impl Inner {
    /// Run a read-only closure against the open transaction (it sees uncommitted changes).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Ctx<'_>) -> Result<T>) -> Result<T> {
        let mut st = self.state.lock();
        self.resolve_doubt(&mut st)?;
        let TxnState {
            snap, delta, mem, ..
        } = &mut *st;
        let deltas = [&*delta];
        let cx = self.ctx(TxnState::layers(snap, &deltas), mem);
        guarded(|| f(&cx))
    }

    /// The context of one operation of this store, reading through `below`.
    fn ctx<'a>(&'a self, below: Layers<'a>, mem: &'a mut TxnMem) -> Ctx<'a> {
        let mut cx = Ctx::open(below, mem, self.pool.as_ref(), self.bs);
        cx.lower = self.lower.as_deref();
        cx
    }

    /// Run a mutation as one atomic operation inside the open transaction: if it succeeds its
    /// changes join the transaction; if it fails (with any error, at any point) they are dropped
    /// and its changes to the in-memory allocation state are undone, so it leaves no trace and
    /// every other operation's changes stay as they were.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut Ctx<'_>) -> Result<T>) -> Result<T> {
        self.write_op(true, f)
    }

    /// `write` without the read-only check: for what a read-only store still records in memory
    /// (the overlay import of `Store::import`, open counts), which a store opened read-only
    /// never commits and one made read-only commits once it is writable again.
    pub(crate) fn write_unchecked<T>(
        &self,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.write_op(false, f)
    }

    /// Whether the store refuses changes now: opened read-only, or made so since.
    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only || self.frozen.load(Ordering::SeqCst)
    }

    fn write_op<T>(&self, check: bool, f: impl FnOnce(&mut Ctx<'_>) -> Result<T>) -> Result<T> {
        let (result, commit_due) = self.op_deferring_commit(check, f);
        self.commit_if_due(commit_due);
        result
    }

    /// Run one operation (see [`Inner::write`]); returns its result and whether a commit is due
    /// after it, for [`Inner::commit_if_due`]. For a caller that holds `inflight`, and so must
    /// not commit before it lets it go. `check`: refuse the operation if the store is read-only
    /// (the second half of a split write, which the first half's check admitted, passes false).
    pub(crate) fn op_deferring_commit<T>(
        &self,
        check: bool,
        f: impl FnOnce(&mut Ctx<'_>) -> Result<T>,
    ) -> (Result<T>, bool) {
        let mut st = self.state.lock();
        // Checked under the state lock, which `Store::set_read_only` takes to set `frozen`: an
        // operation either ran before (and the commit that follows has it) or is refused.
        if check && self.is_read_only() {
            return (Err(Error::ReadOnly), false);
        }
        if let Err(e) = self.resolve_doubt(&mut st) {
            return (Err(e), false);
        }
        let TxnState {
            snap, delta, mem, ..
        } = &mut *st;
        let mark = mem.begin_op();
        let (result, changes) = {
            let deltas = [&*delta];
            let mut cx = self.ctx(TxnState::layers(snap, &deltas), mem);
            let r = guarded(|| f(&mut cx));
            (r, cx.into_delta())
        };
        match &result {
            Ok(_) => {
                delta.absorb(changes);
                mem.end_op();
            }
            Err(e) => {
                mem.undo_op(mark);
                if e.is_fault() {
                    log::warn!("operation failed and left no change: {e}");
                }
            }
        }
        // On a full host, commit in small steps: a big transaction of deletions needs new B-tree
        // pages for everything it touches before the commit frees the old ones. And keep the
        // uncommitted changes held in memory bounded.
        mem.ops_since_commit += 1;
        let due = (mem.low_space && mem.ops_since_commit >= LOW_SPACE_COMMIT_EVERY)
            || delta.bytes() > self.max_dirty_bytes;
        (result, due)
    }

    /// The commit an operation found due (see [`Inner::op_deferring_commit`]). Its failure is
    /// the commit's, not the operation's, and is logged (the next commit tries again).
    pub(crate) fn commit_if_due(&self, due: bool) {
        if due && !self.is_read_only() {
            if let Err(e) = self.commit(false) {
                log::warn!("commit of a full transaction failed: {e}");
            }
        }
    }

    /// This store's registry of blocks being punched (tests hold blocks in it).
    #[cfg(test)]
    pub(crate) fn state_punching(&self) -> Arc<crate::space::PunchRegistry> {
        self.state.lock().mem.punching.clone()
    }

    /// Run a read-only closure against the last committed state alone (no uncommitted change is
    /// visible), through the same typed tables as every operation: what fsck and live tools
    /// read. Takes no store lock beyond getting the snapshot.
    pub(crate) fn read_committed<T>(&self, f: impl FnOnce(&Ctx<'_>) -> Result<T>) -> Result<T> {
        let snap = self.engine.snapshot()?;
        let state = match snap.get(TableId::State, &key::<IntKey>(STATE_KEY))? {
            Some(v) => decode::<StateRecord>(&v, &STATE_KEY)?,
            None => return Err(Error::corrupt("meta.redb: state record missing")),
        };
        let mut mem = TxnMem::new(state);
        let cx = self.ctx(TxnState::layers(&snap, &[]), &mut mem);
        guarded(|| f(&cx))
    }

    /// After the engine failed a commit, learn whether the batch landed anyway (redb, say,
    /// failing the sync after writing its commit slot), from a fresh view of the engine:
    /// - it did not: the next commit sends the same changes again (nothing was lost);
    /// - it did: that state is the base from now on; its frees are held back from allocation and
    ///   its fresh blocks are no longer rewritten in place, until a later commit makes it durable
    ///   for sure (a crash before then may still find the previous commit).
    ///
    /// Until this succeeds every operation fails with the engine's error: operations computed
    /// over the wrong base would not apply cleanly to the right one.
    fn resolve_doubt(&self, st: &mut TxnState) -> Result<()> {
        let Some(attempted) = st.in_doubt else {
            return Ok(());
        };
        let fresh = self.engine.snapshot()?;
        let found = match fresh.get(TableId::State, &key::<IntKey>(STATE_KEY))? {
            Some(v) => decode::<StateRecord>(&v, &STATE_KEY)?,
            None => return Err(Error::corrupt("meta.redb: state record missing")),
        };
        if found.generation == attempted.generation {
            log::warn!(
                "the failed commit of generation {} reached the B-tree; continuing from it",
                attempted.generation
            );
            st.delta = Delta::default();
            st.mem.state = attempted;
            st.mem.landed_in_doubt();
        }
        st.snap = fresh;
        st.in_doubt = None;
        Ok(())
    }

    /// The commit protocol: (1) make pool data durable, (2) commit the metadata batch (for redb,
    /// its commit-slot flip is the atomic point), (3) return the blocks this commit freed to the
    /// allocator.
    ///
    /// A failure at (1) or (2) leaves the store at the previous commit and keeps every change in
    /// memory for the next try; it is counted (`failed_commits`) and returned. The pool's sync is
    /// never retried within a commit: after a failed fdatasync the kernel may have dropped the
    /// dirty pages and would report success to a second call.
    ///
    /// A store made read-only (`frozen`) commits nothing but the changes made before, until
    /// that commit succeeds, and its closing commit (which marks it cleanly closed).
    pub(crate) fn commit(&self, closing: bool) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        if !closing
            && self.frozen.load(Ordering::SeqCst)
            && !self.freeze_pending.load(Ordering::SeqCst)
        {
            return Ok(());
        }
        let _one_at_a_time = self.commit_lock.lock();
        self.presync_pool(closing)?;
        // Every split write finishes first (its blocks mapped), and none starts until the state
        // lock is let go below.
        let writes = self.inflight.write();
        let mut st = self.state.lock();
        if !st.mem.dirty && !closing {
            // Nothing changed since the last commit: that includes what a freeze waits for.
            self.freeze_pending.store(false, Ordering::SeqCst);
            return Ok(());
        }
        self.resolve_doubt(&mut st)?;
        let TxnState {
            snap, delta, mem, ..
        } = &mut *st;
        // Freed blocks join the free table with this commit; those an active read is still
        // copying from are held back from allocation until a later commit finds them unread
        // (never waiting for the read under the lock). See `TxnMem::committed`.
        let releasable: Vec<BlockRun> = mem.pending_free().iter().collect();
        // The blocks the new state references that the pool may not hold durably yet: those
        // allocated since the last commit and not freed again (see `ImagePlan`).
        let fresh: Vec<BlockRun> = mem
            .txn_alloc()
            .iter()
            .flat_map(|r| mem.pending_free().gaps(r))
            .collect();
        let plan = ImagePlan::choose(mem, &fresh, self.bs, closing);
        let mut next = mem.state;
        next.generation += 1;
        next.clean = closing;
        let frees = {
            let deltas = [&*delta];
            let mut cx = self.ctx(TxnState::layers(snap, &deltas), mem);
            let r = (|| {
                for &run in &releasable {
                    cx.insert_free(run)?;
                }
                next.images = plan.apply(&mut cx, &releasable, &fresh)?;
                Ok(())
            })();
            let changes = cx.into_delta();
            r.map(|()| changes)
        };
        let mut engine_failed = false;
        let done = frees.and_then(|mut frees| {
            frees.absorb(state_delta(&next));
            if plan == ImagePlan::SyncPool {
                self.pool.sync().map_err(Error::from_io)?;
            }
            engine_failed = true;
            guarded(|| self.engine.commit(&[&*delta, &frees]))?;
            Ok(frees)
        });
        let frees = match done {
            Ok(f) => f,
            Err(e) => {
                self.failed_commits.fetch_add(1, Ordering::SeqCst);
                // The free records this commit added are dropped with it.
                st.mem.forget_free_index();
                // So are its images; whatever the engine kept, the next commit syncs the pool
                // and drops every image (`ImagePlan::SyncPool`).
                st.mem.sync_pool_next = true;
                log::error!("commit failed; every change stays in memory for the next try: {e}");
                if engine_failed {
                    // The batch may have reached the disk before the error: find out before
                    // anything reads or changes the tables again.
                    st.in_doubt = Some(next);
                    if let Err(e2) = self.resolve_doubt(&mut st) {
                        log::error!("the outcome of the failed commit is not known yet: {e2}");
                    }
                }
                return Err(e);
            }
        };
        let TxnState {
            snap, delta, mem, ..
        } = &mut *st;
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.freeze_pending.store(false, Ordering::SeqCst);
        mem.state = next;
        mem.sync_pool_next = false;
        match self.engine.snapshot() {
            Ok(fresh) => {
                *snap = fresh;
                *delta = Delta::default();
            }
            Err(e) => {
                // Durable, but no view of it yet: keep reading the old view with the committed
                // changes over it (the same state); the next commit writes them again.
                log::warn!("cannot read the new commit yet: {e}");
                delta.absorb(frees);
            }
        }
        for r in mem.committed().iter() {
            mem.add_unpunched(r);
        }
        mem.dirty = !mem.held().is_empty();
        mem.ops_since_commit = 0;
        // The released blocks are in the free table now, unpunched. Punch the long runs (and,
        // past a bound, the longest short ones) after letting go of the state lock: a punch can
        // cost tens of microseconds of synchronous discard, and a commit after random overwrites
        // frees thousands of short runs, which the next writes reuse instead. Only to give the
        // host its space back: nothing reads free blocks (allocation zeroes or overwrites what it
        // hands out), so a failed punch fails nothing. They are registered as being punched
        // first: the allocator skips them until the punch is done, so no write can lose its
        // bytes to a late punch.
        let all = closing || mem.low_space;
        let to_punch = punch_now(mem, self.bs, all);
        let punching = mem.punching.start(&to_punch);
        drop(st);
        drop(writes);
        for &r in punching.runs() {
            if let Err(e) = self.pool.punch(r.start.pos(self.bs), r.len * self.bs) {
                log::warn!("punching freed pool blocks {r}: {e}");
            }
        }
        drop(punching);
        // Space may have come back: take the metadata reserve again.
        let mut st = self.state.lock();
        if let Some(r) = &self.reserve {
            if !r.is_held() && r.fill() {
                log::info!("host space available again: metadata reserve restored");
            }
        }
        st.mem.low_space = self.reserve.as_ref().is_some_and(|r| !r.is_held());
        Ok(())
    }

    /// Before a commit that will sync the pool, sync it once without the state lock: that
    /// flush writes back what the interval since the last commit left dirty in the pool (after
    /// seconds of random writes, hundreds of MB and hundreds of milliseconds), while operations
    /// go on. The commit's own sync under the lock then flushes only what was written since.
    ///
    /// A failure is the commit's failure, counted and returned like one: after a failed
    /// fdatasync the kernel may have dropped the dirty pages and would report success to the
    /// commit's own sync, so going on would make durable a state naming lost bytes.
    fn presync_pool(&self, closing: bool) -> Result<()> {
        let likely = {
            let st = self.state.lock();
            (st.mem.dirty || closing)
                && ImagePlan::at_most(&st.mem, self.bs, closing) == ImagePlan::SyncPool
        };
        if !likely {
            return Ok(());
        }
        if let Err(e) = self.pool.sync() {
            self.failed_commits.fetch_add(1, Ordering::SeqCst);
            self.state.lock().mem.sync_pool_next = true;
            log::error!("commit failed; every change stays in memory for the next try: {e}");
            return Err(Error::from_io(e));
        }
        Ok(())
    }
}

/// A commit carries the bytes of the blocks it newly references (instead of syncing the pool)
/// when they are at most this many bytes...
const IMAGE_COMMIT_MAX_BYTES: u64 = 1 << 20;
/// ...and the images held across commits stay within this.
const IMAGES_MAX_BYTES: u64 = 16 << 20;

/// How a commit makes the pool data it references durable.
///
/// `SyncPool`: sync the pool before the metadata commit (two flushes: the pool's, then the
/// engine's), and drop every image. `Images`: copy the bytes of the blocks the commit newly
/// references (few: a small fsync'd write) into the `images` table of the metadata commit
/// itself and leave the pool unsynced: one flush. The open after a crash writes the images back
/// into the pool and syncs it before anything reads it (`Inner::replay_images`). Committed
/// blocks are never rewritten in place, and a block is only reused after the commit that frees
/// it is durable, which drops its image: so an image is always the block's committed content,
/// and replaying it is always safe. A clean close syncs the pool, so a clean store has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ImagePlan {
    SyncPool,
    Images,
}

impl ImagePlan {
    fn choose(mem: &TxnMem, fresh: &[BlockRun], bs: u64, closing: bool) -> ImagePlan {
        let new: u64 = fresh.iter().map(|r| r.len).sum::<u64>() * bs;
        Self::for_new_bytes(mem, new, bs, closing)
    }

    /// The plan if every block allocated since the last commit were fresh (an upper bound of
    /// the fresh blocks: `SyncPool` when `choose` may pick it).
    fn at_most(mem: &TxnMem, bs: u64, closing: bool) -> ImagePlan {
        Self::for_new_bytes(mem, mem.txn_alloc().total().saturating_mul(bs), bs, closing)
    }

    fn for_new_bytes(mem: &TxnMem, new: u64, bs: u64, closing: bool) -> ImagePlan {
        let held = mem.state.images.saturating_mul(bs);
        if closing
            || mem.sync_pool_next
            || new > IMAGE_COMMIT_MAX_BYTES
            || held.saturating_add(new) > IMAGES_MAX_BYTES
        {
            ImagePlan::SyncPool
        } else {
            ImagePlan::Images
        }
    }

    /// Put this commit's image changes into `cx`; returns how many images the new state holds.
    fn apply(self, cx: &mut Ctx<'_>, released: &[BlockRun], fresh: &[BlockRun]) -> Result<u64> {
        match self {
            ImagePlan::SyncPool => {
                // The pool is synced before this commit: no image is needed any more.
                drop_images(cx, BlockNo::ZERO..BlockNo(u64::MAX))?;
                Ok(0)
            }
            ImagePlan::Images => {
                let mut count = cx.mem.state.images;
                // Blocks this commit frees lose their images with it.
                if count > 0 {
                    for run in released {
                        let dropped = drop_images(cx, run.start..run.end())?;
                        count = count.saturating_sub(dropped);
                    }
                }
                for &run in fresh {
                    let bytes = read_blocks(cx.pool, run, cx.bs)?;
                    for (i, block) in bytes.chunks(cx.bs as usize).enumerate() {
                        let rec = ImageRecord {
                            bytes: block.to_vec(),
                        };
                        cx.images
                            .insert(run.start + i as u64, encode(&rec).as_slice())?;
                        count += 1;
                    }
                }
                Ok(count)
            }
        }
    }
}

/// Remove the images of blocks in `range`; returns how many there were.
fn drop_images(cx: &mut Ctx<'_>, range: std::ops::Range<BlockNo>) -> Result<u64> {
    let keys: Vec<BlockNo> = cx
        .images
        .range(range)?
        .map(|item| item.map(|(k, _)| k))
        .collect::<Result<_>>()?;
    for &b in &keys {
        cx.images.remove(b)?;
    }
    Ok(keys.len() as u64)
}

/// The bytes of pool blocks `run`; past the pool file's end (space never written) zeros.
fn read_blocks(pool: &dyn FileIo, run: BlockRun, bs: u64) -> Result<Vec<u8>> {
    let (pos, len) = (run.start.pos(bs), run.len * bs);
    let mut buf = vec![0u8; len as usize];
    let have = pool
        .len()
        .map_err(Error::from_io)?
        .saturating_sub(pos)
        .min(len);
    if have > 0 {
        pool.read_at(&mut buf[..have as usize], pos)
            .map_err(Error::from_io)?;
    }
    Ok(buf)
}

/// A free run at least this long (in bytes) is punched at the commit that frees it.
const PUNCH_RUN_BYTES: u64 = 1 << 20;
/// Short unpunched free runs kept for reuse, at most (bytes).
const UNPUNCHED_MAX_BYTES: u64 = 256 << 20;

/// Take out of `unpunched` the runs to punch now: every run of at least [`PUNCH_RUN_BYTES`],
/// then the longest of the rest while they exceed [`UNPUNCHED_MAX_BYTES`]; or all (`all`).
/// Looks through the runs only when one may be long or there are too many blocks: a commit
/// after each small write must not cost a walk of up to 256 MiB of single-block runs.
fn punch_now(mem: &mut TxnMem, bs: u64, all: bool) -> RangeSet {
    let long = PUNCH_RUN_BYTES / bs;
    let max = UNPUNCHED_MAX_BYTES / bs;
    let look = all || mem.longest_unpunched >= long || mem.unpunched.total() > max;
    mem.longest_unpunched = 0;
    if !look {
        return RangeSet::new();
    }
    let unpunched = &mut mem.unpunched;
    if all {
        return std::mem::take(unpunched);
    }
    let mut out = RangeSet::new();
    let mut short: Vec<BlockRun> = Vec::new();
    for r in unpunched.iter() {
        if r.len >= long {
            out.insert(r);
        } else {
            short.push(r);
        }
    }
    let mut kept = unpunched.total() - out.total();
    if kept > max {
        short.sort_by_key(|r| (std::cmp::Reverse(r.len), r.start));
        for r in short {
            if kept <= max {
                break;
            }
            out.insert(r);
            kept -= r.len;
        }
    }
    for r in out.iter() {
        unpunched.remove(r);
    }
    out
}

/// Run `f`; a panic below us (redb trusting a damaged page) becomes a corruption error of this
/// one call.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(panic_error(p)))
}

fn panic_error(p: Box<dyn std::any::Any + Send>) -> Error {
    let what = p
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
        .unwrap_or("unknown");
    Error::Corrupted(format!(
        "meta.redb: internal error while reading metadata ({what}); run cowfs fsck"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::InodeNo;

    fn mem() -> TxnMem {
        TxnMem::new(StateRecord {
            generation: 1,
            next_ino: InodeNo(2),
            pool_blocks: 1 << 20,
            inodes: 1,
            clean: false,
            images: 0,
        })
    }

    #[test]
    fn punching_picks_long_runs_and_the_excess_and_skips_the_walk_otherwise() {
        // Regression (issue 12, fsync cost): every commit walked every unpunched run (up to
        // 256 MiB of single blocks) to find the long ones.
        let bs = 4096;
        let long = PUNCH_RUN_BYTES / bs;
        let mut m = mem();
        for i in 0..1000u64 {
            m.add_unpunched(BlockRun::new(BlockNo(i * 2), 1));
        }
        assert!(
            punch_now(&mut m, bs, false).is_empty(),
            "short runs are kept"
        );
        assert_eq!(m.longest_unpunched, 0, "and the next commit need not look");
        // Single blocks that merge into a long run are punched.
        let base = 10_000;
        for i in 0..long {
            m.add_unpunched(BlockRun::new(BlockNo(base + i), 1));
        }
        let out = punch_now(&mut m, bs, false);
        assert_eq!(
            out.iter().collect::<Vec<_>>(),
            vec![BlockRun::new(BlockNo(base), long)]
        );
        assert_eq!(m.unpunched.total(), 1000);
        // Past the bound the longest short runs go.
        let max = UNPUNCHED_MAX_BYTES / bs;
        m.add_unpunched(BlockRun::new(BlockNo(1 << 19), long - 1));
        let mut at = 1u64 << 20;
        while m.unpunched.total() <= max {
            m.add_unpunched(BlockRun::new(BlockNo(at), long - 1));
            at += long;
        }
        let out = punch_now(&mut m, bs, false);
        assert!(!out.is_empty());
        assert!(m.unpunched.total() <= max);
        // Unmount: everything.
        let left = m.unpunched.total();
        assert_eq!(punch_now(&mut m, bs, true).total(), left);
        assert!(m.unpunched.is_empty());
    }
}
