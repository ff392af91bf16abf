//! Dedupe (issue 13): identical blocks end up shared, no byte of any file ever changes (also
//! under concurrent writes), later writes to one file leave the others intact, and `check()`
//! stays clean. Every test runs on both metadata engines.

#[macro_use]
mod engines;

use cowstore::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::Arc;

const BS: u64 = 4096;

fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    Store::mkfs(dir.path(), &engines::mkfs_opts(BS as u32)).expect("mkfs");
    let store = Store::open(
        dir.path(),
        &OpenOptions {
            commit_interval: None,
            ..Default::default()
        },
    )
    .expect("open");
    (dir, store)
}

/// One block of pattern `p` (never all zeros): distinct patterns differ in every block.
fn block(p: u8) -> Vec<u8> {
    (0..BS)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(p.wrapping_mul(97)) ^ p)
        .map(|b| b.max(1))
        .collect()
}

fn file(s: &Store, name: &str) -> Result<InodeNo> {
    Ok(s.create(
        InodeNo::ROOT,
        name.as_bytes(),
        &NewInode::regular(0o644),
        Caller::ROOT,
    )?
    .ino)
}

fn content(s: &Store, ino: InodeNo) -> Result<Vec<u8>> {
    let size = s.getattr(ino)?.size;
    s.read_to_vec(ino, 0, size)
}

fn dedupe_all(s: &Store, files: &[InodeNo]) -> Result<DedupeStats> {
    let mut index = DedupeIndex::default();
    let mut total = DedupeStats::default();
    for &f in files {
        total += s.dedupe_file(&mut index, f, true, &Caller::ROOT)?;
    }
    Ok(total)
}

fn assert_clean(s: &Store) -> Result<()> {
    s.commit()?;
    let r = s.check()?;
    assert!(r.is_clean(), "{:#?}", r.problems);
    Ok(())
}

fn identical_files_share_every_block() -> Result<()> {
    let (_d, s) = fresh();
    let (a, b) = (file(&s, "a")?, file(&s, "b")?);
    let mut data: Vec<u8> = (0..64u8).flat_map(block).collect();
    data.extend_from_slice(b"a partial last block");
    s.write(a, 0, &data)?;
    s.write(b, 0, &data)?;
    s.commit()?;
    let before = s.stats()?;
    let st = dedupe_all(&s, &[a, b])?;
    let blocks = (data.len() as u64).div_ceil(BS);
    assert_eq!(st.examined, 2 * blocks * BS);
    assert_eq!(st.deduped, blocks * BS);
    assert_eq!(st.freed, blocks * BS, "b's own blocks were all given back");
    let after = s.stats()?;
    assert_eq!(
        before.referenced_bytes - after.referenced_bytes,
        st.freed,
        "the reported bytes are what the store's accounting freed"
    );
    let ext = s.extents(b)?;
    assert!(ext.iter().all(|e| e.refcount == 2), "{ext:?}");
    assert_eq!(
        ext.len(),
        1,
        "one long shared extent, not one per block: {ext:?}"
    );
    assert_eq!(s.extents(a)?, ext);
    assert_eq!(content(&s, a)?, data);
    assert_eq!(content(&s, b)?, data);
    // Again: everything is shared already, nothing more to do.
    let again = dedupe_all(&s, &[a, b])?;
    assert_eq!((again.deduped, again.freed), (0, 0));
    s.write(b, 3 * BS + 7, b"changed")?;
    assert_eq!(content(&s, a)?, data, "a write to b leaves a intact");
    let mut expect = data.clone();
    expect[(3 * BS + 7) as usize..(3 * BS + 14) as usize].copy_from_slice(b"changed");
    assert_eq!(content(&s, b)?, expect);
    assert_clean(&s)
}

fn partially_identical_files_share_only_identical_blocks() -> Result<()> {
    let (_d, s) = fresh();
    let (a, b) = (file(&s, "a")?, file(&s, "b")?);
    let da: Vec<u8> = (0..16u8).flat_map(block).collect();
    let db: Vec<u8> = (0..16u8)
        .map(|i| if (8..12).contains(&i) { i + 100 } else { i })
        .flat_map(block)
        .collect();
    s.write(a, 0, &da)?;
    s.write(b, 0, &db)?;
    let st = dedupe_all(&s, &[a, b])?;
    assert_eq!(st.deduped, 12 * BS);
    assert_eq!(st.freed, 12 * BS);
    let shared: u64 = s
        .extents(b)?
        .iter()
        .filter(|e| e.refcount == 2)
        .map(|e| e.len)
        .sum();
    assert_eq!(shared, 12 * BS);
    assert_eq!(content(&s, a)?, da);
    assert_eq!(content(&s, b)?, db);
    assert_clean(&s)
}

fn holes_are_skipped_and_repeats_within_a_file_are_shared() -> Result<()> {
    let (_d, s) = fresh();
    let a = file(&s, "a")?;
    // Blocks 0 and 5 alike, a hole at 2..4.
    s.write(a, 0, &block(1))?;
    s.write(a, BS, &block(2))?;
    s.write(a, 4 * BS, &block(3))?;
    s.write(a, 5 * BS, &block(1))?;
    let before = content(&s, a)?;
    let st = dedupe_all(&s, &[a])?;
    assert_eq!(st.examined, 4 * BS, "holes are not read");
    assert_eq!(st.deduped, BS);
    assert_eq!(content(&s, a)?, before);
    assert_eq!(
        s.seek(a, 2 * BS, SeekWhence::Data)?,
        4 * BS,
        "holes stay holes"
    );
    assert_clean(&s)
}

fn replacing_needs_write_permission_or_ownership() -> Result<()> {
    let (_d, s) = fresh();
    let (a, b) = (file(&s, "a")?, file(&s, "b")?);
    let data: Vec<u8> = (0..4u8).flat_map(block).collect();
    s.write(a, 0, &data)?;
    s.write(b, 0, &data)?;
    let nobody = Caller {
        uid: 65534,
        gid: 65534,
    };
    let mut index = DedupeIndex::default();
    s.dedupe_file(&mut index, a, false, &nobody)?;
    let r = s.dedupe_file(&mut index, b, true, &nobody);
    assert!(matches!(r, Err(Error::Denied)), "{r:?}");
    assert!(s.extents(b)?.iter().all(|e| e.refcount == 1));
    // An immutable file's blocks are not replaced either, not even by root.
    s.set_flags(b, InodeFlags::IMMUTABLE, Caller::ROOT)?;
    let r = s.dedupe_file(&mut index, b, true, &Caller::ROOT);
    assert!(matches!(r, Err(Error::NotPermitted)), "{r:?}");
    s.set_flags(b, InodeFlags::NONE, Caller::ROOT)?;
    // The owner may, without write permission.
    s.setattr(
        b,
        &SetAttr {
            uid: Some(65534),
            mode: Some(0o444),
            ..Default::default()
        },
    )?;
    let st = s.dedupe_file(&mut index, b, true, &nobody)?;
    assert_eq!(st.deduped, 4 * BS);
    assert_eq!(content(&s, b)?, data);
    assert_clean(&s)
}

fn a_full_index_stops_remembering_blocks() -> Result<()> {
    let (_d, s) = fresh();
    let (a, b) = (file(&s, "a")?, file(&s, "b")?);
    let data: Vec<u8> = (0..4u8).flat_map(block).collect();
    s.write(a, 0, &data)?;
    s.write(b, 0, &data)?;
    let mut index = DedupeIndex::with_limit(2);
    s.dedupe_file(&mut index, a, true, &Caller::ROOT)?;
    assert_eq!(index.len(), 2);
    let st = s.dedupe_file(&mut index, b, true, &Caller::ROOT)?;
    assert_eq!(st.deduped, 2 * BS, "only remembered blocks are candidates");
    assert_clean(&s)
}

/// A file of the property test: per block, a pattern, or None for a hole; and a tail.
type Spec = (Vec<Option<u8>>, u16);

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::collection::vec(prop::option::weighted(0.85, 0u8..5), 0..20),
        0u16..(BS as u16),
    )
}

fn run_model(files: &[Spec], writes: &[(u8, u16, u16, u8)], commit_first: bool) -> Result<()> {
    let (_d, s) = fresh();
    let mut model: Vec<Vec<u8>> = Vec::new();
    let mut inos = Vec::new();
    for (i, (blocks, tail)) in files.iter().enumerate() {
        let ino = file(&s, &format!("f{i}"))?;
        let mut m = Vec::new();
        for (k, b) in blocks.iter().enumerate() {
            let bytes = match b {
                Some(p) => block(*p),
                None => vec![0; BS as usize],
            };
            if b.is_some() {
                s.write(ino, k as u64 * BS, &bytes)?;
            }
            m.extend(bytes);
        }
        if *tail > 0 && !blocks.is_empty() {
            // A short last block with the pattern of the first.
            let t: Vec<u8> = m[..*tail as usize].to_vec();
            s.write(ino, m.len() as u64, &t)?;
            m.extend(t);
        }
        let size = s.getattr(ino)?.size;
        m.truncate(size as usize);
        inos.push(ino);
        model.push(m);
    }
    if commit_first {
        s.commit()?;
    }
    let before = s.stats()?;
    let st = dedupe_all(&s, &inos)?;
    let after = s.stats()?;
    assert_eq!(before.referenced_bytes - after.referenced_bytes, st.freed);
    for (ino, m) in inos.iter().zip(&model) {
        assert_eq!(&content(&s, *ino)?, m, "dedupe changed a byte");
    }
    s.commit()?;
    let r = s.check()?;
    assert!(r.is_clean(), "{:#?}", r.problems);
    for &(f, off, len, byte) in writes {
        let i = f as usize % inos.len();
        let off = u64::from(off) % (30 * BS);
        let len = u64::from(len) % (2 * BS) + 1;
        s.write(inos[i], off, &vec![byte; len as usize])?;
        let m = &mut model[i];
        let end = (off + len) as usize;
        if m.len() < end {
            m.resize(end, 0);
        }
        m[off as usize..end].fill(byte);
    }
    for (ino, m) in inos.iter().zip(&model) {
        assert_eq!(&content(&s, *ino)?, m, "a write reached another file");
    }
    assert_clean(&s)
}

fn random_files_dedupe_like_the_model() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(spec(), 1..5),
        prop::collection::vec(
            (any::<u8>(), any::<u16>(), any::<u16>(), any::<u8>()),
            0..12,
        ),
        any::<bool>(),
    );
    let r = runner.run(&strategy, |(files, writes, commit)| {
        run_model(&files, &writes, commit).map_err(|e| TestCaseError::fail(e.to_string()))
    });
    assert!(r.is_ok(), "{r:?}");
}

fn concurrent_writes_are_never_shared_wrongly() -> Result<()> {
    let (_d, s) = fresh();
    let s = Arc::new(s);
    const FILES: usize = 4;
    const BLOCKS: u64 = 64;
    let mut inos = Vec::new();
    for i in 0..FILES {
        let ino = file(&s, &format!("f{i}"))?;
        let data: Vec<u8> = (0..BLOCKS).flat_map(|k| block((k % 3) as u8)).collect();
        s.write(ino, 0, &data)?;
        inos.push(ino);
    }
    s.commit()?;
    let writer = {
        let (s, inos) = (s.clone(), inos.clone());
        std::thread::spawn(move || -> Result<Vec<Vec<u8>>> {
            let mut model: Vec<Vec<u8>> = inos
                .iter()
                .map(|_| (0..BLOCKS).flat_map(|k| block((k % 3) as u8)).collect())
                .collect();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for step in 0..3000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let f = (x % FILES as u64) as usize;
                let k = (x >> 8) % BLOCKS;
                // Mostly patterns others have (dedupe candidates), sometimes a partial write.
                let p = ((x >> 20) % 4) as u8;
                let bytes = block(p);
                if step % 5 == 0 {
                    let at = ((x >> 32) % BS) as usize;
                    s.write(inos[f], k * BS + at as u64, &bytes[at..])?;
                    model[f][(k * BS) as usize + at..((k + 1) * BS) as usize]
                        .copy_from_slice(&bytes[at..]);
                } else {
                    s.write(inos[f], k * BS, &bytes)?;
                    model[f][(k * BS) as usize..((k + 1) * BS) as usize].copy_from_slice(&bytes);
                }
                if step % 500 == 0 {
                    s.commit()?;
                }
            }
            Ok(model)
        })
    };
    let mut rounds = 0;
    let mut deduped = 0;
    while !writer.is_finished() || rounds < 2 {
        deduped += dedupe_all(&s, &inos)?.deduped;
        rounds += 1;
    }
    let model = writer
        .join()
        .map_err(|_| Error::Invalid("writer panicked"))??;
    assert!(deduped > 0, "dedupe never found anything to share");
    for (ino, m) in inos.iter().zip(&model) {
        assert_eq!(&content(&s, *ino)?, m, "a file lost a concurrent write");
    }
    dedupe_all(&s, &inos)?;
    for (ino, m) in inos.iter().zip(&model) {
        assert_eq!(&content(&s, *ino)?, m);
    }
    assert_clean(&s)
}

per_engine!(
    identical_files_share_every_block,
    partially_identical_files_share_only_identical_blocks,
    holes_are_skipped_and_repeats_within_a_file_are_shared,
    replacing_needs_write_permission_or_ownership,
    a_full_index_stops_remembering_blocks,
    random_files_dedupe_like_the_model,
    concurrent_writes_are_never_shared_wrongly,
);
