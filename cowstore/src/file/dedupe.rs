//! Dedupe (`cowfs dedupe`): find pool blocks of identical content and share them, with the
//! semantics of Linux's FIDEDUPERANGE — candidates by hash, the bytes of both blocks compared
//! before anything is shared, and the comparison and the remap in one store operation, so no
//! write can change either block in between (see docs/design.md, "Dedupe").
//!
//! A session ([`DedupeIndex`]) remembers a hash of every block of the files it has seen; each
//! file given to [`Store::dedupe_file`] is read a batch at a time ([`BATCH_BYTES`]) with no
//! store lock held (the blocks are pinned against reuse meanwhile) and hashed; blocks whose hash
//! is in the index become candidates, coalesced into runs (consecutive file blocks against
//! consecutive candidate blocks), and then one store operation per batch compares the bytes of
//! each run under the lock and remaps the equal blocks of the file onto the candidate's pool
//! blocks (refcounts up, the file's old blocks released). Holes, lower (overlay) blocks and
//! blocks already shared with their candidate are skipped.

use crate::codec::InodeRecord;
use crate::error::{Error, Result};
use crate::ns::acl::{self, Acl, Capability, Cred, Tag};
use crate::ns::{check_flags, Change};
use crate::store::ctx::Ctx;
use crate::store::Store;
use crate::types::{BlockNo, BlockRun, FileKind, InodeNo};
use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_64;

/// Bytes of a file read and hashed per step, and at most compared in one store operation.
pub const BATCH_BYTES: u64 = 32 << 20;

/// Bytes compared per read under the store lock.
const COMPARE_BYTES: u64 = 1 << 20;

/// Index entries a session keeps at most (about 24 bytes each with the map's overhead, so
/// some 200 MiB; 32 GiB of distinct data at 4 KiB blocks). Past it, new blocks are still
/// looked up but no longer remembered.
pub const DEFAULT_INDEX_LIMIT: usize = 8 << 20;

/// The blocks a dedupe session has seen: content hash → (inode, file block).
#[derive(Debug)]
pub struct DedupeIndex {
    map: HashMap<u64, (InodeNo, u64)>,
    limit: usize,
}

impl Default for DedupeIndex {
    fn default() -> Self {
        DedupeIndex::with_limit(DEFAULT_INDEX_LIMIT)
    }
}

impl DedupeIndex {
    /// An empty index that remembers at most `limit` blocks.
    pub fn with_limit(limit: usize) -> DedupeIndex {
        DedupeIndex {
            map: HashMap::new(),
            limit,
        }
    }

    /// Blocks remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What a dedupe of one file (or a whole session, summed) did, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupeStats {
    /// Mapped pool bytes read and hashed.
    pub examined: u64,
    /// Bytes found identical to an earlier block (compared byte for byte) and now shared.
    pub deduped: u64,
    /// Pool bytes no file references any more (the store's accounting: blocks released).
    pub freed: u64,
}

impl std::ops::AddAssign for DedupeStats {
    fn add_assign(&mut self, o: DedupeStats) {
        self.examined += o.examined;
        self.deduped += o.deduped;
        self.freed += o.freed;
    }
}

/// Blocks `[dst_fb, dst_fb+len)` of the file may share `[src_fb, src_fb+len)` of `src`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Candidate {
    dst_fb: u64,
    src: InodeNo,
    src_fb: u64,
    len: u64,
}

/// Add block `dst_fb` ↔ (`src`, `src_fb`) to the runs, extending the last one when both sides
/// continue it.
fn push_candidate(runs: &mut Vec<Candidate>, dst_fb: u64, src: InodeNo, src_fb: u64) {
    if let Some(last) = runs.last_mut() {
        if last.src == src && last.dst_fb + last.len == dst_fb && last.src_fb + last.len == src_fb {
            last.len += 1;
            return;
        }
    }
    runs.push(Candidate {
        dst_fb,
        src,
        src_fb,
        len: 1,
    });
}

/// Whether `cred` may have the blocks of a file replaced: FIDEDUPERANGE's rule on Linux
/// (`allow_file_dedupe`): CAP_SYS_ADMIN, the owner, or whoever may write the file (its mode,
/// or its access ACL when it has one).
/// `owner`: the file's (uid, gid, permission bits).
pub(crate) fn may_replace(owner: (u32, u32, u16), acl: Option<&Acl>, cred: &dyn Cred) -> bool {
    let (uid, gid, perm) = owner;
    let who = cred.caller();
    if cred.capable(Capability::SysAdmin) || who.uid == uid {
        return true;
    }
    const W: u16 = 2;
    let Some(acl) = acl else {
        let bits = if cred.in_group(gid) { perm >> 3 } else { perm };
        return bits & W != 0;
    };
    // posix_acl_permission: a named user entry, else the groups (any granting one wins),
    // masked; else other.
    let mask = acl
        .entries()
        .iter()
        .find(|e| e.tag == Tag::Mask)
        .map_or(7, |e| e.perm);
    if let Some(e) = acl
        .entries()
        .iter()
        .find(|e| e.tag == Tag::User && e.id == who.uid)
    {
        return e.perm & mask & W != 0;
    }
    let mut in_some_group = false;
    for e in acl.entries() {
        let gid = match e.tag {
            Tag::GroupObj => gid,
            Tag::Group => e.id,
            _ => continue,
        };
        if cred.in_group(gid) {
            if e.perm & mask & W != 0 {
                return true;
            }
            in_some_group = true;
        }
    }
    if in_some_group {
        return false;
    }
    acl.entries()
        .iter()
        .find(|e| e.tag == Tag::Other)
        .is_some_and(|e| e.perm & W != 0)
}

impl Ctx<'_> {
    /// Pool blocks released so far by the open transaction, as the allocator counts them:
    /// committed blocks waiting for the commit plus fresh blocks given back (no longer
    /// allocated in it). A dedupe allocates nothing, so the difference across it is what it
    /// freed.
    fn release_mark(&self) -> (u64, u64) {
        (
            self.mem.pending_free().total(),
            self.mem.txn_alloc().total(),
        )
    }

    /// Compare each candidate run byte for byte and share the equal blocks: `dst`'s blocks are
    /// remapped onto the source's pool blocks. `dst_rec` is the destination's record, changed
    /// here (block count) and written by the caller. Returns (blocks shared, blocks freed).
    fn dedupe_runs(
        &mut self,
        dst: InodeNo,
        dst_rec: &mut InodeRecord,
        runs: &[Candidate],
    ) -> Result<(u64, u64)> {
        let before = self.release_mark();
        let mut shared = 0u64;
        let bs = self.bs;
        let dst_blocks = dst_rec.size.div_ceil(bs);
        let mut a = vec![0u8; COMPARE_BYTES as usize];
        let mut b = vec![0u8; COMPARE_BYTES as usize];
        for c in runs {
            // The source may be gone or changed since it was hashed: whatever it is now is what
            // gets compared.
            let src_blocks = if c.src == dst {
                dst_blocks
            } else {
                match self.try_inode(c.src)? {
                    Some(r) if r.kind == FileKind::Regular => r.size.div_ceil(bs),
                    _ => continue,
                }
            };
            let len = c
                .len
                .min(src_blocks.saturating_sub(c.src_fb))
                .min(dst_blocks.saturating_sub(c.dst_fb));
            if len == 0 {
                continue;
            }
            if c.src == dst && c.src_fb < c.dst_fb + len && c.dst_fb < c.src_fb + len {
                continue;
            }
            for (off, s_phys, d_phys, n) in self.paired_pool_pieces(c, len, dst)? {
                if s_phys == d_phys {
                    continue;
                }
                let mut done = 0u64;
                while done < n {
                    let step = (n - done).min(COMPARE_BYTES / bs);
                    let bytes = (step * bs) as usize;
                    self.pool
                        .read_at(&mut a[..bytes], (s_phys + done).pos(bs))
                        .map_err(Error::from_io)?;
                    self.pool
                        .read_at(&mut b[..bytes], (d_phys + done).pos(bs))
                        .map_err(Error::from_io)?;
                    // Runs of equal blocks inside this step.
                    let mut i = 0u64;
                    while i < step {
                        let same = |k: u64| {
                            let r = (k * bs) as usize..((k + 1) * bs) as usize;
                            a[r.clone()] == b[r]
                        };
                        if !same(i) {
                            i += 1;
                            continue;
                        }
                        let mut j = i + 1;
                        while j < step && same(j) {
                            j += 1;
                        }
                        let m = j - i;
                        let fb = c.dst_fb + off + done + i;
                        let src_run = BlockRun::new(s_phys + done + i, m);
                        // Take the new reference first: the release below must never reach
                        // the source's blocks.
                        self.incref(src_run)?;
                        self.unmap_and_release(dst, dst_rec, fb, m)?;
                        self.map(dst, dst_rec, fb, src_run.start, m)?;
                        shared += m;
                        i = j;
                    }
                    done += step;
                }
            }
        }
        let after = self.release_mark();
        let freed = (after.0.saturating_sub(before.0)) + before.1.saturating_sub(after.1);
        Ok((shared, freed))
    }

    /// The pieces of a candidate run (clipped to `len`) where both the source and `dst` map pool
    /// blocks, each contiguous on both sides: (offset in the run, source block, dst block, n).
    fn paired_pool_pieces(
        &self,
        c: &Candidate,
        len: u64,
        dst: InodeNo,
    ) -> Result<Vec<(u64, BlockNo, BlockNo, u64)>> {
        let src_maps = self.mappings(c.src, c.src_fb, len)?;
        let dst_maps = self.mappings(dst, c.dst_fb, len)?;
        let mut out = Vec::new();
        let (mut i, mut j) = (0usize, 0usize);
        while i < src_maps.len() && j < dst_maps.len() {
            let (s, d) = (src_maps[i], dst_maps[j]);
            let (s0, s1) = (s.fb - c.src_fb, s.fb - c.src_fb + s.len);
            let (d0, d1) = (d.fb - c.dst_fb, d.fb - c.dst_fb + d.len);
            let (lo, hi) = (s0.max(d0), s1.min(d1));
            if lo < hi && s.lower == 0 && d.lower == 0 {
                out.push((
                    lo,
                    BlockNo(s.phys + (lo - s0)),
                    BlockNo(d.phys + (lo - d0)),
                    hi - lo,
                ));
            }
            if s1 <= d1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        Ok(out)
    }
}

/// [`Store::dedupe_file`]: see the module documentation.
pub(crate) fn dedupe_file(
    store: &Store,
    index: &mut DedupeIndex,
    ino: InodeNo,
    replace: bool,
    cred: &dyn Cred,
) -> Result<DedupeStats> {
    let inner = store.inner();
    let bs = inner.bs;
    let (size, allowed) = inner.read(|cx| {
        let rec = cx.get_inode(ino)?;
        super::require_regular(&rec)?;
        let acl = match cx.get_xattr(ino, acl::ACL_ACCESS) {
            Ok(v) => Acl::from_xattr(&v)?,
            Err(Error::NoAttr) => None,
            Err(e) => return Err(e),
        };
        let owner = (rec.uid, rec.gid, rec.perm);
        Ok((rec.size, may_replace(owner, acl.as_ref(), cred)))
    })?;
    if replace && !allowed {
        return Err(Error::Denied);
    }
    let mut stats = DedupeStats::default();
    let batch = (BATCH_BYTES / bs).max(1);
    let nblocks = size.div_ceil(bs);
    let mut buf = Vec::new();
    let mut fb = 0u64;
    while fb < nblocks {
        let n = batch.min(nblocks - fb);
        // The pool pieces of this batch, pinned: no block of them is reused or rewritten in
        // place while we read it (a write in the meantime is redirected, and the comparison
        // under the lock later sees it).
        let (maps, _pin) = inner.read(|cx| {
            let maps: Vec<_> = cx
                .mappings(ino, fb, n)?
                .into_iter()
                .filter(|m| m.lower == 0)
                .collect();
            let runs = maps.iter().map(|m| m.pool_run()).collect();
            Ok((maps, cx.mem.pins.pin(runs)))
        })?;
        let mut runs: Vec<Candidate> = Vec::new();
        for m in &maps {
            let bytes = (m.len * bs) as usize;
            buf.resize(bytes, 0);
            inner
                .pool
                .read_at(&mut buf[..bytes], BlockNo(m.phys).pos(bs))
                .map_err(Error::from_io)?;
            stats.examined += m.len * bs;
            for k in 0..m.len {
                let block = &buf[(k * bs) as usize..((k + 1) * bs) as usize];
                let h = xxh3_64(block);
                let here = m.fb + k;
                match index.map.get(&h) {
                    Some(&(src, src_fb)) if (src, src_fb) != (ino, here) => {
                        push_candidate(&mut runs, here, src, src_fb)
                    }
                    Some(_) => {}
                    None => {
                        if index.map.len() < index.limit {
                            index.map.insert(h, (ino, here));
                        }
                    }
                }
            }
        }
        drop(_pin);
        if replace && !runs.is_empty() {
            let (shared, freed) = inner.write(|cx| {
                let mut rec = cx.get_inode(ino)?;
                super::require_regular(&rec)?;
                // An immutable or append-only file's data does not change, even to the same
                // bytes (FIDEDUPERANGE refuses them with EPERM too).
                check_flags(&rec, Change::Write { at_eof: false })?;
                let r = cx.dedupe_runs(ino, &mut rec, &runs)?;
                if r.0 > 0 {
                    // Content and times stay: only where the bytes live changes (and st_blocks).
                    cx.put_inode(ino, &rec)?;
                }
                Ok(r)
            })?;
            stats.deduped += shared * bs;
            stats.freed += freed * bs;
        }
        fb += n;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Caller;

    fn rec(uid: u32, gid: u32, perm: u16) -> (u32, u32, u16) {
        (uid, gid, perm)
    }

    #[test]
    fn replacing_needs_owner_writer_or_admin() {
        let nobody = Caller {
            uid: 65534,
            gid: 65534,
        };
        assert!(may_replace(rec(0, 0, 0o644), None, &Caller::ROOT));
        assert!(!may_replace(rec(0, 0, 0o644), None, &nobody));
        assert!(may_replace(rec(65534, 0, 0o444), None, &nobody), "owner");
        assert!(may_replace(rec(0, 65534, 0o664), None, &nobody), "group");
        assert!(!may_replace(rec(0, 65534, 0o646), None, &nobody));
        assert!(may_replace(rec(0, 0, 0o646), None, &nobody), "other");
    }

    #[test]
    fn candidates_coalesce_into_runs() {
        let mut runs = Vec::new();
        let (a, b) = (InodeNo(5), InodeNo(6));
        for (d, s, sfb) in [(0, a, 10), (1, a, 11), (2, a, 12), (3, b, 13), (5, b, 15)] {
            push_candidate(&mut runs, d, s, sfb);
        }
        let lens: Vec<u64> = runs.iter().map(|c| c.len).collect();
        assert_eq!(lens, vec![3, 1, 1]);
    }
}
