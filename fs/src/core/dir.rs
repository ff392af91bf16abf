//! Directory streams: where each open stream ends, and the listings of readdir and
//! readdirplus, fetched from the store in batches sized to what the kernel's reply can hold.
//!
//! A stream ends at the cookie the directory's next entry would have got when it was opened
//! or last rewound (offset 0): entries created or renamed into the directory since have cookies
//! at or past that end, so a stream never returns an entry twice however the directory changes
//! under it (see `Store::readdir_until`).

use super::filesystem::Core;
use crate::error::FsError;
use cowstore::{DirEntry, InodeAttr, InodeNo};
use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of a `struct fuse_dirent` before its name, and of the `struct fuse_entry_out` that
/// precedes it in a readdirplus reply; each entry is padded to 8 bytes.
const DIRENT_HEADER: usize = 24;
const ENTRY_OUT: usize = 128;
/// The smallest reply buffer the kernel offers: one page.
const MIN_REPLY: usize = 4096;

/// Entries asked of the store by the first batch of a request: one more than the smallest
/// reply (a page) holds of the smallest entries (a one-byte name). A one-page reply thus never
/// needs a second store call, even one filled to its last byte (the extra entry is what tells
/// it is full), and barely more entries are read than such a page can carry. Each further
/// batch of the same request (a larger reply) doubles, up to [`MAX_BATCH`].
pub const FIRST_BATCH: usize = MIN_REPLY / (DIRENT_HEADER + 8) + 1;
/// The same for readdirplus, whose entries carry attributes (and cost an inode read each).
pub const FIRST_BATCH_PLUS: usize = MIN_REPLY / (ENTRY_OUT + DIRENT_HEADER + 8) + 1;
const MAX_BATCH: usize = 1024;

/// Where the entries of a listing go: the reply being filled.
pub trait DirSink<T> {
    /// Add `entry`; `false`: the reply is full and `entry` is not in it.
    fn add(&mut self, entry: &T) -> bool;
}

/// An item of a listing, by the cookie the next request resumes after.
pub trait Listed {
    fn cookie(&self) -> u64;
}

impl Listed for DirEntry {
    fn cookie(&self) -> u64 {
        self.cookie
    }
}

impl Listed for (DirEntry, InodeAttr) {
    fn cookie(&self) -> u64 {
        self.0.cookie
    }
}

/// Fill `sink` with the entries after cookie `offset`: `fetch(after, n)` returns up to `n`
/// entries after cookie `after`, fewer only at the end of the stream. Stops when the sink is
/// full or the stream ends. A short batch ends the request even if the store left entries out
/// (readdirplus skips an entry whose inode is gone): the reply is then shorter, and the kernel
/// asks again after its last entry; only an empty reply ends the stream.
pub(crate) fn fill<T: Listed>(
    offset: u64,
    first: usize,
    mut fetch: impl FnMut(u64, usize) -> Result<Vec<T>, FsError>,
    sink: &mut dyn DirSink<T>,
) -> Result<(), FsError> {
    let mut after = offset;
    let mut batch = first.max(1);
    loop {
        let items = fetch(after, batch)?;
        for item in &items {
            if !sink.add(item) {
                return Ok(());
            }
            after = item.cookie();
        }
        if items.len() < batch {
            return Ok(());
        }
        batch = (batch * 2).min(MAX_BATCH);
    }
}

/// The open directory streams, by file handle: the cookie each one ends at.
#[derive(Debug, Default)]
pub struct DirStreams {
    next: AtomicU64,
    ends: Mutex<HashMap<u64, u64>>,
}

impl DirStreams {
    fn ends(&self) -> MutexGuard<'_, HashMap<u64, u64>> {
        self.ends.lock()
    }

    /// A new stream that ends at cookie `end`.
    pub fn open(&self, end: u64) -> u64 {
        // 0 stays "no handle".
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.ends().insert(fh, end);
        fh
    }

    /// Where a request of stream `fh` at `offset` must stop. Offset 0 is a rewind: the stream
    /// then ends where the directory ends `now`. Unknown handles list everything.
    pub fn end<E>(
        &self,
        fh: u64,
        offset: u64,
        now: impl FnOnce() -> Result<u64, E>,
    ) -> Result<u64, E> {
        if offset != 0 {
            return Ok(self.ends().get(&fh).copied().unwrap_or(u64::MAX));
        }
        let end = now()?;
        if let Some(e) = self.ends().get_mut(&fh) {
            *e = end;
        }
        Ok(end)
    }

    pub fn close(&self, fh: u64) {
        self.ends().remove(&fh);
    }
}

impl Core {
    /// READDIR of stream `fh` from cookie `offset` (0: rewind), into `sink`; the listing
    /// counts as an access of the directory (atime).
    pub fn readdir(
        &self,
        dir: InodeNo,
        fh: u64,
        offset: u64,
        sink: &mut dyn DirSink<DirEntry>,
    ) -> Result<(), FsError> {
        let s = self.store()?;
        let end = self.dirs.end(fh, offset, || s.dir_end(dir))?;
        let fetch = |after, n| Ok(s.readdir_until(dir, after, end, n)?);
        fill(offset, FIRST_BATCH, fetch, sink)?;
        self.accessed(s, dir);
        Ok(())
    }

    /// READDIRPLUS: as [`Core::readdir`], each entry with its attributes, one store call per
    /// batch (`Store::readdir_plus`, which imports no subdirectory).
    pub fn readdirplus(
        &self,
        dir: InodeNo,
        fh: u64,
        offset: u64,
        sink: &mut dyn DirSink<(DirEntry, InodeAttr)>,
    ) -> Result<(), FsError> {
        let s = self.store()?;
        let end = self.dirs.end(fh, offset, || s.dir_end(dir))?;
        let fetch = |after, n| Ok(s.readdir_plus(dir, after, end, n)?);
        fill(offset, FIRST_BATCH_PLUS, fetch, sink)?;
        self.accessed(s, dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{fixture, Fixture};
    use super::*;
    use crate::core::FsConfig;
    use cowstore::{Caller, FileKind};
    use std::collections::HashSet;

    const ROOT: Caller = Caller { uid: 0, gid: 0 };

    /// A reply buffer of `capacity` bytes, filled as fuser fills the kernel's: each entry a
    /// header, its name, padding to 8 bytes; `plus` adds the `fuse_entry_out`.
    struct Reply<T> {
        capacity: usize,
        used: usize,
        plus: bool,
        got: Vec<T>,
    }

    impl<T> Reply<T> {
        fn new(capacity: usize, plus: bool) -> Reply<T> {
            Reply {
                capacity,
                used: 0,
                plus,
                got: Vec::new(),
            }
        }

        fn take(&mut self, name_len: usize) -> bool {
            let header = DIRENT_HEADER + if self.plus { ENTRY_OUT } else { 0 };
            let size = (header + name_len).next_multiple_of(8);
            if self.used + size > self.capacity {
                return false;
            }
            self.used += size;
            true
        }
    }

    impl DirSink<DirEntry> for Reply<DirEntry> {
        fn add(&mut self, e: &DirEntry) -> bool {
            self.take(e.name.len()) && {
                self.got.push(e.clone());
                true
            }
        }
    }

    impl DirSink<(DirEntry, InodeAttr)> for Reply<(DirEntry, InodeAttr)> {
        fn add(&mut self, e: &(DirEntry, InodeAttr)) -> bool {
            self.take(e.0.name.len()) && {
                self.got.push(e.clone());
                true
            }
        }
    }

    fn entry(cookie: u64) -> DirEntry {
        DirEntry {
            name: format!("e{cookie}").into_bytes(),
            ino: InodeNo(cookie + 100),
            kind: FileKind::Regular,
            cookie,
        }
    }

    #[test]
    fn the_first_batch_is_what_one_page_holds_of_the_smallest_entries() {
        let mut r: Reply<DirEntry> = Reply::new(MIN_REPLY, false);
        let one = |c| DirEntry {
            name: b"x".to_vec(),
            ..entry(c)
        };
        let fitted = (1..=FIRST_BATCH as u64)
            .take_while(|c| r.add(&one(*c)))
            .count();
        assert_eq!(fitted, FIRST_BATCH - 1);
        let mut r: Reply<DirEntry> = Reply::new(MIN_REPLY, true);
        let fitted = (1..=FIRST_BATCH_PLUS as u64)
            .take_while(|c| r.take(one(*c).name.len()))
            .count();
        assert_eq!(fitted, FIRST_BATCH_PLUS - 1);
        assert_eq!((FIRST_BATCH, FIRST_BATCH_PLUS), (129, 26));
    }

    #[test]
    fn fill_doubles_its_batches_until_the_reply_is_full_and_resumes_after_the_last_entry() {
        let all: Vec<DirEntry> = (1..=5000).map(entry).collect();
        let asked = std::cell::RefCell::new(Vec::new());
        let fetch = |after: u64, n: usize| {
            asked.borrow_mut().push((after, n));
            Ok(all
                .iter()
                .filter(|e| e.cookie > after)
                .take(n)
                .cloned()
                .collect::<Vec<_>>())
        };
        let mut r = Reply::new(32 * 1024, false);
        fill(0, FIRST_BATCH, &fetch, &mut r).expect("fill");
        // 32 KiB holds 1024 of these 32-byte entries.
        assert_eq!(r.got.len(), 1024);
        assert_eq!(
            *asked.borrow(),
            vec![(0, 129), (129, 258), (387, 516), (903, 1024)]
        );
        // The next request resumes after the last entry the reply took.
        asked.borrow_mut().clear();
        let mut r2 = Reply::new(4096, false);
        fill(1024, FIRST_BATCH, &fetch, &mut r2).expect("fill");
        assert_eq!(r2.got.first().map(|e| e.cookie), Some(1025));
        assert_eq!(
            *asked.borrow(),
            vec![(1024, 129)],
            "one page: one store call"
        );
        // At the end of the stream a short batch stops; then an empty one ends it.
        asked.borrow_mut().clear();
        let mut r3 = Reply::new(1 << 20, false);
        fill(4990, FIRST_BATCH, &fetch, &mut r3).expect("fill");
        assert_eq!(r3.got.len(), 10);
        assert_eq!(*asked.borrow(), vec![(4990, 129)]);
        let mut r4 = Reply::new(4096, false);
        fill(5000, FIRST_BATCH, &fetch, &mut r4).expect("fill");
        assert!(r4.got.is_empty());
    }

    #[test]
    fn fill_passes_store_errors_up() {
        let mut r = Reply::new(4096, false);
        let e = fill(
            0,
            FIRST_BATCH,
            |_, _| Err::<Vec<DirEntry>, _>(cowstore::Error::NotDir.into()),
            &mut r,
        );
        assert!(matches!(e, Err(FsError::Store(cowstore::Error::NotDir))));
    }

    #[test]
    fn a_stream_ends_where_it_began_until_rewound() {
        let d = DirStreams::default();
        let fh = d.open(10);
        let never = || -> Result<u64, ()> { panic!("a continuation must not re-read the end") };
        assert_eq!(d.end(fh, 5, never), Ok(10));
        assert_eq!(d.end(fh, 0, || Ok::<_, ()>(20)), Ok(20), "rewind");
        assert_eq!(d.end(fh, 5, never), Ok(20));
        assert_eq!(d.end(999, 5, never), Ok(u64::MAX), "unknown handle");
        d.close(fh);
        assert_eq!(d.end(fh, 5, never), Ok(u64::MAX));
        assert_ne!(d.open(1), fh, "handles are not reused");
    }

    type Listing = Vec<(DirEntry, Option<InodeAttr>)>;

    /// One 4 KiB request of stream `fh` of `dir` at `offset`, as the kernel sends it.
    fn request(f: &Fixture, dir: InodeNo, fh: u64, offset: u64, plus: bool) -> Listing {
        if plus {
            let mut r = Reply::new(4096, true);
            f.core
                .readdirplus(dir, fh, offset, &mut r)
                .expect("readdirplus");
            r.got.into_iter().map(|(e, a)| (e, Some(a))).collect()
        } else {
            let mut r = Reply::new(4096, false);
            f.core.readdir(dir, fh, offset, &mut r).expect("readdir");
            r.got.into_iter().map(|e| (e, None)).collect()
        }
    }

    /// The requests of stream `fh` from `offset` until the empty reply that ends it.
    fn to_the_end(f: &Fixture, dir: InodeNo, fh: u64, mut offset: u64, plus: bool) -> Listing {
        let mut out = Listing::new();
        loop {
            let page = request(f, dir, fh, offset, plus);
            let Some(last) = page.last() else {
                return out;
            };
            offset = last.0.cookie;
            out.extend(page);
            assert!(out.len() < 10_000, "the stream does not end");
        }
    }

    fn names(v: &Listing) -> Vec<Vec<u8>> {
        v.iter().map(|(e, _)| e.name.clone()).collect()
    }

    #[test]
    fn a_stream_never_returns_entries_created_or_renamed_in_after_opendir() {
        let f = fixture(FsConfig::default());
        let mkdir = |parent, name: &[u8]| f.core.mkdir(parent, name, 0o755, 0, ROOT);
        let mknod = |parent, name: &[u8]| f.core.mknod(parent, name, libc::S_IFREG, 0, 0, ROOT);
        let d = mkdir(InodeNo::ROOT, b"d").expect("mkdir").ino;
        let other = mkdir(InodeNo::ROOT, b"o").expect("mkdir").ino;
        for i in 0..600 {
            mknod(d, format!("file-with-a-longer-name-{i:04}").as_bytes()).expect("mknod");
        }
        for plus in [false, true] {
            let (late, moved) = (format!("late-{plus}"), format!("moved-{plus}"));
            mknod(other, moved.as_bytes()).expect("mknod");
            let fh = f.core.opendir(d).expect("opendir").fh;
            let first = request(&f, d, fh, 0, plus);
            let resume = first.last().map(|(e, _)| e.cookie).expect("a first page");
            mknod(d, late.as_bytes()).expect("create during the pass");
            f.core
                .rename(other, moved.as_bytes(), d, moved.as_bytes(), 0, ROOT)
                .expect("rename in during the pass");
            let mut pass = names(&first);
            pass.extend(names(&to_the_end(&f, d, fh, resume, plus)));
            assert!(!pass.contains(&late.clone().into_bytes()), "plus {plus}");
            assert!(!pass.contains(&moved.clone().into_bytes()), "plus {plus}");
            let distinct: HashSet<_> = pass.iter().collect();
            assert_eq!(distinct.len(), pass.len(), "each entry once");
            assert!(pass.len() >= 602, "{} entries", pass.len());
            // A rewind (offset 0) starts a pass that sees the directory as it is now.
            let again = names(&to_the_end(&f, d, fh, 0, plus));
            assert!(again.contains(&late.into_bytes()));
            assert!(again.contains(&moved.into_bytes()));
            f.core.releasedir(d, fh).expect("releasedir");
        }
    }

    #[test]
    fn readdirplus_lists_what_readdir_lists_with_each_entrys_attributes() {
        let f = fixture(FsConfig::default());
        let d = f
            .core
            .mkdir(InodeNo::ROOT, b"d", 0o755, 0, ROOT)
            .expect("mkdir")
            .ino;
        for i in 0..300 {
            let name = format!("{i}");
            if i % 3 == 0 {
                f.core
                    .mkdir(d, name.as_bytes(), 0o700, 0, ROOT)
                    .expect("mkdir");
            } else {
                f.core
                    .mknod(d, name.as_bytes(), libc::S_IFREG | 0o640, 0, 0, ROOT)
                    .expect("mknod");
            }
        }
        let fh = f.core.opendir(d).expect("opendir").fh;
        let plain = to_the_end(&f, d, fh, 0, false);
        let plus = to_the_end(&f, d, fh, 0, true);
        assert_eq!(plain.len(), 302);
        let plain_names: Vec<_> = plain.iter().map(|(e, _)| e.clone()).collect();
        let plus_names: Vec<_> = plus.iter().map(|(e, _)| e.clone()).collect();
        assert_eq!(plus_names, plain_names);
        for (e, a) in &plus {
            let a = a.as_ref().expect("attributes");
            assert_eq!(a.ino, e.ino, "{:?}", e.name);
            assert_eq!(a.kind, e.kind);
            let stat = f.core.getattr(e.ino).expect("getattr");
            assert_eq!(
                (a.perm, a.nlink, a.size),
                (stat.perm, stat.nlink, stat.size)
            );
        }
        f.core.releasedir(d, fh).expect("releasedir");
    }
}
