//! Real overlay mounts (`cowfs mount --lower DIR`): the lower tree seen through the mount entry
//! by entry, block-level copy-up measured on the host, removals and renames that outlive
//! remounts, a lower file changed underneath, the zero-copy read path, and a lower tree left
//! byte- and stat-identical (atimes included) at the end.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

const MIB: u64 = 1 << 20;

/// A read-only, noatime bind mount of the lower tree. The tests look at the lower tree only
/// through it, so that looking (listing, reading, readlink) changes no atime they compare.
/// Dropping it detaches it.
struct View {
    path: PathBuf,
}

impl View {
    fn new(lower: &Path, at: &Path) -> Result<View, Box<dyn std::error::Error>> {
        use nix::mount::{mount, MsFlags};
        fs::create_dir(at)?;
        mount(
            Some(lower),
            at,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        let v = View {
            path: at.to_path_buf(),
        };
        mount(
            None::<&str>,
            at,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOATIME,
            None::<&str>,
        )?;
        Ok(v)
    }
}

impl Drop for View {
    fn drop(&mut self) {
        lazy_umount(&self.path);
    }
}

/// Everything the overlay promises to show of one entry, and what the test compares before
/// and after. `ino` is the entry's own inode number (lower or mount, not comparable across).
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    size: u64,
    rdev: u64,
    atime: (i64, i64),
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    /// Content hash of a regular file; symlink target bytes as a hash too.
    content: u64,
    target: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// lstat, content hash, symlink target and xattrs of one path. Only the fields that do not
/// vary by filesystem: a directory's size (4096 on ext4, 0 in cowfs) is left out.
fn entry(p: &Path) -> Result<Entry, Box<dyn std::error::Error>> {
    let md = fs::symlink_metadata(p)?;
    let ft = md.file_type();
    Ok(Entry {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        nlink: md.nlink(),
        size: if ft.is_dir() { 0 } else { md.size() },
        rdev: md.rdev(),
        atime: (md.atime(), md.atime_nsec()),
        mtime: (md.mtime(), md.mtime_nsec()),
        ctime: (md.ctime(), md.ctime_nsec()),
        ino: md.ino(),
        content: if ft.is_file() { hash_file(p)? } else { 0 },
        target: if ft.is_symlink() {
            Some(fs::read_link(p)?)
        } else {
            None
        },
        // getxattr follows symlinks: a symlink's own xattrs are not asked for.
        xattrs: if ft.is_symlink() {
            BTreeMap::new()
        } else {
            xattrs(p)?
        },
    })
}

/// Every entry under `root` by relative path, stat'ed before any is read (so that reading one
/// cannot move another's atime before it is recorded).
fn snapshot(root: &Path) -> Result<BTreeMap<PathBuf, Entry>, Box<dyn std::error::Error>> {
    let mut paths = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let p = e?.path();
            if fs::symlink_metadata(&p)?.is_dir() {
                stack.push(p.clone());
            }
            paths.push(p);
        }
    }
    let stats: Vec<_> = paths
        .iter()
        .map(|p| fs::symlink_metadata(p).map(|m| (m.atime(), m.atime_nsec())))
        .collect::<Result<_, _>>()?;
    let mut out = BTreeMap::new();
    for (p, atime) in paths.iter().zip(stats) {
        let mut e = entry(p)?;
        e.atime = atime;
        out.insert(p.strip_prefix(root)?.to_path_buf(), e);
    }
    Ok(out)
}

fn set_times(p: &Path, atime: SystemTime, mtime: SystemTime) -> std::io::Result<()> {
    fs::File::open(p)?.set_times(fs::FileTimes::new().set_accessed(atime).set_modified(mtime))
}

fn at(secs: u64, nanos: u32) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
}

/// A lower tree with every kind of entry, owners and times of its own, and a `big` file of
/// `big` bytes of `pattern(7)`.
fn make_lower(root: &Path, big: u64) -> Result<(), Box<dyn std::error::Error>> {
    use std::os::unix::fs::{chown, lchown, symlink, PermissionsExt};
    fs::create_dir_all(root.join("dir/sub"))?;
    fs::create_dir(root.join("empty-dir"))?;
    write_pattern(&root.join("big"), 7, big)?;
    fs::write(root.join("small"), b"hello lower")?;
    fs::write(root.join("empty"), b"")?;
    fs::write(root.join("dir/sub/deep"), b"deep file")?;
    fs::set_permissions(root.join("small"), fs::Permissions::from_mode(0o640))?;
    fs::set_permissions(root.join("dir"), fs::Permissions::from_mode(0o750))?;
    fs::set_permissions(
        root.join("dir/sub/deep"),
        fs::Permissions::from_mode(0o4755),
    )?;
    chown(root.join("small"), Some(1234), Some(5678))?;
    chown(root.join("dir"), Some(42), Some(43))?;
    fs::hard_link(root.join("small"), root.join("dir/small-link"))?;
    fs::hard_link(root.join("small"), root.join("dir/sub/small-link2"))?;
    symlink("../small", root.join("dir/rel"))?;
    symlink("/etc/passwd", root.join("outside-abs"))?;
    symlink("../../../../../../etc", root.join("dir/outside-rel"))?;
    symlink("dangling-target", root.join("dangling"))?;
    lchown(root.join("dangling"), Some(7), Some(8))?;
    setxattr(&root.join("small"), "user.color", b"blue", 0)?;
    setxattr(&root.join("dir"), "user.dir", b"\x00binary\xff", 0)?;
    setxattr(&root.join("big"), "user.empty", b"", 0)?;
    mknod(&root.join("dir/fifo"), libc::S_IFIFO | 0o620, 0)?;
    mknod(
        &root.join("null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    )?;
    // Old, distinct times, set last (entries added to a directory change its mtime).
    set_times(
        &root.join("small"),
        at(1_000_000_000, 1),
        at(999_999_999, 123_456_789),
    )?;
    set_times(
        &root.join("dir/sub"),
        at(1_100_000_000, 5),
        at(1_100_000_000, 5),
    )?;
    set_times(
        &root.join("dir"),
        at(1_200_000_000, 0),
        at(1_150_000_000, 999),
    )?;
    Ok(())
}

/// The lower tree as seen through the view must be what the mount shows: same names, and
/// per entry the same kind, mode, owners, link count, size, rdev, times, content, target and
/// xattrs; hard links share one inode in the mount, distinct files do not.
fn assert_mount_shows(
    lower: &BTreeMap<PathBuf, Entry>,
    mnt: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let shown = snapshot(mnt)?;
    assert_eq!(
        shown.keys().collect::<Vec<_>>(),
        lower.keys().collect::<Vec<_>>(),
        "names in the mount"
    );
    let mut inos: HashMap<u64, u64> = HashMap::new();
    for (rel, want) in lower {
        let got = &shown[rel];
        let strip = |e: &Entry| Entry {
            ino: 0,
            ..e.clone()
        };
        assert_eq!(strip(got), strip(want), "{}", rel.display());
        if let Some(other) = inos.insert(want.ino, got.ino) {
            assert_eq!(
                other,
                got.ino,
                "{}: hard links share one inode",
                rel.display()
            );
        }
    }
    let distinct: BTreeSet<_> = inos.values().collect();
    assert_eq!(
        distinct.len(),
        inos.len(),
        "distinct files, distinct inodes"
    );
    Ok(())
}

/// Bytes of host disk the store's data and metadata take: pool and B-tree (the fixed-size
/// `reserve` file is left out).
fn store_used(store: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for f in ["pool", "meta.redb"] {
        total += fs::metadata(store.join(f))?.blocks() * 512;
    }
    Ok(total)
}

/// Set up a store, a lower tree (with a `big` file of `big` bytes) and its view.
fn setup(big: u64) -> Result<(Mount, PathBuf, View), Box<dyn std::error::Error>> {
    let m = Mount::unmounted(None)?;
    let lower = m.dir.path().join("lower");
    make_lower(&lower, big)?;
    let view = View::new(&lower, &m.dir.path().join("view"))?;
    Ok((m, lower, view))
}

#[test]
fn the_mount_shows_the_lower_tree_and_leaves_it_untouched() -> TestResult {
    let big = 64 * MIB + 4321;
    let (mut m, lower, view) = setup(big)?;
    let before = snapshot(&view.path)?;
    // noatime: looking at the mount must not change the atimes compared (relatime would, as
    // on any filesystem: imported entries keep their lower atime and ctime).
    m.mount_with(&["--lower", path_str(&lower)], &["noatime"])?;
    assert_mount_shows(&before, &m.mnt)?;
    // Symlinks are shown, not followed by the daemon: an absolute one resolves in the caller's
    // namespace, like any symlink.
    assert_eq!(
        fs::read_link(m.path("outside-abs"))?,
        Path::new("/etc/passwd")
    );
    assert_eq!(fs::read(m.path("dir/rel"))?, b"hello lower");
    assert!(fs::symlink_metadata(m.path("dir/fifo"))?
        .file_type()
        .is_fifo());
    assert!(fs::symlink_metadata(m.path("null"))?
        .file_type()
        .is_char_device());

    // Cold reads of unmodified lower data: spliced from the lower file, no userspace copy
    // (with passthrough the kernel reads the lower file itself: overlay_passthrough.rs).
    m.umount()?;
    m.mount_with(
        &["--lower", path_str(&lower)],
        &["noatime", "passthrough=off"],
    )?;
    check_pattern(&m.path("big"), 7, big, &[])?;
    let spliced = m.counter("read_bytes_spliced")?;
    assert!(spliced >= big, "spliced {spliced} of {big} bytes");
    assert_eq!(m.counter("read_bytes_buffered")?, 0);
    assert_eq!(m.counter("splice_fallbacks")?, 0);
    // And again after the store was reopened (now with the tree imported).
    assert_mount_shows(&before, &m.mnt)?;
    m.umount()?;

    let out = cowfs(&["fsck", path_str(&m.store)])?;
    assert!(
        out.status.success(),
        "fsck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(snapshot(&view.path)?, before, "the lower tree changed");
    Ok(())
}

#[test]
fn a_small_write_into_a_big_lower_file_copies_up_one_block() -> TestResult {
    let big = 256 * MIB;
    let (mut m, lower, view) = setup(big)?;
    let before = snapshot(&view.path)?;
    let lower_arg = ["--lower", path_str(&lower)];
    m.mount_with(&lower_arg, &[])?;
    fs::metadata(m.path("big"))?; // import the root directory
    m.umount()?;
    let base = store_used(&m.store)?;

    m.mount_with(&lower_arg, &[])?;
    let patch = pattern(99, 4096);
    let off = 100 * MIB + 1000; // unaligned: two blocks
    {
        let f = OpenOptions::new().write(true).open(m.path("big"))?;
        f.write_all_at(&patch, off)?;
        f.sync_all()?;
    }
    assert_eq!(m.counter("write_bytes")?, 4096);
    check_pattern(&m.path("big"), 7, big, &[(off, &patch)])?;
    m.umount()?;
    let grown = store_used(&m.store)?.saturating_sub(base);
    assert!(
        grown < MIB,
        "a 4 KiB write into a 256 MiB lower file grew the store by {grown} bytes"
    );

    // After a remount (without --lower: the store remembers it), the patched file reads right
    // and a copy of it inside the mount is a reflink.
    m.mount(&[])?;
    check_pattern(&m.path("big"), 7, big, &[(off, &patch)])?;
    let t = Instant::now();
    let st = Command::new("cp")
        .arg(m.path("big"))
        .arg(m.path("big.copy"))
        .status()?;
    assert!(st.success());
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "cp took {took:?}");
    assert!(m.counter("reflink_bytes")? >= big);
    check_pattern(&m.path("big.copy"), 7, big, &[(off, &patch)])?;
    // A copy of an untouched lower file too.
    let st = Command::new("cp")
        .arg(m.path("dir/sub/deep"))
        .arg(m.path("deep.copy"))
        .status()?;
    assert!(st.success());
    assert_eq!(fs::read(m.path("deep.copy"))?, b"deep file");
    let base = store_used(&m.store)?;
    m.umount()?;
    let grown = store_used(&m.store)?.saturating_sub(base);
    assert!(
        grown < MIB,
        "cp of a lower file grew the store by {grown} bytes"
    );
    assert_eq!(snapshot(&view.path)?, before, "the lower tree changed");
    Ok(())
}

/// The names the test expects after its removals and renames, with file contents.
fn assert_after_changes(mnt: &Path) -> TestResult {
    let names = |rel: &str| -> Result<BTreeSet<String>, std::io::Error> {
        fs::read_dir(mnt.join(rel))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        names("")?,
        set(&[
            "big",
            "dangling",
            "empty-dir",
            "moved-dir",
            "new",
            "null",
            "outside-abs"
        ])
    );
    assert_eq!(
        names("moved-dir")?,
        set(&[
            "fifo",
            "outside-rel",
            "rel",
            "renamed-link",
            "small-renamed",
            "sub"
        ])
    );
    assert_eq!(names("moved-dir/sub")?, set(&["deep"]));
    assert_eq!(
        fs::read(mnt.join("moved-dir/small-renamed"))?,
        b"hello lower"
    );
    assert_eq!(fs::read(mnt.join("moved-dir/sub/deep"))?, b"deep file");
    assert_eq!(fs::read(mnt.join("new"))?, b"new in the store");
    let a = fs::metadata(mnt.join("moved-dir/small-renamed"))?;
    let b = fs::metadata(mnt.join("moved-dir/renamed-link"))?;
    assert_eq!(
        (a.ino(), a.nlink()),
        (b.ino(), 2),
        "the remaining hard links"
    );
    for gone in ["small", "empty", "dir", "dir/sub/small-link2"] {
        assert_eq!(
            errno(fs::symlink_metadata(mnt.join(gone))),
            Some(libc::ENOENT),
            "{gone}"
        );
    }
    Ok(())
}

#[test]
fn removed_and_renamed_lower_entries_stay_so_across_remounts() -> TestResult {
    let (mut m, lower, view) = setup(MIB)?;
    let before = snapshot(&view.path)?;
    let lower_arg = ["--lower", path_str(&lower)];
    m.mount_with(&lower_arg, &[])?;
    fs::remove_file(m.path("empty"))?;
    fs::remove_file(m.path("dir/sub/small-link2"))?;
    fs::rename(m.path("small"), m.path("dir/small-renamed"))?;
    fs::rename(m.path("dir/small-link"), m.path("dir/renamed-link"))?;
    fs::rename(m.path("dir"), m.path("moved-dir"))?;
    // A lower directory removed with what is in it.
    fs::create_dir(m.path("doomed"))?;
    fs::rename(m.path("empty-dir"), m.path("doomed/was-empty"))?;
    fs::remove_dir_all(m.path("doomed"))?;
    fs::create_dir(m.path("empty-dir"))?;
    fs::write(m.path("new"), b"new in the store")?;
    assert_after_changes(&m.mnt)?;

    m.umount()?;
    m.mount_with(&lower_arg, &[])?;
    assert_after_changes(&m.mnt)?;
    m.umount()?;
    m.mount(&[])?;
    assert_after_changes(&m.mnt)?;
    m.umount()?;

    // Another lower directory is refused, in one line, and nothing is mounted.
    let other = m.dir.path().join("other-lower");
    fs::create_dir(&other)?;
    let out = cowfs(&[
        "mount",
        "--lower",
        path_str(&other),
        path_str(&m.store),
        path_str(&m.mnt),
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mount over another lower dir: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(
        err.contains(path_str(&other)) && err.contains("lower"),
        "the message names the refused directory: {err}"
    );
    let (mnt_dev, parent_dev) = (
        fs::metadata(&m.mnt)?.dev(),
        fs::metadata(m.dir.path())?.dev(),
    );
    assert_eq!(mnt_dev, parent_dev, "nothing is mounted");

    m.mount_with(&lower_arg, &[])?;
    assert_after_changes(&m.mnt)?;
    m.umount()?;
    assert_eq!(snapshot(&view.path)?, before, "the lower tree changed");
    Ok(())
}

#[test]
fn a_lower_file_changed_under_the_store_is_eio_and_fsck_lists_it() -> TestResult {
    let (mut m, lower, _view) = setup(MIB)?;
    let lower_arg = ["--lower", path_str(&lower)];
    m.mount_with(&lower_arg, &[])?;
    assert_eq!(fs::read(m.path("small"))?, b"hello lower");
    assert_eq!(fs::read(m.path("dir/sub/deep"))?, b"deep file");
    m.umount()?;

    // Changed while the store was closed: refused at the next mount.
    fs::write(lower.join("small"), b"changed underneath, and longer")?;
    m.mount_with(&lower_arg, &[])?;
    assert_eq!(errno(fs::read(m.path("small"))), Some(libc::EIO));
    assert_eq!(errno(fs::read(m.path("dir/small-link"))), Some(libc::EIO));
    check_pattern(&m.path("big"), 7, MIB, &[])?;

    // Changed in place while mounted, after it was read: refused too.
    assert_eq!(fs::read(m.path("dir/sub/deep"))?, b"deep file");
    {
        let f = OpenOptions::new()
            .write(true)
            .open(lower.join("dir/sub/deep"))?;
        f.write_all_at(b"DEEP", 0)?;
    }
    // Drop the mount's cached pages of it, so the read reaches the daemon, which must not
    // serve the new bytes as the old file's.
    let f = fs::File::open(m.path("dir/sub/deep"))?;
    // SAFETY: `f` is an open descriptor; fadvise only drops clean cached pages.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "fadvise");
    let mut buf = [0u8; 64];
    assert_eq!(errno(f.read_at(&mut buf, 0)), Some(libc::EIO));
    drop(f);
    m.umount()?;

    let out = cowfs(&["fsck", path_str(&m.store)])?;
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "fsck exit: {report}");
    for name in ["small", "dir/sub/deep"] {
        assert!(
            report
                .lines()
                .any(|l| l.contains("LowerChanged") && l.contains(name)),
            "fsck lists {name}: {report}"
        );
    }
    assert!(!report.contains("big"), "{report}");
    Ok(())
}

/// Run `cmd` with a time limit (SIGKILL after `secs`): a test that would hang fails instead.
/// Returns the output and how long it took.
fn bounded(cmd: &mut Command, secs: u32) -> std::io::Result<(std::process::Output, Duration)> {
    let t = Instant::now();
    let mut full = Command::new("timeout");
    full.args(["-s", "KILL", &secs.to_string()])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    let out = full.output()?;
    Ok((out, t.elapsed()))
}

#[test]
fn a_lower_file_replaced_by_a_fifo_fails_at_once_and_alone() -> TestResult {
    // Regression (issue 10, defect 14): one FIFO in the lower tree hung the whole mount.
    // Reproduced: overlay mount, read d/f, unmount; replace the lower d/f with a FIFO; mount
    // again; `cat d/f` blocked, and so did every other access, until the daemon was killed
    // (the lower file was opened, blocking, with the store lock held).
    let (mut m, lower, _view) = setup(MIB)?;
    let lower_arg = ["--lower", path_str(&lower)];
    m.mount_with(&lower_arg, &[])?;
    assert_eq!(fs::read(m.path("dir/sub/deep"))?, b"deep file");
    m.umount()?;
    fs::remove_file(lower.join("dir/sub/deep"))?;
    mknod(&lower.join("dir/sub/deep"), libc::S_IFIFO | 0o644, 0)?;
    m.mount_with(&lower_arg, &[])?;

    let fifo = m.path("dir/sub/deep");
    let mut cat_fifo = Command::new("cat");
    cat_fifo.arg(&fifo);
    let blocked = std::thread::spawn(move || bounded(&mut cat_fifo, 20));
    // Meanwhile an unrelated file, and the directory, stay readable.
    let (out, took) = bounded(Command::new("cat").arg(m.path("small")), 10)?;
    assert!(out.status.success(), "cat small: {out:?} after {took:?}");
    assert_eq!(out.stdout, b"hello lower");
    let (out, _) = bounded(Command::new("ls").arg(m.path("dir/sub")), 10)?;
    assert!(out.status.success(), "ls: {out:?}");
    let (out, took) = blocked.join().map_err(|_| "cat thread panicked")??;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        took < Duration::from_secs(10) && out.status.code() == Some(1),
        "cat of the FIFO: {:?} after {took:?}: {err}",
        out.status
    );
    assert!(err.contains("Input/output error"), "{err}");
    m.umount()?;
    Ok(())
}

/// The names in directory `p` (opendir and every readdir: an error may come at either).
fn list(p: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
    fs::read_dir(p)?.map(|e| e.map(|e| e.file_name())).collect()
}

/// Mount `m` over `lower` with a daemon that is root without CAP_DAC_OVERRIDE and
/// CAP_DAC_READ_SEARCH, so that a lower directory of mode 0 is unreadable to it (EACCES).
fn mount_without_dac(m: &mut Mount, lower: &Path) -> TestResult {
    const CAPS: &str = "-dac_override,-dac_read_search";
    let out = Command::new("setpriv")
        .arg(format!("--bounding-set={CAPS}"))
        .arg(format!("--inh-caps={CAPS}"))
        .args([
            COWFS,
            "mount",
            "--lower",
            path_str(lower),
            path_str(&m.store),
            path_str(&m.mnt),
        ])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "setpriv cowfs mount: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    m.pid = m.stats()?["pid"].as_u64().map(|p| p as u32);
    Ok(())
}

#[test]
fn lower_errors_reach_their_caller_with_their_errno_and_lose_nothing_else() -> TestResult {
    // Regression (issue 10, defects 15 and 1): lower errors lost their errno (ENOENT and
    // EACCES became EIO). And defect 1, reproduced: overlay mount; `echo x > newfile; mkdir
    // newdir` (both acknowledged); append to a lower file from outside; a 1-byte dd
    // conv=notrunc into that file through the mount gets EIO — and newfile and newdir were
    // gone at once and after remount.
    let (mut m, lower, _view) = setup(MIB)?;
    fs::create_dir(lower.join("locked"))?;
    fs::write(lower.join("locked/inside"), b"behind a locked door")?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(lower.join("locked"), fs::Permissions::from_mode(0o000))?;
    }
    mount_without_dac(&mut m, &lower)?;
    fs::write(m.path("newfile"), b"x\n")?;
    fs::create_dir(m.path("newdir"))?;

    // An unreadable lower directory: EACCES to the caller that reaches it.
    let (out, _) = bounded(Command::new("ls").arg("-l").arg(m.path("locked")), 10)?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Permission denied"),
        "ls -l locked: {:?}: {err}",
        out.status
    );
    assert_eq!(
        errno(list(&m.path("locked"))),
        Some(libc::EACCES),
        "readdir of the unreadable lower directory"
    );
    // A lower directory replaced by a file before it was imported: ENOTDIR. (A removed one
    // gives ENOENT, which readdir(3) takes for the end of a directory deleted meanwhile.)
    fs::remove_dir(lower.join("empty-dir"))?;
    fs::write(lower.join("empty-dir"), b"a file now")?;
    assert_eq!(errno(list(&m.path("empty-dir"))), Some(libc::ENOTDIR));
    // And only to it: its parent still lists (readdirplus stats every entry), with both in.
    let names = list(&m.mnt)?;
    for n in ["locked", "empty-dir"] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
    assert_eq!(fs::metadata(m.path("locked"))?.mode() & 0o7777, 0);
    // A lower file appended to from outside: a write that must copy part of it up is EIO.
    {
        let mut f = OpenOptions::new().append(true).open(lower.join("small"))?;
        std::io::Write::write_all(&mut f, b" and more")?;
    }
    let (out, _) = bounded(
        Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", path_str(&m.path("small"))))
            .args(["bs=1", "count=1", "conv=notrunc"]),
        10,
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Input/output error"),
        "dd into the changed lower file: {:?}: {err}",
        out.status
    );

    // Nothing else was lost: not at once, not after cowfs sync, not after a remount.
    let check = |m: &Mount| -> TestResult {
        assert_eq!(fs::read(m.path("newfile"))?, b"x\n");
        assert!(fs::metadata(m.path("newdir"))?.is_dir());
        check_pattern(&m.path("big"), 7, MIB, &[])?;
        Ok(())
    };
    check(&m)?;
    run_ok(&["sync", path_str(&m.mnt)])?;
    check(&m)?;
    m.umount()?;
    mount_without_dac(&mut m, &lower)?;
    check(&m)?;
    assert_eq!(errno(list(&m.path("locked"))), Some(libc::EACCES));
    m.umount()?;
    // A daemon that may read the directory imports it now: the failed tries left nothing.
    m.mount(&[])?;
    check(&m)?;
    assert_eq!(fs::read(m.path("locked/inside"))?, b"behind a locked door");
    m.umount()?;
    Ok(())
}
