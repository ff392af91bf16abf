//! Old stores keep opening: stores written by the release before the metadata seam (commit
//! ef8a0d8, format version 1, ExtentRecord v2) are kept in `tests/fixtures/format-v1` and must
//! open, read back exactly and check clean with this code. Keep them, and add one per later
//! format version.
//!
//! `plain` holds a directory, a file with an xattr and a second hard link, a file with a hole
//! and a reflinked copy that diverged in one block, a symlink and a small file. `overlay` is a
//! store over a lower directory (recorded as `/tmp/fixture-v1/lower`) with one copied-up file.
//! They were made by a throwaway program against that release; its steps are mirrored below.

use cowstore::*;
use std::path::{Path, PathBuf};

const BS: u64 = 4096;

fn pat(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A private copy of a format 1 fixture store (opening tightens modes and writes).
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    copy_fixture_of("format-v1", name)
}

/// A private copy of fixture store `set/name`.
fn copy_fixture_of(set: &str, name: &str) -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(set)
        .join(name);
    let tmp = tempfile::tempdir().expect("tmp");
    let dst = tmp.path().join(name);
    std::fs::create_dir(&dst).expect("mkdir");
    for f in ["superblock", "meta.redb", "pool"] {
        std::fs::copy(src.join(f), dst.join(f)).expect("copy fixture");
    }
    (tmp, dst)
}

fn path(s: &Store, p: &str) -> Result<InodeNo> {
    let mut ino = InodeNo::ROOT;
    for part in p.split('/') {
        ino = s.lookup(ino, part.as_bytes())?.ino;
    }
    Ok(ino)
}

fn content(s: &Store, p: &str) -> Result<Vec<u8>> {
    let ino = path(s, p)?;
    let size = s.getattr(ino)?.size;
    s.read_to_vec(ino, 0, size)
}

fn verify_plain(s: &Store) -> Result<()> {
    assert_eq!(content(s, "dir/a")?, pat(1, 3 * BS as usize + 123));
    let mut big = pat(2, 40 * BS as usize);
    big.resize(100 * BS as usize, 0);
    big.extend(pat(3, BS as usize));
    assert_eq!(content(s, "big")?, big);
    let mut copy = big.clone();
    copy[5 * BS as usize..5 * BS as usize + 100].copy_from_slice(&pat(4, 100));
    assert_eq!(content(s, "big.copy")?, copy);
    let a = path(s, "dir/a")?;
    assert_eq!(path(s, "a.link")?, a, "a hard link names the same inode");
    assert_eq!(s.getattr(a)?.nlink, 2);
    assert_eq!(s.getattr(a)?.perm, 0o640);
    assert_eq!(s.readlink(path(s, "dir/sym")?)?, b"../big");
    assert_eq!(s.getxattr(a, b"user.note")?, b"fixture v1");
    assert_eq!(s.getxattr(path(s, "dir")?, b"user.dir")?, pat(5, 300));
    assert_eq!(content(s, "small")?, b"hello, format 1\n");
    let u = s.usage(&[path(s, "big.copy")?])?;
    assert!(u.shared > 0, "the reflink still shares its blocks: {u:?}");
    Ok(())
}

#[test]
fn a_format_1_store_opens_reads_back_and_checks_clean() -> Result<()> {
    let (_tmp, dir) = copy_fixture("plain");
    let opts = OpenOptions {
        commit_interval: None,
        ..Default::default()
    };
    {
        let s = Store::open(
            &dir,
            &OpenOptions {
                read_only: true,
                ..opts.clone()
            },
        )?;
        verify_plain(&s)?;
        let report = s.check()?;
        assert!(report.is_clean(), "{:#?}", report.problems);
    }
    // Written by this code, it still reads the same.
    let s = Store::open(&dir, &opts)?;
    let f = s.create_open(InodeNo::ROOT, b"new", 0o644, Caller { uid: 0, gid: 0 })?;
    s.write(f.ino, 0, b"written by the new code")?;
    s.close()?;
    let s = Store::open(&dir, &opts)?;
    verify_plain(&s)?;
    assert_eq!(content(&s, "new")?, b"written by the new code");
    let report = s.check()?;
    assert!(report.is_clean(), "{:#?}", report.problems);
    Ok(())
}

#[test]
fn a_format_1_overlay_store_names_its_recorded_lower_directory() {
    // The lower directory it recorded is gone here (and a stand-in has another inode): the
    // store refuses to guess, and says which directory it wants.
    let (tmp, dir) = copy_fixture("overlay");
    let stand_in = tmp.path().join("lower");
    std::fs::create_dir(&stand_in).expect("mkdir");
    let r = Store::open(
        &dir,
        &OpenOptions {
            lower: Some(stand_in),
            ..Default::default()
        },
    );
    match r {
        Err(Error::LowerMismatch { recorded, .. }) => {
            assert_eq!(recorded, Path::new("/tmp/fixture-v1/lower"))
        }
        other => panic!("expected LowerMismatch, got {other:?}"),
    }
}

/// The store of `images-v2/crashed`: made by `write_images_fixture` below, left open (never
/// closed) after commits that carried their blocks in block images (state record version 2),
/// with every pool byte lost since mkfs, as a power cut may leave it.
fn verify_crashed(s: &Store) -> Result<()> {
    assert_eq!(content(s, "db")?, {
        let mut v = pat(7, 3 * BS as usize);
        v[BS as usize + 10..BS as usize + 20].copy_from_slice(&pat(8, 10));
        v
    });
    assert_eq!(content(s, "dir/small")?, b"carried by the commit\n");
    Ok(())
}

#[test]
fn a_store_left_with_block_images_opens_writes_them_back_and_checks_clean() -> Result<()> {
    let (_tmp, dir) = copy_fixture_of("images-v2", "crashed");
    let opts = OpenOptions {
        commit_interval: None,
        ..Default::default()
    };
    {
        let ro = OpenOptions {
            read_only: true,
            ..opts.clone()
        };
        let s = Store::open(&dir, &ro)?;
        verify_crashed(&s)?;
        let report = s.check()?;
        assert!(report.is_clean(), "{:#?}", report.problems);
    }
    let s = Store::open(&dir, &opts)?;
    verify_crashed(&s)?;
    s.close()?;
    let s = Store::open(&dir, &opts)?;
    verify_crashed(&s)?;
    assert!(s.check()?.is_clean());
    Ok(())
}

/// Writes `images-v2/crashed` into `$COWFS_WRITE_FIXTURE` (run with `--ignored`).
#[test]
#[ignore = "writes the fixture; run by hand"]
fn write_images_fixture() -> Result<()> {
    let Some(out) = std::env::var_os("COWFS_WRITE_FIXTURE") else {
        return Ok(());
    };
    let dir = Path::new(&out).join("crashed");
    Store::mkfs(&dir, &MkfsOptions::default())?;
    let s = Store::open(
        &dir,
        &OpenOptions {
            commit_interval: None,
            ..Default::default()
        },
    )?;
    let me = Caller { uid: 0, gid: 0 };
    let db = s.create_open(InodeNo::ROOT, b"db", 0o644, me)?.ino;
    s.write(db, 0, &pat(7, 3 * BS as usize))?;
    s.commit()?;
    s.write(db, BS + 10, &pat(8, 10))?;
    let d = s.mkdir(InodeNo::ROOT, b"dir", 0o755, me)?.ino;
    let small = s.create_open(d, b"small", 0o644, me)?.ino;
    s.write(small, 0, b"carried by the commit\n")?;
    s.commit()?;
    assert!(s.stats()?.generation > 1);
    std::mem::forget(s);
    // The power cut: the pool never reached the disk.
    std::fs::write(dir.join("pool"), b"")?;
    for f in ["lock", "reserve", "cowfs.log"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    Ok(())
}
