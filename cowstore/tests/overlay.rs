//! The overlay at the store level: a real lower directory is imported lazily, read through,
//! written with block-level copy-up, and never modified; names removed or renamed stay so across
//! reopens; a lower file that changes underneath is refused; symlinks are never followed out.

#[macro_use]
mod engines;

use cowfs_test_support::{hash, mknod, setxattr, write_pattern};
use cowstore::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const ME: Caller = Caller { uid: 0, gid: 0 };
const BIG: usize = 16 << 20;

fn opts(lower: Option<&Path>) -> OpenOptions {
    OpenOptions {
        commit_interval: None,
        lower: lower.map(Path::to_path_buf),
        ..Default::default()
    }
}

/// A lower tree with every kind of entry.
fn make_lower(root: &Path) {
    std::fs::create_dir_all(root.join("dir/sub")).expect("mkdir");
    write_pattern(&root.join("big"), 7, BIG as u64).expect("big");
    std::fs::write(root.join("small"), b"hello lower").expect("small");
    std::fs::write(root.join("dir/sub/deep"), b"deep file").expect("deep");
    std::fs::write(root.join("empty"), b"").expect("empty");
    std::fs::set_permissions(root.join("small"), std::fs::Permissions::from_mode(0o640))
        .expect("chmod");
    std::os::unix::fs::symlink("../../../etc/passwd", root.join("dir/escape")).expect("symlink");
    std::fs::hard_link(root.join("small"), root.join("dir/small-link")).expect("hardlink");
    setxattr(&root.join("small"), "user.color", b"blue", 0).expect("setxattr on the lower tree");
    mknod(&root.join("dir/fifo"), libc::S_IFIFO | 0o600, 0).expect("mkfifo");
}

/// Hash and stat of every entry, to prove the lower tree is never touched.
/// mode, inode, size, mtime, (atime, atime_nsec) and content hash of one entry.
type EntryState = (u32, u64, u64, i64, (i64, i64), u64);

/// The names in directory `d`, listed without updating its atime (O_NOATIME), so that taking a
/// snapshot does not itself change what it records.
fn names_noatime(d: &Path) -> Vec<std::ffi::OsString> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let c = std::ffi::CString::new(d.as_os_str().as_bytes()).expect("cstr");
    // SAFETY: `c` is NUL-terminated; the descriptor is handed to fdopendir, which owns it, and
    // closedir releases both; each dirent is read before the next readdir call.
    unsafe {
        let fd = libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOATIME,
        );
        assert!(fd >= 0, "open {}", d.display());
        let dir = libc::fdopendir(fd);
        assert!(!dir.is_null(), "fdopendir {}", d.display());
        let mut out = Vec::new();
        loop {
            let ent = libc::readdir(dir);
            if ent.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()).to_bytes();
            if name != b"." && name != b".." {
                out.push(std::ffi::OsString::from_vec(name.to_vec()));
            }
        }
        libc::closedir(dir);
        out
    }
}

/// The bytes of lower file `p`, read without updating its atime.
fn read_noatime(p: &Path) -> Vec<u8> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(p)
        .expect("open");
    let mut data = Vec::new();
    f.read_to_end(&mut data).expect("read");
    data
}

fn hash_noatime(p: &Path) -> u64 {
    hash(&read_noatime(p))
}

fn snapshot(root: &Path) -> BTreeMap<String, EntryState> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for name in names_noatime(&d) {
            let p = d.join(name);
            let md = std::fs::symlink_metadata(&p).expect("lstat");
            let content = if md.is_file() { hash_noatime(&p) } else { 0 };
            if md.is_dir() {
                stack.push(p.clone());
            }
            out.insert(
                p.strip_prefix(root).expect("prefix").display().to_string(),
                (
                    md.mode(),
                    md.ino(),
                    md.size(),
                    md.mtime(),
                    (md.atime(), md.atime_nsec()),
                    content,
                ),
            );
        }
    }
    out
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let t = tempfile::tempdir().expect("tmp");
    let lower = t.path().join("lower");
    let store = t.path().join("store");
    make_lower(&lower);
    Store::mkfs(&store, &engines::mkfs_opts(4096)).expect("mkfs");
    (t, lower, store)
}

fn overlay_presents_the_lower_tree() -> Result<()> {
    let (_t, lower, store) = setup();
    let before = snapshot(&lower);
    let s = Store::open(&store, &opts(Some(&lower)))?;
    let names: Vec<Vec<u8>> = s
        .readdir(InodeNo::ROOT, 0, 100)?
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        vec![
            b".".to_vec(),
            b"..".to_vec(),
            b"big".to_vec(),
            b"dir".to_vec(),
            b"empty".to_vec(),
            b"small".to_vec()
        ]
    );
    let small = s.lookup(InodeNo::ROOT, b"small")?;
    let md = std::fs::metadata(lower.join("small"))?;
    assert_eq!(
        (small.perm as u32, small.uid, small.size),
        (0o640, md.uid(), 11)
    );
    assert_eq!(small.mtime.sec, md.mtime());
    assert_eq!(s.read_to_vec(small.ino, 0, 100)?, b"hello lower");
    assert_eq!(s.getxattr(small.ino, b"user.color")?, b"blue");
    let dir = s.lookup(InodeNo::ROOT, b"dir")?;
    let link = s.lookup(dir.ino, b"small-link")?;
    assert_eq!(link.ino, small.ino, "hard links share one inode");
    assert_eq!(s.getattr(small.ino)?.nlink, 2);
    let esc = s.lookup(dir.ino, b"escape")?;
    assert_eq!(esc.kind, FileKind::Symlink);
    assert_eq!(
        s.readlink(esc.ino)?,
        b"../../../etc/passwd",
        "symlinks are presented, never resolved"
    );
    assert_eq!(s.lookup(dir.ino, b"fifo")?.kind, FileKind::Fifo);
    let sub = s.lookup(dir.ino, b"sub")?;
    assert_eq!(
        s.read_to_vec(s.lookup(sub.ino, b"deep")?.ino, 0, 100)?,
        b"deep file"
    );
    let big = s.lookup(InodeNo::ROOT, b"big")?;
    let want = read_noatime(&lower.join("big"));
    assert_eq!(s.read_to_vec(big.ino, 0, BIG as u64)?, want);
    assert_eq!(
        s.read_to_vec(s.lookup(InodeNo::ROOT, b"empty")?.ino, 0, 10)?,
        b""
    );
    // Reads of unmodified lower data name the lower file, not the pool.
    let segs = s.read(big.ino, 4096, 8192)?;
    assert!(
        matches!(
            segs[0],
            Segment::Lower {
                pos: 4096,
                len: 8192,
                ..
            }
        ),
        "{:?}",
        &segs[..]
    );
    drop(segs);
    // Nothing was copied at import.
    assert_eq!(s.stats()?.referenced_bytes, 0);
    s.commit()?;
    assert!(s.check()?.is_clean());
    s.close()?;
    assert_eq!(snapshot(&lower), before, "the lower tree was modified");
    Ok(())
}

fn writes_copy_up_only_the_blocks_written() -> Result<()> {
    let (_t, lower, store) = setup();
    let before = snapshot(&lower);
    let s = Store::open(&store, &opts(Some(&lower)))?;
    let big = s.lookup(InodeNo::ROOT, b"big")?.ino;
    s.write(big, 5 << 20, &[0xEE; 4096])?;
    s.write(big, 7 * 4096 + 100, b"unaligned")?;
    s.commit()?;
    let st = s.stats()?;
    assert!(
        st.referenced_bytes <= 3 * 4096,
        "a 4 KiB write into a 16 MiB lower file grew the store by {}",
        st.referenced_bytes
    );
    let mut want = read_noatime(&lower.join("big"));
    want[5 << 20..(5 << 20) + 4096].fill(0xEE);
    want[7 * 4096 + 100..7 * 4096 + 109].copy_from_slice(b"unaligned");
    assert_eq!(s.read_to_vec(big, 0, BIG as u64)?, want);
    // Truncate, punch and a reflink of a lower file work like any other file.
    let copy = s
        .create(InodeNo::ROOT, b"copy", &NewInode::regular(0o644), ME)?
        .ino;
    assert_eq!(s.clone_range(big, 0, copy, 0, u64::MAX)?, BIG as u64);
    assert!(
        s.stats()?.referenced_bytes <= 3 * 4096,
        "a clone of lower data copied it"
    );
    assert_eq!(s.read_to_vec(copy, 0, BIG as u64)?, want);
    s.fallocate(big, 4096, 4096, FallocMode::PunchHole)?;
    want[4096..8192].fill(0);
    s.setattr(
        big,
        &SetAttr {
            size: Some(10_000),
            ..Default::default()
        },
    )?;
    want.truncate(10_000);
    assert_eq!(s.read_to_vec(big, 0, BIG as u64)?, want);
    s.setattr(
        big,
        &SetAttr {
            size: Some(20_000),
            ..Default::default()
        },
    )?;
    want.resize(20_000, 0);
    assert_eq!(
        s.read_to_vec(big, 0, BIG as u64)?,
        want,
        "bytes past a truncate read as zeros"
    );
    s.commit()?;
    assert!(s.check()?.is_clean(), "{:#?}", s.check()?.problems);
    s.close()?;
    assert_eq!(snapshot(&lower), before, "the lower tree was modified");
    Ok(())
}

fn removals_and_renames_of_lower_entries_persist() -> Result<()> {
    let (_t, lower, store) = setup();
    {
        let s = Store::open(&store, &opts(Some(&lower)))?;
        s.unlink(InodeNo::ROOT, b"small")?;
        let dir = s.lookup(InodeNo::ROOT, b"dir")?.ino;
        s.rename(dir, b"sub", InodeNo::ROOT, b"moved", RenameFlags::default())?;
        s.rename(
            InodeNo::ROOT,
            b"big",
            InodeNo::ROOT,
            b"renamed",
            RenameFlags::default(),
        )?;
        s.close()?;
    }
    // Reopen without naming the lower directory: the store remembers it.
    let s = Store::open(&store, &opts(None))?;
    assert!(matches!(
        s.lookup(InodeNo::ROOT, b"small"),
        Err(Error::NotFound)
    ));
    assert!(matches!(
        s.lookup(InodeNo::ROOT, b"big"),
        Err(Error::NotFound)
    ));
    let moved = s.lookup(InodeNo::ROOT, b"moved")?;
    assert_eq!(
        s.read_to_vec(s.lookup(moved.ino, b"deep")?.ino, 0, 100)?,
        b"deep file"
    );
    let dir = s.lookup(InodeNo::ROOT, b"dir")?.ino;
    assert!(matches!(s.lookup(dir, b"sub"), Err(Error::NotFound)));
    // The hard link in dir survives the unlink of its other name.
    assert_eq!(
        s.read_to_vec(s.lookup(dir, b"small-link")?.ino, 0, 100)?,
        b"hello lower"
    );
    assert!(s.check()?.is_clean(), "{:#?}", s.check()?.problems);
    s.close()?;
    assert!(
        lower.join("small").exists() && lower.join("big").exists(),
        "the lower tree was modified"
    );
    // A different lower directory is refused.
    let other = tempfile::tempdir().expect("tmp");
    match Store::open(&store, &opts(Some(other.path()))) {
        Err(Error::LowerMismatch { .. }) => {}
        other => panic!("expected LowerMismatch, got {other:?}"),
    }
    Ok(())
}

fn a_changed_lower_file_is_refused_and_reported() -> Result<()> {
    let (_t, lower, store) = setup();
    let s = Store::open(&store, &opts(Some(&lower)))?;
    let small = s.lookup(InodeNo::ROOT, b"small")?.ino;
    s.close()?;
    std::fs::write(lower.join("small"), b"changed underneath, longer")?;
    let s = Store::open(&store, &opts(None))?;
    match s.read_to_vec(small, 0, 100) {
        Err(e) => assert_eq!(e.errno(), libc::EIO, "{e}"),
        Ok(v) => panic!("read mixed versions: {v:?}"),
    }
    let changes = s.lower_changes()?;
    assert!(changes.iter().any(|(_, p, _)| p == "small"), "{changes:?}");
    let report = s.check()?;
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::LowerChanged),
        "{:#?}",
        report.problems
    );
    Ok(())
}

fn lower_symlinked_directories_are_never_followed() -> Result<()> {
    let (_t, lower, store) = setup();
    let outside = tempfile::tempdir().expect("tmp");
    std::fs::write(outside.path().join("secret"), b"outside")?;
    std::os::unix::fs::symlink(outside.path(), lower.join("link-out"))?;
    let s = Store::open(&store, &opts(Some(&lower)))?;
    let l = s.lookup(InodeNo::ROOT, b"link-out")?;
    assert_eq!(
        l.kind,
        FileKind::Symlink,
        "a symlink to a directory is imported as a symlink"
    );
    assert!(s.lookup(l.ino, b"secret").is_err());
    Ok(())
}

/// Access time of `p` (not following a symlink), to the nanosecond.
fn atime(p: &Path) -> (i64, i64) {
    let md = std::fs::symlink_metadata(p).expect("lstat");
    (md.atime(), md.atime_nsec())
}

/// Regression: importing a lower directory listed it and read its symlinks through the ordinary
/// mount, so relatime updated the atime of every lower directory and symlink the store looked
/// into (O_NOATIME only covers the files read). As root the store now reaches the lower tree
/// through a private read-only, noatime clone of its mount.
fn importing_leaves_lower_directory_and_symlink_atimes_alone() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to make a private noatime view of the lower tree");
        return Ok(());
    }
    let (_t, lower, store) = setup();
    let watched = ["", "dir", "dir/sub", "dir/escape", "small", "big"].map(|p| lower.join(p));
    // Fresh entries have atime == mtime, so relatime would update each on its first access.
    let before: Vec<_> = watched.iter().map(|p| atime(p)).collect();
    let s = Store::open(&store, &opts(Some(&lower)))?;
    let dir = s.lookup(InodeNo::ROOT, b"dir")?;
    let sub = s.lookup(dir.ino, b"sub")?;
    s.readdir(sub.ino, 0, 100)?;
    s.readlink(s.lookup(dir.ino, b"escape")?.ino)?;
    let small = s.lookup(InodeNo::ROOT, b"small")?;
    assert_eq!(s.read_to_vec(small.ino, 0, 100)?, b"hello lower");
    s.close()?;
    let after: Vec<_> = watched.iter().map(|p| atime(p)).collect();
    assert_eq!(after, before, "atimes of {watched:?}");
    Ok(())
}

/// Regression: a lower file was verified only when first opened; once in the open-file cache,
/// rewriting it in place (same inode) had its new bytes served as the imported file's.
fn a_lower_file_rewritten_while_open_is_refused() -> Result<()> {
    let (_t, lower, store) = setup();
    let s = Store::open(&store, &opts(Some(&lower)))?;
    let small = s.lookup(InodeNo::ROOT, b"small")?.ino;
    assert_eq!(s.read_to_vec(small, 0, 100)?, b"hello lower");
    // Same inode and size, new bytes and mtime.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(lower.join("small"))?;
    std::os::unix::fs::FileExt::write_all_at(&f, b"HELLO", 0)?;
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))?;
    drop(f);
    match s.read_to_vec(small, 0, 100) {
        Err(e) => assert_eq!(e.errno(), libc::EIO, "{e}"),
        Ok(v) => panic!("read mixed versions: {:?}", String::from_utf8_lossy(&v)),
    }
    // Other lower files are still served.
    let deep = s.lookup(
        s.lookup(s.lookup(InodeNo::ROOT, b"dir")?.ino, b"sub")?.ino,
        b"deep",
    )?;
    assert_eq!(s.read_to_vec(deep.ino, 0, 100)?, b"deep file");
    Ok(())
}

/// A lower tree with one file under two names: `a` and `d/b`.
fn hard_linked_lower() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let t = tempfile::tempdir().expect("tmp");
    let lower = t.path().join("lower");
    let store = t.path().join("store");
    std::fs::create_dir_all(lower.join("d")).expect("mkdir");
    std::fs::write(lower.join("a"), b"linked lower file").expect("a");
    std::fs::hard_link(lower.join("a"), lower.join("d/b")).expect("link");
    Store::mkfs(&store, &engines::mkfs_opts(4096)).expect("mkfs");
    (t, lower, store)
}

fn an_open_unlinked_lower_hard_link_survives_importing_its_other_name() -> Result<()> {
    // Regression (issue 10, defect 4): a hard-linked lower file, open and unlinked under one
    // name, was deleted at the next mount: importing its second name raised nlink but left the
    // inode on the orphan list, which the next open reclaims.
    let (_t, lower, store) = hard_linked_lower();
    let s = Store::open(&store, &opts(Some(&lower)))?;
    let a = s.lookup(InodeNo::ROOT, b"a")?;
    // The link count counts the names imported so far: d is not imported yet.
    assert_eq!(a.nlink, 1);
    s.open_inode(a.ino)?;
    s.unlink(InodeNo::ROOT, b"a")?;
    assert_eq!(s.getattr(a.ino)?.nlink, 0);
    let d = s.lookup(InodeNo::ROOT, b"d")?.ino;
    let b = s.lookup(d, b"b")?;
    assert_eq!(b.ino, a.ino, "the second name is the same inode");
    assert_eq!(b.nlink, 1);
    s.commit()?;
    assert!(s.check()?.is_clean(), "{:#?}", s.check()?.problems);
    // The process stops with the file still open: the next open reclaims what is orphaned.
    s.close()?;
    let s = Store::open(&store, &opts(None))?;
    let b = s.lookup(s.lookup(InodeNo::ROOT, b"d")?.ino, b"b")?;
    assert_eq!(b.nlink, 1);
    assert_eq!(s.read_to_vec(b.ino, 0, 100)?, b"linked lower file");
    assert!(s.check()?.is_clean(), "{:#?}", s.check()?.problems);
    // And closing the last handle of a revived inode does not free it either.
    let s2 = s;
    s2.open_inode(b.ino)?;
    s2.release(b.ino)?;
    assert_eq!(s2.getattr(b.ino)?.nlink, 1);
    Ok(())
}

fn a_lower_hard_link_whose_inode_was_freed_imports_as_a_new_inode() -> Result<()> {
    // Regression (issue 10, defect 4): the second name of a lower hard link, imported after
    // the inode of the first was unlinked, closed and freed, must not resurrect a freed inode
    // number: it is imported afresh, with the lower file's bytes.
    let (_t, lower, store) = hard_linked_lower();
    let s = Store::open(&store, &opts(Some(&lower)))?;
    let a = s.lookup(InodeNo::ROOT, b"a")?.ino;
    s.open_inode(a)?;
    s.write(a, 0, b"LINKED")?;
    s.unlink(InodeNo::ROOT, b"a")?;
    s.release(a)?;
    assert!(matches!(s.getattr(a), Err(Error::NotFound)), "a is freed");
    let d = s.lookup(InodeNo::ROOT, b"d")?.ino;
    let b = s.lookup(d, b"b")?;
    assert_ne!(b.ino, a, "a freed inode number is not reused");
    assert_eq!(b.nlink, 1);
    assert_eq!(s.read_to_vec(b.ino, 0, 100)?, b"linked lower file");
    s.commit()?;
    assert!(s.check()?.is_clean(), "{:#?}", s.check()?.problems);
    Ok(())
}

fn lower_errors_keep_their_errno() -> Result<()> {
    // Regression (issue 10, defect 15): errors of the lower tree lost their errno (ENOENT,
    // ENOTDIR, EACCES all became EIO); and a failed import or read must leave everything else
    // as it was.
    let (_t, lower, store) = setup();
    std::fs::create_dir(lower.join("gone-dir"))?;
    std::fs::create_dir(lower.join("file-dir"))?;
    let s = Store::open(&store, &opts(Some(&lower)))?;
    let made = s
        .create(InodeNo::ROOT, b"made", &NewInode::regular(0o644), ME)?
        .ino;
    s.write(made, 0, b"mine")?;
    // Both still to be imported when they change below.
    let gone = s.lookup(InodeNo::ROOT, b"gone-dir")?.ino;
    let filed = s.lookup(InodeNo::ROOT, b"file-dir")?.ino;
    let small = s.lookup(InodeNo::ROOT, b"small")?.ino;
    std::fs::remove_dir(lower.join("gone-dir"))?;
    std::fs::remove_dir(lower.join("file-dir"))?;
    std::fs::write(lower.join("file-dir"), b"now a file")?;
    std::fs::remove_file(lower.join("small"))?;
    let errno = |r: Result<Vec<DirEntry>>| r.err().map(|e| e.errno());
    assert_eq!(errno(s.readdir(gone, 0, 10)), Some(libc::ENOENT));
    assert_eq!(errno(s.readdir(filed, 0, 10)), Some(libc::ENOTDIR));
    assert_eq!(
        s.read_to_vec(small, 0, 100).err().map(|e| e.errno()),
        Some(libc::ENOENT)
    );
    assert_eq!(s.read_to_vec(made, 0, 10)?, b"mine");
    s.commit()?;
    s.close()?;
    let s = Store::open(&store, &opts(None))?;
    let made = s.lookup(InodeNo::ROOT, b"made")?.ino;
    assert_eq!(s.read_to_vec(made, 0, 10)?, b"mine");
    Ok(())
}

fn a_lower_file_replaced_by_a_fifo_is_refused_without_blocking() -> Result<()> {
    // Regression (issue 10, defect 14): a regular lower file replaced by a FIFO was opened
    // (blocking until a writer came, with the store lock held); it must be refused with EIO
    // at once, like any lower file that changed.
    let (_t, lower, store) = setup();
    let s = Store::open(&store, &opts(Some(&lower)))?;
    let small = s.lookup(InodeNo::ROOT, b"small")?.ino;
    assert_eq!(s.read_to_vec(small, 0, 100)?, b"hello lower");
    s.close()?;
    std::fs::remove_file(lower.join("small"))?;
    let fifo = std::ffi::CString::new(lower.join("small").to_str().expect("utf8")).expect("cstr");
    // SAFETY: `fifo` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let s = std::sync::Arc::new(Store::open(&store, &opts(None))?);
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = s.clone();
    std::thread::spawn(move || {
        let _ = tx.send(reader.read_to_vec(small, 0, 100));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(Err(e)) => assert_eq!(e.errno(), libc::EIO, "{e}"),
        Ok(Ok(v)) => panic!("read a FIFO as the lower file: {v:?}"),
        Err(_) => {
            // Unblock the reader before failing, so the test process can exit.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(lower.join("small"));
            panic!("reading a lower file replaced by a FIFO blocked");
        }
    }
    let changes = s.lower_changes()?;
    assert!(
        changes
            .iter()
            .any(|(_, p, what)| p == "small" && what.contains("no longer a regular file")),
        "{changes:?}"
    );
    Ok(())
}

fn a_deleted_lower_file_that_changes_below_is_no_problem() -> Result<()> {
    // Regression (overlay review): lower_files records stay when the inode is freed, so fsck
    // reported LowerChanged for lower files the user had already deleted in the mount.
    let (_t, lower, store) = setup();
    let s = Store::open(&store, &opts(Some(&lower)))?;
    s.lookup(InodeNo::ROOT, b"small")?;
    s.unlink(InodeNo::ROOT, b"small")?;
    s.close()?;
    std::fs::write(lower.join("small"), b"changed underneath, longer")?;
    let s = Store::open(&store, &opts(None))?;
    let report = s.check()?;
    assert!(report.is_clean(), "{:#?}", report.problems);
    Ok(())
}

per_engine!(
    a_deleted_lower_file_that_changes_below_is_no_problem,
    overlay_presents_the_lower_tree,
    writes_copy_up_only_the_blocks_written,
    removals_and_renames_of_lower_entries_persist,
    a_changed_lower_file_is_refused_and_reported,
    lower_symlinked_directories_are_never_followed,
    importing_leaves_lower_directory_and_symlink_atimes_alone,
    a_lower_file_rewritten_while_open_is_refused,
    an_open_unlinked_lower_hard_link_survives_importing_its_other_name,
    a_lower_hard_link_whose_inode_was_freed_imports_as_a_new_inode,
    lower_errors_keep_their_errno,
    a_lower_file_replaced_by_a_fifo_is_refused_without_blocking,
);
