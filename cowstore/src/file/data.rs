//! File data: extent maps, redirect-on-write writes, reads as pool segments, reflink clones,
//! truncate, hole punching and SEEK_DATA/SEEK_HOLE.
//!
//! Invariant: bytes of a mapped block past the file's size are zero, so growing a file (by
//! truncate or a write past the end) never exposes stale data, and a file's last block can be
//! shared by a clone that ends at the same end of file.

use crate::codec::{decode, encode, ExtentRecord, InodeRecord};
use crate::error::{Error, Result};
use crate::io::zero_range;
use crate::store::ctx::Ctx;
use crate::types::{BlockNo, BlockRun, FileKind, InodeNo, SeekWhence, Segment, Timespec};

/// Largest file size: keeps every byte offset and block number well inside i64.
pub const MAX_FILE_SIZE: u64 = 1 << 50;

/// One mapped piece of a file: `len` blocks from file block `fb` at pool block `phys`
/// (or, when `lower != 0`, at block `phys` of lower file `lower`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub fb: u64,
    pub phys: u64,
    pub len: u64,
    pub lower: u64,
}

impl Mapping {
    /// The pool blocks of a pool mapping (`lower == 0`).
    pub fn pool_run(&self) -> BlockRun {
        debug_assert_eq!(self.lower, 0);
        BlockRun::new(BlockNo(self.phys), self.len)
    }
}

/// A write split in two by [`Ctx::plan_write`]: file blocks `fb..` get the new pool blocks
/// `run`, and the file reaches at least `end` bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WritePlan {
    pub fb: u64,
    pub run: BlockRun,
    pub end: u64,
}

impl WritePlan {
    /// Where the write's bytes go in the pool.
    pub fn pos(&self, bs: u64) -> u64 {
        self.run.start.pos(bs)
    }
}

/// Where the bytes of a write come from.
pub(crate) enum Source<'a> {
    Bytes(&'a [u8]),
    /// Pool segments (or holes) covering the whole length, in order.
    Pool(&'a [Segment]),
    Zeros,
}

impl Ctx<'_> {
    /// Mapped pieces of `[fb, fb+n)`, clipped to the range, in file order.
    pub fn mappings(&self, ino: InodeNo, fb: u64, n: u64) -> Result<Vec<Mapping>> {
        Ok(clip(&self.extents_over(ino, fb, n)?, fb, n))
    }

    /// The extents (first file block, record) that overlap `[fb, fb+n)`, unclipped, in file
    /// order: the one starting before `fb` if it reaches into the range, then those inside.
    fn extents_over(&self, ino: InodeNo, fb: u64, n: u64) -> Result<Vec<(u64, ExtentRecord)>> {
        let end = fb.saturating_add(n);
        let mut out = Vec::new();
        if let Some(item) = self.extents.range_rev((ino, 0)..=(ino, fb))?.next() {
            let (k, v) = item?;
            let e: ExtentRecord = decode(&v, &k)?;
            if k.1 + e.len > fb {
                out.push((k.1, e));
            }
        }
        if fb < u64::MAX {
            for item in self.extents.range((ino, fb + 1)..(ino, end))? {
                let (k, v) = item?;
                out.push((k.1, decode::<ExtentRecord>(&v, &k)?));
            }
        }
        Ok(out)
    }

    /// Remove the mapping of `[fb, fb+n)`, splitting extents at the edges; returns what was removed.
    /// The caller owns the removed references (usually: `decref`).
    fn unmap(
        &mut self,
        ino: InodeNo,
        rec: &mut InodeRecord,
        fb: u64,
        n: u64,
    ) -> Result<Vec<Mapping>> {
        let raw = self.extents_over(ino, fb, n)?;
        self.unmap_extents(ino, rec, fb, n, raw)
    }

    /// `unmap`, given `raw`: the extents overlapping `[fb, fb+n)` as `extents_over` finds them
    /// now (read earlier in the same operation, with no extent of the file changed since).
    fn unmap_extents(
        &mut self,
        ino: InodeNo,
        rec: &mut InodeRecord,
        fb: u64,
        n: u64,
        raw: Vec<(u64, ExtentRecord)>,
    ) -> Result<Vec<Mapping>> {
        let end = fb.saturating_add(n);
        let mut removed = Vec::new();
        for (kfb, e) in raw {
            self.extents.remove((ino, kfb))?;
            let e_end = kfb + e.len;
            if kfb < fb {
                self.extents.insert(
                    (ino, kfb),
                    encode(&ExtentRecord {
                        phys: e.phys,
                        len: fb - kfb,
                        lower: e.lower,
                    })
                    .as_slice(),
                )?;
            }
            if e_end > end {
                let off = end - kfb;
                self.extents.insert(
                    (ino, end),
                    encode(&ExtentRecord {
                        phys: e.phys + off,
                        len: e_end - end,
                        lower: e.lower,
                    })
                    .as_slice(),
                )?;
            }
            let cut_start = kfb.max(fb);
            let cut_end = e_end.min(end);
            removed.push(Mapping {
                fb: cut_start,
                phys: e.phys + (cut_start - kfb),
                len: cut_end - cut_start,
                lower: e.lower,
            });
        }
        // The block counter counts every mapped block, lower ones too (st_blocks: a lower file
        // is not sparse, and `cp` must not take it for one).
        let gone: u64 = removed.iter().map(|m| m.len).sum();
        rec.blocks = rec.blocks.saturating_sub(gone);
        self.mem.dirty = true;
        Ok(removed)
    }

    /// Unmap a range and drop the references it held.
    pub(super) fn unmap_and_release(
        &mut self,
        ino: InodeNo,
        rec: &mut InodeRecord,
        fb: u64,
        n: u64,
    ) -> Result<()> {
        let removed = self.unmap(ino, rec, fb, n)?;
        self.release_mappings(&removed)
    }

    /// Drop the references unmapped pieces held.
    fn release_mappings(&mut self, removed: &[Mapping]) -> Result<()> {
        for m in removed {
            if m.lower == 0 {
                self.decref(m.pool_run())?;
            }
        }
        Ok(())
    }

    /// Map `[fb, fb+len)` (which must be unmapped) to pool blocks from `phys`, merging with
    /// neighbouring extents that continue physically.
    pub(super) fn map(
        &mut self,
        ino: InodeNo,
        rec: &mut InodeRecord,
        fb: u64,
        phys: BlockNo,
        len: u64,
    ) -> Result<()> {
        self.map_from(ino, rec, (fb, phys.0, len), 0)
    }

    /// `map` for blocks of lower file `lower` (0: the pool).
    fn map_from(
        &mut self,
        ino: InodeNo,
        rec: &mut InodeRecord,
        (mut fb, mut phys, mut len): (u64, u64, u64),
        lower: u64,
    ) -> Result<()> {
        let added = len;
        if fb > 0 {
            let prev = match self.extents.range_rev((ino, 0)..(ino, fb))?.next() {
                Some(item) => {
                    let (k, v) = item?;
                    Some((k.1, decode::<ExtentRecord>(&v, &k)?))
                }
                None => None,
            };
            if let Some((pfb, p)) = prev {
                if pfb + p.len == fb && p.phys + p.len == phys && p.lower == lower {
                    self.extents.remove((ino, pfb))?;
                    fb = pfb;
                    phys = p.phys;
                    len += p.len;
                }
            }
        }
        let next = match self.extents.get((ino, fb + len))? {
            Some(v) => Some(decode::<ExtentRecord>(&v, &(ino, fb + len))?),
            None => None,
        };
        if let Some(nx) = next {
            if nx.phys == phys + len && nx.lower == lower {
                self.extents.remove((ino, fb + len))?;
                len += nx.len;
            }
        }
        self.extents.insert(
            (ino, fb),
            encode(&ExtentRecord { phys, len, lower }).as_slice(),
        )?;
        rec.blocks += added;
        self.mem.dirty = true;
        Ok(())
    }

    /// Copy `len` bytes of `src` starting at `src_off` to pool byte `pos`.
    fn emit(&self, src: &Source<'_>, src_off: u64, pos: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        match src {
            Source::Bytes(b) => {
                let s = src_off as usize;
                self.pool
                    .write_at(&b[s..s + len as usize], pos)
                    .map_err(Error::from_io)
            }
            Source::Zeros => zero_range(self.pool, pos, len).map_err(Error::from_io),
            Source::Pool(segs) => {
                let mut seg_start = 0u64;
                let want_end = src_off + len;
                for seg in segs.iter() {
                    let seg_end = seg_start + seg.len();
                    let a = seg_start.max(src_off);
                    let b = seg_end.min(want_end);
                    if a < b {
                        let to = pos + (a - src_off);
                        match *seg {
                            Segment::Pool { pos: p, .. } => self
                                .pool
                                .copy_within(p + (a - seg_start), to, b - a)
                                .map_err(Error::from_io)?,
                            Segment::Hole { .. } => {
                                zero_range(self.pool, to, b - a).map_err(Error::from_io)?
                            }
                            Segment::Lower { file, pos: p, .. } => {
                                let lf = self.lower_file(file)?;
                                self.pool
                                    .copy_from(&lf.file, p + (a - seg_start), to, b - a)
                                    .map_err(Error::from_io)?
                            }
                        }
                    }
                    if seg_end >= want_end {
                        break;
                    }
                    seg_start = seg_end;
                }
                Ok(())
            }
        }
    }

    /// Copy the bytes `[from, to)` of a block (relative to the block) from its current content
    /// (`old`: (lower file or 0 for the pool, block), or a hole) into new pool block `new`.
    fn carry_over(&self, old: Option<(u64, u64)>, new: BlockNo, from: u64, to: u64) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        let dst = new.pos(self.bs) + from;
        match old {
            Some((0, p)) => self
                .pool
                .copy_within(p * self.bs + from, dst, to - from)
                .map_err(Error::from_io),
            Some((lower, p)) => {
                let lf = self.lower_file(lower)?;
                self.pool
                    .copy_from(&lf.file, p * self.bs + from, dst, to - from)
                    .map_err(Error::from_io)
            }
            None => zero_range(self.pool, dst, to - from).map_err(Error::from_io),
        }
    }

    /// The open, verified lower file behind lower id `id`, for an operation under the store
    /// lock: normally one its `Store` method opened and verified before taking the lock
    /// (`LowerTree::hold`, with the ids from `lower_files_in`).
    pub(crate) fn lower_file(&self, id: u64) -> Result<std::sync::Arc<crate::overlay::LowerFile>> {
        let tree = self.lower.ok_or_else(|| {
            Error::corrupt(format!(
                "extent names lower file {id}, but the store has no lower directory"
            ))
        })?;
        tree.file_in_op(id, &self.lower_file_record(id)?)
    }

    pub(crate) fn lower_file_record(&self, id: u64) -> Result<crate::codec::LowerFileRecord> {
        match self.lower_files.get(id)? {
            Some(v) => decode::<crate::codec::LowerFileRecord>(&v, &id),
            None => Err(Error::corrupt(format!(
                "extent names unknown lower file {id}"
            ))),
        }
    }

    /// The lower files (id, record) that blocks `[fb, fb+n)` of `ino` map.
    pub(crate) fn lower_files_in(
        &self,
        ino: InodeNo,
        fb: u64,
        n: u64,
    ) -> Result<Vec<(u64, crate::codec::LowerFileRecord)>> {
        let mut out: Vec<(u64, crate::codec::LowerFileRecord)> = Vec::new();
        for m in self.mappings(ino, fb, n)? {
            if m.lower != 0 && !out.iter().any(|(id, _)| *id == m.lower) {
                out.push((m.lower, self.lower_file_record(m.lower)?));
            }
        }
        Ok(out)
    }

    /// Whether a write may overwrite mapping `m` in place: its pool blocks were allocated in
    /// this transaction (no commit references them), no read is copying from them, and no other
    /// file shares them.
    fn rewritable(&self, m: &Mapping) -> Result<bool> {
        Ok(m.lower == 0
            && self.mem.txn_alloc().contains_all(m.pool_run())
            && !self.mem.pins.overlaps(m.pool_run())
            && !self.is_shared(m.pool_run())?)
    }

    /// The first half of a write whose bytes go to the pool without the store lock
    /// (`Store::write_with`): if `[off, off+len)` is whole blocks and none of them may be
    /// overwritten in place, allocate new blocks for all of them (after the block before, to
    /// continue its extent) and return where the bytes go. Nothing maps the new blocks yet, so
    /// nothing reads them before [`Ctx::map_planned`] does; no commit runs in between
    /// (`Inner::inflight`). `None`: the write is done whole by [`Ctx::write_data`].
    ///
    /// Whole blocks only: a partial block carries bytes of its old block over, which another
    /// write to that block between the two halves could change.
    pub fn plan_write(&mut self, ino: InodeNo, off: u64, len: u64) -> Result<Option<WritePlan>> {
        let bs = self.bs;
        let end = match off.checked_add(len) {
            Some(e) if len > 0 && e <= MAX_FILE_SIZE && off % bs == 0 && e % bs == 0 => e,
            _ => return Ok(None),
        };
        let (first, n) = (off / bs, len / bs);
        let from = first.saturating_sub(1);
        let around = self.extents_over(ino, from, first + n - from)?;
        for m in clip(&around, first, n) {
            if self.rewritable(&m)? {
                return Ok(None);
            }
        }
        let hint = if first > 0 {
            clip(&around, first - 1, 1)
                .first()
                .filter(|m| m.lower == 0)
                .map(|m| BlockNo(m.phys) + 1)
        } else {
            None
        };
        let new = self.alloc(n, hint)?;
        Ok(Some(WritePlan {
            fb: first,
            run: BlockRun::new(new, n),
            end,
        }))
    }

    /// The second half of a planned write, once its bytes are in `plan.run`: map the new blocks
    /// over what the file had there, release that, and grow the size.
    pub fn map_planned(
        &mut self,
        ino: InodeNo,
        rec: &mut InodeRecord,
        plan: &WritePlan,
    ) -> Result<()> {
        let removed = self.unmap(ino, rec, plan.fb, plan.run.len)?;
        self.release_mappings(&removed)?;
        self.map(ino, rec, plan.fb, plan.run.start, plan.run.len)?;
        rec.size = rec.size.max(plan.end);
        Ok(())
    }

    /// Write `len` bytes from `src` at byte `off` of the file. Blocks allocated in the open
    /// transaction and not shared are rewritten in place; all others are redirected to new blocks.
    pub fn write_data(
        &mut self,
        ino: InodeNo,
        rec: &mut InodeRecord,
        off: u64,
        len: u64,
        src: &Source<'_>,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = off
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::FileTooBig)?;
        let bs = self.bs;
        let first = off / bs;
        let last_excl = end.div_ceil(bs);
        // One lookup serves the whole write in the common case of a single run of new blocks
        // (a write into committed blocks or a hole): the extents under it, and the one before it
        // (whose block after is where the new blocks should go, to continue it).
        let from = first.saturating_sub(1);
        let around = self.extents_over(ino, from, last_excl - from)?;
        let existing = clip(&around, first, last_excl - first);
        let before = if first > 0 {
            clip(&around, first - 1, 1).first().copied()
        } else {
            None
        };

        // Split the block range into runs: reusable mapped pieces (in place) and runs needing new blocks.
        let mut runs: Vec<(u64, u64, Option<BlockNo>)> = Vec::new(); // (fb, len, Some(phys) if in place)
        let mut pos = first;
        for m in &existing {
            if m.fb > pos {
                push_new_run(&mut runs, pos, m.fb - pos);
            }
            if self.rewritable(m)? {
                runs.push((m.fb, m.len, Some(BlockNo(m.phys))));
            } else {
                push_new_run(&mut runs, m.fb, m.len);
            }
            pos = m.fb + m.len;
        }
        if pos < last_excl {
            push_new_run(&mut runs, pos, last_excl - pos);
        }

        let single = runs.len() == 1;
        for (rfb, rlen, in_place) in runs {
            let byte_start = (rfb * bs).max(off);
            let byte_end = ((rfb + rlen) * bs).min(end);
            match in_place {
                Some(phys) => {
                    self.emit(
                        src,
                        byte_start - off,
                        phys.pos(bs) + (byte_start - rfb * bs),
                        byte_end - byte_start,
                    )?;
                }
                None => {
                    let old_of = |b: u64| {
                        existing
                            .iter()
                            .find(|m| m.fb <= b && b < m.fb + m.len)
                            .map(|m| (m.lower, m.phys + (b - m.fb)))
                    };
                    // Earlier runs of this write may have mapped the block before this one.
                    let prev = if rfb == first {
                        before
                    } else {
                        self.mappings(ino, rfb - 1, 1)?.first().copied()
                    };
                    let hint = prev.filter(|m| m.lower == 0).map(|m| BlockNo(m.phys) + 1);
                    let new = self.alloc(rlen, hint)?;
                    // Head: the untouched front of the first block keeps its old bytes; tail likewise.
                    let head = byte_start - rfb * bs;
                    let last_b = rfb + rlen - 1;
                    let tail_from = byte_end - last_b * bs;
                    let filled = self
                        .carry_over(old_of(rfb), new, 0, head)
                        .and_then(|_| {
                            self.carry_over(old_of(last_b), new + rlen - 1, tail_from, bs)
                        })
                        .and_then(|_| {
                            self.emit(
                                src,
                                byte_start - off,
                                new.pos(bs) + head,
                                byte_end - byte_start,
                            )
                        });
                    if let Err(e) = filled {
                        // Nothing points at the new blocks yet: give them back (e.g. on ENOSPC).
                        self.release_blocks(BlockRun::new(new, rlen))?;
                        return Err(e);
                    }
                    let removed = if single {
                        // No extent of the file changed since `around` was read.
                        let raw = overlapping(&around, rfb, rlen).copied().collect();
                        self.unmap_extents(ino, rec, rfb, rlen, raw)?
                    } else {
                        self.unmap(ino, rec, rfb, rlen)?
                    };
                    self.release_mappings(&removed)?;
                    self.map(ino, rec, rfb, new, rlen)?;
                }
            }
        }
        if end > rec.size {
            rec.size = end;
        }
        Ok(())
    }

    /// Zero `[off, off+len)` of a file where it is mapped (holes already read as zero).
    fn zero_mapped(
        &mut self,
        ino: InodeNo,
        rec: &mut InodeRecord,
        off: u64,
        len: u64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let fb = off / self.bs;
        let n = (off + len).div_ceil(self.bs) - fb;
        for m in self.mappings(ino, fb, n)? {
            let a = (m.fb * self.bs).max(off);
            let b = ((m.fb + m.len) * self.bs).min(off + len);
            if a < b {
                let size = rec.size;
                self.write_data(ino, rec, a, b - a, &Source::Zeros)?;
                rec.size = size;
            }
        }
        Ok(())
    }

    /// Set a regular file's size: shrinking zeroes the tail of the new last block and frees the rest.
    pub fn truncate(&mut self, ino: InodeNo, rec: &mut InodeRecord, size: u64) -> Result<()> {
        if size > MAX_FILE_SIZE {
            return Err(Error::FileTooBig);
        }
        if size < rec.size {
            let keep = size.div_ceil(self.bs);
            if size % self.bs != 0 {
                let tail_end = (keep * self.bs).min(rec.size);
                self.zero_mapped(ino, rec, size, tail_end - size)?;
            }
            self.unmap_and_release(ino, rec, keep, u64::MAX - keep)?;
        }
        rec.size = size;
        Ok(())
    }

    /// Remove every block of a file (it is being deleted).
    pub fn free_all_data(&mut self, ino: InodeNo, rec: &mut InodeRecord) -> Result<()> {
        self.unmap_and_release(ino, rec, 0, u64::MAX)
    }

    /// Deallocate `[off, off+len)`: whole blocks are unmapped, partial blocks zeroed.
    pub fn punch_hole(
        &mut self,
        ino: InodeNo,
        rec: &mut InodeRecord,
        off: u64,
        len: u64,
    ) -> Result<()> {
        let end = off.saturating_add(len).min(rec.size);
        if off >= end {
            return Ok(());
        }
        let bs = self.bs;
        let first_whole = off.div_ceil(bs);
        let last_whole = end / bs;
        if first_whole >= last_whole {
            return self.zero_mapped(ino, rec, off, end - off);
        }
        self.zero_mapped(ino, rec, off, first_whole * bs - off)?;
        self.zero_mapped(ino, rec, last_whole * bs, end - last_whole * bs)?;
        self.unmap_and_release(ino, rec, first_whole, last_whole - first_whole)
    }

    /// Give every hole in `[off, off+len)` freshly zeroed blocks.
    pub fn allocate(
        &mut self,
        ino: InodeNo,
        rec: &mut InodeRecord,
        off: u64,
        len: u64,
    ) -> Result<()> {
        let end = off
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::FileTooBig)?;
        let first = off / self.bs;
        let last_excl = end.div_ceil(self.bs);
        let mut holes = Vec::new();
        let mut pos = first;
        for m in self.mappings(ino, first, last_excl - first)? {
            if m.fb > pos {
                holes.push((pos, m.fb - pos));
            }
            pos = m.fb + m.len;
        }
        if pos < last_excl {
            holes.push((pos, last_excl - pos));
        }
        for (fb, n) in holes {
            let hint = if fb > 0 {
                self.mappings(ino, fb - 1, 1)?
                    .first()
                    .map(|m| BlockNo(m.phys) + 1)
            } else {
                None
            };
            let new = self.alloc(n, hint)?;
            // Fresh blocks may have been freed in this transaction: make them read as zeros.
            // Then reserve their host space, so a full host answers ENOSPC here, not at a
            // later write into the preallocated range (posix_fallocate's promise).
            let (pos, bytes) = (new.pos(self.bs), n * self.bs);
            let zeroed = self
                .pool
                .punch(pos, bytes)
                .and_then(|()| self.pool.allocate(pos, bytes));
            if let Err(e) = zeroed {
                // Nothing points at the new blocks yet: give them back (e.g. on ENOSPC).
                self.release_blocks(BlockRun::new(new, n))?;
                return Err(Error::from_io(e));
            }
            self.map(ino, rec, fb, new, n)?;
        }
        Ok(())
    }

    /// The file's bytes `[off, off+len)` (clipped to its size) as pool segments and holes.
    pub fn read_segments(
        &self,
        ino: InodeNo,
        rec: &InodeRecord,
        off: u64,
        len: u64,
    ) -> Result<Vec<Segment>> {
        let end = off.saturating_add(len).min(rec.size);
        if off >= end {
            return Ok(Vec::new());
        }
        let bs = self.bs;
        let first = off / bs;
        let mut segs: Vec<Segment> = Vec::new();
        let mut pos = off;
        let push = |segs: &mut Vec<Segment>, s: Segment| match (segs.last_mut(), s) {
            (Some(Segment::Hole { len: l }), Segment::Hole { len }) => *l += len,
            (Some(Segment::Pool { pos: p, len: l }), Segment::Pool { pos, len })
                if *p + *l == pos =>
            {
                *l += len
            }
            (
                Some(Segment::Lower {
                    file: f,
                    pos: p,
                    len: l,
                }),
                Segment::Lower { file, pos, len },
            ) if *f == file && *p + *l == pos => *l += len,
            _ => segs.push(s),
        };
        for m in self.mappings(ino, first, end.div_ceil(bs) - first)? {
            let a = (m.fb * bs).max(off);
            let b = ((m.fb + m.len) * bs).min(end);
            if a > pos {
                push(&mut segs, Segment::Hole { len: a - pos });
            }
            let at = m.phys * bs + (a - m.fb * bs);
            if m.lower == 0 {
                push(
                    &mut segs,
                    Segment::Pool {
                        pos: at,
                        len: b - a,
                    },
                );
            } else {
                // Bytes of the last lower block past the lower file's end read as zeros.
                let lower_size = match self.lower_files.get(m.lower)? {
                    Some(v) => decode::<crate::codec::LowerFileRecord>(&v, &m.lower)?.size,
                    None => {
                        return Err(Error::corrupt(format!(
                            "inode {ino} maps unknown lower file {}",
                            m.lower,
                            ino = ino.0
                        )))
                    }
                };
                let data = (b - a).min(lower_size.saturating_sub(at));
                if data > 0 {
                    push(
                        &mut segs,
                        Segment::Lower {
                            file: m.lower,
                            pos: at,
                            len: data,
                        },
                    );
                }
                if data < b - a {
                    push(&mut segs, Segment::Hole { len: b - a - data });
                }
            }
            pos = b;
        }
        if pos < end {
            push(&mut segs, Segment::Hole { len: end - pos });
        }
        Ok(segs)
    }

    /// SEEK_DATA / SEEK_HOLE from `off`.
    pub fn seek(
        &self,
        ino: InodeNo,
        rec: &InodeRecord,
        off: u64,
        whence: SeekWhence,
    ) -> Result<u64> {
        if off >= rec.size {
            return Err(Error::NoData);
        }
        let bs = self.bs;
        let first = off / bs;
        let maps = self.mappings(ino, first, rec.size.div_ceil(bs) - first)?;
        match whence {
            SeekWhence::Data => {
                let m = maps.first().ok_or(Error::NoData)?;
                Ok((m.fb * bs).max(off))
            }
            SeekWhence::Hole => {
                let mut pos = first;
                for m in &maps {
                    if m.fb > pos {
                        break;
                    }
                    pos = m.fb + m.len;
                }
                Ok((pos * bs).max(off).min(rec.size))
            }
        }
    }

    /// The reflink: make `dst[dst_off..dst_off+len]` share `src[src_off..]`'s blocks.
    /// Aligned blocks share extents; unaligned edges are copied inside the pool.
    pub fn clone_range(
        &mut self,
        (src, src_rec, src_off): (InodeNo, &InodeRecord, u64),
        (dst, dst_rec, dst_off): (InodeNo, &mut InodeRecord, u64),
        len: u64,
    ) -> Result<u64> {
        if src_off >= src_rec.size || len == 0 {
            return Ok(0);
        }
        let len = len.min(src_rec.size - src_off);
        let dst_end = dst_off
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(Error::FileTooBig)?;
        let bs = self.bs;
        if src == dst && src_off < dst_end && dst_off < src_off + len {
            return Err(Error::Invalid("overlapping ranges in one file"));
        }
        if src_off % bs != dst_off % bs {
            // No block lines up: copy inside the pool, a block-sized batch at a time.
            let mut done = 0;
            while done < len {
                let n = (len - done).min(256 * bs);
                let segs = self.read_segments(src, src_rec, src_off + done, n)?;
                self.write_data(dst, dst_rec, dst_off + done, n, &Source::Pool(&segs))?;
                done += n;
            }
            return Ok(len);
        }
        // Head: bytes before the first block boundary of the destination range.
        let head = ((bs - dst_off % bs) % bs).min(len);
        // The source's partial last block may be shared whole when the copy ends at both files' ends:
        // its bytes past EOF are zero in the source and will be past EOF in the destination.
        // Not within one file: the head copy may land in that very block, past the source's EOF.
        let src_end = src_off + len;
        let share_tail = src != dst && src_end == src_rec.size && dst_end >= dst_rec.size;
        let mut body_end = dst_off + head + (len - head) / bs * bs;
        if share_tail && body_end < dst_end {
            body_end = dst_end.div_ceil(bs) * bs;
        }
        let tail_start = body_end.min(dst_end);
        if head > 0 {
            let segs = self.read_segments(src, src_rec, src_off, head)?;
            self.write_data(dst, dst_rec, dst_off, head, &Source::Pool(&segs))?;
        }
        let body_fb = (dst_off + head) / bs;
        let body_blocks = (body_end - (dst_off + head)) / bs;
        if body_blocks > 0 {
            let src_fb = (src_off + head) / bs;
            self.unmap_and_release(dst, dst_rec, body_fb, body_blocks)?;
            for m in self.mappings(src, src_fb, body_blocks)? {
                // Lower data is immutable and uncounted: sharing it is copying the extent.
                if m.lower == 0 {
                    self.incref(m.pool_run())?;
                }
                self.map_from(
                    dst,
                    dst_rec,
                    (body_fb + (m.fb - src_fb), m.phys, m.len),
                    m.lower,
                )?;
            }
        }
        if tail_start < dst_end {
            let n = dst_end - tail_start;
            let segs = self.read_segments(src, src_rec, src_off + (tail_start - dst_off), n)?;
            self.write_data(dst, dst_rec, tail_start, n, &Source::Pool(&segs))?;
        }
        if dst_end > dst_rec.size {
            dst_rec.size = dst_end;
        }
        Ok(len)
    }
}

/// The extents of `extents` (as `extents_over` returns them) that overlap `[fb, fb+n)`.
fn overlapping(
    extents: &[(u64, ExtentRecord)],
    fb: u64,
    n: u64,
) -> impl Iterator<Item = &(u64, ExtentRecord)> {
    let end = fb.saturating_add(n);
    extents
        .iter()
        .filter(move |(kfb, e)| *kfb < end && kfb + e.len > fb)
}

/// The pieces of `extents` (as `extents_over` returns them) inside `[fb, fb+n)`.
fn clip(extents: &[(u64, ExtentRecord)], fb: u64, n: u64) -> Vec<Mapping> {
    let end = fb.saturating_add(n);
    overlapping(extents, fb, n)
        .map(|&(kfb, e)| {
            let from = kfb.max(fb);
            Mapping {
                fb: from,
                phys: e.phys + (from - kfb),
                len: (kfb + e.len).min(end) - from,
                lower: e.lower,
            }
        })
        .collect()
}

fn push_new_run(runs: &mut Vec<(u64, u64, Option<BlockNo>)>, fb: u64, len: u64) {
    if let Some(last) = runs.last_mut() {
        if last.2.is_none() && last.0 + last.1 == fb {
            last.1 += len;
            return;
        }
    }
    runs.push((fb, len, None));
}

/// Stamp a data change.
pub(crate) fn touch_data(rec: &mut InodeRecord) {
    let now = Timespec::now();
    rec.mtime = now;
    rec.ctime = now;
}

pub(crate) fn require_regular(rec: &InodeRecord) -> Result<()> {
    match rec.kind {
        FileKind::Regular => Ok(()),
        FileKind::Directory => Err(Error::IsDir),
        _ => Err(Error::Invalid("not a regular file")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemEnv;
    use crate::store::Store;
    use crate::types::{Caller, FallocMode, InodeNo, NewInode, SetAttr};

    const BS: u64 = 4096;

    fn store() -> (MemEnv, Store) {
        crate::testing::mem_store().expect("a store in memory")
    }

    fn file(s: &Store, name: &str) -> InodeNo {
        let new = NewInode::regular(0o644);
        s.create(InodeNo::ROOT, name.as_bytes(), &new, Caller::ROOT)
            .expect("create")
            .ino
    }

    fn maps(s: &Store, ino: InodeNo) -> Vec<Mapping> {
        s.inner()
            .read(|cx| cx.mappings(ino, 0, u64::MAX))
            .expect("mappings")
    }

    fn assert_clean(s: &Store) {
        s.commit().expect("commit");
        let report = s.check().expect("check");
        assert!(report.is_clean(), "{:#?}", report.problems);
    }

    #[test]
    fn sequential_appends_make_one_extent() {
        let (_env, s) = store();
        let f = file(&s, "f");
        for i in 0..8u64 {
            s.write(f, i * BS, &[i as u8 + 1; BS as usize])
                .expect("write");
        }
        let m = maps(&s, f);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].len, 8);
        assert_clean(&s);
    }

    #[test]
    fn overwrite_is_in_place_until_commit_then_redirected() {
        let (_env, s) = store();
        let f = file(&s, "f");
        s.write(f, 0, &[1; BS as usize]).expect("write");
        let first = maps(&s, f)[0].phys;
        s.write(f, 10, b"again").expect("write");
        assert_eq!(
            maps(&s, f)[0].phys,
            first,
            "uncommitted block rewritten in place"
        );
        s.commit().expect("commit");
        s.write(f, 10, b"after").expect("write");
        assert_ne!(
            maps(&s, f)[0].phys,
            first,
            "committed block must not be overwritten"
        );
        let got = s.read_to_vec(f, 0, BS).expect("read");
        assert_eq!(&got[10..15], b"after");
        assert!(got[..10].iter().chain(&got[15..]).all(|&b| b == 1));
        assert_clean(&s);
    }

    #[test]
    fn aligned_clone_shares_blocks_and_writes_unshare_them() {
        let (_env, s) = store();
        let (a, b) = (file(&s, "a"), file(&s, "b"));
        s.write(a, 0, &[7; 3 * BS as usize]).expect("write");
        assert_eq!(s.clone_range(a, 0, b, 0, u64::MAX).expect("clone"), 3 * BS);
        assert_eq!(
            maps(&s, a),
            maps(&s, b),
            "whole-file clone shares every block"
        );
        let run = maps(&s, a)[0].pool_run();
        assert!(s.inner().read(|cx| cx.is_shared(run)).expect("shared"));
        s.write(b, BS + 1, b"x").expect("write");
        assert_eq!(s.read_to_vec(a, BS + 1, 1).expect("read"), [7]);
        assert_eq!(s.read_to_vec(b, BS + 1, 1).expect("read"), *b"x");
        assert_ne!(maps(&s, a), maps(&s, b));
        assert_clean(&s);
    }

    #[test]
    fn differently_aligned_clone_copies_bytes() {
        let (_env, s) = store();
        let (a, b) = (file(&s, "a"), file(&s, "b"));
        let data: Vec<u8> = (0..2 * BS).map(|i| (i % 251) as u8 + 1).collect();
        s.write(a, 0, &data).expect("write");
        assert_eq!(s.clone_range(a, 100, b, 7, BS).expect("clone"), BS);
        assert_eq!(
            s.read_to_vec(b, 7, BS).expect("read"),
            &data[100..100 + BS as usize]
        );
        let shared = s
            .inner()
            .read(|cx| {
                let m = cx.mappings(b, 0, 2)?;
                cx.is_shared(BlockRun::new(m[0].pool_run().start, 1))
            })
            .expect("shared");
        assert!(!shared, "nothing lines up, nothing may be shared");
        assert_clean(&s);
    }

    #[test]
    fn clone_into_itself_overlapping_is_refused() {
        let (_env, s) = store();
        let a = file(&s, "a");
        s.write(a, 0, &[1; 3 * BS as usize]).expect("write");
        assert!(matches!(
            s.clone_range(a, 0, a, BS, 2 * BS),
            Err(Error::Invalid(_))
        ));
        assert_eq!(s.clone_range(a, 0, a, 3 * BS, BS).expect("clone"), BS);
        assert_eq!(s.getattr(a).expect("attr").size, 4 * BS);
    }

    #[test]
    fn self_clone_ending_at_eof_leaves_no_stale_bytes_past_eof() {
        // Regression: a clone within one file, ending at its EOF, with the same misalignment on
        // both sides shared the source's last block after the head copy had written into it,
        // past the source's EOF; growing the file later showed those bytes instead of zeros.
        let (_env, s) = store();
        let a = file(&s, "a");
        s.write(a, BS + BS / 2, &[9; 2 * BS as usize - 1])
            .expect("write");
        let size = s.getattr(a).expect("attr").size;
        let src = 2 * BS + BS / 2;
        let n = size - src;
        s.clone_range(a, src, a, src + BS, n).expect("clone");
        let end = src + BS + n;
        assert_eq!(s.getattr(a).expect("attr").size, end);
        s.setattr(
            a,
            &SetAttr {
                size: Some(end + 2 * BS),
                ..Default::default()
            },
        )
        .expect("grow");
        let tail = s.read_to_vec(a, end, 2 * BS).expect("read");
        assert!(
            tail.iter().all(|&b| b == 0),
            "bytes past the old EOF are not zero"
        );
        assert_clean(&s);
    }

    #[test]
    fn truncate_then_grow_reads_zeros() {
        let (_env, s) = store();
        let f = file(&s, "f");
        s.write(f, 0, &[0xff; 2 * BS as usize]).expect("write");
        s.commit().expect("commit");
        for size in [5000, 2 * BS] {
            s.setattr(
                f,
                &SetAttr {
                    size: Some(size),
                    ..Default::default()
                },
            )
            .expect("truncate");
        }
        let got = s.read_to_vec(f, 0, 2 * BS).expect("read");
        assert!(got[..5000].iter().all(|&b| b == 0xff));
        assert!(
            got[5000..].iter().all(|&b| b == 0),
            "stale bytes after regrow"
        );
        assert_eq!(maps(&s, f).iter().map(|m| m.len).sum::<u64>(), 2);
        assert_clean(&s);
    }

    #[test]
    fn punch_unmaps_whole_blocks_and_zeroes_partial_ones() {
        let (_env, s) = store();
        let f = file(&s, "f");
        s.write(f, 0, &[5; 4 * BS as usize]).expect("write");
        s.fallocate(f, 100, 3 * BS, FallocMode::PunchHole)
            .expect("punch");
        let mapped: Vec<u64> = maps(&s, f)
            .iter()
            .flat_map(|m| m.fb..m.fb + m.len)
            .collect();
        assert_eq!(
            mapped,
            vec![0, 3],
            "blocks 1 and 2 are wholly inside the hole"
        );
        let got = s.read_to_vec(f, 0, 4 * BS).expect("read");
        assert!(got[..100].iter().all(|&b| b == 5));
        assert!(got[100..(3 * BS + 100) as usize].iter().all(|&b| b == 0));
        assert!(got[(3 * BS + 100) as usize..].iter().all(|&b| b == 5));
        assert_eq!(
            s.getattr(f).expect("attr").size,
            4 * BS,
            "punch keeps the size"
        );
        assert_clean(&s);
    }

    #[test]
    fn seek_data_and_hole_follow_the_extent_map() {
        let (_env, s) = store();
        let f = file(&s, "f");
        s.write(f, 2 * BS + 10, b"data").expect("write");
        s.setattr(
            f,
            &SetAttr {
                size: Some(5 * BS),
                ..Default::default()
            },
        )
        .expect("grow");
        assert_eq!(s.seek(f, 0, SeekWhence::Data).expect("data"), 2 * BS);
        assert_eq!(s.seek(f, 0, SeekWhence::Hole).expect("hole"), 0);
        assert_eq!(
            s.seek(f, 2 * BS + 5, SeekWhence::Data).expect("data"),
            2 * BS + 5
        );
        assert_eq!(
            s.seek(f, 2 * BS + 5, SeekWhence::Hole).expect("hole"),
            3 * BS
        );
        assert!(matches!(
            s.seek(f, 3 * BS, SeekWhence::Data),
            Err(Error::NoData)
        ));
        assert!(matches!(
            s.seek(f, 5 * BS, SeekWhence::Hole),
            Err(Error::NoData)
        ));
    }

    #[test]
    fn writes_past_the_maximum_file_size_are_refused() {
        let (_env, s) = store();
        let f = file(&s, "f");
        assert!(matches!(
            s.write(f, MAX_FILE_SIZE - 2, b"abc"),
            Err(Error::FileTooBig)
        ));
        assert!(matches!(
            s.fallocate(
                f,
                MAX_FILE_SIZE,
                1,
                FallocMode::Allocate { keep_size: false }
            ),
            Err(Error::FileTooBig)
        ));
        assert_eq!(s.getattr(f).expect("attr").size, 0);
    }

    #[test]
    fn allocate_hands_out_zeroed_blocks_even_when_reusing_freed_ones() {
        let (_env, s) = store();
        let (a, b) = (file(&s, "a"), file(&s, "b"));
        s.write(a, 0, &[0xee; 4 * BS as usize]).expect("write");
        // Blocks allocated and freed in one transaction are free at once.
        s.unlink(InodeNo::ROOT, b"a").expect("unlink");
        s.fallocate(b, 0, 4 * BS, FallocMode::Allocate { keep_size: false })
            .expect("allocate");
        assert_eq!(maps(&s, b).iter().map(|m| m.len).sum::<u64>(), 4);
        assert!(s
            .read_to_vec(b, 0, 4 * BS)
            .expect("read")
            .iter()
            .all(|&x| x == 0));
        assert_clean(&s);
    }

    #[test]
    fn keep_size_preallocation_stays_inside_the_eof_block() {
        // Regression: fallocate(KEEP_SIZE) mapped blocks wholly past EOF, which check() reports
        // as extents past the end of the file.
        let (_env, s) = store();
        let f = file(&s, "f");
        s.write(f, 0, b"x").expect("write");
        s.fallocate(f, 0, 8 * BS, FallocMode::Allocate { keep_size: true })
            .expect("allocate");
        assert_eq!(s.getattr(f).expect("attr").size, 1);
        assert!(
            maps(&s, f).iter().all(|m| m.fb + m.len <= 1),
            "{:?}",
            maps(&s, f)
        );
        assert_clean(&s);
    }

    #[test]
    fn enospc_while_allocating_leaks_no_blocks() {
        // Regression: when zeroing freshly allocated blocks failed (ENOSPC), fallocate returned
        // the error with the blocks neither mapped nor freed: leaked blocks at the next commit.
        let (env, s) = store();
        let f = file(&s, "f");
        s.commit().expect("commit");
        env.fail_writes_after(Some(0));
        let r = s.fallocate(f, 0, 4 * BS, FallocMode::Allocate { keep_size: false });
        env.fail_writes_after(None);
        assert!(matches!(r, Err(Error::NoSpace)), "{r:?}");
        assert!(maps(&s, f).is_empty());
        assert_clean(&s);
    }
}
