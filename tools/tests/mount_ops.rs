//! Real mounts (kernel FUSE, the built `cowfs` binary): namespace operations, attributes,
//! xattrs, sparse files, error paths and the command's own errors.

mod common;

use common::*;
use nix::fcntl::{fallocate, renameat2, FallocateFlags, RenameFlags, AT_FDCWD};
use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{lseek, mkfifo, Whence};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

fn names(dir: &Path) -> Result<Vec<String>, std::io::Error> {
    let mut v: Vec<String> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

#[test]
fn namespace_operations() -> TestResult {
    let m = Mount::new(&[])?;
    let d = m.path("d");
    fs::create_dir(&d)?;
    assert!(fs::metadata(&d)?.is_dir());
    assert_eq!(
        fs::metadata(&m.mnt)?.nlink(),
        3,
        "root gains a link from d/.."
    );

    // create, write, read back
    let f = d.join("f");
    fs::write(&f, b"hello world")?;
    assert_eq!(fs::read(&f)?, b"hello world");
    assert_eq!(fs::metadata(&f)?.len(), 11);

    // append and overwrite in place
    let mut h = OpenOptions::new().append(true).open(&f)?;
    h.write_all(b"!!")?;
    drop(h);
    assert_eq!(fs::read(&f)?, b"hello world!!");

    // hard link
    let hard = m.path("hard");
    fs::hard_link(&f, &hard)?;
    assert_eq!(fs::metadata(&f)?.nlink(), 2);
    assert_eq!(fs::metadata(&f)?.ino(), fs::metadata(&hard)?.ino());

    // symlink / readlink
    let ln = m.path("ln");
    symlink("d/f", &ln)?;
    assert_eq!(fs::read_link(&ln)?, Path::new("d/f"));
    assert_eq!(fs::read(&ln)?, b"hello world!!");
    assert!(fs::symlink_metadata(&ln)?.file_type().is_symlink());

    // readdir (through std: getdents; the kernel may use readdirplus)
    assert_eq!(names(&m.mnt)?, vec!["d", "hard", "ln"]);
    assert_eq!(names(&d)?, vec!["f"]);

    // many entries: more than one readdir reply
    let many = m.path("many");
    fs::create_dir(&many)?;
    for i in 0..600 {
        File::create(many.join(format!("entry-with-a-longish-name-{i:04}")))?;
    }
    let listed = names(&many)?;
    assert_eq!(listed.len(), 600);
    assert_eq!(listed[599], "entry-with-a-longish-name-0599");

    // rename: plain, over an existing file, NOREPLACE, EXCHANGE
    let g = m.path("g");
    fs::rename(&f, &g)?;
    assert!(!f.exists());
    assert_eq!(fs::read(&g)?, b"hello world!!");
    fs::write(m.path("other"), b"other")?;
    fs::rename(m.path("other"), &g)?;
    assert_eq!(fs::read(&g)?, b"other");
    fs::write(m.path("x"), b"x")?;
    let r = renameat2(
        AT_FDCWD,
        &m.path("x"),
        AT_FDCWD,
        &g,
        RenameFlags::RENAME_NOREPLACE,
    );
    assert_eq!(r, Err(nix::errno::Errno::EEXIST));
    renameat2(
        AT_FDCWD,
        &m.path("x"),
        AT_FDCWD,
        &g,
        RenameFlags::RENAME_EXCHANGE,
    )?;
    assert_eq!(fs::read(&g)?, b"x");
    assert_eq!(fs::read(m.path("x"))?, b"other");
    // RENAME_WHITEOUT leaves a whiteout (issue 10, defect 23; tests/posix.rs has more).
    renameat2(
        AT_FDCWD,
        &m.path("x"),
        AT_FDCWD,
        &m.path("y"),
        RenameFlags::RENAME_WHITEOUT,
    )?;
    assert_eq!(fs::read(m.path("y"))?, b"other");
    assert!(fs::symlink_metadata(m.path("x"))?
        .file_type()
        .is_char_device());

    // unlink, rmdir
    fs::remove_file(&hard)?;
    fs::remove_file(&ln)?;
    fs::remove_dir(&d)?;
    assert_eq!(fs::metadata(&m.mnt)?.nlink(), 3, "d gone, many remains");

    // mknod: fifo, char device, socket-less regular node
    mkfifo(&m.path("fifo"), Mode::from_bits_truncate(0o640))?;
    assert!(fs::metadata(m.path("fifo"))?.file_type().is_fifo());
    let dev = libc::makedev(1, 3);
    mknod(
        &m.path("null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        dev,
    )?;
    let md = fs::metadata(m.path("null"))?;
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), dev);
    mknod(
        &m.path("plain"),
        SFlag::S_IFREG,
        Mode::from_bits_truncate(0o600),
        0,
    )?;
    assert!(fs::metadata(m.path("plain"))?.is_file());

    // unlinked while open: readable until closed
    let mut open = File::open(&g)?;
    fs::remove_file(&g)?;
    let mut got = String::new();
    open.read_to_string(&mut got)?;
    assert_eq!(got, "x");
    drop(open);
    assert!(!g.exists());
    Ok(())
}

#[test]
fn attributes_and_times() -> TestResult {
    let m = Mount::new(&[])?;
    let f = m.path("f");
    fs::write(&f, vec![7u8; 10_000])?;

    // umask applies at create (the test process's umask is cleared only in the child)
    let made = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o777)
        .open(m.path("masked"))?;
    drop(made);
    let um = nix::sys::stat::umask(Mode::empty());
    nix::sys::stat::umask(um);
    assert_eq!(
        fs::metadata(m.path("masked"))?.mode() & 0o777,
        0o777 & !um.bits()
    );

    // chmod, chown
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4751))?;
    assert_eq!(fs::metadata(&f)?.mode() & 0o7777, 0o4751);
    std::os::unix::fs::chown(&f, Some(1234), Some(5678))?;
    let md = fs::metadata(&f)?;
    assert_eq!((md.uid(), md.gid()), (1234, 5678));

    // truncate down and up (the grown part reads as zeros)
    let h = OpenOptions::new().write(true).open(&f)?;
    h.set_len(100)?;
    h.set_len(5000)?;
    drop(h);
    let data = fs::read(&f)?;
    assert_eq!(data.len(), 5000);
    assert!(data[..100].iter().all(|&b| b == 7));
    assert!(data[100..].iter().all(|&b| b == 0));

    // explicit times, UTIME_OMIT, UTIME_NOW
    let t = TimeSpec::new(1_000_000_000, 123_456_789);
    utimensat(AT_FDCWD, &f, &t, &t, UtimensatFlags::FollowSymlink)?;
    let md = fs::metadata(&f)?;
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_000_000_000, 123_456_789));
    let before = SystemTime::now() - Duration::from_secs(2);
    utimensat(
        AT_FDCWD,
        &f,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::UTIME_NOW,
        UtimensatFlags::FollowSymlink,
    )?;
    let md = fs::metadata(&f)?;
    assert_eq!(md.atime(), 1_000_000_000, "UTIME_OMIT leaves atime");
    assert!(md.modified()? > before, "UTIME_NOW sets mtime to now");
    assert!(md.ctime() >= before.duration_since(SystemTime::UNIX_EPOCH)?.as_secs() as i64);

    // statfs
    let st = nix::sys::statvfs::statvfs(&m.mnt)?;
    assert_eq!(st.block_size(), 4096);
    assert!(st.blocks() > 0 && st.blocks_available() > 0);
    assert_eq!(st.name_max(), 255);
    Ok(())
}

#[test]
fn extended_attributes() -> TestResult {
    let m = Mount::new(&[])?;
    let f = m.path("f");
    fs::write(&f, b"")?;
    setxattr(&f, "user.one", b"first value", 0)?;
    setxattr(&f, "user.two", b"2", 0)?;
    // size probe, exact buffer, too small a buffer
    assert_eq!(getxattr(&f, "user.one", &mut [])?, 11);
    let mut buf = [0u8; 11];
    assert_eq!(getxattr(&f, "user.one", &mut buf)?, 11);
    assert_eq!(&buf, b"first value");
    assert_eq!(
        errno(getxattr(&f, "user.one", &mut [0u8; 4])),
        Some(libc::ERANGE)
    );
    assert_eq!(
        errno(getxattr(&f, "user.none", &mut [0u8; 4])),
        Some(libc::ENODATA)
    );
    // list: size probe then names, NUL-terminated
    let n = listxattr(&f, &mut [])?;
    let mut list = vec![0u8; n];
    assert_eq!(listxattr(&f, &mut list)?, n);
    let mut names: Vec<&[u8]> = list.split(|&b| b == 0).filter(|s| !s.is_empty()).collect();
    names.sort();
    assert_eq!(names, vec![&b"user.one"[..], b"user.two"]);
    assert_eq!(errno(listxattr(&f, &mut [0u8; 3])), Some(libc::ERANGE));
    // create/replace flags, remove
    assert_eq!(
        errno(setxattr(&f, "user.one", b"x", libc::XATTR_CREATE)),
        Some(libc::EEXIST)
    );
    assert_eq!(
        errno(setxattr(&f, "user.new", b"x", libc::XATTR_REPLACE)),
        Some(libc::ENODATA)
    );
    removexattr(&f, "user.one")?;
    assert_eq!(
        errno(getxattr(&f, "user.one", &mut [])),
        Some(libc::ENODATA)
    );
    assert_eq!(errno(removexattr(&f, "user.one")), Some(libc::ENODATA));
    // on a directory too
    setxattr(&m.mnt, "user.dir", b"d", 0)?;
    assert_eq!(getxattr(&m.mnt, "user.dir", &mut [])?, 1);
    Ok(())
}

#[test]
fn sparse_files_seek_and_fallocate() -> TestResult {
    let m = Mount::new(&[])?;
    let p = m.path("sparse");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)?;
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[1u8; 8192], 1 << 20)?;
    assert_eq!(f.metadata()?.len(), (1 << 20) + 8192);
    assert_eq!(lseek(&f, 0, Whence::SeekData)?, 1 << 20);
    assert_eq!(lseek(&f, 0, Whence::SeekHole)?, 0);
    assert_eq!(lseek(&f, 1 << 20, Whence::SeekHole)?, (1 << 20) + 8192);
    assert_eq!(
        lseek(&f, (1 << 20) + 8192, Whence::SeekData),
        Err(nix::errno::Errno::ENXIO)
    );
    let blocks_before = f.metadata()?.blocks();
    assert!(blocks_before >= 16, "8 KiB of data takes blocks");
    let mut head = [9u8; 4096];
    f.read_exact_at(&mut head, 0)?;
    assert!(head.iter().all(|&b| b == 0), "a hole reads as zeros");

    // punch a hole: zeros, fewer blocks, same size
    fallocate(
        &f,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        1 << 20,
        4096,
    )?;
    let mut back = [9u8; 8192];
    f.read_exact_at(&mut back, 1 << 20)?;
    assert!(back[..4096].iter().all(|&b| b == 0));
    assert!(back[4096..].iter().all(|&b| b == 1));
    assert!(f.metadata()?.blocks() < blocks_before);
    assert_eq!(f.metadata()?.len(), (1 << 20) + 8192);

    // mode 0 extends the size; KEEP_SIZE does not
    fallocate(&f, FallocateFlags::empty(), 2 << 20, 4096)?;
    assert_eq!(f.metadata()?.len(), (2 << 20) + 4096);
    fallocate(&f, FallocateFlags::FALLOC_FL_KEEP_SIZE, 3 << 20, 4096)?;
    assert_eq!(f.metadata()?.len(), (2 << 20) + 4096);

    // zero range inside data, then beyond the end
    f.write_all_at(&[5u8; 4096], 0)?;
    fallocate(&f, FallocateFlags::FALLOC_FL_ZERO_RANGE, 1024, 1024)?;
    let mut z = [9u8; 4096];
    f.read_exact_at(&mut z, 0)?;
    assert!(z[..1024].iter().all(|&b| b == 5) && z[1024..2048].iter().all(|&b| b == 0));
    assert!(z[2048..].iter().all(|&b| b == 5));
    fallocate(&f, FallocateFlags::FALLOC_FL_ZERO_RANGE, 4 << 20, 100)?;
    assert_eq!(f.metadata()?.len(), (4 << 20) + 100);

    // modes cowfs does not implement
    let r = fallocate(&f, FallocateFlags::FALLOC_FL_COLLAPSE_RANGE, 0, 4096);
    assert_eq!(r, Err(nix::errno::Errno::EOPNOTSUPP));
    Ok(())
}

#[test]
fn error_paths() -> TestResult {
    let m = Mount::new(&[])?;
    let other = Mount::new(&[])?;
    fs::create_dir(m.path("dir"))?;
    fs::write(m.path("dir/child"), b"c")?;
    fs::write(m.path("file"), b"f")?;

    assert_eq!(errno(File::open(m.path("missing"))), Some(libc::ENOENT));
    assert_eq!(
        errno(fs::remove_file(m.path("missing"))),
        Some(libc::ENOENT)
    );
    assert_eq!(errno(fs::create_dir(m.path("dir"))), Some(libc::EEXIST));
    let excl = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path("file"));
    assert_eq!(errno(excl), Some(libc::EEXIST));
    assert_eq!(errno(fs::remove_dir(m.path("dir"))), Some(libc::ENOTEMPTY));
    assert_eq!(
        errno(OpenOptions::new().write(true).open(m.path("dir"))),
        Some(libc::EISDIR)
    );
    assert_eq!(errno(fs::remove_file(m.path("dir"))), Some(libc::EISDIR));
    assert_eq!(errno(File::open(m.path("file/x"))), Some(libc::ENOTDIR));
    assert_eq!(errno(fs::remove_dir(m.path("file"))), Some(libc::ENOTDIR));
    assert_eq!(
        errno(fs::rename(m.path("dir"), m.path("file"))),
        Some(libc::ENOTDIR)
    );
    assert_eq!(errno(fs::read_link(m.path("file"))), Some(libc::EINVAL));
    let long = "n".repeat(256);
    assert_eq!(errno(File::create(m.path(&long))), Some(libc::ENAMETOOLONG));

    // across mounts: another cowfs mount and the host filesystem
    assert_eq!(
        errno(fs::rename(m.path("file"), other.path("file"))),
        Some(libc::EXDEV)
    );
    assert_eq!(
        errno(fs::hard_link(m.path("file"), other.path("file"))),
        Some(libc::EXDEV)
    );
    let host = m.dir.path().join("host-file");
    assert_eq!(errno(fs::rename(m.path("file"), &host)), Some(libc::EXDEV));
    // copying across mounts still works (copy_file_range falls back to a plain copy)
    fs::copy(m.path("file"), other.path("copied"))?;
    assert_eq!(fs::read(other.path("copied"))?, b"f");
    Ok(())
}

#[test]
fn read_only_mount() -> TestResult {
    let mut m = Mount::new(&[])?;
    fs::write(m.path("f"), b"data")?;
    m.remount(&["ro"])?;
    assert_eq!(fs::read(m.path("f"))?, b"data");
    assert_eq!(errno(fs::write(m.path("g"), b"x")), Some(libc::EROFS));
    assert_eq!(
        errno(OpenOptions::new().write(true).open(m.path("f"))),
        Some(libc::EROFS)
    );
    Ok(())
}

#[test]
fn command_errors_are_one_clear_line() -> TestResult {
    let m = Mount::new(&[])?;
    let dir = tempfile::tempdir()?;
    let d = |p: &str| dir.path().join(p).to_string_lossy().into_owned();
    let one_line_failure = |args: &[&str], needle: &str| -> Result<(), String> {
        let out = cowfs(args).map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(1) || err.lines().count() != 1 || !err.contains(needle) {
            return Err(format!(
                "cowfs {args:?}: status {}, stderr {err:?}, wanted {needle:?}",
                out.status
            ));
        }
        Ok(())
    };
    fs::create_dir(d("mnt"))?;
    fs::write(d("file"), b"")?;
    let store = m.store.to_string_lossy().into_owned();
    let pid = m.pid.ok_or("no pid")?;
    one_line_failure(&["mount", &d("nostore"), &d("mnt")], "not a cowfs store")?;
    one_line_failure(
        &["mount", &store, &d("mnt")],
        &format!("in use by process {pid}"),
    )?;
    one_line_failure(&["mount", &store, &d("nomnt")], "no such directory")?;
    one_line_failure(&["mount", &store, &d("file")], "not a directory")?;
    one_line_failure(
        &["mount", &store, &d("mnt"), "-o", "bogus"],
        "unknown mount option",
    )?;
    one_line_failure(&["mkfs", &store], &format!("in use by process {pid}"))?;
    run_ok(&["mkfs", &d("s2")])?;
    one_line_failure(&["mkfs", &d("s2")], "already holds a cowfs store")?;
    one_line_failure(&["mkfs", &d("s3"), "--block-size", "1000"], "block size")?;
    one_line_failure(&["stats", &d("mnt")], "not a cowfs mount")?;
    one_line_failure(&["umount", &d("mnt")], "not a cowfs mount")?;
    assert!(!dir.path().join("mnt").join("x").exists());
    let usage = cowfs(&["mount"])?;
    assert_eq!(usage.status.code(), Some(2), "usage errors exit 2");
    let help = run_ok(&["mount", "--help"])?;
    assert!(help.contains("copy_mode=splice|buffered") && help.contains("cowfs.log"));
    Ok(())
}

#[test]
fn capabilities_report_the_kernel_protocol() -> TestResult {
    let out = run_ok(&["capabilities"])?;
    let line = out
        .lines()
        .find(|l| l.starts_with("FUSE protocol"))
        .ok_or("no protocol line")?;
    assert!(line.contains("7."), "{line}");
    assert!(out.contains("passthrough") && out.contains("io_uring") && out.contains("splice"));
    Ok(())
}
