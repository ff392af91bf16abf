//! Bad input: random bytes into every decoder, and a sweep of single-byte flips and truncations
//! of each metadata file of a real store. Nothing may panic or hang; a read-only open and check
//! must never write; damage is either reported or provably harmless (the store checks clean).

use cowstore::*;
use proptest::prelude::*;
use std::path::Path;
use std::time::{Duration, Instant};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        // Random bytes essentially never carry a valid CRC-32C; the point is that decoding returns.
        let accepted = cowstore::testing::decode_everything(&bytes);
        prop_assert!(accepted <= 8);
    }
}

const ME: Caller = Caller { uid: 0, gid: 0 };

/// A store with directories, files, a reflink, a hard link, xattrs and a symlink.
fn build_store(dir: &Path) {
    Store::mkfs(dir, &MkfsOptions::default()).expect("mkfs");
    let s = Store::open(
        dir,
        &OpenOptions {
            commit_interval: None,
            ..Default::default()
        },
    )
    .expect("open");
    let reg = NewInode::regular(0o644);
    let d = s
        .mkdir(InodeNo::ROOT, b"dir", 0o755, ME)
        .expect("mkdir")
        .ino;
    for i in 0..40u32 {
        let f = s
            .create(d, format!("f{i}").as_bytes(), &reg, ME)
            .expect("create")
            .ino;
        s.write(f, 0, &vec![i as u8; 3000 + i as usize * 500])
            .expect("write");
        s.setxattr(f, b"user.i", &i.to_le_bytes(), 0)
            .expect("xattr");
    }
    let big = s.create(InodeNo::ROOT, b"big", &reg, ME).expect("big").ino;
    s.write(big, 0, &vec![0xAB; 300_000]).expect("write big");
    let copy = s
        .create(InodeNo::ROOT, b"copy", &reg, ME)
        .expect("copy")
        .ino;
    s.clone_range(big, 0, copy, 0, u64::MAX).expect("clone");
    s.write(copy, 70_000, b"different").expect("cow");
    s.link(big, d, b"hardlink").expect("link");
    s.symlink(InodeNo::ROOT, b"ln", b"dir/f1", ME)
        .expect("symlink");
    s.close().expect("close");
}

fn read_all(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "lock" && e.file_name() != "reserve")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    v.sort();
    v
}

#[derive(Debug, Default)]
struct Tally {
    refused_at_open: usize,
    reported_by_check: usize,
    harmless: usize,
    check_errors: usize,
}

/// Open read-only and check a damaged copy; panics (the test fails) if anything panics or writes.
fn probe(dir: &Path, tally: &mut Tally, what: &str) {
    let before = read_all(dir);
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(|| {
        match Store::open(
            dir,
            &OpenOptions {
                read_only: true,
                commit_interval: None,
                ..Default::default()
            },
        ) {
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.is_empty());
                0
            }
            Ok(s) => match s.check() {
                Ok(r) if r.is_clean() => 2,
                Ok(_) => 1,
                Err(_) => 3,
            },
        }
    });
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "{what}: took {elapsed:?}"
    );
    match outcome {
        Ok(0) => tally.refused_at_open += 1,
        Ok(1) => tally.reported_by_check += 1,
        Ok(2) => tally.harmless += 1,
        Ok(_) => tally.check_errors += 1,
        // redb deliberately panics on some impossible states in debug builds only
        // (StorageError::unreachable); release builds, which CI runs, return Corrupted.
        Err(_) if cfg!(debug_assertions) => tally.check_errors += 1,
        Err(_) => panic!("{what}: a read-only open or check panicked"),
    }
    assert_eq!(
        before,
        read_all(dir),
        "{what}: a read-only open/check wrote to the store"
    );
}

fn copy_store(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for (name, bytes) in read_all(from) {
        std::fs::write(to.join(name), bytes).expect("write copy");
    }
}

#[test]
fn corruption_sweep_of_every_metadata_file() {
    let base = tempfile::tempdir().expect("tempdir");
    let pristine = base.path().join("pristine");
    build_store(&pristine);
    let mut tally = Tally::default();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for file in ["superblock", META_FILE] {
        let len = std::fs::metadata(pristine.join(file)).expect("meta").len() as usize;
        // Single-byte flips: every byte of the superblock, ~250 spread over the B-tree file.
        let offsets: Vec<usize> = if file == "superblock" {
            (0..len).collect()
        } else {
            (0..250).map(|_| (next() as usize) % len).collect()
        };
        for off in offsets {
            let dir = base.path().join(format!("flip-{file}-{off}"));
            copy_store(&pristine, &dir);
            let path = dir.join(file);
            let mut bytes = std::fs::read(&path).expect("read");
            bytes[off] ^= 1 << (next() % 8);
            std::fs::write(&path, &bytes).expect("write");
            probe(&dir, &mut tally, &format!("{file} flip at {off}"));
            std::fs::remove_dir_all(&dir).expect("cleanup");
        }
        // Truncations.
        for cut in [0, 1, len / 7, len / 3, len / 2, len - 1] {
            let dir = base.path().join(format!("cut-{file}-{cut}"));
            copy_store(&pristine, &dir);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join(file))
                .expect("open");
            f.set_len(cut as u64).expect("truncate");
            probe(&dir, &mut tally, &format!("{file} truncated to {cut}"));
            std::fs::remove_dir_all(&dir).expect("cleanup");
        }
    }
    eprintln!("corruption sweep: {tally:?}");
    assert!(tally.refused_at_open > 0, "{tally:?}");
}

#[test]
fn damaged_superblock_is_refused_naming_file_and_offset() {
    let base = tempfile::tempdir().expect("tempdir");
    build_store(base.path());
    let path = base.path().join("superblock");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[13] ^= 0xFF; // block size field
    std::fs::write(&path, &bytes).expect("write");
    let err = Store::open(base.path(), &OpenOptions::default()).expect_err("must refuse");
    let msg = err.to_string();
    assert!(
        msg.contains("superblock") && msg.contains("offset"),
        "{msg}"
    );
}

#[test]
fn missing_store_files_are_clear_errors() {
    let base = tempfile::tempdir().expect("tempdir");
    let err = Store::open(base.path(), &OpenOptions::default()).expect_err("empty dir");
    assert!(err.to_string().contains("not a cowfs store"), "{err}");
    let err =
        Store::open(base.path().join("nope"), &OpenOptions::default()).expect_err("missing dir");
    assert!(err.to_string().contains("no such directory"), "{err}");
    build_store(&base.path().join("s"));
    std::fs::remove_file(base.path().join("s").join(POOL_FILE)).expect("rm pool");
    let err = Store::open(base.path().join("s"), &OpenOptions::default()).expect_err("no pool");
    assert!(err.to_string().contains("pool is missing"), "{err}");
}
